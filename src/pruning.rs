//! The pruning task: every `retention.interval` one pass applies the
//! retention rules (`store::retention`) through the store, table by table,
//! in batches of `retention.batch_size` until nothing is left.
//!
//! It never holds up ingest for long: each batch is its own short
//! transaction on the store's single writer, and after each one the task
//! pauses as long as the batch took, so a waiting group commit gets the
//! writer at once and pruning uses at most half of the writer's time even
//! with a large backlog (the first pass after an upgrade).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::retention::{PruneCursor, PruneTable, RetentionRules};
use crate::store::{now_ms, DiskUsage, Store};

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
        loop {
            if cancel.is_some_and(CancellationToken::is_cancelled) {
                report.interrupted = true;
                report.deleted.push((table, deleted));
                break 'tables;
            }
            let batch_started = Instant::now();
            let progress = store
                .prune_batch(table, &cutoffs, &from, rules.batch_size)
                .await?;
            report.batches += 1;
            deleted += progress.deleted;
            metrics::counter!("koala_store_pruned_rows_total", "table" => table.as_str())
                .increment(progress.deleted);
            let Some(next) = progress.next else { break };
            from = next;
            // The writer is free now: a waiting group commit takes it
            // while this task sleeps as long as the batch took.
            tokio::time::sleep(batch_started.elapsed().max(Duration::from_micros(100))).await;
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
