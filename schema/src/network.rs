//! `SpiderNetwork` (short name `snet`): one whole network topology in one object.
//!
//! A network engineer describes subnets, node racks (with their uplinks, bonds, VLANs and per-subnet
//! address ranges), networks (how pods attach: macvlan, ipvlan, SR-IOV, OVS or a custom CNI config) and
//! application bindings (which workloads get which networks, fixed addresses, extra NICs, which NIC holds
//! the default route). The operator compiles it into SpiderIPPools, SpiderReservedIPs,
//! SpiderMultusConfigs (and their NetworkAttachmentDefinitions) and SpiderInterfaceTasks; `spiderctl
//! render` shows exactly that output before anything is applied.
//!
//! The object is cluster-scoped because it owns children in many namespaces (an owner reference from a
//! namespaced child to a cluster-scoped owner is allowed; the reverse is not).

use std::collections::BTreeMap;
use std::net::IpAddr;

use garde::Validate as _;
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use spiderpool_ipmath::{IpFamily, IpSet};

use crate::common::Route;
use crate::interfacetask::{Bond, VlanInterface};
use crate::ippool::is_dns1123_label;
use crate::validation::{Problem, Problems, Validate};

mod attach;
mod interfaces;
mod selectors;
mod status;
mod validate;

pub use attach::{NetworkLayout, NodeLink, RackAttachment};
pub use interfaces::RackVlan;
pub use selectors::selectors_disjoint;
pub use status::{
    AddressCounts, Capacity, CapacityEntry, NodeFailure, NodeRollout, RenderedCounts, SpiderNetworkStatus,
};

/// One network topology: subnets, racks, networks and application bindings.
#[derive(
    CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default, garde::Validate,
)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderNetwork",
    plural = "spidernetworks",
    shortname = "snet",
    category = "spiderpool",
    status = "SpiderNetworkStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "One network topology (subnets, racks, networks, app bindings), compiled by the operator into SpiderIPPools, SpiderMultusConfigs, NetworkAttachmentDefinitions and per-node interface tasks.",
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether everything the topology renders is applied"
    ),
    printcolumn(
        name = "POOLS",
        type_ = "integer",
        json_path = ".status.counts.ipPools",
        description = "SpiderIPPools generated"
    ),
    printcolumn(
        name = "NADS",
        type_ = "integer",
        json_path = ".status.counts.networkAttachmentDefinitions",
        description = "NetworkAttachmentDefinitions generated"
    ),
    printcolumn(
        name = "NODES-READY",
        type_ = "string",
        json_path = ".status.nodes.summary",
        description = "Nodes whose interface task is applied, of those selected"
    ),
    printcolumn(
        name = "CAPACITY-LOW",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"CapacityLow\")].status",
        description = "Whether a range, subnet or app binding is nearly full (see status.capacity)",
        priority = 10
    ),
    printcolumn(
        name = "REASON",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 10
    ),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[garde(allow_unvalidated)]
pub struct SpiderNetworkSpec {
    /// The subnets of the topology (L2 segments or routed prefixes), each IPv4, IPv6 or dual-stack.
    #[schemars(length(min = 1, max = 256))]
    #[garde(length(min = 1), dive)]
    pub subnets: Vec<TopologySubnet>,

    /// Groups of nodes that share uplinks, bonds, VLANs and address ranges (a rack, a leaf pair, a zone).
    #[schemars(length(min = 1, max = 2048))]
    #[garde(length(min = 1), dive)]
    pub racks: Vec<Rack>,

    /// How pods attach to subnets: one SpiderMultusConfig (and NetworkAttachmentDefinition) per network and
    /// allowed namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    #[garde(dive)]
    pub networks: Vec<Network>,

    /// Which workloads use which networks, with fixed addresses and extra NICs where asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20000))]
    #[garde(dive)]
    pub apps: Vec<AppBinding>,

    /// How interface changes (bonds, VLANs) roll out to the nodes: at most `maxUnavailable` at a
    /// time, pausing after `maxFailures` failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutPolicy>,

    /// The share of a range's, subnet's or app binding's addresses in use (percent) at which the
    /// status condition `CapacityLow` turns True and a warning Event is recorded. Default 90.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    #[garde(inner(range(min = 1, max = 100)))]
    pub capacity_threshold_percent: Option<i32>,
}

/// A subnet: an IPv4 and/or IPv6 prefix, its gateway, VLAN, routes and addresses never handed out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.ipv4) || has(self.ipv6)").message("a subnet needs ipv4, ipv6 or both"),
    validation = Rule::new("!has(self.ipv4) || !isCIDR(self.ipv4.cidr) || cidr(self.ipv4.cidr).ip().family() == 4").message("ipv4.cidr must be an IPv4 CIDR"),
    validation = Rule::new("!has(self.ipv6) || !isCIDR(self.ipv6.cidr) || cidr(self.ipv6.cidr).ip().family() == 6").message("ipv6.cidr must be an IPv6 CIDR"),
)]
#[garde(allow_unvalidated)]
pub struct TopologySubnet {
    /// Name, unique in the topology (a DNS label: it becomes part of generated object names).
    #[schemars(length(min = 1, max = 63))]
    #[garde(custom(dns_label))]
    pub name: String,
    /// The IPv4 side of the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(dive)]
    pub ipv4: Option<SubnetFamily>,
    /// The IPv6 side of the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(dive)]
    pub ipv6: Option<SubnetFamily>,
    /// 802.1q VLAN id the subnet is tagged with on the uplinks (0 or absent: untagged). Networks on this
    /// subnet attach to the `<master>.<vlan>` sub-interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4094))]
    #[garde(custom(vlan_id))]
    pub vlan: Option<i32>,
    /// What the subnet is for, e.g. `fabric` or `storage` (a DNS label). A network with `subnetRole` takes
    /// every subnet of that role: with one subnet per rack, one network then serves every rack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[garde(inner(custom(dns_label)))]
    pub role: Option<String>,
}

/// One address family of a subnet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("isCIDR(self.cidr)").message("cidr must be a CIDR such as 10.20.0.0/16"))]
#[garde(allow_unvalidated)]
pub struct SubnetFamily {
    /// Prefix in canonical CIDR form, e.g. `10.20.0.0/16` or `fd00:20::/64`.
    #[schemars(length(min = 1, max = 64))]
    pub cidr: String,
    /// Gateway; pods get their default route through it. Must be inside `cidr` and outside every rack
    /// range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub gateway: Option<String>,
    /// Extra routes for pods on this subnet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub routes: Vec<Route>,
    /// Addresses used outside the cluster (routers, appliances). Rendered as a SpiderReservedIP, so no pool
    /// of any topology hands them out. IPs or `a-b` ranges.
    #[serde(default, rename = "reservedIPs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub reserved_ips: Vec<String>,
    /// Addresses this topology's pools must not hand out (kept in each pool's `excludeIPs`).
    #[serde(default, rename = "excludeIPs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub exclude_ips: Vec<String>,
}

/// A group of nodes with the same uplinks, bonds, VLANs and address ranges.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
#[garde(allow_unvalidated)]
pub struct Rack {
    /// Name, unique in the topology (a DNS label).
    #[schemars(length(min = 1, max = 63))]
    #[garde(custom(dns_label))]
    pub name: String,
    /// Which nodes belong to the rack (e.g. `matchLabels: {topology.kubernetes.io/zone: rack1}`). Becomes
    /// the node affinity of the rack's pools. Must not be empty.
    pub node_selector: LabelSelector,
    /// Physical NICs of the rack's nodes that networks may use as master directly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub uplinks: Vec<String>,
    /// Bonds the node daemon creates on every node of the rack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub bonds: Vec<Bond>,
    /// Extra VLAN sub-interfaces to create (those that networks need are added automatically).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 512))]
    pub vlans: Vec<VlanInterface>,
    /// For each subnet the rack serves, the addresses its nodes hand out to pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    #[garde(dive)]
    pub ranges: Vec<RackRange>,
    /// Which uplink or bond of this rack carries a network, by network name, where it differs from the
    /// network's `master` (e.g. `{fabric: bond0}` on a rack of newer hardware).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 256))]
    pub masters: BTreeMap<String, String>,
}

/// The addresses of one subnet that one rack hands out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
#[garde(allow_unvalidated)]
pub struct RackRange {
    /// Name of a subnet of `spec.subnets`.
    #[schemars(length(min = 1, max = 63))]
    #[garde(length(min = 1))]
    pub subnet: String,
    /// IPv4 addresses (IPs or `a-b` ranges) inside the subnet's IPv4 CIDR.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub ipv4: Vec<String>,
    /// IPv6 addresses (IPs or `a-b` ranges) inside the subnet's IPv6 CIDR.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub ipv6: Vec<String>,
}

/// How pods attach to a subnet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
#[garde(allow_unvalidated)]
pub struct Network {
    /// Name, unique in the topology (a DNS label). The SpiderMultusConfig and NetworkAttachmentDefinition in
    /// each allowed namespace are named after it, so pods refer to it as `<namespace>/<name>`.
    #[schemars(length(min = 1, max = 63))]
    #[garde(custom(dns_label))]
    pub name: String,
    /// CNI plugin that creates the pod interface.
    #[serde(rename = "type")]
    pub cni_type: NetworkType,
    /// Name of the subnet of `spec.subnets` the network's addresses come from. Set exactly one of
    /// `subnet`, `subnets` and `subnetRole`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 63))]
    pub subnet: String,
    /// Several subnets, typically one per rack (routed to the rack): pods on a node take the addresses
    /// of the subnet its rack serves. A rack may serve at most one of them, and all of them must have
    /// the same address families.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2048))]
    pub subnets: Vec<String>,
    /// Every subnet whose `role` is this, as if listed in `subnets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub subnet_role: Option<String>,
    /// The node interface pods attach to (macvlan, ipvlan): an uplink or a bond of the racks serving the
    /// network (a rack may name another in its `masters`). The VLAN sub-interface `<master>.<vlan>` is
    /// used when the network is tagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 15))]
    pub master: Option<String>,
    /// The name of the interface pods attach to on every node, when the racks reach the network through
    /// different uplinks, bonds or VLANs (a NetworkAttachmentDefinition names one master for all nodes):
    /// each rack's interface task then creates the network's VLAN sub-interface under this name. Needs a
    /// VLAN on every rack (an untagged NIC cannot be given a second name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 15))]
    pub node_interface: Option<String>,
    /// VLAN id, overriding the subnets' (0: untagged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4094))]
    #[garde(custom(vlan_id))]
    pub vlan: Option<i32>,
    /// Namespaces whose pods may use the network. Each gets its own SpiderMultusConfig and
    /// NetworkAttachmentDefinition; the pools only serve these namespaces.
    #[schemars(length(min = 1, max = 1024))]
    #[garde(length(min = 1))]
    pub namespaces: Vec<String>,
    /// MTU of pod interfaces; the master's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    #[garde(inner(range(min = 0, max = 65535)))]
    pub mtu: Option<i32>,
    /// Device-plugin resource of the VFs (`sriov` networks), e.g. `spidernet.io/mellanoxrdma`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov_resource_name: Option<String>,
    /// OVS bridge the pods plug into (`ovs` networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovs_bridge: Option<String>,
    /// The whole CNI configuration (`custom` networks), as JSON; used verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_config: Option<String>,
    /// Whether to chain upstream's `coordinator` plugin (routes between NICs, host reachability). Default
    /// true, except for `custom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_coordinator: Option<bool>,
}

/// CNI plugin of a network.
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
#[serde(rename_all = "lowercase")]
pub enum NetworkType {
    // macvlan on the master (bridge mode).
    #[default]
    Macvlan,
    // ipvlan on the master (for environments that allow one MAC per port).
    Ipvlan,
    // SR-IOV virtual functions from a device-plugin resource.
    Sriov,
    // An Open vSwitch bridge.
    Ovs,
    // A CNI configuration given verbatim.
    Custom,
}

impl NetworkType {
    /// The upstream SpiderMultusConfig `cniType` value.
    pub fn cni_type(self) -> &'static str {
        match self {
            NetworkType::Macvlan => "macvlan",
            NetworkType::Ipvlan => "ipvlan",
            NetworkType::Sriov => "sriov",
            NetworkType::Ovs => "ovs",
            NetworkType::Custom => "custom",
        }
    }

    /// Whether pods attach to a node interface (`master`).
    pub fn needs_master(self) -> bool {
        matches!(self, NetworkType::Macvlan | NetworkType::Ipvlan)
    }
}

/// Which pods use which networks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.workload) != has(self.podSelector)").message("set exactly one of workload and podSelector"))]
#[garde(allow_unvalidated)]
pub struct AppBinding {
    /// Name, unique in the topology (a DNS label).
    #[schemars(length(min = 1, max = 63))]
    #[garde(custom(dns_label))]
    pub name: String,
    /// Namespace of the application.
    #[schemars(length(min = 1, max = 63))]
    #[garde(custom(dns_label))]
    pub namespace: String,
    /// The workload whose pods this is about (exactly one of `workload` and `podSelector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(dive)]
    pub workload: Option<WorkloadRef>,
    /// Pods selected by labels instead of by workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// The pod NICs this binding gives, in order.
    #[schemars(length(min = 1, max = 16))]
    #[garde(length(min = 1), dive)]
    pub interfaces: Vec<AppInterface>,
    /// Which NIC holds the pod's default route (`eth0` when absent, which is the cluster network unless a
    /// binding interface is named `eth0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_route_interface: Option<String>,
}

/// A workload by kind and name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
#[garde(allow_unvalidated)]
pub struct WorkloadRef {
    /// API version of the workload; `apps/v1` for the built-in controllers, `batch/v1` for Job and
    /// CronJob, `kubevirt.io/v1` for VirtualMachine. Required for other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kind: Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, VirtualMachine, or a
    /// third-party controller kind (with `apiVersion`).
    #[schemars(length(min = 1, max = 63))]
    #[garde(length(min = 1))]
    pub kind: String,
    /// Name of the workload.
    #[schemars(length(min = 1, max = 253))]
    #[garde(length(min = 1))]
    pub name: String,
}

impl AppBinding {
    /// The pod interface name of each entry of `interfaces`: its `name`, else Multus' `net<N>` where N
    /// counts the binding's non-`eth0` interfaces (Multus numbers the networks of the annotation so).
    pub fn interface_names(&self) -> Vec<String> {
        let mut position = 0;
        self.interfaces
            .iter()
            .map(|nic| {
                if nic.name.as_deref() == Some("eth0") {
                    return "eth0".to_string();
                }
                position += 1;
                nic.name.clone().unwrap_or_else(|| format!("net{position}"))
            })
            .collect()
    }
}

impl WorkloadRef {
    /// The apiVersion, defaulted for well-known kinds.
    pub fn effective_api_version(&self) -> Option<String> {
        if let Some(v) = &self.api_version {
            return Some(v.clone());
        }
        match self.kind.as_str() {
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => Some("apps/v1".into()),
            "Job" | "CronJob" => Some("batch/v1".into()),
            "VirtualMachine" | "VirtualMachineInstance" => Some("kubevirt.io/v1".into()),
            _ => None,
        }
    }

    /// Whether pods of this workload keep their addresses across re-creation (StatefulSet pods by name,
    /// KubeVirt VMs across restarts and migration).
    pub fn keeps_addresses(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "StatefulSet" | "VirtualMachine" | "VirtualMachineInstance"
        )
    }
}

/// One pod NIC of an application binding.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
#[garde(allow_unvalidated)]
pub struct AppInterface {
    /// Interface name in the pod. `eth0` makes this network the pod's primary network (Multus
    /// `default-network`); otherwise Multus' `net1`, `net2`, ... by position when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 15))]
    pub name: Option<String>,
    /// Name of a network of `spec.networks`; the app's namespace must be one of its namespaces.
    #[schemars(length(min = 1, max = 63))]
    #[garde(length(min = 1))]
    pub network: String,
    /// Addresses reserved for this application on this NIC; absent: addresses come from the shared rack
    /// pools.
    #[serde(default, rename = "fixedIPs", skip_serializing_if = "Option::is_none")]
    #[garde(dive)]
    pub fixed_ips: Option<FixedIPs>,
}

/// Addresses set aside for one application: a count carved from the rack ranges, or explicit addresses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.count) || (has(self.ipv4) && size(self.ipv4) > 0) || (has(self.ipv6) && size(self.ipv6) > 0)").message("set count, or list ipv4/ipv6 addresses"))]
#[garde(allow_unvalidated)]
pub struct FixedIPs {
    /// How many addresses per family (and per rack, see `racks`) to carve from the rack ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    #[garde(inner(range(min = 1, max = 65536)))]
    pub count: Option<i32>,
    /// Explicit IPv4 addresses (IPs or `a-b` ranges), each inside one rack range of the network's subnet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub ipv4: Vec<String>,
    /// Explicit IPv6 addresses (IPs or `a-b` ranges), each inside one rack range of the network's subnet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub ipv6: Vec<String>,
    /// With `count`: the racks to carve from (every rack serving the subnet when empty). One pool per rack,
    /// so pods get a fixed address valid in the rack they run in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2048))]
    pub racks: Vec<String>,
}

fn vlan_id(value: &Option<i32>, _: &()) -> garde::Result {
    match value {
        Some(id) if !(0..=4094).contains(id) => Err(garde::Error::new(format!(
            "{id} is not a VLAN id: 802.1q ids are 1-4094 (0 means untagged)"
        ))),
        _ => Ok(()),
    }
}

fn dns_label(value: &String, _: &()) -> garde::Result {
    if is_dns1123_label(value) {
        Ok(())
    } else {
        Err(garde::Error::new(format!(
            "`{value}` is not a DNS label (lower-case letters, digits and `-`, at most 63, starting and ending alphanumeric)"
        )))
    }
}

impl Validate for SpiderNetwork {
    fn problems(&self) -> Vec<Problem> {
        self.check().err().unwrap_or_default()
    }
}

impl SpiderNetwork {
    /// Validates the whole object and, when it is valid, hands back what validation parsed, so the
    /// compiler does not parse every address list a second time.
    pub fn check(&self) -> Result<ParsedTopology, Vec<Problem>> {
        let mut problems = Problems::new();
        if let Some(name) = &self.metadata.name
            && !is_dns1123_label(name)
        {
            problems.push(
                "metadata.name",
                format!("`{name}` must be a DNS label: it prefixes the names of every generated object"),
            );
        }
        if let Err(report) = self.spec.validate() {
            problems.extend_garde("spec", &report);
        }
        let parsed = self.spec.check_cross_field(&mut problems);
        problems.into_result().map(|()| parsed)
    }
}

/// The address data of a topology, parsed once by validation.
#[derive(Debug, Clone, Default)]
pub struct ParsedTopology {
    /// Subnets by name.
    pub subnets: BTreeMap<String, ParsedSubnet>,
    /// (rack index, subnet name, family) -> the addresses the rack's range lists.
    pub rack_sets: BTreeMap<(usize, String, IpFamily), IpSet>,
    /// How each network (by index in `spec.networks`) reaches each rack.
    pub layouts: Vec<NetworkLayout>,
}

/// A subnet after parsing, for the checks that relate entries to each other (and for the compiler).
#[derive(Debug, Clone)]
pub struct ParsedSubnet {
    /// Index in `spec.subnets`.
    pub index: usize,
    /// Parsed CIDR per family.
    pub nets: BTreeMap<IpFamily, IpNet>,
    /// Parsed gateway per family.
    pub gateways: BTreeMap<IpFamily, IpAddr>,
    /// `reservedIPs` per family.
    pub reserved: BTreeMap<IpFamily, IpSet>,
    /// `excludeIPs` per family.
    pub excluded: BTreeMap<IpFamily, IpSet>,
}

impl TopologySubnet {
    /// The family blocks that are set.
    pub fn families(&self) -> impl Iterator<Item = (IpFamily, &SubnetFamily)> {
        [
            (IpFamily::V4, self.ipv4.as_ref()),
            (IpFamily::V6, self.ipv6.as_ref()),
        ]
        .into_iter()
        .filter_map(|(f, s)| s.map(|s| (f, s)))
    }

    /// The effective VLAN id (0 = untagged).
    pub fn vlan_id(&self) -> i32 {
        self.vlan.unwrap_or(0)
    }
}

impl RackRange {
    /// The addresses of one family.
    pub fn items(&self, family: IpFamily) -> &[String] {
        match family {
            IpFamily::V4 => &self.ipv4,
            IpFamily::V6 => &self.ipv6,
        }
    }
}

impl FixedIPs {
    /// The explicit addresses of one family.
    pub fn items(&self, family: IpFamily) -> &[String] {
        match family {
            IpFamily::V4 => &self.ipv4,
            IpFamily::V6 => &self.ipv6,
        }
    }
}

impl Network {
    /// The network's VLAN: its own, else its subnet's (0 = untagged).
    pub fn vlan_id(&self, subnet: Option<&TopologySubnet>) -> i32 {
        self.vlan.or(subnet.and_then(|s| s.vlan)).unwrap_or(0)
    }

    /// Whether `coordinator` is chained (default true, never for custom).
    pub fn coordinator_enabled(&self) -> bool {
        self.cni_type != NetworkType::Custom && self.enable_coordinator.unwrap_or(true)
    }
}

impl Rack {
    /// Whether `name` is an uplink or a bond of this rack.
    pub fn defines_interface(&self, name: &str) -> bool {
        self.uplinks.iter().any(|u| u == name) || self.bonds.iter().any(|b| b.name == name)
    }
}

/// `ipv4` / `ipv6`, the field names a family lives under.
pub fn family_key(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ipv4",
        IpFamily::V6 => "ipv6",
    }
}
