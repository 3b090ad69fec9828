//! What checkpoints cost the keyed tumbling window job with 1,000,000 keys: throughput with a
//! checkpoint every second against the same job without checkpoints, the time of a checkpoint
//! after 1 % of the keys changed against one after all of them changed, and the time a job
//! takes to restore 1 GB of state and emit again; and the operator's share of a checkpoint of
//! a million changed keys. See `benches/README.md`.
//!
//! ```sh
//! cargo bench --bench checkpoint                        # every case
//! cargo bench --bench checkpoint -- overhead            # some: overhead incremental recovery snapshot
//! OMSTREAM_BENCH_SCALE=0.05 cargo bench --bench checkpoint   # a quick run (CI)
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use omstream::core::checkpoint::{CheckpointConfig, CheckpointRecord, CheckpointStore};
use omstream::core::runtime::{BoxError, Source, SourceContext, SourceOutput, SubtaskInfo};
use omstream::operators::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Records per batch (the engine's default batch size).
const BATCH: usize = 1024;
/// How often each case runs; the median is reported.
const RUNS: usize = 3;
/// Keys of every case, before scaling.
const KEYS: usize = 1_000_000;

fn scale() -> f64 {
    std::env::var("OMSTREAM_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn scaled(n: usize) -> usize {
    ((n as f64 * scale()) as usize).max(BATCH)
}

fn median(mut runs: Vec<f64>) -> (f64, f64, f64) {
    runs.sort_by(|a, b| a.total_cmp(b));
    (runs[runs.len() / 2], runs[0], runs[runs.len() - 1])
}

fn verdict(met: bool) -> &'static str {
    if met {
        "PASS"
    } else {
        "MISS"
    }
}

/// Bytes of the files under `path`.
fn size_of_dir(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => size_of_dir(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

#[derive(Clone, Copy)]
struct Event {
    key: u64,
    value: u64,
}

/// Cheap, deterministic input.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

// ---------------------------------------------------------------- sources

/// An endless source: records of uniformly random keys, `per_ms` records per millisecond of
/// event time, in order, a watermark after every batch. Counts what it emitted.
struct GeneratorSource {
    next: u64,
    keys: u64,
    per_ms: u64,
    rng: u64,
    watermark_next: Option<EventTime>,
    emitted: Arc<AtomicU64>,
    /// Set when the measurement is over: the source then waits forever (emits nothing more
    /// while the job is aborted).
    halt: Arc<AtomicBool>,
}

#[async_trait]
impl Source<Event> for GeneratorSource {
    async fn poll(&mut self, _: &SourceContext) -> Result<SourceOutput<Event>, BoxError> {
        if self.halt.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        if let Some(w) = self.watermark_next.take() {
            return Ok(SourceOutput::Watermark(w));
        }
        let batch: Batch<Event> = (self.next..self.next + BATCH as u64)
            .map(|i| {
                let r = xorshift(&mut self.rng);
                Record::new(
                    (i / self.per_ms) as i64,
                    Event {
                        key: r % self.keys,
                        value: r >> 40,
                    },
                )
            })
            .collect();
        self.next += BATCH as u64;
        self.watermark_next = batch.last().map(|r| r.timestamp - 1);
        self.emitted.fetch_add(BATCH as u64, Ordering::Relaxed);
        Ok(SourceOutput::Data(batch))
    }
}

/// A source fed by the benchmark through a channel. The job runs as one task (source and
/// operators fused), so a batch is processed when the next poll starts: `processed` counts
/// the records of batches that were.
struct ChannelSource {
    input: mpsc::UnboundedReceiver<Input>,
    processed: Arc<AtomicU64>,
    in_flight: u64,
}

enum Input {
    Data(Batch<Event>),
    Watermark(EventTime),
}

#[async_trait]
impl Source<Event> for ChannelSource {
    async fn poll(&mut self, _: &SourceContext) -> Result<SourceOutput<Event>, BoxError> {
        self.processed.fetch_add(self.in_flight, Ordering::SeqCst);
        self.in_flight = 0;
        // `recv` is cancel-safe: nothing is lost when the poll is dropped.
        match tokio::time::timeout(Duration::from_millis(5), self.input.recv()).await {
            Ok(Some(Input::Data(batch))) => {
                self.in_flight = batch.len() as u64;
                Ok(SourceOutput::Data(batch))
            }
            Ok(Some(Input::Watermark(w))) => Ok(SourceOutput::Watermark(w)),
            Ok(None) => Ok(SourceOutput::Finished),
            Err(_) => Ok(SourceOutput::NoData),
        }
    }
}

/// The feeding end of a [`ChannelSource`].
struct Feeder {
    input: mpsc::UnboundedSender<Input>,
    processed: Arc<AtomicU64>,
    sent: u64,
}

impl Feeder {
    fn source(env: &StreamEnv) -> (Feeder, Stream<Event>) {
        let (input, receiver) = mpsc::unbounded_channel();
        let processed = Arc::new(AtomicU64::new(0));
        let receiver = Mutex::new(Some(receiver));
        let counter = processed.clone();
        let stream = env.add_source("events", move |_: &SubtaskInfo| {
            Box::new(ChannelSource {
                input: receiver.lock().unwrap().take().expect("parallelism 1"),
                processed: counter.clone(),
                in_flight: 0,
            }) as Box<dyn Source<Event>>
        });
        let feeder = Feeder {
            input,
            processed,
            sent: 0,
        };
        (feeder, stream)
    }

    /// Sends one record for each key (at event time `time`), in batches.
    fn send_keys(&mut self, keys: impl Iterator<Item = u64>, time: EventTime) {
        let mut batch = Vec::with_capacity(BATCH);
        for key in keys {
            batch.push(Record::new(time, Event { key, value: key }));
            if batch.len() == BATCH {
                self.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
            }
        }
        if !batch.is_empty() {
            self.send(batch);
        }
    }

    fn send(&mut self, batch: Batch<Event>) {
        self.sent += batch.len() as u64;
        let _ = self.input.send(Input::Data(batch));
    }

    fn watermark(&self, watermark: EventTime) {
        let _ = self.input.send(Input::Watermark(watermark));
    }

    /// Waits until the job processed everything sent.
    async fn wait_processed(&self) -> BenchResult<()> {
        let deadline = Instant::now() + Duration::from_secs(600);
        while self.processed.load(Ordering::SeqCst) < self.sent {
            if Instant::now() > deadline {
                return Err("the job stopped processing".into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- 1: throughput

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The heap backend, no checkpoints (for reference).
    Heap,
    /// The durable backend (sled, cached working set), checkpoints on demand only: none is
    /// taken while the throughput is measured.
    Durable,
    /// The durable backend, a checkpoint every second.
    EverySecond,
}

impl Mode {
    fn describe(self) -> &'static str {
        match self {
            Mode::Heap => "heap backend, no checkpoints",
            Mode::Durable => "durable backend, no checkpoints",
            Mode::EverySecond => "durable backend, checkpoint every 1 s",
        }
    }
}

struct OverheadRun {
    records_per_second: f64,
    /// The checkpoints completed while measuring.
    checkpoints: Vec<CheckpointRecord>,
}

/// Runs the window job for `duration` and counts the records it took in.
async fn overhead_run(mode: Mode, keys: u64, duration: Duration) -> BenchResult<OverheadRun> {
    let dir = tempfile::tempdir()?;
    let job = "checkpoint-overhead";
    let mut config = JobConfig::named(job);
    match mode {
        Mode::Heap => {}
        Mode::Durable => {
            config = config.with_checkpoints(CheckpointConfig::new(dir.path()).with_interval(None))
        }
        Mode::EverySecond => {
            config = config.with_checkpoints(
                CheckpointConfig::new(dir.path()).with_interval(Some(Duration::from_secs(1))),
            )
        }
    }
    let env = StreamEnv::new(config);
    let emitted = Arc::new(AtomicU64::new(0));
    let counter = emitted.clone();
    let halt = Arc::new(AtomicBool::new(false));
    let halted = halt.clone();
    // 10 records per key and second of event time, as in the engine benchmark.
    let per_ms = (keys / 100).max(1);
    let source = env.add_source("events", move |_: &SubtaskInfo| {
        Box::new(GeneratorSource {
            next: 0,
            keys,
            per_ms,
            rng: 0x9e37_79b9_7f4a_7c15,
            watermark_next: None,
            emitted: counter.clone(),
            halt: halted.clone(),
        }) as Box<dyn Source<Event>>
    });
    source
        .key_by(|e: &Event| e.key)
        .window(TimeWindows::tumbling(Duration::from_secs(1)))
        .count()
        .for_each(|_: Record<Windowed<u64, u64>>| {});

    let started = Instant::now();
    let mut handle = env.spawn()?;
    let mut checkpoints = BTreeMap::new();
    let store = (mode == Mode::EverySecond)
        .then(|| CheckpointStore::open(dir.path(), job))
        .transpose()?;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(100).min(duration - started.elapsed())).await;
        if let Some(store) = &store {
            for record in store.list()?.0 {
                checkpoints.insert(record.epoch, record);
            }
        }
    }
    let records = emitted.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    // Not drained: what is measured is the steady state; a crash ends the run quickly.
    halt.store(true, Ordering::Relaxed);
    handle.abort();
    let _ = handle.join().await;
    Ok(OverheadRun {
        records_per_second: records as f64 / elapsed.as_secs_f64(),
        checkpoints: checkpoints.into_values().collect(),
    })
}

/// Rounds of the two configurations the target compares, run back to back.
const OVERHEAD_ROUNDS: usize = 5;

async fn overhead() -> BenchResult<()> {
    let keys = scaled(KEYS) as u64;
    // Long enough for several checkpoints even when each takes seconds.
    let duration = Duration::from_secs_f64((30.0 * scale()).clamp(2.0, 30.0));
    println!(
        "overhead     tumbling 1 s count, {keys} keys, 10 records per key and second of event time; {:.0} s per run",
        duration.as_secs_f64()
    );
    // The heap backend once, for reference.
    let heap = overhead_run(Mode::Heap, keys, duration).await?;
    println!(
        "overhead     {:<40} {:>12.0} records/s   (one run, for reference)",
        Mode::Heap.describe(),
        heap.records_per_second
    );
    // The machine's speed drifts (other tenants of the VM): the cost is taken per round, from
    // two runs seconds apart, in alternating order, and the median round is reported.
    let (mut without, mut with, mut costs) = (Vec::new(), Vec::new(), Vec::new());
    let mut checkpoints = Vec::new();
    for round in 0..OVERHEAD_ROUNDS {
        let order = if round % 2 == 0 {
            [Mode::Durable, Mode::EverySecond]
        } else {
            [Mode::EverySecond, Mode::Durable]
        };
        let mut pair = [0.0; 2];
        for mode in order {
            let run = overhead_run(mode, keys, duration).await?;
            pair[usize::from(mode == Mode::EverySecond)] = run.records_per_second;
            checkpoints.extend(run.checkpoints);
        }
        let cost = 1.0 - pair[1] / pair[0];
        println!(
            "overhead     round {}: {:.0} records/s without checkpoints, {:.0} with: cost {:.1} %",
            round + 1,
            pair[0],
            pair[1],
            cost * 100.0
        );
        without.push(pair[0]);
        with.push(pair[1]);
        costs.push(cost);
    }
    let mut medians = Vec::new();
    for (mode, runs) in [(Mode::Durable, without), (Mode::EverySecond, with)] {
        let (mid, low, high) = median(runs);
        println!(
            "overhead     {:<40} {mid:>12.0} records/s   (range {low:.0} .. {high:.0})",
            mode.describe()
        );
        medians.push(mid);
    }
    if !checkpoints.is_empty() {
        let durations = checkpoints.iter().map(|c| c.duration_ms as f64).collect();
        let entries = checkpoints.iter().map(|c| c.state_entries as f64).collect();
        let bytes = checkpoints.iter().map(|c| c.state_bytes as f64).collect();
        let (d, dl, dh) = median(durations);
        let (e, _, _) = median(entries);
        let (b, _, _) = median(bytes);
        println!(
            "overhead     {} checkpoints completed in {OVERHEAD_ROUNDS} runs (one every {:.1} s): median {d:.0} ms (range {dl:.0} .. {dh:.0}), {e:.0} entries, {:.1} MB each",
            checkpoints.len(),
            (OVERHEAD_ROUNDS as f64 * duration.as_secs_f64()) / checkpoints.len() as f64,
            b / 1e6
        );
    }
    let (cost, low, high) = median(costs);
    println!(
        "overhead     checkpoints every 1 s cost {:.1} % of the throughput without (median round; rounds {:.1} .. {:.1} %; target <= 10 %): {}",
        cost * 100.0,
        low * 100.0,
        high * 100.0,
        verdict(cost <= 0.10)
    );
    println!(
        "overhead     durable without checkpoints runs at {:.2}x the heap backend",
        medians[0] / heap.records_per_second
    );
    Ok(())
}

// ---------------------------------------------------------------- 2: incremental

/// A checkpoint taken on demand: its record, and the time from the request to the answer.
async fn checkpoint_now(handle: &JobHandle) -> BenchResult<(CheckpointRecord, f64)> {
    let started = Instant::now();
    let record = handle.checkpoint().await?;
    Ok((record, started.elapsed().as_secs_f64() * 1000.0))
}

fn describe_checkpoint(what: &str, (record, ms): &(CheckpointRecord, f64)) {
    println!(
        "incremental  {what:<44} {ms:>9.1} ms  ({} entries, {:.1} MB, record says {} ms)",
        record.state_entries,
        record.state_bytes as f64 / 1e6,
        record.duration_ms
    );
}

/// A tumbling 1 h `count` fed through a channel, checkpointed on demand only: one window of
/// an hour, so no window fires and every key stays in state. The directory holds its state.
fn hour_window_job(name: &str) -> BenchResult<(tempfile::TempDir, Feeder, JobHandle)> {
    let dir = tempfile::tempdir()?;
    let env = StreamEnv::new(
        JobConfig::named(name)
            .with_checkpoints(CheckpointConfig::new(dir.path()).with_interval(None)),
    );
    let (feeder, events) = Feeder::source(&env);
    events
        .key_by(|e: &Event| e.key)
        .window(TimeWindows::tumbling(Duration::from_secs(3600)))
        .count()
        .for_each(|_: Record<Windowed<u64, u64>>| {});
    let handle = env.spawn()?;
    Ok((dir, feeder, handle))
}

async fn incremental() -> BenchResult<()> {
    let keys = scaled(KEYS) as u64;
    let (_dir, mut feeder, mut handle) = hour_window_job("checkpoint-incremental")?;
    println!(
        "incremental  tumbling 1 h count, {keys} keys in state; a checkpoint after changing all keys, then one after changing 1 %"
    );
    feeder.send_keys(0..keys, 0);
    feeder.wait_processed().await?;
    let first = checkpoint_now(&handle).await?;
    describe_checkpoint("first checkpoint, every key new", &first);
    let (mut all, mut some) = (Vec::new(), Vec::new());
    for run in 0..RUNS as u64 {
        feeder.send_keys(0..keys, 1 + run as EventTime);
        feeder.wait_processed().await?;
        let full = checkpoint_now(&handle).await?;
        describe_checkpoint("every key changed", &full);
        all.push(full.1);
        // 1 % of the keys, spread over the key space (a different 1 % each run).
        feeder.send_keys((run..keys).step_by(100), 1 + run as EventTime);
        feeder.wait_processed().await?;
        let small = checkpoint_now(&handle).await?;
        describe_checkpoint("1 % of the keys changed", &small);
        some.push(small.1);
    }
    handle.abort();
    let _ = handle.join().await;
    let (all, _, _) = median(all);
    let (some, _, _) = median(some);
    let ratio = some / all;
    println!(
        "incremental  1 % changed: {some:.1} ms; all changed: {all:.1} ms; ratio 1/{:.0} (target <= 1/20): {}",
        1.0 / ratio,
        verdict(ratio <= 1.0 / 20.0)
    );
    Ok(())
}

/// Checkpoints of every key, again and again: the store's size on disk, which must level off
/// (merges and sled's reuse of freed segments) rather than grow with every checkpoint.
async fn space() -> BenchResult<()> {
    let keys = scaled(KEYS) as u64;
    let rounds = 40;
    let (dir, mut feeder, mut handle) = hour_window_job("checkpoint-space")?;
    println!("space        tumbling 1 h count, {keys} keys in state; {rounds} checkpoints, each after changing every key");
    let mut sizes = Vec::new();
    for round in 0..rounds {
        feeder.send_keys(0..keys, round as EventTime);
        feeder.wait_processed().await?;
        let (record, _) = checkpoint_now(&handle).await?;
        sizes.push(record.store_bytes);
        if round % 5 == 4 {
            println!(
                "space        after {:>2} checkpoints: {:>7.1} MB on disk (run files {:.1} MB, sled {:.1} MB; each checkpoint writes {:.1} MB)",
                round + 1,
                record.store_bytes as f64 / 1e6,
                size_of_dir(&dir.path().join("runs")) as f64 / 1e6,
                size_of_dir(&dir.path().join("state.sled")) as f64 / 1e6,
                record.state_bytes as f64 / 1e6
            );
        }
    }
    handle.abort();
    let _ = handle.join().await;
    let (tenth, last) = (sizes[9] as f64, sizes[rounds - 1] as f64);
    println!(
        "space        on disk after {rounds} checkpoints vs after 10: {:.2}x (levels off: <= 1.5x): {}",
        last / tenth,
        verdict(last <= 1.5 * tenth)
    );
    Ok(())
}

// ---------------------------------------------------------------- 3: recovery

/// Registers of the distinct-count sketch: 1024 one-byte registers, so that the accumulator
/// of each key takes about 1 KB in state.
const REGISTERS: usize = 1024;

/// The registers of a sketch, serialized as one byte string (a sequence of 1024 numbers would
/// cost a decode call per byte).
#[derive(Clone, Debug, PartialEq)]
struct Registers(Vec<u8>);

impl Serialize for Registers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Registers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = Registers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("sketch registers as bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Registers, E> {
                Ok(Registers(bytes.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Registers, E> {
                Ok(Registers(bytes))
            }
        }
        deserializer.deserialize_byte_buf(Bytes)
    }
}

/// An approximate distinct count per window (HyperLogLog with 1024 registers): a realistic
/// accumulator of about 1 KB.
#[derive(Clone)]
struct DistinctValues;

fn mix(mut x: u64) -> u64 {
    // splitmix64's finalizer
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl AggregateFunction<Event> for DistinctValues {
    type Acc = Registers;
    type Out = u64;

    fn create(&self) -> Registers {
        Registers(vec![0; REGISTERS])
    }

    fn add(&self, acc: &mut Registers, event: &Event) {
        let hash = mix(event.value);
        let register = (hash as usize) % REGISTERS;
        let rank = ((hash >> 10) | (1 << 53)).trailing_zeros() as u8 + 1;
        acc.0[register] = acc.0[register].max(rank);
    }

    fn merge(&self, acc: &mut Registers, other: &Registers) {
        for (a, b) in acc.0.iter_mut().zip(&other.0) {
            *a = (*a).max(*b);
        }
    }

    fn result(&self, acc: &Registers) -> u64 {
        let m = REGISTERS as f64;
        let zeros = acc.0.iter().filter(|r| **r == 0).count();
        // 2^-r, built from its exponent bits
        let sum: f64 = acc
            .0
            .iter()
            .map(|r| f64::from_bits((1023 - *r as u64) << 52))
            .sum();
        let raw = 0.7213 / (1.0 + 1.079 / m) * m * m / sum;
        if raw <= 2.5 * m && zeros > 0 {
            (m * (m / zeros as f64).ln()).round() as u64 // linear counting
        } else {
            raw.round() as u64
        }
    }
}

/// When the sink saw its first record, and how many.
#[derive(Clone)]
struct FirstRecord {
    at: Arc<Mutex<Option<Instant>>>,
    records: Arc<AtomicU64>,
    estimates: Arc<AtomicU64>,
    seen: Arc<AtomicBool>,
}

/// Keys per window of the recovery job's state.
const KEYS_PER_WINDOW: u64 = 1000;

/// The recovery job: 1-second tumbling windows of distinct-value sketches per key. Key `k`
/// has its record in second `k / 1000`: the state is 1000 keys in each of `keys / 1000`
/// windows, waiting for the watermark.
fn recovery_job(dir: &Path) -> (StreamEnv, Feeder, FirstRecord) {
    let env = StreamEnv::new(
        JobConfig::named("checkpoint-recovery")
            .with_checkpoints(CheckpointConfig::new(dir).with_interval(None)),
    );
    let (feeder, events) = Feeder::source(&env);
    let first = FirstRecord {
        at: Arc::new(Mutex::new(None)),
        records: Arc::new(AtomicU64::new(0)),
        estimates: Arc::new(AtomicU64::new(0)),
        seen: Arc::new(AtomicBool::new(false)),
    };
    let sink = first.clone();
    events
        .key_by(|e: &Event| e.key)
        .window(TimeWindows::tumbling(Duration::from_secs(1)))
        .aggregate(DistinctValues)
        .for_each(move |r: Record<Windowed<u64, u64>>| {
            if !sink.seen.swap(true, Ordering::SeqCst) {
                *sink.at.lock().unwrap() = Some(Instant::now());
            }
            sink.records.fetch_add(1, Ordering::Relaxed);
            sink.estimates.fetch_add(r.value.value, Ordering::Relaxed);
        });
    (env, feeder, first)
}

async fn recovery() -> BenchResult<()> {
    let keys = scaled(KEYS) as u64;
    let dir = tempfile::tempdir()?;

    // Build the state once: every key gets a sketch, a checkpoint writes them all, and the
    // job crashes.
    let (env, mut feeder, _) = recovery_job(dir.path());
    let started = Instant::now();
    let mut handle = env.spawn()?;
    let mut batch = Vec::with_capacity(BATCH);
    for key in 0..keys {
        let time = (key / KEYS_PER_WINDOW * 1000) as EventTime;
        batch.push(Record::new(time, Event { key, value: key }));
        if batch.len() == BATCH {
            feeder.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
        }
    }
    feeder.send(batch);
    feeder.wait_processed().await?;
    let (record, checkpoint_ms) = checkpoint_now(&handle).await?;
    handle.abort();
    let _ = handle.join().await;
    println!(
        "recovery     state of {keys} keys (~1 KB each, {} windows of 1000 keys): {:.2} GB written by the checkpoint ({} entries), {:.2} GB on disk; built in {:.1} s (checkpoint {:.1} s)",
        keys.div_ceil(KEYS_PER_WINDOW),
        record.state_bytes as f64 / 1e9,
        record.state_entries,
        size_of_dir(dir.path()) as f64 / 1e9,
        started.elapsed().as_secs_f64(),
        checkpoint_ms / 1000.0
    );

    // Restore it, each time in a fresh process, as after a crash: a child process (this
    // binary again) runs the same job on the same state directory. "Warm": the state's files
    // are in the page cache (the process died, the machine did not). "Cold": the page cache
    // is dropped first (the machine restarted), when this process may (root).
    let gb = record.state_bytes as f64 / 1e9;
    for cold in [false, true] {
        if cold && !may_drop_page_cache() {
            println!(
                "recovery     cold-cache restores skipped: dropping the page cache needs root"
            );
            continue;
        }
        let what = if cold {
            "cold page cache"
        } else {
            "warm page cache"
        };
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            if cold {
                drop_page_cache()?;
            }
            let child = restore_in_child(dir.path())?;
            println!(
                "recovery     {what}: process start to first record at the sink {:.2} s (spawn() returned after {:.2} s, first record {:.2} s after spawn()); all {keys} restored windows fired after {:.2} s",
                child.to_first,
                child.spawned,
                child.spawn_to_first,
                child.all_fired
            );
            runs.push(child.to_first);
        }
        let (mid, low, high) = median(runs);
        println!(
            "recovery     restore of {gb:.2} GB in a new process, {what}, to the first record: {mid:.2} s (range {low:.2} .. {high:.2}) (target < 5 s): {}",
            verdict(mid < 5.0)
        );
    }
    Ok(())
}

/// The environment variable that makes this binary a restoring child: the state directory.
const RESTORE_CHILD: &str = "OMSTREAM_BENCH_RESTORE_CHILD";

/// What a restoring child measured, in seconds.
struct RestoreTimes {
    /// From starting the process to the first record at the sink (measured by the parent).
    to_first: f64,
    /// From the child's `spawn()` call to its return.
    spawned: f64,
    /// From the child's `spawn()` call to the first record at the sink.
    spawn_to_first: f64,
    /// From the child's `spawn()` call to every restored window fired.
    all_fired: f64,
}

/// Runs one restore of the recovery job's state in `dir` in a child process and reads what it
/// measured. The child prints `first-record` when the sink sees its first record (the parent
/// notes the time) and `restored <spawned> <to first> <all fired>` at the end.
/// The child inherits `OMSTREAM_BENCH_SCALE`, and so the number of keys.
fn restore_in_child(dir: &Path) -> BenchResult<RestoreTimes> {
    use std::io::BufRead;
    let started = Instant::now();
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .env(RESTORE_CHILD, dir)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("the child's stdout")?;
    let (mut to_first, mut figures) = (None, None);
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        if line == "first-record" {
            to_first.get_or_insert(started.elapsed().as_secs_f64());
        } else if let Some(rest) = line.strip_prefix("restored ") {
            let numbers: Vec<f64> = rest.split(' ').map(str::parse).collect::<Result<_, _>>()?;
            figures = Some(numbers);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("the restoring child failed: {status}").into());
    }
    match (to_first, figures.as_deref()) {
        (Some(to_first), Some(&[spawned, spawn_to_first, all_fired])) => Ok(RestoreTimes {
            to_first,
            spawned,
            spawn_to_first,
            all_fired,
        }),
        _ => Err("the restoring child did not report its figures".into()),
    }
}

/// The restoring child (see [`restore_in_child`]): a new run of the recovery job on the
/// state in `dir`. Its first input is the watermark that closes the first window, so the
/// first record at the sink is the result of a restored key; then the watermark that closes
/// them all, to check every key was restored.
async fn restore_child(dir: &Path) -> BenchResult<()> {
    use std::io::Write;
    let keys = scaled(KEYS) as u64;
    let (env, feeder, first) = recovery_job(dir);
    let started = Instant::now();
    let mut handle = env.spawn()?;
    let spawned = started.elapsed();
    feeder.watermark(999);
    let deadline = Instant::now() + Duration::from_secs(600);
    while !first.seen.load(Ordering::SeqCst) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let at = first
        .at
        .lock()
        .unwrap()
        .ok_or("no record reached the sink")?;
    // The parent times the process from its start to this line.
    println!("first-record");
    std::io::stdout().flush()?;
    let to_first = at.duration_since(started);
    feeder.watermark((keys.div_ceil(KEYS_PER_WINDOW) * 1000) as EventTime);
    while first.records.load(Ordering::Relaxed) < keys && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all_fired = started.elapsed();
    handle.abort();
    let _ = handle.join().await;
    let fired = first.records.load(Ordering::Relaxed);
    assert_eq!(fired, keys, "every restored key's window fired");
    assert_eq!(
        first.estimates.load(Ordering::Relaxed),
        keys,
        "each restored sketch counts its one value"
    );
    println!(
        "restored {} {} {}",
        spawned.as_secs_f64(),
        to_first.as_secs_f64(),
        all_fired.as_secs_f64()
    );
    Ok(())
}

/// Where the kernel takes the order to drop clean pages from the page cache.
const DROP_CACHES: &str = "/proc/sys/vm/drop_caches";

/// Whether this process may drop the page cache.
fn may_drop_page_cache() -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .open(DROP_CACHES)
        .is_ok()
}

/// Writes dirty pages out, then drops the clean ones: the next reads come from the disk.
fn drop_page_cache() -> BenchResult<()> {
    let synced = std::process::Command::new("sync").status()?;
    if !synced.success() {
        return Err(format!("sync failed: {synced}").into());
    }
    std::fs::write(DROP_CACHES, "3")?;
    Ok(())
}

/// A window accumulator's shape, as the overhead case's state holds it per key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WindowLike {
    newest: (i64, u64),
    older: Vec<(i64, u64)>,
    timer: i64,
}

/// The operator's share of a checkpoint: `KeyedState::snapshot` of a durable value state
/// after every one of its 1,000,000 keys changed, timed on the calling (operator's) thread.
/// What follows on the store's writer thread (encoding, sorting, writing) is waited for
/// after the timing, by the flush.
fn snapshot() -> BenchResult<()> {
    use omstream::core::runtime::ProcessingClock;
    use omstream::core::state::{DurableBackend, StateBackend, StateOptions, StateStore};
    const ROUNDS: u64 = 7;
    let keys = scaled(1_000_000) as u64;
    println!("snapshot     a value state of {keys} keys (u64 -> a window accumulator), every key changed before each snapshot");
    let dir = tempfile::tempdir()?;
    let store = Arc::new(StateStore::open(dir.path())?);
    let first = store.begin_run(0)?;
    let backend = StateBackend::Durable(DurableBackend::new(store.clone(), first, 2_000_000));
    let mut state = backend.value_state::<u64, WindowLike>(
        &SubtaskInfo::new("window", 0, 1),
        "accumulators",
        StateOptions::default(),
        ProcessingClock::start(),
    );
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        for key in 0..keys {
            state.insert(
                key,
                WindowLike {
                    newest: (round as i64, key),
                    older: Vec::new(),
                    timer: 1000,
                },
            );
        }
        let started = Instant::now();
        let stats = state.snapshot(first + round)?;
        let took = started.elapsed().as_secs_f64() * 1000.0;
        store.flush()?;
        assert_eq!(stats.entries, keys, "every key written");
        // The first round fills the cache and the buffers; the others are the steady state.
        if round > 0 {
            times.push(took);
        }
    }
    let (mid, low, high) = median(times);
    println!(
        "snapshot     on the operator's thread: {mid:.1} ms (range {low:.1} .. {high:.1}), {:.0} ns a changed key",
        mid * 1e6 / keys as f64
    );
    Ok(())
}

fn main() -> BenchResult<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        // `RUST_LOG=omstream_core::checkpoint=info` shows each checkpoint's phases.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Some(dir) = std::env::var_os(RESTORE_CHILD) {
        return runtime.block_on(restore_child(Path::new(&dir)));
    }
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
        if run("overhead") {
            overhead().await?;
        }
        if run("incremental") {
            incremental().await?;
        }
        if run("recovery") {
            recovery().await?;
        }
        if run("snapshot") {
            snapshot()?;
        }
        if run("space") {
            space().await?;
        }
        Ok(())
    })
}
