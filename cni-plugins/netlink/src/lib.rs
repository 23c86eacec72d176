//! `spiderpool-netlink`: the project's typed layer over `rtnetlink`.
//!
//! Every request goes through [`Handle`], which keeps the kernel's errno in [`NetlinkError`] so that
//! callers can tell "already there" ([`NetlinkError::is_exists`]) and "already gone"
//! ([`NetlinkError::is_not_found`]) from real failures, as containers/netavark's netlink layer does.
//! One file per object kind: [`link`], [`link_state`] (masters, carrier, down), [`bond`], [`vlan`], [`veth`], [`address`], [`route`], [`rule`], [`neighbour`];
//! [`netns`] opens network namespaces and runs code inside one, [`blocking`] drives the async
//! requests from synchronous programs.
//!
//! A handle is bound to the network namespace it was connected in ([`Handle::connect`] for the
//! caller's, [`Handle::connect_in`] for another), so a plugin holds one handle for the host and
//! one for the pod and never switches the namespace of its own thread.

pub mod address;
pub mod blocking;
pub mod bond;
pub mod error;
pub mod handle;
pub mod link;
pub mod link_state;
pub mod neighbour;
pub mod netns;
pub mod route;
pub mod rule;
pub mod veth;
pub mod vlan;

pub use address::Address;
pub use blocking::Blocking;
pub use bond::{BondOption, BondOptionValue, BondSettings};
pub use error::{NetlinkError, Result};
pub use handle::Handle;
pub use link::{Link, LinkChange, Mac};
pub use link_state::{KindDetail, LinkDetail};
pub use neighbour::Neighbour;
pub use netns::Netns;
pub use route::{NextHop, Route, Scope};
pub use rule::Rule;
pub use veth::VethEnd;
