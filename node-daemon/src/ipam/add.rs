//! The decisions of a CNI ADD, pure: whether the request is usable, what an existing SpiderEndpoint
//! means for it, and which pools each new interface draws from, in which order. The shell
//! ([`crate::allocator`]) gathers the facts (pod, owner chain, endpoint, candidate pools), asks
//! these functions, and carries out the writes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use spiderpool_agent_api::IpamAddArgs;
use spiderpool_ipmath::IpFamily;
use spiderpool_schema::SpiderIPPool;
use spiderpool_schema::endpoint::{IPAllocationDetail, SpiderEndpointStatus};

use super::annotations::{self, AnnotationError, RouteItem};
use super::candidates::{CandidateError, Candidates, NicRequest, Source};
use super::endpoint::detail_addresses;
use super::filter::{self, PodScope};
use super::owner;
use super::records::RecordIndex;

/// Why an ADD cannot go on, before or without any write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    /// Missing request fields.
    #[error("missing {}", .0.join(", "))]
    Missing(Vec<&'static str>),
    /// The pod is not the one the runtime names, or cannot get addresses.
    #[error("{0}")]
    PodNotAlive(String),
    /// A malformed annotation.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// No pool can serve an interface.
    #[error("{0}")]
    NoCandidate(String),
}

impl From<CandidateError> for AddError {
    fn from(e: CandidateError) -> Self {
        match e {
            CandidateError::Annotation(a) => AddError::Annotation(a),
            CandidateError::NoRule => AddError::NoCandidate(e.to_string()),
        }
    }
}

/// The names of the empty ones among `fields` (`(name, value)`).
pub fn missing(fields: &[(&'static str, &str)]) -> Result<(), AddError> {
    let missing: Vec<&'static str> = fields
        .iter()
        .filter(|(_, v)| v.is_empty())
        .map(|(n, _)| *n)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(AddError::Missing(missing))
    }
}

/// The fields an ADD needs.
pub fn check_args(args: &IpamAddArgs) -> Result<(), AddError> {
    missing(&[
        ("podNamespace (K8S_POD_NAMESPACE)", &args.pod_namespace),
        ("podName (K8S_POD_NAME)", &args.pod_name),
        ("containerID", &args.container_id),
        ("ifName", &args.if_name),
    ])
}

/// The pod the ADD is for: the one the runtime names (by UID, when it names one), and alive.
pub fn check_pod(pod: &Pod, args: &IpamAddArgs) -> Result<(), AddError> {
    let pod_uid = pod.metadata.uid.as_deref().unwrap_or_default();
    if !args.pod_uid.is_empty() && args.pod_uid != pod_uid {
        return Err(AddError::PodNotAlive(format!(
            "pod {}/{} has UID {pod_uid}, not {} (the pod was recreated)",
            args.pod_namespace, args.pod_name, args.pod_uid
        )));
    }
    if !owner::is_pod_alive(pod) {
        return Err(AddError::PodNotAlive(format!(
            "pod {}/{} is terminating or finished",
            args.pod_namespace, args.pod_name
        )));
    }
    Ok(())
}

/// What the pod's SpiderEndpoint, if any, means for this ADD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointVerdict {
    /// No endpoint: allocate and create it.
    Create,
    /// The pod's endpoint records this interface: a repeated ADD (retry, sandbox re-creation) gets
    /// the same answer.
    Repeat,
    /// The pod's endpoint records other interfaces: allocate this one and add it.
    Extend,
    /// A sticky pod's new incarnation (StatefulSet member recreated, VM restarted or migrated):
    /// take over the addresses the endpoint records.
    TakeOver,
    /// An endpoint left by an earlier pod of the same name: release what it holds, then allocate
    /// and create it afresh.
    ReplaceStale,
}

/// Judges the pod's endpoint (`status` of the endpoint read, `None`: there is none) for an ADD of
/// `if_name` by pod `pod_uid`.
pub fn judge_endpoint(
    status: Option<&SpiderEndpointStatus>,
    pod_uid: &str,
    if_name: &str,
    sticky: bool,
) -> EndpointVerdict {
    let Some(status) = status else {
        return EndpointVerdict::Create;
    };
    if status.current.uid == pod_uid {
        if status.current.ips.iter().any(|d| d.nic == if_name) {
            EndpointVerdict::Repeat
        } else {
            EndpointVerdict::Extend
        }
    } else if sticky {
        EndpointVerdict::TakeOver
    } else {
        EndpointVerdict::ReplaceStale
    }
}

/// What the candidate rules and the pod's annotations ask of a fresh allocation: the interfaces
/// still to allocate (those the endpoint does not record), and the pod's `ipam.spidernet.io/routes`
/// (parsed before anything is allocated, so a malformed annotation costs no pool write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The rule that chose the candidates.
    pub source: Source,
    /// The interfaces to allocate, with their candidate names (pools, or subnets for
    /// [`Source::Subnet`]).
    pub nics: Vec<NicRequest>,
    /// Extra routes.
    pub extra_routes: Vec<RouteItem>,
}

/// The interfaces of `chosen` to allocate (every interface of `ippools` / `subnets` at once,
/// otherwise only the one being added), skipping those `already` recorded.
pub fn wanted(
    chosen: Candidates,
    pod_annotations: &BTreeMap<String, String>,
    already: &[&str],
    if_name: &str,
) -> Result<Wanted, AddError> {
    let extra_routes = match pod_annotations.get(annotations::ANNO_ROUTES) {
        Some(text) => annotations::parse_routes(text)?,
        None => Vec::new(),
    };
    let nics: Vec<NicRequest> = chosen
        .nics
        .into_iter()
        .filter(|n| !already.contains(&n.nic.as_str()))
        .filter(|n| !n.ipv4.is_empty() || !n.ipv6.is_empty())
        .collect();
    if nics.is_empty() {
        return Err(AddError::NoCandidate(format!(
            "no pool of an enabled IP family is a candidate for {if_name}"
        )));
    }
    Ok(Wanted {
        source: chosen.source,
        nics,
        extra_routes,
    })
}

/// The pools one interface and family may draw from, in the order to try them: every candidate
/// that exists and passes the filters ([`filter::check_pool`]), ordered by [`filter::order`]. The
/// error names every candidate and why it cannot serve.
pub fn eligible_pools(
    candidates: &[(String, Option<Arc<SpiderIPPool>>)],
    family: IpFamily,
    nic: &str,
    scope: &PodScope<'_>,
) -> Result<Vec<Arc<SpiderIPPool>>, AddError> {
    let mut reasons = Vec::new();
    let mut eligible = Vec::new();
    for (name, pool) in candidates {
        match pool {
            None => reasons.push(format!("{name}: does not exist")),
            Some(pool) => match filter::check_pool(pool, family, nic, scope) {
                Ok(()) => eligible.push(pool.clone()),
                Err(reason) => reasons.push(format!("{name}: {reason}")),
            },
        }
    }
    if eligible.is_empty() {
        return Err(AddError::NoCandidate(format!(
            "no {family} pool can serve {nic}: {}",
            reasons.join("; ")
        )));
    }
    filter::order(&mut eligible);
    Ok(eligible)
}

/// An address an endpoint records for its pod that the pool no longer holds for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleAddress {
    /// The address.
    pub ip: IpAddr,
    /// Its pool.
    pub pool: String,
    /// What the pool says instead.
    pub why: String,
}

/// The addresses of `detail` (an interface of the endpoint of pod `pod_uid`) whose pool does not hold
/// them for that pod: no record names them, or a record names another pod or another node's
/// reservation, or several records name them. `writer(pool, address)` is what this node's writer of
/// the pool knows: `Some(true)` it handed the address to the pod or recorded it for it, and the pod
/// has not given it back; `Some(false)` it did not, or the pod gave it back (the release may not be
/// written yet); `None` it does not know (not started, or not recovered yet). A record for the pod
/// counts as held unless the writer says the pod gave it back; a reservation of this node (`node`)
/// only when the writer says it handed it to the pod (this node hands reservations out before
/// recording them), for a DEL turns the pod's record into this node's reservation, and the pod's
/// endpoint outlives that when deleting it failed. A pool `pools` cannot find, or whose records
/// cannot be read, is not judged.
pub fn stale_addresses(
    detail: &IPAllocationDetail,
    pod_uid: &str,
    node: &str,
    pools: impl Fn(&str) -> Option<Arc<SpiderIPPool>>,
    writer: impl Fn(&str, &IpAddr) -> Option<bool>,
) -> Vec<StaleAddress> {
    let mut stale = Vec::new();
    for (ip, pool_name) in detail_addresses(detail) {
        let Some(pool) = pools(&pool_name) else { continue };
        let (Some(family), Ok(records)) = (
            super::pool::family(&pool),
            pool.status.clone().unwrap_or_default().allocations(),
        ) else {
            continue;
        };
        let index = RecordIndex::new(&records, family);
        let keys = index.keys_naming(&records, &ip);
        let holders: Vec<&spiderpool_schema::ippool::PoolIPAllocation> =
            keys.iter().filter_map(|k| records.get(k)).collect();
        let why = match holders.as_slice() {
            [] => Some("the pool has no record of it".to_owned()),
            [one] if one.reservation() == Some(node) => match writer(&pool_name, &ip) {
                Some(true) => None,
                _ => Some("the pool says this node reserved it, and this node did not hand it to the pod or the pod gave it back".to_owned()),
            },
            [one] if one.reservation().is_none() && one.pod_uid == pod_uid => match writer(&pool_name, &ip) {
                Some(false) => Some("the pod gave it back to this node".to_owned()),
                _ => None,
            },
            [one] => Some(match one.reservation() {
                Some(other) => format!("the pool says node {other} reserved it"),
                None => format!("the pool says {} holds it", one.pod),
            }),
            several => Some(format!(
                "{} records of the pool name it ({})",
                several.len(),
                keys.join(", ")
            )),
        };
        if let Some(why) = why {
            stale.push(StaleAddress {
                ip,
                pool: pool_name,
                why,
            });
        }
    }
    stale
}

/// The retained addresses of a sticky pod's endpoint, interface by interface: `(index of the
/// interface, address, pool)`.
pub fn retained_addresses(status: &SpiderEndpointStatus) -> Vec<(usize, IpAddr, String)> {
    status
        .current
        .ips
        .iter()
        .enumerate()
        .flat_map(|(i, detail)| {
            detail_addresses(detail)
                .into_iter()
                .map(move |(ip, pool)| (i, ip, pool))
        })
        .collect()
}

/// Splits a taken-over endpoint's interfaces into those whose every address was rebound (`kept`)
/// and the others (`dropped`; their addresses are released and the interface allocated afresh).
pub fn split_rebound(
    details: Vec<IPAllocationDetail>,
    refused: &[usize],
) -> (Vec<IPAllocationDetail>, Vec<IPAllocationDetail>) {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for (i, detail) in details.into_iter().enumerate() {
        if refused.contains(&i) {
            dropped.push(detail);
        } else {
            kept.push(detail);
        }
    }
    (kept, dropped)
}

#[cfg(test)]
mod tests;
