//! The fuzz targets: one per kind of input an untrusted party controls. Each takes raw bytes,
//! drives the real parser or handler with them, and returns a short description of what happened
//! (the engine's feedback). A panic or an input that takes too long is a finding.

pub mod admission;
pub mod agent_socket;
pub mod annotations;
pub mod cni;
pub mod ip_format;
pub mod topology;

/// How a target's inputs are structured (for structural mutation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Text,
    Json,
    Yaml,
}

/// One fuzz target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Its name: also the directory of its corpus and regressions.
    pub name: &'static str,
    pub run: fn(&[u8]) -> String,
    pub shape: Shape,
    /// Tokens worth inserting.
    pub dictionary: &'static [&'static [u8]],
}

/// Every target.
pub const TARGETS: &[Target] = &[
    cni::TARGET,
    annotations::TARGET,
    agent_socket::TARGET,
    admission::TARGET,
    topology::TARGET,
    ip_format::TARGET,
];

/// A target by name.
pub fn by_name(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// A result's variant and the first words of its error, as feedback.
pub fn describe<T, E: std::fmt::Display>(label: &str, result: &Result<T, E>) -> String {
    match result {
        Ok(_) => format!("{label}: ok"),
        Err(error) => {
            let text = error.to_string();
            let short: String = text.chars().take(60).collect();
            format!("{label}: {short}")
        }
    }
}
