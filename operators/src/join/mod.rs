//! Joins: windowed stream-stream joins, interval joins, and stream-table joins.

/// The join types and traits, for the crate prelude.
pub mod prelude {}
