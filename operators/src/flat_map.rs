//! `flat_map` and `filter_map`: zero or more output records per input record.

use std::sync::Arc;

use omstream_core::runtime::{
    Batch, Data, Operator, OperatorContext, OperatorResult, Partitioning, Stream, SubtaskInfo,
};

/// Expands or drops records.
pub trait FlatMap<T> {
    /// Replaces every record by the records `f` returns, all with its event time.
    ///
    /// # Examples
    /// ```
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let words = env
    ///     .from_iter("lines", vec!["a b", "c"])
    ///     .flat_map(|line| line.split(' ').map(str::to_string).collect::<Vec<_>>())
    ///     .collect();
    /// env.execute().await.unwrap();
    /// assert_eq!(words.values(), vec!["a", "b", "c"]);
    /// # });
    /// ```
    fn flat_map<U: Data, I: IntoIterator<Item = U>>(
        &self,
        f: impl Fn(T) -> I + Send + Sync + 'static,
    ) -> Stream<U>;

    /// Maps and filters in one step: `None` drops the record.
    ///
    /// # Examples
    /// ```
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let parsed = env.from_iter("raw", vec!["1", "x", "3"]).filter_map(|s| s.parse::<i32>().ok()).collect();
    /// env.execute().await.unwrap();
    /// assert_eq!(parsed.values(), vec![1, 3]);
    /// # });
    /// ```
    fn filter_map<U: Data>(&self, f: impl Fn(T) -> Option<U> + Send + Sync + 'static) -> Stream<U>;
}

impl<T: Data> FlatMap<T> for Stream<T> {
    fn flat_map<U: Data, I: IntoIterator<Item = U>>(
        &self,
        f: impl Fn(T) -> I + Send + Sync + 'static,
    ) -> Stream<U> {
        let f = Arc::new(f);
        self.transform("flat_map", Partitioning::Forward, move |_: &SubtaskInfo| {
            Box::new(FlatMapOperator { f: f.clone() }) as Box<dyn Operator<T, U>>
        })
    }

    fn filter_map<U: Data>(&self, f: impl Fn(T) -> Option<U> + Send + Sync + 'static) -> Stream<U> {
        let f = Arc::new(f);
        self.transform(
            "filter_map",
            Partitioning::Forward,
            move |_: &SubtaskInfo| {
                Box::new(FlatMapOperator { f: f.clone() }) as Box<dyn Operator<T, U>>
            },
        )
    }
}

struct FlatMapOperator<F> {
    f: Arc<F>,
}

impl<T, U, I, F> Operator<T, U> for FlatMapOperator<F>
where
    T: Data,
    U: Data,
    I: IntoIterator<Item = U>,
    F: Fn(T) -> I + Send + Sync + 'static,
{
    fn process_batch(&mut self, batch: Batch<T>, ctx: &mut OperatorContext<U>) -> OperatorResult {
        let f = &*self.f;
        for record in batch {
            let timestamp = record.timestamp;
            for value in f(record.value) {
                ctx.emit(timestamp, value);
            }
        }
        Ok(())
    }
}
