//! Interface addresses.

use std::net::IpAddr;

use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use spiderpool_ipmath::{IpFamily, IpNet};

use crate::error::Result;
use crate::handle::{Handle, Write};
use crate::route::address_family;

/// One address of one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Address {
    /// Interface index.
    pub index: u32,
    /// The address with its prefix length (the host bits are kept: `10.6.0.10/16`).
    pub address: IpNet,
    /// Link-local scope (`fe80::/64`, `169.254.0.0/16` as the kernel scoped it).
    pub link_scope: bool,
}

impl Handle {
    /// Every address of the namespace, of `family` when given.
    pub async fn addresses(&self, family: Option<IpFamily>) -> Result<Vec<Address>> {
        let mut request = AddressMessage::default();
        if let Some(family) = family {
            request.header.family = address_family(family);
        }
        let answers = self
            .dump(
                || "list addresses".to_owned(),
                RouteNetlinkMessage::GetAddress(request),
            )
            .await?;
        Ok(answers
            .iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewAddress(message) => from_message(message),
                _ => None,
            })
            .filter(|address| family.is_none_or(|family| IpFamily::of(&address.address.addr()) == family))
            .collect())
    }

    /// Adds `address` to the interface `index`. `EEXIST` when it is there already.
    pub async fn add_address(&self, index: u32, address: IpNet) -> Result<()> {
        self.write(
            || format!("add address {address} to link #{index}"),
            RouteNetlinkMessage::NewAddress(message(index, address)),
            Write::Create,
        )
        .await
    }

    /// Removes `address` from the interface `index`.
    pub async fn delete_address(&self, index: u32, address: IpNet) -> Result<()> {
        self.write(
            || format!("delete address {address} from link #{index}"),
            RouteNetlinkMessage::DelAddress(message(index, address)),
            Write::Modify,
        )
        .await
    }
}

fn message(index: u32, address: IpNet) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.family = address_family(IpFamily::of(&address.addr()));
    message.header.prefix_len = address.prefix_len();
    message.header.index = index;
    message.attributes.push(AddressAttribute::Local(address.addr()));
    message.attributes.push(AddressAttribute::Address(address.addr()));
    message
}

fn from_message(message: &AddressMessage) -> Option<Address> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on point-to-point links.
    let local = message.attributes.iter().find_map(|attribute| match attribute {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let any = message.attributes.iter().find_map(|attribute| match attribute {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    let ip: IpAddr = local.or(any)?;
    Some(Address {
        index: message.header.index,
        address: IpNet::new(ip, message.header.prefix_len).ok()?,
        link_scope: message.header.scope == AddressScope::Link,
    })
}
