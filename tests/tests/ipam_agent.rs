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

/// The agent watches pools as metadata only: a pool write (the whole `allocatedIPs` string, here
/// about 150 KB) reaches it as a few hundred bytes, so the work a write causes does not grow with
/// the number of agents times the pool's size (node-daemon/README.md, "Scale"). The API server's
/// `apiserver_watch_events_sizes` counts what its watches encode; the agent is the only watcher of
/// pools here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_pool_watch_carries_metadata_not_the_records() -> Result<()> {
    use kube::api::{Patch, PatchParams};
    use spiderpool_schema::ippool::PoolIPAllocation;

    init_tracing();
    let cluster = TestCluster::start(ClusterOptions::apiserver_only()).await?;
    let client = cluster.client()?;
    ipam::install_spiderpool_crds(&client).await?;
    ipam::create_pool(
        &client,
        "big",
        serde_json::json!({"subnet": "10.8.0.0/16", "ips": ["10.8.0.1-10.8.7.255"]}),
    )
    .await?;
    let pools = Api::<SpiderIPPool>::all(client.clone());
    let write = |records: usize| {
        let held: std::collections::BTreeMap<String, PoolIPAllocation> = (0..records)
            .map(|i| {
                (
                    format!("10.8.{}.{}", i / 250, i % 250 + 1),
                    PoolIPAllocation::held_by(format!("ns/pod-{i}"), format!("uid-{i:08}")),
                )
            })
            .collect();
        serde_json::json!({"status": {
            "allocatedIPs": serde_json::to_string(&held).unwrap(),
            "allocatedIPCount": records,
        }})
    };
    let events = |metrics: &str| {
        (
            metric_sum(
                metrics,
                "apiserver_watch_events_sizes_sum",
                &["kind=\"SpiderIPPool\""],
            ),
            metric_sum(
                metrics,
                "apiserver_watch_events_sizes_count",
                &["kind=\"SpiderIPPool\""],
            ),
        )
    };
    pools
        .patch_status("big", &PatchParams::default(), &Patch::Merge(&write(1_500)))
        .await?;
    let size = serde_json::to_vec(&pools.get("big").await?)?.len();
    ensure!(size > 100_000, "the pool is only {size} bytes: too small to tell");

    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start(&cluster, "watch-node", dir.path(), false, &[])?;
    let (bytes_before, count_before) = events(&apiserver_metrics(&client).await?);
    for records in [1_501, 1_502, 1_503] {
        pools
            .patch_status("big", &PatchParams::default(), &Patch::Merge(&write(records)))
            .await?;
    }
    // The events reach the watch within a second or two; wait until all three are counted.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (bytes, count) = loop {
        let (bytes, count) = events(&apiserver_metrics(&client).await?);
        if count - count_before >= 3.0 || Instant::now() > deadline {
            break (bytes - bytes_before, count - count_before);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    daemon.stop()?;
    ensure!(
        count >= 3.0,
        "the API server encoded {count} pool watch events for three writes: is the agent watching pools?"
    );
    let per_event = bytes / count;
    ensure!(
        per_event < 4_000.0,
        "the agent's pool watch events are {per_event:.0} bytes each (the pool is {size} bytes): it \
         watches pools whole"
    );
    Ok(())
}
