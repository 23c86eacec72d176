//! Logging for the operator's processes: upstream's JSON lines in a cluster, text on a terminal, the
//! level from `SPIDERPOOL_LOG_LEVEL` (see `spiderpool_telemetry`).

/// Installs the global subscriber for `component` (once; later calls are ignored).
pub fn init(component: &str) {
    spiderpool_telemetry::init(component);
}
