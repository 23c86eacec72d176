//! The fault injector: one fault at a time, each healed before the next, chosen by the run's seed.
//!
//! Faults: crash (SIGKILL and start again), freeze (SIGSTOP, then SIGCONT) and graceful restart of
//! etcd, the API server and an agent; crash and freeze of the operator leader; a proxy in front of
//! an agent or the operators that delays, resets, partitions or drops responses after the request was
//! applied; etcd compaction followed by an API server restart, so that watches resuming from an old
//! resourceVersion get 410 Gone; a Node deleted while its agent runs (registered again later); a
//! StatefulSet member moved to another node.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::operator;
use super::proxy::ProxyMode;
use super::rng::Rng;
use super::run::{Run, timed};
use super::statefulset;
use super::world::lock;
use crate::node_object;

/// Every fault class.
const FAULTS: &[&str] = &[
    "etcd crash",
    "etcd freeze",
    "etcd restart",
    "apiserver crash",
    "apiserver freeze",
    "apiserver restart",
    "agent crash",
    "agent freeze",
    "agent restart",
    "operator leader crash",
    "operator leader freeze",
    "proxy delay",
    "proxy reset",
    "proxy partition",
    "proxy drops responses",
    "etcd compaction",
    "node deleted",
    "statefulset member moved",
];

/// The order faults come in: every class once, in a seeded order, then again in another, so that a
/// short run still sees each class.
#[derive(Debug, Default)]
pub struct Deck {
    order: Vec<&'static str>,
}

impl Deck {
    fn deal(&mut self, rng: &mut Rng, members: usize) -> &'static str {
        if self.order.is_empty() {
            let mut order: Vec<&'static str> = FAULTS
                .iter()
                .copied()
                .filter(|f| *f != "statefulset member moved" || members > 0)
                .collect();
            // Fisher-Yates, drawn from the run's seed.
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            order.reverse();
            self.order = order;
        }
        self.order.pop().unwrap_or("proxy delay")
    }
}

/// Injects faults until `until`, pausing 1-4 s between them.
pub async fn injector(run: &Run, rng: &mut Rng, deck: &mut Deck, until: Instant, members: usize) {
    while Instant::now() < until {
        let name = deck.deal(rng, members);
        run.count_fault(name);
        let started = Instant::now();
        match inject(run, rng, name, members).await {
            Ok(detail) => run.note(
                "fault",
                &format!("{name}: {detail} ({:.1} s)", started.elapsed().as_secs_f64()),
            ),
            Err(err) => {
                run.note("fault", &format!("{name}: FAILED {err:#}"));
                lock(&run.ledger).report("faults heal", format!("{name}: {err:#}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.between(1000, 4000))).await;
    }
}

async fn inject(run: &Run, rng: &mut Rng, name: &str, members: usize) -> Result<String> {
    let nodes = run.world.nodes.len();
    match name {
        "etcd crash" | "apiserver crash" => {
            let component = component(name);
            restart_component(run, component, Signal::SIGKILL, rng.between(500, 4000)).await?;
            Ok(format!("{component} killed and started again"))
        }
        "etcd restart" | "apiserver restart" => {
            let component = component(name);
            restart_component(run, component, Signal::SIGTERM, 0).await?;
            Ok(format!("{component} stopped and started again"))
        }
        "etcd freeze" | "apiserver freeze" => {
            let component = component(name);
            let pause = rng.between(1000, 6000);
            run.world
                .cluster
                .lock()
                .await
                .signal(component, Signal::SIGSTOP)?;
            tokio::time::sleep(Duration::from_millis(pause)).await;
            run.world
                .cluster
                .lock()
                .await
                .signal(component, Signal::SIGCONT)?;
            wait_api_ready(run).await?;
            Ok(format!("{component} frozen {pause} ms"))
        }
        "agent crash" | "agent restart" => {
            let i = rng.below(nodes);
            let daemon = lock(&run.world.nodes[i].agent).take();
            if let Some(daemon) = daemon {
                let graceful = name == "agent restart";
                tokio::task::spawn_blocking(move || if graceful { daemon.stop() } else { daemon.kill() })
                    .await??;
            }
            let down = if name == "agent crash" {
                rng.between(200, 4000)
            } else {
                0
            };
            tokio::time::sleep(Duration::from_millis(down)).await;
            run.world
                .start_agent(i)
                .await
                .with_context(|| format!("starting the agent of {} again", run.world.nodes[i].name))?;
            Ok(format!("{} down {down} ms", run.world.nodes[i].name))
        }
        "agent freeze" => {
            let i = rng.below(nodes);
            let node = &run.world.nodes[i];
            let pid = lock(&node.agent).as_ref().map(|d| d.pid());
            let Some(pid) = pid else {
                bail!("the agent of {} is not running", node.name)
            };
            let pause = rng.between(1000, 6000);
            signal_group(pid, Signal::SIGSTOP)?;
            node.frozen.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            signal_group(pid, Signal::SIGCONT)?;
            node.frozen.store(false, Ordering::SeqCst);
            Ok(format!("{} frozen {pause} ms", node.name))
        }
        "operator leader crash" | "operator leader freeze" => {
            let leader = timed(operator::leader(&run.world.client)).await.ok().flatten();
            let replica = run
                .world
                .operators
                .iter()
                .find(|r| Some(lock(r).identity().to_owned()) == leader)
                .or_else(|| run.world.operators.first())
                .ok_or_else(|| anyhow!("no operator replica"))?;
            let pause = rng.between(1000, 6000);
            if name == "operator leader crash" {
                lock(replica).kill();
                tokio::time::sleep(Duration::from_millis(pause)).await;
                lock(replica).restart()?;
            } else {
                lock(replica).signal(Signal::SIGSTOP)?;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                lock(replica).signal(Signal::SIGCONT)?;
            }
            Ok(format!(
                "{} (leader {leader:?}) for {pause} ms",
                lock(replica).identity()
            ))
        }
        "proxy delay" | "proxy partition" | "proxy drops responses" | "proxy reset" => {
            let target = rng.below(nodes + 1);
            let proxy = if target == nodes {
                &run.world.operator_proxy
            } else {
                &run.world.nodes[target].proxy
            };
            let span = rng.between(1000, 5000);
            let mode = match name {
                "proxy delay" => ProxyMode::Delay(Duration::from_millis(rng.between(100, 1500))),
                "proxy partition" => ProxyMode::Blackhole,
                "proxy drops responses" => ProxyMode::DropResponses,
                _ => {
                    proxy.reset_connections();
                    return Ok(format!("{} connections reset", proxy.name()));
                }
            };
            proxy.set(mode);
            tokio::time::sleep(Duration::from_millis(span)).await;
            proxy.set(ProxyMode::Pass);
            Ok(format!("{} {mode:?} for {span} ms", proxy.name()))
        }
        "etcd compaction" => {
            let revision = compact_etcd(run).await?;
            // The API server's watch cache would still serve old resourceVersions; a restart drops it.
            restart_component(run, "kube-apiserver", Signal::SIGTERM, 0).await?;
            Ok(format!("compacted at revision {revision}, API server restarted"))
        }
        "node deleted" => {
            let candidates: Vec<usize> = (0..nodes)
                .filter(|i| !run.world.nodes[*i].deleted.load(Ordering::SeqCst))
                .collect();
            let Some(&i) = rng.pick(&candidates) else {
                bail!("every node is deleted")
            };
            let node = &run.world.nodes[i];
            node.deleted.store(true, Ordering::SeqCst);
            let nodes_api: kube::Api<k8s_openapi::api::core::v1::Node> =
                kube::Api::all(run.world.client.clone());
            timed(nodes_api.delete(&node.name, &Default::default())).await?;
            let gone = rng.between(3000, 15000);
            tokio::time::sleep(Duration::from_millis(gone)).await;
            register_again(run, i).await?;
            Ok(format!("{} deleted for {gone} ms", node.name))
        }
        "statefulset member moved" => {
            let ordinal = rng.below(members);
            let (from, to) = statefulset::move_member(run, ordinal).await?;
            Ok(format!(
                "{}-{ordinal} moved from {from} to {to}",
                statefulset::NAME
            ))
        }
        other => bail!("unknown fault {other}"),
    }
}

fn component(fault: &str) -> &'static str {
    if fault.starts_with("etcd") {
        "etcd"
    } else {
        "kube-apiserver"
    }
}

fn signal_group(pid: u32, signal: Signal) -> Result<()> {
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    nix::sys::signal::killpg(pgid, signal).with_context(|| format!("sending {signal} to {pid}"))?;
    Ok(())
}

async fn restart_component(run: &Run, component: &'static str, signal: Signal, down_ms: u64) -> Result<()> {
    {
        let mut cluster = run.world.cluster.lock().await;
        if down_ms > 0 {
            cluster.signal(component, signal)?;
        }
        tokio::time::sleep(Duration::from_millis(down_ms)).await;
        tokio::task::block_in_place(|| cluster.restart(component, signal))?;
    }
    wait_api_ready(run).await
}

/// Waits (up to 90 s) until the API server answers `/readyz` with ok.
pub async fn wait_api_ready(run: &Run) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let request = http::Request::get("/readyz").body(Vec::new())?;
        if let Ok(Ok(body)) =
            tokio::time::timeout(Duration::from_secs(5), run.world.client.request_text(request)).await
            && body.trim() == "ok"
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let mut cluster = run.world.cluster.lock().await;
            let exited = [
                ("etcd", cluster.component_exited("etcd")?),
                ("kube-apiserver", cluster.component_exited("kube-apiserver")?),
            ];
            bail!("the API server was not ready 90 s after the fault (exited: {exited:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn register_again(run: &Run, i: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match run.world.register_node_again(i).await {
            Ok(()) => break,
            // The old Node may still be on its way out (finalizers), or the API server busy.
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(err = format!("{err:#}"), "registering the node again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => return Err(err),
        }
    }
    let name = run.world.nodes[i].name.clone();
    // kube-controller-manager's node-lifecycle controller lifts the not-ready taint; after an API
    // server crash its watches come back with backoff, and a run saw it take over 60 s.
    node_object::wait_schedulable(&run.world.client, &[name], Duration::from_secs(180)).await
}

/// Compacts etcd's history up to its current revision (through etcd's JSON gateway), so that
/// nothing older can be watched from. Returns the revision.
async fn compact_etcd(run: &Run) -> Result<u64> {
    let url = run.world.cluster.lock().await.etcd_url()?;
    let address = url.trim_start_matches("http://").to_owned();
    // "/" base64-encoded: any key; only the header's revision matters.
    let range = etcd_post(&address, "/v3/kv/range", &json!({"key": "Lw==", "limit": 1})).await?;
    let revision: u64 = range["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .with_context(|| format!("no revision in etcd's answer {range}"))?;
    etcd_post(
        &address,
        "/v3/kv/compaction",
        &json!({"revision": revision.to_string(), "physical": true}),
    )
    .await?;
    Ok(revision)
}

async fn etcd_post(address: &str, path: &str, body: &Value) -> Result<Value> {
    let body = body.to_string();
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream
            .write_all(
                format!(
                    "POST {path} HTTP/1.0\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        anyhow::Ok(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| anyhow!("etcd did not answer {path} within 10 s"))??;
    let (head, payload) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("etcd's answer to {path} has no body: {answer}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("etcd answered {path} with {head}: {payload}");
    }
    serde_json::from_str(payload).with_context(|| format!("etcd's answer to {path}: {payload}"))
}

/// Restarts kube-scheduler and kube-controller-manager when they exit, as a node's kubelet restarts
/// its static pods (until the task is dropped). Both may exit on their own under these faults:
/// kube-scheduler exits when its cache sees a pod move between nodes, which a watch resumed across
/// an etcd restart can show; without a restart no pod is scheduled again and the StatefulSet fault
/// waits forever. Each restart is in the journal; it is not an invariant of ours.
pub async fn supervise_control_plane(run: &Run) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for component in ["kube-scheduler", "kube-controller-manager"] {
            let mut cluster = run.world.cluster.lock().await;
            if let Ok(Some(status)) = cluster.component_exited(component) {
                let restarted = tokio::task::block_in_place(|| cluster.restart(component, Signal::SIGTERM));
                drop(cluster);
                run.note(
                    "supervisor",
                    &format!("{component} exited ({status}); restarted: {restarted:?}"),
                );
            }
        }
    }
}

/// Heartbeats of the Nodes that are not deleted, every 5 s (until the task is dropped).
pub async fn heartbeats(run: &Run) {
    loop {
        for node in &run.world.nodes {
            if !node.deleted.load(Ordering::SeqCst) {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    node_object::heartbeat(&run.world.client, &node.name),
                )
                .await;
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
