//! Plans for every mode and option, read as `ip`-like lines.
#![allow(clippy::unwrap_used, reason = "test code")]

use std::net::IpAddr;

use spiderpool_cni_common::cni::SpecVersion;
use spiderpool_cni_common::log::LogConfig;

use super::*;
use crate::config::{Config, Mode, PolicyRoute};

const CONTAINER: &str = "c0ffee1234567890";
const HOST_VETH: &str = "vethc0ffee12345";
const POD_VETH_MAC: Mac = [0x0a, 0, 0, 0, 0, 0xa1];
const HOST_VETH_MAC: Mac = [0x0a, 0, 0, 0, 0, 0xb1];

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn config() -> Config {
    Config {
        cni_version: SpecVersion::V1_0_0,
        name: "macvlan-ens192".into(),
        prev_result: None,
        mode: Mode::Auto,
        tune_pod_routes: true,
        pod_default_route_nic: String::new(),
        first_nic: "eth0".into(),
        mac_prefix: None,
        hijack: vec![net("10.96.0.0/12"), net("169.254.0.0/16")],
        policy_routes: Vec::new(),
        host_rule_table: 500,
        pod_rp_filter: Some(0),
        tx_queue_len: None,
        veth_link_address: None,
        veth_mtu: 1500,
        log: LogConfig::in_file("/dev/null"),
    }
}

fn link(index: u32, name: &str) -> LinkState {
    LinkState {
        index,
        name: name.into(),
        up: true,
        ethernet_like: name != "lo",
        mac: Some([0x0a, 0, 0, 0, 0, u8::try_from(index).unwrap()]),
        peer: None,
        kind: Some("macvlan".into()),
    }
}

fn address(index: u32, text: &str) -> Address {
    Address {
        index,
        address: net(text),
        link_scope: false,
    }
}

fn route(table: u32, destination: &str, gateway: Option<&str>, oif: u32) -> Route {
    let mut route = Route::new(table, net(destination), oif, gateway.map(ip));
    route.scope = if gateway.is_some() {
        Scope::Universe
    } else {
        Scope::Link
    };
    route
}

/// A pod whose `eth0` (index 2) has `addresses` and a default route through `gateways`, as the
/// main plugin left it.
fn pod_with_eth0(addresses: &[&str], gateways: &[&str]) -> PodState {
    let mut pod = PodState {
        links: vec![link(1, "lo"), link(2, "eth0")],
        addresses: vec![address(1, "127.0.0.1/8")],
        routes: Vec::new(),
    };
    for text in addresses {
        pod.addresses.push(address(2, text));
        let subnet = net(text).trunc();
        pod.routes.push(route(TABLE_MAIN, &subnet.to_string(), None, 2));
    }
    for gateway in gateways {
        let default = if ip(gateway).is_ipv4() {
            "0.0.0.0/0"
        } else {
            "::/0"
        };
        pod.routes.push(route(TABLE_MAIN, default, Some(gateway), 2));
    }
    pod
}

/// A node with `ens192` (index 3) on the pods' subnet and `docker0`, the pod addresses reached
/// from its `ens192` addresses.
fn host(sources: &[(&str, &str)], ens192: &[&str]) -> HostState {
    let mut addresses = vec![
        ("lo".to_owned(), ip("127.0.0.1")),
        ("docker0".to_owned(), ip("172.17.0.1")),
    ];
    addresses.extend(ens192.iter().map(|text| ("ens192".to_owned(), ip(text))));
    addresses.push(("ens192".to_owned(), ip("fe80::1")));
    HostState {
        sources: sources
            .iter()
            .map(|(pod, source)| (ip(pod), ip(source)))
            .collect(),
        addresses,
        ..HostState::default()
    }
}

fn request<'a>(config: &'a Config, ifname: &'a str) -> AddRequest<'a> {
    AddRequest {
        config,
        ifname,
        container_id: CONTAINER,
        veth_macs: (POD_VETH_MAC, HOST_VETH_MAC),
    }
}

fn lines(plan: &Plan) -> Vec<String> {
    plan.steps.iter().map(ToString::to_string).collect()
}

fn snapshot(pod: PodState, host: HostState) -> Snapshot {
    Snapshot { pod, host }
}

const PREROUTING_MARK: &str = "-A PREROUTING -i veth0 -m conntrack --ctstate NEW -j MARK --set-xmark 0x1/0xffffffff ; -A PREROUTING -m mark --mark 0x1 -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff ; -A OUTPUT -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff";

#[test]
fn underlay_first_interface_ipv4() {
    let mut node = host(&[("10.6.0.10", "10.6.0.2")], &["10.6.0.2", "192.168.1.5"]);
    // A stale neighbour entry and a stale host route for the address, from an earlier pod.
    node.neighbours.push(Neighbour {
        index: 3,
        ip: ip("10.6.0.10"),
        mac: Some([0x0a, 9, 9, 9, 9, 9]),
        permanent: false,
    });
    node.routes.push(route(500, "10.6.0.10/32", None, 7));
    let config = config();
    let plan = plan_add(
        &request(&config, "eth0"),
        &snapshot(pod_with_eth0(&["10.6.0.10/16"], &["10.6.0.1"]), node),
    )
    .unwrap();
    assert_eq!(
        (plan.mode, plan.first_invoke, plan.table),
        (Mode::Underlay, true, 101)
    );
    assert_eq!(
        lines(&plan),
        [
            "pod: link add veth0 address 0a:00:00:00:00:a1 mtu 1500 up, peer vethc0ffee12345 address 0a:00:00:00:00:b1 on the host, up",
            "pod: sysctl net.ipv4.conf.all.rp_filter=0",
            "host: neigh del 10.6.0.10 dev #3",
            "host: neigh add 10.6.0.10 lladdr 0a:00:00:00:00:a1 dev vethc0ffee12345 nud permanent",
            "pod: neigh add 10.6.0.2 lladdr 0a:00:00:00:00:b1 dev veth0 nud permanent",
            "pod: neigh add 192.168.1.5 lladdr 0a:00:00:00:00:b1 dev veth0 nud permanent",
            "pod: route add 10.6.0.2/32 dev veth0 scope link src 10.6.0.10 table 101",
            "pod: route add 10.6.0.2/32 dev veth0 scope link src 10.6.0.10 table main",
            "pod: route add 192.168.1.5/32 dev veth0 scope link src 10.6.0.10 table 101",
            "pod: route add 192.168.1.5/32 dev veth0 scope link src 10.6.0.10 table main",
            "host: rule add IPv4 pref 1000 from all lookup 500",
            "host: route del 10.6.0.10/32 dev #7 table 500",
            "host: route add 10.6.0.10/32 dev vethc0ffee12345 scope link table 500",
            "pod: route add 10.96.0.0/12 via 10.6.0.2 dev veth0 scope global src 10.6.0.10 table main",
            "pod: route add 169.254.0.0/16 via 10.6.0.2 dev veth0 scope global src 10.6.0.10 table main",
            &format!("pod: iptables -t mangle {PREROUTING_MARK}"),
            "pod: rule add IPv4 pref 1000 from all fwmark 0x1/0xffffffff lookup 100",
            "pod: route add 0.0.0.0/0 via 10.6.0.2 dev veth0 scope global src 10.6.0.10 table 100",
        ]
    );
    assert!(plan.notes.is_empty(), "{:?}", plan.notes);
}

#[test]
fn underlay_first_interface_dual_stack() {
    let node = host(
        &[("10.6.0.10", "10.6.0.2"), ("fd00:6::10", "fd00:6::2")],
        &["10.6.0.2", "fd00:6::2"],
    );
    let mut config = config();
    config.hijack.push(net("fd00:96::/108"));
    let plan = plan_add(
        &request(&config, "eth0"),
        &snapshot(
            pod_with_eth0(&["10.6.0.10/16", "fd00:6::10/64"], &["10.6.0.1", "fd00:6::1"]),
            node,
        ),
    )
    .unwrap();
    let lines = lines(&plan);
    for expected in [
        "pod: sysctl net.ipv6.conf.all.disable_ipv6=0",
        "host: neigh add fd00:6::10 lladdr 0a:00:00:00:00:a1 dev vethc0ffee12345 nud permanent",
        "pod: neigh add fd00:6::2 lladdr 0a:00:00:00:00:b1 dev veth0 nud permanent",
        // IPv6 routes leave the source to the kernel, as upstream's.
        "pod: route add fd00:6::2/128 dev veth0 scope link table main",
        "host: rule add IPv4 pref 1000 from all lookup 500",
        "host: rule add IPv6 pref 1000 from all lookup 500",
        "host: route add fd00:6::10/128 dev vethc0ffee12345 scope link table 500",
        "pod: route add fd00:96::/108 via fd00:6::2 dev veth0 scope global table main",
        // Both families' reply-path rules in one step, which the shell runs side by side.
        &format!("pod: iptables, ip6tables -t mangle {PREROUTING_MARK}"),
        "pod: rule add IPv6 pref 1000 from all fwmark 0x1/0xffffffff lookup 100",
        "pod: route add ::/0 via fd00:6::2 dev veth0 scope global table 100",
        "pod: route add 0.0.0.0/0 via 10.6.0.2 dev veth0 scope global src 10.6.0.10 table 100",
    ] {
        assert!(
            lines.iter().any(|line| line == expected),
            "missing {expected:?} in {lines:#?}"
        );
    }
}

#[test]
fn underlay_first_interface_ipv6_only() {
    let node = host(&[("fd00:6::10", "fd00:6::2")], &["10.6.0.2", "fd00:6::2"]);
    let mut config = config();
    config.veth_link_address = Some("169.254.100.1".parse().unwrap());
    config.hijack.push(net("fd00:96::/108"));
    let plan = plan_add(
        &request(&config, "eth0"),
        &snapshot(pod_with_eth0(&["fd00:6::10/64"], &["fd00:6::1"]), node),
    )
    .unwrap();
    let lines = lines(&plan);
    // Nothing of IPv4: no veth0 address, no IPv4 host address, rule, hijack or reply route.
    assert!(
        !lines
            .iter()
            .any(|line| line.contains("10.6.0.2") || line.contains("IPv4")),
        "{lines:#?}"
    );
    assert!(!lines.iter().any(|line| line.starts_with("pod: addr add")));
    assert!(!lines.iter().any(|line| line.contains(" iptables ")));
    assert_eq!(
        plan.notes,
        [
            "hijack route 10.96.0.0/12 skipped: the node has no IPv4 address for the pod",
            "hijack route 169.254.0.0/16 skipped: the node has no IPv4 address for the pod"
        ]
    );
    assert!(lines.contains(&"host: rule add IPv6 pref 1000 from all lookup 500".to_owned()));
    assert!(lines.contains(&"pod: route add ::/0 via fd00:6::2 dev veth0 scope global table 100".to_owned()));
}

#[test]
fn the_veth_link_address_goes_on_veth0_for_ipv4() {
    let mut config = config();
    config.veth_link_address = Some("169.254.100.1".parse().unwrap());
    config.veth_mtu = 9000;
    let plan = plan_add(
        &request(&config, "eth0"),
        &snapshot(
            pod_with_eth0(&["10.6.0.10/16"], &["10.6.0.1"]),
            host(&[("10.6.0.10", "10.6.0.2")], &["10.6.0.2"]),
        ),
    )
    .unwrap();
    let lines = lines(&plan);
    assert!(lines[0].contains("mtu 9000"), "{}", lines[0]);
    assert_eq!(lines[1], "pod: addr add 169.254.100.1/32 dev veth0");
}

/// The pod after the first interface was wired: `veth0` (index 3), `eth0` (2), and `net1` (4) as
/// the second network's main plugin left it.
fn pod_with_net1(net1: &[&str], net1_gateways: &[&str]) -> PodState {
    let mut pod = pod_with_eth0(&["10.6.0.10/16"], &["10.6.0.1"]);
    pod.links.push(link(3, "veth0"));
    pod.links.push(link(4, "net1"));
    pod.addresses.push(Address {
        index: 3,
        address: net("169.254.100.1/32"),
        link_scope: false,
    });
    for text in net1 {
        pod.addresses.push(address(4, text));
        pod.routes
            .push(route(TABLE_MAIN, &net(text).trunc().to_string(), None, 4));
    }
    for gateway in net1_gateways {
        let default = if ip(gateway).is_ipv4() {
            "0.0.0.0/0"
        } else {
            "::/0"
        };
        pod.routes.push(route(TABLE_MAIN, default, Some(gateway), 4));
    }
    // Routes the first invocation made stay out of the way.
    pod.routes.push(route(TABLE_MAIN, "10.6.0.2/32", None, 3));
    pod
}

fn node_with_veth() -> HostState {
    let mut node = host(
        &[("10.6.0.10", "10.6.0.2"), ("10.7.0.10", "10.6.0.2")],
        &["10.6.0.2"],
    );
    node.veth = Some(LinkState {
        index: 9,
        mac: Some(HOST_VETH_MAC),
        ..link(9, HOST_VETH)
    });
    node
}

#[test]
fn underlay_second_interface_gets_its_own_table() {
    let mut config = config();
    config.policy_routes = vec![
        PolicyRoute {
            destination: net("10.20.0.0/16"),
            gateway: ip("10.7.0.1"),
        },
        PolicyRoute {
            destination: net("fd00:20::/64"),
            gateway: ip("fd00:7::1"),
        },
    ];
    let plan = plan_add(
        &request(&config, "net1"),
        &snapshot(pod_with_net1(&["10.7.0.10/24"], &["10.7.0.1"]), node_with_veth()),
    )
    .unwrap();
    // veth0, eth0, net1 are up: table 3 + 98.
    assert_eq!(
        (plan.mode, plan.first_invoke, plan.table),
        (Mode::Underlay, false, 101)
    );
    assert_eq!(
        lines(&plan),
        [
            "pod: sysctl net.ipv4.conf.all.rp_filter=0",
            "host: neigh add 10.7.0.10 lladdr 0a:00:00:00:00:03 dev vethc0ffee12345 nud permanent",
            "pod: route add 10.6.0.2/32 dev veth0 scope link src 10.6.0.10 table 101",
            "host: rule add IPv4 pref 1000 from all lookup 500",
            "host: route add 10.7.0.10/32 dev vethc0ffee12345 scope link table 500",
            "pod: route add 10.96.0.0/12 via 10.6.0.2 dev veth0 scope global src 10.6.0.10 table 101",
            "pod: route add 169.254.0.0/16 via 10.6.0.2 dev veth0 scope global src 10.6.0.10 table 101",
            "pod: rule add IPv4 from 10.7.0.10/32 lookup 101",
            "pod: route add 10.7.0.0/24 dev net1 scope link table 101",
            "pod: route add 0.0.0.0/0 via 10.7.0.1 dev net1 scope global table 101",
            "pod: route del 0.0.0.0/0 via 10.7.0.1 dev #4 table 254",
            "pod: route add 10.20.0.0/16 via 10.7.0.1 dev net1 scope global table 101",
        ]
    );
}

#[test]
fn the_annotated_default_route_nic_takes_the_default_route() {
    let mut config = config();
    config.pod_default_route_nic = "net1".into();
    let plan = plan_add(
        &request(&config, "net1"),
        &snapshot(pod_with_net1(&["10.7.0.10/24"], &["10.7.0.1"]), node_with_veth()),
    )
    .unwrap();
    let lines = lines(&plan);
    let tuned: Vec<&String> = lines
        .iter()
        .skip_while(|line| !line.contains("rule add IPv4 from"))
        .collect();
    // eth0's addresses and routes go to net1's table; net1 keeps the main table's default route.
    assert_eq!(
        tuned,
        [
            "pod: rule add IPv4 from 10.6.0.10/32 lookup 101",
            "pod: route add 10.6.0.0/16 dev eth0 scope link table 101",
            "pod: route add 0.0.0.0/0 via 10.6.0.1 dev eth0 scope global table 101",
            "pod: route del 0.0.0.0/0 via 10.6.0.1 dev #2 table 254",
        ]
    );
    config.pod_default_route_nic = "net7".into();
    let error = plan_add(
        &request(&config, "net1"),
        &snapshot(pod_with_net1(&["10.7.0.10/24"], &["10.7.0.1"]), node_with_veth()),
    )
    .unwrap_err();
    assert_eq!(error, PlanError::NoDefaultRouteNic("net7".into()));
}

#[test]
fn a_third_interface_counts_the_links_and_ipv6_multipath_defaults_lose_one_hop() {
    let mut pod = pod_with_net1(&["fd00:7::10/64"], &[]);
    pod.links.push(link(5, "net2"));
    pod.addresses.push(address(5, "fd00:8::10/64"));
    pod.routes.push(route(TABLE_MAIN, "fd00:8::/64", None, 5));
    pod.routes.push(route(TABLE_MAIN, "fe80::/64", None, 5));
    // The kernel merges equal-metric IPv6 defaults of two links into one multipath route.
    let mut multipath = route(TABLE_MAIN, "::/0", None, 0);
    multipath.oif = None;
    multipath.scope = Scope::Universe;
    multipath.multipath = vec![
        spiderpool_netlink::NextHop {
            oif: 4,
            gateway: Some(ip("fd00:7::1")),
        },
        spiderpool_netlink::NextHop {
            oif: 5,
            gateway: Some(ip("fd00:8::1")),
        },
    ];
    pod.routes.push(multipath);
    let mut node = node_with_veth();
    node.sources.push((ip("fd00:8::10"), ip("fd00:6::2")));
    let plan = plan_add(&request(&config(), "net2"), &snapshot(pod, node)).unwrap();
    // veth0, eth0, net1, net2: 4 + 98.
    assert_eq!(plan.table, 102);
    let lines = lines(&plan);
    let tuned: Vec<&String> = lines
        .iter()
        .skip_while(|line| !line.contains("rule add IPv6 from"))
        .collect();
    assert_eq!(
        tuned,
        [
            "pod: rule add IPv6 from fd00:8::10/128 lookup 102",
            "pod: route add fd00:8::/64 dev net2 scope link table 102",
            "pod: route add ::/0 via fd00:8::1 dev net2 scope global table 102",
            "pod: route del ::/0 via fd00:8::1 dev #5 table 254",
        ]
    );
}

#[test]
fn overlay_first_underlay_interface_next_to_an_overlay_eth0() {
    // eth0 from an overlay CNI (its peer on the node is cali12345), net1 from macvlan.
    let mut pod = pod_with_eth0(&["10.244.1.5/32"], &["169.254.1.1"]);
    pod.links[1].peer = Some(15);
    pod.links.push(link(4, "net1"));
    pod.addresses.push(address(4, "10.7.0.10/24"));
    pod.routes.push(route(TABLE_MAIN, "10.7.0.0/24", None, 4));
    pod.routes
        .push(route(TABLE_MAIN, "0.0.0.0/0", Some("10.7.0.1"), 4));
    let mut node = host(
        &[("10.244.1.5", "10.6.0.2"), ("10.7.0.10", "10.6.0.2")],
        &["10.6.0.2"],
    );
    node.addresses.push(("cali12345".into(), ip("169.254.1.1")));
    node.overlay_peer = Some(LinkState {
        mac: Some([0xee; 6]),
        ..link(15, "cali12345")
    });
    let plan = plan_add(&request(&config(), "net1"), &snapshot(pod, node)).unwrap();
    assert_eq!(
        (plan.mode, plan.first_invoke, plan.table),
        (Mode::Overlay, true, 101)
    );
    assert_eq!(
        lines(&plan),
        [
            "pod: sysctl net.ipv4.conf.all.rp_filter=0",
            "host: neigh add 10.7.0.10 lladdr 0a:00:00:00:00:02 dev cali12345 nud permanent",
            "pod: neigh add 10.6.0.2 lladdr ee:ee:ee:ee:ee:ee dev eth0 nud permanent",
            "pod: route add 10.6.0.2/32 dev eth0 scope link src 10.244.1.5 table 101",
            "pod: route add 10.6.0.2/32 dev eth0 scope link src 10.244.1.5 table main",
            "host: rule add IPv4 pref 1000 from all lookup 500",
            "host: route add 10.7.0.10/32 dev cali12345 scope link table 500",
            "pod: route add 10.96.0.0/12 via 10.6.0.2 dev eth0 scope global src 10.244.1.5 table main",
            "pod: route add 169.254.0.0/16 via 10.6.0.2 dev eth0 scope global src 10.244.1.5 table main",
            "pod: rule add IPv4 from 10.7.0.10/32 lookup 101",
            "pod: rule add IPv4 from 10.244.1.5/32 lookup 100",
            "pod: route add 0.0.0.0/0 via 169.254.1.1 dev eth0 scope global table 100",
            "pod: route add 10.7.0.0/24 dev net1 scope link table 101",
            "pod: route add 0.0.0.0/0 via 10.7.0.1 dev net1 scope global table 101",
            "pod: route del 0.0.0.0/0 via 10.7.0.1 dev #4 table 254",
        ]
    );
}

#[test]
fn overlay_second_underlay_interface_counts_links() {
    let mut pod = pod_with_eth0(&["10.244.1.5/32"], &["169.254.1.1"]);
    pod.links.push(link(4, "net1"));
    pod.links.push(link(5, "net2"));
    pod.addresses.push(address(4, "10.7.0.10/24"));
    pod.addresses.push(address(5, "10.8.0.10/24"));
    let mut node = host(&[], &["10.6.0.2"]);
    node.overlay_peer = Some(link(15, "cali12345"));
    let plan = plan_add(&request(&config(), "net2"), &snapshot(pod, node)).unwrap();
    assert_eq!(
        (plan.mode, plan.first_invoke, plan.table),
        (Mode::Overlay, false, 102)
    );
    let lines = lines(&plan);
    assert!(lines.contains(
        &"pod: route add 10.96.0.0/12 via 10.6.0.2 dev eth0 scope global src 10.244.1.5 table 102".to_owned()
    ));
    assert!(
        !lines.iter().any(|line| line.contains("table main")),
        "{lines:#?}"
    );
}

#[test]
fn modes_resolve_as_upstream_and_refuse_what_cannot_work() {
    let node = || host(&[("10.6.0.10", "10.6.0.2")], &["10.6.0.2"]);
    let mut config = config();
    // Underlay on an extra interface needs the first interface's veth0.
    let mut two = pod_with_eth0(&["10.6.0.10/16"], &[]);
    two.links.push(link(4, "net1"));
    two.addresses.push(address(4, "10.7.0.10/24"));
    config.mode = Mode::Underlay;
    assert_eq!(
        plan_add(&request(&config, "net1"), &snapshot(two.clone(), node())).unwrap_err(),
        PlanError::NoUnderlayVeth {
            ifname: "net1".into(),
            first: "eth0".into()
        }
    );
    // Auto without veth0 on an extra interface is overlay.
    config.mode = Mode::Auto;
    let mut overlay_node = node();
    overlay_node.overlay_peer = Some(link(15, "cali1"));
    assert_eq!(
        plan_add(&request(&config, "net1"), &snapshot(two.clone(), overlay_node))
            .unwrap()
            .mode,
        Mode::Overlay
    );
    // Overlay is for extra interfaces only, and not after underlay.
    config.mode = Mode::Overlay;
    assert_eq!(
        plan_add(&request(&config, "eth0"), &snapshot(two.clone(), node())).unwrap_err(),
        PlanError::OverlayOnFirst("eth0".into())
    );
    assert_eq!(
        plan_add(
            &request(&config, "net1"),
            &snapshot(pod_with_net1(&["10.7.0.10/24"], &[]), node_with_veth())
        )
        .unwrap_err(),
        PlanError::OverlayAfterUnderlay("net1".into())
    );
    // Another first interface name.
    config.mode = Mode::Auto;
    config.first_nic = "net1".into();
    assert_eq!(
        plan_add(&request(&config, "net1"), &snapshot(two.clone(), node()))
            .unwrap()
            .mode,
        Mode::Underlay
    );
    // An interface without an address, or without the interface.
    let mut bare = pod_with_eth0(&[], &[]);
    bare.addresses.push(Address {
        index: 2,
        address: net("fe80::1/64"),
        link_scope: true,
    });
    assert_eq!(
        plan_add(&request(&super::tests::config(), "eth0"), &snapshot(bare, node())).unwrap_err(),
        PlanError::NoAddress("eth0".into())
    );
    assert_eq!(
        plan_add(&request(&super::tests::config(), "net9"), &snapshot(two, node())).unwrap_err(),
        PlanError::NoInterface("net9".into())
    );
}

#[test]
fn disable_changes_nothing() {
    let mut config = config();
    config.mode = Mode::Disable;
    let plan = plan_add(
        &request(&config, "eth0"),
        &snapshot(
            pod_with_eth0(&["10.6.0.10/16"], &["10.6.0.1"]),
            host(&[], &["10.6.0.2"]),
        ),
    )
    .unwrap();
    assert_eq!(plan.mode, Mode::Disable);
    assert!(plan.steps.is_empty());
}

#[test]
fn mac_prefix_txqueuelen_and_rp_filter() {
    let mut config = config();
    config.mac_prefix = Some([0x0a, 0x1b]);
    config.tx_queue_len = Some(3000);
    config.pod_rp_filter = None;
    let plan = plan_add(
        &request(&config, "eth0"),
        &snapshot(
            pod_with_eth0(&["fd00:6::a:10/64", "10.6.0.10/16"], &[]),
            host(&[("10.6.0.10", "10.6.0.2")], &["10.6.0.2"]),
        ),
    )
    .unwrap();
    let lines = lines(&plan);
    // The IPv4 address names the MAC even when an IPv6 one comes first.
    // The kernel announces every address of the link when its MAC changes, told to by the
    // sysctls set just before.
    assert_eq!(lines[1], "pod: sysctl net.ipv4.conf.eth0.arp_notify=1");
    assert_eq!(lines[2], "pod: sysctl net.ipv6.conf.eth0.ndisc_notify=1");
    assert_eq!(lines[3], "pod: link set eth0 address 0a:1b:0a:06:00:0a");
    assert_eq!(lines[4], "pod: link set eth0 txqueuelen 3000");
    assert!(!lines.iter().any(|line| line.contains("rp_filter")));
    // An IPv4-only link: no IPv6 sysctl to set (the pod may have IPv6 off).
    let plan = plan_add(
        &request(&config, "eth0"),
        &snapshot(
            pod_with_eth0(&["10.6.0.10/16"], &[]),
            host(&[("10.6.0.10", "10.6.0.2")], &["10.6.0.2"]),
        ),
    )
    .unwrap();
    let lines = self::lines(&plan);
    assert_eq!(lines[1], "pod: sysctl net.ipv4.conf.eth0.arp_notify=1");
    assert_eq!(lines[2], "pod: link set eth0 address 0a:1b:0a:06:00:0a");
    assert!(!lines.iter().any(|line| line.contains("ndisc_notify")));
    assert_eq!(
        mac_from([0x0a, 0x1b], ip("fd00::1:a0b:c0d")),
        [0x0a, 0x1b, 0x0a, 0x0b, 0x0c, 0x0d]
    );
}

#[test]
fn mac_prefix_skips_an_ipvlan_link_and_says_so() {
    let mut config = config();
    config.mac_prefix = Some([0x0a, 0x1b]);
    config.tx_queue_len = Some(3000);
    let mut pod = pod_with_eth0(&["10.6.0.10/16"], &[]);
    for link in &mut pod.links {
        if link.name == "eth0" {
            link.kind = Some("ipvlan".into());
        }
    }
    let plan = plan_add(
        &request(&config, "eth0"),
        &snapshot(pod, host(&[("10.6.0.10", "10.6.0.2")], &["10.6.0.2"])),
    )
    .unwrap();
    let lines = lines(&plan);
    assert!(
        !lines.iter().any(|line| line.contains("address 0a:1b")),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&"pod: link set eth0 txqueuelen 3000".to_owned()),
        "{lines:#?}"
    );
    assert_eq!(
        plan.notes,
        ["podMACPrefix not applied to eth0: an ipvlan link keeps its master's MAC"]
    );
}

#[test]
fn tune_pod_routes_off_leaves_routes_alone() {
    let mut config = config();
    config.tune_pod_routes = false;
    let plan = plan_add(
        &request(&config, "net1"),
        &snapshot(pod_with_net1(&["10.7.0.10/24"], &["10.7.0.1"]), node_with_veth()),
    )
    .unwrap();
    assert!(
        !lines(&plan)
            .iter()
            .any(|line| line.contains("rule add IPv4 from") || line.contains("route del"))
    );
}

#[test]
fn host_addresses_skip_other_pods_bridges_and_link_local() {
    let mut node = host(&[("10.6.0.10", "10.6.0.2")], &["10.6.0.2"]);
    for name in [
        "veth123",
        "cali1",
        "cni0",
        "flannel.1",
        "docker0",
        "cilium_host",
        "kube-ipvs0",
    ] {
        node.addresses.push((name.into(), ip("10.99.0.1")));
    }
    node.addresses.push(("ens224".into(), ip("169.254.3.3")));
    node.addresses.push(("ens224".into(), ip("192.168.1.5")));
    let found = host_addresses_for_pod(&[ip("10.6.0.10")], &node, Families { v4: true, v6: false });
    assert_eq!(found, [ip("10.6.0.2"), ip("192.168.1.5")]);
}

#[test]
fn del_removes_the_veth_and_the_rule_only_when_no_pod_is_left() {
    let mut node = HostState {
        veth: Some(link(9, HOST_VETH)),
        rules: vec![host_rule(IpFamily::V4, 500), host_rule(IpFamily::V6, 500)],
        ..HostState::default()
    };
    node.routes.push(route(500, "10.6.0.10/32", None, 9));
    node.routes.push(route(500, "fd00:6::10/128", None, 9));
    let request = DelRequest {
        container_id: CONTAINER,
        pod_ips: &[ip("10.6.0.10"), ip("fd00:6::10")],
        host_rule_table: 500,
    };
    let rendered = |steps: Vec<Step>| steps.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(
        rendered(plan_del(&request, &node)),
        [
            "host: link del vethc0ffee12345",
            "host: rule del IPv4 pref 1000 from all lookup 500",
            "host: rule del IPv6 pref 1000 from all lookup 500",
        ]
    );
    // Another pod's route keeps the rule of its family.
    node.routes.push(route(500, "10.6.0.11/32", None, 10));
    assert_eq!(
        rendered(plan_del(&request, &node)),
        [
            "host: link del vethc0ffee12345",
            "host: rule del IPv6 pref 1000 from all lookup 500",
        ]
    );
    // Nothing left: nothing to do (DEL twice).
    assert!(plan_del(&request, &HostState::default()).is_empty());
}

#[test]
fn del_in_overlay_mode_removes_routes_and_entries_on_the_overlay_link() {
    let node = HostState {
        routes: vec![
            route(500, "10.7.0.10/32", None, 15),
            route(500, "10.7.0.11/32", None, 15),
        ],
        neighbours: vec![
            Neighbour {
                index: 15,
                ip: ip("10.7.0.10"),
                mac: Some([2; 6]),
                permanent: true,
            },
            Neighbour {
                index: 3,
                ip: ip("10.7.0.10"),
                mac: Some([3; 6]),
                permanent: false,
            },
        ],
        rules: vec![host_rule(IpFamily::V4, 500)],
        ..HostState::default()
    };
    let steps = plan_del(
        &DelRequest {
            container_id: CONTAINER,
            pod_ips: &[ip("10.7.0.10")],
            host_rule_table: 500,
        },
        &node,
    );
    let rendered: Vec<String> = steps.iter().map(ToString::to_string).collect();
    assert_eq!(
        rendered,
        [
            "host: route del 10.7.0.10/32 dev #15 table 500",
            "host: neigh del 10.7.0.10 dev #15",
        ]
    );
}

#[test]
fn the_host_veth_is_named_after_the_container() {
    assert_eq!(host_veth_name("c0ffee1234567890abcdef"), "vethc0ffee12345");
    assert_eq!(host_veth_name("abc"), "vethabc");
}
