//! Problems found by validation: every problem names the field it is about and says what to do.
//!
//! Validation never stops at the first problem: a person fixing a topology in a pull request wants the
//! whole list at once, and so does a webhook answering `kubectl apply`.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One thing wrong with an object, with the path of the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct Problem {
    /// Field path in the object, in the form `kubectl explain` uses, e.g. `spec.subnets[1].ipv4.gateway`.
    pub path: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Collects problems while walking an object.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems {
    items: Vec<Problem>,
}

impl Problems {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem at `path`. The same problem found twice (one cause seen from two checks, or
    /// one field read for several racks) is listed once.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let problem = Problem {
            path: path.into(),
            message: message.into(),
        };
        if !self.items.contains(&problem) {
            self.items.push(problem);
        }
    }

    /// Records every problem of a garde report, under `prefix` (garde's paths use Rust field names, so
    /// they are turned into the camelCase JSON names users write).
    pub fn extend_garde(&mut self, prefix: &str, report: &garde::Report) {
        for (path, error) in report.iter() {
            let path = camel_case_path(&path.to_string());
            let full = match (prefix.is_empty(), path.is_empty()) {
                (true, _) => path,
                (false, true) => prefix.to_string(),
                (false, false) => format!("{prefix}.{path}"),
            };
            self.push(full, error.message().to_string());
        }
    }

    /// Adds problems found elsewhere.
    pub fn extend(&mut self, other: impl IntoIterator<Item = Problem>) {
        self.items.extend(other);
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of problems found so far.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The problems, in the order they were found.
    pub fn into_vec(self) -> Vec<Problem> {
        self.items
    }

    /// `Ok(())` when nothing was found, else every problem.
    pub fn into_result(self) -> Result<(), Vec<Problem>> {
        if self.items.is_empty() {
            Ok(())
        } else {
            Err(self.items)
        }
    }
}

/// Pure validation of one object.
pub trait Validate {
    /// Every problem with this object; empty when it is valid.
    fn problems(&self) -> Vec<Problem>;

    /// `Ok(())` when valid, else all problems at once.
    fn validate(&self) -> Result<(), Vec<Problem>> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// `node_selector.match_labels` -> `nodeSelector.matchLabels`; indices and map keys are kept.
fn camel_case_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper_next = false;
    let mut in_brackets = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_brackets = true;
                out.push(c);
            }
            ']' => {
                in_brackets = false;
                out.push(c);
            }
            '_' if !in_brackets => upper_next = true,
            _ if upper_next => {
                out.extend(c.to_uppercase());
                upper_next = false;
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garde_paths_become_json_names() {
        assert_eq!(
            camel_case_path("node_selector.match_labels"),
            "nodeSelector.matchLabels"
        );
        assert_eq!(camel_case_path("racks[2].vlan_id"), "racks[2].vlanId");
        assert_eq!(camel_case_path("labels[my_key]"), "labels[my_key]");
    }

    #[test]
    fn problems_collect_everything() {
        let mut p = Problems::new();
        assert!(p.clone().into_result().is_ok());
        p.push("spec.a", "first");
        p.push("spec.b", "second");
        p.push("spec.a", "first");
        let all = p.into_result().unwrap_err();
        assert_eq!(all.len(), 2, "a problem found twice is listed once");
        assert_eq!(all[1].to_string(), "spec.b: second");
    }
}
