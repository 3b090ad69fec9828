//! `omstream produce`: send lines of stdin (or a file) to a queue.

use std::fs::File;
use std::io::Read;
use std::time::Instant;

use anyhow::{bail, Context};
use omstream::oms::{KeyValue, Message, Producer, ServiceLifecycle};
use tokio::sync::mpsc;

use super::access::connect;
use super::args::{AccessArgs, ProduceArgs};
use super::input::{spawn_reader, InputError, InputItem, LineParser};
use super::pacer::Pacer;
use super::progress::Progress;

/// Runs `produce`.
pub(crate) async fn run(access: &AccessArgs, args: ProduceArgs) -> anyhow::Result<()> {
    let ap = connect(access).await?;
    // Check the queue (and partition) before reading any input: a typo should fail at once,
    // not after the user has typed or piped in their messages.
    let description = ap
        .resource_manager()
        .await?
        .describe_queue(&args.queue)
        .await?;
    if let Some(p) = args.partition {
        let count = description.partitions.len();
        if usize::try_from(p).map_or(true, |p| p >= count) {
            bail!(
                "queue '{}' has partitions 0 to {}; partition {p} does not exist",
                args.queue,
                count.saturating_sub(1)
            );
        }
    }
    let (source, source_name): (Box<dyn Read + Send>, String) = match &args.file {
        Some(path) => {
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            (Box::new(file), path.display().to_string())
        }
        None => (Box::new(std::io::stdin()), "stdin".to_string()),
    };

    let producer = ap.create_producer(KeyValue::new()).await?;
    producer.start().await?;
    let batch = usize::try_from(args.batch).unwrap_or(usize::MAX);
    let parser = LineParser {
        format: args.format,
        queue: args.queue.clone(),
        key: args.key.clone(),
        properties: args.properties.clone(),
        partition: args.partition,
    };
    // A few batches in flight: the reader stays ahead of the sender without buffering the input.
    let (tx, rx) = mpsc::channel(4);
    spawn_reader(source, parser, batch, tx);

    let started = Instant::now();
    let mut sender = Sender {
        producer: &producer,
        pacer: args.rate.map(Pacer::new),
        sent: 0,
        progress: Progress::new("sent"),
    };
    let result = sender.run(rx, batch, &args.queue, &source_name).await;
    let sent = sender.sent;
    drop(sender);
    let stopped = producer.stop().await;
    result?;
    stopped?;

    let secs = started.elapsed().as_secs_f64();
    let rate = if secs > 0.0 { sent as f64 / secs } else { 0.0 };
    eprintln!(
        "produced {sent} messages to {} in {secs:.2}s ({rate:.0} msg/s)",
        args.queue
    );
    Ok(())
}

/// Sends the batches the reader thread hands over, counting what was sent.
struct Sender<'a> {
    producer: &'a Producer,
    pacer: Option<Pacer>,
    sent: u64,
    progress: Progress,
}

impl Sender<'_> {
    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<InputItem>,
        batch: usize,
        queue: &str,
        source: &str,
    ) -> anyhow::Result<()> {
        let chunk = self.pacer.as_ref().map_or(batch, |p| p.chunk(batch));
        while let Some(item) = rx.recv().await {
            match item {
                Ok(mut messages) => {
                    while !messages.is_empty() {
                        let rest = if messages.len() > chunk { messages.split_off(chunk) } else { Vec::new() };
                        self.send(messages, queue).await?;
                        messages = rest;
                    }
                }
                Err(InputError::BadLine { line, reason }) => bail!(
                    "line {line} of {source} is not a message ({reason}); {} messages before it were already sent to {queue}",
                    self.sent
                ),
                Err(InputError::Read(err)) => {
                    return Err(anyhow::Error::new(err)
                        .context(format!("reading {source} failed after {} messages were sent to {queue}", self.sent)))
                }
            }
        }
        Ok(())
    }

    async fn send(&mut self, messages: Vec<Message>, queue: &str) -> anyhow::Result<()> {
        if let Some(pacer) = &mut self.pacer {
            pacer.wait(messages.len()).await;
        }
        let n = messages.len() as u64;
        match self.producer.send_batch(messages).await {
            Ok(_) => {
                self.sent += n;
                self.progress.set(self.sent);
                Ok(())
            }
            // The OMS error says what went wrong; add how far we got only when it matters.
            Err(err) if self.sent == 0 => Err(err.into()),
            Err(err) => Err(anyhow::Error::new(err).context(format!(
                "sending to {queue} stopped after {} messages were sent",
                self.sent
            ))),
        }
    }
}
