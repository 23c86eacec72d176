//! Desired-versus-live comparison of one child object, so a reconcile that changes nothing writes
//! nothing.
//!
//! Comparing whole objects would never match: the API server adds defaults from the CRD schema
//! (`spec.default: false` on pools), metadata (uid, resourceVersion, managedFields) and status. So a
//! child counts as up to date when
//! 1. every field we render is present in the live object with the same value ([`contains`]), which
//!    catches edits made by hand and fields we add, and
//! 2. the live object carries the hash of exactly what we rendered ([`ANNOTATION_RENDERED_HASH`]),
//!    which catches fields we used to render and no longer do (server-side apply removes those, but
//!    only if we apply).

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Annotation on every child the operator applies: a hash of the rendered object (without this
/// annotation). See the module docs.
pub const ANNOTATION_RENDERED_HASH: &str = "spiderpool.spidernet.io/rendered-hash";

/// Labels and annotation prefixes of GitOps tools that must never be copied onto generated objects:
/// Argo CD and Flux would otherwise adopt (and prune) the children as if they were in Git.
const TRACKING_LABELS: [&str; 1] = ["app.kubernetes.io/instance"];
const TRACKING_PREFIXES: [&str; 2] = ["argocd.argoproj.io/", "kustomize.toolkit.fluxcd.io/"];

/// Whether a label or annotation key belongs to a GitOps tool's tracking.
pub fn is_tracking_key(key: &str) -> bool {
    TRACKING_LABELS.contains(&key) || TRACKING_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Removes GitOps tracking labels and annotations from a rendered object (a JSON object with
/// `metadata`).
pub fn strip_tracking(object: &mut Value) {
    for field in ["labels", "annotations"] {
        if let Some(Value::Object(map)) = object.pointer_mut(&format!("/metadata/{field}")) {
            map.retain(|key, _| !is_tracking_key(key));
        }
    }
}

/// The hash of a rendered object: the first 16 hex digits of the SHA-256 of its JSON text. The
/// rendering is deterministic (ordered maps), so equal objects hash alike.
pub fn rendered_hash(object: &Value) -> String {
    let digest = Sha256::digest(object.to_string().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Sets [`ANNOTATION_RENDERED_HASH`] on a rendered object and returns the hash. The hash is of the
/// object without the annotation.
pub fn stamp_hash(object: &mut Value) -> String {
    if let Some(Value::Object(meta)) = object.get_mut("metadata")
        && let Some(Value::Object(map)) = meta.get_mut("annotations")
    {
        map.remove(ANNOTATION_RENDERED_HASH);
        if map.is_empty() {
            meta.remove("annotations");
        }
    }
    let hash = rendered_hash(object);
    if let Some(Value::Object(meta)) = object.get_mut("metadata") {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Value::Object(map) = annotations {
            map.insert(ANNOTATION_RENDERED_HASH.to_string(), Value::String(hash.clone()));
        }
    }
    hash
}

/// Whether `live` holds everything `desired` says: objects key by key (extra live keys are fine),
/// arrays element by element with the same length, numbers by value, `null` in `desired` as "absent
/// or null". `metadata.ownerReferences` is compared as a set that must contain ours, since other
/// owners may be added by others.
pub fn contains(live: &Value, desired: &Value) -> bool {
    contains_at(live, desired, Path::Root)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Root,
    Metadata,
    OwnerReferences,
    Other,
}

fn contains_at(live: &Value, desired: &Value, path: Path) -> bool {
    match (live, desired) {
        (_, Value::Null) => true,
        (Value::Object(l), Value::Object(d)) => d.iter().all(|(key, want)| {
            let next = match (path, key.as_str()) {
                (Path::Root, "metadata") => Path::Metadata,
                (Path::Metadata, "ownerReferences") => Path::OwnerReferences,
                _ => Path::Other,
            };
            match l.get(key) {
                Some(have) => contains_at(have, want, next),
                None => want.is_null(),
            }
        }),
        (Value::Array(l), Value::Array(d)) if path == Path::OwnerReferences => d
            .iter()
            .all(|want| l.iter().any(|have| contains_at(have, want, Path::Other))),
        (Value::Array(l), Value::Array(d)) => {
            l.len() == d.len()
                && l.iter()
                    .zip(d)
                    .all(|(have, want)| contains_at(have, want, Path::Other))
        }
        (Value::Number(l), Value::Number(d)) => l == d || l.as_f64() == d.as_f64(),
        (l, d) => l == d,
    }
}

/// The hash a live object was last applied with, if any.
pub fn live_hash(annotations: Option<&std::collections::BTreeMap<String, String>>) -> Option<&str> {
    annotations
        .and_then(|a| a.get(ANNOTATION_RENDERED_HASH))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn defaults_and_server_metadata_do_not_count_as_differences() {
        let desired = json!({"metadata": {"name": "p", "labels": {"a": "1"}}, "spec": {"ips": ["10.0.0.1"]}});
        let live = json!({
            "metadata": {"name": "p", "uid": "u", "resourceVersion": "7", "labels": {"a": "1", "b": "2"}},
            "spec": {"ips": ["10.0.0.1"], "default": false},
            "status": {"allocatedIPCount": 3}
        });
        assert!(contains(&live, &desired));
    }

    #[test]
    fn changed_values_and_list_lengths_are_differences() {
        let desired = json!({"spec": {"ips": ["10.0.0.1"], "vlan": 5}});
        assert!(!contains(
            &json!({"spec": {"ips": ["10.0.0.2"], "vlan": 5}}),
            &desired
        ));
        assert!(!contains(
            &json!({"spec": {"ips": ["10.0.0.1", "10.0.0.2"], "vlan": 5}}),
            &desired
        ));
        assert!(!contains(&json!({"spec": {"ips": ["10.0.0.1"]}}), &desired));
        assert!(contains(
            &json!({"spec": {"ips": ["10.0.0.1"], "vlan": 5.0}}),
            &desired
        ));
    }

    #[test]
    fn other_owners_may_be_added() {
        let ours = json!({"uid": "1", "kind": "SpiderNetwork", "controller": true});
        let theirs = json!({"uid": "2", "kind": "Node"});
        let desired = json!({"metadata": {"ownerReferences": [ours.clone()]}});
        assert!(contains(
            &json!({"metadata": {"ownerReferences": [theirs.clone(), ours]}}),
            &desired
        ));
        assert!(!contains(
            &json!({"metadata": {"ownerReferences": [theirs]}}),
            &desired
        ));
    }

    #[test]
    fn the_hash_ignores_its_own_annotation_and_tracks_everything_else() {
        let mut a = json!({"metadata": {"name": "x"}, "spec": {"gateway": "10.0.0.1"}});
        let hash = stamp_hash(&mut a);
        assert_eq!(
            a["metadata"]["annotations"][ANNOTATION_RENDERED_HASH],
            hash.as_str()
        );
        assert_eq!(stamp_hash(&mut a), hash, "stamping twice gives the same hash");
        let mut b = json!({"metadata": {"name": "x"}, "spec": {}});
        assert_ne!(stamp_hash(&mut b), hash);
    }

    #[test]
    fn tracking_labels_are_stripped() {
        let mut object = json!({"metadata": {
            "labels": {"app.kubernetes.io/instance": "prod", "keep": "1"},
            "annotations": {"argocd.argoproj.io/tracking-id": "x", "kustomize.toolkit.fluxcd.io/name": "y", "k": "v"}
        }});
        strip_tracking(&mut object);
        assert_eq!(object["metadata"]["labels"], json!({"keep": "1"}));
        assert_eq!(object["metadata"]["annotations"], json!({"k": "v"}));
    }
}
