//! The session window operator, on event or processing time.
//!
//! Per key, a sorted list of open sessions. A record at `t` makes the window `[t, t + gap)`
//! and merges every session it overlaps (their contents merge); sessions that only touch stay
//! apart, so two records exactly `gap` apart are in two sessions. A session fires once the
//! clock passes its last millisecond.
//!
//! Timers: one when a session is created, at its fire time. A session that grows past that
//! time is found by the timer and re-armed at its new end, so extending a session costs no
//! timer operation.
//!
//! Lateness (event time): a session can grow backwards, so a record behind the watermark could
//! belong to a session that was already dropped. A record is therefore late when its own
//! timestamp is at or below `watermark - lateness`; such a record can never touch a dropped
//! session. A record that joins a session that already fired re-fires it at once (or, if the
//! session now reaches past the watermark, when it does) as an update.
//!
//! Restore: the sessions state says everything the timers did. In `on_start`, each key with a
//! pending session is armed at its earliest pending fire time (a firing re-arms it for the
//! next), and, with lateness, each fired session gets its cleanup again; the watermark the
//! checkpoint had seen is restored with the state ([`SubtaskValue`]).

use std::sync::Arc;

use omstream_core::runtime::{
    Batch, Data, EventTime, Operator, OperatorContext, OperatorResult, TimerQueue,
};
use omstream_core::state::{KeyedState, StateKey, ValueState};
use serde::{Deserialize, Serialize};

use super::assigner::TimeWindow;
use super::clocked::{self, Clocked};
use super::contents::WindowContents;
use super::output::{WindowEvent, WindowOutput};
use super::spec::{is_placeable, WindowSpec};
use crate::restore::SubtaskValue;

type Ctx<K, C, T> = OperatorContext<WindowEvent<K, <C as WindowContents<K, T>>::Out, T>>;

/// One open session of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    pub(crate) window: TimeWindow,
    /// Where its contents are: the start it was created with (unique among the key's
    /// sessions, as it stays inside the session's window and sessions do not overlap).
    pub(crate) id: i64,
    /// A result of it (or of a session merged into it) was emitted.
    pub(crate) emitted: bool,
    /// It has records not in an emitted result; it has a timer at or before its fire time.
    pub(crate) pending: bool,
}

/// Adds `own` (a new record's window) to the sorted, disjoint `sessions`: returns the index of
/// the session the record belongs to, whether it was created, and the ids of the sessions
/// merged into it (to merge their contents). `pending` and `emitted` are combined.
pub(crate) fn insert_session(
    sessions: &mut Vec<Session>,
    own: TimeWindow,
    merged_ids: &mut Vec<i64>,
) -> (usize, bool) {
    merged_ids.clear();
    let first = sessions.partition_point(|s| s.window.end <= own.start);
    let last = sessions.partition_point(|s| s.window.start < own.end);
    if first == last {
        let session = Session {
            window: own,
            id: own.start,
            emitted: false,
            pending: false,
        };
        sessions.insert(first, session);
        return (first, true);
    }
    let mut target = sessions[first];
    target.window = target.window.cover(&own);
    for other in sessions.drain(first + 1..last) {
        target.window = target.window.cover(&other.window);
        target.emitted |= other.emitted;
        target.pending |= other.pending;
        merged_ids.push(other.id);
    }
    sessions[first] = target;
    (first, false)
}

/// One subtask of a session window.
pub(crate) struct SessionOperator<K, T, C> {
    spec: WindowSpec,
    gap: i64,
    key: Arc<dyn Fn(&T) -> K + Send + Sync>,
    contents: C,
    sessions: Option<Box<dyn ValueState<K, Vec<Session>>>>,
    fire: TimerQueue<K>,
    cleanup: TimerQueue<K>,
    output: WindowOutput,
    merged_ids: Vec<i64>,
    /// The watermark seen (event time), kept across restores.
    watermark: SubtaskValue<EventTime>,
}

impl<K: StateKey, T: Data, C: WindowContents<K, T>> SessionOperator<K, T, C> {
    pub(crate) fn new(
        spec: WindowSpec,
        gap: i64,
        key: Arc<dyn Fn(&T) -> K + Send + Sync>,
        contents: C,
        output: WindowOutput,
    ) -> Self {
        SessionOperator {
            spec,
            gap,
            key,
            contents,
            sessions: None,
            fire: TimerQueue::default(),
            cleanup: TimerQueue::default(),
            output,
            merged_ids: Vec::new(),
            watermark: SubtaskValue::watermark(),
        }
    }

    /// Registers again the timers of the sessions the state holds (after a restore; on a
    /// fresh start there are none).
    fn restore_timers(&mut self) {
        let state = self.sessions.as_deref_mut().expect("created in on_start");
        let (spec, lateness) = (self.spec, self.spec.lateness);
        let (fire, cleanup) = (&mut self.fire, &mut self.cleanup);
        state.for_each(&mut |key, sessions| {
            let mut next: Option<EventTime> = None;
            for session in sessions {
                let fire_at = spec.fire_time(session.window.end);
                if session.pending {
                    next = Some(next.map_or(fire_at, |n| n.min(fire_at)));
                } else if lateness > 0 {
                    cleanup.register(fire_at.saturating_add(lateness), key.clone());
                }
            }
            if let Some(next) = next {
                fire.register(next, key.clone());
            }
        });
    }

    fn add(&mut self, key: K, time: EventTime, value: T, now: EventTime, ctx: &mut Ctx<K, C, T>) {
        let own = TimeWindow::new(time, time.saturating_add(self.gap));
        let state = self.sessions.as_deref_mut().expect("created in on_start");
        let (sessions, _) = state.get_or_insert_with(&key, &mut Vec::new);
        let (index, created) = insert_session(sessions, own, &mut self.merged_ids);
        let session = &mut sessions[index];
        for id in &self.merged_ids {
            self.contents.merge(&key, session.id, *id);
        }
        self.contents.add(&key, session.id, value);
        // A pending part of the merge already has a timer at or before this fire time.
        let armed = !created && session.pending;
        session.pending = true;
        let fire_at = self.spec.fire_time(session.window.end);
        if fire_at > now {
            if !armed {
                self.fire.register(fire_at, key);
            }
            return;
        }
        // Event time: the session is behind the watermark, so it fired before this record
        // (or the record alone is within the lateness): emit it now.
        let window = session.window;
        let is_update = session.emitted;
        session.emitted = true;
        session.pending = false;
        let expires = fire_at.saturating_add(self.spec.lateness);
        if let Some((value, _)) = self
            .contents
            .result(&key, &window, session.id..session.id + 1)
        {
            self.output
                .result(ctx, key.clone(), window, value, is_update);
        }
        self.cleanup.register(expires, key);
    }

    /// Fires every pending session of `key` due at `now`; re-arms for the next.
    fn fire_key(&mut self, key: K, now: EventTime, ctx: &mut Ctx<K, C, T>) {
        let state = self.sessions.as_deref_mut().expect("created in on_start");
        let Some(sessions) = state.get_mut(&key) else {
            return;
        };
        let lateness = self.spec.lateness;
        let mut next: Option<EventTime> = None;
        let mut index = 0;
        while index < sessions.len() {
            let session = &mut sessions[index];
            let fire_at = self.spec.fire_time(session.window.end);
            if !session.pending || fire_at > now {
                if session.pending {
                    next = Some(next.map_or(fire_at, |n| n.min(fire_at)));
                }
                index += 1;
                continue;
            }
            let (window, id, is_update) = (session.window, session.id, session.emitted);
            if lateness == 0 {
                if let Some(value) = self.contents.take_result(&key, &window, id) {
                    self.output
                        .result(ctx, key.clone(), window, value, is_update);
                }
                sessions.remove(index);
                continue;
            }
            session.emitted = true;
            session.pending = false;
            if let Some((value, _)) = self.contents.result(&key, &window, id..id + 1) {
                self.output
                    .result(ctx, key.clone(), window, value, is_update);
            }
            self.cleanup
                .register(fire_at.saturating_add(lateness), key.clone());
            index += 1;
        }
        if let Some(next) = next {
            self.fire.register(next, key.clone());
        }
        if sessions.is_empty() {
            state.remove(&key);
        }
    }

    /// Drops the fired sessions of `key` that expired at `watermark`.
    fn expire_key(&mut self, key: K, watermark: EventTime) {
        let state = self.sessions.as_deref_mut().expect("created in on_start");
        let Some(sessions) = state.get_mut(&key) else {
            return;
        };
        let lateness = self.spec.lateness;
        let contents = &mut self.contents;
        sessions.retain(|s| {
            let expired =
                !s.pending && s.window.max_timestamp().saturating_add(lateness) <= watermark;
            if expired {
                contents.remove(&key, s.id);
            }
            !expired
        });
        if sessions.is_empty() {
            state.remove(&key);
        }
    }
}

impl<K: StateKey, T: Data, C: WindowContents<K, T>> Clocked<WindowEvent<K, C::Out, T>>
    for SessionOperator<K, T, C>
{
    fn is_processing_time(&self) -> bool {
        self.spec.is_processing_time()
    }

    fn advance(&mut self, now: EventTime, ctx: &mut Ctx<K, C, T>) {
        while let Some(time) = self.fire.next_time().filter(|t| *t <= now) {
            for key in self.fire.take_at(time) {
                self.fire_key(key, now, ctx);
            }
        }
        while let Some(time) = self.cleanup.next_time().filter(|t| *t <= now) {
            for key in self.cleanup.take_at(time) {
                self.expire_key(key, now);
            }
        }
    }

    fn next_fire(&self) -> Option<EventTime> {
        self.fire.next_time()
    }
}

impl<K: StateKey, T: Data, C: WindowContents<K, T>> Operator<T, WindowEvent<K, C::Out, T>>
    for SessionOperator<K, T, C>
{
    fn on_start(&mut self, ctx: &mut Ctx<K, C, T>) -> OperatorResult {
        self.spec.validate()?;
        self.contents.open(ctx, 1);
        self.sessions = Some(ctx.value_state("window-sessions"));
        self.watermark.open(ctx, "window-watermark");
        self.restore_timers();
        clocked::request_next_wakeup(self, ctx);
        Ok(())
    }

    fn process_batch(&mut self, batch: Batch<T>, ctx: &mut Ctx<K, C, T>) -> OperatorResult {
        let processing = self.spec.is_processing_time();
        let now = if processing {
            ctx.processing_time()
        } else {
            ctx.watermark().max(*self.watermark.get())
        };
        for record in batch {
            let time = if processing { now } else { record.timestamp };
            let behind = time.saturating_add(self.spec.lateness) <= now;
            if !processing && (behind || !is_placeable(time)) {
                self.output.late(ctx, record);
                continue;
            }
            let key = (self.key)(&record.value);
            self.add(key, time, record.value, now, ctx);
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
        if let Some(sessions) = self.sessions.as_deref_mut() {
            states.push(sessions);
        }
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
    use crate::window::assigner::TimeWindows;
    use crate::window::output::Windowed;
    use crate::window::spec::WindowKind;

    type Contents = AggregateContents<u32, u32, Count>;
    type Event = WindowEvent<u32, u64, u32>;
    type TestSessions = Harness<u32, Event, SessionOperator<u32, u32, Contents>>;

    fn started(durable: &DurableStore) -> TestSessions {
        let spec = WindowSpec {
            lateness: 50,
            ..WindowSpec::new(WindowKind::Time(TimeWindows::session(
                Duration::from_millis(10),
            )))
        };
        let operator = SessionOperator::new(
            spec,
            10,
            Arc::new(|k: &u32| *k),
            AggregateContents::new(Count),
            WindowOutput::new(true),
        );
        Harness::start_with(operator, durable.backend(4)).expect("starts")
    }

    fn result(start: i64, end: i64, key: u32, value: u64, is_update: bool) -> (EventTime, String) {
        let window = TimeWindow::new(start, end);
        let event: Event = WindowEvent::Result(Windowed {
            key,
            window,
            value,
            is_update,
        });
        (window.max_timestamp(), format!("{event:?}"))
    }

    fn take(sessions: &mut TestSessions) -> Vec<(EventTime, String)> {
        let mut out: Vec<_> = sessions
            .take()
            .into_iter()
            .map(|(t, e)| (t, format!("{e:?}")))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn restored_sessions_fire_update_and_expire_as_before_the_crash() {
        let mut durable = DurableStore::new();
        let mut sessions = started(&durable);
        sessions.push(vec![(10, 1), (12, 2), (100, 1)]);
        sessions.watermark(40);
        assert_eq!(
            take(&mut sessions),
            vec![result(10, 20, 1, 1, false), result(12, 22, 2, 1, false)]
        );
        let checkpoint = durable.checkpoint(&mut sessions);
        sessions.push(vec![(15, 1)]);
        sessions.watermark(300);
        drop(sessions);

        durable.restore(checkpoint);
        let mut sessions = started(&durable);
        let op = sessions.operator();
        assert_eq!(
            op.fire.next_time(),
            Some(109),
            "the pending session is armed"
        );
        assert_eq!(op.cleanup.len(), 2, "the fired sessions expire again");
        // Within the lateness, as the restored watermark says: [10, 20) grows to [10, 25).
        sessions.push(vec![(15, 1)]);
        assert_eq!(take(&mut sessions), vec![result(10, 25, 1, 2, true)]);
        sessions.watermark(300);
        assert_eq!(take(&mut sessions), vec![result(100, 110, 1, 1, false)]);
        let op = sessions.operator();
        assert!(
            op.sessions.as_deref().expect("started").keys().is_empty(),
            "every session expired and was dropped"
        );
        assert_eq!(op.contents.stored_keys(), vec![]);
    }

    fn session(start: i64, end: i64) -> Session {
        Session {
            window: TimeWindow::new(start, end),
            id: start,
            emitted: false,
            pending: true,
        }
    }

    fn windows(sessions: &[Session]) -> Vec<(i64, i64)> {
        sessions
            .iter()
            .map(|s| (s.window.start, s.window.end))
            .collect()
    }

    #[test]
    fn a_record_bridging_sessions_merges_them_and_touching_ones_stay_apart() {
        let mut sessions = vec![session(0, 10), session(20, 30), session(40, 50)];
        let mut merged = Vec::new();
        // [10, 20) only touches both neighbours: a new session.
        let (index, created) = insert_session(&mut sessions, TimeWindow::new(10, 20), &mut merged);
        assert_eq!((index, created), (1, true));
        assert_eq!(windows(&sessions), [(0, 10), (10, 20), (20, 30), (40, 50)]);
        // [25, 45) overlaps [20, 30) and [40, 50): one session, keeping the first's id.
        sessions[3].emitted = true;
        let (index, created) = insert_session(&mut sessions, TimeWindow::new(25, 45), &mut merged);
        assert_eq!((index, created), (2, false));
        assert_eq!(merged, [40]);
        assert_eq!(windows(&sessions), [(0, 10), (10, 20), (20, 50)]);
        assert_eq!(sessions[2].id, 20);
        assert!(
            sessions[2].emitted,
            "an emitted part makes the merge an update"
        );
        // Inside an existing session: nothing changes shape.
        let (index, created) = insert_session(&mut sessions, TimeWindow::new(1, 5), &mut merged);
        assert_eq!((index, created, merged.len()), (0, false, 0));
        assert_eq!(windows(&sessions), [(0, 10), (10, 20), (20, 50)]);
    }
}
