//! The `spiderpool` CNI IPAM plugin: a small synchronous client of the node daemon's unix-socket
//! API (`spiderpool_agent_api`), speaking CNI 0.3.0 to 1.1.0 (ADD, DEL, CHECK, VERSION, GC, STATUS).
//!
//! Everything is in this library so it can be tested without a process: [`plugin::run`] takes
//! the `CNI_*` environment and stdin and returns exactly what to print and the exit status; the
//! binary only reads its environment and writes that out.
//!
//! Modules: [`cni`] (protocol types, versions, the error object, result shapes per version),
//! [`args`] (`CNI_ARGS`), [`config`] (the netconf and its `ipam` section), [`client`] (HTTP/1.1
//! over the daemon's unix socket), [`log`] (the line logger: file or stderr, never stdout) and
//! [`plugin`] (the command handlers).

pub mod args;
pub mod client;
pub mod cni;
pub mod config;
pub mod log;
pub mod plugin;
