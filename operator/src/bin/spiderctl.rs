//! `spiderctl`: check and render SpiderNetwork topologies (see `spiderpool_operator::cli`).

fn main() -> std::process::ExitCode {
    spiderpool_operator::cli::run()
}
