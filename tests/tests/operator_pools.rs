//! The SpiderIPPool controller against a real API server: counts follow records and `ips` changes, a
//! terminating pool loses its finalizer once empty, and an automatic pool whose application is gone is
//! deleted (only when it asks for it).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use spiderpool_ipmath::IpFamily;
use spiderpool_operator::controller::ippool::{self, IPPoolControllerConfig};
use spiderpool_schema::annotations::{AppRef, auto_pool_labels};
use spiderpool_schema::ippool::PoolIPAllocation;
use spiderpool_schema::{FINALIZER, SpiderIPPool, SpiderIPPoolSpec};
use spiderpool_tests::wait::eventually;
use spiderpool_tests::{TestCluster, init_tracing};

async fn install_crds(client: &Client) -> Result<()> {
    let mut yaml = String::new();
    for (_, file) in spiderpool_schema::crd_files()? {
        yaml.push_str("---\n");
        yaml.push_str(&file);
    }
    spiderpool_tests::cluster::install_crd_yaml(client, &yaml).await?;
    Ok(())
}

fn pool(name: &str, ips: &[&str], exclude: &[&str]) -> SpiderIPPool {
    let mut p = SpiderIPPool::new(
        name,
        SpiderIPPoolSpec {
            subnet: "10.77.0.0/24".into(),
            ips: ips.iter().map(|s| s.to_string()).collect(),
            exclude_ips: exclude.iter().map(|s| s.to_string()).collect(),
            ..SpiderIPPoolSpec::default()
        },
    );
    p.metadata.finalizers = Some(vec![FINALIZER.into()]);
    p
}

async fn counts(api: &Api<SpiderIPPool>, name: &str) -> Result<(Option<i64>, Option<i64>)> {
    let p = api.get(name).await?;
    let s = p.status.unwrap_or_default();
    Ok((s.total_ip_count, s.allocated_ip_count))
}

async fn write_records(api: &Api<SpiderIPPool>, name: &str, ips: &[&str]) -> Result<()> {
    let records: BTreeMap<String, PoolIPAllocation> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            (
                ip.to_string(),
                PoolIPAllocation::held_by(format!("ns/pod-{i}"), format!("uid-{i}")),
            )
        })
        .collect();
    let text = if records.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&records)?)
    };
    // As the node daemon writes: records only, the count left to whoever keeps it (here: wrong on
    // purpose, so the controller has to fix it).
    let patch = json!({"status": {"allocatedIPs": text, "allocatedIPCount": 999}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_controller_keeps_counts_finalizers_and_orphans() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::shared().await?;
    let client = cluster.client()?;
    install_crds(&client).await?;
    let controller = tokio::spawn(ippool::run(
        client.clone(),
        IPPoolControllerConfig {
            resync: Duration::from_secs(2),
            retry_delay: Duration::from_millis(500),
        },
    ));
    let api: Api<SpiderIPPool> = Api::all(client.clone());
    let wait = Duration::from_secs(30);

    // Counts after creation: 10 addresses minus 3 excluded.
    api.create(
        &PostParams::default(),
        &pool("counts", &["10.77.0.10-10.77.0.19"], &["10.77.0.17-10.77.0.19"]),
    )
    .await?;
    eventually("initial counts", wait, || async {
        Ok((counts(&api, "counts").await? == (Some(7), Some(0))).then_some(()))
    })
    .await?;

    // Records written by the allocator: the allocated count follows.
    write_records(&api, "counts", &["10.77.0.10", "10.77.0.11", "10.77.0.12"]).await?;
    eventually("allocated count 3", wait, || async {
        Ok((counts(&api, "counts").await? == (Some(7), Some(3))).then_some(()))
    })
    .await?;

    // ips changed: the total follows.
    let patch = json!({"spec": {"ips": ["10.77.0.10-10.77.0.29"]}});
    api.patch("counts", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    eventually("total 17", wait, || async {
        Ok((counts(&api, "counts").await? == (Some(17), Some(3))).then_some(()))
    })
    .await?;

    // A terminating pool keeps its finalizer while addresses are allocated...
    api.delete("counts", &DeleteParams::default()).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = api
        .get("counts")
        .await
        .context("pool must still exist while allocated")?;
    assert!(
        still
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&FINALIZER.to_string())
    );
    // ...and loses it once they are released.
    write_records(&api, "counts", &[]).await?;
    eventually("terminating empty pool gone", wait, || async {
        Ok(api.get_opt("counts").await?.is_none().then_some(()))
    })
    .await?;

    // Automatic pools of an application that does not exist: deleted only with reclaim=true.
    let ghost = AppRef {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        namespace: "default".into(),
        name: "no-such-deployment".into(),
        uid: "00000000-0000-0000-0000-000000000000".into(),
    };
    let third_party_ghost = AppRef {
        api_version: "apps.kruise.io/v1alpha1".into(),
        kind: "CloneSet".into(),
        ..ghost.clone()
    };
    for (name, app, reclaim) in [
        ("orphan-reclaim", &ghost, true),
        ("orphan-keep", &ghost, false),
        ("orphan-third-party", &third_party_ghost, true),
    ] {
        let mut p = pool(name, &["10.77.0.100"], &[]);
        p.metadata.labels = Some(auto_pool_labels(
            "s",
            "10-77-0-0-24",
            app,
            "eth0",
            IpFamily::V4,
            reclaim,
        ));
        api.create(&PostParams::default(), &p).await?;
    }
    eventually("orphaned pools deleted", wait, || async {
        let reclaimed = api.get_opt("orphan-reclaim").await?.is_none();
        let third = api.get_opt("orphan-third-party").await?.is_none();
        Ok((reclaimed && third).then_some(()))
    })
    .await?;
    let kept = api
        .get("orphan-keep")
        .await
        .context("reclaim=false pool must stay")?;
    assert_eq!(kept.status.and_then(|s| s.total_ip_count), Some(1));

    api.delete("orphan-keep", &DeleteParams::default()).await?;
    eventually("cleanup", wait, || async {
        Ok(api.get_opt("orphan-keep").await?.is_none().then_some(()))
    })
    .await?;
    controller.abort();
    Ok(())
}
