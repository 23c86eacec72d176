//! Reading a network configuration (stdin) by hand, key by key, so that every bad value is reported
//! with its dotted key (`ipam.log_file_max_size: ...`) and upstream's loose spellings (a numeric
//! string where an integer is declared) can be accepted. Unknown keys are ignored.
//!
//! [`parse_top`] reads what every plugin shares (`cniVersion`, `name`, `prevResult`); a [`Section`]
//! reads one object's keys under a prefix.

use std::time::Duration;

use serde_json::{Map, Value};
use spiderpool_agent_api::codes;
use thiserror::Error;

use crate::cni::{CniError, SpecVersion};

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
        key: String,
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
    /// A bad value of `key`.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The CNI error to report: 6 for undecodable stdin, 1 for the version, 7 otherwise.
    pub fn to_cni(&self) -> CniError {
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

/// Reads `cniVersion` without judging the rest, for labelling errors found before (or while)
/// the whole configuration is parsed.
pub fn peek_cni_version(stdin: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(stdin).ok()?;
    value.get("cniVersion")?.as_str().map(str::to_owned)
}

/// What every plugin reads from the top level of its configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Top {
    /// `cniVersion`.
    pub cni_version: SpecVersion,
    /// `name` (empty when absent).
    pub name: String,
    /// `prevResult`, as given.
    pub prev_result: Option<Value>,
    /// The whole object, for the plugin's own keys.
    pub object: Map<String, Value>,
}

/// Parses stdin as a JSON object and reads `cniVersion` (required, supported), `name` and
/// `prevResult` (an object when present).
pub fn parse_top(stdin: &[u8]) -> Result<Top, ConfigError> {
    let value: Value = serde_json::from_slice(stdin).map_err(ConfigError::Decode)?;
    let Value::Object(object) = value else {
        return Err(ConfigError::NotAnObject);
    };
    let top = Section::new(&object, "");
    let version_text = top.string("cniVersion")?.ok_or_else(|| ConfigError::Missing {
        key: "cniVersion".to_owned(),
    })?;
    let cni_version = SpecVersion::parse(&version_text).map_err(ConfigError::Version)?;
    let name = top.string("name")?.unwrap_or_default();
    let prev_result = top.object("prevResult")?.map(|map| Value::Object(map.clone()));
    Ok(Top {
        cni_version,
        name,
        prev_result,
        object,
    })
}

/// The keys of one JSON object, reported under `prefix` (e.g. `"ipam."`).
#[derive(Clone, Copy, Debug)]
pub struct Section<'a> {
    map: &'a Map<String, Value>,
    prefix: &'a str,
}

impl<'a> Section<'a> {
    /// The keys of `map`, named `<prefix><key>` in errors.
    pub fn new(map: &'a Map<String, Value>, prefix: &'a str) -> Self {
        Self { map, prefix }
    }

    /// The dotted name of `key`.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|value| !value.is_null())
    }

    fn complain(&self, key: &str, expected: &str, got: &Value) -> ConfigError {
        ConfigError::invalid(
            self.key(key),
            format!("expected {expected}, got {}", excerpt(got)),
        )
    }

    /// Whether `key` is present (and not null).
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A string.
    pub fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(self.complain(key, "a string", other)),
        }
    }

    /// A boolean.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(other) => Err(self.complain(key, "true or false", other)),
        }
    }

    /// A list of strings (empty when absent).
    pub fn strings(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(list @ Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.complain(key, "a list of strings", list)),
            Some(other) => Err(self.complain(key, "a list of strings", other)),
        }
    }

    /// An object.
    pub fn object(&self, key: &str) -> Result<Option<&'a Map<String, Value>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(other) => Err(self.complain(key, "an object", other)),
        }
    }

    /// A list, as given.
    pub fn array(&self, key: &str) -> Result<&'a [Value], ConfigError> {
        match self.get(key) {
            None => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(other) => Err(self.complain(key, "a list", other)),
        }
    }

    /// An integer (JSON number without a fraction).
    pub fn integer(&self, key: &str) -> Result<Option<i64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(number @ Value::Number(inner)) => inner
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.complain(key, "an integer", number)),
            Some(other) => Err(self.complain(key, "an integer", other)),
        }
    }

    /// A non-negative integer, also accepted as a numeric string: upstream declares its log size
    /// keys as ints, yet its documentation shows `"log_file_max_size": "100"`, which upstream's
    /// own JSON decoding rejects (reference 6.1, 13.8). We take both.
    pub fn count(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        const EXPECTED: &str = "a non-negative integer";
        match self.get(key) {
            None => Ok(None),
            Some(number @ Value::Number(inner)) => inner
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.complain(key, EXPECTED, number)),
            Some(text @ Value::String(inner)) => inner
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| self.complain(key, EXPECTED, text)),
            Some(other) => Err(self.complain(key, EXPECTED, other)),
        }
    }

    /// A positive number of seconds (fractions allowed, numeric strings too), at most `max`: a
    /// deadline from a netconf must stay a deadline.
    pub fn seconds(&self, key: &str, max: Duration) -> Result<Option<Duration>, ConfigError> {
        let expected = format!("a positive number of seconds up to {}", max.as_secs());
        let seconds = match self.get(key) {
            None => return Ok(None),
            Some(number @ Value::Number(inner)) => inner
                .as_f64()
                .ok_or_else(|| self.complain(key, &expected, number))?,
            Some(text @ Value::String(inner)) => inner
                .trim()
                .parse::<f64>()
                .map_err(|_| self.complain(key, &expected, text))?,
            Some(other) => return Err(self.complain(key, &expected, other)),
        };
        match Duration::try_from_secs_f64(seconds) {
            Ok(duration) if !duration.is_zero() && duration <= max => Ok(Some(duration)),
            _ => Err(self.complain(key, &expected, &Value::from(seconds))),
        }
    }
}

/// A value as shown in an error: its JSON, cut short (a hostile configuration may be large).
fn excerpt(value: &Value) -> String {
    const MAX: usize = 120;
    let text = value.to_string();
    if text.len() <= MAX {
        return text;
    }
    let cut = (0..=MAX).rev().find(|&at| text.is_char_boundary(at)).unwrap_or(0);
    format!("{}...", &text[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn section(value: &Value) -> Section<'_> {
        Section::new(value.as_object().unwrap(), "p.")
    }

    #[test]
    fn typed_readers_name_the_key_on_a_bad_value() {
        let value = json!({"s": 1, "b": "x", "l": [1], "o": [], "i": 1.5, "c": -1, "t": "soon", "a": {}});
        let keys = section(&value);
        let errors = [
            keys.string("s").unwrap_err(),
            keys.bool("b").unwrap_err(),
            keys.strings("l").unwrap_err(),
            keys.object("o").unwrap_err(),
            keys.integer("i").unwrap_err(),
            keys.count("c").unwrap_err(),
            keys.seconds("t", Duration::from_secs(10)).unwrap_err(),
            keys.array("a").unwrap_err(),
        ];
        for (error, key) in errors
            .iter()
            .zip(["p.s", "p.b", "p.l", "p.o", "p.i", "p.c", "p.t", "p.a"])
        {
            assert!(
                error.to_string().starts_with(&format!("{key}: expected")),
                "{error}"
            );
            assert_eq!(error.to_cni().code, 7);
        }
    }

    #[test]
    fn absent_and_null_are_the_same() {
        let value = json!({"n": null});
        let keys = section(&value);
        assert_eq!(keys.string("n").unwrap(), None);
        assert_eq!(keys.string("absent").unwrap(), None);
        assert!(keys.strings("n").unwrap().is_empty());
        assert!(keys.array("n").unwrap().is_empty());
        assert!(!keys.has("n"));
    }

    #[test]
    fn counts_accept_numeric_strings_and_seconds_are_bounded() {
        let value = json!({"c": " 7 ", "t": "1.5", "huge": 1e300, "big": 1e12, "zero": 0});
        let keys = section(&value);
        assert_eq!(keys.count("c").unwrap(), Some(7));
        let max = Duration::from_secs(600);
        assert_eq!(keys.seconds("t", max).unwrap(), Some(Duration::from_millis(1500)));
        for key in ["huge", "big", "zero"] {
            let error = keys.seconds(key, max).unwrap_err().to_string();
            assert!(error.contains("up to 600"), "{error}");
        }
    }

    #[test]
    fn errors_quote_at_most_a_short_excerpt() {
        let long = "é".repeat(10_000);
        let value = json!({ "s": [long] });
        let message = section(&value).string("s").unwrap_err().to_string();
        assert!(message.len() < 200, "{}", message.len());
        assert!(message.ends_with("..."));
    }

    #[test]
    fn top_level_problems() {
        assert!(matches!(parse_top(b"not json"), Err(ConfigError::Decode(_))));
        assert_eq!(parse_top(b"not json").unwrap_err().to_cni().code, 6);
        assert_eq!(parse_top(b"[1]").unwrap_err().to_cni().code, 6);
        let missing = parse_top(br#"{"name":"n"}"#).unwrap_err();
        assert_eq!(missing.to_string(), "cniVersion: missing");
        assert_eq!(missing.to_cni().code, 7);
        assert_eq!(
            parse_top(br#"{"cniVersion":"0.2.0"}"#).unwrap_err().to_cni().code,
            1
        );
        let bad_prev = parse_top(br#"{"cniVersion":"1.0.0","prevResult":"x"}"#).unwrap_err();
        assert!(bad_prev.to_string().starts_with("prevResult:"), "{bad_prev}");
        let top = parse_top(br#"{"cniVersion":"1.0.0","name":"n","prevResult":{"ips":[]}}"#).unwrap();
        assert_eq!((top.cni_version, top.name.as_str()), (SpecVersion::V1_0_0, "n"));
        assert_eq!(top.prev_result, Some(json!({"ips": []})));
    }

    #[test]
    fn deeply_nested_input_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse_top(deep.as_bytes()).unwrap_err().to_cni().code, 6);
        assert_eq!(peek_cni_version(deep.as_bytes()), None);
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
}
