//! Errors that keep the kernel's errno, because callers branch on it (`EEXIST` on an add that
//! found the object already there, `ENOENT`/`ESRCH` on a delete that found it gone, `EOPNOTSUPP`
//! for a link kind the kernel lacks).

use nix::errno::Errno;
use thiserror::Error;

/// What a netlink operation failed with.
#[derive(Debug, Error)]
pub enum NetlinkError {
    /// The kernel refused the request.
    #[error("{op}: {errno} ({})", errno.desc())]
    Kernel {
        /// What was asked, e.g. `add route 10.0.0.0/24 table 500`.
        op: String,
        /// The kernel's answer.
        errno: Errno,
    },
    /// The socket or the connection failed (not an answer of the kernel).
    #[error("{op}: {detail}")]
    Transport {
        /// What was asked.
        op: String,
        /// Why it failed.
        detail: String,
    },
    /// The kernel answered something we cannot read.
    #[error("{op}: unexpected answer: {detail}")]
    Unexpected {
        /// What was asked.
        op: String,
        /// What came back.
        detail: String,
    },
    /// Entering a network namespace failed.
    #[error("network namespace {path}: {source}")]
    Netns {
        /// The namespace's path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl NetlinkError {
    /// The kernel's errno, when the kernel answered.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The object already exists (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(Errno::EEXIST)
    }

    /// The object (or the link it refers to) does not exist: what a delete of something already
    /// gone answers (`ENOENT`, `ESRCH` for routes, `ENODEV` for links, `EADDRNOTAVAIL` for addresses).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(Errno::ENOENT | Errno::ESRCH | Errno::ENODEV | Errno::EADDRNOTAVAIL)
        )
    }

    /// The kernel lacks the feature (`EOPNOTSUPP`), e.g. a link kind not built in.
    pub fn is_unsupported(&self) -> bool {
        self.errno() == Some(Errno::EOPNOTSUPP)
    }
}

/// This crate's result.
pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;
