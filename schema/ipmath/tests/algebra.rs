//! Property tests: `IpSet` against a `BTreeSet<u128>` reference model.
//!
//! Sets are drawn from small 256-address windows placed where the arithmetic is most likely to
//! break: the bottom and top of both address spaces (overflow at `u32::MAX` / `u128::MAX`,
//! underflow at 0), a plain IPv4 /24, and an IPv6 window across a 16-bit group boundary (where
//! RFC 5952 compression in the output changes shape). Within a window the model can hold every
//! address, so each operation is checked against plain set semantics.

// Helpers outside `#[test]` functions aren't covered by clippy.toml's allow-unwrap-in-tests; a
// failed unwrap here is a test failure, which is what we want.
#![allow(clippy::unwrap_used, reason = "test code")]

use std::collections::BTreeSet;
use std::net::IpAddr;

use proptest::prelude::*;
use spiderpool_ipmath::{IpFamily, IpNet, IpRange, IpSet, ip_to_u128};

/// Width of every test window.
const WINDOW: u128 = 256;

/// `(family, first address value)` of each window.
const WINDOWS: [(IpFamily, u128); 6] = [
    (IpFamily::V4, 0x0a00_0000),                               // 10.0.0.0/24
    (IpFamily::V4, 0),                                         // 0.0.0.0/24
    (IpFamily::V4, u32::MAX as u128 - 255),                    // 255.255.255.0/24
    (IpFamily::V6, 0),                                         // ::/120
    (IpFamily::V6, u128::MAX - 255),                           // ffff:...:ff00/120
    (IpFamily::V6, 0xfd00_0000_0000_0000_0000_0000_0000_ff80), // fd00::ff80 - fd00::1:7f
];

type Model = BTreeSet<u128>;

fn addr(family: IpFamily, value: u128) -> IpAddr {
    family.addr_from_u128(value).unwrap()
}

/// A random set as list items: each `(offset, extra)` is the range
/// `base+offset ..= base+min(offset+extra, 255)`, written as `a` or `a-b`.
#[derive(Debug, Clone)]
struct Drawn {
    family: IpFamily,
    base: u128,
    items: Vec<(u128, u128)>,
}

impl Drawn {
    fn spans(&self) -> impl Iterator<Item = (u128, u128)> + '_ {
        self.items
            .iter()
            .map(|&(lo, hi)| (self.base + lo, self.base + hi))
    }

    fn model(&self) -> Model {
        self.spans().flat_map(|(lo, hi)| lo..=hi).collect()
    }

    fn strings(&self) -> Vec<String> {
        self.spans()
            .map(|(lo, hi)| {
                IpRange::new(addr(self.family, lo), addr(self.family, hi))
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    /// Built through the string parser, the way a webhook sees it.
    fn set(&self) -> IpSet {
        IpSet::parse_list(self.family, &self.strings()).unwrap()
    }

    /// Built through `from_ranges`, to cross-check the parser path.
    fn set_from_ranges(&self) -> IpSet {
        let ranges = self
            .spans()
            .map(|(lo, hi)| IpRange::new(addr(self.family, lo), addr(self.family, hi)).unwrap());
        IpSet::from_ranges(self.family, ranges).unwrap()
    }
}

fn items() -> impl Strategy<Value = Vec<(u128, u128)>> {
    // Short ranges (extra < 24) so sets have many gaps and adjacencies; up to 10 items.
    prop::collection::vec((0u128..WINDOW, 0u128..24), 0..10).prop_map(|v| {
        v.into_iter()
            .map(|(lo, extra)| (lo, (lo + extra).min(WINDOW - 1)))
            .collect()
    })
}

/// Two random sets in the same window.
fn pair() -> impl Strategy<Value = (Drawn, Drawn)> {
    (0..WINDOWS.len(), items(), items()).prop_map(|(w, a, b)| {
        let (family, base) = WINDOWS[w];
        (
            Drawn {
                family,
                base,
                items: a,
            },
            Drawn {
                family,
                base,
                items: b,
            },
        )
    })
}

fn set_of(family: IpFamily, model: &Model) -> IpSet {
    let ips: Vec<IpAddr> = model.iter().map(|&v| addr(family, v)).collect();
    IpSet::from_ips(family, &ips).unwrap()
}

fn values(set: &IpSet) -> Vec<u128> {
    set.iter().map(|ip| ip_to_u128(&ip)).collect()
}

/// Number of maximal runs of consecutive values.
fn runs(model: &Model) -> usize {
    let mut count = 0;
    let mut prev: Option<u128> = None;
    for &v in model {
        if prev.is_none_or(|p| p + 1 != v) {
            count += 1;
        }
        prev = Some(v);
    }
    count
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn construction_matches_model((a, _) in pair()) {
        let set = a.set();
        let model = a.model();
        prop_assert_eq!(&set, &a.set_from_ranges());
        prop_assert_eq!(&set, &set_of(a.family, &model));
        prop_assert_eq!(set.family(), a.family);
        prop_assert_eq!(set.len(), model.len() as u128);
        prop_assert_eq!(set.is_empty(), model.is_empty());
        prop_assert_eq!(set.range_count(), runs(&model));
        prop_assert_eq!(set.first(), model.first().map(|&v| addr(a.family, v)));
        prop_assert_eq!(set.last(), model.last().map(|&v| addr(a.family, v)));
        // Membership over the whole window plus the neighbours just outside it.
        let lo = a.base.saturating_sub(1);
        let hi = a.base.saturating_add(WINDOW).min(a.family.max_value());
        for v in lo..=hi {
            prop_assert_eq!(set.contains(&addr(a.family, v)), model.contains(&v), "value {}", v);
        }
    }

    #[test]
    fn iter_is_ascending_and_equals_model((a, _) in pair()) {
        let set = a.set();
        let got = values(&set);
        prop_assert!(got.windows(2).all(|w| w[0] < w[1]));
        prop_assert_eq!(got, a.model().into_iter().collect::<Vec<_>>());
        let (lower, upper) = set.iter().size_hint();
        prop_assert_eq!(lower as u128, set.len());
        prop_assert_eq!(upper.map(|u| u as u128), Some(set.len()));
    }

    #[test]
    fn ranges_are_sorted_merged_and_non_adjacent((a, _) in pair()) {
        let ranges: Vec<IpRange> = a.set().ranges().collect();
        for r in &ranges {
            prop_assert_eq!(r.family(), a.family);
            prop_assert!(ip_to_u128(&r.start()) <= ip_to_u128(&r.end()));
        }
        for w in ranges.windows(2) {
            // At least one address missing between consecutive ranges.
            prop_assert!(ip_to_u128(&w[0].end()) + 1 < ip_to_u128(&w[1].start()), "{:?}", w);
        }
        let total: u128 = ranges.iter().map(IpRange::len).sum();
        prop_assert_eq!(total, a.model().len() as u128);
    }

    #[test]
    fn algebra_matches_model((a, b) in pair()) {
        let (sa, sb) = (a.set(), b.set());
        let (ma, mb) = (a.model(), b.model());
        let family = a.family;

        let union = sa.union(&sb).unwrap();
        prop_assert_eq!(&union, &set_of(family, &ma.union(&mb).copied().collect()));
        prop_assert_eq!(&union, &sb.union(&sa).unwrap());

        let inter = sa.intersection(&sb);
        prop_assert_eq!(&inter, &set_of(family, &ma.intersection(&mb).copied().collect()));
        prop_assert_eq!(&inter, &sb.intersection(&sa));
        prop_assert_eq!(&sa.overlap(&sb), &inter);

        let diff = sa.difference(&sb);
        prop_assert_eq!(&diff, &set_of(family, &ma.difference(&mb).copied().collect()));

        prop_assert_eq!(sa.overlaps(&sb), !ma.is_disjoint(&mb));
        prop_assert_eq!(sb.overlaps(&sa), !ma.is_disjoint(&mb));
        prop_assert_eq!(sa.is_subset_of(&sb), ma.is_subset(&mb));
        prop_assert_eq!(sb.is_subset_of(&sa), mb.is_subset(&ma));
        prop_assert_eq!(union.len(), ma.union(&mb).count() as u128);
        prop_assert_eq!(inter.len(), ma.intersection(&mb).count() as u128);
        prop_assert_eq!(diff.len(), ma.difference(&mb).count() as u128);
    }

    #[test]
    fn to_strings_round_trips_through_parse_list((a, _) in pair()) {
        let set = a.set();
        let strings = set.to_strings();
        let reparsed = IpSet::parse_list(a.family, &strings).unwrap();
        prop_assert_eq!(&reparsed, &set);
        prop_assert_eq!(reparsed.to_strings(), strings.clone());
        // Single addresses print as `a`, ranges as `a-b`, never `a-a`.
        for (s, r) in strings.iter().zip(set.ranges()) {
            prop_assert_eq!(s.contains('-'), r.start() != r.end(), "{}", s);
            prop_assert_eq!(&IpRange::parse(s).unwrap(), &r);
        }
        // A shuffled/duplicated version of the canonical list normalises to the same thing.
        let mut doubled: Vec<String> = strings.iter().rev().cloned().collect();
        doubled.extend(strings.iter().cloned());
        prop_assert_eq!(IpSet::parse_list(a.family, &doubled).unwrap(), set);
    }

    #[test]
    fn difference_then_union_restores((a, b) in pair()) {
        let (sa, sb) = (a.set(), b.set());
        let common = sa.intersection(&sb);
        let diff = sa.difference(&sb);
        // A subset taken out and put back gives the original.
        prop_assert_eq!(diff.union(&common).unwrap(), sa.clone());
        prop_assert!(!diff.overlaps(&sb));
        prop_assert!(diff.intersection(&sb).is_empty());
        prop_assert!(diff.is_subset_of(&sa));
        prop_assert!(common.is_subset_of(&sa) && common.is_subset_of(&sb));
        // Removing then adding all of `b` gives the union.
        prop_assert_eq!(diff.union(&sb).unwrap(), sa.union(&sb).unwrap());
        prop_assert_eq!(diff.len() + common.len(), sa.len());
        prop_assert_eq!(sa.difference(&sa), IpSet::empty(a.family));
        prop_assert_eq!(sa.difference(&IpSet::empty(a.family)), sa.clone());
        prop_assert_eq!(sa.union(&sa).unwrap(), sa.clone());
    }

    #[test]
    fn take_lowest_and_highest((a, _) in pair(), n in 0u128..300) {
        let set = a.set();
        let model: Vec<u128> = a.model().into_iter().collect();
        let expected_len = n.min(model.len() as u128);

        let low = set.take_lowest(n);
        prop_assert_eq!(low.len(), expected_len);
        prop_assert_eq!(values(&low), model[..expected_len as usize].to_vec());
        prop_assert!(low.is_subset_of(&set));

        let high = set.take_highest(n);
        prop_assert_eq!(high.len(), expected_len);
        prop_assert_eq!(values(&high), model[model.len() - expected_len as usize..].to_vec());
        prop_assert!(high.is_subset_of(&set));

        // Lowest k and highest len-k partition the set.
        let k = expected_len;
        let rest = set.take_highest(set.len() - k);
        prop_assert!(!low.overlaps(&rest));
        prop_assert_eq!(low.union(&rest).unwrap(), set.clone());
        prop_assert_eq!(set.difference(&low), rest);
    }

    #[test]
    fn nth_matches_model((a, _) in pair(), n in 0u128..300) {
        let set = a.set();
        let expected = a.model().into_iter().nth(n as usize).map(|v| addr(a.family, v));
        prop_assert_eq!(set.nth(n), expected);
        prop_assert_eq!(set.nth(n), set.iter().nth(n as usize));
    }

    #[test]
    fn lowest_free_matches_model((pool, used) in pair()) {
        let (sp, su) = (pool.set(), used.set());
        let expected = pool.model().difference(&used.model()).next().map(|&v| addr(pool.family, v));
        prop_assert_eq!(sp.lowest_free(&su), expected);
        prop_assert_eq!(sp.lowest_free(&su), sp.difference(&su).first());
        prop_assert_eq!(sp.lowest_free(&IpSet::empty(pool.family)), sp.first());
        prop_assert_eq!(sp.lowest_free(&sp), None);
        // Allocating one by one hands out the free addresses in ascending order.
        let mut taken = su.clone();
        let mut handed_out = Vec::new();
        while let Some(ip) = sp.lowest_free(&taken) {
            prop_assert!(!taken.contains(&ip) && sp.contains(&ip));
            handed_out.push(ip_to_u128(&ip));
            // Guard against a broken union looping forever.
            prop_assert!(handed_out.len() <= WINDOW as usize);
            taken = taken.union(&IpSet::from_ip(&ip)).unwrap();
        }
        prop_assert_eq!(handed_out, pool.model().difference(&used.model()).copied().collect::<Vec<_>>());
    }

    #[test]
    fn is_within_matches_model((a, _) in pair(), offset in 0u128..WINDOW, host_bits in 0u8..=8) {
        let set = a.set();
        let model = a.model();
        let prefix = a.family.bits() - host_bits;
        let net = IpNet::new(addr(a.family, a.base + offset), prefix).unwrap();
        let (lo, hi) = (ip_to_u128(&net.network()), ip_to_u128(&net.broadcast()));
        prop_assert_eq!(set.is_within(&net), model.iter().all(|v| (lo..=hi).contains(v)));
        prop_assert_eq!(set.intersection(&IpSet::from_cidr(&net)).len(), model.iter().filter(|v| (lo..=hi).contains(*v)).count() as u128);
    }
}

/// Random networks anywhere in the family's space, to check that whole-space sizes are cheap
/// and `len` saturates instead of overflowing.
fn big_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<u32>(), 0u8..=32)
            .prop_map(|(v, p)| IpNet::new(IpAddr::from(v.to_be_bytes()), p).unwrap().trunc()),
        (any::<u128>(), 0u8..=128)
            .prop_map(|(v, p)| IpNet::new(IpAddr::from(v.to_be_bytes()), p).unwrap().trunc()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn whole_space_is_cheap_and_len_saturates(a in big_net(), b in big_net()) {
        let family = IpFamily::of_net(&a);
        let full = IpSet::full(family);
        let sa = IpSet::from_cidr(&a);
        let complement = full.difference(&sa);
        prop_assert_eq!(sa.len(), 1u128.checked_shl(u32::from(a.max_prefix_len() - a.prefix_len())).unwrap_or(u128::MAX));
        prop_assert!(!sa.overlaps(&complement));
        prop_assert_eq!(sa.union(&complement).unwrap(), full.clone());
        match family {
            IpFamily::V4 => prop_assert_eq!(sa.len() + complement.len(), 1u128 << 32),
            IpFamily::V6 => prop_assert_eq!(sa.len().saturating_add(complement.len()), u128::MAX),
        }
        prop_assert_eq!(full.lowest_free(&complement), sa.first());
        prop_assert_eq!(sa.nth(0), Some(a.network()));
        prop_assert_eq!(sa.last(), Some(a.broadcast()));
        if sa.len() < u128::MAX {
            prop_assert_eq!(sa.nth(sa.len() - 1), Some(a.broadcast()));
            prop_assert_eq!(sa.nth(sa.len()), None);
        } else {
            // Only ::/0 saturates; its 2^128-th address is index u128::MAX.
            prop_assert_eq!(a.prefix_len(), 0);
            prop_assert_eq!(sa.nth(u128::MAX), Some(a.broadcast()));
        }
        prop_assert_eq!(sa.iter().take(3).count() as u128, sa.len().min(3));
        prop_assert!(sa.is_within(&a));
        prop_assert_eq!(sa.take_lowest(u128::MAX).len(), sa.len());
        prop_assert_eq!(sa.to_strings().len(), 1);

        // Overlap of two arbitrary networks agrees with the network-level check.
        let sb = IpSet::from_cidr(&b);
        prop_assert_eq!(sa.overlaps(&sb), spiderpool_ipmath::nets_overlap(&a, &b));
        if IpFamily::of_net(&b) == family {
            let both = sa.union(&sb).unwrap();
            prop_assert!(both.range_count() <= 2);
            prop_assert!(sa.is_subset_of(&both) && sb.is_subset_of(&both));
        }
    }
}
