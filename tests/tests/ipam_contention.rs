//! Many node daemons allocating from one pool at once, against the real API server: the pool holds
//! exactly as many addresses as there are pods. Every pod must get an address, no address twice; the
//! next pod must be refused as "exhausted"; after every DEL every address is free again.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result, ensure};
use serde_json::json;
use spiderpool_tests::daemon::Daemon;
use spiderpool_tests::ipam::{self, run_plugin};
use spiderpool_tests::{ClusterOptions, TestCluster, init_tracing};

const NODES: usize = 10;
const PODS_PER_NODE: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_daemons_fill_a_pool_exactly_without_duplicates_and_free_it_again() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(ClusterOptions::apiserver_only()).await?;
    let client = cluster.client()?;
    ipam::install_spiderpool_crds(&client).await?;
    let ns = cluster.namespace("contention").await?;
    let pods = NODES * PODS_PER_NODE;
    // Exactly `pods` usable addresses: 10.20.0.1 - 10.20.0.(pods+1) minus one excluded, minus one
    // reserved cluster-wide.
    let last = pods + 2;
    ipam::create_pool(
        &client,
        "contended",
        json!({"subnet": "10.20.0.0/16", "ips": [format!("10.20.0.1-10.20.0.{last}")],
               "excludeIPs": ["10.20.0.2"], "gateway": "10.20.255.254"}),
    )
    .await?;
    let reserved: spiderpool_schema::SpiderReservedIP = serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderReservedIP",
        "metadata": {"name": "contention-reserved"},
        "spec": {"ipVersion": 4, "ips": ["10.20.0.3"]},
    }))?;
    kube::Api::<spiderpool_schema::SpiderReservedIP>::all(client.clone())
        .create(&Default::default(), &reserved)
        .await?;

    let dir = tempfile::tempdir()?;
    let plugin = ipam::plugin_binary(false)?;
    let nodes: Vec<String> = (0..NODES).map(|i| format!("contention-node{i}")).collect();
    let daemons: Vec<Daemon> = nodes
        .iter()
        .map(|node| Daemon::start(&cluster, node, dir.path(), false, &[]))
        .collect::<Result<_>>()?;

    let names: Vec<(String, String)> = (0..=pods)
        .map(|i| (format!("pod-{i}"), nodes[i % NODES].clone()))
        .collect();
    let uids = ipam::create_bare_pods(&client, ns.name(), &names, &json!({})).await?;

    // Two pods per node first, so that every node has seen demand (one pod alone reserves nothing)
    // and reserved a few addresses;
    // then every other pod's ADD at once, one thread per pod, each running the real plugin binary.
    // The burst is then served partly from those reservations (asserted below), and the pool runs
    // out exactly while nodes still hold some: the end-game the reservations must get right.
    let namespace = ns.name().to_owned();
    let spawn_add = |i: usize| {
        let netconf = ipam::ipam_netconf(
            "contended-net",
            daemons[i % NODES].socket(),
            &["contended"],
            dir.path(),
        );
        let (name, uid) = (names[i].0.clone(), uids[i].clone());
        let (plugin, namespace) = (plugin.clone(), namespace.clone());
        std::thread::spawn(move || {
            run_plugin(
                &plugin,
                "ADD",
                &format!("c-{name}"),
                "eth0",
                (&namespace, &name, &uid),
                &netconf,
            )
        })
    };
    let first_wave: Vec<_> = (0..2 * NODES).map(spawn_add).collect();
    let mut runs = Vec::with_capacity(pods);
    for handle in first_wave {
        runs.push(handle.join().expect("plugin thread")?);
    }
    // Each node's first write reserved for the pods bound to it that are still to start (the
    // forecast that sizes reservations), never more, and within the even share of the pool.
    let pool = kube::Api::<spiderpool_schema::SpiderIPPool>::all(client.clone())
        .get("contended")
        .await?;
    let records = pool.status.unwrap_or_default().allocations()?;
    let mut reserved_by_node: BTreeMap<String, usize> = BTreeMap::new();
    let mut started_by_node: BTreeMap<String, usize> = BTreeMap::new();
    for record in records.values() {
        match record.reservation() {
            Some(node) => *reserved_by_node.entry(node.to_owned()).or_default() += 1,
            None => {
                let index: usize = record
                    .pod
                    .rsplit("/pod-")
                    .next()
                    .and_then(|i| i.parse().ok())
                    .with_context(|| format!("unexpected pod record {record:?}"))?;
                *started_by_node.entry(nodes[index % NODES].clone()).or_default() += 1;
            }
        }
    }
    for node in &nodes {
        let bound = names.iter().filter(|(_, n)| n == node).count();
        let started = started_by_node.get(node).copied().unwrap_or(0);
        let reserved = reserved_by_node.get(node).copied().unwrap_or(0);
        // Handed-out reservations not yet recorded for their pods still count as reservations.
        ensure!(
            reserved <= bound - started,
            "{node} holds {reserved} reservations for {} pods still without a recorded address",
            bound - started
        );
    }
    let total_reserved: usize = reserved_by_node.values().sum();
    ensure!(
        total_reserved >= 3 * NODES,
        "after the first wave the nodes reserved only {total_reserved} addresses for the {} pods to come: \
         {reserved_by_node:?}",
        pods - 2 * NODES
    );

    let burst: Vec<_> = (2 * NODES..pods).map(spawn_add).collect();
    for handle in burst {
        runs.push(handle.join().expect("plugin thread")?);
    }
    let mut ips = BTreeSet::new();
    for (run, (name, _)) in runs.into_iter().zip(&names) {
        ensure!(run.success, "{name}: ADD failed: {} / {}", run.output, run.stderr);
        let ip =
            ipam::result_ip(&run.output).with_context(|| format!("{name}: no address in {}", run.output))?;
        ensure!(
            !["10.20.0.2", "10.20.0.3"].contains(&ip.as_str()),
            "{name} got excluded/reserved {ip}"
        );
        ensure!(ips.insert(ip.clone()), "{name}: {ip} given twice");
        ensure!(
            run.output["routes"][0]["gw"] == "10.20.255.254",
            "{name}: {}",
            run.output
        );
    }
    ensure!(ips.len() == pods);
    // The burst was served partly from node reservations (the path that must never duplicate).
    let mut handouts = 0.0;
    for daemon in &daemons {
        handouts += daemon.metric("spiderpool_ipam_reserved_handouts_total")?;
    }
    println!("{handouts} of {pods} addresses were handed out from node reservations");
    ensure!(handouts > 0.0, "no address came from a node reservation");
    let records = ipam::pool_records(&client, "contended").await?;
    ensure!(records.len() == pods, "pool records {} != {pods}", records.len());
    ensure!(
        records.keys().cloned().collect::<BTreeSet<_>>() == ips,
        "pool records differ from the answers"
    );

    // The pool is full: the next pod is refused with "exhausted", and nothing is recorded for it.
    let (extra, extra_uid) = (&names[pods].0, &uids[pods]);
    let netconf = ipam::ipam_netconf("contended-net", daemons[0].socket(), &["contended"], dir.path());
    let run = run_plugin(
        &plugin,
        "ADD",
        "c-extra",
        "eth0",
        (ns.name(), extra, extra_uid),
        &netconf,
    )?;
    ensure!(
        !run.success,
        "an ADD beyond the pool's size succeeded: {}",
        run.output
    );
    ensure!(
        run.output["code"] == 102,
        "expected code 102 (pools exhausted): {}",
        run.output
    );
    ensure!(
        run.output["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("all IP addresses used out"),
        "{}",
        run.output
    );
    ensure!(ipam::pool_records(&client, "contended").await?.len() == pods);

    // Repeating an ADD gives the same answer (idempotent), without a new record.
    let run = run_plugin(
        &plugin,
        "ADD",
        "c-pod-0",
        "eth0",
        (ns.name(), "pod-0", &uids[0]),
        &ipam::ipam_netconf("contended-net", daemons[0].socket(), &["contended"], dir.path()),
    )?;
    ensure!(run.success, "{}", run.output);
    ensure!(ipam::pool_records(&client, "contended").await?.len() == pods);

    // Every DEL at once, then every address is free.
    let mut handles = Vec::new();
    for (i, ((name, _), uid)) in names.iter().zip(&uids).enumerate().take(pods) {
        let netconf = ipam::ipam_netconf(
            "contended-net",
            daemons[i % NODES].socket(),
            &["contended"],
            dir.path(),
        );
        let (plugin, name, uid, namespace) = (plugin.clone(), name.clone(), uid.clone(), namespace.clone());
        handles.push(std::thread::spawn(move || {
            run_plugin(
                &plugin,
                "DEL",
                &format!("c-{name}"),
                "eth0",
                (&namespace, &name, &uid),
                &netconf,
            )
        }));
    }
    for (handle, (name, _)) in handles.into_iter().zip(&names) {
        let run = handle.join().expect("plugin thread")?;
        ensure!(run.success, "{name}: DEL failed: {} / {}", run.output, run.stderr);
    }
    // DEL answers once the pod's endpoint is gone; each daemon records the releases in its next pool
    // write (within about a second), keeps them through the release cooldown (5 s) and gives them
    // back when idle (within a few more).
    let started = std::time::Instant::now();
    loop {
        let records = ipam::pool_records(&client, "contended").await?;
        if records.is_empty() {
            break;
        }
        ensure!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "addresses still held 15 s after every DEL: {records:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    println!(
        "pool empty {:.1} s after the last DEL",
        started.elapsed().as_secs_f64()
    );
    let endpoints = ns
        .api::<spiderpool_schema::SpiderEndpoint>()
        .list(&Default::default())
        .await?;
    ensure!(
        endpoints.items.is_empty(),
        "{} SpiderEndpoints left",
        endpoints.items.len()
    );

    // A second DEL is harmless.
    let run = run_plugin(
        &plugin,
        "DEL",
        "c-pod-0",
        "eth0",
        (ns.name(), "pod-0", &uids[0]),
        &ipam::ipam_netconf("contended-net", daemons[0].socket(), &["contended"], dir.path()),
    )?;
    ensure!(run.success, "{}", run.output);

    let mut conflicts = 0.0;
    let mut writes = 0.0;
    for d in &daemons {
        conflicts += d.metric("spiderpool_ipam_update_ippool_conflict_counts_total")?;
        writes += d.metric("spiderpool_ipam_api_writes_total{kind=\"ippool_status\"}")?;
    }
    tracing::info!(
        pods,
        writes,
        conflicts,
        "pool status writes for {pods} allocations and releases"
    );
    Ok(())
}
