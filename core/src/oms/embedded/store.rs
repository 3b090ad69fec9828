//! The store directory: namespaces, queues and their partitions.
//!
//! ```text
//! <store>/omstream-store.json                    marks the directory as a store (format version)
//! <store>/namespaces/<ns>/<queue>/queue.json     the queue's configuration
//! <store>/namespaces/<ns>/<queue>/p-<n>/         partition n: segments, write.lock, staged/
//! <store>/groups/<group>/<ns>/<queue>/<n>.offset a consumer group's committed offset
//! <store>/transactions/<txid>.txbatch            a prepared batch transaction (see batch.rs)
//! ```
//! A queue named `orders` lives in namespace `default`; `ns://orders` in namespace `ns`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use serde::{Deserialize, Serialize};

use super::log::{list_segments, segment_path, PartitionLog};
use crate::oms::{
    now_millis, OmsError, OmsErrorKind, OmsStatus, PartitionDescription, QueueConfig,
    QueueDescription, Result,
};

/// The namespace of queue names without `ns://`.
pub(crate) const DEFAULT_NAMESPACE: &str = "default";
const MARKER: &str = "omstream-store.json";
const FORMAT: u32 = 1;
/// Records longer than this are corruption, whatever the writer's settings: a 1 GiB body plus
/// up to 1 MiB of headers and properties, plus the record's own fields.
pub(crate) const MAX_RECORD: usize = (1 << 30) + (2 << 20);

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    format: u32,
    created: i64,
}

/// A validated queue name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct QueueName {
    pub(crate) namespace: String,
    pub(crate) name: String,
}

/// Checks one path component of a name; the error says which characters are allowed.
pub(crate) fn validate_component(what: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || s.len() > 200
        || s.starts_with('.')
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(OmsError::bad_parameter(format!(
            "{what} '{s}' is not valid; use 1 to 200 letters, digits, '-', '_' or '.', not starting with '.'"
        )));
    }
    Ok(())
}

impl QueueName {
    pub(crate) fn parse(full: &str) -> Result<Self> {
        let (namespace, name) = match full.split_once("://") {
            Some((ns, name)) => (ns, name),
            None => (DEFAULT_NAMESPACE, full),
        };
        validate_component("namespace", namespace)?;
        validate_component("queue name", name)?;
        Ok(Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    pub(crate) fn full(&self) -> String {
        if self.namespace == DEFAULT_NAMESPACE {
            self.name.clone()
        } else {
            format!("{}://{}", self.namespace, self.name)
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct QueueMeta {
    name: String,
    created: i64,
    config: QueueConfig,
}

/// An open queue: its configuration and partitions.
#[derive(Debug)]
pub(crate) struct QueueHandle {
    pub(crate) name: String,
    pub(crate) config: QueueConfig,
    pub(crate) partitions: Vec<Arc<PartitionLog>>,
}

impl QueueHandle {
    pub(crate) fn partition(&self, p: i32) -> Result<&Arc<PartitionLog>> {
        usize::try_from(p)
            .ok()
            .and_then(|i| self.partitions.get(i))
            .ok_or_else(|| {
                OmsError::bad_parameter(format!(
                    "queue '{}' has partitions 0 to {}; partition {p} does not exist",
                    self.name,
                    self.partitions.len() - 1
                ))
            })
    }
}

/// One store directory, shared by every access point of this process that opens it.
#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) dir: PathBuf,
    pub(crate) host: Arc<str>,
    queues: Mutex<HashMap<String, Arc<QueueHandle>>>,
}

fn open_stores() -> &'static Mutex<HashMap<PathBuf, Weak<Store>>> {
    // One `Store` per directory per process, so that every handle shares the partitions' cached
    // tails and wake-ups. This is a cache of open handles, not configuration.
    static STORES: OnceLock<Mutex<HashMap<PathBuf, Weak<Store>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

pub(crate) fn write_file_atomically(path: &Path, bytes: &[u8], fsync: bool) -> Result<()> {
    // Unique per call: two threads of one process may write the same file at once.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    let res = (|| {
        let mut f = fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        if fsync {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    res.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        OmsError::io("write", path, e)
    })
}

impl Store {
    /// Opens (creating if needed) the store in `dir`. A non-empty directory that is not a
    /// store is refused, so a typo never scatters queue files into an unrelated folder.
    pub(crate) fn open(dir: &Path) -> Result<Arc<Self>> {
        fs::create_dir_all(dir).map_err(|e| OmsError::io("create the store directory", dir, e))?;
        let dir = fs::canonicalize(dir).map_err(|e| OmsError::io("resolve", dir, e))?;
        let mut stores = open_stores().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(store) = stores.get(&dir).and_then(Weak::upgrade) {
            return Ok(store);
        }
        let marker = dir.join(MARKER);
        match fs::read(&marker) {
            Ok(bytes) => {
                let m: Marker = serde_json::from_slice(&bytes).map_err(|e| {
                    OmsError::storage(format!(
                        "{} is corrupt ({e}); restore it or recreate the store",
                        marker.display()
                    ))
                })?;
                if m.format != FORMAT {
                    return Err(OmsError::new(
                        OmsErrorKind::Storage,
                        OmsStatus::UNSUPPORTED_VERSION,
                        format!(
                            "store {} has format {}, this omstream reads format {FORMAT}; use a matching omstream",
                            dir.display(),
                            m.format
                        ),
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let non_empty = fs::read_dir(&dir)
                    .map_err(|e| OmsError::io("list", &dir, e))?
                    .next()
                    .is_some();
                if non_empty {
                    return Err(OmsError::storage(format!(
                        "{} is not an omstream queue store (it has files but no {MARKER}); \
                         choose an empty directory or the one a store was created in",
                        dir.display()
                    )));
                }
                let body = serde_json::to_vec_pretty(&Marker {
                    format: FORMAT,
                    created: now_millis(),
                })
                .map_err(|e| OmsError::storage(format!("cannot encode the store marker: {e}")))?;
                write_file_atomically(&marker, &body, true)?;
                fs::create_dir_all(dir.join("namespaces").join(DEFAULT_NAMESPACE))
                    .map_err(|e| OmsError::io("create", &dir, e))?;
            }
            Err(e) => return Err(OmsError::io("read", &marker, e)),
        }
        let host = crate::oms::local_host_id();
        let host = host
            .rsplit_once(':')
            .map_or(host.as_str(), |(h, _)| h)
            .to_string();
        let store = Arc::new(Self {
            dir: dir.clone(),
            host: Arc::from(host),
            queues: Mutex::new(HashMap::new()),
        });
        stores.retain(|_, w| w.strong_count() > 0);
        stores.insert(dir, Arc::downgrade(&store));
        Ok(store)
    }

    fn namespace_dir(&self, ns: &str) -> PathBuf {
        self.dir.join("namespaces").join(ns)
    }

    pub(crate) fn queue_dir(&self, q: &QueueName) -> PathBuf {
        self.namespace_dir(&q.namespace).join(&q.name)
    }

    pub(crate) fn group_dir(&self, group: &str, q: &QueueName) -> PathBuf {
        self.dir
            .join("groups")
            .join(group)
            .join(&q.namespace)
            .join(&q.name)
    }

    /// The open queue `name`, loaded from disk on first use.
    pub(crate) fn queue(&self, name: &str) -> Result<Arc<QueueHandle>> {
        if let Some(q) = self
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(q.clone());
        }
        let qn = QueueName::parse(name)?;
        let full = qn.full();
        // `q` and `default://q` are one queue: one handle, whatever the spelling.
        if full != name {
            let mut cache = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(q) = cache.get(&full).cloned() {
                cache.insert(name.to_string(), q.clone());
                return Ok(q);
            }
        }
        let dir = self.queue_dir(&qn);
        let meta_path = dir.join("queue.json");
        let meta: QueueMeta = match fs::read(&meta_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                OmsError::storage(format!(
                    "{} is corrupt ({e}); restore it or delete the queue",
                    meta_path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OmsError::destination_not_found(name))
            }
            Err(e) => return Err(OmsError::io("read", &meta_path, e)),
        };
        let queue_id = crc32fast::hash(full.as_bytes());
        let partitions = (0..meta.config.partitions as i32)
            .map(|p| {
                Arc::new(PartitionLog::new(
                    dir.join(format!("p-{p}")),
                    Arc::from(full.as_str()),
                    queue_id,
                    p,
                    meta.config.retention,
                    self.host.clone(),
                    MAX_RECORD,
                ))
            })
            .collect();
        let handle = Arc::new(QueueHandle {
            name: full,
            config: meta.config,
            partitions,
        });
        let mut cache = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let handle = cache.entry(handle.name.clone()).or_insert(handle).clone();
        cache.insert(name.to_string(), handle.clone());
        Ok(handle)
    }

    /// Forgets a cached queue (after it was found deleted), under every spelling.
    pub(crate) fn forget(&self, name: &str) {
        let full = QueueName::parse(name)
            .map(|q| q.full())
            .unwrap_or_else(|_| name.to_string());
        let mut cache = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, q| q.name != full);
    }

    pub(crate) fn create_namespace(&self, ns: &str) -> Result<()> {
        validate_component("namespace", ns)?;
        let dir = self.namespace_dir(ns);
        match fs::create_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(OmsError::new(
                OmsErrorKind::Destination,
                OmsStatus::NAMESPACE_ALREADY_EXISTS,
                format!("namespace '{ns}' exists already"),
            )),
            Err(e) => Err(OmsError::io("create", &dir, e)),
        }
    }

    fn namespace_missing(ns: &str) -> OmsError {
        OmsError::new(
            OmsErrorKind::Destination,
            OmsStatus::NAMESPACE_NOT_FOUND,
            format!("namespace '{ns}' does not exist; create it first (`omstream namespace create {ns}`)"),
        )
    }

    pub(crate) fn delete_namespace(&self, ns: &str) -> Result<()> {
        validate_component("namespace", ns)?;
        if ns == DEFAULT_NAMESPACE {
            return Err(OmsError::bad_parameter(
                "the default namespace cannot be deleted; delete its queues instead",
            ));
        }
        for q in self.list_queues(Some(ns))? {
            self.delete_queue(&q)?;
        }
        let dir = self.namespace_dir(ns);
        fs::remove_dir_all(&dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Self::namespace_missing(ns),
            _ => OmsError::io("delete", &dir, e),
        })
    }

    pub(crate) fn list_namespaces(&self) -> Result<Vec<String>> {
        list_names(&self.dir.join("namespaces"))
    }

    pub(crate) fn create_queue(&self, name: &str, config: &QueueConfig, fsync: bool) -> Result<()> {
        config.validate()?;
        let qn = QueueName::parse(name)?;
        if !self.namespace_dir(&qn.namespace).is_dir() {
            return Err(Self::namespace_missing(&qn.namespace));
        }
        let dir = self.queue_dir(&qn);
        // `create_dir` is atomic: of two processes creating one queue, exactly one wins.
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(OmsError::destination_exists(name))
            }
            Err(e) => return Err(OmsError::io("create", &dir, e)),
        }
        for p in 0..config.partitions {
            let pdir = dir.join(format!("p-{p}"));
            fs::create_dir(&pdir).map_err(|e| OmsError::io("create", &pdir, e))?;
            fs::File::create(segment_path(&pdir, 0))
                .map_err(|e| OmsError::io("create", &pdir, e))?;
        }
        let meta = QueueMeta {
            name: qn.full(),
            created: now_millis(),
            config: config.clone(),
        };
        let body = serde_json::to_vec_pretty(&meta)
            .map_err(|e| OmsError::storage(format!("cannot encode queue metadata: {e}")))?;
        // queue.json is written last: a queue is visible only once it is complete.
        write_file_atomically(&dir.join("queue.json"), &body, fsync)
    }

    pub(crate) fn delete_queue(&self, name: &str) -> Result<()> {
        let qn = QueueName::parse(name)?;
        let dir = self.queue_dir(&qn);
        if !dir.join("queue.json").exists() {
            return Err(OmsError::destination_not_found(name));
        }
        // Rename first so that no reader sees a half-deleted queue, then remove.
        let trash = self.dir.join("trash");
        fs::create_dir_all(&trash).map_err(|e| OmsError::io("create", &trash, e))?;
        let target = trash.join(format!(
            "{}-{}-{}",
            qn.namespace,
            qn.name,
            crate::oms::embedded::staged::new_id()
        ));
        fs::rename(&dir, &target).map_err(|e| OmsError::io("delete", &dir, e))?;
        fs::remove_dir_all(&target).map_err(|e| OmsError::io("delete", &target, e))?;
        let groups = self.dir.join("groups");
        for group in list_names(&groups)? {
            let _ = fs::remove_dir_all(self.group_dir(&group, &qn));
        }
        self.forget(name);
        self.forget(&qn.full());
        Ok(())
    }

    pub(crate) fn list_queues(&self, ns: Option<&str>) -> Result<Vec<String>> {
        let namespaces = match ns {
            Some(ns) => {
                validate_component("namespace", ns)?;
                if !self.namespace_dir(ns).is_dir() {
                    return Err(Self::namespace_missing(ns));
                }
                vec![ns.to_string()]
            }
            None => self.list_namespaces()?,
        };
        let mut out = Vec::new();
        for ns in namespaces {
            for name in list_names(&self.namespace_dir(&ns))? {
                if self
                    .namespace_dir(&ns)
                    .join(&name)
                    .join("queue.json")
                    .exists()
                {
                    out.push(
                        QueueName {
                            namespace: ns.clone(),
                            name,
                        }
                        .full(),
                    );
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn describe_queue(&self, name: &str) -> Result<QueueDescription> {
        let q = self.queue(name)?;
        let mut partitions = Vec::new();
        for log in &q.partitions {
            let bases = list_segments(&log.dir)?;
            let mut bytes = 0;
            for &b in &bases {
                bytes += fs::metadata(segment_path(&log.dir, b))
                    .map(|m| m.len())
                    .unwrap_or(0);
            }
            let tail = log.tail()?;
            partitions.push(PartitionDescription {
                partition: log.partition,
                start_offset: bases.first().copied().unwrap_or(0).min(tail.next_offset),
                end_offset: tail.next_offset,
                bytes,
            });
        }
        Ok(QueueDescription {
            name: q.name.clone(),
            config: q.config.clone(),
            partitions,
        })
    }
}

/// The names of the subdirectories of `dir`, sorted; none when it does not exist.
fn list_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(OmsError::io("list", dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| OmsError::io("list", dir, e))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            if let Some(n) = entry.file_name().to_str() {
                names.push(n.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_with_namespaces() {
        assert_eq!(QueueName::parse("orders").unwrap().full(), "orders");
        let q = QueueName::parse("NS://HELLO_QUEUE").unwrap();
        assert_eq!(
            (q.namespace.as_str(), q.name.as_str()),
            ("NS", "HELLO_QUEUE")
        );
        for bad in ["", "a/b", "../x", "ns://", "://q", "q q"] {
            assert!(QueueName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_foreign_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("is not an omstream queue store"),
            "{err}"
        );
    }

    #[test]
    fn queues_are_created_listed_described_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        store
            .create_queue("a", &QueueConfig::with_partitions(3), false)
            .unwrap();
        assert_eq!(
            store
                .create_queue("a", &QueueConfig::default(), false)
                .unwrap_err()
                .status(),
            OmsStatus::DESTINATION_ALREADY_EXISTS
        );
        assert_eq!(
            store
                .create_queue("x://b", &QueueConfig::default(), false)
                .unwrap_err()
                .status(),
            OmsStatus::NAMESPACE_NOT_FOUND
        );
        store.create_namespace("x").unwrap();
        store
            .create_queue("x://b", &QueueConfig::default(), false)
            .unwrap();
        assert_eq!(store.list_queues(None).unwrap(), vec!["a", "x://b"]);
        assert_eq!(store.describe_queue("a").unwrap().partitions.len(), 3);
        store.delete_queue("a").unwrap();
        assert_eq!(
            store.queue("a").unwrap_err().status(),
            OmsStatus::DESTINATION_NOT_FOUND
        );
        store.delete_namespace("x").unwrap();
        assert_eq!(store.list_namespaces().unwrap(), vec!["default"]);
    }
}
