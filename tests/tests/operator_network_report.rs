//! What the SpiderNetwork controller reports besides applying children, against a real API server:
//! a new generation is acknowledged (observedGeneration with Reconciling=True) before it is applied;
//! the capacity per subnet, rack and app binding follows the pools' allocations, with the
//! `CapacityLow` condition and a warning Event; refusals are Events too.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod operator_support;

use std::time::Duration;

use anyhow::{Context as _, Result};
use futures::TryStreamExt as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt};
use operator_support::*;
use serde_json::{Value, json};
use spiderpool_schema::network::AddressCounts;
use spiderpool_schema::{SpiderIPPool, SpiderNetwork};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

async fn create_localized(
    client: &Client,
    network: &mut SpiderNetwork,
    suffix: &str,
) -> Result<SpiderNetwork> {
    for ns in localize(network, suffix) {
        ensure_namespace(client, &ns).await?;
    }
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    Ok(api.create(&PostParams::default(), network).await?)
}

/// Runs `spiderctl status NAME` against the test cluster: whether it exited 0, and what it printed
/// (stdout, then stderr).
fn spiderctl_status(cluster: &spiderpool_tests::TestCluster, name: &str) -> Result<(bool, String)> {
    let spiderctl = spiderpool_tests::tools::workspace_binary("spiderpool-operator", "spiderctl", false)?;
    let output = std::process::Command::new(spiderctl)
        .args(["status", name, "--kubeconfig"])
        .arg(cluster.kubeconfig_path())
        .output()
        .context("running spiderctl status")?;
    Ok((
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    ))
}

fn ready_reason(network: &SpiderNetwork) -> Option<String> {
    condition(network, "Ready").map(|(_, reason)| reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_generation_is_acknowledged_before_it_is_applied() -> Result<()> {
    let _turn = SERIAL.lock().await;
    let (_cluster, client) = cluster().await?;
    let _running = start_network(&client);
    let sfx = suffix();
    let mut network = example("dual-stack.yaml")?;
    let live = create_localized(&client, &mut network, &sfx).await?;
    let name = live.name_any();
    wait_reason(&client, &name, "Applied", READY_TIMEOUT).await?;

    // Every version of the object from now on, as a watch delivers them.
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut versions = Box::pin(watcher::watcher(api.clone(), config).applied_objects());
    let first = versions.try_next().await?.context("the watch ended")?;
    assert_eq!(ready_reason(&first).as_deref(), Some("Applied"));

    let patch = json!({"spec": {"capacityThresholdPercent": 50}});
    let edited = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let generation = edited.metadata.generation;
    let mut seen = Vec::new();
    let outcome = tokio::time::timeout(READY_TIMEOUT, async {
        while let Some(version) = versions.try_next().await? {
            let status = version.status.clone().unwrap_or_default();
            let entry = (
                status.observed_generation,
                ready_reason(&version),
                condition(&version, "Reconciling"),
            );
            seen.push(entry);
            if status.observed_generation == generation
                && ready_reason(&version).as_deref() == Some("Applied")
            {
                return Ok::<_, anyhow::Error>(());
            }
        }
        anyhow::bail!("the watch ended")
    })
    .await;
    outcome
        .context("waiting for the new generation to be applied")?
        .with_context(|| format!("versions seen: {seen:?}"))?;
    let acknowledged = seen.iter().position(|(g, ready, reconciling)| {
        *g == generation
            && ready.as_deref() == Some("Progressing")
            && reconciling.as_ref().is_some_and(|(status, _)| status == "True")
    });
    let applied = seen
        .iter()
        .position(|(g, ready, _)| *g == generation && ready.as_deref() == Some("Applied"));
    assert!(
        acknowledged.is_some() && acknowledged < applied,
        "generation {generation:?} is acknowledged (Reconciling=True, Ready=False Progressing) before it is reported applied: {seen:?}"
    );
    // No version between the edit and the acknowledgement claims the new generation is ready, and no
    // version after the edit reports the old generation as current with Ready=True.
    assert!(
        seen.iter()
            .take(acknowledged.unwrap())
            .all(|(g, _, _)| *g != generation),
        "{seen:?}"
    );
    api.delete(&name, &DeleteParams::default()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_follows_allocations_and_warns_when_nearly_full() -> Result<()> {
    let _turn = SERIAL.lock().await;
    let (cluster, client) = cluster().await?;
    let _running = start_network(&client);
    let sfx = suffix();
    let mut network = example("storage-lacp-statefulset.yaml")?;
    network.spec.capacity_threshold_percent = Some(75);
    let live = create_localized(&client, &mut network, &sfx).await?;
    let name = live.name_any();
    wait_reason(&client, &name, "Applied", READY_TIMEOUT).await?;
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    let app_counts = |network: &SpiderNetwork| -> Option<AddressCounts> {
        let capacity = network.status.as_ref()?.capacity.as_ref()?;
        capacity.apps.iter().find(|a| a.name == "minio")?.ipv4
    };
    let empty = wait_for("the capacity in the status", READY_TIMEOUT, || async {
        let network = api.get(&name).await?;
        Ok(app_counts(&network).map(|_| network))
    })
    .await?;
    let capacity = empty.status.as_ref().unwrap().capacity.clone().unwrap();
    assert_eq!(capacity.threshold_percent, 75);
    assert!(
        !capacity.subnets.is_empty() && !capacity.racks.is_empty(),
        "{capacity:?}"
    );
    let minio = app_counts(&empty).unwrap();
    assert_eq!(minio.allocated, 0);
    assert!(minio.total > 0 && minio.free == minio.total, "{minio:?}");
    assert_eq!(
        condition(&empty, "CapacityLow"),
        Some(("False".into(), "Available".into()))
    );

    // The allocator's part: every address of minio's pools (one per rack) is taken.
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let selector = format!("spiderpool.spidernet.io/topology={name},spiderpool.spidernet.io/app=minio");
    let minio_pools = pools.list(&ListParams::default().labels(&selector)).await?.items;
    anyhow::ensure!(!minio_pools.is_empty(), "minio's pools");
    let mut taken = 0_i64;
    let mut taken_in_s1 = 0_i64;
    for pool in &minio_pools {
        let usable = spiderpool_operator::controller::network::plan::pool_usable(&pool.spec).unwrap();
        let allocated: serde_json::Map<String, Value> = usable
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                (
                    ip.to_string(),
                    json!({"pod": format!("storage-{sfx}/minio-{i}"), "podUid": format!("uid-{}-{i}", pool.name_any())}),
                )
            })
            .collect();
        let count = allocated.len() as i64;
        taken += count;
        if pool
            .labels()
            .get("spiderpool.spidernet.io/rack")
            .map(String::as_str)
            == Some("s1")
            && pool.spec.ip_version == Some(4)
        {
            taken_in_s1 += count;
        }
        let status = json!({"status": {"allocatedIPs": Value::Object(allocated).to_string(), "allocatedIPCount": count}});
        pools
            .patch_status(&pool.name_any(), &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }

    let full = wait_for("CapacityLow", READY_TIMEOUT, || async {
        let network = api.get(&name).await?;
        let low = condition(&network, "CapacityLow").is_some_and(|(s, _)| s == "True");
        // Every pool's allocations counted (the pools were filled one by one).
        let counted = app_counts(&network).is_some_and(|c| c.allocated == taken);
        Ok((low && counted).then_some(network))
    })
    .await?;
    let counted = app_counts(&full).unwrap();
    assert_eq!(counted.allocated, taken, "{counted:?}");
    assert_eq!(counted.free, counted.total - taken);
    let rack = full
        .status
        .as_ref()
        .unwrap()
        .capacity
        .as_ref()
        .unwrap()
        .racks
        .iter()
        .find(|r| r.name == "s1")
        .cloned()
        .unwrap();
    assert_eq!(
        rack.ipv4.unwrap().allocated,
        taken_in_s1,
        "the binding's addresses count for its rack"
    );
    let message = full
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "CapacityLow")
        .unwrap()
        .message
        .clone();
    assert!(message.contains("app binding minio IPv4"), "{message}");
    // The controller's own status write does not remove the capacity (separate field managers).
    assert_eq!(ready_reason(&full).as_deref(), Some("Applied"));
    let note = wait_event(&client, &name, "CapacityLow").await?;
    assert!(note.contains("minio"), "{note}");
    // `spiderctl status` shows the same from the live object.
    let (ok, shown) = spiderctl_status(cluster, &name)?;
    assert!(ok, "{shown}");
    let row = |words: &[&str]| {
        shown
            .lines()
            .any(|l| words.iter().all(|w| l.split_whitespace().any(|x| x == *w)))
    };
    assert!(row(&["Ready", "True", "Applied"]), "{shown}");
    assert!(row(&["CapacityLow", "True"]), "{shown}");
    assert!(row(&["app", "minio", "IPv4", "100%"]), "{shown}");
    let (ok, missing) = spiderctl_status(cluster, "no-such-topology")?;
    assert!(!ok && missing.contains("no-such-topology"), "{missing}");

    // Released again: the condition clears.
    let release = json!({"status": {"allocatedIPs": null, "allocatedIPCount": 0}});
    for pool in &minio_pools {
        pools
            .patch_status(&pool.name_any(), &PatchParams::default(), &Patch::Merge(&release))
            .await?;
    }
    wait_for("CapacityLow False", READY_TIMEOUT, || async {
        let network = api.get(&name).await?;
        Ok(condition(&network, "CapacityLow")
            .is_some_and(|(s, _)| s == "False")
            .then_some(()))
    })
    .await?;

    // A refusal is an Event, once.
    let mut spec = serde_json::to_value(&live.spec)?;
    spec["racks"][0]["ranges"][0]["subnet"] = json!("no-such-subnet");
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": spec})),
    )
    .await?;
    wait_reason(&client, &name, "Invalid", READY_TIMEOUT).await?;
    let note = wait_event(&client, &name, "Invalid").await?;
    assert!(note.contains("no-such-subnet"), "{note}");
    api.delete(&name, &DeleteParams::default()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prunes_are_events() -> Result<()> {
    let _turn = SERIAL.lock().await;
    let (_cluster, client) = cluster().await?;
    let _running = start_network(&client);
    let sfx = suffix();
    let mut network = example("dual-stack.yaml")?;
    let live = create_localized(&client, &mut network, &sfx).await?;
    let name = live.name_any();
    wait_reason(&client, &name, "Applied", READY_TIMEOUT).await?;
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    let mut spec = serde_json::to_value(&live.spec)?;
    spec["apps"] = json!([]);
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": spec})),
    )
    .await?;
    wait_reason(&client, &name, "Applied", READY_TIMEOUT).await?;
    let note = wait_event(&client, &name, "Pruned").await?;
    assert!(note.contains("SpiderIPPool"), "{note}");
    api.delete(&name, &DeleteParams::default()).await?;
    Ok(())
}
