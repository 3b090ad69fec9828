//! Checkpointed jobs over the embedded driver: a checkpoint taken mid-stream, a crash (abort)
//! after more work, and a restore that continues exactly from the checkpoint, at the same or
//! another parallelism; a changed graph and a foreign job are refused.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{CheckpointConfig, CheckpointStore, RestoreMode};
use crate::connectors::{Decoder, OmsSourceConfig};
use crate::oms::embedded::EMBEDDED_DIR;
use crate::oms::{connect, KeyValue, Message, MessagingAccessPoint, QueueConfig, ServiceLifecycle};
use crate::runtime::{
    Batch, BoxError, CollectedRecords, JobConfig, JobHandle, Operator, OperatorContext,
    OperatorResult, Record, RuntimeError, Source, SourceContext, SourceOutput, StreamEnv,
};
use crate::state::{KeyedState, ValueState};

/// Counts records per key and emits `(key, count so far)`.
#[derive(Default)]
struct RunningCount {
    counts: Option<Box<dyn ValueState<String, u64>>>,
}

impl Operator<String, (String, u64)> for RunningCount {
    fn on_start(&mut self, ctx: &mut OperatorContext<(String, u64)>) -> OperatorResult {
        self.counts = Some(ctx.value_state("counts"));
        Ok(())
    }

    fn process_batch(
        &mut self,
        batch: Batch<String>,
        ctx: &mut OperatorContext<(String, u64)>,
    ) -> OperatorResult {
        let counts = self.counts.as_mut().expect("opened");
        for record in batch {
            let (count, _) = counts.get_or_insert_with(&record.value, &mut || 0);
            *count += 1;
            let count = *count;
            ctx.emit(record.timestamp, (record.value, count));
        }
        Ok(())
    }

    fn keyed_state(&mut self) -> Vec<&mut dyn KeyedState> {
        match self.counts.as_mut() {
            Some(counts) => vec![counts.as_mut() as &mut dyn KeyedState],
            None => Vec::new(),
        }
    }
}

/// Forgets to list its state.
#[derive(Default)]
struct Forgetful {
    counts: Option<Box<dyn ValueState<String, u64>>>,
}

impl Operator<String, (String, u64)> for Forgetful {
    fn on_start(&mut self, ctx: &mut OperatorContext<(String, u64)>) -> OperatorResult {
        self.counts = Some(ctx.value_state("counts"));
        Ok(())
    }

    fn process_batch(
        &mut self,
        _: Batch<String>,
        _: &mut OperatorContext<(String, u64)>,
    ) -> OperatorResult {
        Ok(())
    }
}

async fn embedded(partitions: u32) -> (tempfile::TempDir, Arc<dyn MessagingAccessPoint>) {
    let dir = tempfile::tempdir().unwrap();
    let attrs = KeyValue::new().with(EMBEDDED_DIR, dir.path().display());
    let ap = connect("oms:embedded://localhost/checkpoints", attrs)
        .await
        .unwrap();
    ap.resource_manager()
        .await
        .unwrap()
        .create_queue("in", QueueConfig::with_partitions(partitions))
        .await
        .unwrap();
    (dir, ap)
}

/// Sends records `range`, keyed `k{i % 7}`, spread over `partitions`.
async fn send(ap: &Arc<dyn MessagingAccessPoint>, range: std::ops::Range<usize>, partitions: i32) {
    let producer = ap.create_producer(KeyValue::new()).await.unwrap();
    producer.start().await.unwrap();
    let batch = range
        .map(|i| Message::new("in", format!("k{}", i % 7)).with_partition(i as i32 % partitions))
        .collect();
    producer.send_batch(batch).await.unwrap();
}

fn job(
    ap: &Arc<dyn MessagingAccessPoint>,
    checkpoints: CheckpointConfig,
    parallelism: usize,
    bounded: bool,
) -> (StreamEnv, CollectedRecords<(String, u64)>) {
    let env = StreamEnv::new(
        JobConfig::named("counts")
            .with_parallelism(parallelism)
            .with_checkpoints(checkpoints),
    );
    let source = env
        .add_oms_source(
            OmsSourceConfig::new(ap.clone(), "in")
                .decoder(Decoder::utf8())
                .bounded(bounded),
        )
        .unwrap();
    let counts = source
        .key_by(|key: &String| key.clone())
        .transform("count", |_| Box::new(RunningCount::default()));
    let out = counts.collect();
    (env, out)
}

async fn wait_for(out: &CollectedRecords<(String, u64)>, len: usize) {
    // A hang guard only: the condition is what the test waits for.
    for _ in 0..2000 {
        if out.len() >= len {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("only {} of {len} records arrived", out.len());
}

async fn crash(mut handle: JobHandle) {
    handle.abort();
    let _ = handle.join().await;
}

/// The highest count emitted per key.
fn final_counts(records: &[(String, u64)]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for (key, count) in records {
        let entry = counts.entry(key.clone()).or_insert(0);
        *entry = (*entry).max(*count);
    }
    counts
}

fn expected_counts(total: usize) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for i in 0..total {
        *counts.entry(format!("k{}", i % 7)).or_insert(0) += 1;
    }
    counts
}

async fn restore_continues_exactly_from_the_checkpoint(
    first_parallelism: usize,
    second_parallelism: usize,
    cache_capacity: usize,
) {
    let (_queues, ap) = embedded(4).await;
    let state = tempfile::tempdir().unwrap();
    let config = CheckpointConfig::new(state.path())
        .with_interval(None)
        .with_cache_capacity(cache_capacity);
    send(&ap, 0..1000, 4).await;

    // Run 1: a checkpoint after the first 1000 records, then more work, then a crash.
    let (env, out) = job(&ap, config.clone(), first_parallelism, false);
    let handle = env.spawn().unwrap();
    wait_for(&out, 1000).await;
    let record = handle.checkpoint().await.unwrap();
    assert_eq!(
        record.sources.iter().map(|s| s.offset).sum::<i64>(),
        1000,
        "{record:?}"
    );
    send(&ap, 1000..2000, 4).await;
    wait_for(&out, 1500).await;
    crash(handle).await;

    // Run 2 restores the checkpoint and reads to the end.
    let (env, out) = job(&ap, config, second_parallelism, true);
    env.execute().await.unwrap();
    let records = out.values();
    assert_eq!(
        records.len(),
        1000,
        "exactly the records after the checkpoint"
    );
    assert_eq!(final_counts(&records), expected_counts(2000));
}

#[tokio::test]
async fn a_restored_job_continues_exactly_from_its_checkpoint() {
    restore_continues_exactly_from_the_checkpoint(2, 2, 1_000_000).await;
}

#[tokio::test]
async fn a_restored_job_may_change_its_parallelism() {
    restore_continues_exactly_from_the_checkpoint(2, 3, 1_000_000).await;
    restore_continues_exactly_from_the_checkpoint(3, 1, 1_000_000).await;
}

#[tokio::test]
async fn changes_spilled_after_the_checkpoint_are_not_restored() {
    // A cache of 2 entries writes changes of the epoch in progress to sled all the time.
    restore_continues_exactly_from_the_checkpoint(2, 2, 2).await;
}

#[tokio::test]
async fn periodic_checkpoints_and_a_final_one_at_the_end() {
    let (_queues, ap) = embedded(2).await;
    let state = tempfile::tempdir().unwrap();
    send(&ap, 0..500, 2).await;
    let config = CheckpointConfig::new(state.path()).with_interval(Some(Duration::from_millis(20)));
    let (env, out) = job(&ap, config.clone(), 2, true);
    env.execute().await.unwrap();
    assert_eq!(final_counts(&out.values()), expected_counts(500));
    let store = CheckpointStore::open(state.path(), "counts").unwrap();
    let latest = store.latest().unwrap().unwrap();
    assert!(latest.is_final);
    assert_eq!(latest.sources.iter().map(|s| s.offset).sum::<i64>(), 500);
    // A rerun restores the final checkpoint: nothing left to read, state intact.
    send(&ap, 500..600, 2).await;
    let (env, out) = job(&ap, config, 2, true);
    env.execute().await.unwrap();
    assert_eq!(out.len(), 100);
    assert_eq!(final_counts(&out.values()), {
        let mut expected = expected_counts(600);
        expected.retain(|key, _| out.values().iter().any(|(k, _)| k == key));
        expected
    });
}

/// Regression: two sinks fed by one operator in one task. At the end of input the first
/// waited for the final checkpoint before the second had even seen `End`, so it never came.
#[tokio::test]
async fn a_stream_into_two_sinks_ends_with_its_final_checkpoint() {
    let (_queues, ap) = embedded(2).await;
    let state = tempfile::tempdir().unwrap();
    send(&ap, 0..300, 2).await;
    let env = StreamEnv::new(
        JobConfig::named("counts").with_checkpoints(CheckpointConfig::new(state.path())),
    );
    let counts = env
        .add_oms_source(
            OmsSourceConfig::new(ap.clone(), "in")
                .decoder(Decoder::utf8())
                .bounded(true),
        )
        .unwrap()
        .key_by(|key: &String| key.clone())
        .transform("count", |_| Box::new(RunningCount::default()));
    let out = counts.collect();
    let also = counts.collect();
    tokio::time::timeout(Duration::from_secs(30), env.execute())
        .await
        .expect("the job ends")
        .unwrap();
    assert_eq!(final_counts(&out.values()), expected_counts(300));
    assert_eq!(final_counts(&also.values()), expected_counts(300));
    let store = CheckpointStore::open(state.path(), "counts").unwrap();
    assert!(store.latest().unwrap().unwrap().is_final);
}

#[tokio::test]
async fn a_changed_graph_is_refused_unless_started_fresh() {
    let (_queues, ap) = embedded(1).await;
    let state = tempfile::tempdir().unwrap();
    send(&ap, 0..50, 1).await;
    let config = CheckpointConfig::new(state.path()).with_interval(None);
    let (env, _) = job(&ap, config.clone(), 1, true);
    env.execute().await.unwrap();

    // The counting operator is renamed: its state would be lost.
    let renamed = |config: CheckpointConfig| {
        let env = StreamEnv::new(JobConfig::named("counts").with_checkpoints(config));
        let source = env
            .add_oms_source(
                OmsSourceConfig::new(ap.clone(), "in")
                    .decoder(Decoder::utf8())
                    .bounded(true),
            )
            .unwrap();
        let out = source
            .key_by(|key: &String| key.clone())
            .transform("count-v2", |_| Box::new(RunningCount::default()))
            .collect();
        (env, out)
    };
    let (env, _) = renamed(config.clone());
    let error = env.spawn().unwrap_err().to_string();
    assert!(
        error.contains("'count'") && error.contains("fresh"),
        "{error}"
    );
    let (env, out) = renamed(config.with_restore(RestoreMode::Fresh));
    env.execute().await.unwrap();
    assert_eq!(out.len(), 50, "a fresh start reads from the beginning");
}

#[tokio::test]
async fn a_state_directory_of_another_job_is_refused() {
    let (_queues, ap) = embedded(1).await;
    let state = tempfile::tempdir().unwrap();
    let config = CheckpointConfig::new(state.path()).with_interval(None);
    let (env, _) = job(&ap, config.clone(), 1, true);
    env.execute().await.unwrap();
    let env = StreamEnv::new(JobConfig::named("other").with_checkpoints(config));
    env.from_iter("numbers", 0..3).collect();
    let error = env.spawn().unwrap_err().to_string();
    assert!(error.contains("belongs to job 'counts'"), "{error}");
}

#[tokio::test]
async fn an_operator_that_hides_its_state_fails_the_first_checkpoint() {
    let (_queues, ap) = embedded(1).await;
    let state = tempfile::tempdir().unwrap();
    send(&ap, 0..10, 1).await;
    let env = StreamEnv::new(
        JobConfig::named("hiding")
            .with_checkpoints(CheckpointConfig::new(state.path()).with_interval(None)),
    );
    let source = env
        .add_oms_source(
            OmsSourceConfig::new(ap.clone(), "in")
                .decoder(Decoder::utf8())
                .bounded(true),
        )
        .unwrap();
    source
        .key_by(|key: &String| key.clone())
        .transform("forgetful", |_| Box::new(Forgetful::default()))
        .collect();
    let error = env.execute().await.unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, RuntimeError::Task { .. })
            && message.contains("forgetful")
            && message.contains("keyed_state"),
        "{message}"
    );
}

/// Run 1 takes checkpoints after 1000 and 2000 records, then crashes; returns the records.
async fn two_checkpoints_then_crash(
    ap: &Arc<dyn MessagingAccessPoint>,
    config: &CheckpointConfig,
) -> (super::CheckpointRecord, super::CheckpointRecord) {
    send(ap, 0..1000, 4).await;
    let (env, out) = job(ap, config.clone(), 2, false);
    let handle = env.spawn().unwrap();
    wait_for(&out, 1000).await;
    let first = handle.checkpoint().await.unwrap();
    send(ap, 1000..2000, 4).await;
    wait_for(&out, 2000).await;
    let second = handle.checkpoint().await.unwrap();
    send(ap, 2000..2500, 4).await;
    wait_for(&out, 2500).await;
    crash(handle).await;
    (first, second)
}

#[tokio::test]
async fn a_damaged_latest_checkpoint_falls_back_to_the_previous_one() {
    let (_queues, ap) = embedded(4).await;
    let state = tempfile::tempdir().unwrap();
    let config = CheckpointConfig::new(state.path()).with_interval(None);
    let (_, second) = two_checkpoints_then_crash(&ap, &config).await;
    // Truncate the newest record, as a torn write would.
    let path = state
        .path()
        .join("checkpoints")
        .join(format!("chk-{:020}.ckpt", second.epoch));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let (env, out) = job(&ap, config, 2, true);
    env.execute().await.unwrap();
    assert_eq!(
        out.len(),
        1500,
        "everything after the first checkpoint again"
    );
    assert_eq!(final_counts(&out.values()), expected_counts(2500));
}

#[tokio::test]
async fn a_chosen_older_checkpoint_is_restored_and_supersedes_later_ones() {
    let (_queues, ap) = embedded(4).await;
    let state = tempfile::tempdir().unwrap();
    let config = CheckpointConfig::new(state.path()).with_interval(None);
    let (first, second) = two_checkpoints_then_crash(&ap, &config).await;
    let store = CheckpointStore::open(state.path(), "counts").unwrap();
    store.pin(first.epoch).unwrap();
    assert_eq!(store.pinned().unwrap(), Some(first.epoch));
    let (env, out) = job(&ap, config.clone(), 2, true);
    env.execute().await.unwrap();
    assert_eq!(out.len(), 1500);
    assert_eq!(final_counts(&out.values()), expected_counts(2500));
    assert_eq!(store.pinned().unwrap(), None, "the choice is used once");
    assert!(store.get(second.epoch).is_err(), "superseded");
    // The final checkpoint of that run is now the latest: nothing more to read.
    let (env, out) = job(&ap, config, 2, true);
    env.execute().await.unwrap();
    assert_eq!(out.len(), 0);
}

/// A source whose poll never waits: a generator, or a reader of a deep backlog.
struct AlwaysReady(u64);

#[async_trait::async_trait]
impl Source<String> for AlwaysReady {
    async fn poll(&mut self, _: &SourceContext) -> Result<SourceOutput<String>, BoxError> {
        let batch = (0..64)
            .map(|i| Record::new(0, format!("k{}", (self.0 + i) % 1000)))
            .collect();
        self.0 += 64;
        Ok(SourceOutput::Data(batch))
    }
}

/// Regression: a source whose poll is always ready kept its task from ever yielding. The
/// coordinator, woken by that task's acknowledgement of a barrier, waited in the same
/// worker's LIFO slot (which no other worker takes), and no checkpoint ever completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_complete_while_a_source_is_always_ready() {
    let state = tempfile::tempdir().unwrap();
    let config = CheckpointConfig::new(state.path()).with_interval(Some(Duration::from_millis(50)));
    let env = StreamEnv::new(JobConfig::named("busy").with_checkpoints(config));
    env.add_source("busy", |_| {
        Box::new(AlwaysReady(0)) as Box<dyn Source<String>>
    })
    .key_by(|key: &String| key.clone())
    .transform("count", |_| Box::new(RunningCount::default()))
    .for_each(|_| {});
    let mut handle = env.spawn().unwrap();
    // Hang guards: before the fix no request was ever answered.
    let mut epochs = Vec::new();
    for _ in 0..2 {
        let record = tokio::time::timeout(Duration::from_secs(30), handle.checkpoint())
            .await
            .expect("a checkpoint completes while the source is always ready")
            .unwrap();
        epochs.push(record.epoch);
        // The first may come before the first record; by the second every key changed.
        if epochs.len() == 2 {
            assert_eq!(record.state_entries, 1000, "every key changed: {record:?}");
        }
    }
    assert!(epochs[1] > epochs[0], "{epochs:?}");
    handle.abort();
    let _ = handle.join().await;
}
