//! Differential check against upstream Spiderpool's own `coordinator` (v1.2.2, built from its Go
//! module by `tests/tools/build-upstream-spiderpool.sh`): two identical worlds (a gateway, a node, a
//! pod with a macvlan `eth0` and `net1`), one wired by upstream's plugin and one by ours, both asking
//! the same real `spiderpool-agent` for the cluster's defaults. After ADD of both interfaces the pod's
//! and the node's routes (every table), rules, static neighbours and mangle rules must be the same,
//! once the veth pair's random MACs (and the link-local addresses made from them) are named instead
//! of spelled out.
//!
//! Upstream's plugin talks to the agent only at `/var/run/spidernet/spiderpool.sock`: it runs in a
//! private mount namespace where that directory holds a link to the test agent's socket.
//!
//! DEL differs on purpose: upstream never removes the node's `from all lookup 500` rule; ours does
//! once no pod's route is left in the table. That is checked too.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use serde_json::{Value, json};
use spiderpool_tests::coordinator::{synced_coordinator, upstream_coordinator};
use spiderpool_tests::daemon::Daemon;
use spiderpool_tests::{TestCluster, init_tracing, ipam, tools};

static NEXT: AtomicU32 = AtomicU32::new(0);
const CONTAINER: &str = "d1ff0123456789abcdef";

/// One world: gateway, node and pod namespaces named `<prefix>-gw|node|pod`, removed on drop.
struct World {
    prefix: String,
}

impl World {
    fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn sh(&self, role: &str, command: &str) -> Result<String> {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name(role), "sh", "-c", command])
            .output()?;
        ensure!(
            output.status.success(),
            "{command} in {}: {}",
            self.name(role),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// gateway (10.6.0.1, 10.7.0.1, fd00:6::1) -- node eth0 (10.6.0.2, 10.7.0.2, fd00:6::2) -- macvlan pod
    /// eth0 (10.6.0.10, fd00:6::10) and net1 (10.7.0.10), each with its default route, as the
    /// macvlan plugin leaves them.
    fn build() -> Result<Self> {
        let world = World {
            prefix: format!(
                "cdif{}x{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        };
        for role in ["gw", "node", "pod"] {
            let status = Command::new("ip")
                .args(["netns", "add", &world.name(role)])
                .status()?;
            ensure!(status.success(), "ip netns add (needs root)");
            world.sh(role, "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0; ip link set lo up")?;
        }
        world.sh(
            "node",
            &format!(
                "ip link add eth0 address 0a:00:00:00:06:02 type veth peer name up0 netns {}",
                world.name("gw")
            ),
        )?;
        world.sh("gw", "ip addr add 10.6.0.1/16 dev up0; ip addr add 10.7.0.1/24 dev up0; ip -6 addr add fd00:6::1/64 dev up0; ip link set up0 up")?;
        // The node has an address on net1's subnet too: upstream's plugin fails ADD when the node has no
        // route to one of the pod's addresses (ours then leaves that address's source out).
        world.sh("node", "ip addr add 10.6.0.2/16 dev eth0; ip addr add 10.7.0.2/24 dev eth0; ip -6 addr add fd00:6::2/64 dev eth0; ip link set eth0 up")?;
        for (link, mac) in [("mv0", "0a:00:00:00:06:0a"), ("mv1", "0a:00:00:00:07:0a")] {
            world.sh(
                "node",
                &format!("ip link add {link} address {mac} link eth0 type macvlan mode bridge; ip link set {link} netns {}", world.name("pod")),
            )?;
        }
        world.sh(
            "pod",
            "ip link set mv0 name eth0; ip link set eth0 up; ip addr add 10.6.0.10/16 dev eth0; \
             ip -6 addr add fd00:6::10/64 dev eth0; ip route add default via 10.6.0.1 dev eth0; \
             ip -6 route add default via fd00:6::1 dev eth0; \
             ip link set mv1 name net1; ip link set net1 up; ip addr add 10.7.0.10/24 dev net1; \
             ip route append default via 10.7.0.1 dev net1",
        )?;
        Ok(world)
    }

    /// What both plugins must agree on, with the veth MACs and link-local addresses named, and the
    /// lines of each namespace sorted (the kernel lists tables and equal-priority rules in the order
    /// they were made, which may differ without changing what they do).
    fn state(&self) -> Result<String> {
        let mut macs = Vec::new();
        for (role, link, label) in [
            ("pod", "veth0", "POD-VETH"),
            ("node", &format!("veth{}", &CONTAINER[..11]), "HOST-VETH"),
        ] {
            if let Ok(mac) = self.sh(role, &format!("cat /sys/class/net/{link}/address")) {
                macs.push((mac.trim().to_owned(), label));
            }
        }
        // Named before sorting: the random MACs and link-local addresses would otherwise decide the
        // order of lines that are equal once named.
        let normalize = |line: &str| {
            let mut line = line
                .split(' ')
                .map(|word| {
                    if word.starts_with("fe80::") && word.len() > 6 {
                        "fe80::LL"
                    } else {
                        word
                    }
                })
                .collect::<Vec<_>>()
                .join(" ");
            for (mac, label) in &macs {
                line = line.replace(mac.as_str(), label);
            }
            line
        };
        let mut text = String::new();
        for role in ["pod", "node"] {
            text.push_str(&format!("== {role}\n"));
            let mut lines: Vec<String> = self
                .sh(
                    role,
                    "ip -4 route show table all; ip -6 route show table all; ip rule; ip -6 rule; \
                 ip neigh show nud permanent; ip -6 neigh show nud permanent; \
                 iptables-save -t mangle | grep '^-A'; ip6tables-save -t mangle | grep '^-A'; true",
                )?
                .lines()
                .map(normalize)
                .collect();
            lines.sort();
            text.push_str(&lines.join("\n"));
            text.push('\n');
        }
        Ok(text)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for role in ["gw", "node", "pod"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name(role)])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The macvlan result the coordinator is chained after, for `ifname`.
fn prev_result(ifname: &str, addresses: &[&str]) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": ifname, "sandbox": "/var/run/netns/pod"}],
        "ips": addresses.iter().map(|address| json!({"address": address, "interface": 0})).collect::<Vec<_>>(),
    })
}

/// Runs a coordinator binary in `world`'s node namespace, as a runtime would; `upstream_socket_dir`
/// makes `/run/spidernet` that directory first (a private mount namespace).
fn run(
    world: &World,
    binary: &std::path::Path,
    command: &str,
    ifname: &str,
    stdin: &Value,
    env: &[(&str, String)],
    upstream_socket_dir: Option<&std::path::Path>,
) -> Result<String> {
    let mut process = Command::new("ip");
    process.args(["netns", "exec", &world.name("node")]);
    match upstream_socket_dir {
        Some(dir) => {
            process.args(["unshare", "--mount", "--propagation", "private", "sh", "-c"]);
            process.arg(format!(
                "mount --bind {} /run/spidernet && exec {}",
                dir.display(),
                binary.display()
            ));
        }
        None => {
            process.arg(binary);
        }
    }
    let args = "IgnoreUnknown=true;K8S_POD_NAMESPACE=NS;K8S_POD_NAME=differential".replace("NS", &env[0].1);
    let mut child = process
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", CONTAINER)
        .env("CNI_NETNS", format!("/var/run/netns/{}", world.name("pod")))
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CNI_ARGS", args)
        .envs(env.iter().skip(1).map(|(name, value)| (*name, value.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(stdin.to_string().as_bytes())?;
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "{} {command} {ifname}: {} {}",
        binary.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_and_upstreams_coordinator_make_the_same_routes_rules_and_neighbours() -> Result<()> {
    init_tracing();
    let upstream = upstream_coordinator()?;
    let ours = tools::workspace_binary("spiderpool-coordinator", "coordinator", false)?;
    let cluster = TestCluster::shared().await?;
    let client = cluster.client()?;
    ipam::install_spiderpool_crds(&client).await?;
    synced_coordinator(&client).await?;
    let ns = cluster.namespace("coord-diff").await?;
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start(cluster, "diff-node", dir.path(), false, &[])?;
    // The pod the plugins run for; created last, because the pod garbage collector deletes a pod
    // bound to a node that does not exist after 40 s.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "differential"},
        "spec": {"nodeName": "elsewhere", "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }))?;
    ns.api::<Pod>().create(&PostParams::default(), &pod).await?;
    // Upstream's fixed socket path, inside its private mount namespace.
    std::fs::create_dir_all("/run/spidernet")?;
    let upstream_dir = dir.path().join("upstream-run");
    std::fs::create_dir_all(&upstream_dir)?;
    std::os::unix::fs::symlink(daemon.socket(), upstream_dir.join("spiderpool.sock"))?;

    let body = json!({"podNamespace": ns.name(), "podName": "differential"}).to_string();
    let (status, answer) = spiderpool_tests::daemon::unix_request(
        daemon.socket(),
        "GET",
        "/v1/coordinator/config",
        Some(&body),
    )?;
    ensure!(
        status == 200,
        "the agent's answer: {status} {answer}\n{}",
        agent_log(dir.path())
    );
    let (theirs, mine) = (World::build()?, World::build()?);
    let logs = dir.path().display().to_string();
    let env = |with_socket: bool| {
        let mut env = vec![
            ("", ns.name().to_owned()),
            ("SPIDERPOOL_CNI_LOG_DIR", logs.clone()),
        ];
        if with_socket {
            env.push((
                "SPIDERPOOL_IPAM_UNIX_SOCKET_PATH",
                daemon.socket().display().to_string(),
            ));
        }
        env
    };
    for (ifname, addresses) in [
        ("eth0", vec!["10.6.0.10/16", "fd00:6::10/64"]),
        ("net1", vec!["10.7.0.10/24"]),
    ] {
        let netconf = |log: &str| {
            json!({
                "cniVersion": "1.0.0", "name": "differential", "type": "coordinator",
                "logOptions": {"logLevel": "debug", "logFile": format!("{logs}/{log}")},
                "prevResult": prev_result(ifname, &addresses),
            })
        };
        let printed = run(
            &theirs,
            &upstream,
            "ADD",
            ifname,
            &netconf("upstream.log"),
            &env(false),
            Some(&upstream_dir),
        )
        .with_context(|| format!("upstream's coordinator; agent log:\n{}", agent_log(dir.path())))?;
        // Upstream prints the result through the CNI library (which adds an empty `dns`).
        let mut printed: Value = serde_json::from_str(&printed)?;
        if printed.get("dns") == Some(&json!({})) {
            printed.as_object_mut().context("an object")?.remove("dns");
        }
        ensure!(
            printed == prev_result(ifname, &addresses),
            "upstream printed {printed}"
        );
        let printed = run(
            &mine,
            &ours,
            "ADD",
            ifname,
            &netconf("ours.log"),
            &env(true),
            None,
        )
        .context("our coordinator")?;
        ensure!(
            serde_json::from_str::<Value>(&printed)? == prev_result(ifname, &addresses),
            "ours prints prevResult"
        );
        let (expected, actual) = (theirs.state()?, mine.state()?);
        ensure!(
            expected == actual,
            "after ADD of {ifname} the worlds differ:\n--- diff (upstream < > ours)\n{}\n--- upstream\n{expected}\n--- ours\n{actual}",
            diff(&expected, &actual)
        );
    }
    // DEL of both interfaces: ours leaves the node as it was before the pod; upstream keeps its rule.
    for ifname in ["net1", "eth0"] {
        let netconf = json!({"cniVersion": "1.0.0", "name": "differential", "type": "coordinator",
                             "logOptions": {"logLevel": "debug", "logFile": format!("{logs}/del.log")}});
        run(
            &theirs,
            &upstream,
            "DEL",
            ifname,
            &netconf,
            &env(false),
            Some(&upstream_dir),
        )?;
        run(&mine, &ours, "DEL", ifname, &netconf, &env(true), None)?;
    }
    let upstream_rules = theirs.sh("node", "ip rule")?;
    ensure!(
        upstream_rules.contains("1000:\tfrom all lookup 500"),
        "upstream keeps the rule: {upstream_rules}"
    );
    let our_rules = mine.sh("node", "ip rule")?;
    ensure!(!our_rules.contains("lookup 500"), "ours removes it: {our_rules}");
    ensure!(
        !mine.sh("node", "ip -o link show")?.contains("vethd1ff0123456"),
        "our host veth is gone"
    );
    drop(daemon);
    Ok(())
}

/// The agent's log, for a failure message.
fn agent_log(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("diff-node.log")).unwrap_or_default()
}

/// Lines `a` has more often than `b` (`<`) and the other way round (`>`).
fn diff(a: &str, b: &str) -> String {
    let count = |text: &str| {
        let mut counts = std::collections::BTreeMap::new();
        for line in text.lines() {
            *counts.entry(line.to_owned()).or_insert(0_i32) += 1;
        }
        counts
    };
    let (a, b) = (count(a), count(b));
    let mut lines = Vec::new();
    for line in a
        .keys()
        .chain(b.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let difference = a.get(line).copied().unwrap_or(0) - b.get(line).copied().unwrap_or(0);
        if difference > 0 {
            lines.push(format!("< {line} (x{difference})"));
        } else if difference < 0 {
            lines.push(format!("> {line} (x{})", -difference));
        }
    }
    lines.join("\n")
}
