//! Keyed timers on event time and processing time, fired in time order.

use std::collections::BTreeMap;
use std::hash::Hash;

use rustc_hash::FxHashSet;

use super::element::EventTime;

/// Which clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeDomain {
    /// Fires when the watermark reaches the time.
    EventTime,
    /// Fires when the wall clock reaches the time.
    ProcessingTime,
}

/// Timers per key. Registering the same (time, key) twice keeps one timer.
#[derive(Debug)]
pub struct TimerQueue<K> {
    by_time: BTreeMap<EventTime, FxHashSet<K>>,
    len: usize,
}

impl<K> Default for TimerQueue<K> {
    fn default() -> Self {
        TimerQueue {
            by_time: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq + Clone> TimerQueue<K> {
    /// Schedules a timer for `key` at `time`; true when it was not already scheduled.
    pub fn register(&mut self, time: EventTime, key: K) -> bool {
        let added = self.by_time.entry(time).or_default().insert(key);
        self.len += usize::from(added);
        added
    }

    /// Cancels the timer for `key` at `time`; true when there was one.
    pub fn delete(&mut self, time: EventTime, key: &K) -> bool {
        let Some(keys) = self.by_time.get_mut(&time) else {
            return false;
        };
        let removed = keys.remove(key);
        if keys.is_empty() {
            self.by_time.remove(&time);
        }
        self.len -= usize::from(removed);
        removed
    }

    /// Removes and returns the earliest timer at or before `now`, if any. Call it in a loop:
    /// a timer callback may register new timers that are due as well.
    pub fn pop_due(&mut self, now: EventTime) -> Option<(EventTime, K)> {
        let mut entry = self.by_time.first_entry()?;
        if *entry.key() > now {
            return None;
        }
        let time = *entry.key();
        let key = entry.get().iter().next().cloned()?;
        entry.get_mut().remove(&key);
        if entry.get().is_empty() {
            entry.remove();
        }
        self.len -= 1;
        Some((time, key))
    }

    /// Every timer at exactly `time`, removed (all keys of one window end at once).
    pub fn take_at(&mut self, time: EventTime) -> Vec<K> {
        let keys = self
            .by_time
            .remove(&time)
            .map(|k| k.into_iter().collect::<Vec<_>>())
            .unwrap_or_default();
        self.len -= keys.len();
        keys
    }

    /// The earliest scheduled time.
    pub fn next_time(&self) -> Option<EventTime> {
        self.by_time.keys().next().copied()
    }

    /// How many timers are scheduled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The event-time and processing-time timers of a keyed operator.
#[derive(Debug)]
pub struct TimerService<K> {
    /// Timers that fire on the watermark.
    pub event_time: TimerQueue<K>,
    /// Timers that fire on the wall clock.
    pub processing_time: TimerQueue<K>,
}

impl<K> Default for TimerService<K> {
    fn default() -> Self {
        TimerService {
            event_time: TimerQueue::default(),
            processing_time: TimerQueue::default(),
        }
    }
}

impl<K: Hash + Eq + Clone> TimerService<K> {
    /// The queue of a domain.
    pub fn queue(&mut self, domain: TimeDomain) -> &mut TimerQueue<K> {
        match domain {
            TimeDomain::EventTime => &mut self.event_time,
            TimeDomain::ProcessingTime => &mut self.processing_time,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_in_time_order_once_each() {
        let mut q = TimerQueue::default();
        assert!(q.register(20, "b"));
        assert!(q.register(10, "a"));
        assert!(!q.register(10, "a"));
        assert!(q.register(30, "c"));
        assert!(q.delete(30, &"c"));
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop_due(15), Some((10, "a")));
        assert_eq!(q.pop_due(15), None);
        assert_eq!(q.pop_due(100), Some((20, "b")));
        assert!(q.is_empty());
    }
}
