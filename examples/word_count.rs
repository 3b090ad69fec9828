//! Word count over a queue: lines of text in, counts per word and 10-second window out.
//!
//! ```sh
//! cargo run --release --example word_count
//! ```
//!
//! It creates the queues `lines` (2 partitions) and `word-counts` (2 partitions) in the default
//! embedded store, sends a few thousand lines of text, then runs a job that reads every line
//! (plain UTF-8 bodies; a body that is not UTF-8 goes to the dead-letter queue `lines.dlq`
//! instead of stopping the job), splits it into words, counts each word per 10-second window
//! of the lines' send time (`bornTimestamp`), writes `{"word":..,"count":..}` to `word-counts`
//! and prints the ten most frequent words.

use std::time::Duration;

use omstream::core::connectors::{DeadLetter, Decoder, OmsSinkConfig, OmsSourceConfig};
use omstream::oms::{self, KeyValue, Message, QueueConfig, ServiceLifecycle};
use omstream::operators::prelude::*;
use serde::Serialize;

const TEXT: &str =
    "The quick brown fox jumps over the lazy dog. A stream is a queue that never ends; \
a window is the part of it we can count. Watermarks tell the job how far event time has come, \
and the job tells the queue how far it has read.";

#[derive(Debug, Clone, Serialize)]
struct WordCount {
    word: String,
    count: u64,
    window_start: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("OMSTREAM_URL")
        .unwrap_or_else(|_| "oms:embedded://localhost/default".to_string());
    let ap = oms::connect(&url, KeyValue::new()).await?;
    let queues = ap.resource_manager().await?;
    for queue in ["lines", "lines.dlq", "word-counts"] {
        if queues
            .ensure_queue(queue, QueueConfig::with_partitions(2))
            .await?
        {
            println!("created queue '{queue}'");
        }
    }

    // Some text, one sentence per message, and one message that is not text at all.
    let producer = ap.create_producer(KeyValue::new()).await?;
    producer.start().await?;
    let sentences: Vec<&str> = TEXT.split_inclusive(['.', ';']).collect();
    let mut lines: Vec<Message> = (0..3_000)
        .map(|i| Message::new("lines", sentences[i % sentences.len()].trim().to_string()))
        .collect();
    lines.push(Message::new("lines", vec![0xff, 0xfe, 0x00]));
    producer.send_batch(lines).await?;
    producer.stop().await?;

    let env = StreamEnv::new(JobConfig::named("word-count"));
    let source = OmsSourceConfig::with_decoder(ap.clone(), "lines", Decoder::utf8())
        .dead_letter(DeadLetter::Queue("lines.dlq".to_string()))
        .bounded(true);
    let rejected = source.metrics();
    let counts = env
        .add_oms_source(source)?
        .flat_map(|line: String| {
            line.split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
        })
        .key_by(|word: &String| word.clone())
        .window(TimeWindows::tumbling(Duration::from_secs(10)))
        .count()
        .map(|w: Windowed<String, u64>| WordCount {
            word: w.key,
            count: w.value,
            window_start: w.window.start,
        });
    counts.add_oms_sink(
        OmsSinkConfig::new(ap.clone(), "word-counts").key(|c: &WordCount| c.word.clone()),
    )?;
    let collected = counts.collect();
    env.execute().await?;

    println!(
        "counted {} words-per-window; {} message(s) went to 'lines.dlq'",
        collected.len(),
        rejected.dead_lettered()
    );
    let mut totals = std::collections::BTreeMap::<String, u64>::new();
    for c in collected.values() {
        *totals.entry(c.word).or_default() += c.count;
    }
    let mut top: Vec<(String, u64)> = totals.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (word, count) in top.iter().take(10) {
        println!("{count:>8}  {word}");
    }
    Ok(())
}
