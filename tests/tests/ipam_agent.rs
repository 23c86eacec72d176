//! The node agent as a process: exactly one per node, its socket root-only and never removed by an
//! agent that did not create it, against a real API server.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use spiderpool_schema::{SpiderIPPool, SpiderReservedIP};
use spiderpool_tests::daemon::{Daemon, unix_request};
use spiderpool_tests::prometheus::{apiserver_metrics, metric_sum};
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

/// The agent's caches take their first lists from the API server's watch cache (resourceVersion
/// "0"), as client-go's informers do, not from etcd: every node's agent starts these lists, often
/// all at once, and a consistent list of one node's pods by field selector has the API server read
/// every pod of the cluster from etcd, once per agent (a hundred agents were not ready within 30 s in
/// the `ipam_scale` bench while it left tens of thousands of pods terminating). kube leaves
/// resourceVersion "0" out of a list with a limit, which is how this was first missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_caches_are_listed_from_the_api_servers_watch_cache() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(ClusterOptions::apiserver_only()).await?;
    let client = cluster.client()?;
    ipam::install_spiderpool_crds(&client).await?;
    let storage_lists = |metrics: &str, resource: &str| {
        metric_sum(
            metrics,
            "apiserver_storage_list_total",
            &[&format!("resource=\"{resource}\"")],
        )
    };
    let cached = [
        "pods",
        "namespaces",
        "spiderippools.spiderpool.spidernet.io",
        "spiderreservedips.spiderpool.spidernet.io",
    ];

    // The control: a consistent list is read from etcd here (with an API server that answers
    // those from its cache too, this test could not tell the two apart).
    let before = apiserver_metrics(&client).await?;
    Api::<Pod>::all(client.clone())
        .list(&ListParams::default().fields("spec.nodeName=cache-node"))
        .await?;
    let after = apiserver_metrics(&client).await?;
    ensure!(
        storage_lists(&after, "pods") > storage_lists(&before, "pods"),
        "a consistent list of pods was not read from etcd: this API server answers them from its \
         watch cache, so this test cannot tell where the agent's lists come from"
    );

    // The API server sets up a custom resource's storage, and its watch cache's own first list
    // from etcd, on the first request for it: make that happen before counting.
    Api::<SpiderIPPool>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    Api::<SpiderReservedIP>::all(client.clone())
        .list(&ListParams::default())
        .await?;

    let before = apiserver_metrics(&client).await?;
    let dir = tempfile::tempdir()?;
    // Healthy only once every cache has its first list.
    let daemon = Daemon::start(&cluster, "cache-node", dir.path(), false, &[])?;
    let after = apiserver_metrics(&client).await?;
    daemon.stop()?;
    for resource in cached {
        ensure!(
            storage_lists(&after, resource) == storage_lists(&before, resource),
            "the agent listed {resource} from etcd ({} storage lists before its start, {} after)",
            storage_lists(&before, resource),
            storage_lists(&after, resource)
        );
    }
    let pod_cache_lists = |metrics: &str| {
        metric_sum(
            metrics,
            "apiserver_cache_list_total",
            &["resource_prefix=\"/pods\""],
        )
    };
    ensure!(
        pod_cache_lists(&after) > pod_cache_lists(&before),
        "the agent's pod cache was not listed from the watch cache"
    );
    Ok(())
}
