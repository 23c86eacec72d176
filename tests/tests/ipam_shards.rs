//! A pool served through shards, end to end: the operator's pool controller makes the shards of a pool
//! that asks for them, real agents allocate from the shards only (each node from its own shard), the
//! pods' SpiderEndpoints name the shard, the pool's `allocatedIPCount` follows the sum of its shards',
//! and a deleted pool waits for its shards to hold no pod's address, then goes with them (garbage
//! collection by the real kube-controller-manager). Real API server, real `spiderpool` plugin binary;
//! no kubelet: pods are bare objects bound to a node name and the test plays the runtime's CNI calls.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use spiderpool_operator::controller::ippool::{self, IPPoolControllerConfig};
use spiderpool_schema::shards::{ANNOTATION_SHARD_SIZE, LABEL_SHARD_OF};
use spiderpool_schema::{SpiderEndpoint, SpiderIPPool};
use spiderpool_tests::daemon::Daemon;
use spiderpool_tests::ipam::{self, run_plugin};
use spiderpool_tests::prometheus::{apiserver_metrics, metric_sum};
use spiderpool_tests::wait::eventually;
use spiderpool_tests::{ClusterOptions, TestCluster, init_tracing};

/// The shards of pool `uid`, by name.
async fn shards_of(pools: &Api<SpiderIPPool>, uid: &str) -> Result<BTreeMap<String, SpiderIPPool>> {
    let list = pools
        .list(&ListParams::default().labels(&format!("{LABEL_SHARD_OF}={uid}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .map(|p| (p.metadata.name.clone().unwrap_or_default(), p))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_pool_is_served_through_its_shards_and_goes_with_them() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(ClusterOptions {
        scheduler: false,
        ..ClusterOptions::default()
    })
    .await?;
    let client = cluster.client()?;
    ipam::install_spiderpool_crds(&client).await?;
    let controller = tokio::spawn(ippool::run(client.clone(), IPPoolControllerConfig::default()));
    let ns = cluster.namespace("shards").await?;
    let pools = Api::<SpiderIPPool>::all(client.clone());

    // 100 usable addresses in shards of 32: four shards (32, 32, 32, 4).
    let mut big: SpiderIPPool = serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
        "metadata": {
            "name": "big",
            "annotations": {ANNOTATION_SHARD_SIZE: "32"},
            "finalizers": [spiderpool_schema::FINALIZER],
        },
        "spec": {"subnet": "10.61.0.0/16", "ips": ["10.61.0.1-10.61.0.101"], "excludeIPs": ["10.61.0.50"],
                 "gateway": "10.61.255.254"},
    }))?;
    big = pools.create(&Default::default(), &big).await?;
    let uid = big.metadata.uid.clone().context("pool without UID")?;
    let shards = eventually("the pool's four shards", Duration::from_secs(30), || async {
        let found = shards_of(&pools, &uid).await?;
        Ok((found.len() == 4).then_some(found))
    })
    .await?;
    let names: Vec<&str> = shards.keys().map(String::as_str).collect();
    ensure!(
        names == ["big-shard-0", "big-shard-1", "big-shard-2", "big-shard-3"],
        "shards {names:?}"
    );
    ensure!(
        shards["big-shard-1"].spec.ips == ["10.61.0.33-10.61.0.49", "10.61.0.51-10.61.0.65"],
        "{:?}",
        shards["big-shard-1"].spec.ips
    );
    ensure!(
        shards["big-shard-3"].spec.ips == ["10.61.0.98-10.61.0.101"],
        "{:?}",
        shards["big-shard-3"].spec.ips
    );
    ensure!(
        shards
            .values()
            .all(|s| s.spec.gateway.as_deref() == Some("10.61.255.254"))
    );

    // Two nodes, three pods each, the pool named in the CNI configuration as users name it.
    let dir = tempfile::tempdir()?;
    let plugin = ipam::plugin_binary(false)?;
    let mut pods = Vec::new();
    let mut daemons = Vec::new();
    for node in ["shard-node-a", "shard-node-b"] {
        let daemon = Daemon::start(&cluster, node, dir.path(), false, &[])?;
        let names: Vec<(String, String)> = (0..3)
            .map(|i| (format!("{node}-pod-{i}"), node.to_owned()))
            .collect();
        let uids = ipam::create_bare_pods(&client, ns.name(), &names, &json!({})).await?;
        let netconf = ipam::ipam_netconf("shards", daemon.socket(), &["big"], dir.path());
        for ((name, _), uid) in names.into_iter().zip(uids) {
            pods.push((node, name, uid, netconf.clone()));
        }
        daemons.push(daemon);
    }
    // The runtime's call for one pod, which must succeed; its output.
    let call =
        |command: &str, name: &str, uid: &str, netconf: &serde_json::Value| -> Result<serde_json::Value> {
            let run = run_plugin(
                &plugin,
                command,
                &format!("c-{name}"),
                "eth0",
                (ns.name(), name, uid),
                netconf,
            )?;
            ensure!(
                run.success,
                "{command} of {name} failed: {} / {}",
                run.output,
                run.stderr
            );
            Ok(run.output)
        };
    let mut answered = BTreeMap::new();
    for (node, name, uid, netconf) in &pods {
        let output = call("ADD", name, uid, netconf)?;
        let ip = ipam::result_ip(&output).context("no address in the ADD result")?;
        ensure!(output["ips"][0]["gateway"] == "10.61.255.254", "gateway {output}");
        let ep = ns
            .api::<SpiderEndpoint>()
            .get(name)
            .await
            .with_context(|| format!("the endpoint of {name}"))?;
        let detail = ep
            .status
            .unwrap_or_default()
            .current
            .ips
            .into_iter()
            .next()
            .context("no address in the endpoint")?;
        let shard = detail.ipv4_pool.unwrap_or_default();
        ensure!(
            detail
                .ipv4
                .as_deref()
                .is_some_and(|a| a.starts_with(&format!("{ip}/"))),
            "endpoint {:?} vs {ip}",
            detail.ipv4
        );
        ensure!(
            shards.contains_key(&shard),
            "{name}'s endpoint names pool {shard}, not a shard of big"
        );
        answered.insert(ip, (*node, shard));
    }
    ensure!(answered.len() == 6, "duplicate addresses among {answered:?}");
    for node in ["shard-node-a", "shard-node-b"] {
        let used: BTreeSet<&String> = answered
            .values()
            .filter(|(n, _)| *n == node)
            .map(|(_, s)| s)
            .collect();
        ensure!(
            used.len() == 1,
            "node {node} drew from {used:?}, not from one shard"
        );
    }

    // Every address is recorded once, in its shard; none in the pool; the pool counts them all.
    let mut recorded = BTreeMap::new();
    for shard in shards.keys() {
        for (ip, pod_uid) in ipam::pool_records(&client, shard).await? {
            ensure!(
                recorded.insert(ip.clone(), pod_uid).is_none(),
                "{ip} recorded twice"
            );
        }
    }
    let ips: BTreeSet<&String> = answered.keys().collect();
    ensure!(
        recorded.keys().collect::<BTreeSet<_>>() == ips,
        "records {recorded:?} vs answers {answered:?}"
    );
    let own = pools.get("big").await?.status.unwrap_or_default().allocations()?;
    ensure!(own.is_empty(), "the pool itself records {own:?}");
    eventually("the pool's count of 6", Duration::from_secs(20), || async {
        let status = pools.get("big").await?.status.unwrap_or_default();
        Ok((status.allocated_ip_count == Some(6) && status.total_ip_count == Some(100)).then_some(()))
    })
    .await?;

    // A reconcile that finds everything as it should be writes nothing (a label of the pool's
    // changes: the controller looks at the pool and its shards again).
    let patches = || async {
        let metrics = apiserver_metrics(&client).await?;
        anyhow::Ok(metric_sum(
            &metrics,
            "apiserver_request_total",
            &["resource=\"spiderippools\"", "verb=\"PATCH\""],
        ))
    };
    let before = patches().await?;
    pools
        .patch(
            "big",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let made = patches().await? - before;
    ensure!(
        made == 1.0,
        "{made} pool patches for one label change: the controller rewrote what was right"
    );

    // A shard whose addresses someone changed is reported on its pool and left as it is.
    let moved = json!({"spec": {"ips": ["10.61.0.98-10.61.0.100"]}});
    pools
        .patch("big-shard-3", &PatchParams::default(), &Patch::Merge(&moved))
        .await?;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let note = eventually(
        "a ShardsFailed event on the pool",
        Duration::from_secs(20),
        || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("ShardsFailed")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("big")
                })
                .map(|e| e.note.unwrap_or_default()))
        },
    )
    .await?;
    ensure!(
        note.contains("big-shard-3") && note.contains("never changed once made"),
        "{note}"
    );
    let shard = pools.get("big-shard-3").await?;
    ensure!(
        shard.spec.ips == ["10.61.0.98-10.61.0.100"],
        "the operator changed the shard: {:?}",
        shard.spec.ips
    );
    let back = json!({"spec": {"ips": ["10.61.0.98-10.61.0.101"]}});
    pools
        .patch("big-shard-3", &PatchParams::default(), &Patch::Merge(&back))
        .await?;

    // Deleted while its shards hold addresses, the pool waits; once they are released it goes, and
    // its shards with it.
    pools.delete("big", &DeleteParams::default()).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = pools
        .get_opt("big")
        .await?
        .context("the pool went while its shards held addresses")?;
    ensure!(waiting.metadata.deletion_timestamp.is_some());
    for (_, name, uid, netconf) in &pods {
        call("DEL", name, uid, netconf)?;
    }
    eventually(
        "the pool and its shards to go",
        Duration::from_secs(60),
        || async {
            let pool_left = pools.get_opt("big").await?.is_some();
            let shards_left = shards_of(&pools, &uid).await?.len();
            Ok((!pool_left && shards_left == 0).then_some(()))
        },
    )
    .await?;
    for daemon in daemons {
        daemon.stop()?;
    }
    controller.abort();
    Ok(())
}
