//! The streaming consumer: partitions read like logs, from any position, with committed group
//! offsets. This is what stream-processing sources are built on.

use std::fmt;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::error::Result;
use super::lifecycle::ServiceLifecycle;
use super::message::Message;

/// One partition of a queue (the spec's `QueueMetaData`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueMetaData {
    /// The queue.
    pub queue_name: String,
    /// The partition id, from 0.
    pub partition_id: i32,
}

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekPosition {
    /// The oldest message still retained.
    Beginning,
    /// After the newest message: only messages stored from now on.
    End,
    /// The message at this offset (clamped into the retained range).
    Offset(i64),
    /// The first message stored at or after this instant (ms since the epoch).
    Timestamp(i64),
}

/// Reads one partition in order, waiting for new messages when it reaches the end.
#[async_trait]
pub trait PartitionReader: Send + fmt::Debug {
    /// The queue read.
    fn queue(&self) -> &str;
    /// The partition read.
    fn partition(&self) -> i32;
    /// The offset of the next message this reader returns (what a checkpoint records).
    fn position(&self) -> i64;
    /// Up to `max` messages, waiting as long as it takes for at least one.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Message>>;
    /// Up to `max` messages, waiting up to `timeout` for the first; empty when none came.
    async fn poll_batch(
        &mut self,
        max: usize,
        timeout: std::time::Duration,
    ) -> Result<Vec<Message>>;
}

/// A partition as a stream of messages.
pub type MessageStream = BoxStream<'static, Result<Message>>;

/// Turns a reader into a `futures::Stream` of messages. The stream never ends on its own: it
/// waits for new messages at the end of the partition.
pub fn message_stream(reader: Box<dyn PartitionReader>) -> MessageStream {
    futures::stream::unfold(reader, |mut reader| async move {
        let item = reader.next_batch(1024).await;
        Some((item, reader))
    })
    .flat_map(|batch| match batch {
        Ok(messages) => futures::stream::iter(messages.into_iter().map(Ok).collect::<Vec<_>>()),
        Err(err) => futures::stream::iter(vec![Err(err)]),
    })
    .boxed()
}

/// Reads partitions as logs, and keeps the consumer group's committed offsets (the group is the
/// `CONSUMER_ID` attribute of the consumer).
#[async_trait]
pub trait StreamingConsumer: ServiceLifecycle + fmt::Debug {
    /// The partitions of `queue`.
    async fn partitions(&self, queue: &str) -> Result<Vec<QueueMetaData>>;
    /// Opens `partition` of `queue` at `position`.
    async fn open(
        &self,
        queue: &str,
        partition: i32,
        position: SeekPosition,
    ) -> Result<Box<dyn PartitionReader>>;
    /// The offset of the first message stored at or after `timestamp`; `None` past the end.
    async fn offset_for_timestamp(
        &self,
        queue: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<Option<i64>>;
    /// The retained range of a partition: the first offset and the offset the next message gets.
    async fn offset_range(&self, queue: &str, partition: i32) -> Result<(i64, i64)>;
    /// Commits `offset` (the next offset to read) for the group.
    async fn commit(&self, queue: &str, partition: i32, offset: i64) -> Result<()>;
    /// The group's committed offset, if it has one.
    async fn committed(&self, queue: &str, partition: i32) -> Result<Option<i64>>;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Hands out fixed batches, then an error.
    #[derive(Debug)]
    struct Scripted(Vec<Result<Vec<Message>>>);

    #[async_trait]
    impl PartitionReader for Scripted {
        fn queue(&self) -> &str {
            "q"
        }
        fn partition(&self) -> i32 {
            0
        }
        fn position(&self) -> i64 {
            0
        }
        async fn next_batch(&mut self, _: usize) -> Result<Vec<Message>> {
            if self.0.is_empty() {
                futures::future::pending::<()>().await;
            }
            self.0.remove(0)
        }
        async fn poll_batch(&mut self, max: usize, _: Duration) -> Result<Vec<Message>> {
            self.next_batch(max).await
        }
    }

    #[tokio::test]
    async fn the_stream_flattens_batches_in_order_and_passes_errors() {
        let reader = Scripted(vec![
            Ok(vec![Message::new("q", "a"), Message::new("q", "b")]),
            Ok(vec![Message::new("q", "c")]),
            Err(super::super::OmsError::storage("disk gone")),
        ]);
        let items: Vec<_> = message_stream(Box::new(reader)).take(4).collect().await;
        let bodies: Vec<_> = items[..3]
            .iter()
            .map(|m| m.as_ref().unwrap().data.clone())
            .collect();
        assert_eq!(bodies, ["a", "b", "c"]);
        assert!(items[3]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("disk gone"));
    }
}
