//! The pod and namespace annotations that steer allocation (upstream's `ipam.spidernet.io/*`, reference
//! section 3.1), parsed strictly: a malformed annotation fails that pod's ADD with an error naming the
//! annotation and the problem, and never affects any other pod.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Candidate pools for the interface being added: `{"ipv4":["p1"],"ipv6":["p6"]}`.
pub const ANNO_IPPOOL: &str = "ipam.spidernet.io/ippool";
/// Candidate pools for several interfaces at once (wins over [`ANNO_IPPOOL`]).
pub const ANNO_IPPOOLS: &str = "ipam.spidernet.io/ippools";
/// Extra routes: `[{"dst":"10.0.0.0/16","gw":"192.168.1.1"}]`.
pub const ANNO_ROUTES: &str = "ipam.spidernet.io/routes";
/// SpiderSubnet automatic pools, for the interface being added or for several (`subnets` wins).
pub use spiderpool_schema::annotations::{ANNO_SUBNET, ANNO_SUBNETS};
/// Namespace annotation: default IPv4 pools of the namespace (JSON string array).
pub const ANNO_NS_DEFAULT_IPV4: &str = "ipam.spidernet.io/default-ipv4-ippool";
/// Namespace annotation: default IPv6 pools of the namespace (JSON string array).
pub const ANNO_NS_DEFAULT_IPV6: &str = "ipam.spidernet.io/default-ipv6-ippool";

/// A malformed or contradictory annotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {reason}")]
pub struct AnnotationError {
    /// The annotation key, e.g. `ipam.spidernet.io/ippools`.
    pub annotation: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The shared SpiderSubnet parser's error, in this module's shape.
impl From<spiderpool_schema::annotations::AnnotationError> for AnnotationError {
    fn from(e: spiderpool_schema::annotations::AnnotationError) -> Self {
        AnnotationError::new(e.annotation, e.reason)
    }
}

impl AnnotationError {
    fn new(annotation: &str, reason: impl Into<String>) -> Self {
        AnnotationError {
            annotation: annotation.to_owned(),
            reason: reason.into(),
        }
    }
}

/// `ipam.spidernet.io/ippool`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolsForNic {
    /// IPv4 pool names (or wildcards).
    #[serde(default)]
    pub ipv4: Vec<String>,
    /// IPv6 pool names (or wildcards).
    #[serde(default)]
    pub ipv6: Vec<String>,
}

/// One item of `ipam.spidernet.io/ippools`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolsItem {
    /// Interface the item is for; all items name one or none does.
    #[serde(default)]
    pub interface: String,
    /// IPv4 pool names (or wildcards).
    #[serde(default)]
    pub ipv4: Vec<String>,
    /// IPv6 pool names (or wildcards).
    #[serde(default)]
    pub ipv6: Vec<String>,
    /// No default route through the gateway on this interface.
    #[serde(default)]
    pub cleangateway: bool,
}

/// One route of `ipam.spidernet.io/routes`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RouteItem {
    /// Destination CIDR.
    pub dst: String,
    /// Next hop.
    pub gw: String,
}

fn parse<T: DeserializeOwned>(annotation: &str, text: &str) -> Result<T, AnnotationError> {
    serde_json::from_str(text).map_err(|e| AnnotationError::new(annotation, format!("invalid JSON: {e}")))
}

/// Parses `ipam.spidernet.io/ippool`.
pub fn parse_ippool(text: &str) -> Result<PoolsForNic, AnnotationError> {
    let pools: PoolsForNic = parse(ANNO_IPPOOL, text)?;
    check_names(ANNO_IPPOOL, "", &pools.ipv4, &pools.ipv6)?;
    Ok(pools)
}

/// Parses `ipam.spidernet.io/ippools` and checks upstream's rules: interfaces named on all items or on
/// none, no interface twice, no empty item.
pub fn parse_ippools(text: &str) -> Result<Vec<PoolsItem>, AnnotationError> {
    let items: Vec<PoolsItem> = parse(ANNO_IPPOOLS, text)?;
    if items.is_empty() {
        return Err(AnnotationError::new(ANNO_IPPOOLS, "the list is empty"));
    }
    check_interfaces(ANNO_IPPOOLS, items.iter().map(|i| i.interface.as_str()))?;
    for (index, item) in items.iter().enumerate() {
        check_names(ANNO_IPPOOLS, &format!("[{index}]."), &item.ipv4, &item.ipv6)?;
    }
    Ok(items)
}

/// Parses `ipam.spidernet.io/routes`, checking every destination and gateway.
pub fn parse_routes(text: &str) -> Result<Vec<RouteItem>, AnnotationError> {
    let routes: Vec<RouteItem> = parse(ANNO_ROUTES, text)?;
    for (index, route) in routes.iter().enumerate() {
        let dst = spiderpool_ipmath::parse_cidr(&route.dst)
            .map_err(|e| AnnotationError::new(ANNO_ROUTES, format!("[{index}].dst: {e}")))?;
        let gw = spiderpool_ipmath::parse_ip(&route.gw)
            .map_err(|e| AnnotationError::new(ANNO_ROUTES, format!("[{index}].gw: {e}")))?;
        if dst.addr().is_ipv4() != gw.is_ipv4() {
            return Err(AnnotationError::new(
                ANNO_ROUTES,
                format!(
                    "[{index}]: dst {} and gw {} are of different IP families",
                    route.dst, route.gw
                ),
            ));
        }
    }
    Ok(routes)
}

/// Parses a namespace's `default-ipv4-ippool` / `default-ipv6-ippool` (a JSON array of pool names).
pub fn parse_namespace_pools(annotation: &str, text: &str) -> Result<Vec<String>, AnnotationError> {
    let names: Vec<String> = parse(annotation, text)?;
    if let Some(empty) = names.iter().position(|n| n.trim().is_empty()) {
        return Err(AnnotationError::new(
            annotation,
            format!("[{empty}] is an empty pool name"),
        ));
    }
    Ok(names)
}

/// The namespace's default pools per family, `(ipv4, ipv6)`.
pub fn namespace_default_pools(
    annotations: &BTreeMap<String, String>,
) -> Result<(Vec<String>, Vec<String>), AnnotationError> {
    let get = |key: &str| match annotations.get(key) {
        Some(text) => parse_namespace_pools(key, text),
        None => Ok(Vec::new()),
    };
    Ok((get(ANNO_NS_DEFAULT_IPV4)?, get(ANNO_NS_DEFAULT_IPV6)?))
}

fn check_interfaces<'a>(
    annotation: &str,
    names: impl Iterator<Item = &'a str>,
) -> Result<(), AnnotationError> {
    let names: Vec<&str> = names.collect();
    let named = names.iter().filter(|n| !n.is_empty()).count();
    if named != 0 && named != names.len() {
        return Err(AnnotationError::new(
            annotation,
            "either every item names its interface or none does",
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for name in names.iter().filter(|n| !n.is_empty()) {
        if !seen.insert(*name) {
            return Err(AnnotationError::new(
                annotation,
                format!("interface {name} is listed twice"),
            ));
        }
    }
    Ok(())
}

fn check_names(annotation: &str, at: &str, ipv4: &[String], ipv6: &[String]) -> Result<(), AnnotationError> {
    if ipv4.is_empty() && ipv6.is_empty() {
        return Err(AnnotationError::new(
            annotation,
            format!("{at}ipv4 and {at}ipv6 are both empty"),
        ));
    }
    for (family, names) in [("ipv4", ipv4), ("ipv6", ipv6)] {
        let mut seen = std::collections::BTreeSet::new();
        for (index, name) in names.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(AnnotationError::new(
                    annotation,
                    format!("{at}{family}[{index}] is empty"),
                ));
            }
            if !seen.insert(name) {
                return Err(AnnotationError::new(
                    annotation,
                    format!("{at}{family}: {name} is listed twice"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ippool_parses_and_rejects_with_the_annotation_name() {
        let ok = parse_ippool(r#"{"ipv4":["a","b"],"ipv6":["c"]}"#).unwrap();
        assert_eq!(ok.ipv4, ["a", "b"]);
        let err = parse_ippool("{not json").unwrap_err();
        assert_eq!(err.annotation, ANNO_IPPOOL);
        assert!(
            err.to_string()
                .starts_with("annotation ipam.spidernet.io/ippool: invalid JSON"),
            "{err}"
        );
        let err = parse_ippool(r#"{}"#).unwrap_err();
        assert!(err.reason.contains("both empty"), "{err}");
        let err = parse_ippool(r#"{"ipv4":["a","a"]}"#).unwrap_err();
        assert!(err.reason.contains("a is listed twice"), "{err}");
        let err = parse_ippool(r#"{"ipv4":"a"}"#).unwrap_err();
        assert!(err.reason.contains("invalid JSON"), "{err}");
    }

    #[test]
    fn ippools_enforces_interface_naming_rules() {
        let items = parse_ippools(
            r#"[{"interface":"eth0","ipv4":["a"]},{"interface":"net1","ipv4":["b"],"cleangateway":true}]"#,
        )
        .unwrap();
        assert!(items[1].cleangateway);
        let err = parse_ippools(r#"[{"interface":"eth0","ipv4":["a"]},{"ipv4":["b"]}]"#).unwrap_err();
        assert!(
            err.reason.contains("every item names its interface or none"),
            "{err}"
        );
        let err = parse_ippools(r#"[{"interface":"eth0","ipv4":["a"]},{"interface":"eth0","ipv4":["b"]}]"#)
            .unwrap_err();
        assert!(err.reason.contains("eth0 is listed twice"), "{err}");
        let err = parse_ippools("[]").unwrap_err();
        assert!(err.reason.contains("empty"), "{err}");
        let err = parse_ippools(r#"[{"interface":"eth0"}]"#).unwrap_err();
        assert!(
            err.reason.contains("[0].ipv4 and [0].ipv6 are both empty"),
            "{err}"
        );
        assert!(parse_ippools(r#"[{"ipv4":["a"]},{"ipv6":["b"]}]"#).is_ok());
    }

    #[test]
    fn routes_are_checked_item_by_item() {
        let routes = parse_routes(r#"[{"dst":"10.0.0.0/16","gw":"192.168.1.1"}]"#).unwrap();
        assert_eq!(routes[0].gw, "192.168.1.1");
        let err = parse_routes(r#"[{"dst":"10.0.0.0/99","gw":"192.168.1.1"}]"#).unwrap_err();
        assert!(
            err.to_string().contains("ipam.spidernet.io/routes: [0].dst"),
            "{err}"
        );
        let err = parse_routes(r#"[{"dst":"10.0.0.0/16","gw":"fd00::1"}]"#).unwrap_err();
        assert!(err.reason.contains("different IP families"), "{err}");
        let err = parse_routes(r#"[{"dst":"10.0.0.0/16"}]"#).unwrap_err();
        assert!(err.reason.contains("missing field `gw`"), "{err}");
    }

    #[test]
    fn namespace_defaults() {
        let anns = BTreeMap::from([(ANNO_NS_DEFAULT_IPV4.to_owned(), r#"["a","b*"]"#.to_owned())]);
        assert_eq!(
            namespace_default_pools(&anns).unwrap(),
            (vec!["a".to_owned(), "b*".to_owned()], vec![])
        );
        let bad = BTreeMap::from([(ANNO_NS_DEFAULT_IPV6.to_owned(), r#"["a",""]"#.to_owned())]);
        let err = namespace_default_pools(&bad).unwrap_err();
        assert_eq!(err.annotation, ANNO_NS_DEFAULT_IPV6);
    }
}
