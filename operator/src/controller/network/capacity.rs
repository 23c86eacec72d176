//! How full a topology's address space is, built without I/O from its live pools: per subnet, per
//! rack and per app binding with fixed addresses, each per family; the `CapacityLow` condition; and
//! the same figures as Prometheus gauges.
//!
//! `total` counts what a pool can hand out: its usable addresses (`ips` minus `excludeIPs`) minus the
//! subnet's reserved IPs and gateway (the allocator never hands those out either). `allocated` counts
//! every record of the pool's `allocatedIPs`: addresses pods hold and addresses a node's agent has
//! reserved for pods it is starting (neither can go to another pod); for a pool served through
//! shards, whose own `allocatedIPs` stays empty, its `allocatedIPCount` (the addresses pods hold in
//! its shards, summed by the pool controller). Fixed-address pools are carved
//! out of rack ranges, so a binding's addresses count for its app, its rack and its subnet once each.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use spiderpool_ipmath::{IpFamily, IpSet};
use spiderpool_schema::labels::{LABEL_APP, LABEL_RACK, LABEL_SUBNET};
use spiderpool_schema::network::{AddressCounts, Capacity, CapacityEntry};
use spiderpool_schema::{SpiderIPPool, SpiderNetwork, shards};

/// The threshold when the spec sets none (percent in use).
pub const DEFAULT_THRESHOLD_PERCENT: i64 = 90;
/// Type of the status condition.
pub const CONDITION: &str = "CapacityLow";
/// How many app bindings the status lists (the fullest); the metrics have them all.
const MAX_LISTED_APPS: usize = 100;
/// How many nearly full entries the condition's message names.
const MAX_NAMED: usize = 5;

/// One pool's addresses, attributed to its subnet, rack and (fixed-address pools) app binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUse {
    /// Subnet entry (label `spiderpool.spidernet.io/subnet`).
    pub subnet: String,
    /// Rack entry.
    pub rack: String,
    /// App binding, for fixed-address pools.
    pub app: Option<String>,
    /// Family of the pool.
    pub family: IpFamily,
    /// Addresses it can hand out.
    pub total: u64,
    /// Addresses taken.
    pub allocated: u64,
}

/// The addresses no pool of the topology hands out although they may be in a pool's `ips`: each
/// subnet's reserved IPs and gateway, by (subnet, family).
pub fn unusable(network: &SpiderNetwork) -> BTreeMap<(String, IpFamily), IpSet> {
    let mut out = BTreeMap::new();
    for subnet in &network.spec.subnets {
        for (family, block) in subnet.families() {
            let mut set =
                IpSet::parse_list(family, &block.reserved_ips).unwrap_or_else(|_| IpSet::empty(family));
            if let Some(gateway) = block.gateway.as_deref().and_then(|g| g.parse().ok()) {
                set = set.union(&IpSet::from_ip(&gateway)).unwrap_or(set);
            }
            out.insert((subnet.name.clone(), family), set);
        }
    }
    out
}

/// What one live pool of the topology holds; `None` for pools without the labels the compiler puts
/// on its pools, or whose addresses do not parse.
pub fn pool_use(pool: &SpiderIPPool, unusable: &BTreeMap<(String, IpFamily), IpSet>) -> Option<PoolUse> {
    let labels = pool.metadata.labels.as_ref()?;
    let subnet = labels.get(LABEL_SUBNET)?.clone();
    let rack = labels.get(LABEL_RACK)?.clone();
    let family = pool.spec.family()?;
    let mut usable = pool.spec.usable_addresses().ok()?;
    if let Some(set) = unusable.get(&(subnet.clone(), family)) {
        usable = usable.difference(set);
    }
    let status = pool.status.as_ref();
    // A sharded pool records nothing itself: its count is the sum of its shards' (which carry none
    // of the topology's labels, so they are not counted twice).
    let allocated = if shards::is_sharded(&pool.metadata) {
        status
            .and_then(|s| s.allocated_ip_count)
            .map_or(0, |count| usize::try_from(count).unwrap_or(0))
    } else {
        status
            .and_then(|s| s.allocations().ok())
            .map_or(0, |records| records.len())
    };
    Some(PoolUse {
        subnet,
        rack,
        app: labels.get(LABEL_APP).cloned(),
        family,
        total: u64::try_from(usable.len()).unwrap_or(u64::MAX),
        allocated: u64::try_from(allocated).unwrap_or(u64::MAX),
    })
}

#[derive(Default, Clone, Copy)]
struct Tally {
    total: u64,
    allocated: u64,
}

fn counts(tally: Option<&Tally>) -> Option<AddressCounts> {
    tally.map(|t| {
        let total = i64::try_from(t.total).unwrap_or(i64::MAX);
        let allocated = i64::try_from(t.allocated).unwrap_or(i64::MAX);
        AddressCounts {
            total,
            allocated,
            free: total.saturating_sub(allocated).max(0),
        }
    })
}

/// Share in use, in percent (0 for an empty range).
fn percent(counts: &AddressCounts) -> i64 {
    if counts.total <= 0 {
        return 0;
    }
    counts.allocated.saturating_mul(100) / counts.total
}

fn worst(entry: &CapacityEntry) -> i64 {
    [entry.ipv4.as_ref(), entry.ipv6.as_ref()]
        .into_iter()
        .flatten()
        .map(percent)
        .max()
        .unwrap_or(0)
}

/// The capacity status from the topology's pools, and every app binding's entry (the status keeps
/// only the fullest [`MAX_LISTED_APPS`]; the metrics show them all).
pub fn capacity(
    pools: impl IntoIterator<Item = PoolUse>,
    threshold_percent: i64,
) -> (Capacity, Vec<CapacityEntry>) {
    type Tallies = BTreeMap<String, BTreeMap<IpFamily, Tally>>;
    let mut subnets: Tallies = BTreeMap::new();
    let mut racks: Tallies = BTreeMap::new();
    let mut apps: Tallies = BTreeMap::new();
    let add = |map: &mut Tallies, key: &str, pool: &PoolUse| {
        let tally = map
            .entry(key.to_string())
            .or_default()
            .entry(pool.family)
            .or_default();
        tally.total = tally.total.saturating_add(pool.total);
        tally.allocated = tally.allocated.saturating_add(pool.allocated);
    };
    for pool in pools {
        add(&mut subnets, &pool.subnet, &pool);
        add(&mut racks, &pool.rack, &pool);
        if let Some(app) = &pool.app {
            add(&mut apps, app, &pool);
        }
    }
    let entries = |map: Tallies| -> Vec<CapacityEntry> {
        map.into_iter()
            .map(|(name, by_family)| CapacityEntry {
                name,
                ipv4: counts(by_family.get(&IpFamily::V4)),
                ipv6: counts(by_family.get(&IpFamily::V6)),
            })
            .collect()
    };
    let mut apps = entries(apps);
    // Fullest first; names break ties so the order is stable.
    apps.sort_by(|a, b| worst(b).cmp(&worst(a)).then_with(|| a.name.cmp(&b.name)));
    let not_listed = apps.len().saturating_sub(MAX_LISTED_APPS);
    let listed = apps.iter().take(MAX_LISTED_APPS).cloned().collect();
    let status = Capacity {
        threshold_percent,
        subnets: entries(subnets),
        racks: entries(racks),
        apps: listed,
        apps_not_listed: (not_listed > 0).then(|| i64::try_from(not_listed).unwrap_or(i64::MAX)),
    };
    (status, apps)
}

/// The entries at or over the threshold, as `<kind> <name> <family>: <allocated> of <total> in use
/// (<percent>%)`, fullest first.
pub fn nearly_full(capacity: &Capacity) -> Vec<String> {
    let mut found: Vec<(i64, String)> = Vec::new();
    for (kind, entries) in [
        ("subnet", &capacity.subnets),
        ("rack", &capacity.racks),
        ("app binding", &capacity.apps),
    ] {
        for entry in entries {
            for (family, counts) in [("IPv4", &entry.ipv4), ("IPv6", &entry.ipv6)] {
                let Some(counts) = counts else { continue };
                let used = percent(counts);
                if counts.total > 0 && used >= capacity.threshold_percent {
                    found.push((
                        used,
                        format!(
                            "{kind} {} {family}: {} of {} in use ({used}%)",
                            entry.name, counts.allocated, counts.total
                        ),
                    ));
                }
            }
        }
    }
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    found.into_iter().map(|(_, text)| text).collect()
}

/// The `CapacityLow` condition; keeps `lastTransitionTime` while the status stays the same.
pub fn condition(
    capacity: &Capacity,
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let full = nearly_full(capacity);
    let low = !full.is_empty();
    let (reason, message) = if low {
        let mut named: Vec<String> = full.iter().take(MAX_NAMED).cloned().collect();
        if full.len() > MAX_NAMED {
            named.push(format!("and {} more", full.len() - MAX_NAMED));
        }
        (
            "NearlyFull",
            format!(
                "at or over {}% in use: {}",
                capacity.threshold_percent,
                named.join("; ")
            ),
        )
    } else {
        (
            "Available",
            format!(
                "every range, subnet and binding is under {}% in use",
                capacity.threshold_percent
            ),
        )
    };
    let status = if low { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == CONDITION && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: CONDITION.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Labels of the capacity gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct AddressLabels {
    /// SpiderNetwork name.
    pub network: String,
    /// `subnet`, `rack` or `app`.
    pub scope: String,
    /// Name of the subnet, rack or app binding.
    pub name: String,
    /// `IPv4` or `IPv6`.
    pub family: String,
    /// `total`, `allocated` or `free`.
    pub state: String,
}

/// `spiderpool_network_addresses`: the capacity figures of every topology, every app binding included
/// (the status lists only the fullest).
#[derive(Debug, Clone, Default)]
pub struct CapacityMetrics {
    addresses: Family<AddressLabels, Gauge>,
    /// The series each topology has, so the ones of renamed or removed entries go away.
    shown: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Vec<AddressLabels>>>>,
}

impl CapacityMetrics {
    /// Gauges registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = CapacityMetrics::default();
        registry.register(
            "spiderpool_network_addresses",
            "Addresses of a SpiderNetwork's pools per subnet, rack and app binding with fixed addresses: total, allocated and free",
            metrics.addresses.clone(),
        );
        metrics
    }

    /// Replaces the series of `network` with `capacity` and the app bindings of `all_apps` (the
    /// status truncates its list; the metrics do not).
    pub fn set(&self, network: &str, capacity: &Capacity, all_apps: &[CapacityEntry]) {
        let mut series = Vec::new();
        for (scope, entries) in [
            ("subnet", capacity.subnets.as_slice()),
            ("rack", capacity.racks.as_slice()),
            ("app", all_apps),
        ] {
            for entry in entries {
                for (family, counts) in [("IPv4", &entry.ipv4), ("IPv6", &entry.ipv6)] {
                    let Some(counts) = counts else { continue };
                    for (state, value) in [
                        ("total", counts.total),
                        ("allocated", counts.allocated),
                        ("free", counts.free),
                    ] {
                        let labels = AddressLabels {
                            network: network.to_string(),
                            scope: scope.to_string(),
                            name: entry.name.clone(),
                            family: family.to_string(),
                            state: state.to_string(),
                        };
                        self.addresses.get_or_create(&labels).set(value);
                        series.push(labels);
                    }
                }
            }
        }
        let mut shown = self
            .shown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(before) = shown.insert(network.to_string(), series.clone()) {
            for old in before.iter().filter(|l| !series.contains(l)) {
                self.addresses.remove(old);
            }
        }
    }

    /// Removes the series of a deleted topology.
    pub fn forget(&self, network: &str) {
        let mut shown = self
            .shown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for old in shown.remove(network).into_iter().flatten() {
            self.addresses.remove(&old);
        }
    }

    /// The value of one series, if present (for tests).
    pub fn get(&self, labels: &AddressLabels) -> Option<i64> {
        self.addresses.get(labels).map(|g| g.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(
        subnet: &str,
        rack: &str,
        app: Option<&str>,
        family: IpFamily,
        total: u64,
        allocated: u64,
    ) -> PoolUse {
        PoolUse {
            subnet: subnet.into(),
            rack: rack.into(),
            app: app.map(str::to_string),
            family,
            total,
            allocated,
        }
    }

    #[test]
    fn pools_add_up_per_subnet_rack_and_app() {
        let (c, _) = capacity(
            [
                pool("s1", "r1", None, IpFamily::V4, 100, 50),
                pool("s1", "r1", Some("db"), IpFamily::V4, 2, 2),
                pool("s1", "r2", None, IpFamily::V4, 100, 10),
                pool("s1", "r2", None, IpFamily::V6, 100, 0),
            ],
            90,
        );
        assert_eq!(c.subnets.len(), 1);
        assert_eq!(
            c.subnets[0].ipv4,
            Some(AddressCounts {
                total: 202,
                allocated: 62,
                free: 140
            })
        );
        assert_eq!(c.subnets[0].ipv6.unwrap().total, 100);
        assert_eq!(
            c.racks.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["r1", "r2"]
        );
        assert_eq!(c.racks[0].ipv4.unwrap().allocated, 52);
        assert_eq!(c.apps[0].name, "db");
        assert_eq!(nearly_full(&c), ["app binding db IPv4: 2 of 2 in use (100%)"]);
    }

    #[test]
    fn a_pool_counts_its_records_and_a_sharded_pool_the_sum_of_its_shards() {
        use spiderpool_schema::SpiderIPPoolSpec;
        use spiderpool_schema::ippool::PoolIPAllocation;

        let labelled = |name: &str| {
            let mut pool = SpiderIPPool::new(
                name,
                SpiderIPPoolSpec {
                    subnet: "10.0.0.0/24".into(),
                    ips: vec!["10.0.0.10-10.0.0.19".into()],
                    ..SpiderIPPoolSpec::default()
                },
            );
            pool.metadata.labels = Some(
                [(LABEL_SUBNET, "s1"), (LABEL_RACK, "r1")]
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .into(),
            );
            pool
        };
        let none = BTreeMap::new();

        // Unsharded: every record, a node's reservation included.
        let mut pool = labelled("plain");
        let mut status = spiderpool_schema::SpiderIPPoolStatus::default();
        status
            .set_allocations(&BTreeMap::from([
                ("10.0.0.10".to_owned(), PoolIPAllocation::held_by("ns/a", "uid-a")),
                ("10.0.0.11".to_owned(), PoolIPAllocation::reserved_for("n1")),
            ]))
            .unwrap();
        pool.status = Some(status);
        let counted = pool_use(&pool, &none).unwrap();
        assert_eq!((counted.total, counted.allocated), (10, 2));

        // Sharded: no records of its own, the count its controller sums from the shards.
        let mut pool = labelled("big");
        pool.metadata.annotations =
            Some([(shards::ANNOTATION_SHARD_SIZE.to_owned(), "16".to_owned())].into());
        pool.status = Some(spiderpool_schema::SpiderIPPoolStatus {
            allocated_ip_count: Some(7),
            ..Default::default()
        });
        let counted = pool_use(&pool, &none).unwrap();
        assert_eq!((counted.total, counted.allocated), (10, 7));

        // A shard carries none of the topology's labels: not counted again.
        let mut shard = SpiderIPPool::new("big-shard-0", SpiderIPPoolSpec::default());
        shard.metadata.labels = Some([(shards::LABEL_SHARD_OF.to_owned(), "uid".to_owned())].into());
        assert_eq!(pool_use(&shard, &none), None);
    }

    #[test]
    fn the_condition_names_the_fullest_and_keeps_its_transition_time() {
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(100).unwrap());
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(200).unwrap());
        let (low, _) = capacity([pool("s", "r", None, IpFamily::V4, 10, 9)], 90);
        let first = condition(&low, &[], Some(1), &now);
        assert_eq!(
            (first.status.as_str(), first.reason.as_str()),
            ("True", "NearlyFull")
        );
        assert!(
            first.message.contains("rack r IPv4: 9 of 10 in use (90%)"),
            "{}",
            first.message
        );
        let again = condition(&low, std::slice::from_ref(&first), Some(1), &later);
        assert_eq!(again.last_transition_time, now);
        let (fine, _) = capacity([pool("s", "r", None, IpFamily::V4, 10, 8)], 90);
        let after = condition(&fine, &[again], Some(1), &later);
        assert_eq!(
            (after.status.as_str(), after.last_transition_time),
            ("False", later)
        );
    }

    #[test]
    fn only_the_fullest_apps_are_listed() {
        let pools: Vec<PoolUse> = (0..150)
            .map(|i| pool("s", "r", Some(&format!("app{i:03}")), IpFamily::V4, 100, i))
            .collect();
        let (c, all) = capacity(pools, 90);
        assert_eq!(c.apps.len(), 100);
        assert_eq!(c.apps_not_listed, Some(50));
        assert_eq!(c.apps[0].name, "app149", "fullest first");
        assert_eq!(all.len(), 150, "the metrics get every binding");
    }

    #[test]
    fn gauges_follow_the_latest_capacity() {
        let metrics = CapacityMetrics::default();
        let label = |name: &str, state: &str| AddressLabels {
            network: "dc".into(),
            scope: "rack".into(),
            name: name.into(),
            family: "IPv4".into(),
            state: state.into(),
        };
        let (c, apps) = capacity([pool("s", "r1", None, IpFamily::V4, 10, 3)], 90);
        metrics.set("dc", &c, &apps);
        assert_eq!(metrics.get(&label("r1", "free")), Some(7));
        let (renamed, apps) = capacity([pool("s", "r9", None, IpFamily::V4, 10, 3)], 90);
        metrics.set("dc", &renamed, &apps);
        assert_eq!(
            metrics.get(&label("r1", "free")),
            None,
            "stale series are removed"
        );
        assert_eq!(metrics.get(&label("r9", "total")), Some(10));
        metrics.forget("dc");
        assert_eq!(metrics.get(&label("r9", "total")), None);
    }
}
