//! Durable state behind one interface. The embedded store is SQLite (WAL);
//! a PostgreSQL store implements the same trait with the same tables.

mod ingest_plan;
mod people;
pub mod retention;
mod sqlite;
mod sqlite_ingest;
mod sqlite_lookup;
mod sqlite_replace;
mod sqlite_retention;
mod sqlite_snapshot;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Map, Value};

pub use sqlite::SqliteStore;

pub use crate::audiences::SyncOp;
pub use crate::person::PersonRecord;

use crate::audiences::AudienceDef;
use crate::customerio::reporting::ReportingEvent;
use crate::customerio::segment::SegmentEvent;
use crate::identity::Identifiers;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store: {0}")]
    Other(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Opens the store a URL names, migrated and ready.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else {
        Err(StoreError::Other(format!(
            "unsupported store URL scheme {:?} (this build has sqlite)",
            url.split(':').next().unwrap_or_default()
        )))
    }
}

/// One unit of ingest, applied atomically with others in a group commit.
#[derive(Debug, Clone)]
pub enum IngestCommand {
    /// A segment change routed to the audiences fed by its segment.
    Segment {
        event: SegmentEvent,
        audiences: Vec<Arc<AudienceDef>>,
    },
    Reporting(ReportingEvent),
}

/// What one command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum IngestOutcome {
    /// Stored. `audiences` says, per audience, whether membership changed.
    Accepted {
        person_id: i64,
        audiences: Vec<AudienceOutcome>,
    },
    /// Seen before: nothing changed.
    Duplicate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AudienceOutcome {
    pub audience: String,
    /// applied | unchanged | stale
    pub outcome: &'static str,
    #[serde(skip)]
    pub destinations_touched: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AudienceStats {
    pub audience_id: i64,
    pub name: String,
    pub segment_id: i64,
    pub mode: String,
    pub members: i64,
    pub with_email: i64,
    pub with_phone: i64,
    pub with_neither: i64,
    /// Members whose only email (phone) given is unusable.
    pub email_unusable: i64,
    pub phone_unusable: i64,
    pub last_change_at: Option<i64>,
}

/// Membership changes of one audience in one time bucket, from one source.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeBucket {
    /// Start of the bucket (Customer.io's event time), ms.
    pub start: i64,
    /// segment_webhook | resync
    pub source: String,
    pub entered: i64,
    pub exited: i64,
    /// Events that arrived older than what koala held: history only.
    pub stale: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MembershipView {
    pub audience: String,
    pub is_member: bool,
    pub since: i64,
    pub last_event_at: i64,
    pub set_by_event: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub event_id: i64,
    pub audience: Option<String>,
    pub source: String,
    pub kind: String,
    pub occurred_at: i64,
    pub received_at: i64,
    pub outcome: String,
    pub detail: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncStateView {
    pub destination: String,
    pub audience: String,
    pub desired: bool,
    pub acknowledged: Option<bool>,
    pub acknowledged_at: Option<i64>,
    pub pending: bool,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub dead_letter: Option<String>,
}

/// Everything koala knows of one person. Email and phone are in clear here;
/// the HTTP layer masks them.
#[derive(Debug, Clone)]
pub struct PersonView {
    pub record: PersonRecord,
    /// Identifiers given that cannot be used (why, never what).
    pub unusable: Vec<crate::identity::Unusable>,
    pub subscribed: Option<bool>,
    pub subscription_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub memberships: Vec<MembershipView>,
    pub history: Vec<HistoryEntry>,
    pub sync: Vec<SyncStateView>,
}

/// One claimed row of delivery work.
#[derive(Debug, Clone)]
pub struct WorkItem {
    pub sync_id: i64,
    pub version: i64,
    pub desired_at: i64,
    pub desired_received_at: i64,
    pub attempts: i64,
    pub person: PersonRecord,
}

/// Rows of one (audience, op) leased to one dispatcher.
#[derive(Debug, Clone)]
pub struct WorkBatch {
    pub destination: String,
    pub audience_id: i64,
    pub op: SyncOp,
    pub items: Vec<WorkItem>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DestinationAudienceStats {
    /// Rows to be sent as members: entries, and attribute updates.
    pub pending_adds: i64,
    pub pending_removes: i64,
    /// Of `pending_adds`, attribute updates of members the destination
    /// already holds.
    pub pending_updates: i64,
    pub acknowledged_members: i64,
    /// Acknowledged members the destination could not be sent (none of
    /// its identifiers): the gap between the audience and what it holds.
    pub unmatched_members: i64,
    pub dead_letters: i64,
    pub last_success_at: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PendingSummary {
    pub pending: i64,
    /// Receipt time of the oldest pending change, ms.
    pub oldest_received_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub sync_id: i64,
    pub destination: String,
    pub audience: String,
    pub person_id: i64,
    pub customer_id: Option<String>,
    pub op: SyncOp,
    pub reason: String,
    pub dead_at: i64,
    pub attempts: i64,
}

#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    pub destination: Option<String>,
    pub audience_id: Option<i64>,
}

/// A profile looked up in Customer.io for one person, validated.
#[derive(Debug, Clone)]
pub struct ProfileLookup {
    pub person_id: i64,
    pub email: Option<crate::identity::Email>,
    pub phone: Option<crate::identity::Phone>,
    pub attributes: Map<String, Value>,
}

/// What merging one looked-up profile did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enriched {
    /// Email, phone or attributes changed: acknowledged destinations are
    /// sent the person again.
    Changed,
    /// Nothing a destination is sent changed: nothing is re-sent.
    Unchanged,
    /// The person is no longer in the store.
    Gone,
}

/// The keys Customer.io knows a person by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonKey {
    pub person_id: i64,
    pub customer_id: Option<String>,
    pub cio_id: Option<String>,
    /// Whether koala holds an email for them (not the email itself).
    pub has_email: bool,
}

/// A resync applying one full segment snapshot taken at `stamp_at`.
#[derive(Debug, Clone)]
pub struct SnapshotJob {
    pub id: String,
    pub audience: Arc<AudienceDef>,
    /// When the snapshot began: its facts carry this time in the
    /// latest-wins rule, so newer webhooks still win.
    pub stamp_at: i64,
    pub dry_run: bool,
    /// Masked identifiers to keep as examples of what changes.
    pub sample_limit: usize,
}

/// What (part of) a snapshot changed, or would change in a dry run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SnapshotDiff {
    pub entered: u64,
    pub exited: u64,
    pub unchanged: u64,
    /// Facts older than what koala holds (a newer webhook won).
    pub stale: u64,
    /// People koala had never seen.
    pub new_people: u64,
    /// Ids of the new people of this part (one page at most): the resync
    /// hands them to its profile lookup and never keeps them.
    #[serde(skip)]
    pub new_person_ids: Vec<i64>,
    pub sample_entered: Vec<String>,
    pub sample_exited: Vec<String>,
}

impl SnapshotDiff {
    pub fn add(&mut self, other: SnapshotDiff, sample_limit: usize) {
        self.entered += other.entered;
        self.exited += other.exited;
        self.unchanged += other.unchanged;
        self.stale += other.stale;
        self.new_people += other.new_people;
        self.new_person_ids.extend(other.new_person_ids);
        for (mine, theirs) in [
            (&mut self.sample_entered, other.sample_entered),
            (&mut self.sample_exited, other.sample_exited),
        ] {
            let room = sample_limit.saturating_sub(mine.len());
            mine.extend(theirs.into_iter().take(room));
        }
    }
}

/// What one pruning batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneProgress {
    pub deleted: u64,
    /// Where the next batch of this pass starts (`from`), or `None` when
    /// the pass has nothing more to do in this table.
    pub next: Option<retention::PruneCursor>,
}

/// The store's size on disk and the part of it that is free for reuse
/// (deleted rows' pages: SQLite reuses them before growing the file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DiskUsage {
    pub bytes: u64,
    pub free_bytes: u64,
}

/// A finished resync as the store keeps it.
#[derive(Debug, Clone, Copy)]
pub struct FinishedResync<'a> {
    pub job_id: &'a str,
    pub audience: &'a str,
    /// `api` or `schedule`.
    pub trigger: &'a str,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// The admin API's JSON for the job (masked identifiers only).
    pub report: &'a serde_json::Value,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip for readiness.
    async fn ping(&self) -> Result<()>;

    /// True when this process is the only one using the store (SQLite), so
    /// leases left by a killed run can be released at start.
    fn is_exclusive(&self) -> bool;

    /// The destinations that keep attributes (analytics, warehouses,
    /// webhooks) and what they read: when something one of them reads of a
    /// current member changes, its rows for that person become pending
    /// again, as an update.
    fn set_attribute_holders(&self, readers: crate::audiences::AttributeReaders);

    /// Records configured audiences; returns them with their ids set.
    async fn register_audiences(&self, defs: Vec<AudienceDef>) -> Result<Vec<AudienceDef>>;

    /// Applies commands in one transaction (group commit). Each command
    /// gets its own result; a failing one does not undo the others.
    async fn apply_batch(
        &self,
        commands: &[IngestCommand],
        received_at_ms: i64,
    ) -> Result<Vec<Result<IngestOutcome>>>;

    /// (audience name, member count) for every audience, from the running
    /// count kept in the same transaction as each change.
    async fn member_counts(&self) -> Result<Vec<(String, i64)>>;

    /// Size and identifier coverage, from counts kept with every change.
    async fn audience_stats(&self, audience_id: i64) -> Result<Option<AudienceStats>>;

    /// Applied entries and exits (and stale events) of an audience since
    /// `since_ms`, counted per `bucket_ms` of event time and per source.
    async fn audience_changes(
        &self,
        audience_id: i64,
        since_ms: i64,
        bucket_ms: i64,
    ) -> Result<Vec<ChangeBucket>>;

    /// Finds a person by Customer.io id, then cio_id (with or without the
    /// `cio_` prefix), then email.
    async fn find_person(&self, key: &str, history_limit: i64) -> Result<Option<PersonView>>;

    // ---- resync ----

    /// Applies one page of a snapshot: every member is "in" at the job's
    /// stamp, through the same latest-wins rule as webhooks.
    async fn snapshot_members(
        &self,
        job: &SnapshotJob,
        members: &[Identifiers],
    ) -> Result<SnapshotDiff>;

    /// After the last page: every member the snapshot did not contain is
    /// "out" at the job's stamp.
    async fn snapshot_exits(&self, job: &SnapshotJob) -> Result<SnapshotDiff>;

    /// Merges profiles looked up in Customer.io (email, phone, attributes)
    /// into their people, as of `at_ms`, in one transaction. Only a person
    /// whose email, phone or attributes the lookup changed is sent again
    /// to destinations that already acknowledged them; one never sent
    /// goes out once, with the fuller record. One outcome per lookup.
    async fn enrich_people(&self, lookups: &[ProfileLookup], at_ms: i64) -> Result<Vec<Enriched>>;

    /// The Customer.io id and cio_id of each person (unknown ids left out).
    async fn person_keys(&self, person_ids: &[i64]) -> Result<Vec<PersonKey>>;

    /// Drops the job's scratch rows; a completed, real snapshot also
    /// records its time as the audience's snapshot floor.
    async fn finish_snapshot(&self, job: &SnapshotJob, completed: bool) -> Result<()>;

    // ---- full replace (a destination's whole audience in one session) ----

    /// Current members of an audience with `person_id > after_person_id`,
    /// in person_id order, at most `limit`, with identifiers and attributes.
    async fn members_page(
        &self,
        audience_id: i64,
        after_person_id: i64,
        limit: usize,
    ) -> Result<Vec<PersonRecord>>;

    /// One replace batch was accepted: the destination holds these people
    /// (acknowledged in; a row is created for a member that had none). They
    /// are remembered until [`Store::finish_replace`]. A person whose
    /// record changed at or after `read_at_ms` (when the batch was read,
    /// e.g. a profile lookup landing meanwhile) was sent without the
    /// change, so their row stays pending for the normal path.
    async fn mark_replaced(
        &self,
        destination: &str,
        audience_id: i64,
        sent_person_ids: &[i64],
        read_at_ms: i64,
        now_ms: i64,
    ) -> Result<()>;

    /// Ends a replace begun at `started_at_ms`. Succeeded: the destination
    /// holds exactly the people marked, so every other row is acknowledged
    /// out. Failed part-way: what the destination holds is unknown, so
    /// every acknowledgement of (destination, audience) is forgotten and
    /// each current member is sent again through the normal path.
    async fn finish_replace(
        &self,
        destination: &str,
        audience_id: i64,
        started_at_ms: i64,
        succeeded: bool,
    ) -> Result<()>;

    // ---- delivery ----

    /// Releases every lease (only for exclusive stores, at start).
    async fn release_all_leases(&self) -> Result<()>;

    /// True when some row is due now (cheap; no lease taken).
    async fn has_due_work(&self, destination: &str, now_ms: i64) -> Result<bool>;

    /// Leases up to `max_rows` due rows of one (audience, op) group.
    async fn claim_work(
        &self,
        destination: &str,
        now_ms: i64,
        lease_ms: i64,
        max_rows: usize,
    ) -> Result<Option<WorkBatch>>;

    /// The destination acknowledged these rows in the batch's op. `sent`
    /// is false for people it cannot address (none of its identifiers):
    /// they are settled without a request and counted as unmatched.
    async fn ack_work(
        &self,
        batch: &WorkBatch,
        sync_ids: &[i64],
        sent: bool,
        now_ms: i64,
    ) -> Result<()>;

    /// Returns rows to the queue, due again at `next_attempt_at`. The rows
    /// were (or may have been) sent without a definitive answer, so the
    /// destination may hold what was sent: they are marked uncertain and
    /// stay pending, so their state is sent again, and any later change of
    /// them is sent even if it goes back to what was last acknowledged
    /// (a person who left while their add was in flight is removed).
    async fn retry_work(&self, sync_ids: &[i64], next_attempt_at: i64, error: &str) -> Result<()>;

    /// Parks rows as dead letters with a reason.
    async fn dead_letter_work(&self, sync_ids: &[i64], reason: &str, now_ms: i64) -> Result<()>;

    async fn dead_letters(&self, filter: &DeadLetterFilter, limit: i64) -> Result<Vec<DeadLetter>>;

    /// Makes matching dead letters due again; returns how many.
    async fn redrive(&self, filter: &DeadLetterFilter) -> Result<u64>;

    /// Keeps a finished resync's report (the admin API's JSON for it, with
    /// masked identifiers only), and of each audience only the newest
    /// `keep` reports.
    async fn record_finished_resync(&self, job: &FinishedResync<'_>, keep: usize) -> Result<()>;

    /// A finished resync's report, if the store still keeps it.
    async fn finished_resync(&self, job_id: &str) -> Result<Option<serde_json::Value>>;

    /// The newest finished resync report of an audience, of one trigger
    /// (`api`, `schedule`) or any.
    async fn latest_finished_resync(
        &self,
        audience: &str,
        trigger: Option<&str>,
    ) -> Result<Option<serde_json::Value>>;

    /// From counts kept with every change: one row read, whatever the size.
    async fn destination_audience_stats(
        &self,
        destination: &str,
        audience_id: i64,
    ) -> Result<DestinationAudienceStats>;

    async fn pending_summary(&self, destination: &str) -> Result<PendingSummary>;

    /// Records the attribute mapping (its fingerprint) a destination's
    /// audience is synced with. When it differs from the one recorded,
    /// every member the destination acknowledged is queued once more, so
    /// the platform gets the newly mapped fields; returns how many. The
    /// first mapping recorded re-queues nobody.
    async fn set_mapping(
        &self,
        destination: &str,
        audience_id: i64,
        mapping_hash: &str,
        now_ms: i64,
    ) -> Result<u64>;

    /// The destination's audience id koala created earlier, if any.
    async fn destination_audience(
        &self,
        destination: &str,
        audience_id: i64,
    ) -> Result<Option<String>>;

    async fn record_destination_audience(
        &self,
        destination: &str,
        audience_id: i64,
        external_id: &str,
        now_ms: i64,
    ) -> Result<()>;

    // ---- retention ----

    /// Deletes one batch of `table`'s rows that the retention rules
    /// (`store::retention`) allow at `cutoffs`, in one short transaction:
    /// at most `limit` rows read and deleted. `from` is the previous
    /// batch's `next` (`PruneCursor::Start` to begin a pass). Ingest waits
    /// for at most one batch.
    async fn prune_batch(
        &self,
        table: retention::PruneTable,
        cutoffs: &retention::Cutoffs,
        from: &retention::PruneCursor,
        limit: usize,
    ) -> Result<PruneProgress>;

    /// Size on disk, if the store has a file of its own.
    async fn disk_usage(&self) -> Result<Option<DiskUsage>>;
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
