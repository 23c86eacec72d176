//! Fuzzing that runs on stable Rust (see `engine` for why and how): targets in `targets`, their
//! corpora in `tests/fuzz/corpus/<target>/` and every input that ever broke one in
//! `tests/fuzz/regressions/<target>/` (replayed by `cargo test -p spiderpool-fuzz`). tests/README.md
//! ("Fuzzing") says how CI runs it and how to run it longer.

pub mod engine;
pub mod mutate;
pub mod targets;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A directory for what targets must write (the plugin's log, the daemon's socket), private to
/// this process; [`remove_scratch_dir`] deletes it.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("spiderpool-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
}

/// Deletes [`scratch_dir`] (at the end of a run).
pub fn remove_scratch_dir() {
    let _ = std::fs::remove_dir_all(scratch_dir());
}

/// `tests/fuzz` in the source tree.
pub fn fuzz_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The kept corpus of a target.
pub fn corpus_dir(target: &str) -> PathBuf {
    fuzz_root().join("corpus").join(target)
}

/// The inputs that once broke a target.
pub fn regressions_dir(target: &str) -> PathBuf {
    fuzz_root().join("regressions").join(target)
}
