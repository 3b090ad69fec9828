//! A join of two queues: orders matched with their payments within 30 seconds of event time.
//!
//! ```sh
//! cargo run --release --example join_queues
//! ```
//!
//! It creates the queues `shop-orders`, `shop-payments` and `paid-orders` (4 partitions each)
//! in the default embedded store, and sends 20,000 orders and a payment for most of them, 0 to
//! 60 seconds (of event time) later. The job reads both queues, keys both by order id and runs
//! an interval join: a payment at most 30 seconds after its order makes a paid order, written
//! to `paid-orders`. Payments later than that (and orders never paid) find no partner.

use std::time::Duration;

use omstream::core::connectors::{
    EventTimeFrom, FallbackPosition, OmsSinkConfig, OmsSourceConfig, StartPosition,
};
use omstream::oms::{self, KeyValue, Message, QueueConfig, ServiceLifecycle};
use omstream::operators::prelude::*;
use serde::{Deserialize, Serialize};

const ORDERS: u64 = 20_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: u64,
    amount: u64,
    at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payment {
    order_id: u64,
    at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PaidOrder {
    id: u64,
    amount: u64,
    paid_after_ms: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("OMSTREAM_URL")
        .unwrap_or_else(|_| "oms:embedded://localhost/default".to_string());
    let ap = oms::connect(&url, KeyValue::new()).await?;
    let queues = ap.resource_manager().await?;
    for queue in ["shop-orders", "shop-payments", "paid-orders"] {
        if queues
            .ensure_queue(queue, QueueConfig::with_partitions(4))
            .await?
        {
            println!("created queue '{queue}'");
        }
    }

    // Orders 100 ms apart; 9 in 10 are paid, after (id * 7919 % 60) seconds.
    let producer = ap.create_producer(KeyValue::new()).await?;
    producer.start().await?;
    let start = oms::now_millis();
    let orders: Vec<Order> = (0..ORDERS)
        .map(|id| Order {
            id,
            amount: id % 500,
            at: start + id as i64 * 100,
        })
        .collect();
    let mut payments: Vec<Payment> = orders
        .iter()
        .filter(|o| o.id % 10 != 0)
        .map(|o| Payment {
            order_id: o.id,
            at: o.at + (o.id as i64 * 7919 % 60) * 1000,
        })
        .collect();
    payments.sort_by_key(|p| p.at);
    let expected_paid = payments
        .iter()
        .filter(|p| p.at - orders[p.order_id as usize].at <= 30_000)
        .count();
    for chunk in orders.chunks(1000) {
        let batch = chunk
            .iter()
            .map(|o| {
                Message::new("shop-orders", serde_json::to_vec(o).expect("json"))
                    .with_key(o.id.to_string())
            })
            .collect();
        producer.send_batch(batch).await?;
    }
    for chunk in payments.chunks(1000) {
        let batch = chunk
            .iter()
            .map(|p| {
                Message::new("shop-payments", serde_json::to_vec(p).expect("json"))
                    .with_key(p.order_id.to_string())
            })
            .collect();
        producer.send_batch(batch).await?;
    }
    producer.stop().await?;

    // Both sides tolerate 5 s of disorder; the group `join-queues` makes each run read only
    // what earlier runs did not.
    let watermarks = WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5));
    let env = StreamEnv::new(JobConfig::named("paid-orders"));
    let order_stream = env.add_oms_source(
        OmsSourceConfig::<Order>::new(ap.clone(), "shop-orders")
            .group("join-queues")
            .start(StartPosition::committed(FallbackPosition::Beginning))
            .event_time(EventTimeFrom::extract(|o: &Order| o.at))
            .watermarks(watermarks)
            .bounded(true),
    )?;
    let payment_stream = env.add_oms_source(
        OmsSourceConfig::<Payment>::new(ap.clone(), "shop-payments")
            .group("join-queues")
            .start(StartPosition::committed(FallbackPosition::Beginning))
            .event_time(EventTimeFrom::extract(|p: &Payment| p.at))
            .watermarks(watermarks)
            .bounded(true),
    )?;
    let paid = order_stream.key_by(|o: &Order| o.id).interval_join(
        &payment_stream.key_by(|p: &Payment| p.order_id),
        IntervalBounds::around(Duration::ZERO, Duration::from_secs(30)),
        |_, order: &Order, payment: &Payment| PaidOrder {
            id: order.id,
            amount: order.amount,
            paid_after_ms: payment.at - order.at,
        },
    );
    paid.add_oms_sink(
        OmsSinkConfig::new(ap.clone(), "paid-orders").key(|p: &PaidOrder| p.id.to_string()),
    )?;
    let collected = paid.collect();
    env.execute().await?;

    println!(
        "this run: {} orders, {} payments -> {} paid within 30 s (expected {expected_paid}); written to 'paid-orders'",
        ORDERS,
        payments.len(),
        collected.len(),
    );
    Ok(())
}
