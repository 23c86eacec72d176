//! Types and checks shared by several kinds.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::{Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use spiderpool_ipmath::{self as ipmath, IpFamily, IpSet};

use crate::validation::Problems;

/// A route: traffic to `dst` goes through `gw`. Upstream's `Route` (pools, subnets, endpoints).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
pub struct Route {
    /// Destination CIDR, e.g. `10.20.0.0/16`. Must be of the pool's IP family and must not be a default
    /// route (`0.0.0.0/0`, `::/0`): a default route comes from the gateway.
    pub dst: String,
    /// Next hop; must be inside the pool's subnet.
    pub gw: String,
}

/// Schema for `status.conditions`: a list-map keyed by `type`, as the Kubernetes API conventions ask, so
/// that server-side apply merges conditions by type instead of replacing the list.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<Condition>();
    json_schema!({
        "type": "array",
        "description": "Observations of the object's state (Ready and friends), with observedGeneration.",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": item,
    })
}

/// `ipVersion` as upstream writes it (4 or 6) to our family type.
pub(crate) fn family_of_version(version: i64) -> Option<IpFamily> {
    IpFamily::from_version(version)
}

/// Checks a CIDR that upstream requires in canonical form (`10.6.0.0/16`, not `10.6.0.1/16`).
pub(crate) fn check_canonical_cidr(problems: &mut Problems, path: &str, cidr: &str) -> Option<IpNet> {
    match ipmath::parse_canonical_cidr(cidr) {
        Ok(net) => Some(net),
        Err(e) => {
            problems.push(path, e.to_string());
            None
        }
    }
}

/// Checks that `ipVersion`, when set, agrees with the family of the CIDR, and returns the family.
pub(crate) fn check_ip_version(
    problems: &mut Problems,
    path: &str,
    version: Option<i64>,
    net: Option<&IpNet>,
) -> Option<IpFamily> {
    let from_net = net.map(|n| IpFamily::of(&n.addr()));
    match version {
        None => from_net,
        Some(v) => {
            match family_of_version(v) {
                None => {
                    problems.push(path, format!("must be 4 or 6, not {v}"));
                    from_net
                }
                Some(declared) => {
                    if let Some(actual) = from_net
                        && actual != declared
                    {
                        problems.push(
                        path,
                        format!("says {declared} but the subnet is {actual}; remove ipVersion or make it match"),
                    );
                    }
                    Some(declared)
                }
            }
        }
    }
}

/// Parses a list of IPs and `a-b` ranges of one family, optionally requiring every address to lie in
/// `within`. Reports every bad item with its index.
pub(crate) fn check_ip_list(
    problems: &mut Problems,
    path: &str,
    family: IpFamily,
    items: &[String],
    within: Option<&IpNet>,
) -> Option<IpSet> {
    let set = match IpSet::parse_list(family, items) {
        Ok(set) => set,
        Err(errors) => {
            for e in errors {
                problems.push(format!("{path}[{}]", e.index), e.error.to_string());
            }
            return None;
        }
    };
    if let Some(net) = within {
        let outside = set.difference(&IpSet::from_cidr(net));
        if !outside.is_empty() {
            problems.push(
                path,
                format!("{} are outside the subnet {net}", outside.to_strings().join(", ")),
            );
        }
    }
    Some(set)
}

/// Checks a single address of the given family, optionally inside `within`.
pub(crate) fn check_ip(
    problems: &mut Problems,
    path: &str,
    family: Option<IpFamily>,
    text: &str,
    within: Option<&IpNet>,
) -> Option<IpAddr> {
    let ip = match ipmath::parse_ip(text) {
        Ok(ip) => ip,
        Err(e) => {
            problems.push(path, e.to_string());
            return None;
        }
    };
    if let Some(family) = family
        && IpFamily::of(&ip) != family
    {
        problems.push(
            path,
            format!("`{text}` is {} but this field needs {family}", IpFamily::of(&ip)),
        );
        return None;
    }
    if let Some(net) = within
        && !net.contains(&ip)
    {
        problems.push(path, format!("`{text}` is outside the subnet {net}"));
    }
    Some(ip)
}

/// The address fields SpiderIPPool and SpiderSubnet share, checked by [`check_address_block`].
pub(crate) struct AddressBlock<'a> {
    pub subnet: &'a str,
    pub ip_version: Option<i64>,
    pub ips: &'a [String],
    pub exclude_ips: &'a [String],
    pub gateway: Option<&'a str>,
    pub routes: &'a [Route],
}

/// Upstream's rules for a pool's or subnet's addresses: canonical subnet, matching `ipVersion`, `ips` and
/// `excludeIPs` inside the subnet, the gateway inside the subnet and not handed out, valid routes.
/// `noun` names the object in messages ("pool", "subnet").
pub(crate) fn check_address_block(problems: &mut Problems, path: &str, block: AddressBlock<'_>, noun: &str) {
    let net = check_canonical_cidr(problems, &format!("{path}.subnet"), block.subnet);
    let family = check_ip_version(
        problems,
        &format!("{path}.ipVersion"),
        block.ip_version,
        net.as_ref(),
    );
    let ips =
        family.and_then(|f| check_ip_list(problems, &format!("{path}.ips"), f, block.ips, net.as_ref()));
    let excluded = family.and_then(|f| {
        check_ip_list(
            problems,
            &format!("{path}.excludeIPs"),
            f,
            block.exclude_ips,
            net.as_ref(),
        )
    });
    if let Some(gateway) = block.gateway
        && let Some(gw) = check_ip(
            problems,
            &format!("{path}.gateway"),
            family,
            gateway,
            net.as_ref(),
        )
        && let Some(ips) = &ips
        && ips.contains(&gw)
        && !excluded.as_ref().is_some_and(|ex| ex.contains(&gw))
    {
        problems.push(
            format!("{path}.gateway"),
            format!("{gateway} is one of the {noun}'s ips; remove it from ips or add it to excludeIPs"),
        );
    }
    check_routes(
        problems,
        &format!("{path}.routes"),
        family,
        block.routes,
        net.as_ref(),
    );
}

/// Upstream's route rules: `dst` is a CIDR of the pool's family and not a default route, no `dst` twice,
/// `gw` inside the subnet.
pub(crate) fn check_routes(
    problems: &mut Problems,
    path: &str,
    family: Option<IpFamily>,
    routes: &[Route],
    subnet: Option<&IpNet>,
) {
    let mut seen: Vec<IpNet> = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let here = format!("{path}[{i}]");
        match ipmath::parse_cidr(&route.dst) {
            Err(e) => problems.push(format!("{here}.dst"), e.to_string()),
            Ok(dst) => {
                let dst = dst.trunc();
                if let Some(family) = family
                    && IpFamily::of(&dst.addr()) != family
                {
                    problems.push(format!("{here}.dst"), format!("`{}` is not {family}", route.dst));
                } else if dst.prefix_len() == 0 {
                    problems.push(
                        format!("{here}.dst"),
                        "a default route is not allowed here; set the gateway instead",
                    );
                } else if seen.contains(&dst) {
                    problems.push(format!("{here}.dst"), format!("`{}` is listed twice", route.dst));
                }
                seen.push(dst);
            }
        }
        check_ip(problems, &format!("{here}.gw"), family, &route.gw, subnet);
    }
}

/// Whether `labels` satisfy a Kubernetes label selector (matchLabels AND every matchExpression), with the
/// API server's semantics. An unknown operator matches nothing, as the API server would refuse it.
pub fn selector_matches(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && selector.match_expressions.iter().flatten().all(|expr| {
            let values = expr.values.as_deref().unwrap_or_default();
            let value = labels.get(&expr.key);
            match expr.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

#[cfg(test)]
mod selector_tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    use super::selector_matches;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn selector_semantics_follow_the_api_server() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("rack", "r1")])),
            match_expressions: Some(vec![
                expr("role", "In", &["worker", "edge"]),
                expr("tier", "NotIn", &["gpu"]),
                expr("ssd", "Exists", &[]),
                expr("tainted", "DoesNotExist", &[]),
            ]),
        };
        assert!(selector_matches(
            &sel,
            &labels(&[("rack", "r1"), ("role", "edge"), ("ssd", "")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("rack", "r2"), ("role", "edge"), ("ssd", "")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("rack", "r1"), ("role", "db"), ("ssd", "")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("rack", "r1"), ("role", "edge"), ("ssd", ""), ("tier", "gpu")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("rack", "r1"), ("role", "edge")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("rack", "r1"), ("role", "edge"), ("ssd", ""), ("tainted", "x")])
        ));
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
        let bogus = LabelSelector {
            match_expressions: Some(vec![expr("a", "Near", &[])]),
            ..Default::default()
        };
        assert!(!selector_matches(&bogus, &labels(&[("a", "b")])));
    }
}
