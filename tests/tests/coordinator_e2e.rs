//! The coordinator end to end: real API server, real `spiderpool-agent`s, simulated nodes running the
//! chain a runtime runs for a NetworkAttachmentDefinition — Debian's macvlan, our `spiderpool` IPAM,
//! our `coordinator` — in network namespaces on the host kernel. Each test has its own simulator
//! (own node namespaces and bridge), pools and names; the one SpiderCoordinator `default` is shared,
//! and the test that flips its phase holds [`COORDINATOR`] exclusively.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use spiderpool_netlink::Netns;
use spiderpool_schema::{NetworkAttachmentDefinition, SpiderIPPool, SpiderReservedIP};
use spiderpool_tests::coordinator::{SERVICE_CIDR, set_phase, synced_coordinator};
use spiderpool_tests::daemon::{Daemon, unix_request};
use spiderpool_tests::objects::ensure_namespace;
use spiderpool_tests::{
    DefaultNetwork, NodeSimulator, SimOptions, TestCluster, TestNamespace, init_tracing, ipam, tools,
    wait_for,
};
use tokio::sync::RwLock;

#[path = "operator_support/mod.rs"]
mod operator_support;

/// Held shared by every test, exclusively by the one that makes the SpiderCoordinator not ready.
static COORDINATOR: LazyLock<RwLock<()>> = LazyLock::new(|| RwLock::new(()));

const CLUSTER_IP: &str = "10.233.0.10";

struct Setup {
    cluster: &'static TestCluster,
    ns: TestNamespace,
    sim: NodeSimulator,
    daemons: Vec<Daemon>,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn node_netns(&self) -> String {
        self.sim.nodes()[0].netns.clone()
    }

    fn node_ip(&self) -> String {
        self.sim.nodes()[0].ip.to_string()
    }

    fn on_node(&self, command: &str) -> Result<String> {
        self.sim.exec_on_node(0, &["sh", "-c", command])
    }

    fn in_pod(&self, pod: &str, command: &str) -> Result<String> {
        self.sim.exec_in_pod(self.ns.name(), pod, &["sh", "-c", command])
    }

    fn logs(&self) -> String {
        self.daemons
            .iter()
            .map(Daemon::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A macvlan + spiderpool + coordinator chain on the node's eth0, from `pools`.
fn chain(name: &str, pools: &[&str], coordinator: Value) -> Value {
    let mut coordinator = coordinator;
    coordinator["type"] = json!("coordinator");
    coordinator["logOptions"] = json!({"logLevel": "debug"});
    json!({
        "cniVersion": "1.0.0", "name": name,
        "plugins": [
            {"type": "macvlan", "master": "eth0", "mode": "bridge",
             "ipam": {"type": "spiderpool", "default_ipv4_ippool": pools}},
            coordinator,
        ],
    })
}

/// The CNI configuration of the NetworkAttachmentDefinition the operator renders for a macvlan
/// SpiderMultusConfig on the node's eth0 drawing from `pool` (stored through the mutating webhook's
/// defaults): CNI 0.3.1, macvlan + spiderpool, and the coordinator chained as every rendered NAD
/// chains it.
fn rendered_chain(namespace: &str, name: &str, pool: &str) -> Value {
    let smc: spiderpool_schema::SpiderMultusConfig = serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderMultusConfig",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"cniType": "macvlan", "macvlan": {"master": ["eth0"], "ippools": {"ipv4": [pool]}}},
    }))
    .expect("a SpiderMultusConfig");
    let stored = spiderpool_operator::webhook::multusconfig::mutate(&smc);
    let nad = spiderpool_operator::nad::render_nad(&stored).expect("renders");
    let config = nad.spec.config_json().expect("JSON").expect("a config");
    assert_eq!(
        config["plugins"].as_array().unwrap().last().unwrap()["type"],
        "coordinator"
    );
    config
}

/// A namespace, the `default` SpiderCoordinator, `nads` (name, config), the first as the cluster
/// network, a simulator of `nodes` nodes and their daemons (with `daemon_args`).
async fn setup(prefix: &str, nads: &[(&str, Value)], nodes: usize, daemon_args: &[&str]) -> Result<Setup> {
    let cluster = TestCluster::shared().await?;
    let client = cluster.client()?;
    ipam::install_spiderpool_crds(&client).await?;
    synced_coordinator(&client).await?;
    tools::debian_cni_plugin("macvlan")?;
    let spiderpool = ipam::plugin_binary(false)?;
    let coordinator = tools::workspace_binary("spiderpool-coordinator", "coordinator", false)?;
    let ns = cluster.namespace(prefix).await?;
    for (name, config) in nads {
        ipam::create_nad(&ns, name, config).await?;
    }
    let dir = tempfile::tempdir()?;
    let mut options = SimOptions::new(DefaultNetwork::Nad {
        namespace: ns.name().to_owned(),
        name: nads[0].0.to_owned(),
    });
    options.nodes = nodes;
    for plugin in [&spiderpool, &coordinator] {
        options
            .cni_path
            .push(plugin.parent().context("plugin dir")?.to_path_buf());
    }
    options.node_env.push(Daemon::socket_env(dir.path()));
    let sim = NodeSimulator::start(client, options).await?;
    let daemons = sim
        .node_names()
        .iter()
        .map(|node| Daemon::start(cluster, node, dir.path(), false, daemon_args))
        .collect::<Result<Vec<_>>>()?;
    Ok(Setup {
        cluster,
        ns,
        sim,
        daemons,
        _dir: dir,
    })
}

/// A pod bound to the simulator's first node.
async fn create_pod(setup: &Setup, name: &str, annotations: Value) -> Result<()> {
    let mut spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(json!({
        "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
        "terminationGracePeriodSeconds": 0,
    }))?;
    setup.sim.place(&mut spec);
    spec.node_name = Some(setup.sim.node_names()[0].clone());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": spec,
    }))?;
    setup.ns.api::<Pod>().create(&PostParams::default(), &pod).await?;
    Ok(())
}

/// Deletes the pod and waits until the simulator's DEL of every plugin is over: the simulator forgets
/// the pod first and removes its namespace last, so the namespace's going is the signal (a test that
/// shut the simulator down earlier would pull the node's namespace from under that DEL).
async fn delete_pod(setup: &Setup, name: &str) -> Result<()> {
    let netns = setup
        .sim
        .pod(setup.ns.name(), name)
        .map(|pod| std::path::PathBuf::from(pod.netns_path));
    setup
        .ns
        .api::<Pod>()
        .delete(name, &DeleteParams::default())
        .await?;
    let pods = setup.ns.api::<Pod>();
    wait_for(
        &format!("pod {name} torn down"),
        Duration::from_secs(60),
        || async {
            let gone = pods.get_opt(name).await?.is_none()
                && setup.sim.pod(setup.ns.name(), name).is_none()
                && netns.as_ref().is_none_or(|path| !path.exists());
            Ok(gone.then_some(()))
        },
    )
    .await
}

/// Waits until the node's uplink has its IPv6 link-local address out of duplicate address detection:
/// its `local fe80::` route appears only then (a second or two after the link comes up), and a node
/// state taken before that would differ from every later one.
async fn settle_uplink(setup: &Setup) -> Result<()> {
    wait_for(
        "the node's link-local address",
        Duration::from_secs(10),
        || async {
            let link_local = setup.on_node("ip -6 addr show dev eth0 scope link")?;
            Ok((link_local.contains("fe80::") && !link_local.contains("tentative")).then_some(()))
        },
    )
    .await
}

/// The node's state a pod's DEL must restore: links, rules, routes of every table, static
/// neighbours, the neighbour entries of its addresses, and the firewall.
fn node_state(setup: &Setup, pod_ips: &[String]) -> Result<String> {
    let mut text = setup.on_node(
        "ip -d link show; ip rule; ip -6 rule; ip route show table all; ip -6 route show table all; \
         ip neigh show nud permanent; ip -6 neigh show nud permanent; \
         iptables-save | grep -v '^#'; ip6tables-save | grep -v '^#'; true",
    )?;
    for ip in pod_ips {
        text.push_str(&setup.on_node(&format!("ip neigh show to {ip}"))?);
    }
    Ok(text)
}

/// A TCP server in a namespace answering `reply` to the first connection, then closing (a socket
/// left open would keep a deleted pod's namespace, and its links, alive).
fn serve_once(netns: &str, port: u16, reply: &'static str) -> Result<std::thread::JoinHandle<()>> {
    let netns = Netns::open(format!("/run/netns/{netns}"))?;
    let listener = netns.run(move || TcpListener::bind(("0.0.0.0", port)))??;
    Ok(std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.write_all(reply.as_bytes());
        }
    }))
}

/// Connects from a namespace to `address:port` and returns what the server said.
fn fetch(netns: &str, address: &str, port: u16) -> Result<String> {
    let netns = Netns::open(format!("/run/netns/{netns}"))?;
    let address = format!("{address}:{port}");
    let text = netns.run(move || -> std::io::Result<String> {
        let socket_address = address
            .parse()
            .map_err(|_| std::io::Error::other(format!("bad address {address}")))?;
        let mut stream = TcpStream::connect_timeout(&socket_address, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    })??;
    Ok(text)
}

fn pod_ipv4(setup: &Setup, pod: &str, dev: &str) -> Result<String> {
    let out = setup.in_pod(pod, &format!("ip -4 -o addr show dev {dev}"))?;
    out.split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .and_then(|address| address.split('/').next())
        .map(str::to_owned)
        .with_context(|| format!("{pod}: no IPv4 address on {dev}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_underlay_pod_reaches_its_node_and_a_cluster_ip_and_del_restores_the_node() -> Result<()> {
    init_tracing();
    let _shared = COORDINATOR.read().await;
    let prefix = "coord-underlay";
    let pool = format!("{prefix}-v4");
    let setup = setup(
        prefix,
        &[(
            "underlay",
            chain(
                "underlay",
                &[&pool],
                json!({"podMACPrefix": "0a:1b", "txQueueLen": 3000, "podRPFilter": 2}),
            ),
        )],
        1,
        &[],
    )
    .await?;
    let client = setup.cluster.client()?;
    ipam::create_pool(
        &client,
        &pool,
        json!({"subnet": "172.31.0.0/16", "ips": ["172.31.210.10-172.31.210.19"], "gateway": "172.31.0.1"}),
    )
    .await?;
    // A "ClusterIP" as kube-proxy makes one: DNAT in the node's namespace, to a server on the node.
    let node_ip = setup.node_ip();
    setup.on_node(&format!(
        "iptables -t nat -A PREROUTING -d {CLUSTER_IP}/32 -p tcp --dport 80 -j DNAT --to-destination {node_ip}:8081"
    ))?;
    let service = serve_once(&setup.node_netns(), 8081, "service")?;
    settle_uplink(&setup).await?;
    let before = node_state(&setup, &[])?;

    create_pod(&setup, "web", json!({})).await?;
    let pod = setup
        .sim
        .wait_pod(setup.ns.name(), "web", Duration::from_secs(60))
        .await?;
    let pod_ip = pod_ipv4(&setup, "web", "eth0")?;
    // The coordinator's wiring.
    let links = setup.in_pod("web", "ip -o link show")?;
    ensure!(links.contains("veth0@"), "{links}");
    let octets: Vec<u8> = pod_ip.split('.').map(|octet| octet.parse().unwrap()).collect();
    let mac = format!(
        "0a:1b:{:02x}:{:02x}:{:02x}:{:02x}",
        octets[0], octets[1], octets[2], octets[3]
    );
    ensure!(
        links.contains(&format!("link/ether {mac}")),
        "MAC {mac} from the address: {links}"
    );
    ensure!(links.contains("qlen 3000"), "{links}");
    ensure!(
        setup
            .in_pod("web", "cat /proc/sys/net/ipv4/conf/all/rp_filter")?
            .trim()
            == "2"
    );
    // Node <-> pod through the veth pair, as kubelet probes go.
    setup.in_pod("web", &format!("ping -c1 -W2 {node_ip}"))?;
    setup.on_node(&format!("ping -c1 -W2 {pod_ip}"))?;
    let probe = serve_once(&pod.netns, 8080, "probe")?;
    ensure!(fetch(&setup.node_netns(), &pod_ip, 8080)? == "probe");
    probe.join().expect("probe server");
    let route = setup.on_node(&format!("ip route get {pod_ip}"))?;
    ensure!(
        route.contains(&format!("dev veth{}", &pod.sandbox_id[..11])),
        "{route}"
    );
    // The ClusterIP, through the node's DNAT, and the reply back the same way.
    ensure!(
        setup
            .in_pod("web", &format!("ip route get {CLUSTER_IP}"))?
            .contains("dev veth0")
    );
    ensure!(fetch(&pod.netns, CLUSTER_IP, 80)? == "service");
    service.join().expect("service server");
    // CHECK agrees.
    setup.sim.check_pod(setup.ns.name(), "web").await?;

    delete_pod(&setup, "web").await?;
    // The kernel tears a deleted namespace down asynchronously (its macvlan, holding the uplink in
    // promiscuous mode, goes a moment later): wait a little for that, nothing else.
    let mut after = String::new();
    for _ in 0..50 {
        after = node_state(&setup, std::slice::from_ref(&pod_ip))?;
        if after == before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        after == before,
        "the node changed:\nbefore:\n{before}\nafter:\n{after}"
    );
    let records = ipam::pool_records(&client, &pool).await?;
    ensure!(records.is_empty(), "addresses left in {pool}: {records:?}");
    let errors = setup.sim.take_errors();
    ensure!(
        errors.is_empty(),
        "simulator errors: {errors:#?}\n{}",
        setup.logs()
    );
    setup.sim.shutdown().await
}

/// A network namespace on the simulator's switch (its bridge), removed on drop.
struct Neighbour {
    netns: String,
    link: String,
}

impl Neighbour {
    fn attach(setup: &Setup, role: &str, commands: &str) -> Result<Self> {
        let netns = format!("{}-{role}", setup.sim.host_prefix());
        let link = format!("{}{role}", setup.sim.host_prefix());
        let link: String = link.chars().take(15).collect();
        let bridge = format!("{}-br", setup.sim.host_prefix());
        let neighbour = Self {
            netns: netns.clone(),
            link: link.clone(),
        };
        let run = |args: &[&str]| -> Result<()> {
            let status = std::process::Command::new("ip").args(args).status()?;
            ensure!(status.success(), "ip {args:?}");
            Ok(())
        };
        run(&["netns", "add", &netns])?;
        run(&[
            "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ])?;
        run(&["link", "set", &link, "master", &bridge, "up"])?;
        let script = format!("ip link set lo up; ip link set eth0 up; {commands}");
        run(&["netns", "exec", &netns, "sh", "-c", &script])?;
        Ok(neighbour)
    }

    fn run(&self, command: &str) -> Result<String> {
        let output = std::process::Command::new("ip")
            .args(["netns", "exec", &self.netns, "sh", "-c", command])
            .output()?;
        ensure!(
            output.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.link])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn tx_packets(setup: &Setup, pod: &str, dev: &str) -> Result<u64> {
    let text = setup.in_pod(pod, &format!("cat /sys/class/net/{dev}/statistics/tx_packets"))?;
    Ok(text.trim().parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_underlay_nics_have_one_default_route_on_the_annotated_nic_and_answer_from_each() -> Result<()> {
    init_tracing();
    let _shared = COORDINATOR.read().await;
    let prefix = "coord-multinic";
    let (pool_a, pool_b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    // The NADs as the operator renders them from SpiderMultusConfigs (their namespace is the test's
    // own, which the setup makes: the rendered configuration does not depend on it).
    let namespace = format!("{prefix}-smc");
    let setup = setup(
        prefix,
        &[
            ("first", rendered_chain(&namespace, "first", &pool_a)),
            ("second", rendered_chain(&namespace, "second", &pool_b)),
        ],
        1,
        &[],
    )
    .await?;
    let client = setup.cluster.client()?;
    ipam::create_pool(
        &client,
        &pool_a,
        json!({"subnet": "172.31.0.0/16", "ips": ["172.31.211.10-172.31.211.19"], "gateway": "172.31.0.1"}),
    )
    .await?;
    ipam::create_pool(
        &client,
        &pool_b,
        json!({"subnet": "172.30.0.0/16", "ips": ["172.30.211.10-172.30.211.19"], "gateway": "172.30.0.1"}),
    )
    .await?;
    // The two subnets' gateway, and a client behind it on another subnet.
    let router = Neighbour::attach(
        &setup,
        "rt",
        "ip addr add 172.31.0.1/16 dev eth0; ip addr add 172.30.0.1/16 dev eth0; ip addr add 192.168.77.1/24 dev eth0",
    )?;
    let networks = json!([{"name": "second", "namespace": setup.ns.name(), "interface": "net1"}]).to_string();
    create_pod(
        &setup,
        "multi",
        json!({"k8s.v1.cni.cncf.io/networks": networks, "ipam.spidernet.io/default-route-nic": "net1"}),
    )
    .await?;
    setup
        .sim
        .wait_pod(setup.ns.name(), "multi", Duration::from_secs(60))
        .await?;
    let main = setup.in_pod("multi", "ip route show table main")?;
    ensure!(main.matches("default").count() == 1, "one default route: {main}");
    ensure!(
        main.contains("default via 172.30.0.1 dev net1"),
        "on net1, as annotated: {main}"
    );
    let rules = setup.in_pod("multi", "ip rule")?;
    let eth0_ip = pod_ipv4(&setup, "multi", "eth0")?;
    let net1_ip = pod_ipv4(&setup, "multi", "net1")?;
    ensure!(rules.contains(&format!("from {eth0_ip} lookup 101")), "{rules}");
    ensure!(
        setup
            .in_pod("multi", "ip route show table 101")?
            .contains("default via 172.31.0.1 dev eth0"),
        "eth0's default route moved to its table"
    );
    // Each address answers a client on another subnet from its own interface.
    for (address, dev) in [(&eth0_ip, "eth0"), (&net1_ip, "net1")] {
        let sent = tx_packets(&setup, "multi", dev)?;
        router.run(&format!("ping -c3 -i0.2 -W2 -I 192.168.77.1 {address}"))?;
        let now = tx_packets(&setup, "multi", dev)?;
        ensure!(
            now >= sent + 3,
            "replies to {address} leave {dev}: tx {sent} -> {now}"
        );
    }
    delete_pod(&setup, "multi").await?;
    drop(router);
    let errors = setup.sim.take_errors();
    ensure!(
        errors.is_empty(),
        "simulator errors: {errors:#?}\n{}",
        setup.logs()
    );
    setup.sim.shutdown().await
}

/// Waits until the simulator reports a failed ADD whose error contains `text`.
async fn wait_error(setup: &Setup, text: &str) -> Result<String> {
    let mut seen = Vec::new();
    for _ in 0..600 {
        seen.extend(setup.sim.take_errors());
        if let Some(found) = seen.iter().find(|error| error.contains(text)) {
            return Ok(found.clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "no simulator error containing {text:?}; got {seen:#?}\n{}",
        setup.logs()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_and_gateway_detection_fail_add_and_release_until_the_network_is_right() -> Result<()> {
    init_tracing();
    let _shared = COORDINATOR.read().await;
    let prefix = "coord-detect";
    let pool = format!("{prefix}-v4");
    let setup = setup(
        prefix,
        &[("underlay", chain("underlay", &[&pool], json!({})))],
        1,
        &[
            "--enable-ip-conflict-detection=true",
            "--enable-gateway-detection=true",
        ],
    )
    .await?;
    let client = setup.cluster.client()?;
    ipam::create_pool(
        &client,
        &pool,
        json!({"subnet": "172.31.0.0/16", "ips": ["172.31.212.10"], "gateway": "172.31.0.1"}),
    )
    .await?;
    // Nobody holds the gateway: ADD fails naming it.
    create_pod(&setup, "probe", json!({})).await?;
    let error = wait_error(&setup, "gateway 172.31.0.1 did not answer ARP from 172.31.212.10").await?;
    ensure!(error.contains("106"), "code 106: {error}");
    // The gateway appears, but so does another host on the pod's address: a conflict.
    let other = Neighbour::attach(
        &setup,
        "gw",
        "ip addr add 172.31.0.1/16 dev eth0; ip addr add 172.31.212.10/16 dev eth0",
    )?;
    let mac = other.run("cat /sys/class/net/eth0/address")?.trim().to_owned();
    let error = wait_error(
        &setup,
        &format!("IP conflict: 172.31.212.10 is already in use by {mac}"),
    )
    .await?;
    ensure!(error.contains("105"), "code 105: {error}");
    // The address was released each time (the pool holds one address, so every retry gets it again).
    // Once the other host lets it go, the pod starts with it.
    other.run("ip addr del 172.31.212.10/16 dev eth0")?;
    setup
        .sim
        .wait_pod(setup.ns.name(), "probe", Duration::from_secs(90))
        .await?;
    ensure!(pod_ipv4(&setup, "probe", "eth0")? == "172.31.212.10");
    // Announced after ADD: the gateway learned the pod's MAC without asking.
    let pod_mac = setup
        .in_pod("probe", "cat /sys/class/net/eth0/address")?
        .trim()
        .to_owned();
    let learned = other.run("ip neigh show 172.31.212.10")?;
    ensure!(
        learned.contains(&pod_mac),
        "gateway's entry for the pod: {learned}"
    );
    delete_pod(&setup, "probe").await?;
    let records = ipam::pool_records(&client, &pool).await?;
    ensure!(records.is_empty(), "{records:?}");
    drop(other);
    setup.sim.take_errors();
    setup.sim.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_detection_the_same_network_starts_the_pod() -> Result<()> {
    init_tracing();
    let _shared = COORDINATOR.read().await;
    let prefix = "coord-nodetect";
    let pool = format!("{prefix}-v4");
    let setup = setup(
        prefix,
        &[("underlay", chain("underlay", &[&pool], json!({})))],
        1,
        &[],
    )
    .await?;
    let client = setup.cluster.client()?;
    ipam::create_pool(
        &client,
        &pool,
        json!({"subnet": "172.31.0.0/16", "ips": ["172.31.213.10"], "gateway": "172.31.0.1"}),
    )
    .await?;
    // No gateway, and another host on the address: nothing checks, the pod starts.
    let other = Neighbour::attach(&setup, "sq", "ip addr add 172.31.213.10/16 dev eth0")?;
    create_pod(&setup, "unchecked", json!({})).await?;
    setup
        .sim
        .wait_pod(setup.ns.name(), "unchecked", Duration::from_secs(60))
        .await?;
    delete_pod(&setup, "unchecked").await?;
    drop(other);
    let errors = setup.sim.take_errors();
    ensure!(errors.is_empty(), "simulator errors: {errors:#?}");
    setup.sim.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_answers_the_coordinator_config_only_when_synced() -> Result<()> {
    init_tracing();
    let _exclusive = COORDINATOR.write().await;
    let prefix = "coord-config";
    let pool = format!("{prefix}-v4");
    let setup = setup(
        prefix,
        &[("underlay", chain("underlay", &[&pool], json!({})))],
        1,
        &[],
    )
    .await?;
    let client = setup.cluster.client()?;
    ipam::create_pool(
        &client,
        &pool,
        json!({"subnet": "172.31.0.0/16", "ips": ["172.31.214.10-172.31.214.12"], "gateway": "172.31.0.1"}),
    )
    .await?;
    // A pod the agent knows (not started: bound to no simulated node).
    let annotated: Pod = serde_json::from_value(json!({
        "metadata": {"name": "asker", "annotations": {"ipam.spidernet.io/default-route-nic": "net2"}},
        "spec": {"nodeName": "elsewhere", "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }))?;
    setup
        .ns
        .api::<Pod>()
        .create(&PostParams::default(), &annotated)
        .await?;
    let socket = setup.daemons[0].socket().to_path_buf();
    let body = json!({"podNamespace": setup.ns.name(), "podName": "asker"}).to_string();
    let (status, answer) = unix_request(&socket, "GET", "/v1/coordinator/config", Some(&body))?;
    ensure!(status == 200, "{status}: {answer}");
    let answer: Value = serde_json::from_str(&answer)?;
    ensure!(
        answer["mode"] == "auto" && answer["tunePodRoutes"] == true,
        "{answer}"
    );
    ensure!(
        answer["serviceCIDR"] == json!([SERVICE_CIDR]) && answer["overlayPodCIDR"] == json!([]),
        "{answer}"
    );
    ensure!(answer["hijackCIDR"] == json!(["169.254.0.0/16"]), "{answer}");
    ensure!(
        answer["podDefaultRouteNIC"] == "net2",
        "the pod's annotation: {answer}"
    );
    ensure!(
        answer["hostRuleTable"] == 500 && answer["vethMTU"] == 1500,
        "{answer}"
    );
    let (status, _) = unix_request(
        &socket,
        "GET",
        "/v1/coordinator/config",
        Some(&json!({"podNamespace": setup.ns.name(), "podName": "nobody"}).to_string()),
    )?;
    ensure!(status == 500, "an unknown pod: {status}");
    let (status, _) = unix_request(&socket, "GET", "/v1/coordinator/config", None)?;
    ensure!(status == 400, "no body: {status}");

    // Not Synced: the agent refuses naming why, and a pod's ADD fails with it.
    set_phase(&client, "NotReady", Some("no service CIDR found")).await?;
    let expected = "spidercoordinator default is not ready (phase \"NotReady\": no service CIDR found)";
    wait_for("the agent refusing", Duration::from_secs(10), || async {
        let (status, answer) = unix_request(&socket, "GET", "/v1/coordinator/config", Some(&body))?;
        Ok((status == 500 && answer.contains(&expected.replace('"', "\\\""))).then_some(()))
    })
    .await?;
    create_pod(&setup, "blocked", json!({})).await?;
    wait_error(&setup, "is not ready (phase").await?;
    set_phase(&client, "Synced", None).await?;
    setup
        .sim
        .wait_pod(setup.ns.name(), "blocked", Duration::from_secs(90))
        .await?;
    delete_pod(&setup, "blocked").await?;
    setup.sim.take_errors();
    setup.sim.shutdown().await
}

/// The pools a rendered NAD's IPAM section names, both families, in order.
fn nad_pools(config: &Value) -> Vec<String> {
    let ipam = &config["plugins"][0]["ipam"];
    ["default_ipv4_ippool", "default_ipv6_ippool"]
        .iter()
        .filter_map(|key| ipam[key].as_array())
        .flatten()
        .filter_map(|pool| pool.as_str().map(str::to_owned))
        .collect()
}

/// Every record of `pools` as (address, pool, pod UID), read once: with the agent's node reservations
/// and release cooldown off, the records are final when ADD and DEL answer.
async fn records(api: &Api<SpiderIPPool>, pools: &[String]) -> Result<Vec<(String, String, String)>> {
    let mut records = Vec::new();
    for pool in pools {
        let status = api.get(pool).await?.status.unwrap_or_default();
        for (ip, record) in status.allocations()? {
            records.push((ip, pool.clone(), record.pod_uid));
        }
    }
    Ok(records)
}

/// Labels a node needs for `selector` to select it.
fn labels_selected_by(selector: &LabelSelector) -> BTreeMap<String, String> {
    let mut labels = selector.match_labels.clone().unwrap_or_default();
    for expression in selector.match_expressions.iter().flatten() {
        let value = match expression.operator.as_str() {
            "In" => expression.values.iter().flatten().next().cloned(),
            "Exists" => Some("yes".to_owned()),
            _ => None,
        };
        if let Some(value) = value {
            labels.insert(expression.key.clone(), value);
        }
    }
    labels
}

/// Every NetworkAttachmentDefinition the example topologies render starts a pod on a simulated node
/// with its chain as rendered (macvlan with the render's options, our IPAM on the render's pools, the
/// coordinator with the render's values over the cluster's defaults), and its DEL gives the addresses
/// back. Two things belong to the simulated node instead of a real one: the master link, made on the
/// node as a macvlan of its uplink under the name the NAD gives (on a real node the topology's
/// interface task, the `ifacer` a NAD chains first, or the admin makes it; the host kernel has no
/// VLANs or bonds, so a leading `ifacer` is left out here), and the node's labels, set to the rack of
/// the first pool of the NAD the pod may take. The examples' ipvlan networks run in the kernel tier
/// (coordinator_vm.rs): the host kernel has no ipvlan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_nad_starts_a_pod_with_the_coordinator_chained() -> Result<()> {
    init_tracing();
    let _shared = COORDINATOR.read().await;
    // No node reservations and no release cooldown: the records are final when ADD and DEL answer.
    let setup = setup(
        "coord-examples",
        &[("none", chain("none", &["none"], json!({})))],
        1,
        &["--node-reservation-size=0", "--release-cooldown-ms=0"],
    )
    .await?;
    let client = setup.cluster.client()?;
    let node = setup.sim.node_names()[0].clone();
    let pools_api: Api<SpiderIPPool> = Api::all(client.clone());
    let reserved_api: Api<SpiderReservedIP> = Api::all(client.clone());
    let (mut started, mut ipvlan) = (Vec::new(), Vec::new());
    for file in operator_support::example_files("")? {
        let mut network = operator_support::example(&file)?;
        let suffix = operator_support::suffix();
        for namespace in operator_support::localize(&mut network, &suffix) {
            ensure_namespace(&client, &namespace).await?;
        }
        let rendered = spiderpool_operator::compile::compile(&network)
            .map_err(|problems| anyhow::anyhow!("{file}: {problems:?}"))?;
        for reserved in &rendered.reserved_ips {
            reserved_api.create(&PostParams::default(), reserved).await?;
        }
        for pool in &rendered.ip_pools {
            pools_api.create(&PostParams::default(), pool).await?;
        }
        for (index, nad) in rendered.network_attachment_definitions.iter().enumerate() {
            let namespace = nad.metadata.namespace.clone().unwrap_or_default();
            let name = nad.metadata.name.clone().unwrap_or_default();
            let mut config = nad.spec.config_json()?.context("a rendered NAD has a config")?;
            // `ifacer` makes the VLAN or bond master first; the host kernel has neither (its
            // own tests run in the kernel tier, vm_ifacer.rs), so the master is made below.
            let plugins = config["plugins"].as_array_mut().context("a plugin list")?;
            if plugins.first().is_some_and(|p| p["type"] == "ifacer") {
                plugins.remove(0);
            }
            let plugins = plugins.clone();
            ensure!(
                plugins.last().is_some_and(|p| p["type"] == "coordinator"),
                "{file}: {namespace}/{name} chains no coordinator: {config}"
            );
            match plugins[0]["type"].as_str() {
                Some("macvlan") => {}
                Some("ipvlan") => {
                    ipvlan.push(format!("{file}: {namespace}/{name}"));
                    continue;
                }
                other => anyhow::bail!("{file}: {namespace}/{name}: main plugin {other:?} has no test tier"),
            }
            // The master, with the MTU the network asks for (a jumbo-frame network's bond has it).
            let master = plugins[0]["master"].as_str().context("macvlan master")?;
            let mtu = plugins[0]["mtu"]
                .as_u64()
                .filter(|mtu| *mtu > 1500)
                .unwrap_or(1500);
            setup.on_node(&format!(
                "ip link show {master} >/dev/null 2>&1 || \
                 {{ ip link set eth0 mtu $(( $(cat /sys/class/net/eth0/mtu) > {mtu} ? $(cat /sys/class/net/eth0/mtu) : {mtu} )) && \
                    ip link add {master} link eth0 mtu {mtu} type macvlan mode bridge && ip link set {master} up; }}"
            ))?;
            // The rack of the first pool a plain pod may take (fixed-address pools want their app).
            let pools = nad_pools(&config);
            let rack = rendered
                .ip_pools
                .iter()
                .filter(|pool| pool.spec.pod_affinity.is_none())
                .find(|pool| pools.contains(pool.metadata.name.as_ref().unwrap()))
                .with_context(|| format!("{file}: {namespace}/{name}: no pool for a plain pod"))?
                .spec
                .node_affinity
                .as_ref()
                .map(labels_selected_by)
                .unwrap_or_default();
            let labels = json!({"metadata": {"labels": rack}});
            Api::<Node>::all(client.clone())
                .patch(&node, &PatchParams::default(), &Patch::Merge(&labels))
                .await?;
            let mut nad = nad.clone();
            nad.spec.config = config.to_string();
            Api::<NetworkAttachmentDefinition>::namespaced(client.clone(), &namespace)
                .create(&PostParams::default(), &nad)
                .await?;
            let pod_name = format!("example-{index}");
            let mut spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(json!({
                "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
                "terminationGracePeriodSeconds": 0,
            }))?;
            setup.sim.place(&mut spec);
            spec.node_name = Some(node.clone());
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": pod_name, "namespace": namespace,
                             "annotations": {"v1.multus-cni.io/default-network": format!("{namespace}/{name}")}},
                "spec": spec,
            }))?;
            let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            pods.create(&PostParams::default(), &pod).await?;
            // What a failure below shows: the simulator's errors and the agent's log.
            let context = || {
                format!(
                    "{file}: {namespace}/{name}\nsimulator errors: {:#?}\n{}",
                    setup.sim.errors(),
                    setup.logs()
                )
            };
            let up = setup
                .sim
                .wait_pod(&namespace, &pod_name, Duration::from_secs(60))
                .await
                .with_context(context)?;
            // Each address is recorded for the pod by one of the NAD's pools.
            let held = records(&pools_api, &pools).await?;
            for ip in &up.pod_ips {
                let holders: Vec<_> = held
                    .iter()
                    .filter(|(pool_ip, _, uid)| pool_ip == ip && *uid == up.uid)
                    .collect();
                ensure!(holders.len() == 1, "{file}: {ip} held by {holders:?}");
            }
            ensure!(
                held.len() == up.pod_ips.len(),
                "{file}: {held:?} for {:?}",
                up.pod_ips
            );
            // The coordinator ran: the pod reaches its node through veth0, in underlay mode.
            let route =
                setup
                    .sim
                    .exec_in_pod(&namespace, &pod_name, &["ip", "route", "get", &setup.node_ip()])?;
            ensure!(route.contains("dev veth0"), "{file}: {namespace}/{name}: {route}");
            pods.delete(&pod_name, &DeleteParams::default()).await?;
            wait_for(
                &format!("{namespace}/{pod_name} torn down"),
                Duration::from_secs(60),
                || async {
                    let gone = pods.get_opt(&pod_name).await?.is_none()
                        && setup.sim.pod(&namespace, &pod_name).is_none();
                    Ok(gone.then_some(()))
                },
            )
            .await
            .with_context(context)?;
            wait_for(
                &format!("{pools:?} released"),
                Duration::from_secs(60),
                || async { Ok(records(&pools_api, &pools).await?.is_empty().then_some(())) },
            )
            .await
            .with_context(context)?;
            started.push(format!("{file}: {namespace}/{name}"));
        }
        for pool in &rendered.ip_pools {
            pools_api
                .delete(pool.metadata.name.as_ref().unwrap(), &DeleteParams::default())
                .await?;
        }
        for reserved in &rendered.reserved_ips {
            reserved_api
                .delete(reserved.metadata.name.as_ref().unwrap(), &DeleteParams::default())
                .await?;
        }
    }
    tracing::info!(?started, ?ipvlan, "example NADs");
    ensure!(started.len() >= 10, "too few example NADs ran: {started:#?}");
    // The one ipvlan network of the examples is the one the kernel tier runs.
    ensure!(
        ipvlan.len() == 1
            && ipvlan[0].starts_with("dual-stack.yaml: shop-")
            && ipvlan[0].ends_with("/backend"),
        "the examples' ipvlan NADs changed; the kernel tier (coordinator_vm.rs) covers dual-stack's backend only: {ipvlan:?}"
    );
    Ok(())
}
