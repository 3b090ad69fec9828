//! The dataflow engine against a hand-written single-threaded loop doing the same work on the
//! same in-memory records (the practical limit), plus the end-to-end job on embedded queues and
//! the latency of a stateless job. See `benches/README.md` for what each case measures.
//!
//! ```sh
//! cargo bench --bench engine                    # every case
//! cargo bench --bench engine -- map_filter      # some: map_filter tumbling sliding e2e latency memory
//! OMSTREAM_BENCH_SCALE=0.05 cargo bench --bench engine   # a quick run (CI)
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use omstream::core::connectors::{EventTimeFrom, OmsSinkConfig, OmsSourceConfig, StartPosition};
use omstream::core::runtime::{BoxError, Sink, Source, SourceContext, SourceOutput, SubtaskInfo};
use omstream::oms::{
    self, embedded, KeyValue, Message, MessagingAccessPoint, QueueConfig, ServiceLifecycle,
};
use omstream::operators::prelude::*;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tokio::time::MissedTickBehavior;

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Records per batch in every in-memory case (the engine's default batch size).
const BATCH: usize = 1024;
/// How often each throughput case runs; the median is reported.
const RUNS: usize = 3;

fn scale() -> f64 {
    std::env::var("OMSTREAM_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn scaled(n: usize) -> usize {
    ((n as f64 * scale()) as usize).max(BATCH)
}

/// A source that hands out pre-built batches (moved, not copied) and a watermark after each.
struct BatchesSource<T> {
    batches: VecDeque<Batch<T>>,
    watermark_next: Option<EventTime>,
}

#[async_trait]
impl<T: Data> Source<T> for BatchesSource<T> {
    async fn poll(&mut self, _: &SourceContext) -> Result<SourceOutput<T>, BoxError> {
        if let Some(w) = self.watermark_next.take() {
            return Ok(SourceOutput::Watermark(w));
        }
        match self.batches.pop_front() {
            Some(batch) => {
                self.watermark_next = batch.last().map(|r| r.timestamp - 1);
                Ok(SourceOutput::Data(batch))
            }
            None => Ok(SourceOutput::Finished),
        }
    }
}

/// Counts records and sums a field, so that no stage can be optimised away.
#[derive(Clone, Default)]
struct Totals {
    records: Arc<AtomicU64>,
    checksum: Arc<AtomicU64>,
}

struct TotalsSink<F> {
    totals: Totals,
    field: F,
}

#[async_trait]
impl<T: Data, F: Fn(&T) -> u64 + Send + 'static> Sink<T> for TotalsSink<F> {
    async fn write_batch(&mut self, batch: Batch<T>) -> Result<(), BoxError> {
        let sum = batch
            .iter()
            .fold(0u64, |acc, r| acc.wrapping_add((self.field)(&r.value)));
        self.totals
            .records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.totals.checksum.fetch_add(sum, Ordering::Relaxed);
        Ok(())
    }
}

fn source_of<T: Data + Sync>(env: &StreamEnv, batches: Vec<Batch<T>>) -> Stream<T> {
    let batches = std::sync::Mutex::new(Some(batches));
    env.add_source("batches", move |_: &SubtaskInfo| {
        let batches = batches.lock().unwrap().take().unwrap_or_default();
        Box::new(BatchesSource {
            batches: batches.into(),
            watermark_next: None,
        }) as Box<dyn Source<T>>
    })
}

fn totals_sink<T: Data>(
    stream: &Stream<T>,
    field: impl Fn(&T) -> u64 + Clone + Send + 'static,
) -> Totals {
    let totals = Totals::default();
    let shared = totals.clone();
    stream.sink("totals", move |_: &SubtaskInfo| {
        Box::new(TotalsSink {
            totals: shared.clone(),
            field: field.clone(),
        }) as Box<dyn Sink<T>>
    });
    totals
}

fn median(mut runs: Vec<f64>) -> (f64, f64, f64) {
    runs.sort_by(|a, b| a.total_cmp(b));
    (runs[runs.len() / 2], runs[0], runs[runs.len() - 1])
}

fn report(case: &str, what: &str, runs: Vec<f64>) -> f64 {
    let (mid, low, high) = median(runs);
    println!("{case:<12} {what:<44} {mid:>14.0} records/s   (range {low:.0} .. {high:.0})");
    mid
}

// ---------------------------------------------------------------- map + filter

#[derive(Clone, Copy)]
struct Event {
    key: u64,
    value: u64,
}

fn events(n: usize, keys: u64, per_ms: usize) -> Vec<Batch<Event>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        // xorshift: cheap, deterministic input.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let records: Vec<Record<Event>> = (0..n)
        .map(|i| {
            let r = next();
            Record::new(
                (i / per_ms) as i64,
                Event {
                    key: r % keys,
                    value: r >> 40,
                },
            )
        })
        .collect();
    records.chunks(BATCH).map(<[_]>::to_vec).collect()
}

fn hand_map_filter(batches: &[Batch<Event>]) -> (u64, u64) {
    let (mut count, mut sum) = (0u64, 0u64);
    for batch in batches {
        for r in batch {
            let v = r.value.value.wrapping_mul(3).wrapping_add(1);
            if v % 4 != 0 {
                count += 1;
                sum = sum.wrapping_add(v);
            }
        }
    }
    (count, sum)
}

async fn engine_map_filter(batches: Vec<Batch<Event>>) -> BenchResult<(u64, u64)> {
    let env = StreamEnv::new(JobConfig::named("map-filter"));
    let out = source_of(&env, batches)
        .map(|e: Event| e.value.wrapping_mul(3).wrapping_add(1))
        .filter(|v| v % 4 != 0);
    let totals = totals_sink(&out, |v: &u64| *v);
    env.execute().await?;
    Ok((
        totals.records.load(Ordering::Relaxed),
        totals.checksum.load(Ordering::Relaxed),
    ))
}

async fn map_filter() -> BenchResult<()> {
    let n = scaled(20_000_000);
    let (mut engine, mut hand) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let data = events(n, 1_000, 1_000);
        let started = Instant::now();
        let expected = hand_map_filter(&data);
        hand.push(n as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        let got = engine_map_filter(data).await?;
        engine.push(n as f64 / started.elapsed().as_secs_f64());
        assert_eq!(got, expected, "engine and loop disagree");
    }
    let e = report(
        "map_filter",
        "engine: source -> map -> filter -> sink",
        engine,
    );
    let h = report("map_filter", "hand-written loop", hand);
    println!("map_filter   engine / loop = {:.2}", e / h);
    Ok(())
}

// ---------------------------------------------------------------- keyed windows

/// Window results folded into one number, the same way by the engine's sink and the loops.
fn fold_result(key: u64, window_start: i64, count: u64) -> u64 {
    key.wrapping_mul(31)
        .wrapping_add(count)
        .wrapping_add(window_start as u64)
}

/// The practical limit for a tumbling count: one hash map per window, emitted and cleared when
/// the (in-order) input crosses a window boundary.
fn hand_tumbling(batches: &[Batch<Event>], size: i64) -> (u64, u64) {
    let mut counts: FxHashMap<u64, u64> = Default::default();
    let mut current = None;
    let (mut results, mut checksum) = (0u64, 0u64);
    let mut emit = |counts: &mut FxHashMap<u64, u64>, start: i64| {
        for (key, count) in counts.drain() {
            results += 1;
            checksum = checksum.wrapping_add(fold_result(key, start, count));
        }
    };
    for batch in batches {
        for r in batch {
            let start = r.timestamp - r.timestamp.rem_euclid(size);
            if current != Some(start) {
                if let Some(previous) = current {
                    emit(&mut counts, previous);
                }
                current = Some(start);
            }
            *counts.entry(r.value.key).or_insert(0) += 1;
        }
    }
    if let Some(previous) = current {
        emit(&mut counts, previous);
    }
    (results, checksum)
}

/// The practical limit for a sliding count: one hash map per slide-long pane; the window
/// ending at a pane boundary is the sum of the panes it covers, emitted once the (in-order)
/// input has passed its end.
struct HandSliding {
    size: i64,
    slide: i64,
    panes: VecDeque<(i64, FxHashMap<u64, u64>)>,
    next_end: Option<i64>,
    window: FxHashMap<u64, u64>,
    results: u64,
    checksum: u64,
}

impl HandSliding {
    fn fire_until(&mut self, limit: i64) {
        while let Some(end) = self.next_end.filter(|end| *end <= limit) {
            let start = end - self.size;
            self.window.clear();
            for (pane_start, pane) in &self.panes {
                if (start..end).contains(pane_start) {
                    for (key, count) in pane {
                        *self.window.entry(*key).or_insert(0) += count;
                    }
                }
            }
            for (key, count) in &self.window {
                self.results += 1;
                self.checksum = self.checksum.wrapping_add(fold_result(*key, start, *count));
            }
            self.next_end = Some(end + self.slide);
            while self
                .panes
                .front()
                .is_some_and(|(s, _)| *s < end + self.slide - self.size)
            {
                self.panes.pop_front();
            }
            if self.panes.is_empty() {
                self.next_end = None;
            }
        }
    }
}

fn hand_sliding(batches: &[Batch<Event>], size: i64, slide: i64) -> (u64, u64) {
    let mut hand = HandSliding {
        size,
        slide,
        panes: VecDeque::new(),
        next_end: None,
        window: FxHashMap::default(),
        results: 0,
        checksum: 0,
    };
    for batch in batches {
        for r in batch {
            let pane = r.timestamp - r.timestamp.rem_euclid(slide);
            if hand.panes.back().is_none_or(|(s, _)| *s != pane) {
                hand.fire_until(pane);
                hand.panes.push_back((pane, FxHashMap::default()));
                hand.next_end.get_or_insert(pane + slide);
            }
            *hand
                .panes
                .back_mut()
                .expect("a pane")
                .1
                .entry(r.value.key)
                .or_insert(0) += 1;
        }
    }
    if let Some(last) = hand.panes.back().map(|(s, _)| *s) {
        hand.fire_until(last + size);
    }
    (hand.results, hand.checksum)
}

/// The engine's keyed window count on the same records: source -> key_by -> window -> sink.
async fn engine_window(
    batches: Vec<Batch<Event>>,
    windows: TimeWindows,
) -> BenchResult<(u64, u64)> {
    let env = StreamEnv::new(JobConfig::named("window"));
    let results = source_of(&env, batches)
        .key_by(|e: &Event| e.key)
        .window(windows)
        .count();
    let totals = totals_sink(&results, |w: &Windowed<u64, u64>| {
        fold_result(w.key, w.window.start, w.value)
    });
    env.execute().await?;
    Ok((
        totals.records.load(Ordering::Relaxed),
        totals.checksum.load(Ordering::Relaxed),
    ))
}

/// Window cases: 100,000 keys, 1,000,000 records per second of event time (10 per key and
/// second), in event-time order, a watermark after every batch; 30,000,000 records, so 30 s of
/// event time. (Over a span as short as the sliding window itself, most sliding windows would
/// be the partial ones at the start and the end, which no long-running job sees.)
const WINDOW_KEYS: u64 = 100_000;
const WINDOW_RECORDS_PER_MS: usize = 1_000;

async fn windows_case(case: &str) -> BenchResult<f64> {
    let n = scaled(30_000_000);
    let (mut engine, mut hand) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let data = events(n, WINDOW_KEYS, WINDOW_RECORDS_PER_MS);
        let started = Instant::now();
        let (expected, windows) = if case == "tumbling" {
            (
                hand_tumbling(&data, 1_000),
                TimeWindows::tumbling(Duration::from_secs(1)),
            )
        } else {
            (
                hand_sliding(&data, 10_000, 1_000),
                TimeWindows::sliding(Duration::from_secs(10), Duration::from_secs(1)),
            )
        };
        hand.push(n as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        let got = engine_window(data, windows).await?;
        engine.push(n as f64 / started.elapsed().as_secs_f64());
        assert_eq!(got, expected, "engine and loop disagree ({case})");
    }
    let what = if case == "tumbling" {
        "engine: keyed tumbling 1 s count, 100k keys"
    } else {
        "engine: keyed sliding 10 s / 1 s count, 100k keys"
    };
    let e = report(case, what, engine);
    let h = report(case, "hand-written loop", hand);
    println!(
        "{case:<12} loop / engine = {:.2} (the engine is {:.2}x slower)",
        h / e,
        h / e
    );
    Ok(e)
}

// ---------------------------------------------------------------- end to end

#[derive(Clone, Serialize, Deserialize)]
struct Order {
    user: u64,
    amount: u64,
    time: i64,
}

#[derive(Clone, Serialize, Deserialize)]
struct Total {
    user: u64,
    window_start: i64,
    orders: u64,
}

/// The tumbling window job between embedded queues: JSON orders on a 4-partition queue (written
/// before the clock starts) -> bounded OMS source (JSON decode, event time from the record) ->
/// key_by user -> tumbling 1 s count -> JSON encode -> OMS sink on a 4-partition queue.
async fn end_to_end() -> BenchResult<()> {
    let n = scaled(2_000_000);
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let store = Store::new(&[("orders", 4), ("totals", 4)]).await?;
        let producer = store.access_point.create_producer(KeyValue::new()).await?;
        producer.start().await?;
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            let batch = chunk
                .iter()
                .map(|&i| {
                    let order = Order {
                        user: (i as u64 * 7919) % WINDOW_KEYS,
                        amount: (i % 100) as u64,
                        time: (i / WINDOW_RECORDS_PER_MS) as i64,
                    };
                    let body = serde_json::to_vec(&order).expect("json");
                    Message::new("orders", body).with_partition((i / 1000 % 4) as i32)
                })
                .collect();
            producer.send_batch(batch).await?;
        }
        let env = StreamEnv::new(JobConfig::named("e2e"));
        let source = env.add_oms_source(
            OmsSourceConfig::<Order>::new(store.access_point.clone(), "orders")
                .bounded(true)
                .event_time(EventTimeFrom::extract(|o: &Order| o.time)),
        )?;
        let totals = source
            .key_by(|o: &Order| o.user)
            .window(TimeWindows::tumbling(Duration::from_secs(1)))
            .count()
            .map(|w: Windowed<u64, u64>| Total {
                user: w.key,
                window_start: w.window.start,
                orders: w.value,
            });
        totals.add_oms_sink(
            OmsSinkConfig::new(store.access_point.clone(), "totals")
                .key(|t: &Total| t.user.to_string()),
        )?;
        let started = Instant::now();
        let report = env.execute().await?;
        runs.push(n as f64 / started.elapsed().as_secs_f64());
        assert_eq!(
            report.operator("orders").map(|o| o.records_out),
            Some(n as u64)
        );
    }
    report(
        "e2e",
        "queue -> JSON -> keyed tumbling count -> JSON -> queue",
        runs,
    );
    Ok(())
}

// ---------------------------------------------------------------- memory per key

/// Resident memory of this process, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Generates `keys` records, one per key, all in one window, without holding them in memory.
struct KeysSource {
    next: u64,
    keys: u64,
}

#[async_trait]
impl Source<Event> for KeysSource {
    async fn poll(&mut self, _: &SourceContext) -> Result<SourceOutput<Event>, BoxError> {
        if self.next == self.keys {
            return Ok(SourceOutput::Finished);
        }
        let end = (self.next + BATCH as u64).min(self.keys);
        let batch = (self.next..end)
            .map(|key| Record::new(0, Event { key, value: key }))
            .collect();
        self.next = end;
        Ok(SourceOutput::Data(batch))
    }
}

/// Memory held per key by a tumbling count window: resident memory when the window fires
/// (all keys in state) minus before the job, divided by the keys.
async fn memory() -> BenchResult<()> {
    let keys = scaled(1_000_000) as u64;
    let env = StreamEnv::new(JobConfig::named("memory"));
    let results = env
        .add_source("keys", move |_: &SubtaskInfo| {
            Box::new(KeysSource { next: 0, keys }) as Box<dyn Source<Event>>
        })
        .key_by(|e: &Event| e.key)
        .window(TimeWindows::tumbling(Duration::from_secs(1)))
        .count();
    let at_fire = Arc::new(AtomicU64::new(0));
    let seen = at_fire.clone();
    results.for_each(move |_: Record<Windowed<u64, u64>>| {
        if seen.load(Ordering::Relaxed) == 0 {
            seen.store(resident_bytes(), Ordering::Relaxed);
        }
    });
    let before = resident_bytes();
    env.execute().await?;
    let held = at_fire.load(Ordering::Relaxed).saturating_sub(before);
    println!(
        "memory       tumbling count window, {keys} keys in state: {:.0} bytes per key (resident memory {:.1} MB at firing, over the baseline)",
        held as f64 / keys as f64,
        held as f64 / 1e6
    );
    Ok(())
}

// ---------------------------------------------------------------- latency

/// The latency case's pace: `LATENCY_BATCH` messages every `LATENCY_TICK` (50,000 records/s).
const LATENCY_BATCH: usize = 50;
const LATENCY_TICK: Duration = Duration::from_millis(1);

#[derive(Clone, Serialize, Deserialize)]
struct Ping {
    /// Nanoseconds since the benchmark's start instant, taken right before the send.
    sent_ns: u64,
    user: u32,
}

/// A fresh embedded store in a temporary directory (deleted on drop).
struct Store {
    access_point: Arc<dyn MessagingAccessPoint>,
    _dir: tempfile::TempDir,
}

impl Store {
    async fn new(queues: &[(&str, u32)]) -> BenchResult<Self> {
        let dir = tempfile::tempdir()?;
        let attrs = KeyValue::new().with(embedded::EMBEDDED_DIR, dir.path().display());
        let access_point = oms::connect("oms:embedded://localhost/bench", attrs).await?;
        let manager = access_point.resource_manager().await?;
        for (queue, partitions) in queues {
            manager
                .create_queue(queue, QueueConfig::with_partitions(*partitions))
                .await?;
        }
        Ok(Store {
            access_point,
            _dir: dir,
        })
    }
}

/// A stateless job (OMS source -> JSON decode -> map -> filter -> sink) follows a queue that a
/// producer task fills at 50,000 records/s; the sink records, per record, the time from right
/// before `send_batch` to its arrival.
async fn latency() -> BenchResult<()> {
    let store = Store::new(&[("pings", 4)]).await?;
    let seconds = (5.0 * scale()).max(0.5);
    let start = Instant::now();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let env = StreamEnv::new(JobConfig::named("latency"));
    let source = env.add_oms_source(
        OmsSourceConfig::<Ping>::new(store.access_point.clone(), "pings").start(StartPosition::End),
    )?;
    let measured = source
        .map(|p: Ping| (p.sent_ns, p.user % 10))
        .filter(|(_, bucket)| *bucket < 10);
    let sink_latencies = latencies.clone();
    measured.for_each(move |r: Record<(u64, u32)>| {
        let now = start.elapsed().as_nanos() as u64;
        sink_latencies
            .lock()
            .unwrap()
            .push(now.saturating_sub(r.value.0));
    });
    let job = env.spawn()?;
    tokio::time::sleep(Duration::from_millis(200)).await; // the source opens at End first

    let producer = store.access_point.create_producer(KeyValue::new()).await?;
    producer.start().await?;
    let mut ticks = tokio::time::interval(LATENCY_TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let total = (seconds * 1000.0) as usize;
    for tick in 0..total {
        ticks.tick().await;
        let sent_ns = start.elapsed().as_nanos() as u64;
        let batch = (0..LATENCY_BATCH)
            .map(|i| {
                let ping = Ping {
                    sent_ns,
                    user: (tick * LATENCY_BATCH + i) as u32,
                };
                Message::new("pings", serde_json::to_vec(&ping).expect("json"))
            })
            .collect();
        producer.send_batch(batch).await?;
    }
    let expected = total * LATENCY_BATCH;
    let deadline = Instant::now() + Duration::from_secs(10);
    while latencies.lock().unwrap().len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    job.stop();
    job.join().await?;
    let mut all = latencies.lock().unwrap().clone();
    assert_eq!(all.len(), expected, "every record reached the sink");
    all.sort_unstable();
    let at = |q: f64| all[((all.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!(
        "latency      send -> sink at 50,000 records/s ({expected} records): p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs",
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0)
    );
    Ok(())
}

fn main() -> BenchResult<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |case: &str| wanted.is_empty() || wanted.iter().any(|w| w == case);
    println!(
        "machine: {} cpus; scale {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        scale()
    );
    runtime.block_on(async {
        if run("map_filter") {
            map_filter().await?;
        }
        let tumbling = if run("tumbling") || run("sliding") {
            Some(windows_case("tumbling").await?)
        } else {
            None
        };
        if run("sliding") {
            let sliding = windows_case("sliding").await?;
            if let Some(tumbling) = tumbling {
                println!(
                    "sliding      sliding 10 s / 1 s costs {:.2}x the tumbling window",
                    tumbling / sliding
                );
            }
        }
        if run("e2e") {
            end_to_end().await?;
        }
        if run("memory") {
            memory().await?;
        }
        if run("latency") {
            latency().await?;
        }
        Ok(())
    })
}
