//! What ADD does on a node, decided from the configuration and the node's links (pure).
//!
//! Upstream's behaviour, with its holes closed:
//! - A VLAN `<parent>.<id>`: the parent must exist and is brought up; an existing `<parent>.<id>`
//!   is brought up if down; no other VLAN on the node may carry the same tag (upstream's rule).
//!   Unlike upstream, an existing link of that name must really be that VLAN on that parent.
//! - A bond: an existing link of the bond's name must be a bond and is brought up, its members
//!   left as they are (upstream does the same, but errors out when the bond is already up). A new
//!   bond is made only when every member exists and none belongs to another master, checked before
//!   anything changes (upstream made the bond first and stopped at the first missing member).
//!   Members are taken down, enslaved and brought up; then the bond is brought up.

use spiderpool_netlink::bond::BondOption;
use spiderpool_netlink::link_state::{KindDetail, LinkDetail};
use thiserror::Error;

use crate::config::{IfacerConf, Wanted, vlan_name};

/// A link as the plan needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Administratively up.
    pub up: bool,
    /// Its master's index (a bond member's bond).
    pub master: Option<u32>,
    /// What kind of link it is.
    pub kind: ObservedKind,
}

/// The kinds the plan tells apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObservedKind {
    /// A bond.
    Bond,
    /// A VLAN with its tag and parent's index.
    Vlan {
        /// The tag.
        id: u16,
        /// The parent's index.
        parent: Option<u32>,
    },
    /// Anything else, with the kernel's kind name when it has one.
    Other(Option<String>),
}

impl From<&LinkDetail> for Observed {
    fn from(detail: &LinkDetail) -> Self {
        Observed {
            index: detail.link.index,
            name: detail.link.name.clone(),
            up: detail.link.up,
            master: detail.master,
            kind: match &detail.kind {
                KindDetail::Bond(_) => ObservedKind::Bond,
                KindDetail::Vlan { id } => ObservedKind::Vlan {
                    id: *id,
                    parent: detail.link.link,
                },
                KindDetail::Other => ObservedKind::Other(detail.link.kind.clone()),
            },
        }
    }
}

/// One change to a link, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Bring the link up.
    Up(String),
    /// Create a bond (down, no members).
    CreateBond {
        /// Its name.
        name: String,
        /// Its mode by number.
        mode: u8,
        /// Its options.
        options: Vec<BondOption>,
    },
    /// Take `member` down, enslave it to `bond`, bring it up.
    Enslave {
        /// The member.
        member: String,
        /// The bond.
        bond: String,
    },
    /// Create VLAN `name` with tag `id` on `parent`.
    CreateVlan {
        /// Its name.
        name: String,
        /// The parent's name.
        parent: String,
        /// The tag.
        id: u16,
    },
}

impl Step {
    /// The link this step creates, if any.
    pub fn created(&self) -> Option<&str> {
        match self {
            Step::CreateBond { name, .. } | Step::CreateVlan { name, .. } => Some(name),
            Step::Up(_) | Step::Enslave { .. } => None,
        }
    }
}

/// Why the node cannot have what the configuration asks.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PlanError {
    /// A named interface does not exist.
    #[error("{key}: there is no interface `{name}` on the node")]
    NoSuchInterface {
        /// The netconf key that names it.
        key: String,
        /// The interface.
        name: String,
    },
    /// A link of the VLAN's name exists and is something else.
    #[error("`{name}` exists on the node but is {what}, not VLAN {id} on `{parent}`")]
    NotThatVlan {
        /// The VLAN's name.
        name: String,
        /// Its tag.
        id: u16,
        /// Its parent.
        parent: String,
        /// What the existing link is.
        what: String,
    },
    /// Another VLAN carries the tag (upstream's rule: one name per tag on a node).
    #[error(
        "VLAN {id} is already on the node as `{other}`: one VLAN tag cannot have two interfaces (`{name}` was asked)"
    )]
    TagTaken {
        /// The tag.
        id: u16,
        /// The VLAN asked for.
        name: String,
        /// The existing one.
        other: String,
    },
    /// A link of the bond's name exists and is not a bond.
    #[error("bond.name: `{name}` exists on the node but is {what}, not a bond")]
    NotABond {
        /// The name.
        name: String,
        /// What it is.
        what: String,
    },
    /// A member already belongs to a bond or bridge.
    #[error("{key}: `{member}` already belongs to `{master}`")]
    Enslaved {
        /// The netconf key that names it.
        key: String,
        /// The member.
        member: String,
        /// Its master.
        master: String,
    },
}

/// The steps that give the node what `conf` asks, in order; nothing when it has it already.
pub fn plan(conf: &IfacerConf, links: &[Observed]) -> Result<Vec<Step>, PlanError> {
    let by_name = |name: &str| links.iter().find(|l| l.name == name);
    let mut steps = Vec::new();
    match conf.wanted() {
        Wanted::Nothing => {}
        Wanted::Vlan { parent, id } => {
            let Some(link) = by_name(parent) else {
                return Err(PlanError::NoSuchInterface {
                    key: "interfaces[0]".into(),
                    name: parent.into(),
                });
            };
            if !link.up {
                steps.push(Step::Up(parent.to_owned()));
            }
            vlan(links, parent, Some(link.index), id, &mut steps)?;
        }
        Wanted::Bond {
            bond,
            members,
            vlan: tag,
        } => {
            let index = match by_name(&bond.name) {
                Some(existing) => {
                    if existing.kind != ObservedKind::Bond {
                        return Err(PlanError::NotABond {
                            name: bond.name.clone(),
                            what: describe(existing),
                        });
                    }
                    if !existing.up {
                        steps.push(Step::Up(bond.name.clone()));
                    }
                    Some(existing.index)
                }
                None => {
                    for (i, member) in members.iter().enumerate() {
                        let key = format!("interfaces[{i}]");
                        let Some(link) = by_name(member) else {
                            return Err(PlanError::NoSuchInterface {
                                key,
                                name: member.clone(),
                            });
                        };
                        if let Some(master) = link.master {
                            let master = links
                                .iter()
                                .find(|l| l.index == master)
                                .map_or_else(|| format!("link #{master}"), |l| l.name.clone());
                            return Err(PlanError::Enslaved {
                                key,
                                member: member.clone(),
                                master,
                            });
                        }
                    }
                    steps.push(Step::CreateBond {
                        name: bond.name.clone(),
                        mode: bond.mode,
                        options: bond.options.clone(),
                    });
                    steps.extend(members.iter().map(|member| Step::Enslave {
                        member: member.clone(),
                        bond: bond.name.clone(),
                    }));
                    steps.push(Step::Up(bond.name.clone()));
                    None
                }
            };
            if let Some(id) = tag {
                vlan(links, &bond.name, index, id, &mut steps)?;
            }
        }
    }
    Ok(steps)
}

/// VLAN `id` on `parent` (index `None`: the parent is made by an earlier step).
fn vlan(
    links: &[Observed],
    parent: &str,
    parent_index: Option<u32>,
    id: u16,
    steps: &mut Vec<Step>,
) -> Result<(), PlanError> {
    let name = vlan_name(parent, id);
    if let Some(other) = links
        .iter()
        .find(|l| l.name != name && matches!(l.kind, ObservedKind::Vlan { id: tag, .. } if tag == id))
    {
        return Err(PlanError::TagTaken {
            id,
            name,
            other: other.name.clone(),
        });
    }
    match links.iter().find(|l| l.name == name) {
        Some(existing) => {
            let right = parent_index.is_some()
                && existing.kind
                    == ObservedKind::Vlan {
                        id,
                        parent: parent_index,
                    };
            if !right {
                return Err(PlanError::NotThatVlan {
                    name,
                    id,
                    parent: parent.to_owned(),
                    what: describe_in(existing, links),
                });
            }
            if !existing.up {
                steps.push(Step::Up(name));
            }
        }
        None => {
            steps.push(Step::CreateVlan {
                name: name.clone(),
                parent: parent.to_owned(),
                id,
            });
            steps.push(Step::Up(name));
        }
    }
    Ok(())
}

fn describe(link: &Observed) -> String {
    describe_in(link, &[])
}

fn describe_in(link: &Observed, links: &[Observed]) -> String {
    match &link.kind {
        ObservedKind::Bond => "a bond".to_owned(),
        ObservedKind::Vlan { id, parent } => {
            let parent = parent
                .and_then(|p| links.iter().find(|l| l.index == p))
                .map_or_else(|| "another link".to_owned(), |l| format!("`{}`", l.name));
            format!("VLAN {id} on {parent}")
        }
        ObservedKind::Other(Some(kind)) => format!("a {kind} link"),
        ObservedKind::Other(None) => "a device".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn link(index: u32, name: &str, up: bool, kind: ObservedKind) -> Observed {
        Observed {
            index,
            name: name.into(),
            up,
            master: None,
            kind,
        }
    }

    fn nic(index: u32, name: &str) -> Observed {
        link(index, name, true, ObservedKind::Other(None))
    }

    fn steps(json: &str, links: &[Observed]) -> Result<Vec<String>, String> {
        let conf = parse(json.as_bytes()).unwrap();
        plan(&conf, links)
            .map(|s| s.iter().map(|s| format!("{s:?}")).collect())
            .map_err(|e| e.to_string())
    }

    const VLAN: &str = r#"{"cniVersion":"0.3.1","interfaces":["ens1"],"vlanID":120}"#;
    const BOND: &str = r#"{"cniVersion":"0.3.1","interfaces":["ens1","ens2"],"vlanID":30,"bond":{"name":"bond0","mode":1,"options":"miimon=100"}}"#;

    #[test]
    fn a_vlan_is_made_once() {
        let made = steps(VLAN, &[nic(2, "ens1")]).unwrap();
        assert_eq!(
            made,
            [
                r#"CreateVlan { name: "ens1.120", parent: "ens1", id: 120 }"#,
                r#"Up("ens1.120")"#
            ]
        );
        let there = [
            nic(2, "ens1"),
            link(
                3,
                "ens1.120",
                true,
                ObservedKind::Vlan {
                    id: 120,
                    parent: Some(2),
                },
            ),
        ];
        assert_eq!(steps(VLAN, &there).unwrap(), Vec::<String>::new());
        let down = [
            link(2, "ens1", false, ObservedKind::Other(None)),
            link(
                3,
                "ens1.120",
                false,
                ObservedKind::Vlan {
                    id: 120,
                    parent: Some(2),
                },
            ),
        ];
        assert_eq!(
            steps(VLAN, &down).unwrap(),
            [r#"Up("ens1")"#, r#"Up("ens1.120")"#]
        );
    }

    #[test]
    fn a_vlan_is_refused_when_the_node_cannot_have_it() {
        assert_eq!(
            steps(VLAN, &[]).unwrap_err(),
            "interfaces[0]: there is no interface `ens1` on the node"
        );
        let tag_taken = [
            nic(2, "ens1"),
            nic(4, "ens2"),
            link(
                5,
                "vlan120",
                true,
                ObservedKind::Vlan {
                    id: 120,
                    parent: Some(4),
                },
            ),
        ];
        assert!(
            steps(VLAN, &tag_taken)
                .unwrap_err()
                .starts_with("VLAN 120 is already on the node as `vlan120`")
        );
        let wrong_parent = [
            nic(2, "ens1"),
            nic(4, "ens2"),
            link(
                5,
                "ens1.120",
                true,
                ObservedKind::Vlan {
                    id: 120,
                    parent: Some(4),
                },
            ),
        ];
        assert_eq!(
            steps(VLAN, &wrong_parent).unwrap_err(),
            "`ens1.120` exists on the node but is VLAN 120 on `ens2`, not VLAN 120 on `ens1`"
        );
        let not_a_vlan = [
            nic(2, "ens1"),
            link(5, "ens1.120", true, ObservedKind::Other(Some("veth".into()))),
        ];
        assert_eq!(
            steps(VLAN, &not_a_vlan).unwrap_err(),
            "`ens1.120` exists on the node but is a veth link, not VLAN 120 on `ens1`"
        );
    }

    #[test]
    fn a_bond_with_a_vlan_is_made_from_its_members() {
        let made = steps(BOND, &[nic(2, "ens1"), nic(3, "ens2")]).unwrap();
        assert_eq!(made.len(), 6, "{made:#?}");
        assert!(
            made[0].starts_with(r#"CreateBond { name: "bond0", mode: 1"#),
            "{made:?}"
        );
        assert_eq!(
            made[1..],
            [
                r#"Enslave { member: "ens1", bond: "bond0" }"#,
                r#"Enslave { member: "ens2", bond: "bond0" }"#,
                r#"Up("bond0")"#,
                r#"CreateVlan { name: "bond0.30", parent: "bond0", id: 30 }"#,
                r#"Up("bond0.30")"#,
            ]
        );
        // Already there (even up, where upstream failed): nothing; down: brought up.
        let mut there = vec![
            nic(2, "ens1"),
            nic(3, "ens2"),
            link(7, "bond0", true, ObservedKind::Bond),
            link(
                8,
                "bond0.30",
                true,
                ObservedKind::Vlan {
                    id: 30,
                    parent: Some(7),
                },
            ),
        ];
        assert_eq!(steps(BOND, &there).unwrap(), Vec::<String>::new());
        there[2].up = false;
        assert_eq!(steps(BOND, &there).unwrap(), [r#"Up("bond0")"#]);
    }

    #[test]
    fn a_bond_is_refused_before_anything_changes() {
        assert_eq!(
            steps(BOND, &[nic(2, "ens1")]).unwrap_err(),
            "interfaces[1]: there is no interface `ens2` on the node"
        );
        let mut enslaved = nic(3, "ens2");
        enslaved.master = Some(9);
        assert_eq!(
            steps(
                BOND,
                &[
                    nic(2, "ens1"),
                    enslaved,
                    link(9, "br0", true, ObservedKind::Other(Some("bridge".into())))
                ]
            )
            .unwrap_err(),
            "interfaces[1]: `ens2` already belongs to `br0`"
        );
        assert_eq!(
            steps(BOND, &[nic(2, "ens1"), nic(3, "ens2"), nic(7, "bond0")]).unwrap_err(),
            "bond.name: `bond0` exists on the node but is a device, not a bond"
        );
    }

    #[test]
    fn nothing_is_asked_nothing_is_done() {
        for json in [
            r#"{"cniVersion":"0.3.1","interfaces":["ens1"]}"#,
            r#"{"cniVersion":"0.3.1","interfaces":["ens1","ens2"],"vlanID":5}"#,
        ] {
            assert_eq!(steps(json, &[]).unwrap(), Vec::<String>::new(), "{json}");
        }
    }
}
