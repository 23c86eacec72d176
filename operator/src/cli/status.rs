//! `spiderctl status NAME`: a live SpiderNetwork's status as a person reads it: the conditions, the
//! node interface rollout, the rendered object counts, the capacity per subnet, rack and app binding,
//! and the problems. [`format`] is pure (tested on statuses built in memory); [`fetch`] reads the
//! object with the kubeconfig kubectl would use.

use std::fmt::Write as _;
use std::path::Path;

use kube::Api;
use spiderpool_schema::SpiderNetwork;
use spiderpool_schema::network::{AddressCounts, CapacityEntry};

use super::connect::{self, ConnectError};

/// Why the live object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// No client could be made.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The API server refused or failed the read.
    #[error("reading SpiderNetwork {name}: {source}")]
    Get {
        /// The topology.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// Reads SpiderNetwork `name` (cluster-scoped) through `kubeconfig`, or the configuration kubectl would
/// infer (`$KUBECONFIG`, `~/.kube/config`, in-cluster).
pub async fn fetch(name: &str, kubeconfig: Option<&Path>) -> Result<SpiderNetwork, StatusError> {
    let client = connect::client(kubeconfig).await?;
    Api::<SpiderNetwork>::all(client)
        .get(name)
        .await
        .map_err(|source| StatusError::Get {
            name: name.to_owned(),
            source,
        })
}

/// The status as text, one section per part that is present.
pub fn format(network: &SpiderNetwork) -> String {
    let mut out = String::new();
    let name = network.metadata.name.as_deref().unwrap_or_default();
    let generation = network.metadata.generation.unwrap_or_default();
    let Some(status) = &network.status else {
        let _ = writeln!(
            out,
            "SpiderNetwork {name} (generation {generation}): no status yet (is the operator running?)"
        );
        return out;
    };
    let observed = status
        .observed_generation
        .map_or_else(|| "none".to_owned(), |g| g.to_string());
    let stale = if status.observed_generation == Some(generation) {
        ""
    } else {
        " (not yet observed: the status describes an older generation)"
    };
    let _ = writeln!(
        out,
        "SpiderNetwork {name}: generation {generation}, observed {observed}{stale}"
    );
    if !status.conditions.is_empty() {
        out.push_str("\nConditions:\n");
        let rows: Vec<[String; 4]> = status
            .conditions
            .iter()
            .map(|c| {
                [
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                ]
            })
            .collect();
        table(&mut out, ["TYPE", "STATUS", "REASON", "MESSAGE"], &rows);
    }
    if let Some(nodes) = &status.nodes {
        let _ = writeln!(
            out,
            "\nNodes: {} applied of {} selected, {} pending, {} failed",
            nodes.applied, nodes.selected, nodes.pending, nodes.failed
        );
        for failure in &nodes.failures {
            let _ = writeln!(out, "  failed {}: {}", failure.node, failure.message);
        }
    }
    if let Some(rollout) = &status.rollout {
        let _ = writeln!(
            out,
            "\nRollout: {} updated ({} applying), {} waiting, {} failed, at most {} at a time{}",
            rollout.updated,
            rollout.applying,
            rollout.waiting,
            rollout.failed,
            rollout.max_unavailable,
            if rollout.paused { ", PAUSED" } else { "" }
        );
        for conflict in &rollout.conflicts {
            let _ = writeln!(
                out,
                "  conflict on {} with topology {}: {}",
                conflict.node, conflict.topology, conflict.message
            );
        }
    }
    if let Some(counts) = &status.counts {
        let _ = writeln!(
            out,
            "\nRendered: {} SpiderIPPools, {} SpiderReservedIPs, {} SpiderMultusConfigs, {} NetworkAttachmentDefinitions, {} SpiderInterfaceTasks",
            counts.ip_pools,
            counts.reserved_ips,
            counts.multus_configs,
            counts.network_attachment_definitions,
            counts.interface_tasks
        );
    }
    if let Some(capacity) = &status.capacity {
        let _ = writeln!(
            out,
            "\nCapacity (nearly full at {}%):",
            capacity.threshold_percent
        );
        let mut rows = Vec::new();
        for (scope, entries) in [
            ("subnet", &capacity.subnets),
            ("rack", &capacity.racks),
            ("app", &capacity.apps),
        ] {
            rows.extend(entries.iter().flat_map(|entry| capacity_rows(scope, entry)));
        }
        table(
            &mut out,
            ["SCOPE", "NAME", "FAMILY", "TOTAL", "ALLOCATED", "FREE", "USED"],
            &rows,
        );
        if let Some(more) = capacity.apps_not_listed {
            let _ = writeln!(out, "  ({more} less full app bindings not listed)");
        }
    }
    if !status.problems.is_empty() {
        out.push_str("\nProblems:\n");
        for problem in &status.problems {
            let _ = writeln!(out, "  {problem}");
        }
    }
    out
}

fn capacity_rows(scope: &str, entry: &CapacityEntry) -> Vec<[String; 7]> {
    [("IPv4", entry.ipv4), ("IPv6", entry.ipv6)]
        .into_iter()
        .filter_map(|(family, counts)| counts.map(|c| (family, c)))
        .map(
            |(
                family,
                AddressCounts {
                    total,
                    allocated,
                    free,
                },
            )| {
                let used = if total > 0 {
                    format!("{}%", allocated.saturating_mul(100) / total)
                } else {
                    "-".to_owned()
                };
                [
                    scope.to_owned(),
                    entry.name.clone(),
                    family.to_owned(),
                    total.to_string(),
                    allocated.to_string(),
                    free.to_string(),
                    used,
                ]
            },
        )
        .collect()
}

/// Left-aligned columns, two spaces apart, indented by two; the last column is not padded.
fn table<const N: usize>(out: &mut String, header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut text = String::from(" ");
        for (i, cell) in cells.iter().enumerate() {
            text.push(' ');
            if i + 1 == N {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$} ", width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use spiderpool_schema::SpiderNetworkStatus;
    use spiderpool_schema::network::{Capacity, NodeFailure, NodeRollout};
    use spiderpool_schema::rollout::RolloutProgress;

    use super::*;

    fn network(status: Option<SpiderNetworkStatus>) -> SpiderNetwork {
        let mut network: SpiderNetwork = serde_json::from_value(serde_json::json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1",
            "kind": "SpiderNetwork",
            "metadata": {"name": "fabric", "generation": 3},
            "spec": {"subnets": [], "racks": []},
        }))
        .expect("a minimal SpiderNetwork");
        network.status = status;
        network
    }

    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(3),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn a_paused_rollout_shows_its_conditions_failures_and_capacity() {
        let counts = |total, allocated| AddressCounts {
            total,
            allocated,
            free: total - allocated,
        };
        let status = SpiderNetworkStatus {
            observed_generation: Some(3),
            conditions: vec![
                condition(
                    "Ready",
                    "False",
                    "RolloutPaused",
                    "the interface rollout is paused",
                ),
                condition("CapacityLow", "True", "NearlyFull", "rack r1 is 95% full"),
            ],
            nodes: Some(NodeRollout {
                summary: "1/3".into(),
                selected: 3,
                applied: 1,
                pending: 1,
                failed: 1,
                failures: vec![NodeFailure {
                    node: "n2".into(),
                    message: "RolledBack: gateway 10.0.0.1 did not answer".into(),
                }],
            }),
            rollout: Some(RolloutProgress {
                max_unavailable: 1,
                updated: 2,
                applying: 0,
                waiting: 1,
                failed: 1,
                paused: true,
                conflicts: Vec::new(),
            }),
            capacity: Some(Capacity {
                threshold_percent: 90,
                subnets: vec![CapacityEntry {
                    name: "v4".into(),
                    ipv4: Some(counts(200, 100)),
                    ipv6: None,
                }],
                racks: vec![CapacityEntry {
                    name: "r1".into(),
                    ipv4: Some(counts(20, 19)),
                    ipv6: Some(counts(0, 0)),
                }],
                apps: Vec::new(),
                apps_not_listed: None,
            }),
            ..SpiderNetworkStatus::default()
        };
        let text = format(&network(Some(status)));
        let expected = "\
SpiderNetwork fabric: generation 3, observed 3

Conditions:
  TYPE         STATUS  REASON         MESSAGE
  Ready        False   RolloutPaused  the interface rollout is paused
  CapacityLow  True    NearlyFull     rack r1 is 95% full

Nodes: 1 applied of 3 selected, 1 pending, 1 failed
  failed n2: RolledBack: gateway 10.0.0.1 did not answer

Rollout: 2 updated (0 applying), 1 waiting, 1 failed, at most 1 at a time, PAUSED

Capacity (nearly full at 90%):
  SCOPE   NAME  FAMILY  TOTAL  ALLOCATED  FREE  USED
  subnet  v4    IPv4    200    100        100   50%
  rack    r1    IPv4    20     19         1     95%
  rack    r1    IPv6    0      0          0     -
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn an_unobserved_generation_and_a_missing_status_are_said() {
        let text = format(&network(None));
        assert!(text.contains("no status yet"), "{text}");
        let old = SpiderNetworkStatus {
            observed_generation: Some(2),
            ..SpiderNetworkStatus::default()
        };
        let text = format(&network(Some(old)));
        assert!(
            text.starts_with("SpiderNetwork fabric: generation 3, observed 2 (not yet observed"),
            "{text}"
        );
    }
}
