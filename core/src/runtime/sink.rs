//! Sinks: the end of a job. A sink subtask receives batches in order, with the watermarks,
//! barriers (pre-commit) and the end of input (flush).

use std::sync::Arc;

use async_trait::async_trait;

use super::chain::{Chain, OperatorMetrics};
use super::element::{Batch, CheckpointBarrier, EventTime, StreamElement};
use super::error::{BoxError, Result, RuntimeError};
use super::operator::SubtaskInfo;

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
}

impl<T> SinkLink<T> {
    pub(crate) fn new(
        sink: Box<dyn Sink<T>>,
        info: SubtaskInfo,
        metrics: Arc<OperatorMetrics>,
    ) -> Self {
        SinkLink {
            sink,
            task: info.task_name(),
            info,
            metrics,
        }
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
            StreamElement::Barrier(barrier) => self.sink.on_barrier(&barrier).await,
            StreamElement::End => self.sink.finish().await,
        };
        result.map_err(|e| RuntimeError::task(&self.task, e))
    }

    fn next_wakeup(&self) -> Option<EventTime> {
        None
    }

    async fn on_processing_time(&mut self, _: EventTime) -> Result<()> {
        Ok(())
    }
}
