//! What one reconcile must write: the pure middle of the SpiderNetwork controller.
//!
//! In: the rendered children (already given owner references and hash stamps), the live children the
//! watch caches hold, and what this process wrote recently. Out: the writes, in phases, and the
//! problems that stop some or all of them. No I/O, so every rule here is unit-tested.
//!
//! Rules:
//! - Only objects labelled with this topology *and* the operator's managed-by label are ours. An object
//!   of the same kind and name that is not ours is never overwritten (a name conflict is reported).
//! - An object that already holds what we render is not written ([`super::diff`]).
//! - Safety of addresses in use: if a write would take an allocated address out of a pool (from its
//!   `ips`, or into its `excludeIPs`), or delete a pool that still has allocations, the whole plan is
//!   refused (see [`Plan::in_use`]); applying the rest could hand the address to a second pod through
//!   the pool that gains it.
//! - Order: reserved IPs first (an address is reserved before any pool could hand it out), then pools
//!   that lose addresses and stale pools (so the pools gaining those addresses never overlap them),
//!   then everything else, and stale multus configs, tasks and reserved IPs last.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use kube::api::{ApiResource, ObjectMeta};
use serde::Serialize;
use serde_json::Value;
use spiderpool_ipmath::IpSet;
use spiderpool_schema::validation::Problem;
use spiderpool_schema::{
    SpiderIPPool, SpiderIPPoolSpec, SpiderInterfaceTask, SpiderMultusConfig, SpiderReservedIP,
};

use super::diff::{self, RenderedHash};
use spiderpool_schema::labels::{LABEL_MANAGED_BY, LABEL_TOPOLOGY, MANAGED_BY};

/// The kinds a SpiderNetwork renders and the operator applies (NADs are the multus-config
/// controller's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChildKind {
    /// SpiderReservedIP (cluster-scoped).
    ReservedIp,
    /// SpiderIPPool (cluster-scoped).
    IpPool,
    /// SpiderMultusConfig (namespaced).
    MultusConfig,
    /// SpiderInterfaceTask (cluster-scoped).
    InterfaceTask,
}

impl ChildKind {
    /// The Kubernetes kind.
    pub fn kind(self) -> &'static str {
        match self {
            ChildKind::ReservedIp => "SpiderReservedIP",
            ChildKind::IpPool => "SpiderIPPool",
            ChildKind::MultusConfig => "SpiderMultusConfig",
            ChildKind::InterfaceTask => "SpiderInterfaceTask",
        }
    }

    /// Group, version and plural, for dynamic API calls.
    pub fn api_resource(self) -> ApiResource {
        match self {
            ChildKind::ReservedIp => ApiResource::erase::<SpiderReservedIP>(&()),
            ChildKind::IpPool => ApiResource::erase::<SpiderIPPool>(&()),
            ChildKind::MultusConfig => ApiResource::erase::<SpiderMultusConfig>(&()),
            ChildKind::InterfaceTask => ApiResource::erase::<SpiderInterfaceTask>(&()),
        }
    }
}

/// Which object: kind, namespace (for namespaced kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChildKey {
    /// Kind.
    pub kind: ChildKind,
    /// Namespace, for namespaced kinds.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for ChildKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind.kind(), self.name),
            None => write!(f, "{} {}", self.kind.kind(), self.name),
        }
    }
}

/// A rendered object, typed: serialized straight into the hasher and into the apply request, and
/// turned into a JSON tree only when it must be compared field by field with a live object. Boxed:
/// the kinds differ a lot in size and a topology holds thousands of these at once.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ChildObject {
    /// A SpiderReservedIP.
    ReservedIp(Box<SpiderReservedIP>),
    /// A SpiderIPPool.
    IpPool(Box<SpiderIPPool>),
    /// A SpiderMultusConfig.
    MultusConfig(Box<SpiderMultusConfig>),
    /// A SpiderInterfaceTask.
    InterfaceTask(Box<SpiderInterfaceTask>),
}

impl ChildObject {
    /// Its metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            ChildObject::ReservedIp(o) => &o.metadata,
            ChildObject::IpPool(o) => &o.metadata,
            ChildObject::MultusConfig(o) => &o.metadata,
            ChildObject::InterfaceTask(o) => &o.metadata,
        }
    }

    /// Its metadata, to give it owners and strip tracking labels.
    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            ChildObject::ReservedIp(o) => &mut o.metadata,
            ChildObject::IpPool(o) => &mut o.metadata,
            ChildObject::MultusConfig(o) => &mut o.metadata,
            ChildObject::InterfaceTask(o) => &mut o.metadata,
        }
    }

    /// Which kind it is.
    pub fn kind(&self) -> ChildKind {
        match self {
            ChildObject::ReservedIp(_) => ChildKind::ReservedIp,
            ChildObject::IpPool(_) => ChildKind::IpPool,
            ChildObject::MultusConfig(_) => ChildKind::MultusConfig,
            ChildObject::InterfaceTask(_) => ChildKind::InterfaceTask,
        }
    }

    /// Drops any status: the status belongs to whoever fills it in, never to the rendering.
    pub fn clear_status(&mut self) {
        match self {
            ChildObject::IpPool(o) => o.status = None,
            ChildObject::InterfaceTask(o) => o.status = None,
            // These kinds have no status.
            ChildObject::ReservedIp(_) | ChildObject::MultusConfig(_) => {}
        }
    }

    /// Sets [`ANNOTATION_RENDERED_HASH`](spiderpool_schema::labels::ANNOTATION_RENDERED_HASH) and returns the hash ([`diff::stamp_hash`]).
    pub fn stamp_hash(&mut self) -> Result<RenderedHash, serde_json::Error> {
        match self {
            ChildObject::ReservedIp(o) => diff::stamp_hash(o.as_mut()),
            ChildObject::IpPool(o) => diff::stamp_hash(o.as_mut()),
            ChildObject::MultusConfig(o) => diff::stamp_hash(o.as_mut()),
            ChildObject::InterfaceTask(o) => diff::stamp_hash(o.as_mut()),
        }
    }

    /// The object as a JSON tree, for [`diff::contains`].
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// One rendered child, ready to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredChild {
    /// Which object.
    pub key: ChildKey,
    /// The whole object as applied (apiVersion, kind, metadata, spec), hash annotation included.
    pub object: ChildObject,
    /// [`RenderedHash`] of the object without its hash annotation.
    pub hash: RenderedHash,
    /// Spec path the object comes from (for problems), e.g. `spec.racks[0].ranges[1]`.
    pub source: String,
    /// Addresses a pool hands out (`ips` minus `excludeIPs`); pools only.
    pub usable: Option<IpSet>,
}

/// A live child from a watch cache.
#[derive(Clone, Debug)]
pub enum LiveObject {
    /// A SpiderReservedIP.
    ReservedIp(Arc<SpiderReservedIP>),
    /// A SpiderIPPool.
    IpPool(Arc<SpiderIPPool>),
    /// A SpiderMultusConfig.
    MultusConfig(Arc<SpiderMultusConfig>),
    /// A SpiderInterfaceTask.
    InterfaceTask(Arc<SpiderInterfaceTask>),
}

impl LiveObject {
    /// Its metadata.
    pub fn meta(&self) -> &kube::api::ObjectMeta {
        match self {
            LiveObject::ReservedIp(o) => &o.metadata,
            LiveObject::IpPool(o) => &o.metadata,
            LiveObject::MultusConfig(o) => &o.metadata,
            LiveObject::InterfaceTask(o) => &o.metadata,
        }
    }

    /// Which object it is.
    pub fn key(&self) -> ChildKey {
        let meta = self.meta();
        let kind = match self {
            LiveObject::ReservedIp(_) => ChildKind::ReservedIp,
            LiveObject::IpPool(_) => ChildKind::IpPool,
            LiveObject::MultusConfig(_) => ChildKind::MultusConfig,
            LiveObject::InterfaceTask(_) => ChildKind::InterfaceTask,
        };
        ChildKey {
            kind,
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// The object as a JSON tree, for [`diff::contains`].
    pub fn to_json(&self) -> Value {
        let result = match self {
            LiveObject::ReservedIp(o) => serde_json::to_value(o.as_ref()),
            LiveObject::IpPool(o) => serde_json::to_value(o.as_ref()),
            LiveObject::MultusConfig(o) => serde_json::to_value(o.as_ref()),
            LiveObject::InterfaceTask(o) => serde_json::to_value(o.as_ref()),
        };
        result.unwrap_or(Value::Null)
    }

    /// Whether the object is labelled as generated by the operator for `topology`.
    pub fn belongs_to(&self, topology: &str) -> bool {
        let labels = self.meta().labels.as_ref();
        labels.and_then(|l| l.get(LABEL_TOPOLOGY)).map(String::as_str) == Some(topology)
            && labels.and_then(|l| l.get(LABEL_MANAGED_BY)).map(String::as_str) == Some(MANAGED_BY)
    }

    /// Whose the object is, for the message of a name conflict: the topology its label names, or
    /// none.
    pub fn ownership(&self) -> String {
        self.meta()
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_TOPOLOGY))
            .map_or_else(
                || "it was not generated from a SpiderNetwork".to_string(),
                |other| format!("it belongs to SpiderNetwork `{other}`"),
            )
    }
}

/// What this process wrote recently and the watch caches may not show yet (they lag behind our own
/// writes, more so while thousands of events queue up after a large apply). Without it the reconcile
/// that follows a large apply would write much of it again.
#[derive(Debug, Default, Clone)]
pub struct RecentWrites {
    /// Objects applied: the resourceVersion the API server answered and the hash applied.
    pub applied: HashMap<ChildKey, (u64, RenderedHash)>,
    /// Objects deleted, by UID.
    pub deleted: HashMap<ChildKey, String>,
    /// Objects known to hold a rendering: resourceVersion and hash. An object still at that
    /// resourceVersion is unchanged, so it is not compared field by field again (which would mean
    /// serializing every child on every reconcile: seconds for 16,000 pools).
    pub verified: HashMap<ChildKey, (u64, RenderedHash)>,
}

impl RecentWrites {
    /// Forgets what the caches have caught up with (or passed).
    pub fn prune(&mut self, live: &BTreeMap<ChildKey, LiveObject>) {
        self.applied.retain(|key, (rv, _)| {
            live.get(key)
                .and_then(|l| resource_version(l.meta()))
                .is_none_or(|live_rv| live_rv < *rv)
        });
        self.deleted.retain(|key, uid| {
            live.get(key)
                .is_some_and(|l| l.meta().uid.as_deref() == Some(uid.as_str()))
        });
        self.verified.retain(|key, _| live.contains_key(key));
    }
}

fn resource_version(meta: &kube::api::ObjectMeta) -> Option<u64> {
    meta.resource_version.as_deref().and_then(|rv| rv.parse().ok())
}

/// One write.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Server-side apply of a rendered object.
    Apply(DesiredChild),
    /// Delete, guarded by the UID seen (so an object re-created meanwhile is not deleted).
    Delete {
        /// Which object.
        key: ChildKey,
        /// Its UID.
        uid: String,
    },
}

impl Write {
    /// Which object the write is about.
    pub fn key(&self) -> &ChildKey {
        match self {
            Write::Apply(d) => &d.key,
            Write::Delete { key, .. } => key,
        }
    }
}

/// The result of planning.
#[derive(Debug, Default)]
pub struct Plan {
    /// Writes in order: each phase completes before the next starts; writes of one phase run
    /// concurrently.
    pub phases: [Vec<Write>; 4],
    /// Objects whose name is taken by an object that is not ours: not written.
    pub conflicts: Vec<Problem>,
    /// Allocated addresses a write would remove from their pool. When not empty, nothing may be
    /// written.
    pub in_use: Vec<Problem>,
    /// Objects already as rendered.
    pub unchanged: usize,
    /// Objects being deleted (by someone) that we would write: retried once they are gone.
    pub terminating: usize,
    /// Interface tasks about to be written (their status describes an older spec).
    pub tasks_written: Vec<String>,
}

impl Plan {
    /// Number of writes.
    pub fn writes(&self) -> usize {
        self.phases.iter().map(Vec::len).sum()
    }
}

/// Plans the writes that bring `live` to `desired` for `topology`.
pub fn plan(
    topology: &str,
    desired: Vec<DesiredChild>,
    live: &BTreeMap<ChildKey, LiveObject>,
    recent: &mut RecentWrites,
) -> Plan {
    let mut plan = Plan::default();
    let mut wanted = std::collections::HashSet::with_capacity(desired.len());
    for child in desired {
        wanted.insert(child.key.clone());
        let Some(current) = live.get(&child.key) else {
            push_apply(&mut plan, child, None);
            continue;
        };
        if !current.belongs_to(topology) {
            let owner = current.ownership();
            plan.conflicts.push(Problem {
                path: child.source.clone(),
                message: format!(
                    "{} already exists and {owner}; it is left alone and this object is not applied (rename the entry or remove the other object)",
                    child.key
                ),
            });
            continue;
        }
        if current.meta().deletion_timestamp.is_some() {
            plan.terminating += 1;
            continue;
        }
        if up_to_date(&child, current, recent) {
            plan.unchanged += 1;
            continue;
        }
        push_apply(&mut plan, child, Some(current));
    }
    for (key, current) in live {
        if wanted.contains(key)
            || !current.belongs_to(topology)
            || current.meta().deletion_timestamp.is_some()
        {
            continue;
        }
        let uid = current.meta().uid.clone().unwrap_or_default();
        if recent.deleted.get(key) == Some(&uid) {
            continue;
        }
        if let LiveObject::IpPool(pool) = current {
            let allocated = allocated_ips(pool);
            if !allocated.is_empty() {
                plan.in_use.push(Problem {
                    path: format!("SpiderIPPool {}", key.name),
                    message: format!(
                        "the topology no longer renders this pool, but {} of its addresses are allocated ({}); nothing is applied until they are released or the change is reverted",
                        allocated.len(),
                        describe(&allocated)
                    ),
                });
                continue;
            }
            plan.phases[1].push(Write::Delete {
                key: key.clone(),
                uid,
            });
        } else {
            plan.phases[3].push(Write::Delete {
                key: key.clone(),
                uid,
            });
        }
    }
    plan
}

fn up_to_date(child: &DesiredChild, current: &LiveObject, recent: &mut RecentWrites) -> bool {
    let meta = current.meta();
    let live_rv = resource_version(meta);
    if let (Some((written_rv, written_hash)), Some(live_rv)) = (recent.applied.get(&child.key), live_rv)
        && live_rv < *written_rv
    {
        // The cache has not seen our last write yet; that write is what counts.
        return *written_hash == child.hash;
    }
    if let (Some((verified_rv, verified_hash)), Some(live_rv)) = (recent.verified.get(&child.key), live_rv)
        && *verified_rv == live_rv
    {
        return *verified_hash == child.hash;
    }
    // Not seen at this resourceVersion: someone else may have edited it, so compare field by field
    // (only here are JSON trees built).
    let same = holds(child, current);
    if same && let Some(live_rv) = live_rv {
        recent.verified.insert(child.key.clone(), (live_rv, child.hash));
    }
    same
}

/// Whether `current` holds the rendering `child` (its hash stamp and every rendered field), i.e. a
/// reconcile that has not seen this object before leaves it alone. `spiderctl diff` asks the same
/// question, so it calls an object unchanged exactly when the controller would not write it.
pub fn holds(child: &DesiredChild, current: &LiveObject) -> bool {
    diff::live_hash(current.meta()) == Some(child.hash)
        && diff::contains(&current.to_json(), &child.object.to_json())
}

fn push_apply(plan: &mut Plan, child: DesiredChild, current: Option<&LiveObject>) {
    let phase = match (&child.key.kind, current) {
        (ChildKind::ReservedIp, _) => 0,
        (ChildKind::IpPool, Some(LiveObject::IpPool(pool))) => {
            let usable = child.usable.clone();
            let removed = outside(allocated_ips(pool), usable.as_ref());
            if !removed.is_empty() {
                plan.in_use.push(Problem {
                    path: child.source.clone(),
                    message: format!(
                        "applying would take allocated addresses out of SpiderIPPool `{}`: {}; nothing is applied until they are released or the change is reverted",
                        child.key.name,
                        describe(&removed)
                    ),
                });
                return;
            }
            let loses = match (pool_usable(&pool.spec), &usable) {
                (Some(live_set), Some(new_set)) => !live_set.is_subset_of(new_set),
                _ => true,
            };
            if loses { 1 } else { 2 }
        }
        _ => 2,
    };
    if child.key.kind == ChildKind::InterfaceTask {
        plan.tasks_written.push(child.key.name.clone());
    }
    plan.phases[phase].push(Write::Apply(child));
}

/// `ip -> holder` (`pod <ns>/<name>` or a node's reservation) of a pool's `status.allocatedIPs`. An
/// unreadable value counts as one allocation, so the pool is treated as in use (the safe reading).
pub fn allocated_ips(pool: &SpiderIPPool) -> Vec<(String, String)> {
    let Some(status) = &pool.status else {
        return Vec::new();
    };
    match status.allocations() {
        Ok(map) => map.into_iter().map(|(ip, a)| (ip, a.describe())).collect(),
        Err(e) => vec![("status.allocatedIPs".to_string(), format!("unreadable: {e}"))],
    }
}

/// The allocations of `allocated` (as [`allocated_ips`] gives them) that `usable` does not hold: the
/// addresses a pool would lose while in use, which the controller refuses to apply. An unreadable
/// entry may be anything, so it counts as outside.
pub fn outside(allocated: Vec<(String, String)>, usable: Option<&IpSet>) -> Vec<(String, String)> {
    allocated
        .into_iter()
        .filter(|(ip, _)| {
            let Ok(addr) = ip.parse::<IpAddr>() else {
                return true;
            };
            !usable.is_some_and(|set| set.contains(&addr))
        })
        .collect()
}

fn describe(allocated: &[(String, String)]) -> String {
    let mut text: Vec<String> = allocated
        .iter()
        .take(10)
        .map(|(ip, holder)| format!("{ip} ({holder})"))
        .collect();
    if allocated.len() > 10 {
        text.push(format!("and {} more", allocated.len() - 10));
    }
    text.join(", ")
}

/// Addresses a pool hands out (`ips` minus `excludeIPs`), or `None` when they do not parse.
pub fn pool_usable(spec: &SpiderIPPoolSpec) -> Option<IpSet> {
    spec.usable_addresses().ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kube::api::ObjectMeta;
    use spiderpool_schema::ippool::PoolIPAllocation;
    use spiderpool_schema::{SpiderIPPoolStatus, SpiderReservedIPSpec};

    use super::*;

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
                ..SpiderIPPoolSpec::default()
            },
        );
        pool.metadata.labels = labels("t");
        pool
    }

    fn desired(pool: &SpiderIPPool) -> DesiredChild {
        let mut object = ChildObject::IpPool(Box::new(pool.clone()));
        let hash = object.stamp_hash().unwrap();
        DesiredChild {
            key: ChildKey {
                kind: ChildKind::IpPool,
                namespace: None,
                name: pool.metadata.name.clone().unwrap(),
            },
            object,
            hash,
            source: "spec.racks[0].ranges[0]".into(),
            usable: pool_usable(&pool.spec),
        }
    }

    /// What the API server would hold after applying `child`: the object plus server metadata.
    fn applied(child: &DesiredChild, rv: u64) -> SpiderIPPool {
        let ChildObject::IpPool(object) = &child.object else {
            unreachable!("pools only")
        };
        let mut pool = object.as_ref().clone();
        pool.metadata.uid = Some(format!("uid-{}", child.key.name));
        pool.metadata.resource_version = Some(rv.to_string());
        pool.spec.default = Some(false);
        pool
    }

    fn live_of(objects: Vec<LiveObject>) -> BTreeMap<ChildKey, LiveObject> {
        objects.into_iter().map(|o| (o.key(), o)).collect()
    }

    fn with_allocation(mut pool: SpiderIPPool, ip: &str) -> SpiderIPPool {
        let mut status = SpiderIPPoolStatus::default();
        status
            .set_allocations(&BTreeMap::from([(
                ip.to_string(),
                PoolIPAllocation::held_by("ns/pod-0", "u"),
            )]))
            .unwrap();
        pool.status = Some(status);
        pool
    }

    #[test]
    fn new_objects_are_applied_and_applied_ones_are_left_alone() {
        let a = desired(&pool("a", &["10.0.0.1-10.0.0.9"]));
        let plan = plan(
            "t",
            vec![a.clone()],
            &BTreeMap::new(),
            &mut RecentWrites::default(),
        );
        assert_eq!(plan.phases[2].len(), 1);

        let live = live_of(vec![LiveObject::IpPool(Arc::new(applied(&a, 5)))]);
        let again = super::plan("t", vec![a], &live, &mut RecentWrites::default());
        assert_eq!(again.writes(), 0);
        assert_eq!(again.unchanged, 1);
    }

    #[test]
    fn a_stale_cache_does_not_cause_a_second_write() {
        let old = desired(&pool("a", &["10.0.0.1-10.0.0.9"]));
        let new = desired(&pool("a", &["10.0.0.1-10.0.0.20"]));
        let live = live_of(vec![LiveObject::IpPool(Arc::new(applied(&old, 5)))]);
        let mut recent = RecentWrites::default();
        recent.applied.insert(new.key.clone(), (9, new.hash));
        assert_eq!(plan("t", vec![new.clone()], &live, &mut recent).writes(), 0);
        // Once the cache shows rv 9 the entry is dropped and the live object itself is compared.
        let caught_up = live_of(vec![LiveObject::IpPool(Arc::new(applied(&new, 9)))]);
        recent.prune(&caught_up);
        assert!(recent.applied.is_empty());
    }

    #[test]
    fn verified_objects_are_not_compared_again_until_they_change() {
        let a = desired(&pool("a", &["10.0.0.1-10.0.0.9"]));
        let mut recent = RecentWrites::default();
        let live = live_of(vec![LiveObject::IpPool(Arc::new(applied(&a, 5)))]);
        assert_eq!(plan("t", vec![a.clone()], &live, &mut recent).writes(), 0);
        assert_eq!(recent.verified.get(&a.key), Some(&(5, a.hash)));
        // An edit by someone else gives a new resourceVersion, so it is compared (and reverted).
        let mut edited = applied(&a, 6);
        edited.spec.ips = vec!["10.0.0.1".into()];
        let live = live_of(vec![LiveObject::IpPool(Arc::new(edited))]);
        assert_eq!(plan("t", vec![a], &live, &mut recent).writes(), 1);
    }

    #[test]
    fn hand_edits_are_reverted() {
        let a = desired(&pool("a", &["10.0.0.1-10.0.0.9"]));
        let mut edited = applied(&a, 5);
        edited.spec.ips = vec!["10.0.0.1".into()];
        let live = live_of(vec![LiveObject::IpPool(Arc::new(edited))]);
        let plan = plan("t", vec![a], &live, &mut RecentWrites::default());
        // The live pool has fewer addresses than rendered: it gains, so phase 2.
        assert_eq!(plan.phases[2].len(), 1);
    }

    #[test]
    fn hand_edits_of_rendered_fields_and_of_the_stamp_are_repaired() {
        let a = desired(&pool("a", &["10.0.0.1-10.0.0.9"]));
        let mut recent = RecentWrites::default();
        let untouched = live_of(vec![LiveObject::IpPool(Arc::new(applied(&a, 5)))]);
        assert_eq!(plan("t", vec![a.clone()], &untouched, &mut recent).writes(), 0);

        let mut relabelled = applied(&a, 6);
        relabelled
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(LABEL_TOPOLOGY.to_string(), "t".to_string());
        relabelled
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert("extra".to_string(), "kept".to_string());
        let mut resubnetted = applied(&a, 7);
        resubnetted.spec.subnet = "10.0.0.0/16".into();
        let mut unstamped = applied(&a, 8);
        unstamped.metadata.annotations = None;
        let mut restamped = applied(&a, 9);
        restamped
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(
                spiderpool_schema::labels::ANNOTATION_RENDERED_HASH.to_string(),
                "0123456789abcdef".to_string(),
            );
        for (edit, expected_writes) in [
            // Labels added by others are fine: not ours to remove.
            (relabelled, 0),
            (resubnetted, 1),
            (unstamped, 1),
            (restamped, 1),
        ] {
            let live = live_of(vec![LiveObject::IpPool(Arc::new(edit.clone()))]);
            let mut recent = recent.clone();
            assert_eq!(
                plan("t", vec![a.clone()], &live, &mut recent).writes(),
                expected_writes,
                "{:?}",
                edit.metadata
            );
        }
    }

    #[test]
    fn shrinking_pools_go_first_and_stale_ones_are_deleted_only_if_ours() {
        let a_old = desired(&pool("a", &["10.0.0.1-10.0.0.9"]));
        let a_new = desired(&pool("a", &["10.0.0.1-10.0.0.4"]));
        let stale = applied(&desired(&pool("gone", &["10.0.0.50"])), 3);
        let mut foreign = pool("theirs", &["10.0.0.60"]);
        foreign.metadata.labels = labels("other");
        foreign.metadata.uid = Some("x".into());
        let live = live_of(vec![
            LiveObject::IpPool(Arc::new(applied(&a_old, 5))),
            LiveObject::IpPool(Arc::new(stale)),
            LiveObject::IpPool(Arc::new(foreign)),
        ]);
        let plan = plan("t", vec![a_new], &live, &mut RecentWrites::default());
        let keys: Vec<String> = plan.phases[1].iter().map(|w| w.key().name.clone()).collect();
        assert_eq!(keys, vec!["a", "gone"]);
        assert_eq!(plan.writes(), 2);
    }

    #[test]
    fn allocated_addresses_are_never_removed() {
        let old = desired(&pool("a", &["10.0.0.1-10.0.0.9"]));
        let new = desired(&pool("a", &["10.0.0.1-10.0.0.4"]));
        let live = live_of(vec![
            LiveObject::IpPool(Arc::new(with_allocation(applied(&old, 5), "10.0.0.7"))),
            LiveObject::IpPool(Arc::new(with_allocation(
                applied(&desired(&pool("gone", &["10.0.0.50"])), 6),
                "10.0.0.50",
            ))),
        ]);
        let plan = plan("t", vec![new], &live, &mut RecentWrites::default());
        assert_eq!(plan.in_use.len(), 2, "{:?}", plan.in_use);
        assert!(plan.in_use[0].message.contains("10.0.0.7 (pod ns/pod-0)"));
        assert_eq!(plan.in_use[0].path, "spec.racks[0].ranges[0]");
        assert_eq!(plan.in_use[1].path, "SpiderIPPool gone");
        // Kept addresses may stay allocated.
        let fine = desired(&pool("a", &["10.0.0.1-10.0.0.8"]));
        let live = live_of(vec![LiveObject::IpPool(Arc::new(with_allocation(
            applied(&old, 5),
            "10.0.0.7",
        )))]);
        assert!(
            super::plan("t", vec![fine], &live, &mut RecentWrites::default())
                .in_use
                .is_empty()
        );
    }

    #[test]
    fn objects_of_others_are_conflicts() {
        let a = desired(&pool("a", &["10.0.0.1"]));
        let mut theirs = SpiderIPPool::new("a", SpiderIPPoolSpec::default());
        theirs.metadata = ObjectMeta {
            name: Some("a".into()),
            uid: Some("x".into()),
            ..ObjectMeta::default()
        };
        let live = live_of(vec![LiveObject::IpPool(Arc::new(theirs))]);
        let plan = plan("t", vec![a], &live, &mut RecentWrites::default());
        assert_eq!(plan.writes(), 0);
        assert!(
            plan.conflicts[0]
                .message
                .contains("not generated from a SpiderNetwork")
        );
    }

    #[test]
    fn reserved_ips_come_first_and_go_last() {
        let mut reserved = SpiderReservedIP::new("r", SpiderReservedIPSpec::default());
        reserved.metadata.labels = labels("t");
        let mut object = ChildObject::ReservedIp(Box::new(reserved.clone()));
        let hash = object.stamp_hash().unwrap();
        let child = DesiredChild {
            key: ChildKey {
                kind: ChildKind::ReservedIp,
                namespace: None,
                name: "r".into(),
            },
            object,
            hash,
            source: "spec.subnets[0]".into(),
            usable: None,
        };
        let plan1 = plan("t", vec![child], &BTreeMap::new(), &mut RecentWrites::default());
        assert_eq!(plan1.phases[0].len(), 1);
        reserved.metadata.uid = Some("u".into());
        let live = live_of(vec![LiveObject::ReservedIp(Arc::new(reserved))]);
        let plan2 = plan("t", vec![], &live, &mut RecentWrites::default());
        assert_eq!(plan2.phases[3].len(), 1);
    }
}
