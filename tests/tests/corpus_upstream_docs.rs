//! Upstream's documented YAML against our CRDs and webhooks on a real API server: every Spiderpool
//! object of upstream's English docs that a user applies (tests/data/upstream-docs/docs-corpus.json),
//! plus the cases the issue found missing from it (extra-inputs.json).
//!
//! Each input is created as `kubectl apply` creates it (POST with strict field validation), as a
//! server-side dry run so that inputs do not see each other. Checked against what upstream does with
//! it (expected-upstream.json; how it was derived is in that folder's README):
//! - upstream refuses it: we refuse it too, and the message names the field;
//! - upstream accepts it: we accept it and store what upstream stores (spec, labels, annotations,
//!   finalizers), apart from the differences listed in [`DOCUMENTED_DIFFERENCES`];
//! - a SpiderMultusConfig upstream accepts is created for real, each in a namespace of its own, and the
//!   NetworkAttachmentDefinition our controller renders equals upstream's rendering (name,
//!   annotations, and the CNI configuration as JSON).
//!
//! The webhook configurations are cluster-wide, so this binary starts its own control plane.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::{Value, json};
use spiderpool_operator::controller::multusconfig;
use spiderpool_operator::metrics::Metrics;
use spiderpool_schema::{NetworkAttachmentDefinition, SpiderMultusConfig};
use spiderpool_tests::admission::with_webhooks;
use spiderpool_tests::objects::{differences, ensure_namespace};
use spiderpool_tests::{init_tracing, tools, wait_for};

/// One document of the corpus.
#[derive(Debug, Clone, Deserialize)]
struct Input {
    id: String,
    source: String,
    role: String,
    kind: String,
    name: Option<String>,
    doc: Value,
}

/// What upstream does with the inputs.
#[derive(Debug, Deserialize)]
struct Expected {
    /// Inputs upstream refuses: the field a refusal must name, and why upstream refuses it.
    refused: BTreeMap<String, Refusal>,
    /// What upstream stores for the others: `spec`, and `labels`, `annotations`, `finalizers` when set.
    stored: BTreeMap<String, Value>,
    /// The NetworkAttachmentDefinition upstream renders for each SpiderMultusConfig it accepts.
    nads: BTreeMap<String, ExpectedNad>,
}

#[derive(Debug, Deserialize)]
struct Refusal {
    path: String,
    why: String,
}

#[derive(Debug, Deserialize)]
struct ExpectedNad {
    name: String,
    annotations: BTreeMap<String, String>,
    config: Value,
}

/// Where we store something other than upstream, on purpose: (input id, `*` for any; JSON pointer in
/// the stored object; why). Each is in the README's compatibility notes.
const DOCUMENTED_DIFFERENCES: &[(&str, &str, &str)] = &[(
    "x03",
    "/spec/enableCoordinator",
    "a custom SpiderMultusConfig that says enableCoordinator: true keeps it (unused: custom never gets the coordinator); upstream rewrites it to false, which GitOps tools show as drift",
)];

/// Annotations our NetworkAttachmentDefinitions carry that upstream's do not (README, compatibility
/// notes): the hash of the rendering, by which the controller skips writes that would change nothing.
const OUR_NAD_ANNOTATIONS: &[&str] = &["spiderpool.spidernet.io/rendered-hash"];

fn data(file: &str) -> Result<String> {
    let path = tools::repo_root().join("tests/data/upstream-docs").join(file);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

fn inputs() -> Result<Vec<Input>> {
    let mut all: Vec<Input> = serde_json::from_str(&data("docs-corpus.json")?)?;
    all.extend(serde_json::from_str::<Vec<Input>>(&data("extra-inputs.json")?)?);
    all.retain(|i| i.role == "input");
    Ok(all)
}

fn plural(kind: &str) -> String {
    format!("{}s", kind.to_ascii_lowercase())
}

/// SpiderMultusConfigs go to a namespace of their own (several docs use the same name).
fn namespace_of(input: &Input) -> Option<String> {
    (input.kind == "SpiderMultusConfig").then(|| format!("corpus-{}", input.id))
}

/// The object as sent: the doc, moved to its namespace.
fn object(input: &Input) -> Value {
    let mut doc = input.doc.clone();
    if let Some(ns) = namespace_of(input) {
        doc["metadata"]["namespace"] = json!(ns);
    }
    doc
}

fn collection(input: &Input) -> String {
    let base = "/apis/spiderpool.spidernet.io/v2beta1";
    match namespace_of(input) {
        Some(ns) => format!("{base}/namespaces/{ns}/{}", plural(&input.kind)),
        None => format!("{base}/{}", plural(&input.kind)),
    }
}

/// `kubectl apply`'s create of a new object (strict field validation), as a server-side dry run: the
/// stored object, or the API server's refusal message.
async fn create_dry_run(client: &Client, input: &Input) -> Result<std::result::Result<Value, String>> {
    let request = http::Request::post(format!("{}?dryRun=All&fieldValidation=Strict", collection(input)))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&object(input))?)?;
    match client.request::<Value>(request).await {
        Ok(stored) => Ok(Ok(stored)),
        Err(kube::Error::Api(status)) => Ok(Err(status.message)),
        Err(other) => Err(other).with_context(|| format!("creating {}", input.id)),
    }
}

/// Removes a documented difference (a JSON pointer) from a stored object.
fn remove_pointer(value: &mut Value, pointer: &str) {
    let Some((parent, key)) = pointer.rsplit_once('/') else {
        return;
    };
    if let Some(Value::Object(map)) = value.pointer_mut(parent) {
        map.remove(&key.replace("~1", "/").replace("~0", "~"));
    }
}

/// The parts of a stored object upstream's expectation covers.
fn stored_view(stored: &Value) -> Value {
    let meta = &stored["metadata"];
    let mut view = serde_json::Map::new();
    for key in ["labels", "annotations", "finalizers"] {
        if let Some(v) = meta.get(key).filter(|v| !v.is_null()) {
            view.insert(key.into(), v.clone());
        }
    }
    view.insert("spec".into(), stored["spec"].clone());
    Value::Object(view)
}

#[derive(Default)]
struct Tally {
    accepted: usize,
    refused: usize,
    expected_accepted: usize,
    expected_refused: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_docs_apply_as_upstream_applies_them() -> Result<()> {
    init_tracing();
    with_webhooks(
        "corpus-upstream-docs",
        |client| async move { check(&client).await },
    )
    .await
}

async fn check(client: &Client) -> Result<()> {
    let inputs = inputs()?;
    let expected: Expected = serde_json::from_str(&data("expected-upstream.json")?)?;
    for ns in inputs.iter().filter_map(namespace_of) {
        ensure_namespace(client, &ns).await?;
    }

    let mut failures = Vec::new();
    let mut tally: BTreeMap<&str, Tally> = BTreeMap::new();
    let mut accepted_smcs = Vec::new();
    for input in &inputs {
        let refusal = expected.refused.get(&input.id);
        let row = tally.entry(input.kind.as_str()).or_default();
        if refusal.is_some() {
            row.expected_refused += 1;
        } else {
            row.expected_accepted += 1;
        }
        let what = format!(
            "{} {} {} ({})",
            input.id,
            input.kind,
            input.name.as_deref().unwrap_or("?"),
            input.source
        );
        match (create_dry_run(client, input).await?, refusal) {
            (Err(message), Some(refusal)) => {
                row.refused += 1;
                if !message.contains(&refusal.path) {
                    failures.push(format!(
                        "{what}: refused without naming {}: {message}",
                        refusal.path
                    ));
                }
                if message.contains("<nil>") {
                    failures.push(format!(
                        "{what}: the refusal has a line naming no field: {message}"
                    ));
                }
            }
            (Err(message), None) => {
                row.refused += 1;
                failures.push(format!("{what}: upstream accepts it, we refuse it: {message}"));
            }
            (Ok(_), Some(refusal)) => {
                row.accepted += 1;
                failures.push(format!(
                    "{what}: upstream refuses it ({}), we accept it",
                    refusal.why
                ));
            }
            (Ok(stored), None) => {
                row.accepted += 1;
                let Some(upstream) = expected.stored.get(&input.id) else {
                    bail!("expected-upstream.json has no stored object for {}", input.id);
                };
                let (mut ours, mut theirs) = (stored_view(&stored), upstream.clone());
                for (id, pointer, _) in DOCUMENTED_DIFFERENCES {
                    if *id == "*" || *id == input.id {
                        remove_pointer(&mut ours, pointer);
                        remove_pointer(&mut theirs, pointer);
                    }
                }
                for difference in differences(&theirs, &ours) {
                    failures.push(format!(
                        "{what}: stored differently (upstream != ours): {difference}"
                    ));
                }
                if input.kind == "SpiderMultusConfig" {
                    accepted_smcs.push(input.clone());
                }
            }
        }
    }
    failures.extend(rendered_nads(client, &accepted_smcs, &expected).await?);

    let mut table = String::from("\nupstream docs corpus (+ issue cases): ours vs upstream's\n");
    writeln!(
        table,
        "{:<20} {:>9} {:>9} {:>11} {:>11}",
        "kind", "accepted", "refused", "upstream-a", "upstream-r"
    )?;
    for (kind, row) in &tally {
        writeln!(
            table,
            "{kind:<20} {:>9} {:>9} {:>11} {:>11}",
            row.accepted, row.refused, row.expected_accepted, row.expected_refused
        )?;
    }
    let sum = |f: fn(&Tally) -> usize| tally.values().map(f).sum::<usize>();
    writeln!(
        table,
        "{:<20} {:>9} {:>9} {:>11} {:>11}",
        "total",
        sum(|r| r.accepted),
        sum(|r| r.refused),
        sum(|r| r.expected_accepted),
        sum(|r| r.expected_refused)
    )?;
    writeln!(
        table,
        "NetworkAttachmentDefinitions compared with upstream's rendering: {}",
        accepted_smcs.len()
    )?;
    #[allow(clippy::print_stdout, reason = "the table is this test's report")]
    {
        println!("{table}");
    }
    ensure!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// Creates every accepted SpiderMultusConfig for real (server-side apply), runs the SMC controller and
/// compares each NetworkAttachmentDefinition with upstream's rendering.
async fn rendered_nads(client: &Client, smcs: &[Input], expected: &Expected) -> Result<Vec<String>> {
    let metrics = Arc::new(Metrics::default());
    let options = multusconfig::Options {
        instance: Some("corpus".into()),
        ..multusconfig::Options::default()
    };
    let controller = tokio::spawn(multusconfig::run_with(client.clone(), metrics, options));
    let mut failures = Vec::new();
    for input in smcs {
        let ns = namespace_of(input).unwrap_or_default();
        let api: Api<SpiderMultusConfig> = Api::namespaced(client.clone(), &ns);
        let name = input.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("corpus").validation_strict(),
            &Patch::Apply(object(input)),
        )
        .await
        .with_context(|| format!("applying {}", input.id))?;
    }
    for input in smcs {
        let ns = namespace_of(input).unwrap_or_default();
        let Some(upstream) = expected.nads.get(&input.id) else {
            bail!("expected-upstream.json has no NAD for {}", input.id);
        };
        let nads: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), &ns);
        let what = format!("{} NetworkAttachmentDefinition {ns}/{}", input.id, upstream.name);
        let nad = wait_for(&what, Duration::from_secs(60), || async {
            Ok(nads.get_opt(&upstream.name).await?)
        })
        .await?;
        let mut annotations = nad.metadata.annotations.clone().unwrap_or_default();
        for ours in OUR_NAD_ANNOTATIONS {
            if annotations.remove(*ours).is_none() {
                failures.push(format!("{what}: no {ours} annotation"));
            }
        }
        if annotations != upstream.annotations {
            failures.push(format!(
                "{what}: annotations {annotations:?}, upstream's {:?}",
                upstream.annotations
            ));
        }
        let config = if nad.spec.config.is_empty() {
            json!("")
        } else {
            serde_json::from_str(&nad.spec.config).with_context(|| what.clone())?
        };
        let upstream_config = match &upstream.config {
            Value::String(text) if !text.is_empty() => serde_json::from_str(text)?,
            other => other.clone(),
        };
        for difference in differences(&upstream_config, &config) {
            failures.push(format!(
                "{what}: config differs (upstream's != ours): {difference}"
            ));
        }
    }
    ensure!(
        !controller.is_finished(),
        "the SpiderMultusConfig controller stopped"
    );
    controller.abort();
    Ok(failures)
}
