//! The operator behind the stream-table joins: each left record waits until the watermark
//! reaches its time, then meets the table's version for its key as of that time.
//!
//! Restore: the timers (waiting records and version pruning) are mirrored per key in keyed
//! state (durable backend, [`TimerMirror`]) and registered again in `on_start`; the watermark
//! and the newest pruned tombstone, which decide what is late, are kept per subtask
//! ([`SubtaskValue`]).

use std::sync::Arc;

use omstream_core::runtime::{
    Batch, Data, EventTime, Operator, OperatorContext, OperatorResult, Record, TimerQueue,
    MAX_WATERMARK, MIN_WATERMARK,
};
use omstream_core::state::{KeyedState, MapState, StateKey, StateValue};
use serde::{Deserialize, Serialize};

use super::connect::KeyFn;
use super::either::Either;
use super::stats::JoinStats;
use crate::restore::{SubtaskValue, TimerMirror};

const NOT_STARTED: &str = "join_table: used before on_start";

/// A temporal join of left records `L` with a table kept from updates `U` (each one the
/// table's value `R` for its key from its time on, or `None`: deleted).
pub(crate) struct TemporalJoinOperator<K, L, U, R, F> {
    join: Arc<F>,
    left_key: KeyFn<L, K>,
    table_key: KeyFn<U, K>,
    table_value: fn(U) -> Option<R>,
    stats: JoinStats,
    state: Option<State<K, L, R>>,
    /// One timer per (key, time) of waiting left records, at that time.
    waiting: TimerQueue<K>,
    /// One timer per table version, at its time: once the watermark is there, the versions of
    /// the key before it are no longer needed.
    prune: TimerQueue<K>,
    watermark: EventTime,
    /// Deleted keys whose tombstone was pruned leave no state; a late left record before the
    /// newest such tombstone cannot be told apart from one of a key never there.
    pruned_tombstones_up_to: EventTime,
    /// Scratch space for pruning (reused: no allocation per prune).
    stale: Vec<EventTime>,
    /// Both timer queues, kept in keyed state for a restore.
    mirror: TimerMirror<K, Queue>,
    /// `(watermark, pruned_tombstones_up_to)`, kept across restores; after a change of
    /// parallelism, the lowest watermark and the highest tombstone of the restored subtasks.
    progress: SubtaskValue<(EventTime, EventTime)>,
}

/// Which queue a mirrored timer is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Queue {
    Waiting,
    Prune,
}

struct State<K, L, R> {
    /// Left records waiting for the watermark, per key and time.
    waiting: Box<dyn MapState<K, EventTime, Vec<L>>>,
    /// Table versions per key and time; `None` is a deletion.
    versions: Box<dyn MapState<K, EventTime, Option<R>>>,
}

/// What the kept versions of a key say about time `at`.
struct Lookup {
    /// The time of the newest version at or before `at`.
    newest_at_or_before: Option<EventTime>,
    /// Whether the key has any version.
    any: bool,
}

fn lookup<K, R>(
    versions: &mut dyn MapState<K, EventTime, Option<R>>,
    key: &K,
    at: EventTime,
) -> Lookup {
    let mut found = Lookup {
        newest_at_or_before: None,
        any: false,
    };
    versions.for_each(key, &mut |&time, _| {
        found.any = true;
        if time <= at {
            found.newest_at_or_before = Some(time);
        }
    });
    found
}

impl<K, L, U, R, F> TemporalJoinOperator<K, L, U, R, F> {
    pub(crate) fn new(
        join: Arc<F>,
        left_key: KeyFn<L, K>,
        table_key: KeyFn<U, K>,
        table_value: fn(U) -> Option<R>,
        stats: JoinStats,
    ) -> Self {
        TemporalJoinOperator {
            join,
            left_key,
            table_key,
            table_value,
            stats,
            state: None,
            waiting: TimerQueue::default(),
            prune: TimerQueue::default(),
            watermark: MIN_WATERMARK,
            pruned_tombstones_up_to: MIN_WATERMARK,
            stale: Vec::new(),
            mirror: TimerMirror::default(),
            progress: SubtaskValue::new((MIN_WATERMARK, MIN_WATERMARK), |a, b| {
                (a.0.min(b.0), a.1.max(b.1))
            }),
        }
    }
}

impl<K, L, U, R, O, F> TemporalJoinOperator<K, L, U, R, F>
where
    K: StateKey,
    L: StateValue,
    U: Data,
    R: StateValue,
    O: Data,
    F: Fn(&K, &L, Option<&R>) -> Option<O> + Send + Sync + 'static,
{
    /// A left record at or behind the watermark: joined at once when the kept versions still
    /// tell the table as of its time, else dropped and counted.
    fn join_late(
        &mut self,
        key: K,
        time: EventTime,
        left: L,
        ctx: &mut OperatorContext<O>,
    ) -> OperatorResult {
        let state = self.state.as_mut().ok_or(NOT_STARTED)?;
        let found = lookup(&mut *state.versions, &key, time);
        let value = match found.newest_at_or_before {
            // Every pruned version is older than every kept one: nothing between is missing.
            Some(at) => state.versions.get(&key, &at).and_then(Option::as_ref),
            // Nothing kept: the key never had a version, unless it was deleted and pruned.
            None if !found.any && time >= self.pruned_tombstones_up_to => None,
            // Versions before the oldest kept one may have been pruned.
            None => {
                self.stats.count_late_left();
                return Ok(());
            }
        };
        if let Some(out) = (self.join)(&key, &left, value) {
            ctx.emit(time, out);
        }
        Ok(())
    }

    fn update_table(&mut self, key: K, time: EventTime, value: Option<R>) -> OperatorResult {
        let state = self.state.as_mut().ok_or(NOT_STARTED)?;
        if time <= self.watermark {
            // Left records up to the watermark were joined without it. Later ones see it,
            // unless a newer version is already known.
            self.stats.count_late_right();
            let found = lookup(&mut *state.versions, &key, self.watermark);
            if found
                .newest_at_or_before
                .is_some_and(|newest| time < newest)
            {
                return Ok(());
            }
        }
        state.versions.insert(&key, time, value);
        self.mirror.add(&key, time, Queue::Prune);
        self.prune.register(time, key);
        Ok(())
    }

    /// Keeps, of the key's versions, the newest at or before the watermark (the table as of
    /// any time not yet joined) and the later ones; a deletion with nothing after goes too.
    fn prune(&mut self, key: &K) -> OperatorResult {
        let state = self.state.as_mut().ok_or(NOT_STARTED)?;
        let watermark = self.watermark;
        let stale = &mut self.stale;
        stale.clear();
        let (mut deleted, mut any_after) = (false, false);
        state.versions.for_each(key, &mut |&time, value| {
            if time <= watermark {
                stale.push(time);
                deleted = value.is_none();
            } else {
                any_after = true;
            }
        });
        let Some(newest) = stale.pop() else {
            return Ok(());
        };
        for time in stale.iter() {
            state.versions.remove(key, time);
        }
        if deleted && !any_after {
            state.versions.remove(key, &newest);
            self.pruned_tombstones_up_to = self.pruned_tombstones_up_to.max(newest);
        }
        Ok(())
    }
}

impl<K, L, U, R, O, F> Operator<Either<L, U>, O> for TemporalJoinOperator<K, L, U, R, F>
where
    K: StateKey,
    L: StateValue,
    U: Data,
    R: StateValue,
    O: Data,
    F: Fn(&K, &L, Option<&R>) -> Option<O> + Send + Sync + 'static,
{
    fn on_start(&mut self, ctx: &mut OperatorContext<O>) -> OperatorResult {
        self.state = Some(State {
            waiting: ctx.map_state("join_table.waiting"),
            versions: ctx.map_state("join_table.versions"),
        });
        self.mirror = TimerMirror::open(ctx, "join_table.timers");
        self.progress.open(ctx, "join_table.progress");
        (self.watermark, self.pruned_tombstones_up_to) = *self.progress.get();
        for (key, time, queue) in self.mirror.restore() {
            match queue {
                Queue::Waiting => self.waiting.register(time, key),
                Queue::Prune => self.prune.register(time, key),
            };
        }
        Ok(())
    }

    fn process_batch(
        &mut self,
        batch: Batch<Either<L, U>>,
        ctx: &mut OperatorContext<O>,
    ) -> OperatorResult {
        for Record { timestamp, value } in batch {
            match value {
                Either::Left(left) => {
                    let key = (self.left_key)(&left);
                    if timestamp <= self.watermark {
                        self.join_late(key, timestamp, left, ctx)?;
                        continue;
                    }
                    let state = self.state.as_mut().ok_or(NOT_STARTED)?;
                    let (list, created) =
                        state
                            .waiting
                            .get_or_insert_with(&key, &timestamp, &mut Vec::new);
                    list.push(left);
                    if created {
                        // A new (key, time) of waiting records: its timer is new too.
                        self.mirror.add(&key, timestamp, Queue::Waiting);
                        self.waiting.register(timestamp, key);
                    }
                }
                Either::Right(update) => {
                    let key = (self.table_key)(&update);
                    self.update_table(key, timestamp, (self.table_value)(update))?;
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
        // A restored subtask may be sent lower watermarks again.
        let watermark = watermark.max(self.watermark);
        self.watermark = watermark;
        let state = self.state.as_mut().ok_or(NOT_STARTED)?;
        // Every waiting record up to the watermark first, against versions not yet pruned.
        while let Some((time, key)) = self.waiting.pop_due(watermark) {
            self.mirror.remove(&key, time, &Queue::Waiting);
            let Some(lefts) = state.waiting.remove(&key, &time) else {
                continue;
            };
            let found = lookup(&mut *state.versions, &key, time);
            let value = match found.newest_at_or_before {
                Some(at) => state.versions.get(&key, &at).and_then(Option::as_ref),
                None => None,
            };
            for left in &lefts {
                if let Some(out) = (self.join)(&key, left, value) {
                    ctx.emit(time, out);
                }
            }
        }
        while let Some((time, key)) = self.prune.pop_due(watermark) {
            self.mirror.remove(&key, time, &Queue::Prune);
            self.prune(&key)?;
        }
        // The end of input is not kept as the watermark: a later run restored from the final
        // checkpoint reads new records, which must not all count as late.
        let kept = if self.watermark == MAX_WATERMARK {
            self.progress.get().0
        } else {
            self.watermark
        };
        self.progress.set((kept, self.pruned_tombstones_up_to));
        Ok(())
    }

    fn keyed_state(&mut self) -> Vec<&mut dyn KeyedState> {
        let mut states: Vec<&mut dyn KeyedState> = Vec::new();
        if let Some(state) = self.state.as_mut() {
            states.push(&mut *state.waiting);
            states.push(&mut *state.versions);
        }
        states.extend(self.mirror.keyed_state());
        states.extend(self.progress.keyed_state());
        states
    }
}

#[cfg(test)]
mod tests;
