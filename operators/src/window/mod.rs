//! Windows: tumbling, sliding and session windows on event or processing time, count windows,
//! with incremental aggregates or full-window functions, allowed lateness and late records to
//! a side output.
//!
//! ```text
//! keyed.window(TimeWindows::tumbling(..))      keyed.count_window(100)
//!      .processing_time()          (optional)       .count_window_sliding(100, 10)
//!      .allowed_lateness(..)       (optional)
//!      .count() | .sum(f) | .min(f) | .max(f) | .avg(f) | .reduce(f)
//!      | .aggregate(MyAggregate) | .apply(|key, window, records| ..)
//!   -> WindowResults: a Stream<Windowed<K, V>>, plus .late_records() -> Stream<T>
//! ```
//!
//! # Time
//! On event time (the default) a window fires when the watermark reaches its last
//! millisecond; on processing time, when the wall clock passes its end, and records belong to
//! the window they arrive in. A result's event time is its window's last millisecond.
//!
//! # Lateness
//! A record is late when every event-time window it belongs to has expired: the watermark
//! reached `max_timestamp + allowed_lateness` (for sessions, whose windows grow backwards:
//! when its timestamp is at or below `watermark - allowed_lateness`). Late records go to
//! [`WindowResults::late_records`], or are dropped if nobody asked for them. A record within
//! the lateness whose window already fired updates it, and the window is emitted again with
//! [`Windowed::is_update`] set; downstream, the last result of a window wins. A window's state
//! is dropped when it expires.
//!
//! # Cost
//! Tumbling and sliding windows keep one accumulator per key and pane (`gcd(size, slide)`):
//! a record updates one accumulator, whatever the number of windows it is in, with one state
//! lookup, and a window fires by merging its panes; no record is copied into several windows.
//! A sliding window still fires `size / slide` times as often as a tumbling one of the same
//! size, so it emits that many more results; a slide that does not divide the size makes
//! smaller panes, and more of them to merge. Full-window functions
//! ([`WindowedStream::apply`]) keep every record.
//!
//! # End of input
//! Event-time windows all fire on the final watermark. Processing-time windows fire at once
//! with what they hold. Count windows that did not reach their count are not emitted.

mod accumulators;
mod aggregate;
mod assigner;
mod clocked;
mod contents;
mod count_window;
mod full_window;
mod key_timers;
mod keyed_window;
mod output;
mod panes;
mod session;
mod spec;
mod time_window;
mod windowed_stream;

pub use aggregate::{AggregateFunction, Avg, Count, Max, Min, Reduce, Sum};
pub use assigner::{TimeWindow, TimeWindows};
pub use keyed_window::Window;
#[doc(hidden)]
pub use output::WindowEvent;
pub use output::{WindowResults, Windowed};
pub use windowed_stream::WindowedStream;

/// The window types and traits, for the crate prelude.
pub mod prelude {
    pub use super::{
        AggregateFunction, Avg, Count, Max, Min, Reduce, Sum, TimeWindow, TimeWindows, Window,
        WindowResults, Windowed, WindowedStream,
    };
}
