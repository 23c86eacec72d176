//! Every generated CRD (charts/spiderpool/crds/) and every example CR (examples/) against a real
//! kube-apiserver: catches non-structural schemas, CEL that doesn't compile, and examples that the
//! schema rejects or silently prunes.
//!
//! Examples under a directory named `invalid` are meant to fail the project's own validation; the
//! API server may or may not reject them (only what the schema and CEL can express), so they are
//! applied as a server-side dry run and the outcome is reported, not asserted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::discovery::Scope;
use kube::{Api, Client};
use serde_json::Value;
use spiderpool_tests::cluster::parse_yaml_documents;
use spiderpool_tests::objects::{ensure_namespace, not_kept};
use spiderpool_tests::{ClusterOptions, TestCluster, init_tracing, tools};

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

/// The API server's message for an API error, the whole error otherwise.
fn short(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => other.to_string(),
    }
}

/// Create parameters for a server-side dry run: the API server validates and admits, but stores nothing.
fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

fn is_fixture(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str() == "fixtures")
}

fn is_invalid_example(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str() == "invalid")
}

async fn resource_for(client: &Client, obj: &DynamicObject) -> Result<(ApiResource, Scope)> {
    let types = obj.types.as_ref().context("no apiVersion/kind")?;
    let gvk = GroupVersionKind::try_from(types).context("bad apiVersion")?;
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| {
            format!(
                "the API server does not serve {}/{}",
                types.api_version, types.kind
            )
        })?;
    Ok((resource, caps.scope))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_crds_and_example_crs_are_accepted() -> Result<()> {
    init_tracing();
    let root = tools::repo_root();
    let crd_dir = root.join("charts/spiderpool/crds");
    let mut crd_files = Vec::new();
    yaml_files(&crd_dir, &mut crd_files)?;
    ensure!(
        !crd_files.is_empty(),
        "no CRDs in {}: generate them with `cargo run -p spiderpool-schema --bin crdgen`",
        crd_dir.display()
    );

    // Its own API server, without the harness' NAD CRD: the chart brings its own.
    let cluster = TestCluster::start(ClusterOptions {
        install_nad_crd: false,
        ..ClusterOptions::apiserver_only()
    })
    .await?;
    let client = cluster.client()?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut failures = Vec::new();

    let mut names = Vec::new();
    for file in &crd_files {
        let rel = file.strip_prefix(root).unwrap_or(file).display().to_string();
        let docs: Vec<Value> =
            parse_yaml_documents(&std::fs::read_to_string(file)?).with_context(|| rel.clone())?;
        ensure!(!docs.is_empty(), "{rel} holds no document");
        for doc in docs {
            if doc["kind"] != "CustomResourceDefinition" {
                failures.push(format!(
                    "{rel}: kind {} is not CustomResourceDefinition",
                    doc["kind"]
                ));
                continue;
            }
            let crd: CustomResourceDefinition = serde_json::from_value(doc).with_context(|| rel.clone())?;
            let name = crd.metadata.name.clone().unwrap_or_default();
            match crds.create(&PostParams::default(), &crd).await {
                Ok(_) => names.push((rel.clone(), name)),
                Err(err) => failures.push(format!("{rel}: CRD {name} rejected: {}", short(&err))),
            }
        }
    }
    for (rel, name) in &names {
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        if tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .is_err()
        {
            failures.push(format!("{rel}: CRD {name} not established within 30 s"));
        }
        let crd = crds.get(name).await?;
        for cond in crd.status.and_then(|s| s.conditions).unwrap_or_default() {
            let bad = match cond.type_.as_str() {
                "NonStructuralSchema" => cond.status == "True",
                "NamesAccepted" | "Established" => cond.status != "True",
                _ => false,
            };
            if bad {
                failures.push(format!(
                    "{rel}: CRD {name} condition {} = {}: {:?}",
                    cond.type_, cond.status, cond.message
                ));
            }
        }
    }
    ensure!(failures.is_empty(), "CRDs not accepted:\n{}", failures.join("\n"));

    let examples_dir = root.join("examples");
    let mut examples = Vec::new();
    yaml_files(&examples_dir, &mut examples)?;
    // The classic-kind fixtures (upstream's own examples and realistic objects of every kind and cniType)
    // are example CRs too: old Spiderpool YAML must be accepted unchanged.
    yaml_files(&root.join("schema/tests/fixtures/classic"), &mut examples)?;
    let ns = cluster.namespace("examples").await?;
    let (mut accepted, mut invalid_report) = (0, Vec::new());
    for file in &examples {
        let rel = file.strip_prefix(root).unwrap_or(file).display().to_string();
        let docs: Vec<Value> = match parse_yaml_documents(&std::fs::read_to_string(file)?) {
            Ok(docs) => docs,
            Err(err) => {
                failures.push(format!("{rel}: not YAML: {err:#}"));
                continue;
            }
        };
        for doc in docs {
            let obj: DynamicObject = match serde_json::from_value(doc.clone()) {
                Ok(obj) => obj,
                Err(err) => {
                    failures.push(format!("{rel}: not a Kubernetes object: {err}"));
                    continue;
                }
            };
            let (resource, scope) = match resource_for(&client, &obj).await {
                Ok(found) => found,
                Err(err) => {
                    failures.push(format!("{rel}: {err:#}"));
                    continue;
                }
            };
            let api: Api<DynamicObject> = match scope {
                Scope::Cluster => Api::all_with(client.clone(), &resource),
                Scope::Namespaced => {
                    let namespace = obj
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| ns.name().to_owned());
                    Api::namespaced_with(client.clone(), &namespace, &resource)
                }
            };
            let name = obj.metadata.name.clone().unwrap_or_default();
            if is_invalid_example(file) {
                let outcome = match api.create(&dry_run(), &obj).await {
                    Ok(_) => {
                        "accepted by the API server (only the project's validation rejects it)".to_owned()
                    }
                    Err(err) => format!("rejected by the API server: {}", short(&err)),
                };
                invalid_report.push(format!("{rel} ({} {name}): {outcome}", resource.kind));
                continue;
            }
            let result = if is_fixture(file) {
                // Fixtures are objects as read back from a cluster (resourceVersion, uid, status) and may
                // share names: offer each as a server-side-apply dry run, in its namespace.
                let mut obj = obj.clone();
                obj.metadata.resource_version = None;
                obj.metadata.uid = None;
                obj.metadata.creation_timestamp = None;
                obj.metadata.generation = None;
                obj.metadata.managed_fields = None;
                if let Some(ns) = obj.metadata.namespace.clone() {
                    ensure_namespace(&client, &ns).await?;
                }
                api.patch(
                    &name,
                    &kube::api::PatchParams::apply("crd-acceptance").dry_run(),
                    &kube::api::Patch::Apply(&obj),
                )
                .await
            } else {
                api.create(&PostParams::default(), &obj).await
            };
            match result {
                Ok(stored) => {
                    let stored = serde_json::to_value(&stored)?;
                    let mut changed = Vec::new();
                    for (key, value) in doc.as_object().into_iter().flatten() {
                        if !matches!(key.as_str(), "apiVersion" | "kind" | "metadata" | "status") {
                            changed.extend(not_kept(value, &stored[key], key));
                        }
                    }
                    if changed.is_empty() {
                        accepted += 1;
                    } else {
                        failures.push(format!(
                            "{rel} ({} {name}): accepted but not stored as sent: {changed:?}",
                            resource.kind
                        ));
                    }
                }
                Err(err) => failures.push(format!(
                    "{rel} ({} {name}): rejected: {}",
                    resource.kind,
                    short(&err)
                )),
            }
        }
    }
    let rendered = apply_rendered_examples(&client, &root.join("examples/topologies"), &mut failures).await?;
    eprintln!("{rendered} rendered object(s) accepted by a server-side dry run");
    eprintln!(
        "{} CRD(s) from {} file(s) established; {accepted} example object(s) accepted; invalid examples:\n  {}",
        names.len(),
        crd_files.len(),
        invalid_report.join("\n  ")
    );
    if !failures.is_empty() {
        bail!("{} problem(s):\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}

/// Renders every valid example topology with the compiler and offers each generated object to the API
/// server as a server-side dry run (what `spiderctl render | kubectl apply --dry-run=server -f -` does),
/// creating the namespaces the objects live in first. Returns how many objects were accepted.
async fn apply_rendered_examples(client: &Client, dir: &Path, failures: &mut Vec<String>) -> Result<usize> {
    let mut files = Vec::new();
    yaml_files(dir, &mut files)?;
    let mut accepted = 0;
    for file in files.iter().filter(|f| !is_invalid_example(f)) {
        let rel = file.display().to_string();
        let network: spiderpool_schema::SpiderNetwork =
            serde_saphyr::from_str(&std::fs::read_to_string(file)?)
                .with_context(|| format!("{rel} is not a SpiderNetwork"))?;
        let rendered = match spiderpool_operator::compile::compile(&network) {
            Ok(rendered) => rendered,
            Err(problems) => {
                failures.push(format!("{rel}: does not compile: {problems:?}"));
                continue;
            }
        };
        for doc in rendered.to_documents()? {
            let obj: DynamicObject = serde_json::from_value(doc)?;
            if let Some(ns) = &obj.metadata.namespace {
                ensure_namespace(client, ns).await?;
            }
            let (resource, scope) = resource_for(client, &obj).await?;
            let api: Api<DynamicObject> = match (scope, &obj.metadata.namespace) {
                (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
                _ => Api::all_with(client.clone(), &resource),
            };
            let name = obj.metadata.name.clone().unwrap_or_default();
            match api.create(&dry_run(), &obj).await {
                Ok(_) => accepted += 1,
                Err(err) => failures.push(format!(
                    "{rel}: rendered {} {name} rejected: {}",
                    resource.kind,
                    short(&err)
                )),
            }
        }
    }
    ensure!(accepted > 0, "no rendered object was offered to the API server");
    Ok(accepted)
}
