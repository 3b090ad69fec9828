//! The stateless operators, union, timestamps and keyed process functions, run as real jobs.

use std::time::Duration;

use async_trait::async_trait;
use omstream_core::runtime::{BoxError, Source, SourceContext, SourceOutput, SubtaskInfo};
use omstream_operators::prelude::*;

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

#[tokio::test]
async fn stateless_operators_chain_at_any_parallelism() {
    for parallelism in [1, 4] {
        let env = StreamEnv::new(
            JobConfig::named("stateless")
                .with_parallelism(parallelism)
                .with_batch_size(10),
        );
        let partitions: Vec<Vec<Record<i64>>> = (0..4)
            .map(|p| (0..100).map(|i| Record::new(i, p * 100 + i)).collect())
            .collect();
        let out = env
            .from_partitions("numbers", partitions, WatermarkStrategy::default())
            .map(|n| n * 3)
            .filter(|n| n % 2 == 0)
            .flat_map(|n| vec![n, -n - 1])
            .filter_map(|n| (n >= 0).then_some(n))
            .collect();
        env.execute().await.unwrap();
        let expected: Vec<i64> = (0..400).map(|n| n * 3).filter(|n| n % 2 == 0).collect();
        assert_eq!(sorted(out.values()), expected, "parallelism {parallelism}");
    }
}

#[tokio::test]
async fn records_keep_their_event_time_through_stateless_operators() {
    let env = StreamEnv::default();
    let out = env
        .from_records(
            "timed",
            vec![Record::new(5, 1), Record::new(7, 2)],
            WatermarkStrategy::default(),
        )
        .map(|n| n * 10)
        .flat_map(|n| [n, n + 1])
        .collect();
    env.execute().await.unwrap();
    assert_eq!(
        out.records(),
        vec![
            Record::new(5, 10),
            Record::new(5, 11),
            Record::new(7, 20),
            Record::new(7, 21)
        ]
    );
}

#[tokio::test]
async fn union_rebalance_and_broadcast_keep_every_record() {
    let env = StreamEnv::default();
    let a = env.from_iter("a", 0..100i64);
    let b = env.from_iter("b", 100..150i64).with_parallelism(2);
    let c = env.from_iter("c", 150..160i64);
    let merged = a.union(&[b, c]).rebalance(3);
    let all = merged.collect();
    let copies = merged.broadcast(2).collect();
    env.execute().await.unwrap();
    assert_eq!(sorted(all.values()), (0..160).collect::<Vec<_>>());
    assert_eq!(copies.len(), 320);
}

/// Emits a timeout for a key that saw no record for 100 ms of event time, and a count on a
/// processing-time timer.
#[derive(Default)]
struct Timeouts {
    last_seen: Option<Box<dyn ValueState<String, i64>>>,
}

impl KeyedProcessFunction<String, (String, i64), String> for Timeouts {
    fn open(&mut self, states: &StateFactory<'_, String>) {
        self.last_seen = Some(states.value("last_seen"));
    }

    fn process(
        &mut self,
        key: &String,
        record: Record<(String, i64)>,
        ctx: &mut ProcessContext<'_, String, String>,
    ) -> OperatorResult {
        let last_seen = self.last_seen.as_mut().expect("opened");
        if let Some(previous) = last_seen.insert(key.clone(), record.timestamp) {
            ctx.delete_timer(key, previous + 100, TimeDomain::EventTime);
        }
        ctx.register_event_timer(key, record.timestamp + 100);
        Ok(())
    }

    fn on_timer(
        &mut self,
        key: &String,
        time: EventTime,
        domain: TimeDomain,
        ctx: &mut ProcessContext<'_, String, String>,
    ) -> OperatorResult {
        assert_eq!(domain, TimeDomain::EventTime);
        let last_seen = self.last_seen.as_mut().expect("opened");
        last_seen.remove(key);
        ctx.emit(time, format!("{key} timed out at {time}"));
        Ok(())
    }
}

#[tokio::test]
async fn process_functions_fire_event_time_timers_in_order_per_key() {
    let records = vec![
        Record::new(0, ("a".to_string(), 0)),
        Record::new(50, ("a".to_string(), 0)),
        Record::new(60, ("b".to_string(), 0)),
        Record::new(400, ("a".to_string(), 0)),
        Record::new(1_000, ("c".to_string(), 0)),
    ];
    for parallelism in [1, 3] {
        let env = StreamEnv::new(JobConfig::named("timeouts").with_parallelism(parallelism));
        let out = env
            .from_records("events", records.clone(), WatermarkStrategy::default())
            .key_by(|(key, _): &(String, i64)| key.clone())
            .process(Timeouts::default)
            .collect();
        env.execute().await.unwrap();
        assert_eq!(
            sorted(out.values()),
            // a@400 arrives before the watermark passes 150 and moves a's timeout to 500.
            vec![
                "a timed out at 500".to_string(),
                "b timed out at 160".to_string(),
                "c timed out at 1100".to_string(),
            ],
            "parallelism {parallelism}"
        );
    }
}

/// Counts records per key and reports the count every 1 s of processing time.
#[derive(Default)]
struct Heartbeat {
    counts: Option<Box<dyn ValueState<u8, u64>>>,
}

impl KeyedProcessFunction<u8, u8, (EventTime, u64)> for Heartbeat {
    fn open(&mut self, states: &StateFactory<'_, (EventTime, u64)>) {
        self.counts = Some(states.value("counts"));
    }

    fn process(
        &mut self,
        key: &u8,
        _: Record<u8>,
        ctx: &mut ProcessContext<'_, u8, (EventTime, u64)>,
    ) -> OperatorResult {
        let (count, created) = self
            .counts
            .as_mut()
            .expect("opened")
            .get_or_insert_with(key, &mut || 0);
        *count += 1;
        if created {
            let next = ctx.processing_time() + 1_000;
            ctx.register_processing_timer(key, next);
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        key: &u8,
        time: EventTime,
        domain: TimeDomain,
        ctx: &mut ProcessContext<'_, u8, (EventTime, u64)>,
    ) -> OperatorResult {
        assert_eq!(domain, TimeDomain::ProcessingTime);
        let count = *self.counts.as_mut().expect("opened").get(key).unwrap_or(&0);
        ctx.emit(time, (time, count));
        ctx.register_processing_timer(key, time + 1_000);
        Ok(())
    }
}

/// One record every 100 ms of (tokio) time, 25 in all. Cancel-safe, as a source must be: the
/// next deadline lives in `self`, so a dropped poll does not restart the wait.
struct Ticker {
    sent: u32,
    next_at: Option<tokio::time::Instant>,
}

#[async_trait]
impl Source<u8> for Ticker {
    async fn poll(&mut self, _: &SourceContext) -> Result<SourceOutput<u8>, BoxError> {
        if self.sent == 25 {
            return Ok(SourceOutput::Finished);
        }
        let next_at = *self
            .next_at
            .get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_millis(100));
        tokio::time::sleep_until(next_at).await;
        self.sent += 1;
        self.next_at = Some(next_at + Duration::from_millis(100));
        Ok(SourceOutput::Data(vec![Record::new(0, 7)]))
    }
}

#[tokio::test(start_paused = true)]
async fn process_functions_fire_processing_time_timers_on_the_tokio_clock() {
    let env = StreamEnv::default();
    let out = env
        .add_source("ticker", |_: &SubtaskInfo| {
            Box::new(Ticker {
                sent: 0,
                next_at: None,
            }) as Box<dyn Source<u8>>
        })
        .key_by(|k: &u8| *k)
        .process(Heartbeat::default)
        .collect();
    env.execute().await.unwrap();
    let counts: Vec<u64> = out.values().into_iter().map(|(_, count)| count).collect();
    // Records arrive at 100, 200, ... 2500 ms; the first registers a timer 1 s later (1100 ms),
    // which fires before the record due at the same instant (10 seen) and re-arms at 2100 ms
    // (20 seen). The input ends at 2500 ms, before the timer at 3100 ms.
    assert_eq!(counts, vec![10, 20]);
    let times: Vec<EventTime> = out.values().into_iter().map(|(time, _)| time).collect();
    assert_eq!(times[1] - times[0], 1_000);
}

#[tokio::test]
async fn assigned_timestamps_replace_the_input_watermarks() {
    let env = StreamEnv::default();
    let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(10))
        .with_idle_timeout(None);
    let out = env
        .from_iter("raw", vec![(100i64, 'a'), (95, 'b'), (300, 'c')])
        .assign_timestamps(|(t, _)| *t, strategy)
        .collect();
    env.execute().await.unwrap();
    let times: Vec<EventTime> = out.records().iter().map(|r| r.timestamp).collect();
    assert_eq!(times, vec![100, 95, 300]);
}
