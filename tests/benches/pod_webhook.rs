//! The pod webhook (app bindings) against the real API server: pods created at a steady rate in a
//! namespace a SpiderNetwork binds, each mutated by the operator's webhook server (run in this
//! process on a runtime of its own, release build, TLS, registered by the operator's own
//! registration code with a 127.0.0.1 URL where the chart has a Service).
//!
//! Reports the webhook's answer time twice, from histograms read before and after:
//! - as the API server measures its call (`apiserver_admission_webhook_admission_duration_seconds`
//!   of the pod webhook: encoding the pod, the connection, the webhook's answer, applying its patch;
//!   the lowest bucket is 5 ms);
//! - as the webhook server measures its answer (`spiderpool_operator_webhook_duration_seconds`,
//!   buckets from 0.5 ms);
//!
//! plus each create's round trip as the client sees it, and checks that every pod got its binding's
//! annotations.
//!
//! `cargo bench -p spiderpool-tests --bench pod_webhook`; knobs: `BENCH_RATE` (pods per second, 200),
//! `BENCH_SECONDS` (how long, 10).

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark report"
)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use common::{env_or, percentile};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt as _};
use serde_json::json;
use spiderpool_operator::webhook::metrics::DURATION_METRIC;
use spiderpool_schema::SpiderNetwork;
use spiderpool_tests::admission::{Webhooks, wait_until_pod_webhook_binds};
use spiderpool_tests::{ClusterOptions, TestCluster};

const NAMESPACE: &str = "bench";
const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
const WEBHOOK: &str = spiderpool_operator::webhook::pod::WEBHOOK_NAME;
const APISERVER_METRIC: &str = "apiserver_admission_webhook_admission_duration_seconds";

/// The cumulative bucket counts of histogram `metric` in a Prometheus text `text`, by upper bound
/// (`+Inf` as infinity), over the series whose labels contain every one of `labels`.
fn buckets(text: &str, metric: &str, labels: &[&str]) -> Result<BTreeMap<String, u64>> {
    let mut buckets = BTreeMap::new();
    let prefix = format!("{metric}_bucket{{");
    for line in text.lines() {
        if !line.starts_with(&prefix) || !labels.iter().all(|label| line.contains(label)) {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').context("a metric line has a value")?;
        let le = series
            .split("le=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .context("a bucket has an upper bound")?;
        // The same bound may appear once per `rejected`/`type` label set: add them up.
        *buckets.entry(le.to_owned()).or_default() += value.parse::<f64>()? as u64;
    }
    Ok(buckets)
}

/// The API server's histogram of its calls to the pod webhook (its lowest bucket is 5 ms).
async fn apiserver_buckets(client: &Client) -> Result<BTreeMap<String, u64>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client
        .request_text(request)
        .await
        .context("scraping the API server")?;
    buckets(
        &text,
        APISERVER_METRIC,
        &[&format!("name=\"{WEBHOOK}\""), "operation=\"CREATE\""],
    )
}

/// The webhook server's own histogram of its pod answers.
fn server_buckets(webhooks: &Webhooks) -> Result<BTreeMap<String, u64>> {
    buckets(
        &webhooks.metrics_text()?,
        DURATION_METRIC,
        &[&format!(
            "webhook=\"{}\"",
            spiderpool_operator::webhook::pod::PATH
        )],
    )
}

/// Calls counted between two readings of a histogram, and the share of them within each bound.
struct Counted {
    calls: u64,
    within: BTreeMap<String, u64>,
}

impl Counted {
    fn between(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Self {
        let within: BTreeMap<String, u64> = after
            .iter()
            .map(|(le, n)| (le.clone(), n - before.get(le).copied().unwrap_or(0)))
            .collect();
        let calls = within.get("+Inf").copied().unwrap_or(0);
        Counted { calls, within }
    }

    fn share(&self, le: &str) -> f64 {
        self.within.get(le).copied().unwrap_or(0) as f64 / self.calls.max(1) as f64
    }

    /// The lowest bound holding 99% of the calls.
    fn p99_bound(&self) -> String {
        let mut bounds: Vec<(f64, &String)> = self
            .within
            .keys()
            .filter_map(|le| le.parse::<f64>().ok().map(|b| (b, le)))
            .collect();
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        bounds
            .into_iter()
            .find(|(_, le)| self.share(le) >= 0.99)
            .map_or("beyond the last bucket".to_owned(), |(_, le)| {
                format!("at most {le} s")
            })
    }
}

fn topology() -> Result<SpiderNetwork> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderNetwork",
        "metadata": {"name": "bench"},
        "spec": {
            "subnets": [{"name": "s", "ipv4": {"cidr": "10.0.0.0/16", "gateway": "10.0.0.1"}}],
            "racks": [{"name": "r1", "nodeSelector": {"matchLabels": {"rack": "r1"}}, "uplinks": ["ens1"],
                       "ranges": [{"subnet": "s", "ipv4": ["10.0.1.0-10.0.200.255"]}]}],
            "networks": [{"name": "data", "type": "macvlan", "subnet": "s", "master": "ens1",
                          "namespaces": [NAMESPACE]}],
            "apps": [{"name": "web", "namespace": NAMESPACE, "podSelector": {"matchLabels": {"app": "web"}},
                      "interfaces": [{"network": "data"}], "defaultRouteInterface": "net1"}]
        }
    }))?)
}

fn pod(name: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/none:1"}]}
    }))?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let rate = env_or::<u64>("BENCH_RATE", 200).max(1);
    let seconds = env_or::<u64>("BENCH_SECONDS", 10).max(1);
    let cluster = TestCluster::start(ClusterOptions {
        install_nad_crd: false,
        ..ClusterOptions::apiserver_only()
    })
    .await?;
    let client = cluster.client()?;
    spiderpool_tests::ipam::install_spiderpool_crds(&client).await?;
    let webhooks = Webhooks::start(&client, "spiderpool-bench").await?;
    let outcome = measure(client, &webhooks, rate, seconds).await;
    webhooks.stop().await?;
    outcome
}

/// Creates `rate` pods a second for `seconds` and reports the webhook's answer times.
async fn measure(client: Client, webhooks: &Webhooks, rate: u64, seconds: u64) -> Result<()> {
    let total = rate * seconds;
    spiderpool_tests::objects::ensure_namespace(&client, NAMESPACE).await?;
    // No kube-controller-manager here to make the namespace's default ServiceAccount, which the
    // ServiceAccount admission plugin requires of every pod.
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &account)
        .await?;
    Api::<SpiderNetwork>::all(client.clone())
        .create(&PostParams::default(), &topology()?)
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    wait_until_pod_webhook_binds(&pods, &pod("probe")?, NETWORKS, Duration::from_secs(60)).await?;
    let before = (apiserver_buckets(&client).await?, server_buckets(webhooks)?);

    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let pods = pods.clone();
        let pod = pod(&format!("web-{i}"))?;
        tasks.spawn(async move {
            let sent = Instant::now();
            let created = pods.create(&PostParams::default(), &pod).await;
            (sent.elapsed(), created)
        });
    }
    let mut latencies = Vec::new();
    let mut unbound = 0_usize;
    let mut failed = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (elapsed, created) = joined?;
        match created {
            Ok(pod) if pod.annotations().contains_key(NETWORKS) => latencies.push(elapsed),
            Ok(_) => unbound += 1,
            Err(err) => failed.push(err.to_string()),
        }
    }
    let took = started.elapsed();
    let after = (apiserver_buckets(&client).await?, server_buckets(webhooks)?);

    latencies.sort();
    let apiserver = Counted::between(&before.0, &after.0);
    let server = Counted::between(&before.1, &after.1);
    let calls = apiserver.calls;
    println!(
        "pod webhook: {total} pods at {rate}/s, created in {:.2} s",
        took.as_secs_f64()
    );
    println!(
        "  API server's measure of its call to the webhook: {calls} calls, {:.2}% within 5 ms, {:.2}% within 25 ms; p99 {}",
        apiserver.share("0.005") * 100.0,
        apiserver.share("0.025") * 100.0,
        apiserver.p99_bound()
    );
    println!(
        "  the webhook server's own answer time: {} answers, {:.2}% within 0.5 ms, {:.2}% within 1 ms, {:.2}% within 5 ms; p99 {}",
        server.calls,
        server.share("0.0005") * 100.0,
        server.share("0.001") * 100.0,
        server.share("0.005") * 100.0,
        server.p99_bound()
    );
    println!(
        "  create round trip (client): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "  bound {}, not bound {unbound}, failed {}",
        latencies.len(),
        failed.len()
    );
    ensure!(
        unbound == 0 && failed.is_empty(),
        "every pod is created and bound; failures: {:?}",
        failed.iter().take(3).collect::<Vec<_>>()
    );
    ensure!(
        calls >= total,
        "the API server counted {calls} webhook calls for {total} pods"
    );
    ensure!(
        server.calls >= total,
        "the webhook server timed {} answers for {total} pods",
        server.calls
    );
    Ok(())
}
