//! The command line: `spiderctl`, also installed as the kubectl plugin `kubectl-spider` (so `kubectl
//! spider render ...` works). Both binaries call [`run`].
//!
//! - `spiderctl render -f FILE...` reads SpiderNetwork documents, validates and compiles each one and
//!   prints every object it generates: Kubernetes YAML for `kubectl apply -f -` (default), a `v1 List`
//!   with `-o json`, or one file per object with `--out-dir`. `--nodes` takes `kubectl get nodes -o yaml`
//!   output and expands the per-rack interface task templates into per-node SpiderInterfaceTasks. A
//!   summary goes to stderr, so stdout stays pipeable.
//! - `spiderctl validate -f FILE...` only checks, and says `ok: <file> <name>` per topology.
//! - `spiderctl status NAME` reads a live SpiderNetwork (kubeconfig as kubectl finds it, or
//!   `--kubeconfig`) and prints its conditions, node rollout, rendered counts, capacity and problems
//!   ([`status`]).
//! - `spiderctl diff -f FILE...` compiles the topologies and prints what applying them would change in
//!   the live cluster, as the controller would apply it ([`diff`]). Exit status as `kubectl diff`: 0
//!   no change, 1 changes, 2 an error (an invalid topology included).
//!
//! `render` and `validate` report every problem of every input at once, one per line, as
//! `<file>: document <n> (SpiderNetwork <name>): <spec path>: <message>`, print nothing on stdout and
//! exit 1 (`diff` prints the same lines and exits 2). Usage errors exit 2 (clap's convention).
//!
//! Reading is as strict as `kubectl apply`, which validates fields on the server: every document must
//! be a `spiderpool.spidernet.io/v2beta1` `SpiderNetwork`; values must have the types the CRD schema
//! gives them (`miimon: 100` is refused and `miimon: "100"` is needed, as the API server refuses the
//! former); and unknown fields are problems rather than being dropped without a word, since a
//! misspelled field would otherwise render a topology that differs from what the reviewer read.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Map, Value};
use spiderpool_ipmath::{IpFamily, IpSet};
use spiderpool_schema::{API_VERSION, Problem, SpiderInterfaceTask, SpiderNetwork};

use crate::compile::{self, Rendered};

mod connect;
mod diff;
mod status;

/// Kind of the documents `spiderctl` reads.
const KIND: &str = "SpiderNetwork";

/// What the command line looks like.
#[derive(Debug, Parser)]
#[command(
    name = "spiderctl",
    version,
    about = "Check and render SpiderNetwork topologies before they are applied",
    long_about = "Check and render SpiderNetwork topologies before they are applied.\n\n\
        A SpiderNetwork describes a whole underlay topology (subnets, racks, networks, app bindings).\n\
        The operator compiles it into SpiderIPPools, SpiderReservedIPs, SpiderMultusConfigs,\n\
        NetworkAttachmentDefinitions and per-node SpiderInterfaceTasks; `render` shows exactly those\n\
        objects, `validate` only checks. Problems are listed all at once, one per line, as\n\
        `<file>: document <n> (SpiderNetwork <name>): <spec path>: <message>`, and the exit status is 1.\n\n\
        `status NAME` reads a topology from the cluster and shows its conditions, node rollout,\n\
        capacity and problems. `diff -f FILE` shows what applying a file would change in the\n\
        cluster (exit status 0 no change, 1 changes, 2 error)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate and compile topologies and print every object they generate.
    Render(RenderArgs),
    /// Only check topologies; prints `ok: <file> <name>` per topology to stderr.
    Validate(InputArgs),
    /// Show a live SpiderNetwork's conditions, node rollout, rendered counts, capacity (per subnet,
    /// rack and app binding) and problems.
    Status(StatusArgs),
    /// Show what applying topologies would change in the live cluster: the SpiderNetwork's spec and
    /// every child the operator would create, change (field by field) or prune, and allocated
    /// addresses that would move.
    #[command(long_about = DIFF_ABOUT)]
    Diff(DiffArgs),
}

const DIFF_ABOUT: &str = "Show what applying topologies would change in the live cluster.\n\n\
    Each topology is compiled as `render` compiles it, and its children are prepared as the operator\n\
    prepares them (owner reference, labels, interface tasks for the live Nodes). Every child the\n\
    operator would change goes through a server-side dry-run apply with the operator's field manager,\n\
    so defaults and admission webhooks are included, and every child it would create through a\n\
    dry-run create (the same admission and validation); children it would leave alone (already as\n\
    rendered) are counted as unchanged. Children of the topology it no longer renders are listed as\n\
    pruned. The SpiderNetwork itself is compared by a dry-run replace of its spec (a dry-run create\n\
    when it does not exist). Nothing is written.\n\n\
    Output (stdout, empty when nothing would change): `+` created, `~` changed with `path: old -> new`\n\
    per field (server-managed metadata and status left out), `-` pruned, `!` a name held by an object\n\
    that is not this topology's (not applied), `=` being deleted (applied again once gone); then\n\
    pools whose allocated addresses would move (pruned with allocations, or addresses no longer in\n\
    the pool: the operator refuses such a change) or that change while in use. A one-line summary per\n\
    topology goes to stderr.\n\n\
    SpiderInterfaceTasks are shown as they will be once the rollout has reached every node (the\n\
    operator writes them a few nodes at a time, spec.rollout). NetworkAttachmentDefinitions are not\n\
    compared: the SpiderMultusConfig controller renders them from the SpiderMultusConfigs, whose\n\
    changes are shown.\n\n\
    Exit status as `kubectl diff`: 0 no change, 1 changes, 2 an error (an invalid topology, listed as\n\
    `render` lists problems; an unreachable cluster; a dry run the API server refuses).";

#[derive(Debug, Args)]
struct DiffArgs {
    /// A file of SpiderNetwork documents (YAML, several documents separated by `---`, or JSON), a
    /// directory of such files (*.yaml, *.yml, *.json; not recursive), or `-` for standard input.
    /// Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    files: Vec<PathBuf>,

    /// The kubeconfig file; without it, as kubectl: `$KUBECONFIG`, `~/.kube/config`, or the pod's
    /// service account in a cluster.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The SpiderNetwork (cluster-scoped).
    name: String,

    /// The kubeconfig file; without it, as kubectl: `$KUBECONFIG`, `~/.kube/config`, or the pod's
    /// service account in a cluster.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
}

/// Where topologies (and nodes) come from.
#[derive(Debug, Args)]
struct InputArgs {
    /// A file of SpiderNetwork documents (YAML, several documents separated by `---`, or JSON), a
    /// directory of such files (*.yaml, *.yml, *.json; not recursive), or `-` for standard input.
    /// Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    files: Vec<PathBuf>,

    /// The cluster's nodes, as `kubectl get nodes -o yaml` prints them (a v1 List of Nodes, or Node
    /// documents), or `-` for standard input: expands each rack's interface task template into one
    /// SpiderInterfaceTask per node the rack selects.
    #[arg(long, value_name = "NODES_FILE")]
    nodes: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RenderArgs {
    #[command(flatten)]
    input: InputArgs,

    /// Output format: YAML documents separated by `---`, or one JSON `v1 List`.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Yaml, env = "SPIDERCTL_OUTPUT")]
    output: Format,

    /// Write one file per object into DIR, named `<kind>_<namespace or cluster>_<name>.yaml` (`.json`
    /// with `-o json`), instead of printing them. DIR is created when missing; files this run does not
    /// write are left alone (and listed as a warning).
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

impl Format {
    fn extension(self) -> &'static str {
        match self {
            Format::Yaml => "yaml",
            Format::Json => "json",
        }
    }
}

/// Entry point of both binaries: parses `std::env::args_os()` and uses the process's standard streams.
pub fn run() -> ExitCode {
    let stdin = io::stdin();
    let stdout = io::stdout();
    let stderr = io::stderr();
    run_with(
        std::env::args_os(),
        &mut stdin.lock(),
        &mut stdout.lock(),
        &mut stderr.lock(),
    )
}

/// [`run`] with explicit arguments (the first one is the program name) and streams, for tests and
/// embedding. Returns the process exit status: 0 success, 1 bad input (for `diff`: changes found), 2
/// bad usage (for `diff`: any failure).
pub fn run_with(
    args: impl IntoIterator<Item = impl Into<OsString>>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> ExitCode {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = match parse_args(&args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with success; usage errors to stderr. Nothing sensible is left
            // to do if the terminal is gone, so write errors are ignored.
            if e.use_stderr() {
                let _ = write!(stderr, "{}", e.render());
                return ExitCode::from(2);
            }
            let _ = write!(stdout, "{}", e.render());
            return ExitCode::SUCCESS;
        }
    };
    let mut io = Streams {
        stdin,
        stdout,
        stderr,
    };
    match execute(cli, &mut io) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Problems | Outcome::Changes) => ExitCode::from(1),
        Ok(Outcome::Failed) => ExitCode::from(2),
        Err(e) => {
            let _ = writeln!(io.stderr, "error: {}", error_text(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes joined by `: `, leaving out a cause whose text is already there: errors of
/// kube and of this crate often say their source in their own message, and `{:#}` would repeat it.
fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Parses arguments; when run as the kubectl plugin, help and usage say `kubectl spider`.
fn parse_args(args: &[OsString]) -> Result<Cli, clap::Error> {
    let mut command = Cli::command();
    let invoked_as = args
        .first()
        .and_then(|arg0| Path::new(arg0).file_name())
        .map(|name| name.to_string_lossy().into_owned());
    if invoked_as
        .as_deref()
        .is_some_and(|name| name.starts_with("kubectl-spider"))
    {
        command = command.bin_name("kubectl spider").display_name("kubectl spider");
    }
    let matches = command.try_get_matches_from_mut(args)?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut command))
}

struct Streams<'a> {
    stdin: &'a mut dyn Read,
    stdout: &'a mut dyn Write,
    stderr: &'a mut dyn Write,
}

enum Outcome {
    Success,
    /// The input had problems; they have been printed.
    Problems,
    /// `diff` found changes; they have been printed.
    Changes,
    /// `diff` could not compare (its exit status 2, as `kubectl diff`'s); the reason has been printed.
    Failed,
}

/// One SpiderNetwork read from the input.
struct Topology {
    /// File name as given on the command line, or `<stdin>`.
    source: String,
    /// 1-based position among the file's non-empty documents.
    document: usize,
    network: SpiderNetwork,
}

impl Topology {
    fn name(&self) -> &str {
        self.network.metadata.name.as_deref().unwrap_or("<unnamed>")
    }

    /// `<file>: document <n> (SpiderNetwork <name>)`, the start of every problem line about it.
    fn prefix(&self) -> String {
        format!(
            "{}: document {} ({KIND} {})",
            self.source,
            self.document,
            self.name()
        )
    }
}

/// One topology after compiling.
struct Compiled<'a> {
    topology: &'a Topology,
    rendered: Rendered,
    /// Present when `--nodes` was given.
    tasks: Option<Vec<SpiderInterfaceTask>>,
}

/// Problem lines, in the order found.
#[derive(Default)]
struct Report {
    lines: Vec<String>,
}

impl Report {
    fn push(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    fn problems(&mut self, prefix: &str, problems: &[Problem]) {
        for problem in problems {
            self.push(format!("{prefix}: {}: {}", problem.path, problem.message));
        }
    }
}

/// Reads the live topology and prints its status; the exit status is 0 when it could be read.
fn show_status(args: &StatusArgs, io: &mut Streams<'_>) -> anyhow::Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let network = runtime.block_on(status::fetch(&args.name, args.kubeconfig.as_deref()))?;
    io.stdout.write_all(status::format(&network).as_bytes())?;
    Ok(Outcome::Success)
}

/// Compiles the topologies and compares them with the cluster; every failure exits 2.
fn show_diff(args: &DiffArgs, io: &mut Streams<'_>) -> anyhow::Result<Outcome> {
    match compare(args, io) {
        Ok(outcome) => Ok(outcome),
        Err(e) => {
            writeln!(io.stderr, "error: {}", error_text(&e))?;
            Ok(Outcome::Failed)
        }
    }
}

fn compare(args: &DiffArgs, io: &mut Streams<'_>) -> anyhow::Result<Outcome> {
    let mut report = Report::default();
    let mut stdin_taken = false;
    let mut topologies = Vec::new();
    for (label, bytes) in read_sources(&args.files, io.stdin, &mut stdin_taken, &mut report) {
        topologies.extend(read_topologies(&label, &bytes, &mut report));
    }
    check_names(&topologies, &mut report);
    let mut compiled = Vec::new();
    for topology in &topologies {
        match compile::compile(&topology.network) {
            Ok(rendered) => compiled.push((topology, rendered)),
            Err(problems) => report.problems(&topology.prefix(), &problems),
        }
    }
    if !report.lines.is_empty() {
        for line in &report.lines {
            writeln!(io.stderr, "{line}")?;
        }
        let count = report.lines.len();
        let plural = if count == 1 { "" } else { "s" };
        writeln!(io.stderr, "error: {count} problem{plural}; nothing was compared")?;
        return Ok(Outcome::Failed);
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let client = runtime.block_on(connect::client(args.kubeconfig.as_deref()))?;
    let mut changed = false;
    for (topology, rendered) in compiled {
        let source = format!("{}: document {}", topology.source, topology.document);
        let result = runtime.block_on(diff::cluster::diff(&client, &topology.network, rendered, &source));
        let found = match result {
            Ok(found) => found,
            Err(diff::cluster::DiffError::Tasks(problems)) => {
                // The racks conflict on live nodes: a problem of the topology, listed like the others.
                report.problems(&topology.prefix(), &problems);
                for line in &report.lines {
                    writeln!(io.stderr, "{line}")?;
                }
                bail!("the racks of {KIND} {} conflict on live nodes", topology.name());
            }
            Err(e) => return Err(e).with_context(|| format!("{KIND} {}", topology.name())),
        };
        write_stdout(io.stdout, diff::format::report(&found).as_bytes())?;
        write!(io.stderr, "{}", diff::format::summary(&found))?;
        changed |= found.has_changes();
    }
    Ok(if changed {
        Outcome::Changes
    } else {
        Outcome::Success
    })
}

fn execute(cli: Cli, io: &mut Streams<'_>) -> anyhow::Result<Outcome> {
    let (input, render) = match cli.command {
        Command::Status(args) => return show_status(&args, io),
        Command::Diff(args) => return show_diff(&args, io),
        Command::Render(args) => {
            let RenderArgs {
                input,
                output,
                out_dir,
            } = args;
            (input, Some((output, out_dir)))
        }
        Command::Validate(input) => (input, None),
    };
    let mut report = Report::default();
    let mut stdin_taken = false;

    let mut topologies = Vec::new();
    for (label, bytes) in read_sources(&input.files, io.stdin, &mut stdin_taken, &mut report) {
        topologies.extend(read_topologies(&label, &bytes, &mut report));
    }
    let nodes = match &input.nodes {
        Some(path) => Some(read_nodes(path, io.stdin, &mut stdin_taken, &mut report)),
        None => None,
    };
    check_names(&topologies, &mut report);

    let mut compiled = Vec::new();
    for topology in &topologies {
        let prefix = topology.prefix();
        let rendered = match compile::compile(&topology.network) {
            Ok(rendered) => rendered,
            Err(problems) => {
                report.problems(&prefix, &problems);
                continue;
            }
        };
        let tasks = match &nodes {
            None => None,
            Some(nodes) => {
                match compile::expand_interface_tasks(&topology.network, &rendered.interface_templates, nodes)
                {
                    Ok(tasks) => Some(tasks),
                    Err(problems) => {
                        report.problems(&prefix, &problems);
                        continue;
                    }
                }
            }
        };
        compiled.push(Compiled {
            topology,
            rendered,
            tasks,
        });
    }

    let mut documents: Vec<Vec<Value>> = Vec::new();
    for c in &compiled {
        let mut docs = c
            .rendered
            .to_documents()
            .context("serializing the rendered objects")?;
        for task in c.tasks.iter().flatten() {
            docs.push(serde_json::to_value(task).context("serializing an interface task")?);
        }
        documents.push(docs);
    }
    check_collisions(&compiled, &documents, &mut report);

    if !report.lines.is_empty() {
        for line in &report.lines {
            writeln!(io.stderr, "{line}")?;
        }
        let count = report.lines.len();
        let plural = if count == 1 { "" } else { "s" };
        let consequence = if render.is_some() {
            "; nothing was rendered"
        } else {
            ""
        };
        writeln!(io.stderr, "error: {count} problem{plural}{consequence}")?;
        return Ok(Outcome::Problems);
    }

    let Some((format, out_dir)) = render else {
        for topology in &topologies {
            writeln!(io.stderr, "ok: {} {}", topology.source, topology.name())?;
        }
        return Ok(Outcome::Success);
    };

    let all: Vec<&Value> = documents.iter().flatten().collect();
    match &out_dir {
        None => {
            let text = match format {
                Format::Yaml => to_yaml_stream(&all)?,
                Format::Json => to_json_list(&all)?,
            };
            write_stdout(io.stdout, text.as_bytes())?;
        }
        Some(dir) => write_out_dir(dir, format, &all, io.stderr)?,
    }
    for (c, docs) in compiled.iter().zip(&documents) {
        let summary = summarize(c, docs, nodes.as_ref().map_or(0, Vec::len));
        write!(io.stderr, "{summary}")?;
    }
    Ok(Outcome::Success)
}

/// Reads every `-f` argument: files, directories (their YAML and JSON files, sorted) and `-`.
fn read_sources(
    files: &[PathBuf],
    stdin: &mut dyn Read,
    stdin_taken: &mut bool,
    report: &mut Report,
) -> Vec<(String, Vec<u8>)> {
    let mut sources = Vec::new();
    for path in files {
        let label = path.display().to_string();
        if path.as_os_str() == "-" {
            match read_stdin(stdin, stdin_taken) {
                Ok(bytes) => sources.push(("<stdin>".to_string(), bytes)),
                Err(e) => report.push(format!("<stdin>: {e:#}")),
            }
            continue;
        }
        if path.is_dir() {
            match list_dir(path) {
                Ok(entries) if entries.is_empty() => {
                    report.push(format!(
                        "{label}: the directory has no .yaml, .yml or .json files"
                    ));
                }
                Ok(entries) => {
                    for entry in entries {
                        let entry_label = entry.display().to_string();
                        match std::fs::read(&entry) {
                            Ok(bytes) => sources.push((entry_label, bytes)),
                            Err(e) => report.push(format!("{entry_label}: cannot be read: {e}")),
                        }
                    }
                }
                Err(e) => report.push(format!("{label}: cannot be listed: {e}")),
            }
            continue;
        }
        match std::fs::read(path) {
            Ok(bytes) => sources.push((label, bytes)),
            Err(e) => report.push(format!("{label}: cannot be read: {e}")),
        }
    }
    sources
}

fn read_stdin(stdin: &mut dyn Read, taken: &mut bool) -> anyhow::Result<Vec<u8>> {
    if *taken {
        bail!("standard input (`-`) can only be read once");
    }
    *taken = true;
    let mut bytes = Vec::new();
    stdin
        .read_to_end(&mut bytes)
        .context("cannot read standard input")?;
    Ok(bytes)
}

fn list_dir(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if wanted && path.is_file() {
            entries.push(path);
        }
    }
    entries.sort();
    Ok(entries)
}

/// The non-empty documents of a YAML (or JSON) stream, each parsed on its own so that one broken
/// document does not hide the problems of the others. Comment-only and empty documents are skipped
/// and not counted, as kubectl does.
fn documents(bytes: &[u8]) -> Vec<Result<Value, serde_saphyr::Error>> {
    let mut reader = bytes;
    serde_saphyr::read::<_, Value>(&mut reader).collect()
}

/// Reads the SpiderNetworks of one source, reporting every document that is not one.
fn read_topologies(label: &str, bytes: &[u8], report: &mut Report) -> Vec<Topology> {
    let docs = documents(bytes);
    if docs.is_empty() {
        report.push(format!("{label}: has no documents; expected {KIND} documents"));
        return Vec::new();
    }
    // The same stream read straight into the typed object, only for its error messages: they carry the
    // line and column, which the conversion from a JSON value cannot know.
    let mut typed_errors: Vec<Option<String>> = Vec::new();
    if docs.iter().any(|d| d.is_ok()) {
        let mut reader = bytes;
        typed_errors = serde_saphyr::read::<_, SpiderNetwork>(&mut reader)
            .map(|d| d.err().map(|e| e.to_string()))
            .collect();
        if typed_errors.len() != docs.len() {
            typed_errors.clear();
        }
    }
    let mut topologies = Vec::new();
    for (index, doc) in docs.into_iter().enumerate() {
        let document = index + 1;
        let here = format!("{label}: document {document}");
        let value = match doc {
            Ok(value) => value,
            Err(e) => {
                report.push(format!("{here}: is not valid YAML: {e}"));
                continue;
            }
        };
        let Some(object) = value.as_object() else {
            report.push(format!("{here}: is a {}, not a {KIND} object", json_type(&value)));
            continue;
        };
        let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind != KIND {
            let what = match (kind, api_version) {
                ("", _) => "has no kind".to_string(),
                (kind, "") => format!("is a {kind}"),
                (kind, api_version) => format!("is a {kind} ({api_version})"),
            };
            report.push(format!(
                "{here}: {what}, not a {KIND}; spiderctl reads only {API_VERSION} {KIND} documents"
            ));
            continue;
        }
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("<unnamed>");
        let prefix = format!("{here} ({KIND} {name})");
        if api_version != API_VERSION {
            report.push(format!(
                "{prefix}: apiVersion: is `{api_version}`; {KIND} is served as {API_VERSION}"
            ));
            continue;
        }
        let network: SpiderNetwork = match serde_json::from_value(value.clone()) {
            Ok(network) => network,
            Err(e) => {
                let located = typed_errors.get(index).cloned().flatten();
                let message = match located {
                    Some(located) if located != e.to_string() => format!("{e} ({located})"),
                    _ => e.to_string(),
                };
                report.push(format!("{prefix}: cannot be read as a {KIND}: {message}"));
                continue;
            }
        };
        let mut unknown = Vec::new();
        match serde_json::to_value(&network) {
            Ok(known) => unknown_fields(&value, &known, "", &mut unknown),
            Err(e) => report.push(format!("{prefix}: cannot be written back as JSON: {e}")),
        }
        if !unknown.is_empty() {
            for path in unknown {
                report.push(format!(
                    "{prefix}: {path}: unknown field (misspelled?); the API server rejects it, so it is not ignored here either"
                ));
            }
            continue;
        }
        if network.metadata.name.is_none() {
            report.push(format!(
                "{prefix}: metadata.name: is required; it prefixes every generated object's name"
            ));
            continue;
        }
        topologies.push(Topology {
            source: label.to_string(),
            document,
            network,
        });
    }
    topologies
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "mapping",
    }
}

/// Paths of fields of `input` that did not survive a round trip through the typed object, i.e. that
/// the type does not know. Empty values (`null`, `[]`, `{}`, `""`) are not reported: the typed object
/// may leave them out when writing back.
fn unknown_fields(input: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(input), Value::Object(known)) => {
            for (key, value) in input {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match known.get(key) {
                    Some(known_value) => unknown_fields(value, known_value, &here, out),
                    None if !is_empty(value) => out.push(here),
                    None => {}
                }
            }
        }
        (Value::Array(input), Value::Array(known)) if input.len() == known.len() => {
            for (i, (value, known_value)) in input.iter().zip(known).enumerate() {
                unknown_fields(value, known_value, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Two topologies with one name would render objects with the same names and fight over them.
fn check_names(topologies: &[Topology], report: &mut Report) {
    let mut seen: BTreeMap<&str, &Topology> = BTreeMap::new();
    for topology in topologies {
        if let Some(first) = seen.get(topology.name()) {
            report.push(format!(
                "{}: metadata.name: `{}` is already the name of the {KIND} in {} document {}",
                topology.prefix(),
                topology.name(),
                first.source,
                first.document
            ));
        } else {
            seen.insert(topology.name(), topology);
        }
    }
}

/// Two topologies must not render the same object (e.g. two networks named alike, offered in one
/// namespace): applying both would let the last one silently win.
fn check_collisions(compiled: &[Compiled<'_>], documents: &[Vec<Value>], report: &mut Report) {
    let mut owners: BTreeMap<String, usize> = BTreeMap::new();
    for (i, docs) in documents.iter().enumerate() {
        for doc in docs {
            let id = object_id(doc);
            match owners.get(&id) {
                Some(&first) if first != i => report.push(format!(
                    "{}: renders {id}, which {} ({} document {}) renders too",
                    compiled[i].topology.prefix(),
                    format_args!("{KIND} {}", compiled[first].topology.name()),
                    compiled[first].topology.source,
                    compiled[first].topology.document,
                )),
                Some(_) => report.push(format!("{}: renders {id} twice", compiled[i].topology.prefix())),
                None => {
                    owners.insert(id, i);
                }
            }
        }
    }
}

/// `<kind> <namespace>/<name>` or `<kind> <name>`.
fn object_id(doc: &Value) -> String {
    let (kind, namespace, name) = object_key(doc);
    match namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn object_key(doc: &Value) -> (&str, Option<&str>, &str) {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("Object");
    let namespace = doc.pointer("/metadata/namespace").and_then(Value::as_str);
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    (kind, namespace, name)
}

/// Reads `--nodes`: a `v1 List` (or `NodeList`) of Nodes, or Node documents.
fn read_nodes(path: &Path, stdin: &mut dyn Read, stdin_taken: &mut bool, report: &mut Report) -> Vec<Node> {
    let label = if path.as_os_str() == "-" {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    };
    let bytes = if path.as_os_str() == "-" {
        read_stdin(stdin, stdin_taken)
    } else {
        std::fs::read(path).with_context(|| "cannot be read".to_string())
    };
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(e) => {
            report.push(format!("{label}: {e:#}"));
            return Vec::new();
        }
    };
    let mut nodes = Vec::new();
    for (index, doc) in documents(&bytes).into_iter().enumerate() {
        let here = format!("{label}: document {}", index + 1);
        let value = match doc {
            Ok(value) => value,
            Err(e) => {
                report.push(format!("{here}: is not valid YAML: {e}"));
                continue;
            }
        };
        match value.get("kind").and_then(Value::as_str) {
            Some("List" | "NodeList") => {
                let items = value
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for (i, item) in items.into_iter().enumerate() {
                    if let Some(node) = read_node(item, &format!("{here}: items[{i}]"), report) {
                        nodes.push(node);
                    }
                }
            }
            _ => {
                if let Some(node) = read_node(value, &here, report) {
                    nodes.push(node);
                }
            }
        }
    }
    nodes
}

fn read_node(value: Value, here: &str, report: &mut Report) -> Option<Node> {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind != "Node" {
        let kind = if kind.is_empty() { "has no kind" } else { kind };
        report.push(format!(
            "{here}: is not a Node ({kind}); --nodes takes `kubectl get nodes -o yaml` output"
        ));
        return None;
    }
    match serde_json::from_value::<Node>(value) {
        Ok(node) if node.metadata.name.is_some() => Some(node),
        Ok(_) => {
            report.push(format!("{here}: metadata.name: is required"));
            None
        }
        Err(e) => {
            report.push(format!("{here}: cannot be read as a Node: {e}"));
            None
        }
    }
}

/// YAML documents, each preceded by `---`, for `kubectl apply -f -`.
fn to_yaml_stream(documents: &[&Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for doc in documents {
        out.push_str("---\n");
        out.push_str(&to_yaml(doc)?);
    }
    Ok(out)
}

/// One YAML document. Long one-line strings are not folded: folding reflows a whole paragraph when one
/// word changes, which makes rendered output in Git hard to review. Multi-line strings (the CNI
/// configuration of a NetworkAttachmentDefinition) are literal blocks. Strings YAML 1.1 readers would
/// take for something else (`"on"`, `"100"`) are quoted, since kubectl reads YAML 1.1.
fn to_yaml(doc: &Value) -> anyhow::Result<String> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.folded_wrap_chars = usize::MAX;
    let mut text = serde_saphyr::to_string_with_options(doc, options).context("writing YAML")?;
    // The serializer leaves the newline off after some scalar styles at the very end.
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// A `v1 List`, the shape `kubectl get -o json` prints and `kubectl apply -f` accepts.
fn to_json_list(documents: &[&Value]) -> anyhow::Result<String> {
    let mut list = Map::new();
    list.insert("apiVersion".into(), Value::from("v1"));
    list.insert("kind".into(), Value::from("List"));
    list.insert(
        "items".into(),
        Value::Array(documents.iter().map(|d| (*d).clone()).collect()),
    );
    let mut text = serde_json::to_string_pretty(&Value::Object(list)).context("writing JSON")?;
    text.push('\n');
    Ok(text)
}

fn write_stdout(stdout: &mut dyn Write, bytes: &[u8]) -> anyhow::Result<()> {
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        // The reader went away (`spiderctl render ... | head`): not our problem to report.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to standard output"),
    }
}

/// `<kind-lowercase>_<namespace or cluster>_<name>.<ext>`.
fn file_name(doc: &Value, format: Format) -> String {
    let (kind, namespace, name) = object_key(doc);
    format!(
        "{}_{}_{}.{}",
        kind.to_lowercase(),
        namespace.unwrap_or("cluster"),
        name,
        format.extension()
    )
}

fn write_out_dir(
    dir: &Path,
    format: Format,
    documents: &[&Value],
    stderr: &mut dyn Write,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = BTreeSet::new();
    for doc in documents {
        let name = file_name(doc, format);
        // Object names are DNS names, so no `/` or `..` can reach the file name; check anyway.
        if name.contains('/') || name.starts_with('.') {
            bail!("refusing to write `{name}`: not a plain file name");
        }
        let text = match format {
            Format::Yaml => to_yaml(doc)?,
            Format::Json => {
                let mut text = serde_json::to_string_pretty(doc).context("writing JSON")?;
                text.push('\n');
                text
            }
        };
        let path = dir.join(&name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.insert(name);
    }
    writeln!(stderr, "wrote {} files to {}", written.len(), dir.display())?;
    let mut stale = Vec::new();
    for entry in list_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let name = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !written.contains(&name) {
            stale.push(name);
        }
    }
    if !stale.is_empty() {
        writeln!(
            stderr,
            "warning: {} has {} file{} this render did not write (left from an earlier render?): {}",
            dir.display(),
            stale.len(),
            if stale.len() == 1 { "" } else { "s" },
            stale.join(", ")
        )?;
    }
    Ok(())
}

/// What one topology rendered, for people: counts per kind, addresses per pool.
fn summarize(c: &Compiled<'_>, docs: &[Value], node_count: usize) -> String {
    let mut out = String::new();
    let t = c.topology;
    let _ = writeln!(
        out,
        "{KIND} {} ({}, document {}):",
        t.name(),
        t.source,
        t.document
    );
    let summary = c.rendered.summary();
    let _ = writeln!(out, "  {}", counted(summary.pools.len(), "SpiderIPPool"));
    let width = summary
        .pools
        .iter()
        .map(|(name, _)| name.len())
        .max()
        .unwrap_or(0);
    for ((name, size), pool) in summary.pools.iter().zip(&c.rendered.ip_pools) {
        let family = pool
            .spec
            .family()
            .map_or("?", spiderpool_schema::annotations::ip_version_label);
        let _ = writeln!(out, "    {name:<width$}  {family}  {}", counted_u128(*size, "IP"));
    }
    let reserved: u128 = c
        .rendered
        .reserved_ips
        .iter()
        .map(|r| address_count(&r.spec.ips))
        .sum();
    let _ = writeln!(
        out,
        "  {} ({})",
        counted(summary.reserved_ips, "SpiderReservedIP"),
        counted_u128(reserved, "IP")
    );
    let _ = writeln!(out, "  {}", counted(summary.multus_configs, "SpiderMultusConfig"));
    let _ = writeln!(
        out,
        "  {}",
        counted(
            summary.network_attachment_definitions,
            "NetworkAttachmentDefinition"
        )
    );
    let racks: Vec<&str> = c
        .rendered
        .interface_templates
        .iter()
        .map(|t| t.rack.as_str())
        .collect();
    if racks.is_empty() {
        let _ = writeln!(out, "  0 interface-task templates");
    } else {
        let _ = writeln!(
            out,
            "  {} (racks {})",
            counted(racks.len(), "interface-task template"),
            racks.join(", ")
        );
    }
    if let Some(tasks) = &c.tasks {
        let _ = writeln!(
            out,
            "  {} (for the {} read)",
            counted(tasks.len(), "SpiderInterfaceTask"),
            counted(node_count, "node")
        );
    }
    // App bindings render no object (the pod webhook applies them), so show what they ask of pods here.
    let _ = writeln!(out, "  {}", counted(c.rendered.pod_bindings.len(), "app binding"));
    for binding in &c.rendered.pod_bindings {
        let pods = match (&binding.workload, &binding.pod_selector) {
            (Some(workload), _) => workload.clone(),
            (None, Some(selector)) => format!("pods with {}", selector_text(selector)),
            (None, None) => "no pods".to_string(),
        };
        let _ = writeln!(out, "    {} ({}, {pods})", binding.app, binding.namespace);
        for (key, value) in &binding.annotations {
            let _ = writeln!(out, "      {key}: {value}");
        }
        for (nic, pools) in &binding.fixed_pools {
            let _ = writeln!(out, "      fixed-address pools for {nic}: {}", pools.join(", "));
        }
    }
    let _ = writeln!(out, "  {} in all", counted(docs.len(), "object"));
    out
}

/// A label selector in `kubectl`'s notation: `a=b,c in (d,e),f`.
fn selector_text(selector: &LabelSelector) -> String {
    let mut terms: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    for expr in selector.match_expressions.iter().flatten() {
        let values = expr.values.clone().unwrap_or_default().join(",");
        terms.push(match expr.operator.as_str() {
            "In" => format!("{} in ({values})", expr.key),
            "NotIn" => format!("{} notin ({values})", expr.key),
            "Exists" => expr.key.clone(),
            "DoesNotExist" => format!("!{}", expr.key),
            other => format!("{} {other} ({values})", expr.key),
        });
    }
    terms.join(",")
}

/// Addresses in an upstream address list (`ips` of a SpiderReservedIP), either family.
fn address_count(items: &[String]) -> u128 {
    [IpFamily::V4, IpFamily::V6]
        .into_iter()
        .find_map(|family| IpSet::parse_list(family, items).ok())
        .map_or(0, |set| set.len())
}

fn counted(n: usize, noun: &str) -> String {
    counted_u128(n as u128, noun)
}

fn counted_u128(n: u128, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_found_and_empty_ones_ignored() {
        let input = json!({"spec": {"racks": [{"name": "a", "uplink": "x", "bonds": []}], "extra": null}});
        let known = json!({"spec": {"racks": [{"name": "a"}]}});
        let mut out = Vec::new();
        unknown_fields(&input, &known, "", &mut out);
        assert_eq!(out, vec!["spec.racks[0].uplink"]);
    }

    #[test]
    fn file_names_follow_kind_namespace_name() {
        let doc =
            json!({"kind": "NetworkAttachmentDefinition", "metadata": {"name": "n", "namespace": "ns"}});
        assert_eq!(
            file_name(&doc, Format::Yaml),
            "networkattachmentdefinition_ns_n.yaml"
        );
        let doc = json!({"kind": "SpiderIPPool", "metadata": {"name": "p"}});
        assert_eq!(file_name(&doc, Format::Json), "spiderippool_cluster_p.json");
    }

    #[test]
    fn yaml_quotes_what_kubectl_would_misread() {
        let text = to_yaml(&json!({"a": "on", "b": "100", "c": "802.3ad", "d": "x\ny\n"})).unwrap();
        assert_eq!(text, "a: \"on\"\nb: \"100\"\nc: 802.3ad\nd: |\n  x\n  y\n");
    }

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = io::Error::new(io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(io)
            .context("reading /x: no such file")
            .context("SpiderNetwork a");
        assert_eq!(error_text(&error), "SpiderNetwork a: reading /x: no such file");
    }

    #[test]
    fn the_plugin_name_shows_in_usage() {
        let err = parse_args(&["/usr/local/bin/kubectl-spider".into(), "--help".into()]).unwrap_err();
        assert!(err.render().to_string().contains("kubectl spider"));
    }
}
