//! Which candidate pools a pod may really use (upstream's `selectByPod`, reference section 3.3), and
//! in which order to try them (3.4).
//!
//! Differences from upstream, on purpose:
//! - Multus resolution only matters for pools that set `multusName` (upstream since 2025 filters every
//!   pool of `eth0` when the cluster network is unknown, reference 13.9).
//! - The order is stable: among pools of equal priority, the order the user wrote wins (13.2).
//! - A pool's `podAffinity` is matched against the pod's labels together with upstream's application
//!   labels of the pod's top controller, so automatic pools and the topology compiler's fixed-address
//!   pools (which select `ipam.spidernet.io/app-*`) match their workload's pods.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use spiderpool_ipmath::IpFamily;
use spiderpool_schema::SpiderIPPool;
use spiderpool_schema::common::selector_matches;
use spiderpool_schema::nad::{ANNO_POD_DEFAULT_NETWORK, ANNO_POD_NETWORKS};

/// What the filters know about the pod and where it runs.
#[derive(Debug, Clone)]
pub struct PodScope<'a> {
    /// The pod's namespace.
    pub namespace: &'a str,
    /// The pod's labels merged with its top controller's application labels.
    pub labels: &'a BTreeMap<String, String>,
    /// The pod's annotations (Multus networks).
    pub annotations: &'a BTreeMap<String, String>,
    /// The node the pod runs on (this daemon's node).
    pub node_name: &'a str,
    /// That node's labels.
    pub node_labels: &'a BTreeMap<String, String>,
    /// The pod namespace's labels.
    pub namespace_labels: &'a BTreeMap<String, String>,
    /// Namespace that `multusName` entries without a namespace refer to (the daemon's namespace, as
    /// upstream).
    pub default_multus_namespace: &'a str,
    /// The Multus cluster network (`<ns>/<name>`) when the pod does not name its default network.
    pub cluster_network: Option<&'a str>,
}

/// Why a pool was filtered out.
pub type FilterReason = String;

/// Checks one pool for one interface and family; `Err` says why it cannot be used.
pub fn check_pool(
    pool: &SpiderIPPool,
    family: IpFamily,
    nic: &str,
    scope: &PodScope<'_>,
) -> Result<(), FilterReason> {
    let spec = &pool.spec;
    if pool.metadata.deletion_timestamp.is_some() {
        return Err("is terminating".to_owned());
    }
    if spec.disable == Some(true) {
        return Err("is disabled".to_owned());
    }
    if spec.family() != Some(family) {
        return Err(format!("is not an {family} pool"));
    }
    if !spec.node_name.is_empty() {
        if !spec.node_name.iter().any(|n| n == scope.node_name) {
            return Err(format!("spec.nodeName does not include node {}", scope.node_name));
        }
    } else if let Some(affinity) = &spec.node_affinity
        && !selector_matches(affinity, scope.node_labels)
    {
        return Err(format!(
            "spec.nodeAffinity does not match node {}",
            scope.node_name
        ));
    }
    if !spec.namespace_name.is_empty() {
        if !spec.namespace_name.iter().any(|n| n == scope.namespace) {
            return Err(format!(
                "spec.namespaceName does not include namespace {}",
                scope.namespace
            ));
        }
    } else if let Some(affinity) = &spec.namespace_affinity
        && !selector_matches(affinity, scope.namespace_labels)
    {
        return Err(format!(
            "spec.namespaceAffinity does not match namespace {}",
            scope.namespace
        ));
    }
    if let Some(affinity) = &spec.pod_affinity
        && !selector_matches(affinity, scope.labels)
    {
        return Err("spec.podAffinity does not match the pod".to_owned());
    }
    if !spec.multus_name.is_empty() {
        let network = attachment_network(nic, scope).ok_or_else(|| {
            format!("spec.multusName is set but no Multus network of the pod is attached as {nic}")
        })?;
        let wanted = spec
            .multus_name
            .iter()
            .map(|m| qualify(m, scope.default_multus_namespace))
            .any(|m| m == network);
        if !wanted {
            return Err(format!(
                "spec.multusName does not include {network}, the network of {nic}"
            ));
        }
    }
    Ok(())
}

/// Sorts pools by upstream's priority (podAffinity, nodeName, nodeAffinity, namespaceName,
/// namespaceAffinity, multusName: a pool with the earlier property goes first), keeping the given order
/// among equals.
pub fn order<P: Borrow<SpiderIPPool>>(pools: &mut [P]) {
    pools.sort_by_key(|pool| {
        let spec = &pool.borrow().spec;
        [
            spec.pod_affinity.is_none(),
            spec.node_name.is_empty(),
            spec.node_affinity.is_none(),
            spec.namespace_name.is_empty(),
            spec.namespace_affinity.is_none(),
            spec.multus_name.is_empty(),
        ]
    });
}

/// The NetworkAttachmentDefinition (`<ns>/<name>`) that gives the pod its interface `nic`, by Multus'
/// rules: `eth0` is the default network (pod annotation `v1.multus-cni.io/default-network`, else the
/// cluster network); other interfaces are the entries of `k8s.v1.cni.cncf.io/networks`, named by their
/// `interface` or by position (`net1`, `net2`, ...).
pub fn attachment_network(nic: &str, scope: &PodScope<'_>) -> Option<String> {
    if nic == "eth0" {
        return default_network(scope);
    }
    secondary_networks(scope)
        .into_iter()
        .find(|(interface, _)| interface == nic)
        .map(|(_, network)| network)
}

/// Every interface Multus gives the pod, with the NetworkAttachmentDefinition (`<ns>/<name>`) behind
/// it when known: `eth0` (the default network) first, then the entries of
/// `k8s.v1.cni.cncf.io/networks` in order, named as [`attachment_network`] names them.
pub fn attachments(scope: &PodScope<'_>) -> Vec<(String, Option<String>)> {
    let mut all = vec![("eth0".to_owned(), default_network(scope))];
    all.extend(
        secondary_networks(scope)
            .into_iter()
            .map(|(interface, network)| (interface, Some(network))),
    );
    all
}

/// The network of `eth0`: the pod's `v1.multus-cni.io/default-network`, else the cluster network.
fn default_network(scope: &PodScope<'_>) -> Option<String> {
    match scope.annotations.get(ANNO_POD_DEFAULT_NETWORK) {
        Some(value) => parse_networks(value, scope.namespace)
            .into_iter()
            .next()
            .map(|(n, _)| n),
        None => scope
            .cluster_network
            .map(|n| qualify(n, scope.default_multus_namespace)),
    }
}

/// The entries of `k8s.v1.cni.cncf.io/networks` as `(interface, network)`: an entry without an
/// `interface` is named by its position (`net1`, `net2`, ...).
fn secondary_networks(scope: &PodScope<'_>) -> Vec<(String, String)> {
    let Some(value) = scope.annotations.get(ANNO_POD_NETWORKS) else {
        return Vec::new();
    };
    parse_networks(value, scope.namespace)
        .into_iter()
        .enumerate()
        .map(|(index, (network, interface))| {
            (interface.unwrap_or_else(|| format!("net{}", index + 1)), network)
        })
        .collect()
}

/// Multus' network selection forms: a JSON list of `{"name","namespace","interface"}` or a comma list of
/// `[ns/]name[@interface]`. Returns `(ns/name, interface)` pairs.
fn parse_networks(value: &str, pod_namespace: &str) -> Vec<(String, Option<String>)> {
    // A pod author writes this; Multus refuses what it cannot read, so nothing larger is a real one.
    if value.len() > super::annotations::MAX_VALUE_BYTES {
        return Vec::new();
    }
    let trimmed = value.trim();
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        #[derive(serde::Deserialize)]
        struct Selection {
            name: String,
            #[serde(default)]
            namespace: Option<String>,
            #[serde(default)]
            interface: Option<String>,
        }
        let list: Vec<Selection> = if trimmed.starts_with('{') {
            serde_json::from_str(trimmed)
                .map(|one| vec![one])
                .unwrap_or_default()
        } else {
            serde_json::from_str(trimmed).unwrap_or_default()
        };
        return list
            .into_iter()
            .map(|s| {
                let ns = s
                    .namespace
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| pod_namespace.to_owned());
                (format!("{ns}/{}", s.name), s.interface.filter(|i| !i.is_empty()))
            })
            .collect();
    }
    trimmed
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (network, interface) = match item.split_once('@') {
                Some((n, i)) => (n, Some(i.to_owned())),
                None => (item, None),
            };
            (qualify(network, pod_namespace), interface)
        })
        .collect()
}

fn qualify(name: &str, namespace: &str) -> String {
    if name.contains('/') {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use spiderpool_schema::SpiderIPPoolSpec;

    fn pool(name: &str, subnet: &str, edit: impl FnOnce(&mut SpiderIPPoolSpec)) -> SpiderIPPool {
        let mut spec = SpiderIPPoolSpec {
            subnet: subnet.to_owned(),
            ..Default::default()
        };
        edit(&mut spec);
        SpiderIPPool::new(name, spec)
    }

    fn selector(key: &str, value: &str) -> Option<LabelSelector> {
        Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(key.to_owned(), value.to_owned())])),
            match_expressions: None,
        })
    }

    struct Facts {
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        node_labels: BTreeMap<String, String>,
        ns_labels: BTreeMap<String, String>,
    }

    impl Facts {
        fn new() -> Self {
            Facts {
                labels: BTreeMap::from([("app".into(), "web".into())]),
                annotations: BTreeMap::new(),
                node_labels: BTreeMap::from([("rack".into(), "r1".into())]),
                ns_labels: BTreeMap::from([("team".into(), "a".into())]),
            }
        }
        fn scope(&self) -> PodScope<'_> {
            PodScope {
                namespace: "ns1",
                labels: &self.labels,
                annotations: &self.annotations,
                node_name: "node1",
                node_labels: &self.node_labels,
                namespace_labels: &self.ns_labels,
                default_multus_namespace: "kube-system",
                cluster_network: Some("macvlan-eth0"),
            }
        }
    }

    #[test]
    fn every_filter_rejects_with_its_reason() {
        let facts = Facts::new();
        let scope = facts.scope();
        let v4 = IpFamily::V4;
        let cases: Vec<(SpiderIPPool, Option<&str>)> = vec![
            (pool("ok", "10.0.0.0/24", |_| {}), None),
            (
                pool("dis", "10.0.0.0/24", |s| s.disable = Some(true)),
                Some("is disabled"),
            ),
            (pool("v6", "fd00::/64", |_| {}), Some("is not an IPv4 pool")),
            (
                pool("n", "10.0.0.0/24", |s| s.node_name = vec!["node2".into()]),
                Some("spec.nodeName"),
            ),
            (
                pool("n", "10.0.0.0/24", |s| s.node_name = vec!["node1".into()]),
                None,
            ),
            (
                pool("na", "10.0.0.0/24", |s| s.node_affinity = selector("rack", "r2")),
                Some("spec.nodeAffinity"),
            ),
            (
                pool("na", "10.0.0.0/24", |s| s.node_affinity = selector("rack", "r1")),
                None,
            ),
            (
                pool("nn", "10.0.0.0/24", |s| {
                    // nodeName wins over nodeAffinity.
                    s.node_name = vec!["node1".into()];
                    s.node_affinity = selector("rack", "r2");
                }),
                None,
            ),
            (
                pool("ns", "10.0.0.0/24", |s| s.namespace_name = vec!["other".into()]),
                Some("spec.namespaceName"),
            ),
            (
                pool("nsa", "10.0.0.0/24", |s| {
                    s.namespace_affinity = selector("team", "b")
                }),
                Some("spec.namespaceAffinity"),
            ),
            (
                pool("nsa", "10.0.0.0/24", |s| {
                    s.namespace_affinity = selector("team", "a")
                }),
                None,
            ),
            (
                pool("pa", "10.0.0.0/24", |s| s.pod_affinity = selector("app", "db")),
                Some("spec.podAffinity"),
            ),
            (
                pool("pa", "10.0.0.0/24", |s| s.pod_affinity = selector("app", "web")),
                None,
            ),
            (
                pool("m", "10.0.0.0/24", |s| {
                    s.multus_name = vec!["kube-system/macvlan-eth0".into()]
                }),
                None,
            ),
            (
                pool("m", "10.0.0.0/24", |s| {
                    s.multus_name = vec!["macvlan-eth0".into()]
                }),
                None,
            ),
            (
                pool("m", "10.0.0.0/24", |s| s.multus_name = vec!["other".into()]),
                Some("spec.multusName does not include kube-system/macvlan-eth0"),
            ),
        ];
        for (pool, want) in cases {
            let got = check_pool(&pool, v4, "eth0", &scope);
            match want {
                None => assert!(got.is_ok(), "{:?}: {got:?}", pool.spec),
                Some(reason) => {
                    let err = got.unwrap_err();
                    assert!(err.contains(reason), "{:?}: {err}", pool.spec);
                }
            }
        }
        let mut terminating = pool("t", "10.0.0.0/24", |_| {});
        terminating.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(
            check_pool(&terminating, v4, "eth0", &scope).unwrap_err(),
            "is terminating"
        );
    }

    #[test]
    fn multus_interfaces_resolve_by_name_or_position() {
        let mut facts = Facts::new();
        facts.annotations.insert(
            ANNO_POD_NETWORKS.into(),
            "ns1/vlan100, other/vlan200@data, vlan300".into(),
        );
        let scope = facts.scope();
        assert_eq!(attachment_network("net1", &scope).as_deref(), Some("ns1/vlan100"));
        assert_eq!(
            attachment_network("data", &scope).as_deref(),
            Some("other/vlan200")
        );
        assert_eq!(attachment_network("net3", &scope).as_deref(), Some("ns1/vlan300"));
        // An oversized value names no network.
        let mut huge = Facts::new();
        huge.annotations.insert(
            ANNO_POD_NETWORKS.into(),
            format!(
                "ns1/vlan100,{}",
                "x,".repeat(super::super::annotations::MAX_VALUE_BYTES)
            ),
        );
        assert_eq!(attachment_network("net1", &huge.scope()), None);
        assert_eq!(attachment_network("net2", &scope), None);
        assert_eq!(
            attachment_network("eth0", &scope).as_deref(),
            Some("kube-system/macvlan-eth0")
        );
        let listed: Vec<(String, Option<String>)> = [
            ("eth0", "kube-system/macvlan-eth0"),
            ("net1", "ns1/vlan100"),
            ("data", "other/vlan200"),
            ("net3", "ns1/vlan300"),
        ]
        .into_iter()
        .map(|(nic, net)| (nic.to_owned(), Some(net.to_owned())))
        .collect();
        assert_eq!(attachments(&scope), listed);

        let mut facts = Facts::new();
        facts.annotations.insert(
            ANNO_POD_NETWORKS.into(),
            r#"[{"name":"a","interface":"net5"},{"name":"b","namespace":"x"}]"#.into(),
        );
        facts
            .annotations
            .insert(ANNO_POD_DEFAULT_NETWORK.into(), "x/default-net".into());
        let scope = facts.scope();
        assert_eq!(attachment_network("net5", &scope).as_deref(), Some("ns1/a"));
        assert_eq!(attachment_network("net2", &scope).as_deref(), Some("x/b"));
        assert_eq!(
            attachment_network("eth0", &scope).as_deref(),
            Some("x/default-net")
        );
        let no_net = pool("m", "10.0.0.0/24", |s| s.multus_name = vec!["x/b".into()]);
        assert!(
            check_pool(&no_net, IpFamily::V4, "net9", &scope)
                .unwrap_err()
                .contains("no Multus network")
        );
        assert!(check_pool(&no_net, IpFamily::V4, "net2", &scope).is_ok());
    }

    #[test]
    fn order_is_by_priority_then_as_written() {
        let a = pool("a", "10.0.0.0/24", |_| {});
        let b = pool("b", "10.0.0.0/24", |s| s.node_name = vec!["node1".into()]);
        let c = pool("c", "10.0.0.0/24", |s| s.pod_affinity = selector("app", "web"));
        let d = pool("d", "10.0.0.0/24", |_| {});
        let e = pool("e", "10.0.0.0/24", |s| s.multus_name = vec!["x".into()]);
        let mut pools = vec![&a, &e, &b, &d, &c];
        order(&mut pools);
        let names: Vec<&str> = pools
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(names, ["c", "b", "e", "a", "d"]);
    }
}
