//! `spiderpool-agent`: the node daemon. Serves the IPAM API on a unix socket, health and metrics on TCP.
//! Every flag also reads an environment variable (upstream's names where upstream has one).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use spiderpool_node_daemon::ahead::ReserveAhead;
use spiderpool_node_daemon::allocator::Allocator;
use spiderpool_node_daemon::api::ClusterApi;
use spiderpool_node_daemon::api::deadline::Deadline;
use spiderpool_node_daemon::api::kube::KubeApi;
use spiderpool_node_daemon::config::{Config, LeaseTuning};
use spiderpool_node_daemon::coordinator::{self, Coordinators};
use spiderpool_node_daemon::health::Health;
use spiderpool_node_daemon::metrics::Metrics;
use spiderpool_node_daemon::server::{self, AppState};
use spiderpool_node_daemon::settings;
use spiderpool_node_daemon::socket;
use spiderpool_node_daemon::store::Stores;
use spiderpool_node_daemon::sysctl;
use spiderpool_node_daemon::writer::PoolWriters;

#[derive(Parser, Debug)]
#[command(
    name = "spiderpool-agent",
    version,
    about = "Spiderpool node daemon: IPAM for the spiderpool CNI plugin"
)]
struct Args {
    /// This node's name.
    #[arg(long, env = "SPIDERPOOL_NODE_NAME")]
    node_name: String,
    /// The daemon's namespace (`multusName` entries without a namespace refer to it).
    #[arg(long, env = "SPIDERPOOL_POD_NAMESPACE", default_value = "kube-system")]
    namespace: String,
    /// Unix socket of the IPAM API (mode 0600, root only). The agent locks `<socket>.lock` so that it
    /// is the only agent of its node.
    #[arg(long, env = "SPIDERPOOL_IPAM_UNIX_SOCKET_PATH", default_value = spiderpool_agent_api::DEFAULT_SOCKET_PATH)]
    socket_path: PathBuf,
    /// How long to wait for another agent holding the socket's lock to exit before refusing to start,
    /// in seconds.
    #[arg(long, env = "SPIDERPOOL_LOCK_WAIT_SECONDS", default_value_t = 10)]
    lock_wait_seconds: u64,
    /// Health probes (`/v1/runtime/*`) and metrics (`/metrics`) listen here; `off` disables.
    #[arg(long, env = "SPIDERPOOL_HEALTH_ADDRESS", default_value = "0.0.0.0:5710")]
    health_address: String,
    /// Multus cluster network `<namespace>/<name>` (for pools whose `multusName` must match eth0).
    #[arg(long, env = "MULTUS_CLUSTER_NETWORK")]
    cluster_network: Option<String>,
    /// Allocate IPv4 addresses.
    #[arg(long, env = "SPIDERPOOL_ENABLE_IPV4", default_value_t = true, action = clap::ArgAction::Set)]
    enable_ipv4: bool,
    /// Allocate IPv6 addresses.
    #[arg(long, env = "SPIDERPOOL_ENABLE_IPV6", default_value_t = true, action = clap::ArgAction::Set)]
    enable_ipv6: bool,
    /// StatefulSet pods keep their addresses across restarts.
    #[arg(long, env = "SPIDERPOOL_ENABLE_STATEFULSET", default_value_t = true, action = clap::ArgAction::Set)]
    enable_statefulset: bool,
    /// KubeVirt VMs keep their addresses across restarts and migration.
    #[arg(long, env = "SPIDERPOOL_ENABLE_KUBEVIRT_STATIC_IP", default_value_t = true, action = clap::ArgAction::Set)]
    enable_kubevirt_static_ip: bool,
    /// SpiderSubnet automatic pools.
    #[arg(long, env = "SPIDERPOOL_ENABLE_AUTO_POOL", default_value_t = true, action = clap::ArgAction::Set)]
    enable_auto_pool: bool,
    /// Ask the plugin to detect IP conflicts.
    #[arg(long, env = "SPIDERPOOL_ENABLE_IP_CONFLICT_DETECTION", default_value_t = false, action = clap::ArgAction::Set)]
    enable_ip_conflict_detection: bool,
    /// Ask the plugin to check the gateway is reachable.
    #[arg(long, env = "SPIDERPOOL_ENABLE_GATEWAY_DETECTION", default_value_t = false, action = clap::ArgAction::Set)]
    enable_gateway_detection: bool,
    /// Most addresses one pool may hold (upstream: 5000).
    #[arg(long, env = "SPIDERPOOL_IPPOOL_MAX_ALLOCATED_IPS", default_value_t = 5000)]
    max_allocated_ips: usize,
    /// Most unused addresses this node reserves in one shared pool while it is starting pods, so that
    /// its ADDs need no pool write each (node-daemon/README.md, "Concurrency design"); 0 turns
    /// reservations off.
    #[arg(long, env = "SPIDERPOOL_NODE_RESERVATION_SIZE", default_value_t = 128)]
    node_reservation_size: usize,
    /// Record addresses handed out from reservations once none was handed out for this long (ms;
    /// each node takes 0.75 to 1.25 times it, by its name, so that nodes do not write at once).
    #[arg(
        long,
        env = "SPIDERPOOL_NODE_RESERVATION_FLUSH_IDLE_MS",
        default_value_t = 200,
        hide = true
    )]
    node_reservation_flush_idle_ms: u64,
    /// …or once the oldest has waited this long (ms).
    #[arg(
        long,
        env = "SPIDERPOOL_NODE_RESERVATION_FLUSH_MAX_AGE_MS",
        default_value_t = 2000,
        hide = true
    )]
    node_reservation_flush_max_age_ms: u64,
    /// The reservation size and both flush times count once more for every this many records a
    /// pool holds, up to 16 times, so a big pool is written less often (node-daemon/README.md,
    /// "Scale"); 0 keeps them fixed.
    #[arg(
        long,
        env = "SPIDERPOOL_NODE_RESERVATION_RECORDS_PER_STEP",
        default_value_t = 1000,
        hide = true
    )]
    node_reservation_records_per_step: usize,
    /// How long an address released by a pod cools down before it is handed out again, in
    /// milliseconds (the old sandbox may still answer ARP for it); a pool's annotation
    /// `spiderpool.spidernet.io/release-cooldown-seconds` overrides it. Allocations that find only
    /// cooling addresses wait for them, so an exactly full pool still serves.
    #[arg(long, env = "SPIDERPOOL_RELEASE_COOLDOWN_MS", default_value_t = 5000)]
    release_cooldown_ms: u64,
    /// Reserve addresses for the pods bound to this node as soon as they are bound, in the pools
    /// their ADDs will ask (guessed from their annotations, namespace and NetworkAttachmentDefinition),
    /// instead of on their first ADD (node-daemon/README.md, "Reserving ahead").
    #[arg(long, env = "SPIDERPOOL_RESERVE_AHEAD", default_value_t = true, action = clap::ArgAction::Set)]
    reserve_ahead: bool,
    /// Deadline of one call to the API server, in seconds (kube's client has none of its own). A pool
    /// writer whose call or decision takes three times this long is stuck, and liveness fails.
    #[arg(long, env = "SPIDERPOOL_API_TIMEOUT_SECONDS", default_value_t = 10)]
    api_timeout_seconds: u64,
    /// Deadline of one ADD or DEL, in seconds.
    #[arg(long, env = "SPIDERPOOL_REQUEST_TIMEOUT_SECONDS", default_value_t = 60)]
    request_timeout_seconds: u64,
    /// How long an ADD waits for a SpiderSubnet automatic pool, in seconds (upstream: 2 s x 25).
    #[arg(long, env = "SPIDERPOOL_WAIT_SUBNET_POOL_SECONDS", default_value_t = 50)]
    wait_subnet_pool_seconds: u64,
    /// Carry out this node's SpiderInterfaceTasks (bonds, VLANs) with checkpoint, probe and rollback.
    #[arg(long, env = "SPIDERPOOL_INTERFACE_TASKS", default_value_t = true, action = clap::ArgAction::Set)]
    interface_tasks: bool,
    /// Where the interface executor keeps what it created and its checkpoints (must survive restarts
    /// of the agent: a host path).
    #[arg(
        long,
        env = "SPIDERPOOL_INTERFACE_STATE_DIR",
        default_value = "/var/lib/spiderpool/interfaces"
    )]
    interface_state_dir: PathBuf,
    /// How often the interface tasks are checked against the node without a change, in seconds.
    #[arg(long, env = "SPIDERPOOL_INTERFACE_RESYNC_SECONDS", default_value_t = 60)]
    interface_resync_seconds: u64,
    /// Worker threads of the runtime.
    #[arg(long, env = "SPIDERPOOL_WORKER_THREADS", default_value_t = 2)]
    worker_threads: usize,
    /// Tune the node's sysctls at start (neighbour table size, arp_notify, forwarding, rp_filter;
    /// upstream's `tuneSysctlConfig`), each logged.
    #[arg(long, env = "SPIDERPOOL_TUNE_SYSCTL_CONFIG", default_value_t = true, action = clap::ArgAction::Set)]
    tune_sysctl_config: bool,
    /// What the chart passes: the spiderpool-conf ConfigMap and upstream's environment.
    #[command(flatten)]
    chart: settings::ChartArgs,
}

fn main() -> anyhow::Result<()> {
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    spiderpool_telemetry::init("spiderpool-agent");
    apply_configmap(&mut args, &matches)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads.max(1))
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

/// Fills what no flag set from the spiderpool-conf ConfigMap (see `settings`).
fn apply_configmap(args: &mut Args, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    let conf = settings::load_conf(args.chart.config_path.as_deref())?;
    for ignored in conf.ignored_keys() {
        tracing::warn!("spiderpool-conf: {ignored}");
    }
    let socket = conf.ipam_unix_socket_path.clone().map(PathBuf::from);
    args.socket_path = settings::pick(matches, "socket_path", args.socket_path.clone(), socket);
    args.enable_ipv4 = settings::pick(matches, "enable_ipv4", args.enable_ipv4, conf.enable_ipv4);
    args.enable_ipv6 = settings::pick(matches, "enable_ipv6", args.enable_ipv6, conf.enable_ipv6);
    args.enable_statefulset = settings::pick(
        matches,
        "enable_statefulset",
        args.enable_statefulset,
        conf.enable_stateful_set,
    );
    args.enable_kubevirt_static_ip = settings::pick(
        matches,
        "enable_kubevirt_static_ip",
        args.enable_kubevirt_static_ip,
        conf.enable_kubevirt_static_ip,
    );
    let auto_pool = match (conf.enable_spider_subnet, conf.enable_auto_pool_for_application) {
        (Some(false), _) => Some(false),
        (_, auto) => auto,
    };
    args.enable_auto_pool = settings::pick(matches, "enable_auto_pool", args.enable_auto_pool, auto_pool);
    args.enable_ip_conflict_detection = settings::pick(
        matches,
        "enable_ip_conflict_detection",
        args.enable_ip_conflict_detection,
        conf.enable_ip_conflict_detection,
    );
    args.enable_gateway_detection = settings::pick(
        matches,
        "enable_gateway_detection",
        args.enable_gateway_detection,
        conf.enable_gateway_detection,
    );
    args.tune_sysctl_config = settings::pick(
        matches,
        "tune_sysctl_config",
        args.tune_sysctl_config,
        conf.tune_sysctl_config,
    );
    args.health_address = settings::health_address(
        matches,
        "health_address",
        args.health_address.clone(),
        args.chart.health_port,
    );
    Ok(())
}

/// The longest any duration flag is taken to be, in seconds: flags are bounded so that no value of
/// theirs can overflow a deadline.
const DAY: u64 = 86_400;

async fn run(args: Args) -> anyhow::Result<()> {
    // First of all: be the only agent of this node.
    let lock = socket::lock(
        &args.socket_path,
        &args.node_name,
        Duration::from_secs(args.lock_wait_seconds.min(3600)),
    )
    .await?;
    if args.tune_sysctl_config {
        sysctl::tune_node(args.enable_ipv4, args.enable_ipv6).context("tuning the node's sysctls")?;
    }
    let api_timeout = Duration::from_secs(args.api_timeout_seconds.clamp(1, 3600));
    let (client, watch_client) = clients(api_timeout).await?;
    let metrics = Metrics::new();
    let health = Health::new(api_timeout * 3);
    if args.chart.enable_metrics {
        let address = SocketAddr::from(([0, 0, 0, 0], args.chart.metrics_port));
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the metrics address {address}"))?;
        tracing::info!(%address, "serving metrics");
        let router = settings::metrics_router(metrics.clone());
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown_signal())
                .await
        });
    }
    let stores = Stores::start(&watch_client, &args.node_name);
    let config = Config {
        node_name: args.node_name.clone(),
        namespace: args.namespace.clone(),
        cluster_network: args.cluster_network.clone(),
        enable_ipv4: args.enable_ipv4,
        enable_ipv6: args.enable_ipv6,
        enable_statefulset: args.enable_statefulset,
        enable_kubevirt: args.enable_kubevirt_static_ip,
        enable_auto_pools: args.enable_auto_pool,
        enable_ip_conflict_detection: args.enable_ip_conflict_detection,
        enable_gateway_detection: args.enable_gateway_detection,
        max_allocated_ips: args.max_allocated_ips,
        lease: LeaseTuning {
            max_size: args.node_reservation_size,
            flush_idle: Duration::from_millis(args.node_reservation_flush_idle_ms.min(DAY * 1000)),
            flush_max_age: Duration::from_millis(args.node_reservation_flush_max_age_ms.min(DAY * 1000)),
            release_cooldown: Duration::from_millis(args.release_cooldown_ms.min(300_000)),
            records_per_step: args.node_reservation_records_per_step,
            ..LeaseTuning::default()
        }
        .for_node(&args.node_name),
        request_timeout: Duration::from_secs(args.request_timeout_seconds.min(DAY)),
        auto_pool_wait: Duration::from_secs(args.wait_subnet_pool_seconds.min(DAY)),
    };
    let api: Arc<dyn ClusterApi> = Arc::new(Deadline::new(
        Arc::new(KubeApi::new(client.clone())),
        api_timeout,
        health.clone(),
    ));
    let writers = PoolWriters::new(
        api.clone(),
        &config,
        stores.clone(),
        metrics.clone(),
        health.clone(),
    );
    let allocator = Allocator::new(
        api.clone(),
        config.clone(),
        stores.clone(),
        writers.clone(),
        metrics,
    );
    let state = AppState {
        allocator,
        health: health.clone(),
    };

    let (listener, socket_file) = socket::bind(&args.socket_path, &lock, state.allocator.metrics().clone())?;
    tracing::info!(socket = %args.socket_path.display(), node = args.node_name, "serving the IPAM API");
    let coordinators = Coordinators::start(&watch_client, stores.pods.clone());
    let router = server::ipam_router(state.clone()).merge(coordinator::router(coordinators));
    let ipam = axum::serve(listener, router).with_graceful_shutdown(shutdown_signal());
    let ipam = tokio::spawn(async move { ipam.await });

    if args.health_address != "off" {
        let address: SocketAddr = args
            .health_address
            .parse()
            .with_context(|| format!("--health-address {}: not an address:port", args.health_address))?;
        let admin = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the health address {address}"))?;
        tracing::info!(address = %admin.local_addr().unwrap_or(address), "serving health and metrics");
        let router = server::admin_router(state.clone());
        tokio::spawn(async move {
            axum::serve(admin, router)
                .with_graceful_shutdown(shutdown_signal())
                .await
        });
    }

    stores.wait_ready().await.context("waiting for the caches")?;
    warm_connections(&client).await;
    writers.recover_reservations();
    if args.reserve_ahead && args.node_reservation_size > 0 {
        tokio::spawn(ReserveAhead::new(api, config, stores.clone(), writers).run());
    }
    if args.interface_tasks {
        start_interface_tasks(&watch_client, &args)?;
    }
    health.set_started();
    tracing::info!("caches synced; ready");

    let served = ipam.await;
    socket_file.remove_if_ours();
    drop(lock);
    served
        .context("the IPAM server task")?
        .context("serving the IPAM API")?;
    tracing::info!("stopped");
    Ok(())
}

/// The client for API calls (each read bounded by `api_timeout`, besides the deadline every call gets
/// from [`Deadline`]) and the client for the watches, whose reads may wait for the API server's
/// watch timeout (290 s by default, ended by the server) but not forever (a list that never
/// answers, a connection blackholed before the watch began).
async fn clients(api_timeout: Duration) -> anyhow::Result<(kube::Client, kube::Client)> {
    let config = kube::Config::infer()
        .await
        .context("connecting to the API server (in-cluster config or KUBECONFIG)")?;
    let mut calls = config.clone();
    calls.read_timeout = Some(api_timeout);
    calls.reset_reader_on_write = true;
    let mut watches = config;
    watches.read_timeout = Some(Duration::from_secs(330));
    watches.reset_reader_on_write = true;
    Ok((
        kube::Client::try_from(calls).context("building the API client")?,
        kube::Client::try_from(watches).context("building the watch client")?,
    ))
}

/// Starts the loop carrying out this node's SpiderInterfaceTasks (`interfaces::agent`).
fn start_interface_tasks(client: &kube::Client, args: &Args) -> anyhow::Result<()> {
    use spiderpool_node_daemon::interfaces::{agent, executor, netlink_host, state};
    let handle = spiderpool_netlink::Handle::connect().context("opening a netlink socket")?;
    let dir = state::StateDir::open(&args.interface_state_dir)
        .with_context(|| format!("--interface-state-dir {}", args.interface_state_dir.display()))?;
    let executor = executor::Executor::new(netlink_host::NetlinkHost::new(handle), dir)?;
    let resync = Duration::from_secs(args.interface_resync_seconds.max(1));
    let agent = agent::InterfaceAgent::new(client.clone(), &args.node_name, executor, resync);
    tokio::spawn(async move {
        if let Err(e) = agent.run().await {
            tracing::error!(error = %e, "the interface task loop stopped");
        }
    });
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

/// Connections the client opens to the API server before the first ADD.
const WARM_CONNECTIONS: usize = 4;

/// Opens a few connections to the API server and leaves them idle in the client's pool. The client
/// speaks HTTP/1.1, one request per connection at a time, and the watches hold theirs, so without this
/// the first ADDs each pay a TLS handshake, and when every node starts pods at once those handshakes
/// pile up on the API server (in the IPAM bench a node's first endpoint write took up to 90 ms where
/// later ones took under 20). Failure only costs that time later, so it is not waited for long.
async fn warm_connections(client: &kube::Client) {
    let requests = (0..WARM_CONNECTIONS).map(|_| client.apiserver_version());
    match tokio::time::timeout(Duration::from_secs(2), futures::future::join_all(requests)).await {
        Ok(results) => {
            for e in results.into_iter().filter_map(Result::err) {
                tracing::debug!(error = %e, "warming a connection to the API server failed");
            }
        }
        Err(_) => tracing::debug!("warming connections to the API server took over 2 s; going on"),
    }
}
