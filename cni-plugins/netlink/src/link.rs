//! Links: reading them, bringing them up, changing their MAC, MTU and transmit queue, deleting them.

use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};

use crate::error::Result;
use crate::handle::{Handle, Write};

/// A MAC address.
pub type Mac = [u8; 6];

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What the kernel says about one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC address (`None` for links without an Ethernet address, such as `lo` has zeros).
    pub mac: Option<Mac>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// `IFF_BROADCAST` and `IFF_MULTICAST`: an Ethernet-like link (not `lo`, not a tunnel).
    pub ethernet_like: bool,
    /// MTU.
    pub mtu: u32,
    /// Transmit queue length.
    pub tx_queue_len: u32,
    /// Kind (`veth`, `macvlan`, `bridge`, ...), `None` for physical devices and `lo`.
    pub kind: Option<String>,
    /// Index of the parent or peer link (`IFLA_LINK`: a veth's peer, a macvlan's master), which
    /// may be in another namespace.
    pub link: Option<u32>,
}

impl Link {
    pub(crate) fn from_message(message: &LinkMessage) -> Self {
        let mut link = Self {
            index: message.header.index,
            name: String::new(),
            mac: None,
            up: message.header.flags.contains(LinkFlags::Up),
            ethernet_like: message.header.flags.contains(LinkFlags::Broadcast)
                && message.header.flags.contains(LinkFlags::Multicast),
            mtu: 0,
            tx_queue_len: 0,
            kind: None,
            link: None,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::Address(bytes) => link.mac = <Mac>::try_from(bytes.as_slice()).ok(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::TxQueueLen(len) => link.tx_queue_len = *len,
                LinkAttribute::Link(index) => link.link = Some(*index),
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.iter().find_map(|info| match info {
                        LinkInfo::Kind(kind) => Some(kind_name(kind)),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        link
    }
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Other(name) => name.clone(),
        known => format!("{known}").to_lowercase(),
    }
}

/// A change to one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// Set `IFF_UP`.
    Up,
    /// Set the MAC address.
    Mac(Mac),
    /// Set the MTU.
    Mtu(u32),
    /// Set the transmit queue length.
    TxQueueLen(u32),
}

impl Handle {
    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let answers = self
            .dump(
                || "list links".to_owned(),
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
            )
            .await?;
        Ok(answers
            .iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewLink(message) => Some(Link::from_message(message)),
                _ => None,
            })
            .collect())
    }

    /// The link called `name`, `None` when there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.one_link(|| format!("get link {name}"), message).await
    }

    /// The link with index `index`, `None` when there is none.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        self.one_link(|| format!("get link #{index}"), message).await
    }

    async fn one_link(&self, op: impl FnOnce() -> String, message: LinkMessage) -> Result<Option<Link>> {
        match self.get(op, RouteNetlinkMessage::GetLink(message)).await {
            Ok(answers) => Ok(answers.iter().find_map(|answer| match answer {
                RouteNetlinkMessage::NewLink(message) => Some(Link::from_message(message)),
                _ => None,
            })),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Applies one change to the link with index `index`.
    pub async fn set_link(&self, index: u32, change: LinkChange) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        match &change {
            LinkChange::Up => {
                message.header.flags = LinkFlags::Up;
                message.header.change_mask = LinkFlags::Up;
            }
            LinkChange::Mac(mac) => message.attributes.push(LinkAttribute::Address(mac.to_vec())),
            LinkChange::Mtu(mtu) => message.attributes.push(LinkAttribute::Mtu(*mtu)),
            LinkChange::TxQueueLen(len) => message.attributes.push(LinkAttribute::TxQueueLen(*len)),
        }
        self.write(
            || format!("set link #{index}: {change:?}"),
            RouteNetlinkMessage::SetLink(message),
            Write::Modify,
        )
        .await
    }

    /// Deletes the link with index `index` (a veth takes its peer with it).
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        self.write(
            || format!("delete link #{index}"),
            RouteNetlinkMessage::DelLink(message),
            Write::Modify,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_formatted_like_ip_link_does() {
        assert_eq!(format_mac(&[0x0a, 0x1b, 0, 0x0a, 0xff, 1]), "0a:1b:00:0a:ff:01");
    }
}
