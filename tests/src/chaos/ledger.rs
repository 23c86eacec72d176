//! The ledger: what each sandbox was given, as the CNI answers said, and the invariants checked
//! against it. Pure: the workload feeds it events in the order they happened, and a snapshot of the
//! API server's pools and endpoints is checked against it with the event sequence numbers that
//! bracket the snapshot's reads.
//!
//! A sandbox (a `CNI_CONTAINERID`) is *live* from its successful ADD until its DEL starts: CNI lets
//! the plugin release on DEL, and the runtime calls DEL only once the sandbox's containers are
//! gone. An address is held by at most one live sandbox, except by two incarnations of the same
//! StatefulSet member (its name is its identity: it keeps its addresses by design).
//!
//! A pod that is force-deleted while its sandbox lives leaves an *orphan*: the API says the pod is
//! gone, the node tears the sandbox down on its own time, and no IPAM can know when. Its addresses
//! are no longer protected from the moment of the force delete (reclaim may free them, another pod
//! may get them); such a reuse before the orphan's DEL is counted ([`Ledger::orphan_reuses`]), not
//! judged. How soon a freed address may be handed out again is the daemon's release cooldown.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// Who an address belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Identity {
    /// An ordinary pod: its UID.
    Pod(String),
    /// A StatefulSet member: `namespace/name`, whatever its UID.
    Member(String),
}

/// The pod a sandbox belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    /// A StatefulSet member (keeps its addresses across incarnations).
    pub member: bool,
}

impl PodRef {
    /// Who its addresses belong to.
    pub fn identity(&self) -> Identity {
        if self.member {
            Identity::Member(format!("{}/{}", self.namespace, self.name))
        } else {
            Identity::Pod(self.uid.clone())
        }
    }
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    /// ADD running.
    Adding,
    /// ADD succeeded; no DEL yet.
    Live,
    /// ADD failed: the runtime must DEL it.
    Failed,
    /// DEL started (maybe failed and to be retried).
    Releasing,
    /// DEL succeeded.
    Gone,
}

/// One sandbox.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub container: String,
    pub pod: PodRef,
    pub state: SandboxState,
    /// Addresses by interface, from the first successful ADD.
    pub addresses: Vec<IpAddr>,
    /// Event number of the first successful ADD.
    pub live_since: u64,
    /// Event number of the first DEL.
    pub released_at: Option<u64>,
    /// Event number of its pod's force delete, while the sandbox was live (see the module docs).
    pub orphaned_at: Option<u64>,
}

impl Sandbox {
    /// Live and holding its addresses at every moment between events `from` and `to`.
    fn live_throughout(&self, from: u64, to: u64) -> bool {
        matches!(
            self.state,
            SandboxState::Live | SandboxState::Releasing | SandboxState::Gone
        ) && self.live_since < from
            && self.released_at.is_none_or(|at| at > to)
            && self.orphaned_at.is_none_or(|at| at > to)
    }
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Short name of the invariant.
    pub invariant: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

/// One record of a pool's `status.allocatedIPs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRecord {
    pub pool: String,
    /// `podUid`; empty for a node reservation.
    pub pod_uid: String,
    /// `reservedForNode`.
    pub reserved_for: Option<String>,
}

/// One SpiderEndpoint's claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointClaim {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub addresses: Vec<IpAddr>,
}

/// What the API server said, read between two ledger events.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every record of the pools under test, by address.
    pub records: BTreeMap<IpAddr, PoolRecord>,
    /// Every endpoint of the namespaces under test.
    pub endpoints: Vec<EndpointClaim>,
}

/// Everything the workload did, and the invariants broken so far.
#[derive(Debug, Default)]
pub struct Ledger {
    sandboxes: BTreeMap<String, Sandbox>,
    /// Live sandboxes by address.
    holders: BTreeMap<IpAddr, BTreeSet<String>>,
    /// The first addresses each StatefulSet member was given.
    members: BTreeMap<String, Vec<IpAddr>>,
    /// Orphans (see the module docs) by address, until their DEL starts.
    orphans: BTreeMap<IpAddr, BTreeSet<String>>,
    orphan_reuses: u64,
    events: u64,
    violations: Vec<Violation>,
}

impl Ledger {
    /// The number of the last event; a snapshot read after this call sees at least its effects.
    pub fn now(&self) -> u64 {
        self.events
    }

    fn tick(&mut self) -> u64 {
        self.events += 1;
        self.events
    }

    fn violate(&mut self, invariant: &'static str, detail: String) {
        self.violations.push(Violation { invariant, detail });
    }

    /// Every violation found so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// A sandbox by container id.
    pub fn sandbox(&self, container: &str) -> Option<&Sandbox> {
        self.sandboxes.get(container)
    }

    /// Sandboxes that are live now.
    pub fn live(&self) -> impl Iterator<Item = &Sandbox> {
        self.sandboxes.values().filter(|s| s.state == SandboxState::Live)
    }

    /// Sandboxes whose DEL has not succeeded yet (live, failed, releasing, adding).
    pub fn not_gone(&self) -> impl Iterator<Item = &Sandbox> {
        self.sandboxes.values().filter(|s| s.state != SandboxState::Gone)
    }

    /// An ADD of a new sandbox starts.
    pub fn add_started(&mut self, container: &str, pod: PodRef) {
        self.tick();
        self.sandboxes
            .entry(container.to_owned())
            .or_insert_with(|| Sandbox {
                container: container.to_owned(),
                pod,
                state: SandboxState::Adding,
                addresses: Vec::new(),
                live_since: 0,
                released_at: None,
                orphaned_at: None,
            });
    }

    /// An ADD (first or repeated) answered these addresses.
    pub fn add_succeeded(&mut self, container: &str, addresses: Vec<IpAddr>) {
        let now = self.tick();
        let Some(sandbox) = self.sandboxes.get(container).cloned() else {
            self.violate("ledger", format!("ADD answered for unknown sandbox {container}"));
            return;
        };
        let who = format!("{}/{} ({container})", sandbox.pod.namespace, sandbox.pod.name);
        match sandbox.state {
            SandboxState::Live => {
                if sorted(&addresses) != sorted(&sandbox.addresses) {
                    self.violate(
                        "ADD again gives the same answer",
                        format!("{who}: first {:?}, now {addresses:?}", sandbox.addresses),
                    );
                }
                return;
            }
            SandboxState::Adding => {}
            other => {
                self.violate("ledger", format!("ADD answered for {who} in state {other:?}"));
                return;
            }
        }
        if addresses.is_empty() {
            self.violate("ADD answers an address", format!("{who}: no address"));
        }
        let identity = sandbox.pod.identity();
        for ip in &addresses {
            let others: Vec<String> = self
                .holders
                .get(ip)
                .into_iter()
                .flatten()
                .filter(|other| {
                    self.sandboxes
                        .get(*other)
                        .is_some_and(|o| o.pod.identity() != identity)
                })
                .map(|other| {
                    let o = &self.sandboxes[other];
                    format!("{}/{} ({other}, uid {})", o.pod.namespace, o.pod.name, o.pod.uid)
                })
                .collect();
            if !others.is_empty() {
                self.violate(
                    "no address held by two live sandboxes",
                    format!(
                        "{ip} given to {who} (uid {}) while {} holds it",
                        sandbox.pod.uid,
                        others.join(", ")
                    ),
                );
            }
        }
        for ip in &addresses {
            let reused = self.orphans.get(ip).is_some_and(|orphans| {
                orphans.iter().any(|o| {
                    self.sandboxes
                        .get(o)
                        .is_some_and(|o| o.pod.identity() != identity)
                })
            });
            if reused {
                self.orphan_reuses += 1;
            }
        }
        if let Identity::Member(name) = &identity {
            match self.members.get(name) {
                Some(first) if sorted(first) != sorted(&addresses) => {
                    let first = first.clone();
                    self.violate(
                        "StatefulSet addresses kept",
                        format!("{name}: first {first:?}, now {addresses:?} ({container})"),
                    );
                }
                Some(_) => {}
                None => {
                    self.members.insert(name.clone(), addresses.clone());
                }
            }
        }
        let holders = if sandbox.orphaned_at.is_some() {
            &mut self.orphans
        } else {
            &mut self.holders
        };
        for ip in &addresses {
            holders.entry(*ip).or_default().insert(container.to_owned());
        }
        if let Some(s) = self.sandboxes.get_mut(container) {
            s.state = SandboxState::Live;
            s.addresses = addresses;
            s.live_since = now;
        }
    }

    /// An ADD failed: the runtime will DEL the sandbox. A repeated ADD that fails leaves the
    /// sandbox live (the runtime tears it down with a DEL next).
    pub fn add_failed(&mut self, container: &str) {
        self.tick();
        if let Some(s) = self.sandboxes.get_mut(container)
            && s.state == SandboxState::Adding
        {
            s.state = SandboxState::Failed;
        }
    }

    /// A DEL (first or repeated) starts: from now on the sandbox holds nothing.
    pub fn del_started(&mut self, container: &str) {
        let now = self.tick();
        let Some(sandbox) = self.sandboxes.get_mut(container) else {
            return;
        };
        if sandbox.released_at.is_none() {
            sandbox.released_at = Some(now);
        }
        if matches!(
            sandbox.state,
            SandboxState::Live | SandboxState::Failed | SandboxState::Adding
        ) {
            sandbox.state = SandboxState::Releasing;
        }
        let addresses = sandbox.addresses.clone();
        for ip in addresses {
            forget(&mut self.holders, ip, container);
            forget(&mut self.orphans, ip, container);
        }
    }

    /// A pod was force-deleted: its sandboxes that are not released yet become orphans.
    pub fn pod_force_deleted(&mut self, uid: &str) {
        let now = self.tick();
        let orphaned: Vec<String> = self
            .sandboxes
            .values()
            .filter(|s| {
                s.pod.uid == uid && !s.pod.member && s.released_at.is_none() && s.orphaned_at.is_none()
            })
            .map(|s| s.container.clone())
            .collect();
        for container in orphaned {
            let Some(sandbox) = self.sandboxes.get_mut(&container) else {
                continue;
            };
            sandbox.orphaned_at = Some(now);
            for ip in sandbox.addresses.clone() {
                forget(&mut self.holders, ip, &container);
                self.orphans.entry(ip).or_default().insert(container.clone());
            }
        }
    }

    /// Addresses given to another pod while an orphan holding them had not been DELed yet.
    pub fn orphan_reuses(&self) -> u64 {
        self.orphan_reuses
    }

    /// A DEL succeeded.
    pub fn del_succeeded(&mut self, container: &str) {
        self.tick();
        if let Some(s) = self.sandboxes.get_mut(container) {
            s.state = SandboxState::Gone;
        }
    }

    /// The first addresses of every StatefulSet member.
    pub fn members(&self) -> &BTreeMap<String, Vec<IpAddr>> {
        &self.members
    }

    /// Checks a snapshot read after event `from` and finished before event `to` (both from
    /// [`Ledger::now`]): every address a sandbox live throughout holds is recorded for its pod or
    /// reserved for its node, and no endpoint claims an address such a sandbox of another pod
    /// holds. Returns (and keeps) what it found.
    pub fn check_snapshot(&mut self, snapshot: &Snapshot, from: u64, to: u64) -> Vec<Violation> {
        let mut found = Vec::new();
        let stable: Vec<&Sandbox> = self
            .sandboxes
            .values()
            .filter(|s| s.live_throughout(from, to))
            .collect();
        let mut stable_holder: BTreeMap<IpAddr, &Sandbox> = BTreeMap::new();
        for sandbox in &stable {
            for ip in &sandbox.addresses {
                stable_holder.insert(*ip, sandbox);
                let who = format!(
                    "{}/{} ({}, uid {}, node {})",
                    sandbox.pod.namespace,
                    sandbox.pod.name,
                    sandbox.container,
                    sandbox.pod.uid,
                    sandbox.pod.node
                );
                match snapshot.records.get(ip) {
                    None => found.push(Violation {
                        invariant: "every handed-out address recorded",
                        detail: format!("{ip} of {who} has no record in its pool"),
                    }),
                    Some(record) if record.pod_uid == sandbox.pod.uid => {}
                    Some(record) if record.reserved_for.as_deref() == Some(sandbox.pod.node.as_str()) => {}
                    Some(record) => found.push(Violation {
                        invariant: "every handed-out address recorded",
                        detail: format!("{ip} of {who} is recorded in {} as {record:?}", record.pool),
                    }),
                }
            }
        }
        for endpoint in &snapshot.endpoints {
            for ip in &endpoint.addresses {
                let Some(holder) = stable_holder.get(ip) else {
                    continue;
                };
                let same = if holder.pod.member {
                    holder.pod.namespace == endpoint.namespace && holder.pod.name == endpoint.name
                } else {
                    holder.pod.uid == endpoint.uid
                };
                if !same {
                    found.push(Violation {
                        invariant: "no endpoint claims another's address",
                        detail: format!(
                            "SpiderEndpoint {}/{} (uid {}) claims {ip}, held by {}/{} ({}, uid {})",
                            endpoint.namespace,
                            endpoint.name,
                            endpoint.uid,
                            holder.pod.namespace,
                            holder.pod.name,
                            holder.container,
                            holder.pod.uid
                        ),
                    });
                }
            }
        }
        self.violations.extend(found.iter().cloned());
        found
    }

    /// Records a violation found outside the ledger (a wedged writer, a leak at the end).
    pub fn report(&mut self, invariant: &'static str, detail: String) {
        self.violate(invariant, detail);
    }
}

fn forget(holders: &mut BTreeMap<IpAddr, BTreeSet<String>>, ip: IpAddr, container: &str) {
    if let Some(set) = holders.get_mut(&ip) {
        set.remove(container);
        if set.is_empty() {
            holders.remove(&ip);
        }
    }
}

fn sorted(ips: &[IpAddr]) -> Vec<IpAddr> {
    let mut ips = ips.to_vec();
    ips.sort();
    ips
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn pod(name: &str, uid: &str, member: bool) -> PodRef {
        PodRef {
            namespace: "ns".into(),
            name: name.into(),
            uid: uid.into(),
            node: "n1".into(),
            member,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn invariants(ledger: &Ledger) -> Vec<&'static str> {
        ledger.violations().iter().map(|v| v.invariant).collect()
    }

    #[test]
    fn an_address_given_twice_is_caught_unless_the_first_sandbox_is_being_deleted() {
        let mut ledger = Ledger::default();
        ledger.add_started("c1", pod("a", "u1", false));
        ledger.add_succeeded("c1", vec![ip("10.0.0.1")]);
        ledger.add_started("c2", pod("b", "u2", false));
        ledger.add_succeeded("c2", vec![ip("10.0.0.1")]);
        assert_eq!(invariants(&ledger), ["no address held by two live sandboxes"]);

        let mut ledger = Ledger::default();
        ledger.add_started("c1", pod("a", "u1", false));
        ledger.add_succeeded("c1", vec![ip("10.0.0.1")]);
        ledger.del_started("c1");
        ledger.add_started("c2", pod("b", "u2", false));
        ledger.add_succeeded("c2", vec![ip("10.0.0.1")]);
        assert!(ledger.violations().is_empty(), "{:?}", ledger.violations());
    }

    #[test]
    fn a_force_deleted_pods_sandbox_is_an_orphan_whose_addresses_may_go_again() {
        let mut ledger = Ledger::default();
        ledger.add_started("c1", pod("a", "u1", false));
        ledger.add_succeeded("c1", vec![ip("10.0.0.1")]);
        ledger.pod_force_deleted("u1");
        let from = ledger.now();
        ledger.add_started("c2", pod("a", "u2", false));
        ledger.add_succeeded("c2", vec![ip("10.0.0.1")]);
        assert!(ledger.violations().is_empty(), "{:?}", ledger.violations());
        assert_eq!(ledger.orphan_reuses(), 1);
        // Nor is the orphan judged by a snapshot.
        assert!(ledger.check_snapshot(&Snapshot::default(), from, from).is_empty());
        // A pod that is not force-deleted keeps its protection.
        ledger.add_started("c3", pod("b", "u3", false));
        ledger.add_succeeded("c3", vec![ip("10.0.0.1")]);
        assert_eq!(invariants(&ledger), ["no address held by two live sandboxes"]);
    }

    #[test]
    fn a_repeated_add_must_give_the_same_addresses() {
        let mut ledger = Ledger::default();
        ledger.add_started("c1", pod("a", "u1", false));
        ledger.add_succeeded("c1", vec![ip("10.0.0.1"), ip("fd00::1")]);
        ledger.add_succeeded("c1", vec![ip("fd00::1"), ip("10.0.0.1")]);
        assert!(ledger.violations().is_empty());
        ledger.add_succeeded("c1", vec![ip("10.0.0.2")]);
        assert_eq!(invariants(&ledger), ["ADD again gives the same answer"]);
    }

    #[test]
    fn statefulset_members_keep_their_addresses_and_may_overlap_with_their_predecessor() {
        let mut ledger = Ledger::default();
        ledger.add_started("c1", pod("sts-0", "u1", true));
        ledger.add_succeeded("c1", vec![ip("10.0.0.1")]);
        ledger.add_started("c2", pod("sts-0", "u2", true));
        ledger.add_succeeded("c2", vec![ip("10.0.0.1")]);
        assert!(ledger.violations().is_empty(), "{:?}", ledger.violations());
        ledger.add_started("c3", pod("sts-0", "u3", true));
        ledger.add_succeeded("c3", vec![ip("10.0.0.9")]);
        assert_eq!(invariants(&ledger), ["StatefulSet addresses kept"]);
    }

    #[test]
    fn a_snapshot_must_record_what_stable_sandboxes_hold() {
        let mut ledger = Ledger::default();
        ledger.add_started("c1", pod("a", "u1", false));
        ledger.add_succeeded("c1", vec![ip("10.0.0.1")]);
        ledger.add_started("c2", pod("b", "u2", false));
        ledger.add_succeeded("c2", vec![ip("10.0.0.2")]);
        ledger.add_started("c3", pod("c", "u3", false));
        ledger.add_succeeded("c3", vec![ip("10.0.0.3")]);
        let from = ledger.now();
        // c3's DEL starts while the snapshot is read: its record may be gone.
        ledger.del_started("c3");
        let to = ledger.now();
        let mut snapshot = Snapshot::default();
        snapshot.records.insert(
            ip("10.0.0.1"),
            PoolRecord {
                pool: "p".into(),
                pod_uid: "u1".into(),
                reserved_for: None,
            },
        );
        // Handed out from the node's reservation, not yet recorded for the pod: fine.
        snapshot.records.insert(
            ip("10.0.0.2"),
            PoolRecord {
                pool: "p".into(),
                pod_uid: String::new(),
                reserved_for: Some("n1".into()),
            },
        );
        assert!(ledger.check_snapshot(&snapshot, from, to).is_empty());
        // The same address reserved for another node, or recorded for another pod, is not.
        snapshot.records.get_mut(&ip("10.0.0.2")).unwrap().reserved_for = Some("n2".into());
        snapshot.records.remove(&ip("10.0.0.1"));
        snapshot.endpoints.push(EndpointClaim {
            namespace: "ns".into(),
            name: "old".into(),
            uid: "u0".into(),
            addresses: vec![ip("10.0.0.1")],
        });
        let found: Vec<&str> = ledger
            .check_snapshot(&snapshot, from, to)
            .iter()
            .map(|v| v.invariant)
            .collect();
        assert_eq!(
            found,
            [
                "every handed-out address recorded",
                "every handed-out address recorded",
                "no endpoint claims another's address"
            ]
        );
    }

    #[test]
    fn a_sandbox_that_became_live_during_the_read_is_not_judged() {
        let mut ledger = Ledger::default();
        let from = ledger.now();
        ledger.add_started("c1", pod("a", "u1", false));
        ledger.add_succeeded("c1", vec![ip("10.0.0.1")]);
        let to = ledger.now();
        assert!(ledger.check_snapshot(&Snapshot::default(), from, to).is_empty());
        let later = ledger.now() + 1;
        assert_eq!(ledger.check_snapshot(&Snapshot::default(), later, later).len(), 1);
    }
}
