//! `map`: one output record per input record, same event time.

use std::sync::Arc;

use omstream_core::runtime::{
    Batch, Data, Operator, OperatorContext, OperatorResult, Partitioning, Record, Stream,
    SubtaskInfo,
};

/// Transforms every record.
pub trait Map<T> {
    /// Applies `f` to every record; the event time is kept.
    ///
    /// # Examples
    /// ```
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let doubled = env.from_iter("numbers", 1..=3).map(|n| n * 2).collect();
    /// env.execute().await.unwrap();
    /// assert_eq!(doubled.values(), vec![2, 4, 6]);
    /// # });
    /// ```
    fn map<U: Data>(&self, f: impl Fn(T) -> U + Send + Sync + 'static) -> Stream<U>;
}

impl<T: Data> Map<T> for Stream<T> {
    fn map<U: Data>(&self, f: impl Fn(T) -> U + Send + Sync + 'static) -> Stream<U> {
        let f = Arc::new(f);
        self.transform("map", Partitioning::Forward, move |_: &SubtaskInfo| {
            Box::new(MapOperator { f: f.clone() }) as Box<dyn Operator<T, U>>
        })
    }
}

struct MapOperator<F> {
    f: Arc<F>,
}

impl<T, U, F> Operator<T, U> for MapOperator<F>
where
    T: Data,
    U: Data,
    F: Fn(T) -> U + Send + Sync + 'static,
{
    fn process_batch(&mut self, batch: Batch<T>, ctx: &mut OperatorContext<U>) -> OperatorResult {
        let f = &*self.f;
        ctx.emit_batch(
            batch
                .into_iter()
                .map(|r| Record {
                    timestamp: r.timestamp,
                    value: f(r.value),
                })
                .collect(),
        );
        Ok(())
    }
}
