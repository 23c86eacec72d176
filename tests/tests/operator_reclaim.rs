//! IP reclaim against a real control plane. Pool records and SpiderEndpoints are written here as the
//! node daemon writes them; pods stay Pending (no kubelet), which is all GC needs.
//!
//! Covered: a force-deleted pod's address and endpoint go (event path); a StatefulSet pod keeps its
//! address when its pod is deleted and also when scaled away (unlike upstream: the member gets it back
//! when scaled up again), and loses it when the StatefulSet is deleted; a pod stuck terminating past its
//! grace period is released; the periodic scan releases a record whose pod never existed and deletes an
//! endpoint nothing needs.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use spiderpool_operator::controller::ippool::{self, IPPoolControllerConfig};
use spiderpool_operator::controller::reclaim::{self, ReclaimConfig};
use spiderpool_schema::endpoint::{IPAllocationDetail, PodIPAllocation, SpiderEndpointStatus};
use spiderpool_schema::ippool::PoolIPAllocation;
use spiderpool_schema::{FINALIZER, SpiderEndpoint, SpiderIPPool, SpiderIPPoolSpec};
use spiderpool_tests::wait::eventually;
use spiderpool_tests::{TestCluster, TestNamespace, init_tracing};

const WAIT: Duration = Duration::from_secs(60);
const POOL: &str = "reclaim-pool";

async fn install_crds(client: &Client) -> Result<()> {
    let mut yaml = String::new();
    for (_, file) in spiderpool_schema::crd_files()? {
        yaml.push_str("---\n");
        yaml.push_str(&file);
    }
    spiderpool_tests::cluster::install_crd_yaml(client, &yaml).await?;
    Ok(())
}

fn pod(name: &str, finalizer: bool) -> Pod {
    let mut p: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/none:1"}]}
    }))
    .unwrap();
    if finalizer {
        p.metadata.finalizers = Some(vec!["spiderpool.test/hold".into()]);
    }
    p
}

/// Adds a record to the pool as the node daemon does (read-modify-write with resourceVersion).
async fn add_record(client: &Client, ip: &str, pod: &str, uid: &str) -> Result<()> {
    add_record_in(client, POOL, ip, pod, uid).await
}

async fn add_record_in(client: &Client, pool: &str, ip: &str, pod: &str, uid: &str) -> Result<()> {
    let api: Api<SpiderIPPool> = Api::all(client.clone());
    let (pod, uid) = (pod.to_string(), uid.to_string());
    ippool::update_allocations(&api, pool, |records| {
        records.insert(
            ip.to_string(),
            spiderpool_schema::ippool::PoolIPAllocation::held_by(pod.clone(), uid.clone()),
        );
        (true, ())
    })
    .await?;
    Ok(())
}

async fn record_of(client: &Client, ip: &str) -> Result<Option<String>> {
    record_in(client, POOL, ip).await
}

async fn record_in(client: &Client, pool: &str, ip: &str) -> Result<Option<String>> {
    let api: Api<SpiderIPPool> = Api::all(client.clone());
    let pool = api.get(pool).await?;
    let records = pool.status.unwrap_or_default().allocations()?;
    Ok(records.get(ip).map(|r| r.pod_uid.clone()))
}

/// Writes the endpoint the node daemon writes: finalizer, ownerReference to the pod for stateless pods.
async fn add_endpoint(
    ns: &TestNamespace,
    name: &str,
    uid: &str,
    ip: &str,
    owner: (&str, &str),
    pod_owned: bool,
) -> Result<()> {
    ns.api::<SpiderEndpoint>()
        .create(
            &PostParams::default(),
            &endpoint(ns, POOL, name, uid, ip, owner, pod_owned),
        )
        .await?;
    Ok(())
}

fn endpoint(
    ns: &TestNamespace,
    pool: &str,
    name: &str,
    uid: &str,
    ip: &str,
    owner: (&str, &str),
    pod_owned: bool,
) -> SpiderEndpoint {
    let mut ep = SpiderEndpoint::new(
        name,
        ns.name(),
        SpiderEndpointStatus {
            current: PodIPAllocation {
                uid: uid.into(),
                node: "node-1".into(),
                ips: vec![IPAllocationDetail {
                    nic: "eth0".into(),
                    ipv4: Some(format!("{ip}/24")),
                    ipv4_pool: Some(pool.into()),
                    ..IPAllocationDetail::default()
                }],
            },
            owner_controller_type: owner.0.into(),
            owner_controller_name: owner.1.into(),
        },
    );
    ep.metadata.finalizers = Some(vec![FINALIZER.into()]);
    if pod_owned {
        ep.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: name.into(),
            uid: uid.into(),
            ..OwnerReference::default()
        }]);
    }
    ep
}

async fn endpoint_exists(ns: &TestNamespace, name: &str) -> Result<bool> {
    Ok(ns.api::<SpiderEndpoint>().get_opt(name).await?.is_some())
}

async fn force_delete(ns: &TestNamespace, name: &str) -> Result<()> {
    ns.api::<Pod>()
        .delete(name, &DeleteParams::default().grace_period(0))
        .await?;
    Ok(())
}

/// Deletes pool `name` if an earlier run left it, and creates it afresh with one range.
async fn recreate_pool(pools: &Api<SpiderIPPool>, name: &str, subnet: &str, range: &str) -> Result<()> {
    let _ = pools.delete(name, &DeleteParams::default()).await;
    pools
        .create(
            &PostParams::default(),
            &SpiderIPPool::new(
                name,
                SpiderIPPoolSpec {
                    subnet: subnet.into(),
                    ips: vec![range.into()],
                    ..SpiderIPPoolSpec::default()
                },
            ),
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_releases_what_is_dead_and_keeps_what_is_retained() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::shared().await?;
    let client = cluster.client()?;
    install_crds(&client).await?;
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    recreate_pool(&pools, POOL, "10.99.0.0/24", "10.99.0.1-10.99.0.50").await?;
    let ns = cluster.namespace("reclaim").await?;
    let config = ReclaimConfig {
        scan_interval: Duration::from_secs(3),
        trace_interval: Duration::from_millis(500),
        confirm_after: Duration::from_secs(5),
        ..ReclaimConfig::default()
    };
    let metrics = config.metrics.clone();
    let pool_counts = tokio::spawn(ippool::run(
        client.clone(),
        IPPoolControllerConfig {
            resync: Duration::from_secs(2),
            retry_delay: Duration::from_millis(500),
        },
    ));

    // A StatefulSet whose pods exist (Pending) before GC starts.
    let sts: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {"replicas": 2, "serviceName": "db", "podManagementPolicy": "Parallel", "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}},
                              "spec": {"containers": [{"name": "c", "image": "registry.invalid/none:1"}]}}}
    }))?;
    ns.api::<StatefulSet>()
        .create(&PostParams::default(), &sts)
        .await?;
    let pods: Api<Pod> = ns.api();
    let db1 = eventually("pod db-1", WAIT, || async {
        pods.get_opt("db-1").await.map_err(Into::into)
    })
    .await?;
    let db1_uid = db1.uid().unwrap();
    add_record(&client, "10.99.0.2", &format!("{}/db-1", ns.name()), &db1_uid).await?;
    add_endpoint(&ns, "db-1", &db1_uid, "10.99.0.2", ("StatefulSet", "db"), false).await?;

    // A live stateless pod, to be force-deleted.
    let web = pods.create(&PostParams::default(), &pod("web-1", false)).await?;
    let web_uid = web.uid().unwrap();
    add_record(&client, "10.99.0.1", &format!("{}/web-1", ns.name()), &web_uid).await?;
    add_endpoint(&ns, "web-1", &web_uid, "10.99.0.1", ("Pod", "web-1"), true).await?;

    // A pod that will hang terminating (a finalizer holds it).
    let stuck = pods.create(&PostParams::default(), &pod("stuck", true)).await?;
    let stuck_uid = stuck.uid().unwrap();
    add_record(&client, "10.99.0.3", &format!("{}/stuck", ns.name()), &stuck_uid).await?;
    add_endpoint(&ns, "stuck", &stuck_uid, "10.99.0.3", ("Pod", "stuck"), true).await?;

    let gc = tokio::spawn(reclaim::run(client.clone(), config.clone()));

    // Live pods keep their addresses.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (ip, uid) in [
        ("10.99.0.1", &web_uid),
        ("10.99.0.2", &db1_uid),
        ("10.99.0.3", &stuck_uid),
    ] {
        ensure!(
            record_of(&client, ip).await?.as_ref() == Some(uid),
            "{ip} was released from a live pod"
        );
    }

    // Force-deleted stateless pod: one look does not free its address...
    force_delete(&ns, "web-1").await?;
    let report = reclaim::scan_all(&client, &config).await?;
    ensure!(
        report.released.iter().all(|r| r.1 != "10.99.0.1"),
        "one look released the address of a pod deleted a moment ago: {report:?}"
    );
    ensure!(
        record_of(&client, "10.99.0.1").await?.as_ref() == Some(&web_uid),
        "one look released the address of a pod deleted a moment ago"
    );
    // ...a second one, some time later, does, with its endpoint.
    eventually("web-1 released and its endpoint deleted", WAIT, || async {
        let released = record_of(&client, "10.99.0.1").await?.is_none();
        Ok((released && !endpoint_exists(&ns, "web-1").await?).then_some(()))
    })
    .await?;

    // Terminating past grace (unbound pods get grace 0).
    pods.delete("stuck", &DeleteParams::default()).await?;
    eventually("stuck pod released", WAIT, || async {
        let released = record_of(&client, "10.99.0.3").await?.is_none();
        Ok((released && !endpoint_exists(&ns, "stuck").await?).then_some(()))
    })
    .await?;
    pods.patch(
        "stuck",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;

    // Valid StatefulSet member: its pod is deleted and recreated with a new UID; the address stays,
    // through event path and scans alike.
    force_delete(&ns, "db-1").await?;
    eventually("db-1 recreated", WAIT, || async {
        Ok(pods
            .get_opt("db-1")
            .await?
            .filter(|p| p.uid() != Some(db1_uid.clone()))
            .map(|_| ()))
    })
    .await?;
    let report = reclaim::scan_all(&client, &config).await?;
    ensure!(
        report.released.iter().all(|r| r.1 != "10.99.0.2"),
        "scan released a retained address: {report:?}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    ensure!(
        record_of(&client, "10.99.0.2").await?.as_ref() == Some(&db1_uid),
        "retained address released"
    );
    ensure!(endpoint_exists(&ns, "db-1").await?, "retained endpoint deleted");

    // Scaled down: db-1's pod goes, but the StatefulSet still exists, so the address and endpoint stay
    // for when it is scaled up again (a deliberate difference from upstream, which releases them).
    ns.api::<StatefulSet>()
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await?;
    eventually("db-1 deleted by the scale-down", WAIT, || async {
        Ok(pods.get_opt("db-1").await?.is_none().then_some(()))
    })
    .await?;
    let report = reclaim::scan_all(&client, &config).await?;
    ensure!(
        report.released.iter().all(|r| r.1 != "10.99.0.2"),
        "scan released the address of a scaled-down StatefulSet member: {report:?}"
    );
    // Long enough for the event path and at least one periodic scan.
    tokio::time::sleep(Duration::from_secs(5)).await;
    ensure!(
        record_of(&client, "10.99.0.2").await?.as_ref() == Some(&db1_uid),
        "the address of a scaled-down StatefulSet member was released"
    );
    ensure!(
        endpoint_exists(&ns, "db-1").await?,
        "the endpoint of a scaled-down StatefulSet member was deleted"
    );

    // The StatefulSet is deleted: address and endpoint go.
    ns.api::<StatefulSet>()
        .delete("db", &DeleteParams::default())
        .await?;
    eventually(
        "db-1 released after the StatefulSet was deleted",
        WAIT,
        || async {
            let released = record_of(&client, "10.99.0.2").await?.is_none();
            Ok((released && !endpoint_exists(&ns, "db-1").await?).then_some(()))
        },
    )
    .await?;

    // The periodic scan: a record whose pod never existed, an endpoint nothing needs.
    add_record(&client, "10.99.0.4", &format!("{}/ghost", ns.name()), "ghost-uid").await?;
    add_endpoint(
        &ns,
        "leftover",
        "leftover-uid",
        "10.99.0.9",
        ("Pod", "leftover"),
        false,
    )
    .await?;
    eventually("ghost record and leftover endpoint cleaned", WAIT, || async {
        let released = record_of(&client, "10.99.0.4").await?.is_none();
        Ok((released && !endpoint_exists(&ns, "leftover").await?).then_some(()))
    })
    .await?;

    // Node agents' reservations: one of a node that exists stays (its agent gives it back or hands
    // it out); one of a node that is gone is released, since no agent ever will.
    let nodes: Api<Node> = Api::all(client.clone());
    let live_node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "reclaim-live-node"}
    }))?;
    let _ = nodes.create(&PostParams::default(), &live_node).await;
    let api: Api<SpiderIPPool> = Api::all(client.clone());
    ippool::update_allocations(&api, POOL, |records| {
        records.insert(
            "10.99.0.40".into(),
            PoolIPAllocation::reserved_for("reclaim-live-node"),
        );
        records.insert(
            "10.99.0.41".into(),
            PoolIPAllocation::reserved_for("reclaim-gone-node"),
        );
        (true, ())
    })
    .await?;
    eventually("the reservation of the gone node released", WAIT, || async {
        Ok(record_of(&client, "10.99.0.41").await?.is_none().then_some(()))
    })
    .await?;
    let report = reclaim::scan_all(&client, &config).await?;
    ensure!(
        report.released.iter().all(|r| r.1 != "10.99.0.40"),
        "scan released the reservation of a live node: {report:?}"
    );
    ensure!(
        record_of(&client, "10.99.0.40").await?.is_some(),
        "the reservation of a live node was released"
    );
    ensure!(
        metrics.released_total(reclaim::decide::ReleaseReason::NodeGone) >= 1,
        "node_gone release not counted"
    );

    // Counts follow (a reservation is not an allocated address), and metrics saw it.
    eventually("pool count 0", WAIT, || async {
        let p = pools.get(POOL).await?;
        Ok((p.status.unwrap_or_default().allocated_ip_count == Some(0)).then_some(()))
    })
    .await?;
    let released: u64 = [
        reclaim::decide::ReleaseReason::PodGone,
        reclaim::decide::ReleaseReason::TerminatingPastGrace,
        reclaim::decide::ReleaseReason::NoLongerRetained,
    ]
    .into_iter()
    .map(|r| metrics.released_total(r))
    .sum();
    ensure!(released >= 4, "released counter {released}");

    gc.abort();
    pool_counts.abort();
    ns.delete().await?;
    pools.delete(POOL, &DeleteParams::default()).await?;
    nodes
        .delete("reclaim-live-node", &DeleteParams::default())
        .await?;
    Ok(())
}

/// Issue 13 (chaos seed 0x5eed0013): a pod force-deleted and recreated under its name before its old
/// sandbox's DEL left the old incarnation's record and endpoint; reclaim freed the record and kept the
/// endpoint, which then claimed an address the pool had given to another pod. The released
/// incarnation's endpoint must go, and before its record: while it cannot be deleted, the record
/// stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_pods_endpoint_goes_before_its_record() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::shared().await?;
    let client = cluster.client()?;
    install_crds(&client).await?;
    const ORDER_POOL: &str = "reclaim-order-pool";
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    recreate_pool(&pools, ORDER_POOL, "10.98.0.0/24", "10.98.0.1-10.98.0.50").await?;
    let ns = cluster.namespace("reclaim-order").await?;
    let pods: Api<Pod> = ns.api();
    let endpoints: Api<SpiderEndpoint> = ns.api();
    let config = ReclaimConfig {
        confirm_after: Duration::from_secs(1),
        ..ReclaimConfig::default()
    };
    // Two looks, the second one past the confirmation delay.
    let two_looks = || async {
        reclaim::scan_all(&client, &config).await?;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        reclaim::scan_all(&client, &config).await
    };

    // web-1's first incarnation holds 10.98.0.1; its endpoint also carries another finalizer, so
    // reclaim cannot delete it. web-2's first incarnation holds 10.98.0.2 and its endpoint is
    // already the new incarnation's (its ADD came): only the record is left over. web-3's first
    // incarnation holds 10.98.0.4 and left its endpoint: both go.
    let mut old_uids = Vec::new();
    for (name, ip) in [
        ("web-1", "10.98.0.1"),
        ("web-2", "10.98.0.2"),
        ("web-3", "10.98.0.4"),
    ] {
        let old = pods.create(&PostParams::default(), &pod(name, false)).await?;
        let uid = old.uid().unwrap();
        add_record_in(&client, ORDER_POOL, ip, &format!("{}/{name}", ns.name()), &uid).await?;
        old_uids.push(uid);
    }
    let mut held = endpoint(
        &ns,
        ORDER_POOL,
        "web-1",
        &old_uids[0],
        "10.98.0.1",
        ("Pod", "web-1"),
        false,
    );
    held.metadata
        .finalizers
        .get_or_insert_with(Vec::new)
        .push("spiderpool.test/hold".into());
    endpoints.create(&PostParams::default(), &held).await?;
    endpoints
        .create(
            &PostParams::default(),
            &endpoint(
                &ns,
                ORDER_POOL,
                "web-3",
                &old_uids[2],
                "10.98.0.4",
                ("Pod", "web-3"),
                false,
            ),
        )
        .await?;
    let mut new_uids = Vec::new();
    for name in ["web-1", "web-2", "web-3"] {
        force_delete(&ns, name).await?;
        let uid = eventually("the pod recreated", WAIT, || async {
            match pods.create(&PostParams::default(), &pod(name, false)).await {
                Ok(created) => Ok(created.uid()),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await?;
        new_uids.push(uid);
    }
    add_record_in(
        &client,
        ORDER_POOL,
        "10.98.0.3",
        &format!("{}/web-2", ns.name()),
        &new_uids[1],
    )
    .await?;
    endpoints
        .create(
            &PostParams::default(),
            &endpoint(
                &ns,
                ORDER_POOL,
                "web-2",
                &new_uids[1],
                "10.98.0.3",
                ("Pod", "web-2"),
                false,
            ),
        )
        .await?;

    let report = two_looks().await?;
    ensure!(
        record_in(&client, ORDER_POOL, "10.98.0.1").await?.as_ref() == Some(&old_uids[0]),
        "web-1's old record was released while its endpoint, which reclaim could not delete, still claims it: {report:?}"
    );
    ensure!(endpoint_exists(&ns, "web-1").await?, "web-1's endpoint vanished");
    ensure!(
        record_in(&client, ORDER_POOL, "10.98.0.2").await?.is_none(),
        "web-2's old record was not released: {report:?}"
    );
    let web2 = endpoints.get("web-2").await?;
    ensure!(
        web2.status.map(|s| s.current.uid) == Some(new_uids[1].clone()),
        "the new web-2's endpoint was touched"
    );
    ensure!(
        !endpoint_exists(&ns, "web-3").await?,
        "the replaced web-3's endpoint was kept: {report:?}"
    );
    ensure!(
        record_in(&client, ORDER_POOL, "10.98.0.4").await?.is_none(),
        "web-3's old record was kept: {report:?}"
    );

    // Once nothing holds web-1's endpoint any more (reclaim removed its own finalizer), it is gone,
    // and then its record goes.
    endpoints
        .patch(
            "web-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await?;
    let report = two_looks().await?;
    ensure!(
        !endpoint_exists(&ns, "web-1").await?,
        "the replaced pod's endpoint was kept: {report:?}"
    );
    ensure!(
        record_in(&client, ORDER_POOL, "10.98.0.1").await?.is_none(),
        "web-1's old record was kept: {report:?}"
    );

    for name in ["web-1", "web-2", "web-3"] {
        force_delete(&ns, name).await?;
    }
    ns.delete().await?;
    let _ = pools.delete(ORDER_POOL, &DeleteParams::default()).await;
    Ok(())
}
