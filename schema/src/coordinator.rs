//! `SpiderCoordinator` (short name `scc`): cluster-wide defaults for the `coordinator` CNI plugin (routes,
//! veth, MAC prefix, rp_filter) plus the pod and service CIDRs the controller discovered. Upstream
//! Spiderpool's kind, unchanged. Only the instance named `default` is reconciled.
//!
//! [`CoordinatorSpec`] is also embedded in `SpiderMultusConfig.spec.coordinator`, where it overrides the
//! cluster defaults for one NetworkAttachmentDefinition.

use std::net::IpAddr;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use spiderpool_ipmath::{self as ipmath, IpFamily, IpNet};

use crate::validation::{Problem, Problems, Validate};

/// Name of the one SpiderCoordinator the controller reconciles (upstream's
/// `SPIDERPOOL_COORDINATOR_DEAFULT_NAME` default).
pub const DEFAULT_COORDINATOR_NAME: &str = "default";

/// The values `mode` accepts. `disable` is not in upstream's CRD enum, but it is the only spelling
/// upstream's coordinator plugin understands (upstream bug: the CRD says `disabled`, the plugin answers
/// "unknown tuneMode: disabled"), so both are accepted and mean the same.
pub const COORDINATOR_MODES: [&str; 5] = ["auto", "underlay", "overlay", "disabled", "disable"];

/// The values `podCIDRType` accepts.
pub const POD_CIDR_TYPES: [&str; 5] = ["auto", "cluster", "calico", "cilium", "none"];

/// `status.phase` once the pod and service CIDRs are known; the agent serves the coordinator
/// configuration only in this phase.
pub const PHASE_SYNCED: &str = "Synced";
/// `status.phase` while the pod or service CIDRs could not be discovered (see `status.reason`).
pub const PHASE_NOT_READY: &str = "NotReady";

/// Spec of a SpiderCoordinator, and the per-network override in `SpiderMultusConfig.spec.coordinator`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderCoordinator",
    plural = "spidercoordinators",
    shortname = "scc",
    category = "spiderpool",
    status = "SpiderCoordinatorStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "Cluster-wide defaults of the coordinator CNI plugin and the pod and service CIDRs it routes through the node; only the instance named `default` is used."
)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorSpec {
    /// How the coordinator plugin wires the pod: `auto` (default; `underlay` when the interface is the
    /// pod's first one or a `veth0` already exists, else `overlay`), `underlay` (a veth pair to the host
    /// carries service and node traffic), `overlay` (the underlay interface is an extra NIC next to an
    /// overlay CNI's `eth0`) or `disabled` (the plugin passes the result through untouched). `disable` is
    /// accepted as a synonym of `disabled`: it is what upstream's plugin actually understands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["auto", "underlay", "overlay", "disabled", "disable"], "default" = "auto"))]
    pub mode: Option<String>,

    /// Where the cluster's pod CIDRs are read from: `auto` (guess from the first CNI configuration on the
    /// node: Calico, Cilium, or the cluster's own CIDR), `cluster` (kubeadm-config or
    /// kube-controller-manager flags), `calico` (Calico IPPools), `cilium` (Cilium's configuration or pools)
    /// or `none`. Required in a SpiderCoordinator; in a SpiderMultusConfig it defaults to the
    /// SpiderCoordinator's value.
    #[serde(default, rename = "podCIDRType", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["auto", "cluster", "calico", "cilium", "none"]))]
    pub pod_cidr_type: Option<String>,

    /// Extra CIDRs (or single IPs, read as /32 or /128) that the pod reaches through the node's network
    /// stack instead of its underlay interface, e.g. `169.254.0.0/16` for NodeLocal DNSCache.
    #[serde(default, rename = "hijackCIDR", skip_serializing_if = "Vec::is_empty")]
    pub hijack_cidr: Vec<String>,

    /// Extra routes the coordinator adds in the pod, into the routing table of the interface being set up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_routes: Vec<PolicyRoute>,

    /// Fixed first two bytes of the pod interfaces' MAC addresses, e.g. `0a:1b`; the other four bytes come
    /// from the interface's IP, so a pod keeps its MAC when it keeps its IP. The first byte must be
    /// unicast (lowest bit 0). Empty leaves the MAC as the CNI set it.
    #[serde(default, rename = "podMACPrefix", skip_serializing_if = "Option::is_none")]
    pub pod_mac_prefix: Option<String>,

    /// Whether to move each extra interface's routes into its own policy routing table, so that replies
    /// leave through the interface the request came in on (multi-NIC pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub tune_pod_routes: Option<bool>,

    /// The pod interface that carries the default route, e.g. `net1`. Empty keeps it on the first
    /// interface (`eth0`).
    #[serde(
        default,
        rename = "podDefaultRouteNIC",
        skip_serializing_if = "Option::is_none"
    )]
    pub pod_default_route_nic: Option<String>,

    /// Host routing table used for the routes from the node to its local pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = 500))]
    pub host_rule_table: Option<i64>,

    /// `rp_filter` the coordinator sets inside the pod: 0, 1 or 2; a negative number leaves it as it is.
    #[serde(default, rename = "podRPFilter", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = 0))]
    pub pod_rp_filter: Option<i64>,

    /// `txqueuelen` of the pod interface; 0 leaves it as the kernel set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0), extend("default" = 0))]
    pub tx_queue_len: Option<i64>,

    /// An IPv4 link-local address, e.g. `169.254.100.1`, given to the pod's `veth0` (underlay mode) so
    /// that tools needing an address on it work. Empty gives it none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub veth_link_address: Option<String>,

    /// MTU of the veth pair the coordinator creates in underlay mode; 1500 when absent.
    #[serde(default, rename = "vethMTU", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub veth_mtu: Option<i64>,

    /// Deprecated and ignored: upstream removed it (use the IPAM setting `enableGatewayDetection`).
    /// Still accepted so that existing objects keep their shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect_gateway: Option<bool>,

    /// Deprecated and ignored: upstream removed it (use the IPAM setting `enableIPConflictDetection`).
    /// Still accepted so that existing objects keep their shape.
    #[serde(default, rename = "detectIPConflict", skip_serializing_if = "Option::is_none")]
    pub detect_ip_conflict: Option<bool>,

    /// Deprecated and ignored: upstream removed it (the agent tunes the node's `rp_filter` itself).
    /// Still accepted so that existing objects keep their shape.
    #[serde(default, rename = "hostRPFilter", skip_serializing_if = "Option::is_none")]
    pub host_rp_filter: Option<i64>,
}

/// A route the coordinator adds in the pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
pub struct PolicyRoute {
    /// Destination: a CIDR such as `10.20.0.0/16`, or a single IP (read as /32 or /128).
    pub dst: String,
    /// Next hop, an IP of the same family as `dst`.
    pub gw: String,
}

/// Status of a SpiderCoordinator, written by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpiderCoordinatorStatus {
    /// `Synced` when the pod and service CIDRs are known, `NotReady` otherwise (see `reason`). Pods that
    /// need the coordinator fail to start while it is `NotReady`.
    pub phase: String,

    /// Why the phase is `NotReady`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// The pod CIDRs of the cluster's overlay CNI (or the cluster), routed through the node.
    // `Option`: upstream's Go field has no `omitempty`, so stored objects may carry an empty list, which
    // must round-trip as such.
    #[serde(default, rename = "overlayPodCIDR", skip_serializing_if = "Option::is_none")]
    pub overlay_pod_cidr: Option<Vec<String>>,

    /// The cluster's service CIDRs, routed through the node so that pods reach Services via kube-proxy.
    #[serde(default, rename = "serviceCIDR", skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<Vec<String>>,
}

/// `mode`, parsed. Upstream's two spellings of "disabled" are one value here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CoordinatorMode {
    /// Underlay for the first interface (or when `veth0` exists), else overlay.
    Auto,
    /// Veth pair to the host for service and node traffic.
    Underlay,
    /// Extra NIC next to an overlay CNI.
    Overlay,
    /// Pass the CNI result through untouched.
    Disabled,
}

impl CoordinatorMode {
    /// Parses upstream's spellings; `disable` and `disabled` are both [`CoordinatorMode::Disabled`].
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "auto" => Some(Self::Auto),
            "underlay" => Some(Self::Underlay),
            "overlay" => Some(Self::Overlay),
            "disabled" | "disable" => Some(Self::Disabled),
            _ => None,
        }
    }

    /// The spelling the `coordinator` plugin understands (`disable`, not `disabled`).
    pub fn plugin_value(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Underlay => "underlay",
            Self::Overlay => "overlay",
            Self::Disabled => "disable",
        }
    }
}

impl CoordinatorSpec {
    /// `mode` parsed, `auto` when absent; `None` when it is not one of the accepted values.
    pub fn effective_mode(&self) -> Option<CoordinatorMode> {
        CoordinatorMode::parse(self.mode.as_deref().unwrap_or("auto"))
    }

    /// Upstream's single-object rules for a coordinator spec. `require_pod_cidr_type` is true for a
    /// SpiderCoordinator (upstream's webhook requires it there) and false inside a SpiderMultusConfig.
    pub fn check(&self, problems: &mut Problems, path: &str, require_pod_cidr_type: bool) {
        if let Some(mode) = &self.mode
            && CoordinatorMode::parse(mode).is_none()
        {
            problems.push(
                format!("{path}.mode"),
                format!("`{mode}` is not one of {}", COORDINATOR_MODES.join(", ")),
            );
        }
        match &self.pod_cidr_type {
            None if require_pod_cidr_type => problems.push(
                format!("{path}.podCIDRType"),
                format!("is required; set one of {}", POD_CIDR_TYPES.join(", ")),
            ),
            Some(t) if !POD_CIDR_TYPES.contains(&t.as_str()) => problems.push(
                format!("{path}.podCIDRType"),
                format!("`{t}` is not one of {}", POD_CIDR_TYPES.join(", ")),
            ),
            _ => {}
        }
        for (i, cidr) in self.hijack_cidr.iter().enumerate() {
            if let Err(message) = parse_ip_or_cidr(cidr) {
                problems.push(format!("{path}.hijackCIDR[{i}]"), message);
            }
        }
        for (i, route) in self.policy_routes.iter().enumerate() {
            let here = format!("{path}.policyRoutes[{i}]");
            let dst = parse_ip_or_cidr(&route.dst)
                .map_err(|message| problems.push(format!("{here}.dst"), message))
                .ok();
            match ipmath::parse_ip(&route.gw) {
                Err(e) => problems.push(format!("{here}.gw"), e.to_string()),
                Ok(gw) => {
                    if let Some(dst) = dst
                        && IpFamily::of(&gw) != IpFamily::of_net(&dst)
                    {
                        problems.push(
                            format!("{here}.gw"),
                            format!(
                                "`{}` is {} but dst `{}` is {}",
                                route.gw,
                                IpFamily::of(&gw),
                                route.dst,
                                IpFamily::of_net(&dst)
                            ),
                        );
                    }
                }
            }
        }
        if let Some(prefix) = &self.pod_mac_prefix
            && let Err(message) = check_mac_prefix(prefix)
        {
            problems.push(format!("{path}.podMACPrefix"), message);
        }
        if let Some(filter) = self.pod_rp_filter
            && filter > 2
        {
            problems.push(
                format!("{path}.podRPFilter"),
                format!("{filter} is not 0, 1 or 2 (or negative to leave rp_filter as it is)"),
            );
        }
        if let Some(len) = self.tx_queue_len
            && len < 0
        {
            problems.push(
                format!("{path}.txQueueLen"),
                format!("must not be negative, not {len}"),
            );
        }
        if let Some(mtu) = self.veth_mtu
            && mtu < 1
        {
            problems.push(
                format!("{path}.vethMTU"),
                format!("must be at least 1, not {mtu}"),
            );
        }
        if let Some(address) = self.veth_link_address.as_deref().filter(|a| !a.is_empty()) {
            match ipmath::parse_ip(address) {
                Err(e) => problems.push(format!("{path}.vethLinkAddress"), e.to_string()),
                Ok(IpAddr::V6(_)) => problems.push(
                    format!("{path}.vethLinkAddress"),
                    format!("`{address}` is IPv6; veth0 only gets an IPv4 link-local address such as 169.254.100.1"),
                ),
                Ok(IpAddr::V4(_)) => {}
            }
        }
    }
}

/// A CIDR, or a single IP read as a host route, as `hijackCIDR` and policy route destinations accept.
fn parse_ip_or_cidr(text: &str) -> Result<IpNet, String> {
    if text.contains('/') {
        ipmath::parse_cidr(text)
            .map(|net| net.trunc())
            .map_err(|e| e.to_string())
    } else {
        ipmath::parse_ip(text).map(IpNet::from).map_err(|e| e.to_string())
    }
}

/// Two hex bytes `xx:yy`, the first unicast (lowest bit 0). Empty means "no prefix".
fn check_mac_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    let bytes: Vec<Option<u8>> = prefix
        .split(':')
        .map(|part| {
            if part.len() == 2 {
                u8::from_str_radix(part, 16).ok()
            } else {
                None
            }
        })
        .collect();
    match bytes.as_slice() {
        [Some(first), Some(_)] if first & 1 == 0 => Ok(()),
        [Some(first), Some(_)] => Err(format!(
            "`{prefix}` is a multicast prefix (the lowest bit of {first:02x} is 1); use an even first byte such as 0a"
        )),
        _ => Err(format!("`{prefix}` is not a two-byte MAC prefix such as 0a:1b")),
    }
}

impl Validate for SpiderCoordinator {
    fn problems(&self) -> Vec<Problem> {
        let mut problems = Problems::new();
        self.spec.check(&mut problems, "spec", true);
        problems.into_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coordinator(yaml: &str) -> SpiderCoordinator {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const SEED: &str = "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderCoordinator\nmetadata:\n  finalizers:\n  - spiderpool.spidernet.io\n  name: default\nspec:\n  detectGateway: false\n  detectIPConflict: false\n  hijackCIDR:\n  - 169.254.0.0/16\n  podRPFilter: 0\n  hostRPFilter: 0\n  hostRuleTable: 500\n  mode: auto\n  podCIDRType: calico\n  podDefaultRouteNIC: \"\"\n  podMACPrefix: \"\"\n  tunePodRoutes: true\nstatus:\n  overlayPodCIDR:\n  - 10.244.64.0/18\n  phase: Synced\n  serviceCIDR:\n  - 10.233.0.0/18\n";

    #[test]
    fn seed_with_deprecated_fields_is_valid_and_keeps_them() {
        let c = coordinator(SEED);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.spec.detect_gateway, Some(false));
        assert_eq!(c.spec.host_rp_filter, Some(0));
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["spec"]["detectIPConflict"], serde_json::json!(false));
        assert_eq!(json["status"]["phase"], "Synced");
    }

    #[test]
    fn both_spellings_of_disabled_are_accepted() {
        for mode in ["disabled", "disable"] {
            let mut c = coordinator(SEED);
            c.spec.mode = Some(mode.into());
            assert_eq!(c.validate(), Ok(()), "{mode}");
            assert_eq!(c.spec.effective_mode(), Some(CoordinatorMode::Disabled));
            assert_eq!(CoordinatorMode::Disabled.plugin_value(), "disable");
        }
        assert_eq!(
            CoordinatorSpec::default().effective_mode(),
            Some(CoordinatorMode::Auto)
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let c = coordinator(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderCoordinator\nmetadata:\n  name: default\nspec:\n  mode: sideways\n  hijackCIDR: [169.254.0.0/16, 10.0.0.1, nonsense]\n  policyRoutes:\n  - {dst: 10.9.0.0/16, gw: fd00::1}\n  - {dst: 10.9.0.0/99, gw: 10.0.0.1}\n  podMACPrefix: 0b:00\n  podRPFilter: 3\n  txQueueLen: -1\n  vethMTU: 0\n  vethLinkAddress: fe80::1\n",
        );
        let paths: Vec<String> = c.validate().unwrap_err().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            vec![
                "spec.mode",
                "spec.podCIDRType",
                "spec.hijackCIDR[2]",
                "spec.policyRoutes[0].gw",
                "spec.policyRoutes[1].dst",
                "spec.podMACPrefix",
                "spec.podRPFilter",
                "spec.txQueueLen",
                "spec.vethMTU",
                "spec.vethLinkAddress",
            ]
        );
    }

    #[test]
    fn mac_prefix_rules() {
        assert!(check_mac_prefix("").is_ok());
        assert!(check_mac_prefix("0a:1b").is_ok());
        assert!(check_mac_prefix("02:ff").is_ok());
        assert!(check_mac_prefix("01:00").unwrap_err().contains("multicast"));
        for bad in ["0a", "0a:1b:2c", "zz:00", "a:1b", "0a-1b"] {
            assert!(check_mac_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn negative_rp_filter_means_leave_it() {
        let mut c = coordinator(SEED);
        c.spec.pod_rp_filter = Some(-1);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn crd_has_status_subresource_and_defaults() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(SpiderCoordinator::crd()).unwrap();
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["subresources"]["status"], serde_json::json!({}));
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(spec["mode"]["default"], "auto");
        assert_eq!(spec["hostRuleTable"]["default"], 500);
        assert!(
            spec["detectGateway"]["description"]
                .as_str()
                .unwrap()
                .starts_with("Deprecated")
        );
        assert_eq!(crd["spec"]["names"]["shortNames"], serde_json::json!(["scc"]));
    }
}
