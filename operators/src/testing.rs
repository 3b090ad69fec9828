//! Operators built exactly as the job graph builds them, for tests that drive one operator
//! subtask by hand through an [`OperatorContext`](omstream_core::runtime::OperatorContext):
//! records, watermarks, checkpoints and restores in the order a test wants. Not a stable API.

use std::sync::Arc;

use omstream_core::runtime::{Data, KeyedStream, Operator};
use omstream_core::state::{StateKey, StateValue};

use crate::join::{Either, IntervalBounds, JoinStats};
use crate::process::{KeyedProcessFunction, ProcessOperator};
use crate::window::{AggregateFunction, TimeWindow, TimeWindows, WindowedStream};

pub use crate::window::WindowEvent;

/// A changelog entry of a table: `(key, Some(value))` sets, `(key, None)` deletes.
pub type Changelog<K, R> = (K, Option<R>);

/// One subtask of the window operator of `windowed` with an aggregate, as
/// [`WindowedStream::aggregate`] adds it (`late_records`: as if
/// [`late_records`](crate::window::WindowResults::late_records) was asked for).
pub fn window_aggregate<K: StateKey, T: Data, A: AggregateFunction<T>>(
    windowed: &WindowedStream<K, T>,
    function: A,
    late_records: bool,
) -> Box<dyn Operator<T, WindowEvent<K, A::Out, T>>> {
    windowed.aggregate_operator(function, late_records)
}

/// One subtask of the window operator of `windowed` with a full-window function, as
/// [`WindowedStream::apply`] adds it.
pub fn window_apply<K: StateKey, T: StateValue + Data + Sync, O: Data>(
    windowed: &WindowedStream<K, T>,
    f: impl Fn(&K, &TimeWindow, &[T]) -> O + Send + Sync + 'static,
    late_records: bool,
) -> Box<dyn Operator<T, WindowEvent<K, O, T>>> {
    windowed.apply_operator(f, late_records)
}

/// One subtask of [`window_join`](crate::join::WindowJoin::window_join).
pub fn window_join<K, L, R, O, F>(
    left: &KeyedStream<K, L>,
    right: &KeyedStream<K, R>,
    windows: TimeWindows,
    join: F,
) -> Box<dyn Operator<Either<L, R>, O>>
where
    K: StateKey,
    L: StateValue + Data,
    R: StateValue + Data,
    O: Data,
    F: Fn(&K, &L, &R) -> O + Send + Sync + 'static,
{
    Box::new(crate::join::window_join::WindowJoinOperator::new(
        windows,
        Arc::new(join),
        left.key_fn(),
        right.key_fn(),
        JoinStats::new(),
    ))
}

/// One subtask of [`interval_join`](crate::join::IntervalJoin::interval_join).
pub fn interval_join<K, L, R, O, F>(
    left: &KeyedStream<K, L>,
    right: &KeyedStream<K, R>,
    bounds: IntervalBounds,
    join: F,
) -> Box<dyn Operator<Either<L, R>, O>>
where
    K: StateKey,
    L: StateValue + Data,
    R: StateValue + Data,
    O: Data,
    F: Fn(&K, &L, &R) -> O + Send + Sync + 'static,
{
    Box::new(crate::join::interval_join::IntervalJoinOperator::new(
        bounds,
        Arc::new(join),
        left.key_fn(),
        right.key_fn(),
        JoinStats::new(),
    ))
}

/// One subtask of [`join_table`](crate::join::TableJoin::join_table).
pub fn join_table<K, L, R, O, F>(
    left: &KeyedStream<K, L>,
    table: &KeyedStream<K, R>,
    join: F,
) -> Box<dyn Operator<Either<L, R>, O>>
where
    K: StateKey,
    L: StateValue + Data,
    R: StateValue + Data,
    O: Data,
    F: Fn(&K, &L, Option<&R>) -> Option<O> + Send + Sync + 'static,
{
    Box::new(crate::join::temporal_join::TemporalJoinOperator::new(
        Arc::new(join),
        left.key_fn(),
        table.key_fn(),
        Some,
        JoinStats::new(),
    ))
}

/// One subtask of [`join_table_updates`](crate::join::TableJoin::join_table_updates): the
/// right input is the changelog, `(key, Some(value))` or `(key, None)`.
pub fn join_table_updates<K, L, R, O, F>(
    left: &KeyedStream<K, L>,
    join: F,
) -> Box<dyn Operator<Either<L, Changelog<K, R>>, O>>
where
    K: StateKey,
    L: StateValue + Data,
    R: StateValue + Data,
    O: Data,
    F: Fn(&K, &L, Option<&R>) -> Option<O> + Send + Sync + 'static,
{
    Box::new(crate::join::temporal_join::TemporalJoinOperator::new(
        Arc::new(join),
        left.key_fn(),
        Arc::new(|(key, _): &Changelog<K, R>| key.clone()),
        |(_, value)| value,
        JoinStats::new(),
    ))
}

/// One subtask of [`process`](crate::Process::process), running `function`.
pub fn process<K, T, O, F>(keyed: &KeyedStream<K, T>, function: F) -> Box<dyn Operator<T, O>>
where
    K: StateKey,
    T: Data,
    O: Data,
    F: KeyedProcessFunction<K, T, O>,
{
    Box::new(ProcessOperator::new(function, keyed.key_fn()))
}
