//! Where a plugin may write and connect. The plugins run as root, and their network configuration
//! comes from whoever may write NetworkAttachmentDefinitions: a log path or a socket path in it must
//! not become "append to any file as root" or "speak HTTP to any socket as root". So a configured
//! log file must lie inside the log directory and a configured socket inside the daemon's socket
//! directories. The runtime (not the netconf) may move both: [`LOG_DIR_ENV`] names another log
//! directory, and the socket [`crate::invocation::SOCKET_PATH_ENV`] names is allowed along with its
//! directory.
//!
//! The checks here are lexical (absolute, no `..`, under the directory); [`crate::log`] also
//! refuses symlinks where it opens the file.

use std::path::{Component, Path, PathBuf};

/// The directory plugin logs go to unless the runtime names another (upstream's log files live here).
pub const LOG_DIR: &str = "/var/log/spidernet";
/// Environment variable (the runtime's, not the netconf's) naming another log directory.
pub const LOG_DIR_ENV: &str = "SPIDERPOOL_CNI_LOG_DIR";
/// `/dev/null` is always accepted as a log file: it discards, whatever the directory.
pub const DISCARD: &str = "/dev/null";
/// Where the node daemon's socket lives (upstream's directory; `/var/run` is `/run` on every
/// current distribution, and either spelling may be configured).
pub const SOCKET_DIRS: [&str; 2] = ["/var/run/spidernet", "/run/spidernet"];

/// The log directory: [`LOG_DIR_ENV`]'s value when the runtime set one, else [`LOG_DIR`].
pub fn log_dir(from_env: Option<&str>) -> PathBuf {
    PathBuf::from(from_env.filter(|dir| !dir.is_empty()).unwrap_or(LOG_DIR))
}

/// Whether `path` is absolute, has no `..` and lies strictly inside `dir` (compared component by
/// component, so `/var/log/spidernet2` is not inside `/var/log/spidernet`).
pub fn is_inside(path: &Path, dir: &Path) -> bool {
    path.is_absolute()
        && !path.components().any(|part| part == Component::ParentDir)
        && path != dir
        && path.starts_with(dir)
}

/// Checks a configured log file; the error says why and where logs may go.
pub fn check_log_file(path: &Path, dir: &Path) -> Result<(), String> {
    if path == Path::new(DISCARD) || is_inside(path, dir) {
        Ok(())
    } else {
        Err(format!(
            "{} is not inside {}, the directory this plugin may write (an absolute path without \
             `..`; the runtime may name another directory in {LOG_DIR_ENV})",
            path.display(),
            dir.display()
        ))
    }
}

/// Checks a socket named in the netconf: inside [`SOCKET_DIRS`], or in the directory of the
/// runtime's own socket (`runtime_socket`).
pub fn check_socket(path: &Path, runtime_socket: Option<&str>) -> Result<(), String> {
    let runtime_socket = runtime_socket.filter(|socket| !socket.is_empty()).map(Path::new);
    let runtime_dir = runtime_socket.and_then(Path::parent);
    let allowed = SOCKET_DIRS.iter().map(Path::new).chain(runtime_dir);
    if allowed.clone().any(|dir| is_inside(path, dir)) {
        return Ok(());
    }
    let dirs: Vec<String> = allowed.map(|dir| dir.display().to_string()).collect();
    Err(format!(
        "{} is not inside {}, where the node daemon's socket may be",
        path.display(),
        dirs.join(" or ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_means_strictly_below_without_parent_steps() {
        let dir = Path::new("/var/log/spidernet");
        assert!(is_inside(Path::new("/var/log/spidernet/a.log"), dir));
        assert!(is_inside(Path::new("/var/log/spidernet/sub/a.log"), dir));
        assert!(is_inside(Path::new("/var/log//spidernet/./a.log"), dir));
        for outside in [
            "/var/log/spidernet",
            "/var/log/spidernet2/a.log",
            "/var/log/spidernet/../a.log",
            "/var/log/spidernet/sub/../../a.log",
            "var/log/spidernet/a.log",
            "/etc/passwd",
        ] {
            assert!(!is_inside(Path::new(outside), dir), "{outside}");
        }
    }

    #[test]
    fn log_files_stay_in_the_log_directory() {
        let dir = log_dir(None);
        assert_eq!(dir, Path::new(LOG_DIR));
        assert_eq!(log_dir(Some("")), Path::new(LOG_DIR));
        assert!(check_log_file(Path::new("/var/log/spidernet/coordinator.log"), &dir).is_ok());
        assert!(check_log_file(Path::new(DISCARD), &dir).is_ok());
        let error = check_log_file(Path::new("/etc/cron.d/x"), &dir).unwrap_err();
        assert!(
            error.contains("/var/log/spidernet") && error.contains(LOG_DIR_ENV),
            "{error}"
        );
        let moved = log_dir(Some("/tmp/logs"));
        assert!(check_log_file(Path::new("/tmp/logs/x.log"), &moved).is_ok());
        assert!(check_log_file(Path::new("/var/log/spidernet/x.log"), &moved).is_err());
    }

    #[test]
    fn sockets_stay_in_the_daemons_directories() {
        for good in ["/var/run/spidernet/spiderpool.sock", "/run/spidernet/other.sock"] {
            assert!(check_socket(Path::new(good), None).is_ok(), "{good}");
        }
        let error = check_socket(Path::new("/run/containerd/containerd.sock"), None).unwrap_err();
        assert!(error.contains("/var/run/spidernet or /run/spidernet"), "{error}");
        let runtime = Some("/tmp/t/node-1.sock");
        assert!(check_socket(Path::new("/tmp/t/node-1.sock"), runtime).is_ok());
        assert!(check_socket(Path::new("/tmp/t/node-2.sock"), runtime).is_ok());
        assert!(check_socket(Path::new("/tmp/u/node-1.sock"), runtime).is_err());
        assert!(check_socket(Path::new("/var/run/spidernet/../docker.sock"), None).is_err());
    }
}
