//! Quick start: a streaming job on the embedded driver — per-customer totals over tumbling
//! 10-second windows, read from one queue and written back to another.
//!
//! ```sh
//! cargo run --release --example quickstart
//! ```
//!
//! It creates the queues `orders` and `order-totals` (4 partitions each) in the default embedded
//! store, sends 100,000 JSON orders keyed by customer (10 ms of event time apart), then runs a
//! job that reads the new orders as the consumer group `quickstart`, keys them by customer,
//! sums the amounts per 10-second window of event time and writes one JSON total per customer
//! and window to `order-totals`. Run it again: new orders are sent and the group reads only
//! those. Look at the output with `omstream consume order-totals --limit 5`.

use std::time::{Duration, Instant};

use omstream::core::connectors::{
    EventTimeFrom, FallbackPosition, OmsSinkConfig, OmsSourceConfig, StartPosition,
};
use omstream::oms::{self, KeyValue, Message, QueueConfig, ServiceLifecycle};
use omstream::operators::prelude::*;
use serde::{Deserialize, Serialize};

const ORDERS: usize = 100_000;
const CUSTOMERS: usize = 500;

/// What the shop writes to `orders`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    order: u64,
    customer: String,
    amount: u64,
    /// When the order was placed, in ms since the epoch: the event time.
    placed_at: i64,
}

/// What the job writes to `order-totals`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CustomerTotal {
    customer: String,
    window_start: i64,
    window_end: i64,
    amount: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The default URL: the embedded driver, region `default`.
    let url = std::env::var("OMSTREAM_URL")
        .unwrap_or_else(|_| "oms:embedded://localhost/default".to_string());
    let ap = oms::connect(&url, KeyValue::new()).await?;
    println!(
        "connected to {url} (data in {})",
        oms::embedded::default_data_root().join("default").display()
    );
    let queues = ap.resource_manager().await?;
    for queue in ["orders", "order-totals"] {
        if queues
            .ensure_queue(queue, QueueConfig::with_partitions(4))
            .await?
        {
            println!("created queue '{queue}' with 4 partitions");
        }
    }

    // The shop: orders keyed by customer, so each customer's orders stay in order.
    let producer = ap.create_producer(KeyValue::new()).await?;
    producer.start().await?;
    let first_order_at = oms::now_millis();
    for chunk in (0..ORDERS).collect::<Vec<_>>().chunks(1000) {
        let batch = chunk
            .iter()
            .map(|&i| {
                let order = Order {
                    order: i as u64,
                    customer: format!("customer-{}", i % CUSTOMERS),
                    amount: ((i * 37) % 1000) as u64,
                    placed_at: first_order_at + i as i64 * 10,
                };
                let body = serde_json::to_vec(&order).expect("an order serializes");
                Message::new("orders", body).with_key(order.customer)
            })
            .collect();
        producer.send_batch(batch).await?;
    }
    producer.stop().await?;
    println!("sent {ORDERS} orders");

    // The job: orders -> key by customer -> 10 s tumbling windows -> sum -> order-totals.
    let env = StreamEnv::new(JobConfig::named("quickstart"));
    let orders = env.add_oms_source(
        OmsSourceConfig::<Order>::new(ap.clone(), "orders")
            .group("quickstart")
            .start(StartPosition::committed(FallbackPosition::Beginning))
            .event_time(EventTimeFrom::extract(|o: &Order| o.placed_at))
            .bounded(true),
    )?;
    let totals = orders
        .key_by(|o: &Order| o.customer.clone())
        .window(TimeWindows::tumbling(Duration::from_secs(10)))
        .sum(|o: &Order| o.amount)
        .map(|w: Windowed<String, u64>| CustomerTotal {
            customer: w.key,
            window_start: w.window.start,
            window_end: w.window.end,
            amount: w.value,
        });
    totals.add_oms_sink(
        OmsSinkConfig::new(ap.clone(), "order-totals").key(|t: &CustomerTotal| t.customer.clone()),
    )?;
    let collected = totals.collect();

    let started = Instant::now();
    let report = env.execute().await?;
    let seconds = started.elapsed().as_secs_f64();
    let read = report.operator("orders").map_or(0, |o| o.records_out);
    println!(
        "job 'quickstart': {read} orders -> {} window totals in {seconds:.3}s ({:.0} orders/s)",
        collected.len(),
        read as f64 / seconds
    );
    let mut biggest = collected.values();
    biggest.sort_by_key(|t| std::cmp::Reverse(t.amount));
    for total in biggest.iter().take(3) {
        println!(
            "  {} spent {} in [{}, {})",
            total.customer, total.amount, total.window_start, total.window_end
        );
    }
    Ok(())
}
