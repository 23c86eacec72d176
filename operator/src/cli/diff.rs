//! `spiderctl diff -f FILE`: what applying a topology file would change in a live cluster, before it
//! is applied (a pull request's review, or `kubectl diff`'s role for a SpiderNetwork).
//!
//! The answer must be the controller's, not a guess next to it, so the diff takes the controller's
//! own steps: the children are stamped by [`desired_children`](crate::controller::network::desired_children)
//! (owner reference, tracking labels stripped, rendered hash), interface tasks are expanded against
//! the live Nodes, and a child counts as unchanged exactly when the controller would not write it
//! ([`plan::holds`]). Every other rendered child goes through a server-side dry-run apply with the
//! controller's field manager and apply parameters, so defaulting and admission webhooks are part of
//! what is compared; children labelled with the topology that it no longer renders are pruned, as the
//! controller prunes them.
//!
//! Layout: this file is the pure middle ([`classify`] what needs a dry run, [`assemble`] the report
//! from the dry runs' answers); [`fields`] compares two objects field by field, [`addresses`] finds
//! allocated addresses that would move, [`format`] prints the report, and [`cluster`] is the thin
//! I/O shell (the reads and dry runs).

pub mod addresses;
pub mod cluster;
pub mod fields;
pub mod format;

use std::collections::{BTreeMap, HashSet};

use self::addresses::AddressFinding;
use self::fields::FieldChange;
use crate::controller::network::plan::{self, ChildKey, DesiredChild, LiveObject};

/// What happens to one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// It does not exist and would be created.
    Create,
    /// It exists and these fields would change.
    Update(Vec<FieldChange>),
    /// The topology no longer renders it: the controller deletes it.
    Prune,
    /// An object of that name exists and is not this topology's: the controller leaves it alone and
    /// does not apply the rendered one. The text says whose it is.
    Conflict(String),
    /// It is being deleted; the controller applies it again once it is gone.
    Terminating,
}

/// One object and its change.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectChange {
    /// `<Kind> <namespace>/<name>` or `<Kind> <name>`.
    pub id: String,
    /// What happens to it.
    pub change: Change,
}

/// Everything applying one topology would change.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TopologyDiff {
    /// The SpiderNetwork's name.
    pub name: String,
    /// `<file>: document <n>`.
    pub source: String,
    /// The SpiderNetwork itself; `None` when its spec is as live.
    pub network: Option<Change>,
    /// Changed children, in the order of their keys (kind, namespace, name).
    pub children: Vec<ObjectChange>,
    /// Children already as rendered.
    pub unchanged: usize,
    /// Pools whose allocated addresses the change touches.
    pub addresses: Vec<AddressFinding>,
}

impl TopologyDiff {
    /// Whether applying would change anything.
    pub fn has_changes(&self) -> bool {
        self.network.is_some() || !self.children.is_empty()
    }

    /// Whether the operator would refuse the change because allocated addresses would move.
    pub fn refused(&self) -> bool {
        self.addresses.iter().any(AddressFinding::moves)
    }
}

/// A rendered child the controller would write, with the live object it would replace.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The child as the controller applies it.
    pub child: DesiredChild,
    /// The live object, if there is one.
    pub live: Option<LiveObject>,
}

/// The rendered children sorted by what the controller would do with them.
#[derive(Debug, Default)]
pub struct Classified {
    /// To be written: dry-run them to see how.
    pub pending: Vec<Pending>,
    /// Changes known without a dry run (prunes, conflicts, objects being deleted).
    pub known: Vec<(ChildKey, Change)>,
    /// Pools to be pruned that hold allocations.
    pub addresses: Vec<AddressFinding>,
    /// Already as rendered.
    pub unchanged: usize,
}

/// Keys of the rendered children, to tell the controller's live objects from the others'.
pub fn wanted(desired: &[DesiredChild]) -> HashSet<ChildKey> {
    desired.iter().map(|d| d.key.clone()).collect()
}

/// Sorts the rendered children by the controller's rules ([`plan::plan`]): objects of others are
/// conflicts, objects being deleted wait, objects holding the rendering are unchanged, the rest are
/// written; live children of `topology` that are no longer rendered are pruned. `live` holds the
/// objects of the child kinds that carry the topology's labels or a rendered name.
pub fn classify(
    topology: &str,
    desired: Vec<DesiredChild>,
    live: &BTreeMap<ChildKey, LiveObject>,
) -> Classified {
    let mut out = Classified::default();
    let wanted = wanted(&desired);
    for child in desired {
        let current = live.get(&child.key);
        match current {
            None => {}
            Some(current) if !current.belongs_to(topology) => {
                out.known.push((child.key, Change::Conflict(current.ownership())));
                continue;
            }
            Some(current) if current.meta().deletion_timestamp.is_some() => {
                out.known.push((child.key, Change::Terminating));
                continue;
            }
            Some(current) if plan::holds(&child, current) => {
                out.unchanged += 1;
                continue;
            }
            Some(_) => {}
        }
        out.pending.push(Pending {
            live: current.cloned(),
            child,
        });
    }
    for (key, current) in live {
        if wanted.contains(key)
            || !current.belongs_to(topology)
            || current.meta().deletion_timestamp.is_some()
        {
            continue;
        }
        if let LiveObject::IpPool(pool) = current
            && let Some(finding) = addresses::pruned(pool)
        {
            out.addresses.push(finding);
        }
        out.known.push((key.clone(), Change::Prune));
    }
    out
}

/// The report, from the classification and the dry runs' answers: `updates[i]` is what the API
/// server returned for the i-th pending child that replaces a live object (a new child is reported
/// as created; its dry run only had to be accepted). `network` is the SpiderNetwork's own change.
pub fn assemble(
    name: &str,
    source: &str,
    network: Option<Change>,
    classified: Classified,
    updates: Vec<LiveObject>,
) -> TopologyDiff {
    let Classified {
        pending,
        known,
        mut addresses,
        mut unchanged,
    } = classified;
    let mut children: Vec<(ChildKey, Change)> = known;
    let mut replacing = Vec::with_capacity(updates.len());
    for Pending { child, live } in pending {
        match live {
            None => children.push((child.key, Change::Create)),
            Some(live) => replacing.push((child, live)),
        }
    }
    for ((child, live), after) in replacing.into_iter().zip(updates) {
        let changes = fields::changes(&live.to_json(), &after.to_json());
        if changes.is_empty() {
            // The server's answer is the live object: nothing would land.
            unchanged += 1;
            continue;
        }
        if let (LiveObject::IpPool(before), LiveObject::IpPool(after)) = (&live, &after) {
            let paths = changes.iter().map(|c| c.path.clone()).collect();
            addresses.extend(addresses::changed(before, after, paths));
        }
        children.push((child.key, Change::Update(changes)));
    }
    children.sort_by(|a, b| a.0.cmp(&b.0));
    addresses.sort_by(|a, b| finding_pool(a).cmp(finding_pool(b)));
    TopologyDiff {
        name: name.to_string(),
        source: source.to_string(),
        network,
        children: children
            .into_iter()
            .map(|(key, change)| ObjectChange {
                id: key.to_string(),
                change,
            })
            .collect(),
        unchanged,
        addresses,
    }
}

fn finding_pool(finding: &AddressFinding) -> &str {
    match finding {
        AddressFinding::PrunedInUse { pool, .. }
        | AddressFinding::Dropped { pool, .. }
        | AddressFinding::ChangedInUse { pool, .. } => pool,
    }
}

/// The SpiderNetwork's own change: created, or its spec as live against its spec as the dry run
/// returned it (defaults filled in), field by field. `None` when the spec would not change.
pub fn network_change(live: Option<&serde_json::Value>, after: &serde_json::Value) -> Option<Change> {
    let Some(live) = live else {
        return Some(Change::Create);
    };
    let spec = |object: &serde_json::Value| serde_json::json!({"spec": object.get("spec").cloned().unwrap_or(serde_json::Value::Null)});
    let changes = fields::changes(&spec(live), &spec(after));
    (!changes.is_empty()).then_some(Change::Update(changes))
}

#[cfg(test)]
mod tests;
