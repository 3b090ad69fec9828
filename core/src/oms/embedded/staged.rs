//! Staged messages: prepared transactions and delayed messages, kept beside a partition until
//! they are published into it.
//!
//! Files in `<partition>/staged/`:
//! - `<id>.prepared`: a prepared transactional message. Its producer holds an `flock` on it; a
//!   file nobody holds belongs to a producer that went away, and is resolved by a transaction
//!   check listener.
//! - `<due ms, 20 digits>-<id>.delayed`: a message to publish once `due` has passed.
//! - `<stem>.publishing`: the partition's next offset when publishing began, then the record.
//!   Publishing writes this file, removes the staged one, appends, and removes this file. After
//!   a crash the record at the recorded offset tells whether the append happened, so a staged
//!   message is published exactly once.

use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::log::{PartitionLog, WriteOptions};
use super::record::{self, EncodedBatch, Parsed};
use super::store::write_file_atomically;
use crate::oms::{now_millis, Message, OmsError, Result};

/// A fresh id, unique across processes: time, process id and a counter (32 hex digits).
pub(crate) fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64;
    format!(
        "{nanos:016X}{:08X}{:08X}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed) as u32
    )
}

pub(crate) fn staged_dir(log: &PartitionLog) -> PathBuf {
    log.dir.join("staged")
}

/// When a message asks to be delivered, if that is later than `now`.
pub(crate) fn due_time(message: &Message, now: i64) -> Option<i64> {
    let delay = message.extension_header.delay_time?;
    let due = message.header.born_timestamp.unwrap_or(now) + delay.as_millis() as i64;
    (due > now).then_some(due)
}

fn encode_one(message: &Message) -> Vec<u8> {
    let mut batch = EncodedBatch::default();
    batch.push_message(message, true);
    batch.seal(0, 0);
    batch.buf
}

fn decode_one(log: &PartitionLog, path: &Path, bytes: Vec<u8>) -> Result<Message> {
    let chunk = Bytes::from(bytes);
    let bad = |why: &str| {
        OmsError::storage(format!(
            "staged message {} is corrupt ({why}); delete it",
            path.display()
        ))
    };
    match record::parse(&chunk, chunk.len(), true) {
        Parsed::Record(rec) if rec.total_len == chunk.len() => {
            record::decode_message(&chunk, &rec, log.placement()).map_err(&bad)
        }
        Parsed::Invalid(why) => Err(bad(why)),
        _ => Err(bad("wrong length")),
    }
}

/// Writes `message` (its id already set) as a staged file with `file_name`.
pub(crate) fn stage(
    log: &PartitionLog,
    file_name: &str,
    message: &Message,
    fsync: bool,
) -> Result<PathBuf> {
    let dir = staged_dir(log);
    fs::create_dir_all(&dir).map_err(|e| OmsError::io("create", &dir, e))?;
    let path = dir.join(file_name);
    write_file_atomically(&path, &encode_one(message), fsync)?;
    Ok(path)
}

/// Writes a prepared message and returns it locked: the lock is taken before the file gets its
/// final name, so no recovery can mistake it for an orphan.
pub(crate) fn stage_prepared(
    log: &PartitionLog,
    id: &str,
    message: &Message,
    fsync: bool,
) -> Result<(PathBuf, File)> {
    let dir = staged_dir(log);
    fs::create_dir_all(&dir).map_err(|e| OmsError::io("create", &dir, e))?;
    let path = dir.join(format!("{id}.prepared"));
    let tmp = dir.join(format!("{id}.tmp"));
    let res = (|| {
        let mut f = File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&tmp)?;
        f.lock()?;
        std::io::Write::write_all(&mut f, &encode_one(message))?;
        if fsync {
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        Ok(f)
    })();
    match res {
        Ok(f) => Ok((path, f)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(OmsError::io("write", &path, e))
        }
    }
}

/// The file name of a delayed message.
pub(crate) fn delayed_name(due: i64, id: &str) -> String {
    format!("{due:020}-{id}.delayed")
}

/// Opens and locks a prepared file; `None` if another live producer holds it (or it is gone).
pub(crate) fn lock_prepared(path: &Path) -> Result<Option<File>> {
    let f = match File::options().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(OmsError::io("open", path, e)),
    };
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(OmsError::io("lock", path, e)),
    }
}

/// Reads a staged message.
pub(crate) fn read_staged(log: &PartitionLog, path: &Path) -> Result<Option<Message>> {
    match fs::read(path) {
        Ok(bytes) => decode_one(log, path, bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(OmsError::io("read", path, e)),
    }
}

/// Publishes the staged message in `staged` into the partition, exactly once. Returns its offset,
/// or `None` if it was already published by someone else.
pub(crate) fn publish(
    log: &Arc<PartitionLog>,
    staged: &Path,
    opts: WriteOptions,
) -> Result<Option<i64>> {
    let publishing = staged.with_extension("publishing");
    log.with_write_lock(opts, |appender| {
        let record = match fs::read(&publishing) {
            Ok(bytes) if bytes.len() > 8 => {
                // A publish was interrupted: did its append happen?
                let recorded = i64::from_le_bytes(bytes[0..8].try_into().unwrap_or_default());
                let record = bytes[8..].to_vec();
                let message = match decode_one(log, &publishing, record.clone()) {
                    Ok(m) => m,
                    Err(err) => {
                        quarantine(&publishing, &err);
                        return Ok(None);
                    }
                };
                if recorded < appender.tail().next_offset {
                    if let Some(found) = log.read_one(recorded, appender.tail().next_offset)? {
                        if found.message_id() == message.message_id() {
                            remove(&publishing)?;
                            remove(staged)?;
                            return Ok(Some(recorded));
                        }
                    }
                }
                record
            }
            Ok(_) => {
                // Shorter than its offset header: written by a crash before the record was in.
                // The staged file it came from was not removed yet, so nothing is lost.
                remove(&publishing)?;
                return Ok(None);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let record = match fs::read(staged) {
                    Ok(r) => r,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(OmsError::io("read", staged, e)),
                };
                // Never append bytes that are not one whole, valid record.
                if let Err(err) = decode_one(log, staged, record.clone()) {
                    quarantine(staged, &err);
                    return Ok(None);
                }
                let mut body = appender.tail().next_offset.to_le_bytes().to_vec();
                body.extend_from_slice(&record);
                write_file_atomically(&publishing, &body, opts.fsync)?;
                remove(staged)?;
                record
            }
            Err(e) => return Err(OmsError::io("read", &publishing, e)),
        };
        let mut batch = EncodedBatch {
            buf: record,
            starts: vec![0],
        };
        let (offset, _) = appender.append(&mut batch)?;
        // The staged file too: after an interrupted publish it may still be there.
        remove(staged)?;
        remove(&publishing)?;
        Ok(Some(offset))
    })
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(OmsError::io("delete", path, e)),
    }
}

/// Moves a staged file that cannot be decoded aside (`.corrupt`), so that it neither blocks the
/// partition nor is appended; it is kept for inspection.
pub(crate) fn quarantine(path: &Path, err: &OmsError) {
    let target = path.with_extension(format!(
        "{}.corrupt",
        path.extension()
            .and_then(|e| e.to_str())
            .unwrap_or("staged")
    ));
    tracing::error!(%err, file = %path.display(), moved_to = %target.display(), "a staged message is corrupt; it is set aside and not published");
    if let Err(e) = fs::rename(path, &target) {
        tracing::error!(error = %e, file = %path.display(), "cannot set the corrupt staged message aside");
    }
}

/// Removes a staged file (a rolled-back transaction).
pub(crate) fn discard(path: &Path) -> Result<()> {
    remove(path)
}

/// Publishes every delayed message that is due and finishes interrupted publishes. Returns how
/// many messages were published.
pub(crate) fn release_due(log: &Arc<PartitionLog>, opts: WriteOptions) -> Result<usize> {
    let dir = staged_dir(log);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(OmsError::io("list", &dir, e)),
    };
    let now = now_millis();
    let mut due = Vec::new();
    for entry in entries {
        let name = entry
            .map_err(|e| OmsError::io("list", &dir, e))?
            .file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".publishing") {
            // Its staged file may be gone; publish() works from the .publishing file alone.
            let ext = if stem.contains('-') {
                "delayed"
            } else {
                "prepared"
            };
            due.push(dir.join(format!("{stem}.{ext}")));
        } else if let Some(stem) = name.strip_suffix(".delayed") {
            let at = stem
                .split_once('-')
                .and_then(|(d, _)| d.parse::<i64>().ok());
            if at.is_some_and(|d| d <= now) {
                due.push(dir.join(name));
            }
        }
    }
    due.sort();
    due.dedup();
    let mut published = 0;
    for path in due {
        match publish(log, &path, opts) {
            Ok(Some(_)) => published += 1,
            Ok(None) => {}
            // One file that cannot be published must not hold back the others.
            Err(err) => {
                tracing::warn!(%err, file = %path.display(), "cannot publish a delayed message; will retry")
            }
        }
    }
    Ok(published)
}

/// The prepared files of a partition.
pub(crate) fn prepared_files(log: &PartitionLog) -> Result<Vec<PathBuf>> {
    let dir = staged_dir(log);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(OmsError::io("list", &dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| OmsError::io("list", &dir, e))?.path();
        if path.extension().is_some_and(|e| e == "prepared") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oms::{RetentionPolicy, SeekPosition};

    fn log(dir: &Path) -> Arc<PartitionLog> {
        let d = dir.join("p-0");
        fs::create_dir_all(&d).unwrap();
        Arc::new(PartitionLog::new(
            d,
            "q".into(),
            1,
            0,
            RetentionPolicy::default(),
            Arc::from("h"),
            1 << 20,
        ))
    }

    const OPTS: WriteOptions = WriteOptions {
        fsync: false,
        segment_bytes: 1 << 20,
    };

    fn all(l: &Arc<PartitionLog>) -> Vec<Message> {
        let mut out = Vec::new();
        l.reader(SeekPosition::Beginning)
            .unwrap()
            .read_available(usize::MAX, &mut out)
            .unwrap();
        out
    }

    #[test]
    fn publish_is_exactly_once_even_when_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let l = log(dir.path());
        let mut m = Message::new("q", "staged");
        m.header.message_id = Some(new_id());
        let path = stage(&l, "a.prepared", &m, false).unwrap();
        assert_eq!(publish(&l, &path, OPTS).unwrap(), Some(0));
        assert_eq!(
            publish(&l, &path, OPTS).unwrap(),
            None,
            "a second publish finds nothing"
        );

        // Crash after the append, before the .publishing file was removed.
        let path = stage(&l, "b.prepared", &m, false).unwrap();
        let mut body = 1i64.to_le_bytes().to_vec();
        body.extend_from_slice(&fs::read(&path).unwrap());
        fs::write(path.with_extension("publishing"), &body).unwrap();
        fs::remove_file(&path).unwrap();
        let mut batch = EncodedBatch {
            buf: body[8..].to_vec(),
            starts: vec![0],
        };
        l.append(&mut batch, OPTS).unwrap();
        assert_eq!(
            release_due(&l, OPTS).unwrap(),
            1,
            "the leftover is resolved"
        );
        assert_eq!(all(&l).len(), 2, "and not published twice");

        // Crash before the append.
        let mut m2 = Message::new("q", "later");
        m2.header.message_id = Some(new_id());
        let path = stage(&l, "c.prepared", &m2, false).unwrap();
        let mut body = 2i64.to_le_bytes().to_vec();
        body.extend_from_slice(&fs::read(&path).unwrap());
        fs::write(path.with_extension("publishing"), &body).unwrap();
        fs::remove_file(&path).unwrap();
        assert_eq!(release_due(&l, OPTS).unwrap(), 1);
        let got = all(&l);
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].message_id(), m2.message_id());
        assert!(
            fs::read_dir(staged_dir(&l)).unwrap().next().is_none(),
            "nothing left staged"
        );
    }

    #[test]
    fn delayed_messages_wait_for_their_time() {
        let dir = tempfile::tempdir().unwrap();
        let l = log(dir.path());
        let mut m = Message::new("q", "d");
        m.header.message_id = Some(new_id());
        stage(&l, &delayed_name(now_millis() + 60_000, "x"), &m, false).unwrap();
        stage(&l, &delayed_name(now_millis() - 1, "y"), &m, false).unwrap();
        assert_eq!(release_due(&l, OPTS).unwrap(), 1);
        assert_eq!(all(&l).len(), 1);
    }
}
