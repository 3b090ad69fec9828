//! The durable half of keyed state: sorted runs in run files, listed by a manifest in one
//! sled database per job, written by a background writer.
//!
//! A snapshot's changes of one state are written per key group as one *run* (see
//! [`run`](super::run)): the entries sorted by key, cut into chunks of about 32 KB, appended
//! to the snapshot's run file (see [`files`](super::files)). Each run has a manifest entry in
//! sled that says where its chunks are; the small runs of a checkpoint of few keys share the
//! entry of a *pack* (see [`Place`]), so that it is a dozen sled writes, not one per key
//! group. A checkpoint of a million changed keys is one file written front to back and a few
//! hundred small sled writes. A run is tagged with
//! the epoch of the checkpoint that contains it: what an operator changes after barrier
//! `n - 1` is written, at barrier `n` (or when its cache overflows before), as epoch `n`. The
//! state as of checkpoint `n` is therefore, per key, its entry in the newest run at or below
//! `n`; an empty value is a deletion.
//!
//! The operator's task only hands the changed entries to the store's writer thread (see
//! [`StateStore::submit`]); encoding, sorting and writing happen there, off the critical path.
//! Reads wait for the writes handed over before them, and [`StateStore::flush`], which the
//! checkpoint coordinator calls before it writes a checkpoint record, waits for every write.
//!
//! Restoring checkpoint `n` after a crash rewrites nothing: the epochs the crashed run had
//! started after `n` are recorded as *aborted*, their runs are dropped, and the new run tags
//! its writes with epochs above every epoch ever started. Runs no retained checkpoint tells
//! apart (at or below the *floor*, the oldest retained checkpoint) are merged by the writer
//! when it is idle (see [`compaction`](super::compaction)), so a key is found in a handful of runs.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use sled::IVec;

use super::error::StateError;
use super::files::{RunFileWriter, RunFiles};
use super::run::{
    Chunk, ChunkBuilder, ChunkIndex, GroupChanges, Place, RunKey, RunMeta, CHUNK_BYTES,
    PACKED_RUN_BYTES, PACK_GROUP,
};

/// Which runs reads may see, and which runs may be merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Visibility {
    /// Epochs started by a run that crashed after its last complete checkpoint (inclusive).
    pub(crate) aborted: Vec<(u64, u64)>,
    /// The oldest retained checkpoint: of the entries at or below it, only the newest of
    /// each key is still needed.
    pub(crate) floor: u64,
}

impl Visibility {
    pub(crate) fn is_aborted(&self, epoch: u64) -> bool {
        self.aborted
            .iter()
            .any(|&(low, high)| (low..=high).contains(&epoch))
    }
}

/// The runs of every state and key group, newest first.
pub(crate) type Manifest = BTreeMap<(u32, u16), Vec<RunMeta>>;

/// Work for the writer thread.
pub(crate) type WriteJob = Box<dyn FnOnce(&Shared) -> Result<(), StateError> + Send>;

/// One entry per run of its own and per pack: run id -> where its chunks are (see
/// [`RunMeta::encode_value`] and [`RunMeta::encode_pack`]).
const MANIFEST_TREE: &str = "run-manifest";
const META_TREE: &str = "meta";
/// Where earlier layouts kept their data: one sled entry per key and version (`state`); run
/// ids with the key group before the epoch (`runs`, `manifest`); chunks in sled rather than
/// in run files (`runs-by-epoch`, `manifest-by-epoch`).
const LEGACY_TREES: [&str; 5] = [
    "state",
    "runs",
    "manifest",
    "runs-by-epoch",
    "manifest-by-epoch",
];
const META_VISIBILITY: &[u8] = b"visibility";
const META_LAST_TRIGGERED: &[u8] = b"last-triggered-epoch";
const META_NEXT_STATE_ID: &[u8] = b"next-state-id";
const META_STATE_PREFIX: &[u8] = b"state-id:";

/// How far the writer has got with the jobs handed to it.
#[derive(Debug, Default)]
struct Progress {
    applied: u64,
    /// The first write that failed: every later wait reports it (the job must restart from
    /// its last checkpoint, since a write is lost).
    failure: Option<String>,
}

/// What the store's handle and its writer thread share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) path: PathBuf,
    db: sled::Db,
    pub(crate) files: RunFiles,
    manifest_tree: sled::Tree,
    meta: sled::Tree,
    /// Lock order: `visibility` before `manifest`.
    pub(crate) visibility: RwLock<Visibility>,
    pub(crate) manifest: RwLock<Manifest>,
    next_seq: AtomicU32,
    /// Bytes of runs written for snapshots since [`StateStore::take_written_bytes`].
    written: AtomicU64,
    progress: Mutex<Progress>,
    progressed: Condvar,
    /// Held by a merge and by [`StateStore::begin_run`]: they change the same runs.
    pub(crate) merging: Mutex<()>,
    /// A merge failed: the writer stops merging (reads stay correct, only slower).
    merge_failed: AtomicBool,
    /// A checkpoint was triggered, or snapshot writes were applied, that no flush has made
    /// durable yet: merging waits, so that the checkpoint's flush writes its own changes, not
    /// a merge's output too.
    unflushed: AtomicBool,
    /// Held by [`flush_manifest`](Self::flush_manifest).
    flushing: Mutex<()>,
    /// Emptied snapshot buffers, handed out again (see [`StateStore::snapshot_buffers`]).
    spare_buffers: Mutex<Vec<Vec<GroupChanges>>>,
}

/// How many sets of snapshot buffers the store keeps for reuse.
const SPARE_SETS: usize = 2;
/// Buffers holding more than this are freed rather than kept: one snapshot of a very large
/// change should not pin its memory for the rest of the run.
const SPARE_SET_BYTES: usize = 64 << 20;

/// The keyed state of one job: run files and a sled database under the job's state
/// directory.
#[derive(Debug)]
pub struct StateStore {
    shared: Arc<Shared>,
    writer: Mutex<Option<(mpsc::Sender<WriteJob>, std::thread::JoinHandle<()>)>>,
    /// Jobs handed to the writer so far.
    submitted: AtomicU64,
    /// Serializes state id allocation.
    ids: Mutex<()>,
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

/// State written by an omstream whose layout this one does not read (one sled entry per key
/// and version in 512 KB segments, or run ids with the key group first).
fn older_layout(path: &Path) -> StateError {
    StateError::Corrupt {
        path: path.to_path_buf(),
        what: "the state was written by an older omstream, whose layout this version does not \
               read; start the job afresh (remove the state directory, or give the job a new one)"
            .into(),
    }
}

/// Locks `mutex`, also after a panic of another holder (what it guards stays consistent).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl StateStore {
    /// How long [`open`](Self::open) waits for a locked database before it reports it in use.
    pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

    /// Opens (or creates) the state store under `dir`.
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
            // Only the manifest and a few records live in sled; chunks are cached by the
            // run files' block cache.
            .cache_capacity(32 * 1024 * 1024);
        let started = std::time::Instant::now();
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) if is_locked(&e) && started.elapsed() < Self::LOCK_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) if is_locked(&e) => return Err(StateError::InUse { path }),
                Err(sled::Error::Unsupported(what)) if what.contains("io buffer size") => {
                    return Err(older_layout(&path))
                }
                Err(e) => return Err(StateError::store(&path, e)),
            }
        };
        let locked_and_opened = started.elapsed();
        let err = |e| StateError::store(&path, e);
        for legacy in LEGACY_TREES {
            if db.tree_names().iter().any(|name| name == legacy.as_bytes())
                && !db.open_tree(legacy).map_err(err)?.is_empty()
            {
                return Err(older_layout(&path));
            }
        }
        let manifest_tree = db.open_tree(MANIFEST_TREE).map_err(err)?;
        let meta = db.open_tree(META_TREE).map_err(err)?;
        let visibility = match meta.get(META_VISIBILITY).map_err(err)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path: path.clone(),
                what: format!("the state visibility record is unreadable ({e})"),
            })?,
            None => Visibility::default(),
        };
        let mut manifest = Manifest::new();
        let mut file_refs = std::collections::HashMap::new();
        let mut next_seq = 0;
        for entry in manifest_tree.iter() {
            let (id, value) = entry.map_err(err)?;
            let runs = RunMeta::decode(&id, &value).ok_or_else(|| StateError::Corrupt {
                path: path.clone(),
                what: "a run of the state manifest is unreadable".into(),
            })?;
            for run in runs {
                next_seq = next_seq.max(run.key.seq.saturating_add(1));
                *file_refs.entry(run.file).or_default() += 1;
                // The tree is in run id order (a pack's members share its id): newest first
                // within a group.
                manifest
                    .entry((run.key.state, run.key.key_group))
                    .or_default()
                    .push(run);
            }
        }
        let runs: usize = file_refs.values().sum();
        let files = RunFiles::open(dir, file_refs)?;
        // Where an open's time goes: sled replays its log since its last open, and waits for
        // a job that ended in this process to let go of the database.
        tracing::info!(
            store = %path.display(),
            runs,
            sled_open_ms = locked_and_opened.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "state store opened"
        );
        let shared = Arc::new(Shared {
            path,
            db,
            files,
            manifest_tree,
            meta,
            visibility: RwLock::new(visibility),
            manifest: RwLock::new(manifest),
            next_seq: AtomicU32::new(next_seq),
            written: AtomicU64::new(0),
            progress: Mutex::new(Progress::default()),
            progressed: Condvar::new(),
            merging: Mutex::new(()),
            merge_failed: AtomicBool::new(false),
            unflushed: AtomicBool::new(false),
            flushing: Mutex::new(()),
            spare_buffers: Mutex::new(Vec::new()),
        });
        let (sender, jobs) = mpsc::channel();
        let writer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("omstream-state-writer".into())
            .spawn(move || writer_loop(&writer, &jobs))
            .map_err(|e| StateError::Corrupt {
                path: shared.path.clone(),
                what: format!("cannot start the state writer thread ({e})"),
            })?;
        Ok(StateStore {
            shared,
            writer: Mutex::new(Some((sender, thread))),
            submitted: AtomicU64::new(0),
            ids: Mutex::new(()),
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    fn err(&self, error: sled::Error) -> StateError {
        StateError::store(&self.shared.path, error)
    }

    /// The id of state `name` of operator `operator`, allocated on first use and the same in
    /// every later run (so state is found again after a restart, at any parallelism).
    pub fn state_id(&self, operator: &str, name: &str) -> Result<u32, StateError> {
        let meta = &self.shared.meta;
        let mut meta_key = META_STATE_PREFIX.to_vec();
        meta_key.extend_from_slice(operator.as_bytes());
        meta_key.push(0);
        meta_key.extend_from_slice(name.as_bytes());
        let _guard = lock(&self.ids);
        if let Some(id) = meta.get(&meta_key).map_err(|e| self.err(e))? {
            return Ok(u32_of(&id));
        }
        let next = self.next_state_id()?;
        meta.insert(META_NEXT_STATE_ID, &(next + 1).to_be_bytes())
            .map_err(|e| self.err(e))?;
        meta.insert(meta_key, &next.to_be_bytes())
            .map_err(|e| self.err(e))?;
        Ok(next)
    }

    fn next_state_id(&self) -> Result<u32, StateError> {
        Ok(self
            .shared
            .meta
            .get(META_NEXT_STATE_ID)
            .map_err(|e| self.err(e))?
            .map_or(0, |b| u32_of(&b)))
    }

    /// The `(operator, state)` names of every state ever created in this database.
    pub fn state_names(&self) -> Result<Vec<(String, String)>, StateError> {
        let mut names = Vec::new();
        for entry in self.shared.meta.scan_prefix(META_STATE_PREFIX) {
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

    /// Hands `job` to the writer thread; jobs run one at a time, in the order handed over.
    /// A failure is reported by the next read, wait or [`flush`](Self::flush).
    pub(crate) fn submit(&self, job: WriteJob) {
        let writer = lock(&self.writer);
        let (sender, _) = writer
            .as_ref()
            .expect("the writer runs while the store is open");
        self.submitted.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::SendError(job)) = sender.send(job) {
            // The writer thread is gone (it only ends with the store): do the job here.
            let result = job(&self.shared);
            self.shared.applied(result);
        }
    }

    /// Empty buffers for one snapshot's changes, one per key group: buffers the writer is done
    /// with when there are any. Reusing them spares a snapshot of a million keys growing
    /// fresh buffers (and faulting in their pages) every checkpoint.
    pub(crate) fn snapshot_buffers(&self, key_groups: usize) -> Vec<GroupChanges> {
        let spare = lock(&self.shared.spare_buffers).pop();
        let mut groups = spare.unwrap_or_default();
        groups.resize_with(key_groups, GroupChanges::default);
        groups
    }

    /// Waits until every job handed to the writer so far has been applied.
    pub(crate) fn wait_applied(&self) -> Result<(), StateError> {
        let target = self.submitted.load(Ordering::SeqCst);
        let mut progress = lock(&self.shared.progress);
        while progress.applied < target && progress.failure.is_none() {
            progress = self
                .shared
                .progressed
                .wait(progress)
                .unwrap_or_else(|p| p.into_inner());
        }
        match &progress.failure {
            Some(message) => Err(StateError::WriteFailed {
                path: self.shared.path.clone(),
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The newest visible value of `key` (its encoded bytes) in state `state` and key group
    /// `key_group`; `None` when it has none or the newest entry is a deletion.
    pub(crate) fn read(
        &self,
        state: u32,
        key_group: u16,
        key: &[u8],
    ) -> Result<Option<IVec>, StateError> {
        self.wait_applied()?;
        let shared = &self.shared;
        let visibility = read(&shared.visibility);
        let manifest = read(&shared.manifest);
        let Some(runs) = manifest.get(&(state, key_group)) else {
            return Ok(None);
        };
        for run in runs.iter().filter(|r| !visibility.is_aborted(r.key.epoch)) {
            if let Some(value) = shared.lookup(run, key)? {
                return Ok((!value.is_empty()).then_some(value));
            }
        }
        Ok(None)
    }

    /// Whether the store holds no entry at all (visible or not) of any key of `state`, in
    /// any key group.
    pub(crate) fn is_empty(&self, state: u32) -> Result<bool, StateError> {
        self.wait_applied()?;
        let manifest = read(&self.shared.manifest);
        Ok(manifest
            .range((state, 0)..=(state, u16::MAX))
            .all(|(_, runs)| runs.is_empty()))
    }

    /// Calls `f` on every live entry of `state` in `key_groups` (key and value bytes, group
    /// by group, each group in key order) without gathering them: a helper thread reads and
    /// merges the next group's runs while `f` handles this one, so a restore that decodes
    /// every value holds one group of entries at a time instead of the whole state (a GB
    /// of fresh memory costs about a second of page faults on a small VM).
    pub(crate) fn scan_each(
        &self,
        state: u32,
        key_groups: RangeInclusive<u32>,
        f: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<(), StateError> {
        self.wait_applied()?;
        let shared = &self.shared;
        let group_entries = |key_group: u32| -> Result<Vec<(IVec, IVec)>, StateError> {
            let mut out = Vec::new();
            let (manifest, visibility) = (read(&shared.manifest), read(&shared.visibility));
            shared.visible_entries(&manifest, &visibility, (state, key_group), &mut out)?;
            Ok(out)
        };
        std::thread::scope(|scope| {
            // One group ahead: the reader never holds more than two groups' entries.
            let (groups, received) = mpsc::sync_channel(1);
            let reader = scope.spawn(move || {
                for key_group in key_groups {
                    let entries = group_entries(key_group);
                    let failed = entries.is_err();
                    if groups.send(entries).is_err() || failed {
                        return;
                    }
                }
            });
            for entries in received {
                for (key, value) in entries? {
                    f(&key, &value);
                }
            }
            reader
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            Ok(())
        })
    }

    /// Every key of `state` in `key_groups` with its newest visible value (deletions left
    /// out), as `(key bytes, value)`, in key order within each key group.
    ///
    /// On more than one core, the two halves of the key groups are read in parallel. (A
    /// restore that visits every value uses [`scan_each`](Self::scan_each), which does not
    /// gather them.)
    pub(crate) fn scan(
        &self,
        state: u32,
        key_groups: RangeInclusive<u32>,
    ) -> Result<Vec<(IVec, IVec)>, StateError> {
        self.wait_applied()?;
        let shared = &self.shared;
        let visibility = read(&shared.visibility);
        let manifest = read(&shared.manifest);
        let (low, high) = (*key_groups.start(), *key_groups.end());
        let scan = |groups: RangeInclusive<u32>| -> Result<Vec<(IVec, IVec)>, StateError> {
            let mut out = Vec::new();
            for key_group in groups {
                shared.visible_entries(&manifest, &visibility, (state, key_group), &mut out)?;
            }
            Ok(out)
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if high <= low || cores < 2 {
            return scan(key_groups);
        }
        let mid = low + (high - low) / 2;
        let (first, second) = std::thread::scope(|scope| {
            let second = scope.spawn(|| scan(mid + 1..=high));
            let first = scan(low..=mid);
            let second = second
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (first, second)
        });
        let mut out = first?;
        out.extend(second?);
        Ok(out)
    }

    /// Makes every write so far durable: the run files written since the last flush, then
    /// the manifest. Returns the bytes written to disk (as far as the store knows).
    pub fn flush(&self) -> Result<u64, StateError> {
        self.wait_applied()?;
        let shared = &self.shared;
        let synced = shared.files.sync_written()?;
        let flushed = shared.flush_manifest()?;
        shared.unflushed.store(false, Ordering::SeqCst);
        self.wake_writer();
        Ok(synced + flushed)
    }

    /// Wakes the writer to merge, if runs need it: it waits for jobs when it has nothing to
    /// merge or may not merge yet, and nothing else would wake it before the next snapshot
    /// write, which pauses merging again.
    fn wake_writer(&self) {
        self.submit(Box::new(|_| Ok(())));
    }

    /// Bytes of runs written for snapshots since the last call (what a checkpoint wrote, when
    /// called after its [`flush`](Self::flush)).
    pub fn take_written_bytes(&self) -> u64 {
        self.shared.written.swap(0, Ordering::SeqCst)
    }

    /// The highest epoch a run has triggered in this database (0 when none).
    pub fn last_triggered_epoch(&self) -> Result<u64, StateError> {
        Ok(self
            .shared
            .meta
            .get(META_LAST_TRIGGERED)
            .map_err(|e| self.err(e))?
            .map_or(0, |b| u64_of(&b)))
    }

    /// Records that epoch `epoch` was triggered. Durable before anything of it is: sled
    /// recovers a prefix of its writes, and this write comes first.
    ///
    /// Merging pauses from here until the checkpoint's [`flush`](Self::flush): while the
    /// barrier travels, the writer flushes what it merged so far, so that the checkpoint's
    /// flush writes the checkpoint's changes and not pages a merge dirtied (a checkpoint of
    /// 1 % of a million keys right after one of all of them: 56 ms, most of it a merge's).
    pub fn set_last_triggered_epoch(&self, epoch: u64) -> Result<(), StateError> {
        self.shared
            .meta
            .insert(META_LAST_TRIGGERED, &epoch.to_be_bytes())
            .map_err(|e| self.err(e))?;
        self.shared.unflushed.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Prepares the database for a run that resumes from checkpoint `restored` (0: from
    /// nothing): the epochs started after it are aborted and their runs dropped, and the
    /// run's first epoch is returned (above every epoch that may have runs).
    pub fn begin_run(&self, restored: u64) -> Result<u64, StateError> {
        self.wait_applied()?;
        let shared = &self.shared;
        let _merging = lock(&shared.merging);
        let last = self.last_triggered_epoch()?;
        // Writes made after barrier `last` carry epoch `last + 1`.
        let highest_written = last + 1;
        let mut visibility = write(&shared.visibility);
        if highest_written > restored {
            visibility.aborted.push((restored + 1, highest_written));
            merge_ranges(&mut visibility.aborted);
        }
        visibility.floor = visibility.floor.min(restored);
        shared.save_visibility(&visibility)?;
        if highest_written > restored {
            self.drop_epochs(&visibility)?;
        }
        let first = highest_written + 1;
        drop(visibility);
        self.set_last_triggered_epoch(first - 1)?;
        self.flush()?;
        Ok(first)
    }

    /// Removes every run of the aborted epochs (run files a crash left without any manifest
    /// entry were deleted when the store opened).
    fn drop_epochs(&self, visibility: &Visibility) -> Result<(), StateError> {
        let shared = &self.shared;
        let mut manifest = write(&shared.manifest);
        let aborted: Vec<RunMeta> = manifest
            .values()
            .flatten()
            .filter(|r| visibility.is_aborted(r.key.epoch))
            .cloned()
            .collect();
        for runs in manifest.values_mut() {
            runs.retain(|r| !visibility.is_aborted(r.key.epoch));
        }
        for run in &aborted {
            shared.remove_run(run, &manifest)?;
        }
        manifest.retain(|_, runs| !runs.is_empty());
        Ok(())
    }

    /// Epochs started by runs that crashed before completing them (inclusive ranges).
    pub fn aborted_epochs(&self) -> Vec<(u64, u64)> {
        read(&self.shared.visibility).aborted.clone()
    }

    /// Sets the oldest retained checkpoint: older runs may now be merged.
    pub fn set_floor(&self, floor: u64) -> Result<(), StateError> {
        let mut visibility = write(&self.shared.visibility);
        if floor > visibility.floor {
            visibility.floor = floor;
            self.shared.save_visibility(&visibility)?;
            drop(visibility);
            // Runs below the new floor may be merged now.
            self.wake_writer();
        }
        Ok(())
    }

    /// Bytes the store takes on disk: its run files and its sled database.
    pub fn size_on_disk(&self) -> Result<u64, StateError> {
        let db = self.shared.db.size_on_disk().map_err(|e| self.err(e))?;
        Ok(db + self.shared.files.size()?)
    }

    /// Runs of `state` in `key_group`, newest first (for tests and benchmarks).
    #[cfg(test)]
    pub(crate) fn runs(&self, state: u32, key_group: u16) -> Vec<RunMeta> {
        read(&self.shared.manifest)
            .get(&(state, key_group))
            .cloned()
            .unwrap_or_default()
    }

    /// Waits for every write, then lets the writer merge until it has nothing left to merge.
    #[cfg(test)]
    pub(crate) fn settle(&self) -> Result<(), StateError> {
        self.wait_applied()?;
        self.flush()?;
        while self.shared.merge_some().is_some() {}
        Ok(())
    }
}

impl Drop for StateStore {
    fn drop(&mut self) {
        // The writer finishes what it was handed, then ends, and the database is closed.
        if let Some((sender, thread)) = lock(&self.writer).take() {
            drop(sender);
            // A thread cannot wait for itself (a job should not hold the store, but if the
            // last handle goes on the writer thread, the thread ends after this job anyway).
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// Bytes of runs merged (written and removed) after which the writer flushes, rather than
/// leave the pages they dirtied to the next checkpoint's flush.
const MERGE_FLUSH_BYTES: u64 = 1 << 20;

/// Runs of one key group past which merging no longer waits for a checkpoint's flush (see
/// [`Shared::runs_pile_up`]): a merge takes the runs at or below the floor once there are
/// [`MAX_RUNS_AT_FLOOR`](super::compaction::MAX_RUNS_AT_FLOOR), and the retained checkpoints
/// keep a few more above it.
const PILE_UP_RUNS: usize = 2 * super::compaction::MAX_RUNS_AT_FLOOR;

/// The writer thread: handed jobs first, merges when idle (and flushes what it merged, so a
/// checkpoint's flush has only its own changes to write).
fn writer_loop(shared: &Shared, jobs: &mpsc::Receiver<WriteJob>) {
    let mut merged_unflushed = 0u64;
    loop {
        let job = match jobs.try_recv() {
            Ok(job) => job,
            Err(mpsc::TryRecvError::Disconnected) => return,
            Err(mpsc::TryRecvError::Empty) => {
                if let Some(bytes) = shared.merge_some() {
                    merged_unflushed += bytes;
                    if merged_unflushed >= MERGE_FLUSH_BYTES {
                        shared.flush_merges(&mut merged_unflushed);
                    }
                    continue;
                }
                shared.flush_merges(&mut merged_unflushed);
                match jobs.recv() {
                    Ok(job) => job,
                    Err(mpsc::RecvError) => return,
                }
            }
        };
        let result = job(shared);
        shared.applied(result);
    }
}

impl Shared {
    fn err(&self, error: sled::Error) -> StateError {
        StateError::store(&self.path, error)
    }

    fn corrupt(&self, run: &RunKey) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            what: format!(
                "a chunk of state {} (key group {}, epoch {}) is damaged; restore an older \
                 checkpoint or start the job afresh",
                run.state, run.key_group, run.epoch
            ),
        }
    }

    /// Records that a job finished.
    fn applied(&self, result: Result<(), StateError>) {
        let mut progress = lock(&self.progress);
        progress.applied += 1;
        if let Err(error) = result {
            tracing::error!(store = %self.path.display(), %error, "a state write failed");
            progress.failure.get_or_insert_with(|| error.to_string());
        }
        self.progressed.notify_all();
    }

    fn save_visibility(&self, visibility: &Visibility) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(visibility).expect("visibility serializes");
        self.meta
            .insert(META_VISIBILITY, bytes)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A sequence number above every run's.
    pub(crate) fn next_seq(&self) -> u32 {
        self.next_seq.fetch_add(1, Ordering::SeqCst)
    }

    /// The value `run` holds for `key` (empty: a deletion); `None` when it has none.
    fn lookup(&self, run: &RunMeta, key: &[u8]) -> Result<Option<IVec>, StateError> {
        let (offset, len) = match &run.place {
            Place::Packed { offset, len, .. } => (*offset, *len),
            Place::Chunks(index) => match index.find(key) {
                Some(chunk) => chunk,
                None => return Ok(None),
            },
        };
        let chunk = self
            .files
            .read(run.file, offset, len)
            .map_err(|e| self.unreadable(&run.key, e))?;
        let chunk = Chunk::parse(&chunk).ok_or_else(|| self.corrupt(&run.key))?;
        chunk.lookup(key).map_err(|()| self.corrupt(&run.key))
    }

    /// A chunk of `run` that could not be read: the file is damaged or gone.
    fn unreadable(&self, run: &RunKey, error: StateError) -> StateError {
        match error {
            StateError::RunFile { source, .. }
                if source.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                self.corrupt(run)
            }
            other => other,
        }
    }

    /// Every entry of `run`, in key order, as slices of its chunks.
    fn run_entries(&self, run: &RunMeta) -> Result<Vec<(IVec, IVec)>, StateError> {
        let mut out = Vec::new();
        let mut add = |(offset, len): (u64, u32)| {
            let bytes = self
                .files
                .read_once(run.file, offset, len)
                .map_err(|e| self.unreadable(&run.key, e))?;
            let chunk = Chunk::parse(&bytes).ok_or_else(|| self.corrupt(&run.key))?;
            out.reserve(chunk.len());
            for i in 0..chunk.len() {
                out.push(chunk.entry(i).ok_or_else(|| self.corrupt(&run.key))?);
            }
            Ok::<_, StateError>(())
        };
        match &run.place {
            Place::Packed { offset, len, .. } => add((*offset, *len))?,
            Place::Chunks(index) => index.chunks().try_for_each(add)?,
        }
        Ok(out)
    }

    /// The live entries of one group of one state, as a reader sees them (aborted epochs
    /// left out, deletions dropped), in key order, appended to `out`.
    fn visible_entries(
        &self,
        manifest: &Manifest,
        visibility: &Visibility,
        (state, key_group): (u32, u32),
        out: &mut Vec<(IVec, IVec)>,
    ) -> Result<(), StateError> {
        let Some(runs) = manifest.get(&(state, key_group as u16)) else {
            return Ok(());
        };
        let visible: Vec<&RunMeta> = runs
            .iter()
            .filter(|r| !visibility.is_aborted(r.key.epoch))
            .collect();
        self.merged_entries(&visible, true, out)
    }

    /// The entries of `runs` (newest first) merged: per key, the newest entry, in key
    /// order, appended to `out`. With `drop_deletions`, deletions are left out.
    pub(crate) fn merged_entries(
        &self,
        runs: &[&RunMeta],
        drop_deletions: bool,
        out: &mut Vec<(IVec, IVec)>,
    ) -> Result<(), StateError> {
        let keep = |value: &IVec| !(drop_deletions && value.is_empty());
        let mut inputs = Vec::with_capacity(runs.len());
        for run in runs {
            inputs.push(self.run_entries(run)?);
        }
        if inputs.len() == 1 {
            let single = inputs.pop().expect("one run");
            out.extend(single.into_iter().filter(|(_, value)| keep(value)));
            return Ok(());
        }
        // A k-way merge of sorted runs (k is small): the smallest key next; of equal keys,
        // the newest run's entry (the first found), the others skipped.
        let mut at = vec![0usize; inputs.len()];
        loop {
            let mut newest: Option<usize> = None;
            for i in 0..inputs.len() {
                let Some((key, _)) = inputs[i].get(at[i]) else {
                    continue;
                };
                if newest.is_none_or(|n| key[..] < inputs[n][at[n]].0[..]) {
                    newest = Some(i);
                }
            }
            let Some(n) = newest else {
                return Ok(());
            };
            let (key, value) = inputs[n][at[n]].clone();
            at[n] += 1;
            for i in 0..inputs.len() {
                if inputs[i].get(at[i]).is_some_and(|(other, _)| *other == key) {
                    at[i] += 1;
                }
            }
            if keep(&value) {
                out.push((key, value));
            }
        }
    }

    /// Appends `entries` (sorted by key, keys unique) to `out` as the chunks of run `key`.
    /// Returns what the manifest keeps of it (see [`record_run`](Self::record_run)).
    pub(crate) fn write_run<'a>(
        &self,
        key: RunKey,
        entries: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        out: &mut RunFileWriter,
    ) -> Result<RunMeta, StateError> {
        let mut builder = ChunkBuilder::new();
        let mut index = ChunkIndex::default();
        let (mut count, mut bytes) = (0u64, 0u64);
        let mut last_key: &[u8] = &[];
        let mut write_chunk = |builder: &mut ChunkBuilder, last_key: &[u8]| {
            let chunk = builder.finish();
            let offset = out.append(&chunk)?;
            index.push(offset, chunk.len() as u32, last_key);
            bytes += chunk.len() as u64;
            Ok::<_, StateError>(())
        };
        for (entry_key, value) in entries {
            builder.push(entry_key, value);
            count += 1;
            last_key = entry_key;
            if builder.is_full() {
                write_chunk(&mut builder, last_key)?;
            }
        }
        if !builder.is_empty() {
            write_chunk(&mut builder, last_key)?;
        }
        Ok(RunMeta {
            key,
            entries: count,
            bytes,
            file: out.id,
            place: Place::Chunks(Arc::new(index)),
        })
    }

    /// Writes the manifest entry of `run`, a run of its own.
    pub(crate) fn record_run(&self, run: &RunMeta) -> Result<(), StateError> {
        self.manifest_tree
            .insert(run.key.id(), run.encode_value())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Removes `run`'s manifest entry (not its place in `manifest`, which no longer lists
    /// it or lists it for removal too). A run in a pack leaves the pack's manifest entry,
    /// which goes with its last member. A run file is deleted once no run is left in it,
    /// after the flush that makes that durable (see [`files`](super::files)).
    pub(crate) fn remove_run(&self, run: &RunMeta, manifest: &Manifest) -> Result<(), StateError> {
        match run.pack() {
            None => {
                self.manifest_tree
                    .remove(run.key.id())
                    .map_err(|e| self.err(e))?;
            }
            Some(pack) => {
                let others: Vec<&RunMeta> = manifest
                    .range((pack.state, 0)..(pack.state, PACK_GROUP))
                    .flat_map(|(_, runs)| runs)
                    .filter(|other| other.pack() == Some(pack) && other.key != run.key)
                    .collect();
                if others.is_empty() {
                    self.manifest_tree
                        .remove(pack.id())
                        .map_err(|e| self.err(e))?;
                } else {
                    self.manifest_tree
                        .insert(pack.id(), RunMeta::encode_pack(run.file, others))
                        .map_err(|e| self.err(e))?;
                }
            }
        }
        self.files.remove_ref(run.file);
        Ok(())
    }

    /// Writes a snapshot's changes of `state` as runs of `epoch`: `groups[g]` holds key
    /// group `g`'s entries (an empty value: a deletion), keys unique.
    pub(crate) fn write_changes(
        &self,
        state: u32,
        epoch: u64,
        mut groups: Vec<GroupChanges>,
    ) -> Result<(), StateError> {
        let written = self.write_groups(state, epoch, &mut groups);
        self.recycle(groups);
        written
    }

    /// Keeps a snapshot's buffers for the next one (see [`StateStore::snapshot_buffers`]).
    fn recycle(&self, mut groups: Vec<GroupChanges>) {
        if groups.iter().map(GroupChanges::capacity).sum::<usize>() > SPARE_SET_BYTES {
            return;
        }
        groups.iter_mut().for_each(GroupChanges::clear);
        let mut spare = lock(&self.spare_buffers);
        if spare.len() < SPARE_SETS {
            spare.push(groups);
        }
    }

    fn write_groups(
        &self,
        state: u32,
        epoch: u64,
        groups: &mut [GroupChanges],
    ) -> Result<(), StateError> {
        assert!(
            groups.len() < PACK_GROUP as usize,
            "key group {PACK_GROUP} names packs, not a key group"
        );
        if groups.iter().all(GroupChanges::is_empty) {
            return Ok(());
        }
        let mut out = self.files.create()?;
        let mut written = Vec::new();
        let mut pack = PackBuilder::default();
        for (key_group, entries) in groups.iter_mut().enumerate() {
            if entries.is_empty() {
                continue;
            }
            if entries.chunk_len() <= PACKED_RUN_BYTES {
                let pack_key = *pack.key.get_or_insert_with(|| RunKey {
                    state,
                    key_group: PACK_GROUP,
                    epoch,
                    seq: self.next_seq(),
                });
                pack.add(
                    pack_key,
                    key_group as u16,
                    entries.len() as u64,
                    entries.sorted(),
                    &mut out,
                )?;
                if pack.bytes >= CHUNK_BYTES as u64 {
                    self.write_pack(&mut pack, out.id, &mut written)?;
                }
                continue;
            }
            let key = RunKey {
                state,
                key_group: key_group as u16,
                epoch,
                seq: self.next_seq(),
            };
            let meta = self.write_run(key, entries.sorted(), &mut out)?;
            self.record_run(&meta)?;
            written.push(meta);
        }
        self.write_pack(&mut pack, out.id, &mut written)?;
        // Readers see the runs once their bytes are in the file system (its fsync waits for
        // the checkpoint's flush).
        self.files.finish(out, false)?;
        self.add_runs(written);
        Ok(())
    }

    /// Lists newly written snapshot runs in the manifest, each before every older run of
    /// its group.
    fn add_runs(&self, written: Vec<RunMeta>) {
        self.written.fetch_add(
            written.iter().map(|r| r.bytes).sum::<u64>(),
            Ordering::SeqCst,
        );
        self.unflushed.store(true, Ordering::SeqCst);
        if let Some(first) = written.first() {
            self.files.add_refs(first.file, written.len());
        }
        let mut manifest = write(&self.manifest);
        for meta in written {
            let key = meta.key;
            let runs = manifest.entry((key.state, key.key_group)).or_default();
            let at = runs
                .iter()
                .position(|r| (r.key.epoch, r.key.seq) < (key.epoch, key.seq))
                .unwrap_or(runs.len());
            runs.insert(at, meta);
        }
    }

    /// Writes the manifest entry of the pack `pack` gathered in `file`, if any, moves its
    /// members to `written` and empties it.
    fn write_pack(
        &self,
        pack: &mut PackBuilder,
        file: u64,
        written: &mut Vec<RunMeta>,
    ) -> Result<(), StateError> {
        let Some(key) = pack.key.take() else {
            return Ok(());
        };
        self.manifest_tree
            .insert(key.id(), RunMeta::encode_pack(file, &pack.members))
            .map_err(|e| self.err(e))?;
        written.append(&mut pack.members);
        pack.bytes = 0;
        Ok(())
    }

    /// Merges a batch of the groups that need it (see [`compaction`](super::compaction)),
    /// unless snapshot writes wait for their flush and runs do not pile up. Returns the bytes
    /// written and removed, `None` when it merged nothing.
    fn merge_some(&self) -> Option<u64> {
        if self.merge_failed.load(Ordering::SeqCst) {
            return None;
        }
        if self.unflushed.load(Ordering::SeqCst) && !self.runs_pile_up() {
            return None;
        }
        match super::compaction::merge_some(self) {
            Ok(merged) => merged,
            Err(error) => {
                self.merge_failed(&error);
                None
            }
        }
    }

    /// Whether some key group has so many runs that merging may no longer wait for a flush.
    ///
    /// Merging pauses from a checkpoint's trigger to its flush. When checkpoints follow each
    /// other with no idle time between (on-demand checkpoints in a loop, an interval shorter
    /// than a checkpoint of the whole state), it never got to run: in a benchmark of 100
    /// back-to-back checkpoints of 250,000 changed keys, runs grew from 7 to 18 per key group
    /// and the store on disk from 196 MB to 1.27 GB. Past this many runs, merging goes on
    /// while a checkpoint waits: its flush then also writes a merge's pages (slower
    /// checkpoints, bounded state).
    fn runs_pile_up(&self) -> bool {
        read(&self.manifest)
            .values()
            .any(|runs| runs.len() > PILE_UP_RUNS)
    }

    fn merge_failed(&self, error: &StateError) {
        tracing::warn!(
            store = %self.path.display(),
            %error,
            "merging state runs failed; reads stay correct but look at more runs"
        );
        self.merge_failed.store(true, Ordering::SeqCst);
    }

    /// Makes the manifest changes of merges durable, if there are any, and deletes the run
    /// files they emptied. (A merge's own file is fsynced before its run is listed.)
    fn flush_merges(&self, merged_unflushed: &mut u64) {
        if *merged_unflushed == 0 {
            return;
        }
        *merged_unflushed = 0;
        if let Err(error) = self.flush_manifest() {
            self.merge_failed(&error);
        }
    }

    /// Flushes sled (the manifest and the records), then deletes the run files released
    /// before: their release is durable now. Returns the bytes sled wrote.
    ///
    /// One flush at a time (the writer's after merges, a checkpoint's): when one returns,
    /// every file released before it began is gone.
    fn flush_manifest(&self) -> Result<u64, StateError> {
        let _one_at_a_time = lock(&self.flushing);
        let released = self.files.take_released();
        let flushed = self.db.flush().map_err(|e| self.err(e))?;
        self.files.delete_released(released)?;
        Ok(flushed as u64)
    }
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

/// The small runs of one snapshot gathered into one pack (see [`Place::Packed`]).
#[derive(Default)]
struct PackBuilder {
    /// The pack's id, once it has a member.
    key: Option<RunKey>,
    /// Bytes of its members' chunks.
    bytes: u64,
    members: Vec<RunMeta>,
}

impl PackBuilder {
    /// Appends the run of `entries` (sorted) of `key_group` to `out` as one chunk, and adds
    /// it to the pack.
    fn add<'a>(
        &mut self,
        pack: RunKey,
        key_group: u16,
        count: u64,
        entries: impl Iterator<Item = (&'a [u8], &'a [u8])>,
        out: &mut RunFileWriter,
    ) -> Result<(), StateError> {
        let mut builder = ChunkBuilder::new();
        entries.for_each(|(key, value)| builder.push(key, value));
        let chunk = builder.finish();
        let offset = out.append(&chunk)?;
        self.bytes += chunk.len() as u64;
        self.members.push(RunMeta {
            key: RunKey { key_group, ..pack },
            entries: count,
            bytes: chunk.len() as u64,
            file: out.id,
            place: Place::Packed {
                pack,
                offset,
                len: chunk.len() as u32,
            },
        });
        Ok(())
    }
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
mod tests;
