//! SpiderMultusConfig -> NetworkAttachmentDefinition, upstream's rendering (reference §7), in one place.
//!
//! The operator's SpiderMultusConfig controller and the topology compiler both call [`render_nad`], so a
//! hand-written SpiderMultusConfig and one generated from a SpiderNetwork always render alike (what a
//! topology network's SpiderMultusConfig holds is the compiler's business: `compile::multus`).
//!
//! The rendering starts from the object as upstream's mutating webhook stores it
//! ([`SpiderMultusConfig::with_upstream_defaults`]), so an object read back from the API server and the
//! same object before admission (the topology compiler's) render alike, with upstream's zero values.
//!
//! The configuration equals upstream's as JSON (what Multus and the plugins read), not byte for byte:
//! the keys of some plugin objects come in another order than upstream's Go structs emit them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::{Map, Value, json};
use spiderpool_schema::SpiderMultusConfig;
use spiderpool_schema::coordinator::CoordinatorSpec;
use spiderpool_schema::multusconfig::{
    ANNO_CNI_CONFIG_NAME, ANNO_CNI_VERSION, ANNO_NET_ATTACH_CONF_NAME, BondConfig, CniType,
    DEFAULT_CNI_VERSION, SpiderMultusConfigSpec, SpiderOvsCniConfig, SpiderSriovCniConfig, SpiderpoolPools,
};
use spiderpool_schema::nad::{
    ANNO_RESOURCE_NAME, NetworkAttachmentDefinition, NetworkAttachmentDefinitionSpec,
};

/// Why a SpiderMultusConfig cannot be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    /// The object has no namespace (it is namespaced; one read from the API always has one).
    #[error("SpiderMultusConfig has no namespace")]
    NoNamespace,
    /// The object has no name.
    #[error("SpiderMultusConfig has no name")]
    NoName,
    /// `spec.cniType` is not one upstream knows.
    #[error("spec.cniType: `{0}` is not one of macvlan, ipvlan, vlan, sriov, ovs, ib-sriov, ipoib, custom")]
    UnknownCniType(String),
    /// The sub-configuration `cniType` names is missing.
    #[error("spec.{0}: is required for cniType `{1}`")]
    MissingConfig(&'static str, &'static str),
    /// A required master interface is missing.
    #[error("spec.{0}.master: at least one interface is required")]
    NoMaster(&'static str),
    /// An item of `chainCNIJsonData` is not a JSON object.
    #[error("spec.chainCNIJsonData[{0}]: not a CNI plugin JSON object: {1}")]
    BadChainPlugin(usize, String),
    /// `customCNI` is not JSON.
    #[error("spec.customCNI: not valid JSON: {0}")]
    BadCustomConfig(String),
}

/// Renders the NetworkAttachmentDefinition a SpiderMultusConfig stands for.
///
/// Name: annotation `multus.spidernet.io/cr-name`, else the SMC's name; same namespace; every SMC
/// annotation and label is copied (labels so that topology children can be found and pruned by label);
/// a controller owner reference to the SMC when the SMC has a UID (objects from the API server do).
pub fn render_nad(smc: &SpiderMultusConfig) -> Result<NetworkAttachmentDefinition, RenderError> {
    let namespace = smc.metadata.namespace.clone().ok_or(RenderError::NoNamespace)?;
    let smc_name = smc.metadata.name.clone().ok_or(RenderError::NoName)?;
    let annotations = smc.metadata.annotations.clone().unwrap_or_default();
    let nad_name = annotations
        .get(ANNO_NET_ATTACH_CONF_NAME)
        .cloned()
        .unwrap_or_else(|| smc_name.clone());
    let cni_version = annotations
        .get(ANNO_CNI_VERSION)
        .cloned()
        .unwrap_or_else(|| DEFAULT_CNI_VERSION.to_string());
    let config_name = annotations
        .get(ANNO_CNI_CONFIG_NAME)
        .cloned()
        .unwrap_or_else(|| nad_name.clone());

    let defaulted = smc.with_upstream_defaults();
    let spec = &defaulted.spec;
    let type_name = spec.cni_type.clone().unwrap_or_else(|| "custom".to_string());
    let cni_type = CniType::parse(&type_name).ok_or(RenderError::UnknownCniType(type_name))?;
    let mut nad_annotations = annotations.clone();
    let config = match cni_type {
        // Verbatim; empty (upstream's default) makes a NAD without configuration, for which Multus
        // reads the file of the NAD's name in its configuration directory.
        CniType::Custom => match spec.custom_cni.as_deref().unwrap_or_default() {
            "" => String::new(),
            text => serde_json::from_str::<Value>(text)
                .map(|_| text.to_string())
                .map_err(|e| RenderError::BadCustomConfig(e.to_string()))?,
        },
        _ => {
            let plugins = plugin_list(spec, cni_type, &mut nad_annotations)?;
            // Top-level keys in Go-map (alphabetical) order.
            let mut top = Map::new();
            top.insert("cniVersion".into(), Value::String(cni_version));
            top.insert("name".into(), Value::String(config_name));
            top.insert("plugins".into(), Value::Array(plugins));
            Value::Object(top).to_string()
        }
    };

    let owner_references = smc.metadata.uid.as_ref().map(|uid| {
        vec![OwnerReference {
            api_version: spiderpool_schema::API_VERSION.to_string(),
            kind: "SpiderMultusConfig".to_string(),
            name: smc_name.clone(),
            uid: uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]
    });
    let mut nad =
        NetworkAttachmentDefinition::new(&nad_name, &namespace, NetworkAttachmentDefinitionSpec { config });
    nad.metadata = ObjectMeta {
        labels: smc.metadata.labels.clone(),
        annotations: if nad_annotations.is_empty() {
            None
        } else {
            Some(nad_annotations)
        },
        owner_references,
        ..nad.metadata
    };
    Ok(nad)
}

fn plugin_list(
    spec: &SpiderMultusConfigSpec,
    cni_type: CniType,
    annotations: &mut BTreeMap<String, String>,
) -> Result<Vec<Value>, RenderError> {
    let mut chain = Vec::new();
    for (i, text) in spec.chain_cni_plugins().iter().enumerate() {
        let value: Value =
            serde_json::from_str(text).map_err(|e| RenderError::BadChainPlugin(i, e.to_string()))?;
        if !value.is_object() {
            return Err(RenderError::BadChainPlugin(i, "not an object".into()));
        }
        chain.push(value);
    }
    let coordinator = spec
        .enable_coordinator
        .unwrap_or(true)
        .then(|| coordinator_plugin(spec.coordinator.as_ref()));
    let ipam = |pools: Option<&SpiderpoolPools>, sriov: bool| -> Option<Value> {
        (!spec.disable_ipam.unwrap_or(false)).then(|| ipam_plugin(pools, sriov))
    };

    // Upstream's order: [head..., chain..., coordinator?, tail...]; each type fills head and tail.
    let mut head = Vec::new();
    let mut tail = Vec::new();
    match cni_type {
        CniType::Macvlan | CniType::Ipvlan => {
            let (field, config) = match cni_type {
                CniType::Macvlan => ("macvlan", spec.macvlan.as_ref()),
                _ => ("ipvlan", spec.ipvlan.as_ref()),
            };
            let config = config.ok_or(RenderError::MissingConfig(field, cni_type.as_str()))?;
            let vlan = config.vlan_id.unwrap_or(0);
            let master = master_name(config.master.as_slice(), config.bond.as_ref(), field)?;
            let master = if vlan != 0 {
                format!("{master}.{vlan}")
            } else {
                master
            };
            if vlan != 0 || config.master.len() > 1 {
                head.push(ifacer_plugin(&config.master, vlan, config.bond.as_ref()));
            }
            let mut main = Map::new();
            main.insert("type".into(), json!(field));
            main.insert("master".into(), json!(master));
            if cni_type == CniType::Macvlan {
                main.insert("mode".into(), json!("bridge"));
            }
            if let Some(mtu) = config.mtu {
                main.insert("mtu".into(), json!(mtu));
            }
            if let Some(ipam) = ipam(config.ippools.as_ref(), false) {
                main.insert("ipam".into(), ipam);
            }
            head.push(Value::Object(main));
        }
        CniType::Vlan => {
            let config = spec
                .vlan
                .as_ref()
                .ok_or(RenderError::MissingConfig("vlan", "vlan"))?;
            let master = master_name(config.master.as_slice(), config.bond.as_ref(), "vlan")?;
            if config.master.len() > 1 {
                head.push(ifacer_plugin(&config.master, 0, config.bond.as_ref()));
            }
            let mode = config.vlan_mode.clone().unwrap_or_else(|| "manual".into());
            let mut main = Map::new();
            main.insert("type".into(), json!("vlan"));
            main.insert("master".into(), json!(master));
            main.insert("vlanMode".into(), json!(mode));
            if mode == "manual"
                && let Some(id) = config.vlan_id
            {
                main.insert("vlanId".into(), json!(id));
            }
            if let Some(mtu) = config.mtu {
                main.insert("mtu".into(), json!(mtu));
            }
            if let Some(ipam) = ipam(config.ippools.as_ref(), false) {
                main.insert("ipam".into(), ipam);
            }
            head.push(Value::Object(main));
        }
        CniType::Sriov => {
            let config = spec
                .sriov
                .as_ref()
                .ok_or(RenderError::MissingConfig("sriov", "sriov"))?;
            head.push(sriov_plugin(config, ipam(config.ippools.as_ref(), true)));
            if config.rdma_isolation.unwrap_or(false) {
                head.push(json!({"type": "rdma"}));
            }
            if let Some(mtu) = config.mtu.filter(|m| *m > 0) {
                tail.push(json!({"type": "tuning", "mtu": mtu}));
            }
            annotations.insert(ANNO_RESOURCE_NAME.to_string(), config.resource_name.clone());
        }
        CniType::IbSriov => {
            let config = spec
                .ibsriov
                .as_ref()
                .ok_or(RenderError::MissingConfig("ibsriov", "ib-sriov"))?;
            let mut main = Map::new();
            main.insert("type".into(), json!("ib-sriov"));
            if let Some(pkey) = &config.pkey {
                main.insert("pkey".into(), json!(pkey));
            }
            if let Some(state) = &config.link_state {
                main.insert("link_state".into(), json!(state));
            }
            if let Some(isolation) = config.rdma_isolation {
                main.insert("rdmaIsolation".into(), json!(isolation));
            }
            if let Some(enabled) = config.enable_ib_kubernetes {
                main.insert("ibKubernetesEnabled".into(), json!(enabled));
            }
            if let Some(ipam) = ipam(config.ippools.as_ref(), false) {
                main.insert("ipam".into(), ipam);
            }
            head.push(Value::Object(main));
            annotations.insert(ANNO_RESOURCE_NAME.to_string(), config.resource_name.clone());
        }
        CniType::Ipoib => {
            let config = spec
                .ipoib
                .as_ref()
                .ok_or(RenderError::MissingConfig("ipoib", "ipoib"))?;
            let mut main = Map::new();
            main.insert("type".into(), json!("ipoib"));
            main.insert("master".into(), json!(config.master));
            if let Some(ipam) = ipam(config.ippools.as_ref(), false) {
                main.insert("ipam".into(), ipam);
            }
            head.push(Value::Object(main));
        }
        CniType::Ovs => {
            let config = spec
                .ovs
                .as_ref()
                .ok_or(RenderError::MissingConfig("ovs", "ovs"))?;
            head.push(ovs_plugin(config, ipam(config.ippools.as_ref(), false)));
            if config.device_id.is_some() {
                annotations.insert(
                    ANNO_RESOURCE_NAME.to_string(),
                    format!("ovs-cni.network.kubevirt.io/{}", config.bridge),
                );
            }
        }
        CniType::Custom => {}
    }
    head.extend(chain);
    head.extend(coordinator);
    head.extend(tail);
    Ok(head)
}

/// One master: itself (a `bond` next to a single master is not used for the name, as upstream);
/// several: the bond that joins them.
fn master_name(
    masters: &[String],
    bond: Option<&BondConfig>,
    field: &'static str,
) -> Result<String, RenderError> {
    match (masters, bond) {
        ([], _) => Err(RenderError::NoMaster(field)),
        ([one], _) => Ok(one.clone()),
        (_, Some(bond)) => Ok(bond.name.clone()),
        ([first, ..], None) => Ok(first.clone()),
    }
}

/// Upstream's `ifacer` object: the masters, the VLAN id when not 0, and the `bond` whenever one is
/// configured (with one master `ifacer` creates only the VLAN interface on it).
fn ifacer_plugin(masters: &[String], vlan: i32, bond: Option<&BondConfig>) -> Value {
    let mut obj = Map::new();
    obj.insert("type".into(), json!("ifacer"));
    obj.insert("interfaces".into(), json!(masters));
    if vlan != 0 {
        obj.insert("vlanID".into(), json!(vlan));
    }
    if let Some(bond) = bond {
        let mut b = Map::new();
        b.insert("name".into(), json!(bond.name));
        b.insert("mode".into(), json!(bond.mode));
        if let Some(options) = &bond.options {
            b.insert("options".into(), json!(options));
        }
        obj.insert("bond".into(), Value::Object(b));
    }
    Value::Object(obj)
}

fn ipam_plugin(pools: Option<&SpiderpoolPools>, sriov: bool) -> Value {
    let mut obj = Map::new();
    obj.insert("type".into(), json!("spiderpool"));
    if let Some(pools) = pools {
        if !pools.ipv4.is_empty() {
            obj.insert("default_ipv4_ippool".into(), json!(pools.ipv4));
        }
        if !pools.ipv6.is_empty() {
            obj.insert("default_ipv6_ippool".into(), json!(pools.ipv6));
        }
        if sriov && pools.match_master_subnet == Some(true) {
            obj.insert("match_master_subnet".into(), json!(true));
        }
    }
    Value::Object(obj)
}

fn sriov_plugin(config: &SpiderSriovCniConfig, ipam: Option<Value>) -> Value {
    let mut obj = Map::new();
    if let Some(vlan) = config.vlan_id {
        obj.insert("vlan".into(), json!(vlan));
    }
    if let Some(rate) = config.min_tx_rate_mbps {
        obj.insert("min_tx_rate".into(), json!(rate));
    }
    if let Some(rate) = config.max_tx_rate_mbps {
        obj.insert("max_tx_rate".into(), json!(rate));
    }
    obj.insert("type".into(), json!("sriov"));
    if let Some(ipam) = ipam {
        obj.insert("ipam".into(), ipam);
    }
    Value::Object(obj)
}

fn ovs_plugin(config: &SpiderOvsCniConfig, ipam: Option<Value>) -> Value {
    let mut obj = Map::new();
    if let Some(vlan) = config.vlan {
        obj.insert("vlan".into(), json!(vlan));
    }
    obj.insert("type".into(), json!("ovs"));
    obj.insert("bridge".into(), json!(config.bridge));
    if let Some(device) = &config.device_id {
        obj.insert("deviceID".into(), json!(device));
    }
    if let Some(ipam) = ipam {
        obj.insert("ipam".into(), ipam);
    }
    if !config.trunk.is_empty() {
        let trunk: Vec<Value> = config
            .trunk
            .iter()
            .map(|t| {
                let mut o = Map::new();
                if let Some(v) = t.min_id {
                    o.insert("minID".into(), json!(v));
                }
                if let Some(v) = t.max_id {
                    o.insert("maxID".into(), json!(v));
                }
                if let Some(v) = t.id {
                    o.insert("id".into(), json!(v));
                }
                Value::Object(o)
            })
            .collect();
        obj.insert("trunk".into(), Value::Array(trunk));
    }
    Value::Object(obj)
}

/// Upstream's coordinator object: only what is set, empty strings left out; `podRPFilter` only when
/// `podCIDRType` is set (upstream quirk §13.10, kept so rendered NADs equal upstream's; harmless, since
/// the plugin then takes the cluster default); `hostRuleTable`, `podCIDRType` never.
fn coordinator_plugin(spec: Option<&CoordinatorSpec>) -> Value {
    let mut obj = Map::new();
    obj.insert("type".into(), json!("coordinator"));
    let Some(c) = spec else { return Value::Object(obj) };
    let non_empty = |s: &Option<String>| s.clone().filter(|v| !v.is_empty());
    if let Some(mode) = non_empty(&c.mode) {
        obj.insert("mode".into(), json!(mode));
    }
    if let Some(tune) = c.tune_pod_routes {
        obj.insert("tunePodRoutes".into(), json!(tune));
    }
    if let Some(nic) = non_empty(&c.pod_default_route_nic) {
        obj.insert("podDefaultRouteNic".into(), json!(nic));
    }
    if let Some(prefix) = non_empty(&c.pod_mac_prefix) {
        obj.insert("podMACPrefix".into(), json!(prefix));
    }
    if let Some(addr) = non_empty(&c.veth_link_address) {
        obj.insert("vethLinkAddress".into(), json!(addr));
    }
    if let Some(mtu) = c.veth_mtu {
        obj.insert("vethMTU".into(), json!(mtu));
    }
    if let Some(len) = c.tx_queue_len {
        obj.insert("txQueueLen".into(), json!(len));
    }
    if !c.hijack_cidr.is_empty() {
        obj.insert("hijackCIDR".into(), json!(c.hijack_cidr));
    }
    if !c.policy_routes.is_empty() {
        obj.insert(
            "policyRoutes".into(),
            serde_json::to_value(&c.policy_routes).unwrap_or(Value::Null),
        );
    }
    if c.pod_cidr_type.is_some()
        && let Some(filter) = c.pod_rp_filter
    {
        obj.insert("podRPFilter".into(), json!(filter));
    }
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smc(yaml: &str) -> SpiderMultusConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn config(yaml: &str) -> (Value, NetworkAttachmentDefinition) {
        let nad = render_nad(&smc(yaml)).unwrap();
        let value = serde_json::from_str(&nad.spec.config).unwrap();
        (value, nad)
    }

    const HEAD: &str = "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderMultusConfig\nmetadata:\n  name: n\n  namespace: ns\n";

    /// The coordinator object of an SMC that says nothing about it: upstream's webhook defaults
    /// (`mode`, `tunePodRoutes`) and the CRD's (`txQueueLen`), as upstream renders them.
    fn default_coordinator() -> Value {
        json!({"type": "coordinator", "mode": "auto", "tunePodRoutes": true, "txQueueLen": 0})
    }

    #[test]
    fn macvlan_renders_upstreams_stored_defaults() {
        // Upstream's docs show `{"type":"coordinator"}`: written before its webhook filled the
        // coordinator defaults, which its renderer now emits.
        let (cfg, nad) = config(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderMultusConfig\nmetadata:\n  name: macvlan-ens192\n  namespace: kube-system\nspec:\n  cniType: macvlan\n  macvlan:\n    master: [ens192]\n",
        );
        assert_eq!(
            cfg,
            json!({"cniVersion": "0.3.1", "name": "macvlan-ens192", "plugins": [
                {"type": "macvlan", "master": "ens192", "mode": "bridge", "ipam": {"type": "spiderpool"}},
                default_coordinator()]})
        );
        assert_eq!(nad.metadata.name.as_deref(), Some("macvlan-ens192"));
        assert_eq!(nad.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(nad.metadata.owner_references, None, "no UID, no owner reference");
    }

    #[test]
    fn sriov_renders_its_zero_values_with_rdma_and_mtu_in_upstreams_order() {
        let (cfg, nad) = config(&format!(
            "{HEAD}spec:\n  cniType: sriov\n  sriov:\n    resourceName: spidernet.io/mellanox\n    vlanID: 100\n    rdmaIsolation: true\n    mtu: 8000\n"
        ));
        // `min_tx_rate`/`max_tx_rate` 0 make the SR-IOV plugin clear a rate limit the VF kept from its
        // previous pod; absent, it would leave the VF as it is.
        assert_eq!(
            cfg,
            json!({"cniVersion": "0.3.1", "name": "n", "plugins": [
                {"vlan": 100, "min_tx_rate": 0, "max_tx_rate": 0, "type": "sriov", "ipam": {"type": "spiderpool"}},
                {"type": "rdma"}, default_coordinator(), {"type": "tuning", "mtu": 8000}]})
        );
        assert_eq!(
            nad.metadata
                .annotations
                .unwrap()
                .get(ANNO_RESOURCE_NAME)
                .map(String::as_str),
            Some("spidernet.io/mellanox")
        );
        let (cfg, _) = config(&format!(
            "{HEAD}spec:\n  cniType: sriov\n  sriov:\n    resourceName: r\n"
        ));
        assert_eq!(
            cfg["plugins"][0],
            json!({"vlan": 0, "min_tx_rate": 0, "max_tx_rate": 0, "type": "sriov", "ipam": {"type": "spiderpool"}})
        );
    }

    #[test]
    fn vlan_and_bond_bring_ifacer_first() {
        let (cfg, _) = config(&format!(
            "{HEAD}  annotations:\n    multus.spidernet.io/cni-version: 1.0.0\n    multus.spidernet.io/cr-name: other\nspec:\n  cniType: ipvlan\n  ipvlan:\n    master: [eth1, eth2]\n    vlanID: 30\n    bond: {{name: bond0, mode: 1, options: miimon=100}}\n    ippools: {{ipv4: [p4], ipv6: [p6]}}\n  chainCNIJsonData: ['{{\"type\":\"tuning\"}}']\n"
        ));
        assert_eq!(
            cfg,
            json!({"cniVersion": "1.0.0", "name": "other", "plugins": [
                {"type": "ifacer", "interfaces": ["eth1", "eth2"], "vlanID": 30,
                 "bond": {"name": "bond0", "mode": 1, "options": "miimon=100"}},
                {"type": "ipvlan", "master": "bond0.30",
                 "ipam": {"type": "spiderpool", "default_ipv4_ippool": ["p4"], "default_ipv6_ippool": ["p6"]}},
                {"type": "tuning"}, default_coordinator()]})
        );
        // Without options, upstream's webhook stores `options: ""`, which ifacer gets.
        let (cfg, _) = config(&format!(
            "{HEAD}spec:\n  cniType: macvlan\n  macvlan:\n    master: [eth1, eth2]\n    bond: {{name: bond0, mode: 4}}\n"
        ));
        assert_eq!(
            cfg["plugins"][0],
            json!({"type": "ifacer", "interfaces": ["eth1", "eth2"], "bond": {"name": "bond0", "mode": 4, "options": ""}})
        );
        assert_eq!(cfg["plugins"][1]["master"], "bond0");
    }

    #[test]
    fn one_master_with_a_bond_attaches_to_the_master() {
        // Upstream: one master means the master; the bond still goes to ifacer, which with a single
        // interface creates only `eth1.300`.
        let (cfg, _) = config(&format!(
            "{HEAD}spec:\n  cniType: ipvlan\n  ipvlan:\n    master: [eth1]\n    vlanID: 300\n    bond: {{name: bond9, mode: 1}}\n"
        ));
        assert_eq!(
            cfg["plugins"][0],
            json!({"type": "ifacer", "interfaces": ["eth1"], "vlanID": 300, "bond": {"name": "bond9", "mode": 1, "options": ""}})
        );
        assert_eq!(cfg["plugins"][1]["master"], "eth1.300");
    }

    #[test]
    fn every_other_cni_type_renders() {
        let (cfg, _) = config(&format!(
            "{HEAD}spec:\n  cniType: vlan\n  vlan:\n    master: [eth1]\n    vlanID: 7\n  enableCoordinator: false\n"
        ));
        assert_eq!(
            cfg,
            json!({"cniVersion": "0.3.1", "name": "n", "plugins": [
                {"type": "vlan", "master": "eth1", "vlanMode": "manual", "vlanId": 7, "ipam": {"type": "spiderpool"}}]})
        );
        let (cfg, _) = config(&format!(
            "{HEAD}spec:\n  cniType: vlan\n  vlan:\n    master: [eth1]\n"
        ));
        assert_eq!(
            cfg["plugins"][0]["vlanId"], 0,
            "upstream renders the defaulted vlanID"
        );
        let (cfg, nad) = config(&format!(
            "{HEAD}spec:\n  cniType: ovs\n  ovs:\n    bridge: br1\n    vlan: 5\n    deviceID: '0000:00:01.0'\n    trunk: [{{minID: 10, maxID: 20}}]\n  disableIPAM: true\n"
        ));
        assert_eq!(
            cfg,
            json!({"cniVersion": "0.3.1", "name": "n", "plugins": [
                {"vlan": 5, "type": "ovs", "bridge": "br1", "deviceID": "0000:00:01.0", "trunk": [{"minID": 10, "maxID": 20}]},
                default_coordinator()]})
        );
        assert_eq!(
            nad.metadata
                .annotations
                .unwrap()
                .get(ANNO_RESOURCE_NAME)
                .map(String::as_str),
            Some("ovs-cni.network.kubevirt.io/br1")
        );
        let (cfg, _) = config(&format!("{HEAD}spec:\n  cniType: ovs\n  ovs:\n    bridge: br1\n"));
        assert_eq!(
            cfg["plugins"][0],
            json!({"vlan": 0, "type": "ovs", "bridge": "br1", "ipam": {"type": "spiderpool"}}),
            "an access port of VLAN 0, as upstream renders it"
        );
        let (cfg, _) = config(&format!(
            "{HEAD}spec:\n  cniType: ib-sriov\n  ibsriov:\n    resourceName: r\n"
        ));
        assert_eq!(
            cfg["plugins"][0],
            json!({"type": "ib-sriov", "pkey": "", "link_state": "enable", "rdmaIsolation": true,
                   "ibKubernetesEnabled": false, "ipam": {"type": "spiderpool"}})
        );
        let (cfg, _) = config(&format!(
            "{HEAD}spec:\n  cniType: ipoib\n  ipoib:\n    master: ib0\n"
        ));
        assert_eq!(
            cfg,
            json!({"cniVersion": "0.3.1", "name": "n", "plugins": [
                {"type": "ipoib", "master": "ib0", "ipam": {"type": "spiderpool"}}, default_coordinator()]})
        );
        let custom = r#"{"cniVersion":"0.3.1","name":"calico","type":"calico"}"#;
        let nad = render_nad(&smc(&format!(
            "{HEAD}spec:\n  cniType: custom\n  customCNI: '{custom}'\n"
        )))
        .unwrap();
        assert_eq!(nad.spec.config, custom, "custom configs are used verbatim");
    }

    #[test]
    fn custom_without_a_configuration_renders_a_nad_without_one() {
        for spec in [
            "spec:\n  cniType: custom\n  customCNI: ''\n",
            "spec:\n  cniType: custom\n",
            "spec: {}\n",
        ] {
            let nad = render_nad(&smc(&format!("{HEAD}{spec}"))).unwrap();
            assert_eq!(nad.spec.config, "", "{spec}");
            assert_eq!(nad.metadata.name.as_deref(), Some("n"));
        }
    }

    #[test]
    fn coordinator_overrides_are_rendered_like_upstream() {
        let (cfg, _) = config(&format!(
            "{HEAD}spec:\n  cniType: macvlan\n  macvlan: {{master: [eth0]}}\n  coordinator:\n    mode: underlay\n    tunePodRoutes: false\n    podDefaultRouteNIC: net1\n    podMACPrefix: ''\n    hijackCIDR: [169.254.0.0/16]\n    podRPFilter: 1\n    hostRuleTable: 600\n"
        ));
        assert_eq!(
            cfg["plugins"][1],
            json!({"type": "coordinator", "mode": "underlay", "tunePodRoutes": false, "podDefaultRouteNic": "net1",
                   "txQueueLen": 0, "hijackCIDR": ["169.254.0.0/16"]}),
            "podRPFilter needs podCIDRType (upstream quirk); hostRuleTable and empty strings are never rendered"
        );
    }

    #[test]
    fn bad_input_is_an_error_naming_the_field() {
        assert_eq!(
            render_nad(&smc(&format!("{HEAD}spec:\n  cniType: macvlan\n"))),
            Err(RenderError::MissingConfig("macvlan", "macvlan"))
        );
        assert_eq!(
            render_nad(&smc(&format!("{HEAD}spec:\n  cniType: weird\n"))),
            Err(RenderError::UnknownCniType("weird".into()))
        );
        assert!(matches!(
            render_nad(&smc(&format!(
                "{HEAD}spec:\n  cniType: macvlan\n  macvlan: {{master: [a]}}\n  chainCNIJsonData: ['not json']\n"
            ))),
            Err(RenderError::BadChainPlugin(0, _))
        ));
        assert_eq!(
            render_nad(&smc(&format!(
                "{HEAD}spec:\n  cniType: macvlan\n  macvlan: {{master: []}}\n"
            ))),
            Err(RenderError::NoMaster("macvlan"))
        );
    }

    #[test]
    fn an_smc_from_the_api_server_owns_its_nad() {
        let mut object = smc(&format!(
            "{HEAD}spec:\n  cniType: macvlan\n  macvlan: {{master: [eth0]}}\n"
        ));
        object.metadata.uid = Some("uid-1".into());
        let nad = render_nad(&object).unwrap();
        let owner = &nad.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("SpiderMultusConfig", "uid-1", Some(true))
        );
    }
}
