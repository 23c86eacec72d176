//! The command handlers: environment + stdin in, protocol output out. The node daemon ([`Agent`])
//! and the kernel ([`Network`]) are passed in, so every path is unit-tested without a socket or root.
//!
//! - ADD: ask the daemon for the cluster defaults, resolve the configuration, plan against a
//!   snapshot of the pod and the host, carry the plan out, print `prevResult` unchanged.
//! - DEL: remove what ADD made on the host. It needs only the host rule table and the mode: when the
//!   daemon cannot answer, the netconf's values (or the defaults) are used, so that a node whose
//!   daemon is down still gets its host cleaned. It succeeds when the pod's namespace is gone.
//! - CHECK (0.4.0+): what ADD made on the host (and the pod's `veth0`) is still there.
//! - GC and STATUS (1.1.0): GC has nothing of its own to collect (DEL removes everything); STATUS is
//!   the daemon's health.

use std::net::IpAddr;

use serde_json::Value;
use spiderpool_agent_api::{
    CoordinatorConfig, GetCoordinatorArgs, PATH_COORDINATOR_CONFIG, PATH_HEALTHY, codes,
};
use spiderpool_cni_common::cni::{self, CniError, Command, LATEST_VERSION};
use spiderpool_cni_common::confine;
use spiderpool_cni_common::http::{ClientError, UnixClient, status_error};
use spiderpool_cni_common::invocation::{self, version};
pub use spiderpool_cni_common::invocation::{Attachment, Invocation, Outcome};
use spiderpool_cni_common::log::{LogLevel, Logger};
use spiderpool_cni_common::netconf::{ConfigError, peek_cni_version};

use crate::apply::{self, ApplyError, Kernel};
use crate::config::{self, Config, DEFAULT_HOST_RULE_TABLE, Mode, NetConf};
use crate::plan::{self, AddRequest, DelRequest, Plan, PlanError, Step};

/// How long the daemon may take to answer (it answers from caches).
pub const AGENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The node daemon as the coordinator uses it.
pub trait Agent {
    /// `GET /v1/coordinator/config`.
    fn coordinator_config(&self, args: &GetCoordinatorArgs) -> Result<CoordinatorConfig, ClientError>;
    /// `GET /v1/ipam/healthy`.
    fn healthy(&self) -> Result<(), ClientError>;
}

impl Agent for UnixClient {
    fn coordinator_config(&self, args: &GetCoordinatorArgs) -> Result<CoordinatorConfig, ClientError> {
        self.call("GET", PATH_COORDINATOR_CONFIG, Some(args))
    }

    fn healthy(&self) -> Result<(), ClientError> {
        let response = self.call_raw("GET", PATH_HEALTHY, None::<&()>)?;
        if response.status == 200 {
            Ok(())
        } else {
            Err(status_error(&response))
        }
    }
}

/// Why the kernel side failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The plan refused (mode, interfaces).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Carrying it out failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// What ADD did.
#[derive(Debug)]
pub struct Added {
    /// The plan carried out.
    pub plan: Plan,
}

/// The kernel as the coordinator changes it.
pub trait Network {
    /// Plans and carries out ADD for `ifname` of the pod at `netns`.
    fn add(
        &self,
        config: &Config,
        ifname: &str,
        container_id: &str,
        netns: &str,
    ) -> Result<Added, NetworkError>;
    /// Plans and carries out DEL on the host; the steps carried out.
    fn del(
        &self,
        container_id: &str,
        netns: Option<&str>,
        ifname: &str,
        known_ips: &[IpAddr],
        host_rule_table: u32,
    ) -> Result<Vec<Step>, NetworkError>;
    /// What is missing of ADD's work.
    fn check(
        &self,
        config: &Config,
        ifname: &str,
        container_id: &str,
        netns: &str,
        pod_ips: &[IpAddr],
    ) -> Result<Vec<String>, NetworkError>;
}

/// The real kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelNetwork;

impl Network for KernelNetwork {
    fn add(
        &self,
        config: &Config,
        ifname: &str,
        container_id: &str,
        netns: &str,
    ) -> Result<Added, NetworkError> {
        let mut kernel = Kernel::connect(Some(netns))?;
        kernel.bring_up(ifname)?;
        // One coordinator at a time changes the host's shared rule and its table.
        let _lock = apply::lock(std::path::Path::new(apply::LOCK_PATH))?;
        let snapshot = kernel.snapshot(ifname, container_id, &config.first_nic, config.host_rule_table)?;
        let request = AddRequest {
            config,
            ifname,
            container_id,
            veth_macs: apply::random_macs()?,
        };
        let plan = plan::plan_add(&request, &snapshot)?;
        kernel.apply(&plan.steps)?;
        Ok(Added { plan })
    }

    fn del(
        &self,
        container_id: &str,
        netns: Option<&str>,
        ifname: &str,
        known_ips: &[IpAddr],
        host_rule_table: u32,
    ) -> Result<Vec<Step>, NetworkError> {
        // A namespace already gone is no error: the host side is cleaned all the same.
        let netns = netns.filter(|path| std::path::Path::new(path).exists());
        let mut kernel = Kernel::connect(netns)?;
        let mut pod_ips = known_ips.to_vec();
        if pod_ips.is_empty() {
            pod_ips = kernel
                .pod_addresses(ifname)?
                .iter()
                .map(|net| net.addr())
                .collect();
        }
        let _lock = apply::lock(std::path::Path::new(apply::LOCK_PATH))?;
        let host = kernel.host_state(&[], container_id, None, host_rule_table)?;
        let steps = plan::plan_del(
            &DelRequest {
                container_id,
                pod_ips: &pod_ips,
                host_rule_table,
            },
            &host,
        );
        kernel.apply(&steps)?;
        Ok(steps)
    }

    fn check(
        &self,
        config: &Config,
        ifname: &str,
        container_id: &str,
        netns: &str,
        pod_ips: &[IpAddr],
    ) -> Result<Vec<String>, NetworkError> {
        let kernel = Kernel::connect(Some(netns))?;
        let snapshot = kernel.snapshot(ifname, container_id, &config.first_nic, config.host_rule_table)?;
        Ok(plan::check(config, ifname, container_id, pod_ips, &snapshot))
    }
}

/// Runs one invocation against the daemon's socket and the kernel.
pub fn run(invocation: &Invocation, stdin: &[u8]) -> Outcome {
    let socket = invocation
        .socket_override
        .clone()
        .unwrap_or_else(|| spiderpool_agent_api::DEFAULT_SOCKET_PATH.to_owned());
    run_with(
        invocation,
        stdin,
        &UnixClient::new(socket, AGENT_TIMEOUT),
        &KernelNetwork,
    )
}

/// Runs one invocation against `agent` and `network`.
pub fn run_with<A: Agent, N: Network>(
    invocation: &Invocation,
    stdin: &[u8],
    agent: &A,
    network: &N,
) -> Outcome {
    let label = peek_cni_version(stdin).unwrap_or_else(|| LATEST_VERSION.to_owned());
    let early_failure = |error: CniError| {
        let error = error.in_version(&label);
        Logger::stderr(LogLevel::Info).error(&error.to_string());
        Outcome::failure(&error)
    };
    let command = match invocation::command(invocation) {
        Ok(command) => command,
        Err(error) => return early_failure(error),
    };
    if command == Command::Version {
        return version(stdin).unwrap_or_else(early_failure);
    }
    let attachment = match Attachment::from_invocation(command, invocation) {
        Ok(attachment) => attachment,
        Err(error) => return early_failure(error),
    };
    let conf = match config::parse_netconf(stdin) {
        Ok(conf) => conf,
        Err(error) => return early_failure(error.to_cni()),
    };
    let log_dir = invocation.log_dir();
    if let Err(reason) = confine::check_log_file(&conf.log.file_path, &log_dir) {
        return early_failure(
            ConfigError::invalid("logOptions.logFile", reason)
                .to_cni()
                .in_version(conf.top.cni_version.as_str()),
        );
    }
    let logger = Logger::from_config(&conf.log, &log_dir);
    if let Some(attachment) = &attachment {
        logger.set_context(&attachment.container_id, &attachment.pod_label());
    }
    logger.info(&format!(
        "{command} {} (cniVersion {}, network {:?})",
        attachment.as_ref().map(|a| a.ifname.as_str()).unwrap_or_default(),
        conf.top.cni_version.as_str(),
        conf.top.name
    ));
    let started = std::time::Instant::now();
    let result = match (command, &attachment) {
        (Command::Add, Some(attachment)) => add(attachment, &conf, agent, network, &logger),
        (Command::Del, Some(attachment)) => {
            del(attachment, &conf, agent, network, &logger).map(|()| String::new())
        }
        (Command::Check, Some(attachment)) => {
            check(attachment, &conf, agent, network).map(|()| String::new())
        }
        (Command::Gc, _) => require_1_1(command, &conf).map(|()| String::new()),
        (Command::Status, _) => status(&conf, agent).map(|()| String::new()),
        _ => Err(CniError::new(
            codes::INTERNAL,
            format!("{command}: no attachment parameters"),
            "",
        )),
    };
    match result {
        Ok(stdout) => {
            logger.info(&format!("{command} succeeded in {:?}", started.elapsed()));
            Outcome::success(stdout)
        }
        Err(error) => {
            let error = error.in_version(conf.top.cni_version.as_str());
            logger.error(&format!("{command} failed: {error}"));
            Outcome::failure(&error)
        }
    }
}

/// The daemon's defaults for the pod, merged with the netconf.
fn resolved<A: Agent>(
    attachment: &Attachment,
    conf: &NetConf,
    agent: &A,
    command: Command,
) -> Result<Config, CniError> {
    let (namespace, name) = attachment.pod_identity()?;
    let defaults = agent
        .coordinator_config(&GetCoordinatorArgs {
            pod_name: name.to_owned(),
            pod_namespace: namespace.to_owned(),
        })
        .map_err(|error| error.to_cni(command))?;
    config::resolve(conf, &defaults).map_err(|error| error.to_cni())
}

fn network_error(command: Command, error: NetworkError) -> CniError {
    let code = match &error {
        NetworkError::Plan(
            PlanError::NoUnderlayVeth { .. }
            | PlanError::OverlayOnFirst(_)
            | PlanError::OverlayAfterUnderlay(_)
            | PlanError::NoDefaultRouteNic(_),
        ) => codes::INVALID_NETWORK_CONFIG,
        _ => codes::INTERNAL,
    };
    CniError::new(code, format!("{command}: {error}"), "")
}

fn add<A: Agent, N: Network>(
    attachment: &Attachment,
    conf: &NetConf,
    agent: &A,
    network: &N,
    logger: &Logger,
) -> Result<String, CniError> {
    let prev_result = conf.top.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            codes::INVALID_NETWORK_CONFIG,
            "prevResult: missing",
            "the coordinator is a chained plugin: it runs after a main plugin (macvlan, ipvlan, sriov, ...) in a plugin list",
        )
    })?;
    let config = resolved(attachment, conf, agent, Command::Add)?;
    let mut result = prev_result.clone();
    if config.mode != Mode::Disable {
        let added = network
            .add(
                &config,
                &attachment.ifname,
                &attachment.container_id,
                &attachment.netns,
            )
            .map_err(|error| network_error(Command::Add, error))?;
        logger.info(&format!(
            "{:?} mode, {} interface, table {}: {} changes",
            added.plan.mode,
            if added.plan.first_invoke { "first" } else { "extra" },
            added.plan.table,
            added.plan.steps.len()
        ));
        for step in &added.plan.steps {
            logger.debug(&step.to_string());
        }
        for note in &added.plan.notes {
            logger.warn(note);
        }
        for step in &added.plan.steps {
            if let Step::SetMac { link, mac } = step {
                set_result_mac(&mut result, link, mac);
            }
        }
    } else {
        logger.info("mode disable: prevResult passed through");
    }
    serde_json::to_string(&result)
        .map_err(|error| CniError::new(codes::INTERNAL, format!("encoding prevResult: {error}"), ""))
}

/// Records the MAC `podMACPrefix` gave `ifname` in the result's interface entry (in the pod's
/// sandbox). Upstream prints `prevResult` untouched, so its result (and Multus' network-status)
/// keeps the MAC the main plugin chose, and a CHECK of the chain fails on it (macvlan's compares).
/// Everything else stays as the main plugin said.
fn set_result_mac(result: &mut Value, ifname: &str, mac: &spiderpool_netlink::Mac) {
    let Some(interfaces) = result.get_mut("interfaces").and_then(Value::as_array_mut) else {
        return;
    };
    for interface in interfaces {
        let ours = interface.get("name").and_then(Value::as_str) == Some(ifname)
            && interface
                .get("sandbox")
                .and_then(Value::as_str)
                .is_some_and(|sandbox| !sandbox.is_empty());
        if ours {
            interface["mac"] = Value::String(spiderpool_netlink::link::format_mac(mac));
        }
    }
}

/// The addresses `prevResult` gives `ifname` (all of them when it names no interfaces).
fn prev_result_ips(prev_result: Option<&Value>, ifname: &str) -> Vec<IpAddr> {
    let Some(prev_result) = prev_result else {
        return Vec::new();
    };
    let interfaces = prev_result.get("interfaces").and_then(Value::as_array);
    prev_result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|ip| {
            let named = ip
                .get("interface")
                .and_then(Value::as_u64)
                .and_then(|index| interfaces?.get(usize::try_from(index).ok()?))
                .and_then(|entry| entry.get("name"))
                .and_then(Value::as_str);
            named.is_none_or(|name| name == ifname)
        })
        .filter_map(|ip| ip.get("address").and_then(Value::as_str))
        .filter_map(|address| cni::parse_cidr(address).map(|(ip, _)| ip))
        .collect()
}

fn del<A: Agent, N: Network>(
    attachment: &Attachment,
    conf: &NetConf,
    agent: &A,
    network: &N,
    logger: &Logger,
) -> Result<(), CniError> {
    let (local_mode, local_table) = config::local_mode_and_table(conf).map_err(|error| error.to_cni())?;
    let (mode, table) = match resolved(attachment, conf, agent, Command::Del) {
        Ok(config) => (config.mode, config.host_rule_table),
        Err(error) => {
            logger.warn(&format!(
                "the node daemon's defaults are not available ({error}); using the netconf's mode and hostRuleTable"
            ));
            (
                local_mode.unwrap_or(Mode::Auto),
                local_table.unwrap_or(DEFAULT_HOST_RULE_TABLE),
            )
        }
    };
    if mode == Mode::Disable {
        logger.info("mode disable: nothing to remove");
        return Ok(());
    }
    let netns = Some(attachment.netns.as_str()).filter(|path| !path.is_empty());
    let ips = prev_result_ips(conf.top.prev_result.as_ref(), &attachment.ifname);
    let steps = network
        .del(&attachment.container_id, netns, &attachment.ifname, &ips, table)
        .map_err(|error| network_error(Command::Del, error))?;
    for step in &steps {
        logger.debug(&step.to_string());
    }
    Ok(())
}

fn check<A: Agent, N: Network>(
    attachment: &Attachment,
    conf: &NetConf,
    agent: &A,
    network: &N,
) -> Result<(), CniError> {
    if !conf.top.cni_version.has_check() {
        return Err(CniError::new(
            codes::INCOMPATIBLE_VERSION,
            format!(
                "CHECK: not defined for cniVersion {}",
                conf.top.cni_version.as_str()
            ),
            "CHECK exists since CNI 0.4.0",
        ));
    }
    let prev_result = conf.top.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            codes::INVALID_NETWORK_CONFIG,
            "prevResult: missing (CHECK needs the ADD result)",
            "",
        )
    })?;
    let config = resolved(attachment, conf, agent, Command::Check)?;
    if config.mode == Mode::Disable {
        return Ok(());
    }
    let ips = prev_result_ips(Some(prev_result), &attachment.ifname);
    let problems = network
        .check(
            &config,
            &attachment.ifname,
            &attachment.container_id,
            &attachment.netns,
            &ips,
        )
        .map_err(|error| network_error(Command::Check, error))?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            codes::INTERNAL,
            format!(
                "CHECK: the coordinator's wiring of {} is incomplete",
                attachment.ifname
            ),
            problems.join("; "),
        ))
    }
}

fn require_1_1(command: Command, conf: &NetConf) -> Result<(), CniError> {
    if conf.top.cni_version.has_gc_and_status() {
        Ok(())
    } else {
        Err(CniError::new(
            codes::INCOMPATIBLE_VERSION,
            format!(
                "{command}: not defined for cniVersion {}",
                conf.top.cni_version.as_str()
            ),
            "GC and STATUS exist since CNI 1.1.0",
        ))
    }
}

fn status<A: Agent>(conf: &NetConf, agent: &A) -> Result<(), CniError> {
    require_1_1(Command::Status, conf)?;
    agent.healthy().map_err(|error| {
        CniError::new(
            codes::PLUGIN_NOT_AVAILABLE,
            "plugin not available: the spiderpool node daemon is not ready",
            error.to_string(),
        )
    })
}

#[cfg(test)]
#[path = "plugin/tests.rs"]
mod tests;
