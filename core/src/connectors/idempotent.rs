//! Idempotent OMS sinks, for drivers without transactions: a write-ahead log in the sink's
//! keyed state, sent once per checkpoint with deterministic message ids.
//!
//! Turned on with [`OmsSinkConfig::idempotent`](super::OmsSinkConfig::idempotent) in a job
//! with checkpoints. An id can only name the same message every time it is sent if that
//! message is frozen by a checkpoint first, so each sink subtask:
//! 1. **logs** the records of the epoch in progress as messages (encoded as the at-least-once
//!    sink encodes them: body, key, properties), numbered from 0 per subtask and epoch (the
//!    *sequence*), in its keyed state `write-ahead`, in parts of at most [`PART_MESSAGES`]
//!    messages (or [`PART_BYTES`] of bodies): a part goes into the state when it is full;
//! 2. at the checkpoint barrier of epoch `n`, puts the open part into the state too; the
//!    runtime then snapshots the state with the checkpoint, which freezes the epoch's
//!    messages;
//! 3. once checkpoint `n` is complete, **sends** the parts of every epoch `<= n`, oldest
//!    first, each message with the property [`IDEMPOTENT_ID`] set to
//!    `{job}/{sink operator}/{subtask}/{epoch}/{sequence}` (the subtask that logged it, the
//!    epoch it belongs to), retrying as the sink's [`RetryPolicy`](super::RetryPolicy) says,
//!    and removes the parts from the state (a removal the next checkpoint records).
//!
//! Epochs are numbered as for [exactly-once sinks](super::exactly_once): records before the
//! run's first barrier belong to [`SubtaskInfo::first_epoch`], later ones to the last barrier
//! plus one.
//!
//! **Recovery.** The state of a restored checkpoint only holds parts of completed checkpoints
//! (the store never shows state of an epoch that did not complete), and among them those whose
//! removal no completed checkpoint recorded: their sending may have been cut short. Each
//! subtask of the restored run, when it opens, sends the parts of its key groups (whichever
//! subtask logged them and at whatever parallelism; the parts of one logging subtask share a
//! key group), ordered by epoch, logging subtask and part, with the ids they were logged with,
//! then removes them; only then does the run's first checkpoint complete. The records after
//! the restored checkpoint were never sent: the restored run writes them again, in its own
//! epochs.
//!
//! **What consumers see.** A checkpoint's messages become visible once it completes (as with
//! exactly-once), in (epoch, part, sequence) order per logging subtask. A message sent again
//! (by a restored run, or by a retried send whose first attempt was stored after all) is
//! byte-identical to the first copy and carries the same id. So the guarantee is
//! **exactly-once for consumers that drop messages whose id they have seen; at-least-once
//! otherwise, with duplicates only of the messages of checkpoints being sent when the job
//! stopped**. A deduplicating consumer (or a broker that drops repeated ids) must remember
//! the ids of the last checkpoints sent before a failure: copies come when the restored run
//! opens, before any message of its own. A run restored from an older checkpoint than the
//! latest ([`RestoreMode::Epoch`](crate::checkpoint::RestoreMode::Epoch), or a damaged newest
//! record) writes the output of the later checkpoints again under new ids, as every sink
//! would; so does a job started again from the final checkpoint of a finished run for that
//! checkpoint's messages (same ids), since their removal is never checkpointed.
//!
//! **Cost.** Every message is written to the state store once (and its removal once), and
//! the messages of the checkpoints not yet sent are kept in memory.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::{ConnectorError, QueueRole};
use super::exactly_once::DeliveryGuarantee;
use super::retry::Retrier;
use super::sink::OmsSinkConfig;
use crate::oms::{KeyValue, Message, Producer};
use crate::runtime::{
    Batch, BoxError, CheckpointBarrier, Data, Sink, SinkStateContext, SubtaskInfo,
};
use crate::state::{KeyedState, ValueState};

/// The property holding a message's id: `{job}/{sink operator}/{subtask}/{epoch}/{sequence}`
/// (see the [module docs](self)).
pub const IDEMPOTENT_ID: &str = "omstream.id";

/// The most messages one part of the write-ahead log holds.
pub const PART_MESSAGES: usize = 1024;

/// Once the bodies of a part reach this many bytes, it is full however few messages it holds.
pub const PART_BYTES: usize = 4 << 20;

/// The name of the sink's keyed state.
const WRITE_AHEAD: &str = "write-ahead";

/// Why an idempotent sink cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdempotentError {
    /// The job takes no checkpoints, so nothing would ever be sent.
    #[error(
        "the OMS sink '{sink}' is idempotent, and idempotent delivery needs checkpoints: \
         JobConfig::with_checkpoints(...); or make the sink at-least-once"
    )]
    NeedsCheckpoints {
        /// The sink operator.
        sink: String,
    },
    /// The sink was opened without its keyed state ([`Sink::init_state`] was not called).
    #[error(
        "the idempotent OMS sink '{sink}' was opened without its keyed state: call \
         Sink::init_state before Sink::open (the runtime does)"
    )]
    NoState {
        /// The sink operator.
        sink: String,
    },
}

/// Which part of the write-ahead log: the subtask that logged it, its epoch, its number in
/// the epoch.
///
/// Hashed on the logging subtask alone, so that all of a subtask's parts fall into one key
/// group: the one subtask that finds them after a restore sends them in order. (A subtask
/// holds few parts at once, so that they share a hash costs little.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct PartKey {
    origin: u32,
    epoch: u64,
    part: u32,
}

impl Hash for PartKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.origin.hash(state);
    }
}

/// One logged message: what [`OmsSinkConfig::message`] made of a record, and its sequence.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoggedMessage {
    seq: u64,
    body: Bytes,
    key: Option<String>,
    properties: KeyValue,
}

/// One subtask of an idempotent OMS sink.
pub(crate) struct IdempotentSink<T> {
    config: Arc<OmsSinkConfig<T>>,
    /// An empty message to the queue: cloning it shares the queue name instead of copying it.
    template: Message,
    producer: Option<Producer>,
    retrier: Retrier,
    /// `name[index/parallelism]`, for logs.
    task: String,
    /// `{job}/{sink}/`: the start of every id.
    id_prefix: String,
    index: u32,
    state: Option<Box<dyn ValueState<PartKey, Vec<LoggedMessage>>>>,
    /// The epoch the records written now belong to.
    epoch: u64,
    /// The sequence of the next record of the epoch.
    seq: u64,
    /// The number of the epoch's open part.
    part: u32,
    /// The open part.
    open: Vec<LoggedMessage>,
    open_bytes: usize,
    /// Parts of the epoch in progress already in the state.
    logged: Vec<PartKey>,
    /// Parts of epochs whose barrier passed, per barrier, until their checkpoint completes.
    pending: BTreeMap<u64, Vec<PartKey>>,
}

impl<T> IdempotentSink<T> {
    pub(crate) fn new(config: Arc<OmsSinkConfig<T>>) -> Self {
        let retrier = Retrier::new(
            config.retry_policy(),
            format!("sink of queue '{}'", config.queue()),
        );
        IdempotentSink {
            retrier,
            template: Message::new(config.queue(), Bytes::new()),
            config,
            producer: None,
            task: String::new(),
            id_prefix: String::new(),
            index: 0,
            state: None,
            epoch: 0,
            seq: 0,
            part: 0,
            open: Vec::new(),
            open_bytes: 0,
            logged: Vec::new(),
            pending: BTreeMap::new(),
        }
    }

    fn state(&mut self) -> Result<&mut dyn ValueState<PartKey, Vec<LoggedMessage>>, BoxError> {
        match self.state.as_mut() {
            Some(state) => Ok(state.as_mut()),
            None => Err("the idempotent OMS sink has no state (init_state was not called)".into()),
        }
    }

    /// Puts the open part into the state.
    fn log_open_part(&mut self) -> Result<(), BoxError> {
        if self.open.is_empty() {
            return Ok(());
        }
        let key = PartKey {
            origin: self.index,
            epoch: self.epoch,
            part: self.part,
        };
        let part = std::mem::take(&mut self.open);
        self.state()?.insert(key, part);
        self.logged.push(key);
        self.part += 1;
        self.open_bytes = 0;
        Ok(())
    }

    /// Sends one part of the log with its ids, then removes it from the state. Returns how
    /// many messages it held.
    async fn send_part(&mut self, key: PartKey) -> Result<usize, BoxError> {
        let template = self.template.clone();
        let prefix = self.id_prefix.clone();
        let messages: Vec<Message> = match self.state()?.get(&key) {
            Some(part) => part
                .iter()
                .map(|logged| message_of(&template, &prefix, &key, logged))
                .collect(),
            None => {
                return Err(format!(
                    "part {} of epoch {} of subtask {} is missing from the write-ahead state",
                    key.part, key.epoch, key.origin
                )
                .into())
            }
        };
        let count = messages.len();
        let producer = self
            .producer
            .as_ref()
            .ok_or("the OMS sink was not opened")?;
        // A retry sends the same messages again: a copy of an attempt that was stored after
        // all has the same id.
        self.retrier
            .run("send a checkpoint's messages", || {
                producer.send_batch(messages.clone())
            })
            .await
            .map_err(ConnectorError::oms(
                self.config.queue(),
                QueueRole::Sink,
                "write to",
            ))?;
        self.state()?.remove(&key);
        Ok(count)
    }

    /// Sends the parts of every epoch up to `epoch`, oldest first. On a failure the parts not
    /// sent yet are kept.
    async fn send_through(&mut self, epoch: u64) -> Result<usize, BoxError> {
        let later = match epoch.checked_add(1) {
            Some(next) => self.pending.split_off(&next),
            None => BTreeMap::new(),
        };
        let mut due = std::mem::replace(&mut self.pending, later).into_iter();
        let mut sent = 0;
        while let Some((e, keys)) = due.next() {
            for (i, &key) in keys.iter().enumerate() {
                match self.send_part(key).await {
                    Ok(count) => sent += count,
                    Err(error) => {
                        self.pending.insert(e, keys[i..].to_vec());
                        self.pending.extend(due);
                        return Err(error);
                    }
                }
            }
        }
        Ok(sent)
    }

    /// After a restore: sends every part the state holds in this subtask's key groups (parts
    /// of completed checkpoints whose sending may not have finished), then removes them.
    async fn send_restored(&mut self) -> Result<(), BoxError> {
        let mut keys = self.state()?.keys();
        if keys.is_empty() {
            return Ok(());
        }
        keys.sort_by_key(|k| (k.epoch, k.origin, k.part));
        let mut sent = 0;
        for &key in &keys {
            sent += self.send_part(key).await?;
        }
        tracing::info!(
            sink = %self.task,
            parts = keys.len(),
            messages = sent,
            "sent again the messages of completed checkpoints whose sending may not have \
             finished before the restore (same ids)"
        );
        Ok(())
    }
}

/// The message a logged one is sent as: its body, key and properties, and its id last (so
/// that no record property can pass for it).
fn message_of(template: &Message, prefix: &str, key: &PartKey, logged: &LoggedMessage) -> Message {
    let mut message = template.clone();
    message.data = logged.body.clone();
    message.extension_header.message_key = logged.key.clone();
    message.properties = logged.properties.clone();
    message.properties.put(
        IDEMPOTENT_ID,
        format!("{prefix}{}/{}/{}", key.origin, key.epoch, logged.seq),
    );
    message
}

#[async_trait]
impl<T: Data> Sink<T> for IdempotentSink<T> {
    /// Creates the write-ahead state.
    fn init_state(&mut self, states: &SinkStateContext) -> Result<(), BoxError> {
        self.state = Some(states.value_state(WRITE_AHEAD));
        Ok(())
    }

    fn keyed_state(&mut self) -> Vec<&mut dyn KeyedState> {
        match self.state.as_mut() {
            Some(state) => vec![state.as_mut() as &mut dyn KeyedState],
            None => Vec::new(),
        }
    }

    /// Refuses a job without checkpoints, checks that the queue exists, starts a producer,
    /// and after a restore sends what the restored state still holds.
    async fn open(&mut self, subtask: &SubtaskInfo) -> Result<(), BoxError> {
        self.task = subtask.task_name();
        if !subtask.checkpointing {
            return Err(IdempotentError::NeedsCheckpoints {
                sink: subtask.operator.clone(),
            }
            .into());
        }
        if self.state.is_none() {
            return Err(IdempotentError::NoState {
                sink: subtask.operator.clone(),
            }
            .into());
        }
        tracing::info!(
            sink = %self.task,
            queue = %self.config.queue(),
            guarantee = %DeliveryGuarantee::Idempotent,
            restored_epoch = ?subtask.restored_epoch,
            "opening an OMS sink"
        );
        self.id_prefix = format!("{}/{}/", subtask.job, subtask.operator);
        self.index = u32::try_from(subtask.index)?;
        let config = self.config.clone();
        config.check_queue(&mut self.retrier, &self.task).await?;
        self.producer = Some(config.start_producer(&mut self.retrier).await?);
        self.epoch = subtask.first_epoch;
        self.seq = 0;
        self.part = 0;
        if subtask.restored_epoch.is_some() {
            self.send_restored().await?;
        }
        Ok(())
    }

    /// Logs the records, putting each part into the state when it is full.
    async fn write_batch(&mut self, batch: Batch<T>) -> Result<(), BoxError> {
        for record in batch {
            let message = self.config.message(&self.template, &record.value)?;
            self.open_bytes += message.data.len();
            self.open.push(LoggedMessage {
                seq: self.seq,
                body: message.data,
                key: message.extension_header.message_key,
                properties: message.properties,
            });
            self.seq += 1;
            if self.open.len() >= PART_MESSAGES || self.open_bytes >= PART_BYTES {
                self.log_open_part()?;
            }
        }
        Ok(())
    }

    /// Puts the open part into the state (which the runtime snapshots next) and sets the
    /// epoch's parts aside until its checkpoint completes.
    async fn on_barrier(&mut self, barrier: &CheckpointBarrier) -> Result<(), BoxError> {
        self.log_open_part()?;
        if !self.logged.is_empty() {
            let parts = std::mem::take(&mut self.logged);
            self.pending.entry(barrier.epoch).or_default().extend(parts);
        }
        self.epoch = barrier.epoch + 1;
        self.seq = 0;
        self.part = 0;
        Ok(())
    }

    /// Sends the messages of every epoch up to `epoch`.
    async fn on_checkpoint_complete(&mut self, epoch: u64) -> Result<(), BoxError> {
        let sent = self.send_through(epoch).await?;
        tracing::debug!(sink = %self.task, epoch, messages = sent, "sent");
        Ok(())
    }

    /// Sends what no completed checkpoint covered (normally nothing), then stops the
    /// producer.
    async fn finish(&mut self) -> Result<(), BoxError> {
        self.log_open_part()?;
        if !self.logged.is_empty() {
            let parts = std::mem::take(&mut self.logged);
            self.pending.entry(self.epoch).or_default().extend(parts);
        }
        if !self.pending.is_empty() {
            let sent = self.send_through(u64::MAX).await?;
            tracing::warn!(
                sink = %self.task,
                messages = sent,
                "the input ended with records no completed checkpoint covers; the job succeeded, \
                 so they were sent (a restore from an earlier checkpoint would write them again, \
                 under other ids)"
            );
        }
        Ok(self.config.stop_producer(self.producer.take()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{key_group, stable_hash};

    #[test]
    fn the_parts_of_one_subtask_share_a_key_group() {
        let group = |origin, epoch, part| {
            key_group(stable_hash(&PartKey {
                origin,
                epoch,
                part,
            }))
        };
        for origin in 0..8 {
            let first = group(origin, 1, 0);
            for (epoch, part) in [(1, 1), (2, 0), (900, 17)] {
                assert_eq!(group(origin, epoch, part), first);
            }
        }
        assert!(
            (0..8).map(|o| group(o, 1, 0)).any(|g| g != group(0, 1, 0)),
            "different subtasks spread over key groups"
        );
    }

    #[test]
    fn a_logged_message_is_sent_with_its_id_last() {
        let template = Message::new("out", Bytes::new());
        let logged = LoggedMessage {
            seq: 41,
            body: Bytes::from_static(b"{}"),
            key: Some("k".into()),
            properties: KeyValue::new().with("a", "1").with(IDEMPOTENT_ID, "forged"),
        };
        let key = PartKey {
            origin: 2,
            epoch: 7,
            part: 0,
        };
        let message = message_of(&template, "job/out-sink/", &key, &logged);
        assert_eq!(
            message.properties.get_str(IDEMPOTENT_ID),
            Some("job/out-sink/2/7/41")
        );
        assert_eq!(message.properties.get_str("a"), Some("1"));
        assert_eq!(message.extension_header.message_key.as_deref(), Some("k"));
        assert_eq!(&message.data[..], b"{}");
        assert_eq!(&*message.header.destination, "out");
    }
}
