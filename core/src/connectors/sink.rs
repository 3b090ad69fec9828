//! The OMS sink: writes records to a queue through a [`Producer`], one batch send per batch.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use super::error::{ConnectorError, QueueRole};
use super::format::Encoder;
use crate::oms::{KeyValue, Message, MessagingAccessPoint, Producer, ServiceLifecycle};
use crate::runtime::{Batch, BoxError, Data, RuntimeError, Sink, Stream, SubtaskInfo};

type KeyFn<T> = dyn Fn(&T) -> Option<String> + Send + Sync;
type PropertiesFn<T> = dyn Fn(&T, &mut KeyValue) + Send + Sync;

/// How an OMS sink writes records to a queue. Add it with [`Stream::add_oms_sink`].
///
/// Each record becomes one message: the body from the [`Encoder`] (JSON by default), the key
/// (which picks the partition, so one key's records stay in order) and the properties from
/// the record. Every batch is one `send_batch`, finished before the next batch is taken, so
/// whatever reached the sink before a checkpoint barrier is stored when the barrier passes:
/// the sink is at-least-once (a job restored from a checkpoint may write some records again).
pub struct OmsSinkConfig<T> {
    access_point: Arc<dyn MessagingAccessPoint>,
    queue: String,
    name: Option<String>,
    encoder: Encoder<T>,
    key: Option<Arc<KeyFn<T>>>,
    properties: KeyValue,
    record_properties: Option<Arc<PropertiesFn<T>>>,
}

impl<T> Clone for OmsSinkConfig<T> {
    fn clone(&self) -> Self {
        OmsSinkConfig {
            access_point: self.access_point.clone(),
            queue: self.queue.clone(),
            name: self.name.clone(),
            encoder: self.encoder.clone(),
            key: self.key.clone(),
            properties: self.properties.clone(),
            record_properties: self.record_properties.clone(),
        }
    }
}

impl<T> fmt::Debug for OmsSinkConfig<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OmsSinkConfig")
            .field("queue", &self.queue)
            .field("name", &self.name)
            .field("encoder", &self.encoder)
            .field("key", &self.key.is_some())
            .field("properties", &self.properties)
            .field("record_properties", &self.record_properties.is_some())
            .finish()
    }
}

impl<T: Serialize + 'static> OmsSinkConfig<T> {
    /// Writes to `queue` through `access_point`, encoding records as JSON.
    pub fn new(access_point: Arc<dyn MessagingAccessPoint>, queue: impl Into<String>) -> Self {
        Self::with_encoder(access_point, queue, Encoder::json())
    }
}

impl<T> OmsSinkConfig<T> {
    /// Writes to `queue` through `access_point` with `encoder`.
    pub fn with_encoder(
        access_point: Arc<dyn MessagingAccessPoint>,
        queue: impl Into<String>,
        encoder: Encoder<T>,
    ) -> Self {
        OmsSinkConfig {
            access_point,
            queue: queue.into(),
            name: None,
            encoder,
            key: None,
            properties: KeyValue::new(),
            record_properties: None,
        }
    }

    /// The operator's name in the job (default: `<queue>-sink`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How records become bodies.
    pub fn encoder(mut self, encoder: Encoder<T>) -> Self {
        self.encoder = encoder;
        self
    }

    /// The message key of a record (a `String`, or an `Option<String>` for records without
    /// one). Without a key function messages carry no key.
    pub fn key<K: Into<Option<String>>>(
        mut self,
        key: impl Fn(&T) -> K + Send + Sync + 'static,
    ) -> Self {
        self.key = Some(Arc::new(move |record: &T| key(record).into()));
        self
    }

    /// A property every message carries.
    pub fn property(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.properties.put(key, value);
        self
    }

    /// Properties taken from each record, put after the fixed ones (and so winning over them).
    pub fn properties(
        mut self,
        properties: impl Fn(&T, &mut KeyValue) + Send + Sync + 'static,
    ) -> Self {
        self.record_properties = Some(Arc::new(properties));
        self
    }

    fn operator_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}-sink", self.queue))
    }

    /// Checks every setting; the error says which one is wrong and what to change.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        if self.queue.trim().is_empty() {
            return Err(RuntimeError::InvalidConfig(
                "an OMS sink needs a queue name".to_string(),
            ));
        }
        if self.properties.keys().any(|k| k.trim().is_empty()) {
            return Err(RuntimeError::InvalidConfig(format!(
                "a fixed property of the sink of '{}' has an empty name; name it",
                self.queue
            )));
        }
        Ok(())
    }
}

impl<T: Data> Stream<T> {
    /// Ends the stream in an OMS queue (see [`OmsSinkConfig`]), one sink subtask per subtask
    /// of the stream, fused into its task. The settings are checked here; the queue is looked
    /// up when the job starts.
    ///
    /// # Errors
    /// [`RuntimeError::InvalidConfig`] when a setting is wrong.
    pub fn add_oms_sink(&self, config: OmsSinkConfig<T>) -> Result<(), RuntimeError> {
        config.validate()?;
        let name = config.operator_name();
        let config = Arc::new(config);
        self.sink(&name, move |_: &SubtaskInfo| {
            Box::new(OmsSink {
                config: config.clone(),
                producer: None,
                template: Message::new(&config.queue, bytes::Bytes::new()),
            }) as Box<dyn Sink<T>>
        });
        Ok(())
    }
}

/// One subtask of an OMS sink.
struct OmsSink<T> {
    config: Arc<OmsSinkConfig<T>>,
    producer: Option<Producer>,
    /// An empty message to the queue: cloning it shares the queue name instead of copying it.
    template: Message,
}

impl<T> OmsSink<T> {
    fn message(&self, record: &T) -> Result<Message, ConnectorError> {
        let config = &self.config;
        let body = config
            .encoder
            .encode(record)
            .map_err(|source| ConnectorError::Encode {
                queue: config.queue.clone(),
                source,
            })?;
        let mut message = self.template.clone();
        message.data = body;
        if let Some(key) = &config.key {
            message.extension_header.message_key = key(record);
        }
        if !config.properties.is_empty() {
            message.properties = config.properties.clone();
        }
        if let Some(properties) = &config.record_properties {
            properties(record, &mut message.properties);
        }
        Ok(message)
    }
}

#[async_trait]
impl<T: Data> Sink<T> for OmsSink<T> {
    /// Checks that the queue exists and starts a producer.
    async fn open(&mut self, _: &SubtaskInfo) -> Result<(), BoxError> {
        let config = &self.config;
        let error =
            |action: &'static str| ConnectorError::oms(&config.queue, QueueRole::Sink, action);
        let resources = config
            .access_point
            .resource_manager()
            .await
            .map_err(error("look up"))?;
        resources
            .describe_queue(&config.queue)
            .await
            .map_err(error("look up"))?;
        let producer = config
            .access_point
            .create_producer(KeyValue::new())
            .await
            .map_err(error("create a producer for"))?;
        producer
            .start()
            .await
            .map_err(error("start a producer for"))?;
        self.producer = Some(producer);
        Ok(())
    }

    async fn write_batch(&mut self, batch: Batch<T>) -> Result<(), BoxError> {
        let messages = batch
            .iter()
            .map(|record| self.message(&record.value))
            .collect::<Result<Vec<_>, _>>()?;
        let producer = self
            .producer
            .as_ref()
            .ok_or("the OMS sink was not opened")?;
        producer
            .send_batch(messages)
            .await
            .map_err(ConnectorError::oms(
                &self.config.queue,
                QueueRole::Sink,
                "write to",
            ))?;
        Ok(())
    }

    /// Every batch was stored when `write_batch` returned; stopping the producer flushes
    /// whatever a driver may still buffer.
    async fn finish(&mut self) -> Result<(), BoxError> {
        if let Some(producer) = self.producer.take() {
            producer.stop().await.map_err(ConnectorError::oms(
                &self.config.queue,
                QueueRole::Sink,
                "flush the producer of",
            ))?;
        }
        Ok(())
    }
}
