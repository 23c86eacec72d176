//! The pod webhook against a real API server and kube-controller-manager: pods that a SpiderNetwork's
//! app bindings select get the Multus networks, default-route NIC and fixed-pool annotations when
//! their controllers create them; a StatefulSet scaled past its fixed addresses gets no extra pod, and
//! says why in its events; a pod's own annotations win; other namespaces are never sent to the
//! webhook.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use spiderpool_schema::SpiderNetwork;
use spiderpool_schema::labels::ANNOTATION_APP_BINDING;
use spiderpool_tests::admission::{Webhooks, wait_until_pod_webhook_binds};
use spiderpool_tests::objects::ensure_namespace;
use spiderpool_tests::{ClusterOptions, TestCluster, init_tracing, ipam, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);
const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
const IPPOOLS: &str = "ipam.spidernet.io/ippools";
const DEFAULT_ROUTE: &str = "ipam.spidernet.io/default-route-nic";

fn topology() -> SpiderNetwork {
    serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderNetwork",
        "metadata": {"name": "dc"},
        "spec": {
            "subnets": [{"name": "s", "ipv4": {"cidr": "10.0.0.0/24", "gateway": "10.0.0.1"}}],
            "racks": [{"name": "r1", "nodeSelector": {"matchLabels": {"rack": "r1"}}, "uplinks": ["ens1"],
                       "ranges": [{"subnet": "s", "ipv4": ["10.0.0.10-10.0.0.200"]}]}],
            "networks": [{"name": "data", "type": "macvlan", "subnet": "s", "master": "ens1",
                          "namespaces": ["app"]}],
            "apps": [
                {"name": "db", "namespace": "app", "workload": {"kind": "StatefulSet", "name": "db"},
                 "interfaces": [{"network": "data", "fixedIPs": {"count": 3}}]},
                {"name": "web", "namespace": "app", "workload": {"kind": "Deployment", "name": "web"},
                 "interfaces": [{"network": "data"}], "defaultRouteInterface": "net1"},
                {"name": "edge", "namespace": "app", "podSelector": {"matchLabels": {"tier": "edge"}},
                 "interfaces": [{"network": "data"}]}
            ]
        }
    }))
    .unwrap()
}

fn pod(name: &str, labels: serde_json::Value, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/none:1"}]}
    }))
    .unwrap()
}

fn template(labels: serde_json::Value) -> serde_json::Value {
    json!({"metadata": {"labels": labels},
           "spec": {"containers": [{"name": "c", "image": "registry.invalid/none:1"}]}})
}

fn annotations(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.annotations.clone().unwrap_or_default()
}

async fn wait_for_default_service_account(client: &Client, namespace: &str) -> Result<()> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    wait_for("the default ServiceAccount", TIMEOUT, || async {
        Ok(accounts.get_opt("default").await?.map(|_| ()))
    })
    .await
}

/// Waits until the API server sends pods of `app` to the pod webhook.
async fn wait_until_pods_are_admitted(client: &Client) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");
    let probe = pod("probe", json!({"tier": "edge"}), json!({}));
    wait_until_pod_webhook_binds(&pods, &probe, NETWORKS, TIMEOUT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_bindings_reach_the_pods_their_controllers_create() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(ClusterOptions {
        scheduler: false,
        install_nad_crd: false,
        ..ClusterOptions::default()
    })
    .await?;
    let client = cluster.client()?;
    ipam::install_spiderpool_crds(&client).await?;
    let webhooks = Webhooks::start(&client, "spiderpool-pods-test").await?;
    let outcome = check(&client).await;
    webhooks.stop().await?;
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    anyhow::ensure!(
        configurations
            .get_opt("spiderpool-pods-test-pods")
            .await?
            .is_none(),
        "the pod webhook's configuration is removed with the others"
    );
    outcome
}

async fn check(client: &Client) -> Result<()> {
    for ns in ["app", "other"] {
        ensure_namespace(client, ns).await?;
        wait_for_default_service_account(client, ns).await?;
    }
    let networks: Api<SpiderNetwork> = Api::all(client.clone());
    networks.create(&PostParams::default(), &topology()).await?;

    // Registered for the bound namespace only, failures ignored.
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let configuration = wait_for("the pod webhook configuration", TIMEOUT, || async {
        let found = configurations.get_opt("spiderpool-pods-test-pods").await?;
        let bound = found.as_ref().is_some_and(|c| {
            let hook = &c.webhooks.as_ref().unwrap()[0];
            let expr = &hook
                .namespace_selector
                .as_ref()
                .unwrap()
                .match_expressions
                .as_ref()
                .unwrap()[0];
            expr.values.as_deref() == Some(&["app".to_string()][..])
        });
        Ok(bound.then_some(found.unwrap()))
    })
    .await?;
    let hook = &configuration.webhooks.as_ref().unwrap()[0];
    assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(hook.timeout_seconds, Some(3));
    wait_until_pods_are_admitted(client).await?;

    // A StatefulSet of 4 with 3 fixed addresses: db-0..db-2 are created with the binding's
    // annotations (pinned to the fixed pools), db-3 is refused and the StatefulSet's events say why.
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), "app");
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"replicas": 4, "serviceName": "db", "podManagementPolicy": "Parallel",
                 "selector": {"matchLabels": {"app": "db"}}, "template": template(json!({"app": "db"}))}
    }))?;
    statefulsets.create(&PostParams::default(), &sts).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");
    let created = wait_for("db-0, db-1 and db-2", TIMEOUT, || async {
        let list = pods.list(&ListParams::default().labels("app=db")).await?.items;
        Ok((list.len() >= 3).then_some(list))
    })
    .await?;
    for p in &created {
        let a = annotations(p);
        assert_eq!(
            a.get(NETWORKS).map(String::as_str),
            Some(r#"[{"name":"data","namespace":"app","interface":"net1"}]"#),
            "{}: {a:?}",
            p.name_any()
        );
        assert!(a[IPPOOLS].contains("dc-db-net1-r1-v4"), "{a:?}");
        assert_eq!(a[ANNOTATION_APP_BINDING], "dc/db");
    }
    let events: Api<Event> = Api::namespaced(client.clone(), "app");
    let refusal = wait_for(
        "the StatefulSet's FailedCreate event for db-3",
        TIMEOUT,
        || async {
            let list = events
                .list(&ListParams::default().fields("involvedObject.name=db"))
                .await?
                .items;
            Ok(list
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
                .find_map(|e| e.message.filter(|m| m.contains("db-3"))))
        },
    )
    .await?;
    assert!(
        refusal.contains("ordinal 3 of StatefulSet db")
            && refusal.contains("3 fixed address(es)")
            && refusal.contains("spec.apps[0].interfaces[0].fixedIPs"),
        "{refusal}"
    );
    let names: Vec<String> = pods
        .list(&ListParams::default().labels("app=db"))
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert!(!names.contains(&"db-3".to_string()), "{names:?}");

    // A Deployment's pods are found through their ReplicaSet.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "app");
    let web: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": template(json!({"app": "web"}))}
    }))?;
    deployments.create(&PostParams::default(), &web).await?;
    let web_pod = wait_for("the web pod", TIMEOUT, || async {
        Ok(pods
            .list(&ListParams::default().labels("app=web"))
            .await?
            .items
            .pop())
    })
    .await?;
    let a = annotations(&web_pod);
    assert_eq!(a.get(DEFAULT_ROUTE).map(String::as_str), Some("net1"), "{a:?}");
    assert!(a.contains_key(NETWORKS) && !a.contains_key(IPPOOLS), "{a:?}");
    assert_eq!(a[ANNOTATION_APP_BINDING], "dc/web");

    // The pod's own annotation wins; the binding fills in nothing else it would override.
    let own = pods
        .create(
            &PostParams::default(),
            &pod(
                "mine",
                json!({"tier": "edge"}),
                json!({NETWORKS: "app/other-net"}),
            ),
        )
        .await?;
    assert_eq!(annotations(&own)[NETWORKS], "app/other-net");
    assert!(!annotations(&own).contains_key(ANNOTATION_APP_BINDING));

    // Another namespace: untouched (and not sent to the webhook at all, see the selector above).
    let elsewhere: Api<Pod> = Api::namespaced(client.clone(), "other");
    let other = elsewhere
        .create(
            &PostParams::default(),
            &pod("x", json!({"tier": "edge"}), json!({})),
        )
        .await?;
    assert!(annotations(&other).is_empty(), "{:?}", annotations(&other));

    // Without bindings, the webhook is registered for no namespace.
    networks.delete("dc", &DeleteParams::default()).await?;
    wait_for("the pod webhook registered for no namespace", TIMEOUT, || async {
        let c = configurations
            .get_opt("spiderpool-pods-test-pods")
            .await?
            .context("the configuration")?;
        let expr = c.webhooks.unwrap()[0]
            .namespace_selector
            .clone()
            .unwrap()
            .match_expressions
            .unwrap()[0]
            .clone();
        Ok((expr.operator == "DoesNotExist").then_some(()))
    })
    .await?;
    Ok(())
}
