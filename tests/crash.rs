//! Real crash and concurrency tests of the embedded queue: child processes write, are killed
//! with SIGKILL at random moments, or write to one partition at the same time; the parent
//! checks that every acknowledged message is there exactly once, in order per partition.
//!
//! The children are this test binary run again with `OMSTREAM_TEST_CHILD` set, executing the
//! ignored `child_producer` test.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use omstream::oms::embedded::EMBEDDED_DIR;
use std::sync::Arc;

use omstream::oms::{
    connect, KeyValue, Message, MessagingAccessPoint, QueueConfig, SeekPosition, ServiceLifecycle,
    TransactionState, TransactionStateCheckListener,
};
use rand::Rng;

const QUEUE: &str = "crash";

fn attrs(root: &Path) -> KeyValue {
    // Small segments so that kills also land during segment rolls.
    KeyValue::new()
        .with(EMBEDDED_DIR, root.display())
        .with("EMBEDDED_SEGMENT_BYTES", 64 * 1024)
}

/// Child: sends batches of sequence-numbered messages forever, printing `ACK <last seq>` after
/// each send returns. `OMSTREAM_TEST_CHILD` = `<root>|<writer id>|<first seq>|<partition or ->`.
#[test]
#[ignore = "run only as a child process of the tests below"]
fn child_producer() {
    let Ok(spec) = std::env::var("OMSTREAM_TEST_CHILD") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let (root, writer, first): (&str, u32, u64) = (
        parts[0],
        parts[1].parse().unwrap(),
        parts[2].parse().unwrap(),
    );
    let partition: Option<i32> = parts[3].parse().ok();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if parts.get(4) == Some(&"transactions") {
        rt.block_on(prepare_and_hang(Path::new(root)));
        return;
    }
    rt.block_on(async {
        let ap = connect("oms:embedded://localhost/crash", attrs(Path::new(root)))
            .await
            .unwrap();
        let producer = ap.create_producer(KeyValue::new()).await.unwrap();
        producer.start().await.unwrap();
        let mut seq = first;
        loop {
            let batch: Vec<Message> = (0..50)
                .map(|i| {
                    let s = seq + i;
                    let m = Message::new(
                        QUEUE,
                        format!("{writer}:{s}:{}", "p".repeat((s % 97) as usize)),
                    );
                    match partition {
                        Some(p) => m.with_partition(p),
                        None => m.with_key(format!("key-{}", s % 7)),
                    }
                })
                .collect();
            producer.send_batch(batch).await.unwrap();
            seq += 50;
            say_ack(seq - 1);
        }
    });
}

/// Tells the parent that everything up to `n` is acknowledged. (The first one shares its line
/// with the test harness's `test child_producer ... `, so the parent looks for `ACK ` anywhere.)
fn say_ack(n: u64) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ACK {n}").unwrap();
    out.flush().unwrap();
}

/// Child: prepares ten transactions, says `ACK 10`, and waits to be killed without deciding.
async fn prepare_and_hang(root: &Path) {
    struct Undecided;
    impl TransactionStateCheckListener for Undecided {
        fn check(&self, _: &Message) -> TransactionState {
            TransactionState::Unknown
        }
    }
    let ap = connect("oms:embedded://localhost/crash", attrs(root))
        .await
        .unwrap();
    let producer = ap
        .create_transactional_producer(KeyValue::new(), Arc::new(Undecided))
        .await
        .unwrap();
    producer.start().await.unwrap();
    let mut open = Vec::new();
    for i in 0..10 {
        open.push(
            producer
                .prepare(Message::new(QUEUE, format!("tx{i}")))
                .await
                .unwrap(),
        );
    }
    say_ack(10);
    tokio::time::sleep(Duration::from_secs(600)).await;
    drop(open);
}

fn spawn_child(root: &Path, writer: u32, first: u64, partition: Option<i32>) -> Child {
    spawn_child_mode(root, writer, first, partition, "produce")
}

fn spawn_child_mode(
    root: &Path,
    writer: u32,
    first: u64,
    partition: Option<i32>,
    mode: &str,
) -> Child {
    let partition = partition.map_or("-".to_string(), |p| p.to_string());
    let spec = format!("{}|{writer}|{first}|{partition}|{mode}", root.display());
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_producer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("OMSTREAM_TEST_CHILD", spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Streams the child's `ACK n` lines into a channel.
fn acks(child: &mut Child) -> mpsc::Receiver<u64> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(n) = line.split("ACK ").nth(1).and_then(|n| n.parse().ok()) {
                if tx.send(n).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The store in `root`, with the queue the tests use, of `partitions` partitions.
async fn store_with_queue(root: &Path, partitions: u32) -> Arc<dyn MessagingAccessPoint> {
    let ap = connect("oms:embedded://localhost/crash", attrs(root))
        .await
        .unwrap();
    let rm = ap.resource_manager().await.unwrap();
    rm.create_queue(QUEUE, QueueConfig::with_partitions(partitions))
        .await
        .unwrap();
    ap
}

/// Every message in the queue, per partition, parsed as (writer, seq).
async fn read_back(root: &Path, partitions: u32) -> BTreeMap<i32, Vec<(u32, u64)>> {
    let ap = connect("oms:embedded://localhost/crash", attrs(root))
        .await
        .unwrap();
    let consumer = ap.create_streaming_consumer(KeyValue::new()).await.unwrap();
    consumer.start().await.unwrap();
    let mut out = BTreeMap::new();
    for p in 0..partitions as i32 {
        let mut reader = consumer
            .open(QUEUE, p, SeekPosition::Beginning)
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut expected_offset = 0;
        loop {
            let batch = reader
                .poll_batch(10_000, Duration::from_millis(50))
                .await
                .unwrap();
            if batch.is_empty() {
                break;
            }
            for m in batch {
                assert_eq!(
                    m.offset(),
                    Some(expected_offset),
                    "offsets are dense in partition {p}"
                );
                expected_offset += 1;
                let text = std::str::from_utf8(&m.data).unwrap();
                let mut f = text.split(':');
                let writer: u32 = f.next().unwrap().parse().unwrap();
                let seq: u64 = f.next().unwrap().parse().unwrap();
                assert_eq!(
                    f.next().unwrap().len() as u64,
                    seq % 97,
                    "body of seq {seq} is intact"
                );
                got.push((writer, seq));
            }
        }
        out.insert(p, got);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    store_with_queue(root, 3).await;
    let mut rng = rand::rng();
    let mut acked: Vec<(u64, u64)> = Vec::new();
    for round in 0..8u64 {
        let first = round * 10_000_000;
        let mut child = spawn_child(root, round as u32, first, None);
        let rx = acks(&mut child);
        // Let it get going, then kill it at a random moment.
        let _ = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the child acknowledged nothing");
        std::thread::sleep(Duration::from_millis(rng.random_range(5..300)));
        child.kill().unwrap();
        child.wait().unwrap();
        let last = rx.try_iter().last().unwrap_or(first);
        acked.push((first, last.max(first)));
    }
    let all = read_back(root, 3).await;
    let mut seen = HashSet::new();
    for (p, msgs) in &all {
        let mut last_per_writer: HashMap<u32, u64> = HashMap::new();
        for &(writer, seq) in msgs {
            assert!(seen.insert(seq), "seq {seq} stored twice");
            if let Some(prev) = last_per_writer.insert(writer, seq) {
                assert!(
                    seq > prev,
                    "partition {p}: writer {writer} wrote {seq} after {prev}"
                );
            }
        }
    }
    for (first, last) in acked {
        for seq in first..=last {
            assert!(seen.contains(&seq), "acknowledged seq {seq} was lost");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_processes_never_interleave_a_partition() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ap = store_with_queue(root, 1).await;
    // A live reader in this process sees the children's writes without a restart.
    let consumer = ap.create_streaming_consumer(KeyValue::new()).await.unwrap();
    consumer.start().await.unwrap();
    let mut live = consumer
        .open(QUEUE, 0, SeekPosition::Beginning)
        .await
        .unwrap();
    let mut children: Vec<(Child, mpsc::Receiver<u64>)> = (0..3u32)
        .map(|w| {
            let mut c = spawn_child(root, w, u64::from(w) * 10_000_000, Some(0));
            let rx = acks(&mut c);
            (c, rx)
        })
        .collect();
    let mut live_count = 0;
    while live_count < 3000 {
        let batch = tokio::time::timeout(Duration::from_secs(30), live.next_batch(10_000))
            .await
            .expect("the live reader saw no new messages")
            .unwrap();
        live_count += batch.len();
    }
    let mut last_acked = Vec::new();
    for (child, rx) in &mut children {
        child.kill().unwrap();
        child.wait().unwrap();
        last_acked.push(rx.try_iter().last());
    }
    let all = read_back(root, 1).await;
    let msgs = &all[&0];
    let mut per_writer: HashMap<u32, Vec<u64>> = HashMap::new();
    for &(w, s) in msgs {
        per_writer.entry(w).or_default().push(s);
    }
    for (w, seqs) in &per_writer {
        let first = u64::from(*w) * 10_000_000;
        // Each writer's messages are whole batches, contiguous and in order.
        assert!(
            seqs.iter().enumerate().all(|(i, s)| *s == first + i as u64),
            "writer {w} has gaps or reordering"
        );
        // The writers were killed mid-batch too: a batch is stored whole or not at all.
        assert_eq!(
            seqs.len() % 50,
            0,
            "writer {w} has a partial batch of {} messages",
            seqs.len() % 50
        );
        if let Some(Some(last)) = last_acked.get(*w as usize) {
            assert!(
                seqs.last().copied().unwrap_or(0) >= *last,
                "writer {w}: acknowledged {last} missing"
            );
        }
    }
    assert!(per_writer.len() == 3, "all three writers wrote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_of_a_killed_producer_are_resolved_exactly_once() {
    /// Commits the even transactions, rolls back the odd ones.
    struct EvenCommits;
    impl TransactionStateCheckListener for EvenCommits {
        fn check(&self, message: &Message) -> TransactionState {
            let n: u32 = std::str::from_utf8(&message.data).unwrap()[2..]
                .parse()
                .unwrap();
            if n.is_multiple_of(2) {
                TransactionState::Commit
            } else {
                TransactionState::Rollback
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ap = store_with_queue(root, 2).await;
    let mut child = spawn_child_mode(root, 0, 0, None, "transactions");
    let rx = acks(&mut child);
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the child prepared nothing");
    // While the child lives, its transactions are its own: a resolver leaves them alone.
    let resolver = ap
        .create_transactional_producer(KeyValue::new(), Arc::new(EvenCommits))
        .await
        .unwrap();
    resolver.start().await.unwrap();
    assert!(
        read_bodies(&ap).await.is_empty(),
        "a live producer's prepared messages were published"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // Reopened after the crash: the open transactions are resolved by the listener.
    let after_crash = ap
        .create_transactional_producer(KeyValue::new(), Arc::new(EvenCommits))
        .await
        .unwrap();
    after_crash.start().await.unwrap();
    let again = ap
        .create_transactional_producer(KeyValue::new(), Arc::new(EvenCommits))
        .await
        .unwrap();
    again.start().await.unwrap();
    let mut bodies = read_bodies(&ap).await;
    bodies.sort();
    assert_eq!(
        bodies,
        ["tx0", "tx2", "tx4", "tx6", "tx8"],
        "committed once each, rolled back never"
    );
}

async fn read_bodies(ap: &Arc<dyn MessagingAccessPoint>) -> Vec<String> {
    let consumer = ap.create_streaming_consumer(KeyValue::new()).await.unwrap();
    consumer.start().await.unwrap();
    let mut out = Vec::new();
    for p in 0..2 {
        let mut reader = consumer
            .open(QUEUE, p, SeekPosition::Beginning)
            .await
            .unwrap();
        for m in reader
            .poll_batch(100, Duration::from_millis(100))
            .await
            .unwrap()
        {
            out.push(String::from_utf8(m.data.to_vec()).unwrap());
        }
    }
    out
}
