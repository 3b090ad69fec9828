//! `assign_timestamps`: event time and watermarks from the records themselves, for sources
//! that carry no usable time.

use std::sync::Arc;

use omstream_core::runtime::{
    Batch, Data, EventTime, Operator, OperatorContext, OperatorResult, PartitionWatermarks,
    Partitioning, Stream, SubtaskInfo, WatermarkStrategy, WatermarkUpdate,
};

/// Sets event time from a field.
pub trait AssignTimestamps<T> {
    /// Sets each record's event time to `extract(record)` and replaces the input's watermarks
    /// by ones generated with `strategy`, each subtask's input counted as one partition.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(1));
    /// let timed = env
    ///     .from_iter("events", vec![(1_000i64, "a"), (500, "b")])
    ///     .assign_timestamps(|(time, _)| *time, strategy)
    ///     .collect();
    /// env.execute().await.unwrap();
    /// let times: Vec<i64> = timed.records().iter().map(|r| r.timestamp).collect();
    /// assert_eq!(times, vec![1_000, 500]);
    /// # });
    /// ```
    fn assign_timestamps(
        &self,
        extract: impl Fn(&T) -> EventTime + Send + Sync + 'static,
        strategy: WatermarkStrategy,
    ) -> Stream<T>;
}

impl<T: Data> AssignTimestamps<T> for Stream<T> {
    fn assign_timestamps(
        &self,
        extract: impl Fn(&T) -> EventTime + Send + Sync + 'static,
        strategy: WatermarkStrategy,
    ) -> Stream<T> {
        let extract = Arc::new(extract);
        self.transform(
            "assign_timestamps",
            Partitioning::Forward,
            move |_: &SubtaskInfo| {
                Box::new(TimestampAssigner {
                    extract: extract.clone(),
                    watermarks: PartitionWatermarks::new(strategy, 1, 0),
                }) as Box<dyn Operator<T, T>>
            },
        )
    }
}

struct TimestampAssigner<F> {
    extract: Arc<F>,
    watermarks: PartitionWatermarks,
}

impl<T: Data, F: Fn(&T) -> EventTime + Send + Sync + 'static> Operator<T, T>
    for TimestampAssigner<F>
{
    fn process_batch(
        &mut self,
        mut batch: Batch<T>,
        ctx: &mut OperatorContext<T>,
    ) -> OperatorResult {
        let now = ctx.processing_time();
        for record in &mut batch {
            record.timestamp = (self.extract)(&record.value);
            self.watermarks.observe(0, record.timestamp, now);
        }
        ctx.emit_batch(batch);
        if let WatermarkUpdate::Advanced(watermark) = self.watermarks.current(now) {
            ctx.emit_watermark(watermark);
        }
        Ok(())
    }

    fn generates_watermarks(&self) -> bool {
        true
    }
}
