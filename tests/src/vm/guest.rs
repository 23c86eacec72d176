//! Helpers for code that runs inside the VM (see [`super::run_guest_tests`]).

use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// Whether this process runs inside the harness' VM (its `/init` exports `SPIDERPOOL_IN_VM=1`).
pub fn in_vm() -> bool {
    std::env::var_os("SPIDERPOOL_IN_VM").is_some_and(|v| v == "1")
}

/// Panics unless inside the VM: guest tests change the host's links and need bonding, 802.1q and
/// dummy links, which the host kernel lacks. They are `#[ignore]`d and run by a host-side test
/// through [`super::run_guest_tests`]; running them with `--ignored` on the host is a mistake.
pub fn require_vm() {
    assert!(
        in_vm(),
        "this guest test runs inside the kernel-tier VM; run the host-side test that boots it instead"
    );
}

/// Runs the real iproute2 `ip` (`/sbin/ip` in the guest) and returns its stdout; an error carries
/// its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let output = Command::new("/sbin/ip")
        .args(args)
        .output()
        .context("running /sbin/ip")?;
    if !output.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The contents of `/proc/net/bonding/<bond>` (mode, slaves, active slave, LACP state).
pub fn bonding_status(bond: &str) -> Result<String> {
    std::fs::read_to_string(format!("/proc/net/bonding/{bond}"))
        .with_context(|| format!("reading /proc/net/bonding/{bond}"))
}

/// Creates dummy links `names` (stand-ins for NICs) and brings them up.
pub fn dummies(names: &[&str]) -> Result<()> {
    for name in names {
        ip(&["link", "add", name, "type", "dummy"])?;
        ip(&["link", "set", name, "up"])?;
    }
    Ok(())
}

/// `ip -d link show dev <name>`, or `<the error>` (for assertion messages).
pub fn link_details(name: &str) -> String {
    ip(&["-d", "link", "show", "dev", name]).unwrap_or_else(|e| format!("<{e}>"))
}

/// Whether link `name` exists.
pub fn link_exists(name: &str) -> bool {
    ip(&["link", "show", "dev", name]).is_ok()
}
