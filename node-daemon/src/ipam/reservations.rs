//! This node's reservations in one pool, as a state machine: what the node's pool writer
//! ([`crate::writer`]) and its fast path know and decide between writes. Pure: no client, no clock
//! (every transition is given the time), no I/O; the writer gathers what the caches say, calls a
//! transition, and carries out the writes.
//!
//! The states of an address this node reserved ([`super::lease`] decides the records of one write):
//! - `free`: reserved for this node by a successful write, not handed out;
//! - `handed`: handed to a pod at once ([`Reservations::answer`]), not yet recorded for it;
//! - `releasing`: given back by the pod that holds it, still recorded for that pod;
//! - taken into a round ([`Reservations::plan_round`]): recorded, returned or kept by the write,
//!   then [`Reservations::committed`] after the write succeeded or [`Reservations::abandoned`]
//!   after it failed.
//!
//! Transitions: handout and release (the fast path), top-up and give-back (a round's plan),
//! conflict and lost response (a round abandoned; a later round decides again from the records it
//! reads), the operator removing this node's reservations (a round's [`super::lease::RoundOutput::lost`]),
//! recovery after a crash ([`Reservations::recover`]), the pool gone ([`Reservations::clear`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use spiderpool_ipmath::{IpFamily, IpSet};
use spiderpool_schema::ippool::PoolIPAllocation;

use super::holders::Holders;
use super::lease::{self, Holder};
use super::pick::{Op, Outcome};

/// Sizes and timings of a node's reservations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
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
    /// How long an address released by one of this node's pods stays this node's reservation, not
    /// handed out again, not given back: the old sandbox may still answer ARP for it, or peers still
    /// have it in their neighbour caches. A pool may ask for another value
    /// ([`super::pool::ANNO_RELEASE_COOLDOWN`]). An allocation that finds nothing free while this
    /// node's released addresses cool down waits for them rather than failing, and other nodes wait
    /// for this node's reservations as they always do, so a pool that is exactly full still serves:
    /// the next pod gets the released address once it has cooled down.
    pub release_cooldown: Duration,
    /// Batches grow with the pool: for every this many records a pool holds (of any kind, counted in
    /// the watch cache), `max_size`, `flush_idle` and `flush_max_age` count once more (up to
    /// [`MAX_SIZE_FACTOR`] times); 0 keeps them fixed. Every write of a pool carries all its records,
    /// so with fixed batches the bytes and API server time one allocation costs grow with the pool,
    /// and so do the conflicts between nodes writing it (a longer write loses more races). Scaled,
    /// a node writes a big pool less often, so each write records proportionally more allocations.
    /// Cost: a handed-out address is recorded for its pod up to `flush_max_age` times the factor
    /// later (the SpiderEndpoint names the pod at once; until then the pool shows the address
    /// reserved for the node), and a node holds up to `max_size` times the factor unused.
    pub records_per_step: usize,
}

/// The most [`Tuning::records_per_step`] scales the batch sizes and timings.
pub const MAX_SIZE_FACTOR: usize = 16;

impl Tuning {
    /// This tuning for node `node`: both flush times times a factor from 0.75 to 1.25 that depends
    /// only on the node's name. Nodes started together that take pods at the same rate (pods
    /// spread evenly by the scheduler) would otherwise record their handouts at the same moments,
    /// each cycle, and all but one of those writes would lose its race for the pool; with a big
    /// pool every lost write is the whole pool sent again.
    #[must_use]
    pub fn for_node(&self, node: &str) -> Tuning {
        let hash = super::node_hash(node);
        // Per mille, 750..1250.
        let factor = 750 + u32::try_from(hash % 500).unwrap_or(0);
        let spread = |d: Duration| d.saturating_mul(factor) / 1000;
        Tuning {
            flush_idle: spread(self.flush_idle),
            flush_max_age: spread(self.flush_max_age),
            ..self.clone()
        }
    }

    /// This tuning for a pool holding `records` records ([`Tuning::records_per_step`]).
    #[must_use]
    pub fn for_records(&self, records: usize) -> Tuning {
        let factor = self.records_factor(records);
        let factor_u32 = u32::try_from(factor).unwrap_or(1);
        Tuning {
            max_size: self.max_size.saturating_mul(factor),
            flush_idle: self.flush_idle.saturating_mul(factor_u32),
            flush_max_age: self.flush_max_age.saturating_mul(factor_u32),
            ..self.clone()
        }
    }

    fn records_factor(&self, records: usize) -> usize {
        records
            .checked_div(self.records_per_step)
            .unwrap_or(0)
            .clamp(1, MAX_SIZE_FACTOR)
    }

    /// This tuning for a pool holding `records` records in which `writers` nodes (this one
    /// included) hold reservations: [`Tuning::for_records`], with both flush times also multiplied
    /// by the number of writers, up to [`MAX_SIZE_FACTOR`] times in all. Each node records its own
    /// handouts, and a node taking about one pod a second recorded each on its own (a second is
    /// longer than the pause that ends a batch, `flush_idle`): ten nodes writing one pool made about
    /// ten writes of the whole pool a second, and most of them lost their race. Scaled, a pool's
    /// recordings come about as often however many nodes write it. Cost: a handout is recorded for
    /// its pod later (as for a big pool, at most `flush_max_age` times [`MAX_SIZE_FACTOR`]).
    #[must_use]
    pub fn for_pool(&self, records: usize, writers: usize) -> Tuning {
        let factor = self
            .records_factor(records)
            .saturating_mul(writers.max(1))
            .min(MAX_SIZE_FACTOR);
        let factor_u32 = u32::try_from(factor).unwrap_or(1);
        Tuning {
            flush_idle: self.flush_idle.saturating_mul(factor_u32),
            flush_max_age: self.flush_max_age.saturating_mul(factor_u32),
            ..self.for_records(records)
        }
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            max_size: 128,
            flush_idle: Duration::from_millis(200),
            flush_max_age: Duration::from_secs(2),
            idle_return: Duration::from_secs(2),
            tight_return: Duration::from_millis(500),
            release_cooldown: Duration::from_secs(5),
            records_per_step: 1_000,
        }
    }
}

/// Unused reservations a node with pods still to come keeps while the pool has nothing else free,
/// however small its target: enough for its next pod or two ([`lease::excess_to_return`]).
pub const TIGHT_KEEP: usize = 2;
/// A pool with less than one this-many-th of its usable addresses free outside reservations is
/// nearly full: its nodes record their handouts as often as its own writers call for, even when it
/// is a shard ([`Reservations::batches`]).
pub const NEARLY_FULL_PART: u128 = 8;
/// How often a node holding unused reservations looks (in its watch cache) whether the pool filled up.
pub const TIGHT_CHECK: Duration = Duration::from_millis(50);
/// After a top-up that got fewer addresses than wanted, wait this long before the next one (the pool
/// is nearly full; trying again at once would only spin).
pub const SHORT_REFILL_PAUSE: Duration = Duration::from_millis(100);

/// What the watch cache says about the pool right now, for the fast path: a reservation is only
/// handed out while the pool's spec is the one the reservations were last checked against, the pool
/// is not being deleted, and no SpiderReservedIP took the address since; a pod is only told the
/// address this node knows it holds while the pool is still at the version that knowledge comes
/// from (someone else's write, such as the operator's reclaim, may have freed or moved it).
#[derive(Debug, Clone)]
pub struct HandoutGate {
    /// The cached pool's `metadata.resourceVersion`.
    pub version: Option<String>,
    /// The cached pool's `metadata.generation`.
    pub generation: Option<i64>,
    /// The cached pool is being deleted.
    pub deleting: bool,
    /// Every SpiderReservedIP address of the pool's family.
    pub reserved: IpSet,
}

/// What the watch cache shows of the pool's records, counted without decoding them
/// ([`lease::count_view`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolView {
    /// The cached version these counts are of.
    pub version: Option<String>,
    /// How many addresses the pool may give out.
    pub usable: u128,
    /// Records of every kind (pods' and reservations).
    pub records: usize,
    /// Reservations of every node.
    pub reservations: usize,
    /// How many other nodes hold reservations.
    pub other_nodes: usize,
    /// How many shards serve the pool this one is a shard of (1 for a pool that is none).
    pub shards: usize,
}

/// What one round writes besides its queued requests, taken out of the state when the round is
/// planned ([`Reservations::plan_round`]) and given back to it when the round ends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoundPlan {
    /// Handed-out reservations to record for their pods.
    pub converting: BTreeMap<IpAddr, Holder>,
    /// Addresses given back by their pods (address to the UID that held it).
    pub releasing: BTreeMap<IpAddr, String>,
    /// Keep released addresses as this node's reservations rather than freeing them.
    pub keep_released: bool,
    /// Hold released addresses as this node's reservations while they cool down.
    pub hold_releases: bool,
    /// This node holds released addresses cooling down.
    pub cooling: bool,
    /// Unused reservations to give back.
    pub returning: BTreeSet<IpAddr>,
    /// How many more addresses to reserve.
    pub extra_wanted: usize,
}

impl RoundPlan {
    /// Nothing besides the queued requests.
    pub fn is_empty(&self) -> bool {
        self.converting.is_empty()
            && self.releasing.is_empty()
            && self.returning.is_empty()
            && self.extra_wanted == 0
    }

    /// More requests joined the round: the pods that `allocating` of them give an address were
    /// counted among those the extra reservations are for.
    pub fn joined(&mut self, allocating: usize) {
        self.extra_wanted = self.extra_wanted.saturating_sub(allocating);
    }
}

/// `at` plus `duration`, saturating: durations come from flags, requests and pool annotations, and
/// no value of theirs may panic the daemon (a century from `at` means never).
pub fn later(at: Instant, duration: Duration) -> Instant {
    at.checked_add(duration)
        .or_else(|| at.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(at)
}

/// How many of `ops` give a pod an address (allocations, and rebinds of a sticky pod's retained
/// address to its new incarnation).
pub fn gives_addresses<'a>(ops: impl IntoIterator<Item = &'a Op>) -> usize {
    ops.into_iter()
        .filter(|op| matches!(op, Op::Allocate { .. } | Op::Rebind { .. }))
        .count()
}

/// This node's reservations in one pool.
#[derive(Debug, Default, Clone)]
pub struct Reservations {
    /// Recovered after start: reservations may be handed out (once checked against the spec).
    ready: bool,
    /// The pool generation (spec) the reservations were last checked against.
    generation: Option<i64>,
    family: Option<IpFamily>,
    /// Reserved for this node by a successful write, not handed out.
    free: BTreeSet<IpAddr>,
    /// Released by this node's pods and reserved for this node, cooling down: address to when it
    /// joins `free` ([`Tuning::release_cooldown`]).
    cooling: BTreeMap<IpAddr, Instant>,
    /// The cooldown of this pool (the pool's annotation, else the tuning's).
    cooldown: Option<Duration>,
    /// Handed out, not yet recorded for their pods.
    handed: BTreeMap<IpAddr, Holder>,
    /// Given back by this node's pods (address to the UID that held it), still recorded for them.
    releasing: BTreeMap<IpAddr, String>,
    /// Reserved for this node and claimed by the endpoints of several live pods after a restart
    /// ([`lease::Recovered::disputed`]): never handed out, given back or adopted as unused.
    disputed: BTreeSet<IpAddr>,
    /// Handed-out addresses that a round which may have been applied tried to record (its answer
    /// was lost and it was abandoned): the pool may already say their pod holds them, so releasing
    /// one goes through a write like a recorded address, never straight back to `free`.
    unconfirmed: BTreeSet<IpAddr>,
    /// When the oldest and the newest of `handed` and `releasing` were added.
    oldest_pending: Option<Instant>,
    last_pending: Option<Instant>,
    /// When the first and the last address that cooled down since the last give-back joined
    /// `free`: an idle node gives cooled addresses back in batches ([`Reservations::cooled_batch_due`]).
    cooled: Option<(Instant, Instant)>,
    /// Pod UID to addresses, for every pod known to hold an address of the pool (a retried ADD gets
    /// the same answer).
    holders: Holders,
    /// The pool version `holders` was read from (recovery or this node's last write).
    records_version: Option<String>,
    /// When an allocation was last asked for, or a pod bound to this node was seen to need one.
    last_demand: Option<Instant>,
    /// When an allocation was last asked for by an ADD.
    last_ask: Option<Instant>,
    /// When the first and the last pod of the burst of pods bound to this node since the last
    /// top-up were seen ([`Reservations::note_bound`]).
    bound_burst: Option<(Instant, Instant)>,
    /// Pods bound to this node that wait for their network and hold no address of the pool yet, as
    /// last counted.
    upcoming: usize,
    /// The pool has nothing free outside reservations (as last written or seen in the watch cache).
    tight: bool,
    /// Less than one [`NEARLY_FULL_PART`]th of the pool's usable addresses is free outside
    /// reservations (as last seen in the watch cache).
    nearly_full: bool,
    /// How many addresses the pool may give out, for the spec generation it was counted at.
    usable_count: Option<(Option<i64>, u128)>,
    /// This node's even share of the addresses no pod holds ([`lease::even_share`]) and how many
    /// are free outside reservations, as the watch cache shows the pool (`None`: not known).
    even_share: Option<usize>,
    outside_free: Option<usize>,
    /// The pool version the view (`tight`, `even_share`, `outside_free`, `records`) was last taken
    /// from.
    viewed_version: Option<String>,
    /// How many records of any kind the pool holds, as last seen ([`Tuning::for_records`]).
    records: usize,
    /// How many nodes hold reservations in the pool, this one included, as last seen; 0 until seen.
    writers: usize,
    /// How many shards serve the pool this one is a shard of, as last seen (1 for a pool that is
    /// none; 0 until seen).
    shards: usize,
    /// When a top-up last got fewer addresses than wanted.
    short_refill: Option<Instant>,
}

impl Reservations {
    /// Recovery after a (re)start, from the pool's records as read (`records`) and what
    /// [`lease::recover`] made of this node's reservations and its endpoints' claims.
    /// Unused ones are checked against the pool's spec by the first round before being handed out
    /// (the generation is unknown until then). Demand noted before recovery is kept.
    pub fn recover(
        &mut self,
        records: &BTreeMap<String, PoolIPAllocation>,
        recovered: lease::Recovered,
        family: Option<IpFamily>,
        version: Option<&str>,
        now: Instant,
    ) {
        let lease::Recovered {
            handed,
            unused,
            disputed,
            ..
        } = recovered;
        self.disputed = disputed.into_keys().collect();
        self.records_version = version.map(str::to_owned);
        self.holders = family
            .map(|family| lease::holders(records, family))
            .unwrap_or_default();
        for (ip, holder) in handed {
            self.hand_out(ip, holder, now);
        }
        self.free = unused;
        self.generation = None;
        self.family = family;
        self.ready = true;
    }

    /// Whether the state was recovered (the writer's first read is done).
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Whether no round has checked the reservations against the pool's spec since the start (or
    /// since the pool went away): the next round must, even with nothing else to write.
    pub fn needs_spec_check(&self) -> bool {
        self.generation.is_none()
    }

    /// Unused reservations.
    pub fn free(&self) -> &BTreeSet<IpAddr> {
        &self.free
    }

    /// Reservations handed out and not yet recorded.
    pub fn handed(&self) -> &BTreeMap<IpAddr, Holder> {
        &self.handed
    }

    /// Released addresses still recorded for their pods.
    pub fn releasing(&self) -> &BTreeMap<IpAddr, String> {
        &self.releasing
    }

    /// Takes the releases answered at once and not yet taken into a round, for a round in flight
    /// that merges requests queued since it was planned ([`RoundPlan::releasing`]).
    pub fn take_releasing(&mut self) -> BTreeMap<IpAddr, String> {
        std::mem::take(&mut self.releasing)
    }

    /// Whether pod `uid` is known to hold an address of the pool.
    pub fn holds_address(&self, uid: &str) -> bool {
        self.holders.holds_any(uid)
    }

    /// Whether pod `uid` is known to hold `ip` (handed out to it, or recorded for it and not given
    /// back).
    pub fn holds(&self, uid: &str, ip: IpAddr) -> bool {
        self.holders.holds(uid, ip)
    }

    /// The address pod `uid` is known to hold, when it holds exactly one (the daemon asks
    /// [`Reservations::holds`]; the tests check what a pod was told).
    #[cfg(test)]
    pub fn address_of(&self, uid: &str) -> Option<IpAddr> {
        self.holders.only(uid)
    }

    /// The pool's family, once known.
    pub fn family(&self) -> Option<IpFamily> {
        self.family
    }

    /// Addresses released by this node's pods that cool down before being handed out again.
    pub fn cooling(&self) -> &BTreeMap<IpAddr, Instant> {
        &self.cooling
    }

    /// The pool's own release cooldown (from its annotation), if it has one.
    pub fn set_cooldown(&mut self, cooldown: Option<Duration>) {
        self.cooldown = cooldown;
    }

    fn cooldown(&self, tuning: &Tuning) -> Duration {
        self.cooldown.unwrap_or(tuning.release_cooldown)
    }

    /// Released addresses whose cooldown is over join the unused reservations.
    pub fn cool(&mut self, now: Instant) {
        let ready: Vec<IpAddr> = self
            .cooling
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(ip, _)| *ip)
            .collect();
        if ready.is_empty() {
            return;
        }
        // With nothing unused left, what cooled before is gone (handed out or given back): a new
        // batch starts.
        let first = match self.cooled {
            Some((first, _)) if !self.free.is_empty() => first,
            _ => now,
        };
        for ip in ready {
            self.cooling.remove(&ip);
            self.free.insert(ip);
        }
        self.cooled = Some((first, now));
    }

    /// The tuning of recordings and give-backs for this pool as last seen: scaled by its records and
    /// by the nodes writing it ([`Tuning::for_pool`]), but by its records only while it has nothing
    /// free outside reservations (nodes may be waiting for what this node's pods release). The
    /// nodes writing a shard count as many times as its pool has shards: nodes spread evenly over a
    /// pool's shards, so a shard has a few of the pool's writers, and scaled by those few a node
    /// taking about a pod a second recorded each handout on its own (with 100 nodes on 16 shards,
    /// about one pool write for every four ADDs); scaled by the pool's, a shard is recorded in about
    /// as often as a pool written by as many nodes. Not once the shard is nearly full: other nodes
    /// are then about to look for what is really free in it, and every handout not yet recorded
    /// looks to them like a reservation its node may give back, so they wait for it longer.
    fn batches(&self, tuning: &Tuning) -> Tuning {
        if self.tight {
            tuning.for_records(self.records)
        } else {
            let shards = if self.nearly_full { 1 } else { self.shards.max(1) };
            tuning.for_pool(self.records, self.writers.saturating_mul(shards))
        }
    }

    /// When the cooled addresses among the unused ones may go back together (`None`: none waits):
    /// once none has joined for `flush_idle` or the first has waited `flush_max_age`, as scaled for
    /// the pool, the rule that batches recordings. A node deleting pods has its released addresses
    /// cool one after another; giving each back as it cooled made a write of the whole pool for
    /// every few of them. A pool with nothing free elsewhere does not wait for this (other nodes
    /// may be waiting for the addresses; [`Reservations::idle_return`] is short then).
    fn cooled_batch_due(&self, batches: &Tuning) -> Option<Instant> {
        if self.tight {
            return None;
        }
        let (first, last) = self.cooled?;
        Some(later(first, batches.flush_max_age).min(later(last, batches.flush_idle)))
    }

    /// An allocation was asked for.
    pub fn note_demand(&mut self, now: Instant) {
        self.last_demand = Some(now);
        self.last_ask = Some(now);
    }

    /// Pods bound to this node newly wait for an address of the pool: demand to come. A top-up for
    /// them alone waits for the burst they came in to pause ([`Reservations::next_due`]).
    pub fn note_bound(&mut self, now: Instant) {
        self.last_demand = Some(now);
        let first = self.bound_burst.map_or(now, |(first, _)| first);
        self.bound_burst = Some((first, now));
    }

    /// The pods bound to this node still to ask this pool for an address, as counted now.
    pub fn set_upcoming(&mut self, upcoming: usize) {
        self.upcoming = upcoming;
    }

    /// The usable count cached for spec generation `generation`, if it was counted at that one.
    pub fn usable_count_at(&self, generation: Option<i64>) -> Option<u128> {
        match self.usable_count {
            Some((counted_at, count)) if counted_at == generation => Some(count),
            _ => None,
        }
    }

    /// Remembers the usable count of spec generation `generation`.
    pub fn set_usable_count(&mut self, generation: Option<i64>, count: u128) {
        self.usable_count = Some((generation, count));
    }

    /// Whether the view was taken from `version` already (nothing to read again).
    pub fn has_viewed(&self, version: Option<&str>) -> bool {
        version.is_some() && self.viewed_version.as_deref() == version
    }

    /// Takes in what the watch cache shows of the pool: whether anything is free outside
    /// reservations, how much, and this node's even share of what no pod holds.
    pub fn observe(&mut self, view: &PoolView) {
        let records = u128::try_from(view.records).unwrap_or(u128::MAX);
        let free = usize::try_from(view.usable.saturating_sub(records)).unwrap_or(usize::MAX);
        self.tight = free == 0;
        self.nearly_full = view
            .usable
            .saturating_sub(records)
            .saturating_mul(NEARLY_FULL_PART)
            < view.usable;
        self.even_share = Some(lease::even_share(
            free.saturating_add(view.reservations),
            view.other_nodes,
        ));
        self.outside_free = Some(free);
        self.records = view.records;
        self.writers = view.other_nodes + 1;
        self.shards = view.shards;
        self.viewed_version.clone_from(&view.version);
    }

    /// How many nodes hold reservations in the pool, this one included, as last seen (0: not seen).
    pub fn writers(&self) -> usize {
        self.writers
    }

    /// How many unused reservations this node should hold now ([`lease::target_size`]).
    pub fn target(&self, tuning: &Tuning) -> usize {
        let max_size = tuning.for_records(self.records).max_size;
        lease::target_size(self.upcoming, self.even_share, max_size)
    }

    /// How long without an allocation before unused reservations go back: shorter while the pool has
    /// nothing free outside reservations.
    pub fn idle_return(&self, tuning: &Tuning) -> Duration {
        if self.tight {
            tuning.tight_return
        } else {
            tuning.idle_return
        }
    }

    /// How many unused reservations to give back now ([`lease::excess_to_return`]): only while the
    /// pool has nothing free outside reservations.
    pub fn excess(&self, tuning: &Tuning) -> usize {
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
        self.holders.insert(&holder.pod_uid, ip);
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

    /// What can be answered at once, without a write: an allocation from a pod that already holds an
    /// address or from an unused reservation (`gate` says, for the pool's family, whether
    /// reservations may be handed out now; it is asked only when there is one); a release of an address handed out but not yet
    /// recorded (it is unused again) or of a pod's recorded address (it becomes this node's
    /// reservation in the next write; until then nobody else can take it, and nobody here hands it
    /// out). `None`: the request must go through a write.
    pub fn answer(
        &mut self,
        op: &Op,
        now: Instant,
        tuning: &Tuning,
        gate: impl FnOnce(IpFamily) -> Option<HandoutGate>,
    ) -> Option<Outcome> {
        if !self.ready {
            return None;
        }
        self.cool(now);
        match op {
            Op::Allocate { pod, pod_uid } => {
                if self.holders.holds_any(pod_uid) {
                    // Only while the pool is as this node last read or wrote it, and the pod holds
                    // one address; else the round decides from the records as they are now.
                    let ip = self.holders.only(pod_uid)?;
                    let gate = gate(self.family?)?;
                    return (gate.version == self.records_version).then_some(Outcome::Allocated(ip));
                }
                let ip = self.handout_candidate(gate)?;
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
                    self.holders.remove(pod_uid, *ip);
                    if self.unconfirmed.remove(ip) {
                        self.releasing.insert(*ip, pod_uid.clone());
                        self.note_pending(now);
                    } else {
                        self.cooling.insert(*ip, later(now, self.cooldown(tuning)));
                    }
                    return Some(Outcome::Released(true));
                }
                if self.holders.holds(pod_uid, *ip) {
                    self.holders.remove(pod_uid, *ip);
                    self.releasing.insert(*ip, pod_uid.clone());
                    self.note_pending(now);
                    return Some(Outcome::Released(true));
                }
                None
            }
            Op::Rebind { .. } => None,
        }
    }

    /// The lowest unused reservation that may be handed out now.
    fn handout_candidate(&self, gate: impl FnOnce(IpFamily) -> Option<HandoutGate>) -> Option<IpAddr> {
        if self.free.is_empty() {
            return None;
        }
        let gate = gate(self.family?)?;
        if gate.generation != self.generation || gate.deleting {
            return None;
        }
        self.free.iter().find(|ip| !gate.reserved.contains(ip)).copied()
    }

    /// When the writer should next run a background round (record handouts, give back, top up), or
    /// a cooled address joins the unused ones.
    pub fn next_due(&self, now: Instant, tuning: &Tuning) -> Option<Instant> {
        let batches = self.batches(tuning);
        let mut due: Option<Instant> = None;
        let mut consider = |at: Instant| due = Some(due.map_or(at, |d| d.min(at)));
        if let Some(first) = self.cooling.values().min() {
            consider(*first);
        }
        if self.has_pending() {
            if let Some(last) = self.last_pending {
                consider(later(last, batches.flush_idle));
            }
            if let Some(oldest) = self.oldest_pending {
                consider(later(oldest, batches.flush_max_age));
            }
        }
        if !self.free.is_empty() {
            let idle = later(self.last_demand.unwrap_or(now), self.idle_return(tuning));
            consider(
                self.cooled_batch_due(&batches)
                    .map_or(idle, |batch| idle.max(batch)),
            );
            if self.excess(tuning) > 0 {
                consider(now);
            } else if !self.tight {
                consider(later(now, TIGHT_CHECK));
            }
        }
        if self.ready
            && let Some(at) = self.refill_at(now, tuning)
        {
            consider(at);
        }
        due
    }

    /// When a top-up is due, if one is wanted ([`Reservations::refill_wanted`]): at once, after a
    /// short top-up's pause; but while no ADD asks and pods keep being bound to this node, once none
    /// was bound for `flush_idle` (at most half `tight_return`) or the first has waited
    /// `flush_max_age`, the rule that batches recordings (the node's own times, not scaled by the
    /// pool). A burst of pods bound one after another (a Deployment scaled up, a node drained onto
    /// this one) otherwise made a top-up each time half the reservations were promised, one pool
    /// write per doubling, each racing the other nodes taking their part of the burst. An ADD that
    /// comes first tops up in its own write.
    fn refill_at(&self, now: Instant, tuning: &Tuning) -> Option<Instant> {
        if !self.refill_wanted(now, tuning) {
            return None;
        }
        let after_short = self.short_refill.map_or(now, |t| later(t, SHORT_REFILL_PAUSE));
        let asked = self
            .last_ask
            .is_some_and(|t| now.duration_since(t) < tuning.tight_return);
        // A pause longer than `tight_return` would end the wish for a top-up before it came.
        let pause = tuning.flush_idle.min(tuning.tight_return / 2);
        match self.bound_burst {
            Some((first, last)) if !asked => {
                Some(after_short.max(later(last, pause).min(later(first, tuning.flush_max_age))))
            }
            _ => Some(after_short),
        }
    }

    /// A top-up is worth a write of its own: pods are starting here (one asked for an address
    /// within `tight_return`, the idle time after which a full pool takes reservations back: a
    /// top-up after it would be given back at once), half the target is used up, and enough is free
    /// outside reservations.
    fn refill_wanted(&self, now: Instant, tuning: &Tuning) -> bool {
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

    /// Decides what a round writes besides its requests (`allocating` of them give a pod an
    /// address; `requests`: there are any; `force`: the round writes anyway), and takes it out of
    /// the state: handed-out reservations to record, released addresses, reservations to give back
    /// (all when the node went idle, the highest beyond the target when the pool is full) or how many
    /// more to reserve. `None`: nothing is due and nothing is queued.
    pub fn plan_round(
        &mut self,
        now: Instant,
        tuning: &Tuning,
        allocating: usize,
        requests: bool,
        force: bool,
    ) -> Option<RoundPlan> {
        self.cool(now);
        let batches = self.batches(tuning);
        let idle = self.idle_return(tuning);
        let return_due = !self.free.is_empty()
            && self.last_demand.is_none_or(|t| now.duration_since(t) >= idle)
            && self.cooled_batch_due(&batches).is_none_or(|t| now >= t);
        let flush_due = self.has_pending()
            && (self
                .last_pending
                .is_none_or(|t| now.duration_since(t) >= batches.flush_idle)
                || self
                    .oldest_pending
                    .is_none_or(|t| now.duration_since(t) >= batches.flush_max_age));
        let refill_due = self.refill_at(now, tuning).is_some_and(|at| now >= at);
        let excess = self.excess(tuning);
        let excess_due = excess > 0;
        if !(requests || force || return_due || flush_due || refill_due || excess_due) {
            return None;
        }
        let target = self.target(tuning);
        let mut plan = RoundPlan {
            converting: std::mem::take(&mut self.handed),
            releasing: std::mem::take(&mut self.releasing),
            keep_released: !return_due,
            hold_releases: !self.cooldown(tuning).is_zero(),
            cooling: !self.cooling.is_empty(),
            ..RoundPlan::default()
        };
        self.oldest_pending = None;
        self.last_pending = None;
        if return_due {
            plan.returning = std::mem::take(&mut self.free);
            self.cooled = None;
        } else if excess_due {
            // The lowest addresses stay, the highest go back.
            let keep = self.free.len() - excess;
            if let Some(first_returned) = self.free.iter().nth(keep).copied() {
                plan.returning = self.free.split_off(&first_returned);
            }
        } else if !self.tight && (refill_due || allocating > 0) {
            // The pods this round gives an address are among the upcoming ones: reserve only for
            // the others.
            plan.extra_wanted = target.saturating_sub(self.free.len() + allocating);
            self.bound_burst = None;
        }
        Some(plan)
    }

    /// Checks the unused reservations against the pool's usable addresses before a round decides:
    /// those the spec no longer allows join the plan's give-back. Returns every other reservation
    /// this node knows of (unused, handed out but not in this round, disputed), which the round leaves
    /// as they are ([`lease::RoundInput::kept`]).
    pub fn check_spec(&mut self, plan: &mut RoundPlan, usable: &IpSet, family: IpFamily) -> BTreeSet<IpAddr> {
        let unusable: Vec<IpAddr> = self
            .free
            .iter()
            .chain(self.cooling.keys())
            .filter(|ip| !usable.contains(ip))
            .copied()
            .collect();
        for ip in unusable {
            self.free.remove(&ip);
            self.cooling.remove(&ip);
            plan.returning.insert(ip);
        }
        self.family = Some(family);
        self.free
            .iter()
            .chain(self.handed.keys())
            .chain(&self.disputed)
            .chain(self.cooling.keys())
            .copied()
            .collect()
    }

    /// A round's write succeeded (or nothing needed writing): `output` is what the round decided
    /// (its new reservations, released ones among them cooling down), `records` the pool's records as
    /// written (at spec generation `generation`, resourceVersion `version`), of which `usable` may be
    /// given out.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site; the facts of one written round"
    )]
    pub fn committed(
        &mut self,
        plan: &RoundPlan,
        output: &lease::RoundOutput,
        records: &BTreeMap<String, PoolIPAllocation>,
        usable: &IpSet,
        generation: Option<i64>,
        version: Option<&str>,
        now: Instant,
        tuning: &Tuning,
    ) {
        let got = output.reserved.len().saturating_sub(output.released.len());
        let cooled_at = later(now, self.cooldown(tuning));
        for ip in &output.reserved {
            if output.released.contains(ip) {
                self.cooling.insert(*ip, cooled_at);
            } else {
                self.free.insert(*ip);
            }
        }
        let mut holders = lease::holders(records, usable.family());
        // Releases answered while the write was in flight are still recorded for their pods.
        for (ip, pod_uid) in &self.releasing {
            holders.remove(pod_uid, *ip);
        }
        for (ip, holder) in &self.handed {
            holders.insert(&holder.pod_uid, *ip);
        }
        self.holders = holders;
        self.records_version = version.map(str::to_owned);
        // The round recorded what it converted; only handouts still waiting stay unconfirmed.
        let handed = &self.handed;
        self.unconfirmed.retain(|ip| handed.contains_key(ip));
        self.tight = lease::free_addresses(records, usable).is_empty();
        self.generation = generation;
        self.short_refill = (plan.extra_wanted > 0 && got < plan.extra_wanted).then_some(now);
    }

    /// A round could not write: what it had taken goes back. An earlier attempt of the round may
    /// have been applied without an answer, so: handed-out reservations go back to being handed out
    /// (a later round records them) but as unconfirmed (the pool may already record them for their
    /// pods: a release goes through a write), except those their pods gave back while the round was
    /// in flight (released through a write); unused ones being given back are NOT offered again,
    /// and are only trusted again once a successful round finds them still reserved for this node
    /// (it adopts them, [`lease::RoundOutput::reserved`]).
    pub fn abandoned(&mut self, plan: RoundPlan, now: Instant) {
        if !plan.releasing.is_empty() {
            self.releasing.extend(plan.releasing);
            self.note_pending(now);
        }
        for (ip, holder) in plan.converting {
            // Given back by its pod while the round was in flight: that release goes through a
            // write too (the pool may record the address for the pod), and the pod, which may
            // hold another address by now, does not get this one again.
            if self.releasing.get(&ip) == Some(&holder.pod_uid) {
                continue;
            }
            self.unconfirmed.insert(ip);
            self.hand_out(ip, holder, now);
        }
    }

    /// The pool is gone: nothing is reserved, held or pending.
    pub fn clear(&mut self) {
        self.free.clear();
        self.handed.clear();
        self.releasing.clear();
        self.cooling.clear();
        self.unconfirmed.clear();
        self.disputed.clear();
        self.holders.clear();
        self.oldest_pending = None;
        self.generation = None;
    }
}

#[cfg(test)]
mod tests;
