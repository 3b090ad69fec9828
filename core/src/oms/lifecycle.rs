//! `ServiceLifecycle`: start, stop and the five states of the spec.

use std::sync::atomic::{AtomicU8, Ordering};

use async_trait::async_trait;

use super::error::{OmsError, Result};

/// The state of a service (`ServiceLifeState` in the spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceLifeState {
    /// Created, not started yet.
    Initialized,
    /// Starting.
    Starting,
    /// Running: the only state in which it serves calls.
    Started,
    /// Stopping.
    Stopping,
    /// Stopped; may be started again.
    Stopped,
}

/// A service that can be started, stopped and restarted.
#[async_trait]
pub trait ServiceLifecycle: Send + Sync {
    /// Starts the service; starting a started service does nothing.
    async fn start(&self) -> Result<()>;
    /// Stops the service, flushing what it buffers; stopping a stopped service does nothing.
    async fn stop(&self) -> Result<()>;
    /// The current state.
    fn current_state(&self) -> ServiceLifeState;
}

/// A lock-free lifecycle state cell that services embed.
#[derive(Debug)]
pub struct LifecycleCell(AtomicU8);

impl LifecycleCell {
    /// A cell in `state`.
    pub fn new(state: ServiceLifeState) -> Self {
        Self(AtomicU8::new(state as u8))
    }

    /// The current state.
    pub fn get(&self) -> ServiceLifeState {
        match self.0.load(Ordering::Acquire) {
            0 => ServiceLifeState::Initialized,
            1 => ServiceLifeState::Starting,
            2 => ServiceLifeState::Started,
            3 => ServiceLifeState::Stopping,
            _ => ServiceLifeState::Stopped,
        }
    }

    /// Sets the state.
    pub fn set(&self, state: ServiceLifeState) {
        self.0.store(state as u8, Ordering::Release);
    }

    /// An error naming `what` unless the service is started.
    pub fn ensure_started(&self, what: &str) -> Result<()> {
        if self.get() == ServiceLifeState::Started {
            Ok(())
        } else {
            Err(OmsError::not_available(what))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_round_trips_every_state() {
        let cell = LifecycleCell::new(ServiceLifeState::Initialized);
        assert!(cell.ensure_started("producer").is_err());
        for s in [
            ServiceLifeState::Starting,
            ServiceLifeState::Started,
            ServiceLifeState::Stopping,
            ServiceLifeState::Stopped,
            ServiceLifeState::Initialized,
        ] {
            cell.set(s);
            assert_eq!(cell.get(), s);
        }
        cell.set(ServiceLifeState::Started);
        assert!(cell.ensure_started("producer").is_ok());
    }
}
