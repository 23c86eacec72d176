//! Workloads on a real-node cluster: busybox pods, waiting for them, and what the runtime and kubelet
//! said when they did not come up.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use serde_json::{Value, json};

use crate::util;

/// Where a pod goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// `spec.nodeName` (no scheduler involved).
    Node(String),
    /// `spec.nodeSelector`.
    Selector(BTreeMap<String, String>),
}

/// A busybox pod running `command`, with `annotations`, never restarted, gone 1 s after a delete.
pub fn busybox_pod(
    image: &str,
    name: &str,
    placement: &Placement,
    command: &[&str],
    annotations: &BTreeMap<String, String>,
) -> Result<Pod> {
    let mut spec = json!({
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never", "command": command}],
    });
    match placement {
        Placement::Node(node) => spec["nodeName"] = json!(node),
        Placement::Selector(selector) => spec["nodeSelector"] = json!(selector),
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations, "labels": {"app": name}},
        "spec": spec,
    }))?)
}

/// The pod's `status.podIPs`, in order.
pub fn pod_ips(pod: &Pod) -> Vec<String> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().map(|ip| ip.ip.clone()).collect())
        .unwrap_or_default()
}

/// The node a pod runs on.
pub fn pod_node(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Whether the pod's `Ready` condition is True.
pub fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until exactly `count` pods match `selector` and all of them are Ready; returns them.
pub async fn wait_ready_pods(
    api: &Api<Pod>,
    selector: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Pod>> {
    crate::wait_for(&format!("{count} pods {selector} Ready"), timeout, || async {
        let list = api.list(&ListParams::default().labels(selector)).await?.items;
        let all_ready = list.len() == count && list.iter().all(ready);
        Ok(all_ready.then_some(list))
    })
    .await
}

/// Waits until the pod runs and is Ready. Fails at once if it ends, and on timeout with what
/// kubelet and the runtime reported (see [`describe`]).
pub async fn wait_running(api: &Api<Pod>, name: &str, timeout: Duration) -> Result<Pod> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(pod) = api.get_opt(name).await? {
            match phase(&pod) {
                "Running" if ready(&pod) => return Ok(pod),
                "Succeeded" | "Failed" => {
                    bail!(
                        "pod {name} ended instead of running:\n{}",
                        describe(api, name).await
                    )
                }
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "pod {name} not running and ready within {timeout:?}:\n{}",
                describe(api, name).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the pod ends; returns whether it succeeded, and its log.
pub async fn wait_finished(api: &Api<Pod>, name: &str, timeout: Duration) -> Result<(bool, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(pod) = api.get_opt(name).await? {
            let outcome = match phase(&pod) {
                "Succeeded" => Some(true),
                "Failed" => Some(false),
                _ => None,
            };
            if let Some(succeeded) = outcome {
                let log = api
                    .logs(name, &LogParams::default())
                    .await
                    .unwrap_or_else(|err| format!("<no log: {err}>"));
                return Ok((succeeded, log));
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "pod {name} did not finish within {timeout:?}:\n{}",
                describe(api, name).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pod's phase, conditions, container states and events: what `kubectl describe` would show of
/// a pod that does not come up (sandbox and CNI errors are in the events).
pub async fn describe(api: &Api<Pod>, name: &str) -> String {
    let mut out = String::new();
    match api.get_opt(name).await {
        Ok(Some(pod)) => {
            let status = pod.status.clone().unwrap_or_default();
            out.push_str(&format!(
                "phase {:?} on {:?}, podIPs {:?}\nconditions: {}\ncontainers: {}\n",
                status.phase,
                pod_node(&pod),
                pod_ips(&pod),
                serde_json::to_string(&status.conditions).unwrap_or_default(),
                serde_json::to_string(&status.container_statuses).unwrap_or_default(),
            ));
        }
        Ok(None) => out.push_str("the pod does not exist\n"),
        Err(err) => out.push_str(&format!("cannot read the pod: {err}\n")),
    }
    let namespace = api.namespace().unwrap_or("default").to_owned();
    let events: Api<Event> = Api::namespaced(api.clone().into_client(), &namespace);
    let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
    match events.list(&params).await {
        Ok(list) => {
            for event in list.items {
                out.push_str(&format!(
                    "event {} {}: {}\n",
                    event.type_.unwrap_or_default(),
                    event.reason.unwrap_or_default(),
                    event.message.unwrap_or_default()
                ));
            }
        }
        Err(err) => out.push_str(&format!("cannot list events: {err}\n")),
    }
    out
}

/// Runs `command` in a new busybox pod at `placement` until it ends; fails with the pod's log
/// unless it succeeded. The pod is deleted afterwards either way, and waited for (its sandbox torn
/// down, its addresses released).
pub async fn run_to_completion(
    api: &Api<Pod>,
    image: &str,
    placement: &Placement,
    command: &[&str],
    annotations: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<String> {
    let name = format!("run-{}", util::unique_hex(8));
    let pod = busybox_pod(image, &name, placement, command, annotations)?;
    run_pod_to_completion(api, pod, timeout).await
}

/// [`run_to_completion`] of a pod built by the caller (from [`busybox_pod`], say, with
/// `hostNetwork`).
pub async fn run_pod_to_completion(api: &Api<Pod>, pod: Pod, timeout: Duration) -> Result<String> {
    let name = pod.metadata.name.clone().context("the pod has no name")?;
    let command = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.command.clone())
        .unwrap_or_default()
        .join(" ");
    api.create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating pod {name}"))?;
    let outcome = wait_finished(api, &name, timeout).await;
    let deleted = delete_and_wait(api, &name, timeout).await;
    let (succeeded, log) = outcome?;
    deleted?;
    if succeeded {
        Ok(log)
    } else {
        Err(anyhow!("`{command}` failed in pod {name}:\n{log}"))
    }
}

/// Pings `target` (3 tries) from a new pod at `placement`.
pub async fn ping(
    api: &Api<Pod>,
    image: &str,
    placement: &Placement,
    annotations: &BTreeMap<String, String>,
    target: &str,
) -> Result<()> {
    run_to_completion(
        api,
        image,
        placement,
        &["ping", "-c", "3", "-W", "2", target],
        annotations,
        Duration::from_secs(60),
    )
    .await
    .with_context(|| format!("pinging {target} from {placement:?}"))?;
    Ok(())
}

/// Deletes the pod and waits until it is gone (kubelet has torn its sandbox down, CNI DEL included).
pub async fn delete_and_wait(api: &Api<Pod>, name: &str, timeout: Duration) -> Result<()> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(err) => return Err(err.into()),
    }
    let deadline = Instant::now() + timeout;
    while api.get_opt(name).await?.is_some() {
        if Instant::now() >= deadline {
            bail!(
                "pod {name} still exists {timeout:?} after its deletion:\n{}",
                describe(api, name).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// `{"ipam.spidernet.io/ippool": {"ipv4": [pool]}}`.
pub fn ippool_annotation(pool: &str) -> BTreeMap<String, String> {
    let value: Value = json!({"ipv4": [pool]});
    BTreeMap::from([("ipam.spidernet.io/ippool".to_owned(), value.to_string())])
}
