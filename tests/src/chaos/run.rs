//! The state a chaos run shares between the workload, the fault injector and the checks: the world,
//! the ledger, counters, the journal of every operation, and the CNI and API helpers they all use.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use serde_json::{Value, json};
use spiderpool_schema::{SpiderEndpoint, SpiderIPPool};

use super::ledger::{EndpointClaim, Ledger, PodRef, PoolRecord, Snapshot};
use super::world::{DUAL_POOL_V4, DUAL_POOL_V6, TIGHT_POOL, World, lock};
use crate::ipam::{self, PluginRun};

/// How long one API call of the suite itself may take (etcd may be frozen).
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts of what happened, by name: operations (ok, failed) and faults.
#[derive(Debug, Default)]
pub struct Stats {
    pub ops: BTreeMap<String, (u64, u64)>,
    pub faults: BTreeMap<String, u64>,
}

impl Stats {
    /// Operations done.
    pub fn total_ops(&self) -> u64 {
        self.ops.values().map(|(ok, failed)| ok + failed).sum()
    }

    /// Faults injected.
    pub fn total_faults(&self) -> u64 {
        self.faults.values().sum()
    }
}

/// See the module docs.
pub struct Run {
    pub world: World,
    pub seed: u64,
    pub ledger: Mutex<Ledger>,
    pub stats: Mutex<Stats>,
    journal: Mutex<std::io::BufWriter<std::fs::File>>,
    started: Instant,
    /// The workload takes no new random step while set (checkpoints).
    pub paused: AtomicBool,
    /// The workload ends (its pods are torn down) once set.
    pub stopping: AtomicBool,
    /// Workers busy with an operation or with sandboxes still to DEL.
    pub busy: AtomicUsize,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl Run {
    /// A run over `world`, journaling to `<world.dir>/journal.log`.
    pub fn new(world: World, seed: u64) -> Result<Self> {
        let path = world.dir.join("journal.log");
        let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Run {
            world,
            seed,
            ledger: Mutex::new(Ledger::default()),
            stats: Mutex::new(Stats::default()),
            journal: Mutex::new(std::io::BufWriter::new(file)),
            started: Instant::now(),
            paused: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
        })
    }

    /// Seconds since the run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Appends a line to the journal.
    pub fn note(&self, who: &str, what: &str) {
        let mut journal = lock(&self.journal);
        let _ = writeln!(
            journal,
            "{:9.3} {who:<14} {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Flushes the journal.
    pub fn flush(&self) {
        let _ = lock(&self.journal).flush();
    }

    /// Counts one operation.
    pub fn count_op(&self, op: &str, ok: bool) {
        let mut stats = lock(&self.stats);
        let entry = stats.ops.entry(op.to_owned()).or_default();
        if ok {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }

    /// Counts one fault.
    pub fn count_fault(&self, fault: &str) {
        *lock(&self.stats).faults.entry(fault.to_owned()).or_default() += 1;
    }

    /// The namespace of the workload.
    pub fn namespace(&self) -> &str {
        self.world.namespace.name()
    }

    /// The pods API of the workload's namespace.
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.world.client.clone(), self.namespace())
    }

    /// Runs the real plugin for `command` on node `node` for `pod`'s sandbox `container` (eth0).
    pub async fn cni(
        &self,
        command: &'static str,
        node: usize,
        dual: bool,
        container: &str,
        pod: &PodRef,
    ) -> Result<PluginRun> {
        let netconf = self.world.netconf(node, dual);
        let plugin = self.world.plugin.clone();
        let (container, namespace, name, uid) = (
            container.to_owned(),
            pod.namespace.clone(),
            pod.name.clone(),
            pod.uid.clone(),
        );
        tokio::task::spawn_blocking(move || {
            ipam::run_plugin(
                &plugin,
                command,
                &container,
                "eth0",
                (&namespace, &name, &uid),
                &netconf,
            )
        })
        .await
        .context("the plugin thread panicked")?
    }

    /// ADD for a new or existing sandbox, fed into the ledger. Returns the addresses, or the
    /// plugin's error.
    pub async fn add(
        &self,
        who: &str,
        op: &str,
        node: usize,
        dual: bool,
        container: &str,
        pod: &PodRef,
    ) -> Result<Vec<IpAddr>, String> {
        let again = lock(&self.ledger).sandbox(container).is_some();
        if !again {
            lock(&self.ledger).add_started(container, pod.clone());
        }
        let outcome = match self.cni("ADD", node, dual, container, pod).await {
            Ok(run) if run.success => {
                result_addresses(&run.output).map_err(|e| format!("{e:#}: {}", run.output))
            }
            Ok(run) => Err(format!("{} {}", run.output, last_line(&run.stderr))),
            Err(err) => Err(format!("{err:#}")),
        };
        match &outcome {
            Ok(addresses) => lock(&self.ledger).add_succeeded(container, addresses.clone()),
            Err(_) if !again => lock(&self.ledger).add_failed(container),
            Err(_) => {}
        }
        self.count_op(op, outcome.is_ok());
        self.note(
            who,
            &match &outcome {
                Ok(addresses) => format!("{op} {container} {} ok {addresses:?}", pod_label(pod)),
                Err(err) => format!("{op} {container} {} FAILED {err}", pod_label(pod)),
            },
        );
        outcome
    }

    /// DEL of a sandbox, fed into the ledger.
    pub async fn del(
        &self,
        who: &str,
        op: &str,
        node: usize,
        dual: bool,
        container: &str,
        pod: &PodRef,
    ) -> Result<(), String> {
        lock(&self.ledger).del_started(container);
        let outcome = match self.cni("DEL", node, dual, container, pod).await {
            Ok(run) if run.success => Ok(()),
            Ok(run) => Err(format!("{} {}", run.output, last_line(&run.stderr))),
            Err(err) => Err(format!("{err:#}")),
        };
        if outcome.is_ok() {
            lock(&self.ledger).del_succeeded(container);
        }
        self.count_op(op, outcome.is_ok());
        self.note(
            who,
            &match &outcome {
                Ok(()) => format!("{op} {container} {} ok", pod_label(pod)),
                Err(err) => format!("{op} {container} {} FAILED {err}", pod_label(pod)),
            },
        );
        outcome
    }

    /// Creates a bare pod bound to `node` (no scheduler: the suite plays its kubelet). A create whose
    /// response was lost (409 afterwards) adopts the pod it made.
    pub async fn create_pod(&self, name: &str, node: &str, annotations: &Value) -> Result<String> {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations, "labels": {"spiderpool.test/chaos": "workload"}},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 30,
                     "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
        }))?;
        let api = self.pods();
        match timed(api.create(&PostParams::default(), &pod)).await {
            Ok(created) => created
                .metadata
                .uid
                .ok_or_else(|| anyhow!("pod {name} without UID")),
            Err(err) => {
                let existing = timed(api.get_opt(name)).await?;
                match existing {
                    Some(existing)
                        if existing.metadata.deletion_timestamp.is_none()
                            && existing.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node) =>
                    {
                        existing
                            .metadata
                            .uid
                            .ok_or_else(|| anyhow!("pod {name} without UID"))
                    }
                    _ => Err(err.context(format!("creating pod {name}"))),
                }
            }
        }
    }

    /// Deletes pod `name` of UID `uid` with `grace` seconds; `Ok` when it is deleted, terminating or
    /// already gone.
    pub async fn delete_pod(&self, name: &str, uid: &str, grace: u32) -> Result<()> {
        let params = DeleteParams {
            grace_period_seconds: Some(grace),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match timed(self.pods().delete(name, &params)).await {
            Ok(_) => Ok(()),
            Err(err) => match err.downcast_ref::<kube::Error>() {
                // Gone, or replaced by a pod of another UID: this one is gone either way.
                Some(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
                _ => Err(err),
            },
        }
    }

    /// Reads the pools and endpoints under test.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let pools: Api<SpiderIPPool> = Api::all(self.world.client.clone());
        let mut snapshot = Snapshot::default();
        for name in [TIGHT_POOL, DUAL_POOL_V4, DUAL_POOL_V6] {
            let pool = timed(pools.get(name)).await?;
            let records = pool.status.unwrap_or_default().allocations()?;
            for (ip, record) in records {
                let Ok(ip) = ip.parse::<IpAddr>() else {
                    continue;
                };
                snapshot.records.insert(
                    ip,
                    PoolRecord {
                        pool: name.to_owned(),
                        pod_uid: record.pod_uid.clone(),
                        reserved_for: record.reservation().map(str::to_owned),
                    },
                );
            }
        }
        let endpoints: Api<SpiderEndpoint> = Api::namespaced(self.world.client.clone(), self.namespace());
        for endpoint in timed(endpoints.list(&ListParams::default())).await? {
            let Some(status) = endpoint.status else { continue };
            let addresses = status
                .current
                .ips
                .iter()
                .flat_map(|d| [d.ipv4.as_deref(), d.ipv6.as_deref()])
                .flatten()
                .filter_map(|a| a.split('/').next()?.parse().ok())
                .collect();
            snapshot.endpoints.push(EndpointClaim {
                namespace: endpoint.metadata.namespace.unwrap_or_default(),
                name: endpoint.metadata.name.unwrap_or_default(),
                uid: status.current.uid,
                addresses,
            });
        }
        Ok(snapshot)
    }

    /// Reads a snapshot and checks it against the ledger (see [`Ledger::check_snapshot`]).
    pub async fn check(&self) -> Result<usize> {
        let from = lock(&self.ledger).now();
        let snapshot = self.snapshot().await?;
        let to = lock(&self.ledger).now();
        let found = lock(&self.ledger).check_snapshot(&snapshot, from, to);
        for violation in &found {
            self.note("check", &format!("VIOLATION {violation}"));
        }
        Ok(found.len())
    }
}

/// An API call with the suite's deadline.
pub async fn timed<T, E>(call: impl std::future::Future<Output = Result<T, E>>) -> Result<T>
where
    E: Into<anyhow::Error>,
{
    match tokio::time::timeout(API_TIMEOUT, call).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(anyhow!("no answer from the API server within {API_TIMEOUT:?}")),
    }
}

fn pod_label(pod: &PodRef) -> String {
    format!("{}@{} uid={}", pod.name, pod.node, pod.uid)
}

fn last_line(text: &str) -> &str {
    text.trim().lines().last().unwrap_or("")
}

/// The addresses (without prefix length) of an ADD result.
pub fn result_addresses(output: &Value) -> Result<Vec<IpAddr>> {
    output["ips"]
        .as_array()
        .context("no ips in the ADD result")?
        .iter()
        .map(|ip| {
            let text = ip["address"].as_str().context("an ips entry without address")?;
            text.split('/')
                .next()
                .unwrap_or(text)
                .parse::<IpAddr>()
                .with_context(|| format!("address {text}"))
        })
        .collect()
}
