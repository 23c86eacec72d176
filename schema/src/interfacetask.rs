//! `SpiderInterfaceTask` (short name `sit`): the bonds and VLAN sub-interfaces one node must have.
//!
//! The operator writes one task per (SpiderNetwork, node) by expanding the per-rack templates the
//! topology compiler renders against the live node list; the node daemon on that node carries the task
//! out and reports what happened in `status`. Keeping the task a separate, per-node object (instead of
//! every daemon reading the whole topology) means a daemon watches only its own object, a failure on
//! one node is visible by name (`kubectl get sit`), and a rollout can be followed node by node.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::ippool::is_dns1123_subdomain;
use crate::validation::{Problem, Problems, Validate};

/// Longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_INTERFACE_NAME_LEN: usize = 15;

/// The bonds and VLAN sub-interfaces one node must have.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderInterfaceTask",
    plural = "spiderinterfacetasks",
    shortname = "sit",
    category = "spiderpool",
    status = "SpiderInterfaceTaskStatus",
    derive = "PartialEq",
    derive = "Default",
    // Each node daemon watches only its own tasks (`--field-selector spec.nodeName=<node>`).
    selectable = ".spec.nodeName",
    doc = "Bonds and VLAN sub-interfaces one node must have; generated from a SpiderNetwork and carried out by the node daemon.",
    printcolumn(
        name = "NODE",
        type_ = "string",
        json_path = ".spec.nodeName",
        description = "Node the task is for"
    ),
    printcolumn(
        name = "PHASE",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Applying, Applied, Failed or RolledBack"
    ),
    printcolumn(
        name = "REASON",
        type_ = "string",
        json_path = ".status.reason",
        description = "Why the task is in its phase"
    ),
    printcolumn(
        name = "MESSAGE",
        type_ = "string",
        json_path = ".status.message",
        description = "Why the task is not applied",
        priority = 10
    ),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct SpiderInterfaceTaskSpec {
    /// Name of the node that must carry the task out. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("nodeName is immutable"))]
    #[schemars(length(min = 1, max = 253))]
    pub node_name: String,

    /// Bonds to ensure on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub bonds: Vec<Bond>,

    /// VLAN sub-interfaces to ensure on the node (on an uplink or on a bond of `bonds`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 512))]
    pub vlans: Vec<VlanInterface>,

    /// What the node daemon checks after applying, besides every interface being up (and bonds
    /// having their members and carrier): a failed check rolls the change back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<TaskProbe>,
}

/// Checks after applying a task.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskProbe {
    /// Gateways that must answer ARP (IPv4) or neighbour solicitation (IPv6) on an interface of the
    /// task. The node asks from no address of its own (an ARP probe, RFC 5227), so it changes no
    /// neighbour table anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub gateways: Vec<GatewayProbe>,
    /// How long every check may take, in seconds (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub timeout_seconds: Option<i32>,
}

/// A gateway that must answer on one interface.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayProbe {
    /// The interface to ask on: a bond or VLAN of this task.
    #[schemars(length(min = 1, max = 15))]
    pub interface: String,
    /// The gateway's IPv4 or IPv6 address.
    #[schemars(length(min = 2, max = 45))]
    pub address: String,
}

/// A bond (link aggregation) made of uplink NICs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bond {
    /// Interface name of the bond, e.g. `bond0` (at most 15 characters).
    #[schemars(length(min = 1, max = 15))]
    pub name: String,
    /// The NICs enslaved to the bond, e.g. `[ens1f0, ens1f1]`.
    #[schemars(length(min = 1, max = 16))]
    pub interfaces: Vec<String>,
    /// Bonding mode, by its kernel name. `802.3ad` is LACP; `active-backup` needs nothing from the switch.
    #[serde(default)]
    pub mode: BondMode,
    /// Bonding driver options by their kernel names, e.g. `miimon: "100"`, `lacp_rate: fast`,
    /// `xmit_hash_policy: layer3+4`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// MTU of the bond; left as the kernel sets it when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 68, max = 65535))]
    pub mtu: Option<i32>,
}

/// Linux bonding modes, by the names the kernel and iproute2 use.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    schemars::JsonSchema,
)]
pub enum BondMode {
    // Round-robin (mode 0).
    #[serde(rename = "balance-rr")]
    BalanceRr,
    // One active slave, the others stand by (mode 1).
    #[default]
    #[serde(rename = "active-backup")]
    ActiveBackup,
    // Transmit by hash (mode 2).
    #[serde(rename = "balance-xor")]
    BalanceXor,
    // Everything on every slave (mode 3).
    #[serde(rename = "broadcast")]
    Broadcast,
    // IEEE 802.3ad dynamic link aggregation, LACP (mode 4).
    #[serde(rename = "802.3ad")]
    Lacp,
    // Adaptive transmit load balancing (mode 5).
    #[serde(rename = "balance-tlb")]
    BalanceTlb,
    // Adaptive load balancing (mode 6).
    #[serde(rename = "balance-alb")]
    BalanceAlb,
}

impl BondMode {
    /// The kernel's number for the mode, which upstream's `ifacer` and SpiderMultusConfig use.
    pub fn number(self) -> i32 {
        match self {
            BondMode::BalanceRr => 0,
            BondMode::ActiveBackup => 1,
            BondMode::BalanceXor => 2,
            BondMode::Broadcast => 3,
            BondMode::Lacp => 4,
            BondMode::BalanceTlb => 5,
            BondMode::BalanceAlb => 6,
        }
    }

    /// The kernel's name for the mode.
    pub fn kernel_name(self) -> &'static str {
        match self {
            BondMode::BalanceRr => "balance-rr",
            BondMode::ActiveBackup => "active-backup",
            BondMode::BalanceXor => "balance-xor",
            BondMode::Broadcast => "broadcast",
            BondMode::Lacp => "802.3ad",
            BondMode::BalanceTlb => "balance-tlb",
            BondMode::BalanceAlb => "balance-alb",
        }
    }
}

impl Bond {
    /// Options in upstream `ifacer`'s string form, `k1=v1;k2=v2`, sorted by key (deterministic output).
    pub fn options_string(&self) -> String {
        self.options
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// A VLAN sub-interface (802.1q) on an uplink NIC or a bond.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VlanInterface {
    /// The interface the VLAN is tagged on: an uplink NIC or a bond name.
    #[schemars(length(min = 1, max = 15))]
    pub parent: String,
    /// VLAN id, 1-4094.
    #[schemars(range(min = 1, max = 4094))]
    pub id: i32,
    /// Interface name; `<parent>.<id>` when absent (what upstream's `ifacer` creates, so both agree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 15))]
    pub name: Option<String>,
    /// MTU of the VLAN interface; inherits the parent's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 68, max = 65535))]
    pub mtu: Option<i32>,
}

impl VlanInterface {
    /// The interface name the node will have: `name`, else `<parent>.<id>`.
    pub fn interface_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}.{}", self.parent, self.id))
    }
}

/// What the node daemon reports about a task.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpiderInterfaceTaskStatus {
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Pending` (not yet tried), `Applying` (changing the node now), `Applied` (every interface is as
    /// specified), `Failed` (see `reason` and `message`; nothing was changed), `RolledBack` (applying or
    /// the checks after it failed, and the daemon restored what was there before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TaskPhase>,
    /// Why the task is in its phase, one CamelCase word (`Applied`, `ProbeFailed`, `Refused`,
    /// `Conflict`, `InterfaceMissing`, `AgentRestarted`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why the task is not applied, when it is not, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When `phase` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// State of each interface of the task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceState>,
    /// `Applied` and friends, with observedGeneration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::common::conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// Phase of a node interface task.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum TaskPhase {
    // The daemon has not acted on this generation yet.
    Pending,
    // The daemon is changing the node now.
    Applying,
    // Every interface is as the spec says.
    Applied,
    // The task cannot be applied; `message` says why. Nothing was changed.
    Failed,
    // Applying, or the checks after it, failed and the daemon restored the previous state.
    RolledBack,
}

/// State of one interface of a task on the node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceState {
    /// Interface name.
    pub name: String,
    /// `bond` or `vlan`.
    pub kind: String,
    /// Whether it is as specified.
    pub ready: bool,
    /// Why not, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Validate for SpiderInterfaceTask {
    fn problems(&self) -> Vec<Problem> {
        let mut problems = Problems::new();
        if !is_dns1123_subdomain(&self.spec.node_name) {
            problems.push(
                "spec.nodeName",
                format!("`{}` is not a node name", self.spec.node_name),
            );
        }
        let vlans: Vec<VlanEntry<'_>> = self
            .spec
            .vlans
            .iter()
            .enumerate()
            .map(|(i, vlan)| VlanEntry::declared(vlan, format!("spec.vlans[{i}]")))
            .collect();
        check_interfaces(&mut problems, "spec", &self.spec.bonds, &vlans, &[]);
        if let Some(probe) = &self.spec.probe {
            check_probe(&mut problems, &self.spec, probe);
        }
        problems.into_vec()
    }
}

fn check_probe(problems: &mut Problems, spec: &SpiderInterfaceTaskSpec, probe: &TaskProbe) {
    for (i, gateway) in probe.gateways.iter().enumerate() {
        let here = format!("spec.probe.gateways[{i}]");
        let known = spec.bonds.iter().any(|b| b.name == gateway.interface)
            || spec.vlans.iter().any(|v| v.interface_name() == gateway.interface);
        if !known {
            problems.push(
                format!("{here}.interface"),
                format!("`{}` is not a bond or VLAN of this task", gateway.interface),
            );
        }
        if gateway.address.parse::<std::net::IpAddr>().is_err() {
            problems.push(
                format!("{here}.address"),
                format!("`{}` is not an IP address", gateway.address),
            );
        }
    }
    if let Some(timeout) = probe.timeout_seconds
        && !(1..=300).contains(&timeout)
    {
        problems.push(
            "spec.probe.timeoutSeconds",
            format!("{timeout} is not 1-300 seconds"),
        );
    }
}

/// A VLAN sub-interface to check, with where it comes from.
pub(crate) struct VlanEntry<'a> {
    /// The interface.
    pub vlan: &'a VlanInterface,
    /// The spec path of its definition.
    pub path: String,
    /// Whether `path` is a VLAN entry (problems then name its fields, `<path>.id`) rather than a field
    /// the VLAN is derived from (a network's `master`: problems name that field itself).
    pub declared: bool,
}

impl<'a> VlanEntry<'a> {
    /// A VLAN written out at `path`.
    pub fn declared(vlan: &'a VlanInterface, path: String) -> Self {
        VlanEntry {
            vlan,
            path,
            declared: true,
        }
    }

    fn field(&self, name: &str) -> String {
        if self.declared {
            format!("{}.{name}", self.path)
        } else {
            self.path.clone()
        }
    }
}

/// Checks bonds and VLANs that go on one node together: names valid and unique, bond modes/options sane,
/// a NIC in at most one bond, VLAN parents known (an uplink or a bond of the same set, when uplinks are
/// given), and no VLAN id twice on one parent.
pub(crate) fn check_interfaces(
    problems: &mut Problems,
    path: &str,
    bonds: &[Bond],
    vlans: &[VlanEntry<'_>],
    uplinks: &[String],
) {
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut claim = |problems: &mut Problems, name: &str, here: String| {
        if let Some(first) = names.get(name) {
            problems.push(here, format!("interface `{name}` is already defined at {first}"));
        } else {
            names.insert(name.to_string(), here);
        }
    };
    for (i, uplink) in uplinks.iter().enumerate() {
        let here = format!("{path}.uplinks[{i}]");
        check_interface_name(problems, &here, uplink);
        claim(problems, uplink, here);
    }
    let mut enslaved: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, bond) in bonds.iter().enumerate() {
        let here = format!("{path}.bonds[{i}]");
        check_interface_name(problems, &format!("{here}.name"), &bond.name);
        claim(problems, &bond.name, format!("{here}.name"));
        if bond.interfaces.is_empty() {
            problems.push(
                format!("{here}.interfaces"),
                "a bond needs at least one interface",
            );
        }
        for (j, nic) in bond.interfaces.iter().enumerate() {
            check_interface_name(problems, &format!("{here}.interfaces[{j}]"), nic);
            if nic == &bond.name {
                problems.push(format!("{here}.interfaces[{j}]"), "a bond cannot enslave itself");
            }
            if let Some(other) = enslaved.insert(nic, &bond.name)
                && other != bond.name
            {
                problems.push(
                    format!("{here}.interfaces[{j}]"),
                    format!("`{nic}` is already enslaved to bond `{other}`"),
                );
            } else if bond.interfaces[..j].contains(nic) {
                problems.push(
                    format!("{here}.interfaces[{j}]"),
                    format!("`{nic}` is listed twice"),
                );
            }
        }
        for key in bond.options.keys() {
            if key.is_empty()
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                problems.push(
                    format!("{here}.options"),
                    format!("`{key}` is not a bonding option name (lower case and `_`, e.g. `miimon`)"),
                );
            }
        }
        if let Some(mtu) = bond.mtu
            && !(68..=65535).contains(&mtu)
        {
            problems.push(format!("{here}.mtu"), format!("{mtu} is not an MTU (68-65535)"));
        }
    }
    let bond_names: Vec<&str> = bonds.iter().map(|b| b.name.as_str()).collect();
    let mut tags: BTreeMap<(&str, i32), String> = BTreeMap::new();
    for entry in vlans {
        let vlan = entry.vlan;
        if !(1..=4094).contains(&vlan.id) {
            problems.push(
                entry.field("id"),
                format!("{} is not a VLAN id (1-4094)", vlan.id),
            );
        }
        check_interface_name(problems, &entry.field("parent"), &vlan.parent);
        if !uplinks.is_empty()
            && !uplinks.contains(&vlan.parent)
            && !bond_names.contains(&vlan.parent.as_str())
        {
            problems.push(
                entry.field("parent"),
                format!("`{}` is neither an uplink nor a bond of this rack", vlan.parent),
            );
        }
        let name = vlan.interface_name();
        check_interface_name(problems, &entry.field("name"), &name);
        claim(problems, &name, entry.field("name"));
        if let Some(first) = tags.get(&(vlan.parent.as_str(), vlan.id)) {
            problems.push(
                entry.field("id"),
                format!(
                    "VLAN {} on `{}` is already defined at {first}",
                    vlan.id, vlan.parent
                ),
            );
        } else {
            tags.insert((vlan.parent.as_str(), vlan.id), entry.path.clone());
        }
        if let Some(mtu) = vlan.mtu
            && !(68..=65535).contains(&mtu)
        {
            problems.push(entry.field("mtu"), format!("{mtu} is not an MTU (68-65535)"));
        }
    }
}

/// Linux interface names: 1-15 bytes, no `/`, `:` or white space, not `.` or `..`.
pub(crate) fn check_interface_name(problems: &mut Problems, path: &str, name: &str) {
    let bad_char = name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || !c.is_ascii());
    if name.is_empty() || name.len() > MAX_INTERFACE_NAME_LEN || bad_char || name == "." || name == ".." {
        problems.push(
            path,
            format!("`{name}` is not a Linux interface name (1-15 ASCII characters, no `/`, `:` or spaces)"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(yaml: &str) -> SpiderInterfaceTask {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn a_good_task_is_valid() {
        let t = task(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderInterfaceTask\nmetadata: {name: dc-node1}\nspec:\n  nodeName: node1\n  bonds:\n  - {name: bond0, interfaces: [ens1f0, ens1f1], mode: 802.3ad, options: {miimon: '100'}}\n  vlans:\n  - {parent: bond0, id: 200}\n",
        );
        assert_eq!(t.validate(), Ok(()));
        assert_eq!(t.spec.bonds[0].mode.number(), 4);
        assert_eq!(t.spec.bonds[0].options_string(), "miimon=100");
        assert_eq!(t.spec.vlans[0].interface_name(), "bond0.200");
    }

    #[test]
    fn probes_name_interfaces_of_the_task_and_addresses() {
        let t = task(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderInterfaceTask\nmetadata: {name: x}\nspec:\n  nodeName: node1\n  vlans:\n  - {parent: ens1, id: 200}\n  probe:\n    gateways:\n    - {interface: ens1.200, address: 10.20.0.1}\n    - {interface: ens1.300, address: 10.30.0.1}\n    - {interface: ens1.200, address: gw}\n    timeoutSeconds: 0\n",
        );
        let paths: Vec<String> = t.validate().unwrap_err().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            vec![
                "spec.probe.gateways[1].interface",
                "spec.probe.gateways[2].address",
                "spec.probe.timeoutSeconds",
            ]
        );
    }

    #[test]
    fn every_interface_problem_is_found() {
        let t = task(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderInterfaceTask\nmetadata: {name: x}\nspec:\n  nodeName: Node_1\n  bonds:\n  - {name: bond0, interfaces: [eth0, eth1]}\n  - {name: bond1, interfaces: [eth1, bond1]}\n  vlans:\n  - {parent: bond0, id: 5000}\n  - {parent: bond0, id: 10, name: averyveryverylongname}\n  - {parent: bond0, id: 10}\n",
        );
        let paths: Vec<String> = t.validate().unwrap_err().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            vec![
                "spec.nodeName",
                "spec.bonds[1].interfaces[0]",
                "spec.bonds[1].interfaces[1]",
                "spec.vlans[0].id",
                "spec.vlans[1].name",
                "spec.vlans[2].id",
            ]
        );
    }
}
