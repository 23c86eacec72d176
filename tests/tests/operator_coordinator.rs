//! The SpiderCoordinator status controller against a real API server: with no kubeadm-config the
//! `default` coordinator is NotReady and says why; creating `kube-system/kubeadm-config` makes it Synced
//! with the pod CIDR from it and the service CIDR from the API server's ServiceCIDR object; the status
//! is not rewritten while nothing changes; other podCIDRTypes follow; a deleted coordinator of any name
//! loses the finalizer the webhook gives it.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use spiderpool_operator::controller::coordinator::{self, CoordinatorConfig, FIELD_MANAGER};
use spiderpool_schema::{SpiderCoordinator, SpiderCoordinatorStatus};
use spiderpool_tests::cluster::SERVICE_CIDR;
use spiderpool_tests::{ClusterOptions, TestCluster, init_tracing};

/// Waits until the `default` coordinator's status satisfies `done`; fails with the last status seen.
async fn wait_for_status(
    api: &Api<SpiderCoordinator>,
    what: &str,
    done: impl Fn(&SpiderCoordinatorStatus) -> bool,
) -> Result<SpiderCoordinator> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let current = api.get("default").await?;
        if current.status.as_ref().is_some_and(&done) {
            return Ok(current);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}; status is {:?}", current.status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn set_pod_cidr_type(api: &Api<SpiderCoordinator>, value: &str) -> Result<()> {
    api.patch(
        "default",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"podCIDRType": value}})),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_status_follows_the_cluster() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(ClusterOptions {
        install_nad_crd: false,
        ..ClusterOptions::apiserver_only()
    })
    .await?;
    let client = cluster.client()?;
    let mut yaml = String::new();
    for (_, file) in spiderpool_schema::crd_files()? {
        yaml.push_str("---\n");
        yaml.push_str(&file);
    }
    spiderpool_tests::cluster::install_crd_yaml(&client, &yaml).await?;

    let api: Api<SpiderCoordinator> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderCoordinator",
            "metadata": {"name": "default"}, "spec": {"podCIDRType": "cluster"},
        }))?,
    )
    .await?;

    let cni_dir = tempfile::tempdir()?;
    let config = CoordinatorConfig {
        resync: Duration::from_millis(500),
        retry_delay: Duration::from_millis(500),
        cni_config_dir: cni_dir.path().to_path_buf(),
        ..CoordinatorConfig::default()
    };
    let controller = tokio::spawn(coordinator::run(client.clone(), config));
    let outcome = exercise(&client, &api).await;
    controller.abort();
    outcome
}

async fn exercise(client: &Client, api: &Api<SpiderCoordinator>) -> Result<()> {
    // Nothing tells the pod CIDR: NotReady, and the reason says where it looked.
    let not_ready = wait_for_status(api, "NotReady", |s| s.phase == "NotReady").await?;
    let reason = not_ready.status.unwrap().reason.unwrap_or_default();
    ensure!(
        reason.contains("kubeadm-config") && reason.contains("kube-controller-manager"),
        "reason: {reason}"
    );

    // kubeadm's ClusterConfiguration appears: Synced with its pod CIDR; the service CIDR comes from the
    // API server's own ServiceCIDR object (which wins over kubeadm's serviceSubnet).
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
                "data": {"ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nnetworking:\n  dnsDomain: cluster.local\n  podSubnet: 10.244.0.0/16,fd00:10:244::/56\n  serviceSubnet: 10.111.0.0/16\n"},
            }))?,
        )
        .await?;
    let synced = wait_for_status(api, "Synced", |s| s.phase == "Synced").await?;
    let status = synced.status.clone().unwrap();
    ensure!(status.reason.is_none(), "{status:?}");
    ensure!(
        status.overlay_pod_cidr == Some(vec!["10.244.0.0/16".into(), "fd00:10:244::/56".into()]),
        "{status:?}"
    );
    ensure!(
        status.service_cidr == Some(vec![SERVICE_CIDR.to_string()]),
        "service CIDR should come from the ServiceCIDR object ({SERVICE_CIDR}): {status:?}"
    );
    let managers: Vec<(String, Option<String>)> = synced
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| (m.manager.clone().unwrap_or_default(), m.subresource.clone()))
        .collect();
    ensure!(
        managers.contains(&(FIELD_MANAGER.to_string(), Some("status".to_string()))),
        "status not owned by {FIELD_MANAGER}: {managers:?}"
    );

    // Several resyncs later nothing was rewritten.
    let version = synced.metadata.resource_version.clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = api.get("default").await?;
    ensure!(
        later.metadata.resource_version == version,
        "the status was rewritten without a change: {:?} -> {:?}",
        version,
        later.metadata.resource_version
    );

    // podCIDRType none: no overlay CIDRs, still Synced.
    set_pod_cidr_type(api, "none").await?;
    wait_for_status(api, "Synced without pod CIDRs", |s| {
        s.phase == "Synced" && s.overlay_pod_cidr.as_ref().is_some_and(Vec::is_empty)
    })
    .await?;

    // calico without Calico's API: NotReady, saying so, and the CIDRs are gone.
    set_pod_cidr_type(api, "calico").await?;
    let calico = wait_for_status(api, "NotReady for calico", |s| s.phase == "NotReady").await?;
    let status = calico.status.unwrap();
    ensure!(
        status
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("crd.projectcalico.org")),
        "{status:?}"
    );
    ensure!(
        status.overlay_pod_cidr.is_none() && status.service_cidr.is_none(),
        "{status:?}"
    );

    // Upstream's finalizer (our webhook adds it) goes when a SpiderCoordinator of any name is deleted.
    for name in ["default", "other"] {
        api.patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(json!({
                "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderCoordinator",
                "metadata": {"name": name, "finalizers": [spiderpool_schema::FINALIZER]},
                "spec": {"podCIDRType": "none"},
            })),
        )
        .await?;
        api.delete(name, &Default::default()).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while api.get_opt(name).await?.is_some() {
            ensure!(
                Instant::now() < deadline,
                "SpiderCoordinator {name} was never released"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}
