//! Logging for the operator's processes: `tracing` to stderr, filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Default filter when `RUST_LOG` is unset: our crates at `info`, kube's request logging kept quiet
/// (it logs every 404/409 the controllers expect as an error).
const DEFAULT_FILTER: &str = "info,kube_client=warn,kube_runtime=warn";

/// Installs the global subscriber (once; later calls are ignored).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
