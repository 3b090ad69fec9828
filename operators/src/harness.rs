//! Drives one operator subtask by hand in unit tests: records and watermarks in the exact
//! order a test wants, outputs read after every step; over heap state, or over durable state
//! with checkpoints, crashes and restores ([`DurableStore`]).

use std::marker::PhantomData;
use std::sync::Arc;

use omstream_core::runtime::{
    BoxError, EventTime, Operator, OperatorContext, ProcessingClock, Record, SubtaskInfo,
};
use omstream_core::state::{DurableBackend, StateBackend, StateStore};

pub(crate) struct Harness<I, O, Op> {
    operator: Op,
    ctx: OperatorContext<O>,
    input: PhantomData<fn(I)>,
}

impl<I: 'static, O: 'static, Op: Operator<I, O>> Harness<I, O, Op> {
    /// Starts the operator over heap state (its `on_start` may refuse a configuration).
    pub(crate) fn start(operator: Op) -> Result<Self, BoxError> {
        Self::start_with(operator, StateBackend::Heap)
    }

    /// Starts the operator over `backend`.
    pub(crate) fn start_with(mut operator: Op, backend: StateBackend) -> Result<Self, BoxError> {
        let info = SubtaskInfo::new("operator-under-test", 0, 1);
        let mut ctx = OperatorContext::new(info, ProcessingClock::start());
        ctx.set_state_backend(backend);
        operator.on_start(&mut ctx)?;
        Ok(Harness {
            operator,
            ctx,
            input: PhantomData,
        })
    }

    /// The operator, to look at its state.
    pub(crate) fn operator(&mut self) -> &mut Op {
        &mut self.operator
    }

    /// One batch of `(timestamp, record)`.
    pub(crate) fn push(&mut self, records: Vec<(EventTime, I)>) {
        let batch = records
            .into_iter()
            .map(|(t, v)| Record::new(t, v))
            .collect();
        self.operator
            .process_batch(batch, &mut self.ctx)
            .expect("process_batch");
    }

    /// The input watermark advances to `watermark`.
    pub(crate) fn watermark(&mut self, watermark: EventTime) {
        self.operator
            .on_watermark(watermark, &mut self.ctx)
            .expect("on_watermark");
    }

    /// What was emitted since the last call, as `(timestamp, record)`.
    pub(crate) fn take(&mut self) -> Vec<(EventTime, O)> {
        std::mem::take(self.ctx.output_mut())
            .into_iter()
            .map(|r| (r.timestamp, r.value))
            .collect()
    }

    /// Like [`take`](Self::take), sorted.
    pub(crate) fn take_sorted(&mut self) -> Vec<(EventTime, O)>
    where
        O: Ord,
    {
        let mut out = self.take();
        out.sort();
        out
    }
}

/// A state store in a temporary directory, and the epochs of its checkpoints.
pub(crate) struct DurableStore {
    store: Arc<StateStore>,
    /// The epoch that the next checkpoint takes.
    epoch: u64,
    _dir: tempfile::TempDir,
}

impl DurableStore {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(StateStore::open(dir.path()).expect("opens"));
        let epoch = store.begin_run(0).expect("begins");
        DurableStore {
            store,
            epoch,
            _dir: dir,
        }
    }

    /// The backend of the current run, caching at most `cache` entries per state.
    pub(crate) fn backend(&self, cache: usize) -> StateBackend {
        StateBackend::Durable(DurableBackend::new(self.store.clone(), self.epoch, cache))
    }

    /// Takes a checkpoint of the harness's operator: every state it lists is snapshotted.
    /// Returns the checkpoint's epoch.
    pub(crate) fn checkpoint<I: 'static, O: 'static, Op: Operator<I, O>>(
        &mut self,
        harness: &mut Harness<I, O, Op>,
    ) -> u64 {
        let epoch = self.epoch;
        self.store
            .set_last_triggered_epoch(epoch)
            .expect("triggers");
        for state in harness.operator.keyed_state() {
            state.snapshot(epoch).expect("snapshots");
        }
        self.store.flush().expect("flushes");
        self.epoch += 1;
        epoch
    }

    /// After a crash (the harness dropped): the state as of checkpoint `epoch`, for the next
    /// run's [`backend`](Self::backend).
    pub(crate) fn restore(&mut self, epoch: u64) {
        self.epoch = self.store.begin_run(epoch).expect("restores");
    }
}
