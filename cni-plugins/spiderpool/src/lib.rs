//! The `spiderpool` CNI IPAM plugin: a small synchronous client of the node daemon's unix-socket
//! API (`spiderpool_agent_api`), speaking CNI 0.3.0 to 1.1.0 (ADD, DEL, CHECK, VERSION, GC, STATUS).
//!
//! Everything is in this library so it can be tested without a process: [`plugin::run`] takes
//! the `CNI_*` environment and stdin and returns exactly what to print and the exit status; the
//! binary only reads its environment and writes that out.
//!
//! Modules: [`config`] (the netconf and its `ipam` section), [`client`] (the daemon's IPAM API on
//! the common HTTP client), [`detect`] (IP-conflict and gateway detection and announcements in the
//! pod's network namespace) and [`plugin`] (the command handlers). The CNI protocol, `CNI_ARGS`,
//! the logger and the HTTP client are in `spiderpool_cni_common`, shared with the `coordinator`.

pub mod client;
pub mod config;
pub mod detect;
pub mod plugin;
