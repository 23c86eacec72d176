//! The `ifacer` plugin on Debian's real kernel (bonding and 802.1q are not in the host kernel): from
//! upstream-style netconfs it makes a VLAN on a NIC and an 802.3ad bond with a VLAN on it, a second
//! ADD changes nothing, a step the kernel refuses is undone, a tag already on the node is refused;
//! Debian's macvlan and ipvlan plugins with our IPAM (`spiderpool`) attach pods on top of what it
//! made, and release their addresses on DEL.
//!
//! Our IPAM is real end to end: the host runs a real API server with SpiderIPPools and a real node
//! agent (`spiderpool-agent`) for the VM's node; the VM reaches the agent's unix socket through QEMU's
//! restricted user-mode network (`Vm::forward_to_unix_socket`), and the guest serves it at the
//! plugin's default socket path. The host checks the pools afterwards: every address handed out in
//! the VM is back.
//!
//! One VM runs every guest test below, one at a time; each uses link names of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use anyhow::{Context as _, ensure};
use serde_json::json;
use spiderpool_tests::daemon::Daemon;
use spiderpool_tests::vm::{self, Vm};
use spiderpool_tests::{ClusterOptions, TestCluster, ipam};

/// Debian's reference plugins (installed by tests/tools/install-test-deps.sh).
const DEBIAN_PLUGINS: &str = "/usr/lib/cni";

/// The guest's TCP port that reaches the agent's socket.
const AGENT_PORT: u16 = 7000;

/// The pools the guest tests allocate from, with their pods (bound to the agent's node).
const POOLS: &[(&str, &str, &str, &str)] = &[
    // (pool, subnet, range, pod)
    ("vm-vlan120", "10.120.0.0/24", "10.120.0.10-10.120.0.19", "fv-pod"),
    ("vm-bond30", "10.30.0.0/24", "10.30.0.10-10.30.0.19", "fb-pod"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ifacer_on_a_real_kernel() -> anyhow::Result<()> {
    spiderpool_tests::init_tracing();
    let ifacer = spiderpool_tests::tools::workspace_binary("spiderpool-ifacer", "ifacer", false)?;
    let mut vm = Vm::new("ifacer")
        .binary(&ifacer, "/test/cni/ifacer")
        .binary(ipam::plugin_binary(false)?, "/test/cni/spiderpool");
    for plugin in ["macvlan", "ipvlan"] {
        let path = std::path::Path::new(DEBIAN_PLUGINS).join(plugin);
        ensure!(
            path.exists(),
            "{} is missing: install Debian's containernetworking-plugins (bash tests/tools/install-test-deps.sh)",
            path.display()
        );
        vm = vm.binary(&path, &format!("/test/cni/{plugin}"));
    }

    // The control plane, the pools, the pods and the VM's node agent, on the host.
    let cluster = TestCluster::start(ClusterOptions::apiserver_only()).await?;
    let client = cluster.client()?;
    ipam::install_spiderpool_crds(&client).await?;
    for (pool, subnet, range, _) in POOLS {
        ipam::create_pool(&client, pool, json!({"subnet": subnet, "ips": [range]})).await?;
    }
    let ns = cluster.namespace("vm-ifacer").await?;
    let node = "vm-ifacer-node";
    let pods: Vec<(String, String)> = POOLS
        .iter()
        .map(|(_, _, _, pod)| ((*pod).to_owned(), node.to_owned()))
        .collect();
    let uids = ipam::create_bare_pods(&client, ns.name(), &pods, &json!({})).await?;
    let dir = tempfile::tempdir()?;
    let agent = Daemon::start(&cluster, node, dir.path(), false, &[])?;
    let pod_list: Vec<String> = pods
        .iter()
        .zip(&uids)
        .map(|((pod, _), uid)| format!("{pod}={uid}"))
        .collect();
    let vm = vm
        .forward_to_unix_socket(AGENT_PORT, agent.socket(), env!("CARGO_BIN_EXE_unix-bridge"))
        .env("SPIDERPOOL_TEST_NAMESPACE", ns.name())
        .env("SPIDERPOOL_TEST_PODS", &pod_list.join(" "))
        .env("SPIDERPOOL_TEST_AGENT_PORT", &AGENT_PORT.to_string())
        .env(
            "SPIDERPOOL_TEST_HOST_PORT",
            &cluster.apiserver_address()?.port().to_string(),
        );

    let summary = tokio::task::spawn_blocking(move || vm::run_guest_tests(vm, "guest::")).await??;
    assert!(summary.passed >= 4, "{summary:?}");

    // Every address the guest got came from the agent, and DEL gave it back.
    let allocated = agent.metric("spiderpool_ipam_allocation_counts_total")?;
    let released = agent.metric("spiderpool_ipam_release_counts_total")?;
    ensure!(
        allocated == POOLS.len() as f64 && released == allocated,
        "the agent counted {allocated} allocations and {released} releases; log:\n{}",
        agent.log_tail()
    );
    for (pool, ..) in POOLS {
        let records = ipam::pool_records(&client, pool)
            .await
            .with_context(|| format!("reading SpiderIPPool {pool}"))?;
        ensure!(records.is_empty(), "SpiderIPPool {pool} still holds {records:?}");
    }
    agent.stop()?;
    Ok(())
}

/// Run inside the VM by `ifacer_on_a_real_kernel`.
mod guest {
    use std::io::Write as _;
    use std::path::Path;
    use std::process::{Command, Stdio};

    use serde_json::{Value, json};
    use spiderpool_agent_api::DEFAULT_SOCKET_PATH;
    use spiderpool_tests::vm::guest::{self, bonding_status, ip, require_vm};

    /// Runs plugin `/test/cni/<plugin>` with `command` for container `id` (netns `/var/run/netns/<id>`).
    fn cni(plugin: &str, command: &str, id: &str, netconf: &Value) -> (bool, Value) {
        cni_for(plugin, command, id, netconf, None)
    }

    /// [`cni`] for pod `pod` of the host's API server (named in `CNI_ARGS`, as kubelet does).
    fn cni_for(plugin: &str, command: &str, id: &str, netconf: &Value, pod: Option<&str>) -> (bool, Value) {
        let mut command = {
            let mut cmd = Command::new(format!("/test/cni/{plugin}"));
            cmd.env_clear().env("CNI_COMMAND", command);
            cmd
        };
        if let Some(pod) = pod {
            let namespace = std::env::var("SPIDERPOOL_TEST_NAMESPACE").unwrap();
            let uid = pod_uid(pod);
            command.env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=true;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};\
                     K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID={uid}"
                ),
            );
        }
        let mut child = command
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", format!("/var/run/netns/{id}"))
            .env("CNI_IFNAME", "net1")
            .env("CNI_PATH", "/test/cni")
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
        let stdout = String::from_utf8_lossy(&output.stdout);
        let value = serde_json::from_str(&stdout).unwrap_or(Value::String(format!(
            "{stdout} / {}",
            String::from_utf8_lossy(&output.stderr)
        )));
        (output.status.success(), value)
    }

    fn dummies(names: &[&str]) {
        guest::dummies(names).unwrap();
    }

    fn link(name: &str) -> String {
        guest::link_details(name)
    }

    fn index(name: &str) -> String {
        link(name).split(':').next().unwrap_or_default().to_owned()
    }

    fn exists(name: &str) -> bool {
        guest::link_exists(name)
    }

    /// The UID of the host's pod `pod` (from `SPIDERPOOL_TEST_PODS`: `name=uid ...`).
    fn pod_uid(pod: &str) -> String {
        let pods = std::env::var("SPIDERPOOL_TEST_PODS").unwrap();
        pods.split_whitespace()
            .find_map(|entry| entry.strip_prefix(pod)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no pod {pod} in SPIDERPOOL_TEST_PODS={pods}"))
            .to_owned()
    }

    /// The main plugin's netconf on `master`, with our IPAM allocating from SpiderIPPool `pool` on
    /// the host through the agent (at the plugin's default socket, relayed to the host).
    fn netconf_on(id: &str, plugin: &str, master: &str, pool: &str) -> Value {
        let port = std::env::var("SPIDERPOOL_TEST_AGENT_PORT")
            .unwrap()
            .parse()
            .unwrap();
        guest::relay_unix_socket(Path::new(DEFAULT_SOCKET_PATH), port).unwrap();
        std::fs::create_dir_all("/var/log/spidernet").unwrap();
        let mut main = json!({
            "cniVersion": "0.4.0",
            "name": format!("net-{id}"),
            "type": plugin,
            "master": master,
            "ipam": {"type": "spiderpool", "default_ipv4_ippool": [pool], "log_level": "DEBUG"},
        });
        if plugin == "macvlan" {
            main["mode"] = "bridge".into();
        }
        main
    }

    /// Pod `pod` (container `id`, its own netns) ADDed with [`netconf_on`]; returns the result and
    /// the netconf for the DEL.
    fn pod_on(id: &str, pod: &str, plugin: &str, master: &str, pool: &str) -> (Value, Value) {
        ip(&["netns", "add", id]).unwrap();
        let netconf = netconf_on(id, plugin, master, pool);
        let (ok, result) = cni_for(plugin, "ADD", id, &netconf, Some(pod));
        assert!(ok, "{plugin} on {master}: {result}");
        (result, netconf)
    }

    /// DEL of [`pod_on`]'s attachment: the pod's link is gone (the address's release is checked
    /// on the host, in the pool).
    fn pod_off(id: &str, pod: &str, plugin: &str, netconf: &Value) {
        let (ok, out) = cni_for(plugin, "DEL", id, netconf, Some(pod));
        assert!(ok, "{plugin} DEL: {out}");
        assert!(ip(&["-n", id, "link", "show", "dev", "net1"]).is_err());
        ip(&["netns", "del", id]).unwrap();
    }

    #[test]
    #[ignore = "kernel tier: runs inside the VM (ifacer_on_a_real_kernel)"]
    fn a_vlan_on_a_nic_then_macvlan_on_it() {
        require_vm();
        dummies(&["fv1"]);
        // Upstream's documented netconf (docs/usage/spider-multus-config.md, "ifacer").
        let netconf = json!({"cniVersion": "0.3.1", "name": "macvlan-vlan120", "type": "ifacer",
                             "interfaces": ["fv1"], "vlanID": 120});
        let (ok, result) = cni("ifacer", "ADD", "fv-a", &netconf);
        assert!(ok, "{result}");
        assert_eq!(result, json!({"cniVersion": "0.3.1"}));
        let vlan = link("fv1.120");
        assert!(vlan.contains("vlan protocol 802.1Q id 120"), "{vlan}");
        assert!(vlan.contains("state UP") || vlan.contains(",UP"), "{vlan}");
        let made = index("fv1.120");

        // The next pod's ADD finds it made: nothing changes.
        let (ok, _) = cni("ifacer", "ADD", "fv-b", &netconf);
        assert!(ok);
        assert_eq!(index("fv1.120"), made);

        // A pod on it, its address from SpiderIPPool vm-vlan120 (10.120.0.10-19) on the host.
        let (result, pod_netconf) = pod_on("fv-pod", "fv-pod", "macvlan", "fv1.120", "vm-vlan120");
        let address = result["ips"][0]["address"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            address.starts_with("10.120.0.1") && address.ends_with("/24"),
            "{result}"
        );
        let inside = ip(&["-n", "fv-pod", "-d", "addr", "show", "dev", "net1"]).unwrap();
        assert!(
            inside.contains("macvlan") && inside.contains(&address),
            "{inside}"
        );
        pod_off("fv-pod", "fv-pod", "macvlan", &pod_netconf);

        // The forwarding NIC reaches nothing but the forward: not even the host's loopback, where
        // the API server listens (QEMU user-mode network, `restrict=on`).
        let port: u16 = std::env::var("SPIDERPOOL_TEST_HOST_PORT")
            .unwrap()
            .parse()
            .unwrap();
        let host = std::net::SocketAddr::from(([10, 0, 2, 2], port));
        let reached = std::net::TcpStream::connect_timeout(&host, std::time::Duration::from_secs(2));
        assert!(
            reached.is_err(),
            "the guest reached the host's API server at {host}"
        );

        // DEL is a no-op: the VLAN serves every pod on the node.
        let (ok, out) = cni("ifacer", "DEL", "fv-a", &netconf);
        assert!(ok && out.is_string(), "{out}");
        assert!(exists("fv1.120"));

        // Another name for the same tag is refused (upstream's rule), nothing made.
        dummies(&["fv2"]);
        let other = json!({"cniVersion": "0.3.1", "interfaces": ["fv2"], "vlanID": 120});
        let (ok, error) = cni("ifacer", "ADD", "fv-c", &other);
        assert!(!ok);
        assert!(
            error["msg"]
                .as_str()
                .unwrap()
                .starts_with("VLAN 120 is already on the node as `fv1.120`"),
            "{error}"
        );
        assert!(!exists("fv2.120"));
    }

    #[test]
    #[ignore = "kernel tier: runs inside the VM (ifacer_on_a_real_kernel)"]
    fn an_lacp_bond_with_a_vlan_then_ipvlan_on_it() {
        require_vm();
        dummies(&["fb1", "fb2"]);
        let netconf = json!({"cniVersion": "0.4.0", "name": "ipvlan-bond", "type": "ifacer",
            "interfaces": ["fb1", "fb2"], "vlanID": 30,
            "bond": {"name": "fbond", "mode": 4, "options": "miimon=100;lacp_rate=1;xmit_hash_policy=1"}});
        let (ok, result) = cni("ifacer", "ADD", "fb-a", &netconf);
        assert!(ok, "{result}");
        let bonding = bonding_status("fbond").unwrap();
        assert!(
            bonding.contains("Bonding Mode: IEEE 802.3ad Dynamic link aggregation"),
            "{bonding}"
        );
        assert!(bonding.contains("MII Polling Interval (ms): 100"), "{bonding}");
        assert!(bonding.contains("LACP rate: fast"), "{bonding}");
        assert!(bonding.contains("Transmit Hash Policy: layer3+4"), "{bonding}");
        assert!(
            bonding.contains("Slave Interface: fb1") && bonding.contains("Slave Interface: fb2"),
            "{bonding}"
        );
        for member in ["fb1", "fb2"] {
            let l = link(member);
            assert!(l.contains("master fbond") && l.contains(",UP"), "{l}");
        }
        assert!(link("fbond.30").contains("vlan protocol 802.1Q id 30"));
        let made = (index("fbond"), index("fbond.30"));

        // Again, with the bond up (upstream failed here): nothing changes.
        let (ok, result) = cni("ifacer", "ADD", "fb-b", &netconf);
        assert!(ok, "{result}");
        assert_eq!((index("fbond"), index("fbond.30")), made);

        // A pod on it, its address from SpiderIPPool vm-bond30 (10.30.0.10-19) on the host.
        let (result, pod_netconf) = pod_on("fb-pod", "fb-pod", "ipvlan", "fbond.30", "vm-bond30");
        let address = result["ips"][0]["address"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            address.starts_with("10.30.0.1") && address.ends_with("/24"),
            "{result}"
        );
        let inside = ip(&["-n", "fb-pod", "-d", "addr", "show", "dev", "net1"]).unwrap();
        assert!(inside.contains("ipvlan") && inside.contains(&address), "{inside}");
        pod_off("fb-pod", "fb-pod", "ipvlan", &pod_netconf);
    }

    #[test]
    #[ignore = "kernel tier: runs inside the VM (ifacer_on_a_real_kernel)"]
    fn the_default_bond_name_and_active_backup_with_primary() {
        require_vm();
        dummies(&["fp1", "fp2"]);
        let netconf = json!({"cniVersion": "1.0.0", "interfaces": ["fp1", "fp2"],
            "bond": {"mode": 1, "options": "primary=fp2;miimon=50"}});
        let (ok, result) = cni("ifacer", "ADD", "fp-a", &netconf);
        assert!(ok, "{result}");
        let bonding = bonding_status("sp_bond0").unwrap();
        assert!(bonding.contains("fault-tolerance (active-backup)"), "{bonding}");
        assert!(bonding.contains("Primary Slave: fp2"), "{bonding}");
        ip(&["link", "del", "sp_bond0"]).unwrap();
    }

    #[test]
    #[ignore = "kernel tier: runs inside the VM (ifacer_on_a_real_kernel)"]
    fn a_step_the_kernel_refuses_is_undone() {
        require_vm();
        dummies(&["fu1"]);
        // The bonding driver refuses to enslave the loopback device: the bond made before that
        // step is removed again and fu1, taken down to be enslaved, is up again.
        let netconf = json!({"cniVersion": "0.4.0", "interfaces": ["fu1", "lo"],
            "bond": {"name": "fubond", "mode": 1}});
        let (ok, error) = cni("ifacer", "ADD", "fu-a", &netconf);
        assert!(!ok);
        let msg = error["msg"].as_str().unwrap();
        assert!(msg.starts_with("enslave lo to fubond:"), "{error}");
        assert_eq!(error["details"], "the links this ADD created were removed again");
        assert!(!exists("fubond"), "{}", link("fubond"));
        let member = link("fu1");
        assert!(member.contains(",UP") && !member.contains("master"), "{member}");
    }
}
