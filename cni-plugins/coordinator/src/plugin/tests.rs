//! The handlers against an agent and a kernel in memory.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

use std::cell::RefCell;

use serde_json::json;
use spiderpool_agent_api::ErrorResponse;

use super::*;
use crate::config::DEFAULT_VETH_MTU;

#[derive(Default)]
struct FakeAgent {
    answer: Option<CoordinatorConfig>,
    not_ready: bool,
    asked: RefCell<Vec<GetCoordinatorArgs>>,
}

impl Agent for FakeAgent {
    fn coordinator_config(&self, args: &GetCoordinatorArgs) -> Result<CoordinatorConfig, ClientError> {
        self.asked.borrow_mut().push(args.clone());
        if self.not_ready {
            return Err(ClientError::Status {
                status: 500,
                error: ErrorResponse {
                    code: 11,
                    msg: "spidercoordinator default is not ready (phase \"NotReady\")".into(),
                    details: String::new(),
                },
                coded: true,
            });
        }
        Ok(self.answer.clone().unwrap_or_else(|| CoordinatorConfig {
            mode: "auto".into(),
            tune_pod_routes: true,
            host_rule_table: 500,
            veth_mtu: 1500,
            ..CoordinatorConfig::default()
        }))
    }

    fn healthy(&self) -> Result<(), ClientError> {
        if self.not_ready {
            Err(ClientError::Malformed {
                reason: "down".into(),
            })
        } else {
            Ok(())
        }
    }
}

/// A DEL the fake kernel was asked for: container, netns, interface, addresses, table.
type Del = (String, Option<String>, String, Vec<IpAddr>, u32);

#[derive(Default)]
struct FakeNetwork {
    fail: Option<fn() -> NetworkError>,
    problems: Vec<String>,
    adds: RefCell<Vec<(Config, String, String, String)>>,
    dels: RefCell<Vec<Del>>,
}

impl Network for FakeNetwork {
    fn add(
        &self,
        config: &Config,
        ifname: &str,
        container_id: &str,
        netns: &str,
    ) -> Result<Added, NetworkError> {
        self.adds
            .borrow_mut()
            .push((config.clone(), ifname.into(), container_id.into(), netns.into()));
        if let Some(fail) = self.fail {
            return Err(fail());
        }
        Ok(Added {
            plan: Plan {
                mode: Mode::Underlay,
                first_invoke: true,
                table: 101,
                steps: Vec::new(),
                notes: Vec::new(),
            },
        })
    }

    fn del(
        &self,
        container_id: &str,
        netns: Option<&str>,
        ifname: &str,
        known_ips: &[IpAddr],
        host_rule_table: u32,
    ) -> Result<Vec<Step>, NetworkError> {
        self.dels.borrow_mut().push((
            container_id.into(),
            netns.map(str::to_owned),
            ifname.into(),
            known_ips.to_vec(),
            host_rule_table,
        ));
        Ok(Vec::new())
    }

    fn check(
        &self,
        _: &Config,
        _: &str,
        _: &str,
        _: &str,
        _: &[IpAddr],
    ) -> Result<Vec<String>, NetworkError> {
        Ok(self.problems.clone())
    }
}

fn invocation(command: &str) -> Invocation {
    Invocation {
        command: Some(command.into()),
        container_id: Some("c0ffee1234567890".into()),
        netns: Some("/var/run/netns/pod".into()),
        ifname: Some("eth0".into()),
        args: Some("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0".into()),
        path: None,
        socket_override: None,
        log_dir: Some("/tmp".into()),
    }
}

fn prev_result(version: &str) -> Value {
    json!({
        "cniVersion": version,
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/pod"}, {"name": "other"}],
        "ips": [
            {"address": "10.6.0.10/16", "gateway": "10.6.0.1", "interface": 0},
            {"address": "fd00:6::10/64", "interface": 0},
            {"address": "10.9.0.1/24", "interface": 1}
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.6.0.1"}]
    })
}

fn netconf(version: &str, extra: Value) -> Vec<u8> {
    let mut conf = json!({
        "cniVersion": version, "name": "macvlan-ens192", "type": "coordinator",
        "logOptions": {"logFile": "/dev/null"},
        "prevResult": prev_result(version)
    });
    if let (Some(object), Value::Object(extra)) = (conf.as_object_mut(), extra) {
        object.extend(extra);
    }
    conf.to_string().into_bytes()
}

fn run(invocation: &Invocation, stdin: &[u8], agent: &FakeAgent, network: &FakeNetwork) -> (Outcome, Value) {
    let outcome = run_with(invocation, stdin, agent, network);
    let value = if outcome.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&outcome.stdout).unwrap()
    };
    (outcome, value)
}

#[test]
fn add_prints_prev_result_unchanged_in_every_version() {
    for version in cni::SUPPORTED_VERSIONS {
        let agent = FakeAgent::default();
        let network = FakeNetwork::default();
        let (outcome, value) = run(&invocation("ADD"), &netconf(version, json!({})), &agent, &network);
        assert_eq!(outcome.exit_code, 0, "{version}: {value}");
        assert_eq!(value, prev_result(version), "{version}");
        let adds = network.adds.borrow();
        assert_eq!(adds.len(), 1);
        assert_eq!(
            (adds[0].1.as_str(), adds[0].2.as_str(), adds[0].3.as_str()),
            ("eth0", "c0ffee1234567890", "/var/run/netns/pod")
        );
        assert_eq!(
            *agent.asked.borrow(),
            [GetCoordinatorArgs {
                pod_name: "web-0".into(),
                pod_namespace: "ns".into()
            }]
        );
    }
}

#[test]
fn a_mac_the_coordinator_set_is_recorded_in_the_result() {
    struct Macs;
    impl Network for Macs {
        fn add(&self, _: &Config, ifname: &str, _: &str, _: &str) -> Result<Added, NetworkError> {
            Ok(Added {
                plan: Plan {
                    mode: Mode::Underlay,
                    first_invoke: true,
                    table: 101,
                    steps: vec![Step::SetMac {
                        link: ifname.into(),
                        mac: [0x0a, 0x1b, 10, 6, 0, 10],
                    }],
                    notes: Vec::new(),
                },
            })
        }
        fn del(
            &self,
            _: &str,
            _: Option<&str>,
            _: &str,
            _: &[IpAddr],
            _: u32,
        ) -> Result<Vec<Step>, NetworkError> {
            Ok(Vec::new())
        }
        fn check(
            &self,
            _: &Config,
            _: &str,
            _: &str,
            _: &str,
            _: &[IpAddr],
        ) -> Result<Vec<String>, NetworkError> {
            Ok(Vec::new())
        }
    }
    let outcome = run_with(
        &invocation("ADD"),
        &netconf("1.0.0", json!({})),
        &FakeAgent::default(),
        &Macs,
    );
    let value: Value = serde_json::from_str(&outcome.stdout).unwrap();
    let mut expected = prev_result("1.0.0");
    expected["interfaces"][0]["mac"] = json!("0a:1b:0a:06:00:0a");
    assert_eq!(value, expected, "only the pod interface's MAC changes");
}

#[test]
fn add_hands_the_merged_configuration_to_the_kernel() {
    let agent = FakeAgent {
        answer: Some(CoordinatorConfig {
            mode: "auto".into(),
            service_cidr: vec!["10.96.0.0/12".into()],
            tune_pod_routes: true,
            pod_default_route_nic: "net1".into(),
            host_rule_table: 600,
            ..CoordinatorConfig::default()
        }),
        ..FakeAgent::default()
    };
    let network = FakeNetwork::default();
    let (outcome, _) = run(
        &invocation("ADD"),
        &netconf("1.0.0", json!({"mode": "underlay", "txQueueLen": 3000})),
        &agent,
        &network,
    );
    assert_eq!(outcome.exit_code, 0);
    let config = &network.adds.borrow()[0].0;
    assert_eq!(config.mode, Mode::Underlay);
    assert_eq!(
        (config.host_rule_table, config.tx_queue_len, config.veth_mtu),
        (600, Some(3000), DEFAULT_VETH_MTU)
    );
    assert_eq!(config.pod_default_route_nic, "net1");
    assert_eq!(config.hijack.len(), 1);
}

#[test]
fn disable_passes_the_result_through_without_touching_the_kernel() {
    for mode in ["disable", "disabled"] {
        let network = FakeNetwork::default();
        let (outcome, value) = run(
            &invocation("ADD"),
            &netconf("0.3.1", json!({ "mode": mode })),
            &FakeAgent::default(),
            &network,
        );
        assert_eq!(outcome.exit_code, 0);
        assert_eq!(value, prev_result("0.3.1"));
        assert!(network.adds.borrow().is_empty());
    }
}

#[test]
fn add_failures_have_their_codes() {
    // No prevResult: the coordinator is chained.
    let mut stdin: Value = serde_json::from_slice(&netconf("1.0.0", json!({}))).unwrap();
    stdin.as_object_mut().unwrap().remove("prevResult");
    let (_, value) = run(
        &invocation("ADD"),
        stdin.to_string().as_bytes(),
        &FakeAgent::default(),
        &FakeNetwork::default(),
    );
    assert_eq!(
        (value["code"].as_u64(), value["msg"].as_str()),
        (Some(7), Some("prevResult: missing"))
    );
    // The daemon's refusal is passed on.
    let not_ready = FakeAgent {
        not_ready: true,
        ..FakeAgent::default()
    };
    let (_, value) = run(
        &invocation("ADD"),
        &netconf("1.0.0", json!({})),
        &not_ready,
        &FakeNetwork::default(),
    );
    assert_eq!(value["code"], 11);
    assert!(value["msg"].as_str().unwrap().contains("NotReady"), "{value}");
    // A plan that cannot work is a configuration error naming why.
    let refusing = FakeNetwork {
        fail: Some(|| {
            NetworkError::Plan(PlanError::NoUnderlayVeth {
                ifname: "net1".into(),
                first: "eth0".into(),
            })
        }),
        ..FakeNetwork::default()
    };
    let (_, value) = run(
        &invocation("ADD"),
        &netconf("1.0.0", json!({})),
        &FakeAgent::default(),
        &refusing,
    );
    assert_eq!(value["code"], 7);
    assert!(
        value["msg"]
            .as_str()
            .unwrap()
            .starts_with("ADD: underlay mode on net1"),
        "{value}"
    );
    // A netconf value the coordinator cannot use.
    let (_, value) = run(
        &invocation("ADD"),
        &netconf("1.0.0", json!({"podMACPrefix": "01:00"})),
        &FakeAgent::default(),
        &FakeNetwork::default(),
    );
    assert_eq!(value["code"], 7);
    assert!(
        value["msg"].as_str().unwrap().starts_with("podMACPrefix:"),
        "{value}"
    );
    // A log file outside the log directory.
    let (_, value) = run(
        &invocation("ADD"),
        &netconf("1.0.0", json!({"logOptions": {"logFile": "/etc/cron.d/x"}})),
        &FakeAgent::default(),
        &FakeNetwork::default(),
    );
    assert_eq!(value["code"], 7);
    assert!(
        value["msg"].as_str().unwrap().starts_with("logOptions.logFile:"),
        "{value}"
    );
}

#[test]
fn del_cleans_the_host_even_when_the_daemon_is_down() {
    let network = FakeNetwork::default();
    let down = FakeAgent {
        not_ready: true,
        ..FakeAgent::default()
    };
    let (outcome, value) = run(
        &invocation("DEL"),
        &netconf("1.0.0", json!({"hostRuleTable": 600})),
        &down,
        &network,
    );
    assert_eq!((outcome.exit_code, value), (0, Value::Null));
    let dels = network.dels.borrow();
    assert_eq!(
        dels[0],
        (
            "c0ffee1234567890".to_owned(),
            Some("/var/run/netns/pod".to_owned()),
            "eth0".to_owned(),
            vec!["10.6.0.10".parse().unwrap(), "fd00:6::10".parse().unwrap()],
            600
        )
    );
    // Without CNI_NETNS (the runtime may omit it on DEL).
    let gone = Invocation {
        netns: None,
        ..invocation("DEL")
    };
    let network = FakeNetwork::default();
    assert_eq!(
        run(
            &gone,
            &netconf("1.0.0", json!({})),
            &FakeAgent::default(),
            &network
        )
        .0
        .exit_code,
        0
    );
    assert_eq!(network.dels.borrow()[0].1, None);
    assert_eq!(network.dels.borrow()[0].4, 500);
    // Disabled: nothing to remove.
    let network = FakeNetwork::default();
    run(
        &invocation("DEL"),
        &netconf("1.0.0", json!({"mode": "disable"})),
        &FakeAgent::default(),
        &network,
    );
    assert!(network.dels.borrow().is_empty());
}

#[test]
fn check_reports_what_is_missing() {
    let (outcome, _) = run(
        &invocation("CHECK"),
        &netconf("1.0.0", json!({})),
        &FakeAgent::default(),
        &FakeNetwork::default(),
    );
    assert_eq!(outcome.exit_code, 0);
    let broken = FakeNetwork {
        problems: vec!["the pod has no veth0".into()],
        ..FakeNetwork::default()
    };
    let (_, value) = run(
        &invocation("CHECK"),
        &netconf("1.0.0", json!({})),
        &FakeAgent::default(),
        &broken,
    );
    assert_eq!(value["code"], 999);
    assert_eq!(value["details"], "the pod has no veth0");
    let (_, value) = run(
        &invocation("CHECK"),
        &netconf("0.3.1", json!({})),
        &FakeAgent::default(),
        &broken,
    );
    assert_eq!(value["code"], 1);
}

#[test]
fn gc_status_and_version() {
    let gc = Invocation {
        command: Some("GC".into()),
        ..Invocation::default()
    };
    assert_eq!(
        run(
            &gc,
            &netconf("1.1.0", json!({})),
            &FakeAgent::default(),
            &FakeNetwork::default()
        )
        .0
        .exit_code,
        0
    );
    assert_eq!(
        run(
            &gc,
            &netconf("1.0.0", json!({})),
            &FakeAgent::default(),
            &FakeNetwork::default()
        )
        .1["code"],
        1
    );
    let status = Invocation {
        command: Some("STATUS".into()),
        ..Invocation::default()
    };
    assert_eq!(
        run(
            &status,
            &netconf("1.1.0", json!({})),
            &FakeAgent::default(),
            &FakeNetwork::default()
        )
        .0
        .exit_code,
        0
    );
    let down = FakeAgent {
        not_ready: true,
        ..FakeAgent::default()
    };
    assert_eq!(
        run(
            &status,
            &netconf("1.1.0", json!({})),
            &down,
            &FakeNetwork::default()
        )
        .1["code"],
        50
    );
    let version = Invocation {
        command: Some("VERSION".into()),
        ..Invocation::default()
    };
    let (_, value) = run(&version, b"", &FakeAgent::default(), &FakeNetwork::default());
    assert_eq!(value["supportedVersions"], json!(cni::SUPPORTED_VERSIONS));
}
