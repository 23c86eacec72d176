//! One snapshot per example topology: what `spiderctl render` prints for it (and its stderr summary),
//! and for every failing example the problem list `spiderctl validate` prints.
//!
//! A snapshot is only as good as its review: when one changes, read the new one line by line (pool
//! ranges, gateways, affinities, CNI configs) before accepting it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

/// insta keeps the state of `glob!` in one process-wide stack, so two `glob!` tests running at once
/// (cargo runs tests on several threads) get each other's failures. Each test holds this while it runs.
static GLOB: Mutex<()> = Mutex::new(());

fn one_glob_at_a_time() -> MutexGuard<'static, ()> {
    GLOB.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `spiderctl <command> -f <example>`, run from the workspace root with the example's relative path, so
/// the output does not depend on where the checkout is.
fn spiderctl(command: &str, example: &Path) -> (Output, String) {
    let relative = example
        .strip_prefix(workspace_root())
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let output = Command::new(env!("CARGO_BIN_EXE_spiderctl"))
        .args([command, "-f", &relative])
        .current_dir(workspace_root())
        .env_remove("SPIDERCTL_OUTPUT")
        .output()
        .unwrap();
    (output, relative)
}

#[test]
fn render() {
    let _serial = one_glob_at_a_time();
    insta::glob!("../../examples/topologies", "*.yaml", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.starts_with("# "),
            "{}: start with a comment saying what the example models",
            path.display()
        );
        let (output, relative) = spiderctl("render", path);
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(output.status.success(), "{relative}:\n{stderr}");
        insta::assert_snapshot!(String::from_utf8(output.stdout).unwrap());
    });
}

#[test]
fn render_summary() {
    let _serial = one_glob_at_a_time();
    insta::glob!("../../examples/topologies", "*.yaml", |path| {
        let (output, relative) = spiderctl("render", path);
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(output.status.success(), "{relative}:\n{stderr}");
        insta::assert_snapshot!(stderr);
    });
}

#[test]
fn invalid() {
    let _serial = one_glob_at_a_time();
    insta::glob!("../../examples/topologies/invalid", "*.yaml", |path| {
        let (output, relative) = spiderctl("validate", path);
        assert_eq!(output.status.code(), Some(1), "{relative} must fail");
        assert!(output.stdout.is_empty());
        insta::assert_snapshot!(String::from_utf8(output.stderr).unwrap());
    });
}
