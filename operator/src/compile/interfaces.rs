//! SpiderInterfaceTasks: one template per rack (bonds, declared VLANs, the VLANs its networks need),
//! expanded per node against a node list by [`expand_interface_tasks`] (the operator with the live nodes,
//! `spiderctl render --nodes` with a file; one function, so both agree).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Serialize;
use spiderpool_schema::common::selector_matches;
use spiderpool_schema::interfacetask::{Bond, VlanInterface};
use spiderpool_schema::labels::{LABEL_MANAGED_BY, LABEL_RACK, LABEL_TOPOLOGY, MANAGED_BY};
use spiderpool_schema::validation::{Problem, Problems};
use spiderpool_schema::{SpiderInterfaceTask, SpiderInterfaceTaskSpec, SpiderNetwork};

use super::context::Context;
use super::names::object_name;

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

impl Context<'_> {
    /// One template per rack with bonds or VLANs: exactly the interfaces validation checked
    /// ([`spiderpool_schema::SpiderNetworkSpec::rack_vlans`]).
    pub(super) fn render_interface_templates(&self) -> Vec<InterfaceTemplate> {
        let spec = &self.network.spec;
        let mut templates = Vec::new();
        for (r, rack) in spec.racks.iter().enumerate() {
            let vlans: Vec<VlanInterface> = spec
                .rack_vlans(r, &self.layouts)
                .into_iter()
                .map(|v| v.vlan)
                .collect();
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
                probe: None,
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
