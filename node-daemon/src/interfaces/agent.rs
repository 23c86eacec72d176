//! The agent's interface loop: watches the SpiderInterfaceTasks of its node (a field selector on
//! `spec.nodeName`), carries each out with the [`Executor`], writes each task's status (`Applying`
//! before changing anything, then the outcome) and publishes an Event for news (changes applied, a
//! rollback, a refusal). After the tasks it reverts what no task asks for any more and tells that
//! on the Node. Runs again on every change of a task and every `resync`.

use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Client, Resource as _, ResourceExt as _};
use spiderpool_schema::{SpiderInterfaceTask, SpiderInterfaceTaskStatus};

use super::executor::{ExecError, Executor, Report, Step, Task};
use super::host::Host;
use super::status;

/// The field manager of the agent's status writes.
pub const FIELD_MANAGER: &str = "spiderpool-agent/interfaces";

/// Why the loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("the SpiderInterfaceTask watch ended")]
    WatchEnded,
}

/// The loop for one node.
pub struct InterfaceAgent<H> {
    client: Client,
    node: String,
    executor: Executor<H>,
    recorder: Recorder,
    resync: Duration,
}

impl<H: Host> InterfaceAgent<H> {
    /// `executor` carries the tasks out on the node `node`.
    pub fn new(client: Client, node: &str, executor: Executor<H>, resync: Duration) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "spiderpool-agent".to_owned(),
                instance: Some(node.to_owned()),
            },
        );
        InterfaceAgent {
            client,
            node: node.to_owned(),
            executor,
            recorder,
            resync,
        }
    }

    fn tasks(&self) -> Api<SpiderInterfaceTask> {
        Api::all(self.client.clone())
    }

    /// Runs until the watch ends. Restores a change left half done by a previous run first.
    pub async fn run(mut self) -> Result<(), AgentError> {
        if let Some(report) = self.executor.recover().await? {
            let current = self.tasks().get_opt(&report.task).await.ok().flatten();
            match current {
                Some(task) if task.metadata.uid.as_deref() == Some(report.uid.as_str()) => {
                    self.publish_outcome(&task, &report).await;
                }
                _ => tracing::info!(task = %report.task, "restored a change of a task that no longer exists"),
            }
        }
        let config = watcher::Config::default().fields(&format!("spec.nodeName={}", self.node));
        let (store, writer) = reflector::store();
        let changed = std::sync::Arc::new(tokio::sync::Notify::new());
        let watch = {
            let changed = changed.clone();
            let mut stream = watcher(self.tasks(), config)
                .default_backoff()
                .reflect(writer)
                .touched_objects()
                .boxed();
            tokio::spawn(async move {
                while let Some(change) = stream.next().await {
                    match change {
                        Ok(_) => changed.notify_one(),
                        Err(e) => tracing::warn!(error = %e, "watching SpiderInterfaceTasks"),
                    }
                }
            })
        };
        let _stop_watch = AbortOnDrop(watch);
        if store.wait_until_ready().await.is_err() {
            return Err(AgentError::WatchEnded);
        }
        let mut ticker = tokio::time::interval(self.resync);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = changed.notified() => {
                    // Let a burst of changes settle into one pass.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ = ticker.tick() => {}
            }
            let mut tasks: Vec<SpiderInterfaceTask> = store
                .state()
                .iter()
                .filter(|t| t.spec.node_name == self.node && t.metadata.deletion_timestamp.is_none())
                .map(|t| (**t).clone())
                .collect();
            tasks.sort_by_key(|t| t.name_any());
            if let Err(e) = self.pass(&tasks).await {
                tracing::warn!(error = %e, "carrying out the interface tasks; retrying at the next change or resync");
            }
        }
    }

    /// One pass over the node's tasks, then the revert.
    pub async fn pass(&mut self, objects: &[SpiderInterfaceTask]) -> Result<(), ExecError> {
        self.executor.set_node_ips(self.node_ips().await);
        let tasks: Vec<Task> = objects
            .iter()
            .map(|t| Task {
                name: t.name_any(),
                uid: t.metadata.uid.clone().unwrap_or_default(),
                generation: t.metadata.generation,
                spec: t.spec.clone(),
            })
            .collect();
        for (object, task) in objects.iter().zip(&tasks) {
            let report = match self.executor.prepare(task, &tasks).await? {
                Step::Done(report) => report,
                Step::Apply(pending) => {
                    let applying = status::applying(
                        task.generation,
                        pending.ops().len(),
                        object.status.as_ref(),
                        now(),
                    );
                    self.write_status(object, &applying).await;
                    self.executor.apply(pending).await?
                }
            };
            self.publish_outcome(object, &report).await;
        }
        let reverted = self.executor.revert(&tasks).await?;
        if !reverted.changes.is_empty() || !reverted.errors.is_empty() || !reverted.kept.is_empty() {
            let mut note = Vec::new();
            if !reverted.changes.is_empty() {
                note.push(format!(
                    "removed what no SpiderInterfaceTask asks for: {}",
                    reverted.changes.join(", ")
                ));
            }
            for kept in &reverted.kept {
                note.push(format!("kept {}: {}", kept.link, kept.why));
            }
            if !reverted.errors.is_empty() {
                note.push(format!("failed: {}", reverted.errors.join("; ")));
            }
            let warning = !reverted.errors.is_empty() || !reverted.kept.is_empty();
            self.node_event(warning, "Reverted", note.join("; ")).await;
        }
        Ok(())
    }

    /// Writes the status for `report` and publishes the Event it deserves.
    async fn publish_outcome(&self, object: &SpiderInterfaceTask, report: &Report) {
        let previous = object.status.as_ref();
        let new = status::from_report(report, previous, now());
        if let Some((warning, reason, note)) = status::event(report, previous) {
            let event = Event {
                type_: if warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason,
                note: Some(note),
                action: "Apply".to_owned(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
                tracing::warn!(task = %report.task, error = %e, "publishing an Event");
            }
        }
        if previous != Some(&new) {
            self.write_status(object, &new).await;
        }
    }

    async fn write_status(&self, object: &SpiderInterfaceTask, status: &SpiderInterfaceTaskStatus) {
        let patch = serde_json::json!({
            "apiVersion": SpiderInterfaceTask::api_version(&()),
            "kind": SpiderInterfaceTask::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if let Err(e) = self
            .tasks()
            .patch_status(&object.name_any(), &params, &Patch::Apply(&patch))
            .await
        {
            tracing::warn!(task = %object.name_any(), error = %e, "writing the task status");
        }
    }

    async fn node_event(&self, warning: bool, reason: &str, note: String) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let Ok(node) = nodes.get(&self.node).await else {
            return;
        };
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note),
            action: "Revert".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &node.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing an Event on the node");
        }
    }

    /// The Node's addresses (InternalIP, ExternalIP); none when it cannot be read (then only the
    /// default routes protect the node's own links).
    async fn node_ips(&self) -> Vec<IpAddr> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        match nodes.get(&self.node).await {
            Ok(node) => node
                .status
                .and_then(|s| s.addresses)
                .unwrap_or_default()
                .iter()
                .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect(),
            Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
            Err(e) => {
                tracing::warn!(node = %self.node, error = %e, "reading the Node's addresses");
                Vec::new()
            }
        }
    }
}

/// Stops the watch when the loop ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}
