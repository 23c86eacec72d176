//! The writer through the fake API server: each scenario states the calls it makes.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use spiderpool_schema::endpoint::{IPAllocationDetail, PodIPAllocation, SpiderEndpointStatus};
use spiderpool_schema::ippool::PoolIPAllocation;
use spiderpool_schema::{SpiderEndpoint, SpiderIPPool, SpiderIPPoolSpec, SpiderIPPoolStatus};

use super::*;
use crate::api::deadline::Deadline;
use crate::api::fake::{Call, CallKind, FakeApi, Fault};
use crate::health::Health;

const TIMEOUT: Duration = Duration::from_secs(5);

struct World {
    fake: Arc<FakeApi>,
    writers: PoolWriters,
    metrics: Metrics,
    health: Health,
}

fn world(tuning: LeaseTuning) -> World {
    world_through(tuning, None)
}

/// A world whose writers call the fake through a [`Deadline`] of `deadline`, if given.
fn world_through(tuning: LeaseTuning, deadline: Option<Duration>) -> World {
    let (fake, stores) = FakeApi::new("n1");
    let mut config = Config::new("n1");
    config.lease = tuning;
    let metrics = Metrics::new();
    let health = Health::new(Duration::from_secs(30));
    let api: Arc<dyn ClusterApi> = match deadline {
        Some(timeout) => Arc::new(Deadline::new(fake.clone(), timeout, health.clone())),
        None => fake.clone(),
    };
    let writers = PoolWriters::new(api, &config, stores, metrics.clone(), health.clone());
    World {
        fake,
        writers,
        metrics,
        health,
    }
}

fn no_reservations() -> LeaseTuning {
    LeaseTuning {
        max_size: 0,
        ..LeaseTuning::default()
    }
}

fn pool(name: &str, range: &str, records: &[(&str, PoolIPAllocation)]) -> SpiderIPPool {
    let mut pool = SpiderIPPool::new(
        name,
        SpiderIPPoolSpec {
            subnet: "10.0.0.0/24".into(),
            ips: vec![range.into()],
            ..Default::default()
        },
    );
    if !records.is_empty() {
        let mut status = SpiderIPPoolStatus::default();
        status
            .set_allocations(
                &records
                    .iter()
                    .map(|(ip, r)| ((*ip).to_owned(), r.clone()))
                    .collect(),
            )
            .unwrap();
        pool.status = Some(status);
    }
    pool
}

fn alloc(pod: &str) -> Op {
    Op::Allocate {
        pod: format!("ns/{pod}"),
        pod_uid: format!("uid-{pod}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn call(kind: CallKind, target: &str) -> Call {
    Call {
        kind,
        target: target.to_owned(),
    }
}

fn records(fake: &FakeApi, pool: &str) -> std::collections::BTreeMap<String, PoolIPAllocation> {
    fake.pool(pool)
        .unwrap()
        .status
        .unwrap_or_default()
        .allocations()
        .unwrap()
}

/// A pod bound to n1 that still waits for its network.
fn pending_pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
        "spec": {"nodeName": "n1", "containers": []},
        "status": {"phase": "Pending"},
    }))
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_allocation_without_reservations_is_one_read_and_one_write() {
    let w = world(no_reservations());
    w.fake.put_pool(pool("p", "10.0.0.1-10.0.0.4", &[]));
    let outcome = w.writers.submit("p", alloc("a"), TIMEOUT).await.unwrap();
    assert_eq!(outcome, Outcome::Allocated(ip("10.0.0.1")));
    assert_eq!(
        w.fake.calls(),
        [call(CallKind::GetPool, "p"), call(CallKind::WritePoolStatus, "p")]
    );
    assert_eq!(
        records(&w.fake, "p")["10.0.0.1"],
        PoolIPAllocation::held_by("ns/a", "uid-a")
    );
    // A retried ADD gets the same address without a write.
    let again = w.writers.submit("p", alloc("a"), TIMEOUT).await.unwrap();
    assert_eq!(again, outcome);
    assert_eq!(w.fake.count(CallKind::WritePoolStatus), 1);
}

#[tokio::test(start_paused = true)]
async fn a_conflict_is_decided_again_against_the_winners_version_from_the_watch() {
    let w = world(no_reservations());
    w.fake.put_pool(pool("p", "10.0.0.1-10.0.0.4", &[]));
    let outcome = allocate_while_another_node_records_first(&w).await;
    assert_eq!(outcome, Outcome::Allocated(ip("10.0.0.2")));
    // One read at start; the winner's version came through the watch, not a second read.
    assert_eq!(w.fake.count(CallKind::GetPool), 1);
    assert_eq!(w.fake.count(CallKind::WritePoolStatus), 3);
    assert_eq!(records(&w.fake, "p").len(), 2);
    assert!(
        w.metrics
            .encode()
            .contains("spiderpool_ipam_update_ippool_conflict_counts_total 1")
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_response_gives_the_same_address_on_the_retry() {
    let w = world(no_reservations());
    w.fake.put_pool(pool("p", "10.0.0.1-10.0.0.4", &[]));
    w.fake.fail(CallKind::WritePoolStatus, Fault::LoseResponse, 1);
    let outcome = w.writers.submit("p", alloc("a"), TIMEOUT).await.unwrap();
    assert_eq!(outcome, Outcome::Allocated(ip("10.0.0.1")));
    // The retry reads the pool, finds the pod's record, and needs no second write.
    assert_eq!(
        w.fake.calls(),
        [
            call(CallKind::GetPool, "p"),
            call(CallKind::WritePoolStatus, "p"),
            call(CallKind::GetPool, "p"),
        ]
    );
    assert_eq!(records(&w.fake, "p").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn server_errors_are_retried_until_the_write_succeeds() {
    let w = world(no_reservations());
    w.fake.put_pool(pool("p", "10.0.0.1-10.0.0.4", &[]));
    w.fake.fail(CallKind::WritePoolStatus, Fault::Status(503), 3);
    let outcome = w.writers.submit("p", alloc("a"), TIMEOUT).await.unwrap();
    assert_eq!(outcome, Outcome::Allocated(ip("10.0.0.1")));
    assert_eq!(w.fake.count(CallKind::WritePoolStatus), 4);
}

#[tokio::test(start_paused = true)]
async fn a_request_fails_at_its_deadline_while_the_api_server_refuses() {
    let w = world(no_reservations());
    w.fake.put_pool(pool("p", "10.0.0.1-10.0.0.4", &[]));
    w.fake.fail_always(CallKind::WritePoolStatus, Fault::Status(503));
    let err = w
        .writers
        .submit("p", alloc("a"), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WriteError::Timeout {
                waited_for_reservations: false,
                ..
            }
        ),
        "{err}"
    );
    assert!(records(&w.fake, "p").is_empty());
}

/// Pool `p` of two addresses: one held by a pod, the other node n2's reservation.
fn held_but_for_a_reservation_of_n2() -> SpiderIPPool {
    pool(
        "p",
        "10.0.0.1-10.0.0.2",
        &[
            ("10.0.0.1", PoolIPAllocation::held_by("ns/x", "uid-x")),
            ("10.0.0.2", PoolIPAllocation::reserved_for("n2")),
        ],
    )
}

#[tokio::test(start_paused = true)]
async fn nothing_free_waits_for_other_nodes_reservations() {
    let w = world(no_reservations());
    w.fake.put_pool(held_but_for_a_reservation_of_n2());
    let writers = w.writers.clone();
    let ours = tokio::spawn(async move { writers.submit("p", alloc("a"), TIMEOUT).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!ours.is_finished());
    // n2 gives its reservation back.
    let current = w.fake.pool("p").unwrap();
    w.fake
        .write_pool_status(
            "p",
            &PoolStatusWrite {
                resource_version: current.metadata.resource_version.clone(),
                allocated_ips: Some(r#"{"10.0.0.1":{"pod":"ns/x","podUid":"uid-x"}}"#.into()),
                allocated_ip_count: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(ours.await.unwrap().unwrap(), Outcome::Allocated(ip("10.0.0.2")));
}

#[tokio::test(start_paused = true)]
async fn a_request_that_may_not_wait_is_told_at_once_that_it_would() {
    let w = world(no_reservations());
    w.fake.put_pool(held_but_for_a_reservation_of_n2());
    let outcome = w
        .writers
        .submit_without_waiting("p", alloc("a"), TIMEOUT)
        .await
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::Wait(why) if why.contains("n2")),
        "{outcome:?}"
    );
    assert_eq!(records(&w.fake, "p").len(), 2, "nothing written");
}

#[tokio::test(start_paused = true)]
async fn reservations_serve_the_pods_to_come_without_writes_then_record_them() {
    let w = world(LeaseTuning::default());
    w.fake.put_pool(pool("p", "10.0.0.1-10.0.0.9", &[]));
    for name in ["a", "b", "c", "d"] {
        w.fake.put_pod(pending_pod(name));
    }
    assert_eq!(
        w.writers.submit("p", alloc("a"), TIMEOUT).await.unwrap(),
        Outcome::Allocated(ip("10.0.0.1"))
    );
    assert_eq!(w.fake.count(CallKind::WritePoolStatus), 1);
    // a holds its address; b, c and d are still to come: three reservations.
    let reserved = records(&w.fake, "p")
        .values()
        .filter(|r| r.reservation() == Some("n1"))
        .count();
    assert_eq!(reserved, 3);
    for name in ["b", "c"] {
        w.writers.submit("p", alloc(name), TIMEOUT).await.unwrap();
    }
    assert_eq!(w.fake.count(CallKind::WritePoolStatus), 1);
    // Within the flush delay the handouts are recorded for their pods in one background write.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = records(&w.fake, "p");
    assert_eq!(written["10.0.0.2"], PoolIPAllocation::held_by("ns/b", "uid-b"));
    assert_eq!(written["10.0.0.3"], PoolIPAllocation::held_by("ns/c", "uid-c"));
    assert_eq!(w.fake.count(CallKind::WritePoolStatus), 2);
    // Idle: the unused one goes back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(records(&w.fake, "p").values().all(|r| r.reservation().is_none()));
}

#[tokio::test(start_paused = true)]
async fn a_background_write_after_another_nodes_write_starts_from_that_version_and_does_not_conflict() {
    let w = background_write_after_another_nodes(false).await;
    // The other node's version came whole through the watch: no second read.
    assert_eq!(w.fake.count(CallKind::GetPool), 1);
}

/// A writes, another node writes, b is served from a reservation and recorded in the background
/// (`metadata_only`: the watch shows only the other node's version). Checks that the recording
/// starts from the other node's version, so it does not lose its race.
async fn background_write_after_another_nodes(metadata_only: bool) -> World {
    let w = world(LeaseTuning::default());
    if metadata_only {
        w.fake.watch_metadata_only();
    }
    w.fake.put_pool(pool("p", "10.0.0.1-10.0.0.9", &[]));
    for name in ["a", "b", "c"] {
        w.fake.put_pod(pending_pod(name));
    }
    w.writers.submit("p", alloc("a"), TIMEOUT).await.unwrap();
    assert_eq!(w.fake.count(CallKind::WritePoolStatus), 1);
    assert_eq!(w.fake.count(CallKind::GetPool), 1);
    another_node_records(&w.fake, "p", &[("10.0.0.9", "x")]).await;
    w.writers.submit("p", alloc("b"), TIMEOUT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = records(&w.fake, "p");
    assert_eq!(written["10.0.0.2"], PoolIPAllocation::held_by("ns/b", "uid-b"));
    assert_eq!(written["10.0.0.9"], PoolIPAllocation::held_by("ns/x", "uid-x"));
    assert_eq!(w.fake.count(CallKind::WritePoolStatus), 3);
    assert_eq!(
        conflicts(&w),
        "spiderpool_ipam_update_ippool_conflict_counts_total 0"
    );
    w
}

fn endpoint_claiming(name: &str, address: &str) -> SpiderEndpoint {
    let mut ep = SpiderEndpoint::new(
        name,
        "ns",
        SpiderEndpointStatus {
            current: PodIPAllocation {
                uid: format!("uid-{name}"),
                node: "n1".into(),
                ips: vec![IPAllocationDetail {
                    nic: "eth0".into(),
                    ipv4: Some(format!("{address}/24")),
                    ipv4_pool: Some("p".into()),
                    ..Default::default()
                }],
            },
            ..Default::default()
        },
    );
    ep.metadata.labels = Some([(endpoint::LABEL_NODE.to_owned(), "n1".to_owned())].into());
    ep
}

#[tokio::test(start_paused = true)]
async fn a_restart_records_what_endpoints_claim_and_gives_back_the_rest() {
    let w = world(LeaseTuning::default());
    w.fake.put_pool(pool(
        "p",
        "10.0.0.1-10.0.0.9",
        &[
            ("10.0.0.1", PoolIPAllocation::reserved_for("n1")),
            ("10.0.0.2", PoolIPAllocation::reserved_for("n1")),
            ("10.0.0.3", PoolIPAllocation::reserved_for("n2")),
        ],
    ));
    w.fake.put_endpoint(endpoint_claiming("a", "10.0.0.1"));
    w.writers.recover_reservations();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = records(&w.fake, "p");
    assert_eq!(written["10.0.0.1"], PoolIPAllocation::held_by("ns/a", "uid-a"));
    assert!(!written.contains_key("10.0.0.2"));
    assert_eq!(written["10.0.0.3"], PoolIPAllocation::reserved_for("n2"));
    assert_eq!(
        w.fake.calls(),
        [
            call(CallKind::GetPool, "p"),
            call(CallKind::ListEndpoints, "spiderpool.spidernet.io/node=n1"),
            call(CallKind::WritePoolStatus, "p"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_missing_or_unusable_pool_fails_the_request_at_once() {
    let w = world(no_reservations());
    let err = w.writers.submit("nope", alloc("a"), TIMEOUT).await.unwrap_err();
    assert!(matches!(err, WriteError::PoolGone(_)), "{err}");
    let mut bad = pool("bad", "10.0.0.1-10.0.0.4", &[]);
    bad.spec.subnet = "not a cidr".into();
    w.fake.put_pool(bad);
    let err = w.writers.submit("bad", alloc("a"), TIMEOUT).await.unwrap_err();
    assert!(matches!(err, WriteError::BadPool { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn foreign_record_keys_stay_occupied_and_kept_and_ambiguous_ones_are_counted() {
    let w = world(no_reservations());
    w.fake.put_pool(pool(
        "p",
        "10.0.0.1-10.0.0.4",
        &[
            ("10.0.0.1", PoolIPAllocation::held_by("ns/x", "uid-x")),
            // The same address again, as an old writer spelled it: two claims on 10.0.0.1.
            ("10.0.0.01", PoolIPAllocation::held_by("ns/y", "uid-y")),
            ("::ffff:10.0.0.2", PoolIPAllocation::held_by("ns/z", "uid-z")),
            ("fd00::3", PoolIPAllocation::held_by("ns/v", "uid-v")),
        ],
    ));
    let outcome = w.writers.submit("p", alloc("a"), TIMEOUT).await.unwrap();
    assert_eq!(outcome, Outcome::Allocated(ip("10.0.0.3")));
    let written = records(&w.fake, "p");
    for key in ["10.0.0.1", "10.0.0.01", "::ffff:10.0.0.2", "fd00::3"] {
        assert!(written.contains_key(key), "{key} was dropped: {written:?}");
    }
    let metrics = w.metrics.encode();
    assert!(
        metrics.contains("spiderpool_ipam_ambiguous_claims_total{kind=\"records\"} 1"),
        "{metrics}"
    );
    // Reported once, not on every write.
    w.writers.submit("p", alloc("b"), TIMEOUT).await.unwrap();
    assert!(
        w.metrics
            .encode()
            .contains("spiderpool_ipam_ambiguous_claims_total{kind=\"records\"} 1")
    );
}

fn running_pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
        "spec": {"nodeName": "n1", "containers": []},
        "status": {"phase": "Running", "podIP": "10.0.0.99"},
    }))
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_reservation_two_endpoints_claim_goes_to_the_live_pod_or_stays_out_of_use() {
    let w = world(LeaseTuning::default());
    w.fake.put_pool(pool(
        "p",
        "10.0.0.1-10.0.0.9",
        &[
            ("10.0.0.1", PoolIPAllocation::reserved_for("n1")),
            ("10.0.0.2", PoolIPAllocation::reserved_for("n1")),
        ],
    ));
    // 10.0.0.1: claimed by a (alive) and z (gone); 10.0.0.2: by b and c, both alive.
    w.fake.put_pod(running_pod("a"));
    w.fake.put_pod(running_pod("b"));
    w.fake.put_pod(running_pod("c"));
    for (name, address) in [
        ("a", "10.0.0.1"),
        ("z", "10.0.0.1"),
        ("b", "10.0.0.2"),
        ("c", "10.0.0.2"),
    ] {
        w.fake.put_endpoint(endpoint_claiming(name, address));
    }
    w.writers.recover_reservations();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let written = records(&w.fake, "p");
    assert_eq!(written["10.0.0.1"], PoolIPAllocation::held_by("ns/a", "uid-a"));
    // Neither live pod is given 10.0.0.2 over the other, nor is it given back or handed out.
    assert_eq!(written["10.0.0.2"], PoolIPAllocation::reserved_for("n1"));
    let next = w.writers.submit("p", alloc("d"), TIMEOUT).await.unwrap();
    assert_eq!(next, Outcome::Allocated(ip("10.0.0.3")));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        records(&w.fake, "p")["10.0.0.2"],
        PoolIPAllocation::reserved_for("n1")
    );
    assert!(
        w.metrics
            .encode()
            .contains("spiderpool_ipam_ambiguous_claims_total{kind=\"endpoints\"} 2")
    );
}

#[tokio::test(start_paused = true)]
async fn a_refusal_for_good_fails_requests_at_once_and_background_work_retries_slowly() {
    let w = world(LeaseTuning::default());
    w.fake.put_pool(pool("p", "10.0.0.1-10.0.0.9", &[]));
    w.fake.fail_always(CallKind::WritePoolStatus, Fault::Status(403));
    let started = tokio::time::Instant::now();
    let err = w
        .writers
        .submit("p", alloc("a"), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(err, WriteError::Refused { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(w.fake.count(CallKind::WritePoolStatus), 1);
    // Nothing waits on background work here; it does not retry in a tight loop either.
    w.writers.expect_demand("p");
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(
        w.fake.count(CallKind::WritePoolStatus) <= 4,
        "{}",
        w.fake.count(CallKind::WritePoolStatus)
    );
    // Once the API server accepts again, so does the writer.
    w.fake.clear_faults();
    let outcome = w
        .writers
        .submit("p", alloc("a"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Allocated(ip("10.0.0.1")));
}

#[tokio::test(start_paused = true)]
async fn a_call_that_never_answers_ends_at_its_deadline_and_the_write_is_retried() {
    let w = world_through(no_reservations(), Some(Duration::from_secs(2)));
    w.fake.put_pool(pool("p", "10.0.0.1-10.0.0.4", &[]));
    w.fake.fail(CallKind::WritePoolStatus, Fault::Hang, 1);
    let outcome = w
        .writers
        .submit("p", alloc("a"), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Allocated(ip("10.0.0.1")));
    assert_eq!(w.fake.count(CallKind::WritePoolStatus), 2);
    assert_eq!(w.health.liveness(), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn a_writer_stuck_in_a_call_fails_liveness() {
    // Without the deadline layer a hung call hangs its writer: that is what liveness must catch.
    let w = world(no_reservations());
    w.fake.put_pool(pool("p", "10.0.0.1-10.0.0.4", &[]));
    w.fake.fail(CallKind::WritePoolStatus, Fault::Hang, 1);
    let writers = w.writers.clone();
    let request =
        tokio::spawn(async move { writers.submit("p", alloc("a"), Duration::from_secs(600)).await });
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(w.health.liveness(), Ok(()));
    tokio::time::sleep(Duration::from_secs(25)).await;
    let err = w.health.liveness().unwrap_err();
    assert!(err.contains("writing the pool status"), "{err}");
    request.abort();
}

#[tokio::test(start_paused = true)]
async fn a_writer_that_died_is_replaced_by_one_that_recovers_the_pool() {
    let w = world(no_reservations());
    w.fake.put_pool(pool("p", "10.0.0.1-10.0.0.4", &[]));
    w.fake.fail(CallKind::WritePoolStatus, Fault::Panic, 1);
    let err = w.writers.submit("p", alloc("a"), TIMEOUT).await.unwrap_err();
    assert!(matches!(err, WriteError::Stopped(_)), "{err}");
    let outcome = w.writers.submit("p", alloc("a"), TIMEOUT).await.unwrap();
    assert_eq!(outcome, Outcome::Allocated(ip("10.0.0.1")));
    assert_eq!(w.fake.count(CallKind::GetPool), 2);
}

/// Releases `ip` for pod `pod` through the writer.
fn release(pod: &str, address: &str) -> Op {
    Op::Release {
        ip: ip(address),
        pod_uid: format!("uid-{pod}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_released_address_is_not_handed_out_again_before_its_cooldown_and_a_full_pool_still_serves() {
    // With reservations or without: the cooldown does not depend on them.
    for tuning in [LeaseTuning::default(), no_reservations()] {
        released_address_cools_down_in_a_full_pool(tuning).await;
    }
}

async fn released_address_cools_down_in_a_full_pool(tuning: LeaseTuning) {
    let w = world(tuning);
    // Exactly full: a holds the only address.
    w.fake.put_pool(pool("p", "10.0.0.1-10.0.0.1", &[]));
    assert_eq!(
        w.writers.submit("p", alloc("a"), TIMEOUT).await.unwrap(),
        Outcome::Allocated(ip("10.0.0.1"))
    );
    w.writers
        .submit("p", release("a", "10.0.0.1"), TIMEOUT)
        .await
        .unwrap();
    // b asks at once: the old sandbox may still answer ARP for 10.0.0.1, so b waits for the cooldown
    // (5 s by default) instead of failing or getting it now.
    let started = tokio::time::Instant::now();
    let writers = w.writers.clone();
    let b = tokio::spawn(async move { writers.submit("p", alloc("b"), Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !b.is_finished(),
        "b got an address within the cooldown: {:?}",
        b.await
    );
    assert_eq!(b.await.unwrap().unwrap(), Outcome::Allocated(ip("10.0.0.1")));
    assert!(started.elapsed() >= LeaseTuning::default().release_cooldown);
}

#[tokio::test(start_paused = true)]
async fn a_pool_may_set_its_own_cooldown() {
    let w = world(LeaseTuning::default());
    let mut immediate = pool("p", "10.0.0.1-10.0.0.1", &[]);
    immediate.metadata.annotations = Some(
        [(
            crate::ipam::pool::ANNO_RELEASE_COOLDOWN.to_owned(),
            "0".to_owned(),
        )]
        .into(),
    );
    w.fake.put_pool(immediate);
    w.writers.submit("p", alloc("a"), TIMEOUT).await.unwrap();
    w.writers
        .submit("p", release("a", "10.0.0.1"), TIMEOUT)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(
        w.writers.submit("p", alloc("b"), TIMEOUT).await.unwrap(),
        Outcome::Allocated(ip("10.0.0.1"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn any_timeout_however_large_is_taken_without_panicking() {
    let w = world(no_reservations());
    w.fake.put_pool(pool("p", "10.0.0.1-10.0.0.4", &[]));
    let outcome = w.writers.submit("p", alloc("a"), Duration::MAX).await.unwrap();
    assert_eq!(outcome, Outcome::Allocated(ip("10.0.0.1")));
}

/// The other half of the policy for an exactly full pool: while the address cools it is recorded as
/// this node's reservation (no other node's agent takes it), and once cooled this node, with no pod
/// to come, gives it back, so another node's waiting ADD gets it.
#[tokio::test(start_paused = true)]
async fn a_cooled_address_goes_back_to_the_pool_for_other_nodes() {
    let w = world(LeaseTuning::default());
    w.fake.put_pool(pool("p", "10.0.0.1-10.0.0.1", &[]));
    w.writers.submit("p", alloc("a"), TIMEOUT).await.unwrap();
    w.writers
        .submit("p", release("a", "10.0.0.1"), TIMEOUT)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        records(&w.fake, "p").get("10.0.0.1"),
        Some(&PoolIPAllocation::reserved_for("n1")),
        "while it cools, the address is this node's"
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        records(&w.fake, "p"),
        Default::default(),
        "cooled and not needed here, the address is back in the pool"
    );
}

#[tokio::test(start_paused = true)]
async fn an_allocation_merged_into_a_round_in_flight_never_gets_an_address_its_pod_gave_back_since() {
    let w = world(no_reservations());
    w.fake.put_pool(pool(
        "p",
        "10.0.0.1-10.0.0.4",
        &[("10.0.0.1", PoolIPAllocation::held_by("ns/a", "uid-a"))],
    ));
    w.writers.submit("p", alloc("b"), TIMEOUT).await.unwrap();
    // A round is in flight, its write failing for a while (the API server is in trouble)…
    w.fake.fail(CallKind::WritePoolStatus, Fault::Status(503), 3);
    let writers = w.writers.clone();
    let c = tokio::spawn(async move { writers.submit("p", alloc("c"), TIMEOUT).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    // …when pod a's DEL gives its address back (answered at once, written later)…
    let released = w
        .writers
        .submit(
            "p",
            Op::Release {
                ip: ip("10.0.0.1"),
                pod_uid: "uid-a".into(),
            },
            TIMEOUT,
        )
        .await
        .unwrap();
    assert_eq!(released, Outcome::Released(true));
    // …and the pod's next sandbox asks for an address, which joins the round in flight.
    let writers = w.writers.clone();
    let a = tokio::spawn(async move { writers.submit("p", alloc("a"), TIMEOUT).await });
    c.await.unwrap().unwrap();
    let Outcome::Allocated(answered) = a.await.unwrap().unwrap() else {
        panic!("no address for a");
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let records = records(&w.fake, "p");
    assert_eq!(
        records.get(&answered.to_string()),
        Some(&PoolIPAllocation::held_by("ns/a", "uid-a")),
        "{answered} answered to a, but the pool records {records:?}"
    );
}

#[test]
fn after_a_conflict_background_work_waits_longer_the_longer_the_losing_write_took() {
    let ms = Duration::from_millis;
    // Writes that pods wait for: a few milliseconds per conflict in a row, however long the write.
    assert_eq!(conflict_window(ms(1), 1, None), ms(2));
    assert_eq!(conflict_window(ms(400), 3, None), ms(6));
    // Background work: 25 ms per conflict, or half of what the losing write took if that is more.
    assert_eq!(conflict_window(ms(1), 1, Some(1)), ms(25));
    assert_eq!(conflict_window(ms(400), 1, Some(1)), ms(200));
    assert_eq!(conflict_window(ms(400), 3, Some(1)), ms(600));
    // The streak counts up to ten, the window up to two seconds.
    assert_eq!(conflict_window(ms(1), 50, None), ms(20));
    assert_eq!(conflict_window(ms(900), 5, Some(1)), MAX_CONFLICT_WINDOW);
}

#[test]
fn after_a_conflict_background_work_waits_longer_the_more_nodes_write_the_pool() {
    let ms = Duration::from_millis;
    // Ten nodes: ten times the window of one (not yet seen counts as one), up to the cap.
    assert_eq!(conflict_window(ms(1), 1, Some(0)), ms(25));
    assert_eq!(conflict_window(ms(1), 1, Some(10)), ms(250));
    assert_eq!(conflict_window(ms(40), 2, Some(10)), ms(500));
    assert_eq!(conflict_window(ms(1), 3, Some(100)), MAX_CONFLICT_WINDOW);
    // A write that pods wait for does not ask how many nodes write the pool.
    assert_eq!(conflict_window(ms(40), 2, None), ms(4));
}

#[tokio::test(start_paused = true)]
async fn a_pod_does_not_wait_out_the_pause_of_background_work_that_lost_a_conflict() {
    let w = world(LeaseTuning::default());
    w.fake.put_pool(pool("p", "10.0.0.1-10.0.0.9", &[]));
    for name in ["a", "b", "c", "d"] {
        w.fake.put_pod(pending_pod(name));
    }
    w.writers.submit("p", alloc("a"), TIMEOUT).await.unwrap();
    // b's address is handed out from the reservations; recording it is background work, and its
    // write is slow (a big pool) while another node writes the pool: it loses a conflict after 4 s,
    // so it steps aside for a random part of 2 s.
    w.fake
        .fail(CallKind::WritePoolStatus, Fault::Delay(Duration::from_secs(4)), 1);
    w.writers.submit("p", alloc("b"), TIMEOUT).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        w.fake.count(CallKind::WritePoolStatus),
        2,
        "the background write is under way"
    );
    let current = w.fake.pool("p").unwrap();
    let mut theirs = current.status.clone().unwrap_or_default().allocations().unwrap();
    theirs.insert("10.0.0.9".into(), PoolIPAllocation::held_by("ns/x", "uid-x"));
    let mut status = SpiderIPPoolStatus::default();
    status.set_allocations(&theirs).unwrap();
    let other_node = PoolStatusWrite {
        resource_version: current.metadata.resource_version.clone(),
        allocated_ips: status.allocated_ips.clone(),
        allocated_ip_count: 5,
    };
    w.fake.write_pool_status("p", &other_node).await.unwrap();
    let lost = || {
        w.metrics
            .encode()
            .contains("spiderpool_ipam_update_ippool_conflict_counts_total 1")
    };
    for _ in 0..1_000 {
        if lost() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(lost(), "the background write lost a conflict");
    // Meanwhile a DEL asks to release what this node's reservations do not know (a pod of before a
    // restart): only the pool can answer it, and the round takes it in at once, not at the end of
    // the pause (which ends within 60 ms only 3% of the time).
    let writers = w.writers.clone();
    let asked = tokio::time::Instant::now();
    let del = tokio::spawn(async move { writers.submit("p", release("z", "10.0.0.8"), TIMEOUT).await });
    let answer = del.await.unwrap().unwrap();
    assert_eq!(answer, Outcome::Released(false));
    let waited = asked.elapsed();
    assert!(
        waited < Duration::from_millis(60),
        "the pod waited {waited:?} for background work's pause"
    );
    let written = records(&w.fake, "p");
    assert_eq!(written["10.0.0.2"], PoolIPAllocation::held_by("ns/b", "uid-b"));
    assert_eq!(written["10.0.0.9"], PoolIPAllocation::held_by("ns/x", "uid-x"));
}

/// Another node's write of `pool`, adding `added` to the records as they are now.
async fn another_node_records(fake: &FakeApi, pool: &str, added: &[(&str, &str)]) {
    let mut records_now = records(fake, pool);
    for (address, pod) in added {
        records_now.insert(
            (*address).into(),
            PoolIPAllocation::held_by(format!("ns/{pod}"), format!("uid-{pod}")),
        );
    }
    let theirs = PoolStatusWrite {
        resource_version: fake.pool(pool).unwrap().metadata.resource_version,
        allocated_ips: Some(serde_json::to_string(&records_now).unwrap()),
        allocated_ip_count: records_now.len(),
    };
    fake.write_pool_status(pool, &theirs).await.unwrap();
}

/// Allocates for pod a in pool `p` with a slow write; meanwhile another node records 10.0.0.1 for its
/// pod, so a's first write loses. a's outcome.
async fn allocate_while_another_node_records_first(w: &World) -> Outcome {
    w.fake.fail(
        CallKind::WritePoolStatus,
        Fault::Delay(Duration::from_millis(50)),
        1,
    );
    let writers = w.writers.clone();
    let ours = tokio::spawn(async move { writers.submit("p", alloc("a"), TIMEOUT).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    another_node_records(&w.fake, "p", &[("10.0.0.1", "x")]).await;
    ours.await.unwrap().unwrap()
}

fn conflicts(w: &World) -> String {
    w.metrics
        .encode()
        .lines()
        .find(|l| l.starts_with("spiderpool_ipam_update_ippool_conflict_counts_total"))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(start_paused = true)]
async fn with_a_metadata_watch_a_write_after_another_nodes_reads_the_pool_once_and_does_not_conflict() {
    let w = background_write_after_another_nodes(true).await;
    // The cache does not hold the other node's version whole: one read of it before the recording.
    assert_eq!(w.fake.count(CallKind::GetPool), 2);
}

#[tokio::test(start_paused = true)]
async fn with_a_metadata_watch_a_conflict_reads_the_winners_version_once() {
    let w = world(no_reservations());
    w.fake.watch_metadata_only();
    w.fake.put_pool(pool("p", "10.0.0.1-10.0.0.4", &[]));
    let outcome = allocate_while_another_node_records_first(&w).await;
    assert_eq!(outcome, Outcome::Allocated(ip("10.0.0.2")));
    // One read at start, one of the winner's version (the watch showed only its metadata).
    assert_eq!(w.fake.count(CallKind::GetPool), 2);
    assert_eq!(w.fake.count(CallKind::WritePoolStatus), 3);
    assert_eq!(
        conflicts(&w),
        "spiderpool_ipam_update_ippool_conflict_counts_total 1"
    );
}

#[tokio::test(start_paused = true)]
async fn with_a_metadata_watch_unused_reservations_go_back_soon_after_another_node_fills_the_pool() {
    let w = world(LeaseTuning::default());
    w.fake.watch_metadata_only();
    w.fake.put_pool(pool("p", "10.0.0.1-10.0.0.9", &[]));
    for name in ["a", "b", "c", "d"] {
        w.fake.put_pod(pending_pod(name));
    }
    w.writers.submit("p", alloc("a"), TIMEOUT).await.unwrap();
    let reserved = |w: &World| {
        records(&w.fake, "p")
            .values()
            .filter(|r| r.reservation() == Some("n1"))
            .count()
    };
    assert_eq!(reserved(&w), 3);
    // b, c and d go elsewhere; another node records every address left.
    for name in ["b", "c", "d"] {
        w.fake.remove_pod("ns", name);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let left = ["10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.0.8", "10.0.0.9"];
    let added: Vec<(&str, &str)> = left.iter().map(|a| (*a, "x")).collect();
    another_node_records(&w.fake, "p", &added).await;
    // Well before the idle return (2 s after a's ADD), this node has read the pool, seen nothing
    // free outside its reservations, and given back what no pod here will use.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(reserved(&w), 0);
    // One read at start and one of the full pool; no read while nothing changes.
    assert_eq!(w.fake.count(CallKind::GetPool), 2);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(w.fake.count(CallKind::GetPool), 2);
}
