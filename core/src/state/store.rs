//! The durable half of keyed state: versioned entries in one sled database per job.
//!
//! Every state of every operator lives in one tree. A data key is
//!
//! ```text
//! state id (u32) | key group (u16) | key length (u32) | key bytes | !epoch (u64)
//! ```
//!
//! all big-endian, so the versions of one key sit together, newest first (the epoch is stored
//! inverted). A version is tagged with the epoch of the checkpoint that contains it: what an
//! operator changes after barrier `n - 1` is written, at barrier `n` (or when its cache
//! overflows before), as version `n`. The state as of checkpoint `n` is therefore, per key, the
//! newest version at or below `n`; an empty value is a deletion.
//!
//! Restoring checkpoint `n` after a crash does not rewrite anything: the epochs the crashed run
//! had started after `n` are recorded as *aborted*, reads skip versions in aborted ranges, and
//! the new run tags its writes with epochs above every epoch ever started. Old versions are
//! removed when their key is written again and a newer version is old enough that no retained
//! checkpoint needs them (the *floor*: the oldest retained checkpoint).

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::error::StateError;

/// Which versions reads may see, and which old versions writes may remove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Visibility {
    /// Epochs started by a run that crashed after its last complete checkpoint (inclusive).
    pub(crate) aborted: Vec<(u64, u64)>,
    /// The oldest retained checkpoint: of the versions at or below it, only the newest is
    /// still needed.
    pub(crate) floor: u64,
}

impl Visibility {
    fn is_aborted(&self, epoch: u64) -> bool {
        self.aborted
            .iter()
            .any(|&(low, high)| (low..=high).contains(&epoch))
    }
}

const DATA_TREE: &str = "state";
const META_TREE: &str = "meta";
const META_VISIBILITY: &[u8] = b"visibility";
const META_LAST_TRIGGERED: &[u8] = b"last-triggered-epoch";
const META_NEXT_STATE_ID: &[u8] = b"next-state-id";
const META_STATE_PREFIX: &[u8] = b"state-id:";
/// Fixed part of a data key before the key bytes: state id, key group, key length.
const HEADER: usize = 4 + 2 + 4;

/// The keyed state of one job, in sled under the job's state directory.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    db: sled::Db,
    data: sled::Tree,
    meta: sled::Tree,
    visibility: RwLock<Visibility>,
    /// Serializes state id allocation.
    ids: std::sync::Mutex<()>,
}

/// One versioned write of a snapshot.
#[derive(Debug, Clone)]
pub(crate) struct VersionedWrite {
    /// The key's prefix (see [`StateStore::key_prefix`]).
    pub(crate) prefix: Vec<u8>,
    /// The new value; empty for a deletion.
    pub(crate) value: Vec<u8>,
}

/// Whether sled failed to open because another handle holds the database's file lock.
fn is_locked(error: &sled::Error) -> bool {
    match error {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock")
        }
        _ => false,
    }
}

impl StateStore {
    /// How long [`open`](Self::open) waits for a locked database before it reports it in use.
    pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

    /// Opens (or creates) the state database under `dir`.
    ///
    /// The database is locked while open. A job that ended in this process may still hold it
    /// for a moment (sled's I/O threads finish their last writes after the handle is dropped),
    /// so a locked database is tried again for up to [`LOCK_WAIT`](Self::LOCK_WAIT); after that it belongs to
    /// another running job and [`StateError::InUse`] says so.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let path = dir.join("state.sled");
        let config = sled::Config::new()
            .path(&path)
            // Durability comes from the explicit flush before a checkpoint record is written,
            // not from sled's periodic flush.
            .flush_every_ms(None)
            .cache_capacity(256 * 1024 * 1024);
        let started = std::time::Instant::now();
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) if is_locked(&e) && started.elapsed() < Self::LOCK_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) if is_locked(&e) => return Err(StateError::InUse { path }),
                Err(e) => return Err(StateError::store(&path, e)),
            }
        };
        let data = db
            .open_tree(DATA_TREE)
            .map_err(|e| StateError::store(&path, e))?;
        let meta = db
            .open_tree(META_TREE)
            .map_err(|e| StateError::store(&path, e))?;
        let visibility = match meta
            .get(META_VISIBILITY)
            .map_err(|e| StateError::store(&path, e))?
        {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path: path.clone(),
                what: format!("the state visibility record is unreadable ({e})"),
            })?,
            None => Visibility::default(),
        };
        Ok(StateStore {
            path,
            db,
            data,
            meta,
            visibility: RwLock::new(visibility),
            ids: std::sync::Mutex::new(()),
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, error: sled::Error) -> StateError {
        StateError::store(&self.path, error)
    }

    /// The id of state `name` of operator `operator`, allocated on first use and the same in
    /// every later run (so state is found again after a restart, at any parallelism).
    pub fn state_id(&self, operator: &str, name: &str) -> Result<u32, StateError> {
        let mut meta_key = META_STATE_PREFIX.to_vec();
        meta_key.extend_from_slice(operator.as_bytes());
        meta_key.push(0);
        meta_key.extend_from_slice(name.as_bytes());
        let _guard = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = self.meta.get(&meta_key).map_err(|e| self.err(e))? {
            return Ok(u32_of(&id));
        }
        let next = self
            .meta
            .get(META_NEXT_STATE_ID)
            .map_err(|e| self.err(e))?
            .map_or(0, |b| u32_of(&b));
        self.meta
            .insert(META_NEXT_STATE_ID, &(next + 1).to_be_bytes())
            .map_err(|e| self.err(e))?;
        self.meta
            .insert(meta_key, &next.to_be_bytes())
            .map_err(|e| self.err(e))?;
        Ok(next)
    }

    /// The `(operator, state)` names of every state ever created in this database.
    pub fn state_names(&self) -> Result<Vec<(String, String)>, StateError> {
        let mut names = Vec::new();
        for entry in self.meta.scan_prefix(META_STATE_PREFIX) {
            let (key, _) = entry.map_err(|e| self.err(e))?;
            let rest = &key[META_STATE_PREFIX.len()..];
            if let Some(split) = rest.iter().position(|&b| b == 0) {
                names.push((
                    String::from_utf8_lossy(&rest[..split]).into_owned(),
                    String::from_utf8_lossy(&rest[split + 1..]).into_owned(),
                ));
            }
        }
        Ok(names)
    }

    /// The prefix of every version of one key: state id, key group, key length, key bytes.
    pub(crate) fn key_prefix(state_id: u32, key_group: u32, key: &[u8]) -> Vec<u8> {
        let mut prefix = Vec::with_capacity(HEADER + key.len() + 8);
        prefix.extend_from_slice(&state_id.to_be_bytes());
        prefix.extend_from_slice(&(key_group as u16).to_be_bytes());
        prefix.extend_from_slice(&(key.len() as u32).to_be_bytes());
        prefix.extend_from_slice(key);
        prefix
    }

    /// The newest visible version of the key with this prefix; `None` when it has none or the
    /// newest is a deletion.
    pub(crate) fn read(&self, prefix: &[u8]) -> Result<Option<sled::IVec>, StateError> {
        let visibility = self.visibility.read().unwrap_or_else(|p| p.into_inner());
        for entry in self.data.scan_prefix(prefix) {
            let (key, value) = entry.map_err(|e| self.err(e))?;
            if key.len() != prefix.len() + 8 {
                continue;
            }
            if visibility.is_aborted(epoch_of(&key)) {
                continue;
            }
            return Ok((!value.is_empty()).then_some(value));
        }
        Ok(None)
    }

    /// Writes `writes` as versions of `epoch`, and removes the versions of those keys that no
    /// retained checkpoint needs any more. Returns the bytes written.
    #[cfg_attr(not(test), allow(dead_code))] // the cache uses `write_versions`
    pub(crate) fn write(&self, epoch: u64, writes: &[VersionedWrite]) -> Result<u64, StateError> {
        self.write_versions(epoch, writes, |_| false)
    }

    /// [`write`](Self::write), told by `is_new(i)` that the key of `writes[i]` has no version
    /// in the store at all (its caller knows): then it does not look for older versions.
    ///
    /// The writes are applied one by one, not as one sled batch: a checkpoint's writes need
    /// no atomicity (a checkpoint whose writes a crash cut short never completed, so its epoch
    /// is aborted on restore, and the versions removed are ones no retained checkpoint needs
    /// whatever else is written), and measured with a million keys, one batch of them all
    /// made later reads of those keys several times slower (see `benches/checkpoint.rs`).
    pub(crate) fn write_versions(
        &self,
        epoch: u64,
        writes: &[VersionedWrite],
        is_new: impl Fn(usize) -> bool,
    ) -> Result<u64, StateError> {
        let visibility = self
            .visibility
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut bytes = 0u64;
        let mut key = Vec::new();
        let mut obsolete = Vec::new();
        for (i, write) in writes.iter().enumerate() {
            key.clear();
            key.extend_from_slice(&write.prefix);
            key.extend_from_slice(&(!epoch).to_be_bytes());
            bytes += (key.len() + write.value.len()) as u64;
            if !is_new(i) {
                // Older versions: keep those above the floor, and the newest at or below it.
                let mut kept_one_at_floor = false;
                for entry in self.data.scan_prefix(&write.prefix) {
                    let (old_key, _) = entry.map_err(|e| self.err(e))?;
                    if old_key.len() != write.prefix.len() + 8 {
                        continue;
                    }
                    let old_epoch = epoch_of(&old_key);
                    if old_epoch >= epoch {
                        continue;
                    }
                    let remove = if visibility.is_aborted(old_epoch) {
                        true
                    } else if old_epoch > visibility.floor {
                        false
                    } else if kept_one_at_floor {
                        true
                    } else {
                        kept_one_at_floor = true;
                        false
                    };
                    if remove {
                        obsolete.push(old_key);
                    }
                }
                for old_key in obsolete.drain(..) {
                    self.data.remove(old_key).map_err(|e| self.err(e))?;
                }
            }
            self.data
                .insert(key.as_slice(), write.value.as_slice())
                .map_err(|e| self.err(e))?;
        }
        Ok(bytes)
    }

    /// Whether the store holds no version at all (visible or not) of any key of `state_id`, in
    /// any key group.
    pub(crate) fn is_empty(&self, state_id: u32) -> Result<bool, StateError> {
        match self.data.scan_prefix(state_id.to_be_bytes()).next() {
            None => Ok(true),
            Some(entry) => entry.map(|_| false).map_err(|e| self.err(e)),
        }
    }

    /// The data keys of `state_id` in `key_groups`: from `start` (inclusive) to `end`.
    fn range_of(state_id: u32, key_groups: RangeInclusive<u32>) -> (Vec<u8>, Vec<u8>) {
        let mut start = state_id.to_be_bytes().to_vec();
        start.extend_from_slice(&(*key_groups.start() as u16).to_be_bytes());
        let mut end = state_id.to_be_bytes().to_vec();
        end.extend_from_slice(&(*key_groups.end() as u16 + 1).to_be_bytes());
        (start, end)
    }

    /// Every key of `state_id` in `key_groups` with its newest visible value (deletions left
    /// out), as `(key bytes, value)`, in key order.
    ///
    /// On more than one core, the two halves of the key groups are read in parallel: a
    /// restore lists every key, and reading sled is most of its time.
    pub(crate) fn scan(
        &self,
        state_id: u32,
        key_groups: RangeInclusive<u32>,
    ) -> Result<Vec<(Vec<u8>, sled::IVec)>, StateError> {
        let visibility = self.visibility.read().unwrap_or_else(|p| p.into_inner());
        let (low, high) = (*key_groups.start(), *key_groups.end());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if high <= low || cores < 2 {
            return self.scan_range(state_id, key_groups, &visibility);
        }
        let mid = low + (high - low) / 2;
        let visibility: &Visibility = &visibility;
        let (first, second) = std::thread::scope(|scope| {
            let second = scope.spawn(|| self.scan_range(state_id, mid + 1..=high, visibility));
            let first = self.scan_range(state_id, low..=mid, visibility);
            let second = second
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (first, second)
        });
        let mut out = first?;
        out.extend(second?);
        Ok(out)
    }

    fn scan_range(
        &self,
        state_id: u32,
        key_groups: RangeInclusive<u32>,
        visibility: &Visibility,
    ) -> Result<Vec<(Vec<u8>, sled::IVec)>, StateError> {
        let mut out = Vec::new();
        let (start, end) = Self::range_of(state_id, key_groups);
        // The prefix of the key last decided (empty: none yet; no prefix is empty).
        let mut current: Vec<u8> = Vec::new();
        for entry in self.data.range(start..end) {
            let (key, value) = entry.map_err(|e| self.err(e))?;
            if key.len() < HEADER + 8 {
                continue;
            }
            let prefix = &key[..key.len() - 8];
            if current == prefix {
                continue; // an older version of a key already decided
            }
            if visibility.is_aborted(epoch_of(&key)) {
                continue;
            }
            current.clear();
            current.extend_from_slice(prefix);
            if !value.is_empty() {
                out.push((prefix[HEADER..].to_vec(), value));
            }
        }
        Ok(out)
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<u64, StateError> {
        self.db.flush().map(|b| b as u64).map_err(|e| self.err(e))
    }

    /// The highest epoch a run has triggered in this database (0 when none).
    pub fn last_triggered_epoch(&self) -> Result<u64, StateError> {
        Ok(self
            .meta
            .get(META_LAST_TRIGGERED)
            .map_err(|e| self.err(e))?
            .map_or(0, |b| u64_of(&b)))
    }

    /// Records that epoch `epoch` was triggered. Durable before anything of it is: sled
    /// recovers a prefix of its writes, and this write comes first.
    pub fn set_last_triggered_epoch(&self, epoch: u64) -> Result<(), StateError> {
        self.meta
            .insert(META_LAST_TRIGGERED, &epoch.to_be_bytes())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Prepares the database for a run that resumes from checkpoint `restored` (0: from
    /// nothing): the epochs started after it are aborted, and the run's first epoch is
    /// returned (above every epoch that may have versions).
    pub fn begin_run(&self, restored: u64) -> Result<u64, StateError> {
        let last = self.last_triggered_epoch()?;
        // Writes made after barrier `last` carry epoch `last + 1`.
        let highest_written = last + 1;
        let mut visibility = self.visibility.write().unwrap_or_else(|p| p.into_inner());
        if highest_written > restored {
            visibility.aborted.push((restored + 1, highest_written));
            merge_ranges(&mut visibility.aborted);
        }
        visibility.floor = visibility.floor.min(restored);
        self.save_visibility(&visibility)?;
        let first = highest_written + 1;
        drop(visibility);
        self.set_last_triggered_epoch(first - 1)?;
        self.flush()?;
        Ok(first)
    }

    /// Epochs started by runs that crashed before completing them (inclusive ranges).
    pub fn aborted_epochs(&self) -> Vec<(u64, u64)> {
        self.visibility
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .aborted
            .clone()
    }

    /// Sets the oldest retained checkpoint: older versions may now be removed.
    pub fn set_floor(&self, floor: u64) -> Result<(), StateError> {
        let mut visibility = self.visibility.write().unwrap_or_else(|p| p.into_inner());
        if floor > visibility.floor {
            visibility.floor = floor;
            self.save_visibility(&visibility)?;
        }
        Ok(())
    }

    fn save_visibility(&self, visibility: &Visibility) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(visibility).expect("visibility serializes");
        self.meta
            .insert(META_VISIBILITY, bytes)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Bytes the database takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StateError> {
        self.db.size_on_disk().map_err(|e| self.err(e))
    }
}

fn epoch_of(key: &[u8]) -> u64 {
    !u64_of(&key[key.len() - 8..])
}

fn u64_of(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(buf)
}

fn u32_of(bytes: &[u8]) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[..4]);
    u32::from_be_bytes(buf)
}

/// Sorts and joins overlapping or adjacent ranges.
fn merge_ranges(ranges: &mut Vec<(u64, u64)>) {
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(low, high) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if low <= last.1.saturating_add(1) => last.1 = last.1.max(high),
            _ => merged.push((low, high)),
        }
    }
    *ranges = merged;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a job run again in the same process right after the first ended could find
    /// the database still locked by sled's I/O threads, and failed to start.
    #[test]
    fn an_open_database_is_waited_for_then_reported_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateStore::open(dir.path()).unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(first);
        });
        let second = StateStore::open(dir.path()).expect("opened once the first let go");
        releaser.join().unwrap();

        let started = std::time::Instant::now();
        let Err(error) = StateStore::open(dir.path()) else {
            panic!("opened while `second` holds it");
        };
        assert!(started.elapsed() >= StateStore::LOCK_WAIT);
        assert!(matches!(error, StateError::InUse { .. }), "{error:?}");
        assert!(error.to_string().contains("in use by another running job"));
        drop(second);
    }

    fn write(store: &StateStore, epoch: u64, key: &[u8], value: &[u8]) {
        let prefix = StateStore::key_prefix(0, 3, key);
        store
            .write(
                epoch,
                &[VersionedWrite {
                    prefix,
                    value: value.to_vec(),
                }],
            )
            .unwrap();
    }

    fn read(store: &StateStore, key: &[u8]) -> Option<Vec<u8>> {
        store
            .read(&StateStore::key_prefix(0, 3, key))
            .unwrap()
            .map(|v| v.to_vec())
    }

    fn versions(store: &StateStore) -> usize {
        store.data.len()
    }

    #[test]
    fn reads_see_the_newest_version_and_skip_aborted_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.begin_run(0).unwrap(), 2);
        write(&store, 2, b"a", b"one");
        write(&store, 3, b"a", b"two");
        write(&store, 3, b"ab", b"other key");
        assert_eq!(read(&store, b"a").as_deref(), Some(&b"two"[..]));
        store.set_last_triggered_epoch(3).unwrap();
        // Crash; checkpoint 2 is the latest complete one.
        let first = store.begin_run(2).unwrap();
        assert!(first > 4);
        assert_eq!(read(&store, b"a").as_deref(), Some(&b"one"[..]));
        assert_eq!(
            read(&store, b"ab"),
            None,
            "written only in an aborted epoch"
        );
        write(&store, first, b"a", b"three");
        assert_eq!(read(&store, b"a").as_deref(), Some(&b"three"[..]));
        let keys = store.scan(0, 0..=127).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].0, b"a");
    }

    #[test]
    fn deletions_hide_older_versions_and_old_versions_are_removed_below_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store.begin_run(0).unwrap();
        for epoch in 2..10 {
            write(&store, epoch, b"k", format!("v{epoch}").as_bytes());
        }
        assert_eq!(versions(&store), 8, "nothing removed while the floor is 0");
        store.set_floor(7).unwrap();
        write(&store, 10, b"k", b"v10");
        // Kept: 10, 9, 8 (above the floor) and 7 (the newest at or below it).
        assert_eq!(versions(&store), 4);
        write(&store, 11, b"k", b"");
        assert_eq!(read(&store, b"k"), None);
    }

    #[test]
    fn state_ids_are_stable_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let store = StateStore::open(dir.path()).unwrap();
            let a = store.state_id("window", "accumulators").unwrap();
            let b = store.state_id("join", "left").unwrap();
            store.flush().unwrap();
            (a, b)
        };
        assert_ne!(a, b);
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.state_id("join", "left").unwrap(), b);
        assert_eq!(store.state_id("window", "accumulators").unwrap(), a);
        assert_eq!(store.state_names().unwrap().len(), 2);
    }

    #[test]
    fn ranges_merge() {
        let mut r = vec![(5, 6), (1, 2), (3, 4), (9, 10)];
        merge_ranges(&mut r);
        assert_eq!(r, vec![(1, 6), (9, 10)]);
    }
}
