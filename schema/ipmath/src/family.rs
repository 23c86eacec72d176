//! Address families and the `u128` encoding every set operation works on.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// IPv4 or IPv6.
///
/// Upstream stores the family as `ipVersion: 4 | 6` (an `int64` in the CRDs) and as the label
/// value `IPv4`/`IPv6`; this enum converts between both so no other crate hard-codes the numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    /// IPv4, `ipVersion: 4`.
    V4,
    /// IPv6, `ipVersion: 6`. IPv4-mapped addresses (`::ffff:1.2.3.4`) are IPv6 here, as they are
    /// for upstream's validators (they contain a `:`).
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// The family of a network; upstream derives a pool's `ipVersion` from its `subnet` this way.
    pub fn of_net(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Self::V4,
            IpNet::V6(_) => Self::V6,
        }
    }

    /// The CRD `ipVersion` value: 4 or 6. `i64` because that is the CRD field's type.
    pub fn as_version(self) -> i64 {
        match self {
            Self::V4 => 4,
            Self::V6 => 6,
        }
    }

    /// The family for a CRD `ipVersion` value; `None` for anything but 4 and 6, so callers can
    /// turn a bad value into a validation error instead of guessing.
    pub fn from_version(version: i64) -> Option<Self> {
        match version {
            4 => Some(Self::V4),
            6 => Some(Self::V6),
            _ => None,
        }
    }

    /// Address width in bits (32 or 128), i.e. the longest valid prefix length.
    pub fn bits(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }

    /// The highest address of the family as a number (`u32::MAX` or `u128::MAX`), the upper
    /// bound for [`IpFamily::addr_from_u128`].
    pub fn max_value(self) -> u128 {
        match self {
            Self::V4 => u128::from(u32::MAX),
            Self::V6 => u128::MAX,
        }
    }

    /// The address with numeric value `value` in this family, or `None` if `value` is above
    /// [`IpFamily::max_value`]. The inverse of [`ip_to_u128`]; used by allocators that do offset
    /// arithmetic.
    pub fn addr_from_u128(self, value: u128) -> Option<IpAddr> {
        match self {
            Self::V4 => u32::try_from(value).ok().map(|v| IpAddr::V4(Ipv4Addr::from(v))),
            Self::V6 => Some(IpAddr::V6(Ipv6Addr::from(value))),
        }
    }

    /// Like [`IpFamily::addr_from_u128`] for values the caller already knows are in range
    /// (they came from an address of this family). Out-of-range values clamp to the highest
    /// address instead of panicking; the set code never produces them.
    pub(crate) fn addr(self, value: u128) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(value).unwrap_or(u32::MAX))),
            Self::V6 => IpAddr::V6(Ipv6Addr::from(value)),
        }
    }
}

impl fmt::Display for IpFamily {
    /// `IPv4` / `IPv6`, the spelling upstream uses in the `ipam.spidernet.io/ip-version` label and
    /// in its messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// The numeric value of an address (IPv4 in the low 32 bits).
///
/// All set arithmetic runs on these numbers, so ranges are compared and merged without ever
/// listing addresses. The family is not encoded: only compare values of the same family.
pub fn ip_to_u128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(*v4)),
        IpAddr::V6(v6) => u128::from(*v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_round_trip() {
        for family in [IpFamily::V4, IpFamily::V6] {
            assert_eq!(IpFamily::from_version(family.as_version()), Some(family));
        }
        assert_eq!(IpFamily::V4.as_version(), 4);
        assert_eq!(IpFamily::V6.as_version(), 6);
        assert_eq!(IpFamily::from_version(0), None);
        assert_eq!(IpFamily::from_version(5), None);
        assert_eq!(IpFamily::from_version(-4), None);
    }

    #[test]
    fn display_matches_upstream_label_values() {
        assert_eq!(IpFamily::V4.to_string(), "IPv4");
        assert_eq!(IpFamily::V6.to_string(), "IPv6");
    }

    #[test]
    fn of_address_and_network() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(IpFamily::of(&v4), IpFamily::V4);
        assert_eq!(IpFamily::of(&v6), IpFamily::V6);
        assert_eq!(IpFamily::of_net(&"10.0.0.0/8".parse().unwrap()), IpFamily::V4);
        assert_eq!(IpFamily::of_net(&"fd00::/8".parse().unwrap()), IpFamily::V6);
    }

    #[test]
    fn u128_round_trip_and_bounds() {
        let v4: IpAddr = "255.255.255.255".parse().unwrap();
        assert_eq!(ip_to_u128(&v4), u128::from(u32::MAX));
        assert_eq!(IpFamily::V4.addr_from_u128(u128::from(u32::MAX)), Some(v4));
        assert_eq!(IpFamily::V4.addr_from_u128(u128::from(u32::MAX) + 1), None);
        let v6: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        assert_eq!(ip_to_u128(&v6), u128::MAX);
        assert_eq!(IpFamily::V6.addr_from_u128(u128::MAX), Some(v6));
        assert_eq!(IpFamily::V4.max_value(), u128::from(u32::MAX));
        assert_eq!(IpFamily::V6.max_value(), u128::MAX);
        assert_eq!(IpFamily::V4.bits(), 32);
        assert_eq!(IpFamily::V6.bits(), 128);
    }
}
