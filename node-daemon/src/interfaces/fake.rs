//! A model of the kernel's links for tests: it applies [`LinkOp`]s with the rules that matter here
//! (a member must be down to be enslaved and comes up in the bond; a bond's mode changes only when
//! it is down and memberless; deleting a bond releases its members and takes its VLANs along;
//! carrier follows members and parents; a VLAN's MTU stays within its parent's) and records every
//! operation. The planner's tests run plans and rollbacks on it; the status-flow tier runs the
//! agent's executor on it, where no kernel with bonds and VLANs is available. Not for production.

use std::collections::BTreeMap;

use spiderpool_netlink::BondOption;

use super::model::{HostKind, HostLink, LinkOp};

/// The links of one simulated node.
#[derive(Clone, Debug, Default)]
pub struct FakeKernel {
    links: Vec<HostLink>,
    next_index: u32,
    /// Every operation applied (failed ones too), in order.
    pub recorded: Vec<LinkOp>,
    /// Devices that have no carrier (an unplugged cable).
    pub unplugged: Vec<String>,
}

impl FakeKernel {
    /// A node with these physical devices, up, MTU 1500.
    pub fn with_devices(names: &[&str]) -> FakeKernel {
        let mut kernel = FakeKernel {
            next_index: 2,
            ..FakeKernel::default()
        };
        for name in names {
            kernel.add(HostLink {
                index: 0,
                name: (*name).to_owned(),
                kind: HostKind::Other(None),
                master: None,
                parent: None,
                up: true,
                carrier: true,
                mtu: 1500,
            });
        }
        kernel
    }

    /// Adds a link as it is (its index is assigned).
    pub fn add(&mut self, mut link: HostLink) {
        link.index = self.next_index.max(2);
        self.next_index = link.index + 1;
        self.links.push(link);
        self.refresh();
    }

    /// The links, as an observation would return them.
    pub fn links(&self) -> Vec<HostLink> {
        self.links.clone()
    }

    pub fn link(&self, name: &str) -> Option<&HostLink> {
        self.links.iter().find(|l| l.name == name)
    }

    /// Applies `op` as the kernel would, or says why the kernel would refuse it.
    pub fn apply(&mut self, op: &LinkOp) -> Result<(), String> {
        self.recorded.push(op.clone());
        let result = self.apply_inner(op);
        self.refresh();
        result.map_err(|e| format!("{op}: {e}"))
    }

    fn position(&self, name: &str) -> Result<usize, String> {
        self.links
            .iter()
            .position(|l| l.name == name)
            .ok_or_else(|| "no such device (ENODEV)".to_owned())
    }

    fn apply_inner(&mut self, op: &LinkOp) -> Result<(), String> {
        match op {
            LinkOp::CreateBond { name, mode, options } => {
                self.create(name)?;
                self.add(HostLink {
                    index: 0,
                    name: name.clone(),
                    kind: HostKind::Bond {
                        mode: *mode,
                        options: merge(&kernel_defaults(), options),
                    },
                    master: None,
                    parent: None,
                    up: false,
                    carrier: false,
                    mtu: 1500,
                });
            }
            LinkOp::SetBond { name, mode, options } => {
                let i = self.position(name)?;
                let members = self.links.iter().any(|l| l.master.as_deref() == Some(name));
                let link = &mut self.links[i];
                let HostKind::Bond {
                    mode: now,
                    options: now_options,
                } = &mut link.kind
                else {
                    return Err("not a bond (EOPNOTSUPP)".to_owned());
                };
                let needs_down =
                    mode.is_some() || options.iter().any(|o| o.needs_down() || o.needs_no_members());
                if needs_down && link.up {
                    return Err("bond is up (EBUSY)".to_owned());
                }
                let needs_no_members = mode.is_some() || options.iter().any(BondOption::needs_no_members);
                if needs_no_members && members {
                    return Err("bond has members (ENOTEMPTY)".to_owned());
                }
                if let Some(mode) = mode {
                    *now = *mode;
                }
                *now_options = merge(now_options, options);
            }
            LinkOp::CreateVlan { name, parent, id } => {
                self.create(name)?;
                let p = self.position(parent)?;
                let taken = self.links.iter().any(|l| {
                    l.kind == HostKind::Vlan { id: *id } && l.parent.as_deref() == Some(parent.as_str())
                });
                if taken {
                    return Err("tag in use on the parent (EEXIST)".to_owned());
                }
                let mtu = self.links[p].mtu;
                self.add(HostLink {
                    index: 0,
                    name: name.clone(),
                    kind: HostKind::Vlan { id: *id },
                    master: None,
                    parent: Some(parent.clone()),
                    up: false,
                    carrier: false,
                    mtu,
                });
            }
            LinkOp::Enslave { member, bond } => {
                let b = self.position(bond)?;
                if !matches!(self.links[b].kind, HostKind::Bond { .. }) {
                    return Err("master is not a bond (EOPNOTSUPP)".to_owned());
                }
                let mtu = self.links[b].mtu;
                let m = self.position(member)?;
                let link = &mut self.links[m];
                if link.up {
                    return Err("device can not be enslaved while up (EPERM)".to_owned());
                }
                if link.master.is_some() {
                    return Err("device is already a member (EBUSY)".to_owned());
                }
                link.master = Some(bond.clone());
                link.up = true;
                link.mtu = mtu;
            }
            LinkOp::Release { member } => {
                let m = self.position(member)?;
                let link = &mut self.links[m];
                if link.master.take().is_none() {
                    return Err("not a member (EINVAL)".to_owned());
                }
                link.up = false;
            }
            LinkOp::SetDown { name } => {
                let i = self.position(name)?;
                self.links[i].up = false;
            }
            LinkOp::SetUp { name } => {
                let i = self.position(name)?;
                self.links[i].up = true;
            }
            LinkOp::SetMtu { name, mtu } => {
                let i = self.position(name)?;
                if let Some(parent) = self.links[i].parent.clone() {
                    let p = self.position(&parent)?;
                    if *mtu > self.links[p].mtu {
                        return Err("MTU above the parent's (ERANGE)".to_owned());
                    }
                }
                self.links[i].mtu = *mtu;
                for link in &mut self.links {
                    let member = link.master.as_deref() == Some(name);
                    let stacked = link.parent.as_deref() == Some(name) && link.mtu > *mtu;
                    if member || stacked {
                        link.mtu = *mtu;
                    }
                }
            }
            LinkOp::Delete { name } => {
                self.position(name)?;
                self.links
                    .retain(|l| &l.name != name && l.parent.as_deref() != Some(name));
                for link in &mut self.links {
                    if link.master.as_deref() == Some(name) {
                        link.master = None;
                        link.up = false;
                    }
                }
            }
        }
        Ok(())
    }

    fn create(&self, name: &str) -> Result<(), String> {
        if self.links.iter().any(|l| l.name == name) {
            return Err("file exists (EEXIST)".to_owned());
        }
        Ok(())
    }

    /// Carrier: devices when up (and plugged), bonds when up with a member that has carrier, VLANs
    /// when up on a parent that has it.
    fn refresh(&mut self) {
        // Two passes settle bonds over devices and VLANs over bonds.
        for _ in 0..2 {
            let current = self.links.clone();
            let carrier = |name: &str| current.iter().find(|l| l.name == name).is_some_and(|l| l.carrier);
            for link in &mut self.links {
                link.carrier = link.up
                    && match &link.kind {
                        HostKind::Bond { .. } => current
                            .iter()
                            .any(|m| m.master.as_deref() == Some(link.name.as_str()) && m.carrier),
                        HostKind::Vlan { .. } => link.parent.as_deref().is_some_and(carrier),
                        HostKind::Other(_) => !self.unplugged.contains(&link.name),
                    };
            }
        }
    }
}

/// Every option a new bond reports (the kernel reports all of them), at the kernel's defaults.
fn kernel_defaults() -> Vec<BondOption> {
    [
        ("ad_select", "stable"),
        ("all_slaves_active", "dropped"),
        ("arp_interval", "0"),
        ("downdelay", "0"),
        ("fail_over_mac", "none"),
        ("lacp_rate", "slow"),
        ("miimon", "0"),
        ("min_links", "0"),
        ("num_grat_arp", "1"),
        ("primary_reselect", "always"),
        ("updelay", "0"),
        ("use_carrier", "on"),
        ("xmit_hash_policy", "layer2"),
    ]
    .iter()
    .filter_map(|(name, value)| BondOption::parse(name, value).ok())
    .collect()
}

/// `base` with `changes` put over it, sorted.
fn merge(base: &[BondOption], changes: &[BondOption]) -> Vec<BondOption> {
    let mut by_name: BTreeMap<&str, BondOption> = base.iter().map(|o| (o.name, o.clone())).collect();
    for change in changes {
        by_name.insert(change.name, change.clone());
    }
    by_name.into_values().collect()
}

/// A [`Host`] over a shared [`FakeKernel`]: the status-flow tests run the agent's executor on it and
/// look at, or change, the simulated node through a clone.
#[derive(Clone, Debug, Default)]
pub struct FakeHost {
    node: std::sync::Arc<std::sync::Mutex<FakeNode>>,
}

/// What a [`FakeHost`] simulates.
#[derive(Clone, Debug, Default)]
pub struct FakeNode {
    pub kernel: FakeKernel,
    /// Where the node's own traffic starts.
    pub anchors: Vec<super::safety::Anchor>,
    /// Gateways that answer probes: (interface, address).
    pub gateways: Vec<(String, std::net::IpAddr)>,
    /// Operations (as displayed) the kernel refuses.
    pub failing: Vec<String>,
    /// How long each operation takes (so a test can watch a change in progress).
    pub apply_delay: std::time::Duration,
}

impl FakeHost {
    pub fn new(kernel: FakeKernel) -> FakeHost {
        FakeHost {
            node: std::sync::Arc::new(std::sync::Mutex::new(FakeNode {
                kernel,
                ..FakeNode::default()
            })),
        }
    }

    /// Runs `f` on the simulated node.
    pub fn with<T>(&self, f: impl FnOnce(&mut FakeNode) -> T) -> T {
        let mut node = self
            .node
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut node)
    }
}

impl super::host::Host for FakeHost {
    async fn observe(
        &mut self,
        _node_ips: &[std::net::IpAddr],
    ) -> Result<super::host::Observation, super::host::HostError> {
        Ok(self.with(|node| super::host::Observation {
            links: node.kernel.links(),
            anchors: node.anchors.clone(),
        }))
    }

    async fn apply(&mut self, op: &LinkOp) -> Result<(), super::host::HostError> {
        let delay = self.with(|node| node.apply_delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.with(|node| {
            if node.failing.contains(&op.to_string()) {
                node.kernel.recorded.push(op.clone());
                return Err(super::host::HostError::Refused(format!("{op}: injected failure")));
            }
            node.kernel.apply(op).map_err(super::host::HostError::Refused)
        })
    }

    async fn probe_gateway(
        &mut self,
        interface: &str,
        gateway: std::net::IpAddr,
        _timeout: std::time::Duration,
    ) -> Result<bool, super::host::HostError> {
        Ok(self.with(|node| {
            let up = node.kernel.link(interface).is_some_and(|l| l.up && l.carrier);
            up && node.gateways.iter().any(|(i, g)| i == interface && *g == gateway)
        }))
    }
}
