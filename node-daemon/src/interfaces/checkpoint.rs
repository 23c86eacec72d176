//! The state of every link a plan touches, taken before anything changes and written to disk, and
//! the operations that bring the node back to it: after a failed operation, a failed probe, or an
//! agent that died half way (the checkpoint is still on disk when it starts again).
//!
//! Restoring, in order: delete what did not exist (VLANs first: deleting a bond releases its
//! members), put back bond modes and options, put members back into the bonds they were in (or out
//! of bonds they were not in), recreate a bond or VLAN that existed and is gone, restore MTUs
//! (parents before VLANs), and last the up/down state of every link.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spiderpool_netlink::BondOption;

use super::model::{HostKind, HostLink, LinkOp};

/// The prior state of the links a plan touches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// The task being applied.
    pub task: String,
    /// Its UID and generation.
    pub uid: String,
    pub generation: Option<i64>,
    /// Every touched link by name; `None`: it did not exist.
    pub links: BTreeMap<String, Option<Snapshot>>,
}

/// One link as it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub kind: SnapshotKind,
    pub master: Option<String>,
    pub up: bool,
    pub mtu: u32,
}

/// What a link was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum SnapshotKind {
    /// A bond: mode and every option, as `name -> value` text ([`BondOption::parse`] reads it back).
    Bond {
        mode: u8,
        options: BTreeMap<String, String>,
    },
    Vlan {
        parent: String,
        id: u16,
    },
    Other,
}

impl Snapshot {
    fn of(link: &HostLink) -> Snapshot {
        let kind = match &link.kind {
            HostKind::Bond { mode, options } => SnapshotKind::Bond {
                mode: *mode,
                options: options
                    .iter()
                    .map(|o| (o.name.to_owned(), o.value_text()))
                    .collect(),
            },
            HostKind::Vlan { id } => SnapshotKind::Vlan {
                parent: link.parent.clone().unwrap_or_default(),
                id: *id,
            },
            HostKind::Other(_) => SnapshotKind::Other,
        };
        Snapshot {
            kind,
            master: link.master.clone(),
            up: link.up,
            mtu: link.mtu,
        }
    }
}

impl Checkpoint {
    /// The state, in `links`, of every link `ops` touch: their targets, the bonds members go into,
    /// VLAN parents, and the members of every touched bond (a bond's MTU and mode reach them).
    pub fn take(
        task: &str,
        uid: &str,
        generation: Option<i64>,
        ops: &[LinkOp],
        links: &[HostLink],
    ) -> Checkpoint {
        let mut names: Vec<&str> = Vec::new();
        for op in ops {
            names.push(op.target());
            match op {
                LinkOp::Enslave { bond, .. } => names.push(bond),
                LinkOp::CreateVlan { parent, .. } => names.push(parent),
                _ => {}
            }
        }
        let touched: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        for link in links {
            if link.master.as_ref().is_some_and(|m| touched.contains(m)) {
                names.push(&link.name);
            }
        }
        let links = names
            .into_iter()
            .map(|name| {
                let before = links.iter().find(|l| l.name == name).map(Snapshot::of);
                (name.to_owned(), before)
            })
            .collect();
        Checkpoint {
            task: task.to_owned(),
            uid: uid.to_owned(),
            generation,
            links,
        }
    }

    /// The operations that make `now` what the checkpoint says (none when it already is).
    pub fn rollback(&self, now: &[HostLink]) -> Vec<LinkOp> {
        let find = |name: &str| now.iter().find(|l| l.name == name);
        let mut ops = Vec::new();
        // Links the rollback takes down, releases or recreates: their up state is set at the end
        // even when it looks right now.
        let mut disturbed: Vec<&str> = Vec::new();
        // Members currently in a bond that step 2 empties.
        let mut released: Vec<String> = Vec::new();

        // 1. What did not exist goes: VLANs, then bonds, then anything else.
        let mut created: Vec<&HostLink> = self
            .links
            .iter()
            .filter(|(_, before)| before.is_none())
            .filter_map(|(name, _)| find(name))
            .collect();
        created.sort_by_key(|l| match l.kind {
            HostKind::Vlan { .. } => 0,
            HostKind::Bond { .. } => 1,
            HostKind::Other(_) => 2,
        });
        let deleted: Vec<&str> = created.iter().map(|l| l.name.as_str()).collect();
        ops.extend(created.iter().map(|l| LinkOp::Delete { name: l.name.clone() }));
        // The kernel releases (and closes) the members of a deleted bond.
        disturbed.extend(
            now.iter()
                .filter(|l| l.master.as_deref().is_some_and(|m| deleted.contains(&m)))
                .map(|l| l.name.as_str()),
        );
        let master_now = |link: &HostLink, released: &[String]| {
            link.master
                .clone()
                .filter(|m| !deleted.contains(&m.as_str()) && !released.contains(&link.name))
        };

        // 2. Bond modes and options.
        for (name, before) in &self.links {
            let Some(Snapshot {
                kind: SnapshotKind::Bond { mode, options },
                up,
                ..
            }) = before
            else {
                continue;
            };
            let wanted: Vec<BondOption> = options
                .iter()
                .filter_map(|(k, v)| BondOption::parse(k, v).ok())
                .collect();
            match find(name) {
                Some(HostLink {
                    kind:
                        HostKind::Bond {
                            mode: now_mode,
                            options: now_options,
                        },
                    up: now_up,
                    ..
                }) => {
                    let changed: Vec<BondOption> =
                        wanted.into_iter().filter(|o| !now_options.contains(o)).collect();
                    let mode_changes = now_mode != mode;
                    if !mode_changes && changed.is_empty() {
                        continue;
                    }
                    let no_members = mode_changes || changed.iter().any(BondOption::needs_no_members);
                    let down = no_members || changed.iter().any(BondOption::needs_down);
                    if down && *now_up {
                        ops.push(LinkOp::SetDown { name: name.clone() });
                        disturbed.push(name);
                    }
                    if no_members {
                        for member in now.iter().filter(|l| l.master.as_deref() == Some(name)) {
                            ops.push(LinkOp::Release {
                                member: member.name.clone(),
                            });
                            released.push(member.name.clone());
                            disturbed.push(&member.name);
                        }
                    }
                    ops.push(LinkOp::SetBond {
                        name: name.clone(),
                        mode: mode_changes.then_some(*mode),
                        options: changed,
                    });
                }
                Some(_) => {}
                None => {
                    ops.push(LinkOp::CreateBond {
                        name: name.clone(),
                        mode: *mode,
                        options: wanted,
                    });
                    if *up {
                        disturbed.push(name);
                    }
                }
            }
        }

        // 3. Masters, and VLANs that are gone.
        for (name, before) in &self.links {
            let Some(before) = before else { continue };
            match find(name) {
                Some(link) => {
                    let current = master_now(link, &released);
                    if current == before.master {
                        continue;
                    }
                    if current.is_some() {
                        ops.push(LinkOp::Release { member: name.clone() });
                    }
                    if let Some(master) = &before.master {
                        ops.push(LinkOp::SetDown { name: name.clone() });
                        ops.push(LinkOp::Enslave {
                            member: name.clone(),
                            bond: master.clone(),
                        });
                    }
                    disturbed.push(name);
                }
                None => {
                    if let SnapshotKind::Vlan { parent, id } = &before.kind {
                        ops.push(LinkOp::CreateVlan {
                            name: name.clone(),
                            parent: parent.clone(),
                            id: *id,
                        });
                        disturbed.push(name);
                    }
                }
            }
        }

        // 4. MTUs, parents before VLANs.
        let mut mtus: Vec<(&String, &Snapshot)> = self
            .links
            .iter()
            .filter_map(|(name, before)| Some((name, before.as_ref()?)))
            .collect();
        mtus.sort_by_key(|(_, s)| matches!(s.kind, SnapshotKind::Vlan { .. }));
        for (name, before) in mtus {
            let now_mtu = find(name).map(|l| l.mtu);
            let recreated = now_mtu.is_none() && disturbed.contains(&name.as_str());
            if now_mtu.is_some_and(|m| m != before.mtu) || recreated {
                ops.push(LinkOp::SetMtu {
                    name: name.clone(),
                    mtu: before.mtu,
                });
            }
        }

        // 5. Up or down, last.
        for (name, before) in &self.links {
            let Some(before) = before else { continue };
            let now_up = find(name).map(|l| l.up);
            let disturbed = disturbed.contains(&name.as_str());
            if before.up && (disturbed || now_up == Some(false)) {
                ops.push(LinkOp::SetUp { name: name.clone() });
            } else if !before.up && now_up == Some(true) && !disturbed {
                ops.push(LinkOp::SetDown { name: name.clone() });
            }
        }
        ops
    }
}
