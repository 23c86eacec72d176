//! The links a task must never break: the one carrying the node's default route, the one holding
//! its Kubernetes node IP, and everything under them (a VLAN's parent, a bond's members), since
//! taking any of those down or away cuts the node off.

use std::collections::BTreeMap;

use super::model::HostLink;

/// Links that carry the node's own traffic, each with the reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Protected {
    reasons: BTreeMap<String, String>,
}

/// Where the node's own traffic starts: a link and why it matters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub link: String,
    /// e.g. `carries the node's default route`, `holds the node IP 10.0.0.5`.
    pub why: String,
}

impl Protected {
    /// The anchors and every link below them: parents (`IFLA_LINK`, a VLAN's) and members (of a
    /// bond), transitively.
    pub fn from_anchors(anchors: &[Anchor], links: &[HostLink]) -> Protected {
        let mut reasons: BTreeMap<String, String> = BTreeMap::new();
        let mut queue: Vec<(String, String)> =
            anchors.iter().map(|a| (a.link.clone(), a.why.clone())).collect();
        while let Some((name, why)) = queue.pop() {
            if reasons.contains_key(&name) {
                continue;
            }
            if let Some(link) = links.iter().find(|l| l.name == name) {
                if let Some(parent) = &link.parent {
                    queue.push((parent.clone(), format!("is the parent of {name}, which {why}")));
                }
                for member in links
                    .iter()
                    .filter(|l| l.master.as_deref() == Some(name.as_str()))
                {
                    queue.push((member.name.clone(), format!("is a member of {name}, which {why}")));
                }
            }
            reasons.insert(name, why);
        }
        Protected { reasons }
    }

    /// Why `link` is protected, if it is.
    pub fn why(&self, link: &str) -> Option<&str> {
        self.reasons.get(link).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.reasons.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interfaces::model::HostKind;

    fn link(name: &str, master: Option<&str>, parent: Option<&str>) -> HostLink {
        HostLink {
            index: 0,
            name: name.into(),
            kind: HostKind::Other(None),
            master: master.map(Into::into),
            parent: parent.map(Into::into),
            up: true,
            carrier: true,
            mtu: 1500,
        }
    }

    #[test]
    fn everything_under_the_node_ip_is_protected() {
        let links = vec![
            link("eth0", Some("bond0"), None),
            link("eth1", Some("bond0"), None),
            link("bond0", None, None),
            link("bond0.100", None, Some("bond0")),
            link("eth2", None, None),
        ];
        let protected = Protected::from_anchors(
            &[Anchor {
                link: "bond0.100".into(),
                why: "holds the node IP 10.0.0.5".into(),
            }],
            &links,
        );
        assert_eq!(protected.why("bond0.100"), Some("holds the node IP 10.0.0.5"));
        assert_eq!(
            protected.why("bond0"),
            Some("is the parent of bond0.100, which holds the node IP 10.0.0.5")
        );
        assert_eq!(
            protected.why("eth1"),
            Some("is a member of bond0, which is the parent of bond0.100, which holds the node IP 10.0.0.5")
        );
        assert_eq!(protected.why("eth2"), None);
    }
}
