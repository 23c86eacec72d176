//! Which pools serve a candidate pool that is cut into shards ([`spiderpool_schema::shards`]): never
//! the pool itself, only its shards, and each node in its own order, so that the nodes spread over
//! the shards (each shard is written by a few nodes, not by every node) and each node keeps drawing
//! from the same shard, where its reservations are.

use std::sync::Arc;

use spiderpool_schema::SpiderIPPool;
use spiderpool_schema::shards;

/// The pools to ask, in order, for candidate `pool`: the pool itself when it is not sharded; else
/// `its_shards` (every shard of it, by index) that are not being deleted, starting at this node's
/// own ([`home_index`]) and going round, with those that were full when last seen moved to the end.
/// Empty when a sharded pool has no shard yet.
pub fn serve_order(
    pool: Arc<SpiderIPPool>,
    its_shards: &[Arc<SpiderIPPool>],
    node: &str,
) -> Vec<Arc<SpiderIPPool>> {
    if !shards::is_sharded(&pool.metadata) {
        return vec![pool];
    }
    let live: Vec<&Arc<SpiderIPPool>> = its_shards
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .collect();
    if live.is_empty() {
        return Vec::new();
    }
    let home = home_index(node, live.len());
    let round = live[home..].iter().chain(&live[..home]).map(|s| Arc::clone(s));
    let (mut open, full): (Vec<_>, Vec<_>) = round.partition(|s| !seen_full(s));
    open.extend(full);
    open
}

/// Whether a pool's counts, as last seen, say every address is held.
fn seen_full(pool: &SpiderIPPool) -> bool {
    pool.status
        .as_ref()
        .is_some_and(|s| matches!((s.allocated_ip_count, s.total_ip_count), (Some(held), Some(total)) if total > 0 && held >= total))
}

/// The shard node `node` starts at among `count`: a hash of the node's name ([`super::node_hash`]),
/// so a node keeps its shard across restarts and nodes spread evenly.
pub fn home_index(node: &str, count: usize) -> usize {
    let count = u64::try_from(count.max(1)).unwrap_or(u64::MAX);
    usize::try_from(super::node_hash(node) % count).unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::ResourceExt;
    use spiderpool_schema::shards::ANNOTATION_SHARD_SIZE;
    use spiderpool_schema::{SpiderIPPoolSpec, SpiderIPPoolStatus};

    use super::*;

    fn pool(name: &str, sharded: bool) -> Arc<SpiderIPPool> {
        let mut p = SpiderIPPool::new(name, SpiderIPPoolSpec::default());
        if sharded {
            p.annotations_mut()
                .insert(ANNOTATION_SHARD_SIZE.into(), "16".into());
        }
        Arc::new(p)
    }

    fn names(pools: &[Arc<SpiderIPPool>]) -> Vec<String> {
        pools.iter().map(|p| p.name_any()).collect()
    }

    fn shards(count: usize) -> Vec<Arc<SpiderIPPool>> {
        (0..count)
            .map(|i| pool(&format!("big-shard-{i}"), false))
            .collect()
    }

    #[test]
    fn a_pool_without_shards_serves_itself_and_a_sharded_pool_never_does() {
        assert_eq!(names(&serve_order(pool("small", false), &[], "n1")), ["small"]);
        assert!(serve_order(pool("big", true), &[], "n1").is_empty());
        let order = serve_order(pool("big", true), &shards(4), "n1");
        assert_eq!(order.len(), 4);
        assert!(!names(&order).contains(&"big".to_owned()));
    }

    #[test]
    fn each_node_starts_at_its_own_shard_and_goes_round() {
        let all = shards(4);
        let home = home_index("node-7", 4);
        let order = names(&serve_order(pool("big", true), &all, "node-7"));
        let expected: Vec<String> = (0..4).map(|k| format!("big-shard-{}", (home + k) % 4)).collect();
        assert_eq!(order, expected);
        // The same node, the same start, every time.
        assert_eq!(home_index("node-7", 4), home);
    }

    #[test]
    fn a_hundred_nodes_spread_over_sixteen_shards() {
        let mut per_shard = BTreeMap::new();
        for n in 0..100 {
            *per_shard
                .entry(home_index(&format!("scale-node-{n}"), 16))
                .or_insert(0) += 1;
        }
        assert_eq!(per_shard.len(), 16, "{per_shard:?}");
        assert!(per_shard.values().all(|&count| count <= 12), "{per_shard:?}");
    }

    #[test]
    fn full_and_terminating_shards_are_skipped_or_tried_last() {
        let mut all = shards(3);
        let home = home_index("n1", 3);
        let mut full = (*all[home]).clone();
        full.status = Some(SpiderIPPoolStatus {
            allocated_ip_count: Some(16),
            total_ip_count: Some(16),
            ..SpiderIPPoolStatus::default()
        });
        all[home] = Arc::new(full);
        let next = (home + 1) % 3;
        let mut gone = (*all[next]).clone();
        gone.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        all[next] = Arc::new(gone);
        let order = names(&serve_order(pool("big", true), &all, "n1"));
        assert_eq!(
            order,
            [
                format!("big-shard-{}", (home + 2) % 3),
                format!("big-shard-{home}")
            ]
        );
    }
}
