//! The node daemon's IPAM API: what the `spiderpool` CNI plugin sends over the unix socket and what
//! it gets back.
//!
//! Paths and JSON shapes follow upstream Spiderpool's agent API (swagger 2.0, base path `/v1`,
//! reference section 1.3) so that upstream's own plugins could talk to our daemon; additions are
//! optional fields (an old client never sends them, an old server ignores them) and two new
//! endpoints for CNI 1.1's GC and STATUS. The version is in the path: an incompatible change gets
//! `/v2`, never a silent reinterpretation of `/v1`.
//!
//! Errors are a JSON [`ErrorResponse`] carrying the CNI error code the plugin should report, so the
//! plugin never has to guess from HTTP status codes.

use serde::{Deserialize, Serialize};

/// Where the daemon listens unless configured otherwise (upstream's path; the plugin's netconf key
/// `ipam_unix_socket_path` overrides it).
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/spidernet/spiderpool.sock";

/// `GET`: 200 when the daemon is ready to allocate (caches synced), 503 with an [`ErrorResponse`] otherwise.
pub const PATH_HEALTHY: &str = "/v1/ipam/healthy";
/// `POST` [`IpamAddArgs`] -> [`IpamAddResponse`]; `DELETE` [`IpamDelArgs`] -> 200.
pub const PATH_IP: &str = "/v1/ipam/ip";
/// `DELETE` [`IpamBatchDelArgs`] -> 200 (release every address of a pod, e.g. after an IP conflict).
pub const PATH_IPS: &str = "/v1/ipam/ips";
/// `POST` [`IpamGcArgs`] -> [`IpamGcResponse`] (CNI 1.1 GC: release what the runtime no longer knows).
pub const PATH_GC: &str = "/v1/ipam/gc";
/// `GET ?podNamespace=&podName=` -> [`WorkloadEndpointStatus`]; 404 when the pod holds nothing.
pub const PATH_WORKLOAD_ENDPOINT: &str = "/v1/workloadendpoint";
/// `GET` with a [`GetCoordinatorArgs`] JSON body (a GET with a body, as upstream's swagger declares
/// it) -> [`CoordinatorConfig`]: the `coordinator` plugin's cluster defaults for one pod.
pub const PATH_COORDINATOR_CONFIG: &str = "/v1/coordinator/config";

/// CNI ADD: allocate the addresses of one pod interface (upstream `IpamAddArgs`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IpamAddArgs {
    /// The sandbox's container id (`CNI_CONTAINERID`).
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name in the pod (`CNI_IFNAME`).
    pub if_name: String,
    /// Path of the pod's network namespace (`CNI_NETNS`).
    pub net_namespace: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    pub pod_namespace: String,
    /// `K8S_POD_NAME` from `CNI_ARGS`.
    pub pod_name: String,
    /// `K8S_POD_UID` from `CNI_ARGS` (empty when the runtime does not pass it).
    #[serde(rename = "podUID", default)]
    pub pod_uid: String,
    /// The netconf's `ipam.default_ipv4_ippool` (candidate rule 5).
    #[serde(rename = "defaultIPv4IPPool", default, skip_serializing_if = "Vec::is_empty")]
    pub default_ipv4_ippool: Vec<String>,
    /// The netconf's `ipam.default_ipv6_ippool` (candidate rule 5).
    #[serde(rename = "defaultIPv6IPPool", default, skip_serializing_if = "Vec::is_empty")]
    pub default_ipv6_ippool: Vec<String>,
    /// The netconf's `ipam.clean_gateway`: no default route through the gateway on this interface.
    #[serde(default)]
    pub clean_gateway: bool,
    /// The netconf's `ipam.match_master_subnet` (SR-IOV).
    #[serde(default)]
    pub match_master_subnet: bool,
    /// Addition: the network's `name` from the netconf, recorded with the allocation so that a
    /// CNI GC for one network never touches another network's attachments.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub net_name: String,
}

/// What one interface and family were given (upstream `IpConfig`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IpConfig {
    /// 4 or 6.
    pub version: u8,
    /// Address with the pool subnet's prefix length, e.g. `10.6.0.10/16`.
    pub address: String,
    /// Interface the address is for.
    pub nic: String,
    /// SpiderIPPool the address came from.
    #[serde(rename = "ipPool", default, skip_serializing_if = "String::is_empty")]
    pub ip_pool: String,
    /// The pool's gateway, if it has one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    /// VLAN id (0: untagged).
    #[serde(default)]
    pub vlan: i64,
    /// MAC address to give the interface, when the network provider chose one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Whether the plugin should check the gateway answers before succeeding.
    #[serde(default)]
    pub enable_gateway_detection: bool,
    /// Whether the plugin should check no one else answers for the address before succeeding.
    #[serde(rename = "enableIPConflictDetection", default)]
    pub enable_ip_conflict_detection: bool,
}

/// A route for one pod interface (upstream `Route`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Interface the route belongs to.
    pub if_name: String,
    /// Destination CIDR (`0.0.0.0/0` / `::/0` for a default route).
    pub dst: String,
    /// Next hop.
    pub gw: String,
}

/// DNS settings (upstream declares them; neither upstream nor we fill them).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Dns {
    /// Local domain.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
}

/// Answer to ADD (upstream `IpamAddResponse`): the addresses and routes of **every** interface the
/// pod holds so far; the plugin keeps those of its own interface.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IpamAddResponse {
    /// One entry per (interface, family).
    pub ips: Vec<IpConfig>,
    /// Routes per interface, default routes first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Never filled (as upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
}

/// CNI DEL of one interface (upstream `IpamDelArgs`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IpamDelArgs {
    /// The sandbox's container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name in the pod.
    pub if_name: String,
    /// Path of the pod's network namespace (may be empty on DEL).
    #[serde(default)]
    pub net_namespace: String,
    /// Pod namespace.
    pub pod_namespace: String,
    /// Pod name.
    pub pod_name: String,
    /// Pod UID (may be empty).
    #[serde(rename = "podUID", default)]
    pub pod_uid: String,
    /// Addition: the network's `name` from the netconf.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub net_name: String,
}

/// Release every address of a pod (upstream `IpamBatchDelArgs`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IpamBatchDelArgs {
    /// Set when the release follows a detected address conflict.
    #[serde(rename = "isReleaseConflictIPs", default)]
    pub is_release_conflict_ips: bool,
    /// The sandbox's container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Path of the pod's network namespace.
    #[serde(default)]
    pub net_namespace: String,
    /// Pod namespace.
    pub pod_namespace: String,
    /// Pod name.
    pub pod_name: String,
    /// Pod UID.
    #[serde(rename = "podUID", default)]
    pub pod_uid: String,
}

/// One attachment the runtime still knows (CNI 1.1 `cni.dev/valid-attachments`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// Container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    #[serde(rename = "ifname")]
    pub if_name: String,
}

/// CNI GC for one network: release what this node holds for `net_name` that is not in `valid`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IpamGcArgs {
    /// The network's `name` from the netconf.
    pub net_name: String,
    /// Attachments of that network the runtime still has.
    #[serde(default)]
    pub valid_attachments: Vec<Attachment>,
}

/// What a GC released.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IpamGcResponse {
    /// Attachments whose addresses were released.
    #[serde(default)]
    pub released: Vec<Attachment>,
}

/// One interface of a pod as recorded in its SpiderEndpoint (upstream `InterfaceDetail`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceDetail {
    /// Interface name.
    pub interface: String,
    /// IPv4 address (CIDR form).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ipv4: String,
    /// IPv6 address (CIDR form).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ipv6: String,
    /// MAC address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// VLAN id.
    #[serde(default)]
    pub vlan: i64,
    /// IPv4 pool.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ipv4_pool: String,
    /// IPv6 pool.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ipv6_pool: String,
    /// IPv4 gateway.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ipv4_gateway: String,
    /// IPv6 gateway.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ipv6_gateway: String,
    /// Routes of the interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

/// What a pod holds (upstream `WorkloadEndpointStatus`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEndpointStatus {
    /// Pod namespace.
    pub pod_namespace: String,
    /// Pod name.
    pub pod_name: String,
    /// Pod UID.
    #[serde(rename = "podUID")]
    pub pod_uid: String,
    /// Node.
    pub node: String,
    /// Interfaces.
    pub interfaces: Vec<InterfaceDetail>,
}

/// Which pod the `coordinator` plugin asks its configuration for (upstream `GetCoordinatorArgs`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GetCoordinatorArgs {
    /// `K8S_POD_NAME` from `CNI_ARGS`.
    #[serde(default)]
    pub pod_name: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    #[serde(default)]
    pub pod_namespace: String,
}

/// A route the coordinator adds in the pod (upstream `CoordinatorRoute`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct CoordinatorRoute {
    /// Destination CIDR (or single IP).
    #[serde(default)]
    pub dst: String,
    /// Next hop.
    #[serde(default)]
    pub gw: String,
}

/// The cluster's defaults for the `coordinator` plugin as they apply to one pod (upstream
/// `CoordinatorConfig`): the `default` SpiderCoordinator's spec and status, with the pod's
/// `ipam.spidernet.io/default-route-nic` annotation in `podDefaultRouteNIC`. Netconf values override
/// these field by field. `mode`, `overlayPodCIDR`, `serviceCIDR` and `tunePodRoutes` are always
/// sent (upstream's plugin requires them); zero numbers and empty strings are left out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorConfig {
    /// `auto`, `underlay`, `overlay` or `disable` (the spelling upstream's plugin understands).
    pub mode: String,
    /// The overlay CNI's pod CIDRs (SpiderCoordinator status).
    #[serde(rename = "overlayPodCIDR", default, deserialize_with = "null_as_empty")]
    pub overlay_pod_cidr: Vec<String>,
    /// The cluster's service CIDRs (SpiderCoordinator status).
    #[serde(rename = "serviceCIDR", default, deserialize_with = "null_as_empty")]
    pub service_cidr: Vec<String>,
    /// Extra CIDRs routed through the node.
    #[serde(rename = "hijackCIDR", default, deserialize_with = "null_as_empty")]
    pub hijack_cidr: Vec<String>,
    /// Extra routes in the pod.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub policy_routes: Vec<CoordinatorRoute>,
    /// First two bytes of pod MAC addresses.
    #[serde(rename = "podMACPrefix", default, skip_serializing_if = "String::is_empty")]
    pub pod_mac_prefix: String,
    /// Move extra interfaces' routes into their own tables.
    #[serde(default)]
    pub tune_pod_routes: bool,
    /// The pod interface carrying the default route.
    #[serde(
        rename = "podDefaultRouteNIC",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub pod_default_route_nic: String,
    /// Host routing table for the routes to local pods.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub host_rule_table: i64,
    /// `rp_filter` in the pod; negative leaves it.
    #[serde(rename = "podRPFilter", default, skip_serializing_if = "is_zero")]
    pub pod_rp_filter: i64,
    /// Transmit queue length of the pod interface; 0 leaves it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tx_queue_len: i64,
    /// Link-local IPv4 address for `veth0`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub veth_link_address: String,
    /// MTU of the veth pair.
    #[serde(rename = "vethMTU", default, skip_serializing_if = "is_zero")]
    pub veth_mtu: i64,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// Upstream's agent writes an absent list as `null`.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// Every non-2xx answer's body: a CNI error the plugin reports as is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ErrorResponse {
    /// CNI error code (see [`codes`]).
    pub code: u32,
    /// Short message naming what failed.
    pub msg: String,
    /// Longer details (the cause chain).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// CNI error codes (CNI spec section "Error") and the ones this project adds (>= 100).
pub mod codes {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (CNI_COMMAND, CNI_CONTAINERID, ...).
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Try again later (transient: the API server is unreachable, the daemon is starting).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The plugin is not available (STATUS: the daemon cannot serve ADDs).
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// Bad pod input: a malformed or contradictory `ipam.spidernet.io/*` annotation.
    pub const INVALID_POD_ANNOTATION: u32 = 100;
    /// No pool is a candidate for this pod interface (selection rules or filters left none).
    pub const NO_CANDIDATE_POOL: u32 = 101;
    /// Every candidate pool is exhausted.
    pub const POOLS_EXHAUSTED: u32 = 102;
    /// The pod does not exist or is not alive.
    pub const POD_NOT_ALIVE: u32 = 103;
    /// Releasing a StatefulSet's or VM's retained addresses was refused.
    pub const RELEASE_FORBIDDEN: u32 = 104;
    /// Another host already answers for the address given to the pod (IP-conflict detection).
    pub const IP_CONFLICT: u32 = 105;
    /// The pod's gateway did not answer (gateway detection).
    pub const GATEWAY_UNREACHABLE: u32 = 106;
    /// Internal error of the daemon.
    pub const INTERNAL: u32 = 999;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_args_use_upstreams_json_names() {
        let args = IpamAddArgs {
            container_id: "c1".into(),
            if_name: "eth0".into(),
            net_namespace: "/var/run/netns/x".into(),
            pod_namespace: "ns".into(),
            pod_name: "p".into(),
            pod_uid: "u".into(),
            default_ipv4_ippool: vec!["v4".into()],
            default_ipv6_ippool: vec![],
            clean_gateway: true,
            match_master_subnet: false,
            net_name: String::new(),
        };
        let json = serde_json::to_value(&args).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "containerID": "c1", "ifName": "eth0", "netNamespace": "/var/run/netns/x",
                "podNamespace": "ns", "podName": "p", "podUID": "u",
                "defaultIPv4IPPool": ["v4"], "cleanGateway": true, "matchMasterSubnet": false
            })
        );
    }

    #[test]
    fn coordinator_config_has_upstreams_shape() {
        let config = CoordinatorConfig {
            mode: "auto".into(),
            hijack_cidr: vec!["169.254.0.0/16".into()],
            tune_pod_routes: true,
            host_rule_table: 500,
            ..CoordinatorConfig::default()
        };
        assert_eq!(
            serde_json::to_value(&config).unwrap(),
            serde_json::json!({
                "mode": "auto", "overlayPodCIDR": [], "serviceCIDR": [], "hijackCIDR": ["169.254.0.0/16"],
                "policyRoutes": [], "tunePodRoutes": true, "hostRuleTable": 500
            })
        );
        let upstream: CoordinatorConfig = serde_json::from_str(
            r#"{"mode":"underlay","overlayPodCIDR":["10.244.0.0/16"],"serviceCIDR":["10.96.0.0/12"],
            "hijackCIDR":null,"policyRoutes":null,"podMACPrefix":"0a:1b","tunePodRoutes":false,
            "podDefaultRouteNIC":"net1","hostRuleTable":600,"podRPFilter":2,"txQueueLen":1000,
            "vethLinkAddress":"169.254.100.1","vethMTU":1400}"#,
        )
        .unwrap();
        assert_eq!(upstream.pod_default_route_nic, "net1");
        assert_eq!((upstream.veth_mtu, upstream.pod_rp_filter), (1400, 2));
        let args: GetCoordinatorArgs =
            serde_json::from_str(r#"{"podName":"p","podNamespace":"ns"}"#).unwrap();
        assert_eq!((args.pod_namespace.as_str(), args.pod_name.as_str()), ("ns", "p"));
    }

    #[test]
    fn upstream_add_response_decodes() {
        let text = r#"{"ips":[{"version":4,"address":"10.6.0.10/16","nic":"eth0","ipPool":"p4",
            "gateway":"10.6.0.1","vlan":0,"enableGatewayDetection":false,"enableIPConflictDetection":false}],
            "routes":[{"ifName":"eth0","dst":"0.0.0.0/0","gw":"10.6.0.1"}]}"#;
        let resp: IpamAddResponse = serde_json::from_str(text).unwrap();
        assert_eq!(resp.ips[0].ip_pool, "p4");
        assert_eq!(resp.routes[0].if_name, "eth0");
    }
}
