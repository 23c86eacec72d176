//! The allocator's settings, from the command line ([`crate`]'s binary).

use std::time::Duration;

pub use crate::ipam::reservations::Tuning as LeaseTuning;

/// Settings of the allocator and the pool writers.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node.
    pub node_name: String,
    /// Namespace for `multusName` entries without one (the daemon's namespace).
    pub namespace: String,
    /// Multus cluster network (`<ns>/<name>`), for pools whose `multusName` must match `eth0`.
    pub cluster_network: Option<String>,
    /// Allocate IPv4.
    pub enable_ipv4: bool,
    /// Allocate IPv6.
    pub enable_ipv6: bool,
    /// StatefulSet pods keep their addresses.
    pub enable_statefulset: bool,
    /// KubeVirt VMs keep their addresses.
    pub enable_kubevirt: bool,
    /// SpiderSubnet automatic pools.
    pub enable_auto_pools: bool,
    /// Ask the plugin to detect address conflicts.
    pub enable_ip_conflict_detection: bool,
    /// Ask the plugin to check the gateway.
    pub enable_gateway_detection: bool,
    /// Most addresses one pool may hold.
    pub max_allocated_ips: usize,
    /// This node's reservations in shared pools.
    pub lease: LeaseTuning,
    /// Deadline of one ADD or DEL.
    pub request_timeout: Duration,
    /// How long to wait for a SpiderSubnet automatic pool to appear.
    pub auto_pool_wait: Duration,
}

impl Config {
    /// Settings for node `node_name` with upstream's defaults (both families, StatefulSets and VMs
    /// keep their addresses, automatic pools on, 5,000 addresses per pool at most, 60 s per request).
    pub fn new(node_name: &str) -> Self {
        Config {
            node_name: node_name.to_owned(),
            namespace: "kube-system".to_owned(),
            cluster_network: None,
            enable_ipv4: true,
            enable_ipv6: true,
            enable_statefulset: true,
            enable_kubevirt: true,
            enable_auto_pools: true,
            enable_ip_conflict_detection: false,
            enable_gateway_detection: false,
            max_allocated_ips: 5000,
            lease: LeaseTuning::default(),
            request_timeout: Duration::from_secs(60),
            auto_pool_wait: Duration::from_secs(50),
        }
    }
}
