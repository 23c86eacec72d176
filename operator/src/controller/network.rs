//! The SpiderNetwork controller: compiles each topology and keeps its children (SpiderReservedIPs,
//! SpiderIPPools, SpiderMultusConfigs, SpiderInterfaceTasks) applied, and reports in the status.
//!
//! Pipeline of one reconcile (the I/O stays here; [`plan`] and [`status`] are pure):
//! 1. [`compile`](crate::compile::compile) the spec. Problems: write status `Ready=False` reason
//!    `Invalid` with every problem and its spec path, `Stalled=True`; change nothing else.
//! 2. Expand the per-rack interface templates against the live Nodes (watched; any node label change
//!    re-reconciles every topology).
//! 3. Give every child a controller owner reference to the SpiderNetwork (only the SpiderNetwork: a deleted node's
//!    task is pruned like any child no longer rendered), strip GitOps tracking labels,
//!    and stamp the rendered hash ([`diff`]).
//! 4. [`plan::plan`] against the watch caches of the child kinds: only what differs is written, so a
//!    reconcile with nothing to do makes no write at all; children labelled with this topology and
//!    the operator's managed-by label that are no longer rendered are deleted; objects of others are
//!    never touched.
//! 5. Write, phase by phase, with bounded concurrency, by server-side apply (field manager
//!    [`FIELD_MANAGER`], forced, as a controller should).
//! 6. Write the status (conditions, observedGeneration, counts, node rollout, problems), only if it
//!    changed.
//! 7. Count the addresses in use per subnet, rack and app binding ([`capacity`]) and write them (with
//!    the `CapacityLow` condition) under their own field manager, only if they changed; the same
//!    figures go to the metrics.
//!
//! A new generation is acknowledged before any of that (observedGeneration with `Reconciling=True`),
//! so kstatus and Argo CD never read an older generation's `Ready` as current while a large topology
//! is being applied. Events on the SpiderNetwork record refusals (invalid spec, addresses in use),
//! prunes, and capacity turning low.
//!
//! Pool status changes (every allocation) do not reconcile a topology ([`trigger`]); they mark its
//! capacity for a recount, which runs every [`Options::capacity_interval`] for the marked topologies.
//!
//! NetworkAttachmentDefinitions are rendered by the compiler for `spiderctl render`, but applied by the
//! SpiderMultusConfig controller from the live SpiderMultusConfigs (one renderer, one owner).
//!
//! Addresses in use are never moved: see [`plan`] (the whole topology waits, reason `AddressesInUse`).
//!
//! Cancel-safety: dropping the future returned by [`run`] stops every reconcile at once (kube-runtime
//! aborts the spawned reconcilers); every step is idempotent, so the next leader just carries on.

pub mod capacity;
pub mod diff;
pub mod node_trigger;
pub mod plan;
pub mod report;
pub mod rollout;
pub mod status;
pub mod trigger;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::{Api, DeleteParams, DynamicObject, PartialObjectMeta, Patch, PatchParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use spiderpool_schema::labels::{ANNOTATION_SOURCE, LABEL_MANAGED_BY, LABEL_TOPOLOGY, MANAGED_BY};
use spiderpool_schema::network::RenderedCounts;
use spiderpool_schema::validation::Problem;
use spiderpool_schema::{
    SpiderIPPool, SpiderInterfaceTask, SpiderMultusConfig, SpiderNetwork, SpiderNetworkStatus,
    SpiderReservedIP,
};
use tracing::{debug, info, instrument, warn};

use self::plan::{ChildKey, ChildObject, DesiredChild, LiveObject, RecentWrites, Write};
use self::status::{Outcome, StatusInput};
use super::cache::{CacheEvent, SharedCache};
use crate::compile::{Rendered, compile, expand_interface_tasks};
use crate::metrics::Metrics;

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "network";
/// Server-side apply field manager of everything this controller writes.
pub const FIELD_MANAGER: &str = "spiderpool-operator/network";
/// Field manager of `status.capacity` and the `CapacityLow` condition (written apart from the rest of
/// the status, so neither write removes the other's fields).
pub const CAPACITY_FIELD_MANAGER: &str = "spiderpool-operator/network-capacity";

/// Tuning of the controller.
#[derive(Debug, Clone)]
pub struct Options {
    /// Writes in flight at once while applying a topology.
    pub apply_concurrency: usize,
    /// Topologies reconciled at once.
    pub concurrency: u16,
    /// Quiet time after the last event before a topology is reconciled. Events of one burst (our own
    /// writes echoing back, several objects applied at once) arrive within milliseconds of each
    /// other, and this lets one reconcile take them all. It is kept short because it is added to
    /// every edit's latency, and because any event inside the window restarts it (kube-runtime's
    /// debounce), so a long one could postpone a reconcile for as long as events keep coming. Pool
    /// status churn, the one steady stream of child events, does not wake the controller at all
    /// ([`trigger`]); events that arrive while a topology is being reconciled are coalesced into one
    /// follow-up reconcile whatever the debounce.
    pub debounce: Duration,
    /// Periodic re-check of an applied topology (drift on objects whose events we do not map).
    pub resync: Duration,
    /// How often the capacity of topologies whose pools' status changed is counted again.
    pub capacity_interval: Duration,
    /// Where the capacity figures go (`spiderpool_network_addresses`); none: status only.
    pub capacity_metrics: Option<capacity::CapacityMetrics>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            apply_concurrency: 32,
            concurrency: 4,
            debounce: Duration::from_millis(50),
            resync: Duration::from_secs(300),
            capacity_interval: Duration::from_secs(5),
            capacity_metrics: None,
        }
    }
}

/// Why a reconcile failed (write failures are not errors: they are reported in the status and
/// retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object lacks metadata the API server always sets.
    #[error("SpiderNetwork has no metadata.{0}")]
    MissingMetadata(&'static str),
    /// A watch cache was dropped before it was filled (the controller is shutting down).
    #[error("the watch cache of {0} stopped before it was filled")]
    CacheNotReady(&'static str),
    /// A rendered object could not be serialized.
    #[error("serializing {key}: {source}")]
    Serialize {
        /// Which object.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The status could not be written.
    #[error("writing the status of SpiderNetwork {name}: {source}")]
    Status {
        /// Which topology.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Stable category for the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MissingMetadata(_) => "missing_metadata",
            Error::CacheNotReady(_) => "cache_not_ready",
            Error::Serialize { .. } => "serialize",
            Error::Status { .. } => "status",
        }
    }
}

/// Watch caches of everything the controller compares against.
#[derive(Clone)]
struct Caches {
    pools: Store<SpiderIPPool>,
    reserved: Store<SpiderReservedIP>,
    multus: Store<SpiderMultusConfig>,
    tasks: Store<SpiderInterfaceTask>,
    nodes: Store<PartialObjectMeta<Node>>,
}

impl Caches {
    async fn wait_until_ready(&self) -> Result<(), Error> {
        self.pools
            .wait_until_ready()
            .await
            .map_err(|_| Error::CacheNotReady("SpiderIPPool"))?;
        self.reserved
            .wait_until_ready()
            .await
            .map_err(|_| Error::CacheNotReady("SpiderReservedIP"))?;
        self.multus
            .wait_until_ready()
            .await
            .map_err(|_| Error::CacheNotReady("SpiderMultusConfig"))?;
        self.tasks
            .wait_until_ready()
            .await
            .map_err(|_| Error::CacheNotReady("SpiderInterfaceTask"))?;
        self.nodes
            .wait_until_ready()
            .await
            .map_err(|_| Error::CacheNotReady("Node"))?;
        Ok(())
    }

    /// Live children that are ours for `topology` or hold a name we render.
    fn live_children(&self, topology: &str, wanted: &HashSet<ChildKey>) -> BTreeMap<ChildKey, LiveObject> {
        let mut live = BTreeMap::new();
        let mut take = |object: LiveObject| {
            let key = object.key();
            if object.belongs_to(topology) || wanted.contains(&key) {
                live.insert(key, object);
            }
        };
        self.reserved
            .state()
            .into_iter()
            .for_each(|o| take(LiveObject::ReservedIp(o)));
        self.pools
            .state()
            .into_iter()
            .for_each(|o| take(LiveObject::IpPool(o)));
        self.multus
            .state()
            .into_iter()
            .for_each(|o| take(LiveObject::MultusConfig(o)));
        self.tasks
            .state()
            .into_iter()
            .for_each(|o| take(LiveObject::InterfaceTask(o)));
        live
    }
}

/// Shared by every reconcile.
struct Context {
    client: Client,
    metrics: Arc<Metrics>,
    caches: Caches,
    options: Options,
    /// Per topology UID: our recent child writes the caches may not show yet.
    recent: Mutex<HashMap<String, RecentWrites>>,
    /// Per topology UID: the resourceVersion our last status write produced and that status.
    recent_status: Mutex<HashMap<String, (u64, SpiderNetworkStatus)>>,
    /// Names of the topologies refused with `AddressesInUse`: status changes of their pools wake
    /// them ([`trigger`]).
    waiting_for_addresses: Arc<Mutex<HashSet<String>>>,
    /// Names of the topologies whose pools changed since their capacity was last counted.
    capacity_dirty: Arc<Mutex<HashSet<String>>>,
    /// Per topology UID: the capacity status and condition last written.
    recent_capacity: Mutex<HashMap<String, (SpiderNetworkCapacity, Condition)>>,
    /// Events on SpiderNetworks.
    recorder: Recorder,
}

/// `status.capacity` as written.
type SpiderNetworkCapacity = spiderpool_schema::network::Capacity;

/// Runs the controller until the future is dropped (or the SpiderNetwork watch ends).
pub async fn run(client: Client, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    run_with(client, metrics, Options::default()).await
}

/// [`run`] with explicit [`Options`].
pub async fn run_with(client: Client, metrics: Arc<Metrics>, options: Options) -> anyhow::Result<()> {
    let pools = SharedCache::<SpiderIPPool>::new(&client);
    let controller = run_shared(client, metrics, options, &pools);
    pools.run_alongside(controller).await
}

/// [`run_with`] on a pool cache shared with other controllers (the caller drives the cache).
pub fn run_shared(
    client: Client,
    metrics: Arc<Metrics>,
    options: Options,
    pools: &SharedCache<SpiderIPPool>,
) -> impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static {
    let waiting_for_addresses: Arc<Mutex<HashSet<String>>> = Arc::default();
    let capacity_dirty: Arc<Mutex<HashSet<String>>> = Arc::default();
    let store = pools.store();
    let mut seen = trigger::SeenChildren::default();
    let waiting = waiting_for_addresses.clone();
    let dirty = capacity_dirty.clone();
    // See [`trigger`]: status-only pool changes wake only topologies waiting for addresses.
    let pool_events = pools.subscribe().filter_map(move |event| {
        let wake = match event {
            CacheEvent::Applied(pool) => {
                let changed = seen.changed_apart_from_status(pool.as_ref());
                if let Some(topology) = topology_of(pool.as_ref()) {
                    lock(&dirty).insert(topology.name);
                }
                let waiting = || {
                    topology_of(pool.as_ref()).is_some_and(|topology| {
                        waiting
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .contains(&topology.name)
                    })
                };
                (changed || waiting()).then_some(pool)
            }
            CacheEvent::Deleted(pool) => {
                seen.forget(&pool.name_any());
                Some(pool)
            }
            CacheEvent::Relisted => {
                seen.retain(|name| store.get(&ObjectRef::new(name)).is_some());
                None
            }
        };
        std::future::ready(wake)
    });
    // Pools deleted while the watch was down leave no event: a relist re-checks every topology.
    let relisted = pools
        .subscribe()
        .filter_map(|event| std::future::ready(matches!(event, CacheEvent::Relisted).then_some(())));
    run_on(
        client,
        metrics,
        options,
        Pools {
            store: pools.store(),
            events: pool_events,
            relisted,
            waiting_for_addresses,
            capacity_dirty,
        },
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The pool side of the controller's inputs.
struct Pools<E, R> {
    store: Store<SpiderIPPool>,
    /// Pool events that should wake their topology.
    events: E,
    /// One item per relist of the pool watch.
    relisted: R,
    /// Topologies refused with `AddressesInUse`, which status changes of their pools wake.
    waiting_for_addresses: Arc<Mutex<HashSet<String>>>,
    /// Topologies whose pools changed since their capacity was counted.
    capacity_dirty: Arc<Mutex<HashSet<String>>>,
}

async fn run_on(
    client: Client,
    metrics: Arc<Metrics>,
    options: Options,
    pools: Pools<
        impl Stream<Item = Arc<SpiderIPPool>> + Send + 'static,
        impl Stream<Item = ()> + Send + 'static,
    >,
) -> anyhow::Result<()> {
    let (reserved, reserved_events) = cache::<SpiderReservedIP>(&client);
    let (multus, multus_events) = cache::<SpiderMultusConfig>(&client);
    let (tasks, task_events) = cache::<SpiderInterfaceTask>(&client);
    let (nodes, node_writer) = reflector::store::<PartialObjectMeta<Node>>();
    // Label changes (rack selectors match labels) and deletions (a gone node's task is pruned: the
    // topology is a task's only owner) matter; node heartbeats are ignored.
    let node_events = reflector::reflector(
        node_writer,
        watcher(
            Api::<PartialObjectMeta<Node>>::all(client.clone()),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .modify(|node| node.managed_fields_mut().clear()),
    )
    .scan(HashMap::new(), |labels, event| {
        futures::future::ready(Some(node_trigger::node_change(labels, event)))
    })
    .filter_map(futures::future::ready);

    let controller = Controller::new(
        Api::<SpiderNetwork>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .with_config(
        controller::Config::default()
            .debounce(options.debounce)
            .concurrency(options.concurrency),
    );
    let networks = controller.store();
    let capacity_networks = controller.store();
    let controller = controller
        .watches_shared_stream(pools.events, |pool| topology_of(pool.as_ref()))
        .reconcile_all_on(pools.relisted)
        .watches_stream(reserved_events, |object| topology_of(&object))
        .watches_stream(multus_events, |object| topology_of(&object))
        .watches_stream(task_events, |object| topology_of(&object))
        .watches_stream(node_events, move |_node: PartialObjectMeta<Node>| {
            // Few topologies, rare label changes: re-check all of them rather than working out which
            // ones the node matched before and after.
            networks
                .state()
                .iter()
                .map(|n| ObjectRef::from_obj(n.as_ref()))
                .collect::<Vec<_>>()
        });
    let context = Arc::new(Context {
        metrics,
        caches: Caches {
            pools: pools.store,
            reserved,
            multus,
            tasks,
            nodes,
        },
        options,
        recent: Mutex::new(HashMap::new()),
        recent_status: Mutex::new(HashMap::new()),
        waiting_for_addresses: pools.waiting_for_addresses,
        capacity_dirty: pools.capacity_dirty,
        recent_capacity: Mutex::new(HashMap::new()),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "spiderpool-operator".into(),
                instance: std::env::var("SPIDERPOOL_POD_NAME").ok(),
            },
        ),
        client,
    });
    info!("SpiderNetwork controller started");
    let recount = recount_capacity(context.clone(), capacity_networks);
    let reconciles = controller
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(network = %object.name, "reconciled"),
                Err(controller::Error::ObjectNotFound(object)) => {
                    debug!(network = %object.name, "deleted before it was reconciled");
                }
                Err(err) => warn!(error = %err, "SpiderNetwork controller"),
            }
        });
    // Both stop when this future is dropped; the recount never ends on its own.
    futures::future::select(Box::pin(reconciles), Box::pin(recount)).await;
    anyhow::bail!("the SpiderNetwork controller stopped: its watch of SpiderNetworks ended")
}

/// Counts the capacity of the topologies whose pools changed, every `capacity_interval`.
async fn recount_capacity(ctx: Arc<Context>, networks: Store<SpiderNetwork>) {
    let mut tick = tokio::time::interval(ctx.options.capacity_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let names: Vec<String> = lock(&ctx.capacity_dirty).drain().collect();
        for name in names {
            let Some(network) = networks.get(&ObjectRef::new(&name)) else {
                continue;
            };
            if network.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Err(error) = ctx.write_capacity(&network).await {
                // Counted again at the next change or reconcile.
                debug!(network = %name, %error, "writing the capacity");
                lock(&ctx.capacity_dirty).insert(name);
            }
        }
    }
}

/// A watch cache of every object of a kind, and its events (deletions included) as a trigger stream.
/// managedFields are dropped: they are most of an object's size and the controller never reads them.
pub(crate) fn cache<K>(
    client: &Client,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let events = reflector::reflector(
        writer,
        watcher(
            Api::<K>::all(client.clone()),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .modify(|object| object.managed_fields_mut().clear()),
    )
    .touched_objects();
    (reader, events)
}

/// The topology a generated object belongs to, from its labels.
fn topology_of<K: Resource>(object: &K) -> Option<ObjectRef<SpiderNetwork>> {
    let labels = object.meta().labels.as_ref()?;
    if labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY) {
        return None;
    }
    Some(ObjectRef::new(labels.get(LABEL_TOPOLOGY)?))
}

fn error_policy(network: Arc<SpiderNetwork>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(CONTROLLER, error.metric_label());
    warn!(network = %network.name_any(), %error, "reconcile failed; retrying in 5 s");
    Action::requeue(Duration::from_secs(5))
}

#[instrument(skip_all, fields(network = %network.name_any()))]
async fn reconcile(network: Arc<SpiderNetwork>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    ctx.caches.wait_until_ready().await?;
    if network.metadata.deletion_timestamp.is_some() {
        // Children go with it through their owner references.
        ctx.set_waiting_for_addresses(&network.name_any(), false);
        ctx.forget_capacity(&network);
        return Ok(Action::await_change());
    }
    let name = network
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingMetadata("name"))?;
    let uid = network
        .metadata
        .uid
        .clone()
        .ok_or(Error::MissingMetadata("uid"))?;

    ctx.acknowledge(&network).await?;
    // A new generation may change the pools or the threshold: count again once this is done.
    lock(&ctx.capacity_dirty).insert(name.clone());

    let started = std::time::Instant::now();
    let rendered = match compile(&network) {
        Ok(rendered) => rendered,
        Err(problems) => {
            info!(problems = problems.len(), "topology is invalid; nothing applied");
            ctx.finish(&network, Outcome::Invalid, problems, None, None)
                .await?;
            return Ok(Action::await_change());
        }
    };
    let nodes: Vec<Node> = ctx
        .caches
        .nodes
        .state()
        .iter()
        .map(|node| Node {
            metadata: node.metadata.clone(),
            ..Node::default()
        })
        .collect();
    let tasks = match expand_interface_tasks(&network, &rendered.interface_templates, &nodes) {
        Ok(tasks) => tasks,
        Err(problems) => {
            info!(
                problems = problems.len(),
                "racks conflict on some nodes; nothing applied"
            );
            ctx.finish(&network, Outcome::Invalid, problems, None, None)
                .await?;
            return Ok(Action::await_change());
        }
    };
    let counts = RenderedCounts {
        ip_pools: count(rendered.ip_pools.len()),
        reserved_ips: count(rendered.reserved_ips.len()),
        multus_configs: count(rendered.multus_configs.len()),
        network_attachment_definitions: count(rendered.network_attachment_definitions.len()),
        interface_tasks: count(tasks.len()),
    };
    let task_nodes: Vec<(String, String)> = tasks
        .iter()
        .map(|t| (t.name_any(), t.spec.node_name.clone()))
        .collect();
    // The bounded rollout: only some changed tasks are written now (see rollout.rs).
    let gate = rollout::gate(&network, tasks, &ctx.caches.tasks.state());
    let (tasks, progress) = (gate.tasks, gate.progress);
    let owner = OwnerReference {
        api_version: SpiderNetwork::api_version(&()).to_string(),
        kind: SpiderNetwork::kind(&()).to_string(),
        name: name.clone(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let compiled = started.elapsed();
    let desired = desired_children(rendered, tasks, &owner)?;
    let stamped = started.elapsed();
    let wanted: HashSet<ChildKey> = desired.iter().map(|d| d.key.clone()).collect();
    let live = ctx.caches.live_children(&name, &wanted);
    let plan = {
        let mut recent = ctx
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let recent = recent.entry(uid.clone()).or_default();
        recent.prune(&live);
        plan::plan(&name, desired, &live, recent)
    };
    let live_tasks: BTreeMap<String, Arc<SpiderInterfaceTask>> = live
        .values()
        .filter_map(|o| match o {
            LiveObject::InterfaceTask(t) => Some((t.name_any(), t.clone())),
            _ => None,
        })
        .collect();
    let rollout = status::rollout(&task_nodes, &live_tasks, &plan.tasks_written);

    if !plan.in_use.is_empty() {
        info!(
            problems = plan.in_use.len(),
            "applying would remove allocated addresses; nothing applied"
        );
        let mut problems = plan.in_use;
        problems.extend(plan.conflicts);
        ctx.finish(
            &network,
            Outcome::AddressesInUse,
            problems,
            Some(counts),
            Some((rollout, progress)),
        )
        .await?;
        return Ok(Action::requeue(ctx.options.resync));
    }
    let planned = started.elapsed();
    let writes = plan.writes();
    let (failures, mut pruned) = ctx.execute(&uid, plan.phases).await;
    if !pruned.is_empty() {
        pruned.sort();
        let note = format!(
            "pruned {} object(s) the topology no longer renders: {}",
            pruned.len(),
            crate::webhook::brief_list(&pruned)
        );
        ctx.event(&network, EventType::Normal, "Pruned", "Prune", &note)
            .await;
    }
    debug!(
        writes,
        unchanged = plan.unchanged,
        conflicts = plan.conflicts.len(),
        compile_ms = compiled.as_millis() as u64,
        stamp_ms = (stamped - compiled).as_millis() as u64,
        plan_ms = (planned - stamped).as_millis() as u64,
        write_ms = (started.elapsed() - planned).as_millis() as u64,
        "applied"
    );
    let mut problems = plan.conflicts;
    let (outcome, requeue) = if !failures.is_empty() {
        ctx.metrics.reconcile_failed(CONTROLLER, "apply");
        let summary = format!(
            "{} write(s) failed and are retried: first: {}",
            failures.len(),
            failures[0].message
        );
        warn!(failed = failures.len(), first = %failures[0], "writes failed");
        problems.extend(failures);
        (Outcome::ApplyFailed(summary), Duration::from_secs(10))
    } else if !problems.is_empty() {
        (Outcome::NameConflict, Duration::from_secs(30))
    } else if plan.terminating > 0 {
        (Outcome::WaitingForDeletion, Duration::from_secs(2))
    } else {
        (Outcome::Applied, ctx.options.resync)
    };
    ctx.finish(
        &network,
        outcome,
        problems,
        Some(counts),
        Some((rollout, progress)),
    )
    .await?;
    Ok(Action::requeue(requeue))
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Every child as it is to be applied. Takes the rendered objects by value: each is given its
/// owners and hash stamp in place, so no child is copied.
pub fn desired_children(
    rendered: Rendered,
    tasks: Vec<SpiderInterfaceTask>,
    owner: &OwnerReference,
) -> Result<Vec<DesiredChild>, Error> {
    let Rendered {
        reserved_ips,
        ip_pools,
        multus_configs,
        ..
    } = rendered;
    let mut out =
        Vec::with_capacity(reserved_ips.len() + ip_pools.len() + multus_configs.len() + tasks.len());
    let owners = || vec![owner.clone()];
    for object in reserved_ips {
        out.push(desired_child(
            ChildObject::ReservedIp(Box::new(object)),
            owners(),
            None,
        )?);
    }
    for object in ip_pools {
        let usable = plan::pool_usable(&object.spec);
        out.push(desired_child(
            ChildObject::IpPool(Box::new(object)),
            owners(),
            usable,
        )?);
    }
    for object in multus_configs {
        out.push(desired_child(
            ChildObject::MultusConfig(Box::new(object)),
            owners(),
            None,
        )?);
    }
    for task in tasks {
        // Only the SpiderNetwork owns a task: the garbage collector deletes a dependent only when
        // every owner is gone, so a second owner (the Node) would keep a deleted topology's tasks,
        // and the bonds and VLANs the agent made for them, until the node went. A deleted or
        // relabelled node's task is pruned by the reconcile its Node event triggers.
        let owners = owners();
        let source = format!("node {}", task.spec.node_name);
        let mut child = desired_child(ChildObject::InterfaceTask(Box::new(task)), owners, None)?;
        child.source = source;
        out.push(child);
    }
    Ok(out)
}

fn desired_child(
    mut object: ChildObject,
    owners: Vec<OwnerReference>,
    usable: Option<spiderpool_ipmath::IpSet>,
) -> Result<DesiredChild, Error> {
    let meta = object.meta();
    let key = ChildKey {
        kind: object.kind(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
    };
    let source = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_SOURCE))
        .cloned()
        .unwrap_or_else(|| key.to_string());
    object.clear_status();
    let meta = object.meta_mut();
    meta.owner_references = Some(owners);
    diff::strip_tracking(meta);
    let hash = object.stamp_hash().map_err(|source| Error::Serialize {
        key: key.to_string(),
        source,
    })?;
    Ok(DesiredChild {
        key,
        object,
        hash,
        source,
        usable,
    })
}

impl Context {
    /// Whether status changes of the topology's pools should wake it (see [`trigger`]).
    fn set_waiting_for_addresses(&self, topology: &str, waiting: bool) {
        let mut set = self
            .waiting_for_addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if waiting {
            set.insert(topology.to_string());
        } else {
            set.remove(topology);
        }
    }

    /// Runs the writes phase by phase; stops after a phase with failures (later phases rely on the
    /// earlier ones). Returns the failures as problems.
    /// Also returns the children pruned.
    async fn execute(&self, topology_uid: &str, phases: [Vec<Write>; 4]) -> (Vec<Problem>, Vec<String>) {
        let mut failures = Vec::new();
        let mut pruned = Vec::new();
        for phase in phases {
            if phase.is_empty() {
                continue;
            }
            let results: Vec<(Write, Result<Option<u64>, kube::Error>)> = stream::iter(phase)
                .map(|write| async move {
                    let result = self.write(&write).await;
                    (write, result)
                })
                .buffer_unordered(self.options.apply_concurrency.max(1))
                .collect()
                .await;
            let mut recent = self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let recent = recent.entry(topology_uid.to_string()).or_default();
            for (write, result) in results {
                match (write, result) {
                    (Write::Apply(child), Ok(Some(rv))) => {
                        recent.verified.insert(child.key.clone(), (rv, child.hash));
                        recent.applied.insert(child.key, (rv, child.hash));
                    }
                    (Write::Delete { key, uid }, Ok(_)) => {
                        pruned.push(key.to_string());
                        recent.deleted.insert(key, uid);
                    }
                    (_, Ok(None)) => {}
                    (write, Err(err)) => failures.push(failure(&write, &err)),
                }
            }
            if !failures.is_empty() {
                break;
            }
        }
        (failures, pruned)
    }

    async fn write(&self, write: &Write) -> Result<Option<u64>, kube::Error> {
        let key = write.key();
        let resource = key.kind.api_resource();
        let api: Api<DynamicObject> = match &key.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        };
        match write {
            Write::Apply(child) => {
                self.metrics.count_write(CONTROLLER, "apply");
                let params = PatchParams::apply(FIELD_MANAGER).force();
                let applied = api
                    .patch(&key.name, &params, &Patch::Apply(&child.object))
                    .await?;
                debug!(object = %key, "applied");
                Ok(applied.metadata.resource_version.and_then(|rv| rv.parse().ok()))
            }
            Write::Delete { uid, .. } => {
                self.metrics.count_write(CONTROLLER, "delete");
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::background()
                };
                match api.delete(&key.name, &params).await {
                    Ok(_) => {
                        info!(object = %key, "pruned");
                        Ok(None)
                    }
                    // Gone already, or replaced by a new object with another UID: nothing to prune.
                    Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(None),
                    Err(err) => Err(err),
                }
            }
        }
    }

    /// Writes the status if it differs from what is stored.
    async fn finish(
        &self,
        network: &SpiderNetwork,
        outcome: Outcome,
        problems: Vec<Problem>,
        counts: Option<RenderedCounts>,
        nodes: Option<(
            spiderpool_schema::network::NodeRollout,
            spiderpool_schema::rollout::RolloutProgress,
        )>,
    ) -> Result<(), Error> {
        let name = network.name_any();
        self.set_waiting_for_addresses(&name, outcome == Outcome::AddressesInUse);
        let uid = network.metadata.uid.clone().unwrap_or_default();
        // The cache may not show our last status write yet; then that write is the stored status.
        let stored = self.stored_status(network);
        let previous = stored.as_ref();
        let problems_note = problems_summary(&problems);
        let new = status::build(StatusInput {
            generation: network.metadata.generation,
            outcome,
            problems,
            counts,
            rollout: nodes.as_ref().map(|(_, progress)| progress.clone()),
            nodes: nodes.map(|(nodes, _)| nodes),
            previous,
            now: Time(k8s_openapi::jiff::Timestamp::now()),
        });
        if previous.is_some_and(|old| status::same(old, &new)) {
            return Ok(());
        }
        self.warning_event(network, &new, previous, &problems_note).await;
        let api: Api<SpiderNetwork> = Api::all(self.client.clone());
        let patch = json!({
            "apiVersion": SpiderNetwork::api_version(&()),
            "kind": SpiderNetwork::kind(&()),
            "status": new,
        });
        self.metrics.count_write(CONTROLLER, "status");
        let writing = std::time::Instant::now();
        let written = api
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|source| Error::Status {
                name: name.clone(),
                source,
            })?;
        debug!(status_ms = writing.elapsed().as_millis() as u64, "status written");
        if let Some(rv) = written.metadata.resource_version.and_then(|rv| rv.parse().ok()) {
            let stored = written.status.unwrap_or(new);
            self.recent_status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(uid, (rv, stored));
        }
        Ok(())
    }
}

/// The first problems, for an Event's note (the status lists them all).
fn problems_summary(problems: &[Problem]) -> String {
    const SHOWN: usize = 3;
    let mut text: Vec<String> = problems.iter().take(SHOWN).map(ToString::to_string).collect();
    if problems.len() > SHOWN {
        text.push(format!(
            "and {} more (see status.problems)",
            problems.len() - SHOWN
        ));
    }
    text.join("; ")
}

/// A failed write as a status problem, at the spec path the object comes from.
fn failure(write: &Write, err: &kube::Error) -> Problem {
    let path = match write {
        Write::Apply(child) => child.source.clone(),
        Write::Delete { key, .. } => key.to_string(),
    };
    let message = match err {
        kube::Error::Api(status)
            if status.code == 404
                && write.key().namespace.is_some()
                && status.message.contains("namespaces") =>
        {
            format!(
                "{}: namespace `{}` does not exist; create it (the object is applied once it does)",
                write.key(),
                write.key().namespace.as_deref().unwrap_or_default()
            )
        }
        kube::Error::Api(status) => format!("{}: {} ({})", write.key(), status.message, status.reason),
        other => format!("{}: {other}", write.key()),
    };
    Problem { path, message }
}
