//! The SpiderIPPool controller (upstream's IPPool informer): keeps `status.totalIPCount`
//! (`ips − excludeIPs`) and `status.allocatedIPCount` (records in `allocatedIPs`) true, removes the
//! finalizer of a terminating pool once nothing is allocated from it, and deletes automatic pools whose
//! application is gone (label `ipam.spidernet.io/ippool-reclaim=true`).
//!
//! The node daemon writes `status.allocatedIPs` concurrently. This controller never rewrites that field:
//! it patches only the two counts, with the resourceVersion it read as a precondition, so a count is
//! never written for records that changed in between (409 -> requeue). [`update_allocations`] is the
//! read-modify-write helper the reclaim controller uses to remove records.
//!
//! Pure parts: [`total_ip_count`], [`count_patch`], [`finalizer_patch`], [`is_orphaned`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use spiderpool_ipmath::{IpFamily, IpSet};
use spiderpool_schema::annotations::AppRef;
use spiderpool_schema::ippool::PoolIPAllocation;
use spiderpool_schema::labels::LABEL_IPPOOL_RECLAIM;
use spiderpool_schema::pool_addresses::PoolAddressError;
use spiderpool_schema::shards;
use spiderpool_schema::{FINALIZER, SpiderIPPool, SpiderIPPoolSpec};

use super::cache::SharedCache;
use super::pool_shards;

/// How the IPPool controller runs.
#[derive(Debug, Clone)]
pub struct IPPoolControllerConfig {
    /// Every pool is reconciled again after this long even without a change (upstream: 300 s).
    pub resync: Duration,
    /// Delay before retrying a pool whose reconcile failed (upstream: 5 s).
    pub retry_delay: Duration,
}

impl Default for IPPoolControllerConfig {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(300),
            retry_delay: Duration::from_secs(5),
        }
    }
}

/// What can go wrong reconciling a pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The pool's addresses do not parse (the webhook should have refused them).
    #[error("pool {pool}: {source}")]
    BadSpec {
        /// Pool name.
        pool: String,
        /// Why.
        #[source]
        source: PoolAddressError,
    },
    /// `status.allocatedIPs` is not the JSON upstream writes.
    #[error("pool {pool}: status.allocatedIPs is not a JSON map of IP to {{pod, podUid}}: {source}")]
    BadAllocations {
        /// Pool name.
        pool: String,
        /// Decoder error.
        source: serde_json::Error,
    },
    /// The API server refused or failed a request.
    #[error("pool {pool}: {action}: {source}")]
    Kube {
        /// Pool name.
        pool: String,
        /// What we tried.
        action: &'static str,
        /// The client error.
        source: kube::Error,
    },
    /// A sharded pool's shards cannot be made or kept.
    #[error(transparent)]
    Shards(Box<super::pool_shards::ShardsError>),
    /// Still conflicting after every retry.
    #[error("pool {pool}: still conflicting after {attempts} attempts; will retry")]
    Conflict {
        /// Pool name.
        pool: String,
        /// Attempts made.
        attempts: u32,
    },
}

/// Family of a pool ([`SpiderIPPoolSpec::family`]).
pub fn pool_family(name: &str, spec: &SpiderIPPoolSpec) -> Result<IpFamily, PoolError> {
    spec.family().ok_or_else(|| PoolError::BadSpec {
        pool: name.to_string(),
        source: PoolAddressError::UnknownFamily(spec.subnet.clone()),
    })
}

/// The addresses a pool can hand out ([`SpiderIPPoolSpec::usable_addresses`]).
pub fn usable_ips(name: &str, spec: &SpiderIPPoolSpec) -> Result<IpSet, PoolError> {
    spec.usable_addresses().map_err(|source| PoolError::BadSpec {
        pool: name.to_string(),
        source,
    })
}

/// `status.totalIPCount`: the number of addresses in `ips − excludeIPs` (saturating at `i64::MAX`).
pub fn total_ip_count(name: &str, spec: &SpiderIPPoolSpec) -> Result<i64, PoolError> {
    Ok(i64::try_from(usable_ips(name, spec)?.len()).unwrap_or(i64::MAX))
}

/// The status merge patch that makes the counts true, or `None` when they already are. It carries the
/// resourceVersion the counts were computed from, so the API server refuses it (409) if the records
/// changed since.
pub fn count_patch(pool: &SpiderIPPool, total: Option<i64>, allocated: i64) -> Option<serde_json::Value> {
    let status = pool.status.clone().unwrap_or_default();
    let total_changed = total.is_some() && status.total_ip_count != total;
    let allocated_changed = status.allocated_ip_count != Some(allocated);
    if !total_changed && !allocated_changed {
        return None;
    }
    let mut counts = serde_json::Map::new();
    if total_changed {
        counts.insert("totalIPCount".into(), json!(total));
    }
    if allocated_changed {
        counts.insert("allocatedIPCount".into(), json!(allocated));
    }
    Some(json!({
        "metadata": {"resourceVersion": pool.resource_version()},
        "status": counts,
    }))
}

/// The metadata merge patch that removes our finalizer from a terminating object (guarded by its
/// resourceVersion), or `None` when there is nothing to remove. `may_release` says whether the object
/// is free to go (for a pool: no allocations left).
pub fn finalizer_patch<K: Resource>(obj: &K, may_release: bool) -> Option<serde_json::Value> {
    let meta = obj.meta();
    let finalizers = meta.finalizers.clone().unwrap_or_default();
    if meta.deletion_timestamp.is_none() || !may_release || !finalizers.iter().any(|f| f == FINALIZER) {
        return None;
    }
    let kept: Vec<String> = finalizers.into_iter().filter(|f| f != FINALIZER).collect();
    Some(json!({"metadata": {"resourceVersion": meta.resource_version, "finalizers": kept}}))
}

/// What a lookup of an automatic pool's application found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppLookup {
    /// The application exists with this UID.
    Exists(String),
    /// No such application (or its kind is no longer served).
    Missing,
}

/// Whether an automatic pool should be deleted: it asks for it (`ippool-reclaim=true`) and its
/// application is gone or is a different object with the same name (UID mismatch).
pub fn is_orphaned(labels: &BTreeMap<String, String>, lookup: &AppLookup) -> bool {
    if labels.get(LABEL_IPPOOL_RECLAIM).map(String::as_str) != Some("true") {
        return false;
    }
    let Some(app) = AppRef::from_pool_labels(labels) else {
        return false;
    };
    match lookup {
        AppLookup::Missing => true,
        AppLookup::Exists(uid) => !app.uid.is_empty() && *uid != app.uid,
    }
}

/// The API resource of an application kind: built in for the workload kinds, discovered for others.
async fn app_resource(client: &Client, app: &AppRef) -> Result<Option<ApiResource>, kube::Error> {
    let builtin = match (app.api_version.as_str(), app.kind.as_str()) {
        ("apps/v1", "Deployment") => Some(ApiResource::erase::<Deployment>(&())),
        ("apps/v1", "ReplicaSet") => Some(ApiResource::erase::<ReplicaSet>(&())),
        ("apps/v1", "StatefulSet") => Some(ApiResource::erase::<StatefulSet>(&())),
        ("apps/v1", "DaemonSet") => Some(ApiResource::erase::<DaemonSet>(&())),
        ("batch/v1", "Job") => Some(ApiResource::erase::<Job>(&())),
        ("batch/v1", "CronJob") => Some(ApiResource::erase::<CronJob>(&())),
        ("v1", "Pod") => Some(ApiResource::erase::<Pod>(&())),
        _ => None,
    };
    if builtin.is_some() {
        return Ok(builtin);
    }
    let (group, version) = app.group_version();
    let gvk = GroupVersionKind::gvk(group, version, &app.kind);
    match kube::discovery::pinned_kind(client, &gvk).await {
        Ok((resource, _)) => Ok(Some(resource)),
        Err(kube::Error::Discovery(_)) => Ok(None),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Looks an application up (uncached): its UID, or [`AppLookup::Missing`].
pub async fn lookup_app(client: &Client, app: &AppRef) -> Result<AppLookup, kube::Error> {
    let Some(resource) = app_resource(client, app).await? else {
        return Ok(AppLookup::Missing);
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &app.namespace, &resource);
    Ok(match api.get_metadata_opt(&app.name).await? {
        Some(meta) => AppLookup::Exists(meta.metadata.uid.unwrap_or_default()),
        None => AppLookup::Missing,
    })
}

/// Whether an API error is a 409 Conflict (stale resourceVersion).
pub fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// Whether an API error is a 404 Not Found.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// How many times read-modify-write loops try before giving up (upstream: 5; records change often on a
/// busy pool, so a few more).
const MAX_ATTEMPTS: u32 = 10;

/// Read-modify-write of a pool's `allocatedIPs` with its resourceVersion, retried on 409. `edit` gets
/// the current records and returns whether it changed them; nothing is written otherwise. Returns the
/// value `edit` returned on the attempt that was written (or found nothing to do), `None` when the
/// pool does not exist.
pub async fn update_allocations<T>(
    api: &Api<SpiderIPPool>,
    pool: &str,
    mut edit: impl FnMut(&mut BTreeMap<String, PoolIPAllocation>) -> (bool, T),
) -> Result<Option<T>, PoolError> {
    let kube_err = |action, source| PoolError::Kube {
        pool: pool.to_string(),
        action,
        source,
    };
    for attempt in 1..=MAX_ATTEMPTS {
        let Some(mut current) = api
            .get_opt(pool)
            .await
            .map_err(|e| kube_err("reading the pool", e))?
        else {
            return Ok(None);
        };
        let mut status = current.status.clone().unwrap_or_default();
        let mut records = status.allocations().map_err(|source| PoolError::BadAllocations {
            pool: pool.to_string(),
            source,
        })?;
        let (changed, result) = edit(&mut records);
        if !changed {
            return Ok(Some(result));
        }
        status
            .set_allocations(&records)
            .map_err(|source| PoolError::BadAllocations {
                pool: pool.to_string(),
                source,
            })?;
        current.status = Some(status);
        match api.replace_status(pool, &PostParams::default(), &current).await {
            Ok(_) => return Ok(Some(result)),
            Err(e) if is_conflict(&e) => {
                tracing::debug!(pool, attempt, "pool changed while updating its records; retrying");
                tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
            }
            Err(e) => return Err(kube_err("writing the pool's records", e)),
        }
    }
    Err(PoolError::Conflict {
        pool: pool.to_string(),
        attempts: MAX_ATTEMPTS,
    })
}

struct Context {
    client: Client,
    config: IPPoolControllerConfig,
    events: crate::events::Events,
    exhaustion: Exhaustion,
    /// Every pool (a sharded pool's shards are looked up here).
    pools: Store<SpiderIPPool>,
    summaries: pool_shards::Summaries,
}

/// Which pools are full, as last seen, so that a pool filling up is told once: the agents write the
/// counts themselves, so the moment it fills is seen here as a change of state, not as a write of ours.
#[derive(Debug, Default)]
pub struct Exhaustion {
    full: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Exhaustion {
    /// Records that pool `uid` holds `allocated` of `total` addresses; true when it was not full and
    /// is now (a pool without addresses is never full).
    pub fn becomes_full(&self, uid: &str, total: Option<i64>, allocated: i64) -> bool {
        let full = total.is_some_and(|total| total > 0 && allocated >= total);
        let mut known = self
            .full
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if full {
            known.insert(uid.to_string())
        } else {
            known.remove(uid);
            false
        }
    }

    /// Forgets a pool that is gone.
    pub fn forget(&self, uid: &str) {
        self.full
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(uid);
    }
}

/// One reconcile of one pool; returns when to look again.
async fn reconcile(pool: Arc<SpiderIPPool>, ctx: Arc<Context>) -> Result<Action, PoolError> {
    let name = pool.name_any();
    let api: Api<SpiderIPPool> = Api::all(ctx.client.clone());
    let kube_err = |action, source| PoolError::Kube {
        pool: name.clone(),
        action,
        source,
    };
    let records = pool
        .status
        .as_ref()
        .map(|s| s.allocations())
        .transpose()
        .map_err(|source| PoolError::BadAllocations {
            pool: name.clone(),
            source,
        })?
        .unwrap_or_default();

    if pool.meta().deletion_timestamp.is_some() {
        let uid = pool.uid().unwrap_or_default();
        ctx.exhaustion.forget(&uid);
        ctx.summaries.forget(&uid);
        // A sharded pool goes once its shards hold no pod's address (its own records are empty).
        let shards_hold = pool_shards::shards_in(&ctx.pools, &uid).iter().any(|shard| {
            shard.status.as_ref().is_some_and(|s| {
                s.allocations()
                    .map_or(true, |r| spiderpool_schema::ippool::count_held(&r) > 0)
            })
        });
        if let Some(patch) = finalizer_patch(pool.as_ref(), records.is_empty() && !shards_hold) {
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::info!(pool = %name, "pool released: no addresses left, finalizer removed"),
                Err(e) if is_conflict(&e) || is_not_found(&e) => {}
                Err(e) => return Err(kube_err("removing the finalizer", e)),
            }
        } else if !records.is_empty() || shards_hold {
            tracing::debug!(pool = %name, allocated = records.len(), shards_hold, "terminating pool still has addresses");
        }
        return Ok(Action::requeue(ctx.config.resync));
    }

    if let Some(app) = AppRef::from_pool_labels(pool.labels())
        && pool.labels().get(LABEL_IPPOOL_RECLAIM).map(String::as_str) == Some("true")
    {
        let lookup = lookup_app(&ctx.client, &app)
            .await
            .map_err(|e| kube_err("looking up the pool's application", e))?;
        if is_orphaned(pool.labels(), &lookup) {
            tracing::info!(
                pool = %name,
                application = %app.application_key(),
                "deleting automatic pool: its application is gone"
            );
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: pool.uid(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) || is_conflict(&e) => {}
                Err(e) => return Err(kube_err("deleting the orphaned pool", e)),
            }
            return Ok(Action::requeue(ctx.config.resync));
        }
    }

    // A pool whose addresses do not parse still gets a true allocated count.
    let total = match total_ip_count(&name, &pool.spec) {
        Ok(total) => Some(total),
        Err(e) => {
            tracing::warn!(error = %e, "cannot count the pool's addresses");
            None
        }
    };
    if shards::is_sharded(&pool.metadata) {
        return match pool_shards::reconcile(&pool, &api, &ctx.pools, &ctx.summaries, total).await {
            Ok(summary) => {
                tell_if_full(&ctx, &pool, total, summary.allocated).await;
                Ok(Action::requeue(summary.wait.unwrap_or(ctx.config.resync)))
            }
            Err(e) => {
                ctx.events
                    .warning(pool.as_ref(), "ShardsFailed", "MakeShards", e.to_string())
                    .await;
                Err(PoolError::Shards(Box::new(e)))
            }
        };
    }
    // Node agents' reservations are in the records but are not addresses held by pods.
    let allocated = i64::try_from(spiderpool_schema::ippool::count_held(&records)).unwrap_or(i64::MAX);
    if let Some(patch) = count_patch(&pool, total, allocated) {
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::debug!(pool = %name, ?total, allocated, "pool counts updated"),
            // The records changed under us; the watch brings the new version.
            Err(e) if is_conflict(&e) => return Ok(Action::requeue(Duration::from_secs(1))),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(kube_err("writing the counts", e)),
        }
    }
    // A full shard is not news: its pool's other shards serve (the pool says when all are full).
    if shards::shard_of(&pool).is_none() {
        tell_if_full(&ctx, &pool, total, allocated).await;
    }
    Ok(Action::requeue(ctx.config.resync))
}

/// A Warning event on the pool when it becomes full.
async fn tell_if_full(ctx: &Context, pool: &SpiderIPPool, total: Option<i64>, allocated: i64) {
    if ctx
        .exhaustion
        .becomes_full(&pool.uid().unwrap_or_default(), total, allocated)
    {
        let note = format!(
            "all {allocated} addresses are in use; pods that can only use this pool will not start until one is released"
        );
        ctx.events
            .warning(pool, "IPPoolExhausted", "CountAddresses", note)
            .await;
    }
}

fn error_policy(_pool: Arc<SpiderIPPool>, error: &PoolError, ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "pool reconcile failed");
    Action::requeue(ctx.config.retry_delay)
}

/// Runs the IPPool controller with its own pool cache until the watch ends (it does not on its own).
/// Run it only while leader.
pub async fn run(client: Client, config: IPPoolControllerConfig) -> anyhow::Result<()> {
    let pools = SharedCache::<SpiderIPPool>::new(&client);
    let controller = run_shared(client, config, &pools);
    pools.run_alongside(controller).await
}

/// [`run`] on a pool cache shared with other controllers (the caller drives the cache).
pub fn run_shared(
    client: Client,
    config: IPPoolControllerConfig,
    pools: &SharedCache<SpiderIPPool>,
) -> impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static {
    // A shard's change wakes its pool (the shard's controller owner) too: the pool's count follows.
    let controller = Controller::for_shared_stream(pools.subscribe_objects(), pools.store())
        .owns_shared_stream(pools.subscribe_objects());
    let events = crate::events::Events::new(client.clone(), "ippool");
    let ctx = Arc::new(Context {
        client,
        config,
        events,
        exhaustion: Exhaustion::default(),
        pools: pools.store(),
        summaries: pool_shards::Summaries::default(),
    });
    async move {
        controller
            .run(reconcile, error_policy, ctx)
            .for_each(|result| async move {
                if let Err(error) = result {
                    tracing::debug!(%error, "pool controller event");
                }
            })
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use spiderpool_schema::SpiderIPPoolStatus;
    use spiderpool_schema::annotations::auto_pool_labels;
    use spiderpool_schema::labels::LABEL_OWNER_APP_UID;

    use super::*;

    fn pool(ips: &[&str], exclude: &[&str]) -> SpiderIPPool {
        let mut p = SpiderIPPool::new(
            "p",
            SpiderIPPoolSpec {
                subnet: "10.0.0.0/24".into(),
                ips: ips.iter().map(|s| s.to_string()).collect(),
                exclude_ips: exclude.iter().map(|s| s.to_string()).collect(),
                ..SpiderIPPoolSpec::default()
            },
        );
        p.metadata.resource_version = Some("42".into());
        p
    }

    #[test]
    fn total_is_ips_minus_excluded() {
        let p = pool(&["10.0.0.10-10.0.0.19", "10.0.0.30"], &["10.0.0.15-10.0.0.40"]);
        assert_eq!(total_ip_count("p", &p.spec).unwrap(), 5);
        let v6 = SpiderIPPoolSpec {
            subnet: "fd00::/64".into(),
            ips: vec!["fd00::1-fd00::ff".into()],
            ..SpiderIPPoolSpec::default()
        };
        assert_eq!(total_ip_count("p", &v6).unwrap(), 255);
        let bad = pool(&["10.0.0.1", "nonsense"], &[]);
        let e = total_ip_count("p", &bad.spec).unwrap_err().to_string();
        assert!(e.contains("spec.ips") && e.contains("[1]"), "{e}");
        let wrong_family = pool(&["fd00::1"], &[]);
        assert!(total_ip_count("p", &wrong_family.spec).is_err());
    }

    #[test]
    fn counts_are_patched_only_when_wrong() {
        let mut p = pool(&["10.0.0.1-10.0.0.4"], &[]);
        let patch = count_patch(&p, Some(4), 0).unwrap();
        assert_eq!(
            patch,
            json!({"metadata": {"resourceVersion": "42"}, "status": {"totalIPCount": 4, "allocatedIPCount": 0}})
        );
        p.status = Some(SpiderIPPoolStatus {
            allocated_ips: None,
            total_ip_count: Some(4),
            allocated_ip_count: Some(0),
        });
        assert_eq!(count_patch(&p, Some(4), 0), None);
        assert_eq!(
            count_patch(&p, Some(4), 2).unwrap()["status"],
            json!({"allocatedIPCount": 2})
        );
        // An unparsable spec leaves the total alone.
        assert_eq!(count_patch(&p, None, 0), None);
    }

    #[test]
    fn exhaustion_is_told_once_when_the_pool_fills() {
        let seen = Exhaustion::default();
        assert!(!seen.becomes_full("a", Some(4), 3));
        assert!(seen.becomes_full("a", Some(4), 4), "fills up");
        assert!(!seen.becomes_full("a", Some(4), 4), "already told");
        assert!(!seen.becomes_full("a", Some(4), 3), "one released");
        assert!(seen.becomes_full("a", Some(4), 4), "full again: told again");
        assert!(seen.becomes_full("b", Some(1), 1), "per pool");
        seen.forget("b");
        assert!(seen.becomes_full("b", Some(1), 1), "a pool made again");
        assert!(
            !seen.becomes_full("c", Some(0), 0),
            "a pool without addresses is not full"
        );
        assert!(!seen.becomes_full("d", None, 4), "uncountable");
    }

    #[test]
    fn finalizer_goes_only_from_a_terminating_empty_pool() {
        let mut p = pool(&[], &[]);
        p.metadata.finalizers = Some(vec![FINALIZER.into(), "other/keep".into()]);
        assert_eq!(finalizer_patch(&p, true), None, "not terminating");
        p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(finalizer_patch(&p, false), None, "still allocated");
        assert_eq!(
            finalizer_patch(&p, true),
            Some(json!({"metadata": {"resourceVersion": "42", "finalizers": ["other/keep"]}}))
        );
        p.metadata.finalizers = Some(vec!["other/keep".into()]);
        assert_eq!(finalizer_patch(&p, true), None, "not ours");
    }

    #[test]
    fn orphans_need_reclaim_and_a_missing_or_replaced_app() {
        let app = AppRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: "ns".into(),
            name: "d".into(),
            uid: "u1".into(),
        };
        let reclaim = auto_pool_labels("s", "c", &app, "eth0", IpFamily::V4, true);
        let keep = auto_pool_labels("s", "c", &app, "eth0", IpFamily::V4, false);
        assert!(is_orphaned(&reclaim, &AppLookup::Missing));
        assert!(is_orphaned(&reclaim, &AppLookup::Exists("u2".into())));
        assert!(!is_orphaned(&reclaim, &AppLookup::Exists("u1".into())));
        assert!(!is_orphaned(&keep, &AppLookup::Missing));
        assert!(!is_orphaned(&BTreeMap::new(), &AppLookup::Missing));
        let mut no_uid = reclaim.clone();
        no_uid.remove(LABEL_OWNER_APP_UID);
        assert!(!is_orphaned(&no_uid, &AppLookup::Exists("u2".into())));
        assert!(is_orphaned(&no_uid, &AppLookup::Missing));
    }
}
