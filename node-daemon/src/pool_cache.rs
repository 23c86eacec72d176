//! What this agent knows of every SpiderIPPool: each pool's metadata as the watch last showed it,
//! and its whole object as last read, which may be older.
//!
//! The watch carries metadata only (name, resourceVersion, generation, deletion, labels,
//! annotations: a few hundred bytes an event, whatever the pool holds). When an agent watched pools
//! whole, every pool write (the whole `allocatedIPs` string) reached every agent, and each decoded
//! it: the work one write caused grew with the number of agents. The whole object is now read:
//! - once, all pools together, when the watch lists (from the API server's watch cache);
//! - when the metadata shows that something other than the status changed (spec, labels,
//!   annotations, deletion, or a pool recreated under the same name): what candidate filters, routes
//!   and the release cooldown read is never older than the metadata for long;
//! - by the writer of a pool this node writes, when it needs the records ([`crate::writer`]), which
//!   offers what it read and what its writes returned ([`PoolCache::offer`]).
//!
//! So a pool's status here is as of the whole object's own resourceVersion; what must be current
//! compares that with [`PoolCache::shown`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use spiderpool_schema::SpiderIPPool;
use tokio::sync::watch;

/// The metadata of a pool that decides whether its reservations may be handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// `metadata.resourceVersion`.
    pub version: Option<String>,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The pool is being deleted.
    pub deleting: bool,
}

/// The cache. Cheap to clone.
#[derive(Clone)]
pub struct PoolCache {
    shared: Arc<Shared>,
}

struct Shared {
    entries: RwLock<HashMap<String, Entry>>,
    /// `true` once the first list is in.
    ready: watch::Sender<bool>,
}

struct Entry {
    /// The newest metadata seen: from the watch, or from a whole object newer than the watch's.
    meta: ObjectMeta,
    /// The whole pool as last read or written (`None` until read).
    whole: Option<Arc<SpiderIPPool>>,
}

impl Entry {
    fn unknown() -> Self {
        Entry {
            meta: ObjectMeta::default(),
            whole: None,
        }
    }

    /// Keeps `meta` (without managedFields) if it is newer than the metadata held.
    fn see(&mut self, meta: &ObjectMeta) {
        if self.meta.resource_version.is_none()
            || is_newer(
                meta.resource_version.as_deref(),
                self.meta.resource_version.as_deref(),
            )
        {
            self.meta = trimmed(meta);
        }
    }

    fn take_in(&mut self, pool: Arc<SpiderIPPool>) {
        self.see(&pool.metadata);
        let version = pool.metadata.resource_version.as_deref();
        let newer = self
            .whole
            .as_ref()
            .is_none_or(|held| is_newer(version, held.metadata.resource_version.as_deref()));
        if newer {
            self.whole = Some(pool);
        }
    }
}

/// A pool as the cache keeps it, to be shared with it without a copy ([`PoolCache::offer`]; a big
/// pool's records are a megabyte): without its managed fields, which nothing here reads.
pub fn shareable(mut pool: SpiderIPPool) -> Arc<SpiderIPPool> {
    pool.metadata.managed_fields = None;
    Arc::new(pool)
}

impl Default for PoolCache {
    fn default() -> Self {
        PoolCache {
            shared: Arc::new(Shared {
                entries: RwLock::new(HashMap::new()),
                ready: watch::Sender::new(false),
            }),
        }
    }
}

impl PoolCache {
    /// Starts the metadata watch of every pool (on the current tokio runtime); the cache fills
    /// asynchronously, see [`PoolCache::wait_ready`].
    pub fn start(client: &Client) -> Self {
        let cache = PoolCache::default();
        tokio::spawn(feed(cache.clone(), client.clone()));
        cache
    }

    /// An empty cache, ready: filled by hand (the fake API server, [`crate::api::fake`]).
    pub fn ready_empty() -> Self {
        let cache = PoolCache::default();
        cache.shared.ready.send_replace(true);
        cache
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.shared.entries.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.shared
            .entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the first list is in.
    pub async fn wait_ready(&self) {
        let mut ready = self.shared.ready.subscribe();
        // The sender lives as long as `self`, so this ends only when ready.
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// The pool as last read whole (its status is as of its own resourceVersion).
    pub fn whole(&self, name: &str) -> Option<Arc<SpiderIPPool>> {
        self.read().get(name).and_then(|e| e.whole.clone())
    }

    /// Every pool read whole.
    pub fn all(&self) -> Vec<Arc<SpiderIPPool>> {
        self.read().values().filter_map(|e| e.whole.clone()).collect()
    }

    /// The pool's newest metadata.
    pub fn shown(&self, name: &str) -> Option<Shown> {
        self.read().get(name).map(|e| Shown {
            version: e.meta.resource_version.clone(),
            generation: e.meta.generation,
            deleting: e.meta.deletion_timestamp.is_some(),
        })
    }

    /// Takes in a pool this agent read or wrote whole: kept if newer than what the cache holds (its
    /// metadata too, if newer than the watch's). A pool the cache does not know (deleted meanwhile) is
    /// not taken in: only the watch adds pools.
    pub fn offer(&self, pool: Arc<SpiderIPPool>) {
        let Some(name) = pool.metadata.name.as_deref() else {
            return;
        };
        if let Some(entry) = self.write().get_mut(name) {
            entry.take_in(pool);
        }
    }

    /// Takes in a pool listed whole, or delivered whole (the fake API server's watch): as
    /// [`PoolCache::offer`], and added if new.
    pub fn apply(&self, pool: SpiderIPPool) {
        let Some(name) = pool.metadata.name.clone() else {
            return;
        };
        self.write()
            .entry(name)
            .or_insert_with(Entry::unknown)
            .take_in(shareable(pool));
    }

    /// Takes in the watch's metadata of a pool; `true` if the whole pool is to be read
    /// ([`needs_whole`]).
    pub fn show(&self, meta: &ObjectMeta) -> bool {
        let Some(name) = meta.name.clone() else {
            return false;
        };
        let mut entries = self.write();
        let entry = entries.entry(name).or_insert_with(Entry::unknown);
        entry.see(meta);
        needs_whole(&entry.meta, entry.whole.as_deref())
    }

    /// Forgets a deleted pool.
    pub fn remove(&self, name: &str) {
        self.write().remove(name);
    }

    /// After a (re)list: forgets every pool not in `names`; marks the cache ready.
    fn keep_only(&self, names: &[String]) {
        self.write().retain(|name, _| names.contains(name));
        self.shared.ready.send_replace(true);
    }

    /// Names of the pools whose whole object is to be read again.
    fn needing_whole(&self) -> Vec<String> {
        self.read()
            .iter()
            .filter(|(_, e)| needs_whole(&e.meta, e.whole.as_deref()))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// Whether the whole pool must be read again after the watch showed `meta`: it was never read, or
/// something other than its status changed since (its spec: the generation; its deletion; its labels
/// or annotations; a pool recreated under the same name: the UID). Status changes alone are not
/// read: writers read what they write.
pub fn needs_whole(meta: &ObjectMeta, whole: Option<&SpiderIPPool>) -> bool {
    let Some(whole) = whole else { return true };
    let held = &whole.metadata;
    let empty = BTreeMap::new();
    held.uid != meta.uid
        || (meta.generation.is_some() && held.generation != meta.generation)
        || held.deletion_timestamp.is_some() != meta.deletion_timestamp.is_some()
        || held.labels.as_ref().unwrap_or(&empty) != meta.labels.as_ref().unwrap_or(&empty)
        || held.annotations.as_ref().unwrap_or(&empty) != meta.annotations.as_ref().unwrap_or(&empty)
}

/// Whether `candidate` is a later resourceVersion than `than`. Versions are opaque by contract but
/// etcd revisions in practice: compare them as numbers when both are, else accept any difference.
pub fn is_newer(candidate: Option<&str>, than: Option<&str>) -> bool {
    match (
        candidate.and_then(|c| c.parse::<u64>().ok()),
        than.and_then(|t| t.parse::<u64>().ok()),
    ) {
        (Some(c), Some(t)) => c > t,
        _ => candidate != than,
    }
}

/// What the cache keeps of a pool's metadata (managedFields are most of it and nothing reads them).
fn trimmed(meta: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        managed_fields: None,
        ..meta.clone()
    }
}

/// The watch: metadata events into the cache, whole reads where [`needs_whole`] says.
async fn feed(cache: PoolCache, client: Client) {
    let api = Api::<SpiderIPPool>::all(client.clone());
    // The first list (and any relist) is served from the API server's watch cache, as the other
    // caches' are ([`crate::store`]); kube leaves resourceVersion "0" out of a paginated list.
    let mut config = watcher::Config::default().any_semantic();
    config.page_size = None;
    let events =
        watcher::watcher(Api::<PartialObjectMeta<SpiderIPPool>>::all(client), config).default_backoff();
    let mut events = std::pin::pin!(events);
    let mut listed: Vec<String> = Vec::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitApply(meta)) => {
                cache.show(&meta.metadata);
                listed.extend(meta.metadata.name);
            }
            Ok(Event::InitDone) => {
                // Every pool whole, in one list from the watch cache rather than a read each.
                list_whole(&cache, &api).await;
                cache.keep_only(&listed);
                for name in cache.needing_whole() {
                    read_whole(&cache, &api, &name).await;
                }
            }
            Ok(Event::Apply(meta)) => {
                if cache.show(&meta.metadata)
                    && let Some(name) = meta.metadata.name.as_deref()
                {
                    read_whole(&cache, &api, name).await;
                }
            }
            Ok(Event::Delete(meta)) => {
                if let Some(name) = meta.metadata.name.as_deref() {
                    cache.remove(name);
                }
            }
            Err(e) => tracing::warn!(error = %e, "SpiderIPPool watch error (retrying)"),
        }
    }
}

/// Lists every pool whole into the cache, retrying until it can.
async fn list_whole(cache: &PoolCache, api: &Api<SpiderIPPool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match api.list(&ListParams::default().match_any()).await {
            Ok(list) => {
                for pool in list.items {
                    cache.apply(pool);
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing SpiderIPPools failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Reads one pool whole into the cache (a plain read: never older than the metadata that asked for
/// it), retrying until it can or the pool is gone.
async fn read_whole(cache: &PoolCache, api: &Api<SpiderIPPool>, name: &str) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match api.get_opt(name).await {
            Ok(Some(pool)) => return cache.apply(pool),
            Ok(None) => return cache.remove(name),
            Err(e) => {
                tracing::warn!(pool = name, error = %e, "reading a SpiderIPPool failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests;
