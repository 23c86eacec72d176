//! Reserving ahead, the I/O shell of [`crate::ipam::ahead`]: whenever the cache of pods bound to this
//! node changes, every pod that newly waits for its network has its pools guessed, and the writers of
//! those pools are told to expect demand ([`PoolWriters::expect_demand`]). Each pool's writer then
//! reserves for the pods to come, sized as it would after an ADD, before the first ADD arrives.
//!
//! The CNI configuration of a pod's interface comes from its NetworkAttachmentDefinition (Multus'
//! rules, [`filter::attachment_network`]), read from the API server and kept for
//! [`NAD_CACHE_TTL`]. A NetworkAttachmentDefinition that cannot be read (none, no Multus CRD, no
//! permission) only means the CNI-configuration rules are not guessed for that interface.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use spiderpool_ipmath::IpFamily;

use crate::api::ClusterApi;
use crate::clock;
use crate::config::Config;
use crate::ipam::ahead;
use crate::ipam::candidates::{self, CandidateInput};
use crate::ipam::filter::{self, PodScope};
use crate::store::{self, Stores};
use crate::writer::PoolWriters;

/// How long a NetworkAttachmentDefinition's default pools are used before being read again.
pub const NAD_CACHE_TTL: Duration = Duration::from_secs(30);

/// Default pools per family of a CNI configuration; `None`: not known (unreadable, or not using
/// `spiderpool` IPAM).
type NetconfPools = Option<(Vec<String>, Vec<String>)>;

/// The task's state.
pub struct ReserveAhead {
    config: Config,
    stores: Stores,
    writers: PoolWriters,
    nads: NadCache,
    /// UIDs of the pods already looked at (a pod is guessed for once, when it starts waiting).
    seen: HashSet<String>,
}

/// The default pools of the NetworkAttachmentDefinitions read so far.
struct NadCache {
    api: Arc<dyn ClusterApi>,
    /// NetworkAttachmentDefinition (`ns/name`) to its default pools, with when it was read.
    read: HashMap<String, (Instant, NetconfPools)>,
}

impl ReserveAhead {
    /// The task for this node (`config`), reading the caches and NetworkAttachmentDefinitions through
    /// `api`, telling `writers`.
    pub fn new(api: Arc<dyn ClusterApi>, config: Config, stores: Stores, writers: PoolWriters) -> Self {
        ReserveAhead {
            config,
            stores,
            writers,
            nads: NadCache {
                api,
                read: HashMap::new(),
            },
            seen: HashSet::new(),
        }
    }

    /// Runs until the process ends: one scan now (pods bound before the daemon started), then one
    /// per change of the pod cache.
    pub async fn run(mut self) {
        let changes = self.stores.pod_changes.clone();
        loop {
            self.scan().await;
            changes.notified().await;
        }
    }

    /// Looks at the pods that newly wait for their network and tells the writers of their pools.
    async fn scan(&mut self) {
        let mut live = HashSet::new();
        let mut expected: Vec<String> = Vec::new();
        for pod in self.stores.pods.state() {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            live.insert(uid.clone());
            if !store::awaits_network(&pod) || !self.seen.insert(uid.clone()) {
                continue;
            }
            let pools = self.expected_pools(&pod).await;
            self.writers.note_guess(&uid, &pools);
            for pool in pools {
                if !expected.contains(&pool) {
                    expected.push(pool);
                }
            }
        }
        self.seen.retain(|uid| live.contains(uid));
        self.writers.keep_guesses(&live);
        for pool in expected {
            tracing::debug!(
                pool,
                "pods bound to this node will ask this pool; reserving ahead"
            );
            self.writers.expect_demand(&pool);
        }
    }

    /// The pools the pod's ADDs will most likely draw from, one guess per interface Multus gives it
    /// (eth0 and the entries of `k8s.v1.cni.cncf.io/networks`).
    async fn expected_pools(&mut self, pod: &Pod) -> Vec<String> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let (namespace_labels, namespace_annotations) = self.stores.namespace_meta(&namespace);
        let node_labels = self.stores.node_labels();
        let scope = PodScope {
            namespace: &namespace,
            labels: &labels,
            annotations: &annotations,
            node_name: &self.config.node_name,
            node_labels: &node_labels,
            namespace_labels: &namespace_labels,
            default_multus_namespace: &self.config.namespace,
            cluster_network: self.config.cluster_network.as_deref(),
        };
        let (all_v4, default_v4) = self.stores.pool_names(IpFamily::V4);
        let (all_v6, default_v6) = self.stores.pool_names(IpFamily::V6);
        let mut expected: Vec<String> = Vec::new();
        for (nic, network) in filter::attachments(&scope) {
            let netconf = match network {
                Some(network) => self.nads.default_pools(&network).await,
                None => None,
            };
            let known = netconf.is_some();
            let (netconf_v4, netconf_v6) = netconf.unwrap_or_default();
            let chosen = candidates::candidates(&CandidateInput {
                netconf_ipv4: &netconf_v4,
                netconf_ipv6: &netconf_v6,
                cluster_default_ipv4: if known { &default_v4 } else { &[] },
                cluster_default_ipv6: if known { &default_v6 } else { &[] },
                all_ipv4: &all_v4,
                all_ipv6: &all_v6,
                enable_ipv4: self.config.enable_ipv4,
                enable_ipv6: self.config.enable_ipv6,
                enable_auto_pools: self.config.enable_auto_pools,
                ..CandidateInput::new(&annotations, &namespace_annotations, &nic)
            });
            let Ok(chosen) = chosen else { continue };
            for pool in ahead::expected_pools(&chosen, |name| self.stores.pool(name), &scope) {
                // A sharded pool's first shard in this node's order is where the pod will draw.
                let served = self
                    .stores
                    .pool(&pool)
                    .and_then(|whole| {
                        self.stores
                            .serve_order(whole, &self.config.node_name)
                            .into_iter()
                            .next()
                    })
                    .and_then(|first| first.metadata.name.clone())
                    .unwrap_or(pool);
                if !expected.contains(&served) {
                    expected.push(served);
                }
            }
        }
        expected
    }
}

impl NadCache {
    /// The default pools of a NetworkAttachmentDefinition's CNI configuration, read again once
    /// older than [`NAD_CACHE_TTL`].
    async fn default_pools(&mut self, network: &str) -> NetconfPools {
        let now = clock::now();
        if let Some((read, pools)) = self.read.get(network)
            && now.duration_since(*read) < NAD_CACHE_TTL
        {
            return pools.clone();
        }
        let pools = self.fetch(network).await;
        self.read.insert(network.to_owned(), (now, pools.clone()));
        pools
    }

    async fn fetch(&self, network: &str) -> NetconfPools {
        let (namespace, name) = network.split_once('/')?;
        let nad = match self.api.get_nad(namespace, name).await {
            Ok(nad) => nad?,
            Err(e) => {
                tracing::debug!(network, error = %e, "reading the NetworkAttachmentDefinition failed");
                return None;
            }
        };
        let config = nad.spec.config_json().ok()??;
        ahead::netconf_default_pools(&config)
    }
}
