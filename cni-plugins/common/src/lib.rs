//! What the project's CNI plugins (`spiderpool`, `coordinator`) share, so that each rule has one
//! owner: the CNI protocol ([`cni`]: versions, commands, the error object, result shapes),
//! [`args`] (`CNI_ARGS`), [`invocation`] (the `CNI_*` environment, the attachment parameters,
//! VERSION, what to print and how to exit), [`netconf`] (reading a network configuration key by
//! key, naming the key in every error), [`log`] (the line logger: file or stderr, never stdout) and
//! [`http`] (HTTP/1.1 over the node daemon's unix socket) and [`confine`] (where a plugin may
//! write logs and which sockets it may contact, whatever its netconf says).
//!
//! Synchronous and small: a plugin lives for milliseconds and must not link kube or an async
//! runtime for any of this.

pub mod args;
pub mod cni;
pub mod confine;
pub mod http;
pub mod invocation;
pub mod log;
pub mod netconf;
