//! The node daemon (`spiderpool-agent`) as a real process per simulated node, talking to the test
//! cluster's API server, with its IPAM socket in a temp directory. Plugins reach it through
//! `SPIDERPOOL_IPAM_UNIX_SOCKET_PATH` (see [`Daemon::socket_env`]).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::cluster::TestCluster;
use crate::tools;
use crate::watchdog::{self, Registration, Resource};

/// The environment variable through which the `spiderpool` plugin finds its node's daemon when the
/// network configuration does not name a socket.
pub const SOCKET_ENV: &str = "SPIDERPOOL_IPAM_UNIX_SOCKET_PATH";

/// A running `spiderpool-agent`.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    node: String,
    socket: PathBuf,
    health_port: u16,
    log: PathBuf,
    _registration: Registration,
}

/// Where daemons of a test keep sockets and logs: `<dir>/<node>.sock`, `<dir>/<node>.log`.
pub fn socket_path(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("{node}.sock"))
}

impl Daemon {
    /// Starts the daemon of `node` (debug build, or release with `release`), and waits until it
    /// answers healthy (caches synced). `extra_args` are appended to the command line.
    pub fn start(
        cluster: &TestCluster,
        node: &str,
        dir: &Path,
        release: bool,
        extra_args: &[&str],
    ) -> Result<Self> {
        Self::start_with_kubeconfig(cluster.kubeconfig_path(), node, dir, release, extra_args)
    }

    /// [`Daemon::start`] with the API server (and credentials) of `kubeconfig`: the chaos suite
    /// points it at a fault proxy. A daemon started again for the same node in the same `dir`
    /// appends to its predecessor's log.
    pub fn start_with_kubeconfig(
        kubeconfig: &Path,
        node: &str,
        dir: &Path,
        release: bool,
        extra_args: &[&str],
    ) -> Result<Self> {
        let binary = tools::workspace_binary("spiderpool-node-daemon", "spiderpool-agent", release)?;
        Self::start_binary(&binary, kubeconfig, node, dir, extra_args)
    }

    /// [`Daemon::start_with_kubeconfig`] of the agent binary at `binary` (the benchmarks can run the
    /// one the container image ships).
    pub fn start_binary(
        binary: &Path,
        kubeconfig: &Path,
        node: &str,
        dir: &Path,
        extra_args: &[&str],
    ) -> Result<Self> {
        let socket = socket_path(dir, node);
        let log = dir.join(format!("{node}.log"));
        // Where this run's lines start (a daemon started again appends to its predecessor's log).
        let log_start = std::fs::metadata(&log).map_or(0, |m| m.len());
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        // The daemon runs in the host's namespace here: it must not tune the host's sysctls unless a
        // test asks for it.
        let tune = if extra_args
            .iter()
            .any(|arg| arg.starts_with("--tune-sysctl-config"))
        {
            None
        } else {
            Some("--tune-sysctl-config=false")
        };
        let child = Command::new(binary)
            .args(["--node-name", node, "--socket-path"])
            .arg(&socket)
            // Port 0: the agent binds one and logs it. A port picked here and released for the
            // agent could be taken by the time it binds.
            .args(["--health-address", "127.0.0.1:0"])
            .args(tune)
            .args(extra_args)
            // The IPAM daemons of simulated nodes all run in the host's namespace: none of them may
            // carry out interface tasks there (tests of that run the executor on their own).
            .env("SPIDERPOOL_INTERFACE_TASKS", "false")
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("SPIDERPOOL_DAEMON_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let registration = watchdog::register(Resource::ProcessGroup(child.id()));
        let mut daemon = Daemon {
            child,
            node: node.to_owned(),
            socket,
            health_port: 0,
            log,
            _registration: registration,
        };
        daemon.wait_healthy(Duration::from_secs(30), log_start)?;
        daemon.health_port = daemon.logged_health_port()?;
        Ok(daemon)
    }

    /// The health port the daemon last logged it serves on (a restarted daemon appends to the log),
    /// in either log format.
    fn logged_health_port(&self) -> Result<u16> {
        const LOOPBACK: &str = "127.0.0.1:";
        self.log()
            .lines()
            .rev()
            .filter(|line| line.contains("serving health and metrics"))
            .filter_map(|line| {
                let after = &line[line.find(LOOPBACK)? + LOOPBACK.len()..];
                let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u16>().ok()
            })
            .next()
            .with_context(|| format!("the daemon of {} logged no health address", self.node))
    }

    /// Waits until the daemon answers healthy; if it exits first, fails with the head of what it
    /// wrote from byte `log_start` of the log on (its error comes first, a backtrace may follow).
    fn wait_healthy(&mut self, timeout: Duration, log_start: u64) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = self.log();
                let this_run = log.get(usize::try_from(log_start).unwrap_or(0)..).unwrap_or(&log);
                let head: Vec<&str> = this_run.lines().take(40).collect();
                bail!(
                    "the daemon of {} exited with {status}; log:\n{}",
                    self.node,
                    head.join("\n")
                );
            }
            if let Ok((200, _)) = unix_request(&self.socket, "GET", spiderpool_healthy_path(), None) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the daemon of {} was not healthy within {timeout:?}; log:\n{}",
                    self.node,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The IPAM socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The environment entry for plugins of a node simulator whose daemons all live in `dir`.
    pub fn socket_env(dir: &Path) -> (String, String) {
        (
            SOCKET_ENV.to_owned(),
            dir.join("{node}.sock").display().to_string(),
        )
    }

    /// `GET /metrics` text.
    pub fn metrics(&self) -> Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.health_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default())
    }

    /// The value of one metric line (exact name with labels), 0 when absent.
    pub fn metric(&self, name: &str) -> Result<f64> {
        let text = self.metrics()?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum())
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        self.status_kib("VmHWM")
    }

    /// Resident memory now, in KiB: anonymous (the heap and stacks) and file-backed (mostly the
    /// binary's code, shared with every other process running it).
    pub fn rss_kib(&self) -> Result<(u64, u64)> {
        Ok((self.status_kib("RssAnon")?, self.status_kib("RssFile")?))
    }

    /// One "<field>: N kB" line of /proc/<pid>/status.
    fn status_kib(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field).and_then(|rest| rest.strip_prefix(':')))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/<pid>/status"))
    }

    /// The daemon's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The daemon's whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(())
    }

    /// Kills the daemon at once (a crash).
    pub fn kill(mut self) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

fn spiderpool_healthy_path() -> &'static str {
    "/v1/ipam/healthy"
}

/// One HTTP/1.1 request over a unix socket; returns status and body.
pub fn unix_request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String)> {
    let mut stream =
        UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
