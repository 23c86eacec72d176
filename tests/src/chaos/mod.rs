//! The chaos suite: a seeded random workload against real agents and operators on a real control
//! plane while faults are injected, with invariants checked from a ledger of what every sandbox was
//! given. `tests/tests/chaos.rs` runs it; tests/README.md ("The chaos suite") says how to run it
//! longer or with other seeds.
//!
//! The workload drives the real `spiderpool` plugin binary against the agents directly, playing the
//! kubelet itself (bare pods bound to Node objects the suite keeps Ready; a real StatefulSet whose
//! pods the scheduler binds), instead of going through the node simulator: the ledger then knows
//! exactly which sandbox asked what and what it was answered, and the workload can do what a node
//! simulator never does on purpose (repeat an ADD or a DEL, force-delete a pod while its sandbox
//! lives, recreate a pod under the same name before the old sandbox is gone). Nothing is configured
//! on a link: the addresses exist only in the API, so the run needs no network namespaces.
//!
//! A run: rounds of [`Config::round`] (the workload and the fault injector run together, a checker
//! compares the API state with the ledger every few seconds), each ended by a checkpoint
//! ([`checkpoint::checkpoint`]); then every pod is deleted and the end check waits for reclaim to
//! leave nothing behind. Timing is real, so a seed fixes the choices (which operation, which fault,
//! how long), not the interleaving.

pub mod checkpoint;
pub mod faults;
pub mod ledger;
pub mod operator;
pub mod proxy;
pub mod rng;
pub mod run;
pub mod statefulset;
pub mod workload;
pub mod world;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use self::rng::Rng;
use self::run::Run;
use self::workload::WorkloadOptions;
use self::world::{World, WorldOptions, lock};

/// The seed CI runs with.
pub const CI_SEED: u64 = 0x5EED_0013;

/// What a run does; [`Config::from_env`] reads the knobs.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// Time with faults (the whole run takes about a minute more: start, checkpoints, the end).
    pub chaos: Duration,
    /// Length of one round (faults and workload) before a checkpoint.
    pub round: Duration,
    pub nodes: usize,
    pub workload: WorkloadOptions,
    pub members: usize,
    /// Addresses beyond what the pods can hold at once (the "tight" in tight pool).
    pub spare: usize,
    /// Where logs go when the run fails.
    pub keep_dir: PathBuf,
}

impl Config {
    /// `SPIDERPOOL_CHAOS_SEED` (a number, `0x...`, or `random`; default [`CI_SEED`]),
    /// `SPIDERPOOL_CHAOS_SECONDS` (time with faults, default 360), `SPIDERPOOL_CHAOS_ROUND_SECONDS`
    /// (default 60), `SPIDERPOOL_CHAOS_KEEP_DIR` (default `/var/tmp/spiderpool-chaos`).
    pub fn from_env() -> Result<Self> {
        let seed = match std::env::var("SPIDERPOOL_CHAOS_SEED").ok().as_deref() {
            None | Some("") => CI_SEED,
            Some("random") => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or_default();
                Rng::new(nanos ^ u64::from(std::process::id())).next_u64() >> 16
            }
            Some(text) => match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            }
            .with_context(|| format!("SPIDERPOOL_CHAOS_SEED={text}: a number, 0x..., or random"))?,
        };
        let seconds = |name: &str, default: u64| -> Result<Duration> {
            Ok(Duration::from_secs(match std::env::var(name).ok().as_deref() {
                None | Some("") => default,
                Some(text) => text
                    .parse()
                    .with_context(|| format!("{name}={text}: a number of seconds"))?,
            }))
        };
        Ok(Config {
            seed,
            chaos: seconds("SPIDERPOOL_CHAOS_SECONDS", 360)?,
            round: seconds("SPIDERPOOL_CHAOS_ROUND_SECONDS", 60)?,
            nodes: 4,
            workload: WorkloadOptions { tight: 12, dual: 10 },
            members: 3,
            spare: 3,
            keep_dir: std::env::var_os("SPIDERPOOL_CHAOS_KEEP_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/tmp/spiderpool-chaos")),
        })
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub elapsed: Duration,
    pub faults: u64,
    pub ops: u64,
    /// Human-readable summary: faults and operations by kind, violations.
    pub summary: String,
    pub violations: Vec<ledger::Violation>,
    /// Where the logs were kept (only when something failed).
    pub kept: Option<PathBuf>,
}

/// Runs the whole suite.
pub async fn run(config: &Config) -> Result<Outcome> {
    let started = Instant::now();
    let options = WorldOptions {
        nodes: config.nodes,
        tight_size: config.workload.tight + config.nodes + config.spare,
        dual_size: config.workload.dual + config.members + config.nodes + config.spare,
        gc_interval: Duration::from_secs(20),
        request_timeout: Duration::from_secs(20),
    };
    let world = World::start(options).await?;
    let run = Arc::new(Run::new(world, config.seed)?);
    run.note(
        "run",
        &format!(
            "seed {:#x}, world ready in {:.1} s",
            config.seed,
            started.elapsed().as_secs_f64()
        ),
    );
    let result = drive(&run, config).await;
    if let Err(err) = &result {
        lock(&run.ledger).report("the run completes", format!("{err:#}"));
    }
    run.flush();
    let (violations, orphan_reuses) = {
        let ledger = lock(&run.ledger);
        (ledger.violations().to_vec(), ledger.orphan_reuses())
    };
    let (summary, faults, ops) = {
        let stats = lock(&run.stats);
        let text = summary(config, &stats, &violations, orphan_reuses, started.elapsed());
        (text, stats.total_faults(), stats.total_ops())
    };
    let kept = if violations.is_empty() {
        None
    } else {
        Some(keep_logs(&run, config, &summary).await?)
    };
    Ok(Outcome {
        seed: config.seed,
        elapsed: started.elapsed(),
        faults,
        ops,
        summary,
        violations,
        kept,
    })
}

async fn drive(run: &Arc<Run>, config: &Config) -> Result<()> {
    let mut background = tokio::task::JoinSet::new();
    {
        let run = run.clone();
        background.spawn(async move { faults::heartbeats(&run).await });
    }
    {
        let run = run.clone();
        background.spawn(async move { faults::supervise_control_plane(&run).await });
    }
    let checker = {
        let run = run.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                if !run.paused.load(Ordering::SeqCst) {
                    let _ = run.check().await;
                }
            }
        })
    };
    statefulset::create(run, i32::try_from(config.members)?).await?;
    let members = {
        let run = run.clone();
        tokio::spawn(async move { statefulset::kubelet(&run).await })
    };
    let slots = config.workload.tight + config.workload.dual;
    let workers: Vec<_> = (0..slots)
        .map(|i| {
            let (run, options) = (run.clone(), config.workload);
            tokio::spawn(async move { workload::slot_worker(&run, i, options).await })
        })
        .collect();

    let mut injector_rng = Rng::stream(config.seed, 1_000_000);
    let mut deck = faults::Deck::default();
    let chaos_end = Instant::now() + config.chaos;
    let mut round = 0;
    while Instant::now() < chaos_end {
        round += 1;
        let until = (Instant::now() + config.round).min(chaos_end);
        run.note("run", &format!("round {round}"));
        faults::injector(run, &mut injector_rng, &mut deck, until, config.members).await;
        checkpoint::checkpoint(run, round).await?;
    }

    // The end: every pod goes (the workload's kubelet DELs first), the StatefulSet goes, reclaim runs.
    run.note("run", "stopping the workload");
    run.stopping.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.context("a workload worker panicked")?;
    }
    statefulset::delete(run).await?;
    tokio::time::timeout(Duration::from_secs(120), members)
        .await
        .context("the StatefulSet's pods were not gone 120 s after it was deleted")?
        .context("the StatefulSet kubelet panicked")?;
    checker.abort();
    let waited = checkpoint::nothing_left(run, Duration::from_secs(120)).await?;
    run.note(
        "run",
        &format!(
            "nothing left {:.1} s after the last pod went",
            waited.as_secs_f64()
        ),
    );
    background.abort_all();
    Ok(())
}

fn summary(
    config: &Config,
    stats: &run::Stats,
    violations: &[ledger::Violation],
    orphan_reuses: u64,
    elapsed: Duration,
) -> String {
    let mut out = format!(
        "chaos: seed {:#x}, {:.0} s, {} faults injected, {} operations done, {} violations\n",
        config.seed,
        elapsed.as_secs_f64(),
        stats.total_faults(),
        stats.total_ops(),
        violations.len()
    );
    out.push_str(&format!(
        "addresses of force-deleted pods given again before their sandbox's DEL (allowed, see ledger.rs): {orphan_reuses}\n"
    ));
    out.push_str("faults:\n");
    for (fault, count) in &stats.faults {
        out.push_str(&format!("  {fault:<28} {count}\n"));
    }
    out.push_str("operations (ok / failed):\n");
    for (op, (ok, failed)) in &stats.ops {
        out.push_str(&format!("  {op:<28} {ok} / {failed}\n"));
    }
    for violation in violations.iter().take(30) {
        out.push_str(&format!("VIOLATION {violation}\n"));
    }
    if violations.len() > 30 {
        out.push_str(&format!("... and {} more\n", violations.len() - 30));
    }
    out
}

/// Copies every log, the journal and the summary to `<keep_dir>/seed-<seed>-<unix time>/`.
async fn keep_logs(run: &Run, config: &Config, summary: &str) -> Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let dir = config.keep_dir.join(format!("seed-{:#x}-{stamp}", config.seed));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = run.world.log_files().await;
    files.push(run.world.dir.join("journal.log"));
    for file in files {
        if let Some(name) = file.file_name() {
            let _ = std::fs::copy(&file, dir.join(name));
        }
    }
    std::fs::write(dir.join("summary.txt"), summary)?;
    Ok(dir)
}
