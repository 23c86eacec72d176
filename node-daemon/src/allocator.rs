//! The I/O shell around [`crate::ipam`]: reads the pod, its namespace, owner and SpiderEndpoint,
//! asks the pure rules what to do, has the pool writers record it, and keeps the SpiderEndpoint (one
//! per pod, upstream's shape) true.
//!
//! Order of writes, and why nothing leaks: addresses are recorded in the pools first (keyed by pod
//! UID), then the SpiderEndpoint is written. If the endpoint write fails, the pool records are taken
//! back before answering. If the daemon dies in between, the pool records carry the pod UID, so the
//! runtime's retried ADD gets the same addresses back, and the operator's reclaim frees them if the
//! pod is gone. On release the order is reversed: pool records first, the endpoint last, so an
//! endpoint always lists at least what its pod holds.
//!
//! Differences from upstream, on purpose (reference section 13):
//! - DEL releases when it comes from the sandbox that holds the addresses (the endpoint records the
//!   container id), also while the pod object still exists; upstream keeps them while the pod is
//!   "alive" (13.13), the root of its exhaustion reports. A DEL from an older sandbox is ignored.
//! - Errors from DEL are reported, not swallowed (13.11): the runtime retries DEL, so nothing leaks.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use spiderpool_agent_api::{
    Attachment, IpConfig, IpamAddArgs, IpamAddResponse, IpamBatchDelArgs, IpamDelArgs, IpamGcArgs,
    IpamGcResponse, Route, WorkloadEndpointStatus, codes,
};
use spiderpool_ipmath::IpFamily;
use spiderpool_schema::annotations::ip_version_label;
use spiderpool_schema::common::Route as PoolRoute;
use spiderpool_schema::endpoint::{IPAllocationDetail, PodIPAllocation, SpiderEndpointStatus};
use spiderpool_schema::labels::{
    LABEL_INTERFACE, LABEL_IP_VERSION, LABEL_OWNER_APP_UID, LABEL_OWNER_SPIDER_SUBNET,
};
use spiderpool_schema::{FINALIZER, SpiderEndpoint, SpiderIPPool};
use tokio::sync::Mutex;

use crate::ipam::annotations::{self, AnnotationError};
use crate::ipam::candidates::{self, CandidateError, CandidateInput, NicRequest, Source};
use crate::ipam::filter::{self, PodScope};
use crate::ipam::owner::{self, AppRef, Stickiness};
use crate::ipam::pick::{Op, Outcome};
use crate::ipam::routes::{self, Allocated};
use crate::metrics::Metrics;
use crate::store::Stores;
use crate::writer::{LeaseTuning, PoolWriters, WriteError};

/// Annotation on a SpiderEndpoint: the container id of the sandbox that holds the addresses.
pub const ANNO_CONTAINER_ID: &str = "spiderpool.spidernet.io/container-id";
/// Annotation on a SpiderEndpoint: `{"<ifname>": "<CNI network name>"}`, for CNI GC.
pub const ANNO_NETWORKS: &str = "spiderpool.spidernet.io/networks";
/// Label on a SpiderEndpoint: the node whose daemon wrote it (CNI GC lists by it).
pub const LABEL_NODE: &str = "spiderpool.spidernet.io/node";
/// How long a sticky pod's new incarnation waits for the node that handed its retained address out
/// of a reservation to record it for the previous incarnation (agents record handouts within 2 s).
const REBIND_WAIT: Duration = Duration::from_secs(10);

/// Settings of the allocator.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node.
    pub node_name: String,
    /// Namespace for `multusName` entries without one (the daemon's namespace).
    pub namespace: String,
    /// Multus cluster network (`<ns>/<name>`), for pools whose `multusName` must match `eth0`.
    pub cluster_network: Option<String>,
    /// Allocate IPv4.
    pub enable_ipv4: bool,
    /// Allocate IPv6.
    pub enable_ipv6: bool,
    /// StatefulSet pods keep their addresses.
    pub enable_statefulset: bool,
    /// KubeVirt VMs keep their addresses.
    pub enable_kubevirt: bool,
    /// SpiderSubnet automatic pools.
    pub enable_auto_pools: bool,
    /// Ask the plugin to detect address conflicts.
    pub enable_ip_conflict_detection: bool,
    /// Ask the plugin to check the gateway.
    pub enable_gateway_detection: bool,
    /// Most addresses one pool may hold.
    pub max_allocated_ips: usize,
    /// This node's reservations in shared pools.
    pub lease: LeaseTuning,
    /// Deadline of one ADD or DEL.
    pub request_timeout: Duration,
    /// How long to wait for a SpiderSubnet automatic pool to appear.
    pub auto_pool_wait: Duration,
}

/// Why a request failed. Each maps to the CNI error code the plugin reports.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Missing or contradictory request fields.
    #[error("{0}")]
    BadRequest(String),
    /// The pod cannot get addresses.
    #[error("{0}")]
    PodNotAlive(String),
    /// A malformed pod or namespace annotation.
    #[error("{0}")]
    Annotation(#[from] AnnotationError),
    /// No pool can serve the interface.
    #[error("{0}")]
    NoCandidate(String),
    /// Every candidate pool is full.
    #[error("{0}")]
    Exhausted(String),
    /// Retained addresses may not be released this way.
    #[error("{0}")]
    Forbidden(String),
    /// The API server failed or timed out; worth retrying.
    #[error("{0}")]
    Transient(String),
}

impl IpamError {
    /// The CNI error code for the plugin.
    pub fn code(&self) -> u32 {
        match self {
            IpamError::BadRequest(_) => codes::INVALID_ENVIRONMENT,
            IpamError::PodNotAlive(_) => codes::POD_NOT_ALIVE,
            IpamError::Annotation(_) => codes::INVALID_POD_ANNOTATION,
            IpamError::NoCandidate(_) => codes::NO_CANDIDATE_POOL,
            IpamError::Exhausted(_) => codes::POOLS_EXHAUSTED,
            IpamError::Forbidden(_) => codes::RELEASE_FORBIDDEN,
            IpamError::Transient(_) => codes::TRY_AGAIN_LATER,
        }
    }

    /// Metric label (upstream's classification, reference section 9).
    pub fn reason(&self) -> &'static str {
        match self {
            IpamError::BadRequest(_) | IpamError::Annotation(_) => "wrong_input",
            IpamError::PodNotAlive(_) => "pod_not_alive",
            IpamError::NoCandidate(_) => "no_available_pool",
            IpamError::Exhausted(_) => "ip_used_out",
            IpamError::Forbidden(_) => "forbidden",
            IpamError::Transient(_) => "retries_exhausted",
        }
    }
}

impl From<CandidateError> for IpamError {
    fn from(e: CandidateError) -> Self {
        match e {
            CandidateError::Annotation(a) => IpamError::Annotation(a),
            CandidateError::NoRule => IpamError::NoCandidate(e.to_string()),
        }
    }
}

fn kube_error(what: &str, e: kube::Error) -> IpamError {
    IpamError::Transient(format!("{what}: {e}"))
}

/// The allocator. Cheap to clone.
#[derive(Clone)]
pub struct Allocator {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: Config,
    stores: Stores,
    writers: PoolWriters,
    metrics: Metrics,
    /// Serialises requests for one endpoint (pod or VM) on this node: Multus adds a pod's interfaces
    /// one after the other, but a retried ADD may overlap the first.
    locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// One address given to one interface.
struct Grant {
    nic: String,
    family: IpFamily,
    ip: IpAddr,
    pool: Arc<SpiderIPPool>,
    /// No default route through the gateway on this interface (as the candidate rules said).
    clean_gateway: bool,
}

impl Grant {
    fn pool_name(&self) -> String {
        self.pool.metadata.name.clone().unwrap_or_default()
    }
}

/// Why an endpoint could not be written.
enum RecordError {
    /// Creating it found one of the same name.
    Exists,
    /// Anything else.
    Failed(IpamError),
}

impl RecordError {
    fn into_ipam(self) -> IpamError {
        match self {
            RecordError::Exists => {
                IpamError::Transient("the SpiderEndpoint was created concurrently; retry".to_owned())
            }
            RecordError::Failed(e) => e,
        }
    }
}

/// What a fresh allocation gives: the addresses, and the pod's `ipam.spidernet.io/routes` (parsed
/// once, before anything is allocated, so a malformed annotation costs no pool write).
struct Fresh {
    grants: Vec<Grant>,
    extra_routes: Vec<annotations::RouteItem>,
}

impl Allocator {
    /// An allocator over started stores.
    pub fn new(client: Client, config: Config, stores: Stores, metrics: Metrics) -> Self {
        let writers = PoolWriters::new(
            Api::all(client.clone()),
            Api::all(client.clone()),
            &config.node_name,
            &label_value(&config.node_name),
            stores.clone(),
            metrics.clone(),
            config.max_allocated_ips,
            config.lease.clone(),
        );
        Allocator {
            inner: Arc::new(Inner {
                client,
                config,
                stores,
                writers,
                metrics,
                locks: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Starts recovering this node's reservations left by a previous run (call once the caches are
    /// synced).
    pub fn recover_reservations(&self) {
        self.inner.writers.recover_reservations();
    }

    /// The task that reserves in the pools of pods bound to this node before their ADD comes
    /// ([`crate::ahead`]); run it once the caches are synced.
    pub fn reserve_ahead(&self) -> crate::ahead::ReserveAhead {
        crate::ahead::ReserveAhead::new(
            self.inner.client.clone(),
            self.inner.config.clone(),
            self.inner.stores.clone(),
            self.inner.writers.clone(),
        )
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The caches.
    pub fn stores(&self) -> &Stores {
        &self.inner.stores
    }

    fn lock_for(&self, key: &str) -> Arc<Mutex<()>> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|e| e.into_inner());
        if locks.len() > 4096 {
            // Drop locks nobody holds, so the map does not grow with every pod ever seen.
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        locks.entry(key.to_owned()).or_default().clone()
    }

    /// CNI ADD.
    pub async fn add(&self, args: &IpamAddArgs) -> Result<IpamAddResponse, IpamError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.inner.config.request_timeout, self.add_inner(args))
            .await
            .unwrap_or_else(|_| {
                Err(IpamError::Transient(format!(
                    "allocation did not finish within {:?}",
                    self.inner.config.request_timeout
                )))
            });
        self.inner
            .metrics
            .allocation(started.elapsed(), result.as_ref().err().map(IpamError::reason));
        result
    }

    async fn add_inner(&self, args: &IpamAddArgs) -> Result<IpamAddResponse, IpamError> {
        require(&[
            ("podNamespace (K8S_POD_NAMESPACE)", &args.pod_namespace),
            ("podName (K8S_POD_NAME)", &args.pod_name),
            ("containerID", &args.container_id),
            ("ifName", &args.if_name),
        ])?;
        let pod = match self
            .inner
            .stores
            .pod(&args.pod_namespace, &args.pod_name, &args.pod_uid)
        {
            Some(cached) => (*cached).clone(),
            None => {
                let pods: Api<Pod> = Api::namespaced(self.inner.client.clone(), &args.pod_namespace);
                pods.get_opt(&args.pod_name)
                    .await
                    .map_err(|e| kube_error("reading the pod", e))?
                    .ok_or_else(|| {
                        IpamError::PodNotAlive(format!(
                            "pod {}/{} does not exist",
                            args.pod_namespace, args.pod_name
                        ))
                    })?
            }
        };
        let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
        if !args.pod_uid.is_empty() && args.pod_uid != pod_uid {
            return Err(IpamError::PodNotAlive(format!(
                "pod {}/{} has UID {pod_uid}, not {} (the pod was recreated)",
                args.pod_namespace, args.pod_name, args.pod_uid
            )));
        }
        if !owner::is_pod_alive(&pod) {
            return Err(IpamError::PodNotAlive(format!(
                "pod {}/{} is terminating or finished",
                args.pod_namespace, args.pod_name
            )));
        }
        let config = &self.inner.config;
        let stickiness = owner::stickiness(&pod, config.enable_statefulset, config.enable_kubevirt);
        let endpoint_name = stickiness.endpoint_name(&args.pod_name).to_owned();
        let lock = self.lock_for(&format!("{}/{endpoint_name}", args.pod_namespace));
        let _guard = lock.lock().await;

        let app = self.top_controller(&pod).await;
        let endpoints: Api<SpiderEndpoint> = Api::namespaced(self.inner.client.clone(), &args.pod_namespace);
        // Most pods are new: their endpoint is created without reading first, and read only when one
        // exists (a retried ADD, the pod's next interface, a stale endpoint of an earlier pod of the
        // same name). Sticky pods usually have one, so it is read first.
        let mut optimistic = !stickiness.is_sticky();
        // The endpoint as read after an optimistic create found one (not read a second time).
        let mut in_hand: Option<Option<SpiderEndpoint>> = None;
        loop {
            let existing = if optimistic {
                None
            } else if let Some(read) = in_hand.take() {
                read
            } else {
                endpoints
                    .get_opt(&endpoint_name)
                    .await
                    .map_err(|e| kube_error("reading the SpiderEndpoint", e))?
            };
            let mut endpoint = match existing {
                Some(ep) => {
                    let status = ep.status.clone().unwrap_or_default();
                    if status.current.uid == pod_uid {
                        if status.current.ips.iter().any(|d| d.nic == args.if_name) {
                            // A repeated ADD (retry, sandbox re-creation): the same answer.
                            self.note_container(&endpoints, &ep, args).await?;
                            return Ok(self.response(&status));
                        }
                        Some(ep)
                    } else if stickiness.is_sticky() {
                        return self
                            .take_over(&endpoints, ep, &pod, &app, &stickiness, args)
                            .await;
                    } else {
                        // An endpoint left by an earlier pod of the same name: free what it holds.
                        tracing::info!(
                            endpoint = endpoint_name,
                            stale_uid = status.current.uid,
                            "removing a stale SpiderEndpoint"
                        );
                        self.release_endpoint(&endpoints, &ep).await?;
                        None
                    }
                }
                None => None,
            };

            let fresh = self.allocate_fresh(&pod, &app, args, endpoint.as_ref()).await?;
            match self
                .record(
                    &endpoints,
                    endpoint.take(),
                    &pod,
                    &app,
                    &stickiness,
                    &endpoint_name,
                    args,
                    &fresh,
                )
                .await
            {
                Ok(status) => return Ok(self.response(&status)),
                Err(RecordError::Exists) if optimistic => {
                    // Give back what this attempt took beyond what the existing endpoint records
                    // for this pod (a retried ADD gets the same addresses again), then decide with
                    // the endpoint in hand.
                    let existing = endpoints
                        .get_opt(&endpoint_name)
                        .await
                        .map_err(|e| kube_error("reading the SpiderEndpoint", e))?;
                    let recorded: Vec<(IpAddr, String)> = existing
                        .as_ref()
                        .and_then(|ep| ep.status.as_ref())
                        .filter(|status| status.current.uid == pod_uid)
                        .map(|status| status.current.ips.iter().flat_map(detail_addresses).collect())
                        .unwrap_or_default();
                    let unrecorded: Vec<Grant> = fresh
                        .grants
                        .into_iter()
                        .filter(|g| {
                            !recorded
                                .iter()
                                .any(|(ip, pool)| *ip == g.ip && *pool == g.pool_name())
                        })
                        .collect();
                    self.take_back(&pod_uid, &unrecorded).await;
                    in_hand = Some(existing);
                    optimistic = false;
                }
                Err(e) => {
                    self.take_back(&pod_uid, &fresh.grants).await;
                    return Err(e.into_ipam());
                }
            }
        }
    }

    /// Allocates for the interfaces the candidate rules name (every interface of `ippools` /
    /// `subnets` at once; otherwise only the one being added), skipping interfaces the endpoint
    /// already records.
    async fn allocate_fresh(
        &self,
        pod: &Pod,
        app: &AppRef,
        args: &IpamAddArgs,
        endpoint: Option<&SpiderEndpoint>,
    ) -> Result<Fresh, IpamError> {
        let config = &self.inner.config;
        let stores = &self.inner.stores;
        let pod_annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let (namespace_labels, namespace_annotations) = stores.namespace_meta(&args.pod_namespace);
        let (all_v4, default_v4) = stores.pool_names(IpFamily::V4);
        let (all_v6, default_v6) = stores.pool_names(IpFamily::V6);
        let chosen = candidates::candidates(&CandidateInput {
            netconf_ipv4: &args.default_ipv4_ippool,
            netconf_ipv6: &args.default_ipv6_ippool,
            netconf_clean_gateway: args.clean_gateway,
            cluster_default_ipv4: &default_v4,
            cluster_default_ipv6: &default_v6,
            all_ipv4: &all_v4,
            all_ipv6: &all_v6,
            enable_ipv4: config.enable_ipv4,
            enable_ipv6: config.enable_ipv6,
            enable_auto_pools: config.enable_auto_pools,
            ..CandidateInput::new(&pod_annotations, &namespace_annotations, &args.if_name)
        })?;
        let extra_routes = match pod_annotations.get(annotations::ANNO_ROUTES) {
            Some(text) => annotations::parse_routes(text)?,
            None => Vec::new(),
        };

        let already: Vec<&str> = endpoint
            .and_then(|e| e.status.as_ref())
            .map(|s| s.current.ips.iter().map(|d| d.nic.as_str()).collect())
            .unwrap_or_default();
        let mut labels = pod.metadata.labels.clone().unwrap_or_default();
        labels.extend(app.affinity_labels());
        let node_labels = stores.node_labels();
        let scope = PodScope {
            namespace: &args.pod_namespace,
            labels: &labels,
            annotations: &pod_annotations,
            node_name: &config.node_name,
            node_labels: &node_labels,
            namespace_labels: &namespace_labels,
            default_multus_namespace: &config.namespace,
            cluster_network: config.cluster_network.as_deref(),
        };
        let claim = (
            format!("{}/{}", args.pod_namespace, args.pod_name),
            pod.metadata.uid.clone().unwrap_or_default(),
        );

        let mut jobs = Vec::new();
        for nic in chosen.nics.iter().filter(|n| !already.contains(&n.nic.as_str())) {
            for family in [IpFamily::V4, IpFamily::V6] {
                if nic.pools(family).is_empty() {
                    continue;
                }
                jobs.push(self.allocate_one(nic, family, chosen.source, app, &scope, &claim));
            }
        }
        if jobs.is_empty() {
            return Err(IpamError::NoCandidate(format!(
                "no pool of an enabled IP family is a candidate for {}",
                args.if_name
            )));
        }
        let results = join_all(jobs).await;
        let mut grants = Vec::new();
        let mut first_error = None;
        for result in results {
            match result {
                Ok(grant) => grants.push(grant),
                Err(e) => {
                    if first_error.is_none() {
                        first_error = Some(e);
                    }
                }
            }
        }
        if let Some(e) = first_error {
            // All or nothing: what succeeded goes back before the error is reported.
            self.take_back(&claim.1, &grants).await;
            return Err(e);
        }
        Ok(Fresh { grants, extra_routes })
    }

    async fn allocate_one(
        &self,
        nic: &NicRequest,
        family: IpFamily,
        source: Source,
        app: &AppRef,
        scope: &PodScope<'_>,
        claim: &(String, String),
    ) -> Result<Grant, IpamError> {
        let names: Vec<String> = if source == Source::Subnet {
            let mut pools = Vec::new();
            for subnet in nic.pools(family) {
                pools.push(self.wait_auto_pool(subnet, app, &nic.nic, family).await?);
            }
            pools
        } else {
            nic.pools(family).to_vec()
        };
        let mut reasons = Vec::new();
        let mut eligible = Vec::new();
        for name in &names {
            match self.pool(name).await? {
                None => reasons.push(format!("{name}: does not exist")),
                Some(pool) => match filter::check_pool(&pool, family, &nic.nic, scope) {
                    Ok(()) => eligible.push(pool),
                    Err(reason) => reasons.push(format!("{name}: {reason}")),
                },
            }
        }
        if eligible.is_empty() {
            return Err(IpamError::NoCandidate(format!(
                "no {family} pool can serve {}: {}",
                nic.nic,
                reasons.join("; ")
            )));
        }
        let mut ordered: Vec<&SpiderIPPool> = eligible.iter().map(|p| p.as_ref()).collect();
        filter::order(&mut ordered);
        let mut exhausted = Vec::new();
        for pool in ordered {
            let name = pool.metadata.name.clone().unwrap_or_default();
            let op = Op::Allocate {
                pod: claim.0.clone(),
                pod_uid: claim.1.clone(),
            };
            match self
                .inner
                .writers
                .submit(&name, op, self.inner.config.request_timeout)
                .await
            {
                Ok(Outcome::Allocated(ip)) => {
                    let pool = self
                        .inner
                        .stores
                        .pool(&name)
                        .unwrap_or_else(|| Arc::new(pool.clone()));
                    return Ok(Grant {
                        nic: nic.nic.clone(),
                        family,
                        ip,
                        pool,
                        clean_gateway: nic.clean_gateway,
                    });
                }
                Ok(Outcome::Exhausted(reason)) => exhausted.push(format!("{name}: {reason}")),
                Ok(other) => exhausted.push(format!("{name}: unexpected outcome {other:?}")),
                Err(WriteError::Timeout { pool, last_error, .. }) => {
                    return Err(IpamError::Transient(format!(
                        "SpiderIPPool {pool}: no status write succeeded before the deadline ({last_error})"
                    )));
                }
                Err(e) => exhausted.push(e.to_string()),
            }
        }
        Err(IpamError::Exhausted(format!(
            "every {family} pool of {} is exhausted: {}",
            nic.nic,
            exhausted.join("; ")
        )))
    }

    /// A pool from the cache, or from the API server when the cache has not seen it yet (a pool
    /// created just before the pod).
    async fn pool(&self, name: &str) -> Result<Option<Arc<SpiderIPPool>>, IpamError> {
        if let Some(pool) = self.inner.stores.pool(name) {
            return Ok(Some(pool));
        }
        let api: Api<SpiderIPPool> = Api::all(self.inner.client.clone());
        Ok(api
            .get_opt(name)
            .await
            .map_err(|e| kube_error("reading a SpiderIPPool", e))?
            .map(Arc::new))
    }

    /// Waits for the SpiderSubnet automatic pool of (application, interface, family), which the
    /// operator creates for the application.
    async fn wait_auto_pool(
        &self,
        subnet: &str,
        app: &AppRef,
        nic: &str,
        family: IpFamily,
    ) -> Result<String, IpamError> {
        let version = ip_version_label(family);
        let deadline = Instant::now() + self.inner.config.auto_pool_wait;
        loop {
            let found = self.inner.stores.pools.state().into_iter().find(|pool| {
                let labels = pool.metadata.labels.clone().unwrap_or_default();
                labels.get(LABEL_OWNER_APP_UID) == Some(&app.uid)
                    && labels.get(LABEL_INTERFACE).map(String::as_str) == Some(nic)
                    && labels.get(LABEL_IP_VERSION).map(String::as_str) == Some(version)
                    && labels.get(LABEL_OWNER_SPIDER_SUBNET).is_none_or(|s| s == subnet)
            });
            if let Some(pool) = found {
                return Ok(pool.metadata.name.clone().unwrap_or_default());
            }
            if Instant::now() >= deadline {
                return Err(IpamError::Transient(format!(
                    "the automatic {version} pool of {} {}/{} for {nic} from SpiderSubnet {subnet} did not appear within {:?}",
                    app.kind, app.namespace, app.name, self.inner.config.auto_pool_wait
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Gives grants back (best effort; the operator's reclaim frees what this misses).
    async fn take_back(&self, pod_uid: &str, grants: &[Grant]) {
        for grant in grants {
            let name = grant.pool.metadata.name.clone().unwrap_or_default();
            let op = Op::Release {
                ip: grant.ip,
                pod_uid: pod_uid.to_owned(),
            };
            if let Err(e) = self
                .inner
                .writers
                .submit(&name, op, self.inner.config.request_timeout)
                .await
            {
                tracing::warn!(pool = name, ip = %grant.ip, error = %e, "could not take back an address; reclaim will");
            }
        }
    }

    /// Writes the endpoint with the new grants (creating it, or adding interfaces to it).
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site; the arguments are the request's facts"
    )]
    async fn record(
        &self,
        endpoints: &Api<SpiderEndpoint>,
        existing: Option<SpiderEndpoint>,
        pod: &Pod,
        app: &AppRef,
        stickiness: &Stickiness,
        endpoint_name: &str,
        args: &IpamAddArgs,
        fresh: &Fresh,
    ) -> Result<SpiderEndpointStatus, RecordError> {
        let details = build_details(&fresh.grants, &fresh.extra_routes);

        let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut networks: BTreeMap<String, String> = existing
            .as_ref()
            .and_then(|e| e.metadata.annotations.as_ref())
            .and_then(|a| a.get(ANNO_NETWORKS))
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default();
        for d in &details {
            networks.insert(d.nic.clone(), args.net_name.clone());
        }
        let networks_text = serde_json::to_string(&networks).unwrap_or_default();

        match existing {
            Some(mut ep) => {
                let mut status = ep.status.take().unwrap_or_default();
                status.current.ips.extend(details);
                let annotations = ep.metadata.annotations.get_or_insert_with(BTreeMap::new);
                annotations.insert(ANNO_CONTAINER_ID.to_owned(), args.container_id.clone());
                annotations.insert(ANNO_NETWORKS.to_owned(), networks_text);
                ep.status = Some(status.clone());
                let name = ep.metadata.name.clone().unwrap_or_default();
                self.inner.metrics.api_write("endpoint");
                endpoints
                    .replace(&name, &PostParams::default(), &ep)
                    .await
                    .map_err(|e| RecordError::Failed(kube_error("updating the SpiderEndpoint", e)))?;
                Ok(status)
            }
            None => {
                let status = SpiderEndpointStatus {
                    current: PodIPAllocation {
                        uid: pod_uid.clone(),
                        node: self.inner.config.node_name.clone(),
                        ips: details,
                    },
                    owner_controller_type: app.kind.clone(),
                    owner_controller_name: app.name.clone(),
                };
                let owner_references = (!stickiness.is_sticky()).then(|| {
                    vec![OwnerReference {
                        api_version: "v1".to_owned(),
                        kind: "Pod".to_owned(),
                        name: args.pod_name.clone(),
                        uid: pod_uid.clone(),
                        ..Default::default()
                    }]
                });
                let ep = SpiderEndpoint {
                    metadata: ObjectMeta {
                        name: Some(endpoint_name.to_owned()),
                        namespace: Some(args.pod_namespace.clone()),
                        finalizers: Some(vec![FINALIZER.to_owned()]),
                        owner_references,
                        labels: Some(BTreeMap::from([(
                            LABEL_NODE.to_owned(),
                            label_value(&self.inner.config.node_name),
                        )])),
                        annotations: Some(BTreeMap::from([
                            (ANNO_CONTAINER_ID.to_owned(), args.container_id.clone()),
                            (ANNO_NETWORKS.to_owned(), networks_text),
                        ])),
                        ..Default::default()
                    },
                    status: Some(status.clone()),
                };
                self.inner.metrics.api_write("endpoint");
                match endpoints.create(&PostParams::default(), &ep).await {
                    Ok(_) => Ok(status),
                    Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {
                        Err(RecordError::Exists)
                    }
                    Err(e) => Err(RecordError::Failed(kube_error("creating the SpiderEndpoint", e))),
                }
            }
        }
    }

    /// Records the sandbox now using the endpoint's addresses (a repeated ADD from a new sandbox).
    async fn note_container(
        &self,
        endpoints: &Api<SpiderEndpoint>,
        ep: &SpiderEndpoint,
        args: &IpamAddArgs,
    ) -> Result<(), IpamError> {
        let current = ep
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNO_CONTAINER_ID));
        if current.map(String::as_str) == Some(args.container_id.as_str()) {
            return Ok(());
        }
        let name = ep.metadata.name.clone().unwrap_or_default();
        let patch = serde_json::json!({"metadata": {"annotations": {ANNO_CONTAINER_ID: args.container_id}}});
        self.inner.metrics.api_write("endpoint");
        endpoints
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| kube_error("updating the SpiderEndpoint", e))?;
        Ok(())
    }

    /// A sticky pod's new incarnation takes over the addresses its endpoint records (StatefulSet pod
    /// recreated, VM restarted or migrated). An address whose pool is no longer a usable candidate, or
    /// that someone else took meanwhile, is released and the interface allocated afresh.
    async fn take_over(
        &self,
        endpoints: &Api<SpiderEndpoint>,
        mut ep: SpiderEndpoint,
        pod: &Pod,
        app: &AppRef,
        stickiness: &Stickiness,
        args: &IpamAddArgs,
    ) -> Result<IpamAddResponse, IpamError> {
        let mut status = ep.status.take().unwrap_or_default();
        let previous_uid = status.current.uid.clone();
        let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
        let claim_pod = format!("{}/{}", args.pod_namespace, args.pod_name);
        let mut keep = Vec::new();
        let mut dropped = Vec::new();
        for detail in std::mem::take(&mut status.current.ips) {
            let mut ok = true;
            for (ip, pool) in detail_addresses(&detail) {
                let op = Op::Rebind {
                    ip,
                    previous_uid: previous_uid.clone(),
                    pod: claim_pod.clone(),
                    pod_uid: pod_uid.clone(),
                };
                let deadline = self.inner.config.request_timeout.min(REBIND_WAIT);
                match self.inner.writers.submit(&pool, op, deadline).await {
                    Ok(Outcome::Rebound) => {}
                    Ok(other) => {
                        tracing::info!(pool, %ip, outcome = ?other, "a retained address cannot be kept; allocating afresh");
                        ok = false;
                    }
                    Err(WriteError::Timeout {
                        last_error,
                        waited_for_reservations: true,
                        ..
                    }) => {
                        // The node whose reservation the previous incarnation was handed did not
                        // record it for that pod in time (its agent is gone?): keeping the address
                        // would stall this pod indefinitely.
                        tracing::warn!(pool, %ip, why = last_error, "a retained address is still a node's reservation; allocating afresh");
                        ok = false;
                    }
                    Err(WriteError::Timeout { pool, last_error, .. }) => {
                        return Err(IpamError::Transient(format!("SpiderIPPool {pool}: {last_error}")));
                    }
                    Err(e) => {
                        tracing::info!(pool, %ip, error = %e, "a retained address cannot be kept; allocating afresh");
                        ok = false;
                    }
                }
            }
            if ok {
                keep.push(detail)
            } else {
                dropped.push(detail)
            }
        }
        for detail in &dropped {
            for (ip, pool) in detail_addresses(detail) {
                let _ = self
                    .inner
                    .writers
                    .submit(
                        &pool,
                        Op::Release {
                            ip,
                            pod_uid: pod_uid.clone(),
                        },
                        self.inner.config.request_timeout,
                    )
                    .await;
            }
        }
        status.current.ips = keep;
        status.current.uid = pod_uid.clone();
        status.current.node = self.inner.config.node_name.clone();
        ep.status = Some(status);
        let annotations = ep.metadata.annotations.get_or_insert_with(BTreeMap::new);
        annotations.insert(ANNO_CONTAINER_ID.to_owned(), args.container_id.clone());
        ep.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(LABEL_NODE.to_owned(), label_value(&self.inner.config.node_name));

        let has_nic = ep
            .status
            .as_ref()
            .is_some_and(|s| s.current.ips.iter().any(|d| d.nic == args.if_name));
        if has_nic {
            let name = ep.metadata.name.clone().unwrap_or_default();
            self.inner.metrics.api_write("endpoint");
            let written = endpoints
                .replace(&name, &PostParams::default(), &ep)
                .await
                .map_err(|e| kube_error("updating the SpiderEndpoint", e))?;
            return Ok(self.response(&written.status.unwrap_or_default()));
        }
        let fresh = self.allocate_fresh(pod, app, args, Some(&ep)).await?;
        let name = stickiness.endpoint_name(&args.pod_name).to_owned();
        match self
            .record(endpoints, Some(ep), pod, app, stickiness, &name, args, &fresh)
            .await
        {
            Ok(status) => Ok(self.response(&status)),
            Err(e) => {
                self.take_back(&pod_uid, &fresh.grants).await;
                Err(e.into_ipam())
            }
        }
    }

    fn response(&self, status: &SpiderEndpointStatus) -> IpamAddResponse {
        let config = &self.inner.config;
        let mut ips = Vec::new();
        let mut route_list = Vec::new();
        for d in &status.current.ips {
            for (version, address, pool, gateway) in [
                (4u8, &d.ipv4, &d.ipv4_pool, &d.ipv4_gateway),
                (6u8, &d.ipv6, &d.ipv6_pool, &d.ipv6_gateway),
            ] {
                let Some(address) = address else { continue };
                ips.push(IpConfig {
                    version,
                    address: address.clone(),
                    nic: d.nic.clone(),
                    ip_pool: pool.clone().unwrap_or_default(),
                    gateway: gateway.clone().unwrap_or_default(),
                    vlan: d.vlan.unwrap_or_default(),
                    mac: String::new(),
                    enable_gateway_detection: config.enable_gateway_detection && gateway.is_some(),
                    enable_ip_conflict_detection: config.enable_ip_conflict_detection,
                });
                if let Some(gw) = gateway
                    && d.clean_gateway != Some(true)
                {
                    let dst = if version == 4 { "0.0.0.0/0" } else { "::/0" };
                    route_list.push(Route {
                        if_name: d.nic.clone(),
                        dst: dst.to_owned(),
                        gw: gw.clone(),
                    });
                }
            }
        }
        for d in &status.current.ips {
            for r in &d.routes {
                route_list.push(Route {
                    if_name: d.nic.clone(),
                    dst: r.dst.clone(),
                    gw: r.gw.clone(),
                });
            }
        }
        IpamAddResponse {
            ips,
            routes: route_list,
            dns: None,
        }
    }

    /// Releases what an endpoint records (every interface) and deletes the endpoint.
    async fn release_endpoint(
        &self,
        endpoints: &Api<SpiderEndpoint>,
        ep: &SpiderEndpoint,
    ) -> Result<(), IpamError> {
        let status = ep.status.clone().unwrap_or_default();
        let uid = status.current.uid.clone();
        tracing::info!(
            endpoint = ep.metadata.name.as_deref().unwrap_or_default(),
            uid,
            interfaces = status.current.ips.len(),
            "releasing every address the endpoint records"
        );
        let mut jobs = Vec::new();
        for detail in &status.current.ips {
            for (ip, pool) in detail_addresses(detail) {
                let writers = self.inner.writers.clone();
                let op = Op::Release {
                    ip,
                    pod_uid: uid.clone(),
                };
                let timeout = self.inner.config.request_timeout;
                jobs.push(async move { (pool.clone(), writers.submit(&pool, op, timeout).await) });
            }
        }
        for (pool, result) in join_all(jobs).await {
            match result {
                Ok(Outcome::Released(false)) => {
                    tracing::info!(pool, uid, "the pool records no address of this pod any more");
                }
                Ok(_) | Err(WriteError::PoolGone(_)) => {}
                Err(e) => {
                    return Err(IpamError::Transient(format!(
                        "releasing from SpiderIPPool {pool}: {e}"
                    )));
                }
            }
        }
        let name = ep.metadata.name.clone().unwrap_or_default();
        if ep.metadata.finalizers.as_ref().is_some_and(|f| !f.is_empty()) {
            let patch = serde_json::json!({"metadata": {"finalizers": null, "resourceVersion": ep.metadata.resource_version}});
            self.inner.metrics.api_write("endpoint");
            match endpoints
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                Err(e) => return Err(kube_error("removing the SpiderEndpoint's finalizer", e)),
            }
        }
        self.inner.metrics.api_write("endpoint");
        match endpoints.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(kube_error("deleting the SpiderEndpoint", e)),
        }
    }

    /// CNI DEL.
    pub async fn del(&self, args: &IpamDelArgs) -> Result<(), IpamError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.inner.config.request_timeout, self.del_inner(args))
            .await
            .unwrap_or_else(|_| Err(IpamError::Transient("release did not finish in time".to_owned())));
        self.inner
            .metrics
            .release(started.elapsed(), result.as_ref().err().map(IpamError::reason));
        result
    }

    async fn del_inner(&self, args: &IpamDelArgs) -> Result<(), IpamError> {
        require(&[
            ("podNamespace (K8S_POD_NAMESPACE)", &args.pod_namespace),
            ("podName (K8S_POD_NAME)", &args.pod_name),
            ("containerID", &args.container_id),
        ])?;
        let (pod, stickiness) = self
            .pod_if_any(&args.pod_namespace, &args.pod_name, &args.pod_uid)
            .await?;
        let config = &self.inner.config;
        let endpoints: Api<SpiderEndpoint> = Api::namespaced(self.inner.client.clone(), &args.pod_namespace);
        let mut endpoint_name = stickiness.endpoint_name(&args.pod_name).to_owned();
        let mut guard = self
            .lock_for(&format!("{}/{endpoint_name}", args.pod_namespace))
            .lock_owned()
            .await;
        let mut found = endpoints
            .get_opt(&endpoint_name)
            .await
            .map_err(|e| kube_error("reading the SpiderEndpoint", e))?;
        if found.is_none()
            && pod.is_none()
            && config.enable_kubevirt
            && let Some(vm) = self
                .vm_endpoint_of_sandbox(&endpoints, &args.container_id)
                .await?
        {
            // A gone VM launcher pod: its endpoint is named after the VM; find it by the sandbox and
            // read it again under the VM's lock.
            drop(guard);
            endpoint_name = vm;
            guard = self
                .lock_for(&format!("{}/{endpoint_name}", args.pod_namespace))
                .lock_owned()
                .await;
            found = endpoints
                .get_opt(&endpoint_name)
                .await
                .map_err(|e| kube_error("reading the SpiderEndpoint", e))?;
        }
        let _guard = guard;
        let Some(ep) = found else {
            tracing::info!(endpoint = endpoint_name, "no SpiderEndpoint: nothing to release");
            return Ok(());
        };
        let status = ep.status.clone().unwrap_or_default();
        // The pod may be gone already: then its endpoint says whether it belonged to a StatefulSet.
        let stickiness = match (&pod, status.owner_controller_type.as_str()) {
            (None, "StatefulSet") if config.enable_statefulset => Stickiness::StatefulSet {
                ordinal: owner::statefulset_ordinal(&args.pod_name, &status.owner_controller_name)
                    .unwrap_or_default(),
                set: status.owner_controller_name.clone(),
            },
            (None, "VirtualMachine" | "VirtualMachineInstance") if config.enable_kubevirt => {
                Stickiness::KubeVirt {
                    vmi: endpoint_name.clone(),
                }
            }
            _ => stickiness,
        };
        let holder = ep
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNO_CONTAINER_ID));
        if holder.is_some_and(|h| h != &args.container_id) {
            tracing::info!(
                holder = holder.map(String::as_str).unwrap_or_default(),
                "DEL from a sandbox that no longer holds the addresses; nothing to release"
            );
            return Ok(());
        }
        let pod_uid = pod.as_ref().and_then(|p| p.metadata.uid.clone());
        let uid_mismatch = pod_uid.as_ref().is_some_and(|u| u != &status.current.uid)
            || (!args.pod_uid.is_empty() && args.pod_uid != status.current.uid);
        if uid_mismatch && !(stickiness.is_sticky() && pod_uid.is_none()) {
            tracing::info!(
                endpoint = endpoint_name,
                holder_uid = status.current.uid,
                "the addresses belong to another incarnation of the pod: nothing to release"
            );
            return Ok(());
        }
        if self
            .retained(&stickiness, pod.as_ref(), &args.pod_namespace)
            .await?
        {
            tracing::info!(
                endpoint = endpoint_name,
                "keeping the addresses of a StatefulSet member / KubeVirt VM"
            );
            return Ok(());
        }
        self.release_endpoint(&endpoints, &ep).await
    }

    /// The name of the KubeVirt VM endpoint whose addresses sandbox `container_id` holds.
    async fn vm_endpoint_of_sandbox(
        &self,
        endpoints: &Api<SpiderEndpoint>,
        container_id: &str,
    ) -> Result<Option<String>, IpamError> {
        let list = endpoints
            .list(&ListParams::default())
            .await
            .map_err(|e| kube_error("listing SpiderEndpoints", e))?;
        Ok(list
            .items
            .into_iter()
            .find(|ep| {
                ep.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANNO_CONTAINER_ID))
                    .map(String::as_str)
                    == Some(container_id)
                    && ep.status.as_ref().is_some_and(|s| {
                        matches!(
                            s.owner_controller_type.as_str(),
                            "VirtualMachine" | "VirtualMachineInstance"
                        )
                    })
            })
            .and_then(|ep| ep.metadata.name))
    }

    /// Whether a sticky owner still wants the addresses kept.
    async fn retained(
        &self,
        stickiness: &Stickiness,
        pod: Option<&Pod>,
        namespace: &str,
    ) -> Result<bool, IpamError> {
        match stickiness {
            Stickiness::None => Ok(false),
            Stickiness::StatefulSet { set, ordinal } => {
                // Kept while the StatefulSet exists, also for ordinals beyond `replicas`: a set scaled
                // down and up again gets its members' addresses back. Upstream releases on scale-down
                // (reference 4.4, open requests #3488/#3893); deleting the StatefulSet releases them.
                let _ = ordinal;
                let sets: Api<StatefulSet> = Api::namespaced(self.inner.client.clone(), namespace);
                let Some(sts) = sets
                    .get_opt(set)
                    .await
                    .map_err(|e| kube_error("reading the StatefulSet", e))?
                else {
                    return Ok(false);
                };
                Ok(sts.metadata.deletion_timestamp.is_none())
            }
            Stickiness::KubeVirt { vmi } => {
                let _ = pod;
                for kind in ["VirtualMachineInstance", "VirtualMachine"] {
                    if let Some(obj) = self.kubevirt(kind, namespace, vmi).await?
                        && obj.metadata.deletion_timestamp.is_none()
                    {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }

    async fn kubevirt(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<DynamicObject>, IpamError> {
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("kubevirt.io", "v1", kind));
        let api: Api<DynamicObject> = Api::namespaced_with(self.inner.client.clone(), namespace, &resource);
        match api.get_opt(name).await {
            Ok(obj) => Ok(obj),
            // KubeVirt not installed: there are no VMs.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(kube_error("reading KubeVirt objects", e)),
        }
    }

    /// The pod's top controller (Deployment through ReplicaSet, CronJob through Job, VM through VMI),
    /// falling back to the direct controller when a hop cannot be read.
    async fn top_controller(&self, pod: &Pod) -> AppRef {
        let Some(direct) = owner::controller_ref(pod) else {
            return owner::bare_pod_app(pod);
        };
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let as_app = |r: &OwnerReference| AppRef {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: namespace.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        };
        let parent = match (direct.kind.as_str(), direct.api_version.as_str()) {
            ("ReplicaSet", "apps/v1") => Api::<ReplicaSet>::namespaced(self.inner.client.clone(), &namespace)
                .get_opt(&direct.name)
                .await
                .ok()
                .flatten()
                .and_then(|rs| rs.metadata.owner_references)
                .and_then(|refs| {
                    refs.into_iter()
                        .find(|r| r.controller == Some(true) && r.kind == "Deployment")
                }),
            ("Job", "batch/v1") => Api::<Job>::namespaced(self.inner.client.clone(), &namespace)
                .get_opt(&direct.name)
                .await
                .ok()
                .flatten()
                .and_then(|job| job.metadata.owner_references)
                .and_then(|refs| {
                    refs.into_iter()
                        .find(|r| r.controller == Some(true) && r.kind == "CronJob")
                }),
            ("VirtualMachineInstance", "kubevirt.io/v1") => self
                .kubevirt("VirtualMachineInstance", &namespace, &direct.name)
                .await
                .ok()
                .flatten()
                .and_then(|vmi| vmi.metadata.owner_references)
                .and_then(|refs| {
                    refs.into_iter()
                        .find(|r| r.controller == Some(true) && r.kind == "VirtualMachine")
                }),
            _ => None,
        };
        as_app(parent.as_ref().unwrap_or(direct))
    }

    /// The pod, if it still exists, and what its owner means for its addresses (none when it is gone).
    /// `uid`, when the runtime names one, is the pod the caller expects: a cached pod with another UID
    /// is re-read.
    async fn pod_if_any(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<(Option<Pod>, Stickiness), IpamError> {
        // A pod bound to this node is in the cache (possibly a moment after it was deleted: its owner,
        // which is what matters here, is the same); one that is not is read, to be sure it is gone.
        let cached = self
            .inner
            .stores
            .pod_by_name(namespace, name)
            .filter(|p| uid.is_empty() || p.metadata.uid.as_deref() == Some(uid));
        let pod = match cached {
            Some(cached) => Some((*cached).clone()),
            None => {
                let pods: Api<Pod> = Api::namespaced(self.inner.client.clone(), namespace);
                pods.get_opt(name)
                    .await
                    .map_err(|e| kube_error("reading the pod", e))?
            }
        };
        let config = &self.inner.config;
        let stickiness = pod
            .as_ref()
            .map(|p| owner::stickiness(p, config.enable_statefulset, config.enable_kubevirt))
            .unwrap_or(Stickiness::None);
        Ok((pod, stickiness))
    }

    /// `DELETE /v1/ipam/ips`: release every address of a pod (after an address conflict).
    pub async fn release_all(&self, args: &IpamBatchDelArgs) -> Result<(), IpamError> {
        require(&[("podNamespace", &args.pod_namespace), ("podName", &args.pod_name)])?;
        let (_, stickiness) = self.pod_if_any(&args.pod_namespace, &args.pod_name, "").await?;
        if stickiness.is_sticky() && args.is_release_conflict_ips {
            return Err(IpamError::Forbidden(
                "refusing to release the retained addresses of a StatefulSet member or KubeVirt VM"
                    .to_owned(),
            ));
        }
        let endpoint_name = stickiness.endpoint_name(&args.pod_name).to_owned();
        let lock = self.lock_for(&format!("{}/{endpoint_name}", args.pod_namespace));
        let _guard = lock.lock().await;
        let endpoints: Api<SpiderEndpoint> = Api::namespaced(self.inner.client.clone(), &args.pod_namespace);
        let Some(ep) = endpoints
            .get_opt(&endpoint_name)
            .await
            .map_err(|e| kube_error("reading the SpiderEndpoint", e))?
        else {
            return Ok(());
        };
        let uid = ep
            .status
            .as_ref()
            .map(|s| s.current.uid.clone())
            .unwrap_or_default();
        if !args.pod_uid.is_empty() && args.pod_uid != uid {
            return Ok(());
        }
        self.release_endpoint(&endpoints, &ep).await
    }

    /// CNI GC for one network: releases the addresses of this node's attachments of `net_name` that the
    /// runtime no longer has. StatefulSet members' and VMs' addresses are left to the operator's reclaim,
    /// which knows whether they must be kept.
    pub async fn gc(&self, args: &IpamGcArgs) -> Result<IpamGcResponse, IpamError> {
        require(&[("netName", &args.net_name)])?;
        let endpoints: Api<SpiderEndpoint> = Api::all(self.inner.client.clone());
        let selector = format!("{LABEL_NODE}={}", label_value(&self.inner.config.node_name));
        let list = endpoints
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| kube_error("listing this node's SpiderEndpoints", e))?;
        let mut released = Vec::new();
        for ep in list.items {
            let status = ep.status.clone().unwrap_or_default();
            if matches!(
                status.owner_controller_type.as_str(),
                "StatefulSet" | "VirtualMachineInstance" | "VirtualMachine"
            ) || ep.metadata.owner_references.as_ref().is_none_or(|r| r.is_empty())
            {
                continue;
            }
            let annotations = ep.metadata.annotations.clone().unwrap_or_default();
            let Some(container) = annotations.get(ANNO_CONTAINER_ID) else {
                continue;
            };
            let networks: BTreeMap<String, String> = annotations
                .get(ANNO_NETWORKS)
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or_default();
            let ours: Vec<&String> = networks
                .iter()
                .filter(|(_, n)| *n == &args.net_name)
                .map(|(nic, _)| nic)
                .collect();
            if ours.is_empty() {
                continue;
            }
            let still_valid = ours.iter().any(|nic| {
                args.valid_attachments
                    .iter()
                    .any(|a| &a.container_id == container && &a.if_name == *nic)
            });
            if still_valid {
                continue;
            }
            let namespace = ep.metadata.namespace.clone().unwrap_or_default();
            let name = ep.metadata.name.clone().unwrap_or_default();
            let lock = self.lock_for(&format!("{namespace}/{name}"));
            let _guard = lock.lock().await;
            let api: Api<SpiderEndpoint> = Api::namespaced(self.inner.client.clone(), &namespace);
            // Re-read under the lock: an ADD may have just handed the endpoint to a new sandbox.
            let Some(fresh) = api
                .get_opt(&name)
                .await
                .map_err(|e| kube_error("reading a SpiderEndpoint", e))?
            else {
                continue;
            };
            let fresh_container = fresh
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNO_CONTAINER_ID));
            if fresh_container != Some(container) {
                continue;
            }
            tracing::info!(endpoint = %format!("{namespace}/{name}"), container, "CNI GC: releasing addresses the runtime no longer knows");
            self.release_endpoint(&api, &fresh).await?;
            released.extend(ours.into_iter().map(|nic| Attachment {
                container_id: container.clone(),
                if_name: nic.clone(),
            }));
        }
        Ok(IpamGcResponse { released })
    }

    /// `GET /v1/workloadendpoint`.
    pub async fn workload_endpoint(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<WorkloadEndpointStatus>, IpamError> {
        require(&[("podNamespace", namespace), ("podName", name)])?;
        let endpoints: Api<SpiderEndpoint> = Api::namespaced(self.inner.client.clone(), namespace);
        let Some(ep) = endpoints
            .get_opt(name)
            .await
            .map_err(|e| kube_error("reading the SpiderEndpoint", e))?
        else {
            return Ok(None);
        };
        let status = ep.status.unwrap_or_default();
        Ok(Some(WorkloadEndpointStatus {
            pod_namespace: namespace.to_owned(),
            pod_name: name.to_owned(),
            pod_uid: status.current.uid.clone(),
            node: status.current.node.clone(),
            interfaces: status
                .current
                .ips
                .iter()
                .map(|d| spiderpool_agent_api::InterfaceDetail {
                    interface: d.nic.clone(),
                    ipv4: d.ipv4.clone().unwrap_or_default(),
                    ipv6: d.ipv6.clone().unwrap_or_default(),
                    mac: String::new(),
                    vlan: d.vlan.unwrap_or_default(),
                    ipv4_pool: d.ipv4_pool.clone().unwrap_or_default(),
                    ipv6_pool: d.ipv6_pool.clone().unwrap_or_default(),
                    ipv4_gateway: d.ipv4_gateway.clone().unwrap_or_default(),
                    ipv6_gateway: d.ipv6_gateway.clone().unwrap_or_default(),
                    routes: d
                        .routes
                        .iter()
                        .map(|r| Route {
                            if_name: d.nic.clone(),
                            dst: r.dst.clone(),
                            gw: r.gw.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }))
    }
}

fn require(fields: &[(&str, &str)]) -> Result<(), IpamError> {
    let missing: Vec<&str> = fields
        .iter()
        .filter(|(_, v)| v.is_empty())
        .map(|(n, _)| *n)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(IpamError::BadRequest(format!("missing {}", missing.join(", "))))
    }
}

/// Node names are DNS subdomains (up to 253 characters); label values stop at 63.
fn label_value(node: &str) -> String {
    if node.len() <= 63 {
        node.to_owned()
    } else {
        node[..63].trim_end_matches(['.', '-']).to_owned()
    }
}

/// `(address, pool)` of each family an endpoint interface records.
fn detail_addresses(detail: &IPAllocationDetail) -> Vec<(IpAddr, String)> {
    let mut out = Vec::new();
    for (address, pool) in [
        (&detail.ipv4, &detail.ipv4_pool),
        (&detail.ipv6, &detail.ipv6_pool),
    ] {
        if let (Some(address), Some(pool)) = (address, pool)
            && let Some(ip) = address.split('/').next().and_then(|ip| ip.parse().ok())
        {
            out.push((ip, pool.clone()));
        }
    }
    out
}

/// Endpoint entries for fresh grants, one per interface, with the routes of each.
fn build_details(grants: &[Grant], extra: &[annotations::RouteItem]) -> Vec<IPAllocationDetail> {
    let mut by_nic: BTreeMap<&str, IPAllocationDetail> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    let mut allocated = Vec::new();
    for g in grants {
        let subnet: Option<ipnet::IpNet> = spiderpool_ipmath::parse_cidr(&g.pool.spec.subnet).ok();
        let prefix = subnet
            .map(|n| n.prefix_len())
            .unwrap_or(if g.family == IpFamily::V4 { 32 } else { 128 });
        let clean_gateway = g.clean_gateway;
        if !by_nic.contains_key(g.nic.as_str()) {
            order.push(&g.nic);
        }
        let d = by_nic.entry(&g.nic).or_insert_with(|| IPAllocationDetail {
            nic: g.nic.clone(),
            clean_gateway: Some(clean_gateway),
            ..Default::default()
        });
        let address = format!("{}/{prefix}", g.ip);
        let pool_name = g.pool.metadata.name.clone();
        let gateway = g.pool.spec.gateway.clone().filter(|gw| !gw.is_empty());
        match g.family {
            IpFamily::V4 => {
                d.ipv4 = Some(address);
                d.ipv4_pool = pool_name;
                d.ipv4_gateway = gateway;
            }
            IpFamily::V6 => {
                d.ipv6 = Some(address);
                d.ipv6_pool = pool_name;
                d.ipv6_gateway = gateway;
            }
        }
        if let Some(subnet) = subnet {
            allocated.push(Allocated {
                nic: &g.nic,
                subnet,
                gateway: None,
                pool_routes: &g.pool.spec.routes,
                clean_gateway,
            });
        }
    }
    let (route_list, unmatched) = routes::routes(&allocated, extra);
    for r in unmatched {
        tracing::warn!(
            dst = r.dst,
            gw = r.gw,
            "route from ipam.spidernet.io/routes matches no allocated subnet; dropped"
        );
    }
    for r in route_list {
        if let Some(d) = by_nic.get_mut(r.if_name.as_str()) {
            d.routes.push(PoolRoute { dst: r.dst, gw: r.gw });
        }
    }
    order.into_iter().filter_map(|nic| by_nic.remove(nic)).collect()
}
