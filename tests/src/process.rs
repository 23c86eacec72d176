//! What a process of this machine has used so far, read from `/proc` (the benchmarks' measure of the
//! control plane's and the operator's work).

use anyhow::{Context as _, Result};

/// CPU time (user + system) process `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed /proc/<pid>/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks =
        |i: usize| -> Result<f64> { Ok(fields.get(i).context("short /proc/<pid>/stat")?.parse::<f64>()?) };
    // utime and stime are fields 14 and 15 of the whole line, 11 and 12 after the command name;
    // the kernel counts them in USER_HZ (100 on Linux).
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// CPU time (user + system) this process's children have used, counting only children that have
/// exited and been waited for (`std::process::Command::output` waits), in seconds.
pub fn waited_children_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed /proc/self/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks =
        |i: usize| -> Result<f64> { Ok(fields.get(i).context("short /proc/self/stat")?.parse::<f64>()?) };
    // cutime and cstime are fields 16 and 17 of the whole line, 13 and 14 after the command name.
    Ok((ticks(13)? + ticks(14)?) / 100.0)
}
