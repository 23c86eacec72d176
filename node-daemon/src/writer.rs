//! One writer task per pool: every change this daemon makes to a pool's `status.allocatedIPs` goes
//! through it, and it keeps this node's reservations in the pool ([`crate::ipam::lease`]).
//!
//! # Design
//! Upstream writes the pool status once per allocation with an optimistic update and gives up after
//! five conflicts (reference 4.2); under contention from many nodes on one pool most attempts lose
//! and pods fail, and even when they succeed each pod waits for its own write to win. Here:
//! - **Reservations.** A node that is starting pods reserves, in the same write, one address for
//!   each other pod bound to it that still waits for its network (the scheduler binds pods before
//!   their kubelet asks for addresses, so these are the ADDs to come), capped at an even share of
//!   what no pod holds ([`lease::target_size`]); a node whose bound pods are guessed to ask this
//!   pool does so before their first ADD ([`crate::ahead`]). The next ADDs take one of them at once
//!   ([`PoolWriters::submit`]: no write, no wait), and a later background write records them for
//!   their pods. Unused reservations go back when the node goes idle; when the pool has nothing
//!   free outside reservations, holdings beyond that same target go back at once
//!   ([`lease::excess_to_return`]), so the last addresses of a full pool end up where pods still
//!   wait. Only this node hands out its reservations, and only those that a successful write
//!   recorded, so no address is given twice.
//! - **Batching.** Everything else (releases, rebinds, allocations when no reservation is left) queues
//!   on a channel. The writer takes everything queued, decides it all at once with the pure
//!   [`lease::decide_round`], and writes the result with ONE merge patch of the status subresource
//!   that carries the `resourceVersion` it decided against. While that write is in flight, new
//!   requests queue and form the next batch.
//! - **Conflicts.** The API server's resourceVersion check is the only lock. A conflict (HTTP 409)
//!   means another node wrote first: the writer takes the winner's version (from the pool cache if
//!   it holds that version whole, else a read: the watch carries metadata only, [`crate::pool_cache`])
//!   and decides again, merging requests that arrived meanwhile. There is no retry limit: a
//!   request fails only when its own deadline passes (then with "try again later").
//! - A decision is only acted on after the write that records it succeeded against the exact state
//!   it was decided from.
//!
//! # Failure modes
//! - Daemon crash after a write, before the CNI answer: the address is recorded for the pod UID; the
//!   runtime retries ADD and gets the same address back (records are keyed by UID). If the pod is
//!   gone instead, the operator's reclaim frees it.
//! - Daemon crash with reservations: a handed-out reservation's pod has its SpiderEndpoint (written
//!   before the ADD answered). On start, the writer of every pool holding reservations of this node
//!   lists this node's endpoints, records the claimed reservations for their pods and keeps or gives
//!   back the rest ([`lease::recover`]). A crash between handing out and writing the endpoint leaves
//!   a reservation that no endpoint claims: it becomes free again; the runtime retries that ADD.
//! - Lost response (timeout after the API server applied the patch): the next attempt gets a 409,
//!   takes the new version and decides again: records keyed by UID give the same answers, and
//!   reservations of this node that it did not know about are adopted. Addresses being given back are
//!   never handed out again until a write confirms them as still reserved for this node.
//! - API server restart or outage: attempts back off (50 ms doubling to 1 s) until the request's
//!   deadline; background writes (recording handed-out reservations, giving back unused ones) retry
//!   until they succeed. A batch is one patch, so nothing is half written.
//! - Daemon crash with requests queued: they were never written; the runtime retries them.
//! - A node whose agent never comes back keeps its reservations until the Node object is deleted;
//!   then the operator's reclaim removes them. Meanwhile other nodes wait for them only when nothing
//!   else is free, and fail with "try again later" at their deadline.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spiderpool_ipmath::{IpFamily, IpSet};
use spiderpool_schema::SpiderIPPool;
use spiderpool_schema::ippool::PoolIPAllocation;
use std::collections::BTreeMap;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::api::{ClusterApi, EndpointScope, PoolStatusWrite};
use crate::clock;
use crate::config::{Config, LeaseTuning};
use crate::error::WriteError;
use crate::health::Health;
use crate::ipam::endpoint;
use crate::ipam::lease::{self, RoundInput};
use crate::ipam::pick::{self, Op, Outcome};
use crate::ipam::pool;
use crate::ipam::reservations::{self, HandoutGate, PoolView, Reservations, RoundPlan};
use crate::metrics::Metrics;
use crate::pool_cache::{self, is_newer};
use crate::store::Stores;

/// How often, at most, a writer holding unused reservations reads its pool to see what other nodes
/// recorded ([`Inner::read_stale_view`]).
const VIEW_READ_EVERY: Duration = Duration::from_millis(500);

struct Request {
    op: Op,
    deadline: Instant,
    reply: oneshot::Sender<Result<Outcome, WriteError>>,
    /// Why the request is still waiting, for the error if its deadline passes.
    waiting_for: Option<String>,
    /// Whether to wait for other nodes' reservations ([`Outcome::Wait`]), or answer it at once.
    may_wait: bool,
}

/// The writers of every pool this daemon touched.
#[derive(Clone)]
pub struct PoolWriters {
    inner: Arc<Inner>,
}

struct Inner {
    api: Arc<dyn ClusterApi>,
    node: String,
    node_label: String,
    stores: Stores,
    metrics: Metrics,
    health: Health,
    max_records: usize,
    tuning: LeaseTuning,
    pools: std::sync::Mutex<HashMap<String, Arc<Handle>>>,
    /// Pod UID to the pools its ADDs are guessed to ask ([`crate::ahead`]); pods without a guess are
    /// not listed.
    guesses: std::sync::Mutex<HashMap<String, Vec<String>>>,
}

impl Inner {
    fn guesses(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<String>>> {
        self.guesses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts the pods still to come for `pool`: those that hold an address of it already, or are
    /// guessed to ask only other pools ([`PoolWriters::note_guess`]), do not count. The cache is read
    /// afresh because pods arrive and start without the pool changing.
    fn count_upcoming(&self, pool: &str, state: &mut Reservations) {
        let upcoming = {
            let guesses = self.guesses();
            self.stores.pods_awaiting_network(|uid| {
                state.holds_address(uid)
                    || guesses
                        .get(uid)
                        .is_some_and(|pools| !pools.iter().any(|p| p == pool))
            })
        };
        state.set_upcoming(upcoming);
    }

    /// What the watch says about handing out reservations of `pool` (of `family`) now.
    fn handout_gate(&self, pool: &str, family: IpFamily) -> Option<HandoutGate> {
        let shown = self.stores.pools.shown(pool)?;
        Some(HandoutGate {
            version: shown.version,
            generation: shown.generation,
            deleting: shown.deleting,
            reserved: self.stores.reserved_ips(family),
        })
    }

    /// Reads the pool whole when the watch has shown a version the cache does not hold, this node
    /// holds unused reservations (whether the pool has anything free elsewhere decides whether it
    /// gives them back, [`Reservations::excess`]) and the last such read is at least
    /// [`VIEW_READ_EVERY`] old. The watch carries metadata only ([`crate::pool_cache`]), so what
    /// other nodes recorded is not seen otherwise until this node writes.
    async fn read_stale_view(&self, pool: &str, handle: &Handle, last_read: &mut Option<Instant>) {
        let now = clock::now();
        if last_read.is_some_and(|at| now.saturating_duration_since(at) < VIEW_READ_EVERY)
            || handle.state().free().is_empty()
        {
            return;
        }
        let (Some(shown), Some(whole)) = (self.stores.pools.shown(pool), self.stores.pool(pool)) else {
            return;
        };
        if !is_newer(
            shown.version.as_deref(),
            whole.metadata.resource_version.as_deref(),
        ) {
            return;
        }
        *last_read = Some(now);
        if let Err(e) = self.read_pool(pool).await {
            tracing::debug!(pool, error = %e, "reading the pool for its free count failed");
        }
    }

    /// Reads the pool from the API server, and offers what it read to the pool cache (the watch
    /// carries metadata only).
    async fn read_pool(&self, pool: &str) -> crate::api::ApiResult<Option<Arc<SpiderIPPool>>> {
        let read = {
            let _step = self.health.step(pool, "reading the pool");
            self.api.get_pool(pool).await
        };
        let read = read.map(|pool| pool.map(pool_cache::shareable));
        if let Ok(Some(current)) = &read {
            self.stores.pools.offer(Arc::clone(current));
        }
        read
    }

    /// Takes in the pool as the cache holds it whole ([`Reservations::observe`]; as of the whole
    /// object's own version, which [`Inner::read_stale_view`] and the writer's own reads and writes
    /// keep recent). Records are
    /// counted without decoding the whole (possibly large) status ([`lease::count_records`]); the
    /// usable count is kept per spec generation, and nothing is read again until the cache holds
    /// another version (the writer wakes for every handout, and most of those find the pool as it
    /// was).
    fn refresh_view(&self, pool: &str, state: &mut Reservations) {
        let Some(cached) = self.stores.pool(pool) else {
            return;
        };
        if state.has_viewed(cached.metadata.resource_version.as_deref()) {
            return;
        }
        state.set_cooldown(self.cooldown_of(pool, &cached));
        let generation = cached.metadata.generation;
        let usable = match state.usable_count_at(generation) {
            Some(count) => count,
            None => {
                let Some(family) = pool::family(&cached) else {
                    return;
                };
                let reserved = self.stores.reserved_ips(family);
                let Ok(usable) = pick::pool_usable(&cached, family, &reserved) else {
                    return;
                };
                let count = usable.len();
                state.set_usable_count(generation, count);
                count
            }
        };
        let text = cached
            .status
            .as_ref()
            .and_then(|s| s.allocated_ips.as_deref())
            .unwrap_or_default();
        let counts = lease::count_records(text, &self.node);
        state.observe(&PoolView {
            version: cached.metadata.resource_version.clone(),
            usable,
            records: counts.records,
            reservations: counts.reservations,
            other_nodes: counts.other_nodes,
            shards: spiderpool_schema::shards::shard_of(&cached)
                .map_or(1, |uid| self.stores.shards_of(uid).len()),
        });
    }

    /// The pool's own release cooldown, from its annotation (a bad one is logged and ignored).
    fn cooldown_of(&self, name: &str, pool: &SpiderIPPool) -> Option<Duration> {
        match pool::release_cooldown(pool, self.tuning.release_cooldown) {
            Ok(cooldown) => Some(cooldown),
            Err(why) => {
                tracing::warn!(pool = name, why, "ignoring the pool's release cooldown");
                None
            }
        }
    }

    /// Answers from the state what it can answer at once ([`Reservations::answer`]), leaving the rest
    /// in `batch`.
    fn serve_from_state(&self, pool: &str, state: &mut Reservations, batch: &mut Vec<Request>, now: Instant) {
        let mut rest = Vec::with_capacity(batch.len());
        for request in batch.drain(..) {
            match state.answer(&request.op, now, &self.tuning, |family| {
                self.handout_gate(pool, family)
            }) {
                Some(outcome) => {
                    if matches!(outcome, Outcome::Allocated(_)) {
                        self.metrics.reserved_handout();
                    }
                    let _ = request.reply.send(Ok(outcome));
                }
                None => rest.push(request),
            }
        }
        *batch = rest;
    }
}

/// A pool's foreign record keys and addresses claimed by several records, as last reported.
#[derive(Default)]
struct Reported {
    foreign_keys: Vec<String>,
    ambiguous: Vec<(IpAddr, Vec<String>)>,
}

/// One pool's writer: its queue and this node's reservations in the pool.
struct Handle {
    queue: mpsc::UnboundedSender<Request>,
    state: std::sync::Mutex<Reservations>,
    /// What was last reported, so each finding is logged once.
    reported: std::sync::Mutex<Reported>,
    /// Tells the writer that the state changed (an address was handed out), so it re-plans its timers.
    wake: Notify,
    /// The writer's task.
    task: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl Handle {
    /// The state, locked (a poisoned lock is used as it is, as everywhere in this daemon).
    fn state(&self) -> std::sync::MutexGuard<'_, Reservations> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl PoolWriters {
    /// Writers for this node (`config.node_name`) talking to `api`, reading the caches, reporting
    /// each step to `health` (a writer stuck in one is what fails the agent's liveness).
    pub fn new(
        api: Arc<dyn ClusterApi>,
        config: &Config,
        stores: Stores,
        metrics: Metrics,
        health: Health,
    ) -> Self {
        PoolWriters {
            inner: Arc::new(Inner {
                api,
                node: config.node_name.clone(),
                node_label: endpoint::label_value(&config.node_name),
                stores,
                metrics,
                health,
                max_records: config.max_allocated_ips,
                tuning: config.lease.clone(),
                pools: std::sync::Mutex::new(HashMap::new()),
                guesses: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Starts the writer of every pool in the cache that holds reservations of this node, so that a
    /// restarted daemon records or gives back what its previous run reserved even if no pod asks
    /// for those pools again.
    pub fn recover_reservations(&self) {
        for pool in self.inner.stores.pools() {
            let holds_ours = pool
                .status
                .as_ref()
                .and_then(|s| s.allocated_ips.as_deref())
                .is_some_and(|text| lease::mentions_reservations_of(text, &self.inner.node));
            if holds_ours && let Some(name) = pool.metadata.name.as_deref() {
                tracing::info!(pool = name, "recovering this node's reservations");
                self.handle(name);
            }
        }
    }

    /// Submits one change to `pool` and waits for its outcome (or `timeout`). Allocations and
    /// releases are answered at once from this node's reservations when they can be
    /// ([`Reservations::answer`]).
    pub async fn submit(&self, pool: &str, op: Op, timeout: Duration) -> Result<Outcome, WriteError> {
        self.send(pool, op, timeout, true).await
    }

    /// [`PoolWriters::submit`], except that when nothing is free but other nodes' reservations (or
    /// this node's cooling addresses) the answer is [`Outcome::Wait`] at once instead of waiting:
    /// the caller has another pool to try first (the next shard of a sharded pool).
    pub async fn submit_without_waiting(
        &self,
        pool: &str,
        op: Op,
        timeout: Duration,
    ) -> Result<Outcome, WriteError> {
        self.send(pool, op, timeout, false).await
    }

    async fn send(
        &self,
        pool: &str,
        op: Op,
        timeout: Duration,
        may_wait: bool,
    ) -> Result<Outcome, WriteError> {
        let handle = self.handle(pool);
        if let Some(outcome) = self.serve_at_once(pool, &handle, &op) {
            return Ok(outcome);
        }
        let (reply, answer) = oneshot::channel();
        let request = Request {
            op,
            deadline: clock::deadline_in(timeout),
            reply,
            waiting_for: None,
            may_wait,
        };
        handle
            .queue
            .send(request)
            .map_err(|_| WriteError::Stopped(pool.to_owned()))?;
        answer.await.map_err(|_| WriteError::Stopped(pool.to_owned()))?
    }

    /// Whether pod `pod_uid` holds `ip` of `pool` as this node's writer knows it: `Some(true)` it
    /// handed the address to the pod or recorded it for it, and the pod has not given it back since;
    /// `Some(false)` not, or the pod gave it back (the release may not be written yet); `None` the
    /// writer does not know (not started, or not yet recovered after a restart). Only this node
    /// writes records of its pods, so a writer that knows is the truth about them, ahead of the
    /// watch cache.
    pub fn holds(&self, pool: &str, ip: IpAddr, pod_uid: &str) -> Option<bool> {
        let handle = {
            let pools = self.inner.pools.lock().unwrap_or_else(|e| e.into_inner());
            pools.get(pool).cloned()
        }?;
        let state = handle.state();
        state.is_ready().then(|| state.holds(pod_uid, ip))
    }

    /// Pods bound to this node will soon ask `pool` for addresses ([`crate::ahead`]): counts as demand,
    /// so the writer (started if need be) tops up this node's reservations for the pods to come as
    /// it would after an ADD, once the burst they are bound in pauses ([`Reservations::note_bound`]),
    /// and keeps them until the node goes idle. Does nothing when reservations are off.
    pub fn expect_demand(&self, pool: &str) {
        if self.inner.tuning.max_size == 0 {
            return;
        }
        let handle = self.handle(pool);
        handle.state().note_bound(clock::now());
        handle.wake.notify_one();
    }

    /// Remembers the pools a pod bound to this node is guessed to ask ([`crate::ahead`]), so that
    /// other pools do not size their reservations for it. An empty guess is not kept: such a pod
    /// counts for every pool, as one never guessed.
    pub fn note_guess(&self, pod_uid: &str, pools: &[String]) {
        if !pools.is_empty() {
            self.inner.guesses().insert(pod_uid.to_owned(), pools.to_vec());
        }
    }

    /// Forgets the guesses of pods no longer bound to this node (`live`: the UIDs that are).
    pub fn keep_guesses(&self, live: &HashSet<String>) {
        self.inner.guesses().retain(|uid, _| live.contains(uid));
    }

    /// The writer of `pool`, started if there is none, or if its task ended (a writer never ends on
    /// its own while the daemon runs; if one did, say by a panic, a new one recovers the pool's
    /// state from the API server as after a restart).
    fn handle(&self, pool: &str) -> Arc<Handle> {
        let mut pools = self.inner.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = pools.get(pool) {
            if !handle
                .task
                .get()
                .is_some_and(tokio::task::AbortHandle::is_finished)
            {
                return handle.clone();
            }
            tracing::error!(pool, "the pool's writer ended; starting a new one");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = Arc::new(Handle {
            queue: tx,
            state: std::sync::Mutex::new(Reservations::default()),
            reported: std::sync::Mutex::new(Default::default()),
            wake: Notify::new(),
            task: std::sync::OnceLock::new(),
        });
        let task = tokio::spawn(run_writer(
            pool.to_owned(),
            rx,
            handle.clone(),
            self.inner.clone(),
        ));
        let _ = handle.task.set(task.abort_handle());
        pools.insert(pool.to_owned(), handle.clone());
        handle
    }

    /// The fast path ([`Reservations::answer`]).
    fn serve_at_once(&self, pool: &str, handle: &Handle, op: &Op) -> Option<Outcome> {
        let now = clock::now();
        let mut state = handle.state();
        if matches!(op, Op::Allocate { .. }) {
            state.note_demand(now);
        }
        let outcome = state.answer(op, now, &self.inner.tuning, |family| {
            self.inner.handout_gate(pool, family)
        })?;
        drop(state);
        handle.wake.notify_one();
        if matches!(outcome, Outcome::Allocated(_)) {
            self.inner.metrics.reserved_handout();
        }
        Some(outcome)
    }
}

async fn run_writer(
    pool: String,
    mut queue: mpsc::UnboundedReceiver<Request>,
    handle: Arc<Handle>,
    inner: Arc<Inner>,
) {
    let mut latest = recover(&pool, &handle, &inner).await;
    let mut waiting: Vec<Request> = Vec::new();
    let mut last_view_read: Option<Instant> = None;
    // After the API server refused the pool for good (a 4xx), background work waits this long before
    // trying again (doubling while it keeps refusing); requests still try, and fail at once.
    let mut refused = Refusals::default();
    loop {
        let mut batch = std::mem::take(&mut waiting);
        if batch.is_empty() {
            inner.read_stale_view(&pool, &handle, &mut last_view_read).await;
            let due = {
                let mut state = handle.state();
                inner.refresh_view(&pool, &mut state);
                inner.count_upcoming(&pool, &mut state);
                state.next_due(clock::now(), &inner.tuning)
            };
            let due = due.map(|at| refused.until.map_or(at, |until| at.max(until)));
            let sleep = async {
                match due {
                    Some(at) => clock::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                request = queue.recv() => match request {
                    Some(r) => batch.push(r),
                    None => return,
                },
                () = handle.wake.notified() => continue,
                () = sleep => {}
            }
        } else {
            // Requests wait for other nodes' reservations: ask again when the pool changes.
            let tried = latest.as_ref().and_then(|p| p.metadata.resource_version.clone());
            latest = newer_from_store(&inner, &pool, tried.as_deref(), Duration::from_millis(100)).await;
        }
        while let Ok(more) = queue.try_recv() {
            batch.push(more);
        }
        // Other nodes may have written the pool since this writer last did (a round can be seconds
        // after the last): a write based on the version this writer last wrote would be sure to
        // lose its race, a whole pool sent for nothing.
        latest = newest_of(&inner, &pool, latest);
        let end = round(&pool, &mut queue, batch, latest, &handle, &inner).await;
        latest = end.latest;
        waiting = end.waiting;
        refused.note(end.refused);
    }
}

/// Back-off after the API server refused a pool for good.
#[derive(Default)]
struct Refusals {
    until: Option<Instant>,
    pause: Duration,
}

impl Refusals {
    const FIRST: Duration = Duration::from_secs(30);
    const MAX: Duration = Duration::from_secs(300);

    fn note(&mut self, refused: bool) {
        if refused {
            self.pause = if self.pause.is_zero() {
                Self::FIRST
            } else {
                (self.pause * 2).min(Self::MAX)
            };
            self.until = Some(clock::deadline_in(self.pause));
        } else {
            *self = Refusals::default();
        }
    }
}

/// How a round ended.
struct RoundEnd {
    /// The pool as last read or written (`None`: read it before deciding again).
    latest: Option<Arc<SpiderIPPool>>,
    /// Requests waiting for other nodes' reservations.
    waiting: Vec<Request>,
    /// The API server refused the pool for good.
    refused: bool,
}

impl RoundEnd {
    fn done(latest: Option<Arc<SpiderIPPool>>, waiting: Vec<Request>) -> Self {
        RoundEnd {
            latest,
            waiting,
            refused: false,
        }
    }
}

/// Reads the pool and, if it holds reservations of this node (a previous run's), finds out from this
/// node's endpoints which of them were handed to pods. Retries until it can read.
async fn recover(pool: &str, handle: &Handle, inner: &Inner) -> Option<Arc<SpiderIPPool>> {
    let mut backoff = Duration::from_millis(50);
    let current = loop {
        match inner.read_pool(pool).await {
            Ok(current) => break current,
            Err(e) => {
                tracing::warn!(pool, error = %e, "reading the pool failed; retrying");
                backoff = next_backoff(backoff, &e);
                tokio::time::sleep(backoff).await;
            }
        }
    };
    let records = current
        .as_ref()
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.allocations().ok())
        .unwrap_or_default();
    let mut recovered = lease::Recovered::default();
    if lease::has_reservations(&records, &inner.node) {
        let endpoints = loop {
            let listed = {
                let _step = inner.health.step(pool, "listing this node's SpiderEndpoints");
                inner
                    .api
                    .list_endpoints(EndpointScope::Node(&inner.node_label))
                    .await
            };
            match listed {
                Ok(endpoints) => break endpoints,
                Err(e) => {
                    tracing::warn!(pool, error = %e, "listing this node's SpiderEndpoints failed; retrying");
                    backoff = next_backoff(backoff, &e);
                    tokio::time::sleep(backoff).await;
                }
            }
        };
        let claims = endpoint::claims(&endpoints, pool);
        recovered = lease::recover(&records, &inner.node, &claims, |uid| inner.stores.pod_alive(uid));
        for (ip, claimants) in &recovered.contested {
            inner.metrics.ambiguous_claim("endpoints");
            let pods: Vec<&str> = claimants.iter().map(|h| h.pod.as_str()).collect();
            let outcome = match (recovered.handed.get(ip), recovered.disputed.contains_key(ip)) {
                (Some(holder), _) => format!("recorded for {}, the only one alive", holder.pod),
                (None, true) => "several are alive: kept reserved for this node and out of use".to_owned(),
                (None, false) => "none is alive: unused".to_owned(),
            };
            tracing::error!(pool, %ip, ?pods, outcome, "several SpiderEndpoints of this node claim one reservation");
        }
        tracing::info!(
            pool,
            handed_out = recovered.handed.len(),
            unused = recovered.unused.len(),
            disputed = recovered.disputed.len(),
            "recovered this node's reservations"
        );
    }
    let family = current.as_deref().and_then(pool::family);
    let cooldown = current.as_ref().and_then(|p| inner.cooldown_of(pool, p));
    handle.state().set_cooldown(cooldown);
    handle.state().recover(
        &records,
        recovered,
        family,
        current
            .as_ref()
            .and_then(|p| p.metadata.resource_version.as_deref()),
        clock::now(),
    );
    current
}

/// The pause before retrying a call that failed with `error`: growing from 50 ms to 1 s, or from 30 s
/// to 5 min when the API server refused for a reason retrying will not change (RBAC, an invalid
/// object), which is then logged as an error.
fn next_backoff(previous: Duration, error: &crate::api::ApiError) -> Duration {
    if error.is_permanent() {
        tracing::error!(error = %error, "the API server refused a request for good; retrying slowly");
        (previous * 2).clamp(Refusals::FIRST, Refusals::MAX)
    } else {
        (previous * 2).min(Duration::from_secs(1))
    }
}

/// Takes what the state can answer at once out of `batch` (allocations served from reservations,
/// releases of handed-out reservations not yet recorded) and plans what else this round writes.
fn plan_round(
    pool: &str,
    handle: &Handle,
    batch: &mut Vec<Request>,
    inner: &Inner,
    force: bool,
) -> Option<RoundPlan> {
    let now = clock::now();
    let mut state = handle.state();
    inner.serve_from_state(pool, &mut state, batch, now);
    inner.count_upcoming(pool, &mut state);
    let allocating = reservations::gives_addresses(batch.iter().map(|r| &r.op));
    state.plan_round(now, &inner.tuning, allocating, !batch.is_empty(), force)
}

/// One round: decides and writes the batch plus the state's background work, retrying conflicts
/// (and growing the batch with requests that arrive meanwhile) until the write succeeds. Answers
/// every request except those that must wait for other nodes' reservations, which it returns.
async fn round(
    pool: &str,
    queue: &mut mpsc::UnboundedReceiver<Request>,
    mut batch: Vec<Request>,
    mut latest: Option<Arc<SpiderIPPool>>,
    handle: &Handle,
    inner: &Inner,
) -> RoundEnd {
    // The first round after recovery checks the recovered reservations against the pool's spec.
    let force = handle.state().needs_spec_check();
    let mut plan = match plan_round(pool, handle, &mut batch, inner, force) {
        Some(plan) if !(batch.is_empty() && plan.is_empty() && !force) => plan,
        _ => return RoundEnd::done(latest, Vec::new()),
    };
    let mut backoff = Duration::from_millis(50);
    let mut last_error = String::new();
    let mut conflicts: u64 = 0;
    loop {
        expire(pool, &mut batch, &last_error);
        if batch.is_empty() && plan.is_empty() && !force {
            return RoundEnd::done(latest, Vec::new());
        }

        let read = match latest.take() {
            Some(obj) => Ok(Some((obj, false))),
            None => inner.read_pool(pool).await.map(|p| p.map(|p| (p, true))),
        };
        let (current, read_now) = match read {
            Ok(Some(read)) => read,
            Ok(None) => {
                pool_gone(pool, batch, handle);
                return RoundEnd::done(None, Vec::new());
            }
            Err(e) if e.is_permanent() => return refused(pool, batch, plan, handle, &e),
            Err(e) => {
                last_error = e.to_string();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };

        let mut decided = match prepare(pool, &current, handle, &mut plan, &batch, inner) {
            Ok(decided) => decided,
            Err(e) => {
                answer_all(batch, |_| Err(e.clone()));
                // Nothing can be written to a pool whose spec or status cannot be read; what was
                // handed out stays handed out (recorded once the pool is fixed).
                handle.state().abandoned(plan, clock::now());
                return RoundEnd::done(Some(current), Vec::new());
            }
        };
        let Some(allocated_ips) = decided.text.take() else {
            // (Requests that only wait for other nodes' reservations or a cooldown are answered
            // nothing: they need no read, and ask again when the cache shows the pool changed.)
            let answers = decided
                .output
                .outcomes
                .iter()
                .any(|o| !matches!(o, Outcome::Wait(_)));
            if answers && !read_now {
                // Nothing to write, so no resourceVersion check will catch a stale decision: the
                // answers (a retried ADD's address, a release of what is not held) must come from
                // the pool as it is, not as this node last wrote or saw it. Read it and decide again.
                handle.state().abandoned(plan.clone(), clock::now());
                plan = match plan_round(pool, handle, &mut batch, inner, true) {
                    Some(plan) => plan,
                    None => return RoundEnd::done(None, Vec::new()),
                };
                continue;
            }
            // Nothing changes (repeated ADDs, releases of what is not held): no write needed.
            let waiting = finish(pool, handle, inner, &current, &plan, decided, batch);
            return RoundEnd::done(Some(current), waiting);
        };

        let write = PoolStatusWrite {
            resource_version: current.metadata.resource_version.clone(),
            allocated_ips,
            allocated_ip_count: decided.count,
        };
        // The shell's clock (tokio's), so that a paused test clock measures the write too.
        let started = clock::now();
        let result = {
            let _step = inner.health.step(pool, "writing the pool status");
            inner.api.write_pool_status(pool, &write).await
        };
        let took = clock::now().saturating_duration_since(started);
        inner.metrics.pool_write(took, batch.len());
        match result {
            Ok(updated) => {
                let updated = pool_cache::shareable(updated);
                inner.stores.pools.offer(Arc::clone(&updated));
                tracing::debug!(
                    pool,
                    requests = batch.len(),
                    recorded_handouts = plan.converting.len(),
                    released = plan.releasing.len(),
                    returned = plan.returning.len(),
                    extra_wanted = plan.extra_wanted,
                    reserved = decided.output.reserved.len(),
                    conflicts,
                    "pool status written"
                );
                let waiting = finish(pool, handle, inner, &updated, &plan, decided, batch);
                return RoundEnd::done(Some(updated), waiting);
            }
            Err(e) if e.is_conflict() => {
                inner.metrics.pool_conflict();
                tracing::debug!(
                    pool,
                    batch = batch.len(),
                    "pool status write conflicted; deciding again"
                );
                last_error = "conflicting writes from other nodes".to_owned();
                conflicts += 1;
                // Back off, randomised, so that nodes contending for one pool stop colliding in
                // lockstep; meanwhile more requests queue and the next write decides more of them.
                if batch.is_empty() {
                    let writers = writers_seen(&current, handle, inner);
                    let window = jitter(conflict_window(took, conflicts, Some(writers)));
                    let pause = Pause { window, conflicts };
                    pause
                        .step_aside(pool, queue, &mut batch, &mut plan, handle, inner)
                        .await;
                } else {
                    tokio::time::sleep(jitter(conflict_window(took, conflicts, None))).await;
                }
                // The winner's version: from the cache if it holds it whole (a spec change is read
                // whole), else read once the watch has shown it.
                latest = newer_from_store(
                    inner,
                    pool,
                    current.metadata.resource_version.as_deref(),
                    Duration::from_millis(30),
                )
                .await;
                merge_queued(pool, Vec::new(), queue, &mut batch, &mut plan, handle, inner);
            }
            Err(e) if e.is_not_found() => {
                pool_gone(pool, batch, handle);
                return RoundEnd::done(None, Vec::new());
            }
            Err(e) if e.is_permanent() => return refused(pool, batch, plan, handle, &e),
            Err(e) => {
                tracing::warn!(pool, error = %e, "pool status write failed; retrying");
                last_error = e.to_string();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                merge_queued(pool, Vec::new(), queue, &mut batch, &mut plan, handle, inner);
            }
        }
    }
}

/// The API server refused the pool for good: every request fails at once (retrying until its
/// deadline would only delay the same answer), and what the round had taken goes back to the state
/// for a later round.
fn refused(
    pool: &str,
    batch: Vec<Request>,
    plan: RoundPlan,
    handle: &Handle,
    error: &crate::api::ApiError,
) -> RoundEnd {
    tracing::error!(pool, error = %error, "the API server refused the pool; failing its requests");
    answer_all(batch, |_| {
        Err(WriteError::Refused {
            pool: pool.to_owned(),
            error: error.to_string(),
        })
    });
    handle.state().abandoned(plan, clock::now());
    RoundEnd {
        latest: None,
        waiting: Vec::new(),
        refused: true,
    }
}

/// A decided round: the new records (`None`: nothing changed) and the pure decision.
struct Decided {
    text: Option<Option<String>>,
    count: usize,
    usable: IpSet,
    output: lease::RoundOutput,
    records: BTreeMap<String, PoolIPAllocation>,
}

/// Checks the state against `current` (unused reservations the spec no longer allows go back) and
/// decides the round.
fn prepare(
    pool: &str,
    current: &SpiderIPPool,
    handle: &Handle,
    plan: &mut RoundPlan,
    batch: &[Request],
    inner: &Inner,
) -> Result<Decided, WriteError> {
    let bad = |reason: String| WriteError::BadPool {
        pool: pool.to_owned(),
        reason,
    };
    let encode = |records: &BTreeMap<String, PoolIPAllocation>| {
        serde_json::to_string(records).map_err(|e| bad(e.to_string()))
    };
    let family = pool::family(current)
        .ok_or_else(|| bad(format!("spec.subnet {} is not a CIDR", current.spec.subnet)))?;
    let reserved = inner.stores.reserved_ips(family);
    let usable = pick::pool_usable(current, family, &reserved).map_err(bad)?;
    let mut records = match &current.status {
        Some(status) => status
            .allocations()
            .map_err(|e| bad(format!("status.allocatedIPs is not valid JSON: {e}")))?,
        None => BTreeMap::new(),
    };
    // Whether the round changes the records is whether they still encode the same: the encoding of
    // a big pool is a fraction of the memory a copy of the decoded records takes, and it is made
    // anyway when they change.
    let before = encode(&records)?;

    let kept = handle.state().check_spec(plan, &usable, family);
    let ops: Vec<Op> = batch.iter().map(|r| r.op.clone()).collect();
    let output = lease::decide_round(
        &mut records,
        &RoundInput {
            node: &inner.node,
            usable: &usable,
            max_records: inner.max_records,
            converting: &plan.converting,
            releasing: &plan.releasing,
            keep_released: plan.keep_released,
            hold_releases: plan.hold_releases,
            cooling: plan.cooling,
            returning: &plan.returning,
            kept: &kept,
            ops: &ops,
            extra_wanted: plan.extra_wanted,
        },
    );
    let count = spiderpool_schema::ippool::count_held(&records);
    let after = encode(&records)?;
    let text = if after == before {
        None
    } else if records.is_empty() {
        Some(None)
    } else {
        Some(Some(after))
    };
    Ok(Decided {
        text,
        count,
        usable,
        output,
        records,
    })
}

/// After a round's write succeeded (or nothing needed writing): updates the state, reports lost
/// handouts, answers the requests and returns those that wait for other nodes' reservations.
fn finish(
    pool: &str,
    handle: &Handle,
    inner: &Inner,
    written: &SpiderIPPool,
    plan: &RoundPlan,
    decided: Decided,
    batch: Vec<Request>,
) -> Vec<Request> {
    handle.state().committed(
        plan,
        &decided.output,
        &decided.records,
        &decided.usable,
        written.metadata.generation,
        written.metadata.resource_version.as_deref(),
        clock::now(),
        &inner.tuning,
    );
    report_records(pool, handle, inner, &decided.output);
    for (ip, holder, why) in &decided.output.lost {
        inner.metrics.reservation_lost();
        tracing::error!(
            pool,
            %ip,
            pod = holder.pod,
            pod_uid = holder.pod_uid,
            why,
            "an address handed out from this node's reservation could not be recorded for its pod"
        );
    }
    let mut waiting = Vec::new();
    for (mut request, outcome) in batch.into_iter().zip(decided.output.outcomes) {
        match outcome {
            Outcome::Wait(why) if request.may_wait => {
                request.waiting_for = Some(why);
                waiting.push(request);
            }
            other => {
                let _ = request.reply.send(Ok(other));
            }
        }
    }
    waiting
}

/// Logs the pool's foreign record keys and its addresses claimed by several records when they
/// change (and counts each newly ambiguous address).
fn report_records(pool: &str, handle: &Handle, inner: &Inner, output: &lease::RoundOutput) {
    let mut reported = handle
        .reported
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if reported.foreign_keys != output.foreign_keys {
        if !output.foreign_keys.is_empty() {
            tracing::warn!(
                pool,
                keys = ?output.foreign_keys,
                "status.allocatedIPs has records whose keys are not canonical addresses of the pool; they \
                 are kept and count as occupying every address they may name"
            );
        }
        reported.foreign_keys.clone_from(&output.foreign_keys);
    }
    if reported.ambiguous != output.ambiguous {
        for (ip, keys) in &output.ambiguous {
            if !reported.ambiguous.iter().any(|(seen, _)| seen == ip) {
                inner.metrics.ambiguous_claim("records");
                tracing::error!(
                    pool,
                    %ip,
                    ?keys,
                    "several records of the pool name one address; it stays occupied until each is \
                     released by the pod it names, and is not handed out"
                );
            }
        }
        reported.ambiguous.clone_from(&output.ambiguous);
    }
}

/// The pool is gone: every request fails and nothing is reserved any more.
fn pool_gone(pool: &str, batch: Vec<Request>, handle: &Handle) {
    answer_all(batch, |_| Err(WriteError::PoolGone(pool.to_owned())));
    handle.state().clear();
}

/// Answers requests whose caller gave up or whose deadline passed.
fn expire(pool: &str, batch: &mut Vec<Request>, last_error: &str) {
    let now = clock::now();
    batch.retain(|r| !r.reply.is_closed());
    let (expired, live): (Vec<_>, Vec<_>) =
        std::mem::take(batch).into_iter().partition(|r| r.deadline <= now);
    *batch = live;
    for r in expired {
        let why = match (&r.waiting_for, last_error.is_empty()) {
            (Some(why), _) => why.clone(),
            (None, false) => last_error.to_owned(),
            (None, true) => "deadline passed while queued".to_owned(),
        };
        let _ = r.reply.send(Err(WriteError::Timeout {
            pool: pool.to_owned(),
            last_error: why,
            waited_for_reservations: r.waiting_for.is_some(),
        }));
    }
}

/// Adds `more` and the requests queued meanwhile to the batch, answering what the state can answer
/// at once.
fn merge_queued(
    pool: &str,
    mut more: Vec<Request>,
    queue: &mut mpsc::UnboundedReceiver<Request>,
    batch: &mut Vec<Request>,
    plan: &mut RoundPlan,
    handle: &Handle,
    inner: &Inner,
) {
    while let Ok(request) = queue.try_recv() {
        more.push(request);
    }
    if more.is_empty() {
        return;
    }
    {
        let mut state = handle.state();
        inner.serve_from_state(pool, &mut state, &mut more, clock::now());
        // Releases answered at once since the round was planned join it too, to be decided before
        // the merged requests: else a pod's next sandbox asking for an address would be answered,
        // from the pod's record, the address its previous sandbox just gave back, and the next
        // round would free it under the pod.
        plan.releasing.append(&mut state.take_releasing());
    }
    plan.joined(reservations::gives_addresses(more.iter().map(|r| &r.op)));
    batch.extend(more);
}

/// The longest a writer waits after its `streak`th conflict in a row on one pool, the losing write
/// having taken `attempt`. It grows with the streak. Background work (`background_writers`: nobody
/// waits on it; how many nodes write the pool) steps aside for longer, leaving the pool to writes
/// that pods are waiting for, and for at least half as long as its losing write took: a write the
/// API server took long over (a big pool: every write carries all its records) loses its races for
/// as long, and retrying sooner only sends another whole pool that loses too; a storm of such
/// writes is what saturated the API server. It also grows with the number of nodes writing the
/// pool: nodes whose pods arrive together top up together, and a window one write long spread the
/// losers of such a race too little to keep them from colliding again (with 100 agents, ten to a
/// pool, about 1.5 lost writes per successful top-up while the pods were bound). A write that pods
/// wait for keeps short steps: in the 1,000-pod bench, backing off for a part of the write time
/// made their p99 ADD worse (top-level README, "Known limitations").
fn conflict_window(attempt: Duration, streak: u64, background_writers: Option<usize>) -> Duration {
    let step = match background_writers {
        Some(writers) => {
            let writers = u32::try_from(writers.clamp(1, 100)).unwrap_or(1);
            Duration::from_millis(25).max(attempt / 2).saturating_mul(writers)
        }
        None => Duration::from_millis(2),
    };
    let streak = u32::try_from(streak.clamp(1, 10)).unwrap_or(10);
    step.saturating_mul(streak).min(MAX_CONFLICT_WINDOW)
}

/// How many nodes write `pool`, this one included, by the most this writer has seen: its last view,
/// or the version it just lost a race with (that version's own reservations; the winner's are not
/// known until read).
fn writers_seen(pool: &SpiderIPPool, handle: &Handle, inner: &Inner) -> usize {
    let text = pool
        .status
        .as_ref()
        .and_then(|s| s.allocated_ips.as_deref())
        .unwrap_or_default();
    let in_pool = lease::count_records(text, &inner.node).other_nodes + 1;
    handle.state().writers().max(in_pool)
}

/// Background work's pause after its `conflicts`th conflict in a row.
struct Pause {
    window: Duration,
    conflicts: u64,
}

impl Pause {
    /// Waits out the window, unless a request arrives first that the writer cannot answer from its
    /// reservations (a pod waits on it): the round takes it in and goes on after the short pause of
    /// work pods wait on. A pod must not wait out a window that was sized for work nobody waits on
    /// (up to [`MAX_CONFLICT_WINDOW`] on a big pool).
    async fn step_aside(
        self,
        pool: &str,
        queue: &mut mpsc::UnboundedReceiver<Request>,
        batch: &mut Vec<Request>,
        plan: &mut RoundPlan,
        handle: &Handle,
        inner: &Inner,
    ) {
        let until = clock::deadline_in(self.window);
        loop {
            let arrived = tokio::select! {
                () = clock::sleep_until(until) => return,
                arrived = queue.recv() => arrived,
            };
            let Some(request) = arrived else {
                // Nothing more will come: the whole window, or a closed queue would spin the round.
                clock::sleep_until(until).await;
                return;
            };
            merge_queued(pool, vec![request], queue, batch, plan, handle, inner);
            if !batch.is_empty() {
                let short = conflict_window(Duration::ZERO, self.conflicts, None);
                let left = until.saturating_duration_since(clock::now());
                tokio::time::sleep(jitter(short).min(left)).await;
                return;
            }
        }
    }
}

/// The most a writer waits after a conflict.
const MAX_CONFLICT_WINDOW: Duration = Duration::from_secs(2);

/// A uniformly random duration in `[0, max)`.
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(random % nanos)
}

/// The pool once the watch has shown a version later than `tried` (waiting up to `wait`): the cached
/// one if the cache holds that version, else `None` (the caller then reads it from the API server),
/// as also when nothing later was shown in time.
async fn newer_from_store(
    inner: &Inner,
    pool: &str,
    tried: Option<&str>,
    wait: Duration,
) -> Option<Arc<SpiderIPPool>> {
    let deadline = clock::deadline_in(wait);
    loop {
        if let Some(shown) = inner.stores.pools.shown(pool)
            && is_newer(shown.version.as_deref(), tried)
        {
            return held_at(inner, pool, shown.version.as_deref());
        }
        if clock::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `kept`, or the pool at the later version the watch has shown if the cache holds it whole (`None`:
/// the pool is to be read; so also when nothing is kept and the cache is behind the watch).
fn newest_of(inner: &Inner, pool: &str, kept: Option<Arc<SpiderIPPool>>) -> Option<Arc<SpiderIPPool>> {
    let shown = inner.stores.pools.shown(pool)?;
    match kept {
        Some(kept)
            if !is_newer(
                shown.version.as_deref(),
                kept.metadata.resource_version.as_deref(),
            ) =>
        {
            Some(kept)
        }
        _ => held_at(inner, pool, shown.version.as_deref()),
    }
}

/// The cached whole pool if it is at `version` or later.
fn held_at(inner: &Inner, pool: &str, version: Option<&str>) -> Option<Arc<SpiderIPPool>> {
    inner
        .stores
        .pool(pool)
        .filter(|whole| !is_newer(version, whole.metadata.resource_version.as_deref()))
}

fn answer_all(batch: Vec<Request>, result: impl Fn(&Op) -> Result<Outcome, WriteError>) {
    for r in batch {
        let answer = result(&r.op);
        let _ = r.reply.send(answer);
    }
}
#[cfg(test)]
mod tests;
