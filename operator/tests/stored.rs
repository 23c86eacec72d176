//! What `spiderctl render` shows is what the API server stores: for every example topology, every
//! rendered object is unchanged by what admission and storage do to it, i.e. the mutating webhooks
//! (the operator's own functions) and the CRD schema's defaults (applied here generically, from the
//! CRDs the chart installs, the way the API server defaults structural schemas). The cluster test
//! (`tests/tests/operator_network.rs`) compares the same against what a real API server stored.
//!
//! Not compared: `metadata.finalizers` (the pool webhook adds upstream's finalizer, a lifecycle
//! marker that is not part of what a topology says).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::Value;
use spiderpool_operator::compile::{compile, expand_interface_tasks};
use spiderpool_operator::nad::render_nad;
use spiderpool_operator::webhook;
use spiderpool_schema::SpiderNetwork;

/// The schema of `kind` from the CRDs this project installs (generated once).
fn schema_of(kind: &str) -> &'static JSONSchemaProps {
    static SCHEMAS: std::sync::OnceLock<BTreeMap<String, JSONSchemaProps>> = std::sync::OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| {
        spiderpool_schema::crds()
            .into_iter()
            .map(|crd| {
                let schema = crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .clone()
                    .unwrap();
                (crd.spec.names.kind, schema)
            })
            .collect()
    });
    &schemas[kind]
}

/// The API server's structural defaulting: a property with a `default` that is absent gets it, then
/// every present object and list item is defaulted by its own schema.
fn apply_defaults(value: &mut Value, schema: &JSONSchemaProps) {
    match value {
        Value::Object(map) => {
            for (key, property) in schema.properties.iter().flatten() {
                if !map.contains_key(key)
                    && let Some(default) = &property.default
                {
                    map.insert(key.clone(), default.0.clone());
                }
                if let Some(child) = map.get_mut(key) {
                    apply_defaults(child, property);
                }
            }
            if let Some(JSONSchemaPropsOrBool::Schema(extra)) = &schema.additional_properties {
                for (key, child) in map.iter_mut() {
                    if !schema.properties.iter().flatten().any(|(k, _)| k == key) {
                        apply_defaults(child, extra);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(JSONSchemaPropsOrArray::Schema(item)) = &schema.items {
                for child in items {
                    apply_defaults(child, item);
                }
            }
        }
        _ => {}
    }
}

/// `object` as stored: after `mutate` (its kind's mutating webhook, if any) and the CRD's defaults.
fn stored<K: serde::Serialize>(kind: &str, object: &K) -> Value {
    let mut value = serde_json::to_value(object).unwrap();
    apply_defaults(&mut value, schema_of(kind));
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("finalizers");
    }
    value
}

/// A node that every rack's selector of the topology selects one of (`In` takes the first value,
/// `Exists` any value).
fn node_for(selector: &LabelSelector, name: &str) -> Node {
    let mut labels: BTreeMap<String, String> = selector.match_labels.clone().unwrap_or_default();
    for expr in selector.match_expressions.iter().flatten() {
        match expr.operator.as_str() {
            "In" => {
                let value = expr.values.iter().flatten().next().cloned().unwrap_or_default();
                labels.insert(expr.key.clone(), value);
            }
            "Exists" => {
                labels.insert(expr.key.clone(), "true".into());
            }
            _ => {}
        }
    }
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Node::default()
    }
}

fn examples() -> Vec<(String, SpiderNetwork)> {
    let dir = format!("{}/../examples/topologies", env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let network = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            out.push((path.display().to_string(), network));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 6, "the examples are missing");
    out
}

#[test]
fn every_rendered_object_is_stored_as_rendered() {
    for (file, network) in examples() {
        let rendered = compile(&network).unwrap();
        for pool in &rendered.ip_pools {
            let mutated = webhook::ippool::mutate(pool, &webhook::Snapshot::default());
            assert_eq!(
                stored("SpiderIPPool", &mutated),
                stored("SpiderIPPool", pool),
                "{file}: pool {:?} changes on the way in",
                pool.metadata.name
            );
            assert_eq!(
                serde_json::to_value(pool).unwrap(),
                stored("SpiderIPPool", pool),
                "{file}: pool {:?} gets CRD defaults the rendering lacks",
                pool.metadata.name
            );
        }
        for reserved in &rendered.reserved_ips {
            let mutated = webhook::reservedip::mutate(reserved);
            assert_eq!(
                stored("SpiderReservedIP", &mutated),
                serde_json::to_value(reserved).unwrap(),
                "{file}: reserved IPs {:?}",
                reserved.metadata.name
            );
        }
        for (smc, nad) in rendered
            .multus_configs
            .iter()
            .zip(&rendered.network_attachment_definitions)
        {
            let mutated = webhook::multusconfig::mutate(smc);
            assert_eq!(
                stored("SpiderMultusConfig", &mutated),
                serde_json::to_value(smc).unwrap(),
                "{file}: multus config {:?}",
                smc.metadata.name
            );
            // The multus-config controller renders the NAD from the stored object.
            let from_stored: spiderpool_schema::SpiderMultusConfig =
                serde_json::from_value(stored("SpiderMultusConfig", &mutated)).unwrap();
            assert_eq!(&render_nad(&from_stored).unwrap(), nad, "{file}");
        }
        let nodes: Vec<Node> = network
            .spec
            .racks
            .iter()
            .map(|rack| node_for(&rack.node_selector, &format!("node-{}", rack.name)))
            .collect();
        let tasks = expand_interface_tasks(&network, &rendered.interface_templates, &nodes).unwrap();
        assert_eq!(
            tasks.len(),
            rendered.interface_templates.len(),
            "{file}: one node per rack with a template"
        );
        for task in &tasks {
            assert_eq!(
                stored("SpiderInterfaceTask", task),
                serde_json::to_value(task).unwrap(),
                "{file}: task {:?}",
                task.metadata.name
            );
        }
    }
}

#[test]
fn the_defaulting_here_is_the_api_servers() {
    // A bare SMC gets what the CRD says, as the API server would give it.
    let smc: Value = serde_json::json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderMultusConfig",
        "metadata": {"name": "n", "namespace": "ns"},
        "spec": {"macvlan": {"master": ["eth0"], "ippools": {"ipv4": ["p"]}}, "coordinator": {}},
    });
    let mut value = smc.clone();
    apply_defaults(&mut value, schema_of("SpiderMultusConfig"));
    assert_eq!(value["spec"]["cniType"], "custom");
    assert_eq!(value["spec"]["macvlan"]["mtu"], 0);
    assert_eq!(value["spec"]["macvlan"]["ippools"]["matchMasterSubnet"], false);
    assert_eq!(value["spec"]["coordinator"]["hostRuleTable"], 500);
    assert_eq!(value["spec"]["enableCoordinator"], true);
    assert!(value["spec"].get("sriov").is_none(), "absent objects stay absent");
}
