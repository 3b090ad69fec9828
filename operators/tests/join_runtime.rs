//! The joins inside running jobs, where the runtime's part matters: refusing a configuration
//! when the job starts, and the watermark of a join whose table input goes idle.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use omstream_operators::core::runtime::{
    BoxError, PartitionWatermarks, Source, SourceContext, SourceOutput, WatermarkUpdate,
};
use omstream_operators::prelude::*;

#[tokio::test]
async fn a_window_join_on_session_windows_fails_when_the_job_starts() {
    let env = StreamEnv::default();
    let left = env.from_iter("left", vec![1u32]);
    let right = env.from_iter("right", vec![1u32]);
    let _joined = left
        .key_by(|v: &u32| *v)
        .window_join(
            &right.key_by(|v: &u32| *v),
            TimeWindows::session(Duration::from_secs(1)),
            |_, l, r| l + r,
        )
        .collect();
    let error = env.execute().await.unwrap_err().to_string();
    assert!(error.contains("window_join"), "{error}");
    assert!(error.contains("tumbling or sliding"), "{error}");
}

/// One partition of records, handed out one per poll; then nothing, forever (until the job
/// stops), with watermarks and idleness as `strategy` says.
struct Scripted<T> {
    records: VecDeque<Record<T>>,
    strategy: WatermarkStrategy,
    watermarks: Option<PartitionWatermarks>,
}

impl<T> Scripted<T> {
    fn new(records: Vec<Record<T>>, strategy: WatermarkStrategy) -> Self {
        Scripted {
            records: records.into(),
            strategy,
            watermarks: None,
        }
    }
}

#[async_trait]
impl<T: Data> Source<T> for Scripted<T> {
    async fn poll(&mut self, ctx: &SourceContext) -> Result<SourceOutput<T>, BoxError> {
        let now = ctx.clock.now();
        let strategy = self.strategy;
        let watermarks = self
            .watermarks
            .get_or_insert_with(|| PartitionWatermarks::new(strategy, 1, now));
        if let Some(record) = self.records.pop_front() {
            watermarks.observe(0, record.timestamp, now);
            return Ok(SourceOutput::Data(vec![record]));
        }
        match watermarks.current(now) {
            WatermarkUpdate::Advanced(w) => Ok(SourceOutput::Watermark(w)),
            WatermarkUpdate::Idle => Ok(SourceOutput::Idle),
            WatermarkUpdate::Unchanged => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(SourceOutput::NoData)
            }
        }
    }
}

fn scripted<T: Data + Sync>(
    env: &StreamEnv,
    name: &str,
    records: Vec<Record<T>>,
    strategy: WatermarkStrategy,
) -> Stream<T> {
    env.add_source(name, move |_| {
        Box::new(Scripted::new(records.clone(), strategy)) as Box<dyn Source<T>>
    })
}

/// Lets the (paused) clock run for `millis` while the job works.
async fn run_for(millis: u64) {
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_table_stops_holding_left_records_back_after_its_idle_timeout() {
    let env = StreamEnv::default();
    let in_order = WatermarkStrategy::default();
    // The stream never idles; the table goes quiet after one update and is idle after 1 s.
    let left = scripted(
        &env,
        "orders",
        (1..=3).map(|i| Record::new(i * 1_000, i as u32)).collect(),
        in_order.with_idle_timeout(None),
    );
    let table = scripted(
        &env,
        "prices",
        vec![Record::new(0, 'a')],
        in_order.with_idle_timeout(Some(Duration::from_secs(1))),
    );
    let joined = left
        .key_by(|_: &u32| 0u8)
        .join_table(&table.key_by(|_: &char| 0u8), |_, order, price| {
            Some((*order, price.copied()))
        })
        .collect();
    let job = env.spawn().unwrap();
    run_for(500).await;
    assert!(
        joined.is_empty(),
        "the table's watermark (-1) holds the orders back"
    );
    run_for(1_000).await;
    // Without the table, the watermark is the orders' own (2_999): 1_000 and 2_000 are joined,
    // with the table as it is; 3_000 waits for a watermark past it.
    assert_eq!(joined.values(), vec![(1, Some('a')), (2, Some('a'))]);
    job.stop();
    job.join().await.unwrap();
    assert_eq!(joined.values().last(), Some(&(3, Some('a'))));
}
