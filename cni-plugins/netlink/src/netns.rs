//! Network namespaces: an open namespace file, and running code inside one.
//!
//! Entering a namespace changes only the calling thread, so [`Netns::run`] does it on a short-lived
//! scoped thread: the caller's thread never leaves its namespace, whatever happens, and nothing needs
//! restoring. Sockets opened there (netlink, packet) stay bound to that namespace after the thread
//! ends; files under `/proc/sys/net` opened there are that namespace's; a process spawned there
//! starts in it.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns, unshare};

use crate::error::{NetlinkError, Result};

/// An open network namespace (the namespace lives at least as long as this handle).
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens the namespace at `path` (e.g. `/var/run/netns/cni-1234` or `/proc/<pid>/ns/net`).
    /// A missing path is an error of kind [`io::ErrorKind::NotFound`] (a DEL after the runtime
    /// removed the namespace).
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        Ok(Self {
            file: File::open(path)?,
            path: path.to_path_buf(),
        })
    }

    /// The namespace of the calling thread.
    pub fn current() -> io::Result<Self> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// A new, empty namespace (only a down `lo`), alive while the handle is: for tests and probes
    /// that need a place of their own.
    pub fn create() -> io::Result<Self> {
        run_on_thread(|| {
            unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            Self::current()
        })?
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `body` on a thread inside this namespace and returns what it returns.
    pub fn run<T: Send>(&self, body: impl FnOnce() -> T + Send) -> Result<T> {
        let entered = run_on_thread(|| {
            setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            Ok::<_, io::Error>(body())
        });
        entered
            .and_then(|inner| inner)
            .map_err(|source| NetlinkError::Netns {
                path: self.path.display().to_string(),
                source,
            })
    }
}

fn run_on_thread<T: Send>(body: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("netns".to_owned())
            .spawn_scoped(scope, body)?
            .join()
            .map_err(|_| io::Error::other("the thread inside the network namespace panicked"))
    })
}

impl std::os::fd::AsFd for Netns {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl std::os::fd::AsRawFd for Netns {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}
