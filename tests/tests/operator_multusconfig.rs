//! The SpiderMultusConfig controller against a real API server (and kube-controller-manager for
//! garbage collection), run in-process: a NAD for every cniType, rendered exactly as
//! `nad::render_nad` renders the live SMC, kept in step with the SMC, hand edits reverted, deleted
//! with the SMC, render errors reported as Events, and a restart writes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod operator_support;

use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use operator_support::*;
use serde_json::json;
use spiderpool_operator::controller::multusconfig::CONTROLLER;
use spiderpool_operator::nad::render_nad;
use spiderpool_schema::{NetworkAttachmentDefinition, SpiderMultusConfig};

const TIMEOUT: Duration = Duration::from_secs(60);

/// One SMC of each cniType (what upstream's docs and our renderer tests use).
fn smcs() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (
            "macvlan",
            json!({"cniType": "macvlan", "macvlan": {"master": ["ens192"], "vlanID": 10}}),
        ),
        (
            "ipvlan",
            json!({"cniType": "ipvlan", "ipvlan": {"master": ["eth1", "eth2"], "bond": {"name": "bond0", "mode": 1}}}),
        ),
        (
            "vlan",
            json!({"cniType": "vlan", "vlan": {"master": ["eth1"], "vlanID": 7}}),
        ),
        (
            "sriov",
            json!({"cniType": "sriov", "sriov": {"resourceName": "spidernet.io/mellanox", "vlanID": 100, "rdmaIsolation": true, "mtu": 8000}}),
        ),
        (
            "ovs",
            json!({"cniType": "ovs", "ovs": {"bridge": "br1", "vlan": 5, "deviceID": "0000:00:01.0"}}),
        ),
        (
            "ib-sriov",
            json!({"cniType": "ib-sriov", "ibsriov": {"resourceName": "r", "pkey": "0x1"}}),
        ),
        ("ipoib", json!({"cniType": "ipoib", "ipoib": {"master": "ib0"}})),
        (
            "custom",
            json!({"cniType": "custom", "customCNI": "{\"cniVersion\":\"0.3.1\",\"name\":\"c\",\"type\":\"bridge\"}"}),
        ),
    ]
}

fn smc(name: &str, namespace: &str, spec: serde_json::Value) -> Result<SpiderMultusConfig> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderMultusConfig",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))?)
}

/// Waits until the NAD `name` holds exactly what `render_nad` makes of the live SMC `smc_name`.
async fn wait_rendered(
    client: &Client,
    ns: &str,
    smc_name: &str,
    nad_name: &str,
) -> Result<NetworkAttachmentDefinition> {
    let smcs: Api<SpiderMultusConfig> = Api::namespaced(client.clone(), ns);
    let nads: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("NAD {ns}/{nad_name} rendered from SMC {smc_name}"),
        TIMEOUT,
        || {
            let (smcs, nads) = (smcs.clone(), nads.clone());
            async move {
                let live_smc = smcs.get(smc_name).await?;
                let want = render_nad(&live_smc)?;
                let Some(nad) = nads.get_opt(nad_name).await? else {
                    anyhow::bail!("no NAD yet");
                };
                if nad.spec.config != want.spec.config {
                    anyhow::bail!("config {} != {}", nad.spec.config, want.spec.config);
                }
                let owner = nad
                    .owner_references()
                    .iter()
                    .find(|o| o.controller == Some(true))
                    .context("no controller reference")?;
                anyhow::ensure!(
                    owner.uid == live_smc.uid().unwrap_or_default(),
                    "owned by {owner:?}"
                );
                Ok(Some(nad))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cni_type_gets_its_nad_kept_in_step_and_collected_with_the_smc() -> Result<()> {
    let _turn = SERIAL.lock().await;
    let (cluster, client) = cluster().await?;
    let running = start_multusconfig(&client);
    let ns = cluster.namespace("smc").await?;
    let smc_api: Api<SpiderMultusConfig> = Api::namespaced(client.clone(), ns.name());
    let nad_api: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), ns.name());

    for (cni_type, spec) in smcs() {
        let name = format!("net-{cni_type}");
        smc_api
            .create(&PostParams::default(), &smc(&name, ns.name(), spec)?)
            .await
            .with_context(|| format!("creating the {cni_type} SMC"))?;
    }
    for (cni_type, _) in smcs() {
        let name = format!("net-{cni_type}");
        let nad = wait_rendered(&client, ns.name(), &name, &name)
            .await
            .with_context(|| cni_type.to_string())?;
        if cni_type == "sriov" {
            assert_eq!(
                nad.annotations()
                    .get("k8s.v1.cni.cncf.io/resourceName")
                    .map(String::as_str),
                Some("spidernet.io/mellanox")
            );
        }
    }

    // The NAD follows the SMC.
    let patch = json!({"spec": {"macvlan": {"master": ["ens224"]}}});
    smc_api
        .patch("net-macvlan", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let nad = wait_rendered(&client, ns.name(), "net-macvlan", "net-macvlan").await?;
    assert!(nad.spec.config.contains("ens224.10"), "{}", nad.spec.config);

    // A hand edit of the NAD is reverted.
    let vandalism = json!({"spec": {"config": "{\"cniVersion\":\"0.3.1\",\"type\":\"bridge\"}"}});
    nad_api
        .patch("net-vlan", &PatchParams::default(), &Patch::Merge(&vandalism))
        .await?;
    wait_rendered(&client, ns.name(), "net-vlan", "net-vlan").await?;

    // The cr-name annotation names the NAD; the NAD of the old name goes.
    let rename = json!({"metadata": {"annotations": {"multus.spidernet.io/cr-name": "renamed-ipoib"}}});
    smc_api
        .patch("net-ipoib", &PatchParams::default(), &Patch::Merge(&rename))
        .await?;
    wait_rendered(&client, ns.name(), "net-ipoib", "renamed-ipoib").await?;
    wait_for("the NAD of the old name to go", TIMEOUT, || async {
        Ok(nad_api.get_opt("net-ipoib").await?.is_none().then_some(()))
    })
    .await?;

    // Nothing to do: a restarted controller writes nothing.
    settle(&running.metrics, CONTROLLER, Duration::from_secs(2)).await;
    drop(running);
    let fresh = start_multusconfig(&client);
    wait_for(
        "the restarted controller to reconcile every SMC",
        TIMEOUT,
        || async { Ok((fresh.metrics.reconciles(CONTROLLER) >= smcs().len() as u64).then_some(())) },
    )
    .await?;
    let writes = settle(&fresh.metrics, CONTROLLER, Duration::from_secs(2)).await;
    assert_eq!(writes, 0, "a restarted controller wrote {writes} times");

    // The NAD goes with its SMC (kube-controller-manager's garbage collector).
    smc_api.delete("net-ovs", &DeleteParams::default()).await?;
    wait_for(
        "the NAD of a deleted SMC to be collected",
        Duration::from_secs(90),
        || async { Ok(nad_api.get_opt("net-ovs").await?.is_none().then_some(())) },
    )
    .await?;
    fresh.check_alive()?;
    ns.delete_and_wait(Duration::from_secs(60)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nad_of_another_owner_is_not_taken_over_and_render_errors_become_events() -> Result<()> {
    let _turn = SERIAL.lock().await;
    let (cluster, client) = cluster().await?;
    let _running = start_multusconfig(&client);
    let ns = cluster.namespace("smc-err").await?;
    let smc_api: Api<SpiderMultusConfig> = Api::namespaced(client.clone(), ns.name());
    let nad_api: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), ns.name());

    // A chained plugin that is not JSON cannot be rendered.
    let broken =
        json!({"cniType": "macvlan", "macvlan": {"master": ["eth0"]}, "chainCNIJsonData": ["not json"]});
    smc_api
        .create(&PostParams::default(), &smc("broken", ns.name(), broken)?)
        .await?;
    let events: Api<Event> = Api::namespaced(client.clone(), ns.name());
    let event = wait_for("a RenderFailed event", TIMEOUT, || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("RenderFailed")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken")
        }))
    })
    .await?;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(
        event
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("chainCNIJsonData[0]"),
        "{:?}",
        event.note
    );
    assert!(nad_api.get_opt("broken").await?.is_none());

    // A NAD controlled by another SMC keeps its content.
    let first = smc_api
        .create(
            &PostParams::default(),
            &smc(
                "first",
                ns.name(),
                json!({"cniType": "macvlan", "macvlan": {"master": ["eth1"]}}),
            )?,
        )
        .await?;
    wait_rendered(&client, ns.name(), "first", "first").await?;
    let mut second = smc(
        "second",
        ns.name(),
        json!({"cniType": "macvlan", "macvlan": {"master": ["eth9"]}}),
    )?;
    second
        .metadata
        .annotations
        .get_or_insert_default()
        .insert("multus.spidernet.io/cr-name".into(), "first".into());
    smc_api.create(&PostParams::default(), &second).await?;
    wait_for("a NameConflict event", TIMEOUT, || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("NameConflict")))
    })
    .await?;
    let nad = nad_api.get("first").await?;
    assert!(nad.spec.config.contains("eth1"), "{}", nad.spec.config);
    assert_eq!(nad.owner_references()[0].uid, first.uid().unwrap());
    ns.delete_and_wait(Duration::from_secs(60)).await?;
    Ok(())
}
