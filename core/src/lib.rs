//! omstream-core: the OpenMessaging API and its drivers, on which omstream's runtime, state and
//! checkpoints are built.
//!
//! - [`oms`]: the OMS API (`AccessPointUri`, `KeyValue`, `Message`, `Producer`, the consumers,
//!   `ResourceManager`) and the drivers, `embedded` first.
//! - [`connectors`]: OMS sources and sinks of the dataflow runtime.
//! - [`runtime`]: the dataflow engine; [`state`]: keyed state; [`checkpoint`]: checkpoints
//!   and recovery.
#![deny(missing_docs)]
// The RocketMQ client's futures are deeply nested; proving them `Send` needs more depth.
#![recursion_limit = "256"]

pub mod checkpoint;
pub mod connectors;
pub mod oms;
pub mod runtime;
pub mod state;
