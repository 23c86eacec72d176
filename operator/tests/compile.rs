//! Properties of the compiler that reviewers rely on: determinism, stable names, stable fixed addresses.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::collections::BTreeMap;

use spiderpool_operator::compile::{compile, compile_on_threads};
use spiderpool_operator::synthetic::{Shape, topology};
use spiderpool_schema::SpiderNetwork;
use spiderpool_schema::labels::LABEL_RACK;

fn example(name: &str) -> SpiderNetwork {
    let path = format!("{}/../examples/topologies/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn pools_by_name(network: &SpiderNetwork) -> BTreeMap<String, serde_json::Value> {
    compile(network)
        .unwrap()
        .ip_pools
        .iter()
        .map(|p| {
            (
                p.metadata.name.clone().unwrap(),
                serde_json::to_value(&p.spec).unwrap(),
            )
        })
        .collect()
}

#[test]
fn same_input_same_bytes() {
    for name in [
        "leaf-spine.yaml",
        "storage-lacp-statefulset.yaml",
        "multi-nic-overlay.yaml",
        "dual-stack.yaml",
    ] {
        let network = example(name);
        let a = serde_json::to_string(&compile(&network).unwrap()).unwrap();
        let b = serde_json::to_string(&compile(&network.clone()).unwrap()).unwrap();
        assert_eq!(a, b, "{name} renders differently twice");
    }
}

/// Pools are rendered on several threads, one slice of racks each: the slices must join into the same
/// output for any number of threads, including counts that do not divide the racks evenly.
#[test]
fn the_number_of_threads_does_not_change_the_output() {
    let network = topology(Shape {
        racks: 13,
        subnets: 3,
        apps: 40,
        namespaces_per_network: 2,
        fabric: true,
    });
    let one = serde_json::to_string(&compile_on_threads(&network, 1).unwrap()).unwrap();
    for threads in [2, 3, 5, 13, 64] {
        let many = serde_json::to_string(&compile_on_threads(&network, threads).unwrap()).unwrap();
        assert!(one == many, "{threads} threads render differently from one");
    }
}

#[test]
fn renaming_a_rack_touches_only_that_racks_objects() {
    let before = example("storage-lacp-statefulset.yaml");
    let mut after = before.clone();
    let old = after.spec.racks[0].name.clone();
    after.spec.racks[0].name = "renamed".into();
    for app in &mut after.spec.apps {
        for nic in &mut app.interfaces {
            if let Some(fixed) = &mut nic.fixed_ips {
                for rack in &mut fixed.racks {
                    if *rack == old {
                        *rack = "renamed".into();
                    }
                }
            }
        }
    }
    let rendered = compile(&before).unwrap();
    let untouched: Vec<String> = rendered
        .ip_pools
        .iter()
        .filter(|p| p.metadata.labels.as_ref().unwrap().get(LABEL_RACK) != Some(&old))
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert!(!untouched.is_empty());
    let (pools_before, pools_after) = (pools_by_name(&before), pools_by_name(&after));
    for name in &untouched {
        assert_eq!(
            pools_before.get(name),
            pools_after.get(name),
            "pool {name} changed although its rack did not"
        );
    }
    assert!(pools_after.keys().any(|n| n.contains("renamed")));
    assert!(!pools_after.keys().any(|n| n.contains(&format!("-{old}-"))));
}

#[test]
fn growing_one_binding_keeps_the_others_addresses() {
    let yaml = r#"
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderNetwork
metadata: {name: t}
spec:
  subnets:
  - {name: s, ipv4: {cidr: 10.1.0.0/24, gateway: 10.1.0.1}}
  racks:
  - name: r
    nodeSelector: {matchLabels: {rack: r}}
    uplinks: [eth1]
    ranges: [{subnet: s, ipv4: [10.1.0.10-10.1.0.250]}]
  networks:
  - {name: n, type: macvlan, subnet: s, master: eth1, namespaces: [a]}
  apps:
  - {name: one, namespace: a, workload: {kind: StatefulSet, name: one}, interfaces: [{network: n, fixedIPs: {count: 3}}]}
  - {name: two, namespace: a, workload: {kind: StatefulSet, name: two}, interfaces: [{network: n, fixedIPs: {count: 3}}]}
  - {name: three, namespace: a, workload: {kind: StatefulSet, name: three}, interfaces: [{network: n, fixedIPs: {count: 3}}]}
"#;
    let before: SpiderNetwork = serde_saphyr::from_str(yaml).unwrap();
    let mut after = before.clone();
    after.spec.apps[0].interfaces[0].fixed_ips.as_mut().unwrap().count = Some(6);
    // A new binding in front of the others must not move them either.
    let mut inserted = after.spec.apps[1].clone();
    inserted.name = "zero".into();
    after.spec.apps.insert(0, inserted);
    let (pools_before, pools_after) = (pools_by_name(&before), pools_by_name(&after));
    for app in ["two", "three"] {
        let name = format!("t-{app}-net1-r-v4");
        assert_eq!(pools_before.get(&name), pools_after.get(&name), "{name} moved");
    }
    let grown = &pools_after["t-one-net1-r-v4"]["ips"];
    assert_ne!(&pools_before["t-one-net1-r-v4"]["ips"], grown);
}

#[test]
fn bindings_say_which_networks_pods_get() {
    let rendered = compile(&example("multi-nic-overlay.yaml")).unwrap();
    assert!(!rendered.pod_bindings.is_empty());
    for binding in &rendered.pod_bindings {
        let networks = binding.annotations.get("k8s.v1.cni.cncf.io/networks").unwrap();
        let parsed: Vec<serde_json::Value> = serde_json::from_str(networks).unwrap();
        assert!(parsed.len() >= 2, "two underlay NICs: {networks}");
        assert!(
            !binding
                .annotations
                .contains_key("v1.multus-cni.io/default-network"),
            "eth0 stays the overlay"
        );
    }
}

/// Three racks, one routed /24 each (role `fabric`, VLAN 100), and one network across them; rack3
/// carries it on a bond, the others on `ens2f0`.
const ACROSS_RACKS: &str = r#"
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderNetwork
metadata: {name: dc}
spec:
  subnets:
  - {name: r1-net, role: fabric, vlan: 100, ipv4: {cidr: 10.10.1.0/24, gateway: 10.10.1.1}}
  - {name: r2-net, role: fabric, vlan: 100, ipv4: {cidr: 10.10.2.0/24, gateway: 10.10.2.1}}
  - {name: r3-net, role: fabric, vlan: 100, ipv4: {cidr: 10.10.3.0/24, gateway: 10.10.3.1}}
  racks:
  - {name: r1, nodeSelector: {matchLabels: {rack: r1}}, uplinks: [ens2f0], ranges: [{subnet: r1-net, ipv4: [10.10.1.10-10.10.1.99]}]}
  - {name: r2, nodeSelector: {matchLabels: {rack: r2}}, uplinks: [ens2f0], ranges: [{subnet: r2-net, ipv4: [10.10.2.10-10.10.2.99]}]}
  - name: r3
    nodeSelector: {matchLabels: {rack: r3}}
    bonds: [{name: bond0, interfaces: [ens3f0, ens3f1], mode: 802.3ad}]
    masters: {fabric: bond0}
    ranges: [{subnet: r3-net, ipv4: [10.10.3.10-10.10.3.99]}]
  networks:
  - {name: fabric, type: macvlan, subnetRole: fabric, master: ens2f0, nodeInterface: fabric0, namespaces: [shop]}
  apps:
  - {name: web, namespace: shop, workload: {kind: Deployment, name: web}, interfaces: [{network: fabric}]}
  - {name: db, namespace: shop, workload: {kind: StatefulSet, name: db}, interfaces: [{network: fabric, fixedIPs: {count: 2}}]}
"#;

fn problems_of(yaml: &str) -> Vec<String> {
    let network: SpiderNetwork = serde_saphyr::from_str(yaml).unwrap();
    match compile(&network) {
        Ok(_) => Vec::new(),
        Err(problems) => problems.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn one_network_spans_the_racks_and_pods_take_their_racks_pool() {
    let network: SpiderNetwork = serde_saphyr::from_str(ACROSS_RACKS).unwrap();
    let rendered = compile(&network).unwrap();
    let smc = &rendered.multus_configs[0];
    assert_eq!(rendered.multus_configs.len(), 1, "one network, one namespace");
    let macvlan = smc.spec.macvlan.as_ref().unwrap();
    assert_eq!(macvlan.master, ["fabric0"], "the name every node shares");
    assert!(
        matches!(macvlan.vlan_id, None | Some(0)),
        "the interface tasks make the VLAN, not ifacer (vlanID 0 means none): {:?}",
        macvlan.vlan_id
    );
    assert!(macvlan.bond.is_none());
    let pools = &macvlan.ippools.as_ref().unwrap().ipv4;
    assert_eq!(
        pools,
        &[
            "dc-db-net1-r1-v4",
            "dc-db-net1-r2-v4",
            "dc-db-net1-r3-v4",
            "dc-r1-net-r1-v4",
            "dc-r2-net-r2-v4",
            "dc-r3-net-r3-v4"
        ],
        "fixed pools first, then every rack's pool"
    );
    // Each rack pool is pinned to its rack's nodes; the fixed pools of db too, one per rack.
    for pool in &rendered.ip_pools {
        let rack = pool.metadata.labels.as_ref().unwrap()[LABEL_RACK].clone();
        let affinity = pool.spec.node_affinity.as_ref().unwrap();
        assert_eq!(
            affinity.match_labels.as_ref().unwrap()["rack"],
            rack,
            "{:?}",
            pool.metadata.name
        );
    }
    let nad = &rendered.network_attachment_definitions[0];
    assert!(
        nad.spec.config.contains(r#""master":"fabric0""#),
        "{}",
        nad.spec.config
    );
    assert!(!nad.spec.config.contains("ifacer"), "{}", nad.spec.config);
    // Every rack's task creates VLAN 100 as `fabric0`, on its own master.
    let vlans: Vec<(String, String, i32, Option<String>)> = rendered
        .interface_templates
        .iter()
        .flat_map(|t| {
            t.vlans
                .iter()
                .map(|v| (t.rack.clone(), v.parent.clone(), v.id, v.name.clone()))
        })
        .collect();
    assert_eq!(
        vlans,
        vec![
            ("r1".into(), "ens2f0".into(), 100, Some("fabric0".into())),
            ("r2".into(), "ens2f0".into(), 100, Some("fabric0".into())),
            ("r3".into(), "bond0".into(), 100, Some("fabric0".into())),
        ]
    );
}

#[test]
fn racks_that_reach_a_network_differently_need_a_shared_name() {
    let without = ACROSS_RACKS.replace(", nodeInterface: fabric0", "");
    let problems = problems_of(&without);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with("spec.networks[0]: the racks reach this network through different interfaces (r1: ens2f0.100, r2: ens2f0.100, r3: bond0.100)"),
        "{problems:#?}"
    );
    // Untagged, a NIC cannot be given a second name.
    let untagged = ACROSS_RACKS.replace("vlan: 100, ", "");
    let problems = problems_of(&untagged);
    assert!(
        problems
            .iter()
            .all(|p| p.starts_with("spec.networks[0].nodeInterface: rack `r")),
        "{problems:#?}"
    );
    assert_eq!(problems.len(), 3, "{problems:#?}");
}

#[test]
fn every_implied_interface_name_is_checked() {
    // `<master>.<vlan>` longer than 15 characters, written as a network master: refused at the master
    // (it used to be accepted while the same name as a rack VLAN was refused).
    let long = r#"
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderNetwork
metadata: {name: t}
spec:
  subnets: [{name: s, vlan: 3000, ipv4: {cidr: 10.1.0.0/24}}]
  racks: [{name: r, nodeSelector: {matchLabels: {rack: r}}, uplinks: [enp129s0f1np1], ranges: [{subnet: s, ipv4: [10.1.0.10-10.1.0.20]}]}]
  networks: [{name: n, type: macvlan, subnet: s, master: enp129s0f1np1, namespaces: [a]}]
"#;
    let problems = problems_of(long);
    assert_eq!(
        problems,
        [
            "spec.networks[0].master: `enp129s0f1np1.3000` is not a Linux interface name (1-15 ASCII characters, no `/`, `:` or spaces)"
        ]
    );
    let named = ACROSS_RACKS.replace("nodeInterface: fabric0", "nodeInterface: fabric-network-0");
    let problems = problems_of(&named);
    assert!(
        !problems.is_empty()
            && problems
                .iter()
                .all(|p| p.starts_with("spec.networks[0].nodeInterface: `fabric-network-0` is not a Linux")),
        "{problems:#?}"
    );
    let pod_side = ACROSS_RACKS.replace(
        "interfaces: [{network: fabric}]",
        "interfaces: [{name: averyveryverylongnic, network: fabric}]",
    );
    assert!(
        problems_of(&pod_side)
            .iter()
            .any(|p| p.starts_with("spec.apps[0].interfaces[0].name:")),
    );
}

#[test]
fn a_network_takes_one_subnet_per_rack_with_the_same_families() {
    let two_in_one_rack = ACROSS_RACKS.replace(
        "ranges: [{subnet: r1-net, ipv4: [10.10.1.10-10.10.1.99]}]",
        "ranges: [{subnet: r1-net, ipv4: [10.10.1.10-10.10.1.99]}, {subnet: r2-net, ipv4: [10.10.2.100-10.10.2.120]}]",
    );
    let problems = problems_of(&two_in_one_rack);
    assert!(
        problems.iter().any(
            |p| p.contains("rack `r1` hands out addresses of 2 subnets of this network (r1-net, r2-net)")
        ),
        "{problems:#?}"
    );
    let mixed = ACROSS_RACKS.replace(
        "{name: r2-net, role: fabric, vlan: 100, ipv4: {cidr: 10.10.2.0/24, gateway: 10.10.2.1}}",
        "{name: r2-net, role: fabric, vlan: 100, ipv4: {cidr: 10.10.2.0/24, gateway: 10.10.2.1}, ipv6: {cidr: 'fd00:2::/64'}}",
    );
    assert!(
        problems_of(&mixed)
            .iter()
            .any(|p| p.contains("need the same address families")),
    );
    let both = ACROSS_RACKS.replace("subnetRole: fabric,", "subnetRole: fabric, subnet: r1-net,");
    assert!(
        problems_of(&both)
            .iter()
            .any(|p| p == "spec.networks[0]: set only one of subnet, subnets and subnetRole"),
    );
    let listed = ACROSS_RACKS.replace("subnetRole: fabric,", "subnets: [r1-net, r2-net, r3-net],");
    let network: SpiderNetwork = serde_saphyr::from_str(&listed).unwrap();
    let by_role: SpiderNetwork = serde_saphyr::from_str(ACROSS_RACKS).unwrap();
    assert_eq!(
        serde_json::to_value(compile(&network).unwrap().ip_pools).unwrap(),
        serde_json::to_value(compile(&by_role).unwrap().ip_pools).unwrap(),
        "a list of subnets and a role naming the same subnets render alike"
    );
}

/// A bond of one NIC (a placeholder for a second port) carrying VLAN 300.
const ONE_NIC_BOND: &str = r#"
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderNetwork
metadata: {name: st}
spec:
  subnets:
  - {name: storage, vlan: 300, ipv4: {cidr: 172.20.0.0/24}}
  racks:
  - name: s1
    nodeSelector: {matchLabels: {rack: s1}}
    bonds: [{name: bond0, interfaces: [ens1f0], mode: active-backup}]
    ranges: [{subnet: storage, ipv4: [172.20.0.10-172.20.0.99]}]
  networks:
  - {name: storage, type: macvlan, subnet: storage, master: bond0, namespaces: [st]}
"#;

#[test]
fn a_one_nic_bond_is_named_not_handed_to_ifacer() {
    // With one master, the NAD attaches to the master itself and `ifacer` gets the bond only to make
    // (upstream's rule for a SpiderMultusConfig); so a one-NIC bond must not be rendered as
    // `master: [ens1f0]` + `bond`: pods would attach to ens1f0.300 under the bond. The config names the
    // bond, which the rack's interface task creates.
    let network: SpiderNetwork = serde_saphyr::from_str(ONE_NIC_BOND).unwrap();
    let rendered = compile(&network).unwrap();
    let macvlan = rendered.multus_configs[0].spec.macvlan.as_ref().unwrap();
    assert_eq!(macvlan.master, ["bond0"]);
    assert!(macvlan.bond.is_none());
    let config: serde_json::Value =
        serde_json::from_str(&rendered.network_attachment_definitions[0].spec.config).unwrap();
    let plugins = config["plugins"].as_array().unwrap();
    let macvlan_plugin = plugins.iter().find(|p| p["type"] == "macvlan").unwrap();
    assert_eq!(macvlan_plugin["master"], "bond0.300");
}
