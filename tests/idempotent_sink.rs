//! The idempotent OMS sink in checkpointed jobs on the embedded driver: messages are sent only
//! once their checkpoint completes, each with a unique, well-formed `omstream.id`; a job
//! crashed after a checkpoint completed and restored (at the same or another parallelism)
//! sends that checkpoint's messages again, byte-identical and under the same ids, and nothing
//! else twice; the guarantee parses and prints, and needs checkpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod support;
use support::{read_queue, store, AccessPoint};

use omstream::core::checkpoint::CheckpointConfig;
use omstream::core::connectors::exactly_once::DeliveryGuarantee;
use omstream::core::connectors::{OmsSinkConfig, OmsSourceConfig, IDEMPOTENT_ID};
use omstream::core::runtime::{JobConfig, JobHandle, SubtaskInfo};
use omstream::oms::{KeyValue, Message, ServiceLifecycle};

const INPUT: &str = "in";
const OUTPUT: &str = "out";
const REFERENCE: &str = "reference";
const SINK: &str = "out-sink";
const JOB: &str = "idem";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Event {
    id: u32,
    user: String,
}

/// Sends events `range` to the input, spread over its 4 partitions.
async fn send(ap: &AccessPoint, range: std::ops::Range<u32>) {
    let producer = ap.create_producer(KeyValue::new()).await.unwrap();
    producer.start().await.unwrap();
    let batch = range
        .map(|id| {
            let event = Event {
                id,
                user: format!("user-{}", id % 5),
            };
            Message::new(INPUT, serde_json::to_vec(&event).unwrap()).with_partition(id as i32 % 4)
        })
        .collect();
    producer.send_batch(batch).await.unwrap();
    producer.stop().await.unwrap();
}

/// The job: the input straight into an idempotent sink keyed by user, with checkpoints on
/// demand only (and the final one) in `state`.
fn job(
    ap: &AccessPoint,
    state: &Path,
    output: &str,
    parallelism: usize,
    bounded: bool,
) -> omstream::core::runtime::StreamEnv {
    let env = omstream::core::runtime::StreamEnv::new(
        JobConfig::named(JOB)
            .with_parallelism(parallelism)
            .with_batch_size(100)
            .with_checkpoints(CheckpointConfig::new(state).with_interval(None)),
    );
    let events = env
        .add_oms_source(
            OmsSourceConfig::<Event>::new(Arc::clone(ap), INPUT)
                .batch_size(100)
                .bounded(bounded),
        )
        .unwrap();
    events
        .add_oms_sink(
            OmsSinkConfig::new(Arc::clone(ap), output)
                .name(SINK)
                .key(|e: &Event| e.user.clone())
                .idempotent(),
        )
        .unwrap();
    env
}

/// Waits until the sink has taken `records` records (a hang guard bounds the wait).
async fn wait_sink_input(handle: &JobHandle, records: u64) {
    for _ in 0..2000 {
        let taken = handle
            .operators()
            .iter()
            .find(|o| o.name == SINK)
            .map_or(0, |o| o.records_in);
        if taken >= records {
            assert_eq!(taken, records);
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the sink never took {records} records");
}

/// Every message of `queue`, partition after partition, in offset order.
async fn messages(ap: &AccessPoint, queue: &str) -> Vec<(i32, Message)> {
    read_queue(ap, queue)
        .await
        .into_iter()
        .flat_map(|(p, ms)| ms.into_iter().map(move |m| (p, m)))
        .collect()
}

/// Waits until `queue` holds `count` messages (a hang guard bounds the wait).
async fn wait_messages(ap: &AccessPoint, queue: &str, count: usize) {
    for _ in 0..2000 {
        let n = messages(ap, queue).await.len();
        if n >= count {
            assert_eq!(n, count);
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{queue} never held {count} messages");
}

/// A message's id, split: (job, sink, subtask, epoch, sequence).
fn id_of(message: &Message) -> (String, String, u32, u64, u64) {
    let id = message
        .properties
        .get_str(IDEMPOTENT_ID)
        .unwrap_or_else(|| panic!("a message without {IDEMPOTENT_ID}: {message:?}"));
    let fields: Vec<&str> = id.split('/').collect();
    assert_eq!(fields.len(), 5, "id '{id}'");
    (
        fields[0].to_string(),
        fields[1].to_string(),
        fields[2].parse().unwrap(),
        fields[3].parse().unwrap(),
        fields[4].parse().unwrap(),
    )
}

fn event_of(message: &Message) -> Event {
    serde_json::from_slice(&message.data).unwrap()
}

fn events(range: std::ops::Range<u32>) -> Vec<Event> {
    range
        .map(|id| Event {
            id,
            user: format!("user-{}", id % 5),
        })
        .collect()
}

fn sorted_events(messages: &[(i32, Message)]) -> Vec<Event> {
    let mut events: Vec<Event> = messages.iter().map(|(_, m)| event_of(m)).collect();
    events.sort();
    events
}

#[tokio::test]
async fn messages_are_sent_after_their_checkpoint_with_unique_well_formed_ids_in_order() {
    let (dir, ap) = store(&[(INPUT, 4), (OUTPUT, 2)]).await;
    let state = dir.path().join("state");
    send(&ap, 0..2500).await;
    let handle = job(&ap, &state, OUTPUT, 2, false).spawn().unwrap();
    wait_sink_input(&handle, 2500).await;
    // More than a part (1024 messages) per subtask, and every record logged; none sent.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        messages(&ap, OUTPUT).await.is_empty(),
        "nothing is sent before its checkpoint completes"
    );

    let record = handle.checkpoint().await.unwrap();
    wait_messages(&ap, OUTPUT, 2500).await;
    let first = messages(&ap, OUTPUT).await;
    assert_eq!(sorted_events(&first), events(0..2500), "each record once");
    let mut per_subtask: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    for (_, message) in &first {
        let (job, sink, subtask, epoch, seq) = id_of(message);
        assert_eq!((job.as_str(), sink.as_str()), (JOB, SINK));
        assert!(subtask < 2, "subtask {subtask}");
        assert_eq!(epoch, record.epoch, "the epoch the checkpoint closed");
        assert!(
            per_subtask.entry(subtask).or_default().insert(seq),
            "a repeated id"
        );
    }
    for (subtask, seqs) in &per_subtask {
        let expected: BTreeSet<u64> = (0..seqs.len() as u64).collect();
        assert_eq!(seqs, &expected, "subtask {subtask}: sequences 0, 1, 2, ...");
        assert!(seqs.len() > 1024, "several parts per subtask");
    }

    // The end of input: the final checkpoint sends the rest, in a later epoch.
    send(&ap, 2500..2600).await;
    wait_sink_input(&handle, 2600).await;
    handle.stop();
    handle.join().await.unwrap();
    let all = messages(&ap, OUTPUT).await;
    assert_eq!(sorted_events(&all), events(0..2600), "each record once");
    let ids: BTreeSet<&str> = all
        .iter()
        .map(|(_, m)| m.properties.get_str(IDEMPOTENT_ID).unwrap())
        .collect();
    assert_eq!(ids.len(), 2600, "unique ids");
    // Per partition, each subtask's messages in (epoch, sequence) order.
    let mut last: BTreeMap<(i32, u32), (u64, u64)> = BTreeMap::new();
    for (partition, message) in &all {
        let (_, _, subtask, epoch, seq) = id_of(message);
        if event_of(message).id >= 2500 {
            assert!(epoch > record.epoch, "after the checkpoint: a later epoch");
        }
        if let Some(previous) = last.insert((*partition, subtask), (epoch, seq)) {
            assert!(
                previous < (epoch, seq),
                "partition {partition}, subtask {subtask}: {previous:?} before {:?}",
                (epoch, seq)
            );
        }
    }
}

/// Run 1 (at `before`) takes a checkpoint after 1000 records, sends them, logs 1000 more,
/// and crashes; run 2 (at `after`) restores the checkpoint and reads to the end. Compared
/// with an uninterrupted run.
async fn crash_after_a_completed_checkpoint(before: usize, after: usize) {
    let (dir, ap) = store(&[(INPUT, 4), (OUTPUT, 2), (REFERENCE, 2)]).await;
    let state = dir.path().join("state");
    send(&ap, 0..1000).await;
    let handle = job(&ap, &state, OUTPUT, before, false).spawn().unwrap();
    wait_sink_input(&handle, 1000).await;
    let record = handle.checkpoint().await.unwrap();
    wait_messages(&ap, OUTPUT, 1000).await;
    send(&ap, 1000..2000).await;
    wait_sink_input(&handle, 2000).await;
    // Crash: the removal of the sent messages from the state is in no checkpoint, and the
    // records after the checkpoint are only logged.
    let mut handle = handle;
    handle.abort();
    let _ = handle.join().await;
    assert_eq!(messages(&ap, OUTPUT).await.len(), 1000);

    job(&ap, &state, OUTPUT, after, true)
        .execute()
        .await
        .unwrap();
    job(&ap, &dir.path().join("reference-state"), REFERENCE, 2, true)
        .execute()
        .await
        .unwrap();

    let output = messages(&ap, OUTPUT).await;
    let mut copies: BTreeMap<String, Vec<&Message>> = BTreeMap::new();
    for (_, message) in &output {
        let id = message.properties.get_str(IDEMPOTENT_ID).unwrap();
        copies.entry(id.to_string()).or_default().push(message);
    }
    let mut duplicated = 0;
    for (id, messages) in &copies {
        let first = messages[0];
        for copy in &messages[1..] {
            assert_eq!(copy.data, first.data, "{id}: the same body");
            assert_eq!(
                copy.extension_header.message_key, first.extension_header.message_key,
                "{id}: the same key"
            );
            assert_eq!(
                copy.properties, first.properties,
                "{id}: the same properties"
            );
        }
        assert!(messages.len() <= 2, "{id} sent {} times", messages.len());
        if messages.len() == 2 {
            duplicated += 1;
            assert_eq!(
                id_of(first).3,
                record.epoch,
                "only the checkpoint being sent at the crash"
            );
        }
    }
    assert_eq!(duplicated, 1000, "the crashed checkpoint's messages, again");
    let deduplicated: Vec<(i32, Message)> = copies
        .values()
        .map(|messages| (0, messages[0].clone()))
        .collect();
    let reference = messages(&ap, REFERENCE).await;
    assert_eq!(reference.len(), 2000);
    assert_eq!(sorted_events(&deduplicated), sorted_events(&reference));
    assert_eq!(sorted_events(&deduplicated), events(0..2000));
}

#[tokio::test]
async fn a_restored_job_resends_only_the_completed_checkpoint_with_the_same_ids_and_bodies() {
    crash_after_a_completed_checkpoint(2, 2).await;
}

#[tokio::test]
async fn a_job_restored_at_another_parallelism_resends_with_the_same_ids_and_bodies() {
    crash_after_a_completed_checkpoint(2, 3).await;
}

#[tokio::test]
async fn idempotent_parses_prints_and_needs_checkpoints() {
    assert_eq!(
        "idempotent".parse::<DeliveryGuarantee>(),
        Ok(DeliveryGuarantee::Idempotent)
    );
    assert_eq!(DeliveryGuarantee::Idempotent.to_string(), "idempotent");
    assert!("twice"
        .parse::<DeliveryGuarantee>()
        .unwrap_err()
        .contains("'at-least-once', 'exactly-once' or 'idempotent'"));

    let (_dir, ap) = store(&[(INPUT, 4), (OUTPUT, 1)]).await;
    send(&ap, 0..10).await;
    let config = OmsSinkConfig::<Event>::new(Arc::clone(&ap), OUTPUT)
        .name(SINK)
        .idempotent();
    assert_eq!(config.delivery_guarantee(), DeliveryGuarantee::Idempotent);

    // A job without checkpoints.
    let env = omstream::core::runtime::StreamEnv::new(JobConfig::named(JOB));
    env.add_oms_source(OmsSourceConfig::<Event>::new(Arc::clone(&ap), INPUT).bounded(true))
        .unwrap()
        .add_oms_sink(config.clone())
        .unwrap();
    let text = env.execute().await.expect_err("refused").to_string();
    assert!(
        text.contains(
            "the OMS sink 'out-sink' is idempotent, and idempotent delivery needs checkpoints: \
             JobConfig::with_checkpoints(...)"
        ),
        "{text}"
    );
    assert!(messages(&ap, OUTPUT).await.is_empty());

    // Driven by hand: the same refusal; with checkpoints but without its state, another.
    let mut sink = config.create_sink();
    let text = sink
        .open(&SubtaskInfo::new(SINK, 0, 1))
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        text.contains("idempotent delivery needs checkpoints"),
        "{text}"
    );
    let mut info = SubtaskInfo::new(SINK, 0, 1);
    info.checkpointing = true;
    let text = sink.open(&info).await.expect_err("refused").to_string();
    assert!(
        text.contains("call Sink::init_state before Sink::open"),
        "{text}"
    );
}
