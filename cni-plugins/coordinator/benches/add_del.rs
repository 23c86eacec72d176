//! Coordinator ADD and DEL per pod against the host kernel, the node daemon's round trip excluded:
//! each iteration makes a fresh node and pod namespace (untimed), then times the plugin's in-process
//! work for the pod's first interface — netlink in both namespaces, the plan, the veth pair, routes,
//! rules, neighbours, iptables — and then its DEL. Dual-stack, so both iptables and ip6tables run.
//! Needs root.
//!
//! `cargo bench -p spiderpool-coordinator --bench add_del [-- ITERATIONS]` (default 30).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "benchmark binary"
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use spiderpool_coordinator::plugin::{KernelNetwork, Network};
use support::{config, on_node, place};

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let at = |fraction: f64| {
        let index = ((samples.len() as f64 - 1.0) * fraction).round() as usize;
        samples[index]
    };
    println!(
        "{name:<4} n={} median {:.1} ms  p90 {:.1} ms  max {:.1} ms",
        samples.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
}

fn main() {
    let iterations: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(30);
    let config = config();
    let ips: Vec<IpAddr> = ["10.6.0.10", "fd00:6::10"]
        .iter()
        .map(|ip| ip.parse().unwrap())
        .collect();
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    for round in 0..iterations {
        let place = place();
        let pod = format!("/run/netns/{}", place.name("pod"));
        let container = format!("be7c4{round:06}");
        let (add, del) = on_node(&place, || {
            let started = Instant::now();
            KernelNetwork.add(&config, "eth0", &container, &pod).expect("ADD");
            let add = started.elapsed();
            let started = Instant::now();
            KernelNetwork
                .del(&container, Some(&pod), "eth0", &ips, 500)
                .expect("DEL");
            (add, started.elapsed())
        });
        adds.push(add);
        dels.push(del);
    }
    summary("ADD", adds);
    summary("DEL", dels);
}
