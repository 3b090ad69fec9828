//! Throughput and latency of the embedded durable queue (`oms:embedded://`), through the public
//! OMS API only.
//!
//! Run with `cargo bench --bench embedded_queue`. Every case runs on a fresh queue with ONE
//! partition, in a fresh store in a temporary directory (the `EMBEDDED_DIR` attribute), with the
//! default durability (`EMBEDDED_FSYNC=never`: a send returns once its bytes were written to the
//! segment file with write(2)) unless stated:
//!
//! 1. **produce, 100 B**: `Producer::send_batch` with batches of 1000 messages of 100-byte bodies
//!    (2,000,000 messages). Building the `Message` values is inside the timed loop, as it is for
//!    any caller. Reports messages/s and MB/s of bodies.
//! 2. **consume, 100 B**: reads those messages back with a `StreamingConsumer` opened at
//!    `SeekPosition::Beginning` and `PartitionReader::next_batch(10_000)` until all are read.
//!    The result is `Message` structs (no JSON). Reports messages/s and MB/s of bodies.
//! 3. **produce / consume, 1 KiB**: the same two with 1024-byte bodies (500,000 messages).
//! 4. **produce, fsync**: case 1 with `EMBEDDED_FSYNC=always` (an fsync after every batch of
//!    1000), 200,000 messages.
//! 5. **latency**: a producer task sends 50,000 messages/s, paced as batches of 50 every 1 ms
//!    (`tokio::time::interval`, `MissedTickBehavior::Burst`, so a late tick is caught up at
//!    once); a consumer task on the same queue reads with `next_batch`. Each body carries the
//!    send instant (nanoseconds since a shared start `Instant`, taken right before
//!    `send_batch`); the latency of a message is the instant `next_batch` returned it minus
//!    that. Runs 5 s and reports p50, p99, p99.9 and max.
//!
//! MB means 10^6 bytes of message bodies (record headers are not counted). Each throughput case
//! runs 3 times, each time on a fresh queue, after a short warm-up; the median run is reported,
//! with the range (a shared machine makes single runs noisy).
//!
//! `OMSTREAM_BENCH_SCALE` (a float, default 1.0) scales every message count and the latency
//! run's duration, e.g. `OMSTREAM_BENCH_SCALE=0.05 cargo bench --bench embedded_queue` for a
//! quick run. Case names after `--` run only those cases (`100b`, `1kib`, `fsync`, `latency`),
//! e.g. `cargo bench --bench embedded_queue -- 100b latency`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use omstream::oms::{
    self, embedded, KeyValue, Message, MessagingAccessPoint, PartitionReader, Producer,
    QueueConfig, SeekPosition, ServiceLifecycle,
};
use tokio::time::MissedTickBehavior;

/// The queue every case writes to (in its own fresh store).
const QUEUE: &str = "bench";
/// Messages per `send_batch` in the throughput cases.
const BATCH: usize = 1000;
/// How often each throughput case runs (the median run is reported: the machine may be shared).
const RUNS: usize = 3;
/// The largest batch a reader asks for.
const READ_MAX: usize = 10_000;
/// The latency case's pace: `LATENCY_BATCH` messages every `LATENCY_TICK` (50,000 msg/s).
const LATENCY_BATCH: usize = 50;
const LATENCY_TICK: Duration = Duration::from_millis(1);

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A fresh store with one single-partition queue; the directory is deleted on drop.
struct Bench {
    access_point: Arc<dyn MessagingAccessPoint>,
    _dir: tempfile::TempDir,
}

impl Bench {
    async fn new(fsync: bool) -> BenchResult<Self> {
        let dir = tempfile::tempdir()?;
        let mut attrs = KeyValue::new().with(embedded::EMBEDDED_DIR, dir.path().display());
        if fsync {
            attrs.put(embedded::EMBEDDED_FSYNC, "always");
        }
        let access_point = oms::connect("oms:embedded://localhost/bench", attrs).await?;
        access_point
            .resource_manager()
            .await?
            .create_queue(QUEUE, QueueConfig::with_partitions(1))
            .await?;
        Ok(Self {
            access_point,
            _dir: dir,
        })
    }

    async fn producer(&self) -> BenchResult<Producer> {
        let producer = self.access_point.create_producer(KeyValue::new()).await?;
        producer.start().await?;
        Ok(producer)
    }

    async fn reader(&self) -> BenchResult<Box<dyn PartitionReader>> {
        let consumer = self
            .access_point
            .create_streaming_consumer(KeyValue::new())
            .await?;
        consumer.start().await?;
        Ok(consumer.open(QUEUE, 0, SeekPosition::Beginning).await?)
    }
}

/// A throughput measurement.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    messages: usize,
    body_bytes: usize,
    elapsed: Duration,
}

impl Throughput {
    fn per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    fn mb_per_sec(&self) -> f64 {
        self.body_bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// The runs of one figure; reported as the median run, with the range.
#[derive(Debug, Default)]
struct Runs(Vec<Throughput>);

impl Runs {
    fn report(&mut self, what: &str) {
        self.0.sort_by(|a, b| a.per_sec().total_cmp(&b.per_sec()));
        let (Some(low), Some(high)) = (self.0.first(), self.0.last()) else {
            return;
        };
        let median = self.0[self.0.len() / 2];
        println!(
            "{what:<44} {:>10.0} msg/s {:>7.1} MB/s   (median of {} runs of {} messages; range {:.0}-{:.0} msg/s)",
            median.per_sec(),
            median.mb_per_sec(),
            self.0.len(),
            median.messages,
            low.per_sec(),
            high.per_sec()
        );
    }
}

/// Sends `count` messages with `body_len`-byte bodies in batches of [`BATCH`].
async fn produce(producer: &Producer, count: usize, body_len: usize) -> BenchResult<Throughput> {
    let body = Bytes::from(vec![b'x'; body_len]);
    let started = Instant::now();
    let mut sent = 0;
    while sent < count {
        let n = BATCH.min(count - sent);
        let batch: Vec<Message> = (0..n).map(|_| Message::new(QUEUE, body.clone())).collect();
        let results = producer.send_batch(batch).await?;
        assert_eq!(results.len(), n, "one result per message");
        sent += n;
    }
    Ok(Throughput {
        messages: count,
        body_bytes: count * body_len,
        elapsed: started.elapsed(),
    })
}

/// Reads `count` messages from the start of the partition.
async fn consume(reader: &mut dyn PartitionReader, count: usize) -> BenchResult<Throughput> {
    let started = Instant::now();
    let mut read = 0;
    let mut body_bytes = 0;
    while read < count {
        let batch = reader.next_batch(READ_MAX).await?;
        read += batch.len();
        body_bytes += batch.iter().map(|m| m.data.len()).sum::<usize>();
    }
    let elapsed = started.elapsed();
    assert_eq!(read, count, "read exactly what was sent");
    assert_eq!(reader.position(), count as i64);
    Ok(Throughput {
        messages: count,
        body_bytes,
        elapsed,
    })
}

/// Cases 1-3: produce `count` messages of `body_len` bytes, then consume them; `runs` times,
/// each on a fresh queue.
async fn produce_then_consume(runs: usize, count: usize, body_len: usize) -> BenchResult<()> {
    let (mut produced, mut consumed) = (Runs::default(), Runs::default());
    for _ in 0..runs {
        let bench = Bench::new(false).await?;
        let producer = bench.producer().await?;
        produced.0.push(produce(&producer, count, body_len).await?);
        let mut reader = bench.reader().await?;
        consumed.0.push(consume(reader.as_mut(), count).await?);
    }
    produced.report(&format!("produce {body_len} B, batches of {BATCH}"));
    consumed.report(&format!("consume {body_len} B, next_batch({READ_MAX})"));
    Ok(())
}

/// Case 4: produce with an fsync after every batch; `runs` times, each on a fresh queue.
async fn produce_fsync(runs: usize, count: usize) -> BenchResult<()> {
    let mut produced = Runs::default();
    for _ in 0..runs {
        let bench = Bench::new(true).await?;
        let producer = bench.producer().await?;
        produced.0.push(produce(&producer, count, 100).await?);
    }
    produced.report(&format!("produce 100 B, fsync=always, batches of {BATCH}"));
    Ok(())
}

/// A message whose body starts with `sent_ns` (little-endian), padded to 100 bytes.
fn timestamped(sent_ns: u64) -> Message {
    let mut body = [0u8; 100];
    body[..8].copy_from_slice(&sent_ns.to_le_bytes());
    Message::new(QUEUE, Bytes::copy_from_slice(&body))
}

fn sent_ns(message: &Message) -> u64 {
    let mut ns = [0u8; 8];
    ns.copy_from_slice(&message.data[..8]);
    u64::from_le_bytes(ns)
}

/// The latency case's producer: `ticks` batches of [`LATENCY_BATCH`] messages, one batch every
/// [`LATENCY_TICK`].
async fn paced_producer(producer: Producer, start: Instant, ticks: usize) -> BenchResult<()> {
    let mut tick = tokio::time::interval(LATENCY_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    for _ in 0..ticks {
        tick.tick().await;
        let now_ns = start.elapsed().as_nanos() as u64;
        let batch: Vec<Message> = (0..LATENCY_BATCH).map(|_| timestamped(now_ns)).collect();
        producer.send_batch(batch).await?;
    }
    Ok(())
}

/// The latency case's consumer: reads `count` messages, returning each one's latency in ns.
async fn timing_consumer(
    mut reader: Box<dyn PartitionReader>,
    start: Instant,
    count: usize,
) -> BenchResult<Vec<u64>> {
    let mut latencies = Vec::with_capacity(count);
    while latencies.len() < count {
        let batch = reader.next_batch(READ_MAX).await?;
        let received_ns = start.elapsed().as_nanos() as u64;
        latencies.extend(batch.iter().map(|m| received_ns.saturating_sub(sent_ns(m))));
    }
    Ok(latencies)
}

fn micros(ns: u64) -> String {
    format!("{:.1} µs", ns as f64 / 1e3)
}

/// Case 5: end-to-end latency at a paced send rate.
async fn latency(run: Duration) -> BenchResult<()> {
    let bench = Bench::new(false).await?;
    let producer = bench.producer().await?;
    let reader = bench.reader().await?;
    let ticks = (run.as_nanos() / LATENCY_TICK.as_nanos()) as usize;
    let count = ticks * LATENCY_BATCH;
    let start = Instant::now();
    let consumer = tokio::spawn(timing_consumer(reader, start, count));
    tokio::spawn(paced_producer(producer, start, ticks)).await??;
    let sent_in = start.elapsed();
    let mut latencies = consumer.await??;
    latencies.sort_unstable();
    println!(
        "{:<44} {:>10.0} msg/s achieved   ({count} messages in {:.3} s)",
        format!(
            "latency run, {LATENCY_BATCH} msgs every {} ms",
            LATENCY_TICK.as_millis()
        ),
        count as f64 / sent_in.as_secs_f64(),
        sent_in.as_secs_f64()
    );
    for (name, q) in [("p50", 0.50), ("p99", 0.99), ("p99.9", 0.999)] {
        println!(
            "{:<44} {:>12}",
            format!("latency {name}"),
            micros(common::percentile(&latencies, q))
        );
    }
    println!(
        "{:<44} {:>12}",
        "latency max",
        micros(latencies.last().copied().unwrap_or(0))
    );
    Ok(())
}

/// A short send and read, so that the first measured case does not pay for page faults of the
/// allocator and the runtime's first wake-ups.
async fn warm_up(scale: &Scale) -> BenchResult<()> {
    let bench = Bench::new(false).await?;
    let producer = bench.producer().await?;
    let n = scale.count(50_000);
    produce(&producer, n, 100).await?;
    consume(bench.reader().await?.as_mut(), n).await?;
    Ok(())
}

/// `OMSTREAM_BENCH_SCALE`: multiplies message counts and the latency run's duration.
struct Scale(f64);

impl Scale {
    fn from_env() -> BenchResult<Self> {
        Ok(Self(common::scale_from_env()?))
    }

    /// `n` scaled, at least one batch.
    fn count(&self, n: usize) -> usize {
        ((n as f64 * self.0).round() as usize).max(BATCH)
    }

    /// `d` scaled, at least 200 ms.
    fn duration(&self, d: Duration) -> Duration {
        d.mul_f64(self.0).max(Duration::from_millis(200))
    }
}

fn print_machine(scale: &Scale) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("omstream embedded queue benchmark");
    println!("command: cargo bench --bench embedded_queue");
    println!("machine: nproc = {cpus}, CPU: {}", common::cpu_model());
    println!(
        "store:   a fresh temporary directory under {}",
        std::env::temp_dir().display()
    );
    println!("scale:   OMSTREAM_BENCH_SCALE = {}", scale.0);
    println!();
}

/// The groups of cases, by the names that select them on the command line.
const CASES: [&str; 4] = ["100b", "1kib", "fsync", "latency"];

async fn run(scale: Scale, selected: &[String]) -> BenchResult<()> {
    print_machine(&scale);
    let wanted = |case: &str| selected.is_empty() || selected.iter().any(|s| s == case);
    warm_up(&scale).await?;
    if wanted("100b") {
        produce_then_consume(RUNS, scale.count(2_000_000), 100).await?;
    }
    if wanted("1kib") {
        produce_then_consume(RUNS, scale.count(500_000), 1024).await?;
    }
    if wanted("fsync") {
        produce_fsync(RUNS, scale.count(200_000)).await?;
    }
    if wanted("latency") {
        latency(scale.duration(Duration::from_secs(5))).await?;
    }
    Ok(())
}

/// The case names given on the command line (`cargo bench --bench embedded_queue -- latency`);
/// flags such as cargo's `--bench` are ignored.
fn selected_cases() -> BenchResult<Vec<String>> {
    let selected: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if let Some(bad) = selected.iter().find(|s| !CASES.contains(&s.as_str())) {
        return Err(format!("unknown case '{bad}'; the cases are {}", CASES.join(", ")).into());
    }
    Ok(selected)
}

fn main() -> BenchResult<()> {
    let scale = Scale::from_env()?;
    let selected = selected_cases()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(scale, &selected))
}
