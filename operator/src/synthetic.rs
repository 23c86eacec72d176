//! Large generated topologies for benchmarks (compiler here; operator apply later). Deterministic.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use spiderpool_schema::SpiderNetwork;
use spiderpool_schema::interfacetask::{Bond, BondMode};
use spiderpool_schema::network::{
    AppBinding, AppInterface, FixedIPs, Network, NetworkType, Rack, RackRange, SpiderNetworkSpec,
    SubnetFamily, TopologySubnet, WorkloadRef,
};

/// Sizes of a generated topology.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Racks (each serves every subnet with a /24-sized range per family).
    pub racks: usize,
    /// Subnets, dual-stack, one macvlan network each (at most 250).
    pub subnets: usize,
    /// App bindings, two fixed addresses per family in one rack each.
    pub apps: usize,
    /// Namespaces each network is offered in.
    pub namespaces_per_network: usize,
    /// Also a routed fabric: one IPv4 /24 per rack (subnet role `fabric`, VLAN 10) and one network
    /// across all of them, which every fourth rack carries on a bond instead of its uplink (so the
    /// network names its node interface).
    pub fabric: bool,
}

impl Shape {
    /// The benchmark size: 200 racks (x 40 nodes), 30 subnets, 2,000 bindings, dual-stack.
    pub const LARGE: Shape = Shape {
        racks: 200,
        subnets: 30,
        apps: 2000,
        namespaces_per_network: 4,
        fabric: true,
    };
}

/// A valid dual-stack topology of the given shape.
pub fn topology(shape: Shape) -> SpiderNetwork {
    let mut subnets: Vec<TopologySubnet> = (0..shape.subnets)
        .map(|s| TopologySubnet {
            name: format!("net{s}"),
            ipv4: Some(SubnetFamily {
                cidr: format!("10.{s}.0.0/16"),
                gateway: Some(format!("10.{s}.255.254")),
                ..SubnetFamily::default()
            }),
            ipv6: Some(SubnetFamily {
                cidr: format!("fd00:{s:x}::/64"),
                gateway: Some(format!("fd00:{s:x}::ffff:fffe")),
                ..SubnetFamily::default()
            }),
            vlan: Some(100 + s as i32),
            role: None,
        })
        .collect();
    if shape.fabric {
        subnets.extend((0..shape.racks).map(|r| TopologySubnet {
            name: format!("fabric{r}"),
            ipv4: Some(SubnetFamily {
                cidr: format!("172.{}.{}.0/24", 16 + r / 256, r % 256),
                gateway: Some(format!("172.{}.{}.1", 16 + r / 256, r % 256)),
                ..SubnetFamily::default()
            }),
            ipv6: None,
            vlan: Some(10),
            role: Some("fabric".into()),
        }));
    }
    let racks = (0..shape.racks)
        .map(|r| {
            let on_bond = shape.fabric && r % 4 == 0;
            let mut ranges: Vec<RackRange> = (0..shape.subnets)
                .map(|s| RackRange {
                    subnet: format!("net{s}"),
                    ipv4: vec![format!("10.{s}.{r}.1-10.{s}.{r}.250")],
                    ipv6: vec![format!("fd00:{s:x}::{r:x}:1-fd00:{s:x}::{r:x}:fa")],
                })
                .collect();
            if shape.fabric {
                ranges.push(RackRange {
                    subnet: format!("fabric{r}"),
                    ipv4: vec![format!(
                        "172.{}.{}.10-172.{}.{}.250",
                        16 + r / 256,
                        r % 256,
                        16 + r / 256,
                        r % 256
                    )],
                    ipv6: Vec::new(),
                });
            }
            Rack {
                name: format!("rack{r}"),
                node_selector: LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "topology.example.com/rack".to_string(),
                        format!("rack{r}"),
                    )])),
                    match_expressions: None,
                },
                uplinks: vec!["ens1".into()],
                bonds: if on_bond {
                    vec![Bond {
                        name: "bond0".into(),
                        interfaces: vec!["ens2".into(), "ens3".into()],
                        mode: BondMode::Lacp,
                        ..Bond::default()
                    }]
                } else {
                    Vec::new()
                },
                ranges,
                masters: if on_bond {
                    BTreeMap::from([("fabric".to_string(), "bond0".to_string())])
                } else {
                    BTreeMap::new()
                },
                ..Rack::default()
            }
        })
        .collect();
    let mut networks: Vec<Network> = (0..shape.subnets)
        .map(|s| Network {
            name: format!("net{s}"),
            cni_type: NetworkType::Macvlan,
            subnet: format!("net{s}"),
            master: Some("ens1".into()),
            namespaces: (0..shape.namespaces_per_network)
                .map(|n| format!("team{n}"))
                .collect(),
            ..Network::default()
        })
        .collect();
    if shape.fabric {
        networks.push(Network {
            name: "fabric".into(),
            cni_type: NetworkType::Macvlan,
            subnet_role: Some("fabric".into()),
            master: Some("ens1".into()),
            node_interface: Some("fabric0".into()),
            namespaces: (0..shape.namespaces_per_network)
                .map(|n| format!("team{n}"))
                .collect(),
            ..Network::default()
        });
    }
    let apps = (0..shape.apps)
        .map(|a| AppBinding {
            name: format!("app{a}"),
            namespace: format!("team{}", a % shape.namespaces_per_network.max(1)),
            workload: Some(WorkloadRef {
                api_version: None,
                kind: "StatefulSet".into(),
                name: format!("app{a}"),
            }),
            pod_selector: None,
            interfaces: vec![AppInterface {
                name: None,
                network: format!("net{}", a % shape.subnets.max(1)),
                fixed_ips: Some(FixedIPs {
                    count: Some(2),
                    racks: vec![format!("rack{}", a % shape.racks.max(1))],
                    ..FixedIPs::default()
                }),
            }],
            default_route_interface: None,
        })
        .collect();
    SpiderNetwork::new(
        "large",
        SpiderNetworkSpec {
            subnets,
            racks,
            networks,
            apps,
            rollout: None,
            capacity_threshold_percent: None,
        },
    )
}
