//! The bounded rollout of a topology's SpiderInterfaceTasks, pure: which tasks are written now, which
//! wait for their turn, how far the rollout is, and where this topology's tasks conflict with
//! another topology's on a node.
//!
//! A node's task is *current* when the live task has the rendered spec; it is *done* when the node
//! reported it `Applied` at that generation, *failed* when it reported `Failed` or `RolledBack`
//! there, and *applying* otherwise. Tasks whose spec must change (or that do not exist yet) are
//! written in name order, as many as `maxUnavailable` leaves room for after the applying and failed
//! ones. More than `maxFailures` failed nodes pause the rollout: nothing more is written until the
//! spec changes (a changed task is no longer failed at its current spec) or the nodes recover. A task
//! that waits keeps its live spec, so it is neither changed nor pruned.
//!
//! With `spec.rollout.probeGateways`, every task also asks its node to check that each subnet's
//! gateway answers on the interface the subnet's networks use (the VLAN sub-interface, or the bond
//! itself for an untagged subnet).

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt as _;
use spiderpool_schema::interfacetask::{GatewayProbe, TaskPhase, TaskProbe};
use spiderpool_schema::labels::LABEL_TOPOLOGY;
use spiderpool_schema::rollout::{RolloutConflict, RolloutPolicy, RolloutProgress};
use spiderpool_schema::taskconflict::conflicts;
use spiderpool_schema::{SpiderInterfaceTask, SpiderNetwork};

/// What the rollout lets through now.
#[derive(Debug)]
pub struct Gate {
    /// The tasks to apply: current or released ones as rendered, waiting ones with their live spec.
    pub tasks: Vec<SpiderInterfaceTask>,
    pub progress: RolloutProgress,
}

/// Gates the rendered `desired` tasks of `network` against `live`, every SpiderInterfaceTask in the
/// cluster (this topology's and the others').
pub fn gate(
    network: &SpiderNetwork,
    mut desired: Vec<SpiderInterfaceTask>,
    live: &[Arc<SpiderInterfaceTask>],
) -> Gate {
    let policy = network.spec.rollout.clone().unwrap_or_default();
    if policy.probe_gateways == Some(true) {
        for task in &mut desired {
            add_gateway_probes(network, task);
        }
    }
    let topology = network.name_any();
    let ours: BTreeMap<String, &SpiderInterfaceTask> = live
        .iter()
        .filter(|t| t.labels().get(LABEL_TOPOLOGY) == Some(&topology))
        .map(|t| (t.name_any(), t.as_ref()))
        .collect();
    let max_unavailable = policy.max_unavailable(desired.len()).unwrap_or_else(|_| {
        RolloutPolicy::default()
            .max_unavailable(desired.len())
            .unwrap_or(1)
    });
    let mut progress = RolloutProgress {
        max_unavailable: count(max_unavailable),
        ..RolloutProgress::default()
    };
    let mut outdated: Vec<usize> = Vec::new();
    for (i, task) in desired.iter().enumerate() {
        let Some(current) = ours.get(&task.name_any()).filter(|l| l.spec == task.spec) else {
            outdated.push(i);
            continue;
        };
        progress.updated += 1;
        let status = current.status.as_ref().filter(|s| {
            s.observed_generation.is_some() && s.observed_generation == current.metadata.generation
        });
        match status.and_then(|s| s.phase) {
            Some(TaskPhase::Applied) => {}
            Some(TaskPhase::Failed | TaskPhase::RolledBack) => progress.failed += 1,
            _ => progress.applying += 1,
        }
    }
    progress.paused = usize::try_from(progress.failed).unwrap_or(usize::MAX) > policy.max_failures();
    let busy = usize::try_from(progress.applying + progress.failed).unwrap_or(usize::MAX);
    let room = if progress.paused {
        0
    } else {
        max_unavailable.saturating_sub(busy)
    };
    let waiting: Vec<usize> = outdated.iter().skip(room).copied().collect();
    progress.updated += count(outdated.len() - waiting.len());
    progress.applying += count(outdated.len() - waiting.len());
    progress.waiting = count(waiting.len());
    progress.conflicts = node_conflicts(&topology, &desired, live);

    let tasks = desired
        .into_iter()
        .enumerate()
        .filter_map(|(i, mut task)| {
            if !waiting.contains(&i) {
                return Some(task);
            }
            // Its turn has not come: keep what the node has, or do not create it yet.
            let live = ours.get(&task.name_any())?;
            task.spec = live.spec.clone();
            Some(task)
        })
        .collect();
    Gate { tasks, progress }
}

/// Where `desired` conflicts with another topology's live task on the same node.
fn node_conflicts(
    topology: &str,
    desired: &[SpiderInterfaceTask],
    live: &[Arc<SpiderInterfaceTask>],
) -> Vec<RolloutConflict> {
    let mut found = Vec::new();
    for task in desired {
        let name = task.name_any();
        for other in live.iter().filter(|o| {
            o.spec.node_name == task.spec.node_name
                && o.labels().get(LABEL_TOPOLOGY).map(String::as_str) != Some(topology)
        }) {
            let other_name = other.name_any();
            for conflict in conflicts(&[(&name, &task.spec), (&other_name, &other.spec)]) {
                found.push(RolloutConflict {
                    node: task.spec.node_name.clone(),
                    topology: other
                        .labels()
                        .get(LABEL_TOPOLOGY)
                        .cloned()
                        .unwrap_or(other_name.clone()),
                    message: conflict.message,
                });
            }
        }
    }
    found
}

/// Adds to `task` a probe of every subnet gateway on the interface its networks use on this node.
pub fn add_gateway_probes(network: &SpiderNetwork, task: &mut SpiderInterfaceTask) {
    let mut gateways: Vec<GatewayProbe> = Vec::new();
    for net in &network.spec.networks {
        let Some(master) = &net.master else { continue };
        let Some(subnet) = network.spec.subnets.iter().find(|s| s.name == net.subnet) else {
            continue;
        };
        let vlan = net.vlan.or(subnet.vlan).unwrap_or(0);
        let interface = if vlan == 0 {
            task.spec
                .bonds
                .iter()
                .find(|b| &b.name == master)
                .map(|b| b.name.clone())
        } else {
            task.spec
                .vlans
                .iter()
                .find(|v| &v.parent == master && v.id == vlan)
                .map(|v| v.interface_name())
        };
        let Some(interface) = interface else { continue };
        for family in [&subnet.ipv4, &subnet.ipv6].into_iter().flatten() {
            if let Some(address) = &family.gateway {
                let probe = GatewayProbe {
                    interface: interface.clone(),
                    address: address.clone(),
                };
                if !gateways.contains(&probe) {
                    gateways.push(probe);
                }
            }
        }
    }
    if !gateways.is_empty() {
        task.spec.probe = Some(TaskProbe {
            gateways,
            timeout_seconds: None,
        });
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use spiderpool_schema::interfacetask::Bond;
    use spiderpool_schema::{SpiderInterfaceTaskSpec, SpiderInterfaceTaskStatus};

    use super::*;

    fn network(yaml: &str) -> SpiderNetwork {
        serde_saphyr::from_str(&format!(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderNetwork\nmetadata: {{name: dc1}}\nspec:\n  subnets:\n  - {{name: storage, vlan: 200, ipv4: {{cidr: 10.20.0.0/16, gateway: 10.20.0.1}}, ipv6: {{cidr: 'fd00:20::/64', gateway: 'fd00:20::1'}}}}\n  - {{name: mgmt, ipv4: {{cidr: 10.30.0.0/16, gateway: 10.30.0.1}}}}\n  racks:\n  - {{name: r1, nodeSelector: {{matchLabels: {{rack: r1}}}}, ranges: [{{subnet: storage, ipv4: [10.20.1.10-10.20.1.20]}}]}}\n  networks:\n  - {{name: storage, type: macvlan, subnet: storage, master: bond0, namespaces: [db]}}\n  - {{name: mgmt, type: macvlan, subnet: mgmt, master: bond0, namespaces: [db]}}\n{yaml}"
        ))
        .unwrap()
    }

    fn task(node: &str, mode: &str) -> SpiderInterfaceTask {
        let mut task = SpiderInterfaceTask::new(
            &format!("dc1-{node}"),
            SpiderInterfaceTaskSpec {
                node_name: node.into(),
                bonds: vec![Bond {
                    name: "bond0".into(),
                    interfaces: vec!["ens1".into(), "ens2".into()],
                    mode: serde_json::from_value(serde_json::json!(mode)).unwrap(),
                    ..Bond::default()
                }],
                ..SpiderInterfaceTaskSpec::default()
            },
        );
        task.metadata.labels = Some(BTreeMap::from([(LABEL_TOPOLOGY.to_owned(), "dc1".to_owned())]));
        task
    }

    fn live(task: &SpiderInterfaceTask, phase: Option<TaskPhase>) -> Arc<SpiderInterfaceTask> {
        let mut live = task.clone();
        live.metadata.generation = Some(1);
        live.status = phase.map(|phase| SpiderInterfaceTaskStatus {
            observed_generation: Some(1),
            phase: Some(phase),
            ..SpiderInterfaceTaskStatus::default()
        });
        Arc::new(live)
    }

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("n{i:02}")).collect()
    }

    #[test]
    fn a_new_topology_starts_on_max_unavailable_nodes() {
        let net = network("  rollout: {maxUnavailable: 3}\n");
        let desired: Vec<_> = nodes(10).iter().map(|n| task(n, "802.3ad")).collect();
        let gate = gate(&net, desired, &[]);
        assert_eq!(
            gate.tasks.len(),
            3,
            "tasks that do not exist yet wait by not being created"
        );
        assert_eq!(
            (
                gate.progress.updated,
                gate.progress.applying,
                gate.progress.waiting,
                gate.progress.paused
            ),
            (3, 3, 7, false)
        );
    }

    #[test]
    fn a_change_goes_out_as_nodes_finish_and_waiting_ones_keep_their_spec() {
        let net = network("");
        let old: Vec<_> = nodes(8).iter().map(|n| task(n, "active-backup")).collect();
        let desired: Vec<_> = nodes(8).iter().map(|n| task(n, "802.3ad")).collect();
        // Default 25% of 8 = 2. n00 has the new spec and is still applying; the rest are on the old one.
        let mut live_tasks: Vec<_> = old
            .iter()
            .skip(1)
            .map(|t| live(t, Some(TaskPhase::Applied)))
            .collect();
        live_tasks.push(live(&desired[0], Some(TaskPhase::Applying)));
        let gate = gate(&net, desired.clone(), &live_tasks);
        assert_eq!(gate.progress.max_unavailable, 2);
        let changed: Vec<&str> = gate
            .tasks
            .iter()
            .filter(|t| t.spec.bonds[0].mode == desired[0].spec.bonds[0].mode)
            .map(|t| t.spec.node_name.as_str())
            .collect();
        assert_eq!(changed, ["n00", "n01"], "one more node may start");
        assert_eq!(gate.tasks.len(), 8, "waiting tasks stay, with the spec they have");
        assert_eq!((gate.progress.applying, gate.progress.waiting), (2, 6));
    }

    #[test]
    fn a_failure_pauses_the_rollout_until_the_spec_changes() {
        let net = network("");
        let desired: Vec<_> = nodes(4).iter().map(|n| task(n, "802.3ad")).collect();
        let old = task("n01", "active-backup");
        let live_tasks = vec![
            live(&desired[0], Some(TaskPhase::RolledBack)),
            live(&old, Some(TaskPhase::Applied)),
        ];
        let gate = gate(&net, desired.clone(), &live_tasks);
        assert!(gate.progress.paused);
        assert_eq!((gate.progress.failed, gate.progress.waiting), (1, 3));
        assert_eq!(
            gate.tasks.len(),
            2,
            "n00 as it is, n01 kept on its old spec, n02 and n03 not created"
        );
        assert_eq!(gate.tasks[1].spec, old.spec);

        // A spec change (here: the mode again) makes n00's failure history: the rollout goes on.
        let fixed: Vec<_> = nodes(4).iter().map(|n| task(n, "balance-xor")).collect();
        let gate = super::gate(&net, fixed, &live_tasks);
        assert!(!gate.progress.paused);
        assert_eq!(gate.progress.applying, 1);

        let tolerant = network("  rollout: {maxFailures: 1}\n");
        assert!(!super::gate(&tolerant, desired, &live_tasks).progress.paused);
    }

    #[test]
    fn conflicts_with_another_topology_on_a_node_are_found() {
        let net = network("");
        let mut theirs = task("n00", "active-backup");
        theirs.metadata.name = Some("dc2-n00".into());
        theirs.metadata.labels = Some(BTreeMap::from([(LABEL_TOPOLOGY.to_owned(), "dc2".to_owned())]));
        let gate = gate(
            &net,
            vec![task("n00", "802.3ad"), task("n01", "802.3ad")],
            &[Arc::new(theirs)],
        );
        assert_eq!(gate.progress.conflicts.len(), 1);
        assert_eq!(gate.progress.conflicts[0].node, "n00");
        assert_eq!(gate.progress.conflicts[0].topology, "dc2");
        assert!(
            gate.progress.conflicts[0]
                .message
                .starts_with("bond0 is bond bond0 of [ens1, ens2] mode 802.3ad in dc1-n00")
        );
    }

    #[test]
    fn gateway_probes_follow_the_networks() {
        let net = network("  rollout: {probeGateways: true}\n");
        let mut t = task("n00", "802.3ad");
        t.spec
            .vlans
            .push(spiderpool_schema::interfacetask::VlanInterface {
                parent: "bond0".into(),
                id: 200,
                name: None,
                mtu: None,
            });
        add_gateway_probes(&net, &mut t);
        let probes: Vec<(String, String)> = t
            .spec
            .probe
            .unwrap()
            .gateways
            .into_iter()
            .map(|g| (g.interface, g.address))
            .collect();
        assert_eq!(
            probes,
            [
                ("bond0.200".to_owned(), "10.20.0.1".to_owned()),
                ("bond0.200".to_owned(), "fd00:20::1".to_owned()),
                ("bond0".to_owned(), "10.30.0.1".to_owned()),
            ]
        );
    }
}
