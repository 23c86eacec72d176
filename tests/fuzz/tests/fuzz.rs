//! The fuzz tier. `every_kept_input_runs_clean` replays every target's corpus and regressions (each
//! regression is an input that once broke a target). `bounded_fuzzing` runs the fuzzer on every
//! target for `SPIDERPOOL_FUZZ_SECONDS` each (default 20) with `SPIDERPOOL_FUZZ_SEED` (default: a
//! new one, printed); tests/run runs it explicitly (`--ignored`), since it is a time budget rather
//! than a check, and in a child process, so that an abort (a stack overflow) is caught too.

#![allow(clippy::print_stdout, reason = "the fuzzer's report is the test's output")]

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use spiderpool_fuzz::engine::{self, Finding};
use spiderpool_fuzz::targets::TARGETS;
use spiderpool_fuzz::{corpus_dir, regressions_dir};

#[test]
fn every_kept_input_runs_clean() -> Result<()> {
    let mut failures = Vec::new();
    for target in TARGETS {
        let corpus = engine::read_corpus(&corpus_dir(target.name))?;
        if corpus.is_empty() {
            bail!(
                "the {} target has no corpus in {}",
                target.name,
                corpus_dir(target.name).display()
            );
        }
        let regressions = engine::read_corpus(&regressions_dir(target.name))?;
        for (path, input) in corpus.iter().chain(&regressions) {
            match engine::execute(target, input, Duration::from_secs(2)) {
                Ok(_) => {}
                Err(Finding::Panic(message)) => {
                    failures.push(format!("{}: panic: {message}", path.display()))
                }
                Err(Finding::Slow(took)) => failures.push(format!("{}: took {took:?}", path.display())),
            }
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} kept inputs break their target:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

/// Each target gets past its first layer on a well-formed input: a fuzzer that only ever sees its
/// inputs refused at the door tests nothing.
#[test]
fn well_formed_inputs_reach_the_handlers() -> Result<()> {
    let cases = [
        ("cni", "add-dual.json", "exit 0"),
        ("cni", "del.json", "exit 0"),
        ("agent_socket", "healthy.txt", "status 200"),
        ("agent_socket", "add.txt", "status 200"),
        ("annotations", "ippool.json", "candidates: ok"),
        ("admission", "pool-create.json", "allowed=true"),
        (
            "topology",
            "dual-stack.yaml",
            "render: ExitCode(unix_exit_status(0))",
        ),
        ("ip_format", "range.txt", "range: ok"),
    ];
    for (name, file, expected) in cases {
        let target = spiderpool_fuzz::targets::by_name(name).context(name)?;
        let input = std::fs::read(corpus_dir(name).join(file)).with_context(|| format!("{name}/{file}"))?;
        let behaviour = engine::execute(target, &input, Duration::from_secs(10))
            .map_err(|finding| anyhow::anyhow!("{name}/{file}: {finding:?}"))?;
        if !behaviour.contains(expected) {
            bail!("{name}/{file}: expected {expected:?} in {behaviour:?}");
        }
    }
    Ok(())
}

#[test]
#[ignore = "the fuzz tier's time budget: tests/run runs it with --ignored"]
fn bounded_fuzzing() -> Result<()> {
    let seconds = std::env::var("SPIDERPOOL_FUZZ_SECONDS").unwrap_or_else(|_| "20".to_owned());
    let seed = std::env::var("SPIDERPOOL_FUZZ_SEED").unwrap_or_else(|_| "random".to_owned());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spiderpool-fuzz"))
        .args(["all", "--seconds", &seconds, "--seed", &seed])
        .output()
        .context("running spiderpool-fuzz")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    if !output.status.success() {
        bail!(
            "the fuzzer found inputs that break a target ({}); each becomes a regression: copy it into \
             tests/fuzz/regressions/<target>/ with the fix. Seed and findings above. An abort leaves the \
             input in target/fuzz-artifacts/<target>/in-progress.",
            output.status
        );
    }
    Ok(())
}
