//! What the cluster benchmarks of this crate share: their knobs from the environment and latency
//! percentiles.

use std::str::FromStr;
use std::time::Duration;

/// The environment variable `name` parsed, or `default` when it is unset or does not parse.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0.0-1.0) of `sorted`, the nearest sample; zero when there is none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}
