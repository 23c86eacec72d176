//! `CNI_ARGS`: `KEY=VALUE` pairs separated by `;` (e.g. the pod identity kubelet passes).

use thiserror::Error;

/// Why `CNI_ARGS` could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArgsError {
    /// A non-empty segment without `=`, or with an empty key.
    #[error("CNI_ARGS: {pair:?} is not a KEY=VALUE pair")]
    MalformedPair {
        /// The offending segment.
        pair: String,
    },
    /// `IgnoreUnknown` with something other than a boolean.
    #[error("CNI_ARGS: IgnoreUnknown={value:?} is not a boolean (expected true, false, 1 or 0)")]
    InvalidIgnoreUnknown {
        /// The value given.
        value: String,
    },
}

/// The keys this plugin reads; everything else is kept in [`CniArgs::unknown`] and ignored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CniArgs {
    /// `K8S_POD_NAME`.
    pub pod_name: Option<String>,
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID` (informational).
    pub pod_infra_container_id: Option<String>,
    /// `K8S_POD_UID`.
    pub pod_uid: Option<String>,
    /// `IgnoreUnknown`.
    pub ignore_unknown: bool,
    /// Keys we do not know, in order of appearance.
    pub unknown: Vec<String>,
}

impl CniArgs {
    /// Parses `CNI_ARGS`.
    ///
    /// Unknown keys are accepted whatever `IgnoreUnknown` says: upstream (Go `types.LoadArgs`)
    /// rejects them without `IgnoreUnknown`, but the runtime and Multus decide what they pass,
    /// and refusing a pod over an extra key helps no one. A key given more than once keeps its
    /// **last** value, as Go's `LoadArgs` does (Multus repeats `IgnoreUnknown=true`, and a later
    /// value is the more specific one). Empty segments (`a=b;;c=d`, a trailing `;`) are skipped;
    /// a value may itself contain `=`. Empty values count as absent.
    pub fn parse(text: &str) -> Result<Self, ArgsError> {
        let mut args = Self::default();
        for pair in text.split(';').map(str::trim).filter(|pair| !pair.is_empty()) {
            let Some((key, value)) = pair.split_once('=').filter(|(key, _)| !key.is_empty()) else {
                return Err(ArgsError::MalformedPair {
                    pair: pair.to_owned(),
                });
            };
            let value = (!value.is_empty()).then(|| value.to_owned());
            match key {
                "K8S_POD_NAME" => args.pod_name = value,
                "K8S_POD_NAMESPACE" => args.pod_namespace = value,
                "K8S_POD_INFRA_CONTAINER_ID" => args.pod_infra_container_id = value,
                "K8S_POD_UID" => args.pod_uid = value,
                "IgnoreUnknown" => args.ignore_unknown = parse_bool(value.as_deref().unwrap_or_default())?,
                other => args.unknown.push(other.to_owned()),
            }
        }
        Ok(args)
    }
}

fn parse_bool(value: &str) -> Result<bool, ArgsError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" => Ok(true),
        "0" | "false" | "" => Ok(false),
        _ => Err(ArgsError::InvalidIgnoreUnknown {
            value: value.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_args_parse() {
        let args = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=6b1c-42",
        )
        .unwrap();
        assert_eq!(
            args,
            CniArgs {
                pod_name: Some("web-0".into()),
                pod_namespace: Some("default".into()),
                pod_infra_container_id: Some("abc123".into()),
                pod_uid: Some("6b1c-42".into()),
                ignore_unknown: true,
                unknown: vec![],
            }
        );
    }

    #[test]
    fn duplicated_keys_keep_the_last_value() {
        let args =
            CniArgs::parse("IgnoreUnknown=true;IgnoreUnknown=true;K8S_POD_NAME=a;K8S_POD_NAME=b").unwrap();
        assert!(args.ignore_unknown);
        assert_eq!(args.pod_name.as_deref(), Some("b"));
        let flipped = CniArgs::parse("IgnoreUnknown=true;IgnoreUnknown=false").unwrap();
        assert!(!flipped.ignore_unknown);
    }

    #[test]
    fn unknown_keys_are_accepted_with_or_without_ignore_unknown() {
        let args = CniArgs::parse("K8S_POD_NAME=p;MAC=aa:bb;IP=10.0.0.1").unwrap();
        assert_eq!(args.unknown, vec!["MAC".to_owned(), "IP".to_owned()]);
        assert!(!args.ignore_unknown);
    }

    #[test]
    fn empty_text_and_empty_segments_are_fine() {
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        let args = CniArgs::parse(";K8S_POD_NAME=p;;").unwrap();
        assert_eq!(args.pod_name.as_deref(), Some("p"));
    }

    #[test]
    fn missing_values_are_absent_and_values_may_hold_equals() {
        let args = CniArgs::parse("K8S_POD_NAME=;K8S_POD_NAMESPACE=a=b").unwrap();
        assert_eq!(args.pod_name, None);
        assert_eq!(args.pod_namespace.as_deref(), Some("a=b"));
    }

    #[test]
    fn malformed_pairs_are_named() {
        let error = CniArgs::parse("K8S_POD_NAME=p;garbage").unwrap_err();
        assert_eq!(
            error,
            ArgsError::MalformedPair {
                pair: "garbage".into()
            }
        );
        assert!(error.to_string().contains("CNI_ARGS"));
        assert!(CniArgs::parse("=value").is_err());
    }

    #[test]
    fn ignore_unknown_must_be_a_boolean() {
        let error = CniArgs::parse("IgnoreUnknown=maybe").unwrap_err();
        assert!(error.to_string().contains("IgnoreUnknown"), "{error}");
        assert!(CniArgs::parse("IgnoreUnknown=TRUE").unwrap().ignore_unknown);
    }
}
