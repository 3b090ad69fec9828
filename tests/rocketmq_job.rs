//! A streaming job on a real RocketMQ (see `support/rocketmq.rs`): queue -> keyed tumbling
//! window -> queue, unchanged from the embedded driver but for the URL, with the at-least-once
//! sink and with checkpoints and the exactly-once sink (transactional half messages). The
//! output is compared with a recomputation of the input.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use omstream::core::checkpoint::{CheckpointConfig, CheckpointStore};
use omstream::core::connectors::{EventTimeFrom, OmsSinkConfig, OmsSourceConfig};
use omstream::oms::{connect, KeyValue, Message, QueueConfig, ServiceLifecycle};
use omstream::operators::prelude::*;
use serde::{Deserialize, Serialize};

const EVENTS: u64 = 3000;
const KEYS: u64 = 12;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Click {
    user: String,
    at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct UserCount {
    user: String,
    window_start: i64,
    count: u64,
}

/// Event `i`: user `i % KEYS`, 5 ms of event time apart (15 s in all, 15 windows of 1 s).
fn click(i: u64) -> Click {
    Click {
        user: format!("user-{}", i % KEYS),
        at: 1_000_000 + i as i64 * 5,
    }
}

fn expected() -> Vec<UserCount> {
    let mut counts: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for i in 0..EVENTS {
        let c = click(i);
        *counts.entry((c.user, c.at - c.at % 1000)).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((user, window_start), count)| UserCount {
            user,
            window_start,
            count,
        })
        .collect()
}

/// Queues `<name>-in` (4 partitions, filled with the clicks) and `<name>-out` (2 partitions).
async fn queues(name: &str) -> (support::AccessPoint, String, String) {
    let ap = connect(&support::rocketmq::url(), KeyValue::new())
        .await
        .unwrap();
    let unique = format!(
        "{name}-{}-{}",
        std::process::id(),
        omstream::oms::now_millis()
    );
    let (input, output) = (format!("{unique}-in"), format!("{unique}-out"));
    let rm = ap.resource_manager().await.unwrap();
    rm.create_queue(&input, QueueConfig::with_partitions(4))
        .await
        .unwrap();
    rm.create_queue(&output, QueueConfig::with_partitions(2))
        .await
        .unwrap();
    let producer = ap.create_producer(KeyValue::new()).await.unwrap();
    producer.start().await.unwrap();
    let clicks: Vec<Message> = (0..EVENTS)
        .map(|i| {
            let c = click(i);
            Message::new(&input, serde_json::to_vec(&c).unwrap()).with_key(c.user)
        })
        .collect();
    for chunk in clicks.chunks(500) {
        producer.send_batch(chunk.to_vec()).await.unwrap();
    }
    producer.stop().await.unwrap();
    (ap, input, output)
}

fn build(env: &StreamEnv, ap: &support::AccessPoint, input: &str, sink: OmsSinkConfig<UserCount>) {
    let clicks = env
        .add_oms_source(
            OmsSourceConfig::<Click>::new(ap.clone(), input)
                .event_time(EventTimeFrom::extract(|c: &Click| c.at))
                .bounded(true),
        )
        .unwrap();
    clicks
        .key_by(|c: &Click| c.user.clone())
        .window(TimeWindows::tumbling(Duration::from_secs(1)))
        .count()
        .map(|w: Windowed<String, u64>| UserCount {
            user: w.key,
            window_start: w.window.start,
            count: w.value,
        })
        .add_oms_sink(sink.key(|c: &UserCount| c.user.clone()))
        .unwrap();
}

async fn output(ap: &support::AccessPoint, queue: &str) -> Vec<UserCount> {
    let mut counts: Vec<UserCount> = support::read_json(ap, queue).await;
    counts.sort();
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_window_job_runs_on_rocketmq() {
    let (ap, input, out) = queues("job").await;
    let env = StreamEnv::new(JobConfig::named("rocketmq-job").with_parallelism(2));
    build(&env, &ap, &input, OmsSinkConfig::new(ap.clone(), &out));
    let report = env.execute().await.unwrap();
    assert_eq!(report.operator(&input).unwrap().records_out, EVENTS);
    assert_eq!(output(&ap, &out).await, expected());
}

/// One run of the job with checkpoints every 200 ms in `state` and the exactly-once sink.
async fn exactly_once_run(
    ap: &support::AccessPoint,
    input: &str,
    out: &str,
    state: &std::path::Path,
) {
    let env = StreamEnv::new(
        JobConfig::named("rocketmq-eo-job")
            .with_parallelism(2)
            .with_checkpoints(
                CheckpointConfig::new(state).with_interval(Some(Duration::from_millis(200))),
            ),
    );
    build(
        &env,
        ap,
        input,
        OmsSinkConfig::new(ap.clone(), out).exactly_once(),
    );
    env.execute().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpointed_job_writes_exactly_once_with_transactions_on_rocketmq() {
    let (ap, input, out) = queues("eojob").await;
    let state = tempfile::tempdir().unwrap();
    exactly_once_run(&ap, &input, &out, state.path()).await;
    assert_eq!(output(&ap, &out).await, expected());
    // The checkpoints recorded RocketMQ queue offsets: every click, over the 4 partitions.
    let latest = CheckpointStore::open(state.path(), "rocketmq-eo-job")
        .unwrap()
        .latest()
        .unwrap()
        .expect("a final checkpoint");
    assert!(latest.is_final);
    assert_eq!(latest.sources.len(), 4);
    assert_eq!(
        latest.sources.iter().map(|s| s.offset).sum::<i64>(),
        EVENTS as i64
    );
    // A second run restores the final checkpoint: nothing new to read, nothing written again.
    exactly_once_run(&ap, &input, &out, state.path()).await;
    assert_eq!(output(&ap, &out).await, expected());
}
