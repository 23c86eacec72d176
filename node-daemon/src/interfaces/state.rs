//! The executor's memory on disk, under the agent's state directory: what it created and enslaved
//! (so it can revert exactly that), which task generations it rolled back (not retried until the
//! task changes), and the checkpoint of a change in progress (present only while applying: found at
//! start, it means the agent died half way and the change is rolled back).
//!
//! Files are replaced atomically (write a temporary file, sync, rename), so a crash leaves the old
//! or the new version, never half of one.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use super::ownership::Ownership;

/// Reading or writing the state failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// What the executor remembers between runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutorState {
    #[serde(default)]
    pub ownership: Ownership,
    /// Task name -> the generation that was rolled back, and why.
    #[serde(default)]
    pub rolled_back: BTreeMap<String, RolledBack>,
}

/// A task generation this agent rolled back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolledBack {
    pub uid: String,
    pub generation: Option<i64>,
    pub reason: String,
    pub message: String,
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Uses (and creates) `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<StateDir, StateError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(StateDir { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn checkpoint_file(&self) -> PathBuf {
        self.dir.join("checkpoint.json")
    }

    /// The state, empty when there is none yet.
    pub fn load(&self) -> Result<ExecutorState, StateError> {
        Ok(read(&self.state_file())?.unwrap_or_default())
    }

    pub fn save(&self, state: &ExecutorState) -> Result<(), StateError> {
        write(&self.state_file(), state)
    }

    /// The checkpoint of a change in progress, if the agent stopped during one.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, StateError> {
        read(&self.checkpoint_file())
    }

    pub fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StateError> {
        write(&self.checkpoint_file(), checkpoint)
    }

    pub fn clear_checkpoint(&self) -> Result<(), StateError> {
        let path = self.checkpoint_file();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Parse {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| StateError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let temporary = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&temporary).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)?;
    Ok(())
}
