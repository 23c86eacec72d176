//! The I/O of `spiderctl diff`: reads the live SpiderNetwork, Nodes and children, and asks the API
//! server what applying would produce (dry runs, which change nothing). The decisions are made by the
//! pure functions of [`super`].
//!
//! - The SpiderNetwork: a dry-run create when it does not exist (which also gives the UID the
//!   children's owner reference needs), else a dry-run replace of its spec, as `kubectl apply` of
//!   the file would leave it.
//! - The children: every object of each child kind is listed (the controller's watch caches hold the
//!   same), so objects of others that hold a rendered name are seen as conflicts.
//! - The children to be written: a server-side dry-run apply each that replaces a live object, with
//!   the controller's field manager, forced, as the controller applies ([`FIELD_MANAGER`]); a
//!   dry-run create each new one; [`CONCURRENCY`] at a time.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use futures::{StreamExt as _, stream};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use spiderpool_schema::validation::Problem;
use spiderpool_schema::{
    SpiderIPPool, SpiderInterfaceTask, SpiderMultusConfig, SpiderNetwork, SpiderReservedIP,
};
use tracing::debug;

use super::{Change, Pending, TopologyDiff, assemble, classify, network_change, wanted};
use crate::compile::{Rendered, expand_interface_tasks};
use crate::controller::network::plan::{ChildKey, ChildKind, ChildObject, LiveObject};
use crate::controller::network::{self, FIELD_MANAGER, desired_children};

/// Dry runs in flight at once (the controller writes 32 at a time; a dry run is cheaper).
pub const CONCURRENCY: usize = 32;

/// Field manager of the SpiderNetwork dry run (it is the user's object, not the controller's).
const CLI_FIELD_MANAGER: &str = "spiderctl";

/// Why the diff could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// A read failed.
    #[error("reading {what}: {source}")]
    Read {
        /// What was read.
        what: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The API server refused the SpiderNetwork (its schema or a webhook).
    #[error("SpiderNetwork {name}: the API server refuses it: {}", api_message(source))]
    Network {
        /// The topology.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The dry run of the SpiderNetwork returned no UID, which the owner references need.
    #[error("SpiderNetwork {0}: the dry run returned no metadata.uid")]
    NoUid(String),
    /// The racks conflict on some live nodes (the controller reports these as `Invalid`).
    #[error("the interface tasks cannot be made for the live nodes ({} problems)", .0.len())]
    Tasks(Vec<Problem>),
    /// Stamping the children failed.
    #[error("preparing the children: {0}")]
    Stamp(#[source] network::Error),
    /// An object could not be turned into JSON, or the API server's answer is not the kind asked for.
    #[error("reading {key} as JSON: {source}")]
    Decode {
        /// Which object.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The API server refused dry-run applies (a webhook, the schema, a missing namespace): applying
    /// would fail the same way. `listing` names every refusal, one per line; `first` is the first.
    #[error("the API server refuses {count} of the changes:\n{listing}")]
    Refused {
        /// How many.
        count: usize,
        /// `  <object>: <message>` per refusal.
        listing: String,
        /// The first refusal.
        #[source]
        first: kube::Error,
    },
}

/// The message of an API error (what the server or the webhook said), else the error itself.
fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => other.to_string(),
    }
}

/// The diff of one topology against the cluster behind `client`. `network` is the file's
/// SpiderNetwork, `rendered` its compilation, `source` where it was read.
pub async fn diff(
    client: &Client,
    network: &SpiderNetwork,
    rendered: Rendered,
    source: &str,
) -> Result<TopologyDiff, DiffError> {
    let name = network.metadata.name.clone().unwrap_or_default();
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    let live = api.get_opt(&name).await.map_err(|source| DiffError::Read {
        what: format!("SpiderNetwork {name}"),
        source,
    })?;
    let after = dry_run_network(&api, network, live.as_ref()).await?;
    let network_json = |n: &SpiderNetwork| {
        serde_json::to_value(n).map_err(|source| DiffError::Decode {
            key: format!("SpiderNetwork {name}"),
            source,
        })
    };
    let live_json = live.as_ref().map(network_json).transpose()?;
    let change: Option<Change> = network_change(live_json.as_ref(), &network_json(&after)?);
    let uid = after
        .metadata
        .uid
        .clone()
        .ok_or_else(|| DiffError::NoUid(name.clone()))?;

    let nodes = nodes(client).await?;
    let tasks =
        expand_interface_tasks(network, &rendered.interface_templates, &nodes).map_err(DiffError::Tasks)?;
    let owner = OwnerReference {
        api_version: SpiderNetwork::api_version(&()).to_string(),
        kind: SpiderNetwork::kind(&()).to_string(),
        name: name.clone(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let desired = desired_children(rendered, tasks, &owner).map_err(DiffError::Stamp)?;
    let wanted = wanted(&desired);
    let mut live_children = BTreeMap::new();
    let mut keep = |object: LiveObject| {
        let key = object.key();
        if object.belongs_to(&name) || wanted.contains(&key) {
            live_children.insert(key, object);
        }
    };
    // Consistent reads, side by side: the API server serves them from its watch cache when etcd can
    // confirm the cache is current (etcd 3.4.31+/3.5.13+), from etcd otherwise.
    let (live_reserved, live_pools, live_multus, live_tasks) = tokio::try_join!(
        list::<SpiderReservedIP>(client),
        list::<SpiderIPPool>(client),
        list::<SpiderMultusConfig>(client),
        list::<SpiderInterfaceTask>(client),
    )?;
    for o in live_reserved {
        keep(LiveObject::ReservedIp(Arc::new(o)));
    }
    for o in live_pools {
        keep(LiveObject::IpPool(Arc::new(o)));
    }
    for o in live_multus {
        keep(LiveObject::MultusConfig(Arc::new(o)));
    }
    for o in live_tasks {
        keep(LiveObject::InterfaceTask(Arc::new(o)));
    }

    let classified = classify(&name, desired, &live_children);
    debug!(
        dry_runs = classified.pending.len(),
        unchanged = classified.unchanged,
        "classified"
    );
    let updates = dry_run_children(client, &classified.pending).await?;
    Ok(assemble(&name, source, change, classified, updates))
}

/// What the SpiderNetwork would be after applying the file: a dry-run create, or a dry-run replace of
/// the live object's spec by the file's.
async fn dry_run_network(
    api: &Api<SpiderNetwork>,
    network: &SpiderNetwork,
    live: Option<&SpiderNetwork>,
) -> Result<SpiderNetwork, DiffError> {
    let name = network.metadata.name.clone().unwrap_or_default();
    let params = PostParams {
        dry_run: true,
        field_manager: Some(CLI_FIELD_MANAGER.to_string()),
    };
    let result = match live {
        None => api.create(&params, network).await,
        Some(live) => {
            let mut object = live.clone();
            object.spec = network.spec.clone();
            // Without managedFields the server keeps the stored ones; the status is not written
            // through the main resource anyway.
            object.metadata.managed_fields = None;
            api.replace(&name, &params, &object).await
        }
    };
    result.map_err(|source| DiffError::Network { name, source })
}

/// The Nodes' metadata, as the controller's node cache holds them (interface tasks are expanded
/// against their labels).
async fn nodes(client: &Client) -> Result<Vec<Node>, DiffError> {
    let list = Api::<Node>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
        .map_err(|source| DiffError::Read {
            what: "Nodes".into(),
            source,
        })?;
    Ok(list
        .items
        .into_iter()
        .map(|node| Node {
            metadata: node.metadata,
            ..Node::default()
        })
        .collect())
}

/// Every object of a kind, without managedFields (most of an object's size, never compared).
async fn list<K>(client: &Client) -> Result<Vec<K>, DiffError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let list = Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|source| DiffError::Read {
            what: format!("{}s", K::kind(&())),
            source,
        })?;
    let mut items = list.items;
    for item in &mut items {
        item.meta_mut().managed_fields = None;
    }
    Ok(items)
}

/// A dry run of each pending child, [`CONCURRENCY`] at a time; the answers for the children that
/// replace a live object, in order.
///
/// A child that replaces a live object is dry-run applied as the controller applies it, and the
/// answer is compared field by field. A new child only has to be accepted (the report names it as
/// created), so it is a dry-run create instead, answered with its metadata alone: the same
/// admission and validation as the controller's apply, for about a fifth less of the API server's
/// work (an apply body is parsed as YAML and merged; a create body is JSON). A create refused because the
/// object appeared since the children were listed is dry-run applied instead.
async fn dry_run_children(client: &Client, pending: &[Pending]) -> Result<Vec<LiveObject>, DiffError> {
    let results: Vec<(ChildKey, Result<Option<DynamicObject>, kube::Error>)> = stream::iter(pending)
        .map(|pending| async move {
            let object = &pending.child.object;
            let meta = object.meta();
            let key = ChildKey {
                kind: object.kind(),
                namespace: meta.namespace.clone(),
                name: meta.name.clone().unwrap_or_default(),
            };
            let answer = match pending.live {
                Some(_) => dry_run_apply(client, &key, object).await.map(Some),
                None => match dry_run_create(client, &key, object).await {
                    Err(kube::Error::Api(status)) if status.reason == "AlreadyExists" => {
                        dry_run_apply(client, &key, object).await.map(|_| None)
                    }
                    other => other.map(|()| None),
                },
            };
            (key, answer)
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let mut answers = Vec::with_capacity(results.len());
    let mut refusals: Vec<(ChildKey, kube::Error)> = Vec::new();
    for (key, result) in results {
        match result {
            Ok(Some(object)) => answers.push(typed(&key, object)?),
            Ok(None) => {}
            Err(error) => refusals.push((key, error)),
        }
    }
    let mut refusals = refusals.into_iter();
    let Some((first_key, first)) = refusals.next() else {
        return Ok(answers);
    };
    let mut listing = format!("  {first_key}: {}", refusal(&first_key, &first));
    let mut count = 1;
    for (key, error) in refusals {
        listing.push_str(&format!("\n  {key}: {}", refusal(&key, &error)));
        count += 1;
    }
    Err(DiffError::Refused {
        count,
        listing,
        first,
    })
}

/// A server-side dry-run apply, with the controller's field manager, forced, as it applies.
async fn dry_run_apply(
    client: &Client,
    key: &ChildKey,
    object: &ChildObject,
) -> Result<DynamicObject, kube::Error> {
    let resource = key.kind.api_resource();
    let api: Api<DynamicObject> = match &key.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
    api.patch(&key.name, &params, &Patch::Apply(object)).await
}

/// A dry-run create with the controller's field manager; the server answers with the metadata
/// alone, as nothing else of it is read.
async fn dry_run_create(client: &Client, key: &ChildKey, object: &ChildObject) -> Result<(), kube::Error> {
    let resource = key.kind.api_resource();
    let params = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.to_string()),
    };
    let body = serde_json::to_vec(object).map_err(kube::Error::SerdeError)?;
    let mut request = kube::core::Request::new(DynamicObject::url_path(&resource, key.namespace.as_deref()))
        .create(&params, body)
        .map_err(kube::Error::BuildRequest)?;
    request.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(METADATA_ONLY),
    );
    client.request_text(request).await.map(drop)
}

/// The media type that asks the API server for an object's metadata alone.
const METADATA_ONLY: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

/// What the server said, with the one refusal that needs explaining (a namespace to create first).
fn refusal(key: &ChildKey, error: &kube::Error) -> String {
    match (error, &key.namespace) {
        (kube::Error::Api(status), Some(ns))
            if status.code == 404 && status.message.contains("namespaces") =>
        {
            format!(
                "namespace `{ns}` does not exist (create it; the operator applies the object once it does)"
            )
        }
        _ => api_message(error),
    }
}

/// The dry run's answer as the kind the controller reads.
fn typed(key: &ChildKey, object: DynamicObject) -> Result<LiveObject, DiffError> {
    let decode = |source| DiffError::Decode {
        key: key.to_string(),
        source,
    };
    let value = serde_json::to_value(object).map_err(decode)?;
    Ok(match key.kind {
        ChildKind::ReservedIp => {
            LiveObject::ReservedIp(Arc::new(serde_json::from_value(value).map_err(decode)?))
        }
        ChildKind::IpPool => LiveObject::IpPool(Arc::new(serde_json::from_value(value).map_err(decode)?)),
        ChildKind::MultusConfig => {
            LiveObject::MultusConfig(Arc::new(serde_json::from_value(value).map_err(decode)?))
        }
        ChildKind::InterfaceTask => {
            LiveObject::InterfaceTask(Arc::new(serde_json::from_value(value).map_err(decode)?))
        }
    })
}
