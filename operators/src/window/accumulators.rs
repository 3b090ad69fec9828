//! The accumulators of an aggregate, per key: one per pane, session or count pane.
//!
//! They live in a value state per key ([`Accumulators`]) rather than in a map state keyed by
//! `(key, id)`: almost every record goes to the key's newest entry, which is kept inline in
//! the key's state slot, so a record costs one hash lookup and touches one cache line, and a
//! sliding window's older panes (a short sorted vector) are only read when a window fires.
//! Measured on 100,000 keys, a map state per `(key, pane)` made sliding windows several times
//! slower than tumbling ones; this layout keeps them within twice.

use std::marker::PhantomData;
use std::ops::Range;

use omstream_core::runtime::{EventTime, OperatorContext};
use omstream_core::state::{KeyedState, StateKey, ValueState};
use serde::{Deserialize, Serialize};

use super::aggregate::AggregateFunction;
use super::assigner::TimeWindow;
use super::contents::{Firing, StoredKey, WindowContents};
use super::key_timers::NO_TIMER;

/// A key's accumulators by id: never empty (a key without any has no state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Accumulators<A> {
    /// The entry with the largest id, where records usually go.
    newest: (i64, A),
    /// The other entries, sorted by id, all below `newest`'s.
    older: Vec<(i64, A)>,
    /// The key's window timer (see [`KeyTimers`](super::key_timers::KeyTimers)).
    timer: EventTime,
}

impl<A> Accumulators<A> {
    pub(crate) fn new(id: i64, acc: A) -> Self {
        Accumulators {
            newest: (id, acc),
            older: Vec::new(),
            timer: NO_TIMER,
        }
    }

    /// The first id at or after `from`.
    pub(crate) fn first_from(&self, from: i64) -> Option<i64> {
        let at = self.older.partition_point(|(i, _)| *i < from);
        match self.older.get(at) {
            Some((id, _)) => Some(*id),
            None => (self.newest.0 >= from).then_some(self.newest.0),
        }
    }

    /// The accumulator of `id`, created by `create` when absent (the flag says so). A key
    /// that gets a second entry makes room for `capacity` at once.
    #[inline]
    pub(crate) fn entry(
        &mut self,
        id: i64,
        capacity: usize,
        create: impl FnOnce() -> A,
    ) -> (&mut A, bool) {
        if id == self.newest.0 {
            return (&mut self.newest.1, false);
        }
        if self.older.capacity() == 0 {
            self.older.reserve_exact(capacity.max(1));
        }
        if id > self.newest.0 {
            let previous = std::mem::replace(&mut self.newest, (id, create()));
            self.older.push(previous);
            return (&mut self.newest.1, true);
        }
        match self.older.binary_search_by_key(&id, |(i, _)| *i) {
            Ok(at) => (&mut self.older[at].1, false),
            Err(at) => {
                self.older.insert(at, (id, create()));
                (&mut self.older[at].1, true)
            }
        }
    }

    /// Every entry, by id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &(i64, A)> {
        self.older.iter().chain(std::iter::once(&self.newest))
    }

    /// Removes `id`'s entry, unless it is the only one (then the caller drops the whole state:
    /// `Err(())`).
    pub(crate) fn remove(&mut self, id: i64) -> Result<Option<A>, ()> {
        if id == self.newest.0 {
            let Some(next) = self.older.pop() else {
                return Err(());
            };
            return Ok(Some(std::mem::replace(&mut self.newest, next).1));
        }
        Ok(self
            .older
            .binary_search_by_key(&id, |(i, _)| *i)
            .ok()
            .map(|at| self.older.remove(at).1))
    }

    /// Drops the entries with ids below `from`; false when none is left.
    pub(crate) fn retain_from(&mut self, from: i64) -> bool {
        let below = self.older.partition_point(|(i, _)| *i < from);
        self.older.drain(..below);
        self.newest.0 >= from
    }
}

/// The result over the accumulators with ids in `ids`, and how many there were.
fn merged<T, A: AggregateFunction<T>>(
    function: &A,
    accs: &Accumulators<A::Acc>,
    ids: &Range<i64>,
) -> Option<(A::Out, usize)> {
    let mut in_window = accs.iter().filter(|(id, _)| ids.contains(id));
    let (_, first) = in_window.next()?;
    let Some((_, second)) = in_window.next() else {
        // One pane (a tumbling window, a session): no merge, no copy.
        return Some((function.result(first), 1));
    };
    let mut merged = first.clone();
    function.merge(&mut merged, second);
    let mut count = 2;
    for (_, acc) in in_window {
        function.merge(&mut merged, acc);
        count += 1;
    }
    Some((function.result(&merged), count))
}

/// Accumulators of an [`AggregateFunction`] per key and id.
pub(crate) struct AggregateContents<K, T, A: AggregateFunction<T>> {
    function: A,
    state: Option<Box<dyn ValueState<K, Accumulators<A::Acc>>>>,
    /// Room for the other entries of a key, made when it gets a second one.
    older_capacity: usize,
    input: PhantomData<fn(T)>,
}

impl<K, T, A: AggregateFunction<T>> AggregateContents<K, T, A> {
    pub(crate) fn new(function: A) -> Self {
        AggregateContents {
            function,
            state: None,
            older_capacity: 0,
            input: PhantomData,
        }
    }
}

/// The state and the function, borrowed apart.
macro_rules! parts {
    ($self:ident) => {
        (
            &$self.function,
            $self
                .state
                .as_deref_mut()
                .expect("window state is created in on_start"),
        )
    };
}

impl<K: StateKey, T: 'static, A: AggregateFunction<T>> WindowContents<K, T>
    for AggregateContents<K, T, A>
{
    type Out = A::Out;

    fn open<O>(&mut self, ctx: &OperatorContext<O>, ids_per_key: usize) {
        self.state = Some(ctx.value_state("window-accumulators"));
        // A pane waits in `older` for the window that closes it while the next one starts.
        self.older_capacity = ids_per_key;
    }

    #[inline]
    fn add(&mut self, key: &K, id: i64, value: T) -> (bool, &mut EventTime) {
        let capacity = self.older_capacity;
        let (function, state) = parts!(self);
        let (accs, new_key) =
            state.get_or_insert_with(key, &mut || Accumulators::new(id, function.create()));
        let (acc, created) = accs.entry(id, capacity, || function.create());
        function.add(acc, &value);
        (new_key || created, &mut accs.timer)
    }

    fn result(&mut self, key: &K, _: &TimeWindow, ids: Range<i64>) -> Option<(A::Out, usize)> {
        let (function, state) = parts!(self);
        merged(function, state.get(key)?, &ids)
    }

    fn fire(
        &mut self,
        key: &K,
        firing: &Firing,
        next_timer: impl FnOnce(i64) -> EventTime,
    ) -> Option<(Option<A::Out>, Option<EventTime>)> {
        let (function, state) = parts!(self);
        let accs = state.get_mut(key)?;
        if accs.timer != firing.time {
            return None;
        }
        let result = merged(function, accs, &firing.ids).map(|(out, _)| out);
        let next = accs.first_from(firing.later_from).map(next_timer);
        accs.timer = next.unwrap_or(NO_TIMER);
        if firing.drop_earlier && !accs.retain_from(firing.later_from) {
            state.remove(key);
        }
        Some((result, next))
    }

    fn take_result(&mut self, key: &K, _: &TimeWindow, id: i64) -> Option<A::Out> {
        let (function, state) = parts!(self);
        match state.get_mut(key)?.remove(id) {
            Ok(acc) => acc.map(|acc| function.result(&acc)),
            Err(()) => {
                let accs = state.remove(key)?;
                Some(function.result(&accs.newest.1))
            }
        }
    }

    fn merge(&mut self, key: &K, into: i64, from: i64) {
        let (function, state) = parts!(self);
        let Some(accs) = state.get_mut(key) else {
            return;
        };
        // The key has another entry (`into`), so removing `from` never empties it.
        if let Ok(Some(other)) = accs.remove(from) {
            let (acc, _) = accs.entry(into, 0, || function.create());
            function.merge(acc, &other);
        }
    }

    fn remove(&mut self, key: &K, id: i64) {
        let (_, state) = parts!(self);
        if let Some(Err(())) = state.get_mut(key).map(|accs| accs.remove(id)) {
            state.remove(key);
        }
    }

    fn retain_from(&mut self, key: &K, from: i64) {
        let (_, state) = parts!(self);
        if let Some(false) = state.get_mut(key).map(|accs| accs.retain_from(from)) {
            state.remove(key);
        }
    }

    fn stored_keys(&mut self) -> Vec<StoredKey<K>> {
        let (_, state) = parts!(self);
        let mut stored = Vec::new();
        // Values are visited, not loaded: a restore caches none of the accumulators, which
        // the job reads back as their keys come up.
        state.for_each(&mut |key, accs| {
            let ids = accs.iter().map(|(id, _)| *id).collect();
            let timer = accs.timer;
            stored.push(StoredKey {
                key: key.clone(),
                timer,
                ids,
            });
        });
        stored
    }

    fn keyed_state(&mut self) -> Vec<&mut dyn KeyedState> {
        self.state
            .as_deref_mut()
            .map(|state| state as &mut dyn KeyedState)
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids<A>(accs: &Accumulators<A>) -> Vec<i64> {
        accs.iter().map(|(id, _)| *id).collect()
    }

    #[test]
    fn entries_stay_sorted_with_the_newest_inline() {
        let mut accs = Accumulators::new(10, 1);
        assert_eq!(accs.entry(10, 4, || 0), (&mut 1, false));
        *accs.entry(20, 4, || 0).0 += 2;
        *accs.entry(5, 4, || 0).0 += 5;
        *accs.entry(15, 4, || 0).0 += 15;
        assert_eq!(accs.entry(15, 4, || 0), (&mut 15, false));
        assert_eq!(ids(&accs), [5, 10, 15, 20]);
        assert_eq!(accs.newest, (20, 2));
        // Removing the newest promotes the next one.
        assert_eq!(accs.remove(20), Ok(Some(2)));
        assert_eq!(accs.newest, (15, 15));
        assert_eq!(accs.remove(7), Ok(None));
        assert_eq!(accs.first_from(6), Some(10));
        assert_eq!(accs.first_from(11), Some(15));
        assert_eq!(accs.first_from(16), None);
        assert_eq!(accs.remove(5), Ok(Some(5)));
        assert!(accs.retain_from(11));
        assert_eq!(ids(&accs), [15]);
        assert_eq!(
            accs.remove(15),
            Err(()),
            "the last entry goes with the state"
        );
        assert!(!accs.retain_from(16));
    }
}
