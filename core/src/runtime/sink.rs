//! Sinks: the end of a job. A sink subtask receives batches in order, with the watermarks,
//! barriers (pre-commit) and the end of input (flush).

use std::sync::Arc;

use async_trait::async_trait;

use super::chain::{Chain, OperatorMetrics};
use super::element::{Batch, CheckpointBarrier, EventTime, StreamElement};
use super::error::{BoxError, Result, RuntimeError};
use super::operator::SubtaskInfo;
use crate::checkpoint::Participant;

/// The end of a job for one subtask.
#[async_trait]
pub trait Sink<T>: Send + 'static {
    /// Called once before the first batch.
    async fn open(&mut self, subtask: &SubtaskInfo) -> std::result::Result<(), BoxError> {
        let _ = subtask;
        Ok(())
    }

    /// Writes one non-empty batch.
    async fn write_batch(&mut self, batch: Batch<T>) -> std::result::Result<(), BoxError>;

    /// The input watermark advanced.
    async fn on_watermark(&mut self, watermark: EventTime) -> std::result::Result<(), BoxError> {
        let _ = watermark;
        Ok(())
    }

    /// Everything before `barrier` has been written: make it durable or prepare it (the
    /// pre-commit of a two-phase commit). The default does nothing.
    async fn on_barrier(
        &mut self,
        barrier: &CheckpointBarrier,
    ) -> std::result::Result<(), BoxError> {
        let _ = barrier;
        Ok(())
    }

    /// The checkpoint of `epoch` is complete: commit what was prepared for it.
    async fn on_checkpoint_complete(&mut self, epoch: u64) -> std::result::Result<(), BoxError> {
        let _ = epoch;
        Ok(())
    }

    /// Every input ended: flush and release. Not called when the job fails.
    async fn finish(&mut self) -> std::result::Result<(), BoxError> {
        Ok(())
    }
}

/// A sink subtask as the last link of a chain.
pub(crate) struct SinkLink<T> {
    sink: Box<dyn Sink<T>>,
    info: SubtaskInfo,
    task: String,
    metrics: Arc<OperatorMetrics>,
    /// This subtask's part in checkpoints, when the job takes them.
    participant: Option<Participant>,
}

impl<T> SinkLink<T> {
    pub(crate) fn new(
        sink: Box<dyn Sink<T>>,
        info: SubtaskInfo,
        metrics: Arc<OperatorMetrics>,
        participant: Option<Participant>,
    ) -> Self {
        SinkLink {
            participant,
            sink,
            task: info.task_name(),
            info,
            metrics,
        }
    }
}

impl<T: Send + 'static> SinkLink<T> {
    /// The end of input. In a checkpointed job it is the sink's last barrier: what it wrote
    /// since the previous checkpoint is pre-committed, and committed once the job's final
    /// checkpoint (or a later periodic one) completes; then the sink finishes.
    async fn end(&mut self) -> Result<()> {
        let task = self.task.clone();
        let fail = |e| RuntimeError::task(&task, e);
        if let Some(participant) = &mut self.participant {
            let barrier = CheckpointBarrier {
                epoch: participant.current_epoch,
                triggered_at: crate::oms::now_millis(),
            };
            self.sink.on_barrier(&barrier).await.map_err(fail)?;
            participant.finished(None, Default::default());
            let Some(completed) = participant.wait_completed(barrier.epoch).await else {
                return Err(RuntimeError::Cancelled);
            };
            self.sink
                .on_checkpoint_complete(completed)
                .await
                .map_err(fail)?;
        }
        self.sink.finish().await.map_err(fail)
    }
}

#[async_trait]
impl<T: Send + 'static> Chain<T> for SinkLink<T> {
    async fn start(&mut self) -> Result<()> {
        let task = &self.task;
        self.sink
            .open(&self.info)
            .await
            .map_err(|e| RuntimeError::task(task, e))
    }

    async fn push(&mut self, element: StreamElement<T>) -> Result<()> {
        let result = match element {
            StreamElement::Data(batch) => {
                self.metrics.count_in(batch.len());
                self.sink.write_batch(batch).await
            }
            StreamElement::Watermark(watermark) => self.sink.on_watermark(watermark).await,
            StreamElement::Idle => Ok(()),
            StreamElement::Barrier(barrier) => {
                let result = self.sink.on_barrier(&barrier).await;
                if let (Ok(()), Some(participant)) = (&result, &mut self.participant) {
                    participant.ack(barrier.epoch, None, Default::default());
                }
                result
            }
            StreamElement::End => return self.end().await,
        };
        result.map_err(|e| RuntimeError::task(&self.task, e))
    }

    async fn checkpoint_complete(&mut self, epoch: u64) -> Result<()> {
        self.sink
            .on_checkpoint_complete(epoch)
            .await
            .map_err(|e| RuntimeError::task(&self.task, e))
    }

    fn next_wakeup(&self) -> Option<EventTime> {
        None
    }

    async fn on_processing_time(&mut self, _: EventTime) -> Result<()> {
        Ok(())
    }
}
