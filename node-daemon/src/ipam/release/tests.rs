#![allow(clippy::unwrap_used, reason = "test code")]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use spiderpool_agent_api::Attachment;
use spiderpool_schema::SpiderEndpoint;
use spiderpool_schema::endpoint::SpiderEndpointStatus;

use super::*;
use crate::ipam::endpoint::{ANNO_CONTAINER_ID, ANNO_NETWORKS};

fn facts<'a>(
    container: &'a str,
    holder: Option<&'a str>,
    pod_uid: Option<&'a str>,
    sticky: bool,
) -> DelFacts<'a> {
    DelFacts {
        container_id: container,
        args_uid: "",
        pod_uid,
        holder_container: holder,
        endpoint_uid: "u1",
        sticky,
    }
}

#[test]
fn del_releases_only_for_the_sandbox_and_incarnation_holding_the_addresses() {
    assert_eq!(
        judge_del(&facts("c1", Some("c1"), Some("u1"), false)),
        DelVerdict::Release
    );
    assert_eq!(judge_del(&facts("c1", None, None, false)), DelVerdict::Release);
    assert_eq!(
        judge_del(&facts("c0", Some("c1"), Some("u1"), false)),
        DelVerdict::OtherSandbox("c1".into())
    );
    // The pod of that name is a newer incarnation: the sandbox the endpoint names releases what it
    // holds (the old incarnation's); without a holder on record, nothing ties the DEL to it.
    assert_eq!(
        judge_del(&facts("c1", Some("c1"), Some("u2"), false)),
        DelVerdict::Release
    );
    let mut named = facts("c1", Some("c1"), Some("u2"), false);
    named.args_uid = "u1";
    assert_eq!(judge_del(&named), DelVerdict::Release);
    assert_eq!(
        judge_del(&facts("c1", None, Some("u2"), false)),
        DelVerdict::OtherIncarnation("u1".into())
    );
    let mut by_args = facts("c1", Some("c1"), None, false);
    by_args.args_uid = "u0";
    assert_eq!(judge_del(&by_args), DelVerdict::OtherIncarnation("u1".into()));
    // A sticky pod that is gone: whatever incarnation the runtime names, the owner decides.
    let mut sticky_gone = facts("c1", Some("c1"), None, true);
    sticky_gone.args_uid = "u0";
    assert_eq!(judge_del(&sticky_gone), DelVerdict::ReleaseUnlessRetained);
    assert_eq!(
        judge_del(&facts("c1", Some("c1"), Some("u2"), true)),
        DelVerdict::OtherIncarnation("u1".into())
    );
}

#[test]
fn a_gone_pods_stickiness_comes_from_its_endpoint() {
    let mut status = SpiderEndpointStatus {
        owner_controller_type: "StatefulSet".into(),
        owner_controller_name: "db".into(),
        ..Default::default()
    };
    assert_eq!(
        stickiness_of(None, &status, "db-2", "db-2", true, true),
        Stickiness::StatefulSet {
            set: "db".into(),
            ordinal: 2
        }
    );
    assert_eq!(
        stickiness_of(None, &status, "db-2", "db-2", false, true),
        Stickiness::None
    );
    status.owner_controller_type = "VirtualMachine".into();
    assert_eq!(
        stickiness_of(None, &status, "virt-launcher-x", "vm1", true, true),
        Stickiness::KubeVirt { vmi: "vm1".into() }
    );
    assert_eq!(
        stickiness_of(Some(Stickiness::None), &status, "a", "a", true, true),
        Stickiness::None
    );
}

#[test]
fn release_all_is_refused_for_retained_addresses_and_checks_the_incarnation() {
    assert!(release_all_forbidden(true, true).is_some());
    assert!(release_all_forbidden(true, false).is_none());
    assert!(release_all_forbidden(false, true).is_none());
    assert_eq!(judge_release_all("", "u1"), ReleaseAllVerdict::Release);
    assert_eq!(judge_release_all("u2", "u1"), ReleaseAllVerdict::OtherIncarnation);
}

fn endpoint(name: &str, container: &str, networks: &str, owner_kind: &str, owned: bool) -> SpiderEndpoint {
    SpiderEndpoint {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            annotations: Some(BTreeMap::from([
                (ANNO_CONTAINER_ID.to_owned(), container.to_owned()),
                (ANNO_NETWORKS.to_owned(), networks.to_owned()),
            ])),
            owner_references: owned.then(|| vec![OwnerReference::default()]),
            ..Default::default()
        },
        status: Some(SpiderEndpointStatus {
            owner_controller_type: owner_kind.into(),
            ..Default::default()
        }),
    }
}

#[test]
fn gc_releases_only_what_the_runtime_no_longer_has() {
    let endpoints = [
        endpoint("kept", "c1", r#"{"eth0":"net"}"#, "Deployment", true),
        endpoint(
            "gone",
            "c2",
            r#"{"eth0":"net","net1":"other"}"#,
            "Deployment",
            true,
        ),
        endpoint("other-net", "c3", r#"{"eth0":"other"}"#, "Deployment", true),
        endpoint("sts", "c4", r#"{"eth0":"net"}"#, "StatefulSet", true),
        endpoint("unowned", "c5", r#"{"eth0":"net"}"#, "Pod", false),
    ];
    let valid = [Attachment {
        container_id: "c1".into(),
        if_name: "eth0".into(),
    }];
    let found = gc_candidates(&endpoints, "net", &valid);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, "gone");
    assert_eq!(
        found[0].attachments(),
        [Attachment {
            container_id: "c2".into(),
            if_name: "eth0".into()
        }]
    );
    assert!(still_held_by(&endpoints[1], "c2"));
    assert!(!still_held_by(&endpoints[1], "c9"));
}
