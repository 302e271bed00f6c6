use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::lookup::{self, LookupReport};
use crate::audiences::AudienceDef;
use crate::backoff::Backoff;
use crate::customerio::app_api::{AppApiClient, MembershipPage};
use crate::delivery::{DestinationHandle, Wakers};
use crate::destinations::{Destination, Mapping, ReplaceSession, SendOutcome, SendTarget};
use crate::store::{now_ms, PersonRecord, SnapshotDiff, SnapshotJob, Store};

/// Masked identifiers kept as examples in a job's report.
const SAMPLE: usize = 10;
/// Pages fetched ahead of the one being applied.
const PREFETCH: usize = 2;
/// Most people in one replace request (Meta's limit per request).
const REPLACE_BATCH: usize = 10_000;
/// Tries of one replace batch before the replace is given up.
const REPLACE_ATTEMPTS: u32 = 10;
/// A replace batch counts as read this long before its read began: a
/// profile merged just before that may not have been committed yet, and
/// sending such a person once more is cheaper than missing their change.
const READ_MARGIN_MS: i64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Queued,
    /// Fetching pages and applying entries as they arrive.
    Fetching,
    /// All pages in: applying exits for members the segment no longer has.
    Exits,
    /// Membership applied (and any replace done): looking up the phones
    /// and attributes of people first seen in this resync that are left.
    Enriching,
    /// Replacing the whole platform audience of the destinations asked for.
    Replacing,
    Done,
    Failed,
}

impl Phase {
    /// The phases a running job can be in.
    pub const RUNNING: [Phase; 5] = [
        Phase::Queued,
        Phase::Fetching,
        Phase::Exits,
        Phase::Enriching,
        Phase::Replacing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Fetching => "fetching",
            Phase::Exits => "exits",
            Phase::Enriching => "enriching",
            Phase::Replacing => "replacing",
            Phase::Done => "done",
            Phase::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Api,
    Schedule,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Api => "api",
            Trigger::Schedule => "schedule",
        }
    }
}

/// A destination whose platform audience a resync replaces in full.
#[derive(Clone)]
pub struct ReplaceTarget {
    /// The destination as the engine runs it: its settings as last
    /// reloaded, and the request rate the dispatcher shares.
    pub destination: DestinationHandle,
    /// The platform audience id the config gives, if any.
    pub configured_id: Option<String>,
    /// The sync target's attribute mapping.
    pub mapping: Mapping,
}

/// How a full replace of one destination went.
#[derive(Debug, Clone, Serialize)]
pub struct ReplaceProgress {
    pub destination: String,
    pub platform_audience_id: Option<String>,
    /// The session's id at the destination.
    pub session_id: Option<u64>,
    /// Batches accepted so far.
    pub batches: u64,
    /// People in the accepted batches.
    pub rows: u64,
    /// Members left out: none of the destination's identifiers.
    pub unaddressable: u64,
    /// Batches sent again after a throttle or passing failure.
    pub retries: u64,
    pub done: bool,
    pub note: Option<String>,
}

/// A resync as the API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct JobState {
    pub id: String,
    pub audience: String,
    pub segment_id: i64,
    pub dry_run: bool,
    pub trigger: Trigger,
    pub phase: Phase,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// The snapshot's time in the latest-wins rule.
    pub snapshot_at: i64,
    /// Customer.io's count for the segment when the job began, if known.
    pub expected_members: Option<u64>,
    pub pages_fetched: u64,
    pub members_seen: u64,
    /// Entries Customer.io listed without any identifier.
    pub members_skipped: u64,
    /// Enters, exits and the rest; in a dry run, what would change.
    #[serde(flatten)]
    pub diff: SnapshotDiff,
    /// New people whose profiles were looked up, and who could not be
    /// (the same as `lookups.found` and `lookups.not_looked_up`'s total).
    pub profiles_fetched: u64,
    pub profiles_failed: u64,
    /// The profile lookups of new people, when a destination needs them.
    pub lookups: LookupReport,
    /// Destinations whose platform audience is replaced after the snapshot.
    pub replace: Vec<String>,
    pub replaced: Vec<ReplaceProgress>,
    pub error: Option<String>,
}

impl JobState {
    pub fn new(audience: &AudienceDef, dry_run: bool, trigger: Trigger) -> Self {
        let now = now_ms();
        JobState {
            id: uuid::Uuid::now_v7().to_string(),
            audience: audience.name.clone(),
            segment_id: audience.segment_id,
            dry_run,
            trigger,
            phase: Phase::Queued,
            started_at: now,
            finished_at: None,
            snapshot_at: now,
            expected_members: None,
            pages_fetched: 0,
            members_seen: 0,
            members_skipped: 0,
            diff: SnapshotDiff::default(),
            profiles_fetched: 0,
            profiles_failed: 0,
            lookups: LookupReport::default(),
            replace: Vec::new(),
            replaced: Vec::new(),
            error: None,
        }
    }
}

pub(super) struct Run {
    pub client: AppApiClient,
    pub store: Arc<dyn Store>,
    pub wakers: Wakers,
    pub audience: Arc<AudienceDef>,
    pub state: Arc<Mutex<JobState>>,
    pub page_limit: u32,
    /// Whether a destination of the audience needs phones or attributes.
    pub enrich: bool,
    /// Destinations to replace in full once membership is applied.
    pub replace: Vec<ReplaceTarget>,
    /// How looked-up phones without a country code are read.
    pub phone_rules: crate::identity::PhoneRules,
}

impl Run {
    fn update(&self, f: impl FnOnce(&mut JobState)) {
        f(&mut self.state.lock().expect("job lock"));
    }

    pub async fn execute(self) {
        let (job_id, dry_run) = {
            let s = self.state.lock().expect("job lock");
            (s.id.clone(), s.dry_run)
        };
        // Facts newer than the moment fetching began win over the snapshot.
        let snapshot = SnapshotJob {
            id: job_id.clone(),
            audience: self.audience.clone(),
            stamp_at: now_ms(),
            dry_run,
            sample_limit: SAMPLE,
        };
        self.update(|s| {
            s.phase = Phase::Fetching;
            s.snapshot_at = snapshot.stamp_at;
        });
        tracing::info!(audience = %self.audience.name, job = %job_id, dry_run, "resync started");
        // Lookups run beside the pages, in their own task: the applier
        // hands each page's new people over and goes on.
        let (lookups, worker) = if self.enrich && !dry_run {
            let (tx, rx) = tokio::sync::mpsc::channel(lookup::HANDOFF_QUEUE);
            let worker = lookup::Worker {
                client: self.client.clone(),
                store: self.store.clone(),
                wakers: self.wakers.clone(),
                destinations: self.audience.destinations.clone(),
                state: self.state.clone(),
                at_ms: snapshot.stamp_at,
                phone_rules: self.phone_rules,
            };
            (Some(tx), Some(tokio::spawn(worker.run(rx))))
        } else {
            (None, None)
        };
        let result = self.apply(&snapshot, lookups.as_ref()).await;
        // Everyone new is handed over: the worker ends once they are done.
        drop(lookups);
        let completed = result.is_ok();
        let cleanup = self.store.finish_snapshot(&snapshot, completed).await;
        let mut result = result.and(cleanup.map_err(|e| e.to_string()));
        // The replace starts as soon as the membership is applied, not
        // after the lookups: whoever is looked up after their batch was
        // read is sent again through the normal path (mark_replaced).
        if result.is_ok() && !dry_run && !self.replace.is_empty() {
            result = self.replace_all().await;
        }
        if let Some(worker) = worker {
            if !worker.is_finished() {
                self.update(|s| {
                    if matches!(s.phase, Phase::Fetching | Phase::Exits | Phase::Replacing) {
                        s.phase = Phase::Enriching;
                    }
                });
            }
            if let Err(e) = worker.await {
                tracing::error!(error = %e, "the profile lookup worker stopped");
            }
            for d in &self.audience.destinations {
                self.wakers.wake(d);
            }
        }
        let now = now_ms();
        match result {
            Ok(()) => {
                self.update(|s| {
                    s.phase = Phase::Done;
                    s.finished_at = Some(now);
                });
                let s = self.state.lock().expect("job lock").clone();
                tracing::info!(audience = %s.audience, job = %s.id, entered = s.diff.entered, exited = s.diff.exited,
                    unchanged = s.diff.unchanged, stale = s.diff.stale, dry_run, "resync finished");
            }
            Err(e) => {
                tracing::error!(audience = %self.audience.name, job = %job_id, error = %e, "resync failed");
                self.update(|s| {
                    s.phase = Phase::Failed;
                    s.finished_at = Some(now);
                    s.error = Some(e);
                });
            }
        }
    }

    async fn apply(
        &self,
        snapshot: &SnapshotJob,
        lookups: Option<&tokio::sync::mpsc::Sender<Vec<i64>>>,
    ) -> Result<(), String> {
        let segment = self.audience.segment_id as u64;
        if let Ok(n) = self.client.customer_count(segment).await {
            self.update(|s| s.expected_members = Some(n));
        }
        // A fetcher runs ahead of the applier by a couple of pages, so the
        // App API's rate limit and the store's work overlap.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<MembershipPage, String>>(PREFETCH);
        let mut pager = self.client.membership_pager(segment, self.page_limit);
        let fetcher = tokio::spawn(async move {
            loop {
                match pager.next_page().await {
                    Ok(Some(page)) => {
                        if tx.send(Ok(page)).await.is_err() {
                            break; // the applier failed and stopped listening
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(format!("App API: {e}"))).await;
                        break;
                    }
                }
            }
        });
        while let Some(page) = rx.recv().await {
            let page = page?;
            let mut identifiers = Vec::with_capacity(page.members.len());
            let mut skipped = page.skipped as u64;
            for m in &page.members {
                match m.identifiers() {
                    Ok(ids) => identifiers.push(ids),
                    Err(_) => skipped += 1,
                }
            }
            let mut diff = self
                .store
                .snapshot_members(snapshot, &identifiers)
                .await
                .map_err(|e| e.to_string())?;
            self.touched(&diff);
            let new_people = std::mem::take(&mut diff.new_person_ids);
            if let Some(tx) = lookups.filter(|_| !new_people.is_empty()) {
                if tx.send(new_people).await.is_err() {
                    tracing::error!(audience = %self.audience.name, "the profile lookup worker is gone");
                }
            }
            self.update(|s| {
                s.pages_fetched += 1;
                s.members_seen += identifiers.len() as u64;
                s.members_skipped += skipped;
                s.diff.add(diff, SAMPLE);
            });
        }
        fetcher.await.map_err(|e| e.to_string())?;
        self.update(|s| s.phase = Phase::Exits);
        let diff = self
            .store
            .snapshot_exits(snapshot)
            .await
            .map_err(|e| e.to_string())?;
        self.touched(&diff);
        self.update(|s| s.diff.add(diff, SAMPLE));
        Ok(())
    }

    /// Replaces each destination asked for, one after the other, with
    /// koala's current members; the first failure fails the job.
    async fn replace_all(&self) -> Result<(), String> {
        self.update(|s| s.phase = Phase::Replacing);
        for target in &self.replace {
            let name = target.destination.current().name().to_owned();
            let result = self.replace_one(target).await;
            self.wakers.wake(&name);
            if let Err(e) = result {
                return Err(format!("replace of {name}: {e}"));
            }
        }
        Ok(())
    }

    fn progress(&self, index: usize, f: impl FnOnce(&mut ReplaceProgress)) {
        self.update(|s| f(&mut s.replaced[index]));
    }

    async fn replace_one(&self, target: &ReplaceTarget) -> Result<(), String> {
        let dest = target.destination.current();
        let name = dest.name().to_owned();
        let audience = &self.audience;
        let index = {
            let mut s = self.state.lock().expect("job lock");
            s.replaced.push(ReplaceProgress {
                destination: name.clone(),
                platform_audience_id: None,
                session_id: None,
                batches: 0,
                rows: 0,
                unaddressable: 0,
                retries: 0,
                done: false,
                note: None,
            });
            s.replaced.len() - 1
        };
        // The platform audience the dispatcher sends to: configured, or
        // recorded when koala created it. A replace never creates one.
        let platform_id = match &target.configured_id {
            Some(id) => id.clone(),
            None => self
                .store
                .destination_audience(&name, audience.id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    "no platform audience id is configured or recorded for this audience; \
                     a replace needs an existing audience (set audience_id in its sync entry)"
                        .to_owned()
                })?,
        };
        let estimated_total = self
            .store
            .audience_stats(audience.id)
            .await
            .map_err(|e| e.to_string())?
            .map_or(0, |a| a.members.max(0) as u64);
        // Below 2^53, so the id survives any JSON parser as a number.
        let session_id = {
            use rand::Rng;
            rand::rng().random_range(1..(1u64 << 53))
        };
        self.progress(index, |p| {
            p.platform_audience_id = Some(platform_id.clone());
            p.session_id = Some(session_id);
        });
        let limits = dest.limits();
        let batch_size = limits.max_batch.clamp(1, REPLACE_BATCH);
        let backoff = Backoff {
            base: limits.base_backoff,
            max: limits.max_backoff,
        };
        let mut members = MemberPages::new(self.store.clone(), audience.id, batch_size);
        let (mut current, mut read_at) = members.next_batch(dest.as_ref()).await?;
        self.progress(index, |p| p.unaddressable = members.unaddressable);
        if current.is_empty() {
            // Meta wants data in every request: with nobody to send, the
            // platform audience is left as it is.
            self.progress(index, |p| {
                p.done = true;
                p.note = Some("nothing to replace: no addressable members; the platform audience was left as it is".into());
            });
            tracing::warn!(destination = %name, audience = %audience.name, "replace skipped: no addressable members");
            return Ok(());
        }
        let started_at = now_ms();
        tracing::info!(destination = %name, audience = %audience.name, session_id, estimated_total, "replace started");
        let mut batch_seq = 0u32;
        loop {
            // One page ahead, to know whether this batch is the last.
            let (next, next_read_at) = match members.next_batch(dest.as_ref()).await {
                Ok(next) => next,
                Err(e) if batch_seq == 0 => return Err(e),
                Err(e) => return Err(self.abandon(&name, started_at, e).await),
            };
            self.progress(index, |p| p.unaddressable = members.unaddressable);
            batch_seq += 1;
            let session = ReplaceSession {
                session_id,
                batch_seq,
                last_batch: next.is_empty(),
                estimated_total,
            };
            let mut attempt = 0;
            let outcome = loop {
                attempt += 1;
                // The same request rate as the dispatcher's: the platform's
                // quota does not care which path a request took.
                target.destination.until_ready().await;
                // The destination as of now: a SIGHUP may have rotated it.
                let dest = target.destination.current();
                let send_target = SendTarget {
                    audience,
                    platform_audience_id: &platform_id,
                    mapping: &target.mapping,
                    changed_at: &[],
                };
                match dest.send_replace(&send_target, &session, &current).await {
                    SendOutcome::RetryLater { after, reason } if attempt < REPLACE_ATTEMPTS => {
                        let delay = after
                            .unwrap_or_else(|| backoff.delay(attempt - 1))
                            .min(limits.max_backoff);
                        tracing::warn!(destination = %name, batch_seq, attempt, retry_in_ms = delay.as_millis() as u64, %reason, "replace batch to be retried");
                        self.progress(index, |p| p.retries += 1);
                        tokio::time::sleep(delay).await;
                    }
                    other => break other,
                }
            };
            let refused: Vec<usize> = match &outcome {
                SendOutcome::PartlyRefused { refused } => refused.iter().map(|r| r.index).collect(),
                _ => Vec::new(),
            };
            match outcome {
                SendOutcome::Success { .. } | SendOutcome::PartlyRefused { .. } => {
                    let invalid = match outcome {
                        SendOutcome::Success { invalid, .. } => invalid,
                        _ => refused.len(),
                    };
                    if invalid > 0 {
                        metrics::counter!("koala_destination_invalid_entries_total", "destination" => name.clone())
                            .increment(invalid as u64);
                    }
                    // Rows the platform refused are not in the replaced
                    // audience; the normal path sends them again.
                    let ids: Vec<i64> = current
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| !refused.contains(i))
                        .map(|(_, p)| p.person_id)
                        .collect();
                    if let Err(e) = self
                        .store
                        .mark_replaced(&name, audience.id, &ids, read_at, now_ms())
                        .await
                    {
                        return Err(self.abandon(&name, started_at, e.to_string()).await);
                    }
                    self.progress(index, |p| {
                        p.batches += 1;
                        p.rows += ids.len() as u64;
                    });
                }
                SendOutcome::RetryLater { reason, .. } => {
                    let e = format!(
                        "batch {batch_seq} still failing after {REPLACE_ATTEMPTS} tries: {reason}"
                    );
                    return Err(self.abandon(&name, started_at, e).await);
                }
                SendOutcome::Permanent { reason }
                | SendOutcome::DestinationDown { reason }
                | SendOutcome::PausedUntil { reason, .. } => {
                    let e = format!("batch {batch_seq} refused: {reason}");
                    return Err(self.abandon(&name, started_at, e).await);
                }
            }
            if next.is_empty() {
                break;
            }
            current = next;
            read_at = next_read_at;
        }
        self.store
            .finish_replace(&name, audience.id, started_at, true)
            .await
            .map_err(|e| e.to_string())?;
        self.progress(index, |p| p.done = true);
        tracing::info!(destination = %name, audience = %audience.name, session_id, batches = batch_seq, "replace finished");
        Ok(())
    }

    /// A replace that stopped part-way: the platform's state is unknown,
    /// so every member goes again through the normal path.
    async fn abandon(&self, destination: &str, started_at: i64, error: String) -> String {
        tracing::error!(destination, audience = %self.audience.name, error = %error, "replace failed; members will be sent again");
        match self
            .store
            .finish_replace(destination, self.audience.id, started_at, false)
            .await
        {
            Ok(()) => error,
            Err(e) => format!("{error} (and forgetting the acknowledgements failed: {e})"),
        }
    }

    fn touched(&self, diff: &SnapshotDiff) {
        if diff.entered + diff.exited + diff.unchanged > 0 {
            for d in &self.audience.destinations {
                self.wakers.wake(d);
            }
        }
    }
}

/// Reads an audience's members in person_id pages and hands out batches of
/// people the destination can address, reading at most a page ahead.
struct MemberPages {
    store: Arc<dyn Store>,
    audience_id: i64,
    batch: usize,
    after: i64,
    exhausted: bool,
    /// People read, each with when their page was read.
    buffer: VecDeque<(PersonRecord, i64)>,
    unaddressable: u64,
}

impl MemberPages {
    fn new(store: Arc<dyn Store>, audience_id: i64, batch: usize) -> Self {
        MemberPages {
            store,
            audience_id,
            batch,
            after: 0,
            exhausted: false,
            buffer: VecDeque::new(),
            unaddressable: 0,
        }
    }

    /// The next batch (full unless it is the last; empty at the end), and
    /// when the oldest of its people was read, less [`READ_MARGIN_MS`].
    async fn next_batch(
        &mut self,
        dest: &dyn Destination,
    ) -> Result<(Vec<PersonRecord>, i64), String> {
        while !self.exhausted && self.buffer.len() < self.batch {
            let read_at = now_ms() - READ_MARGIN_MS;
            let page = self
                .store
                .members_page(self.audience_id, self.after, self.batch)
                .await
                .map_err(|e| e.to_string())?;
            self.exhausted = page.len() < self.batch;
            if let Some(last) = page.last() {
                self.after = last.person_id;
            }
            for person in page {
                if dest.can_address(&person) {
                    self.buffer.push_back((person, read_at));
                } else {
                    self.unaddressable += 1;
                }
            }
        }
        let n = self.batch.min(self.buffer.len());
        let read_at = self.buffer.front().map_or_else(now_ms, |(_, at)| *at);
        let batch = self.buffer.drain(..n).map(|(p, _)| p).collect();
        Ok((batch, read_at))
    }
}
