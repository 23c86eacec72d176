//! Node objects without a kubelet: registering a Node (Ready, with a Lease in `kube-node-lease`),
//! heartbeats, and waiting until the node-lifecycle controller lets the scheduler use it. The node
//! simulator and the chaos suite play kubelet's API part with these.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::{tools, util};

/// The taint the node-lifecycle controller keeps on a node until it has seen it Ready.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";

/// What a kubelet would register about its node.
#[derive(Debug, Clone)]
pub struct NodeRegistration {
    pub name: String,
    /// InternalIP.
    pub ip: Ipv4Addr,
    /// Labels beyond the standard `kubernetes.io/{hostname,os,arch}` ones.
    pub labels: BTreeMap<String, String>,
    /// `spec.taints` (a JSON array).
    pub taints: Value,
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn conditions(now: &Time) -> Value {
    let c = |ty: &str, status: &str, reason: &str, message: &str| {
        json!({"type": ty, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": to_json(now), "lastTransitionTime": to_json(now)})
    };
    json!([
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status (spiderpool-tests node simulator)"
        ),
    ])
}

/// Creates the Node (an existing one of the same name is an error), writes a Ready status and
/// creates its Lease.
pub async fn register(client: &Client, node: &NodeRegistration) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let mut labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", node.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", "amd64"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    labels.extend(node.labels.clone());
    let object: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": labels,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": node.taints},
    }))?;
    let created = nodes
        .create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating Node {}", node.name))?;
    let now = Time(Timestamp::now());
    let status = json!({"status": {
        "capacity": {"cpu": "16", "memory": "65536Mi", "pods": "110", "ephemeral-storage": "100Gi"},
        "allocatable": {"cpu": "16", "memory": "65536Mi", "pods": "110", "ephemeral-storage": "100Gi"},
        "conditions": conditions(&now),
        "addresses": [{"type": "InternalIP", "address": node.ip.to_string()}, {"type": "Hostname", "address": node.name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": util::sha256_hex(&[node.name.as_bytes()])[..32].to_owned(),
            "systemUUID": util::sha256_hex(&[b"uuid", node.name.as_bytes()])[..32].to_owned(),
            "bootID": util::sha256_hex(&[b"boot", node.name.as_bytes()])[..32].to_owned(),
            "kernelVersion": "simulated",
            "osImage": "spiderpool-tests node simulator",
            "containerRuntimeVersion": "containerd://simulated",
            "kubeletVersion": format!("v{}", tools::kubernetes_version()),
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }});
    nodes
        .patch_status(&node.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("writing the status of Node {}", node.name))?;
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {
            "name": node.name,
            "namespace": "kube-node-lease",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node.name,
                                  "uid": created.metadata.uid.clone().unwrap_or_default()}],
        },
        "spec": {"holderIdentity": node.name, "leaseDurationSeconds": 40,
                 "renewTime": to_json(&MicroTime(Timestamp::now()))},
    }))?;
    // kube-node-lease is created by the API server shortly after it is ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // A Lease left from an earlier registration of this name: take it over.
                leases
                    .replace(&node.name, &PostParams::default(), &{
                        let mut old = leases.get(&node.name).await?;
                        old.metadata.owner_references = lease.metadata.owner_references.clone();
                        old.spec = lease.spec.clone();
                        old
                    })
                    .await
                    .with_context(|| format!("taking over the Lease of {}", node.name))?;
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 404 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => {
                return Err(err).with_context(|| format!("creating the Lease of {}", node.name));
            }
        }
    }
}

/// Renews the node's Lease and its conditions' heartbeat times (what a kubelet does every 10 s).
pub async fn heartbeat(client: &Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renew = json!({"spec": {"renewTime": to_json(&MicroTime(Timestamp::now()))}});
    let lease = leases
        .patch(name, &PatchParams::default(), &Patch::Merge(&renew))
        .await
        .with_context(|| format!("renewing the Lease of {name}"));
    let now = to_json(&Time(Timestamp::now()));
    let status = json!({"status": {"conditions": [
        {"type": "MemoryPressure", "lastHeartbeatTime": now},
        {"type": "DiskPressure", "lastHeartbeatTime": now},
        {"type": "PIDPressure", "lastHeartbeatTime": now},
        {"type": "Ready", "lastHeartbeatTime": now},
    ]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&status))
        .await
        .with_context(|| format!("writing the heartbeat of Node {name}"))?;
    lease.map(|_| ())
}

/// Waits until none of `names` carries the not-ready or unreachable taint (lifted by
/// kube-controller-manager's node-lifecycle controller once it has seen the node Ready).
pub async fn wait_schedulable(client: &Client, names: &[String], timeout: Duration) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    loop {
        let mut pending = Vec::new();
        for name in names {
            let object = nodes.get(name).await?;
            let tainted = object
                .spec
                .and_then(|s| s.taints)
                .unwrap_or_default()
                .iter()
                .any(|t| t.key == NOT_READY_TAINT || t.key == "node.kubernetes.io/unreachable");
            if tainted {
                pending.push(name.clone());
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "nodes {pending:?} still carry the not-ready taint after {timeout:?}; the node-lifecycle \
                 controller of kube-controller-manager lifts it (start the cluster with the controller-manager)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
