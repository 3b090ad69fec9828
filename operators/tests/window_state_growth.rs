//! A keyed tumbling window keeps a bounded state per key while its input goes on: fired panes
//! are dropped (checked over durable state, by what each checkpoint writes), and the watermark
//! it sees keeps up with the data when an OMS source reads partitions that hold different
//! amounts of event time per message (else every key would keep a pane per window of the gap).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use omstream_core::connectors::{EventTimeFrom, OmsSourceConfig};
use omstream_core::oms::embedded::EMBEDDED_DIR;
use omstream_core::oms::{connect, KeyValue, Message, QueueConfig, ServiceLifecycle};
use omstream_core::runtime::{
    Batch, Operator, OperatorContext, OperatorResult, ProcessingClock, SubtaskInfo,
};
use omstream_core::state::{DurableBackend, StateBackend, StateStore};
use omstream_operators::prelude::*;
use omstream_operators::testing::{self, WindowEvent};

/// `(key, event time)`.
type Event = (u32, i64);

const KEYS: u32 = 50;
/// Event time between consecutive events.
const STEP: i64 = 20;

/// What one checkpoint writes of the window's state, over durable state, while 50 keys get an
/// event every 20 ms in turn and the watermark follows the data: the same at the 20th
/// checkpoint as at the 100th (about 40 bytes a key), as each key holds only the window it
/// is in. (Before the 20th, times still fit in fewer bytes.)
#[test]
fn fired_panes_are_dropped_so_each_checkpoint_writes_the_same() {
    let windowed = StreamEnv::default()
        .from_iter("events", Vec::<Event>::new())
        .key_by(|(key, _): &Event| *key)
        .window(TimeWindows::tumbling(Duration::from_secs(10)));
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(StateStore::open(dir.path()).expect("opens"));
    let first = store.begin_run(0).expect("begins");
    let mut operator = testing::window_aggregate(&windowed, Count, false);
    let mut ctx: OperatorContext<WindowEvent<u32, u64, Event>> =
        OperatorContext::new(SubtaskInfo::new("window", 0, 1), ProcessingClock::start());
    ctx.set_state_backend(StateBackend::Durable(DurableBackend::new(
        store.clone(),
        first,
        64,
    )));
    operator.on_start(&mut ctx).expect("starts");
    let (mut written, mut fired, mut next) = (Vec::new(), 0u64, 0i64);
    for epoch in first..first + 100 {
        // 4 s of event time per checkpoint, in batches of 100 with a watermark after each.
        for _ in 0..2 {
            let batch: Batch<Event> = (next..next + 100)
                .map(|i| Record::new(i * STEP, ((i % KEYS as i64) as u32, i * STEP)))
                .collect();
            next += 100;
            operator.process_batch(batch, &mut ctx).expect("records");
            operator
                .on_watermark(next * STEP - STEP - 1, &mut ctx)
                .expect("watermark");
        }
        fired += std::mem::take(ctx.output_mut())
            .into_iter()
            .map(|record| match record.value {
                WindowEvent::Result(result) => result.value,
                WindowEvent::Late(_) => panic!("no record is late"),
            })
            .sum::<u64>();
        store.set_last_triggered_epoch(epoch).expect("triggers");
        let (mut entries, mut bytes) = (0, 0);
        for state in operator.keyed_state() {
            let stats = state.snapshot(epoch).expect("snapshots");
            entries += stats.entries;
            bytes += stats.bytes;
        }
        written.push((entries, bytes));
    }
    // Every window but the last (its 500 events wait for the watermark to reach 400 s) fired.
    assert_eq!(fired, (next - 500) as u64);
    let (early, late) = (written[19], written[99]);
    assert_eq!(
        early.0, late.0,
        "every key and the watermark change: {written:?}"
    );
    assert!(
        late.1 <= early.1 + early.1 / 10,
        "a checkpoint wrote {early:?} at first, {late:?} later: panes pile up"
    );
}

/// Records, per batch it sees, how far the newest event time is ahead of its input watermark,
/// as the window operator after it would see it.
struct LagProbe {
    newest: i64,
    lag: Arc<Mutex<i64>>,
}

impl Operator<Event, ()> for LagProbe {
    fn process_batch(
        &mut self,
        batch: Batch<Event>,
        ctx: &mut OperatorContext<()>,
    ) -> OperatorResult {
        self.newest = batch
            .iter()
            .map(|r| r.timestamp)
            .fold(self.newest, i64::max);
        let watermark = ctx.watermark();
        if watermark > i64::MIN {
            let mut lag = self.lag.lock().expect("lag lock");
            *lag = (*lag).max(self.newest - watermark);
        }
        Ok(())
    }
}

/// Regression: an OMS source read its partitions in turns by message count. Partition 0 holds
/// two events in five, the others one each: partition 0 went through event time at half the
/// pace of the others, the watermark (the minimum) with it, and the gap to the newest data
/// grew to 400 s by the end (a window per key per 10 s of it). Read level in event time, the
/// gap stays within about one batch of the sparser partitions (100 events, 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_watermark_keeps_up_with_partitions_of_uneven_density() {
    const EVENTS: i64 = 40_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let ap = connect(
        "oms:embedded://localhost/lag",
        KeyValue::new().with(EMBEDDED_DIR, dir.path().display()),
    )
    .await
    .expect("connects");
    let resources = ap.resource_manager().await.expect("resources");
    resources
        .create_queue("events", QueueConfig::with_partitions(4))
        .await
        .expect("creates the queue");
    let producer = ap.create_producer(KeyValue::new()).await.expect("producer");
    producer.start().await.expect("starts");
    let messages = (0..EVENTS)
        .map(|i| {
            let event: Event = ((i % KEYS as i64) as u32, i * STEP);
            let partition = [0, 0, 1, 2, 3][(i % 5) as usize];
            Message::new("events", serde_json::to_vec(&event).expect("json"))
                .with_partition(partition)
        })
        .collect();
    producer.send_batch(messages).await.expect("sends");
    producer.stop().await.expect("stops");

    let env = StreamEnv::new(JobConfig::named("lag").with_batch_size(100));
    let keyed = env
        .add_oms_source(
            OmsSourceConfig::<Event>::new(ap.clone(), "events")
                .batch_size(100)
                .event_time(EventTimeFrom::extract(|(_, at): &Event| *at))
                .watermarks(
                    WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO)
                        .with_idle_timeout(None),
                )
                .bounded(true),
        )
        .expect("source")
        .key_by(|(key, _): &Event| *key);
    let lag = Arc::new(Mutex::new(0));
    let probe_lag = lag.clone();
    let _ = keyed
        .transform("lag-probe", move |_| {
            Box::new(LagProbe {
                newest: i64::MIN,
                lag: probe_lag.clone(),
            }) as Box<dyn Operator<Event, ()>>
        })
        .collect();
    let counts = keyed
        .window(TimeWindows::tumbling(Duration::from_secs(10)))
        .aggregate(Count)
        .collect();
    env.execute().await.expect("runs");

    let counts = counts.values();
    assert_eq!(
        counts.len(),
        (EVENTS * STEP / 10_000) as usize * KEYS as usize
    );
    assert_eq!(counts.iter().map(|w| w.value).sum::<u64>(), EVENTS as u64);
    let lag = *lag.lock().expect("lag lock");
    assert!(
        lag <= 20_000,
        "the window's watermark fell {lag} ms of event time behind the newest record"
    );
}
