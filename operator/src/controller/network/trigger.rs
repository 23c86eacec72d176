//! Which child events wake the SpiderNetwork controller (pure; the controller feeds it its pool
//! events).
//!
//! Pool status changes all the time on a busy cluster (the node daemons record every allocation in
//! it), and a topology's reconcile compares all its children, so waking it for each of those would
//! keep a core busy and, with a debounce, could postpone a real change for as long as the churn goes
//! on. What a reconcile compares is everything but the status, except in one case: a topology
//! refused because an edit would take allocated addresses away (`AddressesInUse`) must retry as soon
//! as addresses are released, which is a status change. So a pool event wakes the controller when the
//! pool changed apart from its status, or when its topology is waiting for addresses.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use kube::Resource;

/// A fingerprint of what a reconcile compares of a child: its generation (the API server bumps it on
/// every spec change of a kind with a status subresource) and the metadata that is not versioned
/// by the generation (labels, annotations, owners, deletion). Only compared within one process, so
/// the hasher need not be stable across versions; a collision would only delay a repair until the
/// periodic resync.
pub fn fingerprint<K: Resource>(object: &K) -> u64 {
    let meta = object.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    for owner in meta.owner_references.iter().flatten() {
        owner.uid.hash(&mut hasher);
        owner.kind.hash(&mut hasher);
        owner.name.hash(&mut hasher);
        owner.controller.hash(&mut hasher);
        owner.block_owner_deletion.hash(&mut hasher);
    }
    hasher.finish()
}

/// The last fingerprint seen of each child of one kind.
#[derive(Debug, Default)]
pub struct SeenChildren {
    fingerprints: HashMap<String, u64>,
}

impl SeenChildren {
    /// Records this version of a child; whether it differs from the previous one in anything but its
    /// status (a child not seen before counts as changed).
    pub fn changed_apart_from_status<K: Resource>(&mut self, object: &K) -> bool {
        let name = object.meta().name.clone().unwrap_or_default();
        let print = fingerprint(object);
        self.fingerprints.insert(name, print) != Some(print)
    }

    /// Forgets a deleted child.
    pub fn forget(&mut self, name: &str) {
        self.fingerprints.remove(name);
    }

    /// Forgets every child for which `exists` says no (after a relist: deletions missed while the
    /// watch was down).
    pub fn retain(&mut self, mut exists: impl FnMut(&str) -> bool) {
        self.fingerprints.retain(|name, _| exists(name));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use spiderpool_schema::{SpiderIPPool, SpiderIPPoolSpec, SpiderIPPoolStatus};

    use super::*;

    fn pool() -> SpiderIPPool {
        let mut pool = SpiderIPPool::new("p", SpiderIPPoolSpec::default());
        pool.metadata.generation = Some(1);
        pool.metadata.labels = Some(BTreeMap::from([("a".to_string(), "1".to_string())]));
        pool
    }

    #[test]
    fn status_changes_are_not_changes() {
        let mut seen = SeenChildren::default();
        let mut pool = pool();
        assert!(seen.changed_apart_from_status(&pool), "first sight");
        assert!(!seen.changed_apart_from_status(&pool), "same again");
        pool.status = Some(SpiderIPPoolStatus {
            allocated_ip_count: Some(3),
            ..SpiderIPPoolStatus::default()
        });
        pool.metadata.resource_version = Some("99".into());
        assert!(!seen.changed_apart_from_status(&pool));
    }

    #[test]
    fn spec_and_metadata_edits_are_changes() {
        let mut seen = SeenChildren::default();
        let original = pool();
        seen.changed_apart_from_status(&original);

        let mut spec_edit = original.clone();
        spec_edit.metadata.generation = Some(2);
        assert!(seen.changed_apart_from_status(&spec_edit));

        let mut label_edit = spec_edit.clone();
        label_edit.metadata.labels = Some(BTreeMap::new());
        assert!(seen.changed_apart_from_status(&label_edit));

        let mut annotated = label_edit.clone();
        annotated.metadata.annotations = Some(BTreeMap::from([("x".to_string(), "y".to_string())]));
        assert!(seen.changed_apart_from_status(&annotated));

        let mut disowned = annotated.clone();
        disowned.metadata.owner_references = Some(Vec::new());
        // An empty owner list and none are the same to a reconcile.
        assert!(!seen.changed_apart_from_status(&disowned));
    }

    #[test]
    fn forgotten_children_count_as_new() {
        let mut seen = SeenChildren::default();
        let pool = pool();
        seen.changed_apart_from_status(&pool);
        seen.forget("p");
        assert!(seen.changed_apart_from_status(&pool));
        seen.retain(|_| false);
        assert!(seen.changed_apart_from_status(&pool));
    }
}
