//! `spiderpool-install-cni`, the agent DaemonSet's init container, against real directories: a fresh
//! node, an upgrade while the old plugin is running (where writing in place fails with "text file
//! busy"), a second run that changes nothing, upstream's leftovers, and an image with no plugin.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Stdio};

fn install(from: &Path, to: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spiderpool-install-cni"))
        .args(["--from"])
        .arg(from)
        .arg("--to")
        .arg(to)
        .env("SPIDERPOOL_LOG_FORMAT", "text")
        .output()
        .unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn installs_replaces_a_running_plugin_atomically_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let (image, host) = (dir.path().join("image"), dir.path().join("host/opt/cni/bin"));
    std::fs::create_dir_all(&image).unwrap();
    // The "new" plugin: any executable will do.
    let new_bytes = std::fs::read("/bin/true").unwrap();
    std::fs::write(image.join("spiderpool"), &new_bytes).unwrap();
    std::fs::set_permissions(image.join("spiderpool"), std::fs::Permissions::from_mode(0o755)).unwrap();

    // A fresh node: the directory is made, the plugin is there, executable.
    let out = install(&image, &host);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let target = host.join("spiderpool");
    assert_eq!(std::fs::read(&target).unwrap(), new_bytes);
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o755
    );

    // An old plugin that is running right now (a copy of sleep), plus upstream's leftover.
    std::fs::remove_file(&target).unwrap();
    std::fs::copy("/bin/sleep", &target).unwrap();
    std::fs::write(host.join("spiderpool.old"), b"upstream leftover").unwrap();
    let mut running = Command::new(&target)
        .arg("30")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let in_place = std::fs::OpenOptions::new().write(true).open(&target);
    assert_eq!(
        in_place.err().and_then(|e| e.raw_os_error()),
        Some(nix::libc::ETXTBSY),
        "writing over a running binary must fail, or this test proves nothing"
    );
    let out = install(&image, &host);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&target).unwrap(), new_bytes);
    assert!(
        running.try_wait().unwrap().is_none(),
        "the running old plugin was disturbed"
    );
    running.kill().unwrap();
    running.wait().unwrap();
    assert_eq!(
        names(&host),
        vec!["spiderpool".to_string()],
        "temporary files or leftovers remain"
    );

    // Nothing changed: the file is not rewritten.
    let before = std::fs::metadata(&target).unwrap().ino();
    let out = install(&image, &host);
    assert!(out.status.success());
    assert_eq!(std::fs::metadata(&target).unwrap().ino(), before);
}

#[test]
fn an_image_without_plugins_fails_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = install(dir.path(), &dir.path().join("bin"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no plugin"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
