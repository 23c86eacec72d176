//! `ifacer`: the CNI meta-plugin binary. Reads the `CNI_*` environment and the netconf on stdin,
//! prints exactly the protocol's JSON (or nothing) on stdout, exits 0 on success and 1 with a CNI
//! error object otherwise.

use std::io::{Read, Write};
use std::process::ExitCode;

use spiderpool_cni_common::cni::CniError;
use spiderpool_cni_common::invocation::{self, Invocation, Outcome};

fn main() -> ExitCode {
    let invocation = Invocation::from_env(|name| std::env::var(name).ok());
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => invocation::guarded(|| spiderpool_ifacer::plugin::run(&invocation, &stdin)),
        Err(error) => Outcome::failure(&CniError::new(
            spiderpool_agent_api::codes::IO_FAILURE,
            format!("stdin: {error}"),
            "",
        )),
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
