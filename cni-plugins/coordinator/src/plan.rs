//! The pure half of the coordinator: from the resolved configuration and a snapshot of the pod's
//! and the host's network state, the exact list of changes ADD makes ([`plan_add`]) and the exact
//! list DEL makes ([`plan_del`]). No I/O: the shell (`apply`) gathers the [`Snapshot`] and carries
//! the steps out in order.
//!
//! ADD follows upstream's plugin step by step (reference 6.2; upstream v1.2.2's `cmd/coordinator`):
//! mode and first-invocation check, the host addresses the pod must reach through the node, the veth
//! pair (underlay, first interface), the MAC from the address, txqueuelen, sysctls, neighbour entries,
//! host routes and the host rule, hijack routes, the reply path (underlay, first interface), the
//! policy tables of extra interfaces, and `policyRoutes`.
//!
//! DEL removes what ADD made on the host: the host end of the veth pair (its routes and neighbour
//! entries go with it), the routes to the pod's addresses in the host rule table and the static
//! neighbour entries for them (overlay mode puts those on the overlay CNI's link), and the
//! `from all lookup <hostRuleTable>` rule once no pod's route is left in that table. Upstream never
//! removes that rule; it is shared by every pod of the node, so DEL and ADD take a lock around it.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use spiderpool_ipmath::{IpFamily, IpNet};
use spiderpool_netlink::route::TABLE_MAIN;
use spiderpool_netlink::{Address, Mac, Neighbour, Route, Rule, Scope};

use crate::config::{Config, Mode};

/// The pod-side end of the veth pair in underlay mode.
pub const UNDERLAY_VETH: &str = "veth0";
/// The reply table: traffic that entered through `veth0` goes back through it.
pub const REPLY_TABLE: u32 = 100;
/// Priority of the host rule and of the reply-path mark rule (upstream's).
pub const RULE_PRIORITY: u32 = 1000;
/// The mark put on connections that entered through `veth0`.
pub const REPLY_MARK: u32 = 1;

/// Host interfaces whose addresses are not "the node" for the pod (upstream's exclusion list:
/// bridges and tunnels of container runtimes and overlay CNIs, and other pods' veths).
const HOST_INTERFACE_PREFIXES_EXCLUDED: [&str; 12] = [
    "docker",
    "cbr",
    "dummy",
    "virbr",
    "lxcbr",
    "veth",
    "cali",
    "flannel",
    "kube-ipvs",
    "cni",
    "vx-submariner",
    "ciliu",
];

/// The host end of the veth pair of container `container_id` (upstream's naming: `veth` and the
/// container id's first 11 characters, 15 in all).
pub fn host_veth_name(container_id: &str) -> String {
    let prefix: String = container_id.chars().take(11).collect();
    format!("veth{prefix}")
}

/// A link as the snapshot saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    /// Index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Up.
    pub up: bool,
    /// Broadcast and multicast (Ethernet-like; what upstream counts as a pod NIC).
    pub ethernet_like: bool,
    /// MAC.
    pub mac: Option<Mac>,
    /// `IFLA_LINK`: a veth's peer index (in the other namespace).
    pub peer: Option<u32>,
    /// The link kind (`macvlan`, `ipvlan`, `veth`, ...); `None` for a physical NIC.
    pub kind: Option<String>,
}

/// The pod's state (after its interface was brought up, before any change).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodState {
    /// Its links, in the kernel's order.
    pub links: Vec<LinkState>,
    /// Its addresses.
    pub addresses: Vec<Address>,
    /// Its routes, every table.
    pub routes: Vec<Route>,
}

/// The host's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostState {
    /// For each pod address, the source address the host would use to reach it (`ip route get`).
    pub sources: Vec<(IpAddr, IpAddr)>,
    /// The host's addresses, with the name of their link.
    pub addresses: Vec<(String, IpAddr)>,
    /// The host end of this pod's veth pair, when it exists.
    pub veth: Option<LinkState>,
    /// The host end of the pod's first interface (overlay mode: the overlay CNI's veth).
    pub overlay_peer: Option<LinkState>,
    /// The host's neighbour entries.
    pub neighbours: Vec<Neighbour>,
    /// The host's routes in every table.
    pub routes: Vec<Route>,
    /// The host's rules.
    pub rules: Vec<Rule>,
}

/// Everything [`plan_add`] looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The pod.
    pub pod: PodState,
    /// The host.
    pub host: HostState,
}

/// Which namespace a step changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The node.
    Host,
    /// The pod.
    Pod,
}

/// A route to add; its link is named (it may not exist yet when the plan is made).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRoute {
    /// Namespace.
    pub side: Side,
    /// Table.
    pub table: u32,
    /// Destination.
    pub destination: IpNet,
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// Output link.
    pub link: String,
    /// Scope.
    pub scope: Scope,
    /// Preferred source.
    pub source: Option<IpAddr>,
}

/// One change. Adds tolerate "exists" and deletes "already gone", as upstream's do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A veth pair: `pod` in the pod, `host` on the node, both brought up.
    CreateVeth {
        /// Pod end.
        pod: String,
        /// Its MAC.
        pod_mac: Mac,
        /// Host end.
        host: String,
        /// Its MAC.
        host_mac: Mac,
        /// MTU of both.
        mtu: u32,
    },
    /// An address on a pod link.
    AddAddress {
        /// The link.
        link: String,
        /// The address.
        address: IpNet,
    },
    /// A pod link's MAC.
    SetMac {
        /// The link.
        link: String,
        /// The MAC.
        mac: Mac,
    },
    /// A pod link's transmit queue length.
    SetTxQueueLen {
        /// The link.
        link: String,
        /// The length.
        len: u32,
    },
    /// A sysctl in the pod (`net/...` under `/proc/sys`).
    Sysctl {
        /// Path under `/proc/sys`.
        path: String,
        /// Value.
        value: String,
    },
    /// Delete a neighbour entry.
    DeleteNeighbour {
        /// Namespace.
        side: Side,
        /// The entry.
        neighbour: Neighbour,
    },
    /// A permanent neighbour entry.
    AddNeighbour {
        /// Namespace.
        side: Side,
        /// Link.
        link: String,
        /// IP.
        ip: IpAddr,
        /// MAC.
        mac: Mac,
    },
    /// Delete a route.
    DeleteRoute {
        /// Namespace.
        side: Side,
        /// The route as the snapshot saw it.
        route: Route,
    },
    /// Add a route.
    AddRoute(NewRoute),
    /// Add a rule.
    AddRule {
        /// Namespace.
        side: Side,
        /// The rule.
        rule: Rule,
    },
    /// Delete a rule.
    DeleteRule {
        /// Namespace.
        side: Side,
        /// The rule.
        rule: Rule,
    },
    /// Delete a host link.
    DeleteHostLink {
        /// Its name.
        name: String,
    },
    /// Rules in the pod's `mangle` table of each family (lines as `iptables-save` prints them),
    /// added unless present.
    Iptables {
        /// `iptables`, `ip6tables` or both.
        families: Vec<IpFamily>,
        /// `-A CHAIN ...` lines.
        rules: Vec<String>,
    },
}

fn side(side: Side) -> &'static str {
    match side {
        Side::Host => "host",
        Side::Pod => "pod",
    }
}

fn scope_word(scope: Scope) -> String {
    match scope {
        Scope::Universe => "global".to_owned(),
        Scope::Link => "link".to_owned(),
        Scope::Host => "host".to_owned(),
        Scope::Other(value) => value.to_string(),
    }
}

fn table_word(table: u32) -> String {
    if table == TABLE_MAIN {
        "main".to_owned()
    } else {
        table.to_string()
    }
}

fn mac_text(mac: &Mac) -> String {
    spiderpool_netlink::link::format_mac(mac)
}

impl fmt::Display for NewRoute {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.destination)?;
        if let Some(gateway) = self.gateway {
            write!(formatter, " via {gateway}")?;
        }
        write!(formatter, " dev {} scope {}", self.link, scope_word(self.scope))?;
        if let Some(source) = self.source {
            write!(formatter, " src {source}")?;
        }
        write!(formatter, " table {}", table_word(self.table))
    }
}

/// `ip`-like lines, for logs and for reading plans in tests.
impl fmt::Display for Step {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CreateVeth {
                pod,
                pod_mac,
                host,
                host_mac,
                mtu,
            } => write!(
                formatter,
                "pod: link add {pod} address {} mtu {mtu} up, peer {host} address {} on the host, up",
                mac_text(pod_mac),
                mac_text(host_mac)
            ),
            Self::AddAddress { link, address } => write!(formatter, "pod: addr add {address} dev {link}"),
            Self::SetMac { link, mac } => write!(formatter, "pod: link set {link} address {}", mac_text(mac)),
            Self::SetTxQueueLen { link, len } => write!(formatter, "pod: link set {link} txqueuelen {len}"),
            Self::Sysctl { path, value } => {
                write!(formatter, "pod: sysctl {}={value}", path.replace('/', "."))
            }
            Self::DeleteNeighbour { side: s, neighbour } => write!(
                formatter,
                "{}: neigh del {} dev #{}",
                side(*s),
                neighbour.ip,
                neighbour.index
            ),
            Self::AddNeighbour {
                side: s,
                link,
                ip,
                mac,
            } => write!(
                formatter,
                "{}: neigh add {ip} lladdr {} dev {link} nud permanent",
                side(*s),
                mac_text(mac)
            ),
            Self::DeleteRoute { side: s, route } => write!(
                formatter,
                "{}: route del {}",
                side(*s),
                spiderpool_netlink::route::describe(route)
            ),
            Self::AddRoute(route) => write!(formatter, "{}: route add {route}", side(route.side)),
            Self::AddRule { side: s, rule } => write!(
                formatter,
                "{}: rule add {} {}",
                side(*s),
                rule.family,
                spiderpool_netlink::rule::describe(rule)
            ),
            Self::DeleteRule { side: s, rule } => write!(
                formatter,
                "{}: rule del {} {}",
                side(*s),
                rule.family,
                spiderpool_netlink::rule::describe(rule)
            ),
            Self::DeleteHostLink { name } => write!(formatter, "host: link del {name}"),
            Self::Iptables { families, rules } => {
                let binaries: Vec<&str> = families
                    .iter()
                    .map(|family| match family {
                        IpFamily::V4 => "iptables",
                        IpFamily::V6 => "ip6tables",
                    })
                    .collect();
                write!(
                    formatter,
                    "pod: {} -t mangle {}",
                    binaries.join(", "),
                    rules.join(" ; ")
                )
            }
        }
    }
}

/// What ADD will do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The mode `auto` resolved to.
    pub mode: Mode,
    /// The first interface the coordinator wires in this pod.
    pub first_invoke: bool,
    /// The interface's policy routing table.
    pub table: u32,
    /// The changes, in order.
    pub steps: Vec<Step>,
    /// Things worth a log line that change nothing (e.g. no default route to tune).
    pub notes: Vec<String>,
}

/// Why ADD cannot wire the pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The interface is not in the pod.
    #[error("interface {0} not found in the pod")]
    NoInterface(String),
    /// The interface has no address (the main plugin gave it none).
    #[error("interface {0} has no IP address: the coordinator runs after a plugin that configures one")]
    NoAddress(String),
    /// Underlay on an extra interface without the first interface's veth pair.
    #[error(
        "underlay mode on {ifname}: the pod has no {UNDERLAY_VETH}, so the coordinator did not run for its first interface {first}; chain the coordinator in the first interface's network too"
    )]
    NoUnderlayVeth {
        /// This interface.
        ifname: String,
        /// The first interface.
        first: String,
    },
    /// Overlay mode on the pod's first interface.
    #[error(
        "overlay mode on {0}, the pod's first interface: overlay mode is for extra interfaces next to an overlay CNI's; use underlay or auto"
    )]
    OverlayOnFirst(String),
    /// Overlay mode where underlay mode already made a veth pair.
    #[error(
        "overlay mode on {0}, but the pod has {UNDERLAY_VETH}: its first interface was wired in underlay mode"
    )]
    OverlayAfterUnderlay(String),
    /// The host end of the veth pair (or of the overlay CNI's veth) was not found.
    #[error("the host end {0} of the pod's veth pair was not found on the node")]
    NoHostVeth(String),
    /// `podDefaultRouteNIC` names an interface the pod does not have.
    #[error("podDefaultRouteNIC {0} is not an interface of the pod")]
    NoDefaultRouteNic(String),
}

/// The families of an interface's addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Families {
    /// Has IPv4.
    pub v4: bool,
    /// Has IPv6.
    pub v6: bool,
}

impl Families {
    fn of(addresses: &[IpNet]) -> Self {
        Self {
            v4: addresses.iter().any(|net| net.addr().is_ipv4()),
            v6: addresses.iter().any(|net| net.addr().is_ipv6()),
        }
    }

    /// Whether `ip` is of one of the families.
    pub fn admits(&self, ip: &IpAddr) -> bool {
        if ip.is_ipv4() { self.v4 } else { self.v6 }
    }

    fn list(&self) -> Vec<IpFamily> {
        let mut families = Vec::new();
        if self.v4 {
            families.push(IpFamily::V4);
        }
        if self.v6 {
            families.push(IpFamily::V6);
        }
        families
    }
}

/// An address as a host route (`/32`, `/128`).
pub fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

fn default_net(family: IpFamily) -> IpNet {
    match family {
        IpFamily::V4 => IpNet::V4(Ipv4Net::default()),
        IpFamily::V6 => IpNet::V6(Ipv6Net::default()),
    }
}

/// What upstream counts as a usable address: not link-local, not multicast.
pub fn usable(address: &Address) -> bool {
    let ip = address.address.addr();
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    };
    !address.link_scope && !link_local && !ip.is_multicast()
}

impl PodState {
    /// The link called `name`.
    pub fn link(&self, name: &str) -> Option<&LinkState> {
        self.links.iter().find(|link| link.name == name)
    }

    /// The usable addresses of the link called `name`, in the kernel's order.
    pub fn addresses_of(&self, name: &str) -> Vec<IpNet> {
        let Some(link) = self.link(name) else {
            return Vec::new();
        };
        self.addresses
            .iter()
            .filter(|address| address.index == link.index && usable(address))
            .map(|address| address.address)
            .collect()
    }

    /// Links upstream counts when numbering tables: up, broadcast and multicast.
    fn up_links(&self) -> usize {
        self.links
            .iter()
            .filter(|link| link.up && link.ethernet_like)
            .count()
    }

    /// Main-table routes of `families`.
    fn main_routes(&self, families: Families) -> impl Iterator<Item = &Route> {
        self.routes
            .iter()
            .filter(move |route| route.table == TABLE_MAIN && families.admits(&route.destination.addr()))
    }
}

/// Everything [`plan_add`] needs besides the snapshot.
#[derive(Clone, Debug)]
pub struct AddRequest<'a> {
    /// The resolved configuration.
    pub config: &'a Config,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// MACs for a new veth pair (pod end, host end): set explicitly so that nothing (udev's
    /// `MACAddressPolicy`) changes them after the neighbour entries name them.
    pub veth_macs: (Mac, Mac),
}

/// The mode, whether this is the first interface wired, and the interface's table.
fn resolve_mode(config: &Config, ifname: &str, pod: &PodState) -> Result<(Mode, bool, u32), PlanError> {
    let veth_exists = pod.link(UNDERLAY_VETH).is_some();
    let first_nic = config.first_nic.as_str();
    let up_links = u32::try_from(pod.up_links()).unwrap_or(u32::MAX);
    let mode = match config.mode {
        Mode::Auto if ifname == first_nic || veth_exists => Mode::Underlay,
        Mode::Auto => Mode::Overlay,
        other => other,
    };
    match mode {
        Mode::Underlay => {
            let first = ifname == first_nic;
            if !first && !veth_exists {
                return Err(PlanError::NoUnderlayVeth {
                    ifname: ifname.to_owned(),
                    first: first_nic.to_owned(),
                });
            }
            // Upstream keeps 100 for the reply path; the first interface gets 101, later ones
            // count the pod's links (veth0, eth0, net1 -> 101; net2 -> 102).
            let table = if first {
                REPLY_TABLE + 1
            } else {
                up_links.saturating_add(98)
            };
            Ok((mode, first, table))
        }
        Mode::Overlay => {
            if ifname == first_nic {
                return Err(PlanError::OverlayOnFirst(ifname.to_owned()));
            }
            if veth_exists {
                return Err(PlanError::OverlayAfterUnderlay(ifname.to_owned()));
            }
            // eth0 and this interface: the first underlay interface next to the overlay.
            let first = up_links == 2;
            let table = if first {
                REPLY_TABLE + 1
            } else {
                up_links.saturating_add(99)
            };
            Ok((mode, first, table))
        }
        Mode::Disable | Mode::Auto => Ok((Mode::Disable, false, 0)),
    }
}

/// The node's addresses the pod must reach through the veth pair (or the overlay interface): for
/// each pod address the source the node uses to reach it, then every address of the node's own
/// interfaces (not other pods' veths, runtime bridges or tunnels), of the interface's families.
pub fn host_addresses_for_pod(pod_ips: &[IpAddr], host: &HostState, families: Families) -> Vec<IpAddr> {
    let mut found: Vec<IpAddr> = Vec::new();
    for ip in pod_ips {
        if let Some((_, source)) = host.sources.iter().find(|(pod_ip, _)| pod_ip == ip)
            && families.admits(source)
            && !found.contains(source)
        {
            found.push(*source);
        }
    }
    for (link, ip) in &host.addresses {
        let excluded = link == "lo"
            || HOST_INTERFACE_PREFIXES_EXCLUDED
                .iter()
                .any(|prefix| link.starts_with(prefix));
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local() || v4.is_loopback(),
            IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80 || v6.is_loopback(),
        };
        if !excluded && !link_local && !ip.is_multicast() && families.admits(ip) && !found.contains(ip) {
            found.push(*ip);
        }
    }
    found
}

/// The MAC of an address: the prefix and the address's last four bytes (an IPv4 address whole).
pub fn mac_from(prefix: [u8; 2], ip: IpAddr) -> Mac {
    let tail = match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let octets = v6.octets();
            [octets[12], octets[13], octets[14], octets[15]]
        }
    };
    [prefix[0], prefix[1], tail[0], tail[1], tail[2], tail[3]]
}

/// The reply-path rules in the pod's `mangle` table, as `iptables-save` prints them.
pub fn reply_path_rules() -> Vec<String> {
    let mark = format!("{REPLY_MARK:#x}");
    vec![
        format!(
            "-A PREROUTING -i {UNDERLAY_VETH} -m conntrack --ctstate NEW -j MARK --set-xmark {mark}/0xffffffff"
        ),
        format!(
            "-A PREROUTING -m mark --mark {mark} -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff"
        ),
        "-A OUTPUT -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff".to_owned(),
    ]
}

/// The changes ADD makes for `request` on `snapshot`.
pub fn plan_add(request: &AddRequest<'_>, snapshot: &Snapshot) -> Result<Plan, PlanError> {
    let config = request.config;
    let ifname = request.ifname;
    let pod = &snapshot.pod;
    let host = &snapshot.host;
    let link = pod
        .link(ifname)
        .ok_or_else(|| PlanError::NoInterface(ifname.to_owned()))?;
    let current = pod.addresses_of(ifname);
    if current.is_empty() {
        return Err(PlanError::NoAddress(ifname.to_owned()));
    }
    let families = Families::of(&current);
    let (mode, first, table) = resolve_mode(config, ifname, pod)?;
    let mut plan = Plan {
        mode,
        first_invoke: first,
        table,
        steps: Vec::new(),
        notes: Vec::new(),
    };
    if mode == Mode::Disable {
        return Ok(plan);
    }
    let steps = &mut plan.steps;

    // Every usable address of the pod (before our veth0 exists), to find the node's sources.
    let pod_ips: Vec<IpAddr> = pod
        .addresses
        .iter()
        .filter(|address| usable(address) && families.admits(&address.address.addr()))
        .filter(|address| {
            pod.links
                .iter()
                .any(|link| link.index == address.index && link.name != "lo")
        })
        .map(|address| address.address.addr())
        .collect();
    let host_ips = host_addresses_for_pod(&pod_ips, host, families);

    // The two ends: the pod side and the node side of the path through the node.
    let (pod_veth, pod_veth_mac, host_veth, host_veth_mac) = match mode {
        Mode::Underlay if first => {
            let host_name = host_veth_name(request.container_id);
            let (pod_mac, host_mac) = request.veth_macs;
            steps.push(Step::CreateVeth {
                pod: UNDERLAY_VETH.to_owned(),
                pod_mac,
                host: host_name.clone(),
                host_mac,
                mtu: config.veth_mtu,
            });
            if families.v4
                && let Some(address) = config.veth_link_address
            {
                steps.push(Step::AddAddress {
                    link: UNDERLAY_VETH.to_owned(),
                    address: host_net(IpAddr::V4(address)),
                });
            }
            (UNDERLAY_VETH.to_owned(), pod_mac, host_name, host_mac)
        }
        Mode::Underlay => {
            let veth = pod
                .link(UNDERLAY_VETH)
                .ok_or_else(|| PlanError::NoInterface(UNDERLAY_VETH.to_owned()))?;
            let host_name = host_veth_name(request.container_id);
            let host_link = host
                .veth
                .as_ref()
                .ok_or(PlanError::NoHostVeth(host_name.clone()))?;
            (
                UNDERLAY_VETH.to_owned(),
                veth.mac.unwrap_or_default(),
                host_name,
                host_link.mac.unwrap_or_default(),
            )
        }
        _ => {
            let first_nic = pod
                .link(&config.first_nic)
                .ok_or_else(|| PlanError::NoInterface(config.first_nic.clone()))?;
            let peer = host
                .overlay_peer
                .as_ref()
                .ok_or_else(|| PlanError::NoHostVeth(format!("peer of {}", config.first_nic)))?;
            (
                config.first_nic.clone(),
                first_nic.mac.unwrap_or_default(),
                peer.name.clone(),
                peer.mac.unwrap_or_default(),
            )
        }
    };

    // The interface's MAC from its address, announced at once. The kernel announces the link's
    // addresses itself when its MAC changes (gratuitous ARP with `arp_notify`, unsolicited NA with
    // `ndisc_notify`), so ADD opens no packet socket: closing one waits for an RCU grace period
    // (8-16 ms here), which alone was most of ADD's time. An ipvlan link has its master's MAC
    // and no way to change it (the kernel answers EOPNOTSUPP, and upstream fails the ADD on it):
    // one cluster-wide podMACPrefix must not stop every ipvlan pod, so it is skipped there, said in
    // the log.
    let mac_prefix = match config.mac_prefix {
        Some(_) if link.kind.as_deref() == Some("ipvlan") => {
            plan.notes.push(format!(
                "podMACPrefix not applied to {ifname}: an ipvlan link keeps its master's MAC"
            ));
            None
        }
        prefix => prefix,
    };
    if let Some(prefix) = mac_prefix {
        let first_ip = current
            .iter()
            .find(|net| net.addr().is_ipv4())
            .or(current.first())
            .map(IpNet::addr);
        if let Some(ip) = first_ip {
            let has_v4 = current.iter().any(|net| net.addr().is_ipv4());
            let has_v6 = current.iter().any(|net| net.addr().is_ipv6());
            for (family, key, present) in [("ipv4", "arp_notify", has_v4), ("ipv6", "ndisc_notify", has_v6)] {
                if present {
                    steps.push(Step::Sysctl {
                        path: format!("net/{family}/conf/{ifname}/{key}"),
                        value: "1".to_owned(),
                    });
                }
            }
            steps.push(Step::SetMac {
                link: ifname.to_owned(),
                mac: mac_from(prefix, ip),
            });
        }
    }
    if let Some(len) = config.tx_queue_len {
        steps.push(Step::SetTxQueueLen {
            link: ifname.to_owned(),
            len,
        });
    }
    if families.v6 {
        steps.push(Step::Sysctl {
            path: "net/ipv6/conf/all/disable_ipv6".to_owned(),
            value: "0".to_owned(),
        });
    }
    if let Some(value) = config.pod_rp_filter {
        steps.push(Step::Sysctl {
            path: "net/ipv4/conf/all/rp_filter".to_owned(),
            value: value.to_string(),
        });
    }

    // Neighbour entries: the node reaches the pod's addresses at the pod end of the pair (stale
    // entries for them, from a previous pod, removed first); the pod reaches the node's addresses
    // at the node end.
    for neighbour in &host.neighbours {
        if current.iter().any(|net| net.addr() == neighbour.ip) {
            steps.push(Step::DeleteNeighbour {
                side: Side::Host,
                neighbour: *neighbour,
            });
        }
    }
    for net in &current {
        steps.push(Step::AddNeighbour {
            side: Side::Host,
            link: host_veth.clone(),
            ip: net.addr(),
            mac: pod_veth_mac,
        });
    }
    if first {
        for ip in &host_ips {
            steps.push(Step::AddNeighbour {
                side: Side::Pod,
                link: pod_veth.clone(),
                ip: *ip,
                mac: host_veth_mac,
            });
        }
    }

    // Routes to the node's addresses through the pair, with the pod's first-interface IPv4 address
    // as their source (upstream leaves IPv6 sources to the kernel).
    let source_v4 = pod
        .addresses_of(&config.first_nic)
        .into_iter()
        .map(|net| net.addr())
        .find(IpAddr::is_ipv4);
    let source_for = |ip: &IpAddr| if ip.is_ipv4() { source_v4 } else { None };
    for ip in &host_ips {
        let mut tables = vec![table];
        if first {
            tables.push(TABLE_MAIN);
        }
        for table in tables {
            steps.push(Step::AddRoute(NewRoute {
                side: Side::Pod,
                table,
                destination: host_net(*ip),
                gateway: None,
                link: pod_veth.clone(),
                scope: Scope::Link,
                source: source_for(ip),
            }));
        }
    }
    // On the node: the rule to the host table, then the routes to the pod's addresses.
    for family in families.list() {
        steps.push(Step::AddRule {
            side: Side::Host,
            rule: host_rule(family, config.host_rule_table),
        });
    }
    for net in &current {
        let destination = host_net(net.addr());
        for stale in host
            .routes
            .iter()
            .filter(|route| route.table == config.host_rule_table && route.destination == destination)
        {
            steps.push(Step::DeleteRoute {
                side: Side::Host,
                route: stale.clone(),
            });
        }
        steps.push(Step::AddRoute(NewRoute {
            side: Side::Host,
            table: config.host_rule_table,
            destination,
            gateway: None,
            link: host_veth.clone(),
            scope: Scope::Link,
            source: None,
        }));
    }

    // Pod, service and hijack CIDRs through the node.
    let gateway_v4 = host_ips.iter().copied().find(IpAddr::is_ipv4);
    let gateway_v6 = host_ips.iter().copied().find(IpAddr::is_ipv6);
    let hijack_table = if first { TABLE_MAIN } else { table };
    for cidr in &config.hijack {
        let v4 = cidr.addr().is_ipv4();
        let Some(gateway) = (if v4 { gateway_v4 } else { gateway_v6 }) else {
            plan.notes.push(format!(
                "hijack route {cidr} skipped: the node has no {} address for the pod",
                if v4 { "IPv4" } else { "IPv6" }
            ));
            continue;
        };
        steps.push(Step::AddRoute(NewRoute {
            side: Side::Pod,
            table: hijack_table,
            destination: *cidr,
            gateway: Some(gateway),
            link: pod_veth.clone(),
            scope: Scope::Universe,
            source: if v4 { source_v4 } else { None },
        }));
    }

    // The reply path: what came in through veth0 goes out through it.
    if mode == Mode::Underlay && first {
        let families_with_addresses = families.list();
        if !families_with_addresses.is_empty() {
            steps.push(Step::Iptables {
                families: families_with_addresses,
                rules: reply_path_rules(),
            });
        }
        for family in families.list() {
            steps.push(Step::AddRule {
                side: Side::Pod,
                rule: Rule {
                    priority: Some(RULE_PRIORITY),
                    fwmark: Some((REPLY_MARK, u32::MAX)),
                    ..Rule::lookup(family, REPLY_TABLE)
                },
            });
            let (gateway, source) = match family {
                IpFamily::V4 => (gateway_v4, source_v4),
                IpFamily::V6 => (gateway_v6, None),
            };
            steps.push(Step::AddRoute(NewRoute {
                side: Side::Pod,
                table: REPLY_TABLE,
                destination: default_net(family),
                gateway,
                link: pod_veth.clone(),
                scope: Scope::Universe,
                source,
            }));
        }
    }

    if config.tune_pod_routes && (!first || mode == Mode::Overlay) {
        tune_pod_routes(
            config,
            ifname,
            link.index,
            &current,
            families,
            pod,
            (mode, first, table),
            &mut plan,
        )?;
    }

    // policyRoutes through this interface.
    let policy_table = if mode == Mode::Underlay && first {
        TABLE_MAIN
    } else {
        table
    };
    for route in &config.policy_routes {
        if !families.admits(&route.destination.addr()) {
            continue;
        }
        plan.steps.push(Step::AddRoute(NewRoute {
            side: Side::Pod,
            table: policy_table,
            destination: route.destination,
            gateway: Some(route.gateway),
            link: ifname.to_owned(),
            scope: Scope::Universe,
            source: None,
        }));
    }
    Ok(plan)
}

/// `from all lookup <table> pref 1000` of `family`: the node's way to its pods.
pub fn host_rule(family: IpFamily, table: u32) -> Rule {
    Rule {
        priority: Some(RULE_PRIORITY),
        ..Rule::lookup(family, table)
    }
}

/// Upstream's `tunePodRoutes`: the pod keeps one default route, on the first interface unless
/// `podDefaultRouteNIC` names another; the other interface's routes move to its own table, reached
/// by rules from its addresses.
#[allow(
    clippy::too_many_arguments,
    reason = "the pieces of plan_add's state this step reads; a struct for one call would only rename them"
)]
fn tune_pod_routes(
    config: &Config,
    ifname: &str,
    ifindex: u32,
    current: &[IpNet],
    families: Families,
    pod: &PodState,
    (mode, first, table): (Mode, bool, u32),
    plan: &mut Plan,
) -> Result<(), PlanError> {
    // The interface (other than this one) that holds a default route now, in link order.
    let holder = pod
        .links
        .iter()
        .filter(|link| link.name != "lo" && link.index != ifindex)
        .find(|link| {
            pod.main_routes(families)
                .any(|route| route.is_default() && route.uses(link.index))
        });
    let Some(holder) = holder else {
        plan.notes
            .push("no other interface has a default route: routes left as they are".to_owned());
        return Ok(());
    };
    let wanted = config.pod_default_route_nic.as_str();
    let (default_nic, move_from) = if wanted.is_empty() || wanted == holder.name {
        (holder.name.as_str(), ifname)
    } else {
        if pod.link(wanted).is_none() {
            return Err(PlanError::NoDefaultRouteNic(wanted.to_owned()));
        }
        (wanted, holder.name.as_str())
    };
    let holder_addresses: Vec<IpNet> = pod
        .addresses_of(&holder.name)
        .into_iter()
        .filter(|net| families.admits(&net.addr()))
        .collect();
    let from_rule = |ip: IpAddr, table: u32| Step::AddRule {
        side: Side::Pod,
        rule: Rule {
            source: Some(host_net(ip)),
            ..Rule::lookup(IpFamily::of(&ip), table)
        },
    };
    if default_nic == ifname {
        for net in &holder_addresses {
            plan.steps.push(from_rule(net.addr(), table));
        }
    } else {
        for net in current {
            plan.steps.push(from_rule(net.addr(), table));
        }
        if mode == Mode::Overlay && first {
            // Replies to what came in through the overlay's eth0 leave through it (upstream #3683):
            // its default route, copied into the reply table.
            for net in &holder_addresses {
                plan.steps.push(from_rule(net.addr(), REPLY_TABLE));
            }
            if let Some(eth0) = pod.link(&config.first_nic) {
                let defaults: Vec<Route> = pod
                    .main_routes(families)
                    .filter(|route| route.is_default() && route.uses(eth0.index))
                    .cloned()
                    .collect();
                for route in defaults {
                    plan.steps.push(Step::AddRoute(moved(
                        &route,
                        eth0.index,
                        &config.first_nic,
                        REPLY_TABLE,
                    )));
                }
            }
        }
    }
    let Some(from) = pod.link(move_from) else {
        return Ok(());
    };
    let routes: Vec<Route> = pod
        .main_routes(families)
        .filter(|route| route.uses(from.index))
        .filter(|route| !is_fe80_64(&route.destination))
        .cloned()
        .collect();
    for route in routes {
        plan.steps
            .push(Step::AddRoute(moved(&route, from.index, move_from, table)));
        if route.is_default() {
            plan.steps.push(Step::DeleteRoute {
                side: Side::Pod,
                route: only_hop(&route, from.index),
            });
        }
    }
    Ok(())
}

/// The kernel's own link-local route, which stays where it is.
fn is_fe80_64(net: &IpNet) -> bool {
    net.prefix_len() == 64 && net.addr() == IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0))
}

/// `route`'s path through link `index` (`name`), in `table`. A default route keeps only its
/// destination, gateway and scope (as upstream moves it); other routes keep their source too.
fn moved(route: &Route, index: u32, name: &str, table: u32) -> NewRoute {
    let (gateway, scope) = if route.oif == Some(index) {
        (route.gateway, route.scope)
    } else {
        let hop = route.multipath.iter().find(|hop| hop.oif == index);
        (hop.and_then(|hop| hop.gateway), Scope::Universe)
    };
    NewRoute {
        side: Side::Pod,
        table,
        destination: route.destination,
        gateway,
        link: name.to_owned(),
        scope,
        source: if route.is_default() { None } else { route.source },
    }
}

/// The part of `route` through link `index`: itself, or its next hop there when multipath (the
/// kernel removes one sibling of an IPv6 multipath route when asked for that gateway and link).
fn only_hop(route: &Route, index: u32) -> Route {
    if route.oif == Some(index) || route.multipath.is_empty() {
        return route.clone();
    }
    let gateway = route
        .multipath
        .iter()
        .find(|hop| hop.oif == index)
        .and_then(|hop| hop.gateway);
    Route {
        gateway,
        oif: Some(index),
        multipath: Vec::new(),
        ..route.clone()
    }
}

/// What DEL looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelRequest<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// The pod interface's addresses (from `prevResult`, else from the pod if it still exists).
    pub pod_ips: &'a [IpAddr],
    /// The host rule table.
    pub host_rule_table: u32,
}

/// The changes DEL makes on the host.
pub fn plan_del(request: &DelRequest<'_>, host: &HostState) -> Vec<Step> {
    let mut steps = Vec::new();
    let veth = host.veth.as_ref();
    if let Some(veth) = veth {
        steps.push(Step::DeleteHostLink {
            name: veth.name.clone(),
        });
    }
    let table = request.host_rule_table;
    let ours = |route: &Route| {
        request
            .pod_ips
            .iter()
            .any(|ip| route.destination == host_net(*ip))
    };
    let on_veth = |route: &Route| veth.is_some_and(|veth| route.uses(veth.index));
    for route in host.routes.iter().filter(|route| route.table == table) {
        if ours(route) && !on_veth(route) {
            steps.push(Step::DeleteRoute {
                side: Side::Host,
                route: route.clone(),
            });
        }
    }
    for neighbour in &host.neighbours {
        let on_veth = veth.is_some_and(|veth| veth.index == neighbour.index);
        if neighbour.permanent && !on_veth && request.pod_ips.contains(&neighbour.ip) {
            steps.push(Step::DeleteNeighbour {
                side: Side::Host,
                neighbour: *neighbour,
            });
        }
    }
    // The shared rule goes once no pod's route is left in the table (of that family).
    for family in [IpFamily::V4, IpFamily::V6] {
        let rule = host_rule(family, table);
        let remaining = host
            .routes
            .iter()
            .filter(|route| route.table == table && route.family() == family)
            .any(|route| !ours(route) && !on_veth(route));
        if !remaining && host.rules.contains(&rule) {
            steps.push(Step::DeleteRule {
                side: Side::Host,
                rule,
            });
        }
    }
    steps
}

/// What CHECK finds missing of what ADD made for `pod_ips` of `ifname` (empty when all is there):
/// the veth pair (underlay), the host routes to the addresses and the host rule of their families.
pub fn check(
    config: &Config,
    ifname: &str,
    container_id: &str,
    pod_ips: &[IpAddr],
    snapshot: &Snapshot,
) -> Vec<String> {
    let mut problems = Vec::new();
    let Ok((mode, _, _)) = resolve_mode(config, ifname, &snapshot.pod) else {
        return vec![format!("{ifname} is not in a mode the coordinator can wire")];
    };
    if mode == Mode::Disable {
        return problems;
    }
    if mode == Mode::Underlay {
        if snapshot.pod.link(UNDERLAY_VETH).is_none() {
            problems.push(format!("the pod has no {UNDERLAY_VETH}"));
        }
        if snapshot.host.veth.is_none() {
            problems.push(format!("the node has no {}", host_veth_name(container_id)));
        }
    }
    for ip in pod_ips {
        let destination = host_net(*ip);
        if !snapshot
            .host
            .routes
            .iter()
            .any(|route| route.table == config.host_rule_table && route.destination == destination)
        {
            problems.push(format!(
                "the node has no route to {ip} in table {}",
                config.host_rule_table
            ));
        }
        let rule = host_rule(IpFamily::of(ip), config.host_rule_table);
        if !snapshot.host.rules.contains(&rule) && !problems.iter().any(|p| p.contains("rule")) {
            problems.push(format!(
                "the node has no rule {}",
                spiderpool_netlink::rule::describe(&rule)
            ));
        }
    }
    problems
}

#[cfg(test)]
#[path = "plan/tests.rs"]
mod tests;
