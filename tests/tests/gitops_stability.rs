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
//! The second test does the same with the operator's controllers running (SpiderNetwork, SpiderIPPool,
//! SpiderSubnet, SpiderMultusConfig, SpiderCoordinator), each object checked once they have acted on it
//! (a topology Ready and its capacity counted and settled, a pool's or subnet's status counted, a
//! SpiderMultusConfig's NetworkAttachmentDefinition made, the SpiderCoordinator's phase written): what
//! they write (status, children, NADs) is no drift, but a controller that rewrote an applied field
//! would be; none writes the spec of an object it has just acted on either (`metadata.generation`
//! stays). Here a SpiderSubnet and a pool of its CIDR are also applied in both orders (adoption at
//! admission, and by the subnet controller, which fills the pool's gateway and routes that Git leaves
//! out). At the end every object still there is compared with Git again and re-applied.
//!
//! Corpus inputs are applied one at a time and deleted afterwards (several reuse names and addresses);
//! the webhook configurations are cluster-wide, so this binary starts its own control plane per test.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::{Value, json};
use spiderpool_operator::controller::coordinator::{self, CoordinatorConfig};
use spiderpool_operator::controller::ippool::{self, IPPoolControllerConfig};
use spiderpool_operator::controller::subnet::{self, SubnetControllerConfig};
use spiderpool_operator::controller::{multusconfig, network};
use spiderpool_operator::metrics::Metrics;
use spiderpool_schema::{NetworkAttachmentDefinition, SpiderNetwork};
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

/// Upstream's default SpiderCoordinator as a user would keep it in Git (the corpus has no accepted
/// one), with a bare IP in `hijackCIDR` that upstream's webhook would rewrite to `/32`.
fn coordinator_manifest() -> Manifest {
    Manifest {
        what: "SpiderCoordinator default".into(),
        object: json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderCoordinator",
            "metadata": {"name": "default"},
            "spec": {"podCIDRType": "auto", "mode": "auto", "tunePodRoutes": true,
                     "hijackCIDR": ["169.254.0.0/16", "10.233.0.10"], "podMACPrefix": ""},
        }),
    }
}

/// A SpiderSubnet and a pool of its CIDR in one Git repository, in both orders a sync may apply them:
/// a pool applied after its subnet is adopted at admission (owner reference, label, and the subnet's
/// gateway and routes, which the pool's manifest leaves out), one applied before it is adopted by the
/// subnet controller. Either way the fields Git sets keep Git's values and re-applying changes nothing.
fn subnet_and_pool_manifests() -> Vec<Manifest> {
    let subnet = |name: &str, cidr: &str, gateway: &str| Manifest {
        what: format!("SpiderSubnet {name}"),
        object: json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderSubnet",
            "metadata": {"name": name},
            "spec": {"subnet": cidr, "ips": [format!("{}.10-{}.99", &cidr[..cidr.len() - 5], &cidr[..cidr.len() - 5])],
                     "gateway": gateway, "routes": [{"dst": "10.99.0.0/16", "gw": gateway}]},
        }),
    };
    let pool = |name: &str, cidr: &str| Manifest {
        what: format!("SpiderIPPool {name}"),
        object: json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
            "metadata": {"name": name},
            "spec": {"subnet": cidr, "ips": [format!("{}.20-{}.29", &cidr[..cidr.len() - 5], &cidr[..cidr.len() - 5])]},
        }),
    };
    vec![
        subnet("gitops-subnet-first", "10.77.1.0/24", "10.77.1.1"),
        pool("gitops-pool-after-subnet", "10.77.1.0/24"),
        pool("gitops-pool-before-subnet", "10.77.2.0/24"),
        subnet("gitops-subnet-after-pool", "10.77.2.0/24", "10.77.2.1"),
    ]
}

/// The namespaces a topology's SpiderMultusConfigs and app bindings go to.
fn topology_namespaces(manifest: &Manifest) -> Result<BTreeSet<String>> {
    let network: SpiderNetwork = serde_json::from_value(manifest.object.clone())
        .with_context(|| format!("{}: not a SpiderNetwork", manifest.what))?;
    let mut out: BTreeSet<String> = network
        .spec
        .networks
        .iter()
        .flat_map(|n| n.namespaces.iter().cloned())
        .collect();
    out.extend(network.spec.apps.iter().map(|a| a.namespace.clone()));
    Ok(out)
}

fn json_of(object: &DynamicObject) -> Result<Value> {
    Ok(serde_json::to_value(object)?)
}

/// Whether the operator's controllers run: then each object is checked once they have acted on it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Controllers {
    Off,
    On,
}

const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until the controllers have done their part for `manifest`'s object (see the module doc).
async fn wait_until_acted_on(client: &Client, manifest: &Manifest) -> Result<()> {
    let api = manifest.api(client);
    let name = manifest.name().to_string();
    let what = format!("the controllers to act on {}", manifest.what);
    match manifest.kind() {
        "SpiderMultusConfig" => {
            let ns = manifest.namespace().unwrap_or_default();
            let nads: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), ns);
            let nad_name = manifest.object["metadata"]["annotations"]["multus.spidernet.io/cr-name"]
                .as_str()
                .unwrap_or(&name)
                .to_string();
            wait_for(&what, SETTLE_TIMEOUT, || async {
                Ok(nads.get_opt(&nad_name).await?.map(|_| ()))
            })
            .await
        }
        kind => {
            let pointer = match kind {
                "SpiderNetwork" => "/status/observedGeneration",
                "SpiderIPPool" => "/status/allocatedIPCount",
                "SpiderSubnet" => "/status/totalIPCount",
                "SpiderCoordinator" => "/status/phase",
                // SpiderReservedIP: no controller reads it.
                _ => return Ok(()),
            };
            let live = wait_for(&what, SETTLE_TIMEOUT, || async {
                let live = json_of(&api.get(&name).await?)?;
                // A SpiderNetwork acknowledges a generation (Reconciling=True) before it applies it.
                let reconciling = live["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Reconciling" && c["status"] == "True")
                });
                let done = live.pointer(pointer).is_some_and(|v| !v.is_null())
                    && (kind != "SpiderNetwork"
                        || (live.pointer(pointer) == live.pointer("/metadata/generation") && !reconciling));
                Ok(done.then_some(live))
            })
            .await?;
            if kind == "SpiderNetwork" {
                settle_capacity(&api, &name, &what).await?;
                let conditions = live["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let ready = conditions
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                ensure!(
                    ready,
                    "{}: not Ready under the webhooks: {}",
                    manifest.what,
                    live["status"]
                );
            }
            Ok(())
        }
    }
}

/// How often the SpiderNetwork controller counts a topology's capacity again after its pools changed
/// (shorter than the operator's default, so the wait below is short).
const CAPACITY_INTERVAL: Duration = Duration::from_millis(500);

/// Waits until a topology's capacity is written and stays as written for a few recount intervals:
/// the recount follows the pool cache, which can catch up with the applied pools after the reconcile
/// has written its status, and its write would otherwise land after this object was compared.
async fn settle_capacity(api: &Api<DynamicObject>, name: &str, what: &str) -> Result<()> {
    let quiet = 4 * CAPACITY_INTERVAL;
    // The resourceVersion last seen with a capacity, and since when.
    let seen: RefCell<Option<(Value, Instant)>> = RefCell::new(None);
    wait_for(
        &format!("{what}: its capacity written and unchanged for {quiet:?}"),
        SETTLE_TIMEOUT,
        || async {
            let live = json_of(&api.get(name).await?)?;
            if live.pointer("/status/capacity").is_none_or(Value::is_null) {
                return Ok(None);
            }
            let version = live["metadata"]["resourceVersion"].clone();
            let mut seen = seen.borrow_mut();
            match &*seen {
                Some((seen_version, since)) if *seen_version == version => {
                    Ok((since.elapsed() >= quiet).then_some(()))
                }
                _ => {
                    *seen = Some((version, Instant::now()));
                    Ok(None)
                }
            }
        },
    )
    .await
}

/// Applies `manifest` twice and returns what differs (empty: stable).
async fn check_stable(client: &Client, manifest: &Manifest, controllers: Controllers) -> Result<Vec<String>> {
    let api = manifest.api(client);
    let first = api
        .patch(manifest.name(), &apply_params(), &Patch::Apply(&manifest.object))
        .await
        .with_context(|| format!("{}: first apply", manifest.what))?;
    let first = json_of(&first)?;
    if controllers == Controllers::On {
        wait_until_acted_on(client, manifest).await?;
    }
    let mut problems = Vec::new();
    let generation = |o: &Value| o.pointer("/metadata/generation").cloned();
    let live = json_of(&api.get(manifest.name()).await?)?;
    if generation(&live) != generation(&first) {
        problems.push(format!(
            "a controller wrote the spec (generation {:?} -> {:?}): {} -> {}",
            generation(&first),
            generation(&live),
            first["spec"],
            live["spec"]
        ));
    }
    problems.extend(drift(client, manifest).await?);
    Ok(problems)
}

/// Server-side apply as Argo CD's server-side sync and Flux do it.
fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force().validation_strict()
}

/// What a GitOps tool would show as drift of the live object from `manifest`, and what re-applying it
/// would write: Argo CD's default comparison (every field of the manifest with Git's value), a
/// server-side dry-run apply (Argo CD's server-side diff, Flux's drift check) that must predict the
/// live object, and a real apply that must write nothing (same resourceVersion and managedFields).
async fn drift(client: &Client, manifest: &Manifest) -> Result<Vec<String>> {
    let api = manifest.api(client);
    let name = manifest.name();
    let live = json_of(&api.get(name).await?)?;
    let mut problems: Vec<String> = not_kept(&manifest.object, &live, "")
        .into_iter()
        .map(|d| format!("rewritten (Git's value, the cluster's): {d}"))
        .collect();

    let predicted = api
        .patch(name, &apply_params().dry_run(), &Patch::Apply(&manifest.object))
        .await
        .with_context(|| format!("{}: dry-run apply", manifest.what))?;
    if json_of(&predicted)? != live {
        problems.push(format!(
            "a server-side dry-run apply predicts a change: {} -> {}",
            live,
            json_of(&predicted)?
        ));
    }

    let again = api
        .patch(name, &apply_params(), &Patch::Apply(&manifest.object))
        .await
        .with_context(|| format!("{}: apply again", manifest.what))?;
    let again = json_of(&again)?;
    for (what, pointer) in [
        (
            "applying again wrote: resourceVersion",
            "/metadata/resourceVersion",
        ),
        ("managedFields changed", "/metadata/managedFields"),
    ] {
        let (before, after) = (live.pointer(pointer), again.pointer(pointer));
        if before != after {
            problems.push(format!("{what}: {before:?} -> {after:?}"));
        }
    }
    if live != again && problems.is_empty() {
        problems.push(format!("the object changed: {live} -> {again}"));
    }
    Ok(problems)
}

/// Deletes a corpus object (and its finalizer when no controller releases it).
async fn remove(client: &Client, manifest: &Manifest) -> Result<()> {
    let api = manifest.api(client);
    let name = manifest.name();
    api.delete(name, &DeleteParams::default()).await?;
    if api.get_opt(name).await?.is_some() {
        let release = api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await;
        match release {
            // A controller released it first.
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
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
    with_webhooks("gitops-stability", |client| async move {
        check(&client, Controllers::Off).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_leave_applied_objects_as_applied() -> Result<()> {
    init_tracing();
    with_webhooks("gitops-controllers", |client| async move {
        let cni_dir = tempfile::tempdir()?;
        let running = start_controllers(&client, cni_dir.path());
        let outcome = check(&client, Controllers::On).await;
        for (name, task) in running {
            ensure!(
                !task.is_finished(),
                "the {name} controller stopped: {:?}",
                task.await
            );
            task.abort();
        }
        outcome
    })
    .await
}

/// The operator's leader-only controllers, in this process (the reclaim scan aside: nothing here
/// allocates addresses).
fn start_controllers(
    client: &Client,
    cni_dir: &std::path::Path,
) -> Vec<(&'static str, tokio::task::JoinHandle<Result<()>>)> {
    let metrics = Arc::new(Metrics::default());
    let retry_delay = Duration::from_millis(500);
    vec![
        (
            "SpiderNetwork",
            tokio::spawn(network::run_with(
                client.clone(),
                metrics.clone(),
                network::Options {
                    capacity_interval: CAPACITY_INTERVAL,
                    ..network::Options::default()
                },
            )),
        ),
        (
            "SpiderIPPool",
            tokio::spawn(ippool::run(
                client.clone(),
                IPPoolControllerConfig {
                    retry_delay,
                    ..IPPoolControllerConfig::default()
                },
            )),
        ),
        (
            "SpiderSubnet",
            tokio::spawn(subnet::run(
                client.clone(),
                SubnetControllerConfig {
                    retry_delay,
                    ..SubnetControllerConfig::default()
                },
            )),
        ),
        (
            "SpiderMultusConfig",
            tokio::spawn(multusconfig::run_with(
                client.clone(),
                metrics,
                multusconfig::Options {
                    instance: Some("gitops".into()),
                    ..multusconfig::Options::default()
                },
            )),
        ),
        (
            "SpiderCoordinator",
            tokio::spawn(coordinator::run(
                client.clone(),
                CoordinatorConfig {
                    retry_delay,
                    cni_config_dir: cni_dir.to_path_buf(),
                    ..CoordinatorConfig::default()
                },
            )),
        ),
    ]
}

async fn check(client: &Client, controllers: Controllers) -> Result<()> {
    let topologies = topologies()?;
    let mut corpus = corpus_manifests()?;
    corpus.push(coordinator_manifest());
    for ns in corpus.iter().filter_map(Manifest::namespace) {
        ensure_namespace(client, ns).await?;
    }
    for manifest in &topologies {
        for ns in topology_namespaces(manifest)? {
            ensure_namespace(client, &ns).await?;
        }
    }
    let mut failures = Vec::new();
    // The corpus first: its pools are removed one by one, while a topology's pools stay (and would
    // overlap some of the corpus' addresses).
    let mut kept = Vec::new();
    for manifest in &corpus {
        for problem in check_stable(client, manifest, controllers).await? {
            failures.push(format!("{}: {problem}", manifest.what));
        }
        if manifest.namespace().is_none() {
            remove(client, manifest).await?;
        } else {
            kept.push(manifest);
        }
    }
    // Only with the controllers: without the subnet controller, the pool applied before its subnet is
    // adopted by the pool webhook at its next apply instead (as upstream's webhook does on update),
    // which writes once; a cluster always runs the controller.
    let pairs = match controllers {
        Controllers::On => subnet_and_pool_manifests(),
        Controllers::Off => Vec::new(),
    };
    for manifest in topologies.iter().chain(&pairs) {
        for problem in check_stable(client, manifest, controllers).await? {
            failures.push(format!("{}: {problem}", manifest.what));
        }
        kept.push(manifest);
    }
    // Everything still applied, once more, after every controller had the whole run to act (the
    // subnet controller has adopted the pool applied before its subnet meanwhile: it filled the
    // pool's gateway and routes, which Git leaves out, so that is no drift).
    for manifest in &kept {
        for problem in drift(client, manifest).await? {
            failures.push(format!("{} (at the end): {problem}", manifest.what));
        }
    }
    // The pairs did what they are here for: both pools were adopted by their subnet.
    for pool in pairs.iter().filter(|m| m.kind() == "SpiderIPPool") {
        let live = json_of(&pool.api(client).get(pool.name()).await?)?;
        if live["metadata"]["labels"]["ipam.spidernet.io/owner-spider-subnet"].is_null() {
            failures.push(format!("{}: never adopted by its subnet: {live}", pool.what));
        }
    }
    #[allow(clippy::print_stdout, reason = "the count is this test's report")]
    {
        println!(
            "applied twice with server-side apply{}: {} topology objects, {} upstream docs inputs, a SpiderCoordinator and {} subnet/pool objects; {} checked again at the end; unstable: {}",
            if controllers == Controllers::On {
                ", the controllers running"
            } else {
                ""
            },
            topologies.len(),
            corpus.len() - 1,
            pairs.len(),
            kept.len(),
            failures.len()
        );
    }
    if !failures.is_empty() {
        bail!("{} problems:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}
