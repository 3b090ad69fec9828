//! `window_join`: the pairs of two keyed streams that share a key and a time window.
//!
//! Restore: the firing timers are mirrored per key in keyed state (durable backend,
//! [`TimerMirror`]) and registered again in `on_start`, with the watermark the checkpoint had
//! seen ([`SubtaskValue`]).

use std::sync::Arc;

use omstream_core::runtime::{
    Batch, Data, EventTime, KeyedStream, Operator, OperatorContext, OperatorResult, RuntimeError,
    Stream, SubtaskInfo, TimerQueue,
};
use omstream_core::state::{KeyedState, MapState, StateKey, StateValue};

use super::connect::{connect_keyed, KeyFn};
use super::either::Either;
use super::stats::{JoinLeft, JoinStats};
use crate::restore::{SubtaskValue, TimerMirror};
use crate::window::{TimeWindow, TimeWindows};

const NOT_STARTED: &str = "window_join: used before on_start";

/// Joins two keyed streams window by window.
pub trait WindowJoin<K, L> {
    /// An inner join: `join(key, left, right)` for every pair of a left and a right record
    /// with equal keys in the same window (tumbling or sliding; a pair in several sliding
    /// windows is emitted once per window). A result's event time is its window's
    /// [`max_timestamp`](TimeWindow::max_timestamp); the results of a window are emitted when
    /// the watermark (the minimum of both inputs') reaches it, then the window's records are
    /// dropped.
    ///
    /// Both sides' records are buffered per key and window in keyed
    /// [`MapState`](omstream_core::state::MapState) until their window fires.
    ///
    /// A record is *late* when every window it belongs to has already fired: it is dropped
    /// and counted in the [`JoinStats`] (if any). A record in sliding windows some of which
    /// have fired joins in the others only.
    ///
    /// Session windows are not supported: the job fails to start with
    /// [`RuntimeError::InvalidConfig`], as it does for invalid window sizes.
    ///
    /// # Examples
    /// Page views and clicks of the same user in the same 10-second window:
    /// ```
    /// use std::time::Duration;
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let strategy = WatermarkStrategy::default();
    /// let views = env.from_records(
    ///     "views",
    ///     vec![Record::new(1_000, ("ann".to_string(), "/home".to_string()))],
    ///     strategy,
    /// );
    /// let clicks = env.from_records(
    ///     "clicks",
    ///     vec![
    ///         Record::new(4_000, ("ann".to_string(), "buy".to_string())),
    ///         Record::new(12_000, ("ann".to_string(), "later".to_string())),
    ///     ],
    ///     strategy,
    /// );
    /// let joined = views
    ///     .key_by(|(user, _): &(String, String)| user.clone())
    ///     .window_join(
    ///         &clicks.key_by(|(user, _): &(String, String)| user.clone()),
    ///         TimeWindows::tumbling(Duration::from_secs(10)),
    ///         |user, (_, page), (_, click)| format!("{user}: {page} -> {click}"),
    ///     )
    ///     .collect();
    /// env.execute().await.unwrap();
    /// let records = joined.records();
    /// assert_eq!(records.len(), 1);
    /// assert_eq!(records[0].value, "ann: /home -> buy");
    /// assert_eq!(records[0].timestamp, 9_999);
    /// # });
    /// ```
    fn window_join<R, O, F>(
        &self,
        right: &KeyedStream<K, R>,
        windows: TimeWindows,
        join: F,
    ) -> Stream<O>
    where
        R: StateValue,
        O: Data,
        F: Fn(&K, &L, &R) -> O + Send + Sync + 'static;
}

impl<K: StateKey, L: StateValue, S: JoinLeft<K, L>> WindowJoin<K, L> for S {
    fn window_join<R, O, F>(
        &self,
        right: &KeyedStream<K, R>,
        windows: TimeWindows,
        join: F,
    ) -> Stream<O>
    where
        R: StateValue,
        O: Data,
        F: Fn(&K, &L, &R) -> O + Send + Sync + 'static,
    {
        build(self.keyed(), right, windows, join, self.stats())
    }
}

fn build<K, L, R, O, F>(
    left: &KeyedStream<K, L>,
    right: &KeyedStream<K, R>,
    windows: TimeWindows,
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
    connect_keyed("window_join", left, right, move |_: &SubtaskInfo| {
        Box::new(WindowJoinOperator::new(
            windows,
            join.clone(),
            left_key.clone(),
            right_key.clone(),
            stats.clone(),
        )) as Box<dyn Operator<Either<L, R>, O>>
    })
}

pub(crate) struct WindowJoinOperator<K, L, R, F> {
    windows: TimeWindows,
    /// The one size of the windows, known once started.
    size: i64,
    join: Arc<F>,
    left_key: KeyFn<L, K>,
    right_key: KeyFn<R, K>,
    stats: JoinStats,
    buffers: Option<Buffers<K, L, R>>,
    /// One timer per (key, window), at the window's max timestamp; the window is recovered
    /// from it because tumbling and sliding windows have one size.
    timers: TimerQueue<K>,
    /// The timers, kept in keyed state for a restore.
    mirror: TimerMirror<K, ()>,
    /// The watermark seen, kept across restores.
    watermark: SubtaskValue<EventTime>,
    /// Scratch space for the windows of the record being handled (reused: no allocation per
    /// record).
    windows_of_record: Vec<TimeWindow>,
}

impl<K, L, R, F> WindowJoinOperator<K, L, R, F> {
    pub(crate) fn new(
        windows: TimeWindows,
        join: Arc<F>,
        left_key: KeyFn<L, K>,
        right_key: KeyFn<R, K>,
        stats: JoinStats,
    ) -> Self {
        WindowJoinOperator {
            windows,
            size: 0,
            join,
            left_key,
            right_key,
            stats,
            buffers: None,
            timers: TimerQueue::default(),
            mirror: TimerMirror::default(),
            watermark: SubtaskValue::watermark(),
            windows_of_record: Vec::new(),
        }
    }
}

struct Buffers<K, L, R> {
    left: Box<dyn MapState<K, TimeWindow, Vec<L>>>,
    right: Box<dyn MapState<K, TimeWindow, Vec<R>>>,
}

/// The one size of the windows, or why they cannot be joined.
fn window_size(windows: &TimeWindows) -> Result<i64, RuntimeError> {
    windows.validate()?;
    match *windows {
        TimeWindows::Tumbling { size, .. } | TimeWindows::Sliding { size, .. } => Ok(size),
        TimeWindows::Session { .. } => Err(RuntimeError::InvalidConfig(
            "window_join does not support session windows; use tumbling or sliding windows"
                .to_string(),
        )),
    }
}

/// Appends `value` to the buffer of every window in `windows` (cloned for all but the last),
/// scheduling the firing of the windows the key did not have yet.
fn buffer<K: StateKey, V: Clone>(
    state: &mut dyn MapState<K, TimeWindow, Vec<V>>,
    timers: &mut TimerQueue<K>,
    mirror: &mut TimerMirror<K, ()>,
    key: &K,
    windows: &[TimeWindow],
    value: V,
) {
    let Some((last, others)) = windows.split_last() else {
        return;
    };
    let mut add = |window: &TimeWindow, value: V| {
        let (list, created) = state.get_or_insert_with(key, window, &mut Vec::new);
        list.push(value);
        if created {
            // The other side may have scheduled it already; the queue (and the mirror) keep
            // one.
            mirror.add(key, window.max_timestamp(), ());
            timers.register(window.max_timestamp(), key.clone());
        }
    };
    for window in others {
        add(window, value.clone());
    }
    add(last, value);
}

impl<K, L, R, O, F> Operator<Either<L, R>, O> for WindowJoinOperator<K, L, R, F>
where
    K: StateKey,
    L: StateValue,
    R: StateValue,
    O: Data,
    F: Fn(&K, &L, &R) -> O + Send + Sync + 'static,
{
    fn on_start(&mut self, ctx: &mut OperatorContext<O>) -> OperatorResult {
        self.size = window_size(&self.windows)?;
        self.buffers = Some(Buffers {
            left: ctx.map_state("window_join.left"),
            right: ctx.map_state("window_join.right"),
        });
        self.mirror = TimerMirror::open(ctx, "window_join.timers");
        self.watermark.open(ctx, "window_join.watermark");
        for (key, time, ()) in self.mirror.restore() {
            self.timers.register(time, key);
        }
        Ok(())
    }

    fn process_batch(
        &mut self,
        batch: Batch<Either<L, R>>,
        _: &mut OperatorContext<O>,
    ) -> OperatorResult {
        let buffers = self.buffers.as_mut().ok_or(NOT_STARTED)?;
        let watermark = *self.watermark.get();
        for record in batch {
            let windows = &mut self.windows_of_record;
            windows.clear();
            self.windows.for_each_window(record.timestamp, |w| {
                // A window the watermark has reached has fired: too late for it.
                if w.max_timestamp() > watermark {
                    windows.push(w);
                }
            });
            if windows.is_empty() {
                if record.value.is_left() {
                    self.stats.count_late_left();
                } else {
                    self.stats.count_late_right();
                }
                continue;
            }
            match record.value {
                Either::Left(l) => {
                    let key = (self.left_key)(&l);
                    let (timers, mirror) = (&mut self.timers, &mut self.mirror);
                    buffer(&mut *buffers.left, timers, mirror, &key, windows, l);
                }
                Either::Right(r) => {
                    let key = (self.right_key)(&r);
                    let (timers, mirror) = (&mut self.timers, &mut self.mirror);
                    buffer(&mut *buffers.right, timers, mirror, &key, windows, r);
                }
            }
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: EventTime,
        ctx: &mut OperatorContext<O>,
    ) -> OperatorResult {
        let watermark = self.watermark.advance(watermark);
        let size = self.size;
        let buffers = self.buffers.as_mut().ok_or(NOT_STARTED)?;
        while let Some((time, key)) = self.timers.pop_due(watermark) {
            self.mirror.remove(&key, time, &());
            let window = TimeWindow::new(time + 1 - size, time + 1);
            let lefts = buffers.left.remove(&key, &window);
            let rights = buffers.right.remove(&key, &window);
            let (Some(lefts), Some(rights)) = (lefts, rights) else {
                continue;
            };
            ctx.output_mut().reserve(lefts.len() * rights.len());
            for l in &lefts {
                for r in &rights {
                    ctx.emit(time, (self.join)(&key, l, r));
                }
            }
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
