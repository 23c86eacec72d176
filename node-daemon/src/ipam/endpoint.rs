//! The SpiderEndpoint (one per pod, upstream's shape) as the daemon writes and reads it, pure: the
//! entries of fresh addresses with their routes, the endpoint of a new pod, the CNI answer an
//! endpoint gives, and what this node's endpoints claim of a pool.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use spiderpool_agent_api::{InterfaceDetail, IpConfig, IpamAddResponse, Route, WorkloadEndpointStatus};
use spiderpool_ipmath::IpFamily;
use spiderpool_schema::common::Route as PoolRoute;
use spiderpool_schema::endpoint::{IPAllocationDetail, PodIPAllocation, SpiderEndpointStatus};
use spiderpool_schema::{FINALIZER, SpiderEndpoint, SpiderIPPool};

use super::annotations::RouteItem;
use super::lease::Holder;
use super::owner::AppRef;
use super::routes::{self, Allocated};

/// Annotation on a SpiderEndpoint: the container id of the sandbox that holds the addresses.
pub const ANNO_CONTAINER_ID: &str = "spiderpool.spidernet.io/container-id";
/// Annotation on a SpiderEndpoint: `{"<ifname>": "<CNI network name>"}`, for CNI GC.
pub const ANNO_NETWORKS: &str = "spiderpool.spidernet.io/networks";
/// Label on a SpiderEndpoint: the node whose daemon wrote it (CNI GC lists by it).
pub const LABEL_NODE: &str = "spiderpool.spidernet.io/node";

/// The value of [`LABEL_NODE`] for `node`: node names are DNS subdomains (up to 253 characters);
/// label values stop at 63.
pub fn label_value(node: &str) -> String {
    if node.len() <= 63 {
        return node.to_owned();
    }
    let mut end = 63;
    while !node.is_char_boundary(end) {
        end -= 1;
    }
    node[..end].trim_end_matches(['.', '-']).to_owned()
}

/// One address given to one interface.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The interface.
    pub nic: String,
    /// The address's family.
    pub family: IpFamily,
    /// The address.
    pub ip: IpAddr,
    /// The pool it came from.
    pub pool: Arc<SpiderIPPool>,
    /// No default route through the gateway on this interface (as the candidate rules said).
    pub clean_gateway: bool,
}

impl Grant {
    /// The pool's name.
    pub fn pool_name(&self) -> String {
        self.pool.metadata.name.clone().unwrap_or_default()
    }
}

/// `(address, pool)` of each family an endpoint interface records.
pub fn detail_addresses(detail: &IPAllocationDetail) -> Vec<(IpAddr, String)> {
    let mut out = Vec::new();
    for (address, pool) in [
        (&detail.ipv4, &detail.ipv4_pool),
        (&detail.ipv6, &detail.ipv6_pool),
    ] {
        if let (Some(address), Some(pool)) = (address, pool)
            && let Some(ip) = address.split('/').next().and_then(|ip| ip.parse().ok())
        {
            out.push((ip, pool.clone()));
        }
    }
    out
}

/// `(address, pool)` of every interface an endpoint status records.
pub fn status_addresses(status: &SpiderEndpointStatus) -> Vec<(IpAddr, String)> {
    status.current.ips.iter().flat_map(detail_addresses).collect()
}

/// Endpoint entries for fresh grants, one per interface, with the routes of each; also the
/// `ipam.spidernet.io/routes` items that match no allocated subnet (dropped, for the caller to log).
pub fn build_details(grants: &[Grant], extra: &[RouteItem]) -> (Vec<IPAllocationDetail>, Vec<RouteItem>) {
    let mut by_nic: BTreeMap<&str, IPAllocationDetail> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    let mut allocated = Vec::new();
    for g in grants {
        let subnet: Option<ipnet::IpNet> = spiderpool_ipmath::parse_cidr(&g.pool.spec.subnet).ok();
        let prefix = subnet
            .map(|n| n.prefix_len())
            .unwrap_or(if g.family == IpFamily::V4 { 32 } else { 128 });
        let clean_gateway = g.clean_gateway;
        if !by_nic.contains_key(g.nic.as_str()) {
            order.push(&g.nic);
        }
        let d = by_nic.entry(&g.nic).or_insert_with(|| IPAllocationDetail {
            nic: g.nic.clone(),
            clean_gateway: Some(clean_gateway),
            ..Default::default()
        });
        let address = format!("{}/{prefix}", g.ip);
        let pool_name = g.pool.metadata.name.clone();
        let gateway = g.pool.spec.gateway.clone().filter(|gw| !gw.is_empty());
        match g.family {
            IpFamily::V4 => {
                d.ipv4 = Some(address);
                d.ipv4_pool = pool_name;
                d.ipv4_gateway = gateway;
            }
            IpFamily::V6 => {
                d.ipv6 = Some(address);
                d.ipv6_pool = pool_name;
                d.ipv6_gateway = gateway;
            }
        }
        if let Some(subnet) = subnet {
            allocated.push(Allocated {
                nic: &g.nic,
                subnet,
                gateway: None,
                pool_routes: &g.pool.spec.routes,
                clean_gateway,
            });
        }
    }
    let (route_list, unmatched) = routes::routes(&allocated, extra);
    for r in route_list {
        if let Some(d) = by_nic.get_mut(r.if_name.as_str()) {
            d.routes.push(PoolRoute { dst: r.dst, gw: r.gw });
        }
    }
    let details = order.into_iter().filter_map(|nic| by_nic.remove(nic)).collect();
    (details, unmatched)
}

/// The `{"<ifname>": "<network>"}` annotation of an endpoint after `details` were added for
/// network `net_name` (`existing`: the endpoint's annotations before).
pub fn networks_annotation(
    existing: Option<&BTreeMap<String, String>>,
    details: &[IPAllocationDetail],
    net_name: &str,
) -> String {
    let mut networks = networks_of(existing);
    for d in details {
        networks.insert(d.nic.clone(), net_name.to_owned());
    }
    serde_json::to_string(&networks).unwrap_or_default()
}

/// The `{"<ifname>": "<network>"}` annotation an endpoint carries (empty when absent or malformed).
pub fn networks_of(annotations: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    annotations
        .and_then(|a| a.get(ANNO_NETWORKS))
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// The sandbox an endpoint says holds its addresses.
pub fn container_of(endpoint: &SpiderEndpoint) -> Option<&str> {
    endpoint
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNO_CONTAINER_ID))
        .map(String::as_str)
}

/// Whether `endpoint` claims `(ip, pool)` (for whichever pod it describes).
pub fn claims_address(endpoint: &SpiderEndpoint, ip: IpAddr, pool: &str) -> bool {
    endpoint
        .status
        .as_ref()
        .is_some_and(|s| status_addresses(s).iter().any(|(i, p)| *i == ip && p == pool))
}

/// The grants of an ADD whose endpoint write failed that may go back to their pools: those the
/// endpoint, read again afterwards (`found`, `None`: there is none), does not claim. A failed write
/// may have been applied (its answer lost); giving back an address the endpoint claims would leave
/// the endpoint claiming an address its pool no longer records for the pod, which the pool then
/// hands to another pod while a later ADD or rebind may trust the endpoint.
pub fn unclaimed(found: Option<&SpiderEndpoint>, grants: &[Grant]) -> Vec<Grant> {
    grants
        .iter()
        .filter(|g| found.is_none_or(|ep| !claims_address(ep, g.ip, &g.pool_name())))
        .cloned()
        .collect()
}

/// Whether the endpoint read again after a failed write (`found`) is that write, applied: it
/// describes pod `pod_uid`, is held by sandbox `container_id` and claims every grant.
pub fn is_written(
    found: Option<&SpiderEndpoint>,
    pod_uid: &str,
    container_id: &str,
    grants: &[Grant],
) -> bool {
    found.is_some_and(|ep| {
        ep.metadata.deletion_timestamp.is_none()
            && ep.status.as_ref().is_some_and(|s| s.current.uid == pod_uid)
            && container_of(ep) == Some(container_id)
            && grants.iter().all(|g| claims_address(ep, g.ip, &g.pool_name()))
    })
}

/// Whether the endpoint `released` (read before a release) is gone, judged by what a read afterwards
/// found under its name (`found`): nothing, or another object (a new pod's endpoint, created after
/// ours was deleted).
pub fn is_gone(released: &SpiderEndpoint, found: Option<&SpiderEndpoint>) -> bool {
    found.is_none_or(|ep| ep.metadata.uid.is_some() && ep.metadata.uid != released.metadata.uid)
}

/// What a new pod's endpoint says.
#[derive(Debug, Clone)]
pub struct NewEndpoint<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name (the pod's, or the VM's).
    pub name: &'a str,
    /// The pod's name (owner reference of a pod whose addresses die with it).
    pub pod_name: &'a str,
    /// The pod's UID.
    pub pod_uid: &'a str,
    /// This node.
    pub node: &'a str,
    /// The pod's top controller.
    pub app: &'a AppRef,
    /// Addresses outlive the pod (StatefulSet member, VM): no owner reference.
    pub sticky: bool,
    /// The sandbox holding the addresses.
    pub container_id: &'a str,
    /// The CNI network of the interfaces.
    pub net_name: &'a str,
    /// The interfaces.
    pub details: Vec<IPAllocationDetail>,
}

/// The SpiderEndpoint of a pod that has none yet.
pub fn new_endpoint(new: NewEndpoint<'_>) -> SpiderEndpoint {
    let networks = networks_annotation(None, &new.details, new.net_name);
    let owner_references = (!new.sticky).then(|| {
        vec![OwnerReference {
            api_version: "v1".to_owned(),
            kind: "Pod".to_owned(),
            name: new.pod_name.to_owned(),
            uid: new.pod_uid.to_owned(),
            ..Default::default()
        }]
    });
    SpiderEndpoint {
        metadata: ObjectMeta {
            name: Some(new.name.to_owned()),
            namespace: Some(new.namespace.to_owned()),
            finalizers: Some(vec![FINALIZER.to_owned()]),
            owner_references,
            labels: Some(BTreeMap::from([(LABEL_NODE.to_owned(), label_value(new.node))])),
            annotations: Some(BTreeMap::from([
                (ANNO_CONTAINER_ID.to_owned(), new.container_id.to_owned()),
                (ANNO_NETWORKS.to_owned(), networks),
            ])),
            ..Default::default()
        },
        status: Some(SpiderEndpointStatus {
            current: PodIPAllocation {
                uid: new.pod_uid.to_owned(),
                node: new.node.to_owned(),
                ips: new.details,
            },
            owner_controller_type: new.app.kind.clone(),
            owner_controller_name: new.app.name.clone(),
        }),
    }
}

/// Adds `details` (fresh interfaces of the same pod) to an existing endpoint, now held by sandbox
/// `container_id`.
pub fn extend_endpoint(
    endpoint: &mut SpiderEndpoint,
    details: Vec<IPAllocationDetail>,
    container_id: &str,
    net_name: &str,
) {
    let networks = networks_annotation(endpoint.metadata.annotations.as_ref(), &details, net_name);
    let status = endpoint.status.get_or_insert_with(Default::default);
    status.current.ips.extend(details);
    let annotations = endpoint.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(ANNO_CONTAINER_ID.to_owned(), container_id.to_owned());
    annotations.insert(ANNO_NETWORKS.to_owned(), networks);
}

/// The endpoint without its interface `nic` (whose addresses turned out stale, to be allocated
/// afresh).
pub fn without_interface(mut endpoint: SpiderEndpoint, nic: &str) -> SpiderEndpoint {
    if let Some(status) = endpoint.status.as_mut() {
        status.current.ips.retain(|d| d.nic != nic);
    }
    endpoint
}

/// Switches a sticky pod's endpoint to its new incarnation (`pod_uid` on `node`, sandbox
/// `container_id`), keeping only the interfaces `keep` says were rebound.
pub fn take_over_endpoint(
    endpoint: &mut SpiderEndpoint,
    keep: Vec<IPAllocationDetail>,
    pod_uid: &str,
    node: &str,
    container_id: &str,
) {
    let status = endpoint.status.get_or_insert_with(Default::default);
    status.current.ips = keep;
    status.current.uid = pod_uid.to_owned();
    status.current.node = node.to_owned();
    endpoint
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNO_CONTAINER_ID.to_owned(), container_id.to_owned());
    endpoint
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(LABEL_NODE.to_owned(), label_value(node));
}

/// Switches the plugin asks for, per address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Detection {
    /// Ask the plugin to detect address conflicts.
    pub ip_conflict: bool,
    /// Ask the plugin to check the gateway.
    pub gateway: bool,
}

/// The CNI answer an endpoint gives: every address, the default routes through the gateways of the
/// interfaces that do not ask for a clean gateway, then the interfaces' other routes.
pub fn response(status: &SpiderEndpointStatus, detection: Detection) -> IpamAddResponse {
    let mut ips = Vec::new();
    let mut route_list = Vec::new();
    for d in &status.current.ips {
        for (version, address, pool, gateway) in [
            (4u8, &d.ipv4, &d.ipv4_pool, &d.ipv4_gateway),
            (6u8, &d.ipv6, &d.ipv6_pool, &d.ipv6_gateway),
        ] {
            let Some(address) = address else { continue };
            ips.push(IpConfig {
                version,
                address: address.clone(),
                nic: d.nic.clone(),
                ip_pool: pool.clone().unwrap_or_default(),
                gateway: gateway.clone().unwrap_or_default(),
                vlan: d.vlan.unwrap_or_default(),
                mac: String::new(),
                enable_gateway_detection: detection.gateway && gateway.is_some(),
                enable_ip_conflict_detection: detection.ip_conflict,
            });
            if let Some(gw) = gateway
                && d.clean_gateway != Some(true)
            {
                let dst = if version == 4 { "0.0.0.0/0" } else { "::/0" };
                route_list.push(Route {
                    if_name: d.nic.clone(),
                    dst: dst.to_owned(),
                    gw: gw.clone(),
                });
            }
        }
    }
    for d in &status.current.ips {
        for r in &d.routes {
            route_list.push(Route {
                if_name: d.nic.clone(),
                dst: r.dst.clone(),
                gw: r.gw.clone(),
            });
        }
    }
    IpamAddResponse {
        ips,
        routes: route_list,
        dns: None,
    }
}

/// `GET /v1/workloadendpoint`'s answer for an endpoint.
pub fn workload_status(namespace: &str, name: &str, status: &SpiderEndpointStatus) -> WorkloadEndpointStatus {
    WorkloadEndpointStatus {
        pod_namespace: namespace.to_owned(),
        pod_name: name.to_owned(),
        pod_uid: status.current.uid.clone(),
        node: status.current.node.clone(),
        interfaces: status
            .current
            .ips
            .iter()
            .map(|d| InterfaceDetail {
                interface: d.nic.clone(),
                ipv4: d.ipv4.clone().unwrap_or_default(),
                ipv6: d.ipv6.clone().unwrap_or_default(),
                mac: String::new(),
                vlan: d.vlan.unwrap_or_default(),
                ipv4_pool: d.ipv4_pool.clone().unwrap_or_default(),
                ipv6_pool: d.ipv6_pool.clone().unwrap_or_default(),
                ipv4_gateway: d.ipv4_gateway.clone().unwrap_or_default(),
                ipv6_gateway: d.ipv6_gateway.clone().unwrap_or_default(),
                routes: d
                    .routes
                    .iter()
                    .map(|r| Route {
                        if_name: d.nic.clone(),
                        dst: r.dst.clone(),
                        gw: r.gw.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// What `endpoints` (this node's) say they hold from `pool`: address to every pod claiming it, each
/// once (for a VM the endpoint is named after the VM, not its launcher pod; the UID is what counts,
/// as rebinds and reclaim match by UID).
pub fn claims(endpoints: &[SpiderEndpoint], pool: &str) -> HashMap<IpAddr, Vec<Holder>> {
    let mut claims = HashMap::new();
    for ep in endpoints {
        let Some(status) = ep.status.as_ref() else {
            continue;
        };
        let namespace = ep.metadata.namespace.clone().unwrap_or_default();
        let name = ep.metadata.name.clone().unwrap_or_default();
        for (ip, from) in status_addresses(status) {
            if from != pool {
                continue;
            }
            let holder = Holder {
                pod: format!("{namespace}/{name}"),
                pod_uid: status.current.uid.clone(),
            };
            let claimants: &mut Vec<Holder> = claims.entry(ip).or_default();
            if !claimants.iter().any(|h| h.pod_uid == holder.pod_uid) {
                claimants.push(holder);
            }
        }
    }
    claims
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_cut_at_63_bytes_on_a_character_boundary() {
        assert_eq!(label_value("node-1"), "node-1");
        let long = format!("{}.example", "a".repeat(60));
        assert_eq!(label_value(&long), format!("{}.ex", "a".repeat(60)));
        // Not a valid node name, but a flag can say anything: no panic, no half character.
        let wide = "é".repeat(40);
        let cut = label_value(&wide);
        assert!(cut.len() <= 63 && wide.starts_with(&cut), "{cut}");
    }
}
