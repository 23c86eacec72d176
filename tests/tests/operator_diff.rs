//! `spiderctl diff -f FILE` against a real API server with the SpiderNetwork controller running:
//! a topology the controller has applied diffs clean; an edit names the pool field that changes and
//! the children that would be pruned; an edit that takes allocated addresses out of a pool says which;
//! a broken file exits 2 naming the field.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod operator_support;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use operator_support::*;
use serde_json::json;
use spiderpool_schema::labels::{LABEL_RACK, LABEL_SUBNET, LABEL_TOPOLOGY};
use spiderpool_schema::{SpiderIPPool, SpiderNetwork};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What one run of spiderctl gave.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `spiderctl diff -f FILE --kubeconfig ...` (with `stdin` when FILE is `-`).
fn spiderctl_diff(cluster: &spiderpool_tests::TestCluster, file: &str, stdin: Option<&str>) -> Result<Run> {
    use std::io::Write as _;
    let spiderctl = spiderpool_tests::tools::workspace_binary("spiderpool-operator", "spiderctl", false)?;
    let mut child = std::process::Command::new(spiderctl)
        .args(["diff", "-f", file, "--kubeconfig"])
        .arg(cluster.kubeconfig_path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running spiderctl diff")?;
    let mut input = child.stdin.take().context("stdin")?;
    input.write_all(stdin.unwrap_or_default().as_bytes())?;
    drop(input);
    let output = child.wait_with_output()?;
    Ok(Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

fn write_yaml(path: &Path, network: &SpiderNetwork) -> Result<String> {
    std::fs::write(path, serde_saphyr::to_string(network)?)?;
    Ok(path.display().to_string())
}

/// The IPv4 rack pool of `rack` and `subnet`.
async fn rack_pool(client: &Client, topology: &str, rack: &str, subnet: &str) -> Result<SpiderIPPool> {
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let selector = format!("{LABEL_TOPOLOGY}={topology},{LABEL_RACK}={rack},{LABEL_SUBNET}={subnet}");
    pools
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .find(|p| p.spec.ip_version == Some(4) && p.labels().get("spiderpool.spidernet.io/app").is_none())
        .with_context(|| format!("no IPv4 rack pool for {selector}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_shows_what_applying_a_file_would_change() -> Result<()> {
    let _turn = SERIAL.lock().await;
    let (cluster, client) = cluster().await?;
    let _running = start_network(&client);
    let sfx = suffix();
    let mut network = example("dual-stack.yaml")?;
    let namespaces = localize(&mut network, &sfx);
    let name = network.name_any();
    let dir = tempfile::tempdir()?;
    let file = write_yaml(&dir.path().join("topology.yaml"), &network)?;

    // The apps' namespaces do not exist yet: the API server refuses to create the children there
    // (every new child is dry-run created), and the diff says which namespace to create.
    let refused = spiderctl_diff(cluster, &file, None)?;
    assert_eq!(refused.code, Some(2), "{refused}");
    assert!(
        refused.stderr.contains(&format!(
            "SpiderMultusConfig shop-{sfx}/frontend: namespace `shop-{sfx}` does not exist"
        )),
        "{refused}"
    );
    for ns in namespaces {
        ensure_namespace(&client, &ns).await?;
    }

    // Not applied yet: the SpiderNetwork and every child would be created.
    let before = spiderctl_diff(cluster, &file, None)?;
    assert_eq!(before.code, Some(1), "{before}");
    assert!(
        before.stdout.contains(&format!("+ SpiderNetwork {name}\n")),
        "{before}"
    );
    assert!(before.stdout.contains("+ SpiderIPPool "), "{before}");
    assert!(
        before
            .stdout
            .contains(&format!("+ SpiderMultusConfig shop-{sfx}/frontend")),
        "{before}"
    );

    let api: Api<SpiderNetwork> = Api::all(client.clone());
    api.create(&PostParams::default(), &network).await?;
    wait_reason(&client, &name, "Applied", READY_TIMEOUT).await?;

    // Applied: the same file diffs clean, from a file and from stdin.
    let clean = spiderctl_diff(cluster, &file, None)?;
    assert_eq!(clean.code, Some(0), "{clean}");
    assert_eq!(clean.stdout, "", "{clean}");
    assert!(
        clean
            .stderr
            .contains(&format!("SpiderNetwork {name}: no changes")),
        "{clean}"
    );
    let text = std::fs::read_to_string(&file)?;
    let piped = spiderctl_diff(cluster, "-", Some(&text))?;
    assert_eq!(piped.code, Some(0), "{piped}");
    assert_eq!(piped.stdout, "", "{piped}");

    // An edit: zone-a's frontend range shrinks, and the backend network (with the app that uses it)
    // goes.
    let pool = rack_pool(&client, &name, "zone-a", "frontend").await?;
    let mut edited = network.clone();
    edited.spec.racks[0].ranges[0].ipv4 = vec!["10.30.0.10-10.30.0.255".into()];
    edited.spec.networks.retain(|n| n.name != "backend");
    edited.spec.apps.retain(|a| a.name != "orders-db");
    let edited_file = write_yaml(&dir.path().join("edited.yaml"), &edited)?;
    let changed = spiderctl_diff(cluster, &edited_file, None)?;
    assert_eq!(changed.code, Some(1), "{changed}");
    let lines: Vec<&str> = changed.stdout.lines().collect();
    let pool_line = lines
        .iter()
        .position(|l| *l == format!("~ SpiderIPPool {}", pool.name_any()))
        .with_context(|| format!("the changed pool {}: {changed}", pool.name_any()))?;
    assert!(
        lines[pool_line + 1].trim_start().starts_with("spec.ips[0]: ")
            && lines[pool_line + 1].ends_with("-> \"10.30.0.10-10.30.0.255\""),
        "{changed}"
    );
    assert!(
        changed.stdout.contains(&format!("~ SpiderNetwork {name}\n"))
            && changed.stdout.contains("spec.racks[0].ranges[0].ipv4[0]: "),
        "{changed}"
    );
    assert!(
        changed.stdout.contains(&format!(
            "- SpiderMultusConfig shop-{sfx}/backend (no longer rendered)"
        )),
        "{changed}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("- SpiderIPPool ") && l.contains("orders-db")),
        "the binding's fixed-address pools are pruned: {changed}"
    );
    assert!(!changed.stdout.contains("would move"), "{changed}");

    // A pod holds an address the shrunk range drops: the diff says it would move, and which.
    let pools: Api<SpiderIPPool> = Api::all(client.clone());
    let held = json!({"10.30.1.7": {"pod": format!("shop-{sfx}/storefront-0"), "podUid": "u-1"}});
    pools
        .patch_status(
            &pool.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"allocatedIPs": held.to_string(), "allocatedIPCount": 1}})),
        )
        .await?;
    let moving = spiderctl_diff(cluster, &edited_file, None)?;
    // Shown with --nocapture: what a reviewer reads.
    println!("{moving}");
    assert_eq!(moving.code, Some(1), "{moving}");
    assert!(
        moving.stdout.contains(&format!(
            "would move: SpiderIPPool {} no longer hands out 1 allocated address: 10.30.1.7 (pod shop-{sfx}/storefront-0)",
            pool.name_any()
        )),
        "{moving}"
    );
    assert!(moving.stdout.contains("AddressesInUse"), "{moving}");
    assert!(
        moving.stderr.contains("1 allocated address would move"),
        "{moving}"
    );
    // The same file without the shrink moves nothing: the address stays in its pool.
    let mut kept = edited.clone();
    kept.spec.racks[0].ranges[0].ipv4 = network.spec.racks[0].ranges[0].ipv4.clone();
    let kept_file = write_yaml(&dir.path().join("kept.yaml"), &kept)?;
    let unmoved = spiderctl_diff(cluster, &kept_file, None)?;
    assert_eq!(unmoved.code, Some(1), "{unmoved}");
    assert!(!unmoved.stdout.contains("would move"), "{unmoved}");

    // A broken file: exit 2, the problem named by its spec path, nothing compared.
    let mut broken = network.clone();
    broken.spec.racks[0].ranges[0].subnet = "no-such-subnet".into();
    let broken_file = write_yaml(&dir.path().join("broken.yaml"), &broken)?;
    let refused = spiderctl_diff(cluster, &broken_file, None)?;
    assert_eq!(refused.code, Some(2), "{refused}");
    assert_eq!(refused.stdout, "", "{refused}");
    assert!(
        refused.stderr.contains("spec.racks[0].ranges[0].subnet")
            && refused.stderr.contains("no-such-subnet"),
        "{refused}"
    );

    // Nothing above wrote: the topology is still as first applied.
    let still = spiderctl_diff(cluster, &file, None)?;
    assert_eq!(still.code, Some(0), "{still}");
    api.delete(&name, &DeleteParams::default()).await?;
    Ok(())
}
