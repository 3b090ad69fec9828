//! What can go wrong with checkpoints.

use std::path::{Path, PathBuf};

use crate::state::StateError;

/// An error of checkpointing or restoring.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A file of the state directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint record is damaged.
    #[error("checkpoint {path} is damaged: {problem}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The state directory belongs to another job.
    #[error("state directory {dir} belongs to job '{owner}', not to '{job}'; give this job its own state directory, or delete that one if its state is no longer wanted")]
    Foreign {
        /// The directory.
        dir: PathBuf,
        /// The job it belongs to.
        owner: String,
        /// The job that tried to use it.
        job: String,
    },
    /// The checkpoint asked for does not exist.
    #[error("state directory {dir} has no checkpoint {epoch}; `omstream checkpoints list` shows the ones there are")]
    NoSuchCheckpoint {
        /// The directory.
        dir: PathBuf,
        /// The epoch asked for.
        epoch: u64,
    },
    /// The job graph changed so that the checkpoint no longer fits it.
    #[error("checkpoint {epoch} does not fit the job: {problem}; keep the operator names and inputs of stateful operators and sources, or start fresh (RestoreMode::Fresh, `--fresh`) to drop the state")]
    GraphChanged {
        /// The checkpoint.
        epoch: u64,
        /// Which operator and how.
        problem: String,
    },
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A setting is wrong.
    #[error("checkpoint settings: {0}")]
    InvalidConfig(String),
}

impl CheckpointError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
