//! The CEL rules in our CRDs, against a real kube-apiserver: each rule rejects what it is for (with the
//! message users will see) and lets a valid object through. Acceptance of examples alone would not
//! notice a rule that never fires.

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use spiderpool_schema::{SpiderInterfaceTask, SpiderNetwork};
use spiderpool_tests::{ClusterOptions, TestCluster, init_tracing};

fn object<T: DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).context("building the test object")
}

fn network(name: &str, subnets: serde_json::Value, apps: serde_json::Value) -> Result<SpiderNetwork> {
    object(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderNetwork",
        "metadata": {"name": name},
        "spec": {
            "subnets": subnets,
            "racks": [{"name": "r1", "nodeSelector": {"matchLabels": {"rack": "r1"}}}],
            "apps": apps,
        }
    }))
}

/// Creating `obj` must fail and the API server's message must contain `expected`.
async fn rejected<K>(api: &Api<K>, obj: &K, expected: &str) -> Result<()>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => bail!("the API server accepted an object that should fail with `{expected}`"),
        Err(kube::Error::Api(status)) => {
            ensure!(
                status.message.contains(expected),
                "expected `{expected}`, got: {}",
                status.message
            );
            Ok(())
        }
        Err(other) => Err(other).context("creating the object"),
    }
}

async fn install_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut yaml = String::new();
    for (_, file) in spiderpool_schema::crd_files()? {
        yaml.push_str("---\n");
        yaml.push_str(&file);
    }
    spiderpool_tests::cluster::install_crd_yaml(client, &yaml).await?;
    ensure!(!api.list(&Default::default()).await?.items.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cel_rules_reject_what_they_are_for() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(ClusterOptions {
        install_nad_crd: false,
        ..ClusterOptions::apiserver_only()
    })
    .await?;
    let client = cluster.client()?;
    install_crds(&client).await?;
    let networks: Api<SpiderNetwork> = Api::all(client.clone());

    // A valid topology goes through: the rules do not reject everything.
    let good = network(
        "good",
        json!([{"name": "s", "ipv4": {"cidr": "10.1.0.0/24"}, "ipv6": {"cidr": "fd00:1::/64"}}]),
        json!([{"name": "a", "namespace": "ns", "workload": {"kind": "StatefulSet", "name": "db"},
                "interfaces": [{"network": "n", "fixedIPs": {"count": 2}}]}]),
    )?;
    networks
        .create(&PostParams::default(), &good)
        .await
        .context("a valid SpiderNetwork was refused")?;

    let wrong_family = network(
        "fam",
        json!([{"name": "s", "ipv4": {"cidr": "fd00:1::/64"}}]),
        json!([]),
    )?;
    rejected(&networks, &wrong_family, "ipv4.cidr must be an IPv4 CIDR").await?;
    let wrong_family6 = network(
        "fam6",
        json!([{"name": "s", "ipv6": {"cidr": "10.0.0.0/8"}}]),
        json!([]),
    )?;
    rejected(&networks, &wrong_family6, "ipv6.cidr must be an IPv6 CIDR").await?;
    let not_cidr = network(
        "cidr",
        json!([{"name": "s", "ipv4": {"cidr": "10.0.0.0/33"}}]),
        json!([]),
    )?;
    rejected(&networks, &not_cidr, "cidr must be a CIDR").await?;
    let empty = network("empty", json!([{"name": "s"}]), json!([]))?;
    rejected(&networks, &empty, "a subnet needs ipv4, ipv6 or both").await?;
    let both = network(
        "both",
        json!([{"name": "s", "ipv4": {"cidr": "10.1.0.0/24"}}]),
        json!([{"name": "a", "namespace": "ns", "workload": {"kind": "Deployment", "name": "w"},
                "podSelector": {"matchLabels": {"app": "w"}}, "interfaces": [{"network": "n"}]}]),
    )?;
    rejected(&networks, &both, "set exactly one of workload and podSelector").await?;
    let no_addresses = network(
        "fixed",
        json!([{"name": "s", "ipv4": {"cidr": "10.1.0.0/24"}}]),
        json!([{"name": "a", "namespace": "ns", "podSelector": {"matchLabels": {"app": "w"}},
                "interfaces": [{"network": "n", "fixedIPs": {}}]}]),
    )?;
    rejected(&networks, &no_addresses, "set count, or list ipv4/ipv6 addresses").await?;
    let vlan = network(
        "vlan",
        json!([{"name": "s", "vlan": 4095, "ipv4": {"cidr": "10.1.0.0/24"}}]),
        json!([]),
    )?;
    rejected(&networks, &vlan, "should be less than or equal to 4094").await?;

    // Upstream's kinds carry no CEL rule (their immutable fields are the webhooks' rules: see
    // operator_webhook.rs); schema/tests/crds.rs checks that.
    let tasks: Api<SpiderInterfaceTask> = Api::all(client.clone());
    let task: SpiderInterfaceTask = object(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderInterfaceTask",
        "metadata": {"name": "t"}, "spec": {"nodeName": "node1", "vlans": [{"parent": "eth1", "id": 10}]}
    }))?;
    tasks.create(&PostParams::default(), &task).await?;
    let change = tasks
        .patch(
            "t",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeName": "node2"}})),
        )
        .await;
    match change {
        Err(kube::Error::Api(status)) if status.message.contains("nodeName is immutable") => {}
        other => bail!("changing spec.nodeName of a task should fail as immutable, got {other:?}"),
    }
    Ok(())
}
