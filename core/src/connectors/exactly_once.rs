//! Exactly-once OMS sinks: a two-phase commit of batch transactions, one phase per checkpoint.
//!
//! Turned on with [`OmsSinkConfig::exactly_once`](super::OmsSinkConfig::exactly_once) in a job
//! with checkpoints. Each sink subtask:
//! 1. **writes** the records of the epoch in progress as prepared (invisible) messages, in
//!    batch transactions ([`Producer::prepare_batch`](crate::oms::Producer::prepare_batch))
//!    of at most [`transaction_size`](super::OmsSinkConfig::transaction_size) records, so its
//!    memory stays bounded however long an epoch is;
//! 2. **pre-commits** at the checkpoint barrier of epoch `n`: the last records are prepared,
//!    and the epoch's transactions are kept until its checkpoint completes;
//! 3. **commits** every transaction of epochs `<= n` once checkpoint `n` is complete (its
//!    record is durable), oldest first, so a consumer sees the records in the order the sink
//!    got them (per partition), each once.
//!
//! Every prepared message carries three properties: [`TXN_JOB`] (the job's name), [`TXN_SINK`]
//! (the sink operator's name) and [`TXN_EPOCH`] (the epoch it belongs to: the run's first
//! epoch, [`SubtaskInfo::first_epoch`], before the first barrier, then one more than the last
//! barrier; a run's epochs are consecutive, so this is the number of the barrier that will
//! close it).
//!
//! **Recovery.** When subtask 0 opens (whatever the parallelism, which a restore may have
//! changed), it resolves the transactions of this job and sink that an earlier run left open.
//! With `E` the checkpoint the run was restored from (0 for a fresh start):
//! - an epoch of the restored lineage ([`SubtaskInfo::epoch_is_restored`]: at or below `E`
//!   and not started by a run that crashed before completing it): its checkpoint completed,
//!   but the commit may not have happened before the crash: **committed**;
//! - any other epoch (above `E`, or abandoned by a crashed run even if below `E`): not covered
//!   by the restored state, so its records will be written again: **rolled back**.
//!
//! That is on drivers whose check listeners are asked when a transactional producer starts
//! ([`TransactionChecks::OnProducerStart`], the embedded driver). Where the broker asks live
//! producers while the job runs ([`TransactionChecks::WhileRunning`], RocketMQ), the writing
//! producers decide instead, by the same rule for earlier runs' epochs, in a producer group of
//! their job and sink alone (see `exactly_once/live.rs`); the broker then keeps asking until they have.
//!
//! Transactions
//! of other jobs and sinks are left alone: the check listener answers
//! [`Unknown`](crate::oms::TransactionState::Unknown), which keeps them open and invisible.
//! The resolution is verified (a second pass must find nothing of this sink left), and the
//! sink refuses to open when it cannot be, rather than resolve it wrongly later. The
//! writing producers answer `Unknown` too: only an open with a known restored checkpoint
//! decides, so a subtask that fails mid-run never has its transactions rolled back (or
//! committed) behind the checkpoint protocol's back.
//!
//! Records that reach [`finish`](crate::runtime::Sink::finish) without a completed checkpoint
//! (which the runtime avoids by taking a final checkpoint at the end of input) are committed
//! with a warning: the job ended successfully, so they are its output.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

mod live;

use super::error::{ConnectorError, QueueRole};
use super::retry::Retrier;
use super::sink::OmsSinkConfig;
use crate::oms::{
    keyvalue, KeyValue, Message, Producer, ServiceLifecycle, TransactionChecks, TransactionState,
    TransactionStateCheckListener, TransactionalResult,
};
use crate::runtime::{Batch, BoxError, CheckpointBarrier, Data, Sink, SubtaskInfo};
use live::LiveRule;

/// The property naming the job that prepared a message.
pub const TXN_JOB: &str = "omstream.txn.job";
/// The property naming the sink operator that prepared a message.
pub const TXN_SINK: &str = "omstream.txn.sink";
/// The property holding the epoch a prepared message belongs to (the lowest the closing
/// checkpoint can have; see the [module docs](self)).
pub const TXN_EPOCH: &str = "omstream.txn.epoch";

/// Once the bodies held by a subtask reach this many bytes, they are prepared.
const MAX_PENDING_BYTES: usize = 16 << 20;
/// How many times an open resolves leftover transactions before it gives up.
const RESOLVE_PASSES: usize = 3;

/// What a consumer of a sink's queue can rely on.
///
/// Parsed from and shown as `at-least-once`, `exactly-once` and `idempotent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum DeliveryGuarantee {
    /// Every record is written, but a job restored from a checkpoint may write the records
    /// after it again: consumers may see duplicates. Records are visible as soon as written.
    #[default]
    AtLeastOnce,
    /// Every record is visible exactly once, after the checkpoint that covers it completes.
    /// Needs a job with checkpoints and a driver with transactions.
    ExactlyOnce,
    /// Every record is sent after the checkpoint that covers it completes, with a
    /// deterministic id in property [`IDEMPOTENT_ID`](super::idempotent::IDEMPOTENT_ID); a
    /// copy sent again after a crash is byte-identical and carries the same id. Exactly-once
    /// for consumers that drop messages whose id they have seen; at-least-once otherwise.
    /// Needs a job with checkpoints; any driver (see [`idempotent`](super::idempotent)).
    Idempotent,
}

impl fmt::Display for DeliveryGuarantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeliveryGuarantee::AtLeastOnce => "at-least-once",
            DeliveryGuarantee::ExactlyOnce => "exactly-once",
            DeliveryGuarantee::Idempotent => "idempotent",
        })
    }
}

impl FromStr for DeliveryGuarantee {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "at-least-once" => Ok(DeliveryGuarantee::AtLeastOnce),
            "exactly-once" => Ok(DeliveryGuarantee::ExactlyOnce),
            "idempotent" => Ok(DeliveryGuarantee::Idempotent),
            _ => Err(format!(
                "unknown delivery guarantee '{s}'; use 'at-least-once', 'exactly-once' or 'idempotent'"
            )),
        }
    }
}

/// Why an exactly-once sink cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExactlyOnceError {
    /// The job takes no checkpoints, so nothing would ever be committed.
    #[error(
        "the OMS sink '{sink}' is exactly-once, and exactly-once needs checkpoints: \
         JobConfig::with_checkpoints(...); or make the sink at-least-once"
    )]
    NeedsCheckpoints {
        /// The sink operator.
        sink: String,
    },
    /// Transactions an earlier run left open could not all be resolved (the log says why).
    #[error(
        "the OMS sink '{sink}' of job '{job}' cannot resolve {count} transaction(s) an earlier \
         run left open (see the warnings logged before); the sink does not start until they are, \
         so that none is committed or rolled back wrongly"
    )]
    Unresolved {
        /// The sink operator.
        sink: String,
        /// The job.
        job: String,
        /// How many were still open after the last attempt.
        count: usize,
    },
}

/// Decides this job and sink's leftover transactions by the recovery rule; `Unknown` for
/// everything else.
struct EpochRule {
    job: String,
    sink: String,
    /// The run's subtask: which epochs its restored state covers.
    lineage: SubtaskInfo,
    committed: AtomicUsize,
    rolled_back: AtomicUsize,
}

impl TransactionStateCheckListener for EpochRule {
    fn check(&self, message: &Message) -> TransactionState {
        let Some(epoch) = own_epoch(message, &self.job, &self.sink) else {
            return TransactionState::Unknown;
        };
        let decision = recovery_decision(&self.lineage, epoch);
        match decision {
            TransactionState::Commit => self.committed.fetch_add(1, Ordering::Relaxed),
            _ => self.rolled_back.fetch_add(1, Ordering::Relaxed),
        };
        decision
    }
}

/// The epoch `message`'s transaction was prepared in, if sink `sink` of job `job` prepared it;
/// `None` for anyone else's (another job's or sink's, or not a sink's at all), which is not
/// this sink's to decide. One of the sink's own whose epoch cannot be read is left open, with
/// a warning.
fn own_epoch(message: &Message, job: &str, sink: &str) -> Option<u64> {
    let props = &message.properties;
    if props.get_str(TXN_JOB) != Some(job) || props.get_str(TXN_SINK) != Some(sink) {
        return None;
    }
    let epoch = props.get_str(TXN_EPOCH).and_then(|e| e.parse::<u64>().ok());
    if epoch.is_none() {
        tracing::warn!(
            job,
            sink,
            transaction = message
                .extension_header
                .transaction_id
                .as_deref()
                .unwrap_or(""),
            "a transaction of this sink has no readable {TXN_EPOCH} property; it is left open"
        );
    }
    epoch
}

/// The recovery rule for a transaction of an earlier run: committed if its epoch is part of
/// the lineage the run restored (its checkpoint completed, and no later restore abandoned
/// it), rolled back otherwise.
fn recovery_decision(lineage: &SubtaskInfo, epoch: u64) -> TransactionState {
    if lineage.epoch_is_restored(epoch) {
        TransactionState::Commit
    } else {
        TransactionState::Rollback
    }
}

/// The listener of the writing producers: they never decide (see the module docs).
struct Undecided;

impl TransactionStateCheckListener for Undecided {
    fn check(&self, _: &Message) -> TransactionState {
        TransactionState::Unknown
    }
}

/// One subtask of an exactly-once OMS sink.
pub(crate) struct ExactlyOnceSink<T> {
    config: Arc<OmsSinkConfig<T>>,
    /// An empty message to the queue: cloning it shares the queue name instead of copying it.
    template: Message,
    producer: Option<Producer>,
    /// `name[index/parallelism]`, for logs.
    task: String,
    job: String,
    sink: String,
    /// The epoch the records written now belong to, as a property value.
    epoch: String,
    /// The same, as a number.
    current_epoch: u64,
    /// Records of the epoch in progress, not prepared yet.
    pending: Vec<Message>,
    pending_bytes: usize,
    /// Transactions of the epoch in progress.
    open: Vec<TransactionalResult>,
    /// Transactions of epochs whose barrier passed, until their checkpoint completes.
    prepared: BTreeMap<u64, Vec<TransactionalResult>>,
    retrier: Retrier,
    /// The writing producer's listener, on drivers that check back while the job runs.
    live: Option<Arc<LiveRule>>,
    /// Whether this run was restored from a checkpoint (earlier runs may have left
    /// transactions open).
    restored: bool,
}

impl<T> ExactlyOnceSink<T> {
    pub(crate) fn new(config: Arc<OmsSinkConfig<T>>) -> Self {
        let retrier = Retrier::new(
            config.retry_policy(),
            format!("sink of queue '{}'", config.queue()),
        );
        ExactlyOnceSink {
            retrier,
            template: Message::new(config.queue(), bytes::Bytes::new()),
            config,
            producer: None,
            task: String::new(),
            job: String::new(),
            sink: String::new(),
            epoch: String::new(),
            current_epoch: 0,
            pending: Vec::new(),
            pending_bytes: 0,
            open: Vec::new(),
            prepared: BTreeMap::new(),
            live: None,
            restored: false,
        }
    }

    /// Commits or rolls back what earlier runs of this job left open for this sink.
    async fn resolve_leftovers(&self, lineage: &SubtaskInfo) -> Result<(), BoxError> {
        let restored = lineage.restored_epoch.unwrap_or(0);
        let mut left = 0;
        for pass in 1..=RESOLVE_PASSES {
            let rule = Arc::new(EpochRule {
                job: self.job.clone(),
                sink: self.sink.clone(),
                lineage: lineage.clone(),
                committed: AtomicUsize::new(0),
                rolled_back: AtomicUsize::new(0),
            });
            // Starting a transactional producer asks its listener about every transaction
            // nobody holds; stopping it ends its periodic checks.
            let resolver = self
                .config
                .access_point()
                .create_transactional_producer(KeyValue::new(), rule.clone())
                .await
                .map_err(self.config.sink_error("create a producer for"))?;
            resolver
                .start()
                .await
                .map_err(self.config.sink_error("resolve the open transactions of"))?;
            resolver
                .stop()
                .await
                .map_err(self.config.sink_error("resolve the open transactions of"))?;
            let committed = rule.committed.load(Ordering::Relaxed);
            let rolled_back = rule.rolled_back.load(Ordering::Relaxed);
            left = committed + rolled_back;
            if left == 0 {
                return Ok(());
            }
            tracing::info!(
                sink = %self.task,
                job = %self.job,
                restored_epoch = restored,
                committed,
                rolled_back,
                pass,
                "resolved transactions an earlier run left open"
            );
        }
        Err(ExactlyOnceError::Unresolved {
            sink: self.sink.clone(),
            job: self.job.clone(),
            count: left,
        }
        .into())
    }

    /// Prepares the held records as one batch transaction of the epoch in progress.
    async fn prepare_pending(&mut self) -> Result<(), BoxError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let producer = self
            .producer
            .as_ref()
            .ok_or("the OMS sink was not opened")?;
        // Taken only once prepared: a retry prepares a new transaction of the same records
        // (a transaction a failed attempt left half prepared is never committed: the broker
        // or the next run's recovery rolls it back).
        let pending = &self.pending;
        let tx = self
            .retrier
            .run("prepare a transaction", || {
                producer.prepare_batch(pending.clone())
            })
            .await
            .map_err(ConnectorError::oms(
                self.config.queue(),
                QueueRole::Sink,
                "prepare a transaction on",
            ))?;
        self.pending.clear();
        self.pending_bytes = 0;
        self.open.push(tx);
        Ok(())
    }

    /// Commits the transactions of every epoch up to `epoch`, oldest first. On a failure the
    /// ones not committed yet are kept (for a retry, or left open for recovery when the sink
    /// is dropped).
    async fn commit_through(&mut self, epoch: u64) -> Result<usize, BoxError> {
        let later = match epoch.checked_add(1) {
            Some(next) => self.prepared.split_off(&next),
            None => BTreeMap::new(),
        };
        let mut due = std::mem::replace(&mut self.prepared, later).into_iter();
        let mut committed = 0;
        while let Some((e, txs)) = due.next() {
            let mut txs = txs.into_iter();
            while let Some(tx) = txs.next() {
                let count = tx.message_count();
                if let Err(err) = tx.commit().await {
                    let rest: Vec<_> = txs.collect();
                    if !rest.is_empty() {
                        self.prepared.insert(e, rest);
                    }
                    self.prepared.extend(due);
                    return Err(ConnectorError::oms(
                        self.config.queue(),
                        QueueRole::Sink,
                        format!("commit the records of epoch {e} to"),
                    )(err)
                    .into());
                }
                committed += count;
            }
        }
        Ok(committed)
    }
}

#[async_trait]
impl<T: Data> Sink<T> for ExactlyOnceSink<T> {
    /// Refuses a job without checkpoints, checks that the queue exists, resolves what earlier
    /// runs left open (subtask 0) and starts a transactional producer.
    async fn open(&mut self, subtask: &SubtaskInfo) -> Result<(), BoxError> {
        self.task = subtask.task_name();
        self.job = subtask.job.clone();
        self.sink = subtask.operator.clone();
        if !subtask.checkpointing {
            return Err(ExactlyOnceError::NeedsCheckpoints {
                sink: subtask.operator.clone(),
            }
            .into());
        }
        tracing::info!(
            sink = %self.task,
            queue = %self.config.queue(),
            guarantee = %DeliveryGuarantee::ExactlyOnce,
            restored_epoch = ?subtask.restored_epoch,
            "opening an OMS sink"
        );
        let config = self.config.clone();
        config.check_queue(&mut self.retrier, &self.task).await?;
        let ap = config.access_point().clone();
        let (attrs, listener): (KeyValue, Arc<dyn TransactionStateCheckListener>) =
            match ap.transaction_checks() {
                TransactionChecks::WhileRunning => {
                    // The broker resolves leftovers by asking the writers: they decide as the
                    // resolver would, in a producer group of this job and sink alone.
                    let live = Arc::new(LiveRule::new(
                        self.job.clone(),
                        self.sink.clone(),
                        subtask.clone(),
                    ));
                    self.live = Some(live.clone());
                    let group = live::producer_group(&self.job, &self.sink);
                    (KeyValue::new().with(keyvalue::PRODUCER_ID, group), live)
                }
                _ => {
                    if subtask.index == 0 {
                        self.resolve_leftovers(subtask).await?;
                    }
                    (KeyValue::new(), Arc::new(Undecided))
                }
            };
        let producer = ap
            .create_transactional_producer(attrs, listener)
            .await
            .map_err(self.config.sink_error("create a producer for"))?;
        self.retrier
            .run("start a producer", || producer.start())
            .await
            .map_err(self.config.sink_error("start a producer for"))?;
        self.producer = Some(producer);
        self.current_epoch = subtask.first_epoch;
        self.epoch = self.current_epoch.to_string();
        self.restored = subtask.restored_epoch.is_some();
        Ok(())
    }

    /// Holds the records, preparing them as a transaction whenever enough are held.
    async fn write_batch(&mut self, batch: Batch<T>) -> Result<(), BoxError> {
        let max = self.config.transaction_records();
        for record in batch {
            let mut message = self.config.message(&self.template, &record.value)?;
            // Last, so that no record property can pass for another job's or epoch's.
            message
                .properties
                .put(TXN_JOB, &self.job)
                .put(TXN_SINK, &self.sink)
                .put(TXN_EPOCH, &self.epoch);
            self.pending_bytes += message.data.len();
            self.pending.push(message);
            if self.pending.len() >= max || self.pending_bytes >= MAX_PENDING_BYTES {
                self.prepare_pending().await?;
            }
        }
        Ok(())
    }

    /// Pre-commit: prepares the records still held and sets the epoch's transactions aside
    /// until its checkpoint completes.
    async fn on_barrier(&mut self, barrier: &CheckpointBarrier) -> Result<(), BoxError> {
        self.prepare_pending().await?;
        if !self.open.is_empty() {
            let txs = std::mem::take(&mut self.open);
            self.prepared.entry(barrier.epoch).or_default().extend(txs);
        }
        self.current_epoch = barrier.epoch + 1;
        self.epoch = self.current_epoch.to_string();
        Ok(())
    }

    /// Commit: every transaction of epochs up to `epoch` becomes visible.
    async fn on_checkpoint_complete(&mut self, epoch: u64) -> Result<(), BoxError> {
        let committed = self.commit_through(epoch).await?;
        if let Some(live) = &self.live {
            live.completed(epoch);
        }
        tracing::debug!(sink = %self.task, epoch, records = committed, "committed");
        Ok(())
    }

    /// Commits what no completed checkpoint covered (normally nothing), then stops the
    /// producer.
    async fn finish(&mut self) -> Result<(), BoxError> {
        self.prepare_pending().await?;
        if !self.open.is_empty() {
            let txs = std::mem::take(&mut self.open);
            self.prepared
                .entry(self.current_epoch)
                .or_default()
                .extend(txs);
        }
        if !self.prepared.is_empty() {
            let committed = self.commit_through(u64::MAX).await?;
            tracing::warn!(
                sink = %self.task,
                records = committed,
                "the input ended with records no completed checkpoint covers; the job succeeded, \
                 so they were committed (a restore from an earlier checkpoint would write them again)"
            );
        }
        if self.live.is_some() && self.restored {
            // An earlier run may have left transactions open that only a live writer can
            // decide, when the broker asks (see `live`).
            let wait = self.config.leftover_wait_time();
            tracing::info!(
                sink = %self.task,
                wait = ?wait,
                "keeping the writers up for the broker's check-backs of transactions an earlier run left open"
            );
            tokio::time::sleep(wait).await;
        }
        Ok(self.config.stop_producer(self.producer.take()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(job: &str, sink: &str, epoch: &str) -> Message {
        Message::new("q", "x")
            .with_property(TXN_JOB, job)
            .with_property(TXN_SINK, sink)
            .with_property(TXN_EPOCH, epoch)
    }

    #[test]
    fn the_rule_commits_up_to_the_restored_epoch_and_leaves_others_alone() {
        let mut lineage = SubtaskInfo::new("s", 0, 1);
        lineage.restored_epoch = Some(5);
        lineage.aborted_epochs = vec![(2, 3)];
        let rule = EpochRule {
            job: "j".into(),
            sink: "s".into(),
            lineage,
            committed: AtomicUsize::new(0),
            rolled_back: AtomicUsize::new(0),
        };
        assert_eq!(
            rule.check(&prepared("j", "s", "5")),
            TransactionState::Commit
        );
        assert_eq!(
            rule.check(&prepared("j", "s", "1")),
            TransactionState::Commit
        );
        assert_eq!(
            rule.check(&prepared("j", "s", "6")),
            TransactionState::Rollback
        );
        assert_eq!(
            rule.check(&prepared("j", "s", "3")),
            TransactionState::Rollback,
            "an epoch a crashed run abandoned, although below the restored one"
        );
        assert_eq!(
            rule.check(&prepared("j", "other", "1")),
            TransactionState::Unknown
        );
        assert_eq!(
            rule.check(&prepared("other", "s", "1")),
            TransactionState::Unknown
        );
        assert_eq!(
            rule.check(&prepared("j", "s", "x")),
            TransactionState::Unknown
        );
        assert_eq!(
            rule.check(&Message::new("q", "plain")),
            TransactionState::Unknown
        );
        assert_eq!(rule.committed.load(Ordering::Relaxed), 2);
        assert_eq!(rule.rolled_back.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn guarantees_parse_and_print() {
        for (g, text) in [
            (DeliveryGuarantee::AtLeastOnce, "at-least-once"),
            (DeliveryGuarantee::ExactlyOnce, "exactly-once"),
            (DeliveryGuarantee::Idempotent, "idempotent"),
        ] {
            assert_eq!(g.to_string(), text);
            assert_eq!(text.parse::<DeliveryGuarantee>(), Ok(g));
        }
        assert_eq!("EXACTLY_ONCE".parse(), Ok(DeliveryGuarantee::ExactlyOnce));
        assert_eq!(" Idempotent ".parse(), Ok(DeliveryGuarantee::Idempotent));
        assert_eq!(
            "twice".parse::<DeliveryGuarantee>().unwrap_err(),
            "unknown delivery guarantee 'twice'; use 'at-least-once', 'exactly-once' or 'idempotent'"
        );
    }
}
