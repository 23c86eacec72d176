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
//!   means another node wrote first: the writer takes the winner's version (from the watch, else a
//!   read) and decides again, merging requests that arrived meanwhile. There is no retry limit: a
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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use spiderpool_ipmath::{IpFamily, IpSet};
use spiderpool_schema::ippool::PoolIPAllocation;
use spiderpool_schema::{SpiderEndpoint, SpiderIPPool};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::ipam::lease::{self, Holder, RoundInput};
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
        /// The request was decided and waited for other nodes' reservations ([`Outcome::Wait`]),
        /// rather than failing to write.
        waited_for_reservations: bool,
    },
    /// The writer task is gone (daemon shutting down).
    #[error("the writer of SpiderIPPool {0} stopped")]
    Stopped(String),
}

/// Sizes and timings of this node's reservations.
#[derive(Debug, Clone)]
pub struct LeaseTuning {
    /// Most unused reservations a node holds in one pool; 0 turns reservations off (every ADD then
    /// waits for its own pool write, as upstream does).
    pub max_size: usize,
    /// Record handed-out reservations for their pods once no address was handed out for this long…
    pub flush_idle: Duration,
    /// …or once the oldest has waited this long.
    pub flush_max_age: Duration,
    /// Give unused reservations back once no address was asked for this long…
    pub idle_return: Duration,
    /// …or this long while nothing else in the pool is free.
    pub tight_return: Duration,
}

impl Default for LeaseTuning {
    fn default() -> Self {
        LeaseTuning {
            max_size: 128,
            flush_idle: Duration::from_millis(200),
            flush_max_age: Duration::from_secs(2),
            idle_return: Duration::from_secs(2),
            tight_return: Duration::from_millis(500),
        }
    }
}

/// Unused reservations a node with pods still to come keeps while the pool has nothing else free,
/// however small its target: enough for its next pod or two ([`lease::excess_to_return`]).
const TIGHT_KEEP: usize = 2;
/// How often a node holding unused reservations looks (in its watch cache) whether the pool filled up.
const TIGHT_CHECK: Duration = Duration::from_millis(50);
/// After a top-up that got fewer addresses than wanted, wait this long before the next one (the pool
/// is nearly full; trying again at once would only spin).
const SHORT_REFILL_PAUSE: Duration = Duration::from_millis(100);

struct Request {
    op: Op,
    deadline: Instant,
    reply: oneshot::Sender<Result<Outcome, WriteError>>,
    /// Why the request is still waiting, for the error if its deadline passes.
    waiting_for: Option<String>,
}

/// The writers of every pool this daemon touched.
#[derive(Clone)]
pub struct PoolWriters {
    inner: Arc<Inner>,
}

struct Inner {
    api: Api<SpiderIPPool>,
    endpoints: Api<SpiderEndpoint>,
    node: String,
    node_label: String,
    stores: Stores,
    metrics: Metrics,
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
}

/// One pool's writer: its queue and this node's reservations in the pool.
struct Handle {
    queue: mpsc::UnboundedSender<Request>,
    lease: std::sync::Mutex<Lease>,
    /// Tells the writer that the lease changed (an address was handed out), so it re-plans its timers.
    wake: Notify,
}

impl Handle {
    /// The lease, locked (a poisoned lock is used as it is, as everywhere in this daemon).
    fn lease(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// This node's reservations in one pool, shared by [`PoolWriters::submit`] and the writer task.
#[derive(Default)]
struct Lease {
    /// Recovered after start and checked against the pool's current spec: reservations may be
    /// handed out.
    ready: bool,
    /// The pool generation (spec) the reservations were last checked against.
    generation: Option<i64>,
    family: Option<IpFamily>,
    /// Reserved for this node by a successful write, not handed out.
    free: BTreeSet<IpAddr>,
    /// Handed out, not yet recorded for their pods.
    handed: BTreeMap<IpAddr, Holder>,
    /// Given back by this node's pods (address to the UID that held it), still recorded for them.
    releasing: BTreeMap<IpAddr, String>,
    /// When the oldest and the newest of `handed` and `releasing` were added.
    oldest_pending: Option<Instant>,
    last_pending: Option<Instant>,
    /// Pod UID to address, for every pod known to hold an address of the pool (a retried ADD gets
    /// the same answer).
    holders: HashMap<String, IpAddr>,
    /// When an allocation was last asked for.
    last_demand: Option<Instant>,
    /// Pods bound to this node that wait for their network and hold no address of the pool yet
    /// ([`Stores::pods_awaiting_network`]), as last counted.
    upcoming: usize,
    /// The pool has nothing free outside reservations (as last written or seen in the watch cache).
    tight: bool,
    /// How many addresses the pool may give out, for the spec generation it was counted at.
    usable_count: Option<(Option<i64>, u128)>,
    /// This node's even share of the addresses no pod holds ([`lease::even_share`]) and how many
    /// are free outside reservations, as the watch cache shows the pool (`None`: not known).
    even_share: Option<usize>,
    outside_free: Option<usize>,
    /// The pool version `tight`, `even_share` and `outside_free` were last read from in the watch
    /// cache.
    viewed_version: Option<String>,
    /// When a top-up last got fewer addresses than wanted.
    short_refill: Option<Instant>,
}

impl Lease {
    fn note_demand(&mut self, now: Instant) {
        self.last_demand = Some(now);
    }

    /// Counts the pods still to come ([`Lease::upcoming`]) for `pool`: those guessed to ask only
    /// other pools ([`PoolWriters::note_guess`]) do not count. The cache is read afresh because pods
    /// arrive and start without the pool changing.
    fn count_upcoming(&mut self, pool: &str, inner: &Inner) {
        let holders = &self.holders;
        let guesses = inner.guesses();
        self.upcoming = inner.stores.pods_awaiting_network(|uid| {
            holders.contains_key(uid)
                || guesses
                    .get(uid)
                    .is_some_and(|pools| !pools.iter().any(|p| p == pool))
        });
    }

    /// How many unused reservations this node should hold now ([`lease::target_size`]).
    fn target(&self, tuning: &LeaseTuning) -> usize {
        lease::target_size(self.upcoming, self.even_share, tuning.max_size)
    }

    /// How long without an allocation before unused reservations go back: shorter while the pool has
    /// nothing free outside reservations.
    fn idle_return(&self, tuning: &LeaseTuning) -> Duration {
        if self.tight {
            tuning.tight_return
        } else {
            tuning.idle_return
        }
    }

    /// How many unused reservations to give back now ([`lease::excess_to_return`]): only while the
    /// pool has nothing free outside reservations.
    fn excess(&self, tuning: &LeaseTuning) -> usize {
        if !self.tight {
            return 0;
        }
        // A node with no pods to come keeps nothing back.
        lease::excess_to_return(
            self.free.len(),
            self.target(tuning),
            TIGHT_KEEP.min(self.upcoming),
        )
    }

    fn hand_out(&mut self, ip: IpAddr, holder: Holder, now: Instant) {
        self.holders.insert(holder.pod_uid.clone(), ip);
        self.handed.insert(ip, holder);
        self.note_pending(now);
    }

    fn note_pending(&mut self, now: Instant) {
        self.oldest_pending.get_or_insert(now);
        self.last_pending = Some(now);
    }

    fn has_pending(&self) -> bool {
        !self.handed.is_empty() || !self.releasing.is_empty()
    }

    /// What the lease can answer at once: an allocation from a pod that already holds an address or
    /// from an unused reservation; a release of an address handed out but not yet recorded (it is
    /// unused again) or of a pod's recorded address (it becomes this node's reservation in the next
    /// write; until then nobody else can take it, and nobody here hands it out).
    fn answer(&mut self, pool: &str, op: &Op, stores: &Stores, now: Instant) -> Option<Outcome> {
        if !self.ready {
            return None;
        }
        match op {
            Op::Allocate { pod, pod_uid } => {
                if let Some(ip) = self.holders.get(pod_uid) {
                    return Some(Outcome::Allocated(*ip));
                }
                let ip = usable_reservation(self, pool, stores)?;
                self.free.remove(&ip);
                self.hand_out(
                    ip,
                    Holder {
                        pod: pod.clone(),
                        pod_uid: pod_uid.clone(),
                    },
                    now,
                );
                Some(Outcome::Allocated(ip))
            }
            Op::Release { ip, pod_uid } => {
                if self.handed.get(ip).is_some_and(|h| &h.pod_uid == pod_uid) {
                    self.handed.remove(ip);
                    self.holders.remove(pod_uid);
                    self.free.insert(*ip);
                    return Some(Outcome::Released(true));
                }
                if self.holders.get(pod_uid) == Some(ip) {
                    self.holders.remove(pod_uid);
                    self.releasing.insert(*ip, pod_uid.clone());
                    self.note_pending(now);
                    return Some(Outcome::Released(true));
                }
                None
            }
            Op::Rebind { .. } => None,
        }
    }

    /// When the writer should next run a background round (record handouts, give back, top up).
    fn next_due(&mut self, now: Instant, tuning: &LeaseTuning) -> Option<Instant> {
        let mut due: Option<Instant> = None;
        let mut consider = |at: Instant| due = Some(due.map_or(at, |d| d.min(at)));
        if self.has_pending() {
            if let Some(last) = self.last_pending {
                consider(last + tuning.flush_idle);
            }
            if let Some(oldest) = self.oldest_pending {
                consider(oldest + tuning.flush_max_age);
            }
        }
        if !self.free.is_empty() {
            consider(self.last_demand.unwrap_or(now) + self.idle_return(tuning));
            if self.excess(tuning) > 0 {
                consider(now);
            } else if !self.tight {
                consider(now + TIGHT_CHECK);
            }
        }
        if self.ready && self.refill_wanted(now, tuning) {
            consider(self.short_refill.map_or(now, |t| t + SHORT_REFILL_PAUSE));
        }
        due
    }

    /// A top-up is worth a write of its own: pods are starting here (one asked for an address
    /// within `tight_return`, the idle time after which a full pool takes reservations back: a
    /// top-up after it would be given back at once), half the target is used up, and enough is free
    /// outside reservations.
    fn refill_wanted(&self, now: Instant, tuning: &LeaseTuning) -> bool {
        if self.tight
            || self
                .last_demand
                .is_none_or(|t| now.duration_since(t) >= tuning.tight_return)
        {
            return false;
        }
        let target = self.target(tuning);
        target > 0
            && self.free.len() <= target / 2
            && self
                .outside_free
                .is_none_or(|free| free.min(target - self.free.len()) >= lease::worthwhile_refill(target))
    }
}

/// What one round writes besides its queued requests.
#[derive(Default)]
struct Snapshot {
    converting: BTreeMap<IpAddr, Holder>,
    releasing: BTreeMap<IpAddr, String>,
    keep_released: bool,
    returning: BTreeSet<IpAddr>,
    extra_wanted: usize,
}

impl Snapshot {
    fn is_empty(&self) -> bool {
        self.converting.is_empty()
            && self.releasing.is_empty()
            && self.returning.is_empty()
            && self.extra_wanted == 0
    }
}

impl PoolWriters {
    /// Writers for this node (`node`) using `api` (cluster-scoped SpiderIPPools), `endpoints` (all
    /// namespaces, read after a restart), the caches and metrics.
    #[allow(clippy::too_many_arguments, reason = "one call site; plain settings")]
    pub fn new(
        api: Api<SpiderIPPool>,
        endpoints: Api<SpiderEndpoint>,
        node: &str,
        node_label: &str,
        stores: Stores,
        metrics: Metrics,
        max_records: usize,
        tuning: LeaseTuning,
    ) -> Self {
        PoolWriters {
            inner: Arc::new(Inner {
                api,
                endpoints,
                node: node.to_owned(),
                node_label: node_label.to_owned(),
                stores,
                metrics,
                max_records,
                tuning,
                pools: std::sync::Mutex::new(HashMap::new()),
                guesses: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Starts the writer of every pool in the cache that holds reservations of this node, so that a
    /// restarted daemon records or gives back what its previous run reserved even if no pod asks
    /// for those pools again.
    pub fn recover_reservations(&self) {
        let marker = format!("\"reservedForNode\":\"{}\"", self.inner.node);
        for pool in self.inner.stores.pools() {
            let holds_ours = pool
                .status
                .as_ref()
                .and_then(|s| s.allocated_ips.as_deref())
                .is_some_and(|text| text.contains(&marker));
            if holds_ours && let Some(name) = pool.metadata.name.as_deref() {
                tracing::info!(pool = name, "recovering this node's reservations");
                self.handle(name);
            }
        }
    }

    /// Submits one change to `pool` and waits for its outcome (or `timeout`). Allocations and
    /// releases are answered at once from this node's reservations when they can be
    /// ([`Lease::answer`]).
    pub async fn submit(&self, pool: &str, op: Op, timeout: Duration) -> Result<Outcome, WriteError> {
        let handle = self.handle(pool);
        if let Some(outcome) = self.serve_at_once(pool, &handle, &op) {
            return Ok(outcome);
        }
        let (reply, answer) = oneshot::channel();
        let request = Request {
            op,
            deadline: Instant::now() + timeout,
            reply,
            waiting_for: None,
        };
        handle
            .queue
            .send(request)
            .map_err(|_| WriteError::Stopped(pool.to_owned()))?;
        answer.await.map_err(|_| WriteError::Stopped(pool.to_owned()))?
    }

    /// Pods bound to this node will soon ask `pool` for addresses ([`crate::ahead`]): counts as demand,
    /// so the writer (started if need be) tops up this node's reservations for the pods to come as
    /// it would after an ADD, and keeps them until the node goes idle. Does nothing when
    /// reservations are off.
    pub fn expect_demand(&self, pool: &str) {
        if self.inner.tuning.max_size == 0 {
            return;
        }
        let handle = self.handle(pool);
        handle.lease().note_demand(Instant::now());
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

    fn handle(&self, pool: &str) -> Arc<Handle> {
        let mut pools = self.inner.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .entry(pool.to_owned())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                let handle = Arc::new(Handle {
                    queue: tx,
                    lease: std::sync::Mutex::new(Lease::default()),
                    wake: Notify::new(),
                });
                tokio::spawn(run_writer(
                    pool.to_owned(),
                    rx,
                    handle.clone(),
                    self.inner.clone(),
                ));
                handle
            })
            .clone()
    }

    /// The fast path ([`Lease::answer`]).
    fn serve_at_once(&self, pool: &str, handle: &Handle, op: &Op) -> Option<Outcome> {
        let now = Instant::now();
        let mut lease = handle.lease();
        if matches!(op, Op::Allocate { .. }) {
            lease.note_demand(now);
        }
        let outcome = lease.answer(pool, op, &self.inner.stores, now)?;
        drop(lease);
        handle.wake.notify_one();
        if matches!(outcome, Outcome::Allocated(_)) {
            self.inner.metrics.reserved_handout();
        }
        Some(outcome)
    }
}

/// What the watch cache shows of the pool: whether it has nothing free outside reservations (as many
/// records as usable addresses), how many are free, and this node's even share of what no pod holds
/// ([`lease::even_share`]). Counting records by their `"podUid"` key and reservations by their
/// `"reservedForNode"` values avoids decoding the whole (possibly large) status; the usable count is
/// kept per spec generation, and nothing is read again until the cache holds another version (the
/// writer wakes for every handout, and most of those find the pool as it was).
fn refresh_view(lease: &mut Lease, pool: &str, node: &str, stores: &Stores) {
    let Some(cached) = stores.pool(pool) else { return };
    if cached.metadata.resource_version.is_some() && lease.viewed_version == cached.metadata.resource_version
    {
        return;
    }
    let generation = cached.metadata.generation;
    let usable = match lease.usable_count {
        Some((counted_at, count)) if counted_at == generation => count,
        _ => {
            let Some(family) = pool_family(&cached) else {
                return;
            };
            let reserved = stores.reserved_ips(family);
            let Ok(usable) = pick::usable_addresses(&cached.spec, family, &reserved) else {
                return;
            };
            let count = usable.len();
            lease.usable_count = Some((generation, count));
            count
        }
    };
    let text = cached
        .status
        .as_ref()
        .and_then(|s| s.allocated_ips.as_deref())
        .unwrap_or_default();
    let records = text.matches("\"podUid\"").count();
    let free = usize::try_from(usable.saturating_sub(u128::try_from(records).unwrap_or(u128::MAX)))
        .unwrap_or(usize::MAX);
    lease.tight = free == 0;
    let mut reservations = 0_usize;
    let mut others: BTreeSet<&str> = BTreeSet::new();
    for name in text
        .split("\"reservedForNode\":\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
    {
        reservations += 1;
        if name != node {
            others.insert(name);
        }
    }
    lease.even_share = Some(lease::even_share(free.saturating_add(reservations), others.len()));
    lease.outside_free = Some(free);
    lease.viewed_version.clone_from(&cached.metadata.resource_version);
}

/// The lowest unused reservation that may be handed out now: the pool's spec has not changed since
/// the reservations were checked against it (else the writer checks again first), the pool is not
/// being deleted, and no SpiderReservedIP took the address since.
fn usable_reservation(lease: &Lease, pool: &str, stores: &Stores) -> Option<IpAddr> {
    if lease.free.is_empty() {
        return None;
    }
    let cached = stores.pool(pool)?;
    if cached.metadata.generation != lease.generation || cached.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let reserved = stores.reserved_ips(lease.family?);
    lease.free.iter().find(|ip| !reserved.contains(ip)).copied()
}

async fn run_writer(
    pool: String,
    mut queue: mpsc::UnboundedReceiver<Request>,
    handle: Arc<Handle>,
    inner: Arc<Inner>,
) {
    let mut latest = recover(&pool, &handle, &inner).await;
    let mut waiting: Vec<Request> = Vec::new();
    loop {
        let mut batch = std::mem::take(&mut waiting);
        if batch.is_empty() {
            let due = {
                let mut lease = handle.lease();
                refresh_view(&mut lease, &pool, &inner.node, &inner.stores);
                lease.count_upcoming(&pool, &inner);
                lease.next_due(Instant::now(), &inner.tuning)
            };
            let sleep = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
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
        let (fresh, still_waiting) = round(&pool, &mut queue, batch, latest, &handle, &inner).await;
        latest = fresh;
        waiting = still_waiting;
    }
}

/// Reads the pool and, if it holds reservations of this node (a previous run's), finds out from this
/// node's endpoints which of them were handed to pods. Retries until it can read.
async fn recover(pool: &str, handle: &Handle, inner: &Inner) -> Option<SpiderIPPool> {
    let mut backoff = Duration::from_millis(50);
    let current = loop {
        match inner.api.get_opt(pool).await {
            Ok(current) => break current,
            Err(e) => {
                tracing::warn!(pool, error = %e, "reading the pool failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    };
    let records = current
        .as_ref()
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.allocations().ok())
        .unwrap_or_default();
    let mut recovered = (BTreeMap::new(), BTreeSet::new());
    if lease::has_reservations(&records, &inner.node) {
        let claims = loop {
            match endpoint_claims(pool, inner).await {
                Ok(claims) => break claims,
                Err(e) => {
                    tracing::warn!(pool, error = %e, "listing this node's SpiderEndpoints failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        };
        recovered = lease::recover(&records, &inner.node, &claims);
        tracing::info!(
            pool,
            handed_out = recovered.0.len(),
            unused = recovered.1.len(),
            "recovered this node's reservations"
        );
    }
    let (handed, unused) = recovered;
    let mut lease = handle.lease();
    lease.holders = lease::holders(&records);
    let now = Instant::now();
    for (ip, holder) in handed {
        lease.hand_out(ip, holder, now);
    }
    // Unused ones are checked against the pool's spec by the first round before being handed out.
    lease.free = unused;
    lease.generation = None;
    lease.family = current.as_ref().and_then(pool_family);
    lease.ready = true;
    current
}

/// What this node's endpoints say they hold from `pool`.
async fn endpoint_claims(pool: &str, inner: &Inner) -> Result<HashMap<IpAddr, Holder>, kube::Error> {
    let selector = format!("{}={}", crate::allocator::LABEL_NODE, inner.node_label);
    let list = inner
        .endpoints
        .list(&ListParams::default().labels(&selector))
        .await?;
    let mut claims = HashMap::new();
    for ep in list {
        let Some(status) = ep.status.as_ref() else {
            continue;
        };
        let namespace = ep.metadata.namespace.clone().unwrap_or_default();
        // For a VM the endpoint is named after the VM, not its launcher pod; the UID is what counts
        // (rebinds and reclaim match by UID).
        let name = ep.metadata.name.clone().unwrap_or_default();
        for detail in &status.current.ips {
            for (address, from) in [
                (&detail.ipv4, &detail.ipv4_pool),
                (&detail.ipv6, &detail.ipv6_pool),
            ] {
                if from.as_deref() != Some(pool) {
                    continue;
                }
                let Some(ip) = address
                    .as_deref()
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse::<IpAddr>().ok())
                else {
                    continue;
                };
                claims.insert(
                    ip,
                    Holder {
                        pod: format!("{namespace}/{name}"),
                        pod_uid: status.current.uid.clone(),
                    },
                );
            }
        }
    }
    Ok(claims)
}

/// Takes what the lease can answer at once out of `batch` (allocations served from reservations,
/// releases of handed-out reservations not yet recorded) and decides what else this round writes.
fn take_snapshot(
    pool: &str,
    handle: &Handle,
    batch: &mut Vec<Request>,
    inner: &Inner,
    force: bool,
) -> Snapshot {
    let now = Instant::now();
    let tuning = &inner.tuning;
    let mut lease = handle.lease();
    serve_from_lease(pool, &mut lease, batch, inner, now);
    lease.count_upcoming(pool, inner);

    let idle = lease.idle_return(tuning);
    let return_due =
        !lease.free.is_empty() && lease.last_demand.is_none_or(|t| now.duration_since(t) >= idle);
    let flush_due = lease.has_pending()
        && (lease
            .last_pending
            .is_none_or(|t| now.duration_since(t) >= tuning.flush_idle)
            || lease
                .oldest_pending
                .is_none_or(|t| now.duration_since(t) >= tuning.flush_max_age));
    let refill_due = lease.refill_wanted(now, tuning)
        && lease
            .short_refill
            .is_none_or(|t| now.duration_since(t) >= SHORT_REFILL_PAUSE);
    let excess = lease.excess(tuning);
    let excess_due = excess > 0;
    let writes_anyway = !batch.is_empty() || force;
    if !(writes_anyway || return_due || flush_due || refill_due || excess_due) {
        return Snapshot::default();
    }
    let target = lease.target(tuning);
    let mut snapshot = Snapshot {
        converting: std::mem::take(&mut lease.handed),
        releasing: std::mem::take(&mut lease.releasing),
        keep_released: !return_due,
        ..Snapshot::default()
    };
    lease.oldest_pending = None;
    lease.last_pending = None;
    // The pods this round gives an address are among the upcoming ones: reserve only for the others.
    let allocating = gives_addresses(batch);
    if return_due {
        snapshot.returning = std::mem::take(&mut lease.free);
    } else if excess_due {
        // The lowest addresses stay, the highest go back.
        let keep = lease.free.len() - excess;
        if let Some(first_returned) = lease.free.iter().nth(keep).copied() {
            snapshot.returning = lease.free.split_off(&first_returned);
        }
    } else if !lease.tight && (refill_due || allocating > 0) {
        snapshot.extra_wanted = target.saturating_sub(lease.free.len() + allocating);
    }
    snapshot
}

/// Answers from the lease what it can answer at once ([`Lease::answer`]), leaving the rest in
/// `batch`.
fn serve_from_lease(pool: &str, lease: &mut Lease, batch: &mut Vec<Request>, inner: &Inner, now: Instant) {
    let mut rest = Vec::with_capacity(batch.len());
    for request in batch.drain(..) {
        match lease.answer(pool, &request.op, &inner.stores, now) {
            Some(outcome) => {
                if matches!(outcome, Outcome::Allocated(_)) {
                    inner.metrics.reserved_handout();
                }
                let _ = request.reply.send(Ok(outcome));
            }
            None => rest.push(request),
        }
    }
    *batch = rest;
}

/// One round: decides and writes the batch plus the lease's background work, retrying conflicts
/// (and growing the batch with requests that arrive meanwhile) until the write succeeds. Answers
/// every request except those that must wait for other nodes' reservations, which it returns.
async fn round(
    pool: &str,
    queue: &mut mpsc::UnboundedReceiver<Request>,
    mut batch: Vec<Request>,
    mut latest: Option<SpiderIPPool>,
    handle: &Handle,
    inner: &Inner,
) -> (Option<SpiderIPPool>, Vec<Request>) {
    // The first round after recovery checks the recovered reservations against the pool's spec.
    let force = handle.lease().generation.is_none();
    let mut snapshot = take_snapshot(pool, handle, &mut batch, inner, force);
    if batch.is_empty() && snapshot.is_empty() && !force {
        return (latest, Vec::new());
    }
    let mut backoff = Duration::from_millis(50);
    let mut last_error = String::new();
    let mut conflicts: u64 = 0;
    loop {
        expire(pool, &mut batch, &last_error);
        if batch.is_empty() && snapshot.is_empty() && !force {
            return (latest, Vec::new());
        }

        let current = match latest.take() {
            Some(obj) => obj,
            None => match inner.api.get_opt(pool).await {
                Ok(Some(obj)) => obj,
                Ok(None) => {
                    pool_gone(pool, batch, handle);
                    return (None, Vec::new());
                }
                Err(e) => {
                    last_error = e.to_string();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };

        let decided = match prepare(pool, &current, handle, &mut snapshot, &batch, inner) {
            Ok(decided) => decided,
            Err(e) => {
                answer_all(batch, |_| Err(e.clone()));
                // Nothing can be written to a pool whose spec or status cannot be read; what the
                // lease handed out stays handed out (recorded once the pool is fixed).
                restore(handle, snapshot);
                return (Some(current), Vec::new());
            }
        };
        let Some(text) = decided.text.clone() else {
            // Nothing changes (repeated ADDs, releases of what is not held): no write needed.
            let waiting = finish(pool, handle, inner, &current, snapshot, decided, batch);
            return (Some(current), waiting);
        };

        let patch = json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "status": {"allocatedIPs": text, "allocatedIPCount": decided.count},
        });
        let started = Instant::now();
        let result = inner
            .api
            .patch_status(pool, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        inner.metrics.pool_write(started.elapsed(), batch.len());
        match result {
            Ok(updated) => {
                tracing::debug!(
                    pool,
                    requests = batch.len(),
                    recorded_handouts = snapshot.converting.len(),
                    released = snapshot.releasing.len(),
                    returned = snapshot.returning.len(),
                    extra_wanted = snapshot.extra_wanted,
                    reserved = decided.output.reserved.len(),
                    conflicts,
                    "pool status written"
                );
                let waiting = finish(pool, handle, inner, &updated, snapshot, decided, batch);
                return (Some(updated), waiting);
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
                // and the next write decides more of them. Background work (nobody waits on it) steps
                // aside for longer, leaving the pool to writes that pods are waiting for.
                let step = if batch.is_empty() { 25 } else { 2 };
                tokio::time::sleep(jitter(Duration::from_millis(step * conflicts.min(10)))).await;
                // The winner's version usually arrives through the watch meanwhile: use it rather
                // than reading the (large) pool object again.
                latest = newer_from_store(
                    inner,
                    pool,
                    current.metadata.resource_version.as_deref(),
                    Duration::from_millis(30),
                )
                .await;
                merge_queued(pool, queue, &mut batch, &mut snapshot, handle, inner);
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                pool_gone(pool, batch, handle);
                return (None, Vec::new());
            }
            Err(e) => {
                tracing::warn!(pool, error = %e, "pool status write failed; retrying");
                last_error = e.to_string();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                merge_queued(pool, queue, &mut batch, &mut snapshot, handle, inner);
            }
        }
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

/// Checks the lease against `current` (unused reservations the spec no longer allows go back) and
/// decides the round.
fn prepare(
    pool: &str,
    current: &SpiderIPPool,
    handle: &Handle,
    snapshot: &mut Snapshot,
    batch: &[Request],
    inner: &Inner,
) -> Result<Decided, WriteError> {
    let bad = |reason: String| WriteError::BadPool {
        pool: pool.to_owned(),
        reason,
    };
    let family = pool_family(current)
        .ok_or_else(|| bad(format!("spec.subnet {} is not a CIDR", current.spec.subnet)))?;
    let reserved = inner.stores.reserved_ips(family);
    let usable = pick::usable_addresses(&current.spec, family, &reserved).map_err(bad)?;
    let mut records = current
        .status
        .clone()
        .unwrap_or_default()
        .allocations()
        .map_err(|e| bad(format!("status.allocatedIPs is not valid JSON: {e}")))?;
    let before = records.clone();

    let kept = {
        let mut lease = handle.lease();
        let unusable: Vec<IpAddr> = lease
            .free
            .iter()
            .filter(|ip| !usable.contains(ip))
            .copied()
            .collect();
        for ip in unusable {
            lease.free.remove(&ip);
            snapshot.returning.insert(ip);
        }
        lease.family = Some(family);
        lease
            .free
            .iter()
            .chain(lease.handed.keys())
            .copied()
            .collect::<BTreeSet<IpAddr>>()
    };
    let ops: Vec<Op> = batch.iter().map(|r| r.op.clone()).collect();
    let output = lease::decide_round(
        &mut records,
        &RoundInput {
            node: &inner.node,
            usable: &usable,
            max_records: inner.max_records,
            converting: &snapshot.converting,
            releasing: &snapshot.releasing,
            keep_released: snapshot.keep_released,
            returning: &snapshot.returning,
            kept: &kept,
            ops: &ops,
            extra_wanted: snapshot.extra_wanted,
        },
    );
    let count = spiderpool_schema::ippool::count_held(&records);
    let text = if records == before {
        None
    } else if records.is_empty() {
        Some(None)
    } else {
        Some(Some(
            serde_json::to_string(&records).map_err(|e| bad(e.to_string()))?,
        ))
    };
    Ok(Decided {
        text,
        count,
        usable,
        output,
        records,
    })
}

/// After a round's write succeeded (or nothing needed writing): updates the lease, reports lost
/// handouts, answers the requests and returns those that wait for other nodes' reservations.
fn finish(
    pool: &str,
    handle: &Handle,
    inner: &Inner,
    written: &SpiderIPPool,
    snapshot: Snapshot,
    decided: Decided,
    batch: Vec<Request>,
) -> Vec<Request> {
    let now = Instant::now();
    {
        let mut lease = handle.lease();
        let got = decided.output.reserved.len();
        lease.free.extend(decided.output.reserved.iter().copied());
        let mut holders = lease::holders(&decided.records);
        // Releases answered while the write was in flight are still recorded for their pods.
        for pod_uid in lease.releasing.values() {
            holders.remove(pod_uid);
        }
        for (ip, holder) in &lease.handed {
            holders.insert(holder.pod_uid.clone(), *ip);
        }
        lease.holders = holders;
        lease.tight = lease::free_addresses(&decided.records, &decided.usable).is_empty();
        lease.generation = written.metadata.generation;
        lease.short_refill = (snapshot.extra_wanted > 0 && got < snapshot.extra_wanted).then_some(now);
    }
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
            Outcome::Wait(why) => {
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

/// Puts back what a round that could not write had taken from the lease. Handed-out reservations
/// go back to being handed out (they are recorded by a later round); unused ones being given back are
/// NOT offered again: an earlier attempt of the round may have been applied without an answer, so
/// they are only trusted again once a successful round finds them still reserved for this node.
fn restore(handle: &Handle, snapshot: Snapshot) {
    let mut lease = handle.lease();
    let now = Instant::now();
    for (ip, holder) in snapshot.converting {
        lease.hand_out(ip, holder, now);
    }
    if !snapshot.releasing.is_empty() {
        lease.releasing.extend(snapshot.releasing);
        lease.note_pending(now);
    }
}

/// The pool is gone: every request fails and the lease is empty.
fn pool_gone(pool: &str, batch: Vec<Request>, handle: &Handle) {
    answer_all(batch, |_| Err(WriteError::PoolGone(pool.to_owned())));
    let mut lease = handle.lease();
    lease.free.clear();
    lease.handed.clear();
    lease.releasing.clear();
    lease.holders.clear();
    lease.oldest_pending = None;
    lease.generation = None;
}

/// Answers requests whose caller gave up or whose deadline passed.
fn expire(pool: &str, batch: &mut Vec<Request>, last_error: &str) {
    let now = Instant::now();
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

/// Adds requests queued meanwhile to the batch, answering what the lease can answer at once.
fn merge_queued(
    pool: &str,
    queue: &mut mpsc::UnboundedReceiver<Request>,
    batch: &mut Vec<Request>,
    snapshot: &mut Snapshot,
    handle: &Handle,
    inner: &Inner,
) {
    let mut more = Vec::new();
    while let Ok(request) = queue.try_recv() {
        more.push(request);
    }
    if more.is_empty() {
        return;
    }
    {
        let mut lease = handle.lease();
        serve_from_lease(pool, &mut lease, &mut more, inner, Instant::now());
    }
    // The pods these requests give an address were counted among those the extra reservations are for.
    snapshot.extra_wanted = snapshot.extra_wanted.saturating_sub(gives_addresses(&more));
    batch.extend(more);
}

/// How many of `requests` give a pod an address (allocations, and rebinds of a sticky pod's retained
/// address to its new incarnation).
fn gives_addresses(requests: &[Request]) -> usize {
    requests
        .iter()
        .filter(|r| matches!(r.op, Op::Allocate { .. } | Op::Rebind { .. }))
        .count()
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

/// The cached pool once the watch has delivered a version other than `tried` (waiting up to `wait`),
/// or `None` (the caller then reads it from the API server).
async fn newer_from_store(
    inner: &Inner,
    pool: &str,
    tried: Option<&str>,
    wait: Duration,
) -> Option<SpiderIPPool> {
    let deadline = Instant::now() + wait;
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

/// The pool's IP family ([`spiderpool_schema::SpiderIPPoolSpec::family`]).
pub fn pool_family(pool: &SpiderIPPool) -> Option<IpFamily> {
    pool.spec.family()
}

fn answer_all(batch: Vec<Request>, result: impl Fn(&Op) -> Result<Outcome, WriteError>) {
    for r in batch {
        let answer = result(&r.op);
        let _ = r.reply.send(answer);
    }
}
