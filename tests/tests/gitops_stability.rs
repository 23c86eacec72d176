//! GitOps stability: what Argo CD or Flux applies from Git stays as it was applied. Every example
//! topology (examples/topologies) and every input of upstream's docs corpus that upstream accepts (plus
//! the extra cases) is applied twice with server-side apply through our CRDs and webhooks on a
//! real API server, as Flux and Argo CD's server-side sync do:
//! - the second apply changes nothing: same resourceVersion, same managedFields, same object;
//! - Argo CD's default comparison (every field of the manifest equals the live one; what the server
//!   adds is ignored) finds no difference, so no value the user wrote was rewritten;
//! - Argo CD's server-side diff and Flux's drift check (a server-side dry-run apply of the manifest,
//!   compared with the live object) find no difference either.
//!
//! Corpus inputs are applied one at a time and deleted afterwards (several reuse names and addresses);
//! the webhook configurations are cluster-wide, so this binary starts its own control plane.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::{Value, json};
use spiderpool_tests::admission::{Webhooks, install_crds};
use spiderpool_tests::{ClusterOptions, TestCluster, init_tracing, tools, wait_for};

/// Field manager of the applies, as Argo CD's server-side sync names itself.
const MANAGER: &str = "argocd-controller";

#[derive(Debug, Clone, Deserialize)]
struct Input {
    id: String,
    role: String,
    kind: String,
    doc: Value,
}

#[derive(Debug, Deserialize)]
struct Expected {
    refused: BTreeMap<String, Value>,
}

fn data(file: &str) -> Result<String> {
    let path = tools::repo_root().join("tests/data/upstream-docs").join(file);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The inputs upstream accepts: the docs corpus and the extra cases.
fn accepted_inputs() -> Result<Vec<Input>> {
    let expected: Expected = serde_json::from_str(&data("expected-upstream.json")?)?;
    let mut all: Vec<Input> = serde_json::from_str(&data("docs-corpus.json")?)?;
    all.extend(serde_json::from_str::<Vec<Input>>(&data("extra-inputs.json")?)?);
    all.retain(|i| i.role == "input" && !expected.refused.contains_key(&i.id));
    Ok(all)
}

/// One manifest as a GitOps tool holds it.
struct Manifest {
    what: String,
    object: Value,
}

impl Manifest {
    fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }

    fn namespace(&self) -> Option<&str> {
        self.object["metadata"]["namespace"].as_str()
    }

    fn api(&self, client: &Client) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("spiderpool.spidernet.io", "v2beta1", self.kind());
        let resource =
            ApiResource::from_gvk_with_plural(&gvk, &format!("{}s", self.kind().to_ascii_lowercase()));
        match self.namespace() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        }
    }
}

fn topologies() -> Result<Vec<Manifest>> {
    let dir = tools::repo_root().join("examples/topologies");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    ensure!(!files.is_empty(), "no topologies in {}", dir.display());
    let mut out = Vec::new();
    for file in files {
        let docs: Vec<Value> =
            spiderpool_tests::cluster::parse_yaml_documents(&std::fs::read_to_string(&file)?)?;
        for object in docs {
            out.push(Manifest {
                what: file
                    .strip_prefix(tools::repo_root())
                    .unwrap_or(&file)
                    .display()
                    .to_string(),
                object,
            });
        }
    }
    Ok(out)
}

fn corpus_manifests() -> Result<Vec<Manifest>> {
    Ok(accepted_inputs()?
        .into_iter()
        .map(|input| {
            let mut object = input.doc;
            if input.kind == "SpiderMultusConfig" {
                object["metadata"]["namespace"] = json!(format!("gitops-{}", input.id));
            }
            Manifest {
                what: format!("{} {}", input.id, input.kind),
                object,
            }
        })
        .collect())
}

/// Argo CD's default comparison: every field of the manifest must be in the live object with the same
/// value (lists item by item and of the same length); fields only the live object has are ignored.
fn argo_differences(desired: &Value, live: &Value, path: &str, out: &mut Vec<String>) {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => {
            for (key, value) in d {
                let here = format!("{path}.{key}");
                match l.get(key) {
                    Some(other) => argo_differences(value, other, &here, out),
                    None if value.is_null() => {}
                    None => out.push(format!("{here}: in Git {value}, not in the cluster")),
                }
            }
        }
        (Value::Array(d), Value::Array(l)) if d.len() == l.len() => {
            for (i, (a, b)) in d.iter().zip(l).enumerate() {
                argo_differences(a, b, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: in Git {a}, in the cluster {b}")),
    }
}

fn json_of(object: &DynamicObject) -> Result<Value> {
    Ok(serde_json::to_value(object)?)
}

/// Applies `manifest` twice and returns what differs (empty: stable).
async fn check_stable(client: &Client, manifest: &Manifest) -> Result<Vec<String>> {
    let api = manifest.api(client);
    let name = manifest.name();
    let apply = PatchParams::apply(MANAGER).force().validation_strict();
    let first = api
        .patch(name, &apply, &Patch::Apply(&manifest.object))
        .await
        .with_context(|| format!("{}: first apply", manifest.what))?;
    let first = json_of(&first)?;
    let mut problems = Vec::new();
    let mut found = Vec::new();
    argo_differences(&manifest.object, &first, "", &mut found);
    problems.extend(found.into_iter().map(|d| format!("rewritten: {d}")));

    let predicted = api
        .patch(name, &apply.clone().dry_run(), &Patch::Apply(&manifest.object))
        .await
        .with_context(|| format!("{}: dry-run apply", manifest.what))?;
    if json_of(&predicted)? != first {
        problems.push(format!(
            "a server-side dry-run apply predicts a change: {} -> {}",
            first,
            json_of(&predicted)?
        ));
    }

    let second = api
        .patch(name, &apply, &Patch::Apply(&manifest.object))
        .await
        .with_context(|| format!("{}: second apply", manifest.what))?;
    let second = json_of(&second)?;
    let version = |v: &Value| v["metadata"]["resourceVersion"].clone();
    if version(&first) != version(&second) {
        problems.push(format!(
            "the second apply wrote: resourceVersion {} -> {}",
            version(&first),
            version(&second)
        ));
    }
    let managed = |v: &Value| v["metadata"]["managedFields"].clone();
    if managed(&first) != managed(&second) {
        problems.push(format!(
            "managedFields changed: {} -> {}",
            managed(&first),
            managed(&second)
        ));
    }
    if first != second && problems.is_empty() {
        problems.push(format!("the object changed: {first} -> {second}"));
    }
    Ok(problems)
}

/// Deletes a corpus object (and its finalizer: no controller runs here to release it).
async fn remove(client: &Client, manifest: &Manifest) -> Result<()> {
    let api = manifest.api(client);
    let name = manifest.name();
    api.delete(name, &DeleteParams::default()).await?;
    if api.get_opt(name).await?.is_some() {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await?;
    }
    wait_for(
        &format!("{} to be gone", manifest.what),
        Duration::from_secs(30),
        || async { Ok(api.get_opt(name).await?.is_none().then_some(())) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_twice_nothing_changes() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(ClusterOptions {
        install_nad_crd: false,
        ..ClusterOptions::apiserver_only()
    })
    .await?;
    let client = cluster.client()?;
    install_crds(&client).await?;
    let webhooks = Webhooks::start(&client, "gitops-stability").await?;
    let outcome = check(&client).await;
    webhooks.stop().await?;
    outcome
}

async fn check(client: &Client) -> Result<()> {
    let topologies = topologies()?;
    let corpus = corpus_manifests()?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in corpus.iter().filter_map(Manifest::namespace) {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
            )
            .await?;
    }
    let mut failures = Vec::new();
    for manifest in &topologies {
        for problem in check_stable(client, manifest).await? {
            failures.push(format!("{}: {problem}", manifest.what));
        }
    }
    for manifest in &corpus {
        for problem in check_stable(client, manifest).await? {
            failures.push(format!("{}: {problem}", manifest.what));
        }
        if manifest.namespace().is_none() {
            remove(client, manifest).await?;
        }
    }
    #[allow(clippy::print_stdout, reason = "the count is this test's report")]
    {
        println!(
            "applied twice with server-side apply: {} topology objects, {} upstream docs inputs; unstable: {}",
            topologies.len(),
            corpus.len(),
            failures.len()
        );
    }
    if !failures.is_empty() {
        bail!("{} problems:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}
