//! The CRDs: committed chart files match the types, every schema is structural, and each CRD is
//! snapshot-tested so a change to the API shows up in review.

#![allow(clippy::unwrap_used, reason = "test code")]

use serde_json::Value;

#[test]
fn chart_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/spiderpool/crds");
    let files = spiderpool_schema::crd_files().unwrap();
    assert_eq!(files.len(), 9);
    for (name, yaml) in &files {
        let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            committed == *yaml,
            "charts/spiderpool/crds/{name} differs from what the types generate; run `cargo run -p spiderpool-schema --bin crdgen` and commit the result"
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    expected.sort();
    assert_eq!(on_disk, expected, "stale CRD files in charts/spiderpool/crds");
}

/// A structural schema (what the API server requires): every node says its type, unless it is
/// explicitly int-or-string or preserves unknown fields.
fn assert_structural(schema: &Value, path: &str) {
    let Some(obj) = schema.as_object() else { return };
    let exempt = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    assert!(exempt || obj.contains_key("type"), "{path} has no type: {schema}");
    for forbidden in ["$ref", "definitions", "$defs"] {
        assert!(!obj.contains_key(forbidden), "{path} uses {forbidden}");
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            assert_structural(v, &format!("{path}.{k}"));
        }
    }
    if let Some(items) = obj.get("items") {
        assert_structural(items, &format!("{path}[]"));
    }
    if let Some(extra) = obj.get("additionalProperties")
        && extra.is_object()
    {
        assert_structural(extra, &format!("{path}{{}}"));
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(branches) = obj.get(key).and_then(Value::as_array) {
            for b in branches {
                // Branches may omit type only when the node itself carries it (structural rule).
                let bo = b.as_object().unwrap();
                assert!(
                    obj.contains_key("type"),
                    "{path} has {key} without a type on the node"
                );
                assert!(!bo.contains_key("$ref"), "{path}.{key} uses $ref");
            }
        }
    }
}

#[test]
fn every_schema_is_structural_and_documented() {
    for crd in spiderpool_schema::crds() {
        let json = serde_json::to_value(&crd).unwrap();
        let name = crd.metadata.name.clone().unwrap();
        for version in json["spec"]["versions"].as_array().unwrap() {
            let schema = &version["schema"]["openAPIV3Schema"];
            assert_structural(schema, &name);
            // Every field of our own spec types carries a description for `kubectl explain`.
            fn described(schema: &Value, path: &str, missing: &mut Vec<String>) {
                if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                    for (k, v) in props {
                        let here = format!("{path}.{k}");
                        if v.get("description").is_none()
                            && !["apiVersion", "kind", "metadata"].contains(&k.as_str())
                        {
                            missing.push(here.clone());
                        }
                        described(v, &here, missing);
                    }
                }
                if let Some(items) = schema.get("items") {
                    described(items, path, missing);
                }
            }
            let mut missing = Vec::new();
            if crd.spec.group == spiderpool_schema::GROUP {
                described(schema, &name, &mut missing);
            }
            assert!(missing.is_empty(), "fields without a description: {missing:#?}");
        }
    }
}

/// Upstream's kinds have no CEL rule: their rules are the webhooks' (as upstream's), and any CEL rule in
/// a CRD makes the API server append `<nil>: Invalid value: "null": some validation rules were not
/// checked ...` to every schema refusal of the kind, a line that names no field.
#[test]
fn upstream_kinds_have_no_cel_rules() {
    for (name, yaml) in spiderpool_schema::crd_files().unwrap() {
        let upstream_kind = [
            "spiderippools",
            "spidersubnets",
            "spiderreservedips",
            "spidermultusconfigs",
            "spidercoordinators",
            "spiderendpoints",
        ]
        .iter()
        .any(|plural| name.ends_with(&format!("_{plural}.yaml")));
        if upstream_kind {
            assert!(!yaml.contains("x-kubernetes-validations"), "{name} has CEL rules");
        }
    }
}

#[test]
fn crd_snapshots() {
    for (name, yaml) in spiderpool_schema::crd_files().unwrap() {
        insta::assert_snapshot!(name.trim_end_matches(".yaml").to_string(), yaml);
    }
}
