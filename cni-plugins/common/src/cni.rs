//! CNI protocol pieces: commands, spec versions, the error object and the IPAM result, per version.
//!
//! Pure: nothing here touches the environment, stdin or stdout.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Serialize;
use spiderpool_agent_api::codes;

/// Every spec version this plugin speaks, oldest first (what VERSION reports).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest spec version we speak; used when nothing else says which version to answer in.
pub const LATEST_VERSION: &str = "1.1.0";

/// A CNI operation (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Allocate the addresses of one pod interface.
    Add,
    /// Release them.
    Del,
    /// Verify what ADD returned still holds.
    Check,
    /// Report the supported spec versions.
    Version,
    /// CNI 1.1: release what the runtime no longer knows.
    Gc,
    /// CNI 1.1: can the plugin serve ADDs right now?
    Status,
}

impl FromStr for Command {
    type Err = CniError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "ADD" => Ok(Self::Add),
            "DEL" => Ok(Self::Del),
            "CHECK" => Ok(Self::Check),
            "VERSION" => Ok(Self::Version),
            "GC" => Ok(Self::Gc),
            "STATUS" => Ok(Self::Status),
            other => Err(CniError::new(
                codes::INVALID_ENVIRONMENT,
                format!("CNI_COMMAND: unknown command {other:?}"),
                "expected one of ADD, DEL, CHECK, VERSION, GC, STATUS",
            )),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Gc => "GC",
            Self::Status => "STATUS",
        })
    }
}

/// A spec version this plugin supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SpecVersion {
    /// 0.3.0: rich results with `ips[].version`.
    V0_3_0,
    /// 0.3.1: typo fixes only.
    V0_3_1,
    /// 0.4.0: adds CHECK.
    V0_4_0,
    /// 1.0.0: drops `ips[].version`.
    V1_0_0,
    /// 1.1.0: adds GC and STATUS.
    V1_1_0,
}

impl SpecVersion {
    /// Parses a netconf `cniVersion`; anything not in [`SUPPORTED_VERSIONS`] is a code-1 error.
    pub fn parse(text: &str) -> Result<Self, CniError> {
        match text {
            "0.3.0" => Ok(Self::V0_3_0),
            "0.3.1" => Ok(Self::V0_3_1),
            "0.4.0" => Ok(Self::V0_4_0),
            "1.0.0" => Ok(Self::V1_0_0),
            "1.1.0" => Ok(Self::V1_1_0),
            other => Err(CniError::new(
                codes::INCOMPATIBLE_VERSION,
                format!("cniVersion: unsupported version {other:?}"),
                format!("this plugin supports {}", SUPPORTED_VERSIONS.join(", ")),
            )),
        }
    }

    /// The version as written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    /// Before 1.0.0 every `ips[]` entry carries `"version": "4"|"6"`.
    pub fn ips_carry_version(self) -> bool {
        self < Self::V1_0_0
    }

    /// CHECK exists since 0.4.0.
    pub fn has_check(self) -> bool {
        self >= Self::V0_4_0
    }

    /// GC and STATUS exist since 1.1.0.
    pub fn has_gc_and_status(self) -> bool {
        self >= Self::V1_1_0
    }
}

/// The VERSION answer.
#[derive(Serialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    /// The version this answer is written in.
    pub cni_version: String,
    /// [`SUPPORTED_VERSIONS`].
    pub supported_versions: Vec<String>,
}

impl VersionInfo {
    /// Answers in the requested version when we support it, else in [`LATEST_VERSION`] (a runtime
    /// asking with a version we do not know still learns what we do support).
    pub fn answering(requested: Option<&str>) -> Self {
        let cni_version = match requested.map(SpecVersion::parse) {
            Some(Ok(version)) => version.as_str(),
            _ => LATEST_VERSION,
        };
        Self {
            cni_version: cni_version.to_owned(),
            supported_versions: SUPPORTED_VERSIONS
                .iter()
                .map(|&version| version.to_owned())
                .collect(),
        }
    }
}

/// A CNI error object, printed on stdout with exit status 1.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CniError {
    /// The spec version of the invocation (filled in just before printing).
    pub cni_version: String,
    /// Well-known code (< 100) or one of the project's (see `spiderpool_agent_api::codes`).
    pub code: u32,
    /// Short message naming what failed.
    pub msg: String,
    /// Longer explanation or the cause chain.
    pub details: String,
}

impl CniError {
    /// An error in the latest spec version; [`CniError::in_version`] sets the invocation's.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            cni_version: LATEST_VERSION.to_owned(),
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The same error, labelled with the given spec version.
    #[must_use]
    pub fn in_version(mut self, cni_version: &str) -> Self {
        cni_version.clone_into(&mut self.cni_version);
        self
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "code {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(formatter, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// One address of an IPAM result.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ResultIp {
    /// `"4"` or `"6"`, only before spec 1.0.0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'static str>,
    /// `ip/prefix`.
    pub address: String,
    /// The subnet's gateway, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// One route of an IPAM result.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ResultRoute {
    /// Destination CIDR.
    pub dst: String,
    /// Next hop; absent means "the interface's gateway" to the main plugin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// An IPAM plugin's ADD result: no `interfaces`, and no `interface` index on addresses (the main
/// plugin fills those in).
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IpamResult {
    /// The netconf's `cniVersion`.
    pub cni_version: String,
    /// Addresses of the interface.
    pub ips: Vec<ResultIp>,
    /// Routes of the interface.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<ResultRoute>,
}

/// `ip/prefix` parsed, with the prefix checked against the family.
pub fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (address, prefix) = text.split_once('/')?;
    let address: IpAddr = address.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((address, prefix))
}

/// Builds a result address in the shape of `version`: the family comes from the address itself.
pub fn result_ip(version: SpecVersion, address: &str, gateway: Option<String>) -> Option<ResultIp> {
    let (ip, _) = parse_cidr(address)?;
    let family = if ip.is_ipv4() { "4" } else { "6" };
    Some(ResultIp {
        version: version.ips_carry_version().then_some(family),
        address: address.to_owned(),
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_supported_version_parses_back_to_itself() {
        for text in SUPPORTED_VERSIONS {
            assert_eq!(SpecVersion::parse(text).unwrap().as_str(), text);
        }
    }

    #[test]
    fn unsupported_versions_are_code_1_and_name_the_key() {
        for text in ["0.1.0", "0.2.0", "1.2.0", "", "1.0"] {
            let error = SpecVersion::parse(text).unwrap_err();
            assert_eq!(error.code, 1, "{text}");
            assert!(error.msg.contains("cniVersion"), "{}", error.msg);
        }
    }

    #[test]
    fn version_features_follow_the_spec() {
        assert!(SpecVersion::V0_3_1.ips_carry_version());
        assert!(SpecVersion::V0_4_0.ips_carry_version());
        assert!(!SpecVersion::V1_0_0.ips_carry_version());
        assert!(!SpecVersion::V0_3_1.has_check());
        assert!(SpecVersion::V0_4_0.has_check());
        assert!(!SpecVersion::V1_0_0.has_gc_and_status());
        assert!(SpecVersion::V1_1_0.has_gc_and_status());
    }

    #[test]
    fn version_answers_in_the_requested_version_or_the_latest() {
        let expected_list = json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
        assert_eq!(
            serde_json::to_value(VersionInfo::answering(Some("0.4.0"))).unwrap(),
            json!({"cniVersion": "0.4.0", "supportedVersions": expected_list})
        );
        assert_eq!(VersionInfo::answering(None).cni_version, "1.1.0");
        assert_eq!(VersionInfo::answering(Some("0.2.0")).cni_version, "1.1.0");
    }

    #[test]
    fn commands_parse_and_unknown_ones_are_code_4() {
        for (text, command) in [
            ("ADD", Command::Add),
            ("DEL", Command::Del),
            ("CHECK", Command::Check),
            ("VERSION", Command::Version),
            ("GC", Command::Gc),
            ("STATUS", Command::Status),
        ] {
            assert_eq!(text.parse::<Command>().unwrap(), command);
            assert_eq!(command.to_string(), text);
        }
        let error = "add".parse::<Command>().unwrap_err();
        assert_eq!(error.code, 4);
        assert!(error.msg.contains("CNI_COMMAND"));
    }

    #[test]
    fn error_object_has_the_four_keys() {
        let error = CniError::new(11, "daemon unreachable", "connect: refused").in_version("0.3.1");
        assert_eq!(
            serde_json::to_value(&error).unwrap(),
            json!({"cniVersion": "0.3.1", "code": 11, "msg": "daemon unreachable", "details": "connect: refused"})
        );
        let bare = CniError::new(7, "ipam: missing", "");
        assert_eq!(serde_json::to_value(&bare).unwrap()["details"], json!(""));
    }

    #[test]
    fn result_ips_carry_version_only_before_1_0() {
        let old = result_ip(SpecVersion::V0_4_0, "10.6.0.10/16", Some("10.6.0.1".into())).unwrap();
        assert_eq!(
            serde_json::to_value(&old).unwrap(),
            json!({"version": "4", "address": "10.6.0.10/16", "gateway": "10.6.0.1"})
        );
        let v6 = result_ip(SpecVersion::V0_3_0, "fd00::10/64", None).unwrap();
        assert_eq!(
            serde_json::to_value(&v6).unwrap(),
            json!({"version": "6", "address": "fd00::10/64"})
        );
        let new = result_ip(SpecVersion::V1_1_0, "fd00::10/64", Some("fd00::1".into())).unwrap();
        assert_eq!(
            serde_json::to_value(&new).unwrap(),
            json!({"address": "fd00::10/64", "gateway": "fd00::1"})
        );
    }

    #[test]
    fn cidrs_are_checked() {
        assert!(parse_cidr("10.0.0.1/32").is_some());
        assert!(parse_cidr("::1/128").is_some());
        for bad in ["10.0.0.1", "10.0.0.1/33", "::1/129", "x/8", "10.0.0.1/", "/8"] {
            assert!(parse_cidr(bad).is_none(), "{bad}");
            assert!(result_ip(SpecVersion::V1_0_0, bad, None).is_none(), "{bad}");
        }
    }
}
