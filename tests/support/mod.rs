//! Shared setup of the end-to-end tests: a store in a temporary directory, read-back of a queue.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use omstream::oms::embedded::EMBEDDED_DIR;
use omstream::oms::{connect, KeyValue, Message, MessagingAccessPoint, QueueConfig, SeekPosition};

/// An access point.
pub(crate) type AccessPoint = Arc<dyn MessagingAccessPoint>;

/// A store in a temp dir with `queues` (name, partitions).
pub(crate) async fn store(queues: &[(&str, u32)]) -> (tempfile::TempDir, AccessPoint) {
    let dir = tempfile::tempdir().unwrap();
    let attrs = KeyValue::new().with(EMBEDDED_DIR, dir.path().display());
    let ap = connect("oms:embedded://localhost/tests", attrs)
        .await
        .unwrap();
    let resources = ap.resource_manager().await.unwrap();
    for (queue, partitions) in queues {
        resources
            .create_queue(queue, QueueConfig::with_partitions(*partitions))
            .await
            .unwrap();
    }
    (dir, ap)
}

/// Every message of `queue`, per partition in offset order.
pub(crate) async fn read_queue(ap: &AccessPoint, queue: &str) -> BTreeMap<i32, Vec<Message>> {
    let consumer = ap.create_streaming_consumer(KeyValue::new()).await.unwrap();
    consumer.start().await.unwrap();
    let mut out = BTreeMap::new();
    for meta in consumer.partitions(queue).await.unwrap() {
        let partition = meta.partition_id;
        let (_, end) = consumer.offset_range(queue, partition).await.unwrap();
        let mut reader = consumer
            .open(queue, partition, SeekPosition::Beginning)
            .await
            .unwrap();
        let mut messages = Vec::new();
        while reader.position() < end {
            messages.extend(reader.poll_batch(1000, Duration::ZERO).await.unwrap());
        }
        out.insert(partition, messages);
    }
    out
}

/// Every message of `queue` decoded from JSON, partition after partition.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    ap: &AccessPoint,
    queue: &str,
) -> Vec<T> {
    read_queue(ap, queue)
        .await
        .into_values()
        .flatten()
        .map(|m| serde_json::from_slice(&m.data).expect("a JSON body"))
        .collect()
}

/// Jobs in child processes, for the crash tests.
pub(crate) mod child;
/// The RocketMQ broker the RocketMQ tests run against.
pub(crate) mod rocketmq;
