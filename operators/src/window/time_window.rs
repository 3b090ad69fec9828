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

use std::sync::Arc;

use omstream_core::runtime::{
    Batch, Data, EventTime, Operator, OperatorContext, OperatorResult, TimerQueue,
};
use omstream_core::state::StateKey;

use super::clocked::{self, Clocked};
use super::contents::{Firing, WindowContents};
use super::key_timers::KeyTimers;
use super::output::{WindowEvent, WindowOutput};
use super::panes::PaneLayout;
use super::spec::{is_placeable, WindowSpec};

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
        Ok(())
    }

    fn process_batch(&mut self, batch: Batch<T>, ctx: &mut Ctx<K, C, T>) -> OperatorResult {
        let processing = self.spec.is_processing_time();
        // Processing time: every record of the batch arrived now. Event time: the watermark.
        let now = if processing {
            ctx.processing_time()
        } else {
            ctx.watermark()
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
}
