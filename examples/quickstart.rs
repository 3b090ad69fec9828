//! Quick start: a queue on the embedded driver, filled and read back.
//!
//! ```sh
//! cargo run --release --example quickstart
//! ```
//!
//! It creates the queue `quickstart` (4 partitions) in the default embedded store, sends 100,000
//! JSON order events keyed by customer, and reads them back as the consumer group `quickstart`,
//! committing its offsets. Run it again: the queue keeps the old events and the group reads only
//! the new ones. Inspect the queue with `omstream queue describe quickstart`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use omstream::oms::{
    self, keyvalue, KeyValue, Message, OmsStatus, QueueConfig, SeekPosition, ServiceLifecycle,
};

const QUEUE: &str = "quickstart";
const EVENTS: usize = 100_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The default URL: the embedded driver, region `default`. Where its data lives is printed below.
    let url = std::env::var("OMSTREAM_URL")
        .unwrap_or_else(|_| "oms:embedded://localhost/default".to_string());
    let ap = oms::connect(&url, KeyValue::new()).await?;
    println!(
        "connected to {url} (data in {})",
        oms::embedded::default_data_root().join("default").display()
    );

    match ap
        .resource_manager()
        .await?
        .create_queue(QUEUE, QueueConfig::with_partitions(4))
        .await
    {
        Ok(()) => println!("created queue '{QUEUE}' with 4 partitions"),
        Err(e) if e.status() == OmsStatus::DESTINATION_ALREADY_EXISTS => {
            println!("queue '{QUEUE}' exists; adding to it")
        }
        Err(e) => return Err(e.into()),
    }

    // Produce: events keyed by customer, so each customer's events stay in order in one partition.
    let producer = ap.create_producer(KeyValue::new()).await?;
    producer.start().await?;
    let started = Instant::now();
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(1000) {
        let batch = chunk
            .iter()
            .map(|i| {
                let customer = format!("customer-{}", i % 500);
                let body = format!(
                    r#"{{"order":{i},"customer":"{customer}","amount":{}}}"#,
                    (i * 37) % 1000
                );
                Message::new(QUEUE, body)
                    .with_key(customer)
                    .with_property("type", "order-created")
            })
            .collect();
        producer.send_batch(batch).await?;
    }
    let produce_secs = started.elapsed().as_secs_f64();
    println!(
        "sent {EVENTS} events in {produce_secs:.3}s ({:.0} msg/s)",
        EVENTS as f64 / produce_secs
    );

    // Consume as a group: start at the committed offsets, read what is there, commit.
    let consumer = ap
        .create_streaming_consumer(KeyValue::new().with(keyvalue::CONSUMER_ID, "quickstart"))
        .await?;
    consumer.start().await?;
    let started = Instant::now();
    let mut per_partition = BTreeMap::new();
    let mut amount_total: u64 = 0;
    for part in consumer.partitions(QUEUE).await? {
        let p = part.partition_id;
        let from = consumer
            .committed(QUEUE, p)
            .await?
            .map_or(SeekPosition::Beginning, SeekPosition::Offset);
        let (_, end) = consumer.offset_range(QUEUE, p).await?;
        let mut reader = consumer.open(QUEUE, p, from).await?;
        let mut read = 0usize;
        while reader.position() < end {
            let batch = reader.poll_batch(10_000, Duration::from_secs(1)).await?;
            if batch.is_empty() {
                break;
            }
            for m in &batch {
                let event: serde_json::Value = serde_json::from_slice(&m.data)?;
                amount_total += event["amount"].as_u64().unwrap_or(0);
            }
            read += batch.len();
        }
        consumer.commit(QUEUE, p, reader.position()).await?;
        per_partition.insert(p, read);
    }
    let read: usize = per_partition.values().sum();
    let consume_secs = started.elapsed().as_secs_f64();
    println!("group 'quickstart' read {read} new events in {consume_secs:.3}s (JSON decoded; {:.0} msg/s)", read as f64 / consume_secs);
    println!("per partition: {per_partition:?}; total amount {amount_total}");
    let description = ap.resource_manager().await?.describe_queue(QUEUE).await?;
    println!(
        "queue '{QUEUE}' now holds {} events",
        description.message_count()
    );
    producer.stop().await?;
    Ok(())
}
