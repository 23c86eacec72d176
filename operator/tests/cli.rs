//! `spiderctl` as a user runs it: the built binary, real files, stdin, exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `spiderctl` in the workspace root (so example paths are relative, as in the docs), with
/// `stdin` piped in when given.
fn run(binary: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(binary)
        .args(args)
        .current_dir(workspace_root())
        .env_remove("SPIDERCTL_OUTPUT")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn spiderctl(args: &[&str]) -> Output {
    run(env!("CARGO_BIN_EXE_spiderctl"), args, None)
}

fn spiderctl_stdin(args: &[&str], stdin: &str) -> Output {
    run(env!("CARGO_BIN_EXE_spiderctl"), args, Some(stdin))
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}, stderr:\n{}",
        output.status.code(),
        stderr(output)
    );
}

fn assert_problems(output: &Output) {
    assert_eq!(output.status.code(), Some(1), "stderr:\n{}", stderr(output));
    assert!(
        output.stdout.is_empty(),
        "nothing may reach stdout on bad input:\n{}",
        stdout(output)
    );
}

/// `examples/topologies/*.yaml` (not the invalid ones), relative to the workspace root, sorted.
fn examples() -> Vec<String> {
    yaml_files("examples/topologies")
}

fn invalid_examples() -> Vec<String> {
    yaml_files("examples/topologies/invalid")
}

fn yaml_files(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(workspace_root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| format!("{dir}/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {dir}");
    files
}

fn f_args(files: &[String]) -> Vec<&str> {
    files.iter().flat_map(|f| ["-f", f.as_str()]).collect()
}

fn render_json(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["render", "-o", "json"];
    all.extend_from_slice(args);
    let output = spiderctl(&all);
    assert_success(&output);
    let list: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["kind"], "List");
    list["items"].as_array().unwrap().clone()
}

#[test]
fn render_prints_multi_document_yaml_that_matches_the_json() {
    for example in examples() {
        let output = spiderctl(&["render", "-f", &example]);
        assert_success(&output);
        let text = stdout(&output);
        assert!(
            text.starts_with("---\n"),
            "{example}: every document starts with ---"
        );
        assert!(text.ends_with('\n'));
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        assert_eq!(
            docs.len(),
            text.lines().filter(|l| *l == "---").count(),
            "{example}"
        );
        assert!(!docs.is_empty(), "{example} renders nothing");
        for doc in &docs {
            assert!(
                doc["apiVersion"].is_string() && doc["kind"].is_string(),
                "{example}: {doc}"
            );
            assert!(doc["metadata"]["name"].is_string(), "{example}: {doc}");
            let namespaced = matches!(
                doc["kind"].as_str(),
                Some("SpiderMultusConfig" | "NetworkAttachmentDefinition")
            );
            assert_eq!(
                doc["metadata"]["namespace"].is_string(),
                namespaced,
                "{example}: {doc}"
            );
        }
        // Read back, the YAML is exactly the JSON rendering: nothing was lost or retyped by quoting.
        assert_eq!(docs, render_json(&["-f", &example]), "{example}");
        let summary = stderr(&output);
        assert!(summary.starts_with("SpiderNetwork "), "{summary}");
        assert!(summary.contains("SpiderIPPool"), "{summary}");
    }
}

#[test]
fn json_output_is_a_v1_list() {
    let items = render_json(&["-f", "examples/topologies/leaf-spine.yaml"]);
    let kinds: BTreeSet<&str> = items.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains("SpiderIPPool"), "{kinds:?}");
    assert!(kinds.contains("NetworkAttachmentDefinition"), "{kinds:?}");
}

#[test]
fn out_dir_gets_one_file_per_object() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rendered");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("spiderippool_cluster_gone.yaml"), "stale").unwrap();
    let example = "examples/topologies/storage-lacp-statefulset.yaml";
    let output = spiderctl(&["render", "-f", example, "--out-dir", out.to_str().unwrap()]);
    assert_success(&output);
    assert!(output.stdout.is_empty());
    let items = render_json(&["-f", example]);
    let mut expected = BTreeSet::new();
    for item in &items {
        let name = format!(
            "{}_{}_{}.yaml",
            item["kind"].as_str().unwrap().to_lowercase(),
            item["metadata"]["namespace"].as_str().unwrap_or("cluster"),
            item["metadata"]["name"].as_str().unwrap()
        );
        let text = std::fs::read_to_string(out.join(&name)).unwrap();
        assert_eq!(&serde_saphyr::from_str::<Value>(&text).unwrap(), item, "{name}");
        expected.insert(name);
    }
    expected.insert("spiderippool_cluster_gone.yaml".into());
    let found: BTreeSet<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(found, expected);
    let log = stderr(&output);
    assert!(log.contains(&format!("wrote {} files", items.len())), "{log}");
    assert!(
        log.contains("warning:") && log.contains("spiderippool_cluster_gone.yaml"),
        "{log}"
    );

    // With -o json the files are JSON.
    let json_out = dir.path().join("json");
    let output = spiderctl(&[
        "render",
        "-o",
        "json",
        "-f",
        example,
        "--out-dir",
        json_out.to_str().unwrap(),
    ]);
    assert_success(&output);
    assert_eq!(std::fs::read_dir(&json_out).unwrap().count(), items.len());
    for item in &items {
        let name = format!(
            "{}_{}_{}.json",
            item["kind"].as_str().unwrap().to_lowercase(),
            item["metadata"]["namespace"].as_str().unwrap_or("cluster"),
            item["metadata"]["name"].as_str().unwrap()
        );
        let text = std::fs::read_to_string(json_out.join(&name)).unwrap();
        assert_eq!(&serde_json::from_str::<Value>(&text).unwrap(), item, "{name}");
    }
}

#[test]
fn dash_reads_stdin() {
    let example = "examples/topologies/dual-stack.yaml";
    let text = std::fs::read_to_string(workspace_root().join(example)).unwrap();
    let from_stdin = spiderctl_stdin(&["render", "-f", "-"], &text);
    assert_success(&from_stdin);
    let from_file = spiderctl(&["render", "-f", example]);
    assert_eq!(stdout(&from_stdin), stdout(&from_file));
    assert!(
        stderr(&from_stdin).contains("(<stdin>, document 1)"),
        "{}",
        stderr(&from_stdin)
    );

    let validated = spiderctl_stdin(&["validate", "-f", "-"], &text);
    assert_success(&validated);
    assert_eq!(stderr(&validated), "ok: <stdin> shop-dualstack\n");

    let twice = spiderctl_stdin(&["validate", "-f", "-", "-f", "-"], &text);
    assert_problems(&twice);
    assert!(
        stderr(&twice).contains("<stdin>: standard input (`-`) can only be read once"),
        "{}",
        stderr(&twice)
    );
}

#[test]
fn validate_says_ok_per_topology() {
    let files = examples();
    let output = spiderctl(&[&["validate"][..], &f_args(&files)].concat());
    assert_success(&output);
    assert!(output.stdout.is_empty());
    let lines: Vec<String> = stderr(&output).lines().map(String::from).collect();
    assert_eq!(lines.len(), files.len(), "{lines:?}");
    for (line, file) in lines.iter().zip(&files) {
        assert!(line.starts_with(&format!("ok: {file} ")), "{line}");
    }
    // A directory reads its YAML files, not recursively (so not invalid/).
    let output = spiderctl(&["validate", "-f", "examples/topologies/"]);
    assert_success(&output);
    assert_eq!(
        stderr(&output).lines().count(),
        files.len(),
        "{}",
        stderr(&output)
    );
}

/// The path an invalid example's comment says the problem is at (`Expected problem: <path>`).
fn expected_path(text: &str) -> String {
    let comment: Vec<&str> = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .collect();
    let comment = comment.join(" ");
    let (_, rest) = comment
        .split_once("Expected problem: ")
        .expect("the comment names the expected problem");
    rest.split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches(['.', ','])
        .to_string()
}

#[test]
fn every_invalid_example_fails_naming_its_spec_path() {
    for example in invalid_examples() {
        let text = std::fs::read_to_string(workspace_root().join(&example)).unwrap();
        assert!(
            text.starts_with("# INVALID: "),
            "{example}: the comment says what is wrong"
        );
        let path = expected_path(&text);
        let doc: Value = serde_saphyr::from_str(&text).unwrap();
        let name = doc["metadata"]["name"].as_str().unwrap();
        for command in ["validate", "render"] {
            let output = spiderctl(&[command, "-f", &example]);
            assert_problems(&output);
            let log = stderr(&output);
            let line = format!("{example}: document 1 (SpiderNetwork {name}): {path}: ");
            assert!(
                log.contains(&line),
                "{command} {example}: expected a line starting `{line}`, got:\n{log}"
            );
            assert!(log.lines().last().unwrap().starts_with("error: "), "{log}");
        }
    }
}

#[test]
fn diff_of_an_invalid_topology_exits_2_before_reading_the_cluster() {
    // The kubeconfig does not exist: the problems must be found (and reported) before it is read.
    let kubeconfig = "/nonexistent/spiderctl-test/kubeconfig";
    for example in invalid_examples() {
        let text = std::fs::read_to_string(workspace_root().join(&example)).unwrap();
        let path = expected_path(&text);
        let output = spiderctl(&["diff", "-f", &example, "--kubeconfig", kubeconfig]);
        assert_eq!(output.status.code(), Some(2), "{example}: {}", stderr(&output));
        assert!(output.stdout.is_empty(), "{example}: {}", stdout(&output));
        let log = stderr(&output);
        assert!(log.contains(&format!(": {path}: ")), "{example}: {log}");
        assert!(
            log.lines().last().unwrap().ends_with("; nothing was compared"),
            "{log}"
        );
        assert!(!log.contains(kubeconfig), "{log}");
    }
    // A valid topology and no cluster to compare with: exit 2 too, naming what failed.
    let output = spiderctl(&[
        "diff",
        "-f",
        "examples/topologies/single-rack-lab.yaml",
        "--kubeconfig",
        kubeconfig,
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains(kubeconfig), "{}", stderr(&output));
}

#[test]
fn all_problems_of_all_inputs_are_reported_at_once() {
    let files = invalid_examples();
    let output = spiderctl(&[&["validate"][..], &f_args(&files)].concat());
    assert_problems(&output);
    let log = stderr(&output);
    for file in &files {
        assert!(
            log.contains(&format!("{file}: document 1 ")),
            "{file} missing from:\n{log}"
        );
    }
}

const LAB: &str = "apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderNetwork
metadata: {name: NAME}
spec:
  subnets:
  - name: lan
    ipv4: {cidr: 192.168.70.0/24, gateway: 192.168.70.1}
  racks:
  - name: r1
    nodeSelector: {matchLabels: {rack: r1}}
    uplinks: [eth1]
    ranges:
    - {subnet: lan, ipv4: [192.168.70.10-192.168.70.20]}
";

fn lab(name: &str) -> String {
    LAB.replace("NAME", name)
}

#[test]
fn a_document_that_is_not_a_spidernetwork_is_refused() {
    let input = format!(
        "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n---\n# only a comment\n---\n- a list\n",
        lab("ok")
    );
    let output = spiderctl_stdin(&["render", "-f", "-"], &input);
    assert_problems(&output);
    let log = stderr(&output);
    assert!(
        log.contains("<stdin>: document 2: is a ConfigMap (v1), not a SpiderNetwork; spiderctl reads only spiderpool.spidernet.io/v2beta1 SpiderNetwork documents"),
        "{log}"
    );
    assert!(
        log.contains("<stdin>: document 3: is a list, not a SpiderNetwork object"),
        "{log}"
    );
    assert!(
        log.ends_with("error: 2 problems; nothing was rendered\n"),
        "{log}"
    );
}

#[test]
fn unreadable_documents_are_reported_with_their_position() {
    let input = format!(
        "{}---\n{}",
        lab("one").replace("uplinks: [eth1]", "uplinks: [eth1]\n    uplink: eth2"),
        lab("two").replace(
            "    ranges:",
            "    bonds:\n    - {name: bond0, interfaces: [eth2], options: {miimon: 100}}\n    ranges:"
        )
    );
    let output = spiderctl_stdin(&["validate", "-f", "-"], &input);
    assert_problems(&output);
    let log = stderr(&output);
    assert!(
        log.contains("<stdin>: document 1 (SpiderNetwork one): spec.racks[0].uplink: unknown field"),
        "{log}"
    );
    assert!(log.contains("<stdin>: document 2 (SpiderNetwork two): cannot be read as a SpiderNetwork: invalid type: integer `100`, expected a string"), "{log}");

    let output = spiderctl_stdin(&["validate", "-f", "-"], "kind: SpiderNetwork\nspec: [unclosed\n");
    assert_problems(&output);
    assert!(
        stderr(&output).contains("<stdin>: document 1: is not valid YAML: "),
        "{}",
        stderr(&output)
    );

    let output = spiderctl(&["validate", "-f", "does/not/exist.yaml"]);
    assert_problems(&output);
    assert!(
        stderr(&output).starts_with("does/not/exist.yaml: cannot be read: "),
        "{}",
        stderr(&output)
    );

    let output = spiderctl_stdin(&["validate", "-f", "-"], "# nothing here\n");
    assert_problems(&output);
    assert!(
        stderr(&output).starts_with("<stdin>: has no documents"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn two_topologies_with_one_name_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    std::fs::write(&a, lab("same")).unwrap();
    let output = spiderctl_stdin(&["validate", "-f", a.to_str().unwrap(), "-f", "-"], &lab("same"));
    assert_problems(&output);
    let log = stderr(&output);
    assert!(
        log.contains(&format!(
            "<stdin>: document 1 (SpiderNetwork same): metadata.name: `same` is already the name of the SpiderNetwork in {} document 1",
            a.display()
        )),
        "{log}"
    );
}

#[test]
fn render_is_deterministic() {
    let files = examples();
    let args = [&["render"][..], &f_args(&files)].concat();
    let first = spiderctl(&args);
    let second = spiderctl(&args);
    assert_success(&first);
    assert_eq!(first.stdout, second.stdout);
    assert_eq!(first.stderr, second.stderr);
    let json_args = [&["render", "-o", "json"][..], &f_args(&files)].concat();
    assert_eq!(spiderctl(&json_args).stdout, spiderctl(&json_args).stdout);
}

const NODES: &str = "apiVersion: v1
kind: List
metadata: {resourceVersion: ''}
items:
- apiVersion: v1
  kind: Node
  metadata:
    name: stor-b
    labels: {topology.kubernetes.io/rack: s2, node-role.example.com/storage: 'true'}
- apiVersion: v1
  kind: Node
  metadata:
    name: stor-a
    labels: {topology.kubernetes.io/rack: s1, node-role.example.com/storage: 'true'}
- apiVersion: v1
  kind: Node
  metadata:
    name: web-1
    labels: {topology.kubernetes.io/rack: s1}
";

#[test]
fn nodes_expand_the_interface_templates() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = dir.path().join("nodes.yaml");
    std::fs::write(&nodes, NODES).unwrap();
    let example = "examples/topologies/storage-lacp-statefulset.yaml";
    let items = render_json(&["-f", example, "--nodes", nodes.to_str().unwrap()]);
    let tasks: Vec<&Value> = items
        .iter()
        .filter(|i| i["kind"] == "SpiderInterfaceTask")
        .collect();
    let node_names: Vec<&str> = tasks
        .iter()
        .map(|t| t["spec"]["nodeName"].as_str().unwrap())
        .collect();
    assert_eq!(node_names, ["stor-a", "stor-b"]);
    for task in &tasks {
        assert_eq!(task["spec"]["bonds"][0]["name"], "bond0", "{task}");
        assert_eq!(task["spec"]["bonds"][0]["mode"], "802.3ad", "{task}");
        assert_eq!(task["spec"]["vlans"][0]["parent"], "bond0", "{task}");
        assert_eq!(task["spec"]["vlans"][0]["id"], 300, "{task}");
    }
    // Without nodes there are no tasks, and the other objects are the same.
    let without = render_json(&["-f", example]);
    assert_eq!(without.len() + tasks.len(), items.len());

    // Multi-document Nodes from stdin, and the summary counts the tasks.
    let docs = NODES
        .split("- apiVersion: v1\n")
        .skip(1)
        .map(|node| {
            let body: String = node
                .lines()
                .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
                .collect();
            format!("---\napiVersion: v1\n{body}")
        })
        .collect::<String>();
    let output = spiderctl_stdin(&["render", "-f", example, "--nodes", "-"], &docs);
    assert_success(&output);
    assert!(
        stderr(&output).contains("2 SpiderInterfaceTasks (for the 3 nodes read)"),
        "{}",
        stderr(&output)
    );

    let output = spiderctl_stdin(
        &["render", "-f", example, "--nodes", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n",
    );
    assert_problems(&output);
    assert!(
        stderr(&output).contains("<stdin>: document 1: is not a Node (Pod)"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let output = spiderctl(&["render"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--filename"), "{}", stderr(&output));
    let output = spiderctl(&["render", "-o", "xml", "-f", "x"]);
    assert_eq!(output.status.code(), Some(2));
    let output = spiderctl(&["--help"]);
    assert_success(&output);
    assert!(stdout(&output).contains("render"));
}

#[test]
fn the_kubectl_plugin_is_the_same_program() {
    let plugin = env!("CARGO_BIN_EXE_kubectl-spider");
    let output = run(plugin, &["--help"], None);
    assert_success(&output);
    assert!(stdout(&output).contains("kubectl spider"), "{}", stdout(&output));
    let example = "examples/topologies/single-rack-lab.yaml";
    let output = run(plugin, &["render", "-f", example], None);
    assert_success(&output);
    assert_eq!(output.stdout, spiderctl(&["render", "-f", example]).stdout);
}

#[test]
fn two_topologies_rendering_one_object_are_refused() {
    let network =
        "  networks:\n  - {name: data, type: macvlan, subnet: lan, master: eth1, namespaces: [apps]}\n";
    let second = lab("second")
        .replace("192.168.70.", "192.168.71.")
        .replace("{rack: r1}", "{rack: r2}");
    let input = format!("{}{network}---\n{second}{network}", lab("first"));
    let output = spiderctl_stdin(&["render", "-f", "-"], &input);
    assert_problems(&output);
    let log = stderr(&output);
    for kind in ["SpiderMultusConfig", "NetworkAttachmentDefinition"] {
        assert!(
            log.contains(&format!(
                "<stdin>: document 2 (SpiderNetwork second): renders {kind} apps/data, which SpiderNetwork first (<stdin> document 1) renders too"
            )),
            "{log}"
        );
    }
}
