//! The executor on the kernel model: apply, reapply, probe failures and rollback, a crash between
//! checkpoint and apply, conflicts, revert when a task goes.

use spiderpool_schema::SpiderInterfaceTask;
use spiderpool_schema::interfacetask::TaskPhase;

use super::checkpoint::Checkpoint;
use super::executor::{Executor, Report, Step, Task};
use super::fake::{FakeHost, FakeKernel};
use super::model::LinkOp;
use super::safety::Anchor;
use super::state::StateDir;

fn task(name: &str, generation: i64, yaml: &str) -> Task {
    let t: SpiderInterfaceTask = serde_saphyr::from_str(&format!(
        "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderInterfaceTask\nmetadata: {{name: {name}}}\nspec:\n  nodeName: n1\n{yaml}"
    ))
    .unwrap();
    Task {
        name: name.to_owned(),
        uid: format!("uid-{name}"),
        generation: Some(generation),
        spec: t.spec,
    }
}

const BOND_VLAN: &str = "  bonds:\n  - {name: bond0, interfaces: [ens1, ens2], mode: 802.3ad, options: {miimon: '100'}}\n  vlans:\n  - {parent: bond0, id: 200}\n";

struct Setup {
    host: FakeHost,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            host: FakeHost::new(FakeKernel::with_devices(&["eth0", "ens1", "ens2", "ens3"])),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A fresh executor on the same node and state directory (an agent (re)start).
    fn executor(&self) -> Executor<FakeHost> {
        Executor::new(self.host.clone(), StateDir::open(self.dir.path()).unwrap()).unwrap()
    }

    fn links(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .host
            .with(|n| n.kernel.links().into_iter().map(|l| l.name).collect());
        names.sort();
        names
    }

    fn recorded(&self) -> usize {
        self.host.with(|n| n.kernel.recorded.len())
    }
}

/// prepare + apply, as the agent's loop does.
async fn run(executor: &mut Executor<FakeHost>, task: &Task, all: &[Task]) -> Report {
    match executor.prepare(task, all).await.unwrap() {
        Step::Done(report) => report,
        Step::Apply(pending) => executor.apply(pending).await.unwrap(),
    }
}

#[tokio::test]
async fn applies_then_changes_nothing_on_the_second_run() {
    let setup = Setup::new();
    let mut executor = setup.executor();
    let t = task("dc1-n1", 1, BOND_VLAN);
    let report = run(&mut executor, &t, std::slice::from_ref(&t)).await;
    assert_eq!(
        (report.phase, report.reason.as_str()),
        (TaskPhase::Applied, "Applied"),
        "{report:?}"
    );
    assert_eq!(report.changes.len(), 8, "{:?}", report.changes);
    assert!(report.interfaces.iter().all(|i| i.ready));
    assert_eq!(executor.state().ownership.created.len(), 2);

    let before = setup.recorded();
    let report = run(&mut executor, &t, std::slice::from_ref(&t)).await;
    assert_eq!(
        (report.phase, report.reason.as_str()),
        (TaskPhase::Applied, "Unchanged")
    );
    assert_eq!(setup.recorded(), before, "no operation at all on the second run");
}

#[tokio::test]
async fn a_gateway_that_does_not_answer_rolls_back_and_is_not_retried() {
    let setup = Setup::new();
    let mut executor = setup.executor();
    let yaml = format!(
        "{BOND_VLAN}  probe:\n    gateways: [{{interface: bond0.200, address: 10.20.0.1}}]\n    timeoutSeconds: 1\n"
    );
    let t = task("dc1-n1", 1, &yaml);
    let report = run(&mut executor, &t, std::slice::from_ref(&t)).await;
    assert_eq!(
        (report.phase, report.reason.as_str()),
        (TaskPhase::RolledBack, "ProbeFailed"),
        "{report:?}"
    );
    assert_eq!(
        report.message.as_deref(),
        Some("gateway 10.20.0.1 did not answer ARP on bond0.200 within 1 s; the previous state was restored")
    );
    assert_eq!(
        setup.links(),
        ["ens1", "ens2", "ens3", "eth0"],
        "the bond and the VLAN are gone again"
    );
    assert!(
        setup
            .host
            .with(|n| n.kernel.links().iter().all(|l| l.up && l.master.is_none()))
    );
    assert!(executor.state().ownership.created.is_empty());

    // Not tried again for this generation, even by a restarted agent.
    let before = setup.recorded();
    let mut restarted = setup.executor();
    let report = run(&mut restarted, &t, std::slice::from_ref(&t)).await;
    assert_eq!(
        (report.phase, report.reason.as_str()),
        (TaskPhase::RolledBack, "ProbeFailed")
    );
    assert!(
        report
            .message
            .unwrap()
            .ends_with("; not tried again until the task changes")
    );
    assert_eq!(setup.recorded(), before);

    // The next generation, with a gateway that answers, is applied.
    setup.host.with(|n| {
        n.gateways
            .push(("bond0.200".into(), "10.20.0.1".parse().unwrap()))
    });
    let t2 = task("dc1-n1", 2, &yaml);
    let report = run(&mut restarted, &t2, std::slice::from_ref(&t2)).await;
    assert_eq!(report.phase, TaskPhase::Applied, "{report:?}");
    assert!(restarted.state().rolled_back.is_empty());
}

#[tokio::test]
async fn a_failed_operation_rolls_back_what_was_done() {
    let setup = Setup::new();
    setup.host.with(|n| {
        n.failing
            .push("add link bond0 name bond0.200 type vlan id 200".into())
    });
    let mut executor = setup.executor();
    let t = task("dc1-n1", 1, BOND_VLAN);
    let report = run(&mut executor, &t, std::slice::from_ref(&t)).await;
    assert_eq!(
        (report.phase, report.reason.as_str()),
        (TaskPhase::RolledBack, "ApplyFailed")
    );
    assert!(
        report.message.as_deref().unwrap().starts_with(
            "change 7 of 8 failed: add link bond0 name bond0.200 type vlan id 200: injected failure"
        ),
        "{report:?}"
    );
    assert_eq!(report.rolled_back, ["del bond0", "set ens1 up", "set ens2 up"]);
    assert_eq!(setup.links(), ["ens1", "ens2", "ens3", "eth0"]);
}

#[tokio::test]
async fn a_crash_between_checkpoint_and_apply_is_rolled_back_at_start() {
    let setup = Setup::new();
    let t = task("dc1-n1", 3, BOND_VLAN);
    // The agent wrote its checkpoint, applied part of the plan, and died.
    let mut executor = setup.executor();
    let Step::Apply(pending) = executor.prepare(&t, std::slice::from_ref(&t)).await.unwrap() else {
        panic!("a plan")
    };
    let links = setup.host.with(|n| n.kernel.links());
    let checkpoint = Checkpoint::take(&t.name, &t.uid, t.generation, pending.ops(), &links);
    StateDir::open(setup.dir.path())
        .unwrap()
        .save_checkpoint(&checkpoint)
        .unwrap();
    for op in &pending.ops()[..4] {
        setup.host.with(|n| n.kernel.apply(op)).unwrap();
    }
    drop(executor);

    let mut restarted = setup.executor();
    let report = restarted.recover().await.unwrap().expect("a checkpoint was left");
    assert_eq!(
        (report.phase, report.reason.as_str()),
        (TaskPhase::RolledBack, "AgentRestarted")
    );
    assert_eq!(
        report.message.as_deref(),
        Some("the agent stopped while applying generation 3; the previous state was restored")
    );
    assert_eq!(setup.links(), ["ens1", "ens2", "ens3", "eth0"]);
    assert!(
        restarted.recover().await.unwrap().is_none(),
        "the checkpoint is gone"
    );
    // And that generation is not tried again (it might be what killed the agent).
    let report = run(&mut restarted, &t, std::slice::from_ref(&t)).await;
    assert_eq!(report.reason, "AgentRestarted");
}

#[tokio::test]
async fn the_default_route_interface_is_refused_with_nothing_changed() {
    let setup = Setup::new();
    setup.host.with(|n| {
        n.anchors.push(Anchor {
            link: "ens1".into(),
            why: "carries the node's IPv4 default route via 192.0.2.1".into(),
        });
    });
    let mut executor = setup.executor();
    let t = task("dc1-n1", 1, BOND_VLAN);
    let report = run(&mut executor, &t, std::slice::from_ref(&t)).await;
    assert_eq!(
        (report.phase, report.reason.as_str()),
        (TaskPhase::Failed, "Protected")
    );
    assert_eq!(
        report.message.as_deref(),
        Some(
            "refusing to enslave ens1 to bond0: ens1 carries the node's IPv4 default route via 192.0.2.1; nothing was changed"
        )
    );
    assert_eq!(setup.recorded(), 0);
}

#[tokio::test]
async fn conflicting_tasks_are_both_failed_and_neither_is_applied() {
    let setup = Setup::new();
    let mut executor = setup.executor();
    let a = task("dc1-n1", 1, BOND_VLAN);
    let b = task("dc2-n1", 1, &BOND_VLAN.replace("802.3ad", "active-backup"));
    let all = [a.clone(), b.clone()];
    for t in &all {
        let report = run(&mut executor, t, &all).await;
        assert_eq!(
            (report.phase, report.reason.as_str()),
            (TaskPhase::Failed, "Conflict")
        );
        assert!(report.message.as_deref().unwrap().contains(
            "in dc1-n1 but bond bond0 of [ens1, ens2] mode active-backup options miimon=100 in dc2-n1"
        ));
    }
    assert_eq!(setup.recorded(), 0);
}

#[tokio::test]
async fn a_task_that_goes_away_is_reverted_and_members_come_back_up() {
    let setup = Setup::new();
    let mut executor = setup.executor();
    let a = task("dc1-n1", 1, BOND_VLAN);
    let b = task("dc2-n1", 1, "  vlans:\n  - {parent: ens3, id: 30}\n");
    for t in [&a, &b] {
        assert_eq!(
            run(&mut executor, t, &[a.clone(), b.clone()]).await.phase,
            TaskPhase::Applied
        );
    }
    // A VLAN someone else made is never ours to remove.
    setup
        .host
        .with(|n| {
            n.kernel.apply(&LinkOp::CreateVlan {
                name: "eth0.5".into(),
                parent: "eth0".into(),
                id: 5,
            })
        })
        .unwrap();

    let reverted = executor.revert(std::slice::from_ref(&b)).await.unwrap();
    assert_eq!(
        reverted.changes,
        ["del bond0.200", "del bond0", "set ens1 up", "set ens2 up"]
    );
    assert_eq!(
        setup.links(),
        ["ens1", "ens2", "ens3", "ens3.30", "eth0", "eth0.5"]
    );
    assert!(
        setup
            .host
            .with(|n| n.kernel.link("ens1").is_some_and(|l| l.up && l.master.is_none()))
    );
    assert!(
        executor
            .revert(std::slice::from_ref(&b))
            .await
            .unwrap()
            .changes
            .is_empty()
    );
    assert_eq!(executor.revert(&[]).await.unwrap().changes, ["del ens3.30"]);
}
