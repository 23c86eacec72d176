//! Automatic pools: create, resize and delete the pool of one application interface and family.
//!
//! Addresses come from the subnet's `ips − excludeIPs`, minus every SpiderReservedIP of the family,
//! minus the addresses of every other pool with the subnet's CIDR, lowest first (upstream picks the
//! lowest free addresses too). Growing adds the lowest free addresses; shrinking drops only free pool
//! addresses, never allocated ones.
//!
//! Pure parts: [`free_ips`], [`resize`], [`new_pool`].

use std::collections::BTreeMap;

use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use spiderpool_ipmath::{IpFamily, IpSet, cidr_label_value};
use spiderpool_schema::annotations::{
    ANNO_IPPOOL_IP_NUMBER, AppRef, IpNumber, auto_pool_labels, auto_pool_match_labels, auto_pool_name,
    auto_pool_pod_affinity,
};
use spiderpool_schema::labels::{LABEL_IPPOOL_RECLAIM, LABEL_OWNER_APP_UID, LABEL_OWNER_SPIDER_SUBNET};
use spiderpool_schema::{FINALIZER, SpiderIPPool, SpiderIPPoolSpec, SpiderReservedIP, SpiderSubnet};

use super::{pool_in_subnet, pool_ips, subnet_owner_reference, subnet_total};
use crate::controller::ippool::{is_conflict, is_not_found};

/// Why an automatic pool could not be made or resized.
#[derive(Debug, thiserror::Error)]
pub enum AutoPoolError {
    /// Worth retrying later (missing subnet, not enough addresses yet, conflicts, API errors).
    #[error("{0}")]
    Retry(String),
    /// The application asks for something that cannot work until it is changed; report, do not retry.
    #[error("{0}")]
    Invalid(String),
}

/// The subnet's addresses no pool holds and no SpiderReservedIP reserves.
pub fn free_ips(subnet_total: &IpSet, reserved: &IpSet, held_by_pools: &IpSet) -> IpSet {
    subnet_total.difference(reserved).difference(held_by_pools)
}

/// The outcome of [`resize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resized {
    /// The pool's new addresses.
    pub ips: IpSet,
    /// How many more addresses a shrink would have dropped had they not been allocated; the pool
    /// shrinks further once they are released.
    pub short_of_shrink: u128,
}

/// New addresses of a pool that holds `current` (of which `allocated` are in use) and should hold
/// `desired`: grows with the lowest of `free`, shrinks by dropping the highest free pool addresses
/// (upstream drops the lowest; dropping from the top keeps a pool's addresses together with the
/// lowest-first growth). Fails when `free` cannot cover a growth.
pub fn resize(
    current: &IpSet,
    allocated: &IpSet,
    desired: u128,
    free: &IpSet,
    subnet: &str,
) -> Result<Resized, AutoPoolError> {
    let have = current.len();
    if desired > have {
        let need = desired - have;
        if free.len() < need {
            return Err(AutoPoolError::Retry(format!(
                "SpiderSubnet {subnet} has {} free addresses, the pool needs {need} more",
                free.len()
            )));
        }
        let ips = current
            .union(&free.take_lowest(need))
            .map_err(|e| AutoPoolError::Invalid(format!("SpiderSubnet {subnet}: {e}")))?;
        return Ok(Resized {
            ips,
            short_of_shrink: 0,
        });
    }
    let excess = have - desired;
    let unused = current.difference(allocated);
    let dropped = unused.take_highest(excess);
    Ok(Resized {
        short_of_shrink: excess - dropped.len(),
        ips: current.difference(&dropped),
    })
}

/// What an automatic pool is made for: one application, interface and family, from one subnet.
#[derive(Debug, Clone)]
pub struct PoolTarget<'a> {
    /// The application.
    pub app: &'a AppRef,
    /// Pod interface.
    pub interface: &'a str,
    /// Address family.
    pub family: IpFamily,
    /// SpiderSubnet name.
    pub subnet: &'a str,
    /// Pool size rule (written on the pool as `ipam.spidernet.io/ippool-ip-number`).
    pub ip_number: IpNumber,
    /// Addresses wanted.
    pub desired: u32,
    /// Whether the pool goes with the application.
    pub reclaim: bool,
}

/// The automatic pool to create for `target` with addresses `ips`, owned by `subnet`.
pub fn new_pool(
    target: &PoolTarget<'_>,
    subnet: &SpiderSubnet,
    ips: &IpSet,
) -> Result<SpiderIPPool, AutoPoolError> {
    let (net, _) =
        subnet_total(&subnet.name_any(), &subnet.spec).map_err(|e| AutoPoolError::Invalid(e.to_string()))?;
    let name = auto_pool_name(&target.app.name, target.family, target.interface, &target.app.uid);
    let mut pool = SpiderIPPool::new(
        &name,
        SpiderIPPoolSpec {
            ip_version: Some(target.family.as_version()),
            subnet: subnet.spec.subnet.clone(),
            ips: ips.to_strings(),
            gateway: subnet.spec.gateway.clone(),
            routes: subnet.spec.routes.clone(),
            pod_affinity: Some(auto_pool_pod_affinity(target.app)),
            ..SpiderIPPoolSpec::default()
        },
    );
    pool.metadata.labels = Some(auto_pool_labels(
        target.subnet,
        &cidr_label_value(&net),
        target.app,
        target.interface,
        target.family,
        target.reclaim,
    ));
    pool.metadata.annotations = Some(BTreeMap::from([(
        ANNO_IPPOOL_IP_NUMBER.to_string(),
        target.ip_number.annotation_value(),
    )]));
    pool.metadata.owner_references = subnet_owner_reference(subnet).map(|r| vec![r]);
    pool.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    Ok(pool)
}

fn label_selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn api_err(what: &str, e: kube::Error) -> AutoPoolError {
    AutoPoolError::Retry(format!("{what}: {e}"))
}

/// The union of the non-terminating SpiderReservedIPs of a family.
async fn reserved_ips(client: &Client, family: IpFamily) -> Result<IpSet, AutoPoolError> {
    let api: Api<SpiderReservedIP> = Api::all(client.clone());
    let mut reserved = IpSet::empty(family);
    for r in api
        .list(&ListParams::default())
        .await
        .map_err(|e| api_err("listing SpiderReservedIPs", e))?
    {
        if r.meta().deletion_timestamp.is_some() || r.spec.family().is_some_and(|f| f != family) {
            continue;
        }
        if let Ok(set) = IpSet::parse_list(family, &r.spec.ips) {
            reserved = reserved.union(&set).unwrap_or(reserved);
        }
    }
    Ok(reserved)
}

/// Creates or resizes the automatic pool of `target`. Returns the pool name.
pub async fn ensure(client: &Client, target: &PoolTarget<'_>) -> Result<String, AutoPoolError> {
    let subnets: Api<SpiderSubnet> = Api::all(client.clone());
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let subnet = subnets
        .get_opt(target.subnet)
        .await
        .map_err(|e| api_err("reading the SpiderSubnet", e))?
        .ok_or_else(|| AutoPoolError::Retry(format!("SpiderSubnet {} does not exist", target.subnet)))?;
    if subnet.meta().deletion_timestamp.is_some() {
        return Err(AutoPoolError::Retry(format!(
            "SpiderSubnet {} is being deleted; no pools are made from it",
            target.subnet
        )));
    }
    let (net, total) =
        subnet_total(target.subnet, &subnet.spec).map_err(|e| AutoPoolError::Invalid(e.to_string()))?;
    if IpFamily::of_net(&net) != target.family {
        return Err(AutoPoolError::Invalid(format!(
            "SpiderSubnet {} is {}, but it is named as the {} subnet of interface {}",
            target.subnet,
            IpFamily::of_net(&net),
            target.family,
            target.interface
        )));
    }

    // The application's existing pool: same application, interface and family. A pool left by an
    // earlier application of the same name that is going away with it (reclaim) is not reused.
    let selector = label_selector(&auto_pool_match_labels(
        target.app,
        target.interface,
        target.family,
    ));
    let candidates = pools
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| api_err("listing the application's pools", e))?;
    let existing = candidates.into_iter().find(|p| {
        p.meta().deletion_timestamp.is_none()
            && !(p.labels().get(LABEL_IPPOOL_RECLAIM).map(String::as_str) == Some("true")
                && p.labels().get(LABEL_OWNER_APP_UID) != Some(&target.app.uid))
    });
    if let Some(pool) = &existing
        && pool.labels().get(LABEL_OWNER_SPIDER_SUBNET).map(String::as_str) != Some(target.subnet)
    {
        return Err(AutoPoolError::Invalid(format!(
            "the application's pool {} belongs to SpiderSubnet {}; changing the subnet of an application is not supported (delete and recreate it)",
            pool.name_any(),
            pool.labels()
                .get(LABEL_OWNER_SPIDER_SUBNET)
                .cloned()
                .unwrap_or_default()
        )));
    }

    let all = pools
        .list(&ListParams::default())
        .await
        .map_err(|e| api_err("listing pools", e))?;
    let existing_name = existing.as_ref().map(ResourceExt::name_any);
    let mut held = IpSet::empty(target.family);
    for p in all.iter().filter(|p| pool_in_subnet(p, &net)) {
        if Some(p.name_any()) != existing_name {
            held = held.union(&pool_ips(p)).unwrap_or(held);
        }
    }
    let current = existing
        .as_ref()
        .map(pool_ips)
        .unwrap_or_else(|| IpSet::empty(target.family));
    let allocated = match &existing {
        Some(pool) => {
            let records = pool
                .status
                .as_ref()
                .map(|s| s.allocations())
                .transpose()
                .map_err(|e| {
                    AutoPoolError::Retry(format!("pool {}: bad allocatedIPs: {e}", pool.name_any()))
                })?
                .unwrap_or_default();
            let ips: Vec<String> = records.into_keys().collect();
            IpSet::parse_list(target.family, &ips).unwrap_or_else(|_| IpSet::empty(target.family))
        }
        None => IpSet::empty(target.family),
    };
    let reserved = reserved_ips(client, target.family).await?;
    let free = free_ips(&total, &reserved, &held.union(&current).unwrap_or(held.clone()));
    let resized = resize(
        &current,
        &allocated,
        u128::from(target.desired),
        &free,
        target.subnet,
    )?;

    let Some(pool) = existing else {
        let pool = new_pool(target, &subnet, &resized.ips)?;
        let name = pool.name_any();
        return match pools.create(&PostParams::default(), &pool).await {
            Ok(_) => {
                tracing::info!(
                    pool = %name,
                    subnet = target.subnet,
                    application = %target.app.application_key(),
                    ips = ?resized.ips.to_strings(),
                    "automatic pool created"
                );
                Ok(name)
            }
            Err(e) => Err(api_err(&format!("creating automatic pool {name}"), e)),
        };
    };

    let name = pool.name_any();
    let labels = pool.labels();
    let reclaim = target.reclaim.to_string();
    let ip_number = target.ip_number.annotation_value();
    let unchanged = resized.ips == current
        && labels.get(LABEL_OWNER_APP_UID) == Some(&target.app.uid)
        && labels.get(LABEL_IPPOOL_RECLAIM) == Some(&reclaim)
        && pool.annotations().get(ANNO_IPPOOL_IP_NUMBER) == Some(&ip_number);
    if !unchanged {
        let patch = json!({
            "metadata": {
                "resourceVersion": pool.resource_version(),
                "labels": {LABEL_OWNER_APP_UID: target.app.uid, LABEL_IPPOOL_RECLAIM: reclaim},
                "annotations": {ANNO_IPPOOL_IP_NUMBER: ip_number},
            },
            "spec": {"ips": resized.ips.to_strings()},
        });
        match pools
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::info!(
                pool = %name,
                from = current.len() as u64,
                to = resized.ips.len() as u64,
                "automatic pool resized"
            ),
            Err(e) if is_conflict(&e) => {
                return Err(AutoPoolError::Retry(format!(
                    "pool {name} changed while resizing it"
                )));
            }
            Err(e) => return Err(api_err(&format!("resizing automatic pool {name}"), e)),
        }
    }
    if resized.short_of_shrink > 0 {
        return Err(AutoPoolError::Retry(format!(
            "pool {name} keeps {} more addresses than wanted because they are allocated; it shrinks when they are released",
            resized.short_of_shrink
        )));
    }
    Ok(name)
}

/// Deletes the automatic pools of a deleted application (only those marked `ippool-reclaim=true` and
/// made for this very application UID). Returns the names deleted.
pub async fn delete_for_app(client: &Client, app: &AppRef) -> Result<Vec<String>, AutoPoolError> {
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let mut labels = auto_pool_match_labels(app, "", IpFamily::V4);
    labels.retain(|k, _| {
        k != spiderpool_schema::labels::LABEL_INTERFACE && k != spiderpool_schema::labels::LABEL_IP_VERSION
    });
    labels.insert(LABEL_IPPOOL_RECLAIM.to_string(), "true".to_string());
    let list = pools
        .list(&ListParams::default().labels(&label_selector(&labels)))
        .await
        .map_err(|e| api_err("listing the application's pools", e))?;
    let mut deleted = Vec::new();
    for pool in list {
        if pool.labels().get(LABEL_OWNER_APP_UID) != Some(&app.uid)
            || pool.meta().deletion_timestamp.is_some()
        {
            continue;
        }
        let name = pool.name_any();
        match pools.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(pool = %name, application = %app.application_key(), "application deleted; automatic pool deleted");
                deleted.push(name);
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(api_err(&format!("deleting automatic pool {name}"), e)),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use spiderpool_schema::SpiderSubnetSpec;

    use super::*;

    fn set(items: &[&str]) -> IpSet {
        IpSet::parse_list(IpFamily::V4, items).unwrap()
    }

    #[test]
    fn free_excludes_reserved_and_other_pools() {
        let total = set(&["10.0.0.1-10.0.0.20"]);
        let free = free_ips(
            &total,
            &set(&["10.0.0.1-10.0.0.2"]),
            &set(&["10.0.0.3-10.0.0.5", "10.0.0.20"]),
        );
        assert_eq!(free.to_strings(), vec!["10.0.0.6-10.0.0.19"]);
    }

    #[test]
    fn grow_takes_lowest_free() {
        let free = set(&["10.0.0.6", "10.0.0.9-10.0.0.20"]);
        let r = resize(&set(&[]), &set(&[]), 3, &free, "s").unwrap();
        assert_eq!(r.ips.to_strings(), vec!["10.0.0.6", "10.0.0.9-10.0.0.10"]);
        let r = resize(&set(&["10.0.0.1-10.0.0.2"]), &set(&[]), 4, &free, "s").unwrap();
        assert_eq!(
            r.ips.to_strings(),
            vec!["10.0.0.1-10.0.0.2", "10.0.0.6", "10.0.0.9"]
        );
        let e = resize(&set(&[]), &set(&[]), 20, &free, "s4").unwrap_err();
        assert!(
            matches!(&e, AutoPoolError::Retry(m) if m.contains("s4") && m.contains("13 free")),
            "{e}"
        );
    }

    #[test]
    fn shrink_drops_only_free_addresses() {
        let current = set(&["10.0.0.1-10.0.0.6"]);
        let r = resize(&current, &set(&["10.0.0.6", "10.0.0.2"]), 3, &set(&[]), "s").unwrap();
        assert_eq!(r.ips.to_strings(), vec!["10.0.0.1-10.0.0.2", "10.0.0.6"]);
        assert_eq!(r.short_of_shrink, 0);
        let r = resize(&current, &set(&["10.0.0.1-10.0.0.5"]), 2, &set(&[]), "s").unwrap();
        assert_eq!(r.ips.to_strings(), vec!["10.0.0.1-10.0.0.5"]);
        assert_eq!(r.short_of_shrink, 3);
        let same = resize(&current, &set(&[]), 6, &set(&[]), "s").unwrap();
        assert_eq!(same.ips, current);
    }

    #[test]
    fn new_pool_carries_upstream_labels_and_owner() {
        let mut subnet = SpiderSubnet::new(
            "s4",
            SpiderSubnetSpec {
                subnet: "10.6.0.0/16".into(),
                ips: vec!["10.6.0.10-10.6.0.20".into()],
                gateway: Some("10.6.0.1".into()),
                ..SpiderSubnetSpec::default()
            },
        );
        subnet.metadata.uid = Some("su".into());
        let app = AppRef {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            namespace: "ns".into(),
            name: "db".into(),
            uid: "1-2-abcdef".into(),
        };
        let target = PoolTarget {
            app: &app,
            interface: "net1",
            family: IpFamily::V4,
            subnet: "s4",
            ip_number: IpNumber::Flexible(1),
            desired: 3,
            reclaim: true,
        };
        let pool = new_pool(&target, &subnet, &set(&["10.6.0.10-10.6.0.12"])).unwrap();
        assert_eq!(pool.name_any(), "auto4-db-net1-abcde");
        assert_eq!(pool.spec.ips, vec!["10.6.0.10-10.6.0.12"]);
        assert_eq!(pool.spec.gateway.as_deref(), Some("10.6.0.1"));
        assert_eq!(pool.spec.ip_version, Some(4));
        let labels = pool.labels();
        assert_eq!(labels[LABEL_OWNER_SPIDER_SUBNET], "s4");
        assert_eq!(labels["ipam.spidernet.io/ippool-cidr"], "10-6-0-0-16");
        assert_eq!(labels["ipam.spidernet.io/owner-application-kind"], "StatefulSet");
        assert_eq!(pool.annotations()[ANNO_IPPOOL_IP_NUMBER], "+1");
        assert_eq!(pool.owner_references()[0].uid, "su");
        assert_eq!(pool.finalizers(), [FINALIZER.to_string()]);
        assert_eq!(
            pool.spec.pod_affinity.unwrap().match_labels.unwrap()["ipam.spidernet.io/app-kind"],
            "StatefulSet"
        );
    }
}
