//! Broker faults on a real RocketMQ: a broker killed with SIGKILL in the middle of a job and
//! started again, and a broker that is down when a job starts. Each test runs its own name
//! server and broker (`support::rocketmq::PrivateBroker`), on ports of its own, so that killing
//! it disturbs no other test.
//!
//! The job reads a queue of numbered events and writes each one to an output queue with the
//! at-least-once sink. The check: every event is in the output (nothing lost), and the
//! duplicates are counted and explained by the guarantee in force: a batch whose send reached
//! the broker just as it died, but whose answer did not come back, is sent again.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use omstream::core::connectors::{OmsSinkConfig, OmsSourceConfig};
use omstream::oms::{connect, KeyValue, Message, QueueConfig, ServiceLifecycle};
use omstream::operators::prelude::*;
use serde::{Deserialize, Serialize};
use support::rocketmq::PrivateBroker;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Event {
    id: u64,
}

/// What the tests logged, to check the job said what happened. (One subscriber per test
/// binary: both tests log into it, and each looks for its own broker's address.)
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "omstream_core=info".into()),
            )
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .try_init();
        logs
    })
    .clone()
}

/// Appends to the shared log and echoes to stderr (shown when a test fails).
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::io::stderr().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The log lines that mention `needle`.
fn log_lines_with(needle: &str) -> Vec<String> {
    let logs = logs();
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    text.lines()
        .filter(|line| line.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Queues `<name>-in` (4 partitions, holding events 0..count) and `<name>-out` (4 partitions).
async fn queues(
    broker: &PrivateBroker,
    name: &str,
    count: u64,
) -> (support::AccessPoint, String, String) {
    let ap = connect(&broker.url(), KeyValue::new()).await.unwrap();
    let (input, output) = (format!("{name}-in"), format!("{name}-out"));
    let rm = ap.resource_manager().await.unwrap();
    for queue in [&input, &output] {
        rm.create_queue(queue, QueueConfig::with_partitions(4))
            .await
            .unwrap();
    }
    let producer = ap.create_producer(KeyValue::new()).await.unwrap();
    producer.start().await.unwrap();
    let events: Vec<Message> = (0..count)
        .map(|id| {
            Message::new(&input, serde_json::to_vec(&Event { id }).unwrap())
                .with_key(id.to_string())
        })
        .collect();
    for chunk in events.chunks(500) {
        producer.send_batch(chunk.to_vec()).await.unwrap();
    }
    producer.stop().await.unwrap();
    (ap, input, output)
}

/// The job: read `input` (bounded, at `rate` events/s), write each event to `output`.
fn job(ap: &support::AccessPoint, input: &str, output: &str, rate: f64) -> StreamEnv {
    let env = StreamEnv::new(
        JobConfig::named("rocketmq-faults")
            .with_parallelism(2)
            .with_batch_size(50),
    );
    env.add_oms_source(
        OmsSourceConfig::<Event>::new(ap.clone(), input)
            .bounded(true)
            .max_rate(rate),
    )
    .unwrap()
    .add_oms_sink(OmsSinkConfig::new(ap.clone(), output).key(|e: &Event| e.id.to_string()))
    .unwrap();
    env
}

/// How often each event id is in `queue`.
async fn occurrences(ap: &support::AccessPoint, queue: &str) -> BTreeMap<u64, u32> {
    let mut seen = BTreeMap::new();
    for event in support::read_json::<Event>(ap, queue).await {
        *seen.entry(event.id).or_insert(0) += 1;
    }
    seen
}

/// Asserts that every one of `count` events is in `output`; returns how many were written
/// twice or more (each extra copy counted).
async fn check_nothing_lost(ap: &support::AccessPoint, output: &str, count: u64) -> u32 {
    let seen = occurrences(ap, output).await;
    let missing: Vec<u64> = (0..count).filter(|id| !seen.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {count} events lost, the first: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(seen.keys().all(|&id| id < count), "events nobody sent");
    seen.values().map(|&n| n - 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_pauses_while_the_broker_is_down_and_resumes_with_nothing_lost() {
    let _logs = logs();
    const EVENTS: u64 = 4000;
    let broker = PrivateBroker::start(19876, 20911);
    let (ap, input, output) = queues(&broker, "crash", EVENTS).await;
    // 500 events/s: about 8 s of reading, with the broker down from 2.5 s to 6.5 s.
    let handle = job(&ap, &input, &output, 500.0).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    broker.kill_broker();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let read_while_down = handle
        .operators()
        .iter()
        .find(|o| o.name == input)
        .map(|o| o.records_out)
        .unwrap();
    broker.restart_broker();
    let report = tokio::time::timeout(Duration::from_secs(120), handle.join())
        .await
        .expect("the job ends within 2 minutes of the broker's return")
        .expect("the job succeeds");
    let read = report.operator(&input).unwrap().records_out;
    assert!(
        read_while_down < EVENTS,
        "the job read everything before the broker died; the test proves nothing"
    );
    let duplicates = check_nothing_lost(&ap, &output, EVENTS).await;
    // At least once: the source re-reads nothing (its position only moves past what it
    // emitted), so duplicates come from the sink alone, which sends a batch again when the
    // broker died before answering. At most one batch (50 events) per sink subtask is in
    // flight when the broker dies.
    eprintln!(
        "read {read} events ({read_while_down} before the restart); {duplicates} duplicates in the output"
    );
    assert_eq!(read, EVENTS, "the source read each event once");
    assert!(duplicates <= 2 * 50, "{duplicates} duplicates");
    let paused = log_lines_with("out of reach");
    assert!(
        !paused.is_empty(),
        "no log line said the job paused for the broker"
    );
    assert!(
        paused
            .iter()
            .any(|line| line.contains(&broker.name_server()) || line.contains("127.0.0.1:20911")),
        "the log lines do not name the broker's address: {paused:#?}"
    );
    assert!(
        !log_lines_with("answers again").is_empty(),
        "no log line said the job resumed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_started_while_the_broker_is_down_waits_for_it() {
    let _logs = logs();
    const EVENTS: u64 = 500;
    let broker = PrivateBroker::start(19886, 20921);
    let (ap, input, output) = queues(&broker, "down", EVENTS).await;
    broker.kill_broker();
    let handle = job(&ap, &input, &output, 10_000.0).spawn().unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let read_while_down: u64 = handle
        .operators()
        .iter()
        .filter(|o| o.name == input)
        .map(|o| o.records_out)
        .sum();
    assert_eq!(read_while_down, 0, "events read while the broker was down");
    broker.restart_broker();
    tokio::time::timeout(Duration::from_secs(120), handle.join())
        .await
        .expect("the job ends within 2 minutes of the broker's start")
        .expect("the job succeeds");
    let duplicates = check_nothing_lost(&ap, &output, EVENTS).await;
    assert_eq!(duplicates, 0, "nothing was written before the broker came");
    let waited = log_lines_with(&broker.name_server());
    assert!(
        waited.iter().any(|line| line.contains("out of reach")),
        "no log line said the job waits for the broker at {}: {waited:#?}",
        broker.name_server()
    );
}
