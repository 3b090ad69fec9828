//! The OMS sink: writes records to a queue through a [`Producer`], one batch send per batch
//! (at-least-once), in batch transactions committed per checkpoint (exactly-once, see
//! [`exactly_once`](super::exactly_once)), or through a write-ahead log in keyed state, sent
//! per checkpoint with deterministic ids (idempotent, see [`idempotent`](super::idempotent)).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use super::error::{ConnectorError, QueueRole};
use super::exactly_once::{DeliveryGuarantee, ExactlyOnceSink};
use super::format::Encoder;
use super::idempotent::IdempotentSink;
use super::retry::{Retrier, RetryPolicy};
use crate::oms::{KeyValue, Message, MessagingAccessPoint, Producer, ServiceLifecycle};
use crate::runtime::{Batch, BoxError, Data, RuntimeError, Sink, Stream, SubtaskInfo};

type KeyFn<T> = dyn Fn(&T) -> Option<String> + Send + Sync;
type PropertiesFn<T> = dyn Fn(&T, &mut KeyValue) + Send + Sync;

/// How an OMS sink writes records to a queue. Add it with [`Stream::add_oms_sink`].
///
/// Each record becomes one message: the body from the [`Encoder`] (JSON by default), the key
/// (which picks the partition, so one key's records stay in order) and the properties from
/// the record.
///
/// The [`DeliveryGuarantee`] says how messages are written:
/// - [`AtLeastOnce`](DeliveryGuarantee::AtLeastOnce) (the default): every batch is one
///   `send_batch`, finished before the next batch is taken, so whatever reached the sink
///   before a checkpoint barrier is stored when the barrier passes. A job restored from a
///   checkpoint may write some records again.
/// - [`ExactlyOnce`](DeliveryGuarantee::ExactlyOnce) ([`exactly_once`](Self::exactly_once)):
///   records are prepared in batch transactions, invisible to consumers, and committed when
///   the checkpoint that covers them completes; after a failure, what the restored
///   checkpoint covers is committed and the rest rolled back. Consumers see each record once,
///   but only after a checkpoint, and the job needs checkpoints
///   ([`JobConfig::with_checkpoints`](crate::runtime::JobConfig::with_checkpoints)). See
///   [`exactly_once`](super::exactly_once) for the protocol.
/// - [`Idempotent`](DeliveryGuarantee::Idempotent) ([`idempotent`](Self::idempotent)), for
///   drivers without transactions: each checkpoint's messages are kept in the sink's keyed
///   state and sent once the checkpoint completes, each with a deterministic id
///   ([`IDEMPOTENT_ID`](super::idempotent::IDEMPOTENT_ID)); after a failure, only messages
///   of completed checkpoints are sent again, byte-identical and with the same ids.
///   Exactly-once for consumers that drop ids they have seen, at-least-once otherwise; the
///   job needs checkpoints. See [`idempotent`](super::idempotent) for the protocol.
///
/// ```
/// use omstream_core::connectors::exactly_once::DeliveryGuarantee;
/// use omstream_core::connectors::OmsSinkConfig;
/// # fn config(ap: std::sync::Arc<dyn omstream_core::oms::MessagingAccessPoint>) {
/// let sink = OmsSinkConfig::<String>::new(ap, "out").exactly_once();
/// assert_eq!(sink.delivery_guarantee(), DeliveryGuarantee::ExactlyOnce);
/// # }
/// ```
pub struct OmsSinkConfig<T> {
    access_point: Arc<dyn MessagingAccessPoint>,
    queue: String,
    name: Option<String>,
    encoder: Encoder<T>,
    key: Option<Arc<KeyFn<T>>>,
    properties: KeyValue,
    record_properties: Option<Arc<PropertiesFn<T>>>,
    guarantee: DeliveryGuarantee,
    transaction_size: usize,
    retry: RetryPolicy,
    leftover_wait: std::time::Duration,
}

/// The default of [`OmsSinkConfig::leftover_wait`]: RocketMQ's default `transactionTimeout`
/// (6 s) and `transactionCheckInterval` (60 s), and some.
pub const DEFAULT_LEFTOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(70);

/// The default of [`OmsSinkConfig::transaction_size`].
pub(crate) const DEFAULT_TRANSACTION_SIZE: usize = 10_000;

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
            guarantee: self.guarantee,
            transaction_size: self.transaction_size,
            retry: self.retry,
            leftover_wait: self.leftover_wait,
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
            .field("guarantee", &self.guarantee)
            .field("transaction_size", &self.transaction_size)
            .field("retry", &self.retry)
            .field("leftover_wait", &self.leftover_wait)
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
            guarantee: DeliveryGuarantee::default(),
            transaction_size: DEFAULT_TRANSACTION_SIZE,
            retry: RetryPolicy::default(),
            leftover_wait: DEFAULT_LEFTOVER_WAIT,
        }
    }

    /// How sends that fail because the messaging service is out of reach are retried
    /// (default: [`RetryPolicy::default`], backoff up to 5 s, giving up after 5 minutes).
    /// While it retries, the sink holds its batch and the job pauses behind it. A retried
    /// send whose first attempt was stored after all (its answer was lost) is stored twice
    /// by the at-least-once sink (the idempotent sink's two copies carry the same id); the
    /// exactly-once sink's records are in a transaction that is only committed once.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The retry policy.
    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.retry
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

    /// Makes the sink exactly-once (see [`DeliveryGuarantee::ExactlyOnce`]); the job must take
    /// checkpoints.
    pub fn exactly_once(self) -> Self {
        self.with_delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
    }

    /// Makes the sink idempotent (see [`DeliveryGuarantee::Idempotent`]); the job must take
    /// checkpoints.
    pub fn idempotent(self) -> Self {
        self.with_delivery_guarantee(DeliveryGuarantee::Idempotent)
    }

    /// Sets the delivery guarantee (default: [`DeliveryGuarantee::AtLeastOnce`]).
    pub fn with_delivery_guarantee(mut self, guarantee: DeliveryGuarantee) -> Self {
        self.guarantee = guarantee;
        self
    }

    /// The delivery guarantee this sink gives: what a consumer of its queue can rely on. Each
    /// sink subtask also logs it when it opens.
    pub fn delivery_guarantee(&self) -> DeliveryGuarantee {
        self.guarantee
    }

    /// The most records an exactly-once sink subtask holds before it prepares them as one
    /// batch transaction (default 10,000; a transaction is also prepared once the held bodies
    /// reach 16 MiB, and at every checkpoint barrier). Bounds the sink's memory; larger
    /// transactions cost fewer files: each transaction waiting for its checkpoint keeps one
    /// staged file (on the embedded driver, an open one), so a long checkpoint interval at a
    /// high rate wants a larger size. Ignored unless exactly-once.
    pub fn transaction_size(mut self, records: usize) -> Self {
        self.transaction_size = records;
        self
    }

    /// Exactly-once sinks on drivers whose broker checks back open transactions while the job
    /// runs (RocketMQ): how long a run restored from a checkpoint keeps its writing producers
    /// up after its input ended, so that the broker can still ask them about transactions an
    /// earlier, crashed run left open (default [`DEFAULT_LEFTOVER_WAIT`]; the broker's
    /// `transactionTimeout` plus `transactionCheckInterval` is enough). An unbounded job's
    /// writers live long enough anyway.
    pub fn leftover_wait(mut self, wait: std::time::Duration) -> Self {
        self.leftover_wait = wait;
        self
    }

    /// See [`leftover_wait`](Self::leftover_wait).
    pub(crate) fn leftover_wait_time(&self) -> std::time::Duration {
        self.leftover_wait
    }

    pub(crate) fn transaction_records(&self) -> usize {
        self.transaction_size
    }

    pub(crate) fn queue(&self) -> &str {
        &self.queue
    }

    pub(crate) fn access_point(&self) -> &Arc<dyn MessagingAccessPoint> {
        &self.access_point
    }

    /// The error of a failed call on this sink's queue: `action` says what was tried.
    pub(crate) fn sink_error(
        &self,
        action: &'static str,
    ) -> impl FnOnce(crate::oms::OmsError) -> ConnectorError {
        ConnectorError::oms(&self.queue, QueueRole::Sink, action)
    }

    /// A started (non-transactional) producer, retrying its start while the messaging
    /// service is out of reach.
    pub(crate) async fn start_producer(
        &self,
        retrier: &mut Retrier,
    ) -> Result<Producer, ConnectorError> {
        let producer = self
            .access_point
            .create_producer(KeyValue::new())
            .await
            .map_err(self.sink_error("create a producer for"))?;
        retrier
            .run("start a producer", || producer.start())
            .await
            .map_err(self.sink_error("start a producer for"))?;
        Ok(producer)
    }

    /// Stops a sink's producer, if it has one: the driver flushes what it may still buffer.
    pub(crate) async fn stop_producer(
        &self,
        producer: Option<Producer>,
    ) -> Result<(), ConnectorError> {
        match producer {
            Some(producer) => producer
                .stop()
                .await
                .map_err(self.sink_error("flush the producer of")),
            None => Ok(()),
        }
    }

    /// Names `retrier`'s owner after sink subtask `task`, then checks that the queue exists,
    /// retrying while the messaging service is out of reach: what every sink does first when
    /// it opens.
    pub(crate) async fn check_queue(
        &self,
        retrier: &mut Retrier,
        task: &str,
    ) -> Result<(), ConnectorError> {
        retrier.set_owner(format!("sink {task} of queue '{}'", self.queue));
        let ap = &self.access_point;
        retrier
            .run("look up the queue", || async {
                ap.resource_manager()
                    .await?
                    .describe_queue(&self.queue)
                    .await
            })
            .await
            .map(drop)
            .map_err(self.sink_error("look up"))
    }

    fn operator_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}-sink", self.queue))
    }

    /// The message for `record`: `template` (an empty message to the queue) with the body,
    /// key and properties of the record.
    pub(crate) fn message(
        &self,
        template: &Message,
        record: &T,
    ) -> Result<Message, ConnectorError> {
        let body = self
            .encoder
            .encode(record)
            .map_err(|source| ConnectorError::Encode {
                queue: self.queue.clone(),
                source,
            })?;
        let mut message = template.clone();
        message.data = body;
        if let Some(key) = &self.key {
            message.extension_header.message_key = key(record);
        }
        if !self.properties.is_empty() {
            message.properties = self.properties.clone();
        }
        if let Some(properties) = &self.record_properties {
            properties(record, &mut message.properties);
        }
        Ok(message)
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
        if let Err(message) = self
            .retry
            .validate(&format!("the sink of '{}'", self.queue))
        {
            return Err(RuntimeError::InvalidConfig(message));
        }
        if self.transaction_size == 0 {
            return Err(RuntimeError::InvalidConfig(format!(
                "the transaction size of the sink of '{}' is 0; give at least 1 record \
                 (default {DEFAULT_TRANSACTION_SIZE})",
                self.queue
            )));
        }
        Ok(())
    }
}

impl<T: Data> OmsSinkConfig<T> {
    /// A sink subtask as [`Stream::add_oms_sink`] makes one for each subtask: for driving a
    /// sink yourself (tests, a custom runtime) through the [`Sink`] methods, starting with
    /// [`init_state`](Sink::init_state) (the idempotent sink keeps its messages in keyed
    /// state) and [`open`](Sink::open). The settings are not checked here; call
    /// [`validate`](Self::validate) first.
    pub fn create_sink(&self) -> Box<dyn Sink<T>> {
        let config = Arc::new(self.clone());
        match self.guarantee {
            DeliveryGuarantee::AtLeastOnce => Box::new(OmsSink {
                template: Message::new(&config.queue, bytes::Bytes::new()),
                retrier: Retrier::new(config.retry, format!("sink of queue '{}'", config.queue)),
                config,
                producer: None,
            }),
            DeliveryGuarantee::ExactlyOnce => Box::new(ExactlyOnceSink::new(config)),
            DeliveryGuarantee::Idempotent => Box::new(IdempotentSink::new(config)),
        }
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
        self.sink(&name, move |_: &SubtaskInfo| config.create_sink());
        Ok(())
    }
}

/// One subtask of an OMS sink.
/// The messages of a batch's records.
fn encode<T>(
    config: &OmsSinkConfig<T>,
    template: &Message,
    batch: &Batch<T>,
) -> Result<Vec<Message>, ConnectorError> {
    batch
        .iter()
        .map(|record| config.message(template, &record.value))
        .collect()
}

struct OmsSink<T> {
    config: Arc<OmsSinkConfig<T>>,
    producer: Option<Producer>,
    retrier: Retrier,
    /// An empty message to the queue: cloning it shares the queue name instead of copying it.
    template: Message,
}

#[async_trait]
impl<T: Data> Sink<T> for OmsSink<T> {
    /// Checks that the queue exists and starts a producer, retrying while the messaging
    /// service is out of reach.
    async fn open(&mut self, subtask: &SubtaskInfo) -> Result<(), BoxError> {
        let config = self.config.clone();
        tracing::info!(
            sink = %subtask.task_name(),
            queue = %config.queue,
            guarantee = %config.guarantee,
            "opening an OMS sink"
        );
        config
            .check_queue(&mut self.retrier, &subtask.task_name())
            .await?;
        self.producer = Some(config.start_producer(&mut self.retrier).await?);
        Ok(())
    }

    async fn write_batch(&mut self, batch: Batch<T>) -> Result<(), BoxError> {
        let producer = self
            .producer
            .as_ref()
            .ok_or("the OMS sink was not opened")?;
        let mut messages = Some(encode(&self.config, &self.template, &batch)?);
        loop {
            // A retry encodes the batch again rather than keep a copy of every batch sent.
            let attempt = match messages.take() {
                Some(messages) => messages,
                None => encode(&self.config, &self.template, &batch)?,
            };
            match producer.send_batch(attempt).await {
                Ok(_) => {
                    self.retrier.succeeded("write a batch");
                    return Ok(());
                }
                Err(error) => {
                    let wait = self.retrier.failed("write a batch", error).map_err(
                        ConnectorError::oms(&self.config.queue, QueueRole::Sink, "write to"),
                    )?;
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Every batch was stored when `write_batch` returned; stopping the producer flushes
    /// whatever a driver may still buffer.
    async fn finish(&mut self) -> Result<(), BoxError> {
        Ok(self.config.stop_producer(self.producer.take()).await?)
    }
}
