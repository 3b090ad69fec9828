//! The loop of an operator subtask that reads channels: input gate in, fused chain out.

use super::chain::Chain;
use super::clock::ProcessingClock;
use super::element::StreamElement;
use super::error::{Result, RuntimeError};
use super::gate::InputGate;
use super::source::wakeup;
use crate::checkpoint::Observer;

/// Runs one subtask until every input has ended or something fails.
pub(crate) async fn run_operator<T: Send + 'static>(
    mut gate: InputGate<T>,
    mut chain: Box<dyn Chain<T>>,
    clock: ProcessingClock,
    task: String,
    mut observer: Option<Observer>,
) -> Result<()> {
    chain.start().await?;
    loop {
        let next = tokio::select! {
            biased;
            _ = wakeup(chain.next_wakeup(), &clock) => {
                chain.on_processing_time(clock.now()).await?;
                continue;
            }
            completed = completed_checkpoint(&mut observer) => {
                match completed {
                    Some(epoch) => chain.checkpoint_complete(epoch).await?,
                    None => observer = None,
                }
                continue;
            }
            next = gate.next() => next,
        };
        if let (Some(Ok(StreamElement::Barrier(barrier))), Some(observer)) = (&next, &observer) {
            if let Some(waited) = gate.last_alignment() {
                observer.alignment(barrier.epoch, waited.as_millis() as u64);
            }
        }
        match next {
            None => return Ok(()),
            Some(Err(())) => return Err(RuntimeError::Disconnected(task)),
            Some(Ok(element)) => {
                let end = matches!(element, StreamElement::End);
                chain.push(element).await?;
                if end {
                    return Ok(());
                }
            }
        }
    }
}

/// The next completed checkpoint; `None` once the coordinator is gone; pending forever without
/// checkpoints.
async fn completed_checkpoint(observer: &mut Option<Observer>) -> Option<u64> {
    match observer {
        Some(observer) => match observer.completed.changed().await {
            Ok(()) => Some(*observer.completed.borrow_and_update()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}
