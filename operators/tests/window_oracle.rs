//! Oracle tests: every window type runs on random, out-of-order, multi-partition input at
//! parallelism 1 and 4, and its results must equal a naive batch recomputation (records grouped
//! by key and window in a `BTreeMap`).
//!
//! The on-time tests keep the watermark's out-of-orderness at or above the data's disorder, so
//! no record is late and the final results are exact. The lateness tests add records far
//! behind the watermark and check that each record is either in the final result of its
//! window or on the late side output (never both, never neither), and that the final results
//! are the recomputation over the records that were not late.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::Duration;

use omstream_core::runtime::CollectedRecords;
use omstream_operators::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Event {
    key: u32,
    value: i64,
    id: u64,
}

const PARTITIONS: usize = 4;
const DISORDER: i64 = 300;

/// Input shape: how many records per partition and keys, whether keys stay in one partition,
/// and how many records (per thousand) are delayed far beyond the disorder.
#[derive(Debug, Clone, Copy)]
struct Shape {
    per_partition: usize,
    keys: u32,
    key_per_partition: bool,
    delayed_per_mille: u32,
    max_delay: i64,
}

const ON_TIME: Shape = Shape {
    per_partition: 300,
    keys: 12,
    key_per_partition: false,
    delayed_per_mille: 0,
    max_delay: 0,
};

/// Per partition, timestamps that advance by up to 60 ms, each shifted by up to `DISORDER`
/// (so a watermark `DISORDER` behind the largest timestamp never passes a later record),
/// plus delayed records.
fn generate(seed: u64, shape: Shape) -> Vec<Vec<Record<Event>>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut id = 0;
    (0..PARTITIONS)
        .map(|partition| {
            let mut base: i64 = rng.random_range(-5_000..0);
            (0..shape.per_partition)
                .map(|_| {
                    base += rng.random_range(0..60);
                    let mut timestamp = base + rng.random_range(0..DISORDER);
                    if rng.random_range(0..1000) < shape.delayed_per_mille {
                        timestamp -= rng.random_range(DISORDER..shape.max_delay);
                    }
                    let key = if shape.key_per_partition {
                        rng.random_range(0..shape.keys) * PARTITIONS as u32 + partition as u32
                    } else {
                        rng.random_range(0..shape.keys)
                    };
                    id += 1;
                    let value = rng.random_range(-100..100);
                    Record::new(timestamp, Event { key, value, id })
                })
                .collect()
        })
        .collect()
}

fn environment(seed: u64, parallelism: usize) -> StreamEnv {
    let config = JobConfig::named(format!("oracle-{seed}-{parallelism}"))
        .with_parallelism(parallelism)
        .with_batch_size(1 + (seed as usize * 7) % 23);
    StreamEnv::new(config)
}

fn keyed(env: &StreamEnv, partitions: &[Vec<Record<Event>>]) -> KeyedStream<u32, Event> {
    let strategy =
        WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(DISORDER as u64))
            .with_idle_timeout(None);
    env.from_partitions("events", partitions.to_vec(), strategy)
        .key_by(|e: &Event| e.key)
}

/// Count, sum and the sorted ids of a window's records: a user-defined aggregate whose
/// accumulator is a list, so merging is checked on something that is not a number.
#[derive(Debug, Clone)]
struct Summary;

type SummaryOut = (u64, i64, Vec<u64>);

impl AggregateFunction<Event> for Summary {
    type Acc = (u64, i64, Vec<u64>);
    type Out = SummaryOut;

    fn create(&self) -> Self::Acc {
        (0, 0, Vec::new())
    }

    fn add(&self, acc: &mut Self::Acc, e: &Event) {
        acc.0 += 1;
        acc.1 += e.value;
        acc.2.push(e.id);
    }

    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) {
        acc.0 += other.0;
        acc.1 += other.1;
        acc.2.extend_from_slice(&other.2);
    }

    fn result(&self, acc: &Self::Acc) -> SummaryOut {
        let mut ids = acc.2.clone();
        ids.sort_unstable();
        (acc.0, acc.1, ids)
    }
}

fn summarize(events: &[&Event]) -> SummaryOut {
    let mut ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    ids.sort_unstable();
    (
        events.len() as u64,
        events.iter().map(|e| e.value).sum(),
        ids,
    )
}

type Groups<'a> = BTreeMap<(u32, TimeWindow), Vec<&'a Event>>;

/// The naive grouping for tumbling and sliding windows.
fn group_by_window<'a>(windows: TimeWindows, records: &[&'a Record<Event>]) -> Groups<'a> {
    let mut groups = Groups::new();
    for record in records {
        windows.for_each_window(record.timestamp, |w| {
            groups
                .entry((record.value.key, w))
                .or_default()
                .push(&record.value);
        });
    }
    groups
}

/// The naive grouping for sessions: per key, sorted by time, a record further than `gap`
/// after the end of the running session starts a new one.
fn group_by_session<'a>(gap: i64, records: &[&'a Record<Event>]) -> Groups<'a> {
    let mut by_key: BTreeMap<u32, Vec<&Record<Event>>> = BTreeMap::new();
    for record in records {
        by_key.entry(record.value.key).or_default().push(record);
    }
    let mut groups = Groups::new();
    for (key, mut records) in by_key {
        records.sort_by_key(|r| r.timestamp);
        let mut current: Option<(TimeWindow, Vec<&Event>)> = None;
        for record in records {
            let t = record.timestamp;
            match &mut current {
                Some((w, events)) if t < w.end => {
                    w.end = w.end.max(t + gap);
                    events.push(&record.value);
                }
                _ => {
                    if let Some((w, events)) = current.take() {
                        groups.insert((key, w), events);
                    }
                    current = Some((TimeWindow::new(t, t + gap), vec![&record.value]));
                }
            }
        }
        if let Some((w, events)) = current {
            groups.insert((key, w), events);
        }
    }
    groups
}

fn expect<V>(groups: &Groups<'_>, f: impl Fn(&[&Event]) -> V) -> BTreeMap<(u32, TimeWindow), V> {
    groups.iter().map(|(k, events)| (*k, f(events))).collect()
}

/// Results of an on-time run: each window exactly once, no update, at its last millisecond.
fn exact<V: Clone + Debug>(
    what: &str,
    collected: &CollectedRecords<Windowed<u32, V>>,
) -> BTreeMap<(u32, TimeWindow), V> {
    let mut results = BTreeMap::new();
    for record in collected.records() {
        let w = record.value;
        assert!(!w.is_update, "{what}: update without late data: {w:?}");
        assert_eq!(record.timestamp, w.window.max_timestamp(), "{what}");
        let previous = results.insert((w.key, w.window), w.value.clone());
        assert!(previous.is_none(), "{what}: window fired twice: {w:?}");
    }
    results
}

/// Count-window results per key, in the order they were emitted.
fn in_order<V>(collected: Vec<Record<Windowed<u32, V>>>) -> BTreeMap<u32, Vec<(TimeWindow, V)>> {
    let mut all: BTreeMap<u32, Vec<(TimeWindow, V)>> = BTreeMap::new();
    for record in collected {
        let w = record.value;
        assert!(!w.is_update);
        assert_eq!(record.timestamp, w.window.max_timestamp());
        all.entry(w.key).or_default().push((w.window, w.value));
    }
    all
}

fn all_records(partitions: &[Vec<Record<Event>>]) -> Vec<&Record<Event>> {
    partitions.iter().flatten().collect()
}

/// Runs every window function on `windows` and compares each with the recomputation.
async fn check_time_windows(windows: TimeWindows, seed: u64, parallelism: usize) {
    let partitions = generate(seed, ON_TIME);
    let env = environment(seed, parallelism);
    let keyed = keyed(&env, &partitions);
    let counts = keyed.window(windows).count().collect();
    let sums = keyed.window(windows).sum(|e: &Event| e.value).collect();
    let mins = keyed.window(windows).min(|e: &Event| e.value).collect();
    let maxes = keyed.window(windows).max(|e: &Event| e.value).collect();
    let avgs = keyed.window(windows).avg(|e| e.value as f64).collect();
    let summaries = keyed.window(windows).aggregate(Summary).collect();
    let applied = keyed
        .window(windows)
        .apply(|_, _, events: &[Event]| summarize(&events.iter().collect::<Vec<_>>()))
        .collect();
    let reduced = keyed
        .window(windows)
        .reduce(|a, b| Event {
            key: a.key,
            value: a.value + b.value,
            id: a.id.min(b.id),
        })
        .map(|w| Windowed {
            value: (w.value.value, w.value.id),
            key: w.key,
            window: w.window,
            is_update: w.is_update,
        })
        .collect();
    env.execute().await.unwrap();

    let records = all_records(&partitions);
    let groups = match windows {
        TimeWindows::Session { gap } => group_by_session(gap, &records),
        _ => group_by_window(windows, &records),
    };
    let context = format!("{windows:?} seed {seed} parallelism {parallelism}");
    let values = |events: &[&Event]| events.iter().map(|e| e.value).collect::<Vec<_>>();
    assert_eq!(
        exact("count", &counts),
        expect(&groups, |e| e.len() as u64),
        "{context}"
    );
    assert_eq!(
        exact("sum", &sums),
        expect(&groups, |e| values(e).iter().sum()),
        "{context}"
    );
    let min = expect(&groups, |e| *values(e).iter().min().unwrap());
    assert_eq!(exact("min", &mins), min, "{context}");
    let max = expect(&groups, |e| *values(e).iter().max().unwrap());
    assert_eq!(exact("max", &maxes), max, "{context}");
    let avg = expect(&groups, |e| {
        values(e).iter().sum::<i64>() as f64 / e.len() as f64
    });
    assert_eq!(exact("avg", &avgs), avg, "{context}");
    assert_eq!(
        exact("aggregate", &summaries),
        expect(&groups, summarize),
        "{context}"
    );
    assert_eq!(
        exact("apply", &applied),
        expect(&groups, summarize),
        "{context}"
    );
    let reduce = expect(&groups, |e| {
        let ids = e.iter().map(|e| e.id);
        (values(e).iter().sum(), ids.min().unwrap())
    });
    assert_eq!(exact("reduce", &reduced), reduce, "{context}");
}

const SEEDS: [u64; 3] = [1, 2, 3];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_windows_equal_the_recomputation() {
    for seed in SEEDS {
        for parallelism in [1, 4] {
            let windows = TimeWindows::tumbling(Duration::from_millis(1_000));
            check_time_windows(windows, seed, parallelism).await;
            let shifted = windows.with_offset(Duration::from_millis(370));
            check_time_windows(shifted, seed, parallelism).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_windows_equal_the_recomputation() {
    for seed in SEEDS {
        for parallelism in [1, 4] {
            let (size, slide) = (Duration::from_millis(1_000), Duration::from_millis(250));
            check_time_windows(TimeWindows::sliding(size, slide), seed, parallelism).await;
            // A slide that does not divide the size: panes of gcd(900, 400) = 100 ms.
            let (size, slide) = (Duration::from_millis(900), Duration::from_millis(400));
            check_time_windows(TimeWindows::sliding(size, slide), seed, parallelism).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_windows_equal_the_recomputation() {
    for seed in SEEDS {
        for parallelism in [1, 4] {
            // With 12 keys a key's records are ~60 ms apart on average: sessions of a few to
            // many records, merging often as records arrive out of order.
            for gap in [150, 400] {
                let windows = TimeWindows::session(Duration::from_millis(gap));
                check_time_windows(windows, seed, parallelism).await;
            }
        }
    }
}

/// Count windows depend on arrival order, which is only fixed per partition: every key stays
/// in one partition, so its records reach the window in partition order at any parallelism.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_windows_equal_the_recomputation() {
    let shape = Shape {
        key_per_partition: true,
        keys: 3,
        ..ON_TIME
    };
    for seed in SEEDS {
        for parallelism in [1, 4] {
            for (size, slide) in [(5, 5), (6, 4), (7, 3), (1, 1)] {
                let partitions = generate(seed, shape);
                let env = environment(seed, parallelism);
                let keyed = keyed(&env, &partitions);
                let sums = keyed
                    .count_window_sliding(size, slide)
                    .sum(|e: &Event| e.value)
                    .collect();
                let summaries = keyed
                    .count_window_sliding(size, slide)
                    .aggregate(Summary)
                    .collect();
                let applied = keyed
                    .count_window_sliding(size, slide)
                    .apply(|_, _, events: &[Event]| events.iter().map(|e| e.id).collect())
                    .collect();
                env.execute().await.unwrap();

                let mut per_key: BTreeMap<u32, Vec<&Record<Event>>> = BTreeMap::new();
                for record in partitions.iter().flatten() {
                    per_key.entry(record.value.key).or_default().push(record);
                }
                let windows = |f: &dyn Fn(&[&Record<Event>]) -> SummaryOut| {
                    let mut all: BTreeMap<u32, Vec<(TimeWindow, SummaryOut)>> = BTreeMap::new();
                    for (key, records) in &per_key {
                        for end in (slide as usize..=records.len()).step_by(slide as usize) {
                            let part = &records[end.saturating_sub(size as usize)..end];
                            let min = part.iter().map(|r| r.timestamp).min().unwrap();
                            let max = part.iter().map(|r| r.timestamp).max().unwrap();
                            let window = TimeWindow::new(min, max + 1);
                            all.entry(*key).or_default().push((window, f(part)));
                        }
                    }
                    all
                };
                let expected = windows(&|part: &[&Record<Event>]| {
                    summarize(&part.iter().map(|r| &r.value).collect::<Vec<_>>())
                });
                let context = format!("size {size} slide {slide} seed {seed} p {parallelism}");
                assert_eq!(in_order(summaries.records()), expected, "{context}");
                let expected_sums: BTreeMap<u32, Vec<(TimeWindow, i64)>> = expected
                    .iter()
                    .map(|(k, ws)| (*k, ws.iter().map(|(w, s)| (*w, s.1)).collect()))
                    .collect();
                assert_eq!(in_order(sums.records()), expected_sums, "{context}");
                // apply sees the records in arrival order.
                for (key, records) in &per_key {
                    let got: Vec<Vec<u64>> = applied
                        .values()
                        .into_iter()
                        .filter(|w| w.key == *key)
                        .map(|w| w.value)
                        .collect();
                    let want: Vec<Vec<u64>> = (slide as usize..=records.len())
                        .step_by(slide as usize)
                        .map(|end| {
                            let part = &records[end.saturating_sub(size as usize)..end];
                            part.iter().map(|r| r.value.id).collect()
                        })
                        .collect();
                    assert_eq!(got, want, "{context} key {key}");
                }
            }
        }
    }
}

const LATENESS: Duration = Duration::from_millis(1_000);

/// 15% of the records delayed by up to 6 s: some within the lateness (updates), some beyond it.
const LATE: Shape = Shape {
    per_partition: 250,
    keys: 8,
    key_per_partition: false,
    delayed_per_mille: 150,
    max_delay: 6_000,
};

/// What one windowed run produced.
struct LateRun {
    results: Vec<Record<Windowed<u32, SummaryOut>>>,
    late: Vec<Event>,
}

/// Runs the window with an aggregate and with a full-window function (each has its own late
/// records: their watermarks may interleave differently with the data).
async fn run_with_lateness(
    windows: TimeWindows,
    partitions: &[Vec<Record<Event>>],
    seed: u64,
    parallelism: usize,
) -> [LateRun; 2] {
    let env = environment(seed, parallelism);
    let keyed = keyed(&env, partitions);
    let aggregated = keyed
        .window(windows)
        .allowed_lateness(LATENESS)
        .aggregate(Summary);
    let applied = keyed
        .window(windows)
        .allowed_lateness(LATENESS)
        .apply(|_, _, events: &[Event]| summarize(&events.iter().collect::<Vec<_>>()));
    let collected = [&aggregated, &applied].map(|r| (r.collect(), r.late_records().collect()));
    env.execute().await.unwrap();
    collected.map(|(results, late)| LateRun {
        results: results.records(),
        late: late.values(),
    })
}

/// The final result per window (the last update wins; a session result replaces every earlier
/// one of its key that it covers), checking `is_update` says whether there was an earlier one.
fn final_results(
    windows: TimeWindows,
    run: &LateRun,
    context: &str,
) -> BTreeMap<(u32, TimeWindow), SummaryOut> {
    let mut finals: BTreeMap<(u32, TimeWindow), SummaryOut> = BTreeMap::new();
    for record in &run.results {
        let w = &record.value;
        assert_eq!(record.timestamp, w.window.max_timestamp(), "{context}");
        let replaced: Vec<(u32, TimeWindow)> = match windows {
            TimeWindows::Session { .. } => finals
                .keys()
                .filter(|(k, old)| {
                    *k == w.key && w.window.start <= old.start && old.end <= w.window.end
                })
                .copied()
                .collect(),
            _ => finals
                .get_key_value(&(w.key, w.window))
                .map(|(k, _)| *k)
                .into_iter()
                .collect(),
        };
        assert_eq!(w.is_update, !replaced.is_empty(), "{context}: {w:?}");
        for old in replaced {
            finals.remove(&old);
        }
        finals.insert((w.key, w.window), w.value.clone());
    }
    finals
}

/// Checks (a) every record is either counted in a final result or late, never both, never
/// neither; returns the ids of the late records.
fn check_partition(
    partitions: &[Vec<Record<Event>>],
    finals: &BTreeMap<(u32, TimeWindow), SummaryOut>,
    run: &LateRun,
    context: &str,
) -> BTreeSet<u64> {
    let late: BTreeSet<u64> = run.late.iter().map(|e| e.id).collect();
    assert_eq!(
        late.len(),
        run.late.len(),
        "{context}: a record was late twice"
    );
    let counted: BTreeSet<u64> = finals.values().flat_map(|s| s.2.iter().copied()).collect();
    assert!(late.is_disjoint(&counted), "{context}: counted and late");
    let all: BTreeSet<u64> = partitions.iter().flatten().map(|r| r.value.id).collect();
    let accounted: BTreeSet<u64> = late.union(&counted).copied().collect();
    assert_eq!(
        accounted, all,
        "{context}: records neither counted nor late"
    );
    late
}

/// Tumbling windows and sessions: the final results are exactly the recomputation over the
/// records that were not late. Returns (late records, updates) seen.
async fn check_exact_with_lateness(
    windows: TimeWindows,
    seed: u64,
    parallelism: usize,
) -> (usize, usize) {
    let partitions = generate(seed, LATE);
    let mut seen = (0, 0);
    for (run, function) in run_with_lateness(windows, &partitions, seed, parallelism)
        .await
        .iter()
        .zip(["aggregate", "apply"])
    {
        let context = format!("{windows:?} {function} seed {seed} parallelism {parallelism}");
        let finals = final_results(windows, run, &context);
        for summary in finals.values() {
            assert_eq!(
                summary.0 as usize,
                summary.2.len(),
                "{context}: window counted twice"
            );
        }
        let late = check_partition(&partitions, &finals, run, &context);
        let on_time: Vec<&Record<Event>> = all_records(&partitions)
            .into_iter()
            .filter(|r| !late.contains(&r.value.id))
            .collect();
        let groups = match windows {
            TimeWindows::Session { gap } => group_by_session(gap, &on_time),
            _ => group_by_window(windows, &on_time),
        };
        assert_eq!(finals, expect(&groups, summarize), "{context}");
        seen.0 += late.len();
        seen.1 += run.results.iter().filter(|r| r.value.is_update).count();
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_lateness_partitions_records_into_results_and_side_output() {
    let windows = TimeWindows::tumbling(Duration::from_millis(500));
    for seed in SEEDS {
        let (late, updates) = check_exact_with_lateness(windows, seed, 1).await;
        assert!(
            late > 0 && updates > 0,
            "seed {seed}: {late} late, {updates} updates"
        );
        check_exact_with_lateness(windows, seed, 4).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_lateness_partitions_records_into_results_and_side_output() {
    let windows = TimeWindows::session(Duration::from_millis(200));
    for seed in SEEDS {
        let (late, updates) = check_exact_with_lateness(windows, seed, 1).await;
        assert!(
            late > 0 && updates > 0,
            "seed {seed}: {late} late, {updates} updates"
        );
        check_exact_with_lateness(windows, seed, 4).await;
    }
}

/// Sliding windows: a record within the lateness of its last window but not of its first ones
/// is counted in the windows that have not expired only. So each record not late is counted in
/// a non-empty suffix of its windows, and a late one in none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_lateness_counts_each_record_in_its_unexpired_windows() {
    let windows = TimeWindows::sliding(Duration::from_millis(600), Duration::from_millis(200));
    let (mut late_seen, mut updates_seen) = (0, 0);
    for seed in SEEDS {
        for parallelism in [1, 4] {
            let partitions = generate(seed, LATE);
            let runs = run_with_lateness(windows, &partitions, seed, parallelism).await;
            for (run, function) in runs.iter().zip(["aggregate", "apply"]) {
                let context = format!("{function} seed {seed} parallelism {parallelism}");
                let finals = final_results(windows, run, &context);
                let late = check_partition(&partitions, &finals, run, &context);
                let by_id: BTreeMap<u64, &Record<Event>> = all_records(&partitions)
                    .into_iter()
                    .map(|r| (r.value.id, r))
                    .collect();
                let mut counted_in: BTreeMap<u64, Vec<TimeWindow>> = BTreeMap::new();
                for ((key, window), (count, sum, ids)) in &finals {
                    let events: Vec<&Event> = ids.iter().map(|id| &by_id[id].value).collect();
                    assert_eq!((*count, *sum, ids.clone()), summarize(&events), "{context}");
                    for id in ids {
                        assert_eq!(by_id[id].value.key, *key, "{context}");
                        counted_in.entry(*id).or_default().push(*window);
                    }
                }
                for (id, record) in &by_id {
                    let mut own = Vec::new();
                    windows.for_each_window(record.timestamp, |w| own.push(w));
                    own.sort();
                    let mut counted = counted_in.remove(id).unwrap_or_default();
                    counted.sort();
                    if late.contains(id) {
                        assert!(counted.is_empty(), "{context}");
                    } else {
                        assert!(!counted.is_empty(), "{context}: {record:?}");
                        assert!(
                            own.ends_with(&counted),
                            "{context}: {record:?} in {counted:?}"
                        );
                    }
                }
                late_seen += late.len();
                updates_seen += run.results.iter().filter(|r| r.value.is_update).count();
            }
        }
    }
    assert!(
        late_seen > 0 && updates_seen > 0,
        "{late_seen} late, {updates_seen} updates"
    );
}
