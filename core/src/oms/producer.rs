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
    /// The queue the message went to.
    pub queue: String,
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

/// Decides the fate of a prepared message whose producer went away before commit or rollback.
pub trait TransactionStateCheckListener: Send + Sync {
    /// Called with the prepared message (its `transactionId` set).
    fn check(&self, message: &Message) -> TransactionState;
}

/// A driver's side of a prepared transaction.
#[async_trait]
pub trait PreparedTransaction: Send + Sync + fmt::Debug {
    /// The transaction id.
    fn transaction_id(&self) -> &str;
    /// Makes the message visible.
    async fn commit(self: Box<Self>) -> Result<SendResult>;
    /// Discards the message.
    async fn rollback(self: Box<Self>) -> Result<()>;
}

/// A prepared (half) message: invisible to consumers until [`commit`](Self::commit).
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

    /// Commits: the message becomes visible and gets its offset.
    pub async fn commit(self) -> Result<SendResult> {
        self.inner.commit().await
    }

    /// Rolls back: the message is discarded.
    pub async fn rollback(self) -> Result<()> {
        self.inner.rollback().await
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
    born_host: String,
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
        Self {
            backend,
            interceptors: RwLock::new(Vec::new()),
            next_interceptor: AtomicU64::new(0),
            state: LifecycleCell::new(ServiceLifeState::Initialized),
            born_host: local_host_id(),
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
            message.header.born_host = Some(self.born_host.clone());
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
                    queue: m.destination().to_string(),
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
