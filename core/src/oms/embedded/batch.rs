//! Batch transactions: many prepared messages in one staged file, committed together.
//!
//! A batch may span partitions and queues, so it lives with the store, not with a partition.
//! Files in `<store>/transactions/`:
//! - `<txid>.txbatch`: a prepared batch. Its producer holds an `flock` on it; a file nobody
//!   holds belongs to a producer that went away, and is resolved by a transaction check
//!   listener, which sees the batch's first message.
//! - `<txid>.txcommit`: a batch decided committed, being published. Renaming the `.txbatch` to
//!   this name *is* the commit: from then on the batch is published whole, by its committer or,
//!   after a crash, by the next recovery of any transactional producer, whatever its listener
//!   says. It is removed once every message is in its partition.
//! - `<txid>.<group>.txmark`: the offset at which a partition group of a committing batch is
//!   appended, written under the partition's write lock just before the append. After a crash
//!   the record at that offset tells whether the append happened, so each group is appended
//!   exactly once. Removed after the `.txcommit` file; one left without it is stale.
//!
//! A `.txbatch` file holds a magic number, a header with its CRC, and the records:
//!
//! ```text
//! "OMSTXB01"  u32 header length  u32 header CRC-32
//! header:  u32 groups, per group: u32 queue name length, queue name, i32 partition,
//!          u32 message count, u64 record bytes;
//!          u32 messages, per message in batch order: u32 its group
//! records: each group's records in turn, as the partition stores them (with explicit ids)
//! ```
//! The messages of one partition are appended with one write, as one batch: a reader sees all
//! of a partition's messages of a transaction or none. The groups of a batch that spans
//! partitions are appended one after another, so readers of different partitions may see
//! them appear at slightly different times; after a crash none is lost and none doubled.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::record::{self, EncodedBatch, Parsed, Placement, KIND_MESSAGE};
use super::staged;
use super::store::{write_file_atomically, MAX_RECORD};
use super::Shared;
use crate::oms::{
    Message, OmsError, OmsStatus, PreparedTransaction, Result, SendResult, TransactionState,
    TransactionStateCheckListener,
};

const MAGIC: &[u8; 8] = b"OMSTXB01";
const PREPARED: &str = "txbatch";
const COMMITTING: &str = "txcommit";
const MARK: &str = "txmark";

/// The messages of a batch bound for one partition, encoded.
#[derive(Debug)]
pub(crate) struct StagedGroup {
    /// The queue's full name.
    pub(crate) queue: String,
    pub(crate) partition: i32,
    pub(crate) records: EncodedBatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupMeta {
    queue: String,
    partition: i32,
    count: u32,
    bytes: u64,
}

/// What the header of a batch file says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Manifest {
    groups: Vec<GroupMeta>,
    /// The group of each message, in batch order.
    order: Vec<u32>,
}

impl Manifest {
    fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(8 + self.groups.len() * 64 + self.order.len() * 4);
        h.extend_from_slice(&(self.groups.len() as u32).to_le_bytes());
        for g in &self.groups {
            h.extend_from_slice(&(g.queue.len() as u32).to_le_bytes());
            h.extend_from_slice(g.queue.as_bytes());
            h.extend_from_slice(&g.partition.to_le_bytes());
            h.extend_from_slice(&g.count.to_le_bytes());
            h.extend_from_slice(&g.bytes.to_le_bytes());
        }
        h.extend_from_slice(&(self.order.len() as u32).to_le_bytes());
        for g in &self.order {
            h.extend_from_slice(&g.to_le_bytes());
        }
        h
    }

    fn decode(mut h: &[u8]) -> std::result::Result<Self, &'static str> {
        fn take<'a>(h: &mut &'a [u8], n: usize) -> std::result::Result<&'a [u8], &'static str> {
            if h.len() < n {
                return Err("the header ends early");
            }
            let (head, rest) = h.split_at(n);
            *h = rest;
            Ok(head)
        }
        fn u32_(h: &mut &[u8]) -> std::result::Result<u32, &'static str> {
            Ok(u32::from_le_bytes(
                take(h, 4)?.try_into().map_err(|_| "short u32")?,
            ))
        }
        let n = u32_(&mut h)? as usize;
        let mut groups = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            let len = u32_(&mut h)? as usize;
            let queue = std::str::from_utf8(take(&mut h, len)?)
                .map_err(|_| "a queue name is not UTF-8")?
                .to_string();
            let partition = u32_(&mut h)? as i32;
            let count = u32_(&mut h)?;
            let bytes = u64::from_le_bytes(take(&mut h, 8)?.try_into().map_err(|_| "short u64")?);
            groups.push(GroupMeta {
                queue,
                partition,
                count,
                bytes,
            });
        }
        let m = u32_(&mut h)? as usize;
        let mut order = Vec::with_capacity(m.min(h.len() / 4));
        for _ in 0..m {
            let g = u32_(&mut h)?;
            if g as usize >= groups.len() {
                return Err("a message names a group that does not exist");
            }
            order.push(g);
        }
        if !h.is_empty() {
            return Err("trailing bytes after the header");
        }
        let counted = groups.iter().map(|g| g.count as usize).sum::<usize>();
        if counted != order.len() || order.is_empty() {
            return Err("the group counts do not add up to the messages");
        }
        Ok(Self { groups, order })
    }

    /// The batch position of the first message of each group.
    fn first_of_groups(&self) -> Vec<usize> {
        let mut first = vec![usize::MAX; self.groups.len()];
        for (i, &g) in self.order.iter().enumerate() {
            let slot = &mut first[g as usize];
            if *slot == usize::MAX {
                *slot = i;
            }
        }
        first
    }
}

/// The id of message `index` of transaction `txid`: unique, since transaction ids are.
fn message_id(txid: &str, index: usize) -> String {
    format!("{txid}{index:08X}")
}

/// Gives the messages of a batch their ids (message `i` gets [`message_id`]) and the
/// transaction id.
pub(crate) fn assign_ids(txid: &str, messages: &mut [Message]) {
    for (i, m) in messages.iter_mut().enumerate() {
        m.header.message_id = Some(message_id(txid, i));
        m.extension_header.transaction_id = Some(txid.to_string());
    }
}

/// A batch file read back: its manifest and the records of each group.
struct BatchFile {
    manifest: Manifest,
    /// The records of each group, with the start of each record.
    groups: Vec<(Vec<u8>, Vec<usize>)>,
}

fn corrupt(path: &Path, why: &str) -> OmsError {
    OmsError::storage(format!(
        "batch transaction file {} is corrupt ({why}); it is set aside",
        path.display()
    ))
}

/// Reads and checks a batch file; `None` if it is gone. A corrupt file is set aside (it could
/// never be published) and is an error.
fn read_batch(path: &Path) -> Result<Option<BatchFile>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(OmsError::io("read", path, e)),
    };
    match parse_batch(&bytes) {
        Ok(file) => Ok(Some(file)),
        Err(why) => {
            let err = corrupt(path, why);
            staged::quarantine(path, &err);
            Err(err)
        }
    }
}

fn parse_batch(bytes: &[u8]) -> std::result::Result<BatchFile, &'static str> {
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err("not a batch transaction file");
    }
    let len = u32::from_le_bytes(bytes[8..12].try_into().map_err(|_| "short length")?) as usize;
    let crc = u32::from_le_bytes(bytes[12..16].try_into().map_err(|_| "short crc")?);
    let header = bytes.get(16..16 + len).ok_or("the header ends early")?;
    if crc32fast::hash(header) != crc {
        return Err("header checksum mismatch");
    }
    let manifest = Manifest::decode(header)?;
    let mut rest = &bytes[16 + len..];
    let mut groups = Vec::with_capacity(manifest.groups.len());
    for g in &manifest.groups {
        let n = usize::try_from(g.bytes).map_err(|_| "a group is too large")?;
        if rest.len() < n {
            return Err("the records end early");
        }
        let (records, tail) = rest.split_at(n);
        rest = tail;
        let mut starts = Vec::with_capacity(g.count as usize);
        let mut pos = 0;
        while pos < records.len() {
            match record::parse(&records[pos..], MAX_RECORD, true) {
                Parsed::Record(rec) if rec.kind == KIND_MESSAGE => {
                    starts.push(pos);
                    pos += rec.total_len;
                }
                Parsed::Invalid(why) => return Err(why),
                _ => return Err("a record is not a whole message"),
            }
        }
        if starts.len() != g.count as usize {
            return Err("a group holds another number of records than its header says");
        }
        groups.push((records.to_vec(), starts));
    }
    if !rest.is_empty() {
        return Err("trailing bytes after the records");
    }
    Ok(BatchFile { manifest, groups })
}

fn transactions_dir(shared: &Shared) -> PathBuf {
    shared.store.dir.join("transactions")
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| OmsError::io("sync", dir, e))
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(OmsError::io("delete", path, e)),
    }
}

/// Writes a prepared batch and returns it, locked: the lock is taken before the file gets its
/// final name, so no recovery can mistake it for an orphan.
pub(crate) fn stage(
    shared: &Arc<Shared>,
    txid: String,
    mut groups: Vec<StagedGroup>,
    order: Vec<u32>,
) -> Result<BatchTransaction> {
    let dir = transactions_dir(shared);
    fs::create_dir_all(&dir).map_err(|e| OmsError::io("create", &dir, e))?;
    for g in &mut groups {
        // Sealed with placeholder offsets so that every record carries its CRC on disk.
        g.records.seal(0, 0);
    }
    let manifest = Manifest {
        groups: groups
            .iter()
            .map(|g| GroupMeta {
                queue: g.queue.clone(),
                partition: g.partition,
                count: g.records.len() as u32,
                bytes: g.records.buf.len() as u64,
            })
            .collect(),
        order,
    };
    let header = manifest.encode();
    let path = dir.join(format!("{txid}.{PREPARED}"));
    let tmp = dir.join(format!("{txid}.tmp"));
    let fsync = shared.fsync();
    let res = (|| {
        let mut f = File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&tmp)?;
        f.lock()?;
        let mut head = Vec::with_capacity(16 + header.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&(header.len() as u32).to_le_bytes());
        head.extend_from_slice(&crc32fast::hash(&header).to_le_bytes());
        head.extend_from_slice(&header);
        std::io::Write::write_all(&mut f, &head)?;
        for g in &groups {
            std::io::Write::write_all(&mut f, &g.records.buf)?;
        }
        if fsync {
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        Ok(f)
    })();
    let lock = match res {
        Ok(f) => f,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(OmsError::io("write", &path, e));
        }
    };
    if fsync {
        sync_dir(&dir)?;
    }
    Ok(BatchTransaction {
        shared: Arc::clone(shared),
        count: manifest.order.len(),
        path,
        lock,
        txid,
    })
}

/// Where the groups of a published batch went.
struct Published {
    manifest: Manifest,
    /// The offset of each group's first message; `-1` for a group whose queue was deleted.
    first_offsets: Vec<i64>,
}

impl Published {
    /// The result of each message, in batch order; only the first `limit`.
    fn results(&self, txid: &str, limit: usize) -> Vec<SendResult> {
        let mut next = vec![0i64; self.manifest.groups.len()];
        self.manifest
            .order
            .iter()
            .take(limit)
            .enumerate()
            .map(|(i, &g)| {
                let g = g as usize;
                let meta = &self.manifest.groups[g];
                let first = self.first_offsets[g];
                let offset = if first < 0 { -1 } else { first + next[g] };
                next[g] += 1;
                SendResult {
                    message_id: message_id(txid, i),
                    queue: meta.queue.as_str().into(),
                    partition: meta.partition,
                    offset,
                }
            })
            .collect()
    }
}

/// Publishes a committed batch (`<txid>.txcommit`, held locked by the caller) into its
/// partitions, each group exactly once, then removes its files.
fn roll_forward(shared: &Shared, path: &Path, txid: &str) -> Result<Published> {
    let file = read_batch(path)?.ok_or_else(already_resolved)?;
    publish(shared, path, txid, file)
}

fn already_resolved() -> OmsError {
    OmsError::transaction(
        OmsStatus::BAD_REQUEST,
        "the transaction was already resolved (committed or rolled back elsewhere)",
    )
}

/// Appends the groups of `file`, the committed batch in `path`; see [`roll_forward`].
fn publish(shared: &Shared, path: &Path, txid: &str, file: BatchFile) -> Result<Published> {
    let BatchFile { manifest, groups } = file;
    let firsts = manifest.first_of_groups();
    let dir = transactions_dir(shared);
    let opts = shared.write_options();
    let mut first_offsets = Vec::with_capacity(groups.len());
    for (g, (records, starts)) in groups.into_iter().enumerate() {
        let meta = &manifest.groups[g];
        let first_id = message_id(txid, firsts[g]);
        let marker = dir.join(format!("{txid}.{g}.{MARK}"));
        let appended = shared.store.queue(&meta.queue).and_then(|queue| {
            let log = queue.partition(meta.partition)?;
            log.with_write_lock(opts, |appender| {
                let end = appender.tail().next_offset;
                if let Some(recorded) = read_marker(&marker)? {
                    // An earlier attempt got this far: did its append happen?
                    if let Some(found) = log.read_one(recorded, end)? {
                        if found.message_id() == Some(first_id.as_str()) {
                            return Ok(recorded);
                        }
                    }
                }
                write_file_atomically(&marker, &end.to_le_bytes(), opts.fsync)?;
                let mut batch = EncodedBatch {
                    buf: records,
                    starts,
                };
                appender.append(&mut batch).map(|(first, _)| first)
            })
        });
        match appended {
            Ok(first) => first_offsets.push(first),
            Err(e) if e.status() == OmsStatus::DESTINATION_NOT_FOUND => {
                shared.store.forget(&meta.queue);
                tracing::warn!(queue = %meta.queue, partition = meta.partition, transaction = txid, "the queue of committed messages was deleted; they are dropped");
                first_offsets.push(-1);
            }
            Err(e) => return Err(e),
        }
    }
    // The batch is published: its file goes first, then the markers (a marker without its
    // `.txcommit` is stale, while a `.txcommit` without its markers would be published again).
    remove(path)?;
    for g in 0..manifest.groups.len() {
        let marker = dir.join(format!("{txid}.{g}.{MARK}"));
        if let Err(err) = remove(&marker) {
            tracing::warn!(%err, "cannot remove a stale transaction marker; it is removed by a later recovery");
        }
    }
    Ok(Published {
        manifest,
        first_offsets,
    })
}

fn read_marker(path: &Path) -> Result<Option<i64>> {
    match fs::read(path) {
        Ok(bytes) => Ok(bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_le_bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(OmsError::io("read", path, e)),
    }
}

/// Decides a prepared batch: renames it to `.txcommit` (the commit) and publishes it.
/// The batch is read (and checked) first: a corrupt one is set aside undecided rather than
/// committed and then found unpublishable.
fn commit_locked(shared: &Shared, path: &Path, txid: &str) -> Result<Published> {
    let file = read_batch(path)?.ok_or_else(already_resolved)?;
    let committing = path.with_extension(COMMITTING);
    fs::rename(path, &committing).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            already_resolved()
        } else {
            OmsError::io("commit", path, e)
        }
    })?;
    if shared.fsync() {
        sync_dir(&transactions_dir(shared))?;
    }
    publish(shared, &committing, txid, file)
}

/// The first message of a prepared batch, as a check listener sees it, read without the rest
/// of the file (a listener that answers `Unknown` is asked again every few seconds). `None`
/// if the file is gone; the inner error says why the file is corrupt.
fn read_first_message(
    shared: &Shared,
    path: &Path,
) -> Result<Option<std::result::Result<Message, &'static str>>> {
    use std::os::unix::fs::FileExt;
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(OmsError::io("open", path, e)),
    };
    let size = f
        .metadata()
        .map_err(|e| OmsError::io("stat", path, e))?
        .len();
    // Reads `len` bytes at `at`; `None` when the file is shorter.
    let read = |at: u64, len: u64| -> Result<Option<Vec<u8>>> {
        if at.checked_add(len).is_none_or(|end| end > size) {
            return Ok(None);
        }
        let mut buf = vec![0u8; len as usize];
        match f.read_exact_at(&mut buf, at) {
            Ok(()) => Ok(Some(buf)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(OmsError::io("read", path, e)),
        }
    };
    let Some(head) = read(0, 16)? else {
        return Ok(Some(Err("the file ends early")));
    };
    if &head[..8] != MAGIC {
        return Ok(Some(Err("not a batch transaction file")));
    }
    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    let crc = u32::from_le_bytes([head[12], head[13], head[14], head[15]]);
    let Some(header) = read(16, u64::from(len))? else {
        return Ok(Some(Err("the header ends early")));
    };
    if crc32fast::hash(&header) != crc {
        return Ok(Some(Err("header checksum mismatch")));
    }
    let manifest = match Manifest::decode(&header) {
        Ok(m) => m,
        Err(why) => return Ok(Some(Err(why))),
    };
    let g = manifest.order[0] as usize;
    let meta = &manifest.groups[g];
    let at = 16 + u64::from(len) + manifest.groups[..g].iter().map(|g| g.bytes).sum::<u64>();
    let Some(prefix) = read(at, 8)? else {
        return Ok(Some(Err("the records end early")));
    };
    let total = 8 + u64::from(u32::from_le_bytes([
        prefix[0], prefix[1], prefix[2], prefix[3],
    ]));
    if total > meta.bytes || total > MAX_RECORD as u64 {
        return Ok(Some(Err("impossible record length")));
    }
    let Some(bytes) = read(at, total)? else {
        return Ok(Some(Err("the records end early")));
    };
    let chunk = Bytes::from(bytes);
    let rec = match record::parse(&chunk, MAX_RECORD, true) {
        Parsed::Record(rec) if rec.kind == KIND_MESSAGE && rec.total_len == chunk.len() => rec,
        Parsed::Invalid(why) => return Ok(Some(Err(why))),
        _ => return Ok(Some(Err("the first record is not a whole message"))),
    };
    let queue: Arc<str> = Arc::from(meta.queue.as_str());
    let placement = Placement {
        queue: &queue,
        queue_id: crc32fast::hash(meta.queue.as_bytes()),
        partition: meta.partition,
        store_host: &shared.store.host,
    };
    Ok(Some(record::decode_message(&chunk, &rec, placement)))
}

/// Resolves the batch transactions that no live producer holds: finishes committed ones and
/// asks `listener` about prepared ones. Returns how many were committed or rolled back.
pub(crate) fn recover(
    shared: &Shared,
    listener: &dyn TransactionStateCheckListener,
) -> Result<usize> {
    let dir = transactions_dir(shared);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(OmsError::io("list", &dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry
            .map_err(|e| OmsError::io("list", &dir, e))?
            .file_name();
        if let Some(name) = name.to_str() {
            names.push(name.to_string());
        }
    }
    // Transaction ids begin with their creation time: older transactions are resolved first,
    // so the messages of one producer keep their order in each partition.
    names.sort();
    let mut resolved = 0;
    for name in names {
        let path = dir.join(&name);
        let Some((txid, ext)) = name.split_once('.') else {
            continue;
        };
        let outcome = match ext {
            COMMITTING => finish_orphan(shared, &path, txid),
            PREPARED => decide_orphan(shared, &path, txid, listener),
            _ if ext.ends_with(MARK) => {
                if !dir.join(format!("{txid}.{COMMITTING}")).exists() {
                    let _ = remove(&path);
                }
                Ok(0)
            }
            _ => Ok(0),
        };
        match outcome {
            Ok(n) => resolved += n,
            // One transaction that cannot be resolved now must not hold back the others.
            Err(err) => {
                tracing::warn!(%err, file = %path.display(), "cannot resolve an open batch transaction; will retry")
            }
        }
    }
    Ok(resolved)
}

/// Publishes a batch whose committer went away after deciding.
fn finish_orphan(shared: &Shared, path: &Path, txid: &str) -> Result<usize> {
    let Some(lock) = staged::lock_prepared(path)? else {
        return Ok(0);
    };
    if !path.exists() {
        // Finished by its holder between our listing and our lock.
        return Ok(0);
    }
    roll_forward(shared, path, txid)?;
    drop(lock);
    Ok(1)
}

/// Asks the listener about a prepared batch whose producer went away.
fn decide_orphan(
    shared: &Shared,
    path: &Path,
    txid: &str,
    listener: &dyn TransactionStateCheckListener,
) -> Result<usize> {
    let Some(lock) = staged::lock_prepared(path)? else {
        return Ok(0);
    };
    let first = match read_first_message(shared, path)? {
        Some(Ok(m)) => m,
        None => return Ok(0),
        Some(Err(why)) => {
            staged::quarantine(path, &corrupt(path, why));
            return Ok(0);
        }
    };
    let n = match listener.check(&first) {
        TransactionState::Commit => commit_locked(shared, path, txid).map(|_| 1)?,
        TransactionState::Rollback => remove(path).map(|()| 1)?,
        TransactionState::Unknown => 0,
    };
    drop(lock);
    Ok(n)
}

/// A prepared batch, held by its producer.
#[derive(Debug)]
pub(crate) struct BatchTransaction {
    shared: Arc<Shared>,
    path: PathBuf,
    /// Held until the transaction is decided: it tells other processes the producer is alive.
    lock: File,
    txid: String,
    count: usize,
}

impl BatchTransaction {
    /// Commits; the lock is released once the batch is published (or the commit failed, when
    /// a recovery takes over).
    fn commit_blocking(self) -> Result<(Published, String)> {
        let published = commit_locked(&self.shared, &self.path, &self.txid)?;
        drop(self.lock);
        Ok((published, self.txid))
    }

    async fn commit_published(self) -> Result<(Published, String)> {
        if self.shared.fsync() {
            // fsync takes milliseconds: keep it off the async worker threads.
            return tokio::task::spawn_blocking(move || self.commit_blocking())
                .await
                .map_err(|e| OmsError::storage(format!("the commit task failed: {e}")))?;
        }
        self.commit_blocking()
    }
}

#[async_trait]
impl PreparedTransaction for BatchTransaction {
    fn transaction_id(&self) -> &str {
        &self.txid
    }

    fn message_count(&self) -> usize {
        self.count
    }

    async fn commit(self: Box<Self>) -> Result<SendResult> {
        let (published, txid) = self.commit_published().await?;
        published
            .results(&txid, 1)
            .pop()
            .ok_or_else(|| OmsError::storage("a committed batch has no messages"))
    }

    async fn commit_all(self: Box<Self>) -> Result<Vec<SendResult>> {
        let (published, txid) = self.commit_published().await?;
        Ok(published.results(&txid, usize::MAX))
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        remove(&self.path)?;
        drop(self.lock);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::oms::embedded::{store::Store, EmbeddedConfig, EMBEDDED_DIR};
    use crate::oms::{
        connect, keyvalue, KeyValue, MessagingAccessPoint, Producer, QueueConfig, SeekPosition,
        ServiceLifecycle,
    };

    /// Decides every transaction as told, and keeps the messages it was asked about.
    struct Decide(TransactionState, Mutex<Vec<Message>>);

    impl TransactionStateCheckListener for Decide {
        fn check(&self, message: &Message) -> TransactionState {
            self.1.lock().unwrap().push(message.clone());
            self.0
        }
    }

    fn decide(state: TransactionState) -> Arc<Decide> {
        Arc::new(Decide(state, Mutex::new(Vec::new())))
    }

    /// A store with queue `q` of 3 partitions, its access point and its shared state.
    async fn setup(dir: &Path) -> (Arc<dyn MessagingAccessPoint>, Arc<Shared>) {
        let attrs = KeyValue::new()
            .with(EMBEDDED_DIR, dir.display())
            .with(keyvalue::REGION, "default");
        let ap = connect("oms:embedded://localhost/default", attrs.clone())
            .await
            .unwrap();
        ap.resource_manager()
            .await
            .unwrap()
            .create_queue("q", QueueConfig::with_partitions(3))
            .await
            .unwrap();
        let config = EmbeddedConfig::from_attributes(&attrs).unwrap();
        let store = Store::open(&config.dir).unwrap();
        (ap, Arc::new(Shared { store, config }))
    }

    async fn producer(
        ap: &Arc<dyn MessagingAccessPoint>,
        listener: Arc<dyn TransactionStateCheckListener>,
    ) -> Producer {
        let p = ap
            .create_transactional_producer(KeyValue::new(), listener)
            .await
            .unwrap();
        p.start().await.unwrap();
        p
    }

    /// Every message of `q`, by partition.
    async fn read_all(ap: &Arc<dyn MessagingAccessPoint>) -> BTreeMap<i32, Vec<Message>> {
        let consumer = ap.create_streaming_consumer(KeyValue::new()).await.unwrap();
        consumer.start().await.unwrap();
        let mut out = BTreeMap::new();
        for p in 0..3 {
            let mut r = consumer
                .open("q", p, SeekPosition::Beginning)
                .await
                .unwrap();
            let got = r.poll_batch(100_000, Duration::ZERO).await.unwrap();
            out.insert(p, got);
        }
        out
    }

    /// 30 messages over the 3 partitions (`i % 3`), bodies `m<i>`, a property on each.
    fn messages() -> Vec<Message> {
        (0..30)
            .map(|i| {
                Message::new("q", format!("m{i}"))
                    .with_property("n", i)
                    .with_partition(i % 3)
            })
            .collect()
    }

    fn bodies(got: &BTreeMap<i32, Vec<Message>>) -> Vec<String> {
        let mut all: Vec<String> = got
            .values()
            .flatten()
            .map(|m| String::from_utf8(m.data.to_vec()).unwrap())
            .collect();
        all.sort();
        all
    }

    fn staged_files(shared: &Shared) -> Vec<String> {
        fs::read_dir(transactions_dir(shared))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_batch_is_invisible_until_committed_then_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (ap, shared) = setup(dir.path()).await;
        let p = producer(&ap, decide(TransactionState::Unknown)).await;
        let tx = p.prepare_batch(messages()).await.unwrap();
        assert_eq!(tx.message_count(), 30);
        let txid = tx.transaction_id().to_string();
        assert!(
            read_all(&ap).await.values().all(Vec::is_empty),
            "visible before commit"
        );
        assert_eq!(
            staged_files(&shared),
            vec![format!("{txid}.txbatch")],
            "one file per batch"
        );

        let sent = tx.commit_all().await.unwrap();
        assert_eq!(sent.len(), 30);
        let got = read_all(&ap).await;
        assert_eq!(got.values().map(Vec::len).sum::<usize>(), 30);
        for (i, r) in sent.iter().enumerate() {
            let m = &got[&r.partition][r.offset as usize];
            assert_eq!(
                &m.data[..],
                format!("m{i}").as_bytes(),
                "result {i} points at its message"
            );
            assert_eq!(m.message_id(), Some(r.message_id.as_str()));
            assert_eq!(
                m.extension_header.transaction_id.as_deref(),
                Some(txid.as_str())
            );
        }
        for messages in got.values() {
            let ns: Vec<i64> = messages
                .iter()
                .map(|m| m.properties.get_i64("n").unwrap().unwrap())
                .collect();
            assert!(
                ns.windows(2).all(|w| w[0] < w[1]),
                "batch order kept per partition: {ns:?}"
            );
        }
        assert!(staged_files(&shared).is_empty(), "nothing left behind");
    }

    #[tokio::test]
    async fn a_rolled_back_batch_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (ap, shared) = setup(dir.path()).await;
        let p = producer(&ap, decide(TransactionState::Unknown)).await;
        p.prepare_batch(messages())
            .await
            .unwrap()
            .rollback()
            .await
            .unwrap();
        let first = p
            .prepare_batch(messages())
            .await
            .unwrap()
            .commit()
            .await
            .unwrap();
        assert_eq!(
            &read_all(&ap).await[&first.partition][0].message_id(),
            &Some(first.message_id.as_str())
        );
        assert_eq!(
            bodies(&read_all(&ap).await).len(),
            30,
            "only the committed batch"
        );
        assert!(staged_files(&shared).is_empty());
    }

    #[tokio::test]
    async fn an_orphaned_batch_is_resolved_by_the_listener_both_ways() {
        for state in [TransactionState::Commit, TransactionState::Rollback] {
            let dir = tempfile::tempdir().unwrap();
            let (ap, shared) = setup(dir.path()).await;
            let p = producer(&ap, decide(TransactionState::Unknown)).await;
            let tx = p.prepare_batch(messages()).await.unwrap();
            let txid = tx.transaction_id().to_string();
            // The producer "dies" without deciding.
            drop(tx);
            drop(p);
            let undecided = decide(TransactionState::Unknown);
            let _ = producer(&ap, undecided.clone()).await;
            assert_eq!(undecided.1.lock().unwrap().len(), 1, "asked once per batch");
            assert!(
                read_all(&ap).await.values().all(Vec::is_empty),
                "unknown keeps it open"
            );

            let listener = decide(state);
            let _resolver = producer(&ap, listener.clone()).await;
            let asked = listener.1.lock().unwrap().clone();
            assert_eq!(asked.len(), 1);
            assert_eq!(
                &asked[0].data[..],
                b"m0",
                "the listener sees the first message"
            );
            assert_eq!(asked[0].properties.get_str("n"), Some("0"));
            assert_eq!(asked[0].destination(), "q");
            assert_eq!(
                asked[0].extension_header.transaction_id.as_deref(),
                Some(txid.as_str())
            );
            let got = read_all(&ap).await;
            let expected = if state == TransactionState::Commit {
                30
            } else {
                0
            };
            assert_eq!(bodies(&got).len(), expected, "{state:?}");
            assert!(staged_files(&shared).is_empty(), "{state:?}");

            let again = decide(TransactionState::Commit);
            let _second = producer(&ap, again.clone()).await;
            assert!(again.1.lock().unwrap().is_empty(), "resolved once");
            assert_eq!(
                bodies(&read_all(&ap).await).len(),
                expected,
                "not published twice"
            );
        }
    }

    #[tokio::test]
    async fn an_interrupted_commit_is_finished_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let (ap, shared) = setup(dir.path()).await;
        let p = producer(&ap, decide(TransactionState::Unknown)).await;
        let tx = p.prepare_batch(messages()).await.unwrap();
        let txid = tx.transaction_id().to_string();
        drop(tx);
        // Crash in the middle of a commit: decided, group 0 appended, group 1 about to be
        // (its marker written, no append), group 2 not started.
        let tdir = transactions_dir(&shared);
        let committing = tdir.join(format!("{txid}.{COMMITTING}"));
        fs::rename(tdir.join(format!("{txid}.{PREPARED}")), &committing).unwrap();
        let file = read_batch(&committing).unwrap().unwrap();
        assert_eq!(file.manifest.groups.len(), 3);
        let queue = shared.store.queue("q").unwrap();
        for g in 0..2 {
            let meta = &file.manifest.groups[g];
            let log = queue.partition(meta.partition).unwrap();
            let end = log.tail().unwrap().next_offset;
            let marker = tdir.join(format!("{txid}.{g}.{MARK}"));
            write_file_atomically(&marker, &end.to_le_bytes(), false).unwrap();
            if g == 0 {
                let (records, starts) = file.groups[g].clone();
                let mut batch = EncodedBatch {
                    buf: records,
                    starts,
                };
                log.append(&mut batch, shared.write_options()).unwrap();
            }
        }
        assert_eq!(bodies(&read_all(&ap).await).len(), 10, "group 0 is in");
        // Whatever the listener says, a decided batch is finished.
        let listener = decide(TransactionState::Rollback);
        let _resolver = producer(&ap, listener.clone()).await;
        assert!(
            listener.1.lock().unwrap().is_empty(),
            "no question about a decided batch"
        );
        let expected: Vec<String> = {
            let mut v: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
            v.sort();
            v
        };
        assert_eq!(
            bodies(&read_all(&ap).await),
            expected,
            "every message exactly once"
        );
        assert!(staged_files(&shared).is_empty(), "markers removed too");
    }

    #[tokio::test]
    async fn a_corrupt_batch_is_set_aside_not_published() {
        let dir = tempfile::tempdir().unwrap();
        let (ap, shared) = setup(dir.path()).await;
        let p = producer(&ap, decide(TransactionState::Unknown)).await;
        let tx = p.prepare_batch(messages()).await.unwrap();
        let path = transactions_dir(&shared).join(format!("{}.{PREPARED}", tx.transaction_id()));
        drop(tx);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xFF;
        fs::write(&path, &bytes).unwrap();
        let listener = decide(TransactionState::Commit);
        let _resolver = producer(&ap, listener.clone()).await;
        assert_eq!(
            listener.1.lock().unwrap().len(),
            1,
            "its first message is whole"
        );
        assert!(read_all(&ap).await.values().all(Vec::is_empty));
        assert_eq!(
            staged_files(&shared),
            vec![format!(
                "{}.txbatch.corrupt",
                path.file_stem().unwrap().to_str().unwrap()
            )],
            "kept for inspection, undecided"
        );
    }

    #[tokio::test]
    async fn batches_refuse_delays_and_producers_without_listener() {
        let dir = tempfile::tempdir().unwrap();
        let (ap, shared) = setup(dir.path()).await;
        let plain = ap.create_producer(KeyValue::new()).await.unwrap();
        plain.start().await.unwrap();
        let err = plain.prepare_batch(messages()).await.unwrap_err();
        assert_eq!(err.kind(), crate::oms::OmsErrorKind::Transaction);
        let p = producer(&ap, decide(TransactionState::Unknown)).await;
        let mut batch = messages();
        batch[3] = Message::new("q", "later").with_delay(Duration::from_secs(60));
        let err = p.prepare_batch(batch).await.unwrap_err();
        assert!(err.to_string().contains("message 3 of the batch"), "{err}");
        assert_eq!(
            p.prepare_batch(Vec::new()).await.unwrap_err().status(),
            OmsStatus::BAD_PARAMETER
        );
        assert!(
            staged_files(&shared).is_empty(),
            "a refused batch stages nothing"
        );
    }

    #[test]
    fn manifests_round_trip_and_bad_ones_are_refused() {
        let m = Manifest {
            groups: vec![
                GroupMeta {
                    queue: "a".into(),
                    partition: 1,
                    count: 2,
                    bytes: 10,
                },
                GroupMeta {
                    queue: "ns://b".into(),
                    partition: 0,
                    count: 1,
                    bytes: 5,
                },
            ],
            order: vec![0, 1, 0],
        };
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        assert_eq!(m.first_of_groups(), vec![0, 1]);
        let mut bad = m.clone();
        bad.order = vec![0, 1];
        assert!(Manifest::decode(&bad.encode()).is_err(), "counts differ");
        let bytes = m.encode();
        assert!(Manifest::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(parse_batch(b"not a batch file at all").is_err());
    }
}
