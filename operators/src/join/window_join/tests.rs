use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::harness::{DurableStore, Harness};

type Event = (u32, char);
type Pair = (u32, char, char);
type JoinFn = fn(&u32, &Event, &Event) -> Pair;
type TestJoin = Harness<Either<Event, Event>, Pair, WindowJoinOperator<u32, Event, Event, JoinFn>>;

fn operator(
    windows: TimeWindows,
    stats: &JoinStats,
) -> WindowJoinOperator<u32, Event, Event, JoinFn> {
    let join: JoinFn = |k, l, r| (*k, l.1, r.1);
    let key = |e: &Event| e.0;
    WindowJoinOperator::new(
        windows,
        Arc::new(join),
        Arc::new(key),
        Arc::new(key),
        stats.clone(),
    )
}

fn start(windows: TimeWindows, stats: &JoinStats) -> TestJoin {
    Harness::start(operator(windows, stats)).expect("starts")
}

impl TestJoin {
    /// Keys with buffered records, left and right, and scheduled window firings.
    fn buffered(&mut self) -> (usize, usize, usize) {
        let op = self.operator();
        let buffers = op.buffers.as_ref().expect("started");
        (buffers.left.len(), buffers.right.len(), op.timers.len())
    }
}

fn left(t: EventTime, key: u32, name: char) -> (EventTime, Either<Event, Event>) {
    (t, Either::Left((key, name)))
}

fn right(t: EventTime, key: u32, name: char) -> (EventTime, Either<Event, Event>) {
    (t, Either::Right((key, name)))
}

fn tumbling_seconds(n: u64) -> TimeWindows {
    TimeWindows::tumbling(Duration::from_secs(n))
}

#[test]
fn pairs_of_one_key_and_window_are_emitted_when_the_watermark_reaches_the_window() {
    let stats = JoinStats::new();
    let mut join = start(tumbling_seconds(1), &stats);
    join.push(vec![
        left(100, 1, 'a'),
        right(900, 1, 'x'),
        right(999, 1, 'y'),
        right(1_000, 1, 'n'),
        right(500, 2, 'o'),
        left(400, 2, 'b'),
        left(600, 3, 'p'),
    ]);
    join.watermark(998);
    assert_eq!(join.take(), vec![], "the window [0, 1000) is still open");
    join.watermark(999);
    assert_eq!(
        join.take_sorted(),
        vec![
            (999, (1, 'a', 'x')),
            (999, (1, 'a', 'y')),
            (999, (2, 'b', 'o'))
        ]
    );
    // The window's records are gone: a partner for the next window finds only its own.
    join.push(vec![left(1_500, 1, 'c')]);
    assert_eq!(join.buffered(), (1, 1, 1));
    join.watermark(5_000);
    assert_eq!(join.take(), vec![(1_999, (1, 'c', 'n'))]);
    assert_eq!(join.buffered(), (0, 0, 0), "fired windows leave no state");
    assert_eq!((stats.late_left(), stats.late_right()), (0, 0));
}

#[test]
fn a_pair_in_two_sliding_windows_is_emitted_once_per_window() {
    let sliding = TimeWindows::sliding(Duration::from_secs(2), Duration::from_secs(1));
    let mut join = start(sliding, &JoinStats::new());
    // 1_500 is in [0, 2000) and [1000, 3000); 2_500 only in [1000, 3000) and [2000, 4000).
    join.push(vec![
        left(1_500, 1, 'a'),
        right(1_200, 1, 'x'),
        right(2_500, 1, 'y'),
    ]);
    join.watermark(i64::MAX);
    assert_eq!(
        join.take_sorted(),
        vec![
            (1_999, (1, 'a', 'x')),
            (2_999, (1, 'a', 'x')),
            (2_999, (1, 'a', 'y'))
        ]
    );
}

#[test]
fn records_whose_windows_all_fired_are_dropped_and_counted() {
    let stats = JoinStats::new();
    let mut join = start(tumbling_seconds(1), &stats);
    join.push(vec![left(100, 1, 'a')]);
    join.watermark(1_200);
    assert_eq!(join.take(), vec![]);
    // [0, 1000) fired at 999: these are late. A record behind the watermark whose window is
    // still open (1_100 in [1000, 2000)) is not.
    join.push(vec![
        right(200, 1, 'L'),
        left(999, 1, 'L'),
        left(1_100, 1, 'b'),
        right(1_150, 1, 'x'),
    ]);
    join.watermark(2_000);
    assert_eq!(join.take(), vec![(1_999, (1, 'b', 'x'))]);
    assert_eq!((stats.late_left(), stats.late_right()), (1, 1));
}

#[test]
fn a_record_joins_only_in_its_sliding_windows_that_have_not_fired() {
    let stats = JoinStats::new();
    let sliding = TimeWindows::sliding(Duration::from_secs(2), Duration::from_secs(1));
    let mut join = start(sliding, &stats);
    join.push(vec![left(500, 1, 'e')]);
    join.watermark(1_999);
    // [0, 2000) has fired; 1_500 still joins in [1000, 3000).
    join.push(vec![left(1_500, 1, 'a'), right(1_600, 1, 'x')]);
    join.watermark(i64::MAX);
    assert_eq!(join.take(), vec![(2_999, (1, 'a', 'x'))]);
    assert_eq!(stats.late_left() + stats.late_right(), 0);
}

#[test]
fn session_windows_and_bad_sizes_are_refused_at_start() {
    let refuse = |windows: TimeWindows| {
        Harness::start(operator(windows, &JoinStats::new()))
            .err()
            .expect("refused")
            .to_string()
    };
    let session = refuse(TimeWindows::session(Duration::from_secs(1)));
    assert!(session.contains("tumbling or sliding"), "{session}");
    let empty = refuse(TimeWindows::tumbling(Duration::ZERO));
    assert!(empty.contains("at least 1 ms"), "{empty}");
}

#[test]
fn a_window_is_closed_once_the_watermark_equals_its_max_timestamp() {
    let stats = JoinStats::new();
    let mut join = start(tumbling_seconds(1), &stats);
    join.push(vec![left(10, 1, 'a'), right(20, 1, 'x')]);
    join.watermark(999);
    assert_eq!(join.take(), vec![(999, (1, 'a', 'x'))]);
    join.push(vec![left(999, 1, 'b'), right(999, 1, 'y')]);
    join.watermark(2_000);
    assert_eq!(join.take(), vec![]);
    assert_eq!((stats.late_left(), stats.late_right()), (1, 1));
    assert_eq!(join.buffered(), (0, 0, 0));
}

#[test]
fn a_restored_join_fires_its_windows_and_drops_what_was_late_before_the_crash() {
    let mut durable = DurableStore::new();
    let stats = JoinStats::new();
    let started = |durable: &DurableStore, stats: &JoinStats| {
        Harness::start_with(operator(tumbling_seconds(1), stats), durable.backend(4))
            .expect("starts")
    };
    let mut join = started(&durable, &stats);
    join.push(vec![
        left(100, 1, 'a'),
        right(200, 1, 'x'),
        left(1_500, 2, 'b'),
    ]);
    join.watermark(999);
    assert_eq!(join.take(), vec![(999, (1, 'a', 'x'))]);
    let checkpoint = durable.checkpoint(&mut join);
    // Lost in the crash.
    join.push(vec![right(1_600, 2, 'y')]);
    join.watermark(2_000);
    assert_eq!(join.take(), vec![(1_999, (2, 'b', 'y'))]);
    drop(join);

    durable.restore(checkpoint);
    let mut join = started(&durable, &stats);
    assert_eq!(
        join.buffered(),
        (1, 0, 1),
        "the window of 'b' is scheduled again"
    );
    // [0, 1000) fired before the checkpoint: these two are late, and must not pair up.
    join.push(vec![
        left(300, 1, 'L'),
        right(400, 1, 'L'),
        right(1_600, 2, 'y'),
    ]);
    join.watermark(2_000);
    assert_eq!(join.take(), vec![(1_999, (2, 'b', 'y'))]);
    assert_eq!((stats.late_left(), stats.late_right()), (1, 1));
    assert_eq!(join.buffered(), (0, 0, 0));
    let mirror = join.operator().mirror.restore();
    assert!(
        mirror.is_empty(),
        "fired timers leave the mirror: {mirror:?}"
    );
}
