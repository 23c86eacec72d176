//! The status flow of node interface tasks against a real API server (with kube-controller-manager's
//! garbage collector): the SpiderNetwork controller renders tasks for simulated nodes, each node's
//! agent loop (the node daemon's `InterfaceAgent` and executor, on a recording model of the kernel's
//! links instead of rtnetlink) carries its task out and reports the status, and the topology becomes
//! Ready. The rollout keeps to `maxUnavailable`, a failing node pauses it, a topology's deletion
//! reverts what its tasks created, and two topologies that conflict on a node are reported on both.
//!
//! The real kernel side (bonds, VLANs, probes, rollback on Debian's kernel) is in vm_interfaces.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod operator_support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use operator_support::*;
use serde_json::json;
use spiderpool_node_daemon::interfaces::agent::InterfaceAgent;
use spiderpool_node_daemon::interfaces::executor::Executor;
use spiderpool_node_daemon::interfaces::fake::{FakeHost, FakeKernel};
use spiderpool_node_daemon::interfaces::state::StateDir;
use spiderpool_operator::compile::compile;
use spiderpool_schema::interfacetask::TaskPhase;
use spiderpool_schema::labels::LABEL_TOPOLOGY;
use spiderpool_schema::{SpiderInterfaceTask, SpiderNetwork};

const TIMEOUT: Duration = Duration::from_secs(90);

/// One simulated node: its Node object, the model of its links, and its agent loop.
struct SimNode {
    name: String,
    host: FakeHost,
    agent: tokio::task::JoinHandle<()>,
    _state: tempfile::TempDir,
}

impl Drop for SimNode {
    fn drop(&mut self) {
        self.agent.abort();
    }
}

impl SimNode {
    async fn start(
        client: &Client,
        name: &str,
        labels: BTreeMap<String, String>,
        nics: &[String],
    ) -> Result<SimNode> {
        let nodes: Api<Node> = Api::all(client.clone());
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?;
        nodes.create(&PostParams::default(), &node).await?;
        let nic_names: Vec<&str> = nics.iter().map(String::as_str).collect();
        let host = FakeHost::new(FakeKernel::with_devices(&nic_names));
        let state = tempfile::tempdir()?;
        let executor = Executor::new(host.clone(), StateDir::open(state.path())?)?;
        let agent = InterfaceAgent::new(client.clone(), name, executor, Duration::from_secs(2));
        let agent = tokio::spawn(async move {
            if let Err(e) = agent.run().await {
                panic!("the agent loop stopped: {e}");
            }
        });
        Ok(SimNode {
            name: name.to_owned(),
            host,
            agent,
            _state: state,
        })
    }

    fn links(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .host
            .with(|n| n.kernel.links().into_iter().map(|l| l.name).collect());
        names.sort();
        names
    }

    async fn delete(&self, client: &Client) -> Result<()> {
        let nodes: Api<Node> = Api::all(client.clone());
        nodes.delete(&self.name, &DeleteParams::default()).await?;
        Ok(())
    }
}

/// Labels that a rack's node selector matches (`In` takes the first value, `Exists` any).
fn labels_for(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> BTreeMap<String, String> {
    let mut labels = selector.match_labels.clone().unwrap_or_default();
    for expression in selector.match_expressions.iter().flatten() {
        match expression.operator.as_str() {
            "In" => {
                let value = expression
                    .values
                    .as_ref()
                    .and_then(|v| v.first())
                    .cloned()
                    .unwrap_or_default();
                labels.insert(expression.key.clone(), value);
            }
            "Exists" => {
                labels.insert(expression.key.clone(), "yes".into());
            }
            _ => {}
        }
    }
    labels
}

/// Every NIC a topology names (uplinks and bond members): each simulated node has them all.
fn nics_of(network: &SpiderNetwork) -> Vec<String> {
    let mut nics: Vec<String> = network
        .spec
        .racks
        .iter()
        .flat_map(|r| {
            r.uplinks
                .iter()
                .chain(r.bonds.iter().flat_map(|b| b.interfaces.iter()))
        })
        .cloned()
        .collect();
    nics.sort();
    nics.dedup();
    nics
}

async fn tasks_of(client: &Client, topology: &str) -> Result<Vec<SpiderInterfaceTask>> {
    let api: Api<SpiderInterfaceTask> = Api::all(client.clone());
    Ok(api
        .list(&ListParams::default().labels(&format!("{LABEL_TOPOLOGY}={topology}")))
        .await?
        .items)
}

async fn create(client: &Client, network: &SpiderNetwork) -> Result<()> {
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    api.create(&PostParams::default(), network).await?;
    Ok(())
}

async fn delete_and_wait_reverted(
    client: &Client,
    name: &str,
    nodes: &[SimNode],
    before: &BTreeMap<String, Vec<String>>,
) -> Result<()> {
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    api.delete(name, &DeleteParams::default()).await?;
    // The garbage collector deletes the tasks (their only owner is the topology); each agent then
    // removes what it created.
    wait_for(
        &format!("{name}'s tasks to be collected and reverted"),
        TIMEOUT,
        || async {
            let left = tasks_of(client, name).await?;
            let reverted = nodes.iter().all(|n| before.get(&n.name) == Some(&n.links()));
            Ok((left.is_empty() && reverted).then_some(()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_with_bonds_or_vlans_converges_to_ready_and_reverts_when_deleted() -> Result<()> {
    let _turn = SERIAL.lock().await;
    let (_cluster, client) = cluster().await?;
    let _running = start_network(&client);
    let mut converged = Vec::new();
    for file in example_files("")? {
        let mut network = example(&file)?;
        let rendered = compile(&network).map_err(|p| anyhow::anyhow!("{file}: {p:?}"))?;
        if rendered.interface_templates.is_empty() {
            continue;
        }
        let sfx = suffix();
        for ns in localize(&mut network, &sfx) {
            ensure_namespace(&client, &ns).await?;
        }
        let name = network.name_any();
        let nics = nics_of(&network);
        let mut nodes = Vec::new();
        for (i, rack) in network.spec.racks.iter().enumerate() {
            let node = SimNode::start(
                &client,
                &format!("n{i}-{sfx}"),
                labels_for(&rack.node_selector),
                &nics,
            )
            .await?;
            nodes.push(node);
        }
        let before: BTreeMap<String, Vec<String>> =
            nodes.iter().map(|n| (n.name.clone(), n.links())).collect();
        create(&client, &network).await?;
        let ready = wait_reason(&client, &name, "Applied", TIMEOUT)
            .await
            .with_context(|| format!("{file} did not become Ready"))?;
        let rollout = ready
            .status
            .as_ref()
            .and_then(|s| s.nodes.clone())
            .context("node rollout")?;
        assert!(
            rollout.selected > 0 && rollout.applied == rollout.selected,
            "{file}: {rollout:?}"
        );
        for task in tasks_of(&client, &name).await? {
            let status = task.status.clone().context("task status")?;
            assert_eq!(status.phase, Some(TaskPhase::Applied), "{file}: {status:?}");
            assert_eq!(status.observed_generation, task.metadata.generation);
            assert!(status.last_transition_time.is_some());
            let node = nodes
                .iter()
                .find(|n| n.name == task.spec.node_name)
                .context("its node")?;
            let links = node.links();
            for interface in task
                .spec
                .bonds
                .iter()
                .map(|b| b.name.clone())
                .chain(task.spec.vlans.iter().map(|v| v.interface_name()))
            {
                assert!(
                    links.contains(&interface),
                    "{file}: {interface} on {}: {links:?}",
                    node.name
                );
                assert!(
                    status.interfaces.iter().any(|i| i.name == interface && i.ready),
                    "{status:?}"
                );
            }
        }
        delete_and_wait_reverted(&client, &name, &nodes, &before).await?;
        for node in &nodes {
            node.delete(&client).await?;
        }
        converged.push(file);
    }
    assert!(
        converged.len() >= 4,
        "examples with bonds or VLANs: {converged:?}"
    );
    Ok(())
}

/// A topology of one rack of `nodes` nodes with a bond and a VLAN; `rollout` goes into its spec.
fn rack_topology(sfx: &str, mode: &str, rollout: &str) -> SpiderNetwork {
    serde_saphyr::from_str(&format!(
        "apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderNetwork
metadata: {{name: roll-{sfx}}}
spec:
  subnets:
  - {{name: data, vlan: 120, ipv4: {{cidr: 10.120.0.0/16, gateway: 10.120.0.1}}}}
  racks:
  - name: r1
    nodeSelector: {{matchLabels: {{rollout-test: '{sfx}'}}}}
    bonds: [{{name: bond0, interfaces: [ens1, ens2], mode: {mode}, options: {{miimon: '100'}}}}]
    ranges: [{{subnet: data, ipv4: [10.120.1.10-10.120.1.200]}}]
  networks:
  - {{name: data, type: macvlan, subnet: data, master: bond0, namespaces: [data-{sfx}]}}
  rollout: {rollout}
"
    ))
    .unwrap()
}

/// Tasks with the current mode that the node has not yet reported applied at their generation.
fn unfinished(tasks: &[SpiderInterfaceTask], mode: &str) -> usize {
    tasks
        .iter()
        .filter(|t| t.spec.bonds.first().is_some_and(|b| b.mode.kernel_name() == mode))
        .filter(|t| {
            let status = t.status.as_ref();
            status.and_then(|s| s.observed_generation) != t.metadata.generation
                || status.and_then(|s| s.phase) != Some(TaskPhase::Applied)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_keeps_to_max_unavailable_and_a_failing_node_pauses_it() -> Result<()> {
    let _turn = SERIAL.lock().await;
    let (_cluster, client) = cluster().await?;
    let _running = start_network(&client);
    let sfx = suffix();
    ensure_namespace(&client, &format!("data-{sfx}")).await?;
    let nics = vec!["ens1".to_owned(), "ens2".to_owned()];
    let mut nodes = Vec::new();
    for i in 0..6 {
        let labels = BTreeMap::from([("rollout-test".to_owned(), sfx.clone())]);
        let node = SimNode::start(&client, &format!("r{i}-{sfx}"), labels, &nics).await?;
        // Slow enough to see each change in progress.
        node.host.with(|n| n.apply_delay = Duration::from_millis(150));
        nodes.push(node);
    }
    let network = rack_topology(&sfx, "802.3ad", "{maxUnavailable: 2}");
    let name = network.name_any();
    create(&client, &network).await?;

    // Watch every 100 ms until Ready: never more than two nodes changing at once, and a node's
    // change in progress is visible as phase Applying (each operation takes 150 ms here).
    let mut most = 0;
    let mut seen_applying = false;
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let tasks = tasks_of(&client, &name).await?;
        most = most.max(unfinished(&tasks, "802.3ad"));
        seen_applying |= tasks
            .iter()
            .any(|t| t.status.as_ref().and_then(|s| s.phase) == Some(TaskPhase::Applying));
        assert!(most <= 2, "{most} nodes changing at once: {tasks:#?}");
        let api: Api<SpiderNetwork> = Api::all(client.clone());
        let live = api.get(&name).await?;
        if condition(&live, "Ready").is_some_and(|(s, _)| s == "True") {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "not Ready: {:#?}",
            live.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(most, 2, "the rollout used its room");
    assert!(seen_applying, "no task was ever seen Applying");
    assert!(nodes.iter().all(|n| n.links().contains(&"bond0.120".to_owned())));

    // A change that fails on r1: r0 and r1 go first; r1 rolls back and pauses the rollout (r2 may have
    // started if r0 finished before r1 failed); nothing more is written after that.
    nodes[1]
        .host
        .with(|n| n.failing.push("set bond0 type bond mode active-backup".into()));
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    let patch = json!({"spec": {"racks": [rack_topology(&sfx, "active-backup", "{maxUnavailable: 2}").spec.racks[0]]}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let paused = wait_reason(&client, &name, "RolloutPaused", TIMEOUT).await?;
    assert_eq!(
        condition(&paused, "RolloutPaused"),
        Some(("True".into(), "NodesFailed".into()))
    );
    assert_eq!(condition(&paused, "Stalled").map(|c| c.0), Some("True".into()));
    // A person has to act: the pause is a warning Event on the topology too.
    let note = wait_event(&client, &name, "RolloutPaused").await?;
    assert!(note.contains("interface rollout is paused"), "{note}");
    let progress = paused
        .status
        .as_ref()
        .and_then(|s| s.rollout.clone())
        .context("rollout progress")?;
    assert_eq!((progress.failed, progress.paused), (1, true), "{progress:?}");
    assert!((3..=4).contains(&progress.waiting), "{progress:?}");
    assert_eq!(progress.updated + progress.waiting, 6, "{progress:?}");
    let failures = paused
        .status
        .as_ref()
        .and_then(|s| s.nodes.clone())
        .context("nodes")?
        .failures;
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].node, nodes[1].name);
    assert!(
        failures[0]
            .message
            .contains("injected failure; the previous state was restored"),
        "{failures:?}"
    );
    // Paused means paused: a few seconds later the waiting nodes still have the old spec.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tasks = tasks_of(&client, &name).await?;
    let old = tasks
        .iter()
        .filter(|t| t.spec.bonds[0].mode.kernel_name() == "802.3ad")
        .count();
    assert_eq!(i64::try_from(old)?, progress.waiting);
    let failed = tasks.iter().find(|t| t.spec.node_name == nodes[1].name).unwrap();
    assert_eq!(
        failed.status.as_ref().and_then(|s| s.reason.clone()).as_deref(),
        Some("ApplyFailed")
    );
    // The failure is an Event on the task too.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::all(client.clone());
    let selector = format!(
        "involvedObject.name={},involvedObject.kind=SpiderInterfaceTask",
        failed.name_any()
    );
    let event = wait_for("a Warning Event on the failed task", TIMEOUT, || async {
        let list = events.list(&ListParams::default().fields(&selector)).await?;
        Ok(list
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("ApplyFailed")))
    })
    .await?;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(
        event
            .message
            .as_deref()
            .is_some_and(|m| m.contains("injected failure")),
        "{event:?}"
    );

    // The engineer changes the topology (the next mode); the rollout goes on to the end.
    nodes[1].host.with(|n| n.failing.clear());
    let patch =
        json!({"spec": {"racks": [rack_topology(&sfx, "balance-xor", "{maxUnavailable: 2}").spec.racks[0]]}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_reason(&client, &name, "Applied", TIMEOUT).await?;
    let ready = api.get(&name).await?;
    assert_eq!(
        condition(&ready, "RolloutPaused"),
        Some(("False".into(), "Progressing".into()))
    );

    let before: BTreeMap<String, Vec<String>> = nodes
        .iter()
        .map(|n| (n.name.clone(), vec!["ens1".into(), "ens2".into()]))
        .collect();
    delete_and_wait_reverted(&client, &name, &nodes, &before).await?;
    for node in &nodes {
        node.delete(&client).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_topologies_that_conflict_on_a_node_are_reported_on_both_and_applied_on_neither() -> Result<()> {
    let _turn = SERIAL.lock().await;
    let (_cluster, client) = cluster().await?;
    let _running = start_network(&client);
    let sfx = suffix();
    ensure_namespace(&client, &format!("data-{sfx}")).await?;
    let labels = BTreeMap::from([("rollout-test".to_owned(), sfx.clone())]);
    let node = SimNode::start(
        &client,
        &format!("c0-{sfx}"),
        labels,
        &["ens1".into(), "ens2".into()],
    )
    .await?;
    let first = rack_topology(&sfx, "802.3ad", "{}");
    let mut second = rack_topology(&sfx, "active-backup", "{}");
    second.metadata.name = Some(format!("roll2-{sfx}"));
    second.spec.networks[0].name = "data2".into();
    for net in [&first, &second] {
        create(&client, net).await?;
    }
    for net in [&first, &second] {
        let live = wait_reason(&client, &net.name_any(), "InterfaceConflict", TIMEOUT).await?;
        let conflicts = live.status.and_then(|s| s.rollout).context("rollout")?.conflicts;
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0].node, node.name);
    }
    for net in [&first, &second] {
        for task in tasks_of(&client, &net.name_any()).await? {
            wait_for("the task to report the conflict", TIMEOUT, || async {
                let api: Api<SpiderInterfaceTask> = Api::all(client.clone());
                let live = api.get(&task.name_any()).await?;
                Ok((live.status.and_then(|s| s.reason).as_deref() == Some("Conflict")).then_some(()))
            })
            .await?;
        }
    }
    assert_eq!(node.links(), ["ens1", "ens2"], "neither topology's bond was made");
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    api.delete(&second.name_any(), &DeleteParams::default()).await?;
    wait_reason(&client, &first.name_any(), "Applied", TIMEOUT).await?;
    assert!(node.links().contains(&"bond0".to_owned()));
    let before = BTreeMap::from([(node.name.clone(), vec!["ens1".to_owned(), "ens2".to_owned()])]);
    delete_and_wait_reverted(&client, &first.name_any(), std::slice::from_ref(&node), &before).await?;
    node.delete(&client).await?;
    Ok(())
}
