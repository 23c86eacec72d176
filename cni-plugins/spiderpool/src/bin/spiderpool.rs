//! `spiderpool`: the CNI IPAM plugin (see `spiderpool_cni_common::invocation::main` for the protocol
//! of the binary: stdin, stdout, exit status).

fn main() -> std::process::ExitCode {
    spiderpool_cni_common::invocation::main(spiderpool_cni::plugin::run)
}
