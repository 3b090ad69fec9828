//! The checkpoint coordinator: triggers epochs, collects acknowledgements, writes records,
//! and tells every subtask when a checkpoint is complete.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::{
    CheckpointConfig, CheckpointError, CheckpointRecord, CheckpointStore, JobFingerprint,
    SourceOffset,
};
use crate::runtime::{CheckpointBarrier, ProcessingClock, SourceCommand, SourcePositions};
use crate::state::{SnapshotStats, StateStore};

/// What subtasks tell the coordinator.
#[derive(Debug)]
pub(crate) enum CheckpointMessage {
    /// A participant passed the barrier of `epoch` (a source gives its positions).
    Ack {
        participant: usize,
        epoch: u64,
        positions: Option<SourcePositions>,
        stats: SnapshotStats,
    },
    /// How long a subtask waited to align the barrier of `epoch`.
    Alignment { epoch: u64, millis: u64 },
    /// A participant's input ended; it counts as acknowledging every later epoch.
    Finished {
        participant: usize,
        positions: Option<SourcePositions>,
        stats: SnapshotStats,
    },
}

#[derive(Debug, Clone)]
struct ParticipantInfo {
    task: String,
    /// The source operator, for a source subtask.
    source: Option<String>,
}

/// What building a checkpointed job hands to its subtasks.
#[derive(Debug)]
pub(crate) struct Wiring {
    sender: mpsc::UnboundedSender<CheckpointMessage>,
    completed: watch::Receiver<u64>,
    participants: Vec<ParticipantInfo>,
    /// The run's first epoch.
    pub(crate) first_epoch: u64,
    /// The checkpoint restored.
    pub(crate) restored: Option<CheckpointRecord>,
    /// Epochs abandoned by crashed runs.
    pub(crate) aborted: Vec<(u64, u64)>,
}

impl Wiring {
    pub(crate) fn new(
        sender: mpsc::UnboundedSender<CheckpointMessage>,
        completed: watch::Receiver<u64>,
        first_epoch: u64,
        restored: Option<CheckpointRecord>,
        aborted: Vec<(u64, u64)>,
    ) -> Self {
        Wiring {
            sender,
            completed,
            participants: Vec::new(),
            first_epoch,
            restored,
            aborted,
        }
    }

    /// Registers a subtask that must acknowledge every checkpoint.
    pub(crate) fn participant(&mut self, task: String, source: Option<String>) -> Participant {
        self.participants.push(ParticipantInfo { task, source });
        Participant {
            id: self.participants.len() - 1,
            sender: self.sender.clone(),
            completed: self.completed.clone(),
            current_epoch: self.first_epoch,
        }
    }

    /// A handle for a subtask that does not acknowledge (it only reports alignment times
    /// and learns of completed checkpoints).
    pub(crate) fn observer(&self) -> Observer {
        Observer {
            sender: self.sender.clone(),
            completed: self.completed.clone(),
        }
    }
}

/// What a channel-reading subtask needs of the protocol besides its links' participants.
#[derive(Debug, Clone)]
pub(crate) struct Observer {
    sender: mpsc::UnboundedSender<CheckpointMessage>,
    /// The latest completed epoch.
    pub(crate) completed: watch::Receiver<u64>,
}

impl Observer {
    /// Reports how long the subtask waited to align the barrier of `epoch`.
    pub(crate) fn alignment(&self, epoch: u64, millis: u64) {
        let _ = self
            .sender
            .send(CheckpointMessage::Alignment { epoch, millis });
    }
}

/// One subtask's side of the protocol.
#[derive(Debug)]
pub(crate) struct Participant {
    id: usize,
    sender: mpsc::UnboundedSender<CheckpointMessage>,
    completed: watch::Receiver<u64>,
    /// The epoch that what this subtask does now belongs to.
    pub(crate) current_epoch: u64,
}

impl Participant {
    /// Acknowledges the barrier of `epoch`.
    pub(crate) fn ack(
        &mut self,
        epoch: u64,
        positions: Option<SourcePositions>,
        stats: SnapshotStats,
    ) {
        let _ = self.sender.send(CheckpointMessage::Ack {
            participant: self.id,
            epoch,
            positions,
            stats,
        });
        self.current_epoch = epoch + 1;
    }

    /// Reports the end of this subtask's input.
    pub(crate) fn finished(&self, positions: Option<SourcePositions>, stats: SnapshotStats) {
        let _ = self.sender.send(CheckpointMessage::Finished {
            participant: self.id,
            positions,
            stats,
        });
    }

    /// Waits until a checkpoint at or after `epoch` is complete; returns its epoch. `None`
    /// when the coordinator is gone (the job is failing).
    pub(crate) async fn wait_completed(&mut self, epoch: u64) -> Option<u64> {
        self.completed
            .wait_for(|completed| *completed >= epoch)
            .await
            .ok()
            .map(|e| *e)
    }
}

/// An on-demand checkpoint request: answered with the record once complete.
pub(crate) type CheckpointRequest = oneshot::Sender<Result<CheckpointRecord, String>>;

struct Pending {
    epoch: u64,
    started: Instant,
    triggered_at: i64,
    acked: Vec<bool>,
    positions: Vec<Option<SourcePositions>>,
    stats: SnapshotStats,
    alignment_ms: u64,
    is_final: bool,
}

/// Drives the checkpoints of one run.
pub(crate) struct Coordinator {
    pub(crate) job: String,
    pub(crate) config: CheckpointConfig,
    pub(crate) checkpoints: CheckpointStore,
    pub(crate) state: Arc<StateStore>,
    pub(crate) fingerprint: JobFingerprint,
    pub(crate) clock: ProcessingClock,
    pub(crate) next_epoch: u64,
    pub(crate) messages: mpsc::UnboundedReceiver<CheckpointMessage>,
    pub(crate) requests: mpsc::UnboundedReceiver<CheckpointRequest>,
    pub(crate) completed: watch::Sender<u64>,
    pub(crate) source_commands: Vec<mpsc::UnboundedSender<SourceCommand>>,
    participants: Vec<ParticipantInfo>,
    finished: Vec<Option<(Option<SourcePositions>, SnapshotStats)>>,
    /// The positions last acknowledged by each source subtask (for a final checkpoint).
    pending: Option<Pending>,
    waiters: Vec<CheckpointRequest>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("job", &self.job)
            .field("next_epoch", &self.next_epoch)
            .finish()
    }
}

impl Coordinator {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        job: String,
        config: CheckpointConfig,
        checkpoints: CheckpointStore,
        state: Arc<StateStore>,
        fingerprint: JobFingerprint,
        clock: ProcessingClock,
        wiring: &Wiring,
        messages: mpsc::UnboundedReceiver<CheckpointMessage>,
        requests: mpsc::UnboundedReceiver<CheckpointRequest>,
        completed: watch::Sender<u64>,
        source_commands: Vec<mpsc::UnboundedSender<SourceCommand>>,
    ) -> Self {
        let participants = wiring.participants.clone();
        tracing::debug!(
            job = %job,
            participants = ?participants.iter().map(|p| p.task.as_str()).collect::<Vec<_>>(),
            "checkpoint coordinator started"
        );
        Coordinator {
            job,
            config,
            checkpoints,
            state,
            fingerprint,
            clock,
            next_epoch: wiring.first_epoch,
            messages,
            requests,
            completed,
            source_commands,
            finished: vec![None; participants.len()],
            participants,
            pending: None,
            waiters: Vec::new(),
        }
    }

    /// Runs until every participant has finished and the final checkpoint is written (or the
    /// job is aborted, which drops this future).
    pub(crate) async fn run(mut self) -> Result<(), CheckpointError> {
        let period = self.config.interval.unwrap_or(Duration::from_secs(3600));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let periodic = self.config.interval.is_some();
        loop {
            tokio::select! {
                _ = ticker.tick(), if periodic => {
                    if self.pending.is_none() {
                        self.trigger()?;
                    }
                }
                Some(request) = self.requests.recv() => {
                    self.waiters.push(request);
                    if self.pending.is_none() {
                        self.trigger()?;
                    }
                }
                message = self.messages.recv() => match message {
                    Some(message) => {
                        if self.handle(message).await? {
                            return Ok(());
                        }
                    }
                    None => return Ok(()),
                },
            }
        }
    }

    fn trigger(&mut self) -> Result<(), CheckpointError> {
        if self.finished.iter().all(Option::is_some) {
            return Ok(()); // the final checkpoint is on its way
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.state.set_last_triggered_epoch(epoch)?;
        let barrier = CheckpointBarrier {
            epoch,
            triggered_at: self.clock.now(),
        };
        self.pending = Some(self.new_pending(epoch, barrier.triggered_at, false));
        tracing::debug!(job = %self.job, epoch, "checkpoint triggered");
        for commands in &self.source_commands {
            let _ = commands.send(SourceCommand::Barrier(barrier));
        }
        Ok(())
    }

    fn new_pending(&self, epoch: u64, triggered_at: i64, is_final: bool) -> Pending {
        Pending {
            epoch,
            started: Instant::now(),
            triggered_at,
            acked: vec![false; self.participants.len()],
            positions: vec![None; self.participants.len()],
            stats: SnapshotStats::default(),
            alignment_ms: 0,
            is_final,
        }
    }

    /// Handles one message; true when the final checkpoint is done.
    async fn handle(&mut self, message: CheckpointMessage) -> Result<bool, CheckpointError> {
        match message {
            CheckpointMessage::Ack {
                participant,
                epoch,
                positions,
                stats,
            } => {
                if let Some(pending) = self.pending.as_mut().filter(|p| p.epoch == epoch) {
                    pending.acked[participant] = true;
                    pending.positions[participant] = positions;
                    pending.stats += stats;
                }
            }
            CheckpointMessage::Alignment { epoch, millis } => {
                if let Some(pending) = self.pending.as_mut().filter(|p| p.epoch == epoch) {
                    pending.alignment_ms = pending.alignment_ms.max(millis);
                }
            }
            CheckpointMessage::Finished {
                participant,
                positions,
                stats,
            } => {
                self.finished[participant] = Some((positions, stats));
                if let Some(pending) = self.pending.as_mut() {
                    pending.stats += stats;
                }
            }
        }
        let complete = self.pending.as_ref().is_some_and(|pending| {
            (0..self.participants.len()).all(|i| pending.acked[i] || self.finished[i].is_some())
        });
        if complete {
            let pending = self.pending.take().expect("pending");
            self.complete(pending).await?;
        }
        if self.pending.is_none() && self.finished.iter().all(Option::is_some) {
            // Every input ended: the final checkpoint covers everything.
            let epoch = self.next_epoch;
            self.next_epoch += 1;
            self.state.set_last_triggered_epoch(epoch)?;
            let pending = self.new_pending(epoch, self.clock.now(), true);
            self.complete(pending).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn complete(&mut self, pending: Pending) -> Result<(), CheckpointError> {
        let acknowledged = pending.started.elapsed();
        // The flush waits for the state writer to finish the snapshots' writes (hundreds of
        // milliseconds for a million changed keys): off the runtime's worker threads.
        let state = self.state.clone();
        match tokio::task::spawn_blocking(move || state.flush()).await {
            Ok(flushed) => flushed?,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        };
        let flushed = pending.started.elapsed();
        let mut sources = Vec::new();
        for (i, info) in self.participants.iter().enumerate() {
            let Some(operator) = &info.source else {
                continue;
            };
            let positions = match (&pending.positions[i], &self.finished[i]) {
                (Some(positions), _) => positions,
                (None, Some((Some(positions), _))) => positions,
                _ => continue,
            };
            for (queue, partition, offset) in positions {
                sources.push(SourceOffset {
                    operator: operator.clone(),
                    queue: queue.clone(),
                    partition: *partition,
                    offset: *offset,
                });
            }
        }
        let record = CheckpointRecord {
            epoch: pending.epoch,
            job: self.job.clone(),
            fingerprint: self.fingerprint.clone(),
            triggered_at: pending.triggered_at,
            duration_ms: pending.started.elapsed().as_millis() as u64,
            alignment_ms: pending.alignment_ms,
            state_entries: pending.stats.entries,
            // What the store's writer wrote for this checkpoint (snapshots only count entries).
            state_bytes: pending.stats.bytes + self.state.take_written_bytes(),
            store_bytes: self.state.size_on_disk()?,
            sources,
            is_final: pending.is_final,
        };
        self.checkpoints.write(&record)?;
        if let Some(floor) = self.checkpoints.retain(self.config.retained)? {
            self.state.set_floor(floor)?;
        }
        tracing::info!(
            job = %self.job,
            epoch = record.epoch,
            duration_ms = record.duration_ms,
            alignment_ms = record.alignment_ms,
            // Where the time went: trigger to every acknowledgement, the state store's flush,
            // the record's write and the cleanup of older checkpoints.
            acknowledged_ms = acknowledged.as_secs_f64() * 1e3,
            flush_ms = (flushed - acknowledged).as_secs_f64() * 1e3,
            record_ms = (pending.started.elapsed() - flushed).as_secs_f64() * 1e3,
            entries = record.state_entries,
            bytes = record.state_bytes,
            is_final = record.is_final,
            "checkpoint complete"
        );
        let _ = self.completed.send(record.epoch);
        for commands in &self.source_commands {
            let _ = commands.send(SourceCommand::CheckpointComplete(record.epoch));
        }
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(Ok(record.clone()));
        }
        Ok(())
    }
}
