//! Run files: where the chunks of runs live, outside sled.
//!
//! Each write of the store (one snapshot's changes of one state, or one batch of merges)
//! goes into a file of its own under `runs/`, written once, front to back, and never changed:
//! sled keeps only the manifest (which run is where) and a few records. So the sled log a
//! restart replays is the manifest's, not the state's: sled 0.34 writes its page table
//! snapshot only when a database is opened, and with the chunks in it, the first restart
//! after a long run replayed every byte written since the previous open. With a state of
//! 1.07 GB the store now opens in about 2 ms.
//!
//! Durability, in the order a crash needs:
//! - A snapshot's file is fsynced by the store's next flush, before sled's: the checkpoint
//!   record that makes its runs part of a checkpoint is written after that flush, and the runs
//!   of an epoch no checkpoint completed are dropped on restart whatever their files hold.
//! - A merge batch's file is fsynced before its runs enter the manifest: the batch removes
//!   the runs they replace, and those removals may reach disk with sled's next write.
//! - A file no run refers to any more is deleted only after a flush has made that manifest
//!   durable ([`RunFiles::delete_released`]); a crash before leaves it to the next open,
//!   which deletes every file the manifest does not name.
//!
//! Reads go through a block cache (chunks by file and offset) of
//! [`BLOCK_CACHE_BYTES`], and the files' open handles are kept in a cache of their own.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sled::IVec;

use super::error::StateError;
use super::store::lock;

/// The directory of run files, under the state directory.
pub(crate) const RUNS_DIR: &str = "runs";
/// Bytes of chunks the block cache keeps.
pub(crate) const BLOCK_CACHE_BYTES: u64 = 256 << 20;
/// Open file handles kept (a store has one file per checkpoint and per merged run).
const OPEN_FILES: usize = 256;

/// Weighs a cached chunk by its bytes.
#[derive(Debug, Clone, Default)]
struct ChunkBytes;

impl quick_cache::Weighter<(u64, u64), IVec> for ChunkBytes {
    fn weight(&self, _: &(u64, u64), chunk: &IVec) -> u64 {
        chunk.len() as u64
    }
}

/// The run files of one store.
pub(crate) struct RunFiles {
    dir: PathBuf,
    next_id: AtomicU64,
    /// Runs (and pack members) the manifest lists in each file.
    refs: Mutex<HashMap<u64, usize>>,
    /// Files written since the last [`sync_written`](Self::sync_written).
    unsynced: Mutex<Vec<u64>>,
    /// Files no run refers to any more, deleted after the next flush of the manifest.
    released: Mutex<Vec<u64>>,
    handles: quick_cache::sync::Cache<u64, Arc<File>>,
    blocks: quick_cache::sync::Cache<(u64, u64), IVec, ChunkBytes>,
}

impl std::fmt::Debug for RunFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunFiles")
            .field("dir", &self.dir)
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

/// The name of file `id`.
fn file_name(id: u64) -> String {
    format!("{id:016x}.run")
}

/// The id a run file's name gives, `None` for any other name.
fn file_id(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".run")?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
}

impl RunFiles {
    /// Opens the run files under `state_dir`, keeping those `referenced` names (with their
    /// counts of runs) and deleting the rest: what a crash left behind a manifest that never
    /// became durable, or after the manifest that released it did.
    pub(crate) fn open(
        state_dir: &Path,
        referenced: HashMap<u64, usize>,
    ) -> Result<Self, StateError> {
        let dir = state_dir.join(RUNS_DIR);
        let io = |e| StateError::run_file(&dir, e);
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut highest = referenced.keys().copied().max().unwrap_or(0);
        let (mut present, mut unnamed) = (HashSet::new(), Vec::new());
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let Some(id) = entry.file_name().to_str().and_then(file_id) else {
                continue;
            };
            highest = highest.max(id);
            if referenced.contains_key(&id) {
                present.insert(id);
            } else {
                unnamed.push(entry.path());
            }
        }
        // Checked before anything is deleted: a damaged directory is left as it was found.
        if let Some(missing) = referenced.keys().find(|id| !present.contains(id)) {
            return Err(StateError::Corrupt {
                path: dir.join(file_name(*missing)),
                what: "the state manifest names this run file, but it is missing; restore \
                       the state directory from a backup or start the job afresh"
                    .into(),
            });
        }
        for path in unnamed {
            std::fs::remove_file(&path).map_err(|e| StateError::run_file(&path, e))?;
        }
        Ok(RunFiles {
            next_id: AtomicU64::new(highest + 1),
            refs: Mutex::new(referenced),
            unsynced: Mutex::new(Vec::new()),
            released: Mutex::new(Vec::new()),
            handles: quick_cache::sync::Cache::new(OPEN_FILES),
            blocks: quick_cache::sync::Cache::with_weighter(
                (BLOCK_CACHE_BYTES / 16384) as usize,
                BLOCK_CACHE_BYTES,
                ChunkBytes,
            ),
            dir,
        })
    }

    /// Where file `id` is.
    pub(crate) fn path(&self, id: u64) -> PathBuf {
        self.dir.join(file_name(id))
    }

    /// A new, empty run file to append chunks to.
    pub(crate) fn create(&self) -> Result<RunFileWriter, StateError> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let path = self.path(id);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StateError::run_file(&path, e))?;
        Ok(RunFileWriter {
            id,
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            len: 0,
        })
    }

    /// Ends a written file: its bytes are handed to the file system, and fsynced now
    /// (`sync`) or by the next [`sync_written`](Self::sync_written).
    pub(crate) fn finish(&self, writer: RunFileWriter, sync: bool) -> Result<(), StateError> {
        let RunFileWriter { id, path, out, .. } = writer;
        let io = |e| StateError::run_file(&path, e);
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        if sync {
            file.sync_all().map_err(io)?;
            self.sync_dir()?;
        } else {
            lock(&self.unsynced).push(id);
        }
        Ok(())
    }

    /// Fsyncs the files written since the last call, and the directory that lists them.
    /// Returns how many bytes they hold.
    pub(crate) fn sync_written(&self) -> Result<u64, StateError> {
        let written = std::mem::take(&mut *lock(&self.unsynced));
        let mut bytes = 0;
        for id in &written {
            let path = self.path(*id);
            let io = |e| StateError::run_file(&path, e);
            let file = match File::open(&path) {
                Ok(file) => file,
                // Released and deleted already (an aborted epoch's file, say).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            file.sync_all().map_err(io)?;
            bytes += file.metadata().map_err(io)?.len();
        }
        if !written.is_empty() {
            self.sync_dir()?;
        }
        Ok(bytes)
    }

    fn sync_dir(&self) -> Result<(), StateError> {
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| StateError::run_file(&self.dir, e))
    }

    /// Counts runs that the manifest now lists in `file`.
    pub(crate) fn add_refs(&self, file: u64, runs: usize) {
        *lock(&self.refs).entry(file).or_default() += runs;
    }

    /// Counts a run the manifest no longer lists in `file`; the file is released with its
    /// last run (see [`delete_released`](Self::delete_released)).
    pub(crate) fn remove_ref(&self, file: u64) {
        let mut refs = lock(&self.refs);
        let Some(count) = refs.get_mut(&file) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            refs.remove(&file);
            lock(&self.released).push(file);
        }
    }

    /// The files released so far: to be deleted (see
    /// [`delete_released`](Self::delete_released)) once a flush made the manifest that
    /// released them durable.
    pub(crate) fn take_released(&self) -> Vec<u64> {
        std::mem::take(&mut *lock(&self.released))
    }

    /// Deletes released files (after the flush that made their release durable).
    pub(crate) fn delete_released(&self, files: Vec<u64>) -> Result<(), StateError> {
        for id in files {
            self.handles.remove(&id);
            let path = self.path(id);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StateError::run_file(&path, e)),
            }
        }
        Ok(())
    }

    /// `len` bytes at `offset` of file `id`: a chunk, from the block cache or the file.
    pub(crate) fn read(&self, id: u64, offset: u64, len: u32) -> Result<IVec, StateError> {
        self.read_chunk(id, offset, len, true)
    }

    /// [`read`](Self::read), but a chunk read from the file is not cached: a merge or a
    /// scan reads each chunk once, and caching them would only push out what lookups need.
    pub(crate) fn read_once(&self, id: u64, offset: u64, len: u32) -> Result<IVec, StateError> {
        self.read_chunk(id, offset, len, false)
    }

    fn read_chunk(&self, id: u64, offset: u64, len: u32, cache: bool) -> Result<IVec, StateError> {
        if let Some(chunk) = self.blocks.get(&(id, offset)) {
            if chunk.len() == len as usize {
                return Ok(chunk);
            }
        }
        let file = self.handle(id)?;
        let mut bytes = vec![0u8; len as usize];
        file.read_exact_at(&mut bytes, offset)
            .map_err(|e| StateError::run_file(&self.path(id), e))?;
        let chunk = IVec::from(bytes);
        if cache {
            self.blocks.insert((id, offset), chunk.clone());
        }
        Ok(chunk)
    }

    fn handle(&self, id: u64) -> Result<Arc<File>, StateError> {
        if let Some(file) = self.handles.get(&id) {
            return Ok(file);
        }
        let path = self.path(id);
        let file = Arc::new(File::open(&path).map_err(|e| StateError::run_file(&path, e))?);
        self.handles.insert(id, file.clone());
        Ok(file)
    }

    /// Bytes the run files take.
    pub(crate) fn size(&self) -> Result<u64, StateError> {
        let io = |e| StateError::run_file(&self.dir, e);
        let mut bytes = 0;
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            // A file deleted between the listing and this look takes no space.
            bytes += entry.metadata().map_or(0, |m| m.len());
        }
        Ok(bytes)
    }

    /// Run files present (for tests).
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        std::fs::read_dir(&self.dir).map_or(0, |entries| entries.count())
    }
}

/// A run file being written: chunks are appended, each at the offset
/// [`append`](Self::append) returns.
pub(crate) struct RunFileWriter {
    pub(crate) id: u64,
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
}

impl RunFileWriter {
    /// Appends `bytes`; returns the offset they start at.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> Result<u64, StateError> {
        let offset = self.len;
        self.out
            .write_all(bytes)
            .map_err(|e| StateError::run_file(&self.path, e))?;
        self.len += bytes.len() as u64;
        Ok(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_read_back_and_other_names_are_ignored() {
        assert_eq!(file_id(&file_name(0x2a)), Some(0x2a));
        assert_eq!(file_id(&file_name(u64::MAX)), Some(u64::MAX));
        for other in [
            "2a.run",
            "000000000000002a",
            "000000000000002g.run",
            "notes.txt",
        ] {
            assert_eq!(file_id(other), None, "{other}");
        }
    }

    #[test]
    fn files_are_written_read_released_and_deleted_after_the_flush() {
        let dir = tempfile::tempdir().unwrap();
        let files = RunFiles::open(dir.path(), HashMap::new()).unwrap();
        let mut writer = files.create().unwrap();
        assert_eq!(writer.append(b"hello").unwrap(), 0);
        assert_eq!(writer.append(b"world").unwrap(), 5);
        let id = writer.id;
        files.finish(writer, false).unwrap();
        assert_eq!(files.sync_written().unwrap(), 10);
        assert_eq!(files.sync_written().unwrap(), 0, "synced once");
        assert_eq!(&files.read(id, 5, 5).unwrap()[..], b"world");
        assert_eq!(&files.read_once(id, 0, 5).unwrap()[..], b"hello");
        assert!(files.read(id, 8, 5).is_err(), "past the end");
        files.add_refs(id, 2);
        files.remove_ref(id);
        assert!(files.take_released().is_empty());
        files.remove_ref(id);
        let released = files.take_released();
        assert_eq!(released, vec![id]);
        assert!(files.path(id).exists(), "kept until the flush");
        files.delete_released(released).unwrap();
        assert!(!files.path(id).exists());
    }

    #[test]
    fn opening_deletes_unnamed_files_and_refuses_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let files = RunFiles::open(dir.path(), HashMap::new()).unwrap();
        let (kept, orphan) = (files.create().unwrap(), files.create().unwrap());
        let (kept_id, orphan_id) = (kept.id, orphan.id);
        files.finish(kept, true).unwrap();
        files.finish(orphan, true).unwrap();
        drop(files);
        let files = RunFiles::open(dir.path(), HashMap::from([(kept_id, 1)])).unwrap();
        assert!(files.path(kept_id).exists());
        assert!(!files.path(orphan_id).exists(), "no run names it");
        assert!(files.create().unwrap().id > orphan_id, "ids are not reused");
        drop(files);
        let error = RunFiles::open(dir.path(), HashMap::from([(kept_id + 100, 1)])).unwrap_err();
        assert!(error.to_string().contains("is missing"), "{error}");
    }
}
