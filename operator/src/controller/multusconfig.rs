//! The SpiderMultusConfig controller: keeps one NetworkAttachmentDefinition per SpiderMultusConfig,
//! rendered by [`crate::nad::render_nad`] (upstream's rendering, reference §7), for every cniType.
//!
//! - The NAD is named by the annotation `multus.spidernet.io/cr-name`, else after the SMC, in the SMC's
//!   namespace, with a controller owner reference to the SMC (so it is garbage-collected with it).
//! - Written by server-side apply (field manager [`FIELD_MANAGER`], forced), and only when the live NAD
//!   differs from the rendering (see [`super::network::diff`]); NADs are watched (`owns`), so a hand
//!   edit is reverted at once.
//! - A NAD of that name controlled by something else (another SMC) is left alone, as upstream's webhook
//!   refuses such a takeover; a NAD without a controller is adopted, as upstream does.
//! - A NAD this SMC controls under another name (the cr-name annotation changed) is deleted.
//! - An SMC that cannot be rendered (the SMC has no status) is reported as a Warning Event on the SMC
//!   and a tracing error; nothing is written until it changes.
//! - Deviation from upstream, on purpose: GitOps tracking labels and annotations (Argo CD, Flux) of the
//!   SMC are not copied onto the NAD. Upstream copies every annotation, which makes Argo CD treat the
//!   generated NAD as its own and prune it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use spiderpool_schema::{NetworkAttachmentDefinition, SpiderMultusConfig};
use tracing::{debug, error, info, instrument, warn};

use super::network::diff::{self, RenderedHash};
use crate::metrics::Metrics;
use crate::nad::render_nad;

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "multusconfig";
/// Server-side apply field manager of the NADs.
pub const FIELD_MANAGER: &str = "spiderpool-operator/multusconfig";

/// Tuning of the controller.
#[derive(Debug, Clone)]
pub struct Options {
    /// Who publishes Events (the pod name); `None` leaves it out.
    pub instance: Option<String>,
    /// Periodic re-check (upstream resyncs every 60 s; events make most re-checks unnecessary).
    pub resync: Duration,
    /// SMCs reconciled at once.
    pub concurrency: u16,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            instance: std::env::var("SPIDERPOOL_POD_NAME").ok(),
            resync: Duration::from_secs(300),
            concurrency: 8,
        }
    }
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object lacks metadata the API server always sets.
    #[error("SpiderMultusConfig has no metadata.{0}")]
    MissingMetadata(&'static str),
    /// The NAD cache was dropped before it was filled (shutting down).
    #[error("the NetworkAttachmentDefinition watch cache stopped before it was filled")]
    CacheNotReady,
    /// The rendered NAD could not be serialized.
    #[error("serializing NetworkAttachmentDefinition {name}: {source}")]
    Serialize {
        /// Which NAD.
        name: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Writing the NAD failed.
    #[error("writing NetworkAttachmentDefinition {name}: {source}")]
    Write {
        /// Which NAD (`namespace/name`).
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Stable category for the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MissingMetadata(_) => "missing_metadata",
            Error::CacheNotReady => "cache_not_ready",
            Error::Serialize { .. } => "serialize",
            Error::Write { .. } => "write",
        }
    }
}

struct Context {
    client: Client,
    metrics: Arc<Metrics>,
    nads: Store<NetworkAttachmentDefinition>,
    recorder: Recorder,
    options: Options,
    /// NAD (`namespace/name`) -> resourceVersion our last apply produced and its hash, for when the
    /// cache has not caught up with our own write yet.
    recent: Mutex<HashMap<String, (u64, RenderedHash)>>,
}

/// Runs the controller until the future is dropped (or the SMC watch ends).
pub async fn run(client: Client, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    run_with(client, metrics, Options::default()).await
}

/// [`run`] with explicit [`Options`].
pub async fn run_with(client: Client, metrics: Arc<Metrics>, options: Options) -> anyhow::Result<()> {
    let (nads, nad_events) = super::network::cache::<NetworkAttachmentDefinition>(&client);
    let controller = Controller::new(
        Api::<SpiderMultusConfig>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .with_config(controller::Config::default().concurrency(options.concurrency))
    .owns_stream(nad_events);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "spiderpool-operator".to_string(),
            instance: options.instance.clone(),
        },
    );
    let context = Arc::new(Context {
        client,
        metrics,
        nads,
        recorder,
        options,
        recent: Mutex::new(HashMap::new()),
    });
    info!("SpiderMultusConfig controller started");
    controller
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(smc = %object, "reconciled"),
                Err(controller::Error::ObjectNotFound(object)) => {
                    debug!(smc = %object, "deleted before it was reconciled");
                }
                Err(err) => warn!(error = %err, "SpiderMultusConfig controller"),
            }
        })
        .await;
    anyhow::bail!("the SpiderMultusConfig controller stopped: its watch of SpiderMultusConfigs ended")
}

fn error_policy(smc: Arc<SpiderMultusConfig>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(CONTROLLER, error.metric_label());
    warn!(smc = %ObjectRef::from_obj(smc.as_ref()), %error, "reconcile failed; retrying in 5 s");
    Action::requeue(Duration::from_secs(5))
}

#[instrument(skip_all, fields(smc = %ObjectRef::from_obj(smc.as_ref())))]
async fn reconcile(smc: Arc<SpiderMultusConfig>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    ctx.nads
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheNotReady)?;
    if smc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = smc.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let uid = smc.metadata.uid.clone().ok_or(Error::MissingMetadata("uid"))?;

    let nad = match render_nad(&smc) {
        Ok(nad) => nad,
        Err(err) => {
            error!(error = %err, "cannot render the NetworkAttachmentDefinition");
            ctx.metrics.reconcile_failed(CONTROLLER, "render");
            ctx.event(&smc, EventType::Warning, "RenderFailed", err.to_string())
                .await;
            // Rendering is pure: only an edit of the SMC can change the answer.
            return Ok(Action::await_change());
        }
    };
    let name = nad.name_any();
    let full_name = format!("{namespace}/{name}");
    let mut desired = nad;
    diff::strip_tracking(&mut desired.metadata);
    let hash = diff::stamp_hash(&mut desired).map_err(|source| Error::Serialize {
        name: full_name.clone(),
        source,
    })?;

    ctx.prune_renamed(&smc, &namespace, &uid, &name).await?;

    let live = ctx.nads.get(&ObjectRef::new(&name).within(&namespace));
    if let Some(live) = &live {
        let other_controller = live
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true) && o.uid != uid);
        if let Some(other) = other_controller {
            let message = format!(
                "NetworkAttachmentDefinition {full_name} is controlled by {} {}; it is not taken over",
                other.kind, other.name
            );
            warn!("{message}");
            ctx.event(&smc, EventType::Warning, "NameConflict", message).await;
            return Ok(Action::requeue(ctx.options.resync));
        }
        if live.metadata.deletion_timestamp.is_some() {
            // Upstream retries until the old object is gone.
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        if ctx.up_to_date(&full_name, live, &desired, hash) {
            return Ok(Action::requeue(ctx.options.resync));
        }
    }
    let api: Api<NetworkAttachmentDefinition> = Api::namespaced(ctx.client.clone(), &namespace);
    ctx.metrics.count_write(CONTROLLER, "apply");
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await
        .map_err(|source| Error::Write {
            name: full_name.clone(),
            source,
        })?;
    info!(nad = %full_name, "NetworkAttachmentDefinition applied");
    if let Some(rv) = applied.metadata.resource_version.and_then(|rv| rv.parse().ok()) {
        ctx.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(full_name, (rv, hash));
    }
    Ok(Action::requeue(ctx.options.resync))
}

impl Context {
    fn up_to_date(
        &self,
        full_name: &str,
        live: &NetworkAttachmentDefinition,
        desired: &NetworkAttachmentDefinition,
        hash: RenderedHash,
    ) -> bool {
        let live_rv: Option<u64> = live
            .metadata
            .resource_version
            .as_deref()
            .and_then(|rv| rv.parse().ok());
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (recent.get(full_name), live_rv) {
            // The cache has not seen our last write yet: that write is what counts.
            (Some((written_rv, written_hash)), Some(live_rv)) if live_rv < *written_rv => {
                return *written_hash == hash;
            }
            (Some(_), _) => {
                recent.remove(full_name);
            }
            (None, _) => {}
        }
        drop(recent);
        diff::live_hash(&live.metadata) == Some(hash)
            && match (serde_json::to_value(live), serde_json::to_value(desired)) {
                (Ok(live), Ok(desired)) => diff::contains(&live, &desired),
                _ => false,
            }
    }

    /// Deletes NADs this SMC controls under a name it no longer renders.
    async fn prune_renamed(
        &self,
        smc: &SpiderMultusConfig,
        namespace: &str,
        uid: &str,
        name: &str,
    ) -> Result<(), Error> {
        let stale: Vec<Arc<NetworkAttachmentDefinition>> = self.nads.state_filter(|nad| {
            nad.namespace().as_deref() == Some(namespace)
                && nad.name_any() != name
                && nad.metadata.deletion_timestamp.is_none()
                && nad
                    .owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && o.uid == uid)
        });
        let api: Api<NetworkAttachmentDefinition> = Api::namespaced(self.client.clone(), namespace);
        for nad in stale {
            let old = nad.name_any();
            self.metrics.count_write(CONTROLLER, "delete");
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: nad.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            match api.delete(&old, &params).await {
                Ok(_) => info!(smc = %smc.name_any(), nad = %old, "deleted the NAD of the old name"),
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
                Err(source) => {
                    return Err(Error::Write {
                        name: format!("{namespace}/{old}"),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Publishes an Event about the SMC; failures to publish are only logged.
    async fn event(&self, smc: &SpiderMultusConfig, type_: EventType, reason: &str, note: String) {
        self.metrics.count_write(CONTROLLER, "event");
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: "RenderNetworkAttachmentDefinition".to_string(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &smc.object_ref(&())).await {
            warn!(error = %err, "cannot publish an Event");
        }
    }
}
