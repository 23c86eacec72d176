//! Routes in any table, and the kernel's route lookup (`ip route get`).

use std::net::IpAddr;

use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use spiderpool_ipmath::{IpFamily, IpNet};

use crate::error::Result;
use crate::handle::{Handle, Write};

/// The main routing table.
pub const TABLE_MAIN: u32 = 254;
/// The local routing table (the kernel's own routes to this host's addresses).
pub const TABLE_LOCAL: u32 = 255;

/// How far a route reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Through a gateway, or anywhere.
    Universe,
    /// Directly on the link.
    Link,
    /// This host.
    Host,
    /// Another value.
    Other(u8),
}

/// One next hop of a multipath route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NextHop {
    /// Output interface.
    pub oif: u32,
    /// Gateway.
    pub gateway: Option<IpAddr>,
}

/// A route. On input (add, delete) only the fields that identify it are sent; on output every field
/// the kernel reports is filled in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// Routing table.
    pub table: u32,
    /// Destination (`0.0.0.0/0` or `::/0` for a default route).
    pub destination: IpNet,
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// Output interface.
    pub oif: Option<u32>,
    /// Scope.
    pub scope: Scope,
    /// Preferred source address (`src` in `ip route`).
    pub source: Option<IpAddr>,
    /// Metric (`metric`/`priority` in `ip route`), `None` when the kernel reports none.
    pub metric: Option<u32>,
    /// A unicast route (not local, broadcast, multicast, blackhole, ...).
    pub unicast: bool,
    /// The next hops of a multipath route (empty otherwise).
    pub multipath: Vec<NextHop>,
}

impl Route {
    /// A unicast route to `destination` in `table` through `oif`, link scope when there is no
    /// gateway, universe scope otherwise.
    pub fn new(table: u32, destination: IpNet, oif: u32, gateway: Option<IpAddr>) -> Self {
        Self {
            table,
            destination,
            gateway,
            oif: Some(oif),
            scope: if gateway.is_some() {
                Scope::Universe
            } else {
                Scope::Link
            },
            source: None,
            metric: None,
            unicast: true,
            multipath: Vec::new(),
        }
    }

    /// The family of its destination.
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.destination.addr())
    }

    /// A default route (`0.0.0.0/0` or `::/0`).
    pub fn is_default(&self) -> bool {
        self.destination.prefix_len() == 0
    }

    /// Whether it leaves through `oif`, directly or as one of its next hops.
    pub fn uses(&self, oif: u32) -> bool {
        self.oif == Some(oif) || self.multipath.iter().any(|hop| hop.oif == oif)
    }
}

/// The netlink family of an IP family.
pub(crate) fn address_family(family: IpFamily) -> AddressFamily {
    match family {
        IpFamily::V4 => AddressFamily::Inet,
        IpFamily::V6 => AddressFamily::Inet6,
    }
}

fn route_scope(scope: Scope) -> RouteScope {
    match scope {
        Scope::Universe => RouteScope::Universe,
        Scope::Link => RouteScope::Link,
        Scope::Host => RouteScope::Host,
        Scope::Other(value) => RouteScope::Other(value),
    }
}

fn scope_of(scope: RouteScope) -> Scope {
    match scope {
        RouteScope::Universe => Scope::Universe,
        RouteScope::Link => Scope::Link,
        RouteScope::Host => Scope::Host,
        other => Scope::Other(u8::from(other)),
    }
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// The request message for `route`: header, table, destination, gateway, output interface and
/// preferred source. An add is marked as made at boot (`proto boot`, as `ip route add` does); a
/// delete names no protocol, so that it matches a route whoever made it.
fn message(route: &Route, write: Write) -> RouteMessage {
    let mut message = RouteMessage::default();
    let family = route.family();
    message.header = RouteHeader {
        address_family: address_family(family),
        destination_prefix_length: route.destination.prefix_len(),
        table: u8::try_from(route.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC),
        protocol: if write == Write::Create {
            RouteProtocol::Boot
        } else {
            RouteProtocol::Unspec
        },
        scope: route_scope(route.scope),
        kind: RouteType::Unicast,
        ..RouteHeader::default()
    };
    message.attributes.push(RouteAttribute::Table(route.table));
    message
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::from(
            route.destination.network(),
        )));
    if let Some(gateway) = route.gateway {
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
    }
    if let Some(oif) = route.oif {
        message.attributes.push(RouteAttribute::Oif(oif));
    }
    if let Some(source) = route.source {
        message
            .attributes
            .push(RouteAttribute::PrefSource(RouteAddress::from(source)));
    }
    if let Some(metric) = route.metric {
        message.attributes.push(RouteAttribute::Priority(metric));
    }
    message
}

fn from_message(message: &RouteMessage) -> Option<Route> {
    let family = match message.header.address_family {
        AddressFamily::Inet => IpFamily::V4,
        AddressFamily::Inet6 => IpFamily::V6,
        _ => return None,
    };
    let mut table = u32::from(message.header.table);
    let mut destination = None;
    let mut route = Route {
        table,
        destination: IpNet::new(family.addr_from_u128(0)?, 0).ok()?,
        gateway: None,
        oif: None,
        scope: scope_of(message.header.scope),
        source: None,
        metric: None,
        unicast: message.header.kind == RouteType::Unicast,
        multipath: Vec::new(),
    };
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Table(id) => table = *id,
            RouteAttribute::Destination(address) => destination = ip_of(address),
            RouteAttribute::Gateway(address) => route.gateway = ip_of(address),
            RouteAttribute::Oif(oif) => route.oif = Some(*oif),
            RouteAttribute::PrefSource(address) => route.source = ip_of(address),
            RouteAttribute::Priority(metric) => route.metric = Some(*metric),
            RouteAttribute::MultiPath(hops) => {
                route.multipath = hops
                    .iter()
                    .map(|hop| NextHop {
                        oif: hop.interface_index,
                        gateway: hop.attributes.iter().find_map(|attribute| match attribute {
                            RouteAttribute::Gateway(address) => ip_of(address),
                            _ => None,
                        }),
                    })
                    .collect();
            }
            _ => {}
        }
    }
    route.table = table;
    if let Some(destination) = destination {
        route.destination = IpNet::new(destination, message.header.destination_prefix_length).ok()?;
    }
    Some(route)
}

impl Handle {
    /// Every route of `family` in every table (filter by [`Route::table`]).
    pub async fn routes(&self, family: IpFamily) -> Result<Vec<Route>> {
        let mut request = RouteMessage::default();
        request.header.address_family = address_family(family);
        let answers = self
            .dump(
                || format!("list {family} routes"),
                RouteNetlinkMessage::GetRoute(request),
            )
            .await?;
        Ok(answers
            .iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewRoute(message) => from_message(message),
                _ => None,
            })
            .filter(|route| route.family() == family)
            .collect())
    }

    /// Adds `route`. `EEXIST` when an equal route is there already.
    pub async fn add_route(&self, route: &Route) -> Result<()> {
        self.write(
            || format!("add route {}", describe(route)),
            RouteNetlinkMessage::NewRoute(message(route, Write::Create)),
            Write::Create,
        )
        .await
    }

    /// Deletes `route`. `ESRCH` when there is no such route.
    pub async fn delete_route(&self, route: &Route) -> Result<()> {
        self.write(
            || format!("delete route {}", describe(route)),
            RouteNetlinkMessage::DelRoute(message(route, Write::Modify)),
            Write::Modify,
        )
        .await
    }

    /// The route the kernel would use to reach `destination` (`ip route get`): its output
    /// interface, gateway and, in [`Route::source`], the source address it would pick.
    pub async fn route_get(&self, destination: IpAddr) -> Result<Option<Route>> {
        let family = IpFamily::of(&destination);
        let mut request = RouteMessage::default();
        request.header.address_family = address_family(family);
        request.header.destination_prefix_length = family.bits();
        request
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(destination)));
        let answers = self
            .get(
                || format!("route get {destination}"),
                RouteNetlinkMessage::GetRoute(request),
            )
            .await?;
        Ok(answers.iter().find_map(|answer| match answer {
            RouteNetlinkMessage::NewRoute(message) => from_message(message),
            _ => None,
        }))
    }
}

/// `dst via gw dev #oif table T` for error messages.
pub fn describe(route: &Route) -> String {
    let mut text = route.destination.to_string();
    if let Some(gateway) = route.gateway {
        text.push_str(&format!(" via {gateway}"));
    }
    if let Some(oif) = route.oif {
        text.push_str(&format!(" dev #{oif}"));
    }
    if let Some(source) = route.source {
        text.push_str(&format!(" src {source}"));
    }
    text.push_str(&format!(" table {}", route.table));
    text
}
