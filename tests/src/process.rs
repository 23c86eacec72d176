//! What a process of this machine has used so far, read from `/proc` (the benchmarks' measure of the
//! control plane's and the operator's work).

use anyhow::{Context as _, Result};

/// CPU time (user + system) process `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    // utime and stime are fields 14 and 15 of the whole line.
    clock_ticks(&format!("/proc/{pid}/stat"), 14, 15)
}

/// CPU time (user + system) this process's children have used, counting only children that have
/// exited and been waited for (`std::process::Command::output` waits), in seconds.
pub fn waited_children_cpu_seconds() -> Result<f64> {
    // cutime and cstime are fields 16 and 17 of the whole line.
    clock_ticks("/proc/self/stat", 16, 17)
}

/// The sum of two fields (numbered from 1, as in proc(5)) of a `/proc/.../stat` file, in seconds:
/// the kernel counts them in USER_HZ (100 on Linux).
fn clock_ticks(path: &str, first: usize, second: usize) -> Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // The fields after the command name (field 2, in parentheses, may contain spaces) start at 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .with_context(|| format!("malformed {path}"))?
        .1
        .split_whitespace()
        .collect();
    let field = |n: usize| -> Result<f64> {
        let value = fields.get(n - 3).with_context(|| format!("short {path}"))?;
        Ok(value.parse::<f64>()?)
    };
    Ok((field(first)? + field(second)?) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_work_shows_in_this_process_cpu_time() {
        let own = cpu_seconds(std::process::id()).unwrap();
        let children = waited_children_cpu_seconds().unwrap();
        assert!(own >= 0.0 && children >= 0.0, "{own} {children}");
        let burn = std::time::Instant::now();
        let mut x = 0_u64;
        while burn.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(
            cpu_seconds(std::process::id()).unwrap() > own,
            "300 ms of busy work shows in utime"
        );
    }
}
