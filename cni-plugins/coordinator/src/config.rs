//! The coordinator's configuration: the netconf keys upstream's plugin accepts (reference 6.2), merged
//! field by field over the cluster defaults the node daemon answers (`GET /v1/coordinator/config`):
//! a value the netconf gives wins, an absent or empty one takes the daemon's.
//!
//! Where we differ from upstream: `disabled` is accepted as well as `disable` (upstream's CRD says
//! the one, its plugin only understands the other, reference 13.4); a bare IP in a CIDR list is a
//! host route (upstream fails to parse it); the log level defaults to INFO (upstream: DEBUG); the log
//! file must lie in the log directory (see `spiderpool_cni_common::confine`).

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::Value;
use spiderpool_agent_api::CoordinatorConfig;
use spiderpool_cni_common::cni::SpecVersion;
use spiderpool_cni_common::log::{LogConfig, LogLevel};
use spiderpool_cni_common::netconf::{self, ConfigError, Section};
use spiderpool_ipmath::{IpFamily, IpNet};

/// Upstream's log file.
pub const DEFAULT_LOG_FILE_PATH: &str = "/var/log/spidernet/coordinator.log";
/// The interface the runtime gives the pod's first network (upstream's `podDefaultCniNic` default).
pub const DEFAULT_FIRST_NIC: &str = "eth0";
/// Host routing table for the routes to local pods (upstream's default).
pub const DEFAULT_HOST_RULE_TABLE: u32 = 500;
/// MTU of the veth pair (upstream's default).
pub const DEFAULT_VETH_MTU: u32 = 1500;

/// How the plugin wires the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Underlay for the first interface or when `veth0` exists, else overlay.
    Auto,
    /// A veth pair to the host carries node and service traffic.
    Underlay,
    /// The interface is an extra NIC next to an overlay CNI's `eth0`.
    Overlay,
    /// Pass the result through untouched.
    Disable,
}

impl Mode {
    /// Upstream's spellings; `disabled` (the CRD's) is `disable` too.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "auto" => Some(Self::Auto),
            "underlay" => Some(Self::Underlay),
            "overlay" => Some(Self::Overlay),
            "disable" | "disabled" => Some(Self::Disable),
            _ => None,
        }
    }
}

/// A route the coordinator adds in the pod (`policyRoutes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyRoute {
    /// Destination.
    pub destination: IpNet,
    /// Next hop, of the destination's family.
    pub gateway: IpAddr,
}

/// The resolved configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `cniVersion`.
    pub cni_version: SpecVersion,
    /// `name`.
    pub name: String,
    /// `prevResult`, printed back unchanged.
    pub prev_result: Option<Value>,
    /// `mode`.
    pub mode: Mode,
    /// `tunePodRoutes`.
    pub tune_pod_routes: bool,
    /// `podDefaultRouteNic` (netconf) or the daemon's `podDefaultRouteNIC` (the pod's annotation or
    /// the SpiderCoordinator's); empty keeps the default route where it is.
    pub pod_default_route_nic: String,
    /// `podDefaultCniNic`: the pod's first interface.
    pub first_nic: String,
    /// `podMACPrefix`: the first two bytes of the pod interface's MAC.
    pub mac_prefix: Option<[u8; 2]>,
    /// `overlayPodCIDR`, `serviceCIDR` and `hijackCIDR`, in that order: routed through the node.
    pub hijack: Vec<IpNet>,
    /// `policyRoutes`.
    pub policy_routes: Vec<PolicyRoute>,
    /// `hostRuleTable`.
    pub host_rule_table: u32,
    /// `podRPFilter`: 0, 1 or 2; `None` leaves the pod's `rp_filter` alone.
    pub pod_rp_filter: Option<u8>,
    /// `txQueueLen`: `None` (0) leaves it.
    pub tx_queue_len: Option<u32>,
    /// `vethLinkAddress`: an IPv4 address for the pod's `veth0`.
    pub veth_link_address: Option<std::net::Ipv4Addr>,
    /// `vethMTU`.
    pub veth_mtu: u32,
    /// `logOptions`.
    pub log: LogConfig,
}

/// The netconf as given, before the daemon's defaults (only what the plugin needs before it can ask
/// the daemon: the version for errors, the log settings, the mode for DEL).
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    /// `cniVersion`, `name`, `prevResult` and the whole object.
    pub top: netconf::Top,
    /// `logOptions`.
    pub log: LogConfig,
}

/// Parses stdin: the top level and `logOptions` (the rest is read by [`resolve`]).
pub fn parse_netconf(stdin: &[u8]) -> Result<NetConf, ConfigError> {
    let top = netconf::parse_top(stdin)?;
    let keys = Section::new(&top.object, "");
    let mut log = LogConfig::in_file(DEFAULT_LOG_FILE_PATH);
    if let Some(options) = keys.object("logOptions")? {
        let options = Section::new(options, "logOptions.");
        if let Some(level) = options.string("logLevel")?.filter(|level| !level.is_empty()) {
            log.level = LogLevel::parse(&level, &options.key("logLevel"))?;
        }
        if let Some(file) = options.string("logFile")?.filter(|file| !file.is_empty()) {
            log.file_path = PathBuf::from(file);
        }
        for (key, field) in [
            ("logMaxSize", &mut log.max_size_mb),
            ("logMaxAge", &mut log.max_age_days),
            ("logMaxCount", &mut log.max_count),
        ] {
            if let Some(value) = options.count(key)?.filter(|value| *value > 0) {
                *field = value;
            }
        }
    }
    Ok(NetConf { top, log })
}

/// The netconf's `mode` and `hostRuleTable` alone (DEL uses them when the daemon cannot answer).
pub fn local_mode_and_table(conf: &NetConf) -> Result<(Option<Mode>, Option<u32>), ConfigError> {
    let keys = Section::new(&conf.top.object, "");
    Ok((mode(&keys)?, host_rule_table(&keys)?))
}

fn mode(keys: &Section<'_>) -> Result<Option<Mode>, ConfigError> {
    match keys.string("mode")?.filter(|mode| !mode.is_empty()) {
        None => Ok(None),
        Some(text) => Mode::parse(&text).map(Some).ok_or_else(|| {
            ConfigError::invalid(
                "mode",
                format!("{text:?} is not one of auto, underlay, overlay, disable"),
            )
        }),
    }
}

fn host_rule_table(keys: &Section<'_>) -> Result<Option<u32>, ConfigError> {
    keys.integer("hostRuleTable")?
        .map(|table| table_number(table, "hostRuleTable"))
        .transpose()
}

/// A routing table the coordinator may use: not 0 (unspecified) and not the kernel's own 253-255.
fn table_number(value: i64, key: &str) -> Result<u32, ConfigError> {
    match u32::try_from(value) {
        Ok(table) if table != 0 && !(253..=255).contains(&table) => Ok(table),
        _ => Err(ConfigError::invalid(
            key,
            format!("{value} is not a usable routing table (1-252 or above 255)"),
        )),
    }
}

/// Merges the netconf over the daemon's answer and checks every value.
pub fn resolve(conf: &NetConf, daemon: &CoordinatorConfig) -> Result<Config, ConfigError> {
    let keys = Section::new(&conf.top.object, "");
    let mode = match mode(&keys)? {
        Some(mode) => mode,
        None => Mode::parse(&daemon.mode).ok_or_else(|| {
            ConfigError::invalid(
                "mode",
                format!(
                    "the node daemon's mode {:?} is not one of auto, underlay, overlay, disable",
                    daemon.mode
                ),
            )
        })?,
    };
    let mac_text = keys
        .string("podMACPrefix")?
        .filter(|prefix| !prefix.is_empty())
        .unwrap_or_else(|| daemon.pod_mac_prefix.clone());
    let mac_prefix = if mac_text.is_empty() {
        None
    } else {
        Some(mac_prefix(&mac_text).map_err(|reason| ConfigError::invalid("podMACPrefix", reason))?)
    };
    let list = |key: &str, fallback: &[String]| -> Result<Vec<IpNet>, ConfigError> {
        let given = keys.strings(key)?;
        let texts = if given.is_empty() {
            fallback.to_vec()
        } else {
            given
        };
        texts
            .iter()
            .map(|text| cidr(text).map_err(|reason| ConfigError::invalid(key, reason)))
            .collect()
    };
    let mut hijack = list("overlayPodCIDR", &daemon.overlay_pod_cidr)?;
    hijack.extend(list("serviceCIDR", &daemon.service_cidr)?);
    hijack.extend(list("hijackCIDR", &daemon.hijack_cidr)?);
    let routes_given = keys.array("policyRoutes")?;
    let policy_routes = if routes_given.is_empty() {
        daemon
            .policy_routes
            .iter()
            .map(|route| policy_route(&route.dst, &route.gw))
            .collect::<Result<Vec<_>, _>>()
    } else {
        routes_given
            .iter()
            .map(|route| {
                let dst = route.get("dst").and_then(Value::as_str).unwrap_or_default();
                let gw = route.get("gw").and_then(Value::as_str).unwrap_or_default();
                policy_route(dst, gw)
            })
            .collect()
    }
    .map_err(|reason| ConfigError::invalid("policyRoutes", reason))?;
    let rp_filter = keys.integer("podRPFilter")?.unwrap_or(daemon.pod_rp_filter);
    let pod_rp_filter = match rp_filter {
        value if value < 0 => None,
        value @ 0..=2 => u8::try_from(value).ok(),
        value => {
            return Err(ConfigError::invalid(
                "podRPFilter",
                format!("{value} is not 0, 1 or 2 (or negative to leave rp_filter alone)"),
            ));
        }
    };
    let host_rule_table = match host_rule_table(&keys)? {
        Some(table) => table,
        None if daemon.host_rule_table > 0 => table_number(daemon.host_rule_table, "hostRuleTable")?,
        None => DEFAULT_HOST_RULE_TABLE,
    };
    let tx_queue_len = keys.integer("txQueueLen")?.unwrap_or(daemon.tx_queue_len);
    let tx_queue_len = match u32::try_from(tx_queue_len) {
        Ok(0) => None,
        Ok(len) => Some(len),
        Err(_) => {
            return Err(ConfigError::invalid(
                "txQueueLen",
                format!("{tx_queue_len} is not a queue length"),
            ));
        }
    };
    let veth_text = keys
        .string("vethLinkAddress")?
        .filter(|address| !address.is_empty())
        .unwrap_or_else(|| daemon.veth_link_address.clone());
    let veth_link_address = if veth_text.is_empty() {
        None
    } else {
        Some(veth_text.trim().parse().map_err(|_| {
            ConfigError::invalid(
                "vethLinkAddress",
                format!("{veth_text:?} is not an IPv4 address (e.g. 169.254.100.1)"),
            )
        })?)
    };
    let veth_mtu = match keys.integer("vethMTU")? {
        Some(mtu) => positive_mtu(mtu)?,
        None if daemon.veth_mtu > 0 => positive_mtu(daemon.veth_mtu)?,
        None => DEFAULT_VETH_MTU,
    };
    Ok(Config {
        cni_version: conf.top.cni_version,
        name: conf.top.name.clone(),
        prev_result: conf.top.prev_result.clone(),
        mode,
        tune_pod_routes: keys.bool("tunePodRoutes")?.unwrap_or(daemon.tune_pod_routes),
        pod_default_route_nic: keys
            .string("podDefaultRouteNic")?
            .filter(|nic| !nic.is_empty())
            .unwrap_or_else(|| daemon.pod_default_route_nic.clone()),
        first_nic: keys
            .string("podDefaultCniNic")?
            .filter(|nic| !nic.is_empty())
            .unwrap_or_else(|| DEFAULT_FIRST_NIC.to_owned()),
        mac_prefix,
        hijack,
        policy_routes,
        host_rule_table,
        pod_rp_filter,
        tx_queue_len,
        veth_link_address,
        veth_mtu,
        log: conf.log.clone(),
    })
}

fn positive_mtu(mtu: i64) -> Result<u32, ConfigError> {
    u32::try_from(mtu)
        .ok()
        .filter(|mtu| (68..=65535).contains(mtu))
        .ok_or_else(|| ConfigError::invalid("vethMTU", format!("{mtu} is not an MTU (68-65535)")))
}

/// A CIDR (host bits dropped), or a bare IP as a host route.
fn cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if text.contains('/') {
        text.parse::<IpNet>()
            .map(|net| net.trunc())
            .map_err(|_| format!("{text:?} is not a CIDR"))
    } else {
        text.parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("{text:?} is neither a CIDR nor an IP"))
    }
}

fn policy_route(dst: &str, gw: &str) -> Result<PolicyRoute, String> {
    let destination = cidr(dst)?;
    let gateway: IpAddr = gw
        .trim()
        .parse()
        .map_err(|_| format!("gw {gw:?} of dst {dst:?} is not an IP"))?;
    if IpFamily::of(&gateway) != IpFamily::of_net(&destination) {
        return Err(format!("dst {dst:?} and gw {gw:?} are of different families"));
    }
    Ok(PolicyRoute { destination, gateway })
}

/// `xx:yy` (or `xx-yy`), hex, the first byte unicast (its lowest bit 0).
fn mac_prefix(text: &str) -> Result<[u8; 2], String> {
    let bytes: Vec<Option<u8>> = text
        .split([':', '-'])
        .map(|part| {
            (part.len() == 2)
                .then(|| u8::from_str_radix(part, 16).ok())
                .flatten()
        })
        .collect();
    match bytes.as_slice() {
        [Some(first), Some(second)] if first & 1 == 0 => Ok([*first, *second]),
        [Some(_), Some(_)] => Err(format!(
            "{text:?} is a multicast prefix (the first byte's lowest bit is 1); use an even first byte such as 0a"
        )),
        _ => Err(format!("{text:?} is not two hex bytes such as 0a:1b")),
    }
}

#[cfg(test)]
mod tests {
    use spiderpool_agent_api::CoordinatorRoute;

    use super::*;

    fn daemon() -> CoordinatorConfig {
        CoordinatorConfig {
            mode: "auto".into(),
            overlay_pod_cidr: vec!["10.244.0.0/16".into()],
            service_cidr: vec!["10.96.0.0/12".into()],
            hijack_cidr: vec!["169.254.0.0/16".into()],
            policy_routes: vec![CoordinatorRoute {
                dst: "10.9.0.0/16".into(),
                gw: "10.6.0.1".into(),
            }],
            pod_mac_prefix: String::new(),
            tune_pod_routes: true,
            pod_default_route_nic: "net1".into(),
            host_rule_table: 500,
            pod_rp_filter: 0,
            tx_queue_len: 0,
            veth_link_address: String::new(),
            veth_mtu: 1500,
        }
    }

    fn conf(extra: Value) -> NetConf {
        let mut value = serde_json::json!({
            "cniVersion": "1.0.0", "name": "macvlan-ens192", "type": "coordinator",
            "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.6.0.10/16"}]}
        });
        if let (Some(object), Value::Object(extra)) = (value.as_object_mut(), extra) {
            object.extend(extra);
        }
        parse_netconf(value.to_string().as_bytes()).unwrap()
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn the_daemons_defaults_apply_when_the_netconf_is_silent() {
        let config = resolve(&conf(serde_json::json!({})), &daemon()).unwrap();
        assert_eq!(config.mode, Mode::Auto);
        assert!(config.tune_pod_routes);
        assert_eq!(config.pod_default_route_nic, "net1");
        assert_eq!(config.first_nic, "eth0");
        assert_eq!(
            config.hijack,
            [net("10.244.0.0/16"), net("10.96.0.0/12"), net("169.254.0.0/16")]
        );
        assert_eq!(
            config.policy_routes,
            [PolicyRoute {
                destination: net("10.9.0.0/16"),
                gateway: "10.6.0.1".parse().unwrap()
            }]
        );
        assert_eq!(
            (
                config.host_rule_table,
                config.pod_rp_filter,
                config.tx_queue_len,
                config.veth_mtu
            ),
            (500, Some(0), None, 1500)
        );
        assert_eq!((config.mac_prefix, config.veth_link_address), (None, None));
        assert_eq!(config.log, LogConfig::in_file(DEFAULT_LOG_FILE_PATH));
        assert!(config.prev_result.is_some());
    }

    #[test]
    fn netconf_values_win_field_by_field() {
        let config = resolve(
            &conf(serde_json::json!({
                "mode": "underlay", "tunePodRoutes": false, "podDefaultRouteNic": "net2",
                "podDefaultCniNic": "net0", "podMACPrefix": "0a:1b",
                "overlayPodCIDR": [], "serviceCIDR": ["10.100.0.0/16"], "hijackCIDR": ["10.0.0.1"],
                "policyRoutes": [{"dst": "fd00:9::/64", "gw": "fd00:6::1"}],
                "hostRuleTable": 600, "podRPFilter": -1, "txQueueLen": 3000,
                "vethLinkAddress": "169.254.100.1", "vethMTU": 1400,
                "hostRPFilter": 1, "multusNicPrefix": "net", "detectGateway": true,
                "logOptions": {"logLevel": "debug", "logFile": "/var/log/spidernet/c.log", "logMaxSize": 5}
            })),
            &daemon(),
        )
        .unwrap();
        assert_eq!(config.mode, Mode::Underlay);
        assert!(!config.tune_pod_routes);
        assert_eq!(
            (config.pod_default_route_nic.as_str(), config.first_nic.as_str()),
            ("net2", "net0")
        );
        assert_eq!(config.mac_prefix, Some([0x0a, 0x1b]));
        // An empty overlayPodCIDR takes the daemon's, as upstream.
        assert_eq!(
            config.hijack,
            [net("10.244.0.0/16"), net("10.100.0.0/16"), net("10.0.0.1/32")]
        );
        assert_eq!(config.policy_routes[0].destination, net("fd00:9::/64"));
        assert_eq!(
            (
                config.host_rule_table,
                config.pod_rp_filter,
                config.tx_queue_len,
                config.veth_mtu
            ),
            (600, None, Some(3000), 1400)
        );
        assert_eq!(config.veth_link_address, Some("169.254.100.1".parse().unwrap()));
        assert_eq!(config.log.level, LogLevel::Debug);
        assert_eq!(config.log.file_path, PathBuf::from("/var/log/spidernet/c.log"));
        assert_eq!(config.log.max_size_mb, 5);
    }

    #[test]
    fn both_spellings_of_disabled_mean_disable() {
        for mode in ["disable", "disabled"] {
            let config = resolve(&conf(serde_json::json!({ "mode": mode })), &daemon()).unwrap();
            assert_eq!(config.mode, Mode::Disable);
            let from_daemon = CoordinatorConfig {
                mode: mode.into(),
                ..daemon()
            };
            assert_eq!(
                resolve(&conf(serde_json::json!({})), &from_daemon).unwrap().mode,
                Mode::Disable
            );
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        for (extra, key) in [
            (serde_json::json!({"mode": "sideways"}), "mode:"),
            (serde_json::json!({"podMACPrefix": "0b:00"}), "podMACPrefix:"),
            (serde_json::json!({"podMACPrefix": "0a"}), "podMACPrefix:"),
            (
                serde_json::json!({"serviceCIDR": ["10.0.0.0/99"]}),
                "serviceCIDR:",
            ),
            (serde_json::json!({"hijackCIDR": ["nonsense"]}), "hijackCIDR:"),
            (
                serde_json::json!({"policyRoutes": [{"dst": "10.9.0.0/16", "gw": "fd00::1"}]}),
                "policyRoutes:",
            ),
            (
                serde_json::json!({"policyRoutes": [{"dst": "10.9.0.0/16"}]}),
                "policyRoutes:",
            ),
            (serde_json::json!({"hostRuleTable": 254}), "hostRuleTable:"),
            (serde_json::json!({"hostRuleTable": -1}), "hostRuleTable:"),
            (serde_json::json!({"hostRuleTable": 1e30}), "hostRuleTable:"),
            (serde_json::json!({"podRPFilter": 3}), "podRPFilter:"),
            (serde_json::json!({"txQueueLen": -5}), "txQueueLen:"),
            (
                serde_json::json!({"vethLinkAddress": "fe80::1"}),
                "vethLinkAddress:",
            ),
            (serde_json::json!({"vethMTU": 0}), "vethMTU:"),
            (serde_json::json!({"vethMTU": 9_999_999_999_i64}), "vethMTU:"),
            (serde_json::json!({"tunePodRoutes": "yes"}), "tunePodRoutes:"),
        ] {
            let error = resolve(&conf(extra.clone()), &daemon()).unwrap_err();
            assert!(error.to_string().starts_with(key), "{extra} -> {error}");
            assert_eq!(error.to_cni().code, 7);
        }
        let bad_log = serde_json::json!({"cniVersion": "1.0.0", "logOptions": {"logLevel": "LOUD"}});
        let error = parse_netconf(bad_log.to_string().as_bytes()).unwrap_err();
        assert!(error.to_string().starts_with("logOptions.logLevel:"), "{error}");
    }

    #[test]
    fn del_reads_mode_and_table_without_the_daemon() {
        assert_eq!(
            local_mode_and_table(&conf(
                serde_json::json!({"mode": "overlay", "hostRuleTable": 600})
            ))
            .unwrap(),
            (Some(Mode::Overlay), Some(600))
        );
        assert_eq!(
            local_mode_and_table(&conf(serde_json::json!({}))).unwrap(),
            (None, None)
        );
    }
}
