//! The `spiderpool-conf` ConfigMap's `conf.yml` (upstream's `SpiderpoolConfigmapConfig`): the settings
//! the chart gives every component, read at start by the agent and the operator (`--config-path`).
//!
//! Every key is optional: a key that is absent leaves the component's own default (or its flag) in
//! place. Keys of upstream features spiderpool-rs does not have are accepted and reported by
//! [`SpiderpoolConf::ignored_keys`], so an upstream ConfigMap loads unchanged. Upstream's chart writes
//! the automatic-pool spare count as `clusterSubnetDefaultFlexibleIPNumber` while its code reads
//! `clusterSubnetAutoPoolDefaultRedundantIPNumber` (reference section 13.5, so the value never takes
//! effect there); both names are read here, the latter winning.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Where the chart mounts the file.
pub const DEFAULT_PATH: &str = "/tmp/spiderpool/config-map/conf.yml";

/// `conf.yml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpiderpoolConf {
    /// The agent's IPAM socket.
    pub ipam_unix_socket_path: Option<String>,
    /// Allocate IPv4 addresses.
    #[serde(rename = "enableIPv4")]
    pub enable_ipv4: Option<bool>,
    /// Allocate IPv6 addresses.
    #[serde(rename = "enableIPv6")]
    pub enable_ipv6: Option<bool>,
    /// StatefulSet pods keep their addresses.
    pub enable_stateful_set: Option<bool>,
    /// KubeVirt VMs keep their addresses.
    #[serde(rename = "enableKubevirtStaticIP")]
    pub enable_kubevirt_static_ip: Option<bool>,
    /// Delete SpiderEndpoints nothing needs.
    pub enable_clean_outdated_endpoint: Option<bool>,
    /// The SpiderSubnet feature.
    pub enable_spider_subnet: Option<bool>,
    /// Automatic pools for applications.
    pub enable_auto_pool_for_application: Option<bool>,
    /// Ask the plugin to detect address conflicts.
    #[serde(rename = "enableIPConflictDetection")]
    pub enable_ip_conflict_detection: Option<bool>,
    /// Ask the plugin to check the gateway.
    pub enable_gateway_detection: Option<bool>,
    /// Upstream's webhook refusing to delete pools with addresses (not in spiderpool-rs).
    pub enable_validating_resources_deleted_webhook: Option<bool>,
    /// Spare addresses of automatic pools, as upstream's chart names it.
    #[serde(rename = "clusterSubnetDefaultFlexibleIPNumber")]
    pub cluster_subnet_default_flexible_ip_number: Option<u32>,
    /// Spare addresses of automatic pools, as upstream's code names it.
    #[serde(rename = "clusterSubnetAutoPoolDefaultRedundantIPNumber")]
    pub cluster_subnet_auto_pool_default_redundant_ip_number: Option<u32>,
    /// Set the node sysctls underlay pods need.
    pub tune_sysctl_config: Option<bool>,
    /// Keys of upstream features spiderpool-rs does not have (and unknown keys), with their values.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// A `conf.yml` that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{path}: not a valid spiderpool-conf conf.yml: {source}")]
pub struct ConfError {
    /// The file.
    pub path: String,
    /// Why (boxed: the parser's error is large and this one travels up through `Result`s).
    #[source]
    pub source: Box<serde_saphyr::Error>,
}

impl SpiderpoolConf {
    /// Parses `text` (read from `path`, named in errors).
    pub fn parse(path: &str, text: &str) -> Result<Self, ConfError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_saphyr::from_str(text).map_err(|source| ConfError {
            path: path.to_string(),
            source: Box::new(source),
        })
    }

    /// The spare-address count of automatic pools, under either of its names.
    pub fn auto_pool_spare_ips(&self) -> Option<u32> {
        self.cluster_subnet_auto_pool_default_redundant_ip_number
            .or(self.cluster_subnet_default_flexible_ip_number)
    }

    /// Keys present in the file that spiderpool-rs does not act on, each with why, for a warning at
    /// start. Features left at their off value are not listed.
    pub fn ignored_keys(&self) -> Vec<String> {
        let mut ignored = Vec::new();
        if self.enable_validating_resources_deleted_webhook == Some(true) {
            ignored.push(
                "enableValidatingResourcesDeletedWebhook: spiderpool-rs has no deletion webhook; a pool \
                 with addresses waits on its finalizer instead"
                    .to_string(),
            );
        }
        for (key, value) in &self.other {
            let off = match value {
                serde_json::Value::Null => true,
                serde_json::Value::Bool(on) => !on,
                serde_json::Value::String(text) => text.is_empty(),
                serde_json::Value::Object(map) => {
                    map.get("enabled")
                        .is_none_or(|v| v == &serde_json::Value::Bool(false))
                        && map.get("serverUrl").is_none_or(|v| v.as_str() == Some(""))
                }
                _ => false,
            };
            if !off {
                ignored.push(format!("{key}: not supported by spiderpool-rs"));
            }
        }
        ignored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What upstream's chart renders with default values.
    const UPSTREAM_DEFAULTS: &str = r#"
ipamUnixSocketPath: /var/run/spidernet/spiderpool.sock
enableIPv4: true
enableIPv6: true
enableStatefulSet: true
enableKubevirtStaticIP: true
enableCleanOutdatedEndpoint: false
enableSpiderSubnet: true
enableAutoPoolForApplication: true
enableIPConflictDetection: false
enableGatewayDetection: false
enableValidatingResourcesDeletedWebhook: false
clusterSubnetDefaultFlexibleIPNumber: 1
tuneSysctlConfig: true
podResourceInject:
  enabled: false
  namespacesExclude: ["kube-system","spiderpool","metallb-system","istio-system"]
  namespacesInclude: []
"#;

    #[test]
    fn upstreams_rendered_configmap_loads_and_nothing_is_ignored() {
        let conf = SpiderpoolConf::parse("conf.yml", UPSTREAM_DEFAULTS).unwrap();
        assert_eq!(
            conf.ipam_unix_socket_path.as_deref(),
            Some("/var/run/spidernet/spiderpool.sock")
        );
        assert_eq!(conf.enable_ipv6, Some(true));
        assert_eq!(conf.enable_kubevirt_static_ip, Some(true));
        assert_eq!(conf.enable_clean_outdated_endpoint, Some(false));
        assert_eq!(conf.auto_pool_spare_ips(), Some(1));
        assert!(conf.ignored_keys().is_empty(), "{:?}", conf.ignored_keys());
    }

    #[test]
    fn the_code_name_of_the_spare_count_wins_and_enabled_unsupported_features_are_reported() {
        let conf = SpiderpoolConf::parse(
            "conf.yml",
            "clusterSubnetDefaultFlexibleIPNumber: 1\nclusterSubnetAutoPoolDefaultRedundantIPNumber: 3\n\
             podResourceInject: {enabled: true}\niaasNetworkProvider: {serverUrl: http://x}\n",
        )
        .unwrap();
        assert_eq!(conf.auto_pool_spare_ips(), Some(3));
        let ignored = conf.ignored_keys();
        assert_eq!(ignored.len(), 2, "{ignored:?}");
        assert!(ignored[0].starts_with("iaasNetworkProvider"));
    }

    #[test]
    fn empty_files_and_errors() {
        assert_eq!(
            SpiderpoolConf::parse("c", "  \n").unwrap(),
            SpiderpoolConf::default()
        );
        let err = SpiderpoolConf::parse("/x/conf.yml", "enableIPv4: maybe\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/x/conf.yml: not a valid spiderpool-conf conf.yml")
        );
    }
}
