//! Every interface name a topology implies, checked once, here: the uplinks, bonds (and their NICs)
//! and VLANs each rack declares, the VLAN sub-interfaces its networks need (`<master>.<vlan>`, or the
//! network's `nodeInterface`), the masters networks and racks name, and the pod-side interface names of
//! app bindings. Linux allows 15 characters; a name the node daemon or a CNI plugin would fail on is a
//! problem at the field it comes from, before anything is applied.
//!
//! [`SpiderNetworkSpec::rack_vlans`] is also what the compiler renders as the rack's interface task
//! template, so the VLANs checked are exactly the VLANs created.

use crate::interfacetask::{VlanEntry, VlanInterface, check_interface_name, check_interfaces};
use crate::validation::Problems;

use super::attach::{NetworkLayout, NodeLink};
use super::{AppBinding, SpiderNetworkSpec};

/// A VLAN sub-interface a rack's nodes must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RackVlan {
    /// The interface.
    pub vlan: VlanInterface,
    /// The spec path it comes from: the rack's VLAN entry, or the field of the network it is derived
    /// from (its `master`, the rack's `masters` entry, or `nodeInterface`).
    pub path: String,
    /// Whether the rack declares it (`spec.racks[r].vlans`) rather than a network needing it.
    pub declared: bool,
}

impl SpiderNetworkSpec {
    /// The VLAN sub-interfaces the nodes of rack `r` must have, each with the spec path it comes from:
    /// those the rack declares, then those its networks need. A network's VLAN that the rack already
    /// declares (same parent and id, and the same name when the network names it) is not repeated.
    /// `layouts[n]` is [`Self::layout`] of `spec.networks[n]`.
    pub fn rack_vlans(&self, r: usize, layouts: &[NetworkLayout]) -> Vec<RackVlan> {
        let Some(rack) = self.racks.get(r) else {
            return Vec::new();
        };
        let mut vlans: Vec<RackVlan> = rack
            .vlans
            .iter()
            .enumerate()
            .map(|(i, vlan)| RackVlan {
                vlan: vlan.clone(),
                path: format!("spec.racks[{r}].vlans[{i}]"),
                declared: true,
            })
            .collect();
        for (n, layout) in layouts.iter().enumerate() {
            let Some(attachment) = layout.rack(r) else {
                continue;
            };
            let Some(master) = &attachment.master else {
                continue;
            };
            // A master the rack does not define, or a VLAN id out of range, is reported where it is
            // written; a VLAN interface made of it would only repeat that problem.
            if !(1..=4094).contains(&attachment.vlan) || !rack.defines_interface(master) {
                continue;
            }
            let (name, path) = match layout.node_link() {
                Some(NodeLink::Named(name)) => (Some(name), format!("spec.networks[{n}].nodeInterface")),
                _ => (None, attachment.master_path.clone()),
            };
            let wanted = VlanInterface {
                parent: master.clone(),
                id: attachment.vlan,
                name,
                mtu: None,
            };
            let covered = vlans.iter().any(|v| {
                v.vlan.parent == wanted.parent
                    && v.vlan.id == wanted.id
                    && (wanted.name.is_none() || v.vlan.interface_name() == wanted.interface_name())
            });
            if !covered {
                vlans.push(RackVlan {
                    vlan: wanted,
                    path,
                    declared: false,
                });
            }
        }
        vlans
    }

    /// Checks every interface name of the topology (see the module docs).
    pub(super) fn check_interface_names(&self, problems: &mut Problems, layouts: &[NetworkLayout]) {
        for (r, rack) in self.racks.iter().enumerate() {
            let vlans = self.rack_vlans(r, layouts);
            let entries: Vec<VlanEntry<'_>> = vlans
                .iter()
                .map(|v| VlanEntry {
                    vlan: &v.vlan,
                    path: v.path.clone(),
                    declared: v.declared,
                })
                .collect();
            check_interfaces(
                problems,
                &format!("spec.racks[{r}]"),
                &rack.bonds,
                &entries,
                &rack.uplinks,
            );
            for (network, master) in &rack.masters {
                check_interface_name(problems, &format!("spec.racks[{r}].masters.{network}"), master);
            }
        }
        for (n, network) in self.networks.iter().enumerate() {
            if let Some(master) = &network.master {
                check_interface_name(problems, &format!("spec.networks[{n}].master"), master);
            }
            if let Some(name) = &network.node_interface {
                check_interface_name(problems, &format!("spec.networks[{n}].nodeInterface"), name);
            }
            // `<master>.<vlan>` is the interface the NAD names: checked here when no rack serves the
            // network (the rack checks above cover it where one does).
            let layout = layouts.get(n);
            if let Some(NodeLink::Shared { parent, vlan }) = layout.and_then(|l| l.node_link())
                && vlan != 0
                && layout.is_some_and(|l| l.racks.is_empty())
                && network.master.as_deref() == Some(parent.as_str())
            {
                check_interface_name(
                    problems,
                    &format!("spec.networks[{n}].master"),
                    &format!("{parent}.{vlan}"),
                );
            }
        }
        for (a, app) in self.apps.iter().enumerate() {
            check_pod_interfaces(problems, a, app);
        }
    }
}

/// The pod-side names of a binding's interfaces (Multus creates them in the pod).
fn check_pod_interfaces(problems: &mut Problems, a: usize, app: &AppBinding) {
    for (i, nic) in app.interfaces.iter().enumerate() {
        if let Some(name) = &nic.name {
            check_interface_name(problems, &format!("spec.apps[{a}].interfaces[{i}].name"), name);
        }
    }
    if let Some(name) = &app.default_route_interface {
        check_interface_name(problems, &format!("spec.apps[{a}].defaultRouteInterface"), name);
    }
}
