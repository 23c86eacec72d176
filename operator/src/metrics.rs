//! The operator's Prometheus metrics (prometheus-client), served on `/metrics` by the binary.
//!
//! One [`Metrics`] is shared by every controller; each labels its series with its own name
//! (`controller="network"`, `controller="multusconfig"`, ...). Counting API writes is what lets tests
//! (and operators on call) see that a no-op reconcile really writes nothing.

use std::time::Instant;

use kube::ResourceExt as _;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use spiderpool_schema::{SpiderIPPool, SpiderSubnet};

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

/// One gauge family computed at scrape time: name, help, label key, and one value per label value.
#[derive(Debug, Clone, PartialEq)]
pub struct GaugeSeries {
    /// Metric name.
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// The label naming the object (`pool`, `subnet`, or upstream's `SpiderIPPool`/`SpiderSubnet`);
    /// `None` for a single unlabelled value.
    pub label: Option<&'static str>,
    /// Label value and gauge value.
    pub values: Vec<(String, i64)>,
}

/// One pool's or subnet's counts, as its status reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    /// Object name.
    pub name: String,
    /// `status.totalIPCount`.
    pub total: i64,
    /// `status.allocatedIPCount`.
    pub allocated: i64,
    /// Pools a subnet controls (`status.controlledIPPools`); 0 for pools.
    pub controlled_pools: i64,
}

impl Capacity {
    /// Addresses left.
    pub fn available(&self) -> i64 {
        (self.total - self.allocated).max(0)
    }
}

/// The capacity gauges users alert on (per pool and per subnet: total, allocated, available; the
/// number of pools and subnets), plus upstream's debug-level names (reference section 9) when
/// `debug`. Pure: [`CapacityCollector`] feeds it the operator's caches at scrape time.
pub fn capacity_series(pools: &[Capacity], subnets: &[Capacity], debug: bool) -> Vec<GaugeSeries> {
    let per = |objects: &[Capacity], f: fn(&Capacity) -> i64| -> Vec<(String, i64)> {
        objects.iter().map(|c| (c.name.clone(), f(c))).collect()
    };
    let count =
        |objects: &[Capacity]| vec![(String::new(), i64::try_from(objects.len()).unwrap_or(i64::MAX))];
    let gauge = |name, help, label, values| GaugeSeries {
        name,
        help,
        label,
        values,
    };
    let mut series = vec![
        gauge(
            "spiderpool_ippool_total_ip_counts",
            "Addresses of a SpiderIPPool (its IPs minus excluded ones)",
            Some("pool"),
            per(pools, |c| c.total),
        ),
        gauge(
            "spiderpool_ippool_allocated_ip_counts",
            "Addresses of a SpiderIPPool held by pods",
            Some("pool"),
            per(pools, |c| c.allocated),
        ),
        gauge(
            "spiderpool_ippool_available_ip_counts",
            "Addresses of a SpiderIPPool still free",
            Some("pool"),
            per(pools, Capacity::available),
        ),
        gauge(
            "spiderpool_subnet_total_ip_counts",
            "Addresses of a SpiderSubnet",
            Some("subnet"),
            per(subnets, |c| c.total),
        ),
        gauge(
            "spiderpool_subnet_allocated_ip_counts",
            "Addresses of a SpiderSubnet given to its pools",
            Some("subnet"),
            per(subnets, |c| c.allocated),
        ),
        gauge(
            "spiderpool_subnet_available_ip_counts",
            "Addresses of a SpiderSubnet no pool has yet",
            Some("subnet"),
            per(subnets, Capacity::available),
        ),
        gauge(
            "spiderpool_total_ippool_counts",
            "SpiderIPPools in the cluster",
            None,
            count(pools),
        ),
        gauge(
            "spiderpool_total_subnet_counts",
            "SpiderSubnets in the cluster",
            None,
            count(subnets),
        ),
    ];
    if debug {
        // Upstream's debug-level names and label keys (reference section 9).
        series.extend([
            gauge(
                "spiderpool_debug_ippool_total_ip_counts",
                "Addresses of a SpiderIPPool",
                Some("SpiderIPPool"),
                per(pools, |c| c.total),
            ),
            gauge(
                "spiderpool_debug_ippool_available_ip_counts",
                "Addresses of a SpiderIPPool still free",
                Some("SpiderIPPool"),
                per(pools, Capacity::available),
            ),
            gauge(
                "spiderpool_debug_subnet_ippool_counts",
                "Pools a SpiderSubnet controls",
                Some("SpiderSubnet"),
                per(subnets, |c| c.controlled_pools),
            ),
            gauge(
                "spiderpool_debug_subnet_total_ip_counts",
                "Addresses of a SpiderSubnet",
                Some("SpiderSubnet"),
                per(subnets, |c| c.total),
            ),
            gauge(
                "spiderpool_debug_subnet_available_ip_counts",
                "Addresses of a SpiderSubnet no pool has yet",
                Some("SpiderSubnet"),
                per(subnets, Capacity::available),
            ),
        ]);
    }
    series
}

impl From<&SpiderIPPool> for Capacity {
    fn from(pool: &SpiderIPPool) -> Self {
        let status = pool.status.clone().unwrap_or_default();
        Capacity {
            name: pool.name_any(),
            total: status.total_ip_count.unwrap_or(0),
            allocated: status.allocated_ip_count.unwrap_or(0),
            controlled_pools: 0,
        }
    }
}

impl From<&SpiderSubnet> for Capacity {
    fn from(subnet: &SpiderSubnet) -> Self {
        let status = subnet.status.clone().unwrap_or_default();
        let controlled_pools = status
            .controlled_ip_pools
            .as_deref()
            .and_then(|text| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).ok())
            .map_or(0, |pools| i64::try_from(pools.len()).unwrap_or(i64::MAX));
        Capacity {
            name: subnet.name_any(),
            total: status.total_ip_count.unwrap_or(0),
            allocated: status.allocated_ip_count.unwrap_or(0),
            controlled_pools,
        }
    }
}

/// Encodes [`capacity_series`] from the operator's pool and subnet caches on every scrape. The caches
/// fill only on the leader, so only the leader reports capacity (as upstream's does).
#[derive(Debug, Clone)]
pub struct CapacityCollector {
    /// The shared pool cache.
    pub pools: Store<SpiderIPPool>,
    /// A subnet cache.
    pub subnets: Store<SpiderSubnet>,
    /// Also upstream's debug-level names.
    pub debug: bool,
}

impl Collector for CapacityCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut pools: Vec<Capacity> = self
            .pools
            .state()
            .iter()
            .map(|p| Capacity::from(p.as_ref()))
            .collect();
        let mut subnets: Vec<Capacity> = self
            .subnets
            .state()
            .iter()
            .map(|s| Capacity::from(s.as_ref()))
            .collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        subnets.sort_by(|a, b| a.name.cmp(&b.name));
        if self.pools.is_empty() && self.subnets.is_empty() {
            return Ok(());
        }
        for series in capacity_series(&pools, &subnets, self.debug) {
            let mut family = encoder.encode_descriptor(series.name, series.help, None, MetricType::Gauge)?;
            match series.label {
                Some(key) => {
                    for (label, value) in &series.values {
                        let labels = [(key, label.as_str())];
                        ConstGauge::new(*value).encode(family.encode_family(&labels)?)?;
                    }
                }
                None => {
                    if let Some((_, value)) = series.values.first() {
                        ConstGauge::new(*value).encode(family)?;
                    }
                }
            }
        }
        Ok(())
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
    fn capacity_gauges_per_pool_and_subnet_with_upstreams_debug_names() {
        let pools = vec![
            Capacity {
                name: "a".into(),
                total: 10,
                allocated: 4,
                controlled_pools: 0,
            },
            Capacity {
                name: "b".into(),
                total: 2,
                allocated: 3,
                controlled_pools: 0,
            },
        ];
        let subnets = vec![Capacity {
            name: "s".into(),
            total: 100,
            allocated: 12,
            controlled_pools: 2,
        }];
        let plain = capacity_series(&pools, &subnets, false);
        let by_name = |series: &[GaugeSeries], name: &str| {
            series
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.values.clone())
                .unwrap()
        };
        assert_eq!(
            by_name(&plain, "spiderpool_ippool_available_ip_counts"),
            vec![("a".to_string(), 6), ("b".to_string(), 0)],
            "an over-full pool reports 0 available, never a negative count"
        );
        assert_eq!(
            by_name(&plain, "spiderpool_subnet_available_ip_counts"),
            vec![("s".to_string(), 88)]
        );
        assert_eq!(
            by_name(&plain, "spiderpool_total_ippool_counts"),
            vec![(String::new(), 2)]
        );
        assert!(plain.iter().all(|s| !s.name.starts_with("spiderpool_debug_")));
        let debug = capacity_series(&pools, &subnets, true);
        assert_eq!(
            by_name(&debug, "spiderpool_debug_subnet_ippool_counts"),
            vec![("s".to_string(), 2)]
        );
        assert_eq!(
            debug
                .iter()
                .find(|s| s.name == "spiderpool_debug_ippool_total_ip_counts")
                .unwrap()
                .label,
            Some("SpiderIPPool")
        );
    }

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
