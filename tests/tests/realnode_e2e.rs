//! The real-node tier: real kubelets, containerd and kube-proxy on this machine, pods started by
//! the real runtime (see `spiderpool_tests::realnode`). One cluster for every test of this binary,
//! a namespace per test.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;
use spiderpool_schema::{SpiderEndpoint, SpiderIPPool};
use spiderpool_tests::admission::wait_until_pod_webhook_binds;
use spiderpool_tests::realnode::workload::{self, Placement};
use spiderpool_tests::realnode::{self, RealCluster, RealClusterOptions};
use spiderpool_tests::{init_tracing, ipam, wait_for};

const POD_TIMEOUT: Duration = Duration::from_secs(90);

/// The shared cluster with Spiderpool installed from the chart (once per test binary).
async fn cluster() -> Result<&'static RealCluster> {
    Ok(installed().await?.0)
}

/// The shared cluster and the chart's release on it.
async fn installed() -> Result<(&'static RealCluster, &'static realnode::chart::Installed)> {
    static INSTALLED: tokio::sync::OnceCell<realnode::chart::Installed> = tokio::sync::OnceCell::const_new();
    let cluster = RealCluster::shared_with(|| RealClusterOptions {
        multus_standin: Some(env!("CARGO_BIN_EXE_multus-standin").into()),
        ..RealClusterOptions::standard()
    })
    .await?;
    let installed = INSTALLED
        .get_or_try_init(|| async {
            let installed = realnode::chart::install(cluster).await?;
            eprintln!(
                "TIMING real-node cluster {:?}; chart installed {:?}",
                cluster.startup_times(),
                installed.times
            );
            anyhow::Ok(installed)
        })
        .await?;
    Ok((cluster, installed))
}

fn on(node: &str) -> Placement {
    Placement::Node(node.to_owned())
}

/// A pool of `count` underlay addresses of its own, gateway the switch.
async fn underlay_pool(cluster: &RealCluster, name: &str, count: u8) -> Result<SpiderIPPool> {
    let (first, last) = cluster.address_block(count)?;
    let underlay = cluster.underlay();
    ipam::create_pool(
        &cluster.client()?,
        name,
        json!({
            "subnet": underlay.subnet().to_string(),
            "ips": [format!("{first}-{last}")],
            "gateway": underlay.gateway().to_string(),
        }),
    )
    .await
}

async fn allocated(cluster: &RealCluster, pool: &str) -> Result<i64> {
    let pool = Api::<SpiderIPPool>::all(cluster.client()?).get(pool).await?;
    Ok(pool.status.and_then(|s| s.allocated_ip_count).unwrap_or(0))
}

/// The one address of `ips`, which must be an IPv4 address of the underlay.
fn one_underlay_address(cluster: &RealCluster, ips: &[String]) -> Result<String> {
    ensure!(ips.len() == 1, "one IPv4 address: {ips:?}");
    let ip: std::net::Ipv4Addr = ips[0].parse()?;
    ensure!(
        cluster.underlay().subnet().contains(&ip),
        "{ip} is an underlay address"
    );
    Ok(ips[0].clone())
}

/// Waits until no address of `pool` is allocated, then deletes the pool.
async fn drain_and_delete_pool(cluster: &RealCluster, pool: &str) -> Result<()> {
    wait_for(
        &format!("pool {pool} to be empty"),
        Duration::from_secs(60),
        || async { Ok((allocated(cluster, pool).await? == 0).then_some(())) },
    )
    .await
    .context("every address goes back to the pool")?;
    Api::<SpiderIPPool>::all(cluster.client()?)
        .delete(pool, &DeleteParams::default())
        .await?;
    Ok(())
}

/// The chart's DaemonSet runs an agent on every node, its Deployment the operator, its init
/// container put our plugins into every node's /opt/cni/bin, and its post-install Job made the
/// `default` SpiderCoordinator, which the operator synced with the cluster's Service CIDR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_agents_and_operator_installs_the_plugins_and_syncs_the_coordinator() -> Result<()> {
    init_tracing();
    let (cluster, installed) = installed().await?;
    let client = cluster.client()?;
    let namespace = &installed.release.namespace;
    let agents = Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(client.clone(), namespace)
        .get("spiderpool-agent")
        .await?;
    let status = agents.status.context("the agent DaemonSet has a status")?;
    let nodes = i32::try_from(cluster.nodes().len())?;
    ensure!(
        status.desired_number_scheduled == nodes && status.number_ready == nodes,
        "an agent Ready on each of the {nodes} nodes: {status:?}"
    );
    let operator = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), namespace)
        .get("spiderpool-controller")
        .await?;
    let ready = operator.status.and_then(|s| s.ready_replicas).unwrap_or(0);
    ensure!(ready >= 1, "the operator Deployment has a Ready replica");
    let missing = realnode::chart::missing_plugins(cluster);
    ensure!(missing.is_empty(), "plugins missing on nodes: {missing:?}");
    let coordinator = realnode::chart::wait_coordinator_synced(&client, Duration::from_secs(30)).await?;
    let service_cidr = cluster.underlay().service_cidr().to_string();
    let status = coordinator.status.unwrap_or_default();
    ensure!(
        status.service_cidr == Some(vec![service_cidr.clone()]),
        "the coordinator found the Service CIDR {service_cidr}: {status:?}"
    );
    Ok(())
}

/// Underlay as the only network: a Deployment on the nodes whose primary CNI configuration is
/// macvlan + `spiderpool` + `coordinator`. Its pods get pool addresses, pass kubelet's httpGet
/// readiness probe (kubelet on the node reaches the pod: the coordinator's route), reach each
/// other across the switch, their own node and a ClusterIP Service (through the coordinator's veth
/// to the node's kube-proxy); deleting the Deployment gives every address back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_underlay_only_deployment_is_ready_reaches_its_node_a_service_and_the_other_node() -> Result<()> {
    init_tracing();
    let cluster = cluster().await?;
    let ns = cluster.namespace("underlay-deploy").await?;
    let pods = ns.api::<Pod>();
    let pool = format!("{}-v4", ns.name());
    underlay_pool(cluster, &pool, 8).await?;
    let annotations = workload::ippool_annotation(&pool);
    let nodes = cluster.nodes_with(realnode::PRIMARY_CNI_LABEL, realnode::PRIMARY_UNDERLAY);
    ensure!(nodes.len() >= 2, "the layout has two underlay nodes");
    let selector = json!({realnode::PRIMARY_CNI_LABEL: realnode::PRIMARY_UNDERLAY});
    let deployment: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": annotations},
                "spec": {
                    "nodeSelector": selector,
                    "terminationGracePeriodSeconds": 1,
                    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}],
                    "containers": [{
                        "name": "web", "image": cluster.busybox(), "imagePullPolicy": "Never",
                        "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/index.html", "port": 8080},
                                           "periodSeconds": 2, "failureThreshold": 3},
                    }],
                },
            },
        },
    }))?;
    let deployments = ns.api::<k8s_openapi::api::apps::v1::Deployment>();
    deployments.create(&PostParams::default(), &deployment).await?;
    let service: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))?;
    let service = ns
        .api::<k8s_openapi::api::core::v1::Service>()
        .create(&PostParams::default(), &service)
        .await?;
    let cluster_ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the Service has a ClusterIP")?;

    // Ready means kubelet's httpGet probe from the node reached the pod.
    let web = workload::wait_ready_pods(&pods, "app=web", 2, POD_TIMEOUT)
        .await
        .with_context(|| format!("pods of web in {}", ns.name()))?;
    let mut by_node = std::collections::BTreeMap::new();
    for pod in &web {
        let ip = one_underlay_address(cluster, &workload::pod_ips(pod))?;
        by_node.insert(workload::pod_node(pod).unwrap_or_default(), ip);
    }
    ensure!(by_node.len() == 2, "one web pod per underlay node: {by_node:?}");
    wait_for(
        "the pool counts the two pods",
        Duration::from_secs(30),
        || async { Ok((allocated(cluster, &pool).await? == 2).then_some(())) },
    )
    .await?;

    // From a client pod on each underlay node: the web pod of the other node across the switch,
    // the client's own node, and the Service's ClusterIP (kube-proxy on the node).
    for (i, node) in nodes.iter().enumerate() {
        let other = nodes[(i + 1) % nodes.len()].name();
        let peer = by_node.get(other).context("a web pod on the other node")?;
        let script = format!(
            "set -e; ping -c 2 -W 2 {peer}; ping -c 2 -W 2 {node_ip}; \
             timeout 10 wget -q -O - http://{peer}:8080/index.html; \
             timeout 10 wget -q -O - http://{cluster_ip}/index.html",
            node_ip = node.ip(),
        );
        let log = workload::run_to_completion(
            &pods,
            cluster.busybox(),
            &on(node.name()),
            &["sh", "-c", &script],
            &annotations,
            POD_TIMEOUT,
        )
        .await
        .with_context(|| format!("from an underlay pod on {}", node.name()))?;
        eprintln!("client on {}:\n{log}", node.name());
    }

    deployments.delete("web", &DeleteParams::default()).await?;
    wait_for("the web pods to go", POD_TIMEOUT, || async {
        Ok(pods
            .list(&ListParams::default().labels("app=web"))
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    wait_for("no SpiderEndpoint left", Duration::from_secs(30), || async {
        Ok(ns
            .api::<SpiderEndpoint>()
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    drain_and_delete_pool(cluster, &pool).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underlay_only_pods_get_pool_addresses_reach_each_other_and_release_them() -> Result<()> {
    init_tracing();
    let cluster = cluster().await?;
    let ns = cluster.namespace("underlay-only").await?;
    let pods = ns.api::<Pod>();
    let pool = format!("{}-v4", ns.name());
    let created = underlay_pool(cluster, &pool, 8).await?;
    let annotations = workload::ippool_annotation(&pool);

    let nodes = cluster.nodes_with(realnode::PRIMARY_CNI_LABEL, realnode::PRIMARY_UNDERLAY);
    ensure!(nodes.len() >= 2, "the layout has two underlay nodes");
    let mut ips = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let name = format!("server-{i}");
        let pod = workload::busybox_pod(
            cluster.busybox(),
            &name,
            &on(node.name()),
            &["sleep", "3600"],
            &annotations,
        )?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    for (i, _) in nodes.iter().enumerate() {
        let pod = workload::wait_running(&pods, &format!("server-{i}"), POD_TIMEOUT).await?;
        let pod_ips = workload::pod_ips(&pod);
        let range = &created.spec.ips;
        ensure!(pod_ips.len() == 1, "one IPv4 address: {pod_ips:?}");
        let ip: std::net::Ipv4Addr = pod_ips[0].parse()?;
        ensure!(
            cluster.underlay().subnet().contains(&ip),
            "{ip} is an underlay address (pool {range:?})"
        );
        ips.push(ip.to_string());
    }
    ensure!(ips[0] != ips[1], "two pods, two addresses: {ips:?}");
    // Across the switch, both ways, from pods of the other node.
    workload::ping(
        &pods,
        cluster.busybox(),
        &on(nodes[1].name()),
        &annotations,
        &ips[0],
    )
    .await?;
    workload::ping(
        &pods,
        cluster.busybox(),
        &on(nodes[0].name()),
        &annotations,
        &ips[1],
    )
    .await?;
    // The ping pods are gone from the API once kubelet killed them; their sandboxes' CNI DEL (and so
    // the release of their addresses) may come a moment later.
    wait_for(
        "the two servers alone to hold addresses",
        Duration::from_secs(30),
        || async { Ok((allocated(cluster, &pool).await? == 2).then_some(())) },
    )
    .await?;
    let endpoints = ns.api::<SpiderEndpoint>().list(&ListParams::default()).await?;
    ensure!(
        endpoints.items.len() == 2,
        "one SpiderEndpoint per server: {:?}",
        endpoints.items.len()
    );

    for i in 0..nodes.len() {
        workload::delete_and_wait(&pods, &format!("server-{i}"), POD_TIMEOUT).await?;
    }
    wait_for("no SpiderEndpoint left", Duration::from_secs(30), || async {
        Ok(ns
            .api::<SpiderEndpoint>()
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    drain_and_delete_pool(cluster, &pool).await
}

/// The pod's addresses on `interface`, from Multus' network-status annotation.
fn network_status_ips(pod: &Pod, interface: &str) -> Result<Vec<String>> {
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(spiderpool_tests::multus::NETWORK_STATUS_ANNOTATION))
        .context("no network-status annotation")?;
    let statuses: Vec<spiderpool_tests::multus::NetworkStatus> = serde_json::from_str(annotation)?;
    Ok(statuses
        .into_iter()
        .filter(|s| s.interface == interface)
        .flat_map(|s| s.ips)
        .collect())
}

/// Classic use through the Multus stand-in: a SpiderIPPool and a SpiderMultusConfig (macvlan on the
/// nodes' uplink, the pool as its default), from which the operator renders the
/// NetworkAttachmentDefinition; a Deployment naming it in Multus' annotation gets Running pods with a
/// pod-network eth0 and a net1 from the pool, and net1 reaches the other node's pod across the
/// switch. Deleting the Deployment gives the addresses back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spidermultusconfig_gives_a_multus_deployment_an_underlay_net1_next_to_the_pod_network()
-> Result<()> {
    init_tracing();
    let cluster = cluster().await?;
    let ns = cluster.namespace("standin").await?;
    let pods = ns.api::<Pod>();
    let pool = format!("{}-v4", ns.name());
    underlay_pool(cluster, &pool, 8).await?;
    let smc: spiderpool_schema::SpiderMultusConfig = serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderMultusConfig",
        "metadata": {"name": "uplink"},
        "spec": {"cniType": "macvlan",
                 "macvlan": {"master": [realnode::underlay::UPLINK_NIC], "ippools": {"ipv4": [pool]}}},
    }))?;
    ns.api::<spiderpool_schema::SpiderMultusConfig>()
        .create(&PostParams::default(), &smc)
        .await?;
    let nads = ns.api::<spiderpool_schema::NetworkAttachmentDefinition>();
    let nad = wait_for(
        "the operator to render the NAD",
        Duration::from_secs(30),
        || async { Ok(nads.get_opt("uplink").await?) },
    )
    .await?;
    eprintln!("rendered NAD: {}", serde_json::to_string(&nad.spec)?);

    let nodes = cluster.nodes_with(realnode::PRIMARY_CNI_LABEL, realnode::PRIMARY_MULTUS_STANDIN);
    ensure!(nodes.len() >= 2, "the layout has two Multus nodes");
    let annotations: std::collections::BTreeMap<String, String> = [(
        spiderpool_tests::multus::NETWORKS_ANNOTATION.to_owned(),
        "uplink".to_owned(),
    )]
    .into();
    let deployment: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "app"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "app"}},
            "template": {
                "metadata": {"labels": {"app": "app"}, "annotations": annotations},
                "spec": {
                    "nodeSelector": {realnode::PRIMARY_CNI_LABEL: realnode::PRIMARY_MULTUS_STANDIN},
                    "terminationGracePeriodSeconds": 1,
                    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "app"}}}],
                    "containers": [{"name": "app", "image": cluster.busybox(), "imagePullPolicy": "Never",
                                    "command": ["sleep", "3600"]}],
                },
            },
        },
    }))?;
    let deployments = ns.api::<k8s_openapi::api::apps::v1::Deployment>();
    deployments.create(&PostParams::default(), &deployment).await?;
    let running = workload::wait_ready_pods(&pods, "app=app", 2, POD_TIMEOUT).await?;
    let mut net1 = std::collections::BTreeMap::new();
    for pod in &running {
        let eth0 = workload::pod_ips(pod);
        let pod_cidr = cluster.underlay().pod_cidr();
        ensure!(
            !eth0.is_empty()
                && eth0.iter().all(|ip| ip
                    .parse::<std::net::Ipv4Addr>()
                    .is_ok_and(|ip| pod_cidr.contains(&ip))),
            "the pod IP is the pod network's ({pod_cidr}): {eth0:?}"
        );
        let ip = one_underlay_address(cluster, &network_status_ips(pod, "net1")?)?;
        net1.insert(workload::pod_node(pod).unwrap_or_default(), ip);
    }
    ensure!(net1.len() == 2, "one app pod per Multus node: {net1:?}");
    wait_for(
        "the pool counts both net1 addresses",
        Duration::from_secs(30),
        || async { Ok((allocated(cluster, &pool).await? == 2).then_some(())) },
    )
    .await?;
    // From net1 of a pod on one node to the other node's pod, across the switch.
    let client_annotations: std::collections::BTreeMap<String, String> = annotations.clone();
    for (i, node) in nodes.iter().enumerate() {
        let other = nodes[(i + 1) % nodes.len()].name();
        let target = net1.get(other).context("an app pod on the other node")?;
        workload::run_to_completion(
            &pods,
            cluster.busybox(),
            &on(node.name()),
            &["ping", "-I", "net1", "-c", "3", "-W", "2", target],
            &client_annotations,
            POD_TIMEOUT,
        )
        .await
        .with_context(|| format!("from net1 of a pod on {}", node.name()))?;
    }
    deployments.delete("app", &DeleteParams::default()).await?;
    wait_for("the app pods to go", POD_TIMEOUT, || async {
        Ok(pods
            .list(&ListParams::default().labels("app=app"))
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    drain_and_delete_pool(cluster, &pool).await
}

/// `tests/demo up` runs this scenario; here it runs on the shared cluster so the demo cannot rot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_scenario_deploys_reports_and_pings_across_nodes() -> Result<()> {
    init_tracing();
    let cluster = cluster().await?;
    let ns = cluster.namespace("demo").await?;
    let pool = format!("{}-pool", ns.name());
    let scenario = realnode::demo::deploy(cluster, ns.name(), &pool).await?;
    let report = realnode::demo::report(&cluster.client()?, &scenario).await?;
    let pings = realnode::demo::ping_across_nodes(cluster, &scenario).await?;
    eprintln!("{report}\n{pings}");
    ensure!(report.contains(&pool), "the report lists the pool:\n{report}");
    ensure!(
        report.matches("net1=").count() >= 4,
        "the endpoints and pods of the Multus workload show net1:\n{report}"
    );
    ensure!(
        pings.matches(" 0% packet loss").count() == 2,
        "both pings answered:\n{pings}"
    );
    let client = cluster.client()?;
    for name in scenario.deployments.keys() {
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), ns.name())
            .delete(name, &DeleteParams::default())
            .await?;
    }
    drain_and_delete_pool(cluster, &pool).await
}

/// The StatefulSet's pods, by name: (IP, node, UID).
async fn members(
    pods: &Api<Pod>,
    app: &str,
) -> Result<std::collections::BTreeMap<String, (String, String, String)>> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?;
    Ok(list
        .items
        .iter()
        .map(|p| {
            (
                p.metadata.name.clone().unwrap_or_default(),
                (
                    workload::pod_ips(p).join(","),
                    workload::pod_node(p).unwrap_or_default(),
                    p.metadata.uid.clone().unwrap_or_default(),
                ),
            )
        })
        .collect())
}

/// Waits until the StatefulSet's `replicas` pods are Running and Ready, none of them one of `old`
/// (UIDs), and returns them.
async fn wait_members(
    pods: &Api<Pod>,
    app: &str,
    replicas: usize,
    old: &[String],
) -> Result<std::collections::BTreeMap<String, (String, String, String)>> {
    wait_for(
        &format!("{replicas} new members of {app}"),
        POD_TIMEOUT,
        || async {
            let list = pods
                .list(&ListParams::default().labels(&format!("app={app}")))
                .await?;
            let ready = list
                .items
                .iter()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && !old.contains(&p.metadata.uid.clone().unwrap_or_default())
                        && workload::ready(p)
                })
                .count();
            if ready == replicas && list.items.len() == replicas {
                Ok(Some(members(pods, app).await?))
            } else {
                Ok(None)
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_keeps_its_addresses_when_its_pods_come_back_on_the_same_or_another_node() -> Result<()>
{
    init_tracing();
    let cluster = cluster().await?;
    let ns = cluster.namespace("sts").await?;
    let pods = ns.api::<Pod>();
    let pool = format!("{}-v4", ns.name());
    underlay_pool(cluster, &pool, 8).await?;
    let nodes = cluster.nodes_with(realnode::PRIMARY_CNI_LABEL, realnode::PRIMARY_UNDERLAY);
    let (first, second) = (nodes[0].name().to_owned(), nodes[1].name().to_owned());
    let statefulset = |node: &str| -> Result<k8s_openapi::api::apps::v1::StatefulSet> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db"},
            "spec": {
                "serviceName": "db",
                "replicas": 2,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {"app": "db"}},
                "template": {
                    "metadata": {"labels": {"app": "db"}, "annotations": workload::ippool_annotation(&pool)},
                    "spec": {
                        "nodeSelector": {"kubernetes.io/hostname": node},
                        "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "db", "image": cluster.busybox(), "imagePullPolicy": "Never",
                                         "command": ["sleep", "3600"]}],
                    },
                },
            },
        }))?)
    };
    let api = ns.api::<k8s_openapi::api::apps::v1::StatefulSet>();
    api.create(&PostParams::default(), &statefulset(&first)?).await?;
    let before = wait_members(&pods, "db", 2, &[]).await?;
    let addresses =
        |m: &std::collections::BTreeMap<String, (String, String, String)>| -> Vec<(String, String)> {
            m.iter()
                .map(|(name, (ip, _, _))| (name.clone(), ip.clone()))
                .collect()
        };
    ensure!(
        before
            .values()
            .all(|(ip, node, _)| !ip.is_empty() && *node == first),
        "{before:?}"
    );

    // Deleted: they come back on the same node with the same addresses.
    let uids: Vec<String> = before.values().map(|(_, _, uid)| uid.clone()).collect();
    for name in before.keys() {
        pods.delete(name, &DeleteParams::default()).await?;
    }
    let again = wait_members(&pods, "db", 2, &uids).await?;
    ensure!(
        addresses(&again) == addresses(&before),
        "same addresses after a delete: {before:?} -> {again:?}"
    );

    // Moved: the template now wants the other node; the rolling update recreates them there.
    let uids: Vec<String> = again.values().map(|(_, _, uid)| uid.clone()).collect();
    api.patch(
        "db",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            json!({"spec": {"template": {"spec": {"nodeSelector": {"kubernetes.io/hostname": second}}}}}),
        ),
    )
    .await?;
    let moved = wait_members(&pods, "db", 2, &uids).await?;
    ensure!(
        moved.values().all(|(_, node, _)| *node == second),
        "on the other node now: {moved:?}"
    );
    ensure!(
        addresses(&moved) == addresses(&before),
        "same addresses on another node: {before:?} -> {moved:?}"
    );
    workload::ping(
        &pods,
        cluster.busybox(),
        &on(&first),
        &workload::ippool_annotation(&pool),
        &moved
            .values()
            .next()
            .map(|(ip, _, _)| ip.clone())
            .unwrap_or_default(),
    )
    .await?;

    api.delete("db", &DeleteParams::default()).await?;
    wait_for("the StatefulSet's pods to go", POD_TIMEOUT, || async {
        Ok(pods
            .list(&ListParams::default().labels("app=db"))
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    Ok(())
}

/// The harness itself: kube-proxy runs on every node, so host-network pods (what the chart's agents
/// are) and pod-network pods reach the API server through the `kubernetes` Service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_the_api_server_through_the_kubernetes_service_on_every_node() -> Result<()> {
    init_tracing();
    let cluster = RealCluster::shared_with(|| RealClusterOptions {
        multus_standin: Some(env!("CARGO_BIN_EXE_multus-standin").into()),
        ..RealClusterOptions::standard()
    })
    .await?;
    let ns = cluster.namespace("kube-proxy").await?;
    let pods = ns.api::<Pod>();
    let kubernetes = Api::<k8s_openapi::api::core::v1::Service>::namespaced(cluster.client()?, "default")
        .get("kubernetes")
        .await?;
    let cluster_ip = kubernetes
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the kubernetes Service has a ClusterIP")?;
    let connect = ["sh", "-c", &format!("echo | nc -w 3 {cluster_ip} 443")];
    for node in cluster.nodes() {
        let name = format!("hostnet-{}", node.name());
        let mut pod = workload::busybox_pod(
            cluster.busybox(),
            &name,
            &on(node.name()),
            &connect,
            &Default::default(),
        )?;
        if let Some(spec) = pod.spec.as_mut() {
            spec.host_network = Some(true);
        }
        workload::run_pod_to_completion(&pods, pod, POD_TIMEOUT)
            .await
            .with_context(|| format!("from the host network of {}", node.name()))?;
    }
    for node in cluster.nodes_with(realnode::PRIMARY_CNI_LABEL, realnode::PRIMARY_MULTUS_STANDIN) {
        workload::run_to_completion(
            &pods,
            cluster.busybox(),
            &on(node.name()),
            &connect,
            &Default::default(),
            POD_TIMEOUT,
        )
        .await
        .with_context(|| format!("from the pod network of {}", node.name()))?;
    }
    Ok(())
}

/// The topology of [`a_topology_applied_as_argo_cd_does_binds_a_deployment_across_two_racks`]: one
/// subnet per rack (the underlay's two spare /24s, gateways on the switch), one macvlan network on
/// the nodes' uplink that takes every subnet of its role, bound to the Deployment `web` as a second
/// NIC. Written as the YAML a network engineer commits.
fn two_rack_topology(name: &str, namespace: &str, subnets: [ipnet::Ipv4Net; 2]) -> String {
    let host = |subnet: ipnet::Ipv4Net, n: u32| std::net::Ipv4Addr::from(u32::from(subnet.network()) + n);
    let mut yaml = format!(
        "apiVersion: spiderpool.spidernet.io/v2beta1\n\
         kind: SpiderNetwork\n\
         metadata:\n  name: {name}\n\
         spec:\n  subnets:\n"
    );
    for (rack, subnet) in ["a", "b"].iter().zip(subnets) {
        yaml += &format!(
            "    - name: rack-{rack}-net\n      role: fabric\n      ipv4:\n        cidr: {subnet}\n        gateway: {}\n",
            host(subnet, 1)
        );
    }
    yaml += "  racks:\n";
    for (rack, subnet) in ["a", "b"].iter().zip(subnets) {
        yaml += &format!(
            "    - name: rack-{rack}\n      nodeSelector:\n        matchLabels:\n          {}: rack-{rack}\n      \
             uplinks: [{}]\n      ranges:\n        - subnet: rack-{rack}-net\n          ipv4: [{}-{}]\n",
            realnode::RACK_LABEL,
            realnode::underlay::UPLINK_NIC,
            host(subnet, 10),
            host(subnet, 50)
        );
    }
    yaml += &format!(
        "  networks:\n    - name: fabric\n      type: macvlan\n      subnetRole: fabric\n      master: {}\n      \
         namespaces: [{namespace}]\n  \
         apps:\n    - name: web\n      namespace: {namespace}\n      workload: {{kind: Deployment, name: web}}\n      \
         interfaces:\n        - network: fabric\n",
        realnode::underlay::UPLINK_NIC
    );
    yaml
}

/// The new idea on real nodes. A SpiderNetwork file is applied as Argo CD applies it (server-side
/// apply with its field manager): the operator renders a pool per rack and the NAD; the pod webhook
/// gives the Deployment's pods the binding's Multus annotation (the Deployment itself names no
/// network); through the Multus stand-in, each pod's net1 takes an address of its own rack's subnet.
/// Deleting the Deployment gives every address back and deleting the topology prunes what it made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_applied_as_argo_cd_does_binds_a_deployment_across_two_racks() -> Result<()> {
    use kube::ResourceExt as _;
    use kube::api::{Patch, PatchParams};
    use spiderpool_schema::labels::{ANNOTATION_APP_BINDING, LABEL_RACK, LABEL_TOPOLOGY};
    use spiderpool_schema::{NetworkAttachmentDefinition, SpiderNetwork};

    init_tracing();
    let cluster = cluster().await?;
    let client = cluster.client()?;
    let ns = cluster.namespace("topology").await?;
    let pods = ns.api::<Pod>();
    let name = ns.name().to_owned();
    let subnets = [
        cluster.underlay().spare_subnet(0)?,
        cluster.underlay().spare_subnet(1)?,
    ];
    for subnet in subnets {
        let gateway = ipnet::Ipv4Net::new((u32::from(subnet.network()) + 1).into(), subnet.prefix_len())?;
        cluster.underlay().add_gateway(gateway)?;
    }

    let yaml = two_rack_topology(&name, ns.name(), subnets);
    let document: serde_json::Value = serde_saphyr::from_str(&yaml).context("the topology parses")?;
    let networks = Api::<SpiderNetwork>::all(client.clone());
    networks
        .patch(
            &name,
            &PatchParams::apply("argocd-controller"),
            &Patch::Apply(&document),
        )
        .await
        .context("server-side apply of the topology")?;
    let ready = wait_for("the topology to be applied", Duration::from_secs(60), || async {
        let network = networks.get(&name).await?;
        let applied = network.status.as_ref().is_some_and(|s| {
            s.observed_generation == network.metadata.generation
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        Ok(applied.then_some(network))
    })
    .await;
    let network = match ready {
        Ok(network) => network,
        Err(err) => {
            let status = networks.get(&name).await.ok().and_then(|n| n.status);
            return Err(err.context(format!("status: {status:?}")));
        }
    };
    eprintln!("topology status: {:?}", network.status);

    let pools = Api::<SpiderIPPool>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{LABEL_TOPOLOGY}={name}")))
        .await?
        .items;
    let pool_of_rack = |rack: &str| {
        pools
            .iter()
            .find(|p| p.labels().get(LABEL_RACK).map(String::as_str) == Some(rack))
            .map(|p| p.name_any())
            .with_context(|| {
                format!(
                    "a pool of {rack}: {:?}",
                    pools.iter().map(|p| p.name_any()).collect::<Vec<_>>()
                )
            })
    };
    let rack_pools = [pool_of_rack("rack-a")?, pool_of_rack("rack-b")?];
    let nad = ns
        .api::<NetworkAttachmentDefinition>()
        .get("fabric")
        .await
        .context("the topology's NAD")?;
    let config = serde_json::to_string(&nad.spec)?;
    ensure!(
        rack_pools.iter().all(|pool| config.contains(pool.as_str())),
        "the NAD lists both racks' pools {rack_pools:?}: {config}"
    );

    // The API server calls the pod webhook for this namespace once its configuration (which the
    // operator updates as bindings change) reaches the API server's cache: probe with a dry run.
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe", "labels": {"app": "web", "pod-template-hash": "probe"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-probe",
                                          "uid": "00000000-0000-0000-0000-000000000001", "controller": true}]},
        "spec": {"containers": [{"name": "c", "image": cluster.busybox()}]},
    }))?;
    wait_until_pod_webhook_binds(
        &pods,
        &probe,
        spiderpool_tests::multus::NETWORKS_ANNOTATION,
        Duration::from_secs(60),
    )
    .await?;

    let deployment: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "nodeSelector": {realnode::PRIMARY_CNI_LABEL: realnode::PRIMARY_MULTUS_STANDIN},
                    "terminationGracePeriodSeconds": 1,
                    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": realnode::RACK_LABEL,
                        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}],
                    "containers": [{"name": "web", "image": cluster.busybox(), "imagePullPolicy": "Never",
                                    "command": ["sleep", "3600"]}],
                },
            },
        },
    }))?;
    let deployments = ns.api::<k8s_openapi::api::apps::v1::Deployment>();
    deployments.create(&PostParams::default(), &deployment).await?;
    let running = workload::wait_ready_pods(&pods, "app=web", 2, POD_TIMEOUT).await?;
    let mut racks_seen = Vec::new();
    for pod in &running {
        let node = workload::pod_node(pod).context("a running pod has a node")?;
        let rack = cluster
            .node(&node)?
            .spec()
            .labels
            .get(realnode::RACK_LABEL)
            .cloned()
            .context("the node's rack")?;
        ensure!(
            pod.annotations().contains_key(ANNOTATION_APP_BINDING),
            "{} was bound by the webhook: {:?}",
            pod.name_any(),
            pod.annotations()
        );
        let net1 = network_status_ips(pod, "net1")?;
        ensure!(
            net1.len() == 1,
            "{} has one net1 address: {net1:?}",
            pod.name_any()
        );
        let ip: std::net::Ipv4Addr = net1[0].parse()?;
        let expected = if rack == "rack-a" { subnets[0] } else { subnets[1] };
        ensure!(
            expected.contains(&ip),
            "{} on {node} ({rack}) has net1 {ip}, not of its rack's subnet {expected}",
            pod.name_any()
        );
        racks_seen.push(rack);
    }
    racks_seen.sort();
    ensure!(
        racks_seen == ["rack-a", "rack-b"],
        "one pod per rack: {racks_seen:?}"
    );
    for pool in &rack_pools {
        wait_for(
            &format!("{pool} to count its pod"),
            Duration::from_secs(30),
            || async { Ok((allocated(cluster, pool).await? == 1).then_some(())) },
        )
        .await?;
    }

    // The topology's status counts what its racks' pods hold: 41 addresses per rack (.10-.50).
    type TotalAllocatedFree = (i64, i64, i64);
    let counted = wait_for(
        "the topology's capacity to count both pods",
        Duration::from_secs(60),
        || async {
            let capacity = networks.get(&name).await?.status.and_then(|s| s.capacity);
            let racks: Vec<(String, Option<TotalAllocatedFree>)> = capacity
                .map(|c| c.racks)
                .unwrap_or_default()
                .into_iter()
                .map(|entry| (entry.name, entry.ipv4.map(|v4| (v4.total, v4.allocated, v4.free))))
                .collect();
            let expected = [("rack-a", (41, 1, 40)), ("rack-b", (41, 1, 40))]
                .map(|(rack, counts)| (rack.to_owned(), Some(counts)));
            Ok((racks == expected).then_some(()))
        },
    )
    .await;
    if let Err(err) = counted {
        let status = networks.get(&name).await?.status.and_then(|s| s.capacity);
        return Err(err.context(format!("capacity: {status:?}")));
    }

    deployments.delete("web", &DeleteParams::default()).await?;
    wait_for("the web pods to go", POD_TIMEOUT, || async {
        Ok(pods
            .list(&ListParams::default().labels("app=web"))
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    for pool in &rack_pools {
        wait_for(
            &format!("{pool} to be empty"),
            Duration::from_secs(60),
            || async { Ok((allocated(cluster, pool).await? == 0).then_some(())) },
        )
        .await?;
    }
    let endpoints = ns.api::<SpiderEndpoint>();
    wait_for("the endpoints to go", Duration::from_secs(60), || async {
        Ok(endpoints
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    networks.delete(&name, &DeleteParams::default()).await?;
    wait_for(
        "the topology's children to be pruned",
        Duration::from_secs(60),
        || async {
            let left = Api::<SpiderIPPool>::all(client.clone())
                .list(&ListParams::default().labels(&format!("{LABEL_TOPOLOGY}={name}")))
                .await?
                .items
                .len();
            let nad = ns.api::<NetworkAttachmentDefinition>().get_opt("fabric").await?;
            Ok((left == 0 && nad.is_none() && networks.get_opt(&name).await?.is_none()).then_some(()))
        },
    )
    .await?;
    Ok(())
}
