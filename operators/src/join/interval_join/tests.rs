use std::sync::Arc;

use super::*;
use crate::harness::{DurableStore, Harness};
use omstream_core::runtime::MAX_WATERMARK;

type Event = (u32, char);
type Pair = (u32, char, char);
type JoinFn = fn(&u32, &Event, &Event) -> Pair;
type Operator = IntervalJoinOperator<u32, Event, Event, JoinFn>;
type TestJoin = Harness<Either<Event, Event>, Pair, Operator>;

fn operator(bounds: IntervalBounds, stats: &JoinStats) -> Operator {
    let join: JoinFn = |k, l, r| (*k, l.1, r.1);
    let key = |e: &Event| e.0;
    IntervalJoinOperator::new(
        bounds,
        Arc::new(join),
        Arc::new(key),
        Arc::new(key),
        stats.clone(),
    )
}

fn start(lower: i64, upper: i64, stats: &JoinStats) -> TestJoin {
    Harness::start(operator(IntervalBounds::millis(lower, upper), stats)).expect("starts")
}

impl TestJoin {
    /// Buffered (key, timestamp) entries of the left and the right side.
    fn buffered(&mut self) -> (usize, usize) {
        let op = self.operator();
        (op.left_cleanup.len(), op.right_cleanup.len())
    }

    /// Keys with buffered records, left and right.
    fn buffered_keys(&mut self) -> (usize, usize) {
        let buffers = self.operator().buffers.as_ref().expect("started");
        (buffers.left.len(), buffers.right.len())
    }
}

fn left(t: EventTime, key: u32, name: char) -> (EventTime, Either<Event, Event>) {
    (t, Either::Left((key, name)))
}

fn right(t: EventTime, key: u32, name: char) -> (EventTime, Either<Event, Event>) {
    (t, Either::Right((key, name)))
}

#[test]
fn pairs_within_the_bounds_are_emitted_when_the_second_arrives() {
    let stats = JoinStats::new();
    let mut join = start(-1, 2, &stats);
    // Right records before the left one: 8 is 2 before it (out), 9 one before (in).
    join.push(vec![right(8, 1, 'u'), right(9, 1, 'v'), right(9, 2, 'k')]);
    assert_eq!(join.take(), vec![]);
    join.push(vec![left(10, 1, 'a')]);
    assert_eq!(join.take(), vec![(10, (1, 'a', 'v'))]);
    // After it: 12 is the upper bound (in), 13 is out. 'b' at 11 is 2 after 'v' (out).
    join.push(vec![right(12, 1, 'w'), right(13, 1, 'x'), left(11, 1, 'b')]);
    assert_eq!(
        join.take_sorted(),
        vec![
            (12, (1, 'a', 'w')),
            (12, (1, 'b', 'w')),
            (13, (1, 'b', 'x'))
        ]
    );
    assert_eq!((stats.late_left(), stats.late_right()), (0, 0));
}

#[test]
fn bounds_entirely_before_or_after_the_left_record() {
    let mut after = start(5, 10, &JoinStats::new());
    after.push(vec![
        left(100, 1, 'a'),
        right(104, 1, 'u'),
        right(105, 1, 'v'),
        right(110, 1, 'w'),
        right(111, 1, 'x'),
        right(100, 1, 'y'),
    ]);
    assert_eq!(
        after.take_sorted(),
        vec![(105, (1, 'a', 'v')), (110, (1, 'a', 'w'))]
    );
    let mut before = start(-10, -5, &JoinStats::new());
    before.push(vec![
        right(89, 1, 'u'),
        right(90, 1, 'v'),
        right(95, 1, 'w'),
        right(96, 1, 'x'),
        left(100, 1, 'a'),
    ]);
    assert_eq!(
        before.take_sorted(),
        vec![(100, (1, 'a', 'v')), (100, (1, 'a', 'w'))]
    );
}

#[test]
fn buffered_records_go_once_no_partner_that_is_on_time_can_match_them() {
    let mut join = start(-3, 5, &JoinStats::new());
    // The left record at 100 is needed until the watermark reaches 105, the right one at
    // 100 until it reaches 103.
    join.push(vec![left(100, 1, 'a'), right(100, 2, 'x')]);
    assert_eq!(join.buffered(), (1, 1));
    join.watermark(102);
    assert_eq!(join.buffered(), (1, 1));
    join.watermark(103);
    assert_eq!(join.buffered(), (1, 0));
    // Still in time for the left one.
    join.push(vec![right(105, 1, 'y')]);
    assert_eq!(join.take(), vec![(105, (1, 'a', 'y'))]);
    join.watermark(105);
    assert_eq!(
        join.buffered(),
        (0, 1),
        "right 105 waits for lefts up to 108"
    );
    join.watermark(108);
    assert_eq!(join.buffered(), (0, 0));
    assert_eq!(join.buffered_keys(), (0, 0));
    // A record no future partner can reach is joined but not kept.
    join.push(vec![left(109, 3, 'b')]);
    let mut narrow = start(0, 0, &JoinStats::new());
    narrow.watermark(50);
    narrow.push(vec![right(51, 1, 'x'), left(51, 1, 'a')]);
    assert_eq!(narrow.take(), vec![(51, (1, 'a', 'x'))]);
    assert_eq!(narrow.buffered(), (1, 1));
    narrow.watermark(51);
    assert_eq!(narrow.buffered(), (0, 0));
}

#[test]
fn records_at_or_behind_the_watermark_are_dropped_and_counted() {
    let stats = JoinStats::new();
    let mut join = start(-10, 10, &stats);
    join.push(vec![left(100, 1, 'a')]);
    join.watermark(100);
    // 'x' would match 'a' (still buffered until 110), but it is behind the watermark.
    join.push(vec![
        right(100, 1, 'x'),
        left(95, 1, 'b'),
        right(101, 1, 'y'),
    ]);
    assert_eq!(join.take(), vec![(101, (1, 'a', 'y'))]);
    assert_eq!((stats.late_left(), stats.late_right()), (1, 1));
}

#[test]
fn empty_bounds_are_refused_at_start() {
    let refused = Harness::start(operator(IntervalBounds::millis(1, 0), &JoinStats::new()))
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("lower bound"), "{refused}");
}

#[test]
fn a_restored_join_keeps_its_watermark_its_buffers_and_their_cleanups() {
    let mut durable = DurableStore::new();
    let stats = JoinStats::new();
    let started = |durable: &DurableStore, stats: &JoinStats| {
        let operator = operator(IntervalBounds::millis(-10, 10), stats);
        Harness::start_with(operator, durable.backend(4)).expect("starts")
    };
    let mut join = started(&durable, &stats);
    join.push(vec![
        left(100, 1, 'a'),
        right(150, 2, 'x'),
        left(160, 3, 'c'),
    ]);
    join.watermark(95);
    let checkpoint = durable.checkpoint(&mut join);
    // Lost in the crash: the record, and the cleanup of 'a'.
    join.push(vec![right(105, 1, 'y')]);
    assert_eq!(join.take(), vec![(105, (1, 'a', 'y'))]);
    join.watermark(120);
    drop(join);

    durable.restore(checkpoint);
    let mut join = started(&durable, &stats);
    assert_eq!(join.buffered(), (2, 1), "every cleanup timer is back");
    // 'z' at 95 would match 'a' (buffered until 110), but it is at the restored watermark.
    join.push(vec![right(95, 1, 'z'), right(105, 1, 'y')]);
    assert_eq!(join.take(), vec![(105, (1, 'a', 'y'))]);
    assert_eq!(stats.late_right(), 1);
    join.watermark(MAX_WATERMARK);
    assert_eq!(join.buffered(), (0, 0));
    assert_eq!(
        join.buffered_keys(),
        (0, 0),
        "restored buffers are dropped by their restored cleanups"
    );
    let mirror = join.operator().mirror.restore();
    assert!(
        mirror.is_empty(),
        "fired timers leave the mirror: {mirror:?}"
    );
}
