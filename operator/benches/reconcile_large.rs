//! Benchmark: the CPU side of one SpiderNetwork reconcile of the large generated topology (16,000
//! pools) against a cache that already holds every child, without an API server: compile, stamp
//! (owners and rendered hashes), plan. Two cases:
//! - first reconcile after the operator starts: every child is compared field by field with its live
//!   object (JSON trees of both);
//! - every later reconcile: children are known unchanged at their resourceVersion, so none is.
//!
//! Run: `cargo bench -p spiderpool-operator --bench reconcile_large`. Prints min/median of each
//! stage over several runs. A measurement, not a test: nothing here asserts a time (it does check
//! that the plan writes nothing, which is what a no-op reconcile must do).

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use spiderpool_operator::compile::compile;
use spiderpool_operator::controller::network::desired_children;
use spiderpool_operator::controller::network::plan::{
    ChildKey, ChildObject, DesiredChild, LiveObject, RecentWrites, plan,
};
use spiderpool_operator::synthetic::{Shape, topology};
use spiderpool_schema::SpiderNetwork;

/// The child as the API server would hold it after applying it (uid and resourceVersion added).
fn live(child: &DesiredChild, rv: u64) -> LiveObject {
    let mut object = child.object.clone();
    let meta = object.meta_mut();
    meta.uid = Some(format!("uid-{}", child.key.name));
    meta.resource_version = Some(rv.to_string());
    match object {
        ChildObject::ReservedIp(o) => LiveObject::ReservedIp(Arc::new(*o)),
        ChildObject::IpPool(o) => LiveObject::IpPool(Arc::new(*o)),
        ChildObject::MultusConfig(o) => LiveObject::MultusConfig(Arc::new(*o)),
        ChildObject::InterfaceTask(o) => LiveObject::InterfaceTask(Arc::new(*o)),
    }
}

struct Timings {
    compile: Duration,
    stamp: Duration,
    plan: Duration,
}

fn reconcile(
    network: &SpiderNetwork,
    owner: &OwnerReference,
    live: &BTreeMap<ChildKey, LiveObject>,
    recent: &mut RecentWrites,
) -> Timings {
    let start = Instant::now();
    let rendered = match compile(network) {
        Ok(rendered) => rendered,
        Err(problems) => {
            eprintln!("the large topology must compile, but: {problems:#?}");
            std::process::exit(1);
        }
    };
    let compiled = Instant::now();
    let desired = match desired_children(rendered, Vec::new(), owner) {
        Ok(desired) => desired,
        Err(error) => {
            eprintln!("stamping failed: {error}");
            std::process::exit(1);
        }
    };
    let stamped = Instant::now();
    recent.prune(live);
    let planned = plan("large", desired, live, recent);
    let done = Instant::now();
    if planned.writes() != 0 {
        eprintln!(
            "a reconcile against an up-to-date cache planned {} writes",
            planned.writes()
        );
        std::process::exit(1);
    }
    Timings {
        compile: compiled - start,
        stamp: stamped - compiled,
        plan: done - stamped,
    }
}

fn report(case: &str, mut timings: Vec<Timings>) {
    let mut line = format!("{case}:");
    for (stage, pick) in [
        ("compile", (|t: &Timings| t.compile) as fn(&Timings) -> Duration),
        ("stamp", |t| t.stamp),
        ("plan", |t| t.plan),
        ("total", |t| t.compile + t.stamp + t.plan),
    ] {
        let mut values: Vec<Duration> = timings.iter().map(pick).collect();
        values.sort();
        line.push_str(&format!(
            " {stage} min {:.1} ms / median {:.1} ms;",
            values[0].as_secs_f64() * 1000.0,
            values[values.len() / 2].as_secs_f64() * 1000.0
        ));
    }
    timings.clear();
    println!("{line}");
}

/// The operator's allocator (see `src/bin/spiderpool-operator.rs`), so the figures are the operator's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let network = topology(Shape::LARGE);
    let owner = OwnerReference {
        api_version: "spiderpool.spidernet.io/v2beta1".into(),
        kind: "SpiderNetwork".into(),
        name: "large".into(),
        uid: "uid-large".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let rendered = compile(&network).unwrap_or_default();
    let live: BTreeMap<ChildKey, LiveObject> = desired_children(rendered, Vec::new(), &owner)
        .unwrap_or_default()
        .iter()
        .map(|child| (child.key.clone(), live(child, 7)))
        .collect();
    println!("{} live children", live.len());

    let first: Vec<Timings> = (0..runs)
        .map(|_| reconcile(&network, &owner, &live, &mut RecentWrites::default()))
        .collect();
    report("first reconcile after a start (every child compared)", first);

    let mut recent = RecentWrites::default();
    reconcile(&network, &owner, &live, &mut recent);
    let steady: Vec<Timings> = (0..runs)
        .map(|_| reconcile(&network, &owner, &live, &mut recent))
        .collect();
    report("later reconciles (children known unchanged)", steady);
}
