//! The count window operator: per key, every `slide` records, the last `size` records (fewer
//! while a key has seen fewer than `size`); a tumbling count window is `slide == size`.
//!
//! Records are grouped in panes of `gcd(size, slide)` records, so each record updates one
//! accumulator and a window merges `size / pane` of them. Count windows do not depend on time:
//! no timers, no lateness. When the input ends, the records of a window that did not reach its
//! `slide`th record are dropped: no partial window is emitted.

use std::collections::VecDeque;
use std::sync::Arc;

use omstream_core::runtime::{Batch, Data, EventTime, Operator, OperatorContext, OperatorResult};
use omstream_core::state::{KeyedState, StateKey, ValueState};
use serde::{Deserialize, Serialize};

use super::assigner::TimeWindow;
use super::contents::WindowContents;
use super::output::{WindowEvent, WindowOutput};
use super::spec::{WindowKind, WindowSpec};

type Ctx<K, C, T> = OperatorContext<WindowEvent<K, <C as WindowContents<K, T>>::Out, T>>;

/// A run of consecutive records of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct CountPane {
    id: i64,
    records: u64,
    min_timestamp: EventTime,
    max_timestamp: EventTime,
}

/// A key's panes, oldest first, and the records since the last firing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct CountPanes {
    panes: VecDeque<CountPane>,
    since_fired: u64,
    next_id: i64,
}

/// One subtask of a count window.
pub(crate) struct CountWindowOperator<K, T, C> {
    spec: WindowSpec,
    size: u64,
    slide: u64,
    pane: u64,
    key: Arc<dyn Fn(&T) -> K + Send + Sync>,
    contents: C,
    panes: Option<Box<dyn ValueState<K, CountPanes>>>,
    output: WindowOutput,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl<K: StateKey, T: Data, C: WindowContents<K, T>> CountWindowOperator<K, T, C> {
    pub(crate) fn new(
        spec: WindowSpec,
        key: Arc<dyn Fn(&T) -> K + Send + Sync>,
        contents: C,
        output: WindowOutput,
    ) -> Self {
        let (size, slide) = match spec.kind {
            WindowKind::Count { size, slide } => (size, slide),
            WindowKind::Time(_) => (1, 1),
        };
        CountWindowOperator {
            spec,
            size,
            slide,
            pane: gcd(size, slide).max(1),
            key,
            contents,
            panes: None,
            output,
        }
    }

    fn add(&mut self, key: K, timestamp: EventTime, value: T, ctx: &mut Ctx<K, C, T>) {
        let state = self.panes.as_deref_mut().expect("created in on_start");
        let (key_panes, _) = state.get_or_insert_with(&key, &mut CountPanes::default);
        let pane = match key_panes.panes.back_mut() {
            Some(pane) if pane.records < self.pane => pane,
            _ => {
                let id = key_panes.next_id;
                key_panes.next_id += 1;
                key_panes.panes.push_back(CountPane {
                    id,
                    records: 0,
                    min_timestamp: timestamp,
                    max_timestamp: timestamp,
                });
                key_panes.panes.back_mut().expect("just pushed")
            }
        };
        pane.records += 1;
        pane.min_timestamp = pane.min_timestamp.min(timestamp);
        pane.max_timestamp = pane.max_timestamp.max(timestamp);
        self.contents.add(&key, pane.id, value);
        key_panes.since_fired += 1;
        if key_panes.since_fired < self.slide {
            return;
        }
        key_panes.since_fired = 0;
        // The window: the last size / pane panes (all full, as slide is a multiple of pane).
        let count = (self.size / self.pane) as usize;
        let skip = key_panes.panes.len().saturating_sub(count);
        let in_window = key_panes.panes.range(skip..);
        let (mut first_id, mut last_id) = (i64::MAX, i64::MIN);
        let (mut min, mut max) = (EventTime::MAX, EventTime::MIN);
        for pane in in_window {
            first_id = first_id.min(pane.id);
            last_id = last_id.max(pane.id);
            min = min.min(pane.min_timestamp);
            max = max.max(pane.max_timestamp);
        }
        let window = TimeWindow::new(min, max.saturating_add(1));
        // Panes the next window still needs: its size minus the slide it moves by.
        let keep = ((self.size - self.slide) / self.pane) as usize;
        if keep == 0 && first_id == last_id {
            if let Some(value) = self.contents.take_result(&key, &window, first_id) {
                self.output.result(ctx, key.clone(), window, value, false);
            }
            key_panes.panes.clear();
        } else {
            if let Some((value, _)) = self.contents.result(&key, &window, first_id..last_id + 1) {
                self.output.result(ctx, key.clone(), window, value, false);
            }
            while key_panes.panes.len() > keep {
                if let Some(old) = key_panes.panes.pop_front() {
                    self.contents.remove(&key, old.id);
                }
            }
        }
        if key_panes.panes.is_empty() {
            state.remove(&key);
        }
    }
}

impl<K: StateKey, T: Data, C: WindowContents<K, T>> Operator<T, WindowEvent<K, C::Out, T>>
    for CountWindowOperator<K, T, C>
{
    fn on_start(&mut self, ctx: &mut Ctx<K, C, T>) -> OperatorResult {
        self.spec.validate()?;
        self.contents.open(ctx, (self.size / self.pane) as usize);
        self.panes = Some(ctx.value_state("window-count-panes"));
        Ok(())
    }

    fn process_batch(&mut self, batch: Batch<T>, ctx: &mut Ctx<K, C, T>) -> OperatorResult {
        for record in batch {
            let key = (self.key)(&record.value);
            self.add(key, record.timestamp, record.value, ctx);
        }
        Ok(())
    }

    /// Count windows have no timers: their state is all a restore needs.
    fn keyed_state(&mut self) -> Vec<&mut dyn KeyedState> {
        let mut states = self.contents.keyed_state();
        if let Some(panes) = self.panes.as_deref_mut() {
            states.push(panes);
        }
        states
    }
}
