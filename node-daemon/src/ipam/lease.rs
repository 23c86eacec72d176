//! A node's reservations in a shared pool ("lease"), decided purely.
//!
//! Every node's agent writes the same pool status, and the API server's resourceVersion check lets one
//! write in at a time. If every ADD waited for its own write, a busy pool would serialise the whole
//! cluster's pod starts. Instead, an agent that is starting pods reserves a few more addresses than
//! it needs in the same write (records `{"pod":"","podUid":"","reservedForNode":"<node>"}`) and hands
//! the next pods those addresses without touching the pool; a later write, in the background, turns
//! each handed-out reservation into the pod's record. The pod's SpiderEndpoint, written before the ADD
//! answers, is what ties a handed-out reservation to its pod until then (and what a restarted agent
//! reads to tell handed-out reservations from unused ones, [`recover`]).
//!
//! Safety rests on one rule: only the agent of the node named in a reservation hands it out, and it
//! only hands out addresses that the pool's records, as last written by a successful write, show as
//! reserved for it. No other writer touches another node's reservations (the operator's reclaim
//! only removes those of a node that no longer exists). So an address is never given twice.
//!
//! Sizing and fairness: a node reserves for the pods bound to it that still wait for their network,
//! at most an even share of what no pod holds ([`target_size`], [`even_share`]); it gives unused
//! reservations back when it goes idle, and, once nothing outside reservations is free, whatever it
//! holds beyond that target ([`excess_to_return`]). A node that finds nothing free while other nodes
//! hold reservations waits for them ([`Outcome::Wait`]) instead of failing the pod.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use spiderpool_ipmath::{IpFamily, IpSet};
use spiderpool_schema::ippool::PoolIPAllocation;

use super::holders::Holders;
use super::pick::{self, Op, Outcome};
use super::records::{self, RecordIndex};

/// The pod an address was handed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `<namespace>/<name>`.
    pub pod: String,
    /// The pod's UID.
    pub pod_uid: String,
}

impl Holder {
    fn record(&self) -> PoolIPAllocation {
        PoolIPAllocation::held_by(self.pod.clone(), self.pod_uid.clone())
    }
}

/// What one write of a node's pool writer starts from, besides the pool's records.
#[derive(Debug)]
pub struct RoundInput<'a> {
    /// This node.
    pub node: &'a str,
    /// The addresses the pool may give out.
    pub usable: &'a IpSet,
    /// Most records one pool may hold.
    pub max_records: usize,
    /// Reservations of this node handed to pods since the last write: recorded for the pods now.
    pub converting: &'a BTreeMap<IpAddr, Holder>,
    /// Addresses this node's pods gave back since the last write (address to the UID that held it):
    /// they become reservations of this node (`keep_released`) or free.
    pub releasing: &'a BTreeMap<IpAddr, String>,
    /// Keep released addresses as this node's reservations rather than freeing them.
    pub keep_released: bool,
    /// Hold every address released in this round (`releasing` and the batch's releases) as this
    /// node's reservation: released addresses cool down before anyone gets them again
    /// ([`super::reservations::Tuning::release_cooldown`]), so they are neither freed in the pool nor
    /// given to an allocation of the same batch.
    pub hold_releases: bool,
    /// This node holds released addresses that are cooling down: an allocation that finds nothing
    /// free waits for them rather than failing.
    pub cooling: bool,
    /// Unused reservations of this node to give back.
    pub returning: &'a BTreeSet<IpAddr>,
    /// Every other reservation this node knows of: unused ones it keeps (they may be handed out
    /// while the write is in flight) and handed-out ones not recorded in this round. The round leaves
    /// them exactly as they are.
    pub kept: &'a BTreeSet<IpAddr>,
    /// Allocations, releases and rebinds queued for the pool.
    pub ops: &'a [Op],
    /// How many more addresses this node would like to reserve.
    pub extra_wanted: usize,
}

/// What a round decided. The records were changed in place.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RoundOutput {
    /// One per op. [`Outcome::Wait`] means: nothing is free now but other nodes hold reservations.
    pub outcomes: Vec<Outcome>,
    /// Reservations of this node that are new to it once the write succeeds: the extras reserved now,
    /// released addresses it keeps, and any the records show for this node that it did not know of
    /// (an earlier write whose response was lost).
    pub reserved: BTreeSet<IpAddr>,
    /// Those of `reserved` that were released in this round: they cool down before being handed out.
    pub released: BTreeSet<IpAddr>,
    /// Handed-out addresses whose records no longer say this node reserved them (and which are not
    /// free to claim): someone removed the reservation. Never expected; reported loudly.
    pub lost: Vec<(IpAddr, Holder, String)>,
    /// Keys of the records as written that are not canonical addresses of the pool's family
    /// ([`super::records`]): kept, and counted as occupying whatever they may name.
    pub foreign_keys: Vec<String>,
    /// Addresses more than one record names, with those keys: they stay occupied until each record
    /// is released by its pod.
    pub ambiguous: Vec<(IpAddr, Vec<String>)>,
}

/// Removes the records of `ip` that name the pod `pod_uid` (under whatever key) and, if `keep`, keeps
/// the address as this node's reservation under the canonical key, unless another record still names
/// it or it is no longer usable. Returns whether the pod held it.
fn release_record(
    records: &mut BTreeMap<String, PoolIPAllocation>,
    index: &RecordIndex,
    (ip, pod_uid): (&IpAddr, &String),
    keep: bool,
    input: &RoundInput<'_>,
    output: &mut RoundOutput,
) -> bool {
    let keys = index.keys_naming(records, ip);
    let held: Vec<&String> = keys
        .iter()
        .filter(|k| {
            records
                .get(*k)
                .is_some_and(|r| r.reservation().is_none() && &r.pod_uid == pod_uid)
        })
        .collect();
    if held.is_empty() {
        return false;
    }
    for key in &held {
        records.remove(*key);
    }
    let others_remain = keys.len() > held.len();
    if keep && input.usable.contains(ip) && !others_remain {
        records.insert(ip.to_string(), PoolIPAllocation::reserved_for(input.node));
        output.reserved.insert(*ip);
        output.released.insert(*ip);
    }
    true
}

/// A release the node's state vetted (`RoundInput::releasing`) of an address the pool still records
/// as this node's reservation: the node handed it out and its pod gave it back before a round
/// recorded the handout (that round did not land). Released as a recorded one would be: kept as
/// the node's reservation, cooling down, or freed; never adopted as unused at once.
fn release_unrecorded_handout(
    records: &mut BTreeMap<String, PoolIPAllocation>,
    index: &RecordIndex,
    ip: &IpAddr,
    keep: bool,
    input: &RoundInput<'_>,
    output: &mut RoundOutput,
) {
    let key = ip.to_string();
    let only_ours = index.keys_naming(records, ip) == [key.as_str()]
        && records
            .get(&key)
            .is_some_and(|r| r.reservation() == Some(input.node));
    if !only_ours {
        return;
    }
    if keep && input.usable.contains(ip) {
        output.reserved.insert(*ip);
        output.released.insert(*ip);
    } else {
        records.remove(&key);
    }
}

/// Decides one write: records the handed-out reservations for their pods, turns released addresses
/// into reservations (or frees them), gives back `returning`, applies the queued ops (as
/// [`pick::apply`] does), then reserves up to `extra_wanted` more.
pub fn decide_round(records: &mut BTreeMap<String, PoolIPAllocation>, input: &RoundInput<'_>) -> RoundOutput {
    let mut output = RoundOutput::default();
    let index = RecordIndex::new(records, input.usable.family());

    for (ip, holder) in input.converting {
        let key = ip.to_string();
        let foreign: Vec<String> = index
            .keys_naming(records, ip)
            .into_iter()
            .filter(|k| k != &key)
            .collect();
        match records.get(&key) {
            Some(record) if record.reservation() == Some(input.node) => {
                // The pod holds the address whatever else a foreign record says (that one stays and
                // is reported as ambiguous): recording it is the truth, and keeps it occupied.
                records.insert(key, holder.record());
            }
            Some(record) if record.reservation().is_none() && record.pod_uid == holder.pod_uid => {}
            None if input.usable.contains(ip) && foreign.is_empty() => {
                records.insert(key, holder.record());
            }
            Some(record) => output.lost.push((
                *ip,
                holder.clone(),
                match record.reservation() {
                    Some(other) => format!("the pool now says node {other} reserved it"),
                    None => format!("the pool now says {} holds it", record.pod),
                },
            )),
            None if !foreign.is_empty() => output.lost.push((
                *ip,
                holder.clone(),
                format!(
                    "its reservation was removed and the pool now has other records naming it ({})",
                    foreign.join(", ")
                ),
            )),
            None => output.lost.push((
                *ip,
                holder.clone(),
                "its reservation was removed and it is no longer a usable address of the pool".to_owned(),
            )),
        }
    }

    for (ip, pod_uid) in input.releasing {
        let keep = input.keep_released || input.hold_releases;
        if !release_record(records, &index, (ip, pod_uid), keep, input, &mut output) {
            release_unrecorded_handout(records, &index, ip, keep, input, &mut output);
        }
    }

    for ip in input.returning {
        let key = ip.to_string();
        if records
            .get(&key)
            .is_some_and(|r| r.reservation() == Some(input.node))
        {
            records.remove(&key);
        }
    }

    // Reservations of this node that it does not know: adopt them (see `RoundOutput::reserved`).
    // Only canonical keys are this daemon's: another key naming a reservation of this node is
    // foreign and stays as it is.
    for (key, record) in records.iter() {
        if record.reservation() == Some(input.node)
            && let Some(ip) = records::canonical(key, input.usable.family())
            && !input.kept.contains(&ip)
            && !input.returning.contains(&ip)
            && !input.converting.contains_key(&ip)
        {
            output.reserved.insert(ip);
        }
    }

    // Releases to hold are made here, before the batch's allocations could take the addresses.
    let mut held_releases: Vec<(usize, Outcome)> = Vec::new();
    let mut ops: Vec<Op> = Vec::with_capacity(input.ops.len());
    for (i, op) in input.ops.iter().enumerate() {
        match op {
            Op::Release { ip, pod_uid } if input.hold_releases => {
                let released = release_record(records, &index, (ip, pod_uid), true, input, &mut output);
                held_releases.push((i, Outcome::Released(released)));
            }
            other => ops.push(other.clone()),
        }
    }
    let mut applied = pick::apply(records, input.usable, &ops, input.max_records).into_iter();
    let mut held_releases = held_releases.into_iter().peekable();
    output.outcomes = (0..input.ops.len())
        .map(|i| match held_releases.next_if(|(at, _)| *at == i) {
            Some((_, outcome)) => outcome,
            None => applied.next().unwrap_or(Outcome::Released(false)),
        })
        .collect();
    // A sticky pod's retained address that is still another node's reservation was handed out by
    // that node's agent to the pod's previous incarnation and is recorded for it in that agent's
    // next write (the pod's endpoint says so): wait for that instead of giving the pod a new address.
    for (outcome, op) in output.outcomes.iter_mut().zip(input.ops) {
        if let (Outcome::RebindRefused(_), Op::Rebind { ip, .. }) = (&*outcome, op)
            && let Some(node) = records
                .get(&ip.to_string())
                .and_then(PoolIPAllocation::reservation)
            && node != input.node
        {
            *outcome = Outcome::Wait(format!(
                "{ip} was handed out from a reservation of node {node}, whose agent has not yet \
                 recorded it for the pod"
            ));
        }
    }
    let others = reserving_nodes(records, Some(input.node));
    let cooling = input.cooling || !output.released.is_empty();
    for outcome in &mut output.outcomes {
        if matches!(outcome, Outcome::Exhausted(reason) if reason == pick::ALL_USED) {
            if !others.is_empty() {
                let names: Vec<&str> = others.iter().copied().collect();
                *outcome = Outcome::Wait(format!(
                    "every free address is reserved by the agents of nodes {}",
                    names.join(", ")
                ));
            } else if cooling {
                *outcome = Outcome::Wait(
                    "every free address was released moments ago and cools down before it is handed \
                     out again"
                        .to_owned(),
                );
            }
        }
    }

    output.foreign_keys = RecordIndex::new(records, input.usable.family()).foreign_keys();
    output.ambiguous = index.ambiguous(records);
    let free = free_addresses(records, input.usable);
    let free_count = usize::try_from(free.len()).unwrap_or(usize::MAX);
    let (mut reservations, mut mine) = (0_usize, 0_usize);
    for node in records.values().filter_map(PoolIPAllocation::reservation) {
        reservations += 1;
        mine += usize::from(node == input.node);
    }
    let share = even_share(free_count.saturating_add(reservations), others.len());
    let room = input.max_records.saturating_sub(records.len());
    // Adopted reservations (an earlier write of this node whose answer was lost) are what the node
    // wanted then and wants again now: they count toward `extra_wanted`.
    let extra = input
        .extra_wanted
        .saturating_sub(output.reserved.len())
        .min(free_count)
        .min(share.saturating_sub(mine))
        .min(room);
    for ip in free.iter().take(extra) {
        records.insert(ip.to_string(), PoolIPAllocation::reserved_for(input.node));
        output.reserved.insert(ip);
    }
    output
}

/// This node's reservations after a restart ([`recover`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Handed to a pod (one endpoint of this node claims it, or one live pod among its claimants).
    pub handed: BTreeMap<IpAddr, Holder>,
    /// Unused (no endpoint claims it, or none of its claimants' pods is alive).
    pub unused: BTreeSet<IpAddr>,
    /// Claimed by endpoints of several live pods: kept reserved for this node and out of use (neither
    /// recorded for one of them nor handed out again) until a later recovery finds one claimant.
    pub disputed: BTreeMap<IpAddr, Vec<Holder>>,
    /// Every address claimed by several endpoints, with the claimants (resolved or not), to report.
    pub contested: BTreeMap<IpAddr, Vec<Holder>>,
}

/// After a restart: which of this node's reservations in `records` were handed to pods (endpoints
/// written by this node claim them: `claims`, address to every pod claiming it) and which are
/// unused. An address claimed by several pods goes to the one whose pod is alive (`alive`, by UID);
/// with none alive it is unused; with several it is disputed.
pub fn recover(
    records: &BTreeMap<String, PoolIPAllocation>,
    node: &str,
    claims: &HashMap<IpAddr, Vec<Holder>>,
    alive: impl Fn(&str) -> bool,
) -> Recovered {
    let mut recovered = Recovered::default();
    for (key, record) in records {
        if record.reservation() != Some(node) {
            continue;
        }
        let Ok(ip) = key.parse::<IpAddr>() else { continue };
        if ip.to_string() != *key {
            continue;
        }
        let claimants = claims.get(&ip).map(Vec::as_slice).unwrap_or_default();
        if claimants.len() > 1 {
            recovered.contested.insert(ip, claimants.to_vec());
        }
        let live: Vec<&Holder> = if claimants.len() > 1 {
            claimants.iter().filter(|h| alive(&h.pod_uid)).collect()
        } else {
            claimants.iter().collect()
        };
        match live.as_slice() {
            [] => {
                recovered.unused.insert(ip);
            }
            [holder] => {
                recovered.handed.insert(ip, (*holder).clone());
            }
            _ => {
                recovered.disputed.insert(ip, claimants.to_vec());
            }
        }
    }
    recovered
}

/// Whether `records` hold any reservation of `node`.
pub fn has_reservations(records: &BTreeMap<String, PoolIPAllocation>, node: &str) -> bool {
    records.values().any(|r| r.reservation() == Some(node))
}

/// Pod UID to addresses, for every address of a pool of `family` held by a pod whose record names
/// exactly one address ([`RecordIndex::address_of_key`]).
pub fn holders(records: &BTreeMap<String, PoolIPAllocation>, family: IpFamily) -> Holders {
    let index = RecordIndex::new(records, family);
    records
        .iter()
        .filter(|(_, r)| r.reservation().is_none())
        .filter_map(|(key, r)| Some((r.pod_uid.clone(), index.address_of_key(key)?)))
        .collect()
}

/// The usable addresses no record names ([`super::records`]), lowest first.
pub fn free_addresses(records: &BTreeMap<String, PoolIPAllocation>, usable: &IpSet) -> IpSet {
    usable.difference(&RecordIndex::new(records, usable.family()).occupied(records))
}

/// What a pool's encoded records hold, counted without decoding them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCounts {
    /// Records of every kind.
    pub records: usize,
    /// Reservations of every node.
    pub reservations: usize,
    /// Nodes other than this one holding reservations.
    pub other_nodes: usize,
}

/// Counts records by their `"podUid"` key and reservations by their `"reservedForNode"` values in
/// the encoded `allocatedIPs` (`text`), for `node`: decoding a large pool's status on every look
/// would cost far more, and this is only used for sizing.
pub fn count_records(text: &str, node: &str) -> RecordCounts {
    let mut counts = RecordCounts {
        records: text.matches("\"podUid\"").count(),
        ..RecordCounts::default()
    };
    let mut others: BTreeSet<&str> = BTreeSet::new();
    for name in text
        .split("\"reservedForNode\":\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
    {
        counts.reservations += 1;
        if name != node {
            others.insert(name);
        }
    }
    counts.other_nodes = others.len();
    counts
}

/// Whether the encoded `allocatedIPs` (`text`) mention a reservation of `node`.
pub fn mentions_reservations_of(text: &str, node: &str) -> bool {
    text.contains(&format!("\"reservedForNode\":\"{node}\""))
}

/// Nodes holding reservations in `records`, except `except`.
pub fn reserving_nodes<'r>(
    records: &'r BTreeMap<String, PoolIPAllocation>,
    except: Option<&str>,
) -> BTreeSet<&'r str> {
    records
        .values()
        .filter_map(PoolIPAllocation::reservation)
        .filter(|n| Some(*n) != except)
        .collect()
}

/// How many reservations one node may hold while `others` other nodes hold some: an even part of
/// every address no pod holds yet (`unheld`: the free ones plus all nodes' reservations), rounded up.
/// It caps a node's target ([`target_size`]); top-ups stop at the target and, once nothing outside
/// reservations is free, holdings beyond it go back ([`excess_to_return`]): the same quantity on
/// both sides, so a node is never asked to give back what it may take again at once. Nodes that
/// start pods at the same pace thus hold about what each still needs, and the last free addresses
/// are not raced for. (A share of only the free addresses let early nodes keep large holdings while
/// late ones found nothing free and waited.)
pub fn even_share(unheld: usize, others: usize) -> usize {
    unheld.div_ceil(others + 1)
}

/// How many of `unused` reservations a node gives back once nothing outside reservations is free and
/// its target is `target` ([`target_size`]): what it holds beyond the target, once that is more than
/// a margin (a quarter of the target, at least `keep`), so that a node just above its target does not
/// spend a write on one address; never below `keep` (its next pod or two).
pub fn excess_to_return(unused: usize, target: usize, keep: usize) -> usize {
    let keep_up_to = target.max(keep);
    if unused > keep_up_to.saturating_add((target / 4).max(keep)) {
        unused - keep_up_to
    } else {
        0
    }
}

/// The least a top-up of its own must gain to be worth a write: a quarter of the target, so that a
/// busy node writes the pool a few times per target's worth of pods, not once per pod.
pub fn worthwhile_refill(target: usize) -> usize {
    (target / 4).max(1)
}

/// How many unused reservations a node should hold: one for each pod bound to it that still waits
/// for its network and holds no address of the pool (`upcoming`: the scheduler binds a pod before its
/// kubelet asks for an address, so these are the ADDs to come), at most its `even_share` (when known)
/// and `max`. A node that starts a burst of pods thus reserves for all of them in one write, and a
/// node with few pods left holds few, so that the last addresses of a full pool are where the
/// remaining pods are. A lone pod reserves nothing beyond its own address.
pub fn target_size(upcoming: usize, even_share: Option<usize>, max: usize) -> usize {
    let wanted = upcoming.min(max);
    even_share.map_or(wanted, |share| wanted.min(share))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use proptest::prelude::*;
    use spiderpool_ipmath::IpFamily;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn usable(range: &str) -> IpSet {
        IpSet::parse_list(IpFamily::V4, &[range]).unwrap()
    }

    fn holder(pod: &str) -> Holder {
        Holder {
            pod: format!("ns/{pod}"),
            pod_uid: format!("uid-{pod}"),
        }
    }

    fn alloc(pod: &str) -> Op {
        Op::Allocate {
            pod: format!("ns/{pod}"),
            pod_uid: format!("uid-{pod}"),
        }
    }

    static NO_RELEASES: BTreeMap<IpAddr, String> = BTreeMap::new();

    fn input<'a>(
        node: &'a str,
        usable: &'a IpSet,
        converting: &'a BTreeMap<IpAddr, Holder>,
        returning: &'a BTreeSet<IpAddr>,
        kept: &'a BTreeSet<IpAddr>,
        ops: &'a [Op],
        extra_wanted: usize,
    ) -> RoundInput<'a> {
        RoundInput {
            node,
            usable,
            max_records: 1000,
            converting,
            releasing: &NO_RELEASES,
            keep_released: true,
            hold_releases: false,
            cooling: false,
            returning,
            kept,
            ops,
            extra_wanted,
        }
    }

    #[test]
    fn a_round_allocates_then_reserves_extras_after_the_pods() {
        let usable = usable("10.0.0.1-10.0.0.100");
        let mut records = BTreeMap::new();
        let (c, r, k) = (BTreeMap::new(), BTreeSet::new(), BTreeSet::new());
        let ops = [alloc("a"), alloc("b")];
        let out = decide_round(&mut records, &input("n1", &usable, &c, &r, &k, &ops, 3));
        assert_eq!(
            out.outcomes,
            [
                Outcome::Allocated(ip("10.0.0.1")),
                Outcome::Allocated(ip("10.0.0.2"))
            ]
        );
        assert_eq!(
            out.reserved,
            BTreeSet::from([ip("10.0.0.3"), ip("10.0.0.4"), ip("10.0.0.5")])
        );
        assert_eq!(records["10.0.0.3"], PoolIPAllocation::reserved_for("n1"));
        assert_eq!(records["10.0.0.1"], PoolIPAllocation::held_by("ns/a", "uid-a"));
        assert_eq!(spiderpool_schema::ippool::count_held(&records), 2);
    }

    #[test]
    fn handed_out_reservations_become_pod_records_and_returned_ones_disappear() {
        let usable = usable("10.0.0.1-10.0.0.10");
        let mut records = BTreeMap::from([
            ("10.0.0.1".to_owned(), PoolIPAllocation::reserved_for("n1")),
            ("10.0.0.2".to_owned(), PoolIPAllocation::reserved_for("n1")),
            ("10.0.0.3".to_owned(), PoolIPAllocation::reserved_for("n1")),
            ("10.0.0.4".to_owned(), PoolIPAllocation::reserved_for("n2")),
        ]);
        let converting = BTreeMap::from([(ip("10.0.0.1"), holder("a"))]);
        let returning = BTreeSet::from([ip("10.0.0.2"), ip("10.0.0.4")]);
        let kept = BTreeSet::from([ip("10.0.0.3")]);
        let out = decide_round(
            &mut records,
            &input("n1", &usable, &converting, &returning, &kept, &[], 0),
        );
        assert_eq!(records["10.0.0.1"], PoolIPAllocation::held_by("ns/a", "uid-a"));
        assert!(!records.contains_key("10.0.0.2"));
        assert_eq!(records["10.0.0.3"], PoolIPAllocation::reserved_for("n1"));
        // Another node's reservation is never touched, even if asked.
        assert_eq!(records["10.0.0.4"], PoolIPAllocation::reserved_for("n2"));
        assert!(out.lost.is_empty() && out.reserved.is_empty());
    }

    #[test]
    fn a_conversion_whose_reservation_was_taken_by_another_is_reported_lost() {
        let usable = usable("10.0.0.1-10.0.0.10");
        let mut records = BTreeMap::from([(
            "10.0.0.1".to_owned(),
            PoolIPAllocation::held_by("ns/other", "uid-other"),
        )]);
        let converting = BTreeMap::from([(ip("10.0.0.1"), holder("a")), (ip("10.0.0.2"), holder("b"))]);
        let (r, k) = (BTreeSet::new(), BTreeSet::new());
        let out = decide_round(&mut records, &input("n1", &usable, &converting, &r, &k, &[], 0));
        assert_eq!(out.lost.len(), 1);
        assert_eq!(out.lost[0].0, ip("10.0.0.1"));
        assert!(out.lost[0].2.contains("ns/other"), "{}", out.lost[0].2);
        // A handed-out address whose reservation vanished but which is still free is claimed.
        assert_eq!(records["10.0.0.2"], PoolIPAllocation::held_by("ns/b", "uid-b"));
        assert_eq!(records["10.0.0.1"].pod, "ns/other");
    }

    #[test]
    fn released_addresses_become_this_nodes_reservations_or_free() {
        let usable = usable("10.0.0.1-10.0.0.10");
        let mut records = BTreeMap::from([
            ("10.0.0.1".to_owned(), PoolIPAllocation::held_by("ns/a", "uid-a")),
            ("10.0.0.2".to_owned(), PoolIPAllocation::held_by("ns/b", "uid-b")),
            (
                "10.0.0.3".to_owned(),
                PoolIPAllocation::held_by("ns/c2", "uid-c2"),
            ),
        ]);
        let releasing = BTreeMap::from([
            (ip("10.0.0.1"), "uid-a".to_owned()),
            (ip("10.0.0.2"), "uid-b".to_owned()),
            // Already recorded for a newer pod (reclaim freed it, another node gave it out): untouched.
            (ip("10.0.0.3"), "uid-c".to_owned()),
        ]);
        let (c, r, k) = (BTreeMap::new(), BTreeSet::new(), BTreeSet::new());
        let mut round = input("n1", &usable, &c, &r, &k, &[], 0);
        round.releasing = &releasing;
        let out = decide_round(&mut records, &round);
        assert_eq!(out.reserved, BTreeSet::from([ip("10.0.0.1"), ip("10.0.0.2")]));
        assert_eq!(records["10.0.0.1"], PoolIPAllocation::reserved_for("n1"));
        assert_eq!(records["10.0.0.3"].pod_uid, "uid-c2");

        let mut records =
            BTreeMap::from([("10.0.0.1".to_owned(), PoolIPAllocation::held_by("ns/a", "uid-a"))]);
        round.keep_released = false;
        let out = decide_round(&mut records, &round);
        assert!(records.is_empty() && out.reserved.is_empty());
    }

    #[test]
    fn reserving_never_takes_an_address_a_foreign_key_names() {
        let usable = usable("10.0.0.1-10.0.0.4");
        let mut records = BTreeMap::from([
            ("10.0.0.1".to_owned(), PoolIPAllocation::held_by("ns/x", "uid-x")),
            ("fd00::9".to_owned(), PoolIPAllocation::held_by("ns/y", "uid-y")),
            ("10.0.0.02".to_owned(), PoolIPAllocation::held_by("ns/z", "uid-z")),
        ]);
        let (c, r, k) = (BTreeMap::new(), BTreeSet::new(), BTreeSet::new());
        let out = decide_round(&mut records, &input("n1", &usable, &c, &r, &k, &[], 4));
        assert_eq!(out.reserved, BTreeSet::from([ip("10.0.0.3"), ip("10.0.0.4")]));
        assert_eq!(records["10.0.0.1"].pod_uid, "uid-x");
        assert!(free_addresses(&records, &usable).is_empty());
    }

    #[test]
    fn unknown_reservations_of_this_node_are_adopted() {
        let usable = usable("10.0.0.1-10.0.0.10");
        let mut records = BTreeMap::from([
            ("10.0.0.5".to_owned(), PoolIPAllocation::reserved_for("n1")),
            ("10.0.0.6".to_owned(), PoolIPAllocation::reserved_for("n1")),
        ]);
        let (c, r) = (BTreeMap::new(), BTreeSet::new());
        let kept = BTreeSet::from([ip("10.0.0.5")]);
        let out = decide_round(&mut records, &input("n1", &usable, &c, &r, &kept, &[], 0));
        assert_eq!(out.reserved, BTreeSet::from([ip("10.0.0.6")]));
        // After a lost response the node wants again what that write reserved: the adopted ones
        // count toward it, nothing more is taken.
        let out = decide_round(&mut records, &input("n1", &usable, &c, &r, &kept, &[], 1));
        assert_eq!(out.reserved, BTreeSet::from([ip("10.0.0.6")]));
        assert_eq!(records.len(), 2);
    }

    #[test]
    fn nothing_free_waits_while_other_nodes_hold_reservations_else_is_exhausted() {
        let usable = usable("10.0.0.1-10.0.0.2");
        let mut records = BTreeMap::from([
            ("10.0.0.1".to_owned(), PoolIPAllocation::held_by("ns/x", "uid-x")),
            ("10.0.0.2".to_owned(), PoolIPAllocation::reserved_for("n2")),
        ]);
        let (c, r, k) = (BTreeMap::new(), BTreeSet::new(), BTreeSet::new());
        let ops = [alloc("a")];
        let out = decide_round(&mut records, &input("n1", &usable, &c, &r, &k, &ops, 4));
        assert!(
            matches!(&out.outcomes[0], Outcome::Wait(why) if why.contains("n2")),
            "{:?}",
            out.outcomes
        );
        records.remove("10.0.0.2");
        records.insert("10.0.0.2".to_owned(), PoolIPAllocation::held_by("ns/y", "uid-y"));
        let out = decide_round(&mut records, &input("n1", &usable, &c, &r, &k, &ops, 4));
        assert!(matches!(&out.outcomes[0], Outcome::Exhausted(_)));
    }

    #[test]
    fn extras_are_capped_by_the_even_share_and_the_record_cap() {
        let usable = usable("10.0.0.1-10.0.0.40");
        let others: BTreeMap<String, PoolIPAllocation> = (1..=4)
            .map(|i| {
                (
                    format!("10.0.0.{i}"),
                    PoolIPAllocation::reserved_for(format!("n{}", i + 1)),
                )
            })
            .collect();
        let mut records = others.clone();
        let (c, r, k) = (BTreeMap::new(), BTreeSet::new(), BTreeSet::new());
        // 40 addresses no pod holds (36 free, 4 reserved), 5 nodes: 8 each.
        let out = decide_round(&mut records, &input("n1", &usable, &c, &r, &k, &[], 32));
        assert_eq!(out.reserved.len(), 8);
        // Holding its share, the node gets no more however much it wants.
        let kept = out.reserved;
        let out = decide_round(&mut records, &input("n1", &usable, &c, &r, &kept, &[], 32));
        assert!(out.reserved.is_empty(), "{:?}", out.reserved);
        // Pods took 30 addresses: 10 left unheld, so a sixth node's share is 2 (rounded up).
        let mut records = others;
        for i in 11..=40 {
            records.insert(
                format!("10.0.0.{i}"),
                PoolIPAllocation::held_by("ns/p", format!("uid-{i}")),
            );
        }
        let out = decide_round(&mut records, &input("n6", &usable, &c, &r, &k, &[], 32));
        assert_eq!(out.reserved.len(), 2);
        let capped = RoundInput {
            max_records: records.len() + 1,
            ..input("n7", &usable, &c, &r, &k, &[], 32)
        };
        let out = decide_round(&mut records, &capped);
        assert_eq!(out.reserved.len(), 1);
    }

    #[test]
    fn releases_and_retried_adds_never_match_a_reservation() {
        let usable = usable("10.0.0.1-10.0.0.2");
        let mut records = BTreeMap::from([("10.0.0.1".to_owned(), PoolIPAllocation::reserved_for("n1"))]);
        let ops = [
            Op::Release {
                ip: ip("10.0.0.1"),
                pod_uid: String::new(),
            },
            Op::Rebind {
                ip: ip("10.0.0.1"),
                previous_uid: String::new(),
                pod: String::new(),
                pod_uid: "new".into(),
            },
        ];
        let (c, r, k) = (BTreeMap::new(), BTreeSet::new(), BTreeSet::from([ip("10.0.0.1")]));
        let out = decide_round(&mut records, &input("n2", &usable, &c, &r, &k, &ops, 0));
        assert_eq!(out.outcomes[0], Outcome::Released(false));
        // A rebind of another node's reservation waits for that node to record it for the pod it
        // handed it to (the rebinding pod's previous incarnation).
        assert!(
            matches!(&out.outcomes[1], Outcome::Wait(why) if why.contains("node n1")),
            "{:?}",
            out.outcomes
        );
        assert_eq!(records["10.0.0.1"], PoolIPAllocation::reserved_for("n1"));
    }

    #[test]
    fn a_rebind_on_the_node_that_handed_the_address_out_follows_its_recording() {
        let usable = usable("10.0.0.1-10.0.0.2");
        let mut records = BTreeMap::from([("10.0.0.1".to_owned(), PoolIPAllocation::reserved_for("n1"))]);
        let converting = BTreeMap::from([(ip("10.0.0.1"), holder("old"))]);
        let ops = [Op::Rebind {
            ip: ip("10.0.0.1"),
            previous_uid: "uid-old".into(),
            pod: "ns/new".into(),
            pod_uid: "uid-new".into(),
        }];
        let (r, k) = (BTreeSet::new(), BTreeSet::new());
        let out = decide_round(&mut records, &input("n1", &usable, &converting, &r, &k, &ops, 0));
        assert_eq!(out.outcomes, [Outcome::Rebound]);
        assert_eq!(
            records["10.0.0.1"],
            PoolIPAllocation::held_by("ns/new", "uid-new")
        );
    }

    #[test]
    fn recovery_splits_handed_out_from_unused_by_the_endpoints() {
        let records = BTreeMap::from([
            ("10.0.0.1".to_owned(), PoolIPAllocation::reserved_for("n1")),
            ("10.0.0.2".to_owned(), PoolIPAllocation::reserved_for("n1")),
            ("10.0.0.3".to_owned(), PoolIPAllocation::reserved_for("n2")),
            ("10.0.0.4".to_owned(), PoolIPAllocation::held_by("ns/z", "uid-z")),
        ]);
        let claims = HashMap::from([
            (ip("10.0.0.1"), vec![holder("a")]),
            (ip("10.0.0.3"), vec![holder("b")]),
        ]);
        let recovered = recover(&records, "n1", &claims, |_| true);
        assert_eq!(recovered.handed, BTreeMap::from([(ip("10.0.0.1"), holder("a"))]));
        assert_eq!(recovered.unused, BTreeSet::from([ip("10.0.0.2")]));
        assert!(recovered.disputed.is_empty() && recovered.contested.is_empty());
        assert!(has_reservations(&records, "n2") && !has_reservations(&records, "n3"));
        assert_eq!(
            holders(&records, IpFamily::V4),
            Holders::from_iter([("uid-z".to_owned(), ip("10.0.0.4"))])
        );
    }

    #[test]
    fn a_reservation_several_endpoints_claim_goes_to_the_one_live_pod_or_is_disputed() {
        let records = BTreeMap::from([
            ("10.0.0.1".to_owned(), PoolIPAllocation::reserved_for("n1")),
            ("10.0.0.2".to_owned(), PoolIPAllocation::reserved_for("n1")),
            ("10.0.0.3".to_owned(), PoolIPAllocation::reserved_for("n1")),
        ]);
        let claims = HashMap::from([
            (ip("10.0.0.1"), vec![holder("gone"), holder("a")]),
            (ip("10.0.0.2"), vec![holder("b"), holder("c")]),
            (ip("10.0.0.3"), vec![holder("gone"), holder("dead")]),
        ]);
        let recovered = recover(&records, "n1", &claims, |uid| {
            !["uid-gone", "uid-dead"].contains(&uid)
        });
        assert_eq!(recovered.handed, BTreeMap::from([(ip("10.0.0.1"), holder("a"))]));
        assert_eq!(recovered.unused, BTreeSet::from([ip("10.0.0.3")]));
        assert_eq!(
            recovered.disputed.keys().copied().collect::<Vec<_>>(),
            [ip("10.0.0.2")]
        );
        assert_eq!(recovered.contested.len(), 3);
    }

    #[test]
    fn targets_follow_the_pods_to_come_within_the_share() {
        assert_eq!(target_size(0, None, 128), 0);
        assert_eq!(target_size(40, None, 128), 40);
        assert_eq!(target_size(400, None, 128), 128);
        assert_eq!(target_size(40, Some(25), 128), 25);
        assert_eq!(even_share(100, 0), 100);
        assert_eq!(even_share(100, 4), 20);
        assert_eq!(even_share(9, 9), 1);
        assert_eq!(even_share(0, 9), 0);
        assert_eq!(worthwhile_refill(2), 1);
        assert_eq!(worthwhile_refill(128), 32);
    }

    #[test]
    fn only_holdings_clearly_beyond_the_target_go_back() {
        // Target 20, margin 5: up to 25 stays, beyond that everything above 20 goes.
        assert_eq!(excess_to_return(25, 20, 2), 0);
        assert_eq!(excess_to_return(26, 20, 2), 6);
        // A small target keeps its next pods' worth and a margin of as much.
        assert_eq!(excess_to_return(4, 1, 2), 0);
        assert_eq!(excess_to_return(5, 1, 2), 3);
        // Nothing to come: everything goes.
        assert_eq!(excess_to_return(1, 0, 0), 1);
        assert_eq!(excess_to_return(0, 0, 0), 0);
    }

    /// One simulated node agent: its view of its own reservations.
    #[derive(Default, Clone, Debug)]
    struct Agent {
        free: BTreeSet<IpAddr>,
        handed: BTreeMap<IpAddr, Holder>,
        releasing: BTreeMap<IpAddr, String>,
    }

    proptest! {
        /// Several nodes share one small pool. Each step, a node either hands out one of its
        /// reservations to a new pod without writing (the fast path), or writes a round (converting
        /// what it handed out, returning or keeping the rest, allocating and reserving), or releases
        /// a pod's record. After every step: no address is held by two pods (records plus every
        /// node's not-yet-written handouts), every handout is still reserved for its node or
        /// recorded for its pod, and no handout is ever lost.
        #[test]
        fn nodes_sharing_a_pool_never_hand_out_an_address_twice(
            steps in proptest::collection::vec((0usize..3, 0u8..4, 0usize..6), 1..80)
        ) {
            let usable = usable("10.0.0.1-10.0.0.12");
            let nodes = ["n0", "n1", "n2"];
            let mut agents = vec![Agent::default(); nodes.len()];
            let mut records: BTreeMap<String, PoolIPAllocation> = BTreeMap::new();
            let mut next_pod = 0u32;
            for (node, action, amount) in steps {
                let name = nodes[node];
                let agent = &mut agents[node];
                match action {
                    0 => {
                        if let Some(ip) = agent.free.pop_first() {
                            next_pod += 1;
                            agent.handed.insert(ip, holder(&format!("p{next_pod}")));
                        }
                    }
                    1 | 2 => {
                        let converting = std::mem::take(&mut agent.handed);
                        let releasing = std::mem::take(&mut agent.releasing);
                        let returning = if action == 2 { std::mem::take(&mut agent.free) } else { BTreeSet::new() };
                        let ops: Vec<Op> = (0..amount % 3).map(|_| { next_pod += 1; alloc(&format!("p{next_pod}")) }).collect();
                        let kept = agent.free.clone();
                        let out = decide_round(&mut records, &RoundInput {
                            node: name, usable: &usable, max_records: 100, converting: &converting,
                            releasing: &releasing, keep_released: action == 1, hold_releases: false, cooling: false,
                            returning: &returning, kept: &kept, ops: &ops, extra_wanted: amount,
                        });
                        prop_assert!(out.lost.is_empty(), "{:?}", out.lost);
                        agent.free.extend(out.reserved);
                    }
                    3 if amount % 2 == 0 => {
                        // A pod gives its address back; the write comes later (released lazily).
                        let held: Vec<(String, String)> = records.iter()
                            .filter(|(_, r)| r.reservation().is_none())
                            .map(|(ip, r)| (ip.clone(), r.pod_uid.clone())).collect();
                        if let Some((ip_text, uid)) = held.get(amount % held.len().max(1)) {
                            agent.releasing.insert(ip(ip_text), uid.clone());
                        }
                    }
                    _ => {
                        let held: Vec<(String, String)> = records.iter()
                            .filter(|(_, r)| r.reservation().is_none())
                            .map(|(ip, r)| (ip.clone(), r.pod_uid.clone())).collect();
                        if let Some((ip_text, uid)) = held.get(amount % held.len().max(1)) {
                            let ops = [Op::Release { ip: ip(ip_text), pod_uid: uid.clone() }];
                            let (c, r) = (BTreeMap::new(), BTreeSet::new());
                            let kept: BTreeSet<IpAddr> = agent.free.iter().chain(agent.handed.keys()).copied().collect();
                            let out = decide_round(&mut records, &input(name, &usable, &c, &r, &kept, &ops, 0));
                            agent.free.extend(out.reserved);
                        }
                    }
                }
                let mut holder_of: BTreeMap<IpAddr, String> = BTreeMap::new();
                for (ip_text, record) in &records {
                    if record.reservation().is_none() {
                        holder_of.insert(ip(ip_text), record.pod_uid.clone());
                    }
                }
                for (n, agent) in agents.iter().enumerate() {
                    for (ip, h) in &agent.handed {
                        let record = records.get(&ip.to_string());
                        prop_assert!(
                            record == Some(&PoolIPAllocation::reserved_for(nodes[n])),
                            "handout {ip} of {} is not reserved for it: {record:?}", nodes[n]
                        );
                        prop_assert!(holder_of.insert(*ip, h.pod_uid.clone()).is_none(), "{ip} held twice");
                    }
                    for ip in &agent.free {
                        prop_assert_eq!(records.get(&ip.to_string()), Some(&PoolIPAllocation::reserved_for(nodes[n])));
                    }
                }
            }
        }
    }
}
