//! Helpers for the coordinator tests: the cluster's one SpiderCoordinator (`default`) in the state the
//! operator would leave it, and upstream Spiderpool's own plugins as test peers.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context as _, Result, anyhow, bail};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use spiderpool_schema::SpiderCoordinator;

use crate::tools;

/// The service CIDR the tests' SpiderCoordinator reports (what the operator discovers on a real
/// cluster).
pub const SERVICE_CIDR: &str = "10.233.0.0/18";

/// Creates (once) the `default` SpiderCoordinator and makes it `Synced` with [`SERVICE_CIDR`], as the
/// operator would.
pub async fn synced_coordinator(client: &Client) -> Result<()> {
    let api: Api<SpiderCoordinator> = Api::all(client.clone());
    if api.get_opt("default").await?.is_none() {
        let coordinator: SpiderCoordinator = serde_json::from_value(json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderCoordinator",
            "metadata": {"name": "default"},
            "spec": {"mode": "auto", "podCIDRType": "none", "hijackCIDR": ["169.254.0.0/16"],
                     "tunePodRoutes": true, "podRPFilter": 0, "hostRuleTable": 500, "vethMTU": 1500},
        }))?;
        match api.create(&PostParams::default(), &coordinator).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(error.into()),
        }
    }
    set_phase(client, "Synced", None).await
}

/// Sets the `default` SpiderCoordinator's phase (and reason).
pub async fn set_phase(client: &Client, phase: &str, reason: Option<&str>) -> Result<()> {
    let api: Api<SpiderCoordinator> = Api::all(client.clone());
    let status = json!({"status": {"phase": phase, "reason": reason, "overlayPodCIDR": [], "serviceCIDR": [SERVICE_CIDR]}});
    api.patch_status("default", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .context("patching the SpiderCoordinator's status")?;
    Ok(())
}

/// Upstream Spiderpool's `coordinator` binary, built (once per machine, cached by version) by
/// `tests/tools/build-upstream-spiderpool.sh` from its Go module.
pub fn upstream_coordinator() -> Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR
        .get_or_init(|| build_upstream().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(|error| anyhow!(error))?;
    Ok(dir.join("coordinator"))
}

fn build_upstream() -> Result<PathBuf> {
    let script = tools::tests_dir().join("tools/build-upstream-spiderpool.sh");
    tracing::info!(script = %script.display(), "locating upstream Spiderpool's plugins (builds them on the first run)");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed (it needs Go and the Go module proxy):\n{}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}
