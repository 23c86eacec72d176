//! A real-node cluster leaves nothing behind: no process (node processes, containers, shims, the
//! control plane), network namespace, link, route, cgroup, mount or directory, whether it is
//! dropped or its test process is killed (then the watchdog cleans up).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use spiderpool_tests::init_tracing;
use spiderpool_tests::realnode::workload::{self, Placement};
use spiderpool_tests::realnode::{NodeSpec, RealCluster, RealClusterOptions};

const HELPER_ENV: &str = "SPIDERPOOL_REALNODE_CLEANUP_HELPER";
const INFO_PREFIX: &str = "REALNODE-CLEANUP ";

/// These tests start whole clusters; one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Footprint {
    /// `rn<id>`: the prefix of every netns, link and cgroup.
    prefix: String,
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
    /// The cluster's /21: no route into it may be left.
    block: String,
}

/// A small cluster: one node with a pod network.
fn options() -> RealClusterOptions {
    RealClusterOptions {
        nodes: vec![NodeSpec {
            name: "cleanup-0".to_owned(),
            labels: BTreeMap::new(),
            pod_network: true,
            multus: false,
            cni_configs: BTreeMap::new(),
        }],
        ..RealClusterOptions::standard()
    }
}

/// Every process of the machine in `pid_ns` (a `/proc/<pid>/ns/pid` link target) or in a cgroup
/// whose path starts with `/<prefix>`.
fn processes_of(prefix: &str, pid_namespaces: &[String]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                .map(|l| l.display().to_string())
                .unwrap_or_default();
            let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            pid_namespaces.contains(&ns) || cgroups.lines().any(|l| l.contains(&format!(":/{prefix}")))
        })
        .collect()
}

/// Starts a pod on the cluster's node and returns the cluster's footprint.
async fn cluster_with_a_pod(cluster: &RealCluster) -> Result<Footprint> {
    let ns = cluster.namespace("cleanup").await?;
    let pods = ns.api::<Pod>();
    let node = cluster.nodes()[0].name().to_owned();
    let pod = workload::busybox_pod(
        cluster.busybox(),
        "p",
        &Placement::Node(node),
        &["sleep", "3600"],
        &BTreeMap::new(),
    )?;
    pods.create(&PostParams::default(), &pod).await?;
    workload::wait_running(&pods, "p", Duration::from_secs(90)).await?;
    let prefix = format!("rn{}", cluster.id());
    let namespaces: Vec<String> = cluster
        .nodes()
        .iter()
        .filter_map(|n| std::fs::read_link(format!("/proc/{}/ns/pid", n.init_pid())).ok())
        .map(|l| l.display().to_string())
        .collect();
    let mut pids = processes_of(&prefix, &namespaces);
    pids.extend(cluster.control_plane().pids().into_iter().map(|(_, pid)| pid));
    pids.extend(cluster.nodes().iter().flat_map(|n| n.launcher_pids()));
    let footprint = Footprint {
        prefix,
        pids,
        dirs: vec![
            cluster.dir().to_path_buf(),
            cluster.control_plane().dir().to_path_buf(),
        ],
        block: cluster.underlay().block().to_string(),
    };
    // containerd, shim, pause, sleep, kubelet, kube-proxy, init: the pod's processes are seen.
    ensure!(
        footprint.pids.len() >= 4 + 7,
        "footprint not visible: {footprint:?}"
    );
    ensure!(
        leftovers(&footprint)?.len() > footprint.pids.len(),
        "footprint not visible"
    );
    Ok(footprint)
}

fn leftovers(footprint: &Footprint) -> Result<Vec<String>> {
    let prefix = &footprint.prefix;
    let mut left: Vec<String> = footprint
        .pids
        .iter()
        .filter(|p| spiderpool_tests::process_alive(**p))
        .map(|p| {
            let cmdline = std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default();
            format!("process {p} ({})", cmdline.replace('\0', " ").trim())
        })
        .collect();
    left.extend(
        processes_of(prefix, &[])
            .into_iter()
            .map(|p| format!("process {p} in a cgroup of the cluster")),
    );
    left.extend(
        footprint
            .dirs
            .iter()
            .filter(|d| d.exists())
            .map(|d| format!("dir {}", d.display())),
    );
    let netns =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output()?.stdout).into_owned();
    left.extend(
        netns
            .lines()
            .filter(|l| l.starts_with(prefix.as_str()))
            .map(|l| format!("netns {l}")),
    );
    for entry in std::fs::read_dir("/sys/class/net")?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix.as_str()) {
            left.push(format!("link {name}"));
        }
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        for cgroup in std::fs::read_dir(hierarchy.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if cgroup.file_name().to_string_lossy().starts_with(prefix.as_str()) {
                left.push(format!("cgroup {}", cgroup.path().display()));
            }
        }
    }
    let routes = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-4", "route", "show", "root", &footprint.block])
            .output()?
            .stdout,
    )
    .into_owned();
    left.extend(
        routes
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("route {l}")),
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    for dir in &footprint.dirs {
        let dir = dir.display().to_string();
        left.extend(
            mounts
                .lines()
                .filter(|l| l.contains(&dir))
                .map(|l| format!("mount {l}")),
        );
    }
    Ok(left)
}

/// Waits until nothing of `footprint` is left (the watchdog works after its process is gone).
async fn wait_clean(footprint: &Footprint, timeout: Duration) -> Result<()> {
    spiderpool_tests::wait_for("nothing left of the cluster", timeout, || async {
        let left = leftovers(footprint)?;
        if left.is_empty() {
            Ok(Some(()))
        } else {
            bail!("left: {left:#?}")
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_real_cluster_leaves_nothing_behind() -> Result<()> {
    init_tracing();
    let _serial = SERIAL.lock().await;
    let cluster = RealCluster::start(options()).await?;
    eprintln!("one-node cluster ready: {:?}", cluster.startup_times());
    let footprint = cluster_with_a_pod(&cluster).await?;
    let t0 = Instant::now();
    drop(cluster);
    eprintln!("teardown took {:?}", t0.elapsed());
    // Drop is synchronous: everything must be gone at once, not eventually.
    let left = leftovers(&footprint)?;
    ensure!(left.is_empty(), "left behind right after drop: {left:#?}");
    Ok(())
}

/// Not a test of its own: the child process of the test below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realnode_cleanup_helper_child() -> Result<()> {
    if std::env::var_os(HELPER_ENV).is_none() {
        return Ok(());
    }
    init_tracing();
    let cluster = RealCluster::start(options()).await?;
    let footprint = cluster_with_a_pod(&cluster).await?;
    spiderpool_tests::child::report(INFO_PREFIX, &footprint)?;
    tokio::time::sleep(Duration::from_secs(600)).await;
    std::mem::forget(cluster);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_test_process_leaves_nothing_behind() -> Result<()> {
    init_tracing();
    let _serial = SERIAL.lock().await;
    let (mut child, footprint): (_, Footprint) = tokio::task::spawn_blocking(|| {
        spiderpool_tests::child::spawn_test("realnode_cleanup_helper_child", (HELPER_ENV, "1"), INFO_PREFIX)
    })
    .await??;
    child.kill()?; // SIGKILL: nothing runs in the child; the watchdog does it all
    tokio::task::spawn_blocking(move || child.wait()).await??;
    wait_clean(&footprint, Duration::from_secs(60)).await?;
    Ok(())
}
