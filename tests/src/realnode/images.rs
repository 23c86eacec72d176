//! The two small images every real node needs, built locally without a registry and cached by
//! content: the sandbox (`pause`) image, a 20-line static C program, and a `busybox` image for
//! workloads (Debian's busybox-static with its applet links).
//!
//! Each is written as a docker-archive tarball (`manifest.json`, the image config, one layer), the
//! format `ctr -n k8s.io images import` reads. The layer is made by GNU tar with fixed owners,
//! order and times, so the same inputs give the same image ID.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::tools;
use crate::util;

/// An image archive and the reference it is tagged with inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageArchive {
    /// `localhost/spiderpool-test/<name>:<tag>`.
    pub reference: String,
    pub archive: PathBuf,
}

/// The images every real node imports.
#[derive(Debug, Clone)]
pub struct WorkloadImages {
    /// The CRI sandbox image (`sandbox_image`).
    pub pause: ImageArchive,
    /// `sh`, `ping`, `ip`, `wget`, `nc`, `httpd`, ... (busybox 1.35: `wget -T` crashes; use
    /// `timeout N wget`).
    pub busybox: ImageArchive,
}

const PAUSE_C: &str = r#"/* The sandbox's init: waits for a signal, reaps children. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void down(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction a = {0}; a.sa_handler = down;
  sigaction(SIGINT, &a, NULL); sigaction(SIGTERM, &a, NULL);
  struct sigaction r = {0}; r.sa_handler = reap; r.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGCHLD, &r, NULL);
  for (;;) pause();
}
"#;

const BUSYBOX: &str = "/bin/busybox";

/// Builds (or finds in the cache) both images. Blocking; a few seconds on the first run.
pub fn workload_images() -> Result<WorkloadImages> {
    let dir = tools::cache_root().join("images");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(WorkloadImages {
        pause: pause_image(&dir)?,
        busybox: busybox_image(&dir)?,
    })
}

fn pause_image(cache: &Path) -> Result<ImageArchive> {
    let gcc = tools::which("gcc").ok_or_else(|| {
        anyhow!(
            "gcc not found: the sandbox (pause) image is a static C program; install it with \
             `apt-get install -y gcc libc6-dev` (or run tests/tools/install-test-deps.sh)"
        )
    })?;
    let gcc_version = util::run(Command::new(&gcc).arg("--version"))?;
    let tag = util::sha256_hex(&[PAUSE_C.as_bytes(), gcc_version.as_bytes()])[..12].to_owned();
    let image = ImageArchive {
        reference: format!("localhost/spiderpool-test/pause:{tag}"),
        archive: cache.join(format!("pause-{tag}.tar")),
    };
    if image.archive.is_file() {
        return Ok(image);
    }
    let work = tempfile::tempdir_in(cache).context("creating a build dir")?;
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let source = work.path().join("pause.c");
    std::fs::write(&source, PAUSE_C)?;
    util::run(
        Command::new(&gcc)
            .args(["-static", "-Os", "-s", "-o"])
            .arg(rootfs.join("pause"))
            .arg(&source),
    )
    .context("compiling the pause program (needs the static C library: `apt-get install -y libc6-dev`)")?;
    let config = json!({"Entrypoint": ["/pause"], "User": "65535:65535"});
    write_docker_archive(&rootfs, &image.reference, &config, work.path(), &image.archive)?;
    Ok(image)
}

fn busybox_image(cache: &Path) -> Result<ImageArchive> {
    let binary = std::fs::read(BUSYBOX).map_err(|err| {
        anyhow!(
            "{BUSYBOX}: {err}; the workload image needs a static busybox: install it with \
             `apt-get install -y busybox-static` (or run tests/tools/install-test-deps.sh)"
        )
    })?;
    let tag = util::sha256_hex(&[b"busybox-image-v1", &binary])[..12].to_owned();
    let image = ImageArchive {
        reference: format!("localhost/spiderpool-test/busybox:{tag}"),
        archive: cache.join(format!("busybox-{tag}.tar")),
    };
    if image.archive.is_file() {
        return Ok(image);
    }
    let applets = util::run(Command::new(BUSYBOX).arg("--list"))?;
    let work = tempfile::tempdir_in(cache).context("creating a build dir")?;
    let rootfs = work.path().join("rootfs");
    for dir in ["bin", "etc", "tmp", "root", "proc", "sys", "dev", "var/run"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    let installed = rootfs.join("bin/busybox");
    std::fs::write(&installed, &binary)?;
    set_mode(&installed, 0o755)?;
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    set_mode(&rootfs.join("tmp"), 0o1777)?;
    let config = json!({"Cmd": ["sh"], "Env": ["PATH=/bin"]});
    write_docker_archive(&rootfs, &image.reference, &config, work.path(), &image.archive)?;
    Ok(image)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// `tar -cf out -C dir entries...` with fixed owners, order and times: the same files give the same
/// bytes.
fn deterministic_tar(dir: &Path, out: &Path, entries: &[&str]) -> Result<()> {
    let tar = tools::which("tar").ok_or_else(|| anyhow!("GNU tar not found: `apt-get install -y tar`"))?;
    util::run(
        Command::new(&tar)
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@0",
                "-C",
            ])
            .arg(dir)
            .arg("-cf")
            .arg(out)
            .args(entries),
    )?;
    Ok(())
}

/// Packs `rootfs` as the single layer of an image tagged `reference` with the OCI image config
/// `config` (`Entrypoint`, `Cmd`, `Env`, `User`), as a docker-archive tarball at `out` (written
/// under a temporary name in `work`, then renamed, so a concurrent reader never sees half of it).
pub fn write_docker_archive(
    rootfs: &Path,
    reference: &str,
    config: &Value,
    work: &Path,
    out: &Path,
) -> Result<()> {
    let staging = work.join("archive");
    std::fs::create_dir_all(&staging)?;
    let layer = work.join("layer.tar");
    deterministic_tar(rootfs, &layer, &["."]).context("packing an image layer")?;
    let layer_bytes = std::fs::read(&layer)?;
    let layer_digest = util::sha256_hex(&[&layer_bytes]);
    std::fs::create_dir_all(staging.join(&layer_digest))?;
    std::fs::rename(&layer, staging.join(&layer_digest).join("layer.tar"))?;
    let image_config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    });
    let config_bytes = serde_json::to_vec(&image_config)?;
    let config_digest = util::sha256_hex(&[&config_bytes]);
    let config_name = format!("{config_digest}.json");
    std::fs::write(staging.join(&config_name), &config_bytes)?;
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": [reference],
        "Layers": [format!("{layer_digest}/layer.tar")],
    }]);
    std::fs::write(staging.join("manifest.json"), serde_json::to_vec(&manifest)?)?;
    let partial = work.join("image.tar");
    deterministic_tar(
        &staging,
        &partial,
        &["manifest.json", &config_name, &layer_digest],
    )
    .context("packing an image archive")?;
    std::fs::rename(&partial, out).with_context(|| format!("moving the image to {}", out.display()))?;
    if !out.is_file() {
        bail!("{} was not written", out.display());
    }
    Ok(())
}
