//! ADD round trips against the fake daemon of the integration tests:
//! - `binary`: the real plugin process (spawn, parse, HTTP over the unix socket, print), as a
//!   runtime pays it per pod interface;
//! - `client`: the in-process HTTP exchange alone (`UnixClient::add`).
//!
//! `cargo bench -p spiderpool-cni --bench add_round_trip` (optional argument: iterations).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "benchmark binary"
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use spiderpool_agent_api::IpamAddArgs;
use spiderpool_cni::client::{Daemon, UnixClient};
use support::{FakeDaemon, Reply, run_plugin};

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let at = |fraction: f64| {
        let index = ((samples.len() as f64 - 1.0) * fraction).round() as usize;
        samples[index]
    };
    let mean = samples.iter().sum::<Duration>() / u32::try_from(samples.len()).unwrap();
    println!(
        "{name:<8} n={:<5} min={:>9.3?} median={:>9.3?} p99={:>9.3?} max={:>9.3?} mean={:>9.3?}",
        samples.len(),
        samples[0],
        at(0.5),
        at(0.99),
        samples[samples.len() - 1],
        mean
    );
}

fn main() {
    let iterations: usize = std::env::args()
        .skip(1)
        .find_map(|argument| argument.parse().ok())
        .unwrap_or(300);
    let answer = json!({
        "ips": [
            {"version": 4, "address": "10.6.0.10/16", "nic": "eth0", "gateway": "10.6.0.1", "vlan": 0},
            {"version": 4, "address": "10.7.0.10/24", "nic": "net1", "gateway": "10.7.0.1", "vlan": 0},
            {"version": 6, "address": "fd00:7::10/64", "nic": "net1", "vlan": 0}
        ],
        "routes": [{"ifName": "net1", "dst": "10.96.0.0/12", "gw": "10.7.0.1"}]
    });
    let daemon = FakeDaemon::start(move |_| Reply::Json(200, answer.clone()));
    let logs = tempfile::tempdir().unwrap();
    let stdin = json!({
        "cniVersion": "1.0.0", "name": "macvlan-ens192", "type": "macvlan",
        "ipam": {
            "type": "spiderpool",
            "log_level": "INFO",
            "log_file_path": logs.path().join("spiderpool.log"),
            "ipam_unix_socket_path": daemon.socket_path(),
        }
    })
    .to_string()
    .into_bytes();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "3f6940ab5ab4"),
        ("CNI_NETNS", "/var/run/netns/cni-1234"),
        ("CNI_IFNAME", "net1"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u",
        ),
    ];

    let mut binary = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let run = run_plugin(&env, &stdin, Duration::from_secs(60));
        assert_eq!(run.code, 0, "{run:?}");
        binary.push(run.elapsed);
    }
    summary("binary", binary);

    let client = UnixClient::new(daemon.socket_path(), Duration::from_secs(30));
    let args = IpamAddArgs {
        container_id: "3f6940ab5ab4".into(),
        if_name: "net1".into(),
        pod_namespace: "default".into(),
        pod_name: "web-0".into(),
        ..IpamAddArgs::default()
    };
    let mut in_process = Vec::with_capacity(iterations * 10);
    for _ in 0..iterations * 10 {
        let started = Instant::now();
        let response = client.add(&args).unwrap();
        in_process.push(started.elapsed());
        assert_eq!(response.ips.len(), 3);
    }
    summary("client", in_process);
}
