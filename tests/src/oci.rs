//! OCI image archives without a container engine: a few files in one layer, written so that the same
//! files give the same bytes and so the same digests (sorted entries, owner 0:0, modification time 0, no
//! creation date in the image configuration, gzip without a name or time).
//!
//! An archive is an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/*`) in a tar file, as
//! `ctr images import`, `skopeo copy oci-archive:` and `podman load` read it. Its `index.json` holds one
//! entry: a multi-platform image index (one manifest per architecture), annotated with the image's full
//! name (`io.containerd.image.name`, which containerd names the imported image by) and its tag
//! (`org.opencontainers.image.ref.name`).
//!
//! [`read_archive`] and [`unpack`] read such archives back (only ours: plain files and directories in
//! ustar entries), for the tests and for running an image's files.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// Media types of the OCI image specification.
pub mod media {
    /// An image index (a list of manifests, one per platform).
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// An image manifest.
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// An image configuration.
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// A gzip-compressed tar layer.
    pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
}

/// Annotation containerd names an imported image by.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for an image's tag in a layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One regular file of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// Absolute path in the image, e.g. `/usr/bin/spiderpool-agent`.
    pub path: String,
    /// Permission bits, e.g. `0o755`.
    pub mode: u32,
    /// The bytes.
    pub contents: Vec<u8>,
}

/// The image of one architecture.
#[derive(Debug, Clone)]
pub struct PlatformImage {
    /// OCI architecture name: `amd64` or `arm64`.
    pub architecture: String,
    /// Every file (directories are implied by the paths).
    pub files: Vec<ImageFile>,
}

/// A multi-platform image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Full name without the tag, e.g. `example.invalid/spiderpool-rs/spiderpool-agent`.
    pub name: String,
    /// Tag, e.g. `v0.1.0`.
    pub tag: String,
    /// The configuration's `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// The configuration's `Env` (`KEY=value`).
    pub env: Vec<String>,
    /// The configuration's `Labels`.
    pub labels: BTreeMap<String, String>,
    /// One image per architecture.
    pub platforms: Vec<PlatformImage>,
}

impl ImageSpec {
    /// `name:tag`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut text = String::with_capacity(71);
    text.push_str("sha256:");
    for byte in hash {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// A content-addressed blob.
#[derive(Debug, Clone)]
struct Blob {
    media_type: &'static str,
    bytes: Vec<u8>,
}

impl Blob {
    fn json(media_type: &'static str, value: &Value) -> Result<Self> {
        Ok(Blob {
            media_type,
            bytes: serde_json::to_vec(value).context("serializing an OCI document")?,
        })
    }

    fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": digest(&self.bytes), "size": self.bytes.len()})
    }
}

/// Writes `spec` as an OCI archive at `out` (through a temporary file renamed into place) and returns
/// the digest of its image index, the digest a registry would show for the image.
pub fn write_archive(spec: &ImageSpec, out: &Path) -> Result<String> {
    ensure!(!spec.platforms.is_empty(), "image {} has no platform", spec.name);
    let mut blobs: BTreeMap<String, Blob> = BTreeMap::new();
    let mut manifests = Vec::new();
    for platform in &spec.platforms {
        let layer_tar = layer(&platform.files)?;
        let diff_id = digest(&layer_tar);
        let layer = Blob {
            media_type: media::LAYER_GZIP,
            bytes: gzip(&layer_tar)?,
        };
        let config = Blob::json(
            media::CONFIG,
            &json!({
                "architecture": platform.architecture,
                "os": "linux",
                "config": {
                    "Entrypoint": spec.entrypoint,
                    "Env": spec.env,
                    "Labels": spec.labels,
                },
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            }),
        )?;
        let manifest = Blob::json(
            media::MANIFEST,
            &json!({
                "schemaVersion": 2,
                "mediaType": media::MANIFEST,
                "config": config.descriptor(),
                "layers": [layer.descriptor()],
            }),
        )?;
        let mut descriptor = manifest.descriptor();
        descriptor["platform"] = json!({"architecture": platform.architecture, "os": "linux"});
        manifests.push(descriptor);
        for blob in [layer, config, manifest] {
            blobs.insert(digest(&blob.bytes), blob);
        }
    }
    let index = Blob::json(
        media::INDEX,
        &json!({"schemaVersion": 2, "mediaType": media::INDEX, "manifests": manifests}),
    )?;
    let index_digest = digest(&index.bytes);
    let mut top = index.descriptor();
    top["annotations"] = json!({CONTAINERD_NAME: spec.reference(), REF_NAME: spec.tag});
    let top_index = json!({"schemaVersion": 2, "mediaType": media::INDEX, "manifests": [top]});
    blobs.insert(index_digest.clone(), index);

    let mut entries: Vec<(String, u32, Vec<u8>)> = vec![
        (
            "oci-layout".into(),
            0o644,
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), 0o644, serde_json::to_vec(&top_index)?),
    ];
    for (blob_digest, blob) in blobs {
        let hex = blob_digest.trim_start_matches("sha256:");
        entries.push((format!("blobs/sha256/{hex}"), 0o644, blob.bytes));
    }
    let mut archive = TarWriter::default();
    for dir in ["blobs/", "blobs/sha256/"] {
        archive.directory(dir)?;
    }
    for (path, mode, bytes) in &entries {
        archive.file(path, *mode, bytes)?;
    }
    let bytes = archive.finish();

    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let partial = out.with_extension("partial");
    std::fs::write(&partial, &bytes).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, out).with_context(|| format!("renaming into {}", out.display()))?;
    Ok(index_digest)
}

/// The uncompressed tar of one layer: every parent directory (mode 0755), then the files, sorted.
fn layer(files: &[ImageFile]) -> Result<Vec<u8>> {
    let mut by_path: BTreeMap<String, &ImageFile> = BTreeMap::new();
    let mut dirs = std::collections::BTreeSet::new();
    for file in files {
        let relative = relative_path(&file.path)?;
        let mut prefix = String::new();
        let parts: Vec<&str> = relative.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            prefix.push_str(part);
            prefix.push('/');
            dirs.insert(prefix.clone());
        }
        if by_path.insert(relative.clone(), file).is_some() {
            bail!("{} is listed twice", file.path);
        }
    }
    let mut tar = TarWriter::default();
    for dir in &dirs {
        tar.directory(dir)?;
    }
    for (path, file) in &by_path {
        tar.file(path, file.mode, &file.contents)?;
    }
    Ok(tar.finish())
}

fn relative_path(path: &str) -> Result<String> {
    let relative = path
        .strip_prefix('/')
        .ok_or_else(|| anyhow!("image path {path:?} is not absolute"))?;
    ensure!(
        relative
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".."),
        "image path {path:?} must name a file without `.`, `..` or empty parts"
    );
    Ok(relative.to_string())
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    // flate2's header has no file name and modification time 0 unless asked for.
    let mut encoder = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).context("compressing a layer")?;
    encoder.finish().context("compressing a layer")
}

/// A ustar writer for plain files and directories, every field fixed but name, mode, size and type.
#[derive(Default)]
struct TarWriter {
    out: Vec<u8>,
}

impl TarWriter {
    fn directory(&mut self, path: &str) -> Result<()> {
        self.header(path, 0o755, 0, b'5')
    }

    fn file(&mut self, path: &str, mode: u32, contents: &[u8]) -> Result<()> {
        self.header(path, mode, contents.len() as u64, b'0')?;
        self.out.extend_from_slice(contents);
        let padding = (512 - contents.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0, padding));
        Ok(())
    }

    fn header(&mut self, path: &str, mode: u32, size: u64, kind: u8) -> Result<()> {
        let mut header = [0u8; 512];
        let (prefix, name) = split_ustar_name(path)?;
        header[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut header[100..108], u64::from(mode));
        octal(&mut header[108..116], 0); // uid
        octal(&mut header[116..124], 0); // gid
        octal(&mut header[124..136], size);
        octal(&mut header[136..148], 0); // mtime
        header[156] = kind;
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        // The checksum is computed with its own field as spaces.
        header[148..156].fill(b' ');
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        let text = format!("{sum:06o}\0 ");
        header[148..156].copy_from_slice(text.as_bytes());
        self.out.extend_from_slice(&header);
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.extend(std::iter::repeat_n(0, 1024));
        self.out
    }
}

/// ustar keeps names up to 100 bytes, plus a 155-byte prefix split at a `/`.
fn split_ustar_name(path: &str) -> Result<(&str, &str)> {
    if path.len() <= 100 {
        return Ok(("", path));
    }
    path.char_indices()
        .filter(|&(i, c)| c == '/' && i <= 155 && path.len() - i - 1 <= 100)
        .map(|(i, _)| (&path[..i], &path[i + 1..]))
        .next()
        .ok_or_else(|| anyhow!("{path} is too long for a ustar entry"))
}

fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    field[..width].copy_from_slice(&text.as_bytes()[text.len() - width..]);
    field[width] = 0;
}

/// One entry read back from a tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Path inside the tar (directories end with `/`).
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner and group ids.
    pub owner: (u64, u64),
    /// Modification time.
    pub mtime: u64,
    /// Whether it is a directory.
    pub directory: bool,
    /// File contents (empty for directories).
    pub contents: Vec<u8>,
}

/// Reads every entry of a tar of ours (ustar, plain files and directories only).
pub fn read_tar(bytes: &[u8]) -> Result<Vec<TarEntry>> {
    let mut entries = Vec::new();
    let mut offset = 0;
    while offset + 512 <= bytes.len() {
        let header = &bytes[offset..offset + 512];
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let field = |range: std::ops::Range<usize>| -> String {
            let raw = &header[range];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).trim().to_string()
        };
        let number = |range: std::ops::Range<usize>| -> Result<u64> {
            let text = field(range);
            u64::from_str_radix(if text.is_empty() { "0" } else { &text }, 8)
                .with_context(|| format!("bad octal field {text:?} at offset {offset}"))
        };
        let declared = number(148..156)?;
        let mut copy = header.to_vec();
        copy[148..156].fill(b' ');
        let sum: u64 = copy.iter().map(|&b| u64::from(b)).sum();
        ensure!(sum == declared, "tar header checksum mismatch at offset {offset}");
        let (name, prefix) = (field(0..100), field(345..500));
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let size = usize::try_from(number(124..136)?)?;
        let kind = header[156];
        ensure!(
            kind == b'0' || kind == b'5' || kind == 0,
            "tar entry {path} is neither a file nor a directory (type {kind})"
        );
        let start = offset + 512;
        ensure!(start + size <= bytes.len(), "tar entry {path} is truncated");
        entries.push(TarEntry {
            mode: u32::try_from(number(100..108)?)?,
            owner: (number(108..116)?, number(116..124)?),
            mtime: number(136..148)?,
            directory: kind == b'5',
            contents: bytes[start..start + size].to_vec(),
            path,
        });
        offset = start + size.div_ceil(512) * 512;
    }
    Ok(entries)
}

/// An archive read back: its blobs by digest and its `index.json`.
#[derive(Debug, Clone)]
pub struct Archive {
    /// `index.json`.
    pub index: Value,
    /// Every blob, by `sha256:<hex>`, its digest checked.
    pub blobs: BTreeMap<String, Vec<u8>>,
    /// The archive's own entries, in order (for checking how it was written).
    pub entries: Vec<TarEntry>,
}

impl Archive {
    /// The blob `digest` parsed as JSON.
    pub fn json(&self, digest: &str) -> Result<Value> {
        let bytes = self
            .blobs
            .get(digest)
            .ok_or_else(|| anyhow!("blob {digest} is missing"))?;
        serde_json::from_slice(bytes).with_context(|| format!("blob {digest} is not JSON"))
    }

    /// The image index `index.json` refers to, and its annotations.
    pub fn image_index(&self) -> Result<(Value, Value)> {
        let top = &self.index["manifests"][0];
        let digest = top["digest"]
            .as_str()
            .ok_or_else(|| anyhow!("index.json names no digest"))?;
        Ok((self.json(digest)?, top["annotations"].clone()))
    }

    /// The manifest and configuration of one architecture.
    pub fn platform(&self, architecture: &str) -> Result<(Value, Value)> {
        let (index, _) = self.image_index()?;
        let entry = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["platform"]["architecture"] == architecture)
            .ok_or_else(|| anyhow!("the image has no {architecture} manifest"))?;
        let manifest = self.json(entry["digest"].as_str().unwrap_or_default())?;
        let config = self.json(manifest["config"]["digest"].as_str().unwrap_or_default())?;
        Ok((manifest, config))
    }

    /// The files of one architecture's image (its layers applied in order), by absolute path.
    pub fn files(&self, architecture: &str) -> Result<BTreeMap<String, TarEntry>> {
        let (manifest, config) = self.platform(architecture)?;
        let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        let diff_ids = config["rootfs"]["diff_ids"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        ensure!(
            layers.len() == diff_ids.len(),
            "layers and diff_ids differ in number"
        );
        let mut files = BTreeMap::new();
        for (layer, diff_id) in layers.iter().zip(&diff_ids) {
            let compressed = self
                .blobs
                .get(layer["digest"].as_str().unwrap_or_default())
                .ok_or_else(|| anyhow!("layer {} is missing", layer["digest"]))?;
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(compressed.as_slice())
                .read_to_end(&mut tar)
                .context("decompressing a layer")?;
            ensure!(
                diff_id.as_str() == Some(digest(&tar).as_str()),
                "a layer's content does not match its diff_id"
            );
            for entry in read_tar(&tar)? {
                files.insert(format!("/{}", entry.path.trim_end_matches('/')), entry);
            }
        }
        Ok(files)
    }
}

/// Reads an archive written by [`write_archive`], checking every blob's digest.
pub fn read_archive(path: &Path) -> Result<Archive> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let entries = read_tar(&bytes).with_context(|| format!("reading {}", path.display()))?;
    let mut index = None;
    let mut blobs = BTreeMap::new();
    for entry in &entries {
        if entry.path == "index.json" {
            index = Some(serde_json::from_slice(&entry.contents).context("index.json is not JSON")?);
        } else if let Some(hex) = entry.path.strip_prefix("blobs/sha256/")
            && !entry.directory
        {
            let expected = format!("sha256:{hex}");
            ensure!(
                digest(&entry.contents) == expected,
                "blob {expected} does not match its content"
            );
            blobs.insert(expected, entry.contents.clone());
        }
    }
    Ok(Archive {
        index: index.ok_or_else(|| anyhow!("{} has no index.json", path.display()))?,
        blobs,
        entries,
    })
}

/// Writes the files of one architecture's image under `root` (the root file system a container of
/// the image would see), with their modes.
pub fn unpack(archive: &Archive, architecture: &str, root: &Path) -> Result<Vec<PathBuf>> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut written = Vec::new();
    for (path, entry) in archive.files(architecture)? {
        let target = root.join(relative_path(&path)?);
        if entry.directory {
            std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
        } else {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&target, &entry.contents)
                .with_context(|| format!("writing {}", target.display()))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(entry.mode))
                .with_context(|| format!("setting the mode of {}", target.display()))?;
            written.push(target);
        }
    }
    Ok(written)
}

/// What an ELF executable is built for, from its header and program headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfFacts {
    /// OCI architecture name of `e_machine` (`amd64`, `arm64`, or `other`).
    pub architecture: &'static str,
    /// No `PT_INTERP`: needs no dynamic loader, hence no libc of the host.
    pub static_binary: bool,
}

/// Reads the facts of a 64-bit little-endian ELF file.
pub fn elf_facts(bytes: &[u8]) -> Result<ElfFacts> {
    ensure!(bytes.len() >= 64 && bytes[..4] == *b"\x7fELF", "not an ELF file");
    ensure!(
        bytes[4] == 2 && bytes[5] == 1,
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u64_at = |at: usize| -> Result<u64> {
        let slice = bytes
            .get(at..at + 8)
            .ok_or_else(|| anyhow!("ELF file truncated"))?;
        Ok(u64::from_le_bytes(slice.try_into()?))
    };
    let architecture = match u16_at(18) {
        0x3e => "amd64",
        0xb7 => "arm64",
        _ => "other",
    };
    let program_headers = usize::try_from(u64_at(32)?)?;
    let (entry_size, count) = (usize::from(u16_at(54)), usize::from(u16_at(56)));
    let mut interpreter = false;
    for i in 0..count {
        let at = program_headers + i * entry_size;
        ensure!(at + 4 <= bytes.len(), "ELF program headers truncated");
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) == PT_INTERP {
            interpreter = true;
        }
    }
    Ok(ElfFacts {
        architecture,
        static_binary: !interpreter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(contents: &[u8]) -> ImageSpec {
        ImageSpec {
            name: "example.invalid/test/image".into(),
            tag: "v1".into(),
            entrypoint: vec!["/usr/bin/tool".into()],
            env: vec!["PATH=/usr/bin".into()],
            labels: BTreeMap::from([("org.opencontainers.image.version".into(), "1".into())]),
            platforms: ["amd64", "arm64"]
                .map(|architecture| PlatformImage {
                    architecture: architecture.into(),
                    files: vec![
                        ImageFile {
                            path: "/usr/bin/tool".into(),
                            mode: 0o755,
                            contents: contents.to_vec(),
                        },
                        ImageFile {
                            path: "/opt/x/plugins/a-very-long-directory-name-to-exercise-the-ustar-prefix-field-of-the-header/and-a-long-file-name".into(),
                            mode: 0o644,
                            contents: b"data".to_vec(),
                        },
                    ],
                })
                .to_vec(),
        }
    }

    #[test]
    fn same_files_same_digest_and_the_archive_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a.tar"),
            dir.path().join("b.tar"),
            dir.path().join("c.tar"),
        );
        let first = write_archive(&spec(b"binary"), &a).unwrap();
        let second = write_archive(&spec(b"binary"), &b).unwrap();
        let other = write_archive(&spec(b"binary2"), &c).unwrap();
        assert_eq!(first, second);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_ne!(first, other);

        let archive = read_archive(&a).unwrap();
        let (index, annotations) = archive.image_index().unwrap();
        assert_eq!(annotations[CONTAINERD_NAME], "example.invalid/test/image:v1");
        assert_eq!(annotations[REF_NAME], "v1");
        assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
        let (_, config) = archive.platform("arm64").unwrap();
        assert_eq!(config["architecture"], "arm64");
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/bin/tool");
        let files = archive.files("amd64").unwrap();
        let tool = &files["/usr/bin/tool"];
        assert_eq!((tool.mode, tool.owner, tool.mtime), (0o755, (0, 0), 0));
        assert_eq!(tool.contents, b"binary");
        assert!(files["/usr/bin"].directory);
        assert!(files.keys().any(|k| k.ends_with("and-a-long-file-name")));

        let root = dir.path().join("root");
        unpack(&archive, "amd64", &root).unwrap();
        assert_eq!(std::fs::read(root.join("usr/bin/tool")).unwrap(), b"binary");
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in ["usr/bin/x", "/usr/../x", "/", "/usr//x"] {
            assert!(relative_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn elf_facts_of_this_test_binary() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let facts = elf_facts(&exe).unwrap();
        assert_eq!(
            facts.architecture,
            if cfg!(target_arch = "x86_64") {
                "amd64"
            } else {
                "other"
            }
        );
        // Test binaries link glibc dynamically.
        assert!(!facts.static_binary);
        assert!(elf_facts(b"#!/bin/sh\n").is_err());
    }
}
