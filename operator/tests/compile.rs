//! Properties of the compiler that reviewers rely on: determinism, stable names, stable fixed addresses.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::collections::BTreeMap;

use spiderpool_operator::compile::compile;
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
