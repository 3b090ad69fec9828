//! The OMS source: reads a queue's partitions through a [`StreamingConsumer`], spread over
//! the source's subtasks, decodes the messages and generates watermarks per partition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;

use super::dead_letter::{dead_letter, DeadLetter, Origin};
use super::error::{ConnectorError, QueueRole};
use super::retry::Retrier;
use super::source_config::{CommitPolicy, OmsSourceConfig, StartPosition};
use crate::oms::{keyvalue, KeyValue, Message, OmsError, PartitionReader, Producer, SeekPosition};
use crate::oms::{ServiceLifecycle, StreamingConsumer};
use crate::runtime::{
    Batch, BoxError, CheckpointBarrier, Data, EventTime, PartitionWatermarks, Record, RuntimeError,
    Source, SourceContext, SourceOutput, SourcePositions, Stream, StreamEnv, SubtaskInfo,
    WatermarkUpdate,
};

/// How long a poll waits for a message when no partition has one. Below the runtime's 100 ms,
/// so that barriers and a stop are taken promptly.
const POLL_WAIT: Duration = Duration::from_millis(50);

impl StreamEnv {
    /// Adds a source that reads an OMS queue (see [`OmsSourceConfig`](super::OmsSourceConfig)).
    /// The settings are checked here; the queue is looked up when the job starts.
    ///
    /// # Errors
    /// [`RuntimeError::InvalidConfig`] when a setting is wrong; the message says what to change.
    pub fn add_oms_source<T: Data>(
        &self,
        config: OmsSourceConfig<T>,
    ) -> Result<Stream<T>, RuntimeError> {
        config.validate()?;
        let batch_size = config.batch_size.unwrap_or(self.config().batch_size);
        let parallelism = config.parallelism;
        let name = config.operator_name().to_string();
        let config = Arc::new(config);
        let stream = self.add_source(&name, move |subtask| {
            Box::new(OmsSource::new(config.clone(), subtask, batch_size)) as Box<dyn Source<T>>
        });
        Ok(match parallelism {
            Some(p) => stream.with_parallelism(p),
            None => stream,
        })
    }
}

/// The partitions of a queue that subtask `index` of `parallelism` reads: every
/// `parallelism`-th of them, sorted by id, starting at the `index`-th.
pub(crate) fn assigned_partitions(mut all: Vec<i32>, index: usize, parallelism: usize) -> Vec<i32> {
    all.sort_unstable();
    all.into_iter()
        .enumerate()
        .filter(|(position, _)| position % parallelism.max(1) == index)
        .map(|(_, partition)| partition)
        .collect()
}

/// One partition a subtask reads.
#[derive(Debug)]
struct PartitionCursor {
    partition: i32,
    reader: Box<dyn PartitionReader>,
    /// The offset after the last message emitted (or skipped): what a checkpoint records.
    position: i64,
    /// Bounded sources stop here: the partition's next offset when the source opened.
    end: Option<i64>,
    /// The offset last committed to the group by this subtask.
    committed: Option<i64>,
}

impl PartitionCursor {
    /// How many messages to ask for: `None` once a bounded partition is read to its end.
    fn room(&self, batch_size: usize) -> Option<usize> {
        match self.end {
            Some(end) if self.position >= end => None,
            Some(end) => Some(batch_size.min((end - self.position) as usize)),
            None => Some(batch_size),
        }
    }

    /// The reader's position, never past a bounded end.
    fn reader_position(&self) -> i64 {
        let position = self.reader.position();
        self.end.map_or(position, |end| position.min(end))
    }
}

/// Records decoded from one read, not yet returned by `poll`: kept in the source so that a
/// cancelled poll loses nothing.
#[derive(Debug)]
struct ReadyBatch<T> {
    index: usize,
    batch: Batch<T>,
    /// The partition's position once the batch is emitted.
    position: i64,
    /// Dead letters to send before the batch is emitted.
    dead: Vec<Message>,
}

/// The dead-letter queue and the producer that writes it.
#[derive(Debug)]
struct DeadLetterQueue {
    queue: Arc<str>,
    producer: Producer,
}

/// One subtask of an OMS source.
pub(crate) struct OmsSource<T> {
    config: Arc<OmsSourceConfig<T>>,
    subtask: SubtaskInfo,
    batch_size: usize,
    consumer: Option<Arc<dyn StreamingConsumer>>,
    dead_letters: Option<DeadLetterQueue>,
    partitions: Vec<PartitionCursor>,
    watermarks: PartitionWatermarks,
    next_partition: usize,
    ready: Option<ReadyBatch<T>>,
    watermark_pending: bool,
    /// Positions per checkpoint epoch, kept until the checkpoint completes (with a group).
    snapshots: BTreeMap<u64, Vec<i64>>,
    /// Set when this source failed, so that the end of the job does not commit.
    failed: bool,
    /// With a maximum rate: when this subtask started reading, and what it has read since.
    paced_since: Option<(tokio::time::Instant, u64)>,
    /// How many partitions the queue has (all subtasks together), known once open.
    queue_partitions: usize,
    /// Retries calls while the messaging service is out of reach.
    retrier: Retrier,
}

impl<T> std::fmt::Debug for OmsSource<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OmsSource")
            .field("queue", &self.config.queue)
            .field("subtask", &self.subtask)
            .field("partitions", &self.partitions)
            .finish()
    }
}

impl<T: Data> OmsSource<T> {
    pub(crate) fn new(
        config: Arc<OmsSourceConfig<T>>,
        subtask: &SubtaskInfo,
        batch_size: usize,
    ) -> Self {
        let retrier = Retrier::new(
            config.retry,
            format!("source {} of queue '{}'", subtask.task_name(), config.queue),
        );
        OmsSource {
            retrier,
            watermarks: PartitionWatermarks::new(config.watermarks, 0, 0),
            config,
            subtask: subtask.clone(),
            batch_size: batch_size.max(1),
            consumer: None,
            dead_letters: None,
            partitions: Vec::new(),
            next_partition: 0,
            ready: None,
            watermark_pending: false,
            snapshots: BTreeMap::new(),
            failed: false,
            paced_since: None,
            queue_partitions: 0,
        }
    }

    /// With a maximum rate, waits until this subtask may read its next batch. Cancel-safe: the
    /// deadline is computed from what was read, not kept in the future.
    ///
    /// A subtask's share of the rate is its share of the partitions, so that every partition
    /// is read at the same pace. (An equal share per subtask read the partitions of a subtask
    /// with more of them slower: 4 partitions over 3 subtasks, two of them at half the pace of
    /// the others, so the watermark, their minimum, fell ever further behind the data.)
    async fn pace(&mut self) {
        let Some(rate) = self.config.max_rate else {
            return;
        };
        let per_subtask = rate * self.partitions.len() as f64 / self.queue_partitions.max(1) as f64;
        let (since, read) = *self
            .paced_since
            .get_or_insert_with(|| (tokio::time::Instant::now(), 0));
        let due = since + std::time::Duration::from_secs_f64(read as f64 / per_subtask);
        tokio::time::sleep_until(due).await;
    }

    fn oms_error(
        &self,
        role: QueueRole,
        action: impl Into<String>,
    ) -> impl FnOnce(crate::oms::OmsError) -> ConnectorError {
        let queue = match (role, &self.config.dead_letter) {
            (QueueRole::DeadLetter, DeadLetter::Queue(dlq)) => dlq.as_str(),
            _ => &self.config.queue,
        };
        ConnectorError::oms(queue, role, action)
    }

    /// The order to look for messages in: the partition furthest behind in event time
    /// first, ties (partitions level in event time, or none seen yet) round robin from the
    /// one after the partition read last.
    ///
    /// The subtask's watermark is the minimum over its partitions, so a partition read ahead
    /// of the others only fills the windows downstream with records that cannot fire yet.
    /// Taking turns by message count let that gap grow without bound whenever partitions
    /// hold different amounts of event time per message (uneven keys or producers, a
    /// backlog): the watermark followed the densest partition while the others ran ahead,
    /// and every key kept a pane per window in between. Reading the one behind first keeps
    /// the partitions within about one batch of each other.
    fn read_order(&self) -> Vec<usize> {
        let count = self.partitions.len();
        let mut order: Vec<usize> = (0..count).collect();
        order.sort_by_key(|&index| {
            let turn = (index + count - self.next_partition) % count;
            (self.watermarks.partition(index), turn)
        });
        order
    }

    /// Reads from the partition furthest behind in event time that has messages (see
    /// [`read_order`](Self::read_order)); waits up to [`POLL_WAIT`] when none has. `None`
    /// when nothing came. While the messaging service is out of reach, retries with backoff
    /// (the source pauses: positions stay where they were).
    ///
    /// Cancel-safe as long as the readers' `poll_batch` is: nothing is read between the
    /// awaits here and the return, and the outage being retried is kept in `self`.
    async fn read(&mut self) -> Result<Option<(usize, Vec<Message>)>, ConnectorError> {
        loop {
            match self.read_once().await {
                Ok(read) => {
                    self.retrier.succeeded("read");
                    return Ok(read);
                }
                Err((partition, error)) => {
                    let wait = self
                        .retrier
                        .failed("read", error)
                        .map_err(read_error(&self.config.queue, partition))?;
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One attempt of [`read`](Self::read); an error names the partition it came from.
    async fn read_once(&mut self) -> Result<Option<(usize, Vec<Message>)>, (i32, OmsError)> {
        let count = self.partitions.len();
        let batch_size = self.batch_size;
        // First take what is there already, from the partition furthest behind. One without
        // messages now does not hold the others up: the next in the order is read instead.
        for index in self.read_order() {
            let cursor = &mut self.partitions[index];
            let Some(max) = cursor.room(batch_size) else {
                continue;
            };
            let messages = cursor
                .reader
                .poll_batch(max, Duration::ZERO)
                .await
                .map_err(|error| (cursor.partition, error))?;
            if !messages.is_empty() {
                self.next_partition = (index + 1) % count;
                return Ok(Some((index, messages)));
            }
            // Messages the reader passed over (expired ones) move the position too.
            cursor.position = cursor.reader_position();
        }
        // Nothing anywhere: wait for the first partition that gets something.
        let waits: Vec<_> = self
            .partitions
            .iter_mut()
            .enumerate()
            .filter_map(|(index, cursor)| {
                let max = cursor.room(batch_size)?;
                let partition = cursor.partition;
                let reader = &mut cursor.reader;
                Some(
                    async move { (index, partition, reader.poll_batch(max, POLL_WAIT).await) }
                        .boxed(),
                )
            })
            .collect();
        if waits.is_empty() {
            return Ok(None);
        }
        let ((index, partition, result), _, rest) = futures::future::select_all(waits).await;
        drop(rest);
        let messages = result.map_err(|error| (partition, error))?;
        if messages.is_empty() {
            let cursor = &mut self.partitions[index];
            cursor.position = cursor.reader_position();
            return Ok(None);
        }
        self.next_partition = (index + 1) % count;
        Ok(Some((index, messages)))
    }

    /// Decodes what partition `index` returned into a batch ready to emit.
    fn decode(&mut self, index: usize, messages: Vec<Message>, now: EventTime) -> ReadyBatch<T> {
        let cursor = &self.partitions[index];
        let end = cursor.end;
        let origin = Origin {
            queue: &self.config.queue,
            partition: cursor.partition,
            operator: &self.subtask.operator,
        };
        let mut batch = Vec::with_capacity(messages.len());
        let mut dead = Vec::new();
        let mut skipped = 0;
        for message in messages {
            if let (Some(end), Some(offset)) = (end, message.offset()) {
                if offset >= end {
                    break;
                }
            }
            match self.config.decoder.decode(&message) {
                Ok(value) => {
                    let timestamp = self.config.event_time.of(&message, &value, now);
                    self.watermarks.observe(index, timestamp, now);
                    batch.push(Record::new(timestamp, value));
                }
                Err(reason) => {
                    let reason = reason.to_string();
                    match &self.dead_letters {
                        Some(dlq) => dead.push(dead_letter(&dlq.queue, message, &reason, &origin)),
                        None => {
                            if skipped == 0 {
                                tracing::warn!(
                                    queue = origin.queue,
                                    partition = origin.partition,
                                    offset = message.offset(),
                                    %reason,
                                    "skipping a message that cannot be decoded"
                                );
                            }
                            skipped += 1;
                        }
                    }
                }
            }
        }
        self.config.metrics.add_skipped(skipped);
        ReadyBatch {
            index,
            batch,
            position: cursor.reader_position(),
            dead,
        }
    }

    /// Sends the ready batch's dead letters. They are cleared only once stored, so a poll
    /// cancelled during the send sends them again: dead letters are at-least-once.
    async fn send_dead_letters(&mut self) -> Result<(), ConnectorError> {
        let (Some(ready), Some(dlq)) = (self.ready.as_mut(), self.dead_letters.as_ref()) else {
            return Ok(());
        };
        if ready.dead.is_empty() {
            return Ok(());
        }
        let count = ready.dead.len();
        // Bodies are shared bytes: the clone copies headers, not payloads.
        let dead = &ready.dead;
        self.retrier
            .run("send dead letters", || {
                dlq.producer.send_batch(dead.clone())
            })
            .await
            .map_err(|source| ConnectorError::DeadLetter {
                queue: dlq.queue.to_string(),
                count,
                source,
            })?;
        tracing::warn!(
            queue = %self.config.queue,
            dead_letter_queue = %dlq.queue,
            count,
            "sent messages that cannot be decoded to the dead-letter queue"
        );
        self.config.metrics.add_dead_lettered(count);
        ready.dead.clear();
        Ok(())
    }

    /// What to emit about time at `now`, if anything.
    fn watermark_output(&mut self, now: EventTime) -> Option<SourceOutput<T>> {
        match self.watermarks.current(now) {
            WatermarkUpdate::Advanced(watermark) => Some(SourceOutput::Watermark(watermark)),
            WatermarkUpdate::Idle => Some(SourceOutput::Idle),
            WatermarkUpdate::Unchanged => None,
        }
    }

    /// Whether a bounded source read every partition to its end.
    fn finished(&self) -> bool {
        self.config.bounded && self.partitions.iter().all(|c| c.room(1).is_none())
    }

    async fn poll_inner(&mut self, ctx: &SourceContext) -> Result<SourceOutput<T>, ConnectorError> {
        if self.ready.is_none() {
            let now = ctx.clock.now();
            if std::mem::take(&mut self.watermark_pending) {
                if let Some(output) = self.watermark_output(now) {
                    return Ok(output);
                }
            }
            if self.finished() {
                return Ok(SourceOutput::Finished);
            }
            if self.partitions.is_empty() {
                // An unbounded subtask with no partition: idle, and polled at a calm pace.
                if let Some(output) = self.watermark_output(now) {
                    return Ok(output);
                }
                tokio::time::sleep(POLL_WAIT).await;
                return Ok(SourceOutput::NoData);
            }
            self.pace().await;
            match self.read().await? {
                Some((index, messages)) => {
                    if let Some((_, read)) = &mut self.paced_since {
                        *read += messages.len() as u64;
                    }
                    let ready = self.decode(index, messages, ctx.clock.now());
                    self.ready = Some(ready);
                }
                None => {
                    return Ok(self
                        .watermark_output(ctx.clock.now())
                        .unwrap_or(SourceOutput::NoData));
                }
            }
        }
        self.send_dead_letters().await?;
        let Some(ready) = self.ready.take() else {
            return Ok(SourceOutput::NoData);
        };
        self.partitions[ready.index].position = ready.position;
        if ready.batch.is_empty() {
            return Ok(SourceOutput::NoData);
        }
        self.config.metrics.add_records(ready.batch.len());
        self.watermark_pending = true;
        Ok(SourceOutput::Data(ready.batch))
    }

    /// Commits `positions` (one per cursor) to the group, skipping unchanged ones.
    async fn commit(&mut self, positions: &[i64]) -> Result<(), ConnectorError> {
        let Some(consumer) = self.consumer.clone() else {
            return Ok(());
        };
        for (cursor, &position) in self.partitions.iter_mut().zip(positions) {
            if cursor.committed == Some(position) {
                continue;
            }
            consumer
                .commit(&self.config.queue, cursor.partition, position)
                .await
                .map_err(ConnectorError::oms(
                    &self.config.queue,
                    QueueRole::Source,
                    format!(
                        "commit offset {position} of partition {} of",
                        cursor.partition
                    ),
                ))?;
            cursor.committed = Some(position);
        }
        Ok(())
    }

    fn positions(&self) -> Vec<i64> {
        self.partitions.iter().map(|c| c.position).collect()
    }
}

/// Where partition `partition` of the source's queue starts.
async fn seek_position<T>(
    config: &OmsSourceConfig<T>,
    consumer: &dyn StreamingConsumer,
    partition: i32,
) -> Result<SeekPosition, OmsError> {
    Ok(match &config.start {
        StartPosition::Beginning => SeekPosition::Beginning,
        StartPosition::End => SeekPosition::End,
        StartPosition::Timestamp(t) => SeekPosition::Timestamp(*t),
        StartPosition::Committed { fallback } => consumer
            .committed(&config.queue, partition)
            .await?
            .map_or(fallback.seek(), SeekPosition::Offset),
        StartPosition::Offsets { offsets, fallback } => offsets
            .get(&partition)
            .map_or(fallback.seek(), |o| SeekPosition::Offset(*o)),
    })
}

fn read_error(queue: &str, partition: i32) -> impl FnOnce(crate::oms::OmsError) -> ConnectorError {
    ConnectorError::oms(
        queue,
        QueueRole::Source,
        format!("read partition {partition} of"),
    )
}

#[async_trait]
impl<T: Data> Source<T> for OmsSource<T> {
    /// Connects, takes this subtask's share of the partitions and seeks each; for a bounded
    /// source, notes each partition's end offset first.
    async fn open(&mut self, ctx: &SourceContext) -> Result<(), BoxError> {
        let config = self.config.clone();
        let queue = config.queue.as_str();
        let mut attributes = KeyValue::new();
        if let Some(group) = &config.group {
            attributes.put(keyvalue::CONSUMER_ID, group);
        }
        let consumer = config
            .access_point
            .create_streaming_consumer(attributes)
            .await
            .map_err(self.oms_error(QueueRole::Source, "create a streaming consumer for"))?;
        // A service out of reach at start is waited for, with backoff and a log line per
        // outage (see `RetryPolicy`).
        let retrier = &mut self.retrier;
        retrier
            .run("start a streaming consumer", || consumer.start())
            .await
            .map_err(ConnectorError::oms(
                queue,
                QueueRole::Source,
                "start a streaming consumer for",
            ))?;
        let all = retrier
            .run("list the partitions", || consumer.partitions(queue))
            .await
            .map_err(ConnectorError::oms(
                queue,
                QueueRole::Source,
                "list the partitions of",
            ))?;
        self.queue_partitions = all.len();
        let mine = assigned_partitions(
            all.into_iter().map(|p| p.partition_id).collect(),
            self.subtask.index,
            self.subtask.parallelism,
        );
        for &partition in &mine {
            let on_partition = |action: &str| {
                ConnectorError::oms(
                    queue,
                    QueueRole::Source,
                    format!("{action} partition {partition} of"),
                )
            };
            let end = if config.bounded {
                let (_, end) = self
                    .retrier
                    .run("read an end offset", || {
                        consumer.offset_range(queue, partition)
                    })
                    .await
                    .map_err(on_partition("read the end offset of"))?;
                Some(end)
            } else {
                None
            };
            // A restored checkpoint decides where a partition it knows resumes.
            let restored = ctx.restored.as_ref().and_then(|positions| {
                positions
                    .iter()
                    .find(|(q, p, _)| q == queue && *p == partition)
                    .map(|&(_, _, offset)| offset)
            });
            let seek = match restored {
                Some(offset) => SeekPosition::Offset(offset),
                None => self
                    .retrier
                    .run("read a committed offset", || {
                        seek_position(&config, consumer.as_ref(), partition)
                    })
                    .await
                    .map_err(on_partition("read the committed offset of"))?,
            };
            let reader = self
                .retrier
                .run("open a partition", || consumer.open(queue, partition, seek))
                .await
                .map_err(on_partition("open"))?;
            let position = reader.position();
            self.partitions.push(PartitionCursor {
                partition,
                reader,
                position,
                end,
                committed: None,
            });
        }
        if let DeadLetter::Queue(dlq) = &config.dead_letter {
            let resources = config
                .access_point
                .resource_manager()
                .await
                .map_err(self.oms_error(QueueRole::DeadLetter, "look up"))?;
            self.retrier
                .run("look up the dead-letter queue", || {
                    resources.describe_queue(dlq)
                })
                .await
                .map_err(self.oms_error(QueueRole::DeadLetter, "look up"))?;
            let producer = config
                .access_point
                .create_producer(KeyValue::new())
                .await
                .map_err(self.oms_error(QueueRole::DeadLetter, "create a producer for"))?;
            self.retrier
                .run("start the dead-letter producer", || producer.start())
                .await
                .map_err(self.oms_error(QueueRole::DeadLetter, "start a producer for"))?;
            self.dead_letters = Some(DeadLetterQueue {
                queue: Arc::from(dlq.as_str()),
                producer,
            });
        }
        self.watermarks = PartitionWatermarks::new(config.watermarks, mine.len(), ctx.clock.now());
        self.consumer = Some(consumer);
        tracing::debug!(
            task = %self.subtask.task_name(),
            queue,
            partitions = ?mine,
            positions = ?self.positions(),
            bounded = config.bounded,
            "OMS source opened"
        );
        Ok(())
    }

    async fn poll(&mut self, ctx: &SourceContext) -> Result<SourceOutput<T>, BoxError> {
        let output = self.poll_inner(ctx).await;
        if output.is_err() {
            self.failed = true;
        }
        Ok(output?)
    }

    async fn snapshot(&mut self, barrier: &CheckpointBarrier) -> Result<SourcePositions, BoxError> {
        let positions = self.positions();
        if self.config.commit_policy().is_some() {
            self.snapshots.insert(barrier.epoch, positions.clone());
        }
        Ok(self
            .partitions
            .iter()
            .zip(positions)
            .map(|(cursor, position)| (self.config.queue.clone(), cursor.partition, position))
            .collect())
    }

    /// Commits the positions of the latest snapshot at or before `epoch`. A failed commit is
    /// logged, not fatal: the checkpoint holds the positions, and the next commit covers it.
    async fn on_checkpoint_complete(&mut self, epoch: u64) -> Result<(), BoxError> {
        let later = self.snapshots.split_off(&(epoch.saturating_add(1)));
        let done = std::mem::replace(&mut self.snapshots, later);
        if let Some((_, positions)) = done.into_iter().next_back() {
            if let Err(err) = self.commit(&positions).await {
                tracing::warn!(%err, epoch, "committing the positions of a completed checkpoint failed");
            }
        }
        Ok(())
    }

    /// The job succeeded, so everything emitted was written: commit the positions reached,
    /// when the policy says so (a failed commit here is an error: there is no later chance).
    async fn on_job_success(&mut self) -> Result<(), BoxError> {
        if !self.failed && self.config.commit_policy() == Some(CommitPolicy::OnCheckpointAndJobEnd)
        {
            let positions = self.positions();
            self.commit(&positions).await?;
        }
        Ok(())
    }

    /// Disconnects.
    async fn close(&mut self) -> Result<(), BoxError> {
        if let Some(dlq) = &self.dead_letters {
            if let Err(err) = dlq.producer.stop().await {
                tracing::warn!(%err, "stopping the dead-letter producer failed");
            }
        }
        if let Some(consumer) = &self.consumer {
            if let Err(err) = consumer.stop().await {
                tracing::warn!(%err, "stopping the streaming consumer failed");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::EventTimeFrom;
    use crate::oms::embedded::EMBEDDED_DIR;
    use crate::oms::{connect, MessagingAccessPoint, QueueConfig};
    use crate::runtime::{ProcessingClock, WatermarkStrategy};

    /// A store with queue `q` of `partitions`, holding `(partition, event time)` messages.
    async fn queue(
        partitions: u32,
        messages: &[(i32, i64)],
    ) -> (tempfile::TempDir, Arc<dyn MessagingAccessPoint>) {
        let dir = tempfile::tempdir().unwrap();
        let attrs = KeyValue::new().with(EMBEDDED_DIR, dir.path().display());
        let ap = connect("oms:embedded://localhost/source", attrs)
            .await
            .unwrap();
        let resources = ap.resource_manager().await.unwrap();
        resources
            .create_queue("q", QueueConfig::with_partitions(partitions))
            .await
            .unwrap();
        let producer = ap.create_producer(KeyValue::new()).await.unwrap();
        producer.start().await.unwrap();
        let batch = messages
            .iter()
            .map(|(p, t)| Message::new("q", t.to_string()).with_partition(*p))
            .collect();
        producer.send_batch(batch).await.unwrap();
        (dir, ap)
    }

    fn context(index: usize, parallelism: usize) -> SourceContext {
        SourceContext {
            subtask: SubtaskInfo::new("src", index, parallelism),
            clock: ProcessingClock::start(),
            restored: None,
        }
    }

    fn config(ap: &Arc<dyn MessagingAccessPoint>) -> OmsSourceConfig<i64> {
        OmsSourceConfig::<i64>::new(ap.clone(), "q")
            .event_time(EventTimeFrom::extract(|v: &i64| *v))
            .watermarks(WatermarkStrategy::default().with_idle_timeout(None))
            .bounded(true)
    }

    /// Polls a bounded source to its end: every output, in order.
    async fn drain(source: &mut OmsSource<i64>, ctx: &SourceContext) -> Vec<SourceOutput<i64>> {
        let mut outputs = Vec::new();
        for _ in 0..100_000 {
            match source.poll(ctx).await.unwrap() {
                SourceOutput::Finished => return outputs,
                output => outputs.push(output),
            }
        }
        panic!("the bounded source did not finish");
    }

    /// Regression: partitions holding different amounts of event time per message, read in
    /// turns by message count, drifted apart without bound, and the watermark (the slowest
    /// partition's) with them: every key downstream kept a window per 10 s of the gap.
    #[tokio::test]
    async fn partitions_are_read_level_in_event_time_so_the_watermark_keeps_up() {
        // The same 200 s of event time: 10 ms apart in partition 0, 100 ms in partition 1.
        let mut messages: Vec<(i32, i64)> = (0..20_000).map(|i| (0, i * 10)).collect();
        messages.extend((0..2_000).map(|i| (1, i * 100)));
        let (_dir, ap) = queue(2, &messages).await;
        let ctx = context(0, 1);
        let mut source = OmsSource::new(Arc::new(config(&ap)), &ctx.subtask, 100);
        source.open(&ctx).await.unwrap();
        // How far the newest record is ahead of the watermark, at each batch.
        let (mut newest, mut watermark, mut lag, mut records) = (i64::MIN, i64::MIN, 0, 0);
        for output in drain(&mut source, &ctx).await {
            match output {
                SourceOutput::Data(batch) => {
                    records += batch.len();
                    newest = batch.iter().map(|r| r.timestamp).fold(newest, i64::max);
                    if watermark > i64::MIN {
                        lag = lag.max(newest - watermark);
                    }
                }
                SourceOutput::Watermark(w) => watermark = w,
                _ => {}
            }
        }
        assert_eq!(records, 22_000);
        assert_eq!(watermark, 199_899, "partition 1's last record, less 1 ms");
        // A batch of partition 1 spans 10 s: the partitions stay within about that. (In
        // turns, partition 1 was read to its end while partition 0 was at 20 s: 180 s.)
        assert!(lag <= 11_000, "the watermark fell {lag} ms behind the data");
    }

    /// Regression: the rate was split evenly over subtasks, so with 4 partitions over 3
    /// subtasks the two partitions of subtask 0 were read at half the pace of the others.
    #[tokio::test(start_paused = true)]
    async fn a_maximum_rate_reads_every_partition_at_the_same_pace() {
        let messages: Vec<(i32, i64)> = (0..1_200).map(|i| ((i % 4) as i32, i)).collect();
        let (_dir, ap) = queue(4, &messages).await;
        let mut elapsed = Vec::new();
        for index in 0..3 {
            // 400 records a second in all: 100 per partition.
            let config = Arc::new(config(&ap).max_rate(400.0));
            let ctx = context(index, 3);
            let mut source = OmsSource::new(config, &ctx.subtask, 100);
            source.open(&ctx).await.unwrap();
            let started = tokio::time::Instant::now();
            let outputs = drain(&mut source, &ctx).await;
            let read: usize = outputs
                .iter()
                .map(|o| match o {
                    SourceOutput::Data(batch) => batch.len(),
                    _ => 0,
                })
                .sum();
            elapsed.push((read, started.elapsed().as_millis()));
        }
        // 300 records per partition, 100 a batch, 100 a second per partition: the third batch
        // of partition 1 (subtask 1) is due at 2 s. Subtask 0 reads partitions 0 and 3 in
        // turns at 200 a second: its sixth batch at 2.5 s. (Split evenly, 133 a second per
        // subtask: subtask 0 took 3.75 s, the others 1.5 s.)
        assert_eq!(elapsed, [(600, 2_500), (300, 2_000), (300, 2_000)]);
    }
}
