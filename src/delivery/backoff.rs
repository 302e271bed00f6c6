use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter: a random delay in
/// `[0, min(max, base · 2^attempts)]`. The delay is stored on the rows
/// (`next_attempt_at`), so it survives restarts; that is why this is a
/// formula here and not an in-process retry loop.
pub fn full_jitter(attempts: i64, base: Duration, max: Duration) -> Duration {
    let exp = attempts.clamp(0, 30) as u32;
    let ceiling = base.saturating_mul(2u32.saturating_pow(exp)).min(max);
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_attempts_and_stays_under_the_cap() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempts in 0..40 {
            let d = full_jitter(attempts, base, max);
            assert!(d <= max);
            assert!(d <= base * 2u32.pow(attempts.min(20) as u32));
        }
    }
}
