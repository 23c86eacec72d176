//! The `ifacer` binary against the host kernel, each test in a network namespace of its own (veth
//! pairs stand in for NICs). The host kernel has neither bonding nor 802.1q, so what is proved here
//! is everything short of making them: the netconf checks, the no-ops, the refusals that leave the
//! node untouched, DEL and VERSION. Making VLANs and bonds is proved on Debian's kernel in the VM
//! (tests/tests/vm_ifacer.rs). Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::Value;
use spiderpool_netlink::{Blocking, Handle, LinkChange, Netns, VethEnd};

/// A namespace with the veth pairs `names` (each `<name>` with peer `<name>p`), all up.
fn node(names: &[&str]) -> (Netns, Blocking, Handle) {
    let runtime = Blocking::new().unwrap();
    let netns = Netns::create().expect("creating a network namespace needs root");
    let handle = runtime.connect(Some(&netns)).unwrap();
    for name in names {
        let end = |n: String| VethEnd { name: n, mac: None };
        runtime
            .run(handle.create_veth(&end((*name).to_owned()), &end(format!("{name}p")), 1500, None))
            .unwrap();
        for n in [(*name).to_owned(), format!("{name}p")] {
            let link = runtime.run(handle.link_by_name(&n)).unwrap().unwrap();
            runtime.run(handle.set_link(link.index, LinkChange::Up)).unwrap();
        }
    }
    (netns, runtime, handle)
}

/// The links of the namespace as `name up|down [master]`, sorted.
fn links(runtime: &Blocking, handle: &Handle) -> Vec<String> {
    let details = runtime.run(handle.link_details()).unwrap();
    let mut out: Vec<String> = details
        .iter()
        .map(|d| {
            let master = d
                .master
                .and_then(|m| details.iter().find(|o| o.link.index == m))
                .map(|m| format!(" master {}", m.link.name))
                .unwrap_or_default();
            format!(
                "{} {}{master}",
                d.link.name,
                if d.link.up { "up" } else { "down" }
            )
        })
        .collect();
    out.sort();
    out
}

/// Runs `ifacer` inside `netns`: (exit success, stdout as JSON or Null).
fn ifacer(netns: &Netns, command: &str, netconf: &str) -> (bool, Value) {
    let output = netns
        .run(|| {
            let mut child = Command::new(env!("CARGO_BIN_EXE_ifacer"))
                .env_clear()
                .env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", "c0ffee")
                .env("CNI_NETNS", "/var/run/netns/pod")
                .env("CNI_IFNAME", "net1")
                .env("CNI_PATH", "/opt/cni/bin")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(netconf.as_bytes()).unwrap();
            child.wait_with_output().unwrap()
        })
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let value = if stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    };
    (output.status.success(), value)
}

#[test]
fn nothing_to_make_is_a_no_op_with_an_empty_result() {
    let (netns, runtime, handle) = node(&["ens1", "ens2"]);
    let before = links(&runtime, &handle);
    for netconf in [
        r#"{"cniVersion":"0.3.1","name":"n","type":"ifacer","interfaces":["ens1"],"vlanID":0}"#,
        r#"{"cniVersion":"0.3.1","name":"n","type":"ifacer","interfaces":["ens1","ens2"],"vlanID":7}"#,
    ] {
        let (ok, result) = ifacer(&netns, "ADD", netconf);
        assert!(ok, "{result}");
        assert_eq!(result, serde_json::json!({"cniVersion": "0.3.1"}));
    }
    // A previous result is passed on.
    let (ok, result) = ifacer(
        &netns,
        "ADD",
        r#"{"cniVersion":"1.0.0","interfaces":["ens1"],"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}}"#,
    );
    assert!(ok);
    assert_eq!(result["ips"][0]["address"], "10.0.0.2/24");
    assert_eq!(links(&runtime, &handle), before);
}

#[test]
fn refusals_name_the_key_and_leave_the_node_as_it_was() {
    let (netns, runtime, handle) = node(&["ens1", "ens2", "p0.10"]);
    let before = links(&runtime, &handle);
    for (netconf, code, message) in [
        (
            r#"{"cniVersion":"0.4.0","interfaces":["ens9"],"vlanID":10}"#,
            7,
            "interfaces[0]: there is no interface `ens9` on the node",
        ),
        (
            r#"{"cniVersion":"0.4.0","interfaces":["p0"],"vlanID":10}"#,
            7,
            "interfaces[0]: there is no interface `p0` on the node",
        ),
        (
            r#"{"cniVersion":"0.4.0","interfaces":["ens1", "ens9"],"bond":{"name":"bond0","mode":1}}"#,
            7,
            "interfaces[1]: there is no interface `ens9` on the node",
        ),
        (
            r#"{"cniVersion":"0.4.0","interfaces":["ens1","ens2"],"bond":{"name":"ens2p","mode":1}}"#,
            7,
            "bond.name: `ens2p` exists on the node but is a veth link, not a bond",
        ),
        (
            r#"{"cniVersion":"0.4.0","interfaces":["ens1"],"vlanID":5000}"#,
            7,
            "vlanID: 5000 is not 0-4094",
        ),
        (
            r#"{"cniVersion":"0.4.0","interfaces":["ens1","ens2"],"bond":{"options":"miimon=often"}}"#,
            7,
            "bond.options: `miimon=often`",
        ),
        (
            r#"{"cniVersion":"0.4.0","interfaces":[]}"#,
            7,
            "interfaces: at least one",
        ),
        ("not json", 6, "stdin: not a JSON network configuration"),
    ] {
        let (ok, error) = ifacer(&netns, "ADD", netconf);
        assert!(!ok, "{netconf}");
        assert_eq!(error["code"], code, "{netconf}: {error}");
        let msg = error["msg"].as_str().unwrap();
        assert!(msg.starts_with(message), "{netconf}: {msg}");
    }
    // `p0.10` is a veth here, not VLAN 10 on `p0`: refused, not reused.
    let (netns2, runtime2, handle2) = node(&["p0"]);
    runtime2
        .run(handle2.create_veth(
            &VethEnd {
                name: "p0.10".into(),
                mac: None,
            },
            &VethEnd {
                name: "x".into(),
                mac: None,
            },
            1500,
            None,
        ))
        .unwrap();
    let (ok, error) = ifacer(
        &netns2,
        "ADD",
        r#"{"cniVersion":"0.4.0","interfaces":["p0"],"vlanID":10}"#,
    );
    assert!(!ok);
    assert_eq!(
        error["msg"],
        "`p0.10` exists on the node but is a veth link, not VLAN 10 on `p0`"
    );
    assert_eq!(links(&runtime, &handle), before);
}

#[test]
fn del_check_and_version() {
    let (netns, runtime, handle) = node(&["ens1"]);
    let before = links(&runtime, &handle);
    for command in ["DEL", "CHECK"] {
        let (ok, out) = ifacer(
            &netns,
            command,
            r#"{"cniVersion":"1.0.0","interfaces":["ens1"],"vlanID":3}"#,
        );
        assert!(ok && out.is_null(), "{command}: {out}");
    }
    let (ok, out) = ifacer(&netns, "VERSION", r#"{"cniVersion":"1.0.0"}"#);
    assert!(ok);
    assert!(
        out["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&"0.3.1".into()),
        "{out}"
    );
    assert_eq!(links(&runtime, &handle), before);
}
