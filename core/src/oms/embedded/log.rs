//! A partition: an append-only log of segment files, shared safely by threads and processes.
//!
//! Files of partition `p` of a queue (`<queue dir>/p-<p>/`):
//! - `<base offset, 20 digits>.log`: segments; the one with the highest base is the active one.
//!   A sealed segment ends with a roll marker naming the next segment, so readers and writers in
//!   other processes follow a roll without listing the directory.
//! - `write.lock`: every append takes an exclusive `flock` on it, in every process. Under the lock
//!   a writer first catches up with what others appended (reading only the new bytes), so offsets
//!   stay dense and batches are never interleaved.
//!
//! Readers take no lock: they read complete records up to the end of the file and treat a
//! record that is not complete yet as the end. A torn record left by a crashed writer is cut off
//! by the next writer (under the lock), and the bytes after it are never served.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, Bytes};
use tokio::sync::Notify;

use super::record::{self, EncodedBatch, Parsed, Placement, HEADER_LEN, KIND_ROLL};
use crate::oms::{now_millis, Message, OmsError, Result, RetentionPolicy};

const READ_CHUNK: usize = 1 << 20;
/// The most messages a reader makes room for at once.
const MAX_RESERVE: usize = 1 << 16;

/// The path of segment `base` in `dir`.
pub(crate) fn segment_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// The bases of the segments in `dir`, ascending.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<i64>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(OmsError::io("list", dir, e)),
    };
    let mut bases = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| OmsError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        if let Ok(base) = stem.parse::<i64>() {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// The end of the log as far as it has been read: the active segment, its valid length, the next
/// offset, and the last store time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tail {
    pub(crate) base: i64,
    pub(crate) len: u64,
    pub(crate) next_offset: i64,
    pub(crate) last_stored: i64,
}

enum ScanEnd {
    Eof,
    /// The segment file does not exist.
    Missing,
    Roll(i64),
    Invalid {
        pos: u64,
        why: &'static str,
    },
}

/// Reads the records of segment `path` from `tail.len` on, advancing `tail` past every valid one.
fn scan_segment(path: &Path, tail: &mut Tail, max_record: usize) -> Result<ScanEnd> {
    // Every append catches up first, and almost always nothing is new: a `stat` tells, without
    // opening the file or zeroing a read buffer.
    let size = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ScanEnd::Missing),
        Err(e) => return Err(OmsError::io("stat", path, e)),
    };
    if size <= tail.len {
        return Ok(ScanEnd::Eof);
    }
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ScanEnd::Eof),
        Err(e) => return Err(OmsError::io("open", path, e)),
    };
    // Sized to what is there now (the buffer grows if the file grows meanwhile).
    let mut buf = vec![
        0u8;
        usize::try_from(size - tail.len)
            .unwrap_or(READ_CHUNK)
            .clamp(HEADER_LEN, READ_CHUNK)
    ];
    let mut filled = 0usize;
    let mut file_pos = tail.len;
    loop {
        let n = file
            .read_at(&mut buf[filled..], file_pos + filled as u64)
            .map_err(|e| OmsError::io("read", path, e))?;
        filled += n;
        let mut at = 0usize;
        loop {
            match record::parse(&buf[at..filled], max_record, true) {
                Parsed::Record(rec) => {
                    at += rec.total_len;
                    if rec.kind == KIND_ROLL {
                        return Ok(ScanEnd::Roll(rec.offset));
                    }
                    // The tail moves a whole batch at a time: a batch whose last record is
                    // missing was not acknowledged, and is cut off with its torn end.
                    if rec.ends_batch {
                        tail.len = file_pos + at as u64;
                        tail.next_offset = rec.offset + 1;
                        tail.last_stored = tail.last_stored.max(rec.stored);
                    }
                }
                Parsed::Incomplete => break,
                Parsed::Invalid(why) => return Ok(ScanEnd::Invalid { pos: tail.len, why }),
            }
        }
        if n == 0 {
            return Ok(if tail.len == file_pos + filled as u64 {
                ScanEnd::Eof
            } else {
                ScanEnd::Invalid {
                    pos: tail.len,
                    why: if at == filled {
                        "batch cut short"
                    } else {
                        "record cut short"
                    },
                }
            });
        }
        // Keep the partial record and read on.
        buf.copy_within(at..filled, 0);
        filled -= at;
        file_pos += at as u64;
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// Where and how a batch is appended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteOptions {
    pub(crate) fsync: bool,
    pub(crate) segment_bytes: u64,
}

#[derive(Debug, Default)]
struct TailState {
    tail: Option<Tail>,
    append: Option<(i64, File)>,
}

/// Holds the cross-process write lock (and this process's writer mutex) until dropped.
struct FlockGuard<'a>(MutexGuard<'a, Option<File>>);

impl Drop for FlockGuard<'_> {
    fn drop(&mut self) {
        if let Some(file) = self.0.as_ref() {
            // Unlocking can only fail on a bad descriptor; closing the file releases it anyway.
            let _ = file.unlock();
        }
    }
}

/// One partition of one queue, shared by every user in this process.
#[derive(Debug)]
pub(crate) struct PartitionLog {
    pub(crate) dir: PathBuf,
    pub(crate) queue: Arc<str>,
    pub(crate) queue_id: u32,
    pub(crate) partition: i32,
    pub(crate) retention: RetentionPolicy,
    pub(crate) store_host: Arc<str>,
    pub(crate) max_record: usize,
    state: Mutex<TailState>,
    /// The open `write.lock`. Writers of this process take this mutex, then the file lock, then
    /// the state mutex; readers take only the state mutex, so a writer waiting for another
    /// process never blocks them.
    lock_file: Mutex<Option<File>>,
    /// Wakes this process's readers when this process appends.
    pub(crate) appended: Notify,
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| OmsError::io("sync", dir, e))
}

impl PartitionLog {
    pub(crate) fn new(
        dir: PathBuf,
        queue: Arc<str>,
        queue_id: u32,
        partition: i32,
        retention: RetentionPolicy,
        store_host: Arc<str>,
        max_record: usize,
    ) -> Self {
        Self {
            dir,
            queue,
            queue_id,
            partition,
            retention,
            store_host,
            max_record,
            state: Mutex::new(TailState::default()),
            lock_file: Mutex::new(None),
            appended: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, TailState> {
        // The state is only a cache of what is on disk; after a panic elsewhere it is re-read.
        self.state.lock().unwrap_or_else(|e| {
            let mut g = e.into_inner();
            *g = TailState::default();
            g
        })
    }

    pub(crate) fn placement(&self) -> Placement<'_> {
        Placement {
            queue: &self.queue,
            queue_id: self.queue_id,
            partition: self.partition,
            store_host: &self.store_host,
        }
    }

    fn missing(&self) -> OmsError {
        OmsError::destination_not_found(&self.queue)
    }

    /// Takes the cross-process write lock. A `write.lock` that is no longer the one in the
    /// directory means the queue was deleted (and maybe created again) under this handle.
    fn flock(&self) -> Result<FlockGuard<'_>> {
        use std::os::unix::fs::MetadataExt;
        let path = self.dir.join("write.lock");
        let mut guard = self.lock_file.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        self.missing()
                    } else {
                        OmsError::io("open", &path, e)
                    }
                })?;
            *guard = Some(f);
        }
        let Some(file) = guard.as_ref() else {
            unreachable!("opened just above")
        };
        file.lock().map_err(|e| OmsError::io("lock", &path, e))?;
        let held = file
            .metadata()
            .map_err(|e| OmsError::io("stat", &path, e))?;
        let same =
            fs::metadata(&path).is_ok_and(|now| now.ino() == held.ino() && now.dev() == held.dev());
        if !same {
            let _ = file.unlock();
            *guard = None;
            *self.state() = TailState::default();
            return Err(OmsError::destination_not_found(&self.queue).with_source(
                std::io::Error::other("the queue was deleted since this handle opened it"),
            ));
        }
        Ok(FlockGuard(guard))
    }

    /// Brings the cached tail up to date with the files. With `repair` (only under the write
    /// lock) a torn tail is cut off and a missing next segment is created.
    fn advance_tail(&self, st: &mut TailState, repair: bool) -> Result<Tail> {
        let mut tail = match st.tail {
            Some(t) => t,
            None => {
                let base = list_segments(&self.dir)?.last().copied().unwrap_or(0);
                Tail {
                    base,
                    len: 0,
                    next_offset: base,
                    last_stored: 0,
                }
            }
        };
        loop {
            let path = segment_path(&self.dir, tail.base);
            match scan_segment(&path, &mut tail, self.max_record)? {
                ScanEnd::Eof => break,
                ScanEnd::Missing => {
                    let bases = list_segments(&self.dir)?;
                    match bases.last().copied() {
                        // Retention (in any process) dropped the segment this tail was in, or
                        // the queue was recreated: start over from the newest segment.
                        Some(last) if last != tail.base => {
                            tail = Tail {
                                base: last,
                                len: 0,
                                next_offset: last,
                                last_stored: tail.last_stored,
                            };
                            st.append = None;
                        }
                        Some(_) => break,
                        None if !self.dir.exists() => return Err(self.missing()),
                        None => {
                            // The next segment of a roll that a crash interrupted.
                            if repair {
                                File::create(&path)
                                    .map_err(|e| OmsError::io("create", &path, e))?;
                            }
                            break;
                        }
                    }
                }
                ScanEnd::Roll(next) => {
                    tail = Tail {
                        base: next,
                        len: 0,
                        next_offset: next,
                        last_stored: tail.last_stored,
                    };
                }
                ScanEnd::Invalid { pos, why } => {
                    if repair {
                        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(pos);
                        tracing::warn!(
                            file = %path.display(), at = pos, cut = size - pos, reason = why,
                            "cutting off a torn record at the end of a segment (left by a crashed writer)"
                        );
                        let f = OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(|e| OmsError::io("open", &path, e))?;
                        f.set_len(pos)
                            .map_err(|e| OmsError::io("truncate", &path, e))?;
                        f.sync_all().map_err(|e| OmsError::io("sync", &path, e))?;
                        st.append = None;
                    }
                    break;
                }
            }
        }
        st.tail = Some(tail);
        Ok(tail)
    }

    /// The end of the log now, without taking the write lock.
    pub(crate) fn tail(&self) -> Result<Tail> {
        let mut st = self.state();
        self.advance_tail(&mut st, false)
    }

    /// Runs `f` under the cross-process write lock, with the tail brought up to date (and a
    /// torn tail cut off). Readers of this process are woken afterwards.
    pub(crate) fn with_write_lock<R>(
        &self,
        opts: WriteOptions,
        f: impl FnOnce(&mut Appender<'_>) -> Result<R>,
    ) -> Result<R> {
        let flock = self.flock()?;
        let mut st = self.state();
        let tail = self.advance_tail(&mut st, true)?;
        let mut appender = Appender {
            log: self,
            st,
            tail,
            opts,
            appended: false,
        };
        let result = f(&mut appender);
        let appended = appender.appended;
        drop(appender);
        drop(flock);
        if appended {
            self.appended.notify_waiters();
        }
        result
    }

    /// Appends the records of `batch`, giving them consecutive offsets. Returns the first offset
    /// and the store time. The batch is written with one `write`, under the cross-process lock.
    pub(crate) fn append(
        &self,
        batch: &mut EncodedBatch,
        opts: WriteOptions,
    ) -> Result<(i64, i64)> {
        self.with_write_lock(opts, |a| a.append(batch))
    }

    /// The message at `offset`, if it is still there. Does not touch the cached tail, so it may be
    /// called under the write lock.
    /// `offset` must be below `end`, the tail as the caller (holding the write lock) knows it.
    pub(crate) fn read_one(self: &Arc<Self>, offset: i64, end: i64) -> Result<Option<Message>> {
        if offset >= end {
            return Ok(None);
        }
        let bases = list_segments(&self.dir)?;
        let Some(base) = bases.iter().copied().filter(|&b| b <= offset).max() else {
            return Ok(None);
        };
        let mut reader = LogReader {
            log: Arc::clone(self),
            base,
            file: None,
            file_pos: 0,
            file_len: 0,
            buf: Bytes::new(),
            next_offset: offset,
            min_stored: i64::MIN,
            // Known whole: asking the tail again would take the lock the caller holds.
            known_end: end,
        };
        let mut out = Vec::with_capacity(1);
        reader.read_available(1, &mut out)?;
        Ok(out.pop().filter(|m| m.offset() == Some(offset)))
    }

    fn write_at_tail(
        &self,
        st: &mut TailState,
        tail: Tail,
        bytes: &[u8],
        fsync: bool,
    ) -> Result<()> {
        if st
            .append
            .as_ref()
            .is_none_or(|(base, _)| *base != tail.base)
        {
            let path = segment_path(&self.dir, tail.base);
            let f = OpenOptions::new().append(true).open(&path).map_err(|e| {
                // Re-read the files next time rather than trust this tail again.
                st.tail = None;
                OmsError::io("open", &path, e)
            })?;
            st.append = Some((tail.base, f));
        }
        let Some((_, file)) = st.append.as_mut() else {
            unreachable!("set just above")
        };
        let res = file
            .write_all(bytes)
            .and_then(|()| if fsync { file.sync_data() } else { Ok(()) });
        if let Err(e) = res {
            // Take back a partial write so the next batch starts at a record boundary.
            let _ = file.set_len(tail.len);
            st.append = None;
            st.tail = None;
            return Err(OmsError::io(
                "append to",
                &segment_path(&self.dir, tail.base),
                e,
            ));
        }
        Ok(())
    }

    /// Drops sealed segments, oldest first, past the retention limits. Called under the lock.
    fn enforce_retention(&self, now: i64) -> Result<()> {
        let RetentionPolicy { max_age, max_bytes } = self.retention;
        if max_age.is_none() && max_bytes.is_none() {
            return Ok(());
        }
        let bases = list_segments(&self.dir)?;
        let mut sizes = Vec::with_capacity(bases.len());
        for &b in &bases {
            let p = segment_path(&self.dir, b);
            sizes.push(
                fs::metadata(&p)
                    .map_err(|e| OmsError::io("stat", &p, e))?
                    .len(),
            );
        }
        let mut total: u64 = sizes.iter().sum();
        for (i, &base) in bases.iter().enumerate().take(bases.len().saturating_sub(1)) {
            let path = segment_path(&self.dir, base);
            let too_big = max_bytes.is_some_and(|m| total > m);
            let too_old = max_age.is_some_and(|age| {
                sealed_at(&path, sizes[i]).is_some_and(|t| t < now - age.as_millis() as i64)
            });
            if !(too_big || too_old) {
                break;
            }
            fs::remove_file(&path).map_err(|e| OmsError::io("delete", &path, e))?;
            total -= sizes[i];
            tracing::debug!(segment = %path.display(), "retention dropped a segment");
        }
        Ok(())
    }

    /// Opens a reader at `position`.
    pub(crate) fn reader(
        self: &Arc<Self>,
        position: crate::oms::SeekPosition,
    ) -> Result<LogReader> {
        use crate::oms::SeekPosition;
        if !self.dir.exists() {
            return Err(self.missing());
        }
        let bases = list_segments(&self.dir)?;
        let first = bases.first().copied().unwrap_or(0);
        let mut reader = LogReader {
            log: Arc::clone(self),
            base: first,
            file: None,
            file_pos: 0,
            file_len: 0,
            buf: Bytes::new(),
            next_offset: first,
            min_stored: i64::MIN,
            known_end: 0,
        };
        match position {
            SeekPosition::Beginning => {}
            SeekPosition::End => reader.jump_to_tail(self.tail()?),
            SeekPosition::Offset(n) => {
                let tail = self.tail()?;
                if n >= tail.next_offset {
                    reader.jump_to_tail(tail);
                } else if n > first {
                    reader.base = bases
                        .iter()
                        .copied()
                        .filter(|&b| b <= n)
                        .max()
                        .unwrap_or(first);
                    reader.next_offset = n;
                }
            }
            SeekPosition::Timestamp(t) => {
                // Store times never decrease in a partition: start in the last segment whose first
                // record is older than `t`, and skip records stored before `t`.
                let mut start = first;
                for &b in &bases {
                    match first_stored(&segment_path(&self.dir, b), self.max_record) {
                        Some(ts) if ts < t => start = b,
                        _ => break,
                    }
                }
                reader.base = start;
                reader.next_offset = start;
                reader.min_stored = t;
            }
        }
        Ok(reader)
    }
}

/// Appends under the write lock; see [`PartitionLog::with_write_lock`].
pub(crate) struct Appender<'a> {
    log: &'a PartitionLog,
    st: MutexGuard<'a, TailState>,
    tail: Tail,
    opts: WriteOptions,
    appended: bool,
}

impl Appender<'_> {
    /// The end of the log.
    pub(crate) fn tail(&self) -> Tail {
        self.tail
    }

    /// Appends `batch` (rolling the segment first when it would grow past its size); returns the
    /// first offset and the store time.
    pub(crate) fn append(&mut self, batch: &mut EncodedBatch) -> Result<(i64, i64)> {
        let log = self.log;
        let mut tail = self.tail;
        let now = now_millis().max(tail.last_stored);
        let mut rolled = false;
        if tail.len > 0 && tail.len + batch.buf.len() as u64 > self.opts.segment_bytes {
            let mut marker = EncodedBatch::default();
            marker.push_roll(tail.next_offset, now);
            log.write_at_tail(&mut self.st, tail, &marker.buf, self.opts.fsync)?;
            let next = segment_path(&log.dir, tail.next_offset);
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&next)
                .map_err(|e| OmsError::io("create", &next, e))?;
            if self.opts.fsync {
                sync_dir(&log.dir)?;
            }
            tail = Tail {
                base: tail.next_offset,
                len: 0,
                next_offset: tail.next_offset,
                last_stored: now,
            };
            self.st.tail = Some(tail);
            self.tail = tail;
            rolled = true;
        }
        let first = tail.next_offset;
        batch.seal(first, now);
        log.write_at_tail(&mut self.st, tail, &batch.buf, self.opts.fsync)?;
        tail.len += batch.buf.len() as u64;
        tail.next_offset += batch.len() as i64;
        tail.last_stored = now;
        self.st.tail = Some(tail);
        self.tail = tail;
        self.appended = true;
        if rolled {
            if let Err(err) = log.enforce_retention(now) {
                tracing::warn!(%err, queue = %log.queue, partition = log.partition, "retention failed; will retry at the next roll");
            }
        }
        Ok((first, now))
    }
}

/// The store time of a sealed segment's roll marker (its last record).
fn sealed_at(path: &Path, size: u64) -> Option<i64> {
    let f = File::open(path).ok()?;
    let mut buf = [0u8; HEADER_LEN];
    f.read_at(&mut buf, size.checked_sub(HEADER_LEN as u64)?)
        .ok()?;
    match record::parse(&buf, HEADER_LEN, true) {
        Parsed::Record(rec) if rec.kind == KIND_ROLL => Some(rec.stored),
        _ => None,
    }
}

/// The store time of the first record of a segment (only its fixed header is read, so the CRC
/// is not checked here; the reader checks it).
fn first_stored(path: &Path, max_record: usize) -> Option<i64> {
    let f = File::open(path).ok()?;
    let mut buf = [0u8; HEADER_LEN];
    f.read_exact_at(&mut buf, 0).ok()?;
    let len = u32::from_le_bytes(buf[0..4].try_into().ok()?) as usize;
    if len < HEADER_LEN - 8 || len > max_record || (buf[24] & !record::LAST_IN_BATCH) > KIND_ROLL {
        return None;
    }
    Some(i64::from_le_bytes(buf[16..24].try_into().ok()?))
}

/// Reads one partition forward from a position, following segment rolls.
#[derive(Debug)]
pub(crate) struct LogReader {
    pub(crate) log: Arc<PartitionLog>,
    base: i64,
    file: Option<File>,
    /// The file position of `buf[0]`.
    file_pos: u64,
    /// The size of the file when it was last read (a hint for sizing the output).
    file_len: u64,
    /// Read but not yet parsed bytes.
    buf: Bytes,
    /// The offset of the next message to return; records below it are skipped.
    next_offset: i64,
    /// Records stored before this are skipped (a timestamp seek).
    min_stored: i64,
    /// Records below this offset are known to be in whole batches (the log's tail when last
    /// looked at).
    known_end: i64,
}

impl LogReader {
    fn jump_to_tail(&mut self, tail: Tail) {
        self.base = tail.base;
        self.file = None;
        self.file_pos = tail.len;
        self.buf = Bytes::new();
        self.next_offset = tail.next_offset;
    }

    /// The offset of the next message this reader returns.
    pub(crate) fn position(&self) -> i64 {
        self.next_offset
    }

    fn open_segment(&mut self) -> Result<bool> {
        if self.file.is_some() {
            return Ok(true);
        }
        let path = segment_path(&self.log.dir, self.base);
        match File::open(&path) {
            Ok(f) => {
                self.file = Some(f);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.log.dir.exists() {
                    return Err(OmsError::destination_not_found(&self.log.queue));
                }
                // Dropped by retention while we were away: continue at the oldest segment left.
                let bases = list_segments(&self.log.dir)?;
                match bases.iter().copied().find(|&b| b > self.base) {
                    Some(b) => {
                        tracing::warn!(queue = %self.log.queue, partition = self.log.partition, from = self.next_offset, to = b,
                            "messages were dropped by retention before they were read");
                        self.base = b;
                        self.file_pos = 0;
                        self.buf = Bytes::new();
                        self.next_offset = self.next_offset.max(b);
                        self.open_segment()
                    }
                    None => Ok(false),
                }
            }
            Err(e) => Err(OmsError::io("open", &path, e)),
        }
    }

    /// Reads more bytes after `buf`, so that it holds at least `need` bytes; returns how many
    /// were read: 0 when the file does not hold `need` bytes from `buf[0]` yet.
    fn fill(&mut self, need: usize) -> Result<usize> {
        let Some(file) = self.file.as_ref() else {
            return Ok(0);
        };
        let have = self.buf.len();
        let at = self.file_pos + have as u64;
        // The file's size first: a reader at the end (the common case when it waits) then reads
        // nothing, and the buffer is sized (and zeroed) only for bytes that are there. It also
        // never allocates for a length the file cannot hold (a torn or garbage length field).
        let len = file
            .metadata()
            .map_err(|e| OmsError::io("stat", &segment_path(&self.log.dir, self.base), e))?
            .len();
        if len <= at || self.file_pos + need as u64 > len {
            return Ok(0);
        }
        self.file_len = len;
        let available = usize::try_from(len - at).unwrap_or(usize::MAX);
        // At least a chunk more than what is needed: a batch larger than a chunk is looked over
        // in a few big reads, not one record at a time (each read copies what is buffered).
        let want = need.saturating_sub(have).max(READ_CHUNK).min(available);
        let path = || segment_path(&self.log.dir, self.base);
        // `read_to_end` reads into the spare capacity without zeroing it first.
        let mut next = Vec::with_capacity(have + want);
        next.extend_from_slice(&self.buf);
        let mut reader = file;
        reader
            .seek(SeekFrom::Start(at))
            .map_err(|e| OmsError::io("seek in", &path(), e))?;
        let n = reader
            .take(want as u64)
            .read_to_end(&mut next)
            .map_err(|e| OmsError::io("read", &path(), e))?;
        self.buf = Bytes::from(next);
        Ok(n)
    }

    fn corrupt(&self, why: &str) -> OmsError {
        OmsError::storage(format!(
            "segment {} of queue '{}' partition {} is corrupt at byte {} ({why}); \
             the messages from offset {} on cannot be read: restore the file from a backup, \
             or delete the segment to skip them",
            segment_path(&self.log.dir, self.base).display(),
            self.log.queue,
            self.log.partition,
            self.file_pos,
            self.next_offset
        ))
    }

    /// Appends up to `max` available messages to `out`, without waiting. Returns how many.
    pub(crate) fn read_available(&mut self, max: usize, out: &mut Vec<Message>) -> Result<usize> {
        let start_len = out.len();
        match self.read_into(max, out) {
            Ok(()) => Ok(out.len() - start_len),
            // The messages read before the failure are returned; the reader stays at the record
            // that failed, so the error comes back on the next call.
            Err(_) if out.len() > start_len => Ok(out.len() - start_len),
            Err(e) => Err(e),
        }
    }

    fn read_into(&mut self, max: usize, out: &mut Vec<Message>) -> Result<()> {
        let start_len = out.len();
        let now = now_millis();
        let mut need = 0usize;
        while out.len() - start_len < max {
            if !self.open_segment()? {
                break;
            }
            match record::parse(&self.buf, self.log.max_record, true) {
                Parsed::Record(rec) => {
                    need = 0;
                    if rec.kind == KIND_ROLL {
                        self.base = rec.offset;
                        self.file = None;
                        self.file_pos = 0;
                        self.buf = Bytes::new();
                        continue;
                    }
                    if rec.offset < self.next_offset {
                        self.buf.advance(rec.total_len);
                        self.file_pos += rec.total_len as u64;
                        continue;
                    }
                    // From here the record moves the position, which only a whole batch may:
                    // a batch still being written (or torn by a crash) is not served in part.
                    // The log's tail moves one whole batch at a time, so a record below it is in
                    // a whole batch; past it, look at the files again (a stat, usually).
                    if rec.offset >= self.known_end {
                        self.known_end = self.log.tail()?.next_offset;
                        // Forget the bytes read before the tail covered them: they may be a torn
                        // batch that a writer has since cut off and written over. Read again.
                        self.buf = Bytes::new();
                        if rec.offset >= self.known_end {
                            break;
                        }
                        continue;
                    }
                    if rec.stored < self.min_stored {
                        self.buf.advance(rec.total_len);
                        self.file_pos += rec.total_len as u64;
                        self.next_offset = rec.offset + 1;
                        continue;
                    }
                    if out.len() == out.capacity() {
                        // Room for what the file holds (records tend to be alike in size), at
                        // least doubling, never past `max`.
                        let left =
                            self.file_len.saturating_sub(self.file_pos) / rec.total_len as u64 + 1;
                        let room = usize::try_from(left).unwrap_or(usize::MAX).min(MAX_RESERVE);
                        out.reserve_exact(room.max(out.len()).min(max - (out.len() - start_len)));
                    }
                    // Decoded where it lies (the body shares `buf`), then stepped over. Expired
                    // messages are not appended.
                    if let Err(why) = record::decode_message_into(
                        &self.buf,
                        &rec,
                        self.log.placement(),
                        Some(now),
                        out,
                    ) {
                        return Err(self.corrupt(why));
                    }
                    self.buf.advance(rec.total_len);
                    self.file_pos += rec.total_len as u64;
                    self.min_stored = i64::MIN;
                    self.next_offset = rec.offset + 1;
                }
                Parsed::Incomplete => {
                    if self.buf.len() >= 8 {
                        need = 8
                            + u32::from_le_bytes(self.buf[0..4].try_into().unwrap_or_default())
                                as usize;
                    }
                    if self.fill(need.max(HEADER_LEN))? == 0 {
                        break;
                    }
                }
                Parsed::Invalid(why) => {
                    // At the end of the active segment this is a record still being written, or
                    // a torn one the next writer will cut off: wait. In a sealed segment (a later
                    // one exists) it is corruption.
                    let sealed = list_segments(&self.log.dir)?.iter().any(|&b| b > self.base);
                    if sealed {
                        return Err(self.corrupt(why));
                    }
                    self.buf = Bytes::new();
                    break;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oms::SeekPosition;

    fn log(dir: &Path, retention: RetentionPolicy) -> Arc<PartitionLog> {
        let d = dir.join("p-0");
        fs::create_dir_all(&d).unwrap();
        Arc::new(PartitionLog::new(
            d,
            "q".into(),
            1,
            0,
            retention,
            Arc::from("h"),
            1 << 20,
        ))
    }

    fn send(log: &PartitionLog, bodies: &[&str], segment_bytes: u64) -> i64 {
        let mut b = EncodedBatch::default();
        for body in bodies {
            b.push_message(&Message::new("q", body.to_string()), false);
        }
        log.append(
            &mut b,
            WriteOptions {
                fsync: false,
                segment_bytes,
            },
        )
        .unwrap()
        .0
    }

    fn read_all(log: &Arc<PartitionLog>, from: SeekPosition) -> Vec<(i64, String)> {
        let mut r = log.reader(from).unwrap();
        let mut out = Vec::new();
        r.read_available(usize::MAX, &mut out).unwrap();
        out.iter()
            .map(|m| {
                (
                    m.offset().unwrap(),
                    String::from_utf8(m.data.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn appends_roll_and_read_back_from_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let l = log(dir.path(), RetentionPolicy::default());
        for i in 0..50 {
            assert_eq!(send(&l, &[&format!("m{i}")], 256), i);
        }
        assert!(
            list_segments(&l.dir).unwrap().len() > 5,
            "small segments roll"
        );
        let all = read_all(&l, SeekPosition::Beginning);
        assert_eq!(all.len(), 50);
        assert!(all
            .iter()
            .enumerate()
            .all(|(i, (o, b))| *o == i as i64 && *b == format!("m{i}")));
        assert_eq!(read_all(&l, SeekPosition::Offset(37))[0].0, 37);
        assert!(read_all(&l, SeekPosition::End).is_empty());
        assert_eq!(l.tail().unwrap().next_offset, 50);
    }

    #[test]
    fn a_reader_at_the_end_sees_later_appends_and_half_written_records_only_once_whole() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("p-0");
        fs::create_dir_all(&d).unwrap();
        // Records may be larger than a read chunk here.
        let l = Arc::new(PartitionLog::new(
            d,
            "q".into(),
            1,
            0,
            RetentionPolicy::default(),
            Arc::from("h"),
            4 << 20,
        ));
        let mut r = l.reader(SeekPosition::End).unwrap();
        let mut out = Vec::new();
        assert_eq!(r.read_available(10, &mut out).unwrap(), 0);
        send(&l, &["a", "b", "c"], 1 << 20);
        assert_eq!(r.read_available(10, &mut out).unwrap(), 3);
        // A record larger than one read chunk.
        let big = "x".repeat(READ_CHUNK + 100);
        send(&l, &[&big], 1 << 30);
        assert_eq!(r.read_available(10, &mut out).unwrap(), 1);
        assert_eq!(out[3].data.len(), big.len());
        // A record whose bytes arrive in two writes is served once it is whole.
        let mut b = EncodedBatch::default();
        b.push_message(&Message::new("q", "late"), false);
        b.seal(5, now_millis());
        let mut f = OpenOptions::new()
            .append(true)
            .open(segment_path(&l.dir, 0))
            .unwrap();
        f.write_all(&b.buf[..10]).unwrap();
        assert_eq!(r.read_available(10, &mut out).unwrap(), 0);
        f.write_all(&b.buf[10..]).unwrap();
        assert_eq!(r.read_available(10, &mut out).unwrap(), 1);
        let bodies: Vec<&[u8]> = out.iter().map(|m| &m.data[..]).collect();
        assert_eq!(
            (bodies[0], bodies[2], bodies[4]),
            (&b"a"[..], &b"c"[..], &b"late"[..])
        );
        assert_eq!(r.position(), 6);
    }

    #[test]
    fn a_fresh_handle_continues_the_offsets_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let l = log(dir.path(), RetentionPolicy::default());
        send(&l, &["a", "b"], 1 << 20);
        // A crashed writer left half a record.
        let path = segment_path(&l.dir, 0);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2, 3]).unwrap();
        let again = log(dir.path(), RetentionPolicy::default());
        assert_eq!(
            read_all(&again, SeekPosition::Beginning).len(),
            2,
            "the torn record is not served"
        );
        assert_eq!(send(&again, &["c"], 1 << 20), 2);
        let bodies: Vec<String> = read_all(&again, SeekPosition::Beginning)
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        assert_eq!(bodies, ["a", "b", "c"]);
    }

    #[test]
    fn corruption_in_a_sealed_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let l = log(dir.path(), RetentionPolicy::default());
        for i in 0..20 {
            send(&l, &[&format!("message {i}")], 200);
        }
        let path = segment_path(&l.dir, 0);
        let mut bytes = fs::read(&path).unwrap();
        bytes[30] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let mut r = l.reader(SeekPosition::Beginning).unwrap();
        let err = r.read_available(100, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("is corrupt at byte 0"), "{err}");
    }

    #[test]
    fn retention_by_size_drops_old_segments_and_readers_skip_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let l = log(
            dir.path(),
            RetentionPolicy {
                max_age: None,
                max_bytes: Some(600),
            },
        );
        for i in 0..100 {
            send(&l, &[&format!("m{i}")], 200);
        }
        let total: u64 = list_segments(&l.dir)
            .unwrap()
            .iter()
            .map(|&b| fs::metadata(segment_path(&l.dir, b)).unwrap().len())
            .sum();
        assert!(total <= 600 + 200, "kept {total} bytes");
        let kept = read_all(&l, SeekPosition::Beginning);
        assert_eq!(kept.last().unwrap().0, 99);
        assert!(kept[0].0 > 0);
    }

    #[test]
    fn timestamp_seek_finds_the_first_record_at_or_after() {
        let dir = tempfile::tempdir().unwrap();
        let l = log(dir.path(), RetentionPolicy::default());
        send(&l, &["old"], 1 << 20);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let t = now_millis();
        std::thread::sleep(std::time::Duration::from_millis(2));
        send(&l, &["new1", "new2"], 1 << 20);
        assert_eq!(read_all(&l, SeekPosition::Timestamp(t))[0].1, "new1");
        assert!(read_all(&l, SeekPosition::Timestamp(now_millis() + 1000)).is_empty());
    }

    #[test]
    fn a_batch_cut_short_by_a_crash_is_never_served_and_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let l = log(dir.path(), RetentionPolicy::default());
        send(&l, &["a", "b", "c"], 1 << 20);
        // A crashed writer got two whole records of a three-record batch onto the disk.
        let mut batch = EncodedBatch::default();
        for body in ["x", "y", "z"] {
            batch.push_message(&Message::new("q", body), false);
        }
        batch.seal(3, 1);
        let two = batch.starts[2];
        let path = segment_path(&l.dir, 0);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&batch.buf[..two]).unwrap();
        let again = log(dir.path(), RetentionPolicy::default());
        let mut reader = again.reader(SeekPosition::Beginning).unwrap();
        let mut out = Vec::new();
        reader.read_available(100, &mut out).unwrap();
        assert_eq!(out.len(), 3, "the partial batch is not served");
        assert_eq!(reader.position(), 3);
        assert_eq!(again.tail().unwrap().next_offset, 3);
        assert_eq!(
            send(&again, &["d"], 1 << 20),
            3,
            "the writer cuts the partial batch"
        );
        let bodies: Vec<String> = read_all(&again, SeekPosition::Beginning)
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        assert_eq!(bodies, ["a", "b", "c", "d"]);
    }

    #[test]
    fn a_timestamp_seek_past_the_end_moves_the_position_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let l = log(dir.path(), RetentionPolicy::default());
        send(&l, &["a", "b", "c"], 1 << 20);
        let mut reader = l
            .reader(SeekPosition::Timestamp(now_millis() + 3_600_000))
            .unwrap();
        assert_eq!(reader.read_available(10, &mut Vec::new()).unwrap(), 0);
        assert_eq!(reader.position(), 3, "skipped records advance the position");
    }

    #[test]
    fn retention_by_age_drops_segments_sealed_before_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let age = std::time::Duration::from_millis(200);
        let l = log(
            dir.path(),
            RetentionPolicy {
                max_age: Some(age),
                max_bytes: None,
            },
        );
        for i in 0..20 {
            send(&l, &[&format!("old{i}")], 200);
        }
        let old_segments = list_segments(&l.dir).unwrap().len();
        assert!(old_segments > 3);
        std::thread::sleep(age + std::time::Duration::from_millis(50));
        for i in 0..3 {
            send(&l, &[&format!("new{i}")], 200);
        }
        // Segments sealed before the pause are gone; the one that was active then was sealed
        // after it, so it stays until it too is older than the limit.
        let kept = read_all(&l, SeekPosition::Beginning);
        assert!(kept[0].0 > 0, "nothing was dropped: {kept:?}");
        assert!(list_segments(&l.dir).unwrap().len() <= 3, "{kept:?}");
        assert_eq!(kept.last().unwrap().1, "new2");
    }
}
