//! Errors for parsing and combining addresses.
//!
//! Every message quotes the text the user wrote and, where there is an obvious fix, says what it is,
//! because these strings end up verbatim in webhook denials, `kubectl` output and the topology
//! compiler's diagnostics.

use crate::IpFamily;

/// Why an IP address, range, CIDR or address list was rejected, or why two sets can't be combined.
///
/// Variants carry the offending text exactly as written (not re-formatted), so the message
/// points at what the user has to change. The type is `Clone + PartialEq` so callers can store
/// it in status conditions and compare it in tests.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum IpError {
    /// The text was empty. Upstream's validators reject `""` in every IP field, so do we.
    #[error("empty string is not an IP address, range or CIDR")]
    Empty,

    /// The text contains whitespace. Upstream rejects `10.0.0.1 - 10.0.0.9` and padded items
    /// rather than trimming them, and silently trimming would make our normalised output differ
    /// from what the user stored.
    #[error("`{text}` contains whitespace; write IPs, ranges and CIDRs without spaces")]
    Whitespace {
        /// The text as written.
        text: String,
    },

    /// The text is not an IPv4 or IPv6 address (zones like `%eth0`, brackets, leading zeros in
    /// IPv4 octets and short forms like `10.1` are all rejected).
    #[error("`{text}` is not an IPv4 or IPv6 address")]
    InvalidIp {
        /// The text as written.
        text: String,
    },

    /// One side of an `a-b` range is not an address.
    #[error("range `{text}` is invalid: `{bound}` is not an IPv4 or IPv6 address")]
    InvalidRangeBound {
        /// The whole range as written.
        text: String,
        /// The side that failed to parse.
        bound: String,
    },

    /// An `a-b` range with nothing before or after the `-`.
    #[error("range `{text}` needs an address on both sides of `-`")]
    RangeMissingBound {
        /// The whole range as written.
        text: String,
    },

    /// More than one `-`: IPv6 addresses never contain `-`, so this can't be a range.
    #[error("`{text}` is not a valid range: write exactly one `-` between the first and the last address")]
    RangeTooManyDashes {
        /// The text as written.
        text: String,
    },

    /// An `a-b` range whose end is lower than its start; upstream rejects these instead of
    /// swapping the ends.
    #[error("range `{text}` ends before it starts; did you mean `{suggestion}`?")]
    RangeReversed {
        /// The whole range as written.
        text: String,
        /// The same range with the ends swapped.
        suggestion: String,
    },

    /// An `a-b` range with one IPv4 and one IPv6 end.
    #[error("range `{text}` mixes IPv4 and IPv6")]
    RangeMixedFamily {
        /// The whole range as written.
        text: String,
    },

    /// A CIDR without `/prefix`.
    #[error("`{text}` is not a valid CIDR: it has no `/` and prefix length")]
    CidrMissingPrefix {
        /// The text as written.
        text: String,
    },

    /// The address part of a CIDR is not an address.
    #[error("`{text}` is not a valid CIDR: `{addr}` is not an IPv4 or IPv6 address")]
    CidrInvalidAddress {
        /// The whole CIDR as written.
        text: String,
        /// The part before the `/`.
        addr: String,
    },

    /// The prefix length is not a plain decimal number (`/`, `/x`, `/+8`, `/-1`).
    #[error("`{text}` is not a valid CIDR: prefix length `{prefix}` is not a decimal number")]
    CidrInvalidPrefix {
        /// The whole CIDR as written.
        text: String,
        /// The part after the `/`.
        prefix: String,
    },

    /// The prefix length has a leading zero (`/024`). Rejected because tools disagree on whether
    /// that is decimal or octal.
    #[error("`{text}` is not a valid CIDR: prefix length `{prefix}` has a leading zero")]
    CidrPrefixLeadingZero {
        /// The whole CIDR as written.
        text: String,
        /// The part after the `/`.
        prefix: String,
    },

    /// The prefix length is longer than the address (more than 32 for IPv4, 128 for IPv6).
    #[error("`{text}` is not a valid CIDR: prefix length {prefix} exceeds {max}")]
    CidrPrefixTooLong {
        /// The whole CIDR as written.
        text: String,
        /// The part after the `/`, as written (it may not even fit in a `u32`).
        prefix: String,
        /// The longest prefix the address family allows.
        max: u8,
    },

    /// A CIDR with host bits set where upstream requires the network address
    /// (`SpiderIPPool.spec.subnet`, `SpiderSubnet.spec.subnet`).
    #[error("`{text}` is not canonical; did you mean `{canonical}`?")]
    NotCanonical {
        /// The CIDR as written.
        text: String,
        /// The same CIDR with the host bits cleared.
        canonical: String,
    },

    /// A CIDR given where only single addresses and `a-b` ranges are allowed (upstream's `ips`,
    /// `excludeIPs` and `SpiderReservedIP.spec.ips` fields).
    #[error("`{text}` is a CIDR, but this field takes single IPs and `start-end` ranges; write `{range}`")]
    CidrNotAllowed {
        /// The CIDR as written.
        text: String,
        /// The range the CIDR covers, in `start-end` form.
        range: String,
    },

    /// An item of the other address family in a single-family list.
    #[error("`{text}` is {found} but this list holds {expected} addresses")]
    WrongFamily {
        /// The item as written.
        text: String,
        /// The family of the item.
        found: IpFamily,
        /// The family of the list.
        expected: IpFamily,
    },

    /// Two sets of different families were combined where the result must hold both; an
    /// [`IpSet`](crate::IpSet) holds one family only.
    #[error("cannot combine an {left} set with an {right} set")]
    FamilyMismatch {
        /// The family of the set the operation was called on.
        left: IpFamily,
        /// The family of the other operand.
        right: IpFamily,
    },
}

/// One rejected item of a list, with its position.
///
/// [`IpSet::parse_list`](crate::IpSet::parse_list) returns every bad item at once (not just the
/// first), so a user fixing a 50-entry `ips` list sees all problems in one webhook round trip.
/// `index` is zero-based, matching the JSON path (`spec.ips[3]`) the caller will build from it.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("item {index}: {error}")]
pub struct ItemError {
    /// Zero-based position of the item in the input list.
    pub index: usize,
    /// What is wrong with it. Already part of this error's message, so it is not exposed as
    /// `source()` as well (reporters would print it twice).
    pub error: IpError,
}
