//! Reading the API server's Prometheus metrics in tests and benchmarks.

use anyhow::Result;
use kube::Client;

/// The API server's `/metrics` text.
pub async fn apiserver_metrics(client: &Client) -> Result<String> {
    Ok(client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?)
}

/// The sum of the samples of `metric` whose labels contain every one of `labels` (`key="value"`).
pub fn metric_sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(metric) && line[metric.len()..].starts_with('{'))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_samples_whose_labels_match() {
        let text = "# HELP x\nx_total{a=\"1\",b=\"2\"} 3\nx_total{a=\"1\",b=\"3\"} 4\nx_total_other{a=\"1\"} 100\nx_total{a=\"2\"} 5\n";
        assert_eq!(metric_sum(text, "x_total", &["a=\"1\""]), 7.0);
        assert_eq!(metric_sum(text, "x_total", &["a=\"1\"", "b=\"3\""]), 4.0);
        assert_eq!(metric_sum(text, "x_total", &[]), 12.0);
        assert_eq!(metric_sum(text, "y_total", &[]), 0.0);
    }
}
