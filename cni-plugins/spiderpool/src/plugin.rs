//! The command handlers: environment + stdin in, protocol output out. The daemon is passed in
//! (see [`run_with`]) so every path can be unit-tested without a socket.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::Value;
use spiderpool_agent_api::{IpamAddArgs, IpamAddResponse, IpamBatchDelArgs, IpamDelArgs, IpamGcArgs, codes};
use spiderpool_cni_common::cni::{
    self, CniError, Command, IpamResult, LATEST_VERSION, ResultRoute, SpecVersion,
};
use spiderpool_cni_common::invocation::{self, version};
pub use spiderpool_cni_common::invocation::{Attachment, Invocation, Outcome};
use spiderpool_cni_common::log::{LogLevel, Logger};

use crate::client::{ClientError, Daemon, UnixClient};
use crate::config::{self, IpamConfig, NetConf};
use crate::detect::{self, Neighbourhood, PodNeighbourhood};

/// Runs one invocation against the daemon socket named in the netconf.
pub fn run(invocation: &Invocation, stdin: &[u8]) -> Outcome {
    run_with(invocation, stdin, &PodNeighbourhood, |ipam: &IpamConfig| {
        let socket = config::effective_socket_path(ipam, invocation.socket_override.as_deref());
        UnixClient::new(&socket, ipam.timeout)
    })
}

/// Runs one invocation against the daemon `connect` returns for the parsed `ipam` section.
pub fn run_with<D: Daemon, N: Neighbourhood>(
    invocation: &Invocation,
    stdin: &[u8],
    neighbourhood: &N,
    connect: impl FnOnce(&IpamConfig) -> D,
) -> Outcome {
    // Errors found before the netconf is fully parsed still carry its cniVersion when readable.
    let label = config::peek_cni_version(stdin).unwrap_or_else(|| LATEST_VERSION.to_owned());
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
    if let Err(error) = config::confine(&conf.ipam, &log_dir, invocation.socket_override.as_deref()) {
        return early_failure(error.to_cni().in_version(conf.cni_version.as_str()));
    }
    let logger = Logger::from_config(&conf.ipam.log, &log_dir);
    if let Some(attachment) = &attachment {
        logger.set_context(&attachment.container_id, &attachment.pod_label());
        if !attachment.args.unknown.is_empty() {
            logger.debug(&format!(
                "CNI_ARGS keys ignored: {}",
                attachment.args.unknown.join(", ")
            ));
        }
    }
    logger.info(&format!(
        "{command} (cniVersion {}, network {:?})",
        conf.cni_version.as_str(),
        conf.name
    ));
    let daemon = connect(&conf.ipam);
    let result = match (command, &attachment) {
        (Command::Add, Some(attachment)) => add(attachment, &conf, &daemon, neighbourhood, &logger),
        (Command::Del, Some(attachment)) => del(attachment, &conf, &daemon, &logger).map(|()| String::new()),
        (Command::Check, Some(attachment)) => check(attachment, &conf, &daemon).map(|()| String::new()),
        (Command::Gc, _) => gc(&conf, &daemon, &logger).map(|()| String::new()),
        (Command::Status, _) => status(&conf, &daemon).map(|()| String::new()),
        // from_invocation returns an attachment for exactly ADD, DEL and CHECK.
        _ => Err(CniError::new(
            codes::INTERNAL,
            format!("{command}: no attachment parameters"),
            "",
        )),
    };
    match result {
        Ok(stdout) => {
            logger.info(&format!("{command} succeeded"));
            logger.debug(&format!("stdout: {stdout}"));
            Outcome::success(stdout)
        }
        Err(error) => {
            let error = error.in_version(conf.cni_version.as_str());
            logger.error(&format!("{command} failed: {error}"));
            Outcome::failure(&error)
        }
    }
}

fn add<D: Daemon, N: Neighbourhood>(
    attachment: &Attachment,
    conf: &NetConf,
    daemon: &D,
    neighbourhood: &N,
    logger: &Logger,
) -> Result<String, CniError> {
    let (pod_namespace, pod_name) = attachment.pod_identity()?;
    let request = IpamAddArgs {
        container_id: attachment.container_id.clone(),
        if_name: attachment.ifname.clone(),
        net_namespace: attachment.netns.clone(),
        pod_namespace: pod_namespace.to_owned(),
        pod_name: pod_name.to_owned(),
        pod_uid: attachment.args.pod_uid.clone().unwrap_or_default(),
        default_ipv4_ippool: conf.ipam.default_ipv4_ippool.clone(),
        default_ipv6_ippool: conf.ipam.default_ipv6_ippool.clone(),
        clean_gateway: conf.ipam.clean_gateway,
        match_master_subnet: conf.ipam.match_master_subnet,
        net_name: conf.name.clone(),
    };
    if logger.enabled(LogLevel::Debug) {
        logger.debug(&format!(
            "POST {}: {}",
            spiderpool_agent_api::PATH_IP,
            json_or_debug(&request)
        ));
    }
    let response = daemon.add(&request).map_err(|error| error.to_cni(Command::Add))?;
    if logger.enabled(LogLevel::Debug) {
        logger.debug(&format!("daemon answered: {}", json_or_debug(&response)));
    }
    let result = build_result(conf.cni_version, &attachment.ifname, &response)?;
    let checks = detect::checks(&attachment.ifname, &response);
    if !checks.is_empty() {
        detect(attachment, daemon, neighbourhood, &checks, logger)?;
    }
    let addresses: Vec<IpAddr> = result
        .ips
        .iter()
        .filter_map(|ip| cni::parse_cidr(&ip.address).map(|(address, _)| address))
        .collect();
    // The kernel announces addresses itself only when the link goes up or changes its MAC, and
    // neighbours may still cache this address at a previous holder (reference 1.4 step 6). A
    // failure (say, the main plugin has not brought the link up yet) costs nothing but the hint.
    match neighbourhood.announce(&attachment.netns, &attachment.ifname, &addresses) {
        Ok(()) => logger.debug(&format!("announced {addresses:?} on {}", attachment.ifname)),
        Err(error) => logger.debug(&format!(
            "announcing {addresses:?} on {}: {error}",
            attachment.ifname
        )),
    }
    serde_json::to_string(&result)
        .map_err(|error| CniError::new(codes::INTERNAL, format!("encoding the result: {error}"), ""))
}

/// IP-conflict and gateway detection (see [`detect`]). A conflict or a silent gateway releases the
/// pod's addresses through the batch-release endpoint, marked as a conflict release so that the
/// daemon keeps a StatefulSet member's or VM's retained addresses (upstream does not mark it,
/// reference 13.11), and fails the ADD naming the address and the holder or the gateway.
fn detect<D: Daemon, N: Neighbourhood>(
    attachment: &Attachment,
    daemon: &D,
    neighbourhood: &N,
    checks: &[detect::Check],
    logger: &Logger,
) -> Result<(), CniError> {
    logger.info(&format!("probing on {}: {checks:?}", attachment.ifname));
    let finding = neighbourhood
        .check(&attachment.netns, &attachment.ifname, checks)
        .map_err(|error| {
            CniError::new(
                codes::IO_FAILURE,
                format!(
                    "ADD: IP-conflict or gateway detection on {} could not run",
                    attachment.ifname
                ),
                error.to_string(),
            )
        })?;
    let Some(finding) = finding else {
        logger.info("no address conflict; the gateway answers");
        return Ok(());
    };
    logger.error(&format!("{finding}; releasing the pod's addresses"));
    let code = match finding {
        detect::Finding::Conflict { .. } => codes::IP_CONFLICT,
        detect::Finding::GatewayUnreachable { .. } => codes::GATEWAY_UNREACHABLE,
    };
    let release = IpamBatchDelArgs {
        is_release_conflict_ips: true,
        container_id: attachment.container_id.clone(),
        net_namespace: attachment.netns.clone(),
        pod_namespace: attachment.args.pod_namespace.clone().unwrap_or_default(),
        pod_name: attachment.args.pod_name.clone().unwrap_or_default(),
        pod_uid: attachment.args.pod_uid.clone().unwrap_or_default(),
    };
    let details = match daemon.release_all(&release) {
        Ok(()) => "the pod's addresses were released".to_owned(),
        Err(error) => {
            logger.error(&format!("releasing the pod's addresses: {error}"));
            format!("releasing the pod's addresses failed: {error}")
        }
    };
    Err(CniError::new(
        code,
        format!("ADD: {finding} (interface {})", attachment.ifname),
        details,
    ))
}

fn json_or_debug<T: serde::Serialize + std::fmt::Debug>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| format!("{value:?}"))
}

/// The CNI result for `ifname` out of the daemon's answer for every interface of the pod: its
/// addresses (`nic == ifname`) and routes (`ifName == ifname`), shaped for `version`.
pub fn build_result(
    version: SpecVersion,
    ifname: &str,
    response: &IpamAddResponse,
) -> Result<IpamResult, CniError> {
    let mut ips = Vec::new();
    for ip in response.ips.iter().filter(|ip| ip.nic == ifname) {
        let gateway = (!ip.gateway.is_empty()).then(|| ip.gateway.clone());
        if let Some(gateway) = &gateway
            && gateway.parse::<IpAddr>().is_err()
        {
            return Err(malformed_answer(format!(
                "gateway {gateway:?} of {ifname} is not an IP address"
            )));
        }
        let result_ip = cni::result_ip(version, &ip.address, gateway).ok_or_else(|| {
            malformed_answer(format!("address {:?} of {ifname} is not ip/prefix", ip.address))
        })?;
        ips.push(result_ip);
    }
    if ips.is_empty() {
        let answered: BTreeSet<&str> = response.ips.iter().map(|ip| ip.nic.as_str()).collect();
        return Err(CniError::new(
            codes::INTERNAL,
            format!("node daemon returned no address for interface {ifname}"),
            format!(
                "it answered for: [{}]",
                answered.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let mut routes = Vec::new();
    for route in response.routes.iter().filter(|route| route.if_name == ifname) {
        if cni::parse_cidr(&route.dst).is_none() {
            return Err(malformed_answer(format!(
                "route destination {:?} of {ifname} is not a CIDR",
                route.dst
            )));
        }
        let gw = (!route.gw.is_empty()).then(|| route.gw.clone());
        if let Some(gw) = &gw
            && gw.parse::<IpAddr>().is_err()
        {
            return Err(malformed_answer(format!(
                "route next hop {gw:?} of {ifname} is not an IP address"
            )));
        }
        routes.push(ResultRoute {
            dst: route.dst.clone(),
            gw,
        });
    }
    Ok(IpamResult {
        cni_version: version.as_str().to_owned(),
        ips,
        routes,
    })
}

fn malformed_answer(msg: String) -> CniError {
    CniError::new(
        codes::INTERNAL,
        format!("node daemon sent a malformed answer: {msg}"),
        "",
    )
}

/// DEL. Upstream logs and swallows every daemon error (reference 1.4, 13.11), trusting GC to
/// reclaim what leaks. We do better: "nothing to release" (2xx, or 404) is success, so DEL stays
/// idempotent, but an unreachable or failing daemon fails the DEL (code 11 for transport
/// failures, the daemon's own code otherwise) so the runtime retries it: a retried DEL costs
/// little, a leaked address can exhaust a pool.
fn del<D: Daemon>(
    attachment: &Attachment,
    conf: &NetConf,
    daemon: &D,
    logger: &Logger,
) -> Result<(), CniError> {
    // Kubelet always passes the pod identity; without it the daemon can still release by
    // container id, so it is forwarded as is rather than refused.
    let request = IpamDelArgs {
        container_id: attachment.container_id.clone(),
        if_name: attachment.ifname.clone(),
        net_namespace: attachment.netns.clone(),
        pod_namespace: attachment.args.pod_namespace.clone().unwrap_or_default(),
        pod_name: attachment.args.pod_name.clone().unwrap_or_default(),
        pod_uid: attachment.args.pod_uid.clone().unwrap_or_default(),
        net_name: conf.name.clone(),
    };
    match daemon.del(&request) {
        Ok(()) => Ok(()),
        Err(ClientError::Status { status: 404, .. }) => {
            logger.info("the daemon holds nothing for this interface: nothing to release");
            Ok(())
        }
        Err(error) => Err(error.to_cni(Command::Del)),
    }
}

/// CHECK: the addresses `prevResult` gave this interface must be the ones the daemon records
/// for the pod. (Upstream's CHECK is a no-op.)
fn check<D: Daemon>(attachment: &Attachment, conf: &NetConf, daemon: &D) -> Result<(), CniError> {
    if !conf.cni_version.has_check() {
        // The spec has no CHECK before 0.4.0; libcni's skel answers code 1 the same way.
        return Err(CniError::new(
            codes::INCOMPATIBLE_VERSION,
            format!("CHECK: not defined for cniVersion {}", conf.cni_version.as_str()),
            "CHECK exists since CNI 0.4.0",
        ));
    }
    let prev_result = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            codes::INVALID_NETWORK_CONFIG,
            "prevResult: missing (CHECK needs the ADD result)",
            "",
        )
    })?;
    let expected = prev_result_addresses(prev_result, &attachment.ifname)?;
    let (pod_namespace, pod_name) = attachment.pod_identity()?;
    let endpoint = daemon
        .workload_endpoint(pod_namespace, pod_name)
        .map_err(|error| error.to_cni(Command::Check))?;
    let recorded = endpoint
        .as_ref()
        .and_then(|endpoint| {
            endpoint
                .interfaces
                .iter()
                .find(|detail| detail.interface == attachment.ifname)
        })
        .map(|detail| {
            [&detail.ipv4, &detail.ipv6]
                .into_iter()
                .filter(|address| !address.is_empty())
                .map(|address| parse_address(address))
                .collect::<Option<Vec<_>>>()
        })
        .unwrap_or(Some(Vec::new()))
        .ok_or_else(|| {
            malformed_answer(format!("recorded addresses of {} are not IPs", attachment.ifname))
        })?;
    compare_addresses(&attachment.ifname, &expected, &recorded)
}

/// An address as recorded: `ip/prefix` or a bare `ip`.
fn parse_address(text: &str) -> Option<(IpAddr, Option<u8>)> {
    match cni::parse_cidr(text) {
        Some((ip, prefix)) => Some((ip, Some(prefix))),
        None => text.parse().ok().map(|ip| (ip, None)),
    }
}

/// The addresses `prevResult` gives `ifname`: every `ips[]` entry whose `interface` index names
/// an interface called `ifname`, or that has no index (an IPAM-only result).
pub fn prev_result_addresses(prev_result: &Value, ifname: &str) -> Result<Vec<(IpAddr, u8)>, CniError> {
    let bad = |key: String, reason: &str| {
        CniError::new(codes::INVALID_NETWORK_CONFIG, format!("{key}: {reason}"), "")
    };
    let interfaces = prev_result.get("interfaces").and_then(Value::as_array);
    let ips = match prev_result.get("ips") {
        None | Some(Value::Null) => return Err(bad("prevResult.ips".into(), "missing")),
        Some(Value::Array(ips)) => ips,
        Some(_) => return Err(bad("prevResult.ips".into(), "expected a list")),
    };
    let mut addresses = Vec::new();
    for (index, ip) in ips.iter().enumerate() {
        if let Some(interface) = ip.get("interface").and_then(Value::as_u64) {
            let name = usize::try_from(interface)
                .ok()
                .and_then(|interface| interfaces?.get(interface))
                .and_then(|entry| entry.get("name"))
                .and_then(Value::as_str);
            if name.is_some_and(|name| name != ifname) {
                continue;
            }
        }
        let address = ip.get("address").and_then(Value::as_str).unwrap_or_default();
        let parsed = cni::parse_cidr(address)
            .ok_or_else(|| bad(format!("prevResult.ips[{index}].address"), "expected ip/prefix"))?;
        addresses.push(parsed);
    }
    if addresses.is_empty() {
        return Err(bad(
            "prevResult.ips".into(),
            &format!("no address for interface {ifname}"),
        ));
    }
    Ok(addresses)
}

fn compare_addresses(
    ifname: &str,
    expected: &[(IpAddr, u8)],
    recorded: &[(IpAddr, Option<u8>)],
) -> Result<(), CniError> {
    let expected_ips: BTreeSet<IpAddr> = expected.iter().map(|(ip, _)| *ip).collect();
    let recorded_ips: BTreeSet<IpAddr> = recorded.iter().map(|(ip, _)| *ip).collect();
    // A prefix counts only where the daemon recorded one.
    let prefixes_agree = recorded.iter().all(|(ip, prefix)| {
        prefix.is_none_or(|prefix| {
            expected
                .iter()
                .any(|(other, other_prefix)| other == ip && *other_prefix == prefix)
        })
    });
    if expected_ips == recorded_ips && prefixes_agree {
        return Ok(());
    }
    let show = |list: Vec<String>| {
        if list.is_empty() {
            "nothing".to_owned()
        } else {
            list.join(", ")
        }
    };
    Err(CniError::new(
        codes::INTERNAL,
        format!("CHECK: the addresses of {ifname} differ from what the node daemon records for the pod"),
        format!(
            "prevResult has {}; the daemon records {}",
            show(
                expected
                    .iter()
                    .map(|(ip, prefix)| format!("{ip}/{prefix}"))
                    .collect()
            ),
            show(
                recorded
                    .iter()
                    .map(|(ip, prefix)| prefix
                        .map_or_else(|| ip.to_string(), |prefix| format!("{ip}/{prefix}")))
                    .collect()
            )
        ),
    ))
}

fn require_gc_and_status(command: Command, conf: &NetConf) -> Result<(), CniError> {
    if conf.cni_version.has_gc_and_status() {
        Ok(())
    } else {
        Err(CniError::new(
            codes::INCOMPATIBLE_VERSION,
            format!(
                "{command}: not defined for cniVersion {}",
                conf.cni_version.as_str()
            ),
            "GC and STATUS exist since CNI 1.1.0",
        ))
    }
}

/// GC: the daemon releases what it holds for this network outside `cni.dev/valid-attachments`.
/// Prints nothing on success. A missing list is refused rather than read as "none is valid",
/// which would release every address of the network.
fn gc<D: Daemon>(conf: &NetConf, daemon: &D, logger: &Logger) -> Result<(), CniError> {
    require_gc_and_status(Command::Gc, conf)?;
    if conf.name.is_empty() {
        return Err(CniError::new(
            codes::INVALID_NETWORK_CONFIG,
            "name: missing (GC works per network)",
            "",
        ));
    }
    let valid_attachments = conf.valid_attachments.clone().ok_or_else(|| {
        CniError::new(
            codes::INVALID_NETWORK_CONFIG,
            "cni.dev/valid-attachments: missing",
            "GC without the list of valid attachments would release every address of the network",
        )
    })?;
    let response = daemon
        .gc(&IpamGcArgs {
            net_name: conf.name.clone(),
            valid_attachments,
        })
        .map_err(|error| error.to_cni(Command::Gc))?;
    logger.info(&format!(
        "GC released {} attachment(s) of network {:?}",
        response.released.len(),
        conf.name
    ));
    for attachment in &response.released {
        logger.debug(&format!(
            "released {}/{}",
            attachment.container_id, attachment.if_name
        ));
    }
    Ok(())
}

/// STATUS: ready when the daemon's health endpoint answers 200; otherwise code 50 (or 51 when the
/// daemon says existing pods are affected). Prints nothing on success.
fn status<D: Daemon>(conf: &NetConf, daemon: &D) -> Result<(), CniError> {
    require_gc_and_status(Command::Status, conf)?;
    daemon.healthy().map_err(|error| {
        let code = match &error {
            ClientError::Status {
                error: body,
                coded: true,
                ..
            } if body.code == 51 => 51,
            _ => codes::PLUGIN_NOT_AVAILABLE,
        };
        CniError::new(
            code,
            "plugin not available: the spiderpool node daemon is not ready",
            error.to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use serde_json::json;
    use spiderpool_agent_api::{
        Attachment as GcAttachment, ErrorResponse, InterfaceDetail, IpConfig, IpamGcResponse, Route,
        WorkloadEndpointStatus,
    };

    use super::*;

    /// A daemon in memory: canned answers, recorded requests.
    #[derive(Default)]
    struct FakeDaemon {
        add_answer: Option<IpamAddResponse>,
        fail_with: Option<fn() -> ClientError>,
        endpoint: Option<WorkloadEndpointStatus>,
        adds: RefCell<Vec<IpamAddArgs>>,
        dels: RefCell<Vec<IpamDelArgs>>,
        gcs: RefCell<Vec<IpamGcArgs>>,
        release_alls: RefCell<Vec<IpamBatchDelArgs>>,
        refuse_release: bool,
    }

    /// The pod's segment in memory: a canned finding, recorded probes and announcements.
    #[derive(Default)]
    struct FakeNeighbourhood {
        finding: Option<detect::Finding>,
        broken: bool,
        checks: RefCell<Vec<(String, String, Vec<detect::Check>)>>,
        announced: RefCell<Vec<(String, Vec<IpAddr>)>>,
    }

    impl Neighbourhood for FakeNeighbourhood {
        fn check(
            &self,
            netns: &str,
            ifname: &str,
            checks: &[detect::Check],
        ) -> Result<Option<detect::Finding>, detect::DetectError> {
            self.checks
                .borrow_mut()
                .push((netns.to_owned(), ifname.to_owned(), checks.to_vec()));
            if self.broken {
                return Err(detect::DetectError::NoInterface(ifname.to_owned()));
            }
            Ok(self.finding)
        }

        fn announce(&self, _: &str, ifname: &str, addresses: &[IpAddr]) -> Result<(), detect::DetectError> {
            self.announced
                .borrow_mut()
                .push((ifname.to_owned(), addresses.to_vec()));
            Ok(())
        }
    }

    impl FakeDaemon {
        fn failure(&self) -> Result<(), ClientError> {
            self.fail_with.map_or(Ok(()), |make| Err(make()))
        }
    }

    impl Daemon for &FakeDaemon {
        fn add(&self, args: &IpamAddArgs) -> Result<IpamAddResponse, ClientError> {
            self.adds.borrow_mut().push(args.clone());
            self.failure()?;
            Ok(self.add_answer.clone().unwrap_or_default())
        }
        fn del(&self, args: &IpamDelArgs) -> Result<(), ClientError> {
            self.dels.borrow_mut().push(args.clone());
            self.failure()
        }
        fn workload_endpoint(&self, _: &str, _: &str) -> Result<Option<WorkloadEndpointStatus>, ClientError> {
            self.failure()?;
            Ok(self.endpoint.clone())
        }
        fn gc(&self, args: &IpamGcArgs) -> Result<IpamGcResponse, ClientError> {
            self.gcs.borrow_mut().push(args.clone());
            self.failure()?;
            Ok(IpamGcResponse {
                released: vec![GcAttachment {
                    container_id: "old".into(),
                    if_name: "eth0".into(),
                }],
            })
        }
        fn healthy(&self) -> Result<(), ClientError> {
            self.failure()
        }
        fn release_all(&self, args: &IpamBatchDelArgs) -> Result<(), ClientError> {
            self.release_alls.borrow_mut().push(args.clone());
            if self.refuse_release {
                return Err(ClientError::Status {
                    status: 403,
                    error: ErrorResponse {
                        code: codes::RELEASE_FORBIDDEN,
                        msg: "refusing to release the retained addresses of a StatefulSet member".into(),
                        details: String::new(),
                    },
                    coded: true,
                });
            }
            self.failure()
        }
    }

    fn refused() -> ClientError {
        ClientError::Unreachable {
            path: "/run/x.sock".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        }
    }

    fn not_found() -> ClientError {
        ClientError::Status {
            status: 404,
            error: ErrorResponse {
                code: 3,
                msg: "no endpoint".into(),
                details: String::new(),
            },
            coded: true,
        }
    }

    fn exhausted() -> ClientError {
        ClientError::Status {
            status: 500,
            error: ErrorResponse {
                code: 102,
                msg: "all pools exhausted".into(),
                details: "p1: 0 free".into(),
            },
            coded: true,
        }
    }

    fn invocation(command: &str) -> Invocation {
        Invocation {
            command: Some(command.into()),
            container_id: Some("c0ffee".into()),
            netns: Some("/var/run/netns/pod".into()),
            ifname: Some("net1".into()),
            args: Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;K8S_POD_UID=uid-1".into()),
            path: Some("/opt/cni/bin".into()),
            socket_override: None,
            log_dir: None,
        }
    }

    fn netconf(version: &str, extra: Value) -> Vec<u8> {
        // Handler tests do not look at logs (the log module tests them); discard them.
        let log = "/dev/null";
        let mut conf = json!({
            "cniVersion": version, "name": "macvlan-ens192", "type": "macvlan",
            "ipam": {"type": "spiderpool", "log_file_path": log, "default_ipv4_ippool": ["v4"], "clean_gateway": true}
        });
        if let (Some(conf), Value::Object(extra)) = (conf.as_object_mut(), extra) {
            conf.extend(extra);
        }
        conf.to_string().into_bytes()
    }

    fn two_nic_answer() -> IpamAddResponse {
        let ip = |nic: &str, address: &str, gateway: &str| IpConfig {
            version: if address.contains(':') { 6 } else { 4 },
            address: address.into(),
            nic: nic.into(),
            gateway: gateway.into(),
            ..IpConfig::default()
        };
        let route = |nic: &str, dst: &str, gw: &str| Route {
            if_name: nic.into(),
            dst: dst.into(),
            gw: gw.into(),
        };
        IpamAddResponse {
            ips: vec![
                ip("eth0", "10.6.0.10/16", "10.6.0.1"),
                ip("net1", "10.7.0.10/24", "10.7.0.1"),
                ip("net1", "fd00:7::10/64", ""),
            ],
            routes: vec![
                route("eth0", "0.0.0.0/0", "10.6.0.1"),
                route("net1", "10.96.0.0/12", "10.7.0.1"),
                route("net1", "fd00:96::/64", ""),
            ],
            dns: None,
        }
    }

    fn run_fake(invocation: &Invocation, stdin: &[u8], daemon: &FakeDaemon) -> (Outcome, Value) {
        run_near(invocation, stdin, daemon, &FakeNeighbourhood::default())
    }

    fn run_near(
        invocation: &Invocation,
        stdin: &[u8],
        daemon: &FakeDaemon,
        neighbourhood: &FakeNeighbourhood,
    ) -> (Outcome, Value) {
        let outcome = run_with(invocation, stdin, neighbourhood, |_| daemon);
        let value = if outcome.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&outcome.stdout).unwrap()
        };
        (outcome, value)
    }

    /// The two-NIC answer with both detections on for `net1`'s IPv4 address.
    fn detecting_daemon() -> FakeDaemon {
        let mut answer = two_nic_answer();
        for ip in answer.ips.iter_mut().filter(|ip| ip.nic == "net1") {
            ip.enable_ip_conflict_detection = true;
            ip.enable_gateway_detection = true;
        }
        FakeDaemon {
            add_answer: Some(answer),
            ..FakeDaemon::default()
        }
    }

    #[test]
    fn detection_probes_this_interface_and_then_the_addresses_are_announced() {
        let daemon = detecting_daemon();
        let neighbourhood = FakeNeighbourhood::default();
        let (outcome, value) = run_near(
            &invocation("ADD"),
            &netconf("1.0.0", json!({})),
            &daemon,
            &neighbourhood,
        );
        assert_eq!(outcome.exit_code, 0, "{value}");
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(
            *neighbourhood.checks.borrow(),
            [(
                "/var/run/netns/pod".to_owned(),
                "net1".to_owned(),
                vec![
                    detect::Check::Conflict {
                        address: ip("10.7.0.10")
                    },
                    detect::Check::Gateway {
                        address: ip("10.7.0.10"),
                        gateway: ip("10.7.0.1")
                    },
                    detect::Check::Conflict {
                        address: ip("fd00:7::10")
                    },
                ]
            )]
        );
        assert_eq!(
            *neighbourhood.announced.borrow(),
            [("net1".to_owned(), vec![ip("10.7.0.10"), ip("fd00:7::10")])]
        );
        assert!(daemon.release_alls.borrow().is_empty());
    }

    #[test]
    fn without_detection_nothing_is_probed_but_addresses_are_announced() {
        let daemon = FakeDaemon {
            add_answer: Some(two_nic_answer()),
            ..FakeDaemon::default()
        };
        let neighbourhood = FakeNeighbourhood::default();
        let (outcome, _) = run_near(
            &invocation("ADD"),
            &netconf("1.0.0", json!({})),
            &daemon,
            &neighbourhood,
        );
        assert_eq!(outcome.exit_code, 0);
        assert!(neighbourhood.checks.borrow().is_empty());
        assert_eq!(neighbourhood.announced.borrow().len(), 1);
    }

    #[test]
    fn a_conflict_or_a_silent_gateway_releases_the_pod_and_fails_naming_it() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        for (finding, code, text) in [
            (
                detect::Finding::Conflict {
                    address: ip("10.7.0.10"),
                    holder: [0x0a, 0, 0, 0, 0, 9],
                },
                105,
                "ADD: IP conflict: 10.7.0.10 is already in use by 0a:00:00:00:00:09 (interface net1)",
            ),
            (
                detect::Finding::GatewayUnreachable {
                    address: ip("10.7.0.10"),
                    gateway: ip("10.7.0.1"),
                },
                106,
                "ADD: gateway 10.7.0.1 did not answer ARP from 10.7.0.10",
            ),
        ] {
            let daemon = detecting_daemon();
            let neighbourhood = FakeNeighbourhood {
                finding: Some(finding),
                ..FakeNeighbourhood::default()
            };
            let (outcome, value) = run_near(
                &invocation("ADD"),
                &netconf("1.0.0", json!({})),
                &daemon,
                &neighbourhood,
            );
            assert_eq!(outcome.exit_code, 1);
            assert_eq!(value["code"], code, "{value}");
            assert!(value["msg"].as_str().unwrap().starts_with(text), "{value}");
            assert_eq!(value["details"], "the pod's addresses were released");
            let releases = daemon.release_alls.borrow();
            assert_eq!(releases.len(), 1);
            assert!(
                releases[0].is_release_conflict_ips,
                "a StatefulSet's addresses are kept"
            );
            assert_eq!(
                (
                    releases[0].pod_namespace.as_str(),
                    releases[0].pod_name.as_str(),
                    releases[0].pod_uid.as_str()
                ),
                ("ns", "web-0", "uid-1")
            );
            assert!(
                neighbourhood.announced.borrow().is_empty(),
                "nothing announced after a failure"
            );
        }
    }

    #[test]
    fn a_refused_release_and_a_failed_probe_are_reported() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let daemon = FakeDaemon {
            refuse_release: true,
            ..detecting_daemon()
        };
        let conflict = FakeNeighbourhood {
            finding: Some(detect::Finding::Conflict {
                address: ip("10.7.0.10"),
                holder: [0x0a, 0, 0, 0, 0, 9],
            }),
            ..FakeNeighbourhood::default()
        };
        let (_, value) = run_near(
            &invocation("ADD"),
            &netconf("1.0.0", json!({})),
            &daemon,
            &conflict,
        );
        assert_eq!(value["code"], 105);
        assert!(
            value["details"]
                .as_str()
                .unwrap()
                .contains("refusing to release the retained addresses"),
            "{value}"
        );
        let broken = FakeNeighbourhood {
            broken: true,
            ..FakeNeighbourhood::default()
        };
        let (_, value) = run_near(
            &invocation("ADD"),
            &netconf("1.0.0", json!({})),
            &detecting_daemon(),
            &broken,
        );
        assert_eq!(value["code"], 5, "{value}");
        assert!(
            value["msg"].as_str().unwrap().contains("could not run"),
            "{value}"
        );
    }

    #[test]
    fn add_keeps_only_this_interface_and_shapes_per_version() {
        for version in cni::SUPPORTED_VERSIONS {
            let daemon = FakeDaemon {
                add_answer: Some(two_nic_answer()),
                ..FakeDaemon::default()
            };
            let (outcome, value) = run_fake(&invocation("ADD"), &netconf(version, json!({})), &daemon);
            assert_eq!(outcome.exit_code, 0, "{version}: {}", outcome.stdout);
            let old = SpecVersion::parse(version).unwrap().ips_carry_version();
            let expected_ips = if old {
                json!([
                    {"version": "4", "address": "10.7.0.10/24", "gateway": "10.7.0.1"},
                    {"version": "6", "address": "fd00:7::10/64"}
                ])
            } else {
                json!([{"address": "10.7.0.10/24", "gateway": "10.7.0.1"}, {"address": "fd00:7::10/64"}])
            };
            assert_eq!(
                value,
                json!({
                    "cniVersion": version,
                    "ips": expected_ips,
                    "routes": [{"dst": "10.96.0.0/12", "gw": "10.7.0.1"}, {"dst": "fd00:96::/64"}]
                }),
                "{version}"
            );
        }
    }

    #[test]
    fn add_sends_the_pod_and_the_ipam_settings() {
        let daemon = FakeDaemon {
            add_answer: Some(two_nic_answer()),
            ..FakeDaemon::default()
        };
        run_fake(&invocation("ADD"), &netconf("1.0.0", json!({})), &daemon);
        assert_eq!(
            daemon.adds.borrow().as_slice(),
            [IpamAddArgs {
                container_id: "c0ffee".into(),
                if_name: "net1".into(),
                net_namespace: "/var/run/netns/pod".into(),
                pod_namespace: "ns".into(),
                pod_name: "web-0".into(),
                pod_uid: "uid-1".into(),
                default_ipv4_ippool: vec!["v4".into()],
                default_ipv6_ippool: vec![],
                clean_gateway: true,
                match_master_subnet: false,
                net_name: "macvlan-ens192".into(),
            }]
        );
    }

    #[test]
    fn add_without_an_address_for_the_interface_fails() {
        let mut answer = two_nic_answer();
        answer.ips.retain(|ip| ip.nic == "eth0");
        let daemon = FakeDaemon {
            add_answer: Some(answer),
            ..FakeDaemon::default()
        };
        let (outcome, value) = run_fake(&invocation("ADD"), &netconf("1.1.0", json!({})), &daemon);
        assert_eq!(outcome.exit_code, 1);
        assert_eq!(value["code"], 999);
        assert!(value["msg"].as_str().unwrap().contains("net1"), "{value}");
        assert_eq!(value["details"], "it answered for: [eth0]");
    }

    #[test]
    fn malformed_daemon_addresses_are_refused() {
        for (address, gateway) in [("10.7.0.10", ""), ("10.7.0.10/24", "gw")] {
            let mut answer = two_nic_answer();
            answer.ips[1].address = address.into();
            answer.ips[1].gateway = gateway.into();
            let error = build_result(SpecVersion::V1_0_0, "net1", &answer).unwrap_err();
            assert!(error.msg.contains("malformed"), "{error}");
        }
        let mut answer = two_nic_answer();
        answer.routes[1].dst = "default".into();
        assert!(build_result(SpecVersion::V1_0_0, "net1", &answer).is_err());
    }

    #[test]
    fn add_needs_the_pod_identity() {
        let daemon = FakeDaemon::default();
        for (args, key) in [
            ("K8S_POD_NAME=p", "K8S_POD_NAMESPACE"),
            ("K8S_POD_NAMESPACE=n", "K8S_POD_NAME"),
        ] {
            let invocation = Invocation {
                args: Some(args.into()),
                ..invocation("ADD")
            };
            let (outcome, value) = run_fake(&invocation, &netconf("1.0.0", json!({})), &daemon);
            assert_eq!(outcome.exit_code, 1);
            assert_eq!(value["code"], 4);
            assert_eq!(value["msg"], format!("CNI_ARGS: {key} missing"));
        }
        assert!(daemon.adds.borrow().is_empty());
    }

    #[test]
    fn missing_environment_is_code_4_and_names_every_variable() {
        let daemon = FakeDaemon::default();
        let stdin = netconf("0.3.1", json!({}));
        let cases = [
            (
                Invocation {
                    command: None,
                    ..invocation("ADD")
                },
                "CNI_COMMAND: missing",
            ),
            (
                Invocation {
                    command: Some("FROB".into()),
                    ..invocation("ADD")
                },
                "CNI_COMMAND: unknown command \"FROB\"",
            ),
            (
                Invocation {
                    container_id: None,
                    netns: None,
                    ..invocation("ADD")
                },
                "CNI_CONTAINERID, CNI_NETNS: missing",
            ),
            (
                Invocation {
                    ifname: None,
                    ..invocation("CHECK")
                },
                "CNI_IFNAME: missing",
            ),
            (
                Invocation {
                    container_id: Some("-bad".into()),
                    ..invocation("DEL")
                },
                "CNI_CONTAINERID: \"-bad\"",
            ),
            (
                Invocation {
                    ifname: Some("a/b".into()),
                    ..invocation("ADD")
                },
                "CNI_IFNAME: \"a/b\"",
            ),
            (
                Invocation {
                    ifname: Some("x".repeat(16)),
                    ..invocation("ADD")
                },
                "CNI_IFNAME:",
            ),
            (
                Invocation {
                    args: Some("junk".into()),
                    ..invocation("ADD")
                },
                "CNI_ARGS:",
            ),
        ];
        for (invocation, message) in cases {
            let (outcome, value) = run_fake(&invocation, &stdin, &daemon);
            assert_eq!(outcome.exit_code, 1, "{message}");
            assert_eq!(value["code"], 4, "{message}: {value}");
            assert_eq!(value["cniVersion"], "0.3.1");
            assert!(
                value["msg"].as_str().unwrap().starts_with(message),
                "{message}: {value}"
            );
        }
        // DEL does not need CNI_NETNS.
        let del = Invocation {
            netns: None,
            ..invocation("DEL")
        };
        assert_eq!(run_fake(&del, &stdin, &daemon).0.exit_code, 0);
    }

    #[test]
    fn stdin_problems_have_their_codes() {
        let daemon = FakeDaemon::default();
        let (_, value) = run_fake(&invocation("ADD"), b"{nope", &daemon);
        assert_eq!(
            (value["code"].as_u64(), value["cniVersion"].as_str()),
            (Some(6), Some(LATEST_VERSION))
        );
        let (_, value) = run_fake(
            &invocation("ADD"),
            br#"{"cniVersion":"0.2.0","ipam":{}}"#,
            &daemon,
        );
        assert_eq!(
            (value["code"].as_u64(), value["cniVersion"].as_str()),
            (Some(1), Some("0.2.0"))
        );
        let (_, value) = run_fake(
            &invocation("ADD"),
            &netconf("1.0.0", json!({"ipam": {"clean_gateway": 1}})),
            &daemon,
        );
        assert_eq!(value["code"], 7);
        assert!(
            value["msg"].as_str().unwrap().starts_with("ipam.clean_gateway:"),
            "{value}"
        );
    }

    #[test]
    fn version_answers_without_stdin_and_in_the_requested_version() {
        let daemon = FakeDaemon::default();
        let bare = Invocation {
            command: Some("VERSION".into()),
            ..Invocation::default()
        };
        let (outcome, value) = run_fake(&bare, b"", &daemon);
        assert_eq!(outcome.exit_code, 0);
        assert_eq!(value["cniVersion"], "1.1.0");
        assert_eq!(value["supportedVersions"], json!(cni::SUPPORTED_VERSIONS));
        let (_, value) = run_fake(&bare, br#"{"cniVersion":"0.4.0"}"#, &daemon);
        assert_eq!(value["cniVersion"], "0.4.0");
        let (_, value) = run_fake(&bare, b"garbage", &daemon);
        assert_eq!(value["code"], 6);
    }

    #[test]
    fn daemon_errors_map_to_cni_codes() {
        for (make, command, code) in [
            (refused as fn() -> ClientError, "ADD", 11),
            (exhausted, "ADD", 102),
            (refused, "DEL", 11),
            (exhausted, "DEL", 102),
            (refused, "GC", 11),
            (refused, "STATUS", 50),
            (exhausted, "STATUS", 50),
            (refused, "CHECK", 11),
        ] {
            let daemon = FakeDaemon {
                fail_with: Some(make),
                ..FakeDaemon::default()
            };
            let extra = json!({
                "prevResult": {"cniVersion": "1.1.0", "ips": [{"address": "10.7.0.10/24"}]},
                "cni.dev/valid-attachments": []
            });
            let (outcome, value) = run_fake(&invocation(command), &netconf("1.1.0", extra), &daemon);
            assert_eq!(outcome.exit_code, 1, "{command}");
            assert_eq!(value["code"], code, "{command}: {value}");
            assert_eq!(value["cniVersion"], "1.1.0");
        }
        let text = ClientError::Status {
            status: 503,
            error: ErrorResponse {
                code: 999,
                msg: "starting".into(),
                details: String::new(),
            },
            coded: false,
        }
        .to_cni(Command::Add);
        assert_eq!(text.code, 11);
    }

    #[test]
    fn del_is_idempotent_but_never_swallows_failures() {
        let daemon = FakeDaemon {
            fail_with: Some(not_found),
            ..FakeDaemon::default()
        };
        let (outcome, _) = run_fake(&invocation("DEL"), &netconf("1.0.0", json!({})), &daemon);
        assert_eq!(
            outcome,
            Outcome {
                stdout: String::new(),
                exit_code: 0
            }
        );
        assert_eq!(daemon.dels.borrow()[0].pod_name, "web-0");
        assert_eq!(daemon.dels.borrow()[0].net_name, "macvlan-ens192");
        let daemon = FakeDaemon {
            fail_with: Some(refused),
            ..FakeDaemon::default()
        };
        let (outcome, value) = run_fake(&invocation("DEL"), &netconf("1.0.0", json!({})), &daemon);
        assert_eq!(outcome.exit_code, 1);
        assert_eq!(value["code"], 11);
        assert!(value["msg"].as_str().unwrap().contains("/run/x.sock"), "{value}");
    }

    fn endpoint(ipv4: &str, ipv6: &str) -> WorkloadEndpointStatus {
        WorkloadEndpointStatus {
            pod_namespace: "ns".into(),
            pod_name: "web-0".into(),
            interfaces: vec![
                InterfaceDetail {
                    interface: "eth0".into(),
                    ipv4: "10.6.0.10/16".into(),
                    ..InterfaceDetail::default()
                },
                InterfaceDetail {
                    interface: "net1".into(),
                    ipv4: ipv4.into(),
                    ipv6: ipv6.into(),
                    ..InterfaceDetail::default()
                },
            ],
            ..WorkloadEndpointStatus::default()
        }
    }

    /// A main plugin's result: interfaces, with `ips[].interface` pointing at them.
    fn chained_prev_result() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "net1-host"}, {"name": "net1", "sandbox": "/var/run/netns/pod"}, {"name": "eth0"}],
            "ips": [
                {"address": "10.7.0.10/24", "gateway": "10.7.0.1", "interface": 1},
                {"address": "fd00:7::10/64", "interface": 1},
                {"address": "10.6.0.10/16", "interface": 2}
            ]
        })
    }

    #[test]
    fn check_compares_prev_result_with_what_the_daemon_records() {
        let stdin = netconf("1.0.0", json!({"prevResult": chained_prev_result()}));
        let good = FakeDaemon {
            endpoint: Some(endpoint("10.7.0.10/24", "fd00:7::10/64")),
            ..FakeDaemon::default()
        };
        assert_eq!(
            run_fake(&invocation("CHECK"), &stdin, &good).0,
            Outcome {
                stdout: String::new(),
                exit_code: 0
            }
        );
        let bare_ips = FakeDaemon {
            endpoint: Some(endpoint("10.7.0.10", "fd00:7::10")),
            ..FakeDaemon::default()
        };
        assert_eq!(run_fake(&invocation("CHECK"), &stdin, &bare_ips).0.exit_code, 0);

        for (ipv4, ipv6) in [
            ("10.7.0.11/24", "fd00:7::10/64"),
            ("10.7.0.10/24", ""),
            ("10.7.0.10/25", "fd00:7::10/64"),
        ] {
            let daemon = FakeDaemon {
                endpoint: Some(endpoint(ipv4, ipv6)),
                ..FakeDaemon::default()
            };
            let (outcome, value) = run_fake(&invocation("CHECK"), &stdin, &daemon);
            assert_eq!(outcome.exit_code, 1, "{ipv4} {ipv6}");
            assert_eq!(value["code"], 999);
            assert!(
                value["details"].as_str().unwrap().contains("10.7.0.10/24"),
                "{value}"
            );
        }
        let gone = FakeDaemon::default();
        let (_, value) = run_fake(&invocation("CHECK"), &stdin, &gone);
        assert!(
            value["details"]
                .as_str()
                .unwrap()
                .ends_with("the daemon records nothing"),
            "{value}"
        );
    }

    #[test]
    fn check_needs_0_4_and_a_prev_result() {
        let daemon = FakeDaemon::default();
        let (_, value) = run_fake(
            &invocation("CHECK"),
            &netconf("0.3.1", json!({"prevResult": chained_prev_result()})),
            &daemon,
        );
        assert_eq!(value["code"], 1);
        let (_, value) = run_fake(&invocation("CHECK"), &netconf("0.4.0", json!({})), &daemon);
        assert_eq!(
            (value["code"].as_u64(), value["msg"].as_str()),
            (Some(7), Some("prevResult: missing (CHECK needs the ADD result)"))
        );
        let (_, value) = run_fake(
            &invocation("CHECK"),
            &netconf(
                "0.4.0",
                json!({"prevResult": {"ips": [{"address": "10.6.0.10/16", "interface": 0}], "interfaces": [{"name": "eth0"}]}}),
            ),
            &daemon,
        );
        assert_eq!(value["msg"], "prevResult.ips: no address for interface net1");
    }

    #[test]
    fn gc_sends_the_valid_attachments_and_prints_nothing() {
        let daemon = FakeDaemon::default();
        let gc = Invocation {
            command: Some("GC".into()),
            ..Invocation::default()
        };
        let extra = json!({"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "net1"}]});
        let (outcome, _) = run_fake(&gc, &netconf("1.1.0", extra.clone()), &daemon);
        assert_eq!(
            outcome,
            Outcome {
                stdout: String::new(),
                exit_code: 0
            }
        );
        assert_eq!(
            daemon.gcs.borrow().as_slice(),
            [IpamGcArgs {
                net_name: "macvlan-ens192".into(),
                valid_attachments: vec![GcAttachment {
                    container_id: "c1".into(),
                    if_name: "net1".into()
                }],
            }]
        );
        let (_, value) = run_fake(&gc, &netconf("1.0.0", extra), &daemon);
        assert_eq!(value["code"], 1);
        let (_, value) = run_fake(&gc, &netconf("1.1.0", json!({})), &daemon);
        assert_eq!(
            (value["code"].as_u64(), value["msg"].as_str()),
            (Some(7), Some("cni.dev/valid-attachments: missing"))
        );
        assert_eq!(daemon.gcs.borrow().len(), 1);
    }

    #[test]
    fn status_is_silent_when_healthy_and_code_50_otherwise() {
        let status = Invocation {
            command: Some("STATUS".into()),
            ..Invocation::default()
        };
        let healthy = FakeDaemon::default();
        assert_eq!(
            run_fake(&status, &netconf("1.1.0", json!({})), &healthy).0.stdout,
            ""
        );
        let (_, value) = run_fake(&status, &netconf("0.4.0", json!({})), &healthy);
        assert_eq!(value["code"], 1);
        let down = FakeDaemon {
            fail_with: Some(refused),
            ..FakeDaemon::default()
        };
        let (_, value) = run_fake(&status, &netconf("1.1.0", json!({})), &down);
        assert_eq!(value["code"], 50);
        assert!(
            value["details"].as_str().unwrap().contains("/run/x.sock"),
            "{value}"
        );
    }
}
