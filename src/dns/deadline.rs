//! Caller-given deadlines for lookups.
//!
//! A session must not wait on the DNS longer than it decided to: the
//! connection-time rDNS check delays the banner, and a dead name server must
//! cost a bounded, known time. [`within`] turns "no answer by the deadline"
//! into a temporary failure, the same outcome as a resolver timeout.
//!
//! Deadlines are `tokio::time::Instant`s so tests can run them on tokio's
//! paused clock.

use std::future::Future;

use tokio::time::Instant;

use super::answer::{Answer, TempFailure};

/// Runs `lookup` until `deadline`; past it the answer is
/// `TempFail(Timeout)` and the lookup is dropped (cancelled).
pub async fn within<T>(deadline: Instant, lookup: impl Future<Output = Answer<T>>) -> Answer<T> {
    match tokio::time::timeout_at(deadline, lookup).await {
        Ok(answer) => answer,
        Err(_elapsed) => Answer::TempFail(TempFailure::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn slow_lookup_becomes_timeout_at_the_deadline() {
        let start = Instant::now();
        let slow = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Answer::Records(vec![1u8])
        };
        let answer = within(start + Duration::from_millis(300), slow).await;
        assert_eq!(answer, Answer::TempFail(TempFailure::Timeout));
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn fast_lookup_is_untouched() {
        let start = Instant::now();
        let answer = within(start + Duration::from_secs(1), async {
            Answer::<u8>::NxDomain
        })
        .await;
        assert_eq!(answer, Answer::NxDomain);
    }
}
