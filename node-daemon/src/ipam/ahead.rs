//! Which pools a pod bound to this node will draw from, decided before its CNI ADD comes, so that
//! the node can reserve addresses there ahead of it.
//!
//! The scheduler binds a pod; then the kubelet creates the pod's sandbox and calls CNI ADD. In
//! between, this node's agent already has the pod in its cache. When every node starts pods at once
//! (a rollout, a scale-up), each node's first ADD in a shared pool used to wait for the node's first
//! pool write, and those writes contend with each other (one wins per pool version). Reserving when
//! the pod is bound moves that write out of the pod's way.
//!
//! Only what the cache settles is used: the pod's `ipam.spidernet.io/ippools` or `ippool`
//! annotation, its namespace's default pools, or the default pools of the CNI configuration of the
//! NetworkAttachmentDefinition that gives the pod its interface (rules 2 to 5 of
//! [`super::candidates`]), and cluster default pools (rule 6) only when that CNI configuration is
//! known and names none. SpiderSubnet automatic pools are created for the application on its first
//! ADD, so they are not guessed; nor is a pool whose `podAffinity` may depend on the pod's top
//! controller (read only at ADD time). A wrong guess costs only reservations, which go back when the node is idle.

use std::sync::Arc;

use spiderpool_ipmath::IpFamily;
use spiderpool_schema::SpiderIPPool;

use super::candidates::{Candidates, Source};
use super::filter::{self, PodScope};

/// The default pools (IPv4, IPv6) of a CNI configuration (a NetworkAttachmentDefinition's
/// `spec.config`) whose IPAM is `spiderpool`: the plugin's own, or in a configuration list the
/// first plugin's that uses it. `None` when no plugin uses `spiderpool` IPAM.
pub fn netconf_default_pools(config: &serde_json::Value) -> Option<(Vec<String>, Vec<String>)> {
    let ipam = match config.get("plugins").and_then(serde_json::Value::as_array) {
        Some(plugins) => plugins
            .iter()
            .filter_map(|plugin| plugin.get("ipam"))
            .find(|ipam| is_spiderpool(ipam))?,
        None => config.get("ipam").filter(|ipam| is_spiderpool(ipam))?,
    };
    let names = |key: &str| -> Vec<String> {
        ipam.get(key)
            .and_then(serde_json::Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    Some((names("default_ipv4_ippool"), names("default_ipv6_ippool")))
}

fn is_spiderpool(ipam: &serde_json::Value) -> bool {
    ipam.get("type").and_then(serde_json::Value::as_str) == Some("spiderpool")
}

/// The first pool of each interface and family that the pod's ADD would try, as far as `candidates`
/// and the cached pools (`lookup`) tell; names in interface order, without repeats. The caller passes
/// cluster default pools to the candidate rules only when it knows the CNI configuration (rule 5
/// comes first).
pub fn expected_pools(
    candidates: &Candidates,
    lookup: impl Fn(&str) -> Option<Arc<SpiderIPPool>>,
    scope: &PodScope<'_>,
) -> Vec<String> {
    if candidates.source == Source::Subnet {
        return Vec::new();
    }
    let mut expected: Vec<String> = Vec::new();
    for nic in &candidates.nics {
        for family in [IpFamily::V4, IpFamily::V6] {
            let pools: Vec<Arc<SpiderIPPool>> =
                nic.pools(family).iter().filter_map(|name| lookup(name)).collect();
            if pools.iter().any(|pool| pool.spec.pod_affinity.is_some()) {
                continue;
            }
            let mut eligible: Vec<&SpiderIPPool> = pools
                .iter()
                .map(AsRef::as_ref)
                .filter(|pool| filter::check_pool(pool, family, &nic.nic, scope).is_ok())
                .collect();
            filter::order(&mut eligible);
            if let Some(name) = eligible.first().and_then(|pool| pool.metadata.name.clone())
                && !expected.contains(&name)
            {
                expected.push(name);
            }
        }
    }
    expected
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ipam::candidates::{CandidateInput, candidates};

    fn pool(name: &str, spec: serde_json::Value) -> Arc<SpiderIPPool> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "spiderpool.spidernet.io/v2beta1",
                "kind": "SpiderIPPool",
                "metadata": {"name": name},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    fn pools() -> Vec<Arc<SpiderIPPool>> {
        vec![
            pool(
                "v4-a",
                serde_json::json!({"subnet": "10.0.0.0/24", "ips": ["10.0.0.1-10.0.0.9"]}),
            ),
            pool(
                "v4-b",
                serde_json::json!({"subnet": "10.1.0.0/24", "ips": ["10.1.0.1-10.1.0.9"]}),
            ),
            pool(
                "v4-elsewhere",
                serde_json::json!({"subnet": "10.2.0.0/24", "ips": ["10.2.0.1"], "nodeName": ["other"]}),
            ),
            pool(
                "v4-app",
                serde_json::json!({"subnet": "10.3.0.0/24", "ips": ["10.3.0.1"],
                    "podAffinity": {"matchLabels": {"app": "x"}}}),
            ),
            pool(
                "v6-a",
                serde_json::json!({"subnet": "fd00::/120", "ips": ["fd00::1-fd00::9"]}),
            ),
        ]
    }

    /// `netconf_v4`: the CNI configuration's default IPv4 pools, `None` when it is not known (then
    /// cluster defaults are not passed either, as the agent does).
    fn expect(pod: &[(&str, &str)], namespace: &[(&str, &str)], netconf_v4: Option<&[&str]>) -> Vec<String> {
        let pod: BTreeMap<String, String> = pod
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let namespace: BTreeMap<String, String> = namespace
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let known = netconf_v4.is_some();
        let netconf_v4: Vec<String> = netconf_v4
            .unwrap_or_default()
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let default_v4 = if known {
            vec!["v4-b".to_owned()]
        } else {
            Vec::new()
        };
        let chosen = candidates(&CandidateInput {
            netconf_ipv4: &netconf_v4,
            cluster_default_ipv4: &default_v4,
            ..CandidateInput::new(&pod, &namespace, "eth0")
        });
        let Ok(chosen) = chosen else { return Vec::new() };
        let empty = BTreeMap::new();
        let scope = PodScope {
            namespace: "ns",
            labels: &empty,
            annotations: &pod,
            node_name: "here",
            node_labels: &empty,
            namespace_labels: &empty,
            default_multus_namespace: "kube-system",
            cluster_network: None,
        };
        let all = pools();
        expected_pools(
            &chosen,
            |name| {
                all.iter()
                    .find(|p| p.metadata.name.as_deref() == Some(name))
                    .cloned()
            },
            &scope,
        )
    }

    #[test]
    fn the_pod_annotation_names_the_pool_the_add_will_try_first() {
        let one = [(
            "ipam.spidernet.io/ippool",
            r#"{"ipv4":["v4-elsewhere","v4-b","v4-a"]}"#,
        )];
        // v4-elsewhere is for another node: the ADD skips it, so the guess does too.
        assert_eq!(expect(&one, &[], None), ["v4-b"]);
        let dual = [("ipam.spidernet.io/ippool", r#"{"ipv4":["v4-a"],"ipv6":["v6-a"]}"#)];
        assert_eq!(expect(&dual, &[], None), ["v4-a", "v6-a"]);
        let nics = [(
            "ipam.spidernet.io/ippools",
            r#"[{"interface":"eth0","ipv4":["v4-a"]},{"interface":"net1","ipv4":["v4-b"]}]"#,
        )];
        assert_eq!(expect(&nics, &[], None), ["v4-a", "v4-b"]);
    }

    #[test]
    fn namespace_cni_configuration_and_cluster_defaults_are_guessed_in_their_priority() {
        let namespace = [("ipam.spidernet.io/default-ipv4-ippool", r#"["v4-a"]"#)];
        assert_eq!(expect(&[], &namespace, Some(&["v4-b"])), ["v4-a"]);
        assert_eq!(expect(&[], &namespace, None), ["v4-a"]);
        assert_eq!(expect(&[], &[], Some(&["v4-a"])), ["v4-a"]);
        // A known CNI configuration without default pools: the cluster default (v4-b).
        assert_eq!(expect(&[], &[], Some(&[])), ["v4-b"]);
    }

    #[test]
    fn nothing_is_guessed_that_the_add_could_decide_otherwise() {
        // An unknown CNI configuration could name pools before the cluster defaults.
        assert!(expect(&[], &[], None).is_empty());
        // podAffinity may match the top controller's labels, read only at ADD time.
        let app = [("ipam.spidernet.io/ippool", r#"{"ipv4":["v4-app","v4-a"]}"#)];
        assert!(expect(&app, &[], None).is_empty());
        // Unknown pools, pools of no other node, malformed annotations: nothing.
        let unknown = [("ipam.spidernet.io/ippool", r#"{"ipv4":["nope"]}"#)];
        assert!(expect(&unknown, &[], None).is_empty());
        let elsewhere = [("ipam.spidernet.io/ippool", r#"{"ipv4":["v4-elsewhere"]}"#)];
        assert!(expect(&elsewhere, &[], None).is_empty());
        let broken = [("ipam.spidernet.io/ippool", "{")];
        assert!(expect(&broken, &[], None).is_empty());
        let subnet = [("ipam.spidernet.io/subnet", r#"{"ipv4":["s"]}"#)];
        assert!(expect(&subnet, &[], None).is_empty());
    }

    #[test]
    fn default_pools_are_read_from_a_spiderpool_ipam_section_only() {
        let single = serde_json::json!({"type": "macvlan", "ipam": {"type": "spiderpool",
            "default_ipv4_ippool": ["a"], "default_ipv6_ippool": ["b", "c"]}});
        assert_eq!(
            netconf_default_pools(&single),
            Some((vec!["a".to_owned()], vec!["b".to_owned(), "c".to_owned()]))
        );
        let list = serde_json::json!({"plugins": [{"type": "macvlan", "ipam": {"type": "spiderpool"}},
            {"type": "coordinator"}]});
        assert_eq!(netconf_default_pools(&list), Some((vec![], vec![])));
        let other = serde_json::json!({"type": "calico", "ipam": {"type": "calico-ipam"}});
        assert_eq!(netconf_default_pools(&other), None);
        assert_eq!(netconf_default_pools(&serde_json::json!({"plugins": []})), None);
    }
}
