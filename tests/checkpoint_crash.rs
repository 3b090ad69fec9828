//! Exactly-once recovery under SIGKILL: a checkpointed keyed-window job reads a queue of known
//! events and writes per-key window totals through the exactly-once sink. A driver kills it at
//! random moments (at least 25 times, many of them while a checkpoint is in flight), restarts
//! it each time — at the same parallelism, or at a random other one — and finally lets it run
//! to the end. The committed output must equal the output of an uninterrupted run: nothing lost,
//! nothing duplicated.
//!
//! The same with the idempotent sink: the output may hold copies, but every copy carries the
//! `omstream.id` of its first one and is byte-identical to it, and the output deduplicated by
//! id equals the output of an uninterrupted run.
//!
//! The job runs in child processes: this test binary run again with `OMSTREAM_TEST_CHILD` set,
//! executing the ignored `child_job` test.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use omstream::core::checkpoint::{CheckpointConfig, CheckpointStore};
use omstream::core::connectors::exactly_once::DeliveryGuarantee;
use omstream::core::connectors::{EventTimeFrom, OmsSinkConfig, OmsSourceConfig, IDEMPOTENT_ID};
use omstream::core::runtime::WatermarkStrategy;
use omstream::oms::embedded::EMBEDDED_DIR;
use omstream::oms::{connect, KeyValue, Message, QueueConfig, ServiceLifecycle};
use omstream::operators::prelude::*;
use rand::Rng;
use serde::{Deserialize, Serialize};

mod support;

use support::child::{follow, run_as_child, spawn_child, wait_done};

const EVENTS: usize = 200_000;
const KEYS: usize = 50;
const INPUT: &str = "events";
const JOB: &str = "window-totals";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Event {
    key: String,
    amount: u64,
    at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Total {
    key: String,
    window_start: i64,
    amount: u64,
    count: u64,
}

/// Child: runs the job once. `OMSTREAM_TEST_CHILD` =
/// `<store>|<state dir>|<output queue>|<max rate, 0: none>|<parallelism>|<sink guarantee>`.
#[test]
#[ignore = "run only as a child process of the tests below"]
fn child_job() {
    run_as_child(
        "omstream_core::checkpoint=debug",
        |[store, state, output, rate, parallelism, guarantee]| async move {
            run_job(
                Path::new(&store),
                Path::new(&state),
                &output,
                rate.parse().unwrap(),
                parallelism.parse().unwrap(),
                guarantee.parse().unwrap(),
            )
            .await
        },
    );
}

async fn run_job(
    store: &Path,
    state: &Path,
    output: &str,
    rate: f64,
    parallelism: usize,
    guarantee: DeliveryGuarantee,
) {
    let ap = connect(
        "oms:embedded://localhost/crash",
        KeyValue::new().with(EMBEDDED_DIR, store.display()),
    )
    .await
    .unwrap();
    let checkpoints = CheckpointConfig::new(state).with_interval(Some(Duration::from_millis(50)));
    let env = StreamEnv::new(
        JobConfig::named(JOB)
            .with_parallelism(parallelism)
            .with_batch_size(100)
            .with_checkpoints(checkpoints),
    );
    let mut source = OmsSourceConfig::<Event>::new(ap.clone(), INPUT).batch_size(100);
    if rate > 0.0 {
        // Paced, so that a run lasts long enough to be killed many times.
        source = source.max_rate(rate);
    }
    let events = env
        .add_oms_source(
            source
                .event_time(EventTimeFrom::extract(|e: &Event| e.at))
                .watermarks(
                    WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO)
                        .with_idle_timeout(None),
                )
                .bounded(true),
        )
        .unwrap();
    let totals = events
        .key_by(|e: &Event| e.key.clone())
        .window(TimeWindows::tumbling(Duration::from_secs(10)))
        .aggregate(SumAndCount)
        .map(|w: Windowed<String, (u64, u64)>| Total {
            key: w.key,
            window_start: w.window.start,
            amount: w.value.0,
            count: w.value.1,
        });
    totals
        .add_oms_sink(
            OmsSinkConfig::new(ap.clone(), output)
                .key(|t: &Total| t.key.clone())
                .with_delivery_guarantee(guarantee),
        )
        .unwrap();
    env.execute().await.unwrap();
}

/// Sum and count of the amounts in a window.
#[derive(Debug, Clone, Copy)]
struct SumAndCount;

impl AggregateFunction<Event> for SumAndCount {
    type Acc = (u64, u64);
    type Out = (u64, u64);

    fn create(&self) -> Self::Acc {
        (0, 0)
    }

    fn add(&self, acc: &mut Self::Acc, event: &Event) {
        acc.0 += event.amount;
        acc.1 += 1;
    }

    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) {
        acc.0 += other.0;
        acc.1 += other.1;
    }

    fn result(&self, acc: &Self::Acc) -> Self::Out {
        *acc
    }
}

/// Starts a run of the job in a child process.
fn spawn_job(
    store: &Path,
    state: &Path,
    output: &str,
    rate: u32,
    parallelism: usize,
    guarantee: DeliveryGuarantee,
) -> Child {
    spawn_child(&[
        &store.display().to_string(),
        &state.display().to_string(),
        output,
        &rate.to_string(),
        &parallelism.to_string(),
        &guarantee.to_string(),
    ])
}

/// What a child's log says about checkpoints right now.
#[derive(Debug, Default)]
struct CheckpointLog {
    triggered: u64,
    completed: u64,
    /// The child panicked or logged an error: what follows is printed.
    failed: bool,
}

/// Follows a child's log: counts triggered and completed checkpoints.
fn follow_checkpoints(child: &mut Child) -> Arc<Mutex<CheckpointLog>> {
    let log = Arc::new(Mutex::new(CheckpointLog::default()));
    let shared = log.clone();
    follow(child, move |line| {
        let mut log = shared.lock().unwrap();
        if line.contains("checkpoint triggered") {
            log.triggered += 1;
        } else if line.contains("checkpoint complete") {
            log.completed += 1;
        } else if line.contains("panicked") || line.contains("ERROR") {
            // A panic's message is on the lines after it: keep them in the test's output.
            log.failed = true;
            eprintln!("child: {line}");
        } else if log.failed {
            eprintln!("child: {line}");
        }
    });
    log
}

async fn fill_input(store: &Path) {
    let ap = connect(
        "oms:embedded://localhost/crash",
        KeyValue::new().with(EMBEDDED_DIR, store.display()),
    )
    .await
    .unwrap();
    let resources = ap.resource_manager().await.unwrap();
    resources
        .create_queue(INPUT, QueueConfig::with_partitions(4))
        .await
        .unwrap();
    for queue in ["out", "reference"] {
        resources
            .create_queue(queue, QueueConfig::with_partitions(2))
            .await
            .unwrap();
    }
    let producer = ap.create_producer(KeyValue::new()).await.unwrap();
    producer.start().await.unwrap();
    let start = 1_700_000_000_000i64;
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(5000) {
        let batch = chunk
            .iter()
            .map(|&i| {
                let event = Event {
                    key: format!("key-{}", i % KEYS),
                    amount: (i * 7919 % 1000) as u64,
                    // 20 ms apart: 50 events per second of event time.
                    at: start + i as i64 * 20,
                };
                Message::new(INPUT, serde_json::to_vec(&event).unwrap())
                    .with_partition((i % 4) as i32)
            })
            .collect();
        producer.send_batch(batch).await.unwrap();
    }
    producer.stop().await.unwrap();
}

/// The totals in `queue`, sorted. An idempotent sink's output is deduplicated by id first,
/// after checking that every copy is byte-identical to the first one with its id.
async fn totals_in(store: &Path, queue: &str, guarantee: DeliveryGuarantee) -> Vec<Total> {
    let ap = connect(
        "oms:embedded://localhost/crash",
        KeyValue::new().with(EMBEDDED_DIR, store.display()),
    )
    .await
    .unwrap();
    let mut totals: Vec<Total> = if guarantee == DeliveryGuarantee::Idempotent {
        let messages: Vec<Message> = support::read_queue(&ap, queue)
            .await
            .into_values()
            .flatten()
            .collect();
        let mut first: BTreeMap<String, &Message> = BTreeMap::new();
        for message in &messages {
            let id = message
                .properties
                .get_str(IDEMPOTENT_ID)
                .unwrap_or_else(|| panic!("a message without {IDEMPOTENT_ID}: {message:?}"));
            if let Some(seen) = first.insert(id.to_string(), message) {
                assert!(
                    seen.data == message.data
                        && seen.extension_header.message_key
                            == message.extension_header.message_key
                        && seen.properties == message.properties,
                    "two messages with id {id} differ: {seen:?} and {message:?}"
                );
            }
        }
        eprintln!(
            "{queue}: {} messages, {} copies of an earlier id",
            messages.len(),
            messages.len() - first.len()
        );
        first
            .values()
            .map(|m| serde_json::from_slice(&m.data).expect("a JSON body"))
            .collect()
    } else {
        support::read_json(&ap, queue).await
    };
    totals.sort();
    totals
}

/// The pace of the killed runs: all their reading together takes `EVENTS / KILLED_RUN_RATE`
/// = 25 s, well beyond the longest the 25 killed runs live together (13 of them at most
/// 1.2 s, 12 a first checkpoint plus at most 150 ms: under 20 s), so no run reaches the end
/// before its kill however fast the job restores. The final run reads what is left unpaced.
const KILLED_RUN_RATE: u32 = 8_000;

fn kill_and_restart(
    store: &Path,
    parallelism: impl Fn(&mut rand::rngs::ThreadRng) -> usize,
    guarantee: DeliveryGuarantee,
) {
    let state = store.join("job-state");
    let mut rng = rand::rng();
    let (mut kills, mut during_checkpoint) = (0, 0);
    while kills < 25 {
        let mut child = spawn_job(
            store,
            &state,
            "out",
            KILLED_RUN_RATE,
            parallelism(&mut rng),
            guarantee,
        );
        let log = follow_checkpoints(&mut child);
        if kills % 2 == 0 {
            // Anywhere from the start: during recovery, before the first checkpoint, or later.
            std::thread::sleep(Duration::from_millis(rng.random_range(50..1200)));
        } else {
            // Soon after a checkpoint completed, often while the next one is in flight. (A
            // hang guard bounds the wait; the condition is what is waited for.)
            for _ in 0..2000 {
                if log.lock().unwrap().completed > 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if kills % 4 == 1 {
                // Right after a checkpoint is triggered, before it completes: checkpoints of
                // this job take a few milliseconds, which a random sleep rarely hits.
                for _ in 0..3000 {
                    let log = log.lock().unwrap();
                    if log.triggered > log.completed {
                        break;
                    }
                    drop(log);
                    std::thread::sleep(Duration::from_millis(1));
                }
            } else {
                std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
            }
        }
        let in_flight = {
            let log = log.lock().unwrap();
            log.triggered > log.completed
        };
        if child.try_wait().unwrap().is_some() {
            panic!("the job finished after {kills} kills; make it longer");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        if in_flight {
            during_checkpoint += 1;
        }
    }
    eprintln!("{kills} kills, {during_checkpoint} while a checkpoint was in flight");
    assert!(during_checkpoint > 0, "no kill landed during a checkpoint");
    let store_records = CheckpointStore::open(&state, JOB)
        .unwrap()
        .list()
        .unwrap()
        .0;
    assert!(
        !store_records.is_empty(),
        "the killed runs completed checkpoints"
    );
    // The last run goes to the end, unthrottled.
    let started = std::time::Instant::now();
    let child = spawn_job(store, &state, "out", 0, parallelism(&mut rng), guarantee);
    wait_done(child, "the final run");
    eprintln!("final run: {:?}", started.elapsed());
}

async fn crash_test(
    parallelism: impl Fn(&mut rand::rngs::ThreadRng) -> usize + Send + 'static,
    guarantee: DeliveryGuarantee,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().to_path_buf();
    fill_input(&store).await;
    // The reference: one uninterrupted run into another queue.
    let started = std::time::Instant::now();
    let reference_state = store.join("reference-state");
    wait_done(
        spawn_job(&store, &reference_state, "reference", 0, 2, guarantee),
        "the reference run",
    );
    eprintln!("reference run: {:?}", started.elapsed());
    let expected = totals_in(&store, "reference", guarantee).await;
    assert_eq!(
        expected.iter().map(|t| t.count).sum::<u64>(),
        EVENTS as u64,
        "the reference run saw every event"
    );
    let started = std::time::Instant::now();
    let crash_store = store.clone();
    tokio::task::spawn_blocking(move || kill_and_restart(&crash_store, parallelism, guarantee))
        .await
        .unwrap();
    eprintln!("kills and final run: {:?}", started.elapsed());
    let actual = totals_in(&store, "out", guarantee).await;
    let mut counts: BTreeMap<&Total, (u32, u32)> = BTreeMap::new();
    for total in &expected {
        counts.entry(total).or_default().0 += 1;
    }
    for total in &actual {
        counts.entry(total).or_default().1 += 1;
    }
    let missing: Vec<_> = counts.iter().filter(|(_, (e, a))| a < e).take(5).collect();
    let duplicated: Vec<_> = counts.iter().filter(|(_, (e, a))| a > e).take(5).collect();
    assert!(
        missing.is_empty() && duplicated.is_empty(),
        "missing {missing:?}, duplicated {duplicated:?}"
    );
    assert_eq!(actual.len(), expected.len());
    assert_eq!(actual, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    crash_test(|_| 2, DeliveryGuarantee::ExactlyOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_at_other_parallelisms_lose_and_duplicate_nothing() {
    crash_test(
        |rng| rng.random_range(1..=3),
        DeliveryGuarantee::ExactlyOnce,
    )
    .await;
}

/// The idempotent sink, at random parallelisms: copies only under the id of their first one,
/// byte-identical, and nothing lost or duplicated once deduplicated by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotent_sink_sends_copies_only_under_the_same_id_through_sigkills() {
    crash_test(|rng| rng.random_range(1..=3), DeliveryGuarantee::Idempotent).await;
}
