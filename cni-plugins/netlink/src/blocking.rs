//! For synchronous programs (the CNI plugins): a current-thread tokio runtime that exists only to
//! drive netlink requests.

use std::future::Future;
use std::io;

use crate::error::Result;
use crate::handle::Handle;
use crate::netns::Netns;

/// A current-thread runtime for netlink.
#[derive(Debug)]
pub struct Blocking {
    runtime: tokio::runtime::Runtime,
}

impl Blocking {
    /// A new runtime (with I/O enabled, for the netlink sockets).
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()?,
        })
    }

    /// Connects in the calling thread's namespace, or in `netns`.
    pub fn connect(&self, netns: Option<&Netns>) -> Result<Handle> {
        let _entered = self.runtime.enter();
        match netns {
            None => Handle::connect(),
            Some(netns) => Handle::connect_in(netns),
        }
    }

    /// Runs `future` (netlink requests on handles this runtime connected) to completion.
    pub fn run<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }
}
