//! The SpiderNetwork controller against a real API server (and kube-controller-manager for garbage
//! collection), run in-process: every example topology applied, edits change exactly what they
//! should, no-op reconciles write nothing, deletion, invalid topologies, node interface tasks and the
//! refusal to move allocated addresses.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod operator_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use operator_support::*;
use serde_json::{Value, json};
use spiderpool_node_daemon::interfaces::agent::InterfaceAgent;
use spiderpool_node_daemon::interfaces::executor::Executor;
use spiderpool_node_daemon::interfaces::fake::{FakeHost, FakeKernel};
use spiderpool_node_daemon::interfaces::state::StateDir;
use spiderpool_operator::compile::compile;
use spiderpool_operator::controller::network::CONTROLLER;
use spiderpool_schema::labels::{LABEL_MANAGED_BY, MANAGED_BY};
use spiderpool_schema::network::{Rack, RackRange};
use spiderpool_schema::{SpiderIPPool, SpiderNetwork};

/// Generous: on a loaded CI machine the six examples' first reconciles queue behind each other.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// `"<Kind> <ns/>name"` of everything the compiler renders that the controller applies.
fn rendered_ids(network: &SpiderNetwork) -> BTreeMap<String, Value> {
    let rendered = compile(network).expect("the example compiles");
    let mut out = BTreeMap::new();
    let mut add = |kind: &str, value: Value| {
        let name = value["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let id = match value["metadata"]["namespace"].as_str() {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        };
        out.insert(id, value);
    };
    for o in &rendered.reserved_ips {
        add("SpiderReservedIP", serde_json::to_value(o).unwrap());
    }
    for o in &rendered.ip_pools {
        add("SpiderIPPool", serde_json::to_value(o).unwrap());
    }
    for o in &rendered.multus_configs {
        add("SpiderMultusConfig", serde_json::to_value(o).unwrap());
    }
    out
}

async fn create_localized(
    client: &Client,
    network: &mut SpiderNetwork,
    suffix: &str,
) -> Result<SpiderNetwork> {
    for ns in localize(network, suffix) {
        ensure_namespace(client, &ns).await?;
    }
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    Ok(api.create(&PostParams::default(), network).await?)
}

/// Makes the controller reconcile `names` (a metadata change that leaves the generation alone) and waits
/// until it has; returns the writes it made meanwhile.
async fn touch_and_count_writes(client: &Client, running: &Running, names: &[String]) -> Result<u64> {
    // A controller reconciles every topology it finds when it starts. A touch that arrives while that
    // first reconcile is still queued merges into it (one reconcile for both), and the count awaited
    // below would never be reached: a freshly started controller on a loaded machine did exactly that.
    // So first its first pass: at least one reconcile per topology, then no new one for 2 s.
    wait_for("the controller's first pass", READY_TIMEOUT, || async {
        Ok((running.metrics.reconciles(CONTROLLER) >= names.len() as u64).then_some(()))
    })
    .await?;
    settle_count(|| running.metrics.reconciles(CONTROLLER), Duration::from_secs(2)).await;
    let before = settle(&running.metrics, CONTROLLER, Duration::from_secs(2)).await;
    let reconciles = running.metrics.reconciles(CONTROLLER);
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    for name in names {
        let patch = json!({"metadata": {"annotations": {"test.spidernet.io/touched": suffix()}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let want = reconciles + names.len() as u64;
    wait_for("reconciles after the touch", Duration::from_secs(30), || async {
        Ok((running.metrics.reconciles(CONTROLLER) >= want).then_some(()))
    })
    .await?;
    let after = settle(&running.metrics, CONTROLLER, Duration::from_secs(2)).await;
    Ok(after - before)
}

async fn delete_network(client: &Client, name: &str) -> Result<()> {
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

fn resource_versions(objects: &BTreeMap<String, DynamicObject>) -> BTreeMap<String, String> {
    objects
        .iter()
        .map(|(id, o)| {
            (
                id.clone(),
                o.metadata.resource_version.clone().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_is_applied_with_owner_references_and_reported_ready() -> Result<()> {
    let _turn = SERIAL.lock().await;
    let (_cluster, client) = cluster().await?;
    let running = start_network(&client);
    let sfx = suffix();
    let mut created = Vec::new();
    for file in example_files("")? {
        let mut network = example(&file)?;
        // GitOps tracking metadata on the topology must not reach its children.
        network
            .metadata
            .labels
            .get_or_insert_default()
            .insert("app.kubernetes.io/instance".into(), "gitops-app".into());
        network
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("argocd.argoproj.io/tracking-id".into(), "app:x/y".into());
        let live = create_localized(&client, &mut network, &sfx).await?;
        created.push((file, network, live));
    }
    ensure!(
        created.len() >= 6,
        "expected the six examples, found {}",
        created.len()
    );

    for (file, _, live) in &created {
        let name = live.name_any();
        let ready = wait_reason(&client, &name, "Applied", READY_TIMEOUT)
            .await
            .with_context(|| file.clone())?;
        assert_eq!(condition(&ready, "Ready").unwrap().0, "True", "{file}");
        assert_eq!(condition(&ready, "Stalled").unwrap().0, "False", "{file}");
        assert_eq!(condition(&ready, "Reconciling").unwrap().0, "False", "{file}");
        let status = ready.status.clone().unwrap();
        assert!(status.problems.is_empty(), "{file}: {:?}", status.problems);

        let expected = rendered_ids(live);
        let kids = children(&client, &name).await?;
        let got: BTreeSet<&String> = kids.keys().collect();
        let want: BTreeSet<&String> = expected.keys().collect();
        assert_eq!(got, want, "{file}: children");
        let rendered = compile(live).unwrap();
        let counts = status.counts.unwrap();
        assert_eq!(counts.ip_pools as usize, rendered.ip_pools.len(), "{file}");
        assert_eq!(
            counts.reserved_ips as usize,
            rendered.reserved_ips.len(),
            "{file}"
        );
        assert_eq!(
            counts.multus_configs as usize,
            rendered.multus_configs.len(),
            "{file}"
        );
        assert_eq!(
            counts.interface_tasks, 0,
            "{file}: no node carries the racks' labels"
        );
        assert_eq!(status.nodes.unwrap().summary, "0/0");

        for (id, object) in &kids {
            let owner = object
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .with_context(|| format!("{file}: {id} has no controller reference"))?;
            assert_eq!(owner.kind, "SpiderNetwork", "{id}");
            assert_eq!(owner.uid, live.uid().unwrap(), "{id}");
            let labels = object.labels();
            assert_eq!(
                labels.get(LABEL_MANAGED_BY).map(String::as_str),
                Some(MANAGED_BY),
                "{id}"
            );
            assert!(
                !labels.contains_key("app.kubernetes.io/instance"),
                "{id}: tracking label copied"
            );
            assert!(
                !object
                    .annotations()
                    .keys()
                    .any(|k| k.starts_with("argocd.argoproj.io/")),
                "{id}: tracking annotation copied"
            );
            // What we rendered is what is stored.
            let desired = &expected[id];
            let stored = serde_json::to_value(object)?;
            assert_eq!(stored["spec"]["ips"], desired["spec"]["ips"], "{id}");
        }
    }

    // Nothing changed: reconciling every topology again writes nothing.
    let names: Vec<String> = created.iter().map(|(_, _, l)| l.name_any()).collect();
    let writes = touch_and_count_writes(&client, &running, &names).await?;
    assert_eq!(writes, 0, "a reconcile with nothing to do wrote {writes} times");

    // A fresh controller (empty caches of what it wrote) also writes nothing.
    drop(running);
    let fresh = start_network(&client);
    let writes = touch_and_count_writes(&client, &fresh, &names).await?;
    assert_eq!(writes, 0, "a restarted controller wrote {writes} times");

    for name in &names {
        delete_network(&client, name).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_changes_exactly_the_affected_children_and_prunes_the_rest() -> Result<()> {
    let _turn = SERIAL.lock().await;
    let (_cluster, client) = cluster().await?;
    let running = start_network(&client);
    let sfx = suffix();
    // A second network on the backend subnet, which the edit removes again; the frontend side is left
    // alone by the edit.
    let mut network = example("dual-stack.yaml")?;
    let mut admin = network
        .spec
        .networks
        .iter()
        .find(|n| n.name == "backend")
        .context("backend network")?
        .clone();
    admin.name = "backend-admin".into();
    network.spec.networks.push(admin);
    let live = create_localized(&client, &mut network, &sfx).await?;
    let name = live.name_any();
    wait_reason(&client, &name, "Applied", READY_TIMEOUT).await?;
    let before_objects = children(&client, &name).await?;
    let before = resource_versions(&before_objects);
    let old_rendered = rendered_ids(&live);

    // Add a rack, remove a network (and the app on it), grow an app's fixed address count.
    let mut edited = live.clone();
    edited.spec.racks.push(Rack {
        name: "zone-c".into(),
        node_selector: serde_json::from_value(
            json!({"matchLabels": {"topology.kubernetes.io/zone": "zone-c"}}),
        )?,
        uplinks: vec!["ens3".into()],
        ranges: vec![RackRange {
            subnet: "backend".into(),
            ipv4: vec!["10.30.4.2-10.30.4.9".into()],
            ipv6: vec!["fd00:30:120::c:0-fd00:30:120::c:ff".into()],
        }],
        ..Rack::default()
    });
    edited.spec.networks.retain(|n| n.name != "backend-admin");
    let db = edited
        .spec
        .apps
        .iter_mut()
        .find(|a| a.name == "orders-db")
        .context("orders-db")?;
    db.interfaces[0].fixed_ips.as_mut().context("fixedIPs")?.count = Some(5);
    let new_rendered = rendered_ids(&edited);

    let api: Api<SpiderNetwork> = Api::all(client.clone());
    let patch = json!({"spec": serde_json::to_value(&edited.spec)?});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    // A merge patch replaces lists whole, so the stored spec is the edited one.
    let stored = api.get(&name).await?;
    assert_eq!(stored.spec, edited.spec);
    wait_reason(&client, &name, "Applied", READY_TIMEOUT).await?;
    let after_objects = children(&client, &name).await?;
    let after = resource_versions(&after_objects);

    let want_ids: BTreeSet<&String> = new_rendered.keys().collect();
    let got_ids: BTreeSet<&String> = after.keys().collect();
    assert_eq!(
        got_ids, want_ids,
        "children after the edit (removed ones pruned, new ones created)"
    );
    let removed: Vec<&String> = old_rendered
        .keys()
        .filter(|id| !new_rendered.contains_key(*id))
        .collect();
    assert!(!removed.is_empty(), "the edit removes objects");
    let mut expected_changed = BTreeSet::new();
    let mut unchanged = 0;
    for (id, value) in &new_rendered {
        match old_rendered.get(id) {
            Some(old) if old == value => unchanged += 1,
            Some(_) => {
                expected_changed.insert(id.clone());
            }
            None => {}
        }
    }
    let actually_changed: BTreeSet<String> = after
        .iter()
        .filter(|(id, rv)| before.get(*id).is_some_and(|old| old != *rv))
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(
        actually_changed, expected_changed,
        "exactly the children whose rendering changed were written"
    );
    assert!(unchanged > 0, "the edit leaves some children alone");
    assert!(!expected_changed.is_empty(), "the edit changes some children");

    let writes = touch_and_count_writes(&client, &running, std::slice::from_ref(&name)).await?;
    assert_eq!(writes, 0, "a no-op reconcile after the edit wrote {writes} times");
    delete_network(&client, &name).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topology_garbage_collects_its_children() -> Result<()> {
    let _turn = SERIAL.lock().await;
    let (_cluster, client) = cluster().await?;
    let _running = start_network(&client);
    let mut network = example("single-rack-lab.yaml")?;
    let live = create_localized(&client, &mut network, &suffix()).await?;
    let name = live.name_any();
    wait_reason(&client, &name, "Applied", READY_TIMEOUT).await?;
    ensure!(
        !children(&client, &name).await?.is_empty(),
        "children were created"
    );
    delete_network(&client, &name).await?;
    // kube-controller-manager's garbage collector follows the owner references.
    wait_for(
        "children to be garbage-collected",
        Duration::from_secs(90),
        || async {
            let left = children(&client, &name).await?;
            if left.is_empty() {
                Ok(Some(()))
            } else {
                anyhow::bail!("left: {:?}", left.keys().collect::<Vec<_>>())
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topologies_create_nothing_and_list_their_problems() -> Result<()> {
    let _turn = SERIAL.lock().await;
    let (_cluster, client) = cluster().await?;
    let _running = start_network(&client);
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    let sfx = suffix();
    let mut accepted = Vec::new();
    let mut refused_by_schema = Vec::new();
    for file in example_files("invalid")? {
        let mut network = example(&file)?;
        for ns in localize(&mut network, &sfx) {
            ensure_namespace(&client, &ns).await?;
        }
        match api.create(&PostParams::default(), &network).await {
            Ok(live) => accepted.push((file, network, live)),
            // The CRD schema or its CEL rules already refuse some (the webhook is not running here).
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => refused_by_schema.push(file),
            Err(err) => return Err(err.into()),
        }
    }
    ensure!(
        accepted.len() >= 5,
        "only {} invalid examples reach the controller ({refused_by_schema:?} are refused by the schema)",
        accepted.len()
    );
    for (file, _, live) in &accepted {
        let name = live.name_any();
        let status = wait_reason(&client, &name, "Invalid", READY_TIMEOUT)
            .await
            .with_context(|| file.clone())?;
        assert_eq!(condition(&status, "Ready").unwrap().0, "False", "{file}");
        assert_eq!(condition(&status, "Stalled").unwrap().0, "True", "{file}");
        let problems = status.status.unwrap().problems;
        let expected = compile(live).expect_err("invalid");
        assert_eq!(
            problems, expected,
            "{file}: the status lists the compiler's problems"
        );
        assert!(
            problems
                .iter()
                .all(|p| p.path.starts_with("spec.") || p.path.starts_with("metadata.")),
            "{file}: {problems:?}"
        );
        assert!(
            children(&client, &name).await?.is_empty(),
            "{file}: something was created"
        );
    }
    for (_, _, live) in &accepted {
        delete_network(&client, &live.name_any()).await?;
    }
    Ok(())
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn create_node(client: &Client, name: &str, labels: Value) -> Result<Node> {
    let api: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?;
    Ok(api.create(&PostParams::default(), &node).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interface_tasks_follow_the_nodes_and_their_rollout_decides_readiness() -> Result<()> {
    let _turn = SERIAL.lock().await;
    let (_cluster, client) = cluster().await?;
    let _running = start_network(&client);
    let sfx = suffix();
    let mut network = example("storage-lacp-statefulset.yaml")?;
    // Every node at once: this test is about which nodes get a task (the rollout has its own tests
    // in interface_tasks.rs).
    network.spec.rollout = Some(spiderpool_schema::rollout::RolloutPolicy {
        max_unavailable: Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
            "100%".into(),
        )),
        ..Default::default()
    });
    let live = create_localized(&client, &mut network, &sfx).await?;
    let name = live.name_any();
    wait_reason(&client, &name, "Applied", READY_TIMEOUT).await?;

    let storage =
        |rack: &str| json!({"topology.kubernetes.io/rack": rack, "node-role.example.com/storage": "true"});
    let n1 = create_node(&client, &format!("stor-a-{sfx}"), storage("s1")).await?;
    let n2 = create_node(&client, &format!("stor-b-{sfx}"), storage("s2")).await?;
    let _n3 = create_node(
        &client,
        &format!("web-{sfx}"),
        json!({"topology.kubernetes.io/rack": "s1"}),
    )
    .await?;

    // The nodes are created one by one, so a reconcile between two creations reports fewer: wait
    // until the status has seen both storage nodes.
    let both_seen = |network: &SpiderNetwork| {
        network
            .status
            .as_ref()
            .and_then(|s| s.nodes.as_ref())
            .is_some_and(|nodes| nodes.selected == 2)
    };
    let pending = wait_reason_and(&client, &name, "NodesPending", READY_TIMEOUT, both_seen).await?;
    let rollout = pending.status.clone().unwrap().nodes.unwrap();
    assert_eq!((rollout.selected, rollout.applied, rollout.pending), (2, 0, 2));
    assert_eq!(condition(&pending, "Reconciling").unwrap().0, "True");

    let tasks = children(&client, &name).await?;
    let task_ids: Vec<&String> = tasks
        .keys()
        .filter(|k| k.starts_with("SpiderInterfaceTask"))
        .collect();
    assert_eq!(task_ids.len(), 2, "{task_ids:?}");
    let mut agents = Vec::new();
    for n in [&n1, &n2] {
        let task = tasks
            .values()
            .find(|t| t.data["spec"]["nodeName"] == n.name_any())
            .with_context(|| format!("no task for {}", n.name_any()))?;
        let owners = task.owner_references();
        // The topology is the only owner: deleting it deletes the task (and the agent reverts).
        assert_eq!(owners.len(), 1, "{owners:?}");
        assert!(owners[0].kind == "SpiderNetwork" && owners[0].controller == Some(true));
        assert_eq!(task.data["spec"]["bonds"][0]["name"], "bond0");
        // The node daemon's part: its interface loop carries the task out (on a model of the
        // kernel's links; the real kernel is vm_interfaces.rs) and reports it applied.
        let nics = ["ens1f0", "ens1f1", "ens2f0", "ens2f1"];
        let host = FakeHost::new(FakeKernel::with_devices(&nics));
        let state = tempfile::tempdir()?;
        let executor = Executor::new(host, StateDir::open(state.path())?)?;
        let agent = InterfaceAgent::new(client.clone(), &n.name_any(), executor, Duration::from_secs(2));
        agents.push((AbortOnDrop(tokio::spawn(async move { agent.run().await })), state));
    }
    let ready = wait_reason(&client, &name, "Applied", READY_TIMEOUT).await?;
    assert_eq!(ready.status.unwrap().nodes.unwrap().summary, "2/2");

    // A node that leaves the rack loses its task; a deleted node's task goes with it.
    let nodes: Api<Node> = Api::all(client.clone());
    let relabel = json!({"metadata": {"labels": {"node-role.example.com/storage": null}}});
    nodes
        .patch(&n2.name_any(), &PatchParams::default(), &Patch::Merge(&relabel))
        .await?;
    wait_for(
        "the relabelled node's task to be pruned",
        READY_TIMEOUT,
        || async {
            let left = children(&client, &name).await?;
            let tasks: Vec<&DynamicObject> = left
                .values()
                .filter(|o| o.data["spec"]["nodeName"].is_string())
                .collect();
            Ok((tasks.len() == 1 && tasks[0].data["spec"]["nodeName"] == n1.name_any()).then_some(()))
        },
    )
    .await?;
    nodes.delete(&n1.name_any(), &DeleteParams::default()).await?;
    wait_for(
        "the deleted node's task to go",
        Duration::from_secs(90),
        || async {
            let left = children(&client, &name).await?;
            Ok((!left.keys().any(|k| k.starts_with("SpiderInterfaceTask"))).then_some(()))
        },
    )
    .await?;
    let ready = wait_reason(&client, &name, "Applied", READY_TIMEOUT).await?;
    assert_eq!(ready.status.unwrap().nodes.unwrap().summary, "0/0");

    for node in [format!("stor-b-{sfx}"), format!("web-{sfx}")] {
        nodes.delete(&node, &DeleteParams::default()).await?;
    }
    delete_network(&client, &name).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocated_addresses_are_never_moved_out_of_their_pool() -> Result<()> {
    let _turn = SERIAL.lock().await;
    let (_cluster, client) = cluster().await?;
    let _running = start_network(&client);
    let sfx = suffix();
    let mut network = example("storage-lacp-statefulset.yaml")?;
    let live = create_localized(&client, &mut network, &sfx).await?;
    let name = live.name_any();
    wait_reason(&client, &name, "Applied", READY_TIMEOUT).await?;

    // The allocator's part: every address of minio's rack-s1 pool is in use.
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let selector = format!(
        "spiderpool.spidernet.io/topology={name},spiderpool.spidernet.io/app=minio,spiderpool.spidernet.io/rack=s1"
    );
    let pool = pools
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .pop()
        .context("minio's rack-s1 pool")?;
    let usable = spiderpool_operator::controller::network::plan::pool_usable(&pool.spec).unwrap();
    let allocated: serde_json::Map<String, Value> = usable
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            (
                ip.to_string(),
                json!({"pod": format!("storage-{sfx}/minio-{i}"), "podUid": format!("uid-{i}")}),
            )
        })
        .collect();
    assert_eq!(allocated.len(), 4);
    let status =
        json!({"status": {"allocatedIPs": Value::Object(allocated).to_string(), "allocatedIPCount": 4}});
    pools
        .patch_status(&pool.name_any(), &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    let before = resource_versions(&children(&client, &name).await?);

    // Shrinking the fixed addresses would take two allocated ones away: nothing is applied.
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    let mut spec = serde_json::to_value(&live.spec)?;
    spec["apps"][0]["interfaces"][0]["fixedIPs"]["count"] = json!(2);
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": spec})),
    )
    .await?;
    let refused = wait_reason(&client, &name, "AddressesInUse", READY_TIMEOUT).await?;
    let problems = refused.status.unwrap().problems;
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains(&pool.name_any()) && p.message.contains("minio-")),
        "{problems:?}"
    );
    let after = resource_versions(&children(&client, &name).await?);
    assert_eq!(before, after, "nothing may change while addresses are in use");

    // Once the pods are gone (addresses released), the edit goes through.
    let release = json!({"status": {"allocatedIPs": null, "allocatedIPCount": 0}});
    pools
        .patch_status(&pool.name_any(), &PatchParams::default(), &Patch::Merge(&release))
        .await?;
    wait_reason(&client, &name, "Applied", READY_TIMEOUT).await?;
    let shrunk = pools.get(&pool.name_any()).await?;
    let size = spiderpool_operator::controller::network::plan::pool_usable(&shrunk.spec)
        .unwrap()
        .len();
    assert_eq!(size, 2);
    delete_network(&client, &name).await?;
    Ok(())
}
