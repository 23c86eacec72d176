//! Kubernetes Events for what a user must notice, one way for every controller: reported as
//! `spiderpool-operator` (instance: the replica's pod name), on the object concerned, never failing
//! the reconcile that publishes them (a refused Event is logged and the work goes on).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

/// The reporting component of every Event the operator publishes.
pub const REPORTER: &str = "spiderpool-operator";

/// Publishes Events for one controller.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    controller: &'static str,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("controller", &self.controller)
            .finish_non_exhaustive()
    }
}

impl Events {
    /// Events of `controller` (its name goes into the action's log line, not the reporter).
    pub fn new(client: Client, controller: &'static str) -> Self {
        let reporter = Reporter {
            controller: REPORTER.to_string(),
            instance: std::env::var("SPIDERPOOL_POD_NAME").ok(),
        };
        Events {
            recorder: Recorder::new(client, reporter),
            controller,
        }
    }

    /// A Warning about `object`: `reason` in UpperCamelCase, `action` what the controller was doing.
    pub async fn warning<K>(&self, object: &K, reason: &str, action: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        self.publish(object.object_ref(&()), EventType::Warning, reason, action, note)
            .await;
    }

    /// A Normal Event about the object `reference` names (for a controller that holds a name, not
    /// the object).
    pub async fn normal(&self, reference: ObjectReference, reason: &str, action: &str, note: String) {
        self.publish(reference, EventType::Normal, reason, action, note)
            .await;
    }

    async fn publish(
        &self,
        reference: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(truncate_note(note)),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(controller = self.controller, %error, reason, "cannot publish an Event");
        }
    }
}

/// The API server refuses a note over 1 kB; a longer one is cut at a character boundary.
fn truncate_note(mut note: String) -> String {
    const MAX: usize = 1024;
    if note.len() > MAX {
        let mut end = MAX - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    note
}

/// A reference to the cluster-scoped object `name` of kind `K`.
pub fn cluster_object<K: Resource<DynamicType = ()>>(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: Some(name.to_string()),
        ..ObjectReference::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_to_what_the_api_server_takes() {
        let cut = truncate_note("é".repeat(600));
        assert!(cut.len() <= 1024 && cut.ends_with("..."), "{}", cut.len());
        assert_eq!(truncate_note("short".into()), "short");
    }
}
