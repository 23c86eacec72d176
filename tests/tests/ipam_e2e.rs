//! The IPAM data path end to end: real API server, simulated nodes running Debian's macvlan plugin
//! with IPAM delegated to our `spiderpool` binary, one real `spiderpool-agent` per node.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use spiderpool_schema::SpiderEndpoint;
use spiderpool_tests::daemon::Daemon;
use spiderpool_tests::{
    DefaultNetwork, NodeSimulator, SimOptions, TestCluster, TestNamespace, init_tracing, ipam, tools,
};

/// A macvlan NAD on each node's eth0 with our IPAM.
async fn create_nad(ns: &TestNamespace, name: &str, ipam_section: Value) -> Result<()> {
    let config = json!({
        "cniVersion": "1.0.0", "name": name,
        "plugins": [{"type": "macvlan", "master": "eth0", "mode": "bridge", "ipam": ipam_section}],
    });
    ipam::create_nad(ns, name, &config).await
}

struct Setup {
    cluster: &'static TestCluster,
    ns: TestNamespace,
    sim: NodeSimulator,
    daemons: Vec<Daemon>,
    _dir: tempfile::TempDir,
}

/// A namespace, a macvlan+spiderpool NAD as the cluster network, a simulator of 2 nodes and their daemons.
async fn setup(prefix: &str, default_pools: &[&str]) -> Result<Setup> {
    let cluster = TestCluster::shared().await?;
    let client = cluster.client()?;
    ipam::install_spiderpool_crds(&client).await?;
    tools::debian_cni_plugin("macvlan")?;
    let plugin = ipam::plugin_binary(false)?;
    let ns = cluster.namespace(prefix).await?;
    create_nad(
        &ns,
        "underlay",
        json!({"type": "spiderpool", "default_ipv4_ippool": default_pools}),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let mut options = SimOptions::new(DefaultNetwork::Nad {
        namespace: ns.name().to_owned(),
        name: "underlay".to_owned(),
    });
    options
        .cni_path
        .push(plugin.parent().context("plugin dir")?.to_path_buf());
    options.node_env.push(Daemon::socket_env(dir.path()));
    let sim = NodeSimulator::start(client, options).await?;
    let daemons = sim
        .node_names()
        .iter()
        .map(|node| Daemon::start(cluster, node, dir.path(), false, &[]))
        .collect::<Result<Vec<_>>>()?;
    Ok(Setup {
        cluster,
        ns,
        sim,
        daemons,
        _dir: dir,
    })
}

/// Shuts the simulator down. Errors the tests provoke on purpose (bad annotations) and the races of
/// a pod deleted while the simulator still writes its status are expected; anything else fails.
async fn finish(setup: Setup) -> Result<()> {
    let unexpected: Vec<String> = setup
        .sim
        .take_errors()
        .into_iter()
        .filter(|e| {
            !(e.contains("not found")
                // The agent's answer to an ADD retried after the test deleted the pod.
                || (e.contains(": pod ") && e.ends_with(" does not exist"))
                || e.contains("annotation ipam.spidernet.io/ippool: invalid JSON")
                || e.contains("nodeName does not include node"))
        })
        .collect();
    ensure!(unexpected.is_empty(), "node simulator errors: {unexpected:#?}");
    setup.sim.shutdown().await
}

async fn create_pod(setup: &Setup, name: &str, annotations: Value) -> Result<()> {
    let mut spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(json!({
        "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
        "terminationGracePeriodSeconds": 0,
    }))?;
    setup.sim.place(&mut spec);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations, "labels": {"app": name}},
        "spec": spec,
    }))?;
    setup.ns.api::<Pod>().create(&PostParams::default(), &pod).await?;
    Ok(())
}

use spiderpool_tests::wait_for;

/// Every daemon's log, for a failure message.
fn daemon_logs(setup: &Setup) -> String {
    setup
        .daemons
        .iter()
        .map(|d| d.log())
        .collect::<Vec<_>>()
        .join("\n")
}

fn in_pod(setup: &Setup, pod: &str, args: &[&str]) -> Result<String> {
    setup.sim.exec_in_pod(setup.ns.name(), pod, args)
}

/// The IPv4 address (with prefix) of an interface inside a pod.
fn pod_address(setup: &Setup, pod: &str, dev: &str) -> Result<String> {
    let out = in_pod(setup, pod, &["ip", "-4", "-o", "addr", "show", "dev", dev])?;
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("{pod}: no IPv4 address on {dev}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_addresses_routes_and_gateways_by_every_selection_rule() -> Result<()> {
    init_tracing();
    let prefix = "ipam-rules";
    let setup = setup(prefix, &[]).await?;
    let ns = setup.ns.name().to_owned();
    let client = setup.cluster.client()?;
    let p = |s: &str| format!("{ns}-{s}");
    // Pools: one per rule, distinct ranges of the simulator's underlay 172.31.0.0/16.
    ipam::create_pool(
        &client,
        &p("netconf"),
        json!({"subnet": "172.31.0.0/16", "ips": ["172.31.201.10-172.31.201.19"], "gateway": "172.31.0.1"}),
    )
    .await?;
    ipam::create_pool(
        &client,
        &p("ns-default"),
        json!({"subnet": "172.31.0.0/16", "ips": ["172.31.202.10-172.31.202.19"], "gateway": "172.31.0.1",
        "routes": [{"dst": "10.99.0.0/16", "gw": "172.31.0.254"}]}),
    )
    .await?;
    ipam::create_pool(
        &client,
        &p("annotated"),
        json!({"subnet": "172.31.0.0/16", "ips": ["172.31.203.10-172.31.203.19"], "gateway": "172.31.0.1"}),
    )
    .await?;
    ipam::create_pool(
        &client,
        &p("second-nic"),
        json!({"subnet": "172.31.0.0/16", "ips": ["172.31.204.10-172.31.204.19"], "gateway": "172.31.0.1"}),
    )
    .await?;
    ipam::create_pool(&client, &p("elsewhere"), json!({"subnet": "172.31.0.0/16", "ips": ["172.31.205.10-172.31.205.19"], "nodeName": ["no-such-node"]})).await?;
    // The namespace's default pools (rule 4) win over the "data" NAD's default_ipv4_ippool (rule 5),
    // as upstream: a pod attached to "data" gets its net1 from the namespace default too. (Rule 5
    // alone is exercised by the contention test.)
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
            "ipam.spidernet.io/default-ipv4-ippool": json!([p("ns-default")]).to_string()}}})),
        )
        .await?;
    create_nad(
        &setup.ns,
        "data",
        json!({"type": "spiderpool", "default_ipv4_ippool": [p("netconf")]}),
    )
    .await?;

    create_pod(&setup, "plain", json!({})).await?;
    create_pod(
        &setup,
        "annotated",
        json!({"ipam.spidernet.io/ippool": json!({"ipv4": [format!("{ns}-annot*")]}).to_string(),
        "ipam.spidernet.io/routes": json!([{"dst": "10.98.0.0/16", "gw": "172.31.0.253"}]).to_string()}),
    )
    .await?;
    create_pod(
        &setup,
        "two-nics",
        json!({
        "k8s.v1.cni.cncf.io/networks": "data",
        "ipam.spidernet.io/ippools": json!([
            {"interface": "eth0", "ipv4": [p("annotated")]},
            {"interface": "net1", "ipv4": [p("second-nic")], "cleangateway": true}]).to_string()}),
    )
    .await?;
    create_pod(
        &setup,
        "second-net",
        json!({"k8s.v1.cni.cncf.io/networks": "data"}),
    )
    .await?;
    create_pod(
        &setup,
        "malformed",
        json!({"ipam.spidernet.io/ippool": "{not json"}),
    )
    .await?;
    create_pod(
        &setup,
        "filtered",
        json!({"ipam.spidernet.io/ippool": json!({"ipv4": [p("elsewhere")]}).to_string()}),
    )
    .await?;

    for pod in ["plain", "annotated", "two-nics", "second-net"] {
        setup.sim.wait_pod(&ns, pod, Duration::from_secs(60)).await?;
    }
    let within =
        |addr: &str, third: u8| addr.starts_with(&format!("172.31.{third}.")) && addr.ends_with("/16");
    let plain = pod_address(&setup, "plain", "eth0")?;
    ensure!(within(&plain, 202), "plain pod (namespace default pool): {plain}");
    let annotated = pod_address(&setup, "annotated", "eth0")?;
    ensure!(
        within(&annotated, 203),
        "annotated pod (ippool wildcard): {annotated}"
    );
    let two_eth0 = pod_address(&setup, "two-nics", "eth0")?;
    let two_net1 = pod_address(&setup, "two-nics", "net1")?;
    ensure!(
        within(&two_eth0, 203) && within(&two_net1, 204),
        "two-nics: {two_eth0} {two_net1}"
    );
    let second = pod_address(&setup, "second-net", "net1")?;
    ensure!(
        within(&second, 202),
        "net1: the namespace default wins over the NAD's default_ipv4_ippool: {second}"
    );

    // Routes: default via the pool gateway; the pool's routes; the annotation's routes; none on a
    // clean-gateway NIC.
    let routes = in_pod(&setup, "plain", &["ip", "route"])?;
    ensure!(
        routes.contains("default via 172.31.0.1 dev eth0"),
        "plain: {routes}"
    );
    ensure!(
        routes.contains("10.99.0.0/16 via 172.31.0.254 dev eth0"),
        "plain (pool routes): {routes}"
    );
    let routes = in_pod(&setup, "annotated", &["ip", "route"])?;
    ensure!(
        routes.contains("10.98.0.0/16 via 172.31.0.253 dev eth0"),
        "annotated: {routes}"
    );
    let routes = in_pod(&setup, "second-net", &["ip", "route"])?;
    ensure!(
        routes.contains("10.99.0.0/16 via 172.31.0.254 dev net1"),
        "second-net: {routes}"
    );
    let routes = in_pod(&setup, "two-nics", &["ip", "route"])?;
    ensure!(
        routes.contains("default via 172.31.0.1 dev eth0")
            && !routes.contains("default via 172.31.0.1 dev net1"),
        "two-nics: {routes}"
    );

    // Pods on the same underlay reach each other.
    let target = annotated.split('/').next().unwrap_or_default();
    in_pod(&setup, "plain", &["ping", "-c", "1", "-W", "2", target]).context("plain -> annotated ping")?;
    setup.sim.check_pod(&ns, "two-nics").await.context("CNI CHECK")?;

    // SpiderEndpoints record what each pod holds, with the node.
    let ep = setup.ns.api::<SpiderEndpoint>().get("two-nics").await?;
    let status = ep.status.context("endpoint without status")?;
    let nics: Vec<&str> = status.current.ips.iter().map(|d| d.nic.as_str()).collect();
    ensure!(nics == ["eth0", "net1"], "endpoint interfaces {nics:?}");
    ensure!(
        status.current.ips[0].ipv4.as_deref() == Some(two_eth0.as_str()),
        "{:?}",
        status.current.ips[0]
    );
    ensure!(status.owner_controller_type == "Pod");

    // The malformed annotation fails that pod only, naming the annotation; the filtered pod says why.
    let errors = wait_for(
        "the malformed and filtered pods' errors",
        Duration::from_secs(30),
        || {
            let errors = setup.sim.errors();
            async move {
                let has = |needle: &str| errors.iter().any(|e| e.contains(needle));
                Ok((has("annotation ipam.spidernet.io/ippool: invalid JSON")
                    && has("nodeName does not include node"))
                .then_some(errors))
            }
        },
    )
    .await?;
    ensure!(
        setup.sim.pod(&ns, "malformed").is_none() && setup.sim.pod(&ns, "filtered").is_none(),
        "{errors:?}"
    );

    // Counters are true; deleting the pods frees everything.
    let records = ipam::pool_records(&client, &p("annotated")).await?;
    ensure!(records.len() == 2, "annotated pool records {records:?}");
    for pod in [
        "plain",
        "annotated",
        "two-nics",
        "second-net",
        "malformed",
        "filtered",
    ] {
        setup
            .ns
            .api::<Pod>()
            .delete(pod, &DeleteParams::default().grace_period(0))
            .await?;
    }
    for pool in ["ns-default", "annotated", "second-nic"] {
        let name = p(pool);
        let c = client.clone();
        wait_for(&format!("pool {name} empty"), Duration::from_secs(60), || {
            let (c, name) = (c.clone(), name.clone());
            async move { Ok(ipam::pool_records(&c, &name).await?.is_empty().then_some(())) }
        })
        .await
        .with_context(|| format!("simulator errors: {:?}", setup.sim.errors()))?;
    }
    let left = setup
        .ns
        .api::<SpiderEndpoint>()
        .list(&Default::default())
        .await?
        .items;
    ensure!(
        left.is_empty(),
        "endpoints left: {:?}",
        left.iter().map(|e| e.metadata.name.clone()).collect::<Vec<_>>()
    );
    finish(setup).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_members_keep_their_addresses_across_recreation_and_scaling() -> Result<()> {
    init_tracing();
    let prefix = "ipam-sts";
    let setup = setup(prefix, &[]).await?;
    let ns = setup.ns.name().to_owned();
    let client = setup.cluster.client()?;
    let pool = format!("{ns}-db");
    ipam::create_pool(
        &client,
        &pool,
        json!({"subnet": "172.31.0.0/16", "ips": ["172.31.210.10-172.31.210.40"], "gateway": "172.31.0.1"}),
    )
    .await?;
    let mut template_spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(json!({
        "containers": [{"name": "db", "image": "registry.invalid/db:1"}], "terminationGracePeriodSeconds": 0}))?;
    setup.sim.place(&mut template_spec);
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"replicas": 3, "serviceName": "db", "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"},
                "annotations": {"ipam.spidernet.io/ippool": json!({"ipv4": [pool]}).to_string()}},
                "spec": template_spec}}}))?;
    let sets = setup.ns.api::<StatefulSet>();
    sets.create(&PostParams::default(), &sts).await?;

    let running = |names: Vec<&'static str>| {
        let sim = &setup.sim;
        let ns = ns.clone();
        async move {
            let mut ips = BTreeMap::new();
            for name in names {
                let pod = sim.wait_pod(&ns, name, Duration::from_secs(90)).await?;
                ips.insert(
                    name,
                    (pod.uid.clone(), pod.pod_ips.first().cloned().unwrap_or_default()),
                );
            }
            Result::<_>::Ok(ips)
        }
    };
    let first = running(vec!["db-0", "db-1", "db-2"]).await?;
    tracing::info!(?first, "members running");

    // A recreated member (new UID) gets its address back.
    setup
        .ns
        .api::<Pod>()
        .delete("db-1", &DeleteParams::default().grace_period(0))
        .await?;
    let recreated = wait_for("db-1 recreated with a new UID", Duration::from_secs(90), || {
        let sim = &setup.sim;
        let ns = ns.clone();
        let old_uid = first["db-1"].0.clone();
        async move { Ok(sim.pod(&ns, "db-1").filter(|p| p.uid != old_uid)) }
    })
    .await?;
    ensure!(
        recreated.pod_ips.first() == Some(&first["db-1"].1),
        "db-1 came back with {:?}, had {}",
        recreated.pod_ips,
        first["db-1"].1
    );

    // Scale down to 1: db-1 and db-2 go, their addresses stay reserved for them; a new pod in the same
    // pool does not get them.
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await?;
    wait_for("db-1 and db-2 gone", Duration::from_secs(90), || {
        let sim = &setup.sim;
        let ns = ns.clone();
        async move { Ok((sim.pod(&ns, "db-1").is_none() && sim.pod(&ns, "db-2").is_none()).then_some(())) }
    })
    .await?;
    create_pod(
        &setup,
        "intruder",
        json!({"ipam.spidernet.io/ippool": json!({"ipv4": [pool]}).to_string()}),
    )
    .await?;
    let intruder = setup
        .sim
        .wait_pod(&ns, "intruder", Duration::from_secs(60))
        .await?;
    let intruder_ip = intruder.pod_ips.first().cloned().unwrap_or_default();
    ensure!(
        first.values().all(|(_, ip)| ip != &intruder_ip),
        "a new pod got a scaled-down member's address {intruder_ip}; members had {first:?}; daemon logs:\n{}",
        daemon_logs(&setup)
    );

    // Scale up again: the members get their old addresses.
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await?;
    wait_for("db-1 and db-2 back", Duration::from_secs(90), || {
        let sim = &setup.sim;
        let ns = ns.clone();
        async move { Ok((sim.pod(&ns, "db-1").is_some() && sim.pod(&ns, "db-2").is_some()).then_some(())) }
    })
    .await?;
    let again = running(vec!["db-0", "db-1", "db-2"]).await?;
    for name in ["db-0", "db-1", "db-2"] {
        ensure!(
            again[name].1 == first[name].1,
            "{name}: {} after scaling, had {}; daemon logs:\n{}",
            again[name].1,
            first[name].1,
            daemon_logs(&setup)
        );
    }
    let ep = setup.ns.api::<SpiderEndpoint>().get("db-2").await?;
    ensure!(
        ep.metadata.owner_references.as_ref().is_none_or(|r| r.is_empty()),
        "a StatefulSet member's endpoint must not be owned by the pod"
    );
    ensure!(ep.status.map(|s| s.owner_controller_type) == Some("StatefulSet".to_owned()));

    // Deleting the StatefulSet releases the members' addresses when their pods go.
    sets.delete("db", &DeleteParams::default()).await?;
    for name in ["db-0", "db-1", "db-2", "intruder"] {
        let _ = setup
            .ns
            .api::<Pod>()
            .delete(name, &DeleteParams::default().grace_period(0))
            .await;
    }
    let c = client.clone();
    wait_for(
        "the pool empty after the StatefulSet is gone",
        Duration::from_secs(90),
        || {
            let (c, pool) = (c.clone(), pool.clone());
            async move { Ok(ipam::pool_records(&c, &pool).await?.is_empty().then_some(())) }
        },
    )
    .await
    .with_context(|| format!("simulator errors: {:?}", setup.sim.errors()))?;
    finish(setup).await
}
