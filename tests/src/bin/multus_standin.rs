//! The Multus stand-in CNI plugin of the real-node tier (test-only, never shipped): see
//! `spiderpool_tests::realnode::multus_standin`.

fn main() -> std::process::ExitCode {
    spiderpool_tests::realnode::multus_standin::main()
}
