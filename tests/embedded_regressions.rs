//! Regression tests for bugs found in review of the embedded driver. Each test names the
//! failure it guards against. A second handle on one partition (another process, in effect) is
//! made by connecting to the store a second time under another region name pointing at the same
//! directory, or by the alias `default://q` of `q` where the test says so.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use omstream::oms::embedded::{EMBEDDED_DIR, EMBEDDED_SEGMENT_BYTES};
use omstream::oms::{
    connect, keyvalue, KeyValue, Message, MessagingAccessPoint, PartitionReader, Producer,
    QueueConfig, RetentionPolicy, SeekPosition, ServiceLifecycle,
};

async fn open(dir: &Path, extra: KeyValue) -> Arc<dyn MessagingAccessPoint> {
    let mut attrs = KeyValue::new().with(EMBEDDED_DIR, dir.display());
    attrs.merge_missing(&extra);
    connect("oms:embedded://localhost/r", attrs).await.unwrap()
}

async fn reader(ap: &Arc<dyn MessagingAccessPoint>, queue: &str) -> Box<dyn PartitionReader> {
    let c = ap.create_streaming_consumer(KeyValue::new()).await.unwrap();
    c.start().await.unwrap();
    c.open(queue, 0, SeekPosition::Beginning).await.unwrap()
}

async fn read_all(r: &mut dyn PartitionReader) -> Vec<(i64, String)> {
    let mut all = Vec::new();
    loop {
        let batch = r
            .poll_batch(1000, Duration::from_millis(100))
            .await
            .unwrap();
        if batch.is_empty() {
            return all;
        }
        all.extend(batch.iter().map(|m| {
            (
                m.offset().unwrap(),
                String::from_utf8_lossy(&m.data).into_owned(),
            )
        }));
    }
}

fn assert_dense(all: &[(i64, String)]) {
    for pair in all.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "offsets are dense: {all:?}");
    }
}

/// A store in `dir` with a one-partition queue `queue`; the access point and a started producer.
async fn queue_with_producer(dir: &Path, queue: &str) -> (Arc<dyn MessagingAccessPoint>, Producer) {
    let ap = open(dir, KeyValue::new()).await;
    let rm = ap.resource_manager().await.unwrap();
    rm.create_queue(queue, QueueConfig::with_partitions(1))
        .await
        .unwrap();
    let p = ap.create_producer(KeyValue::new()).await.unwrap();
    p.start().await.unwrap();
    (ap, p)
}

/// Queue `q`: 4 KiB segments, at most 8 KiB kept, so that a few sends make retention drop
/// segments. Returns the access point and a started producer.
async fn small_retained_queue(dir: &Path) -> (Arc<dyn MessagingAccessPoint>, Producer) {
    let ap = open(dir, KeyValue::new().with(EMBEDDED_SEGMENT_BYTES, 4096)).await;
    let mut config = QueueConfig::with_partitions(1);
    config.retention = RetentionPolicy {
        max_age: None,
        max_bytes: Some(8192),
    };
    ap.resource_manager()
        .await
        .unwrap()
        .create_queue("q", config)
        .await
        .unwrap();
    let p = ap.create_producer(KeyValue::new()).await.unwrap();
    p.start().await.unwrap();
    (ap, p)
}

/// A handle whose cached tail points at a segment that retention (by another handle) deleted
/// used to write into the deleted file: acknowledged, reused offset, lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_tail_after_retention_never_loses_a_send() {
    let dir = tempfile::tempdir().unwrap();
    let (ap, p) = small_retained_queue(dir.path()).await;
    // `default://q` is a second spelling of `q`; before the fix it was a second handle.
    p.send(Message::new("default://q", "first")).await.unwrap();
    let body = "x".repeat(1000);
    for _ in 0..40 {
        p.send(Message::new("q", body.clone())).await.unwrap();
    }
    let sent = p.send(Message::new("default://q", "second")).await.unwrap();
    let mut r = reader(&ap, "q").await;
    let all = read_all(r.as_mut()).await;
    assert_dense(&all);
    assert_eq!(
        all.last().map(|(o, b)| (*o, b.as_str())),
        Some((sent.offset, "second"))
    );
}

/// A reader that had read part of a torn batch into its buffer used to serve it after a writer
/// had cut it off and written a new message at the same offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_batch_in_a_readers_buffer_is_never_served() {
    for new_body in ["N1", "N1-with-a-longer-body"] {
        let dir = tempfile::tempdir().unwrap();
        let ap = open(dir.path(), KeyValue::new()).await;
        let rm = ap.resource_manager().await.unwrap();
        rm.create_queue("t", QueueConfig::with_partitions(1))
            .await
            .unwrap();
        rm.create_queue("u", QueueConfig::with_partitions(1))
            .await
            .unwrap();
        let p = ap.create_producer(KeyValue::new()).await.unwrap();
        p.start().await.unwrap();
        let abc = |q: &str| {
            ["a", "b", "c"]
                .iter()
                .map(|s| Message::new(q, *s))
                .collect()
        };
        p.send_batch(abc("t")).await.unwrap();
        p.send_batch(abc("u")).await.unwrap();
        // Make a torn batch: two whole records of a three-record batch (copied from queue u).
        let useg = dir
            .path()
            .join("r/namespaces/default/u/p-0/00000000000000000000.log");
        let before = std::fs::metadata(&useg).unwrap().len() as usize;
        p.send_batch(
            ["X1", "X2", "X3"]
                .iter()
                .map(|s| Message::new("u", *s))
                .collect(),
        )
        .await
        .unwrap();
        let bytes = std::fs::read(&useg).unwrap();
        let rec = (bytes.len() - before) / 3;
        let tseg = dir
            .path()
            .join("r/namespaces/default/t/p-0/00000000000000000000.log");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&tseg)
            .unwrap()
            .write_all(&bytes[before..before + 2 * rec])
            .unwrap();
        let mut r = reader(&ap, "t").await;
        let first = r.poll_batch(2, Duration::from_millis(50)).await.unwrap();
        assert_eq!(first.len(), 2);
        let sent = p.send(Message::new("t", new_body)).await.unwrap();
        assert_eq!(sent.offset, 3, "the torn batch was cut off");
        let rest = read_all(r.as_mut()).await;
        let bodies: Vec<&str> = rest.iter().map(|(_, b)| b.as_str()).collect();
        assert_eq!(
            bodies,
            ["c", new_body],
            "no torn record served, the new one not skipped"
        );
    }
}

/// A crash after the `.publishing` file was written but before the staged file was removed used
/// to publish a delayed message twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_publish_is_completed_once() {
    let dir = tempfile::tempdir().unwrap();
    let (ap, p) = queue_with_producer(dir.path(), "t").await;
    p.send(Message::new("t", "plain")).await.unwrap();
    let delayed = p
        .send(Message::new("t", "delayed").with_delay(Duration::from_millis(100)))
        .await
        .unwrap();
    let staged_dir = dir.path().join("r/namespaces/default/t/p-0/staged");
    let staged = std::fs::read_dir(&staged_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut body = 1i64.to_le_bytes().to_vec();
    body.extend_from_slice(&std::fs::read(&staged).unwrap());
    std::fs::write(staged.with_extension("publishing"), body).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut r = reader(&ap, "t").await;
    let mut all = Vec::new();
    for _ in 0..5 {
        all.extend(r.poll_batch(10, Duration::from_millis(60)).await.unwrap());
    }
    let copies = all
        .iter()
        .filter(|m| m.message_id() == Some(delayed.message_id.as_str()))
        .count();
    assert_eq!(copies, 1, "published exactly once");
    assert_eq!(
        std::fs::read_dir(&staged_dir).unwrap().count(),
        0,
        "nothing left staged"
    );
}

/// An empty or garbage staged file used to panic every reader (empty) or be appended as a record
/// that no reader could get past (garbage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_staged_file_is_set_aside() {
    for content in [Vec::new(), vec![0u8; 40]] {
        let dir = tempfile::tempdir().unwrap();
        let (ap, p) = queue_with_producer(dir.path(), "q").await;
        p.send(Message::new("q", "a")).await.unwrap();
        let staged = dir.path().join("r/namespaces/default/q/p-0/staged");
        std::fs::create_dir_all(&staged).unwrap();
        std::fs::write(staged.join("00000000000000000001-AB.delayed"), &content).unwrap();
        let mut r = reader(&ap, "q").await;
        assert_eq!(
            r.poll_batch(10, Duration::from_millis(100))
                .await
                .unwrap()
                .len(),
            1
        );
        p.send(Message::new("q", "b")).await.unwrap();
        let all = read_all(r.as_mut()).await;
        assert_eq!(all, vec![(1, "b".to_string())]);
        assert!(
            staged
                .join("00000000000000000001-AB.delayed.corrupt")
                .exists(),
            "kept for inspection"
        );
    }
}

/// A queue deleted and created again under a live handle: the old handle must not write into
/// the deleted files and report success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_through_a_handle_of_a_deleted_queue_is_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let ap = open(dir.path(), KeyValue::new()).await;
    let rm = ap.resource_manager().await.unwrap();
    rm.create_queue("q", QueueConfig::with_partitions(1))
        .await
        .unwrap();
    let p = ap.create_producer(KeyValue::new()).await.unwrap();
    p.start().await.unwrap();
    for i in 0..5 {
        p.send(Message::new("q", format!("old{i}"))).await.unwrap();
    }
    // Another process deletes and recreates the queue.
    let other = connect(
        "oms:embedded://localhost/r",
        KeyValue::new().with(EMBEDDED_DIR, dir.path().display()),
    )
    .await
    .unwrap();
    let other_rm = other.resource_manager().await.unwrap();
    other_rm.delete_queue("q").await.unwrap();
    other_rm
        .create_queue("q", QueueConfig::with_partitions(1))
        .await
        .unwrap();
    // Either the send fails (and a retry works) or it lands in the new queue; never lost.
    let sent = match p.send(Message::new("q", "new")).await {
        Ok(s) => s,
        Err(_) => p.send(Message::new("q", "new")).await.unwrap(),
    };
    let mut r = reader(&ap, "q").await;
    assert_eq!(
        read_all(r.as_mut()).await,
        vec![(sent.offset, "new".to_string())]
    );
}

/// Concurrent commits of one group and partition in one process used to share a temp file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_never_fail_or_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let ap = open(dir.path(), KeyValue::new().with(keyvalue::CONSUMER_ID, "g")).await;
    ap.resource_manager()
        .await
        .unwrap()
        .create_queue("q", QueueConfig::with_partitions(1))
        .await
        .unwrap();
    let consumer = ap.create_streaming_consumer(KeyValue::new()).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..4i64 {
        let c = Arc::clone(&consumer);
        tasks.push(tokio::spawn(async move {
            for i in 0..300 {
                c.commit("q", 0, t * 1000 + i).await.unwrap();
                let v = c.committed("q", 0).await.unwrap().unwrap();
                assert!((0..4000).contains(&v));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// A corrupt record in a sealed segment used to throw away the messages decoded before it in
/// the same call, while the position had already moved past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_before_a_corrupt_record_are_delivered_then_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let ap = open(
        dir.path(),
        KeyValue::new().with(EMBEDDED_SEGMENT_BYTES, 4096),
    )
    .await;
    ap.resource_manager()
        .await
        .unwrap()
        .create_queue("q", QueueConfig::with_partitions(1))
        .await
        .unwrap();
    let p = ap.create_producer(KeyValue::new()).await.unwrap();
    p.start().await.unwrap();
    for i in 0..20 {
        p.send(Message::new("q", format!("m{i:02}-{}", "x".repeat(300))))
            .await
            .unwrap();
    }
    let seg = dir
        .path()
        .join("r/namespaces/default/q/p-0/00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let rec = bytes.len() / 12;
    bytes[rec * 5 + rec / 2] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let mut r = reader(&ap, "q").await;
    let good = r.poll_batch(100, Duration::from_millis(50)).await.unwrap();
    assert!(
        !good.is_empty(),
        "the records before the corrupt one are delivered"
    );
    assert_eq!(r.position(), good.len() as i64);
    let err = r
        .poll_batch(100, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is corrupt"), "{err}");
    assert_eq!(
        r.position(),
        good.len() as i64,
        "the position stays at the corrupt record"
    );
}

/// The same across processes: this process caches the tail, another process (`omstream
/// produce`) rolls the segments and retention deletes the cached one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_tail_after_another_processes_retention_never_loses_a_send() {
    let dir = tempfile::tempdir().unwrap();
    let (ap, p) = small_retained_queue(dir.path()).await;
    p.send(Message::new("q", "first")).await.unwrap();
    let lines: String = (0..40)
        .map(|i| format!("{i:04}{}\n", "x".repeat(1000)))
        .collect();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_omstream"))
        .args(["--url", "oms:embedded://localhost/r", "--data-dir"])
        .arg(dir.path())
        .args([
            "--attr",
            "EMBEDDED_SEGMENT_BYTES=4096",
            "produce",
            "q",
            "--batch",
            "1",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let sent = p.send(Message::new("q", "second")).await.unwrap();
    assert_eq!(
        sent.offset, 41,
        "offsets continue after the other process's 40"
    );
    let mut r = reader(&ap, "q").await;
    let all = read_all(r.as_mut()).await;
    assert_dense(&all);
    assert_eq!(
        all.last().map(|(o, b)| (*o, b.as_str())),
        Some((41, "second"))
    );
}
