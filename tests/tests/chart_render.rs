//! The chart renders what it should, and nothing it should not: `helm lint --strict` is clean, the
//! values schema and the README's values table are what `values.yaml` says, a typo in a key or an
//! unsupported upstream feature fails the render with the reason, and upstream's values keep working.
//! (The install test, `install_chart.rs`, applies the rendered objects to a real API server.)

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use serde_json::Value;
use spiderpool_tests::chart::{self, documents, run_helm, template};

fn values_yaml() -> String {
    std::fs::read_to_string(chart::chart_dir().join("values.yaml")).unwrap()
}

/// `SPIDERPOOL_UPDATE_CHART=1` rewrites the derived files instead of comparing them.
fn update() -> bool {
    std::env::var_os("SPIDERPOOL_UPDATE_CHART").is_some()
}

#[test]
fn helm_lint_strict_is_clean() {
    let dir = chart::chart_dir();
    let out = run_helm(&["lint", "--strict", &dir.to_string_lossy()]).unwrap();
    assert!(
        out.success,
        "helm lint --strict failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    assert!(out.stdout.contains("0 chart(s) failed"), "{}", out.stdout);
}

#[test]
fn values_schema_is_derived_from_values_yaml() {
    let path = chart::chart_dir().join("values.schema.json");
    let expected =
        serde_json::to_string_pretty(&chart::values_schema(&values_yaml()).unwrap()).unwrap() + "\n";
    if update() {
        std::fs::write(&path, &expected).unwrap();
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "{} is stale: run `SPIDERPOOL_UPDATE_CHART=1 cargo test -p spiderpool-tests --test chart_render`",
        path.display()
    );
}

#[test]
fn every_value_is_documented_and_the_readme_table_is_current() {
    let values = values_yaml();
    let documented = chart::descriptions(&values);
    let missing: Vec<String> = chart::leaf_keys(&values)
        .unwrap()
        .into_iter()
        .filter(|key| !documented.contains_key(key))
        .collect();
    assert!(
        missing.is_empty(),
        "values without a `## @param` comment: {missing:?}"
    );

    let readme_path = chart::chart_dir().join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let (begin, end) = ("<!-- values-table:begin -->\n", "<!-- values-table:end -->");
    let start = readme.find(begin).expect("README has the values-table markers") + begin.len();
    let stop = readme.find(end).unwrap();
    let table = chart::values_table(&values).unwrap();
    if update() {
        let updated = format!("{}{table}{}", &readme[..start], &readme[stop..]);
        std::fs::write(&readme_path, updated).unwrap();
    } else {
        assert!(
            readme[start..stop] == table,
            "the values table of {} is stale: run `SPIDERPOOL_UPDATE_CHART=1 cargo test -p spiderpool-tests --test chart_render`",
            readme_path.display()
        );
    }
}

fn kinds(yaml: &str) -> Vec<(String, String)> {
    let mut kinds: Vec<(String, String)> = documents(yaml)
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    kinds.sort();
    kinds
}

#[test]
fn default_values_render_upstreams_objects() {
    let yaml = template("spiderpool", "kube-system", &[]).unwrap();
    let kinds = kinds(&yaml);
    for expected in [
        ("ConfigMap", "spiderpool-conf"),
        ("DaemonSet", "spiderpool-agent"),
        ("DaemonSet", "spiderpool-multus"),
        ("Deployment", "spiderpool-controller"),
        ("Job", "spiderpool-init"),
        ("Service", "spiderpool-controller"),
        ("MutatingWebhookConfiguration", "spiderpool-controller"),
        ("ValidatingWebhookConfiguration", "spiderpool-controller"),
        ("ClusterRole", "spiderpool-agent"),
        ("ClusterRole", "spiderpool-controller"),
        ("ClusterRole", "spiderpool-init"),
        ("ServiceAccount", "spiderpool-agent"),
        ("ServiceAccount", "spiderpool-controller"),
        ("ServiceAccount", "spiderpool-init"),
    ] {
        assert!(
            kinds.contains(&(expected.0.to_string(), expected.1.to_string())),
            "{expected:?} not rendered; got {kinds:?}"
        );
    }
    // Off by default, as upstream.
    for absent in [
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "GrafanaDashboard",
        "Certificate",
    ] {
        assert!(
            !kinds.iter().any(|(k, _)| k == absent),
            "{absent} rendered by default"
        );
    }
    let docs = documents(&yaml).unwrap();
    let agent = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet" && d["metadata"]["name"] == "spiderpool-agent")
        .unwrap();
    let image = agent["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    assert_eq!(
        image,
        format!(
            "{}:{}",
            spiderpool_tests::images::repository("spiderpool-agent"),
            spiderpool_tests::images::tag()
        ),
        "the chart's default image must be what tests/tools/build-images.sh builds"
    );
    // Every object carries the release's labels, so `kubectl get all -l` finds them.
    for doc in &docs {
        assert_eq!(
            doc["metadata"]["labels"]["app.kubernetes.io/instance"], "spiderpool",
            "{}",
            doc["kind"]
        );
    }
}

#[test]
fn chart_app_version_is_the_workspace_version() {
    let chart_yaml: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart::chart_dir().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart_yaml["appVersion"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn a_typo_in_a_key_fails_the_render() {
    let err = template("spiderpool", "kube-system", &["--set", "ipam.enableIPV4=false"])
        .map(|_| "rendered")
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("enableIPV4"), "{text}");
    let err = template(
        "spiderpool",
        "kube-system",
        &["--set", "spiderpoolAgent.httpPort=notaport"],
    )
    .map(|_| "rendered")
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("/spiderpoolAgent/httpPort"),
        "{err:#}"
    );
    let err = template(
        "spiderpool",
        "kube-system",
        &["--set", "coordinator.mode=bridged"],
    )
    .map(|_| "rendered")
    .unwrap_err();
    assert!(format!("{err:#}").contains("/coordinator/mode"), "{err:#}");
}

#[test]
fn unsupported_upstream_features_fail_with_the_reason() {
    for key in [
        "sriov.install=true",
        "rdma.rdmaSharedDevicePlugin.install=true",
        "spiderpoolController.podResourceInject.enabled=true",
        "spiderpoolAgent.prometheus.enabledRdmaMetric=true",
        "iaasNetworkProvider.serverUrl=http://iaas.invalid",
    ] {
        let err = template("spiderpool", "kube-system", &["--set", key]).unwrap_err();
        let name = key.split('=').next().unwrap();
        let text = format!("{err:#}");
        assert!(
            text.contains(name) && text.contains("does not support"),
            "{key}: {text}"
        );
    }
}

#[test]
fn upstream_keys_of_unsupported_features_are_accepted_at_their_defaults() {
    // As found in upstream's values.yaml: every key of these subtrees must be accepted.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upstream.yaml");
    std::fs::write(
        &file,
        "sriov:\n  install: false\n  name: spiderpool-sriov-operator\n  replicas: 1\n  image:\n    registry: ghcr.io\n\
         rdma:\n  rdmaSharedDevicePlugin:\n    install: false\n    image: {tag: latest}\n\
         spiderpoolController:\n  cleanup: {enable: true}\n  tls: {auto: {caExpiration: '73000', extraDnsNames: []}}\n\
         spiderpoolAgent:\n  debug: {gopsPort: 5712}\n",
    )
    .unwrap();
    template("spiderpool", "kube-system", &["-f", &file.to_string_lossy()]).unwrap();
}

#[test]
fn provided_and_certmanager_certificates_render() {
    let provided = template(
        "spiderpool",
        "kube-system",
        &[
            "--set",
            "spiderpoolController.tls.method=provided",
            "--set",
            "spiderpoolController.tls.provided.tlsCert=Y2VydA==",
            "--set",
            "spiderpoolController.tls.provided.tlsKey=a2V5",
            "--set",
            "spiderpoolController.tls.provided.tlsCa=Y2E=",
        ],
    )
    .unwrap();
    let docs = documents(&provided).unwrap();
    let secret = docs.iter().find(|d| d["kind"] == "Secret").unwrap();
    assert_eq!(secret["data"]["tls.crt"], "Y2VydA==");
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap();
    assert!(
        args.iter()
            .any(|a| a == "--tls-ca-file=/etc/spiderpool/webhook-tls/ca.crt"),
        "{args:?}"
    );
    let err = template(
        "spiderpool",
        "kube-system",
        &["--set", "spiderpoolController.tls.method=provided"],
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("tlsCert"), "{err:#}");

    let certmanager = template(
        "spiderpool",
        "kube-system",
        &["--set", "spiderpoolController.tls.method=certmanager"],
    )
    .unwrap();
    let kinds = kinds(&certmanager);
    assert!(
        kinds.contains(&("Certificate".into(), "spiderpool-controller-server-certs".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("Issuer".into(), "spiderpool-controller-ca".into())),
        "{kinds:?}"
    );
}
