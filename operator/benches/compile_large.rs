//! Benchmark: compile the large generated topology (200 racks x 40 nodes, 30 dual-stack subnets, 2,000
//! app bindings) and expand its interface templates against 8,000 nodes.
//!
//! Run: `cargo bench -p spiderpool-operator --bench compile_large`. Prints min/median/max wall time of
//! `compile` over several runs and the process's peak resident memory (VmHWM) before and after.
//! A measurement, not a test: nothing here asserts a time.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use spiderpool_operator::compile::{compile, expand_interface_tasks};
use spiderpool_operator::synthetic::{Shape, topology};

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The operator's allocator (see `src/bin/spiderpool-operator.rs`), so the figures are the operator's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let shape = Shape::LARGE;
    let network = topology(shape);
    let before = peak_rss_kib();
    let mut times: Vec<Duration> = Vec::new();
    let mut rendered = None;
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    for _ in 0..runs.max(1) {
        // Drop the previous result first, so peak memory is that of one compilation.
        drop(rendered.take());
        let start = Instant::now();
        let out = match compile(&network) {
            Ok(out) => out,
            Err(problems) => {
                eprintln!("the large topology must compile, but: {problems:#?}");
                std::process::exit(1);
            }
        };
        times.push(start.elapsed());
        rendered = Some(out);
    }
    let rendered = rendered.unwrap_or_default();
    let start = Instant::now();
    let valid = spiderpool_schema::validation::Validate::validate(&network).is_ok();
    println!("of which validate(): {:?} (valid: {valid})", start.elapsed());
    times.sort();
    let after = peak_rss_kib();
    let summary = rendered.summary();
    println!(
        "compile: {} racks, {} subnets (dual-stack), {} apps -> {} pools, {} SMCs, {} NADs, {} templates",
        shape.racks,
        shape.subnets,
        shape.apps,
        summary.pools.len(),
        summary.multus_configs,
        summary.network_attachment_definitions,
        summary.interface_templates
    );
    println!(
        "compile time: min {:?}, median {:?}, max {:?} over {} runs",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        times.len()
    );
    println!(
        "peak RSS: {} KiB before compiling, {} KiB after (process total)",
        before, after
    );

    let nodes: Vec<Node> = (0..shape.racks * 40)
        .map(|i| Node {
            metadata: ObjectMeta {
                name: Some(format!("node{i}")),
                labels: Some(BTreeMap::from([(
                    "topology.example.com/rack".to_string(),
                    format!("rack{}", i / 40),
                )])),
                ..ObjectMeta::default()
            },
            ..Node::default()
        })
        .collect();
    let start = Instant::now();
    let tasks = expand_interface_tasks(&network, &rendered.interface_templates, &nodes).unwrap_or_default();
    println!(
        "expand: {} nodes -> {} interface tasks in {:?}",
        nodes.len(),
        tasks.len(),
        start.elapsed()
    );
    println!("peak RSS at end: {} KiB", peak_rss_kib());
}
