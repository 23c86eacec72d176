//! Helpers shared by the operator test binaries (`operator_network`, `operator_multusconfig`,
//! `operator_leader`): one real control plane per binary, the CRDs installed, the controllers run
//! in-process, and the real `spiderpool-operator` binary for subprocess tests.

#![allow(dead_code, reason = "each test binary uses part of the helpers")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, ListParams};
use kube::{Client, ResourceExt};
use spiderpool_operator::controller::network::plan::ChildKind;
use spiderpool_operator::metrics::Metrics;
use spiderpool_schema::SpiderNetwork;
use spiderpool_schema::labels::LABEL_TOPOLOGY;
use spiderpool_tests::cluster::install_crd_yaml;
use spiderpool_tests::{TestCluster, init_tracing, tools};

/// Tests of one binary share the cluster and the cluster-scoped kinds; each starts its own
/// controllers, so they take turns (two controllers would both reconcile every topology).
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The shared control plane (with kube-controller-manager, for garbage collection) with every CRD of
/// the chart installed, and an admin client.
pub async fn cluster() -> Result<(&'static TestCluster, Client)> {
    init_tracing();
    static CRDS: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let cluster = TestCluster::shared().await?;
    let client = cluster.client()?;
    CRDS.get_or_try_init(|| async {
        let dir = tools::repo_root().join("charts/spiderpool/crds");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        anyhow::ensure!(!files.is_empty(), "no CRDs in {}: run crdgen", dir.display());
        for file in files {
            install_crd_yaml(&client, &std::fs::read_to_string(&file)?)
                .await
                .with_context(|| format!("installing {}", file.display()))?;
        }
        Ok::<(), anyhow::Error>(())
    })
    .await?;
    Ok((cluster, client))
}

/// A controller running in this test's runtime; stopped when dropped.
pub struct Running {
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Its metrics (API writes are counted here).
    pub metrics: Arc<Metrics>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl Running {
    /// Fails if the controller stopped by itself.
    pub fn check_alive(&self) -> Result<()> {
        anyhow::ensure!(!self.handle.is_finished(), "the controller stopped");
        Ok(())
    }
}

/// Starts the SpiderNetwork controller in-process.
pub fn start_network(client: &Client) -> Running {
    use spiderpool_operator::controller::network;
    let metrics = Arc::new(Metrics::default());
    let options = network::Options {
        resync: Duration::from_secs(600),
        ..network::Options::default()
    };
    let handle = tokio::spawn(network::run_with(client.clone(), metrics.clone(), options));
    Running { handle, metrics }
}

/// Starts the SpiderMultusConfig controller in-process.
pub fn start_multusconfig(client: &Client) -> Running {
    use spiderpool_operator::controller::multusconfig;
    let metrics = Arc::new(Metrics::default());
    let options = multusconfig::Options {
        instance: Some("test".into()),
        ..multusconfig::Options::default()
    };
    let handle = tokio::spawn(multusconfig::run_with(client.clone(), metrics.clone(), options));
    Running { handle, metrics }
}

pub use spiderpool_tests::wait_for;

/// Waits until the controller's write count has not moved for `quiet` (its reconciles settled).
pub async fn settle(metrics: &Metrics, controller: &str, quiet: Duration) -> u64 {
    settle_count(|| metrics.writes(controller), quiet).await
}

/// Waits until `count` has not moved for `quiet`; returns its last value.
pub async fn settle_count(count: impl Fn() -> u64, quiet: Duration) -> u64 {
    let mut last = count();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = count();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return now;
        }
    }
}

/// An example topology from `examples/topologies/<file>`.
pub fn example(file: &str) -> Result<SpiderNetwork> {
    let path = tools::repo_root().join("examples/topologies").join(file);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Every example file directly in `dir` (relative to `examples/topologies`).
pub fn example_files(dir: &str) -> Result<Vec<String>> {
    let root = tools::repo_root().join("examples/topologies");
    let mut files: Vec<String> = std::fs::read_dir(root.join(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.strip_prefix(&root).unwrap_or(&p).display().to_string())
        .collect();
    files.sort();
    Ok(files)
}

/// Gives a topology names of its own for one test: the topology is renamed `<name>-<suffix>` and every
/// namespace `<ns>-<suffix>` (the multus configs are named after networks, so two tests using the same
/// example would otherwise share them). Returns the namespaces used.
pub fn localize(network: &mut SpiderNetwork, suffix: &str) -> Vec<String> {
    let name = network.metadata.name.clone().unwrap_or_default();
    network.metadata.name = Some(format!("{name}-{suffix}"));
    let mut namespaces = std::collections::BTreeSet::new();
    for net in &mut network.spec.networks {
        for ns in &mut net.namespaces {
            *ns = format!("{ns}-{suffix}");
            namespaces.insert(ns.clone());
        }
    }
    for app in &mut network.spec.apps {
        app.namespace = format!("{}-{suffix}", app.namespace);
        namespaces.insert(app.namespace.clone());
    }
    namespaces.into_iter().collect()
}

/// A short random suffix for names.
pub fn suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:05x}", (nanos ^ std::process::id()) & 0xfffff)
}

#[allow(unused_imports, reason = "each test binary uses part of the helpers")]
pub use spiderpool_tests::objects::ensure_namespace;

/// Every child kind the SpiderNetwork controller applies.
pub const CHILD_KINDS: [ChildKind; 4] = [
    ChildKind::ReservedIp,
    ChildKind::IpPool,
    ChildKind::MultusConfig,
    ChildKind::InterfaceTask,
];

/// Every object labelled with `topology`, as `"<Kind> <ns/>name" -> object`.
pub async fn children(client: &Client, topology: &str) -> Result<BTreeMap<String, DynamicObject>> {
    let mut out = BTreeMap::new();
    let params = ListParams::default().labels(&format!("{LABEL_TOPOLOGY}={topology}"));
    for kind in CHILD_KINDS {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.api_resource());
        for object in api.list(&params).await? {
            out.insert(child_id(kind.kind(), &object), object);
        }
    }
    Ok(out)
}

/// `"<Kind> <ns/>name"`.
pub fn child_id(kind: &str, object: &DynamicObject) -> String {
    match object.namespace() {
        Some(ns) => format!("{kind} {ns}/{}", object.name_any()),
        None => format!("{kind} {}", object.name_any()),
    }
}

/// The reasons of the Events recorded about SpiderNetwork `name`.
pub async fn event_reasons(client: &Client, name: &str) -> Result<Vec<(String, String)>> {
    let events: Api<Event> = Api::all(client.clone());
    let list = events
        .list(&ListParams::default().fields(&format!("regarding.name={name}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("SpiderNetwork"))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect())
}

pub async fn wait_event(client: &Client, name: &str, reason: &str) -> Result<String> {
    wait_for(
        &format!("Event {reason} on {name}"),
        Duration::from_secs(60),
        || async {
            let found = event_reasons(client, name).await?;
            match found.iter().find(|(r, _)| r == reason) {
                Some((_, note)) => Ok(Some(note.clone())),
                None => anyhow::bail!("events so far: {found:?}"),
            }
        },
    )
    .await
}

/// The condition `type_` of a SpiderNetwork's status as `(status, reason)`.
pub fn condition(network: &SpiderNetwork, type_: &str) -> Option<(String, String)> {
    network
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Waits until the status describes the current generation and `Ready` has `reason`.
pub async fn wait_reason(
    client: &Client,
    name: &str,
    reason: &str,
    timeout: Duration,
) -> Result<SpiderNetwork> {
    wait_reason_and(client, name, reason, timeout, |_| true).await
}

/// [`wait_reason`], and until `also` holds for the SpiderNetwork too (a status that is reached in steps,
/// such as a node count while nodes are being created one by one).
pub async fn wait_reason_and(
    client: &Client,
    name: &str,
    reason: &str,
    timeout: Duration,
    also: impl Fn(&SpiderNetwork) -> bool,
) -> Result<SpiderNetwork> {
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    let also = &also;
    wait_for(
        &format!("SpiderNetwork {name} Ready reason {reason}"),
        timeout,
        || {
            let api = api.clone();
            async move {
                let network = api.get(name).await?;
                let observed = network.status.as_ref().and_then(|s| s.observed_generation);
                let ready = condition(&network, "Ready");
                if observed == network.metadata.generation
                    && ready.as_ref().is_some_and(|(_, r)| r == reason)
                    && also(&network)
                {
                    Ok(Some(network))
                } else {
                    anyhow::bail!(
                        "observedGeneration {observed:?} of {:?}, Ready {ready:?}, nodes {:?}",
                        network.metadata.generation,
                        network.status.as_ref().and_then(|s| s.nodes.as_ref())
                    )
                }
            }
        },
    )
    .await
}

/// The `spiderpool-operator` binary of this checkout, built with `cargo build -p spiderpool-operator --bin
/// spiderpool-operator` into this test's target directory (a no-op when it is up to date). Cargo only
/// exposes binaries of the test's own crate (`CARGO_BIN_EXE_*`), so the operator's is built here.
pub fn operator_binary() -> Result<PathBuf> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_operator().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn build_operator() -> Result<PathBuf> {
    // The test executable is <target>/<profile>/deps/<name>; the binary goes to <target>/<profile>/.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot find the target directory from the test executable")?;
    let target_dir = profile_dir.parent().context("no target directory")?;
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = std::process::Command::new(cargo);
    command
        .args([
            "build",
            "-p",
            "spiderpool-operator",
            "--bin",
            "spiderpool-operator",
        ])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(tools::repo_root());
    if release {
        command.arg("--release");
    }
    let output = command
        .output()
        .context("running cargo build for spiderpool-operator")?;
    anyhow::ensure!(
        output.status.success(),
        "cargo build -p spiderpool-operator failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let binary = profile_dir.join("spiderpool-operator");
    anyhow::ensure!(binary.exists(), "{} was not built", binary.display());
    Ok(binary)
}
