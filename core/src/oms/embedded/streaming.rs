//! The embedded driver's streaming consumer and partition reader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::groups::GroupOffsets;
use super::log::{list_segments, LogReader, PartitionLog};
use super::{staged, Shared};
use crate::oms::{
    LifecycleCell, Message, OmsError, PartitionReader, QueueMetaData, Result, SeekPosition,
    ServiceLifeState, ServiceLifecycle, StreamingConsumer,
};

/// How often a reader looks for delayed messages that have come due.
const RELEASE_CHECK: Duration = Duration::from_millis(50);

/// Publishes due delayed messages of `log`, at most every [`RELEASE_CHECK`]. A failure is logged,
/// not returned: it must not stop the reading of messages already stored.
pub(crate) fn release_due_throttled(
    shared: &Shared,
    log: &Arc<PartitionLog>,
    last: &mut Option<Instant>,
) {
    let now = Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < RELEASE_CHECK) {
        return;
    }
    *last = Some(now);
    if let Err(err) = staged::release_due(log, shared.write_options()) {
        tracing::warn!(%err, queue = %log.queue, partition = log.partition, "publishing due delayed messages failed; retrying");
    }
}

/// Reads one partition for a streaming consumer.
#[derive(Debug)]
pub(crate) struct EmbeddedPartitionReader {
    shared: Arc<Shared>,
    reader: LogReader,
    last_release: Option<Instant>,
}

impl EmbeddedPartitionReader {
    pub(crate) fn new(shared: Arc<Shared>, reader: LogReader) -> Self {
        Self {
            shared,
            reader,
            last_release: None,
        }
    }
}

#[async_trait]
impl PartitionReader for EmbeddedPartitionReader {
    fn queue(&self) -> &str {
        &self.reader.log.queue
    }

    fn partition(&self) -> i32 {
        self.reader.log.partition
    }

    fn position(&self) -> i64 {
        self.reader.position()
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<Message>> {
        loop {
            let batch = self.poll_batch(max, Duration::from_secs(3600)).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }

    async fn poll_batch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Message>> {
        let deadline = Instant::now() + timeout;
        let log = Arc::clone(&self.reader.log);
        let max = max.max(1);
        loop {
            // Register for the wake-up before looking, so an append in between is not missed.
            let appended = log.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            release_due_throttled(&self.shared, &log, &mut self.last_release);
            // Sized by the reader, from what it finds buffered.
            let mut out = Vec::new();
            self.reader.read_available(max, &mut out)?;
            if !out.is_empty() {
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(out);
            }
            // Other processes' appends are seen by polling; this process's wake us at once.
            let wait = self.shared.config.poll_interval.min(deadline - now);
            tokio::select! {
                _ = appended => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The embedded streaming consumer.
#[derive(Debug)]
pub(crate) struct EmbeddedStreamingConsumer {
    shared: Arc<Shared>,
    group: Option<String>,
    state: LifecycleCell,
}

impl EmbeddedStreamingConsumer {
    pub(crate) fn new(shared: Arc<Shared>, group: Option<String>) -> Self {
        Self {
            shared,
            group,
            state: LifecycleCell::new(ServiceLifeState::Initialized),
        }
    }

    fn offsets(&self, queue: &str) -> Result<GroupOffsets> {
        let group = self.group.as_deref().ok_or_else(|| {
            OmsError::bad_parameter(
                "committed offsets need a consumer group: set the CONSUMER_ID attribute",
            )
        })?;
        self.shared.store.queue(queue)?;
        GroupOffsets::new(&self.shared.store, group, queue, self.shared.fsync())
    }
}

#[async_trait]
impl ServiceLifecycle for EmbeddedStreamingConsumer {
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
impl StreamingConsumer for EmbeddedStreamingConsumer {
    async fn partitions(&self, queue: &str) -> Result<Vec<QueueMetaData>> {
        let q = self.shared.store.queue(queue)?;
        Ok(q.partitions
            .iter()
            .map(|p| QueueMetaData {
                queue_name: q.name.clone(),
                partition_id: p.partition,
            })
            .collect())
    }

    async fn open(
        &self,
        queue: &str,
        partition: i32,
        position: SeekPosition,
    ) -> Result<Box<dyn PartitionReader>> {
        self.state.ensure_started("the streaming consumer")?;
        let q = self.shared.store.queue(queue)?;
        let reader = q.partition(partition)?.reader(position)?;
        Ok(Box::new(EmbeddedPartitionReader::new(
            Arc::clone(&self.shared),
            reader,
        )))
    }

    async fn offset_for_timestamp(
        &self,
        queue: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<Option<i64>> {
        let q = self.shared.store.queue(queue)?;
        let mut reader = q
            .partition(partition)?
            .reader(SeekPosition::Timestamp(timestamp))?;
        let mut out = Vec::with_capacity(1);
        reader.read_available(1, &mut out)?;
        Ok(out.first().and_then(Message::offset))
    }

    async fn offset_range(&self, queue: &str, partition: i32) -> Result<(i64, i64)> {
        let q = self.shared.store.queue(queue)?;
        let log = q.partition(partition)?;
        let end = log.tail()?.next_offset;
        let start = list_segments(&log.dir)?
            .first()
            .copied()
            .unwrap_or(0)
            .min(end);
        Ok((start, end))
    }

    async fn commit(&self, queue: &str, partition: i32, offset: i64) -> Result<()> {
        if offset < 0 {
            return Err(OmsError::bad_parameter(format!(
                "offset {offset} is negative; commit the next offset to read"
            )));
        }
        self.shared.store.queue(queue)?.partition(partition)?;
        self.offsets(queue)?.commit(partition, offset)
    }

    async fn committed(&self, queue: &str, partition: i32) -> Result<Option<i64>> {
        self.shared.store.queue(queue)?.partition(partition)?;
        self.offsets(queue)?.committed(partition)
    }
}
