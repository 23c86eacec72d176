//! The IPAM API end to end: the real `spiderpool` plugin binary against real node daemons and a real
//! API server (no kubelet: pods are bare objects bound to a node name, and the test plays the
//! runtime's CNI calls). One control plane per test binary, one namespace, node and daemon per test.
//!
//! Covered: KubeVirt VMs keeping their address across launcher pods and live migration; CNI GC with
//! `cni.dev/valid-attachments`; STATUS and CHECK; a daemon crash between ADDs; a malformed pod
//! annotation; dual-stack and IPv6-only allocation; excludeIPs and SpiderReservedIPs.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};
use spiderpool_schema::{SpiderEndpoint, SpiderReservedIP};
use spiderpool_tests::daemon::Daemon;
use spiderpool_tests::ipam::{self, PluginRun, run_plugin};
use spiderpool_tests::{ClusterOptions, TestCluster, TestNamespace, init_tracing};
use tokio::sync::OnceCell;

/// Minimal KubeVirt CRDs: the daemon only reads VMs' and VMIs' metadata.
const KUBEVIRT_CRDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: virtualmachines.kubevirt.io
spec:
  group: kubevirt.io
  scope: Namespaced
  names:
    plural: virtualmachines
    singular: virtualmachine
    kind: VirtualMachine
    listKind: VirtualMachineList
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: virtualmachineinstances.kubevirt.io
spec:
  group: kubevirt.io
  scope: Namespaced
  names:
    plural: virtualmachineinstances
    singular: virtualmachineinstance
    kind: VirtualMachineInstance
    listKind: VirtualMachineInstanceList
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"#;

/// The control plane of this test binary, with our CRDs and KubeVirt's installed.
async fn cluster() -> Result<&'static TestCluster> {
    static CLUSTER: OnceCell<TestCluster> = OnceCell::const_new();
    CLUSTER
        .get_or_try_init(|| async {
            let cluster = TestCluster::start(ClusterOptions::apiserver_only()).await?;
            let client = cluster.client()?;
            ipam::install_spiderpool_crds(&client).await?;
            spiderpool_tests::cluster::install_crd_yaml(&client, KUBEVIRT_CRDS).await?;
            Ok(cluster)
        })
        .await
}

/// One test's world: its namespace, a temp dir for sockets and logs, and the plugin binary.
struct Env {
    cluster: &'static TestCluster,
    client: kube::Client,
    ns: TestNamespace,
    dir: tempfile::TempDir,
    plugin: std::path::PathBuf,
}

async fn env(prefix: &str) -> Result<Env> {
    init_tracing();
    let cluster = cluster().await?;
    let client = cluster.client()?;
    let ns = cluster.namespace(prefix).await?;
    Ok(Env {
        cluster,
        client,
        ns,
        dir: tempfile::tempdir()?,
        plugin: ipam::plugin_binary(false)?,
    })
}

impl Env {
    fn start_daemon(&self, node: &str) -> Result<Daemon> {
        Daemon::start(self.cluster, node, self.dir.path(), false, &[])
    }

    /// A network configuration naming default pools of each family (empty: none of that family).
    fn netconf(&self, network: &str, socket: &Path, ipv4: &[&str], ipv6: &[&str]) -> Value {
        let mut conf = ipam::ipam_netconf(network, socket, ipv4, self.dir.path());
        conf["ipam"]["default_ipv6_ippool"] = json!(ipv6);
        conf
    }

    /// Runs the plugin for `pod` (`(name, uid)`) in this test's namespace.
    fn run(&self, command: &str, container: &str, pod: (&str, &str), netconf: &Value) -> Result<PluginRun> {
        run_plugin(
            &self.plugin,
            command,
            container,
            "eth0",
            (self.ns.name(), pod.0, pod.1),
            netconf,
        )
    }

    /// ADD that must succeed; returns the result.
    fn add_ok(&self, container: &str, pod: (&str, &str), netconf: &Value, daemon: &Daemon) -> Result<Value> {
        let run = self.run("ADD", container, pod, netconf)?;
        ensure!(
            run.success,
            "ADD of {} failed: {} / {}\ndaemon log:\n{}",
            pod.0,
            run.output,
            run.stderr,
            daemon.log_tail()
        );
        Ok(run.output)
    }

    /// DEL that must succeed.
    fn del_ok(&self, container: &str, pod: (&str, &str), netconf: &Value, daemon: &Daemon) -> Result<()> {
        let run = self.run("DEL", container, pod, netconf)?;
        ensure!(
            run.success,
            "DEL of {} failed: {} / {}\ndaemon log:\n{}",
            pod.0,
            run.output,
            run.stderr,
            daemon.log_tail()
        );
        Ok(())
    }

    /// Creates a pod bound to `node` with the given extra metadata; returns its UID.
    async fn create_pod(&self, name: &str, node: &str, metadata: Value) -> Result<String> {
        let mut meta = metadata;
        meta["name"] = json!(name);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
        }))?;
        let created = self
            .ns
            .api::<Pod>()
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {name}"))?;
        created.metadata.uid.context("pod without UID")
    }

    /// Deletes a pod for good (grace period 0: the object is gone at once) and waits until it is.
    async fn delete_pod_now(&self, name: &str) -> Result<()> {
        let pods = self.ns.api::<Pod>();
        pods.delete(name, &DeleteParams::default().grace_period(0))
            .await
            .with_context(|| format!("deleting pod {name}"))?;
        wait_until(&format!("pod {name} to be gone"), || async {
            Ok(pods.get_opt(name).await?.is_none())
        })
        .await
    }

    async fn endpoint(&self, name: &str) -> Result<Option<SpiderEndpoint>> {
        Ok(self.ns.api::<SpiderEndpoint>().get_opt(name).await?)
    }

    fn kubevirt(&self, kind: &str) -> Api<DynamicObject> {
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("kubevirt.io", "v1", kind));
        Api::namespaced_with(self.client.clone(), self.ns.name(), &resource)
    }
}

async fn wait_until<F, Fut>(what: &str, mut probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if probe().await? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every address of an ADD result (without prefix).
fn result_ips(output: &Value) -> Vec<String> {
    output["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next())
        .map(str::to_owned)
        .collect()
}

fn single_ip(output: &Value) -> Result<String> {
    let ips = result_ips(output);
    ensure!(ips.len() == 1, "expected exactly one address in {output}");
    Ok(ips[0].clone())
}

/// A failed run's CNI error code.
fn error_code(run: &PluginRun) -> Option<u64> {
    run.output["code"].as_u64()
}

async fn create_reserved(client: &kube::Client, name: &str, ips: &[&str]) -> Result<()> {
    let reserved: SpiderReservedIP = serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderReservedIP",
        "metadata": {"name": name},
        "spec": {"ipVersion": 4, "ips": ips},
    }))?;
    Api::<SpiderReservedIP>::all(client.clone())
        .create(&PostParams::default(), &reserved)
        .await
        .with_context(|| format!("creating SpiderReservedIP {name}"))?;
    Ok(())
}

/// a) A KubeVirt VM keeps its address across launcher pods and live migration, and loses it when the
/// VM and VMI are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubevirt_vm_keeps_its_address_across_launcher_pods_and_migration() -> Result<()> {
    let env = env("api-kubevirt").await?;
    let node = "api-kubevirt-node";
    ipam::create_pool(
        &env.client,
        "api-kubevirt",
        json!({"subnet": "10.71.0.0/24", "ips": ["10.71.0.10-10.71.0.20"]}),
    )
    .await?;
    let daemon = env.start_daemon(node)?;
    let netconf = env.netconf("kubevirt-net", daemon.socket(), &["api-kubevirt"], &[]);

    let vm: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "vm1"}, "spec": {"running": true},
    }))?;
    let vm = env
        .kubevirt("VirtualMachine")
        .create(&PostParams::default(), &vm)
        .await?;
    let vmi: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm1", "ownerReferences": [{
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": "vm1",
            "uid": vm.metadata.uid.clone().unwrap(), "controller": true, "blockOwnerDeletion": true,
        }]},
        "spec": {},
    }))?;
    let vmi = env
        .kubevirt("VirtualMachineInstance")
        .create(&PostParams::default(), &vmi)
        .await?;
    let launcher_meta = json!({"ownerReferences": [{
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "name": "vm1",
        "uid": vmi.metadata.uid.clone().unwrap(), "controller": true, "blockOwnerDeletion": true,
    }]});

    // The first launcher pod gets X; the endpoint is named after the VM, owned by nothing.
    let uid_a = env
        .create_pod("virt-launcher-vm1-aaaaa", node, launcher_meta.clone())
        .await?;
    let pod_a = ("virt-launcher-vm1-aaaaa", uid_a.as_str());
    let x = single_ip(&env.add_ok("c-aaaaa", pod_a, &netconf, &daemon)?)?;
    let ep = env
        .endpoint("vm1")
        .await?
        .context("no SpiderEndpoint named vm1 after the launcher's ADD")?;
    let status = ep.status.clone().unwrap_or_default();
    ensure!(
        status.owner_controller_type == "VirtualMachine" && status.owner_controller_name == "vm1",
        "endpoint owner: {} {}",
        status.owner_controller_type,
        status.owner_controller_name
    );
    ensure!(
        ep.metadata.owner_references.as_ref().is_none_or(|r| r.is_empty()),
        "a VM's endpoint must not be owned by the pod: {:?}",
        ep.metadata.owner_references
    );
    ensure!(status.current.uid == uid_a);
    ensure!(
        env.endpoint("virt-launcher-vm1-aaaaa").await?.is_none(),
        "an endpoint named after the launcher pod"
    );

    // The launcher pod is deleted: the runtime's DEL comes while it terminates (no kubelet here, so
    // it stays terminating), and again once it is gone. X stays the VM's.
    env.ns
        .api::<Pod>()
        .delete(pod_a.0, &DeleteParams::default())
        .await?;
    let terminating = env.ns.api::<Pod>().get(pod_a.0).await?;
    ensure!(
        terminating.metadata.deletion_timestamp.is_some(),
        "the launcher pod should be terminating"
    );
    env.del_ok("c-aaaaa", pod_a, &netconf, &daemon)?;
    env.delete_pod_now(pod_a.0).await?;
    env.del_ok("c-aaaaa", pod_a, &netconf, &daemon)?;
    let records = ipam::pool_records(&env.client, "api-kubevirt").await?;
    ensure!(
        records.get(&x) == Some(&uid_a),
        "the VM's address {x} was released with its launcher pod: {records:?}"
    );
    ensure!(env.endpoint("vm1").await?.is_some(), "the VM's endpoint is gone");

    // A new launcher pod (VM restarted) gets X back.
    let uid_b = env
        .create_pod("virt-launcher-vm1-bbbbb", node, launcher_meta.clone())
        .await?;
    let pod_b = ("virt-launcher-vm1-bbbbb", uid_b.as_str());
    let got = single_ip(&env.add_ok("c-bbbbb", pod_b, &netconf, &daemon)?)?;
    ensure!(got == x, "the restarted VM got {got}, not its address {x}");
    let records = ipam::pool_records(&env.client, "api-kubevirt").await?;
    ensure!(
        records.len() == 1 && records.get(&x) == Some(&uid_b),
        "after the restart: {records:?}"
    );

    // Live migration: the target pod starts while the source pod still runs, and takes X over.
    let uid_c = env
        .create_pod("virt-launcher-vm1-ccccc", node, launcher_meta.clone())
        .await?;
    let pod_c = ("virt-launcher-vm1-ccccc", uid_c.as_str());
    let got = single_ip(&env.add_ok("c-ccccc", pod_c, &netconf, &daemon)?)?;
    ensure!(
        got == x,
        "the migration target got {got}, not the VM's address {x}"
    );
    let records = ipam::pool_records(&env.client, "api-kubevirt").await?;
    ensure!(
        records.len() == 1 && records.get(&x) == Some(&uid_c),
        "after the migration the record must name the target pod {uid_c}: {records:?}"
    );
    // The source pod's DEL (its own sandbox) must not take X from the target.
    env.del_ok("c-bbbbb", pod_b, &netconf, &daemon)?;
    let records = ipam::pool_records(&env.client, "api-kubevirt").await?;
    ensure!(
        records.get(&x) == Some(&uid_c),
        "the migration source's DEL released the VM's address: {records:?}\ndaemon log:\n{}",
        daemon.log_tail()
    );
    let ep = env.endpoint("vm1").await?.context("the VM's endpoint is gone")?;
    ensure!(ep.status.unwrap_or_default().current.uid == uid_c);
    env.delete_pod_now(pod_b.0).await?;

    // The VM is deleted, and its last launcher pod is gone (force-deleted, or the node was lost) by
    // the time the runtime's DEL comes: that DEL releases X and the endpoint.
    env.kubevirt("VirtualMachineInstance")
        .delete("vm1", &DeleteParams::default())
        .await?;
    env.kubevirt("VirtualMachine")
        .delete("vm1", &DeleteParams::default())
        .await?;
    env.delete_pod_now(pod_c.0).await?;
    env.del_ok("c-ccccc", pod_c, &netconf, &daemon)?;
    let records = ipam::pool_records(&env.client, "api-kubevirt").await?;
    ensure!(
        records.is_empty(),
        "the deleted VM's address is still held: {records:?}\ndaemon log:\n{}",
        daemon.log_tail()
    );
    ensure!(
        env.endpoint("vm1").await?.is_none(),
        "the deleted VM's endpoint is still there"
    );
    Ok(())
}

/// b) CNI GC releases exactly the attachments of its network that the runtime no longer lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_gc_releases_only_attachments_missing_from_the_valid_list() -> Result<()> {
    let env = env("api-gc").await?;
    let node = "api-gc-node";
    ipam::create_pool(
        &env.client,
        "api-gc",
        json!({"subnet": "10.72.0.0/24", "ips": ["10.72.0.10-10.72.0.20"]}),
    )
    .await?;
    let daemon = env.start_daemon(node)?;
    let netconf = env.netconf("gc-net", daemon.socket(), &["api-gc"], &[]);
    let uid1 = env.create_pod("pod1", node, json!({})).await?;
    let uid2 = env.create_pod("pod2", node, json!({})).await?;
    let ip1 = single_ip(&env.add_ok("c-pod1", ("pod1", &uid1), &netconf, &daemon)?)?;
    let ip2 = single_ip(&env.add_ok("c-pod2", ("pod2", &uid2), &netconf, &daemon)?)?;
    ensure!(ip1 != ip2);

    let gc = |network: &str, valid: Value| -> Result<PluginRun> {
        let mut conf = env.netconf(network, daemon.socket(), &["api-gc"], &[]);
        conf["cni.dev/valid-attachments"] = valid;
        // GC has no attachment; the runtime still sets the variables it has, which GC ignores.
        env.run("GC", "unused", ("unused", "unused"), &conf)
    };

    // GC of another network releases nothing, even with an empty valid list.
    let run = gc("other-net", json!([]))?;
    ensure!(
        run.success,
        "GC of other-net failed: {} / {}",
        run.output,
        run.stderr
    );
    let records = ipam::pool_records(&env.client, "api-gc").await?;
    ensure!(
        records.len() == 2,
        "GC of another network released addresses of gc-net: {records:?}"
    );

    let run = gc("gc-net", json!([{"containerID": "c-pod1", "ifname": "eth0"}]))?;
    ensure!(
        run.success,
        "GC of gc-net failed: {} / {}",
        run.output,
        run.stderr
    );
    ensure!(
        run.output.is_null(),
        "GC prints nothing on success: {}",
        run.output
    );
    let records = ipam::pool_records(&env.client, "api-gc").await?;
    ensure!(
        records == BTreeMap::from([(ip1.clone(), uid1.clone())]),
        "after GC only pod1's {ip1} may remain: {records:?}\ndaemon log:\n{}",
        daemon.log_tail()
    );
    ensure!(env.endpoint("pod1").await?.is_some(), "pod1's endpoint is gone");
    ensure!(
        env.endpoint("pod2").await?.is_none(),
        "pod2's endpoint survived GC"
    );
    Ok(())
}

/// c) STATUS follows the daemon's health; CHECK compares prevResult with what the daemon records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_the_daemon_and_check_compares_addresses() -> Result<()> {
    let env = env("api-status").await?;
    let node = "api-status-node";
    ipam::create_pool(
        &env.client,
        "api-status",
        json!({"subnet": "10.73.0.0/24", "ips": ["10.73.0.10-10.73.0.20"]}),
    )
    .await?;
    let daemon = env.start_daemon(node)?;
    let netconf = env.netconf("status-net", daemon.socket(), &["api-status"], &[]);
    let uid = env.create_pod("pod1", node, json!({})).await?;
    let added = env.add_ok("c-pod1", ("pod1", &uid), &netconf, &daemon)?;

    let mut check_conf = netconf.clone();
    check_conf["prevResult"] = added.clone();
    let run = env.run("CHECK", "c-pod1", ("pod1", &uid), &check_conf)?;
    ensure!(
        run.success,
        "CHECK with the ADD result failed: {} / {}",
        run.output,
        run.stderr
    );

    let mut wrong = added.clone();
    wrong["ips"][0]["address"] = json!("10.73.0.99/24");
    check_conf["prevResult"] = wrong;
    let run = env.run("CHECK", "c-pod1", ("pod1", &uid), &check_conf)?;
    ensure!(
        !run.success,
        "CHECK with a different address succeeded: {}",
        run.output
    );
    ensure!(
        run.output["msg"].as_str().unwrap_or_default().contains("differ"),
        "CHECK error should say the addresses differ: {}",
        run.output
    );

    let run = env.run("STATUS", "unused", ("unused", "unused"), &netconf)?;
    ensure!(
        run.success,
        "STATUS against a running daemon failed: {} / {}",
        run.output,
        run.stderr
    );
    daemon.stop()?;
    let run = env.run("STATUS", "unused", ("unused", "unused"), &netconf)?;
    ensure!(!run.success, "STATUS succeeded with the daemon stopped");
    ensure!(
        error_code(&run) == Some(50),
        "STATUS without a daemon must be code 50 (plugin not available): {}",
        run.output
    );
    Ok(())
}

/// The daemon logs JSON lines when its output is not a terminal (a container's), and the fields of a
/// request's span in them carry no terminal colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_json_log_carries_no_colour_codes() -> Result<()> {
    let env = env("api-log").await?;
    let node = "api-log-node";
    ipam::create_pool(
        &env.client,
        "api-log",
        json!({"subnet": "10.74.0.0/24", "ips": ["10.74.0.10-10.74.0.20"]}),
    )
    .await?;
    let daemon = env.start_daemon(node)?;
    let netconf = env.netconf("log-net", daemon.socket(), &["api-log"], &[]);
    let uid = env.create_pod("pod1", node, json!({})).await?;
    env.add_ok("c-pod1", ("pod1", &uid), &netconf, &daemon)?;
    let log = daemon.log();
    let allocated = log
        .lines()
        .find(|line| line.contains(r#""msg":"allocated""#))
        .with_context(|| format!("no \"allocated\" line in the daemon's log:\n{log}"))?;
    let line: Value = serde_json::from_str(allocated).context("the daemon's log line is not JSON")?;
    let spans = line["spans"].as_str().unwrap_or_default();
    ensure!(
        !spans.contains('\u{1b}') && spans.contains("pod=") && spans.contains("/pod1"),
        "the ADD's span is missing or carries terminal colour codes: {allocated}"
    );
    daemon.stop()?;
    Ok(())
}

/// d) A daemon killed between ADDs: the next daemon answers the repeated ADD with the same address and
/// no second record. A malformed annotation fails only its own pod, with code 100 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_crash_and_malformed_annotation() -> Result<()> {
    let env = env("api-crash").await?;
    let node = "api-crash-node";
    ipam::create_pool(
        &env.client,
        "api-crash",
        json!({"subnet": "10.74.0.0/24", "ips": ["10.74.0.10-10.74.0.20"]}),
    )
    .await?;
    let daemon = env.start_daemon(node)?;
    let netconf = env.netconf("crash-net", daemon.socket(), &["api-crash"], &[]);
    let uid = env.create_pod("pod1", node, json!({})).await?;
    let x = single_ip(&env.add_ok("c-pod1", ("pod1", &uid), &netconf, &daemon)?)?;

    daemon.kill()?;
    let daemon = env.start_daemon(node)?;
    let again = single_ip(&env.add_ok("c-pod1", ("pod1", &uid), &netconf, &daemon)?)?;
    ensure!(again == x, "after the crash the pod got {again}, not {x}");
    let records = ipam::pool_records(&env.client, "api-crash").await?;
    ensure!(
        records == BTreeMap::from([(x.clone(), uid.clone())]),
        "after the crash and the repeated ADD: {records:?}"
    );

    let bad_uid = env
        .create_pod(
            "bad",
            node,
            json!({"annotations": {"ipam.spidernet.io/ippools": "[{\"ipv4\": \"not-a-list\""}}),
        )
        .await?;
    let run = env.run("ADD", "c-bad", ("bad", &bad_uid), &netconf)?;
    ensure!(
        !run.success,
        "ADD with a malformed annotation succeeded: {}",
        run.output
    );
    ensure!(
        error_code(&run) == Some(100),
        "expected code 100 (invalid pod annotation): {}",
        run.output
    );
    ensure!(
        run.output["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("ipam.spidernet.io/ippools"),
        "the error must name the annotation: {}",
        run.output
    );
    let uid2 = env.create_pod("pod2", node, json!({})).await?;
    let ip2 = single_ip(&env.add_ok("c-pod2", ("pod2", &uid2), &netconf, &daemon)?)?;
    let records = ipam::pool_records(&env.client, "api-crash").await?;
    ensure!(
        records == BTreeMap::from([(x.clone(), uid.clone()), (ip2.clone(), uid2.clone())]),
        "records: {records:?}"
    );
    Ok(())
}

/// e) Node reservations across a daemon crash: a daemon starting pods back to back hands most of
/// them addresses from its reservation without a pool write each. It is killed before it recorded
/// them for their pods (its background write is held off). The next daemon finds the reservations,
/// records the handed-out ones for the pods whose endpoints claim them and gives the rest back; the
/// next pods get other addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_survive_a_daemon_crash() -> Result<()> {
    let env = env("api-lease").await?;
    let node = "api-lease-node";
    ipam::create_pool(
        &env.client,
        "api-lease",
        json!({"subnet": "10.75.0.0/24", "ips": ["10.75.0.10-10.75.0.109"]}),
    )
    .await?;
    let hold_off = [
        "--node-reservation-flush-idle-ms",
        "600000",
        "--node-reservation-flush-max-age-ms",
        "600000",
    ];
    let daemon = Daemon::start(env.cluster, node, env.dir.path(), false, &hold_off)?;
    let netconf = env.netconf("lease-net", daemon.socket(), &["api-lease"], &[]);
    let mut pods = Vec::new();
    for i in 0..20 {
        let name = format!("pod{i}");
        let uid = env.create_pod(&name, node, json!({})).await?;
        pods.push((name, uid));
    }
    let mut first = BTreeMap::new();
    for (name, uid) in &pods[..10] {
        let ip = single_ip(&env.add_ok(&format!("c-{name}"), (name, uid), &netconf, &daemon)?)?;
        first.insert(ip, uid.clone());
    }
    let handouts = daemon.metric("spiderpool_ipam_reserved_handouts_total")?;
    ensure!(
        handouts >= 5.0,
        "only {handouts} of 10 back-to-back ADDs came from the node's reservation"
    );
    let pool = Api::<spiderpool_schema::SpiderIPPool>::all(env.client.clone())
        .get("api-lease")
        .await?;
    let status = pool.status.unwrap_or_default();
    let records = status.allocations()?;
    // Pods whose address the pool still shows as the node's reservation: only their endpoints say
    // they hold it.
    let unrecorded = first
        .keys()
        .filter(|ip| records.get(*ip).and_then(|r| r.reservation()) == Some(node))
        .count();
    println!("{handouts} handed out from reservations, {unrecorded} of them not yet recorded at the crash");
    ensure!(
        unrecorded >= 1,
        "the crash must leave handed-out addresses unrecorded for this test to mean anything: {status:?}"
    );
    ensure!(
        status.allocated_ip_count == Some(i64::try_from(10 - unrecorded)?),
        "allocatedIPCount must count exactly the pods recorded: {status:?}"
    );

    daemon.kill()?;
    let daemon = env.start_daemon(node)?;
    let records = ipam::pool_records(&env.client, "api-lease").await?;
    ensure!(
        records == first,
        "after recovery the pool must record exactly the first ten pods: {records:?} vs {first:?}"
    );
    let mut all = first.clone();
    for (name, uid) in &pods[10..] {
        let ip = single_ip(&env.add_ok(&format!("c-{name}"), (name, uid), &netconf, &daemon)?)?;
        ensure!(
            all.insert(ip.clone(), uid.clone()).is_none(),
            "{ip} handed out twice"
        );
    }
    let records = ipam::pool_records(&env.client, "api-lease").await?;
    ensure!(records == all, "records {records:?} vs answers {all:?}");
    Ok(())
}

fn endpoint_addresses(ep: &SpiderEndpoint) -> (Option<String>, Option<String>) {
    let status = ep.status.clone().unwrap_or_default();
    let eth0 = status.current.ips.iter().find(|d| d.nic == "eth0");
    (
        eth0.and_then(|d| d.ipv4.clone()),
        eth0.and_then(|d| d.ipv6.clone()),
    )
}

/// e) Dual-stack gives one address of each family; an IPv6-only configuration only an IPv6 one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_and_ipv6_only() -> Result<()> {
    let env = env("api-dual").await?;
    let node = "api-dual-node";
    ipam::create_pool(
        &env.client,
        "api-dual-v4",
        json!({"subnet": "10.75.0.0/24", "ips": ["10.75.0.10-10.75.0.20"]}),
    )
    .await?;
    ipam::create_pool(
        &env.client,
        "api-dual-v6",
        json!({"subnet": "fd00:10::/64", "ips": ["fd00:10::10-fd00:10::20"]}),
    )
    .await?;
    let daemon = env.start_daemon(node)?;

    let dual = env.netconf("dual-net", daemon.socket(), &["api-dual-v4"], &["api-dual-v6"]);
    let uid = env.create_pod("dual", node, json!({})).await?;
    let result = env.add_ok("c-dual", ("dual", &uid), &dual, &daemon)?;
    let ips = result_ips(&result);
    let v4: Vec<&String> = ips.iter().filter(|ip| !ip.contains(':')).collect();
    let v6: Vec<&String> = ips.iter().filter(|ip| ip.contains(':')).collect();
    ensure!(
        v4.len() == 1 && v6.len() == 1,
        "dual-stack must give one address per family: {result}"
    );
    ensure!(
        v4[0].starts_with("10.75.0.") && v6[0].starts_with("fd00:10::"),
        "{result}"
    );
    let ep = env.endpoint("dual").await?.context("no endpoint for dual")?;
    let (ep_v4, ep_v6) = endpoint_addresses(&ep);
    ensure!(
        ep_v4.as_deref() == Some(format!("{}/24", v4[0]).as_str())
            && ep_v6.as_deref() == Some(format!("{}/64", v6[0]).as_str()),
        "endpoint records {ep_v4:?} {ep_v6:?} for {result}"
    );
    ensure!(ipam::pool_records(&env.client, "api-dual-v4").await?.get(v4[0]) == Some(&uid));
    ensure!(ipam::pool_records(&env.client, "api-dual-v6").await?.get(v6[0]) == Some(&uid));

    let v6_only = env.netconf("v6-net", daemon.socket(), &[], &["api-dual-v6"]);
    let uid6 = env.create_pod("v6only", node, json!({})).await?;
    let result = env.add_ok("c-v6only", ("v6only", &uid6), &v6_only, &daemon)?;
    let ip = single_ip(&result)?;
    ensure!(ip.starts_with("fd00:10::"), "IPv6-only got {result}");
    let ep = env.endpoint("v6only").await?.context("no endpoint for v6only")?;
    let (ep_v4, ep_v6) = endpoint_addresses(&ep);
    ensure!(
        ep_v4.is_none() && ep_v6.as_deref() == Some(format!("{ip}/64").as_str()),
        "endpoint records {ep_v4:?} {ep_v6:?} for an IPv6-only pod"
    );
    ensure!(
        !ipam::pool_records(&env.client, "api-dual-v4")
            .await?
            .values()
            .any(|u| u == &uid6),
        "the IPv6-only pod holds an IPv4 address"
    );
    Ok(())
}

/// f) excludeIPs and SpiderReservedIPs are never handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_and_reserved_addresses_are_never_handed_out() -> Result<()> {
    let env = env("api-reserved").await?;
    let node = "api-reserved-node";
    ipam::create_pool(
        &env.client,
        "api-reserved",
        json!({"subnet": "10.76.0.0/24", "ips": ["10.76.0.1-10.76.0.4"], "excludeIPs": ["10.76.0.2"]}),
    )
    .await?;
    create_reserved(&env.client, "api-reserved", &["10.76.0.3"]).await?;
    let daemon = env.start_daemon(node)?;
    let netconf = env.netconf("reserved-net", daemon.socket(), &["api-reserved"], &[]);

    let mut given = Vec::new();
    for name in ["pod1", "pod2"] {
        let uid = env.create_pod(name, node, json!({})).await?;
        given.push(single_ip(&env.add_ok(
            &format!("c-{name}"),
            (name, &uid),
            &netconf,
            &daemon,
        )?)?);
    }
    given.sort();
    ensure!(
        given == ["10.76.0.1", "10.76.0.4"],
        "only 10.76.0.1 and 10.76.0.4 are usable, got {given:?}"
    );
    let uid3 = env.create_pod("pod3", node, json!({})).await?;
    let run = env.run("ADD", "c-pod3", ("pod3", &uid3), &netconf)?;
    ensure!(!run.success, "a third ADD succeeded: {}", run.output);
    ensure!(
        error_code(&run) == Some(102),
        "expected code 102 (pools exhausted): {}",
        run.output
    );
    let records = ipam::pool_records(&env.client, "api-reserved").await?;
    ensure!(
        records.keys().cloned().collect::<Vec<_>>() == given,
        "records {records:?}"
    );
    Ok(())
}

/// One pool `10.<net>.0.0/24` of fifty addresses (`.10`-`.59`) per `(name, net)`.
async fn create_pools(client: &kube::Client, pools: &[(&str, u8)]) -> Result<()> {
    for (pool, net) in pools {
        ipam::create_pool(
            client,
            pool,
            json!({"subnet": format!("10.{net}.0.0/24"), "ips": [format!("10.{net}.0.10-10.{net}.0.59")]}),
        )
        .await?;
    }
    Ok(())
}

/// How many reservations of `node` the pool holds, as the API server has it now.
async fn reserved_for(client: &kube::Client, pool: &str, node: &str) -> Result<usize> {
    let pool = Api::<spiderpool_schema::SpiderIPPool>::all(client.clone())
        .get(pool)
        .await?;
    let records = pool.status.unwrap_or_default().allocations()?;
    Ok(records.values().filter(|r| r.reservation() == Some(node)).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_bound_to_a_node_get_reservations_before_their_first_add() -> Result<()> {
    let env = env("api-ahead").await?;
    let node = "api-ahead-node";
    create_pools(
        &env.client,
        &[("api-ahead-a", 76), ("api-ahead-b", 77), ("api-ahead-c", 78)],
    )
    .await?;
    let daemon = env.start_daemon(node)?;
    let by_annotation = env.netconf("ahead-plain", daemon.socket(), &[], &[]);
    let by_nad = env.netconf("ahead-net", daemon.socket(), &["api-ahead-b"], &[]);
    ipam::create_nad(&env.ns, "ahead-net", &by_nad).await?;

    // No ADD yet: the agent reserves as soon as it sees the pods, in the pool each will ask.
    let annotated = env
        .create_pod(
            "annotated",
            node,
            json!({"annotations": {"ipam.spidernet.io/ippool": r#"{"ipv4":["api-ahead-a"]}"#}}),
        )
        .await?;
    let multus = env
        .create_pod(
            "multus",
            node,
            json!({"annotations": {"v1.multus-cni.io/default-network": "ahead-net"}}),
        )
        .await?;
    // Its pool is only in the CNI configuration the ADD will carry: nothing to guess from.
    let unhinted = env.create_pod("unhinted", node, json!({})).await?;
    for pool in ["api-ahead-a", "api-ahead-b"] {
        wait_until(
            &format!("a reservation of {node} in {pool} before any ADD"),
            || async { Ok(reserved_for(&env.client, pool, node).await? > 0) },
        )
        .await
        .with_context(|| daemon.log_tail())?;
    }
    ensure!(
        reserved_for(&env.client, "api-ahead-c", node).await? == 0,
        "no pod hints at api-ahead-c, yet the agent reserved there"
    );

    let before = daemon.metric("spiderpool_ipam_reserved_handouts_total")?;
    let a = single_ip(&env.add_ok("c-annotated", ("annotated", &annotated), &by_annotation, &daemon)?)?;
    let b = single_ip(&env.add_ok("c-multus", ("multus", &multus), &by_nad, &daemon)?)?;
    let handouts = daemon.metric("spiderpool_ipam_reserved_handouts_total")? - before;
    ensure!(
        handouts == 2.0,
        "both first ADDs must be served from reservations made ahead, {handouts} were"
    );
    ensure!(
        a.starts_with("10.76.") && b.starts_with("10.77."),
        "addresses from the wrong pools: {a}, {b}"
    );
    let c = env.netconf("ahead-plain", daemon.socket(), &["api-ahead-c"], &[]);
    let cip = single_ip(&env.add_ok("c-unhinted", ("unhinted", &unhinted), &c, &daemon)?)?;
    ensure!(cip.starts_with("10.78."), "unhinted pod got {cip}");

    // Unused reservations go back once the node is idle; the pools keep exactly the pods' records.
    for (pool, ip, uid) in [
        ("api-ahead-a", &a, &annotated),
        ("api-ahead-b", &b, &multus),
        ("api-ahead-c", &cip, &unhinted),
    ] {
        let records = ipam::pool_records(&env.client, pool).await?;
        ensure!(
            records == BTreeMap::from([(ip.clone(), uid.clone())]),
            "{pool} records {records:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_ahead_are_sized_by_the_pods_guessed_for_each_pool() -> Result<()> {
    let env = env("api-share").await?;
    let node = "api-share-node";
    create_pools(&env.client, &[("api-share-a", 79), ("api-share-b", 80)]).await?;
    // Six pods for each pool are bound before the agent starts, so its first look sees all twelve.
    for i in 0..12 {
        let pool = if i % 2 == 0 { "api-share-a" } else { "api-share-b" };
        let annotation = format!(r#"{{"ipv4":["{pool}"]}}"#);
        env.create_pod(
            &format!("pod{i}"),
            node,
            json!({"annotations": {"ipam.spidernet.io/ippool": annotation}}),
        )
        .await?;
    }
    let daemon = env.start_daemon(node)?;
    for pool in ["api-share-a", "api-share-b"] {
        wait_until(&format!("a reservation of {node} in {pool}"), || async {
            Ok(reserved_for(&env.client, pool, node).await? > 0)
        })
        .await
        .with_context(|| daemon.log_tail())?;
    }
    // Each pool reserves for its own six pods, not for all twelve pending on the node.
    for pool in ["api-share-a", "api-share-b"] {
        let reserved = reserved_for(&env.client, pool, node).await?;
        ensure!(
            reserved == 6,
            "{pool} holds {reserved} reservations of {node}, expected one per pod guessed for it (6)"
        );
    }
    Ok(())
}
