//! Pull consumers: a consumer group's competing consumption of topics, with per-message
//! acknowledgement and redelivery.
//!
//! RocketMQ's lite pull consumer does the group's part: it subscribes to the bound topics,
//! and the group's live consumers split the topics' message queues between them (rebalanced
//! as consumers come and go). This driver adds what OMS asks on top:
//!
//! - **Acknowledgement.** Every message handed out is *in flight* until acknowledged. The
//!   offset committed to the group (on the broker) for a message queue is its lowest offset
//!   not yet acknowledged, so a consumer that dies, or a queue that moves to another consumer,
//!   redelivers exactly the unacknowledged messages (and none acknowledged before them).
//! - **Redelivery.** A message not acknowledged within the ack timeout
//!   ([`ROCKETMQ_ACK_TIMEOUT_MS`](super::ROCKETMQ_ACK_TIMEOUT_MS), default 30 s) is handed
//!   out again with `deliveryCount` one higher.
//!
//! Delivery is at least once: after a rebalance, the new owner of a queue redelivers what its
//! former owner had in flight, while the former owner may still redeliver its own copy.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rocketmq_client_rust::DefaultLitePullConsumer;
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_queue::MessageQueue;
use tokio::time::Instant;

use super::access_point::Settings;
use super::error::oms_error;
use super::header::{queue_of, topic_of, Decoder};
use super::resource::explain_missing_route;
use super::runtime::driver_runtime;
use crate::oms::{
    now_millis, LifecycleCell, Message, MessageReceipt, OmsError, OmsErrorKind, OmsStatus,
    PullConsumer, Result, ServiceLifeState, ServiceLifecycle,
};

/// The longest one poll of the lite consumer waits, so that redeliveries due in the meantime
/// are not held up.
const POLL_SLICE: Duration = Duration::from_millis(200);

/// The longest the broker holds a pull that finds nothing.
const BROKER_HOLD: Duration = Duration::from_secs(1);

/// How long a stop waits for the client to shut down.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// Numbers the client instances of pull consumers.
static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// A message handed out and not acknowledged.
#[derive(Debug)]
struct InFlight {
    message: Message,
    deadline: Instant,
    deliveries: u32,
}

/// What the consumer knows of one message queue.
#[derive(Debug, Default)]
struct QueueState {
    /// Handed out, by offset.
    in_flight: BTreeMap<i64, InFlight>,
    /// Polled, not handed out yet (they hold the committed offset back too).
    waiting: usize,
    /// The offset after the last message polled.
    next: Option<i64>,
    /// The offset last committed to the broker.
    committed: Option<i64>,
}

impl QueueState {
    /// The offset to commit: the lowest one still owed to the group.
    fn low_water(&self, lowest_waiting: Option<i64>) -> Option<i64> {
        let in_flight = self.in_flight.keys().next().copied();
        [in_flight, lowest_waiting]
            .into_iter()
            .flatten()
            .min()
            .or(self.next)
    }
}

#[derive(Debug, Default)]
struct Tracker {
    bound: Vec<String>,
    queues: HashMap<MessageQueue, QueueState>,
    /// Polled messages not handed out yet, in poll order.
    ready: VecDeque<(MessageQueue, Message)>,
}

impl Tracker {
    fn lowest_waiting(&self, mq: &MessageQueue) -> Option<i64> {
        self.ready
            .iter()
            .filter(|(q, _)| q == mq)
            .filter_map(|(_, m)| m.offset())
            .min()
    }

    /// Up to `max` messages due: redeliveries first (the oldest), then fresh ones.
    fn take(&mut self, max: usize, ack_timeout: Duration) -> Vec<Message> {
        let now = Instant::now();
        let mut out = Vec::new();
        for state in self.queues.values_mut() {
            for flight in state.in_flight.values_mut() {
                if out.len() >= max {
                    return out;
                }
                if flight.deadline <= now {
                    flight.deliveries += 1;
                    flight.deadline = now + ack_timeout;
                    let mut message = flight.message.clone();
                    message.extension_header.delivery_count = flight.deliveries;
                    out.push(message);
                }
            }
        }
        while out.len() < max {
            let Some((mq, message)) = self.ready.pop_front() else {
                break;
            };
            let state = self.queues.entry(mq).or_default();
            state.waiting = state.waiting.saturating_sub(1);
            let offset = message.offset().unwrap_or_default();
            state.in_flight.insert(
                offset,
                InFlight {
                    message: message.clone(),
                    deadline: now + ack_timeout,
                    deliveries: 1,
                },
            );
            out.push(message);
        }
        out
    }
}

/// A pull consumer of a consumer group.
pub(crate) struct RocketMqPullConsumer {
    settings: Arc<Settings>,
    group: String,
    lite: DefaultLitePullConsumer,
    ack_timeout: Duration,
    tracker: Mutex<Tracker>,
    state: LifecycleCell,
}

impl std::fmt::Debug for RocketMqPullConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocketMqPullConsumer")
            .field("name_servers", &self.settings.name_servers)
            .field("group", &self.group)
            .field("ack_timeout", &self.ack_timeout)
            .finish_non_exhaustive()
    }
}

impl RocketMqPullConsumer {
    pub(crate) fn new(
        settings: Arc<Settings>,
        group: String,
        ack_timeout: Duration,
    ) -> Result<Self> {
        let runtime = driver_runtime()?;
        // A client instance of its own: the client pools instances by name, and an instance
        // reused after an earlier consumer of the process shut it down never starts again.
        let instance = format!(
            "omstream-pull-{}-{}",
            std::process::id(),
            INSTANCES.fetch_add(1, Ordering::Relaxed)
        );
        let lite = DefaultLitePullConsumer::builder(runtime.client())
            .consumer_group(group.as_str())
            .instance_name(instance)
            .name_server_addr(settings.name_servers.as_str())
            .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
            // Offsets are committed by acknowledgement, never past a message in flight.
            .auto_commit(false)
            .consumer_pull_timeout_millis(settings.timeout_ms)
            // Pulls the broker holds are short, so that a stop does not wait on them.
            .broker_suspend_max_time_millis(BROKER_HOLD.as_millis() as u64)
            .consumer_timeout_millis_when_suspend(
                BROKER_HOLD.as_millis() as u64 + settings.timeout_ms,
            )
            .build()
            .map_err(|e| oms_error("create a pull consumer", &settings.name_servers, e))?;
        Ok(RocketMqPullConsumer {
            settings,
            group,
            lite,
            ack_timeout,
            tracker: Mutex::new(Tracker::default()),
            state: LifecycleCell::new(ServiceLifeState::Initialized),
        })
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes the lite consumer to the topic of `queue`, after checking that it exists.
    async fn subscribe(&self, queue: &str) -> Result<()> {
        let topic = topic_of(queue)?;
        let lite = self.lite.clone();
        let name = topic.clone();
        let found = driver_runtime()?
            .run(async move {
                lite.fetch_message_queues(&name).await?;
                lite.subscribe(&name).await
            })
            .await?
            .map_err(|e| {
                let error = oms_error(
                    &format!("subscribe to topic '{topic}'"),
                    &self.settings.name_servers,
                    e,
                );
                if error.message().contains("core.argument.invalid") {
                    OmsError::destination_not_found(queue)
                } else {
                    error
                }
            });
        match found {
            Ok(()) => Ok(()),
            Err(error) => Err(explain_missing_route(&self.settings, queue, error).await),
        }
    }

    /// One poll of the lite consumer, waiting up to `wait`; the messages are queued as ready.
    async fn poll(&self, wait: Duration) -> Result<()> {
        let lite = self.lite.clone();
        let millis = wait.as_millis().max(1) as u64;
        let polled = driver_runtime()?
            .run(async move { lite.poll_with_timeout(millis).await })
            .await?;
        tracing::trace!(group = %self.group, messages = polled.len(), "polled");
        if polled.is_empty() {
            return Ok(());
        }
        let now = now_millis();
        let mut tracker = self.tracker();
        let mut decoder = Decoder::default();
        for ext in &polled {
            let topic = ext.topic().to_string();
            let mq = MessageQueue::from_parts(topic.as_str(), ext.broker_name(), ext.queue_id());
            let queue: Arc<str> = queue_of(&topic).into();
            let store_host: Arc<str> = ext.broker_name().into();
            let mut message = decoder.message(ext, &queue, &store_host);
            let offset = ext.queue_offset();
            let state = tracker.queues.entry(mq.clone()).or_default();
            state.next = Some(state.next.map_or(offset + 1, |n| n.max(offset + 1)));
            // Expired messages are skipped, as the spec's expireTime asks; the committed
            // offset moves past them with the next acknowledgement.
            if message
                .extension_header
                .expire_time
                .is_some_and(|at| at <= now)
            {
                continue;
            }
            // `from_rocketmq` gave the receipt (queue, partition and offset).
            message.extension_header.delivery_count = 1;
            state.waiting += 1;
            tracker.ready.push_back((mq, message));
        }
        Ok(())
    }

    /// Writes `offset` as the group's committed offset of `mq`, on the broker.
    async fn commit(&self, mq: MessageQueue, offset: i64) -> Result<()> {
        let lite = self.lite.clone();
        let target = mq.clone();
        let committed = driver_runtime()?
            .run(async move {
                match lite.offset_store().await {
                    Some(store) => {
                        // The store's own copy too: the client persists it on shutdown and
                        // rebalance, and must not write an older offset back.
                        store.update_offset(&target, offset, true).await;
                        store
                            .update_consume_offset_to_broker(&target, offset, false)
                            .await
                            .map(|_| true)
                    }
                    None => Ok(false),
                }
            })
            .await?
            .map_err(|e| {
                oms_error(
                    &format!(
                        "commit offset {offset} of topic '{}' queue {}",
                        mq.topic_str(),
                        mq.queue_id()
                    ),
                    &self.settings.name_servers,
                    e,
                )
            })?;
        if !committed {
            return Err(OmsError::storage(
                "the RocketMQ pull consumer has no offset store; start it first",
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl ServiceLifecycle for RocketMqPullConsumer {
    async fn start(&self) -> Result<()> {
        tracing::debug!(group = %self.group, "starting a pull consumer");
        let lite = self.lite.clone();
        driver_runtime()?
            .run(async move { lite.start().await })
            .await?
            .map_err(|e| oms_error("start a pull consumer", &self.settings.name_servers, e))?;
        self.state.set(ServiceLifeState::Started);
        let bound = self.tracker().bound.clone();
        for queue in bound {
            self.subscribe(&queue).await?;
        }
        tracing::debug!(group = %self.group, "started a pull consumer");
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        tracing::debug!(group = %self.group, "stopping a pull consumer");
        self.state.set(ServiceLifeState::Stopping);
        let lite = self.lite.clone();
        let shutdown = driver_runtime()?.run(async move { lite.shutdown().await });
        if tokio::time::timeout(SHUTDOWN_WAIT, shutdown).await.is_err() {
            // The consumer is gone from the group either way once its heartbeats stop.
            tracing::warn!(group = %self.group, "the RocketMQ client did not shut down within {SHUTDOWN_WAIT:?}; going on");
        }
        // What was in flight is not acknowledged: the group redelivers it.
        {
            let mut tracker = self.tracker();
            tracker.queues.clear();
            tracker.ready.clear();
        }
        self.state.set(ServiceLifeState::Stopped);
        Ok(())
    }

    fn current_state(&self) -> ServiceLifeState {
        self.state.get()
    }
}

#[async_trait]
impl PullConsumer for RocketMqPullConsumer {
    async fn bind_queues(&self, queues: &[String]) -> Result<()> {
        for queue in queues {
            topic_of(queue)?;
            if self.state.get() == ServiceLifeState::Started {
                self.subscribe(queue).await?;
            }
            let mut tracker = self.tracker();
            if !tracker.bound.contains(queue) {
                tracker.bound.push(queue.clone());
            }
        }
        Ok(())
    }

    async fn unbind_queues(&self, queues: &[String]) -> Result<()> {
        for queue in queues {
            let topic = topic_of(queue)?;
            if self.state.get() == ServiceLifeState::Started {
                let lite = self.lite.clone();
                let name = topic.clone();
                driver_runtime()?
                    .run(async move { lite.unsubscribe(&name).await })
                    .await?;
            }
            let mut tracker = self.tracker();
            tracker.bound.retain(|q| q != queue);
            tracker.queues.retain(|mq, _| mq.topic_str() != topic);
            tracker.ready.retain(|(mq, _)| mq.topic_str() != topic);
        }
        Ok(())
    }

    fn bound_queues(&self) -> Vec<String> {
        self.tracker().bound.clone()
    }

    async fn receive(&self, timeout: Duration) -> Result<Option<Message>> {
        Ok(self.batch_receive(1, timeout).await?.pop())
    }

    async fn batch_receive(&self, max: usize, timeout: Duration) -> Result<Vec<Message>> {
        self.state.ensure_started("the pull consumer")?;
        let deadline = Instant::now() + timeout;
        loop {
            let batch = self.tracker().take(max.max(1), self.ack_timeout);
            if !batch.is_empty() {
                return Ok(batch);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(batch);
            }
            self.poll(left.min(POLL_SLICE)).await?;
        }
    }

    async fn ack(&self, receipt: &MessageReceipt) -> Result<()> {
        let topic = topic_of(&receipt.queue)?;
        let due = {
            let mut tracker = self.tracker();
            let Some(mq) = tracker
                .queues
                .keys()
                .find(|mq| mq.topic_str() == topic && mq.queue_id() == receipt.partition)
                .cloned()
            else {
                return Err(OmsError::new(
                    OmsErrorKind::Runtime,
                    OmsStatus::BAD_REQUEST,
                    format!(
                        "this consumer has no message of partition {} of queue '{}' in flight; it was \
                         acknowledged already, or the consumer was restarted (then it is redelivered)",
                        receipt.partition, receipt.queue
                    ),
                ));
            };
            let lowest_waiting = tracker.lowest_waiting(&mq);
            let state = tracker.queues.get_mut(&mq).expect("found above");
            state.in_flight.remove(&receipt.offset);
            match state.low_water(lowest_waiting) {
                Some(low) if state.committed.is_none_or(|c| low > c) => {
                    state.committed = Some(low);
                    Some((mq, low))
                }
                _ => None,
            }
        };
        tracing::debug!(group = %self.group, ?receipt, commit = ?due.as_ref().map(|(_, o)| o), "acknowledged");
        match due {
            Some((mq, offset)) => self.commit(mq, offset).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(offset: i64) -> Message {
        let mut m = Message::new("q", format!("m{offset}"));
        m.extension_header.offset = Some(offset);
        m
    }

    #[tokio::test(start_paused = true)]
    async fn unacknowledged_messages_come_back_after_the_ack_timeout_with_a_higher_count() {
        let mq = MessageQueue::from_parts("q", "broker-a", 0);
        let mut tracker = Tracker::default();
        for offset in 0..3 {
            tracker.queues.entry(mq.clone()).or_default().waiting += 1;
            tracker.ready.push_back((mq.clone(), message(offset)));
        }
        let timeout = Duration::from_secs(30);
        assert_eq!(tracker.take(10, timeout).len(), 3);
        assert!(tracker.take(10, timeout).is_empty());
        tracker.queues.get_mut(&mq).unwrap().in_flight.remove(&0);
        tokio::time::advance(timeout).await;
        let again = tracker.take(10, timeout);
        assert_eq!(
            again
                .iter()
                .map(|m| m.offset().unwrap())
                .collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(again.iter().all(|m| m.extension_header.delivery_count == 2));
    }

    #[test]
    fn the_committed_offset_is_the_lowest_one_still_owed() {
        let mut state = QueueState {
            next: Some(10),
            ..QueueState::default()
        };
        assert_eq!(state.low_water(None), Some(10));
        assert_eq!(state.low_water(Some(7)), Some(7));
        state.in_flight.insert(
            4,
            InFlight {
                message: message(4),
                deadline: Instant::now(),
                deliveries: 1,
            },
        );
        assert_eq!(state.low_water(Some(7)), Some(4));
    }
}
