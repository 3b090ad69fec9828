//! The tumbling and sliding window operator, on event or processing time.
//!
//! Per key, a record updates the one pane it falls in (see [`PaneLayout`]); a window fires by
//! merging its panes. Timers ([`KeyTimers`]): a key has one, at the next window it has panes
//! in. A record that opens a pane arms the key only if that pane's first window comes before
//! the key's timer; a firing re-arms the key at the next window holding any of its panes. So a
//! record costs one state lookup (no timer work) unless it opens a key's earliest pane.
//!
//! Lateness (event time): a record whose windows have all expired (`max_timestamp + lateness
//! <= watermark`), or whose timestamp no window can place (see [`is_placeable`]), goes to the
//! side output. Otherwise it is added to its pane, and every window of the pane that already
//! fired and has not expired is emitted again at once as an update.
//! A window's panes are dropped when it expires: at its firing without lateness, else by a
//! cleanup timer.
//!
//! Restore: the timers are rebuilt in `on_start` from the keyed state, which holds every key's
//! timer slot and panes: each key is armed at its slot, and (with lateness) a cleanup is
//! registered at the expiry of each of its panes. The watermark the checkpoint had seen is
//! restored with it ([`SubtaskValue`]), so records are late exactly as before the crash.

use std::sync::Arc;

use omstream_core::runtime::{
    Batch, Data, EventTime, Operator, OperatorContext, OperatorResult, TimerQueue,
};
use omstream_core::state::{KeyedState, StateKey};

use super::clocked::{self, Clocked};
use super::contents::{Firing, StoredKey, WindowContents};
use super::key_timers::{KeyTimers, NO_TIMER};
use super::output::{WindowEvent, WindowOutput};
use super::panes::PaneLayout;
use super::spec::{is_placeable, WindowSpec};
use crate::restore::SubtaskValue;

type Ctx<K, C, T> = OperatorContext<WindowEvent<K, <C as WindowContents<K, T>>::Out, T>>;

/// A pane and when its first and last windows fire: computed once per run of records in one
/// pane (batches are short in event time), so most records cost no division.
#[derive(Debug, Clone, Copy)]
struct PaneBounds {
    pane: i64,
    pane_end: i64,
    first_fire: EventTime,
    last_fire: EventTime,
}

impl PaneBounds {
    #[inline]
    fn contains(&self, time: EventTime) -> bool {
        self.pane <= time && time < self.pane_end
    }
}

/// One subtask of a tumbling or sliding window.
pub(crate) struct TimeWindowOperator<K, T, C> {
    spec: WindowSpec,
    layout: PaneLayout,
    key: Arc<dyn Fn(&T) -> K + Send + Sync>,
    contents: C,
    /// Window firings: each key with panes has one, at the next window it has records in.
    fire: KeyTimers<K>,
    /// Expiries: at `max_timestamp + lateness` of fired windows (with lateness only).
    cleanup: TimerQueue<K>,
    output: WindowOutput,
    /// The watermark seen (event time), kept across restores.
    watermark: SubtaskValue<EventTime>,
}

impl<K: StateKey, T: Data, C: WindowContents<K, T>> TimeWindowOperator<K, T, C> {
    pub(crate) fn new(
        spec: WindowSpec,
        layout: PaneLayout,
        key: Arc<dyn Fn(&T) -> K + Send + Sync>,
        contents: C,
        output: WindowOutput,
    ) -> Self {
        TimeWindowOperator {
            spec,
            layout,
            key,
            contents,
            fire: KeyTimers::default(),
            cleanup: TimerQueue::default(),
            output,
            watermark: SubtaskValue::watermark(),
        }
    }

    /// Registers again the timers of the keys the state holds (after a restore; on a fresh
    /// start there are none): the fire timer in each key's slot and, with lateness, a
    /// cleanup at the expiry of each of its panes.
    fn restore_timers(&mut self) {
        let lateness = self.spec.lateness;
        for StoredKey { key, timer, ids } in self.contents.stored_keys() {
            if lateness > 0 {
                for pane in ids {
                    let last_fire = self.spec.fire_time(self.layout.last_end(pane));
                    self.cleanup
                        .register(last_fire.saturating_add(lateness), key.clone());
                }
            }
            if timer != NO_TIMER {
                self.fire.push(timer, key);
            }
        }
    }

    fn bounds(&self, time: EventTime) -> PaneBounds {
        let pane = self.layout.pane_of(time);
        PaneBounds {
            pane,
            pane_end: pane + self.layout.pane(),
            first_fire: self.spec.fire_time(self.layout.first_end(pane)),
            last_fire: self.spec.fire_time(self.layout.last_end(pane)),
        }
    }

    /// The fire time of the first window of `pane` that has not fired at `now`, if any.
    fn first_unfired(&self, pane: i64, now: EventTime) -> Option<EventTime> {
        let last_end = self.layout.last_end(pane);
        let mut end = self.layout.first_end(pane);
        while end <= last_end {
            let fire_at = self.spec.fire_time(end);
            if fire_at > now {
                return Some(fire_at);
            }
            end += self.layout.slide();
        }
        None
    }

    /// A record was added to `pane`, some windows of which already fired: re-emit those still
    /// within the lateness.
    fn update_fired(
        &mut self,
        key: &K,
        pane: i64,
        created: bool,
        watermark: EventTime,
        ctx: &mut Ctx<K, C, T>,
    ) {
        let lateness = self.spec.lateness;
        let last_end = self.layout.last_end(pane);
        let mut end = self.layout.first_end(pane);
        while end <= last_end {
            let fire_at = self.spec.fire_time(end);
            if fire_at > watermark {
                break;
            }
            let expires = fire_at.saturating_add(lateness);
            if expires > watermark {
                let window = self.layout.window(end);
                let panes = self.layout.panes_of(end);
                if let Some((value, count)) = self.contents.result(key, &window, panes) {
                    // A new pane alone in its window: the key had no result for it yet.
                    let is_update = !created || count > 1;
                    self.output
                        .result(ctx, key.clone(), window, value, is_update);
                }
                self.cleanup.register(expires, key.clone());
            }
            end += self.layout.slide();
        }
    }

    /// Fires `firing`'s window for `key`, unless the timer is stale; re-arms the key at the
    /// next window it has panes in.
    fn fire_window(&mut self, key: K, firing: &Firing, ctx: &mut Ctx<K, C, T>) {
        let (layout, spec) = (self.layout, self.spec);
        let end = firing.window.end;
        let next_timer =
            |pane: i64| spec.fire_time(layout.first_end(pane).max(end + layout.slide()));
        let Some((result, next)) = self.contents.fire(&key, firing, next_timer) else {
            return;
        };
        if let Some(value) = result {
            self.output
                .result(ctx, key.clone(), firing.window, value, false);
        }
        if let Some(next) = next {
            self.fire.push(next, key.clone());
        }
        if spec.lateness > 0 {
            let expires = firing.time.saturating_add(spec.lateness);
            self.cleanup.register(expires, key);
        }
    }
}

impl<K: StateKey, T: Data, C: WindowContents<K, T>> Clocked<WindowEvent<K, C::Out, T>>
    for TimeWindowOperator<K, T, C>
{
    fn is_processing_time(&self) -> bool {
        self.spec.is_processing_time()
    }

    /// Fires every window due at `now`, in time order, then drops what expired.
    fn advance(&mut self, now: EventTime, ctx: &mut Ctx<K, C, T>) {
        while let Some(time) = self.fire.next_time().filter(|t| *t <= now) {
            let end = self.spec.end_at(time);
            let firing = Firing {
                time,
                window: self.layout.window(end),
                ids: self.layout.panes_of(end),
                later_from: self.layout.first_pane_after(end),
                drop_earlier: self.spec.lateness == 0,
            };
            let keys = self.fire.take_at(time);
            for key in keys {
                self.fire_window(key, &firing, ctx);
            }
        }
        // After the firings: a cleanup never takes a pane that a window due now still needs.
        while let Some(time) = self.cleanup.next_time().filter(|t| *t <= now) {
            let from = self.layout.first_live_pane(now, self.spec.lateness);
            for key in self.cleanup.take_at(time) {
                self.contents.retain_from(&key, from);
            }
        }
    }

    fn next_fire(&self) -> Option<EventTime> {
        self.fire.next_time()
    }
}

impl<K: StateKey, T: Data, C: WindowContents<K, T>> Operator<T, WindowEvent<K, C::Out, T>>
    for TimeWindowOperator<K, T, C>
{
    fn on_start(&mut self, ctx: &mut Ctx<K, C, T>) -> OperatorResult {
        self.spec.validate()?;
        self.contents.open(ctx, self.layout.panes_per_window());
        self.watermark.open(ctx, "window-watermark");
        self.restore_timers();
        clocked::request_next_wakeup(self, ctx);
        Ok(())
    }

    fn process_batch(&mut self, batch: Batch<T>, ctx: &mut Ctx<K, C, T>) -> OperatorResult {
        let processing = self.spec.is_processing_time();
        // Processing time: every record of the batch arrived now. Event time: the watermark.
        let now = if processing {
            ctx.processing_time()
        } else {
            ctx.watermark().max(*self.watermark.get())
        };
        let mut cached: Option<PaneBounds> = None;
        for record in batch {
            let time = if processing { now } else { record.timestamp };
            let bounds = match cached {
                Some(bounds) if bounds.contains(time) => bounds,
                _ if !is_placeable(time) => {
                    self.output.late(ctx, record);
                    continue;
                }
                _ => *cached.insert(self.bounds(time)),
            };
            if bounds.first_fire > now {
                // No window of the pane fired yet: the common case, one state lookup.
                let key = (self.key)(&record.value);
                let (created, timer) = self.contents.add(&key, bounds.pane, record.value);
                if created {
                    self.fire.arm(timer, bounds.first_fire, key);
                }
                continue;
            }
            // Event time only: processing-time records are never behind their windows.
            if bounds.last_fire.saturating_add(self.spec.lateness) <= now {
                self.output.late(ctx, record);
                continue;
            }
            let key = (self.key)(&record.value);
            let next_fire = self.first_unfired(bounds.pane, now);
            let (created, timer) = self.contents.add(&key, bounds.pane, record.value);
            if let Some(next_fire) = next_fire.filter(|_| created) {
                self.fire.arm(timer, next_fire, key.clone());
            }
            self.update_fired(&key, bounds.pane, created, now, ctx);
        }
        clocked::request_next_wakeup(self, ctx);
        Ok(())
    }

    fn on_watermark(&mut self, watermark: EventTime, ctx: &mut Ctx<K, C, T>) -> OperatorResult {
        let watermark = self.watermark.advance(watermark);
        clocked::on_watermark(self, watermark, ctx);
        Ok(())
    }

    fn on_processing_time(&mut self, now: EventTime, ctx: &mut Ctx<K, C, T>) -> OperatorResult {
        clocked::on_processing_time(self, now, ctx);
        Ok(())
    }

    fn on_end(&mut self, ctx: &mut Ctx<K, C, T>) -> OperatorResult {
        clocked::on_end(self, ctx);
        Ok(())
    }

    fn keyed_state(&mut self) -> Vec<&mut dyn KeyedState> {
        let mut states = self.contents.keyed_state();
        states.extend(self.watermark.keyed_state());
        states
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::harness::{DurableStore, Harness};
    use crate::window::accumulators::AggregateContents;
    use crate::window::aggregate::Count;
    use crate::window::assigner::{TimeWindow, TimeWindows};
    use crate::window::output::Windowed;
    use crate::window::spec::WindowKind;

    type Contents = AggregateContents<u32, u32, Count>;
    type Event = WindowEvent<u32, u64, u32>;
    type TestWindow = Harness<u32, Event, TimeWindowOperator<u32, u32, Contents>>;

    fn started(durable: &DurableStore) -> TestWindow {
        let spec = WindowSpec {
            lateness: 50,
            ..WindowSpec::new(WindowKind::Time(TimeWindows::tumbling(
                Duration::from_millis(100),
            )))
        };
        let operator = TimeWindowOperator::new(
            spec,
            PaneLayout::new(100, 100, 0),
            Arc::new(|k: &u32| *k),
            AggregateContents::new(Count),
            WindowOutput::new(true),
        );
        Harness::start_with(operator, durable.backend(4)).expect("starts")
    }

    fn result(start: i64, key: u32, value: u64, is_update: bool) -> (EventTime, String) {
        let window = TimeWindow::new(start, start + 100);
        let event: Event = WindowEvent::Result(Windowed {
            key,
            window,
            value,
            is_update,
        });
        (window.max_timestamp(), format!("{event:?}"))
    }

    fn take(window: &mut TestWindow) -> Vec<(EventTime, String)> {
        let mut out: Vec<_> = window
            .take()
            .into_iter()
            .map(|(t, e)| (t, format!("{e:?}")))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_restored_window_fires_updates_and_drops_its_panes_when_they_expire() {
        let mut durable = DurableStore::new();
        let mut window = started(&durable);
        window.push(vec![(10, 1), (20, 2), (150, 1)]);
        window.watermark(99);
        assert_eq!(
            take(&mut window),
            vec![result(0, 1, 1, false), result(0, 2, 1, false)]
        );
        let checkpoint = durable.checkpoint(&mut window);
        window.push(vec![(30, 1)]);
        window.watermark(300);
        drop(window);

        durable.restore(checkpoint);
        let mut window = started(&durable);
        let op = window.operator();
        assert_eq!(
            op.fire.next_time(),
            Some(199),
            "key 1's next window is armed"
        );
        assert_eq!(op.cleanup.len(), 3, "the panes of both keys expire again");
        // Within the lateness of [0, 100), as the restored watermark says: an update.
        window.push(vec![(30, 1)]);
        assert_eq!(take(&mut window), vec![result(0, 1, 2, true)]);
        window.watermark(300);
        assert_eq!(take(&mut window), vec![result(100, 1, 1, false)]);
        assert_eq!(
            window.operator().contents.stored_keys(),
            vec![],
            "every pane expired and was dropped"
        );
    }
}
