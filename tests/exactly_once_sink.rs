//! The exactly-once OMS sink, driven through its `Sink` methods as the runtime drives it: records
//! are invisible until their checkpoint completes, then visible once and in order; after a
//! crash, a run restored from checkpoint `E` commits what `E` covers and rolls back the rest,
//! whatever the parallelism; other jobs' transactions are left alone; at-least-once is as before.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

mod support;
use support::{read_queue, store, AccessPoint};

use omstream::core::connectors::exactly_once::{DeliveryGuarantee, TXN_EPOCH, TXN_JOB, TXN_SINK};
use omstream::core::connectors::OmsSinkConfig;
use omstream::core::runtime::{Batch, CheckpointBarrier, Record, Sink, SubtaskInfo};
use omstream::oms::{
    KeyValue, Message, ServiceLifecycle, TransactionState, TransactionStateCheckListener,
};

const QUEUE: &str = "out";
const SINK: &str = "out-sink";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Event {
    id: u32,
    user: String,
}

fn event(id: u32) -> Event {
    Event {
        id,
        user: format!("user-{}", id % 5),
    }
}

fn batch(ids: std::ops::Range<u32>) -> Batch<Event> {
    ids.map(|id| Record::new(i64::from(id), event(id)))
        .collect()
}

fn barrier(epoch: u64) -> CheckpointBarrier {
    CheckpointBarrier {
        epoch,
        triggered_at: 0,
    }
}

/// Subtask `index` of `parallelism` of the sink in a checkpointing run of `job`.
fn subtask(job: &str, index: usize, parallelism: usize, restored: Option<u64>) -> SubtaskInfo {
    let mut info = SubtaskInfo::new(SINK, index, parallelism);
    info.job = job.to_string();
    info.checkpointing = true;
    info.restored_epoch = restored;
    // As the runtime does when no run crashed in between: the epoch after the restored one.
    info.first_epoch = restored.map_or(1, |epoch| epoch + 1);
    info
}

/// An exactly-once sink keyed by user (so records spread over the partitions, one user's in
/// order), preparing a transaction every 7 records.
fn config(ap: &AccessPoint) -> OmsSinkConfig<Event> {
    OmsSinkConfig::new(Arc::clone(ap), QUEUE)
        .name(SINK)
        .key(|e: &Event| e.user.clone())
        .exactly_once()
        .transaction_size(7)
}

async fn open(ap: &AccessPoint, info: &SubtaskInfo) -> Box<dyn Sink<Event>> {
    let mut sink = config(ap).create_sink();
    sink.open(info).await.unwrap();
    sink
}

/// The ids visible in the queue, checking that each user's records are in id order.
async fn visible(ap: &AccessPoint) -> Vec<u32> {
    let mut ids = Vec::new();
    for messages in read_queue(ap, QUEUE).await.into_values() {
        let mut last: BTreeMap<String, u32> = BTreeMap::new();
        for m in messages {
            let e: Event = serde_json::from_slice(&m.data).unwrap();
            if let Some(prev) = last.insert(e.user.clone(), e.id) {
                assert!(prev < e.id, "{} after {prev} for {}", e.id, e.user);
            }
            ids.push(e.id);
        }
    }
    ids.sort_unstable();
    ids
}

fn ids(range: std::ops::Range<u32>) -> Vec<u32> {
    range.collect()
}

#[tokio::test]
async fn nothing_is_visible_before_its_checkpoint_completes_then_everything_once_in_order() {
    let (_dir, ap) = store(&[(QUEUE, 3)]).await;
    let mut sink = open(&ap, &subtask("job", 0, 1, None)).await;
    sink.write_batch(batch(0..20)).await.unwrap();
    sink.write_batch(batch(20..40)).await.unwrap();
    assert!(visible(&ap).await.is_empty(), "written, not committed");
    sink.on_barrier(&barrier(1)).await.unwrap();
    sink.write_batch(batch(40..60)).await.unwrap();
    assert!(visible(&ap).await.is_empty(), "prepared, not committed");
    sink.on_checkpoint_complete(1).await.unwrap();
    assert_eq!(visible(&ap).await, ids(0..40), "epoch 1 only");
    sink.on_barrier(&barrier(2)).await.unwrap();
    assert_eq!(
        visible(&ap).await,
        ids(0..40),
        "epoch 2 waits for its checkpoint"
    );
    sink.on_checkpoint_complete(2).await.unwrap();
    assert_eq!(visible(&ap).await, ids(0..60));

    // The final checkpoint at the end of input, then finish.
    sink.write_batch(batch(60..65)).await.unwrap();
    sink.on_barrier(&barrier(3)).await.unwrap();
    sink.on_checkpoint_complete(3).await.unwrap();
    sink.finish().await.unwrap();
    assert_eq!(visible(&ap).await, ids(0..65));

    let sample = &read_queue(&ap, QUEUE)
        .await
        .into_values()
        .flatten()
        .next()
        .unwrap();
    assert_eq!(sample.properties.get_str(TXN_JOB), Some("job"));
    assert_eq!(sample.properties.get_str(TXN_SINK), Some(SINK));
    assert!(sample.properties.get_str(TXN_EPOCH).is_some());
    assert!(sample.extension_header.transaction_id.is_some());
}

#[tokio::test]
async fn one_completed_checkpoint_commits_every_earlier_epoch() {
    let (_dir, ap) = store(&[(QUEUE, 2)]).await;
    let mut sink = open(&ap, &subtask("job", 0, 1, None)).await;
    for epoch in 1..=3u64 {
        let from = (epoch as u32 - 1) * 10;
        sink.write_batch(batch(from..from + 10)).await.unwrap();
        sink.on_barrier(&barrier(epoch)).await.unwrap();
    }
    // Checkpoints 1 and 2 were aborted; 3 completes.
    sink.on_checkpoint_complete(3).await.unwrap();
    assert_eq!(visible(&ap).await, ids(0..30));
}

/// Commits every transaction it is asked about.
struct CommitAll;

impl TransactionStateCheckListener for CommitAll {
    fn check(&self, _: &Message) -> TransactionState {
        TransactionState::Commit
    }
}

/// Asks a listener that commits everything about every transaction still open: what was
/// rolled back must not come back.
async fn commit_whatever_is_open(ap: &AccessPoint) {
    let p = ap
        .create_transactional_producer(KeyValue::new(), Arc::new(CommitAll))
        .await
        .unwrap();
    p.start().await.unwrap();
    p.stop().await.unwrap();
}

#[tokio::test]
async fn a_restore_commits_what_its_checkpoint_covers_and_rolls_back_the_rest() {
    let (_dir, ap) = store(&[(QUEUE, 3)]).await;
    let mut sink = open(&ap, &subtask("job", 0, 1, None)).await;
    sink.write_batch(batch(0..10)).await.unwrap();
    sink.on_barrier(&barrier(1)).await.unwrap();
    sink.write_batch(batch(10..20)).await.unwrap();
    sink.on_barrier(&barrier(2)).await.unwrap();
    sink.on_checkpoint_complete(1).await.unwrap();
    sink.write_batch(batch(20..30)).await.unwrap();
    sink.on_barrier(&barrier(3)).await.unwrap();
    // Epoch 4 in progress: one transaction prepared, a few records held.
    sink.write_batch(batch(30..40)).await.unwrap();
    assert_eq!(visible(&ap).await, ids(0..10));
    // Crash: checkpoint 2 completed, but the sink died before committing it; checkpoint 3
    // never completed.
    drop(sink);
    assert_eq!(visible(&ap).await, ids(0..10), "a crash publishes nothing");

    // The run restored from checkpoint 2 finds epoch 2 committed, 3 and 4 rolled back, and
    // writes the records after checkpoint 2 again (its epochs are above all earlier ones).
    let mut sink = open(&ap, &subtask("job", 0, 1, Some(2))).await;
    assert_eq!(
        visible(&ap).await,
        ids(0..20),
        "epochs <= 2 committed on open"
    );
    sink.write_batch(batch(20..40)).await.unwrap();
    sink.on_barrier(&barrier(5)).await.unwrap();
    sink.on_checkpoint_complete(5).await.unwrap();
    sink.finish().await.unwrap();
    assert_eq!(visible(&ap).await, ids(0..40), "each record once");
    commit_whatever_is_open(&ap).await;
    assert_eq!(visible(&ap).await, ids(0..40), "rolled back, not left open");
}

#[tokio::test]
async fn a_fresh_start_rolls_back_everything_an_earlier_run_left() {
    let (_dir, ap) = store(&[(QUEUE, 2)]).await;
    let mut sink = open(&ap, &subtask("job", 0, 1, None)).await;
    sink.write_batch(batch(0..10)).await.unwrap();
    sink.on_barrier(&barrier(1)).await.unwrap();
    drop(sink);
    let mut sink = open(&ap, &subtask("job", 0, 1, None)).await;
    sink.write_batch(batch(100..105)).await.unwrap();
    sink.on_barrier(&barrier(2)).await.unwrap();
    sink.on_checkpoint_complete(2).await.unwrap();
    commit_whatever_is_open(&ap).await;
    assert_eq!(visible(&ap).await, ids(100..105));
}

#[tokio::test]
async fn subtask_0_resolves_every_subtasks_leftovers_at_a_new_parallelism() {
    let (_dir, ap) = store(&[(QUEUE, 4)]).await;
    let mut sinks = Vec::new();
    for index in 0..3 {
        sinks.push(open(&ap, &subtask("job", index, 3, None)).await);
    }
    for (i, sink) in sinks.iter_mut().enumerate() {
        let base = i as u32 * 1000;
        sink.write_batch(batch(base..base + 10)).await.unwrap();
        sink.on_barrier(&barrier(1)).await.unwrap();
        sink.write_batch(batch(base + 10..base + 20)).await.unwrap();
        sink.on_barrier(&barrier(2)).await.unwrap();
    }
    // Checkpoint 1 completed; every subtask crashed before committing it.
    drop(sinks);
    assert!(visible(&ap).await.is_empty());

    // Restored from 1 with one subtask.
    let mut sink = open(&ap, &subtask("job", 0, 1, Some(1))).await;
    let expected: Vec<u32> = (0..3).flat_map(|i| i * 1000..i * 1000 + 10).collect();
    assert_eq!(visible(&ap).await, expected);
    sink.finish().await.unwrap();
    commit_whatever_is_open(&ap).await;
    assert_eq!(
        visible(&ap).await,
        expected,
        "epoch 2 of every subtask rolled back"
    );
}

#[tokio::test]
async fn only_subtask_0_resolves_leftovers() {
    let (_dir, ap) = store(&[(QUEUE, 2)]).await;
    let mut sink = open(&ap, &subtask("job", 0, 2, None)).await;
    sink.write_batch(batch(0..10)).await.unwrap();
    sink.on_barrier(&barrier(1)).await.unwrap();
    drop(sink);
    let _other = open(&ap, &subtask("job", 1, 2, Some(1))).await;
    assert!(visible(&ap).await.is_empty(), "subtask 1 decides nothing");
    let _first = open(&ap, &subtask("job", 0, 2, Some(1))).await;
    assert_eq!(visible(&ap).await, ids(0..10));
}

#[tokio::test]
async fn other_jobs_and_sinks_are_left_alone() {
    let (_dir, ap) = store(&[(QUEUE, 2)]).await;
    let mut sink = open(&ap, &subtask("a", 0, 1, None)).await;
    sink.write_batch(batch(0..10)).await.unwrap();
    sink.on_barrier(&barrier(1)).await.unwrap();
    drop(sink);

    // Job b, and another sink of job a, both starting fresh: they would roll back their own.
    let mut b = open(&ap, &subtask("b", 0, 1, None)).await;
    b.finish().await.unwrap();
    let mut other = OmsSinkConfig::<Event>::new(Arc::clone(&ap), QUEUE)
        .name("audit")
        .exactly_once()
        .create_sink();
    let mut info = subtask("a", 0, 1, None);
    info.operator = "audit".into();
    other.open(&info).await.unwrap();
    other.finish().await.unwrap();
    assert!(visible(&ap).await.is_empty());

    let _a = open(&ap, &subtask("a", 0, 1, Some(1))).await;
    assert_eq!(
        visible(&ap).await,
        ids(0..10),
        "job a's transaction was still open"
    );
}

#[tokio::test]
async fn exactly_once_without_checkpoints_is_refused_with_what_to_do() {
    let (_dir, ap) = store(&[(QUEUE, 1)]).await;
    let mut sink = config(&ap).create_sink();
    let err = sink
        .open(&SubtaskInfo::new(SINK, 0, 1))
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("exactly-once needs checkpoints: JobConfig::with_checkpoints(...)"),
        "{text}"
    );
    assert!(text.contains(SINK), "names the sink: {text}");
}

#[tokio::test]
async fn at_least_once_is_the_default_and_writes_at_once() {
    let (_dir, ap) = store(&[(QUEUE, 2)]).await;
    let config =
        OmsSinkConfig::<Event>::new(Arc::clone(&ap), QUEUE).key(|e: &Event| e.user.clone());
    assert_eq!(config.delivery_guarantee(), DeliveryGuarantee::AtLeastOnce);
    assert_eq!(
        config.clone().exactly_once().delivery_guarantee(),
        DeliveryGuarantee::ExactlyOnce
    );
    let mut sink = config.create_sink();
    // No checkpoints needed.
    sink.open(&SubtaskInfo::new(SINK, 0, 1)).await.unwrap();
    sink.write_batch(batch(0..10)).await.unwrap();
    assert_eq!(
        visible(&ap).await,
        ids(0..10),
        "visible before any checkpoint"
    );
    sink.on_barrier(&barrier(1)).await.unwrap();
    sink.on_checkpoint_complete(1).await.unwrap();
    sink.finish().await.unwrap();
    let messages: Vec<_> = read_queue(&ap, QUEUE)
        .await
        .into_values()
        .flatten()
        .collect();
    assert_eq!(messages.len(), 10);
    assert!(
        messages
            .iter()
            .all(|m| m.properties.get_str(TXN_JOB).is_none()
                && m.extension_header.transaction_id.is_none()),
        "plain sends"
    );
}
