//! The shell against the host kernel, without the node daemon: a node namespace (uplink `eth0`
//! towards a gateway namespace), a pod namespace with a macvlan `eth0` (and a second one, `net1`)
//! made the way the macvlan plugin makes them, then ADD and DEL as the plugin runs them (from a
//! thread inside the node's namespace). Every namespace is this test run's own. Needs root and
//! iproute2.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod support;

use std::net::IpAddr;
use std::process::Command;

use spiderpool_coordinator::config::Mode;
use spiderpool_coordinator::plugin::{KernelNetwork, Network};
use support::{config, node_state, on_node, place, sh};

const CONTAINER: &str = "5ca1ab1e0123456789";

#[test]
fn underlay_add_wires_the_pod_to_its_node_and_del_leaves_the_node_as_it_was() {
    let place = place();
    let pod_path = format!("/run/netns/{}", place.name("pod"));
    let before = node_state(&place);
    let config = config();
    // The gateway knows the pod's addresses under an old MAC, as a segment does after a pod with
    // those addresses went.
    let gateway = place.name("gw");
    sh(
        &gateway,
        "ip neigh replace 10.6.0.10 lladdr 02:00:00:00:00:99 dev up0 nud stale; \
         ip neigh replace fd00:6::10 lladdr 02:00:00:00:00:99 dev up0 nud stale",
    );
    let added = on_node(&place, || {
        KernelNetwork.add(&config, "eth0", CONTAINER, &pod_path)
    })
    .unwrap();
    assert_eq!(added.plan.mode, Mode::Underlay);
    let pod = place.name("pod");
    let node = place.name("node");
    // The MAC change was announced (gratuitous ARP, unsolicited NA): the gateway has the new MAC.
    for address in ["10.6.0.10", "fd00:6::10"] {
        let entry = sh(&gateway, &format!("ip neigh show {address} dev up0"));
        assert!(entry.contains("lladdr 0a:1b:0a:06:00:0a"), "{address}: {entry}");
    }
    // The pair, the MAC from the address, the queue length.
    let links = sh(&pod, "ip -o link show");
    assert!(links.contains("veth0@"), "{links}");
    assert!(links.contains("link/ether 0a:1b:0a:06:00:0a"), "{links}");
    assert!(links.contains("qlen 3000"), "{links}");
    assert!(sh(&node, "ip -o link show").contains("veth5ca1ab1e012@"));
    // The node is reached through veth0, and reaches the pod through its end.
    let route = sh(&pod, "ip route get 10.6.0.2");
    assert!(route.contains("dev veth0 src 10.6.0.10"), "{route}");
    assert!(sh(&pod, "ip -6 route get fd00:6::2").contains("dev veth0"));
    assert!(sh(&pod, "ip route get 10.96.0.1").contains("via 10.6.0.2 dev veth0"));
    assert!(sh(&node, "ip route get 10.6.0.10").contains("dev veth5ca1ab1e012"));
    sh(&pod, "ping -c1 -W2 10.6.0.2 >/dev/null");
    sh(&node, "ping -c1 -W2 10.6.0.10 >/dev/null");
    sh(&pod, "ping -6 -c1 -W2 fd00:6::2 >/dev/null");
    // The reply path.
    let rules = sh(&pod, "ip rule");
    assert!(rules.contains("1000:\tfrom all fwmark 0x1 lookup 100"), "{rules}");
    assert!(sh(&pod, "iptables-save -t mangle").contains("--set-xmark 0x1/0xffffffff"));
    assert_eq!(sh(&pod, "cat /proc/sys/net/ipv4/conf/all/rp_filter").trim(), "0");
    assert!(sh(&pod, "ip -4 addr show dev veth0").contains("169.254.100.1/32"));

    // ADD again converges (nothing fails, no rule added twice).
    let again = on_node(&place, || {
        KernelNetwork.add(&config, "eth0", CONTAINER, &pod_path)
    });
    assert!(
        again.is_err(),
        "veth0 exists: a second first-interface ADD is refused"
    );

    // The second interface gets its own table; the default route stays on eth0.
    let added = on_node(&place, || {
        KernelNetwork.add(&config, "net1", CONTAINER, &pod_path)
    })
    .unwrap();
    assert_eq!(
        (added.plan.mode, added.plan.first_invoke, added.plan.table),
        (Mode::Underlay, false, 101)
    );
    let main = sh(&pod, "ip route show table main");
    assert_eq!(main.matches("default").count(), 1, "{main}");
    assert!(main.contains("default via 10.6.0.1 dev eth0"), "{main}");
    assert!(sh(&pod, "ip route show table 101").contains("default via 10.7.0.1 dev net1"));
    assert!(sh(&pod, "ip rule").contains("from 10.7.0.10 lookup 101"));

    // DEL of both interfaces, then the pod goes: the node is as it was.
    let ips = |list: &[&str]| {
        list.iter()
            .map(|ip| ip.parse::<IpAddr>().unwrap())
            .collect::<Vec<_>>()
    };
    on_node(&place, || {
        KernelNetwork.del(CONTAINER, Some(&pod_path), "net1", &ips(&["10.7.0.10"]), 500)
    })
    .unwrap();
    on_node(&place, || {
        KernelNetwork.del(
            CONTAINER,
            Some(&pod_path),
            "eth0",
            &ips(&["10.6.0.10", "fd00:6::10"]),
            500,
        )
    })
    .unwrap();
    assert_eq!(node_state(&place), before);
    // DEL again, with the namespace gone, is fine and changes nothing.
    Command::new("ip").args(["netns", "del", &pod]).status().unwrap();
    on_node(&place, || {
        KernelNetwork.del(CONTAINER, Some(&pod_path), "eth0", &[], 500)
    })
    .unwrap();
    assert_eq!(node_state(&place), before);
}

#[test]
fn overlay_add_next_to_an_overlay_eth0_and_del_leaves_the_node_as_it_was() {
    let place = place();
    let (pod, node) = (place.name("pod"), place.name("node"));
    let pod_path = format!("/run/netns/{pod}");
    // Replace the macvlan eth0 by an overlay CNI's: a veth whose node end is cali0.
    sh(&pod, "ip link del eth0");
    sh(
        &node,
        &format!(
            "ip link add cali0 type veth peer name ov0 netns {pod}; ip addr add 10.244.1.1/24 dev cali0; ip link set cali0 up"
        ),
    );
    sh(
        &pod,
        "ip link set ov0 name eth0; ip addr add 10.244.1.5/24 dev eth0; ip link set eth0 up; \
         ip route add default via 10.244.1.1 dev eth0 metric 10",
    );
    let before = node_state(&place);
    let mut config = config();
    config.mac_prefix = None;
    let added = on_node(&place, || {
        KernelNetwork.add(&config, "net1", CONTAINER, &pod_path)
    })
    .unwrap();
    assert_eq!(
        (added.plan.mode, added.plan.first_invoke, added.plan.table),
        (Mode::Overlay, true, 101)
    );
    // The node reaches net1's address through the overlay's link; the pod keeps eth0's default.
    assert!(sh(&node, "ip route show table 500").contains("10.7.0.10 dev cali0 scope link"));
    let main = sh(&pod, "ip route show table main");
    assert!(main.contains("default via 10.244.1.1 dev eth0"), "{main}");
    assert!(!main.contains("default via 10.7.0.1"), "{main}");
    assert!(sh(&pod, "ip route show table 101").contains("default via 10.7.0.1 dev net1"));
    assert!(sh(&pod, "ip route show table 100").contains("default via 10.244.1.1 dev eth0"));
    let rules = sh(&pod, "ip rule");
    assert!(rules.contains("from 10.7.0.10 lookup 101"), "{rules}");
    assert!(rules.contains("from 10.244.1.5 lookup 100"), "{rules}");
    sh(&pod, "ping -c1 -W2 10.6.0.2 >/dev/null");
    sh(&node, "ping -c1 -W2 10.7.0.10 >/dev/null");
    let ips = ["10.7.0.10".parse::<IpAddr>().unwrap()];
    on_node(&place, || {
        KernelNetwork.del(CONTAINER, Some(&pod_path), "net1", &ips, 500)
    })
    .unwrap();
    assert_eq!(node_state(&place), before);
}
