//! Running a job: spawn its subtasks, wait for them, stop them, report.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinSet;

use super::chain::{panic_message, OperatorMetrics};
use super::clock::ProcessingClock;
use super::element::CheckpointBarrier;
use super::error::{Result, RuntimeError};
use super::graph::StreamEnv;
use super::source::{JobEnd, SourceCommand};
use crate::checkpoint::{prepare_run, CheckpointRecord, CheckpointRequest, Coordinator, Wiring};
use crate::state::StateBackend;

/// Records counted at one operator over a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorReport {
    /// The operator's name.
    pub name: String,
    /// Records in (0 for sources).
    pub records_in: u64,
    /// Records out (0 for sinks).
    pub records_out: u64,
}

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// Wall-clock time from start to the last subtask's end.
    pub elapsed: Duration,
    /// Per operator, in the order they were added.
    pub operators: Vec<OperatorReport>,
}

impl JobReport {
    /// The report of the operator called `name`.
    pub fn operator(&self, name: &str) -> Option<&OperatorReport> {
        self.operators.iter().find(|o| o.name == name)
    }
}

/// A running job.
#[derive(Debug)]
pub struct JobHandle {
    tasks: JoinSet<Result<()>>,
    names: HashMap<tokio::task::Id, String>,
    stop: watch::Sender<bool>,
    source_commands: Vec<mpsc::UnboundedSender<SourceCommand>>,
    metrics: Vec<(String, Arc<OperatorMetrics>)>,
    started: std::time::Instant,
    clock: ProcessingClock,
    sources_ended: Arc<AtomicUsize>,
    source_ended_notify: Arc<Notify>,
    succeeded: watch::Sender<bool>,
    checkpoint_requests: Option<mpsc::UnboundedSender<CheckpointRequest>>,
}

impl StreamEnv {
    /// Starts the job on the current tokio runtime and returns at once.
    pub fn spawn(&self) -> Result<JobHandle> {
        let clock = ProcessingClock::start();
        let (stop, stop_receiver) = watch::channel(false);
        let (succeeded, succeeded_receiver) = watch::channel(false);
        let job_end = JobEnd {
            sources_ended: Arc::new(AtomicUsize::new(0)),
            notify: Arc::new(Notify::new()),
            succeeded: succeeded_receiver,
        };
        let (sources_ended, source_ended_notify) =
            (job_end.sources_ended.clone(), job_end.notify.clone());
        let config = self.config();
        // A checkpointed job restores its state directory before it is built, so that its
        // subtasks start from the restored state and offsets.
        let mut checkpointing = None;
        let mut wiring = None;
        if let Some(checkpoints) = &config.checkpoints {
            let fingerprint = self.fingerprint();
            let run = prepare_run(checkpoints, &config.name, &fingerprint)?;
            let (messages, messages_receiver) = mpsc::unbounded_channel();
            let restored = run.restored.as_ref().map_or(0, |r| r.epoch);
            let (completed, completed_receiver) = watch::channel(restored);
            wiring = Some((
                Wiring::new(
                    messages,
                    completed_receiver,
                    run.first_epoch,
                    run.restored.clone(),
                    run.state.aborted_epochs(),
                ),
                StateBackend::Durable(run.backend.clone()),
            ));
            checkpointing = Some((
                run,
                messages_receiver,
                completed,
                checkpoints.clone(),
                fingerprint,
            ));
        }
        let mut built = self.build(clock, stop_receiver, job_end, wiring)?;
        let metrics = self.lock().metrics.clone();
        let mut tasks = JoinSet::new();
        let mut names = HashMap::new();
        for (name, future) in std::mem::take(&mut built.tasks) {
            let handle = tasks.spawn(future);
            names.insert(handle.id(), name);
        }
        let mut checkpoint_requests = None;
        if let (Some((run, messages, completed, checkpoints, fingerprint)), Some(wiring)) =
            (checkpointing, built.checkpoint.take())
        {
            let (requests, requests_receiver) = mpsc::unbounded_channel();
            let coordinator = Coordinator::new(
                config.name.clone(),
                checkpoints,
                run.checkpoints,
                run.state,
                fingerprint,
                clock,
                &wiring,
                messages,
                requests_receiver,
                completed,
                built.source_commands.clone(),
            );
            // The coordinator hears from the subtasks only: once they are all gone, so is it.
            drop(wiring);
            let handle = tasks.spawn(async move { coordinator.run().await.map_err(Into::into) });
            names.insert(handle.id(), "checkpoint-coordinator".to_string());
            checkpoint_requests = Some(requests);
        }
        tracing::info!(job = %built.config.name, subtasks = names.len(), "job started");
        Ok(JobHandle {
            tasks,
            names,
            stop,
            source_commands: built.source_commands,
            metrics,
            started: std::time::Instant::now(),
            clock,
            sources_ended,
            source_ended_notify,
            succeeded,
            checkpoint_requests,
        })
    }

    /// Runs the job until its inputs end (or it fails) and reports.
    pub async fn execute(&self) -> Result<JobReport> {
        self.spawn()?.join().await
    }
}

impl JobHandle {
    /// Asks every source to end its input: the job drains, windows fire, sinks finish, and
    /// [`join`](JobHandle::join) returns the report.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Injects checkpoint barrier `epoch` at every source. (The checkpoint coordinator uses
    /// this; the barrier flows and aligns through the job.)
    pub fn inject_barrier(&self, epoch: u64) {
        let barrier = CheckpointBarrier {
            epoch,
            triggered_at: self.clock.now(),
        };
        for commands in &self.source_commands {
            let _ = commands.send(SourceCommand::Barrier(barrier));
        }
    }

    /// Takes a checkpoint now (or joins the one in progress) and returns its record once it
    /// is complete. Fails when the job has no checkpoints configured or has ended.
    pub async fn checkpoint(&self) -> Result<CheckpointRecord> {
        let requests = self.checkpoint_requests.as_ref().ok_or_else(|| {
            RuntimeError::InvalidConfig(
                "the job takes no checkpoints; set JobConfig::with_checkpoints".to_string(),
            )
        })?;
        let (answer, answered) = oneshot::channel();
        requests
            .send(answer)
            .map_err(|_| RuntimeError::InvalidJob("the job has ended".to_string()))?;
        answered
            .await
            .map_err(|_| {
                RuntimeError::InvalidJob(
                    "the job ended before the checkpoint completed".to_string(),
                )
            })?
            .map_err(RuntimeError::InvalidJob)
    }

    /// Records counted so far, per operator.
    pub fn operators(&self) -> Vec<OperatorReport> {
        self.metrics
            .iter()
            .map(|(name, m)| OperatorReport {
                name: name.clone(),
                records_in: m.records_in.load(Ordering::Relaxed),
                records_out: m.records_out.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Stops every subtask at once, without draining.
    pub fn abort(&mut self) {
        self.tasks.abort_all();
    }

    /// Waits for the job. When one subtask fails, every other one is stopped and the first
    /// error that is a cause (not the echo of a closed channel) is returned.
    pub async fn join(mut self) -> Result<JobReport> {
        let mut errors: Vec<RuntimeError> = Vec::new();
        let sources = self.source_commands.len();
        let others = self.tasks.len() - sources;
        let mut finished = 0usize;
        loop {
            // Every source's input ended and every other subtask finished: what the sources
            // emitted is written, so they may commit (`Source::on_job_success`) and end.
            if errors.is_empty()
                && !*self.succeeded.borrow()
                && finished == others
                && self.sources_ended.load(AtomicOrdering::SeqCst) == sources
            {
                let _ = self.succeeded.send(true);
            }
            let joined = tokio::select! {
                joined = self.tasks.join_next_with_id() => joined,
                _ = self.source_ended_notify.notified() => continue,
            };
            let Some(joined) = joined else { break };
            let error = match joined {
                Ok((_, Ok(()))) => {
                    finished += 1;
                    continue;
                }
                Ok((_, Err(error))) => error,
                Err(join_error) => {
                    let task = self
                        .names
                        .get(&join_error.id())
                        .cloned()
                        .unwrap_or_default();
                    if join_error.is_cancelled() {
                        RuntimeError::Cancelled
                    } else {
                        let message = panic_message(join_error.into_panic().as_ref());
                        RuntimeError::Panicked { task, message }
                    }
                }
            };
            if errors.is_empty() {
                tracing::error!(%error, "job failed; stopping every subtask");
                self.tasks.abort_all();
            }
            errors.push(error);
        }
        if !errors.is_empty() {
            let cause = errors.iter().position(|e| !e.is_consequence()).unwrap_or(0);
            return Err(errors.swap_remove(cause));
        }
        Ok(JobReport {
            elapsed: self.started.elapsed(),
            operators: self.operators(),
        })
    }
}
