use super::*;

fn pool(name: &str, version: u64, generation: i64) -> SpiderIPPool {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {
            "name": name, "uid": format!("uid-{name}"), "resourceVersion": version.to_string(),
            "generation": generation, "labels": {"rack": "a"},
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
        },
        "spec": {"subnet": "10.0.0.0/24", "ips": ["10.0.0.1-10.0.0.9"]},
        "status": {"allocatedIPCount": version}
    }))
    .unwrap()
}

fn version_of(pool: &SpiderIPPool) -> &str {
    pool.metadata.resource_version.as_deref().unwrap()
}

#[test]
fn a_status_change_alone_is_not_read_whole_and_the_whole_pool_stays_at_its_own_version() {
    let cache = PoolCache::ready_empty();
    cache.apply(pool("p", 5, 1));
    // Another node's write: the watch shows a later version of the same spec.
    assert!(!cache.show(&pool("p", 9, 1).metadata));
    assert_eq!(cache.shown("p").unwrap().version.as_deref(), Some("9"));
    assert_eq!(version_of(&cache.whole("p").unwrap()), "5");
    // A spec change, a label change, a deletion, a recreated pool: read whole.
    assert!(cache.show(&pool("p", 10, 2).metadata));
    cache.apply(pool("p", 10, 2));
    let mut relabelled = pool("p", 11, 2);
    relabelled.metadata.labels = None;
    assert!(cache.show(&relabelled.metadata));
    cache.apply(relabelled);
    let mut deleting = pool("p", 12, 2);
    deleting.metadata.labels = None;
    deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    assert!(cache.show(&deleting.metadata));
    let mut recreated = pool("p", 13, 1);
    recreated.metadata.labels = None;
    recreated.metadata.uid = Some("other".to_owned());
    cache.apply(deleting);
    assert!(cache.show(&recreated.metadata));
    // A pool the watch shows first is read whole.
    assert!(cache.show(&pool("q", 14, 1).metadata));
}

#[test]
fn an_older_offer_or_event_never_replaces_a_newer_one() {
    let cache = PoolCache::ready_empty();
    cache.apply(pool("p", 5, 1));
    cache.offer(shareable(pool("p", 8, 1)));
    assert_eq!(version_of(&cache.whole("p").unwrap()), "8");
    assert_eq!(cache.shown("p").unwrap().version.as_deref(), Some("8"));
    // The watch's event of an earlier write arrives after this node's own write returned.
    assert!(!cache.show(&pool("p", 7, 1).metadata));
    cache.offer(shareable(pool("p", 6, 1)));
    assert_eq!(cache.shown("p").unwrap().version.as_deref(), Some("8"));
    assert_eq!(version_of(&cache.whole("p").unwrap()), "8");
    // Nothing reads managedFields; the cache does not keep them.
    assert!(cache.whole("p").unwrap().metadata.managed_fields.is_none());
}

#[test]
fn a_read_offered_after_the_pool_was_deleted_does_not_bring_it_back() {
    let cache = PoolCache::ready_empty();
    cache.apply(pool("p", 5, 1));
    cache.remove("p");
    cache.offer(shareable(pool("p", 6, 1)));
    assert!(cache.whole("p").is_none() && cache.shown("p").is_none());
    assert!(cache.all().is_empty());
}

#[test]
fn a_relist_forgets_pools_it_does_not_show() {
    let cache = PoolCache::default();
    cache.apply(pool("p", 5, 1));
    cache.apply(pool("q", 6, 1));
    cache.keep_only(&["q".to_owned()]);
    assert!(cache.whole("p").is_none());
    assert_eq!(cache.all().len(), 1);
    assert!(*cache.shared.ready.borrow());
    assert!(cache.needing_whole().is_empty());
    cache.show(&pool("q", 7, 2).metadata);
    assert_eq!(cache.needing_whole(), vec!["q".to_owned()]);
}

#[test]
fn versions_compare_as_numbers_and_otherwise_any_difference_is_newer() {
    assert!(is_newer(Some("10"), Some("9")));
    assert!(!is_newer(Some("9"), Some("10")));
    assert!(!is_newer(Some("9"), Some("9")));
    assert!(is_newer(Some("b"), Some("a")) && !is_newer(Some("a"), Some("a")));
    assert!(is_newer(Some("1"), None));
}
