//! Checks that need the faults healed: the checkpoint between rounds (everything is up again, the
//! kubelet's pending DELs go through, an ADD on every node succeeds within seconds, and the API state
//! agrees with the ledger with nothing in flight) and the end (once every pod is deleted and reclaim
//! has run, no address and no endpoint is left).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::faults::wait_api_ready;
use super::ledger::{PodRef, SandboxState};
use super::proxy::ProxyMode;
use super::run::Run;
use super::world::lock;
use crate::daemon::unix_request;

/// How long after the faults healed an ADD may take to succeed on every node.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(30);
/// How long after the faults healed the kubelet's pending DELs may take.
pub const QUIET_DEADLINE: Duration = Duration::from_secs(60);

/// Undoes whatever a fault left behind (each fault heals itself; this is the safety net) and waits
/// until the API server and every agent answer.
pub async fn heal(run: &Run) -> Result<()> {
    let world = &run.world;
    world.operator_proxy.set(ProxyMode::Pass);
    for node in &world.nodes {
        node.proxy.set(ProxyMode::Pass);
    }
    wait_api_ready(run).await?;
    for (i, node) in world.nodes.iter().enumerate() {
        if node.deleted.load(Ordering::SeqCst) {
            world.register_node_again(i).await?;
        }
        let running = lock(&node.agent).is_some();
        if !running {
            world.start_agent(i).await?;
        }
    }
    for replica in &world.operators {
        let mut replica = lock(replica);
        let _ = replica.signal(nix::sys::signal::Signal::SIGCONT);
        replica.restart()?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in &world.nodes {
        let socket = node.socket(&world.dir);
        loop {
            let socket = socket.clone();
            let healthy =
                tokio::task::spawn_blocking(move || unix_request(&socket, "GET", "/v1/ipam/healthy", None))
                    .await?
                    .is_ok_and(|(status, _)| status == 200);
            if healthy {
                break;
            }
            if Instant::now() >= deadline {
                lock(&run.ledger).report(
                    "agents recover",
                    format!(
                        "the agent of {} is not healthy 30 s after the faults healed",
                        node.name
                    ),
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Sandboxes the kubelet still has to DEL (failed ADDs, failed DELs).
fn pending_dels(run: &Run) -> Vec<String> {
    lock(&run.ledger)
        .not_gone()
        .filter(|s| matches!(s.state, SandboxState::Failed | SandboxState::Releasing))
        .map(|s| format!("{} ({}/{})", s.container, s.pod.name, s.pod.node))
        .collect()
}

/// The checkpoint after round `round` (faults stopped): see the module docs.
pub async fn checkpoint(run: &Run, round: usize) -> Result<()> {
    heal(run).await?;
    run.paused.store(true, Ordering::SeqCst);
    run.note("check", &format!("checkpoint {round}: workload paused"));
    let deadline = Instant::now() + QUIET_DEADLINE;
    loop {
        let pending = pending_dels(run);
        if pending.is_empty() && run.busy.load(Ordering::SeqCst) == 0 {
            break;
        }
        if Instant::now() >= deadline {
            lock(&run.ledger).report(
                "no wedged writer after faults heal",
                format!("DELs still failing {QUIET_DEADLINE:?} after the faults healed: {pending:?}"),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let probes = run
        .world
        .nodes
        .iter()
        .enumerate()
        .map(|(i, _)| probe(run, i, round));
    futures::future::join_all(probes).await;
    let found = run.check().await?;
    let doubles = double_claims(run).await?;
    run.note(
        "check",
        &format!("checkpoint {round}: {found} ledger violations, {doubles} double endpoint claims"),
    );
    run.paused.store(false, Ordering::SeqCst);
    Ok(())
}

/// An ADD on node `i`, on each workload's pools, must succeed within [`PROBE_DEADLINE`]; then the
/// probe pod goes again.
async fn probe(run: &Run, i: usize, round: usize) {
    for dual in [false, true] {
        let node = run.world.nodes[i].name.clone();
        let name = format!("probe-{i}-{round}-{}", if dual { "dual" } else { "tight" });
        let who = format!("probe-{i}");
        let started = Instant::now();
        let uid = loop {
            match run.create_pod(&name, &node, &json!({})).await {
                Ok(uid) => break Some(uid),
                Err(_) if started.elapsed() < PROBE_DEADLINE => {
                    tokio::time::sleep(Duration::from_millis(300)).await
                }
                Err(err) => {
                    lock(&run.ledger).report("probe pods", format!("{name}: cannot create: {err:#}"));
                    break None;
                }
            }
        };
        let Some(uid) = uid else { continue };
        let pod = PodRef {
            namespace: run.namespace().to_owned(),
            name: name.clone(),
            uid: uid.clone(),
            node,
            member: false,
        };
        let mut attempt = 0;
        let mut last_error = String::new();
        let mut live = None;
        while started.elapsed() < PROBE_DEADLINE {
            attempt += 1;
            let container = format!("{name}-{attempt}");
            match run.add(&who, "probe ADD", i, dual, &container, &pod).await {
                Ok(_) => {
                    live = Some(container);
                    break;
                }
                Err(err) => {
                    last_error = err;
                    let _ = run.del(&who, "probe DEL", i, dual, &container, &pod).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        match &live {
            Some(_) => run.note(
                &who,
                &format!("probe ADD on {} ok after {:.1} s", pod.node, started.elapsed().as_secs_f64()),
            ),
            None => lock(&run.ledger).report(
                "no wedged writer after faults heal",
                format!(
                    "no ADD succeeded on {} ({}) within {PROBE_DEADLINE:?} of the faults healing: {last_error}",
                    pod.node,
                    if dual { "dual-stack pools" } else { "tight pool" }
                ),
            ),
        }
        if let Some(container) = live {
            for _ in 0..20 {
                if run
                    .del(&who, "probe DEL", i, dual, &container, &pod)
                    .await
                    .is_ok()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        let _ = run.delete_pod(&name, &uid, 0).await;
    }
}

/// Endpoints claiming an address another endpoint claims (with nothing in flight). Reported as
/// violations; returns how many.
async fn double_claims(run: &Run) -> Result<usize> {
    let snapshot = run.snapshot().await?;
    let mut claims: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for endpoint in &snapshot.endpoints {
        for ip in &endpoint.addresses {
            claims.entry(*ip).or_default().push(format!(
                "{}/{} (uid {})",
                endpoint.namespace, endpoint.name, endpoint.uid
            ));
        }
    }
    let doubles: Vec<String> = claims
        .into_iter()
        .filter(|(_, who)| who.len() > 1)
        .map(|(ip, who)| format!("{ip} claimed by {}", who.join(" and ")))
        .collect();
    for double in &doubles {
        lock(&run.ledger).report("no endpoint claims another's address", double.clone());
    }
    Ok(doubles.len())
}

/// The end: waits (up to `deadline`) until the pools hold no record (no pod's address, no node's
/// reservation) and the workload's namespace no SpiderEndpoint; reports what is left otherwise.
pub async fn nothing_left(run: &Run, deadline: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let snapshot = run.snapshot().await;
        if let Ok(snapshot) = &snapshot
            && snapshot.records.is_empty()
            && snapshot.endpoints.is_empty()
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= deadline {
            let snapshot = snapshot?;
            let records: Vec<String> = snapshot
                .records
                .iter()
                .map(|(ip, r)| match &r.reserved_for {
                    Some(node) => format!("{ip} in {} reserved for {node}", r.pool),
                    None => format!("{ip} in {} for pod uid {}", r.pool, r.pod_uid),
                })
                .collect();
            let endpoints: Vec<String> = snapshot
                .endpoints
                .iter()
                .map(|e| format!("{}/{} (uid {}) {:?}", e.namespace, e.name, e.uid, e.addresses))
                .collect();
            lock(&run.ledger).report(
                "zero addresses and zero endpoints left",
                format!(
                    "{deadline:?} after every pod was deleted: {} records {records:?}, {} endpoints {endpoints:?}",
                    records.len(),
                    endpoints.len()
                ),
            );
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
