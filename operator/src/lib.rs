//! The operator's library: the topology compiler ([`compile`]), the SpiderMultusConfig ->
//! NetworkAttachmentDefinition renderer ([`nad`]) and the `spiderctl` command line ([`cli`]) are pure;
//! [`controller`], [`webhook`] and [`leader`] are the I/O shells the `spiderpool-operator` binary runs.

pub mod cli;
pub mod compile;
pub mod controller;
pub mod events;
pub mod init;
pub mod leader;
pub mod metrics;
pub mod nad;
pub mod settings;
pub mod synthetic;
pub mod telemetry;
pub mod webhook;
