//! Probes between two network namespaces of this test's own (a "pod" and "another host" joined by a
//! veth pair), against the host kernel's ARP and NDP. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use spiderpool_ipmath::IpNet;
use spiderpool_netlink::{Blocking, LinkChange, Mac, Netns, VethEnd};
use spiderpool_probe::{PacketSocket, Timing, announce, find_holder, frame, reach};

const POD_MAC: Mac = [0x0a, 0x1b, 0, 0, 0, 1];
const HOST_MAC: Mac = [0x0a, 0x1b, 0, 0, 0, 2];

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// The pod's namespace (interface `net1`, up, no address) and the other host's (interface `eth0`
/// holding 10.9.0.5/24 and fd00:9::5/64, without duplicate address detection so they are usable at once).
fn segment() -> (Netns, Netns) {
    let runtime = Blocking::new().unwrap();
    let pod = Netns::create().expect("needs root");
    let host = Netns::create().unwrap();
    host.run(|| {
        for path in [
            "/proc/sys/net/ipv6/conf/all/accept_dad",
            "/proc/sys/net/ipv6/conf/default/accept_dad",
        ] {
            std::fs::write(path, "0").unwrap();
        }
    })
    .unwrap();
    let pod_handle = runtime.connect(Some(&pod)).unwrap();
    let host_handle = runtime.connect(Some(&host)).unwrap();
    let pod_end = VethEnd {
        name: "net1".into(),
        mac: Some(POD_MAC),
    };
    let host_end = VethEnd {
        name: "eth0".into(),
        mac: Some(HOST_MAC),
    };
    runtime
        .run(pod_handle.create_veth(&pod_end, &host_end, 1500, Some(&host)))
        .unwrap();
    let pod_link = runtime.run(pod_handle.link_by_name("net1")).unwrap().unwrap();
    let host_link = runtime.run(host_handle.link_by_name("eth0")).unwrap().unwrap();
    for address in ["10.9.0.5/24", "fd00:9::5/64"] {
        let address: IpNet = address.parse().unwrap();
        runtime
            .run(host_handle.add_address(host_link.index, address))
            .unwrap();
    }
    runtime
        .run(host_handle.set_link(host_link.index, LinkChange::Up))
        .unwrap();
    runtime
        .run(pod_handle.set_link(pod_link.index, LinkChange::Up))
        .unwrap();
    (pod, host)
}

#[test]
fn another_holder_of_an_address_is_found_and_a_free_address_is_free() {
    let (pod, _host) = segment();
    let started = Instant::now();
    let (held4, free4, held6, free6) = pod
        .run(|| {
            let socket = PacketSocket::open("net1").unwrap();
            assert_eq!(socket.mac(), POD_MAC);
            let timing = Timing::default();
            (
                find_holder(&socket, ip("10.9.0.5"), timing).unwrap(),
                find_holder(&socket, ip("10.9.0.6"), timing).unwrap(),
                find_holder(&socket, ip("fd00:9::5"), timing).unwrap(),
                find_holder(&socket, ip("fd00:9::6"), timing).unwrap(),
            )
        })
        .unwrap();
    assert_eq!((held4, held6), (Some(HOST_MAC), Some(HOST_MAC)));
    assert_eq!((free4, free6), (None, None));
    // Two answered probes plus two unanswered ones (three probes of 100 ms each).
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_gateway_answers_and_an_absent_one_does_not() {
    let (pod, _host) = segment();
    let (gateway4, absent4, gateway6, absent6) = pod
        .run(|| {
            let socket = PacketSocket::open("net1").unwrap();
            let timing = Timing::default();
            (
                reach(&socket, ip("10.9.0.6"), ip("10.9.0.5"), timing).unwrap(),
                reach(&socket, ip("10.9.0.6"), ip("10.9.0.1"), timing).unwrap(),
                reach(&socket, ip("fd00:9::6"), ip("fd00:9::5"), timing).unwrap(),
                reach(&socket, ip("fd00:9::6"), ip("fd00:9::1"), timing).unwrap(),
            )
        })
        .unwrap();
    assert_eq!((gateway4, gateway6), (Some(HOST_MAC), Some(HOST_MAC)));
    assert_eq!((absent4, absent6), (None, None));
}

#[test]
fn announcements_reach_the_segment() {
    let (pod, host) = segment();
    let listener = host.run(|| PacketSocket::open("eth0").unwrap()).unwrap();
    pod.run(|| {
        let socket = PacketSocket::open_for_sending("net1").unwrap();
        announce(&socket, ip("10.9.0.6")).unwrap();
        announce(&socket, ip("fd00:9::6")).unwrap();
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let (mut garp, mut unsolicited) = (false, false);
    while let Some(received) = listener.receive(deadline).unwrap() {
        if received.get(12..14) == Some(&[0x08, 0x06]) {
            // Sender and target protocol address are both ours.
            assert_eq!(&received[28..32], &[10, 9, 0, 6]);
            assert_eq!(&received[38..42], &[10, 9, 0, 6]);
            assert_eq!(&received[22..28], &POD_MAC);
            garp = true;
        }
        if let Some(claim) = frame::claim(&received) {
            assert_eq!((claim.address, claim.mac), (ip("fd00:9::6"), POD_MAC));
            unsolicited = true;
        }
        if garp && unsolicited {
            break;
        }
    }
    assert!(
        garp && unsolicited,
        "gratuitous ARP {garp}, unsolicited NA {unsolicited}"
    );
}

#[test]
fn a_missing_interface_is_named() {
    let pod = Netns::create().unwrap();
    let error = pod.run(|| PacketSocket::open("net9").unwrap_err()).unwrap();
    assert_eq!(error.to_string(), "interface net9 not found");
}
