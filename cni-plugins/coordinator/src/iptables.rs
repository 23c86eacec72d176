//! The pod's reply-path rules, through the system's `iptables-save` and `iptables-restore` (or their
//! `ip6tables` twins), run inside the pod's namespace: one save to see what is there, one restore
//! (`--noflush`, so nothing else is touched) for what is missing. Two processes per family instead
//! of one per rule and check, and the families' processes run side by side (each costs a few
//! milliseconds, most of it starting up); each run's exit status is checked and its error output
//! reported.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use spiderpool_ipmath::IpFamily;

/// Why the rules could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    /// The binary is not installed.
    #[error("{0} not found (searched PATH, /usr/sbin, /sbin, /usr/bin, /bin): install iptables")]
    Missing(&'static str),
    /// It could not be run.
    #[error("running {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// It failed.
    #[error("{binary} failed ({status}): {stderr}")]
    Failed {
        /// The binary.
        binary: String,
        /// Its exit status.
        status: String,
        /// What it said.
        stderr: String,
    },
}

fn binaries(family: IpFamily) -> (&'static str, &'static str) {
    match family {
        IpFamily::V4 => ("iptables-save", "iptables-restore"),
        IpFamily::V6 => ("ip6tables-save", "ip6tables-restore"),
    }
}

/// Finds `name` on PATH or in the usual system directories (a runtime may run plugins without a PATH).
fn locate(name: &'static str) -> Result<PathBuf, IptablesError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .into_iter()
                .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or(IptablesError::Missing(name))
}

/// A started run of one binary.
struct Running {
    shown: String,
    child: Child,
}

fn start(binary: &Path, args: &[&str], input: Option<&str>) -> Result<Running, IptablesError> {
    let shown = binary.display().to_string();
    let mut child = Command::new(binary)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| IptablesError::Spawn {
            binary: shown.clone(),
            source,
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|source| IptablesError::Spawn {
                binary: shown.clone(),
                source,
            })?;
    }
    Ok(Running { shown, child })
}

/// Waits for `running`; its output when it succeeded.
fn finish(running: Running) -> Result<String, IptablesError> {
    let Running { shown, child } = running;
    let output = child.wait_with_output().map_err(|source| IptablesError::Spawn {
        binary: shown.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(IptablesError::Failed {
            binary: shown,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The rules of `wanted` that `saved` (an `iptables-save -t mangle` output) lacks, in order.
pub fn missing<'a>(saved: &str, wanted: &'a [String]) -> Vec<&'a String> {
    wanted
        .iter()
        .filter(|rule| !saved.lines().any(|line| line.trim() == rule.as_str()))
        .collect()
}

/// The `iptables-restore` input appending `rules` to the `mangle` table.
pub fn restore_input(rules: &[&String]) -> String {
    let mut input = String::from("*mangle\n");
    for rule in rules {
        input.push_str(rule);
        input.push('\n');
    }
    input.push_str("COMMIT\n");
    input
}

/// Adds the rules that are missing from the `mangle` table of each of `families` in the calling
/// thread's namespace: the families' saves run together, then their restores. Returns how many rules
/// were added.
pub fn ensure(families: &[IpFamily], rules: &[String]) -> Result<usize, IptablesError> {
    let saves = families
        .iter()
        .map(|family| start(&locate(binaries(*family).0)?, &["-t", "mangle"], None))
        .collect::<Result<Vec<_>, _>>()?;
    let saved = saves.into_iter().map(finish).collect::<Result<Vec<_>, _>>()?;
    let mut added = 0;
    let mut restores = Vec::new();
    for (family, saved) in families.iter().zip(&saved) {
        let missing = missing(saved, rules);
        if missing.is_empty() {
            continue;
        }
        added += missing.len();
        let restore = locate(binaries(*family).1)?;
        restores.push(start(
            &restore,
            &["--noflush", "-w"],
            Some(&restore_input(&missing)),
        )?);
    }
    for restore in restores {
        finish(restore)?;
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::reply_path_rules;

    #[test]
    fn only_missing_rules_are_restored() {
        let rules = reply_path_rules();
        let saved = format!(
            "# Generated by iptables-save v1.8.9 (nf_tables)\n*mangle\n:PREROUTING ACCEPT [0:0]\n{}\nCOMMIT\n",
            rules[0]
        );
        let missing = missing(&saved, &rules);
        assert_eq!(missing, [&rules[1], &rules[2]]);
        assert_eq!(
            restore_input(&missing),
            format!("*mangle\n{}\n{}\nCOMMIT\n", rules[1], rules[2])
        );
        assert!(super::missing("", &rules).len() == 3);
    }
}
