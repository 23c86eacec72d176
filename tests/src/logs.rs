//! Failures that carry the logs of the components under test.

/// Appends logs to a failure after its reason. CI shows only the head of a long failure, and
/// anyhow's `context` would put the logs first and the reason out of sight.
pub trait LogsAfter<T> {
    /// The error's reason (its whole chain), then `logs()`; `logs` runs only on failure.
    fn logs_after(self, logs: impl FnOnce() -> String) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> LogsAfter<T> for Result<T, E> {
    fn logs_after(self, logs: impl FnOnce() -> String) -> anyhow::Result<T> {
        self.map_err(|err| {
            let err: anyhow::Error = err.into();
            anyhow::anyhow!("{err:#}\n{}", logs())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_comes_before_the_logs() {
        let failed: anyhow::Result<()> = Err(anyhow::anyhow!("inner").context("outer"));
        let text = failed.logs_after(|| "LOGS".to_string()).unwrap_err().to_string();
        assert_eq!(text, "outer: inner\nLOGS");
        let fine: anyhow::Result<u8> = Ok(1);
        assert_eq!(fine.logs_after(|| unreachable!()).unwrap(), 1);
    }
}
