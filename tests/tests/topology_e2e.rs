//! A SpiderNetwork end to end: one network across two racks, each rack routed with a subnet of its
//! own. The operator's controllers (in-process) apply the pools and the SpiderMultusConfig, whose
//! NetworkAttachmentDefinition is the simulated nodes' network (Debian's macvlan with IPAM delegated to
//! our `spiderpool` plugin and a real `spiderpool-agent` per node). A pod on each rack's node gets an
//! address of its rack's subnet: the NAD lists every rack's pool and the agent keeps the one whose
//! node affinity matches its node.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;
use spiderpool_operator::controller::{multusconfig, network};
use spiderpool_operator::metrics::Metrics;
use spiderpool_schema::SpiderNetwork;
use spiderpool_tests::daemon::Daemon;
use spiderpool_tests::{
    DefaultNetwork, NodeSimulator, SimOptions, TestCluster, init_tracing, ipam, tools, wait_for,
};

const TIMEOUT: Duration = Duration::from_secs(90);
const RACK_LABEL: &str = "spiderpool.test/rack";

fn topology(name: &str, namespace: &str, racks: [&str; 2]) -> Result<SpiderNetwork> {
    let rack = |rack: &str, subnet: &str, range: &str| {
        json!({"name": rack, "nodeSelector": {"matchLabels": {RACK_LABEL: rack}}, "uplinks": ["eth0"],
               "ranges": [{"subnet": subnet, "ipv4": [range]}]})
    };
    Ok(serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderNetwork",
        "metadata": {"name": name},
        "spec": {
            "subnets": [
                {"name": "rack-a", "role": "fabric", "ipv4": {"cidr": "10.77.1.0/24", "gateway": "10.77.1.1"}},
                {"name": "rack-b", "role": "fabric", "ipv4": {"cidr": "10.77.2.0/24", "gateway": "10.77.2.1"}}
            ],
            "racks": [
                rack(racks[0], "rack-a", "10.77.1.10-10.77.1.50"),
                rack(racks[1], "rack-b", "10.77.2.10-10.77.2.50")
            ],
            // The simulated nodes' underlay is eth0; no coordinator (this tier runs no coordinator).
            "networks": [{"name": "fabric", "type": "macvlan", "subnetRole": "fabric", "master": "eth0",
                          "enableCoordinator": false, "namespaces": [namespace]}]
        }
    }))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_an_address_of_their_racks_subnet() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::shared().await?;
    let client = cluster.client()?;
    ipam::install_spiderpool_crds(&client).await?;
    tools::debian_cni_plugin("macvlan")?;
    let plugin = ipam::plugin_binary(false)?;
    let ns = cluster.namespace("topology-e2e").await?;
    let suffix = ns.name().rsplit('-').next().unwrap_or("x").to_string();
    let racks = [format!("ra-{suffix}"), format!("rb-{suffix}")];
    let name = format!("fabric-{suffix}");

    let metrics = Arc::new(Metrics::default());
    let networks = tokio::spawn(network::run_with(
        client.clone(),
        metrics.clone(),
        network::Options::default(),
    ));
    let multus = tokio::spawn(multusconfig::run_with(
        client.clone(),
        metrics,
        multusconfig::Options {
            instance: Some("test".into()),
            ..multusconfig::Options::default()
        },
    ));
    let outcome = async {
        let spider_networks: Api<SpiderNetwork> = Api::all(client.clone());
        spider_networks
            .create(
                &PostParams::default(),
                &topology(&name, ns.name(), [&racks[0], &racks[1]])?,
            )
            .await?;
        // The NAD the SpiderMultusConfig controller renders from the topology's SMC.
        let gvk = GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "network-attachment-definitions");
        let nads: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &resource);
        let nad = wait_for("the topology's NAD", TIMEOUT, || async {
            Ok(nads.get_opt("fabric").await?)
        })
        .await?;
        let config = nad.data["spec"]["config"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        ensure!(
            config.contains(&format!("{name}-rack-a-{}-v4", racks[0]))
                && config.contains(&format!("{name}-rack-b-{}-v4", racks[1])),
            "the NAD lists both racks' pools: {config}"
        );

        let dir = tempfile::tempdir()?;
        let mut options = SimOptions::new(DefaultNetwork::Nad {
            namespace: ns.name().to_owned(),
            name: "fabric".to_owned(),
        });
        options
            .cni_path
            .push(plugin.parent().context("plugin dir")?.to_path_buf());
        options.node_env.push(Daemon::socket_env(dir.path()));
        let sim = NodeSimulator::start(client.clone(), options).await?;
        let nodes: Api<Node> = Api::all(client.clone());
        for (node, rack) in sim.node_names().iter().zip(&racks) {
            let patch = json!({"metadata": {"labels": {RACK_LABEL: rack}}});
            nodes
                .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        let daemons = sim
            .node_names()
            .iter()
            .map(|node| Daemon::start(cluster, node, dir.path(), false, &[]))
            .collect::<Result<Vec<_>>>()?;

        let pods: Api<Pod> = ns.api();
        for (i, node) in sim.node_names().iter().enumerate() {
            let mut spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(json!({
                "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
                "terminationGracePeriodSeconds": 0,
            }))?;
            sim.place(&mut spec);
            spec.node_name = Some(node.clone());
            // What an app binding with an `eth0` interface on this network gives its pods (the pools name
            // the network in multusName, so the pod must say it is attached to it).
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("p{i}"),
                             "annotations": {"v1.multus-cni.io/default-network": format!("{}/fabric", ns.name())}},
                "spec": spec
            }))?;
            pods.create(&PostParams::default(), &pod).await?;
        }
        let mut addresses = Vec::new();
        for i in 0..2 {
            let pod = format!("p{i}");
            sim.wait_pod(ns.name(), &pod, TIMEOUT)
                .await
                .with_context(|| daemons.iter().map(|d| d.log()).collect::<Vec<_>>().join("\n"))?;
            let out = sim.exec_in_pod(
                ns.name(),
                &pod,
                &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
            )?;
            let address = out
                .split_whitespace()
                .skip_while(|w| *w != "inet")
                .nth(1)
                .map(str::to_owned)
                .with_context(|| format!("{pod}: no IPv4 address: {out}"))?;
            addresses.push(address);
        }
        let in_range = |address: &str, prefix: &str| {
            address.starts_with(prefix)
                && address.ends_with("/24")
                && address
                    .trim_start_matches(prefix)
                    .trim_end_matches("/24")
                    .parse::<u8>()
                    .is_ok_and(|host| (10..=50).contains(&host))
        };
        ensure!(
            in_range(&addresses[0], "10.77.1."),
            "the pod on rack a's node: {}",
            addresses[0]
        );
        ensure!(
            in_range(&addresses[1], "10.77.2."),
            "the pod on rack b's node: {}",
            addresses[1]
        );
        for i in 0..2 {
            pods.delete(&format!("p{i}"), &DeleteParams::default()).await?;
        }
        wait_for("the pods to be gone", TIMEOUT, || async {
            Ok(pods
                .list(&Default::default())
                .await?
                .items
                .is_empty()
                .then_some(()))
        })
        .await?;
        // The simulator runs the pods' DEL after the API server lets them go: wait for it.
        wait_for("the simulator to tear the pods down", TIMEOUT, || async {
            Ok(sim.pods().is_empty().then_some(()))
        })
        .await?;
        let errors = sim.take_errors();
        sim.shutdown().await?;
        drop(daemons);
        spider_networks.delete(&name, &DeleteParams::default()).await?;
        ensure!(
            errors.iter().all(|e| e.contains("not found")),
            "node simulator errors: {errors:#?}"
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    networks.abort();
    multus.abort();
    outcome
}
