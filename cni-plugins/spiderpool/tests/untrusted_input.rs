//! What a NetworkAttachmentDefinition author controls (the netconf) and what the daemon answers
//! cannot make the root plugin write or connect outside its own directories, nor crash it: every
//! such input ends in a CNI error object on stdout, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod support;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use support::{FakeDaemon, Reply, Run, run_plugin};

const LIMIT: Duration = Duration::from_secs(60);

/// A fake daemon, a log directory the runtime allows, and a way to run the plugin there.
struct Node {
    daemon: FakeDaemon,
    log_dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        Self {
            daemon: FakeDaemon::start(|_| {
                Reply::Json(
                    200,
                    json!({"ips": [{"version": 4, "address": "10.7.0.10/24", "nic": "net1"}]}),
                )
            }),
            log_dir: tempfile::tempdir().unwrap(),
        }
    }

    fn netconf(&self, ipam: Value) -> Vec<u8> {
        let mut conf = json!({
            "cniVersion": "1.0.0", "name": "n", "type": "macvlan",
            "ipam": {"type": "spiderpool", "log_file_path": self.log_dir.path().join("spiderpool.log")}
        });
        if let Value::Object(extra) = ipam {
            conf["ipam"].as_object_mut().unwrap().extend(extra);
        }
        conf.to_string().into_bytes()
    }

    /// Runs ADD as the runtime would: the runtime's environment names the daemon's socket and the
    /// directory plugin logs go to.
    fn add(&self, stdin: &[u8]) -> Run {
        let socket = self.daemon.socket_path().display().to_string();
        let log_dir = self.log_dir.path().display().to_string();
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "3f6940ab5ab4"),
            ("CNI_NETNS", "/var/run/netns/cni-1234"),
            ("CNI_IFNAME", "net1"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"),
            ("SPIDERPOOL_IPAM_UNIX_SOCKET_PATH", socket.as_str()),
            ("SPIDERPOOL_CNI_LOG_DIR", log_dir.as_str()),
        ];
        run_plugin(&env, stdin, LIMIT)
    }
}

fn error_of(run: &Run) -> Value {
    assert_eq!(
        run.code, 1,
        "a CNI error, not a crash: stdout {:?} stderr {:?}",
        run.stdout, run.stderr
    );
    run.json()
}

#[test]
fn the_runtimes_own_directories_work() {
    let node = Node::new();
    let run = node.add(&node.netconf(json!({})));
    assert_eq!(run.code, 0, "{run:?}");
    assert!(node.log_dir.path().join("spiderpool.log").exists());
}

#[test]
fn a_log_file_outside_the_log_directory_is_refused_and_never_written() {
    let node = Node::new();
    let elsewhere = tempfile::tempdir().unwrap();
    for path in [
        elsewhere.path().join("evil.log"),
        node.log_dir.path().join("../escape.log"),
        PathBuf::from("relative.log"),
    ] {
        let run = node.add(&node.netconf(json!({"log_file_path": path})));
        let error = error_of(&run);
        assert_eq!(error["code"], 7, "{error}");
        let msg = error["msg"].as_str().unwrap();
        assert!(msg.starts_with("ipam.log_file_path:"), "{msg}");
        assert!(msg.contains(&node.log_dir.path().display().to_string()), "{msg}");
        assert!(!path.exists(), "{} was written", path.display());
    }
    assert!(!node.log_dir.path().parent().unwrap().join("escape.log").exists());
    assert!(
        node.daemon.requests().is_empty(),
        "refused before talking to the daemon"
    );
}

#[test]
fn a_symlink_inside_the_log_directory_is_not_followed() {
    let node = Node::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("target.log");
    std::os::unix::fs::symlink(&target, node.log_dir.path().join("link.log")).unwrap();
    let subdir_target = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(subdir_target.path(), node.log_dir.path().join("sub")).unwrap();
    for path in [
        node.log_dir.path().join("link.log"),
        node.log_dir.path().join("sub/x.log"),
    ] {
        let run = node.add(&node.netconf(json!({"log_file_path": path})));
        // The ADD itself is fine; only the log falls back to stderr.
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stderr.contains("logging to stderr"), "{}", run.stderr);
    }
    assert!(!target.exists(), "the symlinked file was written");
    assert_eq!(std::fs::read_dir(subdir_target.path()).unwrap().count(), 0);
}

#[test]
fn a_socket_outside_the_daemons_directories_is_never_contacted() {
    let node = Node::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let socket = elsewhere.path().join("other-daemon.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    let run = node.add(&node.netconf(json!({"ipam_unix_socket_path": socket})));
    let error = error_of(&run);
    assert_eq!(error["code"], 7, "{error}");
    let msg = error["msg"].as_str().unwrap();
    assert!(msg.starts_with("ipam.ipam_unix_socket_path:"), "{msg}");
    assert!(msg.contains("/var/run/spidernet"), "{msg}");
    assert!(
        listener.accept().is_err(),
        "the plugin connected to {}",
        socket.display()
    );
}

#[test]
fn the_socket_the_runtime_names_may_also_be_named_in_the_netconf() {
    let node = Node::new();
    let socket: &Path = node.daemon.socket_path();
    let run = node.add(&node.netconf(json!({"ipam_unix_socket_path": socket})));
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn a_huge_timeout_is_refused_naming_the_key() {
    let node = Node::new();
    for timeout in [json!(1e12), json!(1e19), json!("1e15")] {
        let run = node.add(&node.netconf(json!({"timeout_seconds": timeout})));
        let error = error_of(&run);
        assert_eq!(error["code"], 7, "{error}");
        assert!(
            error["msg"]
                .as_str()
                .unwrap()
                .starts_with("ipam.timeout_seconds:"),
            "{error}"
        );
    }
}

#[test]
fn deeply_nested_json_is_a_decoding_error() {
    let node = Node::new();
    let deep = format!(
        r#"{{"cniVersion":"1.0.0","ipam":{}{}}}"#,
        "[".repeat(200_000),
        "]".repeat(200_000)
    );
    assert_eq!(error_of(&node.add(deep.as_bytes()))["code"], 6);
    let deep_prev = format!(
        r#"{{"cniVersion":"1.0.0","ipam":{{}},"prevResult":{}1{}}}"#,
        r#"{"a":"#.repeat(100_000),
        "}".repeat(100_000)
    );
    assert_eq!(error_of(&node.add(deep_prev.as_bytes()))["code"], 6);
}
