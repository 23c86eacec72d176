//! Replicas of the real `spiderpool-operator` binary with leader election, for the chaos suite:
//! each one can be crashed, frozen, thawed and started again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

use crate::watchdog::{self, Registration, Resource};
use crate::{tools, util};

/// Where the replicas keep their leader Lease.
pub const LEASE_NAMESPACE: &str = "kube-system";
/// The leader Lease's name (the operator's default).
pub const LEASE_NAME: &str = "spiderpool-controller-leases";

/// One replica: its identity is its leader-election identity.
#[derive(Debug)]
pub struct OperatorReplica {
    identity: String,
    kubeconfig: PathBuf,
    log: PathBuf,
    gc_interval: Duration,
    child: Option<Child>,
    _registration: Option<Registration>,
}

impl OperatorReplica {
    /// Starts replica `identity` against the API server of `kubeconfig`, logging to
    /// `<dir>/operator-<identity>.log` (appended). Leader election is fast (3 s lease, 2 s renew
    /// deadline, 300 ms retry) and reclaim scans every `gc_interval`; webhooks are off (the API
    /// server would need to reach them).
    pub fn start(identity: &str, kubeconfig: &Path, dir: &Path, gc_interval: Duration) -> Result<Self> {
        let mut replica = OperatorReplica {
            identity: identity.to_owned(),
            kubeconfig: kubeconfig.to_path_buf(),
            log: dir.join(format!("operator-{identity}.log")),
            gc_interval,
            child: None,
            _registration: None,
        };
        replica.spawn()?;
        Ok(replica)
    }

    fn spawn(&mut self) -> Result<()> {
        let binary = tools::workspace_binary("spiderpool-operator", "spiderpool-operator", false)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let ports = util::free_ports(std::net::Ipv4Addr::LOCALHOST.into(), 2)?;
        let child = Command::new(binary)
            .env("KUBECONFIG", &self.kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("SPIDERPOOL_OPERATOR_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .args(["--namespace", LEASE_NAMESPACE, "--pod-name", &self.identity])
            .args([
                "--lease-duration",
                "3",
                "--renew-deadline",
                "2",
                "--retry-period",
                "0.3",
            ])
            .args(["--bind-address", "127.0.0.1"])
            .args(["--health-port", &ports[0].to_string()])
            .args(["--metrics-port", &ports[1].to_string()])
            .args(["--enable-webhooks", "false"])
            .args(["--gc-interval", &self.gc_interval.as_secs().max(1).to_string()])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .spawn()
            .context("starting spiderpool-operator")?;
        self._registration = Some(watchdog::register(Resource::ProcessGroup(child.id())));
        self.child = Some(child);
        Ok(())
    }

    /// The leader-election identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether the process runs (it may be frozen).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Sends `signal` to the replica's process group.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        if let Some(child) = &self.child {
            let pgid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
            killpg(pgid, signal)
                .with_context(|| format!("sending {signal} to operator {}", self.identity))?;
        }
        Ok(())
    }

    /// Kills the replica at once (a crash); [`OperatorReplica::restart`] starts it again.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pgid) = i32::try_from(child.id()) {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            let _ = child.wait();
        }
        self._registration = None;
    }

    /// Starts the replica again if it is not running.
    pub fn restart(&mut self) -> Result<()> {
        if self.running() {
            return Ok(());
        }
        self.kill();
        self.spawn()
    }
}

impl Drop for OperatorReplica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The identity holding the leader Lease, if any.
pub async fn leader(client: &Client) -> Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    Ok(leases
        .get_opt(LEASE_NAME)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}
