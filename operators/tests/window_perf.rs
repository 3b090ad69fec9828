//! Throughput of keyed windows against a hand-written `FxHashMap` loop over the same records,
//! shaped like the engine benchmark: 100,000 keys, 1,000,000 records per second of event time,
//! pre-built batches moved through the source. Ignored by default (slow in debug); run it in
//! release:
//!
//! ```text
//! cargo test --release -p omstream-operators --test window_perf -- --ignored --nocapture
//! WINDOW_PERF_CASE=sliding cargo test --release ...   # one case only, e.g. under perf
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use omstream_core::runtime::{BoxError, Source, SourceContext, SourceOutput};
use omstream_operators::prelude::*;
use rustc_hash::FxHashMap;

const KEYS: u64 = 100_000;
const RECORDS: usize = 10_000_000;
/// Records per millisecond of event time: 10 per key and second; 10 M records span 10 s.
const PER_MS: usize = 1_000;
const BATCH: usize = 1_024;
const RUNS: usize = 3;

fn batches() -> Vec<Batch<u64>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let records: Vec<Record<u64>> = (0..RECORDS)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            Record::new((i / PER_MS) as i64, state % KEYS)
        })
        .collect();
    records.chunks(BATCH).map(<[_]>::to_vec).collect()
}

/// Hands out the batches (moved) with a watermark after each.
struct Batches {
    batches: VecDeque<Batch<u64>>,
    watermark: Option<EventTime>,
}

#[async_trait]
impl Source<u64> for Batches {
    async fn poll(&mut self, _: &SourceContext) -> Result<SourceOutput<u64>, BoxError> {
        if let Some(w) = self.watermark.take() {
            return Ok(SourceOutput::Watermark(w));
        }
        Ok(match self.batches.pop_front() {
            Some(batch) => {
                self.watermark = batch.last().map(|r| r.timestamp - 1);
                SourceOutput::Data(batch)
            }
            None => SourceOutput::Finished,
        })
    }
}

/// Runs the window job at parallelism 1: (records per second, results).
async fn run(windows: TimeWindows, batches: Vec<Batch<u64>>) -> (f64, usize) {
    let env = StreamEnv::new(JobConfig::named("window-perf"));
    let batches = Mutex::new(Some(batches));
    let results = env
        .add_source("batches", move |_| {
            let batches = batches.lock().unwrap().take().unwrap_or_default();
            Box::new(Batches {
                batches: batches.into(),
                watermark: None,
            }) as Box<dyn Source<u64>>
        })
        .key_by(|k: &u64| *k)
        .window(windows)
        .count();
    let total = Arc::new(AtomicUsize::new(0));
    let sink = total.clone();
    results.for_each(move |_| {
        sink.fetch_add(1, Ordering::Relaxed);
    });
    let started = Instant::now();
    env.execute().await.unwrap();
    let elapsed = started.elapsed();
    (
        RECORDS as f64 / elapsed.as_secs_f64(),
        total.load(Ordering::Relaxed),
    )
}

/// The same tumbling count by hand: a map per open window, drained when the next one starts.
fn hand_written(size: i64, batches: &[Batch<u64>]) -> (f64, usize) {
    let started = Instant::now();
    let mut open: FxHashMap<u64, u64> = FxHashMap::default();
    let mut window = i64::MIN;
    let mut results = 0;
    for record in batches.iter().flatten() {
        let start = record.timestamp - record.timestamp.rem_euclid(size);
        if start != window {
            results += open.drain().count();
            window = start;
        }
        *open.entry(record.value).or_default() += 1;
    }
    results += open.drain().count();
    let elapsed = started.elapsed();
    (RECORDS as f64 / elapsed.as_secs_f64(), results)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a throughput measurement: run in release with --ignored"]
async fn keyed_window_throughput() {
    let case = std::env::var("WINDOW_PERF_CASE").unwrap_or_default();
    let tumbling_windows = TimeWindows::tumbling(Duration::from_secs(1));
    let sliding_windows = TimeWindows::sliding(Duration::from_secs(10), Duration::from_secs(1));
    if case == "none" {
        // Only the data: the baseline to subtract when counting cycles per case.
        std::hint::black_box(batches());
        return;
    }
    if !case.is_empty() {
        let windows = if case == "sliding" {
            sliding_windows
        } else {
            tumbling_windows
        };
        let (rate, _) = run(windows, batches()).await;
        println!("{case}: {rate:.0} records/s");
        return;
    }
    // The best of a few runs each: the machine may be shared, and interference only slows.
    let (mut by_hand, mut tumbling, mut sliding) = (0f64, 0f64, 0f64);
    for _ in 0..RUNS {
        let data = batches();
        let (rate, by_hand_results) = hand_written(1_000, &data);
        by_hand = by_hand.max(rate);
        let (rate, tumbling_results) = run(tumbling_windows, data).await;
        tumbling = tumbling.max(rate);
        assert_eq!(tumbling_results, by_hand_results);
        sliding = sliding.max(run(sliding_windows, batches()).await.0);
    }
    println!("hand-written FxHashMap loop: {by_hand:>12.0} records/s");
    println!("tumbling 1 s count:          {tumbling:>12.0} records/s");
    println!("sliding 10 s / 1 s count:    {sliding:>12.0} records/s");
    println!(
        "tumbling is {:.2}x slower than by hand; sliding {:.2}x slower than tumbling",
        by_hand / tumbling,
        tumbling / sliding
    );
}
