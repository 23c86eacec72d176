//! The kernel-tier harness itself: Debian's kernel boots in QEMU with bonding, 802.1q, dummy, ipvlan
//! and macvlan working, and a failure inside the VM becomes a failure of the host-side test with the
//! guest's output.

use spiderpool_tests::vm::{self, GUEST_SELF, Vm};

#[test]
fn kernel_tier_has_bonds_vlans_and_ipvlan() -> anyhow::Result<()> {
    let summary = vm::run_guest_tests(Vm::new("harness"), "guest::")?;
    assert_eq!(summary.failed, 0);
    assert!(summary.passed >= 2, "{summary:?}");
    Ok(())
}

#[test]
fn a_failure_inside_the_vm_fails_on_the_host_with_its_output() -> anyhow::Result<()> {
    let this = std::env::current_exe()?;
    let run = Vm::new("harness-failing")
        .binary(&this, GUEST_SELF)
        .script("passes", "echo all good")
        .script("exits non-zero", "echo boom-from-the-guest; exit 3")
        .step(
            "failing guest test",
            [
                GUEST_SELF,
                "--ignored",
                "--exact",
                "must_fail::panics_with_a_message",
            ],
        )
        .run()?;
    let step = |name: &str| run.step(name).cloned().expect("step ran");
    assert!(step("passes").passed());
    assert_eq!(step("exits non-zero").exit_code, Some(3));
    assert!(step("exits non-zero").output.contains("boom-from-the-guest"));
    let failing = step("failing guest test");
    assert_eq!(failing.exit_code, Some(101), "{}", failing.output);
    assert!(
        failing.output.contains("a message from inside the VM"),
        "{}",
        failing.output
    );

    let err = run.ensure_success().expect_err("two steps failed").to_string();
    assert!(err.contains("\"exits non-zero\": FAILED (exit code 3)"), "{err}");
    assert!(err.contains("a message from inside the VM"), "{err}");
    assert!(!err.contains("\"passes\": FAILED"), "{err}");
    Ok(())
}

#[test]
fn a_vm_without_steps_is_refused() {
    let err = Vm::new("empty").run().expect_err("no steps");
    assert!(err.to_string().contains("has no steps"), "{err}");
}

/// Run inside the VM by `kernel_tier_has_bonds_vlans_and_ipvlan`.
mod guest {
    use spiderpool_tests::vm::guest::{bonding_status, ip, require_vm};

    #[test]
    #[ignore = "kernel tier: runs inside the VM (kernel_tier_has_bonds_vlans_and_ipvlan)"]
    fn debian_kernel_with_modules() {
        require_vm();
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert!(release.trim().ends_with("-amd64"), "{release}");
        let modules = std::fs::read_to_string("/proc/modules").unwrap();
        for m in ["bonding", "8021q", "dummy", "ipvlan", "macvlan", "veth", "bridge"] {
            assert!(
                modules.lines().any(|l| l.starts_with(&format!("{m} "))),
                "{m} not loaded:\n{modules}"
            );
        }
        // Loaded with max_bonds=0 / numdummies=0: no link appears by itself.
        let links = ip(&["-o", "link", "show"]).unwrap();
        assert!(!links.contains("bond0") && !links.contains("dummy0"), "{links}");
    }

    #[test]
    #[ignore = "kernel tier: runs inside the VM (kernel_tier_has_bonds_vlans_and_ipvlan)"]
    fn dummy_bond_vlan_ipvlan_macvlan() {
        require_vm();
        ip(&["link", "add", "hd0", "type", "dummy"]).unwrap();
        ip(&["link", "add", "hd1", "type", "dummy"]).unwrap();
        ip(&[
            "link",
            "add",
            "hbond",
            "type",
            "bond",
            "mode",
            "active-backup",
            "miimon",
            "100",
        ])
        .unwrap();
        ip(&["link", "set", "hd0", "master", "hbond"]).unwrap();
        ip(&["link", "set", "hd1", "master", "hbond"]).unwrap();
        ip(&["link", "set", "hbond", "up"]).unwrap();
        ip(&[
            "link",
            "add",
            "link",
            "hbond",
            "name",
            "hbond.100",
            "type",
            "vlan",
            "id",
            "100",
        ])
        .unwrap();
        ip(&["link", "set", "hbond.100", "up"]).unwrap();
        ip(&[
            "link",
            "add",
            "link",
            "hbond.100",
            "name",
            "hipvl",
            "type",
            "ipvlan",
            "mode",
            "l2",
        ])
        .unwrap();
        ip(&[
            "link", "add", "link", "hbond", "name", "hmvl", "type", "macvlan", "mode", "bridge",
        ])
        .unwrap();
        ip(&["addr", "add", "192.0.2.10/24", "dev", "hbond.100"]).unwrap();

        let status = bonding_status("hbond").unwrap();
        assert!(
            status.contains("Bonding Mode: fault-tolerance (active-backup)"),
            "{status}"
        );
        assert!(
            status.contains("Slave Interface: hd0") && status.contains("Slave Interface: hd1"),
            "{status}"
        );
        let vlan = ip(&["-d", "link", "show", "hbond.100"]).unwrap();
        assert!(vlan.contains("vlan protocol 802.1Q id 100"), "{vlan}");
        let ipvlan = ip(&["-d", "link", "show", "hipvl"]).unwrap();
        assert!(ipvlan.contains("ipvlan"), "{ipvlan}");
        ip(&["link", "del", "hbond"]).unwrap();
        // Deleting the bond takes its VLAN and the ipvlan/macvlan on top along.
        let links = ip(&["-o", "link", "show"]).unwrap();
        assert!(
            !links.contains("hbond") && !links.contains("hipvl") && !links.contains("hmvl"),
            "{links}"
        );
    }
}

/// Run inside the VM by `a_failure_inside_the_vm_fails_on_the_host_with_its_output`: always fails.
mod must_fail {
    #[test]
    #[ignore = "kernel tier: fails on purpose inside the VM (a_failure_inside_the_vm_fails_on_the_host_with_its_output)"]
    fn panics_with_a_message() {
        spiderpool_tests::vm::guest::require_vm();
        panic!("a message from inside the VM");
    }
}
