//! The application side of automatic pools: watches Deployments, ReplicaSets, StatefulSets,
//! DaemonSets, Jobs, CronJobs and pods of third-party controllers, and feeds one queue that a single
//! worker drains. One worker on purpose: two pools carved from one subnet at the same time could pick
//! the same lowest free addresses.
//!
//! Pure parts: the `*_snapshot` functions (what an object asks for), [`plan`] (which pools it needs).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use spiderpool_ipmath::IpFamily;
use spiderpool_schema::annotations::{
    AnnotationError, AppRef, IpNumber, SubnetRequest, job_pod_count, parse_subnet_request,
};
use tokio::sync::mpsc;

use super::SubnetControllerConfig;
use super::autopool::{self, AutoPoolError, PoolTarget};

/// What one application asks of SpiderSubnet, read from its object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSnapshot {
    /// The application.
    pub app: AppRef,
    /// Pods it runs (the replicas a flexible pool adds its spare addresses to).
    pub replicas: u32,
    /// Pod template annotations.
    pub annotations: BTreeMap<String, String>,
    /// Host-network pods get no pool.
    pub host_network: bool,
    /// Another controller owns this one (a Deployment's ReplicaSet, a CronJob's Job): the top
    /// controller's pool serves its pods.
    pub controlled: bool,
    /// A third-party controller seen through one of its pods: its size is unknown, so only a fixed
    /// `ippool-ip-number` works.
    pub third_party: bool,
}

/// A change the worker acts on.
#[derive(Debug, Clone)]
pub enum AppEvent {
    /// The application was created or changed.
    Changed(AppSnapshot),
    /// The application was deleted.
    Deleted(AppRef),
}

fn app_ref(meta: &ObjectMeta, api_version: &str, kind: &str) -> AppRef {
    AppRef {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
    }
}

fn snapshot(
    meta: &ObjectMeta,
    api_version: &str,
    kind: &str,
    template: &PodTemplateSpec,
    replicas: u32,
) -> AppSnapshot {
    AppSnapshot {
        app: app_ref(meta, api_version, kind),
        replicas,
        annotations: template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default(),
        host_network: template
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false),
        controlled: meta
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true)),
        third_party: false,
    }
}

fn replicas(value: Option<i32>) -> u32 {
    // The API server defaults replicas to 1.
    u32::try_from(value.unwrap_or(1)).unwrap_or(0)
}

/// What a Deployment asks for.
pub fn deployment_snapshot(d: &Deployment) -> Option<AppSnapshot> {
    let spec = d.spec.as_ref()?;
    Some(snapshot(
        &d.metadata,
        "apps/v1",
        "Deployment",
        &spec.template,
        replicas(spec.replicas),
    ))
}

/// What a ReplicaSet asks for.
pub fn replicaset_snapshot(r: &ReplicaSet) -> Option<AppSnapshot> {
    let spec = r.spec.as_ref()?;
    let template = spec.template.clone().unwrap_or_default();
    Some(snapshot(
        &r.metadata,
        "apps/v1",
        "ReplicaSet",
        &template,
        replicas(spec.replicas),
    ))
}

/// What a StatefulSet asks for.
pub fn statefulset_snapshot(s: &StatefulSet) -> Option<AppSnapshot> {
    let spec = s.spec.as_ref()?;
    Some(snapshot(
        &s.metadata,
        "apps/v1",
        "StatefulSet",
        &spec.template,
        replicas(spec.replicas),
    ))
}

/// What a DaemonSet asks for: one address per node it schedules on (`status.desiredNumberScheduled`).
pub fn daemonset_snapshot(d: &DaemonSet) -> Option<AppSnapshot> {
    let spec = d.spec.as_ref()?;
    let scheduled = d.status.as_ref().map(|s| s.desired_number_scheduled).unwrap_or(0);
    Some(snapshot(
        &d.metadata,
        "apps/v1",
        "DaemonSet",
        &spec.template,
        u32::try_from(scheduled).unwrap_or(0),
    ))
}

/// What a Job asks for.
pub fn job_snapshot(j: &Job) -> Option<AppSnapshot> {
    let spec = j.spec.as_ref()?;
    Some(snapshot(
        &j.metadata,
        "batch/v1",
        "Job",
        &spec.template,
        job_pod_count(spec.parallelism, spec.completions),
    ))
}

/// What a CronJob asks for (its job template's pods).
pub fn cronjob_snapshot(c: &CronJob) -> Option<AppSnapshot> {
    let job = c.spec.as_ref()?.job_template.spec.as_ref()?;
    Some(snapshot(
        &c.metadata,
        "batch/v1",
        "CronJob",
        &job.template,
        job_pod_count(job.parallelism, job.completions),
    ))
}

/// Controller kinds whose pools come from their own watchers (or that never get one).
const KNOWN_OWNER_KINDS: &[(&str, &str)] = &[
    ("apps/v1", "ReplicaSet"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
    ("batch/v1", "Job"),
    ("batch/v1", "CronJob"),
    ("v1", "Node"),
];

/// What a pod of a third-party controller asks for, or `None` for other pods (no controller, a built-in
/// controller, KubeVirt, or no subnet annotation).
pub fn third_party_snapshot(pod: &Pod) -> Option<AppSnapshot> {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    if !annotations.contains_key(spiderpool_schema::annotations::ANNO_SUBNET)
        && !annotations.contains_key(spiderpool_schema::annotations::ANNO_SUBNETS)
    {
        return None;
    }
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))?;
    let known = KNOWN_OWNER_KINDS
        .iter()
        .any(|(v, k)| owner.api_version == *v && owner.kind == *k)
        || owner.api_version.starts_with("kubevirt.io/");
    if known {
        return None;
    }
    Some(AppSnapshot {
        app: AppRef {
            api_version: owner.api_version.clone(),
            kind: owner.kind.clone(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: owner.name.clone(),
            uid: owner.uid.clone(),
        },
        replicas: 0,
        annotations,
        host_network: pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false),
        controlled: false,
        third_party: true,
    })
}

/// One pool an application needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPool {
    /// Pod interface.
    pub interface: String,
    /// Family.
    pub family: IpFamily,
    /// SpiderSubnet name.
    pub subnet: String,
    /// Addresses wanted.
    pub desired: u32,
}

/// Why an application gets no pools.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A subnet annotation is malformed.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// The annotations are well-formed but cannot work here.
    #[error("{0}")]
    Unusable(String),
}

/// The pools an application needs, or `Ok(None)` when it does not use SpiderSubnet (no annotation,
/// host network, or owned by another controller).
pub fn plan(
    snapshot: &AppSnapshot,
    config: &SubnetControllerConfig,
) -> Result<Option<(SubnetRequest, Vec<PlannedPool>)>, PlanError> {
    if snapshot.host_network || snapshot.controlled {
        return Ok(None);
    }
    let Some(request) = parse_subnet_request(&snapshot.annotations, config.default_spare_ips)? else {
        return Ok(None);
    };
    if snapshot.third_party && !matches!(request.ip_number, IpNumber::Fixed(_)) {
        return Err(PlanError::Unusable(format!(
            "{} {} is a third-party controller: its size is unknown, so annotation {} must give a fixed number (`N`, not `+N`)",
            snapshot.app.kind,
            snapshot.app.name,
            spiderpool_schema::annotations::ANNO_IPPOOL_IP_NUMBER
        )));
    }
    let desired = request.ip_number.desired_ips(snapshot.replicas);
    let mut pools = Vec::new();
    for item in &request.items {
        for (family, enabled) in [
            (IpFamily::V4, config.enable_ipv4),
            (IpFamily::V6, config.enable_ipv6),
        ] {
            match item.subnet(family) {
                Some(subnet) if enabled => pools.push(PlannedPool {
                    interface: item.interface.clone(),
                    family,
                    subnet: subnet.to_string(),
                    desired,
                }),
                Some(_) => {}
                None if enabled => {
                    return Err(PlanError::Unusable(format!(
                        "interface {} names no {family} SpiderSubnet, but {family} is enabled in the cluster",
                        item.interface
                    )));
                }
                None => {}
            }
        }
    }
    Ok(Some((request, pools)))
}

fn object_reference(app: &AppRef) -> ObjectReference {
    ObjectReference {
        api_version: Some(app.api_version.clone()),
        kind: Some(app.kind.clone()),
        name: Some(app.name.clone()),
        namespace: Some(app.namespace.clone()),
        uid: Some(app.uid.clone()),
        ..ObjectReference::default()
    }
}

type AppKey = (String, String, String, String);

fn key(app: &AppRef) -> AppKey {
    (
        app.api_version.clone(),
        app.kind.clone(),
        app.namespace.clone(),
        app.name.clone(),
    )
}

struct Worker {
    client: Client,
    config: SubnetControllerConfig,
    recorder: Recorder,
    sender: mpsc::UnboundedSender<AppEvent>,
    /// Snapshots already carried out, so status-only updates of an application cost nothing.
    done: HashMap<AppKey, AppSnapshot>,
    /// Every application using SpiderSubnet, for the periodic resync.
    known: HashMap<AppKey, AppSnapshot>,
    /// Consecutive failures per application, for the retry backoff.
    failures: HashMap<AppKey, u32>,
}

impl Worker {
    async fn report(&self, app: &AppRef, reason: &str, note: String) {
        tracing::warn!(application = %app.application_key(), reason, "{note}");
        let event = Event {
            type_: EventType::Warning,
            reason: reason.to_string(),
            note: Some(note),
            action: "ReconcileAutoPool".to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object_reference(app)).await {
            tracing::debug!(error = %e, "cannot publish event");
        }
    }

    fn retry_later(&mut self, snapshot: AppSnapshot) {
        let failures = self.failures.entry(key(&snapshot.app)).or_default();
        *failures = failures.saturating_add(1);
        let shift = (*failures).min(5);
        let delay = self
            .config
            .retry_delay
            .saturating_mul(1 << (shift - 1))
            .min(Duration::from_secs(120));
        let sender = self.sender.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = sender.send(AppEvent::Changed(snapshot));
        });
    }

    async fn handle(&mut self, event: AppEvent) {
        match event {
            AppEvent::Deleted(app) => {
                let k = key(&app);
                self.done.remove(&k);
                self.known.remove(&k);
                self.failures.remove(&k);
                if let Err(e) = autopool::delete_for_app(&self.client, &app).await {
                    // The IPPool controller's orphan check deletes it later anyway.
                    tracing::warn!(application = %app.application_key(), error = %e, "cannot delete automatic pools");
                }
            }
            AppEvent::Changed(snapshot) => {
                let k = key(&snapshot.app);
                if self.done.get(&k) == Some(&snapshot) {
                    return;
                }
                match plan(&snapshot, &self.config) {
                    Ok(None) => {
                        self.known.remove(&k);
                    }
                    Err(e) => {
                        self.done.insert(k.clone(), snapshot.clone());
                        self.report(&snapshot.app, "InvalidSubnetAnnotation", e.to_string())
                            .await;
                    }
                    Ok(Some((request, pools))) => {
                        self.known.insert(k.clone(), snapshot.clone());
                        let mut outcome = Ok(());
                        for planned in &pools {
                            let target = PoolTarget {
                                app: &snapshot.app,
                                interface: &planned.interface,
                                family: planned.family,
                                subnet: &planned.subnet,
                                ip_number: request.ip_number,
                                desired: planned.desired,
                                reclaim: request.reclaim,
                            };
                            if let Err(e) = autopool::ensure(&self.client, &target).await {
                                outcome = Err(e);
                                break;
                            }
                        }
                        match outcome {
                            Ok(()) => {
                                self.failures.remove(&k);
                                self.done.insert(k, snapshot);
                            }
                            Err(AutoPoolError::Invalid(reason)) => {
                                self.done.insert(k, snapshot.clone());
                                self.report(&snapshot.app, "InvalidSubnetAnnotation", reason)
                                    .await;
                            }
                            Err(AutoPoolError::Retry(reason)) => {
                                tracing::info!(application = %snapshot.app.application_key(), %reason, "automatic pool not ready; retrying");
                                if self.failures.get(&k).copied().unwrap_or(0) == 2 {
                                    self.report(&snapshot.app, "AutoPoolPending", reason).await;
                                }
                                self.retry_later(snapshot);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Turns a watch of one kind into queue events.
fn forward<K>(
    api: Api<K>,
    to_snapshot: fn(&K) -> Option<AppSnapshot>,
    sender: mpsc::UnboundedSender<AppEvent>,
) -> impl Stream<Item = ()> + Send
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |event| {
            let sender = sender.clone();
            async move {
                let message = match event {
                    Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                        to_snapshot(&obj).map(AppEvent::Changed)
                    }
                    Ok(watcher::Event::Delete(obj)) => to_snapshot(&obj).map(|s| AppEvent::Deleted(s.app)),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::debug!(error = %e, "application watch error");
                        None
                    }
                };
                if let Some(message) = message {
                    let _ = sender.send(message);
                }
                Some(())
            }
        })
}

/// Runs the application watchers and the worker. Run it only while leader.
pub async fn run(client: Client, config: SubnetControllerConfig) -> anyhow::Result<()> {
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let watches = futures::stream::select_all([
        forward(
            Api::<Deployment>::all(client.clone()),
            deployment_snapshot,
            sender.clone(),
        )
        .boxed(),
        forward(
            Api::<ReplicaSet>::all(client.clone()),
            replicaset_snapshot,
            sender.clone(),
        )
        .boxed(),
        forward(
            Api::<StatefulSet>::all(client.clone()),
            statefulset_snapshot,
            sender.clone(),
        )
        .boxed(),
        forward(
            Api::<DaemonSet>::all(client.clone()),
            daemonset_snapshot,
            sender.clone(),
        )
        .boxed(),
        forward(Api::<Job>::all(client.clone()), job_snapshot, sender.clone()).boxed(),
        forward(
            Api::<CronJob>::all(client.clone()),
            cronjob_snapshot,
            sender.clone(),
        )
        .boxed(),
        // Pods are only for third-party controllers; their deletion is handled by the IPPool
        // controller's orphan check, so pod deletions are ignored here.
        forward(
            Api::<Pod>::all(client.clone()),
            |pod: &Pod| third_party_snapshot(pod).filter(|_| pod.metadata.deletion_timestamp.is_none()),
            sender.clone(),
        )
        .map(|()| ())
        .boxed(),
    ]);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "spiderpool-controller".into(),
            instance: std::env::var("SPIDERPOOL_POD_NAME").ok(),
        },
    );
    let mut worker = Worker {
        client,
        config: config.clone(),
        recorder,
        sender: sender.clone(),
        done: HashMap::new(),
        known: HashMap::new(),
        failures: HashMap::new(),
    };
    let work = async move {
        let mut resync = tokio::time::interval(config.resync);
        resync.tick().await;
        loop {
            tokio::select! {
                event = receiver.recv() => {
                    let Some(event) = event else { break };
                    // Collapse a burst to the newest event per application.
                    let mut batch: Vec<AppEvent> = vec![event];
                    while let Ok(more) = receiver.try_recv() {
                        batch.push(more);
                    }
                    let mut latest: BTreeMap<AppKey, AppEvent> = BTreeMap::new();
                    for event in batch {
                        let k = match &event {
                            AppEvent::Changed(s) => key(&s.app),
                            AppEvent::Deleted(a) => key(a),
                        };
                        latest.insert(k, event);
                    }
                    for event in latest.into_values() {
                        worker.handle(event).await;
                    }
                }
                _ = resync.tick() => {
                    // Carry everything out again: pools changed by hand come back to their size.
                    worker.done.clear();
                    for snapshot in worker.known.values() {
                        let _ = worker.sender.send(AppEvent::Changed(snapshot.clone()));
                    }
                }
            }
        }
    };
    let drive = watches.for_each(|()| async {});
    tokio::join!(drive, work);
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use spiderpool_schema::annotations::{ANNO_IPPOOL_IP_NUMBER, ANNO_SUBNET, ANNO_SUBNETS};

    use super::*;

    fn meta(owner: Option<(&str, &str)>) -> ObjectMeta {
        ObjectMeta {
            name: Some("app".into()),
            namespace: Some("ns".into()),
            uid: Some("uid-1".into()),
            owner_references: owner.map(|(v, k)| {
                vec![OwnerReference {
                    api_version: v.into(),
                    kind: k.into(),
                    name: "top".into(),
                    uid: "top-uid".into(),
                    controller: Some(true),
                    block_owner_deletion: None,
                }]
            }),
            ..ObjectMeta::default()
        }
    }

    fn template(annotations: &[(&str, &str)], host_network: bool) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                host_network: Some(host_network),
                ..PodSpec::default()
            }),
        }
    }

    fn v4_only() -> SubnetControllerConfig {
        SubnetControllerConfig {
            enable_ipv6: false,
            ..SubnetControllerConfig::default()
        }
    }

    #[test]
    fn deployment_pool_is_replicas_plus_spare() {
        let d = Deployment {
            metadata: meta(None),
            spec: Some(DeploymentSpec {
                replicas: Some(3),
                template: template(
                    &[(ANNO_SUBNET, r#"{"ipv4":["s4"]}"#), (ANNO_IPPOOL_IP_NUMBER, "+2")],
                    false,
                ),
                ..DeploymentSpec::default()
            }),
            status: Some(DeploymentStatus::default()),
        };
        let snap = deployment_snapshot(&d).unwrap();
        assert_eq!(snap.app.label_gv(), "apps_v1");
        let (_, pools) = plan(&snap, &v4_only()).unwrap().unwrap();
        assert_eq!(
            pools,
            vec![PlannedPool {
                interface: "eth0".into(),
                family: IpFamily::V4,
                subnet: "s4".into(),
                desired: 5
            }]
        );
        // Dual-stack cluster: a v4-only annotation is refused, as upstream does.
        let e = plan(&snap, &SubnetControllerConfig::default()).unwrap_err();
        assert!(e.to_string().contains("IPv6"), "{e}");
    }

    #[test]
    fn skipped_applications() {
        let owned = ReplicaSet {
            metadata: meta(Some(("apps/v1", "Deployment"))),
            spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
                template: Some(template(&[(ANNO_SUBNET, r#"{"ipv4":["s4"]}"#)], false)),
                ..Default::default()
            }),
            status: None,
        };
        assert_eq!(plan(&replicaset_snapshot(&owned).unwrap(), &v4_only()), Ok(None));
        let host = Deployment {
            metadata: meta(None),
            spec: Some(DeploymentSpec {
                template: template(&[(ANNO_SUBNET, r#"{"ipv4":["s4"]}"#)], true),
                ..DeploymentSpec::default()
            }),
            status: None,
        };
        assert_eq!(plan(&deployment_snapshot(&host).unwrap(), &v4_only()), Ok(None));
        let plain = Deployment {
            metadata: meta(None),
            spec: Some(DeploymentSpec {
                template: template(&[], false),
                ..DeploymentSpec::default()
            }),
            status: None,
        };
        assert_eq!(plan(&deployment_snapshot(&plain).unwrap(), &v4_only()), Ok(None));
    }

    #[test]
    fn bad_annotation_is_an_error_naming_it() {
        let d = Deployment {
            metadata: meta(None),
            spec: Some(DeploymentSpec {
                template: template(&[(ANNO_SUBNETS, "not json")], false),
                ..DeploymentSpec::default()
            }),
            status: None,
        };
        let e = plan(&deployment_snapshot(&d).unwrap(), &v4_only()).unwrap_err();
        assert!(e.to_string().contains(ANNO_SUBNETS), "{e}");
    }

    #[test]
    fn job_daemonset_and_cronjob_sizes() {
        let job = Job {
            metadata: meta(None),
            spec: Some(k8s_openapi::api::batch::v1::JobSpec {
                parallelism: Some(2),
                completions: Some(4),
                template: template(&[], false),
                ..Default::default()
            }),
            status: None,
        };
        assert_eq!(job_snapshot(&job).unwrap().replicas, 4);
        let ds = DaemonSet {
            metadata: meta(None),
            spec: Some(k8s_openapi::api::apps::v1::DaemonSetSpec {
                template: template(&[], false),
                ..Default::default()
            }),
            status: Some(k8s_openapi::api::apps::v1::DaemonSetStatus {
                desired_number_scheduled: 7,
                ..Default::default()
            }),
        };
        assert_eq!(daemonset_snapshot(&ds).unwrap().replicas, 7);
        let cj = CronJob {
            metadata: meta(None),
            spec: Some(k8s_openapi::api::batch::v1::CronJobSpec {
                schedule: "* * * * *".into(),
                job_template: k8s_openapi::api::batch::v1::JobTemplateSpec {
                    metadata: None,
                    spec: Some(k8s_openapi::api::batch::v1::JobSpec {
                        parallelism: Some(3),
                        template: template(&[(ANNO_SUBNET, "{}")], false),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        };
        let snap = cronjob_snapshot(&cj).unwrap();
        assert_eq!(snap.replicas, 3);
        assert_eq!(snap.app.kind, "CronJob");
        assert!(snap.annotations.contains_key(ANNO_SUBNET));
    }

    #[test]
    fn third_party_pods_need_a_fixed_number() {
        let pod = |owner: (&str, &str), annotations: &[(&str, &str)]| Pod {
            metadata: ObjectMeta {
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..meta(Some(owner))
            },
            spec: None,
            status: None,
        };
        let anno = [(ANNO_SUBNET, r#"{"ipv4":["s4"]}"#)];
        assert_eq!(third_party_snapshot(&pod(("apps/v1", "ReplicaSet"), &anno)), None);
        assert_eq!(
            third_party_snapshot(&pod(("kubevirt.io/v1", "VirtualMachineInstance"), &anno)),
            None
        );
        assert_eq!(
            third_party_snapshot(&pod(("apps.kruise.io/v1alpha1", "CloneSet"), &[])),
            None
        );
        let snap = third_party_snapshot(&pod(("apps.kruise.io/v1alpha1", "CloneSet"), &anno)).unwrap();
        assert_eq!(snap.app.name, "top");
        assert_eq!(snap.app.uid, "top-uid");
        assert_eq!(snap.app.namespace, "ns");
        let e = plan(&snap, &v4_only()).unwrap_err();
        assert!(e.to_string().contains("fixed"), "{e}");
        let fixed = third_party_snapshot(&pod(
            ("apps.kruise.io/v1alpha1", "CloneSet"),
            &[anno[0], (ANNO_IPPOOL_IP_NUMBER, "3")],
        ))
        .unwrap();
        let (_, pools) = plan(&fixed, &v4_only()).unwrap().unwrap();
        assert_eq!(pools[0].desired, 3);
    }
}
