//! Where the upstream binaries come from.
//!
//! - kube-apiserver, kube-controller-manager, kube-scheduler: built from the Kubernetes Go module at
//!   the release pinned in `tests/tools/versions.env` by `tests/tools/build-kubernetes.sh`, which
//!   caches them by version (a no-op when cached) and prints their directory. The environment variable
//!   `SPIDERPOOL_KUBE_BIN_DIR` overrides the script.
//! - etcd: Debian's `etcd-server` (`/usr/bin/etcd`), or `SPIDERPOOL_ETCD`.
//! - CNI reference plugins: Debian's `containernetworking-plugins` (`/usr/lib/cni`).
//!
//! A missing piece is an error that says what to install; tests never skip silently.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context as _, Result, anyhow, bail};

/// Directory of Debian's reference CNI plugins.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// The Kubernetes release the control plane runs (from `tests/tools/versions.env`).
pub fn kubernetes_version() -> &'static str {
    const ENV: &str = include_str!("../tools/versions.env");
    ENV.lines()
        .filter_map(|line| line.trim().strip_prefix("KUBERNETES_VERSION="))
        .next()
        .unwrap_or("unknown")
}

/// The directory `tests/` of the source tree (scripts, manifests).
pub fn tests_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The repository root.
pub fn repo_root() -> &'static Path {
    tests_dir().parent().unwrap_or_else(|| tests_dir())
}

/// The upstream binaries a control plane needs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
}

/// Finds (building and caching on the first run) the control-plane binaries. Blocking: the first
/// build on a machine takes minutes. The result is memoized for the process.
pub fn binaries() -> Result<Binaries> {
    static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();
    BINARIES
        .get_or_init(|| find_binaries().map_err(|err| format!("{err:#}")))
        .clone()
        .map_err(|err| anyhow!(err))
}

fn find_binaries() -> Result<Binaries> {
    let etcd = find_etcd()?;
    let dir = kubernetes_bin_dir()?;
    let pick = |name: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        if is_executable(&path) {
            Ok(path)
        } else {
            bail!(
                "{} is missing or not executable; delete {} and rerun tests/tools/build-kubernetes.sh",
                path.display(),
                dir.display()
            )
        }
    };
    Ok(Binaries {
        etcd,
        kube_apiserver: pick("kube-apiserver")?,
        kube_controller_manager: pick("kube-controller-manager")?,
        kube_scheduler: pick("kube-scheduler")?,
    })
}

fn find_etcd() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SPIDERPOOL_ETCD") {
        let path = PathBuf::from(path);
        if is_executable(&path) {
            return Ok(path);
        }
        bail!("SPIDERPOOL_ETCD={} is not an executable", path.display());
    }
    which("etcd").ok_or_else(|| {
        anyhow!(
            "etcd not found (looked for /usr/bin/etcd and on PATH): install it with \
             `apt-get install -y etcd-server` (or run tests/tools/install-test-deps.sh)"
        )
    })
}

pub(crate) fn kubernetes_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SPIDERPOOL_KUBE_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let script = tests_dir().join("tools/build-kubernetes.sh");
    tracing::info!(script = %script.display(), "locating the Kubernetes binaries (builds them on the first run)");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {} (is bash installed?)", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}); it needs Go >= 1.24 on PATH and the Go module proxy; see its output above \
             or run tests/tools/install-test-deps.sh",
            script.display(),
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = stdout
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .ok_or_else(|| anyhow!("{} printed no directory", script.display()))?;
    Ok(PathBuf::from(dir))
}

/// The cache root `tests/tools/build-kubernetes.sh` uses too: `SPIDERPOOL_TEST_CACHE`, else
/// `$XDG_CACHE_HOME/spiderpool-rs`, else `~/.cache/spiderpool-rs`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("SPIDERPOOL_TEST_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("spiderpool-rs")
}

/// A CNI plugin from Debian's `containernetworking-plugins`, or an error saying what to install.
pub fn debian_cni_plugin(name: &str) -> Result<PathBuf> {
    let path = Path::new(DEBIAN_CNI_DIR).join(name);
    if is_executable(&path) {
        Ok(path)
    } else {
        bail!(
            "CNI plugin {} not found: install it with `apt-get install -y containernetworking-plugins` \
             (or run tests/tools/install-test-deps.sh)",
            path.display()
        )
    }
}

/// Fails unless `ip` (iproute2) is installed; the node simulator shells out to it.
pub fn require_iproute2() -> Result<PathBuf> {
    which("ip").ok_or_else(|| anyhow!("`ip` not found: install it with `apt-get install -y iproute2`"))
}

/// `name` on PATH (plus the sbin directories, which a non-login root shell may lack).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// A binary of another package of this workspace (the node daemon, the CNI plugin, the operator),
/// built on first use with the cargo that runs the tests and returned from the target directory.
/// `release` picks the profile (benchmarks measure optimised code: `cargo build --release -p PACKAGE
/// --bin BIN`). A debug binary is built as `cargo test --workspace` builds it (`cargo build --workspace
/// --bins --tests`, a no-op after that command): `cargo build -p PACKAGE` resolves the dependencies'
/// features for that package alone, without the test targets' dev-dependencies, which made a second
/// copy of each binary's dependency tree (about 1.3 GB and several minutes on 2 cores; CI once ran out
/// of disk on it). A test run alone builds the whole workspace once this way.
pub fn workspace_binary(package: &str, bin: &str, release: bool) -> Result<PathBuf> {
    static BUILT: OnceLock<std::sync::Mutex<std::collections::BTreeMap<String, Result<PathBuf, String>>>> =
        OnceLock::new();
    let key = format!("{package}/{bin}/{release}");
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(result) = built.get(&key) {
        return result.clone().map_err(|e| anyhow!(e));
    }
    let result = build_workspace_binary(package, bin, release).map_err(|e| format!("{e:#}"));
    built.insert(key, result.clone());
    result.map_err(|e| anyhow!(e))
}

fn build_workspace_binary(package: &str, bin: &str, release: bool) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(repo_root()).args(["build", "-q", "--locked"]);
    if release {
        cmd.args(["--release", "-p", package, "--bin", bin]);
    } else {
        cmd.args(["--workspace", "--bins", "--tests"]);
    }
    // What cargo sets for the running test is not the caller's environment: build scripts that watch
    // one of these (ring's watches CARGO_MANIFEST_DIR) would otherwise rebuild here, and again in
    // the next `cargo test`.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .contains(&key.as_ref())
        {
            cmd.env_remove(key.as_ref());
        }
    }
    let output = cmd
        .output()
        .with_context(|| format!("running cargo build for {package}'s {bin}"))?;
    if !output.status.success() {
        bail!(
            "cargo build for {package}'s {bin} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target.join(if release { "release" } else { "debug" }).join(bin);
    if !is_executable(&path) {
        bail!("cargo built {bin} but {} is not an executable", path.display());
    }
    Ok(path)
}
