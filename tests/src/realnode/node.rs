//! One real node: containerd, kubelet and kube-proxy in namespaces of their own.
//!
//! # Namespaces
//!
//! A node is a *holder* process (`unshare`, then a tiny bash init as PID 1) in
//!
//! - its own **network** namespace (`rn<id>-n<i>`) with `eth0` (the node's IP) and `eth1` (an
//!   uplink) on the underlay switch, see [`super::underlay`];
//! - its own **UTS** namespace (the hostname is the node name);
//! - its own **PID** namespace: everything the node runs (containerd, its shims, every container,
//!   kubelet, kube-proxy) lives in it, so killing the holder kills all of it at once, which is what
//!   makes teardown complete even when a test process dies;
//! - its own **mount** namespace, private to it, in which
//!   - `/sys` is a sysfs of the node's network namespace (so `/sys/class/net` lists the node's
//!     links), with the machine's cgroup hierarchies mounted back;
//!   - `/run` is a fresh tmpfs (containerd's state and socket, the pods' `/run/netns`, every socket a
//!     DaemonSet puts under `/run` or `/var/run`);
//!   - `/etc`, `/opt`, `/var/lib` and `/var/log` are overlays: the machine's contents, with the
//!     node's changes (`/etc/cni/net.d`, `/opt/cni/bin`, a DaemonSet's hostPath, ...) in the node's
//!     own directory. The machine's standard paths are never written;
//!   - `/var/lib/containerd` and `/var/lib/kubelet` are bind mounts of the node's directories (the
//!     overlayfs snapshotter and kubelet's mounts need a real filesystem);
//!   - six `/proc/sys` files that kubelet would otherwise set machine-wide (`vm.overcommit_memory`,
//!     `kernel.panic`, ...) show the values kubelet wants, so it leaves the machine's alone.
//!
//! Processes of the node are started with `nsenter` into all four namespaces; files of the node are
//! reached through `/proc/<init>/root`, i.e. through the node's mount namespace.
//!
//! # Cgroups
//!
//! Each kubelet has its own `cgroupRoot`, `/rn<id>-n<i>`, created beforehand in every cgroup v1
//! hierarchy; teardown removes it (and kubelet's `kubepods` tree below it) once the node's
//! processes are gone.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use ipnet::Ipv4Net;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::binaries::NodeBinaries;
use super::config;
use super::images::{ImageArchive, WorkloadImages};
use super::underlay::{NODE_NIC, Underlay};
use crate::cluster::TestCluster;
use crate::tools;
use crate::util;
use crate::watchdog::{self, Registration, Resource};

/// The node's environment `PATH` (its processes get no other inherited variable).
const NODE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Run by the holder as PID 1 of the node's namespaces: the mounts described in the module docs,
/// then "ready" on stdout, then wait (reaping adopted orphans) until killed.
const SETUP_SCRIPT: &str = r#"
set -euo pipefail
dir=$1 name=$2
hostname "$name"
mkdir -p "$dir/mnt/cgroup"
mount --rbind /sys/fs/cgroup "$dir/mnt/cgroup"
umount -l /sys
mount -t sysfs sysfs /sys
mount --rbind "$dir/mnt/cgroup" /sys/fs/cgroup
umount -l "$dir/mnt/cgroup"
# Mounts inherited below /run (other namespaces' /run/netns entries) go first: the node keeps no
# reference to them.
awk '$5 ~ "^/run/" {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/netns
# As `ip netns add` would: pods' netns mounts must not be duplicated by a later rbind of /run/netns.
mount --bind /run/netns /run/netns
mount --make-shared /run/netns
for d in etc opt var/lib var/log; do
  o="$dir/overlay/${d//\//-}"
  mkdir -p "$o/upper" "$o/work"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$o/upper,workdir=$o/work" "/$d"
done
for d in var/lib/containerd var/lib/kubelet; do
  mkdir -p "$dir/${d//\//-}" "/$d"
  mount --bind "$dir/${d//\//-}" "/$d"
done
mkdir -p "$dir/sysctl"
for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
  k=${kv%=*}
  f="$dir/sysctl/${k//\//.}"
  echo "${kv#*=}" > "$f"
  mount --bind "$f" "/proc/sys/$k"
done
sysctl -qw net.ipv4.ip_forward=1
mkdir -p /etc/cni/net.d /opt/cni/bin /var/log/pods /var/log/containers
echo ready
trap 'exit 0' TERM
while :; do sleep 3600 & wait $! || true; done
"#;

/// What a node is.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    /// The Node's name (and hostname).
    pub name: String,
    /// Labels kubelet registers the Node with (`--node-labels`; NodeRestriction forbids most of the
    /// `kubernetes.io` namespace).
    pub labels: BTreeMap<String, String>,
    /// A pod network of the node's own (Debian's `bridge` + `host-local` on `cni0`, a /24 of the
    /// cluster's pod CIDR, routed between nodes), as the network plugin of a cluster with Multus
    /// would provide; written as `/etc/cni/net.d/10-podnet.conflist`.
    pub pod_network: bool,
    /// The node's primary network is Multus (the stand-in, see [`super::multus_standin`]) with the
    /// pod network as its cluster network; needs `pod_network`.
    pub multus: bool,
    /// More files for `/etc/cni/net.d` (name, content), written before containerd starts: the
    /// node's primary network as its administrator would install it. containerd uses the first file
    /// by name; kubelet reports the node Ready only once there is one.
    pub cni_configs: BTreeMap<String, serde_json::Value>,
}

/// The name of the pod network (the bridge configuration's `name`).
pub const POD_NETWORK_NAME: &str = "podnet";
/// Its file in `/etc/cni/net.d`.
pub const POD_NETWORK_FILE: &str = "10-podnet.conflist";

/// A process of a node (or the holder), leader of its own process group.
#[derive(Debug)]
struct NodeProcess {
    child: Child,
    log: PathBuf,
    stopped: bool,
    _registration: Registration,
}

impl NodeProcess {
    fn spawn(mut command: Command, log: &Path) -> Result<Self> {
        let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let registration = watchdog::register(Resource::ProcessGroup(child.id()));
        Ok(NodeProcess {
            child,
            log: log.to_path_buf(),
            stopped: false,
            _registration: registration,
        })
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM to the process group, SIGKILL after `grace`, then reap.
    fn stop(&mut self, grace: Duration) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let Ok(pgid) = i32::try_from(self.child.id()) else {
            return;
        };
        let pgid = Pid::from_raw(pgid);
        if self.exited().is_none() {
            let _ = killpg(pgid, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Also whatever the leader left behind in its group.
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

/// A running node. See the [module docs](self).
#[derive(Debug)]
pub struct RealNode {
    name: String,
    index: u8,
    ip: Ipv4Addr,
    netns: String,
    dir: PathBuf,
    cgroup_root: String,
    init_pid: u32,
    spec: NodeSpec,
    pod_subnet: Option<Ipv4Net>,
    /// containerd, kubelet, kube-proxy and whatever a test starts on the node, by name.
    processes: Mutex<BTreeMap<String, NodeProcess>>,
    holder: Mutex<Option<NodeProcess>>,
    _registrations: Vec<Registration>,
}

/// What every node of a cluster shares.
pub(crate) struct NodeContext<'a> {
    pub cluster: &'a TestCluster,
    pub underlay: &'a Underlay,
    pub images: &'a WorkloadImages,
    pub binaries: &'a NodeBinaries,
    /// `rn<id>`: netns, link and cgroup names start with it.
    pub prefix: &'a str,
    /// The node's directory goes below this one.
    pub dir: &'a Path,
    /// kube-proxy's kubeconfig (one user for every node, as `system:kube-proxy`).
    pub kube_proxy_kubeconfig: &'a Path,
    /// kube-proxy's `clusterCIDR`: the pod networks' supernet.
    pub cluster_cidr: Option<&'a str>,
    /// What nodes with [`NodeSpec::multus`] get.
    pub multus: Option<&'a MultusInstall>,
}

/// The Multus plugin of nodes with [`NodeSpec::multus`]: a binary for `/opt/cni/bin` and its
/// configuration.
#[derive(Debug, Clone)]
pub struct MultusInstall {
    pub binary: PathBuf,
    /// Its `type` (and file name): `multus-standin`, or `multus` for a real Multus.
    pub plugin_type: String,
    pub conf: serde_json::Value,
}

impl RealNode {
    /// Creates the node's namespaces and links, starts containerd (with the workload images
    /// imported), kubelet and kube-proxy. Does not wait for the Node to become Ready. Blocking.
    pub(crate) fn start(
        ctx: &NodeContext<'_>,
        index: u8,
        spec: NodeSpec,
        pod_subnet: Option<Ipv4Net>,
    ) -> Result<Self> {
        let netns = format!("{}-n{index}", ctx.prefix);
        let cgroup_root = netns.clone();
        let dir = ctx.dir.join(&spec.name);
        std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
        let mut registrations = Vec::new();
        util::ip(&["netns", "add", &netns])?;
        registrations.push(watchdog::register(Resource::Netns(netns.clone())));
        let links = ctx.underlay.attach_node(&netns, index)?;
        registrations.push(watchdog::register(Resource::Cgroup(cgroup_root.clone())));
        create_cgroup_root(&cgroup_root)?;
        let (holder, init_pid) = start_holder(&netns, &dir, &spec.name)?;
        let node = RealNode {
            name: spec.name.clone(),
            index,
            ip: links.ip,
            netns,
            dir,
            cgroup_root,
            init_pid,
            spec,
            pod_subnet,
            processes: Mutex::new(BTreeMap::new()),
            holder: Mutex::new(Some(holder)),
            _registrations: registrations,
        };
        node.start_runtime(ctx)
            .with_context(|| format!("starting node {}", node.name))?;
        Ok(node)
    }

    fn start_runtime(&self, ctx: &NodeContext<'_>) -> Result<()> {
        let cfg = self.dir.join("cfg");
        std::fs::create_dir_all(&cfg)?;
        // The reference plugins, as links into the machine's package (a CNI DaemonSet adds its own).
        for entry in std::fs::read_dir(tools::DEBIAN_CNI_DIR)
            .with_context(|| format!("reading {}", tools::DEBIAN_CNI_DIR))?
        {
            let entry = entry?;
            let link = self.path(Path::new("/opt/cni/bin").join(entry.file_name()));
            std::os::unix::fs::symlink(entry.path(), &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
        if let Some(subnet) = self.pod_subnet {
            self.write_file(
                &Path::new("/etc/cni/net.d").join(POD_NETWORK_FILE),
                serde_json::to_string_pretty(&pod_network_config(subnet))?.as_bytes(),
            )?;
        }
        if self.spec.multus {
            let multus = ctx
                .multus
                .ok_or_else(|| anyhow!("node {} wants Multus but the cluster has none", self.name))?;
            if self.pod_subnet.is_none() {
                bail!(
                    "node {}: Multus needs the pod network as its cluster network",
                    self.name
                );
            }
            self.install_cni_plugin(&multus.binary, &multus.plugin_type)?;
            let path = Path::new("/etc/cni/net.d").join(super::multus_standin::CONF_FILE);
            self.write_file(&path, serde_json::to_string_pretty(&multus.conf)?.as_bytes())?;
        }
        for (name, config) in &self.spec.cni_configs {
            let path = Path::new("/etc/cni/net.d").join(name);
            self.write_file(&path, serde_json::to_string_pretty(config)?.as_bytes())?;
        }
        let containerd_toml = cfg.join("containerd.toml");
        std::fs::write(
            &containerd_toml,
            config::containerd_toml(&ctx.images.pause.reference),
        )?;
        self.spawn(
            "containerd",
            &ctx.binaries.containerd,
            &["--config".to_owned(), containerd_toml.display().to_string()],
            &[],
        )?;
        self.wait_containerd(Duration::from_secs(30))?;
        for image in [&ctx.images.pause, &ctx.images.busybox] {
            self.import_image(image)?;
        }

        let kubeconfig = ctx.cluster.user_kubeconfig(
            &format!("kubelet-{}", self.name),
            &format!("system:node:{}", self.name),
            &["system:nodes"],
        )?;
        let volume_plugins = self.dir.join("volume-plugins");
        let kubelet_config = config::kubelet_config(&config::KubeletInput {
            client_ca: ctx.cluster.ca_cert_path(),
            cgroup_root: &self.cgroup_root,
            volume_plugin_dir: &volume_plugins,
        });
        let kubelet_yaml = cfg.join("kubelet.yaml");
        std::fs::write(&kubelet_yaml, serde_json::to_vec_pretty(&kubelet_config)?)?;
        let mut kubelet_args = vec![
            format!("--config={}", kubelet_yaml.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--hostname-override={}", self.name),
            format!("--node-ip={}", self.ip),
            "--v=2".to_owned(),
        ];
        if !self.spec.labels.is_empty() {
            let labels: Vec<String> = self.spec.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            kubelet_args.push(format!("--node-labels={}", labels.join(",")));
        }
        self.spawn("kubelet", &ctx.binaries.kubelet, &kubelet_args, &[])?;

        let proxy_config = config::kube_proxy_config(ctx.kube_proxy_kubeconfig, &self.name, ctx.cluster_cidr);
        let proxy_yaml = cfg.join("kube-proxy.yaml");
        std::fs::write(&proxy_yaml, serde_json::to_vec_pretty(&proxy_config)?)?;
        self.spawn(
            "kube-proxy",
            &ctx.binaries.kube_proxy,
            &[format!("--config={}", proxy_yaml.display()), "--v=1".to_owned()],
            &[],
        )?;
        Ok(())
    }

    fn wait_containerd(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exec(&["ctr", "version"]).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.process_exited("containerd") {
                bail!(
                    "containerd of {} exited ({status}):\n{}",
                    self.name,
                    util::tail(&self.log_path("containerd"), 25)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "containerd of {} did not answer within {timeout:?}:\n{}",
                    self.name,
                    util::tail(&self.log_path("containerd"), 25)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The Node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's index in its cluster.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The node's InternalIP (on `eth0`).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The node's network namespace (`ip netns` name).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The machine's PID of the node's init (PID 1 of its PID namespace).
    pub fn init_pid(&self) -> u32 {
        self.init_pid
    }

    /// The machine's PIDs of the node's holder and of the launchers (`nsenter`) of its processes;
    /// everything else of the node runs in its PID namespace.
    pub fn launcher_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = lock(&self.processes).values().map(|p| p.child.id()).collect();
        pids.extend(lock(&self.holder).as_ref().map(|h| h.child.id()));
        pids
    }

    /// The node's pod network, if it has one.
    pub fn pod_subnet(&self) -> Option<Ipv4Net> {
        self.pod_subnet
    }

    /// The spec the node was started with.
    pub fn spec(&self) -> &NodeSpec {
        &self.spec
    }

    /// The NIC that carries the node's IP.
    pub fn node_nic(&self) -> &'static str {
        NODE_NIC
    }

    /// The node's directory on the machine (configs, logs, overlay upper dirs, containerd's and
    /// kubelet's state).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log of one of the node's processes (`containerd`, `kubelet`, `kube-proxy`, or a name given
    /// to [`RealNode::spawn`]).
    pub fn log_path(&self, process: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{process}.log"))
    }

    /// `path` as the node sees it (through its mount namespace), for reading and writing from the
    /// machine. An absolute symbolic link on the way resolves in the machine's view, not the node's:
    /// `/var/run` (a link to `/run`) is therefore replaced by `/run` here.
    pub fn path(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        let path = path
            .strip_prefix("/var/run")
            .map(|rest| Path::new("/run").join(rest))
            .unwrap_or_else(|_| path.to_path_buf());
        let relative = path.strip_prefix("/").unwrap_or(&path);
        PathBuf::from(format!("/proc/{}/root", self.init_pid)).join(relative)
    }

    /// Writes a file on the node atomically (a temporary file in the same directory, then a rename:
    /// containerd watches `/etc/cni/net.d` and must never read half a configuration).
    pub fn write_file(&self, path: &Path, contents: &[u8]) -> Result<()> {
        let target = self.path(path);
        let parent = target
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent directory", path.display()))?;
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {} on {}", parent.display(), self.name))?;
        let name = target
            .file_name()
            .ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
        let temp = parent.join(format!(".{}.partial", name.to_string_lossy()));
        std::fs::write(&temp, contents)
            .with_context(|| format!("writing {} on {}", path.display(), self.name))?;
        std::fs::rename(&temp, &target)
            .with_context(|| format!("renaming into {} on {}", path.display(), self.name))?;
        Ok(())
    }

    /// Removes a file of the node (absent is fine).
    pub fn remove_file(&self, path: &Path) -> Result<()> {
        match std::fs::remove_file(self.path(path)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(err).with_context(|| format!("removing {} on {}", path.display(), self.name))
            }
            _ => Ok(()),
        }
    }

    /// Copies an executable into the node's `/opt/cni/bin` under `name`.
    pub fn install_cni_plugin(&self, binary: &Path, name: &str) -> Result<()> {
        let bytes = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
        let path = Path::new("/opt/cni/bin").join(name);
        self.write_file(&path, &bytes)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.path(&path), std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// Imports an image archive into the node's containerd (namespace `k8s.io`, where kubelet
    /// looks).
    pub fn import_image(&self, image: &ImageArchive) -> Result<()> {
        let archive = image.archive.display().to_string();
        self.exec(&["ctr", "-n", "k8s.io", "images", "import", &archive])
            .with_context(|| format!("importing {} on {}", image.reference, self.name))?;
        Ok(())
    }

    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--target={}", self.init_pid))
            .args(["--mount", "--uts", "--net", "--pid", "--"])
            .arg(program)
            .env_clear()
            .env("PATH", NODE_PATH)
            .env("HOME", "/root");
        command
    }

    /// Runs a command in the node's namespaces (the node's "host" shell); returns its stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args.split_first().ok_or_else(|| anyhow!("an empty command"))?;
        util::run(self.command(Path::new(program)).args(rest))
    }

    /// Starts a long-running process in the node's namespaces, as a host process of the node (a
    /// `systemd` unit on a real machine): its log is [`RealNode::log_path`]`(name)`; it stops with the
    /// node, or with [`RealNode::stop_process`].
    pub fn spawn(&self, name: &str, program: &Path, args: &[String], env: &[(String, String)]) -> Result<()> {
        let mut command = self.command(program);
        command.args(args);
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let process = NodeProcess::spawn(command, &self.log_path(name))?;
        let mut processes = lock(&self.processes);
        if let Some(mut old) = processes.insert(name.to_owned(), process) {
            old.stop(Duration::from_secs(5));
        }
        Ok(())
    }

    /// Whether a process started with [`RealNode::spawn`] (or containerd, kubelet, kube-proxy) has
    /// exited, and how.
    pub fn process_exited(&self, name: &str) -> Option<std::process::ExitStatus> {
        lock(&self.processes).get_mut(name).and_then(NodeProcess::exited)
    }

    /// Whether a process started with [`RealNode::spawn`] runs.
    pub fn process_running(&self, name: &str) -> bool {
        lock(&self.processes)
            .get_mut(name)
            .is_some_and(|p| p.exited().is_none())
    }

    /// Stops a process of the node (SIGTERM, SIGKILL after 10 s).
    pub fn stop_process(&self, name: &str) -> Result<()> {
        let mut process = lock(&self.processes)
            .remove(name)
            .ok_or_else(|| anyhow!("{} runs no process {name}", self.name))?;
        process.stop(Duration::from_secs(10));
        Ok(())
    }

    /// The processes that exited although nobody stopped them, with their log tails.
    pub fn crashed(&self) -> Vec<String> {
        lock(&self.processes)
            .iter_mut()
            .filter_map(|(name, process)| {
                let status = process.exited()?;
                Some(format!(
                    "{name} on {} exited ({status}); last lines of {}:\n{}",
                    self.name,
                    process.log.display(),
                    util::tail(&process.log, 20)
                ))
            })
            .collect()
    }

    /// Stops everything on the node (the holder's death ends every process in its namespaces), then
    /// removes its cgroups, its network namespace and its directory. Blocking.
    pub(crate) fn stop(&self) {
        {
            let mut processes = lock(&self.processes);
            // kubelet first, so that it does not restart containers while containerd goes.
            if let Some(kubelet) = processes.get_mut("kubelet") {
                kubelet.stop(Duration::from_secs(2));
            }
            for process in processes.values_mut() {
                process.stop(Duration::ZERO);
            }
            processes.clear();
        }
        if let Some(mut holder) = lock(&self.holder).take() {
            holder.stop(Duration::ZERO);
        }
        // The init's death (and with it every process of the namespace) follows its holder's
        // asynchronously; it is gone once the kernel has ended all of them.
        let deadline = Instant::now() + Duration::from_secs(10);
        while crate::process_alive(self.init_pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        remove_cgroup_root(&self.cgroup_root);
        if let Err(err) = util::ip(&["netns", "delete", &self.netns]) {
            tracing::warn!(%err, node = %self.name, "removing the node's network namespace");
        }
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Debian's bridge plugin with host-local addresses from `subnet`, the node's end of the bridge as
/// the pods' gateway.
pub fn pod_network_config(subnet: Ipv4Net) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": POD_NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

/// Starts the holder and waits for its "ready"; returns it and the host PID of its init.
fn start_holder(netns: &str, dir: &Path, name: &str) -> Result<(NodeProcess, u32)> {
    let log = dir.join("logs").join("holder.log");
    let file = std::fs::File::create(&log)?;
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .args([
            "--",
            "unshare",
            "--mount",
            "--uts",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "private",
            "--",
            "bash",
            "-c",
            SETUP_SCRIPT,
            "node-setup",
        ])
        .arg(dir)
        .arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(file)
        .process_group(0)
        .spawn()
        .context("starting the node's namespaces (nsenter + unshare from util-linux)")?;
    let registration = watchdog::register(Resource::ProcessGroup(child.id()));
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.any(|line| line.is_ok_and(|l| l.trim() == "ready"));
        let _ = tx.send(ready);
        // Keep reading so that the holder never blocks on a full pipe.
        for _ in lines {}
    });
    let holder = NodeProcess {
        child,
        log: log.clone(),
        stopped: false,
        _registration: registration,
    };
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(true) => {}
        _ => bail!(
            "the namespaces of node {name} did not come up; {}:\n{}",
            log.display(),
            util::tail(&log, 20)
        ),
    }
    let unshare = holder.child.id();
    let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
        .context("reading the holder's children")?;
    let init_pid = children
        .split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .ok_or_else(|| anyhow!("the holder of node {name} has no child"))?;
    Ok((holder, init_pid))
}

/// The cgroup v1 hierarchies (kubelet with the cgroupfs driver needs its `cgroupRoot` in each).
fn cgroup_hierarchies() -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir("/sys/fs/cgroup").context("reading /sys/fs/cgroup")? {
        let entry = entry?;
        let path = entry.path();
        if path.is_dir() && entry.file_name() != "unified" && !path.is_symlink() {
            dirs.push(path);
        }
    }
    Ok(dirs)
}

fn create_cgroup_root(name: &str) -> Result<()> {
    for hierarchy in cgroup_hierarchies()? {
        let dir = hierarchy.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
    }
    Ok(())
}

/// Removes `name` and everything below it in every hierarchy (deepest first), retrying for a few
/// seconds while the last processes of the node exit.
fn remove_cgroup_root(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            for entry in entries.flatten() {
                let root = entry.path().join(name);
                if root.is_dir() {
                    remove_tree_depth_first(&root);
                    if root.exists() {
                        left.push(root);
                    }
                }
            }
        }
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(?left, "cgroups still busy; the watchdog tries again at exit");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn remove_tree_depth_first(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree_depth_first(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
