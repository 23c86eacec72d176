//! What the chart tells the agent: the `spiderpool-conf` ConfigMap (`--config-path`) and upstream's
//! `SPIDERPOOL_*` environment for ports and metrics.
//!
//! Precedence, for each setting: a command-line flag or environment variable that is set, then the
//! ConfigMap, then the built-in default. The ConfigMap is read once at start, as upstream does; the
//! chart restarts the pods when it changes (a checksum annotation).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use axum::Router;
use axum::routing::get;
use clap::ArgMatches;
use clap::parser::ValueSource;
use spiderpool_schema::conf::{ConfError, SpiderpoolConf};

use crate::metrics::Metrics;

/// The flags (each with upstream's environment variable) of settings the chart passes.
#[derive(Debug, Clone, clap::Args)]
pub struct ChartArgs {
    /// `conf.yml` of the `spiderpool-conf` ConfigMap.
    #[arg(long, env = "SPIDERPOOL_CONFIG_PATH")]
    pub config_path: Option<PathBuf>,
    /// Port of the health probes on every address (upstream's variable; `--health-address` wins).
    #[arg(long, env = "SPIDERPOOL_HEALTH_PORT")]
    pub health_port: Option<u16>,
    /// Serve `/metrics` on `--metrics-port` too (the health address always serves it).
    #[arg(long, env = "SPIDERPOOL_ENABLED_METRIC", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_metrics: bool,
    /// Upstream's debug-level metrics switch; the agent has none, so it changes nothing.
    #[arg(long, env = "SPIDERPOOL_ENABLED_DEBUG_METRIC", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_debug_metrics: bool,
    /// Port of `/metrics` when enabled (upstream: 5711).
    #[arg(long, env = "SPIDERPOOL_METRIC_HTTP_PORT", default_value_t = 5711)]
    pub metrics_port: u16,
}

/// The ConfigMap's file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// It cannot be read.
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

/// `current` (the flag's value) when the flag `id` was set on the command line or by its
/// environment variable, else the ConfigMap's value when it has one, else `current` (the default).
pub fn pick<T>(matches: &ArgMatches, id: &str, current: T, from_conf: Option<T>) -> T {
    let given = matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    );
    match from_conf {
        Some(value) if !given => value,
        _ => current,
    }
}

/// The health address: `--health-address` when given, else every address on `SPIDERPOOL_HEALTH_PORT`
/// when set, else `current` (the default).
pub fn health_address(matches: &ArgMatches, id: &str, current: String, health_port: Option<u16>) -> String {
    pick(
        matches,
        id,
        current,
        health_port.map(|port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).to_string()),
    )
}

/// A router serving only `/metrics`, for the metrics port.
pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new().route("/metrics", get(move || std::future::ready(metrics.encode())))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[arg(long, env = "SETTINGS_TEST_ENABLE_IPV6", default_value_t = true, action = clap::ArgAction::Set)]
        enable_ipv6: bool,
        #[arg(long, default_value = "0.0.0.0:5710")]
        health_address: String,
        #[command(flatten)]
        chart: ChartArgs,
    }

    fn matches(args: &[&str]) -> ArgMatches {
        Cli::command().try_get_matches_from(args).unwrap()
    }

    #[test]
    fn the_configmap_fills_only_what_no_flag_set() {
        let none = matches(&["agent"]);
        assert!(!pick(&none, "enable_ipv6", true, Some(false)));
        assert!(pick(&none, "enable_ipv6", true, None));
        let flag = matches(&["agent", "--enable-ipv6", "true"]);
        assert!(pick(&flag, "enable_ipv6", true, Some(false)));
    }

    #[test]
    fn the_health_port_moves_the_default_address_only() {
        let none = matches(&["agent"]);
        assert_eq!(
            health_address(&none, "health_address", "0.0.0.0:5710".into(), Some(15710)),
            "0.0.0.0:15710"
        );
        let flag = matches(&["agent", "--health-address", "127.0.0.1:1"]);
        assert_eq!(
            health_address(&flag, "health_address", "127.0.0.1:1".into(), Some(15710)),
            "127.0.0.1:1"
        );
    }

    #[test]
    fn an_unreadable_configmap_names_the_file() {
        let err = load_conf(Some(Path::new("/nonexistent/conf.yml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/conf.yml"));
    }
}
