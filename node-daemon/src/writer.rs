//! One writer task per pool: every change this daemon makes to a pool's `status.allocatedIPs` goes
//! through it, so that concurrent CNI calls on this node become ONE status write per round instead of
//! one each.
//!
//! # Design
//! Upstream writes the pool status once per allocation with an optimistic update and gives up after
//! five conflicts (reference 4.2); under contention from many nodes on one pool most attempts lose
//! and pods fail. Here:
//! - Requests for a pool queue on a channel. The writer takes everything queued, decides all of it at
//!   once with the pure [`crate::ipam::pick::apply`], and writes the result with ONE merge patch of the
//!   status subresource that carries the `resourceVersion` it decided against. While that write is in
//!   flight, new requests queue and form the next batch, so the batch size grows with the load: the
//!   number of writes per allocation falls as contention rises instead of the failure rate rising.
//! - The API server's resourceVersion check is the only lock. A conflict (HTTP 409) means another
//!   node wrote first: the writer reads the pool again and decides again, merging any requests that
//!   arrived meanwhile. There is no retry limit: a request fails only when its own deadline passes
//!   (then with "try again later"), so a busy pool slows pods down but does not fail them.
//! - No address is ever given twice: a decision is only acted on after the write that records it
//!   succeeded against the exact state it was decided from.
//! - Between batches the writer keeps the object its last write returned, so a pool that only this
//!   node uses costs no read per batch; a stale copy just costs one 409 and one read.
//!
//! # Failure modes
//! - Daemon crash after the write, before the CNI answer: the address is recorded for the pod UID;
//!   the runtime retries ADD and [`apply`](crate::ipam::pick::apply) hands back the same address
//!   (records are keyed by UID). If the pod is gone instead, the operator's reclaim frees it.
//! - Lost response (timeout after the API server applied the patch): the next attempt gets a 409
//!   (the version moved), re-reads, finds the UID's record and answers with it: no second address.
//! - API server restart or outage: attempts back off (50 ms doubling to 1 s) until the request's
//!   deadline; nothing is written half: a batch is one patch.
//! - Daemon crash with requests queued: they were never written; the runtime retries them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use spiderpool_ipmath::IpFamily;
use spiderpool_schema::SpiderIPPool;
use tokio::sync::{mpsc, oneshot};

use crate::ipam::pick::{self, Op, Outcome};
use crate::metrics::Metrics;
use crate::store::Stores;

/// Why a pool change could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The pool does not exist (any more).
    #[error("SpiderIPPool {0} does not exist")]
    PoolGone(String),
    /// The pool's spec cannot be used.
    #[error("SpiderIPPool {pool} is unusable: {reason}")]
    BadPool {
        /// Pool name.
        pool: String,
        /// What is wrong.
        reason: String,
    },
    /// The request's deadline passed before a write succeeded.
    #[error("SpiderIPPool {pool}: could not write the pool status before the deadline: {last_error}")]
    Timeout {
        /// Pool name.
        pool: String,
        /// The last error seen.
        last_error: String,
    },
    /// The writer task is gone (daemon shutting down).
    #[error("the writer of SpiderIPPool {0} stopped")]
    Stopped(String),
}

struct Request {
    op: Op,
    deadline: Instant,
    reply: oneshot::Sender<Result<Outcome, WriteError>>,
}

/// The writers of every pool this daemon touched.
#[derive(Clone)]
pub struct PoolWriters {
    inner: Arc<Inner>,
}

struct Inner {
    api: Api<SpiderIPPool>,
    stores: Stores,
    metrics: Metrics,
    max_records: usize,
    writers: std::sync::Mutex<HashMap<String, mpsc::UnboundedSender<Request>>>,
}

impl PoolWriters {
    /// Writers using `api` (cluster-scoped SpiderIPPools), the reserved-IP store and metrics.
    pub fn new(api: Api<SpiderIPPool>, stores: Stores, metrics: Metrics, max_records: usize) -> Self {
        PoolWriters {
            inner: Arc::new(Inner {
                api,
                stores,
                metrics,
                max_records,
                writers: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Submits one change to `pool` and waits for its outcome (or `timeout`).
    pub async fn submit(&self, pool: &str, op: Op, timeout: Duration) -> Result<Outcome, WriteError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            op,
            deadline: Instant::now() + timeout,
            reply,
        };
        let sender = {
            let mut writers = self.inner.writers.lock().unwrap_or_else(|e| e.into_inner());
            let sender = writers.entry(pool.to_owned()).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(run_writer(pool.to_owned(), rx, self.inner.clone()));
                tx
            });
            sender.clone()
        };
        sender
            .send(request)
            .map_err(|_| WriteError::Stopped(pool.to_owned()))?;
        answer.await.map_err(|_| WriteError::Stopped(pool.to_owned()))?
    }
}

async fn run_writer(pool: String, mut queue: mpsc::UnboundedReceiver<Request>, inner: Arc<Inner>) {
    let mut latest: Option<SpiderIPPool> = None;
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = queue.try_recv() {
            batch.push(more);
        }
        latest = commit(&pool, &mut queue, batch, latest, &inner).await;
    }
}

/// Decides and writes one batch (growing it with requests that arrive during conflicts); answers
/// every request; returns the freshest copy of the pool for the next batch.
async fn commit(
    pool: &str,
    queue: &mut mpsc::UnboundedReceiver<Request>,
    mut batch: Vec<Request>,
    mut latest: Option<SpiderIPPool>,
    inner: &Inner,
) -> Option<SpiderIPPool> {
    let mut backoff = Duration::from_millis(50);
    let mut last_error = String::new();
    let mut conflicts: u64 = 0;
    loop {
        // Drop requests whose caller gave up or whose deadline passed.
        let now = Instant::now();
        batch.retain(|r| !r.reply.is_closed());
        let (expired, live): (Vec<_>, Vec<_>) = batch.into_iter().partition(|r| r.deadline <= now);
        batch = live;
        for r in expired {
            let _ = r.reply.send(Err(WriteError::Timeout {
                pool: pool.to_owned(),
                last_error: if last_error.is_empty() {
                    "deadline passed while queued".to_owned()
                } else {
                    last_error.clone()
                },
            }));
        }
        if batch.is_empty() {
            return latest;
        }

        let current = match latest.take() {
            Some(obj) => obj,
            None => match inner.api.get_opt(pool).await {
                Ok(Some(obj)) => obj,
                Ok(None) => {
                    answer_all(batch, |_| Err(WriteError::PoolGone(pool.to_owned())));
                    return None;
                }
                Err(e) => {
                    last_error = e.to_string();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };

        let decided = decide(pool, &current, &batch, inner);
        let (records_text, count, outcomes) = match decided {
            Ok(d) => d,
            Err(e) => {
                answer_all(batch, |_| Err(e.clone()));
                return Some(current);
            }
        };
        let Some(records_text) = records_text else {
            // Nothing changes (repeated ADDs, releases of what is not held): no write needed.
            answer_outcomes(batch, outcomes);
            return Some(current);
        };

        let patch = json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "status": {"allocatedIPs": records_text, "allocatedIPCount": count},
        });
        let started = Instant::now();
        let result = inner
            .api
            .patch_status(pool, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        inner.metrics.pool_write(started.elapsed(), batch.len());
        match result {
            Ok(updated) => {
                answer_outcomes(batch, outcomes);
                return Some(updated);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                inner.metrics.pool_conflict();
                tracing::debug!(
                    pool,
                    batch = batch.len(),
                    "pool status write conflicted; deciding again"
                );
                last_error = "conflicting writes from other nodes".to_owned();
                conflicts += 1;
                // Back off a little, randomised and growing with the conflict streak, so that nodes
                // contending for one pool stop colliding in lockstep; meanwhile more requests queue
                // and the next write decides more of them.
                tokio::time::sleep(jitter(Duration::from_millis(2 * conflicts.min(10)))).await;
                // The winner's version usually arrives through the watch meanwhile: use it rather
                // than reading the (large) pool object again.
                latest = newer_from_store(inner, pool, current.metadata.resource_version.as_deref()).await;
                while let Ok(more) = queue.try_recv() {
                    batch.push(more);
                }
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                answer_all(batch, |_| Err(WriteError::PoolGone(pool.to_owned())));
                return None;
            }
            Err(e) => {
                tracing::warn!(pool, error = %e, "pool status write failed; retrying");
                last_error = e.to_string();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

type Decision = (Option<Option<String>>, usize, Vec<Outcome>);

/// Applies the batch to the pool's records. `None` as the first element means nothing changed;
/// `Some(None)` means the records are now empty (stored as absent, like upstream).
fn decide(
    pool: &str,
    current: &SpiderIPPool,
    batch: &[Request],
    inner: &Inner,
) -> Result<Decision, WriteError> {
    let bad = |reason: String| WriteError::BadPool {
        pool: pool.to_owned(),
        reason,
    };
    let family = pool_family(current)
        .ok_or_else(|| bad(format!("spec.subnet {} is not a CIDR", current.spec.subnet)))?;
    let reserved = inner.stores.reserved_ips(family);
    let usable = pick::usable_addresses(&current.spec, family, &reserved).map_err(bad)?;
    let status = current.status.clone().unwrap_or_default();
    let mut records = status
        .allocations()
        .map_err(|e| bad(format!("status.allocatedIPs is not valid JSON: {e}")))?;
    let before = records.clone();
    let ops: Vec<Op> = batch.iter().map(|r| r.op.clone()).collect();
    let outcomes = pick::apply(&mut records, &usable, &ops, inner.max_records);
    if records == before {
        return Ok((None, records.len(), outcomes));
    }
    let text = if records.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&records).map_err(|e| bad(e.to_string()))?)
    };
    Ok((Some(text), records.len(), outcomes))
}

/// A uniformly random duration in `[0, max)`.
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(random % nanos)
}

/// The cached pool once the watch has delivered a version other than `tried` (waiting up to 30 ms),
/// or `None` (the caller then reads it from the API server).
async fn newer_from_store(inner: &Inner, pool: &str, tried: Option<&str>) -> Option<SpiderIPPool> {
    let deadline = Instant::now() + Duration::from_millis(30);
    loop {
        if let Some(cached) = inner.stores.pool(pool)
            && is_newer(cached.metadata.resource_version.as_deref(), tried)
        {
            return Some((*cached).clone());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Whether `candidate` is a later resourceVersion than `tried`. Versions are opaque by contract but
/// etcd revisions in practice: compare them as numbers when both are, else accept any difference.
fn is_newer(candidate: Option<&str>, tried: Option<&str>) -> bool {
    match (
        candidate.and_then(|c| c.parse::<u64>().ok()),
        tried.and_then(|t| t.parse::<u64>().ok()),
    ) {
        (Some(c), Some(t)) => c > t,
        _ => candidate != tried,
    }
}

/// The pool's IP family: `spec.ipVersion`, else its subnet's.
pub fn pool_family(pool: &SpiderIPPool) -> Option<IpFamily> {
    pool.spec.ip_version.and_then(IpFamily::from_version).or_else(|| {
        spiderpool_ipmath::parse_cidr(&pool.spec.subnet)
            .ok()
            .map(|n| IpFamily::of_net(&n))
    })
}

fn answer_all(batch: Vec<Request>, result: impl Fn(&Op) -> Result<Outcome, WriteError>) {
    for r in batch {
        let answer = result(&r.op);
        let _ = r.reply.send(answer);
    }
}

fn answer_outcomes(batch: Vec<Request>, outcomes: Vec<Outcome>) {
    for (r, outcome) in batch.into_iter().zip(outcomes) {
        let _ = r.reply.send(Ok(outcome));
    }
}
