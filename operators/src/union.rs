//! `union`, `rebalance`, `broadcast`: merging streams and changing how records spread.

use omstream_core::runtime::{
    Batch, Data, Operator, OperatorContext, OperatorResult, Partitioning, Stream, SubtaskInfo,
};

/// Merges streams and redistributes records.
pub trait Union<T> {
    /// One stream of the records of `self` and `others`. Its watermark is the minimum of theirs;
    /// it ends when all have ended.
    ///
    /// # Examples
    /// ```
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let a = env.from_iter("a", vec![1, 2]);
    /// let b = env.from_iter("b", vec![3]);
    /// let all = a.union(&[b]).collect();
    /// env.execute().await.unwrap();
    /// let mut values = all.values();
    /// values.sort();
    /// assert_eq!(values, vec![1, 2, 3]);
    /// # });
    /// ```
    fn union(&self, others: &[Stream<T>]) -> Stream<T>;

    /// Spreads whole batches round robin over `parallelism` subtasks (to even out skew).
    fn rebalance(&self, parallelism: usize) -> Stream<T>;

    /// Sends every record to each of `parallelism` subtasks.
    fn broadcast(&self, parallelism: usize) -> Stream<T>;
}

impl<T: Data> Union<T> for Stream<T> {
    fn union(&self, others: &[Stream<T>]) -> Stream<T> {
        let mut inputs = vec![(self, Partitioning::Forward)];
        inputs.extend(others.iter().map(|s| (s, Partitioning::Forward)));
        self.env().add_operator("union", inputs, identity)
    }

    fn rebalance(&self, parallelism: usize) -> Stream<T> {
        self.transform("rebalance", Partitioning::Rebalance, identity)
            .with_parallelism(parallelism)
    }

    fn broadcast(&self, parallelism: usize) -> Stream<T> {
        self.transform("broadcast", Partitioning::Broadcast, identity)
            .with_parallelism(parallelism)
    }
}

fn identity<T: Data>(_: &SubtaskInfo) -> Box<dyn Operator<T, T>> {
    Box::new(Identity)
}

struct Identity;

impl<T: Data> Operator<T, T> for Identity {
    fn process_batch(&mut self, batch: Batch<T>, ctx: &mut OperatorContext<T>) -> OperatorResult {
        ctx.emit_batch(batch);
        Ok(())
    }
}
