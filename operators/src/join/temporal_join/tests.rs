use std::sync::Arc;

use super::*;
use crate::harness::{DurableStore, Harness};

type Event = (u32, char);
type Update = (u32, Option<char>);
/// The left record's name and the table's value it met (a left outer join).
type Joined = (char, Option<char>);
type JoinFn = fn(&u32, &Event, Option<&char>) -> Option<Joined>;
type Operator = TemporalJoinOperator<u32, Event, Update, char, JoinFn>;
type TestJoin = Harness<Either<Event, Update>, Joined, Operator>;

fn start(stats: &JoinStats) -> TestJoin {
    let join: JoinFn = |_, l, value| Some((l.1, value.copied()));
    let operator = TemporalJoinOperator::new(
        Arc::new(join),
        Arc::new(|e: &Event| e.0),
        Arc::new(|u: &Update| u.0),
        |(_, value)| value,
        stats.clone(),
    );
    Harness::start(operator).expect("starts")
}

impl TestJoin {
    /// The times of the versions kept for `key`.
    fn versions(&mut self, key: u32) -> Vec<EventTime> {
        let state = self.operator().state.as_mut().expect("started");
        state.versions.user_keys(&key)
    }

    /// Keys with versions, and keys with waiting left records.
    fn keys(&mut self) -> (usize, usize) {
        let state = self.operator().state.as_ref().expect("started");
        (state.versions.len(), state.waiting.len())
    }
}

fn left(t: EventTime, key: u32, name: char) -> (EventTime, Either<Event, Update>) {
    (t, Either::Left((key, name)))
}

fn set(t: EventTime, key: u32, value: char) -> (EventTime, Either<Event, Update>) {
    (t, Either::Right((key, Some(value))))
}

fn delete(t: EventTime, key: u32) -> (EventTime, Either<Event, Update>) {
    (t, Either::Right((key, None)))
}

#[test]
fn a_left_record_waits_for_the_watermark_and_meets_the_table_as_of_its_time() {
    let stats = JoinStats::new();
    let mut join = start(&stats);
    // The table is read ahead of the left input (as when bootstrapping from a queue): the
    // versions at 20 and 30 must not be seen by the record at 15.
    join.push(vec![set(10, 1, 'a'), set(20, 1, 'b'), set(30, 1, 'c')]);
    join.push(vec![
        left(15, 1, 'x'),
        left(20, 1, 'y'),
        left(5, 1, 'z'),
        left(15, 2, 'k'),
    ]);
    join.watermark(14);
    assert_eq!(join.take(), vec![(5, ('z', None))]);
    join.watermark(25);
    // A version at exactly the record's time counts.
    assert_eq!(
        join.take_sorted(),
        vec![
            (15, ('k', None)),
            (15, ('x', Some('a'))),
            (20, ('y', Some('b')))
        ]
    );
    assert_eq!(join.keys(), (1, 0));
    assert_eq!((stats.late_left(), stats.late_right()), (0, 0));
}

#[test]
fn deletions_hide_the_value_from_their_time_on() {
    let mut join = start(&JoinStats::new());
    join.push(vec![set(10, 1, 'a'), delete(20, 1), set(30, 1, 'b')]);
    join.push(vec![
        left(19, 1, 'x'),
        left(20, 1, 'y'),
        left(29, 1, 'z'),
        left(30, 1, 'w'),
    ]);
    join.watermark(100);
    assert_eq!(
        join.take(),
        vec![
            (19, ('x', Some('a'))),
            (20, ('y', None)),
            (29, ('z', None)),
            (30, ('w', Some('b')))
        ]
    );
}

#[test]
fn versions_older_than_the_newest_behind_the_watermark_are_pruned() {
    let mut join = start(&JoinStats::new());
    join.push(vec![set(10, 1, 'a'), set(20, 1, 'b'), set(30, 1, 'c')]);
    join.push(vec![set(10, 2, 'a'), delete(20, 2)]);
    join.watermark(19);
    assert_eq!(join.versions(1), vec![10, 20, 30]);
    join.watermark(25);
    assert_eq!(
        join.versions(1),
        vec![20, 30],
        "10 is no one's version any more"
    );
    assert_eq!(
        join.versions(2),
        Vec::<EventTime>::new(),
        "deleted: no state"
    );
    join.watermark(i64::MAX);
    assert_eq!(join.versions(1), vec![30]);
    assert_eq!(join.keys(), (1, 0));
    // The last version stays the table's value.
    join.push(vec![left(i64::MAX, 1, 'x')]);
    assert_eq!(join.take(), vec![(i64::MAX, ('x', Some('c')))]);
}

#[test]
fn a_late_update_counts_and_applies_to_later_records_unless_superseded() {
    let stats = JoinStats::new();
    let mut join = start(&stats);
    join.push(vec![set(10, 1, 'a'), left(40, 1, 'x'), left(60, 1, 'y')]);
    join.watermark(50);
    assert_eq!(join.take(), vec![(40, ('x', Some('a')))]);
    // 45 is newer than the newest known version (10): later lookups see it. 5 is not.
    join.push(vec![set(45, 1, 'b'), set(5, 1, 'o')]);
    assert_eq!(stats.late_right(), 2);
    join.watermark(100);
    assert_eq!(join.take(), vec![(60, ('y', Some('b')))]);
    assert_eq!(join.versions(1), vec![45]);
}

#[test]
fn a_late_left_record_joins_at_once_only_when_its_version_is_still_known() {
    let stats = JoinStats::new();
    let mut join = start(&stats);
    join.push(vec![
        set(10, 1, 'a'),
        set(20, 1, 'b'),
        set(15, 2, 'k'),
        delete(30, 3),
    ]);
    join.watermark(25);
    // Key 1 keeps 20 only: 22 is known ('b'), 12 was 'a' but that version is gone.
    join.push(vec![left(22, 1, 'x'), left(12, 1, 'y')]);
    assert_eq!(join.take(), vec![(22, ('x', Some('b')))]);
    assert_eq!(stats.late_left(), 1);
    // Key 2's only version is 15: 14 cannot tell whether an older one was pruned.
    join.push(vec![left(14, 2, 'z'), left(25, 2, 'w')]);
    assert_eq!(join.take(), vec![(25, ('w', Some('k')))]);
    assert_eq!(stats.late_left(), 2);
    // Key 4 never had a version; after the deletion of key 3 is pruned, a record before it
    // could be a record of a deleted key.
    join.push(vec![left(20, 4, 'v')]);
    assert_eq!(join.take(), vec![(20, ('v', None))]);
    join.watermark(40);
    assert_eq!(join.keys(), (2, 0));
    join.push(vec![left(29, 4, 'u'), left(30, 4, 't')]);
    assert_eq!(join.take(), vec![(30, ('t', None))]);
    assert_eq!(stats.late_left(), 3);
}

#[test]
fn a_restored_join_keeps_its_waiting_records_its_pruning_and_its_pruned_tombstones() {
    let mut durable = DurableStore::new();
    let stats = JoinStats::new();
    let started = |durable: &DurableStore, stats: &JoinStats| {
        let join: JoinFn = |_, l, value| Some((l.1, value.copied()));
        let operator = TemporalJoinOperator::new(
            Arc::new(join),
            Arc::new(|e: &Event| e.0),
            Arc::new(|u: &Update| u.0),
            |(_, value)| value,
            stats.clone(),
        );
        Harness::start_with(operator, durable.backend(4)).expect("starts")
    };
    let mut join = started(&durable, &stats);
    // Key 2 is set, then deleted: once the watermark passes the deletion, it leaves nothing.
    join.push(vec![
        set(5, 2, 'p'),
        delete(12, 2),
        set(40, 3, 'c'),
        set(50, 3, 'd'),
    ]);
    join.push(vec![left(45, 3, 'w')]);
    join.watermark(30);
    assert_eq!(
        join.keys(),
        (1, 1),
        "key 2 is gone; 3 has versions and a waiting record"
    );
    let checkpoint = durable.checkpoint(&mut join);
    join.watermark(60);
    assert_eq!(join.take(), vec![(45, ('w', Some('c')))]);
    drop(join);

    durable.restore(checkpoint);
    let mut join = started(&durable, &stats);
    // A late record of key 2 from before its pruned deletion: what the table held then is no
    // longer known.
    join.push(vec![left(8, 2, 'L')]);
    assert_eq!(join.take(), vec![]);
    assert_eq!(stats.late_left(), 1);
    // The waiting record, and the pruning of key 3's versions, are scheduled again.
    join.watermark(60);
    assert_eq!(join.take(), vec![(45, ('w', Some('c')))]);
    assert_eq!(join.versions(3), vec![50]);
    let mirror = join.operator().mirror.restore();
    assert!(
        mirror.is_empty(),
        "fired timers leave the mirror: {mirror:?}"
    );
}
