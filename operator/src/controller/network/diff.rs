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
//!
//! The hash is taken over the typed object as it is applied, streamed through serde straight into
//! SHA-256 ([`RenderedHash::of`]): no JSON tree and no text is built, which matters when a topology
//! renders 16,000 children and each reconcile hashes all of them. The JSON trees [`contains`] needs
//! are built only for children whose hash matches but which are not yet known to be unchanged (see
//! `plan::RecentWrites::verified`).

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use kube::Resource;
use kube::api::ObjectMeta;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use spiderpool_schema::labels::ANNOTATION_RENDERED_HASH;

/// Labels and annotation prefixes of GitOps tools that must never be copied onto generated objects:
/// Argo CD and Flux would otherwise adopt (and prune) the children as if they were in Git.
const TRACKING_LABELS: [&str; 1] = ["app.kubernetes.io/instance"];
const TRACKING_PREFIXES: [&str; 2] = ["argocd.argoproj.io/", "kustomize.toolkit.fluxcd.io/"];

/// Whether a label or annotation key belongs to a GitOps tool's tracking.
pub fn is_tracking_key(key: &str) -> bool {
    TRACKING_LABELS.contains(&key) || TRACKING_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Removes GitOps tracking labels and annotations from a rendered object's metadata.
pub fn strip_tracking(meta: &mut ObjectMeta) {
    for map in [&mut meta.labels, &mut meta.annotations].into_iter().flatten() {
        map.retain(|key, _| !is_tracking_key(key));
    }
}

/// The hash of a rendered object: the first 8 bytes of the SHA-256 of its compact JSON text (as
/// serde writes the typed object), shown as 16 hex digits. Rendering is deterministic (struct fields
/// in declaration order, ordered maps), so equal objects hash alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RenderedHash(u64);

impl RenderedHash {
    /// Hashes `object` by streaming its JSON serialization into the hasher.
    pub fn of<T: Serialize + ?Sized>(object: &T) -> Result<Self, serde_json::Error> {
        let mut hasher = HashWriter(Sha256::new());
        serde_json::to_writer(&mut hasher, object)?;
        let digest = hasher.0.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Ok(RenderedHash(u64::from_be_bytes(first)))
    }

    /// Reads the annotation text back (16 hex digits); `None` for anything else, which then matches
    /// no rendering.
    pub fn parse(text: &str) -> Option<Self> {
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if text.len() != 16 || !text.bytes().all(lower_hex) {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(RenderedHash)
    }
}

impl fmt::Display for RenderedHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Feeds serde_json's output into the hasher as it is produced.
struct HashWriter(Sha256);

impl io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sets [`ANNOTATION_RENDERED_HASH`] on a rendered object and returns the hash. The hash is of the
/// object without the annotation (and without an annotation map left empty by its removal), so
/// stamping twice gives the same hash.
pub fn stamp_hash<K: Resource + Serialize>(object: &mut K) -> Result<RenderedHash, serde_json::Error> {
    let meta = object.meta_mut();
    if let Some(map) = &mut meta.annotations {
        map.remove(ANNOTATION_RENDERED_HASH);
        if map.is_empty() {
            meta.annotations = None;
        }
    }
    let hash = RenderedHash::of(object)?;
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION_RENDERED_HASH.to_string(), hash.to_string());
    Ok(hash)
}

/// The hash a live object was last applied with, if any.
pub fn live_hash(meta: &ObjectMeta) -> Option<RenderedHash> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_RENDERED_HASH))
        .and_then(|text| RenderedHash::parse(text))
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

#[cfg(test)]
mod tests {
    use serde_json::json;
    use spiderpool_schema::{SpiderIPPool, SpiderIPPoolSpec};

    use super::*;

    fn pool(gateway: &str) -> SpiderIPPool {
        let mut pool = SpiderIPPool::new(
            "p",
            SpiderIPPoolSpec {
                subnet: "10.0.0.0/24".into(),
                ips: vec!["10.0.0.10-10.0.0.20".into()],
                gateway: Some(gateway.into()),
                ..SpiderIPPoolSpec::default()
            },
        );
        pool.metadata.labels = Some(BTreeMap::from([("a".to_string(), "1".to_string())]));
        pool
    }

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
    fn the_streamed_hash_is_the_hash_of_the_json_text() {
        let object = pool("10.0.0.1");
        let text = serde_json::to_string(&object).unwrap();
        let digest = Sha256::digest(text.as_bytes());
        let expected: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        assert_eq!(RenderedHash::of(&object).unwrap().to_string(), expected);
    }

    #[test]
    fn equal_objects_hash_alike_and_any_changed_field_changes_the_hash() {
        let hash = RenderedHash::of(&pool("10.0.0.1")).unwrap();
        assert_eq!(RenderedHash::of(&pool("10.0.0.1")).unwrap(), hash);
        assert_ne!(RenderedHash::of(&pool("10.0.0.2")).unwrap(), hash);
        let mut relabelled = pool("10.0.0.1");
        relabelled.metadata.labels = Some(BTreeMap::from([("a".to_string(), "2".to_string())]));
        assert_ne!(RenderedHash::of(&relabelled).unwrap(), hash);
        let mut more_ips = pool("10.0.0.1");
        more_ips.spec.ips.push("10.0.0.30".into());
        assert_ne!(RenderedHash::of(&more_ips).unwrap(), hash);
    }

    #[test]
    fn the_hash_ignores_its_own_annotation_and_tracks_everything_else() {
        let mut a = pool("10.0.0.1");
        let hash = stamp_hash(&mut a).unwrap();
        assert_eq!(live_hash(&a.metadata), Some(hash));
        assert_eq!(
            a.metadata.annotations.as_ref().unwrap()[ANNOTATION_RENDERED_HASH],
            hash.to_string()
        );
        assert_eq!(
            stamp_hash(&mut a).unwrap(),
            hash,
            "stamping twice gives the same hash"
        );
        // An empty annotation map hashes like none: the stamp's own removal leaves one behind.
        let mut empty = pool("10.0.0.1");
        empty.metadata.annotations = Some(BTreeMap::new());
        assert_eq!(stamp_hash(&mut empty).unwrap(), hash);
        let mut b = pool("10.0.0.2");
        assert_ne!(stamp_hash(&mut b).unwrap(), hash);
    }

    #[test]
    fn hash_annotations_round_trip_and_garbage_matches_nothing() {
        let hash = RenderedHash::of(&pool("10.0.0.1")).unwrap();
        assert_eq!(RenderedHash::parse(&hash.to_string()), Some(hash));
        assert_eq!(RenderedHash::parse("edited-by-hand"), None);
        assert_eq!(RenderedHash::parse("+123456789abcdef"), None);
        assert_eq!(RenderedHash::parse(""), None);
    }

    #[test]
    fn tracking_labels_are_stripped() {
        let mut meta = ObjectMeta {
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/instance".to_string(), "prod".to_string()),
                ("keep".to_string(), "1".to_string()),
            ])),
            annotations: Some(BTreeMap::from([
                ("argocd.argoproj.io/tracking-id".to_string(), "x".to_string()),
                ("kustomize.toolkit.fluxcd.io/name".to_string(), "y".to_string()),
                ("k".to_string(), "v".to_string()),
            ])),
            ..ObjectMeta::default()
        };
        strip_tracking(&mut meta);
        assert_eq!(
            meta.labels,
            Some(BTreeMap::from([("keep".to_string(), "1".to_string())]))
        );
        assert_eq!(
            meta.annotations,
            Some(BTreeMap::from([("k".to_string(), "v".to_string())]))
        );
    }
}
