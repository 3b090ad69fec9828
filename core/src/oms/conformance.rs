//! The driver conformance suite: one set of checks that every OMS driver runs against (the
//! embedded one now, real brokers later).
//!
//! Enable the `conformance` feature and call [`Conformance::run_all`] (or the single checks) with
//! an access point of the driver under test. A check panics, naming what failed, when the
//! driver breaks the contract. A driver that cannot do something the spec allows returns an
//! [`OmsErrorKind::Unsupported`] error; the check then reports [`Outcome::Unsupported`] instead
//! of passing silently.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    keyvalue, AckContext, InterceptorContext, KeyValue, Message, MessageListener,
    MessagingAccessPoint, OmsError, OmsErrorKind, OmsStatus, PartitionReader, ProducerInterceptor,
    QueueConfig, SeekPosition, ServiceLifeState, ServiceLifecycle, TransactionState,
    TransactionStateCheckListener,
};

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The driver did what the contract says.
    Passed,
    /// The driver reported the feature as unsupported, with its reason.
    Unsupported(String),
}

type Check = std::result::Result<(), OmsError>;

/// The suite, bound to one driver's access point.
#[derive(Debug, Clone)]
pub struct Conformance {
    /// The access point of the driver under test.
    pub access_point: Arc<dyn MessagingAccessPoint>,
    /// Attributes for consumers; they must make unacknowledged messages come back within
    /// [`redelivery_wait`](Self::redelivery_wait).
    pub consumer_attrs: KeyValue,
    /// How long to wait for a redelivery.
    pub redelivery_wait: Duration,
    /// The driver's maximum body size, to check status 1413 (skipped when `None`).
    pub max_body: Option<usize>,
    /// A prefix for the queues the suite creates.
    pub queue_prefix: String,
}

static QUEUE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Waits this long at most for anything that should happen "soon".
const PATIENCE: Duration = Duration::from_secs(10);

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            panic!("conformance: {}", format!($($msg)+));
        }
    };
}

impl Conformance {
    /// The suite on `access_point`, with defaults for everything else.
    pub fn new(access_point: Arc<dyn MessagingAccessPoint>) -> Self {
        Self {
            access_point,
            consumer_attrs: KeyValue::new(),
            redelivery_wait: Duration::from_secs(2),
            max_body: None,
            queue_prefix: "conformance".to_string(),
        }
    }

    async fn queue(&self, partitions: u32) -> Result<String, OmsError> {
        let name = format!(
            "{}-{}-{}",
            self.queue_prefix,
            std::process::id(),
            QUEUE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        self.access_point
            .resource_manager()
            .await?
            .create_queue(&name, QueueConfig::with_partitions(partitions))
            .await?;
        Ok(name)
    }

    async fn producer(&self) -> Result<super::Producer, OmsError> {
        let p = self.access_point.create_producer(KeyValue::new()).await?;
        p.start().await?;
        Ok(p)
    }

    async fn reader(
        &self,
        queue: &str,
        partition: i32,
        at: SeekPosition,
    ) -> Result<Box<dyn PartitionReader>, OmsError> {
        let c = self
            .access_point
            .create_streaming_consumer(self.consumer_attrs.clone())
            .await?;
        c.start().await?;
        c.open(queue, partition, at).await
    }

    /// Reads until `n` messages came (or patience ran out).
    async fn read_n(reader: &mut dyn PartitionReader, n: usize) -> Result<Vec<Message>, OmsError> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while out.len() < n && tokio::time::Instant::now() < deadline {
            out.extend(
                reader
                    .poll_batch(n - out.len(), Duration::from_millis(200))
                    .await?,
            );
        }
        Ok(out)
    }

    async fn read_all_partitions(
        &self,
        queue: &str,
        partitions: u32,
        n: usize,
    ) -> Result<Vec<Message>, OmsError> {
        let mut all = Vec::new();
        for p in 0..partitions as i32 {
            let mut r = self.reader(queue, p, SeekPosition::Beginning).await?;
            loop {
                let batch = r.poll_batch(10_000, Duration::from_millis(200)).await?;
                if batch.is_empty() {
                    break;
                }
                all.extend(batch);
            }
        }
        ensure!(
            all.len() == n,
            "expected {n} messages in {queue}, read {}",
            all.len()
        );
        Ok(all)
    }

    fn outcome(name: &str, check: Check) -> Outcome {
        match check {
            Ok(()) => Outcome::Passed,
            Err(e) if e.kind() == OmsErrorKind::Unsupported => Outcome::Unsupported(e.to_string()),
            Err(e) => panic!("conformance check {name} failed: {e}"),
        }
    }

    async fn send_and_receive_inner(&self) -> Check {
        let q = self.queue(1).await?;
        let producer = self.producer().await?;
        let mut m = Message::new(&q, "hello")
            .with_key("k1")
            .with_property("app", "conformance");
        m.extension_header.correlation_id = Some("corr-1".into());
        m.extension_header.trace_id = Some("trace-1".into());
        m.extension_header.priority = Some(7);
        let sent = producer.send(m).await?;
        ensure!(
            !sent.message_id.is_empty(),
            "send returned an empty message id"
        );
        ensure!(
            sent.partition == 0 && sent.offset == 0,
            "first message should be at 0/0, got {sent:?}"
        );
        let mut r = self.reader(&q, 0, SeekPosition::Beginning).await?;
        let got = Self::read_n(r.as_mut(), 1).await?;
        ensure!(got.len() == 1, "the sent message was not received");
        let g = &got[0];
        ensure!(
            g.message_id() == Some(sent.message_id.as_str()),
            "received id {:?} != sent {}",
            g.message_id(),
            sent.message_id
        );
        ensure!(
            g.destination() == q,
            "destination {} != {q}",
            g.destination()
        );
        ensure!(&g.data[..] == b"hello", "body changed");
        ensure!(g.key() == Some("k1"), "key lost");
        ensure!(
            g.properties.get_str("app") == Some("conformance"),
            "property lost: {:?}",
            g.properties
        );
        let x = &g.extension_header;
        ensure!(
            x.correlation_id.as_deref() == Some("corr-1")
                && x.trace_id.as_deref() == Some("trace-1"),
            "ids lost"
        );
        ensure!(x.priority == Some(7), "priority lost");
        let born = g.header.born_timestamp.unwrap_or(0);
        ensure!(
            born > 0 && g.header.born_host.is_some(),
            "born headers not set"
        );
        ensure!(
            x.store_timestamp.is_some_and(|s| s >= born - 1000),
            "store timestamp missing or far before born"
        );
        ensure!(x.store_host.is_some(), "store host missing");
        ensure!(
            x.offset == Some(0) && x.partition == Some(0),
            "partition/offset not filled in"
        );
        Ok(())
    }

    async fn batch_and_oneway_inner(&self) -> Check {
        let q = self.queue(1).await?;
        let producer = Arc::new(self.producer().await?);
        let batch: Vec<Message> = (0..100)
            .map(|i| Message::new(&q, format!("m{i}")))
            .collect();
        let results = producer.send_batch(batch).await?;
        ensure!(
            results.len() == 100,
            "100 results expected, got {}",
            results.len()
        );
        let ids: std::collections::HashSet<_> =
            results.iter().map(|r| r.message_id.clone()).collect();
        ensure!(ids.len() == 100, "message ids are not unique");
        ensure!(
            results
                .iter()
                .enumerate()
                .all(|(i, r)| r.offset == i as i64),
            "batch offsets not consecutive"
        );
        producer.send_oneway(Message::new(&q, "oneway"));
        let mut r = self.reader(&q, 0, SeekPosition::Offset(100)).await?;
        let got = Self::read_n(r.as_mut(), 1).await?;
        ensure!(
            got.len() == 1 && &got[0].data[..] == b"oneway",
            "the one-way message did not arrive"
        );
        Ok(())
    }

    async fn keyed_inner(&self) -> Check {
        let q = self.queue(4).await?;
        let producer = self.producer().await?;
        for round in 0..4 {
            let batch = (0..100)
                .map(|i| {
                    let seq = round * 100 + i;
                    Message::new(&q, seq.to_string()).with_key(format!("key-{}", seq % 8))
                })
                .collect();
            producer.send_batch(batch).await?;
        }
        let all = self.read_all_partitions(&q, 4, 400).await?;
        let mut partition_of = std::collections::HashMap::new();
        let mut last_seq = std::collections::HashMap::new();
        let mut next_offset = std::collections::HashMap::new();
        for m in &all {
            let key = m.key().unwrap_or_default().to_string();
            let p = m.partition().unwrap_or(-1);
            ensure!(
                *partition_of.entry(key.clone()).or_insert(p) == p,
                "key {key} is in two partitions"
            );
            let seq: i64 = std::str::from_utf8(&m.data)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(-1);
            let last = last_seq.insert(key.clone(), seq).unwrap_or(-1);
            ensure!(seq > last, "key {key}: {seq} came after {last}");
            let expected = next_offset.entry(p).or_insert(0i64);
            ensure!(
                m.offset() == Some(*expected),
                "partition {p}: offset {:?}, expected {expected}",
                m.offset()
            );
            *expected += 1;
        }
        Ok(())
    }

    async fn explicit_partition_inner(&self) -> Check {
        let q = self.queue(3).await?;
        let producer = self.producer().await?;
        let sent = producer
            .send(Message::new(&q, "x").with_partition(2))
            .await?;
        ensure!(
            sent.partition == 2,
            "asked for partition 2, got {}",
            sent.partition
        );
        let err = producer
            .send(Message::new(&q, "x").with_partition(9))
            .await
            .err();
        ensure!(
            err.as_ref().map(OmsError::status) == Some(OmsStatus::BAD_PARAMETER),
            "partition 9 of 3: {err:?}"
        );
        Ok(())
    }

    async fn seek_by_offset_inner(&self) -> Check {
        let q = self.queue(1).await?;
        let producer = self.producer().await?;
        producer
            .send_batch((0..10).map(|i| Message::new(&q, i.to_string())).collect())
            .await?;
        let mut r = self.reader(&q, 0, SeekPosition::Offset(5)).await?;
        ensure!(
            r.position() == 5,
            "position after seek to 5 is {}",
            r.position()
        );
        let got = Self::read_n(r.as_mut(), 5).await?;
        ensure!(
            got.first().and_then(Message::offset) == Some(5) && got.len() == 5,
            "seek to 5 read {:?}",
            got.first().map(Message::offset)
        );
        let mut begin = self.reader(&q, 0, SeekPosition::Beginning).await?;
        ensure!(
            Self::read_n(begin.as_mut(), 10).await?.len() == 10,
            "beginning should read all 10"
        );
        let mut end = self.reader(&q, 0, SeekPosition::End).await?;
        let mut past = self.reader(&q, 0, SeekPosition::Offset(1000)).await?;
        ensure!(
            end.poll_batch(10, Duration::from_millis(100))
                .await?
                .is_empty(),
            "a reader at the end read old messages"
        );
        producer.send(Message::new(&q, "new")).await?;
        for r in [&mut end, &mut past] {
            let got = Self::read_n(r.as_mut(), 1).await?;
            ensure!(
                got.len() == 1 && got[0].offset() == Some(10),
                "a reader at the end should see the new message at 10"
            );
        }
        let c = self
            .access_point
            .create_streaming_consumer(KeyValue::new())
            .await?;
        c.start().await?;
        ensure!(
            c.offset_range(&q, 0).await? == (0, 11),
            "offset range should be (0, 11)"
        );
        Ok(())
    }

    async fn seek_by_timestamp_inner(&self) -> Check {
        let q = self.queue(1).await?;
        let producer = self.producer().await?;
        producer
            .send_batch(
                (0..5)
                    .map(|i| Message::new(&q, format!("old{i}")))
                    .collect(),
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = super::now_millis();
        tokio::time::sleep(Duration::from_millis(20)).await;
        producer
            .send_batch(
                (0..5)
                    .map(|i| Message::new(&q, format!("new{i}")))
                    .collect(),
            )
            .await?;
        let c = self
            .access_point
            .create_streaming_consumer(KeyValue::new())
            .await?;
        c.start().await?;
        ensure!(
            c.offset_for_timestamp(&q, 0, t).await? == Some(5),
            "offset for the timestamp should be 5"
        );
        ensure!(
            c.offset_for_timestamp(&q, 0, t + 3_600_000)
                .await?
                .is_none(),
            "a future timestamp has no offset"
        );
        let mut r = c.open(&q, 0, SeekPosition::Timestamp(t)).await?;
        let got = Self::read_n(r.as_mut(), 5).await?;
        ensure!(
            got.first().map(|m| &m.data[..]) == Some(&b"new0"[..]),
            "timestamp seek read {:?}",
            got.first().map(|m| m.data.clone())
        );
        Ok(())
    }

    async fn group_offsets_inner(&self) -> Check {
        let q = self.queue(2).await?;
        let group = format!("g-{}", QUEUE_COUNTER.fetch_add(1, Ordering::Relaxed));
        let attrs = self
            .consumer_attrs
            .clone()
            .with(keyvalue::CONSUMER_ID, &group);
        let c = self
            .access_point
            .create_streaming_consumer(attrs.clone())
            .await?;
        c.start().await?;
        ensure!(
            c.committed(&q, 1).await?.is_none(),
            "a new group has no committed offset"
        );
        c.commit(&q, 1, 5).await?;
        c.stop().await?;
        let again = self.access_point.create_streaming_consumer(attrs).await?;
        again.start().await?;
        ensure!(
            again.committed(&q, 1).await? == Some(5),
            "the committed offset did not survive the consumer"
        );
        ensure!(
            again.committed(&q, 0).await?.is_none(),
            "partitions are committed separately"
        );
        let other = self
            .access_point
            .create_streaming_consumer(
                self.consumer_attrs
                    .clone()
                    .with(keyvalue::CONSUMER_ID, format!("{group}-other")),
            )
            .await?;
        other.start().await?;
        ensure!(
            other.committed(&q, 1).await?.is_none(),
            "groups are separate"
        );
        Ok(())
    }

    async fn pull_inner(&self) -> Check {
        let q = self.queue(1).await?;
        let producer = self.producer().await?;
        producer
            .send_batch((0..3).map(|i| Message::new(&q, format!("p{i}"))).collect())
            .await?;
        let group = format!("pull-{}", QUEUE_COUNTER.fetch_add(1, Ordering::Relaxed));
        let attrs = self
            .consumer_attrs
            .clone()
            .with(keyvalue::CONSUMER_ID, &group);
        let consumer = self
            .access_point
            .create_pull_consumer(attrs.clone())
            .await?;
        consumer.bind_queues(std::slice::from_ref(&q)).await?;
        consumer.start().await?;
        let mut got = Vec::new();
        while got.len() < 3 {
            let batch = consumer.batch_receive(3 - got.len(), PATIENCE).await?;
            ensure!(
                !batch.is_empty(),
                "pull consumer received {} of 3",
                got.len()
            );
            got.extend(batch);
        }
        ensure!(
            got.iter().all(|m| m.extension_header.delivery_count == 1),
            "first deliveries count 1"
        );
        for m in &got[..2] {
            consumer
                .ack(
                    m.receipt
                        .as_ref()
                        .expect("received messages carry a receipt"),
                )
                .await?;
        }
        let again = consumer.receive(self.redelivery_wait + PATIENCE).await?;
        let again = again.unwrap_or_else(|| {
            panic!("conformance: the unacknowledged message was not redelivered")
        });
        ensure!(&again.data[..] == b"p2", "redelivered the wrong message");
        ensure!(
            again.extension_header.delivery_count == 2,
            "redelivery count {}",
            again.extension_header.delivery_count
        );
        consumer
            .ack(again.receipt.as_ref().expect("receipt"))
            .await?;
        consumer.stop().await?;
        let later = self.access_point.create_pull_consumer(attrs).await?;
        later.bind_queues(std::slice::from_ref(&q)).await?;
        later.start().await?;
        let none = later.receive(Duration::from_millis(300)).await?;
        ensure!(
            none.is_none(),
            "an acknowledged message came back: {:?}",
            none.map(|m| m.data)
        );
        producer.send(Message::new(&q, "after")).await?;
        let after = later.receive(PATIENCE).await?;
        ensure!(
            after.map(|m| m.data) == Some(bytes::Bytes::from_static(b"after")),
            "the group did not resume after its commit"
        );
        later.stop().await?;
        Ok(())
    }

    async fn push_inner(&self) -> Check {
        struct Collect(Mutex<Vec<String>>);
        #[async_trait]
        impl MessageListener for Collect {
            async fn on_received(&self, message: Message, context: AckContext) {
                self.0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(String::from_utf8_lossy(&message.data).into_owned());
                context.ack();
            }
        }
        let q = self.queue(2).await?;
        let producer = self.producer().await?;
        producer
            .send_batch(
                (0..20)
                    .map(|i| Message::new(&q, i.to_string()).with_key(i.to_string()))
                    .collect(),
            )
            .await?;
        let attrs = self.consumer_attrs.clone().with(
            keyvalue::CONSUMER_ID,
            format!("push-{}", QUEUE_COUNTER.fetch_add(1, Ordering::Relaxed)),
        );
        let push = self.access_point.create_push_consumer(attrs).await?;
        let seen = Arc::new(Collect(Mutex::new(Vec::new())));
        push.bind_queues(std::slice::from_ref(&q), seen.clone())
            .await?;
        push.start().await?;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while seen.0.lock().unwrap_or_else(|e| e.into_inner()).len() < 20
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        push.suspend(None);
        ensure!(push.is_suspended(), "suspend did not take");
        push.resume();
        push.stop().await?;
        let mut got = seen.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        got.sort_by_key(|s| s.parse::<i32>().unwrap_or(-1));
        ensure!(
            got == (0..20).map(|i| i.to_string()).collect::<Vec<_>>(),
            "push consumer saw {got:?}"
        );
        Ok(())
    }

    async fn transactions_inner(&self) -> Check {
        struct Decide(TransactionState);
        impl TransactionStateCheckListener for Decide {
            fn check(&self, _: &Message) -> TransactionState {
                self.0
            }
        }
        // A started transactional producer whose listener always decides `state`.
        let transactional = |state| async move {
            let p = self
                .access_point
                .create_transactional_producer(KeyValue::new(), Arc::new(Decide(state)))
                .await?;
            p.start().await?;
            Ok::<_, OmsError>(p)
        };
        let q = self.queue(1).await?;
        let plain = self.producer().await?;
        let err = plain.prepare(Message::new(&q, "x")).await.err();
        ensure!(
            err.as_ref().map(OmsError::kind) == Some(OmsErrorKind::Transaction),
            "prepare without a listener: {err:?}"
        );
        let producer = transactional(TransactionState::Unknown).await?;
        let mut r = self.reader(&q, 0, SeekPosition::Beginning).await?;
        let tx = producer.prepare(Message::new(&q, "committed")).await?;
        let txid = tx.transaction_id().to_string();
        ensure!(
            r.poll_batch(10, Duration::from_millis(200))
                .await?
                .is_empty(),
            "a prepared message is visible"
        );
        let sent = tx.commit().await?;
        let got = Self::read_n(r.as_mut(), 1).await?;
        ensure!(
            got.len() == 1 && &got[0].data[..] == b"committed",
            "the committed message is not visible"
        );
        ensure!(
            got[0].extension_header.transaction_id.as_deref() == Some(txid.as_str()),
            "transaction id lost"
        );
        ensure!(
            got[0].message_id() == Some(sent.message_id.as_str()),
            "commit returned another id"
        );
        producer
            .prepare(Message::new(&q, "rolled back"))
            .await?
            .rollback()
            .await?;
        let orphan = producer.prepare(Message::new(&q, "orphan")).await?;
        // The producer dies without deciding. (Stopped, not only the handle dropped: a broker
        // asks a live producer of the transaction's group, and this one would say "unknown".)
        drop(orphan);
        producer.stop().await?;
        ensure!(
            r.poll_batch(10, Duration::from_millis(200))
                .await?
                .is_empty(),
            "rolled back or undecided messages are visible"
        );
        // Starting it resolves the orphan; it is kept (not dropped) until the checks below.
        let _resolver = transactional(TransactionState::Commit).await?;
        let got = Self::read_n(r.as_mut(), 1).await?;
        ensure!(
            got.len() == 1 && &got[0].data[..] == b"orphan",
            "the orphaned transaction was not resolved by the listener: read {:?}",
            got.iter()
                .map(|m| String::from_utf8_lossy(&m.data))
                .collect::<Vec<_>>()
        );
        let _second = transactional(TransactionState::Commit).await?;
        ensure!(
            r.poll_batch(10, Duration::from_millis(300))
                .await?
                .is_empty(),
            "a transaction was published twice"
        );
        Ok(())
    }

    async fn delay_inner(&self) -> Check {
        let q = self.queue(1).await?;
        let producer = self.producer().await?;
        let mut r = self.reader(&q, 0, SeekPosition::Beginning).await?;
        producer
            .send(Message::new(&q, "expired").with_expire_time(super::now_millis() - 1000))
            .await?;
        producer
            .send(Message::new(&q, "later").with_delay(Duration::from_millis(400)))
            .await?;
        let early = r.poll_batch(10, Duration::from_millis(150)).await?;
        ensure!(
            early.is_empty(),
            "delayed or expired message delivered early: {:?}",
            early.iter().map(|m| m.data.clone()).collect::<Vec<_>>()
        );
        let got = Self::read_n(r.as_mut(), 1).await?;
        ensure!(
            got.len() == 1 && &got[0].data[..] == b"later",
            "the delayed message did not arrive"
        );
        let born = got[0].header.born_timestamp.unwrap_or(0);
        ensure!(
            got[0].extension_header.store_timestamp.unwrap_or(0) >= born + 400,
            "delivered before its delay"
        );
        Ok(())
    }

    async fn interceptors_inner(&self) -> Check {
        struct Tag(AtomicU32);
        impl ProducerInterceptor for Tag {
            fn pre_send(&self, message: &mut Message, _: &mut InterceptorContext) {
                message.properties.put("tagged", "yes");
            }
            fn post_send(&self, _: &Message, _: &super::SendResult, _: &InterceptorContext) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let q = self.queue(1).await?;
        let producer = self.producer().await?;
        let tag = Arc::new(Tag(AtomicU32::new(0)));
        let id = producer.add_interceptor(tag.clone());
        producer.send(Message::new(&q, "a")).await?;
        ensure!(producer.remove_interceptor(id), "interceptor not removed");
        producer.send(Message::new(&q, "b")).await?;
        let mut r = self.reader(&q, 0, SeekPosition::Beginning).await?;
        let got = Self::read_n(r.as_mut(), 2).await?;
        ensure!(
            got[0].properties.get_str("tagged") == Some("yes"),
            "pre_send change lost"
        );
        ensure!(
            got[1].properties.get_str("tagged").is_none(),
            "removed interceptor still ran"
        );
        ensure!(
            tag.0.load(Ordering::Relaxed) == 1,
            "post_send ran {} times",
            tag.0.load(Ordering::Relaxed)
        );
        Ok(())
    }

    async fn lifecycle_inner(&self) -> Check {
        let q = self.queue(1).await?;
        let producer = self.access_point.create_producer(KeyValue::new()).await?;
        ensure!(
            producer.current_state() == ServiceLifeState::Initialized,
            "new producer not Initialized"
        );
        let err = producer.send(Message::new(&q, "x")).await.err();
        ensure!(
            err.as_ref().map(OmsError::status) == Some(OmsStatus::SERVICE_NOT_AVAILABLE),
            "send before start: {err:?}"
        );
        producer.start().await?;
        producer.send(Message::new(&q, "x")).await?;
        producer.stop().await?;
        ensure!(
            producer.current_state() == ServiceLifeState::Stopped,
            "stopped producer not Stopped"
        );
        ensure!(
            producer.send(Message::new(&q, "x")).await.is_err(),
            "send after stop succeeded"
        );
        producer.start().await?;
        producer.send(Message::new(&q, "again")).await?;
        Ok(())
    }

    async fn resource_manager_inner(&self) -> Check {
        let rm = self.access_point.resource_manager().await?;
        let ns = format!("ns{}", QUEUE_COUNTER.fetch_add(1, Ordering::Relaxed));
        rm.create_namespace(&ns).await?;
        ensure!(
            rm.list_namespaces().await?.contains(&ns),
            "namespace not listed"
        );
        let q = format!("{ns}://orders");
        rm.create_queue(&q, QueueConfig::with_partitions(3)).await?;
        ensure!(
            rm.list_queues(Some(&ns)).await? == vec![q.clone()],
            "queue not listed in its namespace"
        );
        self.producer()
            .await?
            .send_batch((0..7).map(|i| Message::new(&q, i.to_string())).collect())
            .await?;
        let d = rm.describe_queue(&q).await?;
        ensure!(
            d.partitions.len() == 3 && d.message_count() == 7,
            "describe: {d:?}"
        );
        rm.delete_queue(&q).await?;
        ensure!(
            rm.list_queues(Some(&ns)).await?.is_empty(),
            "deleted queue still listed"
        );
        rm.delete_namespace(&ns).await?;
        ensure!(
            !rm.list_namespaces().await?.contains(&ns),
            "deleted namespace still listed"
        );
        Ok(())
    }

    async fn error_codes_inner(&self) -> Check {
        fn status<T>(r: Result<T, OmsError>) -> Option<OmsStatus> {
            r.err().map(|e| e.status())
        }
        let rm = self.access_point.resource_manager().await?;
        let producer = self.producer().await?;
        let missing = format!("{}-missing-{}", self.queue_prefix, std::process::id());
        ensure!(
            status(producer.send(Message::new(&missing, "x")).await)
                == Some(OmsStatus::DESTINATION_NOT_FOUND),
            "send to a missing queue"
        );
        ensure!(
            status(rm.describe_queue(&missing).await) == Some(OmsStatus::DESTINATION_NOT_FOUND),
            "describe a missing queue"
        );
        ensure!(
            status(rm.delete_queue(&missing).await) == Some(OmsStatus::DESTINATION_NOT_FOUND),
            "delete a missing queue"
        );
        let q = self.queue(1).await?;
        ensure!(
            status(rm.create_queue(&q, QueueConfig::default()).await)
                == Some(OmsStatus::DESTINATION_ALREADY_EXISTS),
            "create an existing queue"
        );
        ensure!(
            status(rm.create_queue("bad name!", QueueConfig::default()).await)
                == Some(OmsStatus::BAD_PARAMETER),
            "bad queue name"
        );
        if let Some(max) = self.max_body {
            let err = producer
                .send(Message::new(&q, vec![0u8; max + 1]))
                .await
                .err();
            ensure!(
                err.as_ref().map(OmsError::status) == Some(OmsStatus::MESSAGE_BODY_TOO_LARGE),
                "oversized body: {err:?}"
            );
            producer.send(Message::new(&q, vec![0u8; max])).await?;
        }
        Ok(())
    }
}

/// Generates, for each check, the public method that runs it and reports its [`Outcome`], and
/// [`Conformance::run_all`] over all of them, so that the list is written once.
macro_rules! checks {
    ($($(#[$doc:meta])+ $name:ident => $inner:ident;)+) => {
        impl Conformance {
            $(
                $(#[$doc])+
                pub async fn $name(&self) -> Outcome {
                    Self::outcome(stringify!($name), self.$inner().await)
                }
            )+

            /// Runs every check; returns each one's name and outcome. Panics on the first
            /// failure.
            pub async fn run_all(&self) -> Vec<(&'static str, Outcome)> {
                let mut report = Vec::new();
                $(report.push((stringify!($name), self.$name().await));)+
                report
            }
        }
    };
}

checks! {
    /// A message keeps its body, key, properties and headers; the server fills in id, store
    /// time and host, partition and offset.
    send_and_receive => send_and_receive_inner;
    /// A batch is stored in order with one result per message; a one-way send arrives.
    batch_and_oneway => batch_and_oneway_inner;
    /// Messages with one key go to one partition, in send order; offsets are dense.
    keyed_partitions_keep_order => keyed_inner;
    /// A message naming a partition lands there; a partition that does not exist is 1418.
    explicit_partition => explicit_partition_inner;
    /// Readers open at the beginning, the end, or an offset (clamped to the end).
    seek_by_offset => seek_by_offset_inner;
    /// A timestamp seek starts at the first message stored at or after it.
    seek_by_timestamp => seek_by_timestamp_inner;
    /// Committed offsets belong to the consumer group and outlive the consumer.
    group_offsets => group_offsets_inner;
    /// A pull consumer gets each message once; unacknowledged ones come back with a higher
    /// delivery count; acknowledged ones never come back to the group.
    pull_ack_and_redelivery => pull_inner;
    /// A push consumer hands every message to its listener.
    push_consumer => push_inner;
    /// Prepared messages stay invisible until commit, vanish on rollback, and a transaction left
    /// open by a producer that went away is resolved by the check listener, exactly once.
    transactions => transactions_inner;
    /// A delayed message appears only after its delay; an expired one is never delivered.
    delay_and_expiry => delay_inner;
    /// Interceptors see and may change every message; removed ones stop.
    interceptors => interceptors_inner;
    /// A producer serves only while started, and can be restarted.
    lifecycle => lifecycle_inner;
    /// Namespaces and queues are created, listed, described and deleted.
    resource_manager => resource_manager_inner;
    /// Missing and duplicate destinations and oversized bodies have the spec's codes.
    error_codes => error_codes_inner;
}
