//! What the chart tells the operator: the `spiderpool-conf` ConfigMap (`--config-path`) and upstream's
//! `SPIDERPOOL_*` environment, turned into the controllers' configurations.
//!
//! Precedence, for each setting: a command-line flag or environment variable that is set, then the
//! ConfigMap, then the built-in default (upstream's Helm default). The ConfigMap is read once at start,
//! as upstream does; the chart restarts the pods when it changes (a checksum annotation).

use std::path::{Path, PathBuf};
use std::time::Duration;

use spiderpool_schema::conf::{ConfError, SpiderpoolConf};

use crate::controller::coordinator::CoordinatorConfig;
use crate::controller::reclaim::decide::GcFlags;
use crate::controller::subnet::SubnetControllerConfig;

/// The flags (each with upstream's environment variable) of settings the chart passes.
#[derive(Debug, Clone, clap::Args)]
pub struct ChartArgs {
    /// `conf.yml` of the `spiderpool-conf` ConfigMap.
    #[arg(long, env = "SPIDERPOOL_CONFIG_PATH")]
    pub config_path: Option<PathBuf>,
    /// Serve `/metrics` on the metrics port.
    #[arg(long, env = "SPIDERPOOL_ENABLED_METRIC", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_metrics: bool,
    /// Also serve upstream's debug-level series (per-pool and per-subnet counts).
    #[arg(long, env = "SPIDERPOOL_ENABLED_DEBUG_METRIC", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_debug_metrics: bool,
    /// Reclaim terminating stateless pods past their grace period on Ready nodes.
    #[arg(
        long,
        env = "SPIDERPOOL_GC_STATELESS_TERMINATING_POD_ON_READY_NODE_ENABLED",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub gc_terminating_on_ready_node: bool,
    /// Reclaim terminating stateless pods past their grace period on NotReady nodes.
    #[arg(
        long,
        env = "SPIDERPOOL_GC_STATELESS_TERMINATING_POD_ON_NOT_READY_NODE_ENABLED",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub gc_terminating_on_not_ready_node: bool,
    /// Reclaim Running stateless pods that report no IPs.
    #[arg(
        long,
        env = "SPIDERPOOL_GC_ENABLE_STATELESS_RUNNING_POD_ON_EMPTY_POD_STATUS_IPS",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub gc_running_on_empty_pod_ips: bool,
    /// Extra wait after a pod's grace period before its addresses go, in seconds.
    #[arg(long, env = "SPIDERPOOL_GC_ADDITIONAL_GRACE_DELAY", default_value_t = 0)]
    pub gc_additional_grace_seconds: u64,
    /// Run the SpiderMultusConfig controller (Helm `multus.enableMultusConfig`).
    #[arg(long, env = "SPIDERPOOL_MULTUS_CONFIG_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_multus_config: bool,
    /// Run the SpiderCoordinator controller (Helm `coordinator.enabled`).
    #[arg(long, env = "SPIDERPOOL_COORDINATOR_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_coordinator: bool,
    /// Where the node's CNI configuration directory is mounted (`podCIDRType: auto` reads it).
    #[arg(long, env = "SPIDERPOOL_CNI_CONFIG_DIR", default_value = "/etc/cni/net.d")]
    pub cni_config_dir: PathBuf,
    /// Cilium's ConfigMap, `<namespace>/<name>` (the namespace must be kube-system).
    #[arg(
        long,
        env = "SPIDERPOOL_CILIUM_CONFIGMAP_NAMESPACE_NAME",
        default_value = "kube-system/cilium-config"
    )]
    pub cilium_config_map: String,
    /// More DNS names or IP addresses for the generated webhook certificate (repeatable).
    #[arg(long = "webhook-extra-name")]
    pub webhook_extra_names: Vec<String>,
}

/// Settings that can also come from the ConfigMap, resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The SpiderSubnet controller runs (`enableSpiderSubnet`).
    pub enable_subnet: bool,
    /// The SpiderSubnet controller's configuration.
    pub subnet: SubnetControllerConfig,
    /// The reclaim decisions' switches.
    pub gc_flags: GcFlags,
    /// Delete endpoints nothing needs (`enableCleanOutdatedEndpoint`).
    pub clean_outdated_endpoints: bool,
    /// The SpiderCoordinator controller's configuration.
    pub coordinator: CoordinatorConfig,
    /// Warnings for the log: ConfigMap keys of features spiderpool-rs does not have.
    pub ignored: Vec<String>,
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The ConfigMap's file cannot be read.
    #[error("cannot read --config-path {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It does not parse.
    #[error(transparent)]
    Parse(#[from] ConfError),
    /// Cilium's ConfigMap is not in kube-system.
    #[error(
        "SPIDERPOOL_CILIUM_CONFIGMAP_NAMESPACE_NAME={0:?}: the operator reads Cilium's ConfigMap in kube-system only"
    )]
    CiliumNamespace(String),
}

/// Reads the ConfigMap's file (none: an empty configuration).
pub fn load_conf(path: Option<&Path>) -> Result<SpiderpoolConf, SettingsError> {
    let Some(path) = path else {
        return Ok(SpiderpoolConf::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(SpiderpoolConf::parse(&path.display().to_string(), &text)?)
}

impl ChartArgs {
    /// Resolves the settings against the ConfigMap `conf` (the operator has no flag for what the
    /// ConfigMap sets).
    pub fn resolve(&self, conf: &SpiderpoolConf) -> Result<Resolved, SettingsError> {
        let cilium_name = match self.cilium_config_map.split_once('/') {
            Some(("kube-system", name)) => name.to_string(),
            Some(_) => return Err(SettingsError::CiliumNamespace(self.cilium_config_map.clone())),
            None => self.cilium_config_map.clone(),
        };
        let subnet_defaults = SubnetControllerConfig::default();
        let gc_defaults = GcFlags::default();
        let enable_subnet = conf.enable_spider_subnet.unwrap_or(true);
        Ok(Resolved {
            enable_subnet,
            subnet: SubnetControllerConfig {
                enable_ipv4: conf.enable_ipv4.unwrap_or(subnet_defaults.enable_ipv4),
                enable_ipv6: conf.enable_ipv6.unwrap_or(subnet_defaults.enable_ipv6),
                enable_auto_pool: enable_subnet
                    && conf
                        .enable_auto_pool_for_application
                        .unwrap_or(subnet_defaults.enable_auto_pool),
                default_spare_ips: conf
                    .auto_pool_spare_ips()
                    .unwrap_or(subnet_defaults.default_spare_ips),
                ..subnet_defaults
            },
            gc_flags: GcFlags {
                additional_grace: Duration::from_secs(self.gc_additional_grace_seconds),
                terminating_on_ready_node: self.gc_terminating_on_ready_node,
                terminating_on_not_ready_node: self.gc_terminating_on_not_ready_node,
                running_on_empty_pod_ips: self.gc_running_on_empty_pod_ips,
                statefulset: conf.enable_stateful_set.unwrap_or(gc_defaults.statefulset),
                kubevirt: conf.enable_kubevirt_static_ip.unwrap_or(gc_defaults.kubevirt),
            },
            clean_outdated_endpoints: conf.enable_clean_outdated_endpoint.unwrap_or(true),
            coordinator: CoordinatorConfig {
                cni_config_dir: self.cni_config_dir.clone(),
                cilium_config_map: cilium_name,
                ..CoordinatorConfig::default()
            },
            ignored: conf.ignored_keys(),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        chart: ChartArgs,
    }

    fn parse(args: &[&str]) -> ChartArgs {
        Cli::try_parse_from(args).unwrap().chart
    }

    #[test]
    fn without_a_configmap_the_defaults_are_upstreams() {
        let resolved = parse(&["op"]).resolve(&SpiderpoolConf::default()).unwrap();
        assert!(resolved.enable_subnet);
        let subnet = SubnetControllerConfig::default();
        assert_eq!(
            (
                resolved.subnet.enable_ipv6,
                resolved.subnet.enable_auto_pool,
                resolved.subnet.default_spare_ips
            ),
            (
                subnet.enable_ipv6,
                subnet.enable_auto_pool,
                subnet.default_spare_ips
            )
        );
        assert_eq!(resolved.gc_flags, GcFlags::default());
        assert_eq!(resolved.coordinator.cilium_config_map, "cilium-config");
        assert!(resolved.ignored.is_empty());
    }

    #[test]
    fn the_configmap_sets_what_it_names() {
        let conf = SpiderpoolConf::parse(
            "conf.yml",
            "enableIPv6: false\nenableStatefulSet: false\nenableSpiderSubnet: true\n\
             enableAutoPoolForApplication: false\nclusterSubnetDefaultFlexibleIPNumber: 4\n\
             enableCleanOutdatedEndpoint: false\n",
        )
        .unwrap();
        let resolved = parse(&[
            "op",
            "--gc-additional-grace-seconds",
            "30",
            "--cilium-config-map",
            "kube-system/cilium",
        ])
        .resolve(&conf)
        .unwrap();
        assert!(!resolved.subnet.enable_ipv6);
        assert!(!resolved.subnet.enable_auto_pool);
        assert_eq!(resolved.subnet.default_spare_ips, 4);
        assert!(!resolved.gc_flags.statefulset);
        assert!(resolved.gc_flags.kubevirt);
        assert_eq!(resolved.gc_flags.additional_grace, Duration::from_secs(30));
        assert!(!resolved.clean_outdated_endpoints);
        assert_eq!(resolved.coordinator.cilium_config_map, "cilium");
    }

    #[test]
    fn cilium_outside_kube_system_is_refused() {
        let err = parse(&["op", "--cilium-config-map", "cilium/cilium-config"])
            .resolve(&SpiderpoolConf::default())
            .unwrap_err();
        assert!(err.to_string().contains("kube-system only"));
    }

    #[test]
    fn an_unreadable_configmap_names_the_file() {
        let err = load_conf(Some(Path::new("/nonexistent/conf.yml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/conf.yml"));
        assert_eq!(load_conf(None).unwrap(), SpiderpoolConf::default());
    }
}
