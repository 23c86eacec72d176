//! SpiderNetworks end to end, as a user meets them: the operator's SpiderNetwork and
//! SpiderMultusConfig controllers and its webhooks (the pod webhook among them) run in this process
//! against the real API server; kube-controller-manager creates the pods of Deployments and
//! StatefulSets, so every pod passes the pod webhook, which applies the topology's app binding; two
//! simulated nodes, one per rack, run the generated NetworkAttachmentDefinitions: Debian's macvlan
//! with IPAM delegated to our `spiderpool` plugin and a real `spiderpool-agent` per node, and our
//! `coordinator` where a network chains it.
//!
//! - One NIC: a Deployment's pods get `eth0` on the bound network, each an address of its own rack's
//!   subnet (the NAD lists every rack's pool; the agent keeps the one whose node affinity matches its
//!   node).
//! - Two NICs with `defaultRouteInterface: net1`: `eth0` and `net1` get addresses from their networks'
//!   pools, and the pod's main routing table has one default route, through `net1`. Our IPAM plugin,
//!   like upstream's, gives every interface a default route through its pool's gateway; only the
//!   `coordinator` (told the NIC by the agent, from the pod's `ipam.spidernet.io/default-route-nic`
//!   annotation) moves the other interfaces' default routes into tables of their own. This
//!   topology's networks therefore chain it.
//! - Fixed addresses: a StatefulSet bound with `fixedIPs: {count: 3}` takes its addresses from its
//!   rack's fixed pool and none from the shared one, a member deleted and created again gets its
//!   address back, and scaled to four, its fourth member is refused by the pod webhook, which the
//!   StatefulSet's events say.
//!
//! Each case ends with its pools' `allocatedIPCount` back at 0.
//!
//! The cases share one [`World`]: the cluster, the operator, the simulated nodes and their agents, on a
//! runtime of its own (each test has its own runtime, and a simulator's tasks live on the runtime that
//! started it). Each case has its own namespace, topology and subnets.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use spiderpool_operator::controller::{multusconfig, network};
use spiderpool_operator::metrics::Metrics;
use spiderpool_schema::labels::ANNOTATION_APP_BINDING;
use spiderpool_schema::{SpiderIPPool, SpiderNetwork};
use spiderpool_tests::admission::{Webhooks, wait_until_pod_webhook_binds};
use spiderpool_tests::coordinator::synced_coordinator;
use spiderpool_tests::daemon::Daemon;
use spiderpool_tests::logs::LogsAfter as _;
use spiderpool_tests::{
    DefaultNetwork, NodeSimulator, SimOptions, TestCluster, TestNamespace, init_tracing, ipam, tools,
    wait_for, watchdog,
};

const TIMEOUT: Duration = Duration::from_secs(90);
const RACK_LABEL: &str = "spiderpool.test/rack";
const DEFAULT_NETWORK: &str = "v1.multus-cni.io/default-network";
const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
const IPPOOLS: &str = "ipam.spidernet.io/ippools";
const DEFAULT_ROUTE_NIC: &str = "ipam.spidernet.io/default-route-nic";

/// What the cases share. Node `i` is in rack `i`: it carries `RACK_LABEL: racks[i]`.
struct World {
    cluster: &'static TestCluster,
    sim: NodeSimulator,
    racks: [String; 2],
    daemons: Vec<Daemon>,
    _webhooks: Webhooks,
    _dir: tempfile::TempDir,
    /// The world is never dropped: the watchdog removes the agents' directory after the process.
    _dir_cleanup: watchdog::Registration,
}

/// The shared world, started by the first case on a thread and runtime of its own that live as long
/// as the test process (the watchdog removes the nodes' namespaces, links and agents after it).
async fn world() -> Result<&'static World> {
    static WORLD: tokio::sync::OnceCell<World> = tokio::sync::OnceCell::const_new();
    WORLD
        .get_or_try_init(|| async {
            let (started, world) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("topology-world".into())
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build();
                    match runtime {
                        Ok(runtime) => runtime.block_on(async move {
                            let world = World::start().await;
                            let up = world.is_ok();
                            if started.send(world).is_ok() && up {
                                std::future::pending::<()>().await;
                            }
                        }),
                        Err(error) => drop(started.send(Err(error.into()))),
                    }
                })?;
            world.await.context("the world's thread ended")?
        })
        .await
}

impl World {
    async fn start() -> Result<World> {
        let cluster = TestCluster::shared().await?;
        let client = cluster.client()?;
        ipam::install_spiderpool_crds(&client).await?;
        // The coordinator's cluster defaults, as the operator would leave them.
        synced_coordinator(&client).await?;
        tools::debian_cni_plugin("macvlan")?;
        let plugins = [
            ipam::plugin_binary(false)?,
            tools::workspace_binary("spiderpool-coordinator", "coordinator", false)?,
        ];
        let webhooks = Webhooks::start(&client, "topology-e2e").await?;
        let metrics = Arc::new(Metrics::default());
        tokio::spawn(network::run_with(
            client.clone(),
            metrics.clone(),
            network::Options::default(),
        ));
        tokio::spawn(multusconfig::run_with(
            client.clone(),
            metrics,
            multusconfig::Options {
                instance: Some("test".into()),
                ..multusconfig::Options::default()
            },
        ));
        let dir = tempfile::tempdir()?;
        let dir_cleanup = watchdog::register_dir(dir.path());
        // A pod the pod webhook left alone has no network: its ADD fails on this missing NAD.
        let mut options = SimOptions::new(DefaultNetwork::Nad {
            namespace: "unbound".to_owned(),
            name: "none".to_owned(),
        });
        for plugin in &plugins {
            options
                .cni_path
                .push(plugin.parent().context("plugin dir")?.to_path_buf());
        }
        options.node_env.push(Daemon::socket_env(dir.path()));
        let sim = NodeSimulator::start(client.clone(), options).await?;
        let racks = [format!("ra-{}", sim.id()), format!("rb-{}", sim.id())];
        let nodes: Api<Node> = Api::all(client.clone());
        for (node, rack) in sim.node_names().iter().zip(&racks) {
            let patch = json!({"metadata": {"labels": {RACK_LABEL: rack}}});
            nodes
                .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        let daemons = sim
            .node_names()
            .iter()
            .map(|node| Daemon::start(cluster, node, dir.path(), false, &[]))
            .collect::<Result<Vec<_>>>()?;
        Ok(World {
            cluster,
            sim,
            racks,
            daemons,
            _webhooks: webhooks,
            _dir: dir,
            _dir_cleanup: dir_cleanup,
        })
    }

    /// The rack (0 or 1) of a simulated node.
    fn rack_of(&self, node: &str) -> Result<usize> {
        self.sim
            .node_names()
            .iter()
            .position(|n| n == node)
            .with_context(|| format!("{node} is not a simulated node"))
    }

    /// A pod template's spec for the simulated nodes (`extra` merged in at the top level).
    fn pod_spec(&self, extra: Value) -> Result<Value> {
        let mut spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(json!({
            "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
            "terminationGracePeriodSeconds": 0,
        }))?;
        self.sim.place(&mut spec);
        let mut spec = serde_json::to_value(spec)?;
        if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
            spec.extend(extra);
        }
        Ok(spec)
    }

    fn daemon_logs(&self) -> String {
        self.daemons
            .iter()
            .map(Daemon::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One case: its namespace and topology, with a client of the test's own runtime.
struct Case {
    world: &'static World,
    client: Client,
    ns: TestNamespace,
    topology: String,
}

impl Case {
    async fn start(prefix: &str) -> Result<Case> {
        init_tracing();
        let world = world().await?;
        let client = world.cluster.client()?;
        let ns = world.cluster.namespace(prefix).await?;
        let suffix = ns.name().rsplit('-').next().unwrap_or("x").to_owned();
        Ok(Case {
            world,
            client,
            topology: format!("{prefix}-{suffix}"),
            ns,
        })
    }

    /// A rack of the topology: `name`, the world's rack `index`, uplink eth0, `ranges`.
    fn rack(&self, name: &str, index: usize, ranges: Value) -> Value {
        json!({"name": name, "nodeSelector": {"matchLabels": {RACK_LABEL: self.world.racks[index]}},
               "uplinks": ["eth0"], "ranges": ranges})
    }

    /// Creates the topology and waits until the NADs of `networks` exist and the pod webhook applies
    /// the binding to `probe` (a dry-run create: the API server's webhook configuration lags the
    /// namespaces the bindings name). Returns each NAD's CNI configuration.
    async fn apply(&self, spec: Value, networks: &[&str], probe: Value) -> Result<Vec<Value>> {
        let topology: SpiderNetwork = serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderNetwork",
            "metadata": {"name": self.topology}, "spec": spec,
        }))?;
        Api::<SpiderNetwork>::all(self.client.clone())
            .create(&PostParams::default(), &topology)
            .await?;
        let gvk = GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "network-attachment-definitions");
        let nads: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), self.ns.name(), &resource);
        let mut configs = Vec::new();
        for network in networks {
            let nad = wait_for(&format!("the NAD of network {network}"), TIMEOUT, || async {
                Ok(nads.get_opt(network).await?)
            })
            .await?;
            let config = nad.data["spec"]["config"].as_str().unwrap_or_default();
            configs.push(serde_json::from_str(config).context("the NAD's config")?);
        }
        let probe: Pod = serde_json::from_value(probe)?;
        let pods: Api<Pod> = self.ns.api();
        wait_until_pod_webhook_binds(&pods, &probe, ANNOTATION_APP_BINDING, TIMEOUT).await?;
        Ok(configs)
    }

    /// The name of the topology's pool of `parts` (`<topology>-<parts>-v4`).
    fn pool(&self, parts: &str) -> String {
        format!("{}-{parts}-v4", self.topology)
    }

    /// The IPv4 address of `dev` in the pod, read inside its network namespace.
    fn address(&self, pod: &str, dev: &str) -> Result<Ipv4Addr> {
        let out = self.world.sim.exec_in_pod(
            self.ns.name(),
            pod,
            &["ip", "-4", "-o", "addr", "show", "dev", dev],
        )?;
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|cidr| cidr.split('/').next())
            .and_then(|ip| ip.parse().ok())
            .with_context(|| format!("{pod}: no IPv4 address on {dev}: {out}"))
    }

    /// Fails unless `pool` records `ip` for the pod with `uid`.
    async fn ensure_holds(&self, pool: &str, ip: Ipv4Addr, uid: &str) -> Result<()> {
        let records = ipam::pool_records(&self.client, pool).await?;
        ensure!(
            records.get(&ip.to_string()).map(String::as_str) == Some(uid),
            "pool {pool} should record {ip} for pod {uid}: {records:?}"
        );
        Ok(())
    }

    /// The pods of label `app=<app>`, once `count` of them are set up by the simulator.
    async fn running(&self, app: &str, count: usize) -> Result<Vec<Pod>> {
        let pods: Api<Pod> = self.ns.api();
        let selector = format!("app={app}");
        let list = wait_for(&format!("{count} pods of {app}"), TIMEOUT, || async {
            let list = pods.list(&ListParams::default().labels(&selector)).await?.items;
            let placed = list.iter().filter(|p| node_of(p).is_some()).count();
            Ok((placed == count).then_some(list))
        })
        .await?;
        for pod in &list {
            self.world
                .sim
                .wait_pod(self.ns.name(), &pod.name_any(), TIMEOUT)
                .await
                .logs_after(|| self.world.daemon_logs())?;
        }
        Ok(list)
    }

    /// Waits until the namespace has no pods and the simulator has torn every one down.
    async fn wait_pods_gone(&self) -> Result<()> {
        let pods: Api<Pod> = self.ns.api();
        wait_for("the pods to be gone", TIMEOUT, || async {
            let left = pods.list(&ListParams::default()).await?.items.is_empty();
            let torn_down = self
                .world
                .sim
                .pods()
                .iter()
                .all(|p| p.namespace != self.ns.name());
            Ok((left && torn_down).then_some(()))
        })
        .await
    }

    /// Waits until each pool records nothing and says `allocatedIPCount: 0`.
    async fn wait_released(&self, pools: &[String]) -> Result<()> {
        let api: Api<SpiderIPPool> = Api::all(self.client.clone());
        for pool in pools {
            wait_for(&format!("pool {pool} to be empty"), TIMEOUT, || async {
                let count = api
                    .get(pool)
                    .await?
                    .status
                    .and_then(|s| s.allocated_ip_count)
                    .unwrap_or(0);
                let records = ipam::pool_records(&self.client, pool).await?;
                Ok((count == 0 && records.is_empty()).then_some(()))
            })
            .await
            .logs_after(|| self.world.daemon_logs())?;
        }
        Ok(())
    }

    /// Deletes the topology and the namespace; fails on simulator errors about this namespace's pods
    /// (other than DELs of what was gone already).
    async fn finish(self) -> Result<()> {
        Api::<SpiderNetwork>::all(self.client.clone())
            .delete(&self.topology, &DeleteParams::default())
            .await?;
        let errors: Vec<String> = self
            .world
            .sim
            .errors()
            .into_iter()
            .filter(|e| e.contains(self.ns.name()) && !e.contains("not found"))
            .collect();
        self.ns.delete().await?;
        ensure!(errors.is_empty(), "node simulator errors: {errors:#?}");
        Ok(())
    }
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// Whether `ip` is in `first..=last`.
fn in_range(ip: Ipv4Addr, first: &str, last: &str) -> bool {
    let (first, last): (Ipv4Addr, Ipv4Addr) = match (first.parse(), last.parse()) {
        (Ok(first), Ok(last)) => (first, last),
        _ => return false,
    };
    (first..=last).contains(&ip)
}

/// A Deployment of `replicas` pods labelled `app=<name>`; `spread` puts each on another node.
fn deployment(world: &World, name: &str, replicas: i32, spread: bool) -> Result<Deployment> {
    let affinity = spread.then(|| {
        json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": name}}, "topologyKey": "kubernetes.io/hostname"}]}})
    });
    let extra = match affinity {
        Some(affinity) => json!({"affinity": affinity}),
        None => json!({}),
    };
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": world.pod_spec(extra)?}}
    }))?)
}

/// A dry-run pod as a Deployment `name`'s ReplicaSet creates it, for [`Case::apply`].
fn deployment_probe(name: &str) -> Value {
    json!({
        "metadata": {"name": format!("{name}-probe"), "labels": {"app": name, "pod-template-hash": "probe"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-probe"),
                                          "uid": "00000000-0000-0000-0000-000000000001", "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_bound_to_a_network_gets_addresses_of_its_racks_subnets() -> Result<()> {
    let case = Case::start("topo-single").await?;
    let ns = case.ns.name().to_owned();
    let spec = json!({
        "subnets": [
            {"name": "rack-a", "role": "fabric", "ipv4": {"cidr": "10.77.1.0/24", "gateway": "10.77.1.1"}},
            {"name": "rack-b", "role": "fabric", "ipv4": {"cidr": "10.77.2.0/24", "gateway": "10.77.2.1"}}
        ],
        "racks": [
            case.rack("ra", 0, json!([{"subnet": "rack-a", "ipv4": ["10.77.1.10-10.77.1.50"]}])),
            case.rack("rb", 1, json!([{"subnet": "rack-b", "ipv4": ["10.77.2.10-10.77.2.50"]}]))
        ],
        "networks": [{"name": "fabric", "type": "macvlan", "subnetRole": "fabric", "master": "eth0",
                      "enableCoordinator": false, "namespaces": [ns]}],
        "apps": [{"name": "web", "namespace": ns, "workload": {"kind": "Deployment", "name": "web"},
                  "interfaces": [{"name": "eth0", "network": "fabric"}]}]
    });
    let configs = case.apply(spec, &["fabric"], deployment_probe("web")).await?;
    let pools = [case.pool("rack-a-ra"), case.pool("rack-b-rb")];
    let config = configs[0].to_string();
    ensure!(
        pools.iter().all(|pool| config.contains(pool.as_str())),
        "the NAD lists both racks' pools: {config}"
    );

    let deployments: Api<Deployment> = case.ns.api();
    deployments
        .create(&PostParams::default(), &deployment(case.world, "web", 2, true)?)
        .await?;
    let pods = case.running("web", 2).await?;
    let ranges = [("10.77.1.10", "10.77.1.50"), ("10.77.2.10", "10.77.2.50")];
    let mut racks = Vec::new();
    for pod in &pods {
        let name = pod.name_any();
        let annotations = pod.annotations();
        ensure!(
            annotations.get(DEFAULT_NETWORK) == Some(&format!("{ns}/fabric"))
                && annotations.get(ANNOTATION_APP_BINDING) == Some(&format!("{}/web", case.topology)),
            "{name}: the binding's annotations, from the pod webhook: {annotations:?}"
        );
        let rack = case.world.rack_of(node_of(pod).unwrap_or_default())?;
        let address = case.address(&name, "eth0")?;
        let (first, last) = ranges[rack];
        ensure!(
            in_range(address, first, last),
            "{name} on rack {rack}'s node: {address}, not in {first}-{last}"
        );
        case.ensure_holds(&pools[rack], address, &uid_of(pod)).await?;
        racks.push(rack);
    }
    racks.sort_unstable();
    ensure!(racks == [0, 1], "one pod per rack: {racks:?}");

    deployments.delete("web", &DeleteParams::default()).await?;
    case.wait_pods_gone().await?;
    case.wait_released(&pools).await?;
    case.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nics_get_addresses_of_their_networks_and_the_default_route_on_the_named_one() -> Result<()> {
    let case = Case::start("topo-multi").await?;
    let ns = case.ns.name().to_owned();
    // eth0 on the rack's fabric subnet, net1 on a storage subnet both racks serve; the default route
    // is asked for on net1. Both networks chain the coordinator (the default for macvlan).
    let spec = json!({
        "subnets": [
            {"name": "rack-a", "role": "fabric", "ipv4": {"cidr": "10.78.1.0/24", "gateway": "10.78.1.1"}},
            {"name": "rack-b", "role": "fabric", "ipv4": {"cidr": "10.78.2.0/24", "gateway": "10.78.2.1"}},
            {"name": "storage", "ipv4": {"cidr": "10.79.0.0/24", "gateway": "10.79.0.1"}}
        ],
        "racks": [
            case.rack("ra", 0, json!([{"subnet": "rack-a", "ipv4": ["10.78.1.10-10.78.1.50"]},
                                      {"subnet": "storage", "ipv4": ["10.79.0.10-10.79.0.29"]}])),
            case.rack("rb", 1, json!([{"subnet": "rack-b", "ipv4": ["10.78.2.10-10.78.2.50"]},
                                      {"subnet": "storage", "ipv4": ["10.79.0.30-10.79.0.49"]}]))
        ],
        "networks": [
            {"name": "fabric", "type": "macvlan", "subnetRole": "fabric", "master": "eth0", "namespaces": [ns]},
            {"name": "storage", "type": "macvlan", "subnet": "storage", "master": "eth0", "namespaces": [ns]}
        ],
        "apps": [{"name": "multi", "namespace": ns, "workload": {"kind": "Deployment", "name": "multi"},
                  "interfaces": [{"name": "eth0", "network": "fabric"}, {"network": "storage"}],
                  "defaultRouteInterface": "net1"}]
    });
    let configs = case
        .apply(spec, &["fabric", "storage"], deployment_probe("multi"))
        .await?;
    for config in &configs {
        let chain: Vec<&str> = config["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["type"].as_str())
            .collect();
        ensure!(
            chain == ["macvlan", "coordinator"],
            "the NADs chain the coordinator: {config}"
        );
    }

    let deployments: Api<Deployment> = case.ns.api();
    deployments
        .create(
            &PostParams::default(),
            &deployment(case.world, "multi", 1, false)?,
        )
        .await?;
    let pods = case.running("multi", 1).await?;
    let pod = &pods[0];
    let name = pod.name_any();
    let annotations = pod.annotations();
    ensure!(
        annotations.get(DEFAULT_NETWORK) == Some(&format!("{ns}/fabric"))
            && annotations.get(NETWORKS)
                == Some(&json!([{"name": "storage", "namespace": ns, "interface": "net1"}]).to_string())
            && annotations.get(DEFAULT_ROUTE_NIC).map(String::as_str) == Some("net1"),
        "{name}: the binding's annotations, from the pod webhook: {annotations:?}"
    );
    let rack = case.world.rack_of(node_of(pod).unwrap_or_default())?;
    let (fabric, storage) = [
        (
            (case.pool("rack-a-ra"), "10.78.1.10", "10.78.1.50"),
            (case.pool("storage-ra"), "10.79.0.10", "10.79.0.29"),
        ),
        (
            (case.pool("rack-b-rb"), "10.78.2.10", "10.78.2.50"),
            (case.pool("storage-rb"), "10.79.0.30", "10.79.0.49"),
        ),
    ][rack]
        .clone();
    let eth0 = case.address(&name, "eth0")?;
    let net1 = case.address(&name, "net1")?;
    ensure!(
        in_range(eth0, fabric.1, fabric.2) && in_range(net1, storage.1, storage.2),
        "{name} on rack {rack}'s node: eth0 {eth0}, net1 {net1}"
    );
    case.ensure_holds(&fabric.0, eth0, &uid_of(pod)).await?;
    case.ensure_holds(&storage.0, net1, &uid_of(pod)).await?;

    // One default route in the main table, through net1's gateway; eth0's went to a table of its
    // own, used for traffic from eth0's address.
    let in_pod = |command: &str| {
        case.world
            .sim
            .exec_in_pod(case.ns.name(), &name, &["sh", "-c", command])
    };
    let main = in_pod("ip -4 route show table main")?;
    let defaults: Vec<&str> = main.lines().filter(|l| l.starts_with("default")).collect();
    ensure!(
        defaults.len() == 1 && defaults[0].starts_with("default via 10.79.0.1 dev net1"),
        "one default route, on net1: {main}"
    );
    let rack_gateway = ["10.78.1.1", "10.78.2.1"][rack];
    let all = in_pod("ip -4 route show table all")?;
    let eth0_default = all
        .lines()
        .find(|l| l.starts_with(&format!("default via {rack_gateway} dev eth0")))
        .with_context(|| format!("eth0's default route: {all}"))?;
    let table = eth0_default
        .split_whitespace()
        .skip_while(|w| *w != "table")
        .nth(1)
        .with_context(|| format!("eth0's default route is in a table of its own: {eth0_default}"))?;
    let rules = in_pod("ip -4 rule")?;
    ensure!(
        table != "main" && rules.contains(&format!("from {eth0} lookup {table}")),
        "eth0's table {table} serves eth0's address: {rules}"
    );

    deployments.delete("multi", &DeleteParams::default()).await?;
    case.wait_pods_gone().await?;
    case.wait_released(&[
        case.pool("rack-a-ra"),
        case.pool("rack-b-rb"),
        case.pool("storage-ra"),
        case.pool("storage-rb"),
    ])
    .await?;
    case.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_keeps_its_fixed_addresses_and_no_member_goes_beyond_them() -> Result<()> {
    let case = Case::start("topo-fixed").await?;
    let ns = case.ns.name().to_owned();
    let spec = json!({
        "subnets": [
            {"name": "rack-a", "role": "fabric", "ipv4": {"cidr": "10.80.1.0/24", "gateway": "10.80.1.1"}},
            {"name": "rack-b", "role": "fabric", "ipv4": {"cidr": "10.80.2.0/24", "gateway": "10.80.2.1"}}
        ],
        "racks": [
            case.rack("ra", 0, json!([{"subnet": "rack-a", "ipv4": ["10.80.1.10-10.80.1.50"]}])),
            case.rack("rb", 1, json!([{"subnet": "rack-b", "ipv4": ["10.80.2.10-10.80.2.50"]}]))
        ],
        "networks": [{"name": "fabric", "type": "macvlan", "subnetRole": "fabric", "master": "eth0",
                      "enableCoordinator": false, "namespaces": [ns]}],
        "apps": [{"name": "db", "namespace": ns, "workload": {"kind": "StatefulSet", "name": "db"},
                  "interfaces": [{"name": "eth0", "network": "fabric", "fixedIPs": {"count": 3}}]}]
    });
    let probe = json!({
        "metadata": {"name": "db-0", "labels": {"app": "db"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                                          "uid": "00000000-0000-0000-0000-000000000002", "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    });
    case.apply(spec, &["fabric"], probe).await?;
    let fixed = case.pool("db-eth0-ra");
    let shared = case.pool("rack-a-ra");
    let pools: Api<SpiderIPPool> = Api::all(case.client.clone());
    let fixed_ips = wait_for("the fixed pool", TIMEOUT, || async {
        Ok(pools.get_opt(&fixed).await?.map(|p| p.spec.ips))
    })
    .await?;
    let is_fixed = |ip: Ipv4Addr| fixed_ips.iter().any(|range| range_holds(range, ip));

    // Two members on rack a's node, of three fixed addresses there.
    let template_spec = case.world.pod_spec(json!({}))?;
    let mut sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"replicas": 2, "serviceName": "db", "podManagementPolicy": "Parallel",
                 "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}}, "spec": template_spec}}
    }))?;
    if let Some(spec) = sts.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.node_selector
            .get_or_insert_with(Default::default)
            .insert(RACK_LABEL.to_owned(), case.world.racks[0].clone());
    }
    let sets: Api<StatefulSet> = case.ns.api();
    sets.create(&PostParams::default(), &sts).await?;
    let mut addresses = std::collections::BTreeMap::new();
    for pod in case.running("db", 2).await? {
        let name = pod.name_any();
        ensure!(
            pod.annotations()
                .get(IPPOOLS)
                .is_some_and(|pools| pools.contains(&fixed)),
            "{name}: pinned to the fixed pools by the pod webhook: {:?}",
            pod.annotations()
        );
        let address = case.address(&name, "eth0")?;
        ensure!(
            is_fixed(address),
            "{name}: {address} is not one of the fixed addresses {fixed_ips:?}"
        );
        case.ensure_holds(&fixed, address, &uid_of(&pod)).await?;
        addresses.insert(name, (address, uid_of(&pod)));
    }
    ensure!(
        addresses.keys().eq(["db-0", "db-1"].iter()),
        "members: {addresses:?}"
    );

    // A member deleted comes back (a new pod, through the webhook again) with its address, not the
    // fixed address nobody holds.
    let pods: Api<Pod> = case.ns.api();
    pods.delete("db-0", &DeleteParams::default().grace_period(0))
        .await?;
    let (before, old_uid) = addresses["db-0"].clone();
    let recreated = wait_for("db-0 set up again", TIMEOUT, || async {
        Ok(case
            .world
            .sim
            .pod(case.ns.name(), "db-0")
            .filter(|p| p.uid != old_uid))
    })
    .await?;
    let after = case.address("db-0", "eth0")?;
    ensure!(after == before, "db-0 came back with {after}, had {before}");
    case.ensure_holds(&fixed, after, &recreated.uid).await?;

    // Scaled to four: db-2 takes the third fixed address, db-3 is refused and the StatefulSet's
    // events say why.
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 4}})),
    )
    .await?;
    let events: Api<Event> = case.ns.api();
    let refusal = wait_for(
        "the StatefulSet's FailedCreate event for db-3",
        TIMEOUT,
        || async {
            let list = events
                .list(&ListParams::default().fields("involvedObject.name=db"))
                .await?
                .items;
            Ok(list
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
                .find_map(|e| e.message.filter(|m| m.contains("db-3"))))
        },
    )
    .await?;
    ensure!(
        refusal.contains("ordinal 3 of StatefulSet db")
            && refusal.contains("3 fixed address(es)")
            && refusal.contains("spec.apps[0].interfaces[0].fixedIPs"),
        "{refusal}"
    );
    let third = case.world.sim.wait_pod(case.ns.name(), "db-2", TIMEOUT).await?;
    let address = case.address("db-2", "eth0")?;
    ensure!(
        is_fixed(address) && addresses.values().all(|(a, _)| *a != address),
        "db-2: {address}, the members had {addresses:?}, the fixed addresses are {fixed_ips:?}"
    );
    case.ensure_holds(&fixed, address, &third.uid).await?;
    ensure!(pods.get_opt("db-3").await?.is_none(), "db-3 exists");
    ensure!(
        ipam::pool_records(&case.client, &shared).await?.is_empty(),
        "nothing taken from the shared rack pool"
    );

    // Deleting the StatefulSet gives the addresses back as its pods go.
    sets.delete("db", &DeleteParams::default()).await?;
    case.wait_pods_gone().await?;
    case.wait_released(&[fixed, shared]).await?;
    case.finish().await
}

/// Whether a pool's `ips` entry (an IP or an `a-b` range) holds `ip`.
fn range_holds(range: &str, ip: Ipv4Addr) -> bool {
    match range.split_once('-') {
        Some((first, last)) => in_range(ip, first, last),
        None => range.parse() == Ok(ip),
    }
}
