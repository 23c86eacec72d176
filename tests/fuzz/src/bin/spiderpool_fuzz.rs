//! `spiderpool-fuzz <target|all> [--seconds N] [--seed N|random] [--save-new] [--artifacts DIR]`:
//! fuzzes targets one after another for N seconds each (default 60), starting from their kept
//! corpus and regressions. Exit status 1 when an input broke a target (it is saved under
//! `--artifacts`, default `target/fuzz-artifacts/<target>/`, and printed). `--save-new` adds inputs
//! with new behaviour to the kept corpus. The plugin's and daemon's own diagnostics on stderr are
//! silenced (thousands a second); findings are printed on stdout.

#![allow(clippy::print_stdout, reason = "the fuzzer's report is its output")]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use spiderpool_fuzz::engine::{self, Finding, Options};
use spiderpool_fuzz::targets::{TARGETS, Target, by_name};
use spiderpool_fuzz::{corpus_dir, fuzz_root, regressions_dir, remove_scratch_dir};

struct Args {
    targets: Vec<&'static Target>,
    seconds: u64,
    seed: u64,
    save_new: bool,
    artifacts: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = std::env::args().skip(1);
    let which = args.next().context(
        "usage: spiderpool-fuzz <target|all> [--seconds N] [--seed N|random] [--save-new] [--artifacts DIR]",
    )?;
    let targets: Vec<&'static Target> = if which == "all" {
        TARGETS.iter().collect()
    } else {
        vec![by_name(&which).with_context(|| {
            let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
            format!("unknown target {which}; targets: {}", names.join(", "))
        })?]
    };
    let mut parsed = Args {
        targets,
        seconds: 60,
        seed: 0,
        save_new: false,
        artifacts: fuzz_root().join("../../target/fuzz-artifacts"),
    };
    let mut seed = "random".to_owned();
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--seconds" => {
                parsed.seconds = args
                    .next()
                    .context("--seconds N")?
                    .parse()
                    .context("--seconds N")?
            }
            "--seed" => seed = args.next().context("--seed N")?,
            "--save-new" => parsed.save_new = true,
            "--artifacts" => parsed.artifacts = PathBuf::from(args.next().context("--artifacts DIR")?),
            other => bail!("unknown flag {other}"),
        }
    }
    parsed.seed = match seed.as_str() {
        "random" => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default();
            nanos ^ u64::from(std::process::id()).rotate_left(32)
        }
        text => match text.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => text.parse(),
        }
        .with_context(|| format!("--seed {text}: a number, 0x..., or random"))?,
    };
    Ok(parsed)
}

fn run(args: &Args) -> Result<bool> {
    let mut broken = false;
    for (index, target) in args.targets.iter().enumerate() {
        let mut corpus: Vec<Vec<u8>> = engine::read_corpus(&corpus_dir(target.name))?
            .into_iter()
            .map(|(_, bytes)| bytes)
            .collect();
        corpus.extend(
            engine::read_corpus(&regressions_dir(target.name))?
                .into_iter()
                .map(|(_, bytes)| bytes),
        );
        let seed = args.seed.wrapping_add(index as u64);
        let options = Options {
            seed,
            duration: Duration::from_secs(args.seconds),
            slow: Duration::from_secs(2),
            artifacts: Some(args.artifacts.join(target.name)),
            save_new: args.save_new.then(|| corpus_dir(target.name)),
            stop_on_crash: false,
        };
        let report = engine::fuzz(target, corpus, &options)?;
        println!(
            "fuzz {:<13} seed {seed:#018x}: {} executions in {} s ({} corpus inputs, {} new behaviours), {} findings",
            target.name,
            report.executions,
            args.seconds,
            report.corpus_start,
            report.new_behaviours,
            report.crashes.len()
        );
        for crash in report.crashes.iter().take(10) {
            broken = true;
            let what = match &crash.finding {
                Finding::Panic(message) => format!("panic: {message}"),
                Finding::Slow(took) => format!("took {took:?}"),
            };
            let shown: String = String::from_utf8_lossy(&crash.input).chars().take(300).collect();
            println!(
                "  FINDING {}: {what}\n    input ({} bytes, saved as {:?}): {shown:?}",
                target.name,
                crash.input.len(),
                crash.saved
            );
        }
        broken |= !report.crashes.is_empty();
    }
    Ok(broken)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("spiderpool-fuzz: {error:#}");
            return ExitCode::from(2);
        }
    };
    // The plugin logs each refused input to stderr; thousands of lines a second say nothing here.
    if let Ok(null) = std::fs::File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stderr(null);
    }
    let outcome = run(&args);
    remove_scratch_dir();
    match outcome {
        Ok(false) => ExitCode::SUCCESS,
        Ok(true) => ExitCode::FAILURE,
        Err(error) => {
            println!("spiderpool-fuzz: {error:#}");
            ExitCode::from(2)
        }
    }
}
