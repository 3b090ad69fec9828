//! Errors of a running job, classified by whose fault they are.

use crate::oms::OmsError;

/// Any error a user function, source or sink returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A job result.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Why a job failed or could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The job graph is not valid; the message says what to change.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// A configuration value is wrong; the message says which and what is allowed.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// An operator, source or sink subtask failed.
    #[error("{task} failed: {source}")]
    Task {
        /// The failing subtask, as `name[index/parallelism]`.
        task: String,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// A subtask panicked.
    #[error("{task} panicked: {message}")]
    Panicked {
        /// The panicking subtask.
        task: String,
        /// The panic message.
        message: String,
    },
    /// The OMS layer failed (a broker, the embedded store).
    #[error(transparent)]
    Oms(#[from] OmsError),
    /// Checkpointing or restoring failed (the message names the file, epoch or operator).
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// The job was cancelled through its handle.
    #[error("the job was cancelled")]
    Cancelled,
    /// A subtask stopped because its neighbour went away: always the consequence of another
    /// error, which is the one reported.
    #[error("{0}: a connected subtask stopped")]
    Disconnected(String),
}

impl RuntimeError {
    /// Wraps a subtask's error with the subtask's name.
    pub(crate) fn task(task: &str, source: impl Into<BoxError>) -> Self {
        RuntimeError::Task {
            task: task.to_string(),
            source: source.into(),
        }
    }

    /// Whether the error is only the echo of another subtask's failure.
    pub(crate) fn is_consequence(&self) -> bool {
        matches!(
            self,
            RuntimeError::Disconnected(_) | RuntimeError::Cancelled
        )
    }
}
