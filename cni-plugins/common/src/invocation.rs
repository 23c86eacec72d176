//! One invocation: the `CNI_*` environment, the attachment parameters of ADD, DEL and CHECK
//! (checked as the spec says), VERSION, and what the binary prints and how it exits.

use std::path::PathBuf;

use serde_json::Value;
use spiderpool_agent_api::codes;

use crate::args::CniArgs;
use crate::cni::{CniError, Command, LATEST_VERSION, VersionInfo};
use crate::confine::{self, LOG_DIR_ENV};

/// Environment variable naming the node daemon's socket when the netconf does not: the runtime's
/// environment on hosts that run several nodes' daemons (the project's node simulator does).
pub const SOCKET_PATH_ENV: &str = "SPIDERPOOL_IPAM_UNIX_SOCKET_PATH";

/// The `CNI_*` environment of one invocation; empty variables count as absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Option<String>,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`.
    pub args: Option<String>,
    /// `CNI_PATH` (read for completeness: our plugins delegate to nothing, so it is never
    /// required, even where the spec lists it).
    pub path: Option<String>,
    /// [`SOCKET_PATH_ENV`]: the daemon's socket when the netconf names none.
    pub socket_override: Option<String>,
    /// [`LOG_DIR_ENV`]: the directory log files must lie in, when not the default.
    pub log_dir: Option<String>,
}

impl Invocation {
    /// Reads the variables through `lookup` (e.g. `|name| std::env::var(name).ok()`).
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let read = |name: &str| lookup(name).filter(|value| !value.is_empty());
        Self {
            command: read("CNI_COMMAND"),
            container_id: read("CNI_CONTAINERID"),
            netns: read("CNI_NETNS"),
            ifname: read("CNI_IFNAME"),
            args: read("CNI_ARGS"),
            path: read("CNI_PATH"),
            socket_override: read(SOCKET_PATH_ENV),
            log_dir: read(LOG_DIR_ENV),
        }
    }
}

/// What the binary prints and how it exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Exactly what goes to stdout (may be empty: DEL, CHECK, GC and STATUS print nothing).
    pub stdout: String,
    /// 0 on success, 1 with a CNI error object on stdout.
    pub exit_code: i32,
}

impl Outcome {
    /// Success, printing `stdout`.
    pub fn success(stdout: String) -> Self {
        Self { stdout, exit_code: 0 }
    }

    /// Failure, printing `error` as a CNI error object.
    pub fn failure(error: &CniError) -> Self {
        // A CniError is strings and integers: serializing it cannot fail; the literal is a
        // last-resort guard so stdout is a CNI error object whatever happens.
        let stdout = serde_json::to_string(error).unwrap_or_else(|_| {
            format!(r#"{{"cniVersion":"{LATEST_VERSION}","code":999,"msg":"internal error","details":""}}"#)
        });
        Self { stdout, exit_code: 1 }
    }
}

/// VERSION: stdin is optional (older runtimes send nothing), else `{"cniVersion": ...}`.
pub fn version(stdin: &[u8]) -> Result<Outcome, CniError> {
    let requested = if stdin.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let value: Value = serde_json::from_slice(stdin).map_err(|error| {
            CniError::new(codes::DECODING_FAILURE, format!("stdin: not JSON: {error}"), "")
        })?;
        value.get("cniVersion").and_then(Value::as_str).map(str::to_owned)
    };
    let info = VersionInfo::answering(requested.as_deref());
    let stdout = serde_json::to_string(&info)
        .map_err(|error| CniError::new(codes::INTERNAL, format!("encoding VERSION: {error}"), ""))?;
    Ok(Outcome::success(stdout))
}

/// The attachment parameters of ADD, DEL and CHECK, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (may be empty on DEL).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    pub args: CniArgs,
}

impl Attachment {
    /// Checks the variables `command` requires (spec "Parameters"); `None` for VERSION, GC and
    /// STATUS, which have no attachment.
    pub fn from_invocation(command: Command, invocation: &Invocation) -> Result<Option<Self>, CniError> {
        let needs_netns = match command {
            Command::Add | Command::Check => true,
            Command::Del => false,
            Command::Version | Command::Gc | Command::Status => return Ok(None),
        };
        let mut missing = Vec::new();
        if invocation.container_id.is_none() {
            missing.push("CNI_CONTAINERID");
        }
        if needs_netns && invocation.netns.is_none() {
            missing.push("CNI_NETNS");
        }
        if invocation.ifname.is_none() {
            missing.push("CNI_IFNAME");
        }
        if !missing.is_empty() {
            return Err(CniError::new(
                codes::INVALID_ENVIRONMENT,
                format!("{}: missing", missing.join(", ")),
                format!(
                    "{command} requires CNI_CONTAINERID, CNI_IFNAME{}",
                    if needs_netns { " and CNI_NETNS" } else { "" }
                ),
            ));
        }
        let container_id = invocation.container_id.clone().unwrap_or_default();
        let ifname = invocation.ifname.clone().unwrap_or_default();
        validate_container_id(&container_id)?;
        validate_ifname(&ifname)?;
        let args = CniArgs::parse(invocation.args.as_deref().unwrap_or_default())
            .map_err(|error| CniError::new(codes::INVALID_ENVIRONMENT, error.to_string(), ""))?;
        Ok(Some(Self {
            container_id,
            netns: invocation.netns.clone().unwrap_or_default(),
            ifname,
            args,
        }))
    }

    /// `<namespace>/<name>` of the pod, `-` for what CNI_ARGS does not say (for log lines).
    pub fn pod_label(&self) -> String {
        format!(
            "{}/{}",
            self.args.pod_namespace.as_deref().unwrap_or("-"),
            self.args.pod_name.as_deref().unwrap_or("-")
        )
    }

    /// The pod's namespace and name, which ADD and CHECK cannot do without.
    pub fn pod_identity(&self) -> Result<(&str, &str), CniError> {
        match (self.args.pod_namespace.as_deref(), self.args.pod_name.as_deref()) {
            (Some(namespace), Some(name)) => Ok((namespace, name)),
            (namespace, _) => {
                let key = if namespace.is_none() {
                    "K8S_POD_NAMESPACE"
                } else {
                    "K8S_POD_NAME"
                };
                Err(CniError::new(
                    codes::INVALID_ENVIRONMENT,
                    format!("CNI_ARGS: {key} missing"),
                    "this plugin works per pod: the runtime must pass K8S_POD_NAMESPACE and \
                     K8S_POD_NAME in CNI_ARGS (kubelet does)",
                ))
            }
        }
    }
}

/// Spec: not empty, starts with an alphanumeric, then alphanumerics, `_`, `.` or `-`.
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|first| first.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(CniError::new(
            codes::INVALID_ENVIRONMENT,
            format!("CNI_CONTAINERID: {id:?} is not a valid container id"),
            "must start with a letter or digit, followed by letters, digits, '_', '.' or '-'",
        ))
    }
}

/// Spec: at most 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let reason = if name.len() > 15 {
        Some("longer than 15 characters")
    } else if name == "." || name == ".." {
        Some("must not be . or ..")
    } else if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        Some("must not contain '/', ':' or whitespace")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(CniError::new(
            codes::INVALID_ENVIRONMENT,
            format!("CNI_IFNAME: {name:?} is not a valid interface name: {reason}"),
            "",
        )),
    }
}

impl Invocation {
    /// The directory log files must lie in (see [`confine`]).
    pub fn log_dir(&self) -> PathBuf {
        confine::log_dir(self.log_dir.as_deref())
    }
}

/// Runs `body`, turning a panic (always a bug) into a CNI error object, so that stdout still
/// carries the protocol and the runtime gets a message instead of a bare exit status 101.
pub fn guarded(body: impl FnOnce() -> Outcome + std::panic::UnwindSafe) -> Outcome {
    std::panic::catch_unwind(body).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Outcome::failure(&CniError::new(
            codes::INTERNAL,
            "internal error: the plugin panicked",
            what,
        ))
    })
}

/// A plugin binary's whole `main`: reads the `CNI_*` environment and the netconf on stdin, runs
/// `plugin` (a panic becomes a CNI error object, see [`guarded`]), prints exactly the protocol's JSON
/// (or nothing) on stdout and exits 0 on success, 1 otherwise. Logs never go to stdout.
pub fn main(
    plugin: impl FnOnce(&Invocation, &[u8]) -> Outcome + std::panic::UnwindSafe,
) -> std::process::ExitCode {
    use std::io::{Read as _, Write as _};
    let invocation = Invocation::from_env(|name| std::env::var(name).ok());
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => guarded(|| plugin(&invocation, &stdin)),
        Err(error) => Outcome::failure(&CniError::new(codes::IO_FAILURE, format!("stdin: {error}"), "")),
    };
    let mut stdout = std::io::stdout().lock();
    // If stdout itself is gone there is no one left to tell; the exit status still says it.
    let _ = stdout
        .write_all(outcome.stdout.as_bytes())
        .and_then(|()| stdout.flush());
    if outcome.exit_code == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// The command of an invocation, required.
pub fn command(invocation: &Invocation) -> Result<Command, CniError> {
    match invocation.command.as_deref() {
        None => Err(CniError::new(
            codes::INVALID_ENVIRONMENT,
            "CNI_COMMAND: missing",
            "",
        )),
        Some(text) => text.parse(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_is_read_with_empty_values_absent() {
        let invocation = Invocation::from_env(|name| match name {
            "CNI_COMMAND" => Some("ADD".into()),
            "CNI_NETNS" => Some(String::new()),
            _ => None,
        });
        assert_eq!(
            invocation,
            Invocation {
                command: Some("ADD".into()),
                ..Invocation::default()
            }
        );
    }

    #[test]
    fn interface_names_and_container_ids_follow_the_spec() {
        for good in ["eth0", "net1", "x", "a-b_c.d"] {
            assert!(validate_ifname(good).is_ok(), "{good}");
        }
        for bad in [".", "..", "a/b", "a:b", "a b", "0123456789abcdef"] {
            assert_eq!(validate_ifname(bad).unwrap_err().code, 4, "{bad}");
        }
        for good in ["c0ffee", "A.b-c_d"] {
            assert!(validate_container_id(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "a/b", "a b"] {
            assert_eq!(validate_container_id(bad).unwrap_err().code, 4, "{bad}");
        }
    }

    #[test]
    #[allow(clippy::panic, reason = "the panic is what is tested")]
    fn a_panic_is_reported_as_an_error_object() {
        let outcome = guarded(|| panic!("bug"));
        assert_eq!(outcome.exit_code, 1);
        let value: Value = serde_json::from_str(&outcome.stdout).unwrap();
        assert_eq!(
            (value["code"].as_u64(), value["details"].as_str()),
            (Some(999), Some("bug"))
        );
    }

    #[test]
    fn failures_print_an_error_object_and_exit_1() {
        let outcome = Outcome::failure(&CniError::new(7, "k: bad", "").in_version("0.4.0"));
        assert_eq!(outcome.exit_code, 1);
        assert_eq!(
            outcome.stdout,
            r#"{"cniVersion":"0.4.0","code":7,"msg":"k: bad","details":""}"#
        );
    }
}
