//! What can go wrong with durable state.

use std::path::{Path, PathBuf};

/// An error of the durable state store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The state database could not be read or written.
    #[error("state store {path}: {source}; check that the directory is writable, on a local disk, and not used by another running job")]
    Store {
        /// The database's path.
        path: PathBuf,
        /// What sled reported.
        #[source]
        source: sled::Error,
    },
    /// A run file of the state store could not be created, written, read or removed.
    #[error("state run file {path}: {source}; check that the state directory is writable, on a local disk, and has free space")]
    RunFile {
        /// The file's path.
        path: PathBuf,
        /// What the file system reported.
        #[source]
        source: std::io::Error,
    },
    /// Another running job (in this process or another) has the state database open.
    #[error("state store {path} is in use by another running job; stop that job, or give this one its own state directory (CheckpointConfig::new)")]
    InUse {
        /// The database's path.
        path: PathBuf,
    },
    /// A write handed to the store's writer thread failed: changes since the last complete
    /// checkpoint may be lost, so the job must restart from it.
    #[error("state store {path}: a background write failed ({message}); the job restarts from its last complete checkpoint")]
    WriteFailed {
        /// The database's path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Something in the state directory is not what omstream wrote.
    #[error("state store {path}: {what}")]
    Corrupt {
        /// The database's path.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A value could not be encoded or decoded.
    #[error("state '{state}': cannot {action} a value ({message}); a job restored from a checkpoint must keep the types of its state")]
    Codec {
        /// The state's name.
        state: String,
        /// `encode` or `decode`.
        action: &'static str,
        /// What the codec said.
        message: String,
    },
    /// The state lives only in memory and cannot be checkpointed.
    #[error("state '{state}' is on the heap backend, which is not checkpointed; jobs with checkpoints keep their state in sled (JobConfig::with_checkpoints)")]
    NotDurable {
        /// The state's name.
        state: String,
    },
}

impl StateError {
    pub(crate) fn store(path: &Path, source: sled::Error) -> Self {
        StateError::Store {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn run_file(path: &Path, source: std::io::Error) -> Self {
        StateError::RunFile {
            path: path.to_path_buf(),
            source,
        }
    }
}
