//! Cleanup that survives the test process.
//!
//! Destructors do the normal cleanup, but they never run when the test process is killed
//! (SIGKILL, a CI timeout, `abort`), nor for a cluster kept in a `static` (statics are not dropped
//! when `main` returns). So every external resource the harness creates (a child's process group,
//! a network namespace, a link in the host namespace, a temp dir) is also registered with one
//! watchdog process per test process: a small bash loop reading registrations from a pipe. The
//! test process holds the only write end; when it exits for whatever reason the kernel closes it,
//! the watchdog reads EOF and removes whatever is still registered: it kills the process groups,
//! waits for them to go, removes the cgroups (of real nodes' kubelets), deletes the network
//! namespaces and links, and removes the directories.
//!
//! The watchdog runs in its own process group so a Ctrl-C aimed at the test doesn't take it
//! down first. Registrations are dropped (unregistered) once the owner has cleaned up itself.

use std::io::Write;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use std::os::unix::process::CommandExt;

const SCRIPT: &str = r#"
declare -A items=()
while IFS= read -r line; do
  case "$line" in
    +*) id=${line%% *}; id=${id#+}; items[$id]=${line#* } ;;
    -*) unset "items[${line#-}]" ;;
  esac
done
for v in "${items[@]}"; do
  case "$v" in pgrp\ *) kill -KILL -- "-${v#pgrp }" 2>/dev/null ;; esac
done
for v in "${items[@]}"; do
  case "$v" in
    pgrp\ *)
      for _ in $(seq 100); do kill -0 -- "-${v#pgrp }" 2>/dev/null || break; sleep 0.05; done ;;
  esac
done
for v in "${items[@]}"; do
  case "$v" in
    cgroup\ *)
      for _ in $(seq 50); do
        left=0
        for h in /sys/fs/cgroup/*/; do
          [ -d "$h${v#cgroup }" ] || continue
          find "$h${v#cgroup }" -depth -type d -exec rmdir {} \; 2>/dev/null
          [ -d "$h${v#cgroup }" ] && left=1
        done
        [ $left = 0 ] && break
        sleep 0.1
      done ;;
  esac
done
for v in "${items[@]}"; do
  case "$v" in netns\ *) ip netns delete "${v#netns }" 2>/dev/null ;; esac
done
for v in "${items[@]}"; do
  case "$v" in link\ *) ip link delete "${v#link }" 2>/dev/null ;; esac
done
for v in "${items[@]}"; do
  case "$v" in dir\ *) rm -rf -- "${v#dir }" ;; esac
done
"#;

/// Something the watchdog removes if the test process goes away without removing it itself.
#[derive(Debug, Clone)]
pub enum Resource {
    /// A process group: gets SIGKILL.
    ProcessGroup(u32),
    /// A named network namespace (`ip netns`): gets deleted.
    Netns(String),
    /// A link in the host network namespace: gets deleted.
    Link(String),
    /// A directory: gets removed recursively.
    Dir(std::path::PathBuf),
    /// A cgroup, by its path below each hierarchy's root (`/sys/fs/cgroup/<controller>/<name>`): it
    /// and every cgroup below it get removed in every hierarchy, once their processes are gone.
    Cgroup(String),
}

impl Resource {
    fn line(&self) -> Option<String> {
        let (kind, value) = match self {
            Resource::ProcessGroup(pgid) => ("pgrp", pgid.to_string()),
            Resource::Netns(name) => ("netns", name.clone()),
            Resource::Link(name) => ("link", name.clone()),
            Resource::Dir(path) => ("dir", path.to_str()?.to_owned()),
            Resource::Cgroup(name) => ("cgroup", name.clone()),
        };
        // A cgroup name is a relative path below the hierarchy roots; anything else could name a root.
        let bad_cgroup = matches!(self, Resource::Cgroup(name) if name.starts_with('/') || name.split('/').any(|p| p.is_empty() || p == ".."));
        if value.is_empty() || value.contains('\n') || bad_cgroup {
            return None;
        }
        Some(format!("{kind} {value}"))
    }
}

/// A live registration; dropping it tells the watchdog the owner cleaned up on its own.
#[derive(Debug)]
#[must_use = "dropping a registration unregisters the resource at once"]
pub struct Registration {
    id: Option<u64>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            send(&format!("-{id}"));
        }
    }
}

struct Watchdog {
    stdin: Mutex<Option<ChildStdin>>,
    next: AtomicU64,
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        let spawned = Command::new("bash")
            .arg("-c")
            .arg(SCRIPT)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        let stdin = match spawned {
            // The child is deliberately never waited for: it must outlive this process.
            Ok(mut child) => child.stdin.take(),
            Err(err) => {
                tracing::warn!(%err, "cannot start the cleanup watchdog (bash); a killed test may leave resources behind");
                None
            }
        };
        Watchdog { stdin: Mutex::new(stdin), next: AtomicU64::new(1) }
    })
}

fn send(line: &str) {
    let dog = watchdog();
    let Ok(mut guard) = dog.stdin.lock() else { return };
    if let Some(stdin) = guard.as_mut()
        && let Err(err) = writeln!(stdin, "{line}").and_then(|()| stdin.flush())
    {
        tracing::warn!(%err, "cleanup watchdog is gone");
        *guard = None;
    }
}

/// Registers `resource` with the process-wide watchdog.
pub fn register(resource: Resource) -> Registration {
    let Some(line) = resource.line() else {
        tracing::warn!(
            ?resource,
            "cannot register this resource with the cleanup watchdog"
        );
        return Registration { id: None };
    };
    let id = watchdog().next.fetch_add(1, Ordering::Relaxed);
    send(&format!("+{id} {line}"));
    Registration { id: Some(id) }
}

/// Registers a directory (see [`register`]).
pub fn register_dir(path: &Path) -> Registration {
    register(Resource::Dir(path.to_path_buf()))
}
