//! `omstream consume`: print the messages of a queue, optionally following it and committing a
//! consumer group's offsets.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use omstream::oms::{
    keyvalue, KeyValue, Message, OmsError, PartitionReader, SeekPosition, StreamingConsumer,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::access::connect;
use super::args::{AccessArgs, ConsumeArgs, OutputFormat};
use super::shutdown::Shutdown;
use super::start::StartFrom;

/// The most messages one poll of a partition returns.
const BATCH: usize = 1000;
/// How long one poll waits for a message; only bounds how often a quiet reader loops.
const POLL: Duration = Duration::from_secs(1);

/// Messages read from one partition, in order, and the offset to commit once they are printed.
#[derive(Debug)]
struct Chunk {
    partition: i32,
    messages: Vec<Message>,
    position: i64,
}

/// Runs `consume`.
pub(crate) async fn run(access: &AccessArgs, args: ConsumeArgs) -> anyhow::Result<()> {
    let from = match (args.from, &args.group) {
        (Some(StartFrom::Committed), None) => {
            bail!("--from committed needs --group: committed offsets belong to a consumer group")
        }
        (Some(from), _) => from,
        (None, Some(_)) => StartFrom::Committed,
        (None, None) => StartFrom::Beginning,
    };
    let ap = connect(access).await?;
    let mut attrs = KeyValue::new();
    if let Some(group) = &args.group {
        attrs.put(keyvalue::CONSUMER_ID, group);
    }
    let consumer = ap.create_streaming_consumer(attrs).await?;
    consumer.start().await?;
    // Listen before reading, so that Ctrl-C during a long first batch still commits.
    let mut shutdown = Shutdown::listen()?;

    let queue = args.queue.as_str();
    let all: Vec<i32> = consumer
        .partitions(queue)
        .await?
        .into_iter()
        .map(|m| m.partition_id)
        .collect();
    let partitions = match args.partition {
        Some(p) if all.contains(&p) => vec![p],
        Some(p) => bail!(
            "queue '{queue}' has partitions 0 to {}; partition {p} does not exist",
            all.len().saturating_sub(1)
        ),
        None => all,
    };

    let mut offsets = Offsets::new(Arc::clone(&consumer), queue, args.group.is_some());
    let (tx, rx) = mpsc::channel(partitions.len().max(1) * 2);
    let mut readers = JoinSet::new();
    for p in partitions {
        // Without --follow, stop at the end as it is now: later messages are for the next run.
        let end = if args.follow {
            None
        } else {
            Some(consumer.offset_range(queue, p).await?.1)
        };
        let committed = if args.group.is_some() {
            consumer.committed(queue, p).await?
        } else {
            None
        };
        let position = seek_position(consumer.as_ref(), queue, p, from, committed).await?;
        let reader = consumer.open(queue, p, position).await?;
        let start = end.map_or(reader.position(), |end| reader.position().min(end));
        offsets.start(p, start, committed);
        readers.spawn(read_partition(reader, end, tx.clone()));
    }
    drop(tx);

    let result = print_messages(rx, &mut shutdown, &mut offsets, args.format, args.limit).await;
    // The readers may be waiting for messages that will never be printed.
    readers.abort_all();
    // Commit on every exit, errors included: what was printed stays consumed.
    let committed = offsets.commit().await;
    // Stopping only marks the consumer stopped; a failure there cannot lose anything.
    let _ = consumer.stop().await;
    result?;
    committed
}

/// The position to open partition `p` at.
async fn seek_position(
    consumer: &dyn StreamingConsumer,
    queue: &str,
    p: i32,
    from: StartFrom,
    committed: Option<i64>,
) -> anyhow::Result<SeekPosition> {
    Ok(match from {
        StartFrom::Beginning => SeekPosition::Beginning,
        StartFrom::End => SeekPosition::End,
        StartFrom::Offset(n) => SeekPosition::Offset(n),
        StartFrom::Committed => committed.map_or(SeekPosition::Beginning, SeekPosition::Offset),
        // Resolved to an offset here rather than with `SeekPosition::Timestamp`: the reader's
        // position() does not move past the records a timestamp seek skips, and the end check
        // and the commits rely on it.
        StartFrom::Time(ms) => consumer
            .offset_for_timestamp(queue, p, ms)
            .await?
            .map_or(SeekPosition::End, SeekPosition::Offset),
    })
}

/// Reads one partition into `tx` until `end` (or forever), in order.
async fn read_partition(
    mut reader: Box<dyn PartitionReader>,
    end: Option<i64>,
    tx: mpsc::Sender<Result<Chunk, OmsError>>,
) {
    let partition = reader.partition();
    let mut sent_position = reader.position();
    loop {
        if end.is_some_and(|end| reader.position() >= end) {
            return;
        }
        let mut messages = match reader.poll_batch(BATCH, POLL).await {
            Ok(messages) => messages,
            Err(err) => {
                let _ = tx.send(Err(err)).await;
                return;
            }
        };
        let mut position = reader.position();
        if let Some(end) = end {
            messages.retain(|m| m.offset().is_none_or(|o| o < end));
            position = position.min(end);
        }
        // An empty poll matters only if the position moved (past expired messages): commit it.
        if messages.is_empty() && position == sent_position {
            continue;
        }
        sent_position = position;
        if tx
            .send(Ok(Chunk {
                partition,
                messages,
                position,
            }))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Prints chunks as they come until every reader is done, `limit` messages were printed, or a
/// stop is requested. Each chunk is flushed, then its offset is committed.
async fn print_messages(
    mut rx: mpsc::Receiver<Result<Chunk, OmsError>>,
    shutdown: &mut Shutdown,
    offsets: &mut Offsets,
    format: OutputFormat,
    limit: Option<u64>,
) -> anyhow::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let mut printed = 0u64;
    while limit.is_none_or(|limit| printed < limit) {
        let item = tokio::select! {
            biased;
            () = shutdown.requested() => break,
            item = rx.recv() => item,
        };
        let Some(item) = item else { break };
        let Chunk {
            partition,
            messages,
            mut position,
        } = item?;
        let room = limit.map_or(usize::MAX, |limit| {
            usize::try_from(limit - printed).unwrap_or(usize::MAX)
        });
        if messages.len() > room {
            // The rest stays unread: commit up to the first message not printed.
            position = messages[room].offset().unwrap_or(position);
        }
        for message in messages.iter().take(room) {
            write_message(&mut out, message, format)?;
            printed += 1;
        }
        // Flush before committing: a commit promises the messages reached the reader.
        out.flush()?;
        offsets.advance(partition, position);
        offsets.commit().await?;
    }
    Ok(out.flush()?)
}

/// Writes one message and its newline.
fn write_message(out: &mut impl Write, message: &Message, format: OutputFormat) -> io::Result<()> {
    match format {
        OutputFormat::Json => serde_json::to_writer(&mut *out, message).map_err(io::Error::from)?,
        OutputFormat::Raw => out.write_all(&message.data)?,
    }
    out.write_all(b"\n")
}

/// The group's offsets: where each partition is, and what was last committed.
#[derive(Debug)]
struct Offsets {
    consumer: Arc<dyn StreamingConsumer>,
    queue: String,
    /// Without a group there is nothing to commit.
    enabled: bool,
    position: BTreeMap<i32, i64>,
    committed: BTreeMap<i32, Option<i64>>,
}

impl Offsets {
    fn new(consumer: Arc<dyn StreamingConsumer>, queue: &str, enabled: bool) -> Self {
        Self {
            consumer,
            queue: queue.to_string(),
            enabled,
            position: BTreeMap::new(),
            committed: BTreeMap::new(),
        }
    }

    /// Records where partition `p` starts and what the group had committed for it.
    fn start(&mut self, p: i32, position: i64, committed: Option<i64>) {
        self.position.insert(p, position);
        self.committed.insert(p, committed);
    }

    /// Partition `p` has been printed up to (not including) `position`.
    fn advance(&mut self, p: i32, position: i64) {
        self.position.insert(p, position);
    }

    /// Commits every position that differs from the committed one. Partitions nothing was read
    /// from are committed too, so that `--from end --group g` makes g start at today's end.
    async fn commit(&mut self) -> anyhow::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        for (&p, &position) in &self.position {
            let committed = self.committed.entry(p).or_default();
            if *committed != Some(position) {
                self.consumer.commit(&self.queue, p, position).await?;
                *committed = Some(position);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_json_lines() {
        let message = Message::new("q", "hi").with_key("k");
        let mut out = Vec::new();
        write_message(&mut out, &message, OutputFormat::Raw).unwrap();
        write_message(&mut out, &message, OutputFormat::Json).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("hi"));
        let back: Message = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(back, message);
    }
}
