//! omstream: stream processing natively integrated with OpenMessaging queues.
//!
//! This facade re-exports the member crates:
//! - [`core`] (`omstream-core`): the OpenMessaging API and its drivers (start at
//!   [`oms::connect`]);
//! - [`operators`] (`omstream-operators`): the typed operator API;
//! - [`sql`] (`omstream-sql`): the SQL front end.
//!
//! It also ships the `omstream` command-line tool.
#![deny(missing_docs)]

pub use omstream_core as core;
pub use omstream_core::oms;
pub use omstream_operators as operators;
pub use omstream_sql as sql;

/// The README's code examples, compiled as doctests so that they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
