//! The SpiderNetwork status the controller writes, built without I/O.
//!
//! Conditions follow kstatus (what Argo CD and Flux read): `Ready`, `Reconciling` and `Stalled`, each
//! with `observedGeneration`. A condition keeps its `lastTransitionTime` while its status stays the same,
//! so an unchanged situation renders an identical status and no write happens.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use spiderpool_schema::interfacetask::TaskPhase;
use spiderpool_schema::network::{NodeFailure, NodeRollout, RenderedCounts};
use spiderpool_schema::rollout::RolloutProgress;
use spiderpool_schema::validation::Problem;
use spiderpool_schema::{SpiderInterfaceTask, SpiderNetworkStatus};

/// How many failed nodes the status names.
const MAX_LISTED_FAILURES: usize = 20;

/// What the reconcile came to, which decides the conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new generation is being applied (written when a reconcile of it starts).
    Progressing,
    /// The spec (or the spec with the live nodes) has problems; nothing was changed in the cluster.
    Invalid,
    /// Applying would remove allocated addresses from a pool; nothing was changed in the cluster.
    AddressesInUse,
    /// Some objects could not be applied because objects that are not ours hold their names.
    NameConflict,
    /// Some writes failed (the message says which); they are retried.
    ApplyFailed(String),
    /// Objects being deleted stand in the way; retried once they are gone.
    WaitingForDeletion,
    /// Everything rendered is applied.
    Applied,
}

/// Everything the status is built from.
#[derive(Debug)]
pub struct StatusInput<'a> {
    /// `metadata.generation` of the SpiderNetwork reconciled.
    pub generation: Option<i64>,
    /// What happened.
    pub outcome: Outcome,
    /// Problems to list (spec paths).
    pub problems: Vec<Problem>,
    /// Objects rendered, by kind (absent when nothing could be rendered).
    pub counts: Option<RenderedCounts>,
    /// Interface task rollout (absent when nothing could be rendered).
    pub nodes: Option<NodeRollout>,
    /// The bounded rollout's progress (see `rollout.rs`).
    pub rollout: Option<RolloutProgress>,
    /// The status currently stored.
    pub previous: Option<&'a SpiderNetworkStatus>,
    /// Now, for conditions that change.
    pub now: Time,
}

/// Builds the status.
pub fn build(input: StatusInput<'_>) -> SpiderNetworkStatus {
    let generation = input.generation;
    let nodes = input.nodes.clone();
    let (ready, reason, message) = match &input.outcome {
        Outcome::Progressing => (
            false,
            "Progressing",
            format!(
                "applying generation {}",
                generation.map_or_else(|| "?".to_string(), |g| g.to_string())
            ),
        ),
        Outcome::Invalid => (
            false,
            "Invalid",
            format!(
                "the topology has {} problem(s), see status.problems; nothing was changed in the cluster",
                input.problems.len()
            ),
        ),
        Outcome::AddressesInUse => (
            false,
            "AddressesInUse",
            "applying would take allocated addresses out of their pools (see status.problems); nothing was changed in the cluster until they are released or the change is reverted".to_string(),
        ),
        Outcome::NameConflict => (
            false,
            "NameConflict",
            "objects that are not generated from this topology hold names it renders (see status.problems); the rest is applied".to_string(),
        ),
        Outcome::ApplyFailed(why) => (false, "ApplyFailed", why.clone()),
        Outcome::WaitingForDeletion => (
            false,
            "WaitingForDeletion",
            "objects being deleted hold names the topology renders; applying them once they are gone".to_string(),
        ),
        Outcome::Applied => match (&nodes, &input.rollout) {
            (_, Some(r)) if !r.conflicts.is_empty() => (
                false,
                "InterfaceConflict",
                format!(
                    "on {} node(s) this topology's interfaces conflict with another topology's; neither is applied there (see status.rollout.conflicts)",
                    r.conflicts.iter().map(|c| c.node.as_str()).collect::<std::collections::BTreeSet<_>>().len()
                ),
            ),
            (_, Some(r)) if r.paused => (
                false,
                "RolloutPaused",
                format!(
                    "the interface rollout is paused: {} node(s) failed or rolled back (see status.nodes.failures); {} wait; change the topology to go on",
                    r.failed, r.waiting
                ),
            ),
            (Some(n), _) if n.failed > 0 => (
                false,
                "NodesFailed",
                format!("{} of {} nodes failed to set up their interfaces (see status.nodes.failures)", n.failed, n.selected),
            ),
            (Some(n), Some(r)) if r.waiting > 0 => (
                false,
                "NodesPending",
                format!(
                    "{} of {} nodes have set up their interfaces; {} wait for their turn (at most {} at a time)",
                    n.applied, n.selected, r.waiting, r.max_unavailable
                ),
            ),
            (Some(n), _) if n.applied < n.selected => (
                false,
                "NodesPending",
                format!("{} of {} nodes have set up their interfaces", n.applied, n.selected),
            ),
            _ => (true, "Applied", "every object the topology renders is applied".to_string()),
        },
    };
    // Stalled: nothing will change until someone edits something. Reconciling: work is under way or will
    // be retried.
    let stalled = matches!(input.outcome, Outcome::Invalid | Outcome::NameConflict)
        || (input.outcome == Outcome::Applied
            && matches!(reason, "NodesFailed" | "RolloutPaused" | "InterfaceConflict"));
    let reconciling = !ready && !stalled;
    let previous = input
        .previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let condition = |type_: &str, status: bool, reason: &str, message: &str| {
        condition(previous, type_, status, reason, message, generation, &input.now)
    };
    let conditions = vec![
        condition("Ready", ready, reason, &message),
        condition(
            "Reconciling",
            reconciling,
            if reconciling { reason } else { "Idle" },
            if reconciling { &message } else { "" },
        ),
        condition(
            "Stalled",
            stalled,
            if stalled { reason } else { "Progressing" },
            if stalled { &message } else { "" },
        ),
    ];
    let mut conditions = conditions;
    if let Some(progress) = &input.rollout {
        let paused = progress.paused;
        conditions.push(condition(
            "RolloutPaused",
            paused,
            if paused { "NodesFailed" } else { "Progressing" },
            if paused { &message } else { "" },
        ));
    }
    SpiderNetworkStatus {
        observed_generation: generation,
        conditions,
        counts: input.counts,
        nodes,
        rollout: input.rollout,
        // Written by the capacity writer under its own field manager.
        capacity: None,
        problems: input.problems,
    }
}

fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// The rollout of the interface tasks: `desired` are the task names the topology renders (with their
/// node), `live` the tasks in the cluster by name, `rewritten` the tasks being written now (their
/// status describes an older spec, so they count as pending).
pub fn rollout(
    desired: &[(String, String)],
    live: &BTreeMap<String, std::sync::Arc<SpiderInterfaceTask>>,
    rewritten: &[String],
) -> NodeRollout {
    let mut rollout = NodeRollout {
        selected: i64::try_from(desired.len()).unwrap_or(i64::MAX),
        ..NodeRollout::default()
    };
    for (task_name, node) in desired {
        let task = live.get(task_name);
        let status = task.and_then(|t| t.status.as_ref());
        let current = task.is_some_and(|t| {
            status.and_then(|s| s.observed_generation) == t.metadata.generation
                && !rewritten.contains(task_name)
        });
        match status.and_then(|s| s.phase) {
            Some(TaskPhase::Applied) if current => rollout.applied += 1,
            Some(TaskPhase::Failed | TaskPhase::RolledBack) if current => {
                rollout.failed += 1;
                if rollout.failures.len() < MAX_LISTED_FAILURES {
                    rollout.failures.push(NodeFailure {
                        node: node.clone(),
                        message: status.and_then(|s| s.message.clone()).unwrap_or_default(),
                    });
                }
            }
            _ => rollout.pending += 1,
        }
    }
    rollout.summary = format!("{}/{}", rollout.applied, rollout.selected);
    rollout
}

/// Whether two statuses say the same in what [`build`] writes (the stored one also holds the capacity
/// and its condition, which another field manager writes; and may differ in ways the API server
/// normalises, e.g. timestamps to whole seconds, which [`build`] copies from it anyway).
pub fn same(a: &SpiderNetworkStatus, b: &SpiderNetworkStatus) -> bool {
    let ours = |s: &SpiderNetworkStatus| -> Vec<Condition> {
        s.conditions
            .iter()
            .filter(|c| OWN_CONDITIONS.contains(&c.type_.as_str()))
            .cloned()
            .collect()
    };
    a.observed_generation == b.observed_generation
        && ours(a) == ours(b)
        && a.counts == b.counts
        && a.nodes == b.nodes
        && a.problems == b.problems
}

/// The conditions [`build`] writes.
pub const OWN_CONDITIONS: [&str; 3] = ["Ready", "Reconciling", "Stalled"];

/// The reason of the `Ready` condition, if any.
pub fn ready_reason(status: &SpiderNetworkStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.as_str())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use spiderpool_schema::{SpiderInterfaceTaskSpec, SpiderInterfaceTaskStatus};

    use super::*;

    fn time(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn input(outcome: Outcome, previous: Option<&SpiderNetworkStatus>, now: i64) -> StatusInput<'_> {
        StatusInput {
            generation: Some(3),
            outcome,
            problems: Vec::new(),
            counts: None,
            nodes: None,
            rollout: None,
            previous,
            now: time(now),
        }
    }

    fn get<'a>(status: &'a SpiderNetworkStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn applied_is_ready_and_stable() {
        let first = build(input(Outcome::Applied, None, 100));
        assert_eq!(get(&first, "Ready").status, "True");
        assert_eq!(get(&first, "Stalled").status, "False");
        assert_eq!(first.observed_generation, Some(3));
        let second = build(input(Outcome::Applied, Some(&first), 200));
        assert!(
            same(&first, &second),
            "an unchanged situation renders the same status"
        );
    }

    #[test]
    fn invalid_is_stalled_and_transitions_are_timed() {
        let ok = build(input(Outcome::Applied, None, 100));
        let bad = build(StatusInput {
            problems: vec![Problem {
                path: "spec.racks[0]".into(),
                message: "m".into(),
            }],
            ..input(Outcome::Invalid, Some(&ok), 200)
        });
        let ready = get(&bad, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Invalid")
        );
        assert_eq!(ready.last_transition_time, time(200));
        assert_eq!(get(&bad, "Stalled").status, "True");
        assert_eq!(get(&bad, "Reconciling").status, "False");
        assert_eq!(bad.problems.len(), 1);
    }

    #[test]
    fn a_new_generation_is_acknowledged_as_reconciling() {
        let s = build(input(Outcome::Progressing, None, 1));
        assert_eq!(s.observed_generation, Some(3));
        let ready = get(&s, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Progressing")
        );
        assert_eq!(ready.message, "applying generation 3");
        assert_eq!(get(&s, "Reconciling").status, "True");
        assert_eq!(get(&s, "Stalled").status, "False");
    }

    #[test]
    fn capacity_and_its_condition_are_not_compared() {
        let a = build(input(Outcome::Applied, None, 1));
        let mut b = a.clone();
        b.capacity = Some(spiderpool_schema::network::Capacity::default());
        b.conditions.push(Condition {
            type_: "CapacityLow".into(),
            status: "True".into(),
            reason: "NearlyFull".into(),
            message: String::new(),
            observed_generation: Some(3),
            last_transition_time: time(1),
        });
        assert!(same(&a, &b));
    }

    #[test]
    fn addresses_in_use_keep_reconciling() {
        let s = build(input(Outcome::AddressesInUse, None, 1));
        assert_eq!(get(&s, "Ready").reason, "AddressesInUse");
        assert_eq!(get(&s, "Reconciling").status, "True");
        assert_eq!(get(&s, "Stalled").status, "False");
    }

    #[test]
    fn rollout_counts_phases_of_the_current_generation() {
        let task = |phase: Option<TaskPhase>, observed: i64| {
            let mut t = SpiderInterfaceTask::new("x", SpiderInterfaceTaskSpec::default());
            t.metadata.generation = Some(2);
            t.status = Some(SpiderInterfaceTaskStatus {
                observed_generation: Some(observed),
                phase,
                message: Some("bond0: no such slave".into()),
                ..SpiderInterfaceTaskStatus::default()
            });
            Arc::new(t)
        };
        let live = BTreeMap::from([
            ("t-a".to_string(), task(Some(TaskPhase::Applied), 2)),
            ("t-b".to_string(), task(Some(TaskPhase::Failed), 2)),
            ("t-c".to_string(), task(Some(TaskPhase::Applied), 1)),
            ("t-e".to_string(), task(Some(TaskPhase::Applied), 2)),
        ]);
        let desired: Vec<(String, String)> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| (format!("t-{n}"), n.to_string()))
            .collect();
        let r = rollout(&desired, &live, &["t-e".to_string()]);
        assert_eq!((r.selected, r.applied, r.failed, r.pending), (5, 1, 1, 3));
        assert_eq!(r.summary, "1/5");
        assert_eq!(r.failures[0].node, "b");
        let s = build(StatusInput {
            nodes: Some(r),
            ..input(Outcome::Applied, None, 1)
        });
        assert_eq!(get(&s, "Ready").reason, "NodesFailed");
        assert_eq!(get(&s, "Stalled").status, "True");
    }
}
