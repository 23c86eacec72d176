//! `spiderpool-operator`: the operator process (upstream's spiderpool-controller).
//!
//! - Checks that the CRDs it needs are installed, and exits with an install hint if not.
//! - Serves `/healthz` and `/readyz` (health port, 5720 like upstream; upstream's
//!   `/v1/runtime/{startup,readiness,liveness}` paths too) and `/metrics` (metrics port, 5721).
//! - Runs the controllers only while it holds the leader Lease (`spiderpool_operator::leader`). Losing
//!   the Lease stops them at once and the process exits with status 1, so the Deployment restarts it
//!   and it joins the election again.
//! - SIGTERM or SIGINT: stops the controllers, releases the Lease, exits 0.
//!
//! Every flag can be given by environment variable (upstream's names where upstream has one).

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Parser;
use futures::FutureExt;
use futures::future::BoxFuture;
use kube::api::{Api, ListParams};
use kube::{Client, Resource};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use spiderpool_operator::controller::cache::SharedCache;
use spiderpool_operator::controller::{self, multusconfig, network};
use spiderpool_operator::leader::{DEFAULT_LEASE_NAME, LeaderElector, LeaderError, LeaseConfig, Outcome};
use spiderpool_operator::metrics::{self, Metrics};
use spiderpool_operator::webhook::TlsSource;
use spiderpool_operator::webhook::metrics::WebhookMetrics;
use spiderpool_operator::{settings, telemetry};
use spiderpool_schema::{
    NetworkAttachmentDefinition, SpiderIPPool, SpiderInterfaceTask, SpiderMultusConfig, SpiderNetwork,
    SpiderReservedIP, SpiderSubnet,
};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// mimalloc rather than glibc's malloc: a reconcile of a large topology makes and drops tens of
/// thousands of small objects, and glibc's malloc and free took about 40% of its CPU time (see
/// `operator/benches/reconcile_large.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The spiderpool operator: controllers behind a leader Lease, health and metrics endpoints.
#[derive(Debug, Parser)]
#[command(name = "spiderpool-operator", version, about)]
struct Args {
    /// Namespace of the operator (where the leader Lease lives).
    #[arg(long, env = "SPIDERPOOL_POD_NAMESPACE", default_value = "kube-system")]
    namespace: String,
    /// Identity in the leader election; the hostname when unset.
    #[arg(long, env = "SPIDERPOOL_POD_NAME")]
    pod_name: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, env = "SPIDERPOOL_LEADER_LEASE_NAME", default_value = DEFAULT_LEASE_NAME)]
    lease_name: String,
    /// Leader lease duration, in seconds.
    #[arg(long, env = "SPIDERPOOL_LEADER_DURATION", default_value = "15", value_parser = seconds)]
    lease_duration: Duration,
    /// How long the leader retries renewing before it gives up, in seconds.
    #[arg(long, env = "SPIDERPOOL_LEADER_RENEW_DEADLINE", default_value = "10", value_parser = seconds)]
    renew_deadline: Duration,
    /// Pause between election attempts and renewals, in seconds.
    #[arg(long, env = "SPIDERPOOL_LEADER_RETRY_PERIOD", default_value = "2", value_parser = seconds)]
    retry_period: Duration,
    /// Address the health and metrics endpoints listen on.
    #[arg(long, env = "SPIDERPOOL_BIND_ADDRESS", default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Port of `/healthz` and `/readyz`.
    #[arg(long, env = "SPIDERPOOL_HEALTH_PORT", default_value_t = 5720)]
    health_port: u16,
    /// Port of `/metrics`.
    #[arg(long, env = "SPIDERPOOL_METRIC_HTTP_PORT", default_value_t = 5721)]
    metrics_port: u16,
    /// Writes in flight at once while the SpiderNetwork controller applies a topology.
    #[arg(long, env = "SPIDERPOOL_NETWORK_APPLY_CONCURRENCY", default_value_t = 32)]
    network_apply_concurrency: usize,
    /// How often an applied topology is re-checked for drift, in seconds.
    #[arg(long, env = "SPIDERPOOL_NETWORK_RESYNC", default_value = "300", value_parser = seconds)]
    network_resync: Duration,
    /// Serve the admission webhooks (every replica serves them, leader or not).
    #[arg(long, env = "SPIDERPOOL_ENABLE_WEBHOOKS", default_value_t = true, action = clap::ArgAction::Set)]
    enable_webhooks: bool,
    /// Reclaim addresses of gone pods (IP GC).
    #[arg(long, env = "SPIDERPOOL_GC_IP_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    enable_gc: bool,
    /// Interval of the reclaim's full scan, in seconds.
    #[arg(long, env = "SPIDERPOOL_GC_DEFAULT_INTERVAL_DURATION", default_value = "600", value_parser = seconds)]
    gc_interval: Duration,
    #[command(flatten)]
    webhook: spiderpool_operator::webhook::WebhookArgs,
    /// What the chart passes: the spiderpool-conf ConfigMap and upstream's environment.
    #[command(flatten)]
    chart: spiderpool_operator::settings::ChartArgs,
}

fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(value).map_err(|_| format!("`{text}` is not a valid duration in seconds"))
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init("spiderpool-operator");
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let identity = match &args.pod_name {
        Some(name) if !name.is_empty() => name.clone(),
        _ => hostname().context("no --pod-name / SPIDERPOOL_POD_NAME and no hostname to use instead")?,
    };
    let conf = settings::load_conf(args.chart.config_path.as_deref())?;
    let resolved = args.chart.resolve(&conf)?;
    for ignored in &resolved.ignored {
        warn!("spiderpool-conf: {ignored}");
    }
    let client = Client::try_default()
        .await
        .context("cannot configure a Kubernetes client (in-cluster service account or KUBECONFIG)")?;
    check_crds(&client).await?;

    let pools = SharedCache::<SpiderIPPool>::new(&client);
    let subnets = SharedCache::<SpiderSubnet>::new(&client);
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let gc_metrics = spiderpool_operator::controller::reclaim::GcMetrics::default();
    gc_metrics.register(&mut registry);
    registry.register_collector(Box::new(metrics::CapacityCollector {
        pools: pools.store(),
        subnets: subnets.store(),
        debug: args.chart.enable_debug_metrics,
    }));
    // Filled by the SpiderNetwork controller, so only the leader's series are non-empty.
    let network_capacity = network::capacity::CapacityMetrics::register(&mut registry);
    let webhook_metrics = WebhookMetrics::register(&mut registry);
    let registry = Arc::new(registry);

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown requested");
        shutdown_tx.send_replace(true);
    });
    let shutdown = move || {
        let mut rx = shutdown_rx.clone();
        async move {
            // An error means the sender is gone, which only happens at exit.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let ready = Arc::new(AtomicBool::new(false));
    let health = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/runtime/liveness", get(|| async { "ok" }))
        .route("/readyz", get(readiness))
        .route("/v1/runtime/readiness", get(readiness))
        .route("/v1/runtime/startup", get(readiness))
        .with_state(ready.clone());
    let metrics_router = Router::new()
        .route("/metrics", get(serve_metrics))
        .with_state(registry);
    let health_server = serve(
        SocketAddr::new(args.bind_address, args.health_port),
        health,
        shutdown(),
    )
    .await?;
    let metrics_server = if args.chart.enable_metrics {
        Some(
            serve(
                SocketAddr::new(args.bind_address, args.metrics_port),
                metrics_router,
                shutdown(),
            )
            .await?,
        )
    } else {
        None
    };
    let mut webhook_config = args.webhook.to_config();
    if let TlsSource::Secret { names, .. } | TlsSource::Generated { names } = &mut webhook_config.tls {
        names.extend(args.chart.webhook_extra_names.iter().cloned());
    }
    // Webhooks are served by every replica, leader or not.
    let webhook_server = args.enable_webhooks.then(|| {
        let (client, config, stop) = (client.clone(), webhook_config, shutdown());
        tokio::spawn(async move {
            if let Err(err) = spiderpool_operator::webhook::serve(client, config, webhook_metrics, stop).await
            {
                error!("the admission webhook server failed: {err:#}");
            }
        })
    });

    let elector = LeaderElector::new(
        client.clone(),
        LeaseConfig {
            namespace: args.namespace.clone(),
            name: args.lease_name.clone(),
            identity: identity.clone(),
            lease_duration: args.lease_duration,
            renew_deadline: args.renew_deadline,
            retry_period: args.retry_period,
        },
    )?;
    let mut leading = elector.leading();
    let leader_metrics = metrics.clone();
    tokio::spawn(async move {
        while leading.changed().await.is_ok() {
            leader_metrics.set_leader(*leading.borrow());
        }
    });

    // Every leader-only controller, one line each. They start when this replica becomes leader and
    // are dropped (stopped) when it stops leading.
    let network_options = network::Options {
        apply_concurrency: args.network_apply_concurrency,
        resync: args.network_resync,
        capacity_metrics: Some(network_capacity),
        ..network::Options::default()
    };
    let multus_options = multusconfig::Options {
        instance: Some(identity.clone()),
        ..multusconfig::Options::default()
    };
    // One pool cache for every controller that reads pools (a large topology has tens of thousands):
    // one watch on the API server and one copy in memory. Controllers subscribe before it runs.
    let mut controllers: Vec<BoxFuture<'static, Result<()>>> = vec![
        network::run_shared(client.clone(), metrics.clone(), network_options, &pools).boxed(),
        controller::ippool::run_shared(
            client.clone(),
            controller::ippool::IPPoolControllerConfig::default(),
            &pools,
        )
        .boxed(),
        controller::reclaim::run_shared(
            client.clone(),
            controller::reclaim::ReclaimConfig {
                enabled: args.enable_gc,
                scan_interval: args.gc_interval,
                metrics: gc_metrics,
                flags: resolved.gc_flags.clone(),
                clean_outdated_endpoints: resolved.clean_outdated_endpoints,
                ..controller::reclaim::ReclaimConfig::default()
            },
            &pools,
        )
        .boxed(),
    ];
    if args.chart.enable_multus_config {
        controllers.push(multusconfig::run_with(client.clone(), metrics.clone(), multus_options).boxed());
    }
    if resolved.enable_subnet {
        controllers
            .push(controller::subnet::run_shared(client.clone(), resolved.subnet.clone(), &pools).boxed());
    }
    if args.chart.enable_coordinator {
        controllers.push(controller::coordinator::run(client.clone(), resolved.coordinator.clone()).boxed());
    }
    let work = subnets.run_alongside(
        pools.run_alongside(async move { futures::future::try_join_all(controllers).await.map(|_| ()) }),
    );

    ready.store(true, Ordering::SeqCst);
    info!(%identity, namespace = %args.namespace, lease = %args.lease_name, "waiting for the leader Lease");
    let outcome = elector.run(work, shutdown()).await;
    ready.store(false, Ordering::SeqCst);
    match outcome {
        Ok(Outcome::ShutdownBeforeLeading | Outcome::ShutdownWhileLeading) => {
            for server in std::iter::once(health_server).chain(metrics_server) {
                if let Err(err) = server.await {
                    warn!(error = %err, "an HTTP server did not stop cleanly");
                }
            }
            if let Some(webhooks) = webhook_server
                && let Err(err) = webhooks.await
            {
                warn!(error = %err, "the webhook server did not stop cleanly");
            }
            info!("stopped");
            Ok(())
        }
        Err(err @ LeaderError::Lost { .. }) => Err(anyhow::Error::new(err).context(
            "stopped every controller; exiting so the Deployment restarts this replica as a follower",
        )),
        Err(err) => Err(err.into()),
    }
}

async fn readiness(State(ready): State<Arc<AtomicBool>>) -> (StatusCode, &'static str) {
    if ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn serve_metrics(State(registry): State<Arc<Registry>>) -> (StatusCode, String) {
    match metrics::encode(&registry) {
        Ok(text) => (StatusCode::OK, text),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

/// Binds `address` (failing at once if it is taken) and serves `router` until `shutdown`.
async fn serve(
    address: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    info!(%address, "listening");
    Ok(tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    }))
}

async fn wait_for_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => {}
        result = tokio::signal::ctrl_c() => {
            if let Err(err) = result {
                warn!(error = %err, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
        }
    }
}

fn hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the hostname")?;
    let name = name.trim().to_string();
    anyhow::ensure!(!name.is_empty(), "the hostname is empty");
    Ok(name)
}

/// Fails with an install hint when a CRD the controllers need is not served.
async fn check_crds(client: &Client) -> Result<()> {
    async fn check<K>(client: &Client) -> Result<()>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let api: Api<K> = Api::all(client.clone());
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => anyhow::bail!(
                "the CustomResourceDefinition {}.{} is not installed; install the chart's CRDs first \
                 (kubectl apply --server-side -f charts/spiderpool/crds/)",
                K::plural(&()),
                K::group(&())
            ),
            Err(err) => Err(err).with_context(|| format!("cannot list {}", K::plural(&()))),
        }
    }
    check::<SpiderNetwork>(client).await?;
    check::<SpiderIPPool>(client).await?;
    check::<SpiderReservedIP>(client).await?;
    check::<SpiderMultusConfig>(client).await?;
    check::<SpiderInterfaceTask>(client).await?;
    check::<NetworkAttachmentDefinition>(client).await?;
    info!("every CRD the controllers need is installed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Args;

    /// clap checks its definitions (unique ids, valid defaults) only when asked or at first parse.
    #[test]
    fn command_line_definition_is_valid() {
        Args::command().debug_assert();
    }
}
