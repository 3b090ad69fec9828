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
use std::time::Instant;

use async_trait::async_trait;
use omstream::core::runtime::{BoxError, Sink, Source, SourceContext, SourceOutput, SubtaskInfo};
use omstream::operators::prelude::*;
use rustc_hash::FxHashMap;

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
        Ok(())
    })
}
