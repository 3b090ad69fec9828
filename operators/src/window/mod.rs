//! Windows: tumbling, sliding and session windows on event or processing time, count windows,
//! with incremental aggregates or full-window functions, allowed lateness and late records to
//! a side output.

mod assigner;

pub use assigner::{TimeWindow, TimeWindows};

/// The window types and traits, for the crate prelude.
pub mod prelude {
    pub use super::{TimeWindow, TimeWindows};
}
