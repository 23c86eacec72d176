//! The chaos suite (tests/src/chaos): a seeded random workload on a tight pool and on dual-stack
//! pools against real agents, two operator replicas and a real control plane while etcd, the API
//! server, agents and the operator leader crash, freeze and restart, proxies delay, reset, partition
//! and drop responses, etcd compacts, a Node is deleted and StatefulSet members move. Fails if any
//! invariant broke; prints the seed, what was injected and done, and where the logs were kept.
//!
//! `SPIDERPOOL_CHAOS_SEED=random SPIDERPOOL_CHAOS_SECONDS=3600 cargo test -p spiderpool-tests --test
//! chaos -- --ignored --nocapture` runs longer with a new seed (see tests/README.md, "The chaos suite").

#![allow(clippy::print_stdout, reason = "the run's report is the test's output")]

use anyhow::{Result, bail};
use spiderpool_tests::chaos;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the chaos tier: tests/run runs it on its own with --ignored --nocapture, so that its report shows"]
async fn no_duplicate_no_leak_no_wedge_under_faults() -> Result<()> {
    spiderpool_tests::init_tracing();
    let config = chaos::Config::from_env()?;
    println!(
        "chaos: seed {:#x} (SPIDERPOOL_CHAOS_SEED={:#x} repeats its choices), {} s of faults",
        config.seed,
        config.seed,
        config.chaos.as_secs()
    );
    let outcome = chaos::run(&config).await?;
    println!("{}", outcome.summary);
    if let Some(dir) = &outcome.kept {
        println!("chaos: logs, journal and summary kept in {}", dir.display());
    }
    if !outcome.violations.is_empty() {
        bail!(
            "chaos seed {:#x}: {} invariant violations (first: {}); logs in {:?}",
            outcome.seed,
            outcome.violations.len(),
            outcome.violations[0],
            outcome.kept
        );
    }
    if outcome.faults == 0 || outcome.ops == 0 {
        bail!(
            "chaos seed {:#x} injected {} faults and did {} operations",
            outcome.seed,
            outcome.faults,
            outcome.ops
        );
    }
    Ok(())
}
