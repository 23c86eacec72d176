//! When the SpiderInterfaceTasks of two topologies cannot both hold on one node: they define the
//! same interface differently (a bond with other members, mode, options or MTU; a VLAN with another
//! parent, tag or MTU), put one NIC into two different bonds, or give one VLAN tag on one parent two
//! names. The operator reports such a conflict on both SpiderNetworks and the node daemon applies
//! neither task's conflicting part; both read this one rule.

use std::collections::BTreeMap;

use crate::interfacetask::{Bond, SpiderInterfaceTaskSpec, VlanInterface};

/// Two tasks that cannot both hold on their node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskConflict {
    /// The tasks, by the name given ([`conflicts`]'s input order: `first` came first).
    pub first: String,
    pub second: String,
    /// The interface (or NIC) they disagree on.
    pub interface: String,
    /// How they disagree, naming both tasks.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Definition<'a> {
    Bond(&'a Bond),
    Vlan(&'a VlanInterface),
}

impl Definition<'_> {
    fn same(&self, other: &Definition<'_>) -> bool {
        match (self, other) {
            (Definition::Bond(a), Definition::Bond(b)) => {
                let mut members_a = a.interfaces.clone();
                let mut members_b = b.interfaces.clone();
                members_a.sort();
                members_b.sort();
                members_a == members_b && a.mode == b.mode && a.options == b.options && a.mtu == b.mtu
            }
            (Definition::Vlan(a), Definition::Vlan(b)) => {
                a.parent == b.parent && a.id == b.id && a.mtu == b.mtu
            }
            _ => false,
        }
    }

    fn describe(&self) -> String {
        match self {
            Definition::Bond(b) => {
                let mut text = format!(
                    "bond {} of [{}] mode {}",
                    b.name,
                    b.interfaces.join(", "),
                    b.mode.kernel_name()
                );
                if !b.options.is_empty() {
                    text.push_str(&format!(" options {}", b.options_string()));
                }
                if let Some(mtu) = b.mtu {
                    text.push_str(&format!(" mtu {mtu}"));
                }
                text
            }
            Definition::Vlan(v) => {
                let mut text = format!("VLAN {} on {}", v.id, v.parent);
                if let Some(mtu) = v.mtu {
                    text.push_str(&format!(" mtu {mtu}"));
                }
                text
            }
        }
    }
}

/// Every conflict among tasks for one node, each pair and interface once, in input order.
pub fn conflicts(tasks: &[(&str, &SpiderInterfaceTaskSpec)]) -> Vec<TaskConflict> {
    let mut found = Vec::new();
    // interface name -> (task, definition); NIC -> (task, bond); (parent, tag) -> (task, name)
    let mut defined: BTreeMap<String, (&str, Definition<'_>)> = BTreeMap::new();
    let mut members: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    let mut tags: BTreeMap<(&str, i32), (&str, String)> = BTreeMap::new();
    for (task, spec) in tasks {
        let mut report = |first: &str, interface: &str, message: String| {
            let conflict = TaskConflict {
                first: first.to_owned(),
                second: (*task).to_owned(),
                interface: interface.to_owned(),
                message,
            };
            if !found.contains(&conflict) {
                found.push(conflict);
            }
        };
        let definitions = spec
            .bonds
            .iter()
            .map(|b| (b.name.clone(), Definition::Bond(b)))
            .chain(
                spec.vlans
                    .iter()
                    .map(|v| (v.interface_name(), Definition::Vlan(v))),
            );
        for (name, definition) in definitions {
            match defined.get(&name) {
                Some((other, theirs)) if other != task && !theirs.same(&definition) => report(
                    other,
                    &name,
                    format!(
                        "{name} is {} in {other} but {} in {task}",
                        theirs.describe(),
                        definition.describe()
                    ),
                ),
                Some(_) => {}
                None => {
                    defined.insert(name, (task, definition));
                }
            }
        }
        for bond in &spec.bonds {
            for nic in &bond.interfaces {
                match members.get(nic.as_str()) {
                    Some((other, their_bond)) if other != task && *their_bond != bond.name => report(
                        other,
                        nic,
                        format!(
                            "{nic} is a member of {their_bond} in {other} but of {} in {task}",
                            bond.name
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        members.insert(nic, (task, &bond.name));
                    }
                }
            }
        }
        for vlan in &spec.vlans {
            let name = vlan.interface_name();
            match tags.get(&(vlan.parent.as_str(), vlan.id)) {
                Some((other, their_name)) if other != task && *their_name != name => report(
                    other,
                    &name,
                    format!(
                        "VLAN {} on {} is named {their_name} in {other} but {name} in {task}",
                        vlan.id, vlan.parent
                    ),
                ),
                Some(_) => {}
                None => {
                    tags.insert((vlan.parent.as_str(), vlan.id), (task, name));
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> SpiderInterfaceTaskSpec {
        serde_saphyr::from_str(&format!("nodeName: n1\n{yaml}")).unwrap()
    }

    #[test]
    fn the_same_definition_twice_is_no_conflict() {
        let a = spec(
            "bonds: [{name: bond0, interfaces: [ens1, ens2], mode: 802.3ad}]\nvlans: [{parent: bond0, id: 200}]\n",
        );
        let b = spec(
            "bonds: [{name: bond0, interfaces: [ens2, ens1], mode: 802.3ad}]\nvlans: [{parent: bond0, id: 300}]\n",
        );
        assert!(conflicts(&[("dc1-n1", &a), ("dc2-n1", &b)]).is_empty());
    }

    #[test]
    fn different_definitions_members_and_tag_names_conflict() {
        let a = spec(
            "bonds: [{name: bond0, interfaces: [ens1, ens2], mode: 802.3ad}]\nvlans: [{parent: ens3, id: 10}, {parent: ens4, id: 20, name: v20}]\n",
        );
        let b = spec(
            "bonds: [{name: bond0, interfaces: [ens1, ens2]}, {name: bond1, interfaces: [ens5, ens2]}]\nvlans: [{parent: ens3, id: 10, mtu: 1400}, {parent: ens4, id: 20}]\n",
        );
        let found = conflicts(&[("dc1-n1", &a), ("dc2-n1", &b)]);
        let messages: Vec<&str> = found.iter().map(|c| c.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "bond0 is bond bond0 of [ens1, ens2] mode 802.3ad in dc1-n1 but bond bond0 of [ens1, ens2] mode active-backup in dc2-n1",
                "ens3.10 is VLAN 10 on ens3 in dc1-n1 but VLAN 10 on ens3 mtu 1400 in dc2-n1",
                "ens2 is a member of bond0 in dc1-n1 but of bond1 in dc2-n1",
                "VLAN 20 on ens4 is named v20 in dc1-n1 but ens4.20 in dc2-n1",
            ]
        );
        assert!(found.iter().all(|c| c.first == "dc1-n1" && c.second == "dc2-n1"));
    }
}
