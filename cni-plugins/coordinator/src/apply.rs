//! The thin shell: gathers the [`Snapshot`] (netlink in the host's and the pod's namespaces) and
//! carries a plan's steps out in order. Adds tolerate "exists" and deletes "already gone", as
//! upstream's do, so a repeated ADD or DEL converges. The host-side rule shared by every pod is
//! changed under a file lock (see [`lock`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};
use spiderpool_ipmath::{IpFamily, IpNet};
use spiderpool_netlink::{Blocking, Handle, Link, LinkChange, Mac, NetlinkError, Netns, Route, VethEnd};

use crate::iptables::{self, IptablesError};
use crate::plan::{self, HostState, LinkState, NewRoute, PodState, Side, Snapshot, Step, host_veth_name};

/// The lock around the host's shared rule, in the daemon's own directory.
pub const LOCK_PATH: &str = "/run/spidernet/coordinator.lock";

/// Why the shell failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Netlink.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The pod's namespace could not be opened.
    #[error("opening the pod's network namespace {path}: {source}")]
    Netns {
        /// Its path.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A link the plan names is missing.
    #[error("{side} link {name} not found")]
    NoLink {
        /// `host` or `pod`.
        side: &'static str,
        /// Its name.
        name: String,
    },
    /// iptables.
    #[error(transparent)]
    Iptables(#[from] IptablesError),
    /// A sysctl in the pod.
    #[error("pod sysctl {path}: {source}")]
    Sysctl {
        /// Its path.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The lock, the runtime or the random source.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> ApplyError {
    move |source| ApplyError::Io { what, source }
}

/// Holds the host-rule lock while alive.
pub struct HostLock {
    _lock: Flock<File>,
}

/// Takes the lock at `path` (creating its directory), waiting for other coordinators.
pub fn lock(path: &Path) -> Result<HostLock, ApplyError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_error("creating the lock directory"))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_error("opening the lock file"))?;
    let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| ApplyError::Io {
        what: "locking the host rule",
        source: io::Error::from(errno),
    })?;
    Ok(HostLock { _lock: lock })
}

/// Two random, locally administered unicast MACs for a new veth pair.
pub fn random_macs() -> Result<(Mac, Mac), ApplyError> {
    let mut bytes = [0_u8; 12];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(io_error("reading /dev/urandom"))?;
    let mac = |chunk: &[u8]| -> Mac {
        let mut mac = [0_u8; 6];
        mac.copy_from_slice(chunk);
        mac[0] = (mac[0] & 0xfe) | 0x02;
        mac
    };
    Ok((mac(&bytes[..6]), mac(&bytes[6..])))
}

fn link_state(link: &Link) -> LinkState {
    LinkState {
        index: link.index,
        name: link.name.clone(),
        up: link.up,
        ethernet_like: link.ethernet_like,
        mac: link.mac,
        peer: link.link,
        kind: link.kind.clone(),
    }
}

/// Netlink in the host's namespace and, when it still exists, the pod's.
pub struct Kernel {
    runtime: Blocking,
    host_netns: Netns,
    host: Handle,
    pod: Option<(Arc<Netns>, Handle)>,
    indexes: HashMap<(bool, String), u32>,
}

impl Kernel {
    /// Connects on the host and in the pod's namespace at `netns` (`None` when it is gone: DEL).
    pub fn connect(netns: Option<&str>) -> Result<Self, ApplyError> {
        let runtime = Blocking::new().map_err(io_error("starting the netlink runtime"))?;
        let host_netns = Netns::current().map_err(io_error("opening the host's network namespace"))?;
        let host = runtime.connect(None)?;
        let pod = match netns {
            None => None,
            Some(path) => {
                let netns = Netns::open(path).map_err(|source| ApplyError::Netns {
                    path: path.to_owned(),
                    source,
                })?;
                let handle = runtime.connect(Some(&netns))?;
                Some((Arc::new(netns), handle))
            }
        };
        Ok(Self {
            runtime,
            host_netns,
            host,
            pod,
            indexes: HashMap::new(),
        })
    }

    fn pod(&self) -> Result<&(Arc<Netns>, Handle), ApplyError> {
        self.pod.as_ref().ok_or_else(|| ApplyError::NoLink {
            side: "pod",
            name: "(the pod's namespace is gone)".to_owned(),
        })
    }

    fn handle(&self, side: Side) -> Result<&Handle, ApplyError> {
        match side {
            Side::Host => Ok(&self.host),
            Side::Pod => Ok(&self.pod()?.1),
        }
    }

    /// Brings the pod's `ifname` up (upstream does it first: the interface counts among the pod's
    /// up links when tables are numbered).
    pub fn bring_up(&mut self, ifname: &str) -> Result<(), ApplyError> {
        let handle = self.handle(Side::Pod)?.clone();
        let link = self
            .runtime
            .run(handle.link_by_name(ifname))?
            .ok_or_else(|| ApplyError::NoLink {
                side: "pod",
                name: ifname.to_owned(),
            })?;
        if !link.up {
            self.runtime.run(handle.set_link(link.index, LinkChange::Up))?;
        }
        Ok(())
    }

    /// The pod's state.
    pub fn pod_state(&self) -> Result<PodState, ApplyError> {
        let handle = self.handle(Side::Pod)?;
        let links = self.runtime.run(handle.links())?;
        let addresses = self.runtime.run(handle.addresses(None))?;
        let mut routes = self.runtime.run(handle.routes(IpFamily::V4))?;
        routes.extend(self.runtime.run(handle.routes(IpFamily::V6))?);
        Ok(PodState {
            links: links.iter().map(link_state).collect(),
            addresses,
            routes,
        })
    }

    /// The host's state the plans read: the sources towards `pod_ips`, the host's addresses, this
    /// pod's veth, the overlay peer of the pod's `first_nic`, neighbours, the rule table's routes
    /// and the rules.
    pub fn host_state(
        &self,
        pod_ips: &[IpAddr],
        container_id: &str,
        overlay_peer_of: Option<&LinkState>,
        host_rule_table: u32,
    ) -> Result<HostState, ApplyError> {
        let host = &self.host;
        let mut sources = Vec::new();
        for ip in pod_ips {
            // A pod address the node has no route to (say, IPv6 on an IPv4-only node) simply has
            // no source; upstream fails the ADD there.
            if let Ok(Some(source)) = self
                .runtime
                .run(host.route_get(*ip))
                .map(|route| route.and_then(|route| route.source))
            {
                sources.push((*ip, source));
            }
        }
        let links = self.runtime.run(host.links())?;
        let name_of = |index: u32| {
            links
                .iter()
                .find(|link| link.index == index)
                .map(|link| link.name.clone())
                .unwrap_or_default()
        };
        let addresses = self
            .runtime
            .run(host.addresses(None))?
            .into_iter()
            .map(|address| (name_of(address.index), address.address.addr()))
            .collect();
        let veth_name = host_veth_name(container_id);
        let veth = links.iter().find(|link| link.name == veth_name).map(link_state);
        // The overlay CNI's host end points back at the pod's interface.
        let overlay_peer = overlay_peer_of.and_then(|pod_link| {
            let peer = pod_link.peer?;
            links
                .iter()
                .find(|link| link.index == peer && link.link == Some(pod_link.index))
                .map(link_state)
        });
        let mut neighbours = self.runtime.run(host.neighbours(IpFamily::V4))?;
        neighbours.extend(self.runtime.run(host.neighbours(IpFamily::V6))?);
        let mut routes = Vec::new();
        let mut rules = Vec::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            routes.extend(
                self.runtime
                    .run(host.routes(family))?
                    .into_iter()
                    .filter(|route| route.table == host_rule_table),
            );
            rules.extend(self.runtime.run(host.rules(family))?);
        }
        Ok(HostState {
            sources,
            addresses,
            veth,
            overlay_peer,
            neighbours,
            routes,
            rules,
        })
    }

    /// [`Kernel::pod_state`] and [`Kernel::host_state`] for ADD.
    pub fn snapshot(
        &self,
        ifname: &str,
        container_id: &str,
        first_nic: &str,
        host_rule_table: u32,
    ) -> Result<Snapshot, ApplyError> {
        let pod = self.pod_state()?;
        let lo = pod.link("lo").map(|link| link.index);
        let pod_ips: Vec<IpAddr> = pod
            .addresses
            .iter()
            .filter(|address| Some(address.index) != lo && plan::usable(address))
            .map(|address| address.address.addr())
            .collect();
        let first = pod.link(first_nic).filter(|_| ifname != first_nic);
        let host = self.host_state(&pod_ips, container_id, first, host_rule_table)?;
        Ok(Snapshot { pod, host })
    }

    fn index(&mut self, side: Side, name: &str) -> Result<u32, ApplyError> {
        let key = (side == Side::Host, name.to_owned());
        if let Some(index) = self.indexes.get(&key) {
            return Ok(*index);
        }
        let handle = self.handle(side)?.clone();
        let link = self
            .runtime
            .run(handle.link_by_name(name))?
            .ok_or_else(|| ApplyError::NoLink {
                side: match side {
                    Side::Host => "host",
                    Side::Pod => "pod",
                },
                name: name.to_owned(),
            })?;
        self.indexes.insert(key, link.index);
        Ok(link.index)
    }

    /// Carries `steps` out in order, but for the pod's mangle rules: those are a few milliseconds of
    /// other processes' work that no other step waits for (they name `veth0` whether it exists yet
    /// or not), so they start with the first step, run beside the netlink ones, and are waited for
    /// at their place in the order. When a step fails, ADD fails after they finish, as it would
    /// have before.
    pub fn apply(&mut self, steps: &[Step]) -> Result<(), ApplyError> {
        let reply_rules = steps.iter().find_map(|step| match step {
            Step::Iptables { families, rules } => Some((families, rules)),
            _ => None,
        });
        let netns = match reply_rules {
            Some(_) => Some(Arc::clone(&self.pod()?.0)),
            None => None,
        };
        std::thread::scope(|scope| {
            let mut beside = reply_rules.zip(netns).map(|((families, rules), netns)| {
                scope.spawn(move || netns.run(|| iptables::ensure(families, rules)))
            });
            for step in steps {
                if matches!(step, Step::Iptables { .. })
                    && let Some(running) = beside.take()
                {
                    running.join().map_err(|_| ApplyError::Io {
                        what: "adding the mangle rules",
                        source: io::Error::other("its thread panicked"),
                    })???;
                } else {
                    self.apply_one(step)?;
                }
            }
            Ok(())
        })
    }

    fn apply_one(&mut self, step: &Step) -> Result<(), ApplyError> {
        let exists_ok = |result: Result<(), NetlinkError>| match result {
            Err(error) if error.is_exists() => Ok(()),
            other => other,
        };
        let gone_ok = |result: Result<(), NetlinkError>| match result {
            Err(error) if error.is_not_found() => Ok(()),
            other => other,
        };
        match step {
            Step::CreateVeth {
                pod,
                pod_mac,
                host,
                host_mac,
                mtu,
            } => {
                let handle = self.handle(Side::Pod)?.clone();
                let local = VethEnd {
                    name: pod.clone(),
                    mac: Some(*pod_mac),
                };
                let peer = VethEnd {
                    name: host.clone(),
                    mac: Some(*host_mac),
                };
                self.runtime
                    .run(handle.create_veth(&local, &peer, *mtu, Some(&self.host_netns)))?;
                for (side, name) in [(Side::Pod, pod), (Side::Host, host)] {
                    let index = self.index(side, name)?;
                    let handle = self.handle(side)?.clone();
                    self.runtime.run(handle.set_link(index, LinkChange::Up))?;
                }
            }
            Step::AddAddress { link, address } => {
                let index = self.index(Side::Pod, link)?;
                let handle = self.handle(Side::Pod)?.clone();
                exists_ok(self.runtime.run(handle.add_address(index, *address)))?;
            }
            Step::SetMac { link, mac } => self.set(link, LinkChange::Mac(*mac))?,
            Step::SetTxQueueLen { link, len } => self.set(link, LinkChange::TxQueueLen(*len))?,
            Step::Sysctl { path, value } => {
                let (netns, _) = self.pod()?;
                let file = Path::new("/proc/sys").join(path);
                netns
                    .run(|| std::fs::write(&file, value))?
                    .map_err(|source| ApplyError::Sysctl {
                        path: path.clone(),
                        source,
                    })?;
            }
            Step::DeleteNeighbour { side, neighbour } => {
                let handle = self.handle(*side)?.clone();
                gone_ok(
                    self.runtime
                        .run(handle.delete_neighbour(neighbour.index, neighbour.ip)),
                )?;
            }
            Step::AddNeighbour { side, link, ip, mac } => {
                let index = self.index(*side, link)?;
                let handle = self.handle(*side)?.clone();
                exists_ok(self.runtime.run(handle.add_permanent_neighbour(index, *ip, *mac)))?;
            }
            Step::DeleteRoute { side, route } => {
                let handle = self.handle(*side)?.clone();
                gone_ok(self.runtime.run(handle.delete_route(route)))?;
            }
            Step::AddRoute(route) => {
                let kernel_route = self.route(route)?;
                let handle = self.handle(route.side)?.clone();
                exists_ok(self.runtime.run(handle.add_route(&kernel_route)))?;
            }
            Step::AddRule { side, rule } => {
                let handle = self.handle(*side)?.clone();
                exists_ok(self.runtime.run(handle.add_rule(rule)))?;
            }
            Step::DeleteRule { side, rule } => {
                let handle = self.handle(*side)?.clone();
                gone_ok(self.runtime.run(handle.delete_rule(rule)))?;
            }
            Step::DeleteHostLink { name } => {
                if let Some(link) = self.runtime.run(self.host.link_by_name(name))? {
                    gone_ok(self.runtime.run(self.host.delete_link(link.index)))?;
                }
            }
            Step::Iptables { families, rules } => {
                let (netns, _) = self.pod()?;
                netns.run(|| iptables::ensure(families, rules))??;
            }
        }
        Ok(())
    }

    fn set(&mut self, link: &str, change: LinkChange) -> Result<(), ApplyError> {
        let index = self.index(Side::Pod, link)?;
        let handle = self.handle(Side::Pod)?.clone();
        self.runtime.run(handle.set_link(index, change))?;
        Ok(())
    }

    fn route(&mut self, route: &NewRoute) -> Result<Route, ApplyError> {
        let oif = self.index(route.side, &route.link)?;
        let mut kernel_route = Route::new(route.table, route.destination, oif, route.gateway);
        kernel_route.scope = route.scope;
        kernel_route.source = route.source;
        Ok(kernel_route)
    }

    /// The usable addresses of the pod's `ifname`, when the pod still exists.
    pub fn pod_addresses(&self, ifname: &str) -> Result<Vec<IpNet>, ApplyError> {
        if self.pod.is_none() {
            return Ok(Vec::new());
        }
        Ok(self.pod_state()?.addresses_of(ifname))
    }
}
