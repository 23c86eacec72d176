//! The chart installed on a real control plane and run from the real images, under its own RBAC.
//!
//! Each test starts a private control plane (etcd, kube-apiserver, controller-manager, scheduler),
//! two simulated nodes ([`NodeSimulator`]) and an [`ImageKubelet`] that runs the chart's hostNetwork
//! pods from the amd64 images (`tests/tools/build-images.sh`, cached) in each node's network namespace.
//! It installs the chart with the real `helm install --wait` ([`chart::Release`]): the CRDs, every
//! object, the wait for the Deployment and DaemonSet, then the post-install hook (spiderpool-init).
//! The DaemonSet and Deployment controllers make the pods; the components run with exactly the
//! command, arguments, environment, ConfigMap and ServiceAccount token (bound to their pod) that the
//! chart gives them, so every API call they make is checked against the chart's roles. The API server
//! reaches the webhooks through the chart's Service (its Endpoints, with aggregator routing) on the
//! operator's node.
//!
//! Then real flows run through them (webhooks, IPAM ADD/DEL of pods through the installed plugin,
//! pool counters, reclaim, a SpiderNetwork, metrics) and nothing a component logged may be a refusal
//! by the API server. Finally `helm uninstall --wait` removes the release and nothing may be left
//! stuck on a finalizer.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use serde_json::{Value, json};
use spiderpool_schema::{SpiderCoordinator, SpiderIPPool, SpiderInterfaceTask, SpiderNetwork};
use spiderpool_tests::chart;
use spiderpool_tests::kubelet::ImageKubelet;
use spiderpool_tests::logs::LogsAfter as _;
use spiderpool_tests::node_sim::SimNode;
use spiderpool_tests::{
    ClusterOptions, DefaultNetwork, NodeSimulator, SimOptions, TestCluster, images, wait_for,
};

const RELEASE: &str = "spiderpool";
const NAMESPACE: &str = "spiderpool-system";

/// A kubeadm cluster's ClusterConfiguration, which the default SpiderCoordinator reads its pod CIDR
/// from (`podCIDRType: auto` or `cluster`).
const KUBEADM_CONFIG: &str = "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nnetworking:\n  podSubnet: 10.244.0.0/16\n  serviceSubnet: 10.96.0.0/16\n";

/// The first CNI configuration of every node: the cluster's default network, which spiderpool-init
/// wraps in a SpiderMultusConfig.
const DEFAULT_CNI: &str =
    r#"{"cniVersion":"0.3.1","name":"cbr0","plugins":[{"type":"bridge","bridge":"cbr0"}]}"#;

struct Install {
    cluster: TestCluster,
    client: Client,
    sim: NodeSimulator,
    kubelet: ImageKubelet,
    release: chart::Release,
    _dir: tempfile::TempDir,
}

impl Install {
    fn nodes(&self) -> &[SimNode] {
        self.sim.nodes()
    }

    /// Logs of every container, for failure messages.
    fn all_logs(&self) -> String {
        self.kubelet
            .logs()
            .into_iter()
            .map(|(name, text)| {
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!(
                    "--- {name}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A unique /24 of the benchmarking range for this run's simulated underlay: the host gets `.1` on
/// it, so the API server reaches the nodes (and the operator's webhook) without touching any other
/// simulator's 172.31.0.0/16.
fn underlay() -> ipnet::Ipv4Net {
    let octet = u8::try_from(std::process::id() % 250).unwrap_or(7) + 2;
    ipnet::Ipv4Net::new(Ipv4Addr::new(198, 18, octet, 0), 24).unwrap()
}

/// Starts the control plane, nodes and kubelet, then `helm install --wait` with `values`.
async fn install(values: &str, extra_set: &[&str]) -> Result<Install> {
    spiderpool_tests::init_tracing();
    let images = tokio::task::spawn_blocking(|| images::unpacked("amd64")).await??;
    let mut options = ClusterOptions::default();
    // Webhook calls to a Service go to its endpoints (the operator's node), as kube-proxy would route.
    options
        .apiserver_args
        .push("--enable-aggregator-routing=true".into());
    let cluster = TestCluster::start(options).await?;
    let client = cluster.client()?;
    for file in std::fs::read_dir(chart::chart_dir().join("crds"))? {
        let text = std::fs::read_to_string(file?.path())?;
        spiderpool_tests::cluster::install_crd_yaml(&client, &text).await?;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in [NAMESPACE, "lab"] {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}}))?,
            )
            .await?;
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "kubeadm-config"}, "data": {"ClusterConfiguration": KUBEADM_CONFIG}}))?,
        )
        .await?;

    let dir = tempfile::Builder::new()
        .prefix("spk")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())?;
    let cidr = underlay();
    let mut sim_options = SimOptions::new(DefaultNetwork::Config(json!({
        "cniVersion": "0.4.0", "name": "underlay",
        "plugins": [{"type": "macvlan", "master": "eth0", "mode": "bridge", "ipam": {"type": "spiderpool"}}],
    })));
    sim_options.node_cidr = cidr;
    sim_options.host_address = cidr.hosts().next();
    sim_options.host_network_pods = false;
    // The plugins the agent's init container installs on the nodes (a link to node 0's directory,
    // made once the nodes have names; every node gets the same), then Debian's.
    let installed_plugins = dir.path().join("cni-bin");
    sim_options.cni_path.insert(0, installed_plugins.clone());
    let socket_path = values_socket_path(values);
    sim_options.node_env.push((
        "SPIDERPOOL_IPAM_UNIX_SOCKET_PATH".into(),
        dir.path()
            .join("nodes/{node}")
            .join(socket_path.trim_start_matches('/'))
            .display()
            .to_string(),
    ));
    let sim = NodeSimulator::start(client.clone(), sim_options).await?;
    for node in sim.nodes() {
        let label = json!({"metadata": {"labels": {"lab.example.com/bench": "true"}}});
        Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
            .patch(&node.name, &PatchParams::default(), &Patch::Merge(&label))
            .await?;
    }
    let kubelet = ImageKubelet::start(&cluster, sim.nodes(), images, dir.path()).await?;
    for node in sim.nodes() {
        let conf_dir = kubelet.host_path(&node.name, "/etc/cni/net.d");
        std::fs::create_dir_all(&conf_dir)?;
        std::fs::write(conf_dir.join("10-cbr0.conflist"), DEFAULT_CNI)?;
    }
    std::os::unix::fs::symlink(
        kubelet.host_path(&sim.nodes()[0].name, "/opt/cni/bin"),
        &installed_plugins,
    )?;

    let release = chart::Release::new(cluster.kubeconfig_path(), RELEASE, NAMESPACE);
    let started = Instant::now();
    let installed = release.install(values, extra_set).await;
    let install = Install {
        cluster,
        client,
        sim,
        kubelet,
        release,
        _dir: dir,
    };
    installed.logs_after(|| install.all_logs())?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "helm install --wait: chart installed, ready, spiderpool-init done"
    );
    Ok(install)
}

/// `global.ipamUNIXSocketHostPath` of a values file (upstream's default when it sets none).
fn values_socket_path(values: &str) -> String {
    let parsed: Value = serde_saphyr::from_str(values).unwrap_or(Value::Null);
    parsed["global"]["ipamUNIXSocketHostPath"]
        .as_str()
        .unwrap_or("/var/run/spidernet/spiderpool.sock")
        .to_string()
}

/// `helm uninstall --wait`, then checks nothing is left stuck: no pod of the release, no object of
/// ours terminating, no webhook configuration.
async fn uninstall(install: &Install) -> Result<()> {
    install.release.uninstall().await?;
    let pods: Api<Pod> = Api::namespaced(install.client.clone(), NAMESPACE);
    wait_for("every pod of the release gone", Duration::from_secs(120), || {
        let pods = pods.clone();
        async move {
            let left = pods.list(&ListParams::default()).await?.items;
            Ok(left.is_empty().then_some(()))
        }
    })
    .await?;
    let webhooks: Api<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration> =
        Api::all(install.client.clone());
    ensure!(
        webhooks.get_opt("spiderpool-controller").await?.is_none(),
        "the ValidatingWebhookConfiguration outlived the release"
    );
    // Give the garbage collector a moment, then nothing may be waiting on a finalizer.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stuck = chart::terminating_objects(&install.client).await?;
    ensure!(
        stuck.is_empty(),
        "objects left terminating after uninstall: {stuck:?}"
    );
    Ok(())
}

/// Values a user of upstream's chart could bring: a non-default socket path (the agent only finds it
/// in the ConfigMap), IPv4 only, default pools and subnet, two operator replicas with a PDB, metrics
/// with upstream's debug series, a fast reclaim scan, debug logs, no Multus (its image cannot run
/// here).
const VALUES: &str = r#"
global:
  ipamUNIXSocketHostPath: /run/spidernet-test/ipam.sock
  commonLabels: {team: network}
ipam:
  enableIPv6: false
  gc:
    gcAll:
      intervalInSecond: 5
clusterDefaultPool:
  installIPv4IPPool: true
  ipv4Subnet: 10.250.0.0/24
  ipv4IPRanges: [10.250.0.10-10.250.0.40]
  ipv4Gateway: 10.250.0.1
coordinator:
  podCIDRType: cluster
multus:
  multusCNI:
    install: false
spiderpoolController:
  replicas: 2
  podDisruptionBudget:
    enabled: true
  prometheus:
    enabled: true
    enabledDebugMetric: true
  debug:
    logLevel: debug
spiderpoolAgent:
  prometheus:
    enabled: true
"#;

/// Every log line of our components that shows the API server refusing them (a permission the
/// chart's roles lack).
fn refusals(install: &Install) -> Vec<String> {
    install
        .kubelet
        .logs()
        .into_iter()
        .flat_map(|(name, text)| {
            text.lines()
                .filter(|l| l.contains("forbidden") || l.contains("Forbidden") || l.contains("\"code\":403"))
                .map(|l| format!("{name}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn wait_coordinator_synced(client: &Client) -> Result<SpiderCoordinator> {
    let api: Api<SpiderCoordinator> = Api::all(client.clone());
    wait_for(
        "the default SpiderCoordinator Synced",
        Duration::from_secs(120),
        || {
            let api = api.clone();
            async move {
                let coordinator = api.get_opt("default").await?;
                Ok(coordinator.filter(|c| c.status.as_ref().is_some_and(|s| s.phase == "Synced")))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chart_installs_runs_under_its_rbac_and_uninstalls_clean() -> Result<()> {
    let install = install(VALUES, &[]).await?;
    exercise(&install).await.logs_after(|| {
        format!(
            "kubelet failures: {:?}\n{}",
            install.kubelet.failures(),
            install.all_logs()
        )
    })?;
    let refused = refusals(&install);
    ensure!(
        refused.is_empty(),
        "the API server refused our components: {refused:#?}"
    );
    uninstall(&install).await.logs_after(|| install.all_logs())?;
    install.sim.shutdown().await?;
    drop(install.cluster);
    Ok(())
}

async fn exercise(install: &Install) -> Result<()> {
    let client = &install.client;
    let nodes: Vec<String> = install.nodes().iter().map(|n| n.name.clone()).collect();

    // spiderpool-init made the defaults; the operator found the cluster's CIDRs.
    let coordinator = wait_coordinator_synced(client).await?;
    let status = coordinator.status.clone().unwrap_or_default();
    ensure!(
        status.overlay_pod_cidr == Some(vec!["10.244.0.0/16".to_string()]),
        "{status:?}"
    );
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let default_pool = pools.get("default-v4-ippool").await?;
    ensure!(default_pool.spec.default == Some(true), "{:?}", default_pool.spec);
    ensure!(
        default_pool
            .metadata
            .finalizers
            .clone()
            .unwrap_or_default()
            .contains(&spiderpool_schema::FINALIZER.to_string()),
        "the mutating webhook gave the default pool no finalizer: {:?}",
        default_pool.metadata
    );
    let subnets: Api<spiderpool_schema::SpiderSubnet> = Api::all(client.clone());
    wait_for(
        "the default subnet to control the default pool",
        Duration::from_secs(60),
        || {
            let subnets = subnets.clone();
            async move {
                let subnet = subnets.get("default-v4-subnet").await?;
                Ok(subnet
                    .status
                    .and_then(|s| s.controlled_ip_pools)
                    .filter(|pools| pools.contains("default-v4-ippool")))
            }
        },
    )
    .await?;
    let smcs: Api<spiderpool_schema::SpiderMultusConfig> = Api::namespaced(client.clone(), NAMESPACE);
    ensure!(
        smcs.get_opt("cbr0").await?.is_some(),
        "spiderpool-init made no SpiderMultusConfig for the default network"
    );

    // The validating webhook, reached through the chart's Service, refuses a bad pool with the field.
    let bad: SpiderIPPool = serde_json::from_value(json!({
        "metadata": {"name": "outside"},
        "spec": {"subnet": "10.251.0.0/24", "ips": ["10.252.0.5"]},
    }))?;
    let refused = pools.create(&PostParams::default(), &bad).await;
    match refused {
        Err(kube::Error::Api(status)) => ensure!(status.message.contains("spec.ips"), "{status:?}"),
        other => bail!("a pool with addresses outside its subnet was not refused: {other:?}"),
    }

    // IPAM ADD and DEL through the installed plugin and the agents, on both nodes.
    let apps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let mut spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(json!({
        "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
        "terminationGracePeriodSeconds": 0,
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}],
    }))?;
    install.sim.place(&mut spec);
    let web: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec}},
    }))?;
    apps.create(&PostParams::default(), &web).await?;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let running = wait_for(
        "2 web pods Running with addresses",
        Duration::from_secs(120),
        || {
            let pod_api = pod_api.clone();
            async move {
                let pods = pod_api
                    .list(&ListParams::default().labels("app=web"))
                    .await?
                    .items;
                let ips: Vec<String> = pods
                    .iter()
                    .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                    .filter(|ip| ip.starts_with("10.250.0."))
                    .collect();
                Ok((ips.len() == 2).then_some(pods))
            }
        },
    )
    .await?;
    let on: Vec<String> = running
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    ensure!(
        nodes.iter().all(|n| on.contains(n)),
        "web pods not on both nodes: {on:?}"
    );
    // IPv4 only: the agents read enableIPv6: false from the ConfigMap.
    for pod in &running {
        let ips = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ips.clone())
            .unwrap_or_default();
        ensure!(ips.len() == 1, "{:?} has {ips:?}", pod.metadata.name);
    }
    wait_for(
        "the default pool to count 2 addresses",
        Duration::from_secs(60),
        || {
            let pools = pools.clone();
            async move {
                let pool = pools.get("default-v4-ippool").await?;
                Ok((pool.status.and_then(|s| s.allocated_ip_count) == Some(2)).then_some(()))
            }
        },
    )
    .await?;

    // Metrics on upstream's ports, from inside each node's network: the agents' IPAM counters and
    // the leader's capacity gauges.
    let mut served = String::new();
    for node in &nodes {
        let (code, body) = install.kubelet.http_get(node, 5711, "/metrics")?;
        ensure!(
            code == 200 && body.contains("spiderpool_ipam_allocation_counts_total"),
            "agent metrics on {node}: {code} {body}"
        );
        served.push_str(&body);
    }
    let leader = wait_for("the leader's capacity gauges", Duration::from_secs(60), || {
        let nodes = nodes.clone();
        let kubelet = &install.kubelet;
        async move {
            for node in &nodes {
                let Ok((200, body)) = kubelet.http_get(node, 5721, "/metrics") else {
                    continue;
                };
                if body.contains(r#"spiderpool_ippool_allocated_ip_counts{pool="default-v4-ippool"} 2"#)
                    && body.contains(
                        r#"spiderpool_debug_ippool_total_ip_counts{SpiderIPPool="default-v4-ippool"} 31"#,
                    )
                {
                    return Ok(Some(body));
                }
            }
            Ok(None)
        }
    })
    .await?;
    served.push_str(&leader);
    monitoring_uses_served_metrics(&served)?;

    // Logs are upstream's JSON lines.
    let agent_pod = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default().labels("app.kubernetes.io/component=spiderpool-agent"))
        .await?
        .items
        .into_iter()
        .next()
        .context("no agent pod")?;
    let log = install
        .kubelet
        .log(NAMESPACE, &agent_pod.name_any(), "spiderpool-agent");
    let first = log.lines().next().context("the agent logged nothing")?;
    let line: Value = serde_json::from_str(first).with_context(|| format!("not a JSON log line: {first}"))?;
    ensure!(
        line["level"].is_string() && line["ts"].is_string() && line["msg"].is_string(),
        "{line}"
    );

    // Reclaim: an address recorded for a pod that never existed goes back at the next scan (5 s).
    let dirty = pools.get("default-v4-ippool").await?;
    let mut records: serde_json::Map<String, Value> = dirty
        .status
        .as_ref()
        .and_then(|s| s.allocated_ips.as_deref())
        .map(serde_json::from_str)
        .transpose()?
        .unwrap_or_default();
    records.insert(
        "10.250.0.40".into(),
        json!({"pod": "default/ghost", "podUid": "00000000-0000-0000-0000-000000000001"}),
    );
    pools
        .patch_status(
            "default-v4-ippool",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"allocatedIPs": serde_json::to_string(&records)?}})),
        )
        .await?;
    wait_for("the ghost's address reclaimed", Duration::from_secs(60), || {
        let pools = pools.clone();
        async move {
            let pool = pools.get("default-v4-ippool").await?;
            let records = pool.status.and_then(|s| s.allocated_ips).unwrap_or_default();
            Ok((!records.contains("10.250.0.40")).then_some(()))
        }
    })
    .await?;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(client.clone());
    wait_for(
        "an IPReclaimed Event naming the ghost",
        Duration::from_secs(30),
        || {
            let events = events.clone();
            async move {
                let found = events
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .find(|e| {
                        e.reason.as_deref() == Some("IPReclaimed")
                            && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                                == Some("default-v4-ippool")
                            && e.note
                                .as_deref()
                                .is_some_and(|n| n.contains("10.250.0.40 of default/ghost"))
                    });
                Ok(found.map(|_| ()))
            }
        },
    )
    .await?;

    // A topology: compiled and applied by the operator (pools, reserved IPs, multus configs, NADs).
    let mut lab: SpiderNetwork = serde_saphyr::from_str(&std::fs::read_to_string(
        spiderpool_tests::tools::repo_root().join("examples/topologies/single-rack-lab.yaml"),
    )?)?;
    lab.metadata.resource_version = None;
    Api::<SpiderNetwork>::all(client.clone())
        .create(&PostParams::default(), &lab)
        .await?;
    wait_for("SpiderNetwork lab Ready", Duration::from_secs(120), || {
        let api: Api<SpiderNetwork> = Api::all(client.clone());
        async move {
            let network = api.get("lab").await?;
            let ready = network
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "True");
            Ok(ready.then_some(()))
        }
    })
    .await?;

    // The agent may write its node's interface tasks' status and nothing it has no business with.
    agent_rbac(install, &agent_pod).await?;

    // A pool that fills up is told once as a Warning Event (the operator may publish Events).
    pool_exhausted_event(install).await?;

    // SpiderSubnet's automatic pools: the operator reads applications and writes their pools.
    automatic_pool(install).await?;

    // Scaling down releases the addresses (DEL through the plugin and the agents).
    apps.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 0}})),
    )
    .await?;
    wait_for("the default pool empty again", Duration::from_secs(120), || {
        let pools = pools.clone();
        async move {
            let pool = pools.get("default-v4-ippool").await?;
            Ok((pool.status.and_then(|s| s.allocated_ip_count) == Some(0)).then_some(()))
        }
    })
    .await?;
    apps.delete("web", &DeleteParams::default()).await?;
    // Foreground, and waited for: the topology's pools carry the finalizer only the operator removes,
    // so they must be gone before the uninstall removes the operator (docs/install.md's order). With
    // a background delete the garbage collector reached them after the uninstall on a slow machine.
    let networks = Api::<SpiderNetwork>::all(client.clone());
    networks.delete("lab", &DeleteParams::foreground()).await?;
    wait_for(
        "SpiderNetwork lab and its children gone",
        Duration::from_secs(120),
        || {
            let networks = networks.clone();
            async move { Ok(networks.get_opt("lab").await?.is_none().then_some(())) }
        },
    )
    .await?;
    Ok(())
}

/// A Deployment annotated with a SpiderSubnet gets an automatic pool of replicas + 1 addresses from
/// it, made by the operator under the chart's roles (it reads the application, creates the pool with
/// the application's labels and an owner reference); deleting the Deployment deletes the pool. The
/// Deployment's pods stay Pending (nothing can schedule them): pools follow applications, not pods.
async fn automatic_pool(install: &Install) -> Result<()> {
    let client = &install.client;
    let subnet: spiderpool_schema::SpiderSubnet = serde_json::from_value(json!({
        "metadata": {"name": "auto-subnet"},
        "spec": {"subnet": "10.249.0.0/24", "ips": ["10.249.0.10-10.249.0.20"], "gateway": "10.249.0.1"},
    }))?;
    let subnets: Api<spiderpool_schema::SpiderSubnet> = Api::all(client.clone());
    subnets.create(&PostParams::default(), &subnet).await?;
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "auto-app"}}))?,
        )
        .await?;
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "auto-web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "auto-web"}},
            "template": {
                "metadata": {
                    "labels": {"app": "auto-web"},
                    "annotations": {
                        "ipam.spidernet.io/subnet": r#"{"ipv4":["auto-subnet"]}"#,
                        "ipam.spidernet.io/ippool-ip-number": "+1",
                    },
                },
                "spec": {
                    "nodeSelector": {"spiderpool.test/no-such-node": "true"},
                    "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
                },
            },
        },
    }))?;
    let apps: Api<Deployment> = Api::namespaced(client.clone(), "auto-app");
    apps.create(&PostParams::default(), &deployment).await?;
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let selector = "ipam.spidernet.io/owner-application-name=auto-web";
    let pool = wait_for(
        "the automatic pool of auto-web (3 addresses of auto-subnet)",
        Duration::from_secs(90),
        || {
            let pools = pools.clone();
            async move {
                let found = pools.list(&ListParams::default().labels(selector)).await?.items;
                Ok(found.into_iter().find(|p| {
                    p.spec.subnet == "10.249.0.0/24"
                        && p.spec.ips == vec!["10.249.0.10-10.249.0.12".to_string()]
                }))
            }
        },
    )
    .await?;
    ensure!(
        pool.owner_references()
            .iter()
            .any(|r| r.kind == "SpiderSubnet" && r.name == "auto-subnet"),
        "the automatic pool is not owned by its subnet: {:?}",
        pool.metadata.owner_references
    );
    apps.delete("auto-web", &DeleteParams::default()).await?;
    wait_for(
        "the automatic pool deleted with its Deployment",
        Duration::from_secs(90),
        || {
            let pools = pools.clone();
            async move {
                Ok(pools
                    .list(&ListParams::default().labels(selector))
                    .await?
                    .items
                    .is_empty()
                    .then_some(()))
            }
        },
    )
    .await?;
    subnets.delete("auto-subnet", &DeleteParams::default()).await?;
    Ok(())
}

/// The names of every series a `/metrics` text exposition offers (from its `# TYPE` lines, with the
/// suffixes of counters and histograms).
fn served_series(exposition: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        }
    }
    names
}

/// The chart's alerts (PrometheusRules, rendered on) and Grafana dashboard ask only for series the
/// running components serve, so no alert or panel stays silent for want of a metric.
fn monitoring_uses_served_metrics(exposition: &str) -> Result<()> {
    let served = served_series(exposition);
    let rules = chart::template(
        RELEASE,
        NAMESPACE,
        &[
            "--set",
            "spiderpoolAgent.prometheus.prometheusRule.install=true",
            "--set",
            "spiderpoolController.prometheus.prometheusRule.install=true",
        ],
    )?;
    let dashboard = std::fs::read_to_string(chart::chart_dir().join("files/grafana-ipam.json"))?;
    let mut asked = std::collections::BTreeSet::new();
    for text in [rules.as_str(), dashboard.as_str()] {
        for (start, _) in text.match_indices("spiderpool_") {
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // Object and rule names (`spiderpool_...` never names one) are not series.
            asked.insert(name);
        }
    }
    ensure!(
        !asked.is_empty(),
        "found no metric in the rules and the dashboard"
    );
    let missing: Vec<&String> = asked.iter().filter(|n| !served.contains(*n)).collect();
    ensure!(
        missing.is_empty(),
        "the PrometheusRules or the dashboard ask for series nobody serves: {missing:?}\nserved: {served:?}"
    );
    Ok(())
}

/// A one-address pool taken by one pod: the operator publishes `IPPoolExhausted` on it.
async fn pool_exhausted_event(install: &Install) -> Result<()> {
    let client = &install.client;
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let tiny: SpiderIPPool = serde_json::from_value(json!({
        "metadata": {"name": "tiny"},
        "spec": {"subnet": "10.250.1.0/24", "ips": ["10.250.1.5"]},
    }))?;
    pools.create(&PostParams::default(), &tiny).await?;
    let mut spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(json!({
        "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
        "terminationGracePeriodSeconds": 0,
    }))?;
    install.sim.place(&mut spec);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "tiny-user", "annotations": {"ipam.spidernet.io/ippool": r#"{"ipv4": ["tiny"]}"#}},
        "spec": spec,
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod).await?;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(client.clone());
    let event = wait_for(
        "an IPPoolExhausted Event on pool tiny",
        Duration::from_secs(60),
        || {
            let events = events.clone();
            async move {
                let found = events
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .find(|e| {
                        e.reason.as_deref() == Some("IPPoolExhausted")
                            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("tiny")
                    });
                Ok(found)
            }
        },
    )
    .await?;
    ensure!(
        event.type_.as_deref() == Some("Warning")
            && event.reporting_controller.as_deref() == Some("spiderpool-operator"),
        "{event:?}"
    );
    pods.delete("tiny-user", &DeleteParams::default()).await?;
    pools.delete("tiny", &DeleteParams::default()).await?;
    wait_for("pool tiny gone", Duration::from_secs(60), || {
        let pools = pools.clone();
        async move { Ok(pools.get_opt("tiny").await?.is_none().then_some(())) }
    })
    .await?;
    Ok(())
}

/// With the agent's own credentials (a token bound to its pod, as the kubelet gives it): it may
/// patch the status of its node's interface tasks, and may not create tasks, read Secrets or make
/// Deployments.
async fn agent_rbac(install: &Install, agent_pod: &Pod) -> Result<()> {
    let admin = &install.client;
    let node = agent_pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .context("agent pod unbound")?;
    let tasks: Api<SpiderInterfaceTask> = Api::all(admin.clone());
    let task: SpiderInterfaceTask = serde_json::from_value(json!({
        "metadata": {"name": format!("rbac-{node}")},
        "spec": {"nodeName": node, "vlans": [{"parent": "eth0", "id": 100}]},
    }))?;
    tasks.create(&PostParams::default(), &task).await?;

    let token = install
        .cluster
        .service_account_token(
            NAMESPACE,
            "spiderpool-agent",
            Some((&agent_pod.name_any(), &agent_pod.uid().unwrap_or_default())),
        )
        .await?;
    let mut config = install.cluster.config().clone();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..kube::config::AuthInfo::default()
    };
    let agent = Client::try_from(config)?;
    let as_agent: Api<SpiderInterfaceTask> = Api::all(agent.clone());
    as_agent
        .patch_status(
            &format!("rbac-{node}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 1}})),
        )
        .await
        .context("the agent may write its node's interface task status")?;
    let forbidden = |result: Result<(), kube::Error>, what: &str| -> Result<()> {
        match result {
            Err(kube::Error::Api(status)) if status.code == 403 => Ok(()),
            other => bail!("the agent could {what}: {other:?}"),
        }
    };
    let mut other = task.clone();
    other.metadata.name = Some("rbac-made-by-agent".into());
    forbidden(
        as_agent.create(&PostParams::default(), &other).await.map(|_| ()),
        "create an interface task",
    )?;
    forbidden(
        Api::<Secret>::namespaced(agent.clone(), NAMESPACE)
            .list(&ListParams::default())
            .await
            .map(|_| ()),
        "list Secrets",
    )?;
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "agent-made"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
                 "spec": {"containers": [{"name": "x", "image": "registry.invalid/x:1"}]}}},
    }))?;
    forbidden(
        Api::<Deployment>::namespaced(agent.clone(), "default")
            .create(&PostParams::default(), &deployment)
            .await
            .map(|_| ()),
        "create a Deployment",
    )?;
    forbidden(
        Api::<SpiderIPPool>::all(agent.clone())
            .delete("default-v4-ippool", &DeleteParams::default())
            .await
            .map(|_| ()),
        "delete a pool",
    )?;
    tasks
        .delete(&format!("rbac-{node}"), &DeleteParams::default())
        .await?;
    Ok(())
}

/// What this machine cannot run but a user turns on as upstream's chart lets them: Multus
/// (`multus.multusCNI.install`, upstream's image) and the reference plugins (`plugins.installCNI`).
/// Every object of that render is admitted by the API server (server-side apply, dry run), so the
/// templates are valid Kubernetes objects; the containers themselves are not run here.
async fn upstream_extras_are_admitted(install: &Install) -> Result<()> {
    let rendered = chart::template(
        RELEASE,
        NAMESPACE,
        &[
            "--set",
            "multus.multusCNI.install=true",
            "--set",
            "multus.multusCNI.defaultCniCRName=cbr0",
            "--set",
            "plugins.installCNI=true",
        ],
    )?;
    let docs = chart::documents(&rendered)?;
    let kinds: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or_default(),
                d["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    ensure!(
        kinds.contains(&"DaemonSet/spiderpool-multus".to_string())
            && kinds.contains(&"ConfigMap/multus-cni-config".to_string()),
        "{kinds:?}"
    );
    for doc in &docs {
        chart::apply(&install.client, doc, NAMESPACE, true)
            .await
            .context("the API server refused an object of the chart (dry run)")?;
    }
    Ok(())
}

/// The chart with default values (ports, paths, TLS generated by the operator), except Multus,
/// whose upstream image cannot run here: every component of ours comes up, the init Job creates
/// the default SpiderCoordinator, which reaches Synced, `helm upgrade` to other values rolls the
/// components and they come back, and uninstalling leaves nothing stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chart_with_default_values_comes_up_and_uninstalls_clean() -> Result<()> {
    let install = install("{}\n", &["--set", "multus.multusCNI.install=false"]).await?;
    wait_coordinator_synced(&install.client)
        .await
        .logs_after(|| install.all_logs())?;
    // `helm upgrade --wait` with other values rolls both components and they come back ready.
    install
        .release
        .upgrade(
            "spiderpoolAgent:\n  debug:\n    logLevel: debug\nspiderpoolController:\n  debug:\n    logLevel: debug\n",
            &["--set", "multus.multusCNI.install=false"],
        )
        .await
        .logs_after(|| install.all_logs())?;
    let agents: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(install.client.clone(), NAMESPACE);
    let agent = agents.get("spiderpool-agent").await?;
    let env = agent
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers[0].env.clone());
    ensure!(
        format!("{env:?}").contains("debug"),
        "the upgrade did not reach the agent's template: {env:?}"
    );
    wait_coordinator_synced(&install.client).await?;
    upstream_extras_are_admitted(&install).await?;
    let refused = refusals(&install);
    ensure!(
        refused.is_empty(),
        "the API server refused our components: {refused:#?}"
    );
    uninstall(&install).await.logs_after(|| install.all_logs())?;
    install.sim.shutdown().await?;
    Ok(())
}
