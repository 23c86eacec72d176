//! The real `spiderpool` binary, run as a runtime runs it (CNI_* environment, netconf on stdin),
//! against a fake node daemon on a temporary unix socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::{FakeDaemon, Recorded, Reply, Run, run_plugin};

/// Generous guard against a hung plugin; the runs themselves take milliseconds.
const LIMIT: Duration = Duration::from_secs(60);

struct Fixture {
    daemon: FakeDaemon,
    logs: tempfile::TempDir,
}

impl Fixture {
    fn new(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        Self {
            daemon: FakeDaemon::start(handler),
            logs: tempfile::tempdir().unwrap(),
        }
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.logs.path().join("spiderpool.log")
    }

    fn netconf(&self, version: &str, extra: Value) -> Vec<u8> {
        netconf_for(self.daemon.socket_path(), &self.log_path(), version, extra)
    }

    fn run(&self, command: &str, stdin: &[u8]) -> Run {
        run_command(command, stdin)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

fn netconf_for(socket: &Path, log: &Path, version: &str, extra: Value) -> Vec<u8> {
    let mut conf = json!({
        "cniVersion": version,
        "name": "macvlan-ens192",
        "type": "macvlan",
        "master": "ens192",
        "ipam": {
            "type": "spiderpool",
            "log_level": "DEBUG",
            "log_file_path": log,
            "log_file_max_size": "100",
            "default_ipv4_ippool": ["default-v4"],
            "ipam_unix_socket_path": socket,
        }
    });
    let Value::Object(extra) = extra else {
        panic!("extra must be an object")
    };
    for (key, value) in extra {
        if key == "ipam" {
            let Value::Object(ipam) = value else { panic!() };
            conf["ipam"].as_object_mut().unwrap().extend(ipam);
        } else {
            conf[key] = value;
        }
    }
    conf.to_string().into_bytes()
}

fn run_command(command: &str, stdin: &[u8]) -> Run {
    let env = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "3f6940ab5ab4"),
        ("CNI_NETNS", "/var/run/netns/cni-1234"),
        ("CNI_IFNAME", "net1"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=true;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=3f6940ab5ab4;K8S_POD_UID=1b4e-77;IgnoreUnknown=true",
        ),
    ];
    run_plugin(&env, stdin, LIMIT)
}

/// The daemon's answer for a pod with two interfaces; the plugin must keep `net1`'s.
fn two_nic_answer() -> Value {
    json!({
        "ips": [
            {"version": 4, "address": "10.6.0.10/16", "nic": "eth0", "ipPool": "p-eth0", "gateway": "10.6.0.1", "vlan": 0},
            {"version": 4, "address": "10.7.0.10/24", "nic": "net1", "ipPool": "p-v4", "gateway": "10.7.0.1", "vlan": 0},
            {"version": 6, "address": "fd00:7::10/64", "nic": "net1", "ipPool": "p-v6", "vlan": 0}
        ],
        "routes": [
            {"ifName": "eth0", "dst": "0.0.0.0/0", "gw": "10.6.0.1"},
            {"ifName": "net1", "dst": "10.96.0.0/12", "gw": "10.7.0.1"}
        ]
    })
}

fn answering(status: u16, body: Value) -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    move |_| Reply::Json(status, body.clone())
}

fn assert_error(run: &Run, code: u64) -> Value {
    assert_eq!(
        run.code, 1,
        "exit status; stdout {:?} stderr {:?}",
        run.stdout, run.stderr
    );
    let value = run.json();
    assert_eq!(value["code"], code, "{value}");
    let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["cniVersion", "code", "msg", "details"], "{value}");
    value
}

#[test]
fn add_returns_this_interfaces_addresses_in_every_version() {
    let fixture = Fixture::new(answering(200, two_nic_answer()));
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let run = fixture.run("ADD", &fixture.netconf(version, json!({})));
        assert_eq!(run.code, 0, "{version}: {run:?}");
        let carries_version = version.starts_with("0.");
        let ip = |family: &str, mut entry: Value| {
            if carries_version {
                entry["version"] = json!(family);
            }
            entry
        };
        assert_eq!(
            run.json(),
            json!({
                "cniVersion": version,
                "ips": [
                    ip("4", json!({"address": "10.7.0.10/24", "gateway": "10.7.0.1"})),
                    ip("6", json!({"address": "fd00:7::10/64"}))
                ],
                "routes": [{"dst": "10.96.0.0/12", "gw": "10.7.0.1"}]
            }),
            "{version}"
        );
    }
    let requests = fixture.daemon.requests();
    assert_eq!(requests.len(), 5);
    let request = &requests[0];
    assert_eq!(
        (request.method.as_str(), request.target.as_str()),
        ("POST", "/v1/ipam/ip")
    );
    assert_eq!(request.header("connection"), Some("close"));
    assert_eq!(
        request.header("content-length"),
        Some(request.body.len().to_string().as_str())
    );
    assert_eq!(
        request.json(),
        json!({
            "containerID": "3f6940ab5ab4", "ifName": "net1", "netNamespace": "/var/run/netns/cni-1234",
            "podNamespace": "default", "podName": "web-0", "podUID": "1b4e-77",
            "defaultIPv4IPPool": ["default-v4"], "cleanGateway": false, "matchMasterSubnet": false,
            "netName": "macvlan-ens192"
        })
    );
    let log = fixture.log_text();
    assert!(
        log.contains("INFO  [container=3f6940ab5ab4 pod=default/web-0] ADD succeeded"),
        "{log}"
    );
    assert!(log.contains("DEBUG"), "log_level DEBUG honoured: {log}");
}

#[test]
fn a_chunked_answer_is_read() {
    let fixture = Fixture::new(|_| Reply::Chunked(200, two_nic_answer(), 7));
    let run = fixture.run("ADD", &fixture.netconf("1.0.0", json!({})));
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["ips"][0]["address"], "10.7.0.10/24");
}

#[test]
fn add_fails_when_the_daemon_has_nothing_for_this_interface() {
    let mut answer = two_nic_answer();
    answer["ips"]
        .as_array_mut()
        .unwrap()
        .retain(|ip| ip["nic"] == "eth0");
    let fixture = Fixture::new(answering(200, answer));
    let run = fixture.run("ADD", &fixture.netconf("1.0.0", json!({})));
    let error = assert_error(&run, 999);
    assert_eq!(error["msg"], "node daemon returned no address for interface net1");
}

#[test]
fn daemon_errors_are_passed_through() {
    let body = json!({"code": 102, "msg": "all candidate pools of net1 are exhausted", "details": "p-v4: 0 free of 254"});
    let fixture = Fixture::new(answering(500, body));
    let run = fixture.run("ADD", &fixture.netconf("0.4.0", json!({})));
    assert_eq!(
        assert_error(&run, 102),
        json!({"cniVersion": "0.4.0", "code": 102, "msg": "all candidate pools of net1 are exhausted", "details": "p-v4: 0 free of 254"})
    );
}

#[test]
fn an_upstream_style_string_error_is_reported() {
    let fixture = Fixture::new(answering(500, json!("failed to allocate IP")));
    let run = fixture.run("ADD", &fixture.netconf("1.0.0", json!({})));
    let error = assert_error(&run, 999);
    assert!(
        error["msg"].as_str().unwrap().contains("failed to allocate IP"),
        "{error}"
    );
}

#[test]
fn a_daemon_that_is_down_means_try_again_later() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    let stdin = netconf_for(&socket, &dir.path().join("log"), "1.0.0", json!({}));
    for command in ["ADD", "DEL"] {
        let run = run_command(command, &stdin);
        let error = assert_error(&run, 11);
        assert!(
            error["msg"]
                .as_str()
                .unwrap()
                .contains(&*socket.to_string_lossy()),
            "{command}: {error}"
        );
    }
    // A socket file nobody listens on: connection refused, same answer.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert_error(&run_command("ADD", &stdin), 11);
}

#[test]
fn del_releases_and_is_idempotent() {
    // The first DEL releases; the retry finds nothing recorded (404) and must still succeed.
    let deletes = AtomicUsize::new(0);
    let fixture = Fixture::new(move |_| {
        if deletes.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::Json(200, json!({}))
        } else {
            Reply::Json(
                404,
                json!({"code": 3, "msg": "nothing recorded for this interface"}),
            )
        }
    });
    let stdin = fixture.netconf("1.1.0", json!({"prevResult": {"cniVersion": "1.1.0", "ips": []}}));
    for _ in 0..2 {
        let run = fixture.run("DEL", &stdin);
        assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    }
    let requests = fixture.daemon.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        (requests[0].method.as_str(), requests[0].target.as_str()),
        ("DELETE", "/v1/ipam/ip")
    );
    assert_eq!(
        requests[0].json(),
        json!({
            "containerID": "3f6940ab5ab4", "ifName": "net1", "netNamespace": "/var/run/netns/cni-1234",
            "podNamespace": "default", "podName": "web-0", "podUID": "1b4e-77", "netName": "macvlan-ens192"
        })
    );
    assert!(
        fixture.log_text().contains("nothing to release"),
        "{}",
        fixture.log_text()
    );
}

#[test]
fn a_failing_del_is_not_swallowed() {
    let fixture = Fixture::new(answering(
        500,
        json!({"code": 11, "msg": "API server unreachable"}),
    ));
    let run = fixture.run("DEL", &fixture.netconf("1.0.0", json!({})));
    assert_eq!(assert_error(&run, 11)["msg"], "API server unreachable");
}

#[test]
fn check_verifies_against_the_workload_endpoint() {
    let endpoint = json!({
        "podNamespace": "default", "podName": "web-0", "podUID": "1b4e-77", "node": "node-1",
        "interfaces": [
            {"interface": "eth0", "ipv4": "10.6.0.10/16"},
            {"interface": "net1", "ipv4": "10.7.0.10/24", "ipv6": "fd00:7::10/64"}
        ]
    });
    let fixture = Fixture::new(answering(200, endpoint));
    let prev_result = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "net1", "sandbox": "/var/run/netns/cni-1234"}],
        "ips": [
            {"address": "10.7.0.10/24", "gateway": "10.7.0.1", "interface": 0},
            {"address": "fd00:7::10/64", "interface": 0}
        ]
    });
    let run = fixture.run(
        "CHECK",
        &fixture.netconf("1.0.0", json!({"prevResult": prev_result})),
    );
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    let request = &fixture.daemon.requests()[0];
    assert_eq!(
        (request.method.as_str(), request.target.as_str()),
        ("GET", "/v1/workloadendpoint?podNamespace=default&podName=web-0")
    );

    let stale = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.7.0.99/24"}]});
    let run = fixture.run("CHECK", &fixture.netconf("1.0.0", json!({"prevResult": stale})));
    let error = assert_error(&run, 999);
    assert!(
        error["details"].as_str().unwrap().contains("10.7.0.99/24"),
        "{error}"
    );

    let run = fixture.run(
        "CHECK",
        &fixture.netconf("0.3.1", json!({"prevResult": {"ips": []}})),
    );
    assert_error(&run, 1);
}

#[test]
fn check_fails_when_the_daemon_records_nothing() {
    let fixture = Fixture::new(answering(404, json!({"code": 3, "msg": "no SpiderEndpoint"})));
    let prev_result = json!({"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.7.0.10/24"}]});
    let run = fixture.run(
        "CHECK",
        &fixture.netconf("0.4.0", json!({"prevResult": prev_result})),
    );
    assert_error(&run, 999);
}

#[test]
fn gc_sends_the_valid_attachments_and_prints_nothing() {
    let fixture = Fixture::new(answering(
        200,
        json!({"released": [{"containerID": "old", "ifname": "net1"}]}),
    ));
    let attachments =
        json!([{"containerID": "3f6940ab5ab4", "ifname": "net1"}, {"containerID": "9a", "ifname": "eth0"}]);
    let stdin = fixture.netconf(
        "1.1.0",
        json!({"cni.dev/valid-attachments": attachments, "cni.dev/attachments": attachments}),
    );
    let run = run_plugin(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        &stdin,
        LIMIT,
    );
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    let request = &fixture.daemon.requests()[0];
    assert_eq!(
        (request.method.as_str(), request.target.as_str()),
        ("POST", "/v1/ipam/gc")
    );
    assert_eq!(
        request.json(),
        json!({"netName": "macvlan-ens192", "validAttachments": attachments})
    );
    assert!(fixture.log_text().contains("GC released 1 attachment(s)"));

    let old = fixture.netconf("1.0.0", json!({"cni.dev/valid-attachments": []}));
    assert_error(&run_plugin(&[("CNI_COMMAND", "GC")], &old, LIMIT), 1);
}

#[test]
fn status_reports_the_daemons_health() {
    let healthy = Fixture::new(answering(200, json!({})));
    let stdin = healthy.netconf("1.1.0", json!({}));
    let run = run_plugin(
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/opt/cni/bin")],
        &stdin,
        LIMIT,
    );
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    let request = &healthy.daemon.requests()[0];
    assert_eq!(
        (request.method.as_str(), request.target.as_str()),
        ("GET", "/v1/ipam/healthy")
    );

    let starting = Fixture::new(answering(503, json!({"code": 11, "msg": "caches not synced"})));
    let run = run_plugin(
        &[("CNI_COMMAND", "STATUS")],
        &starting.netconf("1.1.0", json!({})),
        LIMIT,
    );
    let error = assert_error(&run, 50);
    assert!(
        error["details"].as_str().unwrap().contains("caches not synced"),
        "{error}"
    );

    let dir = tempfile::tempdir().unwrap();
    let down = netconf_for(
        &dir.path().join("absent.sock"),
        &dir.path().join("log"),
        "1.1.0",
        json!({}),
    );
    assert_error(&run_plugin(&[("CNI_COMMAND", "STATUS")], &down, LIMIT), 50);
}

#[test]
fn version_lists_the_supported_versions() {
    let expected = json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    let run = run_plugin(&[("CNI_COMMAND", "VERSION")], b"", LIMIT);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.json(),
        json!({"cniVersion": "1.1.0", "supportedVersions": expected})
    );
    let run = run_plugin(&[("CNI_COMMAND", "VERSION")], br#"{"cniVersion":"0.3.1"}"#, LIMIT);
    assert_eq!(
        run.json(),
        json!({"cniVersion": "0.3.1", "supportedVersions": expected})
    );
}

#[test]
fn bad_input_gets_the_right_code() {
    let fixture = Fixture::new(answering(200, two_nic_answer()));
    assert_error(&fixture.run("ADD", b"this is not json"), 6);
    assert_error(&fixture.run("ADD", &fixture.netconf("0.2.0", json!({}))), 1);
    let error = assert_error(
        &fixture.run(
            "ADD",
            &fixture.netconf("1.0.0", json!({"ipam": {"log_file_max_size": "big"}})),
        ),
        7,
    );
    assert!(
        error["msg"]
            .as_str()
            .unwrap()
            .starts_with("ipam.log_file_max_size:"),
        "{error}"
    );
    let error = assert_error(
        &run_plugin(
            &[("CNI_COMMAND", "ADD")],
            &fixture.netconf("1.0.0", json!({})),
            LIMIT,
        ),
        4,
    );
    assert_eq!(error["msg"], "CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME: missing");
    assert_error(&run_plugin(&[], b"", LIMIT), 4);
    let no_pod = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "net1"),
        ("CNI_ARGS", "IgnoreUnknown=1"),
    ];
    let error = assert_error(
        &run_plugin(&no_pod, &fixture.netconf("1.0.0", json!({})), LIMIT),
        4,
    );
    assert_eq!(error["msg"], "CNI_ARGS: K8S_POD_NAMESPACE missing");
    assert!(
        fixture.daemon.requests().is_empty(),
        "nothing reaches the daemon on bad input"
    );
}

#[test]
fn stdout_carries_nothing_but_the_protocol_even_when_logging_to_stderr() {
    let fixture = Fixture::new(answering(200, two_nic_answer()));
    // The log path's parent is a regular file, so the plugin must fall back to stderr.
    let blocker = fixture.logs.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let log_override = json!({"ipam": {"log_file_path": blocker.join("x.log"), "log_level": "debug"}});
    let run = fixture.run("ADD", &fixture.netconf("1.1.0", log_override.clone()));
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["cniVersion"], "1.1.0");
    assert!(run.stderr.contains("logging to stderr"), "{}", run.stderr);
    assert!(run.stderr.contains("ADD succeeded"), "{}", run.stderr);
    let run = fixture.run("DEL", &fixture.netconf("1.1.0", log_override));
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
}

#[test]
fn a_silent_daemon_is_given_up_on_after_the_timeout() {
    let fixture = Fixture::new(|_| Reply::Hang(Duration::from_secs(120)));
    let stdin = fixture.netconf("1.0.0", json!({"ipam": {"timeout_seconds": 1}}));
    let run = fixture.run("ADD", &stdin);
    let error = assert_error(&run, 11);
    assert!(
        error["msg"]
            .as_str()
            .unwrap()
            .contains("did not answer within 1s"),
        "{error}"
    );
    // The run ended on the plugin's own deadline, not the test's 60 s guard.
    assert!(run.elapsed < Duration::from_secs(30), "took {:?}", run.elapsed);
    assert_eq!(fixture.daemon.requests().len(), 1);
}
