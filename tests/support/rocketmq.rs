//! The RocketMQ name server and broker the RocketMQ tests run against: the one at
//! `OMSTREAM_ROCKETMQ_URL` when set, else one on 127.0.0.1:9876, started with
//! `scripts/rocketmq.sh start` when nothing listens there (it installs the binaries when they
//! are missing, which takes about 20 minutes once). It keeps running after the tests; stop it
//! with `scripts/rocketmq.sh stop`.

use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::Duration;

/// The access point URL of the test broker, started if need be.
pub(crate) fn url() -> String {
    static STARTED: OnceLock<String> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            if let Ok(url) = std::env::var("OMSTREAM_ROCKETMQ_URL") {
                return url;
            }
            let listening = || {
                TcpStream::connect_timeout(
                    &"127.0.0.1:9876".parse().expect("an address"),
                    Duration::from_millis(500),
                )
                .is_ok()
            };
            if !listening() {
                let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rocketmq.sh");
                let status = std::process::Command::new("bash")
                    .args([script, "start"])
                    .status()
                    .expect("run scripts/rocketmq.sh");
                assert!(
                    status.success(),
                    "scripts/rocketmq.sh start failed; see its output above"
                );
            }
            "oms:rocketmq://127.0.0.1:9876/default".to_string()
        })
        .clone()
}
