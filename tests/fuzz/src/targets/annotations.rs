//! Pod and namespace annotations as a pod author writes them, through the node daemon's pool
//! selection (every `ipam.spidernet.io/*` rule, wildcards against many pool names, routes) and the
//! operator's SpiderSubnet request parser. A hostile pod must not panic the daemon nor cost it more
//! than linear time.
//!
//! Input: a JSON object `{"pod": {key: value}, "namespace": {key: value}, "ifName": name,
//! "netconf": [pool names]}`; anything else is used as the value of every annotation the daemon
//! reads.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::Value;
use spiderpool_node_daemon::ipam::annotations::{
    ANNO_IPPOOL, ANNO_IPPOOLS, ANNO_NS_DEFAULT_IPV4, ANNO_NS_DEFAULT_IPV6, ANNO_ROUTES, ANNO_SUBNET,
    ANNO_SUBNETS, namespace_default_pools, parse_routes,
};
use spiderpool_node_daemon::ipam::candidates::{CandidateInput, candidates};
use spiderpool_schema::annotations::{parse_reclaim, parse_subnet_request};

use super::{Shape, Target, describe};

pub const TARGET: Target = Target {
    name: "annotations",
    run,
    shape: Shape::Json,
    dictionary: &[
        b"\"ipam.spidernet.io/ippool\"",
        b"\"ipam.spidernet.io/ippools\"",
        b"\"ipam.spidernet.io/subnets\"",
        b"\"ipam.spidernet.io/subnet\"",
        b"\"ipam.spidernet.io/routes\"",
        b"\"ipam.spidernet.io/ippool-ip-number\"",
        b"\"ipam.spidernet.io/ippool-reclaim\"",
        b"\"ipam.spidernet.io/default-ipv4-ippool\"",
        b"*",
        b"\\\"",
        b"\"ipv4\"",
        b"\"ipv6\"",
        b"\"interface\"",
        b"\"cleangateway\"",
    ],
};

/// Many pool names, so that a wildcard's cost shows.
fn all_pools() -> &'static (Vec<String>, Vec<String>) {
    static POOLS: OnceLock<(Vec<String>, Vec<String>)> = OnceLock::new();
    POOLS.get_or_init(|| {
        let names = |family: &str| {
            (0..300)
                .map(|i| format!("pool-{family}-rack{}-{i}", i % 7))
                .collect()
        };
        (names("v4"), names("v6"))
    })
}

fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    let Some(Value::Object(map)) = value else {
        return BTreeMap::new();
    };
    map.iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect()
}

fn run(data: &[u8]) -> String {
    let (pod, namespace, if_name, netconf) = match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(input)) => {
            let if_name = input
                .get("ifName")
                .and_then(Value::as_str)
                .unwrap_or("eth0")
                .to_owned();
            let netconf: Vec<String> = input
                .get("netconf")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default();
            (
                string_map(input.get("pod")),
                string_map(input.get("namespace")),
                if_name,
                netconf,
            )
        }
        _ => {
            let text = String::from_utf8_lossy(data).into_owned();
            let pod = [ANNO_IPPOOL, ANNO_IPPOOLS, ANNO_ROUTES, ANNO_SUBNET, ANNO_SUBNETS]
                .iter()
                .map(|k| ((*k).to_owned(), text.clone()))
                .collect();
            let namespace = [ANNO_NS_DEFAULT_IPV4, ANNO_NS_DEFAULT_IPV6]
                .iter()
                .map(|k| ((*k).to_owned(), text.clone()))
                .collect();
            (pod, namespace, "eth0".to_owned(), Vec::new())
        }
    };
    let (all_v4, all_v6) = all_pools();
    let mut input = CandidateInput::new(&pod, &namespace, &if_name);
    input.netconf_ipv4 = &netconf;
    input.all_ipv4 = all_v4;
    input.all_ipv6 = all_v6;
    let mut out = vec![describe("candidates", &candidates(&input))];
    if let Some(routes) = pod.get(ANNO_ROUTES) {
        out.push(describe("routes", &parse_routes(routes)));
    }
    out.push(describe(
        "namespace defaults",
        &namespace_default_pools(&namespace),
    ));
    out.push(describe("subnet request", &parse_subnet_request(&pod, 1)));
    out.push(describe("reclaim", &parse_reclaim(&pod)));
    out.join("; ")
}
