//! The GC decision table, pure: for each pool record, what the cluster says about its pod, endpoint and
//! owner decides whether the address is kept, released now, or looked at again later.
//!
//! The shell ([`super`]) gathers a [`World`] (a consistent-enough snapshot: pools are read first, then
//! endpoints, then pods, so anything newer than a record is seen) and applies the verdicts with
//! resourceVersion guards (a record is only removed if it still names the same pod UID).
//!
//! Deliberate difference from upstream (reference 4.4): a StatefulSet member's addresses are retained
//! while its StatefulSet exists and is not being deleted, whatever its ordinal and `spec.replicas`.
//! Upstream releases a member's addresses once its ordinal falls outside `[start, start + replicas)`,
//! so a set scaled down and up again gets new addresses (its open requests #3488/#3893). The node
//! daemon keeps them on DEL by the same rule; reclaim must agree, or it would free what the daemon
//! hands back on the next scale-up. Deleting the StatefulSet (or it being deleted) releases them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// One `allocatedIPs` record of one pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Record {
    /// Pool name.
    pub pool: String,
    /// The address.
    pub ip: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// UID of the pod the address was given to.
    pub pod_uid: String,
}

/// A node agent's reservation (`reservedForNode`) in one pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reservation {
    /// Pool name.
    pub pool: String,
    /// The address.
    pub ip: String,
    /// The node whose agent reserved it.
    pub node: String,
}

/// Whether a reservation is released. Only the agent of its node hands it out or gives it back, so
/// reclaim leaves it alone while the node exists (its agent gives unused reservations back within
/// seconds, and records handed-out ones for their pods). Once the Node object is gone, nobody will:
/// it is released, unless an endpoint lists the address (a pod got it before the node went away and
/// the record was not rewritten yet); that pod's own cleanup comes first, and the next scan frees it.
pub fn release_reservation(reservation: &Reservation, world: &World) -> bool {
    let key = (reservation.pool.clone(), reservation.ip.clone());
    !world.nodes_ready.contains_key(&reservation.node)
        && !world.endpoints.values().any(|e| e.held.contains(&key))
}

/// Pod phase, as far as GC cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not started yet (CNI ADD happens in this phase).
    Pending,
    /// Running.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished with failure (including evicted).
    Failed,
    /// The node stopped reporting.
    Unknown,
}

/// What GC needs of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// Pod UID.
    pub uid: String,
    /// Phase.
    pub phase: Phase,
    /// `metadata.deletionTimestamp` and `deletionGracePeriodSeconds` of a terminating pod.
    pub deletion: Option<(Timestamp, i64)>,
    /// `status.podIPs` is not empty.
    pub has_ips: bool,
    /// Node the pod is bound to.
    pub node: Option<String>,
    /// Latest `finishedAt` of its terminated containers.
    pub finished_at: Option<Timestamp>,
    /// `spec.terminationGracePeriodSeconds` (default 30).
    pub termination_grace: i64,
    /// Controller owner `(kind, name)`.
    pub owner: Option<(String, String)>,
}

/// What GC needs of a SpiderEndpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointFacts {
    /// Namespace.
    pub namespace: String,
    /// Name (the pod's, or the KubeVirt VM's).
    pub name: String,
    /// `status.current.uid`: the pod incarnation it describes.
    pub uid: String,
    /// `status.ownerControllerType`.
    pub owner_kind: String,
    /// `status.ownerControllerName`.
    pub owner_name: String,
    /// `(pool, ip)` pairs it lists.
    pub held: HashSet<(String, String)>,
}

/// What GC needs of a StatefulSet. Its replicas and ordinals do not matter: every member keeps its
/// addresses while the set exists (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatefulSetFacts {
    /// Being deleted.
    pub terminating: bool,
}

/// The GC switches (upstream's `SPIDERPOOL_GC_*` environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcFlags {
    /// Extra wait after a pod's grace period before its address goes (`GC_ADDITIONAL_GRACE_DELAY`).
    pub additional_grace: Duration,
    /// Release terminating pods past grace on Ready nodes.
    pub terminating_on_ready_node: bool,
    /// Release terminating pods past grace on NotReady (or unknown) nodes.
    pub terminating_on_not_ready_node: bool,
    /// Release Running stateless pods that report no IPs.
    pub running_on_empty_pod_ips: bool,
    /// StatefulSet pods keep their addresses (`enableStatefulSet`).
    pub statefulset: bool,
    /// KubeVirt VMs keep their addresses (`enableKubevirtStaticIP`).
    pub kubevirt: bool,
}

impl Default for GcFlags {
    fn default() -> Self {
        Self {
            additional_grace: Duration::ZERO,
            terminating_on_ready_node: true,
            terminating_on_not_ready_node: true,
            running_on_empty_pod_ips: false,
            statefulset: true,
            kubevirt: true,
        }
    }
}

/// Everything GC looked at.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// Pods by `(namespace, name)`.
    pub pods: HashMap<(String, String), PodFacts>,
    /// Endpoints by `(namespace, name)`.
    pub endpoints: HashMap<(String, String), EndpointFacts>,
    /// StatefulSets by `(namespace, name)`.
    pub statefulsets: HashMap<(String, String), StatefulSetFacts>,
    /// Node name -> Ready.
    pub nodes_ready: HashMap<String, bool>,
    /// `(namespace, name)` of KubeVirt VMIs and VMs that exist and are not being deleted.
    pub kubevirt_vms: HashSet<(String, String)>,
}

/// Why an address stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepReason {
    /// The pod is alive (or not started yet).
    PodAlive,
    /// A valid StatefulSet member or a KubeVirt VM keeps its address across pod restarts.
    Retained,
    /// The new incarnation of a StatefulSet/VM pod has not taken its addresses over yet.
    AwaitingTakeover,
    /// The node-state switch forbids releasing terminating pods on this node.
    NodeStateFlag,
    /// A Running pod without IPs, and the switch to release those is off.
    NoIpsButRunning,
}

/// Why an address is released (also the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReleaseReason {
    /// The pod does not exist.
    PodGone,
    /// The record names an earlier pod of the same name.
    PodReplaced,
    /// The pod finished (Succeeded/Failed) and its grace period passed.
    PodFinished,
    /// The pod has been terminating longer than its grace period.
    TerminatingPastGrace,
    /// A StatefulSet pod whose StatefulSet is gone or being deleted, or a VM that is gone.
    NoLongerRetained,
    /// A Running pod without IPs (only with the switch on).
    NoPodIps,
    /// A node agent's reservation whose node no longer exists.
    NodeGone,
}

impl ReleaseReason {
    /// Stable snake_case name, for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PodGone => "pod_gone",
            Self::PodReplaced => "pod_replaced",
            Self::PodFinished => "pod_finished",
            Self::TerminatingPastGrace => "terminating_past_grace",
            Self::NoLongerRetained => "no_longer_retained",
            Self::NoPodIps => "no_pod_ips",
            Self::NodeGone => "node_gone",
        }
    }
}

/// The verdict on one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Leave it.
    Keep(KeepReason),
    /// Remove the record; with `delete_endpoint`, also the endpoint `(namespace, name)` (it belongs to
    /// the released incarnation and nothing retains it), before the record: an endpoint must never
    /// claim an address its pool no longer records for its pod.
    Release {
        /// Why.
        reason: ReleaseReason,
        /// Endpoint to delete (finalizer removed).
        delete_endpoint: Option<(String, String)>,
    },
    /// Not yet: look again at this time (a grace period is running).
    WaitUntil(Timestamp),
}

/// How a pod (or, without a pod, its endpoint) keeps addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retention {
    /// Addresses belong to one pod incarnation.
    Stateless,
    /// StatefulSet member or KubeVirt VM; `valid` when it should keep them now.
    Static { valid: bool },
}

/// Whether StatefulSet `sts_name` retains the addresses of `pod_name`: the pod is one of its members
/// (`<sts>-<ordinal>`, any ordinal, also beyond `spec.replicas`) and the set is not being deleted.
/// Upstream also requires the ordinal to be inside `[start, start + replicas)`; see the module
/// documentation for why this does not.
pub fn statefulset_retains(pod_name: &str, sts_name: &str, sts: &StatefulSetFacts) -> bool {
    !sts.terminating
        && pod_name
            .strip_prefix(sts_name)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

fn retention(
    world: &World,
    namespace: &str,
    pod_name: &str,
    owner: Option<(&str, &str)>,
    flags: &GcFlags,
) -> Retention {
    match owner {
        Some(("StatefulSet", sts_name)) if flags.statefulset => Retention::Static {
            valid: world
                .statefulsets
                .get(&(namespace.to_string(), sts_name.to_string()))
                .is_some_and(|sts| statefulset_retains(pod_name, sts_name, sts)),
        },
        // A launcher pod names its VMI; an endpoint names its top controller (the VM, or the VMI when
        // it has no VM). VMIs and VMs share the VM's name.
        Some(("VirtualMachineInstance" | "VirtualMachine", vm_name)) if flags.kubevirt => Retention::Static {
            valid: world
                .kubevirt_vms
                .contains(&(namespace.to_string(), vm_name.to_string())),
        },
        _ => Retention::Stateless,
    }
}

/// The endpoint that describes a record's pod: the one named after the pod, else (KubeVirt endpoints
/// are named after the VM) one whose current UID is the record's.
pub fn endpoint_of<'a>(world: &'a World, record: &Record) -> Option<&'a EndpointFacts> {
    world
        .endpoints
        .get(&(record.namespace.clone(), record.name.clone()))
        .or_else(|| {
            world
                .endpoints
                .values()
                .find(|e| e.namespace == record.namespace && e.uid == record.pod_uid)
        })
}

fn past(now: Timestamp, start: Timestamp, grace_seconds: i64, extra: Duration) -> Result<(), Timestamp> {
    let extra = SignedDuration::try_from(extra).unwrap_or(SignedDuration::MAX);
    let deadline = start
        .saturating_add(SignedDuration::from_secs(grace_seconds.max(0)))
        .and_then(|t| t.saturating_add(extra))
        .unwrap_or(Timestamp::MAX);
    if now >= deadline { Ok(()) } else { Err(deadline) }
}

/// The verdict on one record.
pub fn decide(record: &Record, world: &World, now: Timestamp, flags: &GcFlags) -> Verdict {
    let endpoint = endpoint_of(world, record);
    let own_endpoint = || {
        endpoint
            .filter(|e| e.uid == record.pod_uid)
            .map(|e| (e.namespace.clone(), e.name.clone()))
    };
    let holds = endpoint.is_some_and(|e| e.held.contains(&(record.pool.clone(), record.ip.clone())));
    let pod = world.pods.get(&(record.namespace.clone(), record.name.clone()));

    let Some(pod) = pod else {
        let Some(ep) = endpoint else {
            return Verdict::Release {
                reason: ReleaseReason::PodGone,
                delete_endpoint: None,
            };
        };
        return match retention(
            world,
            &record.namespace,
            &record.name,
            Some((&ep.owner_kind, &ep.owner_name)),
            flags,
        ) {
            Retention::Static { valid: true } if holds => Verdict::Keep(KeepReason::Retained),
            // A retained pod's endpoint does not list this address: a leftover of an older allocation.
            Retention::Static { valid: true } => Verdict::Release {
                reason: ReleaseReason::PodGone,
                delete_endpoint: None,
            },
            Retention::Static { valid: false } => Verdict::Release {
                reason: ReleaseReason::NoLongerRetained,
                delete_endpoint: Some((ep.namespace.clone(), ep.name.clone())),
            },
            Retention::Stateless => Verdict::Release {
                reason: ReleaseReason::PodGone,
                delete_endpoint: own_endpoint(),
            },
        };
    };

    let owner = pod.owner.as_ref().map(|(k, n)| (k.as_str(), n.as_str()));
    let retention = retention(world, &record.namespace, &record.name, owner, flags);

    if pod.uid != record.pod_uid {
        // The released incarnation's endpoint goes with its record (upstream: "endpoint UID != pod
        // UID: release the endpoint"): left behind, it would claim an address the pool hands to
        // another pod.
        return match retention {
            Retention::Stateless => Verdict::Release {
                reason: ReleaseReason::PodReplaced,
                delete_endpoint: own_endpoint(),
            },
            Retention::Static { valid: false } => Verdict::Release {
                reason: ReleaseReason::NoLongerRetained,
                delete_endpoint: own_endpoint(),
            },
            // The new pod takes the endpoint's addresses over on its CNI ADD (rewriting the record's
            // UID); until then the record still names the old pod and must stay. Once the new pod has
            // IPs, an address its endpoint does not list is a leftover.
            Retention::Static { valid: true } if holds || !pod.has_ips => {
                Verdict::Keep(KeepReason::AwaitingTakeover)
            }
            Retention::Static { valid: true } => Verdict::Release {
                reason: ReleaseReason::PodReplaced,
                delete_endpoint: None,
            },
        };
    }

    if let Some((deleted_at, grace)) = pod.deletion {
        if retention == (Retention::Static { valid: true }) {
            return Verdict::Keep(KeepReason::Retained);
        }
        // Upstream waits deletionTimestamp + deletionGracePeriodSeconds + delay. The deletion
        // timestamp already includes the grace period, so this waits it twice; kept on purpose: it
        // only delays reclaiming, and releasing an address a still-running pod holds is the worse
        // mistake.
        if let Err(deadline) = past(now, deleted_at, grace, flags.additional_grace) {
            return Verdict::WaitUntil(deadline);
        }
        let node_ready = pod
            .node
            .as_ref()
            .and_then(|n| world.nodes_ready.get(n))
            .copied()
            .unwrap_or(false);
        let allowed = if node_ready {
            flags.terminating_on_ready_node
        } else {
            flags.terminating_on_not_ready_node
        };
        if !allowed {
            return Verdict::Keep(KeepReason::NodeStateFlag);
        }
        return Verdict::Release {
            reason: ReleaseReason::TerminatingPastGrace,
            delete_endpoint: own_endpoint(),
        };
    }

    match pod.phase {
        Phase::Succeeded | Phase::Failed => match retention {
            Retention::Static { valid: true } => Verdict::Keep(KeepReason::Retained),
            Retention::Static { valid: false } => Verdict::Release {
                reason: ReleaseReason::NoLongerRetained,
                delete_endpoint: own_endpoint(),
            },
            Retention::Stateless => {
                // Upstream also gates finished pods on the node-state switches; a finished pod runs
                // nothing, so its address is free whatever its node's state.
                if let Some(finished) = pod.finished_at
                    && let Err(deadline) = past(now, finished, pod.termination_grace, flags.additional_grace)
                {
                    return Verdict::WaitUntil(deadline);
                }
                Verdict::Release {
                    reason: ReleaseReason::PodFinished,
                    delete_endpoint: own_endpoint(),
                }
            }
        },
        Phase::Pending => Verdict::Keep(KeepReason::PodAlive),
        Phase::Running | Phase::Unknown if pod.has_ips => Verdict::Keep(KeepReason::PodAlive),
        Phase::Running | Phase::Unknown => match retention {
            Retention::Static { valid: true } => Verdict::Keep(KeepReason::Retained),
            Retention::Static { valid: false } => Verdict::Release {
                reason: ReleaseReason::NoLongerRetained,
                delete_endpoint: own_endpoint(),
            },
            Retention::Stateless if pod.phase == Phase::Running && flags.running_on_empty_pod_ips => {
                Verdict::Release {
                    reason: ReleaseReason::NoPodIps,
                    delete_endpoint: own_endpoint(),
                }
            }
            // Upstream releases stateless pods in phase Unknown without IPs; a pod on a lost node may
            // still run with its address, so it is kept until it is deleted.
            Retention::Stateless => Verdict::Keep(KeepReason::NoIpsButRunning),
        },
    }
}

/// Endpoints that nothing needs any more: no pool record names their pod and no existing pod is the
/// incarnation they describe. Returns `(namespace, name)`.
pub fn outdated_endpoints(world: &World, records: &[Record]) -> Vec<(String, String)> {
    let referenced: HashSet<(&str, &str)> = records
        .iter()
        .map(|r| (r.namespace.as_str(), r.name.as_str()))
        .collect();
    let referenced_uids: HashSet<&str> = records.iter().map(|r| r.pod_uid.as_str()).collect();
    let mut out: Vec<(String, String)> = world
        .endpoints
        .values()
        .filter(|e| {
            !referenced.contains(&(e.namespace.as_str(), e.name.as_str()))
                && !referenced_uids.contains(e.uid.as_str())
                && world
                    .pods
                    .get(&(e.namespace.clone(), e.name.clone()))
                    .is_none_or(|p| p.uid != e.uid)
        })
        .map(|e| (e.namespace.clone(), e.name.clone()))
        .collect();
    out.sort();
    out
}

/// What a release is about, for [`Suspects`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SuspectKey {
    /// A pod's record: pool, address and the pod UID it names.
    Record {
        /// Pool name.
        pool: String,
        /// The address.
        ip: String,
        /// The UID the record names.
        pod_uid: String,
    },
    /// A node agent's reservation: pool, address, node.
    Reservation {
        /// Pool name.
        pool: String,
        /// The address.
        ip: String,
        /// The node.
        node: String,
    },
    /// An endpoint nothing needs: namespace, name and the pod UID it describes.
    Endpoint {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The UID it describes.
        uid: String,
    },
}

impl SuspectKey {
    /// The key of a pod's record.
    pub fn record(record: &Record) -> Self {
        SuspectKey::Record {
            pool: record.pool.clone(),
            ip: record.ip.clone(),
            pod_uid: record.pod_uid.clone(),
        }
    }
}

/// What reclaim has judged releasable, and since when. One look is not enough to free an address: a
/// list may lag (a pod created a moment ago, a watch cache behind), a pod may be between
/// incarnations. A release is carried out only when a look at least `confirm_after` after the first
/// that judged it releasable judges it so again, with nothing in between judging it alive (that
/// forgets the first look); the caller then checks the pod once more right before writing.
#[derive(Debug, Clone, Default)]
pub struct Suspects {
    since: HashMap<SuspectKey, Timestamp>,
}

impl Suspects {
    /// One look at `now` judged `key` releasable: `Ok` when an earlier look did so at least
    /// `confirm_after` before, else `Err` with when the next look may confirm it.
    pub fn judged_dead(
        &mut self,
        key: SuspectKey,
        now: Timestamp,
        confirm_after: Duration,
    ) -> Result<(), Timestamp> {
        let first = *self.since.entry(key.clone()).or_insert(now);
        let confirm_at = first
            .saturating_add(SignedDuration::try_from(confirm_after).unwrap_or(SignedDuration::MAX))
            .unwrap_or(Timestamp::MAX);
        if now >= confirm_at {
            self.since.remove(&key);
            Ok(())
        } else {
            Err(confirm_at)
        }
    }

    /// A look judged `key` alive (or it is gone): the next suspicion starts afresh.
    pub fn judged_alive(&mut self, key: &SuspectKey) {
        self.since.remove(key);
    }

    /// Forgets suspicions first raised before `before` that no look confirmed or cleared since (the
    /// record went away some other way): keeps the ledger from growing.
    pub fn forget_older_than(&mut self, before: Timestamp) {
        self.since.retain(|_, since| *since >= before);
    }

    /// How many suspicions wait for confirmation.
    pub fn len(&self) -> usize {
        self.since.len()
    }

    /// Whether none does.
    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn record(name: &str, uid: &str) -> Record {
        Record {
            pool: "p".into(),
            ip: "10.0.0.5".into(),
            namespace: "ns".into(),
            name: name.into(),
            pod_uid: uid.into(),
        }
    }

    fn pod(uid: &str, phase: Phase) -> PodFacts {
        PodFacts {
            uid: uid.into(),
            phase,
            deletion: None,
            has_ips: true,
            node: Some("n1".into()),
            finished_at: None,
            termination_grace: 30,
            owner: Some(("ReplicaSet".into(), "rs".into())),
        }
    }

    fn endpoint(name: &str, uid: &str, owner_kind: &str, owner_name: &str, holds: bool) -> EndpointFacts {
        EndpointFacts {
            namespace: "ns".into(),
            name: name.into(),
            uid: uid.into(),
            owner_kind: owner_kind.into(),
            owner_name: owner_name.into(),
            held: if holds {
                HashSet::from([("p".to_string(), "10.0.0.5".to_string())])
            } else {
                HashSet::new()
            },
        }
    }

    #[test]
    fn a_release_needs_a_second_look_some_time_after_the_first_with_nothing_alive_between() {
        let mut suspects = Suspects::default();
        let key = SuspectKey::record(&record("web", "u1"));
        let gap = Duration::from_secs(15);
        assert_eq!(suspects.judged_dead(key.clone(), at(NOW), gap), Err(at(NOW + 15)));
        // Looking again too soon confirms nothing, and does not restart the clock.
        assert_eq!(
            suspects.judged_dead(key.clone(), at(NOW + 10), gap),
            Err(at(NOW + 15))
        );
        assert_eq!(suspects.judged_dead(key.clone(), at(NOW + 15), gap), Ok(()));
        assert!(suspects.is_empty());
        // A look in between that finds it alive starts over.
        assert!(suspects.judged_dead(key.clone(), at(NOW), gap).is_err());
        suspects.judged_alive(&key);
        assert_eq!(
            suspects.judged_dead(key.clone(), at(NOW + 20), gap),
            Err(at(NOW + 35))
        );
        suspects.forget_older_than(at(NOW + 21));
        assert_eq!(suspects.len(), 0);
    }

    #[test]
    fn reservations_are_released_only_when_their_node_is_gone_and_no_endpoint_lists_them() {
        let mut w = world();
        let reservation = |node: &str| Reservation {
            pool: "p".into(),
            ip: "10.0.0.5".into(),
            node: node.into(),
        };
        // Ready or not, an existing node's agent owns its reservations.
        assert!(!release_reservation(&reservation("n1"), &w));
        assert!(!release_reservation(&reservation("n2"), &w));
        assert!(release_reservation(&reservation("gone"), &w));
        w.endpoints.insert(
            ("ns".into(), "web".into()),
            endpoint("web", "u1", "ReplicaSet", "rs", true),
        );
        assert!(!release_reservation(&reservation("gone"), &w));
        assert_eq!(ReleaseReason::NodeGone.as_str(), "node_gone");
    }

    fn world() -> World {
        let mut w = World::default();
        w.nodes_ready.insert("n1".into(), true);
        w.nodes_ready.insert("n2".into(), false);
        w.statefulsets.insert(
            ("ns".into(), "db".into()),
            StatefulSetFacts { terminating: false },
        );
        w
    }

    /// StatefulSet `db` being deleted.
    fn sts_terminating(mut w: World) -> World {
        w.statefulsets
            .insert(("ns".into(), "db".into()), StatefulSetFacts { terminating: true });
        w
    }

    /// StatefulSet `db` gone.
    fn sts_gone(mut w: World) -> World {
        w.statefulsets.clear();
        w
    }

    fn with_pod(mut w: World, name: &str, p: PodFacts) -> World {
        w.pods.insert(("ns".into(), name.into()), p);
        w
    }

    fn with_endpoint(mut w: World, e: EndpointFacts) -> World {
        w.endpoints.insert((e.namespace.clone(), e.name.clone()), e);
        w
    }

    fn release(reason: ReleaseReason, endpoint: Option<&str>) -> Verdict {
        Verdict::Release {
            reason,
            delete_endpoint: endpoint.map(|n| ("ns".to_string(), n.to_string())),
        }
    }

    fn flags() -> GcFlags {
        GcFlags::default()
    }

    #[test]
    fn statefulset_retains_every_member_while_it_exists() {
        let sts = StatefulSetFacts { terminating: false };
        assert!(statefulset_retains("db-0", "db", &sts));
        assert!(statefulset_retains("db-2", "db", &sts));
        // Any ordinal, also beyond spec.replicas (scaled down, to be scaled up again).
        assert!(statefulset_retains("db-17", "db", &sts));
        assert!(!statefulset_retains("db-x", "db", &sts));
        assert!(!statefulset_retains("db-", "db", &sts));
        assert!(!statefulset_retains("dbx-0", "db", &sts));
        assert!(!statefulset_retains("other-0", "db", &sts));
        assert!(statefulset_retains("my-db-1", "my-db", &sts));
        let going = StatefulSetFacts { terminating: true };
        assert!(!statefulset_retains("db-0", "db", &going));
    }

    #[test]
    fn pod_gone() {
        let now = at(NOW);
        let r = record("web-1", "u1");
        assert_eq!(
            decide(&r, &world(), now, &flags()),
            release(ReleaseReason::PodGone, None)
        );
        // Stateless endpoint of the same incarnation goes with it; one of another incarnation stays.
        let w = with_endpoint(world(), endpoint("web-1", "u1", "ReplicaSet", "rs", true));
        assert_eq!(
            decide(&r, &w, now, &flags()),
            release(ReleaseReason::PodGone, Some("web-1"))
        );
        let w = with_endpoint(world(), endpoint("web-1", "u0", "ReplicaSet", "rs", false));
        assert_eq!(
            decide(&r, &w, now, &flags()),
            release(ReleaseReason::PodGone, None)
        );
    }

    #[test]
    fn statefulset_pod_gone() {
        let now = at(NOW);
        let valid = with_endpoint(world(), endpoint("db-1", "u1", "StatefulSet", "db", true));
        assert_eq!(
            decide(&record("db-1", "u1"), &valid, now, &flags()),
            Verdict::Keep(KeepReason::Retained)
        );
        // Address not listed by the endpoint: leftover.
        let stale = with_endpoint(world(), endpoint("db-1", "u1", "StatefulSet", "db", false));
        assert_eq!(
            decide(&record("db-1", "u1"), &stale, now, &flags()),
            release(ReleaseReason::PodGone, None)
        );
        // Scaled down (the pod of a high ordinal is gone, the set still exists): kept, unlike upstream,
        // so that scaling up again gives the member its address back.
        let scaled = with_endpoint(world(), endpoint("db-7", "u7", "StatefulSet", "db", true));
        assert_eq!(
            decide(&record("db-7", "u7"), &scaled, now, &flags()),
            Verdict::Keep(KeepReason::Retained)
        );
        // StatefulSet being deleted, or deleted: released with the endpoint.
        assert_eq!(
            decide(&record("db-7", "u7"), &sts_terminating(scaled), now, &flags()),
            release(ReleaseReason::NoLongerRetained, Some("db-7"))
        );
        assert_eq!(
            decide(&record("db-1", "u1"), &sts_gone(valid.clone()), now, &flags()),
            release(ReleaseReason::NoLongerRetained, Some("db-1"))
        );
        // Feature off: treated as stateless.
        let off = GcFlags {
            statefulset: false,
            ..flags()
        };
        assert_eq!(
            decide(&record("db-1", "u1"), &valid, now, &off),
            release(ReleaseReason::PodGone, Some("db-1"))
        );
    }

    #[test]
    fn kubevirt_endpoint_found_by_uid() {
        let now = at(NOW);
        let mut w = with_endpoint(
            world(),
            endpoint("vm1", "u1", "VirtualMachineInstance", "vm1", true),
        );
        let r = record("virt-launcher-vm1-abc", "u1");
        assert_eq!(
            decide(&r, &w, now, &flags()),
            release(ReleaseReason::NoLongerRetained, Some("vm1"))
        );
        w.kubevirt_vms.insert(("ns".into(), "vm1".into()));
        assert_eq!(decide(&r, &w, now, &flags()), Verdict::Keep(KeepReason::Retained));
        // The node daemon records the top controller: the VM.
        let mut by_vm = with_endpoint(world(), endpoint("vm1", "u1", "VirtualMachine", "vm1", true));
        assert_eq!(
            decide(&r, &by_vm, now, &flags()),
            release(ReleaseReason::NoLongerRetained, Some("vm1"))
        );
        by_vm.kubevirt_vms.insert(("ns".into(), "vm1".into()));
        assert_eq!(
            decide(&r, &by_vm, now, &flags()),
            Verdict::Keep(KeepReason::Retained)
        );
        let off = GcFlags {
            kubevirt: false,
            ..flags()
        };
        assert_eq!(
            decide(&r, &w, now, &off),
            release(ReleaseReason::PodGone, Some("vm1"))
        );
    }

    #[test]
    fn replaced_pods() {
        let now = at(NOW);
        let w = with_pod(world(), "web-1", pod("u2", Phase::Running));
        assert_eq!(
            decide(&record("web-1", "u1"), &w, now, &flags()),
            release(ReleaseReason::PodReplaced, None)
        );
        // StatefulSet pod recreated, not yet through CNI ADD: keep.
        let mut new_pod = pod("u2", Phase::Pending);
        new_pod.owner = Some(("StatefulSet".into(), "db".into()));
        new_pod.has_ips = false;
        let w = with_endpoint(
            with_pod(world(), "db-1", new_pod.clone()),
            endpoint("db-1", "u1", "StatefulSet", "db", true),
        );
        assert_eq!(
            decide(&record("db-1", "u1"), &w, now, &flags()),
            Verdict::Keep(KeepReason::AwaitingTakeover)
        );
        // Running with IPs and the endpoint holds the address: still the pod's.
        let mut running = new_pod.clone();
        running.has_ips = true;
        running.phase = Phase::Running;
        let w2 = with_endpoint(
            with_pod(world(), "db-1", running.clone()),
            endpoint("db-1", "u2", "StatefulSet", "db", true),
        );
        assert_eq!(
            decide(&record("db-1", "u1"), &w2, now, &flags()),
            Verdict::Keep(KeepReason::AwaitingTakeover)
        );
        // Running with IPs and the endpoint does not hold it: leftover.
        let w3 = with_endpoint(
            with_pod(world(), "db-1", running),
            endpoint("db-1", "u2", "StatefulSet", "db", false),
        );
        assert_eq!(
            decide(&record("db-1", "u1"), &w3, now, &flags()),
            release(ReleaseReason::PodReplaced, None)
        );
        // A member beyond spec.replicas (scaled up again) also awaits its takeover.
        let w4 = with_pod(world(), "db-5", new_pod);
        assert_eq!(
            decide(&record("db-5", "u1"), &w4, now, &flags()),
            Verdict::Keep(KeepReason::AwaitingTakeover)
        );
        // The StatefulSet is being deleted: nothing is retained.
        assert_eq!(
            decide(&record("db-5", "u1"), &sts_terminating(w4), now, &flags()),
            release(ReleaseReason::NoLongerRetained, None)
        );
    }

    #[test]
    fn a_released_incarnations_own_endpoint_goes_with_its_record() {
        // Issue 13: a pod force-deleted and recreated under its name; its old sandbox's DEL left
        // the old endpoint. Releasing the old record without it left an endpoint claiming an
        // address the pool then gave to another pod.
        let now = at(NOW);
        let replaced = |ep_uid: &str| {
            with_endpoint(
                with_pod(world(), "web-1", pod("u2", Phase::Pending)),
                endpoint("web-1", ep_uid, "Pod", "web-1", true),
            )
        };
        assert_eq!(
            decide(&record("web-1", "u1"), &replaced("u1"), now, &flags()),
            release(ReleaseReason::PodReplaced, Some("web-1"))
        );
        // The new pod's endpoint is not the released incarnation's.
        assert_eq!(
            decide(&record("web-1", "u1"), &replaced("u2"), now, &flags()),
            release(ReleaseReason::PodReplaced, None)
        );
        // A StatefulSet being deleted, its member recreated: the old member's endpoint goes too.
        let mut member = pod("u2", Phase::Pending);
        member.owner = Some(("StatefulSet".into(), "db".into()));
        let w = with_endpoint(
            with_pod(sts_terminating(world()), "db-1", member),
            endpoint("db-1", "u1", "StatefulSet", "db", true),
        );
        assert_eq!(
            decide(&record("db-1", "u1"), &w, now, &flags()),
            release(ReleaseReason::NoLongerRetained, Some("db-1"))
        );
        // A Running pod without IPs, released by the switch: its endpoint goes first.
        let mut no_ips = pod("u1", Phase::Running);
        no_ips.has_ips = false;
        let w = with_endpoint(
            with_pod(world(), "web-1", no_ips),
            endpoint("web-1", "u1", "ReplicaSet", "rs", true),
        );
        let on = GcFlags {
            running_on_empty_pod_ips: true,
            ..flags()
        };
        assert_eq!(
            decide(&record("web-1", "u1"), &w, now, &on),
            release(ReleaseReason::NoPodIps, Some("web-1"))
        );
    }

    #[test]
    fn terminating_pods_wait_for_grace_and_node_flags() {
        let mut p = pod("u1", Phase::Running);
        p.deletion = Some((at(NOW - 10), 30));
        let w = with_endpoint(
            with_pod(world(), "web-1", p.clone()),
            endpoint("web-1", "u1", "ReplicaSet", "rs", true),
        );
        let r = record("web-1", "u1");
        assert_eq!(
            decide(&r, &w, at(NOW), &flags()),
            Verdict::WaitUntil(at(NOW + 20))
        );
        let delayed = GcFlags {
            additional_grace: Duration::from_secs(5),
            ..flags()
        };
        assert_eq!(
            decide(&r, &w, at(NOW), &delayed),
            Verdict::WaitUntil(at(NOW + 25))
        );
        assert_eq!(
            decide(&r, &w, at(NOW + 20), &flags()),
            release(ReleaseReason::TerminatingPastGrace, Some("web-1"))
        );
        let no_ready = GcFlags {
            terminating_on_ready_node: false,
            ..flags()
        };
        assert_eq!(
            decide(&r, &w, at(NOW + 20), &no_ready),
            Verdict::Keep(KeepReason::NodeStateFlag)
        );
        // NotReady node (and a pod on no node) follow the other switch.
        let mut on_bad = p.clone();
        on_bad.node = Some("n2".into());
        let w_bad = with_pod(world(), "web-1", on_bad);
        assert_eq!(
            decide(&r, &w_bad, at(NOW + 20), &no_ready),
            release(ReleaseReason::TerminatingPastGrace, None)
        );
        let no_not_ready = GcFlags {
            terminating_on_not_ready_node: false,
            ..flags()
        };
        assert_eq!(
            decide(&r, &w_bad, at(NOW + 20), &no_not_ready),
            Verdict::Keep(KeepReason::NodeStateFlag)
        );
        let mut unbound = p;
        unbound.node = None;
        let w_unbound = with_pod(world(), "web-1", unbound);
        assert_eq!(
            decide(&r, &w_unbound, at(NOW + 20), &no_not_ready),
            Verdict::Keep(KeepReason::NodeStateFlag)
        );
        // A valid StatefulSet member being deleted keeps its address.
        let mut member = pod("u1", Phase::Running);
        member.owner = Some(("StatefulSet".into(), "db".into()));
        member.deletion = Some((at(0), 0));
        let w = with_pod(world(), "db-0", member.clone());
        assert_eq!(
            decide(&record("db-0", "u1"), &w, at(NOW), &flags()),
            Verdict::Keep(KeepReason::Retained)
        );
        // So does a member beyond spec.replicas (scale-down deletes it).
        let w = with_pod(world(), "db-9", member);
        assert_eq!(
            decide(&record("db-9", "u1"), &w, at(NOW), &flags()),
            Verdict::Keep(KeepReason::Retained)
        );
        // Members of a StatefulSet being deleted are released past grace.
        assert_eq!(
            decide(&record("db-9", "u1"), &sts_terminating(w), at(NOW), &flags()),
            release(ReleaseReason::TerminatingPastGrace, None)
        );
    }

    #[test]
    fn finished_pods() {
        let r = record("job-1", "u1");
        let mut p = pod("u1", Phase::Succeeded);
        p.finished_at = Some(at(NOW - 40));
        let w = with_endpoint(
            with_pod(world(), "job-1", p.clone()),
            endpoint("job-1", "u1", "Job", "j", true),
        );
        assert_eq!(
            decide(&r, &w, at(NOW), &flags()),
            release(ReleaseReason::PodFinished, Some("job-1"))
        );
        assert_eq!(
            decide(&r, &w, at(NOW - 20), &flags()),
            Verdict::WaitUntil(at(NOW - 10))
        );
        p.finished_at = None;
        p.phase = Phase::Failed;
        let w = with_pod(world(), "job-1", p);
        assert_eq!(
            decide(&r, &w, at(NOW), &flags()),
            release(ReleaseReason::PodFinished, None)
        );
        // Finished StatefulSet members are restarted by their controller: keep.
        let mut member = pod("u1", Phase::Failed);
        member.owner = Some(("StatefulSet".into(), "db".into()));
        let w = with_pod(world(), "db-1", member.clone());
        assert_eq!(
            decide(&record("db-1", "u1"), &w, at(NOW), &flags()),
            Verdict::Keep(KeepReason::Retained)
        );
        let w = with_pod(world(), "db-4", member);
        assert_eq!(
            decide(&record("db-4", "u1"), &w, at(NOW), &flags()),
            Verdict::Keep(KeepReason::Retained)
        );
        assert_eq!(
            decide(&record("db-4", "u1"), &sts_gone(w), at(NOW), &flags()),
            release(ReleaseReason::NoLongerRetained, None)
        );
    }

    #[test]
    fn live_pods_keep_their_addresses() {
        let r = record("web-1", "u1");
        for phase in [Phase::Pending, Phase::Running, Phase::Unknown] {
            let w = with_pod(world(), "web-1", pod("u1", phase));
            assert_eq!(
                decide(&r, &w, at(NOW), &flags()),
                Verdict::Keep(KeepReason::PodAlive),
                "{phase:?}"
            );
        }
        let mut pending = pod("u1", Phase::Pending);
        pending.has_ips = false;
        let w = with_pod(world(), "web-1", pending);
        assert_eq!(
            decide(&r, &w, at(NOW), &flags()),
            Verdict::Keep(KeepReason::PodAlive)
        );

        let mut no_ips = pod("u1", Phase::Running);
        no_ips.has_ips = false;
        let w = with_pod(world(), "web-1", no_ips.clone());
        assert_eq!(
            decide(&r, &w, at(NOW), &flags()),
            Verdict::Keep(KeepReason::NoIpsButRunning)
        );
        let on = GcFlags {
            running_on_empty_pod_ips: true,
            ..flags()
        };
        assert_eq!(
            decide(&r, &w, at(NOW), &on),
            release(ReleaseReason::NoPodIps, None)
        );
        let mut unknown = no_ips.clone();
        unknown.phase = Phase::Unknown;
        let w = with_pod(world(), "web-1", unknown);
        assert_eq!(
            decide(&r, &w, at(NOW), &on),
            Verdict::Keep(KeepReason::NoIpsButRunning)
        );

        let mut member = no_ips;
        member.owner = Some(("StatefulSet".into(), "db".into()));
        let w = with_pod(world(), "db-0", member.clone());
        assert_eq!(
            decide(&record("db-0", "u1"), &w, at(NOW), &flags()),
            Verdict::Keep(KeepReason::Retained)
        );
        let w = with_pod(world(), "db-7", member);
        assert_eq!(
            decide(&record("db-7", "u1"), &w, at(NOW), &flags()),
            Verdict::Keep(KeepReason::Retained)
        );
        assert_eq!(
            decide(&record("db-7", "u1"), &sts_terminating(w), at(NOW), &flags()),
            release(ReleaseReason::NoLongerRetained, None)
        );
    }

    #[test]
    fn outdated_endpoint_rules() {
        let w = with_endpoint(world(), endpoint("orphan", "u9", "ReplicaSet", "rs", true));
        let w = with_endpoint(w, endpoint("referenced", "u1", "ReplicaSet", "rs", true));
        let w = with_endpoint(w, endpoint("claimed", "u3", "ReplicaSet", "rs", true));
        let w = with_endpoint(w, endpoint("stale", "u4", "ReplicaSet", "rs", true));
        let w = with_endpoint(w, endpoint("vm1", "u5", "VirtualMachineInstance", "vm1", true));
        let w = with_pod(w, "claimed", pod("u3", Phase::Running));
        let w = with_pod(w, "stale", pod("u4-new", Phase::Running));
        let records = vec![record("referenced", "u1"), record("virt-launcher-vm1", "u5")];
        assert_eq!(
            outdated_endpoints(&w, &records),
            vec![
                ("ns".to_string(), "orphan".to_string()),
                ("ns".to_string(), "stale".to_string())
            ]
        );
    }

    #[test]
    fn reasons_have_stable_names() {
        assert_eq!(ReleaseReason::PodGone.as_str(), "pod_gone");
        assert_eq!(
            ReleaseReason::TerminatingPastGrace.as_str(),
            "terminating_past_grace"
        );
    }
}
