//! The typed layer against the host kernel, each test in network namespaces of its own
//! ([`Netns::create`]), so no name can collide with anything else on the machine. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::net::IpAddr;

use nix::errno::Errno;
use spiderpool_ipmath::{IpFamily, IpNet};
use spiderpool_netlink::route::TABLE_MAIN;
use spiderpool_netlink::{Blocking, Handle, LinkChange, Netns, Route, Rule, Scope, VethEnd};

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A namespace of its own with a handle in it.
fn place(runtime: &Blocking) -> (Netns, Handle) {
    let netns = Netns::create().expect("creating a network namespace needs root");
    let handle = runtime.connect(Some(&netns)).unwrap();
    (netns, handle)
}

/// A veth pair `a` (in `handle`'s namespace) and `b` (in `peer`, or the same namespace), both up.
fn veth_pair(runtime: &Blocking, handle: &Handle, peer: Option<(&Netns, &Handle)>) -> (u32, u32) {
    let a = VethEnd {
        name: "a".into(),
        mac: Some([0x0a, 0, 0, 0, 0, 1]),
    };
    let b = VethEnd {
        name: "b".into(),
        mac: Some([0x0a, 0, 0, 0, 0, 2]),
    };
    runtime
        .run(handle.create_veth(&a, &b, 1400, peer.map(|(netns, _)| netns)))
        .unwrap();
    let peer_handle = peer.map_or(handle, |(_, handle)| handle);
    let a = runtime.run(handle.link_by_name("a")).unwrap().unwrap();
    let b = runtime.run(peer_handle.link_by_name("b")).unwrap().unwrap();
    runtime.run(handle.set_link(a.index, LinkChange::Up)).unwrap();
    runtime
        .run(peer_handle.set_link(b.index, LinkChange::Up))
        .unwrap();
    (a.index, b.index)
}

#[test]
fn a_veth_pair_spans_two_namespaces_and_links_change() {
    let runtime = Blocking::new().unwrap();
    let (host, host_handle) = place(&runtime);
    let (_pod, pod_handle) = place(&runtime);
    let pod_end = VethEnd {
        name: "veth0".into(),
        mac: Some([0x0a, 1, 2, 3, 4, 5]),
    };
    let host_end = VethEnd {
        name: "vethc0ffee".into(),
        mac: Some([0x0a, 6, 7, 8, 9, 10]),
    };
    runtime
        .run(pod_handle.create_veth(&pod_end, &host_end, 1450, Some(&host)))
        .unwrap();
    let pod_link = runtime.run(pod_handle.link_by_name("veth0")).unwrap().unwrap();
    let host_link = runtime
        .run(host_handle.link_by_name("vethc0ffee"))
        .unwrap()
        .unwrap();
    assert_eq!(pod_link.mac, Some([0x0a, 1, 2, 3, 4, 5]));
    assert_eq!(host_link.mac, Some([0x0a, 6, 7, 8, 9, 10]));
    assert_eq!((pod_link.mtu, host_link.mtu), (1450, 1450));
    assert_eq!(pod_link.kind.as_deref(), Some("veth"));
    assert_eq!(
        pod_link.link,
        Some(host_link.index),
        "the peer index points to the host end"
    );
    assert!(!pod_link.up && pod_link.ethernet_like);
    assert!(runtime.run(host_handle.link_by_name("veth0")).unwrap().is_none());

    // The same names again: the kernel's EEXIST is kept.
    let again = runtime
        .run(pod_handle.create_veth(&pod_end, &host_end, 1450, Some(&host)))
        .unwrap_err();
    assert!(again.is_exists(), "{again}");

    for change in [
        LinkChange::Up,
        LinkChange::Mac([0x0a, 0x1b, 10, 6, 0, 10]),
        LinkChange::Mtu(1300),
        LinkChange::TxQueueLen(3000),
    ] {
        runtime.run(pod_handle.set_link(pod_link.index, change)).unwrap();
    }
    let changed = runtime
        .run(pod_handle.link_by_index(pod_link.index))
        .unwrap()
        .unwrap();
    assert!(changed.up);
    assert_eq!(changed.mac, Some([0x0a, 0x1b, 10, 6, 0, 10]));
    assert_eq!((changed.mtu, changed.tx_queue_len), (1300, 3000));
    let names: Vec<String> = runtime
        .run(pod_handle.links())
        .unwrap()
        .into_iter()
        .map(|link| link.name)
        .collect();
    assert_eq!(names, ["lo", "veth0"]);

    // Deleting one end removes both.
    runtime.run(host_handle.delete_link(host_link.index)).unwrap();
    assert!(runtime.run(pod_handle.link_by_name("veth0")).unwrap().is_none());
    let gone = runtime.run(host_handle.delete_link(host_link.index)).unwrap_err();
    assert!(gone.is_not_found(), "{gone}");
    assert_eq!(gone.errno(), Some(Errno::ENODEV));
}

#[test]
fn addresses_routes_and_the_route_lookup() {
    let runtime = Blocking::new().unwrap();
    let (_ns, handle) = place(&runtime);
    let (a, b) = veth_pair(&runtime, &handle, None);
    runtime.run(handle.add_address(a, net("10.6.0.10/16"))).unwrap();
    runtime.run(handle.add_address(a, net("fd00:6::10/64"))).unwrap();
    runtime.run(handle.add_address(b, net("10.7.0.1/24"))).unwrap();
    assert!(
        runtime
            .run(handle.add_address(a, net("10.6.0.10/16")))
            .unwrap_err()
            .is_exists()
    );
    let v4: Vec<IpNet> = runtime
        .run(handle.addresses(Some(IpFamily::V4)))
        .unwrap()
        .into_iter()
        .filter(|address| address.index == a)
        .map(|address| address.address)
        .collect();
    assert_eq!(v4, [net("10.6.0.10/16")]);

    let table500 = Route::new(500, net("10.6.0.10/32"), a, None);
    runtime.run(handle.add_route(&table500)).unwrap();
    assert!(runtime.run(handle.add_route(&table500)).unwrap_err().is_exists());
    let via = Route::new(TABLE_MAIN, net("10.96.0.0/12"), b, Some(ip("10.7.0.2")));
    runtime.run(handle.add_route(&via)).unwrap();
    let v6 = Route::new(101, net("fd00:96::/64"), a, None);
    runtime.run(handle.add_route(&v6)).unwrap();

    let routes = runtime.run(handle.routes(IpFamily::V4)).unwrap();
    let found = routes
        .iter()
        .find(|route| route.table == 500)
        .expect("the table-500 route is listed");
    assert_eq!(
        (found.destination, found.oif, found.scope, found.gateway),
        (net("10.6.0.10/32"), Some(a), Scope::Link, None)
    );
    let found = routes
        .iter()
        .find(|route| route.destination == net("10.96.0.0/12"))
        .unwrap();
    assert_eq!(
        (found.table, found.gateway, found.scope),
        (TABLE_MAIN, Some(ip("10.7.0.2")), Scope::Universe)
    );
    assert!(
        runtime
            .run(handle.routes(IpFamily::V6))
            .unwrap()
            .iter()
            .any(|route| route.table == 101 && route.destination == net("fd00:96::/64"))
    );

    // `ip route get`: the output link and the source the kernel would pick.
    let lookup = runtime.run(handle.route_get(ip("10.96.1.1"))).unwrap().unwrap();
    assert_eq!((lookup.oif, lookup.source), (Some(b), Some(ip("10.7.0.1"))));

    runtime.run(handle.delete_route(&table500)).unwrap();
    let gone = runtime.run(handle.delete_route(&table500)).unwrap_err();
    assert!(gone.is_not_found(), "{gone}");
    assert_eq!(gone.errno(), Some(Errno::ESRCH));
    runtime
        .run(handle.delete_address(a, net("10.6.0.10/16")))
        .unwrap();
    assert!(
        runtime
            .run(handle.delete_address(a, net("10.6.0.10/16")))
            .unwrap_err()
            .is_not_found()
    );
}

#[test]
fn rules_of_every_shape() {
    let runtime = Blocking::new().unwrap();
    let (_ns, handle) = place(&runtime);
    let rules = [
        Rule {
            priority: Some(1000),
            ..Rule::lookup(IpFamily::V4, 500)
        },
        Rule {
            source: Some(net("10.7.0.10/32")),
            ..Rule::lookup(IpFamily::V4, 101)
        },
        Rule {
            destination: Some(net("10.7.0.0/24")),
            ..Rule::lookup(IpFamily::V4, 101)
        },
        Rule {
            priority: Some(1000),
            fwmark: Some((1, 0xffff_ffff)),
            ..Rule::lookup(IpFamily::V6, 100)
        },
    ];
    for rule in &rules {
        runtime.run(handle.add_rule(rule)).unwrap();
    }
    assert!(runtime.run(handle.add_rule(&rules[0])).unwrap_err().is_exists());
    let v4 = runtime.run(handle.rules(IpFamily::V4)).unwrap();
    // The kernel's three default rules plus ours.
    assert_eq!(v4.len(), 6, "{v4:#?}");
    assert!(v4.contains(&rules[0]));
    let from = v4.iter().find(|rule| rule.source.is_some()).unwrap();
    assert_eq!((from.source, from.table), (Some(net("10.7.0.10/32")), 101));
    assert!(
        from.priority.is_some(),
        "the kernel gives unprioritised rules one"
    );
    let to = v4.iter().find(|rule| rule.destination.is_some()).unwrap();
    assert_eq!(to.destination, Some(net("10.7.0.0/24")));
    let v6 = runtime.run(handle.rules(IpFamily::V6)).unwrap();
    assert!(v6.contains(&rules[3]), "{v6:#?}");
    for rule in &rules {
        runtime.run(handle.delete_rule(rule)).unwrap();
    }
    let gone = runtime.run(handle.delete_rule(&rules[1])).unwrap_err();
    assert!(gone.is_not_found(), "{gone}");
    assert_eq!(runtime.run(handle.rules(IpFamily::V4)).unwrap().len(), 3);
}

#[test]
fn permanent_neighbours() {
    let runtime = Blocking::new().unwrap();
    let (_ns, handle) = place(&runtime);
    let (a, _) = veth_pair(&runtime, &handle, None);
    let mac = [0x0a, 0x1b, 1, 2, 3, 4];
    for target in ["10.6.0.10", "fd00:6::10"] {
        runtime
            .run(handle.add_permanent_neighbour(a, ip(target), mac))
            .unwrap();
        assert!(
            runtime
                .run(handle.add_permanent_neighbour(a, ip(target), mac))
                .unwrap_err()
                .is_exists()
        );
    }
    let v4 = runtime.run(handle.neighbours(IpFamily::V4)).unwrap();
    let entry = v4.iter().find(|entry| entry.ip == ip("10.6.0.10")).unwrap();
    assert_eq!((entry.index, entry.mac, entry.permanent), (a, Some(mac), true));
    assert!(
        runtime
            .run(handle.neighbours(IpFamily::V6))
            .unwrap()
            .iter()
            .any(|entry| entry.ip == ip("fd00:6::10") && entry.permanent)
    );
    runtime.run(handle.delete_neighbour(a, ip("10.6.0.10"))).unwrap();
    assert!(
        runtime
            .run(handle.delete_neighbour(a, ip("10.6.0.10")))
            .unwrap_err()
            .is_not_found()
    );
}

#[test]
fn code_runs_inside_a_namespace_and_a_missing_one_is_not_found() {
    let netns = Netns::create().unwrap();
    // /proc/sys/net opened inside is the namespace's own.
    netns
        .run(|| std::fs::write("/proc/sys/net/ipv4/conf/all/rp_filter", "2"))
        .unwrap()
        .unwrap();
    let inside = netns
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter"))
        .unwrap()
        .unwrap();
    assert_eq!(inside.trim(), "2");
    let other = Netns::create().unwrap();
    let fresh = other
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter"))
        .unwrap()
        .unwrap();
    assert_ne!(fresh.trim(), "2");
    let missing = Netns::open("/var/run/netns/spiderpool-netlink-test-absent").unwrap_err();
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn a_handle_of_a_pod_and_one_of_its_host_see_each_others_ends() {
    let runtime = Blocking::new().unwrap();
    let (host, host_handle) = place(&runtime);
    let (_pod, pod_handle) = place(&runtime);
    let (pod_index, host_index) = veth_pair(&runtime, &pod_handle, Some((&host, &host_handle)));
    let pod_link = runtime.run(pod_handle.link_by_index(pod_index)).unwrap().unwrap();
    assert_eq!(pod_link.link, Some(host_index));
    assert!(
        runtime
            .run(host_handle.link_by_index(host_index))
            .unwrap()
            .unwrap()
            .up
    );
}
