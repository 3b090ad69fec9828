//! `interval_join`: the pairs of two keyed streams that share a key and are close in time.
//!
//! Restore: the cleanup timers of both sides are mirrored per key in keyed state (durable
//! backend, [`TimerMirror`]) and registered again in `on_start`, with the watermark the
//! checkpoint had seen ([`SubtaskValue`]).

use std::sync::Arc;

use omstream_core::runtime::{
    Batch, Data, EventTime, KeyedStream, Operator, OperatorContext, OperatorResult, Record, Stream,
    SubtaskInfo, TimerQueue,
};
use omstream_core::state::{KeyedState, MapState, StateKey, StateValue};
use serde::{Deserialize, Serialize};

use super::bounds::IntervalBounds;
use super::connect::{connect_keyed, KeyFn};
use super::either::Either;
use super::stats::{JoinLeft, JoinStats};
use crate::restore::{SubtaskValue, TimerMirror};

const NOT_STARTED: &str = "interval_join: used before on_start";

/// Joins two keyed streams on closeness in time.
pub trait IntervalJoin<K, L> {
    /// An inner join: `join(key, left, right)` for every pair of a left and a right record
    /// with equal keys and `right.ts - left.ts` within `bounds` (inclusive), emitted as soon
    /// as the second of the two arrives, with event time `max(left.ts, right.ts)`.
    ///
    /// Each side's records are buffered per key and timestamp in keyed
    /// [`MapState`](omstream_core::state::MapState) for as long as a record of the other side
    /// that is not late could still match them: a left record until the watermark reaches
    /// `left.ts + upper`, a right record until it reaches `right.ts - lower`.
    ///
    /// A record at or behind the watermark (the minimum of both inputs') when it arrives is
    /// *late*: some of its partners may already be gone, so it is dropped, whole, and counted
    /// in the [`JoinStats`] (if any). Records within the sources' out-of-orderness are never
    /// late.
    ///
    /// Bounds with `lower > upper` make the job fail to start with
    /// [`RuntimeError::InvalidConfig`](omstream_core::runtime::RuntimeError::InvalidConfig).
    ///
    /// # Examples
    /// Each payment with the orders of its customer from the 10 seconds before it:
    /// ```
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let strategy = WatermarkStrategy::default();
    /// let orders = env.from_records(
    ///     "orders",
    ///     vec![Record::new(1_000, (7u32, 100u64)), Record::new(30_000, (7, 200))],
    ///     strategy,
    /// );
    /// let payments = env.from_records("payments", vec![Record::new(8_000, (7u32, 99u64))], strategy);
    /// let paid = orders
    ///     .key_by(|(customer, _): &(u32, u64)| *customer)
    ///     .interval_join(
    ///         &payments.key_by(|(customer, _): &(u32, u64)| *customer),
    ///         // The payment comes 0 to 10 seconds after the order.
    ///         IntervalBounds::millis(0, 10_000),
    ///         |_, (_, order), (_, payment)| (*order, *payment),
    ///     )
    ///     .collect();
    /// env.execute().await.unwrap();
    /// let records = paid.records();
    /// assert_eq!(records.len(), 1);
    /// assert_eq!((records[0].timestamp, records[0].value), (8_000, (100, 99)));
    /// # });
    /// ```
    fn interval_join<R, O, F>(
        &self,
        right: &KeyedStream<K, R>,
        bounds: IntervalBounds,
        join: F,
    ) -> Stream<O>
    where
        R: StateValue,
        O: Data,
        F: Fn(&K, &L, &R) -> O + Send + Sync + 'static;
}

impl<K: StateKey, L: StateValue, S: JoinLeft<K, L>> IntervalJoin<K, L> for S {
    fn interval_join<R, O, F>(
        &self,
        right: &KeyedStream<K, R>,
        bounds: IntervalBounds,
        join: F,
    ) -> Stream<O>
    where
        R: StateValue,
        O: Data,
        F: Fn(&K, &L, &R) -> O + Send + Sync + 'static,
    {
        build(self.keyed(), right, bounds, join, self.stats())
    }
}

fn build<K, L, R, O, F>(
    left: &KeyedStream<K, L>,
    right: &KeyedStream<K, R>,
    bounds: IntervalBounds,
    join: F,
    stats: JoinStats,
) -> Stream<O>
where
    K: StateKey,
    L: StateValue,
    R: StateValue,
    O: Data,
    F: Fn(&K, &L, &R) -> O + Send + Sync + 'static,
{
    let join = Arc::new(join);
    let (left_key, right_key) = (left.key_fn(), right.key_fn());
    connect_keyed("interval_join", left, right, move |_: &SubtaskInfo| {
        Box::new(IntervalJoinOperator::new(
            bounds,
            join.clone(),
            left_key.clone(),
            right_key.clone(),
            stats.clone(),
        )) as Box<dyn Operator<Either<L, R>, O>>
    })
}

pub(crate) struct IntervalJoinOperator<K, L, R, F> {
    bounds: IntervalBounds,
    join: Arc<F>,
    left_key: KeyFn<L, K>,
    right_key: KeyFn<R, K>,
    stats: JoinStats,
    buffers: Option<Buffers<K, L, R>>,
    /// When each buffered (key, timestamp) of a side can go: the time is the watermark at
    /// which no record of the other side that is not late can match it any more.
    left_cleanup: TimerQueue<(K, EventTime)>,
    right_cleanup: TimerQueue<(K, EventTime)>,
    /// Both sides' cleanup timers, kept in keyed state for a restore: the side and the
    /// buffered timestamp per timer.
    mirror: TimerMirror<K, (Side, EventTime)>,
    /// The watermark seen, kept across restores.
    watermark: SubtaskValue<EventTime>,
}

/// Which input a buffered record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Side {
    Left,
    Right,
}

struct Buffers<K, L, R> {
    left: Box<dyn MapState<K, EventTime, Vec<L>>>,
    right: Box<dyn MapState<K, EventTime, Vec<R>>>,
}

impl<K, L, R, F> IntervalJoinOperator<K, L, R, F> {
    pub(crate) fn new(
        bounds: IntervalBounds,
        join: Arc<F>,
        left_key: KeyFn<L, K>,
        right_key: KeyFn<R, K>,
        stats: JoinStats,
    ) -> Self {
        IntervalJoinOperator {
            bounds,
            join,
            left_key,
            right_key,
            stats,
            buffers: None,
            left_cleanup: TimerQueue::default(),
            right_cleanup: TimerQueue::default(),
            mirror: TimerMirror::default(),
            watermark: SubtaskValue::watermark(),
        }
    }
}

/// Keeps `value` under `(key, timestamp)` until the watermark reaches `until`, unless it
/// already has (then nothing that is not late can match it).
#[allow(clippy::too_many_arguments)]
fn buffer<K: StateKey, V>(
    state: &mut dyn MapState<K, EventTime, Vec<V>>,
    cleanup: &mut TimerQueue<(K, EventTime)>,
    mirror: &mut TimerMirror<K, (Side, EventTime)>,
    side: Side,
    watermark: EventTime,
    key: K,
    timestamp: EventTime,
    until: EventTime,
    value: V,
) {
    if until <= watermark {
        return;
    }
    let (list, created) = state.get_or_insert_with(&key, &timestamp, &mut Vec::new);
    list.push(value);
    if created {
        // A new (key, timestamp) of the side: its timer is new too.
        mirror.add(&key, until, (side, timestamp));
        cleanup.register(until, (key, timestamp));
    }
}

impl<K, L, R, O, F> Operator<Either<L, R>, O> for IntervalJoinOperator<K, L, R, F>
where
    K: StateKey,
    L: StateValue,
    R: StateValue,
    O: Data,
    F: Fn(&K, &L, &R) -> O + Send + Sync + 'static,
{
    fn on_start(&mut self, ctx: &mut OperatorContext<O>) -> OperatorResult {
        self.bounds.validate()?;
        self.buffers = Some(Buffers {
            left: ctx.map_state("interval_join.left"),
            right: ctx.map_state("interval_join.right"),
        });
        self.mirror = TimerMirror::open(ctx, "interval_join.timers");
        self.watermark.open(ctx, "interval_join.watermark");
        for (key, until, (side, timestamp)) in self.mirror.restore() {
            match side {
                Side::Left => self.left_cleanup.register(until, (key, timestamp)),
                Side::Right => self.right_cleanup.register(until, (key, timestamp)),
            };
        }
        Ok(())
    }

    fn process_batch(
        &mut self,
        batch: Batch<Either<L, R>>,
        ctx: &mut OperatorContext<O>,
    ) -> OperatorResult {
        let buffers = self.buffers.as_mut().ok_or(NOT_STARTED)?;
        let (lower, upper) = (self.bounds.lower(), self.bounds.upper());
        let (watermark, join, out) = (*self.watermark.get(), &*self.join, ctx.output_mut());
        for Record { timestamp, value } in batch {
            if timestamp <= watermark {
                match value {
                    Either::Left(_) => self.stats.count_late_left(),
                    Either::Right(_) => self.stats.count_late_right(),
                }
                continue;
            }
            match value {
                Either::Left(l) => {
                    let key = (self.left_key)(&l);
                    let (from, to) = (
                        timestamp.saturating_add(lower),
                        timestamp.saturating_add(upper),
                    );
                    buffers.right.for_each(&key, &mut |&t, rights| {
                        if from <= t && t <= to {
                            let at = t.max(timestamp);
                            out.extend(rights.iter().map(|r| Record::new(at, join(&key, &l, r))));
                        }
                    });
                    let (state, cleanup) = (&mut *buffers.left, &mut self.left_cleanup);
                    let (mirror, side) = (&mut self.mirror, Side::Left);
                    buffer(
                        state, cleanup, mirror, side, watermark, key, timestamp, to, l,
                    );
                }
                Either::Right(r) => {
                    let key = (self.right_key)(&r);
                    let (from, to) = (
                        timestamp.saturating_sub(upper),
                        timestamp.saturating_sub(lower),
                    );
                    buffers.left.for_each(&key, &mut |&t, lefts| {
                        if from <= t && t <= to {
                            let at = t.max(timestamp);
                            out.extend(lefts.iter().map(|l| Record::new(at, join(&key, l, &r))));
                        }
                    });
                    let (state, cleanup) = (&mut *buffers.right, &mut self.right_cleanup);
                    let (mirror, side) = (&mut self.mirror, Side::Right);
                    buffer(
                        state, cleanup, mirror, side, watermark, key, timestamp, to, r,
                    );
                }
            }
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: EventTime, _: &mut OperatorContext<O>) -> OperatorResult {
        let watermark = self.watermark.advance(watermark);
        let buffers = self.buffers.as_mut().ok_or(NOT_STARTED)?;
        while let Some((until, (key, timestamp))) = self.left_cleanup.pop_due(watermark) {
            buffers.left.remove(&key, &timestamp);
            self.mirror.remove(&key, until, &(Side::Left, timestamp));
        }
        while let Some((until, (key, timestamp))) = self.right_cleanup.pop_due(watermark) {
            buffers.right.remove(&key, &timestamp);
            self.mirror.remove(&key, until, &(Side::Right, timestamp));
        }
        Ok(())
    }

    fn keyed_state(&mut self) -> Vec<&mut dyn KeyedState> {
        let mut states: Vec<&mut dyn KeyedState> = Vec::new();
        if let Some(buffers) = self.buffers.as_mut() {
            states.push(&mut *buffers.left);
            states.push(&mut *buffers.right);
        }
        states.extend(self.mirror.keyed_state());
        states.extend(self.watermark.keyed_state());
        states
    }
}

#[cfg(test)]
mod tests;
