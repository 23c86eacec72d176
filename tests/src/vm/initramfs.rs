//! The guest's root file system: busybox, the real iproute2 `ip`, the kernel modules, an `/init`
//! that loads them and runs the payload's steps, and the payload (binaries with their shared
//! libraries, files).

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, anyhow, bail};

use super::cpio::Archive;
use super::kernel::Kernel;
use crate::tools::which;

/// Where the guest writes each step's output (the second serial port), apart from the kernel's
/// console on the first.
pub(super) const STEP_TTY: &str = "/dev/ttyS1";
pub(super) const STEP_BEGIN: &str = "=== VMSTEP BEGIN ";
pub(super) const STEP_END: &str = "=== VMSTEP END ";
pub(super) const ALL_DONE: &str = "=== VMSTEP ALL DONE";

/// Modules whose defaults create links we do not want: bonding would add `bond0`, dummy `dummy0`.
fn module_options(name: &str) -> &'static str {
    match name {
        "bonding" => "max_bonds=0",
        "dummy" => "numdummies=0",
        _ => "",
    }
}

/// busybox (statically linked: Debian's `busybox-static`), its applets as symlinks, and the real
/// iproute2 `ip` at /sbin/ip (busybox's own `ip` cannot create bonds, VLANs, ipvlan or dummies).
pub(super) fn base(archive: &mut Archive, kernel: &Kernel, modules: &[&str]) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!(
            "/bin/busybox not found: install it with `apt-get install -y busybox-static` (or run tests/tools/install-test-deps.sh)"
        );
    }
    add_binary(archive, busybox, "/bin/busybox")?;
    let list = crate::util::run(Command::new(busybox).arg("--list")).context("listing busybox applets")?;
    for applet in list.lines().map(str::trim) {
        // The list contains "busybox" itself; `ip` is the real one below.
        if applet.is_empty() || applet == "busybox" || applet == "ip" {
            continue;
        }
        archive.symlink(&format!("/bin/{applet}"), "busybox");
    }
    let ip = which("ip")
        .ok_or_else(|| anyhow!("`ip` not found: install it with `apt-get install -y iproute2`"))?;
    add_binary(archive, &ip, "/sbin/ip")?;
    archive.symlink("/usr/sbin/ip", "/sbin/ip");
    archive.symlink("/bin/ip", "/sbin/ip");

    let mut order = String::new();
    for (name, file) in kernel.modules_in_load_order(modules)? {
        archive.file(&format!("/lib/modules/{name}.ko"), 0o644, read_module(&file)?);
        order.push_str(&format!("{name} {}\n", module_options(&name)));
    }
    archive.file("/lib/modules/order", 0o644, order.into_bytes());
    for dir in ["/proc", "/sys", "/dev", "/tmp", "/run", "/root", "/etc", "/var"] {
        archive.dir(dir);
    }
    archive.symlink("/var/run", "/run");
    archive.file("/etc/hostname", 0o644, b"vm\n".to_vec());
    archive.file("/etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n".to_vec());
    archive.file("/etc/group", 0o644, b"root:x:0:\n".to_vec());
    Ok(())
}

fn read_module(file: &Path) -> Result<Vec<u8>> {
    let name = file.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        Some(("xz", "xz-utils"))
    } else if name.ends_with(".ko.zst") {
        Some(("zstd", "zstd"))
    } else if name.ends_with(".ko.gz") {
        Some(("gzip", "gzip"))
    } else {
        None
    };
    match tool {
        None => std::fs::read(file).with_context(|| format!("reading {}", file.display())),
        // busybox insmod may not decompress; the kernel surely does not need to.
        Some((tool, package)) => {
            let output = Command::new(tool)
                .args(["-dc"])
                .arg(file)
                .output()
                .with_context(|| {
                    format!("`{tool}` not found: install it with `apt-get install -y {package}`")
                })?;
            if !output.status.success() {
                bail!(
                    "{tool} -dc {} failed: {}",
                    file.display(),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            Ok(output.stdout)
        }
    }
}

/// Adds the executable `host` at `guest`. A statically linked one is copied as it is; a
/// dynamically linked one gets its shared libraries (as `ldd` resolves them on the host) at the same
/// paths. Debug sections are stripped when `objcopy` is there: the guest runs from memory and test
/// binaries carry tens of MB of line tables.
pub(super) fn add_binary(archive: &mut Archive, host: &Path, guest: &str) -> Result<()> {
    archive.file(guest, 0o755, stripped(host)?);
    for lib in shared_libraries(host)? {
        if !archive.contains(&lib) {
            let data = std::fs::read(&lib)
                .with_context(|| format!("reading {lib} (a library of {})", host.display()))?;
            archive.file(&lib, 0o755, data);
        }
    }
    Ok(())
}

fn stripped(host: &Path) -> Result<Vec<u8>> {
    let original = || std::fs::read(host).with_context(|| format!("reading {}", host.display()));
    let Some(objcopy) = which("objcopy") else {
        return original();
    };
    let out = tempfile::NamedTempFile::new().context("creating a temp file for objcopy")?;
    let status = Command::new(objcopy)
        .arg("--strip-debug")
        .arg(host)
        .arg(out.path())
        .status();
    match status {
        Ok(s) if s.success() => std::fs::read(out.path()).context("reading objcopy's output"),
        // Not an ELF file objcopy understands (a script): copy it as it is.
        _ => original(),
    }
}

/// The absolute library paths `ldd` prints for `binary` (none for a static one).
fn shared_libraries(binary: &Path) -> Result<Vec<String>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("`ldd` not found (package libc-bin)")?;
    // ldd fails with "not a dynamic executable" for static binaries and scripts.
    if !output.status.success() {
        return Ok(Vec::new());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!(
                "{}: a shared library is missing on the host: {}",
                binary.display(),
                line.trim()
            );
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(path.to_owned());
        }
    }
    Ok(libs)
}

/// One step the guest runs: argv, run from `/`, output to the step port.
#[derive(Debug, Clone)]
pub(super) struct GuestStep {
    pub name: String,
    pub argv: Vec<String>,
}

/// `/init`: mount the pseudo file systems, load the modules, bring `lo` up, run every step (each
/// even when an earlier one failed) with begin/end markers and its exit code on the step port, and
/// power off. The kernel is booted with `panic=-1` and QEMU with `-no-reboot`, so an `/init` that dies
/// also ends the VM.
pub(super) fn init_script(steps: &[GuestStep], env: &[(String, String)]) -> String {
    let mut script = String::from(
        r#"#!/bin/sh
# Generated by spiderpool-tests' VM harness (tests/src/vm/initramfs.rs).
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /run/netns
hostname vm
while read -r name opts; do
  [ -n "$name" ] || continue
  insmod /lib/modules/$name.ko $opts || echo "=== VMTEST: insmod $name FAILED"
done < /lib/modules/order
/sbin/ip link set lo up
export SPIDERPOOL_IN_VM=1
"#,
    );
    for (key, value) in env {
        script.push_str(&format!("export {key}={}\n", shell_quote(value)));
    }
    for (index, step) in steps.iter().enumerate() {
        let argv: Vec<String> = step.argv.iter().map(|a| shell_quote(a)).collect();
        script.push_str(&format!(
            "echo '{STEP_BEGIN}{index}' > {STEP_TTY}\n\
             cd / && {} > {STEP_TTY} 2>&1 < /dev/null\n\
             echo \"{STEP_END}{index} rc=$?\" > {STEP_TTY}\n",
            argv.join(" ")
        ));
    }
    script.push_str(&format!("echo '{ALL_DONE}' > {STEP_TTY}\nsync\npoweroff -f\n"));
    script
}

/// Single quotes for sh.
pub(super) fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_runs_every_step_with_markers() {
        let steps = [
            GuestStep {
                name: "one".into(),
                argv: vec!["/bin/true".into()],
            },
            GuestStep {
                name: "two".into(),
                argv: vec!["/bin/sh".into(), "-c".into(), "echo 'x'".into()],
            },
        ];
        let script = init_script(&steps, &[("RUST_LOG".into(), "debug".into())]);
        assert!(script.contains("export RUST_LOG='debug'\n"));
        assert!(script.contains("cd / && '/bin/sh' '-c' 'echo '\\''x'\\''' > /dev/ttyS1 2>&1 < /dev/null\n"));
        assert!(script.contains("=== VMSTEP END 1 rc=$?"));
        assert!(script.trim_end().ends_with("poweroff -f"));
    }
}
