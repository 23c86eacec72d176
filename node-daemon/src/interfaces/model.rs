//! What the planner works on: the node's links as observed, the interfaces a task asks for, and the
//! operations that turn one into the other.

use std::fmt;

use spiderpool_netlink::BondOption;
use spiderpool_netlink::bond::mode_name;
use spiderpool_schema::SpiderInterfaceTaskSpec;

/// A link of the node as the planner sees it (names, not indexes: indexes are the shell's business).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLink {
    /// The kernel's index; ownership records it so a link of the same name made by someone else is
    /// never taken for ours.
    pub index: u32,
    pub name: String,
    pub kind: HostKind,
    /// The bond (or bridge) this link is a member of.
    pub master: Option<String>,
    /// The link this one is stacked on (a VLAN's parent).
    pub parent: Option<String>,
    /// Administratively up.
    pub up: bool,
    /// Layer-1 carrier.
    pub carrier: bool,
    pub mtu: u32,
}

/// The kinds of link the planner tells apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// A bond, with its mode number and every option the kernel reports.
    Bond { mode: u8, options: Vec<BondOption> },
    /// An 802.1q VLAN with its tag (the parent is [`HostLink::parent`]).
    Vlan { id: u16 },
    /// Anything else: `None` for a physical device, else the kernel's kind (`dummy`, `veth`, ...).
    Other(Option<String>),
}

impl HostKind {
    /// A short name for messages: `bond`, `vlan`, `device`, `dummy`, ...
    pub fn describe(&self) -> &str {
        match self {
            HostKind::Bond { .. } => "bond",
            HostKind::Vlan { .. } => "vlan",
            HostKind::Other(None) => "device",
            HostKind::Other(Some(kind)) => kind,
        }
    }
}

/// A bond a task asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredBond {
    pub name: String,
    pub mode: u8,
    /// Only the options the task names; the kernel's defaults stand for the rest.
    pub options: Vec<BondOption>,
    pub members: Vec<String>,
    pub mtu: Option<u32>,
}

/// A VLAN sub-interface a task asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredVlan {
    pub name: String,
    pub parent: String,
    pub id: u16,
    pub mtu: Option<u32>,
}

/// Everything one task asks for, read and checked.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Desired {
    pub bonds: Vec<DesiredBond>,
    pub vlans: Vec<DesiredVlan>,
}

impl Desired {
    /// Reads a task's spec; every option, id and MTU the node cannot use is reported at once, with
    /// its spec path.
    pub fn from_spec(spec: &SpiderInterfaceTaskSpec) -> Result<Desired, Vec<String>> {
        let mut problems = Vec::new();
        let mut desired = Desired::default();
        let mtu = |problems: &mut Vec<String>, path: String, mtu: Option<i32>| {
            mtu.and_then(|m| match u32::try_from(m) {
                Ok(m) if (68..=65535).contains(&m) => Some(m),
                _ => {
                    problems.push(format!("{path}: {m} is not an MTU (68-65535)"));
                    None
                }
            })
        };
        for (i, bond) in spec.bonds.iter().enumerate() {
            let path = format!("spec.bonds[{i}]");
            let mut options = Vec::new();
            for (key, value) in &bond.options {
                match BondOption::parse(key, value) {
                    Ok(option) => options.push(option),
                    Err(e) => problems.push(format!("{path}.options.{key}: {e}")),
                }
            }
            options.sort();
            desired.bonds.push(DesiredBond {
                name: bond.name.clone(),
                mode: u8::try_from(bond.mode.number()).unwrap_or(u8::MAX),
                options,
                members: bond.interfaces.clone(),
                mtu: mtu(&mut problems, format!("{path}.mtu"), bond.mtu),
            });
        }
        for (i, vlan) in spec.vlans.iter().enumerate() {
            let path = format!("spec.vlans[{i}]");
            let id = match u16::try_from(vlan.id) {
                Ok(id) if (1..=4094).contains(&id) => id,
                _ => {
                    problems.push(format!("{path}.id: {} is not a VLAN id (1-4094)", vlan.id));
                    continue;
                }
            };
            desired.vlans.push(DesiredVlan {
                name: vlan.interface_name(),
                parent: vlan.parent.clone(),
                id,
                mtu: mtu(&mut problems, format!("{path}.mtu"), vlan.mtu),
            });
        }
        if problems.is_empty() {
            Ok(desired)
        } else {
            Err(problems)
        }
    }

    /// Every interface name the task defines (bonds and VLANs), not the NICs it uses.
    pub fn defined_names(&self) -> impl Iterator<Item = &str> {
        self.bonds
            .iter()
            .map(|b| b.name.as_str())
            .chain(self.vlans.iter().map(|v| v.name.as_str()))
    }

    /// Every interface name the task mentions: its bonds, VLANs, bond members and VLAN parents.
    pub fn named(&self) -> impl Iterator<Item = &str> {
        self.defined_names()
            .chain(
                self.bonds
                    .iter()
                    .flat_map(|b| b.members.iter().map(String::as_str)),
            )
            .chain(self.vlans.iter().map(|v| v.parent.as_str()))
    }

    pub fn bond(&self, name: &str) -> Option<&DesiredBond> {
        self.bonds.iter().find(|b| b.name == name)
    }
}

/// One change to the node's links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkOp {
    /// Create a bond (down, no members).
    CreateBond {
        name: String,
        mode: u8,
        options: Vec<BondOption>,
    },
    /// Change a bond's mode (when `Some`) and options.
    SetBond {
        name: String,
        mode: Option<u8>,
        options: Vec<BondOption>,
    },
    /// Create a VLAN on `parent` (down).
    CreateVlan {
        name: String,
        parent: String,
        id: u16,
    },
    /// Make `member` (down) a member of `bond`.
    Enslave {
        member: String,
        bond: String,
    },
    /// Take `member` out of its bond (it stays down).
    Release {
        member: String,
    },
    SetDown {
        name: String,
    },
    SetUp {
        name: String,
    },
    SetMtu {
        name: String,
        mtu: u32,
    },
    /// Delete a link (a bond releases its members; VLANs on it go with it).
    Delete {
        name: String,
    },
}

impl LinkOp {
    /// The link the operation changes.
    pub fn target(&self) -> &str {
        match self {
            LinkOp::CreateBond { name, .. }
            | LinkOp::SetBond { name, .. }
            | LinkOp::CreateVlan { name, .. }
            | LinkOp::SetDown { name }
            | LinkOp::SetUp { name }
            | LinkOp::SetMtu { name, .. }
            | LinkOp::Delete { name } => name,
            LinkOp::Enslave { member, .. } | LinkOp::Release { member } => member,
        }
    }
}

impl fmt::Display for LinkOp {
    /// As an `ip link` command would say it, for logs, Events and status messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options = |options: &[BondOption]| {
            options
                .iter()
                .map(|o| format!(" {} {}", o.name, o.value_text()))
                .collect::<String>()
        };
        match self {
            LinkOp::CreateBond {
                name,
                mode,
                options: o,
            } => {
                write!(f, "add {name} type bond mode {}{}", mode_name(*mode), options(o))
            }
            LinkOp::SetBond {
                name,
                mode,
                options: o,
            } => {
                let mode = mode
                    .map(|m| format!(" mode {}", mode_name(m)))
                    .unwrap_or_default();
                write!(f, "set {name} type bond{mode}{}", options(o))
            }
            LinkOp::CreateVlan { name, parent, id } => {
                write!(f, "add link {parent} name {name} type vlan id {id}")
            }
            LinkOp::Enslave { member, bond } => write!(f, "set {member} master {bond}"),
            LinkOp::Release { member } => write!(f, "set {member} nomaster"),
            LinkOp::SetDown { name } => write!(f, "set {name} down"),
            LinkOp::SetUp { name } => write!(f, "set {name} up"),
            LinkOp::SetMtu { name, mtu } => write!(f, "set {name} mtu {mtu}"),
            LinkOp::Delete { name } => write!(f, "del {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use spiderpool_schema::SpiderInterfaceTask;

    use super::*;

    fn spec(yaml: &str) -> SpiderInterfaceTaskSpec {
        let task: SpiderInterfaceTask = serde_saphyr::from_str(&format!(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderInterfaceTask\nmetadata: {{name: t}}\nspec:\n{yaml}"
        ))
        .unwrap();
        task.spec
    }

    #[test]
    fn a_task_is_read_with_its_defaults() {
        let desired = Desired::from_spec(&spec(
            "  nodeName: n1\n  bonds:\n  - {name: bond0, interfaces: [ens1, ens2], mode: 802.3ad, options: {lacp_rate: fast, miimon: '100'}, mtu: 9000}\n  vlans:\n  - {parent: bond0, id: 200}\n  - {parent: ens3, id: 10, name: storage, mtu: 1500}\n",
        ))
        .unwrap();
        assert_eq!(desired.bonds[0].mode, 4);
        assert_eq!(desired.bonds[0].mtu, Some(9000));
        let options: Vec<String> = desired.bonds[0].options.iter().map(ToString::to_string).collect();
        assert_eq!(options, ["lacp_rate=fast", "miimon=100"]);
        assert_eq!(desired.vlans[0].name, "bond0.200");
        assert_eq!(desired.vlans[1].name, "storage");
        let named: Vec<&str> = desired.named().collect();
        assert_eq!(
            named,
            ["bond0", "bond0.200", "storage", "ens1", "ens2", "bond0", "ens3"]
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let problems = Desired::from_spec(&spec(
            "  nodeName: n1\n  bonds:\n  - {name: bond0, interfaces: [ens1], options: {lacp_rate: medium, speed: '1'}, mtu: 20}\n  vlans:\n  - {parent: bond0, id: 5000}\n",
        ))
        .unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].starts_with("spec.bonds[0].options.lacp_rate: bonding option `lacp_rate`"));
        assert!(problems[1].starts_with("spec.bonds[0].options.speed: `speed` is not a bonding option"));
        assert_eq!(problems[2], "spec.bonds[0].mtu: 20 is not an MTU (68-65535)");
        assert_eq!(problems[3], "spec.vlans[0].id: 5000 is not a VLAN id (1-4094)");
    }

    #[test]
    fn operations_read_like_ip_link() {
        let op = LinkOp::CreateBond {
            name: "bond0".into(),
            mode: 4,
            options: vec![BondOption::parse("lacp_rate", "1").unwrap()],
        };
        assert_eq!(op.to_string(), "add bond0 type bond mode 802.3ad lacp_rate fast");
        assert_eq!(
            LinkOp::CreateVlan {
                name: "bond0.200".into(),
                parent: "bond0".into(),
                id: 200
            }
            .to_string(),
            "add link bond0 name bond0.200 type vlan id 200"
        );
        assert_eq!(
            LinkOp::Enslave {
                member: "ens1".into(),
                bond: "bond0".into()
            }
            .target(),
            "ens1"
        );
    }
}
