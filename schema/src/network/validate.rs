//! The checks of a SpiderNetwork that relate entries to each other: references, overlaps, VLAN reuse,
//! conflicting racks, fixed addresses. Field-level rules are garde's and the CRD schema's.

use std::collections::{BTreeMap, BTreeSet};

use spiderpool_ipmath::{self as ipmath, IpFamily, IpSet};

use super::attach::NetworkLayout;
use super::{
    NetworkType, ParsedSubnet, ParsedTopology, SpiderNetworkSpec, TopologySubnet, family_key,
    selectors_disjoint,
};
use crate::common::{check_canonical_cidr, check_ip, check_ip_list, check_routes};
use crate::interfacetask::Bond;
use crate::ippool::{is_dns1123_label, selector_is_empty};
use crate::validation::Problems;

impl SpiderNetworkSpec {
    /// Parses every subnet, reporting problems; subnets that fail to parse are absent from the map.
    fn parse_subnets(&self, problems: &mut Problems) -> BTreeMap<String, ParsedSubnet> {
        let mut parsed = BTreeMap::new();
        for (i, subnet) in self.subnets.iter().enumerate() {
            let mut entry = ParsedSubnet {
                index: i,
                nets: BTreeMap::new(),
                gateways: BTreeMap::new(),
                reserved: BTreeMap::new(),
                excluded: BTreeMap::new(),
            };
            for (family, block) in subnet.families() {
                let path = format!("spec.subnets[{i}].{}", family_key(family));
                let Some(net) = check_canonical_cidr(problems, &format!("{path}.cidr"), &block.cidr) else {
                    continue;
                };
                if IpFamily::of(&net.addr()) != family {
                    problems.push(
                        format!("{path}.cidr"),
                        format!(
                            "`{}` is not {family}; put it under {}",
                            block.cidr,
                            family_key(IpFamily::of(&net.addr()))
                        ),
                    );
                    continue;
                }
                entry.nets.insert(family, net);
                if let Some(gw) = &block.gateway
                    && let Some(ip) =
                        check_ip(problems, &format!("{path}.gateway"), Some(family), gw, Some(&net))
                {
                    entry.gateways.insert(family, ip);
                }
                check_routes(
                    problems,
                    &format!("{path}.routes"),
                    Some(family),
                    &block.routes,
                    Some(&net),
                );
                if let Some(set) = check_ip_list(
                    problems,
                    &format!("{path}.reservedIPs"),
                    family,
                    &block.reserved_ips,
                    Some(&net),
                ) {
                    entry.reserved.insert(family, set);
                }
                if let Some(set) = check_ip_list(
                    problems,
                    &format!("{path}.excludeIPs"),
                    family,
                    &block.exclude_ips,
                    Some(&net),
                ) {
                    entry.excluded.insert(family, set);
                }
            }
            parsed.insert(subnet.name.clone(), entry);
        }
        parsed
    }

    /// Checks that need more than one field (references, overlaps, VLAN reuse, conflicting racks),
    /// keeping what was parsed on the way.
    pub(super) fn check_cross_field(&self, problems: &mut Problems) -> ParsedTopology {
        duplicate_names(
            problems,
            "spec.subnets",
            self.subnets.iter().map(|s| s.name.as_str()),
        );
        duplicate_names(problems, "spec.racks", self.racks.iter().map(|r| r.name.as_str()));
        duplicate_names(
            problems,
            "spec.networks",
            self.networks.iter().map(|n| n.name.as_str()),
        );
        duplicate_names(problems, "spec.apps", self.apps.iter().map(|a| a.name.as_str()));
        let subnets = self.parse_subnets(problems);
        self.check_subnet_overlaps(problems, &subnets);
        // The rack ranges (parsing every address list) and the racks and networks (layouts, interface
        // names) do not depend on each other and are about half the time each on a 200-rack topology,
        // so they are checked on two threads; their problems are joined in spec order (ranges first).
        let (rack_sets, layouts) = std::thread::scope(|scope| {
            let networks = scope.spawn(|| {
                let mut problems = Problems::new();
                self.check_racks(&mut problems);
                let layouts: Vec<NetworkLayout> = (0..self.networks.len()).map(|n| self.layout(n)).collect();
                self.check_networks(&mut problems, &layouts);
                self.check_interface_names(&mut problems, &layouts);
                (layouts, problems)
            });
            let rack_sets = self.check_rack_ranges(problems, &subnets);
            let (layouts, network_problems) = networks
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            problems.extend(network_problems.into_vec());
            (rack_sets, layouts)
        });
        self.check_apps(problems, &rack_sets, &layouts);
        ParsedTopology {
            subnets,
            rack_sets,
            layouts,
        }
    }

    fn check_subnet_overlaps(&self, problems: &mut Problems, subnets: &BTreeMap<String, ParsedSubnet>) {
        let list: Vec<&ParsedSubnet> = {
            let mut v: Vec<&ParsedSubnet> = subnets.values().collect();
            v.sort_by_key(|s| s.index);
            v
        };
        for (a_pos, a) in list.iter().enumerate() {
            for b in &list[a_pos + 1..] {
                for (family, net_a) in &a.nets {
                    if let Some(net_b) = b.nets.get(family)
                        && ipmath::nets_overlap(net_a, net_b)
                    {
                        problems.push(
                            format!("spec.subnets[{}].{}.cidr", b.index, family_key(*family)),
                            format!(
                                "{net_b} overlaps {net_a} of subnet `{}`; subnets must be disjoint",
                                self.subnets[a.index].name
                            ),
                        );
                    }
                }
            }
        }
    }

    /// Parses every rack range and checks it against its subnet and the other racks. Returns the parsed
    /// sets keyed by (rack index, subnet name, family).
    fn check_rack_ranges(
        &self,
        problems: &mut Problems,
        subnets: &BTreeMap<String, ParsedSubnet>,
    ) -> BTreeMap<(usize, String, IpFamily), IpSet> {
        let mut sets: BTreeMap<(usize, String, IpFamily), IpSet> = BTreeMap::new();
        for (r, rack) in self.racks.iter().enumerate() {
            let mut seen_subnets = BTreeSet::new();
            for (k, range) in rack.ranges.iter().enumerate() {
                let path = format!("spec.racks[{r}].ranges[{k}]");
                if !seen_subnets.insert(range.subnet.as_str()) {
                    problems.push(
                        format!("{path}.subnet"),
                        format!(
                            "subnet `{}` already has a range in this rack; merge the two",
                            range.subnet
                        ),
                    );
                    continue;
                }
                let Some(subnet) = self.subnets.iter().find(|s| s.name == range.subnet) else {
                    problems.push(
                        format!("{path}.subnet"),
                        format!("no subnet is named `{}`", range.subnet),
                    );
                    continue;
                };
                let parsed = subnets.get(&range.subnet);
                if range.ipv4.is_empty() && range.ipv6.is_empty() {
                    problems.push(path.clone(), "give ipv4 and/or ipv6 addresses for this subnet");
                }
                for family in [IpFamily::V4, IpFamily::V6] {
                    let items = range.items(family);
                    if items.is_empty() {
                        if subnet.families().any(|(f, _)| f == family)
                            && !(range.ipv4.is_empty() && range.ipv6.is_empty())
                        {
                            problems.push(
                                format!("{path}.{}", family_key(family)),
                                format!(
                                    "subnet `{}` is dual-stack; give this rack {family} addresses too",
                                    subnet.name
                                ),
                            );
                        }
                        continue;
                    }
                    let field = format!("{path}.{}", family_key(family));
                    if !subnet.families().any(|(f, _)| f == family) {
                        problems.push(
                            field,
                            format!("subnet `{}` has no {family} side; remove these addresses or add {} to the subnet", subnet.name, family_key(family)),
                        );
                        continue;
                    }
                    let net = parsed.and_then(|p| p.nets.get(&family));
                    let Some(set) = check_ip_list(problems, &field, family, items, net) else {
                        continue;
                    };
                    if let Some(gw) = parsed.and_then(|p| p.gateways.get(&family))
                        && set.contains(gw)
                    {
                        problems.push(
                            field.clone(),
                            format!("includes the subnet's gateway {gw}; pods must never be given it"),
                        );
                    }
                    sets.insert((r, range.subnet.clone(), family), set);
                }
            }
        }
        self.check_rack_overlaps(problems, &sets);
        sets
    }

    /// Racks must hand out disjoint addresses of a subnet. A sweep over the ranges sorted by start finds
    /// every overlapping pair in O(n log n) (a pairwise comparison is quadratic in racks x subnets, which
    /// is seconds for a 200-rack data center).
    fn check_rack_overlaps(
        &self,
        problems: &mut Problems,
        sets: &BTreeMap<(usize, String, IpFamily), IpSet>,
    ) {
        // (subnet, family) -> (first address, last address, rack index) of every interval.
        type Intervals = Vec<(u128, u128, usize)>;
        let mut by_subnet: BTreeMap<(&str, IpFamily), Intervals> = BTreeMap::new();
        for ((rack, subnet, family), set) in sets {
            let intervals = by_subnet.entry((subnet.as_str(), *family)).or_default();
            for range in set.ranges() {
                intervals.push((
                    ipmath::ip_to_u128(&range.start()),
                    ipmath::ip_to_u128(&range.end()),
                    *rack,
                ));
            }
        }
        let mut pairs: BTreeSet<(usize, usize, String, IpFamily)> = BTreeSet::new();
        for ((subnet, family), mut intervals) in by_subnet {
            intervals.sort_unstable();
            // Intervals seen so far that may still overlap what comes next: (end, rack).
            let mut open: Vec<(u128, usize)> = Vec::new();
            for (start, end, rack) in intervals {
                open.retain(|(open_end, _)| *open_end >= start);
                for (_, other) in &open {
                    if *other != rack {
                        pairs.insert(((*other).min(rack), (*other).max(rack), subnet.to_string(), family));
                    }
                }
                open.push((end, rack));
            }
        }
        for (a, b, subnet, family) in pairs {
            let (Some(set_a), Some(set_b)) = (
                sets.get(&(a, subnet.clone(), family)),
                sets.get(&(b, subnet.clone(), family)),
            ) else {
                continue;
            };
            let k = self.racks[b]
                .ranges
                .iter()
                .position(|r| r.subnet == subnet)
                .unwrap_or_default();
            problems.push(
                format!("spec.racks[{b}].ranges[{k}].{}", family_key(family)),
                format!(
                    "{} overlap the range of rack `{}`; racks must hand out disjoint addresses",
                    set_b.intersection(set_a).to_strings().join(", "),
                    self.racks[a].name
                ),
            );
        }
    }

    fn check_racks(&self, problems: &mut Problems) {
        for (r, rack) in self.racks.iter().enumerate() {
            let path = format!("spec.racks[{r}]");
            if selector_is_empty(&rack.node_selector) {
                problems.push(
                    format!("{path}.nodeSelector"),
                    "must select something: an empty selector matches every node",
                );
            }
        }
        // Two racks that may share a node must agree on what every shared interface name is.
        let with_bonds: Vec<usize> = (0..self.racks.len())
            .filter(|r| !self.racks[*r].bonds.is_empty())
            .collect();
        for (pos, &a) in with_bonds.iter().enumerate() {
            let rack_a = &self.racks[a];
            for &b in &with_bonds[pos + 1..] {
                let rack_b = &self.racks[b];
                if selectors_disjoint(&rack_a.node_selector, &rack_b.node_selector) {
                    continue;
                }
                for (j, bond_b) in rack_b.bonds.iter().enumerate() {
                    let clash = rack_a.bonds.iter().find(|bond_a| {
                        (bond_a.name == bond_b.name && *bond_a != bond_b)
                            || (bond_a.name != bond_b.name
                                && bond_a
                                    .interfaces
                                    .iter()
                                    .any(|nic| bond_b.interfaces.contains(nic)))
                    });
                    if let Some(bond_a) = clash {
                        let conflict = if bond_a.name == bond_b.name {
                            bond_difference(bond_a, bond_b)
                        } else {
                            let nic = bond_a
                                .interfaces
                                .iter()
                                .find(|nic| bond_b.interfaces.contains(nic))
                                .cloned()
                                .unwrap_or_default();
                            format!(
                                "`{nic}` would be enslaved to `{}` and to `{}`",
                                bond_a.name, bond_b.name
                            )
                        };
                        problems.push(
                            format!("spec.racks[{b}].bonds[{j}]"),
                            format!(
                                "a node can match both rack `{}` and rack `{}` (their nodeSelectors are not disjoint), and their bonds conflict: {conflict}; make the selectors exclusive or the bonds identical",
                                rack_a.name, rack_b.name
                            ),
                        );
                    }
                }
            }
        }
    }

    fn check_networks(&self, problems: &mut Problems, layouts: &[NetworkLayout]) {
        // (rack index, master interface, vlan) -> (subnet, network index), for "VLAN reused for two
        // subnets on one uplink".
        let mut vlan_use: BTreeMap<(usize, String, i32), (String, usize)> = BTreeMap::new();
        for (n, (network, layout)) in self.networks.iter().zip(layouts).enumerate() {
            let path = format!("spec.networks[{n}]");
            self.check_network_subnets(problems, n, layout);
            for (i, ns) in network.namespaces.iter().enumerate() {
                if !is_dns1123_label(ns) {
                    problems.push(
                        format!("{path}.namespaces[{i}]"),
                        format!("`{ns}` is not a namespace name"),
                    );
                } else if network.namespaces[..i].contains(ns) {
                    problems.push(
                        format!("{path}.namespaces[{i}]"),
                        format!("`{ns}` is listed twice"),
                    );
                }
            }
            let type_fields = [
                (
                    "sriovResourceName",
                    network.sriov_resource_name.is_some(),
                    NetworkType::Sriov,
                ),
                ("ovsBridge", network.ovs_bridge.is_some(), NetworkType::Ovs),
                (
                    "customConfig",
                    network.custom_config.is_some(),
                    NetworkType::Custom,
                ),
            ];
            for (field, set, owner) in type_fields {
                if set && network.cni_type != owner {
                    problems.push(
                        format!("{path}.{field}"),
                        format!(
                            "only applies to type `{}`, not `{}`",
                            owner.cni_type(),
                            network.cni_type.cni_type()
                        ),
                    );
                } else if !set && network.cni_type == owner {
                    problems.push(
                        format!("{path}.{field}"),
                        format!("is required for type `{}`", owner.cni_type()),
                    );
                }
            }
            if let Some(config) = &network.custom_config
                && let Err(e) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(config)
            {
                problems.push(
                    format!("{path}.customConfig"),
                    format!("is not a JSON object: {e}"),
                );
            }
            if network.cni_type.carries_vlan() && layout.common_vlan(network).is_none() {
                problems.push(
                    format!("{path}.vlan"),
                    format!(
                        "the racks of this `{}` network tag it with different VLANs (their subnets' VLANs differ), but its configuration carries one VLAN for every node; set the network's vlan",
                        network.cni_type.cni_type()
                    ),
                );
            }
            if !network.cni_type.needs_master() {
                if network.master.is_some() {
                    problems.push(
                        format!("{path}.master"),
                        format!(
                            "only applies to macvlan and ipvlan, not `{}`",
                            network.cni_type.cni_type()
                        ),
                    );
                }
                if network.node_interface.is_some() {
                    problems.push(
                        format!("{path}.nodeInterface"),
                        format!(
                            "only applies to macvlan and ipvlan, not `{}`",
                            network.cni_type.cni_type()
                        ),
                    );
                }
                continue;
            }
            if network.master.is_none()
                && (layout.racks.is_empty() || layout.racks.iter().any(|a| a.master.is_none()))
            {
                problems.push(
                    format!("{path}.master"),
                    format!(
                        "is required for type `{}`: the uplink or bond pods attach to (unless every rack serving the network names its own in `masters`)",
                        network.cni_type.cni_type()
                    ),
                );
            }
            if let Some(master) = &network.master
                && !self.racks.iter().any(|rack| rack.defines_interface(master))
            {
                problems.push(
                    format!("{path}.master"),
                    format!("no rack defines an uplink or bond named `{master}`; add it to the racks' uplinks or bonds"),
                );
            }
            for attachment in &layout.racks {
                let rack = &self.racks[attachment.rack];
                let Some(master) = &attachment.master else {
                    continue;
                };
                if !rack.defines_interface(master) {
                    // A master the network names for all racks and no rack defines is reported once above.
                    if network.master.as_deref() != Some(master.as_str())
                        || self.racks.iter().any(|rack| rack.defines_interface(master))
                    {
                        problems.push(
                            attachment.master_path.clone(),
                            format!(
                                "rack `{}` hands out addresses of subnet `{}` but has no uplink or bond named `{master}`",
                                rack.name, attachment.subnet
                            ),
                        );
                    }
                    continue;
                }
                if attachment.vlan == 0 {
                    if network.node_interface.is_some() {
                        problems.push(
                            format!("{path}.nodeInterface"),
                            format!(
                                "rack `{}` reaches the network untagged on `{master}`, and an untagged interface cannot be given a second name; tag the network with a VLAN on every rack, or drop nodeInterface and use the same uplink or bond name everywhere",
                                rack.name
                            ),
                        );
                    }
                    continue;
                }
                let key = (attachment.rack, master.clone(), attachment.vlan);
                match vlan_use.get(&key) {
                    Some((other_subnet, other)) if other_subnet != &attachment.subnet => problems.push(
                        format!("{path}.vlan"),
                        format!(
                            "VLAN {} on `{master}` in rack `{}` already carries subnet `{other_subnet}` (network `{}`); one VLAN cannot carry two subnets",
                            attachment.vlan, rack.name, self.networks[*other].name
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        vlan_use.insert(key, (attachment.subnet.clone(), n));
                    }
                }
            }
            if network.node_interface.is_none()
                && layout.racks.iter().all(|a| a.master.is_some())
                && layout.node_link().is_none()
            {
                let ways: Vec<String> = layout
                    .racks
                    .iter()
                    .map(|a| {
                        let master = a.master.as_deref().unwrap_or_default();
                        let name = if a.vlan == 0 {
                            master.to_string()
                        } else {
                            format!("{master}.{}", a.vlan)
                        };
                        format!("{}: {name}", self.racks[a.rack].name)
                    })
                    .collect();
                let fix = if layout.racks.iter().all(|a| a.vlan != 0) {
                    "set nodeInterface (each rack's interface task then creates the network's VLAN under that name), or use the same uplink or bond name and VLAN in every rack"
                } else {
                    "an untagged interface cannot be given a second name, so use the same uplink or bond name in every rack, or tag the network with a VLAN and set nodeInterface (each rack's interface task then creates the VLAN under that name)"
                };
                problems.push(
                    path.clone(),
                    format!(
                        "the racks reach this network through different interfaces ({}), but its NetworkAttachmentDefinition names one master for every node; {fix}",
                        ways.join(", ")
                    ),
                );
            }
        }
        for (r, rack) in self.racks.iter().enumerate() {
            for network_name in rack.masters.keys() {
                let here = format!("spec.racks[{r}].masters.{network_name}");
                match self.networks.iter().position(|x| &x.name == network_name) {
                    None => problems.push(here, format!("no network is named `{network_name}`")),
                    Some(n) if !self.networks[n].cni_type.needs_master() => problems.push(
                        here,
                        format!(
                            "network `{network_name}` is `{}`, which attaches to no node interface",
                            self.networks[n].cni_type.cni_type()
                        ),
                    ),
                    Some(n) if layouts[n].rack(r).is_none() => problems.push(
                        here,
                        format!("this rack serves none of the subnets of network `{network_name}`"),
                    ),
                    Some(_) => {}
                }
            }
        }
    }

    /// A network names its subnets one way (`subnet`, `subnets` or `subnetRole`), they exist, they have
    /// the same families, and no rack serves two of them.
    fn check_network_subnets(&self, problems: &mut Problems, n: usize, layout: &NetworkLayout) {
        let network = &self.networks[n];
        let path = format!("spec.networks[{n}]");
        let ways = [
            !network.subnet.is_empty(),
            !network.subnets.is_empty(),
            network.subnet_role.is_some(),
        ];
        match ways.iter().filter(|w| **w).count() {
            0 => {
                problems.push(
                    format!("{path}.subnet"),
                    "set subnet, subnets or subnetRole: the subnets the network's addresses come from",
                );
                return;
            }
            1 => {}
            _ => problems.push(path.clone(), "set only one of subnet, subnets and subnetRole"),
        }
        if !network.subnet.is_empty() && !self.subnets.iter().any(|s| s.name == network.subnet) {
            problems.push(
                format!("{path}.subnet"),
                format!("no subnet is named `{}`", network.subnet),
            );
        }
        for (i, name) in network.subnets.iter().enumerate() {
            if !self.subnets.iter().any(|s| &s.name == name) {
                problems.push(
                    format!("{path}.subnets[{i}]"),
                    format!("no subnet is named `{name}`"),
                );
            } else if network.subnets[..i].contains(name) {
                problems.push(
                    format!("{path}.subnets[{i}]"),
                    format!("`{name}` is listed twice"),
                );
            }
        }
        if let Some(role) = &network.subnet_role
            && layout.subnets.is_empty()
        {
            problems.push(
                format!("{path}.subnetRole"),
                format!("no subnet has role `{role}`"),
            );
        }
        let subnets: Vec<&TopologySubnet> = layout
            .subnets
            .iter()
            .filter_map(|name| self.subnets.iter().find(|s| &s.name == name))
            .collect();
        if let Some((first, rest)) = subnets.split_first() {
            let families = |s: &TopologySubnet| s.families().map(|(f, _)| f).collect::<Vec<_>>();
            for other in rest {
                if families(other) != families(first) {
                    problems.push(
                        path.clone(),
                        format!(
                            "subnet `{}` has {} and subnet `{}` has {}; the subnets of one network need the same address families (a pod gets the same families on every rack)",
                            first.name,
                            describe_families(&families(first)),
                            other.name,
                            describe_families(&families(other))
                        ),
                    );
                }
            }
        }
        for attachment in &layout.racks {
            let rack = &self.racks[attachment.rack];
            let served: Vec<&str> = layout
                .subnets
                .iter()
                .filter(|name| rack.ranges.iter().any(|range| &range.subnet == *name))
                .map(String::as_str)
                .collect();
            if served.len() > 1 {
                problems.push(
                    path.clone(),
                    format!(
                        "rack `{}` hands out addresses of {} subnets of this network ({}); a pod on it could get any of them, so a network takes at most one subnet per rack",
                        rack.name,
                        served.len(),
                        served.join(", ")
                    ),
                );
            }
        }
    }

    fn check_apps(
        &self,
        problems: &mut Problems,
        rack_sets: &BTreeMap<(usize, String, IpFamily), IpSet>,
        layouts: &[NetworkLayout],
    ) {
        for (a, app) in self.apps.iter().enumerate() {
            let path = format!("spec.apps[{a}]");
            match (&app.workload, &app.pod_selector) {
                (Some(_), Some(_)) | (None, None) => {
                    problems.push(path.clone(), "set exactly one of workload and podSelector")
                }
                (None, Some(selector)) if selector_is_empty(selector) => problems.push(
                    format!("{path}.podSelector"),
                    "must not be empty: it would bind every pod of the namespace",
                ),
                (Some(w), None) if w.effective_api_version().is_none() => problems.push(
                    format!("{path}.workload.apiVersion"),
                    format!("is required for kind `{}`", w.kind),
                ),
                _ => {}
            }
            let names = app.interface_names();
            for (i, nic) in app.interfaces.iter().enumerate() {
                let here = format!("{path}.interfaces[{i}]");
                if names[..i].contains(&names[i]) {
                    problems.push(
                        format!("{here}.name"),
                        format!("interface `{}` is given twice", names[i]),
                    );
                }
                let Some(n) = self.networks.iter().position(|x| x.name == nic.network) else {
                    problems.push(
                        format!("{here}.network"),
                        format!("no network is named `{}`", nic.network),
                    );
                    continue;
                };
                let (network, layout) = (&self.networks[n], &layouts[n]);
                if !network.namespaces.contains(&app.namespace) {
                    problems.push(
                        format!("{here}.network"),
                        format!(
                            "network `{}` is not offered in namespace `{}`; add the namespace to its namespaces",
                            network.name, app.namespace
                        ),
                    );
                }
                let Some(fixed) = &nic.fixed_ips else { continue };
                if fixed.count.is_none() && fixed.ipv4.is_empty() && fixed.ipv6.is_empty() {
                    problems.push(
                        format!("{here}.fixedIPs"),
                        "set count, or list ipv4/ipv6 addresses",
                    );
                }
                if fixed.count.is_some() && !(fixed.ipv4.is_empty() && fixed.ipv6.is_empty()) {
                    problems.push(
                        format!("{here}.fixedIPs"),
                        "set either count or explicit addresses, not both",
                    );
                }
                for (k, rack_name) in fixed.racks.iter().enumerate() {
                    match self.racks.iter().position(|r| &r.name == rack_name) {
                        None => problems.push(
                            format!("{here}.fixedIPs.racks[{k}]"),
                            format!("no rack is named `{rack_name}`"),
                        ),
                        Some(r) if layout.rack(r).is_none() => problems.push(
                            format!("{here}.fixedIPs.racks[{k}]"),
                            format!(
                                "rack `{rack_name}` has no range in the subnets of network `{}` ({})",
                                network.name,
                                layout.subnets.join(", ")
                            ),
                        ),
                        Some(_) => {}
                    }
                }
                let first_subnet = layout
                    .subnets
                    .first()
                    .and_then(|name| self.subnets.iter().find(|s| &s.name == name));
                for family in [IpFamily::V4, IpFamily::V6] {
                    let items = fixed.items(family);
                    if items.is_empty() {
                        continue;
                    }
                    let field = format!("{here}.fixedIPs.{}", family_key(family));
                    if let Some(subnet) = first_subnet
                        && !subnet.families().any(|(f, _)| f == family)
                    {
                        problems.push(field, format!("network `{}` has no {family} side", network.name));
                        continue;
                    }
                    let Ok(set) = IpSet::parse_list(family, items) else {
                        check_ip_list(problems, &field, family, items, None);
                        continue;
                    };
                    let in_racks = rack_sets
                        .iter()
                        .filter(|((_, s, f), _)| layout.subnets.contains(s) && *f == family)
                        .fold(IpSet::empty(family), |acc, (_, set)| {
                            acc.union(set).unwrap_or(acc)
                        });
                    let outside = set.difference(&in_racks);
                    if !outside.is_empty() {
                        problems.push(
                            field,
                            format!(
                                "{} are not in any rack range of network `{}`'s subnets ({})",
                                outside.to_strings().join(", "),
                                network.name,
                                layout.subnets.join(", ")
                            ),
                        );
                    }
                }
            }
            if let Some(route_nic) = &app.default_route_interface
                && route_nic != "eth0"
                && !names.contains(route_nic)
            {
                problems.push(
                    format!("{path}.defaultRouteInterface"),
                    format!(
                        "`{route_nic}` is not one of this binding's interfaces ({})",
                        names.join(", ")
                    ),
                );
            }
        }
        self.check_explicit_fixed_overlaps(problems);
    }

    /// Two bindings must not claim the same explicit address.
    fn check_explicit_fixed_overlaps(&self, problems: &mut Problems) {
        let mut claimed: Vec<(String, IpSet)> = Vec::new();
        for (a, app) in self.apps.iter().enumerate() {
            for (i, nic) in app.interfaces.iter().enumerate() {
                let Some(fixed) = &nic.fixed_ips else { continue };
                for family in [IpFamily::V4, IpFamily::V6] {
                    let Ok(set) = IpSet::parse_list(family, fixed.items(family)) else {
                        continue;
                    };
                    if set.is_empty() {
                        continue;
                    }
                    let here = format!("spec.apps[{a}].interfaces[{i}].fixedIPs.{}", family_key(family));
                    for (other, other_set) in &claimed {
                        if set.overlaps(other_set) {
                            problems.push(
                                here.clone(),
                                format!(
                                    "{} are already fixed for {other}",
                                    set.intersection(other_set).to_strings().join(", ")
                                ),
                            );
                        }
                    }
                    claimed.push((format!("app `{}`", app.name), set));
                }
            }
        }
    }
}

fn describe_families(families: &[IpFamily]) -> String {
    match families {
        [IpFamily::V4] => "IPv4 only".to_string(),
        [IpFamily::V6] => "IPv6 only".to_string(),
        _ => "IPv4 and IPv6".to_string(),
    }
}

/// What differs between two definitions of one bond, for a person.
fn bond_difference(a: &Bond, b: &Bond) -> String {
    let mut parts = Vec::new();
    if a.interfaces != b.interfaces {
        parts.push(format!("interfaces {:?} vs {:?}", a.interfaces, b.interfaces));
    }
    if a.mode != b.mode {
        parts.push(format!(
            "mode {} vs {}",
            a.mode.kernel_name(),
            b.mode.kernel_name()
        ));
    }
    if a.options != b.options {
        parts.push(format!(
            "options `{}` vs `{}`",
            a.options_string(),
            b.options_string()
        ));
    }
    if a.mtu != b.mtu {
        parts.push(format!("mtu {:?} vs {:?}", a.mtu, b.mtu));
    }
    format!("`{}` has {}", a.name, parts.join(", "))
}

fn duplicate_names<'a>(problems: &mut Problems, path: &str, names: impl Iterator<Item = &'a str>) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, name) in names.enumerate() {
        if let Some(first) = seen.get(name) {
            problems.push(
                format!("{path}[{i}].name"),
                format!("`{name}` is already the name of {path}[{first}]; names must be unique"),
            );
        } else {
            seen.insert(name, i);
        }
    }
}
