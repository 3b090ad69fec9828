//! The operator contract: one required method, defaulted hooks, and the context through which an
//! operator emits records, reads time and asks for processing-time callbacks.

use super::clock::ProcessingClock;
use super::element::{Batch, CheckpointBarrier, EventTime, Record, MIN_WATERMARK};
use super::error::BoxError;
use crate::state::{
    KeyedState, ListState, MapState, StateBackend, StateKey, StateOptions, StateValue, ValueState,
};

/// The result of an operator hook.
pub type OperatorResult = std::result::Result<(), BoxError>;

/// Which subtask of which operator runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubtaskInfo {
    /// The operator's name in the job.
    pub operator: String,
    /// This subtask's index, from 0.
    pub index: usize,
    /// How many subtasks the operator has.
    pub parallelism: usize,
    /// The job's name.
    pub job: String,
    /// Whether the job takes checkpoints (its sinks may then commit per checkpoint).
    pub checkpointing: bool,
    /// The checkpoint this run was restored from; `None` for a fresh start.
    pub restored_epoch: Option<u64>,
    /// The epoch that what this run does before its first checkpoint belongs to (epochs of a
    /// run are consecutive from here; each is above every epoch an earlier run used).
    pub first_epoch: u64,
    /// Epochs that earlier runs started but never completed, as inclusive ranges: what a sink
    /// prepared in them must be rolled back, even when below `restored_epoch`.
    pub aborted_epochs: Vec<(u64, u64)>,
}

impl SubtaskInfo {
    /// Subtask `index` of `parallelism` of the operator called `operator`.
    pub fn new(operator: impl Into<String>, index: usize, parallelism: usize) -> Self {
        SubtaskInfo {
            operator: operator.into(),
            index,
            parallelism,
            job: String::new(),
            checkpointing: false,
            restored_epoch: None,
            first_epoch: 1,
            aborted_epochs: Vec::new(),
        }
    }

    /// Whether the checkpoint of `epoch` is part of the state this run restored: at or below
    /// the restored checkpoint and not in an epoch a crashed run abandoned. A transaction an
    /// earlier run prepared for `epoch` must be committed exactly when this is true.
    pub fn epoch_is_restored(&self, epoch: u64) -> bool {
        self.restored_epoch
            .is_some_and(|restored| epoch <= restored)
            && !self
                .aborted_epochs
                .iter()
                .any(|&(low, high)| (low..=high).contains(&epoch))
    }

    /// `name[index/parallelism]`, as errors and logs print it.
    pub fn task_name(&self) -> String {
        format!("{}[{}/{}]", self.operator, self.index, self.parallelism)
    }
}

/// A stage of a job that turns input batches into output records.
///
/// Only [`process_batch`](Operator::process_batch) is required. The hooks are called by the
/// runtime in stream order, on the subtask's task, never concurrently; records an operator emits
/// from any hook go downstream before the element that triggered the hook is forwarded. So a
/// window emitted in `on_watermark` reaches the next operator ahead of the watermark itself.
pub trait Operator<I, O>: Send + 'static {
    /// Processes one non-empty batch. Emit results through `ctx`.
    fn process_batch(&mut self, batch: Batch<I>, ctx: &mut OperatorContext<O>) -> OperatorResult;

    /// Called once before the first element; create state and timers here.
    fn on_start(&mut self, ctx: &mut OperatorContext<O>) -> OperatorResult {
        let _ = ctx;
        Ok(())
    }

    /// Called when the input watermark advances (`ctx.watermark()` already holds it). Fire
    /// event-time timers here. The runtime forwards the watermark after this returns.
    fn on_watermark(
        &mut self,
        watermark: EventTime,
        ctx: &mut OperatorContext<O>,
    ) -> OperatorResult {
        let _ = (watermark, ctx);
        Ok(())
    }

    /// Called when processing time reaches a time asked for with
    /// [`OperatorContext::request_wakeup`] (`now` is at or after it).
    fn on_processing_time(
        &mut self,
        now: EventTime,
        ctx: &mut OperatorContext<O>,
    ) -> OperatorResult {
        let _ = (now, ctx);
        Ok(())
    }

    /// Called when checkpoint barrier `barrier` has arrived on every input: everything before
    /// it has been processed. Snapshot state as of this point. The barrier is forwarded after.
    fn on_barrier(
        &mut self,
        barrier: &CheckpointBarrier,
        ctx: &mut OperatorContext<O>,
    ) -> OperatorResult {
        let _ = (barrier, ctx);
        Ok(())
    }

    /// Every keyed state this operator holds, for checkpoints: the runtime snapshots each one
    /// when a barrier has passed [`on_barrier`](Operator::on_barrier). An operator that
    /// creates state through its context must return all of it here (a job with checkpoints
    /// fails at its first barrier, naming the operator, if some is missing).
    fn keyed_state(&mut self) -> Vec<&mut dyn KeyedState> {
        Vec::new()
    }

    /// Called when the checkpoint of `epoch` is complete everywhere (its record is durable).
    fn on_checkpoint_complete(&mut self, epoch: u64) -> OperatorResult {
        let _ = epoch;
        Ok(())
    }

    /// Whether this operator makes its own watermarks (a timestamp assigner). When true, input
    /// watermarks are not forwarded (except the final one at the end of input); the operator
    /// sends its own with [`OperatorContext::emit_watermark`].
    fn generates_watermarks(&self) -> bool {
        false
    }

    /// Called once when every input has ended, after the final watermark: flush what is left.
    fn on_end(&mut self, ctx: &mut OperatorContext<O>) -> OperatorResult {
        let _ = ctx;
        Ok(())
    }
}

/// What an operator sees of the runtime: its output, the current time and its identity.
#[derive(Debug)]
pub struct OperatorContext<O> {
    output: Batch<O>,
    /// Output batches already full: an operator that emits a lot from one hook (a window
    /// firing 100,000 keys) sends batches of the job's size, which reuse the allocator's
    /// memory, instead of one huge fresh vector.
    full: Vec<Batch<O>>,
    max_batch: usize,
    watermark: EventTime,
    wakeup: Option<EventTime>,
    emitted_watermark: Option<EventTime>,
    clock: ProcessingClock,
    info: SubtaskInfo,
    state_backend: StateBackend,
    /// Keyed states created through this context, to check against `keyed_state`.
    created_states: std::sync::atomic::AtomicUsize,
}

impl<O> OperatorContext<O> {
    /// A context for a subtask; the runtime makes one per operator subtask.
    pub fn new(info: SubtaskInfo, clock: ProcessingClock) -> Self {
        OperatorContext {
            output: Vec::new(),
            full: Vec::new(),
            max_batch: usize::MAX,
            watermark: MIN_WATERMARK,
            wakeup: None,
            emitted_watermark: None,
            clock,
            info,
            state_backend: StateBackend::default(),
            created_states: Default::default(),
        }
    }

    /// Emits one record with event time `timestamp`.
    #[inline]
    pub fn emit(&mut self, timestamp: EventTime, value: O) {
        self.emit_record(Record { timestamp, value });
    }

    /// Emits one record.
    #[inline]
    pub fn emit_record(&mut self, record: Record<O>) {
        if self.output.len() >= self.max_batch {
            self.spill();
        }
        self.output.push(record);
    }

    #[cold]
    fn spill(&mut self) {
        let full = std::mem::replace(&mut self.output, Vec::with_capacity(self.max_batch));
        self.full.push(full);
    }

    /// Emits a whole batch; when nothing else was emitted yet it is passed on without a copy.
    pub fn emit_batch(&mut self, mut batch: Batch<O>) {
        if self.output.is_empty() {
            self.output = batch;
        } else {
            self.output.append(&mut batch);
        }
    }

    /// The output buffer, for operators that fill it in place (it is not split into batches
    /// of the job's size; prefer [`emit`](Self::emit) for large outputs).
    pub fn output_mut(&mut self) -> &mut Batch<O> {
        &mut self.output
    }

    /// Sends a watermark downstream after the records emitted so far; only for operators that
    /// [generate watermarks](Operator::generates_watermarks). Watermarks only grow: a smaller
    /// one than the last is ignored.
    pub fn emit_watermark(&mut self, watermark: EventTime) {
        self.emitted_watermark = Some(
            self.emitted_watermark
                .map_or(watermark, |w| w.max(watermark)),
        );
    }

    pub(crate) fn take_emitted_watermark(&mut self) -> Option<EventTime> {
        self.emitted_watermark.take()
    }

    /// The current input watermark: the minimum over every input.
    pub fn watermark(&self) -> EventTime {
        self.watermark
    }

    /// The current processing time in milliseconds since the epoch.
    pub fn processing_time(&self) -> EventTime {
        self.clock.now()
    }

    /// Asks for a call of [`Operator::on_processing_time`] once processing time reaches `at`.
    /// Only the earliest pending request is kept; ask again from the callback for later ones.
    pub fn request_wakeup(&mut self, at: EventTime) {
        self.wakeup = Some(self.wakeup.map_or(at, |w| w.min(at)));
    }

    /// Which subtask this is.
    pub fn subtask(&self) -> &SubtaskInfo {
        &self.info
    }

    /// A keyed value state of this subtask, called `name` (unique within the operator).
    pub fn value_state<K: StateKey, V: StateValue>(&self, name: &str) -> Box<dyn ValueState<K, V>> {
        self.value_state_with(name, StateOptions::default())
    }

    /// A keyed value state with options (a time to live).
    pub fn value_state_with<K: StateKey, V: StateValue>(
        &self,
        name: &str,
        options: StateOptions,
    ) -> Box<dyn ValueState<K, V>> {
        self.count_state();
        self.state_backend
            .value_state(&self.info, name, options, self.clock)
    }

    /// A keyed map state of this subtask, called `name`.
    pub fn map_state<K: StateKey, UK: StateKey + Ord, V: StateValue>(
        &self,
        name: &str,
    ) -> Box<dyn MapState<K, UK, V>> {
        self.map_state_with(name, StateOptions::default())
    }

    /// A keyed map state with options (a time to live).
    pub fn map_state_with<K: StateKey, UK: StateKey + Ord, V: StateValue>(
        &self,
        name: &str,
        options: StateOptions,
    ) -> Box<dyn MapState<K, UK, V>> {
        self.count_state();
        self.state_backend
            .map_state(&self.info, name, options, self.clock)
    }

    /// A keyed list state of this subtask, called `name`.
    pub fn list_state<K: StateKey, V: StateValue>(&self, name: &str) -> Box<dyn ListState<K, V>> {
        self.list_state_with(name, StateOptions::default())
    }

    /// A keyed list state with options (a time to live).
    pub fn list_state_with<K: StateKey, V: StateValue>(
        &self,
        name: &str,
        options: StateOptions,
    ) -> Box<dyn ListState<K, V>> {
        self.count_state();
        self.state_backend
            .list_state(&self.info, name, options, self.clock)
    }

    fn count_state(&self) {
        self.created_states
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many keyed states were created through this context.
    pub(crate) fn created_states(&self) -> usize {
        self.created_states
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The job's processing-time clock.
    pub fn clock(&self) -> ProcessingClock {
        self.clock
    }

    /// Where this subtask's keyed state lives.
    pub fn state_backend(&self) -> StateBackend {
        self.state_backend.clone()
    }

    /// Sets where the keyed state created through this context lives (the runtime does this
    /// from the job's settings; tests of operators use it to run one over durable state).
    pub fn set_state_backend(&mut self, backend: StateBackend) {
        self.state_backend = backend;
    }

    /// What was emitted since the last call, as batches in order.
    pub(crate) fn take_output(&mut self) -> Vec<Batch<O>> {
        let mut batches = std::mem::take(&mut self.full);
        if !self.output.is_empty() {
            batches.push(std::mem::take(&mut self.output));
        }
        batches
    }

    pub(crate) fn has_output(&self) -> bool {
        !self.output.is_empty() || !self.full.is_empty()
    }

    /// Splits emitted records into batches of at most `max_batch` (the job's batch size).
    pub(crate) fn set_max_batch(&mut self, max_batch: usize) {
        self.max_batch = max_batch.max(1);
    }

    pub(crate) fn set_watermark(&mut self, watermark: EventTime) {
        self.watermark = watermark;
    }

    pub(crate) fn pending_wakeup(&self) -> Option<EventTime> {
        self.wakeup
    }

    pub(crate) fn take_due_wakeup(&mut self, now: EventTime) -> bool {
        match self.wakeup {
            Some(at) if at <= now => {
                self.wakeup = None;
                true
            }
            _ => false,
        }
    }
}
