//! The underlay network of a real-node cluster: a bridge that plays the physical switch, in a network
//! namespace of its own (`rn<id>-sw`), with
//!
//! - the subnet's gateway address on the bridge itself (`.1`): the "router" a pod's default route
//!   points at. Forwarding is off in that namespace and it has no other link, so nothing sent to the
//!   gateway goes anywhere;
//! - one link to the machine's own network namespace, `rn<id>-h` with address `.2`: the API server
//!   listens there, so kubelets, kube-proxies and pods reach it. Nothing routes through it: no
//!   namespace of the cluster has a route via `.2`, so no packet of the cluster can leave the machine;
//! - two links per node: the node's `eth0`, which carries its InternalIP (`.10`, `.11`, ...), and
//!   its `eth1`, an "uplink" without an address (a second NIC, for macvlan interfaces of secondary
//!   networks).
//!
//! Every address of a cluster comes from one /21 of 198.18.0.0/15 (reserved for network tests),
//! picked per cluster so that it overlaps no route of the machine (another cluster's included): its
//! first /24 is the underlay subnet, its second the Service CIDR, its upper /22 the pod networks.
//! The machine routes the Service CIDR and each pod network to a node over its link, so that nothing
//! the machine's own processes send to a cluster address (the API server calling a webhook, a user's
//! `curl` to a ClusterIP) follows the machine's default route out.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, bail};
use ipnet::Ipv4Net;

use crate::util;
use crate::watchdog::{self, Registration, Resource};

/// A node's links on the underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLinks {
    /// The node's InternalIP, on `eth0`.
    pub ip: Ipv4Addr,
}

/// The name of the node-side link that carries the node's IP.
pub const NODE_NIC: &str = "eth0";
/// The name of the node-side uplink without an address.
pub const UPLINK_NIC: &str = "eth1";

/// The switch. Dropping it removes the switch namespace (and with it every switch-side port) and the
/// machine-side link.
#[derive(Debug)]
pub struct Underlay {
    switch_netns: String,
    host_link: String,
    block: Ipv4Net,
    subnet: Ipv4Net,
    prefix: String,
    _registrations: Vec<Registration>,
}

impl Underlay {
    /// Creates the switch namespace and bridge, and the machine's link to it. `prefix` (`rn<id>`) is
    /// unique per cluster.
    pub fn create(prefix: &str) -> Result<Self> {
        let block = free_block()?;
        let subnet = Ipv4Net::new(block.network(), 24)?;
        let switch_netns = format!("{prefix}-sw");
        let host_link = format!("{prefix}-h");
        let mut registrations = Vec::new();
        util::ip(&["netns", "add", &switch_netns])?;
        registrations.push(watchdog::register(Resource::Netns(switch_netns.clone())));
        let underlay = Underlay {
            switch_netns,
            host_link,
            block,
            subnet,
            prefix: prefix.to_owned(),
            _registrations: registrations,
        };
        underlay.build().context("building the underlay switch")?;
        Ok(underlay)
    }

    fn build(&self) -> Result<()> {
        let sw = self.switch_netns.as_str();
        sysctl_in(sw, "net.ipv4.ip_forward", "0")?;
        util::ip(&["-n", sw, "link", "set", "lo", "up"])?;
        util::ip(&["-n", sw, "link", "add", "br0", "type", "bridge"])?;
        util::ip(&["-n", sw, "link", "set", "br0", "up"])?;
        let gateway = format!("{}/{}", self.gateway(), self.subnet.prefix_len());
        util::ip(&["-n", sw, "addr", "add", &gateway, "dev", "br0"])?;
        // The machine's end stays in the machine's namespace; its peer becomes a switch port.
        util::ip(&[
            "link",
            "add",
            &self.host_link,
            "type",
            "veth",
            "peer",
            "name",
            "uplink-host",
            "netns",
            sw,
        ])?;
        util::ip(&["-n", sw, "link", "set", "uplink-host", "master", "br0", "up"])?;
        let host = format!("{}/{}", self.host_address(), self.subnet.prefix_len());
        util::ip(&["addr", "add", &host, "dev", &self.host_link])?;
        util::ip(&["link", "set", &self.host_link, "up"])?;
        Ok(())
    }

    /// The underlay subnet (a /24).
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The cluster's /21: every address of the cluster is in it.
    pub fn block(&self) -> Ipv4Net {
        self.block
    }

    /// The cluster's Service CIDR (a /24).
    pub fn service_cidr(&self) -> Ipv4Net {
        self.nth_24(1)
    }

    /// A /24 of the block nobody uses otherwise (`index` 0 or 1): another subnet on the same switch
    /// (a second rack's, say; [`Underlay::add_gateway`] gives it a gateway).
    pub fn spare_subnet(&self, index: u8) -> Result<Ipv4Net> {
        match index {
            0 | 1 => Ok(self.nth_24(2 + usize::from(index))),
            _ => bail!("the underlay has two spare /24s"),
        }
    }

    /// The pod networks' /22 (kube-proxy's `clusterCIDR`); a node's pod network is one of its /24s.
    pub fn pod_cidr(&self) -> Ipv4Net {
        self.block
            .subnets(22)
            .ok()
            .and_then(|mut s| s.nth(1))
            .unwrap_or(self.block)
    }

    fn nth_24(&self, n: usize) -> Ipv4Net {
        self.block
            .subnets(24)
            .ok()
            .and_then(|mut s| s.nth(n))
            .unwrap_or(self.subnet)
    }

    /// Routes `cidr` from the machine's namespace to `node` over the machine's link (the route goes
    /// with the link).
    pub fn route_to_node(&self, cidr: Ipv4Net, node: Ipv4Addr) -> Result<()> {
        util::ip(&[
            "route",
            "add",
            &cidr.to_string(),
            "via",
            &node.to_string(),
            "dev",
            &self.host_link,
        ])?;
        Ok(())
    }

    /// The gateway (`.1`), on the switch.
    pub fn gateway(&self) -> Ipv4Addr {
        self.host(1)
    }

    /// The machine's address on the underlay (`.2`), where the API server listens.
    pub fn host_address(&self) -> Ipv4Addr {
        self.host(2)
    }

    /// The machine's link to the switch.
    pub fn host_link(&self) -> &str {
        &self.host_link
    }

    /// The switch's network namespace.
    pub fn switch_netns(&self) -> &str {
        &self.switch_netns
    }

    /// Host number `n` of the subnet.
    pub fn host(&self, n: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.subnet.network().octets();
        Ipv4Addr::new(a, b, c, n)
    }

    /// Plugs node `index` (network namespace `netns`) into the switch: `eth0` with the node's IP
    /// (`.10 + index`) and `eth1` without one. Also routes the Service CIDR out of `eth0`: a
    /// node's own connections to a ClusterIP need a route before kube-proxy's DNAT rewrites them, and
    /// the nodes have no default route.
    pub fn attach_node(&self, netns: &str, index: u8) -> Result<NodeLinks> {
        let host_number = index
            .checked_add(10)
            .filter(|n| *n < 100)
            .context("at most 90 nodes")?;
        let ip = self.host(host_number);
        for (nic, side) in [(NODE_NIC, 'a'), (UPLINK_NIC, 'b')] {
            // Created in the machine's namespace under a unique name, then moved to the switch.
            let port = format!("{}n{index}{side}", self.prefix);
            util::ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", nic, "netns", netns,
            ])
            .with_context(|| format!("creating {nic} of node {index}"))?;
            util::ip(&["link", "set", &port, "netns", &self.switch_netns])?;
            util::ip(&[
                "-n",
                &self.switch_netns,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ])?;
            util::ip(&["-n", netns, "link", "set", nic, "up"])?;
        }
        util::ip(&["-n", netns, "link", "set", "lo", "up"])?;
        let address = format!("{ip}/{}", self.subnet.prefix_len());
        util::ip(&["-n", netns, "addr", "add", &address, "dev", NODE_NIC])?;
        let service_cidr = self.service_cidr().to_string();
        util::ip(&["-n", netns, "route", "add", &service_cidr, "dev", NODE_NIC])?;
        Ok(NodeLinks { ip })
    }

    /// Adds `address/prefix` to the switch's bridge: the gateway of another subnet on the same
    /// segment (a second rack, say).
    pub fn add_gateway(&self, address: Ipv4Net) -> Result<()> {
        util::ip(&[
            "-n",
            &self.switch_netns,
            "addr",
            "add",
            &address.to_string(),
            "dev",
            "br0",
        ])?;
        Ok(())
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        // Deleting the namespace deletes every switch port, and with them their peers (the node
        // NICs, the machine's link).
        if let Err(err) = util::ip(&["netns", "delete", &self.switch_netns]) {
            tracing::warn!(%err, "removing the underlay switch");
        }
        if std::path::Path::new("/sys/class/net")
            .join(&self.host_link)
            .exists()
        {
            let _ = util::ip(&["link", "delete", &self.host_link]);
        }
    }
}

fn sysctl_in(netns: &str, key: &str, value: &str) -> Result<()> {
    util::run(std::process::Command::new("ip").args([
        "netns",
        "exec",
        netns,
        "sysctl",
        "-qw",
        &format!("{key}={value}"),
    ]))?;
    Ok(())
}

/// A /21 of 198.18.0.0/15 that overlaps none of the machine's IPv4 routes and addresses (another
/// cluster's included), starting at a random one.
fn free_block() -> Result<Ipv4Net> {
    let routes = util::ip(&["-4", "route", "show", "table", "all"])?;
    let taken: Vec<Ipv4Net> = routes
        .lines()
        .filter_map(|line| line.split_whitespace().find_map(|w| w.parse::<Ipv4Net>().ok()))
        .filter(|net| net.prefix_len() > 0)
        .collect();
    let addresses = util::ip(&["-4", "-o", "addr", "show"])?;
    let taken_addresses: Vec<Ipv4Net> = addresses
        .lines()
        .filter_map(|line| line.split_whitespace().find_map(|w| w.parse::<Ipv4Net>().ok()))
        .collect();
    let blocks: Vec<Ipv4Net> = Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 15)?
        .subnets(21)?
        .collect();
    let start = usize::from(u16::from_str_radix(&util::unique_hex(4), 16).unwrap_or(0)) % blocks.len();
    for offset in 0..blocks.len() {
        let candidate = blocks[(start + offset) % blocks.len()];
        let overlaps =
            |net: &Ipv4Net| net.contains(&candidate.network()) || candidate.contains(&net.network());
        if !taken.iter().any(overlaps) && !taken_addresses.iter().any(|a| overlaps(&a.trunc())) {
            return Ok(candidate);
        }
    }
    bail!("no free /21 left in 198.18.0.0/15 for a real-node cluster")
}
