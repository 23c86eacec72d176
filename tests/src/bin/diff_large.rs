//! Benchmark: `spiderctl diff` of the large generated topology (`Shape::LARGE`: 200 racks, 30
//! dual-stack subnets, 2,000 fixed-address bindings, so 16,000 SpiderIPPools and 120
//! SpiderMultusConfigs) against a real API server on loopback.
//!
//! Three cases, each timed end to end (the spiderctl process, from start to exit):
//! 1. nothing applied yet: every child is new, so every one is dry-run applied;
//! 2. the topology applied by the SpiderNetwork controller (run in this process, then stopped so it
//!    does not compete for the CPU): the same file, no change;
//! 3. a one-line edit of that file (one binding's fixed address count 2 -> 3): the children the
//!    controller would write are dry-run applied.
//!
//! The API server has no Nodes, so there are no interface tasks (as in `apply-large`).
//!
//! etcd is the release `tests/tools/build-etcd.sh` builds (unless `SPIDERPOOL_ETCD` names one): with
//! it the API server answers the consistent lists of the 16,000 pools from its watch cache, as in
//! current clusters; with the distribution's etcd 3.4.23 it reads them from etcd, about 6 s more.
//!
//! Each run also reports the CPU time the API server, etcd and spiderctl used.
//!
//! Run: `cargo run --release -p spiderpool-tests --bin diff-large [-- --runs N] [--only-new]`
//! (`--only-new`: case 1 only, `--runs` times). It builds spiderctl in the same profile. A
//! measurement, not a test: nothing here asserts a time.

#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use spiderpool_operator::controller::network;
use spiderpool_operator::metrics::Metrics;
use spiderpool_operator::synthetic::{Shape, topology};
use spiderpool_schema::SpiderNetwork;
use spiderpool_tests::cluster::install_crd_yaml;
use spiderpool_tests::objects::wait_network_ready;
use spiderpool_tests::{ClusterOptions, TestCluster, process, tools};

fn runs() -> Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--runs") {
        Some(i) => Ok(args
            .get(i + 1)
            .context("--runs needs a value")?
            .parse::<usize>()
            .context("--runs must be a number")?
            .max(1)),
        None => Ok(3),
    }
}

/// Runs `spiderctl diff -f file` and returns its exit code, wall time, stdout line count and the
/// summary it printed to stderr.
fn diff(
    spiderctl: &Path,
    cluster: &TestCluster,
    file: &Path,
) -> Result<(Option<i32>, Duration, usize, String)> {
    let start = Instant::now();
    let output = std::process::Command::new(spiderctl)
        .arg("diff")
        .arg("-f")
        .arg(file)
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .output()
        .context("running spiderctl diff")?;
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    println!("{stderr}");
    Ok((output.status.code(), took, stdout.lines().count(), stderr))
}

/// CPU seconds used so far by the API server, etcd, and this process's waited-for children.
fn cpu_used(cluster: &TestCluster) -> Result<[f64; 3]> {
    let component = |name: &str| -> Result<f64> {
        let (_, pid) = cluster
            .pids()
            .into_iter()
            .find(|(component, _)| *component == name)
            .with_context(|| format!("the cluster has no {name}"))?;
        process::cpu_seconds(pid)
    };
    Ok([
        component("kube-apiserver")?,
        component("etcd")?,
        process::waited_children_cpu_seconds()?,
    ])
}

fn case(
    spiderctl: &Path,
    cluster: &TestCluster,
    file: &Path,
    what: &str,
    runs: usize,
    want: i32,
) -> Result<()> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let before = cpu_used(cluster)?;
        let (code, took, lines, summary) = diff(spiderctl, cluster, file)?;
        let after = cpu_used(cluster)?;
        ensure!(
            code == Some(want),
            "{what}: exit {code:?}, expected {want}: {summary}"
        );
        println!(
            "{what}: {:.2} s (exit {want}, {lines} lines on stdout; {summary}); CPU: API server {:.1} s, etcd {:.1} s, spiderctl {:.1} s",
            took.as_secs_f64(),
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2],
        );
        times.push(took);
    }
    times.sort();
    println!(
        "{what}: median {:.2} s, best {:.2} s, worst {:.2} s over {} runs",
        times[times.len() / 2].as_secs_f64(),
        times[0].as_secs_f64(),
        times[times.len() - 1].as_secs_f64(),
        times.len()
    );
    Ok(())
}

/// Runs the benchmark with `SPIDERPOOL_ETCD` set: this process again, as the variable is read where
/// the cluster starts etcd.
fn main() -> Result<()> {
    if std::env::var_os("SPIDERPOOL_ETCD").is_some() {
        return measure();
    }
    let script = tools::repo_root().join("tests/tools/build-etcd.sh");
    let built = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(built.status.success(), "{} failed", script.display());
    let etcd = String::from_utf8(built.stdout)?.trim().to_owned();
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env("SPIDERPOOL_ETCD", &etcd)
        .status()
        .context("running the benchmark with SPIDERPOOL_ETCD set")?;
    ensure!(status.success(), "the benchmark failed ({status})");
    Ok(())
}

#[tokio::main]
async fn measure() -> Result<()> {
    spiderpool_tests::init_tracing();
    let runs = runs()?;
    let only_new = std::env::args().any(|a| a == "--only-new");
    let release = std::env::current_exe()?
        .parent()
        .is_some_and(|dir| dir.file_name().is_some_and(|n| n == "release"));
    let spiderctl = tools::workspace_binary("spiderpool-operator", "spiderctl", release)?;
    let cluster = TestCluster::start(ClusterOptions::apiserver_only()).await?;
    let client: Client = cluster.client()?;
    let crd_dir = tools::repo_root().join("charts/spiderpool/crds");
    for entry in std::fs::read_dir(&crd_dir)? {
        let path = entry?.path();
        install_crd_yaml(&client, &std::fs::read_to_string(&path)?).await?;
    }
    let shape = Shape::LARGE;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for n in 0..shape.namespaces_per_network {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": format!("team{n}")}}))?;
        namespaces.create(&PostParams::default(), &ns).await?;
    }
    let network = topology(shape);
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("large.yaml");
    std::fs::write(&file, serde_saphyr::to_string(&network)?)?;
    let mut edited = network.clone();
    let fixed = edited
        .spec
        .apps
        .first_mut()
        .and_then(|a| a.interfaces.first_mut())
        .and_then(|i| i.fixed_ips.as_mut())
        .context("the large topology's first binding has fixed addresses")?;
    fixed.count = Some(3);
    let edited_file = dir.path().join("large-edited.yaml");
    std::fs::write(&edited_file, serde_saphyr::to_string(&edited)?)?;
    println!("etcd: {}", std::env::var("SPIDERPOOL_ETCD").unwrap_or_default());
    println!(
        "shape: {} racks, {} subnets, {} bindings; the file is {} KiB of YAML; spiderctl {}",
        shape.racks,
        shape.subnets,
        shape.apps,
        std::fs::metadata(&file)?.len() / 1024,
        if release { "release" } else { "debug" }
    );

    case(
        &spiderctl,
        &cluster,
        &file,
        "nothing applied (all created)",
        if only_new { runs } else { 1 },
        1,
    )?;
    if only_new {
        return Ok(());
    }

    let metrics = Arc::new(Metrics::default());
    let controller = tokio::spawn(network::run_with(
        client.clone(),
        metrics,
        network::Options::default(),
    ));
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    let t0 = Instant::now();
    api.create(&PostParams::default(), &network).await?;
    wait_network_ready(&api, &network.name_any(), Duration::from_secs(1800)).await?;
    println!(
        "applied by the controller: Ready after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    controller.abort();
    // Let the API server finish the writes' watch fan-out before timing.
    tokio::time::sleep(Duration::from_secs(5)).await;

    case(
        &spiderctl,
        &cluster,
        &file,
        "applied, same file (no change)",
        runs,
        0,
    )?;
    case(
        &spiderctl,
        &cluster,
        &edited_file,
        "applied, one-line edit",
        runs,
        1,
    )?;
    Ok(())
}
