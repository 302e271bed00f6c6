use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::audiences::AudienceDef;
use crate::customerio::app_api::{AppApiClient, IdType, MembershipPage};
use crate::delivery::Wakers;
use crate::identity::{Email, Phone};
use crate::store::{now_ms, SnapshotDiff, SnapshotJob, Store};

/// Masked identifiers kept as examples in a job's report.
const SAMPLE: usize = 10;
/// Pages fetched ahead of the one being applied.
const PREFETCH: usize = 2;

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
    Done,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Fetching => "fetching",
            Phase::Exits => "exits",
            Phase::Enriching => "enriching",
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
            error: None,
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Failed)
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
        let now = now_ms();
        match result.and(cleanup.map_err(|e| e.to_string())) {
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

    fn touched(&self, diff: &SnapshotDiff) {
        if diff.entered + diff.exited + diff.unchanged > 0 {
            for d in &self.audience.destinations {
                self.wakers.wake(d);
            }
        }
    }
}
