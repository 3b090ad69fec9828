//! Checkpoints: aligned barriers, records tied to queue offsets, and recovery.
//!
//! A job with checkpoints ([`JobConfig::with_checkpoints`](crate::runtime::JobConfig)) keeps
//! its keyed state on disk under a state directory (run files and a sled manifest, see
//! [`StateStore`](crate::state::StateStore)), and a coordinator takes a checkpoint every
//! [`CheckpointConfig::interval`] (and on demand, [`JobHandle::checkpoint`]):
//!
//! 1. it triggers epoch `n` at every source subtask;
//! 2. each source records the next offset of every partition it reads and emits `Barrier(n)`;
//! 3. operators with several inputs align the barrier, then every stateful operator writes
//!    what its state changed since `n - 1` (handed to the state store's writer as runs of
//!    epoch `n`, see [`StateStore`](crate::state::StateStore)), and forwards it;
//! 4. sinks pre-commit (an exactly-once sink prepares its transaction for epoch `n`; an
//!    idempotent one puts the epoch's messages into its keyed state, snapshotted as in 3);
//! 5. when every subtask has acknowledged `n`, the state store is flushed (which waits for
//!    its writer) and the checkpoint
//!    record (epoch, source offsets, job graph fingerprint, sizes, timings) is written
//!    atomically with a checksum; only then are sinks told to commit and sources to commit
//!    their offsets to the consumer group. The last [`CheckpointConfig::retained`] records
//!    are kept.
//!
//! On start, a job restores the latest usable checkpoint (a damaged newest record is skipped
//! with a warning): its state as of that epoch, every source partition at its recorded offset,
//! and the transactions of exactly-once sinks finished (committed up to that epoch, aborted
//! after). Key groups and partitions are redistributed when the parallelism changed.
//!
//! [`JobHandle::checkpoint`]: crate::runtime::JobHandle::checkpoint

mod coordinator;
mod error;
mod record;
mod restore;
mod store;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub(crate) use coordinator::{CheckpointRequest, Coordinator, Observer, Participant, Wiring};
pub use error::CheckpointError;
pub use record::{CheckpointRecord, JobFingerprint, NodeFingerprint, SourceOffset};
pub(crate) use restore::prepare_run;
pub use store::{CheckpointStore, DamagedCheckpoint};

/// Which checkpoint a job starts from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RestoreMode {
    /// The latest usable checkpoint, if there is one (the default).
    #[default]
    Latest,
    /// This epoch's checkpoint (it must exist and be usable).
    Epoch(u64),
    /// None: the state directory's checkpoints and state are deleted first.
    Fresh,
}

/// How a job takes checkpoints.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CheckpointConfig {
    /// The job's state directory (state store and checkpoint records).
    pub dir: PathBuf,
    /// Time between checkpoints; `None` takes them only on demand (default: 1 second).
    pub interval: Option<Duration>,
    /// How many complete checkpoints to keep (default: 3; at least 1).
    pub retained: usize,
    /// Which checkpoint to start from.
    pub restore: RestoreMode,
    /// Most entries each keyed state keeps in memory before it writes its changes to disk
    /// and empties its cache (default: 1,000,000).
    pub cache_capacity: usize,
}

impl CheckpointConfig {
    /// Checkpoints every second in `dir`, restoring the latest one on start.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CheckpointConfig {
            dir: dir.into(),
            interval: Some(Duration::from_secs(1)),
            retained: 3,
            restore: RestoreMode::Latest,
            cache_capacity: 1_000_000,
        }
    }

    /// The same with another interval (`None`: only on demand).
    pub fn with_interval(mut self, interval: Option<Duration>) -> Self {
        self.interval = interval;
        self
    }

    /// The same keeping `retained` checkpoints.
    pub fn with_retained(mut self, retained: usize) -> Self {
        self.retained = retained;
        self
    }

    /// The same starting from another checkpoint.
    pub fn with_restore(mut self, restore: RestoreMode) -> Self {
        self.restore = restore;
        self
    }

    /// The same with another per-state cache capacity.
    pub fn with_cache_capacity(mut self, entries: usize) -> Self {
        self.cache_capacity = entries;
        self
    }

    /// Checks every value; the error says which one is wrong.
    pub fn validate(&self) -> Result<(), CheckpointError> {
        if self.retained == 0 {
            return Err(CheckpointError::InvalidConfig(
                "retained must be at least 1 checkpoint".to_string(),
            ));
        }
        if self.interval.is_some_and(|i| i < Duration::from_millis(10)) {
            return Err(CheckpointError::InvalidConfig(format!(
                "interval {:?} is too short; use at least 10 ms (1 s is the default)",
                self.interval.unwrap_or_default()
            )));
        }
        if self.cache_capacity == 0 {
            return Err(CheckpointError::InvalidConfig(
                "cache_capacity must be at least 1 entry".to_string(),
            ));
        }
        Ok(())
    }
}
