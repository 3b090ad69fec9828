//! Consumer-group offsets and partition ownership, in files that every process can share.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::PathBuf;

use super::store::{validate_component, write_file_atomically, QueueName, Store};
use crate::oms::{OmsError, Result};

/// The committed offsets of one group on one queue.
#[derive(Debug, Clone)]
pub(crate) struct GroupOffsets {
    dir: PathBuf,
    fsync: bool,
}

impl GroupOffsets {
    pub(crate) fn new(store: &Store, group: &str, queue: &str, fsync: bool) -> Result<Self> {
        validate_component("consumer group (CONSUMER_ID)", group)?;
        let qn = QueueName::parse(queue)?;
        Ok(Self {
            dir: store.group_dir(group, &qn),
            fsync,
        })
    }

    fn path(&self, partition: i32) -> PathBuf {
        self.dir.join(format!("{partition}.offset"))
    }

    /// Records `offset` (the next offset to read) atomically: a crash leaves the old or the new
    /// value, never a torn one.
    pub(crate) fn commit(&self, partition: i32, offset: i64) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| OmsError::io("create", &self.dir, e))?;
        let text = format!(
            "{offset} {:08x}\n",
            crc32fast::hash(offset.to_string().as_bytes())
        );
        write_file_atomically(&self.path(partition), text.as_bytes(), self.fsync)
    }

    /// The committed offset, if any.
    pub(crate) fn committed(&self, partition: i32) -> Result<Option<i64>> {
        let path = self.path(partition);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(OmsError::io("read", &path, e)),
        };
        let parsed = text.trim().split_once(' ').and_then(|(o, c)| {
            let crc = u32::from_str_radix(c, 16).ok()?;
            (crc32fast::hash(o.as_bytes()) == crc)
                .then(|| o.parse::<i64>().ok())
                .flatten()
        });
        parsed.map(Some).ok_or_else(|| {
            OmsError::storage(format!(
                "committed offset file {} is corrupt; delete it to restart the group from its start position, \
                 or write the offset to resume from",
                path.display()
            ))
        })
    }

    /// Tries to become the one consumer of `partition` in this group; the returned file holds
    /// the claim until dropped (or the process dies).
    pub(crate) fn try_claim(&self, partition: i32) -> Result<Option<File>> {
        fs::create_dir_all(&self.dir).map_err(|e| OmsError::io("create", &self.dir, e))?;
        let path = self.dir.join(format!("{partition}.owner"));
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| OmsError::io("open", &path, e))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(OmsError::io("lock", &path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_survive_reopen_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let g = GroupOffsets::new(&store, "g1", "q", false).unwrap();
        assert_eq!(g.committed(0).unwrap(), None);
        g.commit(0, 42).unwrap();
        let again = GroupOffsets::new(&store, "g1", "q", false).unwrap();
        assert_eq!(again.committed(0).unwrap(), Some(42));
        fs::write(again.path(0), "43 00000000\n").unwrap();
        assert!(again
            .committed(0)
            .unwrap_err()
            .to_string()
            .contains("is corrupt"));
        assert!(GroupOffsets::new(&store, "bad group", "q", false).is_err());
    }

    #[test]
    fn one_claim_per_partition() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let g = GroupOffsets::new(&store, "g", "q", false).unwrap();
        let first = g.try_claim(0).unwrap();
        assert!(first.is_some());
        assert!(g.try_claim(0).unwrap().is_none());
        drop(first);
        assert!(g.try_claim(0).unwrap().is_some());
    }
}
