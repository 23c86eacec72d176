//! `spiderpool-install-cni`: copies the CNI plugins the agent image carries (`spiderpool`, and every
//! other plugin the image build puts in the same directory) into the node's CNI binary directory. The
//! chart runs it as the agent DaemonSet's init container, so the plugins a node runs are always those
//! of the agent serving it.
//!
//! Each plugin is written under a temporary name in the target directory, synced, then renamed over
//! the old one. The rename is atomic: at every instant the plugin's name is either the old binary or
//! the whole new one, never a half-written file, and a copy of the old binary that the runtime is
//! executing right now keeps running (its inode stays until it exits; writing into it in place would
//! fail with "text file busy"). Upstream moves the old binary aside to `<name>.old` first and copies
//! afterwards, which leaves a moment with no plugin at all; its leftovers are removed. A plugin whose
//! bytes are already in place is not touched.

use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

/// Installs the image's CNI plugins into the host's CNI binary directory.
#[derive(Debug, Parser)]
#[command(name = "spiderpool-install-cni", version, about)]
struct Args {
    /// Directory holding the plugins inside the image.
    #[arg(
        long,
        env = "SPIDERPOOL_CNI_SOURCE_DIR",
        default_value = "/opt/spiderpool/cni/bin"
    )]
    from: PathBuf,
    /// The host's CNI binary directory as mounted in this container.
    #[arg(long, env = "SPIDERPOOL_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    to: PathBuf,
}

/// What went wrong, with the path concerned.
#[derive(Debug, thiserror::Error)]
enum InstallError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no plugin to install", .0.display())]
    Empty(PathBuf),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io { action, path, source }
}

/// What happened to one plugin.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Installed,
    Unchanged,
}

fn main() -> ExitCode {
    spiderpool_telemetry::init("spiderpool-install-cni");
    let args = Args::parse();
    match install_all(&args.from, &args.to) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::FAILURE
        }
    }
}

fn install_all(from: &Path, to: &Path) -> Result<(), InstallError> {
    let mut plugins = Vec::new();
    for entry in fs::read_dir(from).map_err(io("reading", from))? {
        let entry = entry.map_err(io("reading", from))?;
        let file_type = entry.file_type().map_err(io("inspecting", &entry.path()))?;
        if file_type.is_file() {
            plugins.push(entry.path());
        }
    }
    if plugins.is_empty() {
        return Err(InstallError::Empty(from.to_path_buf()));
    }
    plugins.sort();
    fs::create_dir_all(to).map_err(io("creating", to))?;
    for source in &plugins {
        let Some(name) = source.file_name() else { continue };
        let target = to.join(name);
        let outcome = install_one(source, &target)?;
        tracing::info!(plugin = %target.display(), ?outcome, "CNI plugin");
    }
    // The renames are durable only once the directory itself is synced.
    File::open(to)
        .and_then(|dir| dir.sync_all())
        .map_err(io("syncing", to))?;
    Ok(())
}

fn install_one(source: &Path, target: &Path) -> Result<Outcome, InstallError> {
    let bytes = fs::read(source).map_err(io("reading", source))?;
    let upstream_leftover = with_suffix(target, ".old");
    if fs::read(target).is_ok_and(|current| current == bytes) {
        remove_if_present(&upstream_leftover)?;
        return Ok(Outcome::Unchanged);
    }
    let temporary = temporary_name(target);
    remove_if_present(&temporary)?;
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .open(&temporary)
        .map_err(io("creating", &temporary))?;
    file.write_all(&bytes).map_err(io("writing", &temporary))?;
    file.set_permissions(fs::Permissions::from_mode(0o755))
        .map_err(io("setting the mode of", &temporary))?;
    file.sync_all().map_err(io("syncing", &temporary))?;
    drop(file);
    fs::rename(&temporary, target).map_err(io("renaming into place", target))?;
    remove_if_present(&upstream_leftover)?;
    Ok(Outcome::Installed)
}

/// `.<name>.spiderpool-install`, in the target directory (a rename only stays atomic within one file
/// system) and hidden, so that a runtime listing the directory never mistakes it for a plugin.
fn temporary_name(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.spiderpool-install"))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn remove_if_present(path: &Path) -> Result<(), InstallError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io("removing", path)(err)),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_line_definition_is_valid() {
        Args::command().debug_assert();
    }

    #[test]
    fn temporary_names_are_hidden_siblings() {
        assert_eq!(
            temporary_name(Path::new("/host/opt/cni/bin/spiderpool")),
            PathBuf::from("/host/opt/cni/bin/.spiderpool.spiderpool-install")
        );
        assert_eq!(
            with_suffix(Path::new("/host/opt/cni/bin/spiderpool"), ".old"),
            PathBuf::from("/host/opt/cni/bin/spiderpool.old")
        );
    }
}
