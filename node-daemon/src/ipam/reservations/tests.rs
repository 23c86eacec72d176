//! Every transition of a node's reservations, one by one, then several nodes sharing one pool through
//! random sequences of them (with conflicts, lost responses and crashes), checking that no address
//! is ever held twice.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use spiderpool_ipmath::{IpFamily, IpSet};
use spiderpool_schema::ippool::PoolIPAllocation;

use super::*;
use crate::ipam::lease::{self, Holder, RoundInput};
use crate::ipam::pick::{Op, Outcome};

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

fn release(address: &str, pod: &str) -> Op {
    Op::Release {
        ip: ip(address),
        pod_uid: format!("uid-{pod}"),
    }
}

/// The gate of a pool at spec generation 1 with no SpiderReservedIPs.
fn open_gate(_: IpFamily) -> Option<HandoutGate> {
    Some(HandoutGate {
        version: None,
        generation: Some(1),
        deleting: false,
        reserved: IpSet::empty(IpFamily::V4),
    })
}

/// One simulated node: its state, and the pool's records it last wrote.
struct Node {
    name: &'static str,
    state: Reservations,
}

impl Node {
    /// A node recovered from `records` with no endpoints, checked against the spec by one round.
    fn started(name: &'static str, records: &mut BTreeMap<String, PoolIPAllocation>, now: Instant) -> Self {
        let mut node = Node {
            name,
            state: Reservations::default(),
        };
        node.state.recover(
            records,
            lease::Recovered::default(),
            Some(IpFamily::V4),
            None,
            now,
        );
        node.round(records, &usable_all(), &[], now, true);
        node
    }

    /// Node n1 alone on the pool at `t0`, three pods to come: its round recorded pod a's address
    /// and reserved for the others.
    fn with_a_pod_and_reservations(t0: Instant) -> (BTreeMap<String, PoolIPAllocation>, Self) {
        let mut records = BTreeMap::new();
        let mut node = Node::started("n1", &mut records, t0);
        node.state.set_upcoming(3);
        node.state.note_demand(t0);
        node.round(&mut records, &usable_all(), &[alloc("a")], t0, false)
            .unwrap();
        (records, node)
    }

    /// Plans, decides and commits one round against `records` (the write succeeds).
    fn round(
        &mut self,
        records: &mut BTreeMap<String, PoolIPAllocation>,
        usable: &IpSet,
        ops: &[Op],
        now: Instant,
        force: bool,
    ) -> Option<lease::RoundOutput> {
        let tuning = Tuning::default();
        let mut plan = self
            .state
            .plan_round(now, &tuning, gives_addresses(ops), !ops.is_empty(), force)?;
        let kept = self.state.check_spec(&mut plan, usable, IpFamily::V4);
        let output = decide(records, self.name, usable, &plan, &kept, ops);
        self.state.committed(
            &plan,
            &output,
            records,
            usable,
            Some(1),
            None,
            now,
            &Tuning::default(),
        );
        Some(output)
    }
}

fn usable_all() -> IpSet {
    usable("10.0.0.1-10.0.0.12")
}

fn decide(
    records: &mut BTreeMap<String, PoolIPAllocation>,
    node: &str,
    usable: &IpSet,
    plan: &RoundPlan,
    kept: &BTreeSet<IpAddr>,
    ops: &[Op],
) -> lease::RoundOutput {
    lease::decide_round(
        records,
        &RoundInput {
            node,
            usable,
            max_records: 1000,
            converting: &plan.converting,
            releasing: &plan.releasing,
            keep_released: plan.keep_released,
            hold_releases: plan.hold_releases,
            cooling: plan.cooling,
            returning: &plan.returning,
            kept,
            ops,
            extra_wanted: plan.extra_wanted,
        },
    )
}

#[test]
fn nothing_is_answered_before_recovery() {
    let mut state = Reservations::default();
    let now = Instant::now();
    assert_eq!(
        state.answer(&alloc("a"), now, &Tuning::default(), open_gate),
        None
    );
    assert!(!state.is_ready());
    assert!(state.needs_spec_check());
}

#[test]
fn top_up_reserves_for_the_pods_to_come_and_handout_needs_no_write() {
    let t0 = Instant::now();
    let mut records = BTreeMap::new();
    let mut node = Node::started("n1", &mut records, t0);
    node.state.set_upcoming(4);
    node.state.note_demand(t0);
    // An allocation with four pods to come: the round gives it one and reserves three more.
    let out = node
        .round(&mut records, &usable_all(), &[alloc("a")], t0, false)
        .unwrap();
    assert_eq!(out.outcomes, [Outcome::Allocated(ip("10.0.0.1"))]);
    assert_eq!(node.state.free().len(), 3);
    assert!(lease::holders(&records, IpFamily::V4).holds("uid-a", ip("10.0.0.1")));
    // The next ADD is answered at once from a reservation, and a retried one gets the same.
    let t1 = t0 + Duration::from_millis(10);
    assert_eq!(
        node.state.answer(&alloc("b"), t1, &Tuning::default(), open_gate),
        Some(Outcome::Allocated(ip("10.0.0.2")))
    );
    assert_eq!(
        node.state.answer(&alloc("b"), t1, &Tuning::default(), open_gate),
        Some(Outcome::Allocated(ip("10.0.0.2")))
    );
    assert_eq!(node.state.handed().len(), 1);
    // The pool still says "reserved for n1" until the next round records it for b.
    assert_eq!(records["10.0.0.2"], PoolIPAllocation::reserved_for("n1"));
    let due = node.state.next_due(t1, &Tuning::default()).unwrap();
    assert!(due <= t1 + Tuning::default().flush_idle);
    node.round(
        &mut records,
        &usable_all(),
        &[],
        t1 + Duration::from_millis(300),
        false,
    )
    .unwrap();
    assert_eq!(records["10.0.0.2"], PoolIPAllocation::held_by("ns/b", "uid-b"));
    assert!(node.state.handed().is_empty());
}

#[test]
fn handouts_wait_while_the_spec_changed_the_pool_is_deleted_or_a_reserved_ip_took_the_address() {
    let t0 = Instant::now();
    let mut records = BTreeMap::new();
    let mut node = Node::started("n1", &mut records, t0);
    node.state.set_upcoming(2);
    node.state.note_demand(t0);
    node.round(&mut records, &usable_all(), &[alloc("a")], t0, false)
        .unwrap();
    assert_eq!(node.state.free().len(), 1);
    let changed = |_: IpFamily| {
        Some(HandoutGate {
            version: None,
            generation: Some(2),
            deleting: false,
            reserved: IpSet::empty(IpFamily::V4),
        })
    };
    assert_eq!(
        node.state.answer(&alloc("b"), t0, &Tuning::default(), changed),
        None
    );
    let deleting = |_: IpFamily| {
        Some(HandoutGate {
            version: None,
            generation: Some(1),
            deleting: true,
            reserved: IpSet::empty(IpFamily::V4),
        })
    };
    assert_eq!(
        node.state.answer(&alloc("b"), t0, &Tuning::default(), deleting),
        None
    );
    let reserved_ip = |_: IpFamily| {
        Some(HandoutGate {
            version: None,
            generation: Some(1),
            deleting: false,
            reserved: IpSet::parse_list(IpFamily::V4, &["10.0.0.2"]).unwrap(),
        })
    };
    assert_eq!(
        node.state
            .answer(&alloc("b"), t0, &Tuning::default(), reserved_ip),
        None
    );
}

#[test]
fn releases_of_handouts_free_them_at_once_and_recorded_ones_become_reservations() {
    let t0 = Instant::now();
    let (mut records, mut node) = Node::with_a_pod_and_reservations(t0);
    let b = node
        .state
        .answer(&alloc("b"), t0, &Tuning::default(), open_gate)
        .unwrap();
    assert_eq!(b, Outcome::Allocated(ip("10.0.0.2")));
    // Released before it was recorded: no write needed; unused again once it has cooled down.
    assert_eq!(
        node.state
            .answer(&release("10.0.0.2", "b"), t0, &Tuning::default(), open_gate),
        Some(Outcome::Released(true))
    );
    assert!(!node.state.free().contains(&ip("10.0.0.2")));
    assert!(node.state.cooling().contains_key(&ip("10.0.0.2")));
    node.state.cool(t0 + Tuning::default().release_cooldown);
    assert!(node.state.free().contains(&ip("10.0.0.2")));
    // A recorded address: answered at once, recorded as this node's reservation by the next round.
    assert_eq!(
        node.state
            .answer(&release("10.0.0.1", "a"), t0, &Tuning::default(), open_gate),
        Some(Outcome::Released(true))
    );
    assert_eq!(node.state.releasing().len(), 1);
    // A release by a pod that does not hold the address goes through a write.
    assert_eq!(
        node.state
            .answer(&release("10.0.0.3", "x"), t0, &Tuning::default(), open_gate),
        None
    );
    let out = node
        .round(
            &mut records,
            &usable_all(),
            &[],
            t0 + Duration::from_millis(300),
            false,
        )
        .unwrap();
    assert!(out.reserved.contains(&ip("10.0.0.1")));
    assert_eq!(records["10.0.0.1"], PoolIPAllocation::reserved_for("n1"));
}

#[test]
fn idle_reservations_go_back_and_a_full_pool_takes_back_the_excess_at_once() {
    let t0 = Instant::now();
    let tuning = Tuning::default();
    let mut records = BTreeMap::new();
    let mut node = Node::started("n1", &mut records, t0);
    node.state.set_upcoming(6);
    node.state.note_demand(t0);
    node.round(&mut records, &usable_all(), &[alloc("a")], t0, false)
        .unwrap();
    assert_eq!(node.state.free().len(), 5);
    // Idle for `idle_return`: everything unused goes back.
    let later = t0 + tuning.idle_return;
    assert!(node.state.next_due(t0, &tuning).unwrap() <= later);
    node.state.set_upcoming(0);
    let out = node
        .round(&mut records, &usable_all(), &[], later, false)
        .unwrap();
    assert!(out.reserved.is_empty());
    assert!(node.state.free().is_empty());
    assert_eq!(records.len(), 1);

    // Full pool (nothing free outside reservations), target 1 with one pod to come: the excess
    // beyond target and margin goes back at once, the lowest stay.
    let mut node = Node::started("n2", &mut records, t0);
    node.state.set_upcoming(11);
    node.state.note_demand(t0);
    node.round(&mut records, &usable_all(), &[alloc("b")], t0, false)
        .unwrap();
    assert_eq!(node.state.free().len(), 10);
    node.state.set_upcoming(1);
    node.state.observe(&PoolView {
        version: Some("9".into()),
        usable: 12,
        records: 12,
        reservations: 10,
        other_nodes: 0,
        shards: 1,
    });
    // Target 1, margin 1: all but one go back.
    assert_eq!(node.state.excess(&tuning), 9);
    assert_eq!(node.state.next_due(t0, &tuning), Some(t0));
    let mut plan = node.state.plan_round(t0, &tuning, 0, false, false).unwrap();
    assert_eq!(plan.returning.len(), 9);
    assert_eq!(node.state.free().len(), 1);
    assert!(
        node.state
            .free()
            .iter()
            .all(|kept| plan.returning.iter().all(|r| kept < r))
    );
    let kept = node.state.check_spec(&mut plan, &usable_all(), IpFamily::V4);
    decide(&mut records, "n2", &usable_all(), &plan, &kept, &[]);
    assert_eq!(lease::reserving_nodes(&records, None).len(), 1);
}

#[test]
fn a_conflict_puts_handouts_back_and_gives_nothing_back_twice() {
    let t0 = Instant::now();
    let tuning = Tuning::default();
    let (_, mut node) = Node::with_a_pod_and_reservations(t0);
    node.state
        .answer(&alloc("b"), t0, &Tuning::default(), open_gate)
        .unwrap();
    node.state
        .answer(&release("10.0.0.1", "a"), t0, &Tuning::default(), open_gate)
        .unwrap();
    // The round conflicts (another node wrote first): it is abandoned.
    let later = t0 + tuning.idle_return;
    let plan = node.state.plan_round(later, &tuning, 0, false, false).unwrap();
    assert!(!plan.converting.is_empty() && !plan.releasing.is_empty() && !plan.returning.is_empty());
    let returning = plan.returning.clone();
    node.state.abandoned(plan, later);
    // Handed-out and released ones are pending again; the ones being returned are not offered.
    assert_eq!(node.state.handed().len(), 1);
    assert_eq!(node.state.releasing().len(), 1);
    assert!(node.state.free().is_disjoint(&returning));
    assert_eq!(
        node.state
            .answer(&alloc("c"), later, &Tuning::default(), open_gate),
        None
    );
}

#[test]
fn a_lost_response_is_adopted_by_the_next_round() {
    let t0 = Instant::now();
    let tuning = Tuning::default();
    let mut records = BTreeMap::new();
    let mut node = Node::started("n1", &mut records, t0);
    node.state.set_upcoming(4);
    node.state.note_demand(t0);
    // The write is applied but its response is lost: the state abandons the round.
    let mut plan = node.state.plan_round(t0, &tuning, 1, true, false).unwrap();
    let kept = node.state.check_spec(&mut plan, &usable_all(), IpFamily::V4);
    let ops = [alloc("a")];
    decide(&mut records, "n1", &usable_all(), &plan, &kept, &ops);
    node.state.abandoned(plan, t0);
    assert!(node.state.free().is_empty());
    // The retried round reads the applied write: the pod gets the same address, and the
    // reservations this node did not know of are adopted.
    let out = node.round(&mut records, &usable_all(), &ops, t0, false).unwrap();
    assert_eq!(out.outcomes, [Outcome::Allocated(ip("10.0.0.1"))]);
    assert_eq!(node.state.free().len(), 3);
    assert_eq!(
        lease::holders(&records, IpFamily::V4),
        Holders::from_iter([("uid-a".to_owned(), ip("10.0.0.1"))])
    );
}

#[test]
fn reservations_the_operator_removed_are_reported_lost_never_handed_again() {
    let t0 = Instant::now();
    let (mut records, mut node) = Node::with_a_pod_and_reservations(t0);
    node.state
        .answer(&alloc("b"), t0, &Tuning::default(), open_gate)
        .unwrap();
    // Someone removed this node's reservations and another node took the handed-out one.
    records.retain(|_, r| r.reservation().is_none());
    records.insert("10.0.0.2".into(), PoolIPAllocation::held_by("ns/x", "uid-x"));
    let out = node
        .round(
            &mut records,
            &usable_all(),
            &[],
            t0 + Duration::from_secs(3),
            false,
        )
        .unwrap();
    assert_eq!(out.lost.len(), 1);
    assert_eq!(records["10.0.0.2"].pod_uid, "uid-x");
}

#[test]
fn recovery_hands_back_out_nothing_until_the_spec_is_checked() {
    let t0 = Instant::now();
    let records = BTreeMap::from([
        ("10.0.0.1".to_owned(), PoolIPAllocation::reserved_for("n1")),
        ("10.0.0.2".to_owned(), PoolIPAllocation::reserved_for("n1")),
        ("10.0.0.3".to_owned(), PoolIPAllocation::held_by("ns/z", "uid-z")),
    ]);
    let claims = HashMap::from([(ip("10.0.0.1"), vec![holder("a")])]);
    let recovered = lease::recover(&records, "n1", &claims, |_| true);
    let mut state = Reservations::default();
    state.note_demand(t0);
    state.recover(&records, recovered, Some(IpFamily::V4), None, t0);
    assert!(state.is_ready() && state.needs_spec_check());
    assert_eq!(state.address_of("uid-a"), Some(ip("10.0.0.1")));
    assert_eq!(state.address_of("uid-z"), Some(ip("10.0.0.3")));
    // The gate's generation is known; the state's is not until a round checked the spec.
    assert_eq!(state.answer(&alloc("b"), t0, &Tuning::default(), open_gate), None);
    // A retried ADD of a recovered pod is answered.
    assert_eq!(
        state.answer(&alloc("a"), t0, &Tuning::default(), open_gate),
        Some(Outcome::Allocated(ip("10.0.0.1")))
    );
}

#[test]
fn a_retried_add_is_answered_from_memory_only_while_the_pool_is_as_last_read_or_written() {
    let t0 = Instant::now();
    let records = BTreeMap::from([("10.0.0.3".to_owned(), PoolIPAllocation::held_by("ns/a", "uid-a"))]);
    let mut state = Reservations::default();
    state.recover(
        &records,
        lease::Recovered::default(),
        Some(IpFamily::V4),
        Some("7"),
        t0,
    );
    let at = |version: &'static str| {
        move |_: IpFamily| {
            Some(HandoutGate {
                version: Some(version.to_owned()),
                generation: None,
                deleting: false,
                reserved: IpSet::empty(IpFamily::V4),
            })
        }
    };
    assert_eq!(
        state.answer(&alloc("a"), t0, &Tuning::default(), at("7")),
        Some(Outcome::Allocated(ip("10.0.0.3")))
    );
    // Someone else wrote the pool since (reclaim may have freed a's address): ask the records.
    assert_eq!(state.answer(&alloc("a"), t0, &Tuning::default(), at("8")), None);
}

#[test]
fn the_pool_gone_clears_everything() {
    let t0 = Instant::now();
    let (_, mut node) = Node::with_a_pod_and_reservations(t0);
    node.state.clear();
    assert!(node.state.free().is_empty() && node.state.handed().is_empty());
    assert!(node.state.needs_spec_check());
    assert_eq!(node.state.address_of("uid-a"), None);
}

#[test]
fn spec_changes_send_unusable_reservations_back() {
    let t0 = Instant::now();
    let mut records = BTreeMap::new();
    let mut node = Node::started("n1", &mut records, t0);
    node.state.set_upcoming(4);
    node.state.note_demand(t0);
    node.round(&mut records, &usable_all(), &[alloc("a")], t0, false)
        .unwrap();
    assert_eq!(node.state.free().len(), 3);
    let narrower = usable("10.0.0.1-10.0.0.2");
    let mut plan = node
        .state
        .plan_round(t0, &Tuning::default(), 0, false, true)
        .unwrap();
    node.state.check_spec(&mut plan, &narrower, IpFamily::V4);
    assert_eq!(plan.returning, BTreeSet::from([ip("10.0.0.3"), ip("10.0.0.4")]));
    assert_eq!(node.state.free(), &BTreeSet::from([ip("10.0.0.2")]));
}

#[test]
fn flush_times_grow_with_the_nodes_writing_the_pool_up_to_the_same_cap() {
    let tuning = Tuning::default();
    assert_eq!(tuning.for_pool(0, 1), tuning);
    assert_eq!(tuning.for_pool(0, 0), tuning);
    let ten_writers = tuning.for_pool(0, 10);
    assert_eq!(ten_writers.flush_idle, Duration::from_secs(2));
    assert_eq!(ten_writers.flush_max_age, Duration::from_secs(20));
    // The reservation size follows the records only.
    assert_eq!(ten_writers.max_size, tuning.max_size);
    let both = tuning.for_pool(3_000, 4);
    assert_eq!(both.max_size, 3 * 128);
    assert_eq!(both.flush_max_age, Duration::from_secs(2) * 12);
    let capped = tuning.for_pool(10_000, 100);
    assert_eq!(capped.flush_idle, Duration::from_millis(200) * 16);
    assert_eq!(capped.flush_max_age, Duration::from_secs(2) * 16);
    assert_eq!(capped.max_size, 1_280);
}

#[test]
fn with_ten_nodes_writing_the_pool_or_its_shards_a_handout_is_recorded_later_except_when_the_pool_is_full() {
    let t0 = Instant::now();
    let view = |usable: u128, records: usize, other_nodes: usize| PoolView {
        version: Some("1".into()),
        usable,
        records,
        reservations: 0,
        other_nodes,
        shards: 1,
    };
    let shard = |records: usize, other_nodes: usize, shards: usize| PoolView {
        shards,
        ..view(250, records, other_nodes)
    };
    let due_after_one_handout = |view: &PoolView| {
        let mut records = BTreeMap::new();
        let mut node = Node::started("n1", &mut records, t0);
        node.state.set_upcoming(4);
        node.state.note_demand(t0);
        node.round(&mut records, &usable_all(), &[alloc("a")], t0, false)
            .unwrap();
        node.state.observe(view);
        node.state
            .answer(&alloc("b"), t0, &Tuning::default(), open_gate)
            .unwrap();
        // c and d still to come, and two reservations left for them: nothing to top up.
        node.state.set_upcoming(2);
        // The first moment a round is due, in steps of 10 ms (a clone decides each).
        for step in 0..=300 {
            let at = t0 + Duration::from_millis(10 * step);
            if let Some(plan) = node
                .state
                .clone()
                .plan_round(at, &Tuning::default(), 0, false, false)
            {
                assert!(plan.converting.contains_key(&ip("10.0.0.2")));
                return at - t0;
            }
        }
        panic!("the handout is never recorded");
    };
    // One writer: recorded once no handout came for flush_idle.
    assert_eq!(
        due_after_one_handout(&view(250, 4, 0)),
        Duration::from_millis(200)
    );
    // Ten: ten times later.
    assert_eq!(due_after_one_handout(&view(250, 4, 9)), Duration::from_secs(2));
    // The pool full (nothing free outside reservations): as for one writer.
    assert_eq!(due_after_one_handout(&view(4, 4, 9)), Duration::from_millis(200));
    // Two nodes writing one of three shards of a pool: as six writing the pool…
    assert_eq!(
        due_after_one_handout(&shard(4, 1, 3)),
        Duration::from_millis(1_200)
    );
    assert_eq!(due_after_one_handout(&shard(4, 1, 1)), Duration::from_millis(400));
    // …but as two once less than an eighth of the shard is free (32 of 250 is not less).
    assert_eq!(
        due_after_one_handout(&shard(218, 1, 3)),
        Duration::from_millis(1_200)
    );
    assert_eq!(
        due_after_one_handout(&shard(219, 1, 3)),
        Duration::from_millis(400)
    );
}

#[test]
fn batches_grow_with_the_records_of_the_pool_in_steps_up_to_a_cap() {
    let tuning = Tuning::default();
    // Small pools keep the tuning as it is.
    assert_eq!(tuning.for_records(0), tuning);
    assert_eq!(tuning.for_records(1_999), tuning);
    let ten = tuning.for_records(10_000);
    assert_eq!(ten.max_size, 1_280);
    assert_eq!(ten.flush_idle, Duration::from_secs(2));
    assert_eq!(ten.flush_max_age, Duration::from_secs(20));
    // What does not set a write's size stays.
    assert_eq!(ten.idle_return, tuning.idle_return);
    assert_eq!(ten.tight_return, tuning.tight_return);
    assert_eq!(ten.release_cooldown, tuning.release_cooldown);
    let capped = tuning.for_records(1_000_000);
    assert_eq!(capped.max_size, 128 * MAX_SIZE_FACTOR);
    assert_eq!(capped.flush_max_age, Duration::from_secs(2) * 16);
    // 0 turns the scaling off, and reservations that are off stay off.
    let fixed = Tuning {
        records_per_step: 0,
        ..Tuning::default()
    };
    assert_eq!(fixed.for_records(1_000_000), fixed);
    let off = Tuning {
        max_size: 0,
        ..Tuning::default()
    };
    assert_eq!(off.for_records(1_000_000).max_size, 0);
}

#[test]
fn nodes_record_their_handouts_at_their_own_moments() {
    let tuning = Tuning::default();
    let names: Vec<String> = (0..10).map(|i| format!("node{i}")).collect();
    let ages: BTreeSet<Duration> = names
        .iter()
        .map(|name| tuning.for_node(name).flush_max_age)
        .collect();
    // Ten nodes of one cluster: ten different moments, all within a quarter of the tuning.
    assert_eq!(ages.len(), 10);
    for age in &ages {
        assert!(*age >= tuning.flush_max_age * 3 / 4 && *age < tuning.flush_max_age * 5 / 4);
    }
    // The same node always gets the same, and nothing else changes.
    let node = tuning.for_node("node3");
    assert_eq!(node, tuning.for_node("node3"));
    assert_eq!(
        Tuning {
            flush_idle: tuning.flush_idle,
            flush_max_age: tuning.flush_max_age,
            ..node.clone()
        },
        tuning
    );
    assert_eq!(
        node.flush_idle.as_nanos() * tuning.flush_max_age.as_nanos(),
        node.flush_max_age.as_nanos() * tuning.flush_idle.as_nanos()
    );
}

#[test]
fn a_node_writes_a_big_pool_less_often_and_reserves_more_of_it() {
    let t0 = Instant::now();
    let tuning = Tuning::default();
    let view = |records: usize| PoolView {
        version: Some("5".into()),
        usable: 65_533,
        records,
        reservations: 3,
        other_nodes: 0,
        shards: 1,
    };
    let mut records = BTreeMap::new();
    let mut node = Node::started("n1", &mut records, t0);
    // The target: capped at max_size in a small pool, eight times that at 8,000 records.
    node.state.set_upcoming(5_000);
    node.state.observe(&view(500));
    assert_eq!(node.state.target(&tuning), 128);
    node.state.observe(&view(8_000));
    assert_eq!(node.state.target(&tuning), 1_024);

    // A handout waits to be recorded (no pods to come, so no top-up is due).
    node.state.set_upcoming(4);
    node.state.note_demand(t0);
    node.round(&mut records, &usable_all(), &[alloc("a")], t0, false)
        .unwrap();
    node.state.set_upcoming(0);
    let t1 = t0 + Duration::from_millis(10);
    node.state.answer(&alloc("b"), t1, &tuning, open_gate).unwrap();
    let quiet = t1 + tuning.flush_idle;
    // In a small pool it is recorded once the node is quiet for flush_idle…
    let mut small = node.state.clone();
    small.observe(&view(500));
    let plan = small.plan_round(quiet, &tuning, 0, false, false).unwrap();
    assert_eq!(plan.converting.len(), 1);
    // …holding 8,000 records, only after eight times that.
    node.state.observe(&view(8_000));
    assert!(
        node.state
            .plan_round(t1 + tuning.flush_idle * 7, &tuning, 0, false, false)
            .is_none()
    );
    let plan = node
        .state
        .plan_round(t1 + tuning.flush_idle * 8, &tuning, 0, false, false)
        .unwrap();
    assert_eq!(plan.converting.len(), 1);
}

#[test]
fn pods_bound_in_a_burst_are_reserved_for_once_it_pauses_or_its_first_has_waited() {
    let t0 = Instant::now();
    let tuning = Tuning::default();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    let mut records = BTreeMap::new();
    let started = Node::started("n1", &mut records, t0).state;

    // Twenty pods bound one every 100 ms: no top-up while they keep coming…
    let mut node = started.clone();
    for i in 1..=20 {
        node.set_upcoming(i);
        node.note_bound(ms(100 * i as u64));
        assert!(
            node.clone()
                .plan_round(ms(100 * i as u64), &tuning, 0, false, false)
                .is_none()
        );
    }
    // …until the first has waited flush_max_age: then one top-up for all of them.
    assert_eq!(
        node.next_due(ms(2_000), &tuning),
        Some(ms(100) + tuning.flush_max_age)
    );
    assert!(
        node.clone()
            .plan_round(ms(2_099), &tuning, 0, false, false)
            .is_none()
    );
    let plan = node.plan_round(ms(2_100), &tuning, 0, false, false).unwrap();
    assert_eq!(plan.extra_wanted, 20);

    // Three bound within 100 ms: reserved for once none came for flush_idle.
    let mut node = started.clone();
    for i in 0..3 {
        node.set_upcoming(i + 1);
        node.note_bound(ms(50 * i as u64));
    }
    assert_eq!(node.next_due(ms(100), &tuning), Some(ms(100) + tuning.flush_idle));
    let plan = node.plan_round(ms(300), &tuning, 0, false, false).unwrap();
    assert_eq!(plan.extra_wanted, 3);

    // An ADD asking during the burst: the top-up is due at once.
    let mut node = started;
    node.set_upcoming(5);
    node.note_bound(ms(0));
    node.note_demand(ms(10));
    assert_eq!(node.next_due(ms(10), &tuning), Some(ms(10)));
}

#[test]
fn refills_pause_after_a_short_one() {
    let t0 = Instant::now();
    let tuning = Tuning::default();
    let mut records = BTreeMap::new();
    let mut node = Node::started("n1", &mut records, t0);
    // Twelve addresses, wanted: one for a plus 20 to come. It gets what there is.
    node.state.set_upcoming(21);
    node.state.note_demand(t0);
    node.round(&mut records, &usable_all(), &[alloc("a")], t0, false)
        .unwrap();
    assert_eq!(node.state.free().len(), 11);
    for i in 0..6 {
        node.state
            .answer(&alloc(&format!("p{i}")), t0, &Tuning::default(), open_gate)
            .unwrap();
    }
    node.state.observe(&PoolView {
        version: Some("5".into()),
        usable: 20,
        records: 12,
        reservations: 11,
        other_nodes: 0,
        shards: 1,
    });
    // Half the target used, room outside: a refill is due, but not before the pause after the
    // short one.
    assert_eq!(node.state.target(&tuning), 19);
    assert!(
        node.state
            .plan_round(t0 + SHORT_REFILL_PAUSE / 2, &tuning, 0, false, false)
            .is_none()
    );
    let plan = node
        .state
        .plan_round(t0 + SHORT_REFILL_PAUSE, &tuning, 0, false, false)
        .unwrap();
    assert_eq!(plan.extra_wanted, 14);
}

#[test]
fn a_handout_whose_recording_may_have_been_applied_is_released_through_a_write() {
    let t0 = Instant::now();
    let tuning = Tuning::default();
    let (mut records, mut node) = Node::with_a_pod_and_reservations(t0);
    let Some(Outcome::Allocated(handed)) = node.state.answer(&alloc("b"), t0, &Tuning::default(), open_gate)
    else {
        panic!("no handout");
    };
    // The round recording b's address is applied, but its answer is lost and the round is abandoned
    // (the retry could not decide: say the pool's spec became unreadable).
    let later = t0 + Duration::from_millis(300);
    let mut plan = node.state.plan_round(later, &tuning, 0, false, false).unwrap();
    let kept = node.state.check_spec(&mut plan, &usable_all(), IpFamily::V4);
    decide(&mut records, "n1", &usable_all(), &plan, &kept, &[]);
    node.state.abandoned(plan, later);
    assert_eq!(
        records[&handed.to_string()],
        PoolIPAllocation::held_by("ns/b", "uid-b")
    );
    // b's DEL: the address must not be offered again before a write turns b's record into this
    // node's reservation; handing it to c now would leave the pool saying b holds it, and the
    // operator's reclaim would free it under c once b is gone.
    assert_eq!(
        node.state.answer(
            &release(&handed.to_string(), "b"),
            later,
            &Tuning::default(),
            open_gate
        ),
        Some(Outcome::Released(true))
    );
    assert!(
        !node.state.free().contains(&handed),
        "{handed} offered again before a write"
    );
    let out = node
        .round(
            &mut records,
            &usable_all(),
            &[],
            later + Duration::from_millis(300),
            false,
        )
        .unwrap();
    assert!(out.reserved.contains(&handed));
    assert_eq!(records[&handed.to_string()], PoolIPAllocation::reserved_for("n1"));
    assert!(node.state.cooling().contains_key(&handed));
}

#[test]
fn a_pod_that_gives_back_a_handout_in_flight_and_asks_again_is_known_to_hold_its_new_address() {
    let t0 = Instant::now();
    let tuning = Tuning::default();
    let (mut records, mut node) = Node::with_a_pod_and_reservations(t0);
    let handout = |node: &mut Node| match node.state.answer(&alloc("b"), t0, &tuning, open_gate) {
        Some(Outcome::Allocated(ip)) => ip,
        other => panic!("no handout: {other:?}"),
    };
    // b's ADD takes a reservation; the round recording it is sent…
    let first = handout(&mut node);
    let later = t0 + Duration::from_millis(300);
    let mut plan = node.state.plan_round(later, &tuning, 0, false, false).unwrap();
    let kept = node.state.check_spec(&mut plan, &usable_all(), IpFamily::V4);
    // …and while it is in flight the ADD gives the address back (its endpoint could not be
    // written) and asks again: b gets another reservation.
    assert_eq!(
        node.state
            .answer(&release(&first.to_string(), "b"), later, &tuning, open_gate),
        Some(Outcome::Released(true))
    );
    let second = handout(&mut node);
    assert_ne!(first, second);
    assert!(node.state.holds("uid-b", second) && !node.state.holds("uid-b", first));

    // The round was applied but its answer lost: the pool now records the first address for b. The
    // node must not hand it to b again, nor forget the second.
    decide(&mut records, "n1", &usable_all(), &plan, &kept, &[]);
    node.state.abandoned(plan, later);
    assert_eq!(
        records[&first.to_string()],
        PoolIPAllocation::held_by("ns/b", "uid-b")
    );
    assert!(
        !node.state.handed().contains_key(&first),
        "{first} handed to b again"
    );
    assert!(node.state.holds("uid-b", second) && !node.state.holds("uid-b", first));

    // The next round records the second for b and frees the first, which cools down.
    node.round(&mut records, &usable_all(), &[], later, false)
        .unwrap();
    assert_eq!(
        records[&second.to_string()],
        PoolIPAllocation::held_by("ns/b", "uid-b")
    );
    assert_eq!(records[&first.to_string()], PoolIPAllocation::reserved_for("n1"));
    assert!(node.state.cooling().contains_key(&first));
    assert!(node.state.holds("uid-b", second) && !node.state.holds("uid-b", first));
    assert_eq!(node.state.address_of("uid-b"), Some(second));
}

#[test]
fn a_handout_given_back_after_its_round_did_not_land_cools_down_like_any_release() {
    let t0 = Instant::now();
    let tuning = Tuning::default();
    let (mut records, mut node) = Node::with_a_pod_and_reservations(t0);
    let Some(Outcome::Allocated(handed)) = node.state.answer(&alloc("b"), t0, &tuning, open_gate) else {
        panic!("no handout");
    };
    // The round recording it conflicts (not applied): the handout may have been recorded as far as
    // the node knows, so b's release goes through a write…
    let later = t0 + Duration::from_millis(300);
    let plan = node.state.plan_round(later, &tuning, 0, false, false).unwrap();
    node.state.abandoned(plan, later);
    assert_eq!(
        node.state
            .answer(&release(&handed.to_string(), "b"), later, &tuning, open_gate),
        Some(Outcome::Released(true))
    );
    assert!(!node.state.handed().contains_key(&handed));
    // …which finds it still this node's reservation: it cools down before anyone gets it again.
    let out = node
        .round(&mut records, &usable_all(), &[], later, false)
        .unwrap();
    assert!(out.released.contains(&handed));
    assert_eq!(records[&handed.to_string()], PoolIPAllocation::reserved_for("n1"));
    assert!(node.state.cooling().contains_key(&handed));
    assert!(!node.state.free().contains(&handed));
}

#[test]
fn released_addresses_cool_down_before_anyone_gets_them_again() {
    let t0 = Instant::now();
    let tuning = Tuning::default();
    let mut records = BTreeMap::new();
    let mut node = Node::started("n1", &mut records, t0);
    node.state.note_demand(t0);
    // a holds the only address of a one-address pool.
    let one = usable("10.0.0.1-10.0.0.1");
    node.round(&mut records, &one, &[alloc("a")], t0, false).unwrap();
    node.state
        .answer(&release("10.0.0.1", "a"), t0, &tuning, open_gate)
        .unwrap();
    // The write after a's DEL keeps the address as this node's reservation, cooling down; b, asking
    // meanwhile, waits instead of failing: the pool is full, not exhausted for good.
    let t1 = t0 + Duration::from_millis(300);
    let out = node.round(&mut records, &one, &[alloc("b")], t1, false).unwrap();
    assert!(
        matches!(&out.outcomes[0], Outcome::Wait(why) if why.contains("cools down")),
        "{:?}",
        out.outcomes
    );
    assert_eq!(records["10.0.0.1"], PoolIPAllocation::reserved_for("n1"));
    assert!(node.state.free().is_empty());
    assert_eq!(node.state.answer(&alloc("b"), t1, &tuning, open_gate), None);
    // Nor does it go back to the pool (for another node to take) while it cools, idle or not.
    let t2 = t0 + tuning.idle_return + Duration::from_millis(100);
    assert!(t2 < t0 + tuning.release_cooldown);
    if let Some(plan) = node.state.plan_round(t2, &tuning, 0, false, false) {
        assert!(plan.returning.is_empty(), "{plan:?}");
        node.state.abandoned(plan, t2);
    }
    // Once cooled, it is handed to the next pod.
    let due = node.state.next_due(t1, &tuning).unwrap();
    assert!(due <= t1 + tuning.release_cooldown);
    let t3 = t1 + tuning.release_cooldown;
    assert_eq!(
        node.state.answer(&alloc("b"), t3, &tuning, open_gate),
        Some(Outcome::Allocated(ip("10.0.0.1")))
    );
}

#[test]
fn an_idle_node_gives_addresses_that_cool_one_after_another_back_in_one_write() {
    let t0 = Instant::now();
    let tuning = Tuning::default();
    let mut records = BTreeMap::new();
    let mut node = Node::started("n1", &mut records, t0);
    node.state.note_demand(t0);
    node.round(
        &mut records,
        &usable_all(),
        &[alloc("a"), alloc("b"), alloc("c")],
        t0,
        false,
    )
    .unwrap();
    // The three pods go, 150 ms apart; each release is written at once, so each address starts
    // cooling at its own moment.
    let t1 = t0 + Duration::from_millis(300);
    let mut released = BTreeSet::new();
    for (step, pod) in ["a", "b", "c"].into_iter().enumerate() {
        let at = t1 + Duration::from_millis(150) * u32::try_from(step).unwrap();
        let address = node.state.address_of(&format!("uid-{pod}")).unwrap();
        released.insert(address);
        node.state
            .answer(&release(&address.to_string(), pod), at, &tuning, open_gate)
            .unwrap();
        node.round(&mut records, &usable_all(), &[], at, true).unwrap();
    }
    // Long idle by the time they cool: before, each went back in a write of its own as it cooled.
    // Now none goes back while more keep cooling…
    let cooled = t1 + tuning.release_cooldown;
    assert!(cooled > t0 + tuning.idle_return);
    for step in 0..3 {
        let at = cooled + Duration::from_millis(150) * step;
        assert!(
            node.state.plan_round(at, &tuning, 0, false, false).is_none(),
            "step {step}"
        );
    }
    let last = cooled + Duration::from_millis(300);
    assert_eq!(node.state.free(), &released);
    let almost = last + tuning.flush_idle - Duration::from_millis(1);
    assert!(node.state.plan_round(almost, &tuning, 0, false, false).is_none());
    // …unless the pool has nothing free elsewhere: then other nodes may be waiting for them.
    let mut full = node.state.clone();
    full.observe(&PoolView {
        version: Some("9".into()),
        usable: 12,
        records: 12,
        reservations: 3,
        other_nodes: 0,
        shards: 1,
    });
    let plan = full.plan_round(last, &tuning, 0, false, false).unwrap();
    assert_eq!(plan.returning, released);
    // All three go back together once none has cooled for `flush_idle`.
    let plan = node
        .state
        .plan_round(last + tuning.flush_idle, &tuning, 0, false, false)
        .unwrap();
    assert_eq!(plan.returning, released);
}

#[test]
fn a_release_through_a_write_is_held_and_not_given_to_the_same_batch() {
    let t0 = Instant::now();
    let mut records = BTreeMap::from([("10.0.0.1".to_owned(), PoolIPAllocation::held_by("ns/a", "uid-a"))]);
    let two = usable("10.0.0.1-10.0.0.2");
    let mut node = Node::started("n1", &mut records, t0);
    // A release this node does not know the holder of (say after a restart), then an allocation,
    // in one batch: the released address is held, the allocation gets the other one.
    let out = node
        .round(
            &mut records,
            &two,
            &[release("10.0.0.1", "a"), alloc("b")],
            t0,
            false,
        )
        .unwrap();
    assert_eq!(
        out.outcomes,
        [Outcome::Released(true), Outcome::Allocated(ip("10.0.0.2"))]
    );
    assert_eq!(records["10.0.0.1"], PoolIPAllocation::reserved_for("n1"));
    assert!(node.state.cooling().contains_key(&ip("10.0.0.1")));
    // With no cooldown, a release frees the address for the same batch, as before.
    let mut records = BTreeMap::from([("10.0.0.1".to_owned(), PoolIPAllocation::held_by("ns/a", "uid-a"))]);
    let mut plan = RoundPlan::default();
    let kept = BTreeSet::new();
    plan.hold_releases = false;
    let out = decide(
        &mut records,
        "n1",
        &usable("10.0.0.1-10.0.0.1"),
        &plan,
        &kept,
        &[release("10.0.0.1", "a"), alloc("b")],
    );
    assert_eq!(
        out.outcomes,
        [Outcome::Released(true), Outcome::Allocated(ip("10.0.0.1"))]
    );
}

/// What a simulated node did.
#[derive(Debug, Clone)]
enum Step {
    /// Hand out one reservation to a new pod (fast path).
    Handout(usize),
    /// Release one of the pods this node gave an address (fast path, or through a round).
    Release(usize, usize),
    /// A round that succeeds, with some allocations.
    Round(usize, usize),
    /// A round that conflicts.
    Conflict(usize),
    /// A round applied by the API server whose answer was lost.
    LostResponse(usize, usize),
    /// The node's agent crashes and restarts (recovering from the records and its endpoints).
    Crash(usize),
    /// A pod gives its address back and asks again at once, under the same UID (an ADD whose
    /// endpoint could not be written gives back what it took, then allocates again).
    Readd(usize, usize),
    /// A round is planned and its write sent; until it lands, handouts and releases are answered.
    Begin(usize),
    /// The round in flight lands: written (0), applied with its answer lost (1), conflicted (2);
    /// `true`: the releases answered meanwhile joined it first (requests merged into a retry).
    Land(usize, u8, bool),
    /// Time passes.
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0usize..3).prop_map(Step::Handout),
        (0usize..3, 0usize..8).prop_map(|(n, i)| Step::Release(n, i)),
        (0usize..3, 0usize..3).prop_map(|(n, a)| Step::Round(n, a)),
        (0usize..3).prop_map(Step::Conflict),
        (0usize..3, 0usize..3).prop_map(|(n, a)| Step::LostResponse(n, a)),
        (0usize..3).prop_map(Step::Crash),
        (0u64..3000).prop_map(Step::Wait),
        (0usize..3, 0usize..8).prop_map(|(n, i)| Step::Readd(n, i)),
        (0usize..3).prop_map(Step::Begin),
        (0usize..3, 0u8..3, any::<bool>()).prop_map(|(n, how, merge)| Step::Land(n, how, merge)),
    ]
}

proptest! {
    /// Three nodes share one small pool and go through random transitions. The ledger is what every
    /// pod was told (its address, until it released it) and stands in for the pods' endpoints,
    /// which a crashed node recovers from. After every step: no address is held by two pods; each
    /// handout is reserved for its node or recorded for its pod, and its node knows the pod holds it
    /// (a repeated ADD is checked against that); a node's unused reservations are reserved for it;
    /// nothing is lost. A node's round may stay in flight while its node answers at once.
    #[test]
    fn no_address_is_ever_held_twice(steps in proptest::collection::vec(step(), 1..120)) {
        let names = ["n0", "n1", "n2"];
        let usable = usable_all();
        let tuning = Tuning::default();
        let mut now = Instant::now();
        let mut records: BTreeMap<String, PoolIPAllocation> = BTreeMap::new();
        let mut nodes: Vec<Node> = names.iter().map(|n| Node::started(n, &mut records, now)).collect();
        // Each node's round in flight: its plan and the reservations its spec check kept.
        let mut in_flight: Vec<Option<(RoundPlan, BTreeSet<IpAddr>)>> = vec![None, None, None];
        // Pod UID -> (node, address) for every pod told an address and not released.
        let mut ledger: BTreeMap<String, (usize, IpAddr)> = BTreeMap::new();
        let mut next_pod = 0u32;
        let mut new_pod = || { next_pod += 1; format!("p{next_pod}") };
        for step in steps {
            match step {
                Step::Handout(n) => {
                    let pod = new_pod();
                    nodes[n].state.note_demand(now);
                    nodes[n].state.set_upcoming(3);
                    if let Some(Outcome::Allocated(ip)) = nodes[n].state.answer(&alloc(&pod), now, &Tuning::default(), open_gate) {
                        ledger.insert(format!("uid-{pod}"), (n, ip));
                    }
                }
                Step::Release(n, i) => {
                    let mine: Vec<(String, IpAddr)> = ledger.iter()
                        .filter(|(_, (node, _))| *node == n)
                        .map(|(uid, (_, ip))| (uid.clone(), *ip)).collect();
                    if let Some((uid, ip)) = mine.get(i % mine.len().max(1)).cloned() {
                        let op = Op::Release { ip, pod_uid: uid.clone() };
                        let answered = nodes[n].state.answer(&op, now, &Tuning::default(), open_gate);
                        if answered.is_none() {
                            if in_flight[n].is_some() {
                                continue;
                            }
                            nodes[n].round(&mut records, &usable, &[op], now, false);
                        }
                        ledger.remove(&uid);
                    }
                }
                Step::Readd(n, i) => {
                    let mine: Vec<(String, IpAddr)> = ledger.iter()
                        .filter(|(_, (node, _))| *node == n)
                        .map(|(uid, (_, ip))| (uid.clone(), *ip)).collect();
                    let Some((uid, ip)) = mine.get(i % mine.len().max(1)).cloned() else {
                        continue;
                    };
                    let op = Op::Release { ip, pod_uid: uid.clone() };
                    if nodes[n].state.answer(&op, now, &tuning, open_gate).is_none() {
                        if in_flight[n].is_some() {
                            continue;
                        }
                        nodes[n].round(&mut records, &usable, &[op], now, false);
                    }
                    ledger.remove(&uid);
                    let again = Op::Allocate { pod: format!("ns/{}", &uid[4..]), pod_uid: uid.clone() };
                    nodes[n].state.note_demand(now);
                    let answered = match nodes[n].state.answer(&again, now, &tuning, open_gate) {
                        Some(outcome) => Some(outcome),
                        None if in_flight[n].is_none() => nodes[n]
                            .round(&mut records, &usable, std::slice::from_ref(&again), now, false)
                            .and_then(|out| out.outcomes.first().cloned()),
                        None => None,
                    };
                    if let Some(Outcome::Allocated(ip)) = answered {
                        ledger.insert(uid, (n, ip));
                    }
                }
                Step::Begin(n) => {
                    if in_flight[n].is_some() {
                        continue;
                    }
                    if let Some(mut plan) = nodes[n].state.plan_round(now, &tuning, 0, false, false) {
                        let kept = nodes[n].state.check_spec(&mut plan, &usable, IpFamily::V4);
                        in_flight[n] = Some((plan, kept));
                    }
                }
                Step::Land(n, how, merge) => {
                    let Some((mut plan, kept)) = in_flight[n].take() else {
                        continue;
                    };
                    let node = &mut nodes[n];
                    if merge {
                        plan.releasing.append(&mut node.state.take_releasing());
                    }
                    match how {
                        0 => {
                            let out = decide(&mut records, node.name, &usable, &plan, &kept, &[]);
                            prop_assert!(out.lost.is_empty(), "{:?}", out.lost);
                            node.state.committed(&plan, &out, &records, &usable, Some(1), None, now, &tuning);
                        }
                        1 => {
                            let out = decide(&mut records, node.name, &usable, &plan, &kept, &[]);
                            prop_assert!(out.lost.is_empty(), "{:?}", out.lost);
                            node.state.abandoned(plan, now);
                        }
                        _ => node.state.abandoned(plan, now),
                    }
                }
                Step::Round(n, _) | Step::LostResponse(n, _) | Step::Conflict(n) if in_flight[n].is_some() => {}
                Step::Round(n, allocations) | Step::LostResponse(n, allocations) => {
                    let pods: Vec<String> = (0..allocations).map(|_| new_pod()).collect();
                    let ops: Vec<Op> = pods.iter().map(|p| alloc(p)).collect();
                    nodes[n].state.note_demand(now);
                    let node = &mut nodes[n];
                    let Some(mut plan) = node.state.plan_round(now, &tuning, ops.len(), !ops.is_empty(), false) else {
                        continue;
                    };
                    let kept = node.state.check_spec(&mut plan, &usable, IpFamily::V4);
                    let out = decide(&mut records, node.name, &usable, &plan, &kept, &ops);
                    prop_assert!(out.lost.is_empty(), "{:?}", out.lost);
                    if matches!(step, Step::LostResponse(..)) {
                        // Applied, but the node never learns it: nothing was answered.
                        node.state.abandoned(plan, now);
                    } else {
                        node.state.committed(&plan, &out, &records, &usable, Some(1), None, now, &Tuning::default());
                        for (pod, outcome) in pods.iter().zip(&out.outcomes) {
                            if let Outcome::Allocated(ip) = outcome {
                                ledger.insert(format!("uid-{pod}"), (n, *ip));
                            }
                        }
                    }
                }
                Step::Conflict(n) => {
                    if let Some(plan) = nodes[n].state.plan_round(now, &tuning, 0, false, true) {
                        nodes[n].state.abandoned(plan, now);
                    }
                }
                Step::Crash(n) => {
                    // Its pods' endpoints say what it handed out.
                    let claims: HashMap<IpAddr, Vec<Holder>> = ledger.iter()
                        .filter(|(_, (node, _))| *node == n)
                        .map(|(uid, (_, ip))| (*ip, vec![Holder { pod: format!("ns/{}", &uid[4..]), pod_uid: uid.clone() }]))
                        .collect();
                    // A round in flight dies with it, unapplied.
                    in_flight[n] = None;
                    let recovered = lease::recover(&records, names[n], &claims, |_| true);
                    let mut state = Reservations::default();
                    state.recover(&records, recovered, Some(IpFamily::V4), None, now);
                    nodes[n].state = state;
                    nodes[n].round(&mut records, &usable, &[], now, true);
                }
                Step::Wait(ms) => now += Duration::from_millis(ms),
            }
            // No address twice among the pods told an address.
            let mut seen: BTreeMap<IpAddr, &str> = BTreeMap::new();
            for (uid, (_, ip)) in &ledger {
                prop_assert!(seen.insert(*ip, uid).is_none(), "{ip} told to two pods: {ledger:?}");
            }
            // Every pod's address is recorded for it, or still reserved for its node (handed out).
            for (uid, (n, ip)) in &ledger {
                let record = records.get(&ip.to_string());
                let ok = record.is_some_and(|r| &r.pod_uid == uid)
                    || record == Some(&PoolIPAllocation::reserved_for(names[*n]));
                prop_assert!(ok, "{uid}'s {ip} is {record:?}");
                prop_assert!(nodes[*n].state.holds(uid, *ip), "{} forgot {}'s {}", names[*n], uid, ip);
            }
            for (n, node) in nodes.iter().enumerate() {
                for ip in node.state.free().iter().chain(node.state.cooling().keys()) {
                    prop_assert_eq!(records.get(&ip.to_string()), Some(&PoolIPAllocation::reserved_for(names[n])));
                    prop_assert!(!ledger.values().any(|(_, held)| held == ip), "{} offers {} which a pod holds", names[n], ip);
                }
            }
        }
    }
}
