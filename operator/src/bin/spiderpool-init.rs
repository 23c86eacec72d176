//! `spiderpool-init`: the chart's post-install Job (upstream's `spiderpool-init`). Creates the default
//! SpiderCoordinator, default pools and subnets, and the default SpiderMultusConfig that the
//! `SPIDERPOOL_INIT_*` environment asks for, each only when absent; see `spiderpool_operator::init`.
//! `SPIDERPOOL_INIT_TIMEOUT_SECONDS` (default 600) bounds how long it waits for the webhooks.

use std::process::ExitCode;
use std::time::Duration;

use spiderpool_operator::init::{self, InitConfig, Retry};
use spiderpool_operator::telemetry;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    telemetry::init("spiderpool-init");
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    use anyhow::Context as _;
    let config = InitConfig::from_env(|name| std::env::var(name).ok())?;
    let mut retry = Retry::default();
    if let Ok(text) = std::env::var("SPIDERPOOL_INIT_TIMEOUT_SECONDS") {
        let seconds: u64 = text.parse().with_context(|| {
            format!("SPIDERPOOL_INIT_TIMEOUT_SECONDS={text:?} is not a number of seconds")
        })?;
        retry.deadline = Duration::from_secs(seconds);
    }
    let client = kube::Client::try_default()
        .await
        .context("cannot configure a Kubernetes client (in-cluster service account or KUBECONFIG)")?;
    let report = init::run(client, &config, retry).await?;
    tracing::info!(objects = report.len(), "spiderpool-init finished");
    Ok(())
}
