//! The SpiderNetwork's status: what the operator observed and did.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::validation::Problem;

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
    /// Addresses allocated and free, per subnet, rack and app binding (from the pools' status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// Every problem of the spec, with the path of the field it is about. Nothing is applied while there are
    /// problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

/// How full the topology's address space is. Counted from the live pools: `total` is what the pools
/// hand out (their addresses minus `excludeIPs`, the subnet's reserved IPs and the gateway), `allocated`
/// what pods hold (the pools' records), `free` the difference.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// The share in use (percent) at or above which an entry counts as nearly full
    /// (`spec.capacityThresholdPercent`, default 90).
    pub threshold_percent: i64,
    /// Per subnet: every rack range and fixed-address pool of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<CapacityEntry>,
    /// Per rack: every range it hands out, of every subnet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub racks: Vec<CapacityEntry>,
    /// Per app binding with fixed addresses (its own pools), fullest first; at most 100 are listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<CapacityEntry>,
    /// Bindings with fixed addresses left out of `apps` (the least full ones), when there are more than
    /// 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps_not_listed: Option<i64>,
}

/// The addresses of one subnet, rack or app binding, per family.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapacityEntry {
    /// Name of the subnet, rack or app binding.
    pub name: String,
    /// IPv4 addresses, when it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<AddressCounts>,
    /// IPv6 addresses, when it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<AddressCounts>,
}

/// Address counts of one family.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressCounts {
    /// Addresses that can be handed out.
    pub total: i64,
    /// Addresses pods hold.
    pub allocated: i64,
    /// `total - allocated`.
    pub free: i64,
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
