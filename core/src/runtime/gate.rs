//! The receiving side of a subtask with channel inputs: merges them, takes the minimum of their
//! watermarks, leaves idle inputs out of it, aligns checkpoint barriers and ends when all have.

use std::future::poll_fn;
use std::task::Poll;

use tokio::sync::mpsc;

use super::element::{CheckpointBarrier, EventTime, StreamElement, MIN_WATERMARK};

#[derive(Debug)]
struct InputState {
    watermark: EventTime,
    idle: bool,
    ended: bool,
    /// Delivered the barrier being aligned; read no more from it until alignment completes.
    blocked: bool,
}

/// Merges the channels into one subtask's input.
#[derive(Debug)]
pub(crate) struct InputGate<T> {
    receivers: Vec<mpsc::Receiver<StreamElement<T>>>,
    inputs: Vec<InputState>,
    /// The last watermark passed on; what is passed on only grows.
    emitted_watermark: EventTime,
    emitted_idle: bool,
    aligning: Option<CheckpointBarrier>,
    /// When the first input delivered the barrier being aligned.
    aligning_since: Option<std::time::Instant>,
    /// How long the last aligned barrier waited for all inputs.
    last_alignment: Option<std::time::Duration>,
    /// Where the next poll starts, so one busy input cannot starve the others.
    start: usize,
    ended: bool,
}

impl<T> InputGate<T> {
    pub(crate) fn new(receivers: Vec<mpsc::Receiver<StreamElement<T>>>) -> Self {
        let inputs = receivers
            .iter()
            .map(|_| InputState {
                watermark: MIN_WATERMARK,
                idle: false,
                ended: false,
                blocked: false,
            })
            .collect();
        InputGate {
            receivers,
            inputs,
            emitted_watermark: MIN_WATERMARK,
            emitted_idle: false,
            aligning: None,
            aligning_since: None,
            last_alignment: None,
            start: 0,
            ended: false,
        }
    }

    /// The next element for the subtask; `End` once every input has ended, `None` after that.
    /// A closed channel without `End` means the sender failed: `Err(())`, the job is stopping.
    /// Cancel-safe: state changes only when an element has been received.
    pub(crate) async fn next(&mut self) -> Option<Result<StreamElement<T>, ()>> {
        if self.ended {
            return None;
        }
        loop {
            let (index, element) = match self.receive().await {
                Ok(received) => received,
                Err(()) => return Some(Err(())),
            };
            if let Some(out) = self.handle(index, element) {
                return Some(Ok(out));
            }
        }
    }

    /// How long the barrier just returned waited for every input to deliver it.
    pub(crate) fn last_alignment(&self) -> Option<std::time::Duration> {
        self.last_alignment
    }

    async fn receive(&mut self) -> Result<(usize, StreamElement<T>), ()> {
        let count = self.receivers.len();
        poll_fn(|cx| {
            for step in 0..count {
                let index = (self.start + step) % count;
                let state = &self.inputs[index];
                if state.ended || state.blocked {
                    continue;
                }
                match self.receivers[index].poll_recv(cx) {
                    Poll::Ready(Some(element)) => {
                        self.start = (index + 1) % count;
                        return Poll::Ready(Ok((index, element)));
                    }
                    Poll::Ready(None) => return Poll::Ready(Err(())),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Updates the input's state; returns what the subtask should see, if anything.
    fn handle(&mut self, index: usize, element: StreamElement<T>) -> Option<StreamElement<T>> {
        match element {
            StreamElement::Data(batch) => {
                self.inputs[index].idle = false;
                self.emitted_idle = false;
                Some(StreamElement::Data(batch))
            }
            StreamElement::Watermark(watermark) => {
                let input = &mut self.inputs[index];
                input.idle = false;
                input.watermark = input.watermark.max(watermark);
                self.combined_watermark()
            }
            StreamElement::Idle => {
                self.inputs[index].idle = true;
                self.combined_watermark()
            }
            StreamElement::Barrier(barrier) => {
                self.inputs[index].blocked = true;
                self.aligning_since
                    .get_or_insert_with(std::time::Instant::now);
                self.aligning = Some(match self.aligning {
                    Some(current) if current.epoch >= barrier.epoch => current,
                    _ => barrier,
                });
                self.barrier_if_aligned()
            }
            StreamElement::End => {
                self.inputs[index].ended = true;
                if self.inputs.iter().all(|i| i.ended) {
                    self.ended = true;
                    return Some(StreamElement::End);
                }
                // An ended input no longer holds back a barrier or the watermark.
                self.barrier_if_aligned()
                    .or_else(|| self.combined_watermark())
            }
        }
    }

    fn barrier_if_aligned(&mut self) -> Option<StreamElement<T>> {
        let barrier = self.aligning?;
        if self.inputs.iter().all(|i| i.blocked || i.ended) {
            self.aligning = None;
            self.last_alignment = self.aligning_since.take().map(|since| since.elapsed());
            for input in &mut self.inputs {
                input.blocked = false;
            }
            return Some(StreamElement::Barrier(barrier));
        }
        None
    }

    /// The minimum watermark over active inputs, when it moved; `Idle` when all are idle.
    fn combined_watermark(&mut self) -> Option<StreamElement<T>> {
        let active = self.inputs.iter().filter(|i| !i.ended && !i.idle);
        match active.map(|i| i.watermark).min() {
            Some(min) if min > self.emitted_watermark => {
                self.emitted_watermark = min;
                self.emitted_idle = false;
                Some(StreamElement::Watermark(min))
            }
            Some(_) => None,
            None if !self.emitted_idle && self.inputs.iter().any(|i| !i.ended) => {
                self.emitted_idle = true;
                Some(StreamElement::Idle)
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(inputs: usize) -> (Vec<mpsc::Sender<StreamElement<u32>>>, InputGate<u32>) {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..inputs).map(|_| mpsc::channel(16)).unzip();
        (senders, InputGate::new(receivers))
    }

    async fn next(gate: &mut InputGate<u32>) -> StreamElement<u32> {
        gate.next().await.expect("open").expect("no failure")
    }

    #[tokio::test]
    async fn the_watermark_is_the_minimum_of_the_inputs_and_only_grows() {
        let (tx, mut gate) = gate(2);
        tx[0].send(StreamElement::Watermark(10)).await.unwrap();
        tx[1].send(StreamElement::Watermark(5)).await.unwrap();
        tx[1].send(StreamElement::Watermark(20)).await.unwrap();
        assert_eq!(next(&mut gate).await, StreamElement::Watermark(5));
        assert_eq!(next(&mut gate).await, StreamElement::Watermark(10));
        tx[0].send(StreamElement::Watermark(30)).await.unwrap();
        assert_eq!(next(&mut gate).await, StreamElement::Watermark(20));
    }

    #[tokio::test]
    async fn an_idle_input_does_not_hold_the_watermark_back() {
        let (tx, mut gate) = gate(2);
        tx[0].send(StreamElement::Idle).await.unwrap();
        tx[1].send(StreamElement::Watermark(7)).await.unwrap();
        assert_eq!(next(&mut gate).await, StreamElement::Watermark(7));
        tx[1].send(StreamElement::Idle).await.unwrap();
        assert_eq!(next(&mut gate).await, StreamElement::Idle);
        // Back from idleness below the emitted watermark: nothing goes backwards.
        tx[0].send(StreamElement::Watermark(3)).await.unwrap();
        tx[0].send(StreamElement::Watermark(9)).await.unwrap();
        assert_eq!(next(&mut gate).await, StreamElement::Watermark(9));
    }

    #[tokio::test]
    async fn barriers_are_aligned_and_the_fast_input_waits() {
        let (tx, mut gate) = gate(2);
        let barrier = CheckpointBarrier {
            epoch: 1,
            triggered_at: 0,
        };
        tx[0].send(StreamElement::Barrier(barrier)).await.unwrap();
        tx[0]
            .send(StreamElement::Data(vec![
                super::super::element::Record::new(0, 1),
            ]))
            .await
            .unwrap();
        tx[1]
            .send(StreamElement::Data(vec![
                super::super::element::Record::new(0, 2),
            ]))
            .await
            .unwrap();
        tx[1].send(StreamElement::Barrier(barrier)).await.unwrap();
        // Input 0's record after the barrier must not overtake input 1's record before it.
        let StreamElement::Data(batch) = next(&mut gate).await else {
            panic!()
        };
        assert_eq!(batch[0].value, 2);
        assert_eq!(next(&mut gate).await, StreamElement::Barrier(barrier));
        let StreamElement::Data(batch) = next(&mut gate).await else {
            panic!()
        };
        assert_eq!(batch[0].value, 1);
    }

    #[tokio::test]
    async fn the_gate_ends_when_every_input_has_and_reports_a_vanished_sender() {
        let (tx, mut gate) = gate(2);
        tx[0].send(StreamElement::End).await.unwrap();
        tx[1].send(StreamElement::Watermark(4)).await.unwrap();
        assert_eq!(next(&mut gate).await, StreamElement::Watermark(4));
        tx[1].send(StreamElement::End).await.unwrap();
        assert_eq!(next(&mut gate).await, StreamElement::End);
        assert!(gate.next().await.is_none());

        let (tx, mut gate) = super::tests::gate(1);
        drop(tx);
        assert_eq!(gate.next().await, Some(Err(())));
    }
}
