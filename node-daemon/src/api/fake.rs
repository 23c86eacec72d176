//! A deterministic in-memory API server for unit tests of the shell, with the real one's
//! compare-and-swap semantics: every write bumps one cluster-wide resourceVersion, a write carrying a
//! stale one is refused with 409 Conflict, a create of a taken name with 409 AlreadyExists, and an
//! object with finalizers is only marked deleted until they are removed. Pool writes reach the watch
//! caches it made ([`FakeApi::new`]) as a watch would, at once or when released
//! ([`FakeApi::pause_watch`]).
//!
//! Faults are scripted per kind of call ([`FakeApi::fail`]): refuse with 409 or any status, apply
//! the write but lose the response, hang, or answer late. Every call is logged ([`FakeApi::calls`]),
//! so a test can state the exact calls a scenario makes, as controller-rs's `fixtures.rs` does
//! against its mock API server.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ::kube::core::Status;
use ::kube::runtime::watcher::Event;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use spiderpool_schema::{NetworkAttachmentDefinition, SpiderEndpoint, SpiderIPPool, SpiderReservedIP};

use super::{ApiError, ApiResult, ClusterApi, EndpointScope, OwnerKind, PoolStatusWrite};
use crate::ipam::endpoint::{ANNO_CONTAINER_ID, LABEL_NODE};
use crate::store::{StoreFeeds, Stores};

/// A kind of call, for scripting faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// [`ClusterApi::get_pool`].
    GetPool,
    /// [`ClusterApi::write_pool_status`].
    WritePoolStatus,
    /// [`ClusterApi::get_endpoint`].
    GetEndpoint,
    /// [`ClusterApi::list_endpoints`].
    ListEndpoints,
    /// [`ClusterApi::create_endpoint`].
    CreateEndpoint,
    /// [`ClusterApi::replace_endpoint`].
    ReplaceEndpoint,
    /// [`ClusterApi::set_endpoint_container`].
    SetEndpointContainer,
    /// [`ClusterApi::remove_endpoint_finalizers`].
    RemoveEndpointFinalizers,
    /// [`ClusterApi::delete_endpoint`].
    DeleteEndpoint,
    /// [`ClusterApi::get_pod`].
    GetPod,
    /// [`ClusterApi::get_owner`].
    GetOwner,
    /// [`ClusterApi::get_nad`].
    GetNad,
}

/// One call as the fake saw it: its kind and the object it was about (`name` or `namespace/name`;
/// a list names its scope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// What was called.
    pub kind: CallKind,
    /// About which object.
    pub target: String,
}

/// What a scripted call does instead of answering normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Refused with 409 Conflict, not applied (another writer won).
    Conflict,
    /// Refused with this HTTP status, not applied.
    Status(u16),
    /// Applied, but the answer never arrives: the call fails as a dropped connection does.
    LoseResponse,
    /// Never answers.
    Hang,
    /// Answers normally after this long.
    Delay(Duration),
    /// Panics in the caller's task (a bug somewhere on the way).
    Panic,
}

struct Script {
    kind: CallKind,
    fault: Fault,
    /// Calls left to hit; `None`: every call until cleared.
    remaining: Option<usize>,
}

#[derive(Default)]
struct State {
    version: u64,
    next_uid: u64,
    pools: BTreeMap<String, SpiderIPPool>,
    endpoints: BTreeMap<(String, String), SpiderEndpoint>,
    pods: BTreeMap<(String, String), Pod>,
    owners: BTreeMap<(OwnerKind, String, String), ObjectMeta>,
    nads: BTreeMap<(String, String), NetworkAttachmentDefinition>,
    scripts: VecDeque<Script>,
    calls: Vec<Call>,
    /// Pool events held back while the watch is paused.
    held: Vec<SpiderIPPool>,
    watch_paused: bool,
    /// The pool watch delivers metadata, as the agent's real one does ([`FakeApi::watch_metadata_only`]).
    metadata_only: bool,
}

/// The fake API server, with the caches it feeds.
pub struct FakeApi {
    node: String,
    state: Mutex<State>,
    feeds: Mutex<StoreFeeds>,
}

fn status_error(code: u16, reason: &str, message: impl Into<String>) -> ApiError {
    ApiError::Kube(::kube::Error::Api(
        Status::failure(&message.into(), reason).with_code(code).boxed(),
    ))
}

fn conflict(what: &str) -> ApiError {
    status_error(
        409,
        "Conflict",
        format!("Operation cannot be fulfilled on {what}: the object has been modified"),
    )
}

fn not_found(what: &str) -> ApiError {
    status_error(404, "NotFound", format!("{what} not found"))
}

fn lost_response() -> ApiError {
    ApiError::Kube(::kube::Error::Service(Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset before the response arrived",
    ))))
}

/// One pool change into the cache, whole or as its metadata (then whole only if the cache needs it).
fn deliver(feeds: &StoreFeeds, pool: SpiderIPPool, metadata_only: bool) {
    if !metadata_only || feeds.pools.show(&pool.metadata) {
        feeds.pools.apply(pool);
    }
}

fn key_of(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl FakeApi {
    /// An empty API server for the agent of `node`, and the (ready, empty) caches it feeds: pools as
    /// they are written, pods bound to `node`, and whatever the test puts in them.
    pub fn new(node: &str) -> (Arc<Self>, Stores) {
        let (stores, feeds) = Stores::in_memory();
        let fake = FakeApi {
            node: node.to_owned(),
            state: Mutex::new(State::default()),
            feeds: Mutex::new(feeds),
        };
        (Arc::new(fake), stores)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn feeds(&self) -> MutexGuard<'_, StoreFeeds> {
        self.feeds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Scripts `fault` for the next `times` calls of `kind`, after faults scripted before.
    pub fn fail(&self, kind: CallKind, fault: Fault, times: usize) {
        self.state().scripts.push_back(Script {
            kind,
            fault,
            remaining: Some(times),
        });
    }

    /// Scripts `fault` for every call of `kind` until [`FakeApi::clear_faults`].
    pub fn fail_always(&self, kind: CallKind, fault: Fault) {
        self.state().scripts.push_back(Script {
            kind,
            fault,
            remaining: None,
        });
    }

    /// Removes every scripted fault.
    pub fn clear_faults(&self) {
        self.state().scripts.clear();
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// How many calls of `kind` were made.
    pub fn count(&self, kind: CallKind) -> usize {
        self.state().calls.iter().filter(|c| c.kind == kind).count()
    }

    /// Forgets the calls made so far.
    pub fn clear_calls(&self) {
        self.state().calls.clear();
    }

    /// Holds pool changes back from the cache (a lagging watch) until [`FakeApi::resume_watch`].
    pub fn pause_watch(&self) {
        self.state().watch_paused = true;
    }

    /// Delivers the pool changes held back, and every later one at once.
    pub fn resume_watch(&self) {
        let held = {
            let mut state = self.state();
            state.watch_paused = false;
            std::mem::take(&mut state.held)
        };
        let metadata_only = self.state().metadata_only;
        let feeds = self.feeds();
        for pool in held {
            deliver(&feeds, pool, metadata_only);
        }
    }

    /// From now on the pool cache is fed as the agent's real one is: each change's metadata, and
    /// the whole pool only when [`crate::pool_cache::needs_whole`] says (the writers read and offer
    /// the rest). Without this, every change reaches the cache whole.
    pub fn watch_metadata_only(&self) {
        self.state().metadata_only = true;
    }

    fn bump(state: &mut State, meta: &mut ObjectMeta) {
        state.version += 1;
        meta.resource_version = Some(state.version.to_string());
    }

    fn publish_pool(&self, mut state: MutexGuard<'_, State>, pool: SpiderIPPool) {
        if state.watch_paused {
            state.held.push(pool);
            return;
        }
        let metadata_only = state.metadata_only;
        drop(state);
        deliver(&self.feeds(), pool, metadata_only);
    }

    /// Creates or replaces a pool (its spec; generation 1, or one more when the spec changed).
    pub fn put_pool(&self, mut pool: SpiderIPPool) {
        let mut state = self.state();
        let name = pool.metadata.name.clone().unwrap_or_default();
        let previous = state.pools.get(&name).cloned();
        pool.metadata.generation = Some(match &previous {
            Some(old) if old.spec == pool.spec => old.metadata.generation.unwrap_or(1),
            Some(old) => old.metadata.generation.unwrap_or(1) + 1,
            None => 1,
        });
        if pool.status.is_none() {
            pool.status = previous.and_then(|p| p.status);
        }
        Self::bump(&mut state, &mut pool.metadata);
        state.pools.insert(name, pool.clone());
        self.publish_pool(state, pool);
    }

    /// A pool as stored.
    pub fn pool(&self, name: &str) -> Option<SpiderIPPool> {
        self.state().pools.get(name).cloned()
    }

    /// Deletes a pool.
    pub fn remove_pool(&self, name: &str) {
        let removed = self.state().pools.remove(name);
        if let Some(pool) = removed {
            self.feeds()
                .pools
                .remove(pool.metadata.name.as_deref().unwrap_or_default());
        }
    }

    /// Creates or replaces a pod; one bound to this node also reaches the pod cache.
    pub fn put_pod(&self, mut pod: Pod) {
        let bound_here = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(self.node.as_str());
        {
            let mut state = self.state();
            if pod.metadata.uid.is_none() {
                state.next_uid += 1;
                pod.metadata.uid = Some(format!("uid-{}", state.next_uid));
            }
            Self::bump(&mut state, &mut pod.metadata);
            state.pods.insert(key_of(&pod.metadata), pod.clone());
        }
        if bound_here {
            let mut feeds = self.feeds();
            feeds.pods.apply_watcher_event(&Event::Apply(pod));
            feeds.pod_changes.notify_one();
        }
    }

    /// Deletes a pod (at once, as a force delete does).
    pub fn remove_pod(&self, namespace: &str, name: &str) {
        let removed = self.state().pods.remove(&(namespace.to_owned(), name.to_owned()));
        if let Some(pod) = removed {
            let mut feeds = self.feeds();
            feeds.pods.apply_watcher_event(&Event::Delete(pod));
            feeds.pod_changes.notify_one();
        }
    }

    /// Stores the metadata of an owner in pods' chains.
    pub fn put_owner(&self, kind: OwnerKind, meta: ObjectMeta) {
        let (namespace, name) = key_of(&meta);
        self.state().owners.insert((kind, namespace, name), meta);
    }

    /// Stores a NetworkAttachmentDefinition.
    pub fn put_nad(&self, nad: NetworkAttachmentDefinition) {
        let key = key_of(&nad.metadata);
        self.state().nads.insert(key, nad);
    }

    /// Stores an endpoint as it is (a leftover, a hand edit).
    pub fn put_endpoint(&self, mut endpoint: SpiderEndpoint) {
        let mut state = self.state();
        Self::bump(&mut state, &mut endpoint.metadata);
        state.endpoints.insert(key_of(&endpoint.metadata), endpoint);
    }

    /// An endpoint as stored.
    pub fn endpoint(&self, namespace: &str, name: &str) -> Option<SpiderEndpoint> {
        self.state()
            .endpoints
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every endpoint stored.
    pub fn endpoints(&self) -> Vec<SpiderEndpoint> {
        self.state().endpoints.values().cloned().collect()
    }

    /// Puts a namespace in the namespace cache.
    pub fn put_namespace(&self, namespace: Namespace) {
        self.feeds()
            .namespaces
            .apply_watcher_event(&Event::Apply(namespace));
    }

    /// Puts this node in the node cache.
    pub fn put_node(&self, node: Node) {
        self.feeds().node.apply_watcher_event(&Event::Apply(node));
    }

    /// Puts a SpiderReservedIP in its cache.
    pub fn put_reserved_ip(&self, reserved: SpiderReservedIP) {
        self.feeds().reserved.apply_watcher_event(&Event::Apply(reserved));
    }

    /// Logs a call and takes the fault scripted for it, if any.
    fn enter(&self, kind: CallKind, target: String) -> Option<Fault> {
        let mut state = self.state();
        state.calls.push(Call { kind, target });
        let index = state.scripts.iter().position(|s| s.kind == kind)?;
        let script = &mut state.scripts[index];
        let fault = script.fault.clone();
        if let Some(remaining) = &mut script.remaining {
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                state.scripts.remove(index);
            }
        }
        Some(fault)
    }

    /// Runs one call: `apply` is the API server's work (it runs unless the fault refuses the call).
    fn call<'a, T: Send + 'a>(
        &'a self,
        kind: CallKind,
        target: String,
        apply: impl FnOnce(&FakeApi) -> ApiResult<T> + Send + 'a,
    ) -> BoxFuture<'a, ApiResult<T>> {
        let fault = self.enter(kind, target);
        async move {
            match fault {
                None => apply(self),
                Some(Fault::Conflict) => Err(conflict("the object")),
                Some(Fault::Status(code)) => {
                    Err(status_error(code, "Scripted", format!("scripted HTTP {code}")))
                }
                Some(Fault::LoseResponse) => {
                    let _ = apply(self);
                    Err(lost_response())
                }
                Some(Fault::Hang) => std::future::pending().await,
                Some(Fault::Delay(delay)) => {
                    tokio::time::sleep(delay).await;
                    apply(self)
                }
                Some(Fault::Panic) => {
                    #[allow(clippy::panic, reason = "the fault this fake injects")]
                    {
                        panic!("scripted panic in a {kind:?} call")
                    }
                }
            }
        }
        .boxed()
    }
}

impl ClusterApi for FakeApi {
    fn get_pool<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ApiResult<Option<SpiderIPPool>>> {
        self.call(CallKind::GetPool, name.to_owned(), move |fake| {
            Ok(fake.state().pools.get(name).cloned())
        })
    }

    fn write_pool_status<'a>(
        &'a self,
        name: &'a str,
        write: &'a PoolStatusWrite,
    ) -> BoxFuture<'a, ApiResult<SpiderIPPool>> {
        self.call(CallKind::WritePoolStatus, name.to_owned(), move |fake| {
            let mut state = fake.state();
            let mut pool = state
                .pools
                .get(name)
                .cloned()
                .ok_or_else(|| not_found(&format!("spiderippools {name}")))?;
            if write.resource_version.is_some() && write.resource_version != pool.metadata.resource_version {
                return Err(conflict(&format!("spiderippools {name}")));
            }
            let status = pool.status.get_or_insert_with(Default::default);
            status.allocated_ips.clone_from(&write.allocated_ips);
            status.allocated_ip_count = Some(i64::try_from(write.allocated_ip_count).unwrap_or(i64::MAX));
            Self::bump(&mut state, &mut pool.metadata);
            state.pools.insert(name.to_owned(), pool.clone());
            fake.publish_pool(state, pool.clone());
            Ok(pool)
        })
    }

    fn get_endpoint<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, ApiResult<Option<SpiderEndpoint>>> {
        self.call(
            CallKind::GetEndpoint,
            format!("{namespace}/{name}"),
            move |fake| Ok(fake.endpoint(namespace, name)),
        )
    }

    fn list_endpoints<'a>(
        &'a self,
        scope: EndpointScope<'a>,
    ) -> BoxFuture<'a, ApiResult<Vec<SpiderEndpoint>>> {
        let target = match scope {
            EndpointScope::Node(label) => format!("{LABEL_NODE}={label}"),
            EndpointScope::Namespace(namespace) => namespace.to_owned(),
        };
        self.call(CallKind::ListEndpoints, target, move |fake| {
            Ok(fake
                .endpoints()
                .into_iter()
                .filter(|ep| match scope {
                    EndpointScope::Node(label) => {
                        ep.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(LABEL_NODE))
                            .map(String::as_str)
                            == Some(label)
                    }
                    EndpointScope::Namespace(namespace) => {
                        ep.metadata.namespace.as_deref() == Some(namespace)
                    }
                })
                .collect())
        })
    }

    fn create_endpoint<'a>(
        &'a self,
        endpoint: &'a SpiderEndpoint,
    ) -> BoxFuture<'a, ApiResult<SpiderEndpoint>> {
        let key = key_of(&endpoint.metadata);
        self.call(
            CallKind::CreateEndpoint,
            format!("{}/{}", key.0, key.1),
            move |fake| {
                let mut state = fake.state();
                if state.endpoints.contains_key(&key) {
                    return Err(status_error(
                        409,
                        "AlreadyExists",
                        format!("spiderendpoints {} already exists", key.1),
                    ));
                }
                let mut created = endpoint.clone();
                state.next_uid += 1;
                created.metadata.uid = Some(format!("ep-uid-{}", state.next_uid));
                Self::bump(&mut state, &mut created.metadata);
                state.endpoints.insert(key, created.clone());
                Ok(created)
            },
        )
    }

    fn replace_endpoint<'a>(
        &'a self,
        endpoint: &'a SpiderEndpoint,
    ) -> BoxFuture<'a, ApiResult<SpiderEndpoint>> {
        let key = key_of(&endpoint.metadata);
        self.call(
            CallKind::ReplaceEndpoint,
            format!("{}/{}", key.0, key.1),
            move |fake| {
                let mut state = fake.state();
                let current = state
                    .endpoints
                    .get(&key)
                    .ok_or_else(|| not_found(&format!("spiderendpoints {}", key.1)))?;
                if endpoint.metadata.resource_version.is_some()
                    && endpoint.metadata.resource_version != current.metadata.resource_version
                {
                    return Err(conflict(&format!("spiderendpoints {}", key.1)));
                }
                let mut replaced = endpoint.clone();
                replaced.metadata.uid.clone_from(&current.metadata.uid);
                replaced
                    .metadata
                    .deletion_timestamp
                    .clone_from(&current.metadata.deletion_timestamp);
                Self::bump(&mut state, &mut replaced.metadata);
                state.endpoints.insert(key, replaced.clone());
                Ok(replaced)
            },
        )
    }

    fn set_endpoint_container<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        container_id: &'a str,
    ) -> BoxFuture<'a, ApiResult<()>> {
        self.call(
            CallKind::SetEndpointContainer,
            format!("{namespace}/{name}"),
            move |fake| {
                let mut state = fake.state();
                let key = (namespace.to_owned(), name.to_owned());
                let mut endpoint = state
                    .endpoints
                    .get(&key)
                    .cloned()
                    .ok_or_else(|| not_found(&format!("spiderendpoints {name}")))?;
                endpoint
                    .metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(ANNO_CONTAINER_ID.to_owned(), container_id.to_owned());
                Self::bump(&mut state, &mut endpoint.metadata);
                state.endpoints.insert(key, endpoint);
                Ok(())
            },
        )
    }

    fn remove_endpoint_finalizers<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        resource_version: Option<&'a str>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        self.call(
            CallKind::RemoveEndpointFinalizers,
            format!("{namespace}/{name}"),
            move |fake| {
                let mut state = fake.state();
                let key = (namespace.to_owned(), name.to_owned());
                let mut endpoint = state
                    .endpoints
                    .get(&key)
                    .cloned()
                    .ok_or_else(|| not_found(&format!("spiderendpoints {name}")))?;
                if resource_version.is_some()
                    && resource_version != endpoint.metadata.resource_version.as_deref()
                {
                    return Err(conflict(&format!("spiderendpoints {name}")));
                }
                endpoint.metadata.finalizers = None;
                if endpoint.metadata.deletion_timestamp.is_some() {
                    state.endpoints.remove(&key);
                    return Ok(());
                }
                Self::bump(&mut state, &mut endpoint.metadata);
                state.endpoints.insert(key, endpoint);
                Ok(())
            },
        )
    }

    fn delete_endpoint<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: Option<&'a str>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        self.call(
            CallKind::DeleteEndpoint,
            format!("{namespace}/{name}"),
            move |fake| {
                let mut state = fake.state();
                let key = (namespace.to_owned(), name.to_owned());
                let mut endpoint = state
                    .endpoints
                    .get(&key)
                    .cloned()
                    .ok_or_else(|| not_found(&format!("spiderendpoints {name}")))?;
                if uid.is_some() && endpoint.metadata.uid.as_deref() != uid {
                    return Err(conflict(&format!(
                        "spiderendpoints {name}: Precondition failed: UID in precondition: {}, UID in object meta: {}",
                        uid.unwrap_or_default(),
                        endpoint.metadata.uid.as_deref().unwrap_or_default()
                    )));
                }
                if endpoint
                    .metadata
                    .finalizers
                    .as_ref()
                    .is_some_and(|f| !f.is_empty())
                {
                    endpoint.metadata.deletion_timestamp =
                        Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
                    Self::bump(&mut state, &mut endpoint.metadata);
                    state.endpoints.insert(key, endpoint);
                } else {
                    state.endpoints.remove(&key);
                }
                Ok(())
            },
        )
    }

    fn get_pod<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, ApiResult<Option<Pod>>> {
        self.call(CallKind::GetPod, format!("{namespace}/{name}"), move |fake| {
            Ok(fake
                .state()
                .pods
                .get(&(namespace.to_owned(), name.to_owned()))
                .cloned())
        })
    }

    fn get_owner<'a>(
        &'a self,
        kind: OwnerKind,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, ApiResult<Option<ObjectMeta>>> {
        self.call(
            CallKind::GetOwner,
            format!("{} {namespace}/{name}", kind.as_str()),
            move |fake| {
                Ok(fake
                    .state()
                    .owners
                    .get(&(kind, namespace.to_owned(), name.to_owned()))
                    .cloned())
            },
        )
    }

    fn get_nad<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, ApiResult<Option<NetworkAttachmentDefinition>>> {
        self.call(CallKind::GetNad, format!("{namespace}/{name}"), move |fake| {
            Ok(fake
                .state()
                .nads
                .get(&(namespace.to_owned(), name.to_owned()))
                .cloned())
        })
    }
}

#[cfg(test)]
mod tests;
