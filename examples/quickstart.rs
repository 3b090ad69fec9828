//! Quick start: a streaming job on the embedded driver — per-customer totals over tumbling
//! 10-second windows, read from one queue and written back to another.
//!
//! ```sh
//! cargo run --release --example quickstart
//! ```
//!
//! It creates the queues `orders` and `order-totals` (4 partitions each) in the default embedded
//! store, sends 100,000 JSON orders keyed by customer (10 ms of event time apart, continuing
//! the event time of the orders sent by earlier runs), then runs a
//! job that reads the new orders as the consumer group `quickstart`, keys them by customer,
//! sums the amounts per 10-second window of event time and writes one JSON total per customer
//! and window to `order-totals`. Run it again: new orders are sent and the job reads only
//! those. Look at the output with `omstream consume order-totals --limit 5`.
//!
//! The job takes a checkpoint every second into its state directory (`OMSTREAM_STATE_DIR`, or
//! `_checkpoints/quickstart` under the embedded data root) and writes exactly once: kill it
//! at any moment (`kill -9`), run it again, and `order-totals` holds every total once. List
//! its checkpoints with `omstream checkpoints list --state-dir <dir>`.

use std::time::{Duration, Instant};

use omstream::core::checkpoint::CheckpointConfig;
use omstream::core::connectors::{
    EventTimeFrom, FallbackPosition, OmsSinkConfig, OmsSourceConfig, StartPosition,
};
use omstream::oms::{self, KeyValue, Message, QueueConfig, ServiceLifecycle};
use omstream::operators::prelude::*;
use serde::{Deserialize, Serialize};

const ORDERS: usize = 100_000;
const CUSTOMERS: usize = 500;
/// When the simulated shop placed its first order: 2026-01-01T00:00:00Z, in ms.
const SHOP_OPENED: i64 = 1_767_225_600_000;

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
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
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

    // The shop: orders keyed by customer, so each customer's orders stay in order. Its clock
    // is simulated: order n (counted over every run) is placed 10 ms after order n - 1, from
    // SHOP_OPENED. A run continues where the last one stopped, in order numbers and in event
    // time, so a job restored from its checkpoint finds the new orders after those it counted.
    let placed_before = queues.describe_queue("orders").await?.message_count() as usize;
    let producer = ap.create_producer(KeyValue::new()).await?;
    producer.start().await?;
    let numbers: Vec<usize> = (placed_before..placed_before + ORDERS).collect();
    for chunk in numbers.chunks(1000) {
        let batch = chunk
            .iter()
            .map(|&i| {
                let order = Order {
                    order: i as u64,
                    customer: format!("customer-{}", i % CUSTOMERS),
                    amount: ((i * 37) % 1000) as u64,
                    placed_at: SHOP_OPENED + i as i64 * 10,
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
    let state_dir = std::env::var_os("OMSTREAM_STATE_DIR").map_or_else(
        || {
            oms::embedded::default_data_root()
                .join("_checkpoints")
                .join("quickstart")
        },
        std::path::PathBuf::from,
    );
    println!("checkpoints in {}", state_dir.display());
    let env = StreamEnv::new(
        JobConfig::named("quickstart").with_checkpoints(CheckpointConfig::new(&state_dir)),
    );
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
        OmsSinkConfig::new(ap.clone(), "order-totals")
            .key(|t: &CustomerTotal| t.customer.clone())
            .exactly_once(),
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
