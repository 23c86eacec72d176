//! Shared by the root tests and the benchmark: a node namespace (uplink `eth0` towards a gateway
//! namespace) and a pod namespace with macvlan `eth0` and `net1` made the way the macvlan plugin
//! makes them; every namespace is this run's own. Needs root and iproute2.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "shared by the tests and the benchmark, which use different parts"
)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use spiderpool_cni_common::cni::SpecVersion;
use spiderpool_cni_common::log::LogConfig;
use spiderpool_coordinator::config::{Config, Mode};
use spiderpool_netlink::Netns;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Named namespaces removed on drop.
pub struct Place {
    names: Vec<String>,
}

impl Place {
    pub fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.names[0])
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        for role in ["gw", "node", "pod"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name(role)])
                .status();
        }
    }
}

pub fn sh(netns: &str, command: &str) -> String {
    let output = Command::new("ip")
        .args(["netns", "exec", netns, "sh", "-c", command])
        .output()
        .expect("iproute2");
    assert!(
        output.status.success(),
        "{command} in {netns}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// gateway (10.6.0.1, fd00:6::1) -- veth -- node eth0 (10.6.0.2, fd00:6::2) with macvlan children
/// in the pod: eth0 (10.6.0.10, fd00:6::10, default routes via the gateway) and net1 (10.7.0.10
/// on a second subnet the node also has, default via 10.7.0.1).
pub fn place() -> Place {
    let id = format!(
        "crdk{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let place = Place { names: vec![id] };
    let (gw, node, pod) = (place.name("gw"), place.name("node"), place.name("pod"));
    for name in [&gw, &node, &pod] {
        let status = Command::new("ip").args(["netns", "add", name]).status().unwrap();
        assert!(status.success(), "ip netns add {name} (needs root)");
        sh(
            name,
            "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0; ip link set lo up",
        );
    }
    sh(
        &node,
        &format!("ip link add eth0 type veth peer name up0 netns {gw}"),
    );
    sh(
        &gw,
        "ip addr add 10.6.0.1/16 dev up0; ip addr add 10.7.0.1/24 dev up0; ip -6 addr add fd00:6::1/64 dev up0; ip link set up0 up",
    );
    sh(
        &node,
        "ip addr add 10.6.0.2/16 dev eth0; ip addr add 10.7.0.2/24 dev eth0; ip -6 addr add fd00:6::2/64 dev eth0; ip link set eth0 up",
    );
    sh(
        &node,
        &format!("ip link add mv0 link eth0 type macvlan mode bridge; ip link set mv0 netns {pod}"),
    );
    sh(
        &node,
        &format!("ip link add mv1 link eth0 type macvlan mode bridge; ip link set mv1 netns {pod}"),
    );
    sh(
        &pod,
        "ip link set mv0 name eth0; ip link set eth0 up; ip addr add 10.6.0.10/16 dev eth0; \
         ip -6 addr add fd00:6::10/64 dev eth0; ip route add default via 10.6.0.1 dev eth0; \
         ip -6 route add default via fd00:6::1 dev eth0; \
         ip link set mv1 name net1; ip link set net1 up; ip addr add 10.7.0.10/24 dev net1; \
         ip route append default via 10.7.0.1 dev net1",
    );
    place
}

pub fn config() -> Config {
    Config {
        cni_version: SpecVersion::V1_0_0,
        name: "test".into(),
        prev_result: None,
        mode: Mode::Auto,
        tune_pod_routes: true,
        pod_default_route_nic: String::new(),
        first_nic: "eth0".into(),
        mac_prefix: Some([0x0a, 0x1b]),
        hijack: vec!["10.96.0.0/12".parse().unwrap(), "fd00:96::/108".parse().unwrap()],
        policy_routes: Vec::new(),
        host_rule_table: 500,
        pod_rp_filter: Some(0),
        tx_queue_len: Some(3000),
        veth_link_address: Some("169.254.100.1".parse().unwrap()),
        veth_mtu: 1500,
        log: LogConfig::in_file("/dev/null"),
    }
}

/// Runs `body` on a thread inside the node's namespace (where a runtime runs the plugin).
pub fn on_node<T: Send>(place: &Place, body: impl FnOnce() -> T + Send) -> T {
    let node = Netns::open(format!("/run/netns/{}", place.name("node"))).unwrap();
    node.run(body).unwrap()
}

/// What DEL must leave as it found it on the node.
pub fn node_state(place: &Place) -> String {
    sh(
        &place.name("node"),
        "ip -d link show | grep -v 'link/ether' ; ip rule; ip -6 rule; ip route show table all; \
         ip -6 route show table all; ip neigh show nud permanent; ip -6 neigh show nud permanent; \
         iptables-save | grep -v '^#'; ip6tables-save | grep -v '^#'; true",
    )
}
