//! The topology compiler: one [`SpiderNetwork`] in, every resource it stands for out.
//!
//! Pure and deterministic: no I/O, no clocks, no randomness, no hash-map iteration order. The same input
//! gives byte-identical output, which is what makes `spiderctl render` reviewable in a pull request and
//! its output snapshot-testable.
//!
//! What is rendered here and what is left to the operator:
//! - SpiderReservedIPs, SpiderIPPools, SpiderMultusConfigs and their NetworkAttachmentDefinitions depend
//!   only on the spec, so they are rendered completely (the operator adds owner references, which need
//!   the live object's UID).
//! - Interface tasks depend on which nodes exist and what labels they carry, which the compiler cannot
//!   see. So it renders one [`InterfaceTemplate`] per rack (node selector + bonds + VLANs), and
//!   [`expand_interface_tasks`] turns templates into per-node [`SpiderInterfaceTask`]s against a node
//!   list. The operator calls it with the live nodes on every reconcile; `spiderctl render --nodes` calls
//!   it with a node list from a file. One function, so both agree.
//!
//! Names are derived from spec entry names (never from positions), so renaming or reordering one rack
//! changes only that rack's objects.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Serialize;
use sha2::{Digest, Sha256};
use spiderpool_ipmath::{IpFamily, IpSet};
use spiderpool_schema::common::selector_matches;
use spiderpool_schema::interfacetask::{Bond, VlanInterface};
use spiderpool_schema::labels::{
    ANNOTATION_SOURCE, LABEL_APP, LABEL_IPPOOL_CIDR, LABEL_MANAGED_BY, LABEL_NETWORK, LABEL_POOL_INTERFACE,
    LABEL_RACK, LABEL_SUBNET, LABEL_TOPOLOGY, LABEL_VLAN, MANAGED_BY,
};
use spiderpool_schema::network::{AppBinding, Network, ParsedSubnet, ParsedTopology, family_key};
use spiderpool_schema::validation::{Problem, Problems};
use spiderpool_schema::{
    NetworkAttachmentDefinition, SpiderIPPool, SpiderIPPoolSpec, SpiderInterfaceTask,
    SpiderInterfaceTaskSpec, SpiderMultusConfig, SpiderNetwork, SpiderReservedIP, SpiderReservedIPSpec,
};

use crate::nad::{multus_config_for_network, render_nad};

/// Everything one topology stands for.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Rendered {
    /// Addresses used outside the cluster, per subnet and family.
    #[serde(rename = "reservedIPs")]
    pub reserved_ips: Vec<SpiderReservedIP>,
    /// Rack pools (one per subnet, rack and family) and fixed-address pools (one per binding interface,
    /// rack and family).
    pub ip_pools: Vec<SpiderIPPool>,
    /// One per network and allowed namespace.
    pub multus_configs: Vec<SpiderMultusConfig>,
    /// What each multus config renders to (the same function renders hand-written ones).
    pub network_attachment_definitions: Vec<NetworkAttachmentDefinition>,
    /// One per rack that needs bonds or VLANs; expanded per node by [`expand_interface_tasks`].
    pub interface_templates: Vec<InterfaceTemplate>,
    /// What each app binding asks of its pods (the annotations the pod webhook adds unless the pod sets
    /// its own).
    pub pod_bindings: Vec<PodBinding>,
}

/// The bonds and VLANs every node of one rack must have.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceTemplate {
    /// Rack name.
    pub rack: String,
    /// Nodes the template applies to.
    pub node_selector: LabelSelector,
    /// Bonds to create.
    pub bonds: Vec<Bond>,
    /// VLAN sub-interfaces to create: those the rack declares, then those its networks need.
    pub vlans: Vec<VlanInterface>,
}

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

/// Summary of a rendering, for people (the CLI prints it to stderr).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// `(pool name, addresses it hands out)`.
    pub pools: Vec<(String, u128)>,
    /// Number of SpiderReservedIPs.
    pub reserved_ips: usize,
    /// Number of SpiderMultusConfigs.
    pub multus_configs: usize,
    /// Number of NetworkAttachmentDefinitions.
    pub network_attachment_definitions: usize,
    /// Number of per-rack interface templates.
    pub interface_templates: usize,
}

impl Rendered {
    /// Every Kubernetes object, in apply order (reserved IPs before pools, so no pool hands out a reserved
    /// address even for a moment; configs before their NADs), as JSON with apiVersion and kind.
    pub fn to_documents(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        let mut docs = Vec::new();
        for o in &self.reserved_ips {
            docs.push(serde_json::to_value(o)?);
        }
        for o in &self.ip_pools {
            docs.push(serde_json::to_value(o)?);
        }
        for o in &self.multus_configs {
            docs.push(serde_json::to_value(o)?);
        }
        for o in &self.network_attachment_definitions {
            docs.push(serde_json::to_value(o)?);
        }
        Ok(docs)
    }

    /// Counts and pool sizes.
    pub fn summary(&self) -> Summary {
        Summary {
            pools: self
                .ip_pools
                .iter()
                .map(|p| (p.metadata.name.clone().unwrap_or_default(), pool_size(p)))
                .collect(),
            reserved_ips: self.reserved_ips.len(),
            multus_configs: self.multus_configs.len(),
            network_attachment_definitions: self.network_attachment_definitions.len(),
            interface_templates: self.interface_templates.len(),
        }
    }
}

/// Addresses a pool hands out (`ips` minus `excludeIPs`), as upstream counts `totalIPCount`.
pub fn pool_size(pool: &SpiderIPPool) -> u128 {
    pool.spec.usable_addresses().map_or(0, |set| set.len())
}

/// Validates and compiles one topology. Every problem is reported at once, with its spec path.
pub fn compile(network: &SpiderNetwork) -> Result<Rendered, Vec<Problem>> {
    let parsed = network.check()?;
    let mut problems = Problems::new();
    let ctx = Context::new(network, parsed);
    let carved = ctx.carve_fixed_addresses(&mut problems);
    let rendered = ctx.render(&carved, &mut problems);
    problems.into_result()?;
    Ok(rendered)
}

/// Everything derived from the spec that rendering needs, parsed once.
struct Context<'a> {
    network: &'a SpiderNetwork,
    topology: String,
    subnets: BTreeMap<String, ParsedSubnet>,
    /// (rack index, subnet name, family) -> the addresses the rack's range lists.
    rack_sets: BTreeMap<(usize, String, IpFamily), IpSet>,
    /// (rack index, subnet name, family) -> addresses the rack hands out, minus what is excluded or
    /// reserved and minus the gateway.
    rack_free: BTreeMap<(usize, String, IpFamily), IpSet>,
}

/// Names of the fixed-address pools, looked up by what needs them.
#[derive(Debug, Default)]
struct FixedPoolNames {
    /// (network, namespace, family) -> pools, for the network's multus config.
    by_network: BTreeMap<(String, String, IpFamily), Vec<String>>,
    /// (binding index, interface index) -> family -> pools, for the binding's pod annotations.
    by_interface: BTreeMap<(usize, usize), BTreeMap<IpFamily, Vec<String>>>,
}

/// Fixed addresses set aside for bindings.
#[derive(Debug, Default)]
struct Carved {
    /// (binding index, interface index, rack index, family) -> addresses.
    by_binding: BTreeMap<(usize, usize, usize, IpFamily), IpSet>,
    /// (rack index, subnet name, family) -> every address carved from that rack range.
    by_rack: BTreeMap<(usize, String, IpFamily), IpSet>,
}

impl<'a> Context<'a> {
    fn new(network: &'a SpiderNetwork, parsed: ParsedTopology) -> Self {
        let ParsedTopology { subnets, rack_sets } = parsed;
        let mut rack_free = BTreeMap::new();
        for ((r, subnet, family), set) in &rack_sets {
            let Some(parsed) = subnets.get(subnet) else {
                continue;
            };
            let mut free = set.clone();
            if let Some(excluded) = parsed.excluded.get(family) {
                free = free.difference(excluded);
            }
            if let Some(reserved) = parsed.reserved.get(family) {
                free = free.difference(reserved);
            }
            if let Some(gw) = parsed.gateways.get(family) {
                free = free.difference(&IpSet::from_ip(gw));
            }
            rack_free.insert((*r, subnet.clone(), *family), free);
        }
        Context {
            network,
            topology: network.metadata.name.clone().unwrap_or_default(),
            subnets,
            rack_sets,
            rack_free,
        }
    }

    fn network_named(&self, name: &str) -> Option<&'a Network> {
        self.network.spec.networks.iter().find(|n| n.name == name)
    }

    fn racks_serving(&self, subnet: &str) -> Vec<usize> {
        self.network
            .spec
            .racks
            .iter()
            .enumerate()
            .filter(|(_, rack)| rack.ranges.iter().any(|r| r.subnet == subnet))
            .map(|(r, _)| r)
            .collect()
    }

    /// Sets aside the fixed addresses of every binding: explicit ones first (they are the user's word),
    /// then counted ones.
    ///
    /// Where a counted block goes: each (binding, interface, rack, family) prefers to start at a position
    /// of the rack's range derived from a hash of its identity, and takes the next free addresses from
    /// there (wrapping). Placement thus depends on the binding's own identity, not on its position among
    /// others nor on what others took, so adding, removing or growing one binding does not move the
    /// addresses of the others unless their blocks collide (then the block placed later, in identity
    /// order, moves on to the next free addresses). Blocks
    /// are placed in the order of their identity, so the result never depends on spec order. Explicit
    /// addresses are the way to pin addresses for good.
    fn carve_fixed_addresses(&self, problems: &mut Problems) -> Carved {
        let spec = &self.network.spec;
        let mut carved: BTreeMap<(usize, usize, usize, IpFamily), IpSet> = BTreeMap::new();
        let mut taken: BTreeMap<(usize, String, IpFamily), IpSet> = BTreeMap::new();
        let take = |taken: &mut BTreeMap<(usize, String, IpFamily), IpSet>,
                    key: (usize, String, IpFamily),
                    set: &IpSet| {
            let entry = taken.entry(key.clone()).or_insert_with(|| IpSet::empty(key.2));
            *entry = entry.union(set).unwrap_or_else(|_| entry.clone());
        };

        for (a, app) in spec.apps.iter().enumerate() {
            for (i, nic) in app.interfaces.iter().enumerate() {
                let (Some(fixed), Some(network)) = (&nic.fixed_ips, self.network_named(&nic.network)) else {
                    continue;
                };
                for family in [IpFamily::V4, IpFamily::V6] {
                    let Ok(explicit) = IpSet::parse_list(family, fixed.items(family)) else {
                        continue;
                    };
                    if explicit.is_empty() {
                        continue;
                    }
                    for r in self.racks_serving(&network.subnet) {
                        let key = (r, network.subnet.clone(), family);
                        let Some(free) = self.rack_free.get(&key) else {
                            continue;
                        };
                        let mine = explicit.intersection(free);
                        let excluded = explicit
                            .intersection(&self.raw_rack_set(r, &network.subnet, family))
                            .difference(free);
                        if !excluded.is_empty() {
                            problems.push(
                                format!("spec.apps[{a}].interfaces[{i}].fixedIPs.{}", family_key(family)),
                                format!(
                                    "{} are excluded, reserved or the gateway in subnet `{}`",
                                    excluded.to_strings().join(", "),
                                    network.subnet
                                ),
                            );
                        }
                        if !mine.is_empty() {
                            take(&mut taken, key, &mine);
                            carved.insert((a, i, r, family), mine);
                        }
                    }
                }
            }
        }

        let mut counted: Vec<(String, usize, usize, usize, IpFamily, u128)> = Vec::new();
        for (a, app) in spec.apps.iter().enumerate() {
            let names = app.interface_names();
            for (i, nic) in app.interfaces.iter().enumerate() {
                let (Some(fixed), Some(network)) = (&nic.fixed_ips, self.network_named(&nic.network)) else {
                    continue;
                };
                let Some(count) = fixed.count.and_then(|c| u128::try_from(c).ok()) else {
                    continue;
                };
                let racks: Vec<usize> = if fixed.racks.is_empty() {
                    self.racks_serving(&network.subnet)
                } else {
                    fixed
                        .racks
                        .iter()
                        .filter_map(|name| spec.racks.iter().position(|r| &r.name == name))
                        .collect()
                };
                let Some(parsed) = self.subnets.get(&network.subnet) else {
                    continue;
                };
                for r in racks {
                    for family in parsed.nets.keys() {
                        let identity = format!(
                            "{}/{}/{}/{}/{}",
                            app.namespace,
                            app.name,
                            names[i],
                            spec.racks[r].name,
                            family_key(*family)
                        );
                        counted.push((identity, a, i, r, *family, count));
                    }
                }
            }
        }
        counted.sort();
        for (identity, a, i, r, family, count) in counted {
            let subnet = match self.network_named(&spec.apps[a].interfaces[i].network) {
                Some(n) => n.subnet.clone(),
                None => continue,
            };
            let key = (r, subnet.clone(), family);
            let free = match (self.rack_free.get(&key), taken.get(&key)) {
                (Some(free), Some(used)) => free.difference(used),
                (Some(free), None) => free.clone(),
                (None, _) => IpSet::empty(family),
            };
            if free.len() < count {
                problems.push(
                    format!("spec.apps[{a}].interfaces[{i}].fixedIPs.count"),
                    format!(
                        "asks for {count} {family} addresses in rack `{}` but only {} are free in its range of subnet `{subnet}`",
                        spec.racks[r].name,
                        free.len()
                    ),
                );
                continue;
            }
            // The preferred start is a position in the rack's whole range, not in what is still free, so
            // it does not move when other bindings take or give back addresses.
            let whole = self
                .rack_free
                .get(&key)
                .cloned()
                .unwrap_or_else(|| IpSet::empty(family));
            let start = whole.nth(stable_offset(&identity, whole.len()));
            let block = take_from(&free, start, count);
            take(&mut taken, key, &block);
            carved.insert((a, i, r, family), block);
        }
        Carved {
            by_binding: carved,
            by_rack: taken,
        }
    }

    /// The rack's range as written (before exclusions), for error messages.
    fn raw_rack_set(&self, rack: usize, subnet: &str, family: IpFamily) -> IpSet {
        self.rack_sets
            .get(&(rack, subnet.to_string(), family))
            .cloned()
            .unwrap_or_else(|| IpSet::empty(family))
    }

    fn render(&self, carved: &Carved, problems: &mut Problems) -> Rendered {
        let mut rendered = Rendered {
            reserved_ips: self.render_reserved_ips(),
            ..Rendered::default()
        };
        let fixed_pool_names = self.render_fixed_pools(carved, &mut rendered.ip_pools);
        let rack_pool_names = self.render_rack_pools(carved, &mut rendered.ip_pools);
        for (n, network) in self.network.spec.networks.iter().enumerate() {
            for namespace in &network.namespaces {
                let mut pools: BTreeMap<IpFamily, Vec<String>> = BTreeMap::new();
                for ((net_name, ns, family), names) in &fixed_pool_names.by_network {
                    if net_name == &network.name && ns == namespace {
                        pools.entry(*family).or_default().extend(names.iter().cloned());
                    }
                }
                for ((subnet, family), names) in &rack_pool_names {
                    if subnet == &network.subnet {
                        pools.entry(*family).or_default().extend(names.iter().cloned());
                    }
                }
                let meta = self.meta(
                    &network.name,
                    Some(namespace),
                    &[(LABEL_NETWORK, &network.name)],
                    format!("spec.networks[{n}]"),
                );
                let smc = multus_config_for_network(
                    meta,
                    network,
                    self.subnet_of(network),
                    &self.network.spec.racks,
                    &pools,
                );
                match render_nad(&smc) {
                    Ok(nad) => rendered.network_attachment_definitions.push(nad),
                    Err(e) => problems.push(format!("spec.networks[{n}]"), e.to_string()),
                }
                rendered.multus_configs.push(smc);
            }
        }
        rendered.interface_templates = self.render_interface_templates();
        rendered.pod_bindings = self.render_pod_bindings(&fixed_pool_names, &rendered.multus_configs);
        rendered
    }

    fn subnet_of(&self, network: &Network) -> Option<&'a spiderpool_schema::network::TopologySubnet> {
        self.network
            .spec
            .subnets
            .iter()
            .find(|s| s.name == network.subnet)
    }

    fn meta(
        &self,
        name: &str,
        namespace: Option<&str>,
        labels: &[(&str, &str)],
        source: String,
    ) -> ObjectMeta {
        let mut all = BTreeMap::from([
            (LABEL_TOPOLOGY.to_string(), self.topology.clone()),
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        ]);
        for (k, v) in labels {
            all.insert((*k).to_string(), (*v).to_string());
        }
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: namespace.map(str::to_string),
            labels: Some(all),
            annotations: Some(BTreeMap::from([(ANNOTATION_SOURCE.to_string(), source)])),
            ..ObjectMeta::default()
        }
    }

    fn render_reserved_ips(&self) -> Vec<SpiderReservedIP> {
        let mut out = Vec::new();
        for (s, subnet) in self.network.spec.subnets.iter().enumerate() {
            let Some(parsed) = self.subnets.get(&subnet.name) else {
                continue;
            };
            for (family, set) in &parsed.reserved {
                if set.is_empty() {
                    continue;
                }
                let name = object_name(&[&self.topology, &subnet.name, family_suffix(*family), "reserved"]);
                let meta = self.meta(
                    &name,
                    None,
                    &[(LABEL_SUBNET, &subnet.name)],
                    format!("spec.subnets[{s}].{}.reservedIPs", family_key(*family)),
                );
                let mut obj = SpiderReservedIP::new(&name, SpiderReservedIPSpec::default());
                obj.metadata = meta;
                obj.spec.ip_version = Some(family.as_version());
                obj.spec.ips = set.to_strings();
                out.push(obj);
            }
        }
        out
    }

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
    fn render_fixed_pools(&self, carved: &Carved, pools: &mut Vec<SpiderIPPool>) -> FixedPoolNames {
        let spec = &self.network.spec;
        let mut names = FixedPoolNames::default();
        for ((a, i, r, family), set) in &carved.by_binding {
            let app = &spec.apps[*a];
            let nic = &app.interfaces[*i];
            let Some(network) = self.network_named(&nic.network) else {
                continue;
            };
            let rack = &spec.racks[*r];
            let nic_name = app.interface_names()[*i].clone();
            let Some(mut pool_spec) = self.pool_spec(&network.subnet, *family, set) else {
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
            let mut labels = self.pool_labels(&network.subnet, *family);
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
    fn render_rack_pools(
        &self,
        carved: &Carved,
        pools: &mut Vec<SpiderIPPool>,
    ) -> BTreeMap<(String, IpFamily), Vec<String>> {
        let spec = &self.network.spec;
        let mut names: BTreeMap<(String, IpFamily), Vec<String>> = BTreeMap::new();
        // Who may use each subnet's pools: computed once per subnet, not once per rack range.
        let mut users: BTreeMap<&str, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
        for network in &spec.networks {
            let (namespaces, multus) = users.entry(network.subnet.as_str()).or_default();
            for ns in &network.namespaces {
                namespaces.insert(ns.clone());
                multus.insert(format!("{ns}/{}", network.name));
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

    fn render_interface_templates(&self) -> Vec<InterfaceTemplate> {
        let spec = &self.network.spec;
        let mut templates = Vec::new();
        for rack in &spec.racks {
            let mut vlans = rack.vlans.clone();
            for network in &spec.networks {
                let Some(master) = &network.master else { continue };
                let vlan = network.vlan_id(self.subnet_of(network));
                let serves = rack.ranges.iter().any(|r| r.subnet == network.subnet);
                if vlan == 0 || !serves || !rack.defines_interface(master) {
                    continue;
                }
                if !vlans.iter().any(|v| &v.parent == master && v.id == vlan) {
                    vlans.push(VlanInterface {
                        parent: master.clone(),
                        id: vlan,
                        name: None,
                        mtu: None,
                    });
                }
            }
            if rack.bonds.is_empty() && vlans.is_empty() {
                continue;
            }
            templates.push(InterfaceTemplate {
                rack: rack.name.clone(),
                node_selector: rack.node_selector.clone(),
                bonds: rack.bonds.clone(),
                vlans,
            });
        }
        templates
    }

    fn render_pod_bindings(
        &self,
        fixed: &FixedPoolNames,
        multus_configs: &[SpiderMultusConfig],
    ) -> Vec<PodBinding> {
        let mut out = Vec::new();
        for (a, app) in self.network.spec.apps.iter().enumerate() {
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
            out.push(PodBinding {
                app: app.name.clone(),
                namespace: app.namespace.clone(),
                workload: app.workload.as_ref().map(|w| format!("{}/{}", w.kind, w.name)),
                pod_selector: app.pod_selector.clone(),
                annotations,
                fixed_pools,
            });
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

/// `v4` / `v6` name suffixes.
fn family_suffix(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "v4",
        IpFamily::V6 => "v6",
    }
}

/// Joins name parts with `-`; a result longer than an object name may be (253) is cut and given a hash
/// suffix of the whole, so distinct inputs keep distinct names.
pub fn object_name(parts: &[&str]) -> String {
    let joined = parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("-")
        .to_lowercase();
    if joined.len() <= 253 {
        return joined;
    }
    let digest = hex8(&joined);
    let mut cut = joined[..243].trim_end_matches(['-', '.']).to_string();
    cut.push('-');
    cut.push_str(&digest);
    cut
}

fn hex8(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// A deterministic offset in `0..len` from a text (first 16 bytes of its SHA-256).
fn stable_offset(identity: &str, len: u128) -> u128 {
    if len == 0 {
        return 0;
    }
    let digest = Sha256::digest(identity.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(bytes) % len
}

/// `count` addresses of `free` from `start` upwards, wrapping to the lowest when the top is reached.
fn take_from(free: &IpSet, start: Option<IpAddr>, count: u128) -> IpSet {
    let family = free.family();
    let (Some(start), Some(last)) = (start, free.last()) else {
        return free.take_lowest(count);
    };
    let tail = spiderpool_ipmath::IpRange::new(start, last)
        .map(|r| free.intersection(&IpSet::from_range(&r)))
        .unwrap_or_else(|_| IpSet::empty(family));
    let from_tail = tail.take_lowest(count);
    let rest = count.saturating_sub(from_tail.len());
    let from_head = free.difference(&tail).take_lowest(rest);
    from_tail.union(&from_head).unwrap_or(from_tail)
}

/// Expands per-rack templates into one [`SpiderInterfaceTask`] per node that needs bonds or VLANs. A node
/// matched by several racks gets the union of their interfaces; a conflict (one name, two definitions) is
/// a problem naming the node, reported for all nodes at once.
pub fn expand_interface_tasks(
    network: &SpiderNetwork,
    templates: &[InterfaceTemplate],
    nodes: &[Node],
) -> Result<Vec<SpiderInterfaceTask>, Vec<Problem>> {
    let topology = network.metadata.name.clone().unwrap_or_default();
    let mut problems = Problems::new();
    let mut tasks = Vec::new();
    let mut sorted: Vec<&Node> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for node in sorted {
        let node_name = node.metadata.name.clone().unwrap_or_default();
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let mut bonds: Vec<Bond> = Vec::new();
        let mut vlans: Vec<VlanInterface> = Vec::new();
        // Interface name -> index in `vlans`, so merging racks is not quadratic in VLANs.
        let mut vlan_names: BTreeMap<String, usize> = BTreeMap::new();
        let mut racks: Vec<&str> = Vec::new();
        for template in templates
            .iter()
            .filter(|t| selector_matches(&t.node_selector, &labels))
        {
            racks.push(&template.rack);
            for bond in &template.bonds {
                match bonds.iter().find(|b| b.name == bond.name) {
                    Some(existing) if existing != bond => problems.push(
                        format!("node {node_name}"),
                        format!(
                            "racks {} define bond `{}` differently",
                            racks.join(", "),
                            bond.name
                        ),
                    ),
                    Some(_) => {}
                    None => bonds.push(bond.clone()),
                }
            }
            for vlan in &template.vlans {
                let name = vlan.interface_name();
                match vlan_names.get(&name) {
                    Some(&at) if vlans[at] != *vlan => problems.push(
                        format!("node {node_name}"),
                        format!(
                            "racks {} define VLAN interface `{name}` differently",
                            racks.join(", ")
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        vlan_names.insert(name, vlans.len());
                        vlans.push(vlan.clone());
                    }
                }
            }
        }
        if racks.is_empty() {
            continue;
        }
        let name = object_name(&[&topology, &node_name]);
        let mut task = SpiderInterfaceTask::new(
            &name,
            SpiderInterfaceTaskSpec {
                node_name: node_name.clone(),
                bonds,
                vlans,
            },
        );
        task.metadata.labels = Some(BTreeMap::from([
            (LABEL_TOPOLOGY.to_string(), topology.clone()),
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
            (LABEL_RACK.to_string(), racks.join(".")),
        ]));
        tasks.push(task);
    }
    problems.into_result()?;
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_cut_with_a_hash() {
        let long = "a".repeat(300);
        let name = object_name(&[&long, "b"]);
        assert_eq!(name.len(), 252);
        assert_ne!(object_name(&[&long, "b"]), object_name(&[&long, "c"]));
        assert_eq!(object_name(&["Topo", "", "r1"]), "topo-r1");
    }

    #[test]
    fn carving_wraps_around_the_end() {
        let free = IpSet::parse_list(IpFamily::V4, &["10.0.0.1-10.0.0.10"]).unwrap();
        let block = take_from(&free, free.nth(8), 4);
        assert_eq!(
            block.to_strings(),
            vec!["10.0.0.1-10.0.0.2", "10.0.0.9-10.0.0.10"]
        );
        let holes = IpSet::parse_list(IpFamily::V4, &["10.0.0.1-10.0.0.3", "10.0.0.8-10.0.0.10"]).unwrap();
        let start = "10.0.0.5".parse().ok();
        assert_eq!(
            take_from(&holes, start, 2).to_strings(),
            vec!["10.0.0.8-10.0.0.9"]
        );
        assert_eq!(stable_offset("x", 10), stable_offset("x", 10));
    }
}
