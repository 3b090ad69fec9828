//! Checkpoint records on disk: one file per complete checkpoint, written atomically, with a
//! checksum; the job's identity beside them.
//!
//! ```text
//! <state dir>/job.json                      the job this directory belongs to
//! <state dir>/checkpoints/chk-<epoch>.ckpt  "OMSCHK1 <crc32 hex> <length>\n" + JSON record
//! <state dir>/state.sled/                   the state store's manifest (crate::state::StateStore)
//! <state dir>/runs/<id>.run                 the state store's run files
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::CheckpointError;
use super::record::CheckpointRecord;

const MAGIC: &str = "OMSCHK1";
/// The directories of the state store under a state directory.
const STATE_PARTS: [&str; 2] = ["state.sled", "runs"];
const EXTENSION: &str = "ckpt";
/// The file naming the checkpoint the next start restores.
const PIN_FILE: &str = "restore-from";

/// Who a state directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct JobIdentity {
    job: String,
}

/// The checkpoint records of one job.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
    records: PathBuf,
}

/// A record file that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedCheckpoint {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

impl CheckpointStore {
    /// Opens the checkpoints of job `job` under `dir`, creating the directory for a new job.
    /// A directory that belongs to another job is refused.
    pub fn open(dir: &Path, job: &str) -> Result<Self, CheckpointError> {
        let records = dir.join("checkpoints");
        fs::create_dir_all(&records).map_err(|e| CheckpointError::io(&records, e))?;
        let identity_path = dir.join("job.json");
        match fs::read(&identity_path) {
            Ok(bytes) => {
                let identity: JobIdentity =
                    serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Foreign {
                        dir: dir.to_path_buf(),
                        owner: format!("<unreadable job.json: {e}>"),
                        job: job.to_string(),
                    })?;
                if identity.job != job {
                    return Err(CheckpointError::Foreign {
                        dir: dir.to_path_buf(),
                        owner: identity.job,
                        job: job.to_string(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let is_empty = fs::read_dir(&records)
                    .map_err(|e| CheckpointError::io(&records, e))?
                    .next()
                    .is_none();
                if !is_empty || STATE_PARTS.iter().any(|part| dir.join(part).exists()) {
                    return Err(CheckpointError::Foreign {
                        dir: dir.to_path_buf(),
                        owner: "<unknown: job.json is missing>".to_string(),
                        job: job.to_string(),
                    });
                }
                let identity = JobIdentity {
                    job: job.to_string(),
                };
                write_atomically(
                    &identity_path,
                    &serde_json::to_vec_pretty(&identity).expect("identity serializes"),
                )?;
            }
            Err(e) => return Err(CheckpointError::io(&identity_path, e)),
        }
        Ok(CheckpointStore {
            dir: dir.to_path_buf(),
            records,
        })
    }

    /// Opens the checkpoints under `dir` whatever job they belong to (for listing); returns
    /// the job's name too.
    pub fn open_existing(dir: &Path) -> Result<(Self, String), CheckpointError> {
        let identity_path = dir.join("job.json");
        let bytes = fs::read(&identity_path).map_err(|e| CheckpointError::io(&identity_path, e))?;
        let identity: JobIdentity =
            serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Damaged {
                path: identity_path.clone(),
                problem: e.to_string(),
            })?;
        Ok((
            CheckpointStore {
                dir: dir.to_path_buf(),
                records: dir.join("checkpoints"),
            },
            identity.job,
        ))
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, epoch: u64) -> PathBuf {
        self.records.join(format!("chk-{epoch:020}.{EXTENSION}"))
    }

    /// Writes `record` atomically (temporary file, fsync, rename, fsync of the directory).
    pub fn write(&self, record: &CheckpointRecord) -> Result<(), CheckpointError> {
        let json = serde_json::to_vec_pretty(record).expect("a record serializes");
        let mut bytes =
            format!("{MAGIC} {:08x} {}\n", crc32fast::hash(&json), json.len()).into_bytes();
        bytes.extend_from_slice(&json);
        write_atomically(&self.path_of(record.epoch), &bytes)
    }

    /// Reads the record file at `path`, checking its header and checksum.
    pub fn read(path: &Path) -> Result<CheckpointRecord, CheckpointError> {
        let bytes = fs::read(path).map_err(|e| CheckpointError::io(path, e))?;
        let damaged = |problem: String| CheckpointError::Damaged {
            path: path.to_path_buf(),
            problem,
        };
        let newline = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| damaged("no header line (truncated?)".to_string()))?;
        let header = std::str::from_utf8(&bytes[..newline])
            .map_err(|_| damaged("the header is not text".to_string()))?;
        let mut fields = header.split(' ');
        if fields.next() != Some(MAGIC) {
            return Err(damaged(format!("the header does not start with {MAGIC}")));
        }
        let crc = fields
            .next()
            .and_then(|f| u32::from_str_radix(f, 16).ok())
            .ok_or_else(|| damaged("the header has no checksum".to_string()))?;
        let length: usize = fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| damaged("the header has no length".to_string()))?;
        let body = &bytes[newline + 1..];
        if body.len() != length {
            return Err(damaged(format!(
                "the record is {} bytes, the header says {length} (truncated?)",
                body.len()
            )));
        }
        if crc32fast::hash(body) != crc {
            return Err(damaged("the checksum does not match".to_string()));
        }
        serde_json::from_slice(body).map_err(|e| damaged(format!("unreadable record: {e}")))
    }

    /// Every record file, newest first: the usable records, and the damaged files.
    pub fn list(&self) -> Result<(Vec<CheckpointRecord>, Vec<DamagedCheckpoint>), CheckpointError> {
        let mut paths = Vec::new();
        for entry in
            fs::read_dir(&self.records).map_err(|e| CheckpointError::io(&self.records, e))?
        {
            let path = entry
                .map_err(|e| CheckpointError::io(&self.records, e))?
                .path();
            if path.extension().and_then(|e| e.to_str()) == Some(EXTENSION) {
                paths.push(path);
            }
        }
        paths.sort();
        paths.reverse();
        let (mut records, mut damaged) = (Vec::new(), Vec::new());
        for path in paths {
            match Self::read(&path) {
                Ok(record) => records.push(record),
                Err(error) => damaged.push(DamagedCheckpoint {
                    path,
                    problem: error.to_string(),
                }),
            }
        }
        Ok((records, damaged))
    }

    /// The newest usable record; damaged newer ones are skipped with a warning.
    pub fn latest(&self) -> Result<Option<CheckpointRecord>, CheckpointError> {
        let (records, damaged) = self.list()?;
        let latest = records.into_iter().next();
        for bad in damaged {
            if latest
                .as_ref()
                .is_none_or(|r| epoch_of_path(&bad.path) > Some(r.epoch))
            {
                tracing::warn!(
                    file = %bad.path.display(),
                    problem = %bad.problem,
                    "skipping a damaged checkpoint; restoring the previous complete one"
                );
            }
        }
        Ok(latest)
    }

    /// The record of `epoch`.
    pub fn get(&self, epoch: u64) -> Result<CheckpointRecord, CheckpointError> {
        let path = self.path_of(epoch);
        if !path.exists() {
            return Err(CheckpointError::NoSuchCheckpoint {
                dir: self.dir.clone(),
                epoch,
            });
        }
        Self::read(&path)
    }

    /// Deletes all but the `keep` newest usable records (and damaged files older than the
    /// newest usable one); returns the oldest epoch kept.
    pub fn retain(&self, keep: usize) -> Result<Option<u64>, CheckpointError> {
        let (records, damaged) = self.list()?;
        let keep = keep.max(1);
        for record in records.iter().skip(keep) {
            let path = self.path_of(record.epoch);
            fs::remove_file(&path).map_err(|e| CheckpointError::io(&path, e))?;
        }
        if let Some(newest) = records.first() {
            for bad in damaged {
                if epoch_of_path(&bad.path).is_some_and(|e| e < newest.epoch) {
                    let _ = fs::remove_file(&bad.path);
                }
            }
        }
        Ok(records.iter().take(keep).next_back().map(|r| r.epoch))
    }

    /// Makes the next start in [`RestoreMode::Latest`](super::RestoreMode::Latest) restore
    /// checkpoint `epoch` instead of the latest one (it must be usable).
    pub fn pin(&self, epoch: u64) -> Result<(), CheckpointError> {
        self.get(epoch)?;
        write_atomically(&self.dir.join(PIN_FILE), epoch.to_string().as_bytes())
    }

    /// The checkpoint the next start restores, when one was chosen with [`pin`](Self::pin).
    pub fn pinned(&self) -> Result<Option<u64>, CheckpointError> {
        let path = self.dir.join(PIN_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| CheckpointError::Damaged {
                    path,
                    problem: format!("'{}' is not an epoch; delete the file", text.trim()),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CheckpointError::io(&path, e)),
        }
    }

    /// Forgets the chosen checkpoint.
    pub(crate) fn unpin(&self) -> Result<(), CheckpointError> {
        let path = self.dir.join(PIN_FILE);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CheckpointError::io(&path, e))
            }
            _ => Ok(()),
        }
    }

    /// Deletes the records after `epoch`: a run restored from `epoch` supersedes them (their
    /// state is no longer readable).
    pub(crate) fn remove_after(&self, epoch: u64) -> Result<(), CheckpointError> {
        let (records, damaged) = self.list()?;
        for path in records
            .iter()
            .filter(|r| r.epoch > epoch)
            .map(|r| self.path_of(r.epoch))
            .chain(damaged.into_iter().map(|d| d.path))
        {
            if epoch_of_path(&path).is_none_or(|e| e > epoch) {
                fs::remove_file(&path).map_err(|e| CheckpointError::io(&path, e))?;
            }
        }
        Ok(())
    }

    /// Deletes every record and the state store: a fresh start of the same job.
    pub fn clear(&self) -> Result<(), CheckpointError> {
        self.unpin()?;
        let state = STATE_PARTS.iter().map(|part| self.dir.join(part));
        for dir in std::iter::once(self.records.clone()).chain(state) {
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(|e| CheckpointError::io(&dir, e))?;
            }
        }
        fs::create_dir_all(&self.records).map_err(|e| CheckpointError::io(&self.records, e))
    }
}

fn epoch_of_path(path: &Path) -> Option<u64> {
    path.file_stem()?
        .to_str()?
        .strip_prefix("chk-")?
        .parse()
        .ok()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp).map_err(|e| CheckpointError::io(&tmp, e))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| CheckpointError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| CheckpointError::io(path, e))?;
    if let Some(parent) = path.parent() {
        if let Ok(dir) = fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::record::{JobFingerprint, SourceOffset};

    fn record(epoch: u64) -> CheckpointRecord {
        CheckpointRecord {
            epoch,
            job: "job".to_string(),
            fingerprint: JobFingerprint::default(),
            triggered_at: 0,
            duration_ms: 1,
            alignment_ms: 0,
            state_entries: 2,
            state_bytes: 3,
            store_bytes: 4,
            sources: vec![SourceOffset {
                operator: "src".to_string(),
                queue: "q".to_string(),
                partition: 0,
                offset: epoch as i64 * 10,
            }],
            is_final: false,
        }
    }

    #[test]
    fn a_damaged_newest_record_falls_back_to_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), "job").unwrap();
        for epoch in [3, 5, 7] {
            store.write(&record(epoch)).unwrap();
        }
        assert_eq!(store.latest().unwrap().unwrap().epoch, 7);
        // Truncate the newest, flip a byte in the next.
        let newest = store.path_of(7);
        let bytes = fs::read(&newest).unwrap();
        fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
        assert_eq!(store.latest().unwrap().unwrap().epoch, 5);
        let middle = store.path_of(5);
        let mut bytes = fs::read(&middle).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x01;
        fs::write(&middle, &bytes).unwrap();
        let latest = store.latest().unwrap().unwrap();
        assert_eq!(latest, record(3));
        let (_, damaged) = store.list().unwrap();
        assert_eq!(damaged.len(), 2);
        assert!(damaged[0].problem.contains("truncated"), "{damaged:?}");
        assert!(damaged[1].problem.contains("checksum"), "{damaged:?}");
    }

    #[test]
    fn a_directory_of_another_job_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        CheckpointStore::open(dir.path(), "orders").unwrap();
        let error = CheckpointStore::open(dir.path(), "payments").unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("orders") && message.contains("payments"),
            "{message}"
        );
    }

    /// A fresh start drops the records and both parts of the state store, and a directory
    /// holding state without a job identity is not taken over.
    #[test]
    fn clearing_drops_records_and_the_whole_state_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), "job").unwrap();
        store.write(&record(1)).unwrap();
        let state = crate::state::StateStore::open(dir.path()).unwrap();
        drop(state);
        std::fs::write(dir.path().join("runs").join("0000000000000001.run"), b"x").unwrap();
        store.clear().unwrap();
        assert!(store.list().unwrap().0.is_empty());
        for part in STATE_PARTS {
            assert!(!dir.path().join(part).exists(), "{part} is left");
        }

        let orphan = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(orphan.path().join("runs")).unwrap();
        let error = CheckpointStore::open(orphan.path(), "job").unwrap_err();
        assert!(error.to_string().contains("job.json is missing"), "{error}");
    }

    #[test]
    fn retain_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), "job").unwrap();
        for epoch in 1..=6 {
            store.write(&record(epoch)).unwrap();
        }
        assert_eq!(store.retain(3).unwrap(), Some(4));
        let (records, _) = store.list().unwrap();
        let epochs: Vec<u64> = records.iter().map(|r| r.epoch).collect();
        assert_eq!(epochs, [6, 5, 4]);
        assert!(store.get(2).is_err());
    }
}
