//! Node sysctl tuning against the real kernel, inside a network namespace of this test's own (the
//! host's settings are never touched). Needs root.
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
