//! What keyed operators keep beside their keyed state, so that a subtask restored from a
//! checkpoint resumes exactly where the checkpoint left it.
//!
//! After a restore the operator is built afresh and its `on_start` finds its keyed state as of
//! the checkpoint; everything it held only in memory is gone:
//!
//! - **Timers** ([`TimerQueue`](omstream_core::runtime::TimerQueue)) are not checkpointed.
//!   Operators whose keyed state already says when each key fires (time windows keep a timer
//!   slot per key, sessions their pending sessions) rebuild their timers from it in `on_start`;
//!   the others mirror every timer in a value state ([`TimerMirror`]) and re-register them.
//! - **The watermark** an operator has seen decides which records are late, and a restored
//!   run's replayed input does not start with it; operators keep it per subtask
//!   ([`SubtaskValue`]) and start from it.
//!
//! Both are kept only when the state backend is durable: heap state is never restored, and
//! then they cost nothing (no state is created, and so none is listed in `keyed_state`).

use omstream_core::runtime::{EventTime, OperatorContext};
use omstream_core::state::{KeyedState, StateKey, StateValue, ValueState};

/// Timers of a keyed operator, mirrored per key in a value state: `(time, payload)` pairs,
/// the payload telling the operator which of its queues (and what else) the timer is.
///
/// The operator keeps firing from its in-memory queues; it calls [`add`](Self::add) when a
/// queue takes a new timer and [`remove`](Self::remove) when one fires or is deleted, and
/// [`restore`](Self::restore) in `on_start` lists the timers to register again.
pub(crate) struct TimerMirror<K, P> {
    state: Option<Box<dyn ValueState<K, KeyTimers<P>>>>,
}

/// The timers of one key: `(time, payload)`, in no particular order.
type KeyTimers<P> = Vec<(EventTime, P)>;

impl<K, P> Default for TimerMirror<K, P> {
    fn default() -> Self {
        TimerMirror { state: None }
    }
}

impl<K: StateKey, P: StateValue + PartialEq> TimerMirror<K, P> {
    /// The mirror of an operator subtask, in a value state called `name` when the state is
    /// durable (else nothing is kept).
    pub(crate) fn open<O>(ctx: &OperatorContext<O>, name: &str) -> Self {
        TimerMirror {
            state: ctx
                .state_backend()
                .is_durable()
                .then(|| ctx.value_state(name)),
        }
    }

    /// A timer of `key` at `time` was registered (the mirror is a set, like the queues: a
    /// timer already there is not added again).
    #[inline]
    pub(crate) fn add(&mut self, key: &K, time: EventTime, payload: P) {
        if let Some(state) = self.state.as_deref_mut() {
            let (timers, _) = state.get_or_insert_with(key, &mut Vec::new);
            if !timers.iter().any(|(t, p)| *t == time && *p == payload) {
                timers.push((time, payload));
            }
        }
    }

    /// A timer of `key` at `time` fired or was deleted.
    #[inline]
    pub(crate) fn remove(&mut self, key: &K, time: EventTime, payload: &P) {
        let Some(state) = self.state.as_deref_mut() else {
            return;
        };
        let Some(timers) = state.get_mut(key) else {
            return;
        };
        if let Some(at) = timers.iter().position(|(t, p)| *t == time && p == payload) {
            timers.swap_remove(at);
        }
        if timers.is_empty() {
            state.remove(key);
        }
    }

    /// Every stored timer, as `(key, time, payload)`: after a restore, the timers the
    /// checkpoint had pending (none on a fresh start).
    pub(crate) fn restore(&mut self) -> Vec<(K, EventTime, P)> {
        let Some(state) = self.state.as_deref_mut() else {
            return Vec::new();
        };
        let mut timers = Vec::new();
        state.for_each(&mut |key, stored| {
            timers.extend(stored.iter().map(|(t, p)| (key.clone(), *t, p.clone())));
        });
        timers
    }

    /// The mirror's state, when it has one, for checkpoints.
    pub(crate) fn keyed_state(&mut self) -> Option<&mut dyn KeyedState> {
        self.state
            .as_deref_mut()
            .map(|state| state as &mut dyn KeyedState)
    }
}

/// A value of an operator subtask as a whole rather than of a key, such as the watermark it
/// has seen, kept (on a durable backend) in a value state under the subtask's index with the
/// parallelism of the run that wrote it.
///
/// Every subtask writes its value when it starts, so the entries of one checkpoint all come
/// from one run. A subtask restored at the parallelism of that run takes its own entry; at
/// another parallelism (keys were redistributed) it merges the entries of every subtask of
/// that run with the `merge` function given (the minimum, for a watermark).
pub(crate) struct SubtaskValue<V> {
    value: V,
    initial: V,
    merge: fn(&V, &V) -> V,
    stored: Option<Stored<V>>,
}

struct Stored<V> {
    state: Box<dyn ValueState<u32, (u32, V)>>,
    index: u32,
    parallelism: u32,
}

impl<V: StateValue + PartialEq> SubtaskValue<V> {
    /// `initial` until opened (and when nothing was restored).
    pub(crate) fn new(initial: V, merge: fn(&V, &V) -> V) -> Self {
        SubtaskValue {
            value: initial.clone(),
            initial,
            merge,
            stored: None,
        }
    }

    /// Creates the state (durable backend only) called `name`, and takes the restored value.
    pub(crate) fn open<O>(&mut self, ctx: &OperatorContext<O>, name: &str) {
        if !ctx.state_backend().is_durable() {
            return;
        }
        let mut state: Box<dyn ValueState<u32, (u32, V)>> = ctx.value_state(name);
        let index = ctx.subtask().index as u32;
        let parallelism = ctx.subtask().parallelism as u32;
        // Subtask 0's entry tells the parallelism of the restored run (an entry of this
        // subtask's index may be older, from a run at another parallelism).
        let restored = match state.get(&0) {
            Some((restored, _)) => Some(*restored),
            None => state.get(&index).map(|(restored, _)| *restored),
        };
        let mut entry = |i: u32| match state.get(&i) {
            Some((_, value)) => value.clone(),
            None => self.initial.clone(),
        };
        self.value = match restored {
            None => self.initial.clone(),
            Some(restored) if restored == parallelism => entry(index),
            Some(restored) => {
                (1..restored).fold(entry(0), |merged, i| (self.merge)(&merged, &entry(i)))
            }
        };
        state.insert(index, (parallelism, self.value.clone()));
        self.stored = Some(Stored {
            state,
            index,
            parallelism,
        });
    }

    /// The current value.
    #[inline]
    pub(crate) fn get(&self) -> &V {
        &self.value
    }

    /// Sets the value (written to the state only when it changed).
    #[inline]
    pub(crate) fn set(&mut self, value: V) {
        if value == self.value {
            return;
        }
        if let Some(stored) = &mut self.stored {
            stored
                .state
                .insert(stored.index, (stored.parallelism, value.clone()));
        }
        self.value = value;
    }

    /// The value's state, when it has one, for checkpoints.
    pub(crate) fn keyed_state(&mut self) -> Option<&mut dyn KeyedState> {
        self.stored
            .as_mut()
            .map(|stored| &mut *stored.state as &mut dyn KeyedState)
    }
}

impl SubtaskValue<EventTime> {
    /// The watermark a subtask has seen: [`MIN_WATERMARK`](omstream_core::runtime::MIN_WATERMARK)
    /// on a fresh start; after a change of parallelism, the lowest of the restored subtasks'.
    pub(crate) fn watermark() -> Self {
        SubtaskValue::new(omstream_core::runtime::MIN_WATERMARK, |a, b| *a.min(b))
    }

    /// The input watermark reached `watermark`: returns the watermark to act on, never below
    /// one already seen (a restored subtask may be sent lower ones again).
    ///
    /// The end of input ([`MAX_WATERMARK`](omstream_core::runtime::MAX_WATERMARK)) is acted on
    /// but not kept: it says this run's input ended, not how far event time went. A later run
    /// restored from the final checkpoint reads new records, and they must not all be late.
    #[inline]
    pub(crate) fn advance(&mut self, watermark: EventTime) -> EventTime {
        let watermark = watermark.max(self.value);
        if watermark == omstream_core::runtime::MAX_WATERMARK {
            self.value = watermark;
        } else {
            self.set(watermark);
        }
        watermark
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use omstream_core::runtime::{ProcessingClock, SubtaskInfo, MAX_WATERMARK, MIN_WATERMARK};
    use omstream_core::state::{DurableBackend, StateBackend, StateStore};

    use super::*;

    fn context(
        store: &Arc<StateStore>,
        first: u64,
        index: usize,
        of: usize,
    ) -> OperatorContext<()> {
        let mut ctx =
            OperatorContext::new(SubtaskInfo::new("op", index, of), ProcessingClock::start());
        ctx.set_state_backend(StateBackend::Durable(DurableBackend::new(
            store.clone(),
            first,
            4,
        )));
        ctx
    }

    fn snapshot(states: Vec<&mut dyn KeyedState>, epoch: u64) {
        for state in states {
            state.snapshot(epoch).expect("snapshot");
        }
    }

    #[test]
    fn heap_state_keeps_nothing() {
        let ctx: OperatorContext<()> =
            OperatorContext::new(SubtaskInfo::new("op", 0, 1), ProcessingClock::start());
        let mut mirror: TimerMirror<u32, ()> = TimerMirror::open(&ctx, "timers");
        mirror.add(&1, 10, ());
        assert!(mirror.restore().is_empty());
        assert!(mirror.keyed_state().is_none());
        let mut watermark = SubtaskValue::watermark();
        watermark.open(&ctx, "watermark");
        assert_eq!(watermark.advance(5), 5);
        assert_eq!(watermark.advance(3), 5, "never goes back");
        assert!(watermark.keyed_state().is_none());
    }

    #[test]
    fn timers_and_watermarks_come_back_as_of_the_restored_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(dir.path()).unwrap());
        let first = store.begin_run(0).unwrap();
        let ctx = context(&store, first, 0, 1);
        let mut mirror: TimerMirror<u32, u8> = TimerMirror::open(&ctx, "timers");
        let mut watermark = SubtaskValue::watermark();
        watermark.open(&ctx, "watermark");
        for key in 0..10 {
            mirror.add(&key, 100 + i64::from(key), 1);
            mirror.add(&key, 200, 0);
            mirror.add(&key, 200, 0); // the same timer: kept once
        }
        mirror.remove(&3, 200, &0);
        mirror.remove(&3, 103, &1);
        mirror.remove(&4, 200, &1); // not there: nothing happens
        watermark.advance(50);
        store.set_last_triggered_epoch(first).unwrap();
        snapshot(
            mirror
                .keyed_state()
                .into_iter()
                .chain(watermark.keyed_state())
                .collect(),
            first,
        );
        // Changes after the checkpoint are lost in the crash.
        mirror.add(&11, 300, 0);
        mirror.remove(&5, 200, &0);
        watermark.advance(70);
        drop((mirror, watermark, ctx));

        let first = store.begin_run(first).unwrap();
        let ctx = context(&store, first, 0, 1);
        let mut mirror: TimerMirror<u32, u8> = TimerMirror::open(&ctx, "timers");
        let mut restored = mirror.restore();
        restored.sort();
        let mut expected: Vec<(u32, EventTime, u8)> = (0..10)
            .filter(|key| *key != 3)
            .flat_map(|key| [(key, 100 + i64::from(key), 1), (key, 200, 0)])
            .collect();
        expected.sort();
        assert_eq!(restored, expected);
        let mut watermark = SubtaskValue::watermark();
        watermark.open(&ctx, "watermark");
        assert_eq!(*watermark.get(), 50);
    }

    /// Regression: the final checkpoint kept the end of input as the watermark, and a job
    /// run again from it dropped every new record as late.
    #[test]
    fn the_end_of_input_is_acted_on_but_not_restored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(dir.path()).unwrap());
        let first = store.begin_run(0).unwrap();
        let ctx = context(&store, first, 0, 1);
        let mut watermark = SubtaskValue::watermark();
        watermark.open(&ctx, "watermark");
        watermark.advance(50);
        assert_eq!(watermark.advance(MAX_WATERMARK), MAX_WATERMARK);
        assert_eq!(watermark.advance(60), MAX_WATERMARK, "the input has ended");
        store.set_last_triggered_epoch(first).unwrap();
        snapshot(watermark.keyed_state().into_iter().collect(), first);
        drop((watermark, ctx));

        let first = store.begin_run(first).unwrap();
        let ctx = context(&store, first, 0, 1);
        let mut watermark = SubtaskValue::watermark();
        watermark.open(&ctx, "watermark");
        assert_eq!(*watermark.get(), 50);
    }

    #[test]
    fn a_changed_parallelism_merges_the_values_of_every_restored_subtask() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(dir.path()).unwrap());
        let first = store.begin_run(0).unwrap();
        store.set_last_triggered_epoch(first).unwrap();
        // Three subtasks; the third never saw a watermark.
        for (index, seen) in [(0, Some(40)), (1, Some(30)), (2, None)] {
            let ctx = context(&store, first, index, 3);
            let mut watermark = SubtaskValue::watermark();
            watermark.open(&ctx, "watermark");
            if let Some(seen) = seen {
                watermark.advance(seen);
            }
            snapshot(watermark.keyed_state().into_iter().collect(), first);
        }
        let restored = |store: &Arc<StateStore>, first, index, of| {
            let ctx = context(store, first, index, of);
            let mut watermark = SubtaskValue::watermark();
            watermark.open(&ctx, "watermark");
            (*watermark.get(), watermark)
        };
        let second = store.begin_run(first).unwrap();
        assert_eq!(restored(&store, second, 1, 3).0, 30, "same parallelism");
        // At parallelism 2, every subtask starts from the lowest: subtask 2 had none.
        let (wm0, mut w0) = restored(&store, second, 0, 2);
        let (wm1, mut w1) = restored(&store, second, 1, 2);
        assert_eq!((wm0, wm1), (MIN_WATERMARK, MIN_WATERMARK));
        w0.advance(90);
        w1.advance(80);
        store.set_last_triggered_epoch(second).unwrap();
        snapshot(w0.keyed_state().into_iter().collect(), second);
        snapshot(w1.keyed_state().into_iter().collect(), second);
        // Back to 3: the stale entry of subtask 2 (from the first run) is not read.
        let third = store.begin_run(second).unwrap();
        assert_eq!(restored(&store, third, 2, 3).0, 80);
        assert_eq!(restored(&store, third, 0, 2).0, 90);
    }
}
