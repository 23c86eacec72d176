//! What the probes report. Liveness fails when a pool writer is stuck: one of its steps (an API
//! call, a decision) has not returned for [`Health::stuck_after`] although every API call has a
//! deadline ([`crate::api::deadline`]), so only a hang or a deadlock can do that and a restart is
//! the cure. Readiness says whether the agent can serve an ADD: it has started (caches synced, socket
//! bound), nothing is stuck, and the API server answered within the last [`UNREACHABLE_AFTER`] (or
//! nothing was asked of it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::clock;

/// How long every API call may fail or go unanswered before the agent reports itself not ready.
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(30);

/// The agent's health. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    started: AtomicBool,
    stuck_after: Duration,
    /// Pool to (what its writer is doing, since when), while it does something.
    steps: Mutex<HashMap<String, (&'static str, Instant)>>,
    /// Since when every API call failed without an answer from the API server.
    unreachable_since: Mutex<Option<Instant>>,
}

impl Health {
    /// Health with writers counted stuck after `stuck_after` in one step.
    pub fn new(stuck_after: Duration) -> Self {
        Health {
            inner: Arc::new(Inner {
                started: AtomicBool::new(false),
                stuck_after,
                steps: Mutex::new(HashMap::new()),
                unreachable_since: Mutex::new(None),
            }),
        }
    }

    fn steps(&self) -> MutexGuard<'_, HashMap<String, (&'static str, Instant)>> {
        self.inner.steps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long a step may take before its writer counts as stuck.
    pub fn stuck_after(&self) -> Duration {
        self.inner.stuck_after
    }

    /// The caches synced and the socket is served.
    pub fn set_started(&self) {
        self.inner.started.store(true, Ordering::Release);
    }

    /// Whether the agent has started.
    pub fn started(&self) -> bool {
        self.inner.started.load(Ordering::Acquire)
    }

    /// The writer of `pool` starts `what`; it is done when the guard drops.
    pub fn step(&self, pool: &str, what: &'static str) -> Step {
        self.steps().insert(pool.to_owned(), (what, clock::now()));
        Step {
            health: self.clone(),
            pool: pool.to_owned(),
        }
    }

    /// An API call ended: `answered` when the API server answered (whatever it said).
    pub fn api_call(&self, answered: bool) {
        let mut since = self
            .inner
            .unreachable_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if answered {
            *since = None;
        } else if since.is_none() {
            *since = Some(clock::now());
        }
    }

    /// `Err` naming the stuck writers, if any.
    pub fn liveness(&self) -> Result<(), String> {
        let now = clock::now();
        let mut stuck: Vec<String> = self
            .steps()
            .iter()
            .filter(|(_, (_, since))| now.duration_since(*since) >= self.inner.stuck_after)
            .map(|(pool, (what, since))| {
                format!(
                    "the writer of SpiderIPPool {pool} has been {what} for {:?}",
                    now.duration_since(*since)
                )
            })
            .collect();
        stuck.sort();
        if stuck.is_empty() {
            Ok(())
        } else {
            Err(stuck.join("; "))
        }
    }

    /// `Err` saying why the agent cannot serve, if it cannot.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.started() {
            return Err("starting: the caches have not synced yet".to_owned());
        }
        self.liveness()?;
        let since = *self
            .inner
            .unreachable_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match since {
            Some(since) if clock::now().duration_since(since) >= UNREACHABLE_AFTER => Err(format!(
                "no API call has been answered for {:?}",
                clock::now().duration_since(since)
            )),
            _ => Ok(()),
        }
    }
}

/// A writer step in progress ([`Health::step`]).
pub struct Step {
    health: Health,
    pool: String,
}

impl Drop for Step {
    fn drop(&mut self) {
        self.health.steps().remove(&self.pool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_step_that_does_not_return_fails_liveness_and_readiness() {
        let health = Health::new(Duration::from_secs(30));
        assert!(health.readiness().is_err());
        health.set_started();
        assert_eq!(health.readiness(), Ok(()));
        {
            let _step = health.step("p", "writing the pool status");
            tokio::time::sleep(Duration::from_secs(29)).await;
            assert_eq!(health.liveness(), Ok(()));
            tokio::time::sleep(Duration::from_secs(2)).await;
            let err = health.liveness().unwrap_err();
            assert!(
                err.contains("SpiderIPPool p has been writing the pool status"),
                "{err}"
            );
            assert!(health.readiness().is_err());
        }
        assert_eq!(health.liveness(), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_api_server_makes_the_agent_not_ready() {
        let health = Health::new(Duration::from_secs(30));
        health.set_started();
        health.api_call(false);
        tokio::time::sleep(UNREACHABLE_AFTER / 2).await;
        health.api_call(false);
        assert_eq!(health.readiness(), Ok(()));
        tokio::time::sleep(UNREACHABLE_AFTER).await;
        assert!(
            health
                .readiness()
                .unwrap_err()
                .contains("no API call has been answered")
        );
        assert_eq!(health.liveness(), Ok(()));
        health.api_call(true);
        assert_eq!(health.readiness(), Ok(()));
    }
}
