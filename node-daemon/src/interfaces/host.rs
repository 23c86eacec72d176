//! The executor's view of the node, behind a trait: the real one ([`super::netlink_host`]) speaks
//! rtnetlink and packet sockets; the status-flow tests use [`super::fake::FakeHost`].

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use super::gateway::ProbeError;
use super::model::{HostLink, LinkOp};
use super::safety::Anchor;

/// What the node looks like now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    pub links: Vec<HostLink>,
    /// Where the node's own traffic starts (default routes, node IPs).
    pub anchors: Vec<Anchor>,
}

/// Why talking to the node failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Netlink(#[from] spiderpool_netlink::NetlinkError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("{op}: no link named {link}")]
    NoSuchLink { op: String, link: String },
    /// The fake kernel's refusal (tests).
    #[error("{0}")]
    Refused(String),
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The node's links, changed one operation at a time.
pub trait Host: Send {
    /// Every link, and the anchors for `node_ips` (the Kubernetes Node's addresses).
    fn observe(&mut self, node_ips: &[IpAddr])
    -> impl Future<Output = Result<Observation, HostError>> + Send;

    /// Applies one operation.
    fn apply(&mut self, op: &LinkOp) -> impl Future<Output = Result<(), HostError>> + Send;

    /// Whether `gateway` answers on `interface` within `timeout`.
    fn probe_gateway(
        &mut self,
        interface: &str,
        gateway: IpAddr,
        timeout: Duration,
    ) -> impl Future<Output = Result<bool, HostError>> + Send;
}

/// The anchors: links holding one of `node_ips` (from `addresses`: link name, address) and links
/// default routes leave through (link name, the route described: `IPv4 default route via 10.0.0.1`).
pub fn anchors(
    node_ips: &[IpAddr],
    addresses: &[(String, IpAddr)],
    default_routes: &[(String, String)],
) -> Vec<Anchor> {
    let mut anchors: Vec<Anchor> = Vec::new();
    for ip in node_ips {
        for (link, _) in addresses.iter().filter(|(_, a)| a == ip) {
            anchors.push(Anchor {
                link: link.clone(),
                why: format!("holds the node IP {ip}"),
            });
        }
    }
    for (link, route) in default_routes {
        anchors.push(Anchor {
            link: link.clone(),
            why: format!("carries the node's {route}"),
        });
    }
    anchors
}
