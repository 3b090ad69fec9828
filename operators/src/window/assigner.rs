//! Which time windows a record belongs to.

use std::time::Duration;

use omstream_core::runtime::{EventTime, RuntimeError};
use serde::{Deserialize, Serialize};

/// A half-open interval of time `[start, end)`, in milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TimeWindow {
    /// The first millisecond in the window.
    pub start: EventTime,
    /// The first millisecond after the window.
    pub end: EventTime,
}

impl TimeWindow {
    /// The window `[start, end)`.
    pub fn new(start: EventTime, end: EventTime) -> Self {
        TimeWindow { start, end }
    }

    /// The last millisecond in the window: the event time of its results, and the watermark
    /// at which it fires.
    pub fn max_timestamp(&self) -> EventTime {
        self.end - 1
    }

    /// Whether `timestamp` falls in the window.
    pub fn contains(&self, timestamp: EventTime) -> bool {
        self.start <= timestamp && timestamp < self.end
    }

    /// Whether the two windows overlap or touch.
    pub fn intersects(&self, other: &TimeWindow) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// Whether the two windows share at least one millisecond (sessions merge then: two
    /// records exactly a gap apart are in two sessions).
    pub fn overlaps(&self, other: &TimeWindow) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// The smallest window covering both.
    pub fn cover(&self, other: &TimeWindow) -> TimeWindow {
        TimeWindow::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// How records are grouped into time windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeWindows {
    /// Fixed-size, non-overlapping windows aligned to `offset` (from the epoch).
    Tumbling {
        /// Window length, in milliseconds.
        size: i64,
        /// Shift of the window boundaries, in milliseconds.
        offset: i64,
    },
    /// Fixed-size windows starting every `slide`; a record is in `size / slide` windows.
    Sliding {
        /// Window length, in milliseconds.
        size: i64,
        /// Distance between window starts, in milliseconds.
        slide: i64,
        /// Shift of the window boundaries, in milliseconds.
        offset: i64,
    },
    /// Per key, records closer than `gap` are in one window, which ends `gap` after its last
    /// record.
    Session {
        /// The inactivity that closes a session, in milliseconds.
        gap: i64,
    },
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl TimeWindows {
    /// Tumbling windows of `size`.
    pub fn tumbling(size: Duration) -> Self {
        TimeWindows::Tumbling {
            size: millis(size),
            offset: 0,
        }
    }

    /// Sliding windows of `size`, one starting every `slide`.
    pub fn sliding(size: Duration, slide: Duration) -> Self {
        TimeWindows::Sliding {
            size: millis(size),
            slide: millis(slide),
            offset: 0,
        }
    }

    /// Session windows closed by `gap` of inactivity.
    pub fn session(gap: Duration) -> Self {
        TimeWindows::Session { gap: millis(gap) }
    }

    /// The same windows with boundaries shifted by `offset` (e.g. daily windows in a time zone).
    pub fn with_offset(self, offset: Duration) -> Self {
        match self {
            TimeWindows::Tumbling { size, .. } => TimeWindows::Tumbling {
                size,
                offset: millis(offset),
            },
            TimeWindows::Sliding { size, slide, .. } => TimeWindows::Sliding {
                size,
                slide,
                offset: millis(offset),
            },
            session => session,
        }
    }

    /// Checks the sizes; the error says what to change.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let bad = |what: String| Err(RuntimeError::InvalidConfig(what));
        match *self {
            TimeWindows::Tumbling { size, .. } if size <= 0 => {
                bad("a tumbling window needs a size of at least 1 ms".to_string())
            }
            TimeWindows::Sliding { size, slide, .. } if size <= 0 || slide <= 0 => {
                bad(format!("a sliding window needs size and slide of at least 1 ms (got size {size} ms, slide {slide} ms)"))
            }
            TimeWindows::Sliding { size, slide, .. } if slide > size => bad(format!(
                "a sliding window's slide ({slide} ms) is larger than its size ({size} ms): records between windows would be lost; use a tumbling window or a smaller slide"
            )),
            TimeWindows::Session { gap } if gap <= 0 => {
                bad("a session window needs a gap of at least 1 ms".to_string())
            }
            _ => Ok(()),
        }
    }

    /// The start of the window (of length `size`, starting every `slide`) that is the last to
    /// start at or before `timestamp`.
    pub fn last_start(timestamp: EventTime, offset: i64, slide: i64) -> EventTime {
        timestamp - (timestamp - offset).rem_euclid(slide)
    }

    /// Calls `f` on every window `timestamp` belongs to (for sessions: the record's own
    /// `[timestamp, timestamp + gap)`, to be merged).
    pub fn for_each_window(&self, timestamp: EventTime, mut f: impl FnMut(TimeWindow)) {
        match *self {
            TimeWindows::Tumbling { size, offset } => {
                let start = Self::last_start(timestamp, offset, size);
                f(TimeWindow::new(start, start + size));
            }
            TimeWindows::Sliding {
                size,
                slide,
                offset,
            } => {
                let mut start = Self::last_start(timestamp, offset, slide);
                while start > timestamp - size {
                    f(TimeWindow::new(start, start + size));
                    start -= slide;
                }
            }
            TimeWindows::Session { gap } => f(TimeWindow::new(timestamp, timestamp + gap)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(assigner: TimeWindows, t: EventTime) -> Vec<TimeWindow> {
        let mut all = Vec::new();
        assigner.for_each_window(t, |w| all.push(w));
        all.sort();
        all
    }

    #[test]
    fn records_fall_in_the_right_windows_also_before_the_epoch() {
        let tumbling = TimeWindows::tumbling(Duration::from_secs(10));
        assert_eq!(
            windows(tumbling, 12_345),
            vec![TimeWindow::new(10_000, 20_000)]
        );
        assert_eq!(windows(tumbling, -1), vec![TimeWindow::new(-10_000, 0)]);
        let sliding = TimeWindows::sliding(Duration::from_secs(10), Duration::from_secs(5));
        assert_eq!(
            windows(sliding, 12_345),
            vec![
                TimeWindow::new(5_000, 15_000),
                TimeWindow::new(10_000, 20_000)
            ]
        );
        let shifted = tumbling.with_offset(Duration::from_secs(3));
        assert_eq!(
            windows(shifted, 12_345),
            vec![TimeWindow::new(3_000, 13_000)]
        );
    }

    #[test]
    fn bad_sizes_are_refused_with_the_fix() {
        let err = TimeWindows::sliding(Duration::from_secs(1), Duration::from_secs(2))
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("smaller slide"), "{err}");
        assert!(TimeWindows::tumbling(Duration::ZERO).validate().is_err());
    }
}
