//! The time hooks that the time-window and session operators share: on event time the
//! watermark drives them; on processing time wakeups do, and the end of input fires what is
//! left.

use omstream_core::runtime::{EventTime, OperatorContext, MAX_WATERMARK};

/// A window operator that fires what is due at a time.
pub(crate) trait Clocked<O> {
    /// Whether windows follow processing time.
    fn is_processing_time(&self) -> bool;
    /// Fires everything due at or before `now`.
    fn advance(&mut self, now: EventTime, ctx: &mut OperatorContext<O>);
    /// When the next firing is due.
    fn next_fire(&self) -> Option<EventTime>;
}

/// Asks for a wakeup at the next firing (processing time only).
pub(crate) fn request_next_wakeup<O>(op: &impl Clocked<O>, ctx: &mut OperatorContext<O>) {
    if op.is_processing_time() {
        if let Some(next) = op.next_fire() {
            ctx.request_wakeup(next);
        }
    }
}

/// `Operator::on_watermark`: event-time windows fire.
pub(crate) fn on_watermark<O>(
    op: &mut impl Clocked<O>,
    watermark: EventTime,
    ctx: &mut OperatorContext<O>,
) {
    if !op.is_processing_time() {
        op.advance(watermark, ctx);
    }
}

/// `Operator::on_processing_time`: processing-time windows fire, and the next wakeup is asked.
pub(crate) fn on_processing_time<O>(
    op: &mut impl Clocked<O>,
    now: EventTime,
    ctx: &mut OperatorContext<O>,
) {
    if op.is_processing_time() {
        op.advance(now, ctx);
        request_next_wakeup(op, ctx);
    }
}

/// `Operator::on_end`: on processing time the input ended, so every open window fires now,
/// complete or not (event-time windows already fired on the final watermark).
pub(crate) fn on_end<O>(op: &mut impl Clocked<O>, ctx: &mut OperatorContext<O>) {
    if op.is_processing_time() {
        op.advance(MAX_WATERMARK, ctx);
    }
}
