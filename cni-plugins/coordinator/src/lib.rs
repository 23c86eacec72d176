//! The `coordinator` CNI plugin (upstream Spiderpool's, reference 6.2): chained after a main plugin
//! (macvlan, ipvlan, SR-IOV, ...), it makes an underlay pod usable in a Kubernetes cluster. In
//! underlay mode it gives the pod a veth pair to its node, so that the node (kubelet probes) and
//! whatever the node routes (ClusterIP Services through kube-proxy, NodeLocal DNS) are reached
//! through the node's stack rather than the underlay; in overlay mode it does the same through an
//! overlay CNI's `eth0`. For multi-NIC pods it keeps one default route and moves every other
//! interface's routes into its own table. It never changes the IPAM result: it prints
//! `prevResult` back.
//!
//! Modules: [`config`] (netconf keys and the node daemon's defaults, merged), [`plan`] (the pure
//! plan of ADD and DEL from a snapshot), [`apply`] (the shell: snapshot and steps over netlink, the
//! host lock), [`iptables`] (the reply-path rules) and [`plugin`] (the command handlers).

pub mod apply;
pub mod config;
pub mod iptables;
pub mod plan;
pub mod plugin;
