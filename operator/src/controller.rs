//! The operator's controllers (kube-runtime), one module per kind. Each runs only while this replica
//! holds the leader Lease (see [`crate::leader`]).

pub mod cache;
pub mod coordinator;
pub mod ippool;
pub mod multusconfig;
pub mod network;
pub mod pool_shards;
pub mod reclaim;
pub mod subnet;
