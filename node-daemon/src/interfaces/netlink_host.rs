//! The real node: links through `spiderpool-netlink` (rtnetlink), gateway probes through packet
//! sockets on a blocking thread.

use std::net::IpAddr;
use std::time::Duration;

use spiderpool_ipmath::IpFamily;
use spiderpool_netlink::route::TABLE_MAIN;
use spiderpool_netlink::{Handle, KindDetail, LinkChange, LinkDetail};

use super::gateway;
use super::host::{Host, HostError, Observation, anchors};
use super::model::{HostKind, HostLink, LinkOp};

/// The node's links through rtnetlink, in the namespace the handle was connected in.
#[derive(Clone, Debug)]
pub struct NetlinkHost {
    handle: Handle,
}

impl NetlinkHost {
    pub fn new(handle: Handle) -> Self {
        NetlinkHost { handle }
    }

    async fn index(&self, op: &LinkOp, name: &str) -> Result<u32, HostError> {
        match self.handle.link_by_name(name).await? {
            Some(link) => Ok(link.index),
            None => Err(HostError::NoSuchLink {
                op: op.to_string(),
                link: name.to_owned(),
            }),
        }
    }
}

/// A link as the planner sees it, master and parent by name.
fn host_link(detail: &LinkDetail, all: &[LinkDetail]) -> HostLink {
    let name_of = |index: Option<u32>| {
        index.and_then(|i| {
            all.iter()
                .find(|d| d.link.index == i)
                .map(|d| d.link.name.clone())
        })
    };
    let kind = match &detail.kind {
        KindDetail::Bond(settings) => HostKind::Bond {
            mode: settings.mode,
            options: settings.options.clone(),
        },
        KindDetail::Vlan { id } => HostKind::Vlan { id: *id },
        KindDetail::Other => HostKind::Other(detail.link.kind.clone()),
    };
    HostLink {
        index: detail.link.index,
        name: detail.link.name.clone(),
        kind,
        master: name_of(detail.master),
        // Only a VLAN's parent matters here (a veth's IFLA_LINK is its peer).
        parent: match detail.kind {
            KindDetail::Vlan { .. } => name_of(detail.link.link),
            _ => None,
        },
        up: detail.link.up,
        carrier: detail.carrier,
        mtu: detail.link.mtu,
    }
}

impl Host for NetlinkHost {
    async fn observe(&mut self, node_ips: &[IpAddr]) -> Result<Observation, HostError> {
        let details = self.handle.link_details().await?;
        let links: Vec<HostLink> = details.iter().map(|d| host_link(d, &details)).collect();
        let name = |index: u32| links.iter().find(|l| l.index == index).map(|l| l.name.clone());
        let addresses: Vec<(String, IpAddr)> = self
            .handle
            .addresses(None)
            .await?
            .into_iter()
            .filter_map(|a| Some((name(a.index)?, a.address.addr())))
            .collect();
        let mut default_routes = Vec::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            for route in self.handle.routes(family).await? {
                if route.table != TABLE_MAIN || !route.is_default() {
                    continue;
                }
                let via = route.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
                let oifs = route
                    .oif
                    .into_iter()
                    .chain(route.multipath.iter().map(|hop| hop.oif));
                for oif in oifs {
                    if let Some(link) = name(oif) {
                        default_routes.push((link, format!("{family} default route{via}")));
                    }
                }
            }
        }
        let anchors = anchors(node_ips, &addresses, &default_routes);
        Ok(Observation { links, anchors })
    }

    async fn apply(&mut self, op: &LinkOp) -> Result<(), HostError> {
        let handle = &self.handle;
        match op {
            LinkOp::CreateBond { name, mode, options } => handle.create_bond(name, *mode, options).await?,
            LinkOp::SetBond { name, mode, options } => {
                handle
                    .set_bond(self.index(op, name).await?, *mode, options)
                    .await?;
            }
            LinkOp::CreateVlan { name, parent, id } => {
                handle
                    .create_vlan(name, self.index(op, parent).await?, *id)
                    .await?;
            }
            LinkOp::Enslave { member, bond } => {
                let bond = self.index(op, bond).await?;
                handle.set_master(self.index(op, member).await?, bond).await?;
            }
            LinkOp::Release { member } => handle.release_from_master(self.index(op, member).await?).await?,
            LinkOp::SetDown { name } => handle.set_link_down(self.index(op, name).await?).await?,
            LinkOp::SetUp { name } => {
                handle
                    .set_link(self.index(op, name).await?, LinkChange::Up)
                    .await?
            }
            LinkOp::SetMtu { name, mtu } => {
                handle
                    .set_link(self.index(op, name).await?, LinkChange::Mtu(*mtu))
                    .await?;
            }
            LinkOp::Delete { name } => handle.delete_link(self.index(op, name).await?).await?,
        }
        Ok(())
    }

    async fn probe_gateway(
        &mut self,
        interface: &str,
        gateway: IpAddr,
        timeout: Duration,
    ) -> Result<bool, HostError> {
        let interface = interface.to_owned();
        let answer =
            tokio::task::spawn_blocking(move || gateway::probe(&interface, gateway, timeout)).await??;
        Ok(answer.is_some())
    }
}
