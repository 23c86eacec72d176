//! Helpers for IPAM tests and the IPAM benchmark: our CRDs, pools, bare pods bound to nodes, and the
//! real `spiderpool` plugin binary invoked the way a runtime invokes an IPAM plugin.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{Value, json};
use spiderpool_schema::SpiderIPPool;
use spiderpool_schema::nad::{NetworkAttachmentDefinition, NetworkAttachmentDefinitionSpec};

use crate::{TestNamespace, tools};

/// Installs every CRD of the chart (idempotent).
pub async fn install_spiderpool_crds(client: &Client) -> Result<()> {
    let mut yaml = String::new();
    for (_, file) in spiderpool_schema::crd_files()? {
        yaml.push_str("---\n");
        yaml.push_str(&file);
    }
    crate::cluster::install_crd_yaml(client, &yaml).await?;
    Ok(())
}

/// Creates a SpiderIPPool from its spec (JSON, upstream's field names).
pub async fn create_pool(client: &Client, name: &str, spec: Value) -> Result<SpiderIPPool> {
    let pool: SpiderIPPool = serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": spec,
    }))?;
    Api::<SpiderIPPool>::all(client.clone())
        .create(&PostParams::default(), &pool)
        .await
        .with_context(|| format!("creating SpiderIPPool {name}"))
}

/// A pool's records (`status.allocatedIPs`) as IP -> pod UID, once the pool has settled: no node
/// agent holds reservations in it and its status has not changed for 400 ms. Agents answer DEL before
/// recording the release and record addresses handed out from reservations in a later write (within
/// 200 ms of going quiet), then give unused reservations back (node-daemon/README.md); this waits up
/// to 15 s for that. Fails if `allocatedIPCount` ever disagrees with the pod-held records.
pub async fn pool_records(client: &Client, name: &str) -> Result<BTreeMap<String, String>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut stable_since: Option<(String, Instant)> = None;
    loop {
        let pool = Api::<SpiderIPPool>::all(client.clone()).get(name).await?;
        let version = pool.metadata.resource_version.clone().unwrap_or_default();
        let status = pool.status.unwrap_or_default();
        let records = status.allocations()?;
        let held = spiderpool_schema::ippool::count_held(&records);
        if status.allocated_ip_count.unwrap_or(0) as usize != held {
            bail!(
                "pool {name}: allocatedIPCount {:?} but {held} records held by pods",
                status.allocated_ip_count,
            );
        }
        let reservations: Vec<String> = records
            .iter()
            .filter_map(|(ip, r)| Some(format!("{ip} for {}", r.reservation()?)))
            .collect();
        let now = Instant::now();
        let since = match &stable_since {
            Some((seen, since)) if *seen == version => *since,
            _ => {
                stable_since = Some((version, now));
                now
            }
        };
        if reservations.is_empty() && now.duration_since(since) >= Duration::from_millis(400) {
            return Ok(records.into_iter().map(|(ip, r)| (ip, r.pod_uid)).collect());
        }
        if now >= deadline {
            bail!("pool {name} did not settle within 15 s (node reservations: {reservations:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a NetworkAttachmentDefinition `name` in the test namespace holding the CNI configuration
/// `config`.
pub async fn create_nad(ns: &TestNamespace, name: &str, config: &Value) -> Result<()> {
    let nad = NetworkAttachmentDefinition::new(
        name,
        ns.name(),
        NetworkAttachmentDefinitionSpec {
            config: config.to_string(),
        },
    );
    ns.api::<NetworkAttachmentDefinition>()
        .create(&PostParams::default(), &nad)
        .await
        .with_context(|| format!("creating NetworkAttachmentDefinition {}/{name}", ns.name()))?;
    Ok(())
}

/// Creates bare pods bound to `node` (no scheduler, no kubelet needed: the daemon only reads them).
/// Returns their UIDs in order.
pub async fn create_bare_pods(
    client: &Client,
    namespace: &str,
    names: &[(String, String)],
    annotations: &Value,
) -> Result<Vec<String>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let jobs = names.iter().map(|(name, node)| {
        let pod: serde_json::Result<Pod> = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
        }));
        let api = api.clone();
        async move {
            let pod = pod?;
            let created = api.create(&PostParams::default(), &pod).await?;
            created.metadata.uid.ok_or_else(|| anyhow!("pod without UID"))
        }
    });
    let results = futures::stream::iter(jobs).buffered(32).collect::<Vec<_>>().await;
    results.into_iter().collect()
}

use futures::StreamExt as _;

/// The `spiderpool` plugin binary (debug or release build).
pub fn plugin_binary(release: bool) -> Result<PathBuf> {
    tools::workspace_binary("spiderpool-cni", "spiderpool", release)
}

/// One plugin invocation's outcome.
#[derive(Debug, Clone)]
pub struct PluginRun {
    /// Exit code.
    pub success: bool,
    /// Parsed stdout (result or error object), `Null` when empty.
    pub output: Value,
    /// Stderr (logs).
    pub stderr: String,
    /// Wall time of the process.
    pub elapsed: Duration,
}

/// Runs the plugin as an IPAM plugin for one pod interface: `command` ADD/DEL/CHECK/GC/STATUS,
/// `netconf` the network configuration (with `ipam`), the pod named in `CNI_ARGS` as Multus and
/// kubelet pass it.
pub fn run_plugin(
    plugin: &Path,
    command: &str,
    container_id: &str,
    if_name: &str,
    pod: (&str, &str, &str),
    netconf: &Value,
) -> Result<PluginRun> {
    let (namespace, name, uid) = pod;
    let args = format!(
        "IgnoreUnknown=true;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={uid};IgnoreUnknown=true"
    );
    // The runtime's environment this netconf implies: the plugin writes logs only in the directory
    // the runtime names and talks only to a socket in the runtime's socket directory.
    let ipam = &netconf["ipam"];
    let log_dir = ipam["log_file_path"]
        .as_str()
        .and_then(|path| Path::new(path).parent())
        .map(|dir| dir.display().to_string())
        .unwrap_or_default();
    let socket = ipam["ipam_unix_socket_path"].as_str().unwrap_or_default();
    let started = Instant::now();
    let mut child = Command::new(plugin)
        .env_clear()
        .env("SPIDERPOOL_CNI_LOG_DIR", log_dir)
        .env("SPIDERPOOL_IPAM_UNIX_SOCKET_PATH", socket)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", format!("/var/run/netns/{container_id}"))
        .env("CNI_IFNAME", if_name)
        .env("CNI_ARGS", args)
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", plugin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&serde_json::to_vec(netconf)?)?;
    }
    let output = child.wait_with_output()?;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let parsed = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).with_context(|| format!("plugin stdout is not JSON: {stdout}"))?
    };
    Ok(PluginRun {
        success: output.status.success(),
        output: parsed,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed,
    })
}

/// A network configuration using our IPAM only (no main plugin: the runtime-side view of an IPAM
/// call), logging to `log_dir`.
pub fn ipam_netconf(network: &str, socket: &Path, ipv4_pools: &[&str], log_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": network,
        "type": "macvlan",
        "ipam": {
            "type": "spiderpool",
            "ipam_unix_socket_path": socket.display().to_string(),
            "default_ipv4_ippool": ipv4_pools,
            "log_file_path": log_dir.join("spiderpool-plugin.log").display().to_string(),
            "log_level": "INFO",
        }
    })
}

/// The first address (without prefix) of an ADD result.
pub fn result_ip(output: &Value) -> Option<String> {
    output["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .map(str::to_owned)
}
