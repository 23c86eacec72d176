//! The operator's Prometheus metrics (prometheus-client), served on `/metrics` by the binary.
//!
//! One [`Metrics`] is shared by every controller; each labels its series with its own name
//! (`controller="network"`, `controller="multusconfig"`, ...). Counting API writes is what lets tests
//! (and operators on call) see that a no-op reconcile really writes nothing.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upstream's buckets for every `spiderpool_*` histogram (reference §9), in seconds.
const DURATION_BUCKETS: [f64; 9] = [0.1, 0.3, 0.5, 1.0, 3.0, 5.0, 7.0, 10.0, 15.0];

/// Labels of per-controller series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// Controller name, e.g. `network`.
    pub controller: String,
}

/// Labels of reconcile errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Controller name.
    pub controller: String,
    /// Stable error category (`Error::metric_label()` of the controller).
    pub error: String,
}

/// Labels of API writes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// Controller name.
    pub controller: String,
    /// `apply`, `delete`, `status` or `event`.
    pub verb: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Every metric of the operator. Cheap to share (`Arc<Metrics>`); the series are atomics.
#[derive(Debug, Clone)]
pub struct Metrics {
    reconciles: Family<ControllerLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    api_writes: Family<WriteLabels, Counter>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(duration_histogram),
            api_writes: Family::default(),
            leader: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Metrics registered in `registry` (the series are shared with the registry: the registry
    /// encodes what the controllers count).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics::default();
        registry.register(
            "spiderpool_operator_reconcile",
            "Reconciliations run, per controller",
            metrics.reconciles.clone(),
        );
        registry.register(
            "spiderpool_operator_reconcile_errors",
            "Reconciliations that failed, per controller and error category",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "spiderpool_operator_reconcile_duration_seconds",
            "Time one reconciliation takes, per controller",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "spiderpool_operator_api_writes",
            "Writes to the API server (apply, delete, status), per controller",
            metrics.api_writes.clone(),
        );
        registry.register(
            "spiderpool_operator_leader",
            "1 while this replica holds the leader Lease and runs the controllers",
            metrics.leader.clone(),
        );
        metrics
    }

    /// Starts timing one reconciliation; the returned guard counts it and records its duration when
    /// dropped (so early returns and errors are measured too).
    pub fn reconcile_started(&self, controller: &str) -> ReconcileTimer<'_> {
        let labels = ControllerLabels {
            controller: controller.to_string(),
        };
        self.reconciles.get_or_create(&labels).inc();
        ReconcileTimer {
            metrics: self,
            labels,
            started: Instant::now(),
        }
    }

    /// Counts a failed reconciliation.
    pub fn reconcile_failed(&self, controller: &str, error: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                controller: controller.to_string(),
                error: error.to_string(),
            })
            .inc();
    }

    /// Counts one write to the API server.
    pub fn count_write(&self, controller: &str, verb: &str) {
        self.api_writes
            .get_or_create(&WriteLabels {
                controller: controller.to_string(),
                verb: verb.to_string(),
            })
            .inc();
    }

    /// Writes made so far by one controller, all verbs together.
    pub fn writes(&self, controller: &str) -> u64 {
        ["apply", "delete", "status", "event"]
            .iter()
            .map(|verb| self.writes_of(controller, verb))
            .sum()
    }

    /// Writes of one verb made so far by one controller.
    pub fn writes_of(&self, controller: &str, verb: &str) -> u64 {
        self.api_writes
            .get(&WriteLabels {
                controller: controller.to_string(),
                verb: verb.to_string(),
            })
            .map_or(0, |counter| counter.get())
    }

    /// Reconciliations run so far by one controller.
    pub fn reconciles(&self, controller: &str) -> u64 {
        self.reconciles
            .get(&ControllerLabels {
                controller: controller.to_string(),
            })
            .map_or(0, |counter| counter.get())
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
}

/// Measures one reconciliation; see [`Metrics::reconcile_started`].
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    labels: ControllerLabels,
    started: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .get_or_create(&self.labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// The registry in Prometheus text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_counted_per_controller_and_encoded() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.count_write("network", "apply");
        metrics.count_write("network", "apply");
        metrics.count_write("network", "status");
        metrics.count_write("multusconfig", "delete");
        drop(metrics.reconcile_started("network"));
        metrics.reconcile_failed("network", "kube");
        assert_eq!(metrics.writes("network"), 3);
        assert_eq!(metrics.writes_of("network", "apply"), 2);
        assert_eq!(metrics.writes("multusconfig"), 1);
        assert_eq!(metrics.reconciles("network"), 1);
        let text = encode(&registry).unwrap();
        assert!(
            text.contains(r#"spiderpool_operator_api_writes_total{controller="network",verb="apply"} 2"#)
        );
        assert!(text.contains("spiderpool_operator_reconcile_duration_seconds_bucket"));
        assert!(
            text.contains(
                r#"spiderpool_operator_reconcile_errors_total{controller="network",error="kube"} 1"#
            )
        );
    }
}
