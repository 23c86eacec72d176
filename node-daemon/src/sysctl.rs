//! Node sysctl tuning at start (upstream's `tuneSysctlConfig`, on by default): a large neighbour
//! table (every underlay pod on the node is a static neighbour entry), gratuitous ARP when an
//! address or a link changes, forwarding (the node routes between pods' veth pairs and its uplink)
//! and no reverse-path filtering (replies to pods leave through the veth, not the interface the
//! request came in on). Settings of a disabled family are skipped; a setting the kernel does not
//! have here (`ENOENT`; the neighbour limits exist only in the host's initial namespace) is skipped
//! and logged, as upstream does; any other failure stops the daemon, naming the setting and how to
//! switch the tuning off.

use std::io;
use std::path::{Path, PathBuf};

/// Where the kernel's sysctls are.
pub const PROC_SYS: &str = "/proc/sys";

/// One setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// Dotted name (`net.ipv4.conf.all.forwarding`).
    pub name: &'static str,
    /// The value written.
    pub value: &'static str,
    /// Applies when IPv4 is enabled.
    pub ipv4: bool,
    /// Applies when IPv6 is enabled.
    pub ipv6: bool,
}

/// Upstream's list (its `DefaultSysctlConfig`), in its order.
pub const NODE_SETTINGS: [Setting; 6] = [
    // 110 underlay pods per node in a /16 each: 110 * 256 entries (upstream's sizing).
    Setting {
        name: "net.ipv4.neigh.default.gc_thresh3",
        value: "28160",
        ipv4: true,
        ipv6: false,
    },
    Setting {
        name: "net.ipv6.neigh.default.gc_thresh3",
        value: "28160",
        ipv4: false,
        ipv6: true,
    },
    Setting {
        name: "net.ipv4.conf.all.arp_notify",
        value: "1",
        ipv4: true,
        ipv6: false,
    },
    Setting {
        name: "net.ipv4.conf.all.forwarding",
        value: "1",
        ipv4: true,
        ipv6: false,
    },
    Setting {
        name: "net.ipv6.conf.all.forwarding",
        value: "1",
        ipv4: false,
        ipv6: true,
    },
    Setting {
        name: "net.ipv4.conf.all.rp_filter",
        value: "0",
        ipv4: true,
        ipv6: true,
    },
];

/// What happened to one setting.
#[derive(Debug)]
pub enum Outcome {
    /// Written (`previous` is what it was).
    Set {
        /// The value before.
        previous: String,
    },
    /// The kernel has no such setting here.
    Absent,
}

/// A setting that could not be written.
#[derive(Debug, thiserror::Error)]
#[error(
    "setting {name}={value} ({path}): {source}; set SPIDERPOOL_TUNE_SYSCTL_CONFIG=false (--tune-sysctl-config=false) to leave the node's sysctls alone"
)]
pub struct SysctlError {
    /// The setting.
    pub name: &'static str,
    /// Its value.
    pub value: &'static str,
    /// The file.
    pub path: String,
    /// The error.
    #[source]
    pub source: io::Error,
}

/// The file of a dotted sysctl name under `root`.
pub fn path_of(root: &Path, name: &str) -> PathBuf {
    root.join(name.replace('.', "/"))
}

/// The settings that apply to the enabled families.
pub fn applicable(enable_ipv4: bool, enable_ipv6: bool) -> impl Iterator<Item = &'static Setting> {
    NODE_SETTINGS
        .iter()
        .filter(move |setting| (enable_ipv4 && setting.ipv4) || (enable_ipv6 && setting.ipv6))
}

/// Applies the settings under `root` (normally [`PROC_SYS`]) and returns what happened to each;
/// stops at the first failure other than an absent setting.
pub fn tune(
    root: &Path,
    enable_ipv4: bool,
    enable_ipv6: bool,
) -> Result<Vec<(&'static Setting, Outcome)>, SysctlError> {
    let mut done = Vec::new();
    for setting in applicable(enable_ipv4, enable_ipv6) {
        let path = path_of(root, setting.name);
        let previous = match std::fs::read_to_string(&path) {
            Ok(previous) => previous.trim().to_owned(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                done.push((setting, Outcome::Absent));
                continue;
            }
            Err(source) => {
                return Err(SysctlError {
                    name: setting.name,
                    value: setting.value,
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        std::fs::write(&path, setting.value).map_err(|source| SysctlError {
            name: setting.name,
            value: setting.value,
            path: path.display().to_string(),
            source,
        })?;
        done.push((setting, Outcome::Set { previous }));
    }
    Ok(done)
}

/// [`tune`] on [`PROC_SYS`], each outcome logged.
pub fn tune_node(enable_ipv4: bool, enable_ipv6: bool) -> Result<(), SysctlError> {
    for (setting, outcome) in tune(Path::new(PROC_SYS), enable_ipv4, enable_ipv6)? {
        match outcome {
            Outcome::Set { previous } => {
                tracing::info!(sysctl = setting.name, value = setting.value, previous = %previous, "tuned sysctl");
            }
            Outcome::Absent => {
                tracing::warn!(sysctl = setting.name, "sysctl not available here; skipped");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(dir: &Path, absent: &[&str]) {
        for setting in NODE_SETTINGS {
            if absent.contains(&setting.name) {
                continue;
            }
            let path = path_of(dir, setting.name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "7\n").unwrap();
        }
    }

    #[test]
    fn every_setting_is_written_and_what_was_there_reported() {
        let dir = tempfile::tempdir().unwrap();
        fake_proc(dir.path(), &[]);
        let done = tune(dir.path(), true, true).unwrap();
        assert_eq!(done.len(), 6);
        for (setting, outcome) in &done {
            assert!(matches!(outcome, Outcome::Set { previous } if previous == "7"));
            assert_eq!(
                std::fs::read_to_string(path_of(dir.path(), setting.name)).unwrap(),
                setting.value
            );
        }
    }

    #[test]
    fn a_disabled_family_is_left_alone_and_absent_settings_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        fake_proc(dir.path(), &["net.ipv4.neigh.default.gc_thresh3"]);
        let done = tune(dir.path(), true, false).unwrap();
        let names: Vec<&str> = done.iter().map(|(setting, _)| setting.name).collect();
        assert_eq!(
            names,
            [
                "net.ipv4.neigh.default.gc_thresh3",
                "net.ipv4.conf.all.arp_notify",
                "net.ipv4.conf.all.forwarding",
                "net.ipv4.conf.all.rp_filter"
            ]
        );
        assert!(matches!(done[0].1, Outcome::Absent));
        assert_eq!(
            std::fs::read_to_string(path_of(dir.path(), "net.ipv6.conf.all.forwarding")).unwrap(),
            "7\n"
        );
        let v6_only: Vec<&str> = applicable(false, true).map(|setting| setting.name).collect();
        assert_eq!(
            v6_only,
            [
                "net.ipv6.neigh.default.gc_thresh3",
                "net.ipv6.conf.all.forwarding",
                "net.ipv4.conf.all.rp_filter"
            ]
        );
    }

    #[test]
    fn an_unwritable_setting_stops_naming_it_and_the_switch() {
        let dir = tempfile::tempdir().unwrap();
        fake_proc(dir.path(), &[]);
        // A directory where the file should be: reading fails with something other than ENOENT.
        let path = path_of(dir.path(), "net.ipv4.conf.all.arp_notify");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let error = tune(dir.path(), true, true).unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("setting net.ipv4.conf.all.arp_notify=1"),
            "{text}"
        );
        assert!(text.contains("SPIDERPOOL_TUNE_SYSCTL_CONFIG=false"), "{text}");
    }
}
