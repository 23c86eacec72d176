//! Field-level differences between a live object and what it would become, as `path: old -> new`.
//!
//! What the API server manages (resourceVersion, managedFields, generation, uid, creationTimestamp,
//! selfLink) and the status are left out: they change on every write, or belong to whoever fills
//! them in, so they say nothing about the change a reviewer is approving. The rendered-hash stamp is
//! left out too while other fields change (every changed child gets a new stamp, which is noise next
//! to the field that moved it); when it is the only difference it is shown, since then it is the whole
//! reason the operator would write.

use serde_json::{Map, Value};
use spiderpool_schema::labels::ANNOTATION_RENDERED_HASH;

/// Metadata the API server sets and changes by itself.
const SERVER_METADATA: [&str; 6] = [
    "resourceVersion",
    "managedFields",
    "generation",
    "uid",
    "creationTimestamp",
    "selfLink",
];

/// One changed field. `None` is "absent" (a JSON `null` counts as absent too).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    /// Where, as `spec.ips[0]` or `metadata.labels["app.kubernetes.io/name"]`.
    pub path: String,
    /// The live value.
    pub old: Option<Value>,
    /// The value after the apply.
    pub new: Option<Value>,
}

/// Every field that differs between `before` (live) and `after` (what the dry run returned), in the
/// order the fields appear in the objects.
pub fn changes(before: &Value, after: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    compare(&comparable(before), &comparable(after), &mut Vec::new(), &mut out);
    let stamp = stamp_path();
    if out.iter().any(|c| c.path != stamp) {
        out.retain(|c| c.path != stamp);
    }
    out
}

/// The object without status and server-managed metadata.
fn comparable(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for key in SERVER_METADATA {
                meta.remove(key);
            }
        }
    }
    object
}

fn stamp_path() -> String {
    render_path(&[
        Segment::Key("metadata".into()),
        Segment::Key("annotations".into()),
        Segment::Key(ANNOTATION_RENDERED_HASH.into()),
    ])
}

#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

fn compare(before: &Value, after: &Value, path: &mut Vec<Segment>, out: &mut Vec<FieldChange>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => compare_maps(b, a, path, out),
        (Value::Array(b), Value::Array(a)) => {
            for i in 0..b.len().max(a.len()) {
                path.push(Segment::Index(i));
                compare(
                    b.get(i).unwrap_or(&Value::Null),
                    a.get(i).unwrap_or(&Value::Null),
                    path,
                    out,
                );
                path.pop();
            }
        }
        (b, a) if same(b, a) => {}
        (b, a) => out.push(FieldChange {
            path: render_path(path),
            old: present(b),
            new: present(a),
        }),
    }
}

fn compare_maps(
    before: &Map<String, Value>,
    after: &Map<String, Value>,
    path: &mut Vec<Segment>,
    out: &mut Vec<FieldChange>,
) {
    let keys = before
        .keys()
        .chain(after.keys().filter(|k| !before.contains_key(*k)));
    for key in keys {
        path.push(Segment::Key(key.clone()));
        compare(
            before.get(key).unwrap_or(&Value::Null),
            after.get(key).unwrap_or(&Value::Null),
            path,
            out,
        );
        path.pop();
    }
}

/// Equal values; numbers by value (`5` and `5.0` are one number to the API server).
fn same(before: &Value, after: &Value) -> bool {
    match (before, after) {
        (Value::Number(b), Value::Number(a)) => b == a || b.as_f64() == a.as_f64(),
        (b, a) => b == a,
    }
}

fn present(value: &Value) -> Option<Value> {
    (!value.is_null()).then(|| value.clone())
}

/// `a.b[0]["x.y/z"]`: keys that are not plain identifiers are quoted, so label and annotation keys
/// read unambiguously.
fn render_path(path: &[Segment]) -> String {
    let mut text = String::new();
    for segment in path {
        match segment {
            Segment::Index(i) => text.push_str(&format!("[{i}]")),
            Segment::Key(key) if is_identifier(key) => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Segment::Key(key) => {
                text.push('[');
                text.push_str(&Value::String(key.clone()).to_string());
                text.push(']');
            }
        }
    }
    text
}

fn is_identifier(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn paths(changes: &[FieldChange]) -> Vec<&str> {
        changes.iter().map(|c| c.path.as_str()).collect()
    }

    #[test]
    fn server_metadata_and_status_are_ignored() {
        let before = json!({
            "metadata": {"name": "p", "uid": "1", "resourceVersion": "7", "generation": 1,
                          "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [{"manager": "a"}]},
            "spec": {"ips": ["10.0.0.1"]},
            "status": {"allocatedIPCount": 3}
        });
        let after = json!({
            "metadata": {"name": "p", "uid": "1", "resourceVersion": "8", "generation": 2,
                          "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [{"manager": "b"}]},
            "spec": {"ips": ["10.0.0.1"]},
            "status": {"allocatedIPCount": 0}
        });
        assert_eq!(changes(&before, &after), vec![]);
    }

    #[test]
    fn changed_added_and_removed_fields_have_paths_and_values() {
        let before = json!({
            "metadata": {"labels": {"spiderpool.spidernet.io/rack": "r1", "keep": "1"}},
            "spec": {"ips": ["10.0.0.1", "10.0.0.2"], "gateway": "10.0.0.254", "vlan": 5}
        });
        let after = json!({
            "metadata": {"labels": {"spiderpool.spidernet.io/rack": "r2", "keep": "1"}},
            "spec": {"ips": ["10.0.0.1"], "vlan": 5.0, "routes": [{"dst": "0.0.0.0/0"}]}
        });
        let found = changes(&before, &after);
        assert_eq!(
            paths(&found),
            vec![
                r#"metadata.labels["spiderpool.spidernet.io/rack"]"#,
                "spec.ips[1]",
                "spec.gateway",
                "spec.routes",
            ]
        );
        assert_eq!(found[1].old, Some(json!("10.0.0.2")));
        assert_eq!(found[1].new, None);
        assert_eq!(found[2].new, None);
        assert_eq!(found[3].old, None);
        assert_eq!(found[3].new, Some(json!([{"dst": "0.0.0.0/0"}])));
    }

    #[test]
    fn null_is_absent() {
        assert_eq!(
            changes(&json!({"spec": {"a": null}}), &json!({"spec": {}})),
            vec![]
        );
    }

    #[test]
    fn the_stamp_shows_only_when_it_is_the_only_change() {
        let stamped = |hash: &str, vlan: u16| json!({"metadata": {"annotations": {ANNOTATION_RENDERED_HASH: hash}}, "spec": {"vlan": vlan}});
        let both = changes(&stamped("a", 1), &stamped("b", 2));
        assert_eq!(paths(&both), vec!["spec.vlan"]);
        let alone = changes(&stamped("a", 1), &stamped("b", 1));
        assert_eq!(
            paths(&alone),
            vec![r#"metadata.annotations["spiderpool.spidernet.io/rendered-hash"]"#]
        );
    }
}
