//! The CNI plugin as the runtime calls it: the environment (`CNI_COMMAND`, `CNI_ARGS`, ...), the
//! network configuration on stdin (what a NetworkAttachmentDefinition author writes), and the node
//! daemon's answer, all from the input. The daemon is a stand-in that answers what the input says.
//!
//! Input: a JSON object `{"env": {NAME: value}, "stdin": <netconf object or raw string>,
//! "answer": <the daemon's ADD answer>}`; anything else is the netconf itself, with `CNI_ARGS` taken
//! from its first line. The plugin's log directory is always a scratch directory (the plugin confines
//! `log_file_path` to it), whatever the input's environment says; the neighbourhood checks
//! (gateway, conflicts) find nothing.

use std::net::IpAddr;

use serde_json::Value;
use spiderpool_agent_api::{
    IpamAddArgs, IpamAddResponse, IpamBatchDelArgs, IpamDelArgs, IpamGcArgs, IpamGcResponse,
    WorkloadEndpointStatus,
};
use spiderpool_cni::client::Daemon;
use spiderpool_cni::config::parse_netconf;
use spiderpool_cni::detect::{Check, DetectError, Finding, Neighbourhood};
use spiderpool_cni::plugin::run_with;
use spiderpool_cni_common::args::CniArgs;
use spiderpool_cni_common::http::{ClientError, parse_response};
use spiderpool_cni_common::invocation::Invocation;

use super::{Shape, Target, describe};

pub const TARGET: Target = Target {
    name: "cni",
    run,
    shape: Shape::Json,
    dictionary: &[
        b"K8S_POD_NAME=",
        b"K8S_POD_NAMESPACE=",
        b"K8S_POD_UID=",
        b"IgnoreUnknown=",
        b";",
        b"\"cniVersion\"",
        b"\"1.1.0\"",
        b"\"0.3.1\"",
        b"\"timeout_seconds\"",
        b"\"prevResult\"",
        b"\"cni.dev/valid-attachments\"",
        b"\"default_ipv4_ippool\"",
        b"\"ipam_unix_socket_path\"",
        b"\"log_file_max_size\"",
    ],
};

/// A daemon that answers every call with the input's `answer`.
struct Scripted {
    answer: Value,
}

fn malformed(reason: String) -> ClientError {
    ClientError::Malformed { reason }
}

impl Daemon for Scripted {
    fn add(&self, _: &IpamAddArgs) -> Result<IpamAddResponse, ClientError> {
        serde_json::from_value(self.answer.clone()).map_err(|e| malformed(e.to_string()))
    }
    fn del(&self, _: &IpamDelArgs) -> Result<(), ClientError> {
        Ok(())
    }
    fn workload_endpoint(&self, _: &str, _: &str) -> Result<Option<WorkloadEndpointStatus>, ClientError> {
        Ok(serde_json::from_value(self.answer.clone()).ok())
    }
    fn gc(&self, _: &IpamGcArgs) -> Result<IpamGcResponse, ClientError> {
        serde_json::from_value(self.answer.clone()).map_err(|e| malformed(e.to_string()))
    }
    fn healthy(&self) -> Result<(), ClientError> {
        Ok(())
    }
    fn release_all(&self, _: &IpamBatchDelArgs) -> Result<(), ClientError> {
        Ok(())
    }
}

/// A segment where nobody else answers and the gateway is fine.
struct Quiet;

impl Neighbourhood for Quiet {
    fn check(&self, _: &str, _: &str, _: &[Check]) -> Result<Option<Finding>, DetectError> {
        Ok(None)
    }
    fn announce(&self, _: &str, _: &str, _: &[IpAddr]) -> Result<(), DetectError> {
        Ok(())
    }
}

/// The netconf with `ipam.log_file_path` in the scratch directory when it names none (the default,
/// /var/log/spidernet, is outside it and would refuse every input).
fn with_scratch_log(stdin: Vec<u8>) -> Vec<u8> {
    let Ok(Value::Object(mut top)) = serde_json::from_slice::<Value>(&stdin) else {
        return stdin;
    };
    if let Some(Value::Object(ipam)) = top.get_mut("ipam")
        && !ipam.contains_key("log_file_path")
    {
        let path = crate::scratch_dir().join("plugin.log");
        ipam.insert(
            "log_file_path".to_owned(),
            Value::String(path.display().to_string()),
        );
    }
    serde_json::to_vec(&Value::Object(top)).unwrap_or(stdin)
}

fn run(data: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(data).ok();
    let (env, stdin, answer) = match parsed {
        Some(Value::Object(mut input)) if input.contains_key("env") => {
            let env = input.remove("env").unwrap_or(Value::Null);
            let stdin = match input.remove("stdin") {
                Some(Value::String(raw)) => raw.into_bytes(),
                Some(value) => serde_json::to_vec(&value).unwrap_or_default(),
                None => Vec::new(),
            };
            (env, stdin, input.remove("answer").unwrap_or(Value::Null))
        }
        _ => {
            let text = String::from_utf8_lossy(data);
            let first = text.lines().next().unwrap_or("").to_owned();
            (
                serde_json::json!({"CNI_COMMAND": "ADD", "CNI_ARGS": first}),
                data.to_vec(),
                Value::Null,
            )
        }
    };
    let mut out = Vec::new();
    let lookup = |name: &str| env.get(name).and_then(Value::as_str).map(str::to_owned);
    if let Some(args) = lookup("CNI_ARGS") {
        out.push(describe("args", &CniArgs::parse(&args)));
    }
    out.push(describe("netconf", &parse_netconf(&stdin)));
    // What the plugin does with the daemon's raw answer bytes.
    out.push(describe("response", &parse_response(&stdin, true)));
    let mut invocation = Invocation::from_env(lookup);
    invocation.log_dir = Some(crate::scratch_dir().display().to_string());
    let stdin = with_scratch_log(stdin);
    let outcome = run_with(&invocation, &stdin, &Quiet, |_| Scripted { answer });
    // A failure must still be one CNI error object on stdout.
    if outcome.exit_code != 0 {
        let error: Result<Value, _> = serde_json::from_str(&outcome.stdout);
        assert!(
            error
                .as_ref()
                .is_ok_and(|e| e.get("code").is_some_and(Value::is_u64)),
            "a failing plugin printed something that is not a CNI error: {:?}",
            outcome.stdout
        );
    }
    let said: String = outcome.stdout.chars().take(100).collect();
    out.push(format!("exit {} {said}", outcome.exit_code));
    out.join("; ")
}
