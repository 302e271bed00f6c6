//! The one backoff in koala: exponential with full jitter — a random delay
//! in `[0, min(max, base · 2^attempt)]` — so that many clients failing
//! together do not retry together. Delivery stores the delay on its rows
//! (`next_attempt_at`, surviving restarts), a full replace sleeps it, and
//! the App API client hands the same sequence to `backon`.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first step's ceiling.
    pub base: Duration,
    /// No delay is longer.
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.min(30)))
            .min(self.max);
        let ms = ceiling.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=ms))
    }

    /// The delays of `times` retries, in order (a `backon` backoff).
    pub fn retries(self, times: usize) -> Retries {
        Retries {
            backoff: self,
            attempt: 0,
            left: times,
        }
    }
}

/// The delays of a bounded number of retries.
#[derive(Debug, Clone)]
pub struct Retries {
    backoff: Backoff,
    attempt: u32,
    left: usize,
}

impl Iterator for Retries {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let d = self.backoff.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_attempts_and_stays_under_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        for attempt in 0..40u32 {
            let d = b.delay(attempt);
            assert!(d <= b.max);
            assert!(d <= b.base * 2u32.pow(attempt.min(20)));
        }
    }

    #[test]
    fn a_bounded_number_of_retries() {
        let b = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(50),
        };
        let delays: Vec<_> = b.retries(4).collect();
        assert_eq!(delays.len(), 4);
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(50)));
    }
}
