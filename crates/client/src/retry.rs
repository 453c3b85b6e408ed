//! Retries: every request that fails in a way trying again can fix (rate limited, a server
//! error, no answer) is sent again with exponential backoff and jitter, waiting at least as
//! long as the server's `Retry-After` asks, until the policy's time budget is spent.

use std::time::Duration;

use tokio::time::Instant;

use rand::Rng as _;

use crate::Error;

/// How failed requests are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry; doubled for each further one.
    pub base_delay: Duration,
    /// Longest delay between tries (a longer `Retry-After` is still honoured).
    pub max_delay: Duration,
    /// Longest time spent on one request, its retries included, from its first try; a retry
    /// whose wait would end later is not made. Zero turns retries off.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            give_up_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// No retries: every failure is final.
    pub fn never() -> Self {
        RetryPolicy {
            give_up_after: Duration::ZERO,
            ..RetryPolicy::default()
        }
    }

    /// The delay before try `attempt` (1 = the first retry): exponential, capped, with jitter
    /// (uniform between half and all of it) so that many clients do not retry in step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponential = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exponential.min(self.max_delay);
        let half = capped / 2;
        half + capped
            .saturating_sub(half)
            .mul_f64(rand::thread_rng().gen::<f64>())
    }
}

/// Whether a request may be sent again after a failure whose effect is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// Sending it twice does what sending it once does (reads, puts, deletes, bulk writes):
    /// every retryable failure is retried.
    Safe,
    /// Sending it twice may do it twice (creating a namespace): retried like the others, but
    /// a conflict after a try whose effect is unknown says the earlier try may have done it.
    Once,
}

/// The retries of one request.
pub(crate) struct Retries<'a> {
    policy: &'a RetryPolicy,
    started: Instant,
    attempts: u32,
    /// A try failed after the request may have reached the server.
    uncertain: bool,
}

impl<'a> Retries<'a> {
    pub(crate) fn new(policy: &'a RetryPolicy) -> Self {
        Retries {
            policy,
            started: Instant::now(),
            attempts: 0,
            uncertain: false,
        }
    }

    /// After a failed try: waits and returns `Ok` when another try should be made, or returns
    /// the error to report.
    pub(crate) async fn after(&mut self, error: Error, repeat: Repeat) -> Result<(), Error> {
        self.attempts += 1;
        if !error.is_retryable() {
            return Err(self.conclude(error, repeat));
        }
        self.uncertain |= !error.certainly_not_processed();
        let delay = self
            .policy
            .delay(self.attempts)
            .max(error.retry_after().unwrap_or_default());
        if self.started.elapsed() + delay > self.policy.give_up_after {
            return Err(if self.attempts == 1 {
                error
            } else {
                Error::GaveUp {
                    attempts: self.attempts,
                    elapsed: self.started.elapsed(),
                    last: Box::new(error),
                }
            });
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// The final error of a request that was tried `attempts` times.
    fn conclude(&self, error: Error, repeat: Repeat) -> Error {
        match error {
            Error::Api {
                status: 409,
                code,
                message,
                retry_after,
            } if repeat == Repeat::Once && self.uncertain => Error::Api {
                status: 409,
                code,
                message: format!(
                    "{message} (an earlier try of this request failed without a clear answer and may have done it)"
                ),
                retry_after,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, retry_after: Option<u64>) -> Error {
        Error::Api {
            status,
            code: 10049,
            message: "m".into(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn retry_delays_grow_and_stay_bounded() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            give_up_after: Duration::from_secs(60),
        };
        for attempt in 1..=10 {
            let delay = policy.delay(attempt);
            let full = (Duration::from_millis(100) * (1 << (attempt - 1))).min(policy.max_delay);
            assert!(delay >= full / 2 && delay <= full, "{attempt}: {delay:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_until_the_budget_is_spent() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
            give_up_after: Duration::from_secs(5),
        };
        let mut retries = Retries::new(&policy);
        let start = Instant::now();
        retries
            .after(api(429, Some(2)), Repeat::Safe)
            .await
            .unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(2),
            "waited for Retry-After"
        );
        retries
            .after(api(503, Some(2)), Repeat::Safe)
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(4));
        // Another 2 s wait would end past the 5 s budget: it is not made.
        match retries.after(api(429, Some(2)), Repeat::Safe).await {
            Err(Error::GaveUp { attempts, last, .. }) => {
                assert_eq!(attempts, 3);
                assert!(matches!(*last, Error::Api { status: 429, .. }));
            }
            other => panic!("expected to give up: {other:?}"),
        }
        assert_eq!(start.elapsed(), Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_without_retry_after_grows() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            give_up_after: Duration::from_secs(60),
        };
        let mut retries = Retries::new(&policy);
        let start = Instant::now();
        for _ in 0..4 {
            retries.after(api(500, None), Repeat::Safe).await.unwrap();
        }
        // Waits of at least 50, 100, 200 and 400 ms, at most twice that.
        assert!(
            start.elapsed() >= Duration::from_millis(750),
            "{:?}",
            start.elapsed()
        );
        assert!(
            start.elapsed() <= Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn client_errors_are_final_and_a_conflict_after_an_unclear_try_says_why() {
        let policy = RetryPolicy::default();
        let mut retries = Retries::new(&policy);
        assert!(matches!(
            retries.after(api(400, None), Repeat::Safe).await,
            Err(Error::Api { status: 400, .. })
        ));
        let fast = RetryPolicy {
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            ..RetryPolicy::default()
        };
        let mut retries = Retries::new(&fast);
        retries.after(api(503, None), Repeat::Once).await.unwrap();
        match retries.after(api(409, None), Repeat::Once).await {
            Err(Error::Api { message, .. }) => assert!(message.contains("may have done it")),
            other => panic!("expected a conflict: {other:?}"),
        }
    }

    #[tokio::test]
    async fn no_budget_means_no_retry() {
        let policy = RetryPolicy::never();
        let mut retries = Retries::new(&policy);
        assert!(matches!(
            retries.after(api(429, Some(1)), Repeat::Safe).await,
            Err(Error::Api { status: 429, .. })
        ));
    }
}
