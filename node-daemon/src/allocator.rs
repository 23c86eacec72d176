//! The allocator: the shell around [`crate::ipam`] that serves the IPAM API. Each request reads as
//! its steps: gather (the pod, its owner chain, its SpiderEndpoint, the candidate pools; from the
//! caches or the API), decide (the pure functions of [`crate::ipam`]), act (the pool writers record
//! the addresses, then the endpoint is written). [`add`] is CNI ADD, [`release`] CNI DEL and the
//! release of every address of a pod, [`gc`] CNI GC.
//!
//! Order of writes: an endpoint only ever claims addresses its pools record for its pod. The pools
//! are the truth and the endpoint points into them, so the pointer is written after what it points
//! to and removed before it:
//! - ADD records the addresses in the pools first (keyed by pod UID), then writes the SpiderEndpoint.
//!   If the endpoint write fails, the endpoint is read again and only what it does not claim goes
//!   back (a write whose answer was lost may have been applied; then the ADD answers from it); if it
//!   cannot be read, nothing goes back. If the daemon dies in between, the records carry the pod UID:
//!   the runtime's retried ADD gets the same addresses back, and the operator's reclaim frees them if
//!   the pod is gone.
//! - Release (DEL, GC, a stale endpoint of an earlier pod) deletes the endpoint first, then releases
//!   the records. The other order left, whenever the daemon died or the API server failed between
//!   the two writes, an endpoint claiming an address the pool had freed and soon gave to another pod
//!   (the chaos suite, tests/tests/chaos.rs, found one). Dying in between now leaves a record
//!   without an endpoint, which only costs the address for a while: the pod's next ADD gets it back
//!   (records are keyed by UID) and reclaim frees it once the pod is gone.

mod add;
mod gc;
mod release;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use spiderpool_agent_api::{IpamAddArgs, IpamAddResponse, WorkloadEndpointStatus};
use spiderpool_ipmath::IpFamily;
use spiderpool_schema::annotations::ip_version_label;
use spiderpool_schema::endpoint::SpiderEndpointStatus;
use spiderpool_schema::labels::{
    LABEL_INTERFACE, LABEL_IP_VERSION, LABEL_OWNER_APP_UID, LABEL_OWNER_SPIDER_SUBNET,
};
use spiderpool_schema::{SpiderEndpoint, SpiderIPPool};
use tokio::sync::Mutex;

use crate::api::ClusterApi;
use crate::clock;
use crate::config::Config;
use crate::endpoints::Endpoints;
use crate::error::{IpamError, WriteError};
use crate::ipam;
use crate::ipam::add::Wanted;
use crate::ipam::annotations::RouteItem;
use crate::ipam::candidates::{self, CandidateInput, NicRequest, Source};
use crate::ipam::endpoint::{self, Detection, Grant};
use crate::ipam::filter::PodScope;
use crate::ipam::owner::AppRef;
use crate::ipam::pick::{Op, Outcome};
use crate::metrics::Metrics;
use crate::store::Stores;
use crate::writer::PoolWriters;

/// The allocator. Cheap to clone.
#[derive(Clone)]
pub struct Allocator {
    inner: Arc<Inner>,
}

struct Inner {
    api: Arc<dyn ClusterApi>,
    config: Config,
    stores: Stores,
    writers: PoolWriters,
    endpoints: Endpoints,
    metrics: Metrics,
    /// Serialises requests for one endpoint (pod or VM) on this node: Multus adds a pod's interfaces
    /// one after the other, but a retried ADD may overlap the first.
    locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// What a fresh allocation gives: the addresses, and the pod's extra routes.
struct Fresh {
    grants: Vec<Grant>,
    extra_routes: Vec<RouteItem>,
}

impl Allocator {
    /// An allocator over started stores and the pool writers of this node.
    pub fn new(
        api: Arc<dyn ClusterApi>,
        config: Config,
        stores: Stores,
        writers: PoolWriters,
        metrics: Metrics,
    ) -> Self {
        Allocator {
            inner: Arc::new(Inner {
                endpoints: Endpoints::new(api.clone(), metrics.clone()),
                api,
                config,
                stores,
                writers,
                metrics,
                locks: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The caches.
    pub fn stores(&self) -> &Stores {
        &self.inner.stores
    }

    /// The lock of endpoint `<namespace>/<name>`.
    fn lock_for(&self, namespace: &str, name: &str) -> Arc<Mutex<()>> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|e| e.into_inner());
        if locks.len() > 4096 {
            // Drop locks nobody holds, so the map does not grow with every pod ever seen.
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        locks.entry(format!("{namespace}/{name}")).or_default().clone()
    }

    /// Runs a request's `work` in a task of its own and waits for it up to the request timeout.
    /// Past it the caller gets `late`, but the work goes on: dropped half-way, an ADD could leave an
    /// address recorded for its pod with no SpiderEndpoint naming it, which the DEL that follows
    /// would not find (it waits for the endpoint's lock, so it comes after the work).
    async fn past_its_deadline<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, IpamError>> + Send + 'static,
        late: impl FnOnce() -> IpamError,
    ) -> Result<T, IpamError> {
        let task = tokio::spawn(work);
        match tokio::time::timeout(self.inner.config.request_timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(failed)) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
            Ok(Err(_cancelled)) => Err(IpamError::Timeout("the daemon is stopping".to_owned())),
            Err(_elapsed) => Err(late()),
        }
    }

    /// The CNI answer an endpoint gives.
    fn response(&self, status: &SpiderEndpointStatus) -> IpamAddResponse {
        endpoint::response(
            status,
            Detection {
                ip_conflict: self.inner.config.enable_ip_conflict_detection,
                gateway: self.inner.config.enable_gateway_detection,
            },
        )
    }

    /// The pod an ADD or DEL is for: from the cache when it has it (with UID `uid`, if given), else
    /// from the API server.
    async fn pod(&self, namespace: &str, name: &str, uid: &str) -> Result<Option<Pod>, IpamError> {
        let cached = self
            .inner
            .stores
            .pod_by_name(namespace, name)
            .filter(|p| uid.is_empty() || p.metadata.uid.as_deref() == Some(uid));
        match cached {
            Some(cached) => Ok(Some((*cached).clone())),
            None => self
                .inner
                .api
                .get_pod(namespace, name)
                .await
                .map_err(IpamError::api("reading the pod")),
        }
    }

    /// Allocates for the interfaces the candidate rules name that `already` does not record:
    /// gathers what the rules read from the caches, decides the interfaces and, per interface and
    /// family, the pools to try (gathered from the cache or the API), and has the pool writers
    /// allocate, all interfaces at once. All or nothing: if one fails, what the others got goes back
    /// before the error is reported.
    async fn allocate(
        &self,
        pod: &Pod,
        app: &AppRef,
        args: &IpamAddArgs,
        already: &[&str],
    ) -> Result<Fresh, IpamError> {
        let config = &self.inner.config;
        let stores = &self.inner.stores;
        // Gather: what the candidate rules read.
        let pod_annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let (namespace_labels, namespace_annotations) = stores.namespace_meta(&args.pod_namespace);
        let (all_v4, default_v4) = stores.pool_names(IpFamily::V4);
        let (all_v6, default_v6) = stores.pool_names(IpFamily::V6);
        let mut labels = pod.metadata.labels.clone().unwrap_or_default();
        labels.extend(app.affinity_labels());
        let node_labels = stores.node_labels();
        // Decide: the interfaces to allocate and their candidates.
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
        let Wanted {
            source,
            nics,
            extra_routes,
        } = ipam::add::wanted(chosen, &pod_annotations, already, &args.if_name)?;
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
        // Act, per interface and family.
        let mut jobs = Vec::new();
        for nic in &nics {
            for family in [IpFamily::V4, IpFamily::V6] {
                if !nic.pools(family).is_empty() {
                    jobs.push(self.allocate_one(nic, family, source, app, &scope, &claim));
                }
            }
        }
        let mut grants = Vec::new();
        let mut first_error = None;
        for result in join_all(jobs).await {
            match result {
                Ok(grant) => grants.push(grant),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            self.take_back(&claim.1, &grants).await;
            return Err(e);
        }
        Ok(Fresh { grants, extra_routes })
    }

    /// One interface and family: gathers its candidate pools (the automatic pools of SpiderSubnet
    /// candidates once they appear), decides which may serve and in which order, and asks their
    /// writers in that order until one gives an address.
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
        let mut found = Vec::with_capacity(names.len());
        for name in names {
            let pool = self.pool(&name).await?;
            found.push((name, pool));
        }
        let eligible = ipam::add::eligible_pools(&found, family, &nic.nic, scope)?;
        let mut exhausted = Vec::new();
        for pool in eligible {
            let served_by = self
                .inner
                .stores
                .serve_order(Arc::clone(&pool), &self.inner.config.node_name);
            let sharded = spiderpool_schema::shards::is_sharded(&pool.metadata);
            if served_by.is_empty() {
                exhausted.push(format!(
                    "{}: is served through shards and none is made yet (the operator makes them)",
                    pool.metadata.name.as_deref().unwrap_or_default()
                ));
            }
            // A shard whose free addresses are all other nodes' reservations is passed over for
            // the next one; only when every shard is so is the first of them waited for, as a
            // pool is.
            let mut wait_in = None;
            for serving in served_by {
                let name = serving.metadata.name.clone().unwrap_or_default();
                let outcome = self.ask_pool(&name, claim, !sharded).await;
                if sharded && matches!(outcome, Ok(Outcome::Wait(_))) {
                    wait_in.get_or_insert_with(|| (name.clone(), Arc::clone(&serving)));
                    continue;
                }
                if let Some(ip) = judge(&mut exhausted, &name, outcome)? {
                    return Ok(self.grant(nic, family, ip, &name, serving));
                }
            }
            if let Some((name, serving)) = wait_in {
                let outcome = self.ask_pool(&name, claim, true).await;
                if let Some(ip) = judge(&mut exhausted, &name, outcome)? {
                    return Ok(self.grant(nic, family, ip, &name, serving));
                }
            }
        }
        Err(IpamError::Exhausted(format!(
            "every {family} pool of {} is exhausted: {}",
            nic.nic,
            exhausted.join("; ")
        )))
    }

    /// Asks pool `name`'s writer for an address for `claim` (`may_wait`: whether to wait for other
    /// nodes' reservations when nothing else is free, or answer [`Outcome::Wait`] at once).
    async fn ask_pool(
        &self,
        name: &str,
        claim: &(String, String),
        may_wait: bool,
    ) -> Result<Outcome, WriteError> {
        let op = Op::Allocate {
            pod: claim.0.clone(),
            pod_uid: claim.1.clone(),
        };
        let timeout = self.inner.config.request_timeout;
        if may_wait {
            self.inner.writers.submit(name, op, timeout).await
        } else {
            self.inner.writers.submit_without_waiting(name, op, timeout).await
        }
    }

    /// The grant of `ip` from pool `name` (`found`: the pool as the candidate step saw it).
    fn grant(
        &self,
        nic: &NicRequest,
        family: IpFamily,
        ip: IpAddr,
        name: &str,
        found: Arc<SpiderIPPool>,
    ) -> Grant {
        Grant {
            nic: nic.nic.clone(),
            family,
            ip,
            pool: self.inner.stores.pool(name).unwrap_or(found),
            clean_gateway: nic.clean_gateway,
        }
    }

    /// A pool from the cache, or from the API server when the cache has not seen it yet (a pool
    /// created just before the pod).
    async fn pool(&self, name: &str) -> Result<Option<Arc<SpiderIPPool>>, IpamError> {
        if let Some(pool) = self.inner.stores.pool(name) {
            return Ok(Some(pool));
        }
        Ok(self
            .inner
            .api
            .get_pool(name)
            .await
            .map_err(IpamError::api("reading a SpiderIPPool"))?
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
        let deadline = clock::deadline_in(self.inner.config.auto_pool_wait);
        loop {
            let found = self.inner.stores.pools().into_iter().find(|pool| {
                let labels = pool.metadata.labels.clone().unwrap_or_default();
                labels.get(LABEL_OWNER_APP_UID) == Some(&app.uid)
                    && labels.get(LABEL_INTERFACE).map(String::as_str) == Some(nic)
                    && labels.get(LABEL_IP_VERSION).map(String::as_str) == Some(version)
                    && labels.get(LABEL_OWNER_SPIDER_SUBNET).is_none_or(|s| s == subnet)
            });
            if let Some(pool) = found {
                return Ok(pool.metadata.name.clone().unwrap_or_default());
            }
            if clock::now() >= deadline {
                return Err(IpamError::Timeout(format!(
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
            let name = grant.pool_name();
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

    /// Releases what an endpoint records (every interface): deletes the endpoint, then releases the
    /// addresses from their pools (the order is the module documentation's). When the delete fails,
    /// the endpoint is read again: if it is gone after all (a lost answer), the release goes on;
    /// otherwise nothing is released, and the DEL fails for the runtime to retry.
    async fn release_endpoint(&self, ep: &SpiderEndpoint) -> Result<(), IpamError> {
        let status = ep.status.clone().unwrap_or_default();
        let uid = status.current.uid.clone();
        let namespace = ep.metadata.namespace.as_deref().unwrap_or_default();
        let name = ep.metadata.name.as_deref().unwrap_or_default();
        tracing::info!(
            endpoint = name,
            uid,
            interfaces = status.current.ips.len(),
            "releasing every address the endpoint records"
        );
        if let Err(e) = self.inner.endpoints.delete(ep).await {
            let gone = self
                .inner
                .endpoints
                .get(namespace, name)
                .await
                .is_ok_and(|found| endpoint::is_gone(ep, found.as_ref()));
            if !gone {
                return Err(e);
            }
            tracing::info!(endpoint = name, error = %e, "the endpoint delete failed but was applied");
        }
        let jobs = endpoint::status_addresses(&status).into_iter().map(|(ip, pool)| {
            let op = Op::Release {
                ip,
                pod_uid: uid.clone(),
            };
            let writers = self.inner.writers.clone();
            let timeout = self.inner.config.request_timeout;
            async move {
                let result = writers.submit(&pool, op, timeout).await;
                (pool, ip, result)
            }
        });
        let mut first_error = None;
        for (pool, ip, result) in join_all(jobs).await {
            match result {
                Ok(Outcome::Released(false)) => {
                    tracing::info!(pool, uid, "the pool records no address of this pod any more");
                }
                Ok(_) | Err(WriteError::PoolGone(_)) => {}
                Err(e) => {
                    // The endpoint is gone, so a retried DEL finds nothing to release: the record
                    // stays with the pod's UID (its next ADD gets it back, reclaim frees it once the
                    // pod is gone).
                    tracing::warn!(pool, %ip, uid, error = %e, "could not release an address of a deleted endpoint; reclaim will");
                    first_error.get_or_insert(IpamError::PoolWrite(e));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// `GET /v1/workloadendpoint`.
    pub async fn workload_endpoint(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<WorkloadEndpointStatus>, IpamError> {
        ipam::add::missing(&[("podNamespace", namespace), ("podName", name)])
            .map_err(|e| IpamError::BadRequest(e.to_string()))?;
        let Some(ep) = self.inner.endpoints.get(namespace, name).await? else {
            return Ok(None);
        };
        let status = ep.status.unwrap_or_default();
        Ok(Some(endpoint::workload_status(namespace, name, &status)))
    }
}

/// What an allocation asked of pool `name` gives: the address, or `None` with the reason added to
/// `exhausted` (the next pool is tried); a deadline passed is the ADD's error.
fn judge(
    exhausted: &mut Vec<String>,
    name: &str,
    outcome: Result<Outcome, WriteError>,
) -> Result<Option<IpAddr>, IpamError> {
    match outcome {
        Ok(Outcome::Allocated(ip)) => Ok(Some(ip)),
        Ok(Outcome::Exhausted(reason) | Outcome::Wait(reason)) => {
            exhausted.push(format!("{name}: {reason}"));
            Ok(None)
        }
        Ok(other) => {
            exhausted.push(format!("{name}: unexpected outcome {other:?}"));
            Ok(None)
        }
        Err(e @ WriteError::Timeout { .. }) => Err(IpamError::PoolWrite(e)),
        Err(e) => {
            exhausted.push(e.to_string());
            Ok(None)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
