//! A property-based model test of the embedded queue: random sends, reads, commits, restarts
//! and torn tails, checked against an in-memory model of what a queue must hold.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use omstream_core::oms::embedded::{EMBEDDED_DIR, EMBEDDED_SEGMENT_BYTES};
use omstream_core::oms::{
    connect, keyvalue, KeyValue, Message, MessagingAccessPoint, Producer, QueueConfig,
    SeekPosition, ServiceLifecycle,
};
use proptest::prelude::*;

const PARTITIONS: u32 = 3;
const QUEUE: &str = "model";

#[derive(Debug, Clone)]
enum Op {
    /// Sends `count` messages of `len` bytes to a partition, in one batch.
    Send {
        partition: i32,
        count: usize,
        len: usize,
    },
    /// Reads a partition from an offset and compares with the model.
    Read { partition: i32, from: i64 },
    /// Commits an offset for the group.
    Commit { partition: i32, offset: i64 },
    /// Closes every handle and reopens the store.
    Restart,
    /// A writer crashed mid-record: garbage at the end of the active segment, then a restart.
    TearTail { partition: i32, garbage: Vec<u8> },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..PARTITIONS as i32, 1usize..40, 0usize..300).prop_map(|(partition, count, len)| Op::Send { partition, count, len }),
        2 => (0..PARTITIONS as i32, 0i64..200).prop_map(|(partition, from)| Op::Read { partition, from }),
        1 => (0..PARTITIONS as i32, 0i64..200).prop_map(|(partition, offset)| Op::Commit { partition, offset }),
        1 => Just(Op::Restart),
        1 => (0..PARTITIONS as i32, proptest::collection::vec(any::<u8>(), 1..60))
            .prop_map(|(partition, garbage)| Op::TearTail { partition, garbage }),
    ]
}

struct Live {
    ap: Arc<dyn MessagingAccessPoint>,
    producer: Producer,
}

async fn open(root: &Path) -> Live {
    let attrs = KeyValue::new()
        .with(EMBEDDED_DIR, root.display())
        .with(EMBEDDED_SEGMENT_BYTES, 4096);
    let ap = connect("oms:embedded://localhost/model", attrs)
        .await
        .unwrap();
    let producer = ap.create_producer(KeyValue::new()).await.unwrap();
    producer.start().await.unwrap();
    Live { ap, producer }
}

fn active_segment(root: &Path, partition: i32) -> PathBuf {
    let dir = root
        .join("model/namespaces/default")
        .join(QUEUE)
        .join(format!("p-{partition}"));
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().unwrap()
}

fn body(partition: i32, offset: usize, len: usize) -> Vec<u8> {
    let mut b = format!("{partition}:{offset}:").into_bytes();
    b.resize(len.max(b.len()), b'x');
    b
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut live = open(root).await;
    live.ap
        .resource_manager()
        .await
        .unwrap()
        .create_queue(QUEUE, QueueConfig::with_partitions(PARTITIONS))
        .await
        .unwrap();
    let mut model: Vec<Vec<Vec<u8>>> = vec![Vec::new(); PARTITIONS as usize];
    let mut committed: Vec<Option<i64>> = vec![None; PARTITIONS as usize];
    let group = KeyValue::new().with(keyvalue::CONSUMER_ID, "g");
    for op in ops {
        match op {
            Op::Send {
                partition,
                count,
                len,
            } => {
                let p = partition as usize;
                let batch: Vec<Message> = (0..count)
                    .map(|i| {
                        Message::new(QUEUE, body(partition, model[p].len() + i, len))
                            .with_partition(partition)
                    })
                    .collect();
                let results = live.producer.send_batch(batch).await.unwrap();
                for (i, r) in results.iter().enumerate() {
                    assert_eq!(r.offset, (model[p].len() + i) as i64, "offsets are dense");
                }
                for _ in 0..count {
                    let offset = model[p].len();
                    model[p].push(body(partition, offset, len));
                }
            }
            Op::Read { partition, from } => {
                let p = partition as usize;
                let consumer = live
                    .ap
                    .create_streaming_consumer(KeyValue::new())
                    .await
                    .unwrap();
                consumer.start().await.unwrap();
                let mut reader = consumer
                    .open(QUEUE, partition, SeekPosition::Offset(from))
                    .await
                    .unwrap();
                let expected_from = (from as usize).min(model[p].len());
                assert_eq!(reader.position(), expected_from as i64);
                let mut got = Vec::new();
                loop {
                    let batch = reader
                        .poll_batch(1000, Duration::from_millis(1))
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        break;
                    }
                    got.extend(batch);
                }
                let want = &model[p][expected_from..];
                assert_eq!(got.len(), want.len(), "partition {partition} from {from}");
                for (i, (m, w)) in got.iter().zip(want).enumerate() {
                    assert_eq!(m.offset(), Some((expected_from + i) as i64));
                    assert_eq!(&m.data[..], &w[..], "body at offset {}", expected_from + i);
                }
                let (start, end) = consumer.offset_range(QUEUE, partition).await.unwrap();
                assert_eq!((start, end), (0, model[p].len() as i64));
            }
            Op::Commit { partition, offset } => {
                let consumer = live
                    .ap
                    .create_streaming_consumer(group.clone())
                    .await
                    .unwrap();
                consumer.start().await.unwrap();
                consumer.commit(QUEUE, partition, offset).await.unwrap();
                committed[partition as usize] = Some(offset);
            }
            Op::Restart => {
                drop(live);
                live = open(root).await;
            }
            Op::TearTail { partition, garbage } => {
                drop(live);
                let mut f = OpenOptions::new()
                    .append(true)
                    .open(active_segment(root, partition))
                    .unwrap();
                // A plausible length prefix makes the torn record look like the start of a real one.
                let mut torn = ((garbage.len() + 100) as u32).to_le_bytes().to_vec();
                torn.extend_from_slice(&garbage);
                f.write_all(&torn).unwrap();
                live = open(root).await;
            }
        }
        let consumer = live
            .ap
            .create_streaming_consumer(group.clone())
            .await
            .unwrap();
        consumer.start().await.unwrap();
        for p in 0..PARTITIONS as i32 {
            assert_eq!(
                consumer.committed(QUEUE, p).await.unwrap(),
                committed[p as usize],
                "committed offset of {p}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn embedded_queue_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run(ops));
    }
}

/// A torn tail right before a roll: the writer must cut it, then roll correctly.
#[test]
fn torn_tail_then_roll_regression() {
    let ops = vec![
        Op::Send {
            partition: 0,
            count: 30,
            len: 120,
        },
        Op::TearTail {
            partition: 0,
            garbage: vec![7; 50],
        },
        Op::Send {
            partition: 0,
            count: 30,
            len: 120,
        },
        Op::Read {
            partition: 0,
            from: 0,
        },
        Op::Restart,
        Op::Read {
            partition: 0,
            from: 25,
        },
    ];
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(ops));
}
