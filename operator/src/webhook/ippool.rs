//! SpiderIPPool admission (upstream's pool webhook, section 2.1 of the reference).
//!
//! Mutation: the finalizer, `ipVersion` from `subnet`, the `ipam.spidernet.io/ippool-cidr` label.
//! `ips`/`excludeIPs` are kept as written (upstream merges lists of more than one entry and rewrites
//! their text, e.g. `::0` as `::`, which GitOps tools then show as drift forever); every rule compares
//! them as sets of addresses. Validation: the spec rules, overlap
//! with other pools (a different CIDR that overlaps, or the same addresses in the same CIDR), fitting
//! inside the SpiderSubnet of the same CIDR, immutable fields, no spec change while terminating, and no
//! removal of an address still allocated to a pod.

use std::collections::BTreeMap;

use kube::ResourceExt;
use spiderpool_ipmath::{self as ipmath, IpFamily, IpNet, IpSet};
use spiderpool_schema::validation::Validate;
use spiderpool_schema::{Problem, Problems, SpiderIPPool};

use super::ippool_shards;
use super::{
    Change, Decision, LABEL_IPPOOL_CIDR, PatchError, Snapshot, brief_list, ensure_finalizer, is_label_value,
    patch_between,
};

/// A pool's or subnet's addresses, parsed. `None` from [`AddressBlock::parse`] when the spec does not
/// parse; spec validation says why, and the checks against other objects are skipped.
#[derive(Debug, Clone)]
pub(crate) struct AddressBlock {
    pub net: IpNet,
    pub family: IpFamily,
    pub ips: IpSet,
    pub excluded: IpSet,
}

impl AddressBlock {
    pub(crate) fn parse(subnet: &str, ips: &[String], excluded: &[String]) -> Option<Self> {
        let net = ipmath::parse_canonical_cidr(subnet).ok()?;
        let family = IpFamily::of_net(&net);
        Some(AddressBlock {
            net,
            family,
            ips: IpSet::parse_list(family, ips).ok()?,
            excluded: IpSet::parse_list(family, excluded).ok()?,
        })
    }

    /// The addresses that may be handed out: `ips` minus `excludeIPs`.
    pub(crate) fn usable(&self) -> IpSet {
        self.ips.difference(&self.excluded)
    }
}

/// Whether two address lists hold the same addresses (written the same, or parsing to the same set):
/// lists are kept as users write them, so only a change of addresses counts as one.
pub(crate) fn same_addresses(family: IpFamily, a: &[String], b: &[String]) -> bool {
    a == b
        || matches!(
            (IpSet::parse_list(family, a), IpSet::parse_list(family, b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// The pool as the mutating webhook stores it. `snapshot.subnets` are the SpiderSubnets: a pool of a
/// subnet's CIDR is adopted by it at admission, as upstream does ([`SpiderSubnet::adopted`]).
///
/// [`SpiderSubnet::adopted`]: spiderpool_schema::SpiderSubnet::adopted
pub fn mutate(pool: &SpiderIPPool, snapshot: &Snapshot) -> SpiderIPPool {
    let mut out = pool.clone();
    ensure_finalizer(&mut out.metadata);
    if let Ok(net) = ipmath::parse_canonical_cidr(&pool.spec.subnet) {
        let family = IpFamily::of_net(&net);
        out.spec.ip_version.get_or_insert(family.as_version());
        let label = ipmath::cidr_label_value(&net);
        // A CIDR whose label form is not a valid label value is refused by validation.
        if is_label_value(&label) {
            out.labels_mut().insert(LABEL_IPPOOL_CIDR.to_string(), label);
        }
        let subnet = snapshot
            .subnets
            .iter()
            .filter(|_| pool.metadata.deletion_timestamp.is_none())
            .find(|s| ipmath::parse_canonical_cidr(&s.spec.subnet).is_ok_and(|n| n == net));
        if let Some(adopted) = subnet.and_then(|s| s.adopted(&out)) {
            out = adopted;
        }
    }
    out
}

/// The mutating webhook's decision: always allowed, with the patch [`mutate`] implies.
pub fn admit_mutation(pool: &SpiderIPPool, snapshot: &Snapshot) -> Result<Decision, PatchError> {
    Ok(Decision {
        patch: patch_between(pool, &mutate(pool, snapshot))?,
        ..Decision::default()
    })
}

/// Every problem the validating webhook finds with a create or update.
pub fn validate(change: Change<'_, SpiderIPPool>, snapshot: &Snapshot) -> Vec<Problem> {
    let pool = change.object();
    let mut problems = Problems::new();
    problems.extend(pool.problems());
    let block = AddressBlock::parse(&pool.spec.subnet, &pool.spec.ips, &pool.spec.exclude_ips);
    if let Some(old) = change.old() {
        update_rules(&mut problems, pool, old, block.as_ref());
    }
    let addresses_changed = change
        .old()
        .is_some_and(|old| addresses_differ(old, pool, block.as_ref()));
    ippool_shards::shard_rules(
        &mut problems,
        pool,
        change.old(),
        block.as_ref(),
        addresses_changed,
        snapshot,
    );
    let Some(block) = block else {
        return problems.into_vec();
    };
    let label = ipmath::cidr_label_value(&block.net);
    if !is_label_value(&label) {
        problems.push(
            "spec.subnet",
            format!(
                "{} cannot be written as the label value `{label}` ({LABEL_IPPOOL_CIDR}) that pools are selected by; use a subnet that does not start with `::`",
                block.net
            ),
        );
    }
    // Overlaps are checked when the addresses are set or change, so an unrelated edit of a pool that
    // predates the webhook is not refused for someone else's overlap.
    let addresses_changed = change
        .old()
        .is_none_or(|old| !same_addresses(block.family, &old.spec.ips, &pool.spec.ips));
    if addresses_changed {
        overlap_with_pools(&mut problems, pool, &block, snapshot);
        fit_in_subnets(&mut problems, &block, snapshot);
    }
    problems.into_vec()
}

/// Immutable fields, no change while terminating, and no removal of allocated addresses.
fn update_rules(
    problems: &mut Problems,
    pool: &SpiderIPPool,
    old: &SpiderIPPool,
    block: Option<&AddressBlock>,
) {
    if old.spec.subnet != pool.spec.subnet {
        problems.push(
            "spec.subnet",
            format!(
                "is immutable: cannot change from {} to {}; create a new pool instead",
                old.spec.subnet, pool.spec.subnet
            ),
        );
    }
    if let Some(before) = old.spec.ip_version
        && pool.spec.ip_version != Some(before)
    {
        problems.push(
            "spec.ipVersion",
            format!("is immutable: cannot change from {before}"),
        );
    }
    if old.metadata.deletion_timestamp.is_some() && old.spec != pool.spec {
        problems.push(
            "spec",
            "the pool is being deleted (it waits for its allocated addresses to be released); its spec cannot change",
        );
    }
    if !addresses_differ(old, pool, block) {
        return;
    }
    let mut allocated = BTreeMap::new();
    // A main-resource update carries the stored status in both objects; read both to be safe.
    for status in [old.status.as_ref(), pool.status.as_ref()].into_iter().flatten() {
        match status.allocations() {
            Ok(map) => allocated.extend(map),
            Err(e) => {
                problems.push(
                    "status.allocatedIPs",
                    format!(
                        "cannot be decoded ({e}); the pool's addresses cannot change until it is repaired"
                    ),
                );
                return;
            }
        }
    }
    let Some(block) = block else { return };
    let (mut removed, mut excluded) = (Vec::new(), Vec::new());
    for (ip_text, holder) in &allocated {
        let Ok(ip) = ipmath::parse_ip(ip_text) else {
            continue;
        };
        if !block.ips.contains(&ip) {
            removed.push(format!("{ip_text} ({})", holder.describe()));
        } else if block.excluded.contains(&ip) {
            excluded.push(format!("{ip_text} ({})", holder.describe()));
        }
    }
    if !removed.is_empty() {
        problems.push(
            "spec.ips",
            format!(
                "cannot remove {}: still allocated; delete the pods holding them first",
                brief_list(&removed)
            ),
        );
    }
    if !excluded.is_empty() {
        problems.push(
            "spec.excludeIPs",
            format!(
                "cannot exclude {}: still allocated; delete the pods holding them first",
                brief_list(&excluded)
            ),
        );
    }
}

/// Whether `ips` or `excludeIPs` hold other addresses in `pool` than in `old`.
fn addresses_differ(old: &SpiderIPPool, pool: &SpiderIPPool, block: Option<&AddressBlock>) -> bool {
    match block {
        Some(block) => {
            !same_addresses(block.family, &old.spec.ips, &pool.spec.ips)
                || !same_addresses(block.family, &old.spec.exclude_ips, &pool.spec.exclude_ips)
        }
        None => old.spec.ips != pool.spec.ips || old.spec.exclude_ips != pool.spec.exclude_ips,
    }
}

/// Pools of the same family must not overlap with a different CIDR; pools sharing the identical CIDR
/// must not share addresses.
fn overlap_with_pools(
    problems: &mut Problems,
    pool: &SpiderIPPool,
    block: &AddressBlock,
    snapshot: &Snapshot,
) {
    let name = pool.name_any();
    let mut overlapping = Vec::new();
    for other in &snapshot.pools {
        if other.name_any() == name || ippool_shards::pool_and_own_shard(pool, other) {
            continue;
        }
        let Ok(other_net) = ipmath::parse_canonical_cidr(&other.spec.subnet) else {
            continue;
        };
        if IpFamily::of_net(&other_net) != block.family {
            continue;
        }
        if other_net != block.net {
            if ipmath::nets_overlap(&block.net, &other_net) {
                overlapping.push(format!("{} ({other_net})", other.name_any()));
            }
        } else if let Ok(other_ips) = IpSet::parse_list(block.family, &other.spec.ips) {
            let shared = block.ips.intersection(&other_ips);
            if !shared.is_empty() {
                problems.push(
                    "spec.ips",
                    format!(
                        "{} also belong to SpiderIPPool {}; pools of the same subnet must not share addresses",
                        brief_list(&shared.to_strings()),
                        other.name_any()
                    ),
                );
            }
        }
    }
    if !overlapping.is_empty() {
        problems.push(
            "spec.subnet",
            format!(
                "{} overlaps the subnet of SpiderIPPool {}; pools may share a subnet only when it is the identical CIDR",
                block.net,
                brief_list(&overlapping)
            ),
        );
    }
}

/// A pool whose CIDR is a SpiderSubnet's takes its addresses from that subnet; a pool must not overlap a
/// SpiderSubnet with a different CIDR (the subnet webhook refuses the same the other way round).
fn fit_in_subnets(problems: &mut Problems, block: &AddressBlock, snapshot: &Snapshot) {
    for subnet in &snapshot.subnets {
        let Some(subnet_block) =
            AddressBlock::parse(&subnet.spec.subnet, &subnet.spec.ips, &subnet.spec.exclude_ips)
        else {
            continue;
        };
        if subnet_block.family != block.family {
            continue;
        }
        if subnet_block.net == block.net {
            let outside = block.ips.difference(&subnet_block.usable());
            if !outside.is_empty() {
                problems.push(
                    "spec.ips",
                    format!(
                        "{} are not among the addresses of SpiderSubnet {} (its ips minus excludeIPs); add them to the subnet first",
                        brief_list(&outside.to_strings()),
                        subnet.name_any()
                    ),
                );
            }
        } else if ipmath::nets_overlap(&block.net, &subnet_block.net) {
            problems.push(
                "spec.subnet",
                format!(
                    "{} overlaps SpiderSubnet {} ({}) without being the identical CIDR",
                    block.net,
                    subnet.name_any(),
                    subnet_block.net
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::LABEL_OWNER_SUBNET;
    use super::*;
    use serde_json::json;
    use spiderpool_schema::SpiderSubnet;
    use spiderpool_schema::ippool::PoolIPAllocation;

    fn pool(name: &str, subnet: &str, ips: &[&str]) -> SpiderIPPool {
        serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
            "metadata": {"name": name},
            "spec": {"subnet": subnet, "ips": ips},
        }))
        .unwrap()
    }

    fn subnet(name: &str, cidr: &str, ips: &[&str]) -> SpiderSubnet {
        serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderSubnet",
            "metadata": {"name": name},
            "spec": {"subnet": cidr, "ips": ips},
        }))
        .unwrap()
    }

    fn paths(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.path.as_str()).collect()
    }

    fn with_allocations(mut p: SpiderIPPool, ips: &[&str]) -> SpiderIPPool {
        let map = ips
            .iter()
            .map(|ip| (ip.to_string(), PoolIPAllocation::held_by("ns/web-0", "u1")))
            .collect();
        let mut status = spiderpool_schema::SpiderIPPoolStatus::default();
        status.set_allocations(&map).unwrap();
        p.status = Some(status);
        p
    }

    #[test]
    fn a_pool_of_a_subnets_cidr_is_adopted_at_admission() {
        let mut s = subnet("s6", "10.6.0.0/16", &["10.6.0.1-10.6.0.100"]);
        s.metadata.uid = Some("subnet-uid".into());
        s.spec.gateway = Some("10.6.0.1".into());
        let snapshot = Snapshot {
            subnets: vec![subnet("other", "10.7.0.0/16", &[]), s],
            ..Snapshot::default()
        };
        let m = mutate(&pool("p", "10.6.0.0/16", &["10.6.0.10"]), &snapshot);
        assert_eq!(m.labels()[LABEL_OWNER_SUBNET], "s6");
        let owner = &m.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("SpiderSubnet", "subnet-uid", Some(true))
        );
        assert_eq!(m.spec.gateway.as_deref(), Some("10.6.0.1"), "inherited");
        assert!(admit_mutation(&m, &snapshot).unwrap().patch.0.is_empty());

        let mut own = pool("q", "10.6.0.0/16", &["10.6.0.20"]);
        own.spec.gateway = Some("10.6.0.254".into());
        assert_eq!(
            mutate(&own, &snapshot).spec.gateway.as_deref(),
            Some("10.6.0.254"),
            "a pool's own gateway is kept"
        );
        let elsewhere = mutate(&pool("r", "10.8.0.0/16", &["10.8.0.1"]), &snapshot);
        assert!(elsewhere.owner_references().is_empty());
    }

    #[test]
    fn lists_compare_as_address_sets() {
        let list = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let v6 = IpFamily::V6;
        assert!(same_addresses(
            v6,
            &list(&["fd00::0-fd00::2"]),
            &list(&["fd00::-fd00::2"])
        ));
        assert!(same_addresses(
            IpFamily::V4,
            &list(&["10.0.0.2", "10.0.0.1"]),
            &list(&["10.0.0.1-10.0.0.2"])
        ));
        assert!(!same_addresses(
            IpFamily::V4,
            &list(&["10.0.0.1"]),
            &list(&["10.0.0.2"])
        ));
    }

    #[test]
    fn mutation_adds_finalizer_version_label_and_keeps_lists_as_written() {
        let mut p = pool(
            "a",
            "10.6.0.0/16",
            &["10.6.0.12", "10.6.0.10-10.6.0.11", "10.6.0.20"],
        );
        p.spec.exclude_ips = vec!["10.6.0.11".into(), "10.6.0.10".into()];
        let m = mutate(&p, &Snapshot::default());
        assert_eq!(
            m.metadata.finalizers,
            Some(vec![spiderpool_schema::FINALIZER.to_string()])
        );
        assert_eq!(m.spec.ip_version, Some(4));
        assert_eq!(m.labels()[LABEL_IPPOOL_CIDR], "10-6-0-0-16");
        assert_eq!(m.spec.ips, p.spec.ips, "what the user wrote is kept");
        assert_eq!(m.spec.exclude_ips, p.spec.exclude_ips);
        // Upstream's AWS guide writes `::0`; rewriting it as `::` made GitOps tools see drift forever.
        let v6 = pool(
            "v6",
            "2406:da1e:c4:ed01::/64",
            &["2406:da1e:c4:ed01:c57d::0-2406:da1e:c4:ed01:c57d::f"],
        );
        assert_eq!(mutate(&v6, &Snapshot::default()).spec.ips, v6.spec.ips);

        let patch = serde_json::to_value(admit_mutation(&p, &Snapshot::default()).unwrap().patch).unwrap();
        let ops: Vec<&str> = patch
            .as_array()
            .unwrap()
            .iter()
            .map(|op| op["path"].as_str().unwrap())
            .collect();
        assert!(ops.contains(&"/spec/ipVersion"), "{patch}");
        assert!(
            ops.iter().any(|p| p.starts_with("/metadata/finalizers")),
            "{patch}"
        );
        // Applying the patch to the raw object gives the mutated object.
        let mut raw = serde_json::to_value(&p).unwrap();
        json_patch::patch(&mut raw, &admit_mutation(&p, &Snapshot::default()).unwrap().patch).unwrap();
        assert_eq!(raw, serde_json::to_value(&m).unwrap());
        // Idempotent: a mutated pool needs no further patch.
        assert!(
            admit_mutation(&m, &Snapshot::default())
                .unwrap()
                .patch
                .0
                .is_empty()
        );
    }

    #[test]
    fn mutation_keeps_an_explicit_version_and_leaves_terminating_pools_without_finalizer() {
        let mut p = pool("a", "fd00:1::/64", &["fd00:1::10-fd00:1::1"]);
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Default::default(),
        ));
        let m = mutate(&p, &Snapshot::default());
        assert_eq!(m.metadata.finalizers, None);
        assert_eq!(m.spec.ip_version, Some(6));
        // Reversed range: left as written for validation to report.
        assert_eq!(m.spec.ips, vec!["fd00:1::10-fd00:1::1"]);
    }

    #[test]
    fn valid_pool_is_admitted() {
        let p = pool("a", "10.6.0.0/16", &["10.6.0.10-10.6.0.20"]);
        let others = Snapshot {
            pools: vec![
                pool("b", "10.6.0.0/16", &["10.6.0.21-10.6.0.30"]),
                pool("c", "10.7.0.0/16", &["10.7.0.1"]),
                pool("a", "10.6.0.0/16", &["10.6.0.10-10.6.0.20"]),
                pool("v6", "fd00::/8", &["fd00::1"]),
            ],
            subnets: vec![subnet("s", "10.6.0.0/16", &["10.6.0.1-10.6.0.100"])],
            ..Snapshot::default()
        };
        assert_eq!(validate(Change::Create(&p), &others), vec![]);
    }

    #[test]
    fn spec_problems_are_reported() {
        let mut p = pool("a", "10.6.0.0/16", &["10.7.0.1"]);
        p.spec.gateway = Some("10.6.0.1".into());
        p.spec.ips.push("10.6.0.1".into());
        let problems = validate(Change::Create(&p), &Snapshot::default());
        assert_eq!(paths(&problems), vec!["spec.ips", "spec.gateway"]);
        assert!(problems[0].message.contains("outside the subnet"), "{problems:?}");
    }

    #[test]
    fn overlapping_different_cidr_is_refused() {
        let p = pool("a", "10.6.0.0/16", &["10.6.0.10"]);
        let snapshot = Snapshot {
            pools: vec![pool("wide", "10.0.0.0/8", &["10.0.0.1"])],
            ..Snapshot::default()
        };
        let problems = validate(Change::Create(&p), &snapshot);
        assert_eq!(paths(&problems), vec!["spec.subnet"]);
        assert!(
            problems[0].message.contains("SpiderIPPool wide (10.0.0.0/8)"),
            "{problems:?}"
        );
    }

    #[test]
    fn shared_addresses_in_the_same_cidr_are_refused() {
        let p = pool("a", "10.6.0.0/16", &["10.6.0.10-10.6.0.20"]);
        let snapshot = Snapshot {
            pools: vec![pool("b", "10.6.0.0/16", &["10.6.0.15-10.6.0.30"])],
            ..Snapshot::default()
        };
        let problems = validate(Change::Create(&p), &snapshot);
        assert_eq!(paths(&problems), vec!["spec.ips"]);
        assert!(
            problems[0]
                .message
                .contains("10.6.0.15-10.6.0.20 also belong to SpiderIPPool b"),
            "{problems:?}"
        );
    }

    #[test]
    fn pool_must_fit_its_spider_subnet_and_not_overlap_others() {
        let p = pool("a", "10.6.0.0/16", &["10.6.0.10-10.6.0.20"]);
        let snapshot = Snapshot {
            subnets: vec![subnet("s", "10.6.0.0/16", &["10.6.0.1-10.6.0.15"])],
            ..Snapshot::default()
        };
        let problems = validate(Change::Create(&p), &snapshot);
        assert_eq!(paths(&problems), vec!["spec.ips"]);
        assert!(
            problems[0].message.contains("10.6.0.16-10.6.0.20"),
            "{problems:?}"
        );
        assert!(problems[0].message.contains("SpiderSubnet s"), "{problems:?}");

        let snapshot = Snapshot {
            subnets: vec![subnet("big", "10.0.0.0/8", &[])],
            ..Snapshot::default()
        };
        let problems = validate(Change::Create(&p), &snapshot);
        assert_eq!(paths(&problems), vec!["spec.subnet"]);
    }

    #[test]
    fn immutables_and_terminating_pools() {
        let old = pool("a", "10.6.0.0/16", &["10.6.0.10"]);
        let mut new = pool("a", "10.7.0.0/16", &["10.7.0.10"]);
        let mut old4 = old.clone();
        old4.spec.ip_version = Some(4);
        new.spec.ip_version = Some(6);
        let problems = validate(
            Change::Update {
                new: &new,
                old: &old4,
            },
            &Snapshot::default(),
        );
        assert!(paths(&problems).contains(&"spec.subnet"), "{problems:?}");
        assert!(paths(&problems).contains(&"spec.ipVersion"), "{problems:?}");

        let mut terminating = old.clone();
        terminating.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Default::default(),
        ));
        let mut changed = terminating.clone();
        changed.spec.ips = vec!["10.6.0.10-10.6.0.11".into()];
        let problems = validate(
            Change::Update {
                new: &changed,
                old: &terminating,
            },
            &Snapshot::default(),
        );
        assert_eq!(paths(&problems), vec!["spec"]);
        assert!(problems[0].message.contains("being deleted"));
        // Removing the finalizer (metadata only) is allowed.
        let mut released = terminating.clone();
        released.metadata.finalizers = None;
        assert_eq!(
            validate(
                Change::Update {
                    new: &released,
                    old: &terminating
                },
                &Snapshot::default()
            ),
            vec![]
        );
    }

    #[test]
    fn allocated_addresses_cannot_be_removed_or_excluded() {
        let old = with_allocations(
            pool("a", "10.6.0.0/16", &["10.6.0.10-10.6.0.20"]),
            &["10.6.0.12", "10.6.0.20"],
        );
        let mut new = old.clone();
        new.spec.ips = vec!["10.6.0.10-10.6.0.15".into()];
        new.spec.exclude_ips = vec!["10.6.0.12".into()];
        let problems = validate(Change::Update { new: &new, old: &old }, &Snapshot::default());
        assert_eq!(paths(&problems), vec!["spec.ips", "spec.excludeIPs"]);
        assert!(
            problems[0].message.contains("10.6.0.20 (pod ns/web-0)"),
            "{problems:?}"
        );
        assert!(problems[1].message.contains("10.6.0.12"), "{problems:?}");

        // Shrinking around the allocated addresses is fine.
        new.spec.ips = vec!["10.6.0.12".into(), "10.6.0.20".into()];
        new.spec.exclude_ips = vec![];
        assert_eq!(
            validate(Change::Update { new: &new, old: &old }, &Snapshot::default()),
            vec![]
        );
    }

    #[test]
    fn a_pool_is_not_compared_with_itself_on_update() {
        let old = pool("a", "10.6.0.0/16", &["10.6.0.10"]);
        let mut new = old.clone();
        new.spec.ips.push("10.6.0.11".into());
        let snapshot = Snapshot {
            pools: vec![old.clone()],
            ..Snapshot::default()
        };
        assert_eq!(
            validate(Change::Update { new: &new, old: &old }, &snapshot),
            vec![]
        );
    }

    #[test]
    fn cidr_without_label_form_is_refused() {
        let p = pool("a", "::/64", &["::1"]);
        let problems = validate(Change::Create(&p), &Snapshot::default());
        assert_eq!(paths(&problems), vec!["spec.subnet"]);
        assert!(
            !mutate(&p, &Snapshot::default())
                .labels()
                .contains_key(LABEL_IPPOOL_CIDR)
        );
    }
}
