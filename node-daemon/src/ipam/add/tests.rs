#![allow(clippy::unwrap_used, reason = "test code")]

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use spiderpool_agent_api::IpamAddArgs;
use spiderpool_ipmath::IpFamily;
use spiderpool_schema::endpoint::{IPAllocationDetail, PodIPAllocation, SpiderEndpointStatus};
use spiderpool_schema::{SpiderIPPool, SpiderIPPoolSpec};

use super::*;
use crate::ipam::candidates::{CandidateInput, candidates};

fn status(uid: &str, nics: &[&str]) -> SpiderEndpointStatus {
    SpiderEndpointStatus {
        current: PodIPAllocation {
            uid: uid.into(),
            node: "n1".into(),
            ips: nics
                .iter()
                .map(|nic| IPAllocationDetail {
                    nic: (*nic).into(),
                    ipv4: Some("10.0.0.5/24".into()),
                    ipv4_pool: Some("p".into()),
                    ..Default::default()
                })
                .collect(),
        },
        ..Default::default()
    }
}

#[test]
fn an_endpoint_is_judged_by_uid_interface_and_stickiness() {
    let eth0 = status("u1", &["eth0"]);
    assert_eq!(judge_endpoint(None, "u1", "eth0", false), EndpointVerdict::Create);
    assert_eq!(
        judge_endpoint(Some(&eth0), "u1", "eth0", false),
        EndpointVerdict::Repeat
    );
    assert_eq!(
        judge_endpoint(Some(&eth0), "u1", "net1", false),
        EndpointVerdict::Extend
    );
    assert_eq!(
        judge_endpoint(Some(&eth0), "u2", "eth0", true),
        EndpointVerdict::TakeOver
    );
    assert_eq!(
        judge_endpoint(Some(&eth0), "u2", "eth0", false),
        EndpointVerdict::ReplaceStale
    );
}

fn pod(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).unwrap()
}

#[test]
fn requests_and_pods_are_checked_before_anything_is_read_or_written() {
    let args = IpamAddArgs {
        pod_namespace: "ns".into(),
        pod_name: "a".into(),
        pod_uid: "u1".into(),
        ..Default::default()
    };
    let err = check_args(&args).unwrap_err();
    assert_eq!(err.to_string(), "missing containerID, ifName");
    let live = pod(serde_json::json!({"metadata": {"name": "a", "uid": "u1"}}));
    assert_eq!(check_pod(&live, &args), Ok(()));
    let replaced = pod(serde_json::json!({"metadata": {"name": "a", "uid": "u2"}}));
    assert!(
        matches!(check_pod(&replaced, &args), Err(AddError::PodNotAlive(why)) if why.contains("recreated"))
    );
    let gone = pod(
        serde_json::json!({"metadata": {"name": "a", "uid": "u1", "deletionTimestamp": "2026-01-01T00:00:00Z"}}),
    );
    assert!(matches!(check_pod(&gone, &args), Err(AddError::PodNotAlive(_))));
}

#[test]
fn wanted_skips_recorded_interfaces_and_parses_routes_first() {
    let annotations = BTreeMap::from([(
        "ipam.spidernet.io/ippools".to_owned(),
        r#"[{"interface":"eth0","ipv4":["a"]},{"interface":"net1","ipv4":["b"]}]"#.to_owned(),
    )]);
    let empty = BTreeMap::new();
    let chosen = candidates(&CandidateInput::new(&annotations, &empty, "eth0")).unwrap();
    let wanted = wanted(chosen.clone(), &annotations, &["eth0"], "eth0").unwrap();
    assert_eq!(wanted.nics.len(), 1);
    assert_eq!(wanted.nics[0].nic, "net1");
    assert!(matches!(
        super::wanted(chosen.clone(), &annotations, &["eth0", "net1"], "eth0"),
        Err(AddError::NoCandidate(_))
    ));
    let mut bad_routes = annotations.clone();
    bad_routes.insert("ipam.spidernet.io/routes".into(), "[{]".into());
    assert!(matches!(
        super::wanted(chosen, &bad_routes, &[], "eth0"),
        Err(AddError::Annotation(_))
    ));
}

fn pool(name: &str, edit: impl FnOnce(&mut SpiderIPPoolSpec)) -> Arc<SpiderIPPool> {
    let mut spec = SpiderIPPoolSpec {
        subnet: "10.0.0.0/24".into(),
        ips: vec!["10.0.0.1-10.0.0.9".into()],
        ..Default::default()
    };
    edit(&mut spec);
    Arc::new(SpiderIPPool::new(name, spec))
}

#[test]
fn eligible_pools_are_filtered_and_ordered_with_every_reason() {
    let labels = BTreeMap::new();
    let annotations = BTreeMap::new();
    let node_labels = BTreeMap::new();
    let scope = PodScope {
        namespace: "ns",
        labels: &labels,
        annotations: &annotations,
        node_name: "n1",
        node_labels: &node_labels,
        namespace_labels: &labels,
        default_multus_namespace: "kube-system",
        cluster_network: None,
    };
    let plain = pool("plain", |_| {});
    let pinned = pool("pinned", |s| s.node_name = vec!["n1".into()]);
    let elsewhere = pool("elsewhere", |s| s.node_name = vec!["n2".into()]);
    let found = vec![
        ("plain".to_owned(), Some(plain)),
        ("missing".to_owned(), None),
        ("pinned".to_owned(), Some(pinned)),
        ("elsewhere".to_owned(), Some(elsewhere)),
    ];
    let ordered = eligible_pools(&found, IpFamily::V4, "eth0", &scope).unwrap();
    let names: Vec<&str> = ordered
        .iter()
        .map(|p| p.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["pinned", "plain"]);
    let err = eligible_pools(&found[1..2], IpFamily::V4, "eth0", &scope).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no IPv4 pool can serve eth0: missing: does not exist"
    );
}

#[test]
fn a_take_over_keeps_the_interfaces_whose_addresses_were_all_rebound() {
    let mut two = status("u1", &["eth0", "net1"]);
    two.current.ips[1].ipv6 = Some("fd00::5/64".into());
    two.current.ips[1].ipv6_pool = Some("p6".into());
    let retained = retained_addresses(&two);
    assert_eq!(retained.len(), 3);
    assert_eq!(retained[2].0, 1);
    let (kept, dropped) = split_rebound(two.current.ips.clone(), &[1, 1]);
    assert_eq!(kept.len(), 1);
    assert_eq!(dropped[0].nic, "net1");
}
