//! Everything a chaos run acts on: a private control plane (etcd, API server, controller-manager,
//! scheduler), Node objects kept Ready by the suite (it plays kubelet's API part), one real agent per
//! node and two operator replicas, each talking to the API server through a fault proxy of its own,
//! and the pools under test.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use kube::Client;
use serde_json::{Value, json};

use super::operator::OperatorReplica;
use super::proxy::FaultProxy;
use crate::cluster::{ClusterOptions, TestCluster, TestNamespace};
use crate::daemon::Daemon;
use crate::node_object::{self, NodeRegistration};
use crate::{ipam, tools};

/// The pool of the tight workload (IPv4).
pub const TIGHT_POOL: &str = "chaos-tight";
/// The dual-stack workload's pools.
pub const DUAL_POOL_V4: &str = "chaos-dual-v4";
pub const DUAL_POOL_V6: &str = "chaos-dual-v6";

/// How big the world is.
#[derive(Debug, Clone)]
pub struct WorldOptions {
    pub nodes: usize,
    /// Addresses of the tight pool and of each dual-stack pool.
    pub tight_size: usize,
    pub dual_size: usize,
    /// Reclaim's full-scan interval.
    pub gc_interval: Duration,
    /// The agents' deadline of one ADD or DEL.
    pub request_timeout: Duration,
}

/// One simulated node: its Node object, agent and proxy.
#[derive(Debug)]
pub struct ChaosNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub proxy: FaultProxy,
    pub kubeconfig: PathBuf,
    /// `None` while the agent is down (killed and not yet restarted).
    pub agent: Mutex<Option<Daemon>>,
    /// The Node object is deleted (a fault) and not yet registered again.
    pub deleted: AtomicBool,
    /// The agent is frozen (SIGSTOP).
    pub frozen: AtomicBool,
}

impl ChaosNode {
    /// The agent's IPAM socket (the same path across restarts).
    pub fn socket(&self, dir: &Path) -> PathBuf {
        crate::daemon::socket_path(dir, &self.name)
    }
}

/// See the module docs.
pub struct World {
    pub cluster: tokio::sync::Mutex<TestCluster>,
    pub client: Client,
    pub namespace: TestNamespace,
    /// Agents' sockets and logs, proxies' kubeconfigs, the plugin's log, the operators' logs.
    pub dir: PathBuf,
    _dir: tempfile::TempDir,
    pub plugin: PathBuf,
    pub nodes: Vec<ChaosNode>,
    pub operator_proxy: FaultProxy,
    pub operators: Vec<Mutex<OperatorReplica>>,
    pub options: WorldOptions,
    apiserver: SocketAddr,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("dir", &self.dir)
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl World {
    /// Starts the world and waits until every node is schedulable and every agent healthy.
    pub async fn start(options: WorldOptions) -> Result<Self> {
        let cluster = TestCluster::start(ClusterOptions {
            // What the StatefulSet controller and the informers did, in the logs a failed run keeps:
            // a member move waits on them (statefulset.rs, `move_member`).
            controller_manager_args: vec![
                "--vmodule=stateful_set=4,stateful_set_control=4,stateful_pod_control=4,reflector=4"
                    .to_owned(),
            ],
            ..ClusterOptions::default()
        })
        .await?;
        let client = cluster.client()?;
        ipam::install_spiderpool_crds(&client).await?;
        let namespace = cluster.namespace("chaos").await?;
        let dir = tempfile::Builder::new()
            .prefix("spiderpool-chaos-")
            .tempdir_in(crate::cluster::temp_root())
            .context("creating the chaos dir")?;
        let dir_path = dir.path().to_path_buf();
        let apiserver: SocketAddr = cluster
            .apiserver_url()
            .trim_start_matches("https://")
            .parse()
            .with_context(|| format!("API server URL {}", cluster.apiserver_url()))?;
        let plugin = tokio::task::spawn_blocking(|| ipam::plugin_binary(false)).await??;
        // Build both binaries before anything is timed.
        tokio::task::spawn_blocking(|| {
            tools::workspace_binary("spiderpool-node-daemon", "spiderpool-agent", false)?;
            tools::workspace_binary("spiderpool-operator", "spiderpool-operator", false)
        })
        .await??;

        create_pools(&client, &options).await?;

        let mut nodes = Vec::new();
        for i in 0..options.nodes {
            let name = format!("chaos-node-{i}");
            let proxy = FaultProxy::start(&name, apiserver).await?;
            let kubeconfig = proxied_kubeconfig(&cluster, &dir_path, &name, proxy.addr())?;
            let ip = Ipv4Addr::new(192, 0, 2, 10 + u8::try_from(i)?);
            register_node(&client, &name, ip).await?;
            nodes.push(ChaosNode {
                name,
                ip,
                proxy,
                kubeconfig,
                agent: Mutex::new(None),
                deleted: AtomicBool::new(false),
                frozen: AtomicBool::new(false),
            });
        }
        let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        node_object::wait_schedulable(&client, &names, Duration::from_secs(60)).await?;

        let operator_proxy = FaultProxy::start("operator", apiserver).await?;
        let operator_kubeconfig = proxied_kubeconfig(&cluster, &dir_path, "operator", operator_proxy.addr())?;
        let operators = (0..2)
            .map(|i| {
                OperatorReplica::start(
                    &format!("operator-{i}"),
                    &operator_kubeconfig,
                    &dir_path,
                    options.gc_interval,
                )
                .map(Mutex::new)
            })
            .collect::<Result<Vec<_>>>()?;

        let world = World {
            cluster: tokio::sync::Mutex::new(cluster),
            client,
            namespace,
            dir: dir_path,
            _dir: dir,
            plugin,
            nodes,
            operator_proxy,
            operators,
            options,
            apiserver,
        };
        for i in 0..world.nodes.len() {
            world.start_agent(i).await?;
        }
        Ok(world)
    }

    /// Starts node `i`'s agent (after a crash or at the beginning) and waits until it is healthy.
    pub async fn start_agent(&self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let (kubeconfig, name, dir) = (node.kubeconfig.clone(), node.name.clone(), self.dir.clone());
        let timeout = self.options.request_timeout.as_secs().to_string();
        let daemon = tokio::task::spawn_blocking(move || {
            Daemon::start_with_kubeconfig(
                &kubeconfig,
                &name,
                &dir,
                false,
                &["--request-timeout-seconds", &timeout],
            )
        })
        .await??;
        *lock(&node.agent) = Some(daemon);
        node.frozen.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Registers node `i` again after its Node object was deleted.
    pub async fn register_node_again(&self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        register_node(&self.client, &node.name, node.ip).await?;
        node.deleted.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// The API server's address (what the proxies forward to).
    pub fn apiserver(&self) -> SocketAddr {
        self.apiserver
    }

    /// A CNI network configuration for our IPAM on node `i`: the tight pool, or the dual-stack pools.
    pub fn netconf(&self, node: usize, dual: bool) -> Value {
        let socket = self.nodes[node].socket(&self.dir).display().to_string();
        let (v4, v6): (Vec<&str>, Vec<&str>) = if dual {
            (vec![DUAL_POOL_V4], vec![DUAL_POOL_V6])
        } else {
            (vec![TIGHT_POOL], vec![])
        };
        json!({
            "cniVersion": "1.0.0",
            "name": if dual { "chaos-dual" } else { "chaos-tight" },
            "type": "macvlan",
            "ipam": {
                "type": "spiderpool",
                "ipam_unix_socket_path": socket,
                "default_ipv4_ippool": v4,
                "default_ipv6_ippool": v6,
                "log_file_path": self.dir.join("plugin.log").display().to_string(),
                "log_level": "INFO",
                "timeout_seconds": self.options.request_timeout.as_secs() + 5,
            }
        })
    }

    /// Every log worth keeping: the control plane's, the agents', the operators' and the plugin's.
    pub async fn log_files(&self) -> Vec<PathBuf> {
        let cluster = self.cluster.lock().await;
        let mut files: Vec<PathBuf> = [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ]
        .iter()
        .map(|c| cluster.log_path(c))
        .collect();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            files.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "log")),
            );
        }
        files
    }
}

/// Locks a std mutex, ignoring poisoning (a panicking worker must not hide the report).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn register_node(client: &Client, name: &str, ip: Ipv4Addr) -> Result<()> {
    node_object::register(
        client,
        &NodeRegistration {
            name: name.to_owned(),
            ip,
            labels: [("spiderpool.test/chaos".to_owned(), "true".to_owned())].into(),
            taints: json!([]),
        },
    )
    .await
}

/// The admin kubeconfig with the server replaced by `proxy` (the serving certificate names
/// 127.0.0.1, whatever the port).
fn proxied_kubeconfig(cluster: &TestCluster, dir: &Path, name: &str, proxy: SocketAddr) -> Result<PathBuf> {
    let admin = std::fs::read_to_string(cluster.kubeconfig_path()).context("reading the admin kubeconfig")?;
    let url = cluster.apiserver_url();
    if !admin.contains(url) {
        return Err(anyhow!("the admin kubeconfig does not name {url}"));
    }
    let text = admin.replace(url, &format!("https://{proxy}"));
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The workloads' pools: `tight_size` IPv4 addresses for the tight one, `dual_size` of each family
/// for the dual-stack ones. The addresses exist only in the API: nothing is configured on a link.
async fn create_pools(client: &Client, options: &WorldOptions) -> Result<()> {
    let last = |base: usize, size: usize| base + size - 1;
    ipam::create_pool(
        client,
        TIGHT_POOL,
        json!({"subnet": "10.77.0.0/24",
               "ips": [format!("10.77.0.10-10.77.0.{}", last(10, options.tight_size))],
               "gateway": "10.77.0.1"}),
    )
    .await?;
    ipam::create_pool(
        client,
        DUAL_POOL_V4,
        json!({"subnet": "10.78.0.0/24",
               "ips": [format!("10.78.0.10-10.78.0.{}", last(10, options.dual_size))],
               "gateway": "10.78.0.1"}),
    )
    .await?;
    ipam::create_pool(
        client,
        DUAL_POOL_V6,
        json!({"subnet": "fd00:77::/120",
               "ips": [format!("fd00:77::10-fd00:77::{:x}", last(0x10, options.dual_size))],
               "gateway": "fd00:77::1"}),
    )
    .await?;
    Ok(())
}
