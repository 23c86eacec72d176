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
//! - [`gateway`]: asking a gateway on an interface (ARP probe, neighbour solicitation from `::`).
//! - [`fake`]: a model of the kernel's links, for tests.

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
pub mod verify;

#[cfg(test)]
mod executor_tests;
#[cfg(test)]
mod plan_tests;
