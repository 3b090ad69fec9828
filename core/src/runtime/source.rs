//! Sources: the start of a job. A source subtask polls its [`Source`] and pushes what it returns
//! into its fused chain; between polls it takes commands (checkpoint barriers, stop).

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use std::sync::Arc;

use super::chain::{Chain, OperatorMetrics};
use super::clock::ProcessingClock;
use super::element::{Batch, CheckpointBarrier, EventTime, StreamElement, MAX_WATERMARK};
use super::error::{BoxError, Result, RuntimeError};
use super::operator::SubtaskInfo;
use crate::checkpoint::Participant;

/// What one poll of a source returned.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceOutput<T> {
    /// Records read.
    Data(Batch<T>),
    /// The source's watermark advanced.
    Watermark(EventTime),
    /// Every partition of this subtask is idle.
    Idle,
    /// Nothing arrived within the source's poll wait; poll again.
    NoData,
    /// A bounded source read everything: the runtime sends the final watermark and `End`.
    Finished,
}

/// The positions a source subtask would resume from: `(queue, partition, next offset)`.
pub type SourcePositions = Vec<(String, i32, i64)>;

/// What a source subtask knows of its job.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// Which subtask this is.
    pub subtask: SubtaskInfo,
    /// The job's processing-time clock.
    pub clock: ProcessingClock,
    /// When the job was restored from a checkpoint: the positions of every partition this
    /// source operator read then, over all its subtasks (the parallelism may have changed).
    /// A source resumes the partitions it now owns from these and starts the others as
    /// configured.
    pub restored: Option<SourcePositions>,
}

/// A source of records for one subtask.
///
/// The runtime calls [`poll`](Source::poll) in a loop. A poll should come back within about
/// 100 ms even without data ([`SourceOutput::NoData`]) so that barriers and a stop request are
/// handled promptly; it must not block the thread. A poll must be cancel-safe: when a
/// processing-time timer of an operator fused into the source's task falls due, the pending
/// poll is dropped, and nothing it had read may be lost with it (keep read records in `self`
/// until they are returned).
#[async_trait]
pub trait Source<T>: Send + 'static {
    /// Called once before the first poll: connect, find partitions, seek.
    async fn open(&mut self, ctx: &SourceContext) -> std::result::Result<(), BoxError> {
        let _ = ctx;
        Ok(())
    }

    /// Reads what is there.
    async fn poll(&mut self, ctx: &SourceContext)
        -> std::result::Result<SourceOutput<T>, BoxError>;

    /// Checkpoint barrier `barrier` is about to be emitted: return the positions that the
    /// records emitted so far end at.
    async fn snapshot(
        &mut self,
        barrier: &CheckpointBarrier,
    ) -> std::result::Result<SourcePositions, BoxError> {
        let _ = barrier;
        Ok(Vec::new())
    }

    /// The checkpoint of `epoch` is complete: commit its positions to the broker, if wanted.
    async fn on_checkpoint_complete(&mut self, epoch: u64) -> std::result::Result<(), BoxError> {
        let _ = epoch;
        Ok(())
    }

    /// Called once the source's input ended (it finished, or the job was stopped) and every
    /// subtask of the job then finished without error: everything the source emitted has been
    /// written by the sinks. A source commits its final positions here. Not called when the job
    /// fails or is aborted.
    async fn on_job_success(&mut self) -> std::result::Result<(), BoxError> {
        Ok(())
    }

    /// Called once when the subtask stops, normally or not (not when it is aborted).
    async fn close(&mut self) -> std::result::Result<(), BoxError> {
        Ok(())
    }
}

/// How source subtasks learn that the whole job succeeded: each reports when its input has
/// ended, and waits for the job handle to say every other subtask finished without error.
#[derive(Debug, Clone)]
pub(crate) struct JobEnd {
    /// Source subtasks whose input has ended.
    pub(crate) sources_ended: Arc<std::sync::atomic::AtomicUsize>,
    /// Wakes the job handle when a source's input ended.
    pub(crate) notify: Arc<tokio::sync::Notify>,
    /// Becomes true when every other subtask finished without error.
    pub(crate) succeeded: watch::Receiver<bool>,
}

/// Commands a running source subtask takes between polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceCommand {
    /// Snapshot positions and emit this barrier.
    Barrier(CheckpointBarrier),
    /// The checkpoint of this epoch completed.
    CheckpointComplete(u64),
}

/// Runs one source subtask until its input ends, the job is stopped, or it fails.
#[allow(clippy::too_many_arguments)] // each is one channel or handle of the subtask
pub(crate) async fn run_source<T: Send + 'static>(
    mut source: Box<dyn Source<T>>,
    mut chain: Box<dyn Chain<T>>,
    ctx: SourceContext,
    mut commands: mpsc::UnboundedReceiver<SourceCommand>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<OperatorMetrics>,
    mut job_end: JobEnd,
    mut participant: Option<Participant>,
) -> Result<()> {
    let task = ctx.subtask.task_name();
    let fail = |e: BoxError| RuntimeError::task(&task, e);
    chain.start().await?;
    source.open(&ctx).await.map_err(fail)?;
    let result = async {
        loop {
            while let Ok(command) = commands.try_recv() {
                run_command(command, &mut source, &mut chain, &mut participant, &task).await?;
            }
            if *stop.borrow_and_update() {
                // A stop ends the input like a bounded source: windows flush, sinks finish.
                return end_input(&mut source, &mut chain, &participant, &ctx).await;
            }
            let output = tokio::select! {
                biased;
                _ = wakeup(chain.next_wakeup(), &ctx.clock) => {
                    chain.on_processing_time(ctx.clock.now()).await?;
                    continue;
                }
                // A barrier is emitted now, not when a poll waiting for data returns (up to
                // 100 ms later): the poll is dropped, which polls must allow (see `Source`).
                Some(command) = commands.recv() => {
                    run_command(command, &mut source, &mut chain, &mut participant, &task).await?;
                    continue;
                }
                output = source.poll(&ctx) => output.map_err(fail)?,
            };
            match output {
                SourceOutput::Data(batch) if batch.is_empty() => {}
                SourceOutput::Data(batch) => {
                    metrics.count_out(batch.len());
                    chain.push(StreamElement::Data(batch)).await?
                }
                SourceOutput::Watermark(w) => chain.push(StreamElement::Watermark(w)).await?,
                SourceOutput::Idle => chain.push(StreamElement::Idle).await?,
                SourceOutput::NoData => {}
                SourceOutput::Finished => {
                    return end_input(&mut source, &mut chain, &participant, &ctx).await;
                }
            }
            // Yield to the runtime now and then, also when every poll is ready at once (a
            // generator, a deep backlog): tokio runs a task this one wakes (the checkpoint
            // coordinator, told of a barrier's acknowledgement) on this worker only, once
            // this task yields, so a source that never waits kept checkpoints from completing.
            tokio::task::consume_budget().await;
        }
    }
    .await;
    let result = match result {
        Ok(()) => {
            job_end
                .sources_ended
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            job_end.notify.notify_one();
            // The job handle aborts this task if any subtask fails instead.
            let _ = job_end.succeeded.wait_for(|succeeded| *succeeded).await;
            source.on_job_success().await.map_err(fail)
        }
        Err(error) => Err(error),
    };
    let closed = source.close().await.map_err(fail);
    result.and(closed)
}

/// Runs one command of the checkpoint coordinator between polls.
async fn run_command<T: Send + 'static>(
    command: SourceCommand,
    source: &mut Box<dyn Source<T>>,
    chain: &mut Box<dyn Chain<T>>,
    participant: &mut Option<Participant>,
    task: &str,
) -> Result<()> {
    let fail = |e: BoxError| RuntimeError::task(task, e);
    match command {
        SourceCommand::Barrier(barrier) => {
            let positions = source.snapshot(&barrier).await.map_err(fail)?;
            chain.push(StreamElement::Barrier(barrier)).await?;
            if let Some(participant) = participant {
                participant.ack(barrier.epoch, Some(positions), Default::default());
            }
        }
        SourceCommand::CheckpointComplete(epoch) => {
            source.on_checkpoint_complete(epoch).await.map_err(fail)?;
            chain.checkpoint_complete(epoch).await?;
        }
    }
    Ok(())
}

/// Ends a source subtask's input: the final watermark, then (in a checkpointed job) the final
/// positions to the coordinator, then `End`. The positions go first because a sink fused into
/// this task waits, at `End`, for the final checkpoint, which needs them.
async fn end_input<T: Send + 'static>(
    source: &mut Box<dyn Source<T>>,
    chain: &mut Box<dyn Chain<T>>,
    participant: &Option<Participant>,
    ctx: &SourceContext,
) -> Result<()> {
    chain.push(StreamElement::Watermark(MAX_WATERMARK)).await?;
    if let Some(participant) = participant {
        let barrier = CheckpointBarrier {
            epoch: participant.current_epoch,
            triggered_at: ctx.clock.now(),
        };
        let positions = source
            .snapshot(&barrier)
            .await
            .map_err(|e| RuntimeError::task(&ctx.subtask.task_name(), e))?;
        participant.finished(Some(positions), Default::default());
    }
    chain.push(StreamElement::End).await
}

/// Completes when processing time reaches `at`; never when there is no wakeup.
pub(crate) async fn wakeup(at: Option<EventTime>, clock: &ProcessingClock) {
    match at {
        Some(at) => tokio::time::sleep_until(clock.instant_of(at)).await,
        None => std::future::pending().await,
    }
}
