//! How a SpiderNetwork's interface changes reach its nodes: a bounded rollout (`spec.rollout`) and
//! its progress (`status.rollout`).
//!
//! The operator writes a changed SpiderInterfaceTask to at most `maxUnavailable` nodes at a time
//! (counting nodes still applying and nodes whose task failed), waits for them to report `Applied`,
//! then goes on; once more than `maxFailures` nodes have failed or rolled back at the current spec,
//! it writes no further task (the rollout is paused) until the spec changes or the failed nodes
//! recover.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The default of `maxUnavailable`: a quarter of the nodes (at least one).
pub const DEFAULT_MAX_UNAVAILABLE: &str = "25%";

/// How interface changes roll out to the nodes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPolicy {
    /// Most nodes changing their interfaces at once (nodes applying, or failed, at the current spec):
    /// a number, or a percentage of the nodes with a task, rounded down, at least 1. Default `25%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("type(self) == int ? self >= 1 : self.matches('^([1-9][0-9]?|100)%$')").message("must be a number of nodes (at least 1) or a percentage (1%-100%)"))]
    pub max_unavailable: Option<IntOrString>,
    /// How many nodes may fail (or roll back) at the current spec before the rollout pauses. Default 0:
    /// the first failure pauses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_failures: Option<i32>,
    /// Check, after a node applies its task, that each subnet's gateway answers (ARP or neighbour
    /// solicitation) on the interface its networks use; a gateway that does not answer rolls the
    /// node back. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_gateways: Option<bool>,
}

impl RolloutPolicy {
    /// `maxUnavailable` for `nodes` nodes with a task: at least 1. `Err` names what is wrong.
    pub fn max_unavailable(&self, nodes: usize) -> Result<usize, String> {
        let value = self
            .max_unavailable
            .clone()
            .unwrap_or_else(|| IntOrString::String(DEFAULT_MAX_UNAVAILABLE.to_owned()));
        let resolved = match value {
            IntOrString::Int(n) => usize::try_from(n).map_err(|_| format!("{n} is not a number of nodes"))?,
            IntOrString::String(text) => {
                let percent: usize = text
                    .strip_suffix('%')
                    .and_then(|p| p.parse().ok())
                    .filter(|p| (1..=100).contains(p))
                    .ok_or_else(|| format!("`{text}` is not a number of nodes or a percentage (1%-100%)"))?;
                nodes * percent / 100
            }
        };
        Ok(resolved.max(1))
    }

    /// `maxFailures`, default 0.
    pub fn max_failures(&self) -> usize {
        self.max_failures
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0)
    }
}

/// Where the rollout of the interface tasks stands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutProgress {
    /// `maxUnavailable` resolved against the nodes with a task.
    pub max_unavailable: i64,
    /// Nodes whose task has the current spec.
    pub updated: i64,
    /// Of those, nodes still applying it.
    pub applying: i64,
    /// Nodes whose task waits for its turn (it still has the previous spec, or does not exist yet).
    pub waiting: i64,
    /// Nodes that failed or rolled back at the current spec.
    pub failed: i64,
    /// No further task is written: more than `maxFailures` nodes failed.
    pub paused: bool,
    /// Nodes where this topology's task conflicts with another topology's (neither is applied there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<RolloutConflict>,
}

/// A node where two topologies' tasks cannot both hold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutConflict {
    /// The node.
    pub node: String,
    /// The other topology.
    pub topology: String,
    /// How the tasks disagree.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(value: Option<IntOrString>) -> RolloutPolicy {
        RolloutPolicy {
            max_unavailable: value,
            ..RolloutPolicy::default()
        }
    }

    #[test]
    fn max_unavailable_is_a_count_or_a_share_and_at_least_one() {
        assert_eq!(policy(None).max_unavailable(10), Ok(2));
        assert_eq!(policy(None).max_unavailable(3), Ok(1));
        assert_eq!(policy(Some(IntOrString::Int(3))).max_unavailable(10), Ok(3));
        assert_eq!(
            policy(Some(IntOrString::String("50%".into()))).max_unavailable(5),
            Ok(2)
        );
        assert_eq!(
            policy(Some(IntOrString::String("100%".into()))).max_unavailable(5),
            Ok(5)
        );
        assert!(
            policy(Some(IntOrString::String("150%".into())))
                .max_unavailable(5)
                .is_err()
        );
        assert!(policy(Some(IntOrString::Int(-1))).max_unavailable(5).is_err());
        assert_eq!(RolloutPolicy::default().max_failures(), 0);
    }
}
