//! Running one test of the current test binary as a child process, for tests of what happens when a
//! test process ends or is killed (the cleanup tests): the child reports what it set up as one JSON
//! line after a prefix on stdout, then keeps running or ends as its test says.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Runs test `test` of this binary alone with `env` set; returns the child and the value it
/// reported with [`report`] under `prefix`. Blocking.
pub fn spawn_test<T: DeserializeOwned>(test: &str, env: (&str, &str), prefix: &str) -> Result<(Child, T)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(env.0, env.1)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {test} as a child"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let value = loop {
        let Some(line) = lines.next() else {
            let status = child.wait()?;
            bail!("{test} ended ({status}) without reporting");
        };
        if let Some(json) = line?.strip_prefix(prefix) {
            break serde_json::from_str::<T>(json).with_context(|| format!("what {test} reported"))?;
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, value))
}

/// In the child: reports `value` to [`spawn_test`] (one line on stdout).
pub fn report<T: Serialize>(prefix: &str, value: &T) -> Result<()> {
    let mut out = std::io::stdout();
    writeln!(out, "{prefix}{}", serde_json::to_string(value)?)?;
    out.flush()?;
    Ok(())
}
