//! The kernel tier: tests that need bonding, 802.1q VLANs, ipvlan or dummy links, which the host
//! kernel lacks, run inside a QEMU VM booting Debian's real kernel.
//!
//! - The kernel is Debian's (the package `linux-image-amd64` depends on), downloaded once and cached
//!   by version by `tests/tools/vm-kernel.sh` (`~/.cache/spiderpool-rs/vm-kernel/`).
//! - The initramfs is assembled in memory for every run: busybox (`busybox-static`), the host's
//!   iproute2 `ip` with its libraries, the wanted modules in dependency order, the payload (host
//!   binaries with their shared libraries, files) and an `/init` that loads the modules, brings `lo`
//!   up, runs the steps in order and powers off.
//! - QEMU runs with TCG (pure emulation), one CPU, no network device unless asked for and no
//!   display; the kernel console goes to one serial port, the steps' output to another. An outer
//!   deadline kills a VM that hangs.
//! - [`Vm::forward_to_unix_socket`] gives the guest one NIC on QEMU's user-mode network in its
//!   restricted mode (nothing leaves the VM but the explicit forwards): a TCP port at
//!   [`GUEST_FORWARD_ADDRESS`] in the guest reaches a unix socket on the host (the node agent's), and
//!   [`guest::relay_unix_socket`] serves that port as a unix socket inside the guest.
//!
//! [`Vm`] runs arbitrary steps and reports each one's exit code and output; a harness error (no
//! boot, deadline) is an `Err`. [`run_guest_tests`] is the usual way in: the calling test binary
//! copies itself into the VM and runs its own `#[ignore]`d guest tests there, so a failing test inside
//! the VM fails the host-side test with the guest's output, and no second build is needed:
//!
//! ```no_run
//! #[test]
//! fn kernel_tier() -> anyhow::Result<()> {
//!     spiderpool_tests::vm::run_guest_tests(spiderpool_tests::vm::Vm::new("bonds"), "guest::")?;
//!     Ok(())
//! }
//!
//! mod guest {
//!     #[test]
//!     #[ignore = "kernel tier: runs inside the VM (kernel_tier)"]
//!     fn bond_comes_up() {
//!         spiderpool_tests::vm::guest::require_vm();
//!         // ... create links with netlink or /sbin/ip ...
//!     }
//! }
//! ```
//!
//! Payload binaries may be static (musl) or dynamic (glibc; `ldd` finds the libraries to copy).
//! Test binaries of this workspace are dynamic: copying their libraries costs nothing, while a musl
//! build would compile the whole dependency graph a second time.

pub mod guest;

mod cpio;
mod initramfs;
mod kernel;
mod qemu;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

pub use kernel::Kernel;

use initramfs::{ALL_DONE, GuestStep, STEP_BEGIN, STEP_END};

/// Modules loaded unless [`Vm::modules`] says otherwise (their dependencies come along).
pub const DEFAULT_MODULES: &[&str] = &["8021q", "bonding", "dummy", "macvlan", "ipvlan", "veth", "bridge"];

/// The address in the guest at which [`Vm::forward_to_unix_socket`]'s ports are (QEMU user-mode
/// network: the guest is [`GUEST_ADDRESS`] on `10.0.2.0/24`).
pub const GUEST_FORWARD_ADDRESS: &str = "10.0.2.100";

/// The guest's own address on the forwarding NIC (QEMU user-mode network's first DHCP address;
/// configured statically by [`guest::forward_link_up`]).
pub const GUEST_ADDRESS: &str = "10.0.2.15/24";

/// Modules the forwarding NIC needs (virtio-net on PCI).
const FORWARD_MODULES: &[&str] = &["virtio_pci", "virtio_net"];

/// Where [`run_guest_tests`] puts the calling test binary inside the guest.
pub const GUEST_SELF: &str = "/test/self";

/// A VM to boot: modules, payload and steps.
#[derive(Debug, Clone)]
pub struct Vm {
    name: String,
    modules: Vec<String>,
    memory_mib: u32,
    timeout: Duration,
    binaries: Vec<(PathBuf, String)>,
    files: Vec<(String, u32, Vec<u8>)>,
    env: Vec<(String, String)>,
    steps: Vec<GuestStep>,
    forwards: Vec<Forward>,
}

/// One [`Vm::forward_to_unix_socket`].
#[derive(Debug, Clone)]
struct Forward {
    port: u16,
    socket: PathBuf,
    bridge: PathBuf,
}

impl Vm {
    /// A VM named `name` (used in the run directory's name and in errors).
    pub fn new(name: &str) -> Self {
        Vm {
            name: name.to_owned(),
            modules: DEFAULT_MODULES.iter().map(|m| (*m).to_owned()).collect(),
            memory_mib: 1024,
            timeout: Duration::from_secs(300),
            binaries: Vec::new(),
            files: Vec::new(),
            env: Vec::new(),
            steps: Vec::new(),
            forwards: Vec::new(),
        }
    }

    /// The modules to load, replacing [`DEFAULT_MODULES`].
    pub fn modules(mut self, modules: &[&str]) -> Self {
        self.modules = modules.iter().map(|m| (*m).to_owned()).collect();
        self
    }

    /// Guest memory (default 1024 MiB; the initramfs lives in it).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// The deadline from starting QEMU to its exit (default 300 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Copies the host executable `host` to `guest` (with its shared libraries if dynamic).
    pub fn binary(mut self, host: impl AsRef<Path>, guest: &str) -> Self {
        self.binaries
            .push((host.as_ref().to_path_buf(), guest.to_owned()));
        self
    }

    /// Puts a file with permission bits `mode` at `guest`.
    pub fn file(mut self, guest: &str, mode: u32, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((guest.to_owned(), mode, contents.into()));
        self
    }

    /// Exports `key=value` to every step.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Makes TCP port `port` at [`GUEST_FORWARD_ADDRESS`] in the guest reach the unix socket `socket`
    /// on the host: QEMU runs `bridge` (this crate's `unix-bridge` binary; an integration test passes
    /// `env!("CARGO_BIN_EXE_unix-bridge")`, which cargo builds along with it) once per guest
    /// connection. The guest gets a NIC for it, on QEMU's user-mode network with `restrict=on`: no
    /// other traffic leaves the VM. Bring it up in the guest with [`guest::forward_link_up`] (or
    /// serve the port as a unix socket with [`guest::relay_unix_socket`]).
    pub fn forward_to_unix_socket(
        mut self,
        port: u16,
        socket: impl AsRef<Path>,
        bridge: impl AsRef<Path>,
    ) -> Self {
        self.forwards.push(Forward {
            port,
            socket: socket.as_ref().to_path_buf(),
            bridge: bridge.as_ref().to_path_buf(),
        });
        self
    }

    /// Adds a step: `argv` runs in the guest as root from `/`, after the steps before it (whether
    /// they passed or not).
    pub fn step<I, S>(mut self, name: &str, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.steps.push(GuestStep {
            name: name.to_owned(),
            argv: argv.into_iter().map(Into::into).collect(),
        });
        self
    }

    /// Adds a step that runs `script` with busybox `sh -e`.
    pub fn script(self, name: &str, script: &str) -> Self {
        self.step(name, ["/bin/sh", "-ec", script])
    }

    /// Builds the initramfs, boots, and waits for the guest to power off. `Err` when the guest did
    /// not run every step (no boot, a crash, the deadline); the steps' own failures are in the result.
    pub fn run(self) -> Result<VmRun> {
        if self.steps.is_empty() {
            bail!("VM {:?} has no steps: it would prove nothing", self.name);
        }
        let kernel = Kernel::get()?;
        qemu::qemu_binary()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("spiderpool-vm-{}-", self.name))
            .tempdir_in(crate::cluster::temp_root())
            .context("creating the VM run dir")?;
        let _dir_registration = crate::watchdog::register_dir(dir.path());

        let mut archive = cpio::Archive::new();
        let mut modules: Vec<&str> = self.modules.iter().map(String::as_str).collect();
        let netdev = if self.forwards.is_empty() {
            None
        } else {
            modules.extend(FORWARD_MODULES);
            Some(self.netdev()?)
        };
        initramfs::base(&mut archive, &kernel, &modules)?;
        for (host, guest) in &self.binaries {
            initramfs::add_binary(&mut archive, host, guest)
                .with_context(|| format!("adding {} to the initramfs", host.display()))?;
        }
        for (guest, mode, contents) in &self.files {
            archive.file(guest, *mode, contents.clone());
        }
        archive.file(
            "/init",
            0o755,
            initramfs::init_script(&self.steps, &self.env).into_bytes(),
        );
        let initrd = dir.path().join("initrd.cpio");
        let bytes = archive.to_bytes();
        std::fs::write(&initrd, &bytes).context("writing the initramfs")?;
        tracing::info!(vm = %self.name, initramfs_mib = bytes.len() / (1 << 20), "booting");

        let boot = qemu::boot(&qemu::BootSpec {
            kernel: &kernel.vmlinuz(),
            initrd: &initrd,
            dir: dir.path(),
            memory_mib: self.memory_mib,
            timeout: self.timeout,
            netdev: netdev.as_deref(),
        })?;
        tracing::info!(vm = %self.name, seconds = boot.elapsed.as_secs_f64(), "powered off");
        let steps = parse_steps(&self.steps, &boot.steps);
        let run = VmRun {
            name: self.name.clone(),
            kernel_release: kernel.release.clone(),
            steps,
            console: boot.console,
            elapsed: boot.elapsed,
        };
        if std::env::var_os("SPIDERPOOL_TEST_KEEP").is_some() {
            let kept = dir.keep();
            tracing::warn!(dir = %kept.display(), "SPIDERPOOL_TEST_KEEP is set: keeping the VM run dir");
        }
        let finished = boot.steps.contains(ALL_DONE);
        match boot.exit {
            None => bail!(
                "VM {:?} did not power off within {:?}\n{}",
                self.name,
                self.timeout,
                run.report()
            ),
            Some(_) if !finished => bail!(
                "VM {:?} stopped before running every step (see the kernel console)\n{}",
                self.name,
                run.report()
            ),
            Some(_) => Ok(run),
        }
    }
}

impl Vm {
    /// QEMU's `-netdev` argument for [`Vm::forward_to_unix_socket`].
    fn netdev(&self) -> Result<String> {
        let mut netdev = "user,id=forward,restrict=on".to_owned();
        for Forward { port, socket, bridge } in &self.forwards {
            if !bridge.is_file() {
                bail!(
                    "the unix-bridge binary {} is missing (cargo builds it with the integration tests of spiderpool-tests)",
                    bridge.display()
                );
            }
            let command = format!("{} {}", bridge.display(), socket.display());
            // QEMU's option syntax: a comma inside a value is written twice.
            if command.contains(',') || command.contains('\'') || command.contains('"') {
                bail!(
                    "the forward command {command:?} has a character QEMU's option syntax or the shell would mangle"
                );
            }
            netdev.push_str(&format!(
                ",guestfwd=tcp:{GUEST_FORWARD_ADDRESS}:{port}-cmd:{command}"
            ));
        }
        Ok(netdev)
    }
}

/// What one boot did.
#[derive(Debug, Clone)]
pub struct VmRun {
    pub name: String,
    pub kernel_release: String,
    pub steps: Vec<StepResult>,
    /// The kernel's console (and QEMU's own messages).
    pub console: String,
    /// From starting QEMU to its exit.
    pub elapsed: Duration,
}

/// One step's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    pub name: String,
    /// `None`: the step never finished (the VM died or hit the deadline during it, or never got to it).
    pub exit_code: Option<i32>,
    pub output: String,
}

impl StepResult {
    pub fn passed(&self) -> bool {
        self.exit_code == Some(0)
    }
}

impl VmRun {
    /// The step named `name`.
    pub fn step(&self, name: &str) -> Option<&StepResult> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// `Err` naming every failed step, with its output, unless all passed.
    pub fn ensure_success(&self) -> Result<()> {
        if self.steps.iter().all(StepResult::passed) {
            return Ok(());
        }
        bail!("VM {:?}: a step failed\n{}", self.name, self.report())
    }

    /// Every step's exit code and output, and the end of the kernel console.
    pub fn report(&self) -> String {
        let mut out = format!(
            "VM {:?} (kernel {}, {:.1} s)\n",
            self.name,
            self.kernel_release,
            self.elapsed.as_secs_f64()
        );
        for step in &self.steps {
            let status = match step.exit_code {
                Some(0) => "passed".to_owned(),
                Some(code) => format!("FAILED (exit code {code})"),
                None => "did not finish".to_owned(),
            };
            out.push_str(&format!(
                "--- step {:?}: {status}\n{}\n",
                step.name,
                step.output.trim_end()
            ));
        }
        let lines: Vec<&str> = self.console.lines().collect();
        out.push_str("--- kernel console (last 40 lines)\n");
        out.push_str(&lines[lines.len().saturating_sub(40)..].join("\n"));
        out
    }
}

/// Splits the step port's text by the markers `/init` writes.
fn parse_steps(steps: &[GuestStep], text: &str) -> Vec<StepResult> {
    let mut results: Vec<StepResult> = steps
        .iter()
        .map(|s| StepResult {
            name: s.name.clone(),
            exit_code: None,
            output: String::new(),
        })
        .collect();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(STEP_BEGIN) {
            current = rest.trim().parse().ok().filter(|i| *i < results.len());
            continue;
        }
        if let Some(rest) = line.strip_prefix(STEP_END) {
            let mut parts = rest.split_whitespace();
            let index: Option<usize> = parts.next().and_then(|i| i.parse().ok());
            let code = parts
                .next()
                .and_then(|c| c.strip_prefix("rc="))
                .and_then(|c| c.parse().ok());
            if let Some(result) = index.and_then(|i| results.get_mut(i)) {
                result.exit_code = code;
            }
            current = None;
            continue;
        }
        if let Some(result) = current.and_then(|i| results.get_mut(i)) {
            result.output.push_str(line);
            result.output.push('\n');
        }
    }
    results
}

/// The libtest summary of a guest test run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestTests {
    pub passed: usize,
    pub failed: usize,
    /// [`VmRun::report`] of the run.
    pub report: String,
}

/// Boots `vm` with the calling test binary as its payload and runs, inside, that binary's ignored
/// tests whose names contain `filter` (one at a time). `Err`, with the guest's output, when one of them
/// fails or when none ran (a filter that matches nothing proves nothing). On success the guest's
/// output is in the result and logged (shown with [`crate::init_tracing`] and `--nocapture`).
pub fn run_guest_tests(vm: Vm, filter: &str) -> Result<GuestTests> {
    let this = std::env::current_exe().context("locating the running test binary")?;
    let run = vm
        .binary(&this, GUEST_SELF)
        .env("RUST_BACKTRACE", "1")
        .step(
            "guest tests",
            [GUEST_SELF, "--ignored", "--test-threads=1", filter],
        )
        .run()?;
    let step = &run.steps[run.steps.len() - 1];
    let summary = parse_libtest_summary(&step.output);
    match summary {
        Some(s) if step.passed() && s.failed == 0 && s.passed > 0 => {
            tracing::info!("{}", run.report());
            Ok(GuestTests {
                report: run.report(),
                ..s
            })
        }
        Some(s) if step.passed() && s.passed == 0 => {
            bail!(
                "no guest test matched {filter:?} (ignored tests of {})\n{}",
                this.display(),
                run.report()
            )
        }
        _ => bail!("guest tests failed\n{}", run.report()),
    }
}

/// Sums libtest's `test result: ok. 3 passed; 1 failed; ...` lines.
fn parse_libtest_summary(output: &str) -> Option<GuestTests> {
    let mut total: Option<GuestTests> = None;
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        let count = |what: &str| {
            rest.split(';')
                .find_map(|part| {
                    part.trim()
                        .strip_suffix(what)?
                        .split_whitespace()
                        .last()?
                        .parse::<usize>()
                        .ok()
                })
                .unwrap_or(0)
        };
        let sum = total.get_or_insert(GuestTests {
            passed: 0,
            failed: 0,
            report: String::new(),
        });
        sum.passed += count(" passed");
        sum.failed += count(" failed");
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(names: &[&str]) -> Vec<GuestStep> {
        names
            .iter()
            .map(|n| GuestStep {
                name: (*n).to_owned(),
                argv: vec!["/bin/true".into()],
            })
            .collect()
    }

    #[test]
    fn steps_are_split_by_markers() {
        let text = "noise\n=== VMSTEP BEGIN 0\nhello\n=== VMSTEP END 0 rc=0\n=== VMSTEP BEGIN 1\noops\n\
                    === VMSTEP END 1 rc=3\n=== VMSTEP BEGIN 2\nhalf\n";
        let results = parse_steps(&steps(&["a", "b", "c", "d"]), text);
        assert_eq!(results[0].exit_code, Some(0));
        assert_eq!(results[0].output, "hello\n");
        assert_eq!(results[1].exit_code, Some(3));
        assert_eq!(results[1].output, "oops\n");
        assert_eq!(results[2].exit_code, None);
        assert_eq!(results[2].output, "half\n");
        assert_eq!(results[3].exit_code, None);
        assert!(results[3].output.is_empty());
    }

    #[test]
    fn libtest_summaries_are_summed() {
        let out = "running 2 tests\ntest result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 3 filtered out; \
                   finished in 0.1s\n\ntest result: FAILED. 1 passed; 2 failed; 0 ignored;\n";
        let sum = parse_libtest_summary(out).unwrap();
        assert_eq!((sum.passed, sum.failed), (3, 2));
        assert_eq!(parse_libtest_summary("no summary"), None);
    }
}
