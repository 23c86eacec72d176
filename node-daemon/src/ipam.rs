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
pub mod lease;
pub mod owner;
pub mod pick;
pub mod pool;
pub mod records;
pub mod release;
pub mod reservations;
pub mod routes;
pub mod shards;
