//! Prometheus metrics, named like upstream's (reference section 9; prometheus-client appends `_total`
//! to counters, as upstream's OpenTelemetry exporter does), plus the pool-write figures this design
//! is judged by (writes, conflicts, batch sizes).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Failure reason label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// e.g. `ip_used_out`, `no_available_pool`, `wrong_input`, `internal`, `timeout`.
    pub reason: String,
}

/// API write kind label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabel {
    /// `ippool_status` or `endpoint`.
    pub kind: String,
}

/// Kind of an ambiguous claim.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabel {
    /// `records` (two records of a pool name one address) or `endpoints` (two SpiderEndpoints, or
    /// an endpoint and a pool record, claim one address for different pods).
    pub kind: String,
}

/// Every metric of the daemon. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<MetricsInner>,
}

struct MetricsInner {
    registry: Registry,
    allocations: Counter,
    allocation_failures: Family<ReasonLabel, Counter>,
    allocation_duration: Histogram,
    releases: Counter,
    release_failures: Family<ReasonLabel, Counter>,
    release_duration: Histogram,
    api_writes: Family<WriteLabel, Counter>,
    pool_conflicts: Counter,
    pool_write_duration: Histogram,
    pool_batch_size: Histogram,
    reserved_handouts: Counter,
    reservations_lost: Counter,
    ambiguous_claims: Family<ClaimLabel, Counter>,
    socket_refused: Counter,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let allocations = Counter::default();
        let allocation_failures = Family::<ReasonLabel, Counter>::default();
        let allocation_duration = Histogram::new(latency_buckets());
        let releases = Counter::default();
        let release_failures = Family::<ReasonLabel, Counter>::default();
        let release_duration = Histogram::new(latency_buckets());
        // Every failure reason starts at 0, as upstream's counters do, so that dashboards and alerts
        // on them find a series before the first failure.
        for reason in crate::error::IpamError::REASONS {
            let label = ReasonLabel {
                reason: reason.to_owned(),
            };
            drop(allocation_failures.get_or_create(&label));
            drop(release_failures.get_or_create(&label));
        }
        let api_writes = Family::<WriteLabel, Counter>::default();
        let pool_conflicts = Counter::default();
        let pool_write_duration = Histogram::new(latency_buckets());
        let pool_batch_size = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]);
        let reserved_handouts = Counter::default();
        let reservations_lost = Counter::default();
        let ambiguous_claims = Family::<ClaimLabel, Counter>::default();
        let socket_refused = Counter::default();
        registry.register(
            "spiderpool_ipam_allocation_counts",
            "Successful IP allocations (CNI ADD)",
            allocations.clone(),
        );
        registry.register(
            "spiderpool_ipam_allocation_failure_counts",
            "Failed IP allocations by reason",
            allocation_failures.clone(),
        );
        registry.register(
            "spiderpool_ipam_allocation_duration_seconds",
            "Duration of IP allocations",
            allocation_duration.clone(),
        );
        registry.register(
            "spiderpool_ipam_release_counts",
            "Successful IP releases (CNI DEL)",
            releases.clone(),
        );
        registry.register(
            "spiderpool_ipam_release_failure_counts",
            "Failed IP releases by reason",
            release_failures.clone(),
        );
        registry.register(
            "spiderpool_ipam_release_duration_seconds",
            "Duration of IP releases",
            release_duration.clone(),
        );
        registry.register(
            "spiderpool_ipam_api_writes",
            "Writes to the API server by kind",
            api_writes.clone(),
        );
        registry.register(
            "spiderpool_ipam_update_ippool_conflict_counts",
            "Pool status writes that lost to a concurrent writer (HTTP 409)",
            pool_conflicts.clone(),
        );
        registry.register(
            "spiderpool_ipam_ippool_write_duration_seconds",
            "Duration of pool status writes",
            pool_write_duration.clone(),
        );
        registry.register(
            "spiderpool_ipam_ippool_write_batch_size",
            "Requests decided by one pool status write",
            pool_batch_size.clone(),
        );
        registry.register(
            "spiderpool_ipam_reserved_handouts",
            "Addresses handed to pods from this node's reservations, without a pool write of their own",
            reserved_handouts.clone(),
        );
        registry.register(
            "spiderpool_ipam_reservations_lost",
            "Addresses handed out from a reservation that the pool no longer showed as this node's when \
             recording them (never expected: someone else edited the pool status)",
            reservations_lost.clone(),
        );
        registry.register(
            "spiderpool_ipam_ambiguous_claims",
            "Addresses found claimed twice (two pool records, or endpoints and records naming different \
             pods), by kind; each is left occupied and never handed out, and logged",
            ambiguous_claims.clone(),
        );
        registry.register(
            "spiderpool_ipam_socket_refused_connections",
            "Connections to the IPAM socket closed at once because the peer is not root",
            socket_refused.clone(),
        );
        Metrics {
            inner: Arc::new(MetricsInner {
                registry,
                allocations,
                allocation_failures,
                allocation_duration,
                releases,
                release_failures,
                release_duration,
                api_writes,
                pool_conflicts,
                pool_write_duration,
                pool_batch_size,
                reserved_handouts,
                reservations_lost,
                ambiguous_claims,
                socket_refused,
            }),
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.inner.registry).is_err() {
            out.clear();
        }
        out
    }

    /// An allocation finished.
    pub fn allocation(&self, elapsed: Duration, failure: Option<&str>) {
        self.inner.allocation_duration.observe(elapsed.as_secs_f64());
        match failure {
            None => self.inner.allocations.inc(),
            Some(reason) => self
                .inner
                .allocation_failures
                .get_or_create(&ReasonLabel {
                    reason: reason.to_owned(),
                })
                .inc(),
        };
    }

    /// A release finished.
    pub fn release(&self, elapsed: Duration, failure: Option<&str>) {
        self.inner.release_duration.observe(elapsed.as_secs_f64());
        match failure {
            None => self.inner.releases.inc(),
            Some(reason) => self
                .inner
                .release_failures
                .get_or_create(&ReasonLabel {
                    reason: reason.to_owned(),
                })
                .inc(),
        };
    }

    /// A pool status write was attempted for `batch` requests.
    pub fn pool_write(&self, elapsed: Duration, batch: usize) {
        self.api_write("ippool_status");
        self.inner.pool_write_duration.observe(elapsed.as_secs_f64());
        self.inner.pool_batch_size.observe(batch as f64);
    }

    /// A pool status write lost to a concurrent writer.
    pub fn pool_conflict(&self) {
        self.inner.pool_conflicts.inc();
    }

    /// An address was handed out from this node's reservations.
    pub fn reserved_handout(&self) {
        self.inner.reserved_handouts.inc();
    }

    /// A handed-out reservation could not be recorded for its pod.
    pub fn reservation_lost(&self) {
        self.inner.reservations_lost.inc();
    }

    /// An address was found claimed twice (`kind`: [`ClaimLabel::kind`]).
    pub fn ambiguous_claim(&self, kind: &str) {
        self.inner
            .ambiguous_claims
            .get_or_create(&ClaimLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// A connection to the socket was refused (its peer is not root).
    pub fn socket_refused(&self) {
        self.inner.socket_refused.inc();
    }

    /// Some other write to the API server (`endpoint`, ...).
    pub fn api_write(&self, kind: &str) {
        self.inner
            .api_writes
            .get_or_create(&WriteLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_counters_have_a_series_per_reason_before_any_failure() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        for reason in crate::error::IpamError::REASONS {
            for name in [
                "spiderpool_ipam_allocation_failure_counts_total",
                "spiderpool_ipam_release_failure_counts_total",
            ] {
                let series = format!("{name}{{reason=\"{reason}\"}} 0");
                assert!(text.contains(&series), "{series} missing from\n{text}");
            }
        }
    }
}
