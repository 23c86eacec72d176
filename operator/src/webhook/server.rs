//! The HTTPS server: axum behind a TLS listener, one route per endpoint, each request read from the
//! cluster only as far as its rule needs (a LIST of pools and subnets, or one GET of a
//! NetworkAttachmentDefinition) and then decided by the pure rules.
//!
//! Reads are direct (quorum) LISTs rather than a reflector cache: a cache lags, and two overlapping pools
//! created back to back must see each other. Admission of pools and subnets is rare next to allocation
//! (which writes status and is not webhooked), so the LIST cost does not matter.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use kube::api::ListParams;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::{Api, Client};
use spiderpool_schema::{NetworkAttachmentDefinition, SpiderIPPool, SpiderSubnet};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::Snapshot;
use super::metrics::WebhookMetrics;
use super::registration::{self, ClientTarget, Registration};
use super::review::{self, Endpoint};
use super::tls::{self, TlsMaterial};

/// Upstream's webhook port.
pub const DEFAULT_PORT: u16 = 5722;

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// PEM files (`--tls-cert-file`, `--tls-key-file`, optional CA file; without it the last certificate
    /// of the chain is the CA).
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
        /// CA certificate for `caBundle`.
        ca: Option<PathBuf>,
    },
    /// A `kubernetes.io/tls` Secret shared by the replicas, generated for `names` when absent.
    Secret {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// DNS names (or IPs) of the serving certificate when it has to be generated.
        names: Vec<String>,
    },
    /// A CA and certificate generated in memory for `names` (one replica, tests).
    Generated {
        /// DNS names (or IPs) of the serving certificate.
        names: Vec<String>,
    },
}

/// How to serve the webhooks.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Address to listen on (`0.0.0.0:5722` upstream; port 0 picks a free one).
    pub listen: SocketAddr,
    /// The serving certificate.
    pub tls: TlsSource,
    /// The webhook configurations to create and keep pointing at this server with the right CA; `None`
    /// when something else (the chart, cert-manager's CA injector) manages them.
    pub registration: Option<Registration>,
}

/// A bound, not yet serving, webhook server. [`WebhookServer::local_addr`] tells the port when the
/// configuration asked for port 0.
pub struct WebhookServer {
    client: Client,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    material: TlsMaterial,
    registration: Option<Registration>,
    metrics: WebhookMetrics,
}

impl std::fmt::Debug for WebhookServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookServer")
            .field("listener", &self.listener)
            .field("registration", &self.registration)
            .finish_non_exhaustive()
    }
}

/// Serves the webhooks until `shutdown` completes: binds, registers the webhook configurations (when
/// asked), then answers, timing each answer in `metrics`. Runs on every replica.
pub async fn serve(
    client: Client,
    config: WebhookConfig,
    metrics: WebhookMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    bind(client, config)
        .await?
        .with_metrics(metrics)
        .run(shutdown)
        .await
}

/// Loads or makes the certificate and binds the listener.
pub async fn bind(client: Client, config: WebhookConfig) -> anyhow::Result<WebhookServer> {
    let material = match &config.tls {
        TlsSource::Files { cert, key, ca } => tls::load_files(cert, key, ca.as_deref())?,
        TlsSource::Secret {
            namespace,
            name,
            names,
        } => tls::from_secret(client.clone(), namespace, name, names).await?,
        TlsSource::Generated { names } => tls::generate(names)?,
    };
    let acceptor = TlsAcceptor::from(tls::server_config(&material)?);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the webhook server to {}", config.listen))?;
    Ok(WebhookServer {
        client,
        listener,
        acceptor,
        material,
        registration: config.registration,
        metrics: WebhookMetrics::default(),
    })
}

impl WebhookServer {
    /// The address the server listens on.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listener
            .local_addr()
            .context("reading the webhook server's address")
    }

    /// The CA certificate (PEM) clients verify the server with.
    pub fn ca_pem(&self) -> &str {
        &self.material.ca_pem
    }

    /// Registers `registration` when serving starts (for a target known only after binding, such as
    /// [`url_target`] of a port-0 listener).
    #[must_use]
    pub fn with_registration(mut self, registration: Registration) -> Self {
        self.registration = Some(registration);
        self
    }

    /// Times the answers in `metrics` (by default in series registered nowhere).
    #[must_use]
    pub fn with_metrics(mut self, metrics: WebhookMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Registers the webhook configurations (when configured) and serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        // Handshakes run in their own tasks so that a slow or broken client cannot hold up the others.
        let accept = tokio::spawn(accept_tls(self.listener, self.acceptor, tx));
        let _abort_accept = AbortOnDrop(accept);

        if let Some(registration) = &self.registration {
            registration::apply(self.client.clone(), registration, &self.material.ca_pem)
                .await
                .context("registering the webhook configurations")?;
        }

        // The pod webhook follows the SpiderNetworks as long as the server runs.
        let (bindings, following) = super::pod_server::start(
            self.client.clone(),
            self.registration.clone(),
            self.material.ca_pem.clone(),
        );
        let _stop_following = AbortOnDrop(following);
        let metrics = self.metrics.clone();
        let mut router = Router::new().route("/healthz", get(|| async { "ok" })).route(
            super::pod::PATH,
            post(move |body: Bytes| {
                let (metrics, bindings) = (metrics.clone(), bindings.clone());
                async move {
                    let answer = super::pod_server::handle(bindings, body);
                    metrics.time(super::pod::PATH, answer).await
                }
            }),
        );
        for endpoint in Endpoint::all() {
            let metrics = self.metrics.clone();
            // Formatted once, not on every request.
            let path: std::sync::Arc<str> = endpoint.path().into();
            router = router.route(
                &path.clone(),
                post(move |State(client): State<Client>, body: Bytes| {
                    let (metrics, path) = (metrics.clone(), path.clone());
                    async move { metrics.time(&path, handle(client, endpoint, body)).await }
                }),
            );
        }
        let router = router.with_state(self.client.clone());
        tracing::info!(%addr, "webhook server listening");
        axum::serve(TlsListener { rx, addr }, router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving the webhooks")?;
        tracing::info!("webhook server stopped");
        Ok(())
    }
}

/// Aborts the accept loop when the server stops (also on error or cancellation).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "webhook server cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    // The receiver is gone only when the server stopped.
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// axum's view of the TLS connections the accept loop hands over.
struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(connection) => connection,
            // The accept loop ended (it only does when aborted): no more connections, ever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

async fn handle(client: Client, endpoint: Endpoint, body: Bytes) -> impl IntoResponse {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(review) => review,
        Err(error) => {
            tracing::warn!(%error, path = %endpoint.path(), "undecodable AdmissionReview");
            return axum::Json(
                AdmissionResponse::invalid(format!("undecodable AdmissionReview: {error}")).into_review(),
            );
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(error) => {
            return axum::Json(AdmissionResponse::invalid(error.to_string()).into_review());
        }
    };
    let response = match read_snapshot(&client, endpoint, &request).await {
        Ok(snapshot) => review::review(endpoint, &request, &snapshot),
        // Fail closed: without the other objects the overlap rules cannot be checked.
        Err(error) => AdmissionResponse::from(&request).deny(format!(
            "cannot read the cluster to check this {}: {error:#}",
            endpoint.kind.name()
        )),
    };
    tracing::debug!(
        uid = %request.uid,
        path = %endpoint.path(),
        name = %request.name,
        allowed = response.allowed,
        message = %response.result.message,
        "admission"
    );
    axum::Json(response.into_review())
}

async fn read_snapshot(
    client: &Client,
    endpoint: Endpoint,
    request: &AdmissionRequest<DynamicObject>,
) -> anyhow::Result<Snapshot> {
    let mut snapshot = Snapshot::default();
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let subnets: Api<SpiderSubnet> = Api::all(client.clone());
    let (pools, subnets) = tokio::try_join!(
        async {
            if !endpoint.needs_pools() {
                return Ok(Vec::new());
            }
            let list = pools.list(&ListParams::default()).await;
            list.map(|l| l.items).context("listing SpiderIPPools")
        },
        async {
            if !endpoint.needs_subnets() {
                return Ok(Vec::new());
            }
            let list = subnets.list(&ListParams::default()).await;
            list.map(|l| l.items).context("listing SpiderSubnets")
        },
    )?;
    snapshot.pools = pools;
    snapshot.subnets = subnets;
    if let Some((namespace, name)) = review::nad_to_read(endpoint, request) {
        let nads: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), &namespace);
        snapshot.existing_nad = nads
            .get_opt(&name)
            .await
            .with_context(|| format!("reading the NetworkAttachmentDefinition {namespace}/{name}"))?;
    }
    Ok(snapshot)
}

/// The registration target for a server reached at its bound address (`https://<addr>`), e.g. an
/// operator run outside the cluster, or a test.
pub fn url_target(addr: SocketAddr) -> ClientTarget {
    ClientTarget::Url(format!("https://{addr}"))
}

/// The webhook flags of `spiderpool-operator` (flatten into its command line with `#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Port the admission webhooks listen on.
    #[arg(long = "webhook-port", env = "SPIDERPOOL_WEBHOOK_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Serving certificate (PEM). With --tls-key-file; without both, the certificate is kept in the
    /// Secret --webhook-secret (generated by the first replica).
    #[arg(
        long = "tls-cert-file",
        env = "SPIDERPOOL_TLS_CERT_FILE",
        requires = "key_file"
    )]
    pub cert_file: Option<PathBuf>,
    /// Private key of --tls-cert-file (PEM).
    #[arg(
        long = "tls-key-file",
        env = "SPIDERPOOL_TLS_KEY_FILE",
        requires = "cert_file"
    )]
    pub key_file: Option<PathBuf>,
    /// CA of --tls-cert-file for the webhook configurations' caBundle (default: the chain's last
    /// certificate).
    #[arg(long = "tls-ca-file", env = "SPIDERPOOL_TLS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Namespace of the operator (its Service and certificate Secret live there).
    #[arg(
        id = "webhook_namespace",
        long = "webhook-namespace",
        env = "SPIDERPOOL_NAMESPACE",
        default_value = "kube-system"
    )]
    pub namespace: String,
    /// Service in front of the webhook port.
    #[arg(
        long = "webhook-service",
        env = "SPIDERPOOL_WEBHOOK_SERVICE",
        default_value = "spiderpool-controller"
    )]
    pub service: String,
    /// Port of that Service.
    #[arg(long = "webhook-service-port", default_value_t = i32::from(DEFAULT_PORT))]
    pub service_port: i32,
    /// Secret holding the generated certificate when no files are given.
    #[arg(long = "webhook-secret", default_value = "spiderpool-controller-server-certs")]
    pub secret: String,
    /// Name of the Mutating/ValidatingWebhookConfigurations the operator keeps up to date; empty leaves
    /// them to someone else (e.g. the chart with cert-manager's CA injector).
    #[arg(long = "webhook-configuration", default_value = "spiderpool-controller")]
    pub configuration: String,
}

impl WebhookArgs {
    /// The server configuration these flags describe.
    pub fn to_config(&self) -> WebhookConfig {
        let names = tls::service_dns_names(&self.service, &self.namespace);
        let tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => TlsSource::Files {
                cert: cert.clone(),
                key: key.clone(),
                ca: self.ca_file.clone(),
            },
            _ => TlsSource::Secret {
                namespace: self.namespace.clone(),
                name: self.secret.clone(),
                names,
            },
        };
        let registration = (!self.configuration.is_empty()).then(|| {
            Registration::for_service(
                &self.configuration,
                &self.namespace,
                &self.service,
                self.service_port,
            )
        });
        WebhookConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], self.port)),
            tls,
            registration,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        webhook: WebhookArgs,
    }

    #[test]
    fn defaults_keep_the_certificate_in_a_secret_and_register_the_service() {
        let cli = Cli::try_parse_from(["op"]).unwrap();
        let config = cli.webhook.to_config();
        assert_eq!(config.listen.port(), 5722);
        assert!(
            matches!(&config.tls, TlsSource::Secret { names, .. } if names.contains(&"spiderpool-controller.kube-system.svc".to_string()))
        );
        assert_eq!(config.registration.unwrap().name, "spiderpool-controller");
    }

    #[test]
    fn files_need_both_halves() {
        assert!(Cli::try_parse_from(["op", "--tls-cert-file", "c.pem"]).is_err());
        let cli = Cli::try_parse_from([
            "op",
            "--tls-cert-file",
            "c.pem",
            "--tls-key-file",
            "k.pem",
            "--webhook-configuration",
            "",
        ])
        .unwrap();
        let config = cli.webhook.to_config();
        assert!(matches!(config.tls, TlsSource::Files { .. }));
        assert!(config.registration.is_none());
    }
}
