//! `SpiderMultusConfig` (short name `smc`): a CNI configuration written as a typed object, from which the
//! operator renders a Multus NetworkAttachmentDefinition of the same name and namespace. Upstream
//! Spiderpool's kind, unchanged.
//!
//! Exactly one sub-configuration is used, the one `cniType` names (`macvlan`, `ipvlan`, `vlan`, `sriov`,
//! `ib-sriov` in `ibsriov`, `ipoib`, `ovs`, or `custom` with the raw JSON in `customCNI`). Rendering the
//! NetworkAttachmentDefinition lives in the operator; this module has the types, the annotation names
//! and upstream's webhook rules.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::coordinator::CoordinatorSpec;
use crate::ippool::{is_dns1123_subdomain, is_label_value};
use crate::nad::check_plugin;
use crate::validation::{Problem, Problems, Validate};

/// Annotation giving the NetworkAttachmentDefinition a name other than the SpiderMultusConfig's (a
/// DNS-1123 subdomain). It cannot be added, changed or removed once the object exists.
pub const ANNO_NET_ATTACH_CONF_NAME: &str = "multus.spidernet.io/cr-name";
/// Annotation choosing the `cniVersion` of the rendered configuration (one of
/// [`SUPPORTED_CNI_VERSIONS`]; [`DEFAULT_CNI_VERSION`] when absent).
pub const ANNO_CNI_VERSION: &str = "multus.spidernet.io/cni-version";
/// Annotation choosing the `name` inside the rendered CNI configuration (the NetworkAttachmentDefinition
/// name when absent), e.g. `spidernet-chainer` for cilium-chaining.
pub const ANNO_CNI_CONFIG_NAME: &str = "cni.spidernet.io/cniconfig-name";
/// Annotation (copied to a label) by which the pod webhook finds the networks, and RDMA resources, to
/// inject into pods annotated with the same key and value.
pub const ANNO_RDMA_RESOURCE_INJECT: &str = "cni.spidernet.io/rdma-resource-inject";
/// Annotation (copied to a label) by which the pod webhook finds the networks, and NIC resources, to
/// inject into pods annotated with the same key and value.
pub const ANNO_NETWORK_RESOURCE_INJECT: &str = "cni.spidernet.io/network-resource-inject";

/// `cniVersion` rendered when the SpiderMultusConfig does not choose one.
pub const DEFAULT_CNI_VERSION: &str = "0.3.1";
/// CNI spec versions a SpiderMultusConfig may choose: upstream's four. Not 1.1.0, although our own
/// plugins speak it: the runtime calls every plugin of a configuration list at the list's version, and
/// the main plugins a NetworkAttachmentDefinition chains are not ours. The reference plugins Debian 12
/// ships (macvlan, ipvlan, vlan, tuning; 1.1.1) stop at 1.0.0 and refuse 1.1.0, and the SR-IOV, OVS and
/// InfiniBand plugins need not speak it either, so every pod on such a network would fail to start.
pub const SUPPORTED_CNI_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The values `cniType` accepts, as upstream spells them.
pub const CNI_TYPES: [&str; 8] = [
    "macvlan", "ipvlan", "vlan", "sriov", "ovs", "ib-sriov", "ipoib", "custom",
];
/// The values `vlan.vlanMode` accepts.
pub const VLAN_MODES: [&str; 2] = ["manual", "auto"];
/// The values `ibsriov.linkState` accepts.
pub const IB_LINK_STATES: [&str; 3] = ["auto", "enable", "disable"];

/// Spec of a SpiderMultusConfig.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderMultusConfig",
    plural = "spidermultusconfigs",
    shortname = "smc",
    category = "spiderpool",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    doc = "A CNI configuration as a typed object; a Multus NetworkAttachmentDefinition of the same name is generated from it."
)]
#[serde(rename_all = "camelCase")]
pub struct SpiderMultusConfigSpec {
    /// Main CNI plugin: `macvlan`, `ipvlan`, `vlan`, `sriov`, `ovs`, `ib-sriov`, `ipoib`, or `custom`
    /// (the configuration is `customCNI`, verbatim). Only the matching sub-configuration may be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "enum" = ["macvlan", "ipvlan", "vlan", "sriov", "ovs", "ib-sriov", "ipoib", "custom"],
        "default" = "custom"
    ))]
    pub cni_type: Option<String>,

    /// Configuration of the macvlan plugin (for `cniType: macvlan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macvlan: Option<SpiderMacvlanCniConfig>,

    /// Configuration of the ipvlan plugin (for `cniType: ipvlan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipvlan: Option<SpiderIpvlanCniConfig>,

    /// Configuration of the vlan plugin (for `cniType: vlan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<SpiderVlanCniConfig>,

    /// Configuration of the SR-IOV plugin (for `cniType: sriov`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov: Option<SpiderSriovCniConfig>,

    /// Configuration of the OVS plugin (for `cniType: ovs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovs: Option<SpiderOvsCniConfig>,

    /// Configuration of the InfiniBand SR-IOV plugin (for `cniType: ib-sriov`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ibsriov: Option<SpiderIbSriovCniConfig>,

    /// Configuration of the IPoIB plugin (for `cniType: ipoib`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipoib: Option<SpiderIpoibCniConfig>,

    /// Whether to chain the `coordinator` plugin after the main plugin (routes to the node and services,
    /// multi-NIC policy routing). Defaults to true, and to false for `custom`, which never gets it.
    // No schema default (upstream's CRD has `true`): the webhook fills it per cniType, so that a custom
    // SMC is stored with `false` as upstream stores it, without rewriting a `true` a user wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_coordinator: Option<bool>,

    /// Leave the `ipam` section out of the main plugin (addresses come from elsewhere, e.g. DHCP or none).
    #[serde(default, rename = "disableIPAM", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub disable_ipam: Option<bool>,

    /// Coordinator settings for this network, overriding the SpiderCoordinator's field by field. Ignored
    /// for `custom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<CoordinatorSpec>,

    /// Extra plugins chained after the main one (before the coordinator), each a CNI plugin configuration
    /// as a JSON string, e.g. `{"type": "cilium-cni"}`.
    // Upstream's Go field has no `omitempty`, so stored objects often carry `chainCNIJsonData: []`; an
    // `Option` keeps "absent" and "empty" apart so both round-trip. Read it with `chain_cni_plugins()`.
    #[serde(default, rename = "chainCNIJsonData", skip_serializing_if = "Option::is_none")]
    pub chain_cni_json_data: Option<Vec<String>>,

    /// The whole CNI configuration, as JSON, for `cniType: custom` (may be empty: Multus then reads the file
    /// of that name on the node). Must not be set for other types.
    #[serde(default, rename = "customCNI", skip_serializing_if = "Option::is_none")]
    pub custom_cni: Option<String>,
}

/// Configuration of the macvlan plugin.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpiderMacvlanCniConfig {
    /// Host interface(s) the pod interfaces hang off, e.g. `[ens192]`. Two or more are bonded first (see
    /// `bond`).
    pub master: Vec<String>,

    /// MTU of the pod interface; 0 lets the kernel choose (the master's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0), extend("default" = 0))]
    pub mtu: Option<i32>,

    /// VLAN id, 0-4094. Non-zero makes Spiderpool create the VLAN sub-interface `<master>.<vlanID>` on the
    /// node and use it as the master; 0 means untagged.
    #[serde(default, rename = "vlanID", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4094))]
    pub vlan_id: Option<i32>,

    /// The bond Spiderpool creates on the node from the masters. Required with two or more masters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond: Option<BondConfig>,

    /// RDMA resource of the master (from the RDMA shared device plugin) that the pod webhook adds to pods
    /// using this network when resource injection is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma_resource_name: Option<String>,

    /// Default pools for pods on this network (used when the pod and its namespace name none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ippools: Option<SpiderpoolPools>,
}

/// Configuration of the ipvlan plugin: the same fields as macvlan.
pub type SpiderIpvlanCniConfig = SpiderMacvlanCniConfig;

/// Configuration of the vlan plugin.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpiderVlanCniConfig {
    /// Host interface(s) the VLAN interfaces are tagged on, e.g. `[ens192]`. Two or more are bonded first
    /// (see `bond`).
    pub master: Vec<String>,

    /// MTU of the pod interface; 0 lets the kernel choose (the master's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0), extend("default" = 0))]
    pub mtu: Option<i32>,

    /// VLAN id the vlan plugin tags, 0-4094. Required when `vlanMode: manual` is written out (0 when
    /// neither is set); must not be set with `vlanMode: auto`.
    #[serde(default, rename = "vlanID", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4094))]
    pub vlan_id: Option<i32>,

    /// `manual` (the VLAN id is `vlanID`; the behaviour when absent) or `auto` (the IaaS network provider
    /// assigns it per pod).
    // No schema default: upstream's webhook fills `manual` *and* `vlanID: 0` together, and a defaulted
    // `manual` without `vlanID` would be refused by the rule that an explicit `manual` needs a `vlanID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["manual", "auto"]))]
    pub vlan_mode: Option<String>,

    /// The bond Spiderpool creates on the node from the masters. Required with two or more masters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond: Option<BondConfig>,

    /// RDMA resource of the master (from the RDMA shared device plugin) that the pod webhook adds to pods
    /// using this network when resource injection is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma_resource_name: Option<String>,

    /// Default pools for pods on this network (used when the pod and its namespace name none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ippools: Option<SpiderpoolPools>,
}

/// Configuration of the SR-IOV plugin.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpiderSriovCniConfig {
    /// Device-plugin resource of the VFs, e.g. `spidernet.io/mellanoxrdma`; pods on this network request
    /// one.
    pub resource_name: String,

    /// VLAN id the VF tags, 0-4094 (0 untagged).
    #[serde(default, rename = "vlanID", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4094))]
    pub vlan_id: Option<i32>,

    /// MTU of the VF in the pod, set by a chained `tuning` plugin; 0 leaves it as the kernel set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0), extend("default" = 0))]
    pub mtu: Option<i32>,

    /// Minimum transmit rate of the VF in Mbps; 0 disables the limit. At most `maxTxRateMbps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_tx_rate_mbps: Option<i64>,

    /// Maximum transmit rate of the VF in Mbps; 0 disables the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_tx_rate_mbps: Option<i64>,

    /// Chain the `rdma` plugin, which moves the VF's RDMA device into the pod (exclusive RDMA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub rdma_isolation: Option<bool>,

    /// Default pools for pods on this network (used when the pod and its namespace name none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ippools: Option<SpiderpoolPools>,
}

/// Configuration of the InfiniBand SR-IOV plugin.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpiderIbSriovCniConfig {
    /// Device-plugin resource of the InfiniBand VFs; pods on this network request one.
    pub resource_name: String,

    /// InfiniBand partition key of the VF, used by ib-kubernetes with the subnet manager (e.g. UFM,
    /// OpenSM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkey: Option<String>,

    /// Link state enforced on the VF: `auto`, `enable` or `disable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["auto", "enable", "disable"], "default" = "enable"))]
    pub link_state: Option<String>,

    /// Move the VF's RDMA device into the pod (exclusive RDMA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub rdma_isolation: Option<bool>,

    /// Work together with ib-kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub enable_ib_kubernetes: Option<bool>,

    /// Default pools for pods on this network (used when the pod and its namespace name none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ippools: Option<SpiderpoolPools>,
}

/// Configuration of the IPoIB plugin.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpiderIpoibCniConfig {
    /// Host IPoIB interface the pod interfaces are created from, e.g. `ibs5f1`.
    pub master: String,

    /// Default pools for pods on this network (used when the pod and its namespace name none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ippools: Option<SpiderpoolPools>,
}

/// Configuration of the OVS plugin.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpiderOvsCniConfig {
    /// OVS bridge the pod ports are added to, e.g. `br1`.
    pub bridge: String,

    /// VLAN tag of the pod's port (access port), 0-4094.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4094))]
    pub vlan: Option<i32>,

    /// VLANs allowed on the pod's port (trunk port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trunk: Vec<OvsTrunk>,

    /// PCI address of a VF in sysfs form, e.g. `0000:af:06.0`, for OVS hardware offload.
    #[serde(default, rename = "deviceID", skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,

    /// Default pools for pods on this network (used when the pod and its namespace name none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ippools: Option<SpiderpoolPools>,
}

/// VLANs of an OVS trunk port: one `id`, or the range `minID`-`maxID`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
pub struct OvsTrunk {
    /// First VLAN id of a range, 0-4094.
    #[serde(default, rename = "minID", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4094))]
    pub min_id: Option<i64>,

    /// Last VLAN id of a range, 0-4094, not below `minID`.
    #[serde(default, rename = "maxID", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4094))]
    pub max_id: Option<i64>,

    /// A single VLAN id, 0-4094.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4094))]
    pub id: Option<i64>,
}

/// A bond Spiderpool creates on the node (with its `ifacer` plugin) from several masters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
pub struct BondConfig {
    /// Interface name of the bond, e.g. `bond0`.
    pub name: String,

    /// Bonding mode by the kernel's number: 0 balance-rr, 1 active-backup, 2 balance-xor, 3 broadcast,
    /// 4 802.3ad (LACP), 5 balance-tlb, 6 balance-alb.
    #[schemars(range(min = 0, max = 6))]
    pub mode: i32,

    /// Bonding options as `key=value` pairs separated by `;`, e.g. `miimon=100;primary=ens192`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
}

/// Default pools of a network, written into the `ipam` section of the rendered configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpiderpoolPools {
    /// IPv4 SpiderIPPools, tried in order (names or `*`/`?` patterns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv4: Vec<String>,

    /// IPv6 SpiderIPPools, tried in order (names or `*`/`?` patterns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6: Vec<String>,

    /// SR-IOV only: use a pool only if the VF's physical function has an address in the pool's subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = [true, false], "default" = false))]
    pub match_master_subnet: Option<bool>,
}

/// `cniType`, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CniType {
    /// `macvlan`
    Macvlan,
    /// `ipvlan`
    Ipvlan,
    /// `vlan`
    Vlan,
    /// `sriov`
    Sriov,
    /// `ovs`
    Ovs,
    /// `ib-sriov`
    IbSriov,
    /// `ipoib`
    Ipoib,
    /// `custom`
    Custom,
}

impl CniType {
    /// Parses upstream's spelling.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "macvlan" => Some(Self::Macvlan),
            "ipvlan" => Some(Self::Ipvlan),
            "vlan" => Some(Self::Vlan),
            "sriov" => Some(Self::Sriov),
            "ovs" => Some(Self::Ovs),
            "ib-sriov" => Some(Self::IbSriov),
            "ipoib" => Some(Self::Ipoib),
            "custom" => Some(Self::Custom),
            _ => None,
        }
    }

    /// Upstream's spelling, which is also the CNI plugin's `type` (except `custom`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Macvlan => "macvlan",
            Self::Ipvlan => "ipvlan",
            Self::Vlan => "vlan",
            Self::Sriov => "sriov",
            Self::Ovs => "ovs",
            Self::IbSriov => "ib-sriov",
            Self::Ipoib => "ipoib",
            Self::Custom => "custom",
        }
    }

    /// JSON name of the spec field holding this type's sub-configuration.
    pub fn spec_field(self) -> &'static str {
        match self {
            Self::Macvlan => "macvlan",
            Self::Ipvlan => "ipvlan",
            Self::Vlan => "vlan",
            Self::Sriov => "sriov",
            Self::Ovs => "ovs",
            Self::IbSriov => "ibsriov",
            Self::Ipoib => "ipoib",
            Self::Custom => "customCNI",
        }
    }
}

impl SpiderMultusConfigSpec {
    /// `cniType` parsed, `custom` when absent; `None` when it is not one of [`CNI_TYPES`].
    pub fn effective_cni_type(&self) -> Option<CniType> {
        CniType::parse(self.cni_type.as_deref().unwrap_or("custom"))
    }

    /// Whether the coordinator plugin is chained: `enableCoordinator` (default true), never for `custom`.
    pub fn coordinator_enabled(&self) -> bool {
        self.effective_cni_type() != Some(CniType::Custom) && self.enable_coordinator.unwrap_or(true)
    }

    /// Whether the main plugin gets an `ipam` section (`disableIPAM` is not true).
    pub fn ipam_enabled(&self) -> bool {
        !self.disable_ipam.unwrap_or(false)
    }

    /// The chained plugin configurations (`chainCNIJsonData`), empty when absent.
    pub fn chain_cni_plugins(&self) -> &[String] {
        self.chain_cni_json_data.as_deref().unwrap_or_default()
    }

    /// [`SpiderMultusConfig::with_upstream_defaults`] for the spec.
    fn apply_upstream_defaults(&mut self) {
        let empty = || Some(String::new());
        let cni_type = self.cni_type.get_or_insert_with(|| "custom".to_string());
        match CniType::parse(cni_type) {
            Some(CniType::Macvlan | CniType::Ipvlan) => {
                let config = if CniType::parse(cni_type) == Some(CniType::Macvlan) {
                    self.macvlan.as_mut()
                } else {
                    self.ipvlan.as_mut()
                };
                if let Some(c) = config {
                    c.vlan_id.get_or_insert(0);
                    fill_shared_nic_defaults(&mut c.rdma_resource_name, c.bond.as_mut(), &mut c.ippools);
                }
            }
            Some(CniType::Vlan) => {
                if let Some(c) = self.vlan.as_mut() {
                    let mode = c.vlan_mode.get_or_insert_with(|| "manual".to_string());
                    if mode == "manual" {
                        c.vlan_id.get_or_insert(0);
                    }
                    fill_shared_nic_defaults(&mut c.rdma_resource_name, c.bond.as_mut(), &mut c.ippools);
                }
            }
            Some(CniType::Sriov) => {
                if let Some(c) = self.sriov.as_mut() {
                    c.vlan_id.get_or_insert(0);
                    c.min_tx_rate_mbps.get_or_insert(0);
                    c.max_tx_rate_mbps.get_or_insert(0);
                    c.ippools.get_or_insert_with(SpiderpoolPools::default);
                }
            }
            Some(CniType::IbSriov) => {
                if let Some(c) = self.ibsriov.as_mut() {
                    c.pkey.get_or_insert_with(String::new);
                    c.enable_ib_kubernetes.get_or_insert(false);
                    c.rdma_isolation.get_or_insert(true);
                    c.link_state.get_or_insert_with(|| "enable".to_string());
                    c.ippools.get_or_insert_with(SpiderpoolPools::default);
                }
            }
            Some(CniType::Ipoib) => {
                if let Some(c) = self.ipoib.as_mut() {
                    c.ippools.get_or_insert_with(SpiderpoolPools::default);
                }
            }
            Some(CniType::Ovs) => {
                if let Some(c) = self.ovs.as_mut() {
                    c.vlan.get_or_insert(0);
                    c.ippools.get_or_insert_with(SpiderpoolPools::default);
                }
            }
            Some(CniType::Custom) => {
                self.custom_cni.get_or_insert_with(String::new);
            }
            // Validation refuses it; nothing to fill.
            None => {}
        }
        if self.effective_cni_type() == Some(CniType::Custom) {
            self.enable_coordinator.get_or_insert(false);
        } else {
            self.enable_coordinator.get_or_insert(true);
            let written = self.coordinator.is_some();
            let c = self.coordinator.get_or_insert_with(CoordinatorSpec::default);
            c.mode.get_or_insert_with(|| "auto".to_string());
            c.tune_pod_routes.get_or_insert(true);
            c.pod_rp_filter.get_or_insert(0);
            c.tx_queue_len.get_or_insert(0);
            c.pod_mac_prefix.get_or_insert_with(String::new);
            c.pod_default_route_nic.get_or_insert_with(String::new);
            if !written {
                c.veth_link_address = empty();
            }
        }
        self.chain_cni_json_data.get_or_insert_with(Vec::new);
    }

    /// Which sub-configurations are set.
    fn sub_configs_set(&self) -> Vec<CniType> {
        [
            (CniType::Macvlan, self.macvlan.is_some()),
            (CniType::Ipvlan, self.ipvlan.is_some()),
            (CniType::Vlan, self.vlan.is_some()),
            (CniType::Sriov, self.sriov.is_some()),
            (CniType::Ovs, self.ovs.is_some()),
            (CniType::IbSriov, self.ibsriov.is_some()),
            (CniType::Ipoib, self.ipoib.is_some()),
            (CniType::Custom, self.custom_cni.is_some()),
        ]
        .into_iter()
        .filter_map(|(t, set)| set.then_some(t))
        .collect()
    }

    /// The default pools of the active sub-configuration.
    pub fn ippools(&self) -> Option<&SpiderpoolPools> {
        match self.effective_cni_type()? {
            CniType::Macvlan => self.macvlan.as_ref()?.ippools.as_ref(),
            CniType::Ipvlan => self.ipvlan.as_ref()?.ippools.as_ref(),
            CniType::Vlan => self.vlan.as_ref()?.ippools.as_ref(),
            CniType::Sriov => self.sriov.as_ref()?.ippools.as_ref(),
            CniType::Ovs => self.ovs.as_ref()?.ippools.as_ref(),
            CniType::IbSriov => self.ibsriov.as_ref()?.ippools.as_ref(),
            CniType::Ipoib => self.ipoib.as_ref()?.ippools.as_ref(),
            CniType::Custom => None,
        }
    }

    /// Upstream's webhook rules for the spec. `annotations` are the object's (resource injection changes
    /// what is required).
    pub fn check(&self, problems: &mut Problems, path: &str, annotations: &BTreeMap<String, String>) {
        let Some(cni_type) = self.effective_cni_type() else {
            problems.push(
                format!("{path}.cniType"),
                format!(
                    "`{}` is not one of {}",
                    self.cni_type.as_deref().unwrap_or_default(),
                    CNI_TYPES.join(", ")
                ),
            );
            return;
        };
        for other in self.sub_configs_set() {
            if other != cni_type {
                problems.push(
                    format!("{path}.{}", other.spec_field()),
                    format!(
                        "must not be set when cniType is {}; remove it (only `{}` is used)",
                        cni_type.as_str(),
                        cni_type.spec_field()
                    ),
                );
            }
        }
        let missing = |problems: &mut Problems| {
            problems.push(
                format!("{path}.{}", cni_type.spec_field()),
                format!("is required when cniType is {}", cni_type.as_str()),
            );
        };
        // For the resource-inject rules: what the active sub-configuration offers (see `Injection`).
        let mut injected: Option<Injection<'_>> = None;
        match cni_type {
            CniType::Macvlan | CniType::Ipvlan => {
                let config = if cni_type == CniType::Macvlan {
                    &self.macvlan
                } else {
                    &self.ipvlan
                };
                match config {
                    None => missing(problems),
                    Some(c) => {
                        let here = format!("{path}.{}", cni_type.spec_field());
                        check_masters(problems, &here, &c.master, c.bond.as_ref());
                        check_mtu(problems, &here, c.mtu);
                        check_vlan_id(problems, &format!("{here}.vlanID"), c.vlan_id);
                        check_no_match_master_subnet(problems, &here, c.ippools.as_ref(), cni_type);
                        injected = Some(Injection::shared_nic(
                            c.rdma_resource_name.as_deref(),
                            c.ippools.as_ref(),
                        ));
                    }
                }
            }
            CniType::Vlan => match &self.vlan {
                None => missing(problems),
                Some(c) => {
                    let here = format!("{path}.vlan");
                    check_masters(problems, &here, &c.master, c.bond.as_ref());
                    check_mtu(problems, &here, c.mtu);
                    check_vlan_id(problems, &format!("{here}.vlanID"), c.vlan_id);
                    match (c.vlan_mode.as_deref(), c.vlan_id) {
                        (Some(mode), _) if !VLAN_MODES.contains(&mode) => problems.push(
                            format!("{here}.vlanMode"),
                            format!("`{mode}` is not one of {}", VLAN_MODES.join(", ")),
                        ),
                        (Some("auto"), Some(_)) => problems.push(
                            format!("{here}.vlanID"),
                            "must not be set with vlanMode auto (the IaaS provider assigns the VLAN)",
                        ),
                        (Some("manual"), None) => {
                            problems.push(format!("{here}.vlanID"), "is required with vlanMode manual")
                        }
                        _ => {}
                    }
                    check_no_match_master_subnet(problems, &here, c.ippools.as_ref(), cni_type);
                    injected = Some(Injection::shared_nic(
                        c.rdma_resource_name.as_deref(),
                        c.ippools.as_ref(),
                    ));
                }
            },
            CniType::Sriov => match &self.sriov {
                None => missing(problems),
                Some(c) => {
                    let here = format!("{path}.sriov");
                    check_resource_name(problems, &here, &c.resource_name);
                    check_vlan_id(problems, &format!("{here}.vlanID"), c.vlan_id);
                    check_mtu(problems, &here, c.mtu);
                    for (field, rate) in [
                        ("minTxRateMbps", c.min_tx_rate_mbps),
                        ("maxTxRateMbps", c.max_tx_rate_mbps),
                    ] {
                        if let Some(rate) = rate
                            && rate < 0
                        {
                            problems.push(
                                format!("{here}.{field}"),
                                format!("must not be negative, not {rate}"),
                            );
                        }
                    }
                    if let (Some(min), Some(max)) = (c.min_tx_rate_mbps, c.max_tx_rate_mbps)
                        && min > max
                    {
                        problems.push(
                            format!("{here}.minTxRateMbps"),
                            format!("{min} is above maxTxRateMbps {max}"),
                        );
                    }
                    injected = Some(Injection::own_resource(c.ippools.as_ref()));
                }
            },
            CniType::IbSriov => match &self.ibsriov {
                None => missing(problems),
                Some(c) => {
                    let here = format!("{path}.ibsriov");
                    check_resource_name(problems, &here, &c.resource_name);
                    if let Some(state) = &c.link_state
                        && !IB_LINK_STATES.contains(&state.as_str())
                    {
                        problems.push(
                            format!("{here}.linkState"),
                            format!("`{state}` is not one of {}", IB_LINK_STATES.join(", ")),
                        );
                    }
                    injected = Some(Injection::own_resource(c.ippools.as_ref()));
                }
            },
            CniType::Ipoib => match &self.ipoib {
                None => missing(problems),
                Some(c) => {
                    if c.master.is_empty() {
                        problems.push(
                            format!("{path}.ipoib.master"),
                            "must name the host IPoIB interface",
                        );
                    }
                    injected = Some(Injection::own_resource(c.ippools.as_ref()));
                }
            },
            CniType::Ovs => match &self.ovs {
                None => missing(problems),
                Some(c) => {
                    let here = format!("{path}.ovs");
                    if c.bridge.is_empty() {
                        problems.push(format!("{here}.bridge"), "must name the OVS bridge");
                    }
                    check_vlan_id(problems, &format!("{here}.vlan"), c.vlan);
                    for (i, trunk) in c.trunk.iter().enumerate() {
                        let t = format!("{here}.trunk[{i}]");
                        for (field, id) in
                            [("minID", trunk.min_id), ("maxID", trunk.max_id), ("id", trunk.id)]
                        {
                            if let Some(id) = id
                                && !(0..=4094).contains(&id)
                            {
                                problems
                                    .push(format!("{t}.{field}"), format!("{id} is not a VLAN id (0-4094)"));
                            }
                        }
                        if let (Some(min), Some(max)) = (trunk.min_id, trunk.max_id)
                            && min > max
                        {
                            problems.push(format!("{t}.minID"), format!("{min} is above maxID {max}"));
                        }
                    }
                }
            },
            CniType::Custom => {
                if let Some(config) = self.custom_cni.as_deref().filter(|c| !c.is_empty())
                    && let Err(e) = serde_json::from_str::<serde_json::Value>(config)
                {
                    problems.push(format!("{path}.customCNI"), format!("is not valid JSON: {e}"));
                }
            }
        }
        check_injection(
            problems,
            &format!("{path}.{}", cni_type.spec_field()),
            cni_type,
            annotations,
            injected,
        );
        if let Some(coordinator) = &self.coordinator {
            coordinator.check(problems, &format!("{path}.coordinator"), false);
        }
        for (i, data) in self.chain_cni_plugins().iter().enumerate() {
            let here = format!("{path}.chainCNIJsonData[{i}]");
            match serde_json::from_str::<serde_json::Value>(data) {
                Err(e) => problems.push(here, format!("is not valid JSON: {e}")),
                Ok(value) => {
                    if let Err(message) = check_plugin(&value) {
                        problems.push(here, format!("is not a CNI plugin configuration: it {message}"));
                    }
                }
            }
        }
    }
}

/// `master` and `bond` of macvlan, ipvlan and vlan: at least one master; two or more need a named bond.
fn check_masters(problems: &mut Problems, path: &str, master: &[String], bond: Option<&BondConfig>) {
    if master.is_empty() {
        problems.push(format!("{path}.master"), "must name at least one host interface");
    }
    for (i, m) in master.iter().enumerate() {
        if m.is_empty() {
            problems.push(format!("{path}.master[{i}]"), "must not be empty");
        }
    }
    match bond {
        None if master.len() >= 2 => problems.push(
            format!("{path}.bond"),
            "is required with more than one master: the masters are bonded into it",
        ),
        None => {}
        Some(bond) => {
            if bond.name.is_empty() {
                problems.push(
                    format!("{path}.bond.name"),
                    "must name the bond interface, e.g. bond0",
                );
            }
            if !(0..=6).contains(&bond.mode) {
                problems.push(
                    format!("{path}.bond.mode"),
                    format!("{} is not a bonding mode (0-6)", bond.mode),
                );
            }
        }
    }
}

fn check_mtu(problems: &mut Problems, path: &str, mtu: Option<i32>) {
    if let Some(mtu) = mtu
        && mtu < 0
    {
        problems.push(format!("{path}.mtu"), format!("must not be negative, not {mtu}"));
    }
}

fn check_vlan_id(problems: &mut Problems, path: &str, vlan: Option<i32>) {
    if let Some(vlan) = vlan
        && !(0..=4094).contains(&vlan)
    {
        problems.push(path, format!("{vlan} is not a VLAN id (0-4094)"));
    }
}

fn check_resource_name(problems: &mut Problems, path: &str, name: &str) {
    if name.is_empty() {
        problems.push(
            format!("{path}.resourceName"),
            "must name the device-plugin resource of the VFs",
        );
    }
}

/// `matchMasterSubnet` needs the SR-IOV PF lookup; upstream refuses it for macvlan, ipvlan and vlan.
fn check_no_match_master_subnet(
    problems: &mut Problems,
    path: &str,
    pools: Option<&SpiderpoolPools>,
    cni_type: CniType,
) {
    if pools.and_then(|p| p.match_master_subnet) == Some(true) {
        problems.push(
            format!("{path}.ippools.matchMasterSubnet"),
            format!("is only supported for sriov, not {}", cni_type.as_str()),
        );
    }
}

/// Upstream's defaults common to macvlan, ipvlan and vlan: `rdmaResourceName: ""`, `bond.options: ""`,
/// `ippools: {}`.
fn fill_shared_nic_defaults(
    rdma_resource_name: &mut Option<String>,
    bond: Option<&mut BondConfig>,
    ippools: &mut Option<SpiderpoolPools>,
) {
    rdma_resource_name.get_or_insert_with(String::new);
    if let Some(bond) = bond {
        bond.options.get_or_insert_with(String::new);
    }
    ippools.get_or_insert_with(SpiderpoolPools::default);
}

/// What a sub-configuration offers the pod webhook's resource injection.
struct Injection<'a> {
    /// `Some` for the types whose RDMA resource is optional (macvlan, ipvlan, vlan): their
    /// `rdmaResourceName`. SR-IOV and InfiniBand always name their resource; IPoIB's is its master.
    rdma_resource: Option<Option<&'a str>>,
    /// The default pools pods of the network get.
    pools: Option<&'a SpiderpoolPools>,
}

impl<'a> Injection<'a> {
    /// macvlan, ipvlan, vlan: a NIC shared by pods, with an optional RDMA resource.
    fn shared_nic(rdma_resource: Option<&'a str>, pools: Option<&'a SpiderpoolPools>) -> Self {
        Injection {
            rdma_resource: Some(rdma_resource),
            pools,
        }
    }

    /// sriov, ib-sriov, ipoib: the resource is part of the configuration.
    fn own_resource(pools: Option<&'a SpiderpoolPools>) -> Self {
        Injection {
            rdma_resource: None,
            pools,
        }
    }
}

/// Upstream's rules for the `cni.spidernet.io/rdma-resource-inject` and `network-resource-inject`
/// annotations: neither for ovs and custom; RDMA injection needs the RDMA resource and default pools;
/// network injection (of the network alone, no resource) needs default pools for macvlan, ipvlan and
/// vlan, and nothing more for the other types.
fn check_injection(
    problems: &mut Problems,
    here: &str,
    cni_type: CniType,
    annotations: &BTreeMap<String, String>,
    injected: Option<Injection<'_>>,
) {
    let rdma = annotations.contains_key(ANNO_RDMA_RESOURCE_INJECT);
    let network = annotations.contains_key(ANNO_NETWORK_RESOURCE_INJECT);
    if !rdma && !network {
        return;
    }
    if matches!(cni_type, CniType::Ovs | CniType::Custom) {
        for key in [ANNO_RDMA_RESOURCE_INJECT, ANNO_NETWORK_RESOURCE_INJECT] {
            if annotations.contains_key(key) {
                problems.push(
                    format!("metadata.annotations[{key}]"),
                    format!(
                        "resource injection is not supported for cniType {}",
                        cni_type.as_str()
                    ),
                );
            }
        }
        return;
    }
    let Some(injected) = injected else { return };
    if rdma
        && let Some(resource) = injected.rdma_resource
        && resource.is_none_or(str::is_empty)
    {
        problems.push(
            format!("{here}.rdmaResourceName"),
            format!("is required with the annotation {ANNO_RDMA_RESOURCE_INJECT}"),
        );
    }
    let pools_needed = rdma || (network && injected.rdma_resource.is_some());
    if pools_needed
        && injected
            .pools
            .is_none_or(|p| p.ipv4.is_empty() && p.ipv6.is_empty())
    {
        let key = if rdma {
            ANNO_RDMA_RESOURCE_INJECT
        } else {
            ANNO_NETWORK_RESOURCE_INJECT
        };
        problems.push(
            format!("{here}.ippools"),
            format!("must name at least one pool with the annotation {key}"),
        );
    }
}

impl SpiderMultusConfig {
    /// Name of the NetworkAttachmentDefinition generated from this object: the
    /// `multus.spidernet.io/cr-name` annotation, else the object's name.
    pub fn net_attach_def_name(&self) -> String {
        self.annotations()
            .get(ANNO_NET_ATTACH_CONF_NAME)
            .cloned()
            .unwrap_or_else(|| self.name_any())
    }

    /// `cniVersion` of the generated configuration: the `multus.spidernet.io/cni-version` annotation, else
    /// [`DEFAULT_CNI_VERSION`].
    pub fn cni_version(&self) -> &str {
        self.annotations()
            .get(ANNO_CNI_VERSION)
            .map_or(DEFAULT_CNI_VERSION, String::as_str)
    }

    /// `name` inside the generated configuration: the `cni.spidernet.io/cniconfig-name` annotation, else
    /// the NetworkAttachmentDefinition's name.
    pub fn cni_config_name(&self) -> String {
        self.annotations()
            .get(ANNO_CNI_CONFIG_NAME)
            .cloned()
            .unwrap_or_else(|| self.net_attach_def_name())
    }

    /// The object as upstream's mutating webhook stores it, which is also what the
    /// NetworkAttachmentDefinition is rendered from. Only absent fields are filled (what the user wrote
    /// is kept), with upstream's values:
    ///
    /// - macvlan, ipvlan, vlan: `vlanID: 0` (vlan: with `vlanMode: manual` unless `auto`),
    ///   `rdmaResourceName: ""`, `bond.options: ""`, `ippools: {}`; sriov: `vlanID`, `minTxRateMbps`,
    ///   `maxTxRateMbps` 0 (rendered, so the SR-IOV plugin resets a VF's VLAN and rate limits left over
    ///   from its previous pod); ib-sriov: `pkey: ""`, `linkState: enable`, `rdmaIsolation: true`,
    ///   `enableIbKubernetes: false`; ovs: `vlan: 0` (rendered: an access port of VLAN 0, as upstream);
    ///   ipoib: `ippools: {}`.
    /// - `chainCNIJsonData: []`; the `*-resource-inject` annotations copied to labels (the pod webhook
    ///   selects networks by label).
    /// - custom: `customCNI: ""` and `enableCoordinator: false` (a custom configuration never gets the
    ///   coordinator); an `enableCoordinator: true` or a `coordinator` the user wrote is kept, unused
    ///   (upstream rewrites the one and drops the other, which GitOps tools then show as drift).
    /// - other types: `enableCoordinator: true`, and the coordinator settings `mode: auto`,
    ///   `tunePodRoutes: true`, `podRPFilter: 0`, `txQueueLen: 0`, empty `podMACPrefix` and
    ///   `podDefaultRouteNIC` (and `vethLinkAddress` when there was no `coordinator` at all). Upstream sets `tunePodRoutes: false` when `coordinator` is
    ///   partly written (reference §13.10); the CRD's default (`true`) already fills it before any
    ///   webhook runs, so this differs only for objects written without the CRD's defaults.
    pub fn with_upstream_defaults(&self) -> SpiderMultusConfig {
        let mut out = self.clone();
        out.spec.apply_upstream_defaults();
        for key in [ANNO_RDMA_RESOURCE_INJECT, ANNO_NETWORK_RESOURCE_INJECT] {
            if let Some(value) = self.annotations().get(key) {
                out.labels_mut().insert(key.to_string(), value.clone());
            }
        }
        out
    }

    /// Upstream's update rule: the `multus.spidernet.io/cr-name` annotation cannot be added or changed
    /// (the NetworkAttachmentDefinition would be orphaned). Run together with [`Validate::problems`].
    pub fn update_problems(&self, old: &SpiderMultusConfig) -> Vec<Problem> {
        let path = format!("metadata.annotations[{ANNO_NET_ATTACH_CONF_NAME}]");
        let mut problems = Problems::new();
        match (old.annotations().get(ANNO_NET_ATTACH_CONF_NAME), self.annotations().get(ANNO_NET_ATTACH_CONF_NAME)) {
            (Some(before), Some(after)) if before != after => problems.push(
                path,
                format!("cannot change from `{before}` to `{after}`; create a new SpiderMultusConfig instead"),
            ),
            (None, Some(after)) => problems.push(
                path,
                format!(
                    "cannot be added to an existing object (its NetworkAttachmentDefinition is `{}`, not `{after}`)",
                    old.name_any()
                ),
            ),
            _ => {}
        }
        problems.into_vec()
    }
}

impl Validate for SpiderMultusConfig {
    fn problems(&self) -> Vec<Problem> {
        let mut problems = Problems::new();
        let annotations = self.annotations();
        if let Some(name) = annotations.get(ANNO_NET_ATTACH_CONF_NAME)
            && !is_dns1123_subdomain(name)
        {
            problems.push(
                format!("metadata.annotations[{ANNO_NET_ATTACH_CONF_NAME}]"),
                format!("`{name}` is not a valid object name (lower-case DNS-1123 subdomain)"),
            );
        }
        if let Some(version) = annotations.get(ANNO_CNI_VERSION)
            && !SUPPORTED_CNI_VERSIONS.contains(&version.as_str())
        {
            problems.push(
                format!("metadata.annotations[{ANNO_CNI_VERSION}]"),
                format!(
                    "unsupported CNI version `{version}`; use one of {}",
                    SUPPORTED_CNI_VERSIONS.join(", ")
                ),
            );
        }
        for key in [ANNO_RDMA_RESOURCE_INJECT, ANNO_NETWORK_RESOURCE_INJECT] {
            if let Some(value) = annotations.get(key)
                && !is_label_value(value)
            {
                problems.push(
                    format!("metadata.annotations[{key}]"),
                    format!(
                        "`{value}` is not a label value (at most 63 letters, digits, `-`, `_`, `.`): it is copied to a label the pod webhook selects networks by"
                    ),
                );
            }
        }
        self.spec.check(&mut problems, "spec", annotations);
        problems.into_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smc(yaml: &str) -> SpiderMultusConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn paths(c: &SpiderMultusConfig) -> Vec<String> {
        c.validate().unwrap_err().into_iter().map(|p| p.path).collect()
    }

    const HEAD: &str = "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderMultusConfig\nmetadata:\n  name: t\n  namespace: kube-system\n";

    #[test]
    fn seed_macvlan_conf_is_valid() {
        let c = smc(&format!(
            "{HEAD}spec:\n  cniType: macvlan\n  macvlan:\n    master:\n    - eth0\n"
        ));
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.spec.effective_cni_type(), Some(CniType::Macvlan));
        assert!(c.spec.coordinator_enabled());
        assert!(c.spec.ipam_enabled());
        assert_eq!(c.net_attach_def_name(), "t");
        assert_eq!(c.cni_version(), "0.3.1");
    }

    #[test]
    fn custom_is_the_default_and_never_has_a_coordinator() {
        let c = smc(&format!(
            "{HEAD}spec:\n  enableCoordinator: true\n  customCNI: '{{\"cniVersion\":\"0.3.1\",\"name\":\"calico\",\"plugins\":[{{\"type\":\"calico\"}}]}}'\n"
        ));
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.spec.effective_cni_type(), Some(CniType::Custom));
        assert!(!c.spec.coordinator_enabled());
    }

    #[test]
    fn only_the_matching_sub_config_may_be_set() {
        let c = smc(&format!(
            "{HEAD}spec:\n  cniType: ipvlan\n  macvlan:\n    master: [eth0]\n  sriov:\n    resourceName: r\n  customCNI: '{{}}'\n"
        ));
        assert_eq!(
            paths(&c),
            vec!["spec.macvlan", "spec.sriov", "spec.customCNI", "spec.ipvlan"]
        );
    }

    #[test]
    fn master_bond_vlan_and_mtu_rules() {
        let c = smc(&format!(
            "{HEAD}spec:\n  cniType: macvlan\n  macvlan:\n    master: [eth0, '']\n    mtu: -1\n    vlanID: 4095\n    ippools:\n      ipv4: [p1]\n      matchMasterSubnet: true\n"
        ));
        assert_eq!(
            paths(&c),
            vec![
                "spec.macvlan.master[1]",
                "spec.macvlan.bond",
                "spec.macvlan.mtu",
                "spec.macvlan.vlanID",
                "spec.macvlan.ippools.matchMasterSubnet",
            ]
        );
        let c = smc(&format!(
            "{HEAD}spec:\n  cniType: ipvlan\n  ipvlan:\n    master: []\n    bond:\n      name: ''\n      mode: 7\n"
        ));
        assert_eq!(
            paths(&c),
            vec![
                "spec.ipvlan.master",
                "spec.ipvlan.bond.name",
                "spec.ipvlan.bond.mode"
            ]
        );
    }

    #[test]
    fn vlan_mode_rules() {
        let ok = smc(&format!(
            "{HEAD}spec:\n  cniType: vlan\n  vlan:\n    master: [eth0]\n"
        ));
        assert_eq!(ok.validate(), Ok(()));
        let ok = smc(&format!(
            "{HEAD}spec:\n  cniType: vlan\n  vlan:\n    master: [eth0]\n    vlanMode: auto\n"
        ));
        assert_eq!(ok.validate(), Ok(()));
        let c = smc(&format!(
            "{HEAD}spec:\n  cniType: vlan\n  vlan:\n    master: [eth0]\n    vlanMode: auto\n    vlanID: 100\n"
        ));
        assert_eq!(paths(&c), vec!["spec.vlan.vlanID"]);
        let c = smc(&format!(
            "{HEAD}spec:\n  cniType: vlan\n  vlan:\n    master: [eth0]\n    vlanMode: manual\n"
        ));
        assert_eq!(paths(&c), vec!["spec.vlan.vlanID"]);
        let c = smc(&format!(
            "{HEAD}spec:\n  cniType: vlan\n  vlan:\n    master: [eth0]\n    vlanMode: sometimes\n"
        ));
        assert_eq!(paths(&c), vec!["spec.vlan.vlanMode"]);
    }

    #[test]
    fn sriov_ovs_ib_rules() {
        let c = smc(&format!(
            "{HEAD}spec:\n  cniType: sriov\n  sriov:\n    resourceName: ''\n    minTxRateMbps: 200\n    maxTxRateMbps: 100\n    ippools:\n      matchMasterSubnet: true\n"
        ));
        assert_eq!(
            paths(&c),
            vec!["spec.sriov.resourceName", "spec.sriov.minTxRateMbps"]
        );
        let c = smc(&format!(
            "{HEAD}spec:\n  cniType: ovs\n  ovs:\n    bridge: br1\n    vlan: 5000\n    trunk:\n    - {{minID: 20, maxID: 10}}\n    - {{id: 4095}}\n"
        ));
        assert_eq!(
            paths(&c),
            vec!["spec.ovs.vlan", "spec.ovs.trunk[0].minID", "spec.ovs.trunk[1].id"]
        );
        let c = smc(&format!(
            "{HEAD}spec:\n  cniType: ib-sriov\n  ibsriov:\n    resourceName: r\n    linkState: up\n"
        ));
        assert_eq!(paths(&c), vec!["spec.ibsriov.linkState"]);
        let c = smc(&format!("{HEAD}spec:\n  cniType: ipoib\n"));
        assert_eq!(paths(&c), vec!["spec.ipoib"]);
    }

    #[test]
    fn json_fields_and_annotations_are_checked() {
        let c = smc(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderMultusConfig\nmetadata:\n  name: t\n  namespace: default\n  annotations:\n    multus.spidernet.io/cr-name: Not_A_Name\n    multus.spidernet.io/cni-version: 0.2.0\n    cni.spidernet.io/rdma-resource-inject: roce\nspec:\n  cniType: custom\n  customCNI: '{broken'\n  coordinator:\n    podMACPrefix: '01:00'\n  chainCNIJsonData:\n  - '{\"type\": \"tuning\"}'\n  - '{\"name\": \"no-type\"}'\n  - 'not json'\n",
        );
        assert_eq!(
            paths(&c),
            vec![
                "metadata.annotations[multus.spidernet.io/cr-name]",
                "metadata.annotations[multus.spidernet.io/cni-version]",
                "spec.customCNI",
                "metadata.annotations[cni.spidernet.io/rdma-resource-inject]",
                "spec.coordinator.podMACPrefix",
                "spec.chainCNIJsonData[1]",
                "spec.chainCNIJsonData[2]",
            ]
        );
    }

    #[test]
    fn rdma_injection_needs_a_resource_and_pools() {
        let c = smc(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderMultusConfig\nmetadata:\n  name: t\n  namespace: default\n  annotations:\n    cni.spidernet.io/rdma-resource-inject: roce\nspec:\n  cniType: macvlan\n  macvlan:\n    master: [ens1f0]\n",
        );
        assert_eq!(
            paths(&c),
            vec!["spec.macvlan.rdmaResourceName", "spec.macvlan.ippools"]
        );
        let c = smc(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderMultusConfig\nmetadata:\n  name: t\n  namespace: default\n  annotations:\n    cni.spidernet.io/rdma-resource-inject: roce\nspec:\n  cniType: sriov\n  sriov:\n    resourceName: ''\n    ippools:\n      ipv6: [v6]\n",
        );
        assert_eq!(paths(&c), vec!["spec.sriov.resourceName"]);
    }

    #[test]
    fn network_injection_needs_pools_but_no_resource() {
        // Upstream's multi-underlay-NIC guide: network injection of macvlan NICs without RDMA.
        let with_pools = smc(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderMultusConfig\nmetadata:\n  name: macvlan-ens192\n  namespace: spiderpool\n  annotations:\n    cni.spidernet.io/network-resource-inject: multi-network\nspec:\n  cniType: macvlan\n  macvlan:\n    master: [ens192]\n    ippools:\n      ipv4: [macvlan-ens192]\n    vlanID: 0\n",
        );
        assert_eq!(with_pools.validate(), Ok(()));
        let mut without = with_pools.clone();
        if let Some(m) = without.spec.macvlan.as_mut() {
            m.ippools = None;
        }
        let problems = without.validate().unwrap_err();
        assert_eq!(problems[0].path, "spec.macvlan.ippools");
        assert!(
            problems[0].message.contains("network-resource-inject"),
            "{problems:?}"
        );
        let sriov = smc(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderMultusConfig\nmetadata:\n  name: t\n  namespace: default\n  annotations:\n    cni.spidernet.io/network-resource-inject: nics\nspec:\n  cniType: sriov\n  sriov:\n    resourceName: r\n",
        );
        assert_eq!(sriov.validate(), Ok(()));
    }

    #[test]
    fn cni_versions_are_upstreams_four() {
        let with_version = |v: &str| {
            smc(&format!(
                "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderMultusConfig\nmetadata:\n  name: t\n  namespace: default\n  annotations:\n    multus.spidernet.io/cni-version: {v}\nspec:\n  cniType: macvlan\n  macvlan:\n    master: [eth0]\n"
            ))
        };
        for ok in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
            assert_eq!(with_version(ok).validate(), Ok(()), "{ok}");
        }
        let problems = with_version("1.1.0").validate().unwrap_err();
        assert_eq!(
            problems[0].path,
            "metadata.annotations[multus.spidernet.io/cni-version]"
        );
        assert!(problems[0].message.contains("1.0.0"), "{problems:?}");
    }

    #[test]
    fn upstream_defaults_fill_only_what_is_absent() {
        let spec_of = |yaml: &str| {
            let c = smc(&format!("{HEAD}{yaml}")).with_upstream_defaults();
            assert_eq!(c.with_upstream_defaults(), c, "defaulting twice changes nothing");
            serde_json::to_value(&c.spec).unwrap()
        };
        let macvlan = spec_of(
            "spec:\n  cniType: macvlan\n  macvlan:\n    master: [eth1]\n    vlanID: 30\n    bond: {name: bond9, mode: 1}\n",
        );
        assert_eq!(
            macvlan["macvlan"],
            serde_json::json!({"master": ["eth1"], "vlanID": 30, "rdmaResourceName": "",
                               "bond": {"name": "bond9", "mode": 1, "options": ""}, "ippools": {}})
        );
        assert_eq!(
            macvlan["coordinator"],
            serde_json::json!({"mode": "auto", "tunePodRoutes": true, "podRPFilter": 0, "txQueueLen": 0,
                               "podMACPrefix": "", "podDefaultRouteNIC": "", "vethLinkAddress": ""})
        );
        assert_eq!(macvlan["chainCNIJsonData"], serde_json::json!([]));
        let partial = spec_of(
            "spec:\n  cniType: ipvlan\n  ipvlan:\n    master: [eth1]\n  coordinator:\n    mode: overlay\n    tunePodRoutes: false\n",
        );
        assert_eq!(
            partial["coordinator"],
            serde_json::json!({"mode": "overlay", "tunePodRoutes": false, "podRPFilter": 0, "txQueueLen": 0,
                               "podMACPrefix": "", "podDefaultRouteNIC": ""})
        );
        let sriov =
            spec_of("spec:\n  cniType: sriov\n  sriov:\n    resourceName: r\n    maxTxRateMbps: 100\n");
        assert_eq!(
            sriov["sriov"],
            serde_json::json!({"resourceName": "r", "vlanID": 0, "minTxRateMbps": 0, "maxTxRateMbps": 100, "ippools": {}})
        );
        let vlan = spec_of("spec:\n  cniType: vlan\n  vlan:\n    master: [eth1]\n");
        assert_eq!(vlan["vlan"]["vlanMode"], "manual");
        assert_eq!(vlan["vlan"]["vlanID"], 0);
        let auto = spec_of("spec:\n  cniType: vlan\n  vlan:\n    master: [eth1]\n    vlanMode: auto\n");
        assert!(auto["vlan"].get("vlanID").is_none(), "{auto}");
        let ib = spec_of("spec:\n  cniType: ib-sriov\n  ibsriov:\n    resourceName: r\n");
        assert_eq!(
            ib["ibsriov"],
            serde_json::json!({"resourceName": "r", "pkey": "", "linkState": "enable", "rdmaIsolation": true,
                               "enableIbKubernetes": false, "ippools": {}})
        );
        let ovs = spec_of("spec:\n  cniType: ovs\n  ovs:\n    bridge: br1\n");
        assert_eq!(
            ovs["ovs"],
            serde_json::json!({"bridge": "br1", "vlan": 0, "ippools": {}})
        );
        let custom = spec_of("spec: {}\n");
        assert_eq!(
            custom,
            serde_json::json!({"cniType": "custom", "customCNI": "", "enableCoordinator": false, "chainCNIJsonData": []})
        );
        let written = spec_of("spec:\n  enableCoordinator: true\n");
        assert_eq!(written["enableCoordinator"], true, "what the user wrote is kept");
    }

    #[test]
    fn inject_annotations_become_labels() {
        let c = smc(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderMultusConfig\nmetadata:\n  name: t\n  namespace: default\n  annotations:\n    cni.spidernet.io/network-resource-inject: multi-network\nspec:\n  cniType: macvlan\n  macvlan:\n    master: [eth0]\n    ippools: {ipv4: [p]}\n",
        )
        .with_upstream_defaults();
        assert_eq!(
            c.labels().get(ANNO_NETWORK_RESOURCE_INJECT).map(String::as_str),
            Some("multi-network")
        );
        let mut bad = c.clone();
        bad.annotations_mut()
            .insert(ANNO_NETWORK_RESOURCE_INJECT.into(), "not a label".into());
        assert_eq!(
            paths(&bad),
            vec!["metadata.annotations[cni.spidernet.io/network-resource-inject]"]
        );
    }

    #[test]
    fn cr_name_annotation_is_immutable() {
        let old = smc(&format!(
            "{HEAD}spec:\n  cniType: macvlan\n  macvlan:\n    master: [eth0]\n"
        ));
        let mut new = old.clone();
        assert!(new.update_problems(&old).is_empty());
        new.metadata.annotations = Some(BTreeMap::from([(
            ANNO_NET_ATTACH_CONF_NAME.to_string(),
            "other".to_string(),
        )]));
        assert_eq!(new.net_attach_def_name(), "other");
        assert_eq!(new.cni_config_name(), "other");
        let problems = new.update_problems(&old);
        assert_eq!(
            problems[0].path,
            "metadata.annotations[multus.spidernet.io/cr-name]"
        );
        let changed = {
            let mut c = new.clone();
            c.metadata.annotations = Some(BTreeMap::from([(
                ANNO_NET_ATTACH_CONF_NAME.to_string(),
                "third".to_string(),
            )]));
            c
        };
        assert_eq!(changed.update_problems(&new).len(), 1);
        assert!(new.update_problems(&new).is_empty());
    }

    #[test]
    fn unknown_cni_type_is_reported() {
        let c = smc(&format!("{HEAD}spec:\n  cniType: flannel\n"));
        assert_eq!(paths(&c), vec!["spec.cniType"]);
    }

    #[test]
    fn crd_shape() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(SpiderMultusConfig::crd()).unwrap();
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["shortNames"], serde_json::json!(["smc"]));
        let version = &crd["spec"]["versions"][0];
        assert!(version.get("subresources").is_none_or(|s| s.is_null()));
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(spec["cniType"]["default"], "custom");
        assert!(
            spec["enableCoordinator"].get("default").is_none(),
            "the webhook defaults it per cniType"
        );
        assert_eq!(spec["macvlan"]["properties"]["vlanID"]["maximum"], 4094.0);
        assert_eq!(
            spec["macvlan"]["properties"]["bond"]["properties"]["mode"]["maximum"],
            6.0
        );
        assert_eq!(spec["coordinator"]["properties"]["mode"]["default"], "auto");
        assert!(spec.get("chainCNIJsonData").is_some());
    }
}
