//! Veth pairs, with the peer created directly in another namespace (so it never appears, even
//! briefly, in this one under a name that could collide).

use std::os::fd::AsRawFd;

use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage};

use crate::error::Result;
use crate::handle::{Handle, Write};
use crate::link::Mac;
use crate::netns::Netns;

/// One end of a veth pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethEnd {
    /// Interface name.
    pub name: String,
    /// MAC address; the kernel picks a random one when `None`. Setting it explicitly also stops
    /// udev/systemd (`MACAddressPolicy=persistent`) from changing it after creation.
    pub mac: Option<Mac>,
}

impl VethEnd {
    fn attributes(&self, mtu: u32) -> Vec<LinkAttribute> {
        let mut attributes = vec![LinkAttribute::IfName(self.name.clone()), LinkAttribute::Mtu(mtu)];
        if let Some(mac) = self.mac {
            attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        attributes
    }
}

impl Handle {
    /// Creates a veth pair: `local` in this handle's namespace and `peer` in `peer_netns` (this
    /// namespace when `None`), both with `mtu`, both down. `EEXIST` when a name is taken.
    pub async fn create_veth(
        &self,
        local: &VethEnd,
        peer: &VethEnd,
        mtu: u32,
        peer_netns: Option<&Netns>,
    ) -> Result<()> {
        let mut peer_message = LinkMessage::default();
        peer_message.attributes = peer.attributes(mtu);
        if let Some(netns) = peer_netns {
            // The fd only has to be valid while the request is sent; `netns` outlives this call.
            peer_message
                .attributes
                .push(LinkAttribute::NetNsFd(netns.as_raw_fd()));
        }
        let mut message = LinkMessage::default();
        message.attributes = local.attributes(mtu);
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_message))),
        ]));
        self.write(
            || format!("create veth {} <-> {}", local.name, peer.name),
            RouteNetlinkMessage::NewLink(message),
            Write::Create,
        )
        .await
    }
}
