//! End-to-end proof of the harness: a real control plane, real scheduling, real CNI plugins.
//!
//! All tests of this binary share one control plane ([`TestCluster::shared`]); each has its own
//! namespace and its own node simulator (its nodes are tainted for it).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod, PodSpec};
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use spiderpool_tests::multus::NETWORK_STATUS_ANNOTATION;
use spiderpool_tests::{DefaultNetwork, NodeSimulator, SimOptions, TestCluster, init_tracing, tools};

/// The cluster default network of these tests: Debian's macvlan on each node's `eth0` (bridge mode)
/// with host-local IPAM from 172.31.100.0/24 (the simulated underlay is 172.31.0.0/16).
fn macvlan_network(name: &str, ipam_dir: &Path, range: (&str, &str)) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [{
            "type": "macvlan",
            "master": "eth0",
            "mode": "bridge",
            "ipam": {
                "type": "host-local",
                "dataDir": ipam_dir.display().to_string(),
                "ranges": [[{"subnet": "172.31.0.0/16", "rangeStart": range.0, "rangeEnd": range.1, "gateway": "172.31.0.1"}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        }]
    })
}

use spiderpool_tests::wait_for;

fn pod_spec(sim: &NodeSimulator) -> Result<PodSpec> {
    let mut spec: PodSpec = serde_json::from_value(json!({
        "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
        "terminationGracePeriodSeconds": 30,
    }))?;
    sim.place(&mut spec);
    Ok(spec)
}

fn running_ip(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    (status.phase.as_deref() == Some("Running")).then_some(())?;
    let ready = status
        .conditions
        .as_ref()?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    ready.then(|| status.pod_ip.clone()).flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_pods_run_on_simulated_nodes_with_macvlan() -> Result<()> {
    init_tracing();
    let t0 = Instant::now();
    let cluster = TestCluster::shared().await?;
    let cluster_ready = t0.elapsed();
    tools::debian_cni_plugin("macvlan")?;
    tools::debian_cni_plugin("host-local")?;
    let ns = cluster.namespace("e2e-deploy").await?;
    let ipam = tempfile::tempdir()?;
    let network = macvlan_network(
        "macvlan-underlay",
        ipam.path(),
        ("172.31.100.10", "172.31.100.200"),
    );
    let sim = NodeSimulator::start(
        cluster.client()?,
        SimOptions {
            nodes: 2,
            ..SimOptions::new(DefaultNetwork::Config(network))
        },
    )
    .await?;
    let sim_ready = t0.elapsed();

    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec(&sim)?},
        },
    }))?;
    let deployments = ns.api::<Deployment>();
    deployments.create(&PostParams::default(), &deployment).await?;

    let pods_api = ns.api::<Pod>();
    let selector = ListParams::default().labels("app=web");
    let pods = wait_for("3 running pods with IPs", Duration::from_secs(60), || {
        let (api, lp) = (pods_api.clone(), selector.clone());
        async move {
            let pods = api.list(&lp).await?.items;
            let running = pods.iter().filter(|p| running_ip(p).is_some()).count();
            Ok((pods.len() == 3 && running == 3).then_some(pods))
        }
    })
    .await
    .with_context(|| format!("simulator errors: {:?}", sim.errors()))?;
    let pods_running = t0.elapsed();

    let node_names: BTreeSet<String> = sim.node_names().into_iter().collect();
    let mut ips = BTreeSet::new();
    let mut netns_paths = Vec::new();
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ip = running_ip(pod).unwrap_or_default();
        let octets: Vec<u8> = ip.split('.').filter_map(|o| o.parse().ok()).collect();
        ensure!(
            octets.len() == 4 && octets[..3] == [172, 31, 100] && (10..=200).contains(&octets[3]),
            "{name}: IP {ip} not from the range"
        );
        ensure!(ips.insert(ip.clone()), "duplicate pod IP {ip}");
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        ensure!(
            node_names.contains(&node),
            "{name} is bound to {node}, not a simulated node"
        );
        let status = pod.status.as_ref().context("no status")?;
        ensure!(
            status
                .pod_ips
                .as_ref()
                .is_some_and(|ips| ips.len() == 1 && ips[0].ip == ip),
            "{name}: podIPs {:?}",
            status.pod_ips
        );
        ensure!(status.host_ip.is_some(), "{name}: no hostIP");

        let record = sim
            .pod(ns.name(), &name)
            .context("simulator has no record of the pod")?;
        ensure!(
            Path::new(&record.netns_path).exists(),
            "{}: netns missing",
            record.netns_path
        );
        netns_paths.push(record.netns_path.clone());
        let addr = sim.exec_in_pod(
            ns.name(),
            &name,
            &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
        )?;
        ensure!(
            addr.contains(&format!("inet {ip}/16")),
            "{name}: eth0 in the netns has {addr:?}, want {ip}/16"
        );
        let route = sim.exec_in_pod(ns.name(), &name, &["ip", "route", "show", "default"])?;
        ensure!(
            route.contains("via 172.31.0.1 dev eth0"),
            "{name}: default route {route:?}"
        );
        let annotation = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(NETWORK_STATUS_ANNOTATION))
            .cloned();
        let statuses: Value = serde_json::from_str(&annotation.context("no network-status annotation")?)?;
        ensure!(
            statuses[0]["name"] == "macvlan-underlay" && statuses[0]["interface"] == "eth0",
            "{statuses}"
        );
        ensure!(
            statuses[0]["ips"] == json!([ip]) && statuses[0]["default"] == true,
            "{statuses}"
        );
        sim.check_pod(ns.name(), &name).await.context("CNI CHECK")?;
    }

    // The pods share one L2 segment (macvlan bridge mode on each node's uplink, the uplinks on one
    // bridge): every pod reaches every other one, across nodes too.
    let first = pods[0].metadata.name.clone().unwrap_or_default();
    for ip in ips.iter().skip(1) {
        sim.exec_in_pod(ns.name(), &first, &["ping", "-c", "1", "-W", "2", ip])
            .with_context(|| format!("{first} cannot reach {ip}"))?;
    }

    deployments.delete("web", &DeleteParams::default()).await?;
    wait_for("the pods to be gone", Duration::from_secs(60), || {
        let (api, lp) = (pods_api.clone(), selector.clone());
        async move { Ok(api.list(&lp).await?.items.is_empty().then_some(())) }
    })
    .await?;
    for path in &netns_paths {
        ensure!(
            !Path::new(path).exists(),
            "{path} still exists after the pod was deleted"
        );
    }
    ensure!(
        sim.pods().is_empty(),
        "simulator still has pods: {:?}",
        sim.pods()
    );
    // host-local released every address on DEL.
    let leftovers: Vec<String> = std::fs::read_dir(ipam.path().join("macvlan-underlay"))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("172."))
        .collect();
    ensure!(leftovers.is_empty(), "host-local still holds {leftovers:?}");
    let all_gone = t0.elapsed();
    sim.shutdown().await?;
    ns.delete().await?;
    eprintln!(
        "timings: cluster {cluster_ready:?} (startup {:?}), simulator {:?}, 3 pods running {:?}, all deleted {:?}",
        cluster.startup_duration(),
        sim_ready - cluster_ready,
        pods_running - sim_ready,
        all_gone - pods_running
    );
    Ok(())
}

fn read_records(dir: &Path) -> Result<Vec<Value>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| Ok(serde_json::from_str(&std::fs::read_to_string(p)?)?))
        .collect()
}

fn env_of<'a>(record: &'a Value, key: &str) -> &'a str {
    record["env"][key].as_str().unwrap_or_default()
}

/// What the plugins see: environment, stdin, chaining, interface names and Multus' annotations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_get_what_multus_and_the_runtime_give() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::shared().await?;
    let ns = cluster.namespace("e2e-cni").await?;
    let work = tempfile::tempdir()?;
    let records = work.path().join("records");
    std::fs::create_dir(&records)?;
    let recorder = Path::new(env!("CARGO_BIN_EXE_cni-recorder"));
    let recorder_dir = recorder.parent().context("recorder dir")?.to_path_buf();

    // Default network: macvlan + host-local, then the recorder chained after it.
    let mut default = macvlan_network(
        "underlay",
        &work.path().join("ipam"),
        ("172.31.101.10", "172.31.101.100"),
    );
    default["plugins"].as_array_mut().context("plugins")?.push(json!({
        "type": "cni-recorder", "recordDir": records.display().to_string(), "capabilities": {"ips": true}
    }));
    // Additional networks: a second macvlan range, and the recorder on its own (single-plugin form).
    let extra = macvlan_network("", &work.path().join("ipam"), ("172.31.102.10", "172.31.102.100"));
    let mut extra = extra.clone();
    extra.as_object_mut().context("object")?.remove("name");
    spiderpool_tests::ipam::create_nad(&ns, "extra", &extra).await?;
    spiderpool_tests::ipam::create_nad(
        &ns,
        "probe",
        &json!({"cniVersion": "0.4.0", "name": "probe", "type": "cni-recorder", "recordDir": records.display().to_string(),
                "capabilities": {"ips": true, "mac": true}}),
    )
    .await?;

    let sim = NodeSimulator::start(
        cluster.client()?,
        SimOptions {
            nodes: 1,
            cni_path: vec![recorder_dir, tools::DEBIAN_CNI_DIR.into()],
            ..SimOptions::new(DefaultNetwork::Config(default))
        },
    )
    .await?;

    let pods = ns.api::<Pod>();
    let mut spec = pod_spec(&sim)?;
    spec.node_name = Some(sim.node_names()[0].clone());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": "multi",
            "annotations": {
                "k8s.v1.cni.cncf.io/networks": format!(
                    r#"[{{"name": "extra"}}, {{"name": "probe", "namespace": "{}", "interface": "probe0", "ips": ["10.9.0.5/24"], "mac": "02:00:00:00:00:05", "cni-args": {{"k": "v"}}}}]"#,
                    ns.name()
                ),
            },
        },
        "spec": spec,
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let record = sim.wait_pod(ns.name(), "multi", Duration::from_secs(30)).await?;
    let pod = wait_for("pod multi running", Duration::from_secs(30), || {
        let api = pods.clone();
        async move {
            let pod = api.get("multi").await?;
            Ok(running_ip(&pod).is_some().then_some(pod))
        }
    })
    .await?;

    // Interfaces: eth0 (default), net1 (second delegate), probe0 (requested name).
    let ifnames: Vec<&str> = record.attachments.iter().map(|a| a.ifname.as_str()).collect();
    ensure!(ifnames == ["eth0", "net1", "probe0"], "{ifnames:?}");
    let links = sim.exec_in_pod(ns.name(), "multi", &["ip", "-o", "link", "show"])?;
    ensure!(links.contains(" eth0@") && links.contains(" net1@"), "{links}");
    let pod_ip = running_ip(&pod).unwrap_or_default();
    ensure!(
        pod_ip.starts_with("172.31.101."),
        "podIP {pod_ip} must come from the default network"
    );

    let adds: Vec<Value> = read_records(&records)?
        .into_iter()
        .filter(|r| env_of(r, "CNI_COMMAND") == "ADD")
        .collect();
    ensure!(adds.len() == 2, "expected 2 recorder ADDs, got {}", adds.len());
    let (chained, probe) = (&adds[0], &adds[1]);
    let sandbox = &record.sandbox_id;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let multus_args = format!(
        "IgnoreUnknown=true;K8S_POD_NAMESPACE={ns};K8S_POD_NAME=multi;K8S_POD_INFRA_CONTAINER_ID={sandbox};K8S_POD_UID={uid}",
        ns = ns.name()
    );
    let runtime_args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME=multi;K8S_POD_INFRA_CONTAINER_ID={sandbox};K8S_POD_UID={uid}",
        ns = ns.name()
    );
    // The chained recorder: default network, eth0, prevResult = macvlan's result, list name/version.
    ensure!(env_of(chained, "CNI_IFNAME") == "eth0", "{chained}");
    ensure!(env_of(chained, "CNI_CONTAINERID") == sandbox.as_str());
    ensure!(env_of(chained, "CNI_NETNS") == record.netns_path);
    ensure!(
        env_of(chained, "CNI_ARGS") == format!("{multus_args};{runtime_args}"),
        "{}",
        env_of(chained, "CNI_ARGS")
    );
    ensure!(
        env_of(chained, "CNI_PATH").ends_with(":/usr/lib/cni"),
        "{chained}"
    );
    let stdin = &chained["stdin"];
    ensure!(
        stdin["name"] == "underlay" && stdin["cniVersion"] == "1.0.0",
        "{stdin}"
    );
    ensure!(
        stdin["prevResult"]["ips"][0]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with(&pod_ip)),
        "{stdin}"
    );
    ensure!(
        stdin.get("runtimeConfig").is_none(),
        "the default network gets no ips capability: {stdin}"
    );
    // The probe: single-plugin NAD, requested interface, ips/mac as runtimeConfig and CNI_ARGS, cni-args.
    ensure!(env_of(probe, "CNI_IFNAME") == "probe0", "{probe}");
    ensure!(
        env_of(probe, "CNI_ARGS")
            == format!("{multus_args};{runtime_args};MAC=02:00:00:00:00:05;IP=10.9.0.5/24"),
        "{}",
        env_of(probe, "CNI_ARGS")
    );
    let stdin = &probe["stdin"];
    ensure!(
        stdin["name"] == "probe" && stdin["cniVersion"] == "0.4.0" && stdin.get("prevResult").is_none(),
        "{stdin}"
    );
    ensure!(
        stdin["runtimeConfig"] == json!({"ips": ["10.9.0.5/24"], "mac": "02:00:00:00:00:05"}),
        "{stdin}"
    );
    ensure!(stdin["args"] == json!({"cni": {"k": "v"}}), "{stdin}");

    // Multus' network-status: one entry per sandbox interface of each result, the default one marked.
    // The probe's result has no interfaces, so (as with Multus) it has no entry.
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NETWORK_STATUS_ANNOTATION))
        .cloned();
    let statuses: Value = serde_json::from_str(&annotation.context("no network-status")?)?;
    let names: Vec<&str> = statuses
        .as_array()
        .context("list")?
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    let extra_name = format!("{}/extra", ns.name());
    ensure!(names == ["underlay", extra_name.as_str()], "{statuses}");
    ensure!(
        statuses[0]["default"] == true && statuses[1].get("default").is_none(),
        "{statuses}"
    );
    ensure!(statuses[1]["interface"] == "net1", "{statuses}");
    let events = ns.api::<Event>().list(&ListParams::default()).await?.items;
    let added = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("AddedInterface"))
        .count();
    ensure!(added == 3, "expected 3 AddedInterface events, got {added}");

    // Deleting the pod: DEL in reverse order (probe, extra, default), with the cached result.
    std::fs::remove_dir_all(&records)?;
    std::fs::create_dir(&records)?;
    pods.delete("multi", &DeleteParams::default()).await?;
    wait_for("pod multi gone", Duration::from_secs(30), || {
        let api = pods.clone();
        async move { Ok(api.get_opt("multi").await?.is_none().then_some(())) }
    })
    .await?;
    ensure!(!Path::new(&record.netns_path).exists(), "netns left behind");
    let dels = read_records(&records)?;
    let order: Vec<&str> = dels.iter().map(|r| env_of(r, "CNI_IFNAME")).collect();
    ensure!(order == ["probe0", "eth0"], "recorder DELs in order {order:?}");
    ensure!(dels.iter().all(|r| env_of(r, "CNI_COMMAND") == "DEL"));
    ensure!(
        dels[1]["stdin"]["prevResult"]["ips"][0]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with(&pod_ip)),
        "{}",
        dels[1]
    );
    ensure!(
        dels[0]["stdin"]["prevResult"].is_object(),
        "0.4.0 DEL gets prevResult: {}",
        dels[0]
    );

    sim.shutdown().await?;
    ns.delete().await?;
    Ok(())
}

/// A failing ADD is rolled back (DEL of what was added) and retried with a FailedCreatePodSandBox event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_add_is_rolled_back_and_reported() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::shared().await?;
    let ns = cluster.namespace("e2e-fail").await?;
    let work = tempfile::tempdir()?;
    let records = work.path().join("records");
    std::fs::create_dir(&records)?;
    let recorder_dir = Path::new(env!("CARGO_BIN_EXE_cni-recorder"))
        .parent()
        .context("dir")?
        .to_path_buf();
    let default = json!({"cniVersion": "1.0.0", "name": "ok", "plugins": [
        {"type": "cni-recorder", "recordDir": records.display().to_string()}
    ]});
    spiderpool_tests::ipam::create_nad(
        &ns,
        "broken",
        &json!({"cniVersion": "1.0.0", "name": "broken", "type": "cni-recorder", "recordDir": records.display().to_string(), "fail": "ADD"}),
    )
    .await?;
    let sim = NodeSimulator::start(
        cluster.client()?,
        SimOptions {
            nodes: 1,
            cni_path: vec![recorder_dir],
            ..SimOptions::new(DefaultNetwork::Config(default))
        },
    )
    .await?;
    let mut spec = pod_spec(&sim)?;
    spec.node_name = Some(sim.node_names()[0].clone());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "doomed", "annotations": {"k8s.v1.cni.cncf.io/networks": "broken"}},
        "spec": spec,
    }))?;
    let pods = ns.api::<Pod>();
    pods.create(&PostParams::default(), &pod).await?;
    let events = ns.api::<Event>();
    wait_for("a FailedCreatePodSandBox event", Duration::from_secs(30), || {
        let api = events.clone();
        async move {
            let items = api.list(&ListParams::default()).await?.items;
            Ok(items
                .iter()
                .any(|e| e.reason.as_deref() == Some("FailedCreatePodSandBox"))
                .then_some(()))
        }
    })
    .await?;
    ensure!(
        sim.pod(ns.name(), "doomed").is_none(),
        "a failed pod must not stay set up"
    );
    let calls: Vec<(String, String)> = read_records(&records)?
        .iter()
        .map(|r| {
            (
                env_of(r, "CNI_COMMAND").to_owned(),
                env_of(r, "CNI_IFNAME").to_owned(),
            )
        })
        .collect();
    let first_round: Vec<(&str, &str)> = calls
        .iter()
        .take(4)
        .map(|(c, i)| (c.as_str(), i.as_str()))
        .collect();
    ensure!(
        first_round == [("ADD", "eth0"), ("ADD", "net1"), ("DEL", "net1"), ("DEL", "eth0")],
        "ADD then rollback in reverse, got {calls:?}"
    );
    let status = pods.get("doomed").await?.status.and_then(|s| s.phase);
    ensure!(status.as_deref() == Some("Pending"), "phase {status:?}");
    ensure!(
        sim.errors().iter().any(|e| e.contains("asked to fail ADD")),
        "{:?}",
        sim.errors()
    );

    pods.delete("doomed", &DeleteParams::default()).await?;
    wait_for("pod doomed gone", Duration::from_secs(30), || {
        let api = pods.clone();
        async move { Ok(api.get_opt("doomed").await?.is_none().then_some(())) }
    })
    .await?;
    // The errors were expected; shutdown reports them, so check it failed for that reason only.
    let result = sim.shutdown().await;
    ensure!(
        result
            .as_ref()
            .is_err_and(|e| format!("{e:#}").contains("asked to fail ADD")),
        "{result:?}"
    );
    ns.delete().await?;
    Ok(())
}
