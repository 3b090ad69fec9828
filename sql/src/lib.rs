//! omstream-sql: the SQL front end (DataFusion + Arrow) lowered onto omstream's runtime.
//!
//! The SQL layer arrives after the dataflow engine; this crate holds its place in the workspace
//! so that the dependency direction (`sql` -> `operators` -> `core`) is fixed from the start.
#![deny(missing_docs)]

pub use omstream_operators as operators;
