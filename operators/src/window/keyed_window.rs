//! `window` and `count_window`: how a keyed stream chooses its windows.

use omstream_core::runtime::{Data, KeyedStream};
use omstream_core::state::StateKey;

use super::assigner::TimeWindows;
use super::spec::WindowKind;
use super::windowed_stream::WindowedStream;

/// Groups the records of a keyed stream into windows. Windows keep their contents in keyed
/// state, so keys (and, for `reduce` and `apply`, records) are serde types.
pub trait Window<K, T> {
    /// Time windows (tumbling, sliding or session), on event time unless
    /// [`processing_time`](WindowedStream::processing_time) is asked for.
    ///
    /// # Examples
    /// Clicks per user and 10-second window:
    /// ```
    /// use std::time::Duration;
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let clicks = vec![
    ///     Record::new(1_000, "ann"),
    ///     Record::new(4_000, "bob"),
    ///     Record::new(9_000, "ann"),
    ///     Record::new(12_000, "ann"),
    /// ];
    /// let counts = env
    ///     .from_records("clicks", clicks, WatermarkStrategy::default())
    ///     .key_by(|user: &&str| user.to_string())
    ///     .window(TimeWindows::tumbling(Duration::from_secs(10)))
    ///     .count()
    ///     .map(|w| (w.key, w.window.start, w.value))
    ///     .collect();
    /// env.execute().await.unwrap();
    /// let mut counts = counts.values();
    /// counts.sort();
    /// assert_eq!(
    ///     counts,
    ///     vec![("ann".into(), 0, 2), ("ann".into(), 10_000, 1), ("bob".into(), 0, 1)]
    /// );
    /// # });
    /// ```
    fn window(&self, windows: TimeWindows) -> WindowedStream<K, T>;

    /// Tumbling count windows: per key, one window every `size` records. The window's time
    /// span is that of its records. A key's last records that do not fill a window are not
    /// emitted when the input ends.
    ///
    /// # Examples
    /// ```
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let sums = env
    ///     .from_iter("numbers", 1..=7)
    ///     .key_by(|_| 0)
    ///     .count_window(3)
    ///     .sum(|n: &i32| *n)
    ///     .map(|w| w.value)
    ///     .collect();
    /// env.execute().await.unwrap();
    /// // 7 is alone in an unfinished window: not emitted.
    /// assert_eq!(sums.values(), vec![6, 15]);
    /// # });
    /// ```
    fn count_window(&self, size: u64) -> WindowedStream<K, T>;

    /// Sliding count windows: per key, every `slide` records, a window of the last `size`
    /// records (fewer while the key has seen fewer than `size`).
    ///
    /// # Examples
    /// ```
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let sums = env
    ///     .from_iter("numbers", 1..=6)
    ///     .key_by(|_| 0)
    ///     .count_window_sliding(4, 2)
    ///     .sum(|n: &i32| *n)
    ///     .map(|w| w.value)
    ///     .collect();
    /// env.execute().await.unwrap();
    /// assert_eq!(sums.values(), vec![1 + 2, 1 + 2 + 3 + 4, 3 + 4 + 5 + 6]);
    /// # });
    /// ```
    fn count_window_sliding(&self, size: u64, slide: u64) -> WindowedStream<K, T>;
}

impl<K: StateKey, T: Data> Window<K, T> for KeyedStream<K, T> {
    fn window(&self, windows: TimeWindows) -> WindowedStream<K, T> {
        WindowedStream::new(self, WindowKind::Time(windows))
    }

    fn count_window(&self, size: u64) -> WindowedStream<K, T> {
        self.count_window_sliding(size, size)
    }

    fn count_window_sliding(&self, size: u64, slide: u64) -> WindowedStream<K, T> {
        WindowedStream::new(self, WindowKind::Count { size, slide })
    }
}
