//! The pure diff on children stamped by the controller's own code, with "the API server" played by
//! [`applied`]: the object as sent plus server metadata and a default, as a dry-run apply returns it.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, OwnerReference, Time};
use serde_json::json;
use spiderpool_schema::ippool::PoolIPAllocation;
use spiderpool_schema::labels::{LABEL_MANAGED_BY, LABEL_TOPOLOGY, MANAGED_BY};
use spiderpool_schema::{
    SpiderIPPool, SpiderIPPoolSpec, SpiderIPPoolStatus, SpiderMultusConfig, SpiderMultusConfigSpec,
};

use super::*;
use crate::compile::Rendered;
use crate::controller::network::desired_children;
use crate::controller::network::plan::{ChildObject, LiveObject};

const TOPOLOGY: &str = "lab";

fn labels(topology: &str) -> Option<BTreeMap<String, String>> {
    Some(BTreeMap::from([
        (LABEL_TOPOLOGY.to_string(), topology.to_string()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
    ]))
}

fn pool(name: &str, ips: &[&str]) -> SpiderIPPool {
    let mut pool = SpiderIPPool::new(
        name,
        SpiderIPPoolSpec {
            subnet: "10.0.0.0/24".into(),
            ips: ips.iter().map(|s| s.to_string()).collect(),
            gateway: Some("10.0.0.1".into()),
            ..SpiderIPPoolSpec::default()
        },
    );
    pool.metadata.labels = labels(TOPOLOGY);
    pool
}

fn multus(namespace: &str, name: &str) -> SpiderMultusConfig {
    let mut config = SpiderMultusConfig::new(
        name,
        SpiderMultusConfigSpec {
            cni_type: Some("macvlan".into()),
            ..SpiderMultusConfigSpec::default()
        },
    );
    config.metadata.namespace = Some(namespace.into());
    config.metadata.labels = labels(TOPOLOGY);
    config
}

fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "spiderpool.spidernet.io/v2beta1".into(),
        kind: "SpiderNetwork".into(),
        name: TOPOLOGY.into(),
        uid: "uid-lab".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The children as the controller would apply them.
fn desired(pools: Vec<SpiderIPPool>, configs: Vec<SpiderMultusConfig>) -> Vec<DesiredChild> {
    let rendered = Rendered {
        ip_pools: pools,
        multus_configs: configs,
        ..Rendered::default()
    };
    desired_children(rendered, Vec::new(), &owner()).unwrap()
}

/// What the API server holds after applying `child` (or returns from a dry-run apply of it): server
/// metadata, the CRD's default for `spec.default`, and the given resourceVersion.
fn applied(child: &DesiredChild, rv: u64) -> LiveObject {
    let mut object = child.object.clone();
    let meta = object.meta_mut();
    meta.uid = Some(format!("uid-{}", child.key.name));
    meta.resource_version = Some(rv.to_string());
    meta.generation = Some(i64::try_from(rv).unwrap());
    meta.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    meta.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some("spiderpool-operator/network".into()),
        ..ManagedFieldsEntry::default()
    }]);
    match object {
        ChildObject::ReservedIp(o) => LiveObject::ReservedIp(Arc::new(*o)),
        ChildObject::IpPool(mut o) => {
            o.spec.default = Some(false);
            LiveObject::IpPool(Arc::new(*o))
        }
        ChildObject::MultusConfig(o) => LiveObject::MultusConfig(Arc::new(*o)),
        ChildObject::InterfaceTask(o) => LiveObject::InterfaceTask(Arc::new(*o)),
    }
}

fn live_of(objects: impl IntoIterator<Item = LiveObject>) -> BTreeMap<ChildKey, LiveObject> {
    objects.into_iter().map(|o| (o.key(), o)).collect()
}

/// `object` with pods holding `ips` (and the count the IPAM writes next to them).
fn in_use(object: LiveObject, ips: &[&str]) -> LiveObject {
    let LiveObject::IpPool(pool) = object else {
        unreachable!("pools only")
    };
    let mut pool = pool.as_ref().clone();
    let map: BTreeMap<String, PoolIPAllocation> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            (
                ip.to_string(),
                PoolIPAllocation::held_by(format!("apps/db-{i}"), "u"),
            )
        })
        .collect();
    let mut status = SpiderIPPoolStatus::default();
    status.set_allocations(&map).unwrap();
    status.allocated_ip_count = Some(ips.len() as i64);
    pool.status = Some(status);
    LiveObject::IpPool(Arc::new(pool))
}

/// Plays the API server: every pending child that replaces a live object answered as applied,
/// keeping the live status.
fn answer(classified: &Classified) -> Vec<LiveObject> {
    classified
        .pending
        .iter()
        .filter(|p| p.live.is_some())
        .map(|p| {
            let answer = applied(&p.child, 100);
            match (answer, &p.live) {
                (LiveObject::IpPool(after), Some(LiveObject::IpPool(live))) => {
                    let mut after = after.as_ref().clone();
                    after.status = live.status.clone();
                    LiveObject::IpPool(Arc::new(after))
                }
                (answer, _) => answer,
            }
        })
        .collect()
}

fn run(desired: Vec<DesiredChild>, live: &BTreeMap<ChildKey, LiveObject>) -> TopologyDiff {
    let classified = classify(TOPOLOGY, desired, live);
    let answers = answer(&classified);
    assemble(TOPOLOGY, "lab.yaml: document 1", None, classified, answers)
}

#[test]
fn children_as_rendered_need_no_dry_run_and_are_no_change() {
    let children = desired(
        vec![pool("lab-r1-v4", &["10.0.0.10-10.0.0.20"])],
        vec![multus("apps", "frontend")],
    );
    let live = live_of(children.iter().map(|c| applied(c, 5)));
    let classified = classify(TOPOLOGY, children.clone(), &live);
    assert!(classified.pending.is_empty(), "{:?}", classified.pending);
    assert_eq!(classified.unchanged, 2);
    let diff = run(children, &live);
    assert!(!diff.has_changes(), "{diff:?}");
    assert_eq!(format::report(&diff), "");
    assert_eq!(
        format::summary(&diff),
        "SpiderNetwork lab: no changes (2 children as rendered)\n"
    );
}

#[test]
fn missing_children_are_created() {
    let children = desired(vec![pool("lab-r1-v4", &["10.0.0.10-10.0.0.20"])], Vec::new());
    let diff = run(children, &BTreeMap::new());
    assert_eq!(
        diff.children,
        vec![ObjectChange {
            id: "SpiderIPPool lab-r1-v4".into(),
            change: Change::Create
        }]
    );
}

#[test]
fn a_changed_child_lists_its_fields_without_server_metadata() {
    let old = desired(vec![pool("lab-r1-v4", &["10.0.0.10-10.0.0.20"])], Vec::new());
    let new = desired(vec![pool("lab-r1-v4", &["10.0.0.10-10.0.0.30"])], Vec::new());
    let live = live_of([applied(&old[0], 5)]);
    let diff = run(new, &live);
    // resourceVersion, generation, managedFields differ between the two; the stamp too, but it is
    // not the only difference.
    assert_eq!(
        diff.children,
        vec![ObjectChange {
            id: "SpiderIPPool lab-r1-v4".into(),
            change: Change::Update(vec![FieldChange {
                path: "spec.ips[0]".into(),
                old: Some(json!("10.0.0.10-10.0.0.20")),
                new: Some(json!("10.0.0.10-10.0.0.30")),
            }])
        }]
    );
    assert!(diff.addresses.is_empty());
}

#[test]
fn a_hand_edit_is_a_change_back_to_the_rendering() {
    let children = desired(vec![pool("lab-r1-v4", &["10.0.0.10-10.0.0.20"])], Vec::new());
    let LiveObject::IpPool(live_pool) = applied(&children[0], 5) else {
        unreachable!()
    };
    let mut edited = live_pool.as_ref().clone();
    edited.spec.gateway = Some("10.0.0.254".into());
    let diff = run(children, &live_of([LiveObject::IpPool(Arc::new(edited))]));
    let Change::Update(changes) = &diff.children[0].change else {
        panic!("{diff:?}")
    };
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].path, "spec.gateway");
    assert_eq!(changes[0].old, Some(json!("10.0.0.254")));
}

#[test]
fn only_the_topologys_own_children_are_pruned() {
    let kept = desired(vec![pool("lab-r1-v4", &["10.0.0.10-10.0.0.20"])], Vec::new());
    let gone = desired(
        vec![pool("lab-r2-v4", &["10.0.0.30-10.0.0.40"])],
        vec![multus("apps", "backend")],
    );
    let mut foreign = pool("other-r1-v4", &["10.0.0.50"]);
    foreign.metadata.labels = labels("other");
    let unlabelled = SpiderIPPool::new("by-hand", SpiderIPPoolSpec::default());
    let live = live_of(kept.iter().chain(&gone).map(|c| applied(c, 5)).chain([
        LiveObject::IpPool(Arc::new(foreign)),
        LiveObject::IpPool(Arc::new(unlabelled)),
    ]));
    let diff = run(kept, &live);
    let ids: Vec<(&str, &Change)> = diff.children.iter().map(|c| (c.id.as_str(), &c.change)).collect();
    assert_eq!(
        ids,
        vec![
            ("SpiderIPPool lab-r2-v4", &Change::Prune),
            ("SpiderMultusConfig apps/backend", &Change::Prune),
        ]
    );
    assert_eq!(diff.unchanged, 1);
}

#[test]
fn objects_of_others_are_conflicts_and_deletions_wait() {
    let children = desired(
        vec![
            pool("lab-r1-v4", &["10.0.0.10-10.0.0.20"]),
            pool("lab-r2-v4", &["10.0.0.30-10.0.0.40"]),
        ],
        Vec::new(),
    );
    let mut theirs = pool("lab-r1-v4", &["10.0.0.10-10.0.0.20"]);
    theirs.metadata.labels = labels("other");
    let LiveObject::IpPool(going) = applied(&children[1], 5) else {
        unreachable!()
    };
    let mut going = going.as_ref().clone();
    going.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    let live = live_of([
        LiveObject::IpPool(Arc::new(theirs)),
        LiveObject::IpPool(Arc::new(going)),
    ]);
    let classified = classify(TOPOLOGY, children.clone(), &live);
    assert!(classified.pending.is_empty());
    let diff = run(children, &live);
    assert_eq!(
        diff.children[0].change,
        Change::Conflict("it belongs to SpiderNetwork `other`".into())
    );
    assert_eq!(diff.children[1].change, Change::Terminating);
}

#[test]
fn allocated_addresses_that_would_move_are_found() {
    let old = desired(
        vec![
            pool("lab-r1-v4", &["10.0.0.10-10.0.0.20"]),
            pool("lab-r2-v4", &["10.0.0.30-10.0.0.40"]),
            pool("lab-r3-v4", &["10.0.0.50-10.0.0.60"]),
        ],
        Vec::new(),
    );
    let mut r3 = pool("lab-r3-v4", &["10.0.0.50-10.0.0.60"]);
    r3.spec.gateway = Some("10.0.0.254".into());
    let new = desired(vec![pool("lab-r1-v4", &["10.0.0.10-10.0.0.15"]), r3], Vec::new());
    let live = live_of([
        in_use(applied(&old[0], 5), &["10.0.0.12", "10.0.0.18"]),
        in_use(applied(&old[1], 5), &["10.0.0.31"]),
        in_use(applied(&old[2], 5), &["10.0.0.55"]),
    ]);
    let diff = run(new, &live);
    assert!(diff.refused());
    assert_eq!(
        diff.addresses,
        vec![
            AddressFinding::Dropped {
                pool: "lab-r1-v4".into(),
                addresses: vec![("10.0.0.18".into(), "pod apps/db-1".into())],
            },
            AddressFinding::PrunedInUse {
                pool: "lab-r2-v4".into(),
                allocated: vec![("10.0.0.31".into(), "pod apps/db-0".into())],
                count: 1,
            },
            AddressFinding::ChangedInUse {
                pool: "lab-r3-v4".into(),
                count: 1,
                fields: vec!["spec.gateway".into()],
            },
        ]
    );
}

#[test]
fn the_spidernetwork_is_created_or_its_spec_compared() {
    let live = json!({"metadata": {"name": "lab", "resourceVersion": "3"},
                      "spec": {"racks": [{"name": "r1"}], "capacityThresholdPercent": 90},
                      "status": {"observedGeneration": 3}});
    let same = json!({"metadata": {"name": "lab", "resourceVersion": "4"},
                      "spec": {"racks": [{"name": "r1"}], "capacityThresholdPercent": 90}});
    assert_eq!(network_change(None, &same), Some(Change::Create));
    assert_eq!(network_change(Some(&live), &same), None);
    let edited = json!({"spec": {"racks": [{"name": "r2"}], "capacityThresholdPercent": 90}});
    assert_eq!(
        network_change(Some(&live), &edited),
        Some(Change::Update(vec![FieldChange {
            path: "spec.racks[0].name".into(),
            old: Some(json!("r1")),
            new: Some(json!("r2")),
        }]))
    );
}

/// The printed report of a change with every kind of line.
#[test]
fn the_report_reads_like_a_review() {
    let old = desired(
        vec![
            pool("lab-r1-v4", &["10.0.0.10-10.0.0.20"]),
            pool("lab-r2-v4", &["10.0.0.30-10.0.0.40"]),
            pool("lab-r3-v4", &["10.0.0.50-10.0.0.60"]),
        ],
        vec![multus("apps", "frontend"), multus("apps", "backend")],
    );
    let mut r3 = pool("lab-r3-v4", &["10.0.0.50-10.0.0.60"]);
    r3.spec.gateway = Some("10.0.0.254".into());
    let new = desired(
        vec![
            pool("lab-r1-v4", &["10.0.0.10-10.0.0.15"]),
            r3,
            pool("lab-r4-v4", &["10.0.0.70-10.0.0.80"]),
            pool("lab-r5-v4", &["10.0.0.90-10.0.0.99"]),
        ],
        vec![multus("apps", "frontend")],
    );
    let mut theirs = pool("lab-r5-v4", &["10.0.0.90-10.0.0.99"]);
    theirs.metadata.labels = None;
    let live = live_of([
        in_use(applied(&old[0], 5), &["10.0.0.12", "10.0.0.18", "10.0.0.19"]),
        in_use(applied(&old[1], 5), &["10.0.0.31"]),
        in_use(applied(&old[2], 5), &["10.0.0.55"]),
        applied(&old[3], 5),
        applied(&old[4], 5),
        LiveObject::IpPool(Arc::new(theirs)),
    ]);
    let classified = classify(TOPOLOGY, new, &live);
    let answers = answer(&classified);
    let network = network_change(
        Some(&json!({"spec": {"apps": [{"name": "db", "fixedIPs": {"count": 3}}]}})),
        &json!({"spec": {"apps": [{"name": "db", "fixedIPs": {"count": 2}}]}}),
    );
    let diff = assemble(TOPOLOGY, "lab.yaml: document 1", network, classified, answers);
    let text = format!("{}--- stderr\n{}", format::report(&diff), format::summary(&diff));
    insta::assert_snapshot!(text);
}
