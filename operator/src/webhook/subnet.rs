//! SpiderSubnet admission (upstream's subnet webhook, section 2.2 of the reference).
//!
//! Mutation: the finalizer, `ipVersion` from `subnet`, the `ipam.spidernet.io/subnet-cidr` label;
//! `ips`/`excludeIPs` are kept as written (see the pool webhook). Validation: the spec rules; subnets must not overlap each other; a subnet
//! must not overlap a pool with a different CIDR; the pools of its CIDR must keep all their addresses
//! inside it (on create: the pools already there; on update: the addresses they use cannot be removed);
//! immutable fields; no spec change while terminating.

use std::collections::BTreeMap;

use kube::ResourceExt;
use spiderpool_ipmath::{self as ipmath, IpFamily, IpSet};
use spiderpool_schema::validation::Validate;
use spiderpool_schema::{Problem, Problems, SpiderSubnet};

use super::ippool::{AddressBlock, same_addresses};
use super::{
    Change, Decision, LABEL_OWNER_SUBNET, LABEL_SUBNET_CIDR, PatchError, Snapshot, brief_list,
    ensure_finalizer, is_label_value, patch_between,
};

/// The subnet as the mutating webhook stores it.
pub fn mutate(subnet: &SpiderSubnet) -> SpiderSubnet {
    let mut out = subnet.clone();
    ensure_finalizer(&mut out.metadata);
    if let Ok(net) = ipmath::parse_canonical_cidr(&subnet.spec.subnet) {
        let family = IpFamily::of_net(&net);
        out.spec.ip_version.get_or_insert(family.as_version());
        let label = ipmath::cidr_label_value(&net);
        if is_label_value(&label) {
            out.labels_mut().insert(LABEL_SUBNET_CIDR.to_string(), label);
        }
    }
    out
}

/// The mutating webhook's decision: always allowed, with the patch [`mutate`] implies.
pub fn admit_mutation(subnet: &SpiderSubnet) -> Result<Decision, PatchError> {
    Ok(Decision {
        patch: patch_between(subnet, &mutate(subnet))?,
        ..Decision::default()
    })
}

/// Every problem the validating webhook finds with a create or update.
pub fn validate(change: Change<'_, SpiderSubnet>, snapshot: &Snapshot) -> Vec<Problem> {
    let subnet = change.object();
    let mut problems = Problems::new();
    problems.extend(subnet.problems());
    if let Some(old) = change.old() {
        immutables(&mut problems, subnet, old);
    }
    let Some(block) = AddressBlock::parse(&subnet.spec.subnet, &subnet.spec.ips, &subnet.spec.exclude_ips)
    else {
        return problems.into_vec();
    };
    let label = ipmath::cidr_label_value(&block.net);
    if !is_label_value(&label) {
        problems.push(
            "spec.subnet",
            format!(
                "{} cannot be written as the label value `{label}` ({LABEL_SUBNET_CIDR}); use a subnet that does not start with `::`",
                block.net
            ),
        );
    }
    let name = subnet.name_any();
    match change.old() {
        None => {
            overlap_with_subnets(&mut problems, &name, &block, snapshot);
            overlap_with_pools(&mut problems, &block, snapshot);
        }
        Some(old) => {
            if !same_addresses(block.family, &old.spec.ips, &subnet.spec.ips)
                || !same_addresses(block.family, &old.spec.exclude_ips, &subnet.spec.exclude_ips)
            {
                keep_pool_addresses(&mut problems, subnet, old, &block, snapshot);
            }
        }
    }
    problems.into_vec()
}

fn immutables(problems: &mut Problems, subnet: &SpiderSubnet, old: &SpiderSubnet) {
    if old.spec.subnet != subnet.spec.subnet {
        problems.push(
            "spec.subnet",
            format!(
                "is immutable: cannot change from {} to {}; create a new subnet instead",
                old.spec.subnet, subnet.spec.subnet
            ),
        );
    }
    if let Some(before) = old.spec.ip_version
        && subnet.spec.ip_version != Some(before)
    {
        problems.push(
            "spec.ipVersion",
            format!("is immutable: cannot change from {before}"),
        );
    }
    if old.metadata.deletion_timestamp.is_some() && old.spec != subnet.spec {
        problems.push("spec", "the subnet is being deleted; its spec cannot change");
    }
}

/// Subnets must not overlap each other at all (not even with the identical CIDR: a pool of that CIDR
/// would not know which subnet it belongs to).
fn overlap_with_subnets(problems: &mut Problems, name: &str, block: &AddressBlock, snapshot: &Snapshot) {
    let overlapping: Vec<String> = snapshot
        .subnets
        .iter()
        .filter(|other| other.name_any() != name)
        .filter_map(|other| {
            let net = ipmath::parse_canonical_cidr(&other.spec.subnet).ok()?;
            (IpFamily::of_net(&net) == block.family && ipmath::nets_overlap(&net, &block.net))
                .then(|| format!("{} ({net})", other.name_any()))
        })
        .collect();
    if !overlapping.is_empty() {
        problems.push(
            "spec.subnet",
            format!(
                "{} overlaps SpiderSubnet {}; subnets must not overlap",
                block.net,
                brief_list(&overlapping)
            ),
        );
    }
}

/// On create: pools with a different but overlapping CIDR are refused, pools of the identical CIDR must
/// have all their addresses inside the new subnet.
fn overlap_with_pools(problems: &mut Problems, block: &AddressBlock, snapshot: &Snapshot) {
    let usable = block.usable();
    let mut overlapping = Vec::new();
    for pool in &snapshot.pools {
        let Some(pool_block) = AddressBlock::parse(&pool.spec.subnet, &pool.spec.ips, &[]) else {
            continue;
        };
        if pool_block.family != block.family {
            continue;
        }
        if pool_block.net != block.net {
            if ipmath::nets_overlap(&pool_block.net, &block.net) {
                overlapping.push(format!("{} ({})", pool.name_any(), pool_block.net));
            }
            continue;
        }
        let outside = pool_block.ips.difference(&usable);
        if !outside.is_empty() {
            problems.push(
                "spec.ips",
                format!(
                    "SpiderIPPool {} of this CIDR uses {}, which are not in ips (or are in excludeIPs); add them",
                    pool.name_any(),
                    brief_list(&outside.to_strings())
                ),
            );
        }
    }
    if !overlapping.is_empty() {
        problems.push(
            "spec.subnet",
            format!(
                "{} overlaps SpiderIPPool {} without being the identical CIDR",
                block.net,
                brief_list(&overlapping)
            ),
        );
    }
}

/// On update: the addresses the subnet's pools use cannot be removed or excluded. The pools are those of
/// the identical CIDR, those labelled with the subnet's name and those its status lists.
fn keep_pool_addresses(
    problems: &mut Problems,
    subnet: &SpiderSubnet,
    old: &SpiderSubnet,
    block: &AddressBlock,
    snapshot: &Snapshot,
) {
    let name = subnet.name_any();
    let mut used: BTreeMap<String, IpSet> = BTreeMap::new();
    for pool in &snapshot.pools {
        let owned = pool.labels().get(LABEL_OWNER_SUBNET) == Some(&name);
        let Some(pool_block) = AddressBlock::parse(&pool.spec.subnet, &pool.spec.ips, &[]) else {
            continue;
        };
        if owned || pool_block.net == block.net {
            used.insert(pool.name_any(), pool_block.ips);
        }
    }
    for status in [old.status.as_ref(), subnet.status.as_ref()]
        .into_iter()
        .flatten()
    {
        match status.controlled_pools() {
            Ok(pools) => {
                for (pool, pre) in pools {
                    if let Ok(set) = IpSet::parse_list(block.family, &pre.ips) {
                        let entry = used.entry(pool).or_insert_with(|| IpSet::empty(block.family));
                        if let Ok(union) = entry.union(&set) {
                            *entry = union;
                        }
                    }
                }
            }
            Err(e) => problems.push(
                "status.controlledIPPools",
                format!("cannot be decoded ({e}); the subnet's addresses cannot change until it is repaired"),
            ),
        }
    }
    let usable = block.usable();
    for (pool, ips) in used {
        let lost = ips.difference(&usable);
        if !lost.is_empty() {
            let path = if lost.difference(&block.ips).is_empty() {
                "spec.excludeIPs"
            } else {
                "spec.ips"
            };
            problems.push(
                path,
                format!(
                    "cannot remove {}: used by SpiderIPPool {pool}; shrink or delete the pool first",
                    brief_list(&lost.to_strings())
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use spiderpool_schema::SpiderIPPool;

    fn subnet(name: &str, cidr: &str, ips: &[&str]) -> SpiderSubnet {
        serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderSubnet",
            "metadata": {"name": name},
            "spec": {"subnet": cidr, "ips": ips},
        }))
        .unwrap()
    }

    fn pool(name: &str, cidr: &str, ips: &[&str]) -> SpiderIPPool {
        serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
            "metadata": {"name": name},
            "spec": {"subnet": cidr, "ips": ips},
        }))
        .unwrap()
    }

    fn paths(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn mutation_sets_version_label_finalizer_and_keeps_lists() {
        let s = subnet("s", "10.6.0.0/16", &["10.6.0.2", "10.6.0.1"]);
        let m = mutate(&s);
        assert_eq!(m.spec.ip_version, Some(4));
        assert_eq!(m.labels()[LABEL_SUBNET_CIDR], "10-6-0-0-16");
        assert_eq!(m.spec.ips, s.spec.ips);
        assert_eq!(
            m.metadata.finalizers,
            Some(vec![spiderpool_schema::FINALIZER.to_string()])
        );
        assert!(admit_mutation(&m).unwrap().patch.0.is_empty());
    }

    #[test]
    fn valid_subnet_is_admitted() {
        let s = subnet("s", "10.6.0.0/16", &["10.6.0.1-10.6.0.100"]);
        let snapshot = Snapshot {
            subnets: vec![subnet("t", "10.7.0.0/16", &[]), s.clone()],
            pools: vec![
                pool("p", "10.6.0.0/16", &["10.6.0.10"]),
                pool("q", "10.8.0.0/16", &["10.8.0.1"]),
            ],
            ..Snapshot::default()
        };
        assert_eq!(validate(Change::Create(&s), &snapshot), vec![]);
    }

    #[test]
    fn subnets_must_not_overlap_even_identically() {
        let s = subnet("s", "10.6.0.0/16", &[]);
        for other in ["10.6.0.0/16", "10.6.1.0/24", "10.0.0.0/8"] {
            let snapshot = Snapshot {
                subnets: vec![subnet("t", other, &[])],
                ..Snapshot::default()
            };
            let problems = validate(Change::Create(&s), &snapshot);
            assert_eq!(paths(&problems), vec!["spec.subnet"], "{other}");
            assert!(problems[0].message.contains("SpiderSubnet t"), "{problems:?}");
        }
    }

    #[test]
    fn existing_pools_must_fit_and_not_overlap() {
        let s = subnet("s", "10.6.0.0/16", &["10.6.0.1-10.6.0.10"]);
        let snapshot = Snapshot {
            pools: vec![
                pool("p", "10.6.0.0/16", &["10.6.0.5-10.6.0.20"]),
                pool("wide", "10.0.0.0/8", &["10.0.0.1"]),
            ],
            ..Snapshot::default()
        };
        let problems = validate(Change::Create(&s), &snapshot);
        assert_eq!(paths(&problems), vec!["spec.ips", "spec.subnet"]);
        assert!(
            problems[0].message.contains("10.6.0.11-10.6.0.20"),
            "{problems:?}"
        );
        assert!(problems[1].message.contains("wide"), "{problems:?}");
    }

    #[test]
    fn used_addresses_cannot_be_removed() {
        let old = subnet("s", "10.6.0.0/16", &["10.6.0.1-10.6.0.100"]);
        let mut labelled = pool("auto", "10.6.0.0/16", &["10.6.0.50"]);
        labelled
            .labels_mut()
            .insert(LABEL_OWNER_SUBNET.into(), "s".into());
        let snapshot = Snapshot {
            pools: vec![pool("p", "10.6.0.0/16", &["10.6.0.90-10.6.0.95"]), labelled],
            ..Snapshot::default()
        };
        let mut new = old.clone();
        new.spec.ips = vec!["10.6.0.1-10.6.0.92".into()];
        new.spec.exclude_ips = vec!["10.6.0.50".into()];
        let problems = validate(Change::Update { new: &new, old: &old }, &snapshot);
        assert_eq!(paths(&problems), vec!["spec.excludeIPs", "spec.ips"]);
        assert!(problems[0].message.contains("auto"), "{problems:?}");
        assert!(
            problems[1].message.contains("10.6.0.93-10.6.0.95") && problems[1].message.contains("p"),
            "{problems:?}"
        );

        // Growing is fine, and the subnet is not compared with itself.
        new.spec.ips = vec!["10.6.0.1-10.6.0.200".into()];
        new.spec.exclude_ips = vec![];
        let mut with_self = snapshot.clone();
        with_self.subnets.push(old.clone());
        assert_eq!(
            validate(Change::Update { new: &new, old: &old }, &with_self),
            vec![]
        );
    }

    #[test]
    fn addresses_listed_in_status_are_kept_too() {
        let mut old = subnet("s", "10.6.0.0/16", &["10.6.0.1-10.6.0.100"]);
        old.status = Some(spiderpool_schema::SpiderSubnetStatus {
            controlled_ip_pools: Some(r#"{"gone-pool":{"ips":["10.6.0.7"]}}"#.into()),
            ..Default::default()
        });
        let mut new = old.clone();
        new.spec.ips = vec!["10.6.0.10-10.6.0.100".into()];
        let problems = validate(Change::Update { new: &new, old: &old }, &Snapshot::default());
        assert_eq!(paths(&problems), vec!["spec.ips"]);
        assert!(problems[0].message.contains("gone-pool"), "{problems:?}");
    }

    #[test]
    fn immutables() {
        let old = subnet("s", "10.6.0.0/16", &[]);
        let new = subnet("s", "10.7.0.0/16", &[]);
        let problems = validate(Change::Update { new: &new, old: &old }, &Snapshot::default());
        assert_eq!(paths(&problems), vec!["spec.subnet"]);
    }
}
