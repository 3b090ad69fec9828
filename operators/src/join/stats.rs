//! `JoinStats`: what a join did with records that came too late, readable while the job runs.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use omstream_core::runtime::KeyedStream;

/// Counters of one or more joins, summed over their subtasks. Clones share the counters.
///
/// A record is *late* when it arrives behind the join's input watermark so that joining it
/// could no longer give the result its event time calls for; what each join counts as late,
/// and what it does with such records, is written on the join (see
/// [`window_join`](super::WindowJoin::window_join),
/// [`interval_join`](super::IntervalJoin::interval_join),
/// [`join_table`](super::TableJoin::join_table)). With a watermark strategy whose
/// out-of-orderness covers the real disorder, and no idle input that comes back, both counts
/// stay at 0.
///
/// Attach it with [`with_join_stats`](WithJoinStats::with_join_stats).
#[derive(Clone, Default)]
pub struct JoinStats {
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    late_left: AtomicU64,
    late_right: AtomicU64,
}

impl JoinStats {
    /// Counters at 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Late records of the left input so far.
    pub fn late_left(&self) -> u64 {
        self.counters.late_left.load(Ordering::Relaxed)
    }

    /// Late records of the right input so far.
    pub fn late_right(&self) -> u64 {
        self.counters.late_right.load(Ordering::Relaxed)
    }

    pub(crate) fn count_late_left(&self) {
        self.counters.late_left.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_late_right(&self) {
        self.counters.late_right.fetch_add(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for JoinStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinStats")
            .field("late_left", &self.late_left())
            .field("late_right", &self.late_right())
            .finish()
    }
}

/// The left input of a join, with the counters the join reports into. Every join method
/// of [`KeyedStream`] is available on it.
pub struct CountedKeyedStream<K, L> {
    pub(crate) keyed: KeyedStream<K, L>,
    pub(crate) stats: JoinStats,
}

impl<K, L> Clone for CountedKeyedStream<K, L> {
    fn clone(&self) -> Self {
        CountedKeyedStream {
            keyed: self.keyed.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<K, L> fmt::Debug for CountedKeyedStream<K, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountedKeyedStream")
            .field("keyed", &self.keyed)
            .field("stats", &self.stats)
            .finish()
    }
}

/// The left input of a join: a [`KeyedStream`], or one with [`JoinStats`] attached. Every join
/// trait is implemented once for all of them.
pub trait JoinLeft<K, L> {
    /// The keyed stream.
    fn keyed(&self) -> &KeyedStream<K, L>;
    /// The counters the join reports into (fresh, unread ones when none were attached).
    fn stats(&self) -> JoinStats;
}

impl<K, L> JoinLeft<K, L> for KeyedStream<K, L> {
    fn keyed(&self) -> &KeyedStream<K, L> {
        self
    }
    fn stats(&self) -> JoinStats {
        JoinStats::new()
    }
}

impl<K, L> JoinLeft<K, L> for CountedKeyedStream<K, L> {
    fn keyed(&self) -> &KeyedStream<K, L> {
        &self.keyed
    }
    fn stats(&self) -> JoinStats {
        self.stats.clone()
    }
}

/// Counts what the joins of a stream drop.
pub trait WithJoinStats<K, L> {
    /// This stream as the left input of joins that count their late records (of both
    /// inputs) into `stats`.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use omstream_operators::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let ad = || "ad-1".to_string();
    /// let clicks = env.from_records("clicks", vec![Record::new(5, ad())], Default::default());
    /// let views = env.from_records("views", vec![Record::new(2, ad())], Default::default());
    /// let stats = JoinStats::new();
    /// let pairs = clicks
    ///     .key_by(|ad: &String| ad.clone())
    ///     .with_join_stats(&stats)
    ///     .window_join(
    ///         &views.key_by(|ad: &String| ad.clone()),
    ///         TimeWindows::tumbling(Duration::from_secs(1)),
    ///         |ad, _, _| ad.clone(),
    ///     )
    ///     .collect();
    /// env.execute().await.unwrap();
    /// assert_eq!(pairs.values(), vec![ad()]);
    /// assert_eq!((stats.late_left(), stats.late_right()), (0, 0));
    /// # });
    /// ```
    fn with_join_stats(&self, stats: &JoinStats) -> CountedKeyedStream<K, L>;
}

impl<K, L> WithJoinStats<K, L> for KeyedStream<K, L> {
    fn with_join_stats(&self, stats: &JoinStats) -> CountedKeyedStream<K, L> {
        CountedKeyedStream {
            keyed: self.clone(),
            stats: stats.clone(),
        }
    }
}
