//! A real Kubernetes control plane on loopback: etcd + kube-apiserver (+ kube-controller-manager and
//! kube-scheduler), each in its own process group, in one temp dir.
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

/// The Service CIDR of every test cluster.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
const SERVICE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1));

/// The minimal NetworkAttachmentDefinition CRD (k8s.cni.cncf.io/v1); Multus owns the real one.
pub const NAD_CRD_YAML: &str = include_str!("../manifests/network-attachment-definition-crd.yaml");

/// How the API server authorizes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    /// `--authorization-mode=RBAC`, like real clusters (the admin is in `system:masters`).
    Rbac,
    /// `--authorization-mode=AlwaysAllow`.
    AlwaysAllow,
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

/// One child process of the control plane, leader of its own process group.
#[derive(Debug)]
struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
    stopped: bool,
    _registration: Registration,
}

impl Component {
    fn spawn(name: &'static str, program: &Path, args: &[String], log_dir: &Path) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
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
        let certs = certs::write(&dir_path.join("pki"), SERVICE_IP)?;
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

    /// Path of the admin kubeconfig (usable with kubectl).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// `https://127.0.0.1:<port>`.
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
    let ports = util::free_ports(3)?;
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
    };
    let mut api_args = vec![
        format!("--etcd-servers={etcd_url}"),
        format!("--secure-port={api_port}"),
        "--bind-address=127.0.0.1".to_owned(),
        "--advertise-address=127.0.0.1".to_owned(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        format!("--authorization-mode={authorization}"),
        format!("--client-ca-file={}", certs.ca_cert.display()),
        format!("--tls-cert-file={}", certs.server_cert.display()),
        format!("--tls-private-key-file={}", certs.server_key.display()),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
        format!("--service-account-key-file={}", certs.sa_pub.display()),
        format!("--service-account-signing-key-file={}", certs.sa_key.display()),
        format!("--cert-dir={}", dir.join("apiserver-certs").display()),
        "--allow-privileged=true".to_owned(),
        "--profiling=false".to_owned(),
        // The `kubernetes` Service can't have endpoints on a loopback address (the API server would
        // log a validation error every 10 s); nothing in the tests runs in a pod network anyway.
        "--endpoint-reconciler-type=none".to_owned(),
    ];
    api_args.extend(options.apiserver_args.iter().cloned());
    components.push(Component::spawn(
        "kube-apiserver",
        &bins.kube_apiserver,
        &api_args,
        &logs,
    )?);

    let apiserver_url = format!("https://127.0.0.1:{api_port}");
    let kubeconfig = admin_kubeconfig(&apiserver_url, certs);
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
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
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

fn admin_kubeconfig(server: &str, certs: &CertFiles) -> Kubeconfig {
    let path = |p: &Path| Some(p.display().to_string());
    Kubeconfig {
        clusters: vec![NamedCluster {
            name: "spiderpool-test".to_owned(),
            cluster: Some(Cluster {
                server: Some(server.to_owned()),
                certificate_authority: path(&certs.ca_cert),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "admin".to_owned(),
            auth_info: Some(AuthInfo {
                client_certificate: path(&certs.admin_cert),
                client_key: path(&certs.admin_key),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: "spiderpool-test".to_owned(),
            context: Some(Context {
                cluster: "spiderpool-test".to_owned(),
                user: Some("admin".to_owned()),
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
