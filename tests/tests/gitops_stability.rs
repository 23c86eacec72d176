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
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::{Value, json};
use spiderpool_tests::admission::with_webhooks;
use spiderpool_tests::objects::{ensure_namespace, not_kept};
use spiderpool_tests::{init_tracing, tools, wait_for};

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
    // Argo CD's default comparison: every field of the manifest as it is in Git, with the same value.
    problems.extend(
        not_kept(&manifest.object, &first, "")
            .into_iter()
            .map(|d| format!("rewritten (Git's value, the cluster's): {d}")),
    );

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
    for (what, pointer) in [
        (
            "the second apply wrote: resourceVersion",
            "/metadata/resourceVersion",
        ),
        ("managedFields changed", "/metadata/managedFields"),
    ] {
        let (before, after) = (first.pointer(pointer), second.pointer(pointer));
        if before != after {
            problems.push(format!("{what}: {before:?} -> {after:?}"));
        }
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
    with_webhooks("gitops-stability", |client| async move { check(&client).await }).await
}

async fn check(client: &Client) -> Result<()> {
    let topologies = topologies()?;
    let corpus = corpus_manifests()?;
    for ns in corpus.iter().filter_map(Manifest::namespace) {
        ensure_namespace(client, ns).await?;
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
