//! Helpers on whole networks: containment, overlap and upstream's CIDR label form.

use std::net::IpAddr;

use ipnet::IpNet;

/// Upstream's label value for a CIDR, as set in `ipam.spidernet.io/ippool-cidr` and
/// `ipam.spidernet.io/subnet-cidr`: `.`, `:` and `/` each become `-`
/// (`10.148.4.0/24` → `10-148-4-0-24`, `fd00::/64` → `fd00---64`).
///
/// Upstream selects pools and subnets by these labels, so the string must match upstream's byte
/// for byte. Upstream converts the user's `spec.subnet` text; for the canonical CIDRs it accepts,
/// that text equals `net`'s display form (lowercase, RFC 5952 compressed), which is what is
/// converted here. Pass a canonical network; host bits are kept as given.
///
/// Caveat: for IPv6 networks whose text starts with `::` the result starts with `-`
/// (`::/0` → `---0`, `::1/128` → `--1-128`), which Kubernetes rejects as a label value (it must
/// start and end with an alphanumeric). Upstream's conversion gives the same string, so this
/// stays byte-compatible; callers that set the label should validate it and refuse such
/// subnets with a clear message.
pub fn cidr_label_value(net: &IpNet) -> String {
    net.to_string().replace(['.', ':', '/'], "-")
}

/// Whether `ip` lies in `net` (network and broadcast address included); `false` across
/// families. Upstream checks `gateway` and route `gw` against `subnet` this way.
pub fn network_contains(net: &IpNet, ip: &IpAddr) -> bool {
    net.contains(ip)
}

/// Whether two networks share any address. For CIDRs that is the same as one containing the
/// other's network address. Upstream forbids overlapping but non-identical pool subnets of a
/// family; callers check "identical" themselves with `==` on the truncated networks.
pub fn nets_overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn label_values() {
        assert_eq!(cidr_label_value(&net("10.148.4.0/24")), "10-148-4-0-24");
        assert_eq!(cidr_label_value(&net("172.18.0.0/16")), "172-18-0-0-16");
        assert_eq!(cidr_label_value(&net("fd00::/64")), "fd00---64");
        assert_eq!(cidr_label_value(&net("fd00:10:244::/120")), "fd00-10-244---120");
        assert_eq!(
            cidr_label_value(&net("2001:db8:1:2:3:4:5:0/112")),
            "2001-db8-1-2-3-4-5-0-112"
        );
        // Upper case and uncompressed input are normalised first.
        assert_eq!(cidr_label_value(&net("FD00:0:0:0:0:0:0:0/64")), "fd00---64");
        // The documented caveat: not a valid Kubernetes label value.
        assert_eq!(cidr_label_value(&net("::/0")), "---0");
    }

    #[test]
    fn contains_includes_network_and_broadcast() {
        let n = net("10.6.0.0/16");
        assert!(network_contains(&n, &ip("10.6.0.0")));
        assert!(network_contains(&n, &ip("10.6.255.255")));
        assert!(!network_contains(&n, &ip("10.7.0.0")));
        assert!(!network_contains(&n, &ip("::a06:1")));
        // Host bits in the network are ignored.
        assert!(network_contains(&net("10.6.0.1/16"), &ip("10.6.9.9")));
        assert!(network_contains(&net("::/0"), &ip("fd00::1")));
        assert!(!network_contains(&net("::/0"), &ip("10.0.0.1")));
        assert!(network_contains(
            &net("fd00::/64"),
            &ip("fd00::ffff:ffff:ffff:ffff")
        ));
    }

    #[test]
    fn overlap() {
        assert!(nets_overlap(&net("10.6.0.0/16"), &net("10.6.0.0/16")));
        assert!(nets_overlap(&net("10.6.0.0/16"), &net("10.6.4.0/24")));
        assert!(nets_overlap(&net("10.6.4.0/24"), &net("10.6.0.0/16")));
        assert!(nets_overlap(&net("0.0.0.0/0"), &net("10.6.4.0/24")));
        assert!(!nets_overlap(&net("10.6.0.0/16"), &net("10.7.0.0/16")));
        assert!(!nets_overlap(&net("10.6.0.0/24"), &net("10.6.1.0/24")));
        assert!(!nets_overlap(&net("0.0.0.0/0"), &net("::/0")));
        assert!(nets_overlap(&net("fd00::/8"), &net("fd00:1::/64")));
        assert!(!nets_overlap(&net("fd00::/64"), &net("fd00:0:0:1::/64")));
        // Host bits ignored on both sides.
        assert!(nets_overlap(&net("10.6.0.9/24"), &net("10.6.0.200/25")));
    }
}
