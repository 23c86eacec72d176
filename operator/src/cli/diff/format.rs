//! The diff as text. [`report`] goes to stdout and is empty when nothing would change (so
//! `spiderctl diff ... && echo in sync` reads as `kubectl diff` does); [`summary`] is one line per
//! topology for stderr.
//!
//! Markers as in a unified diff: `+` created, `-` pruned, `~` changed, `!` not applied (a name
//! conflict), `=` applied again once its deletion finishes. Values are JSON, `(none)` for absent.

use std::fmt::Write as _;

use serde_json::Value;

use super::addresses::AddressFinding;
use super::fields::FieldChange;
use super::{Change, TopologyDiff};

/// Allocations listed per pool before the rest are counted.
const LISTED: usize = 10;

/// The changes of one topology; empty when there are none.
pub fn report(diff: &TopologyDiff) -> String {
    let mut out = String::new();
    if !diff.has_changes() {
        return out;
    }
    let _ = writeln!(out, "SpiderNetwork {} ({}):", diff.name, diff.source);
    if let Some(change) = &diff.network {
        object(&mut out, &format!("SpiderNetwork {}", diff.name), change);
    }
    for child in &diff.children {
        object(&mut out, &child.id, &child.change);
    }
    if !diff.addresses.is_empty() {
        out.push_str("  allocated addresses:\n");
        for finding in &diff.addresses {
            address(&mut out, finding);
        }
    }
    if diff.refused() {
        out.push_str(
            "  the operator applies none of these changes while allocated addresses would move \
             (Ready=False, reason AddressesInUse): release them or revert the change\n",
        );
    }
    out
}

/// `SpiderNetwork NAME: 1 to create, 2 to change, ...` or `SpiderNetwork NAME: no changes (...)`.
pub fn summary(diff: &TopologyDiff) -> String {
    let mut create = 0;
    let mut update = 0;
    let mut prune = 0;
    let mut conflict = 0;
    let mut terminating = 0;
    for change in diff.network.iter().chain(diff.children.iter().map(|c| &c.change)) {
        match change {
            Change::Create => create += 1,
            Change::Update(_) => update += 1,
            Change::Prune => prune += 1,
            Change::Conflict(_) => conflict += 1,
            Change::Terminating => terminating += 1,
        }
    }
    let unchanged = counted(diff.unchanged, "child", "children");
    if !diff.has_changes() {
        return format!(
            "SpiderNetwork {}: no changes ({unchanged} as rendered)\n",
            diff.name
        );
    }
    let mut parts = Vec::new();
    for (n, what) in [
        (create, "to create"),
        (update, "to change"),
        (prune, "to prune"),
        (terminating, "waiting for deletion"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    if conflict > 0 {
        parts.push(counted(conflict, "name conflict", "name conflicts"));
    }
    parts.push(format!("{} unchanged", diff.unchanged));
    let moving: usize = diff
        .addresses
        .iter()
        .map(|f| match f {
            AddressFinding::PrunedInUse { count, .. } => usize::try_from(*count).unwrap_or(usize::MAX),
            AddressFinding::Dropped { addresses, .. } => addresses.len(),
            AddressFinding::ChangedInUse { .. } => 0,
        })
        .sum();
    if moving > 0 {
        parts.push(format!(
            "{} would move (refused)",
            counted(moving, "allocated address", "allocated addresses")
        ));
    }
    format!("SpiderNetwork {}: {}\n", diff.name, parts.join(", "))
}

fn object(out: &mut String, id: &str, change: &Change) {
    match change {
        Change::Create => {
            let _ = writeln!(out, "+ {id}");
        }
        Change::Prune => {
            let _ = writeln!(out, "- {id} (no longer rendered)");
        }
        Change::Conflict(owner) => {
            let _ = writeln!(
                out,
                "! {id}: exists and {owner}; the operator leaves it alone and does not apply it"
            );
        }
        Change::Terminating => {
            let _ = writeln!(out, "= {id}: being deleted; applied again once it is gone");
        }
        Change::Update(changes) => {
            let _ = writeln!(out, "~ {id}");
            for change in changes {
                field(out, change);
            }
        }
    }
}

fn field(out: &mut String, change: &FieldChange) {
    let _ = writeln!(
        out,
        "    {}: {} -> {}",
        change.path,
        value(change.old.as_ref()),
        value(change.new.as_ref())
    );
}

fn value(value: Option<&Value>) -> String {
    value.map_or_else(|| "(none)".to_string(), Value::to_string)
}

fn address(out: &mut String, finding: &AddressFinding) {
    match finding {
        AddressFinding::PrunedInUse {
            pool,
            allocated,
            count,
        } => {
            let listed = if allocated.is_empty() {
                String::from("not listed in status.allocatedIPs")
            } else {
                holders(allocated)
            };
            let _ = writeln!(
                out,
                "    would move: SpiderIPPool {pool} is pruned with {}: {listed}",
                counted(
                    usize::try_from(*count).unwrap_or(usize::MAX),
                    "allocated address",
                    "allocated addresses"
                )
            );
        }
        AddressFinding::Dropped { pool, addresses } => {
            let _ = writeln!(
                out,
                "    would move: SpiderIPPool {pool} no longer hands out {}: {}",
                counted(addresses.len(), "allocated address", "allocated addresses"),
                holders(addresses)
            );
        }
        AddressFinding::ChangedInUse { pool, count, fields } => {
            let _ = writeln!(
                out,
                "    in use: SpiderIPPool {pool} changes ({}) while {} allocated; none leaves the pool, \
                 and running pods keep their old settings until restarted",
                fields.join(", "),
                counted(
                    usize::try_from(*count).unwrap_or(usize::MAX),
                    "address is",
                    "addresses are"
                )
            );
        }
    }
}

fn holders(allocated: &[(String, String)]) -> String {
    let mut text: Vec<String> = allocated
        .iter()
        .take(LISTED)
        .map(|(ip, holder)| format!("{ip} ({holder})"))
        .collect();
    if allocated.len() > LISTED {
        text.push(format!("and {} more", allocated.len() - LISTED));
    }
    text.join(", ")
}

fn counted(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}
