//! `kubectl-spider`: `spiderctl` as a kubectl plugin (`kubectl spider render ...`).

fn main() -> std::process::ExitCode {
    spiderpool_operator::cli::run()
}
