use std::collections::HashMap;
use std::num::NonZeroU32;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::engine::Control;
use crate::audiences::{AudienceDef, Catalog};
use crate::backoff::Backoff;
use crate::destinations::{Mapping, SendOutcome, SendTarget, UNMATCHED};
use crate::store::{now_ms, PersonRecord, Store, SyncOp, WorkBatch, WorkItem};

/// How long a claimed batch stays leased; longer than any request.
const LEASE: Duration = Duration::from_secs(300);

pub(super) struct Dispatcher {
    pub store: Arc<dyn Store>,
    pub catalog: Catalog,
    pub control: Arc<Control>,
    pub wake: Arc<Notify>,
    pub cancel: CancellationToken,
    /// koala audience id → platform audience id (configured or created).
    pub audience_ids: Arc<tokio::sync::Mutex<HashMap<i64, String>>>,
    pub grace: Duration,
    /// koala audience id → its attribute mapping at this destination.
    pub mappings: HashMap<i64, Arc<Mapping>>,
}

impl Dispatcher {
    /// Claims work only when the destination has capacity (a concurrency
    /// permit and a rate-limit token), so while it is busy rows accumulate
    /// in the store and leave together in full batches, and when it is idle
    /// a change leaves at once.
    pub async fn run(self) {
        let limits = self.control.destination().limits();
        let name = self.control.destination().name().to_owned();
        let permits = Arc::new(Semaphore::new(limits.concurrency.max(1)));
        let limiter = self.control.limiter.clone();
        // Retries come due without a wake-up; look for them this often.
        let idle_poll = Duration::from_millis(500);
        let this = Arc::new(self);
        let mut last_was_full = false;

        loop {
            if this.cancel.is_cancelled() {
                break;
            }
            let status = this.control.snapshot();
            if status.paused {
                // A pause with a known end (a daily quota) lifts by itself.
                let wait = status
                    .resume_at
                    .map(|t| Duration::from_millis((t - now_ms()).max(0) as u64))
                    .unwrap_or(Duration::MAX);
                tokio::select! {
                    _ = this.control.resumed.notified() => continue,
                    _ = tokio::time::sleep(wait.min(Duration::from_secs(86_400 * 365))), if status.resume_at.is_some() => {
                        this.control.resume();
                        continue;
                    }
                    _ = this.cancel.cancelled() => break,
                }
            }
            // Spend a rate-limit token only when there is work: an idle
            // destination keeps its token, so the next change leaves at once.
            match this.store.has_due_work(&name, now_ms()).await {
                Ok(true) => {}
                Ok(false) => {
                    last_was_full = false;
                    tokio::select! {
                        _ = this.wake.notified() => {}
                        _ = tokio::time::sleep(idle_poll) => {}
                        _ = this.cancel.cancelled() => break,
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(destination = %name, error = %e, "checking for work failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = this.cancel.cancelled() => break,
                    }
                    continue;
                }
            }
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("semaphore open"),
                _ = this.cancel.cancelled() => break,
            };
            tokio::select! {
                _ = limiter.until_ready() => {}
                _ = this.cancel.cancelled() => break,
            }
            if !limits.min_linger.is_zero() && !last_was_full {
                tokio::select! {
                    _ = tokio::time::sleep(limits.min_linger) => {}
                    _ = this.cancel.cancelled() => break,
                }
            }
            // A request in flight may have paused the destination while
            // this loop waited for capacity.
            if this.control.snapshot().paused {
                drop(permit);
                continue;
            }
            let claimed = this
                .store
                .claim_work(&name, now_ms(), LEASE.as_millis() as i64, limits.max_batch)
                .await;
            match claimed {
                Ok(Some(batch)) => {
                    last_was_full = batch.items.len() >= limits.max_batch;
                    let this = this.clone();
                    tokio::spawn(async move { this.deliver(batch, permit).await });
                }
                // The rows went between the check and the claim: look again
                // shortly rather than spin.
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        _ = this.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        _ = this.cancel.cancelled() => break,
                    }
                }
                Err(e) => {
                    drop(permit);
                    tracing::error!(destination = %name, error = %e, "claiming work failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = this.cancel.cancelled() => break,
                    }
                }
            }
        }
        // Wait for requests in flight, within the grace period.
        let all = limits.concurrency.max(1) as u32;
        if tokio::time::timeout(this.grace, permits.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(destination = %name, "requests still in flight at shutdown; their rows are retried at next start");
        }
    }

    async fn deliver(&self, batch: WorkBatch, _permit: OwnedSemaphorePermit) {
        let rows = batch.items.len() as i64;
        self.control.add_in_flight(batch.audience_id, rows);
        let result = self.try_deliver(&batch).await;
        self.control.add_in_flight(batch.audience_id, -rows);
        if let Err(e) = result {
            // The store failed: the lease expires (or is released at the
            // next start) and the rows are sent again.
            tracing::error!(destination = %batch.destination, error = %e, "recording a delivery result failed");
        }
    }

    async fn try_deliver(&self, batch: &WorkBatch) -> Result<(), crate::store::StoreError> {
        let name = batch.destination.as_str();
        let dest = self.control.destination();
        let (people, unmatched): (Vec<_>, Vec<_>) = batch
            .items
            .iter()
            .partition(|i| dest.can_address(&i.person));
        if !unmatched.is_empty() {
            // Nothing to send for them; acknowledging keeps them out of the
            // queue, and the count explains an underfilled audience.
            let ids: Vec<i64> = unmatched.iter().map(|i| i.sync_id).collect();
            self.store.ack_work(batch, &ids, false, now_ms()).await?;
            metrics::counter!("koala_destination_unmatched_total", "destination" => name.to_owned())
                .increment(ids.len() as u64);
            tracing::debug!(destination = name, count = ids.len(), "{UNMATCHED}");
        }
        if people.is_empty() {
            return Ok(());
        }
        let answers = match self.platform_audience(batch.audience_id).await {
            Ok((audience, external)) => {
                let mapping = self
                    .mappings
                    .get(&batch.audience_id)
                    .cloned()
                    .unwrap_or_default();
                let records: Vec<_> = people.iter().map(|i| i.person.clone()).collect();
                let changed_at: Vec<i64> = people.iter().map(|i| i.desired_at).collect();
                let target = SendTarget {
                    audience: &audience,
                    platform_audience_id: &external,
                    mapping: &mapping,
                    changed_at: &changed_at,
                };
                self.send_finding_bad_rows(dest.as_ref(), &target, batch.op, &records)
                    .await
            }
            Err(outcome) => vec![(0..people.len(), outcome)],
        };
        for (range, outcome) in answers {
            self.record(batch, &people[range], outcome).await?;
        }
        Ok(())
    }

    /// Sends the batch; when the platform refuses it as a whole, sends the
    /// halves (each within the rate limit) until the rows it refuses are
    /// found alone, so one bad row never dead-letters its neighbours.
    /// Returns each part's answer.
    async fn send_finding_bad_rows(
        &self,
        dest: &dyn crate::destinations::Destination,
        target: &SendTarget<'_>,
        op: SyncOp,
        people: &[PersonRecord],
    ) -> Vec<(Range<usize>, SendOutcome)> {
        let name = dest.name().to_owned();
        let mut parts: Vec<Range<usize>> = Vec::new();
        parts.push(0..people.len());
        let mut answers = Vec::new();
        let mut first = true;
        while let Some(range) = parts.pop() {
            if !first {
                self.control.limiter.until_ready().await;
            }
            first = false;
            metrics::histogram!("koala_destination_batch_size", "destination" => name.clone(), "op" => op.as_str())
                .record(range.len() as f64);
            let started = Instant::now();
            let part = SendTarget {
                changed_at: target.changed_at.get(range.clone()).unwrap_or_default(),
                ..*target
            };
            let outcome = dest.send(&part, op, &people[range.clone()]).await;
            metrics::histogram!("koala_destination_request_seconds", "destination" => name.clone(), "outcome" => outcome.class())
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("koala_destination_requests_total", "destination" => name.clone(), "op" => op.as_str(), "outcome" => outcome.class())
                .increment(1);
            match outcome {
                SendOutcome::Permanent { reason } if range.len() > 1 => {
                    let mid = range.start + range.len() / 2;
                    tracing::warn!(destination = %name, rows = range.len(), %reason, "batch refused as a whole; sending its halves to find the bad rows");
                    metrics::counter!("koala_destination_batch_splits_total", "destination" => name.clone())
                        .increment(1);
                    parts.push(mid..range.end);
                    parts.push(range.start..mid);
                }
                outcome => answers.push((range, outcome)),
            }
        }
        answers
    }

    /// Records one answer for the rows it covers.
    async fn record(
        &self,
        batch: &WorkBatch,
        items: &[&WorkItem],
        outcome: SendOutcome,
    ) -> Result<(), crate::store::StoreError> {
        let name = batch.destination.as_str();
        let ids: Vec<i64> = items.iter().map(|i| i.sync_id).collect();
        let now = now_ms();
        match outcome {
            SendOutcome::Success { invalid, .. } => {
                if invalid > 0 {
                    metrics::counter!("koala_destination_invalid_entries_total", "destination" => name.to_owned())
                        .increment(invalid as u64);
                }
                self.acknowledged(batch, items, now).await?;
            }
            SendOutcome::PartlyRefused { refused } => {
                let refused_ids: Vec<i64> = refused
                    .iter()
                    .filter_map(|r| items.get(r.index).map(|i| i.sync_id))
                    .collect();
                let stored: Vec<&WorkItem> = items
                    .iter()
                    .filter(|i| !refused_ids.contains(&i.sync_id))
                    .copied()
                    .collect();
                self.acknowledged(batch, &stored, now).await?;
                for r in &refused {
                    if let Some(item) = items.get(r.index) {
                        self.store
                            .dead_letter_work(&[item.sync_id], &r.reason, now)
                            .await?;
                    }
                }
                metrics::counter!("koala_destination_invalid_entries_total", "destination" => name.to_owned())
                    .increment(refused_ids.len() as u64);
                metrics::counter!("koala_dead_letters_total", "destination" => name.to_owned())
                    .increment(refused_ids.len() as u64);
                if let Some(first) = refused.first() {
                    tracing::warn!(destination = name, rows = refused_ids.len(), reason = %first.reason, "rows refused by the platform dead-lettered; the rest acknowledged");
                    self.note_error(&first.reason, now);
                }
            }
            SendOutcome::RetryLater { after, reason } => {
                let limits = self.control.destination().limits();
                let attempts = items.iter().map(|i| i.attempts).max().unwrap_or(0);
                let backoff = Backoff {
                    base: limits.base_backoff,
                    max: limits.max_backoff,
                };
                let delay = after.unwrap_or_else(|| backoff.delay(attempts.max(0) as u32));
                self.store
                    .retry_work(&ids, now + delay.as_millis() as i64, &reason)
                    .await?;
                metrics::counter!("koala_destination_retries_total", "destination" => name.to_owned())
                    .increment(ids.len() as u64);
                tracing::warn!(destination = name, rows = ids.len(), retry_in_ms = delay.as_millis() as u64, %reason, "destination asked to retry later");
                self.note_error(&reason, now);
            }
            SendOutcome::Permanent { reason } => {
                self.store.dead_letter_work(&ids, &reason, now).await?;
                metrics::counter!("koala_dead_letters_total", "destination" => name.to_owned())
                    .increment(ids.len() as u64);
                tracing::error!(destination = name, rows = ids.len(), %reason, "rows dead-lettered");
                self.note_error(&reason, now);
            }
            SendOutcome::DestinationDown { reason } => {
                self.pause(&ids, reason, None, now).await?;
            }
            SendOutcome::PausedUntil { until_ms, reason } => {
                self.pause(&ids, reason, Some(until_ms), now).await?;
            }
        }
        Ok(())
    }

    async fn acknowledged(
        &self,
        batch: &WorkBatch,
        items: &[&WorkItem],
        now: i64,
    ) -> Result<(), crate::store::StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let name = batch.destination.as_str();
        let ids: Vec<i64> = items.iter().map(|i| i.sync_id).collect();
        self.store.ack_work(batch, &ids, true, now).await?;
        for item in items {
            metrics::histogram!("koala_delivery_event_to_ack_seconds", "destination" => name.to_owned())
                .record((now - item.desired_at).max(0) as f64 / 1000.0);
            metrics::histogram!("koala_delivery_receipt_to_ack_seconds", "destination" => name.to_owned())
                .record((now - item.desired_received_at).max(0) as f64 / 1000.0);
        }
        let mut s = self.control.status.lock().expect("status lock");
        s.last_success_at = Some(now);
        Ok(())
    }

    /// Keeps the rows' work (due again as soon as the destination resumes)
    /// and pauses the destination, until someone acts or until `until`.
    async fn pause(
        &self,
        ids: &[i64],
        reason: String,
        until: Option<i64>,
        now: i64,
    ) -> Result<(), crate::store::StoreError> {
        let name = self.control.destination().name().to_owned();
        tracing::error!(destination = %name, %reason, resume_at = ?until, "destination paused");
        self.note_error(&reason, now);
        // Paused before the rows are due again, so the dispatcher never
        // sees them due while the destination still looks healthy.
        {
            let mut s = self.control.status.lock().expect("status lock");
            s.paused = true;
            s.paused_reason = Some(reason.clone());
            s.paused_at = Some(now);
            s.resume_at = until;
        }
        metrics::gauge!("koala_destination_paused", "destination" => name).set(1.0);
        self.store.retry_work(ids, now, &reason).await?;
        Ok(())
    }

    fn note_error(&self, reason: &str, now: i64) {
        let mut s = self.control.status.lock().expect("status lock");
        s.last_error = Some(reason.to_owned());
        s.last_error_at = Some(now);
    }

    /// The audience and its platform id: configured, recorded from an
    /// earlier run, or created now (once; the id is recorded before
    /// anything is sent to it, so a restart reuses it).
    async fn platform_audience(
        &self,
        audience_id: i64,
    ) -> Result<(Arc<AudienceDef>, String), SendOutcome> {
        let audience =
            self.catalog
                .by_id(audience_id)
                .cloned()
                .ok_or_else(|| SendOutcome::Permanent {
                    reason: format!("audience {audience_id} is no longer configured"),
                })?;
        let mut ids = self.audience_ids.lock().await;
        if let Some(id) = ids.get(&audience_id) {
            return Ok((audience, id.clone()));
        }
        let destination = self.control.destination();
        let name = destination.name();
        let store_err = |e: crate::store::StoreError| SendOutcome::RetryLater {
            after: Some(Duration::from_secs(1)),
            reason: format!("store: {e}"),
        };
        if let Some(id) = self
            .store
            .destination_audience(name, audience_id)
            .await
            .map_err(store_err)?
        {
            ids.insert(audience_id, id.clone());
            return Ok((audience, id));
        }
        let id = destination.create_audience(&audience).await?;
        self.store
            .record_destination_audience(name, audience_id, &id, now_ms())
            .await
            .map_err(store_err)?;
        tracing::info!(destination = name, audience = %audience.name, platform_audience_id = %id, "created platform audience");
        ids.insert(audience_id, id.clone());
        Ok((audience, id))
    }
}

pub(super) fn rate_limiter(per_second: f64) -> DefaultDirectRateLimiter {
    let per_second = if per_second.is_finite() && per_second > 0.0 {
        per_second
    } else {
        1.0
    };
    let period = Duration::from_secs_f64(1.0 / per_second);
    let quota = Quota::with_period(period)
        .expect("non-zero period")
        .allow_burst(NonZeroU32::new(1).expect("1 > 0"));
    RateLimiter::direct(quota)
}
