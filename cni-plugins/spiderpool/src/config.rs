//! The network configuration on stdin and its `ipam` section (upstream's `IPAMConfig`, reference 6.1).
//!
//! Parsed by hand from a `serde_json::Value` rather than derived, so that every bad value is
//! reported with its key (`ipam.log_file_max_size: ...`) and upstream's loose spellings (a numeric
//! string for a size) can be accepted. Unknown keys are ignored, at both levels.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};
use spiderpool_agent_api::{Attachment, DEFAULT_SOCKET_PATH};
use thiserror::Error;

use crate::cni::{CniError, SpecVersion};

/// Upstream's log file (reference 1.2).
pub const DEFAULT_LOG_FILE_PATH: &str = "/var/log/spidernet/spiderpool.log";
/// Rotate the log file past this many MiB (upstream's default).
pub const DEFAULT_LOG_FILE_MAX_SIZE_MB: u64 = 100;
/// Delete rotated log files older than this many days (upstream's default).
pub const DEFAULT_LOG_FILE_MAX_AGE_DAYS: u64 = 30;
/// Keep at most this many rotated log files. Upstream's code says 10 and its docs say 7; we follow
/// the documentation (reference 13.8).
pub const DEFAULT_LOG_FILE_MAX_COUNT: u64 = 7;
/// Bound on one request to the daemon. Upstream waits 100 s; a pod sandbox that cannot get an
/// address within 30 s is better retried by kubelet than kept waiting.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the network configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// stdin is not JSON.
    #[error("stdin: not a JSON network configuration: {0}")]
    Decode(#[source] serde_json::Error),
    /// stdin is JSON but not an object.
    #[error("stdin: the network configuration must be a JSON object")]
    NotAnObject,
    /// A required key is absent.
    #[error("{key}: missing")]
    Missing {
        /// Dotted path of the key.
        key: &'static str,
    },
    /// A key has a value of the wrong type or out of range.
    #[error("{key}: {reason}")]
    Invalid {
        /// Dotted path of the key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `cniVersion` is not one we speak.
    #[error("{0}")]
    Version(CniError),
}

impl ConfigError {
    /// The CNI error to report: 6 for undecodable stdin, 1 for the version, 7 otherwise.
    pub fn to_cni(&self) -> CniError {
        use spiderpool_agent_api::codes;
        match self {
            Self::Decode(_) | Self::NotAnObject => {
                CniError::new(codes::DECODING_FAILURE, self.to_string(), "")
            }
            Self::Version(error) => error.clone(),
            Self::Missing { .. } | Self::Invalid { .. } => {
                CniError::new(codes::INVALID_NETWORK_CONFIG, self.to_string(), "")
            }
        }
    }
}

/// How much to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Everything, including request and response bodies.
    Debug,
    /// One line per invocation and outcome.
    Info,
    /// Things that work but should not happen.
    Warn,
    /// Failures only.
    Error,
}

impl LogLevel {
    /// Upper-case name as written in log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
        }
    }
}

/// Logging settings (`ipam.log_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// `log_level`; upstream's code defaults to DEBUG, its docs to INFO: we follow the docs
    /// (reference 13.8), so a quiet node does not fill its disk.
    pub level: LogLevel,
    /// `log_file_path`.
    pub file_path: PathBuf,
    /// `log_file_max_size` in MiB.
    pub max_size_mb: u64,
    /// `log_file_max_age` in days.
    pub max_age_days: u64,
    /// `log_file_max_count`.
    pub max_count: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
            file_path: PathBuf::from(DEFAULT_LOG_FILE_PATH),
            max_size_mb: DEFAULT_LOG_FILE_MAX_SIZE_MB,
            max_age_days: DEFAULT_LOG_FILE_MAX_AGE_DAYS,
            max_count: DEFAULT_LOG_FILE_MAX_COUNT,
        }
    }
}

/// The `ipam` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamConfig {
    /// `type` (normally `spiderpool`; not enforced, the binary may be installed under another name).
    pub plugin_type: String,
    /// `log_*`.
    pub log: LogConfig,
    /// `default_ipv4_ippool`.
    pub default_ipv4_ippool: Vec<String>,
    /// `default_ipv6_ippool`.
    pub default_ipv6_ippool: Vec<String>,
    /// `clean_gateway`.
    pub clean_gateway: bool,
    /// `match_master_subnet`.
    pub match_master_subnet: bool,
    /// `ipam_unix_socket_path`.
    pub socket_path: PathBuf,
    /// Whether the netconf named the socket (else [`SOCKET_PATH_ENV`] may override the default).
    pub socket_path_from_netconf: bool,
    /// `timeout_seconds` (our addition): bound on each request to the daemon.
    pub timeout: Duration,
}

impl Default for IpamConfig {
    fn default() -> Self {
        Self {
            plugin_type: String::new(),
            log: LogConfig::default(),
            default_ipv4_ippool: Vec::new(),
            default_ipv6_ippool: Vec::new(),
            clean_gateway: false,
            match_master_subnet: false,
            socket_path: PathBuf::from(DEFAULT_SOCKET_PATH),
            socket_path_from_netconf: false,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// The parts of the network configuration this plugin uses.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    /// `cniVersion`.
    pub cni_version: SpecVersion,
    /// `name` (empty when absent; GC requires it).
    pub name: String,
    /// `ipam`.
    pub ipam: IpamConfig,
    /// `prevResult` (CHECK and DEL), as given.
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Reads `cniVersion` without judging the rest, for labelling errors found before (or while)
/// the whole configuration is parsed.
/// Environment variable naming the daemon's socket when the netconf does not: the runtime's
/// environment on hosts that run several nodes' daemons (the project's node simulator does).
pub const SOCKET_PATH_ENV: &str = "SPIDERPOOL_IPAM_UNIX_SOCKET_PATH";

/// The socket to use: the netconf's `ipam_unix_socket_path`, else `env_override`, else the default.
pub fn effective_socket_path(ipam: &IpamConfig, env_override: Option<&str>) -> PathBuf {
    match env_override.filter(|p| !p.is_empty()) {
        Some(path) if !ipam.socket_path_from_netconf => PathBuf::from(path),
        _ => ipam.socket_path.clone(),
    }
}

pub fn peek_cni_version(stdin: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(stdin).ok()?;
    value.get("cniVersion")?.as_str().map(str::to_owned)
}

/// Parses the network configuration.
pub fn parse_netconf(stdin: &[u8]) -> Result<NetConf, ConfigError> {
    let value: Value = serde_json::from_slice(stdin).map_err(ConfigError::Decode)?;
    let Value::Object(top) = value else {
        return Err(ConfigError::NotAnObject);
    };
    let version_text = match top.get("cniVersion") {
        None | Some(Value::Null) => return Err(ConfigError::Missing { key: "cniVersion" }),
        Some(Value::String(text)) => text,
        Some(other) => return Err(invalid("cniVersion", format!("expected a string, got {other}"))),
    };
    let cni_version = SpecVersion::parse(version_text).map_err(ConfigError::Version)?;
    let name = optional_string(&top, "", "name")?.unwrap_or_default();
    let ipam = match top.get("ipam") {
        None | Some(Value::Null) => return Err(ConfigError::Missing { key: "ipam" }),
        Some(Value::Object(ipam)) => parse_ipam(ipam)?,
        Some(other) => return Err(invalid("ipam", format!("expected an object, got {other}"))),
    };
    let prev_result = match top.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(object @ Value::Object(_)) => Some(object.clone()),
        Some(other) => return Err(invalid("prevResult", format!("expected an object, got {other}"))),
    };
    // libcni sends the list under both names: the spec's `cni.dev/valid-attachments` and the
    // `cni.dev/attachments` an earlier draft used (containernetworking/cni#1101).
    let attachments_key = ["cni.dev/valid-attachments", "cni.dev/attachments"]
        .into_iter()
        .find(|key| top.contains_key(*key));
    let valid_attachments = match attachments_key.and_then(|key| top.get(key).map(|value| (key, value))) {
        None | Some((_, Value::Null)) => None,
        Some((key, value)) => Some(
            serde_json::from_value::<Vec<Attachment>>(value.clone())
                .map_err(|error| invalid(key, format!("expected [{{containerID, ifname}}]: {error}")))?,
        ),
    };
    Ok(NetConf {
        cni_version,
        name,
        ipam,
        prev_result,
        valid_attachments,
    })
}

fn parse_ipam(ipam: &Map<String, Value>) -> Result<IpamConfig, ConfigError> {
    const P: &str = "ipam.";
    let defaults = IpamConfig::default();
    let level = match optional_string(ipam, P, "log_level")? {
        None => defaults.log.level,
        Some(text) => parse_log_level(&text)?,
    };
    let log = LogConfig {
        level,
        file_path: optional_string(ipam, P, "log_file_path")?
            .filter(|path| !path.is_empty())
            .map_or(defaults.log.file_path, PathBuf::from),
        max_size_mb: optional_count(ipam, "log_file_max_size")?.unwrap_or(defaults.log.max_size_mb),
        max_age_days: optional_count(ipam, "log_file_max_age")?.unwrap_or(defaults.log.max_age_days),
        max_count: optional_count(ipam, "log_file_max_count")?.unwrap_or(defaults.log.max_count),
    };
    let socket_text = optional_string(ipam, P, "ipam_unix_socket_path")?;
    let socket_path_from_netconf = socket_text.is_some();
    let socket_path = match socket_text {
        None => defaults.socket_path,
        Some(path) if path.is_empty() => {
            return Err(invalid("ipam.ipam_unix_socket_path", "must not be empty".into()));
        }
        Some(path) => PathBuf::from(path),
    };
    Ok(IpamConfig {
        plugin_type: optional_string(ipam, P, "type")?.unwrap_or_default(),
        log,
        default_ipv4_ippool: optional_strings(ipam, "default_ipv4_ippool")?,
        default_ipv6_ippool: optional_strings(ipam, "default_ipv6_ippool")?,
        clean_gateway: optional_bool(ipam, "clean_gateway")?.unwrap_or(false),
        match_master_subnet: optional_bool(ipam, "match_master_subnet")?.unwrap_or(false),
        socket_path,
        socket_path_from_netconf,
        timeout: optional_timeout(ipam, "timeout_seconds")?.unwrap_or(defaults.timeout),
    })
}

fn invalid(key: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason,
    }
}

fn parse_log_level(text: &str) -> Result<LogLevel, ConfigError> {
    match text.to_ascii_uppercase().as_str() {
        "DEBUG" => Ok(LogLevel::Debug),
        "INFO" => Ok(LogLevel::Info),
        "WARN" | "WARNING" => Ok(LogLevel::Warn),
        "ERROR" => Ok(LogLevel::Error),
        _ => Err(invalid(
            "ipam.log_level",
            format!("{text:?} is not one of DEBUG, INFO, WARN, ERROR"),
        )),
    }
}

fn optional_string(map: &Map<String, Value>, prefix: &str, key: &str) -> Result<Option<String>, ConfigError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(invalid(
            &format!("{prefix}{key}"),
            format!("expected a string, got {other}"),
        )),
    }
}

fn optional_bool(map: &Map<String, Value>, key: &str) -> Result<Option<bool>, ConfigError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(flag)) => Ok(Some(*flag)),
        Some(other) => Err(invalid(
            &format!("ipam.{key}"),
            format!("expected true or false, got {other}"),
        )),
    }
}

fn optional_strings(map: &Map<String, Value>, key: &str) -> Result<Vec<String>, ConfigError> {
    let complain = |other: &Value| {
        invalid(
            &format!("ipam.{key}"),
            format!("expected a list of pool names, got {other}"),
        )
    };
    match map.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(|| complain(item)))
            .collect(),
        Some(other) => Err(complain(other)),
    }
}

/// A non-negative integer, also accepted as a numeric string: upstream declares the `log_file_*`
/// keys as ints, yet its documentation shows `"log_file_max_size": "100"`, which upstream's own
/// JSON decoding rejects (reference 6.1, 13.8). We take both.
fn optional_count(map: &Map<String, Value>, key: &str) -> Result<Option<u64>, ConfigError> {
    let complain = |other: &Value| {
        invalid(
            &format!("ipam.{key}"),
            format!("expected a non-negative integer, got {other}"),
        )
    };
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(number @ Value::Number(_)) => number.as_u64().map(Some).ok_or_else(|| complain(number)),
        Some(text @ Value::String(inner)) => inner.trim().parse().map(Some).map_err(|_| complain(text)),
        Some(other) => Err(complain(other)),
    }
}

fn optional_timeout(map: &Map<String, Value>, key: &str) -> Result<Option<Duration>, ConfigError> {
    let complain = |other: &Value| {
        invalid(
            &format!("ipam.{key}"),
            format!("expected a positive number of seconds, got {other}"),
        )
    };
    let seconds = match map.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(number @ Value::Number(inner)) => inner.as_f64().ok_or_else(|| complain(number))?,
        Some(text @ Value::String(inner)) => inner.trim().parse::<f64>().map_err(|_| complain(text))?,
        Some(other) => return Err(complain(other)),
    };
    let value = Value::from(seconds);
    match Duration::try_from_secs_f64(seconds) {
        Ok(duration) if !duration.is_zero() => Ok(Some(duration)),
        _ => Err(complain(&value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<NetConf, ConfigError> {
        parse_netconf(value.to_string().as_bytes())
    }

    fn with_ipam(ipam: Value) -> Result<NetConf, ConfigError> {
        parse(json!({"cniVersion": "1.0.0", "name": "macvlan-ens192", "type": "macvlan", "ipam": ipam}))
    }

    fn invalid_key(result: Result<NetConf, ConfigError>) -> String {
        match result {
            Err(error @ ConfigError::Invalid { .. }) => {
                assert_eq!(error.to_cni().code, 7);
                error.to_string()
            }
            other => panic!("expected an invalid-key error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply_when_only_type_is_given() {
        let conf = with_ipam(json!({"type": "spiderpool"})).unwrap();
        assert_eq!(conf.cni_version, SpecVersion::V1_0_0);
        assert_eq!(conf.name, "macvlan-ens192");
        assert_eq!(
            conf.ipam,
            IpamConfig {
                plugin_type: "spiderpool".into(),
                ..IpamConfig::default()
            }
        );
        assert_eq!(
            conf.ipam.socket_path,
            PathBuf::from("/var/run/spidernet/spiderpool.sock")
        );
        assert_eq!(conf.prev_result, None);
        assert_eq!(conf.valid_attachments, None);
    }

    #[test]
    fn every_key_is_read() {
        let conf = with_ipam(json!({
            "type": "spiderpool",
            "log_level": "debug",
            "log_file_path": "/tmp/x.log",
            "log_file_max_size": 5,
            "log_file_max_age": 2,
            "log_file_max_count": 3,
            "default_ipv4_ippool": ["v4-a", "v4-*"],
            "default_ipv6_ippool": ["v6-a"],
            "clean_gateway": true,
            "match_master_subnet": true,
            "ipam_unix_socket_path": "/run/test.sock",
            "timeout_seconds": 1.5,
            "some_future_key": {"ignored": true}
        }))
        .unwrap();
        assert_eq!(
            conf.ipam,
            IpamConfig {
                plugin_type: "spiderpool".into(),
                log: LogConfig {
                    level: LogLevel::Debug,
                    file_path: "/tmp/x.log".into(),
                    max_size_mb: 5,
                    max_age_days: 2,
                    max_count: 3,
                },
                default_ipv4_ippool: vec!["v4-a".into(), "v4-*".into()],
                default_ipv6_ippool: vec!["v6-a".into()],
                clean_gateway: true,
                match_master_subnet: true,
                socket_path: "/run/test.sock".into(),
                socket_path_from_netconf: true,
                timeout: Duration::from_millis(1500),
            }
        );
    }

    #[test]
    fn upstreams_documented_string_sizes_are_accepted() {
        let conf = with_ipam(
            json!({"log_file_max_size": "100", "log_file_max_count": " 7 ", "timeout_seconds": "2"}),
        )
        .unwrap();
        assert_eq!(conf.ipam.log.max_size_mb, 100);
        assert_eq!(conf.ipam.log.max_count, 7);
        assert_eq!(conf.ipam.timeout, Duration::from_secs(2));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (ipam, key) in [
            (json!({"type": 3}), "ipam.type"),
            (json!({"log_level": "LOUD"}), "ipam.log_level"),
            (json!({"log_level": 1}), "ipam.log_level"),
            (json!({"log_file_path": false}), "ipam.log_file_path"),
            (json!({"log_file_max_size": "big"}), "ipam.log_file_max_size"),
            (json!({"log_file_max_size": -1}), "ipam.log_file_max_size"),
            (json!({"log_file_max_size": 1.5}), "ipam.log_file_max_size"),
            (json!({"log_file_max_age": true}), "ipam.log_file_max_age"),
            (json!({"log_file_max_count": [1]}), "ipam.log_file_max_count"),
            (json!({"default_ipv4_ippool": "pool"}), "ipam.default_ipv4_ippool"),
            (json!({"default_ipv6_ippool": [1]}), "ipam.default_ipv6_ippool"),
            (json!({"clean_gateway": "yes"}), "ipam.clean_gateway"),
            (json!({"match_master_subnet": 1}), "ipam.match_master_subnet"),
            (json!({"ipam_unix_socket_path": ""}), "ipam.ipam_unix_socket_path"),
            (json!({"ipam_unix_socket_path": 5}), "ipam.ipam_unix_socket_path"),
            (json!({"timeout_seconds": 0}), "ipam.timeout_seconds"),
            (json!({"timeout_seconds": -3}), "ipam.timeout_seconds"),
            (json!({"timeout_seconds": 1e300}), "ipam.timeout_seconds"),
            (json!({"timeout_seconds": "soon"}), "ipam.timeout_seconds"),
        ] {
            let message = invalid_key(with_ipam(ipam.clone()));
            assert!(message.starts_with(key), "{ipam} -> {message}");
        }
    }

    #[test]
    fn top_level_problems() {
        assert!(matches!(parse_netconf(b"not json"), Err(ConfigError::Decode(_))));
        assert_eq!(parse_netconf(b"not json").unwrap_err().to_cni().code, 6);
        assert_eq!(parse_netconf(b"[1]").unwrap_err().to_cni().code, 6);
        let missing_version = parse(json!({"ipam": {}})).unwrap_err();
        assert_eq!(missing_version.to_string(), "cniVersion: missing");
        assert_eq!(missing_version.to_cni().code, 7);
        let old = parse(json!({"cniVersion": "0.2.0", "ipam": {}})).unwrap_err();
        assert_eq!(old.to_cni().code, 1);
        let no_ipam = parse(json!({"cniVersion": "1.0.0"})).unwrap_err();
        assert_eq!(no_ipam.to_string(), "ipam: missing");
        assert!(invalid_key(parse(json!({"cniVersion": "1.0.0", "ipam": []}))).starts_with("ipam:"));
        assert!(invalid_key(parse(json!({"cniVersion": 1, "ipam": {}}))).starts_with("cniVersion:"));
        assert!(
            invalid_key(parse(json!({"cniVersion": "1.0.0", "name": 1, "ipam": {}}))).starts_with("name:")
        );
    }

    #[test]
    fn runtime_extras_are_accepted() {
        let conf = parse(json!({
            "cniVersion": "1.1.0", "name": "n", "ipam": {"type": "spiderpool"},
            "args": {"cni": {"ips": ["10.0.0.1"]}},
            "runtimeConfig": {"portMappings": []},
            "prevResult": {"cniVersion": "1.1.0", "ips": [{"address": "10.0.0.1/24"}]},
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]
        }))
        .unwrap();
        assert!(conf.prev_result.is_some());
        assert_eq!(
            conf.valid_attachments,
            Some(vec![Attachment {
                container_id: "c1".into(),
                if_name: "eth0".into()
            }])
        );
    }

    #[test]
    fn the_older_attachments_key_is_read_and_bad_lists_are_named() {
        let conf = parse(json!({"cniVersion": "1.1.0", "ipam": {}, "cni.dev/attachments": []})).unwrap();
        assert_eq!(conf.valid_attachments, Some(vec![]));
        let message = invalid_key(parse(
            json!({"cniVersion": "1.1.0", "ipam": {}, "cni.dev/valid-attachments": [1]}),
        ));
        assert!(message.starts_with("cni.dev/valid-attachments:"), "{message}");
        let message = invalid_key(parse(
            json!({"cniVersion": "1.1.0", "ipam": {}, "prevResult": "x"}),
        ));
        assert!(message.starts_with("prevResult:"), "{message}");
    }

    #[test]
    fn peeking_the_version_never_fails() {
        assert_eq!(
            peek_cni_version(br#"{"cniVersion":"0.3.1"}"#).as_deref(),
            Some("0.3.1")
        );
        assert_eq!(peek_cni_version(b"junk"), None);
        assert_eq!(peek_cni_version(br#"{"cniVersion":1}"#), None);
    }

    #[test]
    fn socket_path_precedence_netconf_then_environment_then_default() {
        let named = parse_netconf(br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"spiderpool","ipam_unix_socket_path":"/run/a.sock"}}"#).unwrap();
        assert_eq!(
            effective_socket_path(&named.ipam, Some("/run/env.sock")),
            PathBuf::from("/run/a.sock")
        );
        let unnamed =
            parse_netconf(br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"spiderpool"}}"#).unwrap();
        assert_eq!(
            effective_socket_path(&unnamed.ipam, Some("/run/env.sock")),
            PathBuf::from("/run/env.sock")
        );
        assert_eq!(
            effective_socket_path(&unnamed.ipam, Some("")),
            PathBuf::from(DEFAULT_SOCKET_PATH)
        );
        assert_eq!(
            effective_socket_path(&unnamed.ipam, None),
            PathBuf::from(DEFAULT_SOCKET_PATH)
        );
    }
}
