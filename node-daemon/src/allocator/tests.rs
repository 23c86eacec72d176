//! The allocator through the fake API server: ADD, DEL, GC and releases, each scenario stating the
//! calls it makes.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use spiderpool_agent_api::{Attachment, IpamAddArgs, IpamBatchDelArgs, IpamDelArgs, IpamGcArgs, codes};
use spiderpool_schema::{SpiderIPPool, SpiderIPPoolSpec};

use super::*;
use crate::api::OwnerKind;
use crate::api::fake::{Call, CallKind, FakeApi, Fault};
use crate::config::LeaseTuning;

struct World {
    fake: Arc<FakeApi>,
    allocator: Allocator,
}

fn world() -> World {
    // Every allocation writes: the calls of each scenario are the same whatever came before.
    world_with(LeaseTuning {
        max_size: 0,
        ..LeaseTuning::default()
    })
}

fn world_with(lease: LeaseTuning) -> World {
    let (fake, stores) = FakeApi::new("n1");
    let mut config = Config::new("n1");
    config.request_timeout = Duration::from_secs(5);
    config.lease = lease;
    let metrics = Metrics::new();
    let writers = PoolWriters::new(
        fake.clone(),
        &config,
        stores.clone(),
        metrics.clone(),
        crate::health::Health::new(Duration::from_secs(30)),
    );
    let allocator = Allocator::new(fake.clone(), config, stores, writers, metrics);
    fake.put_pool(SpiderIPPool::new(
        "p",
        SpiderIPPoolSpec {
            subnet: "10.0.0.0/24".into(),
            ips: vec!["10.0.0.10-10.0.0.19".into()],
            gateway: Some("10.0.0.1".into()),
            ..Default::default()
        },
    ));
    World { fake, allocator }
}

pub(crate) fn pod(name: &str, uid: &str, owner: Option<(&str, &str, &str)>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(uid.into()),
            owner_references: owner.map(|(api_version, kind, name)| {
                vec![OwnerReference {
                    api_version: api_version.into(),
                    kind: kind.into(),
                    name: name.into(),
                    uid: format!("{name}-uid"),
                    controller: Some(true),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some("n1".into()),
            ..Default::default()
        }),
        status: None,
    }
}

pub(crate) fn add_args(name: &str, uid: &str, container: &str) -> IpamAddArgs {
    IpamAddArgs {
        container_id: container.into(),
        if_name: "eth0".into(),
        net_name: "net".into(),
        pod_namespace: "ns".into(),
        pod_name: name.into(),
        pod_uid: uid.into(),
        default_ipv4_ippool: vec!["p".into()],
        ..Default::default()
    }
}

pub(crate) fn del_args(name: &str, uid: &str, container: &str) -> IpamDelArgs {
    IpamDelArgs {
        container_id: container.into(),
        if_name: "eth0".into(),
        net_name: "net".into(),
        pod_namespace: "ns".into(),
        pod_name: name.into(),
        pod_uid: uid.into(),
        ..Default::default()
    }
}

fn call(kind: CallKind, target: &str) -> Call {
    Call {
        kind,
        target: target.to_owned(),
    }
}

fn holders(fake: &FakeApi) -> Vec<(String, String)> {
    fake.pool("p")
        .unwrap()
        .status
        .unwrap_or_default()
        .allocations()
        .unwrap()
        .into_iter()
        .filter(|(_, r)| r.reservation().is_none())
        .map(|(ip, r)| (ip, r.pod_uid))
        .collect()
}

/// The addresses endpoints claim that their pools do not record for the endpoint's pod, as
/// `"<endpoint> <ip>"`. Issue 13's invariant: such a claim lets the pool hand the address to another
/// pod while the endpoint still says it is this one's.
fn claims_without_record(fake: &FakeApi) -> Vec<String> {
    let records = holders(fake);
    let mut out = Vec::new();
    for ep in fake.endpoints() {
        let status = ep.status.clone().unwrap_or_default();
        for (ip, _) in endpoint::status_addresses(&status) {
            if !records.contains(&(ip.to_string(), status.current.uid.clone())) {
                out.push(format!("{} {ip}", ep.metadata.name.clone().unwrap_or_default()));
            }
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_new_pods_add_records_the_address_then_creates_its_endpoint() {
    let w = world();
    w.fake.put_pod(pod("a", "u1", None));
    let answer = w.allocator.add(&add_args("a", "u1", "c1")).await.unwrap();
    assert_eq!(answer.ips[0].address, "10.0.0.10/24");
    assert_eq!(answer.routes[0].gw, "10.0.0.1");
    assert_eq!(
        w.fake.calls(),
        [
            call(CallKind::GetPool, "p"),
            call(CallKind::WritePoolStatus, "p"),
            call(CallKind::CreateEndpoint, "ns/a"),
        ]
    );
    let ep = w.fake.endpoint("ns", "a").unwrap();
    assert_eq!(ep.status.unwrap().current.uid, "u1");
    assert_eq!(holders(&w.fake), [("10.0.0.10".to_owned(), "u1".to_owned())]);

    // The same ADD again (a retry): the same answer, no write.
    w.fake.clear_calls();
    let again = w.allocator.add(&add_args("a", "u1", "c1")).await.unwrap();
    assert_eq!(again, answer);
    assert_eq!(
        w.fake.calls(),
        [
            call(CallKind::CreateEndpoint, "ns/a"),
            call(CallKind::GetEndpoint, "ns/a")
        ]
    );
    // From a new sandbox: the endpoint now names it.
    w.allocator.add(&add_args("a", "u1", "c2")).await.unwrap();
    let ep = w.fake.endpoint("ns", "a").unwrap();
    assert_eq!(endpoint::container_of(&ep), Some("c2"));
}

#[tokio::test(start_paused = true)]
async fn a_failed_endpoint_write_gives_the_address_back() {
    let w = world();
    w.fake.put_pod(pod("a", "u1", None));
    w.fake.fail(CallKind::CreateEndpoint, Fault::Status(500), 1);
    let err = w.allocator.add(&add_args("a", "u1", "c1")).await.unwrap_err();
    assert_eq!(err.code(), codes::TRY_AGAIN_LATER);
    // Released at once, recorded by the writer's next background write.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(holders(&w.fake).is_empty());
    assert!(w.fake.endpoint("ns", "a").is_none());
}

/// The daemon's own deadline passes while the endpoint is being written (the API server is slow):
/// the ADD answers "try again later", but its work goes on and writes the endpoint, so the DEL that
/// follows finds it and releases the address. Cut off half-way, the ADD left the address recorded
/// with no endpoint, and the DEL released nothing.
#[tokio::test(start_paused = true)]
async fn an_add_past_its_deadline_still_writes_its_endpoint_and_the_del_releases_the_address() {
    let w = world();
    w.fake.put_pod(pod("a", "u1", None));
    w.fake
        .fail(CallKind::CreateEndpoint, Fault::Delay(Duration::from_secs(8)), 1);
    let err = w.allocator.add(&add_args("a", "u1", "c1")).await.unwrap_err();
    assert_eq!(err.code(), codes::TRY_AGAIN_LATER);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        w.fake.endpoint("ns", "a").is_some(),
        "the ADD stopped at its deadline"
    );
    assert_eq!(holders(&w.fake), [("10.0.0.10".to_owned(), "u1".to_owned())]);
    w.allocator.del(&del_args("a", "u1", "c1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(holders(&w.fake).is_empty());
    assert!(w.fake.endpoint("ns", "a").is_none());
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_write_whose_answer_was_lost_keeps_its_addresses_recorded() {
    let w = world();
    w.fake.put_pod(pod("a", "u1", None));
    // The create is applied, its answer lost: the endpoint claims the address.
    w.fake.fail(CallKind::CreateEndpoint, Fault::LoseResponse, 1);
    let answer = w.allocator.add(&add_args("a", "u1", "c1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(claims_without_record(&w.fake), Vec::<String>::new());
    assert_eq!(answer.ips[0].address, "10.0.0.10/24");
    assert_eq!(holders(&w.fake), [("10.0.0.10".to_owned(), "u1".to_owned())]);
    // A write that was not applied gives the address back, as before.
    w.fake.put_pod(pod("b", "u2", None));
    w.fake.fail(CallKind::CreateEndpoint, Fault::Status(500), 1);
    w.allocator.add(&add_args("b", "u2", "c2")).await.unwrap_err();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(holders(&w.fake), [("10.0.0.10".to_owned(), "u1".to_owned())]);
    // When the endpoint cannot even be read afterwards, the address stays recorded for the pod (its
    // next ADD gets it back; reclaim frees it once the pod is gone).
    w.fake.fail(CallKind::CreateEndpoint, Fault::LoseResponse, 1);
    w.fake.fail(CallKind::GetEndpoint, Fault::Status(500), 1);
    w.allocator.add(&add_args("b", "u2", "c3")).await.unwrap_err();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(claims_without_record(&w.fake), Vec::<String>::new());
    let again = w.allocator.add(&add_args("b", "u2", "c3")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(holders(&w.fake).contains(&(
        again.ips[0].address.trim_end_matches("/24").to_owned(),
        "u2".to_owned()
    )));
    assert_eq!(holders(&w.fake).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_del_whose_endpoint_delete_fails_releases_nothing_the_endpoint_still_claims() {
    let w = world();
    w.fake.put_pod(pod("a", "u1", None));
    w.allocator.add(&add_args("a", "u1", "c1")).await.unwrap();
    w.fake.fail(CallKind::DeleteEndpoint, Fault::Status(500), 1);
    w.allocator.del(&del_args("a", "u1", "c1")).await.unwrap_err();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.fake.endpoint("ns", "a").is_some());
    assert_eq!(claims_without_record(&w.fake), Vec::<String>::new());
    // The runtime's retried DEL releases it.
    w.allocator.del(&del_args("a", "u1", "c1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.fake.endpoint("ns", "a").is_none());
    assert!(holders(&w.fake).is_empty());
    // A delete applied whose answer was lost: the endpoint is gone, so the DEL goes on and releases.
    w.fake.put_pod(pod("b", "u2", None));
    w.allocator.add(&add_args("b", "u2", "c2")).await.unwrap();
    w.fake.fail(CallKind::DeleteEndpoint, Fault::LoseResponse, 1);
    w.allocator.del(&del_args("b", "u2", "c2")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.fake.endpoint("ns", "b").is_none());
    assert!(holders(&w.fake).is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_sandbox_of_a_pod_recreated_under_its_name_releases_its_own_addresses() {
    let w = world();
    w.fake.put_pod(pod("a", "u1", None));
    w.allocator.add(&add_args("a", "u1", "c1")).await.unwrap();
    // Force-deleted and recreated under the same name before its sandbox's DEL came.
    w.fake.remove_pod("ns", "a");
    w.fake.put_pod(pod("a", "u2", None));
    w.allocator.del(&del_args("a", "u1", "c1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.fake.endpoint("ns", "a").is_none());
    assert!(holders(&w.fake).is_empty());
    // The new pod's ADD gets an address and its own endpoint.
    w.allocator.add(&add_args("a", "u2", "c2")).await.unwrap();
    let ep = w.fake.endpoint("ns", "a").unwrap();
    assert_eq!(ep.status.unwrap().current.uid, "u2");
}

#[tokio::test(start_paused = true)]
async fn del_releases_the_address_and_deletes_the_endpoint() {
    let w = world();
    w.fake.put_pod(pod("a", "u1", None));
    w.allocator.add(&add_args("a", "u1", "c1")).await.unwrap();
    // From an older sandbox: nothing happens.
    w.allocator.del(&del_args("a", "u1", "c0")).await.unwrap();
    assert_eq!(holders(&w.fake).len(), 1);
    w.fake.clear_calls();
    w.allocator.del(&del_args("a", "u1", "c1")).await.unwrap();
    assert!(w.fake.endpoint("ns", "a").is_none());
    // The release is answered at once; the pool is written in the background.
    assert_eq!(
        w.fake.calls(),
        [
            call(CallKind::GetEndpoint, "ns/a"),
            call(CallKind::RemoveEndpointFinalizers, "ns/a"),
            call(CallKind::DeleteEndpoint, "ns/a"),
        ]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(holders(&w.fake).is_empty());
    assert_eq!(w.fake.count(CallKind::WritePoolStatus), 1);
    // DEL again: nothing to release.
    w.allocator.del(&del_args("a", "u1", "c1")).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_earlier_pods_endpoint_is_released_before_the_new_pod_allocates() {
    let w = world();
    w.fake.put_pod(pod("a", "u1", None));
    w.allocator.add(&add_args("a", "u1", "c1")).await.unwrap();
    // The pod is recreated under the same name; the old one's DEL never came.
    w.fake.remove_pod("ns", "a");
    w.fake.put_pod(pod("a", "u2", None));
    let answer = w.allocator.add(&add_args("a", "u2", "c2")).await.unwrap();
    assert_eq!(
        holders(&w.fake),
        [(
            answer.ips[0].address.trim_end_matches("/24").to_owned(),
            "u2".to_owned()
        )]
    );
    assert_eq!(
        w.fake.endpoint("ns", "a").unwrap().status.unwrap().current.uid,
        "u2"
    );
}

#[tokio::test(start_paused = true)]
async fn a_statefulset_member_recreated_takes_its_address_over() {
    let w = world();
    w.fake.put_owner(
        OwnerKind::StatefulSet,
        ObjectMeta {
            name: Some("db".into()),
            namespace: Some("ns".into()),
            ..Default::default()
        },
    );
    let member = |uid: &str| pod("db-0", uid, Some(("apps/v1", "StatefulSet", "db")));
    w.fake.put_pod(member("u1"));
    let first = w.allocator.add(&add_args("db-0", "u1", "c1")).await.unwrap();
    // DEL keeps the address while the StatefulSet exists.
    w.allocator.del(&del_args("db-0", "u1", "c1")).await.unwrap();
    assert_eq!(holders(&w.fake).len(), 1);
    w.fake.remove_pod("ns", "db-0");
    w.fake.put_pod(member("u2"));
    let second = w.allocator.add(&add_args("db-0", "u2", "c2")).await.unwrap();
    assert_eq!(second.ips[0].address, first.ips[0].address);
    assert_eq!(holders(&w.fake)[0].1, "u2");
    // Releasing a member's retained addresses after an address conflict is refused.
    let refused = w
        .allocator
        .release_all(&IpamBatchDelArgs {
            pod_namespace: "ns".into(),
            pod_name: "db-0".into(),
            is_release_conflict_ips: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), codes::RELEASE_FORBIDDEN);
}

#[tokio::test(start_paused = true)]
async fn gc_releases_the_attachments_the_runtime_no_longer_has() {
    let w = world();
    for (name, uid) in [("a", "u1"), ("b", "u2")] {
        w.fake.put_pod(pod(name, uid, None));
        w.allocator
            .add(&add_args(name, uid, &format!("c-{name}")))
            .await
            .unwrap();
    }
    let released = w
        .allocator
        .gc(&IpamGcArgs {
            net_name: "net".into(),
            valid_attachments: vec![Attachment {
                container_id: "c-a".into(),
                if_name: "eth0".into(),
            }],
        })
        .await
        .unwrap();
    assert_eq!(released.released.len(), 1);
    assert_eq!(released.released[0].container_id, "c-b");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(holders(&w.fake), [("10.0.0.10".to_owned(), "u1".to_owned())]);
    assert!(w.fake.endpoint("ns", "b").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_bad_request_or_a_gone_pod_fails_before_any_write() {
    let w = world();
    let err = w.allocator.add(&add_args("", "u1", "c1")).await.unwrap_err();
    assert_eq!(err.code(), codes::INVALID_ENVIRONMENT);
    let err = w.allocator.add(&add_args("ghost", "u9", "c1")).await.unwrap_err();
    assert_eq!(err.code(), codes::POD_NOT_ALIVE);
    assert_eq!(w.fake.calls(), [call(CallKind::GetPod, "ns/ghost")]);
    // No pool write happened.
    assert_eq!(w.fake.pool("p").unwrap().status, None);
}

#[tokio::test(start_paused = true)]
async fn a_repeated_add_never_answers_an_address_the_pool_now_records_for_another_pod() {
    let w = world();
    w.fake.put_pod(pod("a", "u1", None));
    w.allocator.add(&add_args("a", "u1", "c1")).await.unwrap();
    // Reclaim freed a's record (say a looked dead) and the address went to b.
    let pool = w.fake.pool("p").unwrap();
    w.fake
        .write_pool_status(
            "p",
            &crate::api::PoolStatusWrite {
                resource_version: pool.metadata.resource_version.clone(),
                allocated_ips: Some(r#"{"10.0.0.10":{"pod":"ns/b","podUid":"u2"}}"#.into()),
                allocated_ip_count: 1,
            },
        )
        .await
        .unwrap();
    let again = w.allocator.add(&add_args("a", "u1", "c1")).await.unwrap();
    let answered = again.ips[0].address.trim_end_matches("/24").to_owned();
    assert_ne!(answered, "10.0.0.10");
    let records = holders(&w.fake);
    assert!(
        records.contains(&("10.0.0.10".to_owned(), "u2".to_owned())),
        "{records:?}"
    );
    let of_a: Vec<&(String, String)> = records.iter().filter(|(_, uid)| uid == "u1").collect();
    assert_eq!(of_a, [&(answered.clone(), "u1".to_owned())]);
    let ep = w.fake.endpoint("ns", "a").unwrap();
    let addresses = endpoint::status_addresses(&ep.status.unwrap());
    assert_eq!(addresses.len(), 1, "{addresses:?}");
    assert_eq!(addresses[0].0.to_string(), answered);
    assert!(
        w.allocator
            .metrics()
            .encode()
            .contains("spiderpool_ipam_ambiguous_claims_total{kind=\"endpoints\"} 1")
    );
}

#[tokio::test(start_paused = true)]
async fn a_repeated_add_never_answers_an_address_its_pod_released_into_this_nodes_reservation() {
    // Reservations on: a DEL turns the pod's record into this node's reservation (cooling down).
    let w = world_with(LeaseTuning::default());
    w.fake.put_pod(pod("a", "u1", None));
    let first = w.allocator.add(&add_args("a", "u1", "c1")).await.unwrap();
    let first = first.ips[0].address.trim_end_matches("/24").to_owned();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(holders(&w.fake).contains(&(first.clone(), "u1".to_owned())));
    // The DEL releases the address, and an endpoint claiming it is left behind (this agent deletes
    // the endpoint before releasing, but an older one, or a hand, may leave one).
    let left = w.fake.endpoint("ns", "a").unwrap();
    w.allocator.del(&del_args("a", "u1", "c1")).await.unwrap();
    w.fake.put_endpoint(left);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!holders(&w.fake).iter().any(|(_, uid)| uid == "u1"));
    // The pod's next sandbox: its ADD finds the endpoint, whose address the pool now records as this
    // node's (released) reservation. Answering it from the endpoint would leave the address free for
    // this node to hand to another pod once it cooled down.
    let again = w.allocator.add(&add_args("a", "u1", "c2")).await.unwrap();
    let answered = again.ips[0].address.trim_end_matches("/24").to_owned();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        holders(&w.fake).contains(&(answered.clone(), "u1".to_owned())),
        "{answered} answered to u1 but the pool records {:?}",
        holders(&w.fake)
    );
    // Another pod, once every cooldown is over, never gets it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    w.fake.put_pod(pod("b", "u2", None));
    let other = w.allocator.add(&add_args("b", "u2", "c3")).await.unwrap();
    assert_ne!(other.ips[0].address.trim_end_matches("/24"), answered);
}

#[tokio::test(start_paused = true)]
async fn a_repeated_add_never_answers_an_address_its_pod_gave_back_before_the_release_is_written() {
    let w = world_with(LeaseTuning::default());
    w.fake.put_pod(pod("a", "u1", None));
    w.allocator.add(&add_args("a", "u1", "c1")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The DEL's release is answered at once (written moments later), and an endpoint claiming the
    // address is left behind (as in the test above).
    let left = w.fake.endpoint("ns", "a").unwrap();
    w.allocator.del(&del_args("a", "u1", "c1")).await.unwrap();
    w.fake.put_endpoint(left);
    // The next sandbox's ADD comes before the release is written: the pool (and the cache) still
    // record the address for the pod.
    let again = w.allocator.add(&add_args("a", "u1", "c2")).await.unwrap();
    let answered = again.ips[0].address.trim_end_matches("/24").to_owned();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        holders(&w.fake).contains(&(answered.clone(), "u1".to_owned())),
        "{answered} answered to u1 but the pool records {:?}",
        holders(&w.fake)
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    w.fake.put_pod(pod("b", "u2", None));
    let other = w.allocator.add(&add_args("b", "u2", "c3")).await.unwrap();
    assert_ne!(other.ips[0].address.trim_end_matches("/24"), answered);
}
