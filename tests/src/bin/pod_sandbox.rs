//! `pod-sandbox`: runs one container of a pod the way a container runtime would, for the image
//! kubelet of the tests (`spiderpool_tests::kubelet`): in a node's network namespace, in a mount
//! namespace of its own whose root is the container's root file system, with the pod's volumes bound
//! at their mount paths. Then it execs the container's command, which keeps this process's id.
//!
//! `pod-sandbox [--netns NAME] --root DIR [--bind SRC:DST]... [--ro-bind SRC:DST]... -- CMD [ARG]...`
//!
//! The environment is passed through unchanged (the kubelet sets exactly the container's). Any failure
//! before the exec exits with status 127 and says why on stderr.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};

#[derive(Debug, Default)]
struct Spec {
    netns: Option<String>,
    root: Option<PathBuf>,
    binds: Vec<(PathBuf, PathBuf, bool)>,
    command: Vec<OsString>,
}

fn parse(mut args: impl Iterator<Item = OsString>) -> Result<Spec, String> {
    let mut spec = Spec::default();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy().into_owned();
        let mut value = || args.next().ok_or_else(|| format!("{text} needs a value"));
        match text.as_str() {
            "--netns" => spec.netns = Some(value()?.to_string_lossy().into_owned()),
            "--root" => spec.root = Some(PathBuf::from(value()?)),
            "--bind" | "--ro-bind" => {
                let pair = value()?.to_string_lossy().into_owned();
                let (source, target) = pair
                    .split_once(':')
                    .ok_or_else(|| format!("{text} {pair}: expected SOURCE:TARGET"))?;
                spec.binds
                    .push((source.into(), target.into(), text == "--ro-bind"));
            }
            "--" => {
                spec.command = args.collect();
                break;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if spec.command.is_empty() {
        return Err("no command after --".into());
    }
    Ok(spec)
}

fn main() -> ExitCode {
    let result = parse(std::env::args_os().skip(1)).and_then(|spec| enter(&spec).map(|()| spec));
    match result {
        Ok(spec) => {
            let error = Command::new(&spec.command[0]).args(&spec.command[1..]).exec();
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("pod-sandbox: exec {:?}: {error}\n", spec.command[0]).as_bytes(),
            );
            ExitCode::from(127)
        }
        Err(error) => {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("pod-sandbox: {error}\n").as_bytes(),
            );
            ExitCode::from(127)
        }
    }
}

/// Joins the network namespace, makes a private mount namespace, binds the volumes into the root and
/// changes into it.
fn enter(spec: &Spec) -> Result<(), String> {
    if let Some(netns) = &spec.netns {
        let path = Path::new("/var/run/netns").join(netns);
        let file = std::fs::File::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| format!("joining netns {netns}: {e}"))?;
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making / private: {e}"))?;
    let root = spec.root.as_ref().ok_or("--root is required")?;
    for (source, target, read_only) in &spec.binds {
        let inside = root.join(target.strip_prefix("/").unwrap_or(target));
        if source.is_dir() {
            std::fs::create_dir_all(&inside).map_err(|e| format!("creating {}: {e}", inside.display()))?;
        } else {
            if let Some(parent) = inside.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
            }
            if !inside.exists() {
                std::fs::write(&inside, b"").map_err(|e| format!("creating {}: {e}", inside.display()))?;
            }
        }
        mount(
            Some(source.as_path()),
            &inside,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| format!("binding {} at {}: {e}", source.display(), target.display()))?;
        if *read_only {
            mount(
                None::<&str>,
                &inside,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|e| format!("making {} read-only: {e}", target.display()))?;
        }
    }
    nix::unistd::chroot(root).map_err(|e| format!("chroot {}: {e}", root.display()))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}
