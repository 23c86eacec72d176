//! Debian's kernel for the VM tier: where it is (fetched and cached by `tests/tools/vm-kernel.sh`)
//! and which module files, in which order, a set of wanted modules needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context as _, Result, anyhow, bail};

use crate::tools::tests_dir;

/// An unpacked Debian kernel package: `vmlinuz` and `lib/modules/<release>/` with `modules.dep`.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub dir: PathBuf,
    /// The kernel release (`uname -r` inside the guest), e.g. `6.1.0-57-amd64`.
    pub release: String,
}

impl Kernel {
    /// The cached kernel, fetched on the first call on a machine (memoized for the process).
    /// `SPIDERPOOL_VM_KERNEL_DIR` names an already unpacked one instead.
    pub fn get() -> Result<Kernel> {
        static KERNEL: OnceLock<Result<Kernel, String>> = OnceLock::new();
        KERNEL
            .get_or_init(|| locate().map_err(|err| format!("{err:#}")))
            .clone()
            .map_err(|err| anyhow!(err))
    }

    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    fn modules_dir(&self) -> PathBuf {
        self.dir.join("lib/modules").join(&self.release)
    }

    /// The module files `wanted` needs, dependencies first, each once: (module name, file).
    pub fn modules_in_load_order(&self, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>> {
        let dep_file = self.modules_dir().join("modules.dep");
        let text = std::fs::read_to_string(&dep_file).with_context(|| {
            format!(
                "reading {} (delete {} to refetch)",
                dep_file.display(),
                self.dir.display()
            )
        })?;
        let deps = parse_modules_dep(&text);
        let order = load_order(&deps, wanted)?;
        Ok(order
            .into_iter()
            .map(|rel| (module_name(&rel), self.modules_dir().join(rel)))
            .collect())
    }
}

fn locate() -> Result<Kernel> {
    let dir = match std::env::var_os("SPIDERPOOL_VM_KERNEL_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => fetch()?,
    };
    let release = std::fs::read_to_string(dir.join("release"))
        .map(|s| s.trim().to_owned())
        .or_else(|_| only_child(&dir.join("lib/modules")))
        .with_context(|| format!("{} holds no kernel release", dir.display()))?;
    let kernel = Kernel { dir, release };
    if !kernel.vmlinuz().is_file() {
        bail!(
            "{} is missing; delete {} and rerun tests/tools/vm-kernel.sh",
            kernel.vmlinuz().display(),
            kernel.dir.display()
        );
    }
    Ok(kernel)
}

fn only_child(dir: &Path) -> Result<String> {
    let mut names = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned());
    names.next().ok_or_else(|| anyhow!("{} is empty", dir.display()))
}

fn fetch() -> Result<PathBuf> {
    let script = tests_dir().join("tools/vm-kernel.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {} (is bash installed?)", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): it needs apt with Debian's archive, dpkg-deb and depmod \
             (`apt-get install -y kmod`); see its output above or run tests/tools/install-test-deps.sh",
            script.display(),
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .ok_or_else(|| anyhow!("{} printed no directory", script.display()))?;
    Ok(PathBuf::from(dir))
}

/// `modules.dep`: `kernel/net/8021q/8021q.ko: kernel/net/802/mrp.ko kernel/net/802/garp.ko ...`,
/// keyed by module name (`-` and `_` are the same to the kernel).
fn parse_modules_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (path, deps) = line.split_once(':')?;
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            Some((module_name(path), (path.trim().to_owned(), deps)))
        })
        .collect()
}

/// `kernel/net/802/mrp.ko` (or `.ko.xz`) -> `mrp`; dashes become underscores.
fn module_name(path: &str) -> String {
    let file = path.trim().rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Relative paths of the modules `wanted` needs, each after everything it depends on.
fn load_order(deps: &BTreeMap<String, (String, Vec<String>)>, wanted: &[&str]) -> Result<Vec<String>> {
    fn visit(
        deps: &BTreeMap<String, (String, Vec<String>)>,
        name: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if !seen.insert(name.to_owned()) {
            return Ok(());
        }
        let (path, needs) = deps.get(name).ok_or_else(|| {
            anyhow!("module {name:?} is not in this kernel's modules.dep (built in, or misspelled?)")
        })?;
        // modules.dep lists the full closure, deepest last; visiting each first loads it before us.
        for dep in needs.iter().rev() {
            visit(deps, &module_name(dep), seen, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for name in wanted {
        visit(deps, &name.replace('-', "_"), &mut seen, &mut order)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/net/llc/llc.ko:
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/802/mrp.ko:
kernel/net/802/garp.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/8021q/8021q.ko: kernel/net/802/mrp.ko kernel/net/802/garp.ko kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/tls/tls.ko:
kernel/drivers/net/bonding/bonding.ko: kernel/net/tls/tls.ko
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/drivers/net/net-failover.ko.xz:
";

    #[test]
    fn dependencies_load_first_and_once() {
        let deps = parse_modules_dep(DEP);
        let order = load_order(&deps, &["8021q", "bonding", "bridge"]).unwrap();
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            ["llc", "stp", "garp", "mrp", "8021q", "tls", "bonding", "bridge"]
        );
    }

    #[test]
    fn dashes_and_compression_suffixes_are_normalized() {
        let deps = parse_modules_dep(DEP);
        let order = load_order(&deps, &["net-failover"]).unwrap();
        assert_eq!(order, ["kernel/drivers/net/net-failover.ko.xz"]);
        assert_eq!(
            module_name("kernel/drivers/net/net-failover.ko.xz"),
            "net_failover"
        );
    }

    #[test]
    fn an_unknown_module_is_an_error_naming_it() {
        let deps = parse_modules_dep(DEP);
        let err = load_order(&deps, &["nosuch"]).unwrap_err();
        assert!(err.to_string().contains("\"nosuch\""), "{err}");
    }
}
