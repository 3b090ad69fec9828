//! The loop of an operator subtask that reads channels: input gate in, fused chain out.

use super::chain::Chain;
use super::clock::ProcessingClock;
use super::element::StreamElement;
use super::error::{Result, RuntimeError};
use super::gate::InputGate;
use super::source::wakeup;

/// Runs one subtask until every input has ended or something fails.
pub(crate) async fn run_operator<T: Send + 'static>(
    mut gate: InputGate<T>,
    mut chain: Box<dyn Chain<T>>,
    clock: ProcessingClock,
    task: String,
) -> Result<()> {
    chain.start().await?;
    loop {
        let next = tokio::select! {
            biased;
            _ = wakeup(chain.next_wakeup(), &clock) => {
                chain.on_processing_time(clock.now()).await?;
                continue;
            }
            next = gate.next() => next,
        };
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
