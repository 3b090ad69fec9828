//! Producers: sends to a topic's message queues (one batch request per queue), and
//! transactions as half messages ended by end-transaction or by the broker's check-back.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rocketmq_client_rust::{
    DefaultMQProducer, LocalTransactionState, SendResult as RmqSendResult, TransactionListener,
};
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_model::common::message::message_single::Message as RmqMessage;
use rocketmq_model::common::message::MessageTrait;
use rocketmq_model::common::topic::TopicValidator;

use super::access_point::Settings;
use super::error::oms_error;
use super::header::{assign_id, from_rocketmq, to_rocketmq, topic_of};
use super::resource::explain_missing_route;
use super::runtime::driver_runtime;
use crate::oms::{
    now_millis, Message, OmsError, OmsErrorKind, OmsStatus, PreparedTransaction, ProducerBackend,
    Result, SendResult, TransactionState, TransactionStateCheckListener,
};

/// A producer on one producer group.
pub(crate) struct RocketMqProducer {
    settings: Arc<Settings>,
    group: String,
    /// Answers the broker's check-backs, on a transactional producer.
    listener: Option<Arc<dyn TransactionStateCheckListener>>,
    /// The client, built at each start (a client that was shut down cannot start again).
    client: std::sync::RwLock<Option<DefaultMQProducer>>,
    /// Each topic's message queues, by queue id.
    queues: Mutex<HashMap<String, Arc<Vec<MessageQueue>>>>,
    /// Round robin over the queues for messages with neither key nor partition.
    next: AtomicUsize,
    /// When this producer last ended a transaction (ms since the epoch; 0: never).
    last_end: Arc<AtomicI64>,
}

/// How long a stop waits after the last end-transaction. RocketMQ ends transactions with a
/// one-way request, which a client shut down at once may never deliver: the commit is lost
/// and the transaction left to the broker's check-back.
const END_FLUSH: std::time::Duration = std::time::Duration::from_millis(500);

impl std::fmt::Debug for RocketMqProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocketMqProducer")
            .field("name_servers", &self.settings.name_servers)
            .finish_non_exhaustive()
    }
}

/// Answers the broker's check-back about a half message with the OMS listener's decision.
struct CheckBack {
    listener: Arc<dyn TransactionStateCheckListener>,
    store_host: Arc<str>,
}

impl TransactionListener for CheckBack {
    fn execute_local_transaction(
        &self,
        _: &dyn MessageTrait,
        _: Option<&(dyn Any + Send + Sync)>,
    ) -> LocalTransactionState {
        // Prepared now; committed or rolled back later by the OMS transaction handle.
        LocalTransactionState::Unknown
    }

    fn check_local_transaction(&self, message: &MessageExt) -> LocalTransactionState {
        let queue: Arc<str> = super::header::queue_of(message.message.topic().as_str()).into();
        let message = from_rocketmq(message, &queue, &self.store_host);
        let decision = self.listener.check(&message);
        tracing::debug!(
            queue = %queue,
            transaction = ?message.extension_header.transaction_id,
            ?decision,
            "the broker asked about an open transaction"
        );
        match decision {
            TransactionState::Commit => LocalTransactionState::CommitMessage,
            TransactionState::Rollback => LocalTransactionState::RollbackMessage,
            TransactionState::Unknown => LocalTransactionState::Unknown,
        }
    }
}

impl RocketMqProducer {
    /// A producer of `group`; with a `listener`, a transactional one whose listener answers
    /// the broker's check-backs for the group.
    pub(crate) fn new(
        settings: Arc<Settings>,
        group: &str,
        listener: Option<Arc<dyn TransactionStateCheckListener>>,
    ) -> Result<Self> {
        driver_runtime()?;
        Ok(RocketMqProducer {
            settings,
            group: group.to_string(),
            listener,
            client: std::sync::RwLock::new(None),
            queues: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            last_end: Arc::new(AtomicI64::new(0)),
        })
    }

    /// A new client of the producer's group, with the check listener of a transactional one.
    fn build_client(&self) -> Result<DefaultMQProducer> {
        let settings = &self.settings;
        let mut builder = DefaultMQProducer::builder(driver_runtime()?.client())
            .producer_group(self.group.as_str())
            .name_server_addr(settings.name_servers.as_str())
            .send_msg_timeout(settings.timeout_ms as u32)
            .retry_times_when_send_failed(2);
        if self.listener.is_some() {
            // The broker asks a producer of the group about open transactions only once the
            // producer's heartbeat reached it, and a producer sends heartbeats to the brokers
            // of the topics it knows: the topic every broker serves makes them all known at
            // start, before this producer sends anything.
            builder = builder.topics(vec![TopicValidator::AUTO_CREATE_TOPIC_KEY_TOPIC.into()]);
        }
        let producer = builder.build();
        if let Some(listener) = &self.listener {
            let inner = producer.default_mq_producer_impl().ok_or_else(|| {
                OmsError::new(
                    OmsErrorKind::DriverLoad,
                    OmsStatus::DRIVER_CONSTRUCTION_FAILED,
                    "the RocketMQ producer was built without its implementation",
                )
            })?;
            inner.set_transaction_listener(Arc::new(CheckBack {
                listener: listener.clone(),
                store_host: settings.name_servers.as_str().into(),
            }));
            inner
                .init_transaction_env(1, 2, 2000)
                .map_err(|e| oms_error("set up transactions", &settings.name_servers, e))?;
        }
        Ok(producer)
    }

    /// The started client.
    fn client(&self) -> Result<DefaultMQProducer> {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| OmsError::not_available("the producer"))
    }

    fn error(&self, action: &str) -> impl FnOnce(rocketmq_client_rust::ClientError) -> OmsError {
        let servers = self.settings.name_servers.clone();
        let action = action.to_string();
        move |e| oms_error(&action, &servers, e)
    }

    /// The message queues of `topic`, by queue id.
    async fn queues(&self, topic: &str) -> Result<Arc<Vec<MessageQueue>>> {
        if let Some(queues) = self
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
        {
            return Ok(queues.clone());
        }
        let mut producer = self.client()?;
        let name = topic.to_string();
        let found = driver_runtime()?
            .run(async move { producer.fetch_publish_message_queues(&name).await })
            .await?
            .map_err(|e| {
                let error = oms_error(
                    &format!("find the partitions of topic '{topic}'"),
                    &self.settings.name_servers,
                    e,
                );
                // The name server knows no such topic. (Sending would create it with the
                // broker's default queue count; OMS sends only to queues that exist.)
                if error.message().contains("core.argument.invalid") {
                    OmsError::destination_not_found(&super::header::queue_of(topic))
                } else {
                    error
                }
            });
        let mut queues = match found {
            Ok(queues) => queues,
            Err(error) => {
                let queue = super::header::queue_of(topic);
                return Err(explain_missing_route(&self.settings, &queue, error).await);
            }
        };
        queues.sort_by_key(|q| (q.queue_id(), q.broker_name().to_string()));
        let queues = Arc::new(queues);
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_string(), queues.clone());
        Ok(queues)
    }

    /// The message queue `message` goes to: its partition, else the hash of its key, else the
    /// next in turn.
    fn place(&self, message: &Message, queues: &[MessageQueue], topic: &str) -> Result<usize> {
        if let Some(partition) = message.extension_header.partition {
            return queues
                .iter()
                .position(|q| q.queue_id() == partition)
                .ok_or_else(|| {
                    OmsError::bad_parameter(format!(
                        "topic '{topic}' has no partition {partition} (it has {})",
                        queues.len()
                    ))
                });
        }
        Ok(match &message.extension_header.message_key {
            Some(key) => crc32fast::hash(key.as_bytes()) as usize % queues.len(),
            None => self.next.fetch_add(1, Ordering::Relaxed) % queues.len(),
        })
    }
}

/// Messages sent together to one message queue.
struct Group {
    topic: String,
    queue: String,
    mq: MessageQueue,
    /// `(index in the batch, message id, message)`, in order.
    members: Vec<(usize, String, RmqMessage)>,
    /// Takes no more members (a delayed message is sent on its own).
    sealed: bool,
}

#[async_trait]
impl ProducerBackend for RocketMqProducer {
    fn driver_name(&self) -> &str {
        "rocketmq"
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<SendResult>> {
        let count = messages.len();
        // Group by (topic, queue), keeping each group's order; a delayed message goes alone (a
        // RocketMQ batch cannot carry delays).
        let mut groups: Vec<Group> = Vec::new();
        for (index, message) in messages.iter().enumerate() {
            let queue = message.destination().to_string();
            let topic = topic_of(&queue)?;
            let queues = self.queues(&topic).await?;
            let mq = queues[self.place(message, &queues, &topic)?].clone();
            let mut rmq = to_rocketmq(message, &topic)?;
            let id = assign_id(&mut rmq);
            let alone = message.extension_header.delay_time.is_some();
            let open = groups.iter_mut().find(|g| {
                !alone && !g.sealed && g.topic == topic && g.mq == mq && g.members.len() < 512
            });
            match open {
                Some(group) => group.members.push((index, id, rmq)),
                None => groups.push(Group {
                    topic,
                    queue,
                    mq,
                    members: vec![(index, id, rmq)],
                    sealed: alone,
                }),
            }
        }
        let mut results: Vec<Option<SendResult>> = vec![None; count];
        let timeout = self.settings.timeout_ms;
        for Group {
            topic,
            queue,
            mq,
            members,
            ..
        } in groups
        {
            let producer = self.client()?;
            let partition = mq.queue_id();
            let mut placed: Vec<(usize, String)> = Vec::with_capacity(members.len());
            let mut bodies: Vec<RmqMessage> = Vec::with_capacity(members.len());
            for (index, id, message) in members {
                placed.push((index, id));
                bodies.push(message);
            }
            let n = bodies.len();
            let sent = driver_runtime()?
                .run(async move {
                    if n == 1 {
                        let message = bodies.into_iter().next().expect("one message");
                        producer
                            .send_to_queue_with_timeout(message, mq, timeout)
                            .await
                    } else {
                        producer
                            .send_batch_to_queue_with_timeout(bodies, mq, timeout)
                            .await
                            .map(Some)
                    }
                })
                .await?
                .map_err(self.error(&format!("send to topic '{topic}'")));
            let sent = match sent {
                Ok(sent) => sent,
                Err(error) => {
                    return Err(explain_missing_route(&self.settings, &queue, error).await)
                }
            }
            .ok_or_else(|| {
                OmsError::storage(format!(
                    "RocketMQ returned no result for a send to '{topic}'"
                ))
            })?;
            for (i, (index, id)) in placed.into_iter().enumerate() {
                results[index] = Some(SendResult {
                    message_id: id,
                    queue: queue.clone(),
                    partition,
                    offset: sent.queue_offset as i64 + i as i64,
                });
            }
        }
        results
            .into_iter()
            .map(|r| r.ok_or_else(|| OmsError::storage("a message of the batch was not sent")))
            .collect()
    }

    async fn prepare(&self, message: Message) -> Result<Box<dyn PreparedTransaction>> {
        if self.listener.is_none() {
            return Err(OmsError::transaction(
                OmsStatus::BAD_REQUEST,
                "transactions need a check listener: create the producer with create_transactional_producer",
            ));
        }
        if message.extension_header.delay_time.is_some() {
            return Err(OmsError::transaction(
                OmsStatus::BAD_REQUEST,
                "RocketMQ transactions cannot carry a delay; send the delayed message outside the transaction",
            ));
        }
        let queue = message.destination().to_string();
        let topic = topic_of(&queue)?;
        // Loads the route, which ending the transaction needs.
        self.queues(&topic).await?;
        let mut rmq = to_rocketmq(&message, &topic)?;
        let id = assign_id(&mut rmq);
        let producer = self.client()?;
        let kept = rmq.clone();
        let sent = driver_runtime()?
            .run(async move {
                match producer.default_mq_producer_impl() {
                    Some(inner) => inner.send_message_in_transaction(rmq, None).await.map(Some),
                    None => Ok(None),
                }
            })
            .await?
            .map_err(self.error(&format!("prepare a transaction on topic '{topic}'")))?
            .and_then(|sent| sent.send_result)
            .ok_or_else(|| {
                OmsError::transaction(
                    OmsStatus::SERVER_ERROR,
                    "RocketMQ returned no result for a half message; create the producer with \
                     create_transactional_producer",
                )
            })?;
        Ok(Box::new(HalfMessage {
            last_end: self.last_end.clone(),
            producer: self.client()?,
            id,
            message: kept,
            sent,
            queue,
            name_servers: self.settings.name_servers.clone(),
        }))
    }

    async fn start(&self) -> Result<()> {
        let mut producer = self.build_client()?;
        let started = producer.clone();
        driver_runtime()?
            .run(async move { producer.start().await })
            .await?
            .map_err(self.error("start a producer"))?;
        *self.client.write().unwrap_or_else(|e| e.into_inner()) = Some(started);
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        let since_end = now_millis() - self.last_end.load(Ordering::Acquire);
        if since_end >= 0 && (since_end as u128) < END_FLUSH.as_millis() {
            tokio::time::sleep(END_FLUSH - std::time::Duration::from_millis(since_end as u64))
                .await;
        }
        let client = self
            .client
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut producer) = client {
            driver_runtime()?
                .run(async move { producer.shutdown().await })
                .await?;
        }
        Ok(())
    }
}

/// A prepared (half) message: invisible until end-transaction commits it.
struct HalfMessage {
    producer: DefaultMQProducer,
    /// The producer's time of its last end-transaction, set when this one is sent.
    last_end: Arc<AtomicI64>,
    /// The id the message has once committed.
    id: String,
    message: RmqMessage,
    sent: RmqSendResult,
    queue: String,
    name_servers: String,
}

impl std::fmt::Debug for HalfMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HalfMessage")
            .field("queue", &self.queue)
            .field("transaction_id", &self.sent.transaction_id)
            .finish_non_exhaustive()
    }
}

impl HalfMessage {
    async fn end(self: Box<Self>, state: LocalTransactionState) -> Result<RmqSendResult> {
        let this = *self;
        let servers = this.name_servers.clone();
        let last_end = this.last_end.clone();
        let sent = this.sent.clone();
        driver_runtime()?
            .run_local(move || async move {
                match this.producer.default_mq_producer_impl() {
                    Some(inner) => {
                        inner
                            .end_transaction(&this.message, &this.sent, state, None)
                            .await
                    }
                    None => Ok(()),
                }
            })
            .await?
            .map_err(|e| oms_error("end a transaction", &servers, e))?;
        last_end.store(now_millis(), Ordering::Release);
        Ok(sent)
    }
}

#[async_trait]
impl PreparedTransaction for HalfMessage {
    fn transaction_id(&self) -> &str {
        self.sent.transaction_id.as_deref().unwrap_or_default()
    }

    async fn commit(self: Box<Self>) -> Result<SendResult> {
        let queue = self.queue.clone();
        let id = self.id.clone();
        let sent = self.end(LocalTransactionState::CommitMessage).await?;
        Ok(SendResult {
            message_id: id,
            queue,
            partition: sent.message_queue.as_ref().map_or(-1, |q| q.queue_id()),
            // The broker stores the committed message anew; its offset is not reported.
            offset: -1,
        })
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        self.end(LocalTransactionState::RollbackMessage)
            .await
            .map(|_| ())
    }
}
