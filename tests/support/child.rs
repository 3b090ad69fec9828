//! Jobs in a child process, for tests that SIGKILL them: the test binary runs itself again on
//! one ignored test, `child_job`, and passes what the run needs in [`CHILD_SPEC`] as fields
//! separated by `|`. The child logs to its stderr and prints `DONE` when its job ended.

use std::future::Future;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

/// The environment variable that holds a child's fields.
pub(crate) const CHILD_SPEC: &str = "OMSTREAM_TEST_CHILD";

/// The environment variable that sets the children's log filter. When set, the tests that
/// follow a child also echo its lines (shown with `--nocapture`).
pub(crate) const CHILD_LOG: &str = "OMSTREAM_TEST_LOG";

/// In the `child_job` test: when this process is a child, sets up its log (filter
/// [`CHILD_LOG`], else `default_log`), runs `job` with the spec's `N` fields on a new runtime,
/// and prints `DONE`. In a normal test run, returns at once.
pub(crate) fn run_as_child<const N: usize, F, Fut>(default_log: &str, job: F)
where
    F: FnOnce([String; N]) -> Fut,
    Fut: Future<Output = ()>,
{
    let Ok(spec) = std::env::var(CHILD_SPEC) else {
        return;
    };
    let fields: Vec<String> = spec.split('|').map(str::to_string).collect();
    let fields: [String; N] = fields
        .try_into()
        .unwrap_or_else(|_| panic!("the child spec '{spec}' does not have {N} fields"));
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var(CHILD_LOG).unwrap_or_else(|_| default_log.to_string()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(job(fields));
    println!("DONE");
}

/// Starts a child that runs `child_job` with `fields`, its stdout and stderr piped.
pub(crate) fn spawn_child(fields: &[&str]) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_job",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_SPEC, fields.join("|"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Hands each line of the child's log to `on_line`, on a thread of its own, which ends with
/// the child.
pub(crate) fn follow(
    child: &mut Child,
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> JoinHandle<()> {
    let stderr = child.stderr.take().unwrap();
    let echo = std::env::var_os(CHILD_LOG).is_some();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if echo {
                eprintln!("child: {line}");
            }
            on_line(&line);
        }
    })
}

/// Waits for the child to end, and fails unless it ended well and printed `DONE`.
pub(crate) fn wait_done(mut child: Child, what: &str) {
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success() && stdout.contains("DONE"),
        "{what} failed: {status:?} {stdout}"
    );
}
