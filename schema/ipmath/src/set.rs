//! [`IpSet`]: a normalised set of addresses of one family, stored as intervals.

use std::fmt;
use std::iter::FusedIterator;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::{IpError, IpFamily, IpRange, ItemError, ip_to_u128, parse_canonical_cidr};

/// Inclusive `(low, high)` interval of address values.
type Span = (u128, u128);

/// A set of addresses of one family: a pool's `ips`, its `excludeIPs`, the union of all
/// `SpiderReservedIP`s, the addresses in use, a subnet's free space.
///
/// Stored as sorted, disjoint, non-adjacent inclusive intervals of `u128` address values, so
/// size and cost depend on the number of ranges, never on the number of addresses: `fd00::/64`
/// and `::/0` are one interval each. Upstream expanded ranges into address lists and paid for it
/// with minute-long allocations on a /10 pool (its issue #3541); nothing here enumerates
/// addresses unless the caller iterates.
///
/// Because the representation is canonical, `==` is set equality and [`IpSet::to_strings`] is
/// upstream's normalised list form.
///
/// Sets of different families are disjoint: intersecting them gives the empty set, subtracting
/// one from the other changes nothing. Only [`IpSet::union`], whose result would have to hold
/// both families, fails on a mismatch.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IpSet {
    family: IpFamily,
    /// Sorted by start; `spans[i].1 + 1 < spans[i + 1].0` (disjoint and non-adjacent).
    spans: Vec<Span>,
}

/// Appends `(lo, hi)` to `out`, merging it into the last interval if they overlap or touch.
/// Callers feed intervals in ascending order of `lo`.
fn push_span(out: &mut Vec<Span>, lo: u128, hi: u128) {
    if let Some(last) = out.last_mut() {
        // saturating: if `last` already ends at the top of the space, everything merges into it.
        if lo <= last.1.saturating_add(1) {
            last.1 = last.1.max(hi);
            return;
        }
    }
    out.push((lo, hi));
}

/// Sorts and merges arbitrary intervals into canonical form.
fn normalize(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_unstable();
    let mut out = Vec::with_capacity(spans.len());
    for (lo, hi) in spans {
        push_span(&mut out, lo, hi);
    }
    out
}

/// Number of addresses in an interval, saturating for the whole IPv6 space.
fn span_len((lo, hi): Span) -> u128 {
    (hi - lo).saturating_add(1)
}

fn span_of(range: &IpRange) -> Span {
    (ip_to_u128(&range.start()), ip_to_u128(&range.end()))
}

impl IpSet {
    /// The empty set of `family`. A set always knows its family, even when empty, so
    /// "which family is this pool" never depends on whether it has addresses.
    pub fn empty(family: IpFamily) -> Self {
        Self {
            family,
            spans: Vec::new(),
        }
    }

    /// Every address of `family` (`0.0.0.0/0` or `::/0`); one interval, cheap.
    pub fn full(family: IpFamily) -> Self {
        Self {
            family,
            spans: vec![(0, family.max_value())],
        }
    }

    /// Every address of `net`, network and broadcast address included (upstream does not
    /// reserve them; exclude them explicitly if a pool must not hand them out). Host bits in
    /// `net`'s address are ignored.
    pub fn from_cidr(net: &IpNet) -> Self {
        Self::from_range(&IpRange::from_net(net))
    }

    /// The addresses of one range.
    pub fn from_range(range: &IpRange) -> Self {
        Self {
            family: range.family(),
            spans: vec![span_of(range)],
        }
    }

    /// A set holding one address.
    pub fn from_ip(ip: &IpAddr) -> Self {
        Self::from_range(&IpRange::single(*ip))
    }

    /// The set of the given addresses (for example the keys of a pool's `allocatedIPs`), in any
    /// order, duplicates allowed. Fails on the first address of another family.
    pub fn from_ips<'a>(
        family: IpFamily,
        ips: impl IntoIterator<Item = &'a IpAddr>,
    ) -> Result<Self, IpError> {
        Self::from_ranges(family, ips.into_iter().map(|ip| IpRange::single(*ip)))
    }

    /// The union of the given ranges, in any order, overlaps allowed. Fails on the first range of
    /// another family.
    pub fn from_ranges(family: IpFamily, ranges: impl IntoIterator<Item = IpRange>) -> Result<Self, IpError> {
        let mut spans = Vec::new();
        for range in ranges {
            if range.family() != family {
                return Err(IpError::WrongFamily {
                    text: range.to_string(),
                    found: range.family(),
                    expected: family,
                });
            }
            spans.push(span_of(&range));
        }
        Ok(Self {
            family,
            spans: normalize(spans),
        })
    }

    /// Parses an upstream address list (`ips`, `excludeIPs`, `SpiderReservedIP.spec.ips`):
    /// items are single addresses or `a-b` ranges of `family`, in any order, overlapping or
    /// adjacent items allowed (they are merged, as upstream's `MergeIPRanges` does).
    ///
    /// Returns every bad item with its index rather than stopping at the first, so a webhook
    /// can report them all at once. CIDRs are rejected, as upstream's validators reject them in
    /// these fields; the error names the equivalent range. Use
    /// [`IpSet::parse_list_with_cidrs`] for our own inputs that allow CIDRs.
    pub fn parse_list<S: AsRef<str>>(family: IpFamily, items: &[S]) -> Result<Self, Vec<ItemError>> {
        Self::parse_items(family, items, IpRange::parse)
    }

    /// Like [`IpSet::parse_list`], but an item may also be a canonical CIDR (`10.0.0.0/28`),
    /// standing for all its addresses. Not for upstream CRD fields, which don't accept CIDRs.
    pub fn parse_list_with_cidrs<S: AsRef<str>>(
        family: IpFamily,
        items: &[S],
    ) -> Result<Self, Vec<ItemError>> {
        Self::parse_items(family, items, |text| {
            if text.contains('/') && !text.contains('-') {
                parse_canonical_cidr(text).map(|net| IpRange::from_net(&net))
            } else {
                IpRange::parse(text)
            }
        })
    }

    fn parse_items<S: AsRef<str>>(
        family: IpFamily,
        items: &[S],
        parse: impl Fn(&str) -> Result<IpRange, IpError>,
    ) -> Result<Self, Vec<ItemError>> {
        let mut spans = Vec::with_capacity(items.len());
        let mut errors = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let text = item.as_ref();
            match parse(text) {
                Ok(range) if range.family() == family => spans.push(span_of(&range)),
                Ok(range) => errors.push(ItemError {
                    index,
                    error: IpError::WrongFamily {
                        text: text.to_owned(),
                        found: range.family(),
                        expected: family,
                    },
                }),
                Err(error) => errors.push(ItemError { index, error }),
            }
        }
        if errors.is_empty() {
            Ok(Self {
                family,
                spans: normalize(spans),
            })
        } else {
            Err(errors)
        }
    }

    /// The family of every address in the set (also of an empty set).
    pub fn family(&self) -> IpFamily {
        self.family
    }

    /// Number of addresses. Saturates at `u128::MAX`: only `::/0` (2^128 addresses) exceeds it,
    /// and `::/0` minus one address also has `u128::MAX` addresses, so don't use `len` to tell
    /// those two apart (compare the sets).
    pub fn len(&self) -> u128 {
        self.spans
            .iter()
            .fold(0u128, |total, &span| total.saturating_add(span_len(span)))
    }

    /// Whether the set has no addresses.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Number of maximal ranges, i.e. the length of [`IpSet::to_strings`]; the cost measure of
    /// every operation here.
    pub fn range_count(&self) -> usize {
        self.spans.len()
    }

    /// Whether `ip` is in the set (`false` for the other family). Binary search, O(log ranges).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        if IpFamily::of(ip) != self.family {
            return false;
        }
        let value = ip_to_u128(ip);
        let index = self.spans.partition_point(|&(_, hi)| hi < value);
        self.spans.get(index).is_some_and(|&(lo, _)| lo <= value)
    }

    /// All addresses in either set.
    ///
    /// The one fallible operation: an `IpSet` holds one family, so combining an IPv4 and an IPv6
    /// set is [`IpError::FamilyMismatch`] (a bug in the caller, which should keep families
    /// apart). Union with an empty set of the other family is still an error, so the bug shows
    /// up before the set fills.
    pub fn union(&self, other: &IpSet) -> Result<IpSet, IpError> {
        if self.family != other.family {
            return Err(IpError::FamilyMismatch {
                left: self.family,
                right: other.family,
            });
        }
        let mut out = Vec::with_capacity(self.spans.len() + other.spans.len());
        let (mut a, mut b) = (self.spans.iter().peekable(), other.spans.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x <= y => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, _) => b.next(),
            };
            let Some(&(lo, hi)) = next else { break };
            push_span(&mut out, lo, hi);
        }
        Ok(IpSet {
            family: self.family,
            spans: out,
        })
    }

    /// Adds the addresses of `range`, in place. Fails like [`IpSet::union`] on a family mismatch.
    pub fn insert_range(&mut self, range: &IpRange) -> Result<(), IpError> {
        *self = self.union(&IpSet::from_range(range))?;
        Ok(())
    }

    /// Addresses in both sets; empty for sets of different families.
    pub fn intersection(&self, other: &IpSet) -> IpSet {
        let mut out = Vec::new();
        if self.family == other.family {
            let (mut i, mut j) = (0, 0);
            while let (Some(&(alo, ahi)), Some(&(blo, bhi))) = (self.spans.get(i), other.spans.get(j)) {
                let (lo, hi) = (alo.max(blo), ahi.min(bhi));
                if lo <= hi {
                    push_span(&mut out, lo, hi);
                }
                if ahi < bhi {
                    i += 1;
                } else {
                    j += 1;
                }
            }
        }
        IpSet {
            family: self.family,
            spans: out,
        }
    }

    /// Same as [`IpSet::intersection`]; the name reads better in overlap checks between pools
    /// ("the overlap is `10.0.0.5-10.0.0.9`").
    pub fn overlap(&self, other: &IpSet) -> IpSet {
        self.intersection(other)
    }

    /// Addresses of `self` not in `other`: `ips − excludeIPs − reserved − used` is how upstream
    /// computes what a pool can still hand out. A set of the other family removes nothing.
    pub fn difference(&self, other: &IpSet) -> IpSet {
        if self.family != other.family {
            return self.clone();
        }
        let mut out = Vec::with_capacity(self.spans.len());
        let mut j = 0;
        for &(lo, hi) in &self.spans {
            while other.spans.get(j).is_some_and(|&(_, bhi)| bhi < lo) {
                j += 1;
            }
            // `rest` is the part of (lo, hi) not yet cut by `other`; None once nothing is left.
            let mut rest = Some(lo);
            for &(blo, bhi) in other.spans.iter().skip(j).take_while(|&&(blo, _)| blo <= hi) {
                let Some(cur) = rest else { break };
                if blo > cur {
                    push_span(&mut out, cur, blo - 1);
                }
                // bhi < hi implies bhi + 1 <= hi, so no overflow.
                rest = if bhi >= hi { None } else { Some(cur.max(bhi + 1)) };
            }
            if let Some(cur) = rest {
                push_span(&mut out, cur, hi);
            }
        }
        IpSet {
            family: self.family,
            spans: out,
        }
    }

    /// Whether every address of `self` is in `other` (an empty set is a subset of anything).
    pub fn is_subset_of(&self, other: &IpSet) -> bool {
        if self.family != other.family {
            return self.is_empty();
        }
        let mut j = 0;
        self.spans.iter().all(|&(lo, hi)| {
            while other.spans.get(j).is_some_and(|&(_, bhi)| bhi < lo) {
                j += 1;
            }
            // `other` is non-adjacent, so a contained interval lies within one of its intervals.
            other
                .spans
                .get(j)
                .is_some_and(|&(blo, bhi)| blo <= lo && hi <= bhi)
        })
    }

    /// Whether the sets share an address, without building the intersection; `false` for
    /// different families.
    pub fn overlaps(&self, other: &IpSet) -> bool {
        if self.family != other.family {
            return false;
        }
        let (mut i, mut j) = (0, 0);
        while let (Some(&(alo, ahi)), Some(&(blo, bhi))) = (self.spans.get(i), other.spans.get(j)) {
            if ahi < blo {
                i += 1;
            } else if bhi < alo {
                j += 1;
            } else {
                return true;
            }
        }
        false
    }

    /// Whether every address lies inside `net` (upstream: "`ips` must be inside `subnet`").
    /// The empty set is within any network; a non-empty set of the other family is not.
    pub fn is_within(&self, net: &IpNet) -> bool {
        match (self.spans.first(), self.spans.last()) {
            (Some(&(lo, _)), Some(&(_, hi))) => {
                IpFamily::of_net(net) == self.family
                    && ip_to_u128(&net.network()) <= lo
                    && hi <= ip_to_u128(&net.broadcast())
            }
            _ => true,
        }
    }

    /// The lowest address.
    pub fn first(&self) -> Option<IpAddr> {
        self.spans.first().map(|&(lo, _)| self.family.addr(lo))
    }

    /// The highest address.
    pub fn last(&self) -> Option<IpAddr> {
        self.spans.last().map(|&(_, hi)| self.family.addr(hi))
    }

    /// The `n`-th lowest address (0-based), in O(ranges) without iterating addresses.
    pub fn nth(&self, n: u128) -> Option<IpAddr> {
        let mut n = n;
        for &(lo, hi) in &self.spans {
            if n <= hi - lo {
                return Some(self.family.addr(lo + n));
            }
            // n > hi - lo, so hi - lo + 1 <= n: no overflow.
            n -= hi - lo + 1;
        }
        None
    }

    /// The `n` lowest addresses (all of them if `n >= len`). Upstream carves a SpiderSubnet's
    /// free space into auto-created pools by taking the lowest free addresses; this is that step.
    pub fn take_lowest(&self, n: u128) -> IpSet {
        let mut out = Vec::new();
        let mut remaining = n;
        for &(lo, hi) in &self.spans {
            if remaining == 0 {
                break;
            }
            if hi - lo >= remaining - 1 {
                out.push((lo, lo + (remaining - 1)));
                break;
            }
            out.push((lo, hi));
            remaining -= hi - lo + 1;
        }
        IpSet {
            family: self.family,
            spans: out,
        }
    }

    /// The `n` highest addresses (all of them if `n >= len`), for carving from the top, such as
    /// keeping the end of a subnet for infrastructure addresses.
    pub fn take_highest(&self, n: u128) -> IpSet {
        let mut out = Vec::new();
        let mut remaining = n;
        for &(lo, hi) in self.spans.iter().rev() {
            if remaining == 0 {
                break;
            }
            if hi - lo >= remaining - 1 {
                out.push((hi - (remaining - 1), hi));
                break;
            }
            out.push((lo, hi));
            remaining -= hi - lo + 1;
        }
        out.reverse();
        IpSet {
            family: self.family,
            spans: out,
        }
    }

    /// The lowest address of `self` not in `used`: upstream's allocation rule (its
    /// `FindAvailableIPs` walks the pool in ascending order and takes the first free address).
    ///
    /// Pass everything unavailable as `used` (allocated ∪ excluded ∪ reserved). Runs in
    /// O(ranges of both) without allocating, so the allocator can call it per request. A `used`
    /// set of the other family blocks nothing.
    pub fn lowest_free(&self, used: &IpSet) -> Option<IpAddr> {
        if self.family != used.family {
            return self.first();
        }
        let mut j = 0;
        for &(lo, hi) in &self.spans {
            let mut candidate = lo;
            loop {
                while used.spans.get(j).is_some_and(|&(_, uhi)| uhi < candidate) {
                    j += 1;
                }
                match used.spans.get(j) {
                    Some(&(ulo, uhi)) if ulo <= candidate => {
                        if uhi >= hi {
                            break; // the rest of this interval is used
                        }
                        candidate = uhi + 1; // uhi < hi: no overflow
                    }
                    _ => return Some(self.family.addr(candidate)),
                }
            }
        }
        None
    }

    /// The addresses in ascending order, produced lazily: iterating `::/0` is fine as long as you
    /// stop early (`.take(n)`).
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            family: self.family,
            spans: self.spans.iter(),
            current: None,
        }
    }

    /// The maximal ranges in ascending order: the canonical decomposition of the set.
    pub fn ranges(&self) -> impl ExactSizeIterator<Item = IpRange> + '_ {
        self.spans
            .iter()
            .map(|&(lo, hi)| IpRange::from_ordered(self.family.addr(lo), self.family.addr(hi)))
    }

    /// Upstream's canonical list form, as its webhook's `MergeIPRanges` writes back into `ips`
    /// and `excludeIPs`: ascending, merged, `a` for a single address, `a-b` otherwise, IPv6
    /// compressed (`fd00::1-fd00::a`). Writing this back makes specs stable under re-validation.
    pub fn to_strings(&self) -> Vec<String> {
        self.ranges().map(|range| range.to_string()).collect()
    }
}

impl fmt::Debug for IpSet {
    /// Shows the ranges in upstream form, which is what you want to read in a failed assertion.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpSet")
            .field("family", &self.family)
            .field("ranges", &self.to_strings())
            .finish()
    }
}

impl From<&IpRange> for IpSet {
    fn from(range: &IpRange) -> Self {
        Self::from_range(range)
    }
}

impl From<&IpNet> for IpSet {
    fn from(net: &IpNet) -> Self {
        Self::from_cidr(net)
    }
}

impl<'a> IntoIterator for &'a IpSet {
    type Item = IpAddr;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Lazy ascending iterator over the addresses of an [`IpSet`], from [`IpSet::iter`].
///
/// Holds only a position, so it is as cheap for `::/0` as for a /30.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    family: IpFamily,
    spans: std::slice::Iter<'a, Span>,
    /// The not yet returned part of the interval being walked.
    current: Option<Span>,
}

impl Iterator for Iter<'_> {
    type Item = IpAddr;

    fn next(&mut self) -> Option<IpAddr> {
        let (lo, hi) = match self.current {
            Some(span) => span,
            None => *self.spans.next()?,
        };
        self.current = if lo < hi { Some((lo + 1, hi)) } else { None };
        Some(self.family.addr(lo))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = self
            .spans
            .clone()
            .chain(self.current.as_ref())
            .fold(0u128, |total, &span| total.saturating_add(span_len(span)));
        match usize::try_from(remaining) {
            // u128::MAX may be saturated, so it is not an exact upper bound.
            Ok(n) if remaining < u128::MAX => (n, Some(n)),
            _ => (usize::MAX, None),
        }
    }
}

impl FusedIterator for Iter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(items: &[&str]) -> IpSet {
        IpSet::parse_list(IpFamily::V4, items).unwrap()
    }

    fn v6(items: &[&str]) -> IpSet {
        IpSet::parse_list(IpFamily::V6, items).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn normalises_like_merge_ip_ranges() {
        // Unordered, overlapping, adjacent, duplicated, single IPs that extend ranges.
        let set = v4(&[
            "10.0.0.20",
            "10.0.0.1-10.0.0.5",
            "10.0.0.6",
            "10.0.0.3-10.0.0.8",
            "10.0.0.20",
            "10.0.0.10-10.0.0.12",
            "10.0.0.13",
            "10.0.0.15",
        ]);
        assert_eq!(
            set.to_strings(),
            [
                "10.0.0.1-10.0.0.8",
                "10.0.0.10-10.0.0.13",
                "10.0.0.15",
                "10.0.0.20"
            ]
        );
        assert_eq!(set.len(), 8 + 4 + 1 + 1);
        assert_eq!(set.range_count(), 4);
    }

    #[test]
    fn adjacent_singles_become_a_range_and_ipv6_is_compressed() {
        let set = v6(&["fd00::3", "fd00::1", "fd00:0:0:0:0:0:0:2", "fd00::4-fd00::a"]);
        assert_eq!(set.to_strings(), ["fd00::1-fd00::a"]);
        let set = v6(&["FD00::1", "fd00::3"]);
        assert_eq!(set.to_strings(), ["fd00::1", "fd00::3"]);
    }

    #[test]
    fn merges_across_octet_and_group_boundaries() {
        assert_eq!(
            v4(&["10.0.0.255", "10.0.1.0"]).to_strings(),
            ["10.0.0.255-10.0.1.0"]
        );
        assert_eq!(
            v6(&["fd00::ffff", "fd00::1:0"]).to_strings(),
            ["fd00::ffff-fd00::1:0"]
        );
    }

    #[test]
    fn empty_list_is_empty_set() {
        let set = IpSet::parse_list::<&str>(IpFamily::V6, &[]).unwrap();
        assert!(set.is_empty());
        assert_eq!(set.len(), 0);
        assert_eq!(set.family(), IpFamily::V6);
        assert_eq!(set.first(), None);
        assert_eq!(set.last(), None);
        assert_eq!(set.to_strings(), Vec::<String>::new());
        assert_eq!(set, IpSet::empty(IpFamily::V6));
        assert_ne!(set, IpSet::empty(IpFamily::V4));
    }

    #[test]
    fn parse_list_reports_every_bad_item() {
        let items = [
            "10.0.0.1",
            "fd00::1",
            "10.0.0.300",
            "10.0.0.9-10.0.0.1",
            "10.0.0.5",
            "10.0.0.0/24",
            " 10.0.0.7",
        ];
        let errors = IpSet::parse_list(IpFamily::V4, &items).unwrap_err();
        let rendered: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                "item 1: `fd00::1` is IPv6 but this list holds IPv4 addresses",
                "item 2: `10.0.0.300` is not an IPv4 or IPv6 address",
                "item 3: range `10.0.0.9-10.0.0.1` ends before it starts; did you mean `10.0.0.1-10.0.0.9`?",
                "item 5: `10.0.0.0/24` is a CIDR, but this field takes single IPs and `start-end` ranges; write `10.0.0.0-10.0.0.255`",
                "item 6: ` 10.0.0.7` contains whitespace; write IPs, ranges and CIDRs without spaces",
            ]
        );
        assert_eq!(
            errors[0],
            ItemError {
                index: 1,
                error: IpError::WrongFamily {
                    text: "fd00::1".into(),
                    found: IpFamily::V6,
                    expected: IpFamily::V4
                }
            }
        );
    }

    #[test]
    fn parse_list_wrong_family_for_ranges_and_ipv6_lists() {
        let errors = IpSet::parse_list(IpFamily::V6, &["10.0.0.1-10.0.0.3", "fd00::1"]).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].to_string(),
            "item 0: `10.0.0.1-10.0.0.3` is IPv4 but this list holds IPv6 addresses"
        );
    }

    #[test]
    fn parse_list_accepts_owned_strings() {
        let items: Vec<String> = vec!["10.0.0.1".into(), "10.0.0.2".into()];
        assert_eq!(
            IpSet::parse_list(IpFamily::V4, &items).unwrap().to_strings(),
            ["10.0.0.1-10.0.0.2"]
        );
    }

    #[test]
    fn parse_list_with_cidrs() {
        let set =
            IpSet::parse_list_with_cidrs(IpFamily::V4, &["10.0.0.0/30", "10.0.0.4", "10.0.0.8/31"]).unwrap();
        assert_eq!(set.to_strings(), ["10.0.0.0-10.0.0.4", "10.0.0.8-10.0.0.9"]);
        let errors = IpSet::parse_list_with_cidrs(IpFamily::V4, &["10.0.0.1/30", "fd00::/64"]).unwrap_err();
        let rendered: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                "item 0: `10.0.0.1/30` is not canonical; did you mean `10.0.0.0/30`?",
                "item 1: `fd00::/64` is IPv6 but this list holds IPv4 addresses",
            ]
        );
    }

    #[test]
    fn from_ips_and_ranges() {
        let ips = [ip("10.0.0.3"), ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.2")];
        assert_eq!(
            IpSet::from_ips(IpFamily::V4, &ips).unwrap().to_strings(),
            ["10.0.0.1-10.0.0.3"]
        );
        assert_eq!(
            IpSet::from_ips(IpFamily::V4, &[ip("fd00::1")]),
            Err(IpError::WrongFamily {
                text: "fd00::1".into(),
                found: IpFamily::V6,
                expected: IpFamily::V4
            })
        );
        let ranges = [
            IpRange::parse("10.0.0.5-10.0.0.9").unwrap(),
            IpRange::parse("10.0.0.1").unwrap(),
        ];
        assert_eq!(
            IpSet::from_ranges(IpFamily::V4, ranges).unwrap().to_strings(),
            ["10.0.0.1", "10.0.0.5-10.0.0.9"]
        );
    }

    #[test]
    fn exclude_and_reserved_subtraction() {
        let ips = v4(&["172.18.40.1-172.18.40.100"]);
        let exclude = v4(&[
            "172.18.40.1",
            "172.18.40.50-172.18.40.60",
            "172.18.40.100-172.18.40.200",
        ]);
        let reserved = v4(&["172.18.40.10"]);
        let usable = ips.difference(&exclude).difference(&reserved);
        assert_eq!(
            usable.to_strings(),
            [
                "172.18.40.2-172.18.40.9",
                "172.18.40.11-172.18.40.49",
                "172.18.40.61-172.18.40.99"
            ]
        );
        assert_eq!(usable.len(), 8 + 39 + 39);
        assert_eq!(
            usable.lowest_free(&v4(&["172.18.40.2-172.18.40.9"])),
            Some(ip("172.18.40.11"))
        );
    }

    #[test]
    fn union_rejects_mixed_families_other_ops_treat_them_as_disjoint() {
        let a = v4(&["10.0.0.1"]);
        let b = v6(&["::a00:1"]);
        assert_eq!(
            a.union(&b),
            Err(IpError::FamilyMismatch {
                left: IpFamily::V4,
                right: IpFamily::V6
            })
        );
        assert_eq!(
            a.union(&IpSet::empty(IpFamily::V6)).unwrap_err().to_string(),
            "cannot combine an IPv4 set with an IPv6 set"
        );
        assert_eq!(a.intersection(&b), IpSet::empty(IpFamily::V4));
        assert_eq!(a.difference(&b), a);
        assert!(!a.overlaps(&b));
        assert!(!a.is_subset_of(&b));
        assert!(IpSet::empty(IpFamily::V4).is_subset_of(&b));
        assert_eq!(a.lowest_free(&b), Some(ip("10.0.0.1")));
        assert!(!a.contains(&ip("::a00:1")));
        assert!(!a.is_within(&net("::/0")));
        assert!(IpSet::empty(IpFamily::V4).is_within(&net("fd00::/64")));
    }

    #[test]
    fn insert_range() {
        let mut set = v4(&["10.0.0.1"]);
        set.insert_range(&IpRange::parse("10.0.0.2-10.0.0.4").unwrap())
            .unwrap();
        assert_eq!(set.to_strings(), ["10.0.0.1-10.0.0.4"]);
        assert!(set.insert_range(&IpRange::parse("fd00::1").unwrap()).is_err());
        assert_eq!(set.to_strings(), ["10.0.0.1-10.0.0.4"]);
    }

    #[test]
    fn is_within() {
        let set = v4(&["10.6.0.10-10.6.0.20", "10.6.255.255"]);
        assert!(set.is_within(&net("10.6.0.0/16")));
        assert!(set.is_within(&net("10.6.0.1/16")));
        assert!(!set.is_within(&net("10.6.0.0/24")));
        assert!(!set.is_within(&net("10.7.0.0/16")));
        assert!(set.is_within(&net("0.0.0.0/0")));
    }

    #[test]
    fn whole_ipv6_space_is_cheap_and_saturates() {
        let all = IpSet::from_cidr(&net("::/0"));
        assert_eq!(all, IpSet::full(IpFamily::V6));
        assert_eq!(all.len(), u128::MAX);
        assert_eq!(all.range_count(), 1);
        assert_eq!(all.to_strings(), ["::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]);
        assert_eq!(all.first(), Some(ip("::")));
        assert_eq!(all.last(), Some(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert_eq!(
            all.nth(u128::MAX),
            Some(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
        );
        assert_eq!(all.nth(5), Some(ip("::5")));
        assert_eq!(
            all.iter().take(3).collect::<Vec<_>>(),
            [ip("::"), ip("::1"), ip("::2")]
        );
        assert_eq!(all.iter().size_hint(), (usize::MAX, None));
        assert!(all.contains(&ip("fd00::1")));
        assert!(all.is_within(&net("::/0")));

        // Minus one address: 2^128 - 1 = u128::MAX addresses, two ranges.
        let top = ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
        let hole = all.difference(&IpSet::from_ip(&ip("8000::")));
        assert_eq!(hole.len(), u128::MAX);
        assert_eq!(
            hole.to_strings(),
            [
                "::-7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "8000::1-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
            ]
        );
        assert_eq!(hole.union(&IpSet::from_ip(&ip("8000::"))).unwrap(), all);

        let lowest = all.take_lowest(u128::MAX);
        assert_eq!(lowest.len(), u128::MAX);
        assert!(!lowest.contains(&top));
        assert_eq!(all.take_highest(u128::MAX).first(), Some(ip("::1")));
        assert_eq!(all.take_lowest(2).to_strings(), ["::-::1"]);
        assert_eq!(
            all.take_highest(1).to_strings(),
            ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
        );
        assert_eq!(all.take_lowest(0), IpSet::empty(IpFamily::V6));

        // Allocation at the very top of the space doesn't overflow.
        assert_eq!(all.lowest_free(&lowest), Some(top));
        assert_eq!(all.lowest_free(&all), None);
        assert_eq!(lowest.lowest_free(&lowest), None);

        // Union with anything that touches the top merges into one range.
        let a = IpSet::from_cidr(&net("8000::/1"));
        let b = IpSet::from_cidr(&net("::/1"));
        assert_eq!(a.union(&b).unwrap(), all);
        assert_eq!(b.union(&a).unwrap(), all);
        assert_eq!(all.intersection(&a), a);
        assert_eq!(all.difference(&a), b);
        assert!(a.is_subset_of(&all));
        assert!(!all.is_subset_of(&a));
        assert_eq!(all.difference(&all), IpSet::empty(IpFamily::V6));
    }

    #[test]
    fn whole_ipv4_space() {
        let all = IpSet::from_cidr(&net("0.0.0.0/0"));
        assert_eq!(all, IpSet::full(IpFamily::V4));
        assert_eq!(all.len(), 1 << 32);
        assert_eq!(all.to_strings(), ["0.0.0.0-255.255.255.255"]);
        assert_eq!(all.nth((1 << 32) - 1), Some(ip("255.255.255.255")));
        assert_eq!(all.nth(1 << 32), None);
        assert_eq!(all.take_highest(1).to_strings(), ["255.255.255.255"]);
        let used = all.take_lowest((1 << 32) - 1);
        assert_eq!(all.lowest_free(&used), Some(ip("255.255.255.255")));
        assert_eq!(all.iter().size_hint(), (1 << 32, Some(1 << 32)));
    }

    #[test]
    fn big_ipv6_pool_allocation_is_cheap() {
        // A /64 pool with a few thousand scattered allocations: no address enumeration.
        let pool = IpSet::from_cidr(&net("fd00:1::/64"));
        let used = IpSet::from_ips(
            IpFamily::V6,
            &(0u128..5000)
                .filter(|i| i % 7 != 3)
                .map(|i| IpFamily::V6.addr(ip_to_u128(&ip("fd00:1::")) + i))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(pool.lowest_free(&used), Some(ip("fd00:1::3")));
        // 714 of the offsets 0..5000 are 3 mod 7 and stay free.
        assert_eq!(pool.difference(&used).len(), (1u128 << 64) - (5000 - 714));
    }

    #[test]
    fn iter_walks_ranges_in_order() {
        let set = v4(&["10.0.0.254-10.0.1.1", "10.0.0.1"]);
        let all: Vec<String> = set.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(
            all,
            ["10.0.0.1", "10.0.0.254", "10.0.0.255", "10.0.1.0", "10.0.1.1"]
        );
        assert_eq!(set.iter().size_hint(), (5, Some(5)));
        let mut it = set.iter();
        it.next();
        assert_eq!(it.size_hint(), (4, Some(4)));
        assert_eq!((&set).into_iter().count(), 5);
        let top = v4(&["255.255.255.254-255.255.255.255"]);
        let mut it = top.iter();
        assert_eq!(it.next(), Some(ip("255.255.255.254")));
        assert_eq!(it.next(), Some(ip("255.255.255.255")));
        assert_eq!(it.next(), None);
        assert_eq!(it.next(), None);
    }

    #[test]
    fn debug_shows_ranges() {
        assert_eq!(
            format!("{:?}", v4(&["10.0.0.1-10.0.0.3"])),
            r#"IpSet { family: V4, ranges: ["10.0.0.1-10.0.0.3"] }"#
        );
    }
}
