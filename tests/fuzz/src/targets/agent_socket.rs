//! Requests to the node daemon's IPAM socket (what the plugin, or anything root on the node, sends):
//! the real router and allocator of `spiderpool-agent`, served on a unix socket, over the in-memory
//! API server fake with two pools, a namespace and three pods on this node.
//!
//! Input: `METHOD TARGET` on the first line and the body after it (sent as a well-formed HTTP/1.1
//! request, as the plugin sends it); an input whose first line is not that is written to the
//! socket as raw bytes. The daemon must answer every request within a few seconds.

use std::io::{Read as _, Write as _};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use spiderpool_cni_common::http::{Parse, parse_response, render_request};
use spiderpool_node_daemon::allocator::Allocator;
use spiderpool_node_daemon::api::ClusterApi;
use spiderpool_node_daemon::api::fake::FakeApi;
use spiderpool_node_daemon::config::{Config, LeaseTuning};
use spiderpool_node_daemon::health::Health;
use spiderpool_node_daemon::metrics::Metrics;
use spiderpool_node_daemon::server::{AppState, ipam_router};
use spiderpool_node_daemon::socket;
use spiderpool_node_daemon::writer::PoolWriters;
use spiderpool_schema::{SpiderIPPool, SpiderIPPoolSpec};

use super::{Shape, Target};

pub const TARGET: Target = Target {
    name: "agent_socket",
    run,
    shape: Shape::Text,
    dictionary: &[
        b"POST /v1/ipam/ip\n",
        b"DELETE /v1/ipam/ip\n",
        b"DELETE /v1/ipam/ips\n",
        b"POST /v1/ipam/gc\n",
        b"GET /v1/workloadendpoint?podNamespace=ns&podName=p1\n",
        b"\"containerID\"",
        b"\"podUID\"",
        b"\"defaultIPv4IPPool\"",
        b"\"ifName\"",
        b"\"validAttachments\"",
        b"\"p1\"",
        b"\"v4\"",
        b"%00",
        b"%2F..",
    ],
};

/// How long the daemon may take for one request before it counts as hung.
const ANSWER_DEADLINE: Duration = Duration::from_secs(5);

/// The daemon, started once per process: its socket.
fn daemon() -> &'static PathBuf {
    static SOCKET: OnceLock<PathBuf> = OnceLock::new();
    SOCKET.get_or_init(|| {
        let socket = crate::scratch_dir().join("agent.sock");
        let path = socket.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let state = world();
                let Ok(lock) = socket::lock(&path, "n1", Duration::ZERO).await else {
                    return;
                };
                // The socket file goes with the scratch directory.
                let Ok((listener, _file)) = socket::bind(&path, &lock, Metrics::new()) else {
                    return;
                };
                let _ = ready_tx.send(());
                let _ = axum::serve(listener, ipam_router(state)).await;
            });
        });
        // Without a daemon every input fails the same way: the run then reports that it saw no answer.
        let _ = ready_rx.recv_timeout(Duration::from_secs(30));
        socket
    })
}

fn world() -> AppState {
    let (fake, stores) = FakeApi::new("n1");
    let mut config = Config::new("n1");
    config.request_timeout = Duration::from_secs(2);
    config.lease = LeaseTuning {
        max_size: 2,
        ..LeaseTuning::default()
    };
    let metrics = Metrics::new();
    let health = Health::new(Duration::from_secs(30));
    let api: Arc<dyn ClusterApi> = fake.clone();
    let writers = PoolWriters::new(
        api.clone(),
        &config,
        stores.clone(),
        metrics.clone(),
        health.clone(),
    );
    let allocator = Allocator::new(api, config, stores, writers, metrics);
    for (name, subnet, ips, gateway) in [
        ("v4", "10.0.0.0/24", "10.0.0.10-10.0.0.40", "10.0.0.1"),
        ("v6", "fd00::/120", "fd00::10-fd00::40", "fd00::1"),
    ] {
        fake.put_pool(SpiderIPPool::new(
            name,
            SpiderIPPoolSpec {
                subnet: subnet.into(),
                ips: vec![ips.into()],
                gateway: Some(gateway.into()),
                ..Default::default()
            },
        ));
    }
    if let Ok(namespace) =
        serde_json::from_value::<Namespace>(serde_json::json!({"metadata": {"name": "ns"}}))
    {
        fake.put_namespace(namespace);
    }
    let annotations = [
        serde_json::json!({}),
        serde_json::json!({"ipam.spidernet.io/ippool": "{\"ipv4\":[\"v4\"],\"ipv6\":[\"v6\"]}"}),
        serde_json::json!({"ipam.spidernet.io/ippools":
            "[{\"interface\":\"eth0\",\"ipv4\":[\"v4\"]},{\"interface\":\"net1\",\"ipv6\":[\"v6\"]}]"}),
    ];
    for (i, annotations) in annotations.into_iter().enumerate() {
        let pod = serde_json::json!({
            "metadata": {"name": format!("p{i}"), "namespace": "ns", "uid": format!("uid-p{i}"), "annotations": annotations},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
        });
        if let Ok(pod) = serde_json::from_value::<Pod>(pod) {
            fake.put_pod(pod);
        }
    }
    health.set_started();
    AppState { allocator, health }
}

/// The bytes to send for an input, and whether they are raw (maybe not a whole request).
fn request(data: &[u8]) -> (Vec<u8>, bool) {
    let (first, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let first = String::from_utf8_lossy(first);
    let mut words = first.split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some(method), Some(target), None)
            if !method.is_empty()
                && method.bytes().all(|b| b.is_ascii_uppercase())
                && target.starts_with('/') =>
        {
            let body = (!body.is_empty() || method != "GET").then_some(body);
            (render_request(method, target, body), false)
        }
        _ => (data.to_vec(), true),
    }
}

#[allow(
    clippy::panic,
    reason = "a panic is how a target reports a finding to the engine"
)]
fn run(data: &[u8]) -> String {
    let socket = daemon();
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return "no daemon".to_owned();
    };
    let _ = stream.set_read_timeout(Some(ANSWER_DEADLINE));
    let _ = stream.set_write_timeout(Some(ANSWER_DEADLINE));
    let (bytes, raw) = request(data);
    if stream.write_all(&bytes).is_err() {
        return "write refused".to_owned();
    }
    // A raw input may be a partial request: the end of the stream says there is no more. (A whole
    // request keeps the stream open: the server closes a connection whose read side ended.)
    if raw {
        let _ = stream.shutdown(Shutdown::Write);
    }
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    if let Err(error) = &read
        && matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    {
        panic!("the daemon did not answer within {ANSWER_DEADLINE:?}");
    }
    match parse_response(&answer, true) {
        Ok(Parse::Complete(response)) => {
            let body: String = String::from_utf8_lossy(&response.body).chars().take(60).collect();
            format!("status {} {body}", response.status)
        }
        Ok(Parse::Incomplete) => "incomplete answer".to_owned(),
        Err(error) => format!("unparsed answer: {error}"),
    }
}
