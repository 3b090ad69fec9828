//! omstream-operators: the typed operator API (map, filter, windows, joins) over OMS sources and
//! sinks.
//!
//! The operators arrive with the dataflow engine; this crate holds their place in the workspace
//! so that the dependency direction (`sql` -> `operators` -> `core`) is fixed from the start.
#![deny(missing_docs)]

pub use omstream_core as core;
