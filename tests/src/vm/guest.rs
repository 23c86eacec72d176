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

/// Brings up the NIC of [`super::Vm::forward_to_unix_socket`] (the guest's only `eth*` link) with
/// [`super::GUEST_ADDRESS`]; idempotent.
pub fn forward_link_up() -> Result<()> {
    let links = ip(&["-o", "link", "show"])?;
    let nic = links
        .lines()
        .filter_map(|line| line.split(':').nth(1).map(str::trim))
        .find(|name| name.starts_with("eth"))
        .context("the VM has no eth* link: did the host side call Vm::forward_to_unix_socket?")?
        .to_owned();
    if !ip(&["-o", "addr", "show", "dev", &nic])?.contains(super::GUEST_ADDRESS) {
        ip(&["addr", "add", super::GUEST_ADDRESS, "dev", &nic])?;
    }
    ip(&["link", "set", &nic, "up"])?;
    Ok(())
}

/// Serves the unix socket `path` in the guest, in a background thread, by relaying every connection
/// to TCP `port` at [`super::GUEST_FORWARD_ADDRESS`] (which [`super::Vm::forward_to_unix_socket`]
/// forwards to a unix socket on the host). Brings up the forwarding NIC first. Once per process
/// per path: later calls with a path already served do nothing.
pub fn relay_unix_socket(path: &std::path::Path, port: u16) -> Result<()> {
    use std::collections::BTreeSet;
    use std::net::{Shutdown, TcpStream};
    use std::os::unix::net::UnixListener;
    use std::sync::{Mutex, OnceLock};

    static SERVED: OnceLock<Mutex<BTreeSet<std::path::PathBuf>>> = OnceLock::new();
    let mut served = SERVED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if served.contains(path) {
        return Ok(());
    }
    forward_link_up()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let target = format!("{}:{port}", super::GUEST_FORWARD_ADDRESS);
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let (Ok(mut client_read), Ok(mut server_write)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client_read, &mut server_write);
                let _ = server_write.shutdown(Shutdown::Write);
            });
            let (mut client_write, mut server_read) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut server_read, &mut client_write);
                let _ = client_write.shutdown(Shutdown::Write);
            });
        }
    });
    served.insert(path.to_path_buf());
    Ok(())
}
