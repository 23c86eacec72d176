//! The allocator's decisions, pure: which pools a pod interface may draw from (upstream's candidate
//! rules, filters and ordering), which address to give, which routes go with it, and what a pod's
//! owner means for keeping its addresses. No Kubernetes client, no clock, no I/O: the I/O shell in
//! [`crate::allocator`] and [`crate::writer`] gathers the facts and carries out the decisions.

pub mod add;
pub mod ahead;
pub mod annotations;
pub mod candidates;
pub mod endpoint;
pub mod filter;
pub mod glob;
pub mod holders;
pub mod lease;
pub mod owner;
pub mod pick;
pub mod pool;
pub mod records;
pub mod release;
pub mod reservations;
pub mod routes;
pub mod shards;

/// A hash of a node's name that is the same in every process and build (FNV-1a; the standard
/// library's hasher is seeded per process): what spreads nodes that must not act in step.
pub fn node_hash(node: &str) -> u64 {
    node.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
