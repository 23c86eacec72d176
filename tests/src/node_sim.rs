//! A node simulator: kubelet + container runtime + Multus, as far as pod networking goes.
//!
//! [`NodeSimulator::start`] registers N Node objects and keeps them Ready like kubelet (a Ready
//! condition heartbeat and a Lease in `kube-node-lease`, renewed every 10 s). It watches the pods
//! bound to its nodes and, for each one, does what happens on a real node:
//!
//! 1. containerd creates the sandbox's network namespace (`ip netns add`, path
//!    `/var/run/netns/<name>`) and runs the loopback plugin for `lo` (if `loopback` is on the CNI
//!    path; else it sets `lo` up itself);
//! 2. Multus resolves the pod's networks: the cluster default network (given to the simulator as a
//!    CNI configuration or a NetworkAttachmentDefinition, or replaced per pod by the
//!    `v1.multus-cni.io/default-network` annotation) plus every network of the
//!    `k8s.v1.cni.cncf.io/networks` annotation (comma form `ns/name@if` or JSON), each read from its
//!    NetworkAttachmentDefinition; and runs each network's CNI configuration in order with interface
//!    `eth0` for the default network and `net1`, `net2`, ... (or the requested name) for the others,
//!    with Multus' `CNI_ARGS` and capability arguments (`ips`, `mac`, ...), see [`crate::multus`];
//!    a failure DELs what was added, in reverse, and the pod is retried with backoff (with a
//!    `FailedCreatePodSandBox` event), as kubelet does;
//! 3. Multus writes the `k8s.v1.cni.cncf.io/network-status` annotation and `AddedInterface` events;
//! 4. kubelet writes the pod status: phase Running, `podIP`/`podIPs` (the default network's addresses
//!    on `eth0`, one per family, IPv4 first, as containerd and kubelet choose them), `hostIP`, the
//!    Ready/ContainersReady/Initialized/PodReadyToStartContainers conditions and running container
//!    statuses.
//!
//! When a pod gets a deletion timestamp (or disappears), the simulator runs CNI DEL for every network
//! in reverse order (with the cached ADD result as `prevResult`), then the loopback DEL, deletes the
//! network namespace and finally deletes the pod with grace period 0 and a UID precondition, as
//! kubelet does once the containers are gone. (The last status write kubelet makes before that is
//! not simulated.)
//!
//! # The simulated host network
//!
//! Every node gets its own network namespace, `sp<id>-node<i>`, standing for the node's host
//! network namespace: CNI plugins run inside it (`ip netns exec`), so a configuration naming the
//! uplink `"master": "eth0"` works on every node, as on a real cluster. Inside, `eth0` is one end of a
//! veth pair and carries the node's InternalIP (`node_cidr`, host numbers 10, 11, ...); the other
//! end, `sp<id>-<i>`, is a port of the bridge `sp<id>-br` in the real host namespace, which plays the
//! switch all nodes hang off. Pods on different nodes (macvlan on `eth0`, say) can therefore reach
//! each other over that L2 segment. Nothing is added to the real host's routing. Node names are
//! `<prefix>-<id>-<i>`.
//!
//! The nodes carry the label and the `NoSchedule` taint `spiderpool.test/simulator=<id>` (unless
//! `taint` is off), so simulators of concurrent tests on one shared cluster don't get each other's
//! pods: put [`NodeSimulator::place`] on pod templates meant for this simulator.
//!
//! # Cleanup
//!
//! [`NodeSimulator::shutdown`] tears down every pod's networks (CNI DEL), deletes the Node objects
//! and Leases and removes the host network. Dropping without it does the host-side part (CNI DEL,
//! namespaces, links) synchronously and leaves the Node objects. Everything host-side is also
//! registered with the [`crate::watchdog`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference, Pod, PodSpec, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cni::{self, CniExec, NetworkConfigList, RuntimeConf};
use crate::multus::{self, Delegate, MultusMode, NETWORK_STATUS_ANNOTATION, NetworkStatus, PodArgs};
use crate::node_object;
use crate::tools;
use crate::util;
use crate::watchdog::{self, Registration, Resource};

/// Label (on nodes) and taint key (`NoSchedule`) naming the simulator a node belongs to.
pub const SIM_LABEL: &str = "spiderpool.test/simulator";
/// The interface name the runtime asks Multus for (the pod's primary interface).
pub const POD_IFNAME: &str = "eth0";

pub use crate::multus::DefaultNetwork;

/// How to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// Node names are `<name_prefix>-<id>-<i>`.
    pub name_prefix: String,
    pub default_network: DefaultNetwork,
    /// Directories with CNI plugins (`CNI_PATH`); Debian's `/usr/lib/cni` by default.
    pub cni_path: Vec<PathBuf>,
    /// Subnet of the simulated underlay; node `i` gets host number `10 + i`.
    pub node_cidr: ipnet::Ipv4Net,
    /// Taint the nodes `spiderpool.test/simulator=<id>:NoSchedule`.
    pub taint: bool,
    /// Wait in [`NodeSimulator::start`] until the controller-manager has lifted the
    /// `node.kubernetes.io/not-ready` taint (needs kube-controller-manager; turn off without it).
    pub wait_schedulable: bool,
    pub multus_mode: MultusMode,
    /// Kill a CNI plugin that runs longer than this.
    pub plugin_timeout: Duration,
    /// Node condition and Lease renewal period (kubelet: 10 s).
    pub heartbeat_interval: Duration,
    /// Extra environment of the CNI plugins run on each node; `{node}` in a value becomes the node's
    /// name (e.g. `SPIDERPOOL_IPAM_UNIX_SOCKET_PATH=/tmp/x/{node}.sock`: one daemon per simulated node).
    pub node_env: Vec<(String, String)>,
    /// An address (in `node_cidr`) for the host's end of the simulated underlay, so that processes
    /// of the host's namespace (the API server calling a webhook on a node) reach the nodes. Needs a
    /// `node_cidr` no other simulator uses at the same time. None by default.
    pub host_address: Option<Ipv4Addr>,
    /// Mark hostNetwork pods Running without running anything (the default). Turn off when another
    /// kubelet stand-in runs them (`crate::kubelet::ImageKubelet`).
    pub host_network_pods: bool,
}

impl SimOptions {
    /// Two nodes, tainted, Debian's plugins, thin Multus.
    pub fn new(default_network: DefaultNetwork) -> Self {
        SimOptions {
            nodes: 2,
            name_prefix: "sim".to_owned(),
            default_network,
            cni_path: vec![PathBuf::from(tools::DEBIAN_CNI_DIR)],
            node_cidr: ipnet::Ipv4Net::new(Ipv4Addr::new(172, 31, 0, 0), 16).unwrap_or_default(),
            taint: true,
            wait_schedulable: true,
            multus_mode: MultusMode::Thin,
            plugin_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(10),
            node_env: Vec::new(),
            host_address: None,
            host_network_pods: true,
        }
    }
}

/// A simulated node.
#[derive(Debug, Clone, PartialEq)]
pub struct SimNode {
    pub name: String,
    /// The node's "host" network namespace (plugins run here).
    pub netns: String,
    /// The host-namespace end of the node's uplink (a port of the simulator's bridge).
    pub uplink: String,
    /// InternalIP, on `eth0` in [`SimNode::netns`].
    pub ip: Ipv4Addr,
}

/// One network attached to a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    /// As in network-status: `namespace/name` of the NetworkAttachmentDefinition, or the name of the
    /// cluster network's configuration.
    pub network: String,
    pub ifname: String,
    /// The cluster default network (Multus' master plugin).
    pub default: bool,
    pub config: NetworkConfigList,
    /// Exactly what the plugins got (minus the per-plugin stdin, see [`cni::plugin_stdin`]).
    pub runtime_conf: RuntimeConf,
    /// The ADD result of the configuration.
    pub result: Value,
}

/// What the simulator did for one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodNetwork {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    /// The netns name (`ip netns`).
    pub netns: String,
    /// `CNI_NETNS`.
    pub netns_path: String,
    /// The sandbox ID (`CNI_CONTAINERID`, `K8S_POD_INFRA_CONTAINER_ID`).
    pub sandbox_id: String,
    pub attachments: Vec<Attachment>,
    /// `status.podIPs`, in order.
    pub pod_ips: Vec<String>,
    pub network_status: Vec<NetworkStatus>,
    loopback: Option<(NetworkConfigList, RuntimeConf, Value)>,
}

struct PodSlot {
    record: PodNetwork,
    /// Every network is attached (setup finished).
    complete: bool,
    _netns: Registration,
}

struct Inner {
    id: String,
    client: Client,
    options: SimOptions,
    nodes: Vec<SimNode>,
    pods: Mutex<HashMap<String, PodSlot>>,
    errors: Mutex<Vec<String>>,
    closing: AtomicBool,
    attempts: AtomicU64,
    loopback: Option<NetworkConfigList>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The host-side network of a simulator: the bridge, node namespaces and uplinks.
#[derive(Default)]
struct HostNet {
    bridge: Option<String>,
    node_netns: Vec<String>,
    links: Vec<String>,
    _registrations: Vec<Registration>,
}

impl HostNet {
    fn build(
        prefix: &str,
        nodes: &[SimNode],
        cidr: ipnet::Ipv4Net,
        host_address: Option<Ipv4Addr>,
    ) -> Result<HostNet> {
        let mut host = HostNet::default();
        let bridge = format!("{prefix}-br");
        util::ip(&["link", "add", &bridge, "type", "bridge"])?;
        host._registrations
            .push(watchdog::register(Resource::Link(bridge.clone())));
        host.bridge = Some(bridge.clone());
        util::ip(&["link", "set", &bridge, "up"])?;
        if let Some(address) = host_address {
            let addr = format!("{address}/{}", cidr.prefix_len());
            util::ip(&["addr", "add", &addr, "dev", &bridge])?;
        }
        for node in nodes {
            util::ip(&["netns", "add", &node.netns])?;
            host._registrations
                .push(watchdog::register(Resource::Netns(node.netns.clone())));
            host.node_netns.push(node.netns.clone());
            util::ip(&[
                "link",
                "add",
                &node.uplink,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &node.netns,
            ])?;
            host._registrations
                .push(watchdog::register(Resource::Link(node.uplink.clone())));
            host.links.push(node.uplink.clone());
            util::ip(&["link", "set", &node.uplink, "master", &bridge, "up"])?;
            let addr = format!("{}/{}", node.ip, cidr.prefix_len());
            util::ip(&["-n", &node.netns, "link", "set", "lo", "up"])?;
            util::ip(&["-n", &node.netns, "addr", "add", &addr, "dev", "eth0"])?;
            util::ip(&["-n", &node.netns, "link", "set", "eth0", "up"])?;
        }
        Ok(host)
    }
}

impl Drop for HostNet {
    fn drop(&mut self) {
        for ns in self.node_netns.drain(..) {
            if let Err(err) = util::ip(&["netns", "delete", &ns]) {
                tracing::warn!(%err, "removing a node namespace");
            }
        }
        // The host ends of the uplinks went with their peers; delete any that survived.
        for link in self.links.drain(..) {
            if Path::new("/sys/class/net").join(&link).exists() {
                let _ = util::ip(&["link", "delete", &link]);
            }
        }
        if let Some(bridge) = self.bridge.take()
            && let Err(err) = util::ip(&["link", "delete", &bridge])
        {
            tracing::warn!(%err, "removing the simulator bridge");
        }
    }
}

/// A running node simulator. See the [module docs](self).
pub struct NodeSimulator {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
    host: Option<HostNet>,
}

impl std::fmt::Debug for NodeSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSimulator")
            .field("id", &self.inner.id)
            .field("nodes", &self.inner.nodes)
            .finish_non_exhaustive()
    }
}

impl NodeSimulator {
    /// Builds the host network, registers the nodes, and starts handling pods.
    pub async fn start(client: Client, options: SimOptions) -> Result<Self> {
        tools::require_iproute2()?;
        if options.cni_path.is_empty() {
            bail!("SimOptions.cni_path is empty");
        }
        let id = util::unique_hex(5);
        let prefix = format!("sp{id}");
        let hosts: Vec<Ipv4Addr> = options.node_cidr.hosts().skip(9).take(options.nodes).collect();
        if hosts.len() < options.nodes {
            bail!(
                "node_cidr {} is too small for {} nodes",
                options.node_cidr,
                options.nodes
            );
        }
        let nodes: Vec<SimNode> = hosts
            .into_iter()
            .enumerate()
            .map(|(i, ip)| SimNode {
                name: format!("{}-{id}-{i}", options.name_prefix),
                netns: format!("{prefix}-node{i}"),
                uplink: format!("{prefix}-{i}"),
                ip,
            })
            .collect();
        let host = {
            let (prefix, nodes, cidr) = (prefix.clone(), nodes.clone(), options.node_cidr);
            let host_address = options.host_address;
            tokio::task::spawn_blocking(move || HostNet::build(&prefix, &nodes, cidr, host_address))
                .await
                .context("host network setup panicked")?
                .context("building the simulated host network")?
        };
        let loopback = cni::has_plugin(&options.cni_path, "loopback")
            .then(|| {
                NetworkConfigList::from_value(
                    &json!({"cniVersion": "0.3.1", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}),
                )
                .ok()
            })
            .flatten();
        let inner = Arc::new(Inner {
            id: id.clone(),
            client,
            options,
            nodes,
            pods: Mutex::new(HashMap::new()),
            errors: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
            attempts: AtomicU64::new(0),
            loopback,
        });
        let mut sim = NodeSimulator {
            inner: inner.clone(),
            tasks: Vec::new(),
            host: Some(host),
        };
        inner.register_nodes().await?;
        sim.tasks.push(tokio::spawn(heartbeat(inner.clone())));
        sim.tasks.push(tokio::spawn(watch_pods(inner.clone())));
        if inner.options.wait_schedulable {
            inner.wait_schedulable().await?;
        }
        tracing::info!(id, nodes = ?inner.nodes.iter().map(|n| &n.name).collect::<Vec<_>>(), "node simulator ready");
        Ok(sim)
    }

    /// The simulator's id (in node names, netns and link names, label and taint values).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn nodes(&self) -> &[SimNode] {
        &self.inner.nodes
    }

    pub fn node_names(&self) -> Vec<String> {
        self.inner.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The prefix of every netns and link name this simulator creates.
    pub fn host_prefix(&self) -> String {
        format!("sp{}", self.inner.id)
    }

    /// `{"spiderpool.test/simulator": id}`: a node selector for this simulator's nodes.
    pub fn node_selector(&self) -> BTreeMap<String, String> {
        [(SIM_LABEL.to_owned(), self.inner.id.clone())].into()
    }

    /// The toleration for this simulator's taint.
    pub fn tolerations(&self) -> Vec<Toleration> {
        vec![Toleration {
            key: Some(SIM_LABEL.to_owned()),
            operator: Some("Equal".to_owned()),
            value: Some(self.inner.id.clone()),
            effect: Some("NoSchedule".to_owned()),
            ..Toleration::default()
        }]
    }

    /// Makes a pod spec schedulable onto this simulator's nodes only.
    pub fn place(&self, spec: &mut PodSpec) {
        spec.node_selector
            .get_or_insert_with(BTreeMap::new)
            .extend(self.node_selector());
        spec.tolerations
            .get_or_insert_with(Vec::new)
            .extend(self.tolerations());
    }

    /// What the simulator did for a pod, once all its networks are set up.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodNetwork> {
        lock(&self.inner.pods)
            .values()
            .find(|s| s.complete && s.record.namespace == namespace && s.record.name == name)
            .map(|s| s.record.clone())
    }

    /// Every pod the simulator holds host resources for (set up, or being set up).
    pub fn pods(&self) -> Vec<PodNetwork> {
        lock(&self.inner.pods)
            .values()
            .map(|s| s.record.clone())
            .collect()
    }

    /// Errors seen so far (failed ADD/DEL/CHECK, API errors); a clean run has none.
    pub fn errors(&self) -> Vec<String> {
        lock(&self.inner.errors).clone()
    }

    /// Waits until the simulator has set up the pod's networks.
    /// Takes the errors recorded so far (for tests that provoke some on purpose), leaving none.
    pub fn take_errors(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.inner.errors))
    }

    pub async fn wait_pod(&self, namespace: &str, name: &str, timeout: Duration) -> Result<PodNetwork> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pod) = self.pod(namespace, name) {
                return Ok(pod);
            }
            if Instant::now() >= deadline {
                bail!(
                    "pod {namespace}/{name} not set up within {timeout:?}; simulator errors: {:?}",
                    self.errors()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a command inside a pod's network namespace; returns its stdout.
    pub fn exec_in_pod(&self, namespace: &str, name: &str, command: &[&str]) -> Result<String> {
        let pod = self
            .pod(namespace, name)
            .ok_or_else(|| anyhow!("pod {namespace}/{name} is not set up"))?;
        util::run(
            std::process::Command::new("ip")
                .args(["netns", "exec", &pod.netns])
                .args(command),
        )
    }

    /// Runs a command inside node `index`'s host network namespace.
    pub fn exec_on_node(&self, index: usize, command: &[&str]) -> Result<String> {
        let node = self
            .inner
            .nodes
            .get(index)
            .ok_or_else(|| anyhow!("no node {index}"))?;
        util::run(
            std::process::Command::new("ip")
                .args(["netns", "exec", &node.netns])
                .args(command),
        )
    }

    /// CNI CHECK of every network of a pod (with the cached ADD results), as a runtime would.
    pub async fn check_pod(&self, namespace: &str, name: &str) -> Result<()> {
        let pod = self
            .pod(namespace, name)
            .ok_or_else(|| anyhow!("pod {namespace}/{name} is not set up"))?;
        let exec = self.inner.exec_for(&pod.node)?;
        tokio::task::spawn_blocking(move || {
            for a in &pod.attachments {
                exec.check(&a.config, &a.runtime_conf, &a.result)?;
            }
            Ok::<_, Box<cni::CniError>>(())
        })
        .await
        .context("CHECK panicked")??;
        Ok(())
    }

    /// Tears everything down: every pod's networks (CNI DEL), the Node objects and Leases, and the
    /// host network. Returns the simulator's errors, if any happened during its life.
    pub async fn shutdown(mut self) -> Result<()> {
        self.inner.closing.store(true, Ordering::SeqCst);
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.teardown_all())
            .await
            .context("teardown panicked")?;
        let nodes: Api<Node> = Api::all(self.inner.client.clone());
        let leases: Api<Lease> = Api::namespaced(self.inner.client.clone(), "kube-node-lease");
        for node in &self.inner.nodes {
            ignore_not_found(nodes.delete(&node.name, &DeleteParams::default()).await)?;
            ignore_not_found(leases.delete(&node.name, &DeleteParams::default()).await)?;
        }
        if let Some(host) = self.host.take() {
            tokio::task::spawn_blocking(move || drop(host))
                .await
                .context("host teardown panicked")?;
        }
        let errors = self.errors();
        if !errors.is_empty() {
            bail!("node simulator errors: {errors:#?}");
        }
        Ok(())
    }
}

impl Drop for NodeSimulator {
    fn drop(&mut self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if self.host.is_none() {
            return; // shut down already
        }
        self.inner.teardown_all();
        self.host.take();
        tracing::debug!(id = %self.inner.id, "node simulator dropped without shutdown(); Node objects left in the API");
    }
}

fn ignore_not_found<T>(result: kube::Result<T>) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

fn now_time() -> Time {
    Time(Timestamp::now())
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// `Ok(true)` when a write to a pod succeeded; `Ok(false)` when it failed only because that pod no
/// longer exists: deleted (404), or replaced by a new pod of the same name (the patch's UID differs:
/// 422 "metadata.uid ... field is immutable", or a 409 precondition failure) — the old pod's sandbox
/// is torn down when its deletion is observed, as the kubelet does; else the error, in context `what`.
fn still_there<T>(written: Result<T, kube::Error>, what: &str) -> Result<bool> {
    match written {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status))
            if status.code == 404
                || status.code == 409
                || (status.code == 422 && status.message.contains("metadata.uid")) =>
        {
            tracing::info!(
                reason = status.message,
                "the pod is gone or replaced; {what} skipped"
            );
            Ok(false)
        }
        Err(e) => Err(anyhow::Error::new(e).context(what.to_owned())),
    }
}

impl Inner {
    fn record_error(&self, error: String) {
        tracing::warn!(sim = %self.id, "{error}");
        lock(&self.errors).push(error);
    }

    fn node(&self, name: &str) -> Option<&SimNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    fn exec_for(&self, node: &str) -> Result<CniExec> {
        let node = self
            .node(node)
            .ok_or_else(|| anyhow!("{node} is not a node of this simulator"))?;
        Ok(CniExec {
            cni_path: self.options.cni_path.clone(),
            host_netns: Some(node.netns.clone()),
            timeout: self.options.plugin_timeout,
            env: self
                .options
                .node_env
                .iter()
                .map(|(k, v)| (k.clone(), v.replace("{node}", &node.name)))
                .collect(),
        })
    }

    async fn register_nodes(&self) -> Result<()> {
        for node in &self.nodes {
            let taints = if self.options.taint {
                json!([{"key": SIM_LABEL, "value": self.id, "effect": "NoSchedule"}])
            } else {
                json!([])
            };
            let registration = node_object::NodeRegistration {
                name: node.name.clone(),
                ip: node.ip,
                labels: [(SIM_LABEL.to_owned(), self.id.clone())].into(),
                taints,
            };
            node_object::register(&self.client, &registration).await?;
        }
        Ok(())
    }

    async fn wait_schedulable(&self) -> Result<()> {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        node_object::wait_schedulable(&self.client, &names, Duration::from_secs(60))
            .await
            .context("SimOptions.wait_schedulable = false turns this wait off")
    }

    async fn heartbeat_once(&self) {
        for node in &self.nodes {
            if let Err(err) = node_object::heartbeat(&self.client, &node.name).await {
                tracing::debug!(err = format!("{err:#}"), node = %node.name, "node heartbeat failed");
            }
        }
    }

    async fn emit_event(&self, pod: &Pod, type_: &str, reason: &str, message: String, component: &str) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let host = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let now = now_time();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{pod_name}.{}", util::unique_hex(16))),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(pod_name),
                namespace: Some(namespace.clone()),
                uid: pod.metadata.uid.clone(),
                resource_version: pod.metadata.resource_version.clone(),
                ..ObjectReference::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(message),
            type_: Some(type_.to_owned()),
            source: Some(EventSource {
                component: Some(component.to_owned()),
                host: host.clone(),
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some(component.to_owned()),
            reporting_instance: host,
            ..Event::default()
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Err(err) = events.create(&PostParams::default(), &event).await {
            tracing::debug!(%err, "cannot create an event");
        }
    }

    /// Multus: the delegates of a pod, default network first.
    async fn delegates(&self, pod: &Pod) -> Result<Vec<Delegate>> {
        multus::pod_delegates(&self.client, pod, &self.options.default_network).await
    }

    /// Everything host-side for one pod: netns, loopback, the delegates. Blocking.
    fn setup_blocking(&self, pod: PodArgs, node: &str, delegates: &[Delegate]) -> Result<PodNetwork> {
        let exec = self.exec_for(node)?;
        let netns = format!("sp{}-pod-{}", self.id, pod.uid);
        let netns_path = format!("/var/run/netns/{netns}");
        {
            let mut pods = lock(&self.pods);
            if self.closing.load(Ordering::SeqCst) {
                bail!("simulator is shutting down");
            }
            if Path::new(&netns_path).exists() {
                let _ = util::ip(&["netns", "delete", &netns]);
            }
            util::ip(&["netns", "add", &netns])?;
            let registration = watchdog::register(Resource::Netns(netns.clone()));
            let record = PodNetwork {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                node: node.to_owned(),
                netns: netns.clone(),
                netns_path: netns_path.clone(),
                sandbox_id: pod.sandbox_id.clone(),
                attachments: Vec::new(),
                pod_ips: Vec::new(),
                network_status: Vec::new(),
                loopback: None,
            };
            pods.insert(
                pod.uid.clone(),
                PodSlot {
                    record,
                    complete: false,
                    _netns: registration,
                },
            );
        }
        let rollback = |error: anyhow::Error| -> anyhow::Error {
            for e in self.teardown_blocking(&pod.uid) {
                self.record_error(format!("while rolling back {}/{}: {e}", pod.namespace, pod.name));
            }
            error
        };

        // containerd: the loopback network.
        match &self.loopback {
            Some(lo_conf) => {
                let rt = RuntimeConf {
                    container_id: pod.sandbox_id.clone(),
                    netns: netns_path.clone(),
                    ifname: "lo".to_owned(),
                    args: pod.runtime_args(),
                    capability_args: serde_json::Map::new(),
                };
                match exec.add(lo_conf, &rt) {
                    Ok(result) => {
                        if let Some(slot) = lock(&self.pods).get_mut(&pod.uid) {
                            slot.record.loopback = Some((lo_conf.clone(), rt, result));
                        }
                    }
                    Err(err) => return Err(rollback(anyhow!(err))),
                }
            }
            None => {
                if let Err(err) = util::ip(&["-n", &netns, "link", "set", "lo", "up"]) {
                    return Err(rollback(err));
                }
            }
        }

        // Multus: every delegate in order.
        for (index, delegate) in delegates.iter().enumerate() {
            let ifname = multus::interface_name(delegate, POD_IFNAME, index);
            if util::ip(&["-n", &netns, "link", "show", "dev", &ifname]).is_ok() {
                return Err(rollback(anyhow!(
                    "DelegateAdd: cannot set {:?} interface name to {ifname:?}: validateIfName: interface name {ifname} already exists",
                    delegate
                        .config
                        .plugins
                        .first()
                        .map(cni::plugin_type)
                        .unwrap_or_default()
                )));
            }
            let rt = match multus::delegate_runtime_conf(
                delegate,
                &pod,
                &netns_path,
                &ifname,
                self.options.multus_mode,
            ) {
                Ok(rt) => rt,
                Err(err) => return Err(rollback(err)),
            };
            match exec.add(&delegate.config, &rt) {
                Ok(result) => {
                    let attachment = Attachment {
                        network: delegate.name.clone(),
                        ifname,
                        default: delegate.master,
                        config: delegate.config.clone(),
                        runtime_conf: rt,
                        result,
                    };
                    let mut pods = lock(&self.pods);
                    match pods.get_mut(&pod.uid) {
                        Some(slot) => slot.record.attachments.push(attachment),
                        None => {
                            drop(pods);
                            let _ = exec.del(
                                &attachment.config,
                                &attachment.runtime_conf,
                                Some(&attachment.result),
                            );
                            bail!(
                                "pod {}/{} was torn down while being set up",
                                pod.namespace,
                                pod.name
                            );
                        }
                    }
                }
                Err(err) => {
                    // Multus delPlugins(idx): DEL the failed delegate, then those before it, in reverse.
                    if let Err(del_err) = exec.del(&delegate.config, &rt, None) {
                        self.record_error(format!("DEL after failed ADD: {del_err}"));
                    }
                    return Err(rollback(anyhow!(
                        "[{}/{}/{}:{}]: error adding container to network {:?}: {err}",
                        pod.namespace,
                        pod.name,
                        pod.uid,
                        delegate.config.name,
                        delegate.config.name
                    )));
                }
            }
        }

        let mut pods = lock(&self.pods);
        let slot = pods.get_mut(&pod.uid).ok_or_else(|| {
            anyhow!(
                "pod {}/{} was torn down while being set up",
                pod.namespace,
                pod.name
            )
        })?;
        let record = &mut slot.record;
        let default_result = record
            .attachments
            .iter()
            .find(|a| a.default)
            .map(|a| a.result.clone());
        let addresses = default_result
            .as_ref()
            .map(|r| cni::sandbox_addresses(r, POD_IFNAME))
            .unwrap_or_default();
        record.pod_ips = select_pod_ips(&addresses);
        record.network_status = record
            .attachments
            .iter()
            .flat_map(|a| multus::network_statuses(&a.result, &a.network, a.default))
            .collect();
        let record = record.clone();
        slot.complete = !record.pod_ips.is_empty();
        drop(pods);
        if record.pod_ips.is_empty() {
            return Err(rollback(anyhow!(
                "failed to find network info for sandbox {:?}: the default network's result has no address on {POD_IFNAME}",
                pod.sandbox_id
            )));
        }
        Ok(record)
    }

    /// CNI DEL of everything of one pod, then the netns. Blocking. Returns the errors.
    fn teardown_blocking(&self, uid: &str) -> Vec<String> {
        let Some(slot) = lock(&self.pods).remove(uid) else {
            return Vec::new();
        };
        let record = &slot.record;
        let mut errors = Vec::new();
        match self.exec_for(&record.node) {
            Ok(exec) => {
                if let Some((conf, rt, result)) = &record.loopback
                    && let Err(err) = exec.del(conf, rt, Some(result))
                {
                    errors.push(err.to_string());
                }
                for a in record.attachments.iter().rev() {
                    if let Err(err) = exec.del(&a.config, &a.runtime_conf, Some(&a.result)) {
                        errors.push(err.to_string());
                    }
                }
            }
            Err(err) => errors.push(format!("{err:#}")),
        }
        if let Err(err) = util::ip(&["netns", "delete", &record.netns]) {
            errors.push(format!("{err:#}"));
        }
        errors
    }

    fn teardown_all(&self) {
        let uids: Vec<String> = lock(&self.pods).keys().cloned().collect();
        for uid in uids {
            for err in self.teardown_blocking(&uid) {
                self.record_error(err);
            }
        }
    }

    /// kubelet's status for a running pod.
    fn running_status(&self, pod: &Pod, node: &SimNode, pod_ips: &[String]) -> Value {
        let now = to_json(&now_time());
        let spec = pod.spec.clone().unwrap_or_default();
        let container_id = |name: &str| {
            format!(
                "containerd://{}",
                util::sha256_hex(&[
                    pod.metadata.uid.as_deref().unwrap_or("").as_bytes(),
                    name.as_bytes()
                ])
            )
        };
        let image_id = |image: &str| format!("{image}@sha256:{}", util::sha256_hex(&[image.as_bytes()]));
        let containers: Vec<Value> = spec
            .containers
            .iter()
            .map(|c| {
                let image = c.image.clone().unwrap_or_default();
                json!({"name": c.name, "image": image, "imageID": image_id(&image), "containerID": container_id(&c.name),
                       "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}})
            })
            .collect();
        let init: Vec<Value> = spec
            .init_containers
            .unwrap_or_default()
            .iter()
            .map(|c| {
                let image = c.image.clone().unwrap_or_default();
                json!({"name": c.name, "image": image, "imageID": image_id(&image), "containerID": container_id(&c.name),
                       "ready": true, "started": false, "restartCount": 0,
                       "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now,
                                                "containerID": container_id(&c.name)}}})
            })
            .collect();
        let condition = |ty: &str| json!({"type": ty, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
        let mut status = json!({
            "phase": "Running",
            "hostIP": node.ip.to_string(),
            "hostIPs": [{"ip": node.ip.to_string()}],
            "startTime": pod.status.as_ref().and_then(|s| s.start_time.as_ref()).map(to_json).unwrap_or(now.clone()),
            "conditions": [condition("PodReadyToStartContainers"), condition("Initialized"), condition("Ready"),
                           condition("ContainersReady")],
            "containerStatuses": containers,
        });
        if !init.is_empty() {
            status["initContainerStatuses"] = Value::Array(init);
        }
        if let Some(first) = pod_ips.first() {
            status["podIP"] = Value::String(first.clone());
            status["podIPs"] = Value::Array(pod_ips.iter().map(|ip| json!({"ip": ip})).collect());
        }
        // The UID makes the patch a precondition (as the kubelet's status patches do): a pod deleted
        // and recreated under the same name meanwhile must not get this incarnation's status.
        json!({"metadata": {"uid": pod.metadata.uid}, "status": status})
    }

    async fn setup(self: &Arc<Self>, pod: &Pod) -> Result<()> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let node_name = spec.node_name.clone().unwrap_or_default();
        let node = self
            .node(&node_name)
            .cloned()
            .ok_or_else(|| anyhow!("{node_name} is not simulated here"))?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        if spec.host_network == Some(true) {
            let status = self.running_status(pod, &node, &[node.ip.to_string()]);
            let written = pods
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status))
                .await;
            still_there(written, "writing the pod status")?;
            return Ok(());
        }
        let delegates = self.delegates(pod).await?;
        let attempt = self.attempts.fetch_add(1, Ordering::Relaxed);
        let args = PodArgs {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: uid.clone(),
            sandbox_id: util::sha256_hex(&[uid.as_bytes(), &attempt.to_le_bytes()]),
        };
        let inner = self.clone();
        let node_for_blocking = node.name.clone();
        let record =
            tokio::task::spawn_blocking(move || inner.setup_blocking(args, &node_for_blocking, &delegates))
                .await
                .context("pod setup panicked")??;

        // Multus: events and the network-status annotation.
        for a in &record.attachments {
            let has_any = a.result.get("interfaces").is_some() || a.result.get("ips").is_some();
            if has_any {
                let message = multus::added_interface_message(&a.result, &a.ifname, &a.network);
                self.emit_event(pod, "Normal", "AddedInterface", message, "multus")
                    .await;
            }
        }
        let status_annotation = multus::render_network_status(&record.network_status)?;
        let patch =
            json!({"metadata": {"uid": uid, "annotations": {NETWORK_STATUS_ANNOTATION: status_annotation}}});
        let written = pods
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        if !still_there(written, "writing the network-status annotation")? {
            return Ok(());
        }

        // kubelet: the pod status.
        let status = self.running_status(pod, &node, &record.pod_ips);
        let written = pods
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status))
            .await;
        if !still_there(written, "writing the pod status")? {
            return Ok(());
        }
        tracing::info!(pod = %format!("{namespace}/{name}"), node = %node.name, ips = ?record.pod_ips, "pod running");
        Ok(())
    }

    async fn teardown(self: &Arc<Self>, uid: &str) {
        let inner = self.clone();
        let uid = uid.to_owned();
        match tokio::task::spawn_blocking(move || inner.teardown_blocking(&uid)).await {
            Ok(errors) => errors.into_iter().for_each(|e| self.record_error(e)),
            Err(err) => self.record_error(format!("pod teardown panicked: {err}")),
        }
    }

    /// kubelet: the containers are gone; delete the pod object for good.
    async fn finalize(&self, pod: &Pod) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(err) => self.record_error(format!("deleting pod {namespace}/{name}: {err}")),
        }
    }
}

/// containerd picks the first IPv4 address as the pod IP (IPv6 otherwise) and kubelet keeps at
/// most one address per family, the node's family (IPv4 here) first.
fn select_pod_ips(addresses: &[String]) -> Vec<String> {
    let ips: Vec<IpAddr> = addresses
        .iter()
        .filter_map(|a| cni::address_ip(a).parse().ok())
        .collect();
    let v4 = ips.iter().find(|ip| ip.is_ipv4());
    let v6 = ips.iter().find(|ip| ip.is_ipv6());
    v4.into_iter().chain(v6).map(ToString::to_string).collect()
}

async fn heartbeat(inner: Arc<Inner>) {
    let mut ticker = tokio::time::interval(inner.options.heartbeat_interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        inner.heartbeat_once().await;
    }
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

async fn pod_worker(inner: Arc<Inner>, uid: String, mut rx: watch::Receiver<Option<Pod>>) {
    let mut ready = false;
    let mut backoff = Duration::from_millis(500);
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let current = rx.borrow_and_update().clone();
        match current {
            None => {
                inner.teardown(&uid).await;
                return;
            }
            Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
                inner.teardown(&uid).await;
                inner.finalize(&pod).await;
                return;
            }
            Some(pod) => {
                let due = retry_at.is_none_or(|t| tokio::time::Instant::now() >= t);
                if !ready && due && !is_terminal(&pod) {
                    match inner.setup(&pod).await {
                        Ok(()) => {
                            ready = true;
                            retry_at = None;
                        }
                        Err(err) => {
                            let name = format!(
                                "{}/{}",
                                pod.metadata.namespace.as_deref().unwrap_or_default(),
                                pod.metadata.name.as_deref().unwrap_or_default()
                            );
                            inner.record_error(format!("pod {name}: {err:#}"));
                            inner
                                .emit_event(
                                    &pod,
                                    "Warning",
                                    "FailedCreatePodSandBox",
                                    format!("Failed to create pod sandbox: plugin type=\"multus\" failed (add): {err:#}"),
                                    "kubelet",
                                )
                                .await;
                            retry_at = Some(tokio::time::Instant::now() + backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            }
        }
        let changed = match retry_at {
            Some(at) => tokio::select! {
                changed = rx.changed() => changed,
                () = tokio::time::sleep_until(at) => Ok(()),
            },
            None => rx.changed().await,
        };
        if changed.is_err() {
            return; // the simulator is going away; it tears down what is left
        }
    }
}

async fn watch_pods(inner: Arc<Inner>) {
    let api: Api<Pod> = Api::all(inner.client.clone());
    let nodes: HashSet<String> = inner.nodes.iter().map(|n| n.name.clone()).collect();
    let mut workers: HashMap<String, (watch::Sender<Option<Pod>>, JoinHandle<()>)> = HashMap::new();
    let mut relisted: Option<HashSet<String>> = None;
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        workers.retain(|_, (_, handle)| !handle.is_finished());
        let pod = match event {
            Ok(watcher::Event::Init) => {
                relisted = Some(HashSet::new());
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = relisted.take() {
                    for (uid, (tx, _)) in &workers {
                        if !seen.contains(uid) {
                            tx.send_replace(None);
                        }
                    }
                }
                continue;
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some((tx, _)) = pod.metadata.uid.as_ref().and_then(|uid| workers.get(uid)) {
                    tx.send_replace(None);
                }
                continue;
            }
            Ok(watcher::Event::InitApply(pod)) => {
                if let (Some(seen), Some(uid)) = (relisted.as_mut(), pod.metadata.uid.as_ref()) {
                    seen.insert(uid.clone());
                }
                pod
            }
            Ok(watcher::Event::Apply(pod)) => pod,
            Err(err) => {
                tracing::debug!(%err, "pod watch error (retrying)");
                continue;
            }
        };
        let on_our_node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some_and(|n| nodes.contains(n));
        let Some(uid) = pod.metadata.uid.clone() else {
            continue;
        };
        let left_to_another_kubelet =
            !inner.options.host_network_pods && pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
        if !on_our_node || left_to_another_kubelet {
            continue;
        }
        match workers.get(&uid) {
            Some((tx, _)) => {
                tx.send_replace(Some(pod));
            }
            None => {
                let (tx, rx) = watch::channel(Some(pod));
                let handle = tokio::spawn(pod_worker(inner.clone(), uid.clone(), rx));
                workers.insert(uid, (tx, handle));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_one_per_family_ipv4_first() {
        let got = select_pod_ips(&["fd00::5/64".into(), "10.0.0.5/24".into(), "10.0.0.6/24".into()]);
        assert_eq!(got, vec!["10.0.0.5".to_owned(), "fd00::5".to_owned()]);
    }
}
