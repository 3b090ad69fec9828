//! What a window operator keeps per key: one entry per pane, session or count pane (named by
//! an `i64` id), in keyed state. Aggregates keep an accumulator per id
//! ([`AggregateContents`](super::accumulators::AggregateContents)); full-window functions keep
//! the records ([`RecordContents`](super::full_window::RecordContents)). The operators only
//! see this trait, so each works with both.

use std::ops::Range;

use omstream_core::runtime::{Data, EventTime, OperatorContext};
use omstream_core::state::KeyedState;

use super::assigner::TimeWindow;

/// The per-key, per-id contents of a window operator and how a window's result is made.
pub(crate) trait WindowContents<K, T>: Send + 'static {
    /// What a fired window produces.
    type Out: Data;

    /// Creates the keyed state; called once in the operator's `on_start`. `ids_per_key` is
    /// how many entries a key usually has at once (a sliding window's panes), to size for.
    fn open<O>(&mut self, ctx: &OperatorContext<O>, ids_per_key: usize);

    /// Adds a record to entry `id` of `key`: whether the entry was created, and the key's
    /// timer slot (see [`KeyTimers`](super::key_timers::KeyTimers); time windows only).
    fn add(&mut self, key: &K, id: i64, value: T) -> (bool, &mut EventTime);

    /// The result over the entries of `key` with ids in `ids`, and how many there were;
    /// `None` when there is none.
    fn result(
        &mut self,
        key: &K,
        window: &TimeWindow,
        ids: Range<i64>,
    ) -> Option<(Self::Out, usize)>;

    /// The result of entry `id` alone, removing it.
    fn take_result(&mut self, key: &K, window: &TimeWindow, id: i64) -> Option<Self::Out>;

    /// Moves entry `from` into entry `into` (sessions merging).
    fn merge(&mut self, key: &K, into: i64, from: i64);

    /// Removes entry `id`.
    fn remove(&mut self, key: &K, id: i64);

    /// Removes every entry with an id below `from`.
    fn retain_from(&mut self, key: &K, from: i64);

    /// Fires a window on the key's timer, in one go: `None` when the timer is stale (not the
    /// key's slot, or the key has no state). Else the window's result, and the key's next
    /// timer: `next_timer` of its first entry at or after `firing.later_from`, written to the
    /// slot. With `firing.drop_earlier`, the entries below `later_from` are removed.
    fn fire(
        &mut self,
        key: &K,
        firing: &Firing,
        next_timer: impl FnOnce(i64) -> EventTime,
    ) -> Option<(Option<Self::Out>, Option<EventTime>)>;

    /// Every key with entries, with its timer slot and entry ids: what a restored time
    /// window rebuilds its timers from.
    fn stored_keys(&mut self) -> Vec<StoredKey<K>>;

    /// The keyed states created in [`open`](WindowContents::open), for checkpoints.
    fn keyed_state(&mut self) -> Vec<&mut dyn KeyedState>;
}

/// A key's entries as its state holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredKey<K> {
    pub(crate) key: K,
    /// The key's timer slot ([`NO_TIMER`](super::key_timers::NO_TIMER) when it has none).
    pub(crate) timer: EventTime,
    /// The ids of its entries, in order.
    pub(crate) ids: Vec<i64>,
}

/// A window firing on its key's timer.
#[derive(Debug, Clone)]
pub(crate) struct Firing {
    /// The time that fired; stale unless it is the key's timer slot.
    pub(crate) time: EventTime,
    pub(crate) window: TimeWindow,
    /// The ids of the window's entries.
    pub(crate) ids: Range<i64>,
    /// Entries from here on are in later windows.
    pub(crate) later_from: i64,
    /// Whether to remove the entries before `later_from` (no lateness keeps them).
    pub(crate) drop_earlier: bool,
}
