//! Node interface tasks: the agent converges the node's links to the SpiderInterfaceTasks for its
//! node (bonds with their members, mode and options; VLAN sub-interfaces; MTU; up), safely.
//!
//! Pure planning, no I/O:
//! - [`model`]: the node's links as observed, a task's interfaces, and link operations.
//! - [`plan`]: task + links -> operations (idempotent; never touches a link the task does not name)
//!   or every refusal.
//! - [`safety`]: the links carrying the node's default route and node IP, and everything under them.
//! - [`ownership`]: what this agent created or enslaved (kept on disk), and reverting what no task
//!   asks for any more.
//! - [`checkpoint`]: the prior state of every link a plan touches, and the operations restoring it.
//! - [`verify`]: whether the node now matches a task (links up, members attached, carrier).
//! - [`status`]: a task's status and Events from what happened.
//!
//! The shell:
//! - [`executor`]: one task at a time: checkpoint on disk, apply, probe, roll back; crash recovery;
//!   revert. [`state`] keeps its memory (ownership, rolled-back generations, the checkpoint).
//! - [`host`]: the node behind a trait; [`netlink_host`] is the real one, [`gateway`] asks a gateway
//!   on an interface (ARP probe, neighbour solicitation from `::`), [`fake`] models the kernel's
//!   links for tests.
//! - [`agent`]: the watch of the node's tasks, status writes and Events.

pub mod agent;
pub mod checkpoint;
pub mod executor;
pub mod fake;
pub mod gateway;
pub mod host;
pub mod model;
pub mod netlink_host;
pub mod ownership;
pub mod plan;
pub mod safety;
pub mod state;
pub mod status;
pub mod verify;

#[cfg(test)]
mod executor_tests;
#[cfg(test)]
mod plan_tests;
