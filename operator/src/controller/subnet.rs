//! The SpiderSubnet controllers (upstream's subnet informer and SubnetAppController).
//!
//! - Subnet status: `status.totalIPCount` (`ips − excludeIPs`), `status.controlledIPPools` (every pool
//!   with the subnet's CIDR: its `ips`, and for automatic pools the application key) and
//!   `status.allocatedIPCount` (addresses handed to those pools). Pools with the identical CIDR are
//!   adopted: controller ownerReference to the subnet, label `ipam.spidernet.io/owner-spider-subnet`,
//!   and the subnet's gateway/routes when the pool has none. A terminating subnet deletes its pools and
//!   drops its finalizer once they are gone.
//! - Automatic pools ([`autopool`], [`apps`]): Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs
//!   and CronJobs whose pod template carries `ipam.spidernet.io/subnet(s)`, and pods of third-party
//!   controllers with a fixed `ipam.spidernet.io/ippool-ip-number`, get one pool per interface and
//!   family, carved from the lowest free addresses of the subnet and resized with the application.
//!
//! Pure parts: [`subnet_total`], [`controlled_pools`], [`status_patch`], [`adoption_patch`].

pub mod apps;
pub mod autopool;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use spiderpool_ipmath::{IpFamily, IpNet, IpSet, parse_cidr};
use spiderpool_schema::annotations::AppRef;
use spiderpool_schema::labels::LABEL_OWNER_SPIDER_SUBNET;
use spiderpool_schema::subnet::PoolIPPreAllocation;
use spiderpool_schema::{SpiderIPPool, SpiderSubnet, SpiderSubnetSpec};

use super::cache::{CacheEvent, SharedCache};
use super::ippool::{finalizer_patch, is_conflict, is_not_found, pool_family};

/// How the subnet controllers run.
#[derive(Debug, Clone)]
pub struct SubnetControllerConfig {
    /// Every subnet and application is reconciled again after this long (upstream: 300 s).
    pub resync: Duration,
    /// Delay before retrying something that failed (upstream: 5 s).
    pub retry_delay: Duration,
    /// Whether IPv4 is enabled in the cluster (`enableIPv4`): a subnet annotation must then name an IPv4
    /// subnet, as upstream requires.
    pub enable_ipv4: bool,
    /// Whether IPv6 is enabled (`enableIPv6`).
    pub enable_ipv6: bool,
    /// Whether automatic pools are made at all (`enableAutoPoolForApplication`).
    pub enable_auto_pool: bool,
    /// Spare addresses of an automatic pool whose application does not say
    /// (`ipam.spiderSubnet.autoPool.defaultRedundantIPNumber`, Helm default 1; upstream ignores it
    /// because of a key mismatch, bug 13.5).
    pub default_spare_ips: u32,
}

impl Default for SubnetControllerConfig {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(300),
            retry_delay: Duration::from_secs(5),
            enable_ipv4: true,
            enable_ipv6: true,
            enable_auto_pool: true,
            default_spare_ips: 1,
        }
    }
}

/// What can go wrong with a subnet.
#[derive(Debug, thiserror::Error)]
pub enum SubnetError {
    /// The subnet's addresses do not parse (the webhook should have refused them).
    #[error("subnet {subnet}: {field}: {reason}")]
    BadSpec {
        /// Subnet name.
        subnet: String,
        /// Field at fault.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// `status.controlledIPPools` could not be encoded.
    #[error("subnet {subnet}: encoding status.controlledIPPools: {source}")]
    Encode {
        /// Subnet name.
        subnet: String,
        /// Encoder error.
        source: serde_json::Error,
    },
    /// The API server refused or failed a request.
    #[error("subnet {subnet}: {action}: {source}")]
    Kube {
        /// Subnet name.
        subnet: String,
        /// What we tried.
        action: &'static str,
        /// The client error.
        source: kube::Error,
    },
}

/// The subnet's CIDR and the addresses it may hand to pools (`ips − excludeIPs`).
pub fn subnet_total(name: &str, spec: &SpiderSubnetSpec) -> Result<(IpNet, IpSet), SubnetError> {
    let bad = |field, reason: String| SubnetError::BadSpec {
        subnet: name.to_string(),
        field,
        reason,
    };
    let net = parse_cidr(&spec.subnet).map_err(|e| bad("spec.subnet", e.to_string()))?;
    let family = IpFamily::of_net(&net);
    let parse = |items: &[String], field| {
        IpSet::parse_list(family, items).map_err(|errors| {
            bad(
                field,
                errors
                    .iter()
                    .map(|e| format!("[{}] {}", e.index, e.error))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
    };
    let ips = parse(&spec.ips, "spec.ips")?;
    let excluded = parse(&spec.exclude_ips, "spec.excludeIPs")?;
    Ok((net.trunc(), ips.difference(&excluded)))
}

/// Whether a pool's `spec.subnet` is exactly `net` (compared as networks, so spelling does not matter).
pub fn pool_in_subnet(pool: &SpiderIPPool, net: &IpNet) -> bool {
    parse_cidr(&pool.spec.subnet).is_ok_and(|p| p.trunc() == *net && p.prefix_len() == net.prefix_len())
}

/// The addresses of a pool's `spec.ips` (unparsable pools count as empty: the webhook refuses them).
pub fn pool_ips(pool: &SpiderIPPool) -> IpSet {
    let name = pool.name_any();
    match pool_family(&name, &pool.spec) {
        Ok(family) => IpSet::parse_list(family, &pool.spec.ips).unwrap_or_else(|_| IpSet::empty(family)),
        Err(_) => IpSet::empty(IpFamily::V4),
    }
}

/// `status.controlledIPPools` for the pools of a subnet (already filtered to its CIDR): each pool's
/// addresses, with the application key for automatic pools; not the shards of a pool.
pub fn controlled_pools<'a>(
    pools: impl IntoIterator<Item = &'a SpiderIPPool>,
) -> BTreeMap<String, PoolIPPreAllocation> {
    pools
        .into_iter()
        .filter(|p| p.meta().deletion_timestamp.is_none())
        // A shard holds addresses of its pool, which the subnet already counts.
        .filter(|p| spiderpool_schema::shards::shard_of(p).is_none())
        .map(|pool| {
            (
                pool.name_any(),
                PoolIPPreAllocation {
                    ips: pool_ips(pool).to_strings(),
                    application: AppRef::from_pool_labels(pool.labels()).map(|a| a.application_key()),
                },
            )
        })
        .collect()
}

/// The status merge patch that makes a subnet's status true, or `None` when it already is. `total` is
/// `ips − excludeIPs`; the allocated count is the number of distinct subnet addresses the pools hold.
pub fn status_patch(
    subnet: &SpiderSubnet,
    total: &IpSet,
    controlled: &BTreeMap<String, PoolIPPreAllocation>,
) -> Result<Option<serde_json::Value>, SubnetError> {
    let mut held = IpSet::empty(total.family());
    for entry in controlled.values() {
        if let Ok(set) = IpSet::parse_list(total.family(), &entry.ips) {
            held = held.union(&set).unwrap_or(held);
        }
    }
    let mut wanted = subnet.status.clone().unwrap_or_default();
    wanted
        .set_controlled_pools(controlled)
        .map_err(|source| SubnetError::Encode {
            subnet: subnet.name_any(),
            source,
        })?;
    wanted.total_ip_count = Some(i64::try_from(total.len()).unwrap_or(i64::MAX));
    wanted.allocated_ip_count = Some(i64::try_from(held.intersection(total).len()).unwrap_or(i64::MAX));
    let current = subnet.status.clone().unwrap_or_default();
    // Compare decoded maps: equal content in a different JSON spelling is no change.
    let same_pools = current.controlled_pools().ok().as_ref() == Some(controlled);
    if same_pools
        && current.total_ip_count == wanted.total_ip_count
        && current.allocated_ip_count == wanted.allocated_ip_count
    {
        return Ok(None);
    }
    Ok(Some(json!({
        "metadata": {"resourceVersion": subnet.resource_version()},
        "status": {
            "controlledIPPools": wanted.controlled_ip_pools,
            "totalIPCount": wanted.total_ip_count,
            "allocatedIPCount": wanted.allocated_ip_count,
        },
    })))
}

/// The controller ownerReference a subnet puts on its pools.
pub fn subnet_owner_reference(subnet: &SpiderSubnet) -> Option<OwnerReference> {
    subnet.owner_reference()
}

/// The merge patch that adopts a pool into a subnet ([`SpiderSubnet::adopted`]: controller
/// ownerReference, subnet label, the subnet's gateway and routes if the pool has none), or `None` when
/// there is nothing to do. The pool webhook adopts pools at admission already; this catches pools that
/// predate their subnet.
pub fn adoption_patch(subnet: &SpiderSubnet, pool: &SpiderIPPool) -> Option<serde_json::Value> {
    let adopted = subnet.adopted(pool)?;
    let mut patch = json!({
        "metadata": {
            "resourceVersion": pool.resource_version(),
            "labels": {LABEL_OWNER_SPIDER_SUBNET: adopted.labels().get(LABEL_OWNER_SPIDER_SUBNET)},
        }
    });
    if adopted.owner_references() != pool.owner_references() {
        patch["metadata"]["ownerReferences"] = json!(adopted.owner_references());
    }
    let mut spec = serde_json::Map::new();
    if adopted.spec.gateway != pool.spec.gateway {
        spec.insert("gateway".into(), json!(adopted.spec.gateway));
    }
    if adopted.spec.routes != pool.spec.routes {
        spec.insert("routes".into(), json!(adopted.spec.routes));
    }
    if !spec.is_empty() {
        patch["spec"] = serde_json::Value::Object(spec);
    }
    Some(patch)
}

struct Context {
    client: Client,
    config: SubnetControllerConfig,
    pools: Store<SpiderIPPool>,
}

async fn reconcile(subnet: Arc<SpiderSubnet>, ctx: Arc<Context>) -> Result<Action, SubnetError> {
    let name = subnet.name_any();
    let kube_err = |action, source| SubnetError::Kube {
        subnet: name.clone(),
        action,
        source,
    };
    let subnets: Api<SpiderSubnet> = Api::all(ctx.client.clone());
    let pools_api: Api<SpiderIPPool> = Api::all(ctx.client.clone());
    let (net, total) = subnet_total(&name, &subnet.spec)?;
    let pools: Vec<Arc<SpiderIPPool>> = ctx
        .pools
        .state()
        .into_iter()
        .filter(|p| pool_in_subnet(p, &net))
        .collect();

    if subnet.meta().deletion_timestamp.is_some() {
        let owned: Vec<_> = pools
            .iter()
            .filter(|p| {
                p.owner_references()
                    .iter()
                    .any(|r| Some(&r.uid) == subnet.meta().uid.as_ref())
            })
            .collect();
        for pool in &owned {
            if pool.meta().deletion_timestamp.is_none() {
                tracing::info!(subnet = %name, pool = %pool.name_any(), "subnet is being deleted; deleting its pool");
                match pools_api.delete(&pool.name_any(), &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(kube_err("deleting a pool of the terminating subnet", e)),
                }
            }
        }
        if let Some(patch) = finalizer_patch(subnet.as_ref(), owned.is_empty()) {
            match subnets
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::info!(subnet = %name, "subnet has no pools left; finalizer removed"),
                Err(e) if is_conflict(&e) || is_not_found(&e) => {}
                Err(e) => return Err(kube_err("removing the finalizer", e)),
            }
        }
        return Ok(Action::requeue(ctx.config.retry_delay));
    }

    for pool in &pools {
        if pool.meta().deletion_timestamp.is_some() {
            continue;
        }
        if let Some(patch) = adoption_patch(&subnet, pool) {
            let pool_name = pool.name_any();
            match pools_api
                .patch(&pool_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::info!(subnet = %name, pool = %pool_name, "pool adopted by its subnet"),
                Err(e) if is_conflict(&e) || is_not_found(&e) => {}
                // The webhook may refuse a pool that does not fit the subnet; keep going with the others.
                Err(e) => tracing::warn!(subnet = %name, pool = %pool_name, error = %e, "cannot adopt pool"),
            }
        }
    }

    let controlled = controlled_pools(pools.iter().map(AsRef::as_ref));
    if let Some(patch) = status_patch(&subnet, &total, &controlled)? {
        match subnets
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::debug!(subnet = %name, pools = controlled.len(), "subnet status updated"),
            Err(e) if is_conflict(&e) => return Ok(Action::requeue(Duration::from_secs(1))),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(kube_err("writing the status", e)),
        }
    }
    Ok(Action::requeue(ctx.config.resync))
}

fn error_policy(_subnet: Arc<SpiderSubnet>, error: &SubnetError, ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "subnet reconcile failed");
    Action::requeue(ctx.config.retry_delay)
}

/// What of a pool its subnet's status and adoption depend on (generation, deletion, labels, owner
/// count), as a fingerprint: the controller remembers one per pool, and a `u64` is much smaller than a
/// copy of every pool's labels. Fingerprints are only compared within one process, so the hasher's
/// output need not be stable across versions; a collision would only delay a reconcile until the
/// periodic resync.
fn pool_shape(pool: &SpiderIPPool) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    pool.meta().generation.hash(&mut hasher);
    pool.meta().deletion_timestamp.is_some().hash(&mut hasher);
    pool.labels().hash(&mut hasher);
    pool.owner_references().len().hash(&mut hasher);
    hasher.finish()
}

/// Runs the subnet status controller and, when enabled, the automatic-pool controller, with their own
/// pool cache, until they end (they do not on their own). Run it only while leader.
pub async fn run(client: Client, config: SubnetControllerConfig) -> anyhow::Result<()> {
    let pools = SharedCache::<SpiderIPPool>::new(&client);
    let controllers = run_shared(client, config, &pools);
    pools.run_alongside(controllers).await
}

/// [`run`] on a pool cache shared with other controllers (the caller drives the cache).
pub fn run_shared(
    client: Client,
    config: SubnetControllerConfig,
    pools: &SharedCache<SpiderIPPool>,
) -> impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static {
    let subnets: Api<SpiderSubnet> = Api::all(client.clone());
    // Subnet status depends on pool specs, labels and existence, not on pool status: the allocator's
    // status writes (one per allocation) are filtered out before they trigger subnet reconciles.
    let mut seen: HashMap<String, u64> = HashMap::new();
    let store = pools.store();
    let pool_changes = pools.subscribe().filter_map(move |event| {
        let changed = match event {
            CacheEvent::Applied(pool) => {
                let shape = pool_shape(&pool);
                seen.insert(pool.name_any(), shape) != Some(shape)
            }
            CacheEvent::Deleted(pool) => {
                seen.remove(&pool.name_any());
                true
            }
            // Pools deleted while the watch was down left no event.
            CacheEvent::Relisted => {
                seen.retain(|name, _| store.get(&ObjectRef::new(name)).is_some());
                true
            }
        };
        futures::future::ready(changed.then_some(()))
    });
    let ctx = Arc::new(Context {
        client: client.clone(),
        config: config.clone(),
        pools: pools.store(),
    });
    async move {
        let status = Controller::new(subnets, watcher::Config::default())
            .reconcile_all_on(pool_changes)
            .with_config(kube::runtime::controller::Config::default().debounce(Duration::from_millis(200)))
            .run(reconcile, error_policy, ctx)
            .for_each(|result| async move {
                if let Err(error) = result {
                    tracing::debug!(%error, "subnet controller event");
                }
            });
        if config.enable_auto_pool {
            let (_, apps) = tokio::join!(status, apps::run(client, config));
            apps
        } else {
            status.await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use spiderpool_schema::SpiderIPPoolSpec;
    use spiderpool_schema::annotations::auto_pool_labels;
    use spiderpool_schema::common::Route;

    use super::*;

    fn subnet() -> SpiderSubnet {
        let mut s = SpiderSubnet::new(
            "s4",
            SpiderSubnetSpec {
                subnet: "10.6.0.0/16".into(),
                ips: vec!["10.6.168.101-10.6.168.110".into()],
                exclude_ips: vec!["10.6.168.110".into()],
                gateway: Some("10.6.0.1".into()),
                routes: vec![Route {
                    dst: "10.7.0.0/16".into(),
                    gw: "10.6.0.1".into(),
                }],
                ..SpiderSubnetSpec::default()
            },
        );
        s.metadata.uid = Some("subnet-uid".into());
        s.metadata.resource_version = Some("7".into());
        s
    }

    fn pool(name: &str, cidr: &str, ips: &[&str]) -> SpiderIPPool {
        let mut p = SpiderIPPool::new(
            name,
            SpiderIPPoolSpec {
                subnet: cidr.into(),
                ips: ips.iter().map(|s| s.to_string()).collect(),
                ..SpiderIPPoolSpec::default()
            },
        );
        p.metadata.resource_version = Some("3".into());
        p
    }

    #[test]
    fn totals_and_controlled_pools() {
        let s = subnet();
        let (net, total) = subnet_total("s4", &s.spec).unwrap();
        assert_eq!(total.len(), 9);
        let a = pool("a", "10.6.0.0/16", &["10.6.168.101-10.6.168.103"]);
        let mut b = pool("auto4-d-eth0-x", "10.6.0.0/16", &["10.6.168.103-10.6.168.104"]);
        let app = AppRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: "ns".into(),
            name: "d".into(),
            uid: "u".into(),
        };
        b.metadata.labels = Some(auto_pool_labels("s4", "c", &app, "eth0", IpFamily::V4, true));
        let other = pool("o", "10.6.0.0/24", &["10.6.0.5"]);
        assert!(pool_in_subnet(&a, &net));
        assert!(!pool_in_subnet(&other, &net));
        let mut shard = pool("a-shard-0", "10.6.0.0/16", &["10.6.168.101"]);
        shard
            .labels_mut()
            .insert(spiderpool_schema::shards::LABEL_SHARD_OF.into(), "uid-a".into());
        let controlled = controlled_pools([&a, &b, &shard]);
        assert_eq!(controlled.len(), 2, "a shard is not one of the subnet's pools");
        assert_eq!(controlled["a"].ips, vec!["10.6.168.101-10.6.168.103"]);
        assert_eq!(controlled["a"].application, None);
        assert_eq!(
            controlled["auto4-d-eth0-x"].application.as_deref(),
            Some("apps_v1_Deployment_ns_d")
        );
        let patch = status_patch(&s, &total, &controlled).unwrap().unwrap();
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        assert_eq!(patch["status"]["totalIPCount"], 9);
        // .101-.104 distinct, the overlap counted once.
        assert_eq!(patch["status"]["allocatedIPCount"], 4);

        let mut current = s.clone();
        let mut status = current.status.clone().unwrap_or_default();
        status.set_controlled_pools(&controlled).unwrap();
        status.total_ip_count = Some(9);
        status.allocated_ip_count = Some(4);
        current.status = Some(status);
        assert_eq!(status_patch(&current, &total, &controlled).unwrap(), None);

        let empty = status_patch(&s, &total, &BTreeMap::new()).unwrap().unwrap();
        assert_eq!(empty["status"]["controlledIPPools"], serde_json::Value::Null);
        assert_eq!(empty["status"]["allocatedIPCount"], 0);
    }

    #[test]
    fn bad_subnet_spec_names_the_field() {
        let mut s = subnet();
        s.spec.exclude_ips = vec!["x".into()];
        let e = subnet_total("s4", &s.spec).unwrap_err().to_string();
        assert!(e.contains("spec.excludeIPs"), "{e}");
    }

    #[test]
    fn adoption_sets_owner_label_and_inherits_gateway() {
        let s = subnet();
        let p = pool("a", "10.6.0.0/16", &["10.6.168.101"]);
        let patch = adoption_patch(&s, &p).unwrap();
        assert_eq!(patch["metadata"]["labels"][LABEL_OWNER_SPIDER_SUBNET], "s4");
        assert_eq!(patch["metadata"]["ownerReferences"][0]["uid"], "subnet-uid");
        assert_eq!(patch["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(patch["spec"]["gateway"], "10.6.0.1");
        assert_eq!(patch["spec"]["routes"][0]["dst"], "10.7.0.0/16");

        let mut adopted = p.clone();
        adopted.metadata.owner_references = Some(vec![subnet_owner_reference(&s).unwrap()]);
        adopted.metadata.labels = Some(BTreeMap::from([(LABEL_OWNER_SPIDER_SUBNET.into(), "s4".into())]));
        assert_eq!(adoption_patch(&s, &adopted), None);

        let mut foreign = p.clone();
        let mut other = subnet_owner_reference(&s).unwrap();
        other.uid = "someone-else".into();
        foreign.metadata.owner_references = Some(vec![other]);
        assert_eq!(adoption_patch(&s, &foreign), None);

        let mut own_gateway = p.clone();
        own_gateway.spec.gateway = Some("10.6.0.254".into());
        let patch = adoption_patch(&s, &own_gateway).unwrap();
        assert!(patch["spec"].get("gateway").is_none());
    }
}
