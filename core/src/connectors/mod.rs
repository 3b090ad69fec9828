//! OMS sources and sinks: where a job meets its queues.
//!
//! - [`StreamEnv::add_oms_source`](crate::runtime::StreamEnv::add_oms_source) reads a queue
//!   through a [`StreamingConsumer`](crate::oms::StreamingConsumer). Its subtasks split the
//!   queue's partitions; each starts where [`StartPosition`] says, decodes bodies with a
//!   [`Decoder`] (JSON by default), takes event time from a header or the record
//!   ([`EventTimeFrom`]) and generates watermarks per partition. A *bounded* source reads up
//!   to the end offsets it found when it opened, then finishes; an unbounded one follows the
//!   queue until the job is stopped.
//! - A message the decoder refuses never stops the job: it goes to a dead-letter queue with
//!   the reason in its properties ([`DeadLetter`], [`DLQ_REASON`] and its siblings), or is
//!   counted and skipped ([`SourceMetrics`]).
//! - With a consumer group, the source commits its positions to the group when a checkpoint
//!   completes and, by default, when the job ends successfully ([`CommitPolicy`]); a later run can start at
//!   [`StartPosition::Committed`].
//! - [`Stream::add_oms_sink`](crate::runtime::Stream::add_oms_sink) writes records through a
//!   [`Producer`](crate::oms::Producer), with the key and properties taken from each record
//!   ([`OmsSinkConfig`]): at-least-once by default (one batch send per batch),
//!   [`exactly_once`] with transactions, or [`idempotent`] with deterministic message ids.
//!
//! ```
//! use omstream_core::connectors::{OmsSinkConfig, OmsSourceConfig};
//! use omstream_core::oms::{self, KeyValue, Message, QueueConfig, ServiceLifecycle};
//! use omstream_core::runtime::{JobConfig, StreamEnv};
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct Order { user: String, amount: u32 }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! # let dir = std::env::temp_dir().join(format!("omstream-doc-connectors-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let attrs = KeyValue::new().with(oms::embedded::EMBEDDED_DIR, dir.display());
//! let ap = oms::connect("oms:embedded://localhost/default", attrs).await?;
//! let queues = ap.resource_manager().await?;
//! queues.create_queue("orders", QueueConfig::with_partitions(2)).await?;
//! queues.create_queue("big-orders", QueueConfig::with_partitions(2)).await?;
//! let producer = ap.create_producer(KeyValue::new()).await?;
//! producer.start().await?;
//! producer.send(Message::new("orders", r#"{"user":"ann","amount":700}"#).with_key("ann")).await?;
//!
//! let env = StreamEnv::new(JobConfig::named("big-orders"));
//! let orders = env.add_oms_source(OmsSourceConfig::<Order>::new(ap.clone(), "orders").bounded(true))?;
//! orders.add_oms_sink(OmsSinkConfig::new(ap.clone(), "big-orders").key(|o: &Order| o.user.clone()))?;
//! let report = env.execute().await?;
//! assert_eq!(report.operator("orders").unwrap().records_out, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod dead_letter;
mod error;
mod event_time;
pub mod exactly_once;
mod format;
pub mod idempotent;
mod metrics;
mod retry;
mod sink;
mod source;
mod source_config;

pub use dead_letter::{DeadLetter, DLQ_OFFSET, DLQ_OPERATOR, DLQ_PARTITION, DLQ_QUEUE, DLQ_REASON};
pub use error::{ConnectorError, QueueRole};
pub use event_time::EventTimeFrom;
pub use exactly_once::{DeliveryGuarantee, ExactlyOnceError};
pub use format::{Decoder, Encoder};
pub use idempotent::{IdempotentError, IDEMPOTENT_ID};
pub use metrics::SourceMetrics;
pub use retry::{RetryPolicy, STILL_FAILING_EVERY};
pub use sink::{OmsSinkConfig, DEFAULT_LEFTOVER_WAIT};
pub use source_config::{CommitPolicy, FallbackPosition, OmsSourceConfig, StartPosition};

#[cfg(test)]
mod tests;
