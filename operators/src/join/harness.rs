//! Drives one join operator subtask by hand in unit tests: records and watermarks in the exact
//! order a test wants, outputs read after every step.

use std::marker::PhantomData;

use omstream_core::runtime::{
    BoxError, EventTime, Operator, OperatorContext, ProcessingClock, Record, SubtaskInfo,
};

pub(crate) struct Harness<I, O, Op> {
    operator: Op,
    ctx: OperatorContext<O>,
    input: PhantomData<fn(I)>,
}

impl<I: 'static, O: 'static, Op: Operator<I, O>> Harness<I, O, Op> {
    /// Starts the operator (its `on_start` may refuse a configuration).
    pub(crate) fn start(mut operator: Op) -> Result<Self, BoxError> {
        let info = SubtaskInfo::new("join-under-test", 0, 1);
        let mut ctx = OperatorContext::new(info, ProcessingClock::start());
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
