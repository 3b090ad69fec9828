//! omstream-operators: the typed operator API, as extension traits on
//! [`Stream`](omstream_core::runtime::Stream) and
//! [`KeyedStream`](omstream_core::runtime::KeyedStream).
//!
//! Every operator is a few lines over the runtime's one generic primitive,
//! [`Stream::transform`](omstream_core::runtime::Stream::transform), with an explicit
//! partitioning: stateless operators are forward (fused into the upstream task), keyed ones
//! hash-partition on the key. Import everything with `use omstream_operators::prelude::*`.
#![deny(missing_docs)]

pub use omstream_core as core;

mod filter;
mod flat_map;
#[cfg(test)]
mod harness;
pub mod join;
mod map;
mod process;
mod restore;
#[doc(hidden)]
pub mod testing;
mod timestamps;
mod union;
pub mod window;

pub use filter::Filter;
pub use flat_map::FlatMap;
pub use map::Map;
pub use process::{KeyedProcessFunction, Process, ProcessContext, StateFactory};
pub use timestamps::AssignTimestamps;
pub use union::Union;

/// The operator traits and the runtime types a job needs, in one import.
pub mod prelude {
    pub use crate::join::prelude::*;
    pub use crate::window::prelude::*;
    pub use crate::{
        AssignTimestamps, Filter, FlatMap, KeyedProcessFunction, Map, Process, ProcessContext,
        StateFactory, Union,
    };
    pub use omstream_core::runtime::{
        Batch, Data, EventTime, JobConfig, JobHandle, JobReport, Key, KeyedStream, OperatorResult,
        Record, Stream, StreamEnv, TimeDomain, WatermarkStrategy, MAX_WATERMARK,
    };
    pub use omstream_core::state::{KeyedState, ListState, MapState, StateOptions, ValueState};
}
