//! What this agent changed on the node and may therefore undo: the links it created (by name and
//! kernel index, so a link of the same name made later by someone else is never taken for ours) and
//! the members it enslaved. Kept in the agent's state directory, never guessed from names.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::model::{HostLink, LinkOp};
use super::safety::Protected;

/// Links and enslavements this agent made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ownership {
    /// Links this agent created, by name.
    #[serde(default)]
    pub created: BTreeMap<String, Created>,
    /// Members this agent put into a bond, by member name.
    #[serde(default)]
    pub enslaved: BTreeMap<String, Enslaved>,
}

/// A link this agent created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Created {
    /// The kernel's index when it was created.
    pub index: u32,
    /// `bond` or `vlan`.
    pub kind: String,
    /// The task it was created for.
    pub task: String,
}

/// A member this agent enslaved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Enslaved {
    pub bond: String,
    pub task: String,
}

impl Ownership {
    /// Whether `link` is the very link this agent created under its name.
    pub fn owns(&self, link: &HostLink) -> bool {
        self.created
            .get(&link.name)
            .is_some_and(|c| c.index == link.index)
    }

    /// Whether this agent put `member` into `bond`.
    pub fn enslaved(&self, member: &str, bond: &str) -> bool {
        self.enslaved.get(member).is_some_and(|e| e.bond == bond)
    }

    /// Drops records that no longer describe the node: created links that are gone or were
    /// replaced by another link of the same name, members no longer in the bond we put them in.
    pub fn forget_stale(&mut self, links: &[HostLink]) {
        self.created
            .retain(|name, created| links.iter().any(|l| &l.name == name && l.index == created.index));
        self.enslaved.retain(|member, enslaved| {
            links
                .iter()
                .any(|l| &l.name == member && l.master.as_deref() == Some(enslaved.bond.as_str()))
        });
    }

    /// Records what `ops` did for `task`, once they are applied; `links` is the node afterwards.
    pub fn record(&mut self, task: &str, ops: &[LinkOp], links: &[HostLink]) {
        for op in ops {
            match op {
                LinkOp::CreateBond { name, .. } | LinkOp::CreateVlan { name, .. } => {
                    if let Some(link) = links.iter().find(|l| &l.name == name) {
                        self.created.insert(
                            name.clone(),
                            Created {
                                index: link.index,
                                kind: link.kind.describe().to_owned(),
                                task: task.to_owned(),
                            },
                        );
                    }
                }
                LinkOp::Enslave { member, bond } => {
                    self.enslaved.insert(
                        member.clone(),
                        Enslaved {
                            bond: bond.clone(),
                            task: task.to_owned(),
                        },
                    );
                }
                LinkOp::Release { member } => {
                    self.enslaved.remove(member);
                }
                LinkOp::Delete { name } => {
                    self.created.remove(name);
                    self.enslaved.retain(|_, e| &e.bond != name);
                }
                _ => {}
            }
        }
    }
}

/// What the tasks on the node still ask for, across all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StillWanted {
    /// Bond and VLAN names some task defines.
    pub interfaces: BTreeSet<String>,
    /// (member, bond) pairs some task asks for.
    pub members: BTreeSet<(String, String)>,
}

/// A change that revert would make but must not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    pub link: String,
    pub why: String,
}

/// Undoes what no task asks for any more: deletes the VLANs and then the bonds this agent created
/// (the kernel releases a deleted bond's members; they are brought back up), and releases members it
/// enslaved into bonds that stay (and brings them up). Links under the node's own traffic are kept,
/// and said so.
pub fn revert_plan(
    ownership: &Ownership,
    links: &[HostLink],
    wanted: &StillWanted,
    protected: &Protected,
) -> (Vec<LinkOp>, Vec<Kept>) {
    let mut ops = Vec::new();
    let mut kept = Vec::new();
    let unwanted = |kind: &str| {
        links
            .iter()
            .filter(move |l| {
                ownership.owns(l) && l.kind.describe() == kind && !wanted.interfaces.contains(&l.name)
            })
            .collect::<Vec<_>>()
    };
    let mut deleted: BTreeSet<&str> = BTreeSet::new();
    for link in unwanted("vlan").into_iter().chain(unwanted("bond")) {
        if let Some(why) = protected.why(&link.name) {
            kept.push(Kept {
                link: link.name.clone(),
                why: format!("created by this agent and no task names it, but it {why}"),
            });
            continue;
        }
        ops.push(LinkOp::Delete {
            name: link.name.clone(),
        });
        deleted.insert(&link.name);
    }
    for link in links {
        let Some(master) = &link.master else { continue };
        if deleted.contains(master.as_str()) {
            ops.push(LinkOp::SetUp {
                name: link.name.clone(),
            });
        } else if ownership.enslaved(&link.name, master)
            && !wanted.members.contains(&(link.name.clone(), master.clone()))
        {
            if let Some(why) = protected.why(&link.name) {
                kept.push(Kept {
                    link: link.name.clone(),
                    why: format!("enslaved to {master} by this agent and no task asks for it, but it {why}"),
                });
                continue;
            }
            ops.push(LinkOp::Release {
                member: link.name.clone(),
            });
            ops.push(LinkOp::SetUp {
                name: link.name.clone(),
            });
        }
    }
    (ops, kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interfaces::model::HostKind;
    use crate::interfaces::safety::Anchor;

    fn link(index: u32, name: &str, kind: HostKind, master: Option<&str>) -> HostLink {
        HostLink {
            index,
            name: name.into(),
            kind,
            master: master.map(Into::into),
            parent: None,
            up: true,
            carrier: true,
            mtu: 1500,
        }
    }

    fn bond() -> HostKind {
        HostKind::Bond {
            mode: 1,
            options: Vec::new(),
        }
    }

    fn node() -> Vec<HostLink> {
        vec![
            link(2, "ens1", HostKind::Other(None), Some("bond0")),
            link(3, "ens2", HostKind::Other(None), Some("bond0")),
            link(4, "bond0", bond(), None),
            HostLink {
                parent: Some("bond0".into()),
                ..link(5, "bond0.200", HostKind::Vlan { id: 200 }, None)
            },
            link(6, "ens3", HostKind::Other(None), None),
            link(7, "ens3.10", HostKind::Vlan { id: 10 }, None),
        ]
    }

    fn ours() -> Ownership {
        let mut ownership = Ownership::default();
        let ops = [
            LinkOp::CreateBond {
                name: "bond0".into(),
                mode: 1,
                options: vec![],
            },
            LinkOp::Enslave {
                member: "ens1".into(),
                bond: "bond0".into(),
            },
            LinkOp::Enslave {
                member: "ens2".into(),
                bond: "bond0".into(),
            },
            LinkOp::CreateVlan {
                name: "bond0.200".into(),
                parent: "bond0".into(),
                id: 200,
            },
        ];
        ownership.record("dc1-node1", &ops, &node());
        ownership
    }

    #[test]
    fn recorded_by_index() {
        let ownership = ours();
        assert_eq!(ownership.created["bond0"].index, 4);
        assert_eq!(ownership.created["bond0.200"].kind, "vlan");
        assert!(ownership.enslaved("ens1", "bond0"));
        // ens3.10 has a name this agent might have made, but it did not make it.
        assert!(!ownership.owns(&node()[5]));
        // A bond0 recreated by someone else (another index) is not ours.
        assert!(!ownership.owns(&link(40, "bond0", bond(), None)));
    }

    #[test]
    fn stale_records_are_forgotten() {
        let mut ownership = ours();
        let mut links = node();
        links.retain(|l| l.name != "bond0.200");
        links[0].master = None;
        ownership.forget_stale(&links);
        assert!(!ownership.created.contains_key("bond0.200"));
        assert!(!ownership.enslaved.contains_key("ens1"));
        assert!(ownership.enslaved.contains_key("ens2"));
    }

    #[test]
    fn a_task_gone_deletes_only_what_this_agent_created() {
        let (ops, kept) = revert_plan(&ours(), &node(), &StillWanted::default(), &Protected::default());
        let text: Vec<String> = ops.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            ["del bond0.200", "del bond0", "set ens1 up", "set ens2 up"],
            "ens3.10 was not created by this agent and stays"
        );
        assert!(kept.is_empty());
    }

    #[test]
    fn nothing_is_reverted_while_a_task_wants_it() {
        let wanted = StillWanted {
            interfaces: ["bond0", "bond0.200"].map(String::from).into(),
            members: [("ens1", "bond0"), ("ens2", "bond0")]
                .map(|(m, b)| (m.to_owned(), b.to_owned()))
                .into(),
        };
        let (ops, _) = revert_plan(&ours(), &node(), &wanted, &Protected::default());
        assert!(ops.is_empty(), "{ops:?}");
    }

    #[test]
    fn a_member_no_longer_wanted_is_released_and_brought_up() {
        let wanted = StillWanted {
            interfaces: ["bond0", "bond0.200"].map(String::from).into(),
            members: [("ens1".to_owned(), "bond0".to_owned())].into(),
        };
        let (ops, _) = revert_plan(&ours(), &node(), &wanted, &Protected::default());
        let text: Vec<String> = ops.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["set ens2 nomaster", "set ens2 up"]);
    }

    #[test]
    fn a_created_link_that_now_carries_the_node_is_kept() {
        let links = node();
        let protected = Protected::from_anchors(
            &[Anchor {
                link: "bond0.200".into(),
                why: "holds the node IP 10.0.0.5".into(),
            }],
            &links,
        );
        let (ops, kept) = revert_plan(&ours(), &links, &StillWanted::default(), &protected);
        assert!(ops.is_empty(), "{ops:?}");
        let kept: Vec<&str> = kept.iter().map(|k| k.link.as_str()).collect();
        assert_eq!(kept, ["bond0.200", "bond0", "ens1", "ens2"]);
    }
}
