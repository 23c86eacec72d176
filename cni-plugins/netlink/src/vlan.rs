//! 802.1q VLAN sub-interfaces.

use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVlan, LinkAttribute, LinkInfo, LinkMessage};

use crate::error::Result;
use crate::handle::{Handle, Write};

impl Handle {
    /// Creates VLAN `name` with tag `id` (1-4094) on the link with index `parent` (down, the
    /// parent's MTU). `EEXIST` when the name, or the tag on that parent, is taken.
    pub async fn create_vlan(&self, name: &str, parent: u32, id: u16) -> Result<()> {
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::IfName(name.to_owned()));
        message.attributes.push(LinkAttribute::Link(parent));
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vlan),
            LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(id)])),
        ]));
        self.write(
            || format!("create vlan {name} id {id} on link #{parent}"),
            RouteNetlinkMessage::NewLink(message),
            Write::Create,
        )
        .await
    }
}
