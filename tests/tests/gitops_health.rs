//! GitOps health of SpiderNetwork: the Argo CD health check shipped in the chart
//! (`charts/spiderpool/argocd/spidernetwork-health.lua`) is run with Lua 5.1 (what Argo CD's gopher-lua
//! implements) against status objects; kstatus (Flux) is re-implemented here and checked on the same
//! objects; the SpiderNetwork status type and CRD carry what both read.
//!
//! Needs `lua5.1` on PATH (`apt-get install lua5.1`; `tests/tools/install-test-deps.sh` installs it).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use kube::CustomResourceExt;
use serde_json::{Value, json};
use spiderpool_schema::{SpiderNetwork, SpiderNetworkStatus};
use spiderpool_tests::tools;

fn script_path() -> PathBuf {
    tools::repo_root().join("charts/spiderpool/argocd/spidernetwork-health.lua")
}

fn script() -> String {
    std::fs::read_to_string(script_path()).expect("reading the health check script")
}

/// A JSON value as a Lua table constructor (objects become keyed tables, arrays sequences; null is
/// left out, as Argo CD's conversion leaves it nil).
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{k:?}] = {}", lua_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs the health check on `obj` as Argo CD does (global `obj`, the chunk returns `{status, message}`).
fn argo_health(obj: &Value) -> (String, String) {
    let program = format!(
        "obj = {}\nlocal hs = (function()\n{}\nend)()\nio.write(tostring(hs.status), \"\\n\", tostring(hs.message))\n",
        lua_literal(obj),
        script()
    );
    let mut child = Command::new("lua5.1")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running lua5.1; install it with `apt-get install lua5.1` (tests/tools/install-test-deps.sh does)");
    child.stdin.take().unwrap().write_all(program.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the health check failed to run: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let (status, message) = text.split_once('\n').expect("status and message");
    (status.to_string(), message.to_string())
}

/// kstatus' result for a resource kstatus knows nothing special about (cli-utils `pkg/kstatus`, generic
/// rules): Terminating while deleting; InProgress while `status.observedGeneration` (when present)
/// differs from `metadata.generation` or `Reconciling` is True; Failed when `Stalled` is True; else
/// Current.
fn kstatus(obj: &Value) -> &'static str {
    if !obj["metadata"]["deletionTimestamp"].is_null() {
        return "Terminating";
    }
    if let Some(observed) = obj["status"]["observedGeneration"].as_i64()
        && Some(observed) != obj["metadata"]["generation"].as_i64()
    {
        return "InProgress";
    }
    for condition in obj["status"]["conditions"].as_array().into_iter().flatten() {
        match (condition["type"].as_str(), condition["status"].as_str()) {
            (Some("Reconciling"), Some("True")) => return "InProgress",
            (Some("Stalled"), Some("True")) => return "Failed",
            _ => {}
        }
    }
    "Current"
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "observedGeneration": generation, "lastTransitionTime": "2026-11-24T10:00:00Z"})
}

/// A SpiderNetwork at `generation` with `status`, the status passed through the Rust status type first
/// (so the fixtures use exactly the field names the operator writes).
fn network(generation: i64, status: Option<Value>) -> Value {
    let status = status.map(|s| {
        let typed: SpiderNetworkStatus = serde_json::from_value(s).expect("a SpiderNetworkStatus");
        serde_json::to_value(typed).unwrap()
    });
    let mut obj = json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderNetwork",
        "metadata": {"name": "fabric", "generation": generation},
        "spec": {"subnets": [], "racks": []},
    });
    if let Some(status) = status {
        obj["status"] = status;
    }
    obj
}

struct Case {
    name: &'static str,
    obj: Value,
    argo: &'static str,
    argo_message: &'static str,
    kstatus: &'static str,
}

fn cases() -> Vec<Case> {
    let ready = |g| {
        condition(
            "Ready",
            "True",
            "Applied",
            "all 12 objects applied; 40/40 nodes ready",
            g,
        )
    };
    let idle = |g| condition("Reconciling", "False", "Idle", "", g);
    let progressing = |g| condition("Stalled", "False", "Progressing", "", g);
    vec![
        Case {
            name: "no status yet",
            obj: network(1, None),
            argo: "Progressing",
            argo_message: "Waiting for the operator",
            // kstatus cannot tell "not observed yet" without observedGeneration (documented in the
            // chart's argocd/README.md); the operator writes status within one reconcile.
            kstatus: "Current",
        },
        Case {
            name: "healthy",
            obj: network(
                3,
                Some(json!({"observedGeneration": 3, "conditions": [ready(3), idle(3), progressing(3)]})),
            ),
            argo: "Healthy",
            argo_message: "40/40 nodes ready",
            kstatus: "Current",
        },
        Case {
            name: "spec changed, not observed yet (old status is Ready)",
            obj: network(
                4,
                Some(json!({"observedGeneration": 3, "conditions": [ready(3), idle(3), progressing(3)]})),
            ),
            argo: "Progressing",
            argo_message: "generation 4",
            kstatus: "InProgress",
        },
        Case {
            name: "spec changed, old status was invalid",
            obj: network(
                5,
                Some(json!({"observedGeneration": 4, "conditions": [
                    condition("Ready", "False", "Invalid", "spec.subnets[0].vlan: 4095 is not a VLAN id", 4),
                    idle(4),
                    condition("Stalled", "True", "Invalid", "spec.subnets[0].vlan: 4095 is not a VLAN id", 4),
                ]})),
            ),
            argo: "Progressing",
            argo_message: "generation 5",
            kstatus: "InProgress",
        },
        Case {
            name: "waiting for nodes",
            obj: network(
                2,
                Some(json!({"observedGeneration": 2, "conditions": [
                    condition("Ready", "False", "NodesPending", "31/40 nodes applied their interfaces", 2),
                    condition("Reconciling", "True", "NodesPending", "31/40 nodes applied their interfaces", 2),
                    progressing(2),
                ]})),
            ),
            argo: "Progressing",
            argo_message: "31/40 nodes",
            kstatus: "InProgress",
        },
        Case {
            name: "invalid spec",
            obj: network(
                2,
                Some(json!({"observedGeneration": 2, "conditions": [
                    condition("Ready", "False", "Invalid", "spec.networks[1].vlan: VLAN 100 is already used", 2),
                    idle(2),
                    condition("Stalled", "True", "Invalid", "spec.networks[1].vlan: VLAN 100 is already used", 2),
                ], "problems": [{"path": "spec.networks[1].vlan", "message": "VLAN 100 is already used"}]})),
            ),
            argo: "Degraded",
            argo_message: "spec.networks[1].vlan: VLAN 100 is already used",
            kstatus: "Failed",
        },
        Case {
            name: "nodes failed",
            obj: network(
                7,
                Some(json!({"observedGeneration": 7, "conditions": [
                    condition("Ready", "False", "NodesFailed", "2 nodes failed: node-3: bond0: no such device ens9", 7),
                    idle(7),
                    condition("Stalled", "True", "NodesFailed", "2 nodes failed", 7),
                ]})),
            ),
            argo: "Degraded",
            argo_message: "node-3: bond0",
            kstatus: "Failed",
        },
        Case {
            name: "Ready=False with reason Stalled and no Stalled condition",
            obj: network(
                1,
                Some(json!({"observedGeneration": 1, "conditions": [
                    condition("Ready", "False", "Stalled", "cannot progress", 1),
                ]})),
            ),
            argo: "Degraded",
            argo_message: "cannot progress",
            kstatus: "Current",
        },
        Case {
            name: "Ready unknown",
            obj: network(
                1,
                Some(json!({"observedGeneration": 1, "conditions": [
                    condition("Ready", "Unknown", "Starting", "", 1),
                    condition("Reconciling", "True", "Starting", "rendering", 1),
                ]})),
            ),
            argo: "Progressing",
            argo_message: "rendering",
            kstatus: "InProgress",
        },
    ]
}

#[test]
fn argo_cd_health_check_maps_every_state() {
    let mut failures = Vec::new();
    for case in cases() {
        let (status, message) = argo_health(&case.obj);
        if status != case.argo || !message.contains(case.argo_message) {
            failures.push(format!(
                "{}: got {status} `{message}`, expected {} containing `{}`",
                case.name, case.argo, case.argo_message
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn kstatus_reads_the_same_states() {
    let mut failures = Vec::new();
    for case in cases() {
        let got = kstatus(&case.obj);
        if got != case.kstatus {
            failures.push(format!("{}: kstatus {got}, expected {}", case.name, case.kstatus));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let mut deleting = network(1, None);
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-24T10:00:00Z");
    assert_eq!(kstatus(&deleting), "Terminating");
}

#[test]
fn a_broken_script_is_noticed() {
    // The harness itself must be able to fail: a script that says Healthy for everything does not pass.
    let obj = cases().into_iter().find(|c| c.argo == "Degraded").unwrap().obj;
    let (status, _) = argo_health(&obj);
    assert_eq!(status, "Degraded");
    let literal = lua_literal(&json!({"a": [1, "x\"y"], "b": null}));
    assert_eq!(literal, r#"{["a"] = {1, "x\"y"}}"#);
}

#[test]
fn readme_carries_the_same_script() {
    let readme =
        std::fs::read_to_string(tools::repo_root().join("charts/spiderpool/argocd/README.md")).unwrap();
    let key = "resource.customizations.health.spiderpool.spidernet.io_SpiderNetwork: |";
    let after = readme.split(key).nth(1).expect("the argocd-cm key in README.md");
    let block: Vec<&str> = after
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect();
    let dedented: Vec<&str> = block
        .iter()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect();
    assert_eq!(
        dedented.join("\n").trim_end(),
        script().trim_end(),
        "README.md's argocd-cm snippet differs from spidernetwork-health.lua"
    );
}

#[test]
fn status_type_and_crd_carry_what_kstatus_and_argo_read() {
    let crd = serde_json::to_value(SpiderNetwork::crd()).unwrap();
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["subresources"]["status"], json!({}), "status subresource");
    let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
    assert_eq!(status["observedGeneration"]["type"], "integer");
    let conditions = &status["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    let item = &conditions["items"]["properties"];
    for field in [
        "type",
        "status",
        "reason",
        "message",
        "observedGeneration",
        "lastTransitionTime",
    ] {
        assert!(
            !item[field].is_null(),
            "conditions[].{field} missing from the CRD schema"
        );
    }
    // The Rust type writes the names both tools read.
    let typed: SpiderNetworkStatus = serde_json::from_value(json!({
        "observedGeneration": 2,
        "conditions": [condition("Ready", "True", "Applied", "ok", 2)],
    }))
    .unwrap();
    let written = serde_json::to_value(typed).unwrap();
    assert_eq!(written["observedGeneration"], 2);
    assert_eq!(written["conditions"][0]["type"], "Ready");
    assert_eq!(written["conditions"][0]["status"], "True");
}
