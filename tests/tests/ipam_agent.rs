//! The node agent as a process: exactly one per node, its socket root-only and never removed by an
//! agent that did not create it, against a real API server.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use spiderpool_tests::daemon::{Daemon, unix_request};
use spiderpool_tests::{ClusterOptions, TestCluster, init_tracing, ipam, tools};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_for_a_node_refuses_to_start_and_leaves_the_first_ones_socket() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(ClusterOptions::apiserver_only()).await?;
    ipam::install_spiderpool_crds(&cluster.client()?).await?;
    let dir = tempfile::tempdir()?;
    let first = Daemon::start(&cluster, "agent-node", dir.path(), false, &[])?;
    let mode = std::fs::metadata(first.socket())?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "the socket's mode is {mode:o}, not 600");

    // The same node's agent again, on the same socket: it waits a second for the lock, then refuses.
    let binary = tools::workspace_binary("spiderpool-node-daemon", "spiderpool-agent", false)?;
    let mut second = Command::new(&binary)
        .args(["--node-name", "agent-node", "--socket-path"])
        .arg(first.socket())
        .args(["--health-address", "off", "--lock-wait-seconds", "1"])
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the second agent")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = second.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            bail!("the second agent of the node did not exit");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().context("stderr")?, &mut stderr)?;
    ensure!(
        !status.success(),
        "the second agent exited successfully: {stderr}"
    );
    ensure!(
        stderr.contains("refusing to start a second agent for this node"),
        "the second agent did not say why it refused: {stderr}"
    );
    // The first agent's socket is still there and still serves.
    let (code, body) = unix_request(first.socket(), "GET", "/v1/ipam/healthy", None)?;
    ensure!(code == 200, "the first agent answers {code}: {body}");
    first.stop()?;
    ensure!(
        !dir.path().join("agent-node.sock").exists(),
        "the agent did not remove its own socket on exit"
    );
    Ok(())
}
