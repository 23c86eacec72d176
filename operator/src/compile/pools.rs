//! SpiderIPPools: a shared pool per (subnet, rack, family), and a fixed-address pool per (binding
//! interface, rack, family).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use spiderpool_ipmath::{IpFamily, IpSet};
use spiderpool_schema::labels::{
    LABEL_APP, LABEL_IPPOOL_CIDR, LABEL_POOL_INTERFACE, LABEL_RACK, LABEL_SUBNET, LABEL_VLAN,
};
use spiderpool_schema::network::AppBinding;
use spiderpool_schema::{SpiderIPPool, SpiderIPPoolSpec};

use super::carve::Carved;
use super::context::Context;
use super::names::{family_suffix, object_name};

/// Names of the fixed-address pools, looked up by what needs them.
#[derive(Debug, Default)]
pub(super) struct FixedPoolNames {
    /// (network, namespace, family) -> pools, for the network's multus config.
    pub(super) by_network: BTreeMap<(String, String, IpFamily), Vec<String>>,
    /// (binding index, interface index) -> family -> pools, for the binding's pod annotations.
    pub(super) by_interface: BTreeMap<(usize, usize), BTreeMap<IpFamily, Vec<String>>>,
}

impl Context<'_> {
    /// A pool spec with what every pool of a subnet family shares.
    fn pool_spec(&self, subnet: &str, family: IpFamily, ips: &IpSet) -> Option<SpiderIPPoolSpec> {
        let parsed = self.subnets.get(subnet)?;
        let entry = self.network.spec.subnets.iter().find(|s| s.name == subnet)?;
        let block = entry.families().find(|(f, _)| *f == family)?.1;
        let net = parsed.nets.get(&family)?;
        Some(SpiderIPPoolSpec {
            ip_version: Some(family.as_version()),
            subnet: net.to_string(),
            ips: ips.to_strings(),
            gateway: parsed.gateways.get(&family).map(IpAddr::to_string),
            routes: block.routes.clone(),
            // The CRD schema's defaults, written out so the rendering is what lands.
            default: Some(false),
            disable: Some(false),
            ..SpiderIPPoolSpec::default()
        })
    }

    fn pool_labels(&self, subnet: &str, family: IpFamily) -> Vec<(&'static str, String)> {
        let mut labels = vec![(LABEL_SUBNET, subnet.to_string())];
        if let Some(net) = self.subnets.get(subnet).and_then(|p| p.nets.get(&family)) {
            labels.push((LABEL_IPPOOL_CIDR, spiderpool_ipmath::cidr_label_value(net)));
        }
        if let Some(entry) = self.network.spec.subnets.iter().find(|s| s.name == subnet)
            && entry.vlan_id() != 0
        {
            labels.push((LABEL_VLAN, entry.vlan_id().to_string()));
        }
        labels
    }

    /// Fixed-address pools; returns their names by (network, namespace, family).
    pub(super) fn render_fixed_pools(
        &self,
        carved: &Carved,
        pools: &mut Vec<SpiderIPPool>,
    ) -> FixedPoolNames {
        let spec = &self.network.spec;
        let mut names = FixedPoolNames::default();
        for ((a, i, r, family), set) in &carved.by_binding {
            let app = &spec.apps[*a];
            let nic = &app.interfaces[*i];
            let Some(n) = self.network_index(&nic.network) else {
                continue;
            };
            let network = &spec.networks[n];
            let Some(subnet) = self.network_subnet_in(n, *r) else {
                continue;
            };
            let rack = &spec.racks[*r];
            let nic_name = app.interface_names()[*i].clone();
            let Some(mut pool_spec) = self.pool_spec(subnet, *family, set) else {
                continue;
            };
            pool_spec.node_affinity = Some(rack.node_selector.clone());
            pool_spec.namespace_name = vec![app.namespace.clone()];
            pool_spec.multus_name = vec![format!("{}/{}", app.namespace, network.name)];
            pool_spec.pod_affinity = Some(pod_affinity(app));
            let name = object_name(&[
                &self.topology,
                &app.name,
                &nic_name,
                &rack.name,
                family_suffix(*family),
            ]);
            let mut labels = self.pool_labels(subnet, *family);
            labels.extend([
                (LABEL_RACK, rack.name.clone()),
                (LABEL_APP, app.name.clone()),
                (LABEL_POOL_INTERFACE, nic_name.clone()),
            ]);
            let label_refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut pool = SpiderIPPool::new(&name, pool_spec);
            pool.metadata = self.meta(
                &name,
                None,
                &label_refs,
                format!("spec.apps[{a}].interfaces[{i}].fixedIPs"),
            );
            pools.push(pool);
            names
                .by_interface
                .entry((*a, *i))
                .or_default()
                .entry(*family)
                .or_default()
                .push(name.clone());
            names
                .by_network
                .entry((network.name.clone(), app.namespace.clone(), *family))
                .or_default()
                .push(name);
        }
        names
    }

    /// Shared rack pools: the rack's range minus the fixed addresses carved from it. Returns their names
    /// by (subnet, family).
    pub(super) fn render_rack_pools(
        &self,
        carved: &Carved,
        pools: &mut Vec<SpiderIPPool>,
    ) -> BTreeMap<(String, IpFamily), Vec<String>> {
        let spec = &self.network.spec;
        let mut names: BTreeMap<(String, IpFamily), Vec<String>> = BTreeMap::new();
        // Who may use each subnet's pools: computed once per subnet, not once per rack range.
        let mut users: BTreeMap<&str, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
        for (network, layout) in spec.networks.iter().zip(&self.layouts) {
            for subnet in &layout.subnets {
                let (namespaces, multus) = users.entry(subnet.as_str()).or_default();
                for ns in &network.namespaces {
                    namespaces.insert(ns.clone());
                    multus.insert(format!("{ns}/{}", network.name));
                }
            }
        }
        let users: BTreeMap<&str, (Vec<String>, Vec<String>)> = users
            .into_iter()
            .map(|(subnet, (ns, multus))| (subnet, (ns.into_iter().collect(), multus.into_iter().collect())))
            .collect();
        for (r, rack) in spec.racks.iter().enumerate() {
            for (k, range) in rack.ranges.iter().enumerate() {
                for family in [IpFamily::V4, IpFamily::V6] {
                    let Some(raw) = self.rack_sets.get(&(r, range.subnet.clone(), family)).cloned() else {
                        continue;
                    };
                    if raw.is_empty() {
                        continue;
                    }
                    let ips = match carved.by_rack.get(&(r, range.subnet.clone(), family)) {
                        Some(fixed) => raw.difference(fixed),
                        None => raw,
                    };
                    if ips.is_empty() {
                        continue;
                    }
                    let Some(mut pool_spec) = self.pool_spec(&range.subnet, family, &ips) else {
                        continue;
                    };
                    let parsed = self.subnets.get(&range.subnet);
                    // Reserved addresses stay in `ips` (the allocator subtracts every SpiderReservedIP), but
                    // excluded ones are written out so the pool says what it never hands out.
                    if let Some(excluded) = parsed.and_then(|p| p.excluded.get(&family)) {
                        pool_spec.exclude_ips = excluded.intersection(&ips).to_strings();
                    }
                    pool_spec.node_affinity = Some(rack.node_selector.clone());
                    if let Some((namespaces, multus)) = users.get(range.subnet.as_str()) {
                        pool_spec.namespace_name = namespaces.clone();
                        pool_spec.multus_name = multus.clone();
                    }
                    let name =
                        object_name(&[&self.topology, &range.subnet, &rack.name, family_suffix(family)]);
                    let mut labels = self.pool_labels(&range.subnet, family);
                    labels.push((LABEL_RACK, rack.name.clone()));
                    let label_refs: Vec<(&str, &str)> =
                        labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    let mut pool = SpiderIPPool::new(&name, pool_spec);
                    pool.metadata =
                        self.meta(&name, None, &label_refs, format!("spec.racks[{r}].ranges[{k}]"));
                    pools.push(pool);
                    names
                        .entry((range.subnet.clone(), family))
                        .or_default()
                        .push(name);
                }
            }
        }
        names
    }
}

/// Pod affinity of a fixed-address pool: upstream's application labels for a workload (the allocator
/// matches them against the pod's top controller, as for upstream's automatic pools), or the binding's
/// own pod selector.
fn pod_affinity(app: &AppBinding) -> LabelSelector {
    if let Some(workload) = &app.workload {
        let application = spiderpool_schema::annotations::AppRef {
            api_version: workload.effective_api_version().unwrap_or_default(),
            kind: workload.kind.clone(),
            namespace: app.namespace.clone(),
            name: workload.name.clone(),
            uid: String::new(),
        };
        LabelSelector {
            match_labels: Some(application.affinity_labels()),
            match_expressions: None,
        }
    } else {
        app.pod_selector.clone().unwrap_or_default()
    }
}
