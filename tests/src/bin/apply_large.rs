//! Benchmark: the `spiderpool-operator` process applying a large generated topology
//! (`spiderpool_operator::synthetic::Shape::LARGE`: 200 racks, 30 dual-stack subnets, 2,000 fixed-address
//! bindings, so 16,000 SpiderIPPools and 120 SpiderMultusConfigs) to a real API server on loopback.
//!
//! Reports: time until `Ready` (observedGeneration current), API writes, the operator's peak memory
//! (VmHWM of the process) and CPU time; then for a one-line edit (one binding's fixed address count
//! 2 -> 3, then back, over several rounds): time to converge (and how much of it the API server took
//! to accept the edit: the topology is about 900 KiB of JSON), writes and operator CPU; then a no-op
//! reconcile's writes.
//!
//! Run: `cargo run --release -p spiderpool-tests --bin apply-large [-- --racks N --subnets N --apps N
//! --edits N]`. `SPIDERPOOL_OPERATOR_BINARY=path` runs a prebuilt operator (to compare two builds).
//! It builds the operator binary in the same profile (`cargo build -p spiderpool-operator`) first.

#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use spiderpool_operator::synthetic::{Shape, topology};
use spiderpool_schema::SpiderNetwork;
use spiderpool_tests::cluster::install_crd_yaml;
use spiderpool_tests::objects::wait_network_ready;
use spiderpool_tests::process::cpu_seconds;
use spiderpool_tests::{ClusterOptions, TestCluster, tools};

fn arg(name: &str, default: usize) -> Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a value"))?
            .parse()
            .with_context(|| format!("{name} must be a number")),
        None => Ok(default),
    }
}

/// The operator binary: `SPIDERPOOL_OPERATOR_BINARY` when set (to compare two builds), otherwise
/// built from this checkout.
fn operator_binary() -> Result<PathBuf> {
    match std::env::var_os("SPIDERPOOL_OPERATOR_BINARY") {
        Some(path) => Ok(PathBuf::from(path)),
        None => build_operator(),
    }
}

fn build_operator() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().context("no directory of the benchmark binary")?;
    let target_dir = profile_dir.parent().context("no target directory")?;
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
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
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        command.arg("--release");
    }
    let status = command.status().context("running cargo build")?;
    ensure!(status.success(), "building spiderpool-operator failed");
    Ok(profile_dir.join("spiderpool-operator"))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Peak resident memory of a process, in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmHWM")?
        .parse()?;
    Ok(kib / 1024.0)
}

async fn metrics_page(port: u16) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut page = String::new();
    stream.read_to_string(&mut page).await?;
    Ok(page)
}

/// Writes of the SpiderNetwork controller so far (all verbs).
async fn network_writes(port: u16) -> Result<u64> {
    let page = metrics_page(port).await?;
    Ok(page
        .lines()
        .filter(|l| l.starts_with("spiderpool_operator_api_writes_total{controller=\"network\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_operator(binary: &Path, cluster: &TestCluster, metrics_port: u16) -> Result<Operator> {
    let log = std::fs::File::create(cluster.dir().join("logs/operator.log"))?;
    let child = Command::new(binary)
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .args(["--namespace", "default", "--pod-name", "bench"])
        .args(["--bind-address", "127.0.0.1"])
        // No Service fronts the webhooks here; the benchmark measures the controller.
        .args(["--enable-webhooks", "false"])
        .args([
            "--health-port",
            &free_port()?.to_string(),
            "--metrics-port",
            &metrics_port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting spiderpool-operator")?;
    Ok(Operator(child))
}

#[tokio::main]
async fn main() -> Result<()> {
    spiderpool_tests::init_tracing();
    let shape = Shape {
        racks: arg("--racks", Shape::LARGE.racks)?,
        subnets: arg("--subnets", Shape::LARGE.subnets)?,
        apps: arg("--apps", Shape::LARGE.apps)?,
        namespaces_per_network: Shape::LARGE.namespaces_per_network,
        fabric: Shape::LARGE.fabric,
    };
    let binary = operator_binary()?;
    let cluster = TestCluster::start(ClusterOptions::apiserver_only()).await?;
    let client: Client = cluster.client()?;
    let crd_dir = tools::repo_root().join("charts/spiderpool/crds");
    for entry in std::fs::read_dir(&crd_dir)? {
        let path = entry?.path();
        install_crd_yaml(&client, &std::fs::read_to_string(&path)?).await?;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for n in 0..shape.namespaces_per_network {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": format!("team{n}")}}))?;
        namespaces.create(&PostParams::default(), &ns).await?;
    }

    let metrics_port = free_port()?;
    let operator = start_operator(&binary, &cluster, metrics_port)?;
    let pid = operator.0.id();
    // Wait for the operator to lead (its metrics endpoint answers and reports leading).
    let started = Instant::now();
    loop {
        if let Ok(page) = metrics_page(metrics_port).await
            && page.lines().any(|l| l == "spiderpool_operator_leader 1")
        {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the operator did not start leading"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let network = topology(shape);
    let rendered = spiderpool_operator::compile::compile(&network)
        .map_err(|p| anyhow::anyhow!("the synthetic topology is invalid: {p:?}"))?;
    println!(
        "shape: {} racks, {} subnets, {} bindings -> {} pools, {} multus configs, {} reserved IPs",
        shape.racks,
        shape.subnets,
        shape.apps,
        rendered.ip_pools.len(),
        rendered.multus_configs.len(),
        rendered.reserved_ips.len()
    );
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    let t0 = Instant::now();
    api.create(&PostParams::default(), &network).await?;
    wait_network_ready(&api, &network.name_any(), Duration::from_secs(1800)).await?;
    let first_apply = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes_first = network_writes(metrics_port).await?;
    println!(
        "first apply: Ready after {:.1} s, {} writes, operator peak RSS {:.1} MiB, operator CPU {:.1} s",
        first_apply.as_secs_f64(),
        writes_first,
        peak_rss_mib(pid)?,
        cpu_seconds(pid)?
    );

    // One-line edit: the first binding asks for 3 fixed addresses per family instead of 2, then 2
    // again, and so on: several rounds, because on a shared two-core machine one round can land on
    // someone else's compile.
    let rounds = arg("--edits", 3)?.max(1);
    let mut edits = Vec::with_capacity(rounds);
    let mut writes_before = writes_first;
    for round in 0..rounds {
        let cpu_before_edit = cpu_seconds(pid)?;
        let mut spec = serde_json::to_value(&network.spec)?;
        spec["apps"][0]["interfaces"][0]["fixedIPs"]["count"] = json!(if round % 2 == 0 { 3 } else { 2 });
        let t1 = Instant::now();
        api.patch(
            &network.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": spec})),
        )
        .await?;
        let accepted = t1.elapsed();
        wait_network_ready(&api, &network.name_any(), Duration::from_secs(120)).await?;
        let edit = t1.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let writes_now = network_writes(metrics_port).await?;
        let writes_edit = writes_now - writes_before;
        writes_before = writes_now;
        let cpu_edit = cpu_seconds(pid)? - cpu_before_edit;
        println!(
            "one-line edit {}: converged after {:.2} s (the API server took {:.2} s to accept the edit), {} writes (expected 5: the binding's v4+v6 pools, the rack's v4+v6 pools, the status), operator CPU {:.2} s (the reconciles of the edit and of its echoes)",
            round + 1,
            edit.as_secs_f64(),
            accepted.as_secs_f64(),
            writes_edit,
            cpu_edit
        );
        edits.push(edit);
    }
    edits.sort();
    println!(
        "one-line edit: median {:.2} s, best {:.2} s over {} rounds",
        edits[edits.len() / 2].as_secs_f64(),
        edits[0].as_secs_f64(),
        edits.len()
    );

    // No-op: a metadata touch reconciles without any change.
    let before = network_writes(metrics_port).await?;
    api.patch(
        &network.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {"bench/touch": "1"}}})),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let noop = network_writes(metrics_port).await? - before;
    println!(
        "no-op reconcile: {noop} writes; operator peak RSS {:.1} MiB",
        peak_rss_mib(pid)?
    );
    drop(operator);
    Ok(())
}
