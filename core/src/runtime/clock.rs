//! Processing time, read from tokio's clock so that tests with paused time are deterministic.

use tokio::time::Instant;

use super::element::EventTime;

/// The job's processing-time clock: wall-clock milliseconds at job start plus tokio's elapsed
/// time. Under `#[tokio::test(start_paused = true)]` it advances only when the test advances it.
#[derive(Debug, Clone, Copy)]
pub struct ProcessingClock {
    started_ms: i64,
    started: Instant,
}

impl ProcessingClock {
    /// A clock that reads the wall clock now.
    pub fn start() -> Self {
        ProcessingClock {
            started_ms: crate::oms::now_millis(),
            started: Instant::now(),
        }
    }

    /// The current processing time in milliseconds since the epoch.
    pub fn now(&self) -> EventTime {
        self.started_ms + self.started.elapsed().as_millis() as i64
    }

    /// The tokio instant at which processing time reaches `at`.
    pub fn instant_of(&self, at: EventTime) -> Instant {
        let offset = at.saturating_sub(self.started_ms).max(0) as u64;
        self.started + std::time::Duration::from_millis(offset)
    }
}
