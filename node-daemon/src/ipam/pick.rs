//! Which addresses a batch of requests gets from one pool, given the pool's records: pure, so the same
//! decision is made whether it is the first attempt or the fifth after write conflicts.
//!
//! A record may also be a node agent's reservation ([`PoolIPAllocation::reservation`]): it counts as
//! taken, but no pod holds it, so no release, rebind or retried ADD matches it. What a node does
//! with its own reservations is [`super::lease`].
//!
//! Addresses are handed out lowest-free first (upstream's behaviour since v1.0, reference 13.1):
//! the usable addresses are `spec.ips` minus `spec.excludeIPs` minus every SpiderReservedIP of the
//! family minus the addresses already recorded. A request whose pod UID already holds an address of
//! the pool gets that address again, so a retried ADD (lost response, daemon restart between the pool
//! write and the answer) never takes a second address.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use spiderpool_ipmath::{IpFamily, IpSet};
use spiderpool_schema::ippool::PoolIPAllocation;
use spiderpool_schema::{SpiderIPPool, SpiderIPPoolSpec};

use super::records::RecordIndex;

/// One change to a pool's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Give the pod an address (or the one it already holds).
    Allocate {
        /// `<namespace>/<name>`.
        pod: String,
        /// The pod's UID.
        pod_uid: String,
    },
    /// Take back `ip` if `pod_uid` holds it.
    Release {
        /// The address.
        ip: IpAddr,
        /// The UID that must hold it.
        pod_uid: String,
    },
    /// Hand `ip` to a new incarnation of a sticky pod (StatefulSet member, VM): the record must belong
    /// to the previous incarnation (`previous_uid`) or to `pod` already, or the address must be free.
    /// A VM's launcher pods have different names, so the UID is what ties them together.
    Rebind {
        /// The address the pod held.
        ip: IpAddr,
        /// UID of the incarnation that held it.
        previous_uid: String,
        /// `<namespace>/<name>` of the new incarnation.
        pod: String,
        /// The new pod UID.
        pod_uid: String,
    },
}

/// What became of one [`Op`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The pod holds this address.
    Allocated(IpAddr),
    /// No address is free (or the pool reached its size cap); the reason says which.
    Exhausted(String),
    /// No address is free now, but other nodes' agents hold reservations they may give back: ask
    /// again when the pool changes ([`super::lease`]).
    Wait(String),
    /// Released (`true`) or there was nothing to release (`false`).
    Released(bool),
    /// Rebound to the new UID.
    Rebound,
    /// The address is held by another pod: the sticky pod must get a new one.
    RebindRefused(String),
}

/// Why an allocation found nothing: every usable address is taken.
pub const ALL_USED: &str = "all IP addresses used out";

/// The addresses a pool may give out: its usable addresses
/// ([`SpiderIPPoolSpec::usable_addresses`]) minus the reserved ones.
pub fn usable_addresses(
    spec: &SpiderIPPoolSpec,
    family: IpFamily,
    reserved: &IpSet,
) -> Result<IpSet, String> {
    let mut usable = spec.usable_addresses().map_err(|e| e.to_string())?;
    if usable.family() != family {
        return Err(format!("the pool is {}, not {family}", usable.family()));
    }
    if reserved.family() == family {
        usable = usable.difference(reserved);
    }
    Ok(usable)
}

/// The addresses pool `pool` may give out: [`usable_addresses`], none for a pool served through
/// shards (its addresses are recorded in its shards, never in it; agents ask the shards instead).
pub fn pool_usable(pool: &SpiderIPPool, family: IpFamily, reserved: &IpSet) -> Result<IpSet, String> {
    if spiderpool_schema::shards::is_sharded(&pool.metadata) {
        return Ok(IpSet::empty(family));
    }
    usable_addresses(&pool.spec, family, reserved)
}

/// Applies a batch to `records` (releases first, then rebinds, then allocations, so that an address
/// freed in the batch can serve a request of the same batch). `max_records` caps the pool size as
/// upstream's `SPIDERPOOL_IPPOOL_MAX_ALLOCATED_IPS` does, which keeps the status object well below
/// etcd's object size limit.
pub fn apply(
    records: &mut BTreeMap<String, PoolIPAllocation>,
    usable: &IpSet,
    ops: &[Op],
    max_records: usize,
) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; ops.len()];
    let index = RecordIndex::new(records, usable.family());

    for (i, op) in ops.iter().enumerate() {
        if let Op::Release { ip, pod_uid } = op {
            let held: Vec<String> = index
                .keys_naming(records, ip)
                .into_iter()
                .filter(|key| {
                    records
                        .get(key)
                        .is_some_and(|r| r.reservation().is_none() && &r.pod_uid == pod_uid)
                })
                .collect();
            for key in &held {
                records.remove(key);
            }
            outcomes[i] = Some(Outcome::Released(!held.is_empty()));
        }
    }

    for (i, op) in ops.iter().enumerate() {
        if let Op::Rebind {
            ip,
            previous_uid,
            pod,
            pod_uid,
        } = op
        {
            let keys = index.keys_naming(records, ip);
            outcomes[i] = Some(match keys.as_slice() {
                [] if usable.contains(ip) => {
                    records.insert(
                        ip.to_string(),
                        PoolIPAllocation::held_by(pod.clone(), pod_uid.clone()),
                    );
                    Outcome::Rebound
                }
                [] => Outcome::RebindRefused(format!("{ip} is no longer a usable address of the pool")),
                [key] => match records.get_mut(key) {
                    Some(record)
                        if record.reservation().is_none()
                            && (&record.pod_uid == previous_uid || &record.pod == pod) =>
                    {
                        record.pod.clone_from(pod);
                        record.pod_uid.clone_from(pod_uid);
                        Outcome::Rebound
                    }
                    Some(record) => Outcome::RebindRefused(match record.reservation() {
                        Some(node) => format!("{ip} is reserved by the agent of node {node}"),
                        None => format!("{ip} is held by {}", record.pod),
                    }),
                    None => Outcome::RebindRefused(format!("{ip} changed while deciding")),
                },
                several => Outcome::RebindRefused(format!(
                    "{ip} is claimed by {} records ({}): ambiguous, left to whoever holds them",
                    several.len(),
                    several.join(", ")
                )),
            });
        }
    }

    let by_uid: HashMap<&str, IpAddr> = records
        .iter()
        .filter(|(_, r)| r.reservation().is_none())
        .filter_map(|(key, r)| Some((r.pod_uid.as_str(), index.address_of_key(key)?)))
        .collect();
    let mut existing: Vec<(usize, IpAddr)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if let Op::Allocate { pod_uid, .. } = op
            && let Some(ip) = by_uid.get(pod_uid.as_str())
        {
            existing.push((i, *ip));
        }
    }
    drop(by_uid);
    for (i, ip) in existing {
        outcomes[i] = Some(Outcome::Allocated(ip));
    }

    let used = index.occupied(records);
    let free_set = usable.difference(&used);
    let mut free = free_set.iter();
    // A batch may carry the same pod twice (a retried ADD queued behind the first): one address each.
    let mut given: HashMap<&str, IpAddr> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        let Op::Allocate { pod, pod_uid } = op else {
            continue;
        };
        if outcomes[i].is_some() {
            continue;
        }
        if let Some(ip) = given.get(pod_uid.as_str()) {
            outcomes[i] = Some(Outcome::Allocated(*ip));
            continue;
        }
        if records.len() >= max_records {
            outcomes[i] = Some(Outcome::Exhausted(format!(
                "the pool already holds {} addresses, the most one pool may hold",
                records.len()
            )));
            continue;
        }
        outcomes[i] = Some(match free.next() {
            Some(ip) => {
                records.insert(
                    ip.to_string(),
                    PoolIPAllocation::held_by(pod.clone(), pod_uid.clone()),
                );
                given.insert(pod_uid, ip);
                Outcome::Allocated(ip)
            }
            None => Outcome::Exhausted(ALL_USED.to_owned()),
        });
    }

    outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Released(false)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(ips: &[&str], exclude: &[&str]) -> SpiderIPPoolSpec {
        SpiderIPPoolSpec {
            subnet: "10.0.0.0/24".into(),
            ips: ips.iter().map(|s| s.to_string()).collect(),
            exclude_ips: exclude.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn alloc(pod: &str) -> Op {
        Op::Allocate {
            pod: format!("ns/{pod}"),
            pod_uid: format!("uid-{pod}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lowest_free_skipping_excluded_reserved_and_used() {
        let reserved = IpSet::parse_list(IpFamily::V4, &["10.0.0.3"]).unwrap();
        let usable = usable_addresses(
            &spec(&["10.0.0.1-10.0.0.6"], &["10.0.0.1"]),
            IpFamily::V4,
            &reserved,
        )
        .unwrap();
        let mut records = BTreeMap::from([(
            "10.0.0.2".to_owned(),
            PoolIPAllocation::held_by("ns/old", "uid-old"),
        )]);
        let out = apply(
            &mut records,
            &usable,
            &[alloc("a"), alloc("b"), alloc("c"), alloc("d")],
            100,
        );
        assert_eq!(
            out,
            [
                Outcome::Allocated(ip("10.0.0.4")),
                Outcome::Allocated(ip("10.0.0.5")),
                Outcome::Allocated(ip("10.0.0.6")),
                Outcome::Exhausted("all IP addresses used out".into())
            ]
        );
        assert_eq!(records.len(), 4);
    }

    #[test]
    fn same_uid_gets_the_same_address_again() {
        let usable = usable_addresses(
            &spec(&["10.0.0.1-10.0.0.9"], &[]),
            IpFamily::V4,
            &IpSet::empty(IpFamily::V4),
        )
        .unwrap();
        let mut records = BTreeMap::new();
        let first = apply(&mut records, &usable, &[alloc("a")], 100);
        let again = apply(&mut records, &usable, &[alloc("a"), alloc("a")], 100);
        assert_eq!(again, [first[0].clone(), first[0].clone()]);
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn release_needs_the_holders_uid_and_frees_for_the_same_batch() {
        let usable = usable_addresses(
            &spec(&["10.0.0.1"], &[]),
            IpFamily::V4,
            &IpSet::empty(IpFamily::V4),
        )
        .unwrap();
        let mut records = BTreeMap::new();
        apply(&mut records, &usable, &[alloc("a")], 100);
        let wrong = Op::Release {
            ip: ip("10.0.0.1"),
            pod_uid: "uid-other".into(),
        };
        assert_eq!(
            apply(&mut records, &usable, &[wrong], 100),
            [Outcome::Released(false)]
        );
        let right = Op::Release {
            ip: ip("10.0.0.1"),
            pod_uid: "uid-a".into(),
        };
        assert_eq!(
            apply(&mut records, &usable, &[alloc("b"), right], 100),
            [Outcome::Allocated(ip("10.0.0.1")), Outcome::Released(true)]
        );
        assert_eq!(records["10.0.0.1"].pod_uid, "uid-b");
    }

    #[test]
    fn rebind_keeps_a_sticky_pods_address_unless_someone_else_holds_it() {
        let usable = usable_addresses(
            &spec(&["10.0.0.1-10.0.0.2"], &[]),
            IpFamily::V4,
            &IpSet::empty(IpFamily::V4),
        )
        .unwrap();
        let mut records = BTreeMap::new();
        apply(&mut records, &usable, &[alloc("db-0")], 100);
        let rebind = Op::Rebind {
            ip: ip("10.0.0.1"),
            previous_uid: "uid-db-0".into(),
            pod: "ns/db-0".into(),
            pod_uid: "new".into(),
        };
        assert_eq!(apply(&mut records, &usable, &[rebind], 100), [Outcome::Rebound]);
        assert_eq!(records["10.0.0.1"].pod_uid, "new");
        let stolen = Op::Rebind {
            ip: ip("10.0.0.1"),
            previous_uid: "old".into(),
            pod: "ns/db-1".into(),
            pod_uid: "x".into(),
        };
        assert!(matches!(
            apply(&mut records, &usable, &[stolen], 100)[0],
            Outcome::RebindRefused(_)
        ));
        let free_again = Op::Rebind {
            ip: ip("10.0.0.2"),
            previous_uid: "old".into(),
            pod: "ns/db-1".into(),
            pod_uid: "x".into(),
        };
        assert_eq!(
            apply(&mut records, &usable, &[free_again], 100),
            [Outcome::Rebound]
        );
        // A VM's new launcher pod (another name) takes over by the previous UID.
        let vm = Op::Rebind {
            ip: ip("10.0.0.2"),
            previous_uid: "x".into(),
            pod: "ns/virt-launcher-vm-b".into(),
            pod_uid: "z".into(),
        };
        assert_eq!(apply(&mut records, &usable, &[vm], 100), [Outcome::Rebound]);
        assert_eq!(records["10.0.0.2"].pod, "ns/virt-launcher-vm-b");
        let outside = Op::Rebind {
            ip: ip("10.0.0.7"),
            previous_uid: "old".into(),
            pod: "ns/db-2".into(),
            pod_uid: "y".into(),
        };
        assert!(matches!(
            apply(&mut records, &usable, &[outside], 100)[0],
            Outcome::RebindRefused(_)
        ));
    }

    fn held(pod: &str) -> PoolIPAllocation {
        PoolIPAllocation::held_by(format!("ns/{pod}"), format!("uid-{pod}"))
    }

    fn v4(range: &str) -> IpSet {
        IpSet::parse_list(IpFamily::V4, &[range]).unwrap()
    }

    #[test]
    fn a_key_of_the_other_family_never_makes_held_addresses_look_free() {
        let usable = v4("10.0.0.1-10.0.0.3");
        let mut records = BTreeMap::from([
            ("10.0.0.1".to_owned(), held("x")),
            ("fd00::1".to_owned(), held("y")),
        ]);
        let out = apply(&mut records, &usable, &[alloc("a")], 100);
        assert_eq!(out, [Outcome::Allocated(ip("10.0.0.2"))]);
        assert_eq!(records["10.0.0.1"], held("x"));
        assert_eq!(records["fd00::1"], held("y"));
    }

    #[test]
    fn a_non_canonical_key_occupies_every_address_it_may_name() {
        let usable = v4("10.0.0.1-10.0.0.12");
        let mut records = BTreeMap::from([
            // Leading zeros: decimal 1 (Go before 1.17); " 10.0.0.2 ", a prefix length, an IPv4-mapped
            // IPv6 form; "010": decimal 10 or octal 8.
            ("10.0.0.01".to_owned(), held("x1")),
            (" 10.0.0.2 ".to_owned(), held("x2")),
            ("10.0.0.3/24".to_owned(), held("x3")),
            ("::ffff:10.0.0.4".to_owned(), held("x4")),
            ("10.0.0.010".to_owned(), held("x5")),
        ]);
        let ops: Vec<Op> = (0..6).map(|i| alloc(&format!("p{i}"))).collect();
        let out = apply(&mut records, &usable, &ops, 100);
        let given: Vec<IpAddr> = out
            .iter()
            .filter_map(|o| match o {
                Outcome::Allocated(ip) => Some(*ip),
                _ => None,
            })
            .collect();
        let expected: Vec<IpAddr> = [
            "10.0.0.5",
            "10.0.0.6",
            "10.0.0.7",
            "10.0.0.9",
            "10.0.0.11",
            "10.0.0.12",
        ]
        .iter()
        .map(|s| ip(s))
        .collect();
        assert_eq!(given, expected);
        assert_eq!(records.len(), 11);
    }

    #[test]
    fn an_unparseable_key_is_kept_and_counts_toward_the_size_cap() {
        let usable = v4("10.0.0.1-10.0.0.3");
        let mut records = BTreeMap::from([("not an address".to_owned(), held("x"))]);
        let out = apply(&mut records, &usable, &[alloc("a")], 1);
        assert!(matches!(&out[0], Outcome::Exhausted(_)), "{out:?}");
        assert_eq!(records["not an address"], held("x"));
    }

    #[test]
    fn a_non_canonical_record_is_released_by_its_pod_and_never_rebound_to_another() {
        let usable = IpSet::parse_list(IpFamily::V6, &["fd00::1-fd00::9"]).unwrap();
        let mut records = BTreeMap::from([("fd00:0::5".to_owned(), held("x"))]);
        let rebind = Op::Rebind {
            ip: ip("fd00::5"),
            previous_uid: "uid-old".into(),
            pod: "ns/new".into(),
            pod_uid: "uid-new".into(),
        };
        let out = apply(&mut records, &usable, std::slice::from_ref(&rebind), 100);
        assert!(
            matches!(&out[0], Outcome::RebindRefused(why) if why.contains("ns/x")),
            "{out:?}"
        );
        assert_eq!(records.len(), 1);
        let release = Op::Release {
            ip: ip("fd00::5"),
            pod_uid: "uid-x".into(),
        };
        assert_eq!(
            apply(&mut records, &usable, &[release], 100),
            [Outcome::Released(true)]
        );
        assert!(records.is_empty());
    }

    #[test]
    fn a_pool_served_through_shards_gives_out_nothing_itself() {
        let none = IpSet::empty(IpFamily::V4);
        let mut pool = SpiderIPPool::new("big", spec(&["10.0.0.1-10.0.0.9"], &[]));
        assert_eq!(pool_usable(&pool, IpFamily::V4, &none).unwrap().len(), 9);
        pool.metadata.annotations = Some(
            [(
                spiderpool_schema::shards::ANNOTATION_SHARD_SIZE.to_owned(),
                "16".to_owned(),
            )]
            .into(),
        );
        let usable = pool_usable(&pool, IpFamily::V4, &none).unwrap();
        let mut records = BTreeMap::new();
        let out = apply(&mut records, &usable, &[alloc("a")], 100);
        assert!(matches!(&out[0], Outcome::Exhausted(_)), "{out:?}");
        assert!(records.is_empty());
    }

    #[test]
    fn size_cap() {
        let usable = usable_addresses(
            &spec(&["10.0.0.1-10.0.0.9"], &[]),
            IpFamily::V4,
            &IpSet::empty(IpFamily::V4),
        )
        .unwrap();
        let mut records = BTreeMap::new();
        let out = apply(&mut records, &usable, &[alloc("a"), alloc("b")], 1);
        assert!(matches!(&out[1], Outcome::Exhausted(r) if r.contains("the most one pool may hold")));
    }

    #[test]
    fn bad_pool_spec_names_the_field() {
        let err = usable_addresses(
            &spec(&["10.0.0.300"], &[]),
            IpFamily::V4,
            &IpSet::empty(IpFamily::V4),
        )
        .unwrap_err();
        assert!(err.starts_with("spec.ips:"), "{err}");
    }

    proptest! {
        /// Whatever the batches, no address is ever recorded twice, every address is usable, and
        /// every pod holds at most one address.
        #[test]
        fn never_duplicates(batches in proptest::collection::vec(proptest::collection::vec((0u8..3, 0u8..12), 1..8), 1..8)) {
            let usable = usable_addresses(&spec(&["10.0.0.1-10.0.0.8"], &["10.0.0.4"]), IpFamily::V4, &IpSet::empty(IpFamily::V4)).unwrap();
            let mut records: BTreeMap<String, PoolIPAllocation> = BTreeMap::new();
            for batch in batches {
                let ops: Vec<Op> = batch.iter().map(|(kind, pod)| match kind {
                    0 | 1 => alloc(&pod.to_string()),
                    _ => {
                        let held = records.iter().find(|(_, r)| r.pod_uid == format!("uid-{pod}")).map(|(ip, _)| ip.parse().unwrap());
                        Op::Release { ip: held.unwrap_or(ip("10.0.0.1")), pod_uid: format!("uid-{pod}") }
                    }
                }).collect();
                let outcomes = apply(&mut records, &usable, &ops, 100);
                prop_assert_eq!(outcomes.len(), ops.len());
                let mut uids = std::collections::BTreeSet::new();
                for (ip, record) in &records {
                    prop_assert!(usable.contains(&ip.parse().unwrap()));
                    prop_assert!(uids.insert(record.pod_uid.clone()), "uid twice");
                }
                for (op, outcome) in ops.iter().zip(&outcomes) {
                    if let (Op::Allocate { pod_uid, .. }, Outcome::Allocated(ip)) = (op, outcome) {
                        prop_assert_eq!(&records[&ip.to_string()].pod_uid, pod_uid);
                    }
                }
            }
        }
    }
}
