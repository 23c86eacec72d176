//! Leader election with a `coordination.k8s.io/v1` Lease, as upstream's controller does (client-go's
//! LeaseLock): Lease `spiderpool-controller-leases` in the operator's namespace, identity = pod name,
//! lease duration 15 s, renew deadline 10 s, retry period 2 s.
//!
//! Written by hand on optimistic updates: every change of the Lease is a `replace` carrying the
//! resourceVersion that was read, so of two replicas racing for an expired Lease exactly one wins
//! (the other gets 409 Conflict and stays a follower).
//!
//! Expiry is judged the way client-go judges it, by the local clock: a Lease held by someone else
//! counts as expired once its record (holder, renewTime) has not changed for `leaseDurationSeconds`
//! *since this replica first saw that record*. Clocks of different machines are never compared.
//!
//! What losing the Lease does: [`LeaderElector::run`] drops the controllers' future at once (kube-runtime
//! aborts every reconcile in flight) and returns [`LeaderError::Lost`]. The binary then exits non-zero
//! and the Deployment restarts the pod, which joins the election again. Upstream re-elects inside the
//! process; a restart is simpler and guarantees no task of the old term keeps writing. On shutdown the
//! Lease is released (holder cleared, duration 1 s), so another replica takes over at once instead of
//! waiting out the lease duration.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Upstream's Lease name.
pub const DEFAULT_LEASE_NAME: &str = "spiderpool-controller-leases";

/// Where the Lease is and how long terms last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the operator's).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// Who this replica is (pod name).
    pub identity: String,
    /// How long a term lasts without renewal (`leaseDurationSeconds`); followers wait this long
    /// after the last change they saw before taking over.
    pub lease_duration: Duration,
    /// How long the leader keeps retrying a failing renewal before it gives up leading.
    pub renew_deadline: Duration,
    /// Pause between attempts (to acquire, and to renew).
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Upstream's defaults (15 s / 10 s / 2 s) for a Lease in `namespace`.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: DEFAULT_LEASE_NAME.to_string(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// The rules client-go enforces: duration > renew deadline > retry period > 0, and an identity.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let bad = |why: &str| Err(LeaderError::Config(why.to_string()));
        if self.identity.is_empty() {
            return bad("identity must not be empty (set SPIDERPOOL_POD_NAME)");
        }
        if self.namespace.is_empty() || self.name.is_empty() {
            return bad("the Lease namespace and name must not be empty");
        }
        if self.retry_period.is_zero() {
            return bad("retry period must be positive");
        }
        if self.renew_deadline <= self.retry_period {
            return bad("renew deadline must be longer than the retry period");
        }
        if self.lease_duration <= self.renew_deadline {
            return bad("lease duration must be longer than the renew deadline");
        }
        if self.lease_duration.as_secs() < 1 {
            return bad("lease duration must be at least 1 s (leaseDurationSeconds is whole seconds)");
        }
        Ok(())
    }
}

/// What ends [`LeaderElector::run`] without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Shutdown was requested before this replica became leader.
    ShutdownBeforeLeading,
    /// Shutdown was requested while leading; the work was stopped and the Lease released.
    ShutdownWhileLeading,
}

/// Why leading ended badly.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The settings break a rule of [`LeaseConfig::validate`].
    #[error("invalid leader election settings: {0}")]
    Config(String),
    /// The Lease was lost while leading; the work was stopped.
    #[error("lost the leader Lease {namespace}/{name}: {reason}")]
    Lost {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// What happened.
        reason: String,
    },
    /// The work (the controllers) ended while leading; the Lease was released.
    #[error("the controllers stopped while leading: {0:#}")]
    WorkEnded(anyhow::Error),
}

/// What one attempt to acquire or renew found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    /// We hold the Lease now.
    Held,
    /// Another replica holds an unexpired Lease.
    HeldBy(String),
    /// Someone changed the Lease between our read and our write.
    Conflict,
}

/// The record of the Lease we last saw and when we first saw it.
#[derive(Debug, Clone)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    seen_at: Instant,
}

/// Takes part in the election for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observed>,
    leading: watch::Sender<bool>,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LeaderElector {
    /// An elector for `config` (checked with [`LeaseConfig::validate`]).
    pub fn new(client: Client, config: LeaseConfig) -> Result<Self, LeaderError> {
        config.validate()?;
        Ok(LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            leading: watch::channel(false).0,
        })
    }

    /// Whether this replica leads, as it changes (for readiness and metrics).
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Waits to become leader, then runs `work` while leading.
    ///
    /// - `shutdown` completes before leading: returns [`Outcome::ShutdownBeforeLeading`].
    /// - `shutdown` completes while leading: drops `work`, releases the Lease, returns
    ///   [`Outcome::ShutdownWhileLeading`].
    /// - the Lease is lost: drops `work` at once and returns [`LeaderError::Lost`].
    /// - `work` ends: releases the Lease and returns [`LeaderError::WorkEnded`] (controllers run forever).
    pub async fn run<W, S>(mut self, work: W, shutdown: S) -> Result<Outcome, LeaderError>
    where
        W: Future<Output = anyhow::Result<()>>,
        S: Future<Output = ()>,
    {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Held) => break,
                Ok(Attempt::HeldBy(holder)) => debug!(%holder, "another replica leads"),
                Ok(Attempt::Conflict) => debug!("lost a race for the Lease"),
                Err(err) => warn!(error = %err, "cannot read or write the leader Lease"),
            }
            tokio::select! {
                () = &mut shutdown => return Ok(Outcome::ShutdownBeforeLeading),
                () = tokio::time::sleep(self.config.retry_period) => {}
            }
        }
        info!(
            identity = %self.config.identity,
            lease = %format!("{}/{}", self.config.namespace, self.config.name),
            "became leader; starting the controllers"
        );
        self.leading.send_replace(true);
        let result = {
            let work = std::pin::pin!(work);
            tokio::select! {
                ended = work => Err(LeaderError::WorkEnded(match ended {
                    Ok(()) => anyhow::anyhow!("they returned"),
                    Err(err) => err,
                })),
                lost = self.keep_renewing() => Err(lost),
                () = &mut shutdown => Ok(Outcome::ShutdownWhileLeading),
            }
            // `work` is dropped here: every controller stops before the Lease is released.
        };
        self.leading.send_replace(false);
        if !matches!(result, Err(LeaderError::Lost { .. })) {
            match self.release().await {
                Ok(()) => info!("released the leader Lease"),
                Err(err) => warn!(error = %err, "cannot release the leader Lease; it expires by itself"),
            }
        }
        result
    }

    /// Renews every retry period; returns once leadership is lost.
    async fn keep_renewing(&mut self) -> LeaderError {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            let deadline = last_renewal + self.config.renew_deadline;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = tokio::time::timeout(remaining, self.try_acquire_or_renew()).await;
            let why = match attempt {
                Ok(Ok(Attempt::Held)) => {
                    last_renewal = Instant::now();
                    continue;
                }
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    return self.lost(format!("{holder} holds it now"));
                }
                Ok(Ok(Attempt::Conflict)) => "the Lease changed under us".to_string(),
                Ok(Err(err)) => err.to_string(),
                Err(_) => "renewal timed out".to_string(),
            };
            warn!(reason = %why, "cannot renew the leader Lease");
            if Instant::now() >= deadline {
                return self.lost(format!(
                    "not renewed within the renew deadline ({:?}); last error: {why}",
                    self.config.renew_deadline
                ));
            }
        }
    }

    fn lost(&self, reason: String) -> LeaderError {
        LeaderError::Lost {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            reason,
        }
    }

    fn duration_seconds(&self) -> i32 {
        // Whole seconds, rounded up, so followers never wait less than we promise to renew within.
        let seconds = self.config.lease_duration.as_millis().div_ceil(1000);
        i32::try_from(seconds).unwrap_or(i32::MAX)
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Attempt::Held)
                }
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
                Err(err) => Err(err),
            };
        };
        self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.config.identity.as_str());
        if let Some(holder) = &holder
            && !mine
        {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.config.lease_duration, Duration::from_secs);
            let unchanged_for = self
                .observed
                .as_ref()
                .map_or(Duration::ZERO, |o| o.seen_at.elapsed());
            if unchanged_for < duration {
                return Ok(Attempt::HeldBy(holder.clone()));
            }
            info!(previous = %holder, "the leader Lease expired; taking over");
        }
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.duration_seconds()),
            acquire_time: if mine {
                spec.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if mine || holder.is_none() {
                spec.lease_transitions.unwrap_or(0)
            } else {
                spec.lease_transitions.unwrap_or(0).saturating_add(1)
            }),
            ..spec
        });
        // `lease` carries the resourceVersion we read: the update fails if anyone wrote since.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated);
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
            Err(err) => Err(err),
        }
    }

    /// Remembers the Lease record and when it was first seen as it is.
    fn observe(&mut self, lease: &Lease) {
        let spec = lease.spec.as_ref();
        let holder = spec.and_then(|s| s.holder_identity.clone());
        let renew_time = spec.and_then(|s| s.renew_time.clone());
        let same = self
            .observed
            .as_ref()
            .is_some_and(|o| o.holder == holder && o.renew_time == renew_time);
        if !same {
            self.observed = Some(Observed {
                holder,
                renew_time,
                seen_at: Instant::now(),
            });
        }
    }

    /// Gives the Lease up if we hold it, so a follower takes over without waiting for expiry.
    async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..spec
        });
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_client_go_rules() {
        assert!(LeaseConfig::new("ns", "pod-a").validate().is_ok());
        let mut c = LeaseConfig::new("ns", "");
        assert!(c.validate().is_err());
        c.identity = "pod-a".into();
        c.renew_deadline = c.lease_duration;
        assert!(matches!(c.validate(), Err(LeaderError::Config(m)) if m.contains("lease duration")));
        let mut c = LeaseConfig::new("ns", "pod-a");
        c.retry_period = c.renew_deadline;
        assert!(c.validate().is_err());
        assert_eq!(LeaseConfig::new("ns", "p").name, "spiderpool-controller-leases");
    }
}
