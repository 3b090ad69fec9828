//! The RocketMQ driver (`oms:rocketmq://...`) side by side with the bare `rocketmq-client-rust`
//! client it is built on: same broker, same process, same topic layout, same batch sizes and
//! message counts. The issue asks that the OMS layer cost at most 10 % of throughput; this
//! harness prints both figures, their ratio and the overhead, for 100-byte and 1 KiB bodies.
//!
//! Run with `cargo bench --bench rocketmq`. It uses the broker at `OMSTREAM_ROCKETMQ_URL` when
//! set, else the one on 127.0.0.1:9876, which it starts with `scripts/rocketmq.sh start` when
//! nothing listens there (and leaves running, as the tests do).
//!
//! Every case runs on fresh topics of [`PARTITIONS`] message queues, created through the OMS
//! resource manager (for the bare client too: topic creation is not measured):
//!
//! 1. **produce**: `Producer::send_batch` with batches of [`BATCH`] messages, against the bare
//!    `DefaultMQProducer::send_batch` with the same batches ([`COUNT_100B`] or [`COUNT_1KIB`]
//!    messages). The driver spreads a batch's messages round robin over the queues (one
//!    request per queue, sent one after another); the bare client sends a whole batch to one
//!    queue it picks. Building the messages is inside the timed loop on both sides. One send in
//!    flight at a time.
//!    A third, diagnostic, line sends OMS batches whose messages all carry the same partition
//!    (`Message::with_partition`, the next queue for each batch), so the driver also makes one
//!    request per batch: the gap between it and the bare client is the cost of the OMS layer
//!    itself (message conversion, ids, properties, the hop to the driver's runtime), and the
//!    gap between it and the first line the cost of splitting batches by queue.
//! 2. **consume**: what case 1 sent, read back from the beginning of every queue, one task per
//!    queue, [`READ_PASSES`] times. OMS: `StreamingConsumer::open(topic, queue,
//!    SeekPosition::Beginning)` and `PartitionReader::next_batch(READ_MAX)`; bare:
//!    `DefaultMQPullConsumer::pull_with_options` from the queue's first offset with the options
//!    the driver uses (selector `*`, up to [`READ_MAX`] messages, a broker-held long poll of
//!    1 s). Opening readers and reading offset ranges is not timed.
//! 3. **latency**: two single sends (`Producer::send`, `DefaultMQProducer::send`) every 1 ms
//!    (2,000 msg/s, `MissedTickBehavior::Burst`) while one reader task per queue reads as in
//!    case 2. Each 100-byte body starts with its send instant (ns since a shared `Instant`,
//!    taken right before the send); a message's latency is the instant its batch came back from
//!    `next_batch` / `pull_with_options` minus that. [`RUNS`] runs of 5 s per side, pooled;
//!    p50, p99, p99.9 and max.
//!
//! The bare client is set up the way its own examples do it: a `RuntimeOwner` (its runtime
//! runs the client's connections and background tasks) and a `ClientRuntime`, with every call
//! awaited from the application's runtime. The driver instead runs every client call on its
//! own process-wide client runtime and awaits the result from the caller's. Both producers use
//! a 5 s send timeout and 2 retries, as the driver does.
//!
//! Throughput cases run [`RUNS`] rounds, each side once per round, back to back, alternating
//! which goes first; each figure is the median run, with the range. The OMS/bare ratio is taken
//! per round, so that other work on the machine between rounds cancels out, and the median
//! round's is reported (with the range). MB means 10^6 bytes of bodies. Each line also shows this
//! process's CPU time per message (all threads, both clients; the broker is another process):
//! what the OMS layer adds to the client side. `OMSTREAM_BENCH_SCALE` (a float, default 1.0)
//! scales message counts and the latency runs' length (CI runs 0.05).
//!
//! Names after `--` select cases (`100b`, `1kib`, `latency`) and sides (`oms`, `pinned`,
//! `bare`); with one side named, e.g. to profile it alone, its figures print without
//! comparison: `cargo bench --bench rocketmq -- 1kib oms`.
#![allow(deprecated)] // The classic pull consumer: the driver reads with it on purpose (exact offsets).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use omstream::oms::{
    self, KeyValue, Message, MessagingAccessPoint, PartitionReader, Producer, QueueConfig,
    ResourceManager, SeekPosition, ServiceLifecycle, StreamingConsumer,
};
use rocketmq_client_rust::{
    ClientRuntime, ClientRuntimeConfig, DefaultMQProducer, DefaultMQPullConsumer, MessageSelector,
    PullOptions, PullStatus, SendStatus, TelemetryHandle,
};
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_model::common::message::message_single::Message as RmqMessage;
use rocketmq_runtime::{RuntimeConfig, RuntimeOwner};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// Message queues per topic (the broker's default for auto-created topics).
const PARTITIONS: i32 = 4;
/// Messages per `send_batch`. The driver sends at most 512 messages per request; round robin
/// over 4 queues makes that 4 requests of 128 per batch.
const BATCH: usize = 512;
/// The most messages a read asks for (the driver asks the broker for at most 1024 a pull).
const READ_MAX: usize = 1024;
/// How often each case runs per side (the median run is reported), the sides taking turns. A
/// run is short (about 0.3 s of sending), and on a 2-vCPU VM single runs differ by ±15 %;
/// the median of nine paired rounds moves much less between invocations than that of three.
const RUNS: usize = 9;
/// Messages per throughput run (before `OMSTREAM_BENCH_SCALE`). Small enough that a full run
/// sends about 1 GB to the broker's commit log, all sides and runs together (with a 100-byte
/// body, a stored OMS message takes about 430 bytes there, a bare one about 380);
/// `scripts/rocketmq.sh` keeps that store on the RAM disk when there is one.
const COUNT_100B: usize = 40_000;
const COUNT_1KIB: usize = 12_000;
/// The length of one latency run.
const LATENCY_RUN: Duration = Duration::from_secs(5);
/// How often a consume run reads its topic from the start. Reads are the shorter half of a
/// run; reading the same messages again lengthens the measurement without sending more data
/// to the broker's store.
const READ_PASSES: usize = 3;
/// Send timeout of both producers (the driver's default `ROCKETMQ_TIMEOUT_MS`).
const TIMEOUT_MS: u64 = 5000;
/// How long the broker holds a pull that finds nothing (the driver's value).
const LONG_POLL: Duration = Duration::from_secs(1);
/// The latency case's pace: `LATENCY_SENDS` single sends every `LATENCY_TICK` (2,000 msg/s).
const LATENCY_SENDS: usize = 2;
const LATENCY_TICK: Duration = Duration::from_millis(1);
/// The overhead the issue allows the OMS layer, in % of the bare client's throughput.
const ALLOWED_OVERHEAD: f64 = 10.0;
/// Producer and consumer groups of the bare client (the driver's are its own defaults).
const BARE_PRODUCER_GROUP: &str = "omstream_bench_bare_producer";
const BARE_CONSUMER_GROUP: &str = "omstream_bench_bare_reader";

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn err(message: impl Into<String>) -> Box<dyn std::error::Error + Send + Sync> {
    message.into().into()
}

/// Which client a figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The OMS driver, messages spread round robin over the queues (the default).
    Oms = 0,
    /// The OMS driver, every batch to one partition (diagnostic: one request per batch).
    OmsPinned = 1,
    /// The bare client.
    Bare = 2,
}

impl Side {
    /// Its name in topic names and on the command line.
    fn tag(self) -> &'static str {
        match self {
            Side::Oms => "oms",
            Side::OmsPinned => "pinned",
            Side::Bare => "bare",
        }
    }

    const ALL: [Side; 3] = [Side::Oms, Side::OmsPinned, Side::Bare];
}

/// Everything both sides need, set up once: the OMS access point with a producer and a
/// streaming consumer, and the bare client's producer and pull consumer.
struct Clients {
    resources: Arc<dyn ResourceManager>,
    oms_producer: Producer,
    oms_consumer: Arc<dyn StreamingConsumer>,
    bare_producer: DefaultMQProducer,
    bare_consumer: DefaultMQPullConsumer,
    /// Numbers the topics of this process.
    topics: AtomicUsize,
    /// Keeps the access point (and its clients) alive.
    _access_point: Arc<dyn MessagingAccessPoint>,
}

impl Clients {
    async fn new(url: &str, bare_runtime: Arc<ClientRuntime>) -> BenchResult<Self> {
        let access_point = oms::connect(url, KeyValue::new()).await?;
        let resources = access_point.resource_manager().await?;
        let oms_producer = access_point.create_producer(KeyValue::new()).await?;
        oms_producer.start().await?;
        let oms_consumer = access_point
            .create_streaming_consumer(KeyValue::new())
            .await?;
        oms_consumer.start().await?;

        let name_servers = name_servers(url)?;
        let mut bare_producer = DefaultMQProducer::builder(bare_runtime.clone())
            .producer_group(BARE_PRODUCER_GROUP)
            .name_server_addr(name_servers.as_str())
            .send_msg_timeout(TIMEOUT_MS as u32)
            .retry_times_when_send_failed(2)
            .build();
        bare_producer.start().await?;
        let bare_consumer = DefaultMQPullConsumer::builder(bare_runtime)
            .consumer_group(BARE_CONSUMER_GROUP)
            .name_server_addr(name_servers.as_str())
            .consumer_pull_timeout(Duration::from_millis(TIMEOUT_MS))
            .build()?;
        bare_consumer.start().await?;
        Ok(Self {
            resources,
            oms_producer,
            oms_consumer,
            bare_producer,
            bare_consumer,
            topics: AtomicUsize::new(0),
            _access_point: access_point,
        })
    }

    /// A fresh topic of [`PARTITIONS`] queues for `side` in `case` (names allow no dots).
    async fn topic(&self, case: &str, side: Side) -> BenchResult<String> {
        let topic = format!(
            "bench-rmq-{}-{}-{case}-{}",
            std::process::id(),
            self.topics.fetch_add(1, Ordering::Relaxed),
            side.tag()
        );
        self.resources
            .create_queue(&topic, QueueConfig::with_partitions(PARTITIONS as u32))
            .await?;
        Ok(topic)
    }

    /// Deletes a topic once measured, so repeated runs do not pile topics up on the broker
    /// (its messages stay in the commit log until the broker's retention drops them).
    async fn drop_topic(&self, topic: &str) {
        if let Err(e) = self.resources.delete_queue(topic).await {
            eprintln!("note: could not delete topic {topic}: {e}");
        }
    }

    async fn shutdown(mut self) -> BenchResult<()> {
        self.oms_consumer.stop().await?;
        self.oms_producer.stop().await?;
        let _ = self.bare_consumer.shutdown().await;
        self.bare_producer.shutdown().await;
        Ok(())
    }
}

/// The name servers of an `oms:rocketmq://host:port[,host:port]/region` URL.
fn name_servers(url: &str) -> BenchResult<String> {
    url.strip_prefix("oms:rocketmq://")
        .and_then(|rest| rest.split('/').next())
        .filter(|hosts| !hosts.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            err(format!(
                "'{url}' is not an oms:rocketmq://<name servers>/<region> URL"
            ))
        })
}

/// The broker's access point URL: `OMSTREAM_ROCKETMQ_URL`, else 127.0.0.1:9876, started with
/// `scripts/rocketmq.sh start` when nothing listens there (like the tests' support module).
fn broker_url() -> BenchResult<String> {
    if let Ok(url) = std::env::var("OMSTREAM_ROCKETMQ_URL") {
        return Ok(url);
    }
    let listening = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:9876".parse().expect("an address"),
        Duration::from_millis(500),
    )
    .is_ok();
    if !listening {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rocketmq.sh");
        eprintln!("no name server on 127.0.0.1:9876: starting one with {script} start");
        let status = std::process::Command::new("bash")
            .args([script, "start"])
            .status()?;
        if !status.success() {
            return Err(err(
                "scripts/rocketmq.sh start failed (see its output above); or set OMSTREAM_ROCKETMQ_URL",
            ));
        }
    }
    Ok("oms:rocketmq://127.0.0.1:9876/default".to_string())
}

/// On-CPU time of all threads of this process so far (the first field of each thread's
/// `/proc/self/task/<tid>/schedstat`, in ns). Both clients run in this process and the broker
/// in its own, so this is the client side's CPU cost, which the OMS layer adds to.
fn process_cpu() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// The start of a timed section: wall clock and this process's CPU time.
struct Clock {
    wall: Instant,
    cpu: Duration,
}

impl Clock {
    fn start() -> Self {
        Self {
            cpu: process_cpu(),
            wall: Instant::now(),
        }
    }

    fn stop(&self, messages: usize, body_bytes: usize) -> Throughput {
        let elapsed = self.wall.elapsed();
        Throughput {
            messages,
            body_bytes,
            elapsed,
            cpu: process_cpu().saturating_sub(self.cpu),
        }
    }
}

/// A throughput measurement.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    messages: usize,
    body_bytes: usize,
    elapsed: Duration,
    /// CPU time of this process (both clients' threads, not the broker's) meanwhile.
    cpu: Duration,
}

impl Throughput {
    /// Two measurements as one (passes of the same read).
    fn plus(&self, other: &Throughput) -> Throughput {
        Throughput {
            messages: self.messages + other.messages,
            body_bytes: self.body_bytes + other.body_bytes,
            elapsed: self.elapsed + other.elapsed,
            cpu: self.cpu + other.cpu,
        }
    }

    /// Client CPU per message, in µs.
    fn cpu_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.messages as f64
    }

    fn per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    fn mb_per_sec(&self) -> f64 {
        self.body_bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// The runs of one figure; reported as the median run, with the range.
#[derive(Debug, Default)]
struct Runs(Vec<Throughput>);

impl Runs {
    fn median(&self) -> Option<Throughput> {
        let mut runs = self.0.clone();
        runs.sort_by(|a, b| a.per_sec().total_cmp(&b.per_sec()));
        runs.get(runs.len() / 2).copied()
    }

    /// Prints the median run and the range (nothing when the side did not run).
    fn report(&self, what: &str) {
        let Some(median) = self.median() else {
            return;
        };
        let low = self
            .0
            .iter()
            .map(Throughput::per_sec)
            .fold(f64::MAX, f64::min);
        let high = self.0.iter().map(Throughput::per_sec).fold(0.0, f64::max);
        println!(
            "{what:<52} {:>9.0} msg/s {:>7.1} MB/s {:>6.2} µs CPU/msg   (median of {} runs of {} messages; range {:.0}-{:.0} msg/s)",
            median.per_sec(),
            median.mb_per_sec(),
            median.cpu_us(),
            self.0.len(),
            median.messages,
            low,
            high
        );
    }
}

/// One comparison of the summary: an OMS figure against the bare client's.
struct Verdict {
    figure: String,
    /// OMS/bare throughput of each round (the two sides of a round run back to back, so a
    /// change in the machine's other load between rounds cancels out), sorted.
    ratios: Vec<f64>,
    /// Client CPU per message (µs) of the median runs.
    cpu: (f64, f64),
    /// Whether the issue's ≤ 10 % applies (not to the diagnostic line).
    judged: bool,
}

impl Verdict {
    /// The comparison of two figures, round by round, when both sides ran.
    fn of(figure: String, oms: &Runs, bare: &Runs, judged: bool) -> Option<Self> {
        let mut ratios: Vec<f64> = oms
            .0
            .iter()
            .zip(&bare.0)
            .map(|(o, b)| o.per_sec() / b.per_sec())
            .collect();
        ratios.sort_by(f64::total_cmp);
        Some(Self {
            figure,
            cpu: (oms.median()?.cpu_us(), bare.median()?.cpu_us()),
            ratios,
            judged,
        })
    }

    /// The median round's OMS/bare throughput.
    fn ratio(&self) -> f64 {
        self.ratios[self.ratios.len() / 2]
    }

    /// The throughput the OMS layer loses, in % of the bare client's.
    fn overhead(&self) -> f64 {
        (1.0 - self.ratio()) * 100.0
    }

    fn outcome(&self) -> &'static str {
        match (self.judged, self.overhead() <= ALLOWED_OVERHEAD) {
            (false, _) => "(diagnostic)",
            (true, true) => "PASS",
            (true, false) => "FAIL",
        }
    }

    fn print(&self) {
        let (low, high) = (self.ratios[0], self.ratios[self.ratios.len() - 1]);
        println!(
            "{:<52} OMS/bare {:.3} ({low:.2}-{high:.2})   overhead {:>6.1} %   {:<12}   client CPU/msg {:.2} vs {:.2} µs",
            self.figure,
            self.ratio(),
            self.overhead(),
            self.outcome(),
            self.cpu.0,
            self.cpu.1,
        );
    }
}

/// Sends `count` messages of `body` to `topic` through the OMS producer, in batches of
/// [`BATCH`]; `pinned` gives every batch one partition (the next one each time).
async fn produce_oms(
    producer: &Producer,
    topic: &str,
    count: usize,
    body: &Bytes,
    pinned: bool,
) -> BenchResult<Throughput> {
    let clock = Clock::start();
    let mut sent = 0;
    let mut batches = 0;
    while sent < count {
        let n = BATCH.min(count - sent);
        let partition = (batches % PARTITIONS as usize) as i32;
        let batch: Vec<Message> = (0..n)
            .map(|_| {
                let message = Message::new(topic, body.clone());
                if pinned {
                    message.with_partition(partition)
                } else {
                    message
                }
            })
            .collect();
        let results = producer.send_batch(batch).await?;
        assert_eq!(results.len(), n, "one result per message");
        sent += n;
        batches += 1;
    }
    Ok(clock.stop(count, count * body.len()))
}

/// The same through the bare client: `send_batch` of [`BATCH`] messages, the queue picked by
/// the client.
async fn produce_bare(
    producer: &DefaultMQProducer,
    topic: &str,
    count: usize,
    body: &Bytes,
) -> BenchResult<Throughput> {
    let clock = Clock::start();
    let mut sent = 0;
    while sent < count {
        let n = BATCH.min(count - sent);
        let batch = (0..n)
            .map(|_| {
                RmqMessage::builder()
                    .topic(topic)
                    .body(body.clone())
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let result = producer.send_batch(batch).await?;
        if result.send_status != SendStatus::SendOk {
            return Err(err(format!(
                "a batch was stored with {:?}",
                result.send_status
            )));
        }
        sent += n;
    }
    Ok(clock.stop(count, count * body.len()))
}

/// Reads every queue of `topic` from its start to its current end through the OMS streaming
/// consumer, one task per queue.
async fn consume_oms(
    consumer: &Arc<dyn StreamingConsumer>,
    topic: &str,
    count: usize,
) -> BenchResult<Throughput> {
    let ends = wait_for_dispatch(topic, count, || async {
        let mut ends = Vec::new();
        let mut stored = 0;
        for partition in 0..PARTITIONS {
            let (min, max) = consumer.offset_range(topic, partition).await?;
            stored += (max - min) as usize;
            ends.push(max);
        }
        Ok((stored, ends))
    })
    .await?;
    let mut total: Option<Throughput> = None;
    for _ in 0..READ_PASSES {
        let mut readers = Vec::new();
        for (partition, &end) in (0..PARTITIONS).zip(&ends) {
            let reader = consumer
                .open(topic, partition, SeekPosition::Beginning)
                .await?;
            readers.push((reader, end));
        }
        let clock = Clock::start();
        let tasks: Vec<JoinHandle<BenchResult<(usize, usize)>>> = readers
            .into_iter()
            .map(|(mut reader, end)| {
                tokio::spawn(async move {
                    let (mut messages, mut bytes) = (0, 0);
                    while reader.position() < end {
                        let batch = reader.next_batch(READ_MAX).await?;
                        messages += batch.len();
                        bytes += batch.iter().map(|m| m.data.len()).sum::<usize>();
                    }
                    Ok((messages, bytes))
                })
            })
            .collect();
        let pass = collect_reads(tasks, clock, count, topic).await?;
        total = Some(total.map_or(pass, |t| t.plus(&pass)));
    }
    Ok(total.expect("at least one pass"))
}

/// Pull options as the driver builds them: from `offset`, up to [`READ_MAX`] messages, the
/// broker holding an empty pull for [`LONG_POLL`].
fn pull_options(mq: &MessageQueue, offset: i64) -> BenchResult<PullOptions> {
    Ok(PullOptions::new(
        mq.clone(),
        MessageSelector::by_tag("*"),
        offset,
        READ_MAX as i32,
    )?
    .timeout(Duration::from_millis(TIMEOUT_MS) + LONG_POLL)
    .broker_suspend_timeout(LONG_POLL)
    .block_if_not_found(true))
}

/// The message queues of `topic` by queue id, with each one's (min, max) offsets.
async fn bare_queues(
    consumer: &DefaultMQPullConsumer,
    topic: &str,
) -> BenchResult<Vec<(MessageQueue, i64, i64)>> {
    let mut queues = consumer.fetch_subscribe_message_queues(topic).await?;
    queues.sort_by_key(|q| q.queue_id());
    let mut ranges = Vec::with_capacity(queues.len());
    for mq in queues {
        let min = consumer.min_offset(&mq).await?;
        let max = consumer.max_offset(&mq).await?;
        ranges.push((mq, min, max));
    }
    Ok(ranges)
}

/// The same through the bare client's classic pull consumer.
async fn consume_bare(
    consumer: &DefaultMQPullConsumer,
    topic: &str,
    count: usize,
) -> BenchResult<Throughput> {
    let queues = wait_for_dispatch(topic, count, || async {
        let queues = bare_queues(consumer, topic).await?;
        let stored = queues
            .iter()
            .map(|(_, min, max)| (max - min) as usize)
            .sum();
        Ok((stored, queues))
    })
    .await?;
    let mut total: Option<Throughput> = None;
    for _ in 0..READ_PASSES {
        let clock = Clock::start();
        let tasks: Vec<JoinHandle<BenchResult<(usize, usize)>>> = queues
            .iter()
            .map(|(mq, min, end)| {
                let (consumer, mq, min, end) = (consumer.clone(), mq.clone(), *min, *end);
                tokio::spawn(async move {
                    let (mut messages, mut bytes) = (0, 0);
                    let mut offset = min;
                    while offset < end {
                        let result = consumer
                            .pull_with_options(pull_options(&mq, offset)?)
                            .await?;
                        if let PullStatus::Found = result.pull_status() {
                            let found = result.msg_found_list().unwrap_or_default();
                            messages += found.len();
                            bytes += found
                                .iter()
                                .map(|m| m.message.body_slice().len())
                                .sum::<usize>();
                        }
                        offset = (result.next_begin_offset() as i64).max(offset);
                    }
                    Ok((messages, bytes))
                })
            })
            .collect();
        let pass = collect_reads(tasks, clock, count, topic).await?;
        total = Some(total.map_or(pass, |t| t.plus(&pass)));
    }
    Ok(total.expect("at least one pass"))
}

/// Waits until the queues of `topic` hold `count` messages, as `look` counts them, and returns
/// what `look` saw then. The broker appends a send to its commit log and builds the per-queue
/// index (what reads and offsets see) a little later, so right after the last send the offsets
/// may still be short of the end.
async fn wait_for_dispatch<T, F, Fut>(topic: &str, count: usize, mut look: F) -> BenchResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BenchResult<(usize, T)>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (stored, seen) = look().await?;
        if stored == count {
            return Ok(seen);
        }
        if stored > count || Instant::now() > deadline {
            return Err(err(format!(
                "topic {topic} holds {stored} messages, {count} were sent"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for the reader tasks of one pass over `topic` and sums what they read, which must be
/// the `count` messages sent.
async fn collect_reads(
    tasks: Vec<JoinHandle<BenchResult<(usize, usize)>>>,
    clock: Clock,
    count: usize,
    topic: &str,
) -> BenchResult<Throughput> {
    let (mut messages, mut body_bytes) = (0, 0);
    for task in tasks {
        let (m, b) = task.await??;
        messages += m;
        body_bytes += b;
    }
    let read = clock.stop(messages, body_bytes);
    if messages != count {
        return Err(err(format!(
            "read {messages} messages from {topic}, {count} were sent"
        )));
    }
    Ok(read)
}

/// Cases 1 and 2 for one body size: `runs` rounds of produce and consume per side in `sides`,
/// each on fresh topics, alternating which side goes first.
async fn throughput(
    clients: &Clients,
    sides: &[Side],
    count: usize,
    body_len: usize,
    verdicts: &mut Vec<Verdict>,
) -> BenchResult<()> {
    let body = Bytes::from(vec![b'x'; body_len]);
    let case = format!("{body_len}b");
    // Indexed by `Side as usize`; the pinned side is not read back (its reads would be
    // those of `Oms`).
    let mut produced = [Runs::default(), Runs::default(), Runs::default()];
    let mut consumed = [Runs::default(), Runs::default(), Runs::default()];
    for run in 0..RUNS {
        let order = if run % 2 == 0 {
            [Side::Oms, Side::Bare, Side::OmsPinned]
        } else {
            [Side::Bare, Side::Oms, Side::OmsPinned]
        };
        for side in order.into_iter().filter(|s| sides.contains(s)) {
            let topic = clients.topic(&case, side).await?;
            let (sent, read) = match side {
                Side::Oms | Side::OmsPinned => {
                    let pinned = side == Side::OmsPinned;
                    let sent =
                        produce_oms(&clients.oms_producer, &topic, count, &body, pinned).await?;
                    let read = match pinned {
                        true => None,
                        false => Some(consume_oms(&clients.oms_consumer, &topic, count).await?),
                    };
                    (sent, read)
                }
                Side::Bare => {
                    let sent = produce_bare(&clients.bare_producer, &topic, count, &body).await?;
                    let read = consume_bare(&clients.bare_consumer, &topic, count).await?;
                    (sent, Some(read))
                }
            };
            produced[side as usize].0.push(sent);
            if let Some(read) = read {
                consumed[side as usize].0.push(read);
            }
            clients.drop_topic(&topic).await;
        }
    }
    let size = if body_len == 1024 {
        "1 KiB".to_string()
    } else {
        format!("{body_len} B")
    };
    let [oms, pinned, bare] = &produced;
    oms.report(&format!("produce {size}, OMS send_batch({BATCH})"));
    bare.report(&format!("produce {size}, bare send_batch({BATCH})"));
    pinned.report(&format!(
        "produce {size}, OMS one partition per batch (diag.)"
    ));
    let [read_oms, _, read_bare] = &consumed;
    read_oms.report(&format!("consume {size}, OMS next_batch({READ_MAX})"));
    read_bare.report(&format!(
        "consume {size}, bare pull_with_options({READ_MAX})"
    ));
    let new: Vec<Verdict> = [
        Verdict::of(format!("produce {size}"), oms, bare, true),
        Verdict::of(
            format!("produce {size}, OMS one partition per batch"),
            pinned,
            bare,
            false,
        ),
        Verdict::of(format!("consume {size}"), read_oms, read_bare, true),
    ]
    .into_iter()
    .flatten()
    .collect();
    for verdict in &new {
        verdict.print();
    }
    println!();
    verdicts.extend(new);
    Ok(())
}

/// A 100-byte body that starts with `sent_ns` (little-endian).
fn timestamped(sent_ns: u64) -> Bytes {
    let mut body = [b'x'; 100];
    body[..8].copy_from_slice(&sent_ns.to_le_bytes());
    Bytes::copy_from_slice(&body)
}

fn sent_ns(body: &[u8]) -> u64 {
    let mut ns = [0u8; 8];
    ns.copy_from_slice(&body[..8]);
    u64::from_le_bytes(ns)
}

/// Case 3's producer for `side`: `ticks` times, [`LATENCY_SENDS`] single sends, one tick every
/// [`LATENCY_TICK`].
async fn paced_sends(
    clients: Arc<Clients>,
    side: Side,
    topic: String,
    start: Instant,
    ticks: usize,
) -> BenchResult<()> {
    let mut tick = tokio::time::interval(LATENCY_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    for _ in 0..ticks {
        tick.tick().await;
        for _ in 0..LATENCY_SENDS {
            let body = timestamped(start.elapsed().as_nanos() as u64);
            if side == Side::Bare {
                let message = RmqMessage::builder()
                    .topic(topic.as_str())
                    .body(body)
                    .build()?;
                clients.bare_producer.send(message).await?;
            } else {
                clients
                    .oms_producer
                    .send(Message::new(&topic, body))
                    .await?;
            }
        }
    }
    Ok(())
}

/// Case 3's readers for `side`: one task per queue, each sending the latencies of every batch
/// it reads to `out`. They read until aborted.
async fn timing_readers(
    clients: &Clients,
    side: Side,
    topic: &str,
    start: Instant,
    out: mpsc::UnboundedSender<Vec<u64>>,
) -> BenchResult<Vec<JoinHandle<BenchResult<()>>>> {
    let mut tasks = Vec::new();
    if side == Side::Bare {
        for (mq, min, _) in bare_queues(&clients.bare_consumer, topic).await? {
            let consumer = clients.bare_consumer.clone();
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                let mut offset = min;
                loop {
                    let result = consumer
                        .pull_with_options(pull_options(&mq, offset)?)
                        .await?;
                    let received_ns = start.elapsed().as_nanos() as u64;
                    if let PullStatus::Found = result.pull_status() {
                        let found = result.msg_found_list().unwrap_or_default();
                        let latencies = found
                            .iter()
                            .map(|m| received_ns.saturating_sub(sent_ns(m.message.body_slice())))
                            .collect();
                        let _ = out.send(latencies);
                    }
                    offset = (result.next_begin_offset() as i64).max(offset);
                }
            }));
        }
    } else {
        for partition in 0..PARTITIONS {
            let mut reader: Box<dyn PartitionReader> = clients
                .oms_consumer
                .open(topic, partition, SeekPosition::Beginning)
                .await?;
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let batch = reader.next_batch(READ_MAX).await?;
                    let received_ns = start.elapsed().as_nanos() as u64;
                    let latencies = batch
                        .iter()
                        .map(|m| received_ns.saturating_sub(sent_ns(&m.data)))
                        .collect();
                    let _ = out.send(latencies);
                }
            }));
        }
    }
    Ok(tasks)
}

/// One latency run of `side`: its latencies in ns, one per message.
async fn latency_run(clients: &Arc<Clients>, side: Side, run: Duration) -> BenchResult<Vec<u64>> {
    let topic = clients.topic("lat", side).await?;
    let ticks = (run.as_nanos() / LATENCY_TICK.as_nanos()) as usize;
    let count = ticks * LATENCY_SENDS;
    let start = Instant::now();
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let readers = timing_readers(clients, side, &topic, start, sender).await?;
    let producer = tokio::spawn(paced_sends(
        clients.clone(),
        side,
        topic.clone(),
        start,
        ticks,
    ));
    let mut latencies = Vec::with_capacity(count);
    // Long enough for the run and a slow broker; a lost message ends the case with an error.
    let deadline = tokio::time::Instant::now() + run + Duration::from_secs(30);
    while latencies.len() < count {
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Some(batch)) => latencies.extend(batch),
            Ok(None) => break,
            Err(_) => break,
        }
    }
    for reader in &readers {
        reader.abort();
    }
    producer.await??;
    for reader in readers {
        match reader.await {
            Ok(Err(e)) => return Err(e),
            Ok(Ok(())) => {}
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(e.into()),
        }
    }
    clients.drop_topic(&topic).await;
    if latencies.len() != count {
        return Err(err(format!(
            "{} latency run: received {} of {count} messages",
            side.tag(),
            latencies.len()
        )));
    }
    Ok(latencies)
}

fn micros(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// Case 3: [`RUNS`] runs of `run` per side in `sides` (not the pinned one), alternating; the
/// latencies of each side pooled.
async fn latency(clients: &Arc<Clients>, sides: &[Side], run: Duration) -> BenchResult<()> {
    let mut pooled = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..RUNS {
        let order = if i % 2 == 0 {
            [Side::Oms, Side::Bare]
        } else {
            [Side::Bare, Side::Oms]
        };
        for side in order.into_iter().filter(|s| sides.contains(s)) {
            pooled[side as usize].extend(latency_run(clients, side, run).await?);
        }
    }
    let rate = LATENCY_SENDS as f64 / LATENCY_TICK.as_secs_f64();
    println!(
        "latency, {LATENCY_SENDS} single sends every {} ms ({rate:.0} msg/s), {RUNS} runs of {:.2} s per side",
        LATENCY_TICK.as_millis(),
        run.as_secs_f64()
    );
    for sorted in &mut pooled {
        sorted.sort_unstable();
    }
    let [oms, _, bare] = &pooled;
    let at =
        |sorted: &[u64], q| (!sorted.is_empty()).then(|| micros(common::percentile(sorted, q)));
    let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} µs"));
    for (name, q) in [("p50", 0.50), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0)] {
        let (o, b) = (at(oms, q), at(bare, q));
        let diff = match (o, b) {
            (Some(o), Some(b)) => format!("OMS - bare {:>+7.0} µs", o - b),
            _ => String::new(),
        };
        println!(
            "{:<52} OMS {:>10}   bare {:>10}   {diff}",
            format!(
                "latency {name} ({} messages per side)",
                oms.len().max(bare.len())
            ),
            show(o),
            show(b),
        );
    }
    println!();
    Ok(())
}

/// A short produce and consume on each side, so that the first measured case pays for neither
/// connection set-up nor route look-ups nor the allocator's first page faults. Also prints
/// what one message of each side takes in the broker's store.
async fn warm_up(clients: &Clients, scale: &Scale) -> BenchResult<()> {
    let n = scale.count(20_000);
    let body = Bytes::from(vec![b'x'; 100]);
    let oms_topic = clients.topic("warm", Side::Oms).await?;
    produce_oms(&clients.oms_producer, &oms_topic, n, &body, false).await?;
    consume_oms(&clients.oms_consumer, &oms_topic, n).await?;
    let bare_topic = clients.topic("warm", Side::Bare).await?;
    produce_bare(&clients.bare_producer, &bare_topic, n, &body).await?;
    consume_bare(&clients.bare_consumer, &bare_topic, n).await?;
    println!("a stored message with a 100-byte body (the broker's store_size; property names):");
    for (side, topic) in [("OMS", &oms_topic), ("bare", &bare_topic)] {
        let (size, mut names) = stored_message(&clients.bare_consumer, topic).await?;
        names.sort();
        println!("  {side:<4} {size:>4} B  {}", names.join(" "));
    }
    println!();
    clients.drop_topic(&oms_topic).await;
    clients.drop_topic(&bare_topic).await;
    Ok(())
}

/// The stored size and the property names of the first message of `topic`, read with the bare
/// client (which shows what the broker keeps; the OMS reader maps it to a `Message`).
async fn stored_message(
    consumer: &DefaultMQPullConsumer,
    topic: &str,
) -> BenchResult<(i32, Vec<String>)> {
    for (mq, min, max) in bare_queues(consumer, topic).await? {
        if max <= min {
            continue;
        }
        let result = consumer.pull_with_options(pull_options(&mq, min)?).await?;
        if let Some(message) = result.msg_found_list().unwrap_or_default().first() {
            let names = message
                .message
                .properties()
                .as_map()
                .keys()
                .map(|k| k.to_string())
                .collect();
            return Ok((message.store_size, names));
        }
    }
    Err(err(format!("topic {topic} has no message to look at")))
}

/// `OMSTREAM_BENCH_SCALE`: multiplies message counts and the latency runs' length.
struct Scale(f64);

impl Scale {
    fn from_env() -> BenchResult<Self> {
        Ok(Self(common::scale_from_env().map_err(err)?))
    }

    /// `n` scaled, at least one batch per queue.
    fn count(&self, n: usize) -> usize {
        ((n as f64 * self.0).round() as usize).max(BATCH * PARTITIONS as usize)
    }

    /// `d` scaled, at least 250 ms.
    fn duration(&self, d: Duration) -> Duration {
        d.mul_f64(self.0).max(Duration::from_millis(250))
    }
}

fn print_machine(scale: &Scale, url: &str) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("omstream RocketMQ driver benchmark: OMS layer vs bare rocketmq-client-rust 1.0.0");
    println!("command: cargo bench --bench rocketmq");
    println!("machine: nproc = {cpus}, CPU: {}", common::cpu_model());
    println!("broker:  {url} (name server and broker on this machine)");
    println!(
        "topics:  fresh, {PARTITIONS} queues each; produce batches of {BATCH}; reads of up to {READ_MAX}"
    );
    println!("scale:   OMSTREAM_BENCH_SCALE = {}", scale.0);
    // The broker shares the machine: other work on it moves the figures a lot.
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        println!("load:    {} (1, 5, 15 min) at start", load.join(" "));
    }
    println!();
}

/// The groups of cases, by the names that select them on the command line.
const CASES: [&str; 3] = ["100b", "1kib", "latency"];

/// What the command line asks for: cases (all when none is named) and sides (all when none is
/// named; naming one side, e.g. to profile it alone, prints its figures without comparison).
struct Selection {
    cases: Vec<String>,
    sides: Vec<Side>,
}

impl Selection {
    /// From the arguments (`cargo bench --bench rocketmq -- 1kib oms`); flags such as cargo's
    /// `--bench` are ignored.
    fn from_args() -> BenchResult<Self> {
        let mut selection = Self {
            cases: Vec::new(),
            sides: Vec::new(),
        };
        for arg in std::env::args().skip(1).filter(|a| !a.starts_with('-')) {
            if let Some(side) = Side::ALL.into_iter().find(|s| s.tag() == arg) {
                selection.sides.push(side);
            } else if CASES.contains(&arg.as_str()) {
                selection.cases.push(arg);
            } else {
                let sides: Vec<&str> = Side::ALL.iter().map(|s| s.tag()).collect();
                return Err(err(format!(
                    "unknown case '{arg}'; the cases are {}, the sides {}",
                    CASES.join(", "),
                    sides.join(", ")
                )));
            }
        }
        if selection.sides.is_empty() {
            selection.sides = Side::ALL.to_vec();
        }
        Ok(selection)
    }

    fn wants(&self, case: &str) -> bool {
        self.cases.is_empty() || self.cases.iter().any(|c| c == case)
    }
}

async fn run(
    scale: Scale,
    selection: Selection,
    url: &str,
    bare_runtime: Arc<ClientRuntime>,
) -> BenchResult<()> {
    print_machine(&scale, url);
    let clients = Arc::new(Clients::new(url, bare_runtime).await?);
    warm_up(&clients, &scale).await?;
    let sides = &selection.sides;
    let mut verdicts = Vec::new();
    if selection.wants("100b") {
        throughput(&clients, sides, scale.count(COUNT_100B), 100, &mut verdicts).await?;
    }
    if selection.wants("1kib") {
        throughput(
            &clients,
            sides,
            scale.count(COUNT_1KIB),
            1024,
            &mut verdicts,
        )
        .await?;
    }
    if selection.wants("latency") {
        latency(&clients, sides, scale.duration(LATENCY_RUN)).await?;
    }
    if !verdicts.is_empty() {
        println!(
            "summary (OMS/bare: median and range over the rounds; the issue allows the OMS layer ≤ {ALLOWED_OVERHEAD:.0} %):"
        );
        for verdict in &verdicts {
            verdict.print();
        }
    }
    match Arc::try_unwrap(clients) {
        Ok(clients) => clients.shutdown().await,
        Err(_) => Ok(()),
    }
}

fn main() -> BenchResult<()> {
    let scale = Scale::from_env()?;
    let selection = Selection::from_args()?;
    let url = broker_url()?;
    // The bare client's own runtime, as its examples set it up; it must outlive every client
    // built on it and must not be dropped inside another runtime, so it lives in `main`.
    // The default profile, as the driver's (`RuntimeOwner::new`), under a name of its own so
    // that a profile tells its threads from the driver's ("rocketmq-runtime").
    let owner = RuntimeOwner::plan(RuntimeConfig {
        thread_name: "bare-client".to_string(),
        ..RuntimeConfig::default()
    })?
    .build()?;
    let bare_runtime = ClientRuntime::try_new(
        owner.root_context().component("omstream-bench-bare"),
        ClientRuntimeConfig::default(),
        TelemetryHandle::noop(),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-app")
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(scale, selection, &url, bare_runtime));
    drop(runtime);
    owner.shutdown_background();
    result
}
