//! The seeded random workload: each slot is a pod name that one worker drives through its life the
//! way a user and a kubelet would, one step at a time, with the steps picked by the slot's own random
//! stream: create, ADD (new sandbox), ADD again (a retried ADD of the same sandbox), DEL, DEL again,
//! delete (graceful: DEL, then the pod goes), force-delete (the pod goes at once, the sandbox is torn
//! down right after) and force-delete with the pod recreated under the same name before the old
//! sandbox is gone. Sandboxes whose ADD or teardown failed are DELed again until that succeeds, as
//! the kubelet does.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use super::ledger::PodRef;
use super::rng::Rng;
use super::run::Run;
use super::world::TIGHT_POOL;

/// The workload's pods: `tight` slots on the tight pool (pods annotated with it, so agents can
/// reserve ahead), then `dual` slots on the dual-stack pools (named by the network configuration).
#[derive(Debug, Clone, Copy)]
pub struct WorkloadOptions {
    pub tight: usize,
    pub dual: usize,
}

/// A sandbox the slot's kubelet still has to DEL.
#[derive(Debug, Clone)]
struct Teardown {
    container: String,
    pod: PodRef,
    node: usize,
}

#[derive(Debug, Clone)]
struct SlotPod {
    pod: PodRef,
    node: usize,
    /// The live sandbox.
    sandbox: Option<String>,
}

struct Slot<'a> {
    run: &'a Run,
    name: String,
    dual: bool,
    rng: Rng,
    pod: Option<SlotPod>,
    teardowns: Vec<Teardown>,
    sandboxes: u64,
    recreations: u64,
}

/// Runs slot `index` until the run stops, then tears its pod down.
pub async fn slot_worker(run: &Run, index: usize, options: WorkloadOptions) {
    let dual = index >= options.tight;
    let mut slot = Slot {
        run,
        name: format!("w{index}"),
        dual,
        rng: Rng::stream(run.seed, index as u64),
        pod: None,
        teardowns: Vec::new(),
        sandboxes: 0,
        recreations: 0,
    };
    loop {
        if run.stopping.load(Ordering::SeqCst) {
            break;
        }
        run.busy.fetch_add(1, Ordering::SeqCst);
        slot.kubelet().await;
        if !run.paused.load(Ordering::SeqCst) {
            slot.step().await;
            slot.kubelet().await;
        }
        run.busy.fetch_sub(1, Ordering::SeqCst);
        let think = slot.rng.between(100, 1200);
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
    run.busy.fetch_add(1, Ordering::SeqCst);
    slot.tear_down().await;
    run.busy.fetch_sub(1, Ordering::SeqCst);
}

impl Slot<'_> {
    fn annotations(&self) -> Value {
        if self.dual {
            json!({})
        } else {
            json!({"ipam.spidernet.io/ippool": json!({"ipv4": [TIGHT_POOL]}).to_string()})
        }
    }

    /// The kubelet's duty: DEL every sandbox that must go, as long as it fails (bounded per call).
    async fn kubelet(&mut self) {
        let mut left = Vec::new();
        for teardown in std::mem::take(&mut self.teardowns) {
            let ok = self
                .run
                .del(
                    &self.name,
                    "kubelet DEL",
                    teardown.node,
                    self.dual,
                    &teardown.container,
                    &teardown.pod,
                )
                .await
                .is_ok();
            if !ok {
                left.push(teardown);
            }
        }
        self.teardowns = left;
    }

    /// Whether the slot's kubelet still has sandboxes to DEL.
    fn pending(&self) -> bool {
        !self.teardowns.is_empty()
    }

    fn live_node(&mut self) -> Option<usize> {
        let nodes: Vec<usize> = (0..self.run.world.nodes.len())
            .filter(|i| !self.run.world.nodes[*i].deleted.load(Ordering::SeqCst))
            .collect();
        self.rng.pick(&nodes).copied()
    }

    fn new_container(&mut self) -> String {
        self.sandboxes += 1;
        format!("{}-{}-{}", self.name, self.recreations, self.sandboxes)
    }

    async fn create(&mut self) -> bool {
        let Some(node) = self.live_node() else {
            return false;
        };
        let node_name = self.run.world.nodes[node].name.clone();
        let created = self
            .run
            .create_pod(&self.name, &node_name, &self.annotations())
            .await;
        self.run.count_op("create", created.is_ok());
        match created {
            Ok(uid) => {
                self.run
                    .note(&self.name, &format!("create {}@{node_name} uid={uid}", self.name));
                self.pod = Some(SlotPod {
                    pod: PodRef {
                        namespace: self.run.namespace().to_owned(),
                        name: self.name.clone(),
                        uid,
                        node: node_name,
                        member: false,
                    },
                    node,
                    sandbox: None,
                });
                true
            }
            Err(err) => {
                self.run
                    .note(&self.name, &format!("create {} FAILED {err:#}", self.name));
                false
            }
        }
    }

    async fn add_new(&mut self) {
        let Some(current) = self.pod.clone() else { return };
        let container = self.new_container();
        match self
            .run
            .add(
                &self.name,
                "ADD",
                current.node,
                self.dual,
                &container,
                &current.pod,
            )
            .await
        {
            Ok(_) => {
                if let Some(p) = &mut self.pod {
                    p.sandbox = Some(container);
                }
            }
            // The runtime tears a sandbox whose ADD failed down with a DEL.
            Err(_) => self.teardowns.push(Teardown {
                container,
                pod: current.pod,
                node: current.node,
            }),
        }
    }

    async fn add_again(&mut self) {
        let Some(current) = self.pod.clone() else { return };
        let Some(container) = current.sandbox.clone() else {
            return;
        };
        if self
            .run
            .add(
                &self.name,
                "ADD again",
                current.node,
                self.dual,
                &container,
                &current.pod,
            )
            .await
            .is_err()
        {
            // A failed ADD: the runtime tears the sandbox down.
            if let Some(p) = &mut self.pod {
                p.sandbox = None;
            }
            self.teardowns.push(Teardown {
                container,
                pod: current.pod,
                node: current.node,
            });
        }
    }

    /// The sandbox dies (the pod stays; its next sandbox gets a new ADD).
    async fn del(&mut self) {
        let Some(current) = self.pod.clone() else { return };
        let Some(container) = current.sandbox.clone() else {
            return;
        };
        if let Some(p) = &mut self.pod {
            p.sandbox = None;
        }
        let ok = self
            .run
            .del(
                &self.name,
                "DEL",
                current.node,
                self.dual,
                &container,
                &current.pod,
            )
            .await
            .is_ok();
        if !ok {
            self.teardowns.push(Teardown {
                container,
                pod: current.pod,
                node: current.node,
            });
        } else if self.rng.chance(40) {
            // A repeated DEL must succeed and change nothing.
            let _ = self
                .run
                .del(
                    &self.name,
                    "DEL again",
                    current.node,
                    self.dual,
                    &container,
                    &current.pod,
                )
                .await;
        }
    }

    /// Graceful deletion: the pod terminates, its kubelet DELs the sandbox, then removes the pod.
    async fn delete(&mut self) {
        let Some(current) = self.pod.clone() else { return };
        let deleted = self.run.delete_pod(&self.name, &current.pod.uid, 30).await;
        self.run.count_op("delete", deleted.is_ok());
        if let Err(err) = deleted {
            self.run.note(&self.name, &format!("delete FAILED {err:#}"));
            return;
        }
        self.run
            .note(&self.name, &format!("delete uid={} (graceful)", current.pod.uid));
        if let Some(container) = current.sandbox {
            self.teardowns.push(Teardown {
                container,
                pod: current.pod.clone(),
                node: current.node,
            });
        }
        if let Some(p) = &mut self.pod {
            p.sandbox = None;
        }
        self.kubelet().await;
        // The kubelet removes the pod once its sandbox is gone; until then the slot stays terminating.
        while self.pending() && !self.run.stopping.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.kubelet().await;
        }
        let finalized = self.run.delete_pod(&self.name, &current.pod.uid, 0).await;
        self.run.count_op("finalize", finalized.is_ok());
        match finalized {
            Ok(()) => self.pod = None,
            Err(err) => self.run.note(&self.name, &format!("finalize FAILED {err:#}")),
        }
    }

    /// The pod goes at once; its sandbox is torn down right after, or only after a new pod of the
    /// same name was created (and maybe given its ADD).
    async fn force_delete(&mut self, recreate: bool) {
        let Some(current) = self.pod.clone() else { return };
        let deleted = self.run.delete_pod(&self.name, &current.pod.uid, 0).await;
        self.run.count_op(
            if recreate {
                "force-delete+recreate"
            } else {
                "force-delete"
            },
            deleted.is_ok(),
        );
        if let Err(err) = deleted {
            self.run.note(&self.name, &format!("force-delete FAILED {err:#}"));
            return;
        }
        self.run
            .note(&self.name, &format!("force-delete uid={}", current.pod.uid));
        super::world::lock(&self.run.ledger).pod_force_deleted(&current.pod.uid);
        self.pod = None;
        if let Some(container) = current.sandbox {
            self.teardowns.push(Teardown {
                container,
                pod: current.pod,
                node: current.node,
            });
        }
        if recreate {
            self.recreations += 1;
            if self.create().await && self.rng.chance(50) {
                self.add_new().await;
            }
        }
        self.kubelet().await;
    }

    /// One random step for the slot's state.
    async fn step(&mut self) {
        let Some(current) = self.pod.clone() else {
            self.create().await;
            return;
        };
        if current.sandbox.is_none() {
            // [ADD, delete, force-delete]
            match self.rng.weighted(&[8, 1, 1]) {
                Some(0) => self.add_new().await,
                Some(1) => self.delete().await,
                _ => self.force_delete(false).await,
            }
        } else {
            // [ADD again, DEL, delete, force-delete, force-delete + recreate]
            match self.rng.weighted(&[3, 2, 3, 1, 2]) {
                Some(0) => self.add_again().await,
                Some(1) => self.del().await,
                Some(2) => self.delete().await,
                Some(3) => self.force_delete(false).await,
                _ => self.force_delete(true).await,
            }
        }
    }

    /// The end: the sandbox goes and the pod is deleted, retrying until both are done.
    async fn tear_down(&mut self) {
        if let Some(current) = self.pod.clone()
            && let Some(container) = current.sandbox
        {
            self.teardowns.push(Teardown {
                container,
                pod: current.pod,
                node: current.node,
            });
        }
        for _ in 0..200 {
            self.kubelet().await;
            if let Some(current) = self.pod.clone() {
                match self.run.delete_pod(&self.name, &current.pod.uid, 0).await {
                    Ok(()) => self.pod = None,
                    Err(err) => self.run.note(&self.name, &format!("final delete FAILED {err:#}")),
                }
            }
            if self.pod.is_none() && !self.pending() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        self.run.note(&self.name, "tear-down gave up after 200 attempts");
    }
}
