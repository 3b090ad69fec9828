//! The OpenMessaging (OMS) API: a faithful, idiomatic mapping of OMS 1.0 plus the streaming
//! consumer a stream processor needs, and its drivers.
//!
//! Start at [`connect`] with an access point URL such as `oms:embedded://localhost/default`:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use omstream_core::oms::{self, KeyValue, Message, QueueConfig, SeekPosition, ServiceLifecycle};
//! # let dir = std::env::temp_dir().join(format!("omstream-doc-mod-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let attrs = KeyValue::new().with(oms::embedded::EMBEDDED_DIR, dir.display());
//! let ap = oms::connect("oms:embedded://localhost/default", attrs).await?;
//! ap.resource_manager().await?.create_queue("orders", QueueConfig::with_partitions(2)).await?;
//!
//! let producer = ap.create_producer(KeyValue::new()).await?;
//! producer.start().await?;
//! let sent = producer.send(Message::new("orders", "hello").with_key("customer-1")).await?;
//!
//! let consumer = ap.create_streaming_consumer(KeyValue::new()).await?;
//! consumer.start().await?;
//! let mut reader = consumer.open("orders", sent.partition, SeekPosition::Beginning).await?;
//! let batch = reader.next_batch(10).await?;
//! assert_eq!(&batch[0].data[..], b"hello");
//! assert_eq!(batch[0].message_id(), Some(sent.message_id.as_str()));
//! # Ok::<(), oms::OmsError>(())
//! # }).unwrap();
//! ```

mod access_point;
mod consumer;
pub mod embedded;
mod error;
pub mod keyvalue;
mod lifecycle;
mod message;
mod producer;
mod resource;
#[cfg(feature = "rocketmq")]
pub mod rocketmq;
mod streaming;
mod uri;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use access_point::{connect, Driver, DriverRegistry, MessagingAccessPoint, SPEC_VERSION};
pub use consumer::{
    AckContext, BatchAckContext, BatchMessageListener, MessageListener, PullConsumer, PushConsumer,
};
pub use error::{OmsError, OmsErrorKind, OmsStatus, Result};
pub use keyvalue::KeyValue;
pub use lifecycle::{LifecycleCell, ServiceLifeState, ServiceLifecycle};
pub use message::{ExtensionHeader, Header, Message, MessageReceipt, Qos, MESSAGE_VERSION};
pub use producer::{
    body_too_large, local_host_id, now_millis, InterceptorContext, InterceptorId,
    PreparedTransaction, Producer, ProducerBackend, ProducerInterceptor, SendResult,
    TransactionChecks, TransactionState, TransactionStateCheckListener, TransactionalResult,
};
pub use resource::{
    PartitionDescription, QueueConfig, QueueDescription, ResourceManager, RetentionPolicy,
};
pub use streaming::{
    message_stream, MessageStream, PartitionReader, QueueMetaData, SeekPosition, StreamingConsumer,
};
pub use uri::{AccessPointUri, HostPort};
