//! Keyed state for operators: value, map and list state behind traits, so that where the state
//! lives (the heap today; sled with checkpoints) changes without touching operator code.
//!
//! Every handle is scoped to one operator subtask and takes the key explicitly; a subtask only
//! ever sees the keys of its key groups. Keys and values are serde types so that a persistent
//! backend can store them.

mod heap;

use std::fmt;
use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use heap::{HeapListState, HeapMapState, HeapValueState};

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

/// One value per key.
pub trait ValueState<K, V>: Send {
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
    /// How many keys have a value.
    fn len(&self) -> usize;
    /// Whether no key has a value.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A sorted map per key (user key to value).
pub trait MapState<K, UK, V>: Send {
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
pub trait ListState<K, V>: Send {
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateBackend {
    /// In the subtask's memory, as typed values: the fastest; lost when the process stops.
    #[default]
    Heap,
}

impl StateBackend {
    /// A value state called `name` for the operator subtask `task`.
    pub fn value_state<K: StateKey, V: StateValue>(
        &self,
        task: &str,
        name: &str,
    ) -> Box<dyn ValueState<K, V>> {
        let _ = (task, name);
        match self {
            StateBackend::Heap => Box::new(HeapValueState::default()),
        }
    }

    /// A map state called `name` for the operator subtask `task`.
    pub fn map_state<K: StateKey, UK: StateKey + Ord, V: StateValue>(
        &self,
        task: &str,
        name: &str,
    ) -> Box<dyn MapState<K, UK, V>> {
        let _ = (task, name);
        match self {
            StateBackend::Heap => Box::new(HeapMapState::default()),
        }
    }

    /// A list state called `name` for the operator subtask `task`.
    pub fn list_state<K: StateKey, V: StateValue>(
        &self,
        task: &str,
        name: &str,
    ) -> Box<dyn ListState<K, V>> {
        let _ = (task, name);
        match self {
            StateBackend::Heap => Box::new(HeapListState::default()),
        }
    }
}
