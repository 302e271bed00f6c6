use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` until it returns true, failing with `what` after `limit`.
/// Waiting is for convergence only; no test asserts a speed with it.
pub async fn until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return;
        }
        if started.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
