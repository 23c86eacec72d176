//! From what one task asks and what the node has, the link operations to run, in order; or every
//! reason the task cannot be applied, with nothing changed.
//!
//! Rules:
//! - Idempotent: a link that already matches gets no operation (no flap). Bond options the task does
//!   not name are left as the kernel has them.
//! - Only links the task names are touched: its bonds and VLANs, their members and parents. (A mode
//!   change must release every member of the bond; the ones that were there are put back.)
//! - A bond's mode, and options the kernel only changes on a bond that is down or memberless, are
//!   changed by taking the bond down (releasing its members when needed), changing, and bringing it
//!   back; other options are changed live.
//! - A link of the wrong kind under a name the task uses is replaced only if this agent created it;
//!   anything else is refused.
//! - Nothing under the node's own traffic ([`Protected`]) is enslaved, released, taken down or
//!   deleted. A VLAN may be added on top of it: that changes nothing below.

use std::collections::BTreeSet;

use spiderpool_netlink::BondOption;

use super::model::{Desired, DesiredBond, DesiredVlan, HostKind, HostLink, LinkOp};
use super::ownership::Ownership;
use super::safety::Protected;

/// The MTU the kernel gives a new bond.
const DEFAULT_MTU: u32 = 1500;

/// What the plan sees of the node.
#[derive(Clone, Copy, Debug)]
pub struct Node<'a> {
    pub links: &'a [HostLink],
    pub ownership: &'a Ownership,
    pub protected: &'a Protected,
}

impl Node<'_> {
    fn link(&self, name: &str) -> Option<&HostLink> {
        self.links.iter().find(|l| l.name == name)
    }

    fn members_of<'b>(&'b self, bond: &'b str) -> impl Iterator<Item = &'b HostLink> + 'b {
        self.links
            .iter()
            .filter(move |l| l.master.as_deref() == Some(bond))
    }
}

/// Why a task cannot be applied as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The interface it is about.
    pub interface: String,
    pub reason: RefusalReason,
    pub message: String,
}

/// The kinds of refusal, which become the task's status reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RefusalReason {
    /// A bond member or VLAN parent does not exist on the node.
    InterfaceMissing,
    /// The change would take away or down a link the node's own traffic uses.
    Protected,
    /// A link of another kind, not created by this agent, has the name.
    NameTaken,
    /// A member is in another bond that this agent did not put it in.
    MemberOfAnotherBond,
    /// Another VLAN already has the tag on the parent.
    VlanTagTaken,
    /// A VLAN's MTU is larger than its parent's.
    MtuTooLarge,
}

impl RefusalReason {
    /// The status reason.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::InterfaceMissing => "InterfaceMissing",
            RefusalReason::Protected => "Protected",
            RefusalReason::NameTaken => "NameTaken",
            RefusalReason::MemberOfAnotherBond => "MemberOfAnotherBond",
            RefusalReason::VlanTagTaken => "VlanTagTaken",
            RefusalReason::MtuTooLarge => "MtuTooLarge",
        }
    }
}

struct Planner<'a> {
    node: Node<'a>,
    ops: Vec<LinkOp>,
    refusals: Vec<Refusal>,
}

/// The operations that make the node match `desired`, or every refusal.
pub fn plan(desired: &Desired, node: Node<'_>) -> Result<Vec<LinkOp>, Vec<Refusal>> {
    let mut planner = Planner {
        node,
        ops: Vec::new(),
        refusals: Vec::new(),
    };
    for bond in &desired.bonds {
        planner.bond(bond);
    }
    for vlan in &desired.vlans {
        planner.vlan(vlan, desired);
    }
    if planner.refusals.is_empty() {
        Ok(planner.ops)
    } else {
        Err(planner.refusals)
    }
}

impl Planner<'_> {
    fn refuse(&mut self, interface: &str, reason: RefusalReason, message: String) {
        self.refusals.push(Refusal {
            interface: interface.to_owned(),
            reason,
            message,
        });
    }

    /// Refuses taking `link` down or away when it is protected; true when refused.
    fn guard(&mut self, link: &str, doing: &str) -> bool {
        if let Some(why) = self.node.protected.why(link) {
            self.refuse(
                link,
                RefusalReason::Protected,
                format!("refusing to {doing}: {link} {why}"),
            );
            return true;
        }
        false
    }

    fn bond(&mut self, bond: &DesiredBond) {
        let name = bond.name.as_str();
        // Members taken out below that must go back in (a mode change releases every member).
        let mut reenslave: Vec<String> = Vec::new();
        let (created, restart, mtu) = match self.node.link(name).cloned() {
            None => {
                self.ops.push(LinkOp::CreateBond {
                    name: name.to_owned(),
                    mode: bond.mode,
                    options: bond.options.clone(),
                });
                (true, false, DEFAULT_MTU)
            }
            Some(link) => match &link.kind {
                HostKind::Bond { mode, options } => {
                    let changed: Vec<BondOption> = bond
                        .options
                        .iter()
                        .filter(|want| !options.contains(want))
                        .cloned()
                        .collect();
                    let mode_changes = *mode != bond.mode;
                    let no_members = mode_changes || changed.iter().any(BondOption::needs_no_members);
                    let down = no_members || changed.iter().any(BondOption::needs_down);
                    if down {
                        let what = if mode_changes {
                            format!("change the mode of {name}, which takes it down")
                        } else {
                            format!("change options of {name} that need it down")
                        };
                        if self.guard(name, &what) {
                            return;
                        }
                        if link.up {
                            self.ops.push(LinkOp::SetDown {
                                name: name.to_owned(),
                            });
                        }
                        if no_members {
                            let members: Vec<String> =
                                self.node.members_of(name).map(|m| m.name.clone()).collect();
                            for member in members {
                                self.ops.push(LinkOp::Release {
                                    member: member.clone(),
                                });
                                reenslave.push(member);
                            }
                        }
                    }
                    if mode_changes || !changed.is_empty() {
                        self.ops.push(LinkOp::SetBond {
                            name: name.to_owned(),
                            mode: mode_changes.then_some(bond.mode),
                            options: changed,
                        });
                    }
                    (false, down || !link.up, link.mtu)
                }
                other if self.node.ownership.owns(&link) => {
                    let what = format!(
                        "replace {name} (a {} this agent created) with a bond",
                        other.describe()
                    );
                    if self.guard(name, &what) {
                        return;
                    }
                    self.ops.push(LinkOp::Delete {
                        name: name.to_owned(),
                    });
                    self.ops.push(LinkOp::CreateBond {
                        name: name.to_owned(),
                        mode: bond.mode,
                        options: bond.options.clone(),
                    });
                    (true, false, DEFAULT_MTU)
                }
                other => {
                    self.refuse(
                        name,
                        RefusalReason::NameTaken,
                        format!(
                            "{name} exists as a {}, not a bond, and this agent did not create it; it is left alone",
                            other.describe()
                        ),
                    );
                    return;
                }
            },
        };
        let mut enslaved: BTreeSet<&str> = BTreeSet::new();
        for member in &bond.members {
            enslaved.insert(member);
            self.member(name, member, reenslave.contains(member));
        }
        for member in reenslave.iter().filter(|m| !enslaved.contains(m.as_str())) {
            self.ops.push(LinkOp::SetDown { name: member.clone() });
            self.ops.push(LinkOp::Enslave {
                member: member.clone(),
                bond: name.to_owned(),
            });
        }
        if let Some(want) = bond.mtu
            && (created || want != mtu)
        {
            self.ops.push(LinkOp::SetMtu {
                name: name.to_owned(),
                mtu: want,
            });
        }
        if created || restart {
            self.ops.push(LinkOp::SetUp {
                name: name.to_owned(),
            });
        }
    }

    /// Puts `member` into `bond` unless it is there (and stays there: `released` says it was just
    /// taken out).
    fn member(&mut self, bond: &str, member: &str, released: bool) {
        let Some(link) = self.node.link(member).cloned() else {
            self.refuse(
                member,
                RefusalReason::InterfaceMissing,
                format!("{member}, a member of bond {bond}, does not exist on this node"),
            );
            return;
        };
        if link.master.as_deref() == Some(bond) && !released {
            return;
        }
        if released {
            // Released just now; down already, said again in case the driver left it up.
            self.ops.push(LinkOp::SetDown {
                name: member.to_owned(),
            });
            self.ops.push(LinkOp::Enslave {
                member: member.to_owned(),
                bond: bond.to_owned(),
            });
            return;
        }
        if self.guard(member, &format!("enslave {member} to {bond}")) {
            return;
        }
        if let Some(other) = &link.master {
            if !self.node.ownership.enslaved(member, other) {
                self.refuse(
                    member,
                    RefusalReason::MemberOfAnotherBond,
                    format!("{member} is a member of {other}, which this agent did not put it in; it is left there"),
                );
                return;
            }
            self.ops.push(LinkOp::Release {
                member: member.to_owned(),
            });
        } else if link.up {
            // The bonding driver refuses a member that is up.
            self.ops.push(LinkOp::SetDown {
                name: member.to_owned(),
            });
        }
        self.ops.push(LinkOp::Enslave {
            member: member.to_owned(),
            bond: bond.to_owned(),
        });
    }

    fn vlan(&mut self, vlan: &DesiredVlan, desired: &Desired) {
        let name = vlan.name.as_str();
        let parent_bond = desired.bond(&vlan.parent);
        let parent = self.node.link(&vlan.parent).cloned();
        if parent.is_none() && parent_bond.is_none() {
            self.refuse(
                name,
                RefusalReason::InterfaceMissing,
                format!(
                    "{}, the parent of VLAN {name}, does not exist on this node",
                    vlan.parent
                ),
            );
            return;
        }
        let parent_mtu = parent_bond
            .and_then(|b| b.mtu)
            .or(parent.as_ref().map(|p| p.mtu))
            .unwrap_or(DEFAULT_MTU);
        if let Some(mtu) = vlan.mtu
            && mtu > parent_mtu
        {
            self.refuse(
                name,
                RefusalReason::MtuTooLarge,
                format!(
                    "VLAN {name} asks MTU {mtu}, more than its parent {} has ({parent_mtu})",
                    vlan.parent
                ),
            );
            return;
        }
        let create = |planner: &mut Self| {
            if let Some(parent) = &parent
                && !parent.up
                && parent_bond.is_none()
            {
                planner.ops.push(LinkOp::SetUp {
                    name: parent.name.clone(),
                });
            }
            planner.ops.push(LinkOp::CreateVlan {
                name: name.to_owned(),
                parent: vlan.parent.clone(),
                id: vlan.id,
            });
            if let Some(mtu) = vlan.mtu {
                planner.ops.push(LinkOp::SetMtu {
                    name: name.to_owned(),
                    mtu,
                });
            }
            planner.ops.push(LinkOp::SetUp {
                name: name.to_owned(),
            });
        };
        match self.node.link(name).cloned() {
            None => {
                let taken = self.node.links.iter().find(|l| {
                    l.kind == HostKind::Vlan { id: vlan.id }
                        && l.parent.as_deref() == Some(vlan.parent.as_str())
                });
                if let Some(other) = taken {
                    let other = other.name.clone();
                    self.refuse(
                        name,
                        RefusalReason::VlanTagTaken,
                        format!("VLAN {} on {} already exists as {other}", vlan.id, vlan.parent),
                    );
                    return;
                }
                create(self);
            }
            Some(link)
                if link.kind == (HostKind::Vlan { id: vlan.id })
                    && link.parent.as_deref() == Some(&vlan.parent) =>
            {
                if let Some(mtu) = vlan.mtu
                    && mtu != link.mtu
                {
                    self.ops.push(LinkOp::SetMtu {
                        name: name.to_owned(),
                        mtu,
                    });
                }
                if !link.up {
                    self.ops.push(LinkOp::SetUp {
                        name: name.to_owned(),
                    });
                }
            }
            Some(link) if self.node.ownership.owns(&link) => {
                let what = format!(
                    "replace {name} (created by this agent) with VLAN {} on {}",
                    vlan.id, vlan.parent
                );
                if self.guard(name, &what) {
                    return;
                }
                self.ops.push(LinkOp::Delete {
                    name: name.to_owned(),
                });
                create(self);
            }
            Some(link) => {
                let is = match (&link.kind, &link.parent) {
                    (HostKind::Vlan { id }, Some(parent)) => format!("VLAN {id} on {parent}"),
                    (kind, _) => format!("a {}", kind.describe()),
                };
                self.refuse(
                    name,
                    RefusalReason::NameTaken,
                    format!(
                        "{name} exists as {is}, not VLAN {} on {}, and this agent did not create it; it is left alone",
                        vlan.id, vlan.parent
                    ),
                );
            }
        }
    }
}
