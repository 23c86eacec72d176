//! The chart's whole life on real nodes, on a cluster of its own (it ends with `helm uninstall`, which
//! the shared cluster of `realnode_e2e` must not see): install from the project's images, an
//! underlay-only workload gets and gives back its addresses, then the removal docs/install.md
//! documents (the user's objects while the operator runs, then `helm uninstall`) leaves no pod of
//! the release, no webhook configuration, and nothing waiting on a finalizer. No cleanup script.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use serde_json::json;
use spiderpool_schema::{SpiderCoordinator, SpiderEndpoint, SpiderIPPool, SpiderMultusConfig};
use spiderpool_tests::realnode::workload::{self, Placement};
use spiderpool_tests::realnode::{self, RealCluster, RealClusterOptions};
use spiderpool_tests::{init_tracing, ipam, wait_for};

const POD_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_serves_a_workload_and_uninstalls_leaving_nothing_stuck() -> Result<()> {
    init_tracing();
    // The two underlay nodes of the standard layout: no Multus, our chain as the primary CNI.
    let mut options = RealClusterOptions::standard();
    options.nodes.retain(|n| !n.multus);
    let cluster = RealCluster::start(options).await?;
    let installed = realnode::chart::install(&cluster).await?;
    eprintln!(
        "TIMING real-node cluster {:?}; chart installed {:?}",
        cluster.startup_times(),
        installed.times
    );
    let client = cluster.client()?;

    // A workload gets addresses and gives every one back.
    let ns = cluster.namespace("life").await?;
    let pods = ns.api::<Pod>();
    let pool = format!("{}-v4", ns.name());
    let (first, last) = cluster.address_block(4)?;
    ipam::create_pool(
        &client,
        &pool,
        json!({
            "subnet": cluster.underlay().subnet().to_string(),
            "ips": [format!("{first}-{last}")],
            "gateway": cluster.underlay().gateway().to_string(),
        }),
    )
    .await?;
    let annotations = workload::ippool_annotation(&pool);
    for node in cluster.nodes() {
        let name = format!("app-{}", node.name());
        let pod = workload::busybox_pod(
            cluster.busybox(),
            &name,
            &Placement::Node(node.name().to_owned()),
            &["sleep", "3600"],
            &annotations,
        )?;
        pods.create(&Default::default(), &pod).await?;
    }
    for node in cluster.nodes() {
        let pod = workload::wait_running(&pods, &format!("app-{}", node.name()), POD_TIMEOUT).await?;
        ensure!(workload::pod_ips(&pod).len() == 1, "{:?}", pod.status);
    }
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let allocated = || async {
        let pool = pools.get(&pool).await?;
        anyhow::Ok(pool.status.and_then(|s| s.allocated_ip_count).unwrap_or(0))
    };
    ensure!(allocated().await? == 2, "two pods, two addresses");
    for node in cluster.nodes() {
        workload::delete_and_wait(&pods, &format!("app-{}", node.name()), POD_TIMEOUT).await?;
    }
    wait_for(
        "every address back in the pool",
        Duration::from_secs(60),
        || async {
            let endpoints = ns.api::<SpiderEndpoint>().list(&ListParams::default()).await?;
            Ok((allocated().await? == 0 && endpoints.items.is_empty()).then_some(()))
        },
    )
    .await?;

    // docs/install.md "Uninstall": the user's objects first, while the operator runs, then helm.
    let t0 = Instant::now();
    pools.delete(&pool, &DeleteParams::default()).await?;
    let coordinators: Api<SpiderCoordinator> = Api::all(client.clone());
    coordinators
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    let smcs: Api<SpiderMultusConfig> = Api::all(client.clone());
    for smc in smcs.list(&ListParams::default()).await?.items {
        let namespace = smc.metadata.namespace.clone().unwrap_or_default();
        let name = smc.metadata.name.clone().unwrap_or_default();
        Api::<SpiderMultusConfig>::namespaced(client.clone(), &namespace)
            .delete(&name, &DeleteParams::default())
            .await?;
    }
    let gone = wait_for("the user's objects gone", Duration::from_secs(60), || async {
        let left = pools.list(&ListParams::default()).await?.items.len()
            + coordinators.list(&ListParams::default()).await?.items.len()
            + smcs.list(&ListParams::default()).await?.items.len();
        Ok((left == 0).then_some(()))
    })
    .await;
    if let Err(err) = gone {
        let mut left = Vec::new();
        for pool in pools.list(&ListParams::default()).await?.items {
            left.push(format!(
                "SpiderIPPool {} {:?} {:?}",
                pool.metadata.name.unwrap_or_default(),
                pool.metadata.finalizers,
                pool.metadata.deletion_timestamp
            ));
        }
        for c in coordinators.list(&ListParams::default()).await?.items {
            left.push(format!(
                "SpiderCoordinator {} {:?} {:?}",
                c.metadata.name.unwrap_or_default(),
                c.metadata.finalizers,
                c.metadata.deletion_timestamp
            ));
        }
        for smc in smcs.list(&ListParams::default()).await?.items {
            left.push(format!(
                "SpiderMultusConfig {} {:?} {:?}",
                smc.metadata.name.unwrap_or_default(),
                smc.metadata.finalizers,
                smc.metadata.deletion_timestamp
            ));
        }
        return Err(err.context(format!(
            "the operator removes its finalizers while it runs; left: {left:#?}"
        )));
    }
    realnode::chart::uninstall(&client, &installed.release).await?;
    eprintln!("TIMING objects deleted and helm uninstall in {:?}", t0.elapsed());
    let crashed = cluster.crashed();
    ensure!(crashed.is_empty(), "node processes died: {crashed:?}");
    Ok(())
}
