//! `produce --rate`: spacing sends so that at most N messages go out per second.

use std::time::Duration;

use tokio::time::Instant;

/// Paces sends: each message takes `1/rate` seconds of budget, and a send waits (asleep, not
/// spinning) until the budget of the messages before it has elapsed. Idle time earns no credit,
/// so a pause in the input is not followed by a burst.
#[derive(Debug)]
pub(crate) struct Pacer {
    rate: u64,
    next: Option<Instant>,
}

impl Pacer {
    /// A pacer for `rate` messages per second (at least 1).
    pub(crate) fn new(rate: u64) -> Self {
        Self {
            rate: rate.max(1),
            next: None,
        }
    }

    /// How many messages to send per call: about a tenth of a second's worth, so that the rate
    /// is smooth rather than one large batch then a long sleep.
    pub(crate) fn chunk(&self, batch: usize) -> usize {
        usize::try_from(self.rate / 10)
            .unwrap_or(usize::MAX)
            .clamp(1, batch.max(1))
    }

    /// Reserves the budget of `n` messages at `now`; returns when they may be sent.
    fn reserve(&mut self, n: usize, now: Instant) -> Instant {
        let at = self.next.map_or(now, |next| next.max(now));
        let nanos =
            (n as u128 * 1_000_000_000 / u128::from(self.rate)).min(u64::MAX as u128) as u64;
        self.next = Some(at + Duration::from_nanos(nanos));
        at
    }

    /// Waits until `n` more messages may be sent.
    pub(crate) async fn wait(&mut self, n: usize) {
        let at = self.reserve(n, Instant::now());
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_costs_one_over_the_rate() {
        let mut pacer = Pacer::new(100);
        let t0 = Instant::now();
        assert_eq!(pacer.reserve(10, t0), t0);
        assert_eq!(pacer.reserve(10, t0), t0 + Duration::from_millis(100));
        assert_eq!(pacer.reserve(1, t0), t0 + Duration::from_millis(200));
        // After a pause, sending resumes at once but without a burst of saved-up budget.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(pacer.reserve(10, later), later);
        assert_eq!(pacer.reserve(10, later), later + Duration::from_millis(100));
    }

    #[test]
    fn chunks_are_a_tenth_of_a_second() {
        assert_eq!(Pacer::new(5).chunk(1000), 1);
        assert_eq!(Pacer::new(2000).chunk(1000), 200);
        assert_eq!(Pacer::new(1_000_000).chunk(1000), 1000);
    }
}
