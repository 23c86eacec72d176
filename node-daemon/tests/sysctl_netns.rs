//! Node sysctl tuning against the real kernel, inside network namespaces of this test's own (the
//! host's settings are never touched): the settings themselves, and the agent binary's switch
//! (spiderpool-conf's `tuneSysctlConfig`, overridden by `--tune-sysctl-config`). Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::path::Path;

use nix::sched::{CloneFlags, unshare};
use spiderpool_node_daemon::sysctl::{Outcome, PROC_SYS, tune};

#[test]
fn the_settings_land_in_the_kernel_and_the_absent_ones_are_skipped() {
    std::thread::spawn(|| {
        // This thread alone moves to a fresh namespace; /proc/sys/net opened here is that namespace's.
        unshare(CloneFlags::CLONE_NEWNET).expect("a network namespace of our own needs root");
        let done = tune(Path::new(PROC_SYS), true, true).unwrap();
        let read = |name: &str| {
            std::fs::read_to_string(Path::new(PROC_SYS).join(name.replace('.', "/")))
                .unwrap()
                .trim()
                .to_owned()
        };
        for (setting, outcome) in &done {
            match outcome {
                Outcome::Set { .. } => assert_eq!(read(setting.name), setting.value, "{}", setting.name),
                // The neighbour table limits exist only in the initial namespace.
                Outcome::Absent => assert!(setting.name.contains(".neigh."), "{} absent", setting.name),
            }
        }
        assert_eq!(read("net.ipv4.conf.all.forwarding"), "1");
        assert_eq!(read("net.ipv6.conf.all.forwarding"), "1");
        assert_eq!(read("net.ipv4.conf.all.arp_notify"), "1");
        assert_eq!(read("net.ipv4.conf.all.rp_filter"), "0");
    })
    .join()
    .unwrap();
}

/// Runs the agent binary inside a fresh named network namespace with `conf_yml` as its
/// spiderpool-conf and no API server (it stops after the start-up tuning, failing to connect), and
/// returns that namespace's `net.ipv4.conf.all.forwarding` and the agent's output.
fn agent_in_fresh_netns(conf_yml: &str, extra_args: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf.yml");
    std::fs::write(&conf, conf_yml).unwrap();
    let netns = format!("sysctl{}", std::process::id());
    let ip = |args: &[&str]| {
        let status = std::process::Command::new("ip")
            .args(args)
            .status()
            .expect("iproute2");
        assert!(status.success(), "ip {args:?} (needs root)");
    };
    ip(&["netns", "add", &netns]);
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", &netns, env!("CARGO_BIN_EXE_spiderpool-agent")])
        .args([
            "--node-name",
            "sysctl-test",
            "--health-address",
            "off",
            "--socket-path",
        ])
        .arg(dir.path().join("agent.sock"))
        .arg("--config-path")
        .arg(&conf)
        .args(extra_args)
        .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("SPIDERPOOL_LOG_LEVEL", "info")
        .env_remove("RUST_LOG")
        .env_remove("SPIDERPOOL_TUNE_SYSCTL_CONFIG")
        .output()
        .unwrap();
    let forwarding = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns,
            "cat",
            "/proc/sys/net/ipv4/conf/all/forwarding",
        ])
        .output()
        .unwrap();
    ip(&["netns", "del", &netns]);
    assert!(
        !output.status.success(),
        "the agent cannot run without an API server"
    );
    (
        String::from_utf8_lossy(&forwarding.stdout).trim().to_owned(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn the_agent_tunes_at_start_unless_the_configmap_or_the_flag_says_no() {
    // A fresh namespace starts with forwarding off.
    let (forwarding, log) = agent_in_fresh_netns("tuneSysctlConfig: true\n", &[]);
    assert_eq!(forwarding, "1", "{log}");
    assert!(log.contains("tuned sysctl"), "{log}");
    let (forwarding, log) = agent_in_fresh_netns("tuneSysctlConfig: false\n", &[]);
    assert_eq!(forwarding, "0", "{log}");
    assert!(!log.contains("tuned sysctl"), "{log}");
    // The flag wins over the ConfigMap.
    let (forwarding, log) = agent_in_fresh_netns("tuneSysctlConfig: true\n", &["--tune-sysctl-config=false"]);
    assert_eq!(forwarding, "0", "{log}");
}
