//! The IPAM data path's scale curve against the real API server: what one allocation costs as a pool
//! grows and fills, and as the number of nodes grows. Every ADD and DEL goes through the real
//! `spiderpool` plugin binary to a real `spiderpool-agent` (release build), open loop: calls start at
//! a fixed rate, round-robin over the nodes, as pods arriving from the scheduler. Every pod of a
//! scenario is created, bound to its node, before the first ADD: the time that takes is not in any
//! ADD's latency, and what the agents write meanwhile is counted in the scenario's cost.
//!
//! - `fill`: one pool each of 1k, 10k and 65k IPv4 addresses and an IPv6 /64, filled to
//!   `SCALE_FILL` (10,000; the 1k pool to 1,000) by 10 agents, then emptied. Each tenth of the fill
//!   is reported on its own: allocations per second, p50/p99/max ADD, and per allocation the API
//!   requests and bytes the API server received for pools and endpoints (its
//!   `apiserver_request_body_size_bytes`), the bytes of the pool watch events it made (its
//!   `apiserver_watch_events_sizes`: each event once, though every agent receives it), and the CPU
//!   time of the API server and of etcd; then the whole fill's cost per ADD, counted from the pods'
//!   creation (agents reserve ahead while pods are bound, before their ADDs).
//! - `nodes`: `SCALE_NODES` agents (10, 50, 100; started together, time to all ready reported),
//!   `SCALE_FILL` pods at `SCALE_RATE`, on per-rack pools (racks of 10 nodes, each rack's pool
//!   names its nodes) and on one shared 65k pool; the agents' peak memory.
//!
//! Every point checks that no address was handed out twice and that the pools are empty after the
//! DELs, and reports failures instead of stopping. With the pools full, the operator's full reclaim
//! scan (`scan_all`, every pool and endpoint) is timed; every pod is alive, so it must release
//! nothing.
//!
//! `cargo bench -p spiderpool-tests --bench ipam_scale`; knobs: `SCALE_PARTS` (`fill,nodes`),
//! `SCALE_FILL` (10000), `SCALE_RATE` (ADDs and DELs started per second, 100), `SCALE_SIZES`
//! (`1k,10k,65k,v6`), `SCALE_NODES` (`10,50,100`), `SCALE_LAYOUTS` (`racks,shared`),
//! `SCALE_NODE_TENTHS` (`1`: `nodes` reports each tenth too, as `fill` does), `SCALE_POD_NETWORK`
//! (`nad`: each pod names, as Multus' `v1.multus-cni.io/default-network`, a NetworkAttachmentDefinition
//! holding the CNI configuration the plugin is called with, so agents can tell a bound pod's pools
//! before its ADD; `config`: the pools are only in the CNI configuration the plugin gets),
//! `SCALE_SHARD_SIZE` (0, off; else a pool of more addresses than that, up to 256 shards' worth, is
//! served through shards of that many, `spiderpool.spidernet.io/shard-size`, made by the operator's
//! pool controller, which then runs in the bench and whose writes count in the cost),
//! `SCALE_AGENT_ARGS` (extra agent arguments, space-separated), `SCALE_AGENT_BINARY` (the agent to run
//! instead of the workspace's release build, such as the container image's static musl build that
//! `tests/tools/build-images.sh` leaves in `<its output>/<hash>/rootfs-amd64/spiderpool-agent/usr/bin/spiderpool-agent`).

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

use anyhow::{Context as _, Result};
use cni_phase::{AgentWrites, Phase, run_phase_open};
use common::{env_or, percentile};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use spiderpool_operator::controller::ippool::{self, IPPoolControllerConfig};
use spiderpool_operator::controller::reclaim::{ReclaimConfig, scan_all};
use spiderpool_schema::nad::ANNO_POD_DEFAULT_NETWORK;
use spiderpool_schema::{SpiderIPPool, shards};
use spiderpool_tests::daemon::Daemon;
use spiderpool_tests::ipam;
use spiderpool_tests::process::cpu_seconds;
use spiderpool_tests::prometheus::{apiserver_metrics, metric_sum};
use spiderpool_tests::{ClusterOptions, TestCluster};

/// What the control plane has spent so far, as counters.
#[derive(Clone, Copy, Debug, Default)]
struct Spent {
    apiserver_cpu: f64,
    etcd_cpu: f64,
    requests: f64,
    request_bytes: f64,
    watch_bytes: f64,
    agents: AgentWrites,
}

impl std::ops::Sub for Spent {
    type Output = Spent;
    fn sub(self, before: Spent) -> Spent {
        Spent {
            apiserver_cpu: self.apiserver_cpu - before.apiserver_cpu,
            etcd_cpu: self.etcd_cpu - before.etcd_cpu,
            requests: self.requests - before.requests,
            request_bytes: self.request_bytes - before.request_bytes,
            watch_bytes: self.watch_bytes - before.watch_bytes,
            agents: self.agents - before.agents,
        }
    }
}

const MUTATING: [&str; 5] = [
    "verb=\"POST\"",
    "verb=\"PUT\"",
    "verb=\"PATCH\"",
    "verb=\"DELETE\"",
    "verb=\"APPLY\"",
];

async fn spent(cluster: &TestCluster, client: &Client, daemons: &[Daemon]) -> Result<Spent> {
    let mut spent = Spent::default();
    for (name, pid) in cluster.pids() {
        match name {
            "kube-apiserver" => spent.apiserver_cpu = cpu_seconds(pid)?,
            "etcd" => spent.etcd_cpu = cpu_seconds(pid)?,
            _ => {}
        }
    }
    let metrics = apiserver_metrics(client).await?;
    // `apiserver_request_total` names the resource alone, the body sizes with its group.
    for resource in ["resource=\"spiderippools", "resource=\"spiderendpoints"] {
        for verb in MUTATING {
            spent.requests += metric_sum(&metrics, "apiserver_request_total", &[resource, verb]);
        }
        spent.request_bytes += metric_sum(&metrics, "apiserver_request_body_size_bytes_sum", &[resource]);
    }
    spent.watch_bytes = metric_sum(
        &metrics,
        "apiserver_watch_events_sizes_sum",
        &["kind=\"SpiderIPPool\""],
    );
    spent.agents = AgentWrites::read(daemons)?;
    Ok(spent)
}

/// The highest peak resident memory of `daemons`, in MiB.
fn peak_rss_mib(daemons: &[Daemon]) -> f64 {
    let kib = daemons
        .iter()
        .map(|d| d.peak_rss_kib().unwrap_or(0))
        .max()
        .unwrap_or(0);
    kib as f64 / 1024.0
}

/// The highest anonymous and the highest file-backed resident memory of `daemons` now, in MiB.
fn rss_now_mib(daemons: &[Daemon]) -> (f64, f64) {
    let (anon, file) = daemons
        .iter()
        .filter_map(|d| d.rss_kib().ok())
        .fold((0, 0), |(a, f), (anon, file)| (a.max(anon), f.max(file)));
    (anon as f64 / 1024.0, file as f64 / 1024.0)
}

fn per(value: f64, count: usize) -> f64 {
    value / count.max(1) as f64
}

/// One line: the phase's calls and what the control plane spent per call.
fn report(label: &str, phase: &Phase, cost: &Spent) {
    let done = phase.latencies.len();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "  {label:<14} {done:>6} ok {:>4} failed {:>6.0}/s  p50 {:>7.1} p99 {:>8.1} max {:>8.1} ms | per call: {:.2} req ({:.3} pool writes, {:.0} conflicts in all), {:>9.0} B in, {:>10.0} B pool events, API server {:.2} ms CPU, etcd {:.2} ms CPU",
        phase.failures.len(),
        done as f64 / phase.total.as_secs_f64(),
        ms(percentile(&phase.latencies, 0.5)),
        ms(percentile(&phase.latencies, 0.99)),
        ms(phase.latencies.last().copied().unwrap_or_default()),
        per(cost.requests, done),
        per(cost.agents.pool, done),
        cost.agents.conflicts,
        per(cost.request_bytes, done),
        per(cost.watch_bytes, done),
        per(cost.apiserver_cpu * 1e3, done),
        per(cost.etcd_cpu * 1e3, done),
    );
    for failure in phase.failures.iter().take(2) {
        println!("    failure: {failure}");
    }
}

/// Creates the Node objects of `nodes` (no kubelet: the agents and the reclaim only read them).
async fn create_nodes(client: &Client, nodes: &[String]) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    for node in nodes {
        let object: Node = serde_json::from_value(json!({"metadata": {"name": node}}))?;
        api.create(&PostParams::default(), &object).await?;
    }
    Ok(())
}

/// Starts one agent per node, all at once; returns them and the time until the last was ready.
fn start_agents(
    cluster: &TestCluster,
    nodes: &[String],
    dir: &std::path::Path,
) -> Result<(Vec<Daemon>, Duration)> {
    let extra = std::env::var("SCALE_AGENT_ARGS").unwrap_or_default();
    // Built before the clock starts: the first start would otherwise time a release build.
    let binary = match std::env::var_os("SCALE_AGENT_BINARY") {
        Some(path) => std::path::PathBuf::from(path),
        None => {
            spiderpool_tests::tools::workspace_binary("spiderpool-node-daemon", "spiderpool-agent", true)?
        }
    };
    let started = Instant::now();
    let daemons = std::thread::scope(|scope| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|node| {
                let extra = extra.clone();
                let binary = &binary;
                scope.spawn(move || {
                    let mut args = vec!["--worker-threads", "1", "--max-allocated-ips", "100000"];
                    args.extend(extra.split_whitespace());
                    Daemon::start_binary(binary, cluster.kubeconfig_path(), node, dir, &args)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("agent start thread"))
            .collect::<Result<Vec<_>>>()
    })?;
    Ok((daemons, started.elapsed()))
}

/// A scenario's pods: created bound to their nodes (round-robin), as `(name, uid, node index)`.
async fn make_pods(
    client: &Client,
    namespace: &str,
    count: usize,
    nodes: &[String],
    annotations: &Value,
) -> Result<Vec<(String, String, usize)>> {
    let names: Vec<(String, String)> = (0..count)
        .map(|i| (format!("pod-{i}"), nodes[i % nodes.len()].clone()))
        .collect();
    let uids = ipam::create_bare_pods(client, namespace, &names, annotations).await?;
    Ok(names
        .into_iter()
        .zip(uids)
        .enumerate()
        .map(|(i, ((name, _), uid))| (name, uid, i % nodes.len()))
        .collect())
}

/// The addresses the pools record for pods, and how many are recorded twice across them, once the
/// pools hold no node reservation and have not changed for a second (at most a minute: agents
/// record, cool released addresses and give reservations back in background writes).
async fn recorded(client: &Client, pools: &[String]) -> Result<(usize, usize)> {
    let api: Api<SpiderIPPool> = Api::all(client.clone());
    let pools = with_shards(client, pools).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last: Option<(Vec<String>, Instant)> = None;
    loop {
        let mut versions = Vec::new();
        let (mut all, mut reserved) = (Vec::new(), 0);
        for pool in &pools {
            let pool = api.get(pool).await?;
            versions.push(pool.metadata.resource_version.clone().unwrap_or_default());
            for (ip, record) in pool.status.unwrap_or_default().allocations()? {
                match record.reservation() {
                    Some(_) => reserved += 1,
                    None => all.push(ip),
                }
            }
        }
        let now = Instant::now();
        let since = match &last {
            Some((seen, since)) if *seen == versions => *since,
            _ => now,
        };
        if (reserved == 0 && now.duration_since(since) >= Duration::from_secs(1)) || now >= deadline {
            let distinct: BTreeSet<&String> = all.iter().collect();
            return Ok((all.len(), all.len() - distinct.len()));
        }
        last = Some((versions, since));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `pools` and the shards of those served through shards.
async fn with_shards(client: &Client, pools: &[String]) -> Result<Vec<String>> {
    let api: Api<SpiderIPPool> = Api::all(client.clone());
    let mut all = Vec::new();
    for name in pools {
        let pool = api.get(name).await?;
        all.push(name.clone());
        if let Some(uid) = pool
            .metadata
            .uid
            .as_ref()
            .filter(|_| shards::is_sharded(&pool.metadata))
        {
            let selector = format!("{}={uid}", shards::LABEL_SHARD_OF);
            let found = api.list(&ListParams::default().labels(&selector)).await?;
            all.extend(found.items.into_iter().filter_map(|s| s.metadata.name));
        }
    }
    Ok(all)
}

/// Creates pool `name` from `spec` (`addresses` usable addresses), served through shards of
/// `shard_size` when that is not 0 and the pool holds more than one shard's worth and at most
/// [`shards::MAX_SHARDS`]'; then waits until the operator's pool controller has made them.
async fn create_pool(
    client: &Client,
    name: &str,
    spec: Value,
    addresses: usize,
    shard_size: u32,
) -> Result<()> {
    let size = shard_size as usize;
    let sharded = size > 0 && addresses > size && (addresses as u128) <= shards::MAX_SHARDS * size as u128;
    if !sharded {
        ipam::create_pool(client, name, spec).await?;
        return Ok(());
    }
    let pool: SpiderIPPool = serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
        "metadata": {"name": name, "annotations": {shards::ANNOTATION_SHARD_SIZE: shard_size.to_string()}},
        "spec": spec,
    }))?;
    let api: Api<SpiderIPPool> = Api::all(client.clone());
    api.create(&PostParams::default(), &pool).await?;
    let wanted = addresses.div_ceil(size);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let made = with_shards(client, &[name.to_owned()]).await?.len() - 1;
        if made == wanted {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "pool {name}: {made} of {wanted} shards after a minute"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes pools `pools` and their shards (no garbage collector runs in the bench's cluster).
async fn delete_pools(client: &Client, pools: &[String]) -> Result<()> {
    let api: Api<SpiderIPPool> = Api::all(client.clone());
    for pool in with_shards(client, pools).await? {
        api.delete(&pool, &DeleteParams::default()).await?;
    }
    Ok(())
}

/// A scenario: its pods' ADDs in tenths, then their DELs, each reported; then the checks.
#[allow(clippy::too_many_arguments, reason = "a benchmark's scenario")]
async fn scenario(
    label: &str,
    cluster: &TestCluster,
    client: &Client,
    daemons: &[Daemon],
    netconfs: &[Value],
    pools: &[String],
    pods: usize,
    tenths: bool,
) -> Result<()> {
    let plugin = ipam::plugin_binary(true)?;
    let rate = env_or::<f64>("SCALE_RATE", 100.0);
    let ns = cluster.namespace("scale").await?;
    let names: Vec<String> = daemons.iter().map(|d| d.node().to_owned()).collect();
    let annotations = match env_or::<String>("SCALE_POD_NETWORK", "nad".to_owned()).as_str() {
        // As Multus gives pods their network: the pod names a NetworkAttachmentDefinition holding
        // the CNI configuration (its pools; the socket path, which differs per agent on this one
        // machine, is not what the agents read from it).
        "nad" => {
            ipam::create_nad(&ns, "scale", &netconfs[0]).await?;
            json!({ANNO_POD_DEFAULT_NETWORK: format!("{}/scale", ns.name())})
        }
        "config" => json!({}),
        other => anyhow::bail!("SCALE_POD_NETWORK: unknown value {other} (nad, config)"),
    };
    let created = Instant::now();
    // Agents reserve ahead while pods are bound, before their ADDs: those writes count in the whole.
    let before_pods = spent(cluster, client, daemons).await?;
    let work = make_pods(client, ns.name(), pods, &names, &annotations).await?;
    println!(
        "{label}: {pods} pods on {} nodes (created in {:.1} s, not counted)",
        names.len(),
        created.elapsed().as_secs_f64()
    );
    let chunk = if tenths { pods.div_ceil(10) } else { pods };
    let mut ips = Vec::new();
    let mut failures = 0;
    for command in ["ADD", "DEL"] {
        for (index, slice) in work.chunks(chunk).enumerate() {
            let before = spent(cluster, client, daemons).await?;
            let (plugin, ns_name, slice, netconfs) = (
                plugin.clone(),
                ns.name().to_owned(),
                slice.to_vec(),
                netconfs.to_vec(),
            );
            let phase = tokio::task::spawn_blocking(move || {
                run_phase_open(command, &plugin, &slice, &ns_name, &netconfs, rate)
            })
            .await?;
            let cost = spent(cluster, client, daemons).await? - before;
            // The fill before a tenth's ADDs, or before a tenth's DELs.
            let part = match (tenths, command) {
                (false, _) => command.to_owned(),
                (true, "ADD") => format!("ADD at {:>3}%", index * 10),
                (true, _) => format!("DEL at {:>3}%", 100 - index * 10),
            };
            report(&part, &phase, &cost);
            failures += phase.failures.len();
            if command == "ADD" {
                ips.extend(phase.ips);
            }
        }
        if command == "ADD" {
            let whole = spent(cluster, client, daemons).await? - before_pods;
            println!(
                "  ADD in all, from the pods' creation: per call {:.3} req ({:.3} pool writes, {:.0} conflicts in all), {:.0} B in, API server {:.2} ms CPU",
                per(whole.requests, ips.len()),
                per(whole.agents.pool, ips.len()),
                whole.agents.conflicts,
                per(whole.request_bytes, ips.len()),
                per(whole.apiserver_cpu * 1e3, ips.len()),
            );
            let distinct: BTreeSet<&String> = ips.iter().collect();
            let (records, twice) = recorded(client, pools).await?;
            println!(
                "  after ADD: {} addresses handed out, {} duplicates; pools record {records} ({twice} recorded twice)",
                ips.len(),
                ips.len() - distinct.len(),
            );
            let (anon, file) = rss_now_mib(daemons);
            println!(
                "  agents' resident memory with the pools full (max of each): {anon:.1} MiB anonymous, {file:.1} MiB file-backed"
            );
            // The operator's full reclaim scan over every pool and endpoint (every pod alive: it must
            // release nothing), three times: one scan's time varies by a second from run to run.
            let config = ReclaimConfig::default();
            for _ in 0..3 {
                let started = Instant::now();
                let scan = scan_all(client, &config).await?;
                println!(
                    "  operator full reclaim scan: {:.2} s, {} released, {} judged releasable",
                    started.elapsed().as_secs_f64(),
                    scan.released.len(),
                    scan.unconfirmed
                );
            }
        }
    }
    let (left, _) = recorded(client, pools).await?;
    println!("  after DEL: pools record {left}; {failures} failed calls in all");
    // At once (grace period 0): no kubelet confirms a graceful deletion here, so the pods would
    // stay, terminating, and every later scenario's reclaim scan would list them too.
    Api::<Pod>::namespaced(client.clone(), ns.name())
        .delete_collection(&DeleteParams::default().grace_period(0), &ListParams::default())
        .await?;
    Ok(())
}

fn list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The pool spec of one size of the `fill` part.
fn sized_pool(size: &str, index: usize) -> Result<(Value, usize)> {
    let octet = 40 + index;
    Ok(match size {
        "1k" => (
            json!({"subnet": format!("10.{octet}.0.0/16"), "ips": [format!("10.{octet}.0.1-10.{octet}.3.232")], "gateway": format!("10.{octet}.255.254")}),
            1000,
        ),
        "10k" => (
            json!({"subnet": format!("10.{octet}.0.0/16"), "ips": [format!("10.{octet}.0.1-10.{octet}.39.16")], "gateway": format!("10.{octet}.255.254")}),
            10_000,
        ),
        "65k" => (
            json!({"subnet": format!("10.{octet}.0.0/16"), "ips": [format!("10.{octet}.0.1-10.{octet}.255.253")], "gateway": format!("10.{octet}.255.254")}),
            65_533,
        ),
        "v6" => (
            json!({"ipVersion": 6, "subnet": format!("fd00:{octet}::/64"), "ips": [format!("fd00:{octet}::1-fd00:{octet}::ffff:ffff:ffff:fffe")], "gateway": format!("fd00:{octet}::ffff:ffff:ffff:ffff")}),
            usize::MAX,
        ),
        other => anyhow::bail!("SCALE_SIZES: unknown size {other} (1k, 10k, 65k, v6)"),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let fill = env_or::<usize>("SCALE_FILL", 10_000);
    let cluster = TestCluster::start(ClusterOptions {
        install_nad_crd: true,
        ..ClusterOptions::apiserver_only()
    })
    .await?;
    let client = cluster.client()?;
    ipam::install_spiderpool_crds(&client).await?;
    let dir = tempfile::tempdir()?;
    let parts = list("SCALE_PARTS", "fill,nodes");
    let shard_size = env_or::<u32>("SCALE_SHARD_SIZE", 0);
    let _pool_controller = (shard_size > 0).then(|| {
        println!("pools of more than {shard_size} addresses are served through shards of {shard_size}");
        tokio::spawn(ippool::run(client.clone(), IPPoolControllerConfig::default()))
    });
    println!(
        "rate {} ADDs (then DELs) per second; fill {fill}",
        env_or::<f64>("SCALE_RATE", 100.0)
    );

    if parts.iter().any(|p| p == "fill") {
        let nodes: Vec<String> = (0..10).map(|i| format!("fill-node{i}")).collect();
        create_nodes(&client, &nodes).await?;
        let (daemons, ready) = start_agents(&cluster, &nodes, dir.path())?;
        println!("fill: 10 agents ready in {:.1} s", ready.as_secs_f64());
        for (index, size) in list("SCALE_SIZES", "1k,10k,65k,v6").iter().enumerate() {
            let (spec, addresses) = sized_pool(size, index)?;
            let name = format!("fill-{size}");
            create_pool(&client, &name, spec.clone(), addresses, shard_size).await?;
            let key = if spec["ipVersion"] == 6 {
                "default_ipv6_ippool"
            } else {
                "default_ipv4_ippool"
            };
            let netconfs: Vec<Value> = daemons
                .iter()
                .map(|d| {
                    let mut netconf = ipam::ipam_netconf("scale", d.socket(), &[], dir.path());
                    netconf["ipam"][key] = json!([name]);
                    netconf
                })
                .collect();
            let pods = fill.min(addresses);
            scenario(
                &format!(
                    "pool {size} ({} addresses)",
                    if addresses == usize::MAX {
                        "2^64".to_owned()
                    } else {
                        addresses.to_string()
                    }
                ),
                &cluster,
                &client,
                &daemons,
                &netconfs,
                &[name],
                pods,
                true,
            )
            .await?;
        }
        println!(
            "fill: agent peak RSS (max of 10) {:.1} MiB",
            peak_rss_mib(&daemons)
        );
        for daemon in daemons {
            daemon.stop()?;
        }
    }

    if parts.iter().any(|p| p == "nodes") {
        for count in list("SCALE_NODES", "10,50,100") {
            let count: usize = count.parse().context("SCALE_NODES")?;
            let nodes: Vec<String> = (0..count).map(|i| format!("n{count}-{i}")).collect();
            create_nodes(&client, &nodes).await?;
            let (daemons, ready) = start_agents(&cluster, &nodes, dir.path())?;
            println!("nodes: {count} agents ready in {:.1} s", ready.as_secs_f64());
            for layout in list("SCALE_LAYOUTS", "racks,shared") {
                let mut pools = Vec::new();
                match layout.as_str() {
                    "racks" => {
                        let racks = count.div_ceil(10);
                        // Each rack's pool holds its share of the pods twice over.
                        let per_rack = (2 * fill).div_ceil(racks);
                        for rack in 0..racks {
                            let name = format!("n{count}-rack{rack}");
                            let members: Vec<&String> = nodes.iter().skip(rack * 10).take(10).collect();
                            let base = u32::from(std::net::Ipv4Addr::new(
                                10,
                                100 + (rack / 16) as u8,
                                ((rack % 16) * 16) as u8,
                                1,
                            ));
                            let last = std::net::Ipv4Addr::from(base + per_rack as u32 - 1);
                            create_pool(
                                &client,
                                &name,
                                json!({"subnet": "10.96.0.0/11", "ips": [format!("{}-{last}", std::net::Ipv4Addr::from(base))],
                                       "gateway": "10.127.255.254", "nodeName": members}),
                                per_rack,
                                shard_size,
                            )
                            .await?;
                            pools.push(name);
                        }
                    }
                    "shared" => {
                        let name = format!("n{count}-shared");
                        create_pool(
                            &client,
                            &name,
                            json!({"subnet": "10.90.0.0/16", "ips": ["10.90.0.1-10.90.255.253"], "gateway": "10.90.255.254"}),
                            65_533,
                            shard_size,
                        )
                        .await?;
                        pools.push(name);
                    }
                    other => anyhow::bail!("SCALE_LAYOUTS: unknown layout {other} (racks, shared)"),
                }
                let names: Vec<&str> = pools.iter().map(String::as_str).collect();
                let netconfs: Vec<Value> = daemons
                    .iter()
                    .map(|d| ipam::ipam_netconf("scale", d.socket(), &names, dir.path()))
                    .collect();
                scenario(
                    &format!("{count} nodes, {layout} ({} pools)", pools.len()),
                    &cluster,
                    &client,
                    &daemons,
                    &netconfs,
                    &pools,
                    fill,
                    std::env::var("SCALE_NODE_TENTHS").is_ok_and(|v| v == "1"),
                )
                .await?;
                delete_pools(&client, &pools).await?;
            }
            println!(
                "nodes: {count} agents, peak RSS (max) {:.1} MiB",
                peak_rss_mib(&daemons)
            );
            for daemon in daemons {
                daemon.stop()?;
            }
        }
    }
    Ok(())
}
