//! Model tests of keyed state: the durable backend (a cache over versions in sled) against
//! plain in-memory maps, through checkpoints, failed checkpoints, crashes, restores of older
//! checkpoints and rescaling; and the expiry of entries with a time to live.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::{
    DurableBackend, ListState, MapState, StateBackend, StateOptions, StateStore, ValueState,
};
use crate::runtime::{key_group, stable_hash, subtask_for_key_group, ProcessingClock, SubtaskInfo};

/// Keys are `0..KEYS`: few, so that operations on the same key meet.
const KEYS: u16 = 16;
/// User keys of map state are `0..USER_KEYS`.
const USER_KEYS: u8 = 6;
/// How many completed checkpoints the coordinator retains.
const RETAINED: usize = 3;
const OPERATOR: &str = "model";

/// What the three states should hold.
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    values: BTreeMap<u16, u32>,
    maps: BTreeMap<u16, BTreeMap<u8, u32>>,
    lists: BTreeMap<u16, Vec<u32>>,
}

#[derive(Debug, Clone)]
enum Op {
    ValuePut(u16, u32),
    ValueGet(u16),
    /// `get_mut` and add one.
    ValueIncrement(u16),
    /// `get_or_insert_with`, then add one through the returned reference.
    ValueGetOrInsert(u16, u32),
    ValueRemove(u16),
    ValueKeys,
    /// `for_each`: every key and value, the stored ones not cached.
    ValueForEach,
    MapInsert(u16, u8, u32),
    MapGet(u16, u8),
    MapIncrement(u16, u8),
    MapGetOrInsert(u16, u8, u32),
    MapRemove(u16, u8),
    MapClear(u16),
    MapUserKeys(u16),
    MapForEach(u16),
    ListAdd(u16, u32),
    ListGet(u16),
    ListTake(u16),
    /// Keeps the elements not divisible by the modulus.
    ListRetain(u16, u32),
    /// A completed checkpoint of the next epoch.
    Checkpoint,
    /// A checkpoint that is triggered and partly snapshotted (value and map state, not the
    /// list state) but never completes.
    FailedCheckpoint,
    /// A crash, then a restore of the latest completed checkpoint.
    Crash,
    /// A crash, then a restore of a retained checkpoint (`% retained`); newer ones are gone.
    RestoreOlder(usize),
    /// A crash, then a restore of the latest checkpoint as subtask `index % parallelism`.
    Reopen {
        index: usize,
        parallelism: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let k = || 0..KEYS;
    let uk = || 0..USER_KEYS;
    let v = || 0u32..1000;
    prop_oneof![
        6 => (k(), v()).prop_map(|(k, v)| Op::ValuePut(k, v)),
        3 => k().prop_map(Op::ValueGet),
        3 => k().prop_map(Op::ValueIncrement),
        3 => (k(), v()).prop_map(|(k, v)| Op::ValueGetOrInsert(k, v)),
        3 => k().prop_map(Op::ValueRemove),
        1 => Just(Op::ValueKeys),
        1 => Just(Op::ValueForEach),
        6 => (k(), uk(), v()).prop_map(|(k, u, v)| Op::MapInsert(k, u, v)),
        2 => (k(), uk()).prop_map(|(k, u)| Op::MapGet(k, u)),
        2 => (k(), uk()).prop_map(|(k, u)| Op::MapIncrement(k, u)),
        2 => (k(), uk(), v()).prop_map(|(k, u, v)| Op::MapGetOrInsert(k, u, v)),
        3 => (k(), uk()).prop_map(|(k, u)| Op::MapRemove(k, u)),
        1 => k().prop_map(Op::MapClear),
        2 => k().prop_map(Op::MapUserKeys),
        2 => k().prop_map(Op::MapForEach),
        6 => (k(), v()).prop_map(|(k, v)| Op::ListAdd(k, v)),
        2 => k().prop_map(Op::ListGet),
        2 => k().prop_map(Op::ListTake),
        2 => (k(), 2u32..5).prop_map(|(k, m)| Op::ListRetain(k, m)),
        6 => Just(Op::Checkpoint),
        2 => Just(Op::FailedCheckpoint),
        2 => Just(Op::Crash),
        2 => (0usize..RETAINED).prop_map(Op::RestoreOlder),
        2 => (0usize..4, 1usize..5)
            .prop_map(|(index, parallelism)| Op::Reopen { index, parallelism }),
    ]
}

/// The state handles of one run of the subtask.
struct Handles {
    value: Box<dyn ValueState<u16, u32>>,
    map: Box<dyn MapState<u16, u8, u32>>,
    list: Box<dyn ListState<u16, u32>>,
}

/// Whether `subtask` owns `key`.
fn owns(subtask: &SubtaskInfo, key: u16) -> bool {
    subtask_for_key_group(key_group(stable_hash(&key)), subtask.parallelism) == subtask.index
}

/// Opens the store again after a crash. sled lets go of its file lock a moment after the last
/// handle is dropped (its background threads finish first): wait for it.
fn reopen(dir: &Path) -> Arc<StateStore> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match StateStore::open(dir) {
            Ok(store) => return Arc::new(store),
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("the state store does not open again: {e}"),
        }
    }
}

/// The durable states of one subtask, crashed and restored as the operations say, and the
/// model they should match.
struct Run {
    dir: tempfile::TempDir,
    capacity: usize,
    store: Option<Arc<StateStore>>,
    handles: Option<Handles>,
    subtask: SubtaskInfo,
    /// The epoch the next checkpoint will have.
    next_epoch: u64,
    /// Completed checkpoints still retained, oldest first, with the model as of each.
    checkpoints: Vec<(u64, Model)>,
    model: Model,
}

impl Run {
    fn new(capacity: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(StateStore::open(dir.path()).expect("opens"));
        let first = store.begin_run(0).expect("begins");
        let subtask = SubtaskInfo::new(OPERATOR, 0, 1);
        let handles = Self::open_handles(&store, first, capacity, &subtask);
        Run {
            dir,
            capacity,
            store: Some(store),
            handles: Some(handles),
            subtask,
            next_epoch: first,
            checkpoints: Vec::new(),
            model: Model::default(),
        }
    }

    fn open_handles(
        store: &Arc<StateStore>,
        first: u64,
        capacity: usize,
        subtask: &SubtaskInfo,
    ) -> Handles {
        let backend = StateBackend::Durable(DurableBackend::new(store.clone(), first, capacity));
        let clock = ProcessingClock::start();
        let options = StateOptions::default();
        Handles {
            value: backend.value_state(subtask, "value", options, clock),
            map: backend.map_state(subtask, "map", options, clock),
            list: backend.list_state(subtask, "list", options, clock),
        }
    }

    fn h(&mut self) -> &mut Handles {
        self.handles.as_mut().expect("handles are open")
    }

    fn store(&self) -> &Arc<StateStore> {
        self.store.as_ref().expect("the store is open")
    }

    /// The key the subtask works on for a generated key: generated keys are mapped onto the
    /// keys the subtask owns (`None` when it owns none).
    fn key(&self, generated: u16) -> Option<u16> {
        let owned: Vec<u16> = (0..KEYS).filter(|&k| owns(&self.subtask, k)).collect();
        (!owned.is_empty()).then(|| owned[generated as usize % owned.len()])
    }

    /// Drops every handle and the store without a snapshot, then restores retained checkpoint
    /// `index` (`None`: the empty state) as `subtask`.
    fn restore(&mut self, index: Option<usize>, subtask: SubtaskInfo) -> Result<(), TestCaseError> {
        let (epoch, model) = match index {
            Some(i) => {
                let restored = self.checkpoints[i].clone();
                // Continuing from an older checkpoint makes the newer ones invalid.
                self.checkpoints.truncate(i + 1);
                restored
            }
            None => (0, Model::default()),
        };
        self.handles = None;
        self.store = None;
        let store = reopen(self.dir.path());
        let first = store.begin_run(epoch).expect("begins");
        prop_assert!(
            first > self.next_epoch,
            "first epoch {first} reuses an epoch"
        );
        self.handles = Some(Self::open_handles(&store, first, self.capacity, &subtask));
        self.store = Some(store);
        self.subtask = subtask;
        self.next_epoch = first;
        self.model = model;
        self.verify_all()
    }

    fn latest(&self) -> Option<usize> {
        self.checkpoints.len().checked_sub(1)
    }

    /// Compares the whole content the subtask sees with the model.
    fn verify_all(&mut self) -> Result<(), TestCaseError> {
        let subtask = self.subtask.clone();
        let model = self.model.clone();
        let owned = |k: &&u16| owns(&subtask, **k);
        let h = self.handles.as_mut().expect("handles are open");

        let mut keys = h.value.keys();
        keys.sort_unstable();
        let expected: Vec<u16> = model.values.keys().filter(owned).copied().collect();
        prop_assert_eq!(&keys, &expected, "value keys of {:?}", subtask);
        prop_assert_eq!(h.value.len(), expected.len());
        prop_assert_eq!(h.map.len(), model.maps.keys().filter(owned).count());
        prop_assert_eq!(h.list.len(), model.lists.keys().filter(owned).count());

        for key in (0..KEYS).filter(|k| owns(&subtask, *k)) {
            prop_assert_eq!(
                h.value.get(&key),
                model.values.get(&key),
                "value of {}",
                key
            );
            let mut entries = Vec::new();
            h.map.for_each(&key, &mut |uk, v| entries.push((*uk, *v)));
            let expected: Vec<(u8, u32)> = model
                .maps
                .get(&key)
                .map(|m| m.iter().map(|(u, v)| (*u, *v)).collect())
                .unwrap_or_default();
            prop_assert_eq!(entries, expected, "map of {}", key);
            let expected: &[u32] = model.lists.get(&key).map_or(&[], Vec::as_slice);
            prop_assert_eq!(h.list.get(&key), expected, "list of {}", key);
        }
        Ok(())
    }

    /// Compares the number of keys of every state with the model (reads nothing into the
    /// caches).
    fn verify_lens(&mut self) -> Result<(), TestCaseError> {
        let subtask = self.subtask.clone();
        let owned = |k: &&u16| owns(&subtask, **k);
        let values = self.model.values.keys().filter(owned).count();
        let maps = self.model.maps.keys().filter(owned).count();
        let lists = self.model.lists.keys().filter(owned).count();
        let h = self.h();
        prop_assert_eq!(h.value.len(), values, "value state len");
        prop_assert_eq!(h.map.len(), maps, "map state len");
        prop_assert_eq!(h.list.len(), lists, "list state len");
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::ValuePut(k, v) => {
                let Some(k) = self.key(k) else { return Ok(()) };
                let old = self.h().value.insert(k, v);
                prop_assert_eq!(old, self.model.values.insert(k, v));
            }
            Op::ValueGet(k) => {
                let Some(k) = self.key(k) else { return Ok(()) };
                let got = self.h().value.get(&k).copied();
                prop_assert_eq!(got, self.model.values.get(&k).copied());
            }
            Op::ValueIncrement(k) => {
                let Some(k) = self.key(k) else { return Ok(()) };
                let got = self.h().value.get_mut(&k).map(|v| {
                    *v = v.wrapping_add(1);
                    *v
                });
                let expected = self.model.values.get_mut(&k).map(|v| {
                    *v = v.wrapping_add(1);
                    *v
                });
                prop_assert_eq!(got, expected);
            }
            Op::ValueGetOrInsert(k, init) => {
                let Some(k) = self.key(k) else { return Ok(()) };
                let (v, created) = self.h().value.get_or_insert_with(&k, &mut || init);
                *v = v.wrapping_add(1);
                let got = (*v, created);
                let expected_created = !self.model.values.contains_key(&k);
                let v = self.model.values.entry(k).or_insert(init);
                *v = v.wrapping_add(1);
                prop_assert_eq!(got, (*v, expected_created));
            }
            Op::ValueRemove(k) => {
                let Some(k) = self.key(k) else { return Ok(()) };
                let got = self.h().value.remove(&k);
                prop_assert_eq!(got, self.model.values.remove(&k));
            }
            Op::ValueForEach => {
                let mut seen = BTreeMap::new();
                let mut twice = None;
                self.h().value.for_each(&mut |k, v| {
                    if seen.insert(*k, *v).is_some() {
                        twice = Some(*k);
                    }
                });
                prop_assert_eq!(twice, None, "a key visited twice");
                let subtask = self.subtask.clone();
                let expected: BTreeMap<u16, u32> = self
                    .model
                    .values
                    .iter()
                    .filter(|(k, _)| owns(&subtask, **k))
                    .map(|(k, v)| (*k, *v))
                    .collect();
                prop_assert_eq!(seen, expected);
            }
            Op::ValueKeys => {
                let mut keys = self.h().value.keys();
                keys.sort_unstable();
                let subtask = self.subtask.clone();
                let expected: Vec<u16> = self
                    .model
                    .values
                    .keys()
                    .filter(|k| owns(&subtask, **k))
                    .copied()
                    .collect();
                prop_assert_eq!(keys, expected);
            }
            Op::MapInsert(k, u, v) => {
                let Some(k) = self.key(k) else { return Ok(()) };
                let got = self.h().map.insert(&k, u, v);
                prop_assert_eq!(got, self.model.maps.entry(k).or_default().insert(u, v));
            }
            Op::MapGet(k, u) => {
                let Some(k) = self.key(k) else { return Ok(()) };
                let got = self.h().map.get(&k, &u).copied();
                let expected = self.model.maps.get(&k).and_then(|m| m.get(&u)).copied();
                prop_assert_eq!(got, expected);
            }
            Op::MapIncrement(k, u) => {
                let Some(k) = self.key(k) else { return Ok(()) };
                let got = self.h().map.get_mut(&k, &u).map(|v| {
                    *v = v.wrapping_add(1);
                    *v
                });
                let expected = self
                    .model
                    .maps
                    .get_mut(&k)
                    .and_then(|m| m.get_mut(&u))
                    .map(|v| {
                        *v = v.wrapping_add(1);
                        *v
                    });
                prop_assert_eq!(got, expected);
            }
            Op::MapGetOrInsert(k, u, init) => {
                let Some(k) = self.key(k) else { return Ok(()) };
                let (v, created) = self.h().map.get_or_insert_with(&k, &u, &mut || init);
                *v = v.wrapping_add(1);
                let got = (*v, created);
                let map = self.model.maps.entry(k).or_default();
                let expected_created = !map.contains_key(&u);
                let v = map.entry(u).or_insert(init);
                *v = v.wrapping_add(1);
                prop_assert_eq!(got, (*v, expected_created));
            }
            Op::MapRemove(k, u) => {
                let Some(k) = self.key(k) else { return Ok(()) };
                let got = self.h().map.remove(&k, &u);
                let expected = self.model.maps.get_mut(&k).and_then(|m| m.remove(&u));
                if self.model.maps.get(&k).is_some_and(BTreeMap::is_empty) {
                    self.model.maps.remove(&k);
                }
                prop_assert_eq!(got, expected);
            }
            Op::MapClear(k) => {
                let Some(k) = self.key(k) else { return Ok(()) };
                self.h().map.clear(&k);
                self.model.maps.remove(&k);
            }
            Op::MapUserKeys(k) => {
                let Some(k) = self.key(k) else { return Ok(()) };
                let got = self.h().map.user_keys(&k);
                let expected: Vec<u8> = self
                    .model
                    .maps
                    .get(&k)
                    .map(|m| m.keys().copied().collect())
                    .unwrap_or_default();
                prop_assert_eq!(got, expected);
            }
            Op::MapForEach(k) => {
                let Some(k) = self.key(k) else { return Ok(()) };
                let mut got = Vec::new();
                self.h().map.for_each(&k, &mut |u, v| got.push((*u, *v)));
                let expected: Vec<(u8, u32)> = self
                    .model
                    .maps
                    .get(&k)
                    .map(|m| m.iter().map(|(u, v)| (*u, *v)).collect())
                    .unwrap_or_default();
                prop_assert_eq!(got, expected);
            }
            Op::ListAdd(k, v) => {
                let Some(k) = self.key(k) else { return Ok(()) };
                self.h().list.add(&k, v);
                self.model.lists.entry(k).or_default().push(v);
            }
            Op::ListGet(k) => {
                let Some(k) = self.key(k) else { return Ok(()) };
                let got = self.h().list.get(&k).to_vec();
                let expected = self.model.lists.get(&k).cloned().unwrap_or_default();
                prop_assert_eq!(got, expected);
            }
            Op::ListTake(k) => {
                let Some(k) = self.key(k) else { return Ok(()) };
                let got = self.h().list.take(&k);
                prop_assert_eq!(got, self.model.lists.remove(&k).unwrap_or_default());
            }
            Op::ListRetain(k, m) => {
                let Some(k) = self.key(k) else { return Ok(()) };
                self.h().list.retain(&k, &mut |v| v % m != 0);
                if let Some(list) = self.model.lists.get_mut(&k) {
                    list.retain(|v| v % m != 0);
                    if list.is_empty() {
                        self.model.lists.remove(&k);
                    }
                }
            }
            Op::Checkpoint => {
                let epoch = self.next_epoch;
                self.next_epoch += 1;
                self.store().set_last_triggered_epoch(epoch).expect("sets");
                let h = self.h();
                h.value.snapshot(epoch).expect("snapshots");
                h.map.snapshot(epoch).expect("snapshots");
                h.list.snapshot(epoch).expect("snapshots");
                self.store().flush().expect("flushes");
                self.checkpoints.push((epoch, self.model.clone()));
                if self.checkpoints.len() > RETAINED {
                    self.checkpoints.remove(0);
                }
                let floor = self.checkpoints[0].0;
                self.store().set_floor(floor).expect("sets the floor");
                if epoch.is_multiple_of(2) {
                    // Merge what can be merged now (the writer otherwise merges when idle, at
                    // moments the test does not choose): the model sees both layouts.
                    self.store().settle().expect("merges");
                }
            }
            Op::FailedCheckpoint => {
                let epoch = self.next_epoch;
                self.next_epoch += 1;
                self.store().set_last_triggered_epoch(epoch).expect("sets");
                let h = self.h();
                h.value.snapshot(epoch).expect("snapshots");
                h.map.snapshot(epoch).expect("snapshots");
            }
            Op::Crash => {
                let subtask = self.subtask.clone();
                self.restore(self.latest(), subtask)?;
            }
            Op::RestoreOlder(i) => {
                let index = (!self.checkpoints.is_empty()).then(|| i % self.checkpoints.len());
                let subtask = self.subtask.clone();
                self.restore(index, subtask)?;
            }
            Op::Reopen { index, parallelism } => {
                let subtask = SubtaskInfo::new(OPERATOR, index % parallelism, parallelism);
                self.restore(self.latest(), subtask)?;
            }
        }
        self.verify_lens()
    }
}

fn run(capacity: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut run = Run::new(capacity);
    for op in ops {
        run.apply(op)?;
    }
    run.verify_all()?;
    // Everything checkpointed last is there for a single subtask after a final crash.
    let latest = run.latest();
    run.restore(latest, SubtaskInfo::new(OPERATOR, 0, 1))
}

/// Cases per capacity: 100, or `MODEL_CASES` (a longer search for bugs).
fn cases() -> u32 {
    std::env::var("MODEL_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn durable_state_matches_the_model_spilling_every_entry(
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        run(1, &ops)?;
    }

    #[test]
    fn durable_state_matches_the_model_with_a_small_cache(
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        run(3, &ops)?;
    }

    #[test]
    fn durable_state_matches_the_model_with_a_large_cache(
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        run(10_000, &ops)?;
    }
}

// --- Time to live ---

const TTL: Duration = Duration::from_secs(10);

type TtlState = Box<dyn ValueState<u16, u32>>;

/// Drives a value state with a 10 s TTL through writes, reads and expiries; `restart` crashes
/// and restores it after a checkpoint (a no-op for heap state).
async fn check_ttl(mut state: TtlState, restart: &mut dyn FnMut(TtlState) -> TtlState) {
    let sorted_keys = |state: &dyn ValueState<u16, u32>| {
        let mut keys = state.keys();
        keys.sort_unstable();
        keys
    };
    // t = 0
    assert_eq!(state.insert(1, 10), None);
    assert_eq!(state.insert(2, 20), None);
    assert_eq!(state.insert(3, 30), None);

    tokio::time::advance(Duration::from_secs(4)).await; // t = 4
    assert_eq!(state.get(&1), Some(&10), "a read does not restart the TTL");
    *state.get_mut(&2).expect("live") += 1; // expires at 14

    tokio::time::advance(Duration::from_secs(2)).await; // t = 6
    assert_eq!(state.insert(3, 31), Some(30)); // expires at 16
    let (v, created) = state.get_or_insert_with(&4, &mut || 40); // expires at 16
    assert_eq!((*v, created), (40, true));
    state = restart(state);

    tokio::time::advance(Duration::from_millis(3_999)).await; // t = 9.999
    assert_eq!(sorted_keys(&*state), vec![1, 2, 3, 4]);
    assert_eq!(state.len(), 4);
    assert_eq!(state.get(&1), Some(&10));

    tokio::time::advance(Duration::from_millis(1)).await; // t = 10
    assert_eq!(state.get(&1), None, "10 s after its last write");
    assert_eq!(sorted_keys(&*state), vec![2, 3, 4]);
    assert_eq!(state.len(), 3);
    assert!(state.get_mut(&1).is_none());
    assert_eq!(state.remove(&1), None);
    assert_eq!(state.insert(5, 50), None); // expires at 20
    let (v, created) = state.get_or_insert_with(&1, &mut || 11); // a new entry, expires at 20
    assert_eq!((*v, created), (11, true));

    tokio::time::advance(Duration::from_millis(3_999)).await; // t = 13.999
    assert_eq!(state.get(&2), Some(&21));
    state = restart(state);
    tokio::time::advance(Duration::from_millis(1)).await; // t = 14
    assert_eq!(state.get(&2), None, "10 s after get_mut");
    assert_eq!(sorted_keys(&*state), vec![1, 3, 4, 5]);

    tokio::time::advance(Duration::from_secs(2)).await; // t = 16
    assert_eq!(sorted_keys(&*state), vec![1, 5]);
    assert_eq!(state.get(&3), None);
    assert_eq!(state.get(&4), None);

    tokio::time::advance(Duration::from_secs(4)).await; // t = 20
    assert!(state.keys().is_empty());
    assert!(state.is_empty());
    assert_eq!(state.get(&5), None);
    assert_eq!(state.get(&1), None);
}

#[tokio::test(start_paused = true)]
async fn ttl_counts_from_the_last_write_on_the_heap() {
    let subtask = SubtaskInfo::new(OPERATOR, 0, 1);
    let state = StateBackend::Heap.value_state::<u16, u32>(
        &subtask,
        "ttl",
        StateOptions::with_ttl(TTL),
        ProcessingClock::start(),
    );
    check_ttl(state, &mut |state| state).await;
}

#[tokio::test(start_paused = true)]
async fn ttl_counts_from_the_last_write_in_durable_state_across_restores() {
    for capacity in [1, 10_000] {
        let dir = tempfile::tempdir().expect("temp dir");
        // One clock for every run: expiry times are absolute processing times.
        let clock = ProcessingClock::start();
        let subtask = SubtaskInfo::new(OPERATOR, 0, 1);
        let open = |store: &Arc<StateStore>, first: u64| {
            StateBackend::Durable(DurableBackend::new(store.clone(), first, capacity))
                .value_state::<u16, u32>(&subtask, "ttl", StateOptions::with_ttl(TTL), clock)
        };
        let store = Arc::new(StateStore::open(dir.path()).expect("opens"));
        let first = store.begin_run(0).expect("begins");
        let state = open(&store, first);
        let mut current = Some((store, first));
        let mut restart = |mut state: TtlState| {
            // Checkpoint, then crash and restore it.
            let (store, epoch) = current.take().expect("a run");
            store.set_last_triggered_epoch(epoch).expect("sets");
            state.snapshot(epoch).expect("snapshots");
            store.flush().expect("flushes");
            drop(state);
            drop(store);
            let store = reopen(dir.path());
            let first = store.begin_run(epoch).expect("begins");
            let state = open(&store, first);
            current = Some((store, first));
            state
        };
        check_ttl(state, &mut restart).await;
    }
}

/// How many entries a state's cache holds, read from its `Debug` output.
fn cached_entries(state: &impl std::fmt::Debug) -> usize {
    let debug = format!("{state:?}");
    let start = debug.find("cached: ").expect("the cache size is shown") + "cached: ".len();
    debug[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

#[tokio::test(start_paused = true)]
async fn expired_heap_entries_do_not_stay_in_memory() {
    let ttl = super::cached::Ttl {
        millis: TTL.as_millis() as i64,
        clock: ProcessingClock::start(),
    };
    let mut state = super::CachedValueState::<u32, u32>::new("ttl", super::heap_table(ttl));
    // Every key is written once and then never again, as with ever-new keys.
    for round in 0..20u32 {
        for i in 0..1_000 {
            state.insert(round * 1_000 + i, i);
        }
        // Sweeps drop only expired entries.
        assert_eq!(state.len(), 1_000);
        for i in 0..1_000 {
            assert_eq!(state.get(&(round * 1_000 + i)), Some(&i));
        }
        tokio::time::advance(TTL).await;
    }
    assert!(state.is_empty());
    assert!(
        cached_entries(&state) <= 4_000,
        "{} entries kept in memory for 1,000 live at a time",
        cached_entries(&state)
    );
}
