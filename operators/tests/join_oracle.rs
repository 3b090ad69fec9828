//! Oracle tests of the joins: random, out-of-order input spread over several partitions per
//! side goes through each join at parallelism 1 and 4, and the output must equal (as a
//! sorted multiset) a naive nested-loop recomputation over the same records.
//!
//! The disorder of every partition stays within the watermark strategy's out-of-orderness, so
//! no record is ever late: the joins must drop nothing and count nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use omstream_operators::core::runtime::CollectedRecords;
use omstream_operators::prelude::*;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How far back in event time a record may arrive after a later one of its partition.
const DISORDER: i64 = 40;
const PARTITIONS: usize = 4;
const SEEDS: u64 = 6;

/// `(key, id)`: ids are unique per side, so outputs name exactly which records met.
type Event = (u32, u32);
/// `(key, left id, right id)`.
type Pair = (u32, u32, u32);
type Output<T> = Vec<(EventTime, T)>;

fn strategy() -> WatermarkStrategy {
    WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(DISORDER as u64))
        .with_idle_timeout(None)
}

/// `count` events with keys below `keys` at times in `times`.
fn events(
    rng: &mut StdRng,
    count: u32,
    keys: u32,
    times: std::ops::Range<i64>,
) -> Vec<Record<Event>> {
    (0..count)
        .map(|id| {
            let time = rng.random_range(times.clone());
            Record::new(time, (rng.random_range(0..keys), id))
        })
        .collect()
}

/// Spreads `records` over the partitions at random; each partition is ordered by time plus a
/// random delay of up to [`DISORDER`], so a record never arrives more than that behind a
/// later one of its partition.
fn partitions<T: Clone>(rng: &mut StdRng, records: &[Record<T>]) -> Vec<Vec<Record<T>>> {
    let mut delayed: Vec<Vec<(EventTime, Record<T>)>> = vec![Vec::new(); PARTITIONS];
    for record in records {
        let delay = rng.random_range(0..=DISORDER);
        delayed[rng.random_range(0..PARTITIONS)].push((record.timestamp + delay, record.clone()));
    }
    delayed
        .into_iter()
        .map(|mut partition| {
            partition.sort_by_key(|(arrival, _)| *arrival);
            partition.into_iter().map(|(_, record)| record).collect()
        })
        .collect()
}

/// Runs the job `build` makes at `parallelism` and returns its sorted output.
async fn run<O: Data + Ord>(
    parallelism: usize,
    build: impl FnOnce(&StreamEnv) -> CollectedRecords<O>,
) -> Output<O> {
    let config = JobConfig::named("join-oracle")
        .with_parallelism(parallelism)
        .with_batch_size(5);
    let env = StreamEnv::new(config);
    let collected = build(&env);
    env.execute().await.expect("the job runs");
    sorted(
        collected
            .records()
            .into_iter()
            .map(|r| (r.timestamp, r.value)),
    )
}

fn sorted<T: Ord>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut items: Vec<T> = items.into_iter().collect();
    items.sort();
    items
}

fn assert_nothing_late(stats: &JoinStats, case: &str) {
    assert_eq!((stats.late_left(), stats.late_right()), (0, 0), "{case}");
}

fn window_oracle(
    windows: TimeWindows,
    left: &[Record<Event>],
    right: &[Record<Event>],
) -> Output<Pair> {
    let mut out = Vec::new();
    for l in left {
        for r in right.iter().filter(|r| r.value.0 == l.value.0) {
            windows.for_each_window(l.timestamp, |w| {
                if w.contains(r.timestamp) {
                    out.push((w.max_timestamp(), (l.value.0, l.value.1, r.value.1)));
                }
            });
        }
    }
    sorted(out)
}

#[tokio::test]
async fn window_join_equals_a_nested_loop() {
    for seed in 0..SEEDS {
        let mut rng = StdRng::seed_from_u64(seed);
        let windows = match seed % 3 {
            0 => TimeWindows::tumbling(Duration::from_millis(100)),
            1 => TimeWindows::sliding(Duration::from_millis(200), Duration::from_millis(50)),
            _ => TimeWindows::tumbling(Duration::from_millis(70))
                .with_offset(Duration::from_millis(13)),
        };
        let left = events(&mut rng, 150, 5, -500..2_500);
        let right = events(&mut rng, 150, 5, -500..2_500);
        let expected = window_oracle(windows, &left, &right);
        assert!(
            expected.len() > 50,
            "a test that joins little proves little"
        );
        for parallelism in [1, 4] {
            let stats = JoinStats::new();
            let (lp, rp) = (partitions(&mut rng, &left), partitions(&mut rng, &right));
            let got = run(parallelism, |env| {
                let l = env.from_partitions("left", lp, strategy());
                let r = env.from_partitions("right", rp, strategy());
                l.key_by(|e: &Event| e.0)
                    .with_join_stats(&stats)
                    .window_join(&r.key_by(|e: &Event| e.0), windows, |k, l, r| {
                        (*k, l.1, r.1)
                    })
                    .collect()
            })
            .await;
            let case = format!("seed {seed}, {windows:?}, parallelism {parallelism}");
            assert_eq!(got, expected, "{case}");
            assert_nothing_late(&stats, &case);
        }
    }
}

fn interval_oracle(
    bounds: IntervalBounds,
    left: &[Record<Event>],
    right: &[Record<Event>],
) -> Output<Pair> {
    let mut out = Vec::new();
    for l in left {
        for r in right.iter().filter(|r| r.value.0 == l.value.0) {
            if bounds.contains(l.timestamp, r.timestamp) {
                let at = l.timestamp.max(r.timestamp);
                out.push((at, (l.value.0, l.value.1, r.value.1)));
            }
        }
    }
    sorted(out)
}

async fn check_interval_join(seed: u64, bounds: IntervalBounds, parallelism: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let left = events(&mut rng, 120, 4, -300..1_500);
    let right = events(&mut rng, 120, 4, -300..1_500);
    let expected = interval_oracle(bounds, &left, &right);
    let stats = JoinStats::new();
    let (lp, rp) = (partitions(&mut rng, &left), partitions(&mut rng, &right));
    let got = run(parallelism, |env| {
        let l = env.from_partitions("left", lp, strategy());
        let r = env.from_partitions("right", rp, strategy());
        l.key_by(|e: &Event| e.0)
            .with_join_stats(&stats)
            .interval_join(&r.key_by(|e: &Event| e.0), bounds, |k, l, r| (*k, l.1, r.1))
            .collect()
    })
    .await;
    let case = format!("seed {seed}, {bounds:?}, parallelism {parallelism}");
    assert_eq!(got, expected, "{case}");
    assert_nothing_late(&stats, &case);
}

#[tokio::test]
async fn interval_join_equals_a_nested_loop() {
    let bounds = [
        IntervalBounds::millis(-30, 50),
        IntervalBounds::millis(10, 80),
        IntervalBounds::millis(-90, -20),
        IntervalBounds::millis(0, 0),
        IntervalBounds::around(Duration::from_millis(200), Duration::from_millis(100)),
    ];
    for seed in 0..SEEDS {
        for parallelism in [1, 4] {
            check_interval_join(seed, bounds[seed as usize % bounds.len()], parallelism).await;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Any bounds, including ones far wider than the disorder or the data's time span.
    #[test]
    fn interval_join_equals_a_nested_loop_for_any_bounds(
        seed in 0u64..1_000,
        lower in -400i64..400,
        width in 0i64..400,
        parallelism in prop_oneof![Just(1usize), Just(3)],
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let bounds = IntervalBounds::millis(lower, lower + width);
        runtime.block_on(check_interval_join(seed, bounds, parallelism));
    }
}

/// Table updates `(key, value)`: per key at distinct times, so the version as of any time is
/// well defined; `deletes` of them (about a quarter) are deletions.
fn table_updates(
    rng: &mut StdRng,
    per_key: usize,
    keys: u32,
    deletes: bool,
) -> Vec<Record<(u32, Option<u32>)>> {
    let mut updates = Vec::new();
    for key in 0..keys {
        let mut times = BTreeSet::new();
        while times.len() < per_key {
            times.insert(rng.random_range(-500..2_500));
        }
        for time in times {
            let value = if deletes && rng.random_bool(0.25) {
                None
            } else {
                Some(rng.random_range(0..1_000))
            };
            updates.push(Record::new(time, (key, value)));
        }
    }
    updates
}

/// For each left record, the value of the key's update with the greatest time at or before
/// the record's.
fn table_oracle(
    left: &[Record<Event>],
    updates: &[Record<(u32, Option<u32>)>],
) -> Output<(u32, u32, Option<u32>)> {
    sorted(left.iter().map(|l| {
        let (key, id) = l.value;
        let as_of = updates
            .iter()
            .filter(|u| u.value.0 == key && u.timestamp <= l.timestamp)
            .max_by_key(|u| u.timestamp);
        (l.timestamp, (key, id, as_of.and_then(|u| u.value.1)))
    }))
}

#[tokio::test]
async fn table_join_equals_the_latest_version_at_or_before_each_record() {
    for seed in 0..SEEDS {
        let mut rng = StdRng::seed_from_u64(seed);
        let left = events(&mut rng, 200, 6, -700..2_700);
        let updates = table_updates(&mut rng, 12, 6, false);
        let expected = table_oracle(&left, &updates);
        let table: Vec<Record<(u32, u32)>> = updates
            .iter()
            .map(|u| Record::new(u.timestamp, (u.value.0, u.value.1.expect("no deletes"))))
            .collect();
        for parallelism in [1, 4] {
            let stats = JoinStats::new();
            let (lp, tp) = (partitions(&mut rng, &left), partitions(&mut rng, &table));
            let got = run(parallelism, |env| {
                let l = env.from_partitions("left", lp, strategy());
                let t = env.from_partitions("table", tp, strategy());
                l.key_by(|e: &Event| e.0)
                    .with_join_stats(&stats)
                    .join_table(&t.key_by(|u: &(u32, u32)| u.0), |k, l, value| {
                        Some((*k, l.1, value.map(|v| v.1)))
                    })
                    .collect()
            })
            .await;
            let case = format!("seed {seed}, parallelism {parallelism}");
            assert_eq!(got, expected, "{case}");
            assert_nothing_late(&stats, &case);
        }
    }
}

#[tokio::test]
async fn table_join_with_deletions_equals_the_latest_version_at_or_before_each_record() {
    for seed in 0..SEEDS {
        let mut rng = StdRng::seed_from_u64(100 + seed);
        let left = events(&mut rng, 200, 6, -700..2_700);
        let updates = table_updates(&mut rng, 12, 6, true);
        let expected = table_oracle(&left, &updates);
        assert!(expected.iter().any(|(_, (_, _, v))| v.is_none()));
        for parallelism in [1, 4] {
            let stats = JoinStats::new();
            let (lp, up) = (partitions(&mut rng, &left), partitions(&mut rng, &updates));
            let got = run(parallelism, |env| {
                let l = env.from_partitions("left", lp, strategy());
                let u = env.from_partitions("updates", up, strategy());
                l.key_by(|e: &Event| e.0)
                    .with_join_stats(&stats)
                    .join_table_updates(&u, |k, l, value| Some((*k, l.1, value.copied())))
                    .collect()
            })
            .await;
            let case = format!("seed {seed}, parallelism {parallelism}");
            assert_eq!(got, expected, "{case}");
            assert_nothing_late(&stats, &case);
        }
    }
}
