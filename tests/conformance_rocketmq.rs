//! The driver conformance suite against a real RocketMQ name server and broker (see
//! `support/rocketmq.rs`), one test per check. What RocketMQ cannot do is reported by the
//! driver as unsupported, and each such check is listed here with the reason.

mod support;

use std::sync::Arc;
use std::time::Duration;

use omstream_core::oms::conformance::{Conformance, Outcome};
use omstream_core::oms::rocketmq::ROCKETMQ_ACK_TIMEOUT_MS;
use omstream_core::oms::{
    connect, now_millis, KeyValue, Message, MessagingAccessPoint, Producer, QueueConfig,
    SeekPosition, ServiceLifecycle,
};

/// An access point.
type AccessPoint = Arc<dyn MessagingAccessPoint>;

async fn suite() -> Conformance {
    // `RUST_LOG=omstream_core=debug` shows the driver's view (check-backs, retries).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let ap = connect(&support::rocketmq::url(), KeyValue::new())
        .await
        .expect("connect");
    let mut suite = Conformance::new(Arc::clone(&ap));
    // Topic names allow no dots; the suite's default prefix has none.
    suite.queue_prefix = "conformance".to_string();
    // Pull consumers redeliver what is not acknowledged within 2 s.
    suite.consumer_attrs = KeyValue::new().with(ROCKETMQ_ACK_TIMEOUT_MS, 2000);
    suite.redelivery_wait = Duration::from_secs(5);
    // The broker's default maximum message size (4 MiB).
    suite.max_body = None;
    suite
}

macro_rules! passes {
    ($($name:ident),+ $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let outcome = suite().await.$name().await;
            assert_eq!(outcome, Outcome::Passed);
        }
    )+};
}

passes!(
    send_and_receive,
    batch_and_oneway,
    keyed_partitions_keep_order,
    explicit_partition,
    seek_by_offset,
    seek_by_timestamp,
    group_offsets,
    transactions,
    delay_and_expiry,
    interceptors,
    lifecycle,
    error_codes,
    pull_ack_and_redelivery,
    push_consumer,
);

/// RocketMQ has no namespace objects (a namespace is a topic name's prefix), so the check,
/// which creates and deletes one, stops at the first step with the spec's "unsupported".
/// The queue operations it goes on to check are covered by `queues_are_created_described_listed_and_deleted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_manager() {
    let outcome = suite().await.resource_manager().await;
    match outcome {
        Outcome::Unsupported(reason) => assert!(reason.contains("namespaces"), "{reason}"),
        other => panic!("expected unsupported namespaces, got {other:?}"),
    }
}

/// The queue half of the resource manager check, on the default namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_are_created_described_listed_and_deleted() {
    use omstream_core::oms::OmsStatus;
    let ap = connect(&support::rocketmq::url(), KeyValue::new())
        .await
        .unwrap();
    let rm = ap.resource_manager().await.unwrap();
    let queue = format!(
        "rm-{}-{}",
        std::process::id(),
        omstream_core::oms::now_millis()
    );
    rm.create_queue(&queue, QueueConfig::with_partitions(3))
        .await
        .unwrap();
    let again = rm
        .create_queue(&queue, QueueConfig::with_partitions(3))
        .await;
    assert_eq!(
        again.unwrap_err().status(),
        OmsStatus::DESTINATION_ALREADY_EXISTS
    );
    assert!(rm.list_queues(None).await.unwrap().contains(&queue));
    let producer = ap.create_producer(KeyValue::new()).await.unwrap();
    producer.start().await.unwrap();
    producer
        .send_batch(
            (0..7)
                .map(|i| Message::new(&queue, i.to_string()))
                .collect(),
        )
        .await
        .unwrap();
    let described = rm.describe_queue(&queue).await.unwrap();
    assert_eq!(described.partitions.len(), 3);
    assert_eq!(described.message_count(), 7, "{described:?}");
    rm.delete_queue(&queue).await.unwrap();
    assert!(!rm.list_queues(None).await.unwrap().contains(&queue));
    assert_eq!(
        rm.describe_queue(&queue).await.unwrap_err().status(),
        OmsStatus::DESTINATION_NOT_FOUND
    );
}

/// A connection, a new queue `<prefix>-<pid>-<ms>` of `partitions`, and a started producer.
async fn fresh_queue(prefix: &str, partitions: u32) -> (AccessPoint, String, Producer) {
    let ap = connect(&support::rocketmq::url(), KeyValue::new())
        .await
        .unwrap();
    let queue = format!("{prefix}-{}-{}", std::process::id(), now_millis());
    ap.resource_manager()
        .await
        .unwrap()
        .create_queue(&queue, QueueConfig::with_partitions(partitions))
        .await
        .unwrap();
    let producer = ap.create_producer(KeyValue::new()).await.unwrap();
    producer.start().await.unwrap();
    (ap, queue, producer)
}

/// The first `n` messages of `partition` of `queue` from `from`.
async fn read(
    ap: &AccessPoint,
    queue: &str,
    partition: i32,
    from: SeekPosition,
    n: usize,
) -> Vec<Message> {
    let consumer = ap.create_streaming_consumer(KeyValue::new()).await.unwrap();
    consumer.start().await.unwrap();
    let mut reader = consumer.open(queue, partition, from).await.unwrap();
    let mut received = Vec::new();
    while received.len() < n {
        received.extend(reader.next_batch(n - received.len()).await.unwrap());
    }
    received
}

/// Every message of a batch has its own id, on send and on receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_members_keep_their_own_ids() {
    let (ap, queue, producer) = fresh_queue("ids", 1).await;
    let sent = producer
        .send_batch(
            (0..20)
                .map(|i| Message::new(&queue, i.to_string()))
                .collect(),
        )
        .await
        .unwrap();
    let received = read(&ap, &queue, 0, SeekPosition::Beginning, 20).await;
    let sent_ids: Vec<&str> = sent.iter().map(|r| r.message_id.as_str()).collect();
    let received_ids: Vec<&str> = received.iter().filter_map(|m| m.message_id()).collect();
    assert_eq!(received_ids, sent_ids);
    let unique: std::collections::HashSet<_> = received_ids.iter().collect();
    assert_eq!(unique.len(), 20);
}

/// An unkeyed batch goes to one partition, the next batch to the next one (one request per
/// batch, as the bare client sends it); a batch over what one request carries (6.4 MB here)
/// is split into requests that keep its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_go_to_one_partition_each_and_big_ones_are_split_in_order() {
    let (ap, queue, producer) = fresh_queue("split", 4).await;
    let mut partitions = Vec::new();
    for _ in 0..4 {
        let sent = producer
            .send_batch(
                (0..10)
                    .map(|i| Message::new(&queue, i.to_string()))
                    .collect(),
            )
            .await
            .unwrap();
        let first = sent[0].partition;
        assert!(sent.iter().all(|r| r.partition == first), "{sent:?}");
        partitions.push(first);
    }
    partitions.sort();
    assert_eq!(partitions, vec![0, 1, 2, 3]);

    let big: Vec<Message> = (0..100u32)
        .map(|i| {
            let mut body = vec![b'x'; 64 * 1024];
            body[..4].copy_from_slice(&i.to_be_bytes());
            Message::new(&queue, body).with_partition(2)
        })
        .collect();
    let sent = producer.send_batch(big).await.unwrap();
    let offsets: Vec<i64> = sent.iter().map(|r| r.offset).collect();
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
    let order: Vec<u32> = read(&ap, &queue, 2, SeekPosition::Offset(offsets[0]), 100)
        .await
        .iter()
        .map(|m| u32::from_be_bytes(m.data[..4].try_into().unwrap()))
        .collect();
    assert_eq!(order, (0..100).collect::<Vec<_>>());
}

/// The born headers are the ones RocketMQ records at send (time and the client's address);
/// a bornHost the sender set itself comes back as set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn born_headers_are_rocketmq_s_unless_the_sender_set_the_host() {
    let (ap, queue, producer) = fresh_queue("born", 1).await;
    let before = omstream_core::oms::now_millis();
    let mut own = Message::new(&queue, "own host");
    own.header.born_host = Some("edge-7:42".into());
    producer
        .send_batch(vec![Message::new(&queue, "plain"), own])
        .await
        .unwrap();
    let after = omstream_core::oms::now_millis();
    let received = read(&ap, &queue, 0, SeekPosition::Beginning, 2).await;
    for message in &received {
        let born = message.header.born_timestamp.unwrap();
        assert!(
            (before..=after).contains(&born),
            "{before} <= {born} <= {after}"
        );
    }
    let plain = received[0].header.born_host.as_deref().unwrap();
    let address: std::net::SocketAddr = plain.parse().unwrap();
    assert!(address.ip().is_loopback(), "{plain}");
    assert_eq!(received[1].header.born_host.as_deref(), Some("edge-7:42"));
    assert!(!received[0].properties.contains_key("OMS_BORN_HOST"));
}

/// Two pull consumers of one group split a topic's message queues: together they receive
/// every message once (all are acknowledged), and each receives some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_s_pull_consumers_share_the_partitions() {
    use omstream_core::oms::keyvalue;
    let ap = connect(&support::rocketmq::url(), KeyValue::new())
        .await
        .unwrap();
    let unique = format!(
        "{}-{}",
        std::process::id(),
        omstream_core::oms::now_millis()
    );
    let queue = format!("share-{unique}");
    ap.resource_manager()
        .await
        .unwrap()
        .create_queue(&queue, QueueConfig::with_partitions(4))
        .await
        .unwrap();
    let attrs = KeyValue::new().with(keyvalue::CONSUMER_ID, format!("share-{unique}"));
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let consumer = ap.create_pull_consumer(attrs.clone()).await.unwrap();
        consumer
            .bind_queues(std::slice::from_ref(&queue))
            .await
            .unwrap();
        consumer.start().await.unwrap();
        consumers.push(consumer);
    }
    // The broker tells both of the other at once; give their rebalances a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let producer = ap.create_producer(KeyValue::new()).await.unwrap();
    producer.start().await.unwrap();
    producer
        .send_batch(
            (0..40)
                .map(|i| Message::new(&queue, i.to_string()).with_key(i.to_string()))
                .collect(),
        )
        .await
        .unwrap();
    let receivers = consumers.iter().map(|consumer| async move {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        while tokio::time::Instant::now() < deadline {
            for message in consumer
                .batch_receive(16, Duration::from_millis(200))
                .await
                .unwrap()
            {
                consumer
                    .ack(message.receipt.as_ref().unwrap())
                    .await
                    .unwrap();
                got.push(String::from_utf8_lossy(&message.data).into_owned());
            }
        }
        got
    });
    let received = futures::future::join_all(receivers).await;
    for consumer in &consumers {
        consumer.stop().await.unwrap();
    }
    assert!(
        received.iter().all(|got| !got.is_empty()),
        "one consumer got nothing: {received:?}"
    );
    let mut all: Vec<i32> = received
        .concat()
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..40).collect::<Vec<_>>(),
        "each message once, over both"
    );
}
