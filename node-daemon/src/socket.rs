//! The agent's unix socket, and the lock that makes the agent the only one of its node.
//!
//! - One agent per socket: before touching the socket, the agent takes an exclusive lock on
//!   `<socket>.lock` ([`lock`], `flock`, released by the kernel when the process dies, however it
//!   dies). A second agent (a second install, an overlapping rollout) waits a little for it, then
//!   refuses to start, naming the holder. Two agents of one node would both hand out the node's
//!   reservations: the lock is what keeps that from happening.
//! - The socket file: only an agent holding the lock replaces what is at the socket path, and only a
//!   socket (a previous agent's, whose process is gone since the lock was free); anything else
//!   there is left alone and the agent refuses to start. On exit it removes the socket only if it is
//!   still the one it created ([`SocketFile::remove_if_ours`]).
//! - Only root may talk to it: the socket is created with mode 0600 (bound under a temporary name,
//!   given its mode, then renamed into place, so it never exists with a wider one) and every
//!   connection whose peer is not uid 0 is closed at once ([`RootOnly`]); the `spiderpool` plugin
//!   runs as root, as every CNI plugin does.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

use crate::clock;
use crate::metrics::Metrics;

/// The only peer allowed: root.
pub const ALLOWED_UID: u32 = 0;
/// The socket's mode: read and write for its owner (root), nothing for anyone else.
pub const SOCKET_MODE: u32 = 0o600;

/// Why the agent cannot have its socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another agent holds the lock.
    #[error(
        "another spiderpool-agent holds {path} ({holder}); refusing to start a second agent for this node"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// What the holder wrote in it.
        holder: String,
    },
    /// Something that is not a socket is at the socket path.
    #[error("{0} exists and is not a socket; not removing it")]
    NotASocket(PathBuf),
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was tried.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SocketError {
    let path = path.to_owned();
    move |source| SocketError::Io { action, path, source }
}

/// The lock file of the socket at `socket`.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// This agent's hold on its socket; released when dropped or when the process ends.
#[derive(Debug)]
pub struct AgentLock {
    _file: File,
}

/// Takes the lock of the socket at `socket` for the agent of `node`, waiting up to `wait` for
/// another agent to let go of it.
pub async fn lock(socket: &Path, node: &str, wait: Duration) -> Result<AgentLock, SocketError> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    let path = lock_path(socket);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io("opening", &path))?;
    let deadline = clock::deadline_in(wait);
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if clock::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(SocketError::Locked {
                    path,
                    holder: holder.trim().to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io("locking", &path)(e)),
        }
    }
    file.set_len(0).map_err(io("writing", &path))?;
    writeln!(file, "pid {} node {node}", std::process::id()).map_err(io("writing", &path))?;
    Ok(AgentLock { _file: file })
}

/// A file's identity: device, inode, change time, and whether it is a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
    socket: bool,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Self {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            socket: meta.file_type().is_socket(),
        }
    }
}

/// The socket file this agent created.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// What tells the socket created from a later file at the path (an inode number alone may be
    /// reused at once).
    identity: Identity,
}

impl SocketFile {
    /// Removes the socket file if it is still the one this agent created.
    pub fn remove_if_ours(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if Identity::of(&meta) == self.identity => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "could not remove the socket");
                }
            }
            Ok(_) => tracing::warn!(
                path = %self.path.display(),
                "the socket path now holds another file; leaving it"
            ),
            Err(_) => {}
        }
    }
}

/// Binds the socket at `path` (the agent holds its lock), replacing a previous agent's socket but
/// nothing else, with mode [`SOCKET_MODE`]. Connections from anyone but root are refused and counted
/// in `metrics`.
pub fn bind(path: &Path, _lock: &AgentLock, metrics: Metrics) -> Result<(RootOnly, SocketFile), SocketError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            tracing::info!(path = %path.display(), "replacing the socket a previous agent of this node left");
            std::fs::remove_file(path).map_err(io("removing", path))?;
        }
        Ok(_) => return Err(SocketError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("looking at", path)(e)),
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.new", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary).map_err(io("binding", &temporary))?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(io("setting the mode of", &temporary))?;
    std::fs::rename(&temporary, path).map_err(io("renaming the socket to", path))?;
    let meta = std::fs::symlink_metadata(path).map_err(io("looking at", path))?;
    Ok((
        RootOnly { listener, metrics },
        SocketFile {
            path: path.to_owned(),
            identity: Identity::of(&meta),
        },
    ))
}

/// The socket's listener, closing every connection whose peer is not root.
pub struct RootOnly {
    listener: UnixListener,
    metrics: Metrics,
}

impl axum::serve::Listener for RootOnly {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, address) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection on the socket failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match stream.peer_cred() {
                Ok(peer) if peer.uid() == ALLOWED_UID => return (stream, address),
                Ok(peer) => {
                    self.metrics.socket_refused();
                    tracing::warn!(
                        uid = peer.uid(),
                        pid = ?peer.pid(),
                        "refused a connection to the IPAM socket from a process that is not root"
                    );
                }
                Err(e) => {
                    self.metrics.socket_refused();
                    tracing::warn!(error = %e, "refused a connection whose peer cannot be told");
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests;
