//! `IntervalBounds`: how far apart in time two records of an interval join may be.

use std::time::Duration;

use omstream_core::runtime::{EventTime, RuntimeError};

/// The range of `right.ts - left.ts`, in milliseconds, both ends included, in which a left
/// and a right record of an [`interval_join`](super::IntervalJoin::interval_join) match.
///
/// The bounds are signed (a right record may have to come before the left one), so they are
/// milliseconds like [`EventTime`], not [`Duration`]s; [`around`](IntervalBounds::around)
/// builds the common symmetric case from durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IntervalBounds {
    lower: i64,
    upper: i64,
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl IntervalBounds {
    /// `right.ts - left.ts` in `[lower, upper]` milliseconds. `lower` must not be above
    /// `upper` (checked when the job starts, or with [`validate`](Self::validate)).
    ///
    /// ```
    /// use omstream_operators::prelude::*;
    ///
    /// // The right record from 5 s before to 1 s after the left one.
    /// let bounds = IntervalBounds::millis(-5_000, 1_000);
    /// assert!(bounds.contains(10_000, 5_000) && bounds.contains(10_000, 11_000));
    /// assert!(!bounds.contains(10_000, 11_001));
    /// ```
    pub fn millis(lower: i64, upper: i64) -> Self {
        IntervalBounds { lower, upper }
    }

    /// The right record at most `before` before and at most `after` after the left one.
    pub fn around(before: Duration, after: Duration) -> Self {
        IntervalBounds {
            lower: -millis(before),
            upper: millis(after),
        }
    }

    /// The lowest `right.ts - left.ts` that matches, in milliseconds.
    pub fn lower(&self) -> i64 {
        self.lower
    }

    /// The highest `right.ts - left.ts` that matches, in milliseconds.
    pub fn upper(&self) -> i64 {
        self.upper
    }

    /// Whether a left record at `left` and a right one at `right` match.
    pub fn contains(&self, left: EventTime, right: EventTime) -> bool {
        let gap = (right as i128) - (left as i128);
        self.lower as i128 <= gap && gap <= self.upper as i128
    }

    /// Checks the bounds; the error says what to change.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        if self.lower > self.upper {
            return Err(RuntimeError::InvalidConfig(format!(
                "interval join bounds [{}, {}] ms are empty: the lower bound must not be above the upper one",
                self.lower, self.upper
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_inclusive_signed_and_checked() {
        let around = IntervalBounds::around(Duration::from_secs(2), Duration::from_millis(500));
        assert_eq!((around.lower(), around.upper()), (-2_000, 500));
        assert!(around.contains(0, -2_000) && around.contains(0, 500));
        assert!(!around.contains(0, -2_001) && !around.contains(0, 501));
        let widest = IntervalBounds::millis(i64::MIN, i64::MAX);
        assert!(widest.contains(0, i64::MIN) && !widest.contains(-1, i64::MAX));
        let err = IntervalBounds::millis(5, 4).validate().unwrap_err();
        assert!(err.to_string().contains("must not be above"), "{err}");
        assert!(IntervalBounds::millis(3, 3).validate().is_ok());
    }
}
