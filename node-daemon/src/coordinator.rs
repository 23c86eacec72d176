//! `GET /v1/coordinator/config`: the `coordinator` plugin's cluster defaults for one pod, on the IPAM
//! socket (upstream's request and answer shapes, so upstream's own plugin works against this daemon).
//!
//! The answer comes from the SpiderCoordinator named `default` (a watch cache of that one object),
//! only while its phase is `Synced` (else an error naming the phase and the controller's reason),
//! and from the pod's `ipam.spidernet.io/default-route-nic` annotation, which wins over the
//! SpiderCoordinator's `podDefaultRouteNIC`. [`config_for`] is the pure rule; [`Coordinators`] the
//! thin shell that finds the two objects.
//!
//! Where upstream's agent differs: it answers from the first SpiderCoordinator it lists (we from
//! `default`, the only one its controller reconciles); when `serviceCIDR` is empty it resets
//! `overlayPodCIDR` instead (reference 13.7); it passes `mode: disabled` on, which its own plugin
//! refuses (13.4; we answer `disable`); and it passes a bare IP in `hijackCIDR` on, which its plugin
//! cannot parse (we answer `/32` or `/128`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use spiderpool_agent_api::{
    CoordinatorConfig, CoordinatorRoute, ErrorResponse, GetCoordinatorArgs, PATH_COORDINATOR_CONFIG, codes,
};
use spiderpool_schema::SpiderCoordinator;
use spiderpool_schema::annotations::ANNO_DEFAULT_ROUTE_NIC;
use spiderpool_schema::coordinator::{DEFAULT_COORDINATOR_NAME, PHASE_SYNCED};

/// `hostRuleTable` when the SpiderCoordinator has none (upstream's default).
pub const DEFAULT_HOST_RULE_TABLE: i64 = 500;
/// `vethMTU` when the SpiderCoordinator has none (upstream's webhook default).
pub const DEFAULT_VETH_MTU: i64 = 1500;
/// How long a request waits for the SpiderCoordinator cache's first list.
const SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why no configuration can be given.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorConfigError {
    /// The request body is not what the plugin sends.
    #[error("{0}")]
    BadRequest(String),
    /// The watch cache has not listed SpiderCoordinators yet.
    #[error("the node daemon is starting: its SpiderCoordinator cache has not synced yet")]
    Starting,
    /// There is no SpiderCoordinator `default`.
    #[error(
        "spidercoordinator {DEFAULT_COORDINATOR_NAME} not found: the coordinator plugin needs it (created at install)"
    )]
    NotFound,
    /// The SpiderCoordinator is not `Synced`.
    #[error("spidercoordinator {DEFAULT_COORDINATOR_NAME} is not ready (phase {phase:?}{})", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    NotSynced {
        /// Its phase.
        phase: String,
        /// The controller's reason.
        reason: Option<String>,
    },
    /// A spec value cannot be used (the webhook should have refused it).
    #[error("spidercoordinator {DEFAULT_COORDINATOR_NAME}: {0}")]
    Invalid(String),
    /// The pod does not exist.
    #[error("pod {namespace}/{name} not found")]
    PodNotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Reading the pod failed.
    #[error("reading pod {namespace}/{name}: {source}")]
    Kube {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl CoordinatorConfigError {
    fn code(&self) -> u32 {
        match self {
            Self::BadRequest(_) => codes::INVALID_ENVIRONMENT,
            Self::Starting | Self::NotFound | Self::NotSynced { .. } | Self::Kube { .. } => {
                codes::TRY_AGAIN_LATER
            }
            Self::Invalid(_) => codes::INVALID_NETWORK_CONFIG,
            Self::PodNotFound { .. } => codes::POD_NOT_ALIVE,
        }
    }
}

impl IntoResponse for CoordinatorConfigError {
    fn into_response(self) -> Response {
        // Upstream answers every failure with 500; its plugin reads nothing else.
        let status = match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            axum::Json(ErrorResponse {
                code: self.code(),
                msg: self.to_string(),
                details: String::new(),
            }),
        )
            .into_response()
    }
}

/// The configuration `coordinator` gets for a pod with `pod_annotations`.
pub fn config_for(
    coordinator: &SpiderCoordinator,
    pod_annotations: Option<&BTreeMap<String, String>>,
) -> Result<CoordinatorConfig, CoordinatorConfigError> {
    let status = coordinator.status.clone().unwrap_or_default();
    if status.phase != PHASE_SYNCED {
        return Err(CoordinatorConfigError::NotSynced {
            phase: status.phase,
            reason: status.reason,
        });
    }
    let spec = &coordinator.spec;
    let mode = spec.effective_mode().ok_or_else(|| {
        CoordinatorConfigError::Invalid(format!(
            "spec.mode {:?} is not one of auto, underlay, overlay, disabled",
            spec.mode.as_deref().unwrap_or_default()
        ))
    })?;
    let hijack_cidr = spec
        .hijack_cidr
        .iter()
        .map(|cidr| {
            as_cidr(cidr)
                .map_err(|reason| CoordinatorConfigError::Invalid(format!("spec.hijackCIDR: {reason}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let policy_routes = spec
        .policy_routes
        .iter()
        .map(|route| {
            Ok(CoordinatorRoute {
                dst: as_cidr(&route.dst).map_err(|reason| {
                    CoordinatorConfigError::Invalid(format!("spec.policyRoutes: {reason}"))
                })?,
                gw: route.gw.trim().to_owned(),
            })
        })
        .collect::<Result<Vec<_>, CoordinatorConfigError>>()?;
    let annotated_nic = pod_annotations.and_then(|annotations| annotations.get(ANNO_DEFAULT_ROUTE_NIC));
    Ok(CoordinatorConfig {
        mode: mode.plugin_value().to_owned(),
        overlay_pod_cidr: status.overlay_pod_cidr.unwrap_or_default(),
        service_cidr: status.service_cidr.unwrap_or_default(),
        hijack_cidr,
        policy_routes,
        pod_mac_prefix: spec.pod_mac_prefix.clone().unwrap_or_default(),
        tune_pod_routes: spec.tune_pod_routes.unwrap_or(true),
        pod_default_route_nic: annotated_nic
            .or(spec.pod_default_route_nic.as_ref())
            .cloned()
            .unwrap_or_default(),
        host_rule_table: spec.host_rule_table.unwrap_or(DEFAULT_HOST_RULE_TABLE),
        pod_rp_filter: spec.pod_rp_filter.unwrap_or(0),
        tx_queue_len: spec.tx_queue_len.unwrap_or(0),
        veth_link_address: spec.veth_link_address.clone().unwrap_or_default(),
        veth_mtu: spec.veth_mtu.unwrap_or(DEFAULT_VETH_MTU),
    })
}

/// A CIDR as is, or a bare IP as a host route (`/32`, `/128`), as the webhook accepts them.
fn as_cidr(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.contains('/') {
        return Ok(text.to_owned());
    }
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(format!("{ip}/32")),
        Ok(IpAddr::V6(ip)) => Ok(format!("{ip}/128")),
        Err(_) => Err(format!("{text:?} is neither a CIDR nor an IP")),
    }
}

/// The shell: a watch cache of the `default` SpiderCoordinator, and the pods of this node.
#[derive(Clone)]
pub struct Coordinators {
    client: Client,
    coordinators: Store<SpiderCoordinator>,
    synced: Arc<AtomicBool>,
    pods: Store<Pod>,
}

impl Coordinators {
    /// Starts watching the `default` SpiderCoordinator (on the current tokio runtime). `pods` is the
    /// cache of this node's pods; a pod missing from it is read from the API server.
    pub fn start(client: &Client, pods: Store<Pod>) -> Self {
        let api: Api<SpiderCoordinator> = Api::all(client.clone());
        let config = watcher::Config::default().fields(&format!("metadata.name={DEFAULT_COORDINATOR_NAME}"));
        let (store, writer) = reflector::store();
        let stream = watcher(api, config)
            .default_backoff()
            .reflect(writer)
            .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                if let Err(error) = item {
                    tracing::debug!(error = %error, "watching the SpiderCoordinator (retrying)");
                }
            }
        });
        let synced = Arc::new(AtomicBool::new(false));
        let flag = synced.clone();
        let waiting = store.clone();
        tokio::spawn(async move {
            if waiting.wait_until_ready().await.is_ok() {
                flag.store(true, Ordering::Release);
            }
        });
        Self {
            client: client.clone(),
            coordinators: store,
            synced,
            pods,
        }
    }

    /// The configuration for the pod `args` names.
    pub async fn config(
        &self,
        args: &GetCoordinatorArgs,
    ) -> Result<CoordinatorConfig, CoordinatorConfigError> {
        if args.pod_namespace.is_empty() || args.pod_name.is_empty() {
            return Err(CoordinatorConfigError::BadRequest(
                "podNamespace and podName are required".to_owned(),
            ));
        }
        if !self.synced.load(Ordering::Acquire) {
            // Just after start the cache may be moments from its first list: wait a little rather
            // than fail the pod.
            let ready = tokio::time::timeout(SYNC_WAIT, self.coordinators.wait_until_ready()).await;
            if !matches!(ready, Ok(Ok(()))) {
                return Err(CoordinatorConfigError::Starting);
            }
        }
        let coordinator = self
            .coordinators
            .get(&ObjectRef::new(DEFAULT_COORDINATOR_NAME))
            .ok_or(CoordinatorConfigError::NotFound)?;
        let pod = self.pod(&args.pod_namespace, &args.pod_name).await?;
        config_for(&coordinator, pod.metadata.annotations.as_ref())
    }

    async fn pod(&self, namespace: &str, name: &str) -> Result<Arc<Pod>, CoordinatorConfigError> {
        if let Some(pod) = self.pods.get(&ObjectRef::new(name).within(namespace)) {
            return Ok(pod);
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(Some(pod)) => Ok(Arc::new(pod)),
            Ok(None) => Err(CoordinatorConfigError::PodNotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }),
            Err(source) => Err(CoordinatorConfigError::Kube {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source,
            }),
        }
    }
}

/// The endpoint's route, to merge into the IPAM socket's router.
pub fn router(coordinators: Coordinators) -> Router {
    Router::new()
        .route(PATH_COORDINATOR_CONFIG, get(handle))
        .with_state(coordinators)
}

/// The body is read by hand: upstream's plugin sends it on a GET, and a missing or malformed one
/// deserves an answer naming the problem rather than a bare extractor rejection.
async fn handle(State(coordinators): State<Coordinators>, body: Bytes) -> Response {
    let args: GetCoordinatorArgs = match serde_json::from_slice(&body) {
        Ok(args) => args,
        Err(error) => {
            return CoordinatorConfigError::BadRequest(format!(
                "the body must be {{\"podNamespace\": ..., \"podName\": ...}}: {error}"
            ))
            .into_response();
        }
    };
    match coordinators.config(&args).await {
        Ok(config) => axum::Json(config).into_response(),
        Err(error) => {
            tracing::warn!(pod = %format!("{}/{}", args.pod_namespace, args.pod_name), error = %error, "coordinator configuration refused");
            error.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coordinator(yaml: &str) -> SpiderCoordinator {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const SYNCED: &str = "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderCoordinator\nmetadata:\n  name: default\nspec:\n  mode: auto\n  podCIDRType: calico\n  hijackCIDR: [169.254.0.0/16, 10.0.0.1, 'fd00::1']\n  policyRoutes: [{dst: 10.9.0.0/16, gw: 10.6.0.1}, {dst: 10.10.0.1, gw: 10.6.0.1}]\n  podMACPrefix: 0a:1b\n  tunePodRoutes: false\n  podDefaultRouteNIC: net1\n  hostRuleTable: 600\n  podRPFilter: 2\n  txQueueLen: 2000\n  vethLinkAddress: 169.254.100.1\n  vethMTU: 1400\nstatus:\n  phase: Synced\n  overlayPodCIDR: [10.244.0.0/16]\n  serviceCIDR: [10.96.0.0/12]\n";

    #[test]
    fn a_synced_coordinator_is_answered_field_by_field() {
        let config = config_for(&coordinator(SYNCED), None).unwrap();
        assert_eq!(
            config,
            CoordinatorConfig {
                mode: "auto".into(),
                overlay_pod_cidr: vec!["10.244.0.0/16".into()],
                service_cidr: vec!["10.96.0.0/12".into()],
                hijack_cidr: vec![
                    "169.254.0.0/16".into(),
                    "10.0.0.1/32".into(),
                    "fd00::1/128".into()
                ],
                policy_routes: vec![
                    CoordinatorRoute {
                        dst: "10.9.0.0/16".into(),
                        gw: "10.6.0.1".into()
                    },
                    CoordinatorRoute {
                        dst: "10.10.0.1/32".into(),
                        gw: "10.6.0.1".into()
                    },
                ],
                pod_mac_prefix: "0a:1b".into(),
                tune_pod_routes: false,
                pod_default_route_nic: "net1".into(),
                host_rule_table: 600,
                pod_rp_filter: 2,
                tx_queue_len: 2000,
                veth_link_address: "169.254.100.1".into(),
                veth_mtu: 1400,
            }
        );
    }

    #[test]
    fn defaults_fill_what_the_spec_leaves_out() {
        let bare = coordinator(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderCoordinator\nmetadata:\n  name: default\nspec:\n  podCIDRType: none\nstatus:\n  phase: Synced\n  overlayPodCIDR: [10.244.0.0/16]\n",
        );
        let config = config_for(&bare, None).unwrap();
        assert_eq!(config.mode, "auto");
        assert!(config.tune_pod_routes);
        assert_eq!((config.host_rule_table, config.veth_mtu), (500, 1500));
        // An absent serviceCIDR leaves overlayPodCIDR alone (upstream resets it, reference 13.7).
        assert_eq!(config.overlay_pod_cidr, ["10.244.0.0/16"]);
        assert!(config.service_cidr.is_empty());
    }

    #[test]
    fn the_pods_annotation_names_the_default_route_nic() {
        let mut annotations = BTreeMap::new();
        annotations.insert(ANNO_DEFAULT_ROUTE_NIC.to_owned(), "net2".to_owned());
        let config = config_for(&coordinator(SYNCED), Some(&annotations)).unwrap();
        assert_eq!(config.pod_default_route_nic, "net2");
        let other = BTreeMap::from([("x".to_owned(), "y".to_owned())]);
        assert_eq!(
            config_for(&coordinator(SYNCED), Some(&other))
                .unwrap()
                .pod_default_route_nic,
            "net1"
        );
    }

    #[test]
    fn both_spellings_of_disabled_reach_the_plugin_as_disable() {
        for mode in ["disabled", "disable"] {
            let mut c = coordinator(SYNCED);
            c.spec.mode = Some(mode.into());
            assert_eq!(config_for(&c, None).unwrap().mode, "disable");
        }
        let mut bad = coordinator(SYNCED);
        bad.spec.mode = Some("sideways".into());
        let error = config_for(&bad, None).unwrap_err();
        assert!(error.to_string().contains("spec.mode \"sideways\""), "{error}");
    }

    #[test]
    fn a_coordinator_that_is_not_synced_is_refused_with_its_reason() {
        let mut c = coordinator(SYNCED);
        let status = c.status.as_mut().unwrap();
        status.phase = "NotReady".into();
        status.reason = Some("no kubeadm-config and no kube-controller-manager pod".into());
        let error = config_for(&c, None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "spidercoordinator default is not ready (phase \"NotReady\": no kubeadm-config and no kube-controller-manager pod)"
        );
        assert_eq!(error.code(), codes::TRY_AGAIN_LATER);
        c.status = None;
        assert!(matches!(
            config_for(&c, None),
            Err(CoordinatorConfigError::NotSynced { .. })
        ));
    }
}
