//! What app bindings ask of their pods: the annotations the pod webhook adds unless the pod sets its
//! own.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Serialize;
use spiderpool_ipmath::IpFamily;
use spiderpool_schema::SpiderMultusConfig;

use super::context::Context;
use super::pools::FixedPoolNames;
use super::slices::in_slices;

/// What one app binding asks of the pods it selects.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodBinding {
    /// Binding name.
    pub app: String,
    /// Namespace of the pods.
    pub namespace: String,
    /// `<kind>/<name>` of the workload, when bound by workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Pod label selector, when bound by labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Pod annotations that attach the networks (Multus) and pick the default-route NIC (Spiderpool).
    pub annotations: BTreeMap<String, String>,
    /// Fixed-address pools per pod interface.
    pub fixed_pools: BTreeMap<String, Vec<String>>,
}

impl Context<'_> {
    pub(super) fn render_pod_bindings(
        &self,
        fixed: &FixedPoolNames,
        multus_configs: &[SpiderMultusConfig],
    ) -> Vec<PodBinding> {
        let apps = &self.network.spec.apps;
        in_slices(self.threads, apps.len(), |slice| {
            slice
                .map(|a| self.pod_binding(a, fixed, multus_configs))
                .collect()
        })
    }

    /// What app binding `a` asks of its pods.
    fn pod_binding(
        &self,
        a: usize,
        fixed: &FixedPoolNames,
        multus_configs: &[SpiderMultusConfig],
    ) -> PodBinding {
        let app = &self.network.spec.apps[a];
        let names = app.interface_names();
        let mut annotations = BTreeMap::new();
        let mut attachments = Vec::new();
        let mut fixed_pools: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (i, nic) in app.interfaces.iter().enumerate() {
            if names[i] == "eth0" {
                annotations.insert(
                    "v1.multus-cni.io/default-network".to_string(),
                    format!("{}/{}", app.namespace, nic.network),
                );
            } else {
                attachments.push(serde_json::json!({
                    "name": nic.network,
                    "namespace": app.namespace,
                    "interface": names[i],
                }));
            }
            let mine: Vec<String> = fixed
                .by_interface
                .get(&(a, i))
                .into_iter()
                .flat_map(|by_family| by_family.values().flatten())
                .cloned()
                .collect();
            if !mine.is_empty() {
                fixed_pools.insert(names[i].clone(), mine);
            }
        }
        if !attachments.is_empty() {
            annotations.insert(
                "k8s.v1.cni.cncf.io/networks".to_string(),
                serde_json::Value::Array(attachments).to_string(),
            );
        }
        if let Some(nic) = &app.default_route_interface {
            annotations.insert("ipam.spidernet.io/default-route-nic".to_string(), nic.clone());
        }
        // Fixed addresses must not silently fall back to the shared rack pools when their pool runs
        // out (a StatefulSet scaled past its count): name the pools per interface, which makes them
        // the only candidates (upstream's `ippools` annotation outranks the NAD's default pools).
        // Every interface of the binding is listed, as upstream requires when interfaces are named.
        if !fixed_pools.is_empty() {
            let entries: Vec<serde_json::Value> = app
                .interfaces
                .iter()
                .zip(&names)
                .enumerate()
                .map(|(i, (nic, name))| {
                    let (ipv4, ipv6) = match fixed.by_interface.get(&(a, i)) {
                        Some(by_family) => {
                            let of = |family| by_family.get(&family).cloned().unwrap_or_default();
                            (of(IpFamily::V4), of(IpFamily::V6))
                        }
                        None => multus_configs
                            .iter()
                            .find(|smc| {
                                smc.metadata.namespace.as_deref() == Some(app.namespace.as_str())
                                    && smc.metadata.name.as_deref() == Some(nic.network.as_str())
                            })
                            .and_then(|smc| smc.spec.ippools())
                            .map(|p| (p.ipv4.clone(), p.ipv6.clone()))
                            .unwrap_or_default(),
                    };
                    let mut entry = serde_json::Map::new();
                    entry.insert("interface".into(), serde_json::json!(name));
                    for (key, pools) in [("ipv4", ipv4), ("ipv6", ipv6)] {
                        if !pools.is_empty() {
                            entry.insert(key.into(), serde_json::json!(pools));
                        }
                    }
                    serde_json::Value::Object(entry)
                })
                .collect();
            annotations.insert(
                "ipam.spidernet.io/ippools".to_string(),
                serde_json::Value::Array(entries).to_string(),
            );
        }
        PodBinding {
            app: app.name.clone(),
            namespace: app.namespace.clone(),
            workload: app.workload.as_ref().map(|w| format!("{}/{}", w.kind, w.name)),
            pod_selector: app.pod_selector.clone(),
            annotations,
            fixed_pools,
        }
    }
}
