//! One invocation of `ifacer`: ADD makes the VLAN and/or bond on the host (the namespace the
//! runtime runs the plugin in) and prints the previous result, or an empty one; DEL, CHECK, GC and
//! STATUS do nothing (upstream's DEL is a no-op too: the links serve every pod on the node and
//! outlive each of them); VERSION answers as every plugin of ours does.

use serde_json::{Value, json};
use spiderpool_agent_api::codes;
use spiderpool_cni_common::cni::{CniError, Command, LATEST_VERSION};
use spiderpool_cni_common::invocation::{self, Attachment, Invocation, Outcome};
use spiderpool_cni_common::netconf;
use spiderpool_netlink::{Blocking, Handle};

use crate::apply::{self, ApplyError};
use crate::config::{self, IfacerConf, Wanted};
use crate::plan::{self, PlanError};

/// Runs one invocation.
pub fn run(invocation: &Invocation, stdin: &[u8]) -> Outcome {
    let version = netconf::peek_cni_version(stdin).unwrap_or_else(|| LATEST_VERSION.to_owned());
    match dispatch(invocation, stdin) {
        Ok(outcome) => outcome,
        Err(error) => Outcome::failure(&error.in_version(&version)),
    }
}

fn dispatch(invocation: &Invocation, stdin: &[u8]) -> Result<Outcome, CniError> {
    let command = invocation::command(invocation)?;
    match command {
        Command::Version => invocation::version(stdin),
        Command::Add => {
            Attachment::from_invocation(command, invocation)?;
            let conf = config::parse(stdin).map_err(|e| e.to_cni())?;
            add(&conf)?;
            Ok(Outcome::success(result(&conf).to_string()))
        }
        Command::Del | Command::Check | Command::Gc | Command::Status => Ok(Outcome::success(String::new())),
    }
}

/// The previous result passed on, or an empty one (the addresses come from the plugins after).
fn result(conf: &IfacerConf) -> Value {
    let mut result = conf.prev_result.clone().unwrap_or_else(|| json!({}));
    if let Value::Object(map) = &mut result {
        map.insert("cniVersion".into(), conf.cni_version.as_str().into());
    }
    result
}

fn add(conf: &IfacerConf) -> Result<(), CniError> {
    if conf.wanted() == Wanted::Nothing {
        return Ok(());
    }
    let runtime = Blocking::new().map_err(|e| {
        CniError::new(
            codes::IO_FAILURE,
            format!("starting the netlink runtime: {e}"),
            "",
        )
    })?;
    let handle = runtime
        .connect(None)
        .map_err(|e| CniError::new(codes::IO_FAILURE, e.to_string(), ""))?;
    runtime
        .run(async {
            match converge(&handle, conf).await {
                // Another ADD on this node made a link between our look and our change: look again.
                Err(Failure::Apply(e)) if e.source.is_exists() => converge(&handle, conf).await,
                other => other,
            }
        })
        .map_err(Failure::into_cni)
}

enum Failure {
    Read(spiderpool_netlink::NetlinkError),
    Plan(PlanError),
    Apply(ApplyError),
}

impl Failure {
    fn into_cni(self) -> CniError {
        match self {
            Failure::Read(e) => {
                CniError::new(codes::IO_FAILURE, format!("reading the node's links: {e}"), "")
            }
            Failure::Plan(e) => CniError::new(codes::INVALID_NETWORK_CONFIG, e.to_string(), ""),
            Failure::Apply(e) => CniError::new(
                codes::IO_FAILURE,
                e.to_string(),
                "the links this ADD created were removed again",
            ),
        }
    }
}

async fn converge(handle: &Handle, conf: &IfacerConf) -> Result<(), Failure> {
    let links = apply::observe(handle).await.map_err(Failure::Read)?;
    let steps = plan::plan(conf, &links).map_err(Failure::Plan)?;
    apply::apply(handle, &steps).await.map_err(Failure::Apply)
}
