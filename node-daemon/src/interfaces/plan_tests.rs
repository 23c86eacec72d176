//! The planner, checkpoint and rollback against the kernel model ([`FakeKernel`]): every case of a
//! task meeting a node, and that applying a plan converges (a second plan is empty) and a rollback
//! restores exactly what the checkpoint saw.

use spiderpool_schema::SpiderInterfaceTask;

use super::checkpoint::Checkpoint;
use super::fake::FakeKernel;
use super::model::{Desired, HostKind, HostLink, LinkOp};
use super::ownership::{Ownership, StillWanted, revert_plan};
use super::plan::{Node, Refusal, RefusalReason, plan};
use super::safety::{Anchor, Protected};
use super::verify::{all_ready, verify};

fn desired(yaml: &str) -> Desired {
    let task: SpiderInterfaceTask = serde_saphyr::from_str(&format!(
        "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderInterfaceTask\nmetadata: {{name: t}}\nspec:\n  nodeName: n1\n{yaml}"
    ))
    .unwrap();
    Desired::from_spec(&task.spec).unwrap()
}

const AB_BOND: &str =
    "  bonds:\n  - {name: bond0, interfaces: [ens1, ens2], mode: active-backup, options: {miimon: '100'}}\n";
const LACP_BOND_VLAN: &str = "  bonds:\n  - {name: bond0, interfaces: [ens1, ens2], mode: 802.3ad, options: {miimon: '100', lacp_rate: fast}}\n  vlans:\n  - {parent: bond0, id: 200}\n";

fn plan_on(
    desired: &Desired,
    kernel: &FakeKernel,
    ownership: &Ownership,
    protected: &Protected,
) -> Result<Vec<LinkOp>, Vec<Refusal>> {
    let links = kernel.links();
    plan(
        desired,
        Node {
            links: &links,
            ownership,
            protected,
        },
    )
}

fn text(ops: &[LinkOp]) -> Vec<String> {
    ops.iter().map(ToString::to_string).collect()
}

/// Plans and applies on `kernel`, records ownership; returns the operations.
fn converge(desired: &Desired, kernel: &mut FakeKernel, ownership: &mut Ownership) -> Vec<LinkOp> {
    let ops = plan_on(desired, kernel, ownership, &Protected::default()).unwrap();
    for op in &ops {
        kernel.apply(op).unwrap();
    }
    ownership.record("t", &ops, &kernel.links());
    let again = plan_on(desired, kernel, ownership, &Protected::default()).unwrap();
    assert!(
        again.is_empty(),
        "a second plan changes nothing, got {:?}",
        text(&again)
    );
    let checks = verify(desired, &kernel.links());
    assert!(all_ready(&checks), "{checks:#?}");
    ops
}

fn reasons(refusals: &[Refusal]) -> Vec<(String, RefusalReason)> {
    refusals.iter().map(|r| (r.interface.clone(), r.reason)).collect()
}

#[test]
fn create_an_active_backup_bond() {
    let mut kernel = FakeKernel::with_devices(&["eth0", "ens1", "ens2"]);
    let ops = converge(&desired(AB_BOND), &mut kernel, &mut Ownership::default());
    assert_eq!(
        text(&ops),
        [
            "add bond0 type bond mode active-backup miimon 100",
            "set ens1 down",
            "set ens1 master bond0",
            "set ens2 down",
            "set ens2 master bond0",
            "set bond0 up",
        ]
    );
    assert!(kernel.link("bond0").unwrap().carrier);
    assert_eq!(
        kernel.link("eth0").unwrap().master,
        None,
        "eth0 is not named and not touched"
    );
}

#[test]
fn create_an_lacp_bond_with_a_vlan_and_a_vlan_on_a_nic() {
    let mut kernel = FakeKernel::with_devices(&["ens1", "ens2", "ens3"]);
    kernel.apply(&LinkOp::SetDown { name: "ens3".into() }).unwrap();
    let yaml = format!("{LACP_BOND_VLAN}  - {{parent: ens3, id: 10, mtu: 1400}}\n");
    let ops = converge(&desired(&yaml), &mut kernel, &mut Ownership::default());
    assert_eq!(
        text(&ops)[6..],
        [
            "add link bond0 name bond0.200 type vlan id 200",
            "set bond0.200 up",
            "set ens3 up",
            "add link ens3 name ens3.10 type vlan id 10",
            "set ens3.10 mtu 1400",
            "set ens3.10 up",
        ]
    );
}

#[test]
fn already_right_changes_nothing() {
    let mut kernel = FakeKernel::with_devices(&["ens1", "ens2"]);
    let mut ownership = Ownership::default();
    converge(&desired(LACP_BOND_VLAN), &mut kernel, &mut ownership);
    // And without ownership (a bond someone else made the same way): still nothing.
    assert!(
        plan_on(
            &desired(LACP_BOND_VLAN),
            &kernel,
            &Ownership::default(),
            &Protected::default()
        )
        .unwrap()
        .is_empty()
    );
}

#[test]
fn a_mode_change_releases_changes_and_puts_the_members_back() {
    let mut kernel = FakeKernel::with_devices(&["ens1", "ens2"]);
    let mut ownership = Ownership::default();
    converge(&desired(AB_BOND), &mut kernel, &mut ownership);
    let lacp = desired(&AB_BOND.replace("active-backup", "802.3ad"));
    let ops = converge(&lacp, &mut kernel, &mut ownership);
    assert_eq!(
        text(&ops),
        [
            "set bond0 down",
            "set ens1 nomaster",
            "set ens2 nomaster",
            "set bond0 type bond mode 802.3ad",
            "set ens1 down",
            "set ens1 master bond0",
            "set ens2 down",
            "set ens2 master bond0",
            "set bond0 up",
        ]
    );
}

#[test]
fn a_live_option_changes_without_a_flap_and_one_needing_down_takes_the_bond_down() {
    let mut kernel = FakeKernel::with_devices(&["ens1", "ens2"]);
    let mut ownership = Ownership::default();
    converge(&desired(LACP_BOND_VLAN), &mut kernel, &mut ownership);
    let ops = converge(
        &desired(&LACP_BOND_VLAN.replace("'100'", "'200'")),
        &mut kernel,
        &mut ownership,
    );
    assert_eq!(text(&ops), ["set bond0 type bond miimon 200"]);
    let slow = LACP_BOND_VLAN.replace("'100'", "'200'").replace("fast", "slow");
    let ops = converge(&desired(&slow), &mut kernel, &mut ownership);
    assert_eq!(
        text(&ops),
        [
            "set bond0 down",
            "set bond0 type bond lacp_rate slow",
            "set bond0 up"
        ]
    );
}

#[test]
fn add_a_member_and_remove_one() {
    let mut kernel = FakeKernel::with_devices(&["ens1", "ens2", "ens3"]);
    let mut ownership = Ownership::default();
    converge(&desired(AB_BOND), &mut kernel, &mut ownership);
    let three = desired(&AB_BOND.replace("[ens1, ens2]", "[ens1, ens2, ens3]"));
    let ops = converge(&three, &mut kernel, &mut ownership);
    assert_eq!(text(&ops), ["set ens3 down", "set ens3 master bond0"]);

    // Removing a member is the revert's business: this agent enslaved ens3 and no task wants it.
    let two = desired(&AB_BOND.replace("[ens1, ens2]", "[ens1, ens3]"));
    assert!(
        plan_on(&two, &kernel, &ownership, &Protected::default())
            .unwrap()
            .is_empty()
    );
    let wanted = StillWanted {
        interfaces: ["bond0".to_owned()].into(),
        members: [("ens1", "bond0"), ("ens3", "bond0")]
            .map(|(m, b)| (m.to_owned(), b.to_owned()))
            .into(),
    };
    let (ops, kept) = revert_plan(&ownership, &kernel.links(), &wanted, &Protected::default());
    assert_eq!(text(&ops), ["set ens2 nomaster", "set ens2 up"]);
    assert!(kept.is_empty());
}

#[test]
fn a_member_enslaved_by_someone_else_is_not_taken() {
    let mut kernel = FakeKernel::with_devices(&["ens1", "ens2", "ens3"]);
    for op in [
        LinkOp::CreateBond {
            name: "bond9".into(),
            mode: 1,
            options: vec![],
        },
        LinkOp::SetDown { name: "ens2".into() },
        LinkOp::Enslave {
            member: "ens2".into(),
            bond: "bond9".into(),
        },
    ] {
        kernel.apply(&op).unwrap();
    }
    let refusals = plan_on(
        &desired(AB_BOND),
        &kernel,
        &Ownership::default(),
        &Protected::default(),
    )
    .unwrap_err();
    assert_eq!(
        reasons(&refusals),
        [("ens2".to_owned(), RefusalReason::MemberOfAnotherBond)]
    );
}

#[test]
fn removing_a_vlan_deletes_it_when_this_agent_made_it() {
    let mut kernel = FakeKernel::with_devices(&["ens1", "ens2"]);
    let mut ownership = Ownership::default();
    converge(&desired(LACP_BOND_VLAN), &mut kernel, &mut ownership);
    let wanted = StillWanted {
        interfaces: ["bond0".to_owned()].into(),
        members: [("ens1", "bond0"), ("ens2", "bond0")]
            .map(|(m, b)| (m.to_owned(), b.to_owned()))
            .into(),
    };
    let (ops, _) = revert_plan(&ownership, &kernel.links(), &wanted, &Protected::default());
    assert_eq!(text(&ops), ["del bond0.200"]);
}

#[test]
fn the_default_route_interface_and_the_node_ip_interface_are_never_enslaved() {
    let kernel = FakeKernel::with_devices(&["ens1", "ens2"]);
    let links = kernel.links();
    let protected = Protected::from_anchors(
        &[
            Anchor {
                link: "ens1".into(),
                why: "carries the node's default route".into(),
            },
            Anchor {
                link: "ens2".into(),
                why: "holds the node IP 192.0.2.10".into(),
            },
        ],
        &links,
    );
    let refusals = plan_on(&desired(AB_BOND), &kernel, &Ownership::default(), &protected).unwrap_err();
    let messages: Vec<&str> = refusals.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "refusing to enslave ens1 to bond0: ens1 carries the node's default route",
            "refusing to enslave ens2 to bond0: ens2 holds the node IP 192.0.2.10",
        ]
    );
}

#[test]
fn a_vlan_may_go_on_the_node_bond_but_its_mode_may_not_change() {
    let mut kernel = FakeKernel::with_devices(&["ens1", "ens2"]);
    let mut ownership = Ownership::default();
    converge(&desired(AB_BOND), &mut kernel, &mut ownership);
    let links = kernel.links();
    let protected = Protected::from_anchors(
        &[Anchor {
            link: "bond0".into(),
            why: "holds the node IP 192.0.2.10".into(),
        }],
        &links,
    );
    let with_vlan = desired(&format!("{AB_BOND}  vlans:\n  - {{parent: bond0, id: 300}}\n"));
    let ops = plan_on(&with_vlan, &kernel, &ownership, &protected).unwrap();
    assert_eq!(
        text(&ops),
        [
            "add link bond0 name bond0.300 type vlan id 300",
            "set bond0.300 up"
        ]
    );

    let lacp = desired(&AB_BOND.replace("active-backup", "802.3ad"));
    let refusals = plan_on(&lacp, &kernel, &ownership, &protected).unwrap_err();
    assert_eq!(
        reasons(&refusals),
        [("bond0".to_owned(), RefusalReason::Protected)]
    );
    assert_eq!(
        refusals[0].message,
        "refusing to change the mode of bond0, which takes it down: bond0 holds the node IP 192.0.2.10"
    );
}

#[test]
fn every_refusal_is_reported_at_once_and_nothing_is_planned() {
    let mut kernel = FakeKernel::with_devices(&["ens1", "ens3"]);
    // Someone else's links under names the task wants.
    kernel.add(HostLink {
        index: 0,
        name: "bond1".into(),
        kind: HostKind::Other(Some("dummy".into())),
        master: None,
        parent: None,
        up: true,
        carrier: true,
        mtu: 1500,
    });
    kernel
        .apply(&LinkOp::CreateVlan {
            name: "vlan10".into(),
            parent: "ens3".into(),
            id: 10,
        })
        .unwrap();
    let yaml = "  bonds:\n  - {name: bond0, interfaces: [ens1, ens2]}\n  - {name: bond1, interfaces: [ens4]}\n  vlans:\n  - {parent: ens3, id: 10}\n  - {parent: ens9, id: 20}\n  - {parent: ens1, id: 30, mtu: 9000}\n";
    let refusals = plan_on(
        &desired(yaml),
        &kernel,
        &Ownership::default(),
        &Protected::default(),
    )
    .unwrap_err();
    assert_eq!(
        reasons(&refusals),
        [
            ("ens2".to_owned(), RefusalReason::InterfaceMissing),
            ("bond1".to_owned(), RefusalReason::NameTaken),
            ("ens3.10".to_owned(), RefusalReason::VlanTagTaken),
            ("ens9.20".to_owned(), RefusalReason::InterfaceMissing),
            ("ens1.30".to_owned(), RefusalReason::MtuTooLarge),
        ]
    );
    assert_eq!(
        refusals[1].message,
        "bond1 exists as a dummy, not a bond, and this agent did not create it; it is left alone"
    );
    assert_eq!(refusals[2].message, "VLAN 10 on ens3 already exists as vlan10");
}

#[test]
fn a_link_this_agent_made_is_replaced_when_the_task_changes_its_kind() {
    let mut kernel = FakeKernel::with_devices(&["ens1", "ens2"]);
    let mut ownership = Ownership::default();
    converge(
        &desired("  vlans:\n  - {parent: ens1, id: 10, name: uplink}\n"),
        &mut kernel,
        &mut ownership,
    );
    let ops = converge(
        &desired("  vlans:\n  - {parent: ens2, id: 10, name: uplink}\n"),
        &mut kernel,
        &mut ownership,
    );
    assert_eq!(
        text(&ops),
        [
            "del uplink",
            "add link ens2 name uplink type vlan id 10",
            "set uplink up"
        ]
    );
}

#[test]
fn mtus_follow_the_task() {
    let mut kernel = FakeKernel::with_devices(&["ens1", "ens2"]);
    let mut ownership = Ownership::default();
    let yaml = "  bonds:\n  - {name: bond0, interfaces: [ens1, ens2], mtu: 9000}\n  vlans:\n  - {parent: bond0, id: 200, mtu: 9000}\n";
    let ops = converge(&desired(yaml), &mut kernel, &mut ownership);
    assert!(text(&ops).contains(&"set bond0 mtu 9000".to_owned()));
    assert_eq!(kernel.link("ens1").unwrap().mtu, 9000, "members follow the bond");
    let ops = converge(
        &desired(&yaml.replace("200, mtu: 9000", "200, mtu: 8000")),
        &mut kernel,
        &mut ownership,
    );
    assert_eq!(text(&ops), ["set bond0.200 mtu 8000"]);
}

/// Applies `ops`, then rolls back to the checkpoint taken before: the node is as it was.
fn assert_rollback_restores(kernel: &mut FakeKernel, ops: &[LinkOp], stop_after: usize) {
    let before = kernel.links();
    let checkpoint = Checkpoint::take("t", "uid", Some(1), ops, &before);
    for op in &ops[..stop_after] {
        kernel.apply(op).unwrap();
    }
    let rollback = checkpoint.rollback(&kernel.links());
    for op in &rollback {
        kernel
            .apply(op)
            .unwrap_or_else(|e| panic!("rollback step failed: {e}\nrollback: {:?}", text(&rollback)));
    }
    let strip = |links: Vec<HostLink>| {
        let mut links: Vec<HostLink> = links.into_iter().map(|l| HostLink { index: 0, ..l }).collect();
        links.sort_by(|a, b| a.name.cmp(&b.name));
        links
    };
    assert_eq!(
        strip(kernel.links()),
        strip(before),
        "after {stop_after} of {:?} and rollback {:?}",
        text(ops),
        text(&rollback)
    );
    assert!(
        checkpoint.rollback(&kernel.links()).is_empty(),
        "a second rollback has nothing to do"
    );
}

#[test]
fn rollback_restores_the_node_after_any_prefix_of_a_plan() {
    let yaml = format!("{LACP_BOND_VLAN}  - {{parent: ens3, id: 10, mtu: 1400}}\n");
    let fresh = || {
        let mut kernel = FakeKernel::with_devices(&["ens1", "ens2", "ens3"]);
        kernel.apply(&LinkOp::SetDown { name: "ens3".into() }).unwrap();
        kernel
    };
    let ops = plan_on(
        &desired(&yaml),
        &fresh(),
        &Ownership::default(),
        &Protected::default(),
    )
    .unwrap();
    for stop_after in 0..=ops.len() {
        assert_rollback_restores(&mut fresh(), &ops, stop_after);
    }
}

#[test]
fn rollback_restores_a_mode_and_option_change_after_any_prefix() {
    let start = || {
        let mut kernel = FakeKernel::with_devices(&["ens1", "ens2", "ens3"]);
        converge(&desired(AB_BOND), &mut kernel, &mut Ownership::default());
        kernel
    };
    let changed = desired(
        "  bonds:\n  - {name: bond0, interfaces: [ens1, ens3], mode: 802.3ad, options: {miimon: '50', lacp_rate: fast}, mtu: 9000}\n",
    );
    let ops = plan_on(&changed, &start(), &Ownership::default(), &Protected::default()).unwrap();
    assert!(ops.len() > 8, "{:?}", text(&ops));
    for stop_after in 0..=ops.len() {
        assert_rollback_restores(&mut start(), &ops, stop_after);
    }
}

#[test]
fn verify_names_what_is_wrong() {
    let mut kernel = FakeKernel::with_devices(&["ens1", "ens2"]);
    kernel.unplugged = vec!["ens2".into()];
    converge(&desired(AB_BOND), &mut kernel, &mut Ownership::default());
    let checks = verify(&desired(AB_BOND), &kernel.links());
    assert!(checks[0].ready);
    assert_eq!(checks[0].message.as_deref(), Some("member ens2 has no carrier"));

    kernel.unplugged = vec!["ens1".into(), "ens2".into()];
    kernel.apply(&LinkOp::SetDown { name: "ens1".into() }).unwrap();
    kernel.apply(&LinkOp::SetUp { name: "ens1".into() }).unwrap();
    let checks = verify(&desired(&AB_BOND.replace("'100'", "'200'")), &kernel.links());
    assert!(!checks[0].ready);
    assert_eq!(
        checks[0].message.as_deref(),
        Some("miimon is 100, not 200; no carrier; member ens1 has no carrier; member ens2 has no carrier")
    );
}
