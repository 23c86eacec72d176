//! What Multus does around the CNI calls: parsing the network-selection annotations, resolving a
//! pod's networks to delegates (the only part that reads the API: its NetworkAttachmentDefinitions),
//! naming interfaces, building each delegate's `CNI_ARGS` and capability arguments, and rendering the
//! `k8s.v1.cni.cncf.io/network-status` annotation. The node simulator and the Multus stand-in CNI
//! plugin of the real-node tier both do Multus' part through this module.
//!
//! Modelled on multus-cni (`pkg/multus/multus.go`, `pkg/types/conf.go`) and the Network Plumbing
//! WG client (`ParseNetworkAnnotation`, `CreateNetworkStatuses`).

use std::net::IpAddr;

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cni::{NetworkConfigList, RuntimeConf, result_interfaces};

/// Pod annotation selecting additional networks.
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";
/// Pod annotation Multus writes after ADD.
pub const NETWORK_STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";
/// Pod annotation replacing the cluster default network for this pod.
pub const DEFAULT_NETWORK_ANNOTATION: &str = "v1.multus-cni.io/default-network";

/// One element of the networks annotation (NPWG `NetworkSelectionElement`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkSelectionElement {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(rename = "interface", default, skip_serializing_if = "Option::is_none")]
    pub interface_request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ips: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(rename = "default-route", default, skip_serializing_if = "Option::is_none")]
    pub gateway_request: Option<Vec<String>>,
    #[serde(rename = "cni-args", default, skip_serializing_if = "Option::is_none")]
    pub cni_args: Option<Map<String, Value>>,
    #[serde(rename = "portMappings", default, skip_serializing_if = "Option::is_none")]
    pub port_mappings: Option<Vec<Value>>,
    #[serde(rename = "bandwidth", default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Value>,
}

/// Parses a networks annotation: a JSON list of selection elements, or the comma form
/// `[namespace/]name[@interface], ...`. Elements without a namespace get `default_namespace`.
pub fn parse_network_selection(
    annotation: &str,
    default_namespace: &str,
) -> Result<Vec<NetworkSelectionElement>> {
    if annotation.is_empty() {
        bail!("parsePodNetworkAnnotation: pod annotation not having \"network\" as key");
    }
    let mut networks: Vec<NetworkSelectionElement> = if annotation.contains(['[', '{', '"']) {
        serde_json::from_str(annotation).map_err(|e| {
            anyhow!("parsePodNetworkAnnotation: failed to parse pod Network Attachment Selection Annotation JSON format: {e}")
        })?
    } else {
        annotation
            .split(',')
            .map(|item| parse_text_element(item.trim()))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| anyhow!("parsePodNetworkAnnotation: {e}"))?
    };
    for net in &mut networks {
        if net.namespace.is_empty() {
            net.namespace = default_namespace.to_owned();
        }
    }
    Ok(networks)
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(|c| *c != b'-')
        && b.last().is_some_and(|c| *c != b'-')
}

fn parse_text_element(item: &str) -> Result<NetworkSelectionElement> {
    let slash: Vec<&str> = item.split('/').collect();
    let (namespace, rest) = match slash.as_slice() {
        [name] => (String::new(), *name),
        [ns, name] => (ns.trim().to_owned(), *name),
        _ => bail!("Invalid network object (failed at '/')"),
    };
    let at: Vec<&str> = rest.split('@').collect();
    let (name, interface) = match at.as_slice() {
        [name] => (name.trim().to_owned(), String::new()),
        [name, iface] => (name.trim().to_owned(), iface.trim().to_owned()),
        _ => bail!("Invalid network object (failed at '@')"),
    };
    for part in [&namespace, &name, &interface] {
        if !part.is_empty() && !is_dns_label(part) {
            bail!(
                "Failed to parse: one or more items did not match comma-delimited format (must consist of lower case \
                 alphanumeric characters). Must start and end with an alphanumeric character), mismatch @ '{part}'"
            );
        }
    }
    Ok(NetworkSelectionElement {
        name,
        namespace,
        interface_request: (!interface.is_empty()).then_some(interface),
        ..NetworkSelectionElement::default()
    })
}

/// A network Multus will call for a pod, with everything the pod asked for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delegate {
    /// The name Multus reports in network-status: `namespace/name` for a NetworkAttachmentDefinition,
    /// the configuration's name for the cluster network given as a configuration.
    pub name: String,
    pub config: NetworkConfigList,
    /// The cluster default network (the "master plugin"): gets the runtime's interface name.
    pub master: bool,
    pub selection: NetworkSelectionElement,
}

impl Delegate {
    /// Builds a delegate from a CNI configuration (a NAD's `spec.config`), applying the selection's
    /// `cni-args` (as `args.cni` of every plugin) and a missing `name` (the network's name).
    pub fn from_config(
        name: String,
        config: &Value,
        fallback_config_name: &str,
        master: bool,
        selection: NetworkSelectionElement,
    ) -> Result<Self> {
        let mut config = config.clone();
        let obj = config
            .as_object_mut()
            .ok_or_else(|| anyhow!("network {name}: config is not a JSON object"))?;
        if obj.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
            obj.insert("name".to_owned(), Value::String(fallback_config_name.to_owned()));
        }
        if let Some(cni_args) = &selection.cni_args {
            match obj.get_mut("plugins").and_then(Value::as_array_mut) {
                Some(plugins) => plugins
                    .iter_mut()
                    .filter_map(Value::as_object_mut)
                    .for_each(|p| inject_cni_args(p, cni_args)),
                None => inject_cni_args(obj, cni_args),
            }
        }
        let config = NetworkConfigList::from_value(&config).map_err(|e| anyhow!("network {name}: {e:#}"))?;
        Ok(Delegate {
            name,
            config,
            master,
            selection,
        })
    }
}

/// The cluster default network (Multus' `clusterNetwork`).
#[derive(Debug, Clone, PartialEq)]
pub enum DefaultNetwork {
    /// A CNI configuration (list or single plugin), as a file in `/etc/cni/net.d` would hold it.
    Config(Value),
    /// A NetworkAttachmentDefinition, read at every ADD.
    Nad { namespace: String, name: String },
}

/// The delegate of a NetworkAttachmentDefinition's `spec.config`.
pub async fn nad_delegate(
    client: &Client,
    selection: NetworkSelectionElement,
    master: bool,
) -> Result<Delegate> {
    let gvk = GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "network-attachment-definitions");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &selection.namespace, &resource);
    let nad = api.get(&selection.name).await.map_err(|e| {
        anyhow!(
            "cannot find a network-attachment-definition ({}) in namespace ({}): {e}",
            selection.name,
            selection.namespace
        )
    })?;
    let config = nad
        .data
        .get("spec")
        .and_then(|s| s.get("config"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if config.is_empty() {
        bail!(
            "net-attach-def {}/{} has no spec.config (Multus would read a file named {} from its confDir; \
             this emulation does not model that)",
            selection.namespace,
            selection.name,
            selection.name
        );
    }
    let value: Value = serde_json::from_str(config).with_context(|| {
        format!(
            "net-attach-def {}/{}: spec.config is not JSON",
            selection.namespace, selection.name
        )
    })?;
    let name = format!("{}/{}", selection.namespace, selection.name);
    let fallback = selection.name.clone();
    Delegate::from_config(name, &value, &fallback, master, selection)
}

/// The delegates of a pod, default network first: the `v1.multus-cni.io/default-network` annotation's
/// network or else `default_network`, then every network of the `k8s.v1.cni.cncf.io/networks`
/// annotation.
pub async fn pod_delegates(
    client: &Client,
    pod: &Pod,
    default_network: &DefaultNetwork,
) -> Result<Vec<Delegate>> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let mut delegates = Vec::new();
    match annotations
        .get(DEFAULT_NETWORK_ANNOTATION)
        .filter(|a| !a.is_empty())
    {
        Some(annotation) => {
            let mut selections = parse_network_selection(annotation, &namespace)?;
            if selections.len() != 1 {
                bail!(
                    "multus does not support more than one default network (annotation {DEFAULT_NETWORK_ANNOTATION})"
                );
            }
            let selection = selections.remove(0);
            delegates.push(nad_delegate(client, selection, true).await?);
        }
        None => match default_network {
            DefaultNetwork::Config(config) => {
                let name = config
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("default")
                    .to_owned();
                delegates.push(Delegate::from_config(
                    name.clone(),
                    config,
                    &name,
                    true,
                    NetworkSelectionElement::default(),
                )?);
            }
            DefaultNetwork::Nad { namespace, name } => {
                let selection = NetworkSelectionElement {
                    name: name.clone(),
                    namespace: namespace.clone(),
                    ..NetworkSelectionElement::default()
                };
                delegates.push(nad_delegate(client, selection, true).await?);
            }
        },
    }
    if let Some(annotation) = annotations.get(NETWORKS_ANNOTATION).filter(|a| !a.is_empty()) {
        for selection in parse_network_selection(annotation, &namespace)? {
            delegates.push(nad_delegate(client, selection, false).await?);
        }
    }
    Ok(delegates)
}

fn inject_cni_args(conf: &mut Map<String, Value>, cni_args: &Map<String, Value>) {
    let args = conf.entry("args").or_insert_with(|| Value::Object(Map::new()));
    if let Some(args) = args.as_object_mut() {
        let cni = args.entry("cni").or_insert_with(|| Value::Object(Map::new()));
        if let Some(cni) = cni.as_object_mut() {
            for (k, v) in cni_args {
                cni.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The interface name of delegate `index` (0 = the cluster default network): the requested name,
/// the runtime's name for the master plugin, else `net<index>`.
pub fn interface_name(delegate: &Delegate, runtime_ifname: &str, index: usize) -> String {
    match &delegate.selection.interface_request {
        Some(name) if !name.is_empty() => name.clone(),
        _ if delegate.master => runtime_ifname.to_owned(),
        _ => format!("net{index}"),
    }
}

/// The pod identity in `CNI_ARGS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub sandbox_id: String,
}

/// The pairs of a `CNI_ARGS` value (`K=V;K=V`), in order; an item without `=` is an error.
pub fn parse_cni_args(value: &str) -> Result<Vec<(String, String)>> {
    value
        .split(';')
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow!("CNI_ARGS: invalid item {item:?} (expected KEY=VALUE)"))
        })
        .collect()
}

impl PodArgs {
    /// The pod named by the runtime's `CNI_ARGS` (Multus' `LoadK8sArgs`): namespace and name are
    /// required, the UID and sandbox ID may be empty.
    pub fn from_cni_args(args: &[(String, String)]) -> Result<Self> {
        let get = |key: &str| {
            args.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let pod = PodArgs {
            namespace: get("K8S_POD_NAMESPACE"),
            name: get("K8S_POD_NAME"),
            uid: get("K8S_POD_UID"),
            sandbox_id: get("K8S_POD_INFRA_CONTAINER_ID"),
        };
        if pod.namespace.is_empty() || pod.name.is_empty() {
            bail!("CNI_ARGS names no pod (K8S_POD_NAMESPACE and K8S_POD_NAME)");
        }
        Ok(pod)
    }

    /// What containerd passes (in CNI_ARGS) to the CNI plugin it calls, i.e. to Multus.
    pub fn runtime_args(&self) -> Vec<(String, String)> {
        vec![
            ("IgnoreUnknown".to_owned(), "1".to_owned()),
            ("K8S_POD_NAMESPACE".to_owned(), self.namespace.clone()),
            ("K8S_POD_NAME".to_owned(), self.name.clone()),
            ("K8S_POD_INFRA_CONTAINER_ID".to_owned(), self.sandbox_id.clone()),
            ("K8S_POD_UID".to_owned(), self.uid.clone()),
        ]
    }
}

/// How Multus is deployed; it changes what delegates see in `CNI_ARGS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MultusMode {
    /// The thin plugin, executed by the runtime: Multus merges the runtime's `CNI_ARGS` environment
    /// into its own five arguments, and since none of its own is empty every runtime argument is
    /// appended again (`IgnoreUnknown=true;K8S_POD_NAMESPACE=..;..;IgnoreUnknown=1;K8S_POD_NAMESPACE=..;..`).
    #[default]
    Thin,
    /// The thick plugin (multus-daemon): the daemon's environment has no `CNI_ARGS`, so delegates see
    /// exactly Multus' five arguments.
    Thick,
}

/// The `RuntimeConf` Multus builds for a delegate (`CreateCNIRuntimeConf` + `DelegateAdd`), when the
/// runtime passed the arguments containerd passes ([`PodArgs::runtime_args`]).
pub fn delegate_runtime_conf(
    delegate: &Delegate,
    pod: &PodArgs,
    netns: &str,
    ifname: &str,
    mode: MultusMode,
) -> Result<RuntimeConf> {
    delegate_runtime_conf_from(delegate, pod, &pod.runtime_args(), netns, ifname, mode)
}

/// [`delegate_runtime_conf`] with the runtime's actual `CNI_ARGS` pairs (what a Multus plugin
/// executed by a real runtime got).
pub fn delegate_runtime_conf_from(
    delegate: &Delegate,
    pod: &PodArgs,
    runtime_args: &[(String, String)],
    netns: &str,
    ifname: &str,
    mode: MultusMode,
) -> Result<RuntimeConf> {
    let mut args: Vec<(String, String)> = vec![
        ("IgnoreUnknown".to_owned(), "true".to_owned()),
        ("K8S_POD_NAMESPACE".to_owned(), pod.namespace.clone()),
        ("K8S_POD_NAME".to_owned(), pod.name.clone()),
        ("K8S_POD_INFRA_CONTAINER_ID".to_owned(), pod.sandbox_id.clone()),
        ("K8S_POD_UID".to_owned(), pod.uid.clone()),
    ];
    if mode == MultusMode::Thin {
        for (key, value) in runtime_args.iter().cloned() {
            match args.iter_mut().find(|(k, v)| *k == key && v.is_empty()) {
                Some(slot) if !value.is_empty() => slot.1 = value,
                _ => args.push((key, value)),
            }
        }
    }
    let mut capability_args = Map::new();
    let sel = &delegate.selection;
    if !delegate.master {
        if let Some(ports) = &sel.port_mappings {
            capability_args.insert("portMappings".to_owned(), Value::Array(ports.clone()));
        }
        if let Some(bw) = &sel.bandwidth {
            capability_args.insert("bandwidth".to_owned(), bw.clone());
        }
        if let Some(ips) = sel.ips.as_ref().filter(|ips| !ips.is_empty()) {
            capability_args.insert("ips".to_owned(), Value::from(ips.clone()));
        }
        if let Some(mac) = sel.mac.as_ref().filter(|m| !m.is_empty()) {
            capability_args.insert("mac".to_owned(), Value::String(mac.clone()));
        }
    }
    // The deprecated (since Multus 3.5) but still present CNI_ARGS form of the same requests.
    if let Some(mac) = sel.mac.as_ref().filter(|m| !m.is_empty()) {
        if !is_mac(mac) {
            bail!("DelegateAdd: failed to parse mac address {mac:?}");
        }
        args.push(("MAC".to_owned(), mac.clone()));
    }
    if let Some(ips) = &sel.ips {
        for ip in ips {
            let addr = ip.split('/').next().unwrap_or_default();
            let prefix_ok = ip.split_once('/').is_none_or(|(_, p)| p.parse::<u8>().is_ok());
            if addr.parse::<IpAddr>().is_err() || !prefix_ok {
                bail!("DelegateAdd: failed to parse IP address {ip:?}");
            }
        }
        args.push(("IP".to_owned(), ips.join(",")));
    }
    Ok(RuntimeConf {
        container_id: pod.sandbox_id.clone(),
        netns: netns.to_owned(),
        ifname: ifname.to_owned(),
        args,
        capability_args,
    })
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The message of Multus' `AddedInterface` event for one delegate's result: `Add <ifname> [<addresses>]
/// from <network>`.
pub fn added_interface_message(result: &Value, ifname: &str, network: &str) -> String {
    let ips: Vec<&str> = result
        .get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("address").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    format!("Add {ifname} [{}] from {network}", ips.join(" "))
}

/// One entry of the network-status annotation (NPWG `NetworkStatus`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtu: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
    #[serde(default)]
    pub dns: Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway: Vec<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn str_field<'a>(v: &'a Map<String, Value>, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn default_route_gateways(result: &Value) -> Vec<String> {
    result
        .get("routes")
        .and_then(Value::as_array)
        .map(|routes| {
            routes
                .iter()
                .filter(|r| {
                    let dst = r.get("dst").and_then(Value::as_str).unwrap_or_default();
                    dst.is_empty() || dst.starts_with("0.0.0.0/") || dst.starts_with("::/")
                })
                .filter_map(|r| r.get("gw").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn dns_of(result: &Value) -> Value {
    match result.get("dns") {
        Some(Value::Object(d)) => Value::Object(d.clone()),
        _ => Value::Object(Map::new()),
    }
}

fn ip_of(address: &str) -> String {
    address.split('/').next().unwrap_or(address).to_owned()
}

/// The network-status entries for one delegate's result (`CreateNetworkStatuses`).
pub fn network_statuses(result: &Value, network_name: &str, default_network: bool) -> Vec<NetworkStatus> {
    let ifaces = result_interfaces(result);
    let ips: Vec<&Map<String, Value>> = result
        .get("ips")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_object).collect())
        .unwrap_or_default();
    let gateways = default_route_gateways(result);
    let dns = dns_of(result);
    if ifaces.len() == 1 {
        let mut status = NetworkStatus {
            name: network_name.to_owned(),
            default: default_network,
            dns,
            ..NetworkStatus::default()
        };
        for iface in &ifaces {
            if !str_field(iface, "sandbox").is_empty() {
                status.interface = str_field(iface, "name").to_owned();
                status.mac = str_field(iface, "mac").to_owned();
                status.mtu = iface.get("mtu").and_then(Value::as_u64).unwrap_or(0);
            }
        }
        status.ips = ips.iter().map(|ip| ip_of(str_field(ip, "address"))).collect();
        status.gateway = gateways;
        return vec![status];
    }
    let gw_iface = if default_network {
        ips.iter()
            .find(|ip| ip.get("gateway").is_some() && ip.get("interface").is_some())
            .and_then(|ip| ip.get("interface").and_then(Value::as_u64))
    } else {
        None
    };
    let mut statuses: Vec<NetworkStatus> = Vec::new();
    let mut index_map = std::collections::HashMap::new();
    let (mut did_set_default, mut found_first) = (false, false);
    for (i, iface) in ifaces.iter().enumerate() {
        if str_field(iface, "sandbox").is_empty() {
            continue;
        }
        let mut is_default = false;
        if default_network && gw_iface == Some(i as u64) && !did_set_default {
            is_default = true;
            did_set_default = true;
        }
        if default_network && gw_iface.is_none() && !found_first {
            is_default = true;
            found_first = true;
        }
        index_map.insert(i as u64, statuses.len());
        statuses.push(NetworkStatus {
            name: network_name.to_owned(),
            default: is_default,
            interface: str_field(iface, "name").to_owned(),
            mac: str_field(iface, "mac").to_owned(),
            mtu: iface.get("mtu").and_then(Value::as_u64).unwrap_or(0),
            ips: Vec::new(),
            gateway: gateways.clone(),
            dns: dns.clone(),
        });
    }
    for ip in &ips {
        let address = ip_of(str_field(ip, "address"));
        match ip.get("interface").and_then(Value::as_u64) {
            Some(idx) => {
                if let Some(status) = index_map.get(&idx).and_then(|&n| statuses.get_mut(n)) {
                    status.ips.push(address);
                }
            }
            None => {
                if let Some(last) = statuses.last_mut() {
                    last.ips.push(address);
                }
            }
        }
    }
    statuses
}

/// The annotation value, formatted like Multus (`json.MarshalIndent` with four spaces).
pub fn render_network_status(statuses: &[NetworkStatus]) -> Result<String> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    statuses.serialize(&mut ser)?;
    Ok(String::from_utf8(out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_comma_form() {
        let nets = parse_network_selection("a, other/b@eth5 ,c@net9", "pods").unwrap();
        let got: Vec<(&str, &str, Option<&str>)> = nets
            .iter()
            .map(|n| {
                (
                    n.namespace.as_str(),
                    n.name.as_str(),
                    n.interface_request.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("pods", "a", None),
                ("other", "b", Some("eth5")),
                ("pods", "c", Some("net9"))
            ]
        );
    }

    #[test]
    fn rejects_bad_text_elements() {
        assert!(parse_network_selection("a/b/c", "ns").is_err());
        assert!(parse_network_selection("a@b@c", "ns").is_err());
        assert!(parse_network_selection("Upper", "ns").is_err());
        assert!(parse_network_selection("", "ns").is_err());
    }

    #[test]
    fn parses_the_json_form() {
        let nets = parse_network_selection(
            r#"[{"name":"m","interface":"data0","ips":["10.1.0.5/24"],"mac":"02:00:00:00:00:01","cni-args":{"x":1}},{"name":"n","namespace":"o"}]"#,
            "pods",
        )
        .unwrap();
        assert_eq!(nets[0].namespace, "pods");
        assert_eq!(nets[0].interface_request.as_deref(), Some("data0"));
        assert_eq!(nets[0].ips.as_deref(), Some(&["10.1.0.5/24".to_owned()][..]));
        assert_eq!(nets[1].namespace, "o");
    }

    fn delegate(master: bool, sel: NetworkSelectionElement) -> Delegate {
        Delegate::from_config(
            "ns/net".into(),
            &json!({"cniVersion":"1.0.0","plugins":[{"type":"macvlan"}]}),
            "net",
            master,
            sel,
        )
        .unwrap()
    }

    #[test]
    fn interface_names_follow_multus() {
        let master = delegate(true, NetworkSelectionElement::default());
        let extra = delegate(false, NetworkSelectionElement::default());
        let named = delegate(
            false,
            NetworkSelectionElement {
                interface_request: Some("data".into()),
                ..Default::default()
            },
        );
        assert_eq!(interface_name(&master, "eth0", 0), "eth0");
        assert_eq!(interface_name(&extra, "eth0", 2), "net2");
        assert_eq!(interface_name(&named, "eth0", 1), "data");
        assert_eq!(master.config.name, "net");
    }

    #[test]
    fn thin_mode_appends_the_runtime_args() {
        let pod = PodArgs {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u".into(),
            sandbox_id: "s".into(),
        };
        let d = delegate(
            false,
            NetworkSelectionElement {
                ips: Some(vec!["10.0.0.9/24".into()]),
                ..Default::default()
            },
        );
        let thin = delegate_runtime_conf(&d, &pod, "/var/run/netns/x", "net1", MultusMode::Thin).unwrap();
        assert_eq!(
            thin.cni_args(),
            "IgnoreUnknown=true;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=s;K8S_POD_UID=u;\
             IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=s;K8S_POD_UID=u;IP=10.0.0.9/24"
        );
        assert_eq!(thin.capability_args.get("ips"), Some(&json!(["10.0.0.9/24"])));
        let thick = delegate_runtime_conf(&d, &pod, "/var/run/netns/x", "net1", MultusMode::Thick).unwrap();
        assert!(
            thick
                .cni_args()
                .starts_with("IgnoreUnknown=true;K8S_POD_NAMESPACE=ns;")
        );
        assert!(!thick.cni_args().contains("IgnoreUnknown=1"));
    }

    #[test]
    fn runtime_cni_args_name_the_pod() {
        let args = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=s;K8S_POD_UID=u",
        )
        .unwrap();
        let pod = PodArgs::from_cni_args(&args).unwrap();
        assert_eq!(
            (
                pod.namespace.as_str(),
                pod.name.as_str(),
                pod.uid.as_str(),
                pod.sandbox_id.as_str()
            ),
            ("ns", "p", "u", "s")
        );
        assert!(parse_cni_args("A=1;B").is_err());
        assert!(PodArgs::from_cni_args(&parse_cni_args("K8S_POD_NAME=p").unwrap()).is_err());
    }

    #[test]
    fn cni_args_are_injected_into_every_plugin() {
        let sel = NetworkSelectionElement {
            cni_args: Some(json!({"k": "v"}).as_object().unwrap().clone()),
            ..Default::default()
        };
        let d = Delegate::from_config(
            "ns/n".into(),
            &json!({"cniVersion":"1.0.0","name":"n","plugins":[{"type":"a"},{"type":"b","args":{"cni":{"z":1}}}]}),
            "n",
            false,
            sel,
        )
        .unwrap();
        assert_eq!(d.config.plugins[0]["args"], json!({"cni": {"k": "v"}}));
        assert_eq!(d.config.plugins[1]["args"], json!({"cni": {"z": 1, "k": "v"}}));
    }

    #[test]
    fn network_status_of_a_single_interface() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "02:42:ac:11:00:02", "sandbox": "/var/run/netns/a"}],
            "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]
        });
        let st = network_statuses(&result, "ns/net", true);
        assert_eq!(st.len(), 1);
        assert_eq!(st[0].interface, "eth0");
        assert_eq!(st[0].ips, vec!["10.0.0.2".to_owned()]);
        assert_eq!(st[0].gateway, vec!["10.0.0.1".to_owned()]);
        assert!(st[0].default);
        let text = render_network_status(&st).unwrap();
        assert!(text.contains("\n    {\n        \"name\": \"ns/net\""), "{text}");
        assert!(text.contains("\"dns\": {}"));
    }

    #[test]
    fn network_status_of_several_interfaces() {
        let result = json!({
            "interfaces": [
                {"name": "veth0", "mac": "aa"},
                {"name": "eth0", "mac": "bb", "sandbox": "/x"},
                {"name": "eth1", "mac": "cc", "sandbox": "/x"}
            ],
            "ips": [
                {"address": "10.0.0.2/24", "interface": 1},
                {"address": "10.1.0.2/24", "gateway": "10.1.0.1", "interface": 2}
            ]
        });
        let st = network_statuses(&result, "n", true);
        assert_eq!(st.len(), 2);
        assert_eq!((st[0].interface.as_str(), st[0].default), ("eth0", false));
        assert_eq!((st[1].interface.as_str(), st[1].default), ("eth1", true));
        assert_eq!(st[1].ips, vec!["10.1.0.2".to_owned()]);
    }
}
