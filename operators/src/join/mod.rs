//! Joins of two keyed streams, all on event time:
//!
//! - [`window_join`](WindowJoin::window_join): the pairs with equal keys in the same tumbling
//!   or sliding window, emitted when the window closes.
//! - [`interval_join`](IntervalJoin::interval_join): the pairs with equal keys whose times are
//!   close (`right.ts - left.ts` within [`IntervalBounds`]), emitted as soon as both are there.
//! - [`join_table`](TableJoin::join_table) and
//!   [`join_table_updates`](TableJoin::join_table_updates): a temporal join of a stream with a
//!   table kept from a keyed changelog (latest value wins per key), each record joined with the
//!   table *as of its own event time*.
//!
//! Every join reads both inputs in one node, hash-partitioned on the key: each side is tagged
//! into [`Either`] on the way in, and the node's watermark is the minimum of both inputs' (an
//! input whose source is idle is left out of it). Buffered records and table versions live in
//! keyed state ([`MapState`](omstream_core::state::MapState)), so where state is kept can
//! change without touching the joins. Records that come too late to be joined as their event
//! time says are dropped (the table join applies late table updates to later lookups), and
//! counted in a [`JoinStats`] if one is attached with
//! [`with_join_stats`](WithJoinStats::with_join_stats).

mod bounds;
mod connect;
mod either;
pub(crate) mod interval_join;
mod stats;
mod table_join;
pub(crate) mod temporal_join;
pub(crate) mod window_join;

pub use bounds::IntervalBounds;
pub use either::Either;
pub use interval_join::IntervalJoin;
pub use stats::{CountedKeyedStream, JoinLeft, JoinStats, WithJoinStats};
pub use table_join::TableJoin;
pub use window_join::WindowJoin;

/// The join types and traits, for the crate prelude.
pub mod prelude {
    pub use super::{
        CountedKeyedStream, Either, IntervalBounds, IntervalJoin, JoinStats, TableJoin, WindowJoin,
        WithJoinStats,
    };
}
