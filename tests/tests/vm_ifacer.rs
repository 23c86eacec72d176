//! The `ifacer` plugin on Debian's real kernel (bonding and 802.1q are not in the host kernel): from
//! upstream-style netconfs it makes a VLAN on a NIC and an 802.3ad bond with a VLAN on it, a second
//! ADD changes nothing, a step the kernel refuses is undone, a tag already on the node is refused;
//! Debian's macvlan and ipvlan plugins (with the `static` IPAM plugin: ours needs the node daemon
//! and an API server, which the VM does not have) attach pods on top of what it made.
//!
//! One VM runs every guest test below, one at a time; each uses link names of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use spiderpool_tests::vm::{self, Vm};

/// Debian's reference plugins (installed by tests/tools/install-test-deps.sh).
const DEBIAN_PLUGINS: &str = "/usr/lib/cni";

#[test]
fn ifacer_on_a_real_kernel() -> anyhow::Result<()> {
    spiderpool_tests::init_tracing();
    let ifacer = spiderpool_tests::tools::workspace_binary("spiderpool-ifacer", "ifacer", false)?;
    let mut vm = Vm::new("ifacer").binary(&ifacer, "/test/cni/ifacer");
    for plugin in ["macvlan", "ipvlan", "static"] {
        let path = std::path::Path::new(DEBIAN_PLUGINS).join(plugin);
        anyhow::ensure!(
            path.exists(),
            "{} is missing: install Debian's containernetworking-plugins (bash tests/tools/install-test-deps.sh)",
            path.display()
        );
        vm = vm.binary(&path, &format!("/test/cni/{plugin}"));
    }
    let summary = vm::run_guest_tests(vm, "guest::")?;
    assert!(summary.passed >= 4, "{summary:?}");
    Ok(())
}

/// Run inside the VM by `ifacer_on_a_real_kernel`.
mod guest {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    use serde_json::{Value, json};
    use spiderpool_tests::vm::guest::{self, bonding_status, ip, require_vm};

    /// Runs plugin `/test/cni/<plugin>` with `command` for container `id` (netns `/var/run/netns/<id>`).
    fn cni(plugin: &str, command: &str, id: &str, netconf: &Value) -> (bool, Value) {
        let mut child = Command::new(format!("/test/cni/{plugin}"))
            .env_clear()
            .env("CNI_COMMAND", command)
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

    /// A pod: its namespace, and the main plugin ADDed on `master` with a static address.
    fn pod_on(id: &str, plugin: &str, master: &str, address: &str) -> Value {
        ip(&["netns", "add", id]).unwrap();
        let mut main = json!({
            "cniVersion": "0.4.0",
            "name": format!("net-{id}"),
            "type": plugin,
            "master": master,
            "ipam": {"type": "static", "addresses": [{"address": address}]},
        });
        if plugin == "macvlan" {
            main["mode"] = "bridge".into();
        }
        let (ok, result) = cni(plugin, "ADD", id, &main);
        assert!(ok, "{plugin} on {master}: {result}");
        result
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

        let result = pod_on("fv-pod", "macvlan", "fv1.120", "10.120.0.5/24");
        assert_eq!(result["ips"][0]["address"], "10.120.0.5/24", "{result}");
        let inside = ip(&["-n", "fv-pod", "-d", "addr", "show", "dev", "net1"]).unwrap();
        assert!(
            inside.contains("macvlan") && inside.contains("10.120.0.5/24"),
            "{inside}"
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

        let result = pod_on("fb-pod", "ipvlan", "fbond.30", "10.30.0.7/24");
        assert_eq!(result["ips"][0]["address"], "10.30.0.7/24", "{result}");
        let inside = ip(&["-n", "fb-pod", "-d", "addr", "show", "dev", "net1"]).unwrap();
        assert!(
            inside.contains("ipvlan") && inside.contains("10.30.0.7/24"),
            "{inside}"
        );
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
