//! Incremental window functions: an accumulator per pane (or session, or count pane) that each
//! record updates in place, merged when a window fires.

use std::fmt;
use std::ops::Add;
use std::sync::Arc;

use omstream_core::runtime::Data;
use omstream_core::state::StateValue;

/// An incremental aggregation: how records fold into an accumulator and how accumulators merge.
///
/// A window keeps one accumulator per pane (the greatest common divisor of a sliding window's
/// size and slide), per session or per count pane, and adds each record to exactly one of
/// them; firing a window merges the accumulators of its panes. So `merge` must be associative
/// and agree with `add`: adding records `a` then `b` to one accumulator, and adding them to two
/// and merging, give the same result (up to floating-point rounding).
///
/// The accumulator lives in keyed state, so it is a serde type.
///
/// # Contract
/// `result` is only called on an accumulator that at least one record was added to (directly
/// or through `merge`): a window never fires empty.
///
/// # Examples
/// The spread (max - min) of the amounts in a window:
/// ```
/// use std::time::Duration;
/// use omstream_operators::prelude::*;
///
/// #[derive(Clone)]
/// struct Spread;
///
/// impl AggregateFunction<i64> for Spread {
///     type Acc = Option<(i64, i64)>;
///     type Out = i64;
///     fn create(&self) -> Self::Acc {
///         None
///     }
///     fn add(&self, acc: &mut Self::Acc, value: &i64) {
///         let (lo, hi) = acc.get_or_insert((*value, *value));
///         *lo = (*lo).min(*value);
///         *hi = (*hi).max(*value);
///     }
///     fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) {
///         if let Some((lo, hi)) = *other {
///             self.add(acc, &lo);
///             self.add(acc, &hi);
///         }
///     }
///     fn result(&self, acc: &Self::Acc) -> i64 {
///         acc.map_or(0, |(lo, hi)| hi - lo)
///     }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let env = StreamEnv::default();
/// let records = vec![Record::new(1, 5), Record::new(2, 9), Record::new(3, 2)];
/// let spreads = env
///     .from_records("amounts", records, WatermarkStrategy::default())
///     .key_by(|_| 0)
///     .window(TimeWindows::tumbling(Duration::from_secs(1)))
///     .aggregate(Spread)
///     .collect();
/// env.execute().await.unwrap();
/// assert_eq!(spreads.values()[0].value, 7);
/// # });
/// ```
pub trait AggregateFunction<T>: Clone + Send + Sync + 'static {
    /// What is kept per pane: a serde value, updated in place.
    type Acc: StateValue;
    /// What a fired window produces.
    type Out: Data;

    /// An empty accumulator.
    fn create(&self) -> Self::Acc;

    /// Adds one record to an accumulator.
    fn add(&self, acc: &mut Self::Acc, value: &T);

    /// Adds everything `other` holds to `acc`.
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc);

    /// The window's result from its merged accumulator.
    fn result(&self, acc: &Self::Acc) -> Self::Out;
}

/// The number of records in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count;

impl<T> AggregateFunction<T> for Count {
    type Acc = u64;
    type Out = u64;

    fn create(&self) -> u64 {
        0
    }

    #[inline]
    fn add(&self, acc: &mut u64, _: &T) {
        *acc += 1;
    }

    fn merge(&self, acc: &mut u64, other: &u64) {
        *acc += *other;
    }

    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

/// Writes the name of a function-holding aggregate (closures print nothing useful).
macro_rules! debug_by_name {
    ($name:ident) => {
        impl<F> fmt::Debug for $name<F> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(stringify!($name))
            }
        }

        impl<F> Clone for $name<F> {
            fn clone(&self) -> Self {
                $name(self.0.clone())
            }
        }

        impl<F> $name<F> {
            /// The aggregate over what `f` returns for each record.
            pub fn new(f: F) -> Self {
                $name(Arc::new(f))
            }
        }
    };
}

/// The sum of what a function returns for each record (any `Copy` number; a float sum may
/// differ in the last bits with the order panes are merged in).
pub struct Sum<F>(Arc<F>);
debug_by_name!(Sum);

impl<T, N, F> AggregateFunction<T> for Sum<F>
where
    F: Fn(&T) -> N + Send + Sync + 'static,
    N: Copy + Default + Add<Output = N> + StateValue + Sync,
{
    type Acc = N;
    type Out = N;

    fn create(&self) -> N {
        N::default()
    }

    #[inline]
    fn add(&self, acc: &mut N, value: &T) {
        *acc = *acc + (self.0)(value);
    }

    fn merge(&self, acc: &mut N, other: &N) {
        *acc = *acc + *other;
    }

    fn result(&self, acc: &N) -> N {
        *acc
    }
}

/// Keeps `candidate` in `acc` when `better(candidate, current)` or `acc` is empty.
fn keep<N: Clone>(acc: &mut Option<N>, candidate: N, better: impl Fn(&N, &N) -> bool) {
    match acc {
        Some(current) if !better(&candidate, current) => {}
        _ => *acc = Some(candidate),
    }
}

/// The smallest of what a function returns for each record, compared with `PartialOrd` (a NaN
/// never replaces a value: filter NaNs out first).
pub struct Min<F>(Arc<F>);
debug_by_name!(Min);

/// The largest of what a function returns for each record, compared with `PartialOrd` (a NaN
/// never replaces a value: filter NaNs out first).
pub struct Max<F>(Arc<F>);
debug_by_name!(Max);

macro_rules! extreme {
    ($name:ident, $op:tt) => {
        impl<T, N, F> AggregateFunction<T> for $name<F>
        where
            F: Fn(&T) -> N + Send + Sync + 'static,
            N: PartialOrd + StateValue + Sync,
        {
            type Acc = Option<N>;
            type Out = N;

            fn create(&self) -> Option<N> {
                None
            }

            #[inline]
            fn add(&self, acc: &mut Option<N>, value: &T) {
                keep(acc, (self.0)(value), |a, b| a $op b);
            }

            fn merge(&self, acc: &mut Option<N>, other: &Option<N>) {
                if let Some(other) = other {
                    keep(acc, other.clone(), |a, b| a $op b);
                }
            }

            /// # Panics
            /// On an empty accumulator, which a window never has (see the trait's contract).
            fn result(&self, acc: &Option<N>) -> N {
                acc.clone()
                    .expect("a window fires with at least one record")
            }
        }
    };
}

extreme!(Min, <);
extreme!(Max, >);

/// The mean of what a function returns for each record; `NaN` for no record.
pub struct Avg<F>(Arc<F>);
debug_by_name!(Avg);

impl<T, F> AggregateFunction<T> for Avg<F>
where
    F: Fn(&T) -> f64 + Send + Sync + 'static,
{
    /// The sum and the count.
    type Acc = (f64, u64);
    type Out = f64;

    fn create(&self) -> (f64, u64) {
        (0.0, 0)
    }

    #[inline]
    fn add(&self, acc: &mut (f64, u64), value: &T) {
        acc.0 += (self.0)(value);
        acc.1 += 1;
    }

    fn merge(&self, acc: &mut (f64, u64), other: &(f64, u64)) {
        acc.0 += other.0;
        acc.1 += other.1;
    }

    fn result(&self, acc: &(f64, u64)) -> f64 {
        acc.0 / acc.1 as f64
    }
}

/// Folds the records of a window with a function `f(acc, next) -> acc`, starting from the first
/// record. `f` must be associative: panes are reduced separately, then combined.
pub struct Reduce<F>(Arc<F>);
debug_by_name!(Reduce);

impl<T, F> AggregateFunction<T> for Reduce<F>
where
    F: Fn(T, &T) -> T + Send + Sync + 'static,
    T: StateValue + Sync,
{
    type Acc = Option<T>;
    type Out = T;

    fn create(&self) -> Option<T> {
        None
    }

    #[inline]
    fn add(&self, acc: &mut Option<T>, value: &T) {
        *acc = Some(match acc.take() {
            Some(current) => (self.0)(current, value),
            None => value.clone(),
        });
    }

    fn merge(&self, acc: &mut Option<T>, other: &Option<T>) {
        if let Some(other) = other {
            self.add(acc, other);
        }
    }

    /// # Panics
    /// On an empty accumulator, which a window never has (see the trait's contract).
    fn result(&self, acc: &Option<T>) -> T {
        acc.clone()
            .expect("a window fires with at least one record")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adds `values` one by one, and also split in two halves merged, and checks both agree.
    fn fold<T, A: AggregateFunction<T>>(agg: &A, values: &[T]) -> A::Out
    where
        A::Out: PartialEq + fmt::Debug,
    {
        let mut whole = agg.create();
        values.iter().for_each(|v| agg.add(&mut whole, v));
        let (left, right) = values.split_at(values.len() / 2);
        let (mut a, mut b) = (agg.create(), agg.create());
        left.iter().for_each(|v| agg.add(&mut a, v));
        right.iter().for_each(|v| agg.add(&mut b, v));
        agg.merge(&mut a, &b);
        assert_eq!(
            agg.result(&a),
            agg.result(&whole),
            "merge disagrees with add"
        );
        agg.result(&whole)
    }

    #[test]
    fn built_in_aggregates_agree_split_or_whole() {
        let values = [4i64, -2, 9, 9, 0, 7];
        assert_eq!(fold(&Count, &values), 6);
        assert_eq!(fold(&Sum::new(|v: &i64| *v), &values), 27);
        assert_eq!(fold(&Min::new(|v: &i64| *v), &values), -2);
        assert_eq!(fold(&Max::new(|v: &i64| *v), &values), 9);
        assert_eq!(fold(&Avg::new(|v: &i64| *v as f64), &values), 4.5);
        assert_eq!(fold(&Reduce::new(|a: i64, b: &i64| a * 10 + b), &[1i64]), 1);
        assert_eq!(fold(&Reduce::new(|a: i64, b: &i64| a + b), &values), 27);
    }

    #[test]
    fn max_skips_nan() {
        let max = Max::new(|v: &f64| *v);
        let mut acc = max.create();
        [1.0, f64::NAN, 3.0]
            .iter()
            .for_each(|v| max.add(&mut acc, v));
        assert_eq!(max.result(&acc), 3.0);
    }

    #[test]
    fn the_mean_of_nothing_is_nan() {
        let avg = Avg::new(|v: &f64| *v);
        assert!(avg.result(&avg.create()).is_nan());
    }
}
