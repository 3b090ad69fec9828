//! A typed working set in memory over the durable store: the table behind every durable state
//! handle (and behind heap state that has a TTL).
//!
//! Reads go to the cache first and load from the store on a miss. Changes stay in the cache, marked
//! dirty, until [`CachedTable::snapshot`] copies them out and hands them to the store's writer
//! thread, which encodes them and writes them as runs of the checkpoint's epoch: a checkpoint
//! costs what changed, not what is stored, and the operator only pays for the copy (for the
//! small values of most states, a fraction of the encoding). When the cache outgrows its capacity, its
//! dirty entries are written as changes of the epoch in progress (they belong to the next
//! checkpoint anyway), the table waits for that write, and is emptied: state larger than
//! memory lives on disk.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hash};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use hashbrown::hash_table::{Entry, HashTable};
use rustc_hash::{FxBuildHasher, FxHashMap};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::StateError;
use super::run::GroupChanges;
use super::store::{lock, StateStore};
use super::SnapshotStats;
use crate::runtime::{key_group, stable_hash, ProcessingClock, KEY_GROUPS};

/// Where a durable table keeps its versions, and which of them are its subtask's.
#[derive(Debug, Clone)]
pub(crate) struct Durable {
    pub(crate) store: Arc<StateStore>,
    pub(crate) state_id: u32,
    /// The key groups of this subtask.
    pub(crate) key_groups: RangeInclusive<u32>,
    /// The epoch that changes made now belong to.
    pub(crate) epoch: u64,
}

/// Time to live of a state's entries, counted from their last write in processing time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ttl {
    pub(crate) millis: i64,
    pub(crate) clock: ProcessingClock,
}

#[derive(Debug)]
struct Slot<V> {
    /// `None`: deleted (kept until the deletion is written).
    value: Option<V>,
    dirty: bool,
    /// Processing time after which the value is gone; `i64::MAX` without a TTL.
    expires_at: i64,
    /// Whether the store may hold entries of the key (false: it has none at all, so a
    /// deletion needs no write).
    stored: bool,
}

/// Keys and values of one state in memory, over its durable versions.
pub(crate) struct CachedTable<K, V> {
    name: String,
    table: HashTable<(K, Slot<V>)>,
    durable: Option<Durable>,
    ttl: Option<Ttl>,
    /// Most entries kept in memory before dirty ones are written and the cache is emptied.
    capacity: usize,
    /// Without a store: the size at which expired entries are next swept out.
    sweep_at: usize,
    /// No key outside the cache has a value in the store, so a miss reads nothing: true
    /// when the store held nothing of this state at the table's creation, until the cache
    /// is emptied to make room.
    uncached_absent: bool,
    /// No key outside the cache has any version in the store, not even a deletion: as
    /// `uncached_absent`, until a written deletion leaves the cache.
    uncached_unwritten: bool,
    /// The values that the last [`keys`](Self::keys) read from the store for keys outside
    /// the cache, so that a miss right after (restoring timers reads every key it listed)
    /// does not read the store again. Dropped at the next snapshot or when the cache is
    /// emptied; a key's entry goes when the key is loaded, before it can be written.
    scanned: RefCell<FxHashMap<K, sled::IVec>>,
    /// The hashes of the keys changed since the last write, while they are few.
    changed: ChangeLog,
    /// The buffer of the last write's changes, back from the writer once it encoded them
    /// (a write of a million changes needs tens of MB, and fresh memory costs page faults).
    spare_changes: Arc<Mutex<Vec<Change<K, V>>>>,
}

/// The largest buffer of changes a table keeps for its next write (a million changes of a
/// `u64` key and a small value take about 64 MB).
const SPARE_CHANGES_BYTES: usize = 128 << 20;

/// A dirty entry copied out of the table, for the writer to encode.
struct Change<K, V> {
    key_group: u16,
    key: K,
    /// The expiry time and the value; `None`: a deletion.
    value: Option<(i64, V)>,
}

/// Encodes `changes` into their key groups' buffers (the writer's side of a snapshot),
/// leaving `changes` empty.
fn encode_changes<K: Serialize, V: Serialize>(
    groups: &mut [GroupChanges],
    changes: &mut Vec<Change<K, V>>,
    state: &str,
) -> Result<(), StateError> {
    let codec = |e: rmp_serde::encode::Error| StateError::Codec {
        state: state.to_string(),
        action: "encode",
        message: e.to_string(),
    };
    for change in changes.drain(..) {
        // Value bytes: the expiry time, then the value; none for a deletion.
        groups[change.key_group as usize].push(
            |out| rmp_serde::encode::write(out, &change.key).map_err(codec),
            |out| match &change.value {
                Some((expires_at, value)) => {
                    out.extend_from_slice(&expires_at.to_be_bytes());
                    rmp_serde::encode::write(out, value).map_err(codec)
                }
                None => Ok(()),
            },
        )?;
    }
    Ok(())
}

/// The smallest number of changed keys a table lists before it stops listing them.
const CHANGE_LOG_MIN: usize = 4096;

/// The hashes of the keys that changed since a durable table's last write, as long as they
/// are few: a snapshot of a few changed keys then finds them by hash instead of reading the
/// whole table (1 % of a million cached keys: about 1 ms instead of 16).
#[derive(Debug, Default)]
struct ChangeLog {
    /// A key's hash is listed when its slot becomes dirty (so at most once per write).
    hashes: Vec<u64>,
    /// Too many keys changed, or the table has no store: the next write reads the whole
    /// table, and nothing is listed until then.
    overflowed: bool,
}

impl ChangeLog {
    fn new(durable: bool) -> Self {
        ChangeLog {
            hashes: Vec::new(),
            overflowed: !durable,
        }
    }

    /// Notes that the slot of the key with `hash` became dirty, in a table of `len` slots.
    /// Past an eighth of the table, reading the whole table is cheaper than the lookups.
    #[inline]
    fn note(&mut self, hash: u64, len: usize) {
        if self.overflowed {
            return;
        }
        if self.hashes.len() >= CHANGE_LOG_MIN.max(len / 8) {
            self.overflowed = true;
            self.hashes = Vec::new();
        } else {
            self.hashes.push(hash);
        }
    }

    /// Starts over after a write of every dirty slot, or after the table was emptied.
    fn reset(&mut self) {
        self.hashes.clear();
        self.overflowed = false;
    }
}

/// A cached slot found by [`CachedTable::slot`], with what marking it dirty needs.
struct SlotRef<'a, V> {
    slot: &'a mut Slot<V>,
    hash: u64,
    changed: &'a mut ChangeLog,
    len: usize,
}

impl<V> SlotRef<'_, V> {
    /// Marks the slot changed since the last write.
    #[inline]
    fn mark_dirty(&mut self) {
        if !self.slot.dirty {
            self.slot.dirty = true;
            self.changed.note(self.hash, self.len);
        }
    }
}

/// Copies one dirty slot's change out (nothing for a key created and deleted since the last
/// write) and marks it clean. Returns whether it took a change.
fn take_change<K: Hash + Clone, V: Clone>(
    changes: &mut Vec<Change<K, V>>,
    key: &K,
    slot: &mut Slot<V>,
) -> bool {
    slot.dirty = false;
    if slot.value.is_none() && !slot.stored {
        return false;
    }
    changes.push(Change {
        key_group: key_group(stable_hash(key)) as u16,
        key: key.clone(),
        value: slot.value.as_ref().map(|v| (slot.expires_at, v.clone())),
    });
    slot.stored = true;
    true
}

/// The smallest table size at which a table without a store sweeps out expired entries.
const SWEEP_MIN: usize = 1024;

impl<K, V> std::fmt::Debug for CachedTable<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedTable")
            .field("name", &self.name)
            .field("cached", &self.table.len())
            .field("durable", &self.durable.is_some())
            .finish()
    }
}

#[inline]
fn hash_of<K: Hash + ?Sized>(key: &K) -> u64 {
    FxBuildHasher.hash_one(key)
}

/// The key groups of subtask `index` of `parallelism`.
pub(crate) fn key_groups_of(index: usize, parallelism: usize) -> RangeInclusive<u32> {
    let owned = (0..KEY_GROUPS)
        .filter(|&kg| crate::runtime::subtask_for_key_group(kg, parallelism) == index);
    let (mut low, mut high) = (u32::MAX, 0);
    for kg in owned {
        low = low.min(kg);
        high = high.max(kg);
    }
    low..=high
}

impl<K, V> CachedTable<K, V>
where
    K: Hash + Eq + Clone + Send + Serialize + DeserializeOwned + 'static,
    V: Clone + Send + Serialize + DeserializeOwned + 'static,
{
    pub(crate) fn new(
        name: &str,
        durable: Option<Durable>,
        ttl: Option<Ttl>,
        capacity: usize,
    ) -> Self {
        let durable_table = durable.is_some();
        // Of any key group: some states (a subtask's own values) read keys of other groups.
        let empty = durable.as_ref().is_some_and(|d| {
            d.store
                .is_empty(d.state_id)
                .unwrap_or_else(|e| panic!("state '{name}': {e}"))
        });
        CachedTable {
            name: name.to_string(),
            table: HashTable::new(),
            durable,
            ttl,
            capacity: capacity.max(1),
            sweep_at: SWEEP_MIN,
            uncached_absent: empty,
            uncached_unwritten: empty,
            scanned: RefCell::new(FxHashMap::default()),
            changed: ChangeLog::new(durable_table),
            spare_changes: Arc::default(),
        }
    }

    fn now(&self) -> i64 {
        self.ttl.map_or(0, |ttl| ttl.clock.now())
    }

    fn expiry(&self) -> i64 {
        match self.ttl {
            Some(ttl) => ttl.clock.now().saturating_add(ttl.millis),
            None => i64::MAX,
        }
    }

    fn encode_key(&self, key: &K) -> Vec<u8> {
        rmp_serde::to_vec(key).unwrap_or_else(|e| panic!("{}", self.codec("encode", e)))
    }

    fn codec(&self, action: &'static str, error: impl std::fmt::Display) -> StateError {
        StateError::Codec {
            state: self.name.clone(),
            action,
            message: error.to_string(),
        }
    }

    fn decode_value(&self, bytes: &[u8]) -> (i64, V) {
        let expires_at = i64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
        let value = rmp_serde::from_slice(&bytes[8..])
            .unwrap_or_else(|e| panic!("{}", self.codec("decode", e)));
        (expires_at, value)
    }

    /// Loads the key's durable value (`None` when absent or expired).
    fn load(&self, key: &K) -> Option<(i64, V)> {
        let durable = self.durable.as_ref()?;
        if self.uncached_absent {
            return None;
        }
        let scanned = self.scanned.borrow_mut().remove(key);
        let bytes = match scanned {
            Some(bytes) => bytes,
            None => durable
                .store
                .read(
                    durable.state_id,
                    key_group(stable_hash(key)) as u16,
                    &self.encode_key(key),
                )
                .unwrap_or_else(|e| panic!("state '{}': {e}", self.name))?,
        };
        let (expires_at, value) = self.decode_value(&bytes);
        (expires_at > self.now()).then_some((expires_at, value))
    }

    /// The key's slot, loaded from the store on a miss (a cached deletion or an absent key gives a
    /// slot with no value only if it is already cached).
    fn slot(&mut self, key: &K) -> Option<SlotRef<'_, V>> {
        let hash = hash_of(key);
        let now = self.now();
        let cached = self.table.find(hash, |(k, _)| k == key).is_some();
        // Counted before a miss adds the key: the change log needs only its magnitude.
        let len = self.table.len();
        let slot = if cached {
            &mut self.table.find_mut(hash, |(k, _)| k == key)?.1
        } else {
            let (expires_at, value) = self.load(key)?;
            self.make_room();
            let listed = self.scanned.get_mut().len();
            if listed > 0 {
                // Keys listed by `keys()` are usually all loaded next (a restore): grow once.
                self.table.reserve(listed + 1, |(k, _)| hash_of(k));
            }
            let slot = Slot {
                value: Some(value),
                dirty: false,
                expires_at,
                stored: true,
            };
            let entry = self
                .table
                .insert_unique(hash, (key.clone(), slot), |(k, _)| hash_of(k));
            &mut entry.into_mut().1
        };
        let mut found = SlotRef {
            slot,
            hash,
            changed: &mut self.changed,
            len,
        };
        if found.slot.value.is_some() && found.slot.expires_at <= now {
            found.slot.value = None;
            found.mark_dirty();
        }
        Some(found)
    }

    /// The key's value.
    pub(crate) fn get(&mut self, key: &K) -> Option<&V> {
        self.slot(key)?.slot.value.as_ref()
    }

    /// The key's value, to change: it is marked changed (and its TTL restarts).
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let expires_at = self.expiry();
        let mut found = self.slot(key)?;
        found.slot.value.as_ref()?;
        found.mark_dirty();
        let slot = found.slot;
        slot.expires_at = expires_at;
        slot.value.as_mut()
    }

    /// The key's value, created by `init` when absent; the flag says whether it was created.
    pub(crate) fn get_or_insert_with(
        &mut self,
        key: &K,
        init: &mut dyn FnMut() -> V,
    ) -> (&mut V, bool) {
        let expires_at = self.expiry();
        let hash = hash_of(key);
        let created = match self.slot(key) {
            Some(mut found) => {
                found.mark_dirty();
                found.slot.value.is_none()
            }
            None => {
                self.make_room();
                self.changed.note(hash, self.table.len());
                self.table.insert_unique(
                    hash,
                    (
                        key.clone(),
                        Slot {
                            value: None,
                            dirty: true,
                            expires_at,
                            stored: !self.uncached_unwritten,
                        },
                    ),
                    |(k, _)| hash_of(k),
                );
                true
            }
        };
        let slot = &mut self
            .table
            .find_mut(hash, |(k, _)| k == key)
            .expect("the slot was just found or made")
            .1;
        slot.expires_at = expires_at;
        if created {
            slot.value = Some(init());
        }
        (slot.value.as_mut().expect("the value is set"), created)
    }

    /// Sets the key's value, returning the old one.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let expires_at = self.expiry();
        if let Some(mut found) = self.slot(&key) {
            found.mark_dirty();
            found.slot.expires_at = expires_at;
            return found.slot.value.replace(value);
        }
        self.make_room();
        let stored = !self.uncached_unwritten;
        let hash = hash_of(&key);
        self.changed.note(hash, self.table.len());
        match self
            .table
            .entry(hash, |(k, _)| *k == key, |(k, _)| hash_of(k))
        {
            Entry::Occupied(_) => unreachable!("slot() found no entry"),
            Entry::Vacant(vacant) => {
                vacant.insert((
                    key,
                    Slot {
                        value: Some(value),
                        dirty: true,
                        expires_at,
                        stored,
                    },
                ));
            }
        }
        None
    }

    /// Removes the key's value.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let durable = self.durable.is_some();
        let mut found = self.slot(key)?;
        let old = found.slot.value.take();
        if old.is_some() {
            found.mark_dirty();
        }
        if !durable {
            // Nothing to write a deletion to: forget the key now.
            if let Ok(entry) = self.table.find_entry(hash_of(key), |(k, _)| k == key) {
                entry.remove();
            }
        }
        old
    }

    /// Every key with a (live) value: the cached ones and, for a durable table, the stored
    /// ones of this subtask's key groups.
    pub(crate) fn keys(&self) -> Vec<K> {
        let now = self.now();
        let live = |slot: &Slot<V>| slot.value.is_some() && slot.expires_at > now;
        let mut keys: Vec<K> = self
            .table
            .iter()
            .filter(|(_, slot)| live(slot))
            .map(|(k, _)| k.clone())
            .collect();
        if let Some(durable) = self.durable.as_ref().filter(|_| !self.uncached_absent) {
            let stored = durable
                .store
                .scan(durable.state_id, durable.key_groups.clone())
                .unwrap_or_else(|e| panic!("state '{}': {e}", self.name));
            let mut scanned = self.scanned.borrow_mut();
            scanned.clear();
            // Kept only while the cache and they fit its capacity.
            let room = self.capacity.saturating_sub(self.table.len());
            scanned.reserve(stored.len().min(room));
            for (key_bytes, value) in stored {
                let key: K = rmp_serde::from_slice(&key_bytes)
                    .unwrap_or_else(|e| panic!("{}", self.codec("decode", e)));
                if self.table.find(hash_of(&key), |(k, _)| *k == key).is_some() {
                    continue; // the cache decides
                }
                let expires_at = i64::from_be_bytes(value[..8].try_into().expect("8 bytes"));
                if expires_at > now {
                    if scanned.len() < room {
                        scanned.insert(key.clone(), value);
                    }
                    keys.push(key);
                }
            }
        }
        keys
    }

    /// Calls `f` on every key with a (live) value and its value: the cached ones and, for a
    /// durable table, the stored ones of this subtask's key groups, decoded one at a time
    /// and not cached. What a restore that registers timers of every key calls: it reads
    /// the state once and keeps in memory only what the job later asks for, so its time
    /// and memory do not grow with the size of the values.
    pub(crate) fn for_each_live(&self, f: &mut dyn FnMut(&K, &V)) {
        let now = self.now();
        for (key, slot) in self.table.iter() {
            if let Some(value) = slot.value.as_ref().filter(|_| slot.expires_at > now) {
                f(key, value);
            }
        }
        let Some(durable) = self.durable.as_ref().filter(|_| !self.uncached_absent) else {
            return;
        };
        durable
            .store
            .scan_each(
                durable.state_id,
                durable.key_groups.clone(),
                &mut |key_bytes, value_bytes| {
                    let key: K = rmp_serde::from_slice(key_bytes)
                        .unwrap_or_else(|e| panic!("{}", self.codec("decode", e)));
                    if self.table.find(hash_of(&key), |(k, _)| *k == key).is_some() {
                        return; // the cache decides
                    }
                    let (expires_at, value) = self.decode_value(value_bytes);
                    if expires_at > now {
                        f(&key, &value);
                    }
                },
            )
            .unwrap_or_else(|e| panic!("state '{}': {e}", self.name));
    }

    /// How many keys have a value.
    pub(crate) fn len(&self) -> usize {
        if self.durable.is_some() {
            self.keys().len()
        } else {
            let now = self.now();
            self.table
                .iter()
                .filter(|(_, s)| s.value.is_some() && s.expires_at > now)
                .count()
        }
    }

    /// Keeps the cache within its capacity before an entry is added.
    fn make_room(&mut self) {
        if self.durable.is_none() {
            self.sweep_expired();
            return;
        }
        if self.table.len() < self.capacity {
            return;
        }
        let Some(durable) = self.durable.clone() else {
            return;
        };
        self.write_dirty(durable.epoch)
            .unwrap_or_else(|e| panic!("state '{}': {e}", self.name));
        // The cache is emptied: what it held must be readable from the store first.
        durable
            .store
            .wait_applied()
            .unwrap_or_else(|e| panic!("state '{}': {e}", self.name));
        self.table.clear();
        self.changed.reset();
        // What was cached is now only in the store.
        self.uncached_absent = false;
        self.uncached_unwritten = false;
        self.scanned.get_mut().clear();
    }

    /// Without a store (heap state with a TTL) nothing else ever drops expired entries: drop
    /// them whenever the table has doubled since the last sweep, so that memory follows the
    /// live entries at an amortized constant cost.
    fn sweep_expired(&mut self) {
        if self.table.len() < self.sweep_at {
            return;
        }
        let now = self.now();
        self.table
            .retain(|(_, slot)| slot.value.is_some() && slot.expires_at > now);
        self.sweep_at = (self.table.len() * 2).max(SWEEP_MIN);
    }

    /// Copies the dirty entries out and hands them to the store's writer as changes of
    /// `epoch` (the writer encodes, sorts and writes them).
    ///
    /// The writer encodes them so that the operator's task does not: the encoding was most
    /// of a snapshot's cost to the job (about 60 ns an entry for a `u64` key and a window
    /// accumulator, against a copy of a few ns). A value that cannot be encoded (a custom
    /// `Serialize` that fails) then fails the store's write, and with it this checkpoint and
    /// every later one, until the job restarts from the last complete checkpoint.
    fn write_dirty(&mut self, epoch: u64) -> Result<SnapshotStats, StateError> {
        let Some(durable) = self.durable.clone() else {
            return Ok(SnapshotStats::default());
        };
        let mut changes = std::mem::take(&mut *lock(&self.spare_changes));
        // Slots of deletions are dropped once written (or once known to need no write).
        let mut dropped_written = false;
        if self.changed.overflowed {
            // One pass over the table: copy what changed, drop the slots of deletions.
            self.table.retain(|(key, slot)| {
                if slot.dirty {
                    take_change(&mut changes, key, slot);
                }
                dropped_written |= slot.value.is_none() && slot.stored;
                slot.value.is_some()
            });
        } else {
            // Few keys changed: find them by hash. A hash listed twice (two keys, or a key
            // removed and added again) finds its slots clean the second time.
            let mut deleted = Vec::new();
            for &hash in &self.changed.hashes {
                for (key, slot) in self.table.iter_hash_mut(hash) {
                    if !slot.dirty {
                        continue;
                    }
                    take_change(&mut changes, key, slot);
                    if slot.value.is_none() {
                        dropped_written |= slot.stored;
                        deleted.push(hash);
                    }
                }
            }
            for hash in deleted {
                while let Ok(entry) = self.table.find_entry(hash, |(_, s)| s.value.is_none()) {
                    entry.remove();
                }
            }
        }
        self.changed.reset();
        if dropped_written {
            self.uncached_unwritten = false;
        }
        let entries = changes.len() as u64;
        if entries == 0 {
            *lock(&self.spare_changes) = changes;
            return Ok(SnapshotStats::default());
        }
        // The job holds no handle of the store: were it the last one, the store would be
        // dropped on its own writer thread, which would then wait for itself.
        let state_id = durable.state_id;
        let mut groups = durable.store.snapshot_buffers(KEY_GROUPS as usize);
        let name = self.name.clone();
        let spare = self.spare_changes.clone();
        durable.store.submit(Box::new(move |shared| {
            let encoded = encode_changes(&mut groups, &mut changes, &name);
            if changes.capacity() * std::mem::size_of::<Change<K, V>>() <= SPARE_CHANGES_BYTES {
                *lock(&spare) = changes;
            }
            encoded?;
            shared.write_changes(state_id, epoch, groups)
        }));
        Ok(SnapshotStats { entries, bytes: 0 })
    }

    /// Hands what changed since the last snapshot to the writer as changes of checkpoint
    /// `epoch` (durable once the store is flushed); later
    /// changes belong to the next epoch.
    pub(crate) fn snapshot(&mut self, epoch: u64) -> Result<SnapshotStats, StateError> {
        if self.durable.is_none() {
            return Err(StateError::NotDurable {
                state: self.name.clone(),
            });
        }
        let stats = self.write_dirty(epoch)?;
        if let Some(durable) = &mut self.durable {
            durable.epoch = epoch + 1;
        }
        self.scanned.get_mut().clear();
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn table(store: &Arc<StateStore>, epoch: u64) -> CachedTable<u32, String> {
        let durable = Durable {
            store: store.clone(),
            state_id: 0,
            key_groups: 0..=KEY_GROUPS - 1,
            epoch,
        };
        CachedTable::new("values", Some(durable), None, 1 << 20)
    }

    /// A table of `epoch` with the keys below `keys` set to `v<key>` (not yet snapshotted),
    /// and the model of what it holds.
    fn filled(
        store: &Arc<StateStore>,
        epoch: u64,
        keys: u32,
    ) -> (CachedTable<u32, String>, BTreeMap<u32, String>) {
        let mut values = table(store, epoch);
        let mut model = BTreeMap::new();
        for k in 0..keys {
            values.insert(k, format!("v{k}"));
            model.insert(k, format!("v{k}"));
        }
        (values, model)
    }

    /// What a table reads back for every key below `keys`, through a fresh table over the
    /// store (so from the store alone).
    fn stored(store: &Arc<StateStore>, keys: u32) -> BTreeMap<u32, String> {
        let mut fresh = table(store, 100);
        (0..keys)
            .filter_map(|k| fresh.get(&k).map(|v| (k, v.clone())))
            .collect()
    }

    /// A snapshot finds its changes either by the hashes it listed (few changed keys) or by
    /// reading the whole table (many): both must write the same changes, deletions included.
    #[test]
    fn snapshots_of_few_and_of_many_changes_write_the_same() {
        const KEYS: u32 = 20_000;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(dir.path()).unwrap());
        let first = store.begin_run(0).unwrap();
        // Many changes: every key is new.
        let (mut values, mut model) = filled(&store, first, KEYS);
        assert!(
            values.changed.overflowed,
            "20,000 changed keys are not listed"
        );
        values.snapshot(first).unwrap();
        store.flush().unwrap();
        assert_eq!(stored(&store, KEYS + 10), model);

        // Few changes: updates, deletions, a key created and deleted, a new key, and a key
        // deleted then set again.
        *values.get_mut(&7).unwrap() = "changed".into();
        model.insert(7, "changed".into());
        values.insert(8, "replaced".into());
        model.insert(8, "replaced".into());
        for k in [9, 10, 11] {
            values.remove(&k);
            model.remove(&k);
        }
        values.insert(KEYS, "created".into());
        values.remove(&KEYS);
        values.insert(KEYS + 1, "new".into());
        model.insert(KEYS + 1, "new".into());
        values.remove(&12);
        values.insert(12, "again".into());
        model.insert(12, "again".into());
        let (created, _) = values.get_or_insert_with(&(KEYS + 2), &mut || "init".into());
        created.push('!');
        model.insert(KEYS + 2, "init!".into());
        assert!(!values.changed.overflowed);
        let stats = values.snapshot(first + 1).unwrap();
        assert_eq!(stats.entries, 8, "7, 8, 9, 10, 11, 12 and two new keys");
        store.flush().unwrap();
        assert_eq!(stored(&store, KEYS + 10), model);
        // The slots of written deletions are gone from the cache.
        assert!(values.table.iter().all(|(_, slot)| slot.value.is_some()));
        assert!(values.table.iter().all(|(_, slot)| !slot.dirty));

        // Nothing changed: nothing written.
        assert_eq!(values.snapshot(first + 2).unwrap().entries, 0);

        // Many changes again, after few: every other key deleted.
        for k in (0..KEYS).step_by(2) {
            values.remove(&k);
            model.remove(&k);
        }
        assert!(values.changed.overflowed);
        values.snapshot(first + 3).unwrap();
        store.flush().unwrap();
        assert_eq!(stored(&store, KEYS + 10), model);
    }

    /// `for_each_live` visits every live key once with its current value (the cache's over
    /// the store's, deletions and all) and leaves the cache as it was: a restore visits the
    /// whole state without loading it.
    #[test]
    fn visiting_every_value_sees_the_cache_over_the_store_and_caches_nothing() {
        const KEYS: u32 = 5_000;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(dir.path()).unwrap());
        let first = store.begin_run(0).unwrap();
        let (mut values, mut model) = filled(&store, first, KEYS);
        values.snapshot(first).unwrap();
        store.flush().unwrap();

        // A fresh table over the store: its cache holds only what it changes since.
        let mut fresh = table(&store, first + 1);
        fresh.insert(3, "changed".into());
        model.insert(3, "changed".into());
        fresh.remove(&4);
        model.remove(&4);
        fresh.insert(KEYS, "new".into());
        model.insert(KEYS, "new".into());
        let cached = fresh.table.len();
        let mut seen = BTreeMap::new();
        fresh.for_each_live(&mut |k, v| {
            assert!(
                seen.insert(*k, v.clone()).is_none(),
                "key {k} visited twice"
            );
        });
        assert_eq!(seen, model);
        assert_eq!(fresh.table.len(), cached, "nothing was cached");
        assert!(fresh.scanned.borrow().is_empty());
    }

    /// A value whose `Serialize` fails.
    #[derive(Debug, Clone, serde::Deserialize)]
    struct Unencodable;

    impl Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom(
                "this value refuses to be encoded",
            ))
        }
    }

    /// The writer encodes a snapshot's changes: a value that cannot be encoded fails the
    /// store's write (so the checkpoint), with a message that names the state and the cause.
    #[test]
    fn a_value_that_cannot_be_encoded_fails_the_write_and_names_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(dir.path()).unwrap());
        let first = store.begin_run(0).unwrap();
        let durable = Durable {
            store: store.clone(),
            state_id: 0,
            key_groups: 0..=KEY_GROUPS - 1,
            epoch: first,
        };
        let mut values: CachedTable<u32, Unencodable> =
            CachedTable::new("refusing", Some(durable), None, 1 << 20);
        values.insert(1, Unencodable);
        assert_eq!(values.snapshot(first).unwrap().entries, 1);
        let error = store.flush().unwrap_err().to_string();
        assert!(
            error.contains("refusing") && error.contains("this value refuses to be encoded"),
            "{error}"
        );
    }
}
