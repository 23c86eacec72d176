//! `ifacer`: the CNI meta-plugin that creates bond and VLAN masters (see
//! `spiderpool_cni_common::invocation::main` for the protocol of the binary: stdin, stdout, exit status).

fn main() -> std::process::ExitCode {
    spiderpool_cni_common::invocation::main(spiderpool_ifacer::plugin::run)
}
