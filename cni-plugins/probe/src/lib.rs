//! ARP and NDP on a pod interface, without `unsafe`: is an address already held by another host
//! (address-conflict detection), does the gateway answer (gateway detection), and telling the
//! segment an address is ours (gratuitous ARP, unsolicited neighbour advertisement).
//!
//! [`frame`] builds and parses the frames (pure); [`socket`] is a packet socket bound to one
//! interface. Open the socket inside the pod's network namespace; everything here blocks for at most
//! the [`Timing`] given.
//!
//! Probes, per family:
//! - IPv4 conflict: an ARP probe (sender `0.0.0.0`, RFC 5227) for the address; an ARP reply from
//!   another MAC is a conflict.
//! - IPv6 conflict: a duplicate-address-detection solicitation (from `::`, RFC 4862) for the address;
//!   a neighbour advertisement for it from another MAC is a conflict.
//! - Gateway (both families): a request from our address for the gateway's; any answer for the
//!   gateway's address means it is reachable.

pub mod frame;
pub mod socket;

use std::net::IpAddr;
use std::time::Duration;

pub use frame::Mac;
pub use socket::{PacketSocket, SocketError};

/// How many probes to send and how long to wait after each. The default is upstream Spiderpool's:
/// three probes, 100 ms apart (so a check takes at most about 300 ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Probes sent before giving up.
    pub attempts: u32,
    /// Wait for an answer after each probe.
    pub wait: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            attempts: 3,
            wait: Duration::from_millis(100),
        }
    }
}

/// Asks who holds `address` without claiming it; `Some(mac)` of another host holding it.
pub fn find_holder(
    socket: &PacketSocket,
    address: IpAddr,
    timing: Timing,
) -> Result<Option<Mac>, SocketError> {
    let probe = match address {
        IpAddr::V4(ip) => frame::arp_request(socket.mac(), std::net::Ipv4Addr::UNSPECIFIED, ip),
        IpAddr::V6(ip) => frame::neighbour_solicitation(socket.mac(), None, ip),
    };
    ask(socket, &probe, address, timing)
}

/// Asks for `gateway` from `our_address`; `Some(mac)` when it answered. The two must be of one family.
pub fn reach(
    socket: &PacketSocket,
    our_address: IpAddr,
    gateway: IpAddr,
    timing: Timing,
) -> Result<Option<Mac>, SocketError> {
    let request = match (our_address, gateway) {
        (IpAddr::V4(ours), IpAddr::V4(gateway)) => frame::arp_request(socket.mac(), ours, gateway),
        (IpAddr::V6(ours), IpAddr::V6(gateway)) => {
            frame::neighbour_solicitation(socket.mac(), Some(ours), gateway)
        }
        _ => return Ok(None),
    };
    ask(socket, &request, gateway, timing)
}

/// Announces that `address` is ours (at the socket's interface's MAC). A socket only for this is best
/// opened with [`PacketSocket::open_for_sending`].
pub fn announce(socket: &PacketSocket, address: IpAddr) -> Result<(), SocketError> {
    socket.send(&frame::announcement(socket.mac(), address))
}

/// Sends `request` up to `timing.attempts` times and returns the MAC of the first other host that
/// claims `address`.
fn ask(
    socket: &PacketSocket,
    request: &[u8],
    address: IpAddr,
    timing: Timing,
) -> Result<Option<Mac>, SocketError> {
    for _ in 0..timing.attempts.max(1) {
        socket.send(request)?;
        let deadline = socket::after(timing.wait);
        while let Some(received) = socket.receive(deadline)? {
            if let Some(claim) = frame::claim(&received)
                && claim.address == address
                && claim.mac != socket.mac()
            {
                return Ok(Some(claim.mac));
            }
        }
    }
    Ok(None)
}
