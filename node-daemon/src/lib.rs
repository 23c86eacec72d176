//! The node daemon (upstream's spiderpool-agent): serves the IPAM API to the `spiderpool` CNI plugin on
//! a unix socket and allocates addresses from SpiderIPPools.
//!
//! - [`ipam`]: the allocator's decisions, pure (candidate rules, filters, address choice, routes).

pub mod ipam;
