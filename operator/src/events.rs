//! Kubernetes Events for what a user must notice, one way for every controller: reported as
//! `spiderpool-operator` (instance: the replica's pod name), on the object concerned, never failing
//! the reconcile that publishes them (a refused Event is logged and the work goes on).

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
        self.publish(object, EventType::Warning, reason, action, note)
            .await;
    }

    /// A Normal Event about `object`.
    pub async fn normal<K>(&self, object: &K, reason: &str, action: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        self.publish(object, EventType::Normal, reason, action, note)
            .await;
    }

    async fn publish<K>(&self, object: &K, type_: EventType, reason: &str, action: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(controller = self.controller, %error, reason, "cannot publish an Event");
        }
    }
}
