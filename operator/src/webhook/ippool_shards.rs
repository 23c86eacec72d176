//! SpiderIPPool admission rules for shards ([`spiderpool_schema::shards`]): a pool's shard size must
//! be in range and make at most so many shards; a pool's shards are a function of its addresses, so
//! a pool served through shards cannot change its addresses, and a pool cannot start or stop being
//! served through shards once it may hold addresses; a shard must belong to a pool that exists and
//! hold only that pool's addresses.

use kube::ResourceExt;
use spiderpool_schema::shards::{self, ANNOTATION_SHARD_SIZE};
use spiderpool_schema::{Problems, SpiderIPPool};

use super::Snapshot;
use super::ippool::AddressBlock;

const SIZE_FIELD: &str = "metadata.annotations[spiderpool.spidernet.io/shard-size]";
const SHARD_OF_FIELD: &str = "metadata.labels[spiderpool.spidernet.io/shard-of]";

/// Every problem with the pool's shard annotation and shard label (`old`: the stored pool on update;
/// `addresses_changed`: whether `ips` or `excludeIPs` hold other addresses than before).
pub(crate) fn shard_rules(
    problems: &mut Problems,
    pool: &SpiderIPPool,
    old: Option<&SpiderIPPool>,
    block: Option<&AddressBlock>,
    addresses_changed: bool,
    snapshot: &Snapshot,
) {
    if let Some(size) = shards::shard_size(&pool.metadata) {
        match size {
            Err(e) => problems.push(SIZE_FIELD, without_field(&e.to_string())),
            Ok(size) => {
                if let Some(block) = block
                    && let Err(e) = shards::slices(&block.usable(), size)
                {
                    problems.push(SIZE_FIELD, without_field(&e.to_string()));
                }
            }
        }
        if shards::shard_of(pool).is_some() {
            problems.push(SIZE_FIELD, "a shard cannot itself be served through shards");
        }
    }
    if let Some(old) = old {
        update_rules(problems, pool, old, addresses_changed);
    }
    if let Some(parent_uid) = shards::shard_of(pool) {
        belongs_to_its_pool(problems, pool, parent_uid, block, snapshot);
    }
}

fn update_rules(problems: &mut Problems, pool: &SpiderIPPool, old: &SpiderIPPool, addresses_changed: bool) {
    let size_of = |p: &SpiderIPPool| p.annotations().get(ANNOTATION_SHARD_SIZE).cloned();
    let (before, after) = (size_of(old), size_of(pool));
    match (&before, &after) {
        (Some(b), a) if a.as_ref() != Some(b) => problems.push(
            SIZE_FIELD,
            format!(
                "cannot change or be removed (it is `{b}`): the pool's shards may hold addresses; delete the pool and make it again instead"
            ),
        ),
        (None, Some(_)) if holds_addresses(old) => problems.push(
            SIZE_FIELD,
            "cannot be added to a pool that holds addresses: they would be served twice; add it to a new pool instead",
        ),
        _ => {}
    }
    if before.is_some() && addresses_changed {
        problems.push(
            "spec.ips",
            "cannot change on a pool served through shards (its shards are cut from its addresses); make another pool instead",
        );
    }
    if shards::shard_of(old) != shards::shard_of(pool) {
        problems.push(SHARD_OF_FIELD, "is set when a shard is made and cannot change");
    }
}

/// Whether the stored pool records any address (or its records cannot be read, which counts as yes).
fn holds_addresses(pool: &SpiderIPPool) -> bool {
    pool.status
        .as_ref()
        .is_some_and(|s| s.allocations().map_or(true, |records| !records.is_empty()))
}

/// A shard names, by UID, a pool that exists, asks for shards, controls it, and holds all its
/// addresses.
fn belongs_to_its_pool(
    problems: &mut Problems,
    pool: &SpiderIPPool,
    parent_uid: &str,
    block: Option<&AddressBlock>,
    snapshot: &Snapshot,
) {
    let controller = pool
        .owner_references()
        .iter()
        .find(|r| r.controller == Some(true) && r.kind == "SpiderIPPool" && r.uid == parent_uid);
    let Some(controller) = controller else {
        problems.push(
            SHARD_OF_FIELD,
            format!("a shard must be controlled by the SpiderIPPool with UID {parent_uid} (metadata.ownerReferences)"),
        );
        return;
    };
    let parent = snapshot
        .pools
        .iter()
        .find(|p| p.metadata.uid.as_deref() == Some(parent_uid) && p.name_any() == controller.name);
    let Some(parent) = parent else {
        problems.push(
            SHARD_OF_FIELD,
            format!(
                "SpiderIPPool {} with UID {parent_uid} does not exist",
                controller.name
            ),
        );
        return;
    };
    if !shards::is_sharded(&parent.metadata) {
        problems.push(
            SHARD_OF_FIELD,
            format!("SpiderIPPool {} is not served through shards", controller.name),
        );
    }
    let parent_block = AddressBlock::parse(&parent.spec.subnet, &parent.spec.ips, &parent.spec.exclude_ips);
    if let (Some(block), Some(parent_block)) = (block, parent_block)
        && (block.net != parent_block.net || !block.usable().is_subset_of(&parent_block.usable()))
    {
        problems.push(
            "spec.ips",
            format!(
                "a shard holds only addresses of its pool {} (subnet {})",
                controller.name, parent.spec.subnet
            ),
        );
    }
}

/// A [`shards::ShardError`]'s text without its field path (the problem carries it).
fn without_field(text: &str) -> String {
    text.strip_prefix(SIZE_FIELD)
        .map(|rest| rest.trim_start_matches(':').trim().to_owned())
        .unwrap_or_else(|| text.to_owned())
}

/// Whether `a` and `b` are a pool and one of its own shards (which hold its addresses by design).
pub(crate) fn pool_and_own_shard(a: &SpiderIPPool, b: &SpiderIPPool) -> bool {
    let is_shard_of = |shard: &SpiderIPPool, pool: &SpiderIPPool| {
        shards::shard_of(shard).is_some_and(|uid| pool.metadata.uid.as_deref() == Some(uid))
    };
    is_shard_of(a, b) || is_shard_of(b, a)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::json;
    use spiderpool_schema::Problem;
    use spiderpool_schema::ippool::PoolIPAllocation;

    use spiderpool_schema::shards::LABEL_SHARD_OF;

    use super::super::{Change, ippool};
    use super::*;

    fn pool(name: &str, ips: &[&str], size: Option<&str>) -> SpiderIPPool {
        let mut p: SpiderIPPool = serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
            "metadata": {"name": name, "uid": format!("uid-{name}")},
            "spec": {"subnet": "10.8.0.0/16", "ips": ips},
        }))
        .unwrap();
        if let Some(size) = size {
            p.annotations_mut()
                .insert(ANNOTATION_SHARD_SIZE.into(), size.into());
        }
        p
    }

    fn shard_of(parent: &SpiderIPPool, name: &str, ips: &[&str]) -> SpiderIPPool {
        let mut s = pool(name, ips, None);
        s.labels_mut()
            .insert(LABEL_SHARD_OF.into(), parent.metadata.uid.clone().unwrap());
        s.owner_references_mut().push(OwnerReference {
            api_version: "spiderpool.spidernet.io/v2beta1".into(),
            kind: "SpiderIPPool".into(),
            name: parent.name_any(),
            uid: parent.metadata.uid.clone().unwrap(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        });
        s
    }

    fn holding(mut p: SpiderIPPool, ip: &str) -> SpiderIPPool {
        let records = [(ip.to_owned(), PoolIPAllocation::held_by("ns/a", "u1"))].into();
        let mut status = spiderpool_schema::SpiderIPPoolStatus::default();
        status.set_allocations(&records).unwrap();
        p.status = Some(status);
        p
    }

    fn messages(problems: &[Problem]) -> Vec<String> {
        problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect()
    }

    fn snapshot(pools: &[&SpiderIPPool]) -> Snapshot {
        Snapshot {
            pools: pools.iter().map(|p| (*p).clone()).collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_bad_shard_size_is_refused_naming_the_annotation() {
        for (size, why) in [
            ("lots", "not a whole number"),
            ("8", "not a whole number"),
            ("16", "more than 256"),
        ] {
            let p = pool("big", &["10.8.0.0-10.8.31.255"], Some(size));
            let found = messages(&ippool::validate(Change::Create(&p), &snapshot(&[])));
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(
                found[0].starts_with(SIZE_FIELD) && found[0].contains(why),
                "{found:?}"
            );
        }
        let p = pool("big", &["10.8.0.0-10.8.31.255"], Some("4096"));
        assert!(ippool::validate(Change::Create(&p), &snapshot(&[])).is_empty());
    }

    #[test]
    fn a_sharded_pool_keeps_its_addresses_and_its_size() {
        let old = pool("big", &["10.8.0.0-10.8.31.255"], Some("4096"));
        let grown = pool("big", &["10.8.0.0-10.8.63.255"], Some("4096"));
        let found = messages(&ippool::validate(
            Change::Update {
                old: &old,
                new: &grown,
            },
            &snapshot(&[]),
        ));
        assert!(
            found
                .iter()
                .any(|m| m.starts_with("spec.ips: cannot change on a pool served through shards")),
            "{found:?}"
        );
        for size in [Some("2048"), None] {
            let new = pool("big", &["10.8.0.0-10.8.31.255"], size);
            let found = messages(&ippool::validate(
                Change::Update { old: &old, new: &new },
                &snapshot(&[]),
            ));
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(found[0].contains("cannot change or be removed"), "{found:?}");
        }
        // Other edits of a sharded pool go through.
        let mut edited = old.clone();
        edited.spec.multus_name = vec!["kube-system/macvlan".into()];
        assert!(
            ippool::validate(
                Change::Update {
                    old: &old,
                    new: &edited
                },
                &snapshot(&[])
            )
            .is_empty()
        );
    }

    #[test]
    fn sharding_is_asked_for_only_before_the_pool_holds_addresses() {
        let plain = pool("big", &["10.8.0.0-10.8.31.255"], None);
        let asks = pool("big", &["10.8.0.0-10.8.31.255"], Some("4096"));
        assert!(
            ippool::validate(
                Change::Update {
                    old: &plain,
                    new: &asks
                },
                &snapshot(&[])
            )
            .is_empty()
        );
        let used = holding(plain, "10.8.0.7");
        let found = messages(&ippool::validate(
            Change::Update {
                old: &used,
                new: &asks,
            },
            &snapshot(&[]),
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("cannot be added to a pool that holds addresses"),
            "{found:?}"
        );
    }

    #[test]
    fn a_shard_holds_only_its_own_pools_addresses_and_may_overlap_only_that_pool() {
        let parent = pool("big", &["10.8.0.0-10.8.31.255"], Some("4096"));
        let other = pool("other", &["10.8.64.0-10.8.64.255"], None);
        let good = shard_of(&parent, "big-shard-0", &["10.8.0.0-10.8.15.255"]);
        let snap = snapshot(&[&parent, &other]);
        assert!(ippool::validate(Change::Create(&good), &snap).is_empty());
        // Outside its pool (and overlapping another pool).
        let outside = shard_of(&parent, "big-shard-1", &["10.8.64.0-10.8.64.9"]);
        let found = messages(&ippool::validate(Change::Create(&outside), &snap));
        assert!(
            found
                .iter()
                .any(|m| m.contains("a shard holds only addresses of its pool big")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|m| m.contains("also belong to SpiderIPPool other")),
            "{found:?}"
        );
        // Two shards of one pool must not share addresses.
        let twin = shard_of(&parent, "big-shard-1", &["10.8.15.0-10.8.16.0"]);
        let found = messages(&ippool::validate(
            Change::Create(&twin),
            &snapshot(&[&parent, &good]),
        ));
        assert!(
            found
                .iter()
                .any(|m| m.contains("also belong to SpiderIPPool big-shard-0")),
            "{found:?}"
        );
        // A pool that is not sharded, or not there, has no shards.
        let stray = shard_of(&other, "other-shard-0", &["10.8.64.0-10.8.64.9"]);
        let found = messages(&ippool::validate(Change::Create(&stray), &snap));
        assert!(
            found
                .iter()
                .any(|m| m.contains("SpiderIPPool other is not served through shards")),
            "{found:?}"
        );
        let found = messages(&ippool::validate(Change::Create(&good), &snapshot(&[&other])));
        assert!(
            found
                .iter()
                .any(|m| m.contains("with UID uid-big does not exist")),
            "{found:?}"
        );
        // A shard's label cannot come or go after it is made.
        let mut unlabelled = good.clone();
        unlabelled.labels_mut().remove(LABEL_SHARD_OF);
        let found = messages(&ippool::validate(
            Change::Update {
                old: &good,
                new: &unlabelled,
            },
            &snap,
        ));
        assert!(found.iter().any(|m| m.starts_with(SHARD_OF_FIELD)), "{found:?}");
    }
}
