//! `join_table`, `join_table_updates`: a stream joined with a table as of each record's time.

use std::sync::Arc;

use omstream_core::runtime::{Data, KeyedStream, Operator, Stream, SubtaskInfo};
use omstream_core::state::{StateKey, StateValue};

use super::connect::connect_keyed;
use super::either::Either;
use super::stats::{JoinLeft, JoinStats};
use super::temporal_join::TemporalJoinOperator;

/// Joins a keyed stream with a table kept from a keyed stream of updates (latest value wins
/// per key), on event time.
///
/// The join is *temporal*: a left record at time `t` meets the table's value for its key **as
/// of `t`**, that is the update for the key with the greatest time at or before `t`. The
/// result does not depend on how the two inputs interleave, so a job that reads the table's
/// queue from the beginning (bootstrap) gives the same results as one that kept up all along:
///
/// - A left record waits (in keyed state) until the watermark, the minimum of both inputs',
///   reaches `t`: then every update up to `t` has arrived. It is then joined and emitted with
///   its own time `t`. Output therefore lags the slower input by its watermark delay.
/// - Per key, the table keeps the newest version at or before the watermark and every later
///   one; older versions are dropped when the watermark passes the newer one, and a deletion
///   with nothing after it leaves no state.
/// - Two updates of a key at the same time: the one the join reads last wins (keep times
///   distinct per key for deterministic results).
/// - While a table input is idle (its source has seen nothing for its watermark strategy's
///   `idle_timeout`), it is left out of the watermark: left records then wait only for the
///   left input's watermark and meet the table as it is. A table source with no idle timeout
///   that stops receiving updates holds every left record back. Give the table's source an
///   idle timeout, and the left one none, so the left input never falls behind the watermark.
/// - A table update at or behind the watermark is *late*: left records up to the watermark
///   were joined without it. It is counted in the [`JoinStats`] (if any) and applies to later
///   lookups unless a newer version of the key is already known.
/// - A left record at or behind the watermark is joined at once if the versions still kept
///   tell the table as of its time, else dropped and counted as late.
pub trait TableJoin<K, L> {
    /// The join with a table whose updates are the records of `table`: each the key's new
    /// value from its time on. `join(key, left, value)` gets the value as of the left record's
    /// time (`None` when the key had none) and returns the result to emit, if any: return
    /// `None` when `value` is `None` for an inner join, or emit something for a left outer
    /// join.
    ///
    /// # Examples
    /// Each order priced in euros with the exchange rate of its currency at the order's time:
    /// ```
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let strategy = WatermarkStrategy::default();
    /// let usd = || "USD".to_string();
    /// let rates = env.from_records(
    ///     "rates",
    ///     vec![Record::new(1_000, (usd(), 0.90)), Record::new(6_000, (usd(), 0.95))],
    ///     strategy,
    /// );
    /// let orders = env.from_records(
    ///     "orders",
    ///     vec![Record::new(5_000, (usd(), 100.0)), Record::new(7_000, (usd(), 10.0))],
    ///     strategy,
    /// );
    /// let priced = orders
    ///     .key_by(|(currency, _): &(String, f64)| currency.clone())
    ///     .join_table(
    ///         &rates.key_by(|(currency, _): &(String, f64)| currency.clone()),
    ///         |_, (_, amount), rate| rate.map(|(_, rate)| amount * rate),
    ///     )
    ///     .collect();
    /// env.execute().await.unwrap();
    /// let records = priced.records();
    /// assert_eq!(records.len(), 2);
    /// assert_eq!((records[0].timestamp, records[0].value), (5_000, 90.0));
    /// assert_eq!((records[1].timestamp, records[1].value), (7_000, 9.5));
    /// # });
    /// ```
    fn join_table<R, O, F>(&self, table: &KeyedStream<K, R>, join: F) -> Stream<O>
    where
        R: StateValue,
        O: Data,
        F: Fn(&K, &L, Option<&R>) -> Option<O> + Send + Sync + 'static;

    /// The join with a table kept from a changelog: `(key, Some(value))` sets the key's value
    /// from the update's time on, `(key, None)` deletes it. Otherwise as
    /// [`join_table`](TableJoin::join_table).
    ///
    /// # Examples
    /// Events with the plan their user had at the time (a left outer join):
    /// ```
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let strategy = WatermarkStrategy::default();
    /// let ann = || "ann".to_string();
    /// let plans = env.from_records(
    ///     "plans",
    ///     vec![
    ///         Record::new(1_000, (ann(), Some("gold".to_string()))),
    ///         Record::new(3_000, (ann(), None)),
    ///     ],
    ///     strategy,
    /// );
    /// let events = env.from_records(
    ///     "events",
    ///     vec![Record::new(2_000, (ann(), 1u32)), Record::new(4_000, (ann(), 2))],
    ///     strategy,
    /// );
    /// let with_plans = events
    ///     .key_by(|(user, _): &(String, u32)| user.clone())
    ///     .join_table_updates(&plans, |_, (_, event), plan| Some((*event, plan.cloned())))
    ///     .collect();
    /// env.execute().await.unwrap();
    /// assert_eq!(
    ///     with_plans.values(),
    ///     vec![(1, Some("gold".to_string())), (2, None)]
    /// );
    /// # });
    /// ```
    fn join_table_updates<R, O, F>(&self, updates: &Stream<(K, Option<R>)>, join: F) -> Stream<O>
    where
        R: StateValue,
        O: Data,
        F: Fn(&K, &L, Option<&R>) -> Option<O> + Send + Sync + 'static;
}

impl<K: StateKey, L: StateValue, S: JoinLeft<K, L>> TableJoin<K, L> for S {
    fn join_table<R, O, F>(&self, table: &KeyedStream<K, R>, join: F) -> Stream<O>
    where
        R: StateValue,
        O: Data,
        F: Fn(&K, &L, Option<&R>) -> Option<O> + Send + Sync + 'static,
    {
        build(self.keyed(), table, Some, join, self.stats())
    }

    fn join_table_updates<R, O, F>(&self, updates: &Stream<(K, Option<R>)>, join: F) -> Stream<O>
    where
        R: StateValue,
        O: Data,
        F: Fn(&K, &L, Option<&R>) -> Option<O> + Send + Sync + 'static,
    {
        let updates = updates.key_by(|(key, _): &(K, Option<R>)| key.clone());
        build(
            self.keyed(),
            &updates,
            |(_, value)| value,
            join,
            self.stats(),
        )
    }
}

fn build<K, L, U, R, O, F>(
    left: &KeyedStream<K, L>,
    table: &KeyedStream<K, U>,
    table_value: fn(U) -> Option<R>,
    join: F,
    stats: JoinStats,
) -> Stream<O>
where
    K: StateKey,
    L: StateValue,
    U: Data,
    R: StateValue,
    O: Data,
    F: Fn(&K, &L, Option<&R>) -> Option<O> + Send + Sync + 'static,
{
    let join = Arc::new(join);
    let (left_key, table_key) = (left.key_fn(), table.key_fn());
    connect_keyed("join_table", left, table, move |_: &SubtaskInfo| {
        Box::new(TemporalJoinOperator::new(
            join.clone(),
            left_key.clone(),
            table_key.clone(),
            table_value,
            stats.clone(),
        )) as Box<dyn Operator<Either<L, U>, O>>
    })
}
