//! Neighbour (ARP / NDP) entries.

use std::net::IpAddr;

use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteType;
use spiderpool_ipmath::IpFamily;

use crate::error::Result;
use crate::handle::{Handle, Write};
use crate::link::Mac;
use crate::route::address_family;

/// One neighbour entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neighbour {
    /// Interface index.
    pub index: u32,
    /// The neighbour's IP address.
    pub ip: IpAddr,
    /// Its MAC address, when known.
    pub mac: Option<Mac>,
    /// A static entry (`NUD_PERMANENT`) rather than one the kernel learned.
    pub permanent: bool,
}

fn message(index: u32, ip: IpAddr) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = address_family(IpFamily::of(&ip));
    message.header.ifindex = index;
    message.header.kind = RouteType::Unicast;
    message.attributes.push(NeighbourAttribute::Destination(match ip {
        IpAddr::V4(ip) => NeighbourAddress::Inet(ip),
        IpAddr::V6(ip) => NeighbourAddress::Inet6(ip),
    }));
    message
}

fn from_message(message: &NeighbourMessage) -> Option<Neighbour> {
    let mut ip = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => ip = Some(IpAddr::V6(*v6)),
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = <Mac>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    Some(Neighbour {
        index: message.header.ifindex,
        ip: ip?,
        mac,
        permanent: message.header.state == NeighbourState::Permanent,
    })
}

impl Handle {
    /// Every neighbour entry of `family`.
    pub async fn neighbours(&self, family: IpFamily) -> Result<Vec<Neighbour>> {
        let mut request = NeighbourMessage::default();
        request.header.family = address_family(family);
        let answers = self
            .dump(
                || format!("list {family} neighbours"),
                RouteNetlinkMessage::GetNeighbour(request),
            )
            .await?;
        Ok(answers
            .iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewNeighbour(message) => from_message(message),
                _ => None,
            })
            .filter(|neighbour| IpFamily::of(&neighbour.ip) == family)
            .collect())
    }

    /// Adds a permanent entry `ip -> mac` on interface `index`. `EEXIST` when an entry for `ip`
    /// is there already.
    pub async fn add_permanent_neighbour(&self, index: u32, ip: IpAddr, mac: Mac) -> Result<()> {
        let mut message = message(index, ip);
        message.header.state = NeighbourState::Permanent;
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.write(
            || format!("add neighbour {ip} on link #{index}"),
            RouteNetlinkMessage::NewNeighbour(message),
            Write::Create,
        )
        .await
    }

    /// Deletes the entry for `ip` on interface `index`.
    pub async fn delete_neighbour(&self, index: u32, ip: IpAddr) -> Result<()> {
        self.write(
            || format!("delete neighbour {ip} on link #{index}"),
            RouteNetlinkMessage::DelNeighbour(message(index, ip)),
            Write::Modify,
        )
        .await
    }
}
