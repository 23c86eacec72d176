//! The node daemon (upstream's spiderpool-agent): serves the IPAM API to the `spiderpool` CNI plugin on
//! a unix socket and allocates addresses from SpiderIPPools.
//!
//! - [`ipam`]: the allocator's decisions, pure (candidate rules, filters, address choice, routes).
//! - [`writer`]: one writer task per pool; batches this node's changes into one status write per round
//!   with optimistic concurrency (the design and its failure modes are documented there).
//! - [`allocator`]: the I/O shell: pods, owners, SpiderEndpoints, rollback.
//! - [`ahead`]: reserving in the pools of pods bound to this node before their ADD comes.
//! - [`store`]: watch caches of pools, reserved IPs, namespaces, the node and its pods.
//! - [`server`]: the unix-socket API and the health/metrics endpoints.
//! - [`metrics`]: Prometheus metrics.
//! - [`coordinator`]: `GET /v1/coordinator/config`, the `coordinator` plugin's defaults for a pod.
//! - [`sysctl`]: node sysctl tuning at start.

pub mod ahead;
pub mod allocator;
pub mod coordinator;
pub mod ipam;
pub mod metrics;
pub mod server;
pub mod store;
pub mod sysctl;
pub mod writer;
