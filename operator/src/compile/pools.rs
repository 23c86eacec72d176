//! SpiderIPPools: a shared pool per (subnet, rack, family), and a fixed-address pool per (binding
//! interface, rack, family).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::Range;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use spiderpool_ipmath::{IpFamily, IpSet};
use spiderpool_schema::labels::{
    LABEL_APP, LABEL_IPPOOL_CIDR, LABEL_POOL_INTERFACE, LABEL_RACK, LABEL_SUBNET, LABEL_VLAN,
};
use spiderpool_schema::network::AppBinding;
use spiderpool_schema::{SpiderIPPool, SpiderIPPoolSpec};

use super::carve::Carved;
use super::context::{Context, generated_meta};
use super::names::{family_suffix, object_name};
use super::slices::in_slices;

/// Names of the fixed-address pools, looked up by what needs them.
#[derive(Debug, Default)]
pub(super) struct FixedPoolNames {
    /// (network, namespace, family) -> pools, for the network's multus config.
    pub(super) by_network: BTreeMap<(String, String, IpFamily), Vec<String>>,
    /// (binding index, interface index) -> family -> pools, for the binding's pod annotations.
    pub(super) by_interface: BTreeMap<(usize, usize), BTreeMap<IpFamily, Vec<String>>>,
}

/// What every pool of one (subnet, family) shares, built once per subnet family (the large topology
/// renders 16,200 pools from 260 of these): cloning a finished label map and spec strings costs less
/// than formatting and inserting them again for every pool.
struct PoolTemplate {
    spec: SpiderIPPoolSpec,
    labels: BTreeMap<String, String>,
}

impl PoolTemplate {
    /// A pool named `name` with the template's spec and labels, `ips` as its addresses, `labels` added
    /// and `source` (the spec path it stands for) as its source annotation.
    fn pool(&self, name: String, ips: &IpSet, labels: &[(&str, &str)], source: String) -> SpiderIPPool {
        let mut all = self.labels.clone();
        for (key, value) in labels {
            all.insert((*key).to_string(), (*value).to_string());
        }
        let mut spec = self.spec.clone();
        spec.ips = ips.to_strings();
        SpiderIPPool {
            metadata: generated_meta(name, None, all, source),
            spec,
            status: None,
        }
    }
}

/// Templates by (subnet name, family).
type PoolTemplates<'a> = BTreeMap<(&'a str, IpFamily), PoolTemplate>;

/// Who may use each subnet's shared pools: (namespaces, `namespace/network` multus names).
type PoolUsers<'a> = BTreeMap<&'a str, (Vec<String>, Vec<String>)>;

/// Names of the rack pools by (subnet, family), in rack order.
pub(super) type RackPoolNames = BTreeMap<(String, IpFamily), Vec<String>>;

/// The rack pools of some racks and their names, in rack order.
struct RackPools {
    pools: Vec<SpiderIPPool>,
    names: RackPoolNames,
}

impl Context<'_> {
    /// One template per subnet family the topology defines.
    fn pool_templates(&self) -> PoolTemplates<'_> {
        let mut templates = BTreeMap::new();
        for entry in &self.network.spec.subnets {
            let Some(parsed) = self.subnets.get(&entry.name) else {
                continue;
            };
            for (family, block) in entry.families() {
                let Some(net) = parsed.nets.get(&family) else {
                    continue;
                };
                let spec = SpiderIPPoolSpec {
                    ip_version: Some(family.as_version()),
                    subnet: net.to_string(),
                    gateway: parsed.gateways.get(&family).map(IpAddr::to_string),
                    routes: block.routes.clone(),
                    // The CRD schema's defaults, written out so the rendering is what lands.
                    default: Some(false),
                    disable: Some(false),
                    ..SpiderIPPoolSpec::default()
                };
                let cidr = spiderpool_ipmath::cidr_label_value(net);
                let vlan = entry.vlan_id().to_string();
                let mut labels = vec![(LABEL_SUBNET, entry.name.as_str()), (LABEL_IPPOOL_CIDR, &cidr)];
                if entry.vlan_id() != 0 {
                    labels.push((LABEL_VLAN, &vlan));
                }
                let labels = self.labels(&labels);
                templates.insert((entry.name.as_str(), family), PoolTemplate { spec, labels });
            }
        }
        templates
    }

    /// Every pool: the fixed-address pools, then the rack pools in rack order. Returns them with the
    /// fixed pools' names and the rack pools' names by (subnet, family).
    ///
    /// The large topology renders 16,000 pools, so they are rendered on several threads: the rack pools
    /// in one slice of racks per thread (`self.threads` slices), the fixed pools on one more thread
    /// meanwhile. The parts are joined in order, so the output is the same whatever the number of
    /// threads.
    pub(super) fn render_pools(&self, carved: &Carved) -> (Vec<SpiderIPPool>, FixedPoolNames, RackPoolNames) {
        let templates = self.pool_templates();
        let users = self.pool_users();
        let rack_ranges: usize = self.network.spec.racks.iter().map(|r| r.ranges.len()).sum();
        // Reserved at once: a pool is large, and growing the vector moves every pool rendered so far.
        let mut pools = Vec::with_capacity(carved.by_binding.len() + 2 * rack_ranges);
        let (fixed_names, rack_parts) = std::thread::scope(|scope| {
            let fixed = scope.spawn(|| self.fixed_pools(carved, &templates, &mut pools));
            let parts = in_slices(self.threads, self.network.spec.racks.len(), |slice| {
                vec![self.rack_pools(slice, carved, &templates, &users)]
            });
            let fixed_names = fixed
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (fixed_names, parts)
        });
        let mut rack_names = RackPoolNames::new();
        for part in rack_parts {
            pools.extend(part.pools);
            for (key, part_names) in part.names {
                rack_names.entry(key).or_default().extend(part_names);
            }
        }
        (pools, fixed_names, rack_names)
    }

    /// Fixed-address pools, appended to `pools`; returns their names.
    fn fixed_pools(
        &self,
        carved: &Carved,
        templates: &PoolTemplates<'_>,
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
            let Some(template) = templates.get(&(subnet, *family)) else {
                continue;
            };
            let rack = &spec.racks[*r];
            let nic_name = app.interface_names()[*i].clone();
            let name = object_name(&[
                &self.topology,
                &app.name,
                &nic_name,
                &rack.name,
                family_suffix(*family),
            ]);
            let mut pool = template.pool(
                name.clone(),
                set,
                &[
                    (LABEL_RACK, &rack.name),
                    (LABEL_APP, &app.name),
                    (LABEL_POOL_INTERFACE, &nic_name),
                ],
                format!("spec.apps[{a}].interfaces[{i}].fixedIPs"),
            );
            pool.spec.node_affinity = Some(rack.node_selector.clone());
            pool.spec.namespace_name = vec![app.namespace.clone()];
            pool.spec.multus_name = vec![format!("{}/{}", app.namespace, network.name)];
            pool.spec.pod_affinity = Some(pod_affinity(app));
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

    /// Who may use each subnet's pools: computed once per subnet, not once per rack range.
    fn pool_users(&self) -> PoolUsers<'_> {
        let mut users: BTreeMap<&str, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
        for (network, layout) in self.network.spec.networks.iter().zip(&self.layouts) {
            for subnet in &layout.subnets {
                let (namespaces, multus) = users.entry(subnet.as_str()).or_default();
                for ns in &network.namespaces {
                    namespaces.insert(ns.clone());
                    multus.insert(format!("{ns}/{}", network.name));
                }
            }
        }
        users
            .into_iter()
            .map(|(subnet, (ns, multus))| (subnet, (ns.into_iter().collect(), multus.into_iter().collect())))
            .collect()
    }

    /// The rack pools of the racks in `slice`.
    fn rack_pools(
        &self,
        slice: Range<usize>,
        carved: &Carved,
        templates: &PoolTemplates<'_>,
        users: &PoolUsers<'_>,
    ) -> RackPools {
        let spec = &self.network.spec;
        let ranges: usize = spec.racks[slice.clone()].iter().map(|r| r.ranges.len()).sum();
        let mut out = RackPools {
            pools: Vec::with_capacity(2 * ranges),
            names: RackPoolNames::new(),
        };
        for r in slice {
            let rack = &spec.racks[r];
            for (k, range) in rack.ranges.iter().enumerate() {
                for family in [IpFamily::V4, IpFamily::V6] {
                    let key = (r, range.subnet.clone(), family);
                    let Some(raw) = self.rack_sets.get(&key) else {
                        continue;
                    };
                    let ips = match carved.by_rack.get(&key) {
                        Some(fixed) => raw.difference(fixed),
                        None => raw.clone(),
                    };
                    if ips.is_empty() {
                        continue;
                    }
                    let Some(template) = templates.get(&(range.subnet.as_str(), family)) else {
                        continue;
                    };
                    let name =
                        object_name(&[&self.topology, &range.subnet, &rack.name, family_suffix(family)]);
                    let mut pool = template.pool(
                        name.clone(),
                        &ips,
                        &[(LABEL_RACK, &rack.name)],
                        format!("spec.racks[{r}].ranges[{k}]"),
                    );
                    // Reserved addresses stay in `ips` (the allocator subtracts every SpiderReservedIP), but
                    // excluded ones are written out so the pool says what it never hands out.
                    if let Some(excluded) = self
                        .subnets
                        .get(&range.subnet)
                        .and_then(|p| p.excluded.get(&family))
                    {
                        pool.spec.exclude_ips = excluded.intersection(&ips).to_strings();
                    }
                    pool.spec.node_affinity = Some(rack.node_selector.clone());
                    if let Some((namespaces, multus)) = users.get(range.subnet.as_str()) {
                        pool.spec.namespace_name = namespaces.clone();
                        pool.spec.multus_name = multus.clone();
                    }
                    out.pools.push(pool);
                    out.names
                        .entry((range.subnet.clone(), family))
                        .or_default()
                        .push(name);
                }
            }
        }
        out
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
