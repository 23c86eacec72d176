//! Shards: a big SpiderIPPool served through smaller internal pools, so that the cost of one
//! allocation (one pool write, one watch event, one decode) is bounded by the shard's size and by the
//! few nodes writing it, not by the whole pool and every node. The rules the webhook, the operator
//! (which makes the shards) and the node daemon (which allocates from them) must agree on are here.
//!
//! A user asks for it on the pool (`spiderpool.spidernet.io/shard-size: "4096"`). The pool's usable
//! addresses (`ips − excludeIPs`) are cut, lowest first, into slices of at most that many addresses;
//! slice `i` is the SpiderIPPool [`shard_name`]`(pool, i)`, labelled [`LABEL_SHARD_OF`] with the
//! pool's UID, controlled by the pool, with the pool's spec except its addresses and `default`. Agents
//! never allocate from a pool that asks for shards, only from its shards; a pod's SpiderEndpoint
//! names the shard its address came from. The slices are a function of the pool's spec alone, so
//! they cannot change while a shard holds addresses as long as the pool's addresses do not change:
//! the webhook refuses that change, and adding or removing the annotation on a pool that has ever
//! held addresses.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use spiderpool_ipmath::IpSet;

use crate::{SpiderIPPool, SpiderIPPoolSpec};

/// Pool annotation (written by the user): serve the pool through shards of at most this many
/// addresses.
pub const ANNOTATION_SHARD_SIZE: &str = "spiderpool.spidernet.io/shard-size";
/// Shard label: the UID of the pool the shard belongs to (a UID always fits a label value; a pool
/// deleted and made again under the same name does not inherit the old shards).
pub const LABEL_SHARD_OF: &str = "spiderpool.spidernet.io/shard-of";
/// Shard label: the shard's index among its pool's shards.
pub const LABEL_SHARD_INDEX: &str = "spiderpool.spidernet.io/shard-index";

/// The smallest shard size accepted.
pub const MIN_SHARD_SIZE: u32 = 16;
/// The biggest: a pool object's records stay well below etcd's 1.5 MiB request limit (about
/// 14,000 records).
pub const MAX_SHARD_SIZE: u32 = 8192;
/// The most shards one pool may be cut into (every agent caches every shard).
pub const MAX_SHARDS: u128 = 256;

/// Why a pool's shards cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// The annotation is not a whole number in range.
    #[error(
        "metadata.annotations[{ANNOTATION_SHARD_SIZE}]: `{0}` is not a whole number from {MIN_SHARD_SIZE} to {MAX_SHARD_SIZE}"
    )]
    BadSize(String),
    /// The pool's addresses would make too many shards.
    #[error(
        "metadata.annotations[{ANNOTATION_SHARD_SIZE}]: {addresses} addresses in shards of {size} would make {shards} shards, more than {MAX_SHARDS}; use bigger shards or a smaller pool"
    )]
    TooMany {
        /// Usable addresses of the pool.
        addresses: u128,
        /// The shard size asked for.
        size: u32,
        /// How many shards that makes.
        shards: u128,
    },
}

/// Whether the pool asks to be served through shards (the annotation is present, whatever its
/// value: a pool that asks is never allocated from directly, even while its value is refused).
pub fn is_sharded(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANNOTATION_SHARD_SIZE))
}

/// The shard size a pool asks for: `None` when it does not ask.
pub fn shard_size(meta: &ObjectMeta) -> Option<Result<u32, ShardError>> {
    let text = meta.annotations.as_ref()?.get(ANNOTATION_SHARD_SIZE)?;
    Some(
        text.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (MIN_SHARD_SIZE..=MAX_SHARD_SIZE).contains(n))
            .ok_or_else(|| ShardError::BadSize(text.clone())),
    )
}

/// The UID of the pool this pool is a shard of, if it is one.
pub fn shard_of(pool: &SpiderIPPool) -> Option<&str> {
    pool.labels().get(LABEL_SHARD_OF).map(String::as_str)
}

/// A shard's index (its label), if it is a shard.
pub fn shard_index(pool: &SpiderIPPool) -> Option<usize> {
    shard_of(pool)?;
    pool.labels().get(LABEL_SHARD_INDEX)?.parse().ok()
}

/// The name of shard `index` of pool `pool`: `<pool>-shard-<index>`, the pool's part cut so that the
/// whole stays a valid object name (253 characters).
pub fn shard_name(pool: &str, index: usize) -> String {
    let suffix = format!("-shard-{index}");
    let keep = pool.len().min(253 - suffix.len());
    let mut cut = pool[..keep].trim_end_matches(['-', '.']).to_owned();
    if cut.is_empty() {
        cut.push('p');
    }
    cut + &suffix
}

/// The slices of `usable` (a pool's `ips − excludeIPs`) the shards hold, lowest addresses first, each
/// of `size` addresses except perhaps the last.
pub fn slices(usable: &IpSet, size: u32) -> Result<Vec<IpSet>, ShardError> {
    let addresses = usable.len();
    let shards = addresses.div_ceil(u128::from(size));
    if shards > MAX_SHARDS {
        return Err(ShardError::TooMany {
            addresses,
            size,
            shards,
        });
    }
    let mut rest = usable.clone();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let slice = rest.take_lowest(u128::from(size));
        rest = rest.difference(&slice);
        out.push(slice);
    }
    Ok(out)
}

/// The spec of a shard holding `slice` of the pool whose spec is `pool`: the pool's, except its
/// addresses (the slice, no exclusions) and `default` (pods reach shards through their pool, never
/// as cluster defaults: `false`, as the API server stores an unset one).
pub fn shard_spec(pool: &SpiderIPPoolSpec, slice: &IpSet) -> SpiderIPPoolSpec {
    SpiderIPPoolSpec {
        ips: slice.to_strings(),
        exclude_ips: Vec::new(),
        default: Some(false),
        ..pool.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use std::collections::BTreeMap;

    use spiderpool_ipmath::IpFamily;

    use super::*;

    fn meta(annotation: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            annotations: annotation
                .map(|v| BTreeMap::from([(ANNOTATION_SHARD_SIZE.to_owned(), v.to_owned())])),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn the_size_is_a_whole_number_in_range_and_a_bad_one_still_marks_the_pool() {
        assert_eq!(shard_size(&meta(None)), None);
        assert_eq!(shard_size(&meta(Some("4096"))), Some(Ok(4096)));
        for bad in ["4k", "8", "9000", "", "-1"] {
            let err = shard_size(&meta(Some(bad))).unwrap().unwrap_err().to_string();
            assert!(err.contains(ANNOTATION_SHARD_SIZE) && err.contains(bad), "{err}");
            assert!(is_sharded(&meta(Some(bad))));
        }
        assert!(!is_sharded(&meta(None)));
    }

    #[test]
    fn slices_cut_the_usable_addresses_lowest_first_and_cover_them_exactly() {
        let usable = IpSet::parse_list(IpFamily::V4, &["10.0.0.0-10.0.0.99", "10.0.1.0-10.0.1.9"]).unwrap();
        let cut = slices(&usable, 32).unwrap();
        assert_eq!(cut.iter().map(IpSet::len).collect::<Vec<_>>(), [32, 32, 32, 14]);
        assert_eq!(cut[0].to_strings(), ["10.0.0.0-10.0.0.31"]);
        assert_eq!(cut[3].to_strings(), ["10.0.0.96-10.0.0.99", "10.0.1.0-10.0.1.9"]);
        let mut union = IpSet::empty(IpFamily::V4);
        for (i, a) in cut.iter().enumerate() {
            for b in &cut[i + 1..] {
                assert!(!a.overlaps(b));
            }
            union = union.union(a).unwrap();
        }
        assert_eq!(union, usable);
        // The same spec always gives the same slices.
        assert_eq!(slices(&usable, 32).unwrap(), cut);
    }

    #[test]
    fn a_pool_too_big_for_its_shard_size_is_refused_with_the_numbers() {
        let v6 = IpSet::parse_list(IpFamily::V6, &["fd00::-fd00::ffff:ffff:ffff:ffff"]).unwrap();
        let err = slices(&v6, 8192).unwrap_err().to_string();
        assert!(err.contains("more than 256"), "{err}");
        let v4 = IpSet::parse_list(IpFamily::V4, &["10.0.0.0-10.0.255.255"]).unwrap();
        assert_eq!(slices(&v4, 4096).unwrap().len(), 16);
    }

    #[test]
    fn names_stay_valid_object_names() {
        assert_eq!(shard_name("big", 3), "big-shard-3");
        let long = "a".repeat(253);
        let name = shard_name(&long, 255);
        assert_eq!(name.len(), 253);
        assert!(name.ends_with("a-shard-255"));
    }

    #[test]
    fn a_shard_keeps_the_pool_spec_but_its_addresses_and_default() {
        let pool = SpiderIPPoolSpec {
            subnet: "10.0.0.0/16".into(),
            ips: vec!["10.0.0.0-10.0.255.255".into()],
            exclude_ips: vec!["10.0.0.1".into()],
            gateway: Some("10.0.0.1".into()),
            default: Some(true),
            multus_name: vec!["kube-system/macvlan".into()],
            ..SpiderIPPoolSpec::default()
        };
        let slice = IpSet::parse_list(IpFamily::V4, &["10.0.0.2-10.0.0.9"]).unwrap();
        let shard = shard_spec(&pool, &slice);
        assert_eq!(shard.ips, ["10.0.0.2-10.0.0.9"]);
        assert!(shard.exclude_ips.is_empty());
        assert_eq!(shard.default, Some(false));
        assert_eq!(
            (shard.gateway, shard.multus_name, shard.subnet),
            (pool.gateway, pool.multus_name, pool.subnet)
        );
    }
}
