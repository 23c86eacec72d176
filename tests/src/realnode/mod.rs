//! A Kubernetes cluster with real nodes on this machine: kubelet + containerd + kube-proxy per node,
//! pods started by the real runtime, joined by an underlay switch.
//!
//! - [`underlay`]: the switch (a bridge in a network namespace of its own), the machine's link to
//!   it, each node's `eth0` (node IP) and `eth1` (uplink);
//! - the control plane is the loopback harness's [`TestCluster`], listening on the machine's
//!   address on the underlay, with Node authorization;
//! - [`node`]: one node in its own network, mount, UTS and PID namespaces, with the standard paths
//!   (`/etc/cni/net.d`, `/opt/cni/bin`, `/var/lib/kubelet`, `/run/containerd`, ...) private to it;
//! - [`images`]: the sandbox and busybox images, built locally and imported into every node;
//! - [`chart`]: Spiderpool installed as a user does: the project's images imported into every
//!   node, `helm install` of the chart;
//! - [`config`]: the nodes' configuration files.
//!
//! Nothing here sends traffic outside the machine: the nodes have no default route, the switch
//! forwards nothing, and the only link to the machine's namespace carries the API server.
//!
//! Teardown: dropping a [`RealCluster`] stops every node (its namespaces' holder dies and the
//! kernel ends every process in them), removes their cgroups and namespaces, then the control plane
//! and the switch; the [`crate::watchdog`] does the same when the process dies first (and for the
//! [`RealCluster::shared`] one, which lives in a static).

pub mod binaries;
pub mod chart;
pub mod config;
pub mod demo;
pub mod images;
pub mod multus_standin;
pub mod node;
pub mod underlay;
pub mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};

use crate::cluster::{Authorization, ClusterOptions, TestCluster, TestNamespace};
use crate::util;
use crate::watchdog::{self, Registration};
pub use images::{ImageArchive, WorkloadImages};
pub use node::{NodeSpec, RealNode};
pub use underlay::Underlay;

/// Node label naming the node's primary CNI configuration in the standard layout.
pub const PRIMARY_CNI_LABEL: &str = "spiderpool.test/primary-cni";
/// [`PRIMARY_CNI_LABEL`] of nodes whose primary configuration is the Multus stand-in, with a pod
/// network as the cluster network.
pub const PRIMARY_MULTUS_STANDIN: &str = "multus-standin";
/// [`PRIMARY_CNI_LABEL`] of nodes whose only network is the underlay (no Multus).
pub const PRIMARY_UNDERLAY: &str = "underlay";
/// The node label racks select by.
pub const RACK_LABEL: &str = "topology.kubernetes.io/zone";

/// The file of [`underlay_chain`] on the `underlay-*` nodes.
pub const UNDERLAY_CHAIN_FILE: &str = "10-underlay.conflist";

/// The primary CNI configuration of a node whose only network is the underlay, as an administrator
/// without Multus writes it: macvlan on the NIC that carries the node's IP, addresses from
/// Spiderpool (the pools come from the pod's annotations or the cluster's defaults), and our
/// `coordinator` chained after it, which gives the pod a way to its own node and to ClusterIP
/// Services (a macvlan pod cannot reach its parent's host, and kube-proxy runs there). The chart
/// installs the `spiderpool` and `coordinator` binaries; until then the node's pods cannot start,
/// as on a real node whose CNI is not installed yet.
pub fn underlay_chain() -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "underlay",
        "plugins": [
            {"type": "macvlan", "master": underlay::NODE_NIC, "mode": "bridge", "ipam": {"type": "spiderpool"}},
            {"type": "coordinator"},
        ],
    })
}

/// What to start.
#[derive(Debug, Clone)]
pub struct RealClusterOptions {
    pub nodes: Vec<NodeSpec>,
    /// How long to wait for every Node to be Ready.
    pub ready_timeout: Duration,
    /// The `multus-standin` binary (integration tests: `env!("CARGO_BIN_EXE_multus-standin")`);
    /// `None`: the one next to the running executable, else built with cargo.
    pub multus_standin: Option<PathBuf>,
}

impl RealClusterOptions {
    /// The real-node tier's layout: four nodes in two racks (`rack-a`: `multus-0`, `underlay-0`;
    /// `rack-b`: `multus-1`, `underlay-1`). The `multus-*` nodes have a pod network (for the Multus
    /// stand-in's cluster network); the `underlay-*` nodes have the underlay as their only network,
    /// [`underlay_chain`] as `/etc/cni/net.d/10-underlay.conflist`.
    pub fn standard() -> Self {
        let mut nodes = Vec::new();
        for (role, with_pod_network) in [(PRIMARY_MULTUS_STANDIN, true), (PRIMARY_UNDERLAY, false)] {
            for (i, rack) in ["rack-a", "rack-b"].into_iter().enumerate() {
                let short = if with_pod_network { "multus" } else { "underlay" };
                nodes.push(NodeSpec {
                    name: format!("{short}-{i}"),
                    labels: BTreeMap::from([
                        (PRIMARY_CNI_LABEL.to_owned(), role.to_owned()),
                        (RACK_LABEL.to_owned(), rack.to_owned()),
                    ]),
                    pod_network: with_pod_network,
                    multus: with_pod_network,
                    cni_configs: if with_pod_network {
                        BTreeMap::new()
                    } else {
                        BTreeMap::from([(UNDERLAY_CHAIN_FILE.to_owned(), underlay_chain())])
                    },
                });
            }
        }
        RealClusterOptions {
            nodes,
            ready_timeout: Duration::from_secs(120),
            multus_standin: None,
        }
    }
}

/// How long each part of [`RealCluster::start`] took.
#[derive(Debug, Clone, Default)]
pub struct StartupTimes {
    /// Finding (or building) kubelet, kube-proxy and the images.
    pub prerequisites: Duration,
    pub control_plane: Duration,
    /// From starting the first node to every Node Ready and schedulable.
    pub nodes: Duration,
    pub total: Duration,
}

/// A running cluster with real nodes. See the [module docs](self).
pub struct RealCluster {
    // Fields drop in this order: the nodes before the control plane and the switch.
    nodes: Vec<RealNode>,
    control: TestCluster,
    underlay: Underlay,
    images: WorkloadImages,
    id: String,
    times: StartupTimes,
    /// The next host number [`RealCluster::address_block`] hands out.
    next_address: std::sync::atomic::AtomicU32,
    dir: PathBuf,
    _dir_registration: Option<Registration>,
}

impl std::fmt::Debug for RealCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealCluster")
            .field("id", &self.id)
            .field("subnet", &self.underlay.subnet())
            .field(
                "nodes",
                &self.nodes.iter().map(RealNode::name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Runs blocking work from async code: in place on a multi-threaded runtime (the runtime moves its
/// other tasks away), directly otherwise.
pub(crate) fn blocking<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// Where node directories go: `SPIDERPOOL_REALNODE_TMPDIR`, else `/var/tmp` (on disk: containerd's
/// image layers and the pods' writable layers live there).
fn state_root() -> PathBuf {
    std::env::var_os("SPIDERPOOL_REALNODE_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

impl RealCluster {
    /// Starts the switch, the control plane and every node, and waits until every Node is Ready and
    /// schedulable. Fails, never skips, when something is missing.
    pub async fn start(options: RealClusterOptions) -> Result<Self> {
        let t0 = Instant::now();
        // /proc/self belongs to the process' effective user.
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(u32::MAX)
            != 0
        {
            bail!("the real-node tier needs root (network, mount and PID namespaces, cgroups)");
        }
        let (binaries, images) = blocking(|| -> Result<_> {
            crate::tools::require_iproute2()?;
            Ok((binaries::node_binaries()?, images::workload_images()?))
        })?;
        let prerequisites = t0.elapsed();

        let id = util::unique_hex(6);
        let prefix = format!("rn{id}");
        let root = state_root();
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let dir = root.join(format!("spiderpool-realnode-{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let keep = std::env::var_os("SPIDERPOOL_TEST_KEEP").is_some();
        let dir_registration = (!keep).then(|| watchdog::register_dir(&dir));
        let underlay = blocking(|| Underlay::create(&prefix))?;

        let t1 = Instant::now();
        let control = TestCluster::start(ClusterOptions {
            address: underlay.host_address().into(),
            authorization: Authorization::NodeRbac,
            service_cidr: underlay.service_cidr(),
            // Webhooks and aggregated APIs are called at their endpoints' addresses, which the
            // machine routes to the nodes, rather than at ClusterIPs only kube-proxy knows.
            apiserver_args: vec!["--enable-aggregator-routing=true".to_owned()],
            ..ClusterOptions::default()
        })
        .await
        .context("starting the control plane")?;
        let control_plane = t1.elapsed();

        let t2 = Instant::now();
        let kube_proxy_kubeconfig = control.user_kubeconfig("kube-proxy", "system:kube-proxy", &[])?;
        let cluster_cidr = Some(underlay.pod_cidr().to_string());
        let multus = if options.nodes.iter().any(|n| n.multus) {
            Some(multus_install(&control, options.multus_standin.as_deref()).await?)
        } else {
            None
        };
        let ctx = node::NodeContext {
            cluster: &control,
            underlay: &underlay,
            images: &images,
            binaries: &binaries,
            prefix: &prefix,
            dir: &dir,
            kube_proxy_kubeconfig: &kube_proxy_kubeconfig,
            cluster_cidr: cluster_cidr.as_deref(),
            multus: multus.as_ref(),
        };
        let nodes = blocking(|| start_nodes(&ctx, &options.nodes, underlay.pod_cidr()))?;
        let mut cluster = RealCluster {
            nodes,
            control,
            underlay,
            images,
            id,
            times: StartupTimes {
                prerequisites,
                control_plane,
                ..StartupTimes::default()
            },
            next_address: std::sync::atomic::AtomicU32::new(100),
            dir,
            _dir_registration: dir_registration,
        };
        cluster.route_cluster_networks()?;
        cluster.wait_ready(options.ready_timeout).await?;
        cluster.times.nodes = t2.elapsed();
        cluster.times.total = t0.elapsed();
        tracing::info!(
            id = %cluster.id,
            subnet = %cluster.underlay.subnet(),
            nodes = ?cluster.nodes.iter().map(RealNode::name).collect::<Vec<_>>(),
            times = ?cluster.times,
            "real-node cluster ready"
        );
        Ok(cluster)
    }

    /// The cluster shared by every test of this test binary ([`RealClusterOptions::standard`]).
    /// Started by the first caller; removed by the [`crate::watchdog`] when the process exits. Give
    /// each test its own namespace ([`RealCluster::namespace`]). If starting fails, the next caller
    /// retries.
    pub async fn shared() -> Result<&'static RealCluster> {
        Self::shared_with(RealClusterOptions::standard).await
    }

    /// [`RealCluster::shared`], started with `options()` by the first caller (later callers' options
    /// are not used).
    pub async fn shared_with(options: impl FnOnce() -> RealClusterOptions) -> Result<&'static RealCluster> {
        static SHARED: tokio::sync::OnceCell<RealCluster> = tokio::sync::OnceCell::const_new();
        SHARED.get_or_try_init(|| RealCluster::start(options())).await
    }

    /// Every node (and the machine) gets a route to every node's pod network, via that node's IP;
    /// the machine routes the Service CIDR to the first node, whose kube-proxy translates it.
    fn route_cluster_networks(&self) -> Result<()> {
        for target in &self.nodes {
            let Some(subnet) = target.pod_subnet() else {
                continue;
            };
            for node in self.nodes.iter().filter(|n| n.name() != target.name()) {
                let (subnet, via) = (subnet.to_string(), target.ip().to_string());
                util::ip(&["-n", node.netns(), "route", "add", &subnet, "via", &via])?;
            }
            self.underlay.route_to_node(subnet, target.ip())?;
        }
        if let Some(first) = self.nodes.first() {
            self.underlay
                .route_to_node(self.underlay.service_cidr(), first.ip())?;
        }
        Ok(())
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let api: Api<Node> = Api::all(self.client()?);
        let deadline = Instant::now() + timeout;
        loop {
            let mut pending = Vec::new();
            for node in &self.nodes {
                let ready = match api.get_opt(node.name()).await? {
                    Some(object) => node_schedulable(&object),
                    None => false,
                };
                if !ready {
                    pending.push(node.name().to_owned());
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            let crashed: Vec<String> = self.nodes.iter().flat_map(RealNode::crashed).collect();
            if !crashed.is_empty() {
                bail!("real-node processes exited:\n{}", crashed.join("\n"));
            }
            if Instant::now() >= deadline {
                let tails: Vec<String> = self
                    .nodes
                    .iter()
                    .filter(|n| pending.iter().any(|p| p == n.name()))
                    .map(|n| {
                        format!(
                            "--- kubelet of {}:\n{}",
                            n.name(),
                            util::tail(&n.log_path("kubelet"), 20)
                        )
                    })
                    .collect();
                bail!(
                    "nodes {pending:?} not Ready within {timeout:?}\n{}",
                    tails.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The control plane.
    pub fn control_plane(&self) -> &TestCluster {
        &self.control
    }

    /// A new admin client for the calling runtime.
    pub fn client(&self) -> Result<Client> {
        self.control.client()
    }

    /// A namespace of its own for one test.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        self.control.namespace(prefix).await
    }

    /// The nodes, in the order of their specs.
    pub fn nodes(&self) -> &[RealNode] {
        &self.nodes
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Result<&RealNode> {
        self.nodes
            .iter()
            .find(|n| n.name() == name)
            .ok_or_else(|| anyhow!("no node {name} in this cluster"))
    }

    /// The nodes carrying `label=value`.
    pub fn nodes_with(&self, label: &str, value: &str) -> Vec<&RealNode> {
        self.nodes
            .iter()
            .filter(|n| n.spec().labels.get(label).is_some_and(|v| v == value))
            .collect()
    }

    /// The underlay switch.
    pub fn underlay(&self) -> &Underlay {
        &self.underlay
    }

    /// `count` addresses of the underlay subnet no other caller of this cluster got: the first and
    /// the last (for a pool's `ips` range). They come from `.100`-`.254`.
    pub fn address_block(&self, count: u8) -> Result<(std::net::Ipv4Addr, std::net::Ipv4Addr)> {
        use std::sync::atomic::Ordering;
        let first = self.next_address.fetch_add(u32::from(count), Ordering::SeqCst);
        let last = first + u32::from(count.max(1)) - 1;
        let (Ok(first), Ok(last)) = (u8::try_from(first), u8::try_from(last)) else {
            bail!("the underlay subnet has no {count} addresses left for pools");
        };
        if last > 254 {
            bail!("the underlay subnet has no {count} addresses left for pools");
        }
        Ok((self.underlay.host(first), self.underlay.host(last)))
    }

    /// The images every node has (`imagePullPolicy: Never` or `IfNotPresent`).
    pub fn images(&self) -> &WorkloadImages {
        &self.images
    }

    /// The busybox image reference for workloads.
    pub fn busybox(&self) -> &str {
        &self.images.busybox.reference
    }

    /// The cluster's id (in netns, link and cgroup names: `rn<id>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The cluster's directory (nodes' state and logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long the start took, by part.
    pub fn startup_times(&self) -> &StartupTimes {
        &self.times
    }

    /// Imports an image archive into every node's containerd.
    pub fn import_image(&self, image: &ImageArchive) -> Result<()> {
        blocking(|| self.nodes.iter().try_for_each(|n| n.import_image(image)))
    }

    /// Processes of the nodes that exited although nobody stopped them, with their log tails.
    pub fn crashed(&self) -> Vec<String> {
        self.nodes.iter().flat_map(RealNode::crashed).collect()
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                tracing::error!(
                    node = node.name(),
                    "test panicked; last lines of the kubelet log:\n{}",
                    util::tail(&node.log_path("kubelet"), 15)
                );
            }
        }
        let nodes = std::mem::take(&mut self.nodes);
        blocking(|| drop(nodes));
        if self._dir_registration.is_some() {
            if let Err(err) = std::fs::remove_dir_all(&self.dir) {
                tracing::warn!(%err, dir = %self.dir.display(), "cannot remove the real-node cluster dir");
            }
        } else {
            tracing::warn!(dir = %self.dir.display(), "SPIDERPOOL_TEST_KEEP is set: keeping the real-node cluster dir");
        }
    }
}

/// The environment variable naming a real Multus thin-plugin binary to use instead of the stand-in.
pub const REAL_MULTUS_ENV: &str = "SPIDERPOOL_REALNODE_MULTUS_BIN";

/// The Multus stand-in (or, with [`REAL_MULTUS_ENV`], a real Multus), its RBAC and credentials.
async fn multus_install(control: &TestCluster, standin: Option<&Path>) -> Result<node::MultusInstall> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let (binary, plugin_type) = match std::env::var_os(REAL_MULTUS_ENV) {
        Some(path) => {
            let path = PathBuf::from(path);
            if !crate::tools::is_executable(&path) {
                bail!("{REAL_MULTUS_ENV}={} is not an executable", path.display());
            }
            tracing::warn!(binary = %path.display(), "using a real Multus instead of the stand-in");
            (path, "multus".to_owned())
        }
        None => (standin_binary(standin)?, multus_standin::PLUGIN_TYPE.to_owned()),
    };
    let client = control.client()?;
    let role: ClusterRole = serde_json::from_value(multus_standin::cluster_role())?;
    let binding: ClusterRoleBinding = serde_json::from_value(multus_standin::cluster_role_binding())?;
    create_or_keep(&Api::all(client.clone()), &role).await?;
    create_or_keep(&Api::all(client), &binding).await?;
    let kubeconfig = control.user_kubeconfig("multus", multus_standin::USER, &[])?;
    let conf = multus_standin::conf(&plugin_type, &kubeconfig, node::POD_NETWORK_NAME);
    Ok(node::MultusInstall {
        binary,
        plugin_type,
        conf,
    })
}

/// The stand-in given, else the one next to the running executable (the demo's), else cargo's.
fn standin_binary(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(multus_standin::PLUGIN_TYPE)))
        .filter(|p| crate::tools::is_executable(p));
    match sibling {
        Some(path) => Ok(path),
        None => blocking(|| {
            crate::tools::workspace_binary("spiderpool-tests", multus_standin::PLUGIN_TYPE, false)
        }),
    }
}

async fn create_or_keep<K>(api: &Api<K>, object: &K) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&kube::api::PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Ready, and without the taints the node lifecycle controller keeps on nodes that are not.
fn node_schedulable(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conds| conds.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|taints| {
            taints
                .iter()
                .any(|t| t.key == "node.kubernetes.io/not-ready" || t.key == "node.kubernetes.io/unreachable")
        });
    ready && !tainted
}

/// Starts the nodes in parallel (each waits on its containerd and image imports); nodes with a pod
/// network get the /24s of `pod_cidr` in order.
fn start_nodes(ctx: &node::NodeContext<'_>, specs: &[NodeSpec], pod_cidr: Ipv4Net) -> Result<Vec<RealNode>> {
    if specs.len() > 90 {
        bail!("at most 90 nodes");
    }
    let mut pod_subnets = pod_cidr.subnets(24)?;
    let mut assigned = Vec::new();
    for spec in specs {
        let subnet = if spec.pod_network {
            Some(
                pod_subnets
                    .next()
                    .ok_or_else(|| anyhow!("more nodes with a pod network than /24s in {pod_cidr}"))?,
            )
        } else {
            None
        };
        assigned.push(subnet);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = specs
            .iter()
            .zip(assigned)
            .enumerate()
            .map(|(index, (spec, subnet))| {
                let spec = spec.clone();
                let index = u8::try_from(index).unwrap_or(u8::MAX);
                scope.spawn(move || RealNode::start(ctx, index, spec, subnet))
            })
            .collect();
        let mut nodes = Vec::new();
        let mut errors = Vec::new();
        for handle in handles {
            match handle.join() {
                Ok(Ok(node)) => nodes.push(node),
                Ok(Err(err)) => errors.push(format!("{err:#}")),
                Err(_) => errors.push("a node's start panicked".to_owned()),
            }
        }
        if errors.is_empty() {
            Ok(nodes)
        } else {
            Err(anyhow!("starting the nodes failed:\n{}", errors.join("\n")))
        }
    })
}
