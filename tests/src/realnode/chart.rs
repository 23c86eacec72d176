//! Installing Spiderpool on a real-node cluster the way a user does: the project's own images
//! (`tests/tools/build-images.sh`, cached by input hash) imported into every node's containerd, then
//! `helm install` of `charts/spiderpool` with [`VALUES`]. The chart's DaemonSet copies our CNI
//! plugins into each node's `/opt/cni/bin`, its agents and operator run as pods started by the real
//! kubelets, and its post-install Job creates the `default` SpiderCoordinator.
//!
//! [`install`] waits until all of that is true; [`uninstall`] runs `helm uninstall` and checks that
//! nothing of the release is left and nothing of ours waits on a finalizer.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt as _};
use spiderpool_schema::SpiderCoordinator;

use super::{ImageArchive, RealCluster, blocking};
use crate::{chart, images, tools, wait_for};

/// The release's name and namespace, as upstream's install documentation has them.
pub const RELEASE: &str = "spiderpool";
/// See [`RELEASE`].
pub const NAMESPACE: &str = "kube-system";

/// Values a user of this cluster passes: IPv4 only (the underlay has no IPv6), no Multus install
/// (the chart's Multus image cannot be had here; the Multus nodes run the stand-in), and the cluster
/// network's SpiderMultusConfig named as upstream's docs have users name it (`podnet`, the Multus
/// nodes' pod network). Everything else is the chart's default: the images at the chart's own
/// references (imported, `IfNotPresent`), the default socket path, `coordinator.podCIDRType: auto`.
///
/// Left empty, spiderpool-init would wrap the first CNI file of whichever node its Job lands on (on an
/// underlay node, the macvlan chain). A run of this tier found that it then made a `cniType: macvlan`
/// SpiderMultusConfig without `spec.macvlan`, which the webhook refused; it now makes a `custom` one
/// with the file's content, as upstream (unit-tested in `operator/src/init.rs`), but no real-node
/// run with the name left empty has been made since.
pub const VALUES: &str = "\
ipam:
  enableIPv6: false
multus:
  multusCNI:
    install: false
    defaultCniCRName: podnet
";

/// The plugins the agent's init container must have put into every node's `/opt/cni/bin`.
pub const PLUGINS: &[&str] = &["spiderpool", "coordinator", "ifacer"];

/// How long each step of [`install`] took.
#[derive(Debug, Clone, Default)]
pub struct InstallTimes {
    /// `build-images` (a cache hit when the image inputs did not change) and the copy of the archives.
    pub images: Duration,
    /// `ctr images import` of both images on every node.
    pub import: Duration,
    /// `helm install --wait` (the CRDs, every object, the DaemonSet and Deployment ready, the
    /// post-install Job done).
    pub helm_install: Duration,
    /// From the end of `helm install` until the plugins are on every node and the default
    /// SpiderCoordinator is Synced.
    pub settle: Duration,
}

/// The installed release.
#[derive(Debug)]
pub struct Installed {
    pub release: chart::Release,
    pub times: InstallTimes,
}

/// Imports the images into every node, `helm install`s the chart with [`VALUES`] and waits until the
/// plugins are on every node and the `default` SpiderCoordinator is Synced.
pub async fn install(cluster: &RealCluster) -> Result<Installed> {
    let mut times = InstallTimes::default();
    let t0 = Instant::now();
    let dir = cluster.dir().join("spiderpool-images");
    let built = blocking(|| images::build(tools::repo_root(), &dir))
        .context("building the project's images (tests/tools/build-images.sh)")?;
    times.images = t0.elapsed();

    let t1 = Instant::now();
    for image in &built {
        cluster.import_image(&ImageArchive {
            reference: image.reference.clone(),
            archive: dir.join(&image.archive),
        })?;
    }
    times.import = t1.elapsed();

    let t2 = Instant::now();
    let release = chart::Release::new(cluster.control_plane().kubeconfig_path(), RELEASE, NAMESPACE);
    let client = cluster.client()?;
    if let Err(err) = release.install(VALUES, &[]).await {
        return Err(err.context(release_state(&client).await));
    }
    times.helm_install = t2.elapsed();

    let t3 = Instant::now();
    wait_for(
        "our CNI plugins in every node's /opt/cni/bin",
        Duration::from_secs(60),
        || async { Ok(missing_plugins(cluster).is_empty().then_some(())) },
    )
    .await
    .with_context(|| format!("missing: {:?}", missing_plugins(cluster)))?;
    wait_coordinator_synced(&client, Duration::from_secs(60)).await?;
    times.settle = t3.elapsed();
    tracing::info!(?times, "the chart is installed");
    Ok(Installed { release, times })
}

/// `node:plugin` for every plugin of [`PLUGINS`] not (yet) an executable in a node's `/opt/cni/bin`.
pub fn missing_plugins(cluster: &RealCluster) -> Vec<String> {
    let mut missing = Vec::new();
    for node in cluster.nodes() {
        for plugin in PLUGINS {
            let path = node.path(Path::new("/opt/cni/bin").join(plugin));
            if !tools::is_executable(&path) {
                missing.push(format!("{}:{plugin}", node.name()));
            }
        }
    }
    missing
}

/// Waits until the `default` SpiderCoordinator's phase is Synced; returns it.
pub async fn wait_coordinator_synced(client: &Client, timeout: Duration) -> Result<SpiderCoordinator> {
    let api: Api<SpiderCoordinator> = Api::all(client.clone());
    let result = wait_for("the default SpiderCoordinator Synced", timeout, || async {
        let coordinator = api.get_opt("default").await?;
        Ok(coordinator.filter(|c| c.status.as_ref().is_some_and(|s| s.phase == "Synced")))
    })
    .await;
    match result {
        Ok(coordinator) => Ok(coordinator),
        Err(err) => {
            let now = api.get_opt("default").await.ok().flatten();
            Err(err.context(format!(
                "the default SpiderCoordinator is {:?}",
                now.and_then(|c| c.status)
            )))
        }
    }
}

/// The release's workloads and pods, for a failure message.
pub async fn release_state(client: &Client) -> String {
    let mut out = String::new();
    if let Ok(list) = Api::<DaemonSet>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default())
        .await
    {
        for ds in list.items {
            out.push_str(&format!("DaemonSet {}: {:?}\n", ds.name_any(), ds.status));
        }
    }
    if let Ok(list) = Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default())
        .await
    {
        for deployment in list.items {
            out.push_str(&format!(
                "Deployment {}: {:?}\n",
                deployment.name_any(),
                deployment.status.and_then(|s| s.conditions)
            ));
        }
    }
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    if let Ok(list) = pods.list(&ListParams::default()).await {
        for pod in list.items {
            let name = pod.name_any();
            out.push_str(&format!("--- pod {name}\n"));
            out.push_str(&super::workload::describe(&pods, &name).await);
            let containers = pod.spec.map(|s| s.containers).unwrap_or_default();
            for container in containers {
                let params = kube::api::LogParams {
                    container: Some(container.name.clone()),
                    tail_lines: Some(20),
                    ..kube::api::LogParams::default()
                };
                match pods.logs(&name, &params).await {
                    Ok(log) => out.push_str(&format!("log of {}:\n{log}\n", container.name)),
                    Err(err) => out.push_str(&format!("no log of {}: {err}\n", container.name)),
                }
            }
        }
    }
    out
}

/// `helm uninstall --wait`, then checks what must be gone is gone: every pod of the release, the
/// webhook configurations, and no object of our kinds (nor a pod or Job) left terminating on a
/// finalizer. No cleanup script runs.
pub async fn uninstall(client: &Client, release: &chart::Release) -> Result<()> {
    release.uninstall().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    wait_for(
        "every pod of the release gone",
        Duration::from_secs(120),
        || async {
            let left = pods.list(&ListParams::default().labels(&selector)).await?.items;
            Ok(left.is_empty().then_some(()))
        },
    )
    .await?;
    let validating: Api<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration> =
        Api::all(client.clone());
    let mutating: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    let ours = |name: &str| name.starts_with("spiderpool");
    let left: Vec<String> = validating
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|w| w.name_any())
        .chain(
            mutating
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .map(|w| w.name_any()),
        )
        .filter(|n| ours(n))
        .collect();
    ensure!(
        left.is_empty(),
        "webhook configurations outlived the release: {left:?}"
    );
    // The garbage collector deletes what the release's objects owned; give it a moment, then
    // nothing may wait on a finalizer.
    let stuck = wait_for("nothing terminating", Duration::from_secs(30), || async {
        let stuck = chart::terminating_objects(client).await?;
        Ok(stuck.is_empty().then_some(()))
    })
    .await;
    if stuck.is_err() {
        let left = chart::terminating_objects(client).await?;
        anyhow::bail!("objects left terminating after helm uninstall: {left:?}");
    }
    Ok(())
}
