//! The coordinator on ipvlan, in the kernel tier (the host kernel has no ipvlan): Debian's real
//! `ipvlan` and `static` CNI plugins chained with our `coordinator` binary, run as a runtime runs a
//! conflist, inside a QEMU VM booting Debian's kernel. The VM has no API server, so the node daemon's
//! `GET /v1/coordinator/config` is answered by a stand-in on a unix socket with what a real agent
//! answers for a `default` SpiderCoordinator (the agent's side is tested against a real API server in
//! coordinator_e2e.rs). iptables-nft and the netfilter modules the reply path needs go into the VM.
//!
//! The last guest test runs the examples' one ipvlan network (dual-stack.yaml's `backend`) as its
//! NetworkAttachmentDefinition chains it: our `ifacer` makes the VLAN master, then ipvlan and the
//! coordinator, with `static` addresses from its pools in place of our IPAM.
//!
//! One VM runs every guest test below, one at a time; each uses names of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::json;
use spiderpool_tests::vm::{self, DEFAULT_MODULES, Vm};
use spiderpool_tests::{init_tracing, tools};

/// Where iptables looks for its extensions (Debian's multiarch path, compiled into it).
const XTABLES_DIR: &str = "/usr/lib/x86_64-linux-gnu/xtables";
/// The extensions the coordinator's mangle rules use (`conntrack`, `MARK`, `mark`, `CONNMARK`).
const XTABLES_EXTENSIONS: &[&str] = &[
    "libxt_standard.so",
    "libxt_conntrack.so",
    "libxt_MARK.so",
    "libxt_mark.so",
    "libxt_CONNMARK.so",
    "libxt_connmark.so",
];
/// Kernel modules for those rules, on top of the harness's links. `crc32c_generic` first: conntrack
/// needs `libcrc32c`, whose crc32c implementation is only a soft dependency (modules.softdep).
const NETFILTER_MODULES: &[&str] = &[
    "crc32c_generic",
    "nf_tables",
    "nft_compat",
    "xt_conntrack",
    "xt_mark",
    "xt_connmark",
];

#[test]
fn the_coordinator_wires_ipvlan_pods_on_a_real_kernel() -> Result<()> {
    init_tracing();
    let coordinator = tools::workspace_binary("spiderpool-coordinator", "coordinator", false)?;
    let xtables = tools::which("xtables-nft-multi").context(
        "xtables-nft-multi not found: install it with `apt-get install -y iptables` (or run tests/tools/install-test-deps.sh)",
    )?;
    let modules: Vec<&str> = DEFAULT_MODULES.iter().chain(NETFILTER_MODULES).copied().collect();
    let mut machine = Vm::new("coordinator-ipvlan")
        .modules(&modules)
        .binary(&coordinator, "/opt/cni/bin/coordinator")
        .binary(tools::debian_cni_plugin("ipvlan")?, "/opt/cni/bin/ipvlan")
        .binary(tools::debian_cni_plugin("static")?, "/opt/cni/bin/static");
    // xtables-nft-multi acts as the tool its name says.
    for name in [
        "iptables",
        "iptables-save",
        "iptables-restore",
        "ip6tables",
        "ip6tables-save",
        "ip6tables-restore",
    ] {
        machine = machine.binary(&xtables, &format!("/usr/sbin/{name}"));
    }
    for extension in XTABLES_EXTENSIONS {
        let path = Path::new(XTABLES_DIR).join(extension);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "reading {}: install iptables (or run tests/tools/install-test-deps.sh)",
                path.display()
            )
        })?;
        machine = machine.file(&path.display().to_string(), 0o644, bytes);
    }
    machine = machine
        .binary(
            tools::workspace_binary("spiderpool-ifacer", "ifacer", false)?,
            "/opt/cni/bin/ifacer",
        )
        .file(
            guest::EXAMPLE_CHAIN,
            0o644,
            example_ipvlan_chain()?.to_string().into_bytes(),
        );
    let summary = vm::run_guest_tests(machine, "guest::")?;
    assert!(summary.passed >= 3, "{summary:?}");
    Ok(())
}

/// The one ipvlan network of the example topologies (dual-stack.yaml's `backend`), as its
/// NetworkAttachmentDefinition chains it: `ifacer` making the VLAN master, Debian's ipvlan, our
/// coordinator with the render's values. The VM has no agent, so the IPAM is `static`, with the
/// first address and the gateway of the first pool of each family the NAD names (the pools of the
/// first zone). Returns `{"plugins": [...], "addresses": [...], "gateways": [...]}`.
fn example_ipvlan_chain() -> Result<serde_json::Value> {
    let path = tools::repo_root().join("examples/topologies/dual-stack.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let network: spiderpool_schema::SpiderNetwork = serde_saphyr::from_str(&text)?;
    let rendered = spiderpool_operator::compile::compile(&network)
        .map_err(|problems| anyhow::anyhow!("dual-stack.yaml: {problems:?}"))?;
    let nad = rendered
        .network_attachment_definitions
        .iter()
        .find(|nad| nad.metadata.name.as_deref() == Some("backend"))
        .context("dual-stack.yaml renders the backend NAD")?;
    let mut config = nad.spec.config_json()?.context("a config")?;
    let plugins = config["plugins"].as_array_mut().context("plugins")?;
    let main = plugins
        .iter_mut()
        .find(|plugin| plugin["type"] == "ipvlan")
        .context("backend is an ipvlan network")?;
    let (mut addresses, mut gateways) = (Vec::new(), Vec::new());
    for key in ["default_ipv4_ippool", "default_ipv6_ippool"] {
        let first_pool = main["ipam"][key][0].as_str().context("a pool per family")?;
        let pool = rendered
            .ip_pools
            .iter()
            .find(|pool| pool.metadata.name.as_deref() == Some(first_pool))
            .context("the NAD's pool is rendered")?;
        let prefix = pool.spec.subnet.split_once('/').context("a CIDR")?.1;
        let first = pool
            .spec
            .usable_addresses()?
            .first()
            .context("a usable address")?;
        let gateway = pool.spec.gateway.clone().context("a gateway")?;
        addresses.push(json!({"address": format!("{first}/{prefix}"), "gateway": gateway}));
        gateways.push(gateway);
    }
    main["ipam"] = json!({"type": "static", "addresses": addresses,
                          "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]});
    Ok(json!({"plugins": plugins, "addresses": addresses, "gateways": gateways}))
}

/// Run inside the VM by `the_coordinator_wires_ipvlan_pods_on_a_real_kernel`.
mod guest {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::os::unix::net::UnixListener;
    use std::process::{Command, Stdio};

    use serde_json::{Value, json};
    use spiderpool_agent_api::CoordinatorConfig;
    use spiderpool_tests::vm::guest::require_vm;

    const CNI_PATH: &str = "/opt/cni/bin";
    /// The example's ipvlan chain, put in the VM by the host side.
    pub const EXAMPLE_CHAIN: &str = "/etc/spiderpool-example-ipvlan.json";

    /// Runs `command` with sh, in `netns` (the node, the VM's own namespace, when `None`). busybox's
    /// sh runs its own applets before PATH, and its `ip` knows no namespaces: `ip` is iproute2's here.
    fn sh(netns: Option<&str>, command: &str) -> String {
        let command = &format!("ip() {{ /sbin/ip \"$@\"; }}; {command}");
        let mut process = match netns {
            Some(netns) => {
                let mut process = Command::new("ip");
                process.args(["netns", "exec", netns, "sh", "-c", command]);
                process
            }
            None => {
                let mut process = Command::new("sh");
                process.args(["-c", command]);
                process
            }
        };
        let output = process.output().expect("sh");
        assert!(
            output.status.success(),
            "{command} in {netns:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// What the agent answers for the `default` SpiderCoordinator of a cluster whose services are
    /// 10.96.0.0/12 (mode auto, tunePodRoutes, host rule table 500, podRPFilter 0).
    fn cluster_defaults() -> CoordinatorConfig {
        CoordinatorConfig {
            mode: "auto".into(),
            service_cidr: vec!["10.96.0.0/12".into()],
            tune_pod_routes: true,
            pod_default_route_nic: String::new(),
            host_rule_table: 500,
            veth_link_address: String::new(),
            ..CoordinatorConfig::default()
        }
    }

    /// A stand-in for the agent's `GET /v1/coordinator/config` on `socket`: answers every request
    /// with `config`, for as long as the VM runs.
    fn serve_agent(socket: &str, config: &CoordinatorConfig) {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).unwrap();
        let body = serde_json::to_string(config).unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut reader = BufReader::new(stream);
                let mut length = 0usize;
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut request_body = vec![0; length];
                reader.read_exact(&mut request_body).unwrap();
                let (status, answer) = if request_line.starts_with("GET /v1/coordinator/config") {
                    ("200 OK", body.clone())
                } else {
                    ("404 Not Found", "{}".to_owned())
                };
                let mut stream = reader.into_inner();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
    }

    /// One pod's attachment: the conflist's plugins, run as libcni runs them.
    struct Attachment<'a> {
        cni_version: &'a str,
        netns: &'a str,
        container: &'a str,
        ifname: &'a str,
        socket: &'a str,
        plugins: Vec<Value>,
    }

    impl Attachment<'_> {
        fn invoke(
            &self,
            command: &str,
            plugin: &Value,
            prev_result: Option<&Value>,
        ) -> Result<Value, String> {
            let mut netconf = plugin.clone();
            netconf["cniVersion"] = json!(self.cni_version);
            netconf["name"] = json!("ipvlan-net");
            if let Some(prev) = prev_result {
                netconf["prevResult"] = prev.clone();
            }
            let binary = format!("{CNI_PATH}/{}", plugin["type"].as_str().unwrap());
            let mut child = Command::new(&binary)
                .env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", self.container)
                .env("CNI_NETNS", format!("/run/netns/{}", self.netns))
                .env("CNI_IFNAME", self.ifname)
                .env("CNI_PATH", CNI_PATH)
                .env(
                    "CNI_ARGS",
                    format!(
                        "IgnoreUnknown=true;K8S_POD_NAMESPACE=vm;K8S_POD_NAME={}",
                        self.netns
                    ),
                )
                .env("SPIDERPOOL_IPAM_UNIX_SOCKET_PATH", self.socket)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(netconf.to_string().as_bytes())
                .unwrap();
            let output = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            if !output.status.success() {
                return Err(format!(
                    "{binary} {command} {}: {stdout} {}",
                    self.ifname,
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
            Ok(if stdout.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&stdout).unwrap()
            })
        }

        /// ADD through every plugin, each given the previous one's result; the last result.
        fn add(&self) -> Result<Value, String> {
            let mut result: Option<Value> = None;
            for plugin in &self.plugins {
                result = Some(self.invoke("ADD", plugin, result.as_ref())?);
            }
            Ok(result.unwrap())
        }

        /// DEL through every plugin in reverse order, with the cached result.
        fn del(&self, result: Option<&Value>) {
            for plugin in self.plugins.iter().rev() {
                self.invoke("DEL", plugin, result).unwrap();
            }
        }
    }

    /// Debian's ipvlan (`mode`, on `master`) with a static address, then our coordinator
    /// (with extra netconf keys `coordinator`).
    fn ipvlan_chain(
        master: &str,
        mode: &str,
        address: &str,
        gateway: &str,
        coordinator: Value,
    ) -> Vec<Value> {
        let mut coordinator = coordinator;
        coordinator["type"] = json!("coordinator");
        coordinator["logOptions"] = json!({"logLevel": "debug"});
        vec![
            json!({"type": "ipvlan", "master": master, "mode": mode,
                   "ipam": {"type": "static",
                            "addresses": [{"address": address, "gateway": gateway}],
                            "routes": [{"dst": "0.0.0.0/0"}]}}),
            coordinator,
        ]
    }

    /// What DEL must leave on the node as it found it.
    fn node_state() -> String {
        sh(
            None,
            "ip -d link show | grep -v 'link/ether'; ip rule; ip -6 rule; ip route show table all; \
             ip -6 route show table all; ip neigh show nud permanent; iptables-save | grep -v '^#'; true",
        )
    }

    /// A gateway namespace `<prefix>gw` behind the node's uplink `<prefix>up` (10.6.0.2/16 and
    /// 10.7.0.2/24 on the node, .1 on the gateway), and an empty pod namespace `<prefix>pod`.
    fn world(prefix: &str) -> (String, String, String) {
        let (gw, uplink, pod) = (
            format!("{prefix}gw"),
            format!("{prefix}up"),
            format!("{prefix}pod"),
        );
        sh(None, &format!("ip netns add {gw}; ip netns add {pod}"));
        sh(Some(&pod), "ip link set lo up");
        sh(
            None,
            &format!(
                "ip link add {uplink} type veth peer name eth0 netns {gw}; ip addr add 10.6.0.2/16 dev {uplink}; ip addr add 10.7.0.2/24 dev {uplink}; ip link set {uplink} up"
            ),
        );
        sh(
            Some(&gw),
            "ip addr add 10.6.0.1/16 dev eth0; ip addr add 10.7.0.1/24 dev eth0; ip link set eth0 up; ip link set lo up",
        );
        settle(&uplink);
        (gw, uplink, pod)
    }

    /// The kernel gives a link its IPv6 link-local address a moment after it comes up, and its
    /// `local fe80::` route only once duplicate address detection ends: waits for both, so that the
    /// node's state before a pod is the state after it.
    fn settle(link: &str) {
        for _ in 0..100 {
            let link_local = sh(None, &format!("ip -6 addr show dev {link} scope link"));
            if link_local.contains("fe80::") && !link_local.contains("tentative") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    #[test]
    #[ignore = "kernel tier: runs inside the VM (the_coordinator_wires_ipvlan_pods_on_a_real_kernel)"]
    fn ipvlan_l2_eth0_and_net1_reach_the_node_and_del_leaves_the_node_as_it_was() {
        require_vm();
        let socket = "/run/agent-l2.sock";
        serve_agent(socket, &cluster_defaults());
        let (gw, uplink, pod) = world("l2");
        let before = node_state();
        let container = "1f2e3d4c5b6a7988";
        let eth0 = Attachment {
            cni_version: "1.0.0",
            netns: &pod,
            container,
            ifname: "eth0",
            socket,
            plugins: ipvlan_chain(
                &uplink,
                "l2",
                "10.6.0.10/16",
                "10.6.0.1",
                json!({"txQueueLen": 2000}),
            ),
        };
        let eth0_result = eth0.add().unwrap();
        // The chained result is ipvlan's, passed on (the coordinator prints it unchanged).
        assert_eq!(eth0_result["ips"][0]["address"], "10.6.0.10/16", "{eth0_result}");
        let net1 = Attachment {
            ifname: "net1",
            plugins: ipvlan_chain(&uplink, "l2", "10.7.0.10/24", "10.7.0.1", json!({})),
            ..eth0
        };
        let net1_result = net1.add().unwrap();

        // The veth pair: the node reaches the pod (kubelet probes) and the pod its node, through it,
        // which ipvlan alone cannot do (a slave never talks to its master).
        let links = sh(Some(&pod), "ip -o link show");
        assert!(links.contains("veth0@"), "{links}");
        assert!(links.contains("qlen 2000"), "{links}");
        let host_veth = format!("veth{}", &container[..11]);
        assert!(sh(None, "ip -o link show").contains(&format!("{host_veth}@")));
        assert!(sh(Some(&pod), "ip route get 10.6.0.2").contains("dev veth0"));
        assert!(sh(None, "ip route get 10.6.0.10").contains(&format!("dev {host_veth}")));
        sh(Some(&pod), "ping -c1 -W2 10.6.0.2 >/dev/null");
        sh(None, "ping -c1 -W2 10.6.0.10 >/dev/null");
        sh(None, "ping -c1 -W2 10.7.0.10 >/dev/null");
        // Services through the node; everything else through ipvlan to the gateway.
        assert!(sh(Some(&pod), "ip route get 10.96.0.1").contains("dev veth0"));
        sh(Some(&pod), "ping -c1 -W2 10.6.0.1 >/dev/null");
        sh(Some(&pod), "ping -c1 -W2 -I 10.7.0.10 10.7.0.1 >/dev/null");
        // One default route, on eth0; net1's moved to its own table.
        let main = sh(Some(&pod), "ip route show table main");
        assert_eq!(main.matches("default").count(), 1, "{main}");
        assert!(main.contains("default via 10.6.0.1 dev eth0"), "{main}");
        assert!(sh(Some(&pod), "ip route show table 101").contains("default via 10.7.0.1 dev net1"));
        assert!(sh(Some(&pod), "ip rule").contains("from 10.7.0.10 lookup 101"));
        // The reply path for what entered through veth0.
        assert!(sh(Some(&pod), "iptables-save -t mangle").contains("-j CONNMARK --restore-mark"));
        assert!(sh(Some(&pod), "ip rule").contains("fwmark 0x1 lookup 100"));

        net1.del(Some(&net1_result));
        eth0.del(Some(&eth0_result));
        sh(None, &format!("ip netns del {pod}"));
        // A DEL the runtime retries after the namespace went is fine.
        eth0.del(None);
        assert_eq!(node_state(), before, "the node changed");
        sh(None, &format!("ip link del {uplink}; ip netns del {gw}"));
    }

    #[test]
    #[ignore = "kernel tier: runs inside the VM (the_coordinator_wires_ipvlan_pods_on_a_real_kernel)"]
    fn ipvlan_l3_keeps_its_masters_mac_under_a_mac_prefix_and_reaches_the_node() {
        require_vm();
        let socket = "/run/agent-l3.sock";
        let mut defaults = cluster_defaults();
        // A cluster-wide prefix, as a SpiderCoordinator may set for its macvlan pods.
        defaults.pod_mac_prefix = "0a:1b".into();
        serve_agent(socket, &defaults);
        let (gw, uplink, pod) = world("l3");
        let before = node_state();
        let eth0 = Attachment {
            cni_version: "1.0.0",
            netns: &pod,
            container: "3c4d5e6f7a8b9c0d",
            ifname: "eth0",
            socket,
            plugins: ipvlan_chain(&uplink, "l3", "10.6.0.20/16", "10.6.0.1", json!({})),
        };
        let result = eth0.add().unwrap();
        let master_mac = sh(None, &format!("cat /sys/class/net/{uplink}/address"));
        let pod_mac = sh(Some(&pod), "cat /sys/class/net/eth0/address");
        assert_eq!(pod_mac, master_mac, "ipvlan keeps its master's MAC");
        let log = std::fs::read_to_string("/var/log/spidernet/coordinator.log").unwrap();
        assert!(
            log.contains("podMACPrefix not applied to eth0: an ipvlan link keeps its master's MAC"),
            "{log}"
        );
        sh(Some(&pod), "ping -c1 -W2 10.6.0.2 >/dev/null");
        sh(None, "ping -c1 -W2 10.6.0.20 >/dev/null");
        eth0.del(Some(&result));
        sh(None, &format!("ip netns del {pod}"));
        assert_eq!(node_state(), before, "the node changed");
        sh(None, &format!("ip link del {uplink}; ip netns del {gw}"));
    }

    #[test]
    #[ignore = "kernel tier: runs inside the VM (the_coordinator_wires_ipvlan_pods_on_a_real_kernel)"]
    fn the_examples_ipvlan_network_starts_a_pod_through_its_vlan() {
        require_vm();
        let socket = "/run/agent-example.sock";
        serve_agent(socket, &cluster_defaults());
        let example: Value = serde_json::from_str(&std::fs::read_to_string(EXAMPLE_CHAIN).unwrap()).unwrap();
        let plugins = example["plugins"].as_array().unwrap().clone();
        let ifacer = &example["plugins"][0];
        assert_eq!(ifacer["type"], "ifacer", "{example}");
        let uplink = ifacer["interfaces"][0].as_str().unwrap();
        let vlan = ifacer["vlanID"].as_u64().unwrap();
        let master = example["plugins"][1]["master"].as_str().unwrap();
        assert_eq!(master, format!("{uplink}.{vlan}"));
        // The node's uplink under the example's name, cabled to a gateway that has the VLAN.
        let (gw, pod) = ("exgw", "expod");
        sh(None, &format!("ip netns add {gw}; ip netns add {pod}"));
        sh(Some(pod), "ip link set lo up");
        sh(
            None,
            &format!(
                "ip link add {uplink} type veth peer name eth0 netns {gw}; ip addr add 10.6.0.2/16 dev {uplink}; ip link set {uplink} up"
            ),
        );
        let mut gateway_setup = format!(
            "ip link set eth0 up; ip link add link eth0 name eth0.{vlan} type vlan id {vlan}; ip link set eth0.{vlan} up"
        );
        for (address, gateway) in example["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .zip(example["gateways"].as_array().unwrap())
        {
            let prefix = address["address"].as_str().unwrap().split('/').nth(1).unwrap();
            let flag = if gateway.as_str().unwrap().contains(':') {
                "-6 "
            } else {
                ""
            };
            gateway_setup.push_str(&format!(
                "; ip {flag}addr add {}/{prefix} dev eth0.{vlan} nodad",
                gateway.as_str().unwrap()
            ));
        }
        sh(Some(gw), &gateway_setup);
        settle(uplink);
        let before = node_state();
        let eth0 = Attachment {
            cni_version: "0.3.1",
            netns: pod,
            container: "5e6f7a8b9c0d1e2f",
            ifname: "eth0",
            socket,
            plugins,
        };
        let result = eth0.add().unwrap();
        // ifacer made the VLAN master; the pod's eth0 is an ipvlan on it, with both families.
        assert!(
            sh(None, &format!("ip -d link show {master}"))
                .contains(&format!("vlan protocol 802.1Q id {vlan}"))
        );
        let addresses = sh(Some(pod), "ip addr show dev eth0");
        for address in example["addresses"].as_array().unwrap() {
            let address = address["address"].as_str().unwrap();
            assert!(addresses.contains(address), "{address} in {addresses}");
        }
        // The coordinator's veth pair: the pod reaches its node, the node the pod.
        assert!(sh(Some(pod), "ip -o link show").contains("veth0@"));
        assert!(sh(Some(pod), "ip route get 10.6.0.2").contains("dev veth0"));
        sh(Some(pod), "ping -c1 -W2 10.6.0.2 >/dev/null");
        let v4 = example["addresses"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        sh(None, &format!("ping -c1 -W2 {v4} >/dev/null"));
        // The gateway, through the VLAN, in both families.
        for gateway in example["gateways"].as_array().unwrap() {
            let gateway = gateway.as_str().unwrap();
            let flag = if gateway.contains(':') { "-6 " } else { "" };
            sh(Some(pod), &format!("ping {flag}-c1 -W2 {gateway} >/dev/null"));
        }
        eth0.del(Some(&result));
        sh(None, &format!("ip netns del {pod}"));
        // The VLAN the ifacer made stays, as upstream's does; the coordinator's part is gone.
        sh(None, &format!("ip link del {master}"));
        assert_eq!(node_state(), before, "the node changed");
        sh(None, &format!("ip link del {uplink}; ip netns del {gw}"));
    }
}
