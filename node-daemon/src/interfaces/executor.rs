//! Carrying out one task at a time on the node, safely:
//!
//! 1. read the task (bad options: `Failed`, nothing changed), check it against the node's other tasks
//!    (a conflict: `Failed` for each, nothing changed), observe the node, plan (a refusal: `Failed`,
//!    nothing changed); an empty plan means the node already matches (`Applied`, no change made);
//! 2. otherwise write a checkpoint of every link the plan touches to disk, apply the operations one
//!    by one, then probe: every interface as asked, up, with members and carrier, and the task's
//!    gateways answering, within the probe timeout;
//! 3. a failed operation or probe restores the checkpoint (`RolledBack`, with the reason); the
//!    generation is not tried again until the task changes. If restoring fails too, the task is
//!    `Failed` with `RollbackFailed` and says what is left.
//! 4. success records what was created and enslaved (ownership) and removes the checkpoint.
//!
//! A checkpoint still on disk at start means the agent died half way: [`Executor::recover`] restores
//! it before anything else. [`Executor::revert`] removes what this agent created and no task wants.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use spiderpool_schema::SpiderInterfaceTaskSpec;
use spiderpool_schema::interfacetask::TaskPhase;
use spiderpool_schema::taskconflict::conflicts;

use super::checkpoint::Checkpoint;
use super::host::{Host, HostError, Observation};
use super::model::{Desired, LinkOp};
use super::ownership::{Kept, StillWanted, revert_plan};
use super::plan::{Node, plan};
use super::safety::Protected;
use super::state::{ExecutorState, RolledBack, StateDir, StateError};
use super::verify::{InterfaceCheck, all_ready, verify};

/// How long the checks after applying may take when the task does not say.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A task as the executor needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub name: String,
    pub uid: String,
    pub generation: Option<i64>,
    pub spec: SpiderInterfaceTaskSpec,
}

/// What happened to one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub task: String,
    pub uid: String,
    pub generation: Option<i64>,
    pub phase: TaskPhase,
    /// CamelCase: `Applied`, `Unchanged`, `Degraded`, `InvalidSpec`, `Conflict`, a refusal reason,
    /// `ApplyFailed`, `ProbeFailed`, `AgentRestarted`, `NotRetried`, `RollbackFailed`.
    pub reason: String,
    pub message: Option<String>,
    pub interfaces: Vec<InterfaceCheck>,
    /// The operations applied (kept: empty when rolled back).
    pub changes: Vec<String>,
    /// The operations that restored the checkpoint.
    pub rolled_back: Vec<String>,
}

/// Why the executor could not do its work at all (the node could not be read, the state not kept).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("reading the node's links: {0}")]
    Observe(#[source] HostError),
    #[error("the executor's state: {0}")]
    State(#[from] StateError),
}

/// The first step for a task: done (nothing to change, or it cannot be applied), or a plan to apply.
#[derive(Debug)]
pub enum Step {
    Done(Report),
    Apply(Pending),
}

/// A plan ready to apply.
#[derive(Debug)]
pub struct Pending {
    task: Task,
    desired: Desired,
    ops: Vec<LinkOp>,
    observation: Observation,
}

impl Pending {
    pub fn task(&self) -> &Task {
        &self.task
    }

    pub fn ops(&self) -> &[LinkOp] {
        &self.ops
    }
}

/// What [`Executor::revert`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reverted {
    pub changes: Vec<String>,
    pub kept: Vec<Kept>,
    pub errors: Vec<String>,
}

/// The executor: one node, its state directory.
#[derive(Debug)]
pub struct Executor<H> {
    host: H,
    dir: StateDir,
    state: ExecutorState,
    node_ips: Vec<IpAddr>,
}

impl<H: Host> Executor<H> {
    /// An executor that remembers in `dir`.
    pub fn new(host: H, dir: StateDir) -> Result<Self, ExecError> {
        let state = dir.load()?;
        Ok(Executor {
            host,
            dir,
            state,
            node_ips: Vec::new(),
        })
    }

    /// The Kubernetes node's addresses: links holding them are never taken away or down.
    pub fn set_node_ips(&mut self, node_ips: Vec<IpAddr>) {
        self.node_ips = node_ips;
    }

    pub fn state(&self) -> &ExecutorState {
        &self.state
    }

    pub fn host_mut(&mut self) -> &mut H {
        &mut self.host
    }

    async fn observe(&mut self) -> Result<Observation, ExecError> {
        self.host
            .observe(&self.node_ips)
            .await
            .map_err(ExecError::Observe)
    }

    /// Restores the checkpoint of a change the agent did not finish (it died half way), if any.
    pub async fn recover(&mut self) -> Result<Option<Report>, ExecError> {
        let Some(checkpoint) = self.dir.checkpoint()? else {
            return Ok(None);
        };
        tracing::warn!(task = %checkpoint.task, generation = ?checkpoint.generation, "found the checkpoint of an unfinished change; restoring it");
        let generation = checkpoint
            .generation
            .map_or_else(|| "its spec".to_owned(), |g| format!("generation {g}"));
        let why = format!("the agent stopped while applying {generation}");
        let report = self.roll_back(&checkpoint, "AgentRestarted", why).await?;
        Ok(Some(report))
    }

    /// Reads, checks and plans `task` (one of `all`, the node's tasks).
    pub async fn prepare(&mut self, task: &Task, all: &[Task]) -> Result<Step, ExecError> {
        let report = |phase, reason: &str, message: String| {
            Step::Done(Report {
                task: task.name.clone(),
                uid: task.uid.clone(),
                generation: task.generation,
                phase,
                reason: reason.to_owned(),
                message: Some(message),
                interfaces: Vec::new(),
                changes: Vec::new(),
                rolled_back: Vec::new(),
            })
        };
        let desired = match Desired::from_spec(&task.spec) {
            Ok(desired) => desired,
            Err(problems) => return Ok(report(TaskPhase::Failed, "InvalidSpec", problems.join("; "))),
        };
        let specs: Vec<(&str, &SpiderInterfaceTaskSpec)> =
            all.iter().map(|t| (t.name.as_str(), &t.spec)).collect();
        let ours: Vec<String> = conflicts(&specs)
            .into_iter()
            .filter(|c| c.first == task.name || c.second == task.name)
            .map(|c| c.message)
            .collect();
        if !ours.is_empty() {
            return Ok(report(
                TaskPhase::Failed,
                "Conflict",
                format!("{}; neither task is applied until one changes", ours.join("; ")),
            ));
        }
        let observation = self.observe().await?;
        self.state.ownership.forget_stale(&observation.links);
        let protected = Protected::from_anchors(&observation.anchors, &observation.links);
        let planned = plan(
            &desired,
            Node {
                links: &observation.links,
                ownership: &self.state.ownership,
                protected: &protected,
            },
        );
        let ops = match planned {
            Ok(ops) => ops,
            Err(refusals) => {
                let reason = refusals
                    .iter()
                    .map(|r| r.reason)
                    .min()
                    .map_or("Refused", |r| r.as_str());
                let message: Vec<String> = refusals.into_iter().map(|r| r.message).collect();
                return Ok(report(
                    TaskPhase::Failed,
                    reason,
                    format!("{}; nothing was changed", message.join("; ")),
                ));
            }
        };
        if ops.is_empty() {
            let interfaces = verify(&desired, &observation.links);
            let (reason, message) = if all_ready(&interfaces) {
                ("Unchanged", None)
            } else {
                ("Degraded", Some(not_ready(&interfaces)))
            };
            return Ok(Step::Done(Report {
                task: task.name.clone(),
                uid: task.uid.clone(),
                generation: task.generation,
                phase: TaskPhase::Applied,
                reason: reason.to_owned(),
                message,
                interfaces,
                changes: Vec::new(),
                rolled_back: Vec::new(),
            }));
        }
        if let Some(previous) = self.state.rolled_back.get(&task.name)
            && previous.uid == task.uid
            && previous.generation == task.generation
        {
            return Ok(report(
                TaskPhase::RolledBack,
                &previous.reason,
                format!(
                    "{}; not tried again until the task changes",
                    previous
                        .message
                        .trim_end_matches("; not tried again until the task changes")
                ),
            ));
        }
        Ok(Step::Apply(Pending {
            task: task.clone(),
            desired,
            ops,
            observation,
        }))
    }

    /// Applies a plan with checkpoint, probe and rollback.
    pub async fn apply(&mut self, pending: Pending) -> Result<Report, ExecError> {
        let Pending {
            task,
            desired,
            ops,
            observation,
        } = pending;
        let checkpoint = Checkpoint::take(&task.name, &task.uid, task.generation, &ops, &observation.links);
        self.dir.save_checkpoint(&checkpoint)?;
        tracing::info!(task = %task.name, generation = ?task.generation, changes = ops.len(), "applying");
        let mut applied = Vec::new();
        for op in &ops {
            if let Err(e) = self.host.apply(op).await {
                tracing::warn!(task = %task.name, %op, error = %e, "an operation failed; rolling back");
                let why = format!("change {} of {} failed: {e}", applied.len() + 1, ops.len());
                return self.roll_back(&checkpoint, "ApplyFailed", why).await;
            }
            applied.push(op.to_string());
        }
        let timeout = task
            .spec
            .probe
            .as_ref()
            .and_then(|p| p.timeout_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map_or(DEFAULT_PROBE_TIMEOUT, Duration::from_secs);
        let (links, interfaces) = self.wait_ready(&desired, timeout).await?;
        if !all_ready(&interfaces) {
            let why = format!("after {} s: {}", timeout.as_secs(), not_ready(&interfaces));
            return self.roll_back(&checkpoint, "ProbeFailed", why).await;
        }
        for gateway in task.spec.probe.iter().flat_map(|p| &p.gateways) {
            let address: IpAddr = match gateway.address.parse() {
                Ok(address) => address,
                Err(_) => {
                    let why = format!("probe gateway `{}` is not an IP address", gateway.address);
                    return self.roll_back(&checkpoint, "ProbeFailed", why).await;
                }
            };
            let answered = self
                .host
                .probe_gateway(&gateway.interface, address, timeout)
                .await;
            let asked = if address.is_ipv4() {
                "ARP"
            } else {
                "neighbour solicitation"
            };
            let failure = match answered {
                Ok(true) => None,
                Ok(false) => Some(format!(
                    "gateway {address} did not answer {asked} on {} within {} s",
                    gateway.interface,
                    timeout.as_secs()
                )),
                Err(e) => Some(format!(
                    "could not probe gateway {address} on {}: {e}",
                    gateway.interface
                )),
            };
            if let Some(why) = failure {
                return self.roll_back(&checkpoint, "ProbeFailed", why).await;
            }
        }
        self.state.ownership.record(&task.name, &ops, &links);
        self.state.rolled_back.remove(&task.name);
        self.dir.save(&self.state)?;
        self.dir.clear_checkpoint()?;
        tracing::info!(task = %task.name, generation = ?task.generation, "applied");
        Ok(Report {
            task: task.name,
            uid: task.uid,
            generation: task.generation,
            phase: TaskPhase::Applied,
            reason: "Applied".to_owned(),
            message: None,
            interfaces,
            changes: applied,
            rolled_back: Vec::new(),
        })
    }

    /// Polls until every interface of `desired` checks out or `timeout` passes.
    async fn wait_ready(
        &mut self,
        desired: &Desired,
        timeout: Duration,
    ) -> Result<(Vec<super::model::HostLink>, Vec<InterfaceCheck>), ExecError> {
        let deadline = Instant::now() + timeout;
        loop {
            let links = self.observe().await?.links;
            let checks = verify(desired, &links);
            if all_ready(&checks) || Instant::now() >= deadline {
                return Ok((links, checks));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Restores `checkpoint`, remembers the generation as rolled back, and says so.
    async fn roll_back(
        &mut self,
        checkpoint: &Checkpoint,
        reason: &str,
        why: String,
    ) -> Result<Report, ExecError> {
        let now = self.observe().await?;
        let restore = checkpoint.rollback(&now.links);
        let mut done = Vec::new();
        let mut errors = Vec::new();
        for op in &restore {
            // Keep going: every step restored is one less thing left changed.
            match self.host.apply(op).await {
                Ok(()) => done.push(op.to_string()),
                Err(e) => errors.push(format!("{op}: {e}")),
            }
        }
        let after = self.observe().await?;
        self.state.ownership.forget_stale(&after.links);
        let left = checkpoint.rollback(&after.links);
        let (phase, reason, message) = if errors.is_empty() && left.is_empty() {
            let message = format!("{why}; the previous state was restored");
            self.state.rolled_back.insert(
                checkpoint.task.clone(),
                RolledBack {
                    uid: checkpoint.uid.clone(),
                    generation: checkpoint.generation,
                    reason: reason.to_owned(),
                    message: message.clone(),
                },
            );
            (TaskPhase::RolledBack, reason.to_owned(), message)
        } else {
            let left: Vec<String> = left.iter().map(ToString::to_string).collect();
            (
                TaskPhase::Failed,
                "RollbackFailed".to_owned(),
                format!(
                    "{why}; restoring the previous state failed ({}); still to undo: {}",
                    errors.join("; "),
                    left.join(", ")
                ),
            )
        };
        self.dir.save(&self.state)?;
        self.dir.clear_checkpoint()?;
        tracing::warn!(task = %checkpoint.task, %reason, %message, "rolled back");
        Ok(Report {
            task: checkpoint.task.clone(),
            uid: checkpoint.uid.clone(),
            generation: checkpoint.generation,
            phase,
            reason,
            message: Some(message),
            interfaces: Vec::new(),
            changes: Vec::new(),
            rolled_back: done,
        })
    }

    /// Removes what this agent created (or enslaved) and none of `tasks` asks for any more.
    pub async fn revert(&mut self, tasks: &[Task]) -> Result<Reverted, ExecError> {
        let mut wanted = StillWanted::default();
        for task in tasks {
            // A task that cannot be read still claims what it names: never revert under it.
            for bond in &task.spec.bonds {
                wanted.interfaces.insert(bond.name.clone());
                for member in &bond.interfaces {
                    wanted.members.insert((member.clone(), bond.name.clone()));
                }
            }
            for vlan in &task.spec.vlans {
                wanted.interfaces.insert(vlan.interface_name());
            }
        }
        let observation = self.observe().await?;
        self.state.ownership.forget_stale(&observation.links);
        let protected = Protected::from_anchors(&observation.anchors, &observation.links);
        let (ops, kept) = revert_plan(&self.state.ownership, &observation.links, &wanted, &protected);
        let mut reverted = Reverted {
            kept,
            ..Reverted::default()
        };
        let mut done = Vec::new();
        for op in ops {
            match self.host.apply(&op).await {
                Ok(()) => {
                    reverted.changes.push(op.to_string());
                    done.push(op);
                }
                Err(e) => reverted.errors.push(format!("{op}: {e}")),
            }
        }
        if !done.is_empty() {
            let after = self.observe().await?;
            self.state.ownership.record("", &done, &after.links);
            self.state.ownership.forget_stale(&after.links);
            tracing::info!(changes = ?reverted.changes, "reverted what no task asks for any more");
        }
        let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
        self.state
            .rolled_back
            .retain(|task, _| names.contains(&task.as_str()));
        self.dir.save(&self.state)?;
        Ok(reverted)
    }
}

fn not_ready(checks: &[InterfaceCheck]) -> String {
    checks
        .iter()
        .filter(|c| !c.ready)
        .map(|c| format!("{}: {}", c.name, c.message.as_deref().unwrap_or("not ready")))
        .collect::<Vec<_>>()
        .join("; ")
}
