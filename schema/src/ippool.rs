//! `SpiderIPPool` (short name `sp`): a range of addresses of one subnet that pods are given addresses
//! from, with the affinities that decide which pods may use it. Upstream Spiderpool's kind, unchanged.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{AddressBlock, Route, check_address_block};
use crate::validation::{Problem, Problems, Validate};

/// Spec of a SpiderIPPool.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderIPPool",
    plural = "spiderippools",
    shortname = "sp",
    category = "spiderpool",
    status = "SpiderIPPoolStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A pool of IP addresses of one subnet that pods are given addresses from.",
    printcolumn(
        name = "VERSION",
        type_ = "string",
        json_path = ".spec.ipVersion",
        description = "IP version"
    ),
    printcolumn(
        name = "SUBNET",
        type_ = "string",
        json_path = ".spec.subnet",
        description = "Subnet CIDR"
    ),
    printcolumn(
        name = "ALLOCATED-IP-COUNT",
        type_ = "integer",
        json_path = ".status.allocatedIPCount",
        description = "Addresses given out"
    ),
    printcolumn(
        name = "TOTAL-IP-COUNT",
        type_ = "integer",
        json_path = ".status.totalIPCount",
        description = "Addresses in the pool (ips minus excludeIPs)"
    ),
    printcolumn(
        name = "DEFAULT",
        type_ = "boolean",
        json_path = ".spec.default",
        description = "Cluster default pool"
    ),
    printcolumn(
        name = "DISABLE",
        type_ = "boolean",
        json_path = ".spec.disable",
        description = "No new allocations",
        priority = 10
    ),
    printcolumn(
        name = "NODENAME",
        type_ = "string",
        json_path = ".spec.nodeName",
        description = "Nodes the pool is bound to",
        priority = 10
    ),
    printcolumn(
        name = "MULTUSNAME",
        type_ = "string",
        json_path = ".spec.multusName",
        description = "NetworkAttachmentDefinitions the pool is bound to",
        priority = 10
    ),
    printcolumn(
        name = "APP-NAMESPACE",
        type_ = "string",
        json_path = ".spec.podAffinity.matchLabels['ipam\\.spidernet\\.io/app-namespace']",
        description = "Namespace of the application an automatic pool belongs to",
        priority = 10
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SpiderIPPoolSpec {
    // Immutability of `ipVersion` (and `subnet`) is the validating webhook's rule, as upstream's. No CEL
    // rule: any CEL rule in a CRD makes the API server append `<nil>: Invalid value: "null": some
    // validation rules were not checked ...` to every schema refusal of the kind.
    /// IP version of the pool, 4 or 6. Derived from `subnet` when left out. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = [4, 6]))]
    pub ip_version: Option<i64>,

    /// Subnet of the pool in canonical CIDR form, e.g. `172.18.0.0/16`. Required and immutable. Pools may
    /// share the same subnet but not overlap a different one.
    pub subnet: String,

    /// Addresses the pool hands out: single IPs (`172.18.30.131`) or ranges (`172.18.30.131-172.18.30.140`),
    /// all inside `subnet`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,

    /// Addresses of `ips` that are never handed out (same forms as `ips`).
    #[serde(default, rename = "excludeIPs", skip_serializing_if = "Vec::is_empty")]
    pub exclude_ips: Vec<String>,

    /// Gateway of the subnet; pods get a default route through it unless told otherwise. Must be inside
    /// `subnet` and must not be in `ips` unless it is also in `excludeIPs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,

    /// Extra routes given to pods with an address from this pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,

    /// Only pods whose labels match may use the pool (must not be empty when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_affinity: Option<LabelSelector>,

    /// Only pods in namespaces whose labels match may use the pool (ignored when `namespaceName` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_affinity: Option<LabelSelector>,

    /// Only pods in these namespaces may use the pool; takes precedence over `namespaceAffinity`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_name: Vec<String>,

    /// Only pods on nodes whose labels match may use the pool (ignored when `nodeName` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<LabelSelector>,

    /// Only pods on these nodes may use the pool; takes precedence over `nodeAffinity`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_name: Vec<String>,

    /// Only interfaces attached through these NetworkAttachmentDefinitions (`namespace/name`, or `name`
    /// for the namespace Spiderpool runs in) may use the pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub multus_name: Vec<String>,

    /// Whether this is a cluster default pool, used when nothing more specific names a pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub default: Option<bool>,

    /// A disabled pool hands out no new addresses; addresses already given out stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub disable: Option<bool>,
}

/// Status of a SpiderIPPool, written by the allocator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpiderIPPoolStatus {
    /// The addresses given out, as upstream stores them: a JSON-encoded object mapping each IP to
    /// `{"pod":"<namespace>/<name>","podUid":"<uid>"}`. Read it with [`SpiderIPPoolStatus::allocations`].
    #[serde(default, rename = "allocatedIPs", skip_serializing_if = "Option::is_none")]
    pub allocated_ips: Option<String>,

    /// Number of addresses in the pool (`ips` minus `excludeIPs`).
    #[serde(default, rename = "totalIPCount", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub total_ip_count: Option<i64>,

    /// Number of addresses held by pods (addresses a node's agent has reserved but not yet recorded
    /// for a pod are in `allocatedIPs` but not counted).
    #[serde(default, rename = "allocatedIPCount", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub allocated_ip_count: Option<i64>,
}

/// Who holds one address of a pool (an entry of `status.allocatedIPs`).
///
/// Either a pod (upstream's `{"pod":"<namespace>/<name>","podUid":"<uid>"}`) or, our extension, a
/// node's agent that reserved the address for pods it is about to start
/// (`{"pod":"","podUid":"","reservedForNode":"<node>"}`): a busy node takes a few addresses in one
/// pool write and hands them out without writing the shared pool for every pod, then records the
/// pods in its next write (`node-daemon/README.md`, "Concurrency design"). Upstream's readers ignore
/// the unknown key and see an address that is taken, which it is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PoolIPAllocation {
    /// `<namespace>/<name>` of the pod; empty for a node's reservation.
    pub pod: String,
    /// UID of the pod that holds the address; empty for a node's reservation.
    #[serde(rename = "podUid")]
    pub pod_uid: String,
    /// The node whose agent reserved the address (no pod holds it yet, as far as this record says).
    #[serde(default, rename = "reservedForNode", skip_serializing_if = "Option::is_none")]
    pub reserved_for_node: Option<String>,
}

impl PoolIPAllocation {
    /// The record of an address held by pod `pod` (`<namespace>/<name>`) with UID `pod_uid`.
    pub fn held_by(pod: impl Into<String>, pod_uid: impl Into<String>) -> Self {
        PoolIPAllocation {
            pod: pod.into(),
            pod_uid: pod_uid.into(),
            reserved_for_node: None,
        }
    }

    /// The record of an address reserved by the agent of `node`.
    pub fn reserved_for(node: impl Into<String>) -> Self {
        PoolIPAllocation {
            pod: String::new(),
            pod_uid: String::new(),
            reserved_for_node: Some(node.into()),
        }
    }

    /// The node this address is reserved for, if it is a reservation rather than a pod's address.
    pub fn reservation(&self) -> Option<&str> {
        self.reserved_for_node.as_deref()
    }

    /// Who holds the address, for messages: `pod <namespace>/<name>` or `reserved by the agent of
    /// node <node>`.
    pub fn describe(&self) -> String {
        match self.reservation() {
            Some(node) => format!("reserved by the agent of node {node}"),
            None => format!("pod {}", self.pod),
        }
    }
}

/// How many of `records` are held by pods (reservations of node agents do not count): what
/// `status.allocatedIPCount` reports.
pub fn count_held(records: &BTreeMap<String, PoolIPAllocation>) -> usize {
    records.values().filter(|r| r.reservation().is_none()).count()
}

impl SpiderIPPoolStatus {
    /// Decodes `allocatedIPs` (IP -> holder). An absent or empty string is an empty map.
    pub fn allocations(&self) -> Result<BTreeMap<String, PoolIPAllocation>, serde_json::Error> {
        match self.allocated_ips.as_deref() {
            None | Some("") => Ok(BTreeMap::new()),
            Some(text) => serde_json::from_str(text),
        }
    }

    /// Encodes `allocatedIPs` and the count (of addresses held by pods, [`count_held`]) together, so
    /// they never disagree. An empty map is stored as absent, as upstream does.
    pub fn set_allocations(
        &mut self,
        allocations: &BTreeMap<String, PoolIPAllocation>,
    ) -> Result<(), serde_json::Error> {
        self.allocated_ips = if allocations.is_empty() {
            None
        } else {
            Some(serde_json::to_string(allocations)?)
        };
        self.allocated_ip_count = Some(i64::try_from(count_held(allocations)).unwrap_or(i64::MAX));
        Ok(())
    }
}

impl Validate for SpiderIPPool {
    fn problems(&self) -> Vec<Problem> {
        let mut problems = Problems::new();
        self.spec.check(&mut problems, "spec");
        problems.into_vec()
    }
}

impl SpiderIPPoolSpec {
    /// Upstream's single-object webhook rules (create and update); checks against other pools (overlap)
    /// need the cluster and live with the webhook.
    pub fn check(&self, problems: &mut Problems, path: &str) {
        check_address_block(
            problems,
            path,
            AddressBlock {
                subnet: &self.subnet,
                ip_version: self.ip_version,
                ips: &self.ips,
                exclude_ips: &self.exclude_ips,
                gateway: self.gateway.as_deref(),
                routes: &self.routes,
            },
            "pool",
        );
        if let Some(selector) = &self.pod_affinity
            && selector_is_empty(selector)
        {
            problems.push(
                format!("{path}.podAffinity"),
                "must not be empty: an empty selector would match every pod; remove it instead",
            );
        }
        for (i, name) in self.multus_name.iter().enumerate() {
            if let Err(message) = check_multus_name(name) {
                problems.push(format!("{path}.multusName[{i}]"), message);
            }
        }
    }
}

/// Whether a label selector selects everything (no labels and no expressions).
pub(crate) fn selector_is_empty(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector.match_expressions.as_ref().is_none_or(|e| e.is_empty())
}

/// `namespace/name` or `name`, each a DNS-1123 name.
fn check_multus_name(value: &str) -> Result<(), String> {
    let parts: Vec<&str> = value.split('/').collect();
    let ok = match parts.as_slice() {
        [name] => is_dns1123_label(name) || is_dns1123_subdomain(name),
        [ns, name] => is_dns1123_label(ns) && is_dns1123_subdomain(name),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{value}` is not `namespace/name` or `name` of a NetworkAttachmentDefinition"
        ))
    }
}

/// RFC 1123 label: lower-case alphanumerics and `-`, at most 63, starting and ending alphanumeric.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters (what most object names must be).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Whether `value` may be a label value: empty, or at most 63 alphanumerics, `-`, `_` and `.`, starting
/// and ending alphanumeric.
pub fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(yaml: &str) -> SpiderIPPool {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn label_values() {
        assert!(is_label_value("10-6-0-0-16"));
        assert!(is_label_value("fd00---64"));
        assert!(is_label_value(""));
        assert!(!is_label_value("--1-128"));
        assert!(!is_label_value("---0"));
        assert!(!is_label_value("has space"));
    }

    #[test]
    fn seed_pool_is_valid() {
        let p = pool(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderIPPool\nmetadata:\n  name: ippool-test\nspec:\n  ips:\n  - 172.18.30.131-172.18.30.140\n  subnet: 172.18.0.0/16\n  gateway: 172.18.0.1\n  multusName:\n  - kube-system/macvlan-conf\n",
        );
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let p = pool(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderIPPool\nmetadata:\n  name: bad\nspec:\n  ipVersion: 6\n  subnet: 10.0.0.0/24\n  ips: [10.0.0.10-10.0.0.20]\n",
        );
        let problems = p.validate().unwrap_err();
        assert_eq!(problems[0].path, "spec.ipVersion");

        let p = pool(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderIPPool\nmetadata:\n  name: bad\nspec:\n  subnet: 10.0.0.0/24\n  ips: [10.0.0.1-10.0.0.20, 10.0.1.5, nonsense]\n  gateway: 10.0.0.1\n  routes:\n  - {dst: 0.0.0.0/0, gw: 10.0.0.1}\n  - {dst: 10.9.0.0/16, gw: 10.1.0.1}\n  podAffinity: {}\n  multusName: [a/b/c]\n",
        );
        let paths: Vec<String> = p.validate().unwrap_err().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            vec![
                "spec.ips[2]",
                "spec.routes[0].dst",
                "spec.routes[1].gw",
                "spec.podAffinity",
                "spec.multusName[0]",
            ]
        );
    }

    #[test]
    fn gateway_inside_ips_needs_exclusion() {
        let mut p = pool(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderIPPool\nmetadata:\n  name: gw\nspec:\n  subnet: 10.0.0.0/24\n  ips: [10.0.0.1-10.0.0.20]\n  gateway: 10.0.0.1\n",
        );
        let problems = p.validate().unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "spec.gateway");
        p.spec.exclude_ips = vec!["10.0.0.1".into()];
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn non_canonical_subnet_is_refused() {
        let p = pool(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderIPPool\nmetadata:\n  name: c\nspec:\n  subnet: 10.0.0.1/24\n",
        );
        let problems = p.validate().unwrap_err();
        assert_eq!(problems[0].path, "spec.subnet");
        assert!(
            problems[0].message.contains("10.0.0.0/24"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn allocations_round_trip() {
        let mut status = SpiderIPPoolStatus::default();
        assert!(status.allocations().unwrap().is_empty());
        let mut map = BTreeMap::new();
        map.insert(
            "10.0.0.5".to_string(),
            PoolIPAllocation::held_by("default/a", "uid-1"),
        );
        status.set_allocations(&map).unwrap();
        assert_eq!(
            status.allocated_ips.as_deref(),
            Some(r#"{"10.0.0.5":{"pod":"default/a","podUid":"uid-1"}}"#)
        );
        assert_eq!(status.allocated_ip_count, Some(1));
        assert_eq!(status.allocations().unwrap(), map);
        status.set_allocations(&BTreeMap::new()).unwrap();
        assert_eq!(status.allocated_ips, None);
        assert_eq!(status.allocated_ip_count, Some(0));
    }
}
