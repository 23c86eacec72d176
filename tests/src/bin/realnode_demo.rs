//! The local demo (`tests/demo up|status|down`): a cluster of real nodes on this machine with
//! Spiderpool installed from its chart and images, an underlay pool, two workloads, and what a user would look at. See tests/README.md.
//!
//! `up` starts a supervisor (`serve`) in the background that holds the cluster, waits until it has
//! deployed the scenario, and prints the report. `status` prints the report again from the live
//! cluster. `down` stops the supervisor, which tears everything down (its watchdog does it too if
//! the supervisor is killed).

#![allow(clippy::print_stdout, reason = "a command-line tool that prints for its user")]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use spiderpool_tests::realnode::{self, RealCluster, RealClusterOptions, demo};

fn state_dir() -> PathBuf {
    std::env::var_os("SPIDERPOOL_DEMO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/spiderpool-demo"))
}

struct State {
    dir: PathBuf,
}

impl State {
    fn pid_file(&self) -> PathBuf {
        self.dir.join("serve.pid")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("serve.log")
    }
    fn ready(&self) -> PathBuf {
        self.dir.join("report.txt")
    }
    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }
    fn running_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        std::path::Path::new(&format!("/proc/{pid}"))
            .exists()
            .then_some(pid)
    }
}

fn usage() -> Result<()> {
    bail!("usage: tests/demo up|status|down")
}

fn main() -> Result<()> {
    let state = State { dir: state_dir() };
    let command = std::env::args().nth(1).unwrap_or_default();
    match command.as_str() {
        "up" => up(&state),
        "down" => down(&state),
        "status" => status(&state),
        "serve" => serve(&state),
        _ => usage(),
    }
}

fn up(state: &State) -> Result<()> {
    if state.running_pid().is_some() && state.ready().exists() {
        println!("The demo is already up.\n");
        return status(state);
    }
    std::fs::create_dir_all(&state.dir).with_context(|| format!("creating {}", state.dir.display()))?;
    let _ = std::fs::remove_file(state.ready());
    let log = std::fs::File::create(state.log())?;
    let t0 = Instant::now();
    let mut child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the demo's supervisor")?;
    println!(
        "Starting a Kubernetes cluster of four real nodes on this machine (log: {}) ...",
        state.log().display()
    );
    let deadline = t0 + Duration::from_secs(30 * 60);
    loop {
        if state.ready().exists() {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the demo's supervisor ended ({status}); the end of {}:\n{}",
                state.log().display(),
                tail(&state.log(), 40)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the demo was not up after 30 minutes; see {}",
                state.log().display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("Up in {:.0} s.\n", t0.elapsed().as_secs_f64());
    print!("{}", std::fs::read_to_string(state.ready())?);
    println!(
        "\nexport KUBECONFIG={}   # for kubectl, if you have it\nStop with: tests/demo down",
        state.kubeconfig().display()
    );
    Ok(())
}

fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn down(state: &State) -> Result<()> {
    let Some(pid) = state.running_pid() else {
        println!("The demo is not running.");
        return Ok(());
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).context("stopping the supervisor")?;
    println!("Tearing the demo down ...");
    let deadline = Instant::now() + Duration::from_secs(120);
    while state.running_pid().is_some() {
        if Instant::now() >= deadline {
            // Its watchdog removes whatever is left once it is gone.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_dir_all(&state.dir);
    println!("Down.");
    Ok(())
}

fn status(state: &State) -> Result<()> {
    if state.running_pid().is_none() {
        println!("The demo is not running (tests/demo up starts it).");
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(state.kubeconfig())?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await?;
        let client = kube::Client::try_from(config)?;
        demo::report(&client, &scenario()).await
    })?;
    print!("{report}");
    Ok(())
}

fn scenario() -> demo::Scenario {
    demo::Scenario {
        namespace: demo::NAMESPACE.to_owned(),
        pool: demo::POOL.to_owned(),
        deployments: Default::default(),
    }
}

/// The supervisor: holds the cluster until SIGTERM or SIGINT.
fn serve(state: &State) -> Result<()> {
    std::fs::write(state.pid_file(), std::process::id().to_string())?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_client=off"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let cluster = RealCluster::start(RealClusterOptions::standard()).await?;
        tracing::info!(times = ?cluster.startup_times(), "cluster up");
        let installed = realnode::chart::install(&cluster).await?;
        tracing::info!(times = ?installed.times, "chart installed");
        let scenario = demo::deploy(&cluster, demo::NAMESPACE, demo::POOL).await?;
        let report = demo::report(&cluster.client()?, &scenario).await?;
        let pings = demo::ping_across_nodes(&cluster, &scenario).await?;
        std::fs::copy(cluster.control_plane().kubeconfig_path(), state.kubeconfig())?;
        let temp = state.dir.join(".report.partial");
        std::fs::write(&temp, format!("{report}\n{pings}"))?;
        std::fs::rename(&temp, state.ready())?;
        tracing::info!("demo up; waiting for SIGTERM");
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("tearing down");
        drop(cluster);
        Ok::<(), anyhow::Error>(())
    })?;
    let _ = std::fs::remove_file(state.pid_file());
    Ok(())
}
