//! `spiderpool-init` (upstream's post-install Job): creates the cluster's defaults the chart's values
//! ask for, each only when absent, in upstream's order:
//!
//! 1. the `default` SpiderCoordinator (`coordinator.*`);
//! 2. the default SpiderSubnets, then SpiderIPPools (`default: true`) per family
//!    (`clusterDefaultPool.*`);
//! 3. the SpiderMultusConfig of the cluster's default network (`multus.*`): named after
//!    `multus.multusCNI.defaultCniCRName`, or after the first CNI configuration of the node (Calico's
//!    `k8s-pod-network` becomes `calico`, as upstream); `cniType: custom` with that file's content as
//!    `customCNI` (as upstream: the rendered NAD is the node's own configuration, whatever its
//!    plugin), and the coordinator off.
//!
//! It never changes or deletes anything: an object that exists is left as it is. What it creates goes
//! through the operator's admission webhooks, which may not answer yet right after install, so
//! transient refusals are retried until a deadline; a refusal that names a field fails at once.
//!
//! [`InitConfig::from_env`] and [`planned`] are pure; [`run`] is the I/O shell.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use spiderpool_schema::coordinator::CoordinatorSpec;
use spiderpool_schema::multusconfig::ANNO_NET_ATTACH_CONF_NAME;
use spiderpool_schema::subnet::SpiderSubnetSpec;
use spiderpool_schema::{
    SpiderCoordinator, SpiderIPPool, SpiderIPPoolSpec, SpiderMultusConfig, SpiderMultusConfigSpec,
};

/// Label on everything spiderpool-init creates.
pub const CREATED_BY_LABEL: (&str, &str) = ("app.kubernetes.io/created-by", "spiderpool-init");

/// The defaults of one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyDefaults {
    /// 4 or 6.
    pub version: i64,
    /// Name of the default pool.
    pub pool_name: String,
    /// Name of the default subnet (none: no subnet).
    pub subnet_name: Option<String>,
    /// The CIDR.
    pub cidr: String,
    /// The pool's (and subnet's) addresses.
    pub ip_ranges: Vec<String>,
    /// The gateway.
    pub gateway: Option<String>,
}

/// The default SpiderMultusConfig to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultusDefaults {
    /// Namespace (the release's).
    pub namespace: String,
    /// `multus.multusCNI.defaultCniCRName` (empty: found in the CNI directory).
    pub name: Option<String>,
    /// The node's CNI configuration directory as mounted.
    pub cni_dir: String,
}

/// Everything spiderpool-init is asked to create.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InitConfig {
    /// The SpiderCoordinator (name and spec).
    pub coordinator: Option<(String, CoordinatorSpec)>,
    /// IPv4 defaults.
    pub ipv4: Option<FamilyDefaults>,
    /// IPv6 defaults.
    pub ipv6: Option<FamilyDefaults>,
    /// The default SpiderMultusConfig.
    pub multus: Option<MultusDefaults>,
}

/// What is wrong with the Job's environment or with what it tried.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// An environment variable has a bad value.
    #[error("{variable}={value:?}: {reason}")]
    Env {
        /// The variable.
        variable: String,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The CNI directory holds no configuration to name the default network after.
    #[error(
        "no CNI configuration in {0} to name the default network after; install the cluster's CNI first, \
         or set multus.multusCNI.defaultCniCRName"
    )]
    NoDefaultCni(String),
    /// A CNI configuration file cannot be read or parsed.
    #[error("{path}: {reason}")]
    CniFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The API server refused an object for a reason retrying cannot fix.
    #[error("creating {kind} {name}: {source}")]
    Refused {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// The answer.
        source: Box<kube::Error>,
    },
    /// The deadline passed while the webhooks still did not admit an object.
    #[error("creating {kind} {name}: still failing after {waited:?} (last: {source})")]
    Deadline {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// How long it tried.
        waited: Duration,
        /// The last answer.
        source: Box<kube::Error>,
    },
}

fn env_error(variable: &str, value: &str, reason: impl Into<String>) -> InitError {
    InitError::Env {
        variable: variable.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A JSON list of strings (`toJson` of a Helm list), empty text meaning none.
fn json_list(variable: &str, value: &str) -> Result<Vec<String>, InitError> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(value)
        .map_err(|e| env_error(variable, value, format!("not a JSON list of strings: {e}")))
}

fn boolean(variable: &str, value: &str) -> Result<bool, InitError> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(env_error(variable, value, "not true or false")),
    }
}

impl InitConfig {
    /// Reads upstream's `SPIDERPOOL_INIT_*` variables through `lookup` (the process environment in
    /// the binary).
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, InitError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut config = InitConfig::default();
        if let Some(name) = get("SPIDERPOOL_INIT_DEFAULT_COORDINATOR_NAME") {
            let mut spec = CoordinatorSpec {
                mode: get("SPIDERPOOL_INIT_DEFAULT_COORDINATOR_MODE"),
                pod_cidr_type: get("SPIDERPOOL_INIT_DEFAULT_COORDINATOR_POD_CIDR_TYPE"),
                veth_link_address: get("SPIDERPOOL_INIT_DEFAULT_COORDINATOR_VETH_LINK_ADDRESS"),
                ..CoordinatorSpec::default()
            };
            if let Some(v) = get("SPIDERPOOL_INIT_DEFAULT_COORDINATOR_TUNE_POD_ROUTES") {
                spec.tune_pod_routes = Some(boolean(
                    "SPIDERPOOL_INIT_DEFAULT_COORDINATOR_TUNE_POD_ROUTES",
                    &v,
                )?);
            }
            if let Some(v) = get("SPIDERPOOL_INIT_DEFAULT_COORDINATOR_HIJACK_CIDR") {
                spec.hijack_cidr = json_list("SPIDERPOOL_INIT_DEFAULT_COORDINATOR_HIJACK_CIDR", &v)?;
            }
            config.coordinator = Some((name, spec));
        }
        for (version, family) in [(4, "IPV4"), (6, "IPV6")] {
            let Some(pool_name) = get(&format!("SPIDERPOOL_INIT_DEFAULT_{family}_IPPOOL_NAME")) else {
                continue;
            };
            let cidr_var = format!("SPIDERPOOL_INIT_DEFAULT_{family}_IPPOOL_SUBNET");
            let cidr = get(&cidr_var)
                .ok_or_else(|| env_error(&cidr_var, "", "the default pool needs its subnet's CIDR"))?;
            let ranges_var = format!("SPIDERPOOL_INIT_DEFAULT_{family}_IPPOOL_IPRANGES");
            let defaults = FamilyDefaults {
                version,
                pool_name,
                subnet_name: get(&format!("SPIDERPOOL_INIT_DEFAULT_{family}_SUBNET_NAME")),
                cidr,
                ip_ranges: json_list(&ranges_var, &get(&ranges_var).unwrap_or_default())?,
                gateway: get(&format!("SPIDERPOOL_INIT_DEFAULT_{family}_IPPOOL_GATEWAY")),
            };
            if version == 4 {
                config.ipv4 = Some(defaults);
            } else {
                config.ipv6 = Some(defaults);
            }
        }
        let multus_config = get("SPIDERPOOL_INIT_ENABLE_MULTUS_CONFIG")
            .map(|v| boolean("SPIDERPOOL_INIT_ENABLE_MULTUS_CONFIG", &v))
            .transpose()?
            .unwrap_or(false);
        if multus_config {
            config.multus = Some(MultusDefaults {
                namespace: get("SPIDERPOOL_INIT_DEFAULT_CNI_NAMESPACE")
                    .or_else(|| get("SPIDERPOOL_NAMESPACE"))
                    .unwrap_or_else(|| "kube-system".to_string()),
                name: get("SPIDERPOOL_INIT_DEFAULT_CNI_NAME"),
                cni_dir: get("SPIDERPOOL_INIT_DEFAULT_CNI_DIR")
                    .unwrap_or_else(|| "/etc/cni/net.d".to_string()),
            });
        }
        Ok(config)
    }
}

/// The cluster's default network as a node's CNI directory shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultCni {
    /// The configuration's `name`.
    pub name: String,
    /// The file's content, which becomes the SpiderMultusConfig's `customCNI`.
    pub config: String,
}

/// The default network, from the first CNI configuration file of `dir` (by file name, as the runtime
/// picks it) that is not Multus' own.
pub fn default_cni(dir: &Path) -> Result<DefaultCni, InitError> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| InitError::CniFile {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conf" | "conflist" | "json")
                )
        })
        .collect();
    files.sort();
    for path in files {
        let cni_file = |reason: String| InitError::CniFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| cni_file(e.to_string()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| cni_file(format!("not JSON: {e}")))?;
        let name = value["name"]
            .as_str()
            .ok_or_else(|| cni_file("has no \"name\"".to_string()))?
            .to_string();
        let plugin_type = value["plugins"][0]["type"]
            .as_str()
            .or_else(|| value["type"].as_str())
            .unwrap_or_default();
        if plugin_type == "multus" {
            continue;
        }
        return Ok(DefaultCni { name, config: text });
    }
    Err(InitError::NoDefaultCni(dir.display().to_string()))
}

/// Everything to create, in order.
#[derive(Debug, Clone, Default)]
pub struct Planned {
    /// The coordinator.
    pub coordinator: Option<SpiderCoordinator>,
    /// Subnets (IPv4 first).
    pub subnets: Vec<spiderpool_schema::subnet::SpiderSubnet>,
    /// Pools (IPv4 first).
    pub pools: Vec<SpiderIPPool>,
    /// The default network's SpiderMultusConfig.
    pub multus_config: Option<SpiderMultusConfig>,
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(BTreeMap::from([(
            CREATED_BY_LABEL.0.to_string(),
            CREATED_BY_LABEL.1.to_string(),
        )])),
        ..ObjectMeta::default()
    }
}

/// The objects `config` asks for; `default_cni` is the default network when the configuration leaves
/// it to the CNI directory.
pub fn planned(config: &InitConfig, default_cni: Option<DefaultCni>) -> Planned {
    let mut plan = Planned::default();
    if let Some((name, spec)) = &config.coordinator {
        plan.coordinator = Some(SpiderCoordinator {
            metadata: meta(name, None),
            spec: spec.clone(),
            status: None,
        });
    }
    for family in [&config.ipv4, &config.ipv6].into_iter().flatten() {
        if let Some(subnet_name) = &family.subnet_name {
            plan.subnets.push(spiderpool_schema::subnet::SpiderSubnet {
                metadata: meta(subnet_name, None),
                spec: SpiderSubnetSpec {
                    ip_version: Some(family.version),
                    subnet: family.cidr.clone(),
                    ips: family.ip_ranges.clone(),
                    gateway: family.gateway.clone(),
                    ..SpiderSubnetSpec::default()
                },
                status: None,
            });
        }
        plan.pools.push(SpiderIPPool {
            metadata: meta(&family.pool_name, None),
            spec: SpiderIPPoolSpec {
                ip_version: Some(family.version),
                subnet: family.cidr.clone(),
                ips: family.ip_ranges.clone(),
                gateway: family.gateway.clone(),
                default: Some(true),
                ..SpiderIPPoolSpec::default()
            },
            status: None,
        });
    }
    if let Some(multus) = &config.multus {
        let (name, custom_cni) = match (&multus.name, default_cni) {
            (Some(name), _) => (name.clone(), None),
            (None, Some(found)) => (found.name, Some(found.config)),
            (None, None) => return plan,
        };
        let mut metadata = meta(&name, Some(&multus.namespace));
        // Calico names its network `k8s-pod-network`, which is no valid object name for some tools;
        // upstream names the object `calico` and keeps the network name in the annotation.
        let name = if name == "k8s-pod-network" {
            metadata.annotations = Some(BTreeMap::from([(
                ANNO_NET_ATTACH_CONF_NAME.to_string(),
                name.clone(),
            )]));
            "calico".to_string()
        } else {
            name
        };
        metadata.name = Some(name);
        plan.multus_config = Some(SpiderMultusConfig {
            metadata,
            spec: SpiderMultusConfigSpec {
                cni_type: Some("custom".to_string()),
                custom_cni,
                enable_coordinator: Some(false),
                ..SpiderMultusConfigSpec::default()
            },
        });
    }
    plan
}

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It was created.
    Created,
    /// It existed and was left alone.
    Existed,
}

/// How long to keep trying and how often.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Give up after this long.
    pub deadline: Duration,
    /// Pause between attempts.
    pub interval: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            deadline: Duration::from_secs(600),
            interval: Duration::from_secs(2),
        }
    }
}

/// Whether an API error may go away by itself: the webhook not answering yet (its Service has no
/// ready endpoint, the connection is refused, the certificate is not registered yet), the API server
/// busy, or a CRD not served yet.
fn transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => {
            status.code >= 500
                || status.code == 429
                || status.code == 404
                || status.message.contains("failed calling webhook")
        }
        _ => true,
    }
}

async fn create_if_absent<K>(api: Api<K>, object: &K, retry: Retry) -> Result<Outcome, InitError>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let kind = K::kind(&()).to_string();
    let started = Instant::now();
    loop {
        let result = match api.get_opt(&name).await {
            Ok(Some(_)) => return Ok(Outcome::Existed),
            Ok(None) => api
                .create(&PostParams::default(), object)
                .await
                .map(|_| Outcome::Created),
            Err(e) => Err(e),
        };
        match result {
            Ok(outcome) => return Ok(outcome),
            Err(kube::Error::Api(status)) if status.code == 409 => return Ok(Outcome::Existed),
            Err(source) if transient(&source) => {
                if started.elapsed() >= retry.deadline {
                    return Err(InitError::Deadline {
                        kind,
                        name,
                        waited: started.elapsed(),
                        source: Box::new(source),
                    });
                }
                tracing::info!(%kind, %name, error = %source, "not admitted yet; retrying");
                tokio::time::sleep(retry.interval).await;
            }
            Err(source) => {
                return Err(InitError::Refused {
                    kind,
                    name,
                    source: Box::new(source),
                });
            }
        }
    }
}

/// Creates what `config` asks for, each only when absent. Returns what happened to each object.
pub async fn run(
    client: Client,
    config: &InitConfig,
    retry: Retry,
) -> Result<Vec<(String, Outcome)>, InitError> {
    let default_cni = match &config.multus {
        Some(MultusDefaults {
            name: None, cni_dir, ..
        }) => Some(default_cni(Path::new(cni_dir))?),
        _ => None,
    };
    let plan = planned(config, default_cni);
    let mut report = Vec::new();
    let mut record = |what: String, outcome: Outcome| {
        tracing::info!(object = %what, ?outcome, "default");
        report.push((what, outcome));
    };
    if let Some(coordinator) = &plan.coordinator {
        let outcome =
            create_if_absent(Api::<SpiderCoordinator>::all(client.clone()), coordinator, retry).await?;
        record(
            format!(
                "SpiderCoordinator/{}",
                coordinator.metadata.name.clone().unwrap_or_default()
            ),
            outcome,
        );
    }
    for subnet in &plan.subnets {
        let outcome = create_if_absent(Api::all(client.clone()), subnet, retry).await?;
        record(
            format!(
                "SpiderSubnet/{}",
                subnet.metadata.name.clone().unwrap_or_default()
            ),
            outcome,
        );
    }
    for pool in &plan.pools {
        let outcome = create_if_absent(Api::<SpiderIPPool>::all(client.clone()), pool, retry).await?;
        record(
            format!("SpiderIPPool/{}", pool.metadata.name.clone().unwrap_or_default()),
            outcome,
        );
    }
    if let Some(smc) = &plan.multus_config {
        let namespace = smc.metadata.namespace.clone().unwrap_or_default();
        let outcome = create_if_absent(
            Api::<SpiderMultusConfig>::namespaced(client.clone(), &namespace),
            smc,
            retry,
        )
        .await?;
        record(
            format!(
                "SpiderMultusConfig/{namespace}/{}",
                smc.metadata.name.clone().unwrap_or_default()
            ),
            outcome,
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |key| map.get(key).cloned()
    }

    /// What the chart's Job sets with a non-trivial values file.
    fn chart_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("SPIDERPOOL_INIT_DEFAULT_COORDINATOR_NAME", "default"),
            ("SPIDERPOOL_INIT_DEFAULT_COORDINATOR_MODE", "auto"),
            ("SPIDERPOOL_INIT_DEFAULT_COORDINATOR_POD_CIDR_TYPE", "auto"),
            ("SPIDERPOOL_INIT_DEFAULT_COORDINATOR_DETECT_GATEWAY", "false"),
            ("SPIDERPOOL_INIT_DEFAULT_COORDINATOR_TUNE_POD_ROUTES", "true"),
            (
                "SPIDERPOOL_INIT_DEFAULT_COORDINATOR_HIJACK_CIDR",
                r#"["169.254.0.0/16"]"#,
            ),
            ("SPIDERPOOL_INIT_DEFAULT_COORDINATOR_VETH_LINK_ADDRESS", ""),
            ("SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_NAME", "default-v4-ippool"),
            ("SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_SUBNET", "10.6.0.0/16"),
            (
                "SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_IPRANGES",
                r#"["10.6.0.10-10.6.0.100"]"#,
            ),
            ("SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_GATEWAY", "10.6.0.1"),
            ("SPIDERPOOL_INIT_DEFAULT_IPV4_SUBNET_NAME", "default-v4-subnet"),
            ("SPIDERPOOL_INIT_ENABLE_MULTUS_CONFIG", "true"),
            ("SPIDERPOOL_INIT_DEFAULT_CNI_NAME", ""),
            ("SPIDERPOOL_INIT_DEFAULT_CNI_NAMESPACE", "kube-system"),
            ("SPIDERPOOL_INIT_DEFAULT_CNI_DIR", "/host/etc/cni/net.d"),
        ]
    }

    #[test]
    fn the_charts_environment_plans_upstreams_objects() {
        let config = InitConfig::from_env(env(&chart_env())).unwrap();
        let calico = r#"{"name":"k8s-pod-network","cniVersion":"0.3.1","plugins":[{"type":"calico"}]}"#;
        let plan = planned(
            &config,
            Some(DefaultCni {
                name: "k8s-pod-network".into(),
                config: calico.into(),
            }),
        );
        let coordinator = plan.coordinator.unwrap();
        assert_eq!(coordinator.metadata.name.as_deref(), Some("default"));
        assert_eq!(coordinator.spec.hijack_cidr, vec!["169.254.0.0/16".to_string()]);
        assert_eq!(coordinator.spec.tune_pod_routes, Some(true));
        assert_eq!(coordinator.spec.veth_link_address, None);
        assert_eq!(plan.subnets.len(), 1);
        assert_eq!(plan.subnets[0].spec.ips, vec!["10.6.0.10-10.6.0.100".to_string()]);
        assert_eq!(plan.pools[0].spec.default, Some(true));
        assert_eq!(plan.pools[0].spec.gateway.as_deref(), Some("10.6.0.1"));
        let smc = plan.multus_config.unwrap();
        assert_eq!(smc.metadata.name.as_deref(), Some("calico"));
        assert_eq!(
            smc.metadata.annotations.unwrap()[ANNO_NET_ATTACH_CONF_NAME],
            "k8s-pod-network"
        );
        assert_eq!(smc.spec.enable_coordinator, Some(false));
        assert_eq!(smc.spec.cni_type.as_deref(), Some("custom"));
        assert_eq!(smc.spec.custom_cni.as_deref(), Some(calico));
        assert_eq!(
            coordinator.metadata.labels.unwrap()[CREATED_BY_LABEL.0],
            CREATED_BY_LABEL.1
        );
    }

    #[test]
    fn nothing_asked_nothing_planned() {
        let plan = planned(&InitConfig::from_env(env(&[])).unwrap(), None);
        assert!(plan.coordinator.is_none() && plan.pools.is_empty() && plan.multus_config.is_none());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = InitConfig::from_env(env(&[
            ("SPIDERPOOL_INIT_DEFAULT_COORDINATOR_NAME", "default"),
            (
                "SPIDERPOOL_INIT_DEFAULT_COORDINATOR_HIJACK_CIDR",
                "169.254.0.0/16",
            ),
        ]))
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("SPIDERPOOL_INIT_DEFAULT_COORDINATOR_HIJACK_CIDR=")
        );
        let err =
            InitConfig::from_env(env(&[("SPIDERPOOL_INIT_DEFAULT_IPV6_IPPOOL_NAME", "v6")])).unwrap_err();
        assert!(
            err.to_string()
                .contains("SPIDERPOOL_INIT_DEFAULT_IPV6_IPPOOL_SUBNET")
        );
    }

    #[test]
    fn the_default_cni_is_the_first_file_that_is_not_multus() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(default_cni(dir.path()), Err(InitError::NoDefaultCni(_))));
        std::fs::write(
            dir.path().join("00-multus.conf"),
            r#"{"name":"multus-cni-network","type":"multus"}"#,
        )
        .unwrap();
        let macvlan = r#"{"name":"macvlan-net","plugins":[{"type":"macvlan"}]}"#;
        std::fs::write(dir.path().join("10-macvlan.conflist"), macvlan).unwrap();
        std::fs::write(
            dir.path().join("20-other.conf"),
            r#"{"name":"other","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("README"), "not a configuration").unwrap();
        assert_eq!(
            default_cni(dir.path()).unwrap(),
            DefaultCni {
                name: "macvlan-net".into(),
                config: macvlan.into()
            }
        );
        std::fs::remove_file(dir.path().join("10-macvlan.conflist")).unwrap();
        assert_eq!(default_cni(dir.path()).unwrap().name, "other");
        // A macvlan default network is wrapped as `custom` with the node's own configuration, which
        // the operator's admission accepts (a `macvlan` one without `spec.macvlan` is refused).
        let config = InitConfig::from_env(env(&chart_env())).unwrap();
        let plan = planned(
            &config,
            Some(DefaultCni {
                name: "macvlan-net".into(),
                config: macvlan.into(),
            }),
        );
        let smc = plan.multus_config.unwrap();
        assert_eq!(smc.spec.cni_type.as_deref(), Some("custom"));
        assert_eq!(smc.spec.custom_cni.as_deref(), Some(macvlan));
        let problems = spiderpool_schema::validation::Validate::problems(&smc);
        assert!(problems.is_empty(), "{problems:?}");
        let mut as_macvlan = smc;
        as_macvlan.spec.cni_type = Some("macvlan".into());
        as_macvlan.spec.custom_cni = None;
        assert!(
            !spiderpool_schema::validation::Validate::problems(&as_macvlan).is_empty(),
            "what the Job made before"
        );
    }
}
