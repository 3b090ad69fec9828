//! Pane arithmetic for tumbling and sliding windows.
//!
//! A sliding window of `size` starting every `slide` is cut into panes of
//! `gcd(size, slide)`: every pane lies wholly inside or wholly outside each window, so a record
//! updates exactly one pane, and a window is the merge of its `size / pane` panes. A tumbling
//! window is the case `slide == size`: one pane per window.

use omstream_core::runtime::EventTime;

use super::assigner::{TimeWindow, TimeWindows};

/// The panes and windows of a tumbling or sliding assigner. Panes are named by their start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PaneLayout {
    size: i64,
    slide: i64,
    pane: i64,
    offset: i64,
}

fn gcd(mut a: i64, mut b: i64) -> i64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl PaneLayout {
    /// The layout of windows of `size` every `slide` (both at least 1, checked before).
    pub(crate) fn new(size: i64, slide: i64, offset: i64) -> Self {
        PaneLayout {
            size,
            slide,
            pane: gcd(size, slide),
            offset,
        }
    }

    /// The length of a pane.
    pub(crate) fn pane(&self) -> i64 {
        self.pane
    }

    /// How many panes a window has.
    pub(crate) fn panes_per_window(&self) -> usize {
        (self.size / self.pane).max(1) as usize
    }

    /// The distance between window ends.
    pub(crate) fn slide(&self) -> i64 {
        self.slide
    }

    /// The pane `timestamp` falls in.
    #[inline]
    pub(crate) fn pane_of(&self, timestamp: EventTime) -> i64 {
        TimeWindows::last_start(timestamp, self.offset, self.pane)
    }

    /// The end of the first (earliest) window containing pane `pane`.
    #[inline]
    pub(crate) fn first_end(&self, pane: i64) -> i64 {
        TimeWindows::last_start(pane - self.size, self.offset, self.slide) + self.slide + self.size
    }

    /// The end of the last window containing pane `pane`.
    #[inline]
    pub(crate) fn last_end(&self, pane: i64) -> i64 {
        TimeWindows::last_start(pane, self.offset, self.slide) + self.size
    }

    /// The window ending at `end`.
    pub(crate) fn window(&self, end: i64) -> TimeWindow {
        TimeWindow::new(end - self.size, end)
    }

    /// The panes of the window ending at `end`: starts in `[end - size, end)`.
    pub(crate) fn panes_of(&self, end: i64) -> std::ops::Range<i64> {
        end - self.size..end
    }

    /// The first pane that a window after the one ending at `end` still needs.
    pub(crate) fn first_pane_after(&self, end: i64) -> i64 {
        end + self.slide - self.size
    }

    /// The first pane some window still accepts records for at `watermark`: a window is
    /// dropped once `max_timestamp + lateness <= watermark`.
    pub(crate) fn first_live_pane(&self, watermark: EventTime, lateness: i64) -> i64 {
        // Pane p lives while last_end(p) - 1 + lateness > watermark, i.e. while the start of
        // its last window is above `limit`.
        let limit = watermark
            .saturating_add(1)
            .saturating_sub(lateness)
            .saturating_sub(self.size);
        TimeWindows::last_start(limit, self.offset, self.slide) + self.slide
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The windows containing `t`, by brute force over window starts.
    fn windows_of(size: i64, slide: i64, offset: i64, t: i64) -> Vec<TimeWindow> {
        let assigner = TimeWindows::Sliding {
            size,
            slide,
            offset,
        };
        let mut all = Vec::new();
        assigner.for_each_window(t, |w| all.push(w));
        all.sort();
        all
    }

    #[test]
    fn tumbling_panes_are_the_windows() {
        let layout = PaneLayout::new(10, 10, 3);
        assert_eq!(layout.pane_of(12), 3);
        assert_eq!(layout.pane_of(13), 13);
        assert_eq!(layout.first_end(13), 23);
        assert_eq!(layout.last_end(13), 23);
        assert_eq!(layout.pane_of(-8), -17);
    }

    #[test]
    fn a_sliding_pane_is_the_gcd_of_size_and_slide() {
        let layout = PaneLayout::new(10, 4, 0);
        assert_eq!(layout.pane, 2);
        // Pane [6, 8) is in the windows starting at 0 and 4: ends 10 and 14.
        assert_eq!(layout.first_end(6), 10);
        assert_eq!(layout.last_end(6), 14);
        assert_eq!(layout.first_pane_after(10), 4);
    }

    proptest! {
        /// Every window of a record holds the record's whole pane, and the first and last window
        /// ends agree with the assigner.
        #[test]
        fn panes_tile_the_windows(
            slide in 1i64..12,
            factor in 1i64..5,
            extra in 0i64..12,
            offset in -20i64..20,
            t in -200i64..200,
        ) {
            let size = (slide * factor + extra).max(slide);
            let layout = PaneLayout::new(size, slide, offset);
            let pane = layout.pane_of(t);
            prop_assert!(pane <= t && t < pane + layout.pane);
            let windows = windows_of(size, slide, offset, t);
            for w in &windows {
                prop_assert!(w.start <= pane && pane + layout.pane <= w.end, "{w:?} {pane}");
                prop_assert!(layout.panes_of(w.end).contains(&pane));
            }
            prop_assert_eq!(layout.first_end(pane), windows[0].end);
            prop_assert_eq!(layout.last_end(pane), windows[windows.len() - 1].end);
        }

        /// A pane is live exactly while its last window is within the lateness.
        #[test]
        fn live_panes_are_those_of_unexpired_windows(
            slide in 1i64..12,
            factor in 1i64..4,
            offset in -20i64..20,
            t in -100i64..100,
            watermark in -150i64..150,
            lateness in 0i64..30,
        ) {
            let layout = PaneLayout::new(slide * factor, slide, offset);
            let pane = layout.pane_of(t);
            let live = layout.last_end(pane) - 1 + lateness > watermark;
            prop_assert_eq!(pane >= layout.first_live_pane(watermark, lateness), live);
        }
    }
}
