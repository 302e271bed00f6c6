use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::audiences::AudienceDef;
use crate::customerio::app_api::{AppApiClient, IdType, MembershipPage};
use crate::delivery::Wakers;
use crate::destinations::{Destination, Mapping, ReplaceSession, SendOutcome, SendTarget};
use crate::identity::{Email, Phone};
use crate::store::{now_ms, PersonRecord, SnapshotDiff, SnapshotJob, Store};

/// Masked identifiers kept as examples in a job's report.
const SAMPLE: usize = 10;
/// Pages fetched ahead of the one being applied.
const PREFETCH: usize = 2;
/// Most people in one replace request (Meta's limit per request).
const REPLACE_BATCH: usize = 10_000;
/// Tries of one replace batch before the replace is given up.
const REPLACE_ATTEMPTS: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Queued,
    /// Fetching pages and applying entries as they arrive.
    Fetching,
    /// All pages in: applying exits for members the segment no longer has.
    Exits,
    /// Looking up phones and attributes of people first seen in this resync.
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
    pub destination: Arc<dyn Destination>,
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
    /// New people whose profiles were looked up, could not be, or were
    /// beyond the lookup limit.
    pub profiles_fetched: u64,
    pub profiles_failed: u64,
    pub profiles_skipped: u64,
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
            profiles_skipped: 0,
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
        let result = self.apply(&snapshot).await;
        let completed = result.is_ok();
        let cleanup = self.store.finish_snapshot(&snapshot, completed).await;
        let mut result = result.and(cleanup.map_err(|e| e.to_string()));
        if result.is_ok() && !dry_run && !self.replace.is_empty() {
            result = self.replace_all().await;
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

    async fn apply(&self, snapshot: &SnapshotJob) -> Result<(), String> {
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
            let diff = self
                .store
                .snapshot_members(snapshot, &identifiers)
                .await
                .map_err(|e| e.to_string())?;
            self.touched(&diff);
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
        if self.enrich && !snapshot.dry_run {
            self.fetch_profiles(snapshot).await;
        }
        Ok(())
    }

    /// The membership listing carries id, cio_id and email only; people
    /// first seen here get their phone and attributes from the App API
    /// (within its rate limit), and destinations get the fuller record.
    async fn fetch_profiles(&self, snapshot: &SnapshotJob) {
        let (ids, total) = {
            let s = self.state.lock().expect("job lock");
            (s.diff.new_person_ids.clone(), s.diff.new_people)
        };
        self.update(|s| {
            s.phase = Phase::Enriching;
            s.profiles_skipped = total.saturating_sub(ids.len() as u64);
        });
        let mut consecutive_failures = 0;
        for pid in ids {
            let ok = self.fetch_profile(pid, snapshot.stamp_at).await;
            self.update(|s| {
                if ok {
                    s.profiles_fetched += 1
                } else {
                    s.profiles_failed += 1
                }
            });
            consecutive_failures = if ok { 0 } else { consecutive_failures + 1 };
            if consecutive_failures >= 20 {
                tracing::warn!(audience = %self.audience.name, "App API keeps failing; profile lookups stopped");
                break;
            }
        }
        for d in &self.audience.destinations {
            self.wakers.wake(d);
        }
    }

    async fn fetch_profile(&self, person_id: i64, at_ms: i64) -> bool {
        let Ok(Some((key, is_cio))) = self.store.person_key(person_id).await else {
            return false;
        };
        let id_type = if is_cio { IdType::CioId } else { IdType::Id };
        let customer = match self.client.customer_attributes(&key, id_type).await {
            Ok(Some(c)) => c,
            Ok(None) => return true, // deleted since: nothing to add
            Err(e) => {
                tracing::debug!(error = %e, "profile lookup failed");
                return false;
            }
        };
        let email = customer
            .attribute("email")
            .and_then(|e| Email::parse(&e).ok());
        let phone = customer
            .attribute("phone")
            .and_then(|p| Phone::parse(&p).ok());
        let attributes = customer
            .attributes
            .into_iter()
            .filter(|(k, v)| {
                !matches!(k.as_str(), "id" | "cio_id" | "email" | "phone")
                    && (v.is_string() || v.is_number() || v.is_boolean())
            })
            .collect();
        self.store
            .enrich_person(person_id, email, phone, attributes, at_ms)
            .await
            .is_ok()
    }

    /// Replaces each destination asked for, one after the other, with
    /// koala's current members; the first failure fails the job.
    async fn replace_all(&self) -> Result<(), String> {
        self.update(|s| s.phase = Phase::Replacing);
        for target in &self.replace {
            let name = target.destination.name().to_owned();
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
        let dest = &target.destination;
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
        let pace = if limits.requests_per_second.is_finite() && limits.requests_per_second > 0.0 {
            Duration::from_secs_f64(1.0 / limits.requests_per_second)
        } else {
            Duration::from_secs(1)
        };
        let mut members = MemberPages::new(self.store.clone(), audience.id, batch_size);
        let mut current = members.next_batch(dest.as_ref()).await?;
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
        let mut last_request: Option<Instant> = None;
        loop {
            // One page ahead, to know whether this batch is the last.
            let next = match members.next_batch(dest.as_ref()).await {
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
                if let Some(at) = last_request {
                    tokio::time::sleep(pace.saturating_sub(at.elapsed())).await;
                }
                last_request = Some(Instant::now());
                let send_target = SendTarget {
                    audience,
                    platform_audience_id: &platform_id,
                    mapping: &target.mapping,
                };
                match dest.send_replace(&send_target, &session, &current).await {
                    SendOutcome::RetryLater { after, reason } if attempt < REPLACE_ATTEMPTS => {
                        let backoff = limits
                            .base_backoff
                            .max(Duration::from_millis(1))
                            .saturating_mul(1 << (attempt - 1).min(16));
                        let delay = after
                            .unwrap_or(backoff)
                            .min(limits.max_backoff.max(Duration::from_secs(1)));
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
                        .mark_replaced(&name, audience.id, &ids, now_ms())
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
    buffer: VecDeque<PersonRecord>,
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

    /// The next batch (full unless it is the last); empty at the end.
    async fn next_batch(&mut self, dest: &dyn Destination) -> Result<Vec<PersonRecord>, String> {
        while !self.exhausted && self.buffer.len() < self.batch {
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
                    self.buffer.push_back(person);
                } else {
                    self.unaddressable += 1;
                }
            }
        }
        let n = self.batch.min(self.buffer.len());
        Ok(self.buffer.drain(..n).collect())
    }
}
