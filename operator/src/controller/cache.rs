//! One watch cache per kind for the whole process, shared by every controller that reads that kind.
//!
//! Why: a large topology renders 16,000 SpiderIPPools, and the SpiderNetwork, SpiderIPPool and
//! SpiderSubnet controllers (and the reclaim scan) all read pools. Each used to run its own watch and
//! keep its own copy of every pool; now the process keeps one copy (managedFields dropped: they are
//! most of an applied object's size and no controller reads them) and one watch on the API server.
//!
//! kube-runtime's own shared reflector (`reflector::store_shared`) is not used because its
//! subscribers are not told about deletions, which the SpiderNetwork controller (a deleted child is
//! re-created) and the SpiderSubnet controller (a deleted pool leaves its subnet) need.
//!
//! Use: [`SharedCache::new`], then [`SharedCache::subscribe`] once per consumer and
//! [`SharedCache::store`] for reads, then drive [`SharedCache::run`] (nothing is watched until it
//! runs). Subscribing is meant to happen before `run` starts: a later subscriber sees only later
//! events (and the store).

use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::debug;

/// What a subscriber is told.
#[derive(Debug, Clone)]
pub enum CacheEvent<K> {
    /// The object was created or changed (the version now in the store).
    Applied(Arc<K>),
    /// The object was deleted (its last version).
    Deleted(Arc<K>),
    /// The watch (re)listed everything: every object in the store was sent as `Applied` just
    /// before, and objects deleted while the watch was down are gone from the store without a
    /// `Deleted`.
    Relisted,
}

impl<K> CacheEvent<K> {
    /// The object an `Applied` or `Deleted` event is about.
    pub fn object(&self) -> Option<&Arc<K>> {
        match self {
            CacheEvent::Applied(object) | CacheEvent::Deleted(object) => Some(object),
            CacheEvent::Relisted => None,
        }
    }
}

/// A watch of every object of kind `K`, kept in one store and fanned out to subscribers.
pub struct SharedCache<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    api: Api<K>,
    store: Store<K>,
    writer: Writer<K>,
    subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<CacheEvent<K>>>>>,
}

impl<K> SharedCache<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// A cache of every `K` in the cluster (not watched until [`SharedCache::run`]).
    pub fn new(client: &Client) -> Self {
        let (store, writer) = reflector::store::<K>();
        SharedCache {
            api: Api::all(client.clone()),
            store,
            writer,
            subscribers: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The store: every object as last seen (without managedFields).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every change from now on. The channel is unbounded so a slow consumer never holds the others
    /// back; events carry `Arc`s of the stored objects, so a queued event costs a pointer, not a copy.
    pub fn subscribe(&self) -> impl Stream<Item = CacheEvent<K>> + Send + 'static {
        let (sender, receiver) = mpsc::unbounded();
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sender);
        receiver
    }

    /// Objects applied or deleted from now on, the shape kube-runtime's `*_shared_stream` triggers
    /// take. After a relist every object is sent again.
    pub fn subscribe_objects(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.subscribe()
            .filter_map(|event| futures::future::ready(event.object().cloned()))
    }

    /// Drives the cache while `work` (controllers subscribed to it) runs, until `work` ends; the
    /// watch ending first is an error.
    pub async fn run_alongside(self, work: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
        let kind = K::kind(&()).into_owned();
        tokio::select! {
            () = self.run() => anyhow::bail!("the {kind} watch ended"),
            result = work => result,
        }
    }

    /// Watches, fills the store and tells the subscribers, until the watch ends (it does not on its
    /// own: errors are retried with backoff).
    pub async fn run(self) {
        let SharedCache {
            api,
            store,
            writer,
            subscribers,
        } = self;
        let events = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default().any_semantic())
                .default_backoff()
                .modify(|object| object.managed_fields_mut().clear()),
        );
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let out = match event {
                // Send the stored Arc rather than a second copy of the object.
                Ok(watcher::Event::Apply(object)) => {
                    let stored = store.get(&ObjectRef::from_obj(&object));
                    vec![CacheEvent::Applied(stored.unwrap_or_else(|| Arc::new(object)))]
                }
                Ok(watcher::Event::Delete(object)) => vec![CacheEvent::Deleted(Arc::new(object))],
                Ok(watcher::Event::InitDone) => {
                    let mut all: Vec<CacheEvent<K>> =
                        store.state().into_iter().map(CacheEvent::Applied).collect();
                    all.push(CacheEvent::Relisted);
                    all
                }
                // Objects of a relist are sent once the store holds all of them (at InitDone).
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => Vec::new(),
                Err(error) => {
                    debug!(kind = %K::kind(&()), %error, "watch error; retrying");
                    Vec::new()
                }
            };
            if out.is_empty() {
                continue;
            }
            let mut subscribers = subscribers.lock().unwrap_or_else(PoisonError::into_inner);
            // A subscriber that went away (its controller stopped) is dropped.
            subscribers.retain(|subscriber| {
                out.iter()
                    .all(|event| subscriber.unbounded_send(event.clone()).is_ok())
            });
        }
    }
}
