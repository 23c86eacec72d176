//! Asking a gateway whether it is there, on one interface, without an address of our own and
//! without touching any neighbour table: an ARP probe (RFC 5227: sender address 0.0.0.0) for IPv4, a
//! neighbour solicitation from `::` (duplicate address detection's form, RFC 4862) for IPv6. The
//! owner of the address answers both (Linux does), and nobody learns anything from the question.
//!
//! Frames go through a packet socket bound to the interface (so a VLAN sub-interface tags them and
//! a bond picks its active member). The frames are built and read by pure functions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, LinkAddr, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrLike, bind, recv, send,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use crate::interfaces::model::HostLink;

type Mac = [u8; 6];

const ETH_ARP: u16 = 0x0806;
const ETH_IPV6: u16 = 0x86dd;
const ICMPV6: u8 = 58;
const NEIGHBOUR_SOLICITATION: u8 = 135;
const NEIGHBOUR_ADVERTISEMENT: u8 = 136;

/// Why a probe could not be made (not: the gateway did not answer).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("interface {0} has no link-layer address (is it up?)")]
    NoLinkAddress(String),
    #[error("probing on {interface}: {source}")]
    Socket {
        interface: String,
        #[source]
        source: nix::Error,
    },
}

/// Asks `gateway` on `interface` until it answers or `timeout` passes, repeating the question every
/// 500 ms. Blocking: run it on a blocking thread. `Ok(Some(mac))`: it answered from `mac`.
pub fn probe(interface: &str, gateway: IpAddr, timeout: Duration) -> Result<Option<Mac>, ProbeError> {
    let socket_error = |source| ProbeError::Socket {
        interface: interface.to_owned(),
        source,
    };
    let (address, mac) = link_address(interface)?;
    let fd: OwnedFd = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::EthAll,
    )
    .map_err(socket_error)?;
    bind(fd.as_raw_fd(), &address).map_err(socket_error)?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 100_000)).map_err(socket_error)?;
    let question = match gateway {
        IpAddr::V4(ip) => arp_probe(mac, ip),
        IpAddr::V6(ip) => neighbour_solicitation(mac, ip),
    };
    let deadline = Instant::now() + timeout;
    let mut next_question = Instant::now();
    let mut buffer = [0u8; 2048];
    while Instant::now() < deadline {
        if Instant::now() >= next_question {
            send(fd.as_raw_fd(), &question, MsgFlags::empty()).map_err(socket_error)?;
            next_question = Instant::now() + Duration::from_millis(500);
        }
        match recv(fd.as_raw_fd(), &mut buffer, MsgFlags::empty()) {
            Ok(length) => {
                let frame = &buffer[..length];
                let answer = match gateway {
                    IpAddr::V4(ip) => arp_reply_from(frame, ip),
                    IpAddr::V6(ip) => neighbour_advertisement_from(frame, ip),
                };
                if answer.is_some() {
                    return Ok(answer);
                }
            }
            Err(nix::Error::EAGAIN | nix::Error::EINTR) => {}
            Err(e) => return Err(socket_error(e)),
        }
    }
    Ok(None)
}

/// The interface's packet address (index, MAC) from `getifaddrs`, which is also what binds a packet
/// socket to it.
fn link_address(interface: &str) -> Result<(LinkAddr, Mac), ProbeError> {
    let missing = || ProbeError::NoLinkAddress(interface.to_owned());
    let addresses = nix::ifaddrs::getifaddrs().map_err(|source| ProbeError::Socket {
        interface: interface.to_owned(),
        source,
    })?;
    for entry in addresses.filter(|a| a.interface_name == interface) {
        if let Some(link) = entry.address.as_ref().and_then(|a| a.as_link_addr())
            && link.family() == Some(AddressFamily::Packet)
        {
            let mac = link.addr().ok_or_else(missing)?;
            return Ok((*link, mac));
        }
    }
    Err(missing())
}

/// An ARP request for `target` from `mac`, sender address 0.0.0.0, broadcast.
pub fn arp_probe(mac: Mac, target: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(60);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETH_ARP.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet, IPv4, request
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0; 4]); // sender IP: none
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target.octets());
    frame.resize(60, 0);
    frame
}

/// The sender MAC of an ARP reply from `target` in `frame`.
pub fn arp_reply_from(frame: &[u8], target: Ipv4Addr) -> Option<Mac> {
    if frame.len() < 42 || frame[12..14] != ETH_ARP.to_be_bytes() {
        return None;
    }
    let arp = &frame[14..];
    let is_reply = arp[0..8] == [0, 1, 0x08, 0x00, 6, 4, 0, 2];
    (is_reply && arp[14..18] == target.octets()).then(|| <Mac>::try_from(&arp[8..14]).ok())?
}

/// `ff02::1:ffXX:XXXX` for `target`.
fn solicited_node(target: Ipv6Addr) -> Ipv6Addr {
    let o = target.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// A neighbour solicitation for `target` from `::` (so it carries no source link-layer option), to
/// the target's solicited-node multicast group.
pub fn neighbour_solicitation(mac: Mac, target: Ipv6Addr) -> Vec<u8> {
    let destination = solicited_node(target);
    let d = destination.octets();
    let mut icmp = vec![NEIGHBOUR_SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    let checksum = icmpv6_checksum(&Ipv6Addr::UNSPECIFIED, &destination, &icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());

    let mut frame = Vec::with_capacity(14 + 40 + icmp.len());
    frame.extend_from_slice(&[0x33, 0x33, d[12], d[13], d[14], d[15]]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETH_IPV6.to_be_bytes());
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&u16::try_from(icmp.len()).unwrap_or(0).to_be_bytes());
    frame.extend_from_slice(&[ICMPV6, 255]);
    frame.extend_from_slice(&Ipv6Addr::UNSPECIFIED.octets());
    frame.extend_from_slice(&d);
    frame.extend_from_slice(&icmp);
    frame
}

/// The source MAC of a neighbour advertisement for `target` in `frame`.
pub fn neighbour_advertisement_from(frame: &[u8], target: Ipv6Addr) -> Option<Mac> {
    if frame.len() < 14 + 40 + 24 || frame[12..14] != ETH_IPV6.to_be_bytes() {
        return None;
    }
    let ip = &frame[14..];
    let icmp = &ip[40..];
    let answers = ip[6] == ICMPV6 && icmp[0] == NEIGHBOUR_ADVERTISEMENT && icmp[8..24] == target.octets();
    answers.then(|| <Mac>::try_from(&frame[6..12]).ok())?
}

/// The ICMPv6 checksum over the pseudo-header and `message` (with its checksum field zero).
fn icmpv6_checksum(source: &Ipv6Addr, destination: &Ipv6Addr, message: &[u8]) -> u16 {
    let length = u32::try_from(message.len()).unwrap_or(0);
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
        }
    };
    add(&source.octets());
    add(&destination.octets());
    add(&length.to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(message);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

/// Whether `interface` is one of `links` that is up: a probe on a missing or down link cannot work.
pub fn usable(interface: &str, links: &[HostLink]) -> bool {
    links.iter().any(|l| l.name == interface && l.up)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x02, 0, 0, 0, 0, 0x0a];
    const GW_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];

    #[test]
    fn an_arp_probe_has_no_sender_address() {
        let frame = arp_probe(MAC, Ipv4Addr::new(10, 20, 0, 1));
        assert_eq!(frame.len(), 60);
        assert_eq!(&frame[0..6], &[0xff; 6]);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        assert_eq!(&frame[22..28], &MAC, "sender MAC");
        assert_eq!(&frame[28..32], &[0, 0, 0, 0], "sender IP");
        assert_eq!(&frame[38..42], &[10, 20, 0, 1], "target IP");
    }

    #[test]
    fn only_a_reply_from_the_gateway_counts() {
        let gateway = Ipv4Addr::new(10, 20, 0, 1);
        // The gateway's reply: swap roles, operation 2.
        let mut reply = arp_probe(GW_MAC, gateway);
        reply[0..6].copy_from_slice(&MAC);
        reply[21] = 2;
        reply[28..32].copy_from_slice(&gateway.octets());
        assert_eq!(arp_reply_from(&reply, gateway), Some(GW_MAC));
        assert_eq!(
            arp_reply_from(&reply, Ipv4Addr::new(10, 20, 0, 2)),
            None,
            "another address"
        );
        assert_eq!(
            arp_reply_from(&arp_probe(MAC, gateway), gateway),
            None,
            "our own request"
        );
        assert_eq!(arp_reply_from(&reply[..30], gateway), None, "truncated");
    }

    #[test]
    fn a_neighbour_solicitation_goes_to_the_solicited_node_group_with_a_valid_checksum() {
        let target: Ipv6Addr = "2001:db8::1:2:3".parse().unwrap();
        let frame = neighbour_solicitation(MAC, target);
        assert_eq!(&frame[0..6], &[0x33, 0x33, 0xff, 0x02, 0x00, 0x03]);
        assert_eq!(&frame[12..14], &[0x86, 0xdd]);
        let destination: [u8; 16] = frame[38..54].try_into().unwrap();
        assert_eq!(
            Ipv6Addr::from(destination),
            "ff02::1:ff02:3".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(frame[54], NEIGHBOUR_SOLICITATION);
        // A checksum over a message that includes it sums to zero.
        let icmp = &frame[54..];
        assert_eq!(
            icmpv6_checksum(&Ipv6Addr::UNSPECIFIED, &Ipv6Addr::from(destination), icmp),
            0
        );
    }

    #[test]
    fn an_advertisement_for_the_target_counts() {
        let target: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut advert = neighbour_solicitation(GW_MAC, target);
        advert[54] = NEIGHBOUR_ADVERTISEMENT;
        assert_eq!(neighbour_advertisement_from(&advert, target), Some(GW_MAC));
        assert_eq!(
            neighbour_advertisement_from(&advert, "2001:db8::2".parse().unwrap()),
            None
        );
        assert_eq!(
            neighbour_advertisement_from(&neighbour_solicitation(MAC, target), target),
            None
        );
    }
}
