//! Streaming consumers: each partition read by offset with RocketMQ's pull API (the reader
//! keeps its own offset, so a checkpoint can record it and a restore seek it), and the consumer
//! group's committed offsets kept on the broker.
//!
//! The reads use the classic pull consumer, which the client marks deprecated in favour of
//! the lite pull consumer. The lite consumer prefetches from the offsets it tracks itself;
//! the classic one pulls exactly the offset asked for, which is what a reader whose position
//! a checkpoint records needs, so it is used on purpose.
#![allow(deprecated)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rocketmq_client_rust::{
    ClientError, DefaultLitePullConsumer, DefaultMQPullConsumer, MessageSelector, PullOptions,
    ReadOffsetType,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_model::result::PullStatus;
use tokio::sync::Mutex;

use super::access_point::Settings;
use super::error::oms_error;
use super::header::{topic_of, Decoder};
use super::resource::explain_missing_route;
use super::runtime::driver_runtime;
use crate::oms::{
    now_millis, LifecycleCell, Message, OmsError, OmsErrorKind, OmsStatus, PartitionReader,
    QueueMetaData, Result, SeekPosition, ServiceLifeState, ServiceLifecycle, StreamingConsumer,
};

/// The longest a pull waits at the broker for new messages. Short, because a consumer being
/// shut down waits for its pulls in flight.
const LONG_POLL: Duration = Duration::from_secs(1);

/// Numbers the private groups of consumers created without `CONSUMER_ID`.
static READERS: AtomicU64 = AtomicU64::new(0);

/// A streaming consumer: a pull consumer for reads, and (with a group) a lite pull consumer
/// whose offset store writes the group's offsets to the broker.
pub(crate) struct RocketMqStreamingConsumer {
    settings: Arc<Settings>,
    group: Option<String>,
    pull: DefaultMQPullConsumer,
    offsets: Option<DefaultLitePullConsumer>,
    /// Each topic's message queues, by queue id.
    queues: Mutex<HashMap<String, Vec<MessageQueue>>>,
    state: LifecycleCell,
}

impl std::fmt::Debug for RocketMqStreamingConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocketMqStreamingConsumer")
            .field("name_servers", &self.settings.name_servers)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl RocketMqStreamingConsumer {
    pub(crate) fn new(settings: Arc<Settings>, group: Option<String>) -> Result<Self> {
        let runtime = driver_runtime()?;
        let reader_group = match &group {
            Some(group) => format!("{group}_reader"),
            None => format!(
                "omstream_reader_{}_{}",
                std::process::id(),
                READERS.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let error = |e| oms_error("create a consumer", &settings.name_servers, e);
        let pull = DefaultMQPullConsumer::builder(runtime.client())
            .consumer_group(reader_group.as_str())
            .name_server_addr(settings.name_servers.as_str())
            .consumer_pull_timeout(Duration::from_millis(settings.timeout_ms))
            .build()
            .map_err(error)?;
        let offsets = match &group {
            Some(group) => Some(
                DefaultLitePullConsumer::builder(runtime.client())
                    .consumer_group(group.as_str())
                    .name_server_addr(settings.name_servers.as_str())
                    .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
                    .auto_commit(false)
                    .build()
                    .map_err(error)?,
            ),
            None => None,
        };
        Ok(RocketMqStreamingConsumer {
            settings,
            group,
            pull,
            offsets,
            queues: Mutex::new(HashMap::new()),
            state: LifecycleCell::new(ServiceLifeState::Initialized),
        })
    }

    fn error(&self, action: String) -> impl FnOnce(ClientError) -> OmsError {
        let servers = self.settings.name_servers.clone();
        move |e| oms_error(&action, &servers, e)
    }

    /// The message queues of the topic of `queue`, by queue id.
    async fn message_queues(&self, queue: &str) -> Result<Vec<MessageQueue>> {
        self.state.ensure_started("the streaming consumer")?;
        let topic = topic_of(queue)?;
        if let Some(queues) = self.queues.lock().await.get(&topic) {
            return Ok(queues.clone());
        }
        let pull = self.pull.clone();
        let offsets = self.offsets.clone();
        let name = topic.clone();
        let found = driver_runtime()?
            .run(async move {
                if let Some(offsets) = &offsets {
                    // Loads the route the group's offset store needs.
                    offsets.fetch_message_queues(&name).await?;
                }
                pull.fetch_subscribe_message_queues(&name).await
            })
            .await?
            .map_err(|e| {
                let error = oms_error(
                    &format!("find the partitions of topic '{topic}'"),
                    &self.settings.name_servers,
                    e,
                );
                if error.status() == OmsStatus::DESTINATION_NOT_FOUND
                    || error.message().contains("core.argument.invalid")
                {
                    OmsError::destination_not_found(queue)
                } else {
                    error
                }
            });
        let mut queues = match found {
            Ok(queues) => queues,
            Err(error) => return Err(explain_missing_route(&self.settings, queue, error).await),
        };
        queues.sort_by_key(|q| (q.queue_id(), q.broker_name().to_string()));
        self.queues.lock().await.insert(topic, queues.clone());
        Ok(queues)
    }

    async fn message_queue(&self, queue: &str, partition: i32) -> Result<MessageQueue> {
        self.message_queues(queue)
            .await?
            .into_iter()
            .find(|q| q.queue_id() == partition)
            .ok_or_else(|| {
                OmsError::bad_parameter(format!("queue '{queue}' has no partition {partition}"))
            })
    }

    async fn range(&self, mq: &MessageQueue) -> Result<(i64, i64)> {
        let pull = self.pull.clone();
        let target = mq.clone();
        driver_runtime()?
            .run(async move {
                let min = pull.min_offset(&target).await?;
                let max = pull.max_offset(&target).await?;
                Ok((min, max))
            })
            .await?
            .map_err(self.error(format!("read the offsets of {}", describe(mq))))
    }

    fn offset_store_error(&self) -> OmsError {
        OmsError::bad_parameter(
            "committed offsets belong to a consumer group: create the consumer with CONSUMER_ID",
        )
    }
}

fn describe(mq: &MessageQueue) -> String {
    format!(
        "topic '{}' queue {} on {}",
        mq.topic_str(),
        mq.queue_id(),
        mq.broker_name()
    )
}

#[async_trait]
impl ServiceLifecycle for RocketMqStreamingConsumer {
    async fn start(&self) -> Result<()> {
        let pull = self.pull.clone();
        let offsets = self.offsets.clone();
        driver_runtime()?
            .run(async move {
                pull.start().await?;
                if let Some(offsets) = offsets {
                    offsets.start().await?;
                }
                Ok(())
            })
            .await?
            .map_err(self.error("start a consumer".to_string()))?;
        self.state.set(ServiceLifeState::Started);
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        let pull = self.pull.clone();
        let offsets = self.offsets.clone();
        driver_runtime()?
            .run(async move {
                let _ = pull.shutdown().await;
                if let Some(offsets) = offsets {
                    offsets.shutdown().await;
                }
            })
            .await?;
        self.state.set(ServiceLifeState::Stopped);
        Ok(())
    }

    fn current_state(&self) -> ServiceLifeState {
        self.state.get()
    }
}

#[async_trait]
impl StreamingConsumer for RocketMqStreamingConsumer {
    async fn partitions(&self, queue: &str) -> Result<Vec<QueueMetaData>> {
        Ok(self
            .message_queues(queue)
            .await?
            .iter()
            .map(|q| QueueMetaData {
                queue_name: queue.to_string(),
                partition_id: q.queue_id(),
            })
            .collect())
    }

    async fn open(
        &self,
        queue: &str,
        partition: i32,
        position: SeekPosition,
    ) -> Result<Box<dyn PartitionReader>> {
        let mq = self.message_queue(queue, partition).await?;
        let (min, max) = self.range(&mq).await?;
        let offset = match position {
            SeekPosition::Beginning => min,
            SeekPosition::End => max,
            SeekPosition::Offset(offset) => offset.clamp(min, max),
            SeekPosition::Timestamp(at) => self
                .offset_for_timestamp(queue, partition, at)
                .await?
                .unwrap_or(max),
        };
        Ok(Box::new(RocketMqReader {
            pull: self.pull.clone(),
            name_servers: self.settings.name_servers.clone(),
            timeout_ms: self.settings.timeout_ms,
            queue: queue.into(),
            store_host: mq.broker_name().as_str().into(),
            mq,
            offset,
            decoder: Decoder::default(),
        }))
    }

    async fn offset_for_timestamp(
        &self,
        queue: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<Option<i64>> {
        let mq = self.message_queue(queue, partition).await?;
        let (min, max) = self.range(&mq).await?;
        if max <= min {
            return Ok(None);
        }
        let pull = self.pull.clone();
        let target = mq.clone();
        let found = driver_runtime()?
            .run(async move { pull.search_offset(&target, timestamp.max(0) as u64).await })
            .await?
            .map_err(self.error(format!("search the offsets of {}", describe(&mq))))?;
        Ok((found < max).then_some(found.max(min)))
    }

    async fn offset_range(&self, queue: &str, partition: i32) -> Result<(i64, i64)> {
        let mq = self.message_queue(queue, partition).await?;
        self.range(&mq).await
    }

    async fn commit(&self, queue: &str, partition: i32, offset: i64) -> Result<()> {
        let Some(offsets) = self.offsets.clone() else {
            return Err(self.offset_store_error());
        };
        let mq = self.message_queue(queue, partition).await?;
        let target = mq.clone();
        driver_runtime()?
            .run(async move {
                match offsets.offset_store().await {
                    Some(store) => store
                        .update_consume_offset_to_broker(&target, offset, false)
                        .await
                        .map(|_| true),
                    None => Ok(false),
                }
            })
            .await?
            .map_err(self.error(format!("commit offset {offset} of {}", describe(&mq))))?
            .then_some(())
            .ok_or_else(|| {
                OmsError::storage("the RocketMQ consumer has no offset store; start it first")
            })
    }

    async fn committed(&self, queue: &str, partition: i32) -> Result<Option<i64>> {
        let Some(offsets) = self.offsets.clone() else {
            return Err(self.offset_store_error());
        };
        let mq = self.message_queue(queue, partition).await?;
        let offset = driver_runtime()?
            .run(async move {
                match offsets.offset_store().await {
                    Some(store) => store.read_offset(&mq, ReadOffsetType::ReadFromStore).await,
                    None => -2,
                }
            })
            .await?;
        match offset {
            -2 => Err(OmsError::new(
                OmsErrorKind::Runtime,
                OmsStatus::SERVICE_NOT_AVAILABLE,
                format!(
                    "cannot read the committed offset of queue '{queue}' partition {partition} from the broker \
                     (name servers {}); check that the broker runs",
                    self.settings.name_servers
                ),
            )),
            offset if offset < 0 => Ok(None),
            offset => Ok(Some(offset)),
        }
    }
}

/// Reads one message queue from its own offset.
pub(crate) struct RocketMqReader {
    pull: DefaultMQPullConsumer,
    name_servers: String,
    timeout_ms: u64,
    queue: Arc<str>,
    store_host: Arc<str>,
    mq: MessageQueue,
    offset: i64,
    decoder: Decoder,
}

impl std::fmt::Debug for RocketMqReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocketMqReader")
            .field("queue", &self.queue)
            .field("partition", &self.mq.queue_id())
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl RocketMqReader {
    /// One pull: what the broker has from the reader's offset, waiting up to `wait` (held by
    /// the broker) when it has nothing.
    async fn pull_once(&mut self, max: usize, wait: Duration) -> Result<Vec<Message>> {
        let pull = self.pull.clone();
        let mq = self.mq.clone();
        let offset = self.offset;
        let max = max.clamp(1, 1024) as i32;
        let timeout = Duration::from_millis(self.timeout_ms) + wait;
        let result = driver_runtime()?
            .run(async move {
                // The broker holds a pull that finds nothing for up to `wait` (at least 1 ms:
                // the client refuses 0).
                let options = PullOptions::new(mq, MessageSelector::by_tag("*"), offset, max)?
                    .timeout(timeout)
                    .broker_suspend_timeout(wait.max(Duration::from_millis(1)))
                    .block_if_not_found(!wait.is_zero());
                pull.pull_with_options(options).await
            })
            .await?
            .map_err(|e| {
                oms_error(
                    &format!("read {}", describe(&self.mq)),
                    &self.name_servers,
                    e,
                )
            })?;
        match result.pull_status() {
            PullStatus::Found => {
                let now = now_millis();
                let found = result.msg_found_list().unwrap_or_default();
                let mut messages = Vec::with_capacity(found.len());
                for ext in found {
                    let message = self.decoder.message(ext, &self.queue, &self.store_host);
                    // Expired messages are skipped, as the spec's expireTime asks.
                    if message
                        .extension_header
                        .expire_time
                        .is_none_or(|at| at > now)
                    {
                        messages.push(message);
                    }
                }
                self.offset = result.next_begin_offset() as i64;
                Ok(messages)
            }
            PullStatus::NoNewMsg | PullStatus::NoMatchedMsg => {
                self.offset = (result.next_begin_offset() as i64).max(self.offset);
                Ok(Vec::new())
            }
            PullStatus::OffsetIllegal => {
                let next = result.next_begin_offset() as i64;
                tracing::warn!(
                    queue = %self.queue,
                    partition = self.mq.queue_id(),
                    offset = self.offset,
                    next,
                    "the offset is outside what the broker keeps; reading on from the nearest kept one"
                );
                self.offset = next;
                Ok(Vec::new())
            }
        }
    }
}

#[async_trait]
impl PartitionReader for RocketMqReader {
    fn queue(&self) -> &str {
        &self.queue
    }

    fn partition(&self) -> i32 {
        self.mq.queue_id()
    }

    fn position(&self) -> i64 {
        self.offset
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<Message>> {
        loop {
            let batch = self.pull_once(max, LONG_POLL).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }

    async fn poll_batch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Message>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let batch = self.pull_once(max, left.min(LONG_POLL)).await?;
            if !batch.is_empty() || left.is_zero() {
                return Ok(batch);
            }
        }
    }
}
