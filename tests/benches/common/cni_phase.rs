//! The IPAM benchmarks' CNI phases: every pod's ADD (or DEL) through the real `spiderpool` plugin
//! binary, closed loop (a fixed number of calls in flight per node) or open loop (calls started at a
//! fixed rate, as pods arriving from the scheduler), each call timed from its own start.

#![allow(dead_code, reason = "each IPAM benchmark uses part of it")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use spiderpool_tests::daemon::Daemon;
use spiderpool_tests::ipam::{self, run_plugin};

pub struct Phase {
    pub total: Duration,
    pub latencies: Vec<Duration>,
    /// The slowest call of each tenth of the pods, in pod order (open loop: arrival order).
    pub slowest_by_tenth: Vec<Duration>,
    pub failures: Vec<String>,
    pub ips: Vec<String>,
}

/// One CNI call of the real plugin for pod `name` (container `c-<name>`, interface eth0).
fn call(
    plugin: &std::path::Path,
    command: &str,
    namespace: &str,
    name: &str,
    uid: &str,
    netconf: &serde_json::Value,
) -> Result<ipam::PluginRun> {
    run_plugin(
        plugin,
        command,
        &format!("c-{name}"),
        "eth0",
        (namespace, name, uid),
        netconf,
    )
}

/// Runs `command` for every pod, `parallel` at a time per node, each node's calls against its daemon.
pub fn run_phase(
    command: &'static str,
    plugin: &std::path::Path,
    pods: &[(String, String, usize)],
    namespace: &str,
    netconfs: &[serde_json::Value],
    nodes: usize,
    parallel: usize,
) -> Phase {
    let started = Instant::now();
    let mut workers = Vec::new();
    for (node, netconf) in netconfs.iter().enumerate().take(nodes) {
        let mine: Vec<(String, String, usize)> = pods.iter().filter(|p| p.2 == node).cloned().collect();
        let queue = Arc::new(std::sync::Mutex::new(mine));
        for _ in 0..parallel {
            let queue = queue.clone();
            let (plugin, namespace, netconf) = (plugin.to_path_buf(), namespace.to_owned(), netconf.clone());
            workers.push(std::thread::spawn(move || {
                let mut out = Vec::new();
                loop {
                    let next = queue.lock().unwrap().pop();
                    let Some((name, uid, _)) = next else { break };
                    let result = call(&plugin, command, &namespace, &name, &uid, &netconf);
                    out.push((name, result));
                }
                out
            }));
        }
    }
    collect(workers, started)
}

pub fn run_phase_open(
    command: &'static str,
    plugin: &std::path::Path,
    pods: &[(String, String, usize)],
    namespace: &str,
    netconfs: &[serde_json::Value],
    rate: f64,
) -> Phase {
    let started = Instant::now();
    let mut workers = Vec::new();
    for (i, (name, uid, node)) in pods.iter().cloned().enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (plugin, namespace, netconf) =
            (plugin.to_path_buf(), namespace.to_owned(), netconfs[node].clone());
        workers.push(std::thread::spawn(move || {
            let result = call(&plugin, command, &namespace, &name, &uid, &netconf);
            vec![(name, result)]
        }));
    }
    collect(workers, started)
}

/// One worker thread's runs: each pod's name with the plugin's outcome.
pub type Worker = std::thread::JoinHandle<Vec<(String, Result<ipam::PluginRun>)>>;

pub fn collect(workers: Vec<Worker>, started: Instant) -> Phase {
    let mut phase = Phase {
        total: Duration::ZERO,
        latencies: Vec::new(),
        slowest_by_tenth: Vec::new(),
        failures: Vec::new(),
        ips: Vec::new(),
    };
    let mut in_order: Vec<(usize, Duration)> = Vec::new();
    for worker in workers {
        for (name, result) in worker.join().unwrap() {
            match result {
                Ok(run) if run.success => {
                    phase.latencies.push(run.elapsed);
                    if let Some(index) = name.strip_prefix("pod-").and_then(|i| i.parse().ok()) {
                        in_order.push((index, run.elapsed));
                    }
                    if let Some(ip) = ipam::result_ip(&run.output) {
                        phase.ips.push(ip);
                    }
                }
                Ok(run) => phase.failures.push(format!("{name}: {}", run.output)),
                Err(e) => phase.failures.push(format!("{name}: {e:#}")),
            }
        }
    }
    phase.total = started.elapsed();
    phase.latencies.sort();
    in_order.sort();
    let tenth = in_order.len().div_ceil(10).max(1);
    phase.slowest_by_tenth = in_order
        .chunks(tenth)
        .map(|chunk| chunk.iter().map(|(_, d)| *d).max().unwrap_or_default())
        .collect();
    phase
}

/// What the agents have written so far, summed over them, from their metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentWrites {
    /// Pool status writes.
    pub pool: f64,
    /// SpiderEndpoint writes.
    pub endpoint: f64,
    /// Pool status writes that lost a conflict.
    pub conflicts: f64,
    /// Addresses handed out from node reservations.
    pub handouts: f64,
}

impl AgentWrites {
    /// Reads the counters of every one of `daemons`.
    pub fn read(daemons: &[Daemon]) -> Result<Self> {
        let mut writes = AgentWrites::default();
        for d in daemons {
            writes.pool += d.metric("spiderpool_ipam_api_writes_total{kind=\"ippool_status\"}")?;
            writes.endpoint += d.metric("spiderpool_ipam_api_writes_total{kind=\"endpoint\"}")?;
            writes.conflicts += d.metric("spiderpool_ipam_update_ippool_conflict_counts_total")?;
            writes.handouts += d.metric("spiderpool_ipam_reserved_handouts_total")?;
        }
        Ok(writes)
    }
}

impl std::ops::Sub for AgentWrites {
    type Output = AgentWrites;
    fn sub(self, before: AgentWrites) -> AgentWrites {
        AgentWrites {
            pool: self.pool - before.pool,
            endpoint: self.endpoint - before.endpoint,
            conflicts: self.conflicts - before.conflicts,
            handouts: self.handouts - before.handouts,
        }
    }
}
