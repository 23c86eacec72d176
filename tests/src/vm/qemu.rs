//! Booting the guest: QEMU with software emulation (TCG; this machine's /dev/kvm is a software
//! backend that normal kernels do not boot on), no network unless asked for, no display, two serial ports written to
//! files (the kernel console, and the steps' output), under a deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};

use crate::tools::which;
use crate::watchdog::{self, Resource};

/// What QEMU left behind.
#[derive(Debug)]
pub(super) struct Boot {
    pub console: String,
    pub steps: String,
    pub elapsed: Duration,
    /// `None`: QEMU was killed at the deadline.
    pub exit: Option<std::process::ExitStatus>,
}

pub(super) struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub dir: &'a Path,
    pub memory_mib: u32,
    pub timeout: Duration,
    /// A `-netdev` for the guest's only NIC (virtio); `None`: no NIC at all.
    pub netdev: Option<&'a str>,
}

pub(super) fn qemu_binary() -> Result<PathBuf> {
    which("qemu-system-x86_64").ok_or_else(|| {
        anyhow!(
            "qemu-system-x86_64 not found: install it with \
             `apt-get install -y --no-install-recommends qemu-system-x86` (or run tests/tools/install-test-deps.sh)"
        )
    })
}

pub(super) fn boot(spec: &BootSpec<'_>) -> Result<Boot> {
    use std::os::unix::process::CommandExt as _;
    let console = spec.dir.join("console.log");
    let steps = spec.dir.join("steps.log");
    let qemu_log = spec.dir.join("qemu.log");
    let mut cmd = Command::new(qemu_binary()?);
    cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "1"])
        .args(["-m", &spec.memory_mib.to_string()])
        // No default devices: no NIC (unless `netdev` asks for one), no VGA, no monitor.
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-monitor",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", steps.display()))
        .arg("-kernel")
        .arg(spec.kernel)
        .arg("-initrd")
        .arg(spec.initrd)
        // no_timer_check: under emulation on a loaded host the kernel's check that the timer
        // interrupt arrives through the IO-APIC can miss its window and panic the boot ("IO-APIC +
        // timer doesn't work"); QEMU's timer is known to work.
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet loglevel=4 no_timer_check",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&qemu_log).context("creating qemu.log")?)
        .process_group(0);
    if let Some(netdev) = spec.netdev {
        // romfile= : no PXE option ROM (the kernel is booted directly).
        cmd.args(["-netdev", netdev])
            .args(["-device", "virtio-net-pci,netdev=forward,romfile="]);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let _registration = watchdog::register(Resource::ProcessGroup(child.id()));
    let exit = loop {
        if let Some(status) = child.try_wait().context("waiting for QEMU")? {
            break Some(status);
        }
        if started.elapsed() >= spec.timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let read = |path: &Path| {
        std::fs::read(path)
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default()
    };
    let mut console_text = read(&console);
    let qemu_output = read(&qemu_log);
    if !qemu_output.trim().is_empty() {
        console_text.push_str("\n--- qemu stderr ---\n");
        console_text.push_str(&qemu_output);
    }
    Ok(Boot {
        console: console_text,
        steps: read(&steps),
        elapsed,
        exit,
    })
}
