//! Strict parsers for single addresses and CIDRs, in the forms upstream accepts.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::{IpError, IpFamily};

/// Rejects the empty string and any whitespace before the real parse, so those get their own,
/// clearer message instead of "not an address".
pub(crate) fn check_text(text: &str) -> Result<(), IpError> {
    if text.is_empty() {
        return Err(IpError::Empty);
    }
    if text.chars().any(char::is_whitespace) {
        return Err(IpError::Whitespace {
            text: text.to_owned(),
        });
    }
    Ok(())
}

/// Parses one IPv4 or IPv6 address, the form of `gateway`, route `gw` and single `ips` items.
///
/// Strict on purpose: no surrounding whitespace, no IPv6 zone (`%eth0`), no brackets, no IPv4
/// leading zeros (`010.0.0.1`, ambiguous octal), no short IPv4 forms (`10.1`). These are all
/// things upstream's validator rejects too, so accepting them here would let a spec pass our
/// validation and fail upstream's (or vice versa).
pub fn parse_ip(text: &str) -> Result<IpAddr, IpError> {
    check_text(text)?;
    text.parse().map_err(|_| IpError::InvalidIp {
        text: text.to_owned(),
    })
}

/// Parses `address/prefix` and keeps the address as written, host bits included.
///
/// Use this where an address *with* its prefix length is meant (an interface address such as
/// `10.6.0.5/16`) or where the caller wants to offer a fix itself. `net.trunc()` gives the
/// network. For `spec.subnet` fields use [`parse_canonical_cidr`], which is what upstream
/// enforces. The prefix length must be plain decimal: `/+8` and `/08` are rejected, because other
/// tools read them differently.
pub fn parse_cidr(text: &str) -> Result<IpNet, IpError> {
    check_text(text)?;
    let Some((addr_text, prefix_text)) = text.split_once('/') else {
        return Err(IpError::CidrMissingPrefix {
            text: text.to_owned(),
        });
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| IpError::CidrInvalidAddress {
        text: text.to_owned(),
        addr: addr_text.to_owned(),
    })?;
    if prefix_text.is_empty() || !prefix_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IpError::CidrInvalidPrefix {
            text: text.to_owned(),
            prefix: prefix_text.to_owned(),
        });
    }
    if prefix_text.len() > 1 && prefix_text.starts_with('0') {
        return Err(IpError::CidrPrefixLeadingZero {
            text: text.to_owned(),
            prefix: prefix_text.to_owned(),
        });
    }
    let max = IpFamily::of(&addr).bits();
    let too_long = || IpError::CidrPrefixTooLong {
        text: text.to_owned(),
        prefix: prefix_text.to_owned(),
        max,
    };
    // Only digits are left, so a parse failure means the number doesn't fit in a u8: too long.
    let prefix: u8 = prefix_text.parse().map_err(|_| too_long())?;
    if prefix > max {
        return Err(too_long());
    }
    IpNet::new(addr, prefix).map_err(|_| too_long())
}

/// Parses a CIDR that must be in canonical form (all host bits zero), as upstream requires for
/// `SpiderIPPool.spec.subnet` and `SpiderSubnet.spec.subnet`.
///
/// Upstream compares and labels pools by the subnet *string*, so `10.6.0.1/16` and `10.6.0.0/16`
/// would be two different subnets there; rejecting the first (and naming the second in the
/// error) avoids that.
pub fn parse_canonical_cidr(text: &str) -> Result<IpNet, IpError> {
    let net = parse_cidr(text)?;
    if net.addr() != net.network() {
        return Err(IpError::NotCanonical {
            text: text.to_owned(),
            canonical: net.trunc().to_string(),
        });
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(result: Result<impl std::fmt::Debug, IpError>) -> String {
        match result {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parse_ip_accepts_both_families() {
        assert_eq!(parse_ip("10.0.0.5").unwrap().to_string(), "10.0.0.5");
        assert_eq!(parse_ip("fd00::5").unwrap().to_string(), "fd00::5");
        assert_eq!(parse_ip("FD00:0:0:0:0:0:0:5").unwrap().to_string(), "fd00::5");
        assert_eq!(parse_ip("::").unwrap().to_string(), "::");
        assert_eq!(
            parse_ip("::ffff:10.0.0.1").unwrap().to_string(),
            "::ffff:10.0.0.1"
        );
    }

    #[test]
    fn parse_ip_errors() {
        assert_eq!(
            msg(parse_ip("10.0.0.300")),
            "`10.0.0.300` is not an IPv4 or IPv6 address"
        );
        assert_eq!(
            msg(parse_ip("")),
            "empty string is not an IP address, range or CIDR"
        );
        assert_eq!(
            msg(parse_ip(" 10.0.0.1")),
            "` 10.0.0.1` contains whitespace; write IPs, ranges and CIDRs without spaces"
        );
        assert_eq!(
            parse_ip("10.0.0.1\n"),
            Err(IpError::Whitespace {
                text: "10.0.0.1\n".into()
            })
        );
        for bad in [
            "010.0.0.1",
            "10.1",
            "fe80::1%eth0",
            "[fd00::1]",
            "10.0.0.0/24",
            "fd00::g",
            "abc",
        ] {
            assert_eq!(
                parse_ip(bad),
                Err(IpError::InvalidIp { text: bad.into() }),
                "{bad}"
            );
        }
    }

    #[test]
    fn parse_cidr_keeps_host_bits() {
        let net = parse_cidr("10.6.0.5/16").unwrap();
        assert_eq!(net.to_string(), "10.6.0.5/16");
        assert_eq!(net.trunc().to_string(), "10.6.0.0/16");
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(parse_cidr("::/0").unwrap().to_string(), "::/0");
        assert_eq!(parse_cidr("fd00::1/128").unwrap().to_string(), "fd00::1/128");
        assert_eq!(parse_cidr("10.0.0.1/32").unwrap().to_string(), "10.0.0.1/32");
    }

    #[test]
    fn parse_cidr_errors() {
        assert_eq!(
            msg(parse_cidr("10.0.0.0/33")),
            "`10.0.0.0/33` is not a valid CIDR: prefix length 33 exceeds 32"
        );
        assert_eq!(
            msg(parse_cidr("fd00::/129")),
            "`fd00::/129` is not a valid CIDR: prefix length 129 exceeds 128"
        );
        assert_eq!(
            msg(parse_cidr("10.0.0.0/99999999999999999999")),
            "`10.0.0.0/99999999999999999999` is not a valid CIDR: prefix length 99999999999999999999 exceeds 32"
        );
        assert_eq!(
            msg(parse_cidr("10.0.0.0")),
            "`10.0.0.0` is not a valid CIDR: it has no `/` and prefix length"
        );
        assert_eq!(
            msg(parse_cidr("10.0.0.300/24")),
            "`10.0.0.300/24` is not a valid CIDR: `10.0.0.300` is not an IPv4 or IPv6 address"
        );
        assert_eq!(
            msg(parse_cidr("10.0.0.0/x")),
            "`10.0.0.0/x` is not a valid CIDR: prefix length `x` is not a decimal number"
        );
        for bad_prefix in ["", "+8", "-1", "8/8", "2 4"] {
            let text = format!("10.0.0.0/{bad_prefix}");
            if bad_prefix.contains(' ') {
                assert_eq!(parse_cidr(&text), Err(IpError::Whitespace { text: text.clone() }));
            } else {
                assert_eq!(
                    parse_cidr(&text),
                    Err(IpError::CidrInvalidPrefix {
                        text: text.clone(),
                        prefix: bad_prefix.into()
                    })
                );
            }
        }
        assert_eq!(
            msg(parse_cidr("10.0.0.0/024")),
            "`10.0.0.0/024` is not a valid CIDR: prefix length `024` has a leading zero"
        );
        assert_eq!(
            msg(parse_cidr("")),
            "empty string is not an IP address, range or CIDR"
        );
        assert_eq!(
            parse_cidr("10.0.0.0/24 "),
            Err(IpError::Whitespace {
                text: "10.0.0.0/24 ".into()
            })
        );
    }

    #[test]
    fn canonical_cidr() {
        assert_eq!(
            parse_canonical_cidr("10.6.0.0/16").unwrap().to_string(),
            "10.6.0.0/16"
        );
        assert_eq!(
            parse_canonical_cidr("fd00::/64").unwrap().to_string(),
            "fd00::/64"
        );
        assert_eq!(
            parse_canonical_cidr("0.0.0.0/0").unwrap().to_string(),
            "0.0.0.0/0"
        );
        assert_eq!(
            parse_canonical_cidr("10.0.0.7/32").unwrap().to_string(),
            "10.0.0.7/32"
        );
        assert_eq!(
            msg(parse_canonical_cidr("10.6.0.1/16")),
            "`10.6.0.1/16` is not canonical; did you mean `10.6.0.0/16`?"
        );
        assert_eq!(
            msg(parse_canonical_cidr("fd00::1/64")),
            "`fd00::1/64` is not canonical; did you mean `fd00::/64`?"
        );
        // Syntax errors come first, unchanged.
        assert!(matches!(
            parse_canonical_cidr("10.6.0.1/40"),
            Err(IpError::CidrPrefixTooLong { max: 32, .. })
        ));
    }
}
