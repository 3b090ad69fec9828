//! What window operators produce: [`Windowed`] results, and the records too late for any
//! window on a side output ([`WindowResults::late_records`]).

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use omstream_core::runtime::{
    Batch, Data, Operator, OperatorContext, OperatorResult, Partitioning, Record, Stream,
    SubtaskInfo,
};
use serde::{Deserialize, Serialize};

use super::assigner::TimeWindow;

/// The result of one window of one key. Its event time is `window.max_timestamp()`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Windowed<K, V> {
    /// The key.
    pub key: K,
    /// The window. For a count window: from the smallest to just after the largest timestamp
    /// of its records.
    pub window: TimeWindow,
    /// What the window function produced.
    pub value: V,
    /// Whether this result replaces an earlier one of the same key and window: a record
    /// within the allowed lateness arrived after the window fired. For a session the window
    /// may have grown: the update replaces every earlier result of the key whose window it
    /// covers.
    pub is_update: bool,
}

/// What the window operator emits: results and late records on one edge, split downstream by
/// two forward (fused) operators. Public only for tests that drive a window operator by hand
/// (see `omstream_operators::testing`).
#[derive(Debug, Clone, PartialEq)]
pub enum WindowEvent<K, V, T> {
    /// A window's result.
    Result(Windowed<K, V>),
    /// A record too late for every window it belongs to.
    Late(T),
}

/// How a window operator subtask emits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WindowOutput {
    /// Whether anyone reads the late records: when not, they are dropped where they are found.
    late_wanted: bool,
}

impl WindowOutput {
    pub(crate) fn new(late_wanted: bool) -> Self {
        WindowOutput { late_wanted }
    }

    /// Emits the result of `window` for `key`, at the window's last millisecond.
    #[inline]
    pub(crate) fn result<K, V, T>(
        &self,
        ctx: &mut OperatorContext<WindowEvent<K, V, T>>,
        key: K,
        window: TimeWindow,
        value: V,
        is_update: bool,
    ) {
        ctx.emit(
            window.max_timestamp(),
            WindowEvent::Result(Windowed {
                key,
                window,
                value,
                is_update,
            }),
        );
    }

    /// Sends a record too late for every window it belongs to to the side output.
    pub(crate) fn late<K, V, T>(
        &self,
        ctx: &mut OperatorContext<WindowEvent<K, V, T>>,
        record: Record<T>,
    ) {
        if self.late_wanted {
            ctx.emit(record.timestamp, WindowEvent::Late(record.value));
        }
    }
}

/// The output of a window: a stream of [`Windowed`] results (it dereferences to it, so `map`,
/// `collect` and sinks work directly on it), plus the records that came too late.
pub struct WindowResults<K, V, T> {
    results: Stream<Windowed<K, V>>,
    events: Stream<WindowEvent<K, V, T>>,
    late_wanted: Arc<AtomicBool>,
}

impl<K, V, T> fmt::Debug for WindowResults<K, V, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowResults")
            .field("results", &self.results)
            .field("late_wanted", &self.late_wanted.load(Ordering::Relaxed))
            .finish()
    }
}

impl<K: Data, V: Data, T: Data> WindowResults<K, V, T> {
    /// Splits the window operator's output; `late_wanted` is read by the operator's subtasks
    /// when the job starts.
    pub(crate) fn new(events: Stream<WindowEvent<K, V, T>>, late_wanted: Arc<AtomicBool>) -> Self {
        let results = events.transform(
            "window_results",
            Partitioning::Forward,
            |_: &SubtaskInfo| {
                Box::new(Split {
                    keep: |event: WindowEvent<K, V, T>| match event {
                        WindowEvent::Result(result) => Some(result),
                        WindowEvent::Late(_) => None,
                    },
                    most_kept: true,
                }) as Box<dyn Operator<WindowEvent<K, V, T>, Windowed<K, V>>>
            },
        );
        WindowResults {
            results,
            events,
            late_wanted,
        }
    }

    /// The records later than the allowed lateness for every window they belong to, with their
    /// own event time, in the order the window operator met them. Route them anywhere: a
    /// queue sink, a log, a correction job. Records whose timestamp is too far from the epoch
    /// for window arithmetic (beyond 2^62 ms) come here too. Count windows and
    /// processing-time windows have no late records.
    ///
    /// Without a call to this, late records are dropped where they are found, never copied.
    /// With it, results and late records share the window's output edge and are split by two
    /// fused operators, so each output batch is copied once for the second of them.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// // One record per batch, so the watermark moves between records.
    /// let env = StreamEnv::new(JobConfig::default().with_batch_size(1));
    /// // The record at 5 arrives after the watermark passed the end of its window.
    /// let records = vec![Record::new(1_000, "a"), Record::new(5_000, "b"), Record::new(5, "c")];
    /// let counts = env
    ///     .from_records("events", records, WatermarkStrategy::default())
    ///     .key_by(|_| 0)
    ///     .window(TimeWindows::tumbling(Duration::from_secs(1)))
    ///     .count();
    /// let late = counts.late_records().collect();
    /// let results = counts.collect();
    /// env.execute().await.unwrap();
    /// assert_eq!(late.values(), vec!["c"]);
    /// assert_eq!(results.len(), 2);
    /// # });
    /// ```
    pub fn late_records(&self) -> Stream<T> {
        self.late_wanted.store(true, Ordering::Relaxed);
        self.events
            .transform("late_records", Partitioning::Forward, |_: &SubtaskInfo| {
                Box::new(Split {
                    keep: |event: WindowEvent<K, V, T>| match event {
                        WindowEvent::Late(record) => Some(record),
                        WindowEvent::Result(_) => None,
                    },
                    most_kept: false,
                }) as Box<dyn Operator<WindowEvent<K, V, T>, T>>
            })
    }

    /// Runs the window with `parallelism` subtasks (by default, that of its input). Each key
    /// is handled by one subtask.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let counts = env
    ///     .from_iter("words", ["a", "b", "a"])
    ///     .key_by(|w: &&str| w.to_string())
    ///     .window(TimeWindows::tumbling(Duration::from_secs(1)))
    ///     .count()
    ///     .with_parallelism(4)
    ///     .map(|w| (w.key, w.value))
    ///     .collect();
    /// env.execute().await.unwrap();
    /// let mut counts = counts.values();
    /// counts.sort();
    /// assert_eq!(counts, vec![("a".to_string(), 2), ("b".to_string(), 1)]);
    /// # });
    /// ```
    pub fn with_parallelism(self, parallelism: usize) -> Self {
        WindowResults {
            events: self.events.with_parallelism(parallelism),
            results: self.results.with_parallelism(parallelism),
            late_wanted: self.late_wanted,
        }
    }

    /// The stream of results.
    pub fn results(&self) -> &Stream<Windowed<K, V>> {
        &self.results
    }

    /// The stream of results, owned.
    pub fn into_stream(self) -> Stream<Windowed<K, V>> {
        self.results
    }
}

impl<K, V, T> Deref for WindowResults<K, V, T> {
    type Target = Stream<Windowed<K, V>>;

    fn deref(&self) -> &Stream<Windowed<K, V>> {
        &self.results
    }
}

/// Keeps one kind of window event, unwrapped; the event time is kept.
struct Split<F> {
    keep: F,
    /// Whether most events are kept (results): then the output is sized for the whole batch
    /// up front instead of growing.
    most_kept: bool,
}

impl<I, O, F> Operator<I, O> for Split<F>
where
    I: Data,
    O: Data,
    F: Fn(I) -> Option<O> + Send + 'static,
{
    fn process_batch(&mut self, batch: Batch<I>, ctx: &mut OperatorContext<O>) -> OperatorResult {
        let keep = &self.keep;
        let output = ctx.output_mut();
        if self.most_kept {
            output.reserve(batch.len());
        }
        output.extend(batch.into_iter().filter_map(|record| {
            let timestamp = record.timestamp;
            keep(record.value).map(|value| Record { timestamp, value })
        }));
        Ok(())
    }
}
