//! The state handles over a [`CachedTable`]: durable in sled (checkpointed jobs), or in memory
//! with a time to live.

use std::collections::BTreeMap;
use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::cached::CachedTable;
use super::error::StateError;
use super::{KeyedState, ListState, MapState, SnapshotStats, ValueState};

/// Value state over a cached table.
#[derive(Debug)]
pub struct CachedValueState<K, V> {
    table: CachedTable<K, V>,
    name: String,
}

impl<K, V> CachedValueState<K, V>
where
    K: Hash + Eq + Clone + Send + Serialize + DeserializeOwned + 'static,
    V: Clone + Send + Serialize + DeserializeOwned + 'static,
{
    pub(crate) fn new(name: &str, table: CachedTable<K, V>) -> Self {
        CachedValueState {
            table,
            name: name.to_string(),
        }
    }
}

impl<K, V> KeyedState for CachedValueState<K, V>
where
    K: Hash + Eq + Clone + Send + Serialize + DeserializeOwned + 'static,
    V: Clone + Send + Serialize + DeserializeOwned + 'static,
{
    fn state_name(&self) -> &str {
        &self.name
    }

    fn snapshot(&mut self, epoch: u64) -> Result<SnapshotStats, StateError> {
        self.table.snapshot(epoch)
    }
}

impl<K, V> ValueState<K, V> for CachedValueState<K, V>
where
    K: Hash + Eq + Clone + Send + Serialize + DeserializeOwned + 'static,
    V: Clone + Send + Serialize + DeserializeOwned + 'static,
{
    fn get(&mut self, key: &K) -> Option<&V> {
        self.table.get(key)
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.table.get_mut(key)
    }

    fn get_or_insert_with(&mut self, key: &K, init: &mut dyn FnMut() -> V) -> (&mut V, bool) {
        self.table.get_or_insert_with(key, init)
    }

    fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.table.insert(key, value)
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        self.table.remove(key)
    }

    fn keys(&self) -> Vec<K> {
        self.table.keys()
    }

    fn for_each(&mut self, f: &mut dyn FnMut(&K, &V)) {
        self.table.for_each_live(f);
    }

    fn len(&self) -> usize {
        self.table.len()
    }
}

/// Map state over a cached table of sorted maps, one per key.
#[derive(Debug)]
pub struct CachedMapState<K, UK, V> {
    table: CachedTable<K, BTreeMap<UK, V>>,
    name: String,
}

impl<K, UK, V> CachedMapState<K, UK, V>
where
    K: Hash + Eq + Clone + Send + Serialize + DeserializeOwned + 'static,
    UK: Ord + Clone + Send + Serialize + DeserializeOwned + 'static,
    V: Clone + Send + Serialize + DeserializeOwned + 'static,
{
    pub(crate) fn new(name: &str, table: CachedTable<K, BTreeMap<UK, V>>) -> Self {
        CachedMapState {
            table,
            name: name.to_string(),
        }
    }
}

impl<K, UK, V> KeyedState for CachedMapState<K, UK, V>
where
    K: Hash + Eq + Clone + Send + Serialize + DeserializeOwned + 'static,
    UK: Ord + Clone + Send + Serialize + DeserializeOwned + 'static,
    V: Clone + Send + Serialize + DeserializeOwned + 'static,
{
    fn state_name(&self) -> &str {
        &self.name
    }

    fn snapshot(&mut self, epoch: u64) -> Result<SnapshotStats, StateError> {
        self.table.snapshot(epoch)
    }
}

impl<K, UK, V> MapState<K, UK, V> for CachedMapState<K, UK, V>
where
    K: Hash + Eq + Clone + Send + Serialize + DeserializeOwned + 'static,
    UK: Ord + Clone + Send + Serialize + DeserializeOwned + 'static,
    V: Clone + Send + Serialize + DeserializeOwned + 'static,
{
    fn get(&mut self, key: &K, user_key: &UK) -> Option<&V> {
        self.table.get(key)?.get(user_key)
    }

    fn get_mut(&mut self, key: &K, user_key: &UK) -> Option<&mut V> {
        // Only mark the key changed when the entry exists.
        if !self.table.get(key)?.contains_key(user_key) {
            return None;
        }
        self.table.get_mut(key)?.get_mut(user_key)
    }

    fn get_or_insert_with(
        &mut self,
        key: &K,
        user_key: &UK,
        init: &mut dyn FnMut() -> V,
    ) -> (&mut V, bool) {
        let (map, _) = self.table.get_or_insert_with(key, &mut BTreeMap::new);
        let created = !map.contains_key(user_key);
        (map.entry(user_key.clone()).or_insert_with(init), created)
    }

    fn insert(&mut self, key: &K, user_key: UK, value: V) -> Option<V> {
        let (map, _) = self.table.get_or_insert_with(key, &mut BTreeMap::new);
        map.insert(user_key, value)
    }

    fn remove(&mut self, key: &K, user_key: &UK) -> Option<V> {
        if !self.table.get(key)?.contains_key(user_key) {
            return None;
        }
        let map = self.table.get_mut(key)?;
        let removed = map.remove(user_key);
        if map.is_empty() {
            self.table.remove(key);
        }
        removed
    }

    fn user_keys(&mut self, key: &K) -> Vec<UK> {
        self.table
            .get(key)
            .map(|map| map.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn for_each(&mut self, key: &K, f: &mut dyn FnMut(&UK, &V)) {
        if let Some(map) = self.table.get(key) {
            for (user_key, value) in map {
                f(user_key, value);
            }
        }
    }

    fn clear(&mut self, key: &K) {
        self.table.remove(key);
    }

    fn len(&self) -> usize {
        self.table.len()
    }
}

/// List state over a cached table of vectors, one per key.
#[derive(Debug)]
pub struct CachedListState<K, V> {
    table: CachedTable<K, Vec<V>>,
    name: String,
}

impl<K, V> CachedListState<K, V>
where
    K: Hash + Eq + Clone + Send + Serialize + DeserializeOwned + 'static,
    V: Clone + Send + Serialize + DeserializeOwned + 'static,
{
    pub(crate) fn new(name: &str, table: CachedTable<K, Vec<V>>) -> Self {
        CachedListState {
            table,
            name: name.to_string(),
        }
    }
}

impl<K, V> KeyedState for CachedListState<K, V>
where
    K: Hash + Eq + Clone + Send + Serialize + DeserializeOwned + 'static,
    V: Clone + Send + Serialize + DeserializeOwned + 'static,
{
    fn state_name(&self) -> &str {
        &self.name
    }

    fn snapshot(&mut self, epoch: u64) -> Result<SnapshotStats, StateError> {
        self.table.snapshot(epoch)
    }
}

impl<K, V> ListState<K, V> for CachedListState<K, V>
where
    K: Hash + Eq + Clone + Send + Serialize + DeserializeOwned + 'static,
    V: Clone + Send + Serialize + DeserializeOwned + 'static,
{
    fn add(&mut self, key: &K, value: V) {
        self.table
            .get_or_insert_with(key, &mut Vec::new)
            .0
            .push(value);
    }

    fn get(&mut self, key: &K) -> &[V] {
        self.table.get(key).map_or(&[], Vec::as_slice)
    }

    fn take(&mut self, key: &K) -> Vec<V> {
        self.table.remove(key).unwrap_or_default()
    }

    fn retain(&mut self, key: &K, keep: &mut dyn FnMut(&V) -> bool) {
        let Some(list) = self.table.get_mut(key) else {
            return;
        };
        list.retain(|v| keep(v));
        if list.is_empty() {
            self.table.remove(key);
        }
    }

    fn len(&self) -> usize {
        self.table.len()
    }
}
