//! Watch caches (kube-runtime reflectors) of what every allocation reads: pools (metadata watched,
//! whole objects read when needed: [`PoolCache`]), reserved IPs, namespaces, this daemon's own Node
//! and the pods bound to it. Endpoints and owners are read
//! directly. A pod is only taken from the cache when its UID is the one the runtime names (a
//! recreated pod of the same name is read from the API server); the kubelet runs CNI ADD well after
//! the pod was bound, so the cache has it, as upstream's agent relies on too.

use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::pool_cache::PoolCache;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, PodSpec, PodStatus};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use spiderpool_ipmath::{IpFamily, IpSet};
use spiderpool_schema::{SpiderIPPool, SpiderReservedIP};
use tokio::sync::Notify;

use crate::ipam::{pool, shards};

/// The caches. Cheap to clone.
#[derive(Clone)]
pub struct Stores {
    /// Every SpiderIPPool.
    pub pools: PoolCache,
    /// Every SpiderReservedIP.
    pub reserved: Store<SpiderReservedIP>,
    /// Every Namespace.
    pub namespaces: Store<Namespace>,
    /// This daemon's Node.
    pub node: Store<Node>,
    /// The pods bound to this node (without managedFields).
    pub pods: Store<Pod>,
    /// Notified whenever the pod cache changes (a permit is kept while nobody waits, so changes
    /// during a scan lead to one more scan).
    pub pod_changes: Arc<Notify>,
}

/// The writing ends of caches filled by hand ([`Stores::in_memory`]).
pub struct StoreFeeds {
    /// SpiderIPPools ([`PoolCache::apply`], [`PoolCache::show`], [`PoolCache::remove`]).
    pub pools: PoolCache,
    /// SpiderReservedIPs.
    pub reserved: reflector::store::Writer<SpiderReservedIP>,
    /// Namespaces.
    pub namespaces: reflector::store::Writer<Namespace>,
    /// This node.
    pub node: reflector::store::Writer<Node>,
    /// The pods bound to this node.
    pub pods: reflector::store::Writer<Pod>,
    /// Notified after a pod change, as the pod watch does.
    pub pod_changes: Arc<Notify>,
}

impl Stores {
    /// Starts the reflectors (on the current tokio runtime) and returns their stores; they fill
    /// asynchronously, see [`Stores::wait_ready`].
    pub fn start(client: &Client, node_name: &str) -> Self {
        let pod_changes = Arc::new(Notify::new());
        Stores {
            pools: PoolCache::start(client),
            reserved: reflect(Api::all(client.clone()), watcher::Config::default(), None),
            namespaces: reflect(Api::all(client.clone()), watcher::Config::default(), None),
            node: reflect(
                Api::all(client.clone()),
                watcher::Config::default().fields(&format!("metadata.name={node_name}")),
                None,
            ),
            pods: reflect_with(
                Api::all(client.clone()),
                watcher::Config::default().fields(&format!("spec.nodeName={node_name}")),
                Some(pod_changes.clone()),
                keep_what_the_agent_reads,
            ),
            pod_changes,
        }
    }

    /// Caches filled by hand (the fake API server, [`crate::api::fake`]): every cache is ready and
    /// empty; `feeds` writes into them.
    pub fn in_memory() -> (Self, StoreFeeds) {
        fn ready<K>() -> (Store<K>, reflector::store::Writer<K>)
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Default + Eq + std::hash::Hash + Clone,
        {
            let (reader, mut writer) = reflector::store();
            writer.apply_watcher_event(&watcher::Event::Init);
            writer.apply_watcher_event(&watcher::Event::InitDone);
            (reader, writer)
        }
        let pools = PoolCache::ready_empty();
        let (reserved, reserved_feed) = ready();
        let (namespaces, namespaces_feed) = ready();
        let (node, node_feed) = ready();
        let (pods, pods_feed) = ready();
        let pod_changes = Arc::new(Notify::new());
        let stores = Stores {
            pools: pools.clone(),
            reserved,
            namespaces,
            node,
            pods,
            pod_changes: pod_changes.clone(),
        };
        let feeds = StoreFeeds {
            pools,
            reserved: reserved_feed,
            namespaces: namespaces_feed,
            node: node_feed,
            pods: pods_feed,
            pod_changes,
        };
        (stores, feeds)
    }

    /// Waits until every cache has its first full list.
    pub async fn wait_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.pools.wait_ready().await;
        self.reserved.wait_until_ready().await?;
        self.namespaces.wait_until_ready().await?;
        self.node.wait_until_ready().await?;
        self.pods.wait_until_ready().await?;
        Ok(())
    }

    /// The union of every non-terminating SpiderReservedIP of `family`.
    pub fn reserved_ips(&self, family: IpFamily) -> IpSet {
        let mut set = IpSet::empty(family);
        for reserved in self.reserved.state() {
            if reserved.meta().deletion_timestamp.is_some() || reserved.spec.family() != Some(family) {
                continue;
            }
            match IpSet::parse_list(family, &reserved.spec.ips) {
                Ok(ips) => {
                    if let Ok(union) = set.union(&ips) {
                        set = union;
                    }
                }
                Err(errors) => tracing::warn!(
                    reserved_ip = reserved.meta().name.as_deref().unwrap_or_default(),
                    ?errors,
                    "ignoring unparsable SpiderReservedIP"
                ),
            }
        }
        set
    }

    /// Every pool in the cache, as last read whole.
    pub fn pools(&self) -> Vec<Arc<SpiderIPPool>> {
        self.pools.all()
    }

    /// A pool by name, as last read whole: its spec, labels and annotations are the newest the watch
    /// has shown once [`PoolCache`] has read them; its status may be older.
    pub fn pool(&self, name: &str) -> Option<Arc<SpiderIPPool>> {
        self.pools.whole(name)
    }

    /// The pools to ask, in order, for candidate `pool` on node `node` ([`shards::serve_order`]):
    /// the pool itself, or the shards it is served through.
    pub fn serve_order(&self, pool: Arc<SpiderIPPool>, node: &str) -> Vec<Arc<SpiderIPPool>> {
        if !spiderpool_schema::shards::is_sharded(&pool.metadata) {
            return vec![pool];
        }
        let uid = pool.metadata.uid.clone().unwrap_or_default();
        let its_shards = self.shards_of(&uid);
        shards::serve_order(pool, &its_shards, node)
    }

    /// The shards of the pool of UID `uid` in the cache, by index.
    pub fn shards_of(&self, uid: &str) -> Vec<Arc<SpiderIPPool>> {
        let mut its_shards: Vec<Arc<SpiderIPPool>> = self
            .pools
            .all()
            .into_iter()
            .filter(|p| spiderpool_schema::shards::shard_of(p) == Some(uid))
            .collect();
        its_shards.sort_by_key(|p| spiderpool_schema::shards::shard_index(p));
        its_shards
    }

    /// Names of every pool of `family`, and of those with `spec.default: true`, both in name order;
    /// not shards (pods reach them through their pool).
    pub fn pool_names(&self, family: IpFamily) -> (Vec<String>, Vec<String>) {
        let mut all = Vec::new();
        let mut defaults = Vec::new();
        for pool in self.pools.all() {
            if pool::family(&pool) != Some(family) || spiderpool_schema::shards::shard_of(&pool).is_some() {
                continue;
            }
            let name = pool.meta().name.clone().unwrap_or_default();
            if pool.spec.default == Some(true) {
                defaults.push(name.clone());
            }
            all.push(name);
        }
        all.sort();
        defaults.sort();
        (all, defaults)
    }

    /// A namespace's labels and annotations (empty when unknown).
    pub fn namespace_meta(&self, name: &str) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        match self.namespaces.get(&reflector::ObjectRef::new(name)) {
            Some(ns) => (
                ns.meta().labels.clone().unwrap_or_default(),
                ns.meta().annotations.clone().unwrap_or_default(),
            ),
            None => Default::default(),
        }
    }

    /// A pod bound to this node, if the cache has it with UID `uid`.
    pub fn pod(&self, namespace: &str, name: &str, uid: &str) -> Option<Arc<Pod>> {
        if uid.is_empty() {
            return None;
        }
        self.pods
            .get(&reflector::ObjectRef::new(name).within(namespace))
            .filter(|pod| pod.metadata.uid.as_deref() == Some(uid))
    }

    /// A pod bound to this node, if the cache has it (any UID).
    pub fn pod_by_name(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods.get(&reflector::ObjectRef::new(name).within(namespace))
    }

    /// Whether a pod bound to this node with UID `uid` is in the cache and may still use its network
    /// ([`crate::ipam::owner::is_pod_alive`]).
    pub fn pod_alive(&self, uid: &str) -> bool {
        self.pods
            .state()
            .iter()
            .any(|pod| pod.metadata.uid.as_deref() == Some(uid) && crate::ipam::owner::is_pod_alive(pod))
    }

    /// How many pods bound to this node, as far as the cache shows, still wait for their network
    /// ([`awaits_network`]) and are not ruled out by `skip` (by UID: they hold an address already, or
    /// will ask another pool). A forecast of the ADDs to come, for sizing reservations only.
    pub fn pods_awaiting_network(&self, skip: impl Fn(&str) -> bool) -> usize {
        self.pods
            .state()
            .iter()
            .filter(|pod| awaits_network(pod) && pod.metadata.uid.as_deref().is_some_and(|uid| !skip(uid)))
            .count()
    }

    /// This node's labels.
    pub fn node_labels(&self) -> BTreeMap<String, String> {
        self.node
            .state()
            .first()
            .and_then(|n| n.meta().labels.clone())
            .unwrap_or_default()
    }
}

/// Whether a pod's sandbox network is presumably still to be set up: it is pending without a pod IP,
/// not on the host network and not being deleted. (The scheduler binds a pod before its kubelet
/// creates the sandbox and calls CNI ADD; the pod IP is reported after.)
pub fn awaits_network(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && pod.spec.as_ref().and_then(|s| s.host_network) != Some(true)
        && status
            .and_then(|s| s.phase.as_deref())
            .is_none_or(|p| p == "Pending")
        && status.and_then(|s| s.pod_ip.as_deref()).is_none_or(str::is_empty)
}

/// Cuts a cached pod down to what the agent reads of it: its metadata, and of its spec and status
/// the fields that say whether it waits for its network or may still use it ([`awaits_network`],
/// [`crate::ipam::owner::is_pod_alive`]). Containers, volumes, conditions and container statuses
/// are most of a pod's size, and the agent keeps every pod of its node. A pod read from the API
/// server (not the cache) is whole.
pub fn keep_what_the_agent_reads(pod: &mut Pod) {
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        node_name: spec.node_name,
        host_network: spec.host_network,
        restart_policy: spec.restart_policy,
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        reason: status.reason,
        pod_ip: status.pod_ip,
        pod_ips: status.pod_ips,
        ..PodStatus::default()
    });
}

/// A reflector's store; `changed`, if given, is notified after every object the watch applies.
fn reflect<K>(api: Api<K>, config: watcher::Config, changed: Option<Arc<Notify>>) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    reflect_with(api, config, changed, |_| {})
}

/// [`reflect`], with `trim` applied to every object before it is cached.
fn reflect_with<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: Option<Arc<Notify>>,
    trim: fn(&mut K),
) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    // The first list (and any relist) is served from the API server's watch cache (resourceVersion
    // "0"), as client-go's informers do, not read from etcd: every node's agent starts these lists,
    // often all at once, and a consistent list of the pods of one node by field selector has the
    // API server read every pod of the cluster from etcd, once per agent. A list from the cache may
    // be a little older than the newest write; the watch that follows brings it up to date, and
    // nothing decided from these caches goes out unchecked (pool writes carry the resourceVersion
    // they were decided against; a pod is taken from the cache only with the UID the runtime names).
    let mut config = config.any_semantic();
    // kube leaves resourceVersion "0" out of a list that has a limit (a consistent read again), so
    // the first list is not paginated; the watch cache answers a list whole in any case.
    config.page_size = None;
    // Nothing here reads managedFields; dropping them roughly halves what a cached object costs.
    let events = watcher(api, config)
        .default_backoff()
        .modify(move |object: &mut K| {
            object.meta_mut().managed_fields = None;
            trim(object);
        });
    let stream = reflector::reflector(writer, events).applied_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => {
                    if let Some(changed) = &changed {
                        changed.notify_one();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "watch error (retrying)"),
            }
        }
    });
    reader
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use super::*;

    #[test]
    fn shards_are_no_pool_names_and_serve_their_pool_from_the_cache() {
        use spiderpool_schema::SpiderIPPoolSpec;
        use spiderpool_schema::shards::{ANNOTATION_SHARD_SIZE, LABEL_SHARD_INDEX, LABEL_SHARD_OF};

        let (stores, feeds) = Stores::in_memory();
        let spec = SpiderIPPoolSpec {
            ip_version: Some(4),
            subnet: "10.0.0.0/16".into(),
            default: Some(true),
            ..SpiderIPPoolSpec::default()
        };
        let mut big = SpiderIPPool::new("big", spec.clone());
        big.metadata.uid = Some("uid-big".into());
        big.metadata.annotations = Some([(ANNOTATION_SHARD_SIZE.to_owned(), "16".to_owned())].into());
        feeds.pools.apply(big);
        for index in [1, 0] {
            // A shard copied the pool's spec but for `default` (here even that, to show the label rules).
            let mut shard = SpiderIPPool::new(&format!("big-shard-{index}"), spec.clone());
            shard.metadata.labels = Some(
                [
                    (LABEL_SHARD_OF.to_owned(), "uid-big".to_owned()),
                    (LABEL_SHARD_INDEX.to_owned(), index.to_string()),
                ]
                .into(),
            );
            feeds.pools.apply(shard);
        }
        feeds.pools.apply(SpiderIPPool::new("other", spec));
        let (all, defaults) = stores.pool_names(IpFamily::V4);
        assert_eq!(all, ["big", "other"], "shards match no wildcard");
        assert_eq!(defaults, ["big", "other"], "shards are no cluster default");
        let big = stores.pool("big").unwrap();
        let served: Vec<String> = stores
            .serve_order(big, "n1")
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        let home = shards::home_index("n1", 2);
        assert_eq!(
            served,
            [format!("big-shard-{home}"), format!("big-shard-{}", 1 - home)]
        );
        let other = stores.pool("other").unwrap();
        assert_eq!(stores.serve_order(other, "n1").len(), 1);
    }

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_cached_pod_keeps_everything_the_agent_reads_and_nothing_else() {
        let whole = pod(serde_json::json!({
            "metadata": {
                "name": "a", "namespace": "ns", "uid": "u1",
                "labels": {"app": "a"}, "annotations": {"ipam.spidernet.io/ippool": "{}"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "s", "uid": "u0", "controller": true}]
            },
            "spec": {
                "nodeName": "n1", "hostNetwork": false, "restartPolicy": "Never",
                "containers": [{"name": "c", "image": "i", "env": [{"name": "E", "value": "v"}]}],
                "volumes": [{"name": "v", "emptyDir": {}}]
            },
            "status": {
                "phase": "Failed", "reason": "Evicted", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0}]
            }
        }));
        let mut cached = whole.clone();
        keep_what_the_agent_reads(&mut cached);
        assert_eq!(cached.metadata, whole.metadata);
        let spec = cached.spec.as_ref().unwrap();
        assert!(spec.containers.is_empty() && spec.volumes.is_none());
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        let status = cached.status.as_ref().unwrap();
        assert!(status.conditions.is_none() && status.container_statuses.is_none());
        assert_eq!(status.pod_ips.as_ref().map(Vec::len), Some(1));
        // The same answers from the cut pod as from the whole one, for every phase and policy.
        for phase in ["Pending", "Running", "Succeeded", "Failed"] {
            for policy in ["Always", "OnFailure", "Never"] {
                for pod_ip in [None, Some("10.0.0.1")] {
                    let mut whole = whole.clone();
                    let spec = whole.spec.as_mut().unwrap();
                    spec.restart_policy = Some(policy.to_owned());
                    let status = whole.status.as_mut().unwrap();
                    status.phase = Some(phase.to_owned());
                    status.pod_ip = pod_ip.map(str::to_owned);
                    let mut cached = whole.clone();
                    keep_what_the_agent_reads(&mut cached);
                    assert_eq!(awaits_network(&cached), awaits_network(&whole));
                    assert_eq!(
                        crate::ipam::owner::is_pod_alive(&cached),
                        crate::ipam::owner::is_pod_alive(&whole)
                    );
                }
            }
        }
        // The cut pod is smaller than the whole.
        let size = |pod: &Pod| serde_json::to_vec(pod).unwrap().len();
        assert!(size(&cached) < size(&whole));
    }

    #[test]
    fn only_pending_pods_without_an_address_await_their_network() {
        assert!(awaits_network(&pod(
            serde_json::json!({"metadata": {"name": "a"}})
        )));
        assert!(awaits_network(&pod(serde_json::json!({
            "metadata": {"name": "a"}, "status": {"phase": "Pending"}
        }))));
        assert!(!awaits_network(&pod(serde_json::json!({
            "metadata": {"name": "a"}, "status": {"phase": "Pending", "podIP": "10.0.0.1"}
        }))));
        assert!(!awaits_network(&pod(serde_json::json!({
            "metadata": {"name": "a"}, "status": {"phase": "Running"}
        }))));
        assert!(!awaits_network(&pod(serde_json::json!({
            "metadata": {"name": "a"}, "spec": {"containers": [], "hostNetwork": true}
        }))));
        assert!(!awaits_network(&pod(serde_json::json!({
            "metadata": {"name": "a", "deletionTimestamp": "2026-11-24T00:00:00Z"}
        }))));
    }
}
