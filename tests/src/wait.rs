//! Waiting for the cluster to reach a state.

use std::future::Future;
use std::time::Duration;

use anyhow::{Result, bail};

/// Polls `check` every 200 ms until it returns `Ok(Some(_))` (that value) or `timeout` passes (an
/// error naming `what`); an error from `check` ends the wait at once.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
