//! Counters of an OMS source, shared by its subtasks and readable while the job runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
struct Counters {
    records: AtomicU64,
    dead_lettered: AtomicU64,
    skipped: AtomicU64,
}

/// What an OMS source did, summed over its subtasks. Clone the handle from the config
/// ([`OmsSourceConfig::metrics`](super::OmsSourceConfig::metrics)) before building the job.
#[derive(Debug, Clone, Default)]
pub struct SourceMetrics {
    counters: Arc<Counters>,
}

impl SourceMetrics {
    /// Records decoded and emitted.
    pub fn records(&self) -> u64 {
        self.counters.records.load(Ordering::Relaxed)
    }

    /// Undecodable messages sent to the dead-letter queue.
    pub fn dead_lettered(&self) -> u64 {
        self.counters.dead_lettered.load(Ordering::Relaxed)
    }

    /// Undecodable messages skipped (no dead-letter queue configured).
    pub fn skipped(&self) -> u64 {
        self.counters.skipped.load(Ordering::Relaxed)
    }

    pub(crate) fn add_records(&self, n: usize) {
        self.counters.records.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_dead_lettered(&self, n: usize) {
        self.counters
            .dead_lettered
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_skipped(&self, n: usize) {
        self.counters.skipped.fetch_add(n as u64, Ordering::Relaxed);
    }
}
