//! Putting Spiderpool on a real-node cluster.
//!
//! [`install_host_processes`]: our CRDs, the `spiderpool` IPAM plugin copied into every node's
//! `/opt/cni/bin`, and the node daemon (`spiderpool-agent`) as a host process of every node, in the
//! node's namespaces (as a systemd unit would run it), with the cluster admin's credentials. This is
//! the way the tier runs Spiderpool without the chart and its images.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use spiderpool_agent_api::DEFAULT_SOCKET_PATH;

use super::{RealCluster, RealNode, blocking};
use crate::{daemon, ipam, tools};

/// The name of the agent's process on each node ([`RealNode::spawn`], [`RealNode::log_path`]).
pub const AGENT_PROCESS: &str = "spiderpool-agent";

/// See the [module docs](self). Idempotent per node: a node whose agent runs is left alone.
pub async fn install_host_processes(cluster: &RealCluster) -> Result<()> {
    ipam::install_spiderpool_crds(&cluster.client()?).await?;
    let kubeconfig = cluster.control_plane().kubeconfig_path().to_path_buf();
    blocking(|| -> Result<()> {
        let plugin = ipam::plugin_binary(false)?;
        let agent = tools::workspace_binary("spiderpool-node-daemon", "spiderpool-agent", false)?;
        for node in cluster.nodes() {
            if node.process_running(AGENT_PROCESS) {
                continue;
            }
            node.install_cni_plugin(&plugin, "spiderpool")?;
            node.spawn(
                AGENT_PROCESS,
                &agent,
                &["--node-name".to_owned(), node.name().to_owned()],
                &[
                    ("KUBECONFIG".to_owned(), kubeconfig.display().to_string()),
                    ("RUST_LOG".to_owned(), "info".to_owned()),
                ],
            )?;
        }
        for node in cluster.nodes() {
            wait_agent_healthy(node, Duration::from_secs(60))?;
        }
        Ok(())
    })
}

/// Waits until the node's agent answers healthy on its IPAM socket.
fn wait_agent_healthy(node: &RealNode, timeout: Duration) -> Result<()> {
    let socket = node.path(DEFAULT_SOCKET_PATH);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, _)) = daemon::unix_request(&socket, "GET", "/v1/ipam/healthy", None) {
            return Ok(());
        }
        if let Some(status) = node.process_exited(AGENT_PROCESS) {
            bail!(
                "the agent of {} exited ({status}):\n{}",
                node.name(),
                crate::util::tail(&node.log_path(AGENT_PROCESS), 30)
            );
        }
        if Instant::now() >= deadline {
            return Err(anyhow::anyhow!(
                "the agent of {} was not healthy within {timeout:?}:\n{}",
                node.name(),
                crate::util::tail(&node.log_path(AGENT_PROCESS), 30)
            ))
            .context("installing Spiderpool as host processes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
