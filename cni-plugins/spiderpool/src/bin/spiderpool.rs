//! `spiderpool`: the CNI IPAM plugin binary. Reads the `CNI_*` environment and the netconf on
//! stdin, prints exactly the protocol's JSON (or nothing) on stdout, exits 0 on success and 1 with
//! a CNI error object otherwise. Logs never go to stdout.

use std::io::{Read, Write};
use std::process::ExitCode;

use spiderpool_cni::plugin::{self, Invocation, Outcome};
use spiderpool_cni_common::invocation;

fn main() -> ExitCode {
    let invocation = Invocation::from_env(|name| std::env::var(name).ok());
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => invocation::guarded(|| plugin::run(&invocation, &stdin)),
        Err(error) => Outcome {
            stdout: serde_json::json!({
                "cniVersion": spiderpool_cni_common::cni::LATEST_VERSION,
                "code": spiderpool_agent_api::codes::IO_FAILURE,
                "msg": format!("stdin: {error}"),
                "details": "",
            })
            .to_string(),
            exit_code: 1,
        },
    };
    let mut stdout = std::io::stdout().lock();
    // If stdout itself is gone there is no one left to tell; the exit status still says it.
    let _ = stdout
        .write_all(outcome.stdout.as_bytes())
        .and_then(|()| stdout.flush());
    if outcome.exit_code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
