//! The shell's clock: tokio's, so that tests with a paused runtime clock drive every deadline and
//! timer deterministically. The pure state machines are given the time as a std [`Instant`].

use std::time::{Duration, Instant};

/// Now.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Sleeps until `at`.
pub async fn sleep_until(at: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
}

/// `duration` from now, or a time far enough to mean never if that overflows: timeouts come from
/// flags and requests, and no value of theirs may panic the daemon.
pub fn deadline_in(duration: Duration) -> Instant {
    crate::ipam::reservations::later(now(), duration)
}
