//! The IP-format parser (`spiderpool-ipmath`): addresses, CIDRs, ranges and the lists of a pool's
//! `ips`/`excludeIPs`, as users write them in YAML.

use spiderpool_ipmath::{IpFamily, IpRange, IpSet, parse_canonical_cidr, parse_cidr, parse_ip};

use super::{Shape, Target, describe};

pub const TARGET: Target = Target {
    name: "ip_format",
    run,
    shape: Shape::Text,
    dictionary: &[
        b"-", b"/", b".", b":", b"::", b"%", b"255", b"ffff", b"::ffff:", b"0x", b"\n",
    ],
};

fn run(data: &[u8]) -> String {
    let Ok(text) = std::str::from_utf8(data) else {
        return "not utf-8".to_owned();
    };
    let mut out = Vec::new();
    out.push(describe("ip", &parse_ip(text)));
    out.push(describe("cidr", &parse_cidr(text)));
    out.push(describe("canonical", &parse_canonical_cidr(text)));
    let range = IpRange::parse(text);
    if let Ok(range) = &range {
        // What a pool's size and membership are computed from.
        let _ = (
            range.len(),
            range.contains(&range.start()),
            range.contains(&range.end()),
        );
    }
    out.push(describe("range", &range));
    let items: Vec<&str> = text.lines().collect();
    for family in [IpFamily::V4, IpFamily::V6] {
        match IpSet::parse_list(family, &items) {
            Ok(set) => {
                let _ = (set.len(), set.range_count());
                out.push("list ok".to_owned());
            }
            Err(problems) => out.push(format!("list errors {}", problems.len().min(3))),
        }
    }
    out.join("; ")
}
