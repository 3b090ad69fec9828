//! Consumer groups on the embedded driver: pull consumers of one group split a queue's
//! partitions, each message goes to one of them, and the partitions of a consumer that stops
//! move to the one that is left.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use omstream::oms::embedded::{EMBEDDED_ACK_TIMEOUT_MS, EMBEDDED_DIR};
use omstream::oms::{
    connect, keyvalue, KeyValue, Message, MessagingAccessPoint, PullConsumer, QueueConfig,
    ServiceLifecycle,
};

async fn consumer(ap: &Arc<dyn MessagingAccessPoint>) -> Arc<dyn PullConsumer> {
    let attrs = KeyValue::new()
        .with(keyvalue::CONSUMER_ID, "billing")
        .with(EMBEDDED_ACK_TIMEOUT_MS, 60_000);
    let c = ap.create_pull_consumer(attrs).await.unwrap();
    c.bind_queues(&["orders".to_string()]).await.unwrap();
    c.start().await.unwrap();
    c
}

/// Receives and acknowledges until `quiet` passes with nothing new.
async fn drain(c: &Arc<dyn PullConsumer>, quiet: Duration) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let batch = c.batch_receive(100, quiet).await.unwrap();
        if batch.is_empty() {
            return got;
        }
        for m in batch {
            c.ack(m.receipt.as_ref().unwrap()).await.unwrap();
            got.push(String::from_utf8(m.data.to_vec()).unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_splits_partitions_and_takes_over_a_stopped_member() {
    let dir = tempfile::tempdir().unwrap();
    let attrs = KeyValue::new().with(EMBEDDED_DIR, dir.path().display());
    let ap = connect("oms:embedded://localhost/groups", attrs)
        .await
        .unwrap();
    let rm = ap.resource_manager().await.unwrap();
    rm.create_queue("orders", QueueConfig::with_partitions(4))
        .await
        .unwrap();
    let producer = ap.create_producer(KeyValue::new()).await.unwrap();
    producer.start().await.unwrap();
    let send = |range: std::ops::Range<u32>| {
        let batch: Vec<Message> = range
            .map(|i| Message::new("orders", i.to_string()).with_partition((i % 4) as i32))
            .collect();
        producer.send_batch(batch)
    };
    send(0..400).await.unwrap();

    // The first member claims every free partition; the second finds none free.
    let a = consumer(&ap).await;
    let first = drain(&a, Duration::from_millis(300)).await;
    let b = consumer(&ap).await;
    let none = drain(&b, Duration::from_millis(300)).await;
    assert_eq!(first.len(), 400, "the first member reads everything");
    assert!(none.is_empty(), "a partition had two owners: {none:?}");

    // A stops: its partitions (and its committed offsets) pass to B within a claim interval.
    a.stop().await.unwrap();
    send(400..480).await.unwrap();
    let mut later = Vec::new();
    for _ in 0..50 {
        later.extend(drain(&b, Duration::from_millis(100)).await);
        if later.len() >= 80 {
            break;
        }
    }
    let expected: HashSet<String> = (400..480).map(|i| i.to_string()).collect();
    let got: HashSet<String> = later.iter().cloned().collect();
    assert_eq!(
        later.len(),
        80,
        "each new message once, none of the acknowledged ones again"
    );
    assert_eq!(got, expected);
    b.stop().await.unwrap();
}
