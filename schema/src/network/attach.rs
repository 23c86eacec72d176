//! How each network reaches each rack: which of its subnets the rack serves, over which uplink or bond
//! and VLAN, and the one interface name the network's NetworkAttachmentDefinition can give as master on
//! every node. Validation and the compiler both read the topology through [`NetworkLayout`], so what is
//! checked is what is rendered.
//!
//! Why a name shared by every node: a NetworkAttachmentDefinition is one object per namespace, used by
//! pods on every node, and it names one `master`. When every rack reaches the network the same way
//! (same uplink or bond name, same VLAN) that is simply `<master>` or `<master>.<vlan>`, which
//! upstream's `ifacer` and our interface tasks both create. When racks differ (ens2f0 on old racks,
//! bond0 on new ones; or a VLAN per rack), the network names the interface itself (`nodeInterface`) and
//! each rack's interface task creates its VLAN sub-interface under that name: Linux lets a VLAN device
//! be named freely, so `fabric0` is VLAN 100 on ens2f0 in one rack and on bond0 in another, and pods
//! everywhere attach to `fabric0`. An untagged NIC cannot be renamed per network (and altnames are not
//! created by anything here), so differing untagged uplinks are refused with a message saying so.

use super::{Network, NetworkType, SpiderNetworkSpec, TopologySubnet};

/// Where one network's addresses come from and how each rack reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkLayout {
    /// The network's subnets, by name, in the order of `spec.subnets`.
    pub subnets: Vec<String>,
    /// Every rack serving one of those subnets, in the order of `spec.racks`.
    pub racks: Vec<RackAttachment>,
    /// [`NetworkLayout::node_link`], worked out once: it reads every rack, and it is asked for each
    /// rack of each network.
    link: Option<NodeLink>,
}

/// How the nodes of one rack reach one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RackAttachment {
    /// Index in `spec.racks`.
    pub rack: usize,
    /// The network's subnet this rack serves (the first, if it wrongly serves several).
    pub subnet: String,
    /// The uplink or bond carrying the network on this rack (macvlan and ipvlan only): the rack's
    /// `masters` entry, else the network's `master`.
    pub master: Option<String>,
    /// The spec path `master` comes from, for problems.
    pub master_path: String,
    /// The VLAN the network is tagged with on this rack (0: untagged): the network's, else the subnet's.
    pub vlan: i32,
}

/// The interface pods of a network attach to, the same name on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeLink {
    /// Every rack reaches the network through `parent` (and VLAN `vlan` when not 0): the interface is
    /// `<parent>` or `<parent>.<vlan>`.
    Shared {
        /// The uplink or bond.
        parent: String,
        /// The VLAN (0: untagged).
        vlan: i32,
    },
    /// The network's `nodeInterface`: each rack's task creates the network's VLAN under this name.
    Named(String),
}

impl NodeLink {
    /// The interface name, as the NetworkAttachmentDefinition's master.
    pub fn interface_name(&self) -> String {
        match self {
            NodeLink::Shared { parent, vlan: 0 } => parent.clone(),
            NodeLink::Shared { parent, vlan } => format!("{parent}.{vlan}"),
            NodeLink::Named(name) => name.clone(),
        }
    }
}

impl SpiderNetworkSpec {
    /// The subnets a network draws from: `subnet`, else `subnets`, else every subnet of `subnetRole`.
    /// Names that match no subnet are left out (validation reports them).
    pub fn network_subnets(&self, network: &Network) -> Vec<&TopologySubnet> {
        if !network.subnet.is_empty() {
            return self.subnets.iter().filter(|s| s.name == network.subnet).collect();
        }
        if let Some(role) = &network.subnet_role {
            return self
                .subnets
                .iter()
                .filter(|s| s.role.as_deref() == Some(role.as_str()))
                .collect();
        }
        self.subnets
            .iter()
            .filter(|s| network.subnets.contains(&s.name))
            .collect()
    }

    /// How the network at `spec.networks[n]` reaches each rack.
    pub fn layout(&self, n: usize) -> NetworkLayout {
        let Some(network) = self.networks.get(n) else {
            return NetworkLayout::default();
        };
        let subnets = self.network_subnets(network);
        let mut racks = Vec::new();
        for (r, rack) in self.racks.iter().enumerate() {
            let Some(subnet) = subnets
                .iter()
                .find(|s| rack.ranges.iter().any(|range| range.subnet == s.name))
            else {
                continue;
            };
            let (master, master_path) = if !network.cni_type.needs_master() {
                (None, String::new())
            } else if let Some(own) = rack.masters.get(&network.name) {
                (
                    Some(own.clone()),
                    format!("spec.racks[{r}].masters.{}", network.name),
                )
            } else {
                (network.master.clone(), format!("spec.networks[{n}].master"))
            };
            racks.push(RackAttachment {
                rack: r,
                subnet: subnet.name.clone(),
                master,
                master_path,
                vlan: network.vlan_id(Some(subnet)),
            });
        }
        let link = node_link(network, &racks);
        NetworkLayout {
            subnets: subnets.iter().map(|s| s.name.clone()).collect(),
            racks,
            link,
        }
    }
}

/// The interface every node's pods attach to, from the network and how each rack reaches it.
fn node_link(network: &Network, racks: &[RackAttachment]) -> Option<NodeLink> {
    if !network.cni_type.needs_master() {
        return None;
    }
    if let Some(name) = &network.node_interface {
        return Some(NodeLink::Named(name.clone()));
    }
    let mut ways = racks
        .iter()
        .filter_map(|a| a.master.as_ref().map(|m| (m, a.vlan)));
    match ways.next() {
        // No rack serves the network: its own master and VLAN say it all.
        None => network.master.clone().map(|parent| NodeLink::Shared {
            parent,
            vlan: network.vlan.unwrap_or(0),
        }),
        Some((parent, vlan)) => ways
            .all(|(p, v)| p == parent && v == vlan)
            .then(|| NodeLink::Shared {
                parent: parent.clone(),
                vlan,
            }),
    }
}

impl NetworkLayout {
    /// The interface every node's pods attach to, for networks that attach to a node interface
    /// (macvlan, ipvlan); `None` for the others, and when the racks reach the network differently and
    /// the network names no `nodeInterface` (validation reports that).
    pub fn node_link(&self) -> Option<NodeLink> {
        self.link.clone()
    }

    /// The one VLAN of the network, when every rack has the same (SR-IOV and OVS networks carry one
    /// VLAN in their configuration); `None` when racks differ.
    pub fn common_vlan(&self, network: &Network) -> Option<i32> {
        let mut vlans = self.racks.iter().map(|a| a.vlan);
        match vlans.next() {
            None => Some(network.vlan.unwrap_or(0)),
            Some(first) => vlans.all(|v| v == first).then_some(first),
        }
    }

    /// The attachment of rack `r`, if it serves the network.
    pub fn rack(&self, r: usize) -> Option<&RackAttachment> {
        // `racks` is in the order of `spec.racks`, so sorted by index.
        self.racks
            .binary_search_by_key(&r, |a| a.rack)
            .ok()
            .and_then(|i| self.racks.get(i))
    }
}

impl NetworkType {
    /// Whether the configuration carries a VLAN id that must be the same on every node (SR-IOV, OVS).
    pub fn carries_vlan(self) -> bool {
        matches!(self, NetworkType::Sriov | NetworkType::Ovs)
    }
}
