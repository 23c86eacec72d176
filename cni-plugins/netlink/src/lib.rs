//! `spiderpool-netlink`: the project's typed layer over `rtnetlink`.
//!
//! Every request goes through [`Handle`], which keeps the kernel's errno in [`NetlinkError`] so that
//! callers can tell "already there" ([`NetlinkError::is_exists`]) and "already gone"
//! ([`NetlinkError::is_not_found`]) from real failures, as containers/netavark's netlink layer does.
//! One file per object kind: [`link`], [`veth`], [`address`], [`route`], [`rule`], [`neighbour`];
//! [`netns`] opens network namespaces and runs code inside one, [`blocking`] drives the async
//! requests from synchronous programs.
//!
//! A handle is bound to the network namespace it was connected in ([`Handle::connect`] for the
//! caller's, [`Handle::connect_in`] for another), so a plugin holds one handle for the host and
//! one for the pod and never switches the namespace of its own thread.

pub mod address;
pub mod blocking;
pub mod error;
pub mod handle;
pub mod link;
pub mod neighbour;
pub mod netns;
pub mod route;
pub mod rule;
pub mod veth;

pub use address::Address;
pub use blocking::Blocking;
pub use error::{NetlinkError, Result};
pub use handle::Handle;
pub use link::{Link, LinkChange, Mac};
pub use neighbour::Neighbour;
pub use netns::Netns;
pub use route::{NextHop, Route, Scope};
pub use rule::Rule;
pub use veth::VethEnd;
