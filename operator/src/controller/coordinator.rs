//! The SpiderCoordinator status controller (upstream's coordinator informer, section 2.6 of the
//! reference): for the one SpiderCoordinator named `default` it discovers the cluster's pod CIDRs (per
//! `spec.podCIDRType`) and service CIDRs and writes `status` — `Synced` with `overlayPodCIDR` and
//! `serviceCIDR`, or `NotReady` with a `reason` saying what is missing. The node daemon hands the
//! coordinator plugin its configuration only while the phase is `Synced`.
//!
//! Sources, in order of preference:
//! - service CIDRs: `networking.k8s.io/v1` ServiceCIDR objects (Kubernetes >= 1.33 serves them GA), else
//!   `serviceSubnet` of the `kube-system/kubeadm-config` ClusterConfiguration, else the
//!   `--service-cluster-ip-range` flag of the kube-controller-manager pod;
//! - pod CIDRs: `cluster` -> kubeadm `podSubnet`, else kube-controller-manager `--cluster-cidr`;
//!   `calico` -> enabled, not terminating Calico IPPools (`crd.projectcalico.org/v1`) oldest first;
//!   `cilium` -> `kube-system/cilium-config` (`cluster-pool` modes: `cluster-pool-ipv4/6-cidr`;
//!   `multi-pool`: the CiliumPodIPPools; `kubernetes`: the cluster's); `none` -> none; `auto` -> chosen
//!   by the name of the first CNI configuration file on this host (calico, cilium, else none).
//!
//! [`compute_status`] is pure; [`discover`] reads the cluster; [`run`] is the controller. Status is
//! written with server-side apply (field manager [`FIELD_MANAGER`]) and only when it changes. A deleted
//! SpiderCoordinator (any name) loses the finalizer the webhook gave it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;
use serde_json::json;
use spiderpool_ipmath as ipmath;
use spiderpool_schema::coordinator::{
    CoordinatorSpec, DEFAULT_COORDINATOR_NAME, PHASE_NOT_READY, PHASE_SYNCED,
};
use spiderpool_schema::{SpiderCoordinator, SpiderCoordinatorStatus};

/// Field manager of the status this controller writes.
pub const FIELD_MANAGER: &str = "spiderpool-operator/coordinator";

/// Namespace of the cluster's own configuration (kubeadm-config, cilium-config, control-plane pods).
const KUBE_SYSTEM: &str = "kube-system";
const KUBEADM_CONFIG: &str = "kubeadm-config";
const KUBEADM_KEY: &str = "ClusterConfiguration";
const CONTROLLER_MANAGER_LABEL: &str = "component=kube-controller-manager";

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The status is recomputed this often even without a watched change (upstream: 60 s); sources
    /// that are not watched (Calico and Cilium pools, the CNI directory) are picked up this way.
    pub resync: Duration,
    /// Delay before retrying after an error reading the cluster.
    pub retry_delay: Duration,
    /// Where `podCIDRType: auto` looks for the first CNI configuration (upstream's
    /// `SPIDERPOOL_CNI_CONFIG_DIR`, `/etc/cni/net.d`; the operator runs with host networking and the
    /// directory mounted).
    pub cni_config_dir: PathBuf,
    /// Name of Cilium's ConfigMap in kube-system (upstream's `SPIDERPOOL_CILIUM_CONFIGMAP_NAMESPACE_NAME`).
    pub cilium_config_map: String,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            resync: Duration::from_secs(60),
            retry_delay: Duration::from_secs(5),
            cni_config_dir: PathBuf::from("/etc/cni/net.d"),
            cilium_config_map: "cilium-config".to_string(),
        }
    }
}

/// A Calico IPPool, as far as the coordinator cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalicoPool {
    /// `spec.cidr`.
    pub cidr: String,
    /// `spec.disabled`.
    pub disabled: bool,
    /// Whether it is being deleted.
    pub terminating: bool,
    /// Creation time, for upstream's oldest-first order.
    pub created: Option<Time>,
}

/// Everything discovery read from the cluster (and the host). `None` means "not there" (or, for the
/// optional APIs, "not served").
#[derive(Debug, Clone, Default)]
pub struct Discovered {
    /// `data.ClusterConfiguration` of `kube-system/kubeadm-config`.
    pub kubeadm_cluster_configuration: Option<String>,
    /// Command and arguments of the first kube-controller-manager pod's first container.
    pub controller_manager_args: Option<Vec<String>>,
    /// `spec.cidrs` of the ServiceCIDR objects that are not being deleted, oldest first.
    pub service_cidrs: Vec<String>,
    /// Calico IPPools; `None` when Calico's API is not served.
    pub calico_pools: Option<Vec<CalicoPool>>,
    /// Data of Cilium's ConfigMap; `None` when it does not exist.
    pub cilium_config: Option<BTreeMap<String, String>>,
    /// CIDRs of the CiliumPodIPPools (`multi-pool` mode); `None` when not served.
    pub cilium_pod_ip_pools: Option<Vec<String>>,
    /// `name` of the first CNI configuration file on this host; `None` when there is none.
    pub first_cni_network: Option<String>,
}

#[derive(Deserialize, Default)]
struct ClusterConfiguration {
    #[serde(default)]
    networking: Networking,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Networking {
    pod_subnet: Option<String>,
    service_subnet: Option<String>,
}

/// `a,b` (kubeadm's and the flags' dual-stack form) or `a b` (Cilium's) into checked CIDRs.
fn cidr_list(text: &str, source: &str) -> Result<Vec<String>, String> {
    text.split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match ipmath::parse_cidr(s) {
            Ok(net) => Ok(net.trunc().to_string()),
            Err(e) => Err(format!("{source}: `{s}` is not a CIDR ({e})")),
        })
        .collect()
}

/// The value of `--flag=value` or `--flag value` in a command line.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if let Some(value) = arg.strip_prefix(flag) {
            if let Some(value) = value.strip_prefix('=') {
                return Some(value);
            }
            if value.is_empty() {
                return iter.next().map(String::as_str);
            }
        }
    }
    None
}

/// The cluster's pod and service CIDRs as kubeadm or kube-controller-manager state them.
#[derive(Debug, Default)]
struct ClusterNetworking {
    pod: Option<Result<Vec<String>, String>>,
    service: Option<Result<Vec<String>, String>>,
}

fn cluster_networking(found: &Discovered) -> ClusterNetworking {
    let mut out = ClusterNetworking::default();
    if let Some(text) = &found.kubeadm_cluster_configuration {
        match serde_saphyr::from_str::<ClusterConfiguration>(text) {
            Ok(config) => {
                let source = format!("{KUBE_SYSTEM}/{KUBEADM_CONFIG} networking.podSubnet");
                out.pod = config.networking.pod_subnet.map(|s| cidr_list(&s, &source));
                let source = format!("{KUBE_SYSTEM}/{KUBEADM_CONFIG} networking.serviceSubnet");
                out.service = config.networking.service_subnet.map(|s| cidr_list(&s, &source));
            }
            Err(e) => {
                let reason = format!("{KUBE_SYSTEM}/{KUBEADM_CONFIG}: {KUBEADM_KEY} is not valid YAML ({e})");
                out.pod = Some(Err(reason.clone()));
                out.service = Some(Err(reason));
            }
        }
    }
    if let Some(args) = &found.controller_manager_args {
        if out.pod.is_none() {
            out.pod = flag_value(args, "--cluster-cidr")
                .map(|v| cidr_list(v, "kube-controller-manager --cluster-cidr"));
        }
        if out.service.is_none() {
            out.service = flag_value(args, "--service-cluster-ip-range")
                .map(|v| cidr_list(v, "kube-controller-manager --service-cluster-ip-range"));
        }
    }
    out
}

/// Upstream's `auto`: the first CNI configuration's network name says which overlay runs.
pub fn pod_cidr_type_for_cni(network_name: &str) -> &'static str {
    match network_name {
        "calico" | "k8s-pod-network" => "calico",
        "cilium" | "generic-veth" => "cilium",
        _ => "none",
    }
}

fn not_ready(reason: impl Into<String>) -> SpiderCoordinatorStatus {
    SpiderCoordinatorStatus {
        phase: PHASE_NOT_READY.to_string(),
        reason: Some(reason.into()),
        overlay_pod_cidr: None,
        service_cidr: None,
    }
}

/// The status for `spec` given what was discovered.
pub fn compute_status(spec: &CoordinatorSpec, found: &Discovered) -> SpiderCoordinatorStatus {
    let cluster = cluster_networking(found);
    let service = if !found.service_cidrs.is_empty() {
        Ok(found.service_cidrs.clone())
    } else {
        match cluster.service {
            Some(result) => result,
            None => Err(format!(
                "cannot find the service CIDR: no ServiceCIDR objects, no {KUBE_SYSTEM}/{KUBEADM_CONFIG} ConfigMap with networking.serviceSubnet and no kube-controller-manager pod with --service-cluster-ip-range"
            )),
        }
    };
    let pod = pod_cidrs(spec, found, cluster.pod);
    match (pod, service) {
        (Err(reason), _) | (_, Err(reason)) => not_ready(reason),
        (Ok(pod), Ok(service)) => SpiderCoordinatorStatus {
            phase: PHASE_SYNCED.to_string(),
            reason: None,
            overlay_pod_cidr: Some(pod),
            service_cidr: Some(service),
        },
    }
}

fn pod_cidrs(
    spec: &CoordinatorSpec,
    found: &Discovered,
    cluster_pod: Option<Result<Vec<String>, String>>,
) -> Result<Vec<String>, String> {
    let cluster_pod = |why: &str| {
        cluster_pod.clone().unwrap_or_else(|| {
            Err(format!(
                "{why}: no {KUBE_SYSTEM}/{KUBEADM_CONFIG} ConfigMap with networking.podSubnet and no kube-controller-manager pod with --cluster-cidr"
            ))
        })
    };
    let declared = spec.pod_cidr_type.as_deref().unwrap_or("auto");
    let effective = if declared == "auto" {
        match &found.first_cni_network {
            Some(name) => pod_cidr_type_for_cni(name),
            None => {
                return Err(
                    "podCIDRType auto: no CNI configuration on this node yet, so the overlay cannot be told"
                        .into(),
                );
            }
        }
    } else {
        declared
    };
    match effective {
        "none" => Ok(Vec::new()),
        "cluster" => cluster_pod("podCIDRType cluster"),
        "calico" => {
            let Some(pools) = &found.calico_pools else {
                return Err(
                    "podCIDRType calico: Calico IPPools (crd.projectcalico.org/v1) are not served".into(),
                );
            };
            let mut usable: Vec<&CalicoPool> =
                pools.iter().filter(|p| !p.disabled && !p.terminating).collect();
            usable.sort_by(|a, b| a.created.cmp(&b.created));
            if usable.is_empty() {
                return Err("podCIDRType calico: no enabled Calico IPPool".into());
            }
            usable
                .into_iter()
                .map(|p| cidr_list(&p.cidr, "Calico IPPool spec.cidr"))
                .collect::<Result<Vec<_>, _>>()
                .map(|lists| lists.concat())
        }
        "cilium" => {
            let Some(config) = &found.cilium_config else {
                return Err("podCIDRType cilium: Cilium's ConfigMap in kube-system does not exist".into());
            };
            // Cilium's default IPAM mode is cluster-pool.
            match config.get("ipam").map_or("cluster-pool", String::as_str) {
                "cluster-pool" | "cluster-pool-v2beta" => {
                    let mut cidrs = Vec::new();
                    for key in ["cluster-pool-ipv4-cidr", "cluster-pool-ipv6-cidr"] {
                        if let Some(value) = config.get(key) {
                            cidrs.extend(cidr_list(value, &format!("cilium-config {key}"))?);
                        }
                    }
                    if cidrs.is_empty() {
                        return Err("podCIDRType cilium: cilium-config has no cluster-pool-ipv4-cidr or cluster-pool-ipv6-cidr".into());
                    }
                    Ok(cidrs)
                }
                "multi-pool" => match &found.cilium_pod_ip_pools {
                    Some(cidrs) if !cidrs.is_empty() => Ok(cidrs.clone()),
                    _ => Err("podCIDRType cilium: ipam multi-pool but no CiliumPodIPPool CIDRs".into()),
                },
                "kubernetes" => cluster_pod("podCIDRType cilium with ipam kubernetes"),
                other => Err(format!(
                    "podCIDRType cilium: Cilium IPAM mode `{other}` is not supported; set podCIDRType to none and list the pod CIDRs in hijackCIDR"
                )),
            }
        }
        other => Err(format!("podCIDRType `{other}` is not supported")),
    }
}

/// Why a reconcile failed (retried after [`CoordinatorConfig::retry_delay`]).
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// Reading the cluster or writing the status failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
}

fn kube_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> CoordinatorError {
    let what = what.into();
    move |source| CoordinatorError::Kube {
        what,
        source: Box::new(source),
    }
}

/// Treats "this API is not served" (404) as absent.
fn served<T>(result: Result<T, kube::Error>) -> Result<Option<T>, kube::Error> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

async fn list_dynamic(
    client: &Client,
    group: &str,
    version: &str,
    kind: &str,
) -> Result<Option<Vec<DynamicObject>>, kube::Error> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    served(api.list(&ListParams::default()).await).map(|list| list.map(|l| l.items))
}

/// The name of the first CNI configuration in `dir` (by file name, as the runtime picks it).
async fn first_cni_network(dir: &std::path::Path) -> Option<String> {
    let mut entries = tokio::fs::read_dir(dir).await.ok()?;
    let mut files = Vec::new();
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("conf" | "conflist" | "json")
        ) {
            files.push(path);
        }
    }
    files.sort();
    let text = tokio::fs::read_to_string(files.first()?).await.ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value.get("name")?.as_str().map(str::to_string)
}

/// Reads what [`compute_status`] needs for `spec` (only the sources its `podCIDRType` uses, plus the
/// service CIDR sources).
pub async fn discover(
    client: &Client,
    config: &CoordinatorConfig,
    spec: &CoordinatorSpec,
) -> Result<Discovered, CoordinatorError> {
    let mut found = Discovered::default();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), KUBE_SYSTEM);
    found.kubeadm_cluster_configuration = config_maps
        .get_opt(KUBEADM_CONFIG)
        .await
        .map_err(kube_error("reading kube-system/kubeadm-config"))?
        .and_then(|cm| cm.data?.get(KUBEADM_KEY).cloned());
    let pods: Api<Pod> = Api::namespaced(client.clone(), KUBE_SYSTEM);
    found.controller_manager_args = pods
        .list(&ListParams::default().labels(CONTROLLER_MANAGER_LABEL))
        .await
        .map_err(kube_error("listing kube-controller-manager pods"))?
        .items
        .into_iter()
        .find_map(|pod| {
            let container = pod.spec?.containers.into_iter().next()?;
            let mut args = container.command.unwrap_or_default();
            args.extend(container.args.unwrap_or_default());
            Some(args)
        });
    let service_cidrs: Api<ServiceCIDR> = Api::all(client.clone());
    if let Some(list) = served(service_cidrs.list(&ListParams::default()).await)
        .map_err(kube_error("listing ServiceCIDRs"))?
    {
        let mut items: Vec<ServiceCIDR> = list
            .items
            .into_iter()
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .collect();
        items.sort_by(|a, b| a.metadata.creation_timestamp.cmp(&b.metadata.creation_timestamp));
        found.service_cidrs = items
            .into_iter()
            .flat_map(|s| s.spec.and_then(|spec| spec.cidrs).unwrap_or_default())
            .collect();
    }

    let mut pod_cidr_type = spec.pod_cidr_type.clone().unwrap_or_else(|| "auto".into());
    if pod_cidr_type == "auto" {
        found.first_cni_network = first_cni_network(&config.cni_config_dir).await;
        if let Some(name) = &found.first_cni_network {
            pod_cidr_type = pod_cidr_type_for_cni(name).to_string();
        }
    }
    match pod_cidr_type.as_str() {
        "calico" => {
            let pools = list_dynamic(client, "crd.projectcalico.org", "v1", "IPPool")
                .await
                .map_err(kube_error("listing Calico IPPools"))?;
            found.calico_pools = pools.map(|pools| {
                pools
                    .into_iter()
                    .map(|p| CalicoPool {
                        cidr: p.data["spec"]["cidr"].as_str().unwrap_or_default().to_string(),
                        disabled: p.data["spec"]["disabled"].as_bool().unwrap_or(false),
                        terminating: p.metadata.deletion_timestamp.is_some(),
                        created: p.metadata.creation_timestamp.clone(),
                    })
                    .collect()
            });
        }
        "cilium" => {
            found.cilium_config = config_maps
                .get_opt(&config.cilium_config_map)
                .await
                .map_err(kube_error("reading Cilium's ConfigMap"))?
                .map(|cm| cm.data.unwrap_or_default());
            if found
                .cilium_config
                .as_ref()
                .is_some_and(|c| c.get("ipam").is_some_and(|m| m == "multi-pool"))
            {
                let pools = list_dynamic(client, "cilium.io", "v2alpha1", "CiliumPodIPPool")
                    .await
                    .map_err(kube_error("listing CiliumPodIPPools"))?;
                found.cilium_pod_ip_pools = pools.map(|pools| {
                    pools
                        .iter()
                        .flat_map(|p| {
                            ["ipv4", "ipv6"].into_iter().flat_map(move |family| {
                                p.data["spec"][family]["cidrs"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .filter_map(|c| c.as_str().map(str::to_string))
                            })
                        })
                        .collect()
                });
            }
        }
        _ => {}
    }
    Ok(found)
}

struct Context {
    client: Client,
    config: CoordinatorConfig,
}

async fn reconcile(
    coordinator: Arc<SpiderCoordinator>,
    ctx: Arc<Context>,
) -> Result<Action, CoordinatorError> {
    let name = coordinator.name_any();
    // The webhook adds upstream's finalizer to every SpiderCoordinator; nothing waits for one to go.
    if let Some(patch) = super::ippool::finalizer_patch(coordinator.as_ref(), true) {
        let api: Api<SpiderCoordinator> = Api::all(ctx.client.clone());
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            // Gone already (someone else removed the finalizer): nothing left to do.
            Err(error) if super::ippool::is_not_found(&error) => {}
            result => {
                result.map_err(kube_error(
                    "removing the finalizer of a deleted SpiderCoordinator",
                ))?;
            }
        }
        return Ok(Action::await_change());
    }
    if name != DEFAULT_COORDINATOR_NAME || coordinator.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let found = discover(&ctx.client, &ctx.config, &coordinator.spec).await?;
    let status = compute_status(&coordinator.spec, &found);
    if coordinator.status.as_ref() != Some(&status) {
        let api: Api<SpiderCoordinator> = Api::all(ctx.client.clone());
        let patch = json!({
            "apiVersion": spiderpool_schema::API_VERSION,
            "kind": "SpiderCoordinator",
            "status": status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(kube_error("writing the SpiderCoordinator status"))?;
        tracing::info!(
            phase = %status.phase,
            reason = status.reason.as_deref().unwrap_or(""),
            pod_cidrs = ?status.overlay_pod_cidr,
            service_cidrs = ?status.service_cidr,
            "SpiderCoordinator status updated"
        );
    }
    Ok(Action::requeue(ctx.config.resync))
}

fn error_policy(_: Arc<SpiderCoordinator>, error: &CoordinatorError, ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "SpiderCoordinator reconcile failed; retrying");
    Action::requeue(ctx.config.retry_delay)
}

/// Runs the controller until the watch streams end (never, in practice: drop the future to stop it, e.g.
/// when leadership is lost). Changes of `kube-system/kubeadm-config`, Cilium's ConfigMap, the
/// kube-controller-manager pods and ServiceCIDRs trigger a recompute at once; other sources are
/// picked up at the next resync.
pub async fn run(client: Client, config: CoordinatorConfig) -> anyhow::Result<()> {
    let coordinators: Api<SpiderCoordinator> = Api::all(client.clone());
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), KUBE_SYSTEM);
    let pods: Api<Pod> = Api::namespaced(client.clone(), KUBE_SYSTEM);
    let service_cidrs: Api<ServiceCIDR> = Api::all(client.clone());
    let default = || Some(ObjectRef::<SpiderCoordinator>::new(DEFAULT_COORDINATOR_NAME));
    let cilium_config_map = config.cilium_config_map.clone();
    let context = Arc::new(Context { client, config });
    // Every SpiderCoordinator, not only `default`: each gets the finalizer, which is removed here.
    Controller::new(coordinators, watcher::Config::default())
        .watches(config_maps, watcher::Config::default(), move |cm: ConfigMap| {
            let name = cm.name_any();
            (name == KUBEADM_CONFIG || name == cilium_config_map)
                .then(|| ObjectRef::new(DEFAULT_COORDINATOR_NAME))
        })
        .watches(
            pods,
            watcher::Config::default().labels(CONTROLLER_MANAGER_LABEL),
            move |_: Pod| default(),
        )
        .watches(
            service_cidrs,
            watcher::Config::default(),
            move |_: ServiceCIDR| default(),
        )
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "SpiderCoordinator controller event");
            }
        })
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pod_cidr_type: &str) -> CoordinatorSpec {
        CoordinatorSpec {
            pod_cidr_type: Some(pod_cidr_type.to_string()),
            ..CoordinatorSpec::default()
        }
    }

    const KUBEADM: &str = "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nkubernetesVersion: v1.33.0\nnetworking:\n  dnsDomain: cluster.local\n  podSubnet: 10.244.0.0/16,fd00:10:244::/56\n  serviceSubnet: 10.96.0.0/12\n";

    #[test]
    fn kubeadm_config_gives_pod_and_service_cidrs() {
        let found = Discovered {
            kubeadm_cluster_configuration: Some(KUBEADM.into()),
            ..Discovered::default()
        };
        let status = compute_status(&spec("cluster"), &found);
        assert_eq!(status.phase, "Synced");
        assert_eq!(status.reason, None);
        assert_eq!(
            status.overlay_pod_cidr,
            Some(vec!["10.244.0.0/16".into(), "fd00:10:244::/56".into()])
        );
        assert_eq!(status.service_cidr, Some(vec!["10.96.0.0/12".into()]));
    }

    #[test]
    fn service_cidr_objects_win_over_kubeadm() {
        let found = Discovered {
            kubeadm_cluster_configuration: Some(KUBEADM.into()),
            service_cidrs: vec!["10.96.0.0/16".into(), "fd00:96::/112".into()],
            ..Discovered::default()
        };
        let status = compute_status(&spec("cluster"), &found);
        assert_eq!(
            status.service_cidr,
            Some(vec!["10.96.0.0/16".into(), "fd00:96::/112".into()])
        );
    }

    #[test]
    fn controller_manager_flags_are_the_fallback() {
        let found = Discovered {
            controller_manager_args: Some(vec![
                "kube-controller-manager".into(),
                "--cluster-cidr=10.42.0.0/16".into(),
                "--service-cluster-ip-range".into(),
                "10.43.0.0/16".into(),
            ]),
            ..Discovered::default()
        };
        let status = compute_status(&spec("cluster"), &found);
        assert_eq!(status.phase, "Synced", "{status:?}");
        assert_eq!(status.overlay_pod_cidr, Some(vec!["10.42.0.0/16".into()]));
        assert_eq!(status.service_cidr, Some(vec!["10.43.0.0/16".into()]));
    }

    #[test]
    fn nothing_found_is_not_ready_with_a_reason() {
        let found = Discovered {
            service_cidrs: vec!["10.96.0.0/16".into()],
            ..Discovered::default()
        };
        let status = compute_status(&spec("cluster"), &found);
        assert_eq!(status.phase, "NotReady");
        assert!(
            status.reason.as_deref().unwrap().contains("kubeadm-config"),
            "{status:?}"
        );
        assert_eq!(status.overlay_pod_cidr, None);

        let status = compute_status(&spec("none"), &Discovered::default());
        assert_eq!(status.phase, "NotReady");
        assert!(
            status.reason.as_deref().unwrap().contains("service CIDR"),
            "{status:?}"
        );

        let status = compute_status(&spec("none"), &found);
        assert_eq!(status.phase, "Synced");
        assert_eq!(status.overlay_pod_cidr, Some(vec![]));
    }

    #[test]
    fn bad_cidrs_and_yaml_are_reported() {
        let found = Discovered {
            kubeadm_cluster_configuration: Some("networking:\n  podSubnet: 10.244.0.0/33\n".into()),
            service_cidrs: vec!["10.96.0.0/16".into()],
            ..Discovered::default()
        };
        let status = compute_status(&spec("cluster"), &found);
        assert_eq!(status.phase, "NotReady");
        assert!(
            status.reason.as_deref().unwrap().contains("podSubnet"),
            "{status:?}"
        );
        let found = Discovered {
            kubeadm_cluster_configuration: Some("networking: [".into()),
            ..found
        };
        let status = compute_status(&spec("cluster"), &found);
        assert!(
            status.reason.as_deref().unwrap().contains("not valid YAML"),
            "{status:?}"
        );
    }

    #[test]
    fn calico_pools_enabled_oldest_first() {
        let time = |s: i64| Some(Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap()));
        let found = Discovered {
            service_cidrs: vec!["10.96.0.0/16".into()],
            calico_pools: Some(vec![
                CalicoPool {
                    cidr: "10.2.0.0/16".into(),
                    disabled: false,
                    terminating: false,
                    created: time(20),
                },
                CalicoPool {
                    cidr: "10.1.0.0/16".into(),
                    disabled: false,
                    terminating: false,
                    created: time(10),
                },
                CalicoPool {
                    cidr: "10.3.0.0/16".into(),
                    disabled: true,
                    terminating: false,
                    created: time(5),
                },
                CalicoPool {
                    cidr: "10.4.0.0/16".into(),
                    disabled: false,
                    terminating: true,
                    created: time(1),
                },
            ]),
            ..Discovered::default()
        };
        let status = compute_status(&spec("calico"), &found);
        assert_eq!(
            status.overlay_pod_cidr,
            Some(vec!["10.1.0.0/16".into(), "10.2.0.0/16".into()])
        );
        let status = compute_status(
            &spec("calico"),
            &Discovered {
                calico_pools: None,
                ..found
            },
        );
        assert!(
            status.reason.as_deref().unwrap().contains("not served"),
            "{status:?}"
        );
    }

    #[test]
    fn cilium_modes() {
        let config = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let base = Discovered {
            service_cidrs: vec!["10.96.0.0/16".into()],
            ..Discovered::default()
        };
        let found = Discovered {
            cilium_config: config(&[
                ("ipam", "cluster-pool"),
                ("cluster-pool-ipv4-cidr", "10.0.0.0/8"),
                ("cluster-pool-ipv6-cidr", "fd00::/104"),
            ]),
            ..base.clone()
        };
        assert_eq!(
            compute_status(&spec("cilium"), &found).overlay_pod_cidr,
            Some(vec!["10.0.0.0/8".into(), "fd00::/104".into()])
        );
        let found = Discovered {
            cilium_config: config(&[("ipam", "multi-pool")]),
            cilium_pod_ip_pools: Some(vec!["10.10.0.0/16".into()]),
            ..base.clone()
        };
        assert_eq!(
            compute_status(&spec("cilium"), &found).overlay_pod_cidr,
            Some(vec!["10.10.0.0/16".into()])
        );
        let found = Discovered {
            cilium_config: config(&[("ipam", "eni")]),
            ..base.clone()
        };
        assert!(
            compute_status(&spec("cilium"), &found)
                .reason
                .unwrap()
                .contains("eni")
        );
        assert_eq!(compute_status(&spec("cilium"), &base).phase, "NotReady");
    }

    #[test]
    fn auto_follows_the_first_cni_configuration() {
        assert_eq!(pod_cidr_type_for_cni("k8s-pod-network"), "calico");
        assert_eq!(pod_cidr_type_for_cni("cilium"), "cilium");
        assert_eq!(pod_cidr_type_for_cni("multus-cni-network"), "none");
        let found = Discovered {
            service_cidrs: vec!["10.96.0.0/16".into()],
            first_cni_network: Some("macvlan-underlay".into()),
            ..Discovered::default()
        };
        assert_eq!(compute_status(&spec("auto"), &found).phase, "Synced");
        let found = Discovered {
            first_cni_network: None,
            ..found
        };
        assert!(
            compute_status(&spec("auto"), &found)
                .reason
                .unwrap()
                .contains("no CNI configuration")
        );
    }

    #[test]
    fn flags_in_both_forms() {
        let args: Vec<String> = ["--a=1", "--cluster-cidr", "10.0.0.0/8", "--cluster-cidr-extra=x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(flag_value(&args, "--cluster-cidr"), Some("10.0.0.0/8"));
        assert_eq!(flag_value(&args, "--a"), Some("1"));
        assert_eq!(flag_value(&args, "--b"), None);
    }
}
