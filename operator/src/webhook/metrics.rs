//! How long the webhook server takes to answer, per webhook path: the server's own share of an
//! admission call. The API server's `apiserver_admission_webhook_admission_duration_seconds` adds its
//! own work (encoding the object, the connection, applying the patch) and starts at 5 ms, so it cannot
//! tell how much of a slow call was the webhook's.

use std::future::Future;
use std::time::Instant;

use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Buckets in seconds: fine below 5 ms, where a healthy webhook answers.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The name the answer times are registered under (`_bucket`, `_sum` and `_count` are added to it).
pub const DURATION_METRIC: &str = "spiderpool_operator_webhook_duration_seconds";

/// Labels of one webhook's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The webhook's path, e.g. `/mutate-pod`.
    pub webhook: String,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The webhook server's metrics; clones share the series.
#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    duration: Family<WebhookLabels, Histogram, fn() -> Histogram>,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        WebhookMetrics {
            duration: Family::new_with_constructor(histogram),
        }
    }
}

impl WebhookMetrics {
    /// Metrics registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = WebhookMetrics::default();
        registry.register(
            DURATION_METRIC,
            "Time the webhook server takes to answer one admission request, from its body being read to the answer being encoded, per webhook path",
            metrics.duration.clone(),
        );
        metrics
    }

    /// Runs `answer` and records how long it and the encoding of its response took under `path`.
    pub async fn time<R: IntoResponse>(&self, path: &str, answer: impl Future<Output = R>) -> Response {
        let started = Instant::now();
        let response = answer.await.into_response();
        self.duration
            .get_or_create(&WebhookLabels {
                webhook: path.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[tokio::test]
    async fn an_answer_is_counted_under_its_path_in_the_registered_histogram() {
        let mut registry = Registry::default();
        let metrics = WebhookMetrics::register(&mut registry);
        metrics.time("/mutate-pod", async { "ok" }).await;
        metrics.time("/mutate-pod", async { "ok" }).await;
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(&format!("{DURATION_METRIC}_count{{webhook=\"/mutate-pod\"}} 2")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{DURATION_METRIC}_bucket{{le=\"0.0005\",webhook=\"/mutate-pod\"}} 2"
            )),
            "{text}"
        );
    }
}
