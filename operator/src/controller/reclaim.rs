//! IP reclaim (upstream's GC manager): addresses whose pods are gone, finished or stuck terminating go
//! back to their pools, and SpiderEndpoints nothing needs any more are deleted.
//!
//! Two paths, both ending in [`decide::decide`]:
//! - event-driven: a pod watch notes deleted pods (due after the additional grace delay), terminating
//!   pods (due at deletionTimestamp + grace + delay) and finished pods (finishedAt + grace + delay); a
//!   ticker looks at due pods through their endpoint's pools;
//! - scan-all: at start and every [`ReclaimConfig::scan_interval`] (and on demand through
//!   [`scan_all`]), every record of every pool.
//!
//! Nothing is freed on one look: a record (or a gone node's reservation, or an unneeded endpoint)
//! judged releasable is released only when a look at least [`ReclaimConfig::confirm_after`] later
//! judges it so again with nothing in between finding it alive ([`decide::Suspects`]); the first look
//! schedules the second. Right before writing, the pod (or node) is read once more and judged again.
//! Releasing is then a read-modify-write of the pool's `allocatedIPs` with its resourceVersion
//! (retried on 409) that removes a record only if it still names the same pod UID, so a record the
//! node daemon reassigned in between is left alone. The released pod's endpoint goes first (its
//! finalizer removed, then deleted, each guarded by the version read): a record is removed only once
//! no endpoint claims it for the released pod any more, because an endpoint left claiming a freed
//! address (the other order, when the operator stopped between the two writes) would let that
//! address be handed to a second pod by anyone trusting the endpoint.

pub mod decide;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::json;
use spiderpool_schema::{FINALIZER, SpiderEndpoint, SpiderIPPool};
use tokio::sync::Mutex;

use self::decide::{
    EndpointFacts, GcFlags, Phase, PodFacts, Record, Reservation, StatefulSetFacts, SuspectKey, Suspects,
    Verdict, World, decide, outdated_endpoints,
};
use super::cache::SharedCache;
use super::ippool::{PoolError, is_conflict, is_not_found, update_allocations};

/// How reclaim runs (upstream's `SPIDERPOOL_GC_*` settings).
#[derive(Debug, Clone)]
pub struct ReclaimConfig {
    /// Master switch (`SPIDERPOOL_GC_IP_ENABLED`).
    pub enabled: bool,
    /// Interval of the full scan (`SPIDERPOOL_GC_DEFAULT_INTERVAL_DURATION`, 600 s). It also runs once
    /// at start.
    pub scan_interval: Duration,
    /// How often due pods are looked at (`SPIDERPOOL_GC_TRACE_POD_GAP_DURATION`, 5 s).
    pub trace_interval: Duration,
    /// Retries of a due pod whose release failed (`SPIDERPOOL_GC_PODENTRY_MAX_RETRIES`, 5).
    pub max_retries: u32,
    /// The decision switches.
    pub flags: GcFlags,
    /// Delete endpoints no record and no pod needs (upstream's `enableCleanOutdatedEndpoint`, off
    /// there by default; on here because such endpoints otherwise keep their finalizer forever).
    pub clean_outdated_endpoints: bool,
    /// How long after a first look judged an address releasable a second look must judge it so
    /// again before it is freed: the grace period of every release ([`decide::Suspects`]).
    pub confirm_after: Duration,
    /// Counters.
    pub metrics: GcMetrics,
    /// What looks judged releasable and since when, shared by every copy of this configuration.
    pub suspects: Arc<std::sync::Mutex<Suspects>>,
}

impl Default for ReclaimConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            scan_interval: Duration::from_secs(600),
            trace_interval: Duration::from_secs(5),
            max_retries: 5,
            flags: GcFlags::default(),
            clean_outdated_endpoints: true,
            confirm_after: Duration::from_secs(15),
            metrics: GcMetrics::default(),
            suspects: Arc::default(),
        }
    }
}

/// Label set of the released-address counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// [`decide::ReleaseReason::as_str`].
    pub reason: String,
}

/// Reclaim counters. Cheap to clone (shared counters); register them once with [`GcMetrics::register`].
#[derive(Clone, Debug, Default)]
pub struct GcMetrics {
    /// Full scans and due-pod checks run.
    pub runs: Counter,
    /// Addresses released, by reason.
    pub released: Family<ReasonLabel, Counter>,
    /// Endpoints deleted.
    pub endpoints_deleted: Counter,
    /// Failed releases and scans.
    pub failures: Counter,
    /// Addresses released, all reasons together (upstream's `spiderpool_ip_gc_counts`).
    pub released_all: Counter,
}

impl GcMetrics {
    /// Registers the counters (`spiderpool_ip_gc_runs_total`, `spiderpool_ip_gc_released_ips_total`,
    /// `spiderpool_ip_gc_endpoints_deleted_total`, `spiderpool_ip_gc_failures_total`), and upstream's
    /// names, which its dashboard and alerts read: `spiderpool_ip_gc_counts_total` (addresses
    /// released) and `spiderpool_ip_gc_failure_counts_total` (the same counter as `failures`).
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("spiderpool_ip_gc");
        sub.register("runs", "Reclaim scans and due-pod checks", self.runs.clone());
        sub.register(
            "released_ips",
            "Addresses released, by reason",
            self.released.clone(),
        );
        sub.register(
            "endpoints_deleted",
            "SpiderEndpoints deleted",
            self.endpoints_deleted.clone(),
        );
        sub.register("failures", "Failed reclaim steps", self.failures.clone());
        sub.register(
            "counts",
            "Addresses released by reclaim (upstream's name)",
            self.released_all.clone(),
        );
        sub.register(
            "failure_counts",
            "Failed reclaim steps (upstream's name)",
            self.failures.clone(),
        );
    }

    /// Counts one released address.
    fn count_release(&self, reason: decide::ReleaseReason) {
        self.released_all.inc();
        self.released
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().to_string(),
            })
            .inc();
    }

    /// Addresses released so far for one reason.
    pub fn released_total(&self, reason: decide::ReleaseReason) -> u64 {
        self.released
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().to_string(),
            })
            .get()
    }
}

/// What went wrong while reclaiming.
#[derive(Debug, thiserror::Error)]
pub enum ReclaimError {
    /// Listing or reading something failed.
    #[error("{action}: {source}")]
    Kube {
        /// What we tried.
        action: &'static str,
        /// The client error.
        source: kube::Error,
    },
    /// Writing a pool failed.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

fn kube_err(action: &'static str) -> impl FnOnce(kube::Error) -> ReclaimError {
    move |source| ReclaimError::Kube { action, source }
}

impl ReclaimConfig {
    fn suspects(&self) -> std::sync::MutexGuard<'_, Suspects> {
        self.suspects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One look judged `key` releasable at `now`: whether it is confirmed (else it is listed in
    /// `report.wait` for the look that may confirm it, under `pod`).
    fn confirmed(
        &self,
        key: SuspectKey,
        now: Timestamp,
        pod: (&str, &str),
        report: &mut ReclaimReport,
    ) -> bool {
        match self.suspects().judged_dead(key, now, self.confirm_after) {
            Ok(()) => true,
            Err(at) => {
                report.wait.push(((pod.0.to_owned(), pod.1.to_owned()), at));
                report.unconfirmed += 1;
                false
            }
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReclaimReport {
    /// Records removed, `(pool, ip, "ns/name", reason)`.
    pub released: Vec<(String, String, String, &'static str)>,
    /// Endpoints deleted, `(namespace, name)`.
    pub endpoints_deleted: Vec<(String, String)>,
    /// Pods to look at again and when (grace periods still running, releases to confirm).
    pub wait: Vec<((String, String), Timestamp)>,
    /// Releases judged due by this look that wait for a second one.
    pub unconfirmed: usize,
}

fn records_of(pool: &SpiderIPPool) -> Vec<Record> {
    holdings_of(pool).0
}

/// A pool's records held by pods, and the node agents' reservations, from one read of its status.
fn holdings_of(pool: &SpiderIPPool) -> (Vec<Record>, Vec<Reservation>) {
    let name = pool.name_any();
    let Some(Ok(allocations)) = pool.status.as_ref().map(|s| s.allocations()) else {
        return (Vec::new(), Vec::new());
    };
    let (mut records, mut reservations) = (Vec::new(), Vec::new());
    for (ip, holder) in allocations {
        if let Some(node) = holder.reservation() {
            reservations.push(Reservation {
                pool: name.clone(),
                ip,
                node: node.to_owned(),
            });
        } else if let Some((namespace, pod)) = holder.pod.split_once('/') {
            records.push(Record {
                pool: name.clone(),
                ip,
                namespace: namespace.to_string(),
                name: pod.to_string(),
                pod_uid: holder.pod_uid,
            });
        }
    }
    (records, reservations)
}

/// Removes reservations of nodes that are gone, pool by pool, each only if the pool still shows it
/// reserved for the same node.
async fn release_reservations(
    client: &Client,
    config: &ReclaimConfig,
    stale: Vec<Reservation>,
    report: &mut ReclaimReport,
) -> Result<(), ReclaimError> {
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let now = Timestamp::now();
    let mut by_pool: BTreeMap<String, Vec<Reservation>> = BTreeMap::new();
    for reservation in stale {
        let key = SuspectKey::Reservation {
            pool: reservation.pool.clone(),
            ip: reservation.ip.clone(),
            node: reservation.node.clone(),
        };
        if !config.confirmed(key.clone(), now, ("", ""), report) {
            continue;
        }
        // Read the node once more right before writing.
        if nodes
            .get_opt(&reservation.node)
            .await
            .map_err(kube_err("reading a node"))?
            .is_some()
        {
            config.suspects().judged_alive(&key);
            continue;
        }
        by_pool
            .entry(reservation.pool.clone())
            .or_default()
            .push(reservation);
    }
    for (pool, reservations) in by_pool {
        let removed = update_allocations(&pools, &pool, |records| {
            let mut removed = Vec::new();
            for r in &reservations {
                if records.get(&r.ip).and_then(|h| h.reservation()) == Some(r.node.as_str()) {
                    records.remove(&r.ip);
                    removed.push(r.clone());
                }
            }
            (!removed.is_empty(), removed)
        })
        .await?
        .unwrap_or_default();
        for r in removed {
            tracing::info!(pool = %r.pool, ip = %r.ip, node = %r.node, reason = "node_gone", "released a reservation of a node that no longer exists");
            config.metrics.count_release(decide::ReleaseReason::NodeGone);
            report.released.push((
                r.pool,
                r.ip,
                format!("node {}", r.node),
                decide::ReleaseReason::NodeGone.as_str(),
            ));
        }
    }
    Ok(())
}

fn pod_facts(pod: &Pod) -> PodFacts {
    let status = pod.status.clone().unwrap_or_default();
    let phase = match status.phase.as_deref() {
        Some("Running") => Phase::Running,
        Some("Succeeded") => Phase::Succeeded,
        Some("Failed") => Phase::Failed,
        Some("Unknown") => Phase::Unknown,
        _ => Phase::Pending,
    };
    let finished_at = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    let spec = pod.spec.clone().unwrap_or_default();
    PodFacts {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        phase,
        deletion: pod
            .metadata
            .deletion_timestamp
            .as_ref()
            .map(|t| (t.0, pod.metadata.deletion_grace_period_seconds.unwrap_or(0))),
        has_ips: status.pod_ips.is_some_and(|ips| !ips.is_empty()) || status.pod_ip.is_some(),
        node: spec.node_name.clone(),
        finished_at,
        termination_grace: spec.termination_grace_period_seconds.unwrap_or(30),
        owner: pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
            .map(|r| (r.kind.clone(), r.name.clone())),
    }
}

fn endpoint_facts(ep: &SpiderEndpoint) -> Option<EndpointFacts> {
    let status = ep.status.as_ref()?;
    let mut held = HashSet::new();
    for detail in &status.current.ips {
        for (pool, cidr) in [
            (&detail.ipv4_pool, &detail.ipv4),
            (&detail.ipv6_pool, &detail.ipv6),
        ] {
            if let (Some(pool), Some(cidr)) = (pool, cidr) {
                let ip = cidr.split('/').next().unwrap_or(cidr);
                held.insert((pool.clone(), ip.to_string()));
            }
        }
    }
    Some(EndpointFacts {
        namespace: ep.namespace().unwrap_or_default(),
        name: ep.name_any(),
        uid: status.current.uid.clone(),
        owner_kind: status.owner_controller_type.clone(),
        owner_name: status.owner_controller_name.clone(),
        held,
    })
}

/// Only whether the set is being deleted matters: its members keep their addresses at any ordinal
/// (see the `decide` module documentation for the difference from upstream).
fn sts_facts(sts: &StatefulSet) -> StatefulSetFacts {
    StatefulSetFacts {
        terminating: sts.metadata.deletion_timestamp.is_some(),
    }
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

fn key_of<K: Resource>(obj: &K) -> (String, String) {
    (
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

/// KubeVirt VMIs and VMs that exist and are not being deleted; none when KubeVirt is not installed.
async fn kubevirt_vms(client: &Client, namespace: Option<&str>) -> HashSet<(String, String)> {
    let mut out = HashSet::new();
    for kind in ["VirtualMachineInstance", "VirtualMachine"] {
        let gvk = GroupVersionKind::gvk("kubevirt.io", "v1", kind);
        let resource = ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        match api.list_metadata(&ListParams::default()).await {
            Ok(list) => out.extend(
                list.items
                    .iter()
                    .filter(|o| o.metadata.deletion_timestamp.is_none())
                    .map(key_of),
            ),
            // No KubeVirt CRD: no VMs.
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                tracing::warn!(kind, error = %e, "cannot list KubeVirt objects; treating VMs as absent")
            }
        }
    }
    out
}

/// Builds the world for `records` from cluster lists (or, with `pod`, from the one pod's namespace).
/// Pools must already have been read: everything here is read after them.
async fn observe(
    client: &Client,
    config: &ReclaimConfig,
    namespace: Option<&str>,
) -> Result<World, ReclaimError> {
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let lp = ListParams::default();
    let mut world = World::default();
    // Endpoints before pods: a pod created after the endpoint list cannot make an endpoint look unclaimed.
    for ep in api::<SpiderEndpoint>(client, namespace)
        .list(&lp)
        .await
        .map_err(kube_err("listing SpiderEndpoints"))?
    {
        if let Some(facts) = endpoint_facts(&ep) {
            world.endpoints.insert(key_of(&ep), facts);
        }
    }
    // The other lists are read side by side with the pods: only the endpoints' order matters to a
    // verdict (a release also needs a later look to judge the same and the pod read once more).
    let nodes: Api<Node> = Api::all(client.clone());
    let (pods, statefulsets, nodes, vms) = tokio::try_join!(
        async {
            api::<Pod>(client, namespace)
                .list(&lp)
                .await
                .map_err(kube_err("listing pods"))
        },
        async {
            if !config.flags.statefulset {
                return Ok(None);
            }
            api::<StatefulSet>(client, namespace)
                .list(&lp)
                .await
                .map(Some)
                .map_err(kube_err("listing StatefulSets"))
        },
        async { nodes.list(&lp).await.map_err(kube_err("listing nodes")) },
        async {
            Ok(if config.flags.kubevirt {
                Some(kubevirt_vms(client, namespace).await)
            } else {
                None
            })
        },
    )?;
    for pod in pods {
        world.pods.insert(key_of(&pod), pod_facts(&pod));
    }
    for sts in statefulsets.into_iter().flatten() {
        world.statefulsets.insert(key_of(&sts), sts_facts(&sts));
    }
    for node in nodes {
        world.nodes_ready.insert(node.name_any(), node_ready(&node));
    }
    if let Some(vms) = vms {
        world.kubevirt_vms = vms;
    }
    Ok(world)
}

/// One Normal Event on a pool for the addresses one pass took back from it, so `kubectl describe`
/// of the pool says where its addresses went.
async fn released_event(client: &Client, pool: &str, removed: &[(Record, decide::ReleaseReason)]) {
    let listed: Vec<String> = removed
        .iter()
        .map(|(record, reason)| {
            format!(
                "{} of {}/{} ({})",
                record.ip,
                record.namespace,
                record.name,
                reason.as_str()
            )
        })
        .collect();
    let note = format!("reclaimed {} address(es): {}", removed.len(), listed.join(", "));
    crate::events::Events::new(client.clone(), "reclaim")
        .normal(
            crate::events::cluster_object::<SpiderIPPool>(pool),
            "IPReclaimed",
            "Reclaim",
            note,
        )
        .await;
}

/// Applies the verdicts of one look (`world`): releases only what an earlier look already judged
/// releasable ([`ReclaimConfig::confirmed`]) and what the pod, read once more now, still leaves
/// releasable: first deletes the released pods' endpoints, then removes the records pool by pool
/// (only those whose endpoint is gone: [`clear_endpoint`]); then deletes endpoints nothing needs
/// (`extra_endpoints`, `(namespace, name, uid)`, under the same two-look rule).
async fn apply(
    client: &Client,
    config: &ReclaimConfig,
    mut world: World,
    verdicts: Vec<(Record, Verdict)>,
    extra_endpoints: Vec<(String, String, String)>,
) -> Result<ReclaimReport, ReclaimError> {
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let mut report = ReclaimReport::default();
    // Each release with the endpoint `(namespace, name)` to delete before it, if any.
    let mut releases: Vec<(Record, decide::ReleaseReason, Option<EndpointKey>)> = Vec::new();
    let now = Timestamp::now();
    for (record, verdict) in verdicts {
        let key = SuspectKey::record(&record);
        let (reason, delete_endpoint) = match verdict {
            Verdict::Keep(_) => {
                config.suspects().judged_alive(&key);
                continue;
            }
            Verdict::WaitUntil(at) => {
                config.suspects().judged_alive(&key);
                report.wait.push(((record.namespace, record.name), at));
                continue;
            }
            Verdict::Release {
                reason,
                delete_endpoint,
            } => (reason, delete_endpoint),
        };
        let pod = (record.namespace.as_str(), record.name.as_str());
        if !config.confirmed(key.clone(), now, pod, &mut report) {
            continue;
        }
        // Read the pod once more right before writing, and judge again.
        let fresh = Api::<Pod>::namespaced(client.clone(), &record.namespace)
            .get_opt(&record.name)
            .await
            .map_err(kube_err("reading a pod"))?;
        let pod_key = (record.namespace.clone(), record.name.clone());
        match fresh {
            Some(pod) => world.pods.insert(pod_key, pod_facts(&pod)),
            None => world.pods.remove(&pod_key),
        };
        if !matches!(
            decide(&record, &world, now, &config.flags),
            Verdict::Release { .. }
        ) {
            tracing::info!(
                pool = %record.pool,
                ip = %record.ip,
                pod = %format!("{}/{}", record.namespace, record.name),
                "a second look found the pod alive; keeping the address"
            );
            config.suspects().judged_alive(&key);
            continue;
        }
        releases.push((record, reason, delete_endpoint));
    }
    let mut first_error = None;
    // The endpoints first: a record goes only once the endpoint that claimed it is gone.
    let mut cleared: BTreeMap<EndpointKey, bool> = BTreeMap::new();
    for (_, _, endpoint) in &releases {
        let Some(key) = endpoint else { continue };
        if cleared.contains_key(key) {
            continue;
        }
        let uid = world
            .endpoints
            .get(key)
            .map(|e| e.uid.clone())
            .unwrap_or_default();
        let addresses: Vec<(String, String)> = releases
            .iter()
            .filter(|(_, _, e)| e.as_ref() == Some(key))
            .map(|(r, _, _)| (r.pool.clone(), r.ip.clone()))
            .collect();
        let gone = match clear_endpoint(client, &key.0, &key.1, &uid, &addresses).await {
            Ok(Cleared::Deleted) => {
                config.metrics.endpoints_deleted.inc();
                report.endpoints_deleted.push(key.clone());
                true
            }
            Ok(Cleared::Absent) => true,
            Ok(Cleared::Kept) => {
                tracing::warn!(namespace = %key.0, name = %key.1, "the endpoint of a released pod could not be deleted; keeping its records for a later look");
                false
            }
            Err(e) => {
                config.metrics.failures.inc();
                tracing::warn!(namespace = %key.0, name = %key.1, error = %e, "cannot delete endpoint; keeping its records for a later look");
                first_error.get_or_insert(e);
                false
            }
        };
        cleared.insert(key.clone(), gone);
    }
    let mut by_pool: BTreeMap<String, Vec<(Record, decide::ReleaseReason)>> = BTreeMap::new();
    for (record, reason, endpoint) in releases {
        if endpoint.is_some_and(|key| !cleared.get(&key).copied().unwrap_or(false)) {
            continue;
        }
        by_pool
            .entry(record.pool.clone())
            .or_default()
            .push((record, reason));
    }
    for (pool, releases) in by_pool {
        let result = update_allocations(&pools, &pool, |records| {
            let mut removed = Vec::new();
            for (record, reason) in &releases {
                // Only if the record still names the pod we judged: the daemon may have reassigned it.
                if records
                    .get(&record.ip)
                    .is_some_and(|holder| holder.pod_uid == record.pod_uid)
                {
                    records.remove(&record.ip);
                    removed.push((record.clone(), *reason));
                }
            }
            (!removed.is_empty(), removed)
        })
        .await;
        match result {
            Ok(Some(removed)) => {
                released_event(client, &pool, &removed).await;
                for (record, reason) in removed {
                    tracing::info!(
                        pool = %record.pool,
                        ip = %record.ip,
                        pod = %format!("{}/{}", record.namespace, record.name),
                        pod_uid = %record.pod_uid,
                        reason = reason.as_str(),
                        "released address"
                    );
                    config.metrics.count_release(reason);
                    report.released.push((
                        record.pool,
                        record.ip,
                        format!("{}/{}", record.namespace, record.name),
                        reason.as_str(),
                    ));
                }
            }
            Ok(None) => {}
            Err(e) => {
                config.metrics.failures.inc();
                tracing::warn!(%pool, error = %e, "cannot release addresses");
                first_error.get_or_insert(ReclaimError::from(e));
            }
        }
    }
    for (namespace, name, uid) in extra_endpoints {
        let key = SuspectKey::Endpoint {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: uid.clone(),
        };
        if !config.confirmed(key, now, (&namespace, &name), &mut report) {
            continue;
        }
        match clear_endpoint(client, &namespace, &name, &uid, &[]).await {
            Ok(Cleared::Deleted) => {
                config.metrics.endpoints_deleted.inc();
                report.endpoints_deleted.push((namespace, name));
            }
            Ok(Cleared::Absent | Cleared::Kept) => {}
            Err(e) => {
                config.metrics.failures.inc();
                tracing::warn!(%namespace, %name, error = %e, "cannot delete endpoint");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// An endpoint's `(namespace, name)`.
type EndpointKey = (String, String);

/// What became of an endpoint reclaim set out to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cleared {
    /// Deleted now.
    Deleted,
    /// Nothing to delete: it is gone already, or it now describes another pod and claims none of
    /// the addresses being released.
    Absent,
    /// Still there: it changed since it was read, another finalizer holds it, or it describes
    /// another pod that claims an address being released.
    Kept,
}

/// Deletes endpoint `namespace/name` if it still describes pod `uid`: removes our finalizer, then
/// deletes it, each step guarded by the version read before, so an endpoint a node daemon rewrote
/// meanwhile (a pod's new incarnation, a StatefulSet member's takeover) is left alone. `addresses`
/// are the `(pool, ip)` records about to be released because of it.
async fn clear_endpoint(
    client: &Client,
    namespace: &str,
    name: &str,
    uid: &str,
    addresses: &[(String, String)],
) -> Result<Cleared, ReclaimError> {
    let api: Api<SpiderEndpoint> = Api::namespaced(client.clone(), namespace);
    let Some(ep) = api.get_opt(name).await.map_err(kube_err("reading an endpoint"))? else {
        return Ok(Cleared::Absent);
    };
    if ep.status.as_ref().is_none_or(|s| s.current.uid != uid) {
        let claims = endpoint_facts(&ep).is_some_and(|f| addresses.iter().any(|a| f.held.contains(a)));
        return Ok(if claims { Cleared::Kept } else { Cleared::Absent });
    }
    let mut version = ep.resource_version();
    if ep.finalizers().iter().any(|f| f == FINALIZER) {
        let kept: Vec<&String> = ep.finalizers().iter().filter(|f| *f != FINALIZER).collect();
        let patch = json!({"metadata": {"finalizers": kept, "resourceVersion": version}});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(patched) => version = patched.resource_version(),
            Err(e) if is_not_found(&e) => return Ok(Cleared::Absent),
            Err(e) if is_conflict(&e) => return Ok(Cleared::Kept),
            Err(e) => return Err(kube_err("removing an endpoint's finalizer")(e)),
        }
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: ep.uid(),
            resource_version: version,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        // Another finalizer still holds it: it is only marked for deletion, and still claims.
        Ok(deleted)
            if deleted
                .as_ref()
                .left()
                .is_some_and(|o| !o.finalizers().is_empty()) =>
        {
            Ok(Cleared::Kept)
        }
        Ok(_) => {
            tracing::info!(%namespace, %name, "deleted SpiderEndpoint");
            Ok(Cleared::Deleted)
        }
        Err(e) if is_not_found(&e) => Ok(Cleared::Absent),
        Err(e) if is_conflict(&e) => Ok(Cleared::Kept),
        Err(e) => Err(kube_err("deleting an endpoint")(e)),
    }
}

/// Looks at every record of every pool once (upstream's scan-all) and releases what is no longer
/// needed; also deletes outdated endpoints when configured. Reads the pools with a fresh LIST.
pub async fn scan_all(client: &Client, config: &ReclaimConfig) -> Result<ReclaimReport, ReclaimError> {
    scan(client, config, &Pools::List).await
}

/// Where a scan reads the pools from.
enum Pools {
    /// A LIST of every pool (a full copy of all of them while the scan runs).
    List,
    /// The process's shared pool cache. Safe to judge from: a release only removes a record that
    /// still names the pod UID judged (see [`apply`]), so a lagging cache can at worst miss a record
    /// until the next scan.
    Cache(Store<SpiderIPPool>),
}

async fn scan(client: &Client, config: &ReclaimConfig, pools: &Pools) -> Result<ReclaimReport, ReclaimError> {
    config.metrics.runs.inc();
    let (records, reservations): (Vec<Vec<Record>>, Vec<Vec<Reservation>>) = match pools {
        Pools::List => {
            let api: Api<SpiderIPPool> = Api::all(client.clone());
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(kube_err("listing pools"))?;
            list.iter().map(holdings_of).unzip()
        }
        Pools::Cache(store) => store.state().iter().map(|pool| holdings_of(pool)).unzip(),
    };
    let (records, reservations): (Vec<Record>, Vec<Reservation>) = (
        records.into_iter().flatten().collect(),
        reservations.into_iter().flatten().collect(),
    );
    let world = observe(client, config, None).await?;
    let now = Timestamp::now();
    let verdicts: Vec<(Record, Verdict)> = records
        .iter()
        .map(|r| (r.clone(), decide(r, &world, now, &config.flags)))
        .collect();
    let outdated: Vec<(String, String, String)> = if config.clean_outdated_endpoints {
        outdated_endpoints(&world, &records)
            .into_iter()
            .map(|(namespace, name)| {
                let uid = world
                    .endpoints
                    .get(&(namespace.clone(), name.clone()))
                    .map(|e| e.uid.clone())
                    .unwrap_or_default();
                (namespace, name, uid)
            })
            .collect()
    } else {
        Vec::new()
    };
    let stale: Vec<Reservation> = reservations
        .into_iter()
        .filter(|r| decide::release_reservation(r, &world))
        .collect();
    // Suspicions no look has confirmed or cleared for a long while concern records gone some other way.
    if let Ok(horizon) = now.checked_sub(
        k8s_openapi::jiff::SignedDuration::try_from(
            config.scan_interval.saturating_mul(3) + config.confirm_after,
        )
        .unwrap_or_default(),
    ) {
        config.suspects().forget_older_than(horizon);
    }
    let mut report = apply(client, config, world, verdicts, outdated).await?;
    release_reservations(client, config, stale, &mut report).await?;
    tracing::debug!(
        records = records.len(),
        released = report.released.len(),
        endpoints_deleted = report.endpoints_deleted.len(),
        "reclaim scan done"
    );
    Ok(report)
}

/// Looks at one pod's records (found through its endpoint's pools, as upstream's trace path does;
/// without an endpoint the scan finds them).
pub async fn reclaim_pod(
    client: &Client,
    config: &ReclaimConfig,
    namespace: &str,
    name: &str,
) -> Result<ReclaimReport, ReclaimError> {
    config.metrics.runs.inc();
    let endpoints: Api<SpiderEndpoint> = Api::namespaced(client.clone(), namespace);
    let Some(endpoint) = endpoints
        .get_opt(name)
        .await
        .map_err(kube_err("reading an endpoint"))?
    else {
        return Ok(ReclaimReport::default());
    };
    let Some(facts) = endpoint_facts(&endpoint) else {
        return Ok(ReclaimReport::default());
    };
    let pool_names: HashSet<&String> = facts.held.iter().map(|(pool, _)| pool).collect();
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let mut records = Vec::new();
    for pool in pool_names {
        if let Some(pool) = pools.get_opt(pool).await.map_err(kube_err("reading a pool"))? {
            records.extend(
                records_of(&pool)
                    .into_iter()
                    .filter(|r| r.namespace == namespace && r.name == name),
            );
        }
    }
    let world = observe(client, config, Some(namespace)).await?;
    let now = Timestamp::now();
    let verdicts = records
        .iter()
        .map(|r| (r.clone(), decide(r, &world, now, &config.flags)))
        .collect();
    apply(client, config, world, verdicts, Vec::new()).await
}

/// When a pod should be looked at, from a watch event; `None` for pods that are fine.
fn due_time(pod: &Pod, deleted: bool, flags: &GcFlags) -> Option<Timestamp> {
    if pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
        return None;
    }
    let delay = k8s_openapi::jiff::SignedDuration::try_from(flags.additional_grace).unwrap_or_default();
    let now = Timestamp::now();
    if deleted {
        return now.checked_add(delay).ok();
    }
    let facts = pod_facts(pod);
    if let Some((at, grace)) = facts.deletion {
        return at
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(grace.max(0)))
            .and_then(|t| t.checked_add(delay))
            .ok();
    }
    if matches!(facts.phase, Phase::Succeeded | Phase::Failed) {
        let finished = facts.finished_at.unwrap_or(now);
        return finished
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
                facts.termination_grace.max(0),
            ))
            .and_then(|t| t.checked_add(delay))
            .ok();
    }
    None
}

/// Pods waiting to be looked at: `(namespace, name)` -> (due time, failures so far).
type Traced = Arc<Mutex<HashMap<(String, String), (Timestamp, u32)>>>;

/// Runs reclaim: the pod watch, the due-pod ticker and the periodic scan (first one at start), until
/// they end (they do not on their own). Run it only while leader. The scans LIST the pools.
pub async fn run(client: Client, config: ReclaimConfig) -> anyhow::Result<()> {
    run_scanning(client, config, Pools::List).await
}

/// [`run`] with the scans reading the process's shared pool cache instead of listing every pool each
/// time (the caller drives the cache).
pub fn run_shared(
    client: Client,
    config: ReclaimConfig,
    pools: &SharedCache<SpiderIPPool>,
) -> impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static {
    run_scanning(client, config, Pools::Cache(pools.store()))
}

async fn run_scanning(client: Client, config: ReclaimConfig, pools: Pools) -> anyhow::Result<()> {
    if !config.enabled {
        tracing::info!("IP reclaim is disabled");
        futures::future::pending::<()>().await;
        return Ok(());
    }
    let traced: Traced = Arc::new(Mutex::new(HashMap::new()));

    let watch = {
        let traced = traced.clone();
        let flags = config.flags.clone();
        let pods: Api<Pod> = Api::all(client.clone());
        watcher(pods, watcher::Config::default())
            .default_backoff()
            .for_each(move |event| {
                let traced = traced.clone();
                let flags = flags.clone();
                async move {
                    let (pod, deleted) = match event {
                        Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => (pod, false),
                        Ok(watcher::Event::Delete(pod)) => (pod, true),
                        Ok(_) => return,
                        Err(e) => {
                            tracing::debug!(error = %e, "pod watch error");
                            return;
                        }
                    };
                    let key = key_of(&pod);
                    let mut traced = traced.lock().await;
                    match due_time(&pod, deleted, &flags) {
                        Some(due) => {
                            traced.insert(key, (due, 0));
                        }
                        None if !deleted => {
                            traced.remove(&key);
                        }
                        None => {}
                    }
                }
            })
    };

    let ticker = {
        let traced = traced.clone();
        let client = client.clone();
        let config = config.clone();
        async move {
            let mut tick = tokio::time::interval(config.trace_interval);
            loop {
                tick.tick().await;
                let now = Timestamp::now();
                let due: Vec<((String, String), u32)> = {
                    let mut traced = traced.lock().await;
                    let keys: Vec<_> = traced
                        .iter()
                        .filter(|(_, (at, _))| *at <= now)
                        .map(|(k, (_, tries))| (k.clone(), *tries))
                        .collect();
                    for (k, _) in &keys {
                        traced.remove(k);
                    }
                    keys
                };
                for ((namespace, name), tries) in due {
                    match reclaim_pod(&client, &config, &namespace, &name).await {
                        Ok(report) => {
                            let mut traced = traced.lock().await;
                            for (key, at) in report.wait {
                                traced.entry(key).or_insert((at, 0));
                            }
                        }
                        Err(e) if tries + 1 < config.max_retries => {
                            tracing::warn!(%namespace, %name, error = %e, "reclaim failed; retrying");
                            let retry_at = Timestamp::now()
                                .checked_add(
                                    k8s_openapi::jiff::SignedDuration::try_from(config.trace_interval)
                                        .unwrap_or_default(),
                                )
                                .unwrap_or(now);
                            traced
                                .lock()
                                .await
                                .entry((namespace, name))
                                .or_insert((retry_at, tries + 1));
                        }
                        Err(e) => {
                            tracing::warn!(%namespace, %name, error = %e, "reclaim failed; leaving it to the periodic scan");
                        }
                    }
                }
            }
        }
    };

    let scanner = {
        let client = client.clone();
        let config = config.clone();
        async move {
            if let Pools::Cache(store) = &pools
                && store.wait_until_ready().await.is_err()
            {
                tracing::warn!("the pool cache stopped before it was filled; no reclaim scans");
                return;
            }
            let mut tick = tokio::time::interval(config.scan_interval);
            // When a scan judged something releasable, the look that may confirm it comes as soon as
            // it can rather than a whole interval later.
            let mut confirm_at: Option<tokio::time::Instant> = None;
            loop {
                let follow_up = async {
                    match confirm_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tick.tick() => {}
                    () = follow_up => {}
                }
                confirm_at = None;
                match scan(&client, &config, &pools).await {
                    Ok(report) if report.unconfirmed > 0 => {
                        let wait = report
                            .wait
                            .iter()
                            .map(|(_, at)| at.duration_since(Timestamp::now()))
                            .min()
                            .and_then(|d| std::time::Duration::try_from(d).ok())
                            .unwrap_or(config.confirm_after)
                            .max(config.trace_interval);
                        confirm_at = Some(tokio::time::Instant::now() + wait);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        config.metrics.failures.inc();
                        tracing::warn!(error = %e, "reclaim scan failed");
                    }
                }
            }
        }
    };

    tokio::join!(watch, ticker, scanner);
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use spiderpool_schema::endpoint::{IPAllocationDetail, PodIPAllocation, SpiderEndpointStatus};
    use spiderpool_schema::ippool::PoolIPAllocation;
    use spiderpool_schema::{SpiderIPPoolSpec, SpiderIPPoolStatus};

    use super::*;

    #[test]
    fn records_are_read_from_pool_status() {
        let mut pool = SpiderIPPool::new("p", SpiderIPPoolSpec::default());
        let mut status = SpiderIPPoolStatus::default();
        status
            .set_allocations(&BTreeMap::from([
                ("10.0.0.5".to_string(), PoolIPAllocation::held_by("ns/a", "u")),
                (
                    "10.0.0.6".to_string(),
                    PoolIPAllocation::held_by("malformed", "u"),
                ),
            ]))
            .unwrap();
        pool.status = Some(status);
        assert_eq!(
            records_of(&pool),
            vec![Record {
                pool: "p".into(),
                ip: "10.0.0.5".into(),
                namespace: "ns".into(),
                name: "a".into(),
                pod_uid: "u".into()
            }]
        );
    }

    #[test]
    fn endpoint_lists_its_pool_addresses() {
        let mut ep = SpiderEndpoint::new(
            "a",
            "ns",
            SpiderEndpointStatus {
                current: PodIPAllocation {
                    uid: "u".into(),
                    node: "n".into(),
                    ips: vec![IPAllocationDetail {
                        nic: "eth0".into(),
                        ipv4: Some("10.0.0.5/24".into()),
                        ipv4_pool: Some("p".into()),
                        ipv6: Some("fd00::5/64".into()),
                        ipv6_pool: Some("p6".into()),
                        ..IPAllocationDetail::default()
                    }],
                },
                owner_controller_type: "StatefulSet".into(),
                owner_controller_name: "db".into(),
            },
        );
        let facts = endpoint_facts(&ep).unwrap();
        assert!(facts.held.contains(&("p".to_string(), "10.0.0.5".to_string())));
        assert!(facts.held.contains(&("p6".to_string(), "fd00::5".to_string())));
        assert_eq!(facts.owner_kind, "StatefulSet");
        ep.status = None;
        assert_eq!(endpoint_facts(&ep), None);
    }

    #[test]
    fn pod_facts_and_due_times() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let pod = Pod {
            metadata: ObjectMeta {
                uid: Some("u".into()),
                deletion_timestamp: Some(Time(t0)),
                deletion_grace_period_seconds: Some(10),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..PodStatus::default()
            }),
        };
        let facts = pod_facts(&pod);
        assert_eq!(facts.phase, Phase::Running);
        assert_eq!(facts.deletion, Some((t0, 10)));
        assert!(!facts.has_ips);
        assert_eq!(facts.termination_grace, 30);
        let flags = GcFlags {
            additional_grace: Duration::from_secs(5),
            ..GcFlags::default()
        };
        assert_eq!(
            due_time(&pod, false, &flags),
            Some(Timestamp::from_second(1_015).unwrap())
        );
        let mut live = pod.clone();
        live.metadata.deletion_timestamp = None;
        assert_eq!(due_time(&live, false, &flags), None);
        assert!(due_time(&live, true, &flags).is_some());
        let mut host = live;
        host.spec = Some(PodSpec {
            host_network: Some(true),
            ..PodSpec::default()
        });
        assert_eq!(due_time(&host, true, &flags), None);
    }

    #[test]
    fn metrics_register_and_count() {
        let metrics = GcMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics
            .released
            .get_or_create(&ReasonLabel {
                reason: "pod_gone".into(),
            })
            .inc();
        assert_eq!(metrics.released_total(decide::ReleaseReason::PodGone), 1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("spiderpool_ip_gc_released_ips_total{reason=\"pod_gone\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn upstreams_names_are_served_from_the_start_and_count() {
        let metrics = GcMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let encode = || {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        let text = encode();
        assert!(text.contains("spiderpool_ip_gc_counts_total 0"), "{text}");
        assert!(text.contains("spiderpool_ip_gc_failure_counts_total 0"), "{text}");
        metrics.count_release(decide::ReleaseReason::PodGone);
        metrics.failures.inc();
        let text = encode();
        assert!(text.contains("spiderpool_ip_gc_counts_total 1"), "{text}");
        assert!(text.contains("spiderpool_ip_gc_failure_counts_total 1"), "{text}");
        assert!(text.contains("spiderpool_ip_gc_failures_total 1"), "{text}");
    }
}
