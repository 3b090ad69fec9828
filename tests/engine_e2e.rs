//! The engine end to end on the embedded driver: JSON events on a partitioned queue, out of
//! order, through a keyed event-time window, to another queue; the output read back and
//! compared with a naive recomputation. Late events go to their own queue.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

mod support;
use support::{read_json, store, AccessPoint};

use omstream::core::connectors::{EventTimeFrom, OmsSinkConfig, OmsSourceConfig};
use omstream::oms::{KeyValue, Message, ServiceLifecycle};
use omstream::operators::prelude::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reading {
    sensor: String,
    value: u64,
    at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct WindowTotal {
    sensor: String,
    start: i64,
    total: u64,
    update: bool,
}

/// Readings of 8 sensors on 4 partitions (a sensor always on the same partition, as a keyed
/// producer would put it), each partition's event times shuffled within `disorder` ms.
fn readings(seed: u64, per_partition: usize, disorder: i64) -> Vec<Vec<Reading>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..4)
        .map(|p| {
            let mut part: Vec<Reading> = (0..per_partition)
                .map(|i| Reading {
                    sensor: format!("sensor-{}", p * 2 + rng.random_range(0..2)),
                    value: rng.random_range(0..100),
                    at: 1_000_000 + i as i64 * 10,
                })
                .collect();
            // Bounded disorder: sort by a jittered time.
            let mut keyed: Vec<(i64, Reading)> = part
                .drain(..)
                .map(|r| (r.at + rng.random_range(0..=disorder), r))
                .collect();
            keyed.sort_by_key(|(k, _)| *k);
            keyed.into_iter().map(|(_, r)| r).collect()
        })
        .collect()
}

async fn produce(ap: &AccessPoint, queue: &str, partitions: &[Vec<Reading>]) {
    let producer = ap.create_producer(KeyValue::new()).await.unwrap();
    producer.start().await.unwrap();
    for (p, part) in partitions.iter().enumerate() {
        for chunk in part.chunks(100) {
            let batch = chunk
                .iter()
                .map(|r| {
                    Message::new(queue, serde_json::to_vec(r).unwrap())
                        .with_key(r.sensor.clone())
                        .with_partition(p as i32)
                })
                .collect();
            producer.send_batch(batch).await.unwrap();
        }
    }
}

/// Runs readings -> key by sensor -> 1 s tumbling sum (500 ms out-of-orderness allowed, no
/// lateness) -> `totals`; late readings -> `late`.
async fn run_job(ap: &AccessPoint, parallelism: usize) {
    let env = StreamEnv::new(
        JobConfig::named("e2e")
            .with_parallelism(parallelism)
            .with_batch_size(64),
    );
    let readings = env
        .add_oms_source(
            OmsSourceConfig::<Reading>::new(ap.clone(), "readings")
                .event_time(EventTimeFrom::extract(|r: &Reading| r.at))
                .watermarks(
                    WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(500))
                        .with_idle_timeout(None),
                )
                .bounded(true),
        )
        .unwrap();
    let windows = readings
        .key_by(|r: &Reading| r.sensor.clone())
        .window(TimeWindows::tumbling(Duration::from_secs(1)))
        .sum(|r: &Reading| r.value);
    windows
        .late_records()
        .add_oms_sink(OmsSinkConfig::new(ap.clone(), "late"))
        .unwrap();
    windows
        .map(|w: Windowed<String, u64>| WindowTotal {
            sensor: w.key,
            start: w.window.start,
            total: w.value,
            update: w.is_update,
        })
        .add_oms_sink(
            OmsSinkConfig::new(ap.clone(), "totals").key(|t: &WindowTotal| t.sensor.clone()),
        )
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), env.execute())
        .await
        .expect("the job ends")
        .unwrap();
}

fn naive_totals(readings: &[Reading]) -> BTreeMap<(String, i64), u64> {
    let mut totals = BTreeMap::new();
    for r in readings {
        *totals
            .entry((r.sensor.clone(), r.at - r.at.rem_euclid(1000)))
            .or_insert(0) += r.value;
    }
    totals
}

#[tokio::test]
async fn a_keyed_window_job_between_queues_matches_a_batch_recomputation() {
    for parallelism in [1, 4] {
        let (_dir, ap) = store(&[("readings", 4), ("totals", 4), ("late", 1)]).await;
        let input = readings(parallelism as u64, 2_000, 400);
        produce(&ap, "readings", &input).await;
        run_job(&ap, parallelism).await;

        let totals: Vec<WindowTotal> = read_json(&ap, "totals").await;
        let late: Vec<Reading> = read_json(&ap, "late").await;
        assert!(
            late.is_empty(),
            "disorder within the bound makes nothing late: {late:?}"
        );
        let got: BTreeMap<(String, i64), u64> = totals
            .iter()
            .map(|t| ((t.sensor.clone(), t.start), t.total))
            .collect();
        assert_eq!(got.len(), totals.len(), "one total per sensor and window");
        let all: Vec<Reading> = input.into_iter().flatten().collect();
        assert_eq!(got, naive_totals(&all), "parallelism {parallelism}");
    }
}

#[tokio::test]
async fn readings_behind_the_watermark_go_to_the_late_queue_and_the_rest_is_exact() {
    let (_dir, ap) = store(&[("readings", 4), ("totals", 4), ("late", 1)]).await;
    let mut input = readings(7, 1_000, 100);
    // Far behind the partition's watermark: 5 s before the newest reading of that partition.
    let stragglers: Vec<Reading> = (0..4)
        .map(|p| Reading {
            sensor: format!("sensor-{}", p * 2),
            value: 1_000,
            at: 1_000_000 + 9_990 - 5_000,
        })
        .collect();
    for (p, straggler) in stragglers.iter().enumerate() {
        input[p].push(straggler.clone());
    }
    produce(&ap, "readings", &input).await;
    // One source subtask reads the four partitions round robin, so when a straggler (the last
    // message of its partition) is read, every partition is near its end and the watermark is
    // far past the straggler's window. With several source subtasks, one could run ahead of
    // another, the watermark (their minimum) would lag, and "late" would depend on scheduling.
    run_job(&ap, 1).await;

    let mut late: Vec<Reading> = read_json(&ap, "late").await;
    late.sort_by(|a, b| a.sensor.cmp(&b.sensor));
    assert_eq!(late, stragglers);
    let totals: Vec<WindowTotal> = read_json(&ap, "totals").await;
    let got: BTreeMap<(String, i64), u64> = totals
        .iter()
        .map(|t| ((t.sensor.clone(), t.start), t.total))
        .collect();
    let on_time: Vec<Reading> = input
        .into_iter()
        .flatten()
        .filter(|r| !stragglers.contains(r))
        .collect();
    assert_eq!(got, naive_totals(&on_time));
}

/// A live job on a two-partition queue where only partition 0 gets data: after the idle
/// timeout, partition 1 no longer holds the watermark back, and windows fire while the job runs
/// (without the timeout they would wait for partition 1 forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_partition_does_not_stall_the_windows_of_a_running_job() {
    let (_dir, ap) = store(&[("readings", 2)]).await;
    let env = StreamEnv::new(JobConfig::named("idle"));
    let results = env
        .add_oms_source(
            OmsSourceConfig::<Reading>::new(ap.clone(), "readings")
                .event_time(EventTimeFrom::extract(|r: &Reading| r.at))
                .watermarks(
                    WatermarkStrategy::default()
                        .with_idle_timeout(Some(Duration::from_millis(200))),
                ),
        )
        .unwrap()
        .key_by(|r: &Reading| r.sensor.clone())
        .window(TimeWindows::tumbling(Duration::from_secs(1)))
        .sum(|r: &Reading| r.value)
        .collect();
    let job = env.spawn().unwrap();

    let readings: Vec<Vec<Reading>> = vec![
        (0..30)
            .map(|i| Reading {
                sensor: "s".to_string(),
                value: 1,
                at: 1_000_000 + i * 100,
            })
            .collect(),
        Vec::new(),
    ];
    produce(&ap, "readings", &readings).await;

    // Readings span [1_000_000, 1_002_900]: windows starting at 1_000_000 and 1_001_000 are
    // complete once the watermark passes 1_001_999, which needs partition 1 to be idle.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while results.len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut fired: Vec<(i64, u64)> = results
        .values()
        .into_iter()
        .map(|w| (w.window.start, w.value))
        .collect();
    fired.sort();
    assert_eq!(
        fired,
        vec![(1_000_000, 10), (1_001_000, 10)],
        "the complete windows fired while the job ran"
    );
    job.stop();
    tokio::time::timeout(Duration::from_secs(10), job.join())
        .await
        .expect("a stopped job drains")
        .unwrap();
    // Stopping ends the input with the final watermark: the last window fires too.
    assert_eq!(results.len(), 3);
}
