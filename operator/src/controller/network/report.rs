//! What the controller tells people besides the main status: the acknowledgement of a new generation,
//! the capacity (counted from the pool cache, written under its own field manager) and Events.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use spiderpool_schema::{SpiderNetwork, SpiderNetworkStatus};
use tracing::{debug, warn};

use super::capacity::{self, DEFAULT_THRESHOLD_PERCENT};
use super::status::Outcome;
use super::{CAPACITY_FIELD_MANAGER, Context, Error, lock};

/// Label of the capacity writes in the operator's write metrics.
pub const CAPACITY_WRITER: &str = "network-capacity";

/// Ready reasons that need a person, each recorded as a warning Event when it becomes the reason:
/// refusals (the spec is invalid, or would move addresses in use) and a node rollout that paused,
/// failed or conflicts.
const WARNINGS: [&str; 5] = [
    "Invalid",
    "AddressesInUse",
    "RolloutPaused",
    "NodesFailed",
    "InterfaceConflict",
];

/// Ready reasons whose Event note lists the spec's problems rather than the condition's message.
const REFUSALS: [&str; 2] = ["Invalid", "AddressesInUse"];

/// The reason and message of the warning Event to record: when the new status's Ready reason is one
/// of [`WARNINGS`] and the previous status (of the same generation) did not already say so. Pure, for
/// unit tests.
pub(super) fn warning<'a>(
    new: &'a SpiderNetworkStatus,
    previous: Option<&SpiderNetworkStatus>,
) -> Option<(&'a str, &'a str)> {
    let ready = new.conditions.iter().find(|c| c.type_ == "Ready")?;
    if !WARNINGS.contains(&ready.reason.as_str()) {
        return None;
    }
    let already = previous.is_some_and(|old| {
        old.observed_generation == new.observed_generation
            && old
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == ready.reason)
    });
    (!already).then_some((ready.reason.as_str(), ready.message.as_str()))
}

impl Context {
    /// Records a warning Event when the topology is newly refused, or its node rollout newly pauses,
    /// fails or conflicts (once per generation and reason: the status says it while it stands). A
    /// refusal's note is `problems`, the first problems of the spec.
    pub(super) async fn warning_event(
        &self,
        network: &SpiderNetwork,
        new: &SpiderNetworkStatus,
        previous: Option<&SpiderNetworkStatus>,
        problems: &str,
    ) {
        if let Some((reason, message)) = warning(new, previous) {
            let (action, note) = if REFUSALS.contains(&reason) {
                ("Reconcile", problems)
            } else {
                ("Rollout", message)
            };
            self.event(network, EventType::Warning, reason, action, note)
                .await;
        }
    }

    /// The status as stored, or as our last status write left it when the cache has not caught up.
    pub(super) fn stored_status(&self, network: &SpiderNetwork) -> Option<SpiderNetworkStatus> {
        let uid = network.metadata.uid.clone().unwrap_or_default();
        let stored_rv: Option<u64> = network
            .metadata
            .resource_version
            .as_deref()
            .and_then(|rv| rv.parse().ok());
        let remembered = lock(&self.recent_status)
            .get(&uid)
            .filter(|(rv, _)| stored_rv.is_some_and(|stored| stored < *rv))
            .map(|(_, status)| status.clone());
        remembered.or_else(|| network.status.clone())
    }

    /// Writes `observedGeneration` with `Reconciling=True` when the stored status describes an older
    /// generation, before the (possibly long) reconcile of the new one. The previous counts and node
    /// rollout stay until the reconcile replaces them; the previous problems belong to the old spec.
    pub(super) async fn acknowledge(&self, network: &SpiderNetwork) -> Result<(), Error> {
        let previous = self.stored_status(network);
        let generation = network.metadata.generation;
        if previous
            .as_ref()
            .is_some_and(|s| s.observed_generation == generation)
        {
            return Ok(());
        }
        let counts = previous.as_ref().and_then(|s| s.counts.clone());
        let nodes = previous
            .as_ref()
            .and_then(|s| s.nodes.clone().zip(s.rollout.clone()));
        self.finish(network, Outcome::Progressing, Vec::new(), counts, nodes)
            .await
    }

    /// Records an Event on the SpiderNetwork; a failure is logged, never fatal.
    pub(super) async fn event(
        &self,
        network: &SpiderNetwork,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            // The API server refuses notes over 1 kB.
            note: Some(note.chars().take(1000).collect()),
            action: action.to_string(),
            secondary: None,
        };
        let reference: ObjectReference = network.object_ref(&());
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            warn!(network = %network.name_any(), %error, "cannot publish an Event");
        }
    }

    /// Counts the topology's capacity from the pool cache and writes `status.capacity` and the
    /// `CapacityLow` condition when they changed; records a warning Event when the condition turns
    /// True; updates the gauges.
    pub(super) async fn write_capacity(&self, network: &SpiderNetwork) -> Result<(), Error> {
        let name = network.name_any();
        let uid = network.metadata.uid.clone().unwrap_or_default();
        let threshold = network
            .spec
            .capacity_threshold_percent
            .map_or(DEFAULT_THRESHOLD_PERCENT, i64::from);
        let unusable = capacity::unusable(network);
        let pools = self.caches.pools.state();
        let uses = pools
            .iter()
            .filter(|pool| super::topology_of(pool.as_ref()).is_some_and(|t| t.name == name))
            .filter_map(|pool| capacity::pool_use(pool, &unusable));
        let (counted, all_apps) = capacity::capacity(uses, threshold);
        if let Some(metrics) = &self.options.capacity_metrics {
            metrics.set(&name, &counted, &all_apps);
        }
        let stored = self.stored_status(network);
        let previous_conditions = stored.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        let condition = capacity::condition(
            &counted,
            &previous_conditions,
            network.metadata.generation,
            &Time(k8s_openapi::jiff::Timestamp::now()),
        );
        let unchanged = |(c, cond): &(spiderpool_schema::network::Capacity, _)| {
            c == &counted && same_condition(cond, &condition)
        };
        if lock(&self.recent_capacity).get(&uid).is_some_and(unchanged) {
            return Ok(());
        }
        let was_low = previous_conditions
            .iter()
            .any(|c| c.type_ == capacity::CONDITION && c.status == "True");
        let api: Api<SpiderNetwork> = Api::all(self.client.clone());
        let patch = json!({
            "apiVersion": SpiderNetwork::api_version(&()),
            "kind": SpiderNetwork::kind(&()),
            "status": { "capacity": counted, "conditions": [condition] },
        });
        // Counted apart from the reconciles' writes: recounts follow the pools, not the topology.
        self.metrics.count_write(CAPACITY_WRITER, "status");
        api.patch_status(
            &name,
            &PatchParams::apply(CAPACITY_FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| Error::Status {
            name: name.clone(),
            source,
        })?;
        debug!(network = %name, low = condition.status == "True", "capacity written");
        if condition.status == "True" && !was_low {
            self.event(
                network,
                EventType::Warning,
                "CapacityLow",
                "CountAddresses",
                &condition.message,
            )
            .await;
        }
        lock(&self.recent_capacity).insert(uid, (counted, condition));
        Ok(())
    }

    /// Forgets a deleted topology's capacity (its gauges go).
    pub(super) fn forget_capacity(&self, network: &SpiderNetwork) {
        if let Some(metrics) = &self.options.capacity_metrics {
            metrics.forget(&network.name_any());
        }
        lock(&self.recent_capacity).remove(&network.metadata.uid.clone().unwrap_or_default());
        lock(&self.capacity_dirty).remove(&network.name_any());
    }
}

/// Conditions equal apart from the transition time (kept from the stored one anyway).
fn same_condition(
    a: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
    b: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
) -> bool {
    a.status == b.status
        && a.reason == b.reason
        && a.message == b.message
        && a.observed_generation == b.observed_generation
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    use super::*;

    fn status(generation: i64, reason: &str) -> SpiderNetworkStatus {
        SpiderNetworkStatus {
            observed_generation: Some(generation),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: reason.into(),
                message: format!("because {reason}"),
                observed_generation: Some(generation),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            }],
            ..SpiderNetworkStatus::default()
        }
    }

    #[test]
    fn a_rollout_that_newly_pauses_fails_or_conflicts_is_an_event() {
        for reason in ["RolloutPaused", "NodesFailed", "InterfaceConflict"] {
            let new = status(2, reason);
            let expected = format!("because {reason}");
            assert_eq!(warning(&new, None), Some((reason, expected.as_str())));
            assert_eq!(
                warning(&new, Some(&status(2, "NodesPending"))),
                Some((reason, expected.as_str()))
            );
            // A new generation that pauses again is news too.
            assert_eq!(
                warning(&new, Some(&status(1, reason))),
                Some((reason, expected.as_str()))
            );
        }
    }

    #[test]
    fn a_standing_pause_or_a_healthy_rollout_is_no_event() {
        assert_eq!(
            warning(&status(2, "RolloutPaused"), Some(&status(2, "RolloutPaused"))),
            None
        );
        for reason in ["Applied", "NodesPending", "ApplyFailed"] {
            assert_eq!(warning(&status(2, reason), None), None, "{reason}");
        }
    }

    #[test]
    fn a_refusal_is_a_warning_once_per_generation() {
        let new = status(2, "Invalid");
        assert_eq!(warning(&new, None).map(|w| w.0), Some("Invalid"));
        assert_eq!(warning(&new, Some(&status(2, "Invalid"))), None);
    }
}
