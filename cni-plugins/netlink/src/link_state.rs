//! What a link is part of and how it is doing: its master (a bond's members have the bond), carrier
//! and operational state, and what its kind adds (a bond's mode and options, a VLAN's tag); taking a
//! link down, enslaving it to a bond and releasing it.

use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{
    InfoData, InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};

use crate::bond::BondSettings;
use crate::error::Result;
use crate::handle::{Handle, Write};
use crate::link::Link;

/// A link with its place among the others and its kind's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkDetail {
    /// What every link has.
    pub link: Link,
    /// Index of the master (the bond of a member, the bridge of a port).
    pub master: Option<u32>,
    /// Carrier (`IFLA_CARRIER`): the link can pass packets at layer 1. A link that is down has none.
    pub carrier: bool,
    /// Operational state (`IFLA_OPERSTATE`) as `ip link` prints it: `UP`, `DOWN`, `LOWERLAYERDOWN`,
    /// `UNKNOWN` (what dummies and `lo` report), ...
    pub oper_state: String,
    /// What the kind adds.
    pub kind: KindDetail,
}

/// Settings of the link's kind, for the kinds this layer manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KindDetail {
    /// A bond's mode and options.
    Bond(BondSettings),
    /// A VLAN's tag (its parent is [`Link::link`]).
    Vlan {
        /// The 802.1q tag.
        id: u16,
    },
    /// Anything else (physical devices, dummies, veths, ...).
    Other,
}

impl LinkDetail {
    fn from_message(message: &LinkMessage, name_of: &dyn Fn(u32) -> String) -> Self {
        let mut detail = LinkDetail {
            link: Link::from_message(message),
            master: None,
            carrier: false,
            oper_state: "UNKNOWN".to_owned(),
            kind: KindDetail::Other,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::Controller(index) if *index != 0 => detail.master = Some(*index),
                LinkAttribute::Carrier(carrier) => detail.carrier = *carrier != 0,
                LinkAttribute::OperState(state) => detail.oper_state = oper_state_name(state),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Data(InfoData::Bond(bond)) => {
                                detail.kind = KindDetail::Bond(BondSettings::from_infos(bond, name_of));
                            }
                            LinkInfo::Data(InfoData::Vlan(vlan)) => {
                                if let Some(id) = vlan.iter().find_map(|v| match v {
                                    InfoVlan::Id(id) => Some(*id),
                                    _ => None,
                                }) {
                                    detail.kind = KindDetail::Vlan { id };
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        detail
    }
}

fn oper_state_name(state: &State) -> String {
    match state {
        State::Up => "UP",
        State::Down => "DOWN",
        State::LowerLayerDown => "LOWERLAYERDOWN",
        State::Dormant => "DORMANT",
        State::NotPresent => "NOTPRESENT",
        State::Testing => "TESTING",
        _ => "UNKNOWN",
    }
    .to_owned()
}

impl Handle {
    /// Every link of the namespace with its master, carrier and kind settings (one dump).
    pub async fn link_details(&self) -> Result<Vec<LinkDetail>> {
        let answers = self
            .dump(
                || "list links".to_owned(),
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
            )
            .await?;
        let messages: Vec<&LinkMessage> = answers
            .iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewLink(message) => Some(message),
                _ => None,
            })
            .collect();
        let name_of = |index: u32| {
            messages
                .iter()
                .find(|m| m.header.index == index)
                .and_then(|m| {
                    m.attributes.iter().find_map(|a| match a {
                        LinkAttribute::IfName(name) => Some(name.clone()),
                        _ => None,
                    })
                })
                .unwrap_or_default()
        };
        Ok(messages
            .iter()
            .map(|m| LinkDetail::from_message(m, &name_of))
            .collect())
    }

    /// Clears `IFF_UP` on the link with index `index`.
    pub async fn set_link_down(&self, index: u32) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.change_mask = LinkFlags::Up;
        self.write(
            || format!("set link #{index} down"),
            RouteNetlinkMessage::SetLink(message),
            Write::Modify,
        )
        .await
    }

    /// Makes the link with index `index` a member of `master` (a bond); the bonding driver refuses
    /// a member that is up.
    pub async fn set_master(&self, index: u32, master: u32) -> Result<()> {
        self.controller(index, master, || format!("enslave link #{index} to #{master}"))
            .await
    }

    /// Releases the link with index `index` from its master (it stays down).
    pub async fn release_from_master(&self, index: u32) -> Result<()> {
        self.controller(index, 0, || format!("release link #{index} from its master"))
            .await
    }

    async fn controller(&self, index: u32, master: u32, op: impl FnOnce() -> String) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes.push(LinkAttribute::Controller(master));
        self.write(op, RouteNetlinkMessage::SetLink(message), Write::Modify)
            .await
    }
}
