//! OMS sources and sinks end to end, on the embedded driver in a temp dir: JSON records from a
//! partitioned queue through a job into another queue, event time from headers or the record,
//! undecodable messages to a dead-letter queue or skipped, every start position, and an
//! unbounded job stopped through its handle.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod support;
use support::{read_queue, store, AccessPoint};

use omstream::core::connectors::{
    DeadLetter, Decoder, EventTimeFrom, FallbackPosition, OmsSinkConfig, OmsSourceConfig,
    StartPosition, DLQ_OFFSET, DLQ_OPERATOR, DLQ_PARTITION, DLQ_QUEUE, DLQ_REASON,
};
use omstream::core::runtime::{JobConfig, Record, RuntimeError, StreamEnv};
use omstream::oms::{now_millis, KeyValue, Message, ServiceLifecycle};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Order {
    id: u32,
    user: String,
    /// The order's number among its user's orders.
    seq: u32,
    amount: u32,
    /// Event time set by the producer of the test.
    ts: i64,
}

fn order(id: u32) -> Order {
    Order {
        id,
        user: format!("user-{}", id % 20),
        seq: id / 20,
        amount: id * 7 % 100,
        ts: 1_000_000 + i64::from(id),
    }
}

/// Sends messages keyed by the user (so one user's orders share a partition, in order).
async fn send_bodies(ap: &AccessPoint, queue: &str, bodies: Vec<(String, String)>) {
    let producer = ap.create_producer(KeyValue::new()).await.unwrap();
    producer.start().await.unwrap();
    for chunk in bodies.chunks(500) {
        let batch = chunk
            .iter()
            .map(|(key, body)| Message::new(queue, body.clone()).with_key(key.clone()))
            .collect();
        producer.send_batch(batch).await.unwrap();
    }
}

async fn send_orders(ap: &AccessPoint, queue: &str, ids: impl Iterator<Item = u32>) {
    let bodies = ids
        .map(order)
        .map(|o| (o.user.clone(), serde_json::to_string(&o).unwrap()))
        .collect();
    send_bodies(ap, queue, bodies).await;
}

fn decode_all(messages: &BTreeMap<i32, Vec<Message>>) -> Vec<Order> {
    let mut orders: Vec<Order> = messages
        .values()
        .flatten()
        .map(|m| serde_json::from_slice(&m.data).unwrap())
        .collect();
    orders.sort_by_key(|o| o.id);
    orders
}

fn sorted_ids(records: &[Record<Order>]) -> Vec<u32> {
    let mut ids: Vec<u32> = records.iter().map(|r| r.value.id).collect();
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_records_go_from_queue_to_queue_exactly_once_in_key_order() {
    for parallelism in [1, 2] {
        let (_dir, ap) = store(&[("orders", 4), ("totals", 4)]).await;
        send_orders(&ap, "orders", 0..2_000).await;

        let env = StreamEnv::new(JobConfig::named("copy").with_batch_size(256));
        let source = OmsSourceConfig::<Order>::new(ap.clone(), "orders")
            .bounded(true)
            .parallelism(parallelism);
        let metrics = source.metrics();
        let orders = env.add_oms_source(source).unwrap();
        let sink = OmsSinkConfig::new(ap.clone(), "totals")
            .key(|o: &Order| o.user.clone())
            .property("source", "omstream")
            .properties(|o: &Order, props| {
                props.put("seq", o.seq);
            });
        orders.add_oms_sink(sink).unwrap();
        let report = env.execute().await.unwrap();
        assert_eq!(report.operator("orders").unwrap().records_out, 2_000);
        assert_eq!(report.operator("totals-sink").unwrap().records_in, 2_000);
        assert_eq!(metrics.records(), 2_000);

        let written = read_queue(&ap, "totals").await;
        let expected: Vec<Order> = (0..2_000).map(order).collect();
        assert_eq!(decode_all(&written), expected, "parallelism {parallelism}");
        for messages in written.values() {
            let mut last_seq: HashMap<String, u32> = HashMap::new();
            for message in messages {
                let o: Order = serde_json::from_slice(&message.data).unwrap();
                assert_eq!(message.key(), Some(o.user.as_str()));
                assert_eq!(message.properties.get_str("source"), Some("omstream"));
                assert_eq!(
                    message.properties.get_str("seq"),
                    Some(o.seq.to_string().as_str())
                );
                if let Some(previous) = last_seq.insert(o.user.clone(), o.seq) {
                    assert!(previous < o.seq, "{} out of order", o.user);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_time_comes_from_the_born_or_store_header_or_the_record() {
    let (_dir, ap) = store(&[("orders", 2)]).await;
    send_orders(&ap, "orders", 0..200).await;
    let raw: HashMap<u32, Message> = read_queue(&ap, "orders")
        .await
        .into_values()
        .flatten()
        .map(|m| (serde_json::from_slice::<Order>(&m.data).unwrap().id, m))
        .collect();

    let run = |event_time: EventTimeFrom<Order>| {
        let ap = ap.clone();
        async move {
            let env = StreamEnv::new(JobConfig::named("event-time"));
            let source = OmsSourceConfig::<Order>::new(ap, "orders")
                .bounded(true)
                .event_time(event_time);
            let collected = env.add_oms_source(source).unwrap().collect();
            env.execute().await.unwrap();
            collected.records()
        }
    };
    let born = run(EventTimeFrom::BornTimestamp).await;
    let store_time = run(EventTimeFrom::StoreTimestamp).await;
    let extracted = run(EventTimeFrom::extract(|o: &Order| o.ts)).await;
    for records in [&born, &store_time, &extracted] {
        assert_eq!(sorted_ids(records), (0..200).collect::<Vec<_>>());
    }
    for r in &born {
        assert_eq!(Some(r.timestamp), raw[&r.value.id].header.born_timestamp);
    }
    for r in &store_time {
        let stored = raw[&r.value.id].extension_header.store_timestamp;
        assert_eq!(Some(r.timestamp), stored);
    }
    for r in &extracted {
        assert_eq!(r.timestamp, r.value.ts);
    }
}

/// Orders 0..500 with every 25th body broken: invalid JSON, or JSON of the wrong shape.
async fn send_with_bad_messages(ap: &AccessPoint) -> (Vec<u32>, usize) {
    let mut good = Vec::new();
    let mut bad = 0;
    let bodies = (0..500u32)
        .map(|id| {
            let o = order(id);
            let body = match id % 25 {
                3 => format!(r#"{{"id":{id},"user":"#),
                4 => format!(r#"{{"id":"{id}"}}"#),
                _ => {
                    good.push(id);
                    serde_json::to_string(&o).unwrap()
                }
            };
            if id % 25 == 3 || id % 25 == 4 {
                bad += 1;
            }
            (o.user, body)
        })
        .collect();
    send_bodies(ap, "orders", bodies).await;
    (good, bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_go_to_the_dead_letter_queue_and_the_job_completes() {
    let (_dir, ap) = store(&[("orders", 4), ("orders.dlq", 1), ("totals", 2)]).await;
    let (good, bad) = send_with_bad_messages(&ap).await;
    let originals: HashMap<(i32, i64), Message> = read_queue(&ap, "orders")
        .await
        .into_iter()
        .flat_map(|(p, ms)| ms.into_iter().map(move |m| ((p, m.offset().unwrap()), m)))
        .collect();

    let env = StreamEnv::new(JobConfig::named("dlq").with_parallelism(2));
    let source = OmsSourceConfig::<Order>::new(ap.clone(), "orders")
        .name("orders-in")
        .bounded(true)
        .dead_letter(DeadLetter::Queue("orders.dlq".to_string()));
    let metrics = source.metrics();
    let orders = env.add_oms_source(source).unwrap();
    orders
        .add_oms_sink(OmsSinkConfig::new(ap.clone(), "totals").key(|o: &Order| o.user.clone()))
        .unwrap();
    env.execute().await.unwrap();

    let ids: Vec<u32> = decode_all(&read_queue(&ap, "totals").await)
        .iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(ids, good);
    assert_eq!(metrics.dead_lettered(), bad as u64);
    assert_eq!(metrics.skipped(), 0);
    let letters: Vec<Message> = read_queue(&ap, "orders.dlq")
        .await
        .into_values()
        .flatten()
        .collect();
    assert_eq!(letters.len(), bad);
    for letter in &letters {
        let props = &letter.properties;
        assert_eq!(props.get_str(DLQ_QUEUE), Some("orders"));
        assert_eq!(props.get_str(DLQ_OPERATOR), Some("orders-in"));
        let partition = props.get_i32(DLQ_PARTITION).unwrap().unwrap();
        let offset = props.get_i64(DLQ_OFFSET).unwrap().unwrap();
        let original = &originals[&(partition, offset)];
        assert_eq!(letter.data, original.data);
        assert_eq!(letter.key(), original.key());
        let reason = props.get_str(DLQ_REASON).unwrap();
        assert!(reason.starts_with("invalid JSON: "), "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_counted_and_skipped_without_a_dead_letter_queue() {
    let (_dir, ap) = store(&[("orders", 4)]).await;
    let (good, bad) = send_with_bad_messages(&ap).await;
    let env = StreamEnv::new(JobConfig::named("skip"));
    let source = OmsSourceConfig::<Order>::new(ap.clone(), "orders").bounded(true);
    let metrics = source.metrics();
    let collected = env.add_oms_source(source).unwrap().collect();
    env.execute().await.unwrap();
    assert_eq!(sorted_ids(&collected.records()), good);
    assert_eq!(metrics.skipped(), bad as u64);
    assert_eq!(metrics.dead_lettered(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_of_a_group_reads_only_what_came_after_the_first() {
    let (_dir, ap) = store(&[("orders", 4)]).await;
    let run = || {
        let ap = ap.clone();
        async move {
            let env = StreamEnv::new(JobConfig::named("billing").with_parallelism(2));
            let source = OmsSourceConfig::<Order>::new(ap, "orders")
                .group("billing")
                .start(StartPosition::committed(FallbackPosition::Beginning))
                .bounded(true);
            let collected = env.add_oms_source(source).unwrap().collect();
            env.execute().await.unwrap();
            sorted_ids(&collected.records())
        }
    };
    send_orders(&ap, "orders", 0..100).await;
    assert_eq!(run().await, (0..100).collect::<Vec<_>>());
    send_orders(&ap, "orders", 100..150).await;
    assert_eq!(run().await, (100..150).collect::<Vec<_>>());
    assert_eq!(run().await, Vec::<u32>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timestamp_start_skips_what_was_stored_before_it() {
    let (_dir, ap) = store(&[("orders", 2)]).await;
    send_orders(&ap, "orders", 0..50).await;
    // Wait for the millisecond clock to tick past the first batch's store time.
    let t = now_millis() + 1;
    while now_millis() < t {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    send_orders(&ap, "orders", 50..80).await;

    let run = |start: StartPosition| {
        let ap = ap.clone();
        async move {
            let env = StreamEnv::new(JobConfig::named("from-timestamp"));
            let source = OmsSourceConfig::<Order>::new(ap, "orders")
                .start(start)
                .bounded(true);
            let collected = env.add_oms_source(source).unwrap().collect();
            env.execute().await.unwrap();
            sorted_ids(&collected.records())
        }
    };
    assert_eq!(
        run(StartPosition::Timestamp(t)).await,
        (50..80).collect::<Vec<_>>()
    );
    assert_eq!(
        run(StartPosition::Beginning).await,
        (0..80).collect::<Vec<_>>()
    );
    assert_eq!(run(StartPosition::End).await, Vec::<u32>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbounded_source_at_the_end_reads_only_new_messages_until_the_job_is_stopped() {
    let (_dir, ap) = store(&[("orders", 4), ("totals", 4)]).await;
    send_orders(&ap, "orders", 0..100).await;
    let env = StreamEnv::new(JobConfig::named("follow").with_parallelism(2));
    let source = OmsSourceConfig::<Order>::new(ap.clone(), "orders").start(StartPosition::End);
    let orders = env.add_oms_source(source).unwrap();
    let collected = orders.collect();
    orders
        .add_oms_sink(OmsSinkConfig::new(ap.clone(), "totals").key(|o: &Order| o.user.clone()))
        .unwrap();
    let job = env.spawn().unwrap();

    // The sources open at some point after spawn: send one new order at a time until one
    // arrives, so that everything after it is certainly new to them.
    let mut next = 100;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while collected.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job read nothing"
        );
        send_orders(&ap, "orders", next..next + 1).await;
        next += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send_orders(&ap, "orders", 1_000..1_300).await;
    while collected
        .records()
        .iter()
        .filter(|r| r.value.id >= 1_000)
        .count()
        < 300
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job fell behind"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    job.stop();
    let report = tokio::time::timeout(Duration::from_secs(5), job.join())
        .await
        .expect("a stopped job drains and ends")
        .unwrap();

    let ids = sorted_ids(&collected.records());
    assert!(ids.iter().all(|id| *id >= 100), "old orders were read");
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique, ids, "each order once");
    assert_eq!(
        ids.iter().filter(|id| **id >= 1_000).count(),
        300,
        "every order sent after the first arrived"
    );
    let written = decode_all(&read_queue(&ap, "totals").await);
    assert_eq!(
        written.len(),
        ids.len(),
        "the sink wrote what the source read"
    );
    assert_eq!(
        report.operator("orders").unwrap().records_out,
        ids.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_queue_fails_the_job_with_the_command_that_creates_it() {
    let (_dir, ap) = store(&[("orders", 1)]).await;
    let env = StreamEnv::new(JobConfig::named("typo"));
    let orders = env
        .add_oms_source(OmsSourceConfig::<Order>::new(ap.clone(), "ordrs").bounded(true))
        .unwrap();
    orders
        .add_oms_sink(OmsSinkConfig::new(ap.clone(), "totals"))
        .unwrap();
    let err = env.execute().await.unwrap_err().to_string();
    assert!(
        err.contains("queue 'ordrs' (read by an OMS source) does not exist")
            || err.contains("queue 'totals' (written by an OMS sink) does not exist"),
        "{err}"
    );
    assert!(err.contains("omstream queue create"), "{err}");

    let env = StreamEnv::new(JobConfig::named("no-group"));
    let err = env
        .add_oms_source(
            OmsSourceConfig::<Order>::new(ap.clone(), "orders")
                .start(StartPosition::committed(FallbackPosition::Beginning)),
        )
        .unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidConfig(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_messages_keep_their_headers_and_properties() {
    let (_dir, ap) = store(&[("events", 1)]).await;
    let producer = ap.create_producer(KeyValue::new()).await.unwrap();
    producer.start().await.unwrap();
    producer
        .send(
            Message::new("events", vec![0xff_u8, 0x00])
                .with_key("k")
                .with_property("p", "v"),
        )
        .await
        .unwrap();
    let env = StreamEnv::new(JobConfig::named("raw"));
    let source = OmsSourceConfig::with_decoder(ap.clone(), "events", Decoder::message())
        .bounded(true)
        .event_time(EventTimeFrom::StoreTimestamp);
    let collected = env.add_oms_source(source).unwrap().collect();
    env.execute().await.unwrap();
    let records = collected.records();
    assert_eq!(records.len(), 1);
    let message = &records[0].value;
    assert_eq!(&message.data[..], &[0xff, 0x00]);
    assert_eq!(message.key(), Some("k"));
    assert_eq!(message.properties.get_str("p"), Some("v"));
    assert_eq!(
        Some(records[0].timestamp),
        message.extension_header.store_timestamp
    );
}
