//! The window builder: `keyed.window(..)` or `keyed.count_window(..)`, optional settings, then
//! one window function, which adds the keyed window operator to the job.

use std::fmt;
use std::ops::Add;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use omstream_core::runtime::{Data, KeyedStream, Operator, SubtaskInfo, TimeDomain};
use omstream_core::state::{StateKey, StateValue};

use super::accumulators::AggregateContents;
use super::aggregate::{AggregateFunction, Avg, Count, Max, Min, Reduce, Sum};
use super::assigner::{TimeWindow, TimeWindows};
use super::contents::WindowContents;
use super::count_window::CountWindowOperator;
use super::full_window::{RecordContents, WindowFn};
use super::output::{WindowEvent, WindowOutput, WindowResults};
use super::panes::PaneLayout;
use super::session::SessionOperator;
use super::spec::{WindowKind, WindowSpec};
use super::time_window::TimeWindowOperator;

/// A keyed stream with windows chosen, waiting for its window function. The settings are
/// checked when the job starts; a contradictory one fails the job with a message that says
/// what to change.
pub struct WindowedStream<K, T> {
    keyed: KeyedStream<K, T>,
    spec: WindowSpec,
}

impl<K, T> fmt::Debug for WindowedStream<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowedStream")
            .field("keyed", &self.keyed)
            .field("spec", &self.spec)
            .finish()
    }
}

impl<K: StateKey, T: Data> WindowedStream<K, T> {
    pub(crate) fn new(keyed: &KeyedStream<K, T>, kind: WindowKind) -> Self {
        WindowedStream {
            keyed: keyed.clone(),
            spec: WindowSpec::new(kind),
        }
    }

    /// Assigns records to time windows by when they arrive, not by their timestamps, and fires
    /// each window when the wall clock passes its end. There are no late records. When the
    /// input ends, the windows still open fire at once with what they hold.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let counts = env
    ///     .from_iter("events", ["a", "b", "c"])
    ///     .key_by(|_| 0)
    ///     .window(TimeWindows::tumbling(Duration::from_secs(60)))
    ///     .processing_time()
    ///     .count()
    ///     .map(|w| w.value)
    ///     .collect();
    /// env.execute().await.unwrap();
    /// // All three arrived within a minute or two, in one or two windows.
    /// assert_eq!(counts.values().iter().sum::<u64>(), 3);
    /// # });
    /// ```
    pub fn processing_time(mut self) -> Self {
        self.spec.domain = TimeDomain::ProcessingTime;
        self
    }

    /// Keeps each event-time window for `lateness` after it fired: a record arriving in that
    /// time updates the window, which is emitted again with
    /// [`is_update`](super::Windowed::is_update) set. Records later than that go to
    /// [`late_records`](WindowResults::late_records).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// // One record per batch, so the watermark moves between records.
    /// let env = StreamEnv::new(JobConfig::default().with_batch_size(1));
    /// let records = vec![Record::new(100, 1), Record::new(1_500, 1), Record::new(200, 1)];
    /// let counts = env
    ///     .from_records("events", records, WatermarkStrategy::default())
    ///     .key_by(|_| 0)
    ///     .window(TimeWindows::tumbling(Duration::from_secs(1)))
    ///     .allowed_lateness(Duration::from_secs(5))
    ///     .count()
    ///     .map(|w| (w.window.start, w.value, w.is_update))
    ///     .collect();
    /// env.execute().await.unwrap();
    /// // The record at 200 came after [0, 1000) fired: the window is emitted again.
    /// assert_eq!(counts.values(), vec![(0, 1, false), (0, 2, true), (1_000, 1, false)]);
    /// # });
    /// ```
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.spec.lateness = lateness.as_millis().min(i64::MAX as u128) as i64;
        self
    }

    /// Aggregates each window incrementally with `function` (one accumulator per pane, per
    /// session or per count pane).
    ///
    /// # Examples
    /// See [`AggregateFunction`] for a user-defined aggregate.
    /// ```
    /// use std::time::Duration;
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let records = vec![Record::new(1, "x"), Record::new(2, "y")];
    /// let counts = env
    ///     .from_records("events", records, WatermarkStrategy::default())
    ///     .key_by(|_| 0)
    ///     .window(TimeWindows::sliding(Duration::from_secs(2), Duration::from_secs(1)))
    ///     .aggregate(Count)
    ///     .map(|w| (w.window.start, w.value))
    ///     .collect();
    /// env.execute().await.unwrap();
    /// assert_eq!(counts.values(), vec![(-1_000, 2), (0, 2)]);
    /// # });
    /// ```
    pub fn aggregate<A: AggregateFunction<T>>(&self, function: A) -> WindowResults<K, A::Out, T> {
        self.build(move || AggregateContents::new(function.clone()))
    }

    /// The number of records of each window.
    ///
    /// # Examples
    /// ```
    /// # use std::time::Duration;
    /// # use omstream_operators::prelude::*;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let counts = env
    ///     .from_iter("events", ["a", "b"])
    ///     .key_by(|_| 0)
    ///     .window(TimeWindows::session(Duration::from_secs(1)))
    ///     .count()
    ///     .map(|w| w.value)
    ///     .collect();
    /// env.execute().await.unwrap();
    /// assert_eq!(counts.values(), vec![2]);
    /// # });
    /// ```
    pub fn count(&self) -> WindowResults<K, u64, T> {
        self.aggregate(Count)
    }

    /// The sum of `f` over each window's records.
    ///
    /// # Examples
    /// ```
    /// # use std::time::Duration;
    /// # use omstream_operators::prelude::*;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let totals = env
    ///     .from_iter("amounts", [("a", 2.5), ("a", 1.0)])
    ///     .key_by(|(account, _)| account.to_string())
    ///     .window(TimeWindows::tumbling(Duration::from_secs(1)))
    ///     .sum(|(_, amount): &(&str, f64)| *amount)
    ///     .map(|w| w.value)
    ///     .collect();
    /// env.execute().await.unwrap();
    /// assert_eq!(totals.values(), vec![3.5]);
    /// # });
    /// ```
    pub fn sum<N>(&self, f: impl Fn(&T) -> N + Send + Sync + 'static) -> WindowResults<K, N, T>
    where
        N: Copy + Default + Add<Output = N> + StateValue + Sync,
    {
        self.aggregate(Sum::new(f))
    }

    /// The smallest `f` over each window's records.
    ///
    /// # Examples
    /// ```
    /// # use std::time::Duration;
    /// # use omstream_operators::prelude::*;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let lows = env
    ///     .from_iter("prices", [("x", 7), ("x", 3), ("x", 5)])
    ///     .key_by(|(symbol, _)| symbol.to_string())
    ///     .count_window(3)
    ///     .min(|(_, price): &(&str, i32)| *price)
    ///     .map(|w| w.value)
    ///     .collect();
    /// env.execute().await.unwrap();
    /// assert_eq!(lows.values(), vec![3]);
    /// # });
    /// ```
    pub fn min<N>(&self, f: impl Fn(&T) -> N + Send + Sync + 'static) -> WindowResults<K, N, T>
    where
        N: PartialOrd + StateValue + Sync,
    {
        self.aggregate(Min::new(f))
    }

    /// The largest `f` over each window's records.
    ///
    /// # Examples
    /// ```
    /// # use std::time::Duration;
    /// # use omstream_operators::prelude::*;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let highs = env
    ///     .from_iter("prices", [("x", 7), ("x", 3), ("x", 5)])
    ///     .key_by(|(symbol, _)| symbol.to_string())
    ///     .count_window(3)
    ///     .max(|(_, price): &(&str, i32)| *price)
    ///     .map(|w| w.value)
    ///     .collect();
    /// env.execute().await.unwrap();
    /// assert_eq!(highs.values(), vec![7]);
    /// # });
    /// ```
    pub fn max<N>(&self, f: impl Fn(&T) -> N + Send + Sync + 'static) -> WindowResults<K, N, T>
    where
        N: PartialOrd + StateValue + Sync,
    {
        self.aggregate(Max::new(f))
    }

    /// The mean of `f` over each window's records.
    ///
    /// # Examples
    /// ```
    /// # use std::time::Duration;
    /// # use omstream_operators::prelude::*;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let means = env
    ///     .from_iter("latencies", [10u32, 20, 60])
    ///     .key_by(|_| 0)
    ///     .count_window(3)
    ///     .avg(|ms: &u32| f64::from(*ms))
    ///     .map(|w| w.value)
    ///     .collect();
    /// env.execute().await.unwrap();
    /// assert_eq!(means.values(), vec![30.0]);
    /// # });
    /// ```
    pub fn avg(&self, f: impl Fn(&T) -> f64 + Send + Sync + 'static) -> WindowResults<K, f64, T> {
        self.aggregate(Avg::new(f))
    }

    /// Folds each window's records with `f(acc, next)`, starting from its first record. `f`
    /// must be associative (windows are folded pane by pane, then across panes); the records
    /// are kept in state between folds, so they are serde types.
    ///
    /// # Examples
    /// The longest word per window:
    /// ```
    /// # use std::time::Duration;
    /// # use omstream_operators::prelude::*;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let longest = env
    ///     .from_iter("words", ["stream", "of", "windows"].map(String::from))
    ///     .key_by(|_| 0)
    ///     .count_window(3)
    ///     .reduce(|a, b| if b.len() > a.len() { b.clone() } else { a })
    ///     .map(|w| w.value)
    ///     .collect();
    /// env.execute().await.unwrap();
    /// assert_eq!(longest.values(), vec!["windows".to_string()]);
    /// # });
    /// ```
    pub fn reduce(&self, f: impl Fn(T, &T) -> T + Send + Sync + 'static) -> WindowResults<K, T, T>
    where
        T: StateValue + Sync,
    {
        self.aggregate(Reduce::new(f))
    }

    /// Calls `f(key, window, records)` once per window with all its records (in arrival order
    /// within each pane, panes in time order). Every record is kept until its windows expire,
    /// so prefer an aggregate when one fits.
    ///
    /// # Examples
    /// The median per window:
    /// ```
    /// # use std::time::Duration;
    /// # use omstream_operators::prelude::*;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let medians = env
    ///     .from_iter("latencies", [30u32, 10, 20, 90, 40])
    ///     .key_by(|_| 0)
    ///     .window(TimeWindows::tumbling(Duration::from_secs(1)))
    ///     .apply(|_key, _window, latencies: &[u32]| {
    ///         let mut sorted = latencies.to_vec();
    ///         sorted.sort();
    ///         sorted[sorted.len() / 2]
    ///     })
    ///     .map(|w| w.value)
    ///     .collect();
    /// env.execute().await.unwrap();
    /// assert_eq!(medians.values(), vec![30]);
    /// # });
    /// ```
    pub fn apply<O: Data>(
        &self,
        f: impl Fn(&K, &TimeWindow, &[T]) -> O + Send + Sync + 'static,
    ) -> WindowResults<K, O, T>
    where
        T: StateValue + Sync,
    {
        let f: WindowFn<K, T, O> = Arc::new(f);
        self.build(move || RecordContents::new(f.clone()))
    }

    /// Adds the window operator, with contents made by `contents` in each subtask.
    fn build<C: WindowContents<K, T>>(
        &self,
        contents: impl Fn() -> C + Send + 'static,
    ) -> WindowResults<K, C::Out, T> {
        let spec = self.spec;
        let key = self.keyed.key_fn();
        let late_wanted = Arc::new(AtomicBool::new(false));
        let late_flag = late_wanted.clone();
        let name = match spec.kind {
            WindowKind::Time(TimeWindows::Session { .. }) => "session_window",
            WindowKind::Time(_) => "window",
            WindowKind::Count { .. } => "count_window",
        };
        let events = self.keyed.transform(name, move |_: &SubtaskInfo| {
            let output = WindowOutput::new(late_flag.load(Ordering::Relaxed));
            window_operator(spec, key.clone(), contents(), output)
        });
        WindowResults::new(events, late_wanted)
    }

    /// One subtask of the operator that [`aggregate`](Self::aggregate) adds; for tests that
    /// drive an operator by hand.
    pub(crate) fn aggregate_operator<A: AggregateFunction<T>>(
        &self,
        function: A,
        late_records: bool,
    ) -> Box<dyn Operator<T, WindowEvent<K, A::Out, T>>> {
        let output = WindowOutput::new(late_records);
        let contents = AggregateContents::new(function);
        window_operator(self.spec, self.keyed.key_fn(), contents, output)
    }

    /// One subtask of the operator that [`apply`](Self::apply) adds; for tests that drive an
    /// operator by hand.
    pub(crate) fn apply_operator<O: Data>(
        &self,
        f: impl Fn(&K, &TimeWindow, &[T]) -> O + Send + Sync + 'static,
        late_records: bool,
    ) -> Box<dyn Operator<T, WindowEvent<K, O, T>>>
    where
        T: StateValue + Sync,
    {
        let output = WindowOutput::new(late_records);
        let contents = RecordContents::new(Arc::new(f));
        window_operator(self.spec, self.keyed.key_fn(), contents, output)
    }
}

/// One subtask of the window operator of `spec`.
fn window_operator<K: StateKey, T: Data, C: WindowContents<K, T>>(
    spec: WindowSpec,
    key: Arc<dyn Fn(&T) -> K + Send + Sync>,
    contents: C,
    output: WindowOutput,
) -> Box<dyn Operator<T, WindowEvent<K, C::Out, T>>> {
    match spec.kind {
        WindowKind::Time(TimeWindows::Session { gap }) => {
            Box::new(SessionOperator::new(spec, gap, key, contents, output))
        }
        WindowKind::Time(TimeWindows::Tumbling { size, offset }) => {
            let layout = PaneLayout::new(size, size, offset);
            Box::new(TimeWindowOperator::new(spec, layout, key, contents, output))
        }
        WindowKind::Time(TimeWindows::Sliding {
            size,
            slide,
            offset,
        }) => {
            let layout = PaneLayout::new(size, slide, offset);
            Box::new(TimeWindowOperator::new(spec, layout, key, contents, output))
        }
        WindowKind::Count { .. } => Box::new(CountWindowOperator::new(spec, key, contents, output)),
    }
}
