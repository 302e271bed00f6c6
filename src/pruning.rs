//! The pruning task: every `retention.interval` one pass applies the
//! retention rules (`store::retention`) through the store, table by table,
//! in batches until nothing is left.
//!
//! It never holds up ingest for long: each batch is its own short
//! transaction on the store's single writer, sized to hold the writer for
//! about [`BATCH_TARGET`] (rows cost very differently per table: a dedupe
//! key or a sync row a few microseconds, an event a page write of its
//! person index), never more than `retention.batch_size` rows. After each
//! batch the task sleeps [`PAUSE_FACTOR`] times as long as the batch took,
//! so a waiting group commit gets the writer at once and pruning takes at
//! most a quarter of the writer's time, even when it has a large backlog
//! (the first pass after an upgrade).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::retention::{PruneCursor, PruneTable, RetentionRules};
use crate::store::{now_ms, DiskUsage, Store};

/// How long one batch should hold the writer: a webhook arriving during a
/// batch waits about this much longer for its commit.
pub const BATCH_TARGET: Duration = Duration::from_millis(4);
/// The first batch of each table, before its cost is known.
const FIRST_BATCH: usize = 100;
const SMALLEST_BATCH: usize = 10;
/// After each batch the task sleeps this many times as long as the batch
/// took: pruning uses at most 1 / (1 + PAUSE_FACTOR) of the writer.
const PAUSE_FACTOR: u32 = 3;

/// The next batch's size from the last one's: halved when it held the
/// writer too long, doubled when it was well under, within the bounds.
fn next_batch(limit: usize, took: Duration, most: usize) -> usize {
    let most = most.max(1);
    let least = SMALLEST_BATCH.min(most);
    if took > BATCH_TARGET {
        (limit / 2).max(least)
    } else if took < BATCH_TARGET / 2 {
        limit.saturating_mul(2).min(most)
    } else {
        limit
    }
    .clamp(least, most)
}

/// What one pass did.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// Rows deleted per table, in the order the pass walked them.
    pub deleted: Vec<(PruneTable, u64)>,
    pub batches: u64,
    pub elapsed: Duration,
    /// After the pass.
    pub disk: Option<DiskUsage>,
    /// Stopped early by shutdown.
    pub interrupted: bool,
}

impl PassReport {
    pub fn deleted(&self, table: PruneTable) -> u64 {
        self.deleted
            .iter()
            .filter(|(t, _)| *t == table)
            .map(|(_, n)| n)
            .sum()
    }
}

/// One pass at `now_ms` (koala's clock in production; tests pass their
/// own), logged and recorded in the metrics. Stops between batches when
/// `cancel` fires.
pub async fn run_pass(
    store: &dyn Store,
    rules: &RetentionRules,
    now_ms: i64,
    cancel: Option<&CancellationToken>,
) -> crate::store::Result<PassReport> {
    let started = Instant::now();
    let cutoffs = rules.cutoffs(now_ms);
    let mut report = PassReport::default();
    'tables: for table in rules.tables() {
        let mut from = PruneCursor::Start;
        let mut deleted = 0;
        let mut limit = FIRST_BATCH.min(rules.batch_size.max(1));
        loop {
            if cancel.is_some_and(CancellationToken::is_cancelled) {
                report.interrupted = true;
                report.deleted.push((table, deleted));
                break 'tables;
            }
            let batch_started = Instant::now();
            let progress = store.prune_batch(table, &cutoffs, &from, limit).await?;
            let took = batch_started.elapsed();
            report.batches += 1;
            deleted += progress.deleted;
            metrics::counter!("koala_store_pruned_rows_total", "table" => table.as_str())
                .increment(progress.deleted);
            let Some(next) = progress.next else { break };
            from = next;
            limit = next_batch(limit, took, rules.batch_size);
            // The writer is free now: a waiting group commit takes it
            // while this task sleeps.
            tokio::time::sleep((took * PAUSE_FACTOR).max(Duration::from_micros(100))).await;
        }
        report.deleted.push((table, deleted));
    }
    report.elapsed = started.elapsed();
    report.disk = store.disk_usage().await?;
    record(&report);
    Ok(report)
}

/// Runs a pass every `interval` (the first one `interval` after start)
/// until `cancel`.
pub fn spawn(
    store: Arc<dyn Store>,
    rules: RetentionRules,
    interval: Duration,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match run_pass(&*store, &rules, now_ms(), Some(&cancel)).await {
                Ok(_) => {}
                Err(e) => {
                    metrics::counter!("koala_store_prune_failures_total").increment(1);
                    tracing::error!(error = %e, "pruning pass failed; the next one retries");
                }
            }
        }
    })
}

fn record(report: &PassReport) {
    metrics::gauge!("koala_store_prune_last_pass_seconds").set(report.elapsed.as_secs_f64());
    metrics::gauge!("koala_store_prune_last_pass_timestamp_seconds").set(now_ms() as f64 / 1000.0);
    if let Some(disk) = report.disk {
        metrics::gauge!("koala_store_size_bytes").set(disk.bytes as f64);
        metrics::gauge!("koala_store_free_bytes").set(disk.free_bytes as f64);
    }
    tracing::info!(
        dedupe_keys = report.deleted(PruneTable::DedupeKeys),
        events = report.deleted(PruneTable::Events),
        sync_rows = report.deleted(PruneTable::SyncRows),
        batches = report.batches,
        seconds = report.elapsed.as_secs_f64(),
        store_bytes = report.disk.map(|d| d.bytes),
        free_bytes = report.disk.map(|d| d.free_bytes),
        interrupted = report.interrupted,
        "store pruned"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_shrink_when_slow_and_grow_when_fast_within_bounds() {
        let slow = BATCH_TARGET * 3;
        let fast = BATCH_TARGET / 4;
        assert_eq!(next_batch(1_000, slow, 5_000), 500);
        assert_eq!(next_batch(1_000, fast, 5_000), 2_000);
        assert_eq!(
            next_batch(4_000, fast, 5_000),
            5_000,
            "never above batch_size"
        );
        assert_eq!(next_batch(12, slow, 5_000), SMALLEST_BATCH);
        assert_eq!(next_batch(1_000, BATCH_TARGET * 3 / 4, 5_000), 1_000);
        assert_eq!(next_batch(1, fast, 1), 1, "batch_size 1 stays 1");
        assert_eq!(
            next_batch(5, slow, 5),
            5,
            "batch_size below the smallest batch wins"
        );
    }
}
