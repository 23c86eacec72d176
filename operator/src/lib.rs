//! The operator's library: the topology compiler ([`compile`]), the SpiderMultusConfig ->
//! NetworkAttachmentDefinition renderer ([`nad`]) and the `spiderctl` command line ([`cli`]). The
//! controllers, webhooks and leader election arrive with the operator issue; what is here is pure.

pub mod cli;
pub mod compile;
pub mod nad;
pub mod synthetic;
