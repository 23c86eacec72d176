//! The admission webhooks (upstream's mutating and validating webhooks, plus one for SpiderNetwork),
//! served over TLS by every operator replica (they are not leader-gated: the API server calls whichever
//! replica the Service routes to).
//!
//! Layout: the rules are pure, one module per kind ([`ippool`], [`subnet`], [`reservedip`],
//! [`multusconfig`], [`coordinator`], [`network`]): given the object, the old object on update and a
//! [`Snapshot`] of the other objects a rule needs, they return a [`Decision`] (problems with field paths,
//! and the mutation as an RFC 6902 patch). [`review`] turns an AdmissionReview into the right rule and
//! back; [`tls`] makes or loads certificates; [`registration`] builds and applies the
//! Mutating/ValidatingWebhookConfigurations; [`serve`] is the thin I/O shell around all of it.
//! [`pod`] applies SpiderNetwork app bindings to new pods (its own configuration, see there).

pub mod coordinator;
pub mod ippool;
mod ippool_shards;
pub mod metrics;
pub mod multusconfig;
pub mod network;
pub mod pod;
mod pod_server;
pub mod registration;
pub mod reservedip;
pub mod review;
mod server;
pub mod subnet;
pub mod tls;

use serde::Serialize;
pub(crate) use spiderpool_schema::ippool::is_label_value;
use spiderpool_schema::{NetworkAttachmentDefinition, Problem, SpiderIPPool, SpiderSubnet};

pub use server::{
    DEFAULT_PORT, TlsSource, WebhookArgs, WebhookConfig, WebhookServer, bind, serve, url_target,
};

pub use spiderpool_schema::labels::{
    LABEL_IPPOOL_CIDR, LABEL_OWNER_SPIDER_SUBNET as LABEL_OWNER_SUBNET, LABEL_SUBNET_CIDR,
};

/// What admission decided about one request: every problem (the request is refused when there is any),
/// the mutation to apply (mutating webhooks only) and warnings shown to the client.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Decision {
    /// Why the request is refused, each with the path of the field concerned. Empty means allowed.
    pub problems: Vec<Problem>,
    /// Changes to the object (empty when nothing changes).
    pub patch: json_patch::Patch,
    /// Messages for the client that do not refuse the request.
    pub warnings: Vec<String>,
}

impl Decision {
    /// A decision that allows the request unchanged, or refuses it with `problems`.
    pub fn from_problems(problems: Vec<Problem>) -> Self {
        Decision {
            problems,
            ..Decision::default()
        }
    }

    /// Whether the request is allowed.
    pub fn allowed(&self) -> bool {
        self.problems.is_empty()
    }

    /// The refusal message, as `kubectl` shows it: every problem as `path: message`, `; `-separated.
    pub fn message(&self) -> String {
        self.problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// What an admission request does to an object: create it, or update `old` into `new`.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a, K> {
    /// The object is being created.
    Create(&'a K),
    /// The object is being updated.
    Update {
        /// The object as it will be stored.
        new: &'a K,
        /// The object as it is stored now.
        old: &'a K,
    },
}

impl<'a, K> Change<'a, K> {
    /// The object as it will be stored.
    pub fn object(&self) -> &'a K {
        match *self {
            Change::Create(obj) => obj,
            Change::Update { new, .. } => new,
        }
    }

    /// The stored object, on update.
    pub fn old(&self) -> Option<&'a K> {
        match *self {
            Change::Create(_) => None,
            Change::Update { old, .. } => Some(old),
        }
    }
}

/// The other objects of the cluster some rules compare against, read when the request arrives.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Every SpiderIPPool (the one under review may be among them; rules skip it by name).
    pub pools: Vec<SpiderIPPool>,
    /// Every SpiderSubnet.
    pub subnets: Vec<SpiderSubnet>,
    /// The NetworkAttachmentDefinition a SpiderMultusConfig would generate, when it already exists.
    pub existing_nad: Option<NetworkAttachmentDefinition>,
}

/// Error turning an object into JSON for a patch (only possible for maps with non-string keys, which
/// our types do not have; kept as an error rather than a panic).
#[derive(Debug, thiserror::Error)]
#[error("cannot serialize the object to compute the mutation patch: {0}")]
pub struct PatchError(#[from] serde_json::Error);

/// The JSON patch that turns `before` into `after`. Both are serialized through the same typed struct,
/// so fields our types do not know are in neither and are left alone.
pub fn patch_between<K: Serialize>(before: &K, after: &K) -> Result<json_patch::Patch, PatchError> {
    Ok(json_patch::diff(
        &serde_json::to_value(before)?,
        &serde_json::to_value(after)?,
    ))
}

/// Adds upstream's finalizer unless the object is already being deleted (the API server refuses new
/// finalizers on a terminating object, and the controller removes ours only then).
pub(crate) fn ensure_finalizer(meta: &mut kube::api::ObjectMeta) {
    if meta.deletion_timestamp.is_some() {
        return;
    }
    let finalizers = meta.finalizers.get_or_insert_with(Vec::new);
    if !finalizers.iter().any(|f| f == spiderpool_schema::FINALIZER) {
        finalizers.push(spiderpool_schema::FINALIZER.to_string());
    }
}

/// A short list for messages: the first few items and how many more there are.
pub(crate) fn brief_list(items: &[String]) -> String {
    const SHOWN: usize = 5;
    if items.len() <= SHOWN {
        items.join(", ")
    } else {
        format!("{} and {} more", items[..SHOWN].join(", "), items.len() - SHOWN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brief_lists_are_short() {
        let items: Vec<String> = (1..=7).map(|i| format!("10.0.0.{i}")).collect();
        assert_eq!(
            brief_list(&items),
            "10.0.0.1, 10.0.0.2, 10.0.0.3, 10.0.0.4, 10.0.0.5 and 2 more"
        );
        assert_eq!(brief_list(&items[..2]), "10.0.0.1, 10.0.0.2");
    }

    #[test]
    fn decision_message_names_every_path() {
        let d = Decision::from_problems(vec![
            Problem {
                path: "spec.a".into(),
                message: "bad".into(),
            },
            Problem {
                path: "spec.b".into(),
                message: "worse".into(),
            },
        ]);
        assert!(!d.allowed());
        assert_eq!(d.message(), "spec.a: bad; spec.b: worse");
    }
}
