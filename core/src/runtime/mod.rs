//! The dataflow runtime: a job graph of sources, operators and sinks, run as tokio tasks.
//!
//! - A job is built in a [`StreamEnv`] from typed [`Stream`] handles, then executed.
//! - Every operator has a parallelism; its subtasks are tokio tasks linked by bounded channels,
//!   so a slow sink backpressures the sources. Records move in batches ([`Batch`]).
//! - One element type travels every edge: [`StreamElement`] (data, watermarks, idleness,
//!   checkpoint barriers, end of input), so time and checkpoints move in band with the data.
//! - Each edge has an explicit [`Partitioning`]. A forward edge between operators of equal
//!   parallelism, into an operator with one input, is fused: both run in one task and call each
//!   other directly (operator chaining).
//! - An [`Operator`] implements one method, [`Operator::process_batch`]; its hooks
//!   (watermark, processing time, barrier, checkpoint complete, end) have defaults.
//! - Event time is milliseconds since the epoch; sources generate watermarks per partition
//!   ([`WatermarkStrategy`]); operators with several inputs take the minimum, leaving idle
//!   inputs out of it, and align checkpoint barriers.
//!
//! When any subtask fails, every other is stopped and [`JobHandle::join`] returns the first
//! error that is a cause; a bounded input ends the job cleanly once every operator flushed.

mod builtin;
mod chain;
mod clock;
mod config;
mod element;
mod error;
mod gate;
mod graph;
mod job;
mod operator;
mod partition;
mod sink;
mod source;
mod task;
mod timers;
mod watermark;

pub use builtin::{CollectedRecords, MemorySource};
pub use chain::OperatorMetrics;
pub use clock::ProcessingClock;
pub use config::JobConfig;
pub use element::{
    Batch, CheckpointBarrier, EventTime, Record, StreamElement, MAX_WATERMARK, MIN_WATERMARK,
};
pub use error::{BoxError, Result, RuntimeError};
pub use graph::{Data, Key, KeyedStream, Stream, StreamEnv};
pub use job::{JobHandle, JobReport, OperatorReport};
pub use operator::{Operator, OperatorContext, OperatorResult, SubtaskInfo};
pub use partition::{
    key_group, stable_hash, subtask_for_key_group, KeyHasher, Partitioning, KEY_GROUPS,
};
pub use sink::{Sink, SinkStateContext};
pub use source::{Source, SourceCommand, SourceContext, SourceOutput, SourcePositions};
pub use timers::{TimeDomain, TimerQueue, TimerService};
pub use watermark::{PartitionWatermarks, WatermarkStrategy, WatermarkUpdate};

#[cfg(test)]
mod tests;
