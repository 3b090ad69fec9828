//! A window's configuration as the builder collects it, checked once when the job starts.

use omstream_core::runtime::{EventTime, RuntimeError, TimeDomain};

use super::assigner::TimeWindows;

/// Event times a window can place: within about 146 million years of the epoch, so that window
/// arithmetic never overflows. Records outside go to the late side output.
pub(crate) const TIMESTAMP_LIMIT: i64 = 1 << 62;

/// The largest window size, slide, gap or offset: 2^60 ms, about 36 million years.
const SPAN_LIMIT: i64 = 1 << 60;

/// Whether a window can place `timestamp` (see [`TIMESTAMP_LIMIT`]).
#[inline]
pub(crate) fn is_placeable(timestamp: EventTime) -> bool {
    (-TIMESTAMP_LIMIT..TIMESTAMP_LIMIT).contains(&timestamp)
}

/// Which records a window groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowKind {
    /// Tumbling, sliding or session windows on a clock.
    Time(TimeWindows),
    /// The last `size` records of a key, every `slide` records.
    Count { size: u64, slide: u64 },
}

/// Everything the window operators need besides the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowSpec {
    pub(crate) kind: WindowKind,
    pub(crate) domain: TimeDomain,
    /// Allowed lateness in milliseconds (event time only).
    pub(crate) lateness: i64,
}

impl WindowSpec {
    pub(crate) fn new(kind: WindowKind) -> Self {
        WindowSpec {
            kind,
            domain: TimeDomain::EventTime,
            lateness: 0,
        }
    }

    /// Checks the settings together; the error says what to change.
    pub(crate) fn validate(&self) -> Result<(), RuntimeError> {
        let bad = |what: &str| Err(RuntimeError::InvalidConfig(what.to_string()));
        match self.kind {
            WindowKind::Time(windows) => {
                windows.validate()?;
                let spans = match windows {
                    TimeWindows::Tumbling { size, offset } => [size, offset, 0],
                    TimeWindows::Sliding {
                        size,
                        slide,
                        offset,
                    } => [size, slide, offset],
                    TimeWindows::Session { gap } => [gap, 0, 0],
                };
                if spans.iter().any(|span| span.abs() > SPAN_LIMIT) {
                    return Err(RuntimeError::InvalidConfig(format!(
                        "{windows:?}: sizes, slides, gaps and offsets are at most 2^60 ms (36 million years); use a smaller one"
                    )));
                }
            }
            WindowKind::Count { size: 0, .. } => {
                return bad("a count window needs a size of at least 1 record")
            }
            WindowKind::Count { slide: 0, .. } => {
                return bad("a sliding count window needs a slide of at least 1 record")
            }
            WindowKind::Count { size, slide } if slide > size => {
                return Err(RuntimeError::InvalidConfig(format!(
                    "a sliding count window's slide ({slide}) is larger than its size ({size}): records between windows would be lost; use count_window({slide}) or a smaller slide"
                )))
            }
            WindowKind::Count { .. } => {
                if self.domain == TimeDomain::ProcessingTime {
                    return bad("count windows do not depend on time: remove processing_time()");
                }
                if self.lateness > 0 {
                    return bad("count windows have no lateness: remove allowed_lateness()");
                }
            }
        }
        if self.domain == TimeDomain::ProcessingTime && self.lateness > 0 {
            return bad(
                "processing-time windows have no late records: remove allowed_lateness() or use event time",
            );
        }
        Ok(())
    }

    /// When a window ending at `end` fires: on event time once the watermark reaches its last
    /// millisecond; on processing time once the clock reaches its end (so a record arriving in
    /// the window's last millisecond is still in it).
    #[inline]
    pub(crate) fn fire_time(&self, end: EventTime) -> EventTime {
        match self.domain {
            TimeDomain::EventTime => end - 1,
            TimeDomain::ProcessingTime => end,
        }
    }

    /// The end of the window that fires at `time`.
    #[inline]
    pub(crate) fn end_at(&self, time: EventTime) -> EventTime {
        match self.domain {
            TimeDomain::EventTime => time + 1,
            TimeDomain::ProcessingTime => time,
        }
    }

    pub(crate) fn is_processing_time(&self) -> bool {
        self.domain == TimeDomain::ProcessingTime
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn contradictory_settings_are_refused_with_the_fix() {
        let count = |size, slide| WindowSpec::new(WindowKind::Count { size, slide });
        assert!(count(3, 3).validate().is_ok());
        for (spec, fix) in [
            (count(0, 0), "at least 1"),
            (count(3, 0), "at least 1"),
            (count(3, 4), "count_window(4)"),
            (
                WindowSpec::new(WindowKind::Time(TimeWindows::tumbling(Duration::MAX))),
                "at most 2^60 ms",
            ),
            (
                WindowSpec {
                    domain: TimeDomain::ProcessingTime,
                    ..count(3, 1)
                },
                "remove processing_time()",
            ),
            (
                WindowSpec {
                    lateness: 5,
                    ..count(3, 1)
                },
                "remove allowed_lateness()",
            ),
            (
                WindowSpec {
                    domain: TimeDomain::ProcessingTime,
                    lateness: 5,
                    ..WindowSpec::new(WindowKind::Time(TimeWindows::tumbling(
                        Duration::from_secs(1),
                    )))
                },
                "remove allowed_lateness()",
            ),
        ] {
            let err = spec.validate().unwrap_err().to_string();
            assert!(err.contains(fix), "{err}");
        }
    }
}
