//! Producers: sends to a topic's message queues (one batch request per queue, the queues of a
//! batch at once), and transactions as half messages ended by end-transaction or by the
//! broker's check-back.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::BytesMut;
use cheetah_string::CheetahString;
use rocketmq_client_rust::{
    DefaultMQProducer, LocalTransactionState, SendResult as RmqSendResult, TransactionListener,
};
use rocketmq_model::common::message::message_batch::MessageBatch;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_model::common::message::message_single::Message as RmqMessage;
use rocketmq_model::common::message::MessageTrait;
use rocketmq_model::common::topic::TopicValidator;
use rocketmq_protocol::common::message::message_decoder::encode_message_into;

use super::access_point::Settings;
use super::error::oms_error;
use super::header::{from_rocketmq, to_rocketmq, topic_of};
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
    /// Round robin over the queues, batch by batch, for messages with neither key nor
    /// partition.
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

    /// The message queue `message` goes to in `target`: its partition, else the hash of its key,
    /// else the queue of the batch's unkeyed messages (the next in turn, once per batch, as the
    /// bare client does it: splitting a batch over every queue would make it as many requests).
    fn place(&self, message: &Message, target: &mut Target) -> Result<usize> {
        let queues = &target.queues;
        if let Some(partition) = message.extension_header.partition {
            return queues
                .iter()
                .position(|q| q.queue_id() == partition)
                .ok_or_else(|| {
                    OmsError::bad_parameter(format!(
                        "topic '{}' has no partition {partition} (it has {})",
                        target.topic,
                        queues.len()
                    ))
                });
        }
        Ok(match &message.extension_header.message_key {
            Some(key) => crc32fast::hash(key.as_bytes()) as usize % queues.len(),
            None => *target
                .unkeyed
                .get_or_insert_with(|| self.next.fetch_add(1, Ordering::Relaxed) % queues.len()),
        })
    }

    /// Sends the requests of one message queue of `target`, one after another (so they are
    /// stored in order), and returns each member's result; stops at the first failure.
    async fn send_in_order(
        &self,
        producer: DefaultMQProducer,
        target: &Target,
        requests: Vec<Request>,
    ) -> Result<Vec<(usize, SendResult)>> {
        let mut results = Vec::new();
        let timeout = self.settings.timeout_ms;
        for Request {
            mq,
            ids,
            messages,
            bytes,
            ..
        } in requests
        {
            let partition = mq.queue_id();
            let producer = producer.clone();
            let sent = driver_runtime()?
                .run(async move {
                    if messages.len() == 1 {
                        let message = messages.into_iter().next().expect("one message");
                        producer
                            .send_to_queue_with_timeout(message, mq, timeout)
                            .await
                    } else {
                        let batch = batch_request(messages, bytes)?;
                        producer
                            .send_to_queue_with_timeout(batch, mq, timeout)
                            .await
                    }
                })
                .await?
                .map_err(self.error(&format!("send to topic '{}'", target.topic)));
            let sent = match sent {
                Ok(sent) => sent,
                Err(error) => {
                    return Err(explain_missing_route(&self.settings, &target.queue, error).await)
                }
            }
            .ok_or_else(|| {
                OmsError::storage(format!(
                    "RocketMQ returned no result for a send to '{}'",
                    target.topic
                ))
            })?;
            for (i, (index, id)) in ids.into_iter().enumerate() {
                let result = SendResult {
                    message_id: id,
                    queue: target.queue.clone(),
                    partition,
                    offset: sent.queue_offset as i64 + i as i64,
                };
                results.push((index, result));
            }
        }
        Ok(results)
    }
}

/// A topic a batch sends to.
struct Target {
    /// The OMS queue.
    queue: Arc<str>,
    topic: CheetahString,
    queues: Arc<Vec<MessageQueue>>,
    /// The queue (index in `queues`) of this batch's messages with neither key nor partition,
    /// once one was placed.
    unkeyed: Option<usize>,
}

/// Messages sent together to one message queue, in one request.
struct Request {
    mq: MessageQueue,
    /// `(index in the batch, message id)` of each member, in order.
    ids: Vec<(usize, String)>,
    messages: Vec<RmqMessage>,
    /// The members' body and property bytes.
    bytes: usize,
    /// Takes no more members (a delayed message is sent on its own).
    sealed: bool,
}

/// The most messages one batch request carries.
const REQUEST_MESSAGES: usize = 512;

/// The most body and property bytes one batch request carries, well under the broker's
/// default limit of 4 MiB for a message (a batch is stored as one).
const REQUEST_BYTES: usize = 1 << 20;

/// The batch request of `messages`, whose encoding takes `bytes`.
///
/// Built here rather than by the client's `send_batch`, which gives the batch a `UNIQ_KEY` of
/// its own: the broker appends a batch's properties to each member's, so every member would be
/// read back with the batch's id instead of its own. (The Java client leaves the batch without
/// one.) Without it, a member's `UNIQ_KEY` is its id, and no second property is needed. The
/// encoding goes into one buffer sized up front, not one that grows message by message.
fn batch_request(
    messages: Vec<RmqMessage>,
    bytes: usize,
) -> rocketmq_client_rust::ClientResult<MessageBatch> {
    let mut batch = MessageBatch::generate_from_messages(messages)?;
    let mut body = BytesMut::with_capacity(bytes);
    for message in &batch.messages {
        encode_message_into(message, &mut body);
    }
    batch.set_body(body.freeze());
    Ok(batch)
}

/// What a message adds to a batch request: its body and properties, plus the fixed fields
/// (exactly its wire size: sizes, magic code, body CRC and flag take 22 bytes, and each
/// property its name, its value and two separators).
fn encoded_size(message: &RmqMessage) -> usize {
    let properties: usize = message
        .properties()
        .as_map()
        .iter()
        .map(|(k, v)| k.len() + v.len() + 2)
        .sum();
    message.body_slice().len() + properties + 22
}

#[async_trait]
impl ProducerBackend for RocketMqProducer {
    fn driver_name(&self) -> &str {
        "rocketmq"
    }

    fn records_born_host(&self) -> bool {
        true
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<SendResult>> {
        let count = messages.len();
        // The topics of the batch (usually one), each looked up once.
        let mut targets: Vec<Target> = Vec::new();
        // The requests of each (target, message queue), in the batch's order.
        let mut lanes: HashMap<(usize, usize), Vec<Request>> = HashMap::new();
        let mut lane_order: Vec<(usize, usize)> = Vec::new();
        let mut last_target: Option<usize> = None;
        for (index, message) in messages.iter().enumerate() {
            let destination = &message.header.destination;
            let same = |t: &Target| *t.queue == **destination;
            let t = match last_target.filter(|&t| same(&targets[t])) {
                Some(t) => t,
                None => match targets.iter().position(same) {
                    Some(t) => t,
                    None => {
                        let topic = topic_of(destination)?;
                        let queues = self.queues(&topic).await?;
                        targets.push(Target {
                            queue: destination.clone(),
                            topic: topic.into(),
                            queues,
                            unkeyed: None,
                        });
                        targets.len() - 1
                    }
                },
            };
            last_target = Some(t);
            let q = self.place(message, &mut targets[t])?;
            let (rmq, id) = to_rocketmq(message, &targets[t].topic)?;
            let bytes = encoded_size(&rmq);
            // A delayed message goes alone: a RocketMQ batch cannot carry delays.
            let alone = message.extension_header.delay_time.is_some();
            let lane = lanes.entry((t, q)).or_insert_with(|| {
                lane_order.push((t, q));
                Vec::new()
            });
            match lane.last_mut().filter(|r| {
                !alone
                    && !r.sealed
                    && r.messages.len() < REQUEST_MESSAGES
                    && r.bytes + bytes <= REQUEST_BYTES
            }) {
                Some(request) => {
                    request.ids.push((index, id));
                    request.messages.push(rmq);
                    request.bytes += bytes;
                }
                None => lane.push(Request {
                    mq: targets[t].queues[q].clone(),
                    ids: vec![(index, id)],
                    messages: vec![rmq],
                    bytes,
                    sealed: alone,
                }),
            }
        }
        // Message queues are independent: their requests go out at once (a keyed batch
        // spreads over all of them), each queue's in order.
        let producer = self.client()?;
        let sends = lane_order.into_iter().map(|(t, q)| {
            let requests = lanes.remove(&(t, q)).unwrap_or_default();
            self.send_in_order(producer.clone(), &targets[t], requests)
        });
        let mut results: Vec<Option<SendResult>> = vec![None; count];
        for sent in futures::future::join_all(sends).await {
            for (index, result) in sent? {
                results[index] = Some(result);
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
        let (rmq, id) = to_rocketmq(&message, &topic.as_str().into())?;
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
        let queue = self.queue.as_str().into();
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
