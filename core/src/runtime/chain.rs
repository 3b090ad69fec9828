//! A subtask's pipeline: operators fused into one task call each other directly; the last link
//! hands batches to channels (with a partitioner), to a sink, or to several of these.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::element::{Batch, EventTime, StreamElement};
use super::error::{Result, RuntimeError};
use super::operator::{Operator, OperatorContext};
use super::partition::{key_group, subtask_for_key_group, Partitioning};
use crate::checkpoint::Participant;
use crate::state::SnapshotStats;

/// The receiving end of one fused stage of a subtask.
#[async_trait]
pub(crate) trait Chain<T>: Send {
    /// Calls the start hooks, downstream first.
    async fn start(&mut self) -> Result<()>;
    /// Handles one element and passes on what results.
    async fn push(&mut self, element: StreamElement<T>) -> Result<()>;
    /// The earliest processing time any link asked to be woken at.
    fn next_wakeup(&self) -> Option<EventTime>;
    /// Processing time reached `now`: wake every link that asked for it.
    async fn on_processing_time(&mut self, now: EventTime) -> Result<()>;
    /// The checkpoint of `epoch` is complete: tell every link of this task.
    async fn checkpoint_complete(&mut self, epoch: u64) -> Result<()> {
        let _ = epoch;
        Ok(())
    }
}

/// Records in and out of one operator, summed over its subtasks.
#[derive(Debug, Default)]
pub struct OperatorMetrics {
    /// Records that reached the operator.
    pub records_in: AtomicU64,
    /// Records it emitted.
    pub records_out: AtomicU64,
}

impl OperatorMetrics {
    pub(crate) fn count_in(&self, n: usize) {
        self.records_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_out(&self, n: usize) {
        self.records_out.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// An operator subtask and what follows it.
pub(crate) struct OperatorLink<I, O> {
    operator: Box<dyn Operator<I, O>>,
    ctx: OperatorContext<O>,
    next: Box<dyn Chain<O>>,
    task: String,
    metrics: Arc<OperatorMetrics>,
    generates_watermarks: bool,
    /// The last watermark sent on by an operator that generates its own.
    generated_watermark: EventTime,
    /// This subtask's part in checkpoints, when the job takes them.
    participant: Option<Participant>,
}

impl<I: 'static, O: 'static> OperatorLink<I, O> {
    pub(crate) fn new(
        operator: Box<dyn Operator<I, O>>,
        ctx: OperatorContext<O>,
        next: Box<dyn Chain<O>>,
        metrics: Arc<OperatorMetrics>,
        participant: Option<Participant>,
    ) -> Self {
        let task = ctx.subtask().task_name();
        OperatorLink {
            participant,
            generates_watermarks: operator.generates_watermarks(),
            generated_watermark: super::element::MIN_WATERMARK,
            operator,
            ctx,
            next,
            task,
            metrics,
        }
    }

    fn fail(&self, error: super::error::BoxError) -> RuntimeError {
        RuntimeError::task(&self.task, error)
    }

    /// Runs an operator hook; a panic in it is reported with the operator's name rather than
    /// the name of whichever task the operator was fused into.
    fn guarded(
        &mut self,
        hook: impl FnOnce(
            &mut dyn Operator<I, O>,
            &mut OperatorContext<O>,
        ) -> super::operator::OperatorResult,
    ) -> Result<()> {
        let (operator, ctx) = (&mut self.operator, &mut self.ctx);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            hook(operator.as_mut(), ctx)
        })) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(self.fail(error)),
            Err(panic) => Err(RuntimeError::Panicked {
                task: self.task.clone(),
                message: panic_message(panic.as_ref()),
            }),
        }
    }

    /// Writes what the operator's keyed state changed as part of checkpoint `epoch`.
    fn snapshot_state(&mut self, epoch: u64) -> Result<SnapshotStats> {
        let created = self.ctx.created_states();
        let mut stats = SnapshotStats::default();
        self.guarded(|operator, _| {
            stats = snapshot_listed_states("operator", operator.keyed_state(), created, epoch)?;
            Ok(())
        })?;
        Ok(stats)
    }

    /// Sends what the last hook emitted.
    async fn flush(&mut self) -> Result<()> {
        if self.ctx.has_output() {
            for batch in self.ctx.take_output() {
                self.metrics.count_out(batch.len());
                self.next.push(StreamElement::Data(batch)).await?;
            }
        }
        if let Some(watermark) = self.ctx.take_emitted_watermark() {
            if self.generates_watermarks && watermark > self.generated_watermark {
                self.generated_watermark = watermark;
                self.next.push(StreamElement::Watermark(watermark)).await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl<I: Send + 'static, O: Send + 'static> Chain<I> for OperatorLink<I, O> {
    async fn start(&mut self) -> Result<()> {
        self.next.start().await?;
        self.guarded(|op, ctx| op.on_start(ctx))?;
        self.flush().await
    }

    async fn push(&mut self, element: StreamElement<I>) -> Result<()> {
        match element {
            StreamElement::Data(batch) => {
                self.metrics.count_in(batch.len());
                self.guarded(|op, ctx| op.process_batch(batch, ctx))?;
                self.flush().await
            }
            StreamElement::Watermark(watermark) => {
                self.ctx.set_watermark(watermark);
                self.guarded(|op, ctx| op.on_watermark(watermark, ctx))?;
                self.flush().await?;
                if self.generates_watermarks && watermark != super::element::MAX_WATERMARK {
                    return Ok(());
                }
                self.next.push(StreamElement::Watermark(watermark)).await
            }
            StreamElement::Idle => self.next.push(StreamElement::Idle).await,
            StreamElement::Barrier(barrier) => {
                self.guarded(|op, ctx| op.on_barrier(&barrier, ctx))?;
                self.flush().await?;
                if self.participant.is_some() {
                    let stats = self.snapshot_state(barrier.epoch)?;
                    if let Some(participant) = &mut self.participant {
                        participant.ack(barrier.epoch, None, stats);
                    }
                }
                self.next.push(StreamElement::Barrier(barrier)).await
            }
            StreamElement::End => {
                self.guarded(|op, ctx| op.on_end(ctx))?;
                self.flush().await?;
                if let Some(epoch) = self.participant.as_ref().map(|p| p.current_epoch) {
                    // What the end of input changed belongs to the job's next checkpoint.
                    let stats = self.snapshot_state(epoch)?;
                    if let Some(participant) = &self.participant {
                        participant.finished(None, stats);
                    }
                }
                self.next.push(StreamElement::End).await
            }
        }
    }

    fn next_wakeup(&self) -> Option<EventTime> {
        match (self.ctx.pending_wakeup(), self.next.next_wakeup()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn on_processing_time(&mut self, now: EventTime) -> Result<()> {
        if self.ctx.take_due_wakeup(now) {
            self.guarded(|op, ctx| op.on_processing_time(now, ctx))?;
            self.flush().await?;
        }
        self.next.on_processing_time(now).await
    }

    async fn checkpoint_complete(&mut self, epoch: u64) -> Result<()> {
        self.guarded(|op, _| op.on_checkpoint_complete(epoch))?;
        self.next.checkpoint_complete(epoch).await
    }
}

/// Several consumers of one output: each gets every element (batches are cloned for all but
/// the last).
pub(crate) struct FanOut<T> {
    pub(crate) outputs: Vec<Box<dyn Chain<T>>>,
}

#[async_trait]
impl<T: Clone + Send + 'static> Chain<T> for FanOut<T> {
    async fn start(&mut self) -> Result<()> {
        for output in &mut self.outputs {
            output.start().await?;
        }
        Ok(())
    }

    async fn push(&mut self, element: StreamElement<T>) -> Result<()> {
        if matches!(element, StreamElement::End) {
            // Every output at once: in a checkpointed job a sink at `End` pre-commits, reports
            // itself finished and then waits for the job's final checkpoint, which needs every
            // other sink of this task to have finished too. One output at a time, the first
            // sink waited for the others forever.
            let ends = self.outputs.iter_mut().map(|o| o.push(StreamElement::End));
            futures::future::try_join_all(ends).await?;
            return Ok(());
        }
        let Some((last, rest)) = self.outputs.split_last_mut() else {
            return Ok(());
        };
        for output in rest {
            output.push(element.clone()).await?;
        }
        last.push(element).await
    }

    fn next_wakeup(&self) -> Option<EventTime> {
        self.outputs.iter().filter_map(|o| o.next_wakeup()).min()
    }

    async fn on_processing_time(&mut self, now: EventTime) -> Result<()> {
        for output in &mut self.outputs {
            output.on_processing_time(now).await?;
        }
        Ok(())
    }

    async fn checkpoint_complete(&mut self, epoch: u64) -> Result<()> {
        for output in &mut self.outputs {
            output.checkpoint_complete(epoch).await?;
        }
        Ok(())
    }
}

/// An output nobody consumes.
pub(crate) struct Discard;

#[async_trait]
impl<T: Send + 'static> Chain<T> for Discard {
    async fn start(&mut self) -> Result<()> {
        Ok(())
    }
    async fn push(&mut self, _: StreamElement<T>) -> Result<()> {
        Ok(())
    }
    fn next_wakeup(&self) -> Option<EventTime> {
        None
    }
    async fn on_processing_time(&mut self, _: EventTime) -> Result<()> {
        Ok(())
    }
}

/// The sending end of an edge for one upstream subtask: a bounded channel to each downstream
/// subtask (so a slow consumer backpressures), and the edge's partitioning.
pub(crate) struct ChannelOutput<T> {
    senders: Vec<mpsc::Sender<StreamElement<T>>>,
    partitioning: Partitioning<T>,
    next_target: usize,
    task: String,
}

impl<T> ChannelOutput<T> {
    pub(crate) fn new(
        senders: Vec<mpsc::Sender<StreamElement<T>>>,
        partitioning: Partitioning<T>,
        first_target: usize,
        task: String,
    ) -> Self {
        ChannelOutput {
            next_target: first_target % senders.len().max(1),
            senders,
            partitioning,
            task,
        }
    }
}

impl<T: Clone + Send + 'static> ChannelOutput<T> {
    async fn send(&self, target: usize, element: StreamElement<T>) -> Result<()> {
        self.senders[target]
            .send(element)
            .await
            .map_err(|_| RuntimeError::Disconnected(self.task.clone()))
    }

    async fn send_to_all(&self, element: StreamElement<T>) -> Result<()> {
        for target in 0..self.senders.len() {
            self.send(target, element.clone()).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl<T: Clone + Send + 'static> Chain<T> for ChannelOutput<T> {
    async fn start(&mut self) -> Result<()> {
        Ok(())
    }

    async fn push(&mut self, element: StreamElement<T>) -> Result<()> {
        let StreamElement::Data(batch) = element else {
            return self.send_to_all(element).await;
        };
        let targets = self.senders.len();
        match &self.partitioning {
            _ if targets == 1 => self.send(0, StreamElement::Data(batch)).await,
            Partitioning::Forward | Partitioning::Rebalance => {
                let target = self.next_target;
                self.next_target = (target + 1) % targets;
                self.send(target, StreamElement::Data(batch)).await
            }
            Partitioning::Broadcast => self.send_to_all(StreamElement::Data(batch)).await,
            Partitioning::Hash(hasher) => {
                let per_target = split_by_key(batch, targets, hasher.as_ref());
                for (target, part) in per_target.into_iter().enumerate() {
                    if !part.is_empty() {
                        self.send(target, StreamElement::Data(part)).await?;
                    }
                }
                Ok(())
            }
        }
    }

    fn next_wakeup(&self) -> Option<EventTime> {
        None
    }

    async fn on_processing_time(&mut self, _: EventTime) -> Result<()> {
        Ok(())
    }
}

fn split_by_key<T>(
    batch: Batch<T>,
    targets: usize,
    hasher: &(dyn Fn(&T) -> u64 + Send + Sync),
) -> Vec<Batch<T>> {
    let expected = batch.len() / targets + 1;
    let mut parts: Vec<Batch<T>> = (0..targets).map(|_| Vec::with_capacity(expected)).collect();
    for record in batch {
        let target = subtask_for_key_group(key_group(hasher(&record.value)), targets);
        parts[target].push(record);
    }
    parts
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Snapshots the keyed states an operator or sink (`what`) lists, as part of checkpoint
/// `epoch`. It created `created` states: listing fewer fails the checkpoint, since an unlisted
/// state would silently not survive a crash.
pub(crate) fn snapshot_listed_states(
    what: &str,
    states: Vec<&mut dyn crate::state::KeyedState>,
    created: usize,
    epoch: u64,
) -> std::result::Result<SnapshotStats, super::error::BoxError> {
    if states.len() < created {
        return Err(format!(
            "the {what} created {created} keyed states but its keyed_state() returns {}; \
             a checkpointed job needs every state listed there",
            states.len()
        )
        .into());
    }
    let mut stats = SnapshotStats::default();
    for state in states {
        stats += state.snapshot(epoch)?;
    }
    Ok(stats)
}
