//! The pod webhook's rule, without I/O: which app binding of which SpiderNetwork a new pod belongs to,
//! the annotations it gets from it (only those the pod does not set itself: pod annotations override,
//! key by key), and the refusal of a StatefulSet pod beyond the binding's fixed addresses.
//!
//! The bindings come from compiling every SpiderNetwork ([`BindingIndex::insert`]), done when a
//! topology changes, never per request: a request is a lookup by namespace and a few comparisons.
//!
//! Scope, and why an operator outage cannot stop pods from starting: the webhook is registered only for
//! the namespaces some binding names ([`pod_configuration`]'s namespace selector, kept current by the
//! server as topologies change), only for pod CREATE, with `failurePolicy: Ignore` and a 3 s timeout.
//! Pods of other namespaces never reach it; when the operator is down, bound pods are created without
//! the binding's annotations (they then start on the cluster network only, and never take an underlay
//! address), rather than not at all. A pod beyond a StatefulSet's fixed addresses is refused while the
//! operator is up, so the StatefulSet's events say why the pod is missing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::ObjectMeta;
use spiderpool_ipmath::{IpFamily, IpSet};
use spiderpool_schema::common::selector_matches;
use spiderpool_schema::labels::ANNOTATION_APP_BINDING;
use spiderpool_schema::network::{AppBinding, WorkloadRef};
use spiderpool_schema::{Problem, SpiderNetwork};

use super::Decision;
use super::registration::{Registration, client_config};
use crate::compile::compile;

/// Path of the pod endpoint.
pub const PATH: &str = "/mutate-pod-app-bindings";
/// Name of the webhook inside its configuration.
pub const WEBHOOK_NAME: &str = "app-bindings.pods.spiderpool.spidernet.io";
/// Seconds the API server waits for the pod webhook: short, since it only looks up a cache and an
/// unanswered call only delays the pod (failurePolicy Ignore).
pub const TIMEOUT_SECONDS: i32 = 3;

/// One app binding as the webhook applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundApp {
    /// SpiderNetwork name.
    pub topology: String,
    /// Index of the binding in `spec.apps`.
    pub index: usize,
    /// The binding as written.
    pub binding: AppBinding,
    /// The annotations it gives its pods.
    pub annotations: BTreeMap<String, String>,
    /// For workloads whose pods keep their addresses by name (StatefulSet): how many pods its fixed
    /// addresses serve, and which interface limits it.
    pub fixed_limit: Option<FixedLimit>,
}

/// How many pods a binding's fixed addresses serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedLimit {
    /// Addresses per family (and per rack, for `count`), the fewest over the binding's interfaces.
    pub count: u128,
    /// The interface that has that few.
    pub interface: usize,
}

/// The fewest pods the fixed addresses of `binding` serve: `count` (carved per rack, and a pod may land
/// in any rack), or the addresses listed per family (the fewer of the two families).
pub fn fixed_limit(binding: &AppBinding) -> Option<FixedLimit> {
    binding
        .interfaces
        .iter()
        .enumerate()
        .filter_map(|(i, nic)| {
            let fixed = nic.fixed_ips.as_ref()?;
            let count = match fixed.count {
                Some(count) => u128::try_from(count).ok()?,
                None => [IpFamily::V4, IpFamily::V6]
                    .into_iter()
                    .filter(|f| !fixed.items(*f).is_empty())
                    .filter_map(|f| IpSet::parse_list(f, fixed.items(f)).ok().map(|s| s.len()))
                    .min()?,
            };
            Some(FixedLimit { count, interface: i })
        })
        .min_by_key(|l| l.count)
}

/// Every app binding of the cluster's SpiderNetworks, by namespace.
#[derive(Debug, Clone, Default)]
pub struct BindingIndex {
    /// Per topology name: its generation and bindings (kept per topology so that one changing
    /// recompiles only itself).
    topologies: BTreeMap<String, (Option<i64>, Arc<Vec<BoundApp>>)>,
    by_namespace: HashMap<String, Vec<BoundApp>>,
}

impl BindingIndex {
    /// Adds or replaces a topology's bindings (compiling it unless this generation is indexed
    /// already). An invalid topology has none: the network webhook refuses such a spec, and nothing
    /// of it is applied.
    pub fn insert(&mut self, network: &SpiderNetwork) {
        let Some(name) = network.metadata.name.clone() else {
            return;
        };
        if network.metadata.deletion_timestamp.is_some() {
            self.remove(&name);
            return;
        }
        let generation = network.metadata.generation;
        if self
            .topologies
            .get(&name)
            .is_some_and(|(g, _)| *g == generation && generation.is_some())
        {
            return;
        }
        let bound = match compile(network) {
            Ok(rendered) => rendered
                .pod_bindings
                .into_iter()
                .zip(&network.spec.apps)
                .enumerate()
                .map(|(index, (rendered, binding))| BoundApp {
                    topology: name.clone(),
                    index,
                    binding: binding.clone(),
                    annotations: rendered.annotations,
                    fixed_limit: binding
                        .workload
                        .as_ref()
                        .filter(|w| w.kind == "StatefulSet")
                        .and_then(|_| fixed_limit(binding)),
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        self.topologies.insert(name, (generation, Arc::new(bound)));
        self.reindex();
    }

    /// Removes a topology's bindings.
    pub fn remove(&mut self, name: &str) {
        if self.topologies.remove(name).is_some() {
            self.reindex();
        }
    }

    /// Keeps only the topologies named (after a relist).
    pub fn retain(&mut self, names: &BTreeSet<String>) {
        let before = self.topologies.len();
        self.topologies.retain(|name, _| names.contains(name));
        if self.topologies.len() != before {
            self.reindex();
        }
    }

    fn reindex(&mut self) {
        let mut by_namespace: HashMap<String, Vec<BoundApp>> = HashMap::new();
        for (_, bound) in self.topologies.values() {
            for app in bound.iter() {
                by_namespace
                    .entry(app.binding.namespace.clone())
                    .or_default()
                    .push(app.clone());
            }
        }
        self.by_namespace = by_namespace;
    }

    /// The namespaces some binding names.
    pub fn namespaces(&self) -> BTreeSet<String> {
        self.by_namespace.keys().cloned().collect()
    }

    /// The bindings that select `pod` in `namespace`, in topology-name then spec order.
    pub fn matching<'a>(&'a self, namespace: &str, pod: &Pod) -> Vec<&'a BoundApp> {
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter(|app| selects(&app.binding, pod))
            .collect()
    }
}

/// Whether a binding selects the pod: by workload (the pod's owner chain as the built-in controllers
/// name it) or by labels.
pub fn selects(binding: &AppBinding, pod: &Pod) -> bool {
    if let Some(workload) = &binding.workload {
        return owned_by(pod, workload);
    }
    match &binding.pod_selector {
        Some(selector) => {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            selector_matches(selector, &labels)
        }
        None => false,
    }
}

/// Whether the pod belongs to the workload. A Deployment's pods are owned by its ReplicaSet
/// `<deployment>-<pod-template-hash>`; a CronJob's by its Job `<cronjob>-<scheduled time>`; a KubeVirt
/// VirtualMachine's launcher pod carries the label `vm.kubevirt.io/name`; every other kind owns its
/// pods directly.
pub fn owned_by(pod: &Pod, workload: &WorkloadRef) -> bool {
    let labels = pod.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    let owners = pod.metadata.owner_references.as_deref().unwrap_or_default();
    let group_of = |api_version: &str| api_version.rsplit_once('/').map_or("", |(g, _)| g).to_string();
    let wanted_group = workload.effective_api_version().map(|v| group_of(&v));
    owners.iter().any(|owner| match workload.kind.as_str() {
        "Deployment" => {
            owner.kind == "ReplicaSet"
                && match label("pod-template-hash") {
                    Some(hash) => owner.name == format!("{}-{hash}", workload.name),
                    None => owner
                        .name
                        .strip_prefix(&format!("{}-", workload.name))
                        .is_some_and(|rest| !rest.is_empty() && !rest.contains('-')),
                }
        }
        "CronJob" => {
            owner.kind == "Job"
                && owner
                    .name
                    .strip_prefix(&format!("{}-", workload.name))
                    .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
        }
        "VirtualMachine" => {
            label("vm.kubevirt.io/name") == Some(workload.name.as_str())
                || (owner.kind == "VirtualMachineInstance" && owner.name == workload.name)
        }
        kind => {
            owner.kind == kind
                && owner.name == workload.name
                && wanted_group
                    .as_ref()
                    .is_none_or(|group| *group == group_of(&owner.api_version))
        }
    })
}

/// The StatefulSet ordinal of a pod named `<statefulset>-<ordinal>`.
fn ordinal(pod_name: &str, statefulset: &str) -> Option<u128> {
    pod_name
        .strip_prefix(statefulset)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

/// Decides a pod CREATE in `namespace` (the request's namespace: a pod being created may not carry it).
pub fn admit(index: &BindingIndex, namespace: &str, pod: &Pod) -> Result<Decision, super::PatchError> {
    let matching = index.matching(namespace, pod);
    let Some(app) = matching.first() else {
        return Ok(Decision::default());
    };
    let mut decision = Decision::default();
    if matching.len() > 1 {
        let others: Vec<String> = matching[1..]
            .iter()
            .map(|a| format!("{}/{}", a.topology, a.binding.name))
            .collect();
        decision.warnings.push(format!(
            "app binding {}/{} applied; {} also select(s) this pod and were not applied",
            app.topology,
            app.binding.name,
            others.join(", ")
        ));
    }
    if let (Some(limit), Some(workload), Some(name)) = (
        &app.fixed_limit,
        &app.binding.workload,
        pod.metadata.name.as_deref(),
    ) && let Some(n) = ordinal(name, &workload.name)
        && n >= limit.count
    {
        let nic = &app.binding.interfaces[limit.interface];
        let names = app.binding.interface_names();
        decision.problems.push(Problem {
            path: "metadata.name".into(),
            message: format!(
                "pod {name} is ordinal {n} of StatefulSet {}, but app binding `{}` of SpiderNetwork `{}` has {} fixed address(es) for interface {} (network {}; spec.apps[{}].interfaces[{}].fixedIPs), which serve ordinals 0-{}: raise fixedIPs or scale the StatefulSet down to {} replicas (its pods never fall back to the shared pools)",
                workload.name,
                app.binding.name,
                app.topology,
                limit.count,
                names[limit.interface],
                nic.network,
                app.index,
                limit.interface,
                limit.count.saturating_sub(1),
                limit.count,
            ),
        });
        return Ok(decision);
    }
    let mut after = pod.clone();
    let annotations = after.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut applied = false;
    for (key, value) in &app.annotations {
        if !annotations.contains_key(key) {
            annotations.insert(key.clone(), value.clone());
            applied = true;
        }
    }
    if applied {
        annotations.insert(
            ANNOTATION_APP_BINDING.to_string(),
            format!("{}/{}", app.topology, app.binding.name),
        );
    }
    decision.patch = super::patch_between(pod, &after)?;
    Ok(decision)
}

/// The MutatingWebhookConfiguration of the pod webhook, `<registration name>-pods`: CREATE of pods in
/// the namespaces some binding names (none: a selector no namespace matches), failurePolicy Ignore.
pub fn pod_configuration(
    registration: &Registration,
    ca_pem: &str,
    namespaces: &BTreeSet<String>,
) -> MutatingWebhookConfiguration {
    let requirement = if namespaces.is_empty() {
        // Every namespace has this label (set by the API server), so nothing matches.
        LabelSelectorRequirement {
            key: "kubernetes.io/metadata.name".into(),
            operator: "DoesNotExist".into(),
            values: None,
        }
    } else {
        LabelSelectorRequirement {
            key: "kubernetes.io/metadata.name".into(),
            operator: "In".into(),
            values: Some(namespaces.iter().cloned().collect()),
        }
    };
    let webhook = MutatingWebhook {
        name: WEBHOOK_NAME.into(),
        admission_review_versions: vec!["v1".into()],
        client_config: client_config(&registration.target, PATH, ca_pem),
        failure_policy: Some("Ignore".into()),
        match_policy: Some("Equivalent".into()),
        namespace_selector: Some(LabelSelector {
            match_expressions: Some(vec![requirement]),
            match_labels: None,
        }),
        object_selector: registration.object_selector.clone(),
        reinvocation_policy: Some("Never".into()),
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".into()]),
            operations: Some(vec!["CREATE".into()]),
            resources: Some(vec!["pods".into()]),
            scope: Some("Namespaced".into()),
        }]),
        side_effects: "None".into(),
        timeout_seconds: Some(TIMEOUT_SECONDS),
        match_conditions: None,
    };
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(pod_configuration_name(registration)),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "spiderpool-operator".to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![webhook]),
    }
}

/// Name of the pod webhook's configuration.
pub fn pod_configuration_name(registration: &Registration) -> String {
    format!("{}-pods", registration.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn topology() -> SpiderNetwork {
        serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderNetwork",
            "metadata": {"name": "dc", "generation": 1},
            "spec": {
                "subnets": [{"name": "s", "ipv4": {"cidr": "10.0.0.0/24", "gateway": "10.0.0.1"}}],
                "racks": [{"name": "r1", "nodeSelector": {"matchLabels": {"rack": "r1"}}, "uplinks": ["ens1"],
                           "ranges": [{"subnet": "s", "ipv4": ["10.0.0.10-10.0.0.200"]}]}],
                "networks": [{"name": "data", "type": "macvlan", "subnet": "s", "master": "ens1",
                              "namespaces": ["app"]}],
                "apps": [
                    {"name": "db", "namespace": "app", "workload": {"kind": "StatefulSet", "name": "db"},
                     "interfaces": [{"network": "data", "fixedIPs": {"count": 3}}]},
                    {"name": "web", "namespace": "app", "workload": {"kind": "Deployment", "name": "web"},
                     "interfaces": [{"network": "data"}], "defaultRouteInterface": "net1"},
                    {"name": "labelled", "namespace": "app",
                     "podSelector": {"matchLabels": {"tier": "edge"}},
                     "interfaces": [{"network": "data", "name": "eth0"}]}
                ]
            }
        }))
        .unwrap()
    }

    fn pod(name: &str, owner: Option<(&str, &str)>, labels: serde_json::Value) -> Pod {
        let owners = owner.map(|(kind, name)| {
            json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": true}])
        });
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels, "ownerReferences": owners},
            "spec": {"containers": [{"name": "c", "image": "i"}]}
        }))
        .unwrap()
    }

    fn index() -> BindingIndex {
        let mut index = BindingIndex::default();
        index.insert(&topology());
        index
    }

    fn patched(decision: &Decision, pod: &Pod) -> BTreeMap<String, String> {
        let mut value = serde_json::to_value(pod).unwrap();
        json_patch::patch(&mut value, &decision.patch).unwrap();
        let after: Pod = serde_json::from_value(value).unwrap();
        after.metadata.annotations.unwrap_or_default()
    }

    #[test]
    fn statefulset_pods_get_the_networks_and_their_fixed_pools() {
        let p = pod("db-0", Some(("StatefulSet", "db")), json!({}));
        let d = admit(&index(), "app", &p).unwrap();
        assert!(d.allowed());
        let a = patched(&d, &p);
        assert_eq!(
            a["k8s.v1.cni.cncf.io/networks"],
            r#"[{"name":"data","namespace":"app","interface":"net1"}]"#
        );
        assert!(
            a["ipam.spidernet.io/ippools"].contains("dc-db-net1-r1-v4"),
            "{a:?}"
        );
        assert_eq!(a[ANNOTATION_APP_BINDING], "dc/db");
    }

    #[test]
    fn a_statefulset_pod_beyond_the_fixed_count_is_refused() {
        let p = pod("db-3", Some(("StatefulSet", "db")), json!({}));
        let d = admit(&index(), "app", &p).unwrap();
        assert!(!d.allowed());
        let m = d.message();
        assert!(
            m.starts_with("metadata.name: pod db-3 is ordinal 3 of StatefulSet db"),
            "{m}"
        );
        assert!(
            m.contains("3 fixed address(es)") && m.contains("spec.apps[0].interfaces[0].fixedIPs"),
            "{m}"
        );
        assert!(
            admit(
                &index(),
                "app",
                &pod("db-2", Some(("StatefulSet", "db")), json!({}))
            )
            .unwrap()
            .allowed()
        );
    }

    #[test]
    fn deployment_pods_are_found_through_their_replicaset() {
        let p = pod(
            "web-7d9f-abcde",
            Some(("ReplicaSet", "web-7d9f")),
            json!({"pod-template-hash": "7d9f"}),
        );
        let a = patched(&admit(&index(), "app", &p).unwrap(), &p);
        assert_eq!(a["ipam.spidernet.io/default-route-nic"], "net1");
        assert!(!a.contains_key("ipam.spidernet.io/ippools"));
        let other = pod(
            "webby-1-x",
            Some(("ReplicaSet", "webby-1")),
            json!({"pod-template-hash": "1"}),
        );
        assert!(admit(&index(), "app", &other).unwrap().patch.0.is_empty());
    }

    #[test]
    fn the_pods_own_annotations_win_and_other_namespaces_are_untouched() {
        let mut p = pod("x", None, json!({"tier": "edge"}));
        p.metadata.annotations = Some(
            [(
                "v1.multus-cni.io/default-network".to_string(),
                "app/mine".to_string(),
            )]
            .into(),
        );
        let d = admit(&index(), "app", &p).unwrap();
        assert!(
            d.patch.0.is_empty(),
            "nothing of the binding is left to add: {:?}",
            d.patch
        );
        let plain = pod("x", None, json!({"tier": "edge"}));
        let a = patched(&admit(&index(), "app", &plain).unwrap(), &plain);
        assert_eq!(a["v1.multus-cni.io/default-network"], "app/data");
        assert!(admit(&index(), "elsewhere", &plain).unwrap().patch.0.is_empty());
    }

    #[test]
    fn the_configuration_selects_only_bound_namespaces_and_ignores_failures() {
        let registration = Registration::for_service("spiderpool-controller", "kube-system", "svc", 5722);
        let c = pod_configuration(&registration, "CA", &index().namespaces());
        assert_eq!(c.metadata.name.as_deref(), Some("spiderpool-controller-pods"));
        let hook = &c.webhooks.unwrap()[0];
        assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
        let expr = &hook
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_expressions
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            (expr.operator.as_str(), expr.values.clone()),
            ("In", Some(vec!["app".to_string()]))
        );
        let none = pod_configuration(&registration, "CA", &BTreeSet::new());
        let expr = none.webhooks.unwrap()[0]
            .namespace_selector
            .clone()
            .unwrap()
            .match_expressions
            .unwrap()[0]
            .clone();
        assert_eq!(expr.operator, "DoesNotExist");
    }

    #[test]
    fn explicit_addresses_limit_by_the_smaller_family() {
        let binding: AppBinding = serde_json::from_value(json!({
            "name": "a", "namespace": "n", "workload": {"kind": "StatefulSet", "name": "a"},
            "interfaces": [{"network": "x", "fixedIPs": {"ipv4": ["10.0.0.1-10.0.0.4"], "ipv6": ["fd00::1-fd00::2"]}}]
        }))
        .unwrap();
        assert_eq!(
            fixed_limit(&binding),
            Some(FixedLimit {
                count: 2,
                interface: 0
            })
        );
    }
}
