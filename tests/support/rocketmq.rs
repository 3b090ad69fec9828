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

/// A name server and broker of one test's own, on ports no other test uses, for fault tests
/// that kill and restart the broker. Started with `scripts/rocketmq.sh` (data in a temporary
/// directory); stopped when dropped.
pub(crate) struct PrivateBroker {
    run: tempfile::TempDir,
    namesrv_port: u16,
    broker_port: u16,
}

impl PrivateBroker {
    /// Starts a name server on `namesrv_port` and a broker on `broker_port` (which also takes
    /// `broker_port + 1` for HA).
    pub(crate) fn start(namesrv_port: u16, broker_port: u16) -> Self {
        let broker = PrivateBroker {
            run: tempfile::tempdir().expect("a temporary directory"),
            namesrv_port,
            broker_port,
        };
        broker.script("start");
        broker
    }

    /// The access point URL.
    pub(crate) fn url(&self) -> String {
        format!("oms:rocketmq://127.0.0.1:{}/default", self.namesrv_port)
    }

    /// The name server's address, as errors and logs name it.
    pub(crate) fn name_server(&self) -> String {
        format!("127.0.0.1:{}", self.namesrv_port)
    }

    /// Kills the broker with SIGKILL (the name server keeps running).
    pub(crate) fn kill_broker(&self) {
        self.script("kill-broker");
    }

    /// Starts the broker again on its data.
    pub(crate) fn restart_broker(&self) {
        self.script("start-broker");
    }

    fn run_script(&self, command: &str) -> bool {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rocketmq.sh");
        std::process::Command::new("bash")
            .args([script, command])
            .env("ROCKETMQ_RUN", self.run.path())
            .env("ROCKETMQ_NAMESRV_PORT", self.namesrv_port.to_string())
            .env("ROCKETMQ_BROKER_PORT", self.broker_port.to_string())
            .status()
            .is_ok_and(|status| status.success())
    }

    fn script(&self, command: &str) {
        assert!(
            self.run_script(command),
            "scripts/rocketmq.sh {command} failed; see its output above and the logs in {}",
            self.run.path().display()
        );
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // Not asserted: a panic while a failed test unwinds would abort the test binary.
        self.run_script("stop");
    }
}
