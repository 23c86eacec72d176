//! The fuzzing loop: replay the corpus, then mutate it (seeded) until the time is up, catching
//! panics and flagging inputs that take too long.
//!
//! Stable Rust has no coverage instrumentation for libFuzzer, so the feedback is behavioural: every
//! target returns a short description of what it did with an input (which error, which branch),
//! and an input whose description is new joins the in-memory corpus. Mutations are byte-level
//! (flips, interesting bytes, deletions, duplications, splices, dictionary tokens, numbers) and
//! structural for JSON and YAML inputs (replace a value by a hostile one, nest deeply, drop or
//! duplicate keys), which is what reaches the parsers behind the first `serde` layer.

use std::collections::BTreeSet;
use std::io::{Seek as _, SeekFrom, Write as _};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use spiderpool_tests::chaos::rng::Rng;

use crate::mutate::mutate;
use crate::targets::Target;

/// An input longer than this is cut before it runs (the targets' own limits are far below).
pub const MAX_INPUT: usize = 64 * 1024;

/// The most inputs the in-memory corpus holds.
const MAX_POOL: usize = 4096;

/// What a run found about one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The target panicked: the panic message.
    Panic(String),
    /// The target took longer than the limit on one input.
    Slow(Duration),
}

/// One input that broke the target, and where it was saved.
#[derive(Debug, Clone)]
pub struct Crash {
    pub finding: Finding,
    pub input: Vec<u8>,
    pub saved: Option<PathBuf>,
}

/// What a bounded run did.
#[derive(Debug, Default)]
pub struct Report {
    pub executions: u64,
    pub corpus_start: usize,
    /// Inputs that showed a behaviour not seen before (the in-memory corpus grew by these).
    pub new_behaviours: usize,
    pub crashes: Vec<Crash>,
}

/// How to run one target.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    pub duration: Duration,
    /// One input taking longer than this is a finding (untrusted input must cost linear time).
    pub slow: Duration,
    /// Where crashing inputs (and the input in progress, for aborts) are written.
    pub artifacts: Option<PathBuf>,
    /// Where inputs with new behaviour are written (growing the kept corpus); `None` keeps them in
    /// memory only.
    pub save_new: Option<PathBuf>,
    /// Stop at the first crash.
    pub stop_on_crash: bool,
}

static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);

/// Routes panic messages into [`PANIC_MESSAGE`] instead of stderr (the fuzzer reports them).
fn install_quiet_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        *PANIC_MESSAGE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(format!("{payload}{location}"));
    }));
}

/// Runs `target` on one input: its behaviour, or the finding.
pub fn execute(target: &Target, input: &[u8], slow: Duration) -> Result<String, Finding> {
    let started = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    let took = started.elapsed();
    match outcome {
        Err(_) => {
            let message = PANIC_MESSAGE
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
                .unwrap_or_else(|| "panic".to_owned());
            Err(Finding::Panic(message))
        }
        Ok(_) if took > slow => Err(Finding::Slow(took)),
        Ok(behaviour) => Ok(behaviour),
    }
}

/// Reads every file of `dir` (a missing directory is an empty corpus).
pub fn read_corpus(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut entries = Vec::new();
    let Ok(listing) = std::fs::read_dir(dir) else {
        return Ok(entries);
    };
    for entry in listing {
        let path = entry?.path();
        if path.is_file() {
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            entries.push((path, bytes));
        }
    }
    entries.sort();
    Ok(entries)
}

/// A file name for an input: a hash of its bytes (FNV-1a, hex).
pub fn input_name(input: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in input {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The behaviour's signature: digits and quoted parts vary with the input and say nothing new.
fn signature(behaviour: &str) -> String {
    let mut out = String::with_capacity(96);
    let mut quoted = false;
    for c in behaviour.chars() {
        if c == '"' || c == '`' {
            quoted = !quoted;
            continue;
        }
        if quoted || c.is_ascii_digit() {
            continue;
        }
        out.push(c);
        if out.len() >= 96 {
            break;
        }
    }
    out
}

/// Fuzzes `target` starting from `corpus` for `options.duration`.
pub fn fuzz(target: &Target, corpus: Vec<Vec<u8>>, options: &Options) -> Result<Report> {
    install_quiet_hook();
    let mut in_progress = match &options.artifacts {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Some(std::fs::File::create(dir.join("in-progress"))?)
        }
        None => None,
    };
    let mut report = Report {
        corpus_start: corpus.len(),
        ..Report::default()
    };
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut rng = Rng::new(options.seed);
    let deadline = Instant::now() + options.duration;

    let mut run_one =
        |input: Vec<u8>, pool: &mut Vec<Vec<u8>>, report: &mut Report, from_corpus: bool| -> Result<bool> {
            if let Some(file) = &mut in_progress {
                file.set_len(0)?;
                file.seek(SeekFrom::Start(0))?;
                file.write_all(&input)?;
            }
            report.executions += 1;
            match execute(target, &input, options.slow) {
                Ok(behaviour) => {
                    if seen.insert(signature(&behaviour)) || from_corpus {
                        if !from_corpus {
                            report.new_behaviours += 1;
                            if let Some(dir) = &options.save_new {
                                std::fs::create_dir_all(dir)?;
                                std::fs::write(dir.join(input_name(&input)), &input)?;
                            }
                        }
                        // Past this, a new input replaces a random one: the pool stays a sample.
                        if pool.len() < MAX_POOL {
                            pool.push(input);
                        } else {
                            let at = (report.executions as usize) % pool.len();
                            pool[at] = input;
                        }
                    }
                    Ok(false)
                }
                Err(finding) => {
                    let saved = match &options.artifacts {
                        Some(dir) => {
                            let path = dir.join(format!("crash-{}", input_name(&input)));
                            std::fs::write(&path, &input)?;
                            Some(path)
                        }
                        None => None,
                    };
                    report.crashes.push(Crash {
                        finding,
                        input,
                        saved,
                    });
                    Ok(options.stop_on_crash)
                }
            }
        };

    for input in corpus {
        let mut input = input;
        input.truncate(MAX_INPUT);
        if run_one(input, &mut pool, &mut report, true)? {
            return Ok(report);
        }
    }
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    while Instant::now() < deadline {
        let base = pool[rng.below(pool.len())].clone();
        let other = pool[rng.below(pool.len())].clone();
        let mut input = mutate(&base, &other, target, &mut rng);
        input.truncate(MAX_INPUT);
        if run_one(input, &mut pool, &mut report, false)? {
            break;
        }
    }
    if let Some(dir) = &options.artifacts {
        let _ = std::fs::remove_file(dir.join("in-progress"));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use crate::targets::Shape;

    fn panics_on_x(data: &[u8]) -> String {
        assert!(!data.contains(&b'X'), "found the X");
        format!("len class {}", data.len().min(3))
    }

    #[test]
    fn a_panic_is_found_and_reported_with_its_input() {
        let target = Target {
            name: "test",
            run: panics_on_x,
            shape: Shape::Text,
            dictionary: &[b"X"],
        };
        let options = Options {
            seed: 7,
            duration: Duration::from_secs(10),
            slow: Duration::from_secs(5),
            artifacts: None,
            save_new: None,
            stop_on_crash: true,
        };
        let report = fuzz(&target, vec![b"abc".to_vec()], &options).unwrap();
        assert_eq!(report.crashes.len(), 1, "{report:?}");
        assert!(report.crashes[0].input.contains(&b'X'));
        assert!(matches!(&report.crashes[0].finding, Finding::Panic(m) if m.contains("found the X")));
    }

    #[test]
    fn signatures_ignore_numbers_and_quoted_parts() {
        assert_eq!(
            signature("error at 12: \"abc\""),
            signature("error at 3: \"xyz\"")
        );
        assert_ne!(signature("error: missing"), signature("ok"));
    }
}
