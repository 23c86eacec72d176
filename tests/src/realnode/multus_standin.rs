//! The Multus stand-in: a test-only CNI plugin (`multus-standin`, a binary of this crate) that the
//! real containerd of a real node calls as its primary network, and that does Multus v4's part (as
//! a thin plugin) through the harness' Multus emulation ([`crate::multus`]): it reads the pod and its
//! NetworkAttachmentDefinitions, runs the cluster network as `eth0` and every network of the
//! `k8s.v1.cni.cncf.io/networks` annotation as `net1`, `net2`, ... (or the requested name), with
//! Multus' `CNI_ARGS` and capability arguments, writes the `k8s.v1.cni.cncf.io/network-status`
//! annotation and `AddedInterface` events, and returns the cluster network's result.
//!
//! Multus itself cannot be had on these machines (no registry serves its module or image); this
//! stand-in is not Multus, is no part of the chart or the images, and is named as a stand-in
//! wherever it appears. With `SPIDERPOOL_REALNODE_MULTUS_BIN` naming a real Multus thin-plugin
//! binary (built where the internet is reachable), the harness installs that one instead, with the
//! same configuration keys.
//!
//! Configuration (`/etc/cni/net.d/00-multus-standin.conf`), keys as Multus names them:
//! `kubeconfig`, `clusterNetwork` (a file path, the `name` of a configuration in `confDir`, or a
//! NetworkAttachmentDefinition in `multusNamespace`), `confDir`, `cniDir` (where each sandbox's
//! delegates and results are kept for DEL), `multusNamespace`.
//!
//! Like Multus, DEL works from the cache written at ADD (the pod may be gone by then), and a
//! missing cache with a missing pod is a successful DEL.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Map, Value, json};

use crate::cni::{self, CniExec, NetworkConfigList, RuntimeConf};
use crate::multus::{self, DefaultNetwork, Delegate, MultusMode, NETWORK_STATUS_ANNOTATION, PodArgs};

/// The plugin `type` of the stand-in (and its file name in `/opt/cni/bin`).
pub const PLUGIN_TYPE: &str = "multus-standin";
/// Its configuration file; containerd uses the first file of `/etc/cni/net.d` by name.
pub const CONF_FILE: &str = "00-multus-standin.conf";
/// The user its client certificate names (bound to [`cluster_role`]).
pub const USER: &str = "multus-standin";
/// The interface name containerd asks for.
const RUNTIME_IFNAME: &str = "eth0";

/// The stand-in's configuration for a node (`plugin_type` is [`PLUGIN_TYPE`], or `multus` for a real
/// Multus binary).
pub fn conf(plugin_type: &str, kubeconfig: &Path, cluster_network: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "multus-cni-network",
        "type": plugin_type,
        "kubeconfig": kubeconfig,
        "clusterNetwork": cluster_network,
        "confDir": "/etc/cni/net.d",
        "cniDir": "/var/lib/cni/multus",
        "multusNamespace": "kube-system",
    })
}

/// The ClusterRole upstream's Multus deployment binds to its service account: read pods and their
/// NetworkAttachmentDefinitions, write pods' status (the network-status annotation), create events.
pub fn cluster_role() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": USER},
        "rules": [
            {"apiGroups": ["k8s.cni.cncf.io"], "resources": ["*"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["pods", "pods/status"], "verbs": ["get", "update", "patch"]},
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
        ],
    })
}

/// Binds [`cluster_role`] to the user [`USER`].
pub fn cluster_role_binding() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": USER},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": USER},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
    })
}

/// The stand-in's parsed configuration.
#[derive(Debug, Clone)]
struct StandinConf {
    cni_version: String,
    kubeconfig: PathBuf,
    cluster_network: String,
    conf_dir: PathBuf,
    cni_dir: PathBuf,
    multus_namespace: String,
}

impl StandinConf {
    fn parse(stdin: &[u8]) -> Result<Self> {
        let value: Value = serde_json::from_slice(stdin).context("the network configuration is not JSON")?;
        let text = |key: &str, default: &str| {
            value
                .get(key)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .unwrap_or(default)
                .to_owned()
        };
        let kubeconfig = text("kubeconfig", "");
        let cluster_network = text("clusterNetwork", "");
        if kubeconfig.is_empty() || cluster_network.is_empty() {
            bail!("the configuration needs \"kubeconfig\" and \"clusterNetwork\"");
        }
        Ok(StandinConf {
            cni_version: text("cniVersion", "1.0.0"),
            kubeconfig: kubeconfig.into(),
            cluster_network,
            conf_dir: text("confDir", "/etc/cni/net.d").into(),
            cni_dir: text("cniDir", "/var/lib/cni/multus").into(),
            multus_namespace: text("multusNamespace", "kube-system"),
        })
    }

    /// `clusterNetwork` as Multus resolves it: a file, a configuration in `confDir` with that name,
    /// else a NetworkAttachmentDefinition in `multusNamespace`.
    fn default_network(&self) -> Result<DefaultNetwork> {
        let name = self.cluster_network.as_str();
        if name.starts_with('/') {
            return read_config(Path::new(name)).map(DefaultNetwork::Config);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.conf_dir)
            .with_context(|| format!("reading {}", self.conf_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "conf" || e == "conflist" || e == "json")
            })
            .collect();
        files.sort();
        for file in files {
            if let Ok(config) = read_config(&file)
                && config.get("name").and_then(Value::as_str) == Some(name)
                && config.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE)
            {
                return Ok(DefaultNetwork::Config(config));
            }
        }
        Ok(DefaultNetwork::Nad {
            namespace: self.multus_namespace.clone(),
            name: name.to_owned(),
        })
    }
}

fn read_config(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// What the runtime passed in the environment.
#[derive(Debug, Clone)]
struct Invocation {
    command: String,
    container_id: String,
    netns: String,
    ifname: String,
    args: Vec<(String, String)>,
    cni_path: Vec<PathBuf>,
}

impl Invocation {
    fn from_env() -> Result<Self> {
        let var = |key: &str| std::env::var(key).unwrap_or_default();
        Ok(Invocation {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: Some(var("CNI_IFNAME"))
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| RUNTIME_IFNAME.to_owned()),
            args: multus::parse_cni_args(&var("CNI_ARGS"))?,
            cni_path: std::env::split_paths(&var("CNI_PATH")).collect(),
        })
    }
}

/// One delegate as the cache keeps it for DEL.
#[derive(Debug, Clone)]
struct CachedDelegate {
    network: String,
    master: bool,
    config: NetworkConfigList,
    runtime_conf: RuntimeConf,
    result: Option<Value>,
}

fn config_value(config: &NetworkConfigList) -> Value {
    json!({
        "cniVersion": config.cni_version,
        "name": config.name,
        "disableCheck": config.disable_check,
        "plugins": config.plugins,
    })
}

impl CachedDelegate {
    fn to_json(&self) -> Value {
        json!({
            "network": self.network,
            "master": self.master,
            "config": config_value(&self.config),
            "containerId": self.runtime_conf.container_id,
            "netns": self.runtime_conf.netns,
            "ifname": self.runtime_conf.ifname,
            "args": self.runtime_conf.args,
            "capabilityArgs": self.runtime_conf.capability_args,
            "result": self.result,
        })
    }

    fn from_json(value: &Value) -> Result<Self> {
        let text = |key: &str| {
            value
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let args: Vec<(String, String)> =
            serde_json::from_value(value.get("args").cloned().unwrap_or_default()).context("cache: args")?;
        let capability_args: Map<String, Value> =
            serde_json::from_value(value.get("capabilityArgs").cloned().unwrap_or(json!({})))
                .context("cache: capabilityArgs")?;
        Ok(CachedDelegate {
            network: text("network"),
            master: value.get("master").and_then(Value::as_bool).unwrap_or(false),
            config: NetworkConfigList::from_value(value.get("config").unwrap_or(&Value::Null))
                .context("cache: config")?,
            runtime_conf: RuntimeConf {
                container_id: text("containerId"),
                netns: text("netns"),
                ifname: text("ifname"),
                args,
                capability_args,
            },
            result: value.get("result").filter(|r| !r.is_null()).cloned(),
        })
    }
}

fn cache_path(conf: &StandinConf, container_id: &str) -> Result<PathBuf> {
    if container_id.is_empty() || container_id.contains('/') {
        bail!("CNI_CONTAINERID {container_id:?} is not a container ID");
    }
    Ok(conf.cni_dir.join(format!("{container_id}.json")))
}

fn write_cache(conf: &StandinConf, container_id: &str, delegates: &[CachedDelegate]) -> Result<()> {
    let path = cache_path(conf, container_id)?;
    std::fs::create_dir_all(&conf.cni_dir).with_context(|| format!("creating {}", conf.cni_dir.display()))?;
    let value = json!({"delegates": delegates.iter().map(CachedDelegate::to_json).collect::<Vec<_>>()});
    let temp = path.with_extension("partial");
    std::fs::write(&temp, serde_json::to_vec(&value)?)?;
    std::fs::rename(&temp, &path)?;
    Ok(())
}

fn read_cache(conf: &StandinConf, container_id: &str) -> Result<Option<Vec<CachedDelegate>>> {
    let path = cache_path(conf, container_id)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    value
        .get("delegates")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("{}: no delegates", path.display()))?
        .iter()
        .map(CachedDelegate::from_json)
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

async fn client(conf: &StandinConf) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(&conf.kubeconfig)
        .with_context(|| format!("reading the kubeconfig {}", conf.kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// The pod, retried for a few seconds as Multus does (the API may be briefly unreachable).
async fn get_pod(client: &Client, pod: &PodArgs) -> Result<Option<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match api.get_opt(&pod.name).await {
            Ok(found) => return Ok(found),
            Err(err) if Instant::now() >= deadline => {
                return Err(err).with_context(|| format!("getting pod {}/{}", pod.namespace, pod.name));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn exec(invocation: &Invocation) -> CniExec {
    CniExec::new(invocation.cni_path.clone())
}

fn delegate_error(pod: &PodArgs, network: &str, err: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "[{}/{}/{}:{network}]: error adding container to network {network:?}: {err}",
        pod.namespace,
        pod.name,
        pod.uid
    )
}

async fn add(conf: &StandinConf, invocation: &Invocation) -> Result<Value> {
    let pod_args = PodArgs::from_cni_args(&invocation.args)?;
    let client = client(conf).await?;
    let pod = get_pod(&client, &pod_args)
        .await?
        .ok_or_else(|| anyhow!("pod {}/{} not found", pod_args.namespace, pod_args.name))?;
    if let Some(uid) = pod.metadata.uid.as_deref()
        && !pod_args.uid.is_empty()
        && uid != pod_args.uid
    {
        bail!(
            "expected pod UID {:?} but got {uid:?} from the API server",
            pod_args.uid
        );
    }
    let delegates = multus::pod_delegates(&client, &pod, &conf.default_network()?).await?;
    let executor = exec(invocation);
    let mut done: Vec<CachedDelegate> = Vec::new();
    let outcome = tokio::task::block_in_place(|| -> Result<()> {
        for (index, delegate) in delegates.iter().enumerate() {
            let ifname = multus::interface_name(delegate, &invocation.ifname, index);
            let runtime_conf = multus::delegate_runtime_conf_from(
                delegate,
                &pod_args,
                &invocation.args,
                &invocation.netns,
                &ifname,
                MultusMode::Thin,
            )?;
            let runtime_conf = RuntimeConf {
                container_id: invocation.container_id.clone(),
                ..runtime_conf
            };
            let result = executor
                .add(&delegate.config, &runtime_conf)
                .map_err(|err| delegate_error(&pod_args, &delegate.name, err))?;
            done.push(CachedDelegate {
                network: delegate.name.clone(),
                master: delegate.master,
                config: delegate.config.clone(),
                runtime_conf,
                result: Some(result),
            });
        }
        Ok(())
    });
    if let Err(err) = outcome {
        // As Multus: undo what was added, in reverse.
        tokio::task::block_in_place(|| {
            for d in done.iter().rev() {
                let _ = executor.del(&d.config, &d.runtime_conf, d.result.as_ref());
            }
        });
        return Err(err);
    }
    write_cache(conf, &invocation.container_id, &done)?;
    report(&client, &pod, &done).await;
    done.iter()
        .find(|d| d.master)
        .and_then(|d| d.result.clone())
        .ok_or_else(|| anyhow!("no cluster network result"))
}

/// The network-status annotation (through `pods/status`, as Multus writes it) and one
/// `AddedInterface` event per delegate. Failures are logged, not fatal: the pod has its networks.
async fn report(client: &Client, pod: &Pod, delegates: &[CachedDelegate]) {
    let statuses: Vec<multus::NetworkStatus> = delegates
        .iter()
        .filter_map(|d| Some(multus::network_statuses(d.result.as_ref()?, &d.network, d.master)))
        .flatten()
        .collect();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    match multus::render_network_status(&statuses) {
        Ok(annotation) => {
            let patch = json!({"metadata": {"annotations": {NETWORK_STATUS_ANNOTATION: annotation}}});
            if let Err(err) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::warn!(%err, pod = %format!("{namespace}/{name}"), "cannot write the network-status annotation");
            }
        }
        Err(err) => tracing::warn!(%err, "cannot render the network-status annotation"),
    }
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    for d in delegates {
        let Some(result) = &d.result else { continue };
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}.")),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                uid: pod.metadata.uid.clone(),
                ..ObjectReference::default()
            },
            reason: Some("AddedInterface".to_owned()),
            message: Some(multus::added_interface_message(
                result,
                &d.runtime_conf.ifname,
                &d.network,
            )),
            type_: Some("Normal".to_owned()),
            source: Some(EventSource {
                component: Some("multus".to_owned()),
                host: None,
            }),
            first_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::now())),
            last_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::now())),
            count: Some(1),
            ..Event::default()
        };
        if let Err(err) = events.create(&PostParams::default(), &event).await {
            tracing::debug!(%err, "cannot create an event");
        }
    }
}

async fn del(conf: &StandinConf, invocation: &Invocation) -> Result<()> {
    let delegates = match read_cache(conf, &invocation.container_id)? {
        Some(delegates) => delegates,
        None => {
            // No cache: rebuild from the pod if it still exists (DEL must also work after a
            // failed ADD); no pod either: nothing was set up that we could know of.
            let Ok(pod_args) = PodArgs::from_cni_args(&invocation.args) else {
                return Ok(());
            };
            let client = client(conf).await?;
            let Some(pod) = get_pod(&client, &pod_args).await? else {
                return Ok(());
            };
            let Ok(delegates) = multus::pod_delegates(&client, &pod, &conf.default_network()?).await else {
                return Ok(());
            };
            rebuild(&delegates, &pod_args, invocation)?
        }
    };
    let executor = exec(invocation);
    let errors: Vec<String> = tokio::task::block_in_place(|| {
        delegates
            .iter()
            .rev()
            .filter_map(|d| {
                executor
                    .del(&d.config, &d.runtime_conf, d.result.as_ref())
                    .err()
                    .map(|e| e.to_string())
            })
            .collect()
    });
    if !errors.is_empty() {
        bail!("deleting the networks: {}", errors.join("; "));
    }
    let _ = std::fs::remove_file(cache_path(conf, &invocation.container_id)?);
    Ok(())
}

fn rebuild(delegates: &[Delegate], pod: &PodArgs, invocation: &Invocation) -> Result<Vec<CachedDelegate>> {
    delegates
        .iter()
        .enumerate()
        .map(|(index, delegate)| {
            let ifname = multus::interface_name(delegate, &invocation.ifname, index);
            let runtime_conf = multus::delegate_runtime_conf_from(
                delegate,
                pod,
                &invocation.args,
                &invocation.netns,
                &ifname,
                MultusMode::Thin,
            )?;
            Ok(CachedDelegate {
                network: delegate.name.clone(),
                master: delegate.master,
                config: delegate.config.clone(),
                runtime_conf: RuntimeConf {
                    container_id: invocation.container_id.clone(),
                    ..runtime_conf
                },
                result: None,
            })
        })
        .collect()
}

fn check(conf: &StandinConf, invocation: &Invocation) -> Result<()> {
    let delegates = read_cache(conf, &invocation.container_id)?
        .ok_or_else(|| anyhow!("no cached ADD for container {}", invocation.container_id))?;
    let executor = exec(invocation);
    for d in &delegates {
        let result = d
            .result
            .as_ref()
            .ok_or_else(|| anyhow!("no cached result of {}", d.network))?;
        executor.check(&d.config, &d.runtime_conf, result)?;
    }
    Ok(())
}

fn write_stdout(value: &Value) {
    let mut out = std::io::stdout();
    let _ = out.write_all(value.to_string().as_bytes());
    let _ = out.flush();
}

/// The plugin's `main`: one CNI command, result or error on stdout, logs on stderr (containerd
/// keeps them in its log).
pub fn main() -> std::process::ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,kube_client=off"))
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
    let mut version = "1.0.0".to_owned();
    match run(&mut version) {
        Ok(Some(output)) => {
            write_stdout(&output);
            std::process::ExitCode::SUCCESS
        }
        Ok(None) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            write_stdout(
                &json!({"cniVersion": version, "code": 100, "msg": format!("{PLUGIN_TYPE}: {err:#}")}),
            );
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(version: &mut String) -> Result<Option<Value>> {
    let invocation = Invocation::from_env()?;
    if invocation.command == "VERSION" {
        return Ok(Some(
            json!({"cniVersion": "1.0.0", "supportedVersions": cni::SUPPORTED_VERSIONS}),
        ));
    }
    let mut stdin = Vec::new();
    std::io::stdin()
        .read_to_end(&mut stdin)
        .context("reading stdin")?;
    let conf = StandinConf::parse(&stdin)?;
    version.clone_from(&conf.cni_version);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting a runtime")?;
    tracing::info!(command = %invocation.command, container = %invocation.container_id, args = ?invocation.args, "invoked");
    match invocation.command.as_str() {
        "ADD" => runtime.block_on(add(&conf, &invocation)).map(Some),
        "DEL" => runtime.block_on(del(&conf, &invocation)).map(|()| None),
        "CHECK" => check(&conf, &invocation).map(|()| None),
        "STATUS" | "GC" => Ok(None),
        other => bail!("unknown CNI_COMMAND {other:?}"),
    }
}
