//! A real Kubernetes control plane on loopback: etcd + kube-apiserver (+ kube-controller-manager and
//! kube-scheduler), each in its own process group, in one temp dir. The real-node tier puts the API
//! server on an address of a link it creates instead ([`ClusterOptions::address`]), so that kubelets
//! in other network namespaces reach it.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use spiderpool_tests::TestCluster;
//! let cluster = TestCluster::shared().await?; // one per test binary
//! let ns = cluster.namespace("my-test").await?; // one per test
//! let client = cluster.client()?;
//! # let _ = (ns, client); Ok(()) }
//! ```
//!
//! Layout of the temp dir (under `/dev/shm` when it exists, so etcd's fsyncs cost nothing; override
//! with `SPIDERPOOL_TEST_TMPDIR`): `pki/` (CA, serving, admin and service-account keys),
//! `admin.kubeconfig`, `etcd/` (data), `logs/<component>.log`. Set `SPIDERPOOL_TEST_KEEP=1` to keep
//! it after the cluster stops (the processes still stop).
//!
//! Teardown: dropping a [`TestCluster`] (also while a test panics) kills every process group with
//! SIGKILL, reaps the processes and removes the temp dir. If the test process dies without running
//! destructors, or the cluster lives in a static ([`TestCluster::shared`]), the [`crate::watchdog`]
//! does the same once the process is gone.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use kube::{Api, Client, Config};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::de::DeserializeOwned;
use std::os::unix::process::CommandExt;

use crate::certs::{self, CertFiles};
use crate::tools::{self, Binaries};
use crate::util;
use crate::watchdog::{self, Registration, Resource};

/// The Service CIDR of every test cluster (unless [`ClusterOptions::service_cidr`] says otherwise).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// The minimal NetworkAttachmentDefinition CRD (k8s.cni.cncf.io/v1); Multus owns the real one.
pub const NAD_CRD_YAML: &str = include_str!("../manifests/network-attachment-definition-crd.yaml");

/// How the API server authorizes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    /// `--authorization-mode=RBAC`, like real clusters (the admin is in `system:masters`).
    Rbac,
    /// `--authorization-mode=AlwaysAllow`.
    AlwaysAllow,
    /// `--authorization-mode=Node,RBAC` and the `NodeRestriction` admission plugin, like a cluster
    /// with real kubelets (each authenticated as `system:node:<name>`).
    NodeRbac,
}

/// What to start and how.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Start kube-controller-manager (Deployments, ReplicaSets, garbage collection, node lifecycle,
    /// service accounts, ...).
    pub controller_manager: bool,
    /// Start kube-scheduler.
    pub scheduler: bool,
    pub authorization: Authorization,
    /// Install the NetworkAttachmentDefinition CRD ([`NAD_CRD_YAML`]) and wait until it is established.
    pub install_nad_crd: bool,
    /// Extra kube-apiserver flags (appended; later flags win).
    pub apiserver_args: Vec<String>,
    /// Extra kube-controller-manager flags.
    pub controller_manager_args: Vec<String>,
    /// How long to wait for `/readyz`.
    pub ready_timeout: Duration,
    /// The address the API server listens on and advertises (the `kubernetes` Service's endpoint
    /// unless it is loopback, which a Service cannot point to).
    pub address: IpAddr,
    /// `--service-cluster-ip-range` of the API server and controller-manager; the serving
    /// certificate names its first address (the `kubernetes` Service's ClusterIP).
    pub service_cidr: ipnet::Ipv4Net,
}

impl Default for ClusterOptions {
    /// The whole control plane: etcd, API server, controller-manager and scheduler, RBAC, NAD CRD.
    fn default() -> Self {
        ClusterOptions {
            controller_manager: true,
            scheduler: true,
            authorization: Authorization::Rbac,
            install_nad_crd: true,
            apiserver_args: Vec::new(),
            controller_manager_args: Vec::new(),
            ready_timeout: Duration::from_secs(90),
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            service_cidr: ipnet::Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 16).unwrap_or_default(),
        }
    }
}

impl ClusterOptions {
    /// etcd + kube-apiserver only (plus the NAD CRD): enough for API-level tests.
    pub fn apiserver_only() -> Self {
        ClusterOptions {
            controller_manager: false,
            scheduler: false,
            ..Self::default()
        }
    }
}

/// One child process of the control plane, leader of its own process group. It keeps its command
/// line so that it can be started again ([`TestCluster::restart`]).
#[derive(Debug)]
struct Component {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    child: Child,
    log: PathBuf,
    stopped: bool,
    _registration: Registration,
}

impl Component {
    fn spawn(name: &'static str, program: &Path, args: &[String], log_dir: &Path) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        // Appended to, so that a restarted component's log follows its predecessor's.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let file2 = file.try_clone().context("duplicating a log file handle")?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let registration = watchdog::register(Resource::ProcessGroup(child.id()));
        tracing::debug!(name, pid = child.id(), log = %log.display(), "started");
        Ok(Component {
            name,
            program: program.to_path_buf(),
            args: args.to_vec(),
            child,
            log,
            stopped: false,
            _registration: registration,
        })
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn failure(&mut self) -> Option<anyhow::Error> {
        let status = self.exited()?;
        Some(anyhow!(
            "{} exited during startup ({status}); last lines of {}:\n{}",
            self.name,
            self.log.display(),
            util::tail(&self.log, 25)
        ))
    }

    fn log_mentions(&self, needle: &str) -> bool {
        std::fs::read(&self.log).is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(needle))
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if let Ok(pgid) = i32::try_from(self.child.id())
            && let Err(err) = killpg(Pid::from_raw(pgid), Signal::SIGKILL)
            && err != nix::errno::Errno::ESRCH
        {
            tracing::warn!(name = self.name, %err, "cannot kill process group");
        }
        if let Err(err) = self.child.wait() {
            tracing::warn!(name = self.name, %err, "cannot reap");
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running control plane. See the [module docs](self).
pub struct TestCluster {
    /// In start order; stopped in reverse.
    components: Vec<Component>,
    config: Config,
    kubeconfig_path: PathBuf,
    apiserver_url: String,
    options: ClusterOptions,
    startup: Duration,
    ca: certs::Ca,
    ca_cert: PathBuf,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    _dir_registration: Option<Registration>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("apiserver_url", &self.apiserver_url)
            .field("dir", &self.dir_path)
            .field(
                "components",
                &self
                    .components
                    .iter()
                    .map(|c| (c.name, c.child.id()))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

pub(crate) fn temp_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("SPIDERPOOL_TEST_TMPDIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && tempfile::tempfile_in(shm).is_ok() {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

/// What a failed start attempt tells the retry loop.
struct AttemptError {
    error: anyhow::Error,
    port_clash: bool,
}

impl<E: Into<anyhow::Error>> From<E> for AttemptError {
    fn from(error: E) -> Self {
        AttemptError {
            error: error.into(),
            port_clash: false,
        }
    }
}

struct Started {
    components: Vec<Component>,
    config: Config,
    kubeconfig_path: PathBuf,
    apiserver_url: String,
}

impl TestCluster {
    /// Starts a control plane and waits until it is ready (`/readyz`, and the NAD CRD established
    /// when asked for). Fails, never skips, when a binary is missing.
    pub async fn start(options: ClusterOptions) -> Result<Self> {
        let t0 = Instant::now();
        let bins = tokio::task::spawn_blocking(tools::binaries)
            .await
            .context("binary lookup panicked")??;
        let dir = tempfile::Builder::new()
            .prefix("spiderpool-cluster-")
            .tempdir_in(temp_root())
            .context("creating the cluster temp dir")?;
        // With SPIDERPOOL_TEST_KEEP the dir outlives the cluster, so the watchdog must not remove it.
        let keep = std::env::var_os("SPIDERPOOL_TEST_KEEP").is_some();
        let dir_registration = if keep {
            None
        } else {
            Some(watchdog::register_dir(dir.path()))
        };
        let dir_path = dir.path().to_path_buf();
        let service_ip = options
            .service_cidr
            .hosts()
            .next()
            .ok_or_else(|| anyhow!("service CIDR {} has no address", options.service_cidr))?;
        let (certs, ca) = certs::write(&dir_path.join("pki"), service_ip.into(), options.address)?;
        std::fs::create_dir_all(dir_path.join("logs")).context("creating the log dir")?;

        let mut attempt = 0;
        let started = loop {
            attempt += 1;
            match start_attempt(&bins, &dir_path, &certs, &options).await {
                Ok(started) => break started,
                Err(AttemptError {
                    error,
                    port_clash: true,
                }) if attempt < 3 => {
                    tracing::warn!(%error, attempt, "port clash while starting the control plane; retrying");
                }
                Err(AttemptError { error, .. }) => return Err(error),
            }
        };
        let startup = t0.elapsed();
        tracing::info!(
            url = %started.apiserver_url,
            dir = %dir_path.display(),
            startup_ms = startup.as_millis() as u64,
            "test cluster ready"
        );
        Ok(TestCluster {
            components: started.components,
            config: started.config,
            kubeconfig_path: started.kubeconfig_path,
            apiserver_url: started.apiserver_url,
            options,
            startup,
            ca,
            ca_cert: certs.ca_cert.clone(),
            dir: Some(dir),
            dir_path,
            _dir_registration: dir_registration,
        })
    }

    /// The control plane shared by every test of this test binary ([`ClusterOptions::default`]:
    /// all components). Started by the first caller; never stopped by a destructor (statics aren't
    /// dropped), so the [`crate::watchdog`] removes it after the process exits. Give each test its
    /// own namespace with [`TestCluster::namespace`]. If starting fails, the next caller retries.
    pub async fn shared() -> Result<&'static TestCluster> {
        static SHARED: tokio::sync::OnceCell<TestCluster> = tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_try_init(|| TestCluster::start(ClusterOptions::default()))
            .await
    }

    /// A new client for the calling tokio runtime (a `kube::Client` is bound to the runtime that
    /// created it, and every `#[tokio::test]` has its own). Authenticates as the cluster admin.
    pub fn client(&self) -> Result<Client> {
        Client::try_from(self.config.clone()).context("creating a Kubernetes client")
    }

    /// The client configuration (admin credentials).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Creates a namespace `<prefix>-<random>` for one test (and its `default` ServiceAccount, so
    /// pods can be admitted without waiting for the controller-manager).
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        let client = self.client()?;
        let mut prefix: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(50)
            .collect();
        prefix = prefix.trim_matches('-').to_owned();
        if prefix.is_empty() {
            prefix = "test".to_owned();
        }
        let name = format!("{prefix}-{}", util::unique_hex(6));
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("spiderpool.test/namespace".to_owned(), "true".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("default".to_owned()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        match accounts.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(err) => return Err(err).context("creating the default ServiceAccount"),
        }
        Ok(TestNamespace { name, client })
    }

    /// A token of ServiceAccount `namespace/name`; see [`request_token`].
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        pod: Option<(&str, &str)>,
    ) -> Result<String> {
        request_token(&self.client()?, namespace, name, pod).await
    }

    /// A client that authenticates as ServiceAccount `namespace/name` (a token from
    /// [`TestCluster::service_account_token`]), so a test runs with exactly that account's RBAC.
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> Result<Client> {
        let token = self.service_account_token(namespace, name, None).await?;
        let mut config = self.config.clone();
        config.auth_info = AuthInfo {
            token: Some(token.into()),
            ..AuthInfo::default()
        };
        Client::try_from(config).context("creating a ServiceAccount client")
    }

    /// The API server's address (`127.0.0.1:<port>`).
    pub fn apiserver_address(&self) -> Result<std::net::SocketAddr> {
        self.apiserver_url
            .trim_start_matches("https://")
            .parse()
            .with_context(|| format!("parsing {}", self.apiserver_url))
    }

    /// Path of the admin kubeconfig (usable with kubectl).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The cluster CA's certificate (PEM): what clients verify the API server with, and what
    /// kubelets verify client certificates with.
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert
    }

    /// Writes `<name>.kubeconfig` into the cluster dir for a new client certificate of user
    /// `common_name` in the groups `organizations` (a kubelet's `system:node:<node>` in
    /// `system:nodes`, `system:kube-proxy`, ...), and returns its path.
    pub fn user_kubeconfig(&self, name: &str, common_name: &str, organizations: &[&str]) -> Result<PathBuf> {
        let (cert, key) = self.ca.client_cert(name, common_name, organizations)?;
        let kubeconfig = kubeconfig(&self.apiserver_url, &self.ca_cert, &cert, &key, name);
        let path = self.dir_path.join(format!("{name}.kubeconfig"));
        let yaml = serde_saphyr::to_string(&kubeconfig).context("serializing a kubeconfig")?;
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// `https://<address>:<port>`.
    pub fn apiserver_url(&self) -> &str {
        &self.apiserver_url
    }

    /// The temp dir holding certificates, data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// The log file of a component (`etcd`, `kube-apiserver`, `kube-controller-manager`,
    /// `kube-scheduler`).
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.dir_path.join("logs").join(format!("{component}.log"))
    }

    /// Process ids of the running components, with their names.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.components.iter().map(|c| (c.name, c.child.id())).collect()
    }

    /// Wall time from [`TestCluster::start`] to ready.
    pub fn startup_duration(&self) -> Duration {
        self.startup
    }

    /// The options the cluster was started with.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// Sends `signal` to the process group of `component` (`etcd`, `kube-apiserver`, ...): the fault
    /// layer's SIGSTOP/SIGCONT and crashes.
    pub fn signal(&self, component: &str, signal: Signal) -> Result<()> {
        let c = self.component(component)?;
        let pgid = i32::try_from(c.child.id()).context("pid out of range")?;
        killpg(Pid::from_raw(pgid), signal).with_context(|| format!("sending {signal} to {component}"))?;
        Ok(())
    }

    /// Stops `component` with `signal` (SIGKILL: a crash; SIGTERM: a graceful stop, SIGKILL after
    /// 10 s), reaps it, and starts it again with the same command line (same ports, same data
    /// directory; its log is appended to). Does not wait until it is ready.
    pub fn restart(&mut self, component: &str, signal: Signal) -> Result<()> {
        let index = self
            .components
            .iter()
            .position(|c| c.name == component)
            .ok_or_else(|| anyhow!("no component {component}"))?;
        let old = &mut self.components[index];
        let pgid = Pid::from_raw(i32::try_from(old.child.id()).context("pid out of range")?);
        // A stopped process group would never act on SIGTERM.
        let _ = killpg(pgid, Signal::SIGCONT);
        let _ = killpg(pgid, signal);
        let deadline = Instant::now() + Duration::from_secs(10);
        while old.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        old.stop();
        let (name, program, args) = (old.name, old.program.clone(), old.args.clone());
        let log_dir = self.dir_path.join("logs");
        self.components[index] = Component::spawn(name, &program, &args, &log_dir)?;
        Ok(())
    }

    /// Whether `component` has exited (and was not restarted since).
    pub fn component_exited(&mut self, component: &str) -> Result<Option<ExitStatus>> {
        Ok(self
            .components
            .iter_mut()
            .find(|c| c.name == component)
            .ok_or_else(|| anyhow!("no component {component}"))?
            .exited())
    }

    /// etcd's client URL (`http://127.0.0.1:<port>`).
    pub fn etcd_url(&self) -> Result<String> {
        let c = self.component("etcd")?;
        c.args
            .iter()
            .find_map(|a| a.strip_prefix("--advertise-client-urls="))
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("etcd has no --advertise-client-urls"))
    }

    fn component(&self, name: &str) -> Result<&Component> {
        self.components
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| anyhow!("no component {name}"))
    }

    /// Stops everything now (same as dropping).
    pub fn stop(self) {}
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in &self.components {
                tracing::error!(
                    component = c.name,
                    "test panicked; last lines of {}:\n{}",
                    c.log.display(),
                    util::tail(&c.log, 15)
                );
            }
        }
        while let Some(mut component) = self.components.pop() {
            component.stop();
        }
        if let Some(dir) = self.dir.take() {
            if self._dir_registration.is_none() {
                let kept = dir.keep();
                tracing::warn!(dir = %kept.display(), "SPIDERPOOL_TEST_KEEP is set: keeping the cluster dir");
            } else if let Err(err) = dir.close() {
                tracing::warn!(%err, dir = %self.dir_path.display(), "cannot remove the cluster dir");
            }
        }
    }
}

async fn start_attempt(
    bins: &Binaries,
    dir: &Path,
    certs: &CertFiles,
    options: &ClusterOptions,
) -> Result<Started, AttemptError> {
    let logs = dir.join("logs");
    let ports = util::free_ports(options.address, 3)?;
    let (etcd_client, etcd_peer, api_port) = (ports[0], ports[1], ports[2]);
    let etcd_data = dir.join("etcd");
    if etcd_data.exists() {
        std::fs::remove_dir_all(&etcd_data).context("clearing the etcd data dir of a failed attempt")?;
    }
    let etcd_url = format!("http://127.0.0.1:{etcd_client}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer}");
    let etcd_args = vec![
        "--name=default".to_owned(),
        format!("--data-dir={}", etcd_data.display()),
        format!("--listen-client-urls={etcd_url}"),
        format!("--advertise-client-urls={etcd_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=default={peer_url}"),
        "--initial-cluster-state=new".to_owned(),
        "--logger=zap".to_owned(),
        "--log-outputs=stderr".to_owned(),
        "--log-level=warn".to_owned(),
    ];
    let mut components = vec![Component::spawn("etcd", &bins.etcd, &etcd_args, &logs)?];

    let authorization = match options.authorization {
        Authorization::Rbac => "RBAC",
        Authorization::AlwaysAllow => "AlwaysAllow",
        Authorization::NodeRbac => "Node,RBAC",
    };
    let address = options.address;
    let mut api_args = vec![
        format!("--etcd-servers={etcd_url}"),
        format!("--secure-port={api_port}"),
        format!("--bind-address={address}"),
        format!("--advertise-address={address}"),
        format!("--service-cluster-ip-range={}", options.service_cidr),
        format!("--authorization-mode={authorization}"),
        format!("--client-ca-file={}", certs.ca_cert.display()),
        format!("--tls-cert-file={}", certs.server_cert.display()),
        format!("--tls-private-key-file={}", certs.server_key.display()),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
        format!("--service-account-key-file={}", certs.sa_pub.display()),
        format!("--service-account-signing-key-file={}", certs.sa_key.display()),
        format!("--cert-dir={}", dir.join("apiserver-certs").display()),
        format!(
            "--kubelet-client-certificate={}",
            certs.kubelet_client_cert.display()
        ),
        format!("--kubelet-client-key={}", certs.kubelet_client_key.display()),
        "--kubelet-preferred-address-types=InternalIP".to_owned(),
        "--allow-privileged=true".to_owned(),
        // `SPIDERPOOL_APISERVER_PROFILING=1` serves /debug/pprof (to profile a benchmark's API server
        // with `go tool pprof`).
        format!(
            "--profiling={}",
            std::env::var("SPIDERPOOL_APISERVER_PROFILING").is_ok_and(|v| v == "1")
        ),
    ];
    if address.is_loopback() {
        // The `kubernetes` Service can't have endpoints on a loopback address (the API server would
        // log a validation error every 10 s); nothing runs in a pod network then anyway.
        api_args.push("--endpoint-reconciler-type=none".to_owned());
    }
    if options.authorization == Authorization::NodeRbac {
        api_args.push("--enable-admission-plugins=NodeRestriction".to_owned());
    }
    api_args.extend(options.apiserver_args.iter().cloned());
    components.push(Component::spawn(
        "kube-apiserver",
        &bins.kube_apiserver,
        &api_args,
        &logs,
    )?);

    let apiserver_url = match address {
        IpAddr::V4(v4) => format!("https://{v4}:{api_port}"),
        IpAddr::V6(v6) => format!("https://[{v6}]:{api_port}"),
    };
    let kubeconfig = kubeconfig(
        &apiserver_url,
        &certs.ca_cert,
        &certs.admin_cert,
        &certs.admin_key,
        "admin",
    );
    let kubeconfig_path = dir.join("admin.kubeconfig");
    let yaml = serde_saphyr::to_string(&kubeconfig).context("serializing the kubeconfig")?;
    std::fs::write(&kubeconfig_path, yaml).context("writing the kubeconfig")?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading the admin kubeconfig")?;
    let client = Client::try_from(config.clone()).context("creating a Kubernetes client")?;

    if let Err(error) = wait_ready(&client, &mut components, options.ready_timeout).await {
        let port_clash = components
            .iter()
            .any(|c| c.log_mentions("address already in use"));
        return Err(AttemptError { error, port_clash });
    }

    let kubeconfig_arg = format!("--kubeconfig={}", kubeconfig_path.display());
    if options.controller_manager {
        let mut args = vec![
            kubeconfig_arg.clone(),
            "--leader-elect=false".to_owned(),
            "--secure-port=0".to_owned(),
            format!("--service-account-private-key-file={}", certs.sa_key.display()),
            format!("--root-ca-file={}", certs.ca_cert.display()),
            format!("--service-cluster-ip-range={}", options.service_cidr),
            "--use-service-account-credentials=false".to_owned(),
            "--controllers=*".to_owned(),
            // Notice Ready/NotReady nodes (and lift the not-ready taint of new nodes) quickly.
            "--node-monitor-period=1s".to_owned(),
        ];
        args.extend(options.controller_manager_args.iter().cloned());
        components.push(Component::spawn(
            "kube-controller-manager",
            &bins.kube_controller_manager,
            &args,
            &logs,
        )?);
    }
    if options.scheduler {
        let args = vec![
            kubeconfig_arg,
            "--leader-elect=false".to_owned(),
            "--secure-port=0".to_owned(),
        ];
        components.push(Component::spawn(
            "kube-scheduler",
            &bins.kube_scheduler,
            &args,
            &logs,
        )?);
    }
    if options.install_nad_crd {
        install_crd_yaml(&client, NAD_CRD_YAML)
            .await
            .context("installing the NetworkAttachmentDefinition CRD")?;
    }
    // A component that crashed right away (bad flag) should fail the start, not a later test.
    tokio::time::sleep(Duration::from_millis(50)).await;
    if let Some(err) = components.iter_mut().find_map(Component::failure) {
        return Err(err.into());
    }
    Ok(Started {
        components,
        config,
        kubeconfig_path,
        apiserver_url,
    })
}

/// A kubeconfig for `server` with a client certificate, named `user`.
fn kubeconfig(server: &str, ca_cert: &Path, cert: &Path, key: &Path, user: &str) -> Kubeconfig {
    let path = |p: &Path| Some(p.display().to_string());
    Kubeconfig {
        clusters: vec![NamedCluster {
            name: "spiderpool-test".to_owned(),
            cluster: Some(Cluster {
                server: Some(server.to_owned()),
                certificate_authority: path(ca_cert),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: user.to_owned(),
            auth_info: Some(AuthInfo {
                client_certificate: path(cert),
                client_key: path(key),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: "spiderpool-test".to_owned(),
            context: Some(Context {
                cluster: "spiderpool-test".to_owned(),
                user: Some(user.to_owned()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some("spiderpool-test".to_owned()),
        api_version: Some("v1".to_owned()),
        kind: Some("Config".to_owned()),
        ..Kubeconfig::default()
    }
}

async fn wait_ready(client: &Client, components: &mut [Component], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(err) = components.iter_mut().find_map(Component::failure) {
            return Err(err);
        }
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .context("building /readyz")?;
        match client.request_text(request).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            _ if Instant::now() >= deadline => {
                let verbose = http::Request::get("/readyz?verbose")
                    .body(Vec::new())
                    .context("building /readyz")?;
                let detail = match client.request_text(verbose).await {
                    Ok(body) => body,
                    Err(err) => err.to_string(),
                };
                let tails: Vec<String> = components
                    .iter()
                    .map(|c| {
                        format!(
                            "--- {} ({}):\n{}",
                            c.name,
                            c.log.display(),
                            util::tail(&c.log, 15)
                        )
                    })
                    .collect();
                bail!(
                    "kube-apiserver not ready after {timeout:?}: {detail}\n{}",
                    tails.join("\n")
                );
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Creates (or leaves alone, if it exists) every CRD in a multi-document YAML string and waits until
/// each is established.
pub async fn install_crd_yaml(client: &Client, yaml: &str) -> Result<Vec<String>> {
    let crds: Vec<CustomResourceDefinition> = parse_yaml_documents(yaml)?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for crd in crds {
        let name = crd
            .metadata
            .name
            .clone()
            .ok_or_else(|| anyhow!("a CRD without metadata.name"))?;
        match api.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(err) => return Err(err).with_context(|| format!("creating CRD {name}")),
        }
        names.push(name);
    }
    for name in &names {
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .with_context(|| format!("CRD {name} not established within 30 s"))?
            .with_context(|| format!("watching CRD {name}"))?;
    }
    Ok(names)
}

/// A token of ServiceAccount `namespace/name` from the TokenRequest API (one hour), bound to `pod`
/// (name, uid) when given, as the kubelet's projected tokens are: the API server then adds the pod's
/// node to the token's user info.
pub async fn request_token(
    client: &Client,
    namespace: &str,
    name: &str,
    pod: Option<(&str, &str)>,
) -> Result<String> {
    use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            bound_object_ref: pod.map(|(pod_name, uid)| BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(pod_name.to_owned()),
                uid: Some(uid.to_owned()),
            }),
        },
        ..TokenRequest::default()
    };
    let issued = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{name}"))?;
    issued
        .status
        .map(|s| s.token)
        .ok_or_else(|| anyhow!("the TokenRequest for {namespace}/{name} returned no token"))
}

/// Parses every non-empty document of a multi-document YAML string.
pub fn parse_yaml_documents<T: DeserializeOwned>(yaml: &str) -> Result<Vec<T>> {
    let values: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).context("parsing YAML")?;
    values
        .into_iter()
        .filter(|v| !v.is_null())
        .map(|v| serde_json::from_value(v).context("decoding a YAML document"))
        .collect()
}

/// A namespace owned by one test (see [`TestCluster::namespace`]).
#[derive(Clone)]
pub struct TestNamespace {
    name: String,
    client: Client,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestNamespace {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// An API handle for a namespaced kind in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Deletes the namespace (without waiting for its contents to go).
    pub async fn delete(self) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        api.delete(&self.name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting {}", self.name))?;
        Ok(())
    }

    /// Deletes the namespace and waits until it is gone (needs kube-controller-manager's namespace
    /// controller), so that cluster-wide controllers of the next test see nothing of it.
    pub async fn delete_and_wait(self, timeout: Duration) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let name = self.name.clone();
        self.delete().await?;
        let deadline = std::time::Instant::now() + timeout;
        while api.get_opt(&name).await?.is_some() {
            if std::time::Instant::now() >= deadline {
                bail!("namespace {name} still exists {timeout:?} after its deletion");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }
}
