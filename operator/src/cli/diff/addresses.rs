//! Whether applying would move addresses that pods hold: the question a reviewer of an IPAM change
//! cares most about, answered per pool from the live pool's allocations (`status.allocatedIPs`, and
//! `status.allocatedIPCount` when the list is missing) and the pool as the dry run returned it.
//!
//! The rules are the controller's ([`plan`](crate::controller::network::plan)): a pool the topology
//! no longer renders while it has allocations, or a change that takes an allocated address out of
//! what a pool hands out (`ips` minus `excludeIPs`), makes the operator refuse the whole topology
//! (`Ready=False`, reason `AddressesInUse`) until the addresses are released or the change reverted.
//! A pool that changes in other ways while it has allocations moves no address; it is still named,
//! because its pods keep the values they were started with (gateway, routes, VLAN) until restarted.

use spiderpool_schema::SpiderIPPool;

use crate::controller::network::plan::{allocated_ips, outside, pool_usable};

/// One pool whose allocations the change touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressFinding {
    /// The topology no longer renders the pool, but addresses in it are allocated.
    PrunedInUse {
        /// The pool.
        pool: String,
        /// `(address, holder)` from `status.allocatedIPs`.
        allocated: Vec<(String, String)>,
        /// How many are allocated (at least `allocated.len()`).
        count: u64,
    },
    /// Allocated addresses the changed pool would no longer hand out.
    Dropped {
        /// The pool.
        pool: String,
        /// `(address, holder)` of each address that would leave the pool.
        addresses: Vec<(String, String)>,
    },
    /// The pool changes while addresses are allocated, but every one of them stays in it.
    ChangedInUse {
        /// The pool.
        pool: String,
        /// How many are allocated.
        count: u64,
        /// Paths of the fields that change.
        fields: Vec<String>,
    },
}

impl AddressFinding {
    /// Whether allocated addresses would leave their pool (the operator refuses such a change).
    pub fn moves(&self) -> bool {
        matches!(
            self,
            AddressFinding::PrunedInUse { .. } | AddressFinding::Dropped { .. }
        )
    }
}

/// Allocations as `(address, holder)`, and their count: `allocatedIPCount` may be set where
/// `allocatedIPs` is not (another writer's pool), and the larger figure is the safe one.
fn allocations(pool: &SpiderIPPool) -> (Vec<(String, String)>, u64) {
    let allocated = allocated_ips(pool);
    let counted = pool
        .status
        .as_ref()
        .and_then(|s| s.allocated_ip_count)
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    let count = counted.max(allocated.len() as u64);
    (allocated, count)
}

/// A live pool the new rendering no longer has.
pub fn pruned(pool: &SpiderIPPool) -> Option<AddressFinding> {
    let (allocated, count) = allocations(pool);
    (count > 0).then(|| AddressFinding::PrunedInUse {
        pool: name(pool),
        allocated,
        count,
    })
}

/// A live pool and the pool it would become; `fields` are the paths that change.
pub fn changed(live: &SpiderIPPool, after: &SpiderIPPool, fields: Vec<String>) -> Option<AddressFinding> {
    let (allocated, count) = allocations(live);
    if count == 0 {
        return None;
    }
    let dropped = outside(allocated, pool_usable(&after.spec).as_ref());
    if dropped.is_empty() {
        Some(AddressFinding::ChangedInUse {
            pool: name(live),
            count,
            fields,
        })
    } else {
        Some(AddressFinding::Dropped {
            pool: name(live),
            addresses: dropped,
        })
    }
}

fn name(pool: &SpiderIPPool) -> String {
    pool.metadata.name.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use spiderpool_schema::ippool::PoolIPAllocation;
    use spiderpool_schema::{SpiderIPPoolSpec, SpiderIPPoolStatus};

    use super::*;

    fn pool(ips: &[&str], allocated: &[&str]) -> SpiderIPPool {
        let mut pool = SpiderIPPool::new(
            "p",
            SpiderIPPoolSpec {
                subnet: "10.0.0.0/24".into(),
                ips: ips.iter().map(|s| s.to_string()).collect(),
                ..SpiderIPPoolSpec::default()
            },
        );
        if !allocated.is_empty() {
            let mut status = SpiderIPPoolStatus::default();
            let map = allocated
                .iter()
                .enumerate()
                .map(|(i, ip)| {
                    (
                        ip.to_string(),
                        PoolIPAllocation::held_by(format!("ns/pod-{i}"), "u"),
                    )
                })
                .collect::<BTreeMap<_, _>>();
            status.set_allocations(&map).unwrap();
            status.allocated_ip_count = Some(allocated.len() as i64);
            pool.status = Some(status);
        }
        pool
    }

    #[test]
    fn an_empty_pool_moves_nothing() {
        let live = pool(&["10.0.0.1-10.0.0.9"], &[]);
        assert_eq!(pruned(&live), None);
        assert_eq!(
            changed(&live, &pool(&["10.0.0.1"], &[]), vec!["spec.ips[0]".into()]),
            None
        );
    }

    #[test]
    fn a_pruned_pool_in_use_names_its_addresses() {
        let finding = pruned(&pool(&["10.0.0.1-10.0.0.9"], &["10.0.0.3"])).unwrap();
        assert!(finding.moves());
        assert_eq!(
            finding,
            AddressFinding::PrunedInUse {
                pool: "p".into(),
                allocated: vec![("10.0.0.3".into(), "pod ns/pod-0".into())],
                count: 1,
            }
        );
    }

    #[test]
    fn the_count_alone_marks_a_pool_in_use() {
        let mut live = pool(&["10.0.0.1-10.0.0.9"], &[]);
        live.status = Some(SpiderIPPoolStatus {
            allocated_ip_count: Some(2),
            ..SpiderIPPoolStatus::default()
        });
        assert!(matches!(
            pruned(&live),
            Some(AddressFinding::PrunedInUse { count: 2, .. })
        ));
    }

    #[test]
    fn a_shrunk_range_drops_only_the_addresses_outside_it() {
        let live = pool(&["10.0.0.1-10.0.0.9"], &["10.0.0.2", "10.0.0.8"]);
        let after = pool(&["10.0.0.1-10.0.0.5"], &[]);
        let finding = changed(&live, &after, vec!["spec.ips[0]".into()]).unwrap();
        assert!(finding.moves());
        assert_eq!(
            finding,
            AddressFinding::Dropped {
                pool: "p".into(),
                addresses: vec![("10.0.0.8".into(), "pod ns/pod-1".into())],
            }
        );
        let mut excluded = pool(&["10.0.0.1-10.0.0.9"], &[]);
        excluded.spec.exclude_ips = vec!["10.0.0.2".into()];
        assert!(
            changed(&live, &excluded, vec!["spec.excludeIPs".into()])
                .unwrap()
                .moves()
        );
    }

    #[test]
    fn other_changes_of_a_pool_in_use_are_named_but_move_nothing() {
        let live = pool(&["10.0.0.1-10.0.0.9"], &["10.0.0.2"]);
        let mut after = pool(&["10.0.0.1-10.0.0.9"], &[]);
        after.spec.gateway = Some("10.0.0.254".into());
        let finding = changed(&live, &after, vec!["spec.gateway".into()]).unwrap();
        assert!(!finding.moves());
        assert_eq!(
            finding,
            AddressFinding::ChangedInUse {
                pool: "p".into(),
                count: 1,
                fields: vec!["spec.gateway".into()],
            }
        );
    }
}
