//! The node daemon (upstream's spiderpool-agent): serves the IPAM API to the `spiderpool` CNI plugin on
//! a unix socket and allocates addresses from SpiderIPPools.
//!
//! - [`ipam`]: the decisions, pure (candidate rules, filters, address choice, a node's reservations,
//!   what ADD, DEL and GC do, routes).
//! - [`allocator`]: the I/O shell serving ADD, DEL, GC and releases: gather, decide, act.
//! - [`writer`]: one writer task per pool; batches this node's changes into one status write per round
//!   with optimistic concurrency (the design and its failure modes are documented there).
//! - [`ahead`]: reserving in the pools of pods bound to this node before their ADD comes.
//! - API I/O: [`api`] (the narrow face of the API server, a kube implementation and a fake),
//!   [`store`] (watch caches; [`pool_cache`] for pools), [`endpoints`] (SpiderEndpoint reads and writes), [`owner_chain`].
//! - [`config`], [`error`], [`clock`].
//! - [`server`]: the unix-socket API and the health/metrics endpoints; [`socket`] (one agent per
//!   node, root only); [`health`]; [`metrics`].
//! - [`interfaces`]: carrying out the node's SpiderInterfaceTasks (bonds, VLANs) with checkpoint,
//!   probe and rollback.
//! - [`settings`]: what the chart passes (the spiderpool-conf ConfigMap, upstream's environment).
//! - [`coordinator`]: `GET /v1/coordinator/config`, the `coordinator` plugin's defaults for a pod.
//! - [`sysctl`]: node sysctl tuning at start.

pub mod ahead;
pub mod allocator;
pub mod api;
pub mod clock;
pub mod config;
pub mod coordinator;
pub mod endpoints;
pub mod error;
pub mod health;
pub mod interfaces;
pub mod ipam;
pub mod metrics;
pub mod owner_chain;
pub mod pool_cache;
pub mod server;
pub mod settings;
pub mod socket;
pub mod store;
pub mod sysctl;
pub mod writer;
