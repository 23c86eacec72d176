//! Test support shared by every test crate (and, later, the demo): real Kubernetes parts on loopback.
//!
//! - [`cluster`]: [`TestCluster`] starts etcd + kube-apiserver (+ kube-controller-manager and
//!   kube-scheduler) on free 127.0.0.1 ports in a temp dir, with generated certificates and an admin
//!   kubeconfig, and hands out [`kube::Client`]s. [`TestCluster::shared`] gives one control plane per
//!   test binary; [`TestCluster::namespace`] gives each test its own namespace.
//! - [`node_sim`]: [`NodeSimulator`] plays kubelet + container runtime + Multus for pod networking:
//!   it registers Nodes and keeps them Ready, and for every pod bound to them creates a network
//!   namespace, runs the CNI chain of the pod's networks, and writes the pod status.
//! - [`cni`]: the CNI runtime side (what libcni does): executes plugins of a network configuration
//!   list with the environment and stdin the CNI specification prescribes.
//! - [`multus`]: Multus' pod-annotation parsing and network-status rendering.
//! - [`realnode`]: [`realnode::RealCluster`], a cluster of real nodes on this machine (kubelet +
//!   containerd + kube-proxy in namespaces of their own, joined by an underlay switch).
//! - [`tools`]: where the upstream binaries come from (the cached Kubernetes build, Debian's etcd
//!   and CNI plugins), failing with an install hint when something is missing.
//! - [`coordinator`]: the cluster's SpiderCoordinator for the coordinator tests, and upstream
//!   Spiderpool's plugins (built from their Go module, cached) as differential test peers.
//! - [`watchdog`]: cleanup that survives the test process being killed.
//! - [`admission`]: the operator's webhooks registered with a private control plane; [`objects`]:
//!   namespaces by name and JSON comparisons of sent and stored objects.
//! - [`vm`]: the kernel tier: Debian's kernel in a QEMU VM for bonds, VLANs and ipvlan, which the host
//!   kernel lacks; a failing test inside the VM fails the host-side test.
//!
//! Everything here needs root (network namespaces, links) and fails loudly, never skips, when a
//! prerequisite is missing.

pub mod admission;
pub mod chaos;
pub mod chart;
pub mod child;
pub mod cluster;
pub mod cni;
pub mod coordinator;
pub mod daemon;
pub mod images;
pub mod ipam;
pub mod kubelet;
pub mod logs;
pub mod multus;
pub mod netns;
pub mod node_object;
pub mod node_sim;
pub mod objects;
pub mod oci;
pub mod process;
pub mod prometheus;
pub mod realnode;
pub mod tools;
pub mod vm;
pub mod wait;
pub mod watchdog;

mod certs;
mod util;

pub use cluster::{Authorization, ClusterOptions, TestCluster, TestNamespace};
pub use node_sim::{DefaultNetwork, NodeSimulator, PodNetwork, SimOptions};

/// Installs a `tracing` subscriber that writes through the test harness' capture (shown for failing
/// tests), filtered by `RUST_LOG` (default: this crate at `info`, kube-client off since it logs every
/// non-2xx answer as an error, everything else at `warn`).
/// Safe to call from every test.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,spiderpool_tests=info,kube_client=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Whether process `pid` exists and is not a zombie (`/proc/<pid>/stat`'s state after the command).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            != Some("Z")
    })
}

/// Polls `probe` every 100 ms until it returns `Some`, failing after `timeout` with the last error.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: std::time::Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = std::time::Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last_err = Some(err),
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}; last error: {last_err:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
