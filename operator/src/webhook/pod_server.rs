//! The pod webhook's I/O shell: a watch of SpiderNetworks feeding the [`BindingIndex`], the
//! registration of the pod webhook for the namespaces the bindings name (re-applied when that set
//! changes; every replica writes the same object), and the request handler.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use futures::StreamExt as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use spiderpool_schema::SpiderNetwork;
use tokio::sync::watch;

use super::pod::{self, BindingIndex};
use super::registration::{FIELD_MANAGER, Registration, with_types};
use super::review::{self, ReviewError};

/// How long a request waits for the first list of SpiderNetworks (a replica that just started).
const SYNC_WAIT: Duration = Duration::from_secs(2);
/// How often a failed registration of the pod webhook is retried.
const REGISTRATION_RETRY: Duration = Duration::from_secs(10);

/// The app bindings of every SpiderNetwork, as the handler reads them.
#[derive(Debug)]
pub struct PodBindings {
    index: RwLock<BindingIndex>,
    synced: watch::Sender<bool>,
}

impl PodBindings {
    fn new() -> Arc<Self> {
        Arc::new(PodBindings {
            index: RwLock::new(BindingIndex::default()),
            synced: watch::Sender::new(false),
        })
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BindingIndex> {
        self.index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BindingIndex> {
        self.index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Starts watching SpiderNetworks (and, with a registration, keeping the pod webhook's configuration
/// current); the task ends when the returned handle is aborted.
pub fn start(
    client: Client,
    registration: Option<Registration>,
    ca_pem: String,
) -> (Arc<PodBindings>, tokio::task::JoinHandle<()>) {
    let bindings = PodBindings::new();
    let task = tokio::spawn(follow(client, registration, ca_pem, bindings.clone()));
    (bindings, task)
}

async fn follow(
    client: Client,
    registration: Option<Registration>,
    ca_pem: String,
    bindings: Arc<PodBindings>,
) {
    let api: Api<SpiderNetwork> = Api::all(client.clone());
    let mut events = std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
    let mut listing: BTreeSet<String> = BTreeSet::new();
    let mut registered: Option<BTreeSet<String>> = None;
    let mut retry = tokio::time::interval(REGISTRATION_RETRY);
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { return };
                match event {
                    Ok(Event::Init) => listing.clear(),
                    Ok(Event::InitApply(network)) => {
                        if let Some(name) = &network.metadata.name {
                            listing.insert(name.clone());
                        }
                        bindings.write().insert(&network);
                    }
                    Ok(Event::InitDone) => {
                        bindings.write().retain(&listing);
                        bindings.synced.send_replace(true);
                    }
                    Ok(Event::Apply(network)) => bindings.write().insert(&network),
                    Ok(Event::Delete(network)) => {
                        if let Some(name) = &network.metadata.name {
                            bindings.write().remove(name);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "watching SpiderNetworks for the pod webhook"),
                }
            }
            _ = retry.tick() => {}
        }
        if !*bindings.synced.borrow() {
            continue;
        }
        let Some(registration) = &registration else {
            continue;
        };
        let namespaces = bindings.read().namespaces();
        if registered.as_ref() == Some(&namespaces) {
            continue;
        }
        match register(&client, registration, &ca_pem, &namespaces).await {
            Ok(()) => {
                tracing::info!(
                    namespaces = namespaces.len(),
                    "pod webhook registered for the bound namespaces"
                );
                registered = Some(namespaces);
            }
            Err(error) => tracing::warn!(%error, "registering the pod webhook; retrying"),
        }
    }
}

async fn register(
    client: &Client,
    registration: &Registration,
    ca_pem: &str,
    namespaces: &BTreeSet<String>,
) -> Result<(), kube::Error> {
    let configuration = pod::pod_configuration(registration, ca_pem, namespaces);
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    api.patch(
        &pod::pod_configuration_name(registration),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&with_types(&configuration, "MutatingWebhookConfiguration")?),
    )
    .await?;
    Ok(())
}

/// Answers one AdmissionReview of a pod.
pub async fn handle(bindings: Arc<PodBindings>, body: Bytes) -> axum::Json<AdmissionReview<DynamicObject>> {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(review) => review,
        Err(error) => {
            return axum::Json(
                AdmissionResponse::invalid(format!("undecodable AdmissionReview: {error}")).into_review(),
            );
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(error) => return axum::Json(AdmissionResponse::invalid(error.to_string()).into_review()),
    };
    if !*bindings.synced.borrow() {
        let mut synced = bindings.synced.subscribe();
        if tokio::time::timeout(SYNC_WAIT, synced.wait_for(|s| *s))
            .await
            .is_err()
        {
            let response = AdmissionResponse::from(&request).deny(
                "the SpiderNetwork app bindings are not loaded yet (the operator is starting); the pod is created again when its controller retries",
            );
            return axum::Json(response.into_review());
        }
    }
    let response = review::respond(&request, decide(&bindings, &request));
    tracing::debug!(
        uid = %request.uid,
        namespace = ?request.namespace,
        name = %request.name,
        allowed = response.allowed,
        message = %response.result.message,
        "pod admission"
    );
    axum::Json(response.into_review())
}

fn decide(
    bindings: &PodBindings,
    request: &AdmissionRequest<DynamicObject>,
) -> Result<super::Decision, ReviewError> {
    if request.operation != Operation::Create {
        return Ok(super::Decision::default());
    }
    let object = request.object.as_ref().ok_or(ReviewError::MissingObject)?;
    let value = serde_json::to_value(object).map_err(super::PatchError::from)?;
    // A pod that does not decode is the API server's to refuse; leave it alone.
    let Ok(pod) = serde_json::from_value::<Pod>(value) else {
        return Ok(super::Decision::default());
    };
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    Ok(pod::admit(&bindings.read(), &namespace, &pod)?)
}
