//! The operator's admission webhooks served in the test process for a private control plane: every
//! CRD of the schema installed, the webhook server bound to a free 127.0.0.1 port with a generated CA,
//! and the Mutating/ValidatingWebhookConfigurations registered with its URL, so requests go through
//! the API server exactly as `kubectl` sends them.
//!
//! The configurations are cluster-wide: [`with_webhooks`] starts a control plane of the test's own.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt as _};
use prometheus_client::registry::Registry;
use spiderpool_operator::webhook::metrics::WebhookMetrics;
use spiderpool_operator::webhook::registration::{self, Registration};
use spiderpool_operator::webhook::{self, TlsSource, WebhookConfig};
use spiderpool_schema::SpiderNetwork;

use crate::{ClusterOptions, TestCluster, ipam};

/// Starts a private control plane (API server only) with every CRD of the chart and our webhooks
/// registered as `name`, runs `check` with an admin client, then removes the webhooks (also when the
/// check failed) and returns the check's outcome.
pub async fn with_webhooks<F, Fut, T>(name: &str, check: F) -> Result<T>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let cluster = TestCluster::start(ClusterOptions {
        install_nad_crd: false,
        ..ClusterOptions::apiserver_only()
    })
    .await?;
    let client = cluster.client()?;
    ipam::install_spiderpool_crds(&client).await?;
    let webhooks = Webhooks::start(&client, name).await?;
    let outcome = check(client).await;
    webhooks.stop().await?;
    outcome
}

/// The webhook server running in this process and registered with the API server.
pub struct Webhooks {
    client: Client,
    registration: Registration,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<Result<()>>>,
    metrics: Registry,
    _runtime: ServerRuntime,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("registration", &self.registration.name)
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Binds the server, registers the configurations named `name` and waits until the API server
    /// calls the webhooks (its configuration cache refreshes a moment after they are written).
    pub async fn start(client: &Client, name: &str) -> Result<Self> {
        // The server runs on a runtime of its own, as in the operator's process: the test's requests
        // do not queue on the worker threads that answer the API server's calls.
        let runtime = ServerRuntime::start()?;
        let listen: SocketAddr = "127.0.0.1:0".parse()?;
        let config = WebhookConfig {
            listen,
            tls: TlsSource::Generated {
                names: vec!["127.0.0.1".into()],
            },
            registration: None,
        };
        let server = runtime
            .handle()
            .spawn(webhook::bind(client.clone(), config))
            .await
            .context("binding the webhook server panicked")??;
        let registration = Registration {
            name: name.into(),
            target: webhook::url_target(server.local_addr()?),
            object_selector: None,
            timeout_seconds: 10,
        };
        let mut metrics = Registry::default();
        let server = server
            .with_registration(registration.clone())
            .with_metrics(WebhookMetrics::register(&mut metrics));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = runtime.handle().spawn(server.run(async {
            let _ = stopped.await;
        }));
        let webhooks = Webhooks {
            client: client.clone(),
            registration,
            stop: Some(stop),
            serving: Some(serving),
            metrics,
            _runtime: runtime,
        };
        wait_until_webhooks_answer(client).await?;
        Ok(webhooks)
    }

    /// The server's metrics in Prometheus' text format (among them
    /// [`spiderpool_operator::webhook::metrics::DURATION_METRIC`], its answer times).
    pub fn metrics_text(&self) -> Result<String> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.metrics)
            .context("encoding the webhook server's metrics")?;
        Ok(text)
    }

    /// Stops the server and removes the configurations (checking they are gone); fails if serving
    /// failed.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = match self.serving.take() {
            Some(serving) => serving.await.context("the webhook server task panicked")?,
            None => Ok(()),
        };
        registration::remove(self.client.clone(), &self.registration).await?;
        let name = &self.registration.name;
        let mutating: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let validating: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
        ensure!(
            mutating.get_opt(name).await?.is_none() && validating.get_opt(name).await?.is_none(),
            "the webhook configurations {name} were not removed"
        );
        served
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
    }
}

/// The webhook server's own runtime, shut down without waiting when dropped (a runtime cannot be
/// dropped, waiting, inside the test's runtime).
struct ServerRuntime {
    handle: tokio::runtime::Handle,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ServerRuntime {
    fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("webhook-server")
            .enable_all()
            .build()
            .context("starting the webhook server's runtime")?;
        Ok(ServerRuntime {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Waits until the pod webhook binds pods like `probe` (a dry-run create of it comes back with
/// `annotation`): the API server's cache of webhook configurations, and the operator's of bindings,
/// lag the objects a moment.
pub async fn wait_until_pod_webhook_binds(
    pods: &Api<Pod>,
    probe: &Pod,
    annotation: &str,
    timeout: Duration,
) -> Result<()> {
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    crate::wait_for("the pod webhook to bind the probe pod", timeout, || async {
        let created = pods.create(&dry_run, probe).await?;
        Ok(created.annotations().contains_key(annotation).then_some(()))
    })
    .await
}

/// Waits until a SpiderNetwork with an invalid name is refused by our webhook (not only by the schema).
async fn wait_until_webhooks_answer(client: &Client) -> Result<()> {
    let networks: Api<SpiderNetwork> = Api::all(client.clone());
    let probe: SpiderNetwork = serde_json::from_value(serde_json::json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderNetwork",
        "metadata": {"name": "not.a.label"},
        "spec": {"subnets": [{"name": "s", "ipv4": {"cidr": "10.250.0.0/24"}}],
                 "racks": [{"name": "r", "nodeSelector": {"matchLabels": {"a": "b"}}}]},
    }))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        match networks.create(&dry_run, &probe).await {
            Err(kube::Error::Api(status)) if status.message.contains("admission webhook") => return Ok(()),
            other if Instant::now() > deadline => {
                bail!("the webhooks never answered; last result: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
