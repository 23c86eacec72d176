//! The runtime side of CNI: what libcni does for containerd and Multus.
//!
//! Follows the CNI specification (<https://github.com/containernetworking/cni/blob/main/SPEC.md>),
//! sections "Execution of Network Configurations" and "Plugin Delegation", and libcni's behaviour:
//!
//! - A network configuration is a list (`{"name", "cniVersion" | "cniVersions", "plugins": [..]}`) or a
//!   single plugin configuration (`{"name", "cniVersion", "type", ..}`, libcni's `AddNetwork`).
//!   With `cniVersions` (CNI 1.1) the runtime picks the highest version it supports.
//! - ADD runs the plugins in order. Each plugin's stdin is its configuration with the list's `name`
//!   and `cniVersion` injected, `prevResult` set to the previous plugin's result (absent for the
//!   first), and `runtimeConfig` holding those capability arguments the plugin declares in
//!   `capabilities`. The last plugin's result is the result of the list.
//! - DEL runs the plugins in reverse order with the cached ADD result as `prevResult` (for
//!   `cniVersion` >= 0.4.0 when a cached result exists). CHECK runs them in order with the cached
//!   result (needs >= 0.4.0; skipped with `disableCheck`).
//! - The environment is the caller's minus any `CNI_*` variable, plus `CNI_COMMAND`, `CNI_CONTAINERID`,
//!   `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS` (`K=V;K=V`) and `CNI_PATH`. A plugin is the executable
//!   named by `type`, searched in `CNI_PATH`.
//! - A failing plugin exits non-zero with `{"code", "msg", "details"}` on stdout.
//!
//! Plugins can be run inside a named network namespace (`ip netns exec`): the node simulator runs
//! them in each node's own "host" namespace.
//!
//! Everything here is blocking (short-lived processes); call it from `spawn_blocking` in async code.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Map, Value};

/// The CNI versions this runtime speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A parsed network configuration (a list, or a single plugin configuration treated as a list of one).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    /// The version the runtime uses with the plugins (negotiated from `cniVersions` if present).
    pub cni_version: String,
    pub disable_check: bool,
    pub plugins: Vec<Map<String, Value>>,
    /// The source was a single plugin configuration, not a list.
    pub single: bool,
}

impl NetworkConfigList {
    /// Parses a configuration list, or a single plugin configuration (an object with `type`).
    pub fn from_value(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| anyhow!("a CNI configuration must be a JSON object"))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| anyhow!("CNI configuration has no \"name\""))?
            .to_owned();
        let cni_version = negotiate_version(obj)?;
        if let Some(plugins) = obj.get("plugins") {
            let plugins = plugins
                .as_array()
                .ok_or_else(|| anyhow!("\"plugins\" must be a list"))?;
            if plugins.is_empty() {
                bail!("error parsing configuration list {name:?}: no plugins in list");
            }
            let plugins = plugins
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let p = p
                        .as_object()
                        .ok_or_else(|| anyhow!("plugin #{i} of {name:?} is not an object"))?;
                    if p.get("type").and_then(Value::as_str).is_none_or(str::is_empty) {
                        bail!("plugin #{i} of {name:?} has no \"type\"");
                    }
                    Ok(p.clone())
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(NetworkConfigList {
                name,
                cni_version,
                disable_check: obj.get("disableCheck").and_then(Value::as_bool).unwrap_or(false),
                plugins,
                single: false,
            })
        } else if obj
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty())
        {
            Ok(NetworkConfigList {
                name,
                cni_version,
                disable_check: false,
                plugins: vec![obj.clone()],
                single: true,
            })
        } else {
            bail!("CNI configuration {name:?} has neither \"plugins\" nor \"type\"")
        }
    }

    /// Parses JSON text (see [`NetworkConfigList::from_value`]).
    pub fn from_json(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).context("CNI configuration is not JSON")?;
        Self::from_value(&value)
    }

    /// Whether the version has `prevResult` on DEL and supports CHECK (>= 0.4.0).
    pub fn version_at_least_0_4(&self) -> bool {
        version_key(&self.cni_version) >= (0, 4, 0)
    }
}

fn version_key(v: &str) -> (u32, u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

fn negotiate_version(obj: &Map<String, Value>) -> Result<String> {
    if let Some(list) = obj.get("cniVersions").and_then(Value::as_array) {
        let best = list
            .iter()
            .filter_map(Value::as_str)
            .filter(|v| SUPPORTED_VERSIONS.contains(v))
            .max_by_key(|v| version_key(v));
        return best.map(str::to_owned).ok_or_else(|| {
            anyhow!("none of cniVersions {list:?} is supported (supported: {SUPPORTED_VERSIONS:?})")
        });
    }
    let version = obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("CNI configuration has no \"cniVersion\""))?;
    if !SUPPORTED_VERSIONS.contains(&version) {
        bail!("cniVersion {version:?} is not supported (supported: {SUPPORTED_VERSIONS:?})");
    }
    Ok(version.to_owned())
}

/// The per-invocation parameters (libcni's `RuntimeConf`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConf {
    pub container_id: String,
    /// Path of the network namespace (`/var/run/netns/NAME`).
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` pairs, in order (duplicates allowed, as Multus produces them).
    pub args: Vec<(String, String)>,
    /// Capability arguments; a plugin gets those it declares in `capabilities` as `runtimeConfig`.
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    /// The `CNI_ARGS` value.
    pub fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
    Check,
}

impl CniCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
        }
    }
}

/// A failed plugin invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct CniError {
    pub command: &'static str,
    pub network: String,
    pub plugin: String,
    /// The error code the plugin reported, if it reported a well-formed error.
    pub code: Option<u64>,
    pub msg: String,
    pub details: String,
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CNI {} of network {:?}, plugin {:?}: ",
            self.command, self.network, self.plugin
        )?;
        if let Some(code) = self.code {
            write!(f, "code {code}: ")?;
        }
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// Executes plugins.
#[derive(Debug, Clone)]
pub struct CniExec {
    /// Directories searched for plugin executables (`CNI_PATH`).
    pub cni_path: Vec<PathBuf>,
    /// Run plugins inside this named network namespace (`ip netns exec NAME`).
    pub host_netns: Option<String>,
    /// Kill a plugin that runs longer than this.
    pub timeout: Duration,
    /// Extra environment of every plugin (what the runtime's own environment would carry on a real
    /// node, e.g. where that node's daemon listens).
    pub env: Vec<(String, String)>,
}

impl CniExec {
    pub fn new(cni_path: Vec<PathBuf>) -> Self {
        CniExec {
            cni_path,
            host_netns: None,
            timeout: Duration::from_secs(60),
            env: Vec::new(),
        }
    }

    /// ADD: runs the plugins in order, chaining `prevResult`; returns the final result.
    pub fn add(&self, net: &NetworkConfigList, rt: &RuntimeConf) -> Result<Value, Box<CniError>> {
        let mut prev: Option<Value> = None;
        for (i, plugin) in net.plugins.iter().enumerate() {
            let stdin = plugin_stdin(net, i, prev.as_ref(), rt);
            let result = self.invoke(CniCommand::Add, net, plugin, &stdin, rt)?;
            prev = Some(result.ok_or_else(|| {
                Box::new(CniError {
                    command: "ADD",
                    network: net.name.clone(),
                    plugin: plugin_type(plugin).to_owned(),
                    code: None,
                    msg: "plugin printed no result".to_owned(),
                    details: String::new(),
                })
            })?);
        }
        prev.ok_or_else(|| {
            Box::new(CniError {
                command: "ADD",
                network: net.name.clone(),
                plugin: String::new(),
                code: None,
                msg: "no plugins".to_owned(),
                details: String::new(),
            })
        })
    }

    /// DEL: runs the plugins in reverse order with the cached ADD result as `prevResult`.
    pub fn del(
        &self,
        net: &NetworkConfigList,
        rt: &RuntimeConf,
        cached: Option<&Value>,
    ) -> Result<(), Box<CniError>> {
        let prev = if net.version_at_least_0_4() { cached } else { None };
        for (i, plugin) in net.plugins.iter().enumerate().rev() {
            let stdin = plugin_stdin(net, i, prev, rt);
            self.invoke(CniCommand::Del, net, plugin, &stdin, rt)?;
        }
        Ok(())
    }

    /// CHECK: runs the plugins in order with the cached ADD result as `prevResult`.
    pub fn check(
        &self,
        net: &NetworkConfigList,
        rt: &RuntimeConf,
        cached: &Value,
    ) -> Result<(), Box<CniError>> {
        if !net.version_at_least_0_4() {
            return Err(Box::new(CniError {
                command: "CHECK",
                network: net.name.clone(),
                plugin: String::new(),
                code: None,
                msg: format!(
                    "configuration version {:?} does not support the CHECK command",
                    net.cni_version
                ),
                details: String::new(),
            }));
        }
        if net.disable_check {
            return Ok(());
        }
        for (i, plugin) in net.plugins.iter().enumerate() {
            let stdin = plugin_stdin(net, i, Some(cached), rt);
            self.invoke(CniCommand::Check, net, plugin, &stdin, rt)?;
        }
        Ok(())
    }

    /// Finds the executable for a plugin `type` in `CNI_PATH`.
    pub fn find_plugin(&self, plugin_type: &str) -> Option<PathBuf> {
        if plugin_type.contains('/') {
            return None;
        }
        self.cni_path
            .iter()
            .map(|dir| dir.join(plugin_type))
            .find(|p| crate::tools::is_executable(p))
    }

    fn cni_path_var(&self) -> String {
        self.cni_path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    fn invoke(
        &self,
        command: CniCommand,
        net: &NetworkConfigList,
        plugin: &Map<String, Value>,
        stdin: &Value,
        rt: &RuntimeConf,
    ) -> Result<Option<Value>, Box<CniError>> {
        let ty = plugin_type(plugin);
        let fail = |code: Option<u64>, msg: String, details: String| {
            Box::new(CniError {
                command: command.as_str(),
                network: net.name.clone(),
                plugin: ty.to_owned(),
                code,
                msg,
                details,
            })
        };
        let exe = self.find_plugin(ty).ok_or_else(|| {
            fail(
                None,
                format!("failed to find plugin {ty:?} in path {:?}", self.cni_path),
                String::new(),
            )
        })?;
        let stdin_bytes = serde_json::to_vec(stdin).map_err(|e| fail(None, e.to_string(), String::new()))?;
        tracing::debug!(
            command = command.as_str(),
            network = %net.name,
            plugin = ty,
            ifname = %rt.ifname,
            stdin = %String::from_utf8_lossy(&stdin_bytes),
            "CNI invoke"
        );
        let mut cmd = match &self.host_netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CNI_") {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", &rt.container_id)
            .env("CNI_NETNS", &rt.netns)
            .env("CNI_IFNAME", &rt.ifname)
            .env("CNI_ARGS", rt.cni_args())
            .env("CNI_PATH", self.cni_path_var())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let output = run_with_timeout(cmd, &stdin_bytes, self.timeout)
            .map_err(|e| fail(None, format!("{e:#}"), String::new()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        tracing::debug!(
            command = command.as_str(),
            plugin = ty,
            status = %output.status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            stdout = %stdout,
            stderr = %stderr,
            "CNI done"
        );
        if !output.status.success() {
            if let Ok(Value::Object(err)) = serde_json::from_str::<Value>(&stdout)
                && err.contains_key("msg")
            {
                return Err(fail(
                    err.get("code").and_then(Value::as_u64),
                    err.get("msg")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    err.get("details")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                ));
            }
            return Err(fail(
                None,
                format!("plugin failed ({}): {}", output.status, stdout.trim()),
                stderr.trim().to_owned(),
            ));
        }
        if stdout.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&stdout).map(Some).map_err(|e| {
            fail(
                None,
                format!("plugin printed invalid JSON: {e}"),
                stdout.trim().to_owned(),
            )
        })
    }
}

/// The `type` of a plugin configuration.
pub fn plugin_type(plugin: &Map<String, Value>) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or_default()
}

/// What plugin `index` of `net` gets on stdin (libcni `buildOneConfig` + `injectRuntimeConfig`).
pub fn plugin_stdin(net: &NetworkConfigList, index: usize, prev: Option<&Value>, rt: &RuntimeConf) -> Value {
    let mut conf = net.plugins.get(index).cloned().unwrap_or_default();
    conf.insert("name".to_owned(), Value::String(net.name.clone()));
    conf.insert("cniVersion".to_owned(), Value::String(net.cni_version.clone()));
    conf.remove("cniVersions");
    match prev {
        Some(prev) => {
            conf.insert("prevResult".to_owned(), prev.clone());
        }
        None => {
            conf.remove("prevResult");
        }
    }
    let runtime_config: Map<String, Value> = conf
        .get("capabilities")
        .and_then(Value::as_object)
        .map(|caps| {
            caps.iter()
                .filter(|(_, enabled)| enabled.as_bool() == Some(true))
                .filter_map(|(cap, _)| rt.capability_args.get(cap).map(|v| (cap.clone(), v.clone())))
                .collect()
        })
        .unwrap_or_default();
    if !runtime_config.is_empty() {
        conf.insert("runtimeConfig".to_owned(), Value::Object(runtime_config));
    }
    Value::Object(conf)
}

struct Output {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

fn run_with_timeout(mut cmd: Command, stdin: &[u8], timeout: Duration) -> Result<Output> {
    let mut child = cmd.spawn().with_context(|| format!("cannot execute {cmd:?}"))?;
    let mut out = child.stdout.take().context("no stdout pipe")?;
    let mut err = child.stderr.take().context("no stderr pipe")?;
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    if let Some(mut input) = child.stdin.take() {
        // A plugin may exit without reading stdin; a broken pipe is not our error.
        let _ = input.write_all(stdin);
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for a plugin")? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("plugin {cmd:?} did not finish within {timeout:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// The interfaces of a CNI result (`interfaces[]`).
pub fn result_interfaces(result: &Value) -> Vec<&Map<String, Value>> {
    result
        .get("interfaces")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_object).collect())
        .unwrap_or_default()
}

/// The addresses (`ips[].address`, CIDR notation) of a CNI result that belong to the sandbox
/// interface `ifname` (by the `interface` index), as containerd selects a pod's IPs.
pub fn sandbox_addresses(result: &Value, ifname: &str) -> Vec<String> {
    let ifaces = result_interfaces(result);
    result
        .get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter(|ip| {
                    ip.get("interface")
                        .and_then(Value::as_u64)
                        .and_then(|i| ifaces.get(usize::try_from(i).ok()?))
                        .is_some_and(|iface| {
                            iface.get("name").and_then(Value::as_str) == Some(ifname)
                                && iface
                                    .get("sandbox")
                                    .and_then(Value::as_str)
                                    .is_some_and(|s| !s.is_empty())
                        })
                })
                .filter_map(|ip| ip.get("address").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Strips the prefix length of an address in CIDR notation.
pub fn address_ip(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

/// Whether `dir` contains an executable plugin `name`.
pub fn has_plugin(dirs: &[PathBuf], name: &str) -> bool {
    dirs.iter()
        .any(|d| crate::tools::is_executable(&Path::new(d).join(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn single_config_is_a_list_of_one() {
        let net =
            NetworkConfigList::from_value(&json!({"cniVersion": "1.0.0", "name": "n", "type": "macvlan"}))
                .unwrap();
        assert!(net.single);
        assert_eq!(net.plugins.len(), 1);
    }

    #[test]
    fn cni_versions_picks_the_highest_supported() {
        let net = NetworkConfigList::from_value(
            &json!({"cniVersions": ["0.4.0", "1.1.0", "9.9.9"], "name": "n", "plugins": [{"type": "a"}]}),
        )
        .unwrap();
        assert_eq!(net.cni_version, "1.1.0");
    }

    #[test]
    fn stdin_injects_name_version_prev_result_and_runtime_config() {
        let net = NetworkConfigList::from_value(&json!({
            "cniVersion": "1.0.0", "name": "list",
            "plugins": [
                {"type": "a", "cniVersion": "0.3.1"},
                {"type": "b", "capabilities": {"ips": true, "mac": false}}
            ]
        }))
        .unwrap();
        let mut rt = RuntimeConf::default();
        rt.capability_args.insert("ips".into(), json!(["10.0.0.5/24"]));
        rt.capability_args
            .insert("mac".into(), json!("aa:bb:cc:dd:ee:ff"));
        let first = plugin_stdin(&net, 0, None, &rt);
        assert_eq!(first, json!({"type": "a", "cniVersion": "1.0.0", "name": "list"}));
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let second = plugin_stdin(&net, 1, Some(&prev), &rt);
        assert_eq!(second["prevResult"], prev);
        assert_eq!(second["runtimeConfig"], json!({"ips": ["10.0.0.5/24"]}));
    }

    #[test]
    fn sandbox_addresses_follow_interface_indexes() {
        let result = json!({
            "interfaces": [{"name": "veth1", "mac": "x"}, {"name": "eth0", "mac": "y", "sandbox": "/var/run/netns/a"}],
            "ips": [{"address": "10.0.0.2/24", "interface": 1}, {"address": "10.0.0.3/24", "interface": 0}, {"address": "fd00::2/64"}]
        });
        assert_eq!(sandbox_addresses(&result, "eth0"), vec!["10.0.0.2/24".to_owned()]);
    }

    #[test]
    fn rejects_lists_without_plugins_or_name() {
        assert!(
            NetworkConfigList::from_value(&json!({"cniVersion": "1.0.0", "name": "n", "plugins": []}))
                .is_err()
        );
        assert!(
            NetworkConfigList::from_value(&json!({"cniVersion": "1.0.0", "plugins": [{"type": "a"}]}))
                .is_err()
        );
        assert!(
            NetworkConfigList::from_value(&json!({"cniVersion": "0.1.0", "name": "n", "type": "a"})).is_err()
        );
    }
}
