//! The settings of an OMS source, checked once when the job is built.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::dead_letter::DeadLetter;
use super::event_time::EventTimeFrom;
use super::format::Decoder;
use super::metrics::SourceMetrics;
use super::retry::RetryPolicy;
use crate::oms::{MessagingAccessPoint, SeekPosition};
use crate::runtime::{EventTime, RuntimeError, WatermarkStrategy};

/// Where a source starts reading each of its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartPosition {
    /// The oldest message retained.
    Beginning,
    /// After the newest message when the source opens: only messages stored later.
    End,
    /// The first message stored at or after this instant (ms since the epoch).
    Timestamp(EventTime),
    /// The consumer group's committed offset (needs [`OmsSourceConfig::group`]); partitions
    /// the group never committed start at `fallback`.
    Committed {
        /// Where to start a partition without a committed offset.
        fallback: FallbackPosition,
    },
    /// Given offsets per partition id, such as the positions of a checkpoint; partitions not
    /// listed start at `fallback`.
    Offsets {
        /// The next offset to read, per partition id.
        offsets: BTreeMap<i32, i64>,
        /// Where to start a partition not in `offsets`.
        fallback: FallbackPosition,
    },
}

impl StartPosition {
    /// The group's committed offsets, else `fallback`.
    pub fn committed(fallback: FallbackPosition) -> Self {
        StartPosition::Committed { fallback }
    }
}

/// Where to start a partition that has no committed or given offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FallbackPosition {
    /// The oldest message retained.
    Beginning,
    /// After the newest message.
    End,
    /// The first message stored at or after this instant (ms since the epoch).
    Timestamp(EventTime),
}

impl FallbackPosition {
    pub(crate) fn seek(self) -> SeekPosition {
        match self {
            FallbackPosition::Beginning => SeekPosition::Beginning,
            FallbackPosition::End => SeekPosition::End,
            FallbackPosition::Timestamp(t) => SeekPosition::Timestamp(t),
        }
    }
}

/// When a source with a consumer group commits its positions to the group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitPolicy {
    /// When a checkpoint completes, commit the positions snapshotted for it. A job restarted
    /// from the group's offsets then re-reads at most what came after the last checkpoint:
    /// at-least-once.
    OnCheckpoint,
    /// As [`OnCheckpoint`](CommitPolicy::OnCheckpoint), and also when the job ends
    /// successfully: the source's input ended (a bounded source finished, or the job was
    /// stopped) and every subtask then finished without error, so everything read was written
    /// ([`Source::on_job_success`](crate::runtime::Source::on_job_success)). This is what lets
    /// a job without checkpoints resume where it ended (the default). A job that fails commits
    /// nothing at its end: its next run re-reads from the last commit (at-least-once).
    #[default]
    OnCheckpointAndJobEnd,
}

/// How an OMS source reads a queue. Build it, then add it with
/// [`StreamEnv::add_oms_source`](crate::runtime::StreamEnv::add_oms_source).
///
/// Defaults: start at the beginning, JSON bodies, event time from `bornTimestamp`, the default
/// [`WatermarkStrategy`], unbounded, undecodable messages skipped, no consumer group, the job's
/// parallelism and batch size, and the queue's name as the operator's name.
///
/// Each subtask takes its share of the partitions when it opens; partitions added to the queue
/// later are read from the next run on. What a checkpoint records per partition (and what is
/// committed to the group) is the offset after the last message emitted downstream.
pub struct OmsSourceConfig<T> {
    pub(crate) access_point: Arc<dyn MessagingAccessPoint>,
    pub(crate) queue: String,
    pub(crate) name: Option<String>,
    pub(crate) start: StartPosition,
    pub(crate) group: Option<String>,
    pub(crate) commit: Option<CommitPolicy>,
    pub(crate) decoder: Decoder<T>,
    pub(crate) event_time: EventTimeFrom<T>,
    pub(crate) watermarks: WatermarkStrategy,
    pub(crate) bounded: bool,
    pub(crate) dead_letter: DeadLetter,
    pub(crate) batch_size: Option<usize>,
    pub(crate) parallelism: Option<usize>,
    pub(crate) metrics: SourceMetrics,
    pub(crate) max_rate: Option<f64>,
    pub(crate) retry: RetryPolicy,
}

impl<T> Clone for OmsSourceConfig<T> {
    fn clone(&self) -> Self {
        OmsSourceConfig {
            access_point: self.access_point.clone(),
            queue: self.queue.clone(),
            name: self.name.clone(),
            start: self.start.clone(),
            group: self.group.clone(),
            commit: self.commit,
            decoder: self.decoder.clone(),
            event_time: self.event_time.clone(),
            watermarks: self.watermarks,
            bounded: self.bounded,
            dead_letter: self.dead_letter.clone(),
            batch_size: self.batch_size,
            parallelism: self.parallelism,
            metrics: self.metrics.clone(),
            max_rate: self.max_rate,
            retry: self.retry,
        }
    }
}

impl<T> fmt::Debug for OmsSourceConfig<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OmsSourceConfig")
            .field("queue", &self.queue)
            .field("name", &self.name)
            .field("start", &self.start)
            .field("group", &self.group)
            .field("commit", &self.commit)
            .field("decoder", &self.decoder)
            .field("event_time", &self.event_time)
            .field("watermarks", &self.watermarks)
            .field("bounded", &self.bounded)
            .field("dead_letter", &self.dead_letter)
            .field("batch_size", &self.batch_size)
            .field("parallelism", &self.parallelism)
            .field("retry", &self.retry)
            .finish()
    }
}

impl<T: DeserializeOwned + 'static> OmsSourceConfig<T> {
    /// Reads `queue` through `access_point`, decoding bodies as JSON.
    pub fn new(access_point: Arc<dyn MessagingAccessPoint>, queue: impl Into<String>) -> Self {
        Self::with_decoder(access_point, queue, Decoder::json())
    }
}

impl<T> OmsSourceConfig<T> {
    /// Reads `queue` through `access_point` with `decoder` (for records that are not JSON:
    /// [`Decoder::message`], [`Decoder::bytes`], [`Decoder::utf8`], [`Decoder::new`]).
    pub fn with_decoder(
        access_point: Arc<dyn MessagingAccessPoint>,
        queue: impl Into<String>,
        decoder: Decoder<T>,
    ) -> Self {
        OmsSourceConfig {
            access_point,
            queue: queue.into(),
            name: None,
            start: StartPosition::Beginning,
            group: None,
            commit: None,
            decoder,
            event_time: EventTimeFrom::default(),
            watermarks: WatermarkStrategy::default(),
            bounded: false,
            dead_letter: DeadLetter::default(),
            batch_size: None,
            parallelism: None,
            metrics: SourceMetrics::default(),
            max_rate: None,
            retry: RetryPolicy::default(),
        }
    }

    /// Reads at most `records_per_second` over all subtasks (each takes its share): for a
    /// backfill that must not crowd out live jobs, or to pace a test. The source waits
    /// between batches without blocking its thread. Must be positive.
    pub fn max_rate(mut self, records_per_second: f64) -> Self {
        self.max_rate = Some(records_per_second);
        self
    }

    /// The operator's name in the job (default: the queue's name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Where to start reading (default: [`StartPosition::Beginning`]).
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// The consumer group (the `CONSUMER_ID` attribute): its committed offsets are what
    /// [`StartPosition::Committed`] reads, and the source commits its positions to it as
    /// [`commit`](Self::commit) says.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// When to commit positions to the group (default with a group:
    /// [`CommitPolicy::OnCheckpointAndJobEnd`]). Needs [`group`](Self::group).
    pub fn commit(mut self, policy: CommitPolicy) -> Self {
        self.commit = Some(policy);
        self
    }

    /// How bodies become records.
    pub fn decoder(mut self, decoder: Decoder<T>) -> Self {
        self.decoder = decoder;
        self
    }

    /// Where event time comes from (default: [`EventTimeFrom::BornTimestamp`]).
    pub fn event_time(mut self, event_time: EventTimeFrom<T>) -> Self {
        self.event_time = event_time;
        self
    }

    /// How watermarks follow event time, per partition.
    pub fn watermarks(mut self, strategy: WatermarkStrategy) -> Self {
        self.watermarks = strategy;
        self
    }

    /// With `true`, the source reads each partition up to the end offset it had when the
    /// source opened, then finishes (the job ends once everything is flushed). With `false`
    /// (the default) it follows the queue until the job is stopped.
    pub fn bounded(mut self, bounded: bool) -> Self {
        self.bounded = bounded;
        self
    }

    /// What to do with messages the decoder refuses (default: [`DeadLetter::Skip`]).
    pub fn dead_letter(mut self, dead_letter: DeadLetter) -> Self {
        self.dead_letter = dead_letter;
        self
    }

    /// The most messages read into one batch (default: the job's `batch_size`).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = Some(batch_size);
        self
    }

    /// The number of source subtasks (default: the job's parallelism). Subtask `i` reads the
    /// partitions at positions `p` with `p % parallelism == i` in the list sorted by id; a
    /// subtask left without partitions is idle (or finishes at once when bounded).
    pub fn parallelism(mut self, parallelism: usize) -> Self {
        self.parallelism = Some(parallelism);
        self
    }

    /// How calls that fail because the messaging service is out of reach are retried
    /// (default: [`RetryPolicy::default`], backoff up to 5 s, giving up after 5 minutes).
    /// While it retries, the source pauses where it was; [`RetryPolicy::never`] fails the job
    /// at the first such error instead.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// A handle on the source's counters, to read while or after the job runs.
    pub fn metrics(&self) -> SourceMetrics {
        self.metrics.clone()
    }

    /// The operator's name: the one set, else the queue's.
    pub(crate) fn operator_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.queue)
    }

    /// The commit policy in force, `None` without a group.
    pub(crate) fn commit_policy(&self) -> Option<CommitPolicy> {
        self.group.as_ref().map(|_| self.commit.unwrap_or_default())
    }

    /// Checks every setting; the error says which one is wrong and what to change.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let invalid = |message: String| Err(RuntimeError::InvalidConfig(message));
        let queue = &self.queue;
        if queue.trim().is_empty() {
            return invalid("an OMS source needs a queue name".to_string());
        }
        if self.group.as_deref().is_some_and(|g| g.trim().is_empty()) {
            return invalid(format!(
                "the consumer group of the source of '{queue}' is empty; give a name or leave it unset"
            ));
        }
        if let Err(message) = self.retry.validate(&format!("the source of '{queue}'")) {
            return invalid(message);
        }
        if let Some(rate) = self.max_rate {
            if !(rate.is_finite() && rate > 0.0) {
                return invalid(format!(
                    "the max_rate of the source of '{queue}' is {rate}; give a positive number of records per second"
                ));
            }
        }
        if self.group.is_none() {
            if matches!(self.start, StartPosition::Committed { .. }) {
                return invalid(format!(
                    "the source of '{queue}' starts at the committed offsets but has no consumer group: \
                     set .group(\"<name>\") or start elsewhere"
                ));
            }
            if self.commit.is_some() {
                return invalid(format!(
                    "the source of '{queue}' has a commit policy but no consumer group to commit to: \
                     set .group(\"<name>\") or drop .commit(..)"
                ));
            }
        }
        match &self.start {
            StartPosition::Timestamp(t) if *t < 0 => {
                return invalid(format!(
                    "the source of '{queue}' starts at timestamp {t}; give milliseconds since the epoch (0 or more)"
                ));
            }
            StartPosition::Offsets { offsets, .. } => {
                if let Some((partition, offset)) = offsets.iter().find(|(_, o)| **o < 0) {
                    return invalid(format!(
                        "the source of '{queue}' starts partition {partition} at offset {offset}; offsets are 0 or more"
                    ));
                }
            }
            _ => {}
        }
        if let DeadLetter::Queue(dlq) = &self.dead_letter {
            if dlq.trim().is_empty() {
                return invalid(format!(
                    "the dead-letter queue of the source of '{queue}' has no name; name one (such as '{queue}.dlq') or use DeadLetter::Skip"
                ));
            }
            if dlq == queue {
                return invalid(format!(
                    "the source of '{queue}' would send its dead letters to the queue it reads; use another queue, such as '{queue}.dlq'"
                ));
            }
        }
        if self.batch_size == Some(0) {
            return invalid(format!(
                "the batch size of the source of '{queue}' is 0; it must be at least 1 message"
            ));
        }
        self.watermarks.validate()
    }
}
