//! A real StatefulSet (the controller-manager creates its pods, the scheduler binds them) whose
//! members' sandboxes the suite's kubelet sets up and tears down on the dual-stack pools, and the
//! fault that moves a member to another node (cordon its node, delete it, wait for the new
//! incarnation elsewhere, uncordon).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use nix::sys::signal::Signal;
use serde_json::json;

use super::ledger::PodRef;
use super::run::{Run, timed};

/// The StatefulSet's name (and its pods' `app` label).
pub const NAME: &str = "chaos-sts";

/// Creates the StatefulSet with `replicas` members (parallel pod management).
pub async fn create(run: &Run, replicas: i32) -> Result<()> {
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": NAME},
        "spec": {
            "replicas": replicas,
            "serviceName": NAME,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": NAME}},
            "template": {
                "metadata": {"labels": {"app": NAME}},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "nodeSelector": {"spiderpool.test/chaos": "true"},
                    "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
                },
            },
        },
    }))?;
    let api: Api<StatefulSet> = Api::namespaced(run.world.client.clone(), run.namespace());
    timed(api.create(&PostParams::default(), &sts)).await?;
    Ok(())
}

/// Deletes the StatefulSet (its pods follow through garbage collection).
pub async fn delete(run: &Run) -> Result<()> {
    let api: Api<StatefulSet> = Api::namespaced(run.world.client.clone(), run.namespace());
    timed(api.delete(NAME, &DeleteParams::background())).await?;
    Ok(())
}

/// A member's sandbox: live, or to be torn down (its ADD or DEL failed).
#[derive(Debug, Clone)]
struct MemberSandbox {
    container: String,
    pod: PodRef,
    node: usize,
    live: bool,
}

/// The kubelet of the members: every 300 ms, ADD for members bound to a node and without a
/// sandbox, DEL then removal for members being deleted, DEL for sandboxes whose pod is gone or whose
/// ADD failed. Runs until `run.stopping` is set and no member or sandbox is left.
pub async fn kubelet(run: &Run) {
    let mut sandboxes: BTreeMap<String, MemberSandbox> = BTreeMap::new();
    let mut counter = 0u64;
    let api = run.pods();
    let selector = ListParams::default().labels(&format!("app={NAME}"));
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pods = match timed(api.list(&selector)).await {
            Ok(list) => list.items,
            Err(_) => continue,
        };
        if run.stopping.load(Ordering::SeqCst) && pods.is_empty() && sandboxes.is_empty() {
            return;
        }
        run.busy.fetch_add(1, Ordering::SeqCst);
        let listed: Vec<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        for pod in &pods {
            member_step(run, pod, &mut sandboxes, &mut counter).await;
        }
        // Sandboxes to tear down, and those of members that are gone (deleted by someone else).
        let mut done = Vec::new();
        for (uid, sandbox) in sandboxes.iter_mut() {
            if !sandbox.live || !listed.contains(uid) {
                let ok = run
                    .del(
                        "sts",
                        "member DEL",
                        sandbox.node,
                        true,
                        &sandbox.container,
                        &sandbox.pod,
                    )
                    .await
                    .is_ok();
                sandbox.live = false;
                if ok {
                    done.push(uid.clone());
                }
            }
        }
        for uid in done {
            sandboxes.remove(&uid);
        }
        run.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn member_step(
    run: &Run,
    pod: &Pod,
    sandboxes: &mut BTreeMap<String, MemberSandbox>,
    counter: &mut u64,
) {
    let (Some(uid), Some(name)) = (pod.metadata.uid.clone(), pod.metadata.name.clone()) else {
        return;
    };
    let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return;
    };
    let Some(node) = run.world.nodes.iter().position(|n| n.name == node_name) else {
        return;
    };
    let terminating = pod.metadata.deletion_timestamp.is_some();
    match sandboxes.get_mut(&uid) {
        Some(sandbox) if terminating => {
            let ok = run
                .del("sts", "member DEL", node, true, &sandbox.container, &sandbox.pod)
                .await
                .is_ok();
            sandbox.live = false;
            if ok {
                sandboxes.remove(&uid);
                finalize(run, &name, &uid).await;
            }
        }
        None if terminating => finalize(run, &name, &uid).await,
        // Live, or torn down by the caller.
        Some(_) => {}
        None if run.paused.load(Ordering::SeqCst) || run.stopping.load(Ordering::SeqCst) => {}
        None => {
            *counter += 1;
            let container = format!("{name}-{counter}");
            let member = PodRef {
                namespace: run.namespace().to_owned(),
                name: name.clone(),
                uid: uid.clone(),
                node: node_name,
                member: true,
            };
            let live = run
                .add("sts", "member ADD", node, true, &container, &member)
                .await
                .is_ok();
            // A failed sandbox is torn down (by the caller's loop) before the next one is tried.
            sandboxes.insert(
                uid,
                MemberSandbox {
                    container,
                    pod: member,
                    node,
                    live,
                },
            );
        }
    }
}

async fn finalize(run: &Run, name: &str, uid: &str) {
    let ok = run.delete_pod(name, uid, 0).await.is_ok();
    run.count_op("member finalize", ok);
}

/// How long kube-controller-manager and the scheduler get to bring a deleted member back elsewhere
/// (again after the controller-manager was restarted).
const MOVE_DEADLINE: Duration = Duration::from_secs(60);

/// Moves member `ordinal` to another node: cordons its node, deletes it (graceful: the kubelet
/// DELs it), waits for the new incarnation to be bound elsewhere, uncordons. Returns the nodes.
pub async fn move_member(run: &Run, ordinal: usize) -> Result<(String, String)> {
    let name = format!("{NAME}-{ordinal}");
    let api = run.pods();
    let pod = timed(api.get(&name)).await?;
    let old_uid = pod.metadata.uid.clone().unwrap_or_default();
    let from = pod
        .spec
        .and_then(|s| s.node_name)
        .context("the member is not bound yet")?;
    cordon(run, &from, true).await?;
    let moved = async {
        run.delete_pod(&name, &old_uid, 30).await?;
        let mut deadline = Instant::now() + MOVE_DEADLINE;
        let mut restarted = false;
        loop {
            let found = timed(api.get_opt(&name)).await;
            if let Ok(Some(pod)) = &found
                && pod.metadata.uid.as_deref() != Some(old_uid.as_str())
                && let Some(to) = pod.spec.as_ref().and_then(|s| s.node_name.clone())
            {
                return Ok(to);
            }
            // (Not when the old incarnation is still there: the kubelet's part, not the
            // controller-manager's.)
            if Instant::now() >= deadline && !restarted && !matches!(found, Ok(Some(_))) {
                // kube-controller-manager recreates the member once its pod informer sees the
                // deletion; after an API server restart that informer relists with backoff, and runs
                // saw it blind for 84-150 s (its log: "Watch failed - backing off", then "Listing
                // and watching"). A new one lists at once: restart it, as the supervisor does when
                // it exits, and give it as long again.
                let restart = {
                    let mut cluster = run.world.cluster.lock().await;
                    tokio::task::block_in_place(|| cluster.restart("kube-controller-manager", Signal::SIGTERM))
                };
                run.note(
                    "sts",
                    &format!("{name} not recreated in {MOVE_DEADLINE:?}: kube-controller-manager restarted ({restart:?})"),
                );
                run.count_op("controller-manager restart (move)", restart.is_ok());
                restart?;
                restarted = true;
                deadline = Instant::now() + MOVE_DEADLINE;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name} was not recreated on another node within {MOVE_DEADLINE:?}{}: {}",
                    if restarted { " of kube-controller-manager's restart" } else { "" },
                    stuck_member(run, &name, &old_uid).await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    .await;
    let uncordoned = cordon(run, &from, false).await;
    let to = moved?;
    uncordoned?;
    Ok((from, to))
}

/// Where a move is stuck, for the failure message: the old incarnation (still there, terminating,
/// with its finalizers), the new one (its node, phase and why it is not scheduled) and the nodes
/// (schedulable, taints, ready), so a harness stall can be told from an IPAM one.
async fn stuck_member(run: &Run, name: &str, old_uid: &str) -> String {
    let pod = match timed(run.pods().get_opt(name)).await {
        Ok(Some(pod)) => pod,
        Ok(None) => return "no pod of that name (the StatefulSet controller did not recreate it)".to_owned(),
        Err(err) => return format!("reading the pod failed: {err:#}"),
    };
    let incarnation = if pod.metadata.uid.as_deref() == Some(old_uid) {
        "the old incarnation is still there"
    } else {
        "a new incarnation exists"
    };
    let status = pod.status.unwrap_or_default();
    let conditions: Vec<String> = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .map(|c| format!("{}={} {}", c.type_, c.status, c.message.unwrap_or_default()))
        .collect();
    let nodes: Api<Node> = Api::all(run.world.client.clone());
    let nodes = match timed(nodes.list(&ListParams::default())).await {
        Ok(list) => list
            .items
            .into_iter()
            .map(|n| {
                let spec = n.spec.unwrap_or_default();
                let ready = n
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "Ready")
                    .map(|c| c.status)
                    .unwrap_or_default();
                let taints: Vec<String> = spec
                    .taints
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| format!("{}:{}", t.key, t.effect))
                    .collect();
                format!(
                    "{} unschedulable={} ready={ready} taints={taints:?}",
                    n.metadata.name.unwrap_or_default(),
                    spec.unschedulable.unwrap_or(false)
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(err) => format!("listing nodes failed: {err:#}"),
    };
    format!(
        "{incarnation} (deletion {:?}, finalizers {:?}, node {:?}, phase {:?}, conditions {conditions:?}); nodes: {nodes}",
        pod.metadata.deletion_timestamp.map(|t| t.0.to_string()),
        pod.metadata.finalizers.unwrap_or_default(),
        pod.spec.and_then(|s| s.node_name),
        status.phase,
    )
}

async fn cordon(run: &Run, node: &str, unschedulable: bool) -> Result<()> {
    let nodes: Api<Node> = Api::all(run.world.client.clone());
    let patch = json!({"spec": {"unschedulable": unschedulable}});
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match timed(nodes.patch(node, &PatchParams::default(), &Patch::Merge(&patch))).await {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() >= deadline => return Err(err.context(format!("cordoning {node}"))),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
