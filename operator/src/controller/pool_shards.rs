//! The shards of a pool that asks for them ([`spiderpool_schema::shards`]): the SpiderIPPool
//! controller makes every shard the pool's addresses call for, keeps their spec the pool's (except
//! the addresses, which never change once made), and keeps the pool's `status.allocatedIPCount` the
//! sum of its shards', written at most every [`SUMMARY_INTERVAL`] so that its cost per allocation
//! does not grow with the pool's size or the rate of allocations.
//!
//! The pool's own `allocatedIPs` stays empty: every address is recorded in exactly one SpiderIPPool,
//! the shard it came from, so a reader that sums the pools counts each once.
//!
//! Pure parts: [`desired_shards`], [`shard_change`], [`held_by_shards`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use spiderpool_schema::shards::{self, LABEL_SHARD_INDEX, LABEL_SHARD_OF, ShardError};
use spiderpool_schema::{FINALIZER, SpiderIPPool, SpiderIPPoolSpec};

use super::ippool::{PoolError, count_patch, is_conflict, is_not_found, usable_ips};

/// The pool's allocated count is written at most this often while its shards change.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(2);

/// Why a pool's shards cannot be made or kept.
#[derive(Debug, thiserror::Error)]
pub enum ShardsError {
    /// The pool's spec cannot be read or cut.
    #[error("pool {pool}: {source}")]
    Plan {
        /// Pool name.
        pool: String,
        /// Why.
        #[source]
        source: ShardError,
    },
    /// A shard holds other addresses than the pool's spec calls for (someone edited it, or the pool's
    /// addresses changed past the webhook); nothing is changed, both are left for a person to look at.
    #[error(
        "pool {pool}: shard {shard} holds {held:?}, but the pool's addresses call for {wanted:?}; shards are never changed once made"
    )]
    Moved {
        /// Pool name.
        pool: String,
        /// Shard name.
        shard: String,
        /// What the shard holds.
        held: Vec<String>,
        /// What it should.
        wanted: Vec<String>,
    },
    /// The API server refused or failed a request.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// The shards pool `pool` calls for, as objects to create; an empty list for a pool that does not ask
/// for shards. The pool must have been read from the API server (it needs its UID).
pub fn desired_shards(pool: &SpiderIPPool) -> Result<Vec<SpiderIPPool>, ShardsError> {
    let name = pool.name_any();
    let plan_err = |source| ShardsError::Plan {
        pool: name.clone(),
        source,
    };
    let Some(size) = shards::shard_size(&pool.metadata) else {
        return Ok(Vec::new());
    };
    let size = size.map_err(plan_err)?;
    let usable = usable_ips(&name, &pool.spec)?;
    let (Some(uid), Some(owner)) = (pool.uid(), pool.controller_owner_ref(&())) else {
        return Ok(Vec::new());
    };
    let slices = shards::slices(&usable, size).map_err(plan_err)?;
    Ok(slices
        .iter()
        .enumerate()
        .map(|(index, slice)| {
            let mut shard = SpiderIPPool::new(
                &shards::shard_name(&name, index),
                shards::shard_spec(&pool.spec, slice),
            );
            shard.labels_mut().extend([
                (LABEL_SHARD_OF.to_owned(), uid.clone()),
                (LABEL_SHARD_INDEX.to_owned(), index.to_string()),
            ]);
            shard.owner_references_mut().push(owner.clone());
            // As the webhook gives every pool: a shard goes only once it records nothing.
            shard.finalizers_mut().push(FINALIZER.to_owned());
            shard
        })
        .collect())
}

/// What keeping shard `existing` as `desired` takes.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardChange {
    /// Nothing.
    None,
    /// A merge patch of its spec (the pool's settings changed; the addresses did not).
    Spec(serde_json::Value),
}

/// [`ShardChange`] for an existing shard: its addresses must be the desired ones (else
/// [`ShardsError::Moved`]), its other settings follow the pool's.
pub fn shard_change(
    pool: &str,
    existing: &SpiderIPPool,
    desired: &SpiderIPPool,
) -> Result<ShardChange, ShardsError> {
    let same_ips = existing.spec.ips == desired.spec.ips
        || matches!(
            (existing.spec.usable_addresses(), desired.spec.usable_addresses()),
            (Ok(held), Ok(wanted)) if held == wanted
        );
    if !same_ips {
        return Err(ShardsError::Moved {
            pool: pool.to_owned(),
            shard: existing.name_any(),
            held: existing.spec.ips.clone(),
            wanted: desired.spec.ips.clone(),
        });
    }
    let mut wanted = desired.spec.clone();
    wanted.ips.clone_from(&existing.spec.ips);
    wanted.exclude_ips.clone_from(&existing.spec.exclude_ips);
    // The webhook fills `ipVersion` in; an unset one in the pool is no change.
    if wanted.ip_version.is_none() {
        wanted.ip_version = existing.spec.ip_version;
    }
    // The API server stores an unset `default` or `disable` as `false` (the CRD's default); a merge
    // patch that leaves a field out cannot unset it, so unset and `false` are the same here.
    let settled = |spec: &SpiderIPPoolSpec| SpiderIPPoolSpec {
        default: Some(spec.default.unwrap_or(false)),
        disable: Some(spec.disable.unwrap_or(false)),
        ..spec.clone()
    };
    if settled(&wanted) == settled(&existing.spec) {
        return Ok(ShardChange::None);
    }
    let spec = serde_json::to_value(&wanted).unwrap_or_default();
    Ok(ShardChange::Spec(json!({
        "metadata": {"resourceVersion": existing.resource_version()},
        "spec": spec,
    })))
}

/// The addresses pods hold in `shards`, as their `status.allocatedIPCount` says (each shard's own
/// reconcile keeps that true).
pub fn held_by_shards<'a>(shards: impl IntoIterator<Item = &'a SpiderIPPool>) -> i64 {
    shards
        .into_iter()
        .filter_map(|s| s.status.as_ref()?.allocated_ip_count)
        .sum()
}

/// The shards of pool `uid` in `store`, by index.
pub fn shards_in(store: &Store<SpiderIPPool>, uid: &str) -> Vec<Arc<SpiderIPPool>> {
    let mut found: Vec<Arc<SpiderIPPool>> = store
        .state()
        .into_iter()
        .filter(|p| shards::shard_of(p) == Some(uid))
        .collect();
    found.sort_by_key(|p| shards::shard_index(p));
    found
}

/// When each sharded pool's count was last written (by UID).
#[derive(Debug, Default)]
pub struct Summaries {
    written: Mutex<HashMap<String, Instant>>,
}

impl Summaries {
    /// How long to wait before pool `uid`'s count may be written again (zero: now).
    fn wait(&self, uid: &str, now: Instant) -> Duration {
        let written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        written.get(uid).map_or(Duration::ZERO, |at| {
            SUMMARY_INTERVAL.saturating_sub(now.duration_since(*at))
        })
    }

    fn wrote(&self, uid: &str, now: Instant) {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(uid.to_owned(), now);
    }

    /// Forgets a pool that is gone.
    pub fn forget(&self, uid: &str) {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(uid);
    }
}

/// What a sharded pool's reconcile found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The addresses pods hold in its shards.
    pub allocated: i64,
    /// How long until its count may be written, when it is due but was written too recently.
    pub wait: Option<Duration>,
}

/// Makes and keeps pool `pool`'s shards, then its counts.
pub async fn reconcile(
    pool: &SpiderIPPool,
    api: &Api<SpiderIPPool>,
    store: &Store<SpiderIPPool>,
    summaries: &Summaries,
    total: Option<i64>,
) -> Result<Summary, ShardsError> {
    let name = pool.name_any();
    let uid = pool.uid().unwrap_or_default();
    let kube_err = |action, source| {
        ShardsError::Pool(PoolError::Kube {
            pool: name.clone(),
            action,
            source,
        })
    };
    let existing = shards_in(store, &uid);
    for desired in desired_shards(pool)? {
        let shard_name = desired.name_any();
        match existing.iter().find(|s| s.name_any() == shard_name) {
            None => match api.create(&PostParams::default(), &desired).await {
                Ok(_) => {
                    tracing::info!(pool = %name, shard = %shard_name, ips = ?desired.spec.ips, "shard made")
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(e) => return Err(kube_err("making a shard", e)),
            },
            Some(shard) => {
                if let ShardChange::Spec(patch) = shard_change(&name, shard, &desired)? {
                    match api
                        .patch(&shard_name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => {
                            tracing::info!(pool = %name, shard = %shard_name, "shard follows the pool's spec")
                        }
                        Err(e) if is_conflict(&e) || is_not_found(&e) => {}
                        Err(e) => return Err(kube_err("updating a shard", e)),
                    }
                }
            }
        }
    }
    let allocated = held_by_shards(existing.iter().map(AsRef::as_ref));
    let after = |wait: Option<Duration>| Summary { allocated, wait };
    let Some(patch) = count_patch(pool, total, allocated) else {
        return Ok(after(None));
    };
    let now = Instant::now();
    let wait = summaries.wait(&uid, now);
    if !wait.is_zero() {
        return Ok(after(Some(wait)));
    }
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            summaries.wrote(&uid, now);
            tracing::debug!(pool = %name, allocated, shards = existing.len(), "sharded pool's count updated");
            Ok(after(None))
        }
        // The pool changed under us; the watch brings the new version.
        Err(e) if is_conflict(&e) => Ok(after(Some(Duration::from_secs(1)))),
        Err(e) if is_not_found(&e) => Ok(after(None)),
        Err(e) => Err(kube_err("writing the sharded pool's counts", e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use spiderpool_schema::SpiderIPPoolStatus;
    use spiderpool_schema::shards::ANNOTATION_SHARD_SIZE;

    use super::*;

    fn big(size: &str) -> SpiderIPPool {
        let mut pool = SpiderIPPool::new(
            "big",
            SpiderIPPoolSpec {
                subnet: "10.9.0.0/16".into(),
                ips: vec!["10.9.0.0-10.9.0.99".into()],
                exclude_ips: vec!["10.9.0.50".into()],
                gateway: Some("10.9.255.254".into()),
                default: Some(true),
                ..SpiderIPPoolSpec::default()
            },
        );
        pool.metadata.uid = Some("uid-big".into());
        pool.annotations_mut()
            .insert(ANNOTATION_SHARD_SIZE.into(), size.into());
        pool
    }

    #[test]
    fn the_shards_cover_the_usable_addresses_and_belong_to_the_pool() {
        let shards = desired_shards(&big("32")).unwrap();
        let names: Vec<String> = shards.iter().map(ResourceExt::name_any).collect();
        assert_eq!(
            names,
            ["big-shard-0", "big-shard-1", "big-shard-2", "big-shard-3"]
        );
        assert_eq!(shards[1].spec.ips, ["10.9.0.32-10.9.0.49", "10.9.0.51-10.9.0.64"]);
        assert_eq!(shards[3].spec.ips, ["10.9.0.97-10.9.0.99"]);
        for (i, shard) in shards.iter().enumerate() {
            assert_eq!(shards::shard_of(shard), Some("uid-big"));
            assert_eq!(shards::shard_index(shard), Some(i));
            let owner = &shard.owner_references()[0];
            assert_eq!(
                (owner.name.as_str(), owner.uid.as_str(), owner.controller),
                ("big", "uid-big", Some(true))
            );
            assert_eq!(shard.spec.gateway.as_deref(), Some("10.9.255.254"));
            assert_eq!(shard.spec.default, Some(false));
            assert_eq!(shard.finalizers(), [FINALIZER]);
        }
        let mut plain = big("32");
        plain.annotations_mut().clear();
        assert!(desired_shards(&plain).unwrap().is_empty());
        let err = desired_shards(&big("3")).unwrap_err().to_string();
        assert!(err.contains("shard-size") && err.contains("`3`"), "{err}");
    }

    #[test]
    fn a_shard_follows_the_pools_settings_but_never_changes_its_addresses() {
        let desired = desired_shards(&big("32")).unwrap().remove(0);
        let mut existing = desired.clone();
        existing.spec.ip_version = Some(4);
        // As stored: the CRD's defaults filled in, or an unset `default` left out.
        existing.spec.disable = Some(false);
        existing.metadata.resource_version = Some("7".into());
        for stored_default in [None, Some(false)] {
            existing.spec.default = stored_default;
            assert_eq!(
                shard_change("big", &existing, &desired).unwrap(),
                ShardChange::None
            );
        }
        let mut pool = big("32");
        pool.spec.gateway = Some("10.9.255.253".into());
        let desired = desired_shards(&pool).unwrap().remove(0);
        let ShardChange::Spec(patch) = shard_change("big", &existing, &desired).unwrap() else {
            panic!("the gateway changed");
        };
        assert_eq!(patch["spec"]["gateway"], "10.9.255.253");
        assert_eq!(patch["spec"]["ips"], json!(["10.9.0.0-10.9.0.31"]));
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        existing.spec.ips = vec!["10.9.0.0-10.9.0.30".into()];
        let err = shard_change("big", &existing, &desired).unwrap_err().to_string();
        assert!(err.contains("never changed once made"), "{err}");
    }

    #[test]
    fn the_pools_count_is_the_sum_of_its_shards() {
        let mut shards = desired_shards(&big("32")).unwrap();
        for (shard, count) in shards.iter_mut().zip([32, 5, 0]) {
            shard.status = Some(SpiderIPPoolStatus {
                allocated_ip_count: Some(count),
                ..SpiderIPPoolStatus::default()
            });
        }
        assert_eq!(held_by_shards(&shards), 37);
    }

    #[test]
    fn the_count_waits_out_the_interval_after_a_write() {
        let summaries = Summaries::default();
        let t0 = Instant::now();
        assert_eq!(summaries.wait("u", t0), Duration::ZERO);
        summaries.wrote("u", t0);
        assert_eq!(
            summaries.wait("u", t0 + Duration::from_millis(500)),
            SUMMARY_INTERVAL - Duration::from_millis(500)
        );
        assert_eq!(summaries.wait("u", t0 + SUMMARY_INTERVAL), Duration::ZERO);
        summaries.forget("u");
        assert_eq!(summaries.wait("u", t0), Duration::ZERO);
    }
}
