//! A raw packet socket on one interface, made without `unsafe`: the interface's link-layer socket
//! address comes from `getifaddrs` (glibc lists an `AF_PACKET` entry per link, down ones too), the
//! socket is bound to it and sends and receives whole Ethernet frames.
//!
//! The socket belongs to the network namespace of the thread that opens it, so open it inside the
//! pod's namespace (e.g. in `spiderpool_netlink::Netns::run`).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::ifaddrs::getifaddrs;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, LinkAddr, MsgFlags, SockFlag, SockProtocol, SockType, bind, recvfrom, send, socket,
};

use crate::frame::Mac;

/// `PACKET_OUTGOING`: a frame this host sent, looped back to packet sockets.
const PACKET_OUTGOING: u8 = 4;

/// Why the socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// No such interface in this namespace (or it has no link-layer address).
    #[error("interface {0} not found")]
    NoInterface(String),
    /// A system call failed.
    #[error("{call} on {interface}: {errno}")]
    System {
        /// The call.
        call: &'static str,
        /// The interface.
        interface: String,
        /// The errno.
        errno: Errno,
    },
}

/// A packet socket bound to one interface.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    interface: String,
    mac: Mac,
}

impl PacketSocket {
    /// Opens a socket on `interface` of the calling thread's namespace that sends and receives.
    pub fn open(interface: &str) -> Result<Self, SocketError> {
        Self::open_with(interface, Some(SockProtocol::EthAll))
    }

    /// Opens a socket on `interface` of the calling thread's namespace that only sends (it receives
    /// nothing; [`receive`](Self::receive) waits out its deadline). The kernel hooks a socket with a
    /// protocol into the receive path, and unhooking it, as binding such a socket does, waits for an
    /// RCU grace period (8-16 ms on an idle machine); a socket with protocol 0 has no hook.
    pub fn open_for_sending(interface: &str) -> Result<Self, SocketError> {
        Self::open_with(interface, None)
    }

    fn open_with(interface: &str, protocol: Option<SockProtocol>) -> Result<Self, SocketError> {
        let system = |call: &'static str| {
            move |errno: Errno| SocketError::System {
                call,
                interface: interface.to_owned(),
                errno,
            }
        };
        let address: LinkAddr = getifaddrs()
            .map_err(system("getifaddrs"))?
            .filter(|entry| entry.interface_name == interface)
            .find_map(|entry| entry.address.as_ref()?.as_link_addr().copied())
            .ok_or_else(|| SocketError::NoInterface(interface.to_owned()))?;
        let mac = address
            .addr()
            .filter(|_| address.halen() == 6)
            .ok_or_else(|| SocketError::NoInterface(interface.to_owned()))?;
        let fd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            protocol,
        )
        .map_err(system("socket"))?;
        // getifaddrs' address has protocol 0, which bind reads as "keep the socket's".
        bind(fd.as_raw_fd(), &address).map_err(system("bind"))?;
        Ok(Self {
            fd,
            interface: interface.to_owned(),
            mac,
        })
    }

    /// The interface's MAC address (when the socket was opened).
    pub fn mac(&self) -> Mac {
        self.mac
    }

    /// Sends one frame.
    pub fn send(&self, frame: &[u8]) -> Result<(), SocketError> {
        send(self.fd.as_raw_fd(), frame, MsgFlags::empty()).map_err(|errno| SocketError::System {
            call: "send",
            interface: self.interface.clone(),
            errno,
        })?;
        Ok(())
    }

    /// The next frame another host sent, or `None` once `deadline` passes.
    pub fn receive(&self, deadline: Instant) -> Result<Option<Vec<u8>>, SocketError> {
        let mut buffer = vec![0_u8; 2048];
        loop {
            let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|left| !left.is_zero())
            else {
                return Ok(None);
            };
            let millis = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(millis)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    return Err(SocketError::System {
                        call: "poll",
                        interface: self.interface.clone(),
                        errno,
                    });
                }
            }
            match recvfrom::<LinkAddr>(self.fd.as_raw_fd(), &mut buffer) {
                Ok((length, from)) => {
                    if from.is_some_and(|from| from.pkttype() == PACKET_OUTGOING) {
                        continue;
                    }
                    return Ok(Some(buffer[..length.min(buffer.len())].to_vec()));
                }
                Err(Errno::EINTR | Errno::EAGAIN) => continue,
                Err(errno) => {
                    return Err(SocketError::System {
                        call: "recvfrom",
                        interface: self.interface.clone(),
                        errno,
                    });
                }
            }
        }
    }
}

/// How long to wait for one answer.
pub(crate) fn after(wait: Duration) -> Instant {
    Instant::now().checked_add(wait).unwrap_or_else(Instant::now)
}
