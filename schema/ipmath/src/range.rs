//! Inclusive address ranges, upstream's `a` / `a-b` list items.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::parse::{check_text, parse_cidr};
use crate::{IpError, IpFamily, ip_to_u128};

/// An inclusive range of addresses of one family, written `a` (one address) or `a-b`.
///
/// This is the item type of upstream's `ips`, `excludeIPs` and `SpiderReservedIP.spec.ips`
/// lists. The fields are private so a value always satisfies `start <= end` with both ends of the
/// same family; build one with [`IpRange::parse`], [`IpRange::new`], [`IpRange::single`] or
/// [`IpRange::from_net`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpRange {
    start: IpAddr,
    end: IpAddr,
}

impl IpRange {
    /// A range from `start` to `end`, both included.
    ///
    /// Fails if the ends are of different families or `end < start` (upstream rejects reversed
    /// ranges instead of swapping them). The error's text is `start-end`.
    pub fn new(start: IpAddr, end: IpAddr) -> Result<Self, IpError> {
        Self::checked(start, end, || format!("{start}-{end}"))
    }

    fn checked(start: IpAddr, end: IpAddr, text: impl Fn() -> String) -> Result<Self, IpError> {
        if IpFamily::of(&start) != IpFamily::of(&end) {
            return Err(IpError::RangeMixedFamily { text: text() });
        }
        if ip_to_u128(&end) < ip_to_u128(&start) {
            return Err(IpError::RangeReversed {
                text: text(),
                suggestion: format!("{end}-{start}"),
            });
        }
        Ok(Self { start, end })
    }

    /// For callers that already hold `start <= end` of one family (the set code).
    pub(crate) fn from_ordered(start: IpAddr, end: IpAddr) -> Self {
        Self { start, end }
    }

    /// The range holding just `ip`; displays as the bare address.
    pub fn single(ip: IpAddr) -> Self {
        Self { start: ip, end: ip }
    }

    /// Every address of `net`, from the network address to the broadcast address. Host bits
    /// in `net`'s address are ignored, so `10.0.0.5/24` gives `10.0.0.0-10.0.0.255`.
    pub fn from_net(net: &IpNet) -> Self {
        Self {
            start: net.network(),
            end: net.broadcast(),
        }
    }

    /// Parses `a` or `a-b` exactly as upstream's `IsIPRange` accepts it: no whitespace, exactly
    /// one `-`, both ends the same family, `a <= b`.
    ///
    /// A CIDR is not a range; it is rejected with a message naming the `a-b` range it covers,
    /// since writing a CIDR into `ips` is the most common mistake.
    pub fn parse(text: &str) -> Result<Self, IpError> {
        check_text(text)?;
        let mut parts = text.split('-');
        let (Some(first), second, None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(IpError::RangeTooManyDashes {
                text: text.to_owned(),
            });
        };
        let Some(second) = second else {
            return Self::parse_single(text);
        };
        if first.is_empty() || second.is_empty() {
            return Err(IpError::RangeMissingBound {
                text: text.to_owned(),
            });
        }
        let bound = |part: &str| -> Result<IpAddr, IpError> {
            part.parse().map_err(|_| IpError::InvalidRangeBound {
                text: text.to_owned(),
                bound: part.to_owned(),
            })
        };
        let start = bound(first)?;
        let end = bound(second)?;
        Self::checked(start, end, || text.to_owned())
    }

    fn parse_single(text: &str) -> Result<Self, IpError> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Self::single(ip));
        }
        if text.contains('/') {
            // Either a good CIDR in the wrong place, or a broken one: both messages beat
            // "not an address".
            let net = parse_cidr(text)?;
            return Err(IpError::CidrNotAllowed {
                text: text.to_owned(),
                range: Self::from_net(&net).to_string(),
            });
        }
        Err(IpError::InvalidIp {
            text: text.to_owned(),
        })
    }

    /// The first address.
    pub fn start(&self) -> IpAddr {
        self.start
    }

    /// The last address (included).
    pub fn end(&self) -> IpAddr {
        self.end
    }

    /// The family of both ends.
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.start)
    }

    /// Number of addresses. Saturates at `u128::MAX` for the whole IPv6 space (2^128 addresses
    /// don't fit), which is the only range that large.
    pub fn len(&self) -> u128 {
        (ip_to_u128(&self.end) - ip_to_u128(&self.start)).saturating_add(1)
    }

    /// Always `false`: a range holds at least one address. Present because `len` without
    /// `is_empty` surprises readers (and clippy).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `ip` is in the range; `false` for an address of the other family.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        IpFamily::of(ip) == self.family()
            && (ip_to_u128(&self.start)..=ip_to_u128(&self.end)).contains(&ip_to_u128(ip))
    }
}

impl fmt::Display for IpRange {
    /// Upstream's form: `a` when the range is a single address, else `a-b`, with IPv6 written
    /// in RFC 5952 compressed form (`fd00::1-fd00::a`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl FromStr for IpRange {
    type Err = IpError;

    /// Same as [`IpRange::parse`].
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn msg(text: &str) -> String {
        match IpRange::parse(text) {
            Ok(r) => panic!("`{text}` parsed as {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_single_and_range() {
        let r = IpRange::parse("10.0.0.5").unwrap();
        assert_eq!((r.start(), r.end(), r.len()), (ip("10.0.0.5"), ip("10.0.0.5"), 1));
        assert_eq!(r.to_string(), "10.0.0.5");

        let r = IpRange::parse("10.6.0.10-10.6.0.20").unwrap();
        assert_eq!(r.len(), 11);
        assert_eq!(r.family(), IpFamily::V4);
        assert_eq!(r.to_string(), "10.6.0.10-10.6.0.20");

        let r: IpRange = "fd00:0:0:0:0:0:0:1-FD00::A".parse().unwrap();
        assert_eq!(r.len(), 10);
        assert_eq!(r.family(), IpFamily::V6);
        assert_eq!(r.to_string(), "fd00::1-fd00::a");

        // a-a is accepted and prints as `a`.
        assert_eq!(
            IpRange::parse("10.0.0.1-10.0.0.1").unwrap().to_string(),
            "10.0.0.1"
        );
    }

    #[test]
    fn len_saturates_for_the_whole_ipv6_space() {
        let all = IpRange::parse("::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").unwrap();
        assert_eq!(all.len(), u128::MAX);
        assert!(!all.is_empty());
        let all_v4 = IpRange::parse("0.0.0.0-255.255.255.255").unwrap();
        assert_eq!(all_v4.len(), 1 << 32);
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            msg("10.0.0.9-10.0.0.1"),
            "range `10.0.0.9-10.0.0.1` ends before it starts; did you mean `10.0.0.1-10.0.0.9`?"
        );
        assert_eq!(
            msg("fd00::a-fd00::1"),
            "range `fd00::a-fd00::1` ends before it starts; did you mean `fd00::1-fd00::a`?"
        );
        assert_eq!(
            msg("10.0.0.1-fd00::1"),
            "range `10.0.0.1-fd00::1` mixes IPv4 and IPv6"
        );
        assert_eq!(
            msg("fd00::1-10.0.0.1"),
            "range `fd00::1-10.0.0.1` mixes IPv4 and IPv6"
        );
        assert_eq!(msg("10.0.0.300"), "`10.0.0.300` is not an IPv4 or IPv6 address");
        assert_eq!(
            msg("10.0.0.1-10.0.0.300"),
            "range `10.0.0.1-10.0.0.300` is invalid: `10.0.0.300` is not an IPv4 or IPv6 address"
        );
        assert_eq!(
            msg("x-10.0.0.3"),
            "range `x-10.0.0.3` is invalid: `x` is not an IPv4 or IPv6 address"
        );
        assert_eq!(
            msg("10.0.0.1-"),
            "range `10.0.0.1-` needs an address on both sides of `-`"
        );
        assert_eq!(
            msg("-10.0.0.1"),
            "range `-10.0.0.1` needs an address on both sides of `-`"
        );
        assert_eq!(msg("-"), "range `-` needs an address on both sides of `-`");
        assert_eq!(
            msg("10.0.0.1-10.0.0.2-10.0.0.3"),
            "`10.0.0.1-10.0.0.2-10.0.0.3` is not a valid range: write exactly one `-` between the first and the last address"
        );
        assert_eq!(
            msg("10.0.0.1--10.0.0.3"),
            IpError::RangeTooManyDashes {
                text: "10.0.0.1--10.0.0.3".into()
            }
            .to_string()
        );
        assert_eq!(
            msg("10.0.0.1 - 10.0.0.5"),
            "`10.0.0.1 - 10.0.0.5` contains whitespace; write IPs, ranges and CIDRs without spaces"
        );
        assert_eq!(
            msg("\t10.0.0.1"),
            IpError::Whitespace {
                text: "\t10.0.0.1".into()
            }
            .to_string()
        );
        assert_eq!(msg(""), "empty string is not an IP address, range or CIDR");
        assert_eq!(
            msg("10.0.0.0/30"),
            "`10.0.0.0/30` is a CIDR, but this field takes single IPs and `start-end` ranges; write `10.0.0.0-10.0.0.3`"
        );
        assert_eq!(
            msg("fd00::/126"),
            "`fd00::/126` is a CIDR, but this field takes single IPs and `start-end` ranges; write `fd00::-fd00::3`"
        );
        assert_eq!(
            msg("10.0.0.0/33"),
            "`10.0.0.0/33` is not a valid CIDR: prefix length 33 exceeds 32"
        );
    }

    #[test]
    fn new_checks_like_parse() {
        assert_eq!(IpRange::new(ip("10.0.0.1"), ip("10.0.0.3")).unwrap().len(), 3);
        assert_eq!(
            IpRange::new(ip("10.0.0.3"), ip("10.0.0.1")),
            Err(IpError::RangeReversed {
                text: "10.0.0.3-10.0.0.1".into(),
                suggestion: "10.0.0.1-10.0.0.3".into()
            })
        );
        assert_eq!(
            IpRange::new(ip("10.0.0.3"), ip("::1")),
            Err(IpError::RangeMixedFamily {
                text: "10.0.0.3-::1".into()
            })
        );
    }

    #[test]
    fn from_net_ignores_host_bits() {
        let r = IpRange::from_net(&"10.0.0.5/24".parse().unwrap());
        assert_eq!(r.to_string(), "10.0.0.0-10.0.0.255");
        let r = IpRange::from_net(&"fd00::/120".parse().unwrap());
        assert_eq!(r.to_string(), "fd00::-fd00::ff");
        let r = IpRange::from_net(&"10.0.0.9/32".parse().unwrap());
        assert_eq!(r.to_string(), "10.0.0.9");
    }

    #[test]
    fn contains_checks_family() {
        let r = IpRange::parse("10.0.0.1-10.0.0.3").unwrap();
        assert!(r.contains(&ip("10.0.0.1")));
        assert!(r.contains(&ip("10.0.0.3")));
        assert!(!r.contains(&ip("10.0.0.4")));
        assert!(!r.contains(&ip("10.0.0.0")));
        // ::a00:2 has the same numeric value as 10.0.0.2 but is IPv6.
        assert!(!r.contains(&ip("::a00:2")));
    }
}
