//! The SpiderSubnet controllers against a real control plane (API server + controller-manager; pods stay
//! Pending, which automatic pools do not care about): subnet status and adoption, automatic pools that
//! follow a Deployment 2 -> 5 -> 1 and go with it (or stay, with reclaim=false), StatefulSet and Job
//! pools, and a bad annotation that is reported and changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use spiderpool_ipmath::{IpFamily, IpSet};
use spiderpool_operator::controller::ippool::{self, IPPoolControllerConfig};
use spiderpool_operator::controller::subnet::{self, SubnetControllerConfig};
use spiderpool_schema::annotations::{ANNO_IPPOOL_IP_NUMBER, ANNO_IPPOOL_RECLAIM, ANNO_SUBNET};
use spiderpool_schema::labels::{LABEL_OWNER_APP_NAME, LABEL_OWNER_SPIDER_SUBNET};
use spiderpool_schema::{SpiderIPPool, SpiderIPPoolSpec, SpiderReservedIP, SpiderSubnet};
use spiderpool_tests::wait::eventually;
use spiderpool_tests::{TestCluster, TestNamespace, init_tracing};

const WAIT: Duration = Duration::from_secs(60);

async fn install_crds(client: &Client) -> Result<()> {
    let mut yaml = String::new();
    for (_, file) in spiderpool_schema::crd_files()? {
        yaml.push_str("---\n");
        yaml.push_str(&file);
    }
    spiderpool_tests::cluster::install_crd_yaml(client, &yaml).await?;
    Ok(())
}

/// The automatic pools of application `name` (any kind).
async fn app_pools(client: &Client, name: &str) -> Result<Vec<SpiderIPPool>> {
    let api: Api<SpiderIPPool> = Api::all(client.clone());
    Ok(api
        .list(&ListParams::default().labels(&format!("{LABEL_OWNER_APP_NAME}={name}")))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

fn size(pool: &SpiderIPPool) -> u128 {
    IpSet::parse_list(IpFamily::V4, &pool.spec.ips).unwrap().len()
}

/// Waits until application `name` has exactly one pool with `n` addresses; returns it.
async fn pool_of_size(client: &Client, name: &str, n: u128) -> Result<SpiderIPPool> {
    eventually(&format!("pool of {name} with {n} addresses"), WAIT, || async {
        let pools = app_pools(client, name).await?;
        Ok((pools.len() == 1 && size(&pools[0]) == n).then(|| pools[0].clone()))
    })
    .await
}

fn template(annotations: serde_json::Value) -> serde_json::Value {
    json!({
        "metadata": {"labels": {"app": "x"}, "annotations": annotations},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/none:1"}], "restartPolicy": "Always"}
    })
}

fn deployment(name: &str, replicas: i32, annotations: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "x"}}, "template": template(annotations)}
    }))
    .unwrap()
}

async fn scale_deployment(ns: &TestNamespace, name: &str, replicas: i32) -> Result<()> {
    let api: Api<Deployment> = ns.api();
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subnet_status_adoption_and_automatic_pools() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::shared().await?;
    let client = cluster.client()?;
    install_crds(&client).await?;
    let config = SubnetControllerConfig {
        resync: Duration::from_secs(30),
        retry_delay: Duration::from_millis(500),
        enable_ipv6: false,
        ..SubnetControllerConfig::default()
    };
    let subnets_task = tokio::spawn(subnet::run(client.clone(), config));
    let pools_task = tokio::spawn(ippool::run(
        client.clone(),
        IPPoolControllerConfig {
            resync: Duration::from_secs(5),
            retry_delay: Duration::from_millis(500),
        },
    ));
    let subnets: Api<SpiderSubnet> = Api::all(client.clone());
    let pools: Api<SpiderIPPool> = Api::all(client.clone());

    // A subnet of 40 addresses, 2 of them reserved cluster-wide, and a hand-made pool of the same CIDR.
    let subnet: SpiderSubnet = serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderSubnet",
        "metadata": {"name": "sub-t"},
        "spec": {"subnet": "10.88.0.0/16", "ips": ["10.88.1.1-10.88.1.40"], "gateway": "10.88.0.1"}
    }))?;
    subnets.create(&PostParams::default(), &subnet).await?;
    let reserved: SpiderReservedIP = serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderReservedIP",
        "metadata": {"name": "sub-t-reserved"},
        "spec": {"ipVersion": 4, "ips": ["10.88.1.4-10.88.1.5"]}
    }))?;
    Api::<SpiderReservedIP>::all(client.clone())
        .create(&PostParams::default(), &reserved)
        .await?;
    let manual = SpiderIPPool::new(
        "sub-t-manual",
        SpiderIPPoolSpec {
            subnet: "10.88.0.0/16".into(),
            ips: vec!["10.88.1.1-10.88.1.3".into()],
            ..SpiderIPPoolSpec::default()
        },
    );
    pools.create(&PostParams::default(), &manual).await?;

    // Adoption: owner reference, label, inherited gateway; status counts the manual pool.
    eventually("manual pool adopted and counted", WAIT, || async {
        let p = pools.get("sub-t-manual").await?;
        let s = subnets.get("sub-t").await?.status.unwrap_or_default();
        let adopted = p.labels().get(LABEL_OWNER_SPIDER_SUBNET).map(String::as_str) == Some("sub-t")
            && p.owner_references()
                .iter()
                .any(|r| r.kind == "SpiderSubnet" && r.controller == Some(true))
            && p.spec.gateway.as_deref() == Some("10.88.0.1");
        Ok((adopted && s.total_ip_count == Some(40) && s.allocated_ip_count == Some(3)).then_some(()))
    })
    .await?;

    let ns = cluster.namespace("subnet").await?;
    let annotations = |extra: serde_json::Value| {
        let mut a = json!({ANNO_SUBNET: r#"{"ipv4":["sub-t"]}"#, ANNO_IPPOOL_IP_NUMBER: "+1"});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a
    };

    // Deployment 2 -> 5 -> 1: pool = replicas + 1, lowest free addresses (after the manual pool and
    // the reserved .4-.5).
    let deployments: Api<Deployment> = ns.api();
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", 2, annotations(json!({}))),
        )
        .await?;
    let pool = pool_of_size(&client, "web", 3).await?;
    assert_eq!(pool.spec.ips, vec!["10.88.1.6-10.88.1.8"]);
    assert!(
        pool.name_any().starts_with("auto4-web-eth0-"),
        "{}",
        pool.name_any()
    );
    assert_eq!(pool.spec.gateway.as_deref(), Some("10.88.0.1"));
    let affinity = pool.spec.pod_affinity.clone().unwrap().match_labels.unwrap();
    assert_eq!(affinity["ipam.spidernet.io/app-kind"], "Deployment");
    assert_eq!(affinity["ipam.spidernet.io/app-namespace"], ns.name());
    scale_deployment(&ns, "web", 5).await?;
    let grown = pool_of_size(&client, "web", 6).await?;
    assert_eq!(grown.spec.ips, vec!["10.88.1.6-10.88.1.11"]);
    assert_eq!(grown.name_any(), pool.name_any(), "resized in place");
    // Shrinking keeps allocated addresses: mark .11 as allocated, as the node daemon would.
    let record = json!({"10.88.1.11": {"pod": format!("{}/web-x", ns.name()), "podUid": "u-x"}}).to_string();
    pools
        .patch_status(
            &grown.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"allocatedIPs": record}})),
        )
        .await?;
    scale_deployment(&ns, "web", 1).await?;
    let shrunk = pool_of_size(&client, "web", 2).await?;
    assert_eq!(shrunk.spec.ips, vec!["10.88.1.6", "10.88.1.11"]);
    // Subnet status lists the automatic pool with its application.
    eventually("subnet status lists the automatic pool", WAIT, || async {
        let s = subnets.get("sub-t").await?.status.unwrap_or_default();
        let controlled = s.controlled_pools()?;
        let entry = controlled.get(&shrunk.name_any()).cloned();
        Ok(entry
            .filter(|e| {
                e.ips == vec!["10.88.1.6", "10.88.1.11"]
                    && e.application.as_deref() == Some(&format!("apps_v1_Deployment_{}_web", ns.name()))
            })
            .map(|_| ())
            .filter(|_| s.allocated_ip_count == Some(5)))
    })
    .await?;
    // Release the record and delete the Deployment: the pool goes (reclaim defaults to true).
    pools
        .patch_status(
            &shrunk.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"allocatedIPs": null}})),
        )
        .await?;
    deployments.delete("web", &DeleteParams::default()).await?;
    eventually("Deployment pool deleted", WAIT, || async {
        Ok(pools.get_opt(&shrunk.name_any()).await?.is_none().then_some(()))
    })
    .await?;

    // reclaim=false: the pool outlives its Deployment.
    deployments
        .create(
            &PostParams::default(),
            &deployment("keep", 1, annotations(json!({ANNO_IPPOOL_RECLAIM: "false"}))),
        )
        .await?;
    let kept = pool_of_size(&client, "keep", 2).await?;
    deployments.delete("keep", &DeleteParams::default()).await?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    ensure!(
        pools.get_opt(&kept.name_any()).await?.is_some(),
        "reclaim=false pool was deleted"
    );

    // StatefulSet with a fixed size.
    let sts: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "x"}},
                 "template": template(json!({ANNO_SUBNET: r#"{"interface":"net1","ipv4":["sub-t"]}"#,
                                             ANNO_IPPOOL_IP_NUMBER: "4"}))}
    }))?;
    ns.api::<StatefulSet>()
        .create(&PostParams::default(), &sts)
        .await?;
    let db = pool_of_size(&client, "db", 4).await?;
    assert!(db.name_any().starts_with("auto4-db-net1-"));
    assert_eq!(db.annotations()[ANNO_IPPOOL_IP_NUMBER], "4");
    assert_eq!(
        db.labels()["ipam.spidernet.io/owner-application-kind"],
        "StatefulSet"
    );

    // Job: completions 3 + 1 spare.
    let job: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "batch"},
        "spec": {"completions": 3, "parallelism": 1,
                 "template": {
                     "metadata": {"annotations": annotations(json!({}))},
                     "spec": {"containers": [{"name": "c", "image": "registry.invalid/none:1"}], "restartPolicy": "Never"}}}
    }))?;
    ns.api::<Job>().create(&PostParams::default(), &job).await?;
    let batch = pool_of_size(&client, "batch", 4).await?;
    // No two pools of the subnet share an address.
    let all: Vec<IpSet> = [&kept, &db, &batch]
        .iter()
        .map(|p| IpSet::parse_list(IpFamily::V4, &p.spec.ips).unwrap())
        .collect();
    for (i, a) in all.iter().enumerate() {
        for b in &all[..i] {
            ensure!(!a.overlaps(b), "pools overlap: {a:?} {b:?}");
        }
    }

    // A bad annotation: an Event and a log, no pool.
    deployments
        .create(
            &PostParams::default(),
            &deployment(
                "bad",
                1,
                json!({ANNO_SUBNET: r#"{"ipv4":["sub-t"]}"#, ANNO_IPPOOL_IP_NUMBER: "many"}),
            ),
        )
        .await?;
    let events: Api<Event> = ns.api();
    let event = eventually("InvalidSubnetAnnotation event", WAIT, || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("InvalidSubnetAnnotation")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad")
        }))
    })
    .await?;
    let note = event.note.unwrap_or_default();
    assert!(note.contains(ANNO_IPPOOL_IP_NUMBER), "{note}");
    ensure!(
        app_pools(&client, "bad").await?.is_empty(),
        "a bad annotation made a pool"
    );

    // Cleanup: the namespace (its apps) and the cluster-scoped objects.
    ns.delete().await?;
    for name in [kept.name_any(), "sub-t-manual".to_string()] {
        let _ = pools.delete(&name, &DeleteParams::default()).await;
    }
    Api::<SpiderReservedIP>::all(client.clone())
        .delete("sub-t-reserved", &DeleteParams::default())
        .await?;
    subnets_task.abort();
    pools_task.abort();
    Ok(())
}
