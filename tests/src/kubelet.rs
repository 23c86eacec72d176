//! An image kubelet: runs the hostNetwork pods that the control plane binds to a
//! [`crate::NodeSimulator`]'s nodes from the project's real container images, as a kubelet with
//! containerd would, far enough for the chart's components: the operator Deployment, the agent
//! DaemonSet (with its init container) and the spiderpool-init Job.
//!
//! For each such pod it:
//! - builds each container's root file system from the image's (unpacked OCI layers,
//!   [`crate::images::unpack`]), and runs the container's exact command, arguments and environment
//!   with `pod-sandbox` ([`crate`]'s binary): in the node's network namespace (each simulated node has
//!   its own, so two agents do not share ports), in a mount namespace of its own, chrooted;
//! - mounts its volumes at their mount paths: ConfigMaps and Secrets as files read from the API
//!   server, `hostPath` from a per-node directory ([`ImageKubelet::host_path`]), `emptyDir`, and the
//!   service account's token (TokenRequest, bound to the pod), `ca.crt` and `namespace` at
//!   `/var/run/secrets/kubernetes.io/serviceaccount`; `KUBERNETES_SERVICE_HOST/PORT` point at a
//!   relay to the API server on the node's loopback;
//! - resolves `fieldRef` environment (pod name, namespace, node name, pod and host IP);
//! - runs init containers to completion first, restarts exited containers by the pod's
//!   restartPolicy, probes `httpGet` startup and readiness probes in the node's namespace, and writes
//!   the pod status (phase, IPs, conditions, container states) as the kubelet does;
//! - on deletion, stops the containers (SIGTERM, then SIGKILL after the grace period, at most 10 s)
//!   and removes the pod object.
//!
//! Not done: exec and liveness probes, resource limits, security contexts (containers run as root
//! with every capability, which is what the chart asks for its privileged containers), images
//! other than the project's (such pods stay Waiting with `ErrImageNeverPull`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::cluster::TestCluster;
use crate::images::ImageRoot;
use crate::node_sim::SimNode;
use crate::watchdog::{self, Registration, Resource};
use crate::{netns, tools};

/// Where a service account's credentials are mounted.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Runs the hostNetwork pods of some nodes; see the module docs. Stops every container when dropped.
pub struct ImageKubelet {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct Inner {
    client: Client,
    cluster_ca: PathBuf,
    images: BTreeMap<String, ImageRoot>,
    dir: PathBuf,
    nodes: Vec<SimNode>,
    api_ports: HashMap<String, u16>,
    sandbox: PathBuf,
    failures: Mutex<Vec<String>>,
    pod_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// One started container's process; killed when dropped (the kubelet stopping, or a test ending).
struct Process {
    child: Child,
    _registration: Registration,
}

impl Drop for Process {
    fn drop(&mut self) {
        stop_process(&mut self.child, Duration::ZERO);
    }
}

/// SIGTERM, then SIGKILL after `grace`; reaps.
fn stop_process(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.wait();
}

impl ImageKubelet {
    /// Starts running the hostNetwork pods bound to `nodes` with `images` (reference -> unpacked
    /// root), keeping its files under `dir`.
    pub async fn start(
        cluster: &TestCluster,
        nodes: &[SimNode],
        images: BTreeMap<String, ImageRoot>,
        dir: &Path,
    ) -> Result<Self> {
        let sandbox = tools::workspace_binary("spiderpool-tests", "pod-sandbox", false)?;
        let api = cluster.apiserver_address()?;
        let mut tasks = Vec::new();
        let mut api_ports = HashMap::new();
        for node in nodes {
            // The API server for this node: a relay from the node's loopback to the host's.
            let listener = netns::listen(&node.netns, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
            api_ports.insert(node.name.clone(), listener.local_addr()?.port());
            tasks.push(netns::forward(listener, api)?);
            std::fs::create_dir_all(host_root(dir, &node.name))?;
        }
        let inner = Arc::new(Inner {
            client: cluster.client()?,
            cluster_ca: cluster.ca_cert_path().to_path_buf(),
            images,
            dir: dir.to_path_buf(),
            nodes: nodes.to_vec(),
            api_ports,
            sandbox,
            failures: Mutex::new(Vec::new()),
            pod_tasks: Mutex::new(Vec::new()),
        });
        tasks.push(tokio::spawn(watch_pods(inner.clone())));
        Ok(ImageKubelet { inner, tasks })
    }

    /// The directory standing for `path` on `node`'s file system (its `hostPath` volumes).
    pub fn host_path(&self, node: &str, path: &str) -> PathBuf {
        host_root(&self.inner.dir, node).join(path.trim_start_matches('/'))
    }

    /// The log (stdout and stderr) of a pod's container, across its restarts.
    pub fn log(&self, namespace: &str, pod: &str, container: &str) -> String {
        std::fs::read_to_string(log_path(&self.inner.dir, namespace, pod, container)).unwrap_or_default()
    }

    /// Every container log written so far: (`namespace/pod/container`, text).
    pub fn logs(&self) -> Vec<(String, String)> {
        let mut logs = Vec::new();
        let root = self.inner.dir.join("logs");
        let Ok(entries) = std::fs::read_dir(&root) else {
            return logs;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().replace("__", "/");
            logs.push((
                name.trim_end_matches(".log").to_string(),
                std::fs::read_to_string(entry.path()).unwrap_or_default(),
            ));
        }
        logs.sort();
        logs
    }

    /// What went wrong running pods (missing images, volumes that could not be made, ...).
    pub fn failures(&self) -> Vec<String> {
        lock(&self.inner.failures).clone()
    }

    /// An HTTP GET to `port` on the loopback of `node`, from inside its network namespace.
    pub fn http_get(&self, node: &str, port: u16, path: &str) -> Result<(u16, String)> {
        let node = self.inner.node(node)?;
        netns::http_get(
            &node.netns,
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            path,
            Duration::from_secs(5),
        )
    }
}

impl Drop for ImageKubelet {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // Dropping a pod's task drops its processes, which stops them.
        for task in lock(&self.inner.pod_tasks).drain(..) {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn host_root(dir: &Path, node: &str) -> PathBuf {
    dir.join("nodes").join(node)
}

fn log_path(dir: &Path, namespace: &str, pod: &str, container: &str) -> PathBuf {
    dir.join("logs")
        .join(format!("{namespace}__{pod}__{container}.log"))
}

impl Inner {
    fn node(&self, name: &str) -> Result<&SimNode> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("{name} is not a node of this kubelet"))
    }

    fn fail(&self, message: String) {
        tracing::warn!("image kubelet: {message}");
        lock(&self.failures).push(message);
    }
}

async fn watch_pods(inner: Arc<Inner>) {
    let api: Api<Pod> = Api::all(inner.client.clone());
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let (pod, gone) = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => (pod, false),
            Ok(watcher::Event::Delete(pod)) => (pod, true),
            Ok(_) => continue,
            Err(err) => {
                tracing::debug!(%err, "image kubelet: pod watch error (retrying)");
                continue;
            }
        };
        let spec = pod.spec.clone().unwrap_or_default();
        let ours = spec.host_network == Some(true)
            && spec
                .node_name
                .as_ref()
                .is_some_and(|n| inner.nodes.iter().any(|node| &node.name == n));
        let Some(uid) = pod.metadata.uid.clone() else {
            continue;
        };
        if !ours {
            continue;
        }
        if gone {
            if let Some(tx) = workers.remove(&uid) {
                tx.send_replace(None);
            }
            continue;
        }
        match workers.get(&uid) {
            Some(tx) => {
                tx.send_replace(Some(pod));
            }
            None => {
                let (tx, rx) = watch::channel(Some(pod));
                let task = tokio::spawn(run_pod(inner.clone(), uid.clone(), rx));
                let mut tasks = lock(&inner.pod_tasks);
                tasks.retain(|t| !t.is_finished());
                tasks.push(task);
                workers.insert(uid, tx);
            }
        }
    }
}

/// A container's state, as the pod status reports it.
#[derive(Debug, Clone)]
enum State {
    Waiting(String),
    Running { since: Time, started: bool, ready: bool },
    Terminated { code: i32, since: Time, until: Time },
}

#[derive(Debug, Clone)]
struct Tracked {
    container: Container,
    state: State,
    restarts: u32,
    next_start: Instant,
}

fn now() -> Time {
    Time(Timestamp::now())
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Runs one pod until it is deleted (or, for restartPolicy Never/OnFailure, until it is done).
async fn run_pod(inner: Arc<Inner>, uid: String, mut rx: watch::Receiver<Option<Pod>>) {
    let Some(pod) = rx.borrow().clone() else { return };
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    if let Err(err) = pod_lifecycle(&inner, &pod, &mut rx).await {
        inner.fail(format!("pod {namespace}/{name}: {err:#}"));
    }
    // Deleted while (or after) running: the kubelet confirms the deletion once the containers are gone.
    let deleting = rx
        .borrow()
        .as_ref()
        .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
    if deleting {
        let pods: Api<Pod> = Api::namespaced(inner.client.clone(), &namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(err) => inner.fail(format!("deleting pod {namespace}/{name}: {err}")),
        }
    }
}

async fn pod_lifecycle(inner: &Arc<Inner>, pod: &Pod, rx: &mut watch::Receiver<Option<Pod>>) -> Result<()> {
    let spec = pod.spec.clone().unwrap_or_default();
    let node = inner.node(spec.node_name.as_deref().unwrap_or_default())?.clone();
    let restart_policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".to_string());
    let grace = Duration::from_secs(
        u64::try_from(spec.termination_grace_period_seconds.unwrap_or(30).clamp(0, 10)).unwrap_or(10),
    );
    let volumes = prepare_volumes(inner, pod, &spec).await?;
    let started_at = now();
    let deleted = |rx: &watch::Receiver<Option<Pod>>| {
        rx.borrow()
            .as_ref()
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
    };

    let mut init: Vec<Tracked> = spec
        .init_containers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|container| Tracked {
            container,
            state: State::Waiting("PodInitializing".into()),
            restarts: 0,
            next_start: Instant::now(),
        })
        .collect();
    let mut main: Vec<Tracked> = spec
        .containers
        .iter()
        .cloned()
        .map(|container| Tracked {
            container,
            state: State::Waiting("PodInitializing".into()),
            restarts: 0,
            next_start: Instant::now(),
        })
        .collect();
    let mut last_status = Value::Null;

    // Init containers, one after the other, each to a successful exit.
    for index in 0..init.len() {
        loop {
            if deleted(rx) {
                return Ok(());
            }
            let container = init[index].container.clone();
            let mut process = match start_container(inner, pod, &node, &container, &volumes).await {
                Ok(child) => child,
                Err(err) => {
                    init[index].state = State::Waiting(waiting_reason(&err));
                    write_status(
                        inner,
                        pod,
                        &node,
                        &started_at,
                        &init,
                        &main,
                        &mut last_status,
                        "Pending",
                    )
                    .await;
                    return Err(err.context(format!("starting init container {}", container.name)));
                }
            };
            init[index].state = State::Running {
                since: now(),
                started: true,
                ready: false,
            };
            write_status(
                inner,
                pod,
                &node,
                &started_at,
                &init,
                &main,
                &mut last_status,
                "Pending",
            )
            .await;
            let status = loop {
                if let Some(status) = process.child.try_wait()? {
                    break Some(status);
                }
                if deleted(rx) {
                    stop_process(&mut process.child, grace);
                    break None;
                }
                tokio::select! {
                    _ = rx.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            };
            let Some(status) = status else { return Ok(()) };
            let since = match &init[index].state {
                State::Running { since, .. } => since.clone(),
                _ => now(),
            };
            let code = exit_code(status);
            init[index].state = State::Terminated {
                code,
                since,
                until: now(),
            };
            if code == 0 {
                break;
            }
            init[index].restarts += 1;
            if restart_policy == "Never" {
                write_status(
                    inner,
                    pod,
                    &node,
                    &started_at,
                    &init,
                    &main,
                    &mut last_status,
                    "Failed",
                )
                .await;
                return Ok(());
            }
            write_status(
                inner,
                pod,
                &node,
                &started_at,
                &init,
                &main,
                &mut last_status,
                "Pending",
            )
            .await;
            tokio::time::sleep(backoff(init[index].restarts)).await;
        }
    }

    // The containers, restarted as the pod's restartPolicy says, probed, until deletion.
    let mut children: Vec<Option<Process>> = main.iter().map(|_| None).collect();
    loop {
        if deleted(rx) {
            for process in children.iter_mut().flatten() {
                stop_process(&mut process.child, grace);
            }
            return Ok(());
        }
        for (index, tracked) in main.iter_mut().enumerate() {
            if let Some(process) = &mut children[index]
                && let Some(status) = process.child.try_wait()?
            {
                let since = match &tracked.state {
                    State::Running { since, .. } => since.clone(),
                    _ => now(),
                };
                let code = exit_code(status);
                tracked.state = State::Terminated {
                    code,
                    since,
                    until: now(),
                };
                children[index] = None;
                let restart = restart_policy == "Always" || (restart_policy == "OnFailure" && code != 0);
                if restart {
                    tracked.restarts += 1;
                    tracked.next_start = Instant::now() + backoff(tracked.restarts);
                } else {
                    tracked.next_start = Instant::now() + Duration::from_secs(u64::MAX / 4);
                }
            }
            let never_started = matches!(tracked.state, State::Waiting(_));
            let may_restart =
                matches!(tracked.state, State::Terminated { .. }) && Instant::now() >= tracked.next_start;
            if children[index].is_none() && (never_started || may_restart) {
                match start_container(inner, pod, &node, &tracked.container, &volumes).await {
                    Ok(process) => {
                        children[index] = Some(process);
                        tracked.state = State::Running {
                            since: now(),
                            started: false,
                            ready: false,
                        };
                    }
                    Err(err) => {
                        let reason = waiting_reason(&err);
                        if !matches!(&tracked.state, State::Waiting(r) if *r == reason) {
                            inner.fail(format!(
                                "{}/{} container {}: {err:#}",
                                pod.metadata.namespace.as_deref().unwrap_or_default(),
                                pod.metadata.name.as_deref().unwrap_or_default(),
                                tracked.container.name
                            ));
                        }
                        tracked.state = State::Waiting(reason);
                        tracked.next_start = Instant::now() + Duration::from_secs(3600);
                    }
                }
            }
        }
        for tracked in main.iter_mut() {
            if let State::Running { started, ready, .. } = &mut tracked.state {
                let probes = probe_results(&node, &tracked.container).await;
                *started = probes.0;
                *ready = probes.0 && probes.1;
            }
        }
        let all_done = main.iter().all(|t| matches!(t.state, State::Terminated { .. }))
            && children.iter().all(Option::is_none);
        let phase = if all_done && restart_policy != "Always" {
            if main
                .iter()
                .all(|t| matches!(t.state, State::Terminated { code: 0, .. }))
            {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if main.iter().any(|t| matches!(t.state, State::Running { .. })) {
            "Running"
        } else {
            "Pending"
        };
        write_status(
            inner,
            pod,
            &node,
            &started_at,
            &init,
            &main,
            &mut last_status,
            phase,
        )
        .await;
        if matches!(phase, "Succeeded" | "Failed") {
            // Nothing runs any more; wait for the deletion to confirm it.
            while !deleted(rx) {
                if rx.changed().await.is_err() {
                    return Ok(());
                }
            }
            return Ok(());
        }
        tokio::select! {
            _ = rx.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

fn backoff(restarts: u32) -> Duration {
    Duration::from_millis(500 * 2u64.saturating_pow(restarts.min(5)))
}

/// A `waiting` reason for a container that could not start.
fn waiting_reason(err: &anyhow::Error) -> String {
    if format!("{err:#}").contains("not one of this project's images") {
        "ErrImageNeverPull".to_string()
    } else {
        "CreateContainerError".to_string()
    }
}

/// (started, ready) from the container's startup and readiness probes (`httpGet` only; a container
/// without a probe counts as passing it).
async fn probe_results(node: &SimNode, container: &Container) -> (bool, bool) {
    let probe = |probe: Option<&k8s_openapi::api::core::v1::Probe>| {
        let http = probe.and_then(|p| p.http_get.clone())?;
        let host: IpAddr = http
            .host
            .as_deref()
            .and_then(|h| h.parse().ok())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let port = match &http.port {
            IntOrString::Int(port) => u16::try_from(*port).ok(),
            IntOrString::String(name) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok()),
        }?;
        Some((
            SocketAddr::new(host, port),
            http.path.unwrap_or_else(|| "/".to_string()),
        ))
    };
    let check = |target: Option<(SocketAddr, String)>, netns: String| async move {
        let Some((address, path)) = target else {
            return true;
        };
        tokio::task::spawn_blocking(move || {
            netns::http_get(&netns, address, &path, Duration::from_secs(1))
                .is_ok_and(|(code, _)| (200..400).contains(&code))
        })
        .await
        .unwrap_or(false)
    };
    let started = check(probe(container.startup_probe.as_ref()), node.netns.clone()).await;
    let ready = started && check(probe(container.readiness_probe.as_ref()), node.netns.clone()).await;
    (started, ready)
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site per pod phase; a struct would only rename them"
)]
async fn write_status(
    inner: &Inner,
    pod: &Pod,
    node: &SimNode,
    started_at: &Time,
    init: &[Tracked],
    main: &[Tracked],
    last: &mut Value,
    phase: &str,
) {
    let statuses = |list: &[Tracked], is_init: bool| -> Vec<Value> {
        list.iter()
            .map(|t| {
                let (state, ready, started) = match &t.state {
                    State::Waiting(reason) => (json!({"waiting": {"reason": reason}}), false, false),
                    State::Running { since, started, ready } => (json!({"running": {"startedAt": since}}), *ready, *started),
                    State::Terminated { code, since, until } => (
                        json!({"terminated": {"exitCode": code, "reason": if *code == 0 { "Completed" } else { "Error" },
                                              "startedAt": since, "finishedAt": until}}),
                        is_init && *code == 0,
                        false,
                    ),
                };
                json!({"name": t.container.name, "image": t.container.image, "imageID": "", "ready": ready,
                       "started": started, "restartCount": t.restarts, "state": state})
            })
            .collect()
    };
    let initialized = init
        .iter()
        .all(|t| matches!(t.state, State::Terminated { code: 0, .. }));
    let ready = phase == "Running"
        && main
            .iter()
            .all(|t| matches!(t.state, State::Running { ready: true, .. }));
    let condition = |kind: &str, on: bool| json!({"type": kind, "status": if on { "True" } else { "False" }});
    let ip = node.ip.to_string();
    let status = json!({
        "phase": phase,
        "hostIP": ip, "hostIPs": [{"ip": ip}], "podIP": ip, "podIPs": [{"ip": ip}],
        "startTime": started_at,
        "conditions": [condition("PodScheduled", true), condition("Initialized", initialized),
                       condition("ContainersReady", ready), condition("Ready", ready)],
        "initContainerStatuses": statuses(init, true),
        "containerStatuses": statuses(main, false),
    });
    if *last == status {
        return;
    }
    let pods: Api<Pod> = Api::namespaced(
        inner.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
    );
    let body = json!({"metadata": {"uid": pod.metadata.uid}, "status": status});
    match pods
        .patch_status(
            pod.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(&body),
        )
        .await
    {
        Ok(_) => *last = status,
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 || s.code == 422 => {}
        Err(err) => tracing::debug!(%err, "image kubelet: writing a pod status"),
    }
}

/// A volume, made on the host: its directory (or file) and whether mounts of it are read-only.
#[derive(Debug, Clone)]
struct HostVolume {
    source: PathBuf,
    read_only: bool,
}

/// Makes every volume of the pod (and the service account's) on the host.
async fn prepare_volumes(inner: &Inner, pod: &Pod, spec: &PodSpec) -> Result<BTreeMap<String, HostVolume>> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let node = spec.node_name.clone().unwrap_or_default();
    let pod_dir = inner.dir.join("pods").join(&uid);
    let mut volumes = BTreeMap::new();
    // The API server's ServiceAccount admission adds a projected `kube-api-access-<random>` volume
    // (token, CA, namespace) and its mounts to every pod that automounts a token; this kubelet makes
    // that token itself below, and these names stand for it.
    let mut token_volumes = Vec::new();
    for volume in spec.volumes.iter().flatten() {
        if volume.projected.is_some() && volume.name.starts_with("kube-api-access-") {
            token_volumes.push(volume.name.clone());
            continue;
        }
        let dir = pod_dir.join("volumes").join(&volume.name);
        let made = if let Some(config_map) = &volume.config_map {
            let api: Api<ConfigMap> = Api::namespaced(inner.client.clone(), &namespace);
            let object = api
                .get(&config_map.name)
                .await
                .with_context(|| format!("reading ConfigMap {}", config_map.name))?;
            let data = object
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            write_files(&dir, data, config_map.items.as_deref(), config_map.default_mode)?;
            HostVolume {
                source: dir,
                read_only: true,
            }
        } else if let Some(secret) = &volume.secret {
            let name = secret.secret_name.clone().unwrap_or_default();
            let api: Api<Secret> = Api::namespaced(inner.client.clone(), &namespace);
            let object = api
                .get(&name)
                .await
                .with_context(|| format!("reading Secret {name}"))?;
            let data = object
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            write_files(&dir, data, secret.items.as_deref(), secret.default_mode)?;
            HostVolume {
                source: dir,
                read_only: true,
            }
        } else if let Some(host_path) = &volume.host_path {
            let path = host_root(&inner.dir, &node).join(host_path.path.trim_start_matches('/'));
            match host_path.type_.as_deref() {
                Some("DirectoryOrCreate") | None | Some("") => std::fs::create_dir_all(&path)?,
                Some("Directory") if !path.is_dir() => {
                    bail!("hostPath {} does not exist on {node}", host_path.path)
                }
                _ => {}
            }
            HostVolume {
                source: path,
                read_only: false,
            }
        } else if volume.empty_dir.is_some() {
            std::fs::create_dir_all(&dir)?;
            HostVolume {
                source: dir,
                read_only: false,
            }
        } else {
            bail!("volume {} is of a kind this kubelet does not make", volume.name);
        };
        volumes.insert(volume.name.clone(), made);
    }
    if spec.automount_service_account_token != Some(false) {
        let account = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let dir = pod_dir.join("serviceaccount");
        std::fs::create_dir_all(&dir)?;
        let token =
            crate::cluster::request_token(&inner.client, &namespace, &account, Some((&pod_name, &uid)))
                .await?;
        std::fs::write(dir.join("token"), token)?;
        std::fs::copy(&inner.cluster_ca, dir.join("ca.crt"))?;
        std::fs::write(dir.join("namespace"), &namespace)?;
        let made = HostVolume {
            source: dir,
            read_only: true,
        };
        for name in token_volumes {
            volumes.insert(name, made.clone());
        }
        volumes.insert("kube-api-access".to_string(), made);
    } else if let Some(name) = token_volumes.first() {
        bail!("volume {name} is a service account token, but the pod does not automount one");
    }
    Ok(volumes)
}

fn write_files(
    dir: &Path,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
    default_mode: Option<i32>,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    let files: Vec<(String, Vec<u8>, Option<i32>)> = match items {
        Some(items) => items
            .iter()
            .map(|item| {
                let bytes = data
                    .get(&item.key)
                    .cloned()
                    .ok_or_else(|| anyhow!("no key {} to mount", item.key))?;
                Ok((item.path.clone(), bytes, item.mode))
            })
            .collect::<Result<_>>()?,
        None => data.into_iter().map(|(k, v)| (k, v, None)).collect(),
    };
    for (path, bytes, mode) in files {
        let target = dir.join(&path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, bytes)?;
        let mode = u32::try_from(mode.or(default_mode).unwrap_or(0o644)).unwrap_or(0o644);
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// The container's environment: the image's, the container's (with `fieldRef`, ConfigMap and Secret
/// keys resolved), and the service's.
async fn environment(
    inner: &Inner,
    pod: &Pod,
    node: &SimNode,
    container: &Container,
    image: &ImageRoot,
) -> Result<Vec<(String, String)>> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = image
        .env
        .iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    env.push(("HOSTNAME".into(), node.name.clone()));
    env.push(("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()));
    let port = inner.api_ports.get(&node.name).copied().unwrap_or_default();
    env.push(("KUBERNETES_SERVICE_PORT".into(), port.to_string()));
    for EnvVar {
        name,
        value,
        value_from,
    } in container.env.iter().flatten()
    {
        let resolved = match (value, value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    match field.field_path.as_str() {
                        "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
                        "metadata.namespace" => namespace.clone(),
                        "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
                        "spec.nodeName" => node.name.clone(),
                        "spec.serviceAccountName" => pod
                            .spec
                            .as_ref()
                            .and_then(|s| s.service_account_name.clone())
                            .unwrap_or_default(),
                        "status.podIP" | "status.hostIP" => node.ip.to_string(),
                        other => bail!("env {name}: fieldRef {other} is not supported by this kubelet"),
                    }
                } else if let Some(key) = &from.config_map_key_ref {
                    let api: Api<ConfigMap> = Api::namespaced(inner.client.clone(), &namespace);
                    let object = api.get(&key.name).await?;
                    object
                        .data
                        .unwrap_or_default()
                        .get(&key.key)
                        .cloned()
                        .unwrap_or_default()
                } else if let Some(key) = &from.secret_key_ref {
                    let api: Api<Secret> = Api::namespaced(inner.client.clone(), &namespace);
                    let object = api.get(&key.name).await?;
                    object
                        .data
                        .unwrap_or_default()
                        .get(&key.key)
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                        .unwrap_or_default()
                } else {
                    bail!("env {name}: this kind of valueFrom is not supported by this kubelet");
                }
            }
            (None, None) => String::new(),
        };
        env.retain(|(k, _)| k != name);
        env.push((name.clone(), resolved));
    }
    Ok(env)
}

/// Starts one container; returns its `pod-sandbox` process (which becomes the container's process).
async fn start_container(
    inner: &Inner,
    pod: &Pod,
    node: &SimNode,
    container: &Container,
    volumes: &BTreeMap<String, HostVolume>,
) -> Result<Process> {
    let reference = container.image.clone().unwrap_or_default();
    let image = inner.images.get(&reference).ok_or_else(|| {
        anyhow!("image {reference} is not one of this project's images (only those can run here)")
    })?;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let root = inner
        .dir
        .join("pods")
        .join(&uid)
        .join("roots")
        .join(&container.name);
    if root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("clearing {}", root.display()))?;
    }
    link_tree(&image.rootfs, &root)?;
    for dir in ["proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    let mut command_line: Vec<String> = container
        .command
        .clone()
        .unwrap_or_else(|| image.entrypoint.clone());
    command_line.extend(container.args.clone().unwrap_or_default());
    if command_line.is_empty() {
        bail!(
            "container {} has no command and its image no entrypoint",
            container.name
        );
    }
    let env = environment(inner, pod, node, container, image).await?;
    let log = log_path(&inner.dir, &namespace, &pod_name, &container.name);
    std::fs::create_dir_all(log.parent().unwrap_or(&inner.dir))?;
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;

    let mut command = Command::new(&inner.sandbox);
    command.args(["--netns", &node.netns, "--root"]).arg(&root);
    for (source, target) in [("/proc", "/proc"), ("/dev", "/dev"), ("/sys", "/sys")] {
        command.arg("--bind").arg(format!("{source}:{target}"));
    }
    if let Some(account) = volumes.get("kube-api-access") {
        command
            .arg("--ro-bind")
            .arg(format!("{}:{SERVICE_ACCOUNT_DIR}", account.source.display()));
    }
    for mount in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .get(&mount.name)
            .ok_or_else(|| anyhow!("volume mount {} names no volume", mount.name))?;
        let source = match &mount.sub_path {
            Some(sub) if !sub.is_empty() => volume.source.join(sub),
            _ => volume.source.clone(),
        };
        let flag = if volume.read_only || mount.read_only == Some(true) {
            "--ro-bind"
        } else {
            "--bind"
        };
        command
            .arg(flag)
            .arg(format!("{}:{}", source.display(), mount.mount_path));
    }
    command
        .arg("--")
        .args(&command_line)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0);
    let child = command
        .spawn()
        .with_context(|| format!("starting container {}", container.name))?;
    let registration = watchdog::register(Resource::ProcessGroup(child.id()));
    Ok(Process {
        child,
        _registration: registration,
    })
}

/// Recreates the directory tree of `from` at `to` with hard links to its files (the image's files are
/// shared by every container of the image, never written).
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            link_tree(&entry.path(), &target)?;
        } else {
            std::fs::hard_link(entry.path(), &target)
                .or_else(|_| std::fs::copy(entry.path(), &target).map(|_| ()))
                .with_context(|| format!("linking {}", target.display()))?;
        }
    }
    Ok(())
}
