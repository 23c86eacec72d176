//! The real-node tier: real kubelets, containerd and kube-proxy on this machine, pods started by
//! the real runtime (see `spiderpool_tests::realnode`). One cluster for every test of this binary,
//! a namespace per test.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use serde_json::json;
use spiderpool_tests::init_tracing;
use spiderpool_tests::realnode::RealCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_on_real_nodes_and_reach_each_other_over_the_pod_network() -> Result<()> {
    init_tracing();
    let cluster = RealCluster::shared().await?;
    eprintln!("startup: {:?}", cluster.startup_times());
    let ns = cluster.namespace("smoke").await?;
    let pods = ns.api::<Pod>();
    for node in ["multus-0", "multus-1"] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("sleeper-{node}")},
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": cluster.busybox(), "imagePullPolicy": "Never",
                                 "command": ["sleep", "3600"]}],
            },
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    let ip = spiderpool_tests::wait_for("the pods to run", Duration::from_secs(60), || async {
        let a = pods.get("sleeper-multus-0").await?;
        let b = pods.get("sleeper-multus-1").await?;
        let ip = |p: &Pod| p.status.as_ref().and_then(|s| s.pod_ip.clone());
        Ok(ip(&a).zip(ip(&b)))
    })
    .await?;
    eprintln!("pod IPs: {ip:?}");
    Ok(())
}
