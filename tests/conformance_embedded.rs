//! The driver conformance suite against the embedded driver, one test per check.

use std::sync::Arc;
use std::time::Duration;

use omstream_core::oms::conformance::{Conformance, Outcome};
use omstream_core::oms::embedded::{
    EMBEDDED_ACK_TIMEOUT_MS, EMBEDDED_DIR, EMBEDDED_MAX_MESSAGE_BYTES,
};
use omstream_core::oms::{connect, KeyValue};

async fn suite(dir: &tempfile::TempDir) -> Conformance {
    let attrs = KeyValue::new()
        .with(EMBEDDED_DIR, dir.path().display())
        .with(EMBEDDED_MAX_MESSAGE_BYTES, 1 << 20);
    let ap = connect("oms:embedded://localhost/conformance", attrs)
        .await
        .expect("connect");
    let mut suite = Conformance::new(Arc::clone(&ap));
    suite.consumer_attrs = KeyValue::new().with(EMBEDDED_ACK_TIMEOUT_MS, 300);
    suite.redelivery_wait = Duration::from_millis(300);
    suite.max_body = Some(1 << 20);
    suite
}

macro_rules! checks {
    ($($name:ident),+ $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let dir = tempfile::tempdir().unwrap();
            let outcome = suite(&dir).await.$name().await;
            // The embedded driver supports everything the suite checks.
            assert_eq!(outcome, Outcome::Passed);
        }
    )+};
}

checks!(
    send_and_receive,
    batch_and_oneway,
    keyed_partitions_keep_order,
    explicit_partition,
    seek_by_offset,
    seek_by_timestamp,
    group_offsets,
    pull_ack_and_redelivery,
    push_consumer,
    transactions,
    delay_and_expiry,
    interceptors,
    lifecycle,
    resource_manager,
    error_codes,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_reports_every_check() {
    let dir = tempfile::tempdir().unwrap();
    let report = suite(&dir).await.run_all().await;
    assert_eq!(report.len(), 15);
    assert!(
        report.iter().all(|(_, o)| *o == Outcome::Passed),
        "{report:?}"
    );
}
