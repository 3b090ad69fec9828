//! Watermarks generated at the sources, one tracker per source partition.

use std::time::Duration;

use super::element::{EventTime, MIN_WATERMARK};
use super::error::RuntimeError;

/// How a source derives watermarks from the event times it reads.
///
/// The watermark of a partition is the largest event time seen minus `out_of_orderness`, minus
/// one millisecond (a record exactly `out_of_orderness` late is still on time). A source subtask
/// emits the minimum over its partitions; a partition that delivered nothing for `idle_timeout`
/// is left out of that minimum until it delivers again, so a quiet partition does not stop
/// every window of the job. When every partition is idle, the watermark advances to the highest
/// partition watermark, then the subtask reports itself idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkStrategy {
    /// How late (in event time) a record may arrive after a later one and still be on time.
    pub out_of_orderness: Duration,
    /// After how long without data a partition stops holding the watermark back; `None` never.
    pub idle_timeout: Option<Duration>,
}

impl Default for WatermarkStrategy {
    /// Records in order per partition; partitions idle after 30 s.
    fn default() -> Self {
        WatermarkStrategy {
            out_of_orderness: Duration::ZERO,
            idle_timeout: Some(Duration::from_secs(30)),
        }
    }
}

impl WatermarkStrategy {
    /// Bounded out-of-orderness, with the default idle timeout.
    pub fn bounded_out_of_orderness(out_of_orderness: Duration) -> Self {
        WatermarkStrategy {
            out_of_orderness,
            ..Self::default()
        }
    }

    /// The same strategy with another idle timeout (`None`: partitions never count as idle).
    pub fn with_idle_timeout(mut self, idle_timeout: Option<Duration>) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Checks the values once, when the job is built.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        if self.out_of_orderness > Duration::from_secs(365 * 24 * 3600) {
            return Err(RuntimeError::InvalidConfig(format!(
                "watermark out_of_orderness {:?} is over a year; give the largest delay you expect",
                self.out_of_orderness
            )));
        }
        if self.idle_timeout == Some(Duration::ZERO) {
            return Err(RuntimeError::InvalidConfig(
                "watermark idle_timeout of 0 makes every partition idle; use None to never idle"
                    .to_string(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct PartitionClock {
    max_timestamp: EventTime,
    last_data_at: EventTime,
}

/// The watermark of a source subtask over the partitions it reads.
#[derive(Debug, Clone)]
pub struct PartitionWatermarks {
    strategy: WatermarkStrategy,
    partitions: Vec<PartitionClock>,
    emitted: EventTime,
    idle: bool,
}

/// What a source should emit after [`PartitionWatermarks::current`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatermarkUpdate {
    /// The watermark advanced to this value.
    Advanced(EventTime),
    /// Every partition is idle (emit once).
    Idle,
    /// Nothing new.
    Unchanged,
}

impl PartitionWatermarks {
    /// Trackers for `partitions` partitions, none seen yet; `now` is the processing time.
    pub fn new(strategy: WatermarkStrategy, partitions: usize, now: EventTime) -> Self {
        PartitionWatermarks {
            strategy,
            partitions: vec![
                PartitionClock {
                    max_timestamp: MIN_WATERMARK,
                    last_data_at: now,
                };
                partitions
            ],
            emitted: MIN_WATERMARK,
            idle: false,
        }
    }

    /// Records that `partition` delivered a record with event time `timestamp` at `now`.
    #[inline]
    pub fn observe(&mut self, partition: usize, timestamp: EventTime, now: EventTime) {
        let clock = &mut self.partitions[partition];
        clock.max_timestamp = clock.max_timestamp.max(timestamp);
        clock.last_data_at = now;
    }

    /// The partition's own watermark.
    fn partition_watermark(&self, clock: &PartitionClock) -> EventTime {
        let delay = self.strategy.out_of_orderness.as_millis() as i64;
        clock.max_timestamp.saturating_sub(delay).saturating_sub(1)
    }

    /// What changed, at processing time `now`. The watermark never goes back.
    pub fn current(&mut self, now: EventTime) -> WatermarkUpdate {
        let idle_after = self.strategy.idle_timeout.map(|d| d.as_millis() as i64);
        let active = self.partitions.iter().filter(|clock| match idle_after {
            Some(after) => now.saturating_sub(clock.last_data_at) < after,
            None => true,
        });
        match active.map(|clock| self.partition_watermark(clock)).min() {
            Some(watermark) if watermark > self.emitted => {
                self.emitted = watermark;
                self.idle = false;
                WatermarkUpdate::Advanced(watermark)
            }
            Some(_) => {
                if self.idle {
                    // Data came back below the emitted watermark: active again, nothing to emit.
                    self.idle = false;
                }
                WatermarkUpdate::Unchanged
            }
            None => {
                // Every partition is idle, so none holds the watermark back; it may still go as
                // far as the data of some partition justifies. Without this, a partition whose
                // data stopped shortly after another partition went idle would never let the
                // watermark reach its own records. The next call reports the idleness.
                let highest = self
                    .partitions
                    .iter()
                    .map(|clock| self.partition_watermark(clock))
                    .max();
                match highest {
                    Some(watermark) if watermark > self.emitted => {
                        self.emitted = watermark;
                        WatermarkUpdate::Advanced(watermark)
                    }
                    _ if !self.idle => {
                        self.idle = true;
                        WatermarkUpdate::Idle
                    }
                    _ => WatermarkUpdate::Unchanged,
                }
            }
        }
    }

    /// The last watermark returned.
    pub fn emitted(&self) -> EventTime {
        self.emitted
    }

    /// The own watermark of `partition` (before the minimum over partitions): how far its
    /// records have gone in event time. A source reads the partition furthest behind first.
    #[inline]
    pub fn partition(&self, partition: usize) -> EventTime {
        self.partition_watermark(&self.partitions[partition])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_partition_holds_the_watermark_until_it_idles() {
        let strategy = WatermarkStrategy {
            out_of_orderness: Duration::from_millis(100),
            idle_timeout: Some(Duration::from_secs(1)),
        };
        let mut marks = PartitionWatermarks::new(strategy, 2, 0);
        marks.observe(0, 1_000, 0);
        assert_eq!(marks.current(0), WatermarkUpdate::Unchanged);
        marks.observe(1, 500, 0);
        assert_eq!(marks.current(0), WatermarkUpdate::Advanced(399));
        marks.observe(0, 2_000, 900);
        assert_eq!(marks.current(900), WatermarkUpdate::Unchanged);
        // Partition 1 is silent for a second: partition 0 alone decides.
        assert_eq!(marks.current(1_000), WatermarkUpdate::Advanced(1_899));
        assert_eq!(marks.current(5_000), WatermarkUpdate::Idle);
        assert_eq!(marks.current(5_001), WatermarkUpdate::Unchanged);
        marks.observe(1, 3_000, 5_002);
        assert_eq!(marks.current(5_002), WatermarkUpdate::Advanced(2_899));
    }

    #[test]
    fn when_every_partition_idles_the_watermark_reaches_the_highest_one_first() {
        let strategy =
            WatermarkStrategy::default().with_idle_timeout(Some(Duration::from_millis(200)));
        let mut marks = PartitionWatermarks::new(strategy, 2, 0);
        // Partition 1 never delivers; partition 0 delivers once, then nothing.
        marks.observe(0, 5_000, 10);
        assert_eq!(marks.current(10), WatermarkUpdate::Unchanged);
        // Both idle by the next look: partition 0's own watermark is still reached.
        assert_eq!(marks.current(300), WatermarkUpdate::Advanced(4_999));
        assert_eq!(marks.current(350), WatermarkUpdate::Idle);
        assert_eq!(marks.current(400), WatermarkUpdate::Unchanged);
    }

    #[test]
    fn a_zero_idle_timeout_is_refused_with_the_fix() {
        let err = WatermarkStrategy::default()
            .with_idle_timeout(Some(Duration::ZERO))
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("use None"), "{err}");
    }
}
