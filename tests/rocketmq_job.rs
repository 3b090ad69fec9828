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

fn build(
    env: &StreamEnv,
    ap: &support::AccessPoint,
    input: &str,
    sink: OmsSinkConfig<UserCount>,
    rate: f64,
) {
    let mut source = OmsSourceConfig::<Click>::new(ap.clone(), input)
        .event_time(EventTimeFrom::extract(|c: &Click| c.at))
        .bounded(true);
    if rate > 0.0 {
        source = source.max_rate(rate);
    }
    let clicks = env.add_oms_source(source).unwrap();
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

/// The window counts in `queue`, sorted, once as many as expected are there (or after 20 s).
/// RocketMQ ends a transaction with a one-way request, so the last commits of a job may
/// become visible a moment after the job returned.
async fn output(ap: &support::AccessPoint, queue: &str) -> Vec<UserCount> {
    let want = expected().len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut counts: Vec<UserCount> = support::read_json(ap, queue).await;
        if counts.len() >= want || tokio::time::Instant::now() >= deadline {
            counts.sort();
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_window_job_runs_on_rocketmq() {
    let (ap, input, out) = queues("job").await;
    let env = StreamEnv::new(JobConfig::named("rocketmq-job").with_parallelism(2));
    build(&env, &ap, &input, OmsSinkConfig::new(ap.clone(), &out), 0.0);
    let report = env.execute().await.unwrap();
    assert_eq!(report.operator(&input).unwrap().records_out, EVENTS);
    assert_eq!(output(&ap, &out).await, expected());
}

/// One run of job `job` with checkpoints every 200 ms in `state` and the exactly-once sink,
/// reading at most `rate` events/s (0: no limit).
async fn exactly_once_run(
    job: &str,
    ap: &support::AccessPoint,
    input: &str,
    out: &str,
    state: &std::path::Path,
    rate: f64,
) {
    // The test broker checks back open transactions after 2 s, every second.
    let sink = OmsSinkConfig::new(ap.clone(), out)
        .exactly_once()
        .leftover_wait(Duration::from_secs(6));
    checkpointed_run(job, ap, input, sink, state, rate).await;
}

/// One run of job `job` with checkpoints every 200 ms in `state` into `sink`, reading at most
/// `rate` events/s (0: no limit).
async fn checkpointed_run(
    job: &str,
    ap: &support::AccessPoint,
    input: &str,
    sink: OmsSinkConfig<UserCount>,
    state: &std::path::Path,
    rate: f64,
) {
    let env = StreamEnv::new(JobConfig::named(job).with_parallelism(2).with_checkpoints(
        CheckpointConfig::new(state).with_interval(Some(Duration::from_millis(200))),
    ));
    build(&env, ap, input, sink, rate);
    env.execute().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpointed_job_writes_exactly_once_with_transactions_on_rocketmq() {
    let (ap, input, out) = queues("eojob").await;
    let state = tempfile::tempdir().unwrap();
    exactly_once_run("rocketmq-eo-job", &ap, &input, &out, state.path(), 0.0).await;
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
    exactly_once_run("rocketmq-eo-job", &ap, &input, &out, state.path(), 0.0).await;
    assert_eq!(output(&ap, &out).await, expected());
}

/// Child: one run of the checkpointed job, killed by the tests below, with the exactly-once
/// sink or the idempotent one.
/// `OMSTREAM_TEST_CHILD` =
/// `<url>|<input>|<output>|<state dir>|<exactly-once or idempotent>|<max rate, 0: none>`.
#[test]
#[ignore = "run only as a child process of the tests below"]
fn child_job() {
    support::child::run_as_child(
        "omstream_core::connectors=info",
        |[url, input, output, state, guarantee, rate]| async move {
            let ap = connect(&url, KeyValue::new()).await.unwrap();
            let state = std::path::Path::new(&state);
            let rate: f64 = rate.parse().unwrap();
            if guarantee == "idempotent" {
                let sink = OmsSinkConfig::new(ap.clone(), &output).idempotent();
                checkpointed_run(IDEMPOTENT_CRASH_JOB, &ap, &input, sink, state, rate).await;
            } else {
                exactly_once_run(CRASH_JOB, &ap, &input, &output, state, rate).await;
            }
        },
    );
}

const CRASH_JOB: &str = "rocketmq-eo-crash";
const IDEMPOTENT_CRASH_JOB: &str = "rocketmq-idempotent-crash";

/// The pace of the killed runs: all their reading together takes `EVENTS / KILLED_RUN_RATE`
/// = 15 s, more than the longest the killed runs can live together (`KILLS` times the
/// longest `KILL_AFTER_MS`, 12 s), so no run ends before its kill however fast the job
/// restores. (Only the schedule of kills sets how long the test takes: the last run reads
/// what is left unpaced.)
const KILLED_RUN_RATE: f64 = 200.0;
/// How many times the child job is killed.
const KILLS: u64 = 4;
/// How long a killed run lives, in milliseconds (a random duration in this range).
const KILL_AFTER_MS: std::ops::Range<u64> = 1000..3000;

/// Runs the child job `guarantee` `KILLS` times, each SIGKILLed after a random
/// `KILL_AFTER_MS`, then once to the end, unpaced. `on_line` sees every line the children log.
async fn kill_again_and_again(
    input: &str,
    out: &str,
    state: &std::path::Path,
    guarantee: &str,
    job: &str,
    on_line: impl Fn(&str) + Clone + Send + 'static,
) {
    use rand::Rng;
    let url = support::rocketmq::url();
    let state_dir = state.display().to_string();
    let spawn = |rate: f64| {
        let rate = rate.to_string();
        let mut child =
            support::child::spawn_child(&[&url, input, out, &state_dir, guarantee, &rate]);
        let logs = support::child::follow(&mut child, on_line.clone());
        (child, logs)
    };
    assert!(
        (KILLS * KILL_AFTER_MS.end) as f64 / 1000.0 < EVENTS as f64 / KILLED_RUN_RATE,
        "the killed runs could read every event before their kills"
    );
    let mut rng = rand::rng();
    for kill in 0..KILLS {
        let (mut child, _) = spawn(KILLED_RUN_RATE);
        tokio::time::sleep(Duration::from_millis(rng.random_range(KILL_AFTER_MS))).await;
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before kill {kill}; make it longer"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let completed = CheckpointStore::open(state, job).unwrap().list().unwrap().0;
    assert!(
        !completed.is_empty(),
        "the killed runs completed checkpoints"
    );
    let (last, logs) = spawn(0.0);
    support::child::wait_done(last, "the final run");
    logs.join().unwrap();
}

/// Exactly once through crashes on RocketMQ: the checkpointed job with the exactly-once sink
/// runs in a child process that is SIGKILLed at random moments, 4 times, then runs to the
/// end. Transactions the killed runs left open are decided by the broker's check-backs to the
/// later runs' writers (committed when their checkpoint completed, rolled back otherwise):
/// the output is the recomputation, each window once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_again_and_again_writes_exactly_once_on_rocketmq() {
    let (ap, input, out) = queues("eocrash").await;
    let state = tempfile::tempdir().unwrap();
    // Counts the check-backs the children's writers decided, from their logs.
    let decided = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = decided.clone();
    let on_line = move |line: &str| {
        if line.contains("decided a transaction the broker checked back") {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    };
    kill_again_and_again(
        &input,
        &out,
        state.path(),
        "exactly-once",
        CRASH_JOB,
        on_line,
    )
    .await;
    // A kill between a barrier and the commit after its checkpoint leaves transactions open;
    // the later runs' writers decide them when the broker asks (not every kill lands there).
    let decided = decided.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("check-backs decided by the writers: {decided}");
    let got = output(&ap, &out).await;
    let want = expected();
    let duplicates = got.len().saturating_sub(want.len());
    assert_eq!(got, want, "{duplicates} more windows than expected");
}

/// The idempotent sink through crashes on RocketMQ: the same job, killed the same way, with
/// the sink that sends each checkpoint's output after the checkpoint completed, every message
/// under a deterministic `omstream.id`. A run restored after a kill sends again what the killed
/// run may not have finished sending: the copies are byte-identical and under the same id, and
/// the output deduplicated by id is the recomputation, each window once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_again_and_again_writes_each_window_under_one_id_with_the_idempotent_sink_on_rocketmq(
) {
    use omstream::core::connectors::IDEMPOTENT_ID;
    let (ap, input, out) = queues("idemcrash").await;
    let state = tempfile::tempdir().unwrap();
    kill_again_and_again(
        &input,
        &out,
        state.path(),
        "idempotent",
        IDEMPOTENT_CRASH_JOB,
        |_| {},
    )
    .await;
    let mut by_id: BTreeMap<String, Vec<Message>> = BTreeMap::new();
    for message in support::read_queue(&ap, &out).await.into_values().flatten() {
        let id = message
            .properties
            .get_str(IDEMPOTENT_ID)
            .unwrap_or_else(|| panic!("a message without {IDEMPOTENT_ID}: {message:?}"))
            .to_string();
        by_id.entry(id).or_default().push(message);
    }
    let mut copies = 0;
    let mut got = Vec::new();
    for (id, messages) in &by_id {
        let first = &messages[0];
        for copy in &messages[1..] {
            assert_eq!(copy.data, first.data, "{id}: the same body");
            assert_eq!(
                copy.properties, first.properties,
                "{id}: the same properties"
            );
            assert_eq!(
                copy.extension_header.message_key, first.extension_header.message_key,
                "{id}: the same key"
            );
        }
        copies += messages.len() - 1;
        got.push(serde_json::from_slice::<UserCount>(&first.data).unwrap());
    }
    eprintln!("copies sent again under their id: {copies}");
    got.sort();
    assert_eq!(got, expected(), "the output deduplicated by id");
}
