//! Full-window functions: a window keeps its records and a function sees them all at once when
//! it fires. Slower than an aggregate (every record is stored), for what no aggregate can do:
//! medians, sorting, pattern checks.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use omstream_core::runtime::{Data, EventTime, OperatorContext};
use omstream_core::state::{KeyedState, ListState, StateKey, StateValue, ValueState};
use serde::{Deserialize, Serialize};

use super::assigner::TimeWindow;
use super::contents::{Firing, StoredKey, WindowContents};
use super::key_timers::NO_TIMER;

/// A full-window function: `(key, window, records) -> result`.
pub(crate) type WindowFn<K, T, O> = Arc<dyn Fn(&K, &TimeWindow, &[T]) -> O + Send + Sync>;

/// A key's ids (sorted) with their record counts, and its window timer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RecordIds {
    ids: Vec<(i64, u64)>,
    timer: EventTime,
}

impl RecordIds {
    fn in_range<'a>(&'a self, range: &'a Range<i64>) -> impl Iterator<Item = i64> + 'a {
        self.ids
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| range.contains(id))
    }

    fn position(&self, id: i64) -> Result<usize, usize> {
        self.ids.binary_search_by_key(&id, |(i, _)| *i)
    }
}

/// Records per id in a list state keyed by `(key, id)`, with the ids of each key (and their
/// record counts) in a value state, so that a key's ids are known without reading the lists.
pub(crate) struct RecordContents<K, T, O> {
    function: WindowFn<K, T, O>,
    index: Option<Box<dyn ValueState<K, RecordIds>>>,
    records: Option<Box<dyn ListState<(K, i64), T>>>,
    output: PhantomData<fn() -> O>,
}

impl<K, T, O> RecordContents<K, T, O> {
    pub(crate) fn new(function: WindowFn<K, T, O>) -> Self {
        RecordContents {
            function,
            index: None,
            records: None,
            output: PhantomData,
        }
    }
}

/// The two states, created in `open`.
macro_rules! states {
    ($self:ident) => {
        (
            $self
                .index
                .as_deref_mut()
                .expect("window state is created in on_start"),
            $self
                .records
                .as_deref_mut()
                .expect("window state is created in on_start"),
        )
    };
}

impl<K: StateKey, T: StateValue + Sync, O: Data> RecordContents<K, T, O> {
    /// The result over the lists of `ids` of `key`.
    fn apply(&mut self, key: &K, window: &TimeWindow, ids: &[i64]) -> O {
        let (_, records) = states!(self);
        match ids {
            // One pane or session: hand the stored list over as it is.
            [id] => (self.function)(key, window, records.get(&(key.clone(), *id))),
            _ => {
                let mut all = Vec::new();
                for id in ids {
                    all.extend_from_slice(records.get(&(key.clone(), *id)));
                }
                (self.function)(key, window, &all)
            }
        }
    }

    /// Removes the lists of `ids` of `key` (the index is updated by the caller).
    fn drop_lists(&mut self, key: &K, ids: impl IntoIterator<Item = i64>) {
        let (_, records) = states!(self);
        for id in ids {
            records.take(&(key.clone(), id));
        }
    }
}

impl<K: StateKey, T: StateValue + Sync, O: Data> WindowContents<K, T> for RecordContents<K, T, O> {
    type Out = O;

    fn open<X>(&mut self, ctx: &OperatorContext<X>, _: usize) {
        self.index = Some(ctx.value_state("window-record-ids"));
        self.records = Some(ctx.list_state("window-records"));
    }

    fn add(&mut self, key: &K, id: i64, value: T) -> (bool, &mut EventTime) {
        let (index, records) = states!(self);
        records.add(&(key.clone(), id), value);
        let (ids, _) = index.get_or_insert_with(key, &mut || RecordIds {
            ids: Vec::new(),
            timer: NO_TIMER,
        });
        let created = match ids.position(id) {
            Ok(at) => {
                ids.ids[at].1 += 1;
                false
            }
            Err(at) => {
                ids.ids.insert(at, (id, 1));
                true
            }
        };
        (created, &mut ids.timer)
    }

    fn result(&mut self, key: &K, window: &TimeWindow, range: Range<i64>) -> Option<(O, usize)> {
        let (index, _) = states!(self);
        let ids: Vec<i64> = index.get(key)?.in_range(&range).collect();
        if ids.is_empty() {
            return None;
        }
        Some((self.apply(key, window, &ids), ids.len()))
    }

    fn take_result(&mut self, key: &K, window: &TimeWindow, id: i64) -> Option<O> {
        let (index, records) = states!(self);
        let ids = index.get_mut(key)?;
        let at = ids.position(id).ok()?;
        ids.ids.remove(at);
        if ids.ids.is_empty() {
            index.remove(key);
        }
        let list = records.take(&(key.clone(), id));
        Some((self.function)(key, window, &list))
    }

    fn merge(&mut self, key: &K, into: i64, from: i64) {
        let (index, records) = states!(self);
        let Some(ids) = index.get_mut(key) else {
            return;
        };
        let Ok(at) = ids.position(from) else {
            return;
        };
        let (_, moved) = ids.ids.remove(at);
        match ids.position(into) {
            Ok(at) => ids.ids[at].1 += moved,
            Err(at) => ids.ids.insert(at, (into, moved)),
        }
        let target = (key.clone(), into);
        for record in records.take(&(key.clone(), from)) {
            records.add(&target, record);
        }
    }

    fn remove(&mut self, key: &K, id: i64) {
        let (index, _) = states!(self);
        let Some(ids) = index.get_mut(key) else {
            return;
        };
        if let Ok(at) = ids.position(id) {
            ids.ids.remove(at);
            if ids.ids.is_empty() {
                index.remove(key);
            }
            self.drop_lists(key, [id]);
        }
    }

    fn retain_from(&mut self, key: &K, from: i64) {
        let (index, _) = states!(self);
        let Some(ids) = index.get_mut(key) else {
            return;
        };
        let below = ids.ids.partition_point(|(id, _)| *id < from);
        let dropped: Vec<i64> = ids.ids.drain(..below).map(|(id, _)| id).collect();
        if ids.ids.is_empty() {
            index.remove(key);
        }
        self.drop_lists(key, dropped);
    }

    fn fire(
        &mut self,
        key: &K,
        firing: &Firing,
        next_timer: impl FnOnce(i64) -> EventTime,
    ) -> Option<(Option<O>, Option<EventTime>)> {
        let (index, _) = states!(self);
        let ids = index.get_mut(key)?;
        if ids.timer != firing.time {
            return None;
        }
        let in_window: Vec<i64> = ids.in_range(&firing.ids).collect();
        let next = ids
            .ids
            .iter()
            .map(|(id, _)| *id)
            .find(|id| *id >= firing.later_from)
            .map(next_timer);
        ids.timer = next.unwrap_or(NO_TIMER);
        let result = (!in_window.is_empty()).then(|| self.apply(key, &firing.window, &in_window));
        if firing.drop_earlier {
            self.retain_from(key, firing.later_from);
        }
        Some((result, next))
    }

    fn stored_keys(&mut self) -> Vec<StoredKey<K>> {
        let (index, _) = states!(self);
        let mut stored = Vec::new();
        index.for_each(&mut |key, ids| {
            let (timer, ids) = (ids.timer, ids.ids.iter().map(|(id, _)| *id).collect());
            stored.push(StoredKey {
                key: key.clone(),
                timer,
                ids,
            });
        });
        stored
    }

    fn keyed_state(&mut self) -> Vec<&mut dyn KeyedState> {
        let mut states: Vec<&mut dyn KeyedState> = Vec::new();
        if let Some(index) = self.index.as_deref_mut() {
            states.push(index);
        }
        if let Some(records) = self.records.as_deref_mut() {
            states.push(records);
        }
        states
    }
}
