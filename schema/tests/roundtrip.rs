//! Upstream Spiderpool YAML keeps working unchanged: every example object under
//! `tests/fixtures/classic/` (the examples of the upstream docs in `../shared/seeds/` and the reference,
//! plus realistic objects of every kind and every SpiderMultusConfig `cniType`) deserializes into our
//! types, serializes back to the same document and passes validation. And a deliberately bad object of
//! each kind reports its problems with the right field paths.
//!
//! Documents are compared as `serde_json::Value`, both sides parsed with serde-saphyr, so key order and
//! YAML quoting do not matter but every field and value does.

// A test crate: failing loudly is the point. (clippy's allow-*-in-tests covers `#[test]` functions but
// not their helpers in an integration-test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use spiderpool_schema::validation::Validate;
use spiderpool_schema::{
    NetworkAttachmentDefinition, SpiderCoordinator, SpiderEndpoint, SpiderIPPool, SpiderMultusConfig,
    SpiderReservedIP, SpiderSubnet,
};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/classic");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Deserializes `doc` into `K`, checks it serializes back to `doc` and validates.
fn round_trip<K: DeserializeOwned + Serialize + Validate>(name: &str, text: &str, doc: &serde_json::Value) {
    let object: K =
        serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{name}: does not deserialize: {e}"));
    let back = serde_json::to_value(&object).unwrap();
    assert_eq!(
        &back,
        doc,
        "{name}: serializes to a different document\n--- got:\n{}\n--- want:\n{}",
        serde_json::to_string_pretty(&back).unwrap(),
        serde_json::to_string_pretty(doc).unwrap()
    );
    if let Err(problems) = object.validate() {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        panic!("{name}: does not validate:\n{}", list.join("\n"));
    }
}

#[test]
fn every_fixture_round_trips_and_validates() {
    let files = fixtures();
    assert!(
        files.len() >= 20,
        "expected the classic fixtures, found {} files",
        files.len()
    );
    let mut kinds = BTreeSet::new();
    let mut cni_types = BTreeSet::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).unwrap();
        let doc: serde_json::Value =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
        let kind = doc["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no kind"))
            .to_string();
        let api_version = doc["apiVersion"].as_str().unwrap_or_default();
        let expected_api_version = match kind.as_str() {
            "NetworkAttachmentDefinition" => "k8s.cni.cncf.io/v1",
            _ => spiderpool_schema::API_VERSION,
        };
        assert_eq!(api_version, expected_api_version, "{name}");
        match kind.as_str() {
            "SpiderIPPool" => round_trip::<SpiderIPPool>(&name, &text, &doc),
            "SpiderSubnet" => round_trip::<SpiderSubnet>(&name, &text, &doc),
            "SpiderReservedIP" => round_trip::<SpiderReservedIP>(&name, &text, &doc),
            "SpiderEndpoint" => round_trip::<SpiderEndpoint>(&name, &text, &doc),
            "SpiderMultusConfig" => {
                round_trip::<SpiderMultusConfig>(&name, &text, &doc);
                cni_types.insert(doc["spec"]["cniType"].as_str().unwrap_or("custom").to_string());
            }
            "SpiderCoordinator" => round_trip::<SpiderCoordinator>(&name, &text, &doc),
            "NetworkAttachmentDefinition" => round_trip::<NetworkAttachmentDefinition>(&name, &text, &doc),
            other => panic!("{name}: unexpected kind {other}"),
        }
        kinds.insert(kind);
    }
    let all_kinds = [
        "NetworkAttachmentDefinition",
        "SpiderCoordinator",
        "SpiderEndpoint",
        "SpiderIPPool",
        "SpiderMultusConfig",
        "SpiderReservedIP",
        "SpiderSubnet",
    ];
    assert_eq!(
        kinds,
        all_kinds.iter().map(ToString::to_string).collect(),
        "a kind has no fixture"
    );
    let all_cni_types = spiderpool_schema::multusconfig::CNI_TYPES;
    assert_eq!(
        cni_types,
        all_cni_types.iter().map(ToString::to_string).collect(),
        "a cniType has no SpiderMultusConfig fixture"
    );
}

/// The seed examples are there verbatim (a guard against someone "fixing" them until they pass).
#[test]
fn upstream_seed_examples_are_fixtures() {
    let names: BTreeSet<String> = fixtures()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for seed in [
        "ippool-test.yaml",
        "ippool-master-172.yaml",
        "smc-macvlan-conf-seed.yaml",
        "coordinator-default-seed.yaml",
    ] {
        assert!(names.contains(seed), "missing seed fixture {seed}");
    }
    let seed: SpiderCoordinator = serde_saphyr::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/classic/coordinator-default-seed.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    // The removed upstream fields are kept, not dropped.
    assert_eq!(seed.spec.detect_gateway, Some(false));
    assert_eq!(seed.spec.detect_ip_conflict, Some(false));
    assert_eq!(seed.spec.host_rp_filter, Some(0));
}

/// Parses `yaml` as `K` and returns the paths of its problems.
fn problem_paths<K: DeserializeOwned + Validate>(yaml: &str) -> Vec<String> {
    let object: K = serde_saphyr::from_str(yaml).unwrap();
    object
        .validate()
        .expect_err("the object should be invalid")
        .into_iter()
        .map(|p| p.path)
        .collect()
}

#[test]
fn bad_ippool_reports_paths() {
    let paths = problem_paths::<SpiderIPPool>(
        "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderIPPool\nmetadata:\n  name: bad\nspec:\n  subnet: 10.0.0.0/24\n  ips: [10.0.0.1-10.0.0.20, 10.0.1.5-10.0.1.1]\n  gateway: 10.0.1.1\n  routes:\n  - {dst: ::/0, gw: 10.0.0.1}\n",
    );
    assert_eq!(paths, ["spec.ips[1]", "spec.gateway", "spec.routes[0].dst"]);
}

#[test]
fn bad_subnet_reports_paths() {
    let paths = problem_paths::<SpiderSubnet>(
        "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderSubnet\nmetadata:\n  name: bad\nspec:\n  ipVersion: 4\n  subnet: 172.100.0.1/16\n",
    );
    assert_eq!(paths, ["spec.subnet"]);
    let paths = problem_paths::<SpiderSubnet>(
        "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderSubnet\nmetadata:\n  name: bad\nspec:\n  subnet: 172.100.0.0/16\n  ips: [172.100.0.1-172.100.0.9]\n  excludeIPs: [172.101.0.1]\n  gateway: 172.100.0.1\n  routes:\n  - {dst: 10.0.0.0/8, gw: 10.0.0.1}\n",
    );
    assert_eq!(paths, ["spec.excludeIPs", "spec.gateway", "spec.routes[0].gw"]);
}

#[test]
fn bad_reservedip_reports_paths() {
    let paths = problem_paths::<SpiderReservedIP>(
        "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderReservedIP\nmetadata:\n  name: bad\nspec:\n  ips: [172.18.41.41-172.18.41.44, fd00::1, 172.18.41.0/24]\n",
    );
    assert_eq!(paths, ["spec.ips[1]", "spec.ips[2]"]);
}

#[test]
fn bad_endpoint_reports_paths() {
    let paths = problem_paths::<SpiderEndpoint>(
        "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderEndpoint\nmetadata:\n  name: bad\n  namespace: default\nstatus:\n  current:\n    uid: u1\n    node: ''\n    ips:\n    - interface: eth0\n      ipv4: 172.18.30.139\n      ipv4Gateway: fd00::1\n      vlan: -1\n  ownerControllerType: ''\n  ownerControllerName: test-app\n",
    );
    assert_eq!(
        paths,
        [
            "status.current.node",
            "status.ownerControllerType",
            "status.current.ips[0].ipv4",
            "status.current.ips[0].ipv4Gateway",
            "status.current.ips[0].vlan",
        ]
    );
}

#[test]
fn bad_multusconfig_reports_paths() {
    let paths = problem_paths::<SpiderMultusConfig>(
        "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderMultusConfig\nmetadata:\n  name: bad\n  namespace: kube-system\n  annotations:\n    multus.spidernet.io/cni-version: 0.2.0\nspec:\n  cniType: macvlan\n  macvlan:\n    master: [ens192, ens224]\n    vlanID: 4095\n    ippools:\n      matchMasterSubnet: true\n  ipvlan:\n    master: [eth0]\n  chainCNIJsonData:\n  - '{\"name\": \"missing-type\"}'\n",
    );
    assert_eq!(
        paths,
        [
            "metadata.annotations[multus.spidernet.io/cni-version]",
            "spec.ipvlan",
            "spec.macvlan.bond",
            "spec.macvlan.vlanID",
            "spec.macvlan.ippools.matchMasterSubnet",
            "spec.chainCNIJsonData[0]",
        ]
    );
}

#[test]
fn bad_coordinator_reports_paths() {
    let paths = problem_paths::<SpiderCoordinator>(
        "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderCoordinator\nmetadata:\n  name: default\nspec:\n  mode: auto\n  hijackCIDR: [169.254.0.0/33]\n  podMACPrefix: 'ff:00'\n  vethMTU: 0\n",
    );
    assert_eq!(
        paths,
        [
            "spec.podCIDRType",
            "spec.hijackCIDR[0]",
            "spec.podMACPrefix",
            "spec.vethMTU"
        ]
    );
}

#[test]
fn bad_nad_reports_paths() {
    let paths = problem_paths::<NetworkAttachmentDefinition>(
        "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: bad\n  namespace: default\nspec:\n  config: '{\"cniVersion\": \"0.3.1\", \"plugins\": [{\"master\": \"eth0\"}]}'\n",
    );
    assert_eq!(paths, ["spec.config"]);
}
