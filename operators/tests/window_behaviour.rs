//! Window behaviour on small, hand-made inputs: the lateness update path, the late side
//! output, session merging, count windows at the end of input, and settings refused at start.
//!
//! Sources use a batch size of 1, so the watermark advances between records exactly as the
//! comments say (out-of-orderness 0: the watermark is the largest timestamp so far minus 1).

use std::time::Duration;

use omstream_core::runtime::RuntimeError;
use omstream_operators::prelude::*;

fn env() -> StreamEnv {
    StreamEnv::new(JobConfig::named("windows").with_batch_size(1))
}

fn records(times: &[i64]) -> Vec<Record<i64>> {
    times.iter().map(|&t| Record::new(t, t)).collect()
}

fn source(env: &StreamEnv, times: &[i64]) -> KeyedStream<u8, i64> {
    env.from_records("events", records(times), WatermarkStrategy::default())
        .key_by(|_| 0u8)
}

/// (window start, window end, value, is_update) in emission order.
fn rows<V: Clone>(results: &[Windowed<u8, V>]) -> Vec<(i64, i64, V, bool)> {
    results
        .iter()
        .map(|w| (w.window.start, w.window.end, w.value.clone(), w.is_update))
        .collect()
}

#[tokio::test]
async fn within_lateness_a_fired_window_is_updated_and_beyond_it_records_go_aside() {
    let env = env();
    let results = source(&env, &[100, 1_500, 200, 2_600, 300, 900])
        .window(TimeWindows::tumbling(Duration::from_secs(1)))
        .allowed_lateness(Duration::from_secs(1))
        .apply(|_, _, times: &[i64]| times.to_vec());
    let late = results.late_records().collect();
    let collected = results.collect();
    env.execute().await.unwrap();
    assert_eq!(
        rows(&collected.values()),
        vec![
            // Watermark 1499: [0, 1000) fires.
            (0, 1_000, vec![100], false),
            // 200 is within the lateness (until watermark 1999): an update with both.
            (0, 1_000, vec![100, 200], true),
            // Watermark 2599: [1000, 2000) fires, and [0, 1000) expires.
            (1_000, 2_000, vec![1_500], false),
            (2_000, 3_000, vec![2_600], false),
        ]
    );
    // 300 and 900 came after [0, 1000) expired: its state is gone, they go aside.
    assert_eq!(late.values(), vec![300, 900]);
    assert!(late.records().iter().all(|r| r.timestamp == r.value));
}

#[tokio::test]
async fn a_late_record_alone_in_its_window_is_a_first_result() {
    let env = env();
    let results = source(&env, &[1_500, 2_100, 300])
        .window(TimeWindows::tumbling(Duration::from_secs(1)))
        .allowed_lateness(Duration::from_secs(5))
        .count()
        .collect();
    env.execute().await.unwrap();
    assert_eq!(
        rows(&results.values()),
        vec![
            (1_000, 2_000, 1, false),
            // [0, 1000) is past the watermark but within the lateness; nothing fired for it.
            (0, 1_000, 1, false),
            (2_000, 3_000, 1, false),
        ]
    );
}

#[tokio::test]
async fn a_late_record_updates_every_fired_sliding_window_it_is_in() {
    let env = env();
    let results = source(&env, &[100, 2_200, 900])
        .window(TimeWindows::sliding(
            Duration::from_secs(2),
            Duration::from_secs(1),
        ))
        .allowed_lateness(Duration::from_millis(500))
        .sum(|t: &i64| *t)
        .collect();
    env.execute().await.unwrap();
    assert_eq!(
        rows(&results.values()),
        vec![
            // Watermark 2199: [-1000, 1000) and [0, 2000) fire.
            (-1_000, 1_000, 100, false),
            (0, 2_000, 100, false),
            // 900 is in both; [-1000, 1000) expired at watermark 1499, [0, 2000) has not.
            (0, 2_000, 1_000, true),
            (1_000, 3_000, 2_200, false),
            (2_000, 4_000, 2_200, false),
        ]
    );
}

#[tokio::test]
async fn a_record_bridging_fired_sessions_merges_them_into_one_update() {
    let env = env();
    let results = source(&env, &[0, 1_000, 3_000, 600])
        .window(TimeWindows::session(Duration::from_millis(500)))
        .allowed_lateness(Duration::from_secs(10))
        .apply(|_, _, times: &[i64]| {
            let mut times = times.to_vec();
            times.sort();
            times
        });
    let late = results.late_records().collect();
    let collected = results.collect();
    env.execute().await.unwrap();
    assert_eq!(
        rows(&collected.values()),
        vec![
            // Watermark 999 closes [0, 500); 2999 closes [1000, 1500).
            (0, 500, vec![0], false),
            (1_000, 1_500, vec![1_000], false),
            // 600 overlaps [1000, 1500) only ([0, 500) ends before it): an update.
            (600, 1_500, vec![600, 1_000], true),
            (3_000, 3_500, vec![3_000], false),
        ]
    );
    assert!(late.is_empty());
}

#[tokio::test]
async fn sessions_exactly_a_gap_apart_stay_apart() {
    let env = env();
    let results = source(&env, &[0, 500, 1_000, 1_499])
        .window(TimeWindows::session(Duration::from_millis(500)))
        .count()
        .collect();
    env.execute().await.unwrap();
    assert_eq!(
        rows(&results.values()),
        vec![
            (0, 500, 1, false),
            (500, 1_000, 1, false),
            (1_000, 1_999, 2, false)
        ]
    );
}

#[tokio::test]
async fn session_records_behind_the_watermark_by_more_than_the_lateness_are_late() {
    let env = env();
    let results = source(&env, &[0, 400, 5_000, 4_000, 350])
        .window(TimeWindows::session(Duration::from_millis(500)))
        .allowed_lateness(Duration::from_secs(1))
        .count();
    let late = results.late_records().collect();
    let collected = results.collect();
    env.execute().await.unwrap();
    assert_eq!(
        rows(&collected.values()),
        vec![
            (0, 900, 2, false),
            // 4000 is within a second of the watermark (4999), and behind it: fired at once.
            (4_000, 4_500, 1, false),
            (5_000, 5_500, 1, false),
        ]
    );
    assert_eq!(late.values(), vec![350]);
}

#[tokio::test]
async fn late_records_nobody_asked_for_are_not_emitted() {
    let env = env();
    let results = source(&env, &[100, 5_000, 200, 300])
        .window(TimeWindows::tumbling(Duration::from_secs(1)))
        .count()
        .collect();
    let report = env.execute().await.unwrap();
    assert_eq!(
        rows(&results.values()),
        vec![(0, 1_000, 1, false), (5_000, 6_000, 1, false)]
    );
    // The window operator emitted the two results and nothing for the two late records.
    let window = report.operator("window").expect("the window operator");
    assert_eq!((window.records_in, window.records_out), (4, 2));
}

#[tokio::test]
async fn count_windows_span_their_records_and_drop_an_unfinished_window() {
    let env = env();
    let keyed = source(&env, &[50, 10, 30, 70, 60, 20, 80]);
    let tumbling = keyed
        .count_window(3)
        .apply(|_, _, t: &[i64]| t.to_vec())
        .collect();
    let sliding = keyed.count_window_sliding(3, 2).count().collect();
    env.execute().await.unwrap();
    assert_eq!(
        rows(&tumbling.values()),
        vec![
            (10, 51, vec![50, 10, 30], false),
            (20, 71, vec![70, 60, 20], false),
            // 80 alone does not make a window.
        ]
    );
    let sliding: Vec<(i64, i64, u64)> = sliding
        .records()
        .into_iter()
        .map(|r| {
            assert_eq!(r.timestamp, r.value.window.max_timestamp());
            (r.value.window.start, r.value.window.end, r.value.value)
        })
        .collect();
    // Every 2 records, the last 3 (2 for the first window).
    assert_eq!(sliding, vec![(10, 51, 2), (10, 71, 3), (20, 71, 3)]);
}

#[tokio::test]
async fn windows_with_an_offset_start_at_it() {
    let env = env();
    let results = source(&env, &[0, 299, 300, 1_299])
        .window(
            TimeWindows::tumbling(Duration::from_secs(1)).with_offset(Duration::from_millis(300)),
        )
        .count()
        .collect();
    env.execute().await.unwrap();
    assert_eq!(
        rows(&results.values()),
        vec![(-700, 300, 2, false), (300, 1_300, 2, false)]
    );
}

async fn failure(build: impl FnOnce(KeyedStream<u8, i64>)) -> String {
    let env = env();
    build(source(&env, &[1]));
    let err = env.execute().await.unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Task { .. }),
        "a settings error fails the window task: {err:?}"
    );
    err.to_string()
}

#[tokio::test]
async fn contradictory_settings_fail_the_job_with_the_fix() {
    let err = failure(|k| {
        k.count_window_sliding(2, 5).count().collect();
    })
    .await;
    assert!(err.contains("count_window(5)"), "{err}");
    let err = failure(|k| {
        k.window(TimeWindows::tumbling(Duration::from_secs(1)))
            .processing_time()
            .allowed_lateness(Duration::from_secs(1))
            .count()
            .collect();
    })
    .await;
    assert!(err.contains("remove allowed_lateness()"), "{err}");
    let err = failure(|k| {
        k.window(TimeWindows::sliding(
            Duration::from_secs(1),
            Duration::from_secs(2),
        ))
        .count()
        .collect();
    })
    .await;
    assert!(err.contains("smaller slide"), "{err}");
}
