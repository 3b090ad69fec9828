//! Diagnostics: `tracing` events on stderr, filtered by `RUST_LOG` (default `warn`).

use tracing_subscriber::EnvFilter;

/// Installs the subscriber. Logs go to stderr so that stdout carries only data.
pub(crate) fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
