//! The project's container images: what goes in them, how they are built and where they are cached.
//!
//! `bash tests/tools/build-images.sh` (which runs the `build-images` binary of this crate) builds
//! static musl binaries for every architecture in [`ARCHITECTURES`] with the `image` profile and packs
//! them into one multi-platform OCI archive per image ([`crate::oci`]): `target/images/<image>.oci.tar`,
//! plus `target/images/images.json` listing each image's reference and digest.
//!
//! Builds are cached by a hash of their inputs (the sources of the crates that go into the images, the
//! lock file, the toolchain and this file): a second run with the same inputs copies the archives from
//! `~/.cache/spiderpool-rs/images/<hash>/` and builds nothing. The cargo target directory of these
//! builds is the checkout's own (`target/image-build/`): cargo names a workspace crate's artifacts
//! relative to the workspace root, so a target directory shared by two checkouts hands one checkout
//! the other's stale build of a crate (seen: an agent built against another checkout's older API crate).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use sha2::{Digest as _, Sha256};

use crate::oci::{self, ImageFile, ImageSpec, PlatformImage};
use crate::tools;

/// One binary of a workspace package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binary {
    /// Cargo package.
    pub package: &'static str,
    /// Binary target of that package.
    pub bin: &'static str,
}

/// The CNI plugins the agent image carries in [`CNI_PLUGIN_DIR`], which its init container
/// (`spiderpool-install-cni`) copies onto every node. Adding a plugin to the nodes is one line here.
pub const CNI_PLUGINS: &[Binary] = &[
    Binary {
        package: "spiderpool-cni",
        bin: "spiderpool",
    },
    // Every NetworkAttachmentDefinition we render chains it.
    Binary {
        package: "spiderpool-coordinator",
        bin: "coordinator",
    },
    Binary {
        package: "spiderpool-ifacer",
        bin: "ifacer",
    },
];

/// Where the agent image keeps the CNI plugins it installs.
pub const CNI_PLUGIN_DIR: &str = "/opt/spiderpool/cni/bin";

/// The images: name (last part of the repository), the binaries in `/usr/bin`, whether the CNI
/// plugins go in too, and the entrypoint.
pub const IMAGES: &[Image] = &[
    Image {
        name: "spiderpool-operator",
        binaries: &[
            Binary {
                package: "spiderpool-operator",
                bin: "spiderpool-operator",
            },
            Binary {
                package: "spiderpool-operator",
                bin: "spiderpool-init",
            },
        ],
        cni_plugins: false,
        description: "spiderpool-rs operator: controllers, admission webhooks and the spiderpool-init job",
    },
    Image {
        name: "spiderpool-agent",
        binaries: &[
            Binary {
                package: "spiderpool-node-daemon",
                bin: "spiderpool-agent",
            },
            Binary {
                package: "spiderpool-node-daemon",
                bin: "spiderpool-install-cni",
            },
        ],
        cni_plugins: true,
        description: "spiderpool-rs node agent (IPAM daemon) with the CNI plugins it installs on each node",
    },
];

/// One image.
#[derive(Debug, Clone, Copy)]
pub struct Image {
    /// Last part of the repository, e.g. `spiderpool-agent`.
    pub name: &'static str,
    /// Binaries in `/usr/bin`; the first is the entrypoint.
    pub binaries: &'static [Binary],
    /// Whether [`CNI_PLUGINS`] go into [`CNI_PLUGIN_DIR`].
    pub cni_plugins: bool,
    /// `org.opencontainers.image.description`.
    pub description: &'static str,
}

/// Registry and repository prefix of the images (the chart's default `image.registry` and the first
/// part of `image.repository`). `.invalid` on purpose: nothing is published, so a node runs these
/// images only after they were imported into its runtime (or pushed elsewhere and the chart's
/// `global.imageRegistryOverride` set).
pub const REGISTRY: &str = "example.invalid";
/// Repository prefix.
pub const REPOSITORY_PREFIX: &str = "spiderpool-rs";

/// The architectures built: OCI name and Rust target.
pub const ARCHITECTURES: &[(&str, &str)] = &[
    ("amd64", "x86_64-unknown-linux-musl"),
    ("arm64", "aarch64-unknown-linux-musl"),
];

/// Cargo profile of the images' binaries (workspace Cargo.toml).
pub const PROFILE: &str = "image";

/// The image tag: `v` and the workspace version (the chart's appVersion).
pub fn tag() -> String {
    format!("v{}", env!("CARGO_PKG_VERSION"))
}

/// `example.invalid/spiderpool-rs/<name>`.
pub fn repository(name: &str) -> String {
    format!("{REGISTRY}/{REPOSITORY_PREFIX}/{name}")
}

/// What one build produced.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Built {
    /// Image name, e.g. `spiderpool-agent`.
    pub name: String,
    /// Full reference, e.g. `example.invalid/spiderpool-rs/spiderpool-agent:v0.1.0`.
    pub reference: String,
    /// Digest of the multi-platform image index.
    pub digest: String,
    /// File name of the archive in the output directory.
    pub archive: String,
}

/// The cache root (`$SPIDERPOOL_TEST_CACHE`, else `$XDG_CACHE_HOME/spiderpool-rs`, else
/// `~/.cache/spiderpool-rs`), shared with `tests/tools/build-kubernetes.sh`.
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

/// The paths (relative to the repository) whose content decides the images.
const INPUTS: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "schema",
    "operator",
    "node-daemon",
    "cni-plugins",
    "tests/src/images.rs",
    "tests/src/oci.rs",
];

/// A hash of every input of the images: the files under [`INPUTS`] that git knows or would add
/// (their working-tree content, so uncommitted changes count), the toolchain's version and the
/// architectures.
pub fn input_hash(repo: &Path) -> Result<String> {
    let output = Command::new("git")
        .current_dir(repo)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
        ])
        .args(INPUTS)
        .output()
        .context("running git ls-files (is git installed?)")?;
    ensure!(
        output.status.success(),
        "git ls-files failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut paths: Vec<&[u8]> = output
        .stdout
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .collect();
    paths.sort();
    paths.dedup();
    let mut hash = Sha256::new();
    for path in paths {
        let path = String::from_utf8_lossy(path);
        hash.update(path.as_bytes());
        hash.update([0]);
        // A file git still lists but the working tree deleted counts as absent.
        match std::fs::read(repo.join(path.as_ref())) {
            Ok(bytes) => hash.update(oci::digest(&bytes).as_bytes()),
            Err(_) => hash.update(b"absent"),
        }
    }
    let rustc = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    hash.update(&rustc.stdout);
    for (arch, target) in ARCHITECTURES {
        hash.update(arch.as_bytes());
        hash.update(target.as_bytes());
    }
    Ok(oci::digest(&hash.finalize())
        .trim_start_matches("sha256:")
        .chars()
        .take(20)
        .collect())
}

/// Builds (or takes from the cache) every image and copies the archives into `out`. Returns what is
/// in `out/images.json`.
pub fn build(repo: &Path, out: &Path) -> Result<Vec<Built>> {
    let (cached, built) = build_cached(repo)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for image in &built {
        let target = out.join(&image.archive);
        let partial = target.with_extension("partial");
        std::fs::copy(cached.join(&image.archive), &partial)
            .with_context(|| format!("copying {} into {}", image.archive, out.display()))?;
        std::fs::rename(&partial, &target)?;
    }
    std::fs::write(out.join("images.json"), serde_json::to_vec_pretty(&built)?)?;
    Ok(built)
}

/// An image's files for one architecture, unpacked, and what its configuration says to run.
#[derive(Debug, Clone)]
pub struct ImageRoot {
    /// The root file system.
    pub rootfs: PathBuf,
    /// The configuration's `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// The configuration's `Env` (`KEY=value`).
    pub env: Vec<String>,
}

/// Builds (or takes from the cache) every image and unpacks `architecture` of each, once per build
/// (under the cache), for running them ([`crate::kubelet`]). Keyed by image reference.
pub fn unpacked(architecture: &str) -> Result<BTreeMap<String, ImageRoot>> {
    let (cached, built) = build_cached(tools::repo_root())?;
    let mut roots = BTreeMap::new();
    for image in built {
        let archive = oci::read_archive(&cached.join(&image.archive))?;
        let (_, config) = archive.platform(architecture)?;
        let strings = |value: &serde_json::Value| -> Vec<String> {
            value
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        };
        let rootfs = cached.join(format!("rootfs-{architecture}")).join(&image.name);
        if !rootfs.is_dir() {
            // Two tests of one binary (or two processes) may unpack at once: each into its own
            // directory; the first rename wins and the others drop theirs.
            let partial = rootfs.with_extension(format!(
                "partial-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            if partial.exists() {
                std::fs::remove_dir_all(&partial)?;
            }
            oci::unpack(&archive, architecture, &partial)?;
            if std::fs::rename(&partial, &rootfs).is_err() {
                ensure!(rootfs.is_dir(), "unpacking {} failed", rootfs.display());
                std::fs::remove_dir_all(&partial)?;
            }
        }
        roots.insert(
            image.reference,
            ImageRoot {
                rootfs,
                entrypoint: strings(&config["config"]["Entrypoint"]),
                env: strings(&config["config"]["Env"]),
            },
        );
    }
    Ok(roots)
}

/// Builds every image into the cache unless it holds them for these inputs; returns the cache
/// directory and what is in it.
fn build_cached(repo: &Path) -> Result<(PathBuf, Vec<Built>)> {
    let key = input_hash(repo)?;
    let cached = cache_root().join("images").join(&key);
    let manifest = cached.join("images.json");
    let built: Vec<Built> = if manifest.is_file() {
        eprintln!(
            "build-images: inputs unchanged ({key}); using {}",
            cached.display()
        );
        serde_json::from_slice(&std::fs::read(&manifest)?).context("reading the cached images.json")?
    } else {
        let started = std::time::Instant::now();
        let binaries = compile(repo)?;
        eprintln!(
            "build-images: compiled in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        // Another checkout (or test binary) with the same inputs may be building at the same time:
        // each packs into a directory of its own, and the first to finish wins; the others keep what
        // it made, which another process may be reading already.
        let partial = cached.with_extension(format!("partial-{}", std::process::id()));
        if partial.exists() {
            std::fs::remove_dir_all(&partial).with_context(|| format!("clearing {}", partial.display()))?;
        }
        let built = pack(&binaries, &partial)?;
        std::fs::write(partial.join("images.json"), serde_json::to_vec_pretty(&built)?)?;
        if std::fs::rename(&partial, &cached).is_err() && manifest.is_file() {
            std::fs::remove_dir_all(&partial)?;
            serde_json::from_slice(&std::fs::read(&manifest)?).context("reading the cached images.json")?
        } else {
            ensure!(
                manifest.is_file(),
                "moving the images into {} failed",
                cached.display()
            );
            built
        }
    };
    Ok((cached, built))
}

/// The built binaries: per architecture, per binary name, the path.
type Binaries = BTreeMap<&'static str, BTreeMap<&'static str, PathBuf>>;

/// Runs cargo once for every architecture and binary; checks each result is a static executable of
/// its architecture.
fn compile(repo: &Path) -> Result<Binaries> {
    check_prerequisites()?;
    let target_dir = repo.join("target").join("image-build");
    let mut wanted: Vec<Binary> = CNI_PLUGINS.to_vec();
    for image in IMAGES {
        wanted.extend(image.binaries.iter().copied());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(repo)
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(["build", "--locked", "--profile", PROFILE]);
    for (_, target) in ARCHITECTURES {
        command.args(["--target", target]);
    }
    let mut packages: Vec<&str> = wanted.iter().map(|b| b.package).collect();
    packages.sort_unstable();
    packages.dedup();
    for package in packages {
        command.args(["-p", package]);
    }
    for binary in &wanted {
        command.args(["--bin", binary.bin]);
    }
    // ring's C and assembly need a C compiler for each target; Debian's cross gcc builds the arm64
    // objects, and rust-lld links the static arm64 executables against the musl the target ships.
    set_default_env(
        &mut command,
        "CC_aarch64_unknown_linux_musl",
        "aarch64-linux-gnu-gcc",
    );
    set_default_env(
        &mut command,
        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER",
        "rust-lld",
    );
    set_default_env(&mut command, "CC_x86_64_unknown_linux_musl", "musl-gcc");
    eprintln!("build-images: {command:?}");
    let status = command.status().context("running cargo build")?;
    ensure!(
        status.success(),
        "cargo build of the image binaries failed ({status})"
    );

    let mut binaries = Binaries::new();
    for (arch, target) in ARCHITECTURES {
        let dir = target_dir.join(target).join(PROFILE);
        let per_arch = binaries.entry(arch).or_default();
        for binary in &wanted {
            let path = dir.join(binary.bin);
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let facts = oci::elf_facts(&bytes).with_context(|| format!("inspecting {}", path.display()))?;
            ensure!(
                facts.architecture == *arch,
                "{} is built for {} instead of {arch}",
                path.display(),
                facts.architecture
            );
            ensure!(
                facts.static_binary,
                "{} is not statically linked (it names a dynamic loader)",
                path.display()
            );
            per_arch.insert(binary.bin, path);
        }
    }
    Ok(binaries)
}

fn set_default_env(command: &mut Command, key: &str, value: &str) {
    if std::env::var_os(key).is_none() {
        command.env(key, value);
    }
}

/// Fails with what to install when a target or a cross compiler is missing.
fn check_prerequisites() -> Result<()> {
    let sysroot = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let missing: Vec<&str> = ARCHITECTURES
        .iter()
        .map(|(_, target)| *target)
        .filter(|target| !sysroot.join("lib/rustlib").join(target).is_dir())
        .collect();
    if !missing.is_empty() {
        bail!(
            "the Rust standard library for {} is not installed: run `rustup target add {}` \
             (or tests/tools/install-test-deps.sh)",
            missing.join(", "),
            missing.join(" ")
        );
    }
    for (compiler, package) in [
        ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
        ("musl-gcc", "musl-tools"),
    ] {
        if tools::which(compiler).is_none() {
            bail!(
                "{compiler} is not on PATH: install it with `apt-get install -y {package}` \
                 (or run tests/tools/install-test-deps.sh)"
            );
        }
    }
    if !Path::new("/usr/aarch64-linux-gnu/include/stdint.h").is_file() {
        bail!(
            "the arm64 C headers are missing: install them with `apt-get install -y libc6-dev-arm64-cross` \
             (or run tests/tools/install-test-deps.sh)"
        );
    }
    Ok(())
}

/// Writes one archive per image into `dir`.
fn pack(binaries: &Binaries, dir: &Path) -> Result<Vec<Built>> {
    let mut built = Vec::new();
    for image in IMAGES {
        let mut platforms = Vec::new();
        for (arch, _) in ARCHITECTURES {
            let per_arch = binaries
                .get(arch)
                .ok_or_else(|| anyhow!("nothing was built for {arch}"))?;
            let mut files = Vec::new();
            let mut add = |path: String, bin: &str| -> Result<()> {
                let source = per_arch
                    .get(bin)
                    .ok_or_else(|| anyhow!("{bin} was not built for {arch}"))?;
                files.push(ImageFile {
                    path,
                    mode: 0o755,
                    contents: std::fs::read(source)
                        .with_context(|| format!("reading {}", source.display()))?,
                });
                Ok(())
            };
            for binary in image.binaries {
                add(format!("/usr/bin/{}", binary.bin), binary.bin)?;
            }
            if image.cni_plugins {
                for plugin in CNI_PLUGINS {
                    add(format!("{CNI_PLUGIN_DIR}/{}", plugin.bin), plugin.bin)?;
                }
            }
            platforms.push(PlatformImage {
                architecture: (*arch).to_string(),
                files,
            });
        }
        let entrypoint = image
            .binaries
            .first()
            .map(|b| vec![format!("/usr/bin/{}", b.bin)])
            .unwrap_or_default();
        let spec = ImageSpec {
            name: repository(image.name),
            tag: tag(),
            entrypoint,
            env: vec!["PATH=/usr/bin".to_string()],
            labels: BTreeMap::from([
                (
                    "org.opencontainers.image.title".to_string(),
                    image.name.to_string(),
                ),
                (
                    "org.opencontainers.image.description".to_string(),
                    image.description.to_string(),
                ),
                (
                    "org.opencontainers.image.version".to_string(),
                    env!("CARGO_PKG_VERSION").to_string(),
                ),
                (
                    "org.opencontainers.image.licenses".to_string(),
                    "Apache-2.0".to_string(),
                ),
            ]),
            platforms,
        };
        let archive = format!("{}.oci.tar", image.name);
        let digest = oci::write_archive(&spec, &dir.join(&archive))?;
        eprintln!("build-images: {} {digest}", spec.reference());
        built.push(Built {
            name: image.name.to_string(),
            reference: spec.reference(),
            digest,
            archive,
        });
    }
    Ok(built)
}

/// The images' output directory of a checkout: `target/images` (or under `CARGO_TARGET_DIR`).
pub fn default_out_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tools::repo_root().join("target"))
        .join("images")
}
