//! Riding out a messaging service that is briefly out of reach: a broker restarting, a
//! network blip, a broker too busy to answer.
//!
//! OMS sources and sinks retry a call that failed with a *transient* error
//! ([`OmsError::is_transient`]) after a backoff that doubles from
//! [`RetryPolicy::first_backoff`] up to [`RetryPolicy::max_backoff`]; meanwhile the job
//! pauses (nothing is read past what was emitted, nothing is acknowledged that was not
//! stored), and it resumes where it was once the service answers. Any other error, or an
//! outage longer than [`RetryPolicy::give_up_after`], fails the job as before.
//!
//! Logs: a warning at the first failure of an outage (what failed, the service's own words,
//! the next attempt), another every [`STILL_FAILING_EVERY`] while it lasts, and one line when
//! the call succeeds again, with how long the outage lasted.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::oms::OmsError;

/// How often a long outage is logged again, after its first warning.
pub const STILL_FAILING_EVERY: Duration = Duration::from_secs(30);

/// How an OMS source or sink retries calls that failed with a transient error.
///
/// The default retries after 100 ms, 200 ms, 400 ms, ... up to 5 s between attempts, and gives
/// up (failing the job with the last error) when the service has not answered for 5 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait before the first retry.
    pub first_backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
    /// How long an outage may last before the job fails; `None` retries for ever.
    pub give_up_after: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            give_up_after: Some(Duration::from_secs(300)),
        }
    }
}

impl RetryPolicy {
    /// No retries: the first error fails the job.
    pub fn never() -> Self {
        RetryPolicy {
            first_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            give_up_after: Some(Duration::ZERO),
        }
    }

    /// The wait after the `attempt`-th failure in a row (1-based).
    fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.first_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }

    /// Checks the values; the message says what to change.
    pub(crate) fn validate(&self, owner: &str) -> Result<(), String> {
        if self.first_backoff > self.max_backoff {
            return Err(format!(
                "{owner}: the retry policy's first backoff ({:?}) is above its maximum backoff ({:?}); \
                 raise max_backoff or lower first_backoff",
                self.first_backoff, self.max_backoff
            ));
        }
        Ok(())
    }
}

/// One outage: calls failing in a row.
#[derive(Debug, Clone, Copy)]
struct Outage {
    since: Instant,
    attempts: u32,
    last_warned: Instant,
}

/// The retry state of one source or sink subtask: the policy, and the outage in progress.
///
/// Kept in the subtask, not in a future, so that a poll cancelled while it waits (sources are
/// polled against checkpoint barriers and stop requests) keeps counting the same outage.
#[derive(Debug)]
pub(crate) struct Retrier {
    policy: RetryPolicy,
    /// Who retries, for the logs: `<task> on queue '<queue>'`.
    who: String,
    outage: Option<Outage>,
}

impl Retrier {
    pub(crate) fn new(policy: RetryPolicy, who: String) -> Self {
        Retrier {
            policy,
            who,
            outage: None,
        }
    }

    /// Renames the owner in the logs (a subtask knows its name once opened).
    pub(crate) fn set_owner(&mut self, who: String) {
        self.who = who;
    }

    /// Runs `call` until it succeeds, fails with an error that is not transient, or the
    /// outage outlasts the policy. `action` says what the call does, for the logs.
    pub(crate) async fn run<T, F, Fut>(&mut self, action: &str, mut call: F) -> Result<T, OmsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OmsError>>,
    {
        loop {
            match call().await {
                Ok(value) => {
                    self.succeeded(action);
                    return Ok(value);
                }
                Err(error) => {
                    let wait = self.failed(action, error)?;
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Notes a failure of `action`: the wait before the next attempt, or the error when it is
    /// not transient or the outage lasted too long.
    pub(crate) fn failed(&mut self, action: &str, error: OmsError) -> Result<Duration, OmsError> {
        if !error.is_transient() {
            return Err(error);
        }
        let now = Instant::now();
        let outage = self.outage.get_or_insert(Outage {
            since: now,
            attempts: 0,
            last_warned: now,
        });
        outage.attempts += 1;
        let down_for = now - outage.since;
        if self
            .policy
            .give_up_after
            .is_some_and(|limit| down_for >= limit)
        {
            let attempts = outage.attempts;
            self.outage = None;
            if attempts > 1 {
                tracing::error!(
                    who = %self.who,
                    action,
                    attempts,
                    down_for = ?down_for,
                    %error,
                    "giving up: the messaging service did not answer within the retry policy's limit"
                );
            }
            return Err(error);
        }
        let wait = self.policy.backoff(outage.attempts);
        if outage.attempts == 1 {
            tracing::warn!(
                who = %self.who,
                action,
                %error,
                retry_in = ?wait,
                "the messaging service is out of reach; the job pauses and retries with backoff"
            );
        } else if now - outage.last_warned >= STILL_FAILING_EVERY {
            outage.last_warned = now;
            tracing::warn!(
                who = %self.who,
                action,
                %error,
                attempts = outage.attempts,
                down_for = ?down_for,
                retry_in = ?wait,
                "the messaging service is still out of reach; retrying"
            );
        } else {
            tracing::debug!(who = %self.who, action, %error, attempts = outage.attempts, retry_in = ?wait, "retrying");
        }
        Ok(wait)
    }

    /// Notes a success: ends the outage in progress, if any, with a log line.
    pub(crate) fn succeeded(&mut self, action: &str) {
        if let Some(outage) = self.outage.take() {
            tracing::info!(
                who = %self.who,
                action,
                attempts = outage.attempts,
                down_for = ?outage.since.elapsed(),
                "the messaging service answers again; the job resumes"
            );
        }
    }

    /// Whether an outage is in progress.
    #[cfg(test)]
    pub(crate) fn in_outage(&self) -> bool {
        self.outage.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oms::{OmsErrorKind, OmsStatus};

    fn unreachable() -> OmsError {
        OmsError::new(
            OmsErrorKind::Runtime,
            OmsStatus::SERVICE_NOT_AVAILABLE,
            "cannot reach the broker",
        )
        .transient()
    }

    #[test]
    fn only_errors_a_retry_may_cure_are_transient() {
        assert!(unreachable().is_transient());
        assert!(OmsError::timeout("no answer").is_transient());
        // Same status, but a stopped producer stays stopped.
        assert!(!OmsError::not_available("the producer").is_transient());
        assert!(!OmsError::destination_not_found("q").is_transient());
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let policy = RetryPolicy::default();
        let waits: Vec<_> = (1..=8).map(|a| policy.backoff(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_the_call_succeeds() {
        let mut retrier = Retrier::new(RetryPolicy::default(), "test".into());
        let mut calls = 0;
        let started = Instant::now();
        let value = retrier
            .run("send", || {
                calls += 1;
                let result = if calls < 4 {
                    Err(unreachable())
                } else {
                    Ok(calls)
                };
                async move { result }
            })
            .await
            .unwrap();
        assert_eq!(value, 4);
        // 100 + 200 + 400 ms of backoff, on the paused clock.
        assert_eq!(started.elapsed(), Duration::from_millis(700));
        assert!(!retrier.in_outage());
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_fail_at_once() {
        let mut retrier = Retrier::new(RetryPolicy::default(), "test".into());
        let mut calls = 0;
        let error = retrier
            .run("send", || {
                calls += 1;
                async { Err::<(), _>(OmsError::destination_not_found("q")) }
            })
            .await
            .unwrap_err();
        assert_eq!(error.status(), OmsStatus::DESTINATION_NOT_FOUND);
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_longer_than_the_policy_fails_with_the_last_error() {
        let policy = RetryPolicy {
            give_up_after: Some(Duration::from_secs(10)),
            ..RetryPolicy::default()
        };
        let mut retrier = Retrier::new(policy, "test".into());
        let started = Instant::now();
        let error = retrier
            .run("send", || async { Err::<(), _>(unreachable()) })
            .await
            .unwrap_err();
        assert_eq!(error.status(), OmsStatus::SERVICE_NOT_AVAILABLE);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(16),
            "{waited:?}"
        );
        // A later failure starts a new outage.
        assert!(!retrier.in_outage());
        assert!(RetryPolicy::never().give_up_after == Some(Duration::ZERO));
    }

    #[test]
    fn a_first_backoff_above_the_maximum_is_refused() {
        let policy = RetryPolicy {
            first_backoff: Duration::from_secs(10),
            ..RetryPolicy::default()
        };
        let message = policy.validate("source 'orders'").unwrap_err();
        assert!(message.contains("first backoff"), "{message}");
    }
}
