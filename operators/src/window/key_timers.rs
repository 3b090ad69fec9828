//! Window timers: keys per time, with a slot in each key's state saying which one is live.
//!
//! A key of a tumbling or sliding window has at most one live timer: the fire time in its
//! state's timer slot. Arming a key writes the slot and adds the key to the set of that time;
//! an entry whose time is no longer the key's slot (the key was re-armed earlier, or its state
//! is gone) is stale and skipped when it comes due. A key with a timer already is not armed
//! again for a later window (the firing re-arms it for the next window it has panes in), so
//! most records that open a pane cost no timer operation.
//!
//! The keys of one time are a hash set rather than a list for the order they come out in:
//! the state's hash order, so firing reads the keys' state in memory order (measured: in
//! arrival order every firing missed the cache, half again the cost of a sliding window).

use std::collections::BTreeMap;
use std::hash::Hash;

use omstream_core::runtime::EventTime;
use rustc_hash::FxHashSet;

/// The value of a timer slot with no timer.
pub(crate) const NO_TIMER: EventTime = EventTime::MAX;

/// Keys to fire, per time; a key may be listed at several times, its slot decides.
#[derive(Debug)]
pub(crate) struct KeyTimers<K> {
    by_time: BTreeMap<EventTime, FxHashSet<K>>,
}

impl<K> Default for KeyTimers<K> {
    fn default() -> Self {
        KeyTimers {
            by_time: BTreeMap::new(),
        }
    }
}

impl<K: Hash + Eq> KeyTimers<K> {
    /// Arms `key` at `time` if that is earlier than its slot; true when it was.
    #[inline]
    pub(crate) fn arm(&mut self, slot: &mut EventTime, time: EventTime, key: K) -> bool {
        if time >= *slot {
            return false;
        }
        *slot = time;
        self.by_time.entry(time).or_default().insert(key);
        true
    }

    /// Lists `key` at `time`, its slot already holding `time` (re-arming after a firing).
    #[inline]
    pub(crate) fn push(&mut self, time: EventTime, key: K) {
        self.by_time.entry(time).or_default().insert(key);
    }

    /// The earliest time with keys listed.
    pub(crate) fn next_time(&self) -> Option<EventTime> {
        self.by_time.keys().next().copied()
    }

    /// The keys listed at `time`, removed.
    pub(crate) fn take_at(&mut self, time: EventTime) -> FxHashSet<K> {
        self.by_time.remove(&time).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_armed_at_its_earliest_time_and_later_entries_go_stale() {
        let mut timers = KeyTimers::default();
        let mut slot = NO_TIMER;
        assert!(timers.arm(&mut slot, 20, "k"));
        assert!(
            !timers.arm(&mut slot, 30, "k"),
            "a later time waits for the chain"
        );
        assert!(timers.arm(&mut slot, 10, "k"));
        assert_eq!(slot, 10);
        assert_eq!(timers.next_time(), Some(10));
        assert_eq!(Vec::from_iter(timers.take_at(10)), ["k"]);
        timers.push(20, "k");
        // The entry at 20 from the first arming and the re-arming are one.
        assert_eq!(Vec::from_iter(timers.take_at(20)), ["k"]);
        assert_eq!(timers.next_time(), None);
    }
}
