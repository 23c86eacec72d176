//! The configuration files of a real node, as pure functions: containerd's `config.toml`, the
//! `KubeletConfiguration` and the `KubeProxyConfiguration` (both written as JSON, which their YAML
//! readers accept).
//!
//! What this machine needs (measured in the real-node recipe): containerd's
//! `restrict_oom_score_adj`, because root lacks `CAP_SYS_RESOURCE` here and runc cannot lower a
//! sandbox's `oom_score_adj` to -998; kubelet's `failCgroupV1: false` with the `cgroupfs` driver,
//! since the machine runs cgroup v1 without systemd; and a `cgroupRoot` of its own per node so that
//! several kubelets on one machine do not share `/kubepods`.

use std::path::Path;

use serde_json::{Value, json};

/// containerd's configuration: the standard paths (private to the node through its mount
/// namespace), the CRI plugin with `sandbox_image`, runc through the v2 shim with cgroupfs, CNI from
/// `/opt/cni/bin` and `/etc/cni/net.d`.
pub fn containerd_toml(sandbox_image: &str) -> String {
    format!(
        r#"version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
# "opt" would create /opt/containerd; the rest are snapshotters this machine has no use for.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # Root lacks CAP_SYS_RESOURCE on this kind of machine: nobody may lower oom_score_adj, and runc
  # fails on a sandbox's -998 ("can't get final child's PID from pipe: EOF"). Clamp to containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
"#
    )
}

/// What differs between the kubelets of one cluster.
#[derive(Debug, Clone)]
pub struct KubeletInput<'a> {
    /// The cluster CA, which signs the API server's client certificate towards kubelets.
    pub client_ca: &'a Path,
    /// This node's cgroup below every hierarchy's root (pre-created, unique on the machine).
    pub cgroup_root: &'a str,
    /// Where kubelet looks for flex-volume drivers (its default, under /usr/libexec, would be
    /// created on the machine's own filesystem).
    pub volume_plugin_dir: &'a Path,
}

/// The `KubeletConfiguration`.
pub fn kubelet_config(input: &KubeletInput<'_>) -> Value {
    json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": input.client_ca},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": format!("/{}", input.cgroup_root),
        "failCgroupV1": false,
        "failSwapOn": false,
        "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
        // No cluster DNS here; pods fall back to dnsPolicy Default, with an empty resolv.conf.
        "resolvConf": "",
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "serializeImagePulls": false,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 98,
        "volumePluginDir": input.volume_plugin_dir,
        "nodeStatusUpdateFrequency": "5s",
    })
}

/// The `KubeProxyConfiguration`: iptables mode, metrics and health on loopback of the node's network
/// namespace, and no conntrack tuning (those sysctls are the machine's, not the node's).
pub fn kube_proxy_config(kubeconfig: &Path, node_name: &str, cluster_cidr: Option<&str>) -> Value {
    let mut config = json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig},
        "hostnameOverride": node_name,
        "mode": "iptables",
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
    });
    if let (Some(cidr), Some(obj)) = (cluster_cidr, config.as_object_mut()) {
        obj.insert("clusterCIDR".to_owned(), Value::String(cidr.to_owned()));
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_config_carries_the_fixes_this_machine_needs() {
        let config = kubelet_config(&KubeletInput {
            client_ca: Path::new("/x/ca.crt"),
            cgroup_root: "rnabc-node0",
            volume_plugin_dir: Path::new("/x/vp"),
        });
        assert_eq!(config["cgroupDriver"], "cgroupfs");
        assert_eq!(config["failCgroupV1"], false);
        assert_eq!(config["cgroupRoot"], "/rnabc-node0");
        assert_eq!(config["authentication"]["x509"]["clientCAFile"], "/x/ca.crt");
    }

    #[test]
    fn containerd_config_clamps_oom_scores_and_names_the_sandbox_image() {
        let toml = containerd_toml("localhost/x/pause:1");
        assert!(toml.contains("restrict_oom_score_adj = true"));
        assert!(toml.contains(r#"sandbox_image = "localhost/x/pause:1""#));
    }

    #[test]
    fn kube_proxy_sets_the_cluster_cidr_only_when_given() {
        let with = kube_proxy_config(Path::new("/k"), "n", Some("10.244.0.0/16"));
        assert_eq!(with["clusterCIDR"], "10.244.0.0/16");
        let without = kube_proxy_config(Path::new("/k"), "n", None);
        assert!(without.get("clusterCIDR").is_none());
    }
}
