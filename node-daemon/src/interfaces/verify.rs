//! Whether the node matches a task: every bond and VLAN exists with the asked kind, mode, options,
//! members, tag and MTU, is up and has carrier. Used as the probe after applying (with the gateway
//! checks) and for the per-interface state in the task's status.

use super::model::{Desired, DesiredBond, DesiredVlan, HostKind, HostLink};

/// One interface of a task, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceCheck {
    pub name: String,
    /// `bond` or `vlan`.
    pub kind: &'static str,
    pub ready: bool,
    /// What is wrong, or worth knowing (a member without carrier in a working bond).
    pub message: Option<String>,
}

/// Every interface of `desired`, checked against `links`.
pub fn verify(desired: &Desired, links: &[HostLink]) -> Vec<InterfaceCheck> {
    desired
        .bonds
        .iter()
        .map(|b| bond(b, links))
        .chain(desired.vlans.iter().map(|v| vlan(v, links)))
        .collect()
}

/// Whether every check passed.
pub fn all_ready(checks: &[InterfaceCheck]) -> bool {
    checks.iter().all(|c| c.ready)
}

fn check(name: &str, kind: &'static str, problems: Vec<String>, notes: Vec<String>) -> InterfaceCheck {
    let ready = problems.is_empty();
    let text: Vec<String> = problems.into_iter().chain(notes).collect();
    InterfaceCheck {
        name: name.to_owned(),
        kind,
        ready,
        message: (!text.is_empty()).then(|| text.join("; ")),
    }
}

fn bond(want: &DesiredBond, links: &[HostLink]) -> InterfaceCheck {
    let name = want.name.as_str();
    let Some(link) = links.iter().find(|l| l.name == name) else {
        return check(name, "bond", vec![format!("{name} does not exist")], vec![]);
    };
    let HostKind::Bond { mode, options } = &link.kind else {
        return check(
            name,
            "bond",
            vec![format!("{name} is a {}, not a bond", link.kind.describe())],
            vec![],
        );
    };
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    if *mode != want.mode {
        problems.push(format!(
            "mode is {}, not {}",
            spiderpool_netlink::bond::mode_name(*mode),
            spiderpool_netlink::bond::mode_name(want.mode)
        ));
    }
    for option in want.options.iter().filter(|o| !options.contains(o)) {
        let now = options
            .iter()
            .find(|o| o.name == option.name)
            .map_or_else(|| "unset".to_owned(), |o| o.value_text());
        problems.push(format!("{} is {now}, not {}", option.name, option.value_text()));
    }
    for member in &want.members {
        match links.iter().find(|l| &l.name == member) {
            None => problems.push(format!("member {member} does not exist")),
            Some(m) if m.master.as_deref() != Some(name) => {
                problems.push(format!("{member} is not a member"))
            }
            Some(m) if !m.carrier => notes.push(format!("member {member} has no carrier")),
            Some(_) => {}
        }
    }
    common(link, want.mtu, &mut problems);
    check(name, "bond", problems, notes)
}

fn vlan(want: &DesiredVlan, links: &[HostLink]) -> InterfaceCheck {
    let name = want.name.as_str();
    let Some(link) = links.iter().find(|l| l.name == name) else {
        return check(name, "vlan", vec![format!("{name} does not exist")], vec![]);
    };
    let mut problems = Vec::new();
    if link.kind != (HostKind::Vlan { id: want.id }) || link.parent.as_deref() != Some(want.parent.as_str()) {
        problems.push(format!("{name} is not VLAN {} on {}", want.id, want.parent));
    }
    common(link, want.mtu, &mut problems);
    check(name, "vlan", problems, vec![])
}

fn common(link: &HostLink, mtu: Option<u32>, problems: &mut Vec<String>) {
    if let Some(mtu) = mtu
        && link.mtu != mtu
    {
        problems.push(format!("MTU is {}, not {mtu}", link.mtu));
    }
    if !link.up {
        problems.push("down".to_owned());
    } else if !link.carrier {
        problems.push("no carrier".to_owned());
    }
}
