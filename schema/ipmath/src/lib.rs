//! IP arithmetic for spiderpool-rs: the one place that parses, normalises and combines
//! addresses, ranges and CIDRs.
//!
//! Schema validation, the topology compiler, the operator and the node daemon's allocator all
//! use this crate, so they agree on what `10.6.0.10-10.6.0.20` means, which list form is
//! canonical and which address is allocated next. It is pure (no I/O) and panic-free.
//!
//! Input formats follow upstream Spiderpool:
//!
//! * single address: `10.0.0.5`, `fd00::5` ([`parse_ip`]);
//! * inclusive range: `10.6.0.10-10.6.0.20` ([`IpRange::parse`]), same family, start <= end;
//! * CIDR: `10.6.0.0/16` ([`parse_cidr`]); `spec.subnet` fields must be canonical
//!   ([`parse_canonical_cidr`]);
//! * address lists (`ips`, `excludeIPs`, `SpiderReservedIP.spec.ips`): singles and ranges of one
//!   family ([`IpSet::parse_list`]).
//!
//! Whitespace is never trimmed; upstream rejects it and so do we, with a message that says so.
//!
//! [`IpSet`] stores sets as merged intervals, so `::/0` costs as much as `10.0.0.1`.
//!
//! ```
//! use spiderpool_ipmath::{IpFamily, IpSet};
//!
//! let ips = IpSet::parse_list(IpFamily::V4, &["10.6.0.10-10.6.0.20", "10.6.0.21"]).unwrap();
//! let exclude = IpSet::parse_list(IpFamily::V4, &["10.6.0.10"]).unwrap();
//! let used = IpSet::parse_list(IpFamily::V4, &["10.6.0.11-10.6.0.12"]).unwrap();
//! let usable = ips.difference(&exclude);
//! assert_eq!(usable.to_strings(), ["10.6.0.11-10.6.0.21"]);
//! assert_eq!(usable.lowest_free(&used).unwrap().to_string(), "10.6.0.13");
//! ```

#![warn(missing_docs)]

mod error;
mod family;
mod net;
mod parse;
mod range;
mod set;

pub use error::{IpError, ItemError};
pub use family::{IpFamily, ip_to_u128};
pub use net::{cidr_label_value, nets_overlap, network_contains};
pub use parse::{parse_canonical_cidr, parse_cidr, parse_ip};
pub use range::IpRange;
pub use set::{IpSet, Iter};

/// Re-exported so callers use the same `IpNet` type as this crate's API without adding their own
/// `ipnet` dependency (and risking a second version).
pub use ipnet::IpNet;
