//! The producer: send, batch, one-way and transactional sends, with interceptors.
//!
//! [`Producer`] is the user-facing handle; drivers implement [`ProducerBackend`]. Interceptors,
//! lifecycle checks and born-header stamping live here once, for every driver.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use super::error::{OmsError, OmsStatus, Result};
use super::keyvalue::KeyValue;
use super::lifecycle::{LifecycleCell, ServiceLifeState, ServiceLifecycle};
use super::message::Message;

/// What a successful send returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    /// The provider-assigned message id.
    pub message_id: String,
    /// The queue the message went to. Shared, because the results of a batch name the same
    /// queue or few.
    pub queue: Arc<str>,
    /// The partition it was stored in.
    pub partition: i32,
    /// Its offset in that partition (`-1` while a transaction or a delay holds it back).
    pub offset: i64,
}

/// The outcome a transaction check reports (`TransactionStateCheckListener`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionState {
    /// Make the prepared message visible.
    Commit,
    /// Discard the prepared message.
    Rollback,
    /// Not known yet: ask again later; the message stays invisible.
    Unknown,
}

/// When a driver asks a [`TransactionStateCheckListener`] about transactions left open.
///
/// An exactly-once sink picks its listeners by it: a driver that asks at start lets one
/// resolver decide at open, while one that asks live producers while they run needs every
/// writing producer to decide as the resolver would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransactionChecks {
    /// Starting a transactional producer asks its listener about every open transaction no
    /// live producer holds (the embedded driver).
    OnProducerStart,
    /// The broker asks a live producer of the transaction's producer group, again and again
    /// while the transaction stays open, until it is decided or the broker gives up
    /// (RocketMQ's check-back: after `transactionTimeout`, at most `transactionCheckMax` times).
    WhileRunning,
}

/// Decides the fate of a prepared message whose producer went away before commit or rollback.
pub trait TransactionStateCheckListener: Send + Sync {
    /// Called with the prepared message (its `transactionId` set).
    fn check(&self, message: &Message) -> TransactionState;
}

/// A driver's side of a prepared transaction: one message, or a batch of them.
#[async_trait]
pub trait PreparedTransaction: Send + Sync + fmt::Debug {
    /// The transaction id.
    fn transaction_id(&self) -> &str;
    /// How many messages the transaction holds: 1 unless it was prepared as a batch.
    fn message_count(&self) -> usize {
        1
    }
    /// Makes the messages visible; returns the result of the first one.
    async fn commit(self: Box<Self>) -> Result<SendResult>;
    /// Makes the messages visible; returns one result per message, in the order they were
    /// prepared. The default commits and returns [`commit`](Self::commit)'s one result, which
    /// is right for a single message.
    async fn commit_all(self: Box<Self>) -> Result<Vec<SendResult>> {
        self.commit().await.map(|result| vec![result])
    }
    /// Discards the messages.
    async fn rollback(self: Box<Self>) -> Result<()>;
}

/// A prepared (half) message, or a prepared batch of messages: invisible to consumers until
/// [`commit`](Self::commit).
///
/// Dropping it without deciding leaves the transaction open; the store resolves it later through
/// the check listener of a transactional producer.
#[derive(Debug)]
pub struct TransactionalResult {
    inner: Box<dyn PreparedTransaction>,
}

impl TransactionalResult {
    /// Wraps a driver's prepared transaction.
    pub fn new(inner: Box<dyn PreparedTransaction>) -> Self {
        Self { inner }
    }

    /// The transaction id.
    pub fn transaction_id(&self) -> &str {
        self.inner.transaction_id()
    }

    /// How many messages the transaction holds (1 for [`Producer::prepare`]).
    pub fn message_count(&self) -> usize {
        self.inner.message_count()
    }

    /// Commits: the message becomes visible and gets its offset. For a batch
    /// ([`Producer::prepare_batch`]) every message becomes visible and the first one's result
    /// is returned; [`commit_all`](Self::commit_all) returns them all.
    pub async fn commit(self) -> Result<SendResult> {
        self.inner.commit().await
    }

    /// Commits and returns one result per message, in the order they were prepared.
    pub async fn commit_all(self) -> Result<Vec<SendResult>> {
        self.inner.commit_all().await
    }

    /// Rolls back: the message (every message of a batch) is discarded.
    pub async fn rollback(self) -> Result<()> {
        self.inner.rollback().await
    }
}

/// The batch transaction of a driver without native batches: one prepared transaction per
/// message, decided together (see [`ProducerBackend::prepare_batch`]).
#[derive(Debug)]
struct CompositeTransaction {
    parts: Vec<Box<dyn PreparedTransaction>>,
}

impl CompositeTransaction {
    /// Commits the members in order. On the first failure the error is returned and the
    /// members not committed yet are dropped, left open for the check listener.
    async fn commit_parts(self: Box<Self>) -> Result<Vec<SendResult>> {
        let mut results = Vec::with_capacity(self.parts.len());
        for part in self.parts {
            results.extend(part.commit_all().await?);
        }
        Ok(results)
    }
}

#[async_trait]
impl PreparedTransaction for CompositeTransaction {
    /// The first member's id.
    fn transaction_id(&self) -> &str {
        self.parts.first().map_or("", |p| p.transaction_id())
    }

    fn message_count(&self) -> usize {
        self.parts.iter().map(|p| p.message_count()).sum()
    }

    async fn commit(self: Box<Self>) -> Result<SendResult> {
        self.commit_parts()
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                OmsError::transaction(OmsStatus::BAD_REQUEST, "the batch transaction is empty")
            })
    }

    async fn commit_all(self: Box<Self>) -> Result<Vec<SendResult>> {
        self.commit_parts().await
    }

    /// Rolls back every member, even after one failed; returns the first failure.
    async fn rollback(self: Box<Self>) -> Result<()> {
        let mut first_error = None;
        for part in self.parts {
            if let Err(err) = part.rollback().await {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Per-send context handed to interceptors.
#[derive(Debug, Default, Clone)]
pub struct InterceptorContext {
    /// Free-form attributes that `pre_send` may set for `post_send` to read.
    pub attributes: KeyValue,
}

/// Sees, and may change, every message a producer sends.
pub trait ProducerInterceptor: Send + Sync {
    /// Before the send; may modify the message.
    fn pre_send(&self, message: &mut Message, context: &mut InterceptorContext);
    /// After a successful send.
    fn post_send(&self, message: &Message, result: &SendResult, context: &InterceptorContext) {
        let _ = (message, result, context);
    }
    /// After a failed send.
    fn post_send_error(&self, message: &Message, error: &OmsError, context: &InterceptorContext) {
        let _ = (message, error, context);
    }
}

/// Names an interceptor for [`Producer::remove_interceptor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InterceptorId(u64);

/// What a driver implements to send messages.
#[async_trait]
pub trait ProducerBackend: Send + Sync {
    /// The driver's name, for messages.
    fn driver_name(&self) -> &str;
    /// Stores `messages` and returns one result per message, in order. All or none are stored
    /// per partition; the born headers are already set.
    async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<SendResult>>;
    /// Stores `message` as a prepared (invisible) transactional message.
    async fn prepare(&self, message: Message) -> Result<Box<dyn PreparedTransaction>>;
    /// Stores `messages` (at least one, born headers set) as one prepared transaction, whose
    /// commit makes them all visible and whose rollback discards them all.
    ///
    /// The default prepares each message with [`prepare`](Self::prepare) and wraps them in one
    /// composite transaction that commits (or rolls back) its members one after another. On
    /// such drivers a batch is **not atomic across its messages**: a failure or crash in the
    /// middle of a commit leaves some members committed and the rest open. Each open member is
    /// then resolved on its own by the check listener, and since every member carries the same
    /// properties, a listener that decides by them (as the exactly-once sink's does) decides
    /// every member the same way. If preparing a member fails, the members prepared before it
    /// are rolled back (best effort) and the error is returned. Drivers with a cheaper way to
    /// store many prepared messages (the embedded driver writes one staged file per batch and
    /// commits it atomically) override this.
    async fn prepare_batch(&self, messages: Vec<Message>) -> Result<Box<dyn PreparedTransaction>> {
        let mut parts: Vec<Box<dyn PreparedTransaction>> = Vec::with_capacity(messages.len());
        for message in messages {
            match self.prepare(message).await {
                Ok(part) => parts.push(part),
                Err(err) => {
                    for part in parts {
                        if let Err(e) = part.rollback().await {
                            tracing::warn!(err = %e, "cannot roll back a member of a failed batch prepare; the check listener will resolve it");
                        }
                    }
                    return Err(err);
                }
            }
        }
        if parts.is_empty() {
            return Err(empty_batch());
        }
        Ok(Box::new(CompositeTransaction { parts }))
    }
    /// Whether the driver's messages carry the sending host without help (RocketMQ's record the
    /// client's address). The producer then fills `bornHost` only if the message has one of its
    /// own to carry, and readers get the driver's; otherwise it fills in this host and process.
    fn records_born_host(&self) -> bool {
        false
    }

    /// Called on `start`.
    async fn start(&self) -> Result<()> {
        Ok(())
    }
    /// Called on `stop`; flushes anything buffered.
    async fn stop(&self) -> Result<()> {
        Ok(())
    }
}

/// Sends messages to queues.
///
/// Obtained from [`MessagingAccessPoint::create_producer`](super::MessagingAccessPoint::create_producer),
/// started, and shared by reference (`Producer` is `Send + Sync`).
pub struct Producer {
    backend: Arc<dyn ProducerBackend>,
    interceptors: RwLock<Vec<(InterceptorId, Arc<dyn ProducerInterceptor>)>>,
    next_interceptor: AtomicU64,
    state: LifecycleCell,
    /// What fills an empty `bornHost`; `None` when the driver records the host itself.
    born_host: Option<Arc<str>>,
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("driver", &self.backend.driver_name())
            .field("state", &self.state.get())
            .finish()
    }
}

/// The host name and process id that fill `bornHost`.
pub fn local_host_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}:{}", std::process::id())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Producer {
    /// Wraps a driver's backend; the producer starts in `Initialized`.
    pub fn new(backend: Arc<dyn ProducerBackend>) -> Self {
        let born_host = (!backend.records_born_host()).then(|| local_host_id().into());
        Self {
            backend,
            interceptors: RwLock::new(Vec::new()),
            next_interceptor: AtomicU64::new(0),
            state: LifecycleCell::new(ServiceLifeState::Initialized),
            born_host,
        }
    }

    fn interceptors(&self) -> Vec<Arc<dyn ProducerInterceptor>> {
        // A poisoned lock only means an interceptor panicked while the list was read; the list
        // itself is still whole.
        let guard = self.interceptors.read().unwrap_or_else(|e| e.into_inner());
        guard.iter().map(|(_, i)| i.clone()).collect()
    }

    /// Adds an interceptor; it sees every later send.
    pub fn add_interceptor(&self, interceptor: Arc<dyn ProducerInterceptor>) -> InterceptorId {
        let id = InterceptorId(self.next_interceptor.fetch_add(1, Ordering::Relaxed));
        self.interceptors
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, interceptor));
        id
    }

    /// Removes an interceptor; returns whether it was there.
    pub fn remove_interceptor(&self, id: InterceptorId) -> bool {
        let mut list = self.interceptors.write().unwrap_or_else(|e| e.into_inner());
        let before = list.len();
        list.retain(|(i, _)| *i != id);
        list.len() != before
    }

    fn stamp(&self, message: &mut Message, now: i64) -> Result<()> {
        if message.header.destination.is_empty() {
            return Err(OmsError::bad_parameter(
                "the message has no destination; set header.destination to a queue name",
            ));
        }
        message.header.message_id = None;
        message.header.born_timestamp = Some(now);
        if message.header.born_host.is_none() {
            message.header.born_host.clone_from(&self.born_host);
        }
        let ext = &mut message.extension_header;
        ext.offset = None;
        ext.store_timestamp = None;
        ext.store_host = None;
        ext.delivery_count = 0;
        // The spec: priority "beyond range ignored".
        if ext.priority.is_some_and(|p| !(1..=10).contains(&p)) {
            ext.priority = None;
        }
        Ok(())
    }

    /// Sends one message and waits until it is stored.
    pub async fn send(&self, message: Message) -> Result<SendResult> {
        let mut results = self.send_batch(vec![message]).await?;
        results
            .pop()
            .ok_or_else(|| OmsError::storage("the driver returned no result for a sent message"))
    }

    /// Sends messages together and waits until all are stored; one result per message, in order.
    pub async fn send_batch(&self, mut messages: Vec<Message>) -> Result<Vec<SendResult>> {
        self.state.ensure_started("the producer")?;
        let interceptors = self.interceptors();
        let now = now_millis();
        let mut contexts = Vec::new();
        for message in &mut messages {
            self.stamp(message, now)?;
            if !interceptors.is_empty() {
                let mut ctx = InterceptorContext::default();
                for i in &interceptors {
                    i.pre_send(message, &mut ctx);
                }
                contexts.push(ctx);
            }
        }
        if interceptors.is_empty() {
            return self.backend.send_batch(messages).await;
        }
        // Interceptors need the messages after the send, so keep a copy (bodies are shared bytes).
        let kept = messages.clone();
        match self.backend.send_batch(messages).await {
            Ok(results) => {
                for ((m, r), ctx) in kept.iter().zip(&results).zip(&contexts) {
                    for i in &interceptors {
                        i.post_send(m, r, ctx);
                    }
                }
                Ok(results)
            }
            Err(err) => {
                for (m, ctx) in kept.iter().zip(&contexts) {
                    for i in &interceptors {
                        i.post_send_error(m, &err, ctx);
                    }
                }
                Err(err)
            }
        }
    }

    /// Sends without waiting and without reporting failure (fire and forget). Failures are logged.
    /// Needs a tokio runtime.
    pub fn send_oneway(self: &Arc<Self>, message: Message) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(err) = this.send(message).await {
                tracing::warn!(%err, "one-way send failed");
            }
        });
    }

    /// Prepares a transactional (half) message: stored, but invisible until committed.
    pub async fn prepare(&self, mut message: Message) -> Result<TransactionalResult> {
        self.state.ensure_started("the producer")?;
        self.stamp(&mut message, now_millis())?;
        let mut ctx = InterceptorContext::default();
        for i in self.interceptors() {
            i.pre_send(&mut message, &mut ctx);
        }
        let prepared = self.backend.prepare(message).await?;
        Ok(TransactionalResult::new(prepared))
    }

    /// Prepares `messages` as one transaction: stored, but all invisible until the returned
    /// transaction is committed, when they all become visible; a rollback discards them all.
    /// Each message goes to the partition [`send_batch`](Self::send_batch) would pick, and
    /// every message carries the batch's transaction id.
    ///
    /// Much cheaper than one [`prepare`](Self::prepare) per message on drivers with native
    /// batches (the embedded driver: one staged file per batch, committed atomically). On
    /// other drivers the batch is a set of single prepared messages, committed one after
    /// another; see [`ProducerBackend::prepare_batch`] for what that means after a crash.
    /// Left undecided (the handle dropped, the process killed), the batch is resolved later
    /// by a transactional producer's check listener, which sees its first message.
    ///
    /// # Errors
    /// 1418 for an empty batch or a message without destination; a transaction error when
    /// the producer has no check listener; the driver's error otherwise (nothing is left
    /// prepared then).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use omstream_core::oms::{self, KeyValue, Message, QueueConfig, ServiceLifecycle};
    /// use omstream_core::oms::{TransactionState, TransactionStateCheckListener};
    ///
    /// struct Undecided;
    /// impl TransactionStateCheckListener for Undecided {
    ///     fn check(&self, _: &Message) -> TransactionState {
    ///         TransactionState::Unknown
    ///     }
    /// }
    /// # let dir = tempfile::tempdir().unwrap();
    /// let attrs = KeyValue::new().with(oms::embedded::EMBEDDED_DIR, dir.path().display());
    /// let ap = oms::connect("oms:embedded://localhost/default", attrs).await?;
    /// ap.resource_manager().await?.create_queue("out", QueueConfig::with_partitions(2)).await?;
    /// let producer = ap.create_transactional_producer(KeyValue::new(), Arc::new(Undecided)).await?;
    /// producer.start().await?;
    /// let batch = (0..100).map(|i| Message::new("out", format!("m{i}")).with_key(format!("k{i}")));
    /// let tx = producer.prepare_batch(batch.collect()).await?;
    /// assert_eq!(tx.message_count(), 100);
    /// let sent = tx.commit_all().await?; // all 100 become visible together
    /// assert_eq!(sent.len(), 100);
    /// # Ok::<(), oms::OmsError>(())
    /// # }).unwrap();
    /// ```
    pub async fn prepare_batch(&self, mut messages: Vec<Message>) -> Result<TransactionalResult> {
        self.state.ensure_started("the producer")?;
        if messages.is_empty() {
            return Err(empty_batch());
        }
        let now = now_millis();
        let interceptors = self.interceptors();
        for message in &mut messages {
            self.stamp(message, now)?;
            let mut ctx = InterceptorContext::default();
            for i in &interceptors {
                i.pre_send(message, &mut ctx);
            }
        }
        let prepared = self.backend.prepare_batch(messages).await?;
        Ok(TransactionalResult::new(prepared))
    }
}

fn empty_batch() -> OmsError {
    OmsError::bad_parameter("a batch transaction needs at least one message; prepare none instead")
}

#[async_trait]
impl ServiceLifecycle for Producer {
    async fn start(&self) -> Result<()> {
        if self.state.get() == ServiceLifeState::Started {
            return Ok(());
        }
        self.state.set(ServiceLifeState::Starting);
        match self.backend.start().await {
            Ok(()) => {
                self.state.set(ServiceLifeState::Started);
                Ok(())
            }
            Err(e) => {
                self.state.set(ServiceLifeState::Stopped);
                Err(e)
            }
        }
    }

    async fn stop(&self) -> Result<()> {
        if matches!(
            self.state.get(),
            ServiceLifeState::Stopped | ServiceLifeState::Initialized
        ) {
            self.state.set(ServiceLifeState::Stopped);
            return Ok(());
        }
        self.state.set(ServiceLifeState::Stopping);
        let res = self.backend.stop().await;
        self.state.set(ServiceLifeState::Stopped);
        res
    }

    fn current_state(&self) -> ServiceLifeState {
        self.state.get()
    }
}

/// The error for a body over the limit (status 1413).
pub fn body_too_large(queue: &str, size: usize, max: usize) -> OmsError {
    OmsError::message_format(
        OmsStatus::MESSAGE_BODY_TOO_LARGE,
        format!(
            "a message for queue '{queue}' has a {size}-byte body, over the {max}-byte maximum; \
             send smaller bodies or raise the store's max message size"
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records what reaches the driver.
    #[derive(Default)]
    struct Recording(Mutex<Vec<Message>>);

    #[async_trait]
    impl ProducerBackend for Recording {
        fn driver_name(&self) -> &str {
            "recording"
        }
        async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<SendResult>> {
            let results = messages
                .iter()
                .enumerate()
                .map(|(i, m)| SendResult {
                    message_id: format!("id{i}"),
                    queue: m.header.destination.clone(),
                    partition: 0,
                    offset: i as i64,
                })
                .collect();
            self.0.lock().unwrap().extend(messages);
            Ok(results)
        }
        async fn prepare(&self, _: Message) -> Result<Box<dyn PreparedTransaction>> {
            Err(OmsError::unsupported("recording", "transactions"))
        }
    }

    /// Prepares single messages in memory, logging what is decided; the message with body
    /// `fail` cannot be prepared.
    #[derive(Default)]
    struct SingleOnly(Arc<Mutex<Vec<String>>>);

    #[derive(Debug)]
    struct Single(String, Arc<Mutex<Vec<String>>>);

    #[async_trait]
    impl PreparedTransaction for Single {
        fn transaction_id(&self) -> &str {
            &self.0
        }
        async fn commit(self: Box<Self>) -> Result<SendResult> {
            self.1.lock().unwrap().push(format!("commit {}", self.0));
            Ok(SendResult {
                message_id: self.0.clone(),
                queue: "q".into(),
                partition: 0,
                offset: 0,
            })
        }
        async fn rollback(self: Box<Self>) -> Result<()> {
            self.1.lock().unwrap().push(format!("rollback {}", self.0));
            Ok(())
        }
    }

    #[async_trait]
    impl ProducerBackend for SingleOnly {
        fn driver_name(&self) -> &str {
            "single"
        }
        async fn send_batch(&self, _: Vec<Message>) -> Result<Vec<SendResult>> {
            Err(OmsError::unsupported("single", "sending"))
        }
        async fn prepare(&self, message: Message) -> Result<Box<dyn PreparedTransaction>> {
            let body = String::from_utf8(message.data.to_vec()).unwrap();
            if body == "fail" {
                return Err(OmsError::storage("cannot prepare"));
            }
            Ok(Box::new(Single(body, self.0.clone())))
        }
    }

    #[tokio::test]
    async fn without_native_batches_a_batch_is_its_members_decided_together() {
        let backend = SingleOnly::default();
        let log = backend.0.clone();
        let producer = Producer::new(Arc::new(backend));
        producer.start().await.unwrap();
        fn batch(bodies: &[&str]) -> Vec<Message> {
            bodies
                .iter()
                .map(|b| Message::new("q", b.to_string()))
                .collect()
        }

        let tx = producer.prepare_batch(batch(&["a", "b"])).await.unwrap();
        assert_eq!((tx.message_count(), tx.transaction_id()), (2, "a"));
        let ids: Vec<_> = tx
            .commit_all()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.message_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        let tx = producer.prepare_batch(batch(&["c", "d"])).await.unwrap();
        tx.rollback().await.unwrap();
        let err = producer
            .prepare_batch(batch(&["e", "fail", "f"]))
            .await
            .unwrap_err();
        assert_eq!(err.status(), OmsStatus::STORAGE_SERVICE_ERROR);
        assert_eq!(
            *log.lock().unwrap(),
            [
                "commit a",
                "commit b",
                "rollback c",
                "rollback d",
                "rollback e"
            ],
            "a failed prepare rolls back the members before it"
        );
        let err = producer.prepare_batch(Vec::new()).await.unwrap_err();
        assert_eq!(err.status(), OmsStatus::BAD_PARAMETER);
    }

    #[tokio::test]
    async fn send_stamps_born_headers_and_clears_server_ones() {
        let backend = Arc::new(Recording::default());
        let producer = Producer::new(backend.clone());
        producer.start().await.unwrap();
        let mut m = Message::new("q", "x");
        m.header.message_id = Some("mine".into());
        m.extension_header.offset = Some(9);
        m.extension_header.delivery_count = 3;
        m.extension_header.priority = Some(11);
        producer.send(m).await.unwrap();
        let got = backend.0.lock().unwrap().pop().unwrap();
        assert!(got.header.born_timestamp.is_some() && got.header.born_host.is_some());
        assert_eq!(got.header.message_id, None, "ids are the provider's");
        assert_eq!(got.extension_header.offset, None);
        assert_eq!(got.extension_header.delivery_count, 0);
        assert_eq!(
            got.extension_header.priority, None,
            "out-of-range priority is ignored"
        );
    }

    #[tokio::test]
    async fn a_message_without_destination_is_refused_before_the_driver() {
        let backend = Arc::new(Recording::default());
        let producer = Producer::new(backend.clone());
        producer.start().await.unwrap();
        let err = producer.send(Message::new("", "x")).await.unwrap_err();
        assert_eq!(err.status(), OmsStatus::BAD_PARAMETER);
        assert!(backend.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn interceptors_see_failures() {
        struct CountErrors(std::sync::atomic::AtomicU32);
        impl ProducerInterceptor for CountErrors {
            fn pre_send(&self, _: &mut Message, _: &mut InterceptorContext) {}
            fn post_send_error(&self, _: &Message, error: &OmsError, _: &InterceptorContext) {
                assert_eq!(error.status(), OmsStatus::BAD_REQUEST);
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        struct Failing;
        #[async_trait]
        impl ProducerBackend for Failing {
            fn driver_name(&self) -> &str {
                "failing"
            }
            async fn send_batch(&self, _: Vec<Message>) -> Result<Vec<SendResult>> {
                Err(OmsError::unsupported("failing", "sending"))
            }
            async fn prepare(&self, _: Message) -> Result<Box<dyn PreparedTransaction>> {
                Err(OmsError::unsupported("failing", "transactions"))
            }
        }
        let producer = Producer::new(Arc::new(Failing));
        producer.start().await.unwrap();
        let counter = Arc::new(CountErrors(std::sync::atomic::AtomicU32::new(0)));
        producer.add_interceptor(counter.clone());
        assert!(producer
            .send_batch(vec![Message::new("q", "a"), Message::new("q", "b")])
            .await
            .is_err());
        assert_eq!(counter.0.load(Ordering::Relaxed), 2);
    }
}
