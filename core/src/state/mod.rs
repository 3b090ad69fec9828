//! Keyed state for operators: value, map and list state behind traits, so that where the state
//! lives (the heap, or disk for checkpointed jobs) changes without touching operator code.
//!
//! Every handle is scoped to one operator subtask and takes the key explicitly; a subtask only
//! ever sees the keys of its key groups. Keys and values are serde types so that the durable
//! backend can store them.
//!
//! Durable state ([`StateBackend::Durable`]) keeps a working set in memory and versions on
//! disk ([`StateStore`]: sorted runs in run files, listed by a manifest in sled); a checkpoint
//! writes only what changed since the previous one. Every
//! handle is also a [`KeyedState`], which the runtime snapshots at each checkpoint barrier
//! through [`Operator::keyed_state`](crate::runtime::Operator::keyed_state).

mod cached;
mod compaction;
mod durable;
mod error;
mod files;
mod heap;
#[cfg(test)]
mod model_tests;
mod run;
mod store;

use std::fmt;
use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;

use std::sync::Arc;
use std::time::Duration;

pub use durable::{CachedListState, CachedMapState, CachedValueState};
pub use error::StateError;
pub use heap::{HeapListState, HeapMapState, HeapValueState};
pub use store::StateStore;

use crate::runtime::{ProcessingClock, SubtaskInfo};
use cached::{key_groups_of, CachedTable, Durable, Ttl};

/// What a state key must be.
pub trait StateKey:
    Hash + Eq + Clone + Send + Sync + fmt::Debug + Serialize + DeserializeOwned + 'static
{
}
impl<K: Hash + Eq + Clone + Send + Sync + fmt::Debug + Serialize + DeserializeOwned + 'static>
    StateKey for K
{
}

/// What a state value must be.
pub trait StateValue: Clone + Send + Serialize + DeserializeOwned + 'static {}
impl<V: Clone + Send + Serialize + DeserializeOwned + 'static> StateValue for V {}

/// What a snapshot of one state wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Entries written (changed or deleted keys).
    pub entries: u64,
    /// Bytes written by the snapshot itself: 0 for durable state, whose store's writer thread
    /// writes later (the checkpoint counts those bytes with
    /// [`StateStore::take_written_bytes`] after its flush).
    pub bytes: u64,
}

impl std::ops::AddAssign for SnapshotStats {
    fn add_assign(&mut self, other: Self) {
        self.entries += other.entries;
        self.bytes += other.bytes;
    }
}

/// What every state handle is to the runtime: something a checkpoint snapshots.
pub trait KeyedState: Send {
    /// The state's name, unique within its operator.
    fn state_name(&self) -> &str;

    /// Writes (or hands to the store's writer) what changed since the previous snapshot as
    /// part of checkpoint `epoch`; changes made after this call belong to the next checkpoint.
    fn snapshot(&mut self, epoch: u64) -> Result<SnapshotStats, StateError>;
}

/// One value per key.
pub trait ValueState<K, V>: KeyedState {
    /// The key's value.
    fn get(&mut self, key: &K) -> Option<&V>;
    /// The key's value, to change in place.
    fn get_mut(&mut self, key: &K) -> Option<&mut V>;
    /// The key's value, created by `init` when absent; the flag says whether it was created.
    fn get_or_insert_with(&mut self, key: &K, init: &mut dyn FnMut() -> V) -> (&mut V, bool);
    /// Sets the key's value, returning the old one.
    fn insert(&mut self, key: K, value: V) -> Option<V>;
    /// Removes the key's value.
    fn remove(&mut self, key: &K) -> Option<V>;
    /// Every key with a value, in no particular order.
    fn keys(&self) -> Vec<K>;
    /// Calls `f` on every key with a value and its value, in no particular order. Durable
    /// state reads what it does not hold in memory without caching it: the way to visit a
    /// state larger than memory (a restore re-registering timers, say) without loading it
    /// all.
    fn for_each(&mut self, f: &mut dyn FnMut(&K, &V)) {
        for key in self.keys() {
            if let Some(value) = self.get(&key) {
                f(&key, value);
            }
        }
    }
    /// How many keys have a value.
    fn len(&self) -> usize;
    /// Whether no key has a value.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A sorted map per key (user key to value).
pub trait MapState<K, UK, V>: KeyedState {
    /// The value under `user_key` of `key`.
    fn get(&mut self, key: &K, user_key: &UK) -> Option<&V>;
    /// The value under `user_key` of `key`, to change in place.
    fn get_mut(&mut self, key: &K, user_key: &UK) -> Option<&mut V>;
    /// The value under `user_key`, created by `init` when absent; the flag says whether it
    /// was created.
    fn get_or_insert_with(
        &mut self,
        key: &K,
        user_key: &UK,
        init: &mut dyn FnMut() -> V,
    ) -> (&mut V, bool);
    /// Sets a value, returning the old one.
    fn insert(&mut self, key: &K, user_key: UK, value: V) -> Option<V>;
    /// Removes a value.
    fn remove(&mut self, key: &K, user_key: &UK) -> Option<V>;
    /// The user keys of `key`, in order.
    fn user_keys(&mut self, key: &K) -> Vec<UK>;
    /// Calls `f` on every entry of `key`, in user-key order.
    fn for_each(&mut self, key: &K, f: &mut dyn FnMut(&UK, &V));
    /// Removes every entry of `key`.
    fn clear(&mut self, key: &K);
    /// How many keys have at least one entry.
    fn len(&self) -> usize;
    /// Whether no key has an entry.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A list per key, appended to.
pub trait ListState<K, V>: KeyedState {
    /// Appends to the key's list.
    fn add(&mut self, key: &K, value: V);
    /// The key's list (empty when it has none).
    fn get(&mut self, key: &K) -> &[V];
    /// Removes and returns the key's list.
    fn take(&mut self, key: &K) -> Vec<V>;
    /// Keeps the elements for which `keep` is true.
    fn retain(&mut self, key: &K, keep: &mut dyn FnMut(&V) -> bool);
    /// How many keys have a non-empty list.
    fn len(&self) -> usize;
    /// Whether no key has a list.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where an operator's keyed state lives.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum StateBackend {
    /// In the subtask's memory, as typed values: the fastest; lost when the process stops.
    #[default]
    Heap,
    /// A working set in memory over versions on disk: survives crashes through checkpoints,
    /// and may be larger than memory. Jobs with checkpoints use it.
    Durable(DurableBackend),
}

/// The durable backend of one run of a job.
#[derive(Debug, Clone)]
pub struct DurableBackend {
    store: Arc<StateStore>,
    /// The epoch that changes made before the run's first barrier belong to.
    first_epoch: u64,
    /// Most entries each state keeps in memory.
    cache_capacity: usize,
}

impl DurableBackend {
    /// The backend of a run over `store` whose first checkpoint will be `first_epoch`
    /// (from [`StateStore::begin_run`]).
    pub fn new(store: Arc<StateStore>, first_epoch: u64, cache_capacity: usize) -> Self {
        DurableBackend {
            store,
            first_epoch,
            cache_capacity,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<StateStore> {
        &self.store
    }

    fn table<K, V>(&self, subtask: &SubtaskInfo, name: &str, ttl: Option<Ttl>) -> CachedTable<K, V>
    where
        K: StateKey,
        V: Clone + Send + Serialize + DeserializeOwned + 'static,
    {
        let state_id = self
            .store
            .state_id(&subtask.operator, name)
            .unwrap_or_else(|e| panic!("state '{name}' of '{}': {e}", subtask.operator));
        let durable = Durable {
            store: self.store.clone(),
            state_id,
            key_groups: key_groups_of(subtask.index, subtask.parallelism),
            epoch: self.first_epoch,
        };
        CachedTable::new(name, Some(durable), ttl, self.cache_capacity)
    }
}

/// Options of one keyed state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateOptions {
    /// Entries not written for this long (processing time) are gone: reads no longer see them
    /// and they are dropped from the store when next written or checkpointed.
    pub ttl: Option<Duration>,
}

impl StateOptions {
    /// Options with a time to live.
    pub fn with_ttl(ttl: Duration) -> Self {
        StateOptions { ttl: Some(ttl) }
    }

    fn ttl(&self, clock: ProcessingClock) -> Option<Ttl> {
        self.ttl.map(|ttl| Ttl {
            millis: ttl.as_millis().min(i64::MAX as u128) as i64,
            clock,
        })
    }
}

/// Memory-only state with a TTL: a cached table without a store, as many entries as needed.
fn heap_table<K: StateKey, V: Clone + Send + Serialize + DeserializeOwned + 'static>(
    ttl: Ttl,
) -> CachedTable<K, V> {
    CachedTable::new("heap", None, Some(ttl), usize::MAX)
}

impl StateBackend {
    /// Whether state survives a crash (through checkpoints).
    pub fn is_durable(&self) -> bool {
        matches!(self, StateBackend::Durable(_))
    }

    /// A value state called `name` for an operator subtask.
    pub fn value_state<K: StateKey, V: StateValue>(
        &self,
        subtask: &SubtaskInfo,
        name: &str,
        options: StateOptions,
        clock: ProcessingClock,
    ) -> Box<dyn ValueState<K, V>> {
        match (self, options.ttl(clock)) {
            (StateBackend::Heap, None) => Box::new(HeapValueState::new(name)),
            (StateBackend::Heap, Some(ttl)) => {
                Box::new(CachedValueState::new(name, heap_table(ttl)))
            }
            (StateBackend::Durable(backend), ttl) => Box::new(CachedValueState::new(
                name,
                backend.table(subtask, name, ttl),
            )),
        }
    }

    /// A map state called `name` for an operator subtask.
    pub fn map_state<K: StateKey, UK: StateKey + Ord, V: StateValue>(
        &self,
        subtask: &SubtaskInfo,
        name: &str,
        options: StateOptions,
        clock: ProcessingClock,
    ) -> Box<dyn MapState<K, UK, V>> {
        match (self, options.ttl(clock)) {
            (StateBackend::Heap, None) => Box::new(HeapMapState::new(name)),
            (StateBackend::Heap, Some(ttl)) => Box::new(CachedMapState::new(name, heap_table(ttl))),
            (StateBackend::Durable(backend), ttl) => {
                Box::new(CachedMapState::new(name, backend.table(subtask, name, ttl)))
            }
        }
    }

    /// A list state called `name` for an operator subtask.
    pub fn list_state<K: StateKey, V: StateValue>(
        &self,
        subtask: &SubtaskInfo,
        name: &str,
        options: StateOptions,
        clock: ProcessingClock,
    ) -> Box<dyn ListState<K, V>> {
        match (self, options.ttl(clock)) {
            (StateBackend::Heap, None) => Box::new(HeapListState::new(name)),
            (StateBackend::Heap, Some(ttl)) => {
                Box::new(CachedListState::new(name, heap_table(ttl)))
            }
            (StateBackend::Durable(backend), ttl) => Box::new(CachedListState::new(
                name,
                backend.table(subtask, name, ttl),
            )),
        }
    }
}
