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

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use garde::Validate as _;
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use spiderpool_ipmath::{self as ipmath, IpFamily, IpSet};

use crate::common::{Route, check_canonical_cidr, check_ip, check_ip_list, check_routes};
use crate::interfacetask::{Bond, VlanInterface, check_interfaces};
use crate::ippool::{is_dns1123_label, selector_is_empty};
use crate::validation::{Problem, Problems, Validate};

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
    /// Name of a subnet of `spec.subnets` the network's addresses come from.
    #[schemars(length(min = 1, max = 63))]
    #[garde(length(min = 1))]
    pub subnet: String,
    /// The node interface pods attach to (macvlan, ipvlan): an uplink or a bond of the racks serving the
    /// subnet. The VLAN sub-interface `<master>.<vlan>` is used when the network is tagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 15))]
    pub master: Option<String>,
    /// VLAN id, overriding the subnet's (0: untagged).
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

/// What the operator observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpiderNetworkStatus {
    /// The `metadata.generation` this status describes; GitOps tools wait for it to match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (everything rendered is applied and every selected node reports its interfaces applied),
    /// `Reconciling` (work in progress) and `Stalled` (cannot progress until the spec changes, e.g. it is
    /// invalid), as kstatus and Argo CD read them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::common::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// How many objects of each kind the topology renders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<RenderedCounts>,
    /// Node interface task rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeRollout>,
    /// Progress of the bounded rollout of interface changes (see `spec.rollout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutProgress>,
    /// Every problem of the spec, with the path of the field it is about. Nothing is applied while there are
    /// problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

/// Objects rendered from a topology, by kind.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenderedCounts {
    /// SpiderIPPools (rack pools and fixed-address pools).
    pub ip_pools: i64,
    /// SpiderReservedIPs.
    #[serde(rename = "reservedIPs")]
    pub reserved_ips: i64,
    /// SpiderMultusConfigs.
    pub multus_configs: i64,
    /// NetworkAttachmentDefinitions.
    pub network_attachment_definitions: i64,
    /// SpiderInterfaceTasks (one per selected node that needs bonds or VLANs).
    pub interface_tasks: i64,
}

/// Rollout of the node interface tasks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRollout {
    /// `<applied>/<selected>`, for `kubectl get`.
    pub summary: String,
    /// Nodes selected by some rack.
    pub selected: i64,
    /// Nodes whose task is applied at the current generation.
    pub applied: i64,
    /// Nodes whose task has not been acted on yet.
    pub pending: i64,
    /// Nodes whose task failed or was rolled back.
    pub failed: i64,
    /// Up to 20 failed nodes with the reason, for a first look.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<NodeFailure>,
}

/// One node whose interface task failed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeFailure {
    /// Node name.
    pub node: String,
    /// What the node daemon reported.
    pub message: String,
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

impl SpiderNetworkSpec {
    /// Parses every subnet, reporting problems; subnets that fail to parse are absent from the map.
    pub fn parse_subnets(&self, problems: &mut Problems) -> BTreeMap<String, ParsedSubnet> {
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

    /// Checks that need more than one field: references, overlaps, VLAN reuse, conflicting racks.
    pub fn cross_field_problems(&self) -> Vec<Problem> {
        let mut problems = Problems::new();
        self.check_cross_field(&mut problems);
        problems.into_vec()
    }

    /// [`Self::cross_field_problems`], keeping what was parsed on the way.
    fn check_cross_field(&self, problems: &mut Problems) -> ParsedTopology {
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
        let rack_sets = self.check_rack_ranges(problems, &subnets);
        self.check_racks(problems);
        self.check_networks(problems);
        self.check_apps(problems, &rack_sets);
        ParsedTopology { subnets, rack_sets }
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
            check_interfaces(problems, &path, &rack.bonds, &rack.vlans, &rack.uplinks);
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

    fn check_networks(&self, problems: &mut Problems) {
        // (rack index, master interface, vlan) -> subnet, for "VLAN reused for two subnets on one uplink".
        let mut vlan_use: BTreeMap<(usize, String, i32), (String, usize)> = BTreeMap::new();
        for (n, network) in self.networks.iter().enumerate() {
            let path = format!("spec.networks[{n}]");
            let subnet = self.subnets.iter().find(|s| s.name == network.subnet);
            if subnet.is_none() {
                problems.push(
                    format!("{path}.subnet"),
                    format!("no subnet is named `{}`", network.subnet),
                );
            }
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
            if network.cni_type.needs_master() != network.master.is_some() {
                let message = if network.cni_type.needs_master() {
                    format!(
                        "is required for type `{}`: the uplink or bond pods attach to",
                        network.cni_type.cni_type()
                    )
                } else {
                    format!(
                        "only applies to macvlan and ipvlan, not `{}`",
                        network.cni_type.cni_type()
                    )
                };
                problems.push(format!("{path}.master"), message);
            }
            let Some(master) = &network.master else { continue };
            let vlan = network.vlan_id(subnet);
            let serving: Vec<(usize, &Rack)> = self
                .racks
                .iter()
                .enumerate()
                .filter(|(_, rack)| rack.ranges.iter().any(|range| range.subnet == network.subnet))
                .collect();
            if !self.racks.iter().any(|rack| rack.defines_interface(master)) {
                problems.push(
                    format!("{path}.master"),
                    format!("no rack defines an uplink or bond named `{master}`; add it to the racks' uplinks or bonds"),
                );
                continue;
            }
            for (r, rack) in &serving {
                if !rack.defines_interface(master) {
                    problems.push(
                        format!("{path}.master"),
                        format!(
                            "rack `{}` hands out addresses of subnet `{}` but has no uplink or bond named `{master}`",
                            rack.name, network.subnet
                        ),
                    );
                    continue;
                }
                if vlan == 0 {
                    continue;
                }
                let key = (*r, master.clone(), vlan);
                match vlan_use.get(&key) {
                    Some((other_subnet, other)) if other_subnet != &network.subnet => problems.push(
                        format!("{path}.vlan"),
                        format!(
                            "VLAN {vlan} on `{master}` in rack `{}` already carries subnet `{other_subnet}` (network `{}`); one VLAN cannot carry two subnets",
                            rack.name, self.networks[*other].name
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        vlan_use.insert(key, (network.subnet.clone(), n));
                    }
                }
            }
        }
    }

    fn check_apps(&self, problems: &mut Problems, rack_sets: &BTreeMap<(usize, String, IpFamily), IpSet>) {
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
                let Some(network) = self.networks.iter().find(|n| n.name == nic.network) else {
                    problems.push(
                        format!("{here}.network"),
                        format!("no network is named `{}`", nic.network),
                    );
                    continue;
                };
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
                        Some(r) if !self.racks[r].ranges.iter().any(|x| x.subnet == network.subnet) => {
                            problems.push(
                                format!("{here}.fixedIPs.racks[{k}]"),
                                format!("rack `{rack_name}` has no range in subnet `{}`", network.subnet),
                            )
                        }
                        Some(_) => {}
                    }
                }
                let subnet = self.subnets.iter().find(|s| s.name == network.subnet);
                for family in [IpFamily::V4, IpFamily::V6] {
                    let items = fixed.items(family);
                    if items.is_empty() {
                        continue;
                    }
                    let field = format!("{here}.fixedIPs.{}", family_key(family));
                    if let Some(subnet) = subnet
                        && !subnet.families().any(|(f, _)| f == family)
                    {
                        problems.push(field, format!("subnet `{}` has no {family} side", subnet.name));
                        continue;
                    }
                    let Ok(set) = IpSet::parse_list(family, items) else {
                        check_ip_list(problems, &field, family, items, None);
                        continue;
                    };
                    let in_racks = rack_sets
                        .iter()
                        .filter(|((_, s, f), _)| s == &network.subnet && *f == family)
                        .fold(IpSet::empty(family), |acc, (_, set)| {
                            acc.union(set).unwrap_or(acc)
                        });
                    let outside = set.difference(&in_racks);
                    if !outside.is_empty() {
                        problems.push(
                            field,
                            format!(
                                "{} are not in any rack range of subnet `{}`",
                                outside.to_strings().join(", "),
                                network.subnet
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
        // Two bindings must not claim the same explicit address.
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

/// `ipv4` / `ipv6`, the field names a family lives under.
pub fn family_key(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ipv4",
        IpFamily::V6 => "ipv6",
    }
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

/// Whether no object can match both selectors, judged from the selectors alone (conservative: `false`
/// means "may overlap"). Two selectors are disjoint when some label key is pinned to value sets that do
/// not intersect, or one requires a key that the other forbids.
pub fn selectors_disjoint(a: &LabelSelector, b: &LabelSelector) -> bool {
    let ca = constraints(a);
    let cb = constraints(b);
    ca.iter()
        .any(|(key, ka)| cb.get(key).is_some_and(|kb| ka.excludes(kb)))
}

#[derive(Debug, Default, Clone)]
struct KeyConstraint {
    /// The value must be one of these (None: no such constraint).
    allowed: Option<BTreeSet<String>>,
    /// The value must not be one of these.
    forbidden: BTreeSet<String>,
    must_exist: bool,
    must_not_exist: bool,
}

impl KeyConstraint {
    fn excludes(&self, other: &KeyConstraint) -> bool {
        if (self.must_not_exist && (other.must_exist || other.allowed.is_some()))
            || (other.must_not_exist && (self.must_exist || self.allowed.is_some()))
        {
            return true;
        }
        match (&self.allowed, &other.allowed) {
            (Some(x), Some(y)) => x
                .intersection(y)
                .all(|v| self.forbidden.contains(v) || other.forbidden.contains(v)),
            (Some(x), None) => x.iter().all(|v| other.forbidden.contains(v)),
            (None, Some(y)) => y.iter().all(|v| self.forbidden.contains(v)),
            (None, None) => false,
        }
    }
}

fn constraints(selector: &LabelSelector) -> BTreeMap<String, KeyConstraint> {
    let mut out: BTreeMap<String, KeyConstraint> = BTreeMap::new();
    let narrow = |c: &mut KeyConstraint, values: BTreeSet<String>| {
        c.allowed = Some(match c.allowed.take() {
            Some(existing) => existing.intersection(&values).cloned().collect(),
            None => values,
        });
    };
    for (k, v) in selector.match_labels.iter().flatten() {
        narrow(out.entry(k.clone()).or_default(), BTreeSet::from([v.clone()]));
    }
    for expr in selector.match_expressions.iter().flatten() {
        let c = out.entry(expr.key.clone()).or_default();
        let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
        match expr.operator.as_str() {
            "In" => narrow(c, values),
            "NotIn" => c.forbidden.extend(values),
            "Exists" => c.must_exist = true,
            "DoesNotExist" => c.must_not_exist = true,
            _ => {}
        }
    }
    out
}
