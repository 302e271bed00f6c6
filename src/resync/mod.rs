//! Resync and reconciliation: read a segment's full membership from
//! Customer.io's App API and drive koala (and so every destination) to it.
//! Pages are streamed and applied as they arrive; the store diffs them
//! against its state in chunks, so memory does not grow with the segment.

pub mod cli;
mod job;
mod lookup;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use job::{JobState, Phase, ReplaceProgress, ReplaceTarget, Trigger};
pub use lookup::{LookupReport, NotLookedUp, NotLookedUpReason, ReasonCounts, NOT_LOOKED_UP_IDS};

use crate::audiences::Catalog;
use crate::customerio::app_api::{AppApiClient, MAX_MEMBERSHIP_LIMIT};
use crate::delivery::Wakers;
use crate::identity::PhoneRules;
use crate::store::{SnapshotDiff, Store};

/// How many finished jobs stay visible in the API: in memory, and per
/// audience in the store.
const KEEP_FINISHED: usize = 200;

/// Drift found by the last scheduled reconciliation of an audience.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileStatus {
    pub every_seconds: Option<u64>,
    pub last_run_at: Option<i64>,
    pub last_job: Option<String>,
    pub last_outcome: Option<String>,
    pub drift_entered: u64,
    pub drift_exited: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error("customerio.app_api_key is not configured: resync needs Customer.io's App API")]
    NotConfigured,
    #[error("no audience named {0:?}")]
    UnknownAudience(String),
    /// A replace that cannot be done as asked.
    #[error("replace: {0}")]
    BadReplace(String),
}

pub struct Resyncs {
    client: Option<AppApiClient>,
    store: Arc<dyn Store>,
    catalog: Catalog,
    wakers: Wakers,
    page_limit: u32,
    /// How looked-up phones without a country code are read.
    phone_rules: PhoneRules,
    /// Audiences with a destination that needs phones or attributes.
    needs_profiles: HashSet<String>,
    jobs: Mutex<Jobs>,
    reconcile: Mutex<HashMap<String, ReconcileStatus>>,
}

#[derive(Default)]
struct Jobs {
    by_id: HashMap<String, Arc<Mutex<JobState>>>,
    running: HashMap<String, String>,
    finished: VecDeque<String>,
}

impl Resyncs {
    pub fn new(
        client: Option<AppApiClient>,
        page_limit: u32,
        needs_profiles: HashSet<String>,
        store: Arc<dyn Store>,
        catalog: Catalog,
        wakers: Wakers,
        phone_rules: PhoneRules,
    ) -> Arc<Self> {
        Arc::new(Resyncs {
            phone_rules,
            needs_profiles,
            client,
            store,
            catalog,
            wakers,
            page_limit: page_limit.clamp(1, MAX_MEMBERSHIP_LIMIT),
            jobs: Mutex::new(Jobs::default()),
            reconcile: Mutex::new(HashMap::new()),
        })
    }

    /// Starts a resync of `audience`, or returns the one already running
    /// (`false` as the second value). After the membership is applied, the
    /// platform audience of each `replace` destination is replaced in full
    /// with koala's members (not with a dry run; each must be a destination
    /// of the audience that supports it).
    pub fn start(
        self: &Arc<Self>,
        audience: &str,
        dry_run: bool,
        trigger: Trigger,
        replace: Vec<ReplaceTarget>,
    ) -> Result<(JobState, bool), ResyncError> {
        let def = self
            .catalog
            .by_name(audience)
            .cloned()
            .ok_or_else(|| ResyncError::UnknownAudience(audience.to_owned()))?;
        if !replace.is_empty() && dry_run {
            return Err(ResyncError::BadReplace(
                "cannot be combined with dry_run".into(),
            ));
        }
        let mut names: Vec<String> = Vec::new();
        for t in &replace {
            let destination = t.destination.current();
            let name = destination.name();
            if !def.destinations.iter().any(|d| d == name) {
                return Err(ResyncError::BadReplace(format!(
                    "{name:?} is not a destination of audience {:?}",
                    def.name
                )));
            }
            if !destination.supports_replace() {
                return Err(ResyncError::BadReplace(format!(
                    "destination {name:?} cannot replace an audience"
                )));
            }
            if names.iter().any(|n| n == name) {
                return Err(ResyncError::BadReplace(format!("{name:?} is named twice")));
            }
            names.push(name.to_owned());
        }
        let client = self.client.clone().ok_or(ResyncError::NotConfigured)?;
        let mut jobs = self.jobs.lock().expect("jobs lock");
        if let Some(id) = jobs.running.get(audience) {
            let state = jobs.by_id[id].lock().expect("job lock").clone();
            return Ok((state, false));
        }
        let mut state = JobState::new(&def, dry_run, trigger);
        state.replace = names;
        let id = state.id.clone();
        let shared = Arc::new(Mutex::new(state.clone()));
        jobs.by_id.insert(id.clone(), shared.clone());
        jobs.running.insert(audience.to_owned(), id.clone());
        drop(jobs);
        let this = self.clone();
        tokio::spawn(async move {
            let enrich = this.needs_profiles.contains(&def.name);
            let run = job::Run {
                client,
                store: this.store.clone(),
                wakers: this.wakers.clone(),
                audience: def,
                state: shared.clone(),
                page_limit: this.page_limit,
                enrich,
                replace,
                phone_rules: this.phone_rules,
            };
            run.execute().await;
            this.finished(&shared).await;
        });
        Ok((state, true))
    }

    async fn finished(&self, shared: &Arc<Mutex<JobState>>) {
        let state = shared.lock().expect("job lock").clone();
        record_metrics(&state);
        // The report outlives this process: GET /v1/resyncs/{id} answers
        // it after a restart. A failure to keep it costs only that.
        match serde_json::to_value(&state) {
            Ok(report) => {
                if let Err(e) = self
                    .store
                    .record_finished_resync(
                        &crate::store::FinishedResync {
                            job_id: &state.id,
                            audience: &state.audience,
                            trigger: state.trigger.as_str(),
                            started_at: state.started_at,
                            finished_at: state.finished_at,
                            report: &report,
                        },
                        KEEP_FINISHED,
                    )
                    .await
                {
                    tracing::warn!(job = %state.id, error = %e, "the resync's report could not be stored");
                }
            }
            Err(e) => {
                tracing::warn!(job = %state.id, error = %e, "the resync's report does not serialize")
            }
        }
        if state.trigger == Trigger::Schedule {
            let mut r = self.reconcile.lock().expect("reconcile lock");
            let status = r.entry(state.audience.clone()).or_default();
            status.last_run_at = state.finished_at;
            status.last_job = Some(state.id.clone());
            status.last_outcome = Some(state.phase.as_str().to_owned());
            status.drift_entered = state.diff.entered;
            status.drift_exited = state.diff.exited;
        }
        let mut jobs = self.jobs.lock().expect("jobs lock");
        jobs.running.remove(&state.audience);
        jobs.finished.push_back(state.id.clone());
        while jobs.finished.len() > KEEP_FINISHED {
            if let Some(old) = jobs.finished.pop_front() {
                jobs.by_id.remove(&old);
            }
        }
    }

    /// A job's report: this process's own (running or finished), else the
    /// store's for a job that finished earlier (before a restart).
    pub async fn report(
        &self,
        id: &str,
    ) -> Result<Option<serde_json::Value>, crate::store::StoreError> {
        if let Some(job) = self.job(id) {
            return Ok(serde_json::to_value(job).ok());
        }
        self.store.finished_resync(id).await
    }

    pub fn job(&self, id: &str) -> Option<JobState> {
        let jobs = self.jobs.lock().expect("jobs lock");
        jobs.by_id
            .get(id)
            .map(|s| s.lock().expect("job lock").clone())
    }

    /// Jobs running now.
    pub fn running(&self) -> Vec<JobState> {
        let jobs = self.jobs.lock().expect("jobs lock");
        jobs.running
            .values()
            .filter_map(|id| jobs.by_id.get(id))
            .map(|s| s.lock().expect("job lock").clone())
            .collect()
    }

    /// The latest job of an audience (running or finished).
    pub fn latest_for(&self, audience: &str) -> Option<JobState> {
        let jobs = self.jobs.lock().expect("jobs lock");
        jobs.by_id
            .values()
            .map(|s| s.lock().expect("job lock").clone())
            .filter(|s| s.audience == audience)
            .max_by_key(|s| s.started_at)
    }

    /// The scheduled reconciliation of an audience: its interval, and its
    /// last run (this process's, else the newest the store kept).
    pub async fn reconcile_status(
        &self,
        audience: &str,
    ) -> Result<Option<ReconcileStatus>, crate::store::StoreError> {
        let mine = self
            .reconcile
            .lock()
            .expect("reconcile lock")
            .get(audience)
            .cloned();
        let Some(mut status) = mine else {
            return Ok(None);
        };
        if status.last_job.is_none() {
            if let Some(r) = self
                .store
                .latest_finished_resync(audience, Some(Trigger::Schedule.as_str()))
                .await?
            {
                status.last_run_at = r["finished_at"].as_i64();
                status.last_job = r["id"].as_str().map(str::to_owned);
                status.last_outcome = r["phase"].as_str().map(str::to_owned);
                status.drift_entered = r["entered"].as_u64().unwrap_or(0);
                status.drift_exited = r["exited"].as_u64().unwrap_or(0);
            }
        }
        Ok(Some(status))
    }

    /// The latest job of an audience as the API summarizes it: this
    /// process's (running or finished), else the newest the store kept.
    pub async fn latest_summary(
        &self,
        audience: &str,
    ) -> Result<Option<serde_json::Value>, crate::store::StoreError> {
        let report = match self.latest_for(audience) {
            Some(job) => serde_json::to_value(job).ok(),
            None => self.store.latest_finished_resync(audience, None).await?,
        };
        Ok(report.map(|r| {
            serde_json::json!({ "id": r["id"], "phase": r["phase"], "dry_run": r["dry_run"],
                "started_at": r["started_at"], "finished_at": r["finished_at"],
                "entered": r["entered"], "exited": r["exited"] })
        }))
    }

    /// Runs the scheduled reconciliation of every audience that asks for
    /// one, until `cancel`.
    pub fn schedule(
        self: &Arc<Self>,
        intervals: Vec<(String, Duration)>,
        cancel: CancellationToken,
    ) {
        for (audience, every) in intervals {
            self.reconcile
                .lock()
                .expect("reconcile lock")
                .entry(audience.clone())
                .or_default()
                .every_seconds = Some(every.as_secs());
            let this = self.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    match this.start(&audience, false, Trigger::Schedule, Vec::new()) {
                        Ok((job, true)) => {
                            tracing::info!(audience = %audience, job = %job.id, "scheduled reconciliation started")
                        }
                        Ok((job, false)) => {
                            tracing::info!(audience = %audience, job = %job.id, "reconciliation skipped: a resync is running")
                        }
                        Err(e) => {
                            tracing::error!(audience = %audience, error = %e, "scheduled reconciliation could not start")
                        }
                    }
                }
            });
        }
    }
}

fn record_metrics(state: &JobState) {
    let audience = state.audience.clone();
    metrics::counter!("koala_resync_runs_total", "audience" => audience.clone(), "trigger" => state.trigger.as_str(), "outcome" => state.phase.as_str())
        .increment(1);
    if state.dry_run || state.phase != Phase::Done {
        return;
    }
    let SnapshotDiff {
        entered, exited, ..
    } = state.diff;
    metrics::counter!("koala_resync_changes_total", "audience" => audience.clone(), "direction" => "entered").increment(entered);
    metrics::counter!("koala_resync_changes_total", "audience" => audience.clone(), "direction" => "exited").increment(exited);
    if state.trigger == Trigger::Schedule {
        metrics::counter!("koala_reconcile_drift_total", "audience" => audience.clone(), "direction" => "entered").increment(entered);
        metrics::counter!("koala_reconcile_drift_total", "audience" => audience.clone(), "direction" => "exited").increment(exited);
        metrics::gauge!("koala_reconcile_last_drift", "audience" => audience.clone())
            .set((entered + exited) as f64);
        if let Some(t) = state.finished_at {
            metrics::gauge!("koala_reconcile_last_run_timestamp_seconds", "audience" => audience)
                .set(t as f64 / 1000.0);
        }
    }
}
