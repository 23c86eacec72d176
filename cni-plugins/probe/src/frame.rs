//! Ethernet frames for ARP (RFC 826, RFC 5227 probes) and NDP (RFC 4861 neighbour solicitations and
//! advertisements, RFC 4862 duplicate address detection), built and parsed purely.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A MAC address.
pub type Mac = [u8; 6];

/// The Ethernet broadcast address.
pub const BROADCAST: Mac = [0xff; 6];

const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
const ICMPV6: u8 = 58;
const NEIGHBOUR_SOLICITATION: u8 = 135;
const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
const OPTION_SOURCE_LINK_ADDRESS: u8 = 1;
const OPTION_TARGET_LINK_ADDRESS: u8 = 2;
/// NA flags: override (the sender's address replaces cached ones).
const NA_OVERRIDE: u8 = 0x20;
/// Shortest Ethernet frame without its checksum; shorter ones are padded with zeros.
const MIN_FRAME: usize = 60;

fn ethernet(destination: Mac, source: Mac, ethertype: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(MIN_FRAME + 32);
    frame.extend_from_slice(&destination);
    frame.extend_from_slice(&source);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

fn padded(mut frame: Vec<u8>) -> Vec<u8> {
    if frame.len() < MIN_FRAME {
        frame.resize(MIN_FRAME, 0);
    }
    frame
}

/// An ARP request, broadcast: who has `target`? `sender_ip` is `0.0.0.0` for a probe (RFC 5227:
/// asking without claiming), our address for a gateway probe, and equal to `target` for a
/// gratuitous ARP.
pub fn arp_request(our_mac: Mac, sender_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut frame = ethernet(BROADCAST, our_mac, ETHERTYPE_ARP);
    frame.extend_from_slice(&1_u16.to_be_bytes()); // hardware: Ethernet
    frame.extend_from_slice(&0x0800_u16.to_be_bytes()); // protocol: IPv4
    frame.extend_from_slice(&[6, 4]);
    frame.extend_from_slice(&ARP_REQUEST.to_be_bytes());
    frame.extend_from_slice(&our_mac);
    frame.extend_from_slice(&sender_ip.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target.octets());
    padded(frame)
}

/// The solicited-node multicast address of `target` (ff02::1:ffXX:XXXX) and its Ethernet address.
pub fn solicited_node(target: Ipv6Addr) -> (Ipv6Addr, Mac) {
    let octets = target.octets();
    let mut group = [0_u8; 16];
    group[0] = 0xff;
    group[1] = 0x02;
    group[11] = 0x01;
    group[12] = 0xff;
    group[13..].copy_from_slice(&octets[13..]);
    (Ipv6Addr::from(group), multicast_mac(Ipv6Addr::from(group)))
}

/// The Ethernet address of an IPv6 multicast group (33:33 + its last four bytes).
pub fn multicast_mac(group: Ipv6Addr) -> Mac {
    let octets = group.octets();
    [0x33, 0x33, octets[12], octets[13], octets[14], octets[15]]
}

/// The all-nodes multicast group ff02::1.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

fn ipv6_packet(
    destination_mac: Mac,
    our_mac: Mac,
    source: Ipv6Addr,
    destination: Ipv6Addr,
    icmp: &[u8],
) -> Vec<u8> {
    let mut frame = ethernet(destination_mac, our_mac, ETHERTYPE_IPV6);
    frame.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no traffic class or flow label
    let length = u16::try_from(icmp.len()).unwrap_or(u16::MAX);
    frame.extend_from_slice(&length.to_be_bytes());
    frame.push(ICMPV6);
    frame.push(255); // NDP packets must carry hop limit 255 (RFC 4861 7.1.1)
    frame.extend_from_slice(&source.octets());
    frame.extend_from_slice(&destination.octets());
    let checksum = icmpv6_checksum(source, destination, icmp);
    let start = frame.len();
    frame.extend_from_slice(icmp);
    frame[start + 2..start + 4].copy_from_slice(&checksum.to_be_bytes());
    padded(frame)
}

/// The ICMPv6 checksum over the pseudo-header and the message (its checksum field zero).
pub fn icmpv6_checksum(source: Ipv6Addr, destination: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
        }
    };
    add(&source.octets());
    add(&destination.octets());
    let length = u32::try_from(icmp.len()).unwrap_or(u32::MAX);
    add(&length.to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// A neighbour solicitation for `target`, to its solicited-node group. With `source` `None` it is a
/// duplicate-address-detection probe (from `::`, no link-layer option: RFC 4862 5.4.2); with our
/// address the owner answers us directly.
pub fn neighbour_solicitation(our_mac: Mac, source: Option<Ipv6Addr>, target: Ipv6Addr) -> Vec<u8> {
    let (group, group_mac) = solicited_node(target);
    let mut icmp = vec![NEIGHBOUR_SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    if source.is_some() {
        icmp.extend_from_slice(&[OPTION_SOURCE_LINK_ADDRESS, 1]);
        icmp.extend_from_slice(&our_mac);
    }
    ipv6_packet(
        group_mac,
        our_mac,
        source.unwrap_or(Ipv6Addr::UNSPECIFIED),
        group,
        &icmp,
    )
}

/// An unsolicited neighbour advertisement of `address` (ours) to all nodes, with the override flag
/// and our link-layer address, so that neighbours update cached entries (RFC 4861 7.2.6).
pub fn unsolicited_advertisement(our_mac: Mac, address: Ipv6Addr) -> Vec<u8> {
    let mut icmp = vec![NEIGHBOUR_ADVERTISEMENT, 0, 0, 0, NA_OVERRIDE, 0, 0, 0];
    icmp.extend_from_slice(&address.octets());
    icmp.extend_from_slice(&[OPTION_TARGET_LINK_ADDRESS, 1]);
    icmp.extend_from_slice(&our_mac);
    ipv6_packet(multicast_mac(ALL_NODES), our_mac, address, ALL_NODES, &icmp)
}

/// A request to announce `address` as ours: a gratuitous ARP or an unsolicited advertisement.
pub fn announcement(our_mac: Mac, address: IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(ip) => arp_request(our_mac, ip, ip),
        IpAddr::V6(ip) => unsolicited_advertisement(our_mac, ip),
    }
}

/// Someone's claim to an address, read from a received frame: an ARP reply, or a neighbour
/// advertisement, whose sender says it holds `address` at `mac`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The address claimed.
    pub address: IpAddr,
    /// The claimant's link-layer address (the advertisement's target option, else the frame's source).
    pub mac: Mac,
}

fn u16_at(frame: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
}

/// The claim a frame carries, if it is an ARP reply or a neighbour advertisement. Anything else
/// (and anything malformed) is `None`.
pub fn claim(frame: &[u8]) -> Option<Claim> {
    let source_mac: Mac = frame.get(6..12)?.try_into().ok()?;
    match u16_at(frame, 12)? {
        ETHERTYPE_ARP => {
            let arp = frame.get(14..42)?;
            if u16_at(arp, 0)? != 1 || u16_at(arp, 2)? != 0x0800 || arp[4] != 6 || arp[5] != 4 {
                return None;
            }
            if u16_at(arp, 6)? != ARP_REPLY {
                return None;
            }
            let mac: Mac = arp.get(8..14)?.try_into().ok()?;
            let ip: [u8; 4] = arp.get(14..18)?.try_into().ok()?;
            Some(Claim {
                address: IpAddr::V4(Ipv4Addr::from(ip)),
                mac,
            })
        }
        ETHERTYPE_IPV6 => {
            let header = frame.get(14..54)?;
            if header[0] >> 4 != 6 || header[6] != ICMPV6 || header[7] != 255 {
                return None;
            }
            let length = usize::from(u16_at(header, 4)?);
            let icmp = frame.get(54..54 + length)?;
            if icmp.len() < 24 || icmp[0] != NEIGHBOUR_ADVERTISEMENT || icmp[1] != 0 {
                return None;
            }
            let source: [u8; 16] = header.get(8..24)?.try_into().ok()?;
            let destination: [u8; 16] = header.get(24..40)?.try_into().ok()?;
            let mut zeroed = icmp.to_vec();
            zeroed[2] = 0;
            zeroed[3] = 0;
            let expected = icmpv6_checksum(Ipv6Addr::from(source), Ipv6Addr::from(destination), &zeroed);
            if u16_at(icmp, 2)? != expected {
                return None;
            }
            let target: [u8; 16] = icmp.get(8..24)?.try_into().ok()?;
            let mut mac = source_mac;
            let mut options = &icmp[24..];
            while options.len() >= 8 {
                let length = usize::from(options[1]) * 8;
                if length == 0 || length > options.len() {
                    break;
                }
                if options[0] == OPTION_TARGET_LINK_ADDRESS && length >= 8 {
                    mac = options.get(2..8)?.try_into().ok()?;
                }
                options = &options[length..];
            }
            Some(Claim {
                address: IpAddr::V6(Ipv6Addr::from(target)),
                mac,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: Mac = [0x0a, 0x1b, 0, 0, 0, 1];
    const THEIRS: Mac = [0x0a, 0x1b, 0, 0, 0, 2];

    fn v4(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn v6(text: &str) -> Ipv6Addr {
        text.parse().unwrap()
    }

    /// An ARP reply as a peer would send it.
    fn arp_reply(from: Mac, sender: Ipv4Addr, to: Mac, target: Ipv4Addr) -> Vec<u8> {
        let mut frame = arp_request(from, sender, target);
        frame[0..6].copy_from_slice(&to);
        frame[20..22].copy_from_slice(&ARP_REPLY.to_be_bytes());
        frame[32..38].copy_from_slice(&to);
        frame
    }

    /// A solicited advertisement as a peer would send it.
    fn advertisement(from: Mac, target: Ipv6Addr, destination: Ipv6Addr) -> Vec<u8> {
        let mut icmp = vec![NEIGHBOUR_ADVERTISEMENT, 0, 0, 0, 0x60, 0, 0, 0];
        icmp.extend_from_slice(&target.octets());
        icmp.extend_from_slice(&[OPTION_TARGET_LINK_ADDRESS, 1]);
        icmp.extend_from_slice(&from);
        ipv6_packet(multicast_mac(destination), from, target, destination, &icmp)
    }

    #[test]
    fn an_arp_probe_asks_without_claiming() {
        let frame = arp_request(OURS, Ipv4Addr::UNSPECIFIED, v4("10.6.0.10"));
        assert_eq!(frame.len(), 60);
        assert_eq!(&frame[0..6], &BROADCAST);
        assert_eq!(&frame[6..12], &OURS);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        assert_eq!(&frame[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&frame[22..28], &OURS);
        assert_eq!(&frame[28..32], &[0, 0, 0, 0]);
        assert_eq!(&frame[38..42], &[10, 6, 0, 10]);
        assert_eq!(claim(&frame), None, "a request claims nothing");
    }

    #[test]
    fn a_gratuitous_arp_names_the_address_twice() {
        let frame = announcement(OURS, IpAddr::V4(v4("10.6.0.10")));
        assert_eq!(&frame[28..32], &[10, 6, 0, 10]);
        assert_eq!(&frame[38..42], &[10, 6, 0, 10]);
    }

    #[test]
    fn arp_replies_are_claims() {
        let reply = arp_reply(THEIRS, v4("10.6.0.10"), OURS, Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            claim(&reply),
            Some(Claim {
                address: IpAddr::V4(v4("10.6.0.10")),
                mac: THEIRS
            })
        );
        assert_eq!(claim(&reply[..30]), None, "truncated");
    }

    #[test]
    fn solicited_node_groups() {
        let (group, mac) = solicited_node(v6("fd00:6::1:2345:6789"));
        assert_eq!(group, v6("ff02::1:ff45:6789"));
        assert_eq!(mac, [0x33, 0x33, 0xff, 0x45, 0x67, 0x89]);
    }

    #[test]
    fn a_dad_probe_comes_from_nowhere_without_a_link_option() {
        let frame = neighbour_solicitation(OURS, None, v6("fd00:6::10"));
        assert_eq!(&frame[0..6], &[0x33, 0x33, 0xff, 0, 0, 0x10]);
        assert_eq!(&frame[12..14], &[0x86, 0xdd]);
        assert_eq!(frame[20], ICMPV6);
        assert_eq!(frame[21], 255);
        assert_eq!(&frame[22..38], &Ipv6Addr::UNSPECIFIED.octets());
        assert_eq!(&frame[38..54], &v6("ff02::1:ff00:10").octets());
        assert_eq!(u16_at(&frame, 18), Some(24), "no option");
        assert_eq!(frame[54], NEIGHBOUR_SOLICITATION);
        // The checksum verifies: summing the message with its checksum in gives zero.
        let icmp = &frame[54..78];
        let mut zeroed = icmp.to_vec();
        zeroed[2] = 0;
        zeroed[3] = 0;
        assert_eq!(
            icmpv6_checksum(Ipv6Addr::UNSPECIFIED, v6("ff02::1:ff00:10"), &zeroed),
            u16_at(icmp, 2).unwrap()
        );
    }

    #[test]
    fn a_solicitation_from_our_address_carries_our_link_address() {
        let frame = neighbour_solicitation(OURS, Some(v6("fd00:6::10")), v6("fd00:6::1"));
        assert_eq!(u16_at(&frame, 18), Some(32));
        assert_eq!(&frame[78..80], &[OPTION_SOURCE_LINK_ADDRESS, 1]);
        assert_eq!(&frame[80..86], &OURS);
    }

    #[test]
    fn advertisements_are_claims_with_the_option_mac() {
        let frame = advertisement(THEIRS, v6("fd00:6::10"), ALL_NODES);
        assert_eq!(
            claim(&frame),
            Some(Claim {
                address: IpAddr::V6(v6("fd00:6::10")),
                mac: THEIRS
            })
        );
        let ours = unsolicited_advertisement(OURS, v6("fd00:6::20"));
        assert_eq!(&ours[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(ours[58], NA_OVERRIDE);
        assert_eq!(claim(&ours).map(|claim| claim.mac), Some(OURS));
        let mut corrupt = frame.clone();
        corrupt[70] ^= 1;
        assert_eq!(claim(&corrupt), None, "bad checksum");
    }

    #[test]
    fn garbage_is_no_claim() {
        for frame in [vec![], vec![0; 13], vec![0xff; 100], vec![0; 1500]] {
            assert_eq!(claim(&frame), None);
        }
    }
}
