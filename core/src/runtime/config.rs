//! A job's settings, checked once when the job starts.

use super::error::RuntimeError;
use super::partition::KEY_GROUPS;
use crate::checkpoint::CheckpointConfig;
use crate::state::StateBackend;

/// Settings of one job.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobConfig {
    /// The job's name, in logs and errors.
    pub name: String,
    /// The parallelism of operators that do not set their own (default: 1).
    pub parallelism: usize,
    /// How many batches an edge's channel holds before the sender waits (backpressure).
    pub channel_capacity: usize,
    /// How many records a built-in source puts in one batch.
    pub batch_size: usize,
    /// Where keyed state lives (a job with checkpoints always keeps it durable, in sled).
    pub state_backend: StateBackend,
    /// Checkpoints, if the job takes them: then it survives a crash with exactly-once state.
    pub checkpoints: Option<CheckpointConfig>,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            name: "omstream-job".to_string(),
            parallelism: 1,
            channel_capacity: 16,
            batch_size: 1024,
            state_backend: StateBackend::default(),
            checkpoints: None,
        }
    }
}

impl JobConfig {
    /// The defaults with a name.
    pub fn named(name: impl Into<String>) -> Self {
        JobConfig {
            name: name.into(),
            ..Self::default()
        }
    }

    /// The same settings with another default parallelism.
    pub fn with_parallelism(mut self, parallelism: usize) -> Self {
        self.parallelism = parallelism;
        self
    }

    /// The same settings with another source batch size.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// The same settings with another channel capacity (in batches).
    pub fn with_channel_capacity(mut self, channel_capacity: usize) -> Self {
        self.channel_capacity = channel_capacity;
        self
    }

    /// The same settings with checkpoints.
    pub fn with_checkpoints(mut self, checkpoints: CheckpointConfig) -> Self {
        self.checkpoints = Some(checkpoints);
        self
    }

    /// Checks every value; the error says which one is wrong and what is allowed.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        validate_parallelism(&self.name, self.parallelism)?;
        if self.channel_capacity == 0 {
            return Err(RuntimeError::InvalidConfig(
                "channel_capacity must be at least 1 batch".to_string(),
            ));
        }
        if self.batch_size == 0 {
            return Err(RuntimeError::InvalidConfig(
                "batch_size must be at least 1 record".to_string(),
            ));
        }
        Ok(())
    }
}

/// A parallelism is between 1 and the number of key groups.
pub(crate) fn validate_parallelism(what: &str, parallelism: usize) -> Result<(), RuntimeError> {
    if parallelism == 0 || parallelism > KEY_GROUPS as usize {
        return Err(RuntimeError::InvalidConfig(format!(
            "parallelism of '{what}' is {parallelism}; it must be between 1 and {KEY_GROUPS}"
        )));
    }
    Ok(())
}
