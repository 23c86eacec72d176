//! The operator's admission webhooks behind a real kube-apiserver: the server runs in this process on
//! 127.0.0.1 with a generated CA, registers its Mutating/ValidatingWebhookConfigurations with `url` and
//! `caBundle`, and every request below goes through the API server exactly as `kubectl` would send it.
//!
//! The configurations are cluster-wide, so this binary starts its own control plane (not the shared
//! one) and removes them at the end.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::path::Path;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use spiderpool_operator::webhook;
use spiderpool_schema::{
    NetworkAttachmentDefinition, SpiderIPPool, SpiderMultusConfig, SpiderNetwork, SpiderReservedIP,
    SpiderSubnet,
};
use spiderpool_tests::admission::with_webhooks;
use spiderpool_tests::{init_tracing, tools};

const REGISTRATION: &str = "spiderpool-webhook-e2e";

fn object<T: DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("test object")
}

fn pool(name: &str, subnet: &str, ips: &[&str]) -> SpiderIPPool {
    object(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
        "metadata": {"name": name}, "spec": {"subnet": subnet, "ips": ips},
    }))
}

/// Creating `obj` must be refused by our webhook with a message containing every `expected` part.
async fn refused<K>(api: &Api<K>, obj: &K, expected: &[&str]) -> Result<String>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let message = refused_by_anyone(api, obj, expected).await?;
    ensure!(
        message.contains("admission webhook"),
        "refused, but not by our webhook: {message}"
    );
    Ok(message)
}

/// Creating `obj` must be refused (by our webhook, or already by the CRD schema, which the API server
/// checks first) with a message containing every `expected` part.
async fn refused_by_anyone<K>(api: &Api<K>, obj: &K, expected: &[&str]) -> Result<String>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => bail!(
            "the API server accepted {} although it should be refused with {expected:?}",
            obj.name_any()
        ),
        Err(kube::Error::Api(status)) => {
            for part in expected {
                ensure!(
                    status.message.contains(part),
                    "expected `{part}` in: {}",
                    status.message
                );
            }
            Ok(status.message)
        }
        Err(other) => Err(other).context("creating the object"),
    }
}

/// The field path an invalid example's comment says it must be refused for ("Expected problem: <path>").
fn expected_path(text: &str) -> Option<String> {
    let comment: Vec<&str> = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .collect();
    let joined = comment.join(" ");
    let after = joined.split("Expected problem:").nth(1)?;
    let path = after.split_whitespace().next()?;
    Some(path.trim_end_matches(['.', ',']).to_string())
}

fn topology_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    Ok(files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_admit_mutate_and_refuse_through_the_api_server() -> Result<()> {
    init_tracing();
    // The configurations are cluster-wide: a control plane of this test's own, and they are removed
    // (and checked gone) whatever happened.
    with_webhooks(REGISTRATION, |client| async move { exercise(&client).await }).await
}

async fn exercise(client: &Client) -> Result<()> {
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let registered = configs.get(REGISTRATION).await?;
    ensure!(
        registered
            .webhooks
            .iter()
            .flatten()
            .all(|w| w.client_config.ca_bundle.is_some()),
        "caBundle missing"
    );
    pools(client).await.context("SpiderIPPool")?;
    subnets(client).await.context("SpiderSubnet")?;
    reserved_ips(client).await.context("SpiderReservedIP")?;
    multus_configs(client).await.context("SpiderMultusConfig")?;
    topologies(client).await.context("SpiderNetwork")?;
    Ok(())
}

async fn pools(client: &Client) -> Result<()> {
    let api: Api<SpiderIPPool> = Api::all(client.clone());
    // Mutation: finalizer, ipVersion, CIDR label; ips kept as written.
    let created = api
        .create(
            &PostParams::default(),
            &pool("a", "10.6.0.0/16", &["10.6.0.20", "10.6.0.10-10.6.0.19"]),
        )
        .await
        .context("a valid pool was refused")?;
    ensure!(
        created.finalizers() == [spiderpool_schema::FINALIZER],
        "finalizers: {:?}",
        created.finalizers()
    );
    ensure!(
        created.spec.ip_version == Some(4),
        "ipVersion: {:?}",
        created.spec.ip_version
    );
    ensure!(
        created
            .labels()
            .get(webhook::LABEL_IPPOOL_CIDR)
            .map(String::as_str)
            == Some("10-6-0-0-16"),
        "labels: {:?}",
        created.labels()
    );
    ensure!(
        created.spec.ips == ["10.6.0.20", "10.6.0.10-10.6.0.19"],
        "ips: {:?}",
        created.spec.ips
    );

    // A different CIDR overlapping a's is refused, naming the field and the other pool.
    refused(
        &api,
        &pool("b", "10.6.0.0/24", &["10.6.0.30"]),
        &["spec.subnet", "SpiderIPPool a"],
    )
    .await?;
    // The same CIDR with shared addresses is refused.
    refused(
        &api,
        &pool("c", "10.6.0.0/16", &["10.6.0.15-10.6.0.25"]),
        &["spec.ips", "10.6.0.15-10.6.0.20", "SpiderIPPool a"],
    )
    .await?;
    // The same CIDR with other addresses is fine.
    api.create(
        &PostParams::default(),
        &pool("d", "10.6.0.0/16", &["10.6.0.21-10.6.0.30"]),
    )
    .await
    .context("a pool sharing the CIDR but not the addresses was refused")?;
    // Spec rules of the schema also come back through the webhook.
    refused(
        &api,
        &pool("e", "10.9.0.0/16", &["10.8.0.1"]),
        &["spec.ips", "outside the subnet"],
    )
    .await?;

    // An allocated address cannot be removed. Allocations live in status, which is not webhooked.
    let allocated = json!({"10.6.0.15": {"pod": "ns/web-0", "podUid": "uid-1"}}).to_string();
    api.patch_status(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"allocatedIPs": allocated, "allocatedIPCount": 1}})),
    )
    .await?;
    let shrink = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ips": ["10.6.0.10-10.6.0.14"]}})),
        )
        .await;
    match shrink {
        Err(kube::Error::Api(status)) => ensure!(
            status
                .message
                .contains("spec.ips: cannot remove 10.6.0.15 (pod ns/web-0)"),
            "{}",
            status.message
        ),
        other => bail!("removing an allocated address was not refused: {other:?}"),
    }
    // Removing free addresses is fine.
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"ips": ["10.6.0.10-10.6.0.15"]}})),
    )
    .await
    .context("removing free addresses was refused")?;
    // subnet is immutable (the webhook's rule, as upstream's).
    let moved = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"subnet": "10.7.0.0/16"}})),
        )
        .await;
    ensure!(
        matches!(&moved, Err(kube::Error::Api(s)) if s.message.contains("spec.subnet: is immutable")),
        "{moved:?}"
    );
    Ok(())
}

async fn subnets(client: &Client) -> Result<()> {
    let api: Api<SpiderSubnet> = Api::all(client.clone());
    let subnet = |name: &str, cidr: &str, ips: &[&str]| -> SpiderSubnet {
        object(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderSubnet",
            "metadata": {"name": name}, "spec": {"subnet": cidr, "ips": ips},
        }))
    };
    let mut s1 = subnet("s1", "10.20.0.0/16", &["10.20.0.2", "10.20.0.1"]);
    s1.spec.gateway = Some("10.20.0.254".into());
    let created = api.create(&PostParams::default(), &s1).await?;
    ensure!(
        created.spec.ips == ["10.20.0.2", "10.20.0.1"],
        "{:?}",
        created.spec.ips
    );
    ensure!(created.spec.ip_version == Some(4));
    // A pool of the subnet's CIDR is adopted at admission, as upstream does: no controller runs here.
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let adopted = pools
        .create(
            &PostParams::default(),
            &pool("in-s1", "10.20.0.0/16", &["10.20.0.1"]),
        )
        .await?;
    ensure!(
        adopted
            .labels()
            .get(webhook::LABEL_OWNER_SUBNET)
            .map(String::as_str)
            == Some("s1")
            && adopted
                .owner_references()
                .iter()
                .any(|r| r.uid == created.uid().unwrap_or_default() && r.controller == Some(true))
            && adopted.spec.gateway.as_deref() == Some("10.20.0.254"),
        "not adopted at admission: {:?} {:?} {:?}",
        adopted.labels(),
        adopted.owner_references(),
        adopted.spec.gateway
    );
    refused(
        &api,
        &subnet("s2", "10.20.1.0/24", &[]),
        &["spec.subnet", "SpiderSubnet s1"],
    )
    .await?;
    // The pools of 10.6.0.0/16 use addresses this subnet would not contain.
    refused(
        &api,
        &subnet("s3", "10.6.0.0/16", &["10.6.0.10-10.6.0.12"]),
        &["spec.ips", "SpiderIPPool"],
    )
    .await?;
    Ok(())
}

async fn reserved_ips(client: &Client) -> Result<()> {
    let api: Api<SpiderReservedIP> = Api::all(client.clone());
    let created = api
        .create(
            &PostParams::default(),
            &object(json!({
                "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderReservedIP",
                "metadata": {"name": "r"}, "spec": {"ips": ["fd00::2", "fd00::1"]},
            })),
        )
        .await?;
    ensure!(created.spec.ip_version == Some(6));
    ensure!(
        created.spec.ips == ["fd00::2", "fd00::1"],
        "{:?}",
        created.spec.ips
    );
    refused(
        &api,
        &object(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderReservedIP",
            "metadata": {"name": "mixed"}, "spec": {"ips": ["10.0.0.1", "fd00::1"]},
        })),
        &["spec.ips[1]"],
    )
    .await?;
    Ok(())
}

async fn multus_configs(client: &Client) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &object(json!({"metadata": {"name": "smc-test"}})),
        )
        .await?;
    let nads: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), "smc-test");
    // A NAD another SpiderMultusConfig owns.
    let nad = json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "taken", "namespace": "smc-test", "ownerReferences": [{
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderMultusConfig",
            "name": "owner", "uid": "4b7a1d1e-0000-4000-8000-000000000001", "controller": true}]},
        "spec": {"config": "{\"cniVersion\":\"0.3.1\",\"type\":\"macvlan\"}"},
    });
    nads.patch("taken", &PatchParams::apply("test"), &Patch::Apply(&nad))
        .await?;
    let smcs: Api<SpiderMultusConfig> = Api::namespaced(client.clone(), "smc-test");
    let smc = |name: &str| -> SpiderMultusConfig {
        object(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderMultusConfig",
            "metadata": {"name": name, "namespace": "smc-test"},
            "spec": {"cniType": "macvlan", "macvlan": {"master": ["eth0"]}},
        }))
    };
    refused(
        &smcs,
        &smc("taken"),
        &["metadata.name", "SpiderMultusConfig owner"],
    )
    .await?;
    let created = smcs.create(&PostParams::default(), &smc("free")).await?;
    let coordinator = created
        .spec
        .coordinator
        .context("coordinator defaults not filled")?;
    ensure!(coordinator.mode.as_deref() == Some("auto") && coordinator.tune_pod_routes == Some(true));
    refused(
        &smcs,
        &object(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderMultusConfig",
            "metadata": {"name": "bad", "namespace": "smc-test"},
            "spec": {"cniType": "macvlan", "macvlan": {"master": ["eth0", "eth1"]}},
        })),
        &["spec.macvlan"],
    )
    .await?;
    Ok(())
}

async fn topologies(client: &Client) -> Result<()> {
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    let dir = tools::repo_root().join("examples/topologies");
    let invalid = topology_files(&dir.join("invalid"))?;
    ensure!(
        invalid.len() == 13,
        "expected 13 invalid examples, found {}",
        invalid.len()
    );
    let mut by_webhook = 0;
    for file in &invalid {
        let text = std::fs::read_to_string(file)?;
        let path = expected_path(&text)
            .with_context(|| format!("{}: no `Expected problem:` comment", file.display()))?;
        let network: SpiderNetwork =
            serde_saphyr::from_str(&text).with_context(|| file.display().to_string())?;
        // One example (VLAN 4095) is already refused by the CRD schema's maximum; the webhook would
        // refuse it at the same path (see the operator's unit tests).
        let message = refused_by_anyone(&api, &network, &[&path])
            .await
            .with_context(|| file.display().to_string())?;
        by_webhook += usize::from(message.contains("admission webhook"));
    }
    ensure!(
        by_webhook >= 12,
        "only {by_webhook} invalid examples were refused by the webhook"
    );
    let valid = topology_files(&dir)?;
    ensure!(
        valid.len() >= 6,
        "expected the valid examples, found {}",
        valid.len()
    );
    for file in &valid {
        let network: SpiderNetwork = serde_saphyr::from_str(&std::fs::read_to_string(file)?)?;
        api.create(&PostParams::default(), &network)
            .await
            .with_context(|| format!("{} was refused", file.display()))?;
    }
    Ok(())
}
