//! IPAM benchmark against the real API server: 1,000 pods across 10 nodes (one real
//! `spiderpool-agent` each, release build), one shared pool of exactly 1,000 addresses, every CNI
//! ADD through the real `spiderpool` plugin binary; then every DEL.
//!
//! Reports total time, p50/p99 of the plugin's wall time per call, API writes per allocation and per
//! release (from the daemons' metrics), pool-write conflicts, duplicates (must be 0) and the daemons'
//! peak memory.
//!
//! Two ways to drive it:
//! - closed loop (default): each node keeps `BENCH_PARALLEL` CNI calls in flight until its pods are
//!   done. This measures throughput; with 80 calls in flight on 2 cores, latency is mostly queueing
//!   (Little's law: in-flight calls / throughput).
//! - open loop (`BENCH_RATE=<pods per second>`): ADDs start at a fixed rate, round-robin over the nodes,
//!   as pods arriving from the scheduler would, each timed from its own start. This measures the
//!   latency a pod sees at that arrival rate. DEL runs at the same rate.
//!
//! `cargo bench -p spiderpool-tests --bench ipam_alloc`; knobs: `BENCH_PODS` (1000), `BENCH_NODES` (10),
//! `BENCH_PARALLEL` (concurrent CNI calls per node, 8), `BENCH_RATE` (unset: closed loop),
//! `BENCH_RESERVATION` (the daemons' `--node-reservation-size`, default theirs), `BENCH_KEEP_LOGS`
//! (keep the daemons' logs; `SPIDERPOOL_DAEMON_LOG` sets their filter), `BENCH_SETTLE_MS` (pause between
//! creating the pods and the first ADD, 0: ADDs start while the API server still digests the 1,000
//! pod creations, as they would if the pods arrived at once), `BENCH_POOL_FROM` (how the pods' ADDs
//! find the pool: `nad`, the default (the CNI configuration's `default_ipv4_ippool`, and the pods
//! name that configuration's NetworkAttachmentDefinition as their default network, as Multus
//! pods do); `netconf` (the same CNI configuration, but no NetworkAttachmentDefinition: the agents
//! cannot know the pool before the first ADD, see node-daemon/README.md "Reserving ahead");
//! `annotation` (pods carry `ipam.spidernet.io/ippool`)).

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark report"
)]

#[path = "common/cni_phase.rs"]
mod cni_phase;
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use cni_phase::{AgentWrites, Phase, run_phase, run_phase_open};
use common::{env_or, percentile};
use serde_json::json;
use spiderpool_tests::daemon::Daemon;
use spiderpool_tests::ipam;
use spiderpool_tests::{ClusterOptions, TestCluster};

fn report(label: &str, phase: &Phase, pods: usize, before: AgentWrites, after: AgentWrites) {
    let p50 = percentile(&phase.latencies, 0.50);
    let p99 = percentile(&phase.latencies, 0.99);
    let max = phase.latencies.last().copied().unwrap_or_default();
    let AgentWrites {
        pool: pool_writes,
        endpoint: endpoint_writes,
        conflicts,
        handouts,
    } = after - before;
    println!(
        "{label}: {} ok, {} failed in {:.2} s ({:.0}/s); CNI {label} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         API writes {:.0} pool status + {:.0} endpoint = {:.2} per pod (pool status writes {:.3}/pod, {:.0} of them lost a conflict); \
         {:.0} addresses handed out from node reservations",
        phase.latencies.len(),
        phase.failures.len(),
        phase.total.as_secs_f64(),
        phase.latencies.len() as f64 / phase.total.as_secs_f64(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        pool_writes,
        endpoint_writes,
        (pool_writes + endpoint_writes) / pods as f64,
        pool_writes / pods as f64,
        conflicts,
        handouts,
    );
    let tenths: Vec<String> = phase
        .slowest_by_tenth
        .iter()
        .map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
        .collect();
    println!(
        "  slowest {label} (ms) in each tenth of the pods: {}",
        tenths.join(" ")
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let pods = env_or::<usize>("BENCH_PODS", 1000);
    let nodes = env_or::<usize>("BENCH_NODES", 10);
    let parallel = env_or::<usize>("BENCH_PARALLEL", 8);
    let rate: Option<f64> = std::env::var("BENCH_RATE").ok().and_then(|v| v.parse().ok());
    let reservation = std::env::var("BENCH_RESERVATION").ok();
    match rate {
        Some(r) => println!("open loop: {r} ADDs started per second across {nodes} nodes"),
        None => println!("closed loop: {parallel} CNI calls in flight per node, {nodes} nodes"),
    }
    ensure!(pods <= 60_000, "BENCH_PODS too large for one /16 pool");

    let plugin = ipam::plugin_binary(true)?;
    let cluster = TestCluster::start(ClusterOptions::apiserver_only()).await?;
    let client = cluster.client()?;
    ipam::install_spiderpool_crds(&client).await?;
    let ns = cluster.namespace("bench").await?;
    let last = pods - 1;
    let (hi, lo) = (last / 256, last % 256);
    ipam::create_pool(
        &client,
        "bench",
        json!({"subnet": "10.30.0.0/16", "ips": [format!("10.30.0.0-10.30.{hi}.{lo}")], "gateway": "10.30.255.254"}),
    )
    .await?;

    let dir = tempfile::tempdir()?;
    if std::env::var_os("BENCH_KEEP_LOGS").is_some() {
        println!("daemon logs kept in {}", dir.path().display());
    }
    let node_names: Vec<String> = (0..nodes).map(|i| format!("bench-node{i}")).collect();
    let daemons: Vec<Daemon> = node_names
        .iter()
        .map(|n| {
            let mut args = vec!["--worker-threads", "1"];
            if let Some(size) = reservation.as_deref() {
                args.extend(["--node-reservation-size", size]);
            }
            Daemon::start(&cluster, n, dir.path(), true, &args)
        })
        .collect::<Result<_>>()?;
    let netconfs: Vec<serde_json::Value> = daemons
        .iter()
        .map(|d| ipam::ipam_netconf("bench-net", d.socket(), &["bench"], dir.path()))
        .collect();

    let pool_from = std::env::var("BENCH_POOL_FROM").unwrap_or_else(|_| "nad".to_owned());
    let pod_annotations = match pool_from.as_str() {
        "nad" => {
            // One NetworkAttachmentDefinition for every node, as Multus has it; only its IPAM
            // section's default pool matters to the agents (each node's plugin call carries its own
            // socket path).
            ipam::create_nad(&ns, "bench-net", &netconfs[0]).await?;
            json!({"v1.multus-cni.io/default-network": "bench-net"})
        }
        "netconf" => json!({}),
        "annotation" => json!({"ipam.spidernet.io/ippool": r#"{"ipv4":["bench"]}"#}),
        other => anyhow::bail!("BENCH_POOL_FROM={other}: expected nad, netconf or annotation"),
    };
    println!("pods find the pool by: {pool_from}");
    let names: Vec<(String, String)> = (0..pods)
        .map(|i| (format!("pod-{i}"), node_names[i % nodes].clone()))
        .collect();
    // Counted from before the pods exist: agents reserve ahead as soon as pods are bound, and those
    // writes belong to the allocations.
    let before = AgentWrites::read(&daemons)?;
    let created = Instant::now();
    let uids = ipam::create_bare_pods(&client, ns.name(), &names, &pod_annotations).await?;
    println!(
        "setup: {pods} pods created in {:.2} s (not counted)",
        created.elapsed().as_secs_f64()
    );
    let settle = env_or::<usize>("BENCH_SETTLE_MS", 0);
    if settle > 0 {
        println!("waiting {settle} ms after creating the pods before the first ADD");
        tokio::time::sleep(Duration::from_millis(settle as u64)).await;
    }
    let work: Vec<(String, String, usize)> = names
        .iter()
        .zip(&uids)
        .enumerate()
        .map(|(i, ((n, _), u))| (n.clone(), u.clone(), i % nodes))
        .collect();

    let (plugin2, ns_name, work2, netconfs2) = (
        plugin.clone(),
        ns.name().to_owned(),
        work.clone(),
        netconfs.clone(),
    );
    let add = tokio::task::spawn_blocking(move || match rate {
        Some(rate) => run_phase_open("ADD", &plugin2, &work2, &ns_name, &netconfs2, rate),
        None => run_phase("ADD", &plugin2, &work2, &ns_name, &netconfs2, nodes, parallel),
    })
    .await?;
    let after_add = AgentWrites::read(&daemons)?;
    report("ADD", &add, pods, before, after_add);
    let unique: BTreeSet<&String> = add.ips.iter().collect();
    let records = ipam::pool_records(&client, "bench").await?;
    println!(
        "ADD check: {} addresses handed out, {} distinct, {} duplicates, pool records {}",
        add.ips.len(),
        unique.len(),
        add.ips.len() - unique.len(),
        records.len()
    );
    for failure in add.failures.iter().take(5) {
        println!("  failure: {failure}");
    }

    let (plugin2, ns_name, work2, netconfs2) = (
        plugin.clone(),
        ns.name().to_owned(),
        work.clone(),
        netconfs.clone(),
    );
    let del = tokio::task::spawn_blocking(move || match rate {
        Some(rate) => run_phase_open("DEL", &plugin2, &work2, &ns_name, &netconfs2, rate),
        None => run_phase("DEL", &plugin2, &work2, &ns_name, &netconfs2, nodes, parallel),
    })
    .await?;
    let after_del = AgentWrites::read(&daemons)?;
    report("DEL", &del, pods, after_add, after_del);
    let records = ipam::pool_records(&client, "bench").await?;
    println!("DEL check: pool records left {}", records.len());
    for failure in del.failures.iter().take(5) {
        println!("  failure: {failure}");
    }

    let (mut write_sum, mut write_count, mut alloc_sum, mut alloc_count) = (0.0, 0.0, 0.0, 0.0);
    for d in &daemons {
        write_sum += d.metric("spiderpool_ipam_ippool_write_duration_seconds_sum")?;
        write_count += d.metric("spiderpool_ipam_ippool_write_duration_seconds_count")?;
        alloc_sum += d.metric("spiderpool_ipam_allocation_duration_seconds_sum")?;
        alloc_count += d.metric("spiderpool_ipam_allocation_duration_seconds_count")?;
    }
    println!(
        "daemon side: pool status write {:.1} ms on average ({write_count:.0} attempts), ADD handled in {:.1} ms on average",
        write_sum / write_count.max(1.0) * 1e3,
        alloc_sum / alloc_count.max(1.0) * 1e3,
    );
    let mut peak = 0;
    for d in &daemons {
        peak = peak.max(d.peak_rss_kib().context("daemon memory")?);
    }
    println!(
        "daemon peak RSS (max of {nodes}): {:.1} MiB",
        peak as f64 / 1024.0
    );
    if std::env::var_os("BENCH_KEEP_LOGS").is_some() {
        let _ = dir.keep();
    }
    ensure!(
        add.failures.is_empty() && del.failures.is_empty(),
        "failures (see above)"
    );
    ensure!(unique.len() == pods, "duplicates or missing addresses");
    Ok(())
}
