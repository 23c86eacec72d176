//! The Helm chart in tests: helm itself (built from its Go module at the version pinned in
//! `tests/tools/versions.env` by `tests/tools/build-helm.sh`, cached), rendering, and the two files
//! derived from `values.yaml` that must not drift from it: `values.schema.json` (so a typo in a key
//! fails) and the values table of the chart's README.
//!
//! Both derive from `values.yaml` and its `## @param <key> <description>` comments:
//! - every object in `values.yaml` becomes a closed object in the schema (`additionalProperties:
//!   false`), except the free-form maps in [`FREE_FORM`] (labels, resources, affinity, ...) and the
//!   subtrees of upstream features we do not support in [`OPEN`], which keep every upstream key;
//! - a leaf's type is its default's (`true` -> boolean, `5710` -> integer, ...), with the enums in
//!   [`ENUMS`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Map, Value, json};

use crate::tools;

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    tools::repo_root().join("charts/spiderpool")
}

/// The `helm` binary (built and cached on the first run; needs Go and the Go module proxy then).
pub fn helm() -> Result<PathBuf> {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    HELM.get_or_init(|| find_helm().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn find_helm() -> Result<PathBuf> {
    let script = tools::tests_dir().join("tools/build-helm.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}); it needs Go >= 1.24 on PATH and the Go module proxy \
             (or run tests/tools/install-test-deps.sh)",
            script.display(),
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = stdout
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .ok_or_else(|| anyhow!("{} printed no directory", script.display()))?;
    let helm = Path::new(dir.trim()).join("helm");
    if !tools::is_executable(&helm) {
        bail!("{} is not an executable", helm.display());
    }
    Ok(helm)
}

/// The outcome of one helm command.
#[derive(Debug, Clone)]
pub struct HelmOutput {
    /// Whether it exited 0.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs helm with `args` (in the repository root).
pub fn run_helm(args: &[&str]) -> Result<HelmOutput> {
    let output = Command::new(helm()?)
        .current_dir(tools::repo_root())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running helm")?;
    Ok(HelmOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// `helm template <release> charts/spiderpool -n <namespace>` with `extra` arguments (`-f file`,
/// `--set k=v`, ...); the rendered YAML, or the error helm printed.
pub fn template(release: &str, namespace: &str, extra: &[&str]) -> Result<String> {
    let chart = chart_dir();
    let chart = chart.to_string_lossy();
    let mut args = vec!["template", release, &chart, "--namespace", namespace];
    args.extend_from_slice(extra);
    let out = run_helm(&args)?;
    if !out.success {
        bail!("helm template failed:\n{}", out.stderr);
    }
    Ok(out.stdout)
}

/// A Helm release of the chart on a cluster reached through `kubeconfig`, installed, upgraded and
/// uninstalled by the real `helm` binary ([`helm`]). Shared by the install tests on the simulated
/// cluster and the real-node tier:
///
/// ```no_run
/// # async fn f(kubeconfig: &std::path::Path) -> anyhow::Result<()> {
/// use spiderpool_tests::chart::Release;
/// let release = Release::new(kubeconfig, "spiderpool", "kube-system");
/// release.install("ipam:\n  enableIPv6: false\n", &["--set", "multus.multusCNI.install=false"]).await?;
/// let objects = release.manifest().await?; // what Helm created, as JSON
/// release.uninstall().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Release {
    /// The release's name (`spiderpool` in upstream's documentation).
    pub name: String,
    /// Its namespace (created by the install when missing).
    pub namespace: String,
    /// The kubeconfig helm uses (an admin's: Helm creates cluster-scoped objects).
    pub kubeconfig: PathBuf,
    /// The chart: a directory or a packaged `.tgz` ([`chart_dir`] unless changed).
    pub chart: PathBuf,
    /// How long `--wait` may take for the release's Deployments, DaemonSets and hooks.
    pub timeout: std::time::Duration,
}

impl Release {
    /// The release `name` in `namespace` of the chart in this checkout, with a 5-minute wait.
    pub fn new(kubeconfig: &Path, name: &str, namespace: &str) -> Self {
        Release {
            name: name.to_string(),
            namespace: namespace.to_string(),
            kubeconfig: kubeconfig.to_path_buf(),
            chart: chart_dir(),
            timeout: std::time::Duration::from_secs(300),
        }
    }

    /// `helm install --wait`: the CRDs of `crds/` (unless present), every object, then waits until
    /// the Deployments and DaemonSets are ready and runs the post-install hook (spiderpool-init) to
    /// completion. `values` is the text of a values file; `extra` more arguments (`--set k=v`, ...).
    pub async fn install(&self, values: &str, extra: &[&str]) -> Result<HelmOutput> {
        self.install_or_upgrade("install", values, extra).await
    }

    /// `helm upgrade --wait` with these values (the release's earlier values are not reused, as
    /// `helm upgrade` without `--reuse-values`).
    pub async fn upgrade(&self, values: &str, extra: &[&str]) -> Result<HelmOutput> {
        self.install_or_upgrade("upgrade", values, extra).await
    }

    async fn install_or_upgrade(&self, verb: &str, values: &str, extra: &[&str]) -> Result<HelmOutput> {
        let file = tempfile::Builder::new()
            .prefix("values-")
            .suffix(".yaml")
            .tempfile()
            .context("creating a values file")?;
        std::fs::write(file.path(), values).context("writing the values file")?;
        let mut args: Vec<String> = vec![
            verb.into(),
            self.name.clone(),
            self.chart.display().to_string(),
            "--namespace".into(),
            self.namespace.clone(),
            "--wait".into(),
            "--timeout".into(),
            format!("{}s", self.timeout.as_secs()),
            "-f".into(),
            file.path().display().to_string(),
        ];
        if verb == "install" {
            args.push("--create-namespace".into());
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let out = self.helm(args).await?;
        ensure_success(&format!("helm {verb}"), out)
    }

    /// `helm uninstall --wait`: deletes the release's objects (the CRDs and what users made stay, as
    /// Helm does) and waits until they are gone.
    pub async fn uninstall(&self) -> Result<HelmOutput> {
        let args = vec![
            "uninstall".into(),
            self.name.clone(),
            "--namespace".into(),
            self.namespace.clone(),
            "--wait".into(),
            "--timeout".into(),
            format!("{}s", self.timeout.as_secs()),
        ];
        let out = self.helm(args).await?;
        ensure_success("helm uninstall", out)
    }

    /// The objects of the release as Helm recorded them (`helm get manifest`), hooks apart.
    pub async fn manifest(&self) -> Result<Vec<Value>> {
        let args = vec![
            "get".into(),
            "manifest".into(),
            self.name.clone(),
            "--namespace".into(),
            self.namespace.clone(),
        ];
        let out = ensure_success("helm get manifest", self.helm(args).await?)?;
        documents(&out.stdout)
    }

    /// Runs helm against this release's cluster, off the async runtime's threads.
    async fn helm(&self, args: Vec<String>) -> Result<HelmOutput> {
        let kubeconfig = self.kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            let output = Command::new(helm()?)
                .current_dir(tools::repo_root())
                .env("KUBECONFIG", &kubeconfig)
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .context("running helm")?;
            Ok(HelmOutput {
                success: output.status.success(),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            })
        })
        .await
        .context("helm's thread")?
    }
}

fn ensure_success(what: &str, out: HelmOutput) -> Result<HelmOutput> {
    if !out.success {
        bail!("{what} failed:\n{}\n{}", out.stdout, out.stderr);
    }
    Ok(out)
}

/// Every document of a multi-document YAML string as JSON (empty documents dropped).
pub fn documents(yaml: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).context("parsing rendered YAML")?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Free-form maps and lists of objects: any keys (Kubernetes objects, labels, annotations).
pub const FREE_FORM: &[&str] = &[
    "global.commonAnnotations",
    "global.commonLabels",
    "grafanaDashboard.annotations",
    "grafanaDashboard.labels",
    "*.nodeSelector",
    "*.affinity",
    "*.resources",
    "*.securityContext",
    "*.updateStrategy",
    "*.podAnnotations",
    "*.podLabels",
    "*.serviceAccount.annotations",
    "*.service.annotations",
    "*.serviceMonitor.annotations",
    "*.serviceMonitor.labels",
    "*.prometheusRule.annotations",
    "*.prometheusRule.labels",
];

/// Subtrees of upstream features spiderpool-rs does not have: every upstream key is accepted (an
/// upstream values file keeps working); the templates refuse turning the feature on.
pub const OPEN: &[&str] = &[
    "rdma",
    "sriov",
    "iaasNetworkProvider",
    "spiderpoolAgent.networkResourcePlugin",
    "spiderpoolController.podResourceInject",
];

/// Keys with a fixed set of values.
pub const ENUMS: &[(&str, &[&str])] = &[
    (
        "coordinator.mode",
        &["auto", "underlay", "overlay", "disabled", "disable"],
    ),
    (
        "coordinator.podCIDRType",
        &["auto", "cluster", "calico", "cilium", "none"],
    ),
    (
        "spiderpoolController.tls.method",
        &["auto", "provided", "certmanager"],
    ),
    (
        "*.debug.logLevel",
        &["debug", "info", "warn", "error", "fatal", "panic"],
    ),
    ("*.image.pullPolicy", &["Always", "IfNotPresent", "Never"]),
];

/// Whether `pattern` (a dotted key, `*` matching one leading segment or more) matches `path`.
fn matches_pattern(pattern: &str, path: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => path == suffix || path.ends_with(&format!(".{suffix}")),
        None => path == pattern,
    }
}

fn any_match(patterns: &[&str], path: &str) -> bool {
    patterns.iter().any(|p| matches_pattern(p, path))
}

/// Whether `path` is in one of the [`OPEN`] subtrees.
fn in_open_subtree(path: &str) -> bool {
    OPEN.iter()
        .any(|open| path == *open || path.starts_with(&format!("{open}.")))
}

/// `## @param <key> <description>` comments of `values.yaml`, by key.
pub fn descriptions(values_yaml: &str) -> std::collections::BTreeMap<String, String> {
    values_yaml
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("## @param "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(key, description)| (key.to_string(), description.trim().to_string()))
        .collect()
}

/// The JSON schema of the chart's values, derived from `values.yaml` (see the module docs).
pub fn values_schema(values_yaml: &str) -> Result<Value> {
    let values: Value = serde_saphyr::from_str(values_yaml).context("parsing values.yaml")?;
    let descriptions = descriptions(values_yaml);
    let mut schema = schema_of("", &values, &descriptions);
    if let Some(object) = schema.as_object_mut() {
        let mut top = Map::new();
        top.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft-07/schema#"),
        );
        top.insert("title".into(), json!("Values of the spiderpool-rs chart"));
        top.extend(std::mem::take(object));
        *object = top;
    }
    Ok(schema)
}

fn schema_of(path: &str, value: &Value, descriptions: &std::collections::BTreeMap<String, String>) -> Value {
    let mut schema = match value {
        Value::Object(map) if !any_match(FREE_FORM, path) && !map.is_empty() => {
            let properties: Map<String, Value> = map
                .iter()
                .map(|(key, child)| {
                    let child_path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    (key.clone(), schema_of(&child_path, child, descriptions))
                })
                .collect();
            json!({
                "type": "object",
                "additionalProperties": in_open_subtree(path),
                "properties": properties,
            })
        }
        Value::Object(_) => json!({"type": "object"}),
        Value::Array(items) => match items.first() {
            Some(Value::String(_)) => json!({"type": "array", "items": {"type": "string"}}),
            Some(Value::Object(_)) | None => json!({"type": "array"}),
            Some(_) => json!({"type": "array"}),
        },
        Value::Bool(_) => json!({"type": "boolean"}),
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            if path.ends_with("Port") || path.ends_with(".port") {
                json!({"type": "integer", "minimum": 1, "maximum": 65535})
            } else {
                json!({"type": "integer", "minimum": 0})
            }
        }
        Value::Number(_) => json!({"type": "number"}),
        // Upstream's certificate lifetimes are quoted numbers; accept both.
        Value::String(_) if path.ends_with("Expiration") => json!({"type": ["string", "integer"]}),
        Value::String(_) => json!({"type": "string"}),
        Value::Null => json!({}),
    };
    if let Some((_, allowed)) = ENUMS.iter().find(|(pattern, _)| matches_pattern(pattern, path))
        && let Some(object) = schema.as_object_mut()
    {
        object.insert("enum".into(), json!(allowed));
    }
    if let Some(description) = descriptions.get(path)
        && let Some(object) = schema.as_object_mut()
    {
        object.insert("description".into(), json!(description));
    }
    schema
}

/// The values table of the chart's README: one row per `## @param` key, with its default.
pub fn values_table(values_yaml: &str) -> Result<String> {
    let values: Value = serde_saphyr::from_str(values_yaml).context("parsing values.yaml")?;
    let mut table = String::from("| Key | Default | Description |\n|---|---|---|\n");
    for (key, description) in descriptions(values_yaml) {
        let mut value = &values;
        for part in key.split('.') {
            value = value
                .get(part)
                .ok_or_else(|| anyhow!("values.yaml documents {key}, which it does not have"))?;
        }
        let default = match value {
            Value::String(s) => format!("`{s:?}`"),
            other => format!("`{}`", serde_json::to_string(other)?),
        };
        let default = default.replace('|', "\\|");
        table.push_str(&format!(
            "| `{key}` | {default} | {} |\n",
            description.replace('|', "\\|")
        ));
    }
    Ok(table)
}

/// Every leaf key of `values.yaml` (dotted), for checking each one is documented.
pub fn leaf_keys(values_yaml: &str) -> Result<Vec<String>> {
    fn walk(path: &str, value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) if !any_match(FREE_FORM, path) && !map.is_empty() => {
                for (key, child) in map {
                    let child_path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    walk(&child_path, child, out);
                }
            }
            _ => out.push(path.to_string()),
        }
    }
    let values: Value = serde_saphyr::from_str(values_yaml).context("parsing values.yaml")?;
    let mut keys = Vec::new();
    walk("", &values, &mut keys);
    Ok(keys)
}

/// The API of a rendered object's kind, in its namespace (`namespace` when it names none and the kind
/// is namespaced), found by discovery.
pub async fn api_for(
    client: &kube::Client,
    doc: &Value,
    namespace: &str,
) -> Result<(kube::Api<kube::api::DynamicObject>, String)> {
    use kube::api::{Api, DynamicObject};
    use kube::core::GroupVersionKind;
    let api_version = doc["apiVersion"]
        .as_str()
        .ok_or_else(|| anyhow!("object without apiVersion"))?;
    let kind = doc["kind"]
        .as_str()
        .ok_or_else(|| anyhow!("object without kind"))?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("discovering {api_version} {kind}"))?;
    let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let api = match capabilities.scope {
        kube::discovery::Scope::Namespaced => {
            let ns = doc["metadata"]["namespace"].as_str().unwrap_or(namespace);
            Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource)
        }
        kube::discovery::Scope::Cluster => Api::<DynamicObject>::all_with(client.clone(), &resource),
    };
    Ok((api, name))
}

/// Server-side applies one rendered object (field manager `helm`); with `dry_run`, the API server
/// admits and validates it without storing it.
pub async fn apply(client: &kube::Client, doc: &Value, namespace: &str, dry_run: bool) -> Result<()> {
    use kube::api::{Patch, PatchParams};
    let (api, name) = api_for(client, doc, namespace).await?;
    let kind = doc["kind"].as_str().unwrap_or_default();
    let mut params = PatchParams::apply("helm").force();
    params.dry_run = dry_run;
    api.patch(&name, &params, &Patch::Apply(doc))
        .await
        .with_context(|| format!("applying {kind} {name}"))?;
    Ok(())
}

/// Every object of our kinds, the NetworkAttachmentDefinitions, pods and Jobs with a deletion
/// timestamp: after `helm uninstall`, what waits on a finalizer nobody will remove.
pub async fn terminating_objects(client: &kube::Client) -> Result<Vec<String>> {
    let mut stuck = Vec::new();
    for (group, version, kind) in [
        ("spiderpool.spidernet.io", "v2beta1", "SpiderIPPool"),
        ("spiderpool.spidernet.io", "v2beta1", "SpiderSubnet"),
        ("spiderpool.spidernet.io", "v2beta1", "SpiderCoordinator"),
        ("spiderpool.spidernet.io", "v2beta1", "SpiderEndpoint"),
        ("spiderpool.spidernet.io", "v2beta1", "SpiderMultusConfig"),
        ("spiderpool.spidernet.io", "v2beta1", "SpiderNetwork"),
        ("spiderpool.spidernet.io", "v2beta1", "SpiderInterfaceTask"),
        ("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        ("", "v1", "Pod"),
        ("batch", "v1", "Job"),
    ] {
        let gvk = kube::core::GroupVersionKind::gvk(group, version, kind);
        let (resource, _) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .with_context(|| format!("discovering {kind}"))?;
        let api = kube::Api::<kube::api::DynamicObject>::all_with(client.clone(), &resource);
        for object in api.list(&kube::api::ListParams::default()).await?.items {
            if object.metadata.deletion_timestamp.is_some() {
                stuck.push(format!(
                    "{kind} {}/{} (finalizers {:?})",
                    object.metadata.namespace.clone().unwrap_or_default(),
                    kube::ResourceExt::name_any(&object),
                    object.metadata.finalizers
                ));
            }
        }
    }
    Ok(stuck)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUES: &str = "## @param a.port the port\na:\n  port: 5710\n  labels: {}\n  resources:\n    limits: {cpu: 1}\n  debug:\n    ## @param a.debug.logLevel level\n    logLevel: info\nrdma:\n  plugin:\n    install: false\n";

    #[test]
    fn objects_are_closed_maps_free_and_unsupported_subtrees_open() {
        let schema = values_schema(VALUES).unwrap();
        assert_eq!(schema["additionalProperties"], false);
        let a = &schema["properties"]["a"];
        assert_eq!(a["additionalProperties"], false);
        assert_eq!(a["properties"]["port"]["maximum"], 65535);
        assert_eq!(a["properties"]["port"]["description"], "the port");
        assert_eq!(a["properties"]["resources"], json!({"type": "object"}));
        assert_eq!(
            a["properties"]["debug"]["properties"]["logLevel"]["enum"][0],
            "debug"
        );
        assert_eq!(schema["properties"]["rdma"]["additionalProperties"], true);
        assert_eq!(
            schema["properties"]["rdma"]["properties"]["plugin"]["additionalProperties"],
            true
        );
    }

    #[test]
    fn the_table_lists_documented_keys_with_defaults() {
        let table = values_table(VALUES).unwrap();
        assert!(table.contains("| `a.port` | `5710` | the port |"));
        assert!(table.contains("| `a.debug.logLevel` | `\"info\"` | level |"));
        assert!(values_table("## @param x.y gone\nx: {}\n").is_err());
        assert_eq!(
            leaf_keys(VALUES).unwrap(),
            vec![
                "a.port",
                "a.labels",
                "a.resources",
                "a.debug.logLevel",
                "rdma.plugin.install"
            ]
        );
    }
}
