//! CNI ADD: gather the pod, its owner chain and its SpiderEndpoint; decide what the endpoint means
//! ([`add::judge_endpoint`]); act: answer a repeated ADD from the endpoint, take a sticky pod's
//! addresses over, or allocate and write the endpoint.
//!
//! Most pods are new: their endpoint is created without reading first (the optimistic create), and
//! read only when one exists (a retried ADD, the pod's next interface, a stale endpoint of an earlier
//! pod of the same name); then the ADD decides again with the endpoint in hand. Sticky pods usually
//! have one, so it is read first.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use spiderpool_agent_api::{IpamAddArgs, IpamAddResponse};
use spiderpool_schema::SpiderEndpoint;
use spiderpool_schema::endpoint::SpiderEndpointStatus;

use super::{Allocator, Fresh};
use crate::clock;
use crate::endpoints::CreateError;
use crate::error::{IpamError, WriteError};
use crate::ipam::add::{self, AddError, EndpointVerdict};
use crate::ipam::endpoint::{self, Grant, NewEndpoint};
use crate::ipam::owner::{self, AppRef, Stickiness};
use crate::ipam::pick::{Op, Outcome};
use crate::owner_chain;

/// How long a sticky pod's new incarnation waits for the node that handed its retained address out
/// of a reservation to record it for the previous incarnation (agents record handouts within 2 s).
const REBIND_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl From<AddError> for IpamError {
    fn from(e: AddError) -> Self {
        match e {
            AddError::Missing(_) => IpamError::BadRequest(e.to_string()),
            AddError::PodNotAlive(why) => IpamError::PodNotAlive(why),
            AddError::Annotation(a) => IpamError::Annotation(a),
            AddError::NoCandidate(why) => IpamError::NoCandidate(why),
        }
    }
}

/// What an ADD knows about the pod.
struct Facts<'a> {
    args: &'a IpamAddArgs,
    pod: Pod,
    pod_uid: String,
    stickiness: Stickiness,
    endpoint_name: String,
    app: AppRef,
}

impl Allocator {
    /// CNI ADD.
    pub async fn add(&self, args: &IpamAddArgs) -> Result<IpamAddResponse, IpamError> {
        let started = clock::now();
        let work = {
            let (allocator, args) = (self.clone(), args.clone());
            async move { allocator.add_inner(&args).await }
        };
        let result = self
            .past_its_deadline(work, || {
                IpamError::Timeout(format!(
                    "allocation did not finish within {:?}",
                    self.inner.config.request_timeout
                ))
            })
            .await;
        self.inner.metrics.allocation(
            clock::now().duration_since(started),
            result.as_ref().err().map(IpamError::reason),
        );
        result
    }

    async fn add_inner(&self, args: &IpamAddArgs) -> Result<IpamAddResponse, IpamError> {
        add::check_args(args)?;
        // Gather: the pod (the cache has it when its UID is the one the runtime names).
        let pod = match self
            .inner
            .stores
            .pod(&args.pod_namespace, &args.pod_name, &args.pod_uid)
        {
            Some(cached) => (*cached).clone(),
            None => self
                .inner
                .api
                .get_pod(&args.pod_namespace, &args.pod_name)
                .await
                .map_err(IpamError::api("reading the pod"))?
                .ok_or_else(|| {
                    IpamError::PodNotAlive(format!(
                        "pod {}/{} does not exist",
                        args.pod_namespace, args.pod_name
                    ))
                })?,
        };
        add::check_pod(&pod, args)?;
        let config = &self.inner.config;
        let stickiness = owner::stickiness(&pod, config.enable_statefulset, config.enable_kubevirt);
        let endpoint_name = stickiness.endpoint_name(&args.pod_name).to_owned();
        let lock = self.lock_for(&args.pod_namespace, &endpoint_name);
        let _guard = lock.lock().await;
        // …its owner chain…
        let app = owner_chain::top_controller(self.inner.api.as_ref(), &pod).await;
        let facts = Facts {
            args,
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
            pod,
            stickiness,
            endpoint_name,
            app,
        };
        // …and its endpoint (not read for a new pod: see the module documentation).
        let mut known: Option<Option<SpiderEndpoint>> = if facts.stickiness.is_sticky() {
            Some(
                self.inner
                    .endpoints
                    .get(&args.pod_namespace, &facts.endpoint_name)
                    .await?,
            )
        } else {
            None
        };
        loop {
            let optimistic = known.is_none();
            let endpoint = known.take().flatten();
            // Decide.
            let verdict = add::judge_endpoint(
                endpoint.as_ref().and_then(|ep| ep.status.as_ref()),
                &facts.pod_uid,
                &args.if_name,
                facts.stickiness.is_sticky(),
            );
            // Act.
            let existing = match (verdict, endpoint) {
                (EndpointVerdict::Repeat, Some(ep)) => {
                    let stale = self.stale_addresses(&facts, &ep).await?;
                    if stale.is_empty() {
                        self.inner
                            .endpoints
                            .note_container(&ep, &args.container_id)
                            .await?;
                        return Ok(self.response(&ep.status.unwrap_or_default()));
                    }
                    for address in &stale {
                        self.inner.metrics.ambiguous_claim("endpoints");
                        tracing::error!(
                            endpoint = facts.endpoint_name,
                            ip = %address.ip,
                            pool = address.pool,
                            why = address.why,
                            "the pod's SpiderEndpoint records an address its pool does not hold for it; \
                             allocating the interface afresh and leaving the pool's records as they are"
                        );
                    }
                    Some(endpoint::without_interface(ep, &args.if_name))
                }
                (EndpointVerdict::TakeOver, Some(ep)) => return self.take_over(&facts, ep).await,
                (EndpointVerdict::ReplaceStale, Some(ep)) => {
                    let stale_uid = ep.status.as_ref().map(|s| s.current.uid.clone());
                    tracing::info!(
                        endpoint = facts.endpoint_name,
                        ?stale_uid,
                        "removing a stale SpiderEndpoint"
                    );
                    self.release_endpoint(&ep).await?;
                    None
                }
                (EndpointVerdict::Extend, Some(ep)) => Some(ep),
                (_, _) => None,
            };
            let already: Vec<String> = existing
                .as_ref()
                .and_then(|ep| ep.status.as_ref())
                .map(|s| s.current.ips.iter().map(|d| d.nic.clone()).collect())
                .unwrap_or_default();
            let already: Vec<&str> = already.iter().map(String::as_str).collect();
            let fresh = self.allocate(&facts.pod, &facts.app, args, &already).await?;
            match self.record(&facts, existing, &fresh).await {
                Ok(status) => return Ok(self.response(&status)),
                Err(CreateError::Exists) if optimistic => {
                    // Give back what this attempt took beyond what the existing endpoint records for
                    // this pod (a retried ADD gets the same addresses again), then decide again with
                    // the endpoint in hand.
                    let found = self
                        .inner
                        .endpoints
                        .get(&args.pod_namespace, &facts.endpoint_name)
                        .await?;
                    let recorded: Vec<(IpAddr, String)> = found
                        .as_ref()
                        .and_then(|ep| ep.status.as_ref())
                        .filter(|status| status.current.uid == facts.pod_uid)
                        .map(endpoint::status_addresses)
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
                    self.take_back(&facts.pod_uid, &unrecorded).await;
                    known = Some(found);
                }
                Err(e) => {
                    let status = self.settle_failed_write(&facts, &fresh, e).await?;
                    return Ok(self.response(&status));
                }
            }
        }
    }

    /// An endpoint write of this ADD failed (`error`): reads the endpoint again and gives back only
    /// the fresh grants it does not claim ([`endpoint::unclaimed`]). When the read shows the write was
    /// applied (its answer was lost), the ADD is answered from it. When the endpoint cannot be read,
    /// nothing is given back: the records are keyed by the pod's UID, so its retried ADD gets them
    /// again and reclaim frees them once it is gone, whereas an endpoint claiming a freed address
    /// would let it be handed out twice.
    async fn settle_failed_write(
        &self,
        facts: &Facts<'_>,
        fresh: &Fresh,
        error: CreateError,
    ) -> Result<SpiderEndpointStatus, IpamError> {
        let error = match error {
            CreateError::Exists => {
                IpamError::Timeout("the SpiderEndpoint was created concurrently; retry".to_owned())
            }
            CreateError::Failed(e) => e,
        };
        let name = facts.endpoint_name.as_str();
        let grants = &fresh.grants;
        match self.inner.endpoints.get(&facts.args.pod_namespace, name).await {
            Ok(found)
                if endpoint::is_written(found.as_ref(), &facts.pod_uid, &facts.args.container_id, grants) =>
            {
                tracing::info!(endpoint = name, error = %error, "the endpoint write failed but was applied; answering from it");
                Ok(found.and_then(|ep| ep.status).unwrap_or_default())
            }
            Ok(found) => {
                let unclaimed = endpoint::unclaimed(found.as_ref(), grants);
                if unclaimed.len() < grants.len() {
                    tracing::warn!(
                        endpoint = name,
                        kept = grants.len() - unclaimed.len(),
                        "the endpoint claims addresses of a failed write; keeping them recorded"
                    );
                }
                self.take_back(&facts.pod_uid, &unclaimed).await;
                Err(error)
            }
            Err(read) => {
                tracing::warn!(
                    endpoint = name,
                    error = %read,
                    "cannot tell whether the failed endpoint write was applied; keeping the addresses \
                     recorded for the pod (its next ADD gets them again, reclaim frees them once it is gone)"
                );
                Err(error)
            }
        }
    }

    /// The addresses of the interface being added that the pod's endpoint records but their pools
    /// do not hold for the pod ([`add::stale_addresses`]): judged from the watch cache, and when that
    /// finds any, confirmed from pools read afresh (the cache may lag a write made for the pod).
    async fn stale_addresses(
        &self,
        facts: &Facts<'_>,
        ep: &SpiderEndpoint,
    ) -> Result<Vec<add::StaleAddress>, IpamError> {
        let Some(detail) = ep
            .status
            .as_ref()
            .and_then(|s| s.current.ips.iter().find(|d| d.nic == facts.args.if_name))
        else {
            return Ok(Vec::new());
        };
        let node = &self.inner.config.node_name;
        let writers = &self.inner.writers;
        let writer = |pool: &str, ip: &IpAddr| writers.holds(pool, *ip, &facts.pod_uid);
        let cached = add::stale_addresses(
            detail,
            &facts.pod_uid,
            node,
            |pool| self.inner.stores.pool(pool),
            writer,
        );
        if cached.is_empty() {
            return Ok(cached);
        }
        let mut fresh = std::collections::HashMap::new();
        for address in &cached {
            if !fresh.contains_key(&address.pool) {
                let pool = self
                    .inner
                    .api
                    .get_pool(&address.pool)
                    .await
                    .map_err(IpamError::api("reading a SpiderIPPool"))?;
                fresh.insert(address.pool.clone(), pool.map(std::sync::Arc::new));
            }
        }
        Ok(add::stale_addresses(
            detail,
            &facts.pod_uid,
            node,
            |pool| fresh.get(pool).cloned().flatten(),
            writer,
        ))
    }

    /// Writes the endpoint with the fresh grants: adds the interfaces to the pod's endpoint
    /// (`existing`), or creates it.
    async fn record(
        &self,
        facts: &Facts<'_>,
        existing: Option<SpiderEndpoint>,
        fresh: &Fresh,
    ) -> Result<SpiderEndpointStatus, CreateError> {
        let args = facts.args;
        let (details, unmatched) = endpoint::build_details(&fresh.grants, &fresh.extra_routes);
        for r in unmatched {
            tracing::warn!(
                dst = r.dst,
                gw = r.gw,
                "route from ipam.spidernet.io/routes matches no allocated subnet; dropped"
            );
        }
        match existing {
            Some(mut ep) => {
                endpoint::extend_endpoint(&mut ep, details, &args.container_id, &args.net_name);
                let status = ep.status.clone().unwrap_or_default();
                self.inner
                    .endpoints
                    .replace(&ep)
                    .await
                    .map_err(CreateError::Failed)?;
                Ok(status)
            }
            None => {
                let ep = endpoint::new_endpoint(NewEndpoint {
                    namespace: &args.pod_namespace,
                    name: &facts.endpoint_name,
                    pod_name: &args.pod_name,
                    pod_uid: &facts.pod_uid,
                    node: &self.inner.config.node_name,
                    app: &facts.app,
                    sticky: facts.stickiness.is_sticky(),
                    container_id: &args.container_id,
                    net_name: &args.net_name,
                    details,
                });
                let status = ep.status.clone().unwrap_or_default();
                self.inner.endpoints.create(&ep).await?;
                Ok(status)
            }
        }
    }

    /// A sticky pod's new incarnation takes over the addresses its endpoint records (StatefulSet pod
    /// recreated, VM restarted or migrated). An address whose pool is no longer a usable candidate, or
    /// that someone else took meanwhile, is released and the interface allocated afresh.
    async fn take_over(
        &self,
        facts: &Facts<'_>,
        mut ep: SpiderEndpoint,
    ) -> Result<IpamAddResponse, IpamError> {
        let args = facts.args;
        let status = ep.status.take().unwrap_or_default();
        let previous_uid = status.current.uid.clone();
        let claim_pod = format!("{}/{}", args.pod_namespace, args.pod_name);
        let mut refused = Vec::new();
        for (index, ip, pool) in add::retained_addresses(&status) {
            let op = Op::Rebind {
                ip,
                previous_uid: previous_uid.clone(),
                pod: claim_pod.clone(),
                pod_uid: facts.pod_uid.clone(),
            };
            let deadline = self.inner.config.request_timeout.min(REBIND_WAIT);
            match self.inner.writers.submit(&pool, op, deadline).await {
                Ok(Outcome::Rebound) => {}
                Ok(other) => {
                    tracing::info!(pool, %ip, outcome = ?other, "a retained address cannot be kept; allocating afresh");
                    refused.push(index);
                }
                Err(WriteError::Timeout {
                    last_error,
                    waited_for_reservations: true,
                    ..
                }) => {
                    // The node whose reservation the previous incarnation was handed did not record
                    // it for that pod in time (its agent is gone?): keeping the address would stall
                    // this pod indefinitely.
                    tracing::warn!(pool, %ip, why = last_error, "a retained address is still a node's reservation; allocating afresh");
                    refused.push(index);
                }
                Err(e @ WriteError::Timeout { .. }) => return Err(IpamError::PoolWrite(e)),
                Err(e) => {
                    tracing::info!(pool, %ip, error = %e, "a retained address cannot be kept; allocating afresh");
                    refused.push(index);
                }
            }
        }
        let (keep, dropped) = add::split_rebound(status.current.ips.clone(), &refused);
        ep.status = Some(status);
        endpoint::take_over_endpoint(
            &mut ep,
            keep,
            &facts.pod_uid,
            &self.inner.config.node_name,
            &args.container_id,
        );
        let has_nic = ep
            .status
            .as_ref()
            .is_some_and(|s| s.current.ips.iter().any(|d| d.nic == args.if_name));
        let written = if has_nic {
            self.inner
                .endpoints
                .replace(&ep)
                .await?
                .status
                .unwrap_or_default()
        } else {
            let already: Vec<String> = ep
                .status
                .as_ref()
                .map(|s| s.current.ips.iter().map(|d| d.nic.clone()).collect())
                .unwrap_or_default();
            let already: Vec<&str> = already.iter().map(String::as_str).collect();
            let fresh = self.allocate(&facts.pod, &facts.app, args, &already).await?;
            match self.record(facts, Some(ep), &fresh).await {
                Ok(status) => status,
                Err(e) => self.settle_failed_write(facts, &fresh, e).await?,
            }
        };
        // Only now that the endpoint no longer claims the dropped addresses may they go.
        for detail in &dropped {
            for (ip, pool) in endpoint::detail_addresses(detail) {
                let op = Op::Release {
                    ip,
                    pod_uid: facts.pod_uid.clone(),
                };
                let _ = self
                    .inner
                    .writers
                    .submit(&pool, op, self.inner.config.request_timeout)
                    .await;
            }
        }
        Ok(self.response(&written))
    }
}
