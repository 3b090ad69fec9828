//! The OMS source driven by hand against the embedded driver: partition spreading, bounded
//! ends, per-partition watermarks and idleness, commits on checkpoint and at the end of a successful job, and polls
//! cancelled at any await.

use std::sync::Arc;
use std::time::Duration;

use super::source::{assigned_partitions, OmsSource};
use super::*;
use crate::oms::embedded::EMBEDDED_DIR;
use crate::oms::{
    connect, keyvalue, KeyValue, Message, MessagingAccessPoint, QueueConfig, SeekPosition,
    ServiceLifecycle,
};
use crate::runtime::{
    CheckpointBarrier, ProcessingClock, Record, Source, SourceContext, SourceOutput, SubtaskInfo,
    WatermarkStrategy,
};

/// A store in a temp dir with the queues `(name, partitions)`.
async fn store(queues: &[(&str, u32)]) -> (tempfile::TempDir, Arc<dyn MessagingAccessPoint>) {
    let dir = tempfile::tempdir().unwrap();
    let attrs = KeyValue::new().with(EMBEDDED_DIR, dir.path().display());
    let ap = connect("oms:embedded://localhost/connectors", attrs)
        .await
        .unwrap();
    let resources = ap.resource_manager().await.unwrap();
    for (queue, partitions) in queues {
        resources
            .create_queue(queue, QueueConfig::with_partitions(*partitions))
            .await
            .unwrap();
    }
    (dir, ap)
}

/// Sends `(partition, body)` pairs.
async fn send(ap: &Arc<dyn MessagingAccessPoint>, queue: &str, messages: &[(i32, String)]) {
    let producer = ap.create_producer(KeyValue::new()).await.unwrap();
    producer.start().await.unwrap();
    let batch = messages
        .iter()
        .map(|(p, body)| Message::new(queue, body.clone()).with_partition(*p))
        .collect();
    producer.send_batch(batch).await.unwrap();
}

fn context(index: usize, parallelism: usize) -> SourceContext {
    SourceContext {
        subtask: SubtaskInfo::new("src", index, parallelism),
        clock: ProcessingClock::start(),
        restored: None,
    }
}

async fn opened<T: crate::runtime::Data>(
    config: OmsSourceConfig<T>,
    ctx: &SourceContext,
) -> OmsSource<T> {
    let mut source = OmsSource::new(Arc::new(config), &ctx.subtask, 100);
    source.open(ctx).await.unwrap();
    source
}

/// Polls a bounded source to its end; returns the records and the watermarks.
async fn drain<T: crate::runtime::Data>(
    source: &mut OmsSource<T>,
    ctx: &SourceContext,
) -> (Vec<Record<T>>, Vec<i64>) {
    let (mut records, mut watermarks) = (Vec::new(), Vec::new());
    for _ in 0..10_000 {
        match source.poll(ctx).await.unwrap() {
            SourceOutput::Data(batch) => records.extend(batch),
            SourceOutput::Watermark(w) => watermarks.push(w),
            SourceOutput::Finished => return (records, watermarks),
            SourceOutput::Idle | SourceOutput::NoData => {}
        }
    }
    panic!("the bounded source did not finish");
}

#[test]
fn partitions_are_dealt_round_robin_by_sorted_id() {
    assert_eq!(assigned_partitions(vec![3, 0, 2, 1], 0, 2), vec![0, 2]);
    assert_eq!(assigned_partitions(vec![3, 0, 2, 1], 1, 2), vec![1, 3]);
    assert_eq!(assigned_partitions(vec![0, 1], 2, 3), Vec::<i32>::new());
    assert_eq!(assigned_partitions(vec![0, 1, 2], 0, 1), vec![0, 1, 2]);
}

#[tokio::test]
async fn a_bounded_source_reads_its_partitions_to_the_end_offsets_it_found_and_finishes() {
    let (_dir, ap) = store(&[("q", 4)]).await;
    let messages: Vec<(i32, String)> = (0..400).map(|i| (i % 4, i.to_string())).collect();
    send(&ap, "q", &messages).await;
    let ctx = context(1, 2);
    let config = OmsSourceConfig::<u32>::new(ap.clone(), "q").bounded(true);
    let mut source = opened(config, &ctx).await;
    // Written after the source opened: past the end it took, so not read.
    send(&ap, "q", &[(1, "9999".to_string())]).await;
    let (records, _) = drain(&mut source, &ctx).await;
    let mut values: Vec<u32> = records.iter().map(|r| r.value).collect();
    // Per partition in order; subtask 1 of 2 reads partitions 1 and 3.
    let in_partition = |p: u32| {
        values
            .iter()
            .filter(|v| *v % 4 == p)
            .copied()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        in_partition(1),
        (0..100).map(|i| i * 4 + 1).collect::<Vec<_>>()
    );
    assert_eq!(
        in_partition(3),
        (0..100).map(|i| i * 4 + 3).collect::<Vec<_>>()
    );
    values.sort_unstable();
    assert_eq!(values.len(), 200);
    let barrier = CheckpointBarrier {
        epoch: 1,
        triggered_at: 0,
    };
    let positions = source.snapshot(&barrier).await.unwrap();
    assert_eq!(
        positions,
        vec![("q".to_string(), 1, 100), ("q".to_string(), 3, 100)]
    );
    source.close().await.unwrap();
}

#[tokio::test]
async fn a_subtask_without_partitions_is_idle_or_finished() {
    let (_dir, ap) = store(&[("q", 1)]).await;
    let ctx = context(1, 2);
    let config = OmsSourceConfig::<u32>::new(ap.clone(), "q");
    let mut unbounded = opened(config.clone(), &ctx).await;
    assert_eq!(unbounded.poll(&ctx).await.unwrap(), SourceOutput::Idle);
    assert_eq!(unbounded.poll(&ctx).await.unwrap(), SourceOutput::NoData);
    let mut bounded = opened(config.bounded(true), &ctx).await;
    assert_eq!(bounded.poll(&ctx).await.unwrap(), SourceOutput::Finished);
}

#[tokio::test]
async fn the_watermark_is_the_minimum_over_partitions_less_the_out_of_orderness() {
    let (_dir, ap) = store(&[("q", 2)]).await;
    // Event time is the value; partition 0 runs ahead of partition 1.
    let mut messages: Vec<(i32, String)> = (1..=5).map(|i| (0, (i * 1000).to_string())).collect();
    messages.extend((1..=3).map(|i| (1, (i * 100).to_string())));
    send(&ap, "q", &messages).await;
    let ctx = context(0, 1);
    let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(50))
        .with_idle_timeout(None);
    let config = OmsSourceConfig::<i64>::new(ap.clone(), "q")
        .event_time(EventTimeFrom::extract(|v: &i64| *v))
        .watermarks(strategy)
        .bounded(true);
    let mut source = opened(config, &ctx).await;
    let (records, watermarks) = drain(&mut source, &ctx).await;
    assert!(records.iter().all(|r| r.timestamp == r.value));
    // Partition 1's last record (300) holds the watermark: 300 - 50 - 1.
    assert_eq!(watermarks.last(), Some(&249), "{watermarks:?}");
    assert!(watermarks.windows(2).all(|w| w[0] < w[1]), "{watermarks:?}");
}

/// Polls an unbounded source until `want` or `polls` polls passed.
async fn poll_until<T: crate::runtime::Data>(
    source: &mut OmsSource<T>,
    ctx: &SourceContext,
    polls: usize,
    want: impl Fn(&SourceOutput<T>) -> bool,
) -> Option<SourceOutput<T>> {
    for _ in 0..polls {
        let output = source.poll(ctx).await.unwrap();
        if want(&output) {
            return Some(output);
        }
    }
    None
}

#[tokio::test]
async fn an_idle_partition_stops_holding_the_watermark_back_after_the_idle_timeout() {
    let (_dir, ap) = store(&[("q", 2)]).await;
    let ctx = context(0, 1);
    let config = |idle: Option<Duration>| {
        OmsSourceConfig::<i64>::new(ap.clone(), "q")
            .event_time(EventTimeFrom::extract(|v: &i64| *v))
            .watermarks(WatermarkStrategy::default().with_idle_timeout(idle))
    };
    let is_watermark = |o: &SourceOutput<i64>| matches!(o, SourceOutput::Watermark(_));
    let mut never_idle = opened(config(None), &ctx).await;
    let mut idling = opened(config(Some(Duration::from_millis(300))), &ctx).await;
    // Both partitions start empty: after the timeout the subtask is idle.
    let idle = poll_until(&mut idling, &ctx, 100, |o| *o == SourceOutput::Idle).await;
    assert_eq!(idle, Some(SourceOutput::Idle));
    send(
        &ap,
        "q",
        &[(0, "1000".to_string()), (0, "2000".to_string())],
    )
    .await;
    // Partition 0 delivers while partition 1 stays idle: partition 0 alone decides.
    let watermark = poll_until(&mut idling, &ctx, 100, is_watermark).await;
    assert_eq!(watermark, Some(SourceOutput::Watermark(1999)));
    // Then partition 0 is quiet too: the whole subtask is idle again.
    let idle = poll_until(&mut idling, &ctx, 100, |o| *o == SourceOutput::Idle).await;
    assert_eq!(idle, Some(SourceOutput::Idle));
    // Without an idle timeout, the empty partition 1 holds the watermark for good (checked
    // over 10 polls, of which the empty ones wait 50 ms each).
    assert_eq!(
        poll_until(&mut never_idle, &ctx, 10, is_watermark).await,
        None
    );
}

#[tokio::test]
async fn positions_are_committed_when_their_checkpoint_completes_and_when_the_job_succeeds() {
    let (_dir, ap) = store(&[("q", 1)]).await;
    let messages: Vec<(i32, String)> = (0..10).map(|i| (0, i.to_string())).collect();
    send(&ap, "q", &messages).await;
    let group = KeyValue::new().with(keyvalue::CONSUMER_ID, "g");
    let offsets = ap.create_streaming_consumer(group).await.unwrap();
    offsets.start().await.unwrap();
    let ctx = context(0, 1);
    let barrier = |epoch| CheckpointBarrier {
        epoch,
        triggered_at: 0,
    };

    let config = OmsSourceConfig::<u32>::new(ap.clone(), "q")
        .group("g")
        .commit(CommitPolicy::OnCheckpoint)
        .batch_size(4);
    let mut source = OmsSource::new(Arc::new(config), &ctx.subtask, 4);
    source.open(&ctx).await.unwrap();
    let first = poll_until(&mut source, &ctx, 10, |o| {
        matches!(o, SourceOutput::Data(_))
    })
    .await;
    assert!(matches!(first, Some(SourceOutput::Data(b)) if b.len() == 4));
    assert_eq!(source.snapshot(&barrier(1)).await.unwrap()[0].2, 4);
    poll_until(&mut source, &ctx, 10, |o| {
        matches!(o, SourceOutput::Data(_))
    })
    .await;
    assert_eq!(source.snapshot(&barrier(2)).await.unwrap()[0].2, 8);
    assert_eq!(
        offsets.committed("q", 0).await.unwrap(),
        None,
        "not before completion"
    );
    source.on_checkpoint_complete(1).await.unwrap();
    assert_eq!(offsets.committed("q", 0).await.unwrap(), Some(4));
    source.on_checkpoint_complete(2).await.unwrap();
    assert_eq!(offsets.committed("q", 0).await.unwrap(), Some(8));
    // OnCheckpoint: the end of the job commits nothing more.
    poll_until(&mut source, &ctx, 10, |o| {
        matches!(o, SourceOutput::Data(_))
    })
    .await;
    source.on_job_success().await.unwrap();
    source.close().await.unwrap();
    assert_eq!(offsets.committed("q", 0).await.unwrap(), Some(8));

    // The default policy also commits when the job succeeds (never on a bare close: a failed
    // job must not commit what it may not have written); the next run starts there.
    let config = OmsSourceConfig::<u32>::new(ap.clone(), "q")
        .group("g")
        .start(StartPosition::committed(FallbackPosition::Beginning))
        .bounded(true);
    let mut source = opened(config, &ctx).await;
    let (records, _) = drain(&mut source, &ctx).await;
    assert_eq!(
        records.iter().map(|r| r.value).collect::<Vec<_>>(),
        vec![8, 9]
    );
    source.close().await.unwrap();
    assert_eq!(offsets.committed("q", 0).await.unwrap(), Some(8));
    let mut source = opened(
        OmsSourceConfig::<u32>::new(ap.clone(), "q")
            .group("g")
            .start(StartPosition::committed(FallbackPosition::Beginning))
            .bounded(true),
        &ctx,
    )
    .await;
    let (records, _) = drain(&mut source, &ctx).await;
    assert_eq!(records.len(), 2, "nothing was committed: read again");
    source.on_job_success().await.unwrap();
    source.close().await.unwrap();
    assert_eq!(offsets.committed("q", 0).await.unwrap(), Some(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_dropped_while_waiting_lose_and_repeat_no_record() {
    let (_dir, ap) = store(&[("q", 3), ("q.dlq", 1)]).await;
    let ctx = context(0, 1);
    let config = OmsSourceConfig::<u32>::new(ap.clone(), "q")
        .dead_letter(DeadLetter::Queue("q.dlq".to_string()));
    let metrics = config.metrics();
    let mut source = OmsSource::new(Arc::new(config), &ctx.subtask, 7);
    source.open(&ctx).await.unwrap();
    // Messages trickle in while polls are dropped, mostly as they wait for the next one.
    let producer_ap = ap.clone();
    let producer = tokio::spawn(async move {
        for chunk in 0..30u32 {
            let messages: Vec<(i32, String)> = (chunk * 20..chunk * 20 + 20)
                .map(|i| {
                    let body = if i % 50 == 7 {
                        "{bad".to_string()
                    } else {
                        i.to_string()
                    };
                    ((i % 3) as i32, body)
                })
                .collect();
            send(&producer_ap, "q", &messages).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
    let good: Vec<u32> = (0..600).filter(|i| i % 50 != 7).collect();
    let mut values = Vec::new();
    let mut cancelled = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut attempt = 0u64;
    while values.len() < good.len() && tokio::time::Instant::now() < deadline {
        attempt += 1;
        let budget = Duration::from_micros(attempt * 997 % 5_000);
        match tokio::time::timeout(budget, source.poll(&ctx)).await {
            Err(_) => cancelled += 1,
            Ok(output) => {
                if let SourceOutput::Data(batch) = output.unwrap() {
                    values.extend(batch.into_iter().map(|r| r.value));
                }
            }
        }
    }
    producer.await.unwrap();
    assert!(
        cancelled > 0,
        "no poll was cancelled; the test proves nothing"
    );
    values.sort_unstable();
    assert_eq!(values, good, "every good record exactly once");
    assert_eq!(metrics.records(), good.len() as u64);
    // Dead letters are at-least-once: a send dropped mid-way would be sent again.
    assert!(metrics.dead_lettered() >= 12, "{}", metrics.dead_lettered());
    let consumer = ap.create_streaming_consumer(KeyValue::new()).await.unwrap();
    consumer.start().await.unwrap();
    let mut reader = consumer
        .open("q.dlq", 0, SeekPosition::Beginning)
        .await
        .unwrap();
    let letters = reader.poll_batch(100, Duration::ZERO).await.unwrap();
    assert!(letters.len() >= 12, "{} dead letters stored", letters.len());
    assert!(letters.iter().all(|m| &m.data[..] == b"{bad"));
}

#[tokio::test]
async fn a_missing_queue_and_a_missing_dead_letter_queue_say_how_to_create_them() {
    let (_dir, ap) = store(&[("q", 1)]).await;
    let ctx = context(0, 1);
    let missing = OmsSourceConfig::<u32>::new(ap.clone(), "nope");
    let mut source = OmsSource::new(Arc::new(missing), &ctx.subtask, 10);
    let err = source.open(&ctx).await.unwrap_err().to_string();
    assert!(
        err.contains("queue 'nope' (read by an OMS source) does not exist"),
        "{err}"
    );
    assert!(err.contains("omstream queue create nope"), "{err}");
    let no_dlq = OmsSourceConfig::<u32>::new(ap.clone(), "q")
        .dead_letter(DeadLetter::Queue("q.dlq".to_string()));
    let mut source = OmsSource::new(Arc::new(no_dlq), &ctx.subtask, 10);
    let err = source.open(&ctx).await.unwrap_err().to_string();
    assert!(
        err.contains("queue 'q.dlq' (the dead-letter queue of an OMS source)"),
        "{err}"
    );
}

#[tokio::test]
async fn settings_that_cannot_work_are_refused_with_the_fix() {
    let (_dir, ap) = store(&[]).await;
    let config = || OmsSourceConfig::<u32>::new(ap.clone(), "q");
    let refused = |config: OmsSourceConfig<u32>| config.validate().unwrap_err().to_string();
    let err = refused(config().start(StartPosition::committed(FallbackPosition::End)));
    assert!(err.contains("set .group(\"<name>\")"), "{err}");
    let err = refused(config().commit(CommitPolicy::OnCheckpoint));
    assert!(err.contains("no consumer group"), "{err}");
    let err = refused(config().dead_letter(DeadLetter::Queue("q".to_string())));
    assert!(err.contains("'q.dlq'"), "{err}");
    let err = refused(config().start(StartPosition::Timestamp(-1)));
    assert!(err.contains("0 or more"), "{err}");
    let err = refused(config().batch_size(0));
    assert!(err.contains("at least 1"), "{err}");
    let err = refused(
        config().watermarks(WatermarkStrategy::default().with_idle_timeout(Some(Duration::ZERO))),
    );
    assert!(err.contains("use None"), "{err}");
    assert!(config()
        .group("g")
        .start(StartPosition::committed(FallbackPosition::End))
        .validate()
        .is_ok());
    let sink = OmsSinkConfig::<u32>::new(ap.clone(), " ");
    assert!(sink
        .validate()
        .unwrap_err()
        .to_string()
        .contains("queue name"));
}
