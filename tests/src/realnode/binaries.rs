//! Where a real node's programs come from: kubelet and kube-proxy from the cached Kubernetes build
//! (`tests/tools/build-kubernetes.sh`, the release pinned in `tests/tools/versions.env`), containerd,
//! runc and `ctr` from Debian, `nsenter` and `unshare` from util-linux. A missing one is an error
//! that says what to install.

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};

use crate::tools;

/// The programs every node runs.
#[derive(Debug, Clone)]
pub struct NodeBinaries {
    pub kubelet: PathBuf,
    pub kube_proxy: PathBuf,
    pub containerd: PathBuf,
}

/// Finds them (building kubelet and kube-proxy on the first run: minutes). Blocking.
pub fn node_binaries() -> Result<NodeBinaries> {
    let debian = |name: &str, package: &str| {
        tools::which(name).ok_or_else(|| {
            anyhow!(
                "`{name}` not found: the real-node tier needs it; install it with `apt-get install -y {package}` \
                 (or run tests/tools/install-test-deps.sh)"
            )
        })
    };
    let containerd = debian("containerd", "containerd")?;
    debian("ctr", "containerd")?;
    debian("containerd-shim-runc-v2", "containerd")?;
    debian("runc", "runc")?;
    debian("nsenter", "util-linux")?;
    debian("unshare", "util-linux")?;
    debian("iptables", "iptables")?;
    debian("conntrack", "conntrack")?;
    tools::debian_cni_plugin("bridge")?;
    let dir = tools::kubernetes_bin_dir()?;
    let pick = |name: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        if tools::is_executable(&path) {
            Ok(path)
        } else {
            bail!(
                "{} is missing: tests/tools/build-kubernetes.sh builds it next to the control plane (delete {} \
                 if it holds an older set, and rerun the script)",
                path.display(),
                dir.display()
            )
        }
    };
    Ok(NodeBinaries {
        kubelet: pick("kubelet")?,
        kube_proxy: pick("kube-proxy")?,
        containerd,
    })
}
