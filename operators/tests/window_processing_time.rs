//! Processing-time windows under tokio's paused clock: a scripted source emits batches at
//! fixed processing times, so which window a record lands in, and when each window fires, are
//! deterministic. Nothing sleeps for real.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use omstream_core::runtime::{BoxError, Source, SourceContext, SourceOutput};
use omstream_operators::prelude::*;
use tokio::time::Instant;

/// Window boundaries the script is aligned to.
const ALIGN: i64 = 10_000;

/// Emits each batch once processing time reaches `start + offset`, where `start` is the first
/// multiple of `ALIGN` after the job started (published in `started`).
struct ScriptedSource {
    script: VecDeque<(i64, Vec<&'static str>)>,
    start: i64,
    started: Arc<Mutex<Option<(i64, Instant)>>>,
}

#[async_trait]
impl Source<&'static str> for ScriptedSource {
    async fn open(&mut self, ctx: &SourceContext) -> Result<(), BoxError> {
        self.start = (ctx.clock.now().div_euclid(ALIGN) + 1) * ALIGN;
        let instant = ctx.clock.instant_of(self.start);
        *self.started.lock().unwrap() = Some((self.start, instant));
        Ok(())
    }

    /// Cancel-safe: a poll dropped while sleeping leaves the script as it was.
    async fn poll(&mut self, ctx: &SourceContext) -> Result<SourceOutput<&'static str>, BoxError> {
        let Some((offset, _)) = self.script.front() else {
            return Ok(SourceOutput::Finished);
        };
        tokio::time::sleep_until(ctx.clock.instant_of(self.start + offset)).await;
        let (_, words) = self.script.pop_front().expect("peeked");
        // Event times far from processing time: processing-time windows must ignore them.
        Ok(SourceOutput::Data(
            words.into_iter().map(|w| Record::new(42, w)).collect(),
        ))
    }
}

type Started = Arc<Mutex<Option<(i64, Instant)>>>;

fn scripted(
    env: &StreamEnv,
    script: Vec<(i64, Vec<&'static str>)>,
) -> (Stream<&'static str>, Started) {
    let started: Started = Arc::default();
    let shared = started.clone();
    let stream = env.add_source("script", move |_| {
        Box::new(ScriptedSource {
            script: script.clone().into(),
            start: 0,
            started: shared.clone(),
        }) as Box<dyn Source<&'static str>>
    });
    (stream, started)
}

/// A result, with the window relative to the script's start and when (after the start) it was
/// emitted.
#[derive(Debug, Clone, PartialEq)]
struct Fired {
    key: String,
    window: (i64, i64),
    count: u64,
    at: Duration,
}

fn fired(
    results: &WindowResults<String, u64, &'static str>,
    started: Started,
) -> Arc<Mutex<Vec<Fired>>> {
    let fired: Arc<Mutex<Vec<Fired>>> = Arc::default();
    let sink = fired.clone();
    results.for_each(move |record| {
        let (start, instant) = started.lock().unwrap().expect("source opened");
        let w = record.value;
        sink.lock().unwrap().push(Fired {
            key: w.key,
            window: (w.window.start - start, w.window.end - start),
            count: w.value,
            at: Instant::now() - instant,
        });
    });
    fired
}

fn at(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn script() -> Vec<(i64, Vec<&'static str>)> {
    vec![
        (100, vec!["a", "b", "a"]),
        (999, vec!["a"]),
        (1_000, vec!["b"]),
        (2_500, vec!["a"]),
        // The input ends inside the window [3000, 4000).
        (3_200, vec!["a", "a"]),
    ]
}

#[tokio::test(start_paused = true)]
async fn tumbling_windows_fire_when_the_clock_passes_their_end() {
    // One source subtask; at parallelism 2 the window reads it through channels, in its own
    // tasks, which wake up on their own.
    for parallelism in [1, 2] {
        let env = StreamEnv::default();
        let (words, started) = scripted(&env, script());
        let results = words
            .key_by(|w: &&'static str| w.to_string())
            .window(TimeWindows::tumbling(Duration::from_secs(1)))
            .processing_time()
            .count()
            .with_parallelism(parallelism);
        let fired = fired(&results, started);
        env.execute().await.unwrap();
        let mut fired = fired.lock().unwrap().clone();
        fired.sort_by_key(|f| (f.window, f.key.clone()));
        let f = |key: &str, window: (i64, i64), count, ms| Fired {
            key: key.to_string(),
            window,
            count,
            at: at(ms),
        };
        assert_eq!(
            fired,
            vec![
                // A record arriving in the last millisecond of a window is still in it.
                f("a", (0, 1_000), 3, 1_000),
                f("b", (0, 1_000), 1, 1_000),
                f("b", (1_000, 2_000), 1, 2_000),
                f("a", (2_000, 3_000), 1, 3_000),
                // Flushed when the input ended, before the window's end.
                f("a", (3_000, 4_000), 2, 3_200),
            ],
            "parallelism {parallelism}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn sliding_windows_fire_every_slide() {
    let env = StreamEnv::default();
    let (words, started) = scripted(&env, script());
    let results = words
        .key_by(|w: &&'static str| w.to_string())
        .window(TimeWindows::sliding(
            Duration::from_secs(2),
            Duration::from_secs(1),
        ))
        .processing_time()
        .count();
    let fired = fired(&results, started);
    env.execute().await.unwrap();
    let a: Vec<((i64, i64), u64, Duration)> = fired
        .lock()
        .unwrap()
        .iter()
        .filter(|f| f.key == "a")
        .map(|f| (f.window, f.count, f.at))
        .collect();
    assert_eq!(
        a,
        vec![
            ((-1_000, 1_000), 3, at(1_000)),
            ((0, 2_000), 3, at(2_000)),
            ((1_000, 3_000), 1, at(3_000)),
            // At the end of input, every open window fires: [2000, 4000) and [3000, 5000).
            ((2_000, 4_000), 3, at(3_200)),
            ((3_000, 5_000), 2, at(3_200)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn sessions_close_after_the_gap_of_arrival_time() {
    let env = StreamEnv::default();
    let (words, started) = scripted(&env, script());
    let results = words
        .key_by(|w: &&'static str| w.to_string())
        .window(TimeWindows::session(Duration::from_millis(1_000)))
        .processing_time()
        .count();
    let fired = fired(&results, started);
    env.execute().await.unwrap();
    let mut fired = fired.lock().unwrap().clone();
    fired.sort_by_key(|f| (f.key.clone(), f.window));
    let f = |key: &str, window: (i64, i64), count, ms| Fired {
        key: key.to_string(),
        window,
        count,
        at: at(ms),
    };
    assert_eq!(
        fired,
        vec![
            // a: 100, 100, 999 are one session (ending 1999); 2500 is more than a gap later.
            f("a", (100, 1_999), 3, 1_999),
            f("a", (2_500, 4_200), 3, 3_200),
            // b: 100 and 1000 are 900 ms apart: one session.
            f("b", (100, 2_000), 2, 2_000),
        ]
    );
}
