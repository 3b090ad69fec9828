//! Runtime tests with small hand-written operators: chaining, exchanges, end of input, failure.

use std::time::Duration;

use super::*;

/// Adds `n` to every record.
struct AddN(i64);

impl Operator<i64, i64> for AddN {
    fn process_batch(
        &mut self,
        batch: Batch<i64>,
        ctx: &mut OperatorContext<i64>,
    ) -> OperatorResult {
        ctx.emit_batch(batch.into_iter().map(|r| r.map(|v| v + self.0)).collect());
        Ok(())
    }
}

/// Emits, at the end, which subtask saw how many records.
struct CountPerSubtask(u64);

impl Operator<i64, (usize, u64)> for CountPerSubtask {
    fn process_batch(
        &mut self,
        batch: Batch<i64>,
        _: &mut OperatorContext<(usize, u64)>,
    ) -> OperatorResult {
        self.0 += batch.len() as u64;
        Ok(())
    }

    fn on_end(&mut self, ctx: &mut OperatorContext<(usize, u64)>) -> OperatorResult {
        ctx.emit(0, (ctx.subtask().index, self.0));
        Ok(())
    }
}

fn add(n: i64) -> impl Fn(&SubtaskInfo) -> Box<dyn Operator<i64, i64>> + Send + 'static {
    move |_| Box::new(AddN(n))
}

#[tokio::test]
async fn a_bounded_job_runs_through_chained_and_exchanged_operators() {
    let env = StreamEnv::new(JobConfig::named("t").with_parallelism(2).with_batch_size(7));
    let partitions: Vec<Vec<Record<i64>>> = (0..4)
        .map(|p| (0..250).map(|i| Record::new(i, p * 1000 + i)).collect())
        .collect();
    let source = env.from_partitions("numbers", partitions, WatermarkStrategy::default());
    let plus_one = source.transform("plus-one", Partitioning::Forward, add(1));
    let rebalanced = plus_one
        .transform("plus-two", Partitioning::Rebalance, add(2))
        .with_parallelism(3);
    let out = rebalanced.collect();
    let report = env.execute().await.unwrap();
    let mut values = out.values();
    values.sort();
    let mut expected: Vec<i64> = (0..4)
        .flat_map(|p| (0..250).map(move |i| p * 1000 + i + 3))
        .collect();
    expected.sort();
    assert_eq!(values, expected);
    assert_eq!(report.operator("numbers").unwrap().records_out, 1000);
    assert_eq!(report.operator("plus-two").unwrap().records_in, 1000);
}

#[tokio::test]
async fn a_hash_edge_sends_each_key_to_one_subtask() {
    let env = StreamEnv::new(JobConfig::named("t").with_parallelism(4));
    let source = env.from_partitions(
        "keys",
        (0..4)
            .map(|p| (0..100).map(|i| Record::new(0, (i * 4 + p) % 10)).collect())
            .collect(),
        WatermarkStrategy::default(),
    );
    let keyed = source.key_by(|v: &i64| *v);
    let seen = keyed
        .transform("which-subtask", |info: &SubtaskInfo| {
            let index = info.index;
            Box::new(Tag(index)) as Box<dyn Operator<i64, (i64, usize)>>
        })
        .collect();
    env.execute().await.unwrap();
    let mut owner = std::collections::HashMap::new();
    for (key, subtask) in seen.values() {
        assert_eq!(
            *owner.entry(key).or_insert(subtask),
            subtask,
            "key {key} on two subtasks"
        );
    }
    assert_eq!(seen.len(), 400);
}

struct Tag(usize);

impl Operator<i64, (i64, usize)> for Tag {
    fn process_batch(
        &mut self,
        batch: Batch<i64>,
        ctx: &mut OperatorContext<(i64, usize)>,
    ) -> OperatorResult {
        for r in batch {
            ctx.emit(r.timestamp, (r.value, self.0));
        }
        Ok(())
    }
}

#[tokio::test]
async fn broadcast_reaches_every_subtask_and_fan_out_feeds_every_consumer() {
    let env = StreamEnv::new(JobConfig::named("t"));
    let source = env.from_iter("numbers", 0..10i64);
    let counts = env
        .add_operator(
            "count",
            vec![(&source, Partitioning::Broadcast)],
            |_: &SubtaskInfo| Box::new(CountPerSubtask(0)) as Box<dyn Operator<i64, (usize, u64)>>,
        )
        .with_parallelism(3)
        .collect();
    let direct = source.collect();
    env.execute().await.unwrap();
    let mut counts = counts.values();
    counts.sort();
    assert_eq!(counts, vec![(0, 10), (1, 10), (2, 10)]);
    assert_eq!(direct.len(), 10);
}

#[tokio::test]
async fn a_union_ends_when_both_inputs_have() {
    let env = StreamEnv::new(JobConfig::named("t"));
    let a = env.from_iter("a", 0..100i64);
    let b = env.from_iter("b", 1000..1050i64).with_parallelism(2);
    let union = env.add_operator(
        "union",
        vec![(&a, Partitioning::Forward), (&b, Partitioning::Forward)],
        add(0),
    );
    let out = union.collect();
    env.execute().await.unwrap();
    assert_eq!(out.len(), 150);
}

struct FailAt(i64);

impl Operator<i64, i64> for FailAt {
    fn process_batch(
        &mut self,
        batch: Batch<i64>,
        ctx: &mut OperatorContext<i64>,
    ) -> OperatorResult {
        for r in batch {
            if r.value == self.0 {
                return Err(format!("record {} is poison", r.value).into());
            }
            ctx.emit_record(r);
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_failing_subtask_stops_the_job_with_its_own_error() {
    let env = StreamEnv::new(
        JobConfig::named("t")
            .with_parallelism(2)
            .with_batch_size(10),
    );
    let source = env.from_partitions(
        "numbers",
        vec![(0..100_000).map(|i| Record::new(0, i)).collect(), vec![]],
        WatermarkStrategy::default(),
    );
    source
        .transform("fail", Partitioning::Rebalance, |_: &SubtaskInfo| {
            Box::new(FailAt(5_000)) as Box<dyn Operator<i64, i64>>
        })
        .transform("slow", Partitioning::Rebalance, add(0))
        .collect();
    let err = tokio::time::timeout(Duration::from_secs(30), env.execute())
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(
        err.to_string().contains("fail[") && err.to_string().contains("poison"),
        "{err}"
    );
}

struct Panics;

impl Operator<i64, i64> for Panics {
    fn process_batch(&mut self, _: Batch<i64>, _: &mut OperatorContext<i64>) -> OperatorResult {
        panic!("operator bug")
    }
}

#[tokio::test]
async fn a_panicking_subtask_is_reported_by_name() {
    let env = StreamEnv::new(JobConfig::named("t"));
    env.from_iter("numbers", 0..10i64)
        .transform("buggy", Partitioning::Rebalance, |_: &SubtaskInfo| {
            Box::new(Panics) as Box<dyn Operator<i64, i64>>
        })
        .collect();
    let err = env.execute().await.unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Panicked { task, message } if task.starts_with("buggy") && message == "operator bug"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_parallelism_and_a_second_run_are_refused_with_the_fix() {
    let env = StreamEnv::new(JobConfig::named("t"));
    env.from_iter("numbers", 0..10i64)
        .with_parallelism(0)
        .collect();
    let err = env.execute().await.unwrap_err();
    assert!(err.to_string().contains("between 1 and 128"), "{err}");
    let err = env.execute().await.unwrap_err();
    assert!(err.to_string().contains("already started"), "{err}");
}

/// Emits, in `on_watermark`, the watermarks it saw, and forwards barriers it saw as records.
struct SeeControl;

impl Operator<i64, String> for SeeControl {
    fn process_batch(&mut self, _: Batch<i64>, _: &mut OperatorContext<String>) -> OperatorResult {
        Ok(())
    }
    fn on_watermark(&mut self, w: EventTime, ctx: &mut OperatorContext<String>) -> OperatorResult {
        ctx.emit(w, format!("wm {w}"));
        Ok(())
    }
    fn on_barrier(
        &mut self,
        b: &CheckpointBarrier,
        ctx: &mut OperatorContext<String>,
    ) -> OperatorResult {
        ctx.emit(0, format!("barrier {}", b.epoch));
        Ok(())
    }
}

#[tokio::test]
async fn watermarks_are_the_minimum_over_source_subtasks_and_end_at_the_maximum() {
    let env = StreamEnv::new(JobConfig::named("t").with_parallelism(2).with_batch_size(1));
    let partitions = vec![
        vec![Record::new(100, 0i64), Record::new(200, 0)],
        vec![Record::new(10, 0i64), Record::new(20, 0)],
    ];
    let strategy = WatermarkStrategy::default().with_idle_timeout(None);
    let seen = env
        .from_partitions("p", partitions, strategy)
        .transform("see", Partitioning::Rebalance, |_: &SubtaskInfo| {
            Box::new(SeeControl) as Box<dyn Operator<i64, String>>
        })
        .with_parallelism(1)
        .collect();
    env.execute().await.unwrap();
    let marks: Vec<i64> = seen.records().iter().map(|r| r.timestamp).collect();
    assert!(marks.windows(2).all(|w| w[0] < w[1]), "{marks:?}");
    // Never beyond what the slow partition allows, until the end.
    assert!(
        marks
            .iter()
            .filter(|&&m| m != MAX_WATERMARK)
            .all(|&m| m <= 19),
        "{marks:?}"
    );
    assert_eq!(marks.last(), Some(&MAX_WATERMARK));
}

#[tokio::test]
async fn stop_drains_an_unbounded_job_and_barriers_flow_through() {
    struct Endless(i64);
    #[async_trait::async_trait]
    impl Source<i64> for Endless {
        async fn poll(&mut self, _: &SourceContext) -> Result<SourceOutput<i64>, BoxError> {
            tokio::time::sleep(Duration::from_millis(1)).await;
            self.0 += 1;
            Ok(SourceOutput::Data(vec![Record::new(self.0, self.0)]))
        }
    }
    let env = StreamEnv::new(JobConfig::named("t").with_parallelism(2));
    let seen = env
        .add_source("endless", |_| Box::new(Endless(0)) as Box<dyn Source<i64>>)
        .transform("see", Partitioning::Rebalance, |_: &SubtaskInfo| {
            Box::new(SeeControl) as Box<dyn Operator<i64, String>>
        })
        .collect();
    let job = env.spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    job.inject_barrier(1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    job.stop();
    tokio::time::timeout(Duration::from_secs(10), job.join())
        .await
        .unwrap()
        .unwrap();
    let values = seen.values();
    // Each of the two "see" subtasks saw the barrier once, aligned over both sources.
    assert_eq!(
        values.iter().filter(|v| *v == "barrier 1").count(),
        2,
        "{values:?}"
    );
    assert!(values.iter().any(|v| *v == format!("wm {MAX_WATERMARK}")));
}

/// Counts `on_job_success` calls; emits `0..n` then finishes.
struct Counting {
    next: i64,
    n: i64,
    successes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl Source<i64> for Counting {
    async fn poll(&mut self, _: &SourceContext) -> Result<SourceOutput<i64>, BoxError> {
        if self.next == self.n {
            return Ok(SourceOutput::Finished);
        }
        self.next += 1;
        Ok(SourceOutput::Data(vec![Record::new(0, self.next - 1)]))
    }

    async fn on_job_success(&mut self) -> Result<(), BoxError> {
        self.successes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn sources_hear_of_success_only_when_every_subtask_finished_without_error() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    for fail_at in [None, Some(99)] {
        let successes = Arc::new(AtomicUsize::new(0));
        let env = StreamEnv::new(JobConfig::named("t").with_parallelism(2));
        let shared = successes.clone();
        let numbers = env.add_source("counting", move |_| {
            Box::new(Counting {
                next: 0,
                n: 100,
                successes: shared.clone(),
            }) as Box<dyn Source<i64>>
        });
        // The failure (at the last record) happens downstream, in another task, typically after
        // the sources ended.
        numbers
            .transform(
                "maybe-fail",
                Partitioning::Rebalance,
                move |_: &SubtaskInfo| {
                    Box::new(FailAt(fail_at.unwrap_or(-1))) as Box<dyn Operator<i64, i64>>
                },
            )
            .with_parallelism(1)
            .collect();
        let result = tokio::time::timeout(Duration::from_secs(10), env.execute())
            .await
            .expect("no hang");
        match fail_at {
            None => {
                result.unwrap();
                assert_eq!(
                    successes.load(Ordering::SeqCst),
                    2,
                    "each source subtask once"
                );
            }
            Some(_) => {
                result.unwrap_err();
                assert_eq!(
                    successes.load(Ordering::SeqCst),
                    0,
                    "a failed job commits nothing"
                );
            }
        }
    }
}
