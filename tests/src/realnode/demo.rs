//! The local demo's scenario (`tests/demo up`): on a real-node cluster with Spiderpool, an underlay
//! pool, a secondary network on each Multus node's uplink, and two workloads, one with an underlay
//! NIC next to the pod network (through the Multus stand-in) and one with the underlay as its only
//! network; then what a user would look at: the pools, the endpoints, the pods with their addresses,
//! and a ping across nodes over the underlay. The real-node tests run the same scenario, so the demo
//! cannot rot unnoticed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use spiderpool_schema::{SpiderEndpoint, SpiderIPPool};

use super::workload::{self, Placement};
use super::{PRIMARY_CNI_LABEL, PRIMARY_MULTUS_STANDIN, PRIMARY_UNDERLAY, RealCluster, underlay};
use crate::multus::{NETWORK_STATUS_ANNOTATION, NETWORKS_ANNOTATION, NetworkStatus};

/// The demo's namespace.
pub const NAMESPACE: &str = "demo";
/// The demo's pool.
pub const POOL: &str = "demo-underlay";
/// The field manager of everything the demo applies.
const MANAGER: &str = "spiderpool-demo";

/// What [`deploy`] created, for [`report`] and [`ping_across_nodes`].
#[derive(Debug, Clone)]
pub struct Scenario {
    pub namespace: String,
    pub pool: String,
    /// The Deployments, by name: (replicas, node label value they run on).
    pub deployments: BTreeMap<String, (i32, String)>,
}

/// Applies the scenario (server-side apply, so running it twice changes nothing) into `namespace`
/// with the pool `pool`, and waits until every replica runs.
pub async fn deploy(cluster: &RealCluster, namespace: &str, pool: &str) -> Result<Scenario> {
    let client = cluster.client()?;
    let apply = PatchParams::apply(MANAGER).force();
    let ns: Namespace = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
    )?;
    Api::<Namespace>::all(client.clone())
        .patch(namespace, &apply, &Patch::Apply(&ns))
        .await
        .context("applying the namespace")?;
    let (first, last) = cluster.address_block(24)?;
    let underlay = cluster.underlay();
    let pool_object: SpiderIPPool = serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": pool},
        "spec": {
            "subnet": underlay.subnet().to_string(),
            "ips": [format!("{first}-{last}")],
            "gateway": underlay.gateway().to_string(),
        },
    }))?;
    Api::<SpiderIPPool>::all(client.clone())
        .patch(pool, &apply, &Patch::Apply(&pool_object))
        .await
        .context("applying the pool")?;
    let nad = json!({
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "uplink", "namespace": namespace},
        "spec": {"config": json!({
            "cniVersion": "1.0.0", "name": "uplink",
            "plugins": [{"type": "macvlan", "master": underlay::UPLINK_NIC, "mode": "bridge", "ipam": {"type": "spiderpool"}}],
        }).to_string()},
    });
    let nads: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &nad_resource());
    nads.patch("uplink", &apply, &Patch::Apply(&nad))
        .await
        .context("applying the NetworkAttachmentDefinition")?;

    let multi_nic = [
        (NETWORKS_ANNOTATION.to_owned(), "uplink".to_owned()),
        (
            "ipam.spidernet.io/ippools".to_owned(),
            json!([{"interface": "net1", "ipv4": [pool]}]).to_string(),
        ),
    ];
    let underlay_only = [(
        "ipam.spidernet.io/ippool".to_owned(),
        json!({"ipv4": [pool]}).to_string(),
    )];
    let deployments = BTreeMap::from([
        ("web".to_owned(), (2, PRIMARY_MULTUS_STANDIN.to_owned())),
        ("underlay-web".to_owned(), (2, PRIMARY_UNDERLAY.to_owned())),
    ]);
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    for (name, (replicas, role)) in &deployments {
        let annotations: BTreeMap<String, String> = if role == PRIMARY_MULTUS_STANDIN {
            multi_nic.iter().cloned().collect()
        } else {
            underlay_only.iter().cloned().collect()
        };
        let deployment = web_deployment(cluster.busybox(), name, *replicas, role, &annotations)?;
        api.patch(name, &apply, &Patch::Apply(&deployment))
            .await
            .with_context(|| format!("applying Deployment {name}"))?;
    }
    let scenario = Scenario {
        namespace: namespace.to_owned(),
        pool: pool.to_owned(),
        deployments,
    };
    wait_available(&client, &scenario, Duration::from_secs(180)).await?;
    Ok(scenario)
}

fn nad_resource() -> kube::api::ApiResource {
    let gvk = kube::api::GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition");
    kube::api::ApiResource::from_gvk_with_plural(&gvk, "network-attachment-definitions")
}

/// An HTTP server (busybox httpd answering its hostname) with one replica per node of `role`.
fn web_deployment(
    image: &str,
    name: &str,
    replicas: i32,
    role: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {
                    "nodeSelector": {PRIMARY_CNI_LABEL: role},
                    "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {"app": name}}, "topologyKey": "kubernetes.io/hostname"}
                    ]}},
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "httpd",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"],
                        "ports": [{"containerPort": 8080}],
                    }],
                },
            },
        },
    }))?)
}

async fn wait_available(client: &Client, scenario: &Scenario, timeout: Duration) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), &scenario.namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &scenario.namespace);
    for (name, (replicas, _)) in &scenario.deployments {
        let outcome = crate::wait_for(&format!("Deployment {name} available"), timeout, || async {
            let deployment = api.get(name).await?;
            let available = deployment.status.and_then(|s| s.available_replicas).unwrap_or(0);
            Ok((available >= *replicas).then_some(()))
        })
        .await;
        if let Err(err) = outcome {
            let mut detail = String::new();
            for pod in pods
                .list(&ListParams::default().labels(&format!("app={name}")))
                .await?
                .items
            {
                let pod_name = pod.metadata.name.clone().unwrap_or_default();
                let _ = writeln!(
                    detail,
                    "--- {pod_name}:\n{}",
                    workload::describe(&pods, &pod_name).await
                );
            }
            return Err(err.context(detail));
        }
    }
    Ok(())
}

fn network_status(pod: &Pod) -> Vec<NetworkStatus> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NETWORK_STATUS_ANNOTATION))
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

/// The addresses of a pod per interface: the network-status annotation where Multus wrote one,
/// else the pod IPs on `eth0`.
pub fn interface_addresses(pod: &Pod) -> BTreeMap<String, Vec<String>> {
    let statuses = network_status(pod);
    if statuses.is_empty() {
        return BTreeMap::from([("eth0".to_owned(), workload::pod_ips(pod))]);
    }
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for status in statuses {
        out.entry(status.interface).or_default().extend(status.ips);
    }
    out
}

/// Rows as an aligned table.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("   ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// What a user would look at, like `kubectl get nodes`, `kubectl get spiderippool`, `kubectl get
/// spiderendpoint` and `kubectl get pods -o wide` with each interface's addresses.
pub async fn report(client: &Client, scenario: &Scenario) -> Result<String> {
    let mut out = String::new();
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let node_rows: Vec<Vec<String>> = nodes
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|n| {
            let labels = n.metadata.labels.clone().unwrap_or_default();
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status.clone())
                .unwrap_or_default();
            let ip = n
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
                .map(|a| a.address.clone())
                .unwrap_or_default();
            let info = n
                .status
                .as_ref()
                .and_then(|s| s.node_info.clone())
                .unwrap_or_default();
            vec![
                n.metadata.name.clone().unwrap_or_default(),
                ready,
                ip,
                labels.get(PRIMARY_CNI_LABEL).cloned().unwrap_or_default(),
                labels.get(super::RACK_LABEL).cloned().unwrap_or_default(),
                info.kubelet_version,
                info.container_runtime_version,
            ]
        })
        .collect();
    let _ = writeln!(
        out,
        "$ kubectl get nodes\n{}\n",
        table(
            &[
                "NAME",
                "READY",
                "INTERNAL-IP",
                "PRIMARY CNI",
                "RACK",
                "KUBELET",
                "RUNTIME"
            ],
            &node_rows
        )
    );

    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let pool_rows: Vec<Vec<String>> = pools
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|p| {
            let value = serde_json::to_value(p).unwrap_or_default();
            vec![
                p.metadata.name.clone().unwrap_or_default(),
                text(value.pointer("/spec/subnet")),
                text(value.pointer("/spec/gateway")),
                text(value.pointer("/status/allocatedIPCount")),
                text(value.pointer("/status/totalIPCount")),
            ]
        })
        .collect();
    let _ = writeln!(
        out,
        "$ kubectl get spiderippool\n{}\n",
        table(
            &[
                "NAME",
                "SUBNET",
                "GATEWAY",
                "ALLOCATED-IP-COUNT",
                "TOTAL-IP-COUNT"
            ],
            &pool_rows
        )
    );

    let endpoints: Api<SpiderEndpoint> = Api::namespaced(client.clone(), &scenario.namespace);
    let endpoint_rows: Vec<Vec<String>> = endpoints
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|e| {
            let value = serde_json::to_value(e).unwrap_or_default();
            let current = value.pointer("/status/current");
            let ips: Vec<String> = current
                .and_then(|c| c.get("ips"))
                .and_then(Value::as_array)
                .map(|ips| {
                    ips.iter()
                        .map(|ip| format!("{}={}", text(ip.get("interface")), text(ip.get("ipv4"))))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                e.metadata.name.clone().unwrap_or_default(),
                ips.join(","),
                text(current.and_then(|c| c.get("node"))),
            ]
        })
        .collect();
    let _ = writeln!(
        out,
        "$ kubectl get spiderendpoint -n {}\n{}\n",
        scenario.namespace,
        table(&["NAME", "INTERFACE=IPV4", "NODE"], &endpoint_rows)
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), &scenario.namespace);
    let mut pod_rows = Vec::new();
    for pod in pods.list(&ListParams::default()).await?.items {
        let addresses = interface_addresses(&pod)
            .into_iter()
            .map(|(iface, ips)| format!("{iface}={}", ips.join("+")))
            .collect::<Vec<_>>()
            .join(" ");
        pod_rows.push(vec![
            pod.metadata.name.clone().unwrap_or_default(),
            pod.status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default(),
            workload::pod_node(&pod).unwrap_or_default(),
            addresses,
        ]);
    }
    let _ = writeln!(
        out,
        "$ kubectl get pods -n {} -o wide   (addresses from the network-status annotation)\n{}",
        scenario.namespace,
        table(&["NAME", "STATUS", "NODE", "ADDRESSES"], &pod_rows)
    );
    Ok(out)
}

/// From a new pod on another node of the same kind, pings one replica of each Deployment on its
/// underlay address (`net1` for the Multus workload, `eth0` for the underlay-only one); returns the
/// transcript.
pub async fn ping_across_nodes(cluster: &RealCluster, scenario: &Scenario) -> Result<String> {
    let client = cluster.client()?;
    let pods: Api<Pod> = Api::namespaced(client, &scenario.namespace);
    let mut transcript = String::new();
    for (name, (_, role)) in &scenario.deployments {
        let target = pods
            .list(&ListParams::default().labels(&format!("app={name}")))
            .await?
            .items
            .into_iter()
            .next()
            .with_context(|| format!("no pod of {name}"))?;
        let target_node = workload::pod_node(&target).unwrap_or_default();
        let (iface, annotations) = if role == PRIMARY_MULTUS_STANDIN {
            let annotations = target.metadata.annotations.clone().unwrap_or_default();
            let keep = [NETWORKS_ANNOTATION, "ipam.spidernet.io/ippools"];
            (
                "net1",
                annotations
                    .into_iter()
                    .filter(|(k, _)| keep.contains(&k.as_str()))
                    .collect(),
            )
        } else {
            ("eth0", workload::ippool_annotation(&scenario.pool))
        };
        let address = interface_addresses(&target)
            .get(iface)
            .and_then(|ips| ips.first().cloned())
            .with_context(|| format!("{name} has no address on {iface}"))?;
        let from = cluster
            .nodes_with(PRIMARY_CNI_LABEL, role)
            .into_iter()
            .find(|n| n.name() != target_node)
            .with_context(|| format!("no second {role} node"))?;
        let output = workload::run_to_completion(
            &pods,
            cluster.busybox(),
            &Placement::Node(from.name().to_owned()),
            &["ping", "-I", iface, "-c", "3", "-W", "2", &address],
            &annotations,
            Duration::from_secs(90),
        )
        .await?;
        let _ = writeln!(
            transcript,
            "$ ping -I {iface} {address}   (a pod on {} to {name} on {target_node})\n{}",
            from.name(),
            output.trim_end()
        );
    }
    Ok(transcript)
}
