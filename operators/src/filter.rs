//! `filter`: keeps the records a predicate accepts.

use std::sync::Arc;

use omstream_core::runtime::{
    Batch, Data, Operator, OperatorContext, OperatorResult, Partitioning, Stream, SubtaskInfo,
};

/// Keeps some records.
pub trait Filter<T> {
    /// Keeps the records for which `predicate` is true, in order, without copying them.
    ///
    /// # Examples
    /// ```
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let even = env.from_iter("numbers", 1..=6).filter(|n| n % 2 == 0).collect();
    /// env.execute().await.unwrap();
    /// assert_eq!(even.values(), vec![2, 4, 6]);
    /// # });
    /// ```
    fn filter(&self, predicate: impl Fn(&T) -> bool + Send + Sync + 'static) -> Stream<T>;
}

impl<T: Data> Filter<T> for Stream<T> {
    fn filter(&self, predicate: impl Fn(&T) -> bool + Send + Sync + 'static) -> Stream<T> {
        let predicate = Arc::new(predicate);
        self.transform("filter", Partitioning::Forward, move |_: &SubtaskInfo| {
            Box::new(FilterOperator {
                predicate: predicate.clone(),
            }) as Box<dyn Operator<T, T>>
        })
    }
}

struct FilterOperator<F> {
    predicate: Arc<F>,
}

impl<T: Data, F: Fn(&T) -> bool + Send + Sync + 'static> Operator<T, T> for FilterOperator<F> {
    fn process_batch(
        &mut self,
        mut batch: Batch<T>,
        ctx: &mut OperatorContext<T>,
    ) -> OperatorResult {
        let predicate = &*self.predicate;
        batch.retain(|r| predicate(&r.value));
        if !batch.is_empty() {
            ctx.emit_batch(batch);
        }
        Ok(())
    }
}
