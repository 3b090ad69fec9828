//! Sinks: the end of a job. A sink subtask receives batches in order, with the watermarks,
//! barriers (pre-commit) and the end of input (flush).
//!
//! A sink may keep keyed state, as operators do: it creates it in
//! [`Sink::init_state`] from a [`SinkStateContext`] and lists it in [`Sink::keyed_state`];
//! the runtime snapshots it at every checkpoint barrier, after [`Sink::on_barrier`], and a
//! restored run (at any parallelism) finds it by key group.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::chain::{panic_message, snapshot_listed_states, Chain, OperatorMetrics};
use super::clock::ProcessingClock;
use super::element::{Batch, CheckpointBarrier, EventTime, StreamElement};
use super::error::{BoxError, Result, RuntimeError};
use super::operator::SubtaskInfo;
use crate::checkpoint::Participant;
use crate::state::{
    KeyedState, ListState, MapState, SnapshotStats, StateBackend, StateKey, StateOptions,
    StateValue, ValueState,
};

/// The end of a job for one subtask.
#[async_trait]
pub trait Sink<T>: Send + 'static {
    /// Called once by the runtime before [`open`](Sink::open): create keyed state here,
    /// through `states` (backed by the job's state backend: durable in a job with
    /// checkpoints), and list all of it in [`keyed_state`](Sink::keyed_state). The default
    /// creates none.
    fn init_state(&mut self, states: &SinkStateContext) -> std::result::Result<(), BoxError> {
        let _ = states;
        Ok(())
    }

    /// Every keyed state this sink holds, for checkpoints: the runtime snapshots each one at
    /// a barrier, after [`on_barrier`](Sink::on_barrier) and before acknowledging it. A sink
    /// that creates state in [`init_state`](Sink::init_state) must return all of it here (a
    /// job with checkpoints fails at its first barrier, naming the sink, if some is
    /// missing). The default returns none.
    fn keyed_state(&mut self) -> Vec<&mut dyn KeyedState> {
        Vec::new()
    }

    /// Called once before the first batch.
    async fn open(&mut self, subtask: &SubtaskInfo) -> std::result::Result<(), BoxError> {
        let _ = subtask;
        Ok(())
    }

    /// Writes one non-empty batch.
    async fn write_batch(&mut self, batch: Batch<T>) -> std::result::Result<(), BoxError>;

    /// The input watermark advanced.
    async fn on_watermark(&mut self, watermark: EventTime) -> std::result::Result<(), BoxError> {
        let _ = watermark;
        Ok(())
    }

    /// Everything before `barrier` has been written: make it durable or prepare it (the
    /// pre-commit of a two-phase commit). The default does nothing.
    async fn on_barrier(
        &mut self,
        barrier: &CheckpointBarrier,
    ) -> std::result::Result<(), BoxError> {
        let _ = barrier;
        Ok(())
    }

    /// The checkpoint of `epoch` is complete: commit what was prepared for it.
    async fn on_checkpoint_complete(&mut self, epoch: u64) -> std::result::Result<(), BoxError> {
        let _ = epoch;
        Ok(())
    }

    /// Every input ended: flush and release. Not called when the job fails.
    async fn finish(&mut self) -> std::result::Result<(), BoxError> {
        Ok(())
    }
}

/// What a sink subtask creates its keyed state with, in [`Sink::init_state`]: the job's state
/// backend for this subtask (which key groups it owns) and the job's processing clock (for
/// time to live).
///
/// The runtime makes one per sink subtask. To drive a sink with state yourself (tests, a
/// custom runtime), make one with [`new`](Self::new) and call [`Sink::init_state`] before
/// [`Sink::open`]; snapshot its [`keyed_state`](Sink::keyed_state) at your barriers.
#[derive(Debug)]
pub struct SinkStateContext {
    info: SubtaskInfo,
    backend: StateBackend,
    clock: ProcessingClock,
    /// Keyed states created through this context, to check against `keyed_state`.
    created: AtomicUsize,
}

impl SinkStateContext {
    /// The state of sink subtask `info`, in `backend`, with time read from `clock`.
    pub fn new(info: SubtaskInfo, backend: StateBackend, clock: ProcessingClock) -> Self {
        SinkStateContext {
            info,
            backend,
            clock,
            created: AtomicUsize::new(0),
        }
    }

    /// Which sink subtask the state belongs to.
    pub fn subtask(&self) -> &SubtaskInfo {
        &self.info
    }

    /// Whether the state survives a crash (through checkpoints): true in a job with
    /// checkpoints.
    pub fn is_durable(&self) -> bool {
        self.backend.is_durable()
    }

    /// A keyed value state of this subtask, called `name` (unique within the sink).
    pub fn value_state<K: StateKey, V: StateValue>(&self, name: &str) -> Box<dyn ValueState<K, V>> {
        self.value_state_with(name, StateOptions::default())
    }

    /// A keyed value state with options (a time to live).
    pub fn value_state_with<K: StateKey, V: StateValue>(
        &self,
        name: &str,
        options: StateOptions,
    ) -> Box<dyn ValueState<K, V>> {
        self.created.fetch_add(1, Ordering::Relaxed);
        self.backend
            .value_state(&self.info, name, options, self.clock)
    }

    /// A keyed map state of this subtask, called `name`.
    pub fn map_state<K: StateKey, UK: StateKey + Ord, V: StateValue>(
        &self,
        name: &str,
    ) -> Box<dyn MapState<K, UK, V>> {
        self.created.fetch_add(1, Ordering::Relaxed);
        self.backend
            .map_state(&self.info, name, StateOptions::default(), self.clock)
    }

    /// A keyed list state of this subtask, called `name`.
    pub fn list_state<K: StateKey, V: StateValue>(&self, name: &str) -> Box<dyn ListState<K, V>> {
        self.created.fetch_add(1, Ordering::Relaxed);
        self.backend
            .list_state(&self.info, name, StateOptions::default(), self.clock)
    }

    /// How many keyed states were created through this context.
    fn created_states(&self) -> usize {
        self.created.load(Ordering::Relaxed)
    }
}

/// A sink subtask as the last link of a chain.
pub(crate) struct SinkLink<T> {
    sink: Box<dyn Sink<T>>,
    info: SubtaskInfo,
    task: String,
    metrics: Arc<OperatorMetrics>,
    /// This subtask's part in checkpoints, when the job takes them.
    participant: Option<Participant>,
    /// What the sink creates its keyed state with.
    states: SinkStateContext,
}

impl<T> SinkLink<T> {
    pub(crate) fn new(
        sink: Box<dyn Sink<T>>,
        info: SubtaskInfo,
        metrics: Arc<OperatorMetrics>,
        participant: Option<Participant>,
        states: SinkStateContext,
    ) -> Self {
        SinkLink {
            participant,
            sink,
            task: info.task_name(),
            info,
            metrics,
            states,
        }
    }
}

impl<T: Send + 'static> SinkLink<T> {
    /// The end of input. In a checkpointed job it is the sink's last barrier: what it wrote
    /// since the previous checkpoint is pre-committed (and its keyed state snapshotted), and
    /// committed once the job's final checkpoint (or a later periodic one) completes; then
    /// the sink finishes.
    async fn end(&mut self) -> Result<()> {
        let task = self.task.clone();
        let fail = |e| RuntimeError::task(&task, e);
        if let Some(participant) = &mut self.participant {
            let barrier = CheckpointBarrier {
                epoch: participant.current_epoch,
                triggered_at: crate::oms::now_millis(),
            };
            self.sink.on_barrier(&barrier).await.map_err(fail)?;
            // What the end of input changed belongs to the job's next checkpoint.
            let created = self.states.created_states();
            let stats = snapshot_state(self.sink.as_mut(), created, &self.task, barrier.epoch)?;
            participant.finished(None, stats);
            let Some(completed) = participant.wait_completed(barrier.epoch).await else {
                return Err(RuntimeError::Cancelled);
            };
            self.sink
                .on_checkpoint_complete(completed)
                .await
                .map_err(fail)?;
        }
        self.sink.finish().await.map_err(fail)
    }
}

#[async_trait]
impl<T: Send + 'static> Chain<T> for SinkLink<T> {
    async fn start(&mut self) -> Result<()> {
        let task = &self.task;
        self.sink
            .init_state(&self.states)
            .map_err(|e| RuntimeError::task(task, e))?;
        self.sink
            .open(&self.info)
            .await
            .map_err(|e| RuntimeError::task(task, e))
    }

    async fn push(&mut self, element: StreamElement<T>) -> Result<()> {
        let result = match element {
            StreamElement::Data(batch) => {
                self.metrics.count_in(batch.len());
                self.sink.write_batch(batch).await
            }
            StreamElement::Watermark(watermark) => self.sink.on_watermark(watermark).await,
            StreamElement::Idle => Ok(()),
            StreamElement::Barrier(barrier) => {
                self.sink
                    .on_barrier(&barrier)
                    .await
                    .map_err(|e| RuntimeError::task(&self.task, e))?;
                if let Some(participant) = &mut self.participant {
                    let created = self.states.created_states();
                    let stats =
                        snapshot_state(self.sink.as_mut(), created, &self.task, barrier.epoch)?;
                    participant.ack(barrier.epoch, None, stats);
                }
                Ok(())
            }
            StreamElement::End => return self.end().await,
        };
        result.map_err(|e| RuntimeError::task(&self.task, e))
    }

    async fn checkpoint_complete(&mut self, epoch: u64) -> Result<()> {
        self.sink
            .on_checkpoint_complete(epoch)
            .await
            .map_err(|e| RuntimeError::task(&self.task, e))
    }

    fn next_wakeup(&self) -> Option<EventTime> {
        None
    }

    async fn on_processing_time(&mut self, _: EventTime) -> Result<()> {
        Ok(())
    }
}

/// Writes what `sink`'s keyed state changed as part of checkpoint `epoch`, as
/// `OperatorLink::snapshot_state` does for operators: a sink that created more states (`created`)
/// than it lists fails the checkpoint, naming its subtask `task`.
fn snapshot_state<T: 'static>(
    sink: &mut dyn Sink<T>,
    created: usize,
    task: &str,
    epoch: u64,
) -> Result<SnapshotStats> {
    let snapshot = || snapshot_listed_states("sink", sink.keyed_state(), created, epoch);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(snapshot)) {
        Ok(Ok(stats)) => Ok(stats),
        Ok(Err(error)) => Err(RuntimeError::task(task, error)),
        Err(panic) => Err(RuntimeError::Panicked {
            task: task.to_string(),
            message: panic_message(panic.as_ref()),
        }),
    }
}
