//! End-to-end tests of the `omstream` binary on an embedded store in a temporary directory.
//!
//! Every child process is waited for with a deadline, so a hung command fails its test instead
//! of hanging the suite.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use omstream::oms::{Message, QueueDescription};

/// Longer than any command here needs on a loaded machine; only a hang reaches it.
const DEADLINE: Duration = Duration::from_secs(120);

/// What a finished command left.
#[derive(Debug)]
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// The stderr lines that start with `error:`.
    fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect()
    }
}

fn reader(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for `child` (its stdout and stderr piped) until [`DEADLINE`], killing it on timeout.
fn finish(mut child: Child, what: &str) -> Outcome {
    let stdout = reader(child.stdout.take().expect("stdout is piped"));
    let stderr = reader(child.stderr.take().expect("stderr is piped"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{what}` did not finish within {DEADLINE:?}; stderr: {}",
                stderr.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// A store in a temporary directory and the commands that use it.
struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// `omstream --data-dir <store> ARGS`, isolated from the caller's environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_omstream"));
        cmd.arg("--data-dir")
            .arg(self.dir.path())
            .args(args)
            .env_remove("OMSTREAM_URL")
            .env_remove("OMSTREAM_DATA_DIR")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs ARGS with `input` on stdin.
    fn run(&self, args: &[&str], input: &str) -> Outcome {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn omstream");
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = input.as_bytes().to_vec();
        // Written on a thread so that a child that stops reading early cannot block the test.
        let writer = thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let outcome = finish(child, &args.join(" "));
        let _ = writer.join();
        outcome
    }

    /// Runs ARGS, asserts success and returns stdout.
    fn ok(&self, args: &[&str], input: &str) -> String {
        let out = self.run(args, input);
        assert!(out.status.success(), "`{}` failed: {out:?}", args.join(" "));
        out.stdout
    }

    /// Runs ARGS, asserts it fails with `code` and exactly one `error:` line, returns that line.
    fn fails(&self, args: &[&str], input: &str, code: i32) -> String {
        let out = self.run(args, input);
        assert_eq!(
            out.status.code(),
            Some(code),
            "`{}`: {out:?}",
            args.join(" ")
        );
        let errors = out.error_lines();
        assert_eq!(
            errors.len(),
            1,
            "`{}` should print one error line: {out:?}",
            args.join(" ")
        );
        if code == 1 {
            // Runtime errors are that one line and nothing else.
            assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
        }
        errors[0].to_string()
    }

    /// `consume QUEUE --format json ARGS`, parsed.
    fn consume_json(&self, queue: &str, args: &[&str]) -> Vec<Message> {
        let mut argv = vec!["consume", queue, "--format", "json"];
        argv.extend_from_slice(args);
        self.ok(&argv, "")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON message per line"))
            .collect()
    }
}

fn body(m: &Message) -> &str {
    std::str::from_utf8(&m.data).expect("utf-8 body")
}

#[test]
fn queues_are_created_listed_described_and_deleted() {
    let s = Store::new();
    let out = s.ok(
        &[
            "queue",
            "create",
            "orders",
            "--partitions",
            "3",
            "--retention-age",
            "7d",
            "--retention-bytes",
            "1GiB",
        ],
        "",
    );
    assert_eq!(out, "created queue orders with 3 partitions\n");
    let err = s.fails(&["queue", "create", "orders"], "", 1);
    assert!(err.contains("1406"), "{err}");
    let out = s.ok(&["queue", "create", "orders", "--if-not-exists"], "");
    assert!(out.contains("exists already"), "{out}");
    s.ok(&["queue", "create", "audit"], "");
    assert_eq!(s.ok(&["queue", "list"], ""), "audit\norders\n");

    let json = s.ok(&["queue", "describe", "orders", "--json"], "");
    let d: QueueDescription =
        serde_json::from_str(&json).expect("describe --json is a QueueDescription");
    assert_eq!(d.name, "orders");
    assert_eq!(d.partitions.len(), 3);
    assert_eq!(
        d.config.retention.max_age,
        Some(Duration::from_secs(7 * 86_400))
    );
    assert_eq!(d.config.retention.max_bytes, Some(1 << 30));
    assert_eq!(d.message_count(), 0);
    let table = s.ok(&["queue", "describe", "orders"], "");
    assert!(
        table.contains("PARTITION") && table.contains("END OFFSET") && table.contains("1w"),
        "{table}"
    );

    s.ok(&["queue", "delete", "orders"], "");
    assert_eq!(s.ok(&["queue", "list"], ""), "audit\n");
    let err = s.fails(&["queue", "describe", "orders"], "", 1);
    assert!(err.contains("1404"), "{err}");
}

#[test]
fn namespaces_hold_queues() {
    let s = Store::new();
    s.ok(&["namespace", "create", "billing"], "");
    assert_eq!(s.ok(&["namespace", "list"], ""), "billing\ndefault\n");
    s.ok(&["queue", "create", "billing://invoices"], "");
    assert_eq!(
        s.ok(&["queue", "list", "--namespace", "billing"], ""),
        "billing://invoices\n"
    );
    s.ok(&["produce", "billing://invoices"], "i-1\n");
    assert_eq!(
        s.ok(&["consume", "billing://invoices", "--format", "raw"], ""),
        "i-1\n"
    );
    s.ok(&["namespace", "delete", "billing"], "");
    assert_eq!(s.ok(&["namespace", "list"], ""), "default\n");
}

#[test]
fn produced_lines_come_back_raw_and_as_json() {
    let s = Store::new();
    s.ok(&["queue", "create", "q"], "");
    let out = s.run(
        &[
            "produce",
            "q",
            "--key",
            "k1",
            "--property",
            "source=test",
            "--property",
            "n=1",
        ],
        "alpha\nbeta\r\n\ngamma",
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.starts_with("produced 4 messages to q in "),
        "{out:?}"
    );
    assert!(out.stderr.trim_end().ends_with(" msg/s)"), "{out:?}");

    assert_eq!(
        s.ok(&["consume", "q", "--format", "raw"], ""),
        "alpha\nbeta\n\ngamma\n"
    );
    let messages = s.consume_json("q", &[]);
    assert_eq!(
        messages.iter().map(body).collect::<Vec<_>>(),
        ["alpha", "beta", "", "gamma"]
    );
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m.offset(), Some(i as i64));
        assert_eq!(m.partition(), Some(0));
        assert_eq!(m.key(), Some("k1"));
        assert_eq!(m.destination(), "q");
        assert_eq!(m.properties.get_str("source"), Some("test"));
        assert_eq!(m.properties.get_str("n"), Some("1"));
        assert!(m.message_id().is_some());
    }
    // The JSON output is valid JSON input: copy the queue through a pipe.
    s.ok(&["queue", "create", "copy"], "");
    let json = s.ok(&["consume", "q"], "");
    s.ok(&["produce", "copy", "--format", "json"], &json);
    assert_eq!(
        s.ok(&["consume", "copy", "--format", "raw"], ""),
        "alpha\nbeta\n\ngamma\n"
    );
}

#[test]
fn json_input_sets_its_own_fields_and_files_work() {
    let s = Store::new();
    s.ok(&["queue", "create", "q", "--partitions", "2"], "");
    let file = s.dir.path().join("input.jsonl");
    std::fs::write(
        &file,
        "{\"data\":\"plain\"}\n\n{\"header\":{\"destination\":\"\"},\"extensionHeader\":{\"messageKey\":\"own\",\"partition\":0},\"properties\":{\"p\":\"mine\"},\"data\":{\"n\":1}}\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    s.ok(
        &[
            "produce",
            "q",
            "--file",
            path,
            "--format",
            "json",
            "--key",
            "flag",
            "--property",
            "p=flag",
            "--partition",
            "1",
        ],
        "",
    );
    let messages = s.consume_json("q", &[]);
    assert_eq!(messages.len(), 2);
    let plain = messages.iter().find(|m| body(m) == "plain").expect("plain");
    assert_eq!((plain.key(), plain.partition()), (Some("flag"), Some(1)));
    assert_eq!(plain.properties.get_str("p"), Some("flag"));
    let own = messages
        .iter()
        .find(|m| body(m) == r#"{"n":1}"#)
        .expect("own");
    assert_eq!((own.key(), own.partition()), (Some("own"), Some(0)));
    assert_eq!(own.properties.get_str("p"), Some("mine"));
    // Reading one partition, and pacing, work too.
    assert_eq!(
        s.ok(&["consume", "q", "--partition", "1", "--format", "raw"], ""),
        "plain\n"
    );
    s.ok(
        &["produce", "q", "--rate", "1000", "--batch", "2"],
        "r1\nr2\nr3\n",
    );
    assert_eq!(s.consume_json("q", &[]).len(), 5);
}

#[test]
fn keyed_messages_land_on_one_partition_in_order() {
    let s = Store::new();
    s.ok(&["queue", "create", "q", "--partitions", "4"], "");
    let input: String = (0..30)
        .map(|i| {
            format!(
                "{{\"extensionHeader\":{{\"messageKey\":\"key-{}\"}},\"data\":\"{i}\"}}\n",
                i % 3
            )
        })
        .collect();
    s.ok(
        &["produce", "q", "--format", "json", "--batch", "7"],
        &input,
    );
    let messages = s.consume_json("q", &[]);
    assert_eq!(messages.len(), 30);
    for key in ["key-0", "key-1", "key-2"] {
        let mine: Vec<&Message> = messages.iter().filter(|m| m.key() == Some(key)).collect();
        assert_eq!(mine.len(), 10, "{key}");
        assert!(
            mine.iter().all(|m| m.partition() == mine[0].partition()),
            "{key} spans partitions"
        );
        let bodies: Vec<i64> = mine.iter().map(|m| body(m).parse().unwrap()).collect();
        assert!(
            bodies.windows(2).all(|w| w[0] < w[1]),
            "{key} out of order: {bodies:?}"
        );
        let offsets: Vec<i64> = mine.iter().map(|m| m.offset().unwrap()).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{key}: {offsets:?}"
        );
    }
}

#[test]
fn from_offset_and_from_end() {
    let s = Store::new();
    s.ok(&["queue", "create", "q"], "");
    s.ok(&["produce", "q"], "m0\nm1\nm2\nm3\nm4\n");
    assert_eq!(
        s.ok(
            &["consume", "q", "--from", "offset:2", "--format", "raw"],
            ""
        ),
        "m2\nm3\nm4\n"
    );
    assert_eq!(
        s.ok(
            &["consume", "q", "--from", "offset:99", "--format", "raw"],
            ""
        ),
        ""
    );
    assert_eq!(
        s.ok(&["consume", "q", "--from", "end", "--format", "raw"], ""),
        ""
    );
    assert_eq!(
        s.ok(
            &[
                "consume",
                "q",
                "--from",
                "beginning",
                "--limit",
                "2",
                "--format",
                "raw"
            ],
            ""
        ),
        "m0\nm1\n"
    );
    let all = s.ok(
        &[
            "consume",
            "q",
            "--from",
            "time:2000-01-01T00:00:00Z",
            "--format",
            "raw",
        ],
        "",
    );
    assert_eq!(all, "m0\nm1\nm2\nm3\nm4\n");
    assert_eq!(
        s.ok(
            &[
                "consume",
                "q",
                "--from",
                "time:2999-01-01T00:00:00Z",
                "--format",
                "raw"
            ],
            ""
        ),
        ""
    );
}

#[test]
fn a_group_commits_so_the_next_run_prints_only_new_messages() {
    let s = Store::new();
    s.ok(&["queue", "create", "q", "--partitions", "2"], "");
    s.ok(&["produce", "q"], "a\nb\nc\n");
    let first = s.ok(&["consume", "q", "--group", "g", "--format", "raw"], "");
    assert_eq!(first.lines().count(), 3);
    assert_eq!(
        s.ok(&["consume", "q", "--group", "g", "--format", "raw"], ""),
        ""
    );
    s.ok(&["produce", "q"], "d\ne\n");
    let second = s.ok(&["consume", "q", "--group", "g", "--format", "raw"], "");
    let mut lines: Vec<&str> = second.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["d", "e"]);
    // Another group has its own offsets; an explicit --from overrides the committed one.
    assert_eq!(
        s.ok(&["consume", "q", "--group", "other", "--format", "raw"], "")
            .lines()
            .count(),
        5
    );
    assert_eq!(
        s.ok(
            &[
                "consume",
                "q",
                "--group",
                "g",
                "--from",
                "beginning",
                "--format",
                "raw"
            ],
            ""
        )
        .lines()
        .count(),
        5
    );
    // --limit commits only what was printed.
    s.ok(&["queue", "create", "one"], "");
    s.ok(&["produce", "one"], "1\n2\n3\n4\n5\n");
    assert_eq!(
        s.ok(
            &["consume", "one", "--group", "h", "--limit", "2", "--format", "raw"],
            ""
        ),
        "1\n2\n"
    );
    assert_eq!(
        s.ok(&["consume", "one", "--group", "h", "--format", "raw"], ""),
        "3\n4\n5\n"
    );
    // --from end with a group records the end, so the next run sees only later messages.
    assert_eq!(
        s.ok(
            &["consume", "one", "--group", "late", "--from", "end", "--format", "raw"],
            ""
        ),
        ""
    );
    s.ok(&["produce", "one"], "6\n");
    assert_eq!(
        s.ok(
            &["consume", "one", "--group", "late", "--format", "raw"],
            ""
        ),
        "6\n"
    );
}

#[test]
fn a_follower_sees_messages_another_process_produces() {
    let s = Store::new();
    s.ok(&["queue", "create", "live", "--partitions", "2"], "");
    let follower = s
        .command(&[
            "consume", "live", "--follow", "--limit", "5", "--format", "raw",
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn the follower");
    // Give the follower a moment to reach the (empty) end first; the test does not depend on
    // it, since the follower starts from the beginning either way.
    thread::sleep(Duration::from_millis(500));
    s.ok(&["produce", "live"], "one\ntwo\nthree\nfour\nfive\n");
    let out = finish(follower, "consume --follow");
    assert!(out.status.success(), "{out:?}");
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["five", "four", "one", "three", "two"]);
}

#[test]
fn a_closed_stdout_ends_consume_quietly() {
    let s = Store::new();
    s.ok(&["queue", "create", "big"], "");
    let line = "x".repeat(100);
    let input: String = (0..20_000).map(|i| format!("{i}{line}\n")).collect();
    s.ok(&["produce", "big"], &input);
    let mut child = s
        .command(&["consume", "big", "--format", "raw"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = finish_with_stdout_closed(child);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stderr, "");
}

/// [`finish`] for a child whose stdout the test already took.
fn finish_with_stdout_closed(mut child: Child) -> Outcome {
    child.stdout = None;
    let stderr = reader(child.stderr.take().unwrap());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("consume did not end after its stdout closed");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        status,
        stdout: String::new(),
        stderr: stderr.join().unwrap(),
    }
}

#[test]
fn errors_are_one_line_and_a_non_zero_exit() {
    let s = Store::new();
    s.ok(&["queue", "create", "q"], "");

    let err = s.fails(&["--url", "oms:nope", "queue", "list"], "", 1);
    assert!(
        err.starts_with("error: [OMS 10001 Illegal Access Point]"),
        "{err}"
    );
    let err = s.fails(
        &["queue", "list", "--url", "oms:kafka://localhost/default"],
        "",
        1,
    );
    assert!(
        err.contains("10000") && err.contains("no driver 'kafka'"),
        "{err}"
    );

    for args in [&["consume", "nope"][..], &["produce", "nope"]] {
        let err = s.fails(args, "x\n", 1);
        assert!(
            err.contains("1404") && err.contains("omstream queue create nope"),
            "{err}"
        );
    }

    let err = s.fails(&["consume", "q", "--from", "sideways"], "", 2);
    assert!(err.contains("offset:N"), "{err}");
    let err = s.fails(&["consume", "q", "--from", "committed"], "", 1);
    assert!(err.contains("--group"), "{err}");
    let err = s.fails(&["consume", "q", "--partition", "3"], "", 1);
    assert!(err.contains("partition 3 does not exist"), "{err}");

    let err = s.fails(&["--attr", "EMBEDDED_FSYNC", "queue", "list"], "", 2);
    assert!(err.contains("KEY=VALUE"), "{err}");
    let err = s.fails(&["--attr", "EMBEDDED_FSINC=always", "queue", "list"], "", 1);
    assert!(
        err.contains("1418") && err.contains("EMBEDDED_FSINC"),
        "{err}"
    );
    let err = s.fails(&["queue", "create", "r", "--retention-age", "7"], "", 2);
    assert!(err.contains("90s, 30m, 12h, 7d"), "{err}");
}

#[test]
fn a_malformed_json_line_stops_and_keeps_what_was_sent() {
    let s = Store::new();
    s.ok(&["queue", "create", "q"], "");
    let input = "{\"data\":\"one\"}\n{\"data\":\"two\"}\n{\"data\": oops}\n{\"data\":\"four\"}\n";
    let err = s.fails(&["produce", "q", "--format", "json"], input, 1);
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("2 messages"), "{err}");
    assert_eq!(s.ok(&["consume", "q", "--format", "raw"], ""), "one\ntwo\n");
}

/// A state directory with the checkpoints of two runs of a small job.
fn checkpointed_job_dir() -> tempfile::TempDir {
    use omstream::core::checkpoint::CheckpointConfig;
    use omstream::core::runtime::{JobConfig, StreamEnv};
    let state = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for _ in 0..2 {
        let config = CheckpointConfig::new(state.path()).with_interval(None);
        let env = StreamEnv::new(JobConfig::named("numbers").with_checkpoints(config));
        env.from_iter("numbers", 0..100u32).collect();
        runtime.block_on(env.execute()).expect("the job runs");
    }
    state
}

#[test]
fn checkpoints_are_listed_shown_and_chosen() {
    let s = Store::new();
    let state = checkpointed_job_dir();
    let dir = state.path().display().to_string();
    let list = s.ok(&["checkpoints", "list", "--state-dir", &dir], "");
    assert!(list.starts_with("job 'numbers' in "), "{list}");
    assert!(list.contains("EPOCH") && list.contains("final"), "{list}");
    let epochs: Vec<u64> = serde_json::from_str::<Vec<serde_json::Value>>(
        &s.ok(&["checkpoints", "list", "--state-dir", &dir, "--json"], ""),
    )
    .expect("a JSON array")
    .iter()
    .map(|r| r["epoch"].as_u64().expect("an epoch"))
    .collect();
    assert_eq!(epochs.len(), 2, "one final checkpoint per run: {epochs:?}");
    assert!(epochs[0] > epochs[1], "newest first");
    let older = epochs[1].to_string();
    let shown = s.ok(&["checkpoints", "show", "--state-dir", &dir, &older], "");
    assert!(
        shown.contains(&format!("checkpoint {older} of job 'numbers' (final)")),
        "{shown}"
    );
    let chosen = s.ok(&["checkpoints", "use", "--state-dir", &dir, &older], "");
    assert!(
        chosen.contains(&format!("restores checkpoint {older}")),
        "{chosen}"
    );
    let list = s.ok(&["checkpoints", "list", "--state-dir", &dir], "");
    assert!(
        list.contains(&format!("the next start restores checkpoint {older}")),
        "{list}"
    );

    let err = s.fails(&["checkpoints", "use", "--state-dir", &dir, "999"], "", 1);
    assert!(
        err.contains("no checkpoint 999") && err.contains("checkpoints list"),
        "{err}"
    );
    let err = s.fails(
        &["checkpoints", "list", "--state-dir", "/nonexistent/state"],
        "",
        1,
    );
    assert!(err.contains("/nonexistent/state/job.json"), "{err}");
}
