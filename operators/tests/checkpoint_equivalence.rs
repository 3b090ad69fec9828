//! Checkpoint and restore equivalence: every stateful operator, driven by hand over durable
//! state, gives the same output when it is checkpointed, crashes and is restored as when it
//! runs through.
//!
//! A case feeds a seeded random input (out of order, with watermarks, late records and, for
//! `process`, processing-time callbacks) to one operator subtask:
//!
//! 1. uninterrupted, over heap state: the reference output, step by step;
//! 2. over durable state in a fresh store, snapshotting every state of
//!    [`keyed_state`](omstream_core::runtime::Operator::keyed_state) at some steps (each a
//!    checkpoint epoch), going on past the last one, then crashing: the operator, its context
//!    and the store are dropped, with changes made after the checkpoints;
//! 3. the store is reopened and restored to one of the checkpoints (not always the last: a
//!    checkpoint that did not complete is skipped), a fresh operator is started over it, and
//!    the input is replayed from that checkpoint's step.
//!
//! The output of the steps before the restored checkpoint (from run 2) and after it (from run
//! 3) must be the reference, step by step (each step's records compared as a multiset: keys
//! firing at one time come out in hash order). Caches of 4 entries make the state spill to
//! the store between checkpoints; some cases run subtask 1 of 2, which only sees its own key
//! groups.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use omstream_core::runtime::{
    key_group, stable_hash, subtask_for_key_group, Operator, OperatorContext, ProcessingClock,
    SubtaskInfo,
};
use omstream_core::state::{DurableBackend, StateBackend, StateStore};
use omstream_operators::prelude::*;
use omstream_operators::testing::{self, WindowEvent};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One input element.
#[derive(Debug, Clone)]
enum Step<I> {
    Records(Vec<(EventTime, I)>),
    Watermark(EventTime),
    ProcessingTime(EventTime),
    End,
}

/// Where the checkpoints are taken, which is restored, and when the crash comes.
#[derive(Debug, Clone)]
struct Case {
    seed: u64,
    /// Steps before which a checkpoint is taken, increasing.
    checkpoints: Vec<usize>,
    /// Which of them the restore goes back to.
    restore: usize,
    /// The step before which the first run crashes (at or after the last checkpoint).
    crash: usize,
    /// Entries each state keeps in memory.
    cache: usize,
    /// Index and parallelism of the subtask.
    subtask: (usize, usize),
}

const OPERATOR: &str = "under-test";

fn context<O>(case: &Case, backend: StateBackend) -> OperatorContext<O> {
    let info = SubtaskInfo::new(OPERATOR, case.subtask.0, case.subtask.1);
    let mut ctx = OperatorContext::new(info, ProcessingClock::start());
    ctx.set_state_backend(backend);
    ctx
}

fn durable<O>(case: &Case, store: &Arc<StateStore>, first_epoch: u64) -> OperatorContext<O> {
    let backend = DurableBackend::new(store.clone(), first_epoch, case.cache);
    context(case, StateBackend::Durable(backend))
}

/// Applies one step; what the operator emitted, normalized and sorted.
fn apply<I: Clone + 'static, O: 'static, N: Ord>(
    operator: &mut dyn Operator<I, O>,
    ctx: &mut OperatorContext<O>,
    step: &Step<I>,
    normalize: &dyn Fn(EventTime, O) -> N,
) -> Vec<N> {
    match step {
        Step::Records(records) => {
            let batch = records
                .iter()
                .map(|(t, v)| Record::new(*t, v.clone()))
                .collect();
            operator.process_batch(batch, ctx)
        }
        Step::Watermark(watermark) => operator.on_watermark(*watermark, ctx),
        Step::ProcessingTime(now) => operator.on_processing_time(*now, ctx),
        Step::End => operator.on_end(ctx),
    }
    .expect("the operator handles the step");
    let mut out: Vec<N> = std::mem::take(ctx.output_mut())
        .into_iter()
        .map(|r| normalize(r.timestamp, r.value))
        .collect();
    out.sort();
    out
}

/// The names of the states an operator lists for checkpoints, checked against every state
/// it created in the store: none may be missing, none listed twice.
fn check_listed_states<I: 'static, O: 'static>(
    operator: &mut dyn Operator<I, O>,
    store: &StateStore,
) {
    let listed: Vec<String> = operator
        .keyed_state()
        .iter()
        .map(|s| s.state_name().to_string())
        .collect();
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "a state listed twice: {listed:?}"
    );
    let created: BTreeSet<String> = store
        .state_names()
        .expect("state names")
        .into_iter()
        .filter(|(operator, _)| operator == OPERATOR)
        .map(|(_, name)| name)
        .collect();
    assert!(!created.is_empty(), "the operator keeps keyed state");
    assert_eq!(unique, created, "keyed_state() lists every created state");
}

/// Opens the store again after a crash. sled lets go of its lock on the database a moment
/// after the last handle is dropped (its background threads finish first): wait for it.
fn reopen(dir: &std::path::Path) -> Arc<StateStore> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match StateStore::open(dir) {
            Ok(store) => return Arc::new(store),
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("the state store does not open again: {e}"),
        }
    }
}

/// Runs `case` and compares with the uninterrupted run; returns the reference output.
fn check_case<I: Clone + Debug + 'static, O: 'static, N: Ord + Debug + Clone>(
    name: &str,
    make: &dyn Fn() -> Box<dyn Operator<I, O>>,
    steps: &[Step<I>],
    normalize: &dyn Fn(EventTime, O) -> N,
    case: &Case,
) -> Vec<N> {
    // The uninterrupted run, on the heap.
    let mut operator = make();
    let mut ctx = context(case, StateBackend::Heap);
    operator.on_start(&mut ctx).expect("starts");
    let reference: Vec<Vec<N>> = steps
        .iter()
        .map(|step| apply(&mut *operator, &mut ctx, step, normalize))
        .collect();
    drop((operator, ctx));

    // The run that crashes.
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(StateStore::open(dir.path()).expect("opens"));
    let mut epoch = store.begin_run(0).expect("begins");
    let mut operator = make();
    let mut ctx = durable(case, &store, epoch);
    operator.on_start(&mut ctx).expect("starts");
    check_listed_states(&mut *operator, &store);
    let mut outputs: Vec<Vec<N>> = Vec::new();
    let mut taken: Vec<(usize, u64)> = Vec::new();
    for (index, step) in steps.iter().enumerate().take(case.crash) {
        if case.checkpoints.contains(&index) {
            // As the runtime does: the epoch is triggered, every state snapshotted, the store
            // flushed before the checkpoint counts as complete.
            store.set_last_triggered_epoch(epoch).expect("triggers");
            for state in operator.keyed_state() {
                state.snapshot(epoch).expect("snapshots");
            }
            store.flush().expect("flushes");
            taken.push((index, epoch));
            epoch += 1;
        }
        outputs.push(apply(&mut *operator, &mut ctx, step, normalize));
    }
    // The crash: what was not checkpointed is lost with the operator.
    drop((operator, ctx, store));

    // The restore.
    let (from_step, from_epoch) = taken[case.restore];
    let store = reopen(dir.path());
    let first = store.begin_run(from_epoch).expect("restores");
    let mut operator = make();
    let mut ctx = durable(case, &store, first);
    operator.on_start(&mut ctx).expect("starts after a restore");
    outputs.truncate(from_step);
    for step in &steps[from_step..] {
        outputs.push(apply(&mut *operator, &mut ctx, step, normalize));
    }
    for (index, (got, want)) in outputs.iter().zip(&reference).enumerate() {
        assert_eq!(
            got, want,
            "{name}, seed {}: step {index} ({:?}) differs after restoring the checkpoint \
             before step {from_step}; {case:?}",
            case.seed, steps[index]
        );
    }
    assert_eq!(outputs.len(), reference.len());
    reference.into_iter().flatten().collect()
}

/// The seeds of the inputs, and the subtask each runs in: one subtask, or the second of two.
fn seeds() -> impl Iterator<Item = (u64, (usize, usize))> {
    (0..4u64).map(|seed| (seed, if seed % 2 == 1 { (1, 2) } else { (0, 1) }))
}

/// Checkpoint layouts for an input of `steps` steps: one or two checkpoints, restored to the
/// last or to an earlier one (the later one did not complete), small and large caches.
fn cases(seed: u64, subtask: (usize, usize), steps: usize) -> Vec<Case> {
    let mut rng = StdRng::seed_from_u64(1_000 + seed);
    (0..3)
        .map(|variant| {
            let first = rng.random_range(1..steps - 2);
            let mut checkpoints = vec![first];
            if variant > 0 {
                checkpoints.push(rng.random_range(first + 1..steps - 1));
            }
            let last = *checkpoints.last().expect("one");
            Case {
                seed,
                restore: if variant == 2 {
                    0
                } else {
                    checkpoints.len() - 1
                },
                crash: rng.random_range(last + 1..=steps),
                checkpoints,
                cache: if variant == 1 { 1_000 } else { 4 },
                subtask,
            }
        })
        .collect()
}

/// Keys of subtask `index` of `parallelism`.
fn keys_of(subtask: (usize, usize), count: usize) -> Vec<u32> {
    (0u32..)
        .filter(|k| subtask_for_key_group(key_group(stable_hash(k)), subtask.1) == subtask.0)
        .take(count)
        .collect()
}

/// A random input: batches of 1 to 4 records out of order by up to 40 ms, a tenth later than
/// that (behind the watermark, some just behind it), watermarks 40 ms behind the newest record, processing-time
/// callbacks now and then; `value` makes each record from its key and a counter. Ends with the
/// final watermark and the end of input.
fn random_input<T>(
    seed: u64,
    keys: &[u32],
    batches: usize,
    mut value: impl FnMut(&mut StdRng, u32, i64) -> T,
) -> Vec<Step<T>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut now, mut newest, mut watermark, mut counter) = (0i64, 0i64, i64::MIN, 0i64);
    let mut processing = 0;
    let mut steps = Vec::new();
    for _ in 0..batches {
        let records = (0..rng.random_range(1..=4))
            .map(|_| {
                now += rng.random_range(0..15);
                let timestamp = if rng.random_bool(0.1) {
                    // Late: some just behind the watermark, some far behind it.
                    now - rng.random_range(40..250)
                } else {
                    now - rng.random_range(0..40)
                };
                newest = newest.max(timestamp);
                counter += 1;
                let key = keys[rng.random_range(0..keys.len())];
                (timestamp, value(&mut rng, key, counter))
            })
            .collect();
        steps.push(Step::Records(records));
        if rng.random_bool(0.4) && newest - 40 > watermark {
            watermark = newest - 40;
            steps.push(Step::Watermark(watermark));
        }
        if rng.random_bool(0.15) {
            processing += rng.random_range(50..400);
            steps.push(Step::ProcessingTime(processing));
        }
    }
    steps.push(Step::Watermark(MAX_WATERMARK));
    steps.push(Step::End);
    steps
}

type Event = (u32, i64);

fn window_input(seed: u64, subtask: (usize, usize)) -> Vec<Step<Event>> {
    let keys = keys_of(subtask, 6);
    random_input(seed, &keys, 70, |_, key, n| (key, n))
}

fn keyed_events() -> KeyedStream<u32, Event> {
    StreamEnv::default()
        .from_iter("events", Vec::<Event>::new())
        .key_by(|(key, _): &Event| *key)
}

fn normalize_window<V: Debug>(time: EventTime, event: WindowEvent<u32, V, Event>) -> String {
    format!("{time} {event:?}")
}

/// Checks every case of one window configuration, with a sum and with `apply` (the records in
/// order), and that the reference outputs of all seeds contain each of `expected`.
fn check_window(name: &str, windowed: impl Fn() -> WindowedStream<u32, Event>, expected: &[&str]) {
    let mut references = Vec::new();
    for (seed, subtask) in seeds() {
        let input = window_input(seed, subtask);
        for case in cases(seed, subtask, input.len()) {
            references.extend(check_window_case(name, &windowed, &input, &case));
        }
    }
    for needle in expected {
        assert!(
            references.iter().any(|line| line.contains(needle)),
            "{name}: the inputs make some {needle}"
        );
    }
}

/// Both window functions over one case; their reference outputs.
fn check_window_case(
    name: &str,
    windowed: &dyn Fn() -> WindowedStream<u32, Event>,
    input: &[Step<Event>],
    case: &Case,
) -> Vec<String> {
    {
        let sum = || testing::window_aggregate(&windowed(), Sum::new(|(_, v): &Event| *v), true);
        let mut references =
            check_case(&format!("{name} sum"), &sum, input, &normalize_window, case);
        let apply = || {
            testing::window_apply(
                &windowed(),
                |_: &u32, _: &TimeWindow, records: &[Event]| {
                    records.iter().map(|(_, v)| *v).collect::<Vec<_>>()
                },
                true,
            )
        };
        let name = format!("{name} apply");
        references.extend(check_case(&name, &apply, input, &normalize_window, case));
        references
    }
}

#[test]
fn tumbling_windows_resume_where_the_checkpoint_left_them() {
    check_window(
        "tumbling",
        || keyed_events().window(TimeWindows::tumbling(Duration::from_millis(100))),
        &["Result", "Late"],
    );
}

#[test]
fn tumbling_windows_with_lateness_resume_with_their_updates_and_cleanups() {
    check_window(
        "tumbling lateness",
        || {
            keyed_events()
                .window(TimeWindows::tumbling(Duration::from_millis(100)))
                .allowed_lateness(Duration::from_millis(150))
        },
        &["is_update: true", "Late"],
    );
}

#[test]
fn sliding_windows_resume_where_the_checkpoint_left_them() {
    check_window(
        "sliding",
        || {
            keyed_events().window(TimeWindows::sliding(
                Duration::from_millis(100),
                Duration::from_millis(30),
            ))
        },
        &["Result"],
    );
}

#[test]
fn sliding_windows_with_lateness_resume_with_their_updates_and_cleanups() {
    check_window(
        "sliding lateness",
        || {
            keyed_events()
                .window(TimeWindows::sliding(
                    Duration::from_millis(100),
                    Duration::from_millis(30),
                ))
                .allowed_lateness(Duration::from_millis(80))
        },
        &["is_update: true", "Late"],
    );
}

#[test]
fn session_windows_resume_where_the_checkpoint_left_them() {
    check_window(
        "session",
        || keyed_events().window(TimeWindows::session(Duration::from_millis(25))),
        &["Result", "Late"],
    );
}

#[test]
fn session_windows_with_lateness_resume_with_their_updates_and_cleanups() {
    check_window(
        "session lateness",
        || {
            keyed_events()
                .window(TimeWindows::session(Duration::from_millis(25)))
                .allowed_lateness(Duration::from_millis(120))
        },
        &["is_update: true", "Late"],
    );
}

#[test]
fn count_windows_resume_where_the_checkpoint_left_them() {
    check_window(
        "count tumbling",
        || keyed_events().count_window(3),
        &["Result"],
    );
    check_window(
        "count sliding",
        || keyed_events().count_window_sliding(4, 2),
        &["Result"],
    );
}

/// A record of either join input: its key and a counter.
fn join_input(seed: u64, subtask: (usize, usize)) -> Vec<Step<Either<Event, Event>>> {
    let keys = keys_of(subtask, 4);
    random_input(seed, &keys, 80, |rng, key, n| {
        if rng.random_bool(0.5) {
            Either::Left((key, n))
        } else {
            Either::Right((key, n))
        }
    })
}

fn normalize<O: Debug>(time: EventTime, value: O) -> String {
    format!("{time} {value:?}")
}

#[test]
fn window_joins_resume_where_the_checkpoint_left_them() {
    let left = keyed_events();
    let right = keyed_events();
    for (name, windows) in [
        ("tumbling", TimeWindows::tumbling(Duration::from_millis(60))),
        (
            "sliding",
            TimeWindows::sliding(Duration::from_millis(60), Duration::from_millis(20)),
        ),
    ] {
        let make = || {
            testing::window_join(&left, &right, windows, |k: &u32, l: &Event, r: &Event| {
                (*k, l.1, r.1)
            })
        };
        for (seed, subtask) in seeds() {
            let input = join_input(seed, subtask);
            for case in cases(seed, subtask, input.len()) {
                let name = format!("window join {name}");
                let reference = check_case(&name, &make, &input, &normalize, &case);
                assert!(!reference.is_empty(), "some pairs are joined");
            }
        }
    }
}

#[test]
fn interval_joins_resume_where_the_checkpoint_left_them() {
    let left = keyed_events();
    let right = keyed_events();
    let make = || {
        testing::interval_join(
            &left,
            &right,
            IntervalBounds::millis(-30, 20),
            |k: &u32, l: &Event, r: &Event| (*k, l.1, r.1),
        )
    };
    for (seed, subtask) in seeds() {
        let input = join_input(seed, subtask);
        for case in cases(seed, subtask, input.len()) {
            let reference = check_case("interval join", &make, &input, &normalize, &case);
            assert!(!reference.is_empty(), "some pairs are joined");
        }
    }
}

#[test]
fn table_joins_resume_where_the_checkpoint_left_them() {
    let left = keyed_events();
    let table = keyed_events();
    let make = || {
        testing::join_table(
            &left,
            &table,
            |k: &u32, l: &Event, value: Option<&Event>| Some((*k, l.1, value.map(|(_, v)| *v))),
        )
    };
    for (seed, subtask) in seeds() {
        let input = join_input(seed, subtask);
        for case in cases(seed, subtask, input.len()) {
            let reference = check_case("join_table", &make, &input, &normalize, &case);
            assert!(
                reference.iter().any(|line| line.contains("Some(")),
                "some records meet a table value: {reference:?}"
            );
        }
    }
}

#[test]
fn changelog_table_joins_resume_with_their_tombstones() {
    let left = keyed_events();
    let make = || {
        testing::join_table_updates(&left, |k: &u32, l: &Event, value: Option<&i64>| {
            Some((*k, l.1, value.copied()))
        })
    };
    for (seed, subtask) in seeds() {
        let keys = keys_of(subtask, 4);
        // A third of the table updates are deletions.
        let input = random_input(seed, &keys, 80, |rng, key, n| {
            if rng.random_bool(0.5) {
                Either::Left((key, n))
            } else {
                Either::Right((key, (!rng.random_bool(0.33)).then_some(n)))
            }
        });
        for case in cases(seed, subtask, input.len()) {
            let reference = check_case("join_table_updates", &make, &input, &normalize, &case);
            assert!(
                reference.iter().any(|line| line.contains("None)")),
                "some records meet a deleted or absent key: {reference:?}"
            );
        }
    }
}

/// Per key: a count and a sum (map state), the values (list state), the newest timestamp
/// (value state) with an event-time timeout 50 ms after it (the previous one deleted), and a
/// processing-time report at an absolute time every third record. Emits what it sees,
/// including whether a record was behind the watermark.
#[derive(Default)]
struct Tracker {
    newest: Option<Box<dyn ValueState<u32, EventTime>>>,
    totals: Option<Box<dyn MapState<u32, u8, i64>>>,
    values: Option<Box<dyn ListState<u32, i64>>>,
}

impl KeyedProcessFunction<u32, Event, String> for Tracker {
    fn open(&mut self, states: &StateFactory<'_, String>) {
        self.newest = Some(states.value("newest"));
        self.totals = Some(states.map("totals"));
        self.values = Some(states.list("values"));
    }

    fn process(
        &mut self,
        key: &u32,
        record: Record<Event>,
        ctx: &mut ProcessContext<'_, u32, String>,
    ) -> OperatorResult {
        let (newest, totals, values) = self.states();
        let late = record.timestamp <= ctx.watermark();
        values.add(key, record.value.1);
        let count = {
            let (count, _) = totals.get_or_insert_with(key, &0, &mut || 0);
            *count += 1;
            *count
        };
        *totals.get_or_insert_with(key, &1, &mut || 0).0 += record.value.1;
        let previous = newest.get(key).copied();
        if previous.is_none_or(|p| record.timestamp > p) {
            if let Some(previous) = previous {
                assert!(ctx.delete_timer(key, previous + 50, TimeDomain::EventTime));
            }
            newest.insert(*key, record.timestamp);
            ctx.register_event_timer(key, record.timestamp + 50);
        }
        if count % 3 == 0 {
            ctx.register_processing_timer(key, count * 97);
        }
        ctx.emit(
            record.timestamp,
            format!("record {key} #{count} late={late}"),
        );
        Ok(())
    }

    fn on_timer(
        &mut self,
        key: &u32,
        time: EventTime,
        domain: TimeDomain,
        ctx: &mut ProcessContext<'_, u32, String>,
    ) -> OperatorResult {
        let (newest, totals, values) = self.states();
        let sum = totals.get(key, &1).copied().unwrap_or(0);
        let seen = values.get(key).to_vec();
        if domain == TimeDomain::EventTime {
            assert_eq!(
                newest.remove(key),
                Some(time - 50),
                "the live timeout fired"
            );
            values.take(key);
        }
        ctx.emit(
            time,
            format!("timer {key} {domain:?} sum={sum} values={seen:?}"),
        );
        Ok(())
    }

    fn keyed_state(&mut self) -> Vec<&mut dyn KeyedState> {
        let (newest, totals, values) = self.states();
        vec![newest, totals, values]
    }
}

impl Tracker {
    #[allow(clippy::type_complexity)]
    fn states(
        &mut self,
    ) -> (
        &mut dyn ValueState<u32, EventTime>,
        &mut dyn MapState<u32, u8, i64>,
        &mut dyn ListState<u32, i64>,
    ) {
        (
            self.newest.as_deref_mut().expect("opened"),
            self.totals.as_deref_mut().expect("opened"),
            self.values.as_deref_mut().expect("opened"),
        )
    }
}

#[test]
fn process_functions_resume_with_their_state_and_timers() {
    let keyed = keyed_events();
    let make = || testing::process(&keyed, Tracker::default());
    for (seed, subtask) in seeds() {
        let keys = keys_of(subtask, 5);
        let input = random_input(seed, &keys, 80, |_, key, n| (key, n));
        for case in cases(seed, subtask, input.len()) {
            let reference = check_case("process", &make, &input, &normalize, &case);
            for needle in ["EventTime", "ProcessingTime", "late=true"] {
                assert!(
                    reference.iter().any(|line| line.contains(needle)),
                    "the input makes some {needle}: {reference:?}"
                );
            }
        }
    }
}

/// Processing-time windows cannot be replayed (records go to the window they arrive in), but
/// what a checkpoint holds must come out after a restore: every record before the checkpoint,
/// none after it.
#[test]
fn processing_time_windows_fire_their_restored_contents() {
    for windowed in [
        keyed_events()
            .window(TimeWindows::tumbling(Duration::from_secs(3_600)))
            .processing_time(),
        keyed_events()
            .window(TimeWindows::session(Duration::from_secs(3_600)))
            .processing_time(),
    ] {
        let case = Case {
            seed: 0,
            checkpoints: vec![0],
            restore: 0,
            crash: 0,
            cache: 4,
            subtask: (0, 1),
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(StateStore::open(dir.path()).expect("opens"));
        let first = store.begin_run(0).expect("begins");
        let mut operator = testing::window_aggregate(&windowed, Count, false);
        let mut ctx = durable(&case, &store, first);
        operator.on_start(&mut ctx).expect("starts");
        let batch = |n: u32| (0..n).map(|i| Record::new(0, (i % 7, 1))).collect();
        operator
            .process_batch(batch(30), &mut ctx)
            .expect("30 records");
        store.set_last_triggered_epoch(first).expect("triggers");
        for state in operator.keyed_state() {
            state.snapshot(first).expect("snapshots");
        }
        operator.process_batch(batch(20), &mut ctx).expect("lost");
        drop((operator, ctx));

        let next = store.begin_run(first).expect("restores");
        let mut operator = testing::window_aggregate(&windowed, Count, false);
        let mut ctx = durable(&case, &store, next);
        operator.on_start(&mut ctx).expect("starts after a restore");
        operator.on_end(&mut ctx).expect("fires at the end");
        let mut counts = [0u64; 7];
        for record in std::mem::take(ctx.output_mut()) {
            match record.value {
                WindowEvent::Result(result) => counts[result.key as usize] += result.value,
                WindowEvent::Late(_) => panic!("processing time has no late records"),
            }
        }
        let expected: Vec<u64> = (0..7u32)
            .map(|k| (0..30).filter(|i| i % 7 == k).count() as u64)
            .collect();
        assert_eq!(counts.to_vec(), expected, "{windowed:?}");
    }
}
