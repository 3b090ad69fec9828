//! `process`: the general keyed operator, with keyed state and timers on both clocks.
//!
//! Checkpoints: the function lists its state handles in
//! [`keyed_state`](KeyedProcessFunction::keyed_state); the operator keeps the timers the
//! function registered in a keyed state of its own (on a durable backend), so that a subtask
//! restored from a checkpoint registers them again before its first record.

use omstream_core::runtime::{
    Batch, Data, EventTime, KeyedStream, Operator, OperatorContext, OperatorResult, Record, Stream,
    SubtaskInfo, TimeDomain, TimerService,
};
use omstream_core::state::{
    KeyedState, ListState, MapState, StateKey, StateOptions, StateValue, ValueState,
};

use crate::restore::{SubtaskValue, TimerMirror};

/// A keyed function over records, with state and timers: the building block for anything the
/// other operators do not cover (deduplication, timeouts, custom aggregation, alerts).
///
/// Each subtask makes its own instance (with the constructor given to
/// [`process`](Process::process)) and calls [`open`](KeyedProcessFunction::open) on it; keep state
/// handles in `Option`s filled in by `open`.
///
/// # Checkpoints
/// In a job with checkpoints, state lives in a durable store and is snapshotted at every
/// checkpoint: list every state handle the function created in
/// [`keyed_state`](KeyedProcessFunction::keyed_state) (a job whose function leaves one out
/// fails at its first checkpoint). Timers need nothing: the operator keeps them. After a
/// restore, a fresh instance is opened with state as of the checkpoint, and the timers pending
/// then fire as they would have. Fields other than state handles start afresh: keep anything
/// that must survive a crash in state.
pub trait KeyedProcessFunction<K, I, O>: Send + 'static {
    /// Called once per subtask before the first record: create state here.
    fn open(&mut self, states: &StateFactory<'_, O>) {
        let _ = states;
    }

    /// Handles one record of `key`.
    fn process(
        &mut self,
        key: &K,
        record: Record<I>,
        ctx: &mut ProcessContext<'_, K, O>,
    ) -> OperatorResult;

    /// A timer registered for `key` at `time` fired. Event-time timers all fire at the end of a
    /// bounded input (its final watermark is the maximum); processing-time timers still pending
    /// then do not.
    fn on_timer(
        &mut self,
        key: &K,
        time: EventTime,
        domain: TimeDomain,
        ctx: &mut ProcessContext<'_, K, O>,
    ) -> OperatorResult {
        let _ = (key, time, domain, ctx);
        Ok(())
    }

    /// Every state handle the function created in [`open`](KeyedProcessFunction::open), for
    /// checkpoints: a job with checkpoints snapshots each one at every checkpoint, and fails
    /// at its first checkpoint if some state created through the [`StateFactory`] is not
    /// listed. Functions without state keep the default (none).
    ///
    /// # Examples
    /// ```
    /// use omstream_operators::prelude::*;
    ///
    /// #[derive(Default)]
    /// struct Dedup {
    ///     seen: Option<Box<dyn ValueState<String, ()>>>,
    /// }
    ///
    /// impl KeyedProcessFunction<String, String, String> for Dedup {
    ///     fn open(&mut self, states: &StateFactory<'_, String>) {
    ///         self.seen = Some(states.value("seen"));
    ///     }
    ///     fn process(
    ///         &mut self,
    ///         key: &String,
    ///         record: Record<String>,
    ///         ctx: &mut ProcessContext<'_, String, String>,
    ///     ) -> OperatorResult {
    ///         let seen = self.seen.as_mut().expect("opened");
    ///         if seen.insert(key.clone(), ()).is_none() {
    ///             ctx.emit(record.timestamp, record.value);
    ///         }
    ///         Ok(())
    ///     }
    ///     fn keyed_state(&mut self) -> Vec<&mut dyn KeyedState> {
    ///         self.seen.as_deref_mut().map(|s| s as &mut dyn KeyedState).into_iter().collect()
    ///     }
    /// }
    /// ```
    fn keyed_state(&mut self) -> Vec<&mut dyn KeyedState> {
        Vec::new()
    }
}

/// Creates keyed state for a process function (whose output type is `O`), through its
/// operator's context, so that a checkpointed job knows how many states the function made.
/// State names are unique within the function; names starting with `process.` are the
/// operator's own.
pub struct StateFactory<'a, O> {
    ctx: &'a OperatorContext<O>,
}

impl<O> std::fmt::Debug for StateFactory<'_, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateFactory")
            .field("subtask", self.ctx.subtask())
            .finish()
    }
}

impl<O> StateFactory<'_, O> {
    /// A value state called `name`.
    pub fn value<K: StateKey, V: StateValue>(&self, name: &str) -> Box<dyn ValueState<K, V>> {
        self.ctx.value_state(name)
    }

    /// A value state called `name`, with options (a time to live).
    pub fn value_with<K: StateKey, V: StateValue>(
        &self,
        name: &str,
        options: StateOptions,
    ) -> Box<dyn ValueState<K, V>> {
        self.ctx.value_state_with(name, options)
    }

    /// A map state called `name`.
    pub fn map<K: StateKey, UK: StateKey + Ord, V: StateValue>(
        &self,
        name: &str,
    ) -> Box<dyn MapState<K, UK, V>> {
        self.ctx.map_state(name)
    }

    /// A map state called `name`, with options (a time to live).
    pub fn map_with<K: StateKey, UK: StateKey + Ord, V: StateValue>(
        &self,
        name: &str,
        options: StateOptions,
    ) -> Box<dyn MapState<K, UK, V>> {
        self.ctx.map_state_with(name, options)
    }

    /// A list state called `name`.
    pub fn list<K: StateKey, V: StateValue>(&self, name: &str) -> Box<dyn ListState<K, V>> {
        self.ctx.list_state(name)
    }

    /// A list state called `name`, with options (a time to live).
    pub fn list_with<K: StateKey, V: StateValue>(
        &self,
        name: &str,
        options: StateOptions,
    ) -> Box<dyn ListState<K, V>> {
        self.ctx.list_state_with(name, options)
    }

    /// Which subtask the function runs in.
    pub fn subtask(&self) -> &SubtaskInfo {
        self.ctx.subtask()
    }
}

/// How a timer's domain is stored.
fn domain_code(domain: TimeDomain) -> u8 {
    match domain {
        TimeDomain::EventTime => 0,
        TimeDomain::ProcessingTime => 1,
    }
}

fn domain_of(code: u8) -> TimeDomain {
    if code == 0 {
        TimeDomain::EventTime
    } else {
        TimeDomain::ProcessingTime
    }
}

/// The timers of a process operator: queues per domain, mirrored in keyed state (durable
/// backend) as `(time, domain)` per key.
struct ProcessTimers<K> {
    service: TimerService<K>,
    mirror: TimerMirror<K, u8>,
}

impl<K: StateKey> ProcessTimers<K> {
    fn register(&mut self, domain: TimeDomain, key: &K, time: EventTime) {
        self.mirror.add(key, time, domain_code(domain));
        self.service.queue(domain).register(time, key.clone());
    }

    fn delete(&mut self, domain: TimeDomain, key: &K, time: EventTime) -> bool {
        let deleted = self.service.queue(domain).delete(time, key);
        if deleted {
            self.mirror.remove(key, time, &domain_code(domain));
        }
        deleted
    }

    fn pop_due(&mut self, domain: TimeDomain, now: EventTime) -> Option<(EventTime, K)> {
        let (time, key) = self.service.queue(domain).pop_due(now)?;
        self.mirror.remove(&key, time, &domain_code(domain));
        Some((time, key))
    }
}

/// What a process function can do while handling a record or a timer.
pub struct ProcessContext<'a, K, O> {
    out: &'a mut OperatorContext<O>,
    timers: &'a mut ProcessTimers<K>,
    watermark: EventTime,
}

impl<K, O> std::fmt::Debug for ProcessContext<'_, K, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessContext")
            .field("subtask", self.out.subtask())
            .field("watermark", &self.watermark)
            .finish()
    }
}

impl<K: StateKey, O> ProcessContext<'_, K, O> {
    /// Emits a record.
    pub fn emit(&mut self, timestamp: EventTime, value: O) {
        self.out.emit(timestamp, value);
    }

    /// The current watermark (after a restore, the one the checkpoint had seen until a higher
    /// one arrives).
    pub fn watermark(&self) -> EventTime {
        self.watermark.max(self.out.watermark())
    }

    /// The current processing time.
    pub fn processing_time(&self) -> EventTime {
        self.out.processing_time()
    }

    /// Calls `on_timer` for `key` once the watermark reaches `time`.
    pub fn register_event_timer(&mut self, key: &K, time: EventTime) {
        self.timers.register(TimeDomain::EventTime, key, time);
    }

    /// Calls `on_timer` for `key` once processing time reaches `time`.
    pub fn register_processing_timer(&mut self, key: &K, time: EventTime) {
        self.timers.register(TimeDomain::ProcessingTime, key, time);
        self.out.request_wakeup(time);
    }

    /// Cancels a timer; true when there was one.
    pub fn delete_timer(&mut self, key: &K, time: EventTime, domain: TimeDomain) -> bool {
        self.timers.delete(domain, key, time)
    }
}

/// Runs a keyed process function.
pub trait Process<K, T> {
    /// Runs a function made by `make` (once per subtask) on every record, per key. Keys are
    /// serde types: the operator keeps its timers per key in keyed state.
    ///
    /// # Examples
    /// A running count per key:
    /// ```
    /// use omstream_operators::prelude::*;
    ///
    /// #[derive(Default)]
    /// struct RunningCount {
    ///     counts: Option<Box<dyn ValueState<String, u64>>>,
    /// }
    ///
    /// impl KeyedProcessFunction<String, String, (String, u64)> for RunningCount {
    ///     fn open(&mut self, states: &StateFactory<'_, (String, u64)>) {
    ///         self.counts = Some(states.value("counts"));
    ///     }
    ///     fn process(
    ///         &mut self,
    ///         key: &String,
    ///         record: Record<String>,
    ///         ctx: &mut ProcessContext<'_, String, (String, u64)>,
    ///     ) -> OperatorResult {
    ///         let counts = self.counts.as_mut().expect("opened");
    ///         let (count, _) = counts.get_or_insert_with(key, &mut || 0);
    ///         *count += 1;
    ///         ctx.emit(record.timestamp, (key.clone(), *count));
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let env = StreamEnv::default();
    /// let counts = env
    ///     .from_iter("words", ["a", "b", "a"].map(String::from))
    ///     .key_by(|w: &String| w.clone())
    ///     .process(RunningCount::default)
    ///     .collect();
    /// env.execute().await.unwrap();
    /// assert_eq!(counts.values().last(), Some(&("a".to_string(), 2)));
    /// # });
    /// ```
    fn process<O: Data, F: KeyedProcessFunction<K, T, O>>(
        &self,
        make: impl Fn() -> F + Send + 'static,
    ) -> Stream<O>;
}

impl<K: StateKey, T: Data> Process<K, T> for KeyedStream<K, T> {
    fn process<O: Data, F: KeyedProcessFunction<K, T, O>>(
        &self,
        make: impl Fn() -> F + Send + 'static,
    ) -> Stream<O> {
        let key = self.key_fn();
        self.transform("process", move |_: &SubtaskInfo| {
            Box::new(ProcessOperator::new(make(), key.clone())) as Box<dyn Operator<T, O>>
        })
    }
}

/// The operator running a process function.
pub(crate) struct ProcessOperator<K, T, O, F> {
    function: F,
    output: std::marker::PhantomData<fn() -> O>,
    key: std::sync::Arc<dyn Fn(&T) -> K + Send + Sync>,
    timers: ProcessTimers<K>,
    watermark: SubtaskValue<EventTime>,
}

impl<K: StateKey, T: Data, O: Data, F: KeyedProcessFunction<K, T, O>> ProcessOperator<K, T, O, F> {
    pub(crate) fn new(function: F, key: std::sync::Arc<dyn Fn(&T) -> K + Send + Sync>) -> Self {
        ProcessOperator {
            function,
            output: std::marker::PhantomData,
            key,
            timers: ProcessTimers {
                service: TimerService::default(),
                mirror: TimerMirror::default(),
            },
            watermark: SubtaskValue::watermark(),
        }
    }

    fn fire(
        &mut self,
        domain: TimeDomain,
        now: EventTime,
        out: &mut OperatorContext<O>,
    ) -> OperatorResult {
        while let Some((time, key)) = self.timers.pop_due(domain, now) {
            let mut ctx = ProcessContext {
                out,
                timers: &mut self.timers,
                watermark: *self.watermark.get(),
            };
            self.function.on_timer(&key, time, domain, &mut ctx)?;
        }
        if let Some(next) = self.timers.service.processing_time.next_time() {
            out.request_wakeup(next);
        }
        Ok(())
    }
}

impl<K: StateKey, T: Data, O: Data, F: KeyedProcessFunction<K, T, O>> Operator<T, O>
    for ProcessOperator<K, T, O, F>
{
    fn on_start(&mut self, ctx: &mut OperatorContext<O>) -> OperatorResult {
        self.function.open(&StateFactory { ctx });
        self.timers.mirror = TimerMirror::open(ctx, "process.timers");
        self.watermark.open(ctx, "process.watermark");
        // After a restore: the timers pending at the checkpoint.
        for (key, time, domain) in self.timers.mirror.restore() {
            self.timers
                .service
                .queue(domain_of(domain))
                .register(time, key);
        }
        if let Some(next) = self.timers.service.processing_time.next_time() {
            ctx.request_wakeup(next);
        }
        Ok(())
    }

    fn process_batch(&mut self, batch: Batch<T>, out: &mut OperatorContext<O>) -> OperatorResult {
        let watermark = *self.watermark.get();
        for record in batch {
            let key = (self.key)(&record.value);
            let mut ctx = ProcessContext {
                out,
                timers: &mut self.timers,
                watermark,
            };
            self.function.process(&key, record, &mut ctx)?;
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: EventTime,
        ctx: &mut OperatorContext<O>,
    ) -> OperatorResult {
        let watermark = self.watermark.advance(watermark);
        self.fire(TimeDomain::EventTime, watermark, ctx)
    }

    fn on_processing_time(
        &mut self,
        now: EventTime,
        ctx: &mut OperatorContext<O>,
    ) -> OperatorResult {
        self.fire(TimeDomain::ProcessingTime, now, ctx)
    }

    fn keyed_state(&mut self) -> Vec<&mut dyn KeyedState> {
        let mut states = self.function.keyed_state();
        states.extend(self.timers.mirror.keyed_state());
        states.extend(self.watermark.keyed_state());
        states
    }
}
