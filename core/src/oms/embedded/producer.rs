//! The embedded driver's producer backend.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::batch::{self, StagedGroup};
use super::log::PartitionLog;
use super::record::{self, EncodedBatch};
use super::staged;
use super::store::QueueHandle;
use super::Shared;
use crate::oms::{
    body_too_large, now_millis, Message, OmsError, OmsStatus, PreparedTransaction, ProducerBackend,
    Result, SendResult, TransactionState, TransactionStateCheckListener,
};

/// How often a transactional producer looks for transactions left open by producers that died.
const TRANSACTION_CHECK_INTERVAL: Duration = Duration::from_secs(5);

pub(crate) struct EmbeddedProducer {
    shared: Arc<Shared>,
    round_robin: AtomicU32,
    listener: Option<Arc<dyn TransactionStateCheckListener>>,
    checker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl EmbeddedProducer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        listener: Option<Arc<dyn TransactionStateCheckListener>>,
    ) -> Self {
        Self {
            shared,
            round_robin: AtomicU32::new(0),
            listener,
            checker: Mutex::new(None),
        }
    }

    /// Only a producer with a check listener may prepare: someone must resolve what it leaves
    /// open.
    fn ensure_transactional(&self) -> Result<()> {
        if self.listener.is_none() {
            return Err(OmsError::transaction(
                OmsStatus::BAD_REQUEST,
                "this producer cannot prepare transactions; create it with create_transactional_producer and a check listener",
            ));
        }
        Ok(())
    }

    /// Stops the background check of open transactions, if it runs.
    fn stop_checker(&self) {
        let task = self
            .checker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            task.abort();
        }
    }
}

/// The partition of a message: the one it names, else its key's hash, else `sticky` (one
/// partition per batch for unkeyed messages, so a batch stays one append).
fn choose_partition(queue: &QueueHandle, message: &Message, sticky: u32) -> Result<i32> {
    let n = queue.partitions.len() as u32;
    if let Some(p) = message.extension_header.partition {
        queue.partition(p)?;
        return Ok(p);
    }
    Ok(match message.key() {
        Some(key) => (crc32fast::hash(key.as_bytes()) % n) as i32,
        None => (sticky % n) as i32,
    })
}

fn check_size(shared: &Shared, message: &Message) -> Result<()> {
    let max = shared.config.max_message_bytes;
    if message.data.len() > max {
        return Err(body_too_large(
            message.destination(),
            message.data.len(),
            max,
        ));
    }
    let headers = record::encoded_len(message) - message.data.len();
    if headers > (1 << 20) {
        return Err(OmsError::message_format(
            OmsStatus::MESSAGE_ATTRIBUTES_TOO_LARGE,
            format!("a message for queue '{}' has {headers} bytes of headers and properties, over the 1 MiB limit", message.destination()),
        ));
    }
    Ok(())
}

/// The messages of one call bound for one partition: they are appended together.
struct PartitionBatch {
    queue: Arc<QueueHandle>,
    log: Arc<PartitionLog>,
    records: EncodedBatch,
    /// The positions of the batch's messages in the call.
    indices: Vec<usize>,
}

impl PartitionBatch {
    /// Whether this is the batch of partition `p` of `queue` (the same queue, perhaps through
    /// another handle).
    fn is_for(&self, queue: &Arc<QueueHandle>, p: i32) -> bool {
        self.log.partition == p
            && (Arc::ptr_eq(&self.queue, queue) || self.queue.name == queue.name)
    }
}

/// Groups the messages of a call by partition. Consecutive messages for one partition (the
/// common case: one queue, or unkeyed messages, which share a partition per call) cost no
/// lookup and no allocation.
struct Grouping {
    batches: Vec<PartitionBatch>,
    /// The slot of each batch, by queue name and partition.
    index: HashMap<String, HashMap<i32, usize>>,
    last: Option<usize>,
    /// Bytes to reserve for the first batch: the whole call's (see [`reservation`]).
    first_capacity: usize,
}

impl Grouping {
    fn new(first_capacity: usize) -> Self {
        Self {
            batches: Vec::new(),
            index: HashMap::new(),
            last: None,
            first_capacity,
        }
    }

    /// The batch for partition `p` of `queue`, created on first use.
    fn batch(&mut self, queue: &Arc<QueueHandle>, p: i32, remaining: usize) -> &mut PartitionBatch {
        let slot = match self.last {
            Some(last) if self.batches[last].is_for(queue, p) => last,
            _ => match self
                .index
                .get(queue.name.as_str())
                .and_then(|slots| slots.get(&p))
            {
                Some(&slot) => slot,
                None => {
                    let (bytes, records) = if self.batches.is_empty() {
                        (self.first_capacity, remaining)
                    } else {
                        (0, 0)
                    };
                    self.batches.push(PartitionBatch {
                        queue: Arc::clone(queue),
                        log: Arc::clone(&queue.partitions[p as usize]),
                        records: EncodedBatch::with_capacity(bytes, records),
                        indices: Vec::with_capacity(records),
                    });
                    let slot = self.batches.len() - 1;
                    self.index
                        .entry(queue.name.clone())
                        .or_default()
                        .insert(p, slot);
                    slot
                }
            },
        };
        self.last = Some(slot);
        &mut self.batches[slot]
    }
}

/// The most bytes reserved up front for encoding a call's records (larger calls grow the buffer).
const MAX_RESERVATION: usize = 64 << 20;

/// The bytes to reserve for encoding `messages`: their records' sizes, skipping bodies that
/// [`check_size`] will refuse, and at most [`MAX_RESERVATION`].
fn reservation(shared: &Shared, messages: &[Message]) -> usize {
    messages
        .iter()
        .filter(|m| m.data.len() <= shared.config.max_message_bytes)
        .map(|m| record::HEADER_LEN + record::encoded_len(m))
        .sum::<usize>()
        .min(MAX_RESERVATION)
}

fn send_blocking(shared: &Shared, messages: Vec<Message>, sticky: u32) -> Result<Vec<SendResult>> {
    let now = now_millis();
    // Validate and encode everything before writing anything: a bad message fails the whole
    // call and nothing is stored.
    let mut grouping = Grouping::new(reservation(shared, &messages));
    let mut delayed = Vec::new();
    let mut current: Option<(&str, Arc<QueueHandle>)> = None;
    for (i, m) in messages.iter().enumerate() {
        check_size(shared, m)?;
        // Messages of a call usually share a queue: look it up only when the name changes.
        let queue = match &mut current {
            Some((name, q)) if *name == m.destination() => &*q,
            slot => {
                &slot
                    .insert((m.destination(), shared.store.queue(m.destination())?))
                    .1
            }
        };
        let p = choose_partition(queue, m, sticky)?;
        if let Some(due) = staged::due_time(m, now) {
            delayed.push((i, Arc::clone(queue), p, due));
            continue;
        }
        let batch = grouping.batch(queue, p, messages.len() - i);
        batch.records.push_message(m, false);
        batch.indices.push(i);
    }
    let mut results: Vec<Option<SendResult>> = vec![None; messages.len()];
    let opts = shared.write_options();
    for PartitionBatch {
        queue,
        log,
        mut records,
        indices,
    } in grouping.batches
    {
        let (first, _) = log.append(&mut records, opts).inspect_err(|e| {
            if e.status() == OmsStatus::DESTINATION_NOT_FOUND {
                shared.store.forget(&queue.name);
            }
        })?;
        let name: Arc<str> = queue.name.as_str().into();
        for (j, i) in indices.into_iter().enumerate() {
            let offset = first + j as i64;
            results[i] = Some(SendResult {
                message_id: record::message_id(log.queue_id, log.partition, offset),
                queue: name.clone(),
                partition: log.partition,
                offset,
            });
        }
    }
    for (i, queue, p, due) in delayed {
        let mut m = messages[i].clone();
        let id = staged::new_id();
        m.header.message_id = Some(id.clone());
        let log = &queue.partitions[p as usize];
        staged::stage(
            log,
            &staged::delayed_name(due, &id),
            &m,
            shared.config.fsync == super::FsyncPolicy::Always,
        )?;
        results[i] = Some(SendResult {
            message_id: id,
            queue: queue.name.as_str().into(),
            partition: p,
            offset: -1,
        });
    }
    results
        .into_iter()
        .map(|r| r.ok_or_else(|| OmsError::storage("a message of the batch was not stored")))
        .collect()
}

/// Resolves the prepared transactions that no live producer holds, through `listener`.
/// Returns how many were committed or rolled back.
pub(crate) fn recover_transactions(
    shared: &Shared,
    listener: &dyn TransactionStateCheckListener,
) -> Result<usize> {
    let mut resolved = 0;
    for name in shared.store.list_queues(None)? {
        let queue = match shared.store.queue(&name) {
            Ok(q) => q,
            Err(e) if e.status() == OmsStatus::DESTINATION_NOT_FOUND => continue,
            Err(e) => return Err(e),
        };
        for log in &queue.partitions {
            for path in staged::prepared_files(log)? {
                let Some(lock) = staged::lock_prepared(&path)? else {
                    continue;
                };
                let message = match staged::read_staged(log, &path) {
                    Ok(Some(m)) => m,
                    Ok(None) => continue,
                    Err(err) => {
                        staged::quarantine(&path, &err);
                        continue;
                    }
                };
                let outcome = match listener.check(&message) {
                    TransactionState::Commit => {
                        finish_commit(shared, log, &path, &message).map(|_| 1)
                    }
                    TransactionState::Rollback => staged::discard(&path).map(|()| 1),
                    TransactionState::Unknown => Ok(0),
                };
                drop(lock);
                match outcome {
                    Ok(n) => resolved += n,
                    // One transaction that cannot be resolved now must not hold back the others.
                    Err(err) => {
                        tracing::warn!(%err, file = %path.display(), "cannot resolve an open transaction; will retry")
                    }
                }
            }
        }
    }
    resolved += batch::recover(shared, listener)?;
    Ok(resolved)
}

/// Encodes and stages a batch transaction (see `batch.rs`): the messages are grouped by
/// partition as a send would place them, with their ids and the transaction id set.
fn prepare_batch_blocking(
    shared: &Arc<Shared>,
    mut messages: Vec<Message>,
    sticky: u32,
) -> Result<batch::BatchTransaction> {
    let now = now_millis();
    let txid = staged::new_id();
    batch::assign_ids(&txid, &mut messages);
    let mut grouping = Grouping::new(reservation(shared, &messages));
    let mut current: Option<(&str, Arc<QueueHandle>)> = None;
    for (i, m) in messages.iter().enumerate() {
        check_size(shared, m)?;
        if staged::due_time(m, now).is_some() {
            return Err(OmsError::bad_parameter(format!(
                "message {i} of the batch for queue '{}' has a delay; a batch transaction cannot hold \
                 delayed messages: prepare it on its own (Producer::prepare) or drop its delay",
                m.destination()
            )));
        }
        let queue = match &mut current {
            Some((name, q)) if *name == m.destination() => &*q,
            slot => {
                &slot
                    .insert((m.destination(), shared.store.queue(m.destination())?))
                    .1
            }
        };
        let p = choose_partition(queue, m, sticky)?;
        let group = grouping.batch(queue, p, messages.len() - i);
        group.records.push_message(m, true);
        group.indices.push(i);
    }
    let mut order = vec![0u32; messages.len()];
    let groups = grouping
        .batches
        .into_iter()
        .enumerate()
        .map(|(g, b)| {
            for i in b.indices {
                order[i] = g as u32;
            }
            StagedGroup {
                queue: b.queue.name.clone(),
                partition: b.log.partition,
                records: b.records,
            }
        })
        .collect();
    batch::stage(shared, txid, groups, order)
}

/// Publishes a prepared message (or schedules it, if it is delayed); returns its offset, `-1`
/// when delayed.
fn finish_commit(
    shared: &Shared,
    log: &Arc<PartitionLog>,
    path: &std::path::Path,
    message: &Message,
) -> Result<i64> {
    if let Some(due) = staged::due_time(message, now_millis()) {
        let id = message.message_id().unwrap_or_default();
        let target = path.with_file_name(staged::delayed_name(due, id));
        std::fs::rename(path, &target).map_err(|e| OmsError::io("schedule", path, e))?;
        return Ok(-1);
    }
    staged::publish(log, path, shared.write_options())?.ok_or_else(|| {
        OmsError::transaction(
            OmsStatus::BAD_REQUEST,
            "the transaction was already resolved (committed or rolled back elsewhere)",
        )
    })
}

#[async_trait]
impl ProducerBackend for EmbeddedProducer {
    fn driver_name(&self) -> &str {
        "embedded"
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<SendResult>> {
        let sticky = self.round_robin.fetch_add(1, Ordering::Relaxed);
        if self.shared.config.fsync == super::FsyncPolicy::Always {
            // fsync takes milliseconds: keep it off the async worker threads.
            let shared = Arc::clone(&self.shared);
            return tokio::task::spawn_blocking(move || send_blocking(&shared, messages, sticky))
                .await
                .map_err(|e| OmsError::storage(format!("the send task failed: {e}")))?;
        }
        // Without fsync an append is a memory copy into the page cache: cheaper than a thread hop.
        send_blocking(&self.shared, messages, sticky)
    }

    async fn prepare(&self, mut message: Message) -> Result<Box<dyn PreparedTransaction>> {
        self.ensure_transactional()?;
        check_size(&self.shared, &message)?;
        let queue = self.shared.store.queue(message.destination())?;
        let sticky = self.round_robin.fetch_add(1, Ordering::Relaxed);
        let p = choose_partition(&queue, &message, sticky)?;
        let log = Arc::clone(&queue.partitions[p as usize]);
        let transaction_id = staged::new_id();
        message.header.message_id = Some(staged::new_id());
        message.extension_header.transaction_id = Some(transaction_id.clone());
        let fsync = self.shared.config.fsync == super::FsyncPolicy::Always;
        let (path, lock) = staged::stage_prepared(&log, &transaction_id, &message, fsync)?;
        Ok(Box::new(EmbeddedTransaction {
            shared: Arc::clone(&self.shared),
            log,
            path,
            lock,
            transaction_id,
            message,
        }))
    }

    /// One staged file for the whole batch, committed atomically; see `batch.rs`.
    async fn prepare_batch(&self, messages: Vec<Message>) -> Result<Box<dyn PreparedTransaction>> {
        self.ensure_transactional()?;
        if messages.is_empty() {
            return Err(OmsError::bad_parameter(
                "a batch transaction needs at least one message; prepare none instead",
            ));
        }
        let sticky = self.round_robin.fetch_add(1, Ordering::Relaxed);
        if self.shared.fsync() {
            // fsync takes milliseconds: keep it off the async worker threads.
            let shared = Arc::clone(&self.shared);
            let prepared = tokio::task::spawn_blocking(move || {
                prepare_batch_blocking(&shared, messages, sticky)
            })
            .await
            .map_err(|e| OmsError::storage(format!("the prepare task failed: {e}")))??;
            return Ok(Box::new(prepared));
        }
        Ok(Box::new(prepare_batch_blocking(
            &self.shared,
            messages,
            sticky,
        )?))
    }

    async fn start(&self) -> Result<()> {
        let Some(listener) = self.listener.clone() else {
            return Ok(());
        };
        recover_transactions(&self.shared, listener.as_ref())?;
        let shared = Arc::clone(&self.shared);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(TRANSACTION_CHECK_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(err) = recover_transactions(&shared, listener.as_ref()) {
                    tracing::warn!(%err, "checking open transactions failed; retrying later");
                }
            }
        });
        if let Some(old) = self
            .checker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(task)
        {
            old.abort();
        }
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        self.stop_checker();
        Ok(())
    }
}

impl Drop for EmbeddedProducer {
    fn drop(&mut self) {
        self.stop_checker();
    }
}

#[derive(Debug)]
struct EmbeddedTransaction {
    shared: Arc<Shared>,
    log: Arc<PartitionLog>,
    path: PathBuf,
    /// Held until the transaction is decided: it tells other processes the producer is alive.
    lock: File,
    transaction_id: String,
    message: Message,
}

#[async_trait]
impl PreparedTransaction for EmbeddedTransaction {
    fn transaction_id(&self) -> &str {
        &self.transaction_id
    }

    async fn commit(self: Box<Self>) -> Result<SendResult> {
        let offset = finish_commit(&self.shared, &self.log, &self.path, &self.message)?;
        drop(self.lock);
        Ok(SendResult {
            message_id: self.message.message_id().unwrap_or_default().to_string(),
            queue: Arc::from(&*self.log.queue),
            partition: self.log.partition,
            offset,
        })
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        staged::discard(&self.path)?;
        drop(self.lock);
        Ok(())
    }
}
