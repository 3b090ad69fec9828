//! Pull and push consumers: competing consumption of queues by a consumer group, with
//! acknowledgements and redelivery.
//!
//! Drivers implement [`PullConsumer`]; [`PushConsumer`] is built on it once for every driver.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::error::Result;
use super::lifecycle::{LifecycleCell, ServiceLifeState, ServiceLifecycle};
use super::message::{Message, MessageReceipt};

/// Receives messages on demand. Messages that are received but not acknowledged within the
/// consumer's ack timeout are delivered again, with a higher `deliveryCount`.
#[async_trait]
pub trait PullConsumer: ServiceLifecycle + fmt::Debug {
    /// Adds queues to consume.
    async fn bind_queues(&self, queues: &[String]) -> Result<()>;
    /// Stops consuming these queues.
    async fn unbind_queues(&self, queues: &[String]) -> Result<()>;
    /// The queues bound now.
    fn bound_queues(&self) -> Vec<String>;
    /// The next message, waiting up to `timeout`; `None` when none came in time.
    async fn receive(&self, timeout: Duration) -> Result<Option<Message>>;
    /// Up to `max` messages, waiting up to `timeout` for the first one.
    async fn batch_receive(&self, max: usize, timeout: Duration) -> Result<Vec<Message>>;
    /// Acknowledges a received message: it is not delivered to this group again.
    async fn ack(&self, receipt: &MessageReceipt) -> Result<()>;
}

/// Handed to a [`MessageListener`] with each message; call [`ack`](Self::ack) once the message
/// is processed. A message not acknowledged is redelivered.
#[derive(Debug, Clone, Default)]
pub struct AckContext {
    acked: Arc<AtomicBool>,
}

impl AckContext {
    /// Acknowledges the message.
    pub fn ack(self) {
        self.acked.store(true, Ordering::Release);
    }
}

/// Handed to a [`BatchMessageListener`] with each batch.
#[derive(Debug, Clone, Default)]
pub struct BatchAckContext {
    acked: Arc<Mutex<BatchAck>>,
}

#[derive(Debug, Default)]
struct BatchAck {
    all: bool,
    some: Vec<MessageReceipt>,
}

impl BatchAckContext {
    /// Acknowledges these messages of the batch.
    pub fn success(&self, receipts: &[MessageReceipt]) {
        self.acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .some
            .extend_from_slice(receipts);
    }

    /// Acknowledges the whole batch.
    pub fn ack(self) {
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).all = true;
    }
}

/// Called by a [`PushConsumer`] for each message.
#[async_trait]
pub trait MessageListener: Send + Sync {
    /// Processes one message; call `context.ack()` when done.
    async fn on_received(&self, message: Message, context: AckContext);
}

/// Called by a [`PushConsumer`] for each batch.
#[async_trait]
pub trait BatchMessageListener: Send + Sync {
    /// Processes a batch; acknowledge all of it or part of it through `context`.
    async fn on_received(&self, messages: Vec<Message>, context: BatchAckContext);
}

enum Listener {
    Single(Arc<dyn MessageListener>),
    Batch(Arc<dyn BatchMessageListener>),
}

/// Delivers messages to a listener as they arrive, on top of any driver's [`PullConsumer`].
pub struct PushConsumer {
    pull: Arc<dyn PullConsumer>,
    listener: Mutex<Option<Arc<Listener>>>,
    task: Mutex<Option<JoinHandle<()>>>,
    suspended: watch::Sender<bool>,
    suspensions: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    state: LifecycleCell,
    batch_size: usize,
}

impl fmt::Debug for PushConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushConsumer")
            .field("pull", &self.pull)
            .field("state", &self.state.get())
            .finish()
    }
}

impl PushConsumer {
    /// A push consumer that polls `pull` in batches of up to `batch_size`.
    pub fn new(pull: Arc<dyn PullConsumer>, batch_size: usize) -> Self {
        Self {
            pull,
            listener: Mutex::new(None),
            task: Mutex::new(None),
            suspended: watch::channel(false).0,
            suspensions: Arc::new(AtomicU64::new(0)),
            stop: watch::channel(false).0,
            state: LifecycleCell::new(ServiceLifeState::Initialized),
            batch_size: batch_size.max(1),
        }
    }

    /// Binds queues and the listener that receives their messages, one by one.
    pub async fn bind_queues(
        &self,
        queues: &[String],
        listener: Arc<dyn MessageListener>,
    ) -> Result<()> {
        self.pull.bind_queues(queues).await?;
        *self.listener.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Arc::new(Listener::Single(listener)));
        Ok(())
    }

    /// Binds queues and the listener that receives their messages in batches.
    pub async fn bind_queues_batch(
        &self,
        queues: &[String],
        listener: Arc<dyn BatchMessageListener>,
    ) -> Result<()> {
        self.pull.bind_queues(queues).await?;
        *self.listener.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Arc::new(Listener::Batch(listener)));
        Ok(())
    }

    /// Stops consuming these queues.
    pub async fn unbind_queues(&self, queues: &[String]) -> Result<()> {
        self.pull.unbind_queues(queues).await
    }

    /// The queues bound now.
    pub fn bound_queues(&self) -> Vec<String> {
        self.pull.bound_queues()
    }

    /// Pauses delivery, for `timeout` or (with `None`) until [`resume`](Self::resume).
    pub fn suspend(&self, timeout: Option<Duration>) {
        // Each suspension has a generation: a timer resumes only the suspension it belongs to,
        // never a later one.
        let generation = self.suspensions.fetch_add(1, Ordering::AcqRel) + 1;
        self.suspended.send_replace(true);
        if let Some(timeout) = timeout {
            let tx = self.suspended.clone();
            let suspensions = Arc::clone(&self.suspensions);
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                if suspensions.load(Ordering::Acquire) == generation {
                    tx.send_replace(false);
                }
            });
        }
    }

    /// Resumes delivery.
    pub fn resume(&self) {
        self.suspensions.fetch_add(1, Ordering::AcqRel);
        self.suspended.send_replace(false);
    }

    /// Whether delivery is paused.
    pub fn is_suspended(&self) -> bool {
        *self.suspended.borrow()
    }

    async fn run(
        pull: Arc<dyn PullConsumer>,
        listener: Arc<Listener>,
        mut suspended: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
        batch_size: usize,
    ) {
        loop {
            if *stop.borrow() {
                return;
            }
            if *suspended.borrow() {
                // A closed channel means the consumer is gone: end rather than spin.
                tokio::select! {
                    r = suspended.changed() => if r.is_err() { return },
                    r = stop.changed() => if r.is_err() { return },
                }
                continue;
            }
            let batch = tokio::select! {
                b = pull.batch_receive(batch_size, Duration::from_millis(100)) => b,
                r = stop.changed() => {
                    if r.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let batch = match batch {
                Ok(b) => b,
                Err(err) => {
                    // A failing store must not spin the CPU; the error is worth a log line.
                    tracing::warn!(%err, "push consumer: receive failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                continue;
            }
            let acked: Vec<MessageReceipt> = match &*listener {
                Listener::Single(l) => {
                    let mut acked = Vec::with_capacity(batch.len());
                    for message in batch {
                        let ctx = AckContext::default();
                        let receipt = message.receipt.clone();
                        l.on_received(message, ctx.clone()).await;
                        if ctx.acked.load(Ordering::Acquire) {
                            acked.extend(receipt);
                        }
                    }
                    acked
                }
                Listener::Batch(l) => {
                    let receipts: Vec<MessageReceipt> =
                        batch.iter().filter_map(|m| m.receipt.clone()).collect();
                    let ctx = BatchAckContext::default();
                    l.on_received(batch, ctx.clone()).await;
                    let state =
                        std::mem::take(&mut *ctx.acked.lock().unwrap_or_else(|e| e.into_inner()));
                    if state.all {
                        receipts
                    } else {
                        state.some
                    }
                }
            };
            for receipt in &acked {
                if let Err(err) = pull.ack(receipt).await {
                    tracing::warn!(%err, ?receipt, "push consumer: ack failed; the message will be redelivered");
                }
            }
        }
    }
}

impl Drop for PushConsumer {
    fn drop(&mut self) {
        // Dropped without `stop`: end the delivery task; an unacknowledged message in the
        // listener is redelivered, as after a crash.
        self.stop.send_replace(true);
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

#[async_trait]
impl ServiceLifecycle for PushConsumer {
    async fn start(&self) -> Result<()> {
        if self.state.get() == ServiceLifeState::Started {
            return Ok(());
        }
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                super::error::OmsError::bad_parameter(
                    "bind queues and a listener (bind_queues) before starting a push consumer",
                )
            })?;
        self.state.set(ServiceLifeState::Starting);
        self.pull.start().await?;
        self.stop.send_replace(false);
        let task = tokio::spawn(Self::run(
            self.pull.clone(),
            listener,
            self.suspended.subscribe(),
            self.stop.subscribe(),
            self.batch_size,
        ));
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        self.state.set(ServiceLifeState::Started);
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        self.state.set(ServiceLifeState::Stopping);
        self.stop.send_replace(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            // The loop ends at its next await point; a listener panic surfaces as a join error.
            if let Err(err) = task.await {
                tracing::error!(%err, "push consumer task ended abnormally");
            }
        }
        let res = self.pull.stop().await;
        self.state.set(ServiceLifeState::Stopped);
        res
    }

    fn current_state(&self) -> ServiceLifeState {
        self.state.get()
    }
}
