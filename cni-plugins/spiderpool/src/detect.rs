//! IP-conflict and gateway detection, and announcing the addresses, on the pod's interface before
//! ADD answers (upstream's reference 1.4 steps 5 and 6).
//!
//! [`checks`] decides what to probe from the daemon's answer (pure); [`Neighbourhood`] does it, in
//! the pod's network namespace: [`PodNeighbourhood`] for real, a fake in the handler tests.
//!
//! Bounded time, upstream's retries: each probe is sent up to three times, 100 ms apart
//! ([`spiderpool_probe::Timing::default`]); IPv4 and IPv6 are probed in parallel, so a pod whose
//! address is free and whose gateway answers at once waits about 300 ms per family, and never more
//! than about 600 ms.

use std::fmt;
use std::net::IpAddr;

use spiderpool_agent_api::IpamAddResponse;
use spiderpool_netlink::{Blocking, LinkChange, NetlinkError, Netns};
use spiderpool_probe::{Mac, PacketSocket, SocketError, Timing};

/// One probe to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// No other host may answer for `address`.
    Conflict {
        /// The address given to the pod.
        address: IpAddr,
    },
    /// `gateway` must answer a request from `address`.
    Gateway {
        /// The address given to the pod.
        address: IpAddr,
        /// Its pool's gateway.
        gateway: IpAddr,
    },
}

impl Check {
    fn is_v4(&self) -> bool {
        match self {
            Self::Conflict { address } | Self::Gateway { address, .. } => address.is_ipv4(),
        }
    }
}

/// What a probe found wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {
    /// Another host answers for the address.
    Conflict {
        /// The address.
        address: IpAddr,
        /// The other host's MAC.
        holder: Mac,
    },
    /// The gateway did not answer.
    GatewayUnreachable {
        /// The pod's address.
        address: IpAddr,
        /// The gateway.
        gateway: IpAddr,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Conflict { address, holder } => write!(
                formatter,
                "IP conflict: {address} is already in use by {}",
                spiderpool_netlink::link::format_mac(holder)
            ),
            Self::GatewayUnreachable { address, gateway } => write!(
                formatter,
                "gateway {gateway} did not answer {} from {address} (3 tries, 100 ms each)",
                if address.is_ipv4() {
                    "ARP"
                } else {
                    "neighbour solicitation"
                }
            ),
        }
    }
}

/// Why the probes could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The pod's network namespace could not be opened.
    #[error("opening the pod's network namespace {path}: {source}")]
    Netns {
        /// Its path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed (finding the interface, bringing it up).
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The interface is not in the pod's namespace.
    #[error("interface {0} not found in the pod's network namespace")]
    NoInterface(String),
    /// The packet socket failed.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The tokio runtime for netlink could not start.
    #[error("starting the netlink runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The probes the daemon's answer asks for on `ifname`: a conflict check of each of its addresses
/// whose pool enables `enableIPConflictDetection`, a gateway check of each address whose pool has a
/// gateway and enables `enableGatewayDetection`.
pub fn checks(ifname: &str, response: &IpamAddResponse) -> Vec<Check> {
    let mut checks = Vec::new();
    for ip in response.ips.iter().filter(|ip| ip.nic == ifname) {
        let Some(address) = ip
            .address
            .split_once('/')
            .and_then(|(address, _)| address.parse::<IpAddr>().ok())
        else {
            continue;
        };
        if ip.enable_ip_conflict_detection {
            checks.push(Check::Conflict { address });
        }
        let gateway = ip.gateway.parse::<IpAddr>().ok();
        if let Some(gateway) =
            gateway.filter(|gateway| ip.enable_gateway_detection && gateway.is_ipv4() == address.is_ipv4())
        {
            checks.push(Check::Gateway { address, gateway });
        }
    }
    checks
}

/// The pod's network segment, as the plugin probes it.
pub trait Neighbourhood {
    /// Brings `ifname` in the namespace at `netns` up and makes `checks`; the first problem found.
    fn check(&self, netns: &str, ifname: &str, checks: &[Check]) -> Result<Option<Finding>, DetectError>;
    /// Announces `addresses` on `ifname` (gratuitous ARP, unsolicited neighbour advertisement).
    fn announce(&self, netns: &str, ifname: &str, addresses: &[IpAddr]) -> Result<(), DetectError>;
}

/// The real segment: netlink to bring the interface up, packet sockets to probe.
#[derive(Clone, Copy, Debug, Default)]
pub struct PodNeighbourhood;

fn open(netns: &str) -> Result<Netns, DetectError> {
    Netns::open(netns).map_err(|source| DetectError::Netns {
        path: netns.to_owned(),
        source,
    })
}

impl Neighbourhood for PodNeighbourhood {
    fn check(&self, netns: &str, ifname: &str, checks: &[Check]) -> Result<Option<Finding>, DetectError> {
        let netns = open(netns)?;
        let runtime = Blocking::new().map_err(DetectError::Runtime)?;
        let handle = runtime.connect(Some(&netns))?;
        let link = runtime
            .run(handle.link_by_name(ifname))?
            .ok_or_else(|| DetectError::NoInterface(ifname.to_owned()))?;
        if !link.up {
            runtime.run(handle.set_link(link.index, LinkChange::Up))?;
        }
        let (v4, v6): (Vec<Check>, Vec<Check>) = checks.iter().partition(|check| check.is_v4());
        netns.run(|| {
            std::thread::scope(|scope| {
                // Threads started here are in the pod's namespace too.
                let families: Vec<_> = [v4, v6]
                    .into_iter()
                    .filter(|family| !family.is_empty())
                    .map(|family| scope.spawn(move || probe_all(ifname, &family)))
                    .collect();
                let mut first = None;
                for family in families {
                    let found = family
                        .join()
                        .unwrap_or_else(|_| Err(DetectError::NoInterface(ifname.to_owned())))?;
                    first = first.or(found);
                }
                Ok(first)
            })
        })?
    }

    fn announce(&self, netns: &str, ifname: &str, addresses: &[IpAddr]) -> Result<(), DetectError> {
        let netns = open(netns)?;
        netns.run(|| {
            let socket = PacketSocket::open_for_sending(ifname)?;
            for address in addresses {
                spiderpool_probe::announce(&socket, *address)?;
            }
            Ok(())
        })?
    }
}

/// Makes one family's checks in order (conflict before gateway, as upstream); the first problem.
fn probe_all(ifname: &str, checks: &[Check]) -> Result<Option<Finding>, DetectError> {
    let socket = PacketSocket::open(ifname)?;
    let timing = Timing::default();
    for check in checks {
        match *check {
            Check::Conflict { address } => {
                if let Some(holder) = spiderpool_probe::find_holder(&socket, address, timing)? {
                    return Ok(Some(Finding::Conflict { address, holder }));
                }
            }
            Check::Gateway { address, gateway } => {
                if spiderpool_probe::reach(&socket, address, gateway, timing)?.is_none() {
                    return Ok(Some(Finding::GatewayUnreachable { address, gateway }));
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use spiderpool_agent_api::IpConfig;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn checks_follow_the_flags_of_this_interfaces_addresses() {
        let config = |nic: &str, address: &str, gateway: &str, conflict: bool, gateway_on: bool| IpConfig {
            version: if address.contains(':') { 6 } else { 4 },
            address: address.into(),
            nic: nic.into(),
            gateway: gateway.into(),
            enable_ip_conflict_detection: conflict,
            enable_gateway_detection: gateway_on,
            ..IpConfig::default()
        };
        let response = IpamAddResponse {
            ips: vec![
                config("eth0", "10.6.0.10/16", "10.6.0.1", true, true),
                config("net1", "10.7.0.10/24", "10.7.0.1", true, true),
                config("net1", "fd00:7::10/64", "", true, true),
                config("net2", "10.8.0.10/24", "10.8.0.1", false, false),
            ],
            ..IpamAddResponse::default()
        };
        assert_eq!(
            checks("net1", &response),
            [
                Check::Conflict {
                    address: ip("10.7.0.10")
                },
                Check::Gateway {
                    address: ip("10.7.0.10"),
                    gateway: ip("10.7.0.1")
                },
                Check::Conflict {
                    address: ip("fd00:7::10")
                },
            ]
        );
        assert!(checks("net2", &response).is_empty());
        let gateway_only = IpamAddResponse {
            ips: vec![config("eth0", "10.6.0.10/16", "10.6.0.1", false, true)],
            ..IpamAddResponse::default()
        };
        assert_eq!(checks("eth0", &gateway_only).len(), 1);
    }

    #[test]
    fn findings_say_what_and_where() {
        let conflict = Finding::Conflict {
            address: ip("10.6.0.10"),
            holder: [0x0a, 0x1b, 0, 0, 0, 2],
        };
        assert_eq!(
            conflict.to_string(),
            "IP conflict: 10.6.0.10 is already in use by 0a:1b:00:00:00:02"
        );
        let unreachable = Finding::GatewayUnreachable {
            address: ip("fd00::10"),
            gateway: ip("fd00::1"),
        };
        assert!(
            unreachable
                .to_string()
                .starts_with("gateway fd00::1 did not answer neighbour solicitation")
        );
    }
}
