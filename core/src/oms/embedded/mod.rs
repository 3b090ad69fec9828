//! The embedded driver: a durable, partitioned queue in a local directory, shared by every
//! thread and process on the machine that opens it. No server to run.
//!
//! URL: `oms:embedded://localhost/<region>`. The store of a region is the directory
//! `<data root>/<region>`, where the data root is the [`EMBEDDED_DIR`] attribute, else the
//! `OMSTREAM_DATA_DIR` environment variable, else `$XDG_DATA_HOME/omstream`, else
//! `~/.local/share/omstream`.
//!
//! What it guarantees:
//! - A message whose send returned survives `kill -9` of the process (it is in the OS page
//!   cache); with `EMBEDDED_FSYNC=always` it also survives a machine crash.
//! - Offsets are dense per partition, store timestamps never decrease in a partition, and
//!   concurrent writers (threads or processes) never interleave or tear a batch.
//! - A torn record left by a crash is cut off by the next writer and never served.
//! - Prepared transactions stay invisible until committed; one left open by a dead producer is
//!   resolved by a transactional producer's check listener, and published at most once.
//! - A batch transaction (`Producer::prepare_batch`) is one staged file, however many messages
//!   it holds; its commit is atomic: after a crash all its messages are published, or none.
//! - Delayed messages become visible once due (checked by readers every 50 ms); expired ones are
//!   skipped by readers.
//!
//! Layout on disk: see `store.rs` (queues, groups), `log.rs` (segments), `staged.rs`
//! (transactions, delays) and `batch.rs` (batch transactions).

mod batch;
mod config;
mod groups;
mod log;
mod producer;
mod pull;
mod record;
pub(crate) mod staged;
mod store;
mod streaming;

use std::sync::Arc;

use async_trait::async_trait;

pub use config::{
    default_data_root, ConsumeFrom, EmbeddedConfig, FsyncPolicy, DATA_DIR_ENV,
    EMBEDDED_ACK_TIMEOUT_MS, EMBEDDED_CONSUME_FROM, EMBEDDED_DIR, EMBEDDED_FSYNC,
    EMBEDDED_MAX_MESSAGE_BYTES, EMBEDDED_POLL_INTERVAL_MS, EMBEDDED_SEGMENT_BYTES,
};
use store::Store;

use crate::oms::{
    keyvalue, AccessPointUri, Driver, KeyValue, LifecycleCell, MessagingAccessPoint, OmsError,
    Producer, PullConsumer, QueueConfig, QueueDescription, ResourceManager, Result,
    ServiceLifeState, ServiceLifecycle, StreamingConsumer, TransactionStateCheckListener,
};

/// The driver for `oms:embedded://...` URLs.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbeddedDriver;

/// What every handle of one access point shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Arc<Store>,
    pub(crate) config: EmbeddedConfig,
}

impl Shared {
    pub(crate) fn fsync(&self) -> bool {
        self.config.fsync == FsyncPolicy::Always
    }

    pub(crate) fn write_options(&self) -> log::WriteOptions {
        log::WriteOptions {
            fsync: self.fsync(),
            segment_bytes: self.config.segment_bytes,
        }
    }
}

#[async_trait]
impl Driver for EmbeddedDriver {
    fn driver_type(&self) -> &str {
        "embedded"
    }

    async fn connect(
        &self,
        uri: &AccessPointUri,
        attrs: KeyValue,
    ) -> Result<Arc<dyn MessagingAccessPoint>> {
        if let Some(h) = uri.hosts.iter().find(|h| {
            !matches!(
                h.host.as_str(),
                "localhost" | "127.0.0.1" | "[::1]" | "local"
            )
        }) {
            return Err(OmsError::bad_parameter(format!(
                "the embedded driver stores queues on this machine; its host must be localhost, not '{h}' \
                 (use a broker driver, such as oms:rocketmq://..., to reach other machines)"
            )));
        }
        let config = EmbeddedConfig::from_attributes(&attrs)?;
        let store = Store::open(&config.dir)?;
        Ok(Arc::new(EmbeddedAccessPoint {
            shared: Arc::new(Shared { store, config }),
            attributes: attrs,
            state: LifecycleCell::new(ServiceLifeState::Started),
        }))
    }
}

/// An access point on an embedded store.
#[derive(Debug)]
pub struct EmbeddedAccessPoint {
    shared: Arc<Shared>,
    attributes: KeyValue,
    state: LifecycleCell,
}

impl EmbeddedAccessPoint {
    /// The store directory.
    pub fn store_dir(&self) -> &std::path::Path {
        &self.shared.store.dir
    }

    /// The settings in force.
    pub fn config(&self) -> &EmbeddedConfig {
        &self.shared.config
    }

    fn with_attrs(&self, attrs: &KeyValue) -> Result<Arc<Shared>> {
        // Per-client attributes may change client settings (ack timeout, start position), not
        // the store: the store directory is the access point's.
        if attrs.keys().any(|k| k.starts_with("EMBEDDED_")) {
            let mut merged = attrs.clone();
            merged.merge_missing(&self.attributes);
            let config = EmbeddedConfig::from_attributes(&merged)?;
            if config.dir != self.shared.config.dir {
                return Err(OmsError::bad_parameter(
                    "EMBEDDED_DIR belongs to the access point; connect another access point for another store",
                ));
            }
            return Ok(Arc::new(Shared {
                store: Arc::clone(&self.shared.store),
                config,
            }));
        }
        Ok(Arc::clone(&self.shared))
    }

    fn group(&self, attrs: &KeyValue) -> Option<String> {
        attrs
            .get_str(keyvalue::CONSUMER_ID)
            .or_else(|| self.attributes.get_str(keyvalue::CONSUMER_ID))
            .map(str::to_owned)
    }
}

#[async_trait]
impl ServiceLifecycle for EmbeddedAccessPoint {
    async fn start(&self) -> Result<()> {
        self.state.set(ServiceLifeState::Started);
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        self.state.set(ServiceLifeState::Stopped);
        Ok(())
    }

    fn current_state(&self) -> ServiceLifeState {
        self.state.get()
    }
}

#[async_trait]
impl MessagingAccessPoint for EmbeddedAccessPoint {
    fn version(&self) -> &str {
        "1.0.0"
    }

    fn attributes(&self) -> &KeyValue {
        &self.attributes
    }

    async fn create_producer(&self, attrs: KeyValue) -> Result<Producer> {
        Ok(Producer::new(Arc::new(producer::EmbeddedProducer::new(
            self.with_attrs(&attrs)?,
            None,
        ))))
    }

    async fn create_transactional_producer(
        &self,
        attrs: KeyValue,
        listener: Arc<dyn TransactionStateCheckListener>,
    ) -> Result<Producer> {
        Ok(Producer::new(Arc::new(producer::EmbeddedProducer::new(
            self.with_attrs(&attrs)?,
            Some(listener),
        ))))
    }

    async fn create_pull_consumer(&self, attrs: KeyValue) -> Result<Arc<dyn PullConsumer>> {
        let group = self.group(&attrs).ok_or_else(|| {
            OmsError::bad_parameter(
                "a pull consumer needs a consumer group: set the CONSUMER_ID attribute",
            )
        })?;
        store::validate_component("consumer group (CONSUMER_ID)", &group)?;
        Ok(Arc::new(pull::EmbeddedPullConsumer::new(
            self.with_attrs(&attrs)?,
            group,
        )))
    }

    async fn create_streaming_consumer(
        &self,
        attrs: KeyValue,
    ) -> Result<Arc<dyn StreamingConsumer>> {
        let group = self.group(&attrs);
        if let Some(g) = &group {
            store::validate_component("consumer group (CONSUMER_ID)", g)?;
        }
        Ok(Arc::new(streaming::EmbeddedStreamingConsumer::new(
            self.with_attrs(&attrs)?,
            group,
        )))
    }

    async fn resource_manager(&self) -> Result<Arc<dyn ResourceManager>> {
        Ok(Arc::new(EmbeddedResourceManager {
            shared: Arc::clone(&self.shared),
        }))
    }
}

/// The embedded store's resource manager.
#[derive(Debug)]
struct EmbeddedResourceManager {
    shared: Arc<Shared>,
}

#[async_trait]
impl ResourceManager for EmbeddedResourceManager {
    async fn create_namespace(&self, namespace: &str) -> Result<()> {
        self.shared.store.create_namespace(namespace)
    }

    async fn delete_namespace(&self, namespace: &str) -> Result<()> {
        self.shared.store.delete_namespace(namespace)
    }

    async fn list_namespaces(&self) -> Result<Vec<String>> {
        self.shared.store.list_namespaces()
    }

    async fn create_queue(&self, queue: &str, config: QueueConfig) -> Result<()> {
        self.shared
            .store
            .create_queue(queue, &config, self.shared.fsync())
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        self.shared.store.delete_queue(queue)
    }

    async fn list_queues(&self, namespace: Option<&str>) -> Result<Vec<String>> {
        self.shared.store.list_queues(namespace)
    }

    async fn describe_queue(&self, queue: &str) -> Result<QueueDescription> {
        self.shared.store.describe_queue(queue)
    }
}
