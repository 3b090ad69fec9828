//! Ctrl-C and SIGTERM as a request to stop cleanly (flush output, commit offsets), not a kill.

use std::io;

/// Listens for Ctrl-C (SIGINT) and SIGTERM from the moment it is created.
#[derive(Debug)]
pub(crate) struct Shutdown {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Installs the handlers now, so that a signal that comes before the first wait is not
    /// lost (and does not kill the process half-way through a commit).
    pub(crate) fn listen() -> io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Resolves once a stop was requested.
    pub(crate) async fn requested(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            // Without a handler Ctrl-C would end the process anyway; wait for it like unix does.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
