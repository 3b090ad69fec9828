//! The heap backend: typed hash maps in the subtask's memory.

use std::collections::BTreeMap;
use std::hash::Hash;

use std::fmt;
use std::hash::BuildHasher;

use hashbrown::hash_table::{Entry, HashTable};
use rustc_hash::{FxBuildHasher, FxHashMap};
use smallvec::SmallVec;

use super::{KeyedState, ListState, MapState, SnapshotStats, StateError, ValueState};

/// Value state in a hash table of `(key, value)` pairs: a lookup hashes the key once and
/// probes once, and a key is cloned only when it is inserted.
pub struct HeapValueState<K, V> {
    table: HashTable<(K, V)>,
    name: String,
}

impl<K, V> fmt::Debug for HeapValueState<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeapValueState")
            .field("len", &self.table.len())
            .finish()
    }
}

impl<K, V> Default for HeapValueState<K, V> {
    fn default() -> Self {
        Self::new("value")
    }
}

impl<K, V> HeapValueState<K, V> {
    /// An empty value state called `name`.
    pub fn new(name: &str) -> Self {
        HeapValueState {
            table: HashTable::new(),
            name: name.to_string(),
        }
    }
}

impl<K: Send, V: Send> KeyedState for HeapValueState<K, V> {
    fn state_name(&self) -> &str {
        &self.name
    }

    fn snapshot(&mut self, _: u64) -> Result<SnapshotStats, StateError> {
        Err(StateError::NotDurable {
            state: self.name.clone(),
        })
    }
}

#[inline]
fn hash_of<K: Hash + ?Sized>(key: &K) -> u64 {
    FxBuildHasher.hash_one(key)
}

impl<K: Hash + Eq + Clone + Send, V: Send> ValueState<K, V> for HeapValueState<K, V> {
    fn get(&mut self, key: &K) -> Option<&V> {
        self.table
            .find(hash_of(key), |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.table
            .find_mut(hash_of(key), |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    #[inline]
    fn get_or_insert_with(&mut self, key: &K, init: &mut dyn FnMut() -> V) -> (&mut V, bool) {
        let entry = self
            .table
            .entry(hash_of(key), |(k, _)| k == key, |(k, _)| hash_of(k));
        match entry {
            Entry::Occupied(occupied) => (&mut occupied.into_mut().1, false),
            Entry::Vacant(vacant) => (&mut vacant.insert((key.clone(), init())).into_mut().1, true),
        }
    }

    fn insert(&mut self, key: K, value: V) -> Option<V> {
        let hash = hash_of(&key);
        match self
            .table
            .entry(hash, |(k, _)| *k == key, |(k, _)| hash_of(k))
        {
            Entry::Occupied(mut occupied) => {
                Some(std::mem::replace(&mut occupied.get_mut().1, value))
            }
            Entry::Vacant(vacant) => {
                vacant.insert((key, value));
                None
            }
        }
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        match self.table.find_entry(hash_of(key), |(k, _)| k == key) {
            Ok(occupied) => Some(occupied.remove().0 .1),
            Err(_) => None,
        }
    }

    fn keys(&self) -> Vec<K> {
        self.table.iter().map(|(k, _)| k.clone()).collect()
    }

    fn for_each(&mut self, f: &mut dyn FnMut(&K, &V)) {
        for (key, value) in self.table.iter() {
            f(key, value);
        }
    }

    fn len(&self) -> usize {
        self.table.len()
    }
}

/// Up to this many entries per key stay in a small sorted inline vector (windows and panes
/// have a handful); beyond, a B-tree.
const SMALL_ENTRIES: usize = 16;

#[derive(Debug)]
enum Entries<UK, V> {
    Small(SmallVec<[(UK, V); 2]>),
    Large(BTreeMap<UK, V>),
}

impl<UK: Ord + Clone, V> Entries<UK, V> {
    fn get(&self, user_key: &UK) -> Option<&V> {
        match self {
            Entries::Small(v) => v.iter().find(|(k, _)| k == user_key).map(|(_, v)| v),
            Entries::Large(m) => m.get(user_key),
        }
    }

    fn get_mut(&mut self, user_key: &UK) -> Option<&mut V> {
        match self {
            Entries::Small(v) => v.iter_mut().find(|(k, _)| k == user_key).map(|(_, v)| v),
            Entries::Large(m) => m.get_mut(user_key),
        }
    }

    fn insert(&mut self, user_key: UK, value: V) -> Option<V> {
        match self {
            Entries::Small(v) => match v.binary_search_by(|(k, _)| k.cmp(&user_key)) {
                Ok(at) => Some(std::mem::replace(&mut v[at].1, value)),
                Err(at) if v.len() < SMALL_ENTRIES => {
                    v.insert(at, (user_key, value));
                    None
                }
                Err(_) => {
                    let mut map: BTreeMap<UK, V> = std::mem::take(v).into_iter().collect();
                    map.insert(user_key, value);
                    *self = Entries::Large(map);
                    None
                }
            },
            Entries::Large(m) => m.insert(user_key, value),
        }
    }

    fn remove(&mut self, user_key: &UK) -> Option<V> {
        match self {
            Entries::Small(v) => {
                let at = v.iter().position(|(k, _)| k == user_key)?;
                Some(v.remove(at).1)
            }
            Entries::Large(m) => m.remove(user_key),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Entries::Small(v) => v.is_empty(),
            Entries::Large(m) => m.is_empty(),
        }
    }

    fn for_each(&self, f: &mut dyn FnMut(&UK, &V)) {
        match self {
            Entries::Small(v) => v.iter().for_each(|(k, v)| f(k, v)),
            Entries::Large(m) => m.iter().for_each(|(k, v)| f(k, v)),
        }
    }
}

/// Map state: a hash map of keys to small sorted maps.
#[derive(Debug)]
pub struct HeapMapState<K, UK, V> {
    map: FxHashMap<K, Entries<UK, V>>,
    name: String,
}

impl<K, UK, V> Default for HeapMapState<K, UK, V> {
    fn default() -> Self {
        Self::new("map")
    }
}

impl<K, UK, V> HeapMapState<K, UK, V> {
    /// An empty map state called `name`.
    pub fn new(name: &str) -> Self {
        HeapMapState {
            map: FxHashMap::default(),
            name: name.to_string(),
        }
    }
}

impl<K: Send, UK: Send, V: Send> KeyedState for HeapMapState<K, UK, V> {
    fn state_name(&self) -> &str {
        &self.name
    }

    fn snapshot(&mut self, _: u64) -> Result<SnapshotStats, StateError> {
        Err(StateError::NotDurable {
            state: self.name.clone(),
        })
    }
}

impl<K: Hash + Eq + Clone + Send, UK: Ord + Clone + Send, V: Send> MapState<K, UK, V>
    for HeapMapState<K, UK, V>
{
    fn get(&mut self, key: &K, user_key: &UK) -> Option<&V> {
        self.map.get(key)?.get(user_key)
    }

    fn get_mut(&mut self, key: &K, user_key: &UK) -> Option<&mut V> {
        self.map.get_mut(key)?.get_mut(user_key)
    }

    fn get_or_insert_with(
        &mut self,
        key: &K,
        user_key: &UK,
        init: &mut dyn FnMut() -> V,
    ) -> (&mut V, bool) {
        let entries = match self.map.get_mut(key) {
            Some(_) => self.map.get_mut(key).expect("present"),
            None => self
                .map
                .entry(key.clone())
                .or_insert_with(|| Entries::Small(SmallVec::new())),
        };
        let created = entries.get(user_key).is_none();
        if created {
            entries.insert(user_key.clone(), init());
        }
        (entries.get_mut(user_key).expect("just inserted"), created)
    }

    fn insert(&mut self, key: &K, user_key: UK, value: V) -> Option<V> {
        match self.map.get_mut(key) {
            Some(entries) => entries.insert(user_key, value),
            None => {
                let mut small = SmallVec::new();
                small.push((user_key, value));
                self.map.insert(key.clone(), Entries::Small(small));
                None
            }
        }
    }

    fn remove(&mut self, key: &K, user_key: &UK) -> Option<V> {
        let entries = self.map.get_mut(key)?;
        let removed = entries.remove(user_key);
        if entries.is_empty() {
            self.map.remove(key);
        }
        removed
    }

    fn user_keys(&mut self, key: &K) -> Vec<UK> {
        let mut keys = Vec::new();
        if let Some(entries) = self.map.get(key) {
            entries.for_each(&mut |k, _| keys.push(k.clone()));
        }
        keys
    }

    fn for_each(&mut self, key: &K, f: &mut dyn FnMut(&UK, &V)) {
        if let Some(entries) = self.map.get(key) {
            entries.for_each(f);
        }
    }

    fn clear(&mut self, key: &K) {
        self.map.remove(key);
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// List state: a hash map of keys to vectors.
#[derive(Debug)]
pub struct HeapListState<K, V> {
    map: FxHashMap<K, Vec<V>>,
    name: String,
}

impl<K, V> Default for HeapListState<K, V> {
    fn default() -> Self {
        Self::new("list")
    }
}

impl<K, V> HeapListState<K, V> {
    /// An empty list state called `name`.
    pub fn new(name: &str) -> Self {
        HeapListState {
            map: FxHashMap::default(),
            name: name.to_string(),
        }
    }
}

impl<K: Send, V: Send> KeyedState for HeapListState<K, V> {
    fn state_name(&self) -> &str {
        &self.name
    }

    fn snapshot(&mut self, _: u64) -> Result<SnapshotStats, StateError> {
        Err(StateError::NotDurable {
            state: self.name.clone(),
        })
    }
}

impl<K: Hash + Eq + Clone + Send, V: Send> ListState<K, V> for HeapListState<K, V> {
    fn add(&mut self, key: &K, value: V) {
        match self.map.get_mut(key) {
            Some(list) => list.push(value),
            None => {
                self.map.insert(key.clone(), vec![value]);
            }
        }
    }

    fn get(&mut self, key: &K) -> &[V] {
        self.map.get(key).map_or(&[], Vec::as_slice)
    }

    fn take(&mut self, key: &K) -> Vec<V> {
        self.map.remove(key).unwrap_or_default()
    }

    fn retain(&mut self, key: &K, keep: &mut dyn FnMut(&V) -> bool) {
        if let Some(list) = self.map.get_mut(key) {
            list.retain(|v| keep(v));
            if list.is_empty() {
                self.map.remove(key);
            }
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_state_stays_sorted_across_the_small_to_large_switch() {
        let mut state: HeapMapState<u32, i64, u64> = HeapMapState::default();
        for uk in (0..40).rev() {
            let (v, created) = state.get_or_insert_with(&1, &uk, &mut || 0);
            assert!(created);
            *v += uk as u64;
        }
        assert_eq!(state.user_keys(&1), (0..40).collect::<Vec<_>>());
        assert_eq!(state.get(&1, &7), Some(&7));
        assert_eq!(state.remove(&1, &7), Some(7));
        assert_eq!(state.get(&1, &7), None);
        let (_, created) = state.get_or_insert_with(&1, &8, &mut || 0);
        assert!(!created);
        for uk in 0..40 {
            state.remove(&1, &uk);
        }
        assert!(state.is_empty());
    }

    #[test]
    fn value_and_list_state_per_key() {
        let mut value: HeapValueState<&str, u32> = HeapValueState::default();
        *value.get_or_insert_with(&"a", &mut || 1).0 += 1;
        assert_eq!(value.get(&"a"), Some(&2));
        assert_eq!(value.remove(&"a"), Some(2));
        let mut list: HeapListState<&str, u32> = HeapListState::default();
        list.add(&"a", 1);
        list.add(&"a", 2);
        list.retain(&"a", &mut |v| *v > 1);
        assert_eq!(list.get(&"a"), &[2]);
        assert_eq!(list.take(&"a"), vec![2]);
        assert!(list.is_empty());
    }
}
