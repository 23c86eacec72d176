//! The node daemon's interface-task executor on Debian's real kernel (bonding and 802.1q are not in
//! the host kernel): dummy NICs (and veths to a "switch" namespace with a gateway) as bond members;
//! active-backup and 802.3ad bonds, a VLAN on a bond and on a NIC; reapplying changes nothing;
//! changing a task; rolling back when a gateway does not answer; restoring after a crash between
//! checkpoint and apply; reverting when the task goes; refusing the default-route interface.
//!
//! One VM runs every guest test below, one at a time; each uses link names of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use spiderpool_tests::vm::{self, Vm};

#[test]
fn interface_tasks_on_a_real_kernel() -> anyhow::Result<()> {
    spiderpool_tests::init_tracing();
    let summary = vm::run_guest_tests(Vm::new("interfaces"), "guest::")?;
    assert!(summary.passed >= 6, "{summary:?}");
    Ok(())
}

/// Run inside the VM by `interface_tasks_on_a_real_kernel`.
mod guest {
    use std::time::Duration;

    use spiderpool_node_daemon::interfaces::executor::{Executor, Report, Step, Task};
    use spiderpool_node_daemon::interfaces::model::LinkOp;
    use spiderpool_node_daemon::interfaces::netlink_host::NetlinkHost;
    use spiderpool_node_daemon::interfaces::state::StateDir;
    use spiderpool_schema::SpiderInterfaceTask;
    use spiderpool_schema::interfacetask::TaskPhase;
    use spiderpool_tests::vm::guest::{self, bonding_status, ip, require_vm};

    fn task(name: &str, generation: i64, yaml: &str) -> Task {
        let t: SpiderInterfaceTask = serde_saphyr::from_str(&format!(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderInterfaceTask\nmetadata: {{name: {name}}}\nspec:\n  nodeName: vm\n{yaml}"
        ))
        .unwrap();
        Task {
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            generation: Some(generation),
            spec: t.spec,
        }
    }

    fn executor(dir: &std::path::Path) -> Executor<NetlinkHost> {
        let handle = spiderpool_netlink::Handle::connect().unwrap();
        Executor::new(NetlinkHost::new(handle), StateDir::open(dir).unwrap()).unwrap()
    }

    async fn run(executor: &mut Executor<NetlinkHost>, task: &Task) -> Report {
        match executor.prepare(task, std::slice::from_ref(task)).await.unwrap() {
            Step::Done(report) => report,
            Step::Apply(pending) => executor.apply(pending).await.unwrap(),
        }
    }

    fn dummies(names: &[&str]) {
        guest::dummies(names).unwrap();
    }

    fn link(name: &str) -> String {
        guest::link_details(name)
    }

    fn exists(name: &str) -> bool {
        guest::link_exists(name)
    }

    #[tokio::test]
    #[ignore = "kernel tier: runs inside the VM (interface_tasks_on_a_real_kernel)"]
    async fn active_backup_bond_with_vlans_then_reapply_then_change_to_lacp() {
        require_vm();
        dummies(&["ab1", "ab2", "ab3"]);
        let state = tempfile::tempdir().unwrap();
        let mut executor = executor(state.path());
        let yaml = "  bonds:\n  - {name: abond, interfaces: [ab1, ab2], mode: active-backup, options: {miimon: '100', primary: ab2}}\n  vlans:\n  - {parent: abond, id: 200}\n  - {parent: ab3, id: 300, mtu: 1400}\n";
        let t = task("ab", 1, yaml);
        let report = run(&mut executor, &t).await;
        assert_eq!(report.phase, TaskPhase::Applied, "{report:#?}");
        let bonding = bonding_status("abond").unwrap();
        assert!(
            bonding.contains("Bonding Mode: fault-tolerance (active-backup)"),
            "{bonding}"
        );
        assert!(bonding.contains("Primary Slave: ab2"), "{bonding}");
        assert!(bonding.contains("MII Polling Interval (ms): 100"), "{bonding}");
        assert!(
            bonding.contains("Slave Interface: ab1") && bonding.contains("Slave Interface: ab2"),
            "{bonding}"
        );
        assert!(
            link("abond.200").contains("vlan protocol 802.1Q id 200"),
            "{}",
            link("abond.200")
        );
        assert!(link("ab3.300").contains("mtu 1400"), "{}", link("ab3.300"));

        let again = run(&mut executor, &t).await;
        assert_eq!(
            (again.phase, again.reason.as_str()),
            (TaskPhase::Applied, "Unchanged"),
            "{again:#?}"
        );
        assert!(again.changes.is_empty());

        let lacp = task(
            "ab",
            2,
            "  bonds:\n  - {name: abond, interfaces: [ab1, ab2], mode: 802.3ad, options: {miimon: '100', lacp_rate: fast, xmit_hash_policy: layer3+4}, mtu: 9000}\n  vlans:\n  - {parent: abond, id: 200}\n  - {parent: ab3, id: 300, mtu: 1400}\n",
        );
        let report = run(&mut executor, &lacp).await;
        assert_eq!(report.phase, TaskPhase::Applied, "{report:#?}");
        let bonding = bonding_status("abond").unwrap();
        assert!(
            bonding.contains("Bonding Mode: IEEE 802.3ad Dynamic link aggregation"),
            "{bonding}"
        );
        assert!(bonding.contains("LACP rate: fast"), "{bonding}");
        assert!(bonding.contains("Transmit Hash Policy: layer3+4"), "{bonding}");
        assert!(link("abond").contains("mtu 9000"), "{}", link("abond"));
        assert!(
            link("ab1").contains("mtu 9000"),
            "members follow: {}",
            link("ab1")
        );
        assert!(
            exists("abond.200"),
            "the VLAN on the bond survived the mode change"
        );
        assert_eq!(run(&mut executor, &lacp).await.reason, "Unchanged");

        assert_eq!(
            executor.revert(&[]).await.unwrap().changes,
            [
                "del abond.200",
                "del ab3.300",
                "del abond",
                "set ab1 up",
                "set ab2 up"
            ]
        );
        assert!(!exists("abond"));
        assert!(
            link("ab1").contains("state UP") || link("ab1").contains("UP"),
            "{}",
            link("ab1")
        );
    }

    #[tokio::test]
    #[ignore = "kernel tier: runs inside the VM (interface_tasks_on_a_real_kernel)"]
    async fn an_lacp_bond_with_a_vlan_from_scratch() {
        require_vm();
        dummies(&["la1", "la2"]);
        let state = tempfile::tempdir().unwrap();
        let mut executor = executor(state.path());
        let t = task(
            "la",
            1,
            "  bonds:\n  - {name: lbond, interfaces: [la1, la2], mode: 802.3ad, options: {miimon: '100', lacp_rate: fast}}\n  vlans:\n  - {parent: lbond, id: 10, name: lbond-v10}\n",
        );
        let report = run(&mut executor, &t).await;
        assert_eq!(
            report.phase,
            TaskPhase::Applied,
            "{report:#?}\n{}",
            bonding_status("lbond").unwrap_or_default()
        );
        assert!(link("lbond-v10").contains("vlan protocol 802.1Q id 10"));
        assert_eq!(run(&mut executor, &t).await.reason, "Unchanged");
        executor.revert(&[]).await.unwrap();
        assert!(!exists("lbond") && !exists("lbond-v10"));
    }

    /// A "switch" namespace behind a veth: `sw-<tag>p` carries VLAN 200 with the gateway's addresses.
    fn switch_with_gateway(tag: &str) -> (String, String) {
        let ns = format!("sw{tag}");
        let member = format!("{tag}m0");
        let peer = format!("{tag}m0p");
        ip(&["netns", "add", &ns]).unwrap();
        ip(&[
            "link", "add", &member, "type", "veth", "peer", "name", &peer, "netns", &ns,
        ])
        .unwrap();
        ip(&["link", "set", &member, "up"]).unwrap();
        ip(&["-n", &ns, "link", "set", &peer, "up"]).unwrap();
        let vlan = format!("{peer}.200");
        ip(&[
            "-n", &ns, "link", "add", "link", &peer, "name", &vlan, "type", "vlan", "id", "200",
        ])
        .unwrap();
        ip(&["-n", &ns, "addr", "add", "10.20.0.1/24", "dev", &vlan]).unwrap();
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            "2001:db8:20::1/64",
            "dev",
            &vlan,
            "nodad",
        ])
        .unwrap();
        ip(&["-n", &ns, "link", "set", &vlan, "up"]).unwrap();
        (ns, member)
    }

    #[tokio::test]
    #[ignore = "kernel tier: runs inside the VM (interface_tasks_on_a_real_kernel)"]
    async fn gateway_probes_pass_or_roll_back() {
        require_vm();
        let (_ns, member) = switch_with_gateway("gp");
        dummies(&["gpd1"]);
        let state = tempfile::tempdir().unwrap();
        let mut executor = executor(state.path());
        let yaml = |gateway: &str| {
            format!(
                "  bonds:\n  - {{name: gpbond, interfaces: [{member}, gpd1], mode: active-backup, options: {{miimon: '100', primary: {member}}}}}\n  vlans:\n  - {{parent: gpbond, id: 200}}\n  probe:\n    gateways: [{{interface: gpbond.200, address: '{gateway}'}}]\n    timeoutSeconds: 3\n"
            )
        };
        // Nobody has 10.20.0.99: rolled back, and the node is as it was.
        let before = ip(&["-o", "link", "show"]).unwrap();
        let report = run(&mut executor, &task("gp", 1, &yaml("10.20.0.99"))).await;
        assert_eq!(
            (report.phase, report.reason.as_str()),
            (TaskPhase::RolledBack, "ProbeFailed"),
            "{report:#?}"
        );
        assert_eq!(
            report.message.as_deref(),
            Some(
                "gateway 10.20.0.99 did not answer ARP on gpbond.200 within 3 s; the previous state was restored"
            )
        );
        assert!(!exists("gpbond") && !exists("gpbond.200"));
        assert!(
            link(&member).contains(",UP"),
            "the member is up again: {}",
            link(&member)
        );
        let strip = |text: &str| {
            let mut lines: Vec<String> = text
                .lines()
                .map(|l| l.split_once(": ").map_or(l, |(_, r)| r).to_owned())
                .collect();
            lines.sort();
            lines
        };
        let after = ip(&["-o", "link", "show"]).unwrap();
        assert_eq!(
            strip(&after).len(),
            strip(&before).len(),
            "before:\n{before}\nafter:\n{after}"
        );

        // The gateway answers ARP, and NDP for IPv6.
        let report = run(&mut executor, &task("gp", 2, &yaml("10.20.0.1"))).await;
        assert_eq!(report.phase, TaskPhase::Applied, "{report:#?}");
        let report = run(&mut executor, &task("gp", 3, &yaml("2001:db8:20::1"))).await;
        assert_eq!(
            (report.phase, report.reason.as_str()),
            (TaskPhase::Applied, "Unchanged"),
            "{report:#?}"
        );
        executor.revert(&[]).await.unwrap();
        let probe = spiderpool_node_daemon::interfaces::gateway::probe;
        // Without the VLAN interface the probe has nowhere to ask from.
        assert!(
            probe(
                "gpbond.200",
                "10.20.0.1".parse().unwrap(),
                Duration::from_millis(300)
            )
            .is_err()
        );
    }

    #[tokio::test]
    #[ignore = "kernel tier: runs inside the VM (interface_tasks_on_a_real_kernel)"]
    async fn an_ipv6_gateway_answers_a_neighbour_solicitation() {
        require_vm();
        let (_ns, member) = switch_with_gateway("v6");
        let state = tempfile::tempdir().unwrap();
        let mut executor = executor(state.path());
        let t = task(
            "v6",
            1,
            &format!(
                "  vlans:\n  - {{parent: {member}, id: 200, name: v6vlan}}\n  probe:\n    gateways: [{{interface: v6vlan, address: '2001:db8:20::1'}}]\n"
            ),
        );
        let report = run(&mut executor, &t).await;
        assert_eq!(report.phase, TaskPhase::Applied, "{report:#?}");
        executor.revert(&[]).await.unwrap();
    }

    #[tokio::test]
    #[ignore = "kernel tier: runs inside the VM (interface_tasks_on_a_real_kernel)"]
    async fn a_crash_between_checkpoint_and_apply_is_undone_at_start() {
        require_vm();
        dummies(&["cr1", "cr2"]);
        let state = tempfile::tempdir().unwrap();
        let t = task(
            "cr",
            7,
            "  bonds:\n  - {name: crbond, interfaces: [cr1, cr2]}\n  vlans:\n  - {parent: crbond, id: 5}\n",
        );
        {
            let mut executor = executor(state.path());
            let Step::Apply(pending) = executor.prepare(&t, std::slice::from_ref(&t)).await.unwrap() else {
                panic!("a plan");
            };
            // What `apply` does first, then part of the plan, then the agent dies.
            let observed = {
                use spiderpool_node_daemon::interfaces::host::Host as _;
                executor.host_mut().observe(&[]).await.unwrap()
            };
            let checkpoint = spiderpool_node_daemon::interfaces::checkpoint::Checkpoint::take(
                &t.name,
                &t.uid,
                t.generation,
                pending.ops(),
                &observed.links,
            );
            StateDir::open(state.path())
                .unwrap()
                .save_checkpoint(&checkpoint)
                .unwrap();
            let ops: Vec<LinkOp> = pending.ops()[..4].to_vec();
            for op in &ops {
                use spiderpool_node_daemon::interfaces::host::Host as _;
                executor.host_mut().apply(op).await.unwrap();
            }
            assert!(exists("crbond") && link("cr1").contains("master crbond"));
        }
        let mut restarted = executor(state.path());
        let report = restarted
            .recover()
            .await
            .unwrap()
            .expect("the checkpoint was left");
        assert_eq!(
            (report.phase, report.reason.as_str()),
            (TaskPhase::RolledBack, "AgentRestarted"),
            "{report:#?}"
        );
        assert!(!exists("crbond"));
        assert!(
            !link("cr1").contains("master") && link("cr1").contains(",UP"),
            "{}",
            link("cr1")
        );
        assert!(restarted.recover().await.unwrap().is_none());
    }

    #[tokio::test]
    #[ignore = "kernel tier: runs inside the VM (interface_tasks_on_a_real_kernel)"]
    async fn the_default_route_and_node_ip_interfaces_are_refused() {
        require_vm();
        dummies(&["dr1", "dr2"]);
        ip(&["addr", "add", "192.0.2.10/24", "dev", "dr1"]).unwrap();
        ip(&["route", "add", "default", "via", "192.0.2.1", "dev", "dr1"]).unwrap();
        ip(&["addr", "add", "198.51.100.7/24", "dev", "dr2"]).unwrap();
        let state = tempfile::tempdir().unwrap();
        let mut executor = executor(state.path());
        executor.set_node_ips(vec!["198.51.100.7".parse().unwrap()]);
        let t = task("dr", 1, "  bonds:\n  - {name: drbond, interfaces: [dr1, dr2]}\n");
        let report = run(&mut executor, &t).await;
        assert_eq!(
            (report.phase, report.reason.as_str()),
            (TaskPhase::Failed, "Protected"),
            "{report:#?}"
        );
        assert_eq!(
            report.message.as_deref(),
            Some(
                "refusing to enslave dr1 to drbond: dr1 carries the node's IPv4 default route via 192.0.2.1; \
                 refusing to enslave dr2 to drbond: dr2 holds the node IP 198.51.100.7; nothing was changed"
            )
        );
        assert!(!exists("drbond"));
        ip(&["route", "del", "default"]).unwrap();
    }
}
