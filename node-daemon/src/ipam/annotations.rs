//! The pod and namespace annotations that steer allocation (upstream's `ipam.spidernet.io/*`, reference
//! section 3.1), parsed strictly: a malformed annotation fails that pod's ADD with an error naming the
//! annotation and the problem, and never affects any other pod.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use spiderpool_schema::annotations::SubnetItem;

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

/// The most bytes of one annotation value this daemon reads (a pod author controls them; Kubernetes
/// allows 256 KiB for all of a pod's annotations together, and a real `ippools` is well under 1 KiB).
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// The longest pool or subnet name (or wildcard) an annotation may give: a Kubernetes object name.
pub const MAX_NAME_LEN: usize = 253;
/// The most pool or subnet names (or wildcards) one annotation may give, all items and families
/// together.
pub const MAX_NAMES: usize = 64;
/// The most items of `ippools` or `subnets` (interfaces of one pod).
pub const MAX_ITEMS: usize = 32;
/// The most routes of `ipam.spidernet.io/routes`.
pub const MAX_ROUTES: usize = 128;
/// The longest interface name: Linux's limit.
pub const MAX_INTERFACE_LEN: usize = 15;

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

fn check_size(annotation: &str, text: &str) -> Result<(), AnnotationError> {
    if text.len() > MAX_VALUE_BYTES {
        return Err(AnnotationError::new(
            annotation,
            format!(
                "the value is {} bytes, more than the {MAX_VALUE_BYTES} this daemon reads",
                text.len()
            ),
        ));
    }
    Ok(())
}

fn parse<T: DeserializeOwned>(annotation: &str, text: &str) -> Result<T, AnnotationError> {
    check_size(annotation, text)?;
    serde_json::from_str(text).map_err(|e| AnnotationError::new(annotation, format!("invalid JSON: {e}")))
}

fn check_count(annotation: &str, what: &str, count: usize, max: usize) -> Result<(), AnnotationError> {
    if count > max {
        return Err(AnnotationError::new(
            annotation,
            format!("{count} {what}, more than the {max} allowed"),
        ));
    }
    Ok(())
}

/// Parses `ipam.spidernet.io/ippool`.
pub fn parse_ippool(text: &str) -> Result<PoolsForNic, AnnotationError> {
    let pools: PoolsForNic = parse(ANNO_IPPOOL, text)?;
    check_count(
        ANNO_IPPOOL,
        "pool names",
        pools.ipv4.len() + pools.ipv6.len(),
        MAX_NAMES,
    )?;
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
    check_count(ANNO_IPPOOLS, "items", items.len(), MAX_ITEMS)?;
    let names: usize = items.iter().map(|i| i.ipv4.len() + i.ipv6.len()).sum();
    check_count(ANNO_IPPOOLS, "pool names", names, MAX_NAMES)?;
    check_interfaces(ANNO_IPPOOLS, items.iter().map(|i| i.interface.as_str()))?;
    for (index, item) in items.iter().enumerate() {
        check_names(ANNO_IPPOOLS, &format!("[{index}]."), &item.ipv4, &item.ipv6)?;
    }
    Ok(items)
}

/// The SpiderSubnets a pod asks for, read by the rules the operator shares
/// ([`spiderpool_schema::annotations::parse_subnet_items`]), within this daemon's bounds: the value's
/// size is checked before it is parsed, the number of items and the names' lengths after.
pub fn parse_subnets(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<(&'static str, Vec<SubnetItem>)>, AnnotationError> {
    for key in [ANNO_SUBNETS, ANNO_SUBNET] {
        if let Some(text) = annotations.get(key) {
            check_size(key, text)?;
        }
    }
    let Some((key, items)) = spiderpool_schema::annotations::parse_subnet_items(annotations)? else {
        return Ok(None);
    };
    check_count(key, "items", items.len(), MAX_ITEMS)?;
    for (index, item) in items.iter().enumerate() {
        if item.interface.len() > MAX_INTERFACE_LEN {
            return Err(AnnotationError::new(
                key,
                format!("[{index}].interface is longer than {MAX_INTERFACE_LEN} characters"),
            ));
        }
        for (family, name) in [("ipv4", &item.ipv4), ("ipv6", &item.ipv6)] {
            if name.as_ref().is_some_and(|n| n.chars().count() > MAX_NAME_LEN) {
                return Err(AnnotationError::new(
                    key,
                    format!("[{index}].{family} is longer than {MAX_NAME_LEN} characters"),
                ));
            }
        }
    }
    Ok(Some((key, items)))
}

/// Parses `ipam.spidernet.io/routes`, checking every destination and gateway.
pub fn parse_routes(text: &str) -> Result<Vec<RouteItem>, AnnotationError> {
    let routes: Vec<RouteItem> = parse(ANNO_ROUTES, text)?;
    check_count(ANNO_ROUTES, "routes", routes.len(), MAX_ROUTES)?;
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
    check_count(annotation, "pool names", names.len(), MAX_NAMES)?;
    if let Some(long) = names.iter().position(|n| n.chars().count() > MAX_NAME_LEN) {
        return Err(AnnotationError::new(
            annotation,
            format!("[{long}] is longer than {MAX_NAME_LEN} characters"),
        ));
    }
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
        if name.len() > MAX_INTERFACE_LEN {
            return Err(AnnotationError::new(
                annotation,
                format!("interface name {name} is longer than {MAX_INTERFACE_LEN} characters"),
            ));
        }
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
            if name.chars().count() > MAX_NAME_LEN {
                return Err(AnnotationError::new(
                    annotation,
                    format!("{at}{family}[{index}] is longer than {MAX_NAME_LEN} characters"),
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

    /// A pod author controls these values: each is bounded before anything costs more than reading it.
    #[test]
    fn oversized_values_names_and_lists_are_refused_naming_the_annotation() {
        let huge = format!(r#"{{"ipv4":["{}"]}}"#, "a".repeat(MAX_VALUE_BYTES));
        let err = parse_ippool(&huge).unwrap_err();
        assert!(err.reason.contains("more than the 16384"), "{err}");
        let long = format!(r#"{{"ipv4":["{}*"]}}"#, "a".repeat(MAX_NAME_LEN));
        let err = parse_ippool(&long).unwrap_err();
        assert!(err.reason.contains("ipv4[0] is longer than 253"), "{err}");
        let many: Vec<String> = (0..=MAX_NAMES).map(|i| format!("p{i}")).collect();
        let err = parse_ippool(&serde_json::json!({"ipv4": many}).to_string()).unwrap_err();
        assert!(err.reason.contains("65 pool names"), "{err}");
        let items: Vec<serde_json::Value> = (0..=MAX_ITEMS)
            .map(|i| serde_json::json!({"interface": format!("net{i}"), "ipv4": ["a"]}))
            .collect();
        let err = parse_ippools(&serde_json::Value::from(items).to_string()).unwrap_err();
        assert!(err.reason.contains("33 items"), "{err}");
        let err = parse_ippools(r#"[{"interface":"an-interface-too-long","ipv4":["a"]}]"#).unwrap_err();
        assert!(err.reason.contains("longer than 15"), "{err}");
        let routes: Vec<serde_json::Value> = (0..=MAX_ROUTES)
            .map(|_| serde_json::json!({"dst": "10.0.0.0/16", "gw": "192.168.1.1"}))
            .collect();
        let err = parse_routes(&serde_json::Value::from(routes).to_string()).unwrap_err();
        assert!(err.reason.contains("129 routes"), "{err}");
        let err = parse_namespace_pools(
            ANNO_NS_DEFAULT_IPV4,
            &serde_json::json!(["a".repeat(300)]).to_string(),
        )
        .unwrap_err();
        assert!(err.reason.contains("longer than 253"), "{err}");
        let subnets = |key: &str, value: String| BTreeMap::from([(key.to_owned(), value)]);
        let err = parse_subnets(&subnets(ANNO_SUBNET, " ".repeat(MAX_VALUE_BYTES + 1))).unwrap_err();
        assert!(err.reason.contains("more than the 16384"), "{err}");
        let items: Vec<serde_json::Value> = (0..=MAX_ITEMS)
            .map(|i| serde_json::json!({"interface": format!("net{i}"), "ipv4": [format!("s{i}")]}))
            .collect();
        let err =
            parse_subnets(&subnets(ANNO_SUBNETS, serde_json::Value::from(items).to_string())).unwrap_err();
        assert!(err.reason.contains("33 items"), "{err}");
        let long = serde_json::json!({"ipv6": ["s".repeat(MAX_NAME_LEN + 1)]}).to_string();
        let err = parse_subnets(&subnets(ANNO_SUBNET, long)).unwrap_err();
        assert!(err.reason.contains("[0].ipv6 is longer than 253"), "{err}");
        let fine = parse_subnets(&subnets(ANNO_SUBNET, r#"{"ipv4":["s4"]}"#.to_owned())).unwrap();
        assert_eq!(
            fine.map(|(_, items)| items[0].ipv4.clone()),
            Some(Some("s4".to_owned()))
        );
        // Deeply nested JSON is refused by the parser, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_routes(&deep).is_err());
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
