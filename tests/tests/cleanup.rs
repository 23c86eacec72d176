//! Nothing is left behind: processes, network namespaces, links, temp dirs.
//!
//! Three ways a test can end: dropping a private cluster and simulator; a test process that exits
//! with the shared cluster still running (statics are never dropped); and a test process killed with
//! SIGKILL. The last two run this very test binary as a child (`cleanup_helper_child`, which does
//! nothing unless `SPIDERPOOL_CLEANUP_HELPER` is set) and check after it is gone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use serde_json::json;
use spiderpool_tests::{
    ClusterOptions, DefaultNetwork, NodeSimulator, SimOptions, TestCluster, init_tracing,
};

const HELPER_ENV: &str = "SPIDERPOOL_CLEANUP_HELPER";
const INFO_PREFIX: &str = "CLEANUP-INFO ";

/// These tests start whole control planes; one at a time is kinder to a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What must disappear.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Footprint {
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
    /// Prefix of every netns and link name of the simulator.
    host_prefix: String,
    netns: Vec<String>,
}

fn netns_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

fn links_with_prefix(prefix: &str) -> Result<Vec<String>> {
    Ok(std::fs::read_dir("/sys/class/net")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect())
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes; /proc/<pid>/stat's third field is the state.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            != Some("Z")
    })
}

/// What of `footprint` still exists.
fn leftovers(footprint: &Footprint) -> Result<Vec<String>> {
    let mut left = Vec::new();
    left.extend(
        footprint
            .pids
            .iter()
            .filter(|p| alive(**p))
            .map(|p| format!("process {p}")),
    );
    left.extend(
        footprint
            .dirs
            .iter()
            .filter(|d| d.exists())
            .map(|d| format!("dir {}", d.display())),
    );
    left.extend(
        netns_with_prefix(&footprint.host_prefix)?
            .into_iter()
            .map(|n| format!("netns {n}")),
    );
    left.extend(
        links_with_prefix(&footprint.host_prefix)?
            .into_iter()
            .map(|n| format!("link {n}")),
    );
    left.extend(
        footprint
            .netns
            .iter()
            .filter(|n| Path::new("/var/run/netns").join(n).exists())
            .map(|n| format!("netns {n}")),
    );
    Ok(left)
}

async fn wait_clean(footprint: &Footprint, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = leftovers(footprint)?;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("left behind after {timeout:?}: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a simulator on `cluster` with one running pod; returns it and the footprint.
async fn cluster_with_a_pod(cluster: &TestCluster) -> Result<(NodeSimulator, Footprint)> {
    let ns = cluster.namespace("cleanup").await?;
    let ipam = cluster.dir().join("ipam");
    let network = json!({
        "cniVersion": "1.0.0", "name": "underlay",
        "plugins": [{"type": "macvlan", "master": "eth0", "mode": "bridge",
                     "ipam": {"type": "host-local", "dataDir": ipam.display().to_string(),
                              "ranges": [[{"subnet": "172.31.0.0/16", "rangeStart": "172.31.200.1", "rangeEnd": "172.31.200.50"}]]}}]
    });
    let sim = NodeSimulator::start(
        cluster.client()?,
        SimOptions {
            nodes: 2,
            wait_schedulable: false,
            ..SimOptions::new(DefaultNetwork::Config(network))
        },
    )
    .await?;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"nodeName": sim.node_names()[0], "containers": [{"name": "c", "image": "registry.invalid/c"}]},
    }))?;
    ns.api::<Pod>().create(&PostParams::default(), &pod).await?;
    let record = sim.wait_pod(ns.name(), "p", Duration::from_secs(30)).await?;
    ensure!(Path::new(&record.netns_path).exists());
    let footprint = Footprint {
        pids: cluster.pids().into_iter().map(|(_, pid)| pid).collect(),
        dirs: vec![cluster.dir().to_path_buf()],
        host_prefix: sim.host_prefix(),
        netns: vec![record.netns],
    };
    ensure!(
        footprint.pids.len() == 4,
        "expected 4 control-plane processes: {:?}",
        cluster.pids()
    );
    ensure!(
        leftovers(&footprint)?.len() >= 4 + 1 + 2 + 2,
        "footprint not visible: {:?}",
        leftovers(&footprint)?
    );
    Ok((sim, footprint))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_cluster_and_simulator_leaves_nothing_behind() -> Result<()> {
    init_tracing();
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start(ClusterOptions::default()).await?;
    eprintln!(
        "private cluster (all four components) ready in {:?}",
        cluster.startup_duration()
    );
    let (sim, footprint) = cluster_with_a_pod(&cluster).await?;
    drop(sim);
    drop(cluster);
    // Drop is synchronous: everything must be gone at once, not eventually.
    let left = leftovers(&footprint)?;
    ensure!(left.is_empty(), "left behind right after drop: {left:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_test_leaves_nothing_behind() -> Result<()> {
    init_tracing();
    let _serial = SERIAL.lock().await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let cluster = TestCluster::start(ClusterOptions::apiserver_only()).await?;
        let footprint = Footprint {
            pids: cluster.pids().into_iter().map(|(_, pid)| pid).collect(),
            dirs: vec![cluster.dir().to_path_buf()],
            host_prefix: "sp-none-".to_owned(),
            netns: Vec::new(),
        };
        let _ = tx.send(footprint);
        let _keep = &cluster;
        panic!("a test failing while it holds a cluster");
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    });
    let outcome = task.await;
    ensure!(
        outcome.as_ref().is_err_and(|e| e.is_panic()),
        "the task should have panicked: {outcome:?}"
    );
    let footprint = rx.await.context("the task failed before the cluster was up")?;
    ensure!(footprint.pids.len() == 2, "{footprint:?}");
    let left = leftovers(&footprint)?;
    ensure!(left.is_empty(), "left behind after the panic: {left:?}");
    Ok(())
}

/// Not a test of its own: the child process of the two tests below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_helper_child() -> Result<()> {
    let Ok(mode) = std::env::var(HELPER_ENV) else {
        return Ok(());
    };
    init_tracing();
    let cluster = TestCluster::shared().await?;
    let (sim, footprint) = cluster_with_a_pod(cluster).await?;
    spiderpool_tests::child::report(INFO_PREFIX, &footprint)?;
    if mode == "kill" {
        tokio::time::sleep(Duration::from_secs(300)).await;
    }
    // Leave the simulator's host network to the watchdog as well: a test that ends without cleaning up.
    std::mem::forget(sim);
    Ok(())
}

/// Runs `cleanup_helper_child` in a child process; returns the child and the footprint it reported.
fn spawn_helper(mode: &str) -> Result<(std::process::Child, Footprint)> {
    spiderpool_tests::child::spawn_test("cleanup_helper_child", (HELPER_ENV, mode), INFO_PREFIX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_process_that_exits_leaves_nothing_behind() -> Result<()> {
    init_tracing();
    let _serial = SERIAL.lock().await;
    let (mut child, footprint) = tokio::task::spawn_blocking(|| spawn_helper("exit")).await??;
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    ensure!(status.success(), "helper failed: {status}");
    wait_clean(&footprint, Duration::from_secs(15)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_test_process_leaves_nothing_behind() -> Result<()> {
    init_tracing();
    let _serial = SERIAL.lock().await;
    let (mut child, footprint) = tokio::task::spawn_blocking(|| spawn_helper("kill")).await??;
    child.kill()?; // SIGKILL: no destructor, no atexit, nothing runs in the child
    tokio::task::spawn_blocking(move || child.wait()).await??;
    wait_clean(&footprint, Duration::from_secs(15)).await
}
