//! `process`: the general keyed operator, with keyed state and timers on both clocks.

use omstream_core::runtime::{
    Batch, Data, EventTime, Key, KeyedStream, Operator, OperatorContext, OperatorResult, Record,
    Stream, SubtaskInfo, TimeDomain, TimerService,
};
use omstream_core::state::{ListState, MapState, StateBackend, StateKey, StateValue, ValueState};

/// A keyed function over records, with state and timers: the building block for anything the
/// other operators do not cover (deduplication, timeouts, custom aggregation, alerts).
///
/// Each subtask makes its own instance (with the constructor given to
/// [`process`](Process::process)) and calls [`open`](KeyedProcessFunction::open) on it; keep state
/// handles in `Option`s filled in by `open`.
pub trait KeyedProcessFunction<K, I, O>: Send + 'static {
    /// Called once per subtask before the first record: create state here.
    fn open(&mut self, states: &StateFactory<'_>) {
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
}

/// Creates keyed state for a process function.
#[derive(Debug)]
pub struct StateFactory<'a> {
    task: String,
    backend: &'a StateBackend,
}

impl StateFactory<'_> {
    /// A value state called `name`.
    pub fn value<K: StateKey, V: StateValue>(&self, name: &str) -> Box<dyn ValueState<K, V>> {
        self.backend.value_state(&self.task, name)
    }

    /// A map state called `name`.
    pub fn map<K: StateKey, UK: StateKey + Ord, V: StateValue>(
        &self,
        name: &str,
    ) -> Box<dyn MapState<K, UK, V>> {
        self.backend.map_state(&self.task, name)
    }

    /// A list state called `name`.
    pub fn list<K: StateKey, V: StateValue>(&self, name: &str) -> Box<dyn ListState<K, V>> {
        self.backend.list_state(&self.task, name)
    }
}

/// What a process function can do while handling a record or a timer.
#[derive(Debug)]
pub struct ProcessContext<'a, K, O> {
    out: &'a mut OperatorContext<O>,
    timers: &'a mut TimerService<K>,
}

impl<K: Key, O> ProcessContext<'_, K, O> {
    /// Emits a record.
    pub fn emit(&mut self, timestamp: EventTime, value: O) {
        self.out.emit(timestamp, value);
    }

    /// The current watermark.
    pub fn watermark(&self) -> EventTime {
        self.out.watermark()
    }

    /// The current processing time.
    pub fn processing_time(&self) -> EventTime {
        self.out.processing_time()
    }

    /// Calls `on_timer` for `key` once the watermark reaches `time`.
    pub fn register_event_timer(&mut self, key: &K, time: EventTime) {
        self.timers.event_time.register(time, key.clone());
    }

    /// Calls `on_timer` for `key` once processing time reaches `time`.
    pub fn register_processing_timer(&mut self, key: &K, time: EventTime) {
        self.timers.processing_time.register(time, key.clone());
        self.out.request_wakeup(time);
    }

    /// Cancels a timer; true when there was one.
    pub fn delete_timer(&mut self, key: &K, time: EventTime, domain: TimeDomain) -> bool {
        self.timers.queue(domain).delete(time, key)
    }
}

/// Runs a keyed process function.
pub trait Process<K, T> {
    /// Runs a function made by `make` (once per subtask) on every record, per key.
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
    ///     fn open(&mut self, states: &StateFactory<'_>) {
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

impl<K: Key, T: Data> Process<K, T> for KeyedStream<K, T> {
    fn process<O: Data, F: KeyedProcessFunction<K, T, O>>(
        &self,
        make: impl Fn() -> F + Send + 'static,
    ) -> Stream<O> {
        let key = self.key_fn();
        self.transform("process", move |_: &SubtaskInfo| {
            Box::new(ProcessOperator {
                function: make(),
                output: std::marker::PhantomData,
                key: key.clone(),
                timers: TimerService::default(),
            }) as Box<dyn Operator<T, O>>
        })
    }
}

struct ProcessOperator<K, T, O, F> {
    function: F,
    output: std::marker::PhantomData<fn() -> O>,
    key: std::sync::Arc<dyn Fn(&T) -> K + Send + Sync>,
    timers: TimerService<K>,
}

impl<K: Key, T: Data, O: Data, F: KeyedProcessFunction<K, T, O>> ProcessOperator<K, T, O, F> {
    fn fire(
        &mut self,
        domain: TimeDomain,
        now: EventTime,
        out: &mut OperatorContext<O>,
    ) -> OperatorResult {
        while let Some((time, key)) = self.timers.queue(domain).pop_due(now) {
            let mut ctx = ProcessContext {
                out,
                timers: &mut self.timers,
            };
            self.function.on_timer(&key, time, domain, &mut ctx)?;
        }
        if let Some(next) = self.timers.processing_time.next_time() {
            out.request_wakeup(next);
        }
        Ok(())
    }
}

impl<K: Key, T: Data, O: Data, F: KeyedProcessFunction<K, T, O>> Operator<T, O>
    for ProcessOperator<K, T, O, F>
{
    fn on_start(&mut self, ctx: &mut OperatorContext<O>) -> OperatorResult {
        let backend = ctx.state_backend();
        self.function.open(&StateFactory {
            task: ctx.subtask().task_name(),
            backend: &backend,
        });
        Ok(())
    }

    fn process_batch(&mut self, batch: Batch<T>, out: &mut OperatorContext<O>) -> OperatorResult {
        for record in batch {
            let key = (self.key)(&record.value);
            let mut ctx = ProcessContext {
                out,
                timers: &mut self.timers,
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
        self.fire(TimeDomain::EventTime, watermark, ctx)
    }

    fn on_processing_time(
        &mut self,
        now: EventTime,
        ctx: &mut OperatorContext<O>,
    ) -> OperatorResult {
        self.fire(TimeDomain::ProcessingTime, now, ctx)
    }
}
