//! The network configuration on stdin and its `ipam` section (upstream's `IPAMConfig`, reference 6.1).
//!
//! Read key by key with the common [`Section`] readers, so that every bad value is reported with
//! its key (`ipam.log_file_max_size: ...`) and upstream's loose spellings (a numeric string for a
//! size) are accepted. Unknown keys are ignored, at both levels.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};
use spiderpool_agent_api::{Attachment, DEFAULT_SOCKET_PATH};
use spiderpool_cni_common::cni::SpecVersion;
use spiderpool_cni_common::confine;
use spiderpool_cni_common::log::{LogConfig, LogLevel};
pub use spiderpool_cni_common::netconf::ConfigError;
use spiderpool_cni_common::netconf::{self, Section};

/// Upstream's log file (reference 1.2).
pub const DEFAULT_LOG_FILE_PATH: &str = "/var/log/spidernet/spiderpool.log";
/// Bound on one request to the daemon. Upstream waits 100 s; a pod sandbox that cannot get an
/// address within 30 s is better retried by kubelet than kept waiting.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest `timeout_seconds` accepted (upstream's own 100 s fits; a deadline of hours is no
/// deadline).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

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
            log: LogConfig::in_file(DEFAULT_LOG_FILE_PATH),
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

pub use spiderpool_cni_common::invocation::SOCKET_PATH_ENV;
pub use spiderpool_cni_common::netconf::peek_cni_version;

/// The socket to use: the netconf's `ipam_unix_socket_path`, else `env_override`, else the default.
pub fn effective_socket_path(ipam: &IpamConfig, env_override: Option<&str>) -> PathBuf {
    match env_override.filter(|p| !p.is_empty()) {
        Some(path) if !ipam.socket_path_from_netconf => PathBuf::from(path),
        _ => ipam.socket_path.clone(),
    }
}

/// Refuses a log file outside `log_dir` and a socket outside the daemon's directories (see
/// [`spiderpool_cni_common::confine`]): both come from whoever writes the netconf, and the plugin
/// runs as root. The socket is checked only when the netconf names it.
pub fn confine(ipam: &IpamConfig, log_dir: &Path, runtime_socket: Option<&str>) -> Result<(), ConfigError> {
    confine::check_log_file(&ipam.log.file_path, log_dir)
        .map_err(|reason| ConfigError::invalid("ipam.log_file_path", reason))?;
    if ipam.socket_path_from_netconf {
        confine::check_socket(&ipam.socket_path, runtime_socket)
            .map_err(|reason| ConfigError::invalid("ipam.ipam_unix_socket_path", reason))?;
    }
    Ok(())
}

/// Parses the network configuration.
pub fn parse_netconf(stdin: &[u8]) -> Result<NetConf, ConfigError> {
    let top = netconf::parse_top(stdin)?;
    let keys = Section::new(&top.object, "");
    let ipam = keys.object("ipam")?.ok_or_else(|| ConfigError::Missing {
        key: "ipam".to_owned(),
    })?;
    let ipam = parse_ipam(ipam)?;
    // libcni sends the list under both names: the spec's `cni.dev/valid-attachments` and the
    // `cni.dev/attachments` an earlier draft used (containernetworking/cni#1101).
    let attachments_key = ["cni.dev/valid-attachments", "cni.dev/attachments"]
        .into_iter()
        .find(|key| keys.has(key));
    let valid_attachments =
        match attachments_key.and_then(|key| top.object.get(key).map(|value| (key, value))) {
            None => None,
            Some((key, value)) => Some(serde_json::from_value::<Vec<Attachment>>(value.clone()).map_err(
                |error| ConfigError::invalid(key, format!("expected [{{containerID, ifname}}]: {error}")),
            )?),
        };
    Ok(NetConf {
        cni_version: top.cni_version,
        name: top.name,
        ipam,
        prev_result: top.prev_result,
        valid_attachments,
    })
}

fn parse_ipam(ipam: &Map<String, Value>) -> Result<IpamConfig, ConfigError> {
    let keys = Section::new(ipam, "ipam.");
    let defaults = IpamConfig::default();
    let level = match keys.string("log_level")? {
        None => defaults.log.level,
        Some(text) => LogLevel::parse(&text, &keys.key("log_level"))?,
    };
    let log = LogConfig {
        level,
        file_path: keys
            .string("log_file_path")?
            .filter(|path| !path.is_empty())
            .map_or(defaults.log.file_path, PathBuf::from),
        max_size_mb: keys
            .count("log_file_max_size")?
            .unwrap_or(defaults.log.max_size_mb),
        max_age_days: keys
            .count("log_file_max_age")?
            .unwrap_or(defaults.log.max_age_days),
        max_count: keys
            .count("log_file_max_count")?
            .unwrap_or(defaults.log.max_count),
    };
    let socket_text = keys.string("ipam_unix_socket_path")?;
    let socket_path_from_netconf = socket_text.is_some();
    let socket_path = match socket_text {
        None => defaults.socket_path,
        Some(path) if path.is_empty() => {
            return Err(ConfigError::invalid(
                "ipam.ipam_unix_socket_path",
                "must not be empty",
            ));
        }
        Some(path) => PathBuf::from(path),
    };
    Ok(IpamConfig {
        plugin_type: keys.string("type")?.unwrap_or_default(),
        log,
        default_ipv4_ippool: keys.strings("default_ipv4_ippool")?,
        default_ipv6_ippool: keys.strings("default_ipv6_ippool")?,
        clean_gateway: keys.bool("clean_gateway")?.unwrap_or(false),
        match_master_subnet: keys.bool("match_master_subnet")?.unwrap_or(false),
        socket_path,
        socket_path_from_netconf,
        timeout: keys
            .seconds("timeout_seconds", MAX_TIMEOUT)?
            .unwrap_or(defaults.timeout),
    })
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
            conf.ipam.log,
            LogConfig::in_file("/var/log/spidernet/spiderpool.log")
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
