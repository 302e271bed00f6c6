//! The embedded store: SQLite in WAL mode with `synchronous=FULL`, so a
//! commit is on disk before koala answers. All writes go through one
//! connection (SQLite has one writer anyway; this avoids lock upgrades),
//! reads through a small pool that WAL lets run beside the writer.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, SqliteConnection, SqlitePool};

use super::*;
use crate::identity::{IdentifierKind, Unusable, UnusableReason};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Each reader's page cache (negative: KiB), against the writer's 64 MiB.
const READER_CACHE_KIB: &str = "-8192";
/// The writer's page cache. 16 MiB holds the hot index pages of the group
/// commit (people by id, memberships, sync rows, dedupe keys); a larger
/// one mostly held pages of a big resync that are read once, and was
/// the largest part of a 1M-member resync's peak memory.
const WRITER_CACHE_KIB: &str = "-16384";

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Destinations that keep attributes (see `Store::set_attribute_holders`).
    attribute_holders: std::sync::RwLock<crate::audiences::AttributeReaders>,
}

impl SqliteStore {
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .pragma("cache_size", WRITER_CACHE_KIB)
            .pragma("temp_store", "memory");
        if let Some(dir) = Path::new(options.get_filename()).parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Other(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&writer).await?;
        // Readers scan (a replace's members, stats, lookups' keys) while
        // the writer changes the file, and every change empties their
        // caches: a big cache per reader buys little and holds up to
        // 64 MiB of memory each. The OS page cache serves the rest.
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(
                options
                    .read_only(true)
                    .pragma("cache_size", READER_CACHE_KIB),
            )
            .await?;
        Ok(SqliteStore {
            writer,
            reader,
            attribute_holders: Default::default(),
        })
    }
}

pub(super) fn ids_json(ids: &[i64]) -> String {
    serde_json::to_string(ids).expect("ids serialize")
}

/// Sets the desired state of many people at once; a row is pending while
/// it differs from what the destination acknowledged (never-sent counts as
/// "not a member", so an entry and exit before any send costs nothing), or
/// while a send of it went unanswered (`uncertain`: the destination may
/// hold what was sent). A new change supersedes a dead letter; an
/// unchanged desired state is left alone.
pub(super) async fn set_desired(
    tx: &mut SqliteConnection,
    destination: &str,
    audience_id: i64,
    rows: &[(i64, i64)],
    desired: bool,
    received_at: i64,
) -> Result<()> {
    let rows: Vec<[i64; 2]> = rows.iter().map(|(pid, at)| [*pid, *at]).collect();
    sqlx::query(
        "INSERT INTO sync_state (destination, audience_id, person_id, desired, desired_at, desired_received_at, pending)
         SELECT $1, $2, json_extract(value, '$[0]'), $3, json_extract(value, '$[1]'), $4, $3
         FROM json_each($5) WHERE TRUE
         ON CONFLICT (destination, audience_id, person_id) DO UPDATE SET
           desired = excluded.desired, desired_at = excluded.desired_at,
           desired_received_at = excluded.desired_received_at,
           version = sync_state.version + 1,
           pending = sync_state.uncertain OR (COALESCE(sync_state.acked, FALSE) <> excluded.desired),
           next_attempt_at = 0, attempts = 0, dead_reason = NULL, dead_at = NULL
         WHERE sync_state.desired <> excluded.desired",
    )
    .bind(destination)
    .bind(audience_id)
    .bind(desired)
    .bind(received_at)
    .bind(serde_json::to_string(&rows).expect("ids serialize"))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub(super) fn person_record(r: &sqlx::sqlite::SqliteRow, offset: usize) -> PersonRecord {
    let attrs: String = r.get(offset + 5);
    PersonRecord {
        person_id: r.get(offset),
        customer_id: r.get(offset + 1),
        cio_id: r.get(offset + 2),
        email: r.get(offset + 3),
        phone: r.get(offset + 4),
        attributes: serde_json::from_str(&attrs).unwrap_or_default(),
    }
}

pub(super) const PERSON_COLUMNS: &str =
    "p.person_id, p.customer_id, p.cio_id, p.email, p.phone, p.attributes";

/// The person view: the record, then subscription, times and unusable notes.
const VIEW_COLUMNS: &str = "p.person_id, p.customer_id, p.cio_id, p.email, p.phone, p.attributes, \
     p.subscribed, p.subscription_at, p.created_at, p.updated_at, p.email_unusable, p.phone_unusable";

fn filter_clause(filter: &DeadLetterFilter) -> (String, Vec<String>) {
    // Returns extra WHERE text with $2.. placeholders and their values.
    let mut sql = String::new();
    let mut values = Vec::new();
    if let Some(d) = &filter.destination {
        values.push(d.clone());
        sql.push_str(&format!(" AND s.destination = ${}", values.len()));
    }
    if let Some(a) = filter.audience_id {
        values.push(a.to_string());
        sql.push_str(&format!(
            " AND s.audience_id = CAST(${} AS INTEGER)",
            values.len()
        ));
    }
    (sql, values)
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    fn is_exclusive(&self) -> bool {
        true
    }

    fn set_attribute_holders(&self, readers: crate::audiences::AttributeReaders) {
        *self
            .attribute_holders
            .write()
            .expect("attribute holders lock") = readers;
    }

    async fn register_audiences(&self, defs: Vec<AudienceDef>) -> Result<Vec<AudienceDef>> {
        let now = now_ms();
        let mut tx = self.writer.begin().await?;
        let mut out = Vec::with_capacity(defs.len());
        for mut def in defs {
            let row = sqlx::query(
                "INSERT INTO audiences (name, segment_id, mode, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET segment_id = excluded.segment_id, mode = excluded.mode
                 RETURNING audience_id",
            )
            .bind(&def.name)
            .bind(def.segment_id)
            .bind(def.mode.as_str())
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            def.id = row.get(0);
            out.push(def);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn apply_batch(
        &self,
        commands: &[IngestCommand],
        received_at_ms: i64,
    ) -> Result<Vec<Result<IngestOutcome>>> {
        let holders = self
            .attribute_holders
            .read()
            .expect("attribute holders lock")
            .clone();
        let mut tx = self.writer.begin().await?;
        match super::sqlite_ingest::apply_group(&mut tx, commands, received_at_ms, &holders).await {
            Ok(outcomes) => {
                tx.commit().await?;
                return Ok(outcomes.into_iter().map(Ok).collect());
            }
            Err(e) if commands.len() > 1 => {
                tracing::warn!(error = %e, "group commit failed; applying its commands one by one");
                tx.rollback().await?;
            }
            Err(e) => return Ok(vec![Err(e)]),
        }
        // One bad command must not fail the others: each in a savepoint.
        let mut tx = self.writer.begin().await?;
        let mut results = Vec::with_capacity(commands.len());
        for command in commands {
            let mut sp = tx.begin().await?;
            match super::sqlite_ingest::apply_group(
                &mut sp,
                std::slice::from_ref(command),
                received_at_ms,
                &holders,
            )
            .await
            {
                Ok(mut outcome) => {
                    sp.commit().await?;
                    results.push(Ok(outcome.remove(0)));
                }
                Err(e) => {
                    sp.rollback().await?;
                    results.push(Err(e));
                }
            }
        }
        tx.commit().await?;
        Ok(results)
    }

    async fn member_counts(&self) -> Result<Vec<(String, i64)>> {
        Ok(
            sqlx::query("SELECT name, member_count FROM audiences ORDER BY name")
                .fetch_all(&self.reader)
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect(),
        )
    }

    async fn audience_stats(&self, audience_id: i64) -> Result<Option<AudienceStats>> {
        Ok(sqlx::query(
            "SELECT audience_id, name, segment_id, mode, last_change_at, member_count,
                    with_email, with_phone, with_neither, email_unusable, phone_unusable
             FROM audiences WHERE audience_id = $1",
        )
        .bind(audience_id)
        .fetch_optional(&self.reader)
        .await?
        .map(|a| AudienceStats {
            audience_id: a.get(0),
            name: a.get(1),
            segment_id: a.get(2),
            mode: a.get(3),
            last_change_at: a.get(4),
            members: a.get(5),
            with_email: a.get(6),
            with_phone: a.get(7),
            with_neither: a.get(8),
            email_unusable: a.get(9),
            phone_unusable: a.get(10),
        }))
    }

    async fn audience_changes(
        &self,
        audience_id: i64,
        since_ms: i64,
        bucket_ms: i64,
    ) -> Result<Vec<ChangeBucket>> {
        Ok(sqlx::query(
            "SELECT (occurred_at / $3) * $3 AS bucket, source,
                    SUM(CASE WHEN kind = 'entered' AND outcome = 'applied' THEN 1 ELSE 0 END),
                    SUM(CASE WHEN kind = 'exited' AND outcome = 'applied' THEN 1 ELSE 0 END),
                    SUM(CASE WHEN outcome = 'stale' THEN 1 ELSE 0 END)
             FROM events WHERE audience_id = $1 AND occurred_at >= $2
             GROUP BY bucket, source ORDER BY bucket, source",
        )
        .bind(audience_id)
        .bind(since_ms)
        .bind(bucket_ms.max(1))
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| ChangeBucket {
            start: r.get(0),
            source: r.get(1),
            entered: r.get(2),
            exited: r.get(3),
            stale: r.get(4),
        })
        .collect())
    }

    async fn find_person(&self, key: &str, history_limit: i64) -> Result<Option<PersonView>> {
        let bare_cio = key.strip_prefix("cio_").unwrap_or(key);
        let email = key.trim().to_lowercase();
        let row = sqlx::query(&format!(
            "SELECT {VIEW_COLUMNS} FROM people p WHERE p.customer_id = $1
             UNION ALL SELECT {VIEW_COLUMNS} FROM people p WHERE p.cio_id = $2
             UNION ALL SELECT {VIEW_COLUMNS} FROM people p WHERE p.email = $3
             LIMIT 1"
        ))
        .bind(key)
        .bind(bare_cio)
        .bind(&email)
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let record = person_record(&row, 0);
        let pid = record.person_id;
        let memberships = sqlx::query(
            "SELECT a.name, m.is_member, m.since, m.stamp_at, m.event_id FROM memberships m
             JOIN audiences a ON a.audience_id = m.audience_id WHERE m.person_id = $1 ORDER BY a.name",
        )
        .bind(pid)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| MembershipView {
            audience: r.get(0),
            is_member: r.get(1),
            since: r.get(2),
            last_event_at: r.get(3),
            set_by_event: r.get(4),
        })
        .collect();
        let history = sqlx::query(
            "SELECT e.event_id, a.name, e.source, e.kind, e.occurred_at, e.received_at, e.outcome, e.detail
             FROM events e LEFT JOIN audiences a ON a.audience_id = e.audience_id
             WHERE e.person_id = $1 ORDER BY e.event_id DESC LIMIT $2",
        )
        .bind(pid)
        .bind(history_limit)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| {
            let detail: Option<String> = r.get(7);
            HistoryEntry {
                event_id: r.get(0),
                audience: r.get(1),
                source: r.get(2),
                kind: r.get(3),
                occurred_at: r.get(4),
                received_at: r.get(5),
                outcome: r.get(6),
                detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
            }
        })
        .collect();
        let sync = sqlx::query(
            "SELECT s.destination, a.name, s.desired, s.acked, s.acked_at, s.pending, s.attempts, s.last_error, s.dead_reason
             FROM sync_state s JOIN audiences a ON a.audience_id = s.audience_id
             WHERE s.person_id = $1 ORDER BY s.destination, a.name",
        )
        .bind(pid)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| SyncStateView {
            destination: r.get(0),
            audience: r.get(1),
            desired: r.get(2),
            acknowledged: r.get(3),
            acknowledged_at: r.get(4),
            pending: r.get(5),
            attempts: r.get(6),
            last_error: r.get(7),
            dead_letter: r.get(8),
        })
        .collect();
        let unusable = [
            (IdentifierKind::Email, row.get::<Option<String>, _>(10)),
            (IdentifierKind::Phone, row.get::<Option<String>, _>(11)),
        ]
        .into_iter()
        .filter_map(|(identifier, code)| {
            let reason = UnusableReason::from_code(code.as_deref()?)?;
            Some(Unusable { identifier, reason })
        })
        .collect();
        Ok(Some(PersonView {
            record,
            unusable,
            subscribed: row.get(6),
            subscription_at: row.get(7),
            created_at: row.get(8),
            updated_at: row.get(9),
            memberships,
            history,
            sync,
        }))
    }

    async fn snapshot_members(
        &self,
        job: &SnapshotJob,
        members: &[Identifiers],
    ) -> Result<SnapshotDiff> {
        let mut diff = SnapshotDiff::default();
        for chunk in members.chunks(super::sqlite_snapshot::CHUNK) {
            // The writer is released between chunks so webhooks get in.
            let mut conn = self.writer.acquire().await?;
            let part = super::sqlite_snapshot::members_chunk(&mut conn, job, chunk).await?;
            diff.add(part, job.sample_limit);
        }
        Ok(diff)
    }

    async fn snapshot_exits(&self, job: &SnapshotJob) -> Result<SnapshotDiff> {
        super::sqlite_snapshot::exits(&self.writer, job).await
    }

    async fn enrich_people(&self, lookups: &[ProfileLookup], at_ms: i64) -> Result<Vec<Enriched>> {
        let mut conn = self.writer.acquire().await?;
        super::sqlite_lookup::enrich(&mut conn, lookups, at_ms).await
    }

    async fn person_keys(&self, person_ids: &[i64]) -> Result<Vec<PersonKey>> {
        super::sqlite_lookup::person_keys(&self.reader, person_ids).await
    }

    async fn finish_snapshot(&self, job: &SnapshotJob, completed: bool) -> Result<()> {
        let mut conn = self.writer.acquire().await?;
        super::sqlite_snapshot::finish(&mut conn, job, completed).await
    }

    async fn members_page(
        &self,
        audience_id: i64,
        after_person_id: i64,
        limit: usize,
    ) -> Result<Vec<PersonRecord>> {
        super::sqlite_replace::members_page(&self.reader, audience_id, after_person_id, limit).await
    }

    async fn mark_replaced(
        &self,
        destination: &str,
        audience_id: i64,
        sent_person_ids: &[i64],
        read_at_ms: i64,
        now_ms: i64,
    ) -> Result<()> {
        super::sqlite_replace::mark(
            &self.writer,
            destination,
            audience_id,
            sent_person_ids,
            read_at_ms,
            now_ms,
        )
        .await
    }

    async fn finish_replace(
        &self,
        destination: &str,
        audience_id: i64,
        started_at_ms: i64,
        succeeded: bool,
    ) -> Result<()> {
        super::sqlite_replace::finish(
            &self.writer,
            destination,
            audience_id,
            started_at_ms,
            succeeded,
        )
        .await
    }

    async fn release_all_leases(&self) -> Result<()> {
        // A lease left by a killed process may cover a send that landed.
        sqlx::query(
            "UPDATE sync_state SET lease_until = 0, uncertain = TRUE, pending = TRUE WHERE lease_until <> 0",
        )
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn has_due_work(&self, destination: &str, now_ms: i64) -> Result<bool> {
        Ok(sqlx::query(
            "SELECT 1 FROM sync_state WHERE destination = $1 AND pending AND dead_reason IS NULL
               AND next_attempt_at <= $2 AND lease_until <= $2 LIMIT 1",
        )
        .bind(destination)
        .bind(now_ms)
        .fetch_optional(&self.reader)
        .await?
        .is_some())
    }

    async fn claim_work(
        &self,
        destination: &str,
        now_ms: i64,
        lease_ms: i64,
        max_rows: usize,
    ) -> Result<Option<WorkBatch>> {
        let mut tx = self.writer.begin().await?;
        // The group whose oldest due row is oldest goes first. A group is
        // one audience and one kind of work (SyncOp::of_row).
        let group = sqlx::query(
            "SELECT audience_id, desired, acked IS TRUE FROM sync_state
             WHERE destination = $1 AND pending AND dead_reason IS NULL
               AND next_attempt_at <= $2 AND lease_until <= $2
             ORDER BY desired_received_at, sync_id LIMIT 1",
        )
        .bind(destination)
        .bind(now_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(group) = group else {
            return Ok(None);
        };
        let audience_id: i64 = group.get(0);
        let desired: bool = group.get(1);
        let held: bool = group.get(2);
        let rows = sqlx::query(&format!(
            "SELECT s.sync_id, s.version, s.desired_at, s.desired_received_at, s.attempts, {PERSON_COLUMNS}
             FROM sync_state s JOIN people p ON p.person_id = s.person_id
             WHERE s.destination = $1 AND s.audience_id = $2 AND s.desired = $3
               AND s.pending AND s.dead_reason IS NULL
               AND s.next_attempt_at <= $4 AND s.lease_until <= $4
               AND (s.acked IS TRUE) = $6
             ORDER BY s.sync_id LIMIT $5"
        ))
        .bind(destination)
        .bind(audience_id)
        .bind(desired)
        .bind(now_ms)
        .bind(max_rows as i64)
        .bind(held)
        .fetch_all(&mut *tx)
        .await?;
        let items: Vec<WorkItem> = rows
            .iter()
            .map(|r| WorkItem {
                sync_id: r.get(0),
                version: r.get(1),
                desired_at: r.get(2),
                desired_received_at: r.get(3),
                attempts: r.get(4),
                person: person_record(r, 5),
            })
            .collect();
        let ids: Vec<i64> = items.iter().map(|i| i.sync_id).collect();
        sqlx::query("UPDATE sync_state SET lease_until = $1 WHERE sync_id IN (SELECT value FROM json_each($2))")
            .bind(now_ms + lease_ms)
            .bind(ids_json(&ids))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(WorkBatch {
            destination: destination.to_owned(),
            audience_id,
            op: SyncOp::of_row(desired, Some(held)),
            items,
        }))
    }

    async fn ack_work(
        &self,
        batch: &WorkBatch,
        sync_ids: &[i64],
        sent: bool,
        now_ms: i64,
    ) -> Result<()> {
        if sync_ids.is_empty() {
            return Ok(());
        }
        // A row whose version moved while it was in flight (its person's
        // record changed, e.g. a profile lookup landed) was sent the old
        // record: acknowledged as sent, and still pending for the new one.
        let versions: std::collections::HashMap<i64, i64> =
            batch.items.iter().map(|i| (i.sync_id, i.version)).collect();
        let claimed: Vec<(i64, Option<i64>)> = sync_ids
            .iter()
            .map(|id| (*id, versions.get(id).copied()))
            .collect();
        sqlx::query(
            "UPDATE sync_state SET acked = $1, acked_at = $2, lease_until = 0, attempts = 0,
                    last_error = NULL, next_attempt_at = 0, unmatched = $4, uncertain = FALSE,
                    pending = (desired <> $1)
                              OR version <> COALESCE(json_extract(j.value, '$[1]'), version)
             FROM json_each($3) AS j WHERE sync_state.sync_id = json_extract(j.value, '$[0]')",
        )
        .bind(batch.op.desired())
        .bind(now_ms)
        .bind(serde_json::to_string(&claimed).expect("ids serialize"))
        .bind(!sent && batch.op.desired())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn retry_work(&self, sync_ids: &[i64], next_attempt_at: i64, error: &str) -> Result<()> {
        if sync_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE sync_state SET lease_until = 0, attempts = attempts + 1, next_attempt_at = $1, last_error = $2,
                    uncertain = TRUE, pending = TRUE
             WHERE sync_id IN (SELECT value FROM json_each($3))",
        )
        .bind(next_attempt_at)
        .bind(error)
        .bind(ids_json(sync_ids))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn dead_letter_work(&self, sync_ids: &[i64], reason: &str, now_ms: i64) -> Result<()> {
        if sync_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            // A row whose desired state changed back while in flight has
            // nothing left to deliver: it is not a dead letter.
            "UPDATE sync_state SET lease_until = 0, attempts = attempts + 1, last_error = $1,
                    dead_reason = CASE WHEN pending THEN $1 ELSE NULL END,
                    dead_at = CASE WHEN pending THEN $2 ELSE NULL END
             WHERE sync_id IN (SELECT value FROM json_each($3))",
        )
        .bind(reason)
        .bind(now_ms)
        .bind(ids_json(sync_ids))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter, limit: i64) -> Result<Vec<DeadLetter>> {
        let (extra, values) = filter_clause(filter);
        let sql = format!(
            "SELECT s.sync_id, s.destination, a.name, s.person_id, p.customer_id, s.desired, s.dead_reason, s.dead_at, s.attempts
             FROM sync_state s JOIN audiences a ON a.audience_id = s.audience_id
             JOIN people p ON p.person_id = s.person_id
             WHERE s.dead_reason IS NOT NULL{extra} ORDER BY s.dead_at DESC, s.sync_id LIMIT {limit}"
        );
        let mut q = sqlx::query(&sql);
        for v in &values {
            q = q.bind(v);
        }
        Ok(q.fetch_all(&self.reader)
            .await?
            .iter()
            .map(|r| DeadLetter {
                sync_id: r.get(0),
                destination: r.get(1),
                audience: r.get(2),
                person_id: r.get(3),
                customer_id: r.get(4),
                op: SyncOp::of_row(r.get(5), None),
                reason: r.get(6),
                dead_at: r.get(7),
                attempts: r.get(8),
            })
            .collect())
    }

    async fn redrive(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let (extra, values) = filter_clause(filter);
        let sql = format!(
            "UPDATE sync_state SET dead_reason = NULL, dead_at = NULL, attempts = 0, next_attempt_at = 0
             WHERE sync_id IN (SELECT s.sync_id FROM sync_state s WHERE s.dead_reason IS NOT NULL{extra})"
        );
        let mut q = sqlx::query(&sql);
        for v in &values {
            q = q.bind(v);
        }
        Ok(q.execute(&self.writer).await?.rows_affected())
    }

    async fn record_finished_resync(
        &self,
        job: &super::FinishedResync<'_>,
        keep: usize,
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO resync_jobs (job_id, audience, trigger, started_at, finished_at, report) VALUES ($1, $2, $6, $3, $4, $5)
             ON CONFLICT (job_id) DO UPDATE SET finished_at = excluded.finished_at, report = excluded.report",
        )
        .bind(job.job_id)
        .bind(job.audience)
        .bind(job.started_at)
        .bind(job.finished_at)
        .bind(job.report.to_string())
        .bind(job.trigger)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM resync_jobs WHERE audience = $1 AND job_id NOT IN
               (SELECT job_id FROM resync_jobs WHERE audience = $1 ORDER BY started_at DESC LIMIT $2)",
        )
        .bind(job.audience)
        .bind(keep as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn finished_resync(&self, job_id: &str) -> Result<Option<serde_json::Value>> {
        let row = sqlx::query("SELECT report FROM resync_jobs WHERE job_id = $1")
            .bind(job_id)
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.and_then(|r| serde_json::from_str(&r.get::<String, _>(0)).ok()))
    }

    async fn latest_finished_resync(
        &self,
        audience: &str,
        trigger: Option<&str>,
    ) -> Result<Option<serde_json::Value>> {
        let row = sqlx::query(
            "SELECT report FROM resync_jobs WHERE audience = $1 AND ($2 IS NULL OR trigger = $2)
             ORDER BY started_at DESC LIMIT 1",
        )
        .bind(audience)
        .bind(trigger)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.and_then(|r| serde_json::from_str(&r.get::<String, _>(0)).ok()))
    }

    async fn destination_audience_stats(
        &self,
        destination: &str,
        audience_id: i64,
    ) -> Result<DestinationAudienceStats> {
        let r = sqlx::query(
            "SELECT pending_adds, pending_removes, acked_members, dead_letters, last_ack_at, unmatched_members, pending_updates
             FROM sync_counts WHERE destination = $1 AND audience_id = $2",
        )
        .bind(destination)
        .bind(audience_id)
        .fetch_optional(&self.reader)
        .await?;
        Ok(r.map(|r| DestinationAudienceStats {
            pending_adds: r.get(0),
            pending_removes: r.get(1),
            acknowledged_members: r.get(2),
            dead_letters: r.get(3),
            last_success_at: r.get(4),
            unmatched_members: r.get(5),
            pending_updates: r.get(6),
        })
        .unwrap_or_default())
    }

    async fn pending_summary(&self, destination: &str) -> Result<PendingSummary> {
        let pending: i64 = sqlx::query(
            "SELECT COALESCE(SUM(pending_adds + pending_removes), 0) FROM sync_counts WHERE destination = $1",
        )
        .bind(destination)
        .fetch_one(&self.reader)
        .await?
        .get(0);
        // The oldest pending row is the first entry of the `sync_due` index.
        let oldest = sqlx::query(
            "SELECT desired_received_at FROM sync_state
             WHERE destination = $1 AND pending AND dead_reason IS NULL
             ORDER BY desired_received_at LIMIT 1",
        )
        .bind(destination)
        .fetch_optional(&self.reader)
        .await?
        .map(|r| r.get(0));
        Ok(PendingSummary {
            pending,
            oldest_received_at: oldest,
        })
    }

    async fn set_mapping(
        &self,
        destination: &str,
        audience_id: i64,
        mapping_hash: &str,
        now_ms: i64,
    ) -> Result<u64> {
        let mut tx = self.writer.begin().await?;
        let stored: Option<String> = sqlx::query(
            "SELECT mapping_hash FROM sync_mappings WHERE destination = $1 AND audience_id = $2",
        )
        .bind(destination)
        .bind(audience_id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.get(0));
        if stored.as_deref() == Some(mapping_hash) {
            return Ok(0);
        }
        let requeued = match stored {
            None => 0,
            Some(_) => sqlx::query(
                "UPDATE sync_state SET pending = TRUE, next_attempt_at = 0, attempts = 0
                 WHERE destination = $1 AND audience_id = $2 AND desired AND acked
                   AND dead_reason IS NULL AND NOT pending",
            )
            .bind(destination)
            .bind(audience_id)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
        };
        sqlx::query(
            "INSERT INTO sync_mappings (destination, audience_id, mapping_hash, changed_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT (destination, audience_id) DO UPDATE SET
               mapping_hash = excluded.mapping_hash, changed_at = excluded.changed_at",
        )
        .bind(destination)
        .bind(audience_id)
        .bind(mapping_hash)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(requeued)
    }

    async fn destination_audience(
        &self,
        destination: &str,
        audience_id: i64,
    ) -> Result<Option<String>> {
        Ok(sqlx::query(
            "SELECT external_id FROM destination_audiences WHERE destination = $1 AND audience_id = $2",
        )
        .bind(destination)
        .bind(audience_id)
        .fetch_optional(&self.writer)
        .await?
        .map(|r| r.get(0)))
    }

    async fn record_destination_audience(
        &self,
        destination: &str,
        audience_id: i64,
        external_id: &str,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO destination_audiences (destination, audience_id, external_id, created_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT (destination, audience_id) DO UPDATE SET external_id = excluded.external_id",
        )
        .bind(destination)
        .bind(audience_id)
        .bind(external_id)
        .bind(now_ms)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn prune_batch(
        &self,
        table: retention::PruneTable,
        cutoffs: &retention::Cutoffs,
        from: &retention::PruneCursor,
        limit: usize,
    ) -> Result<PruneProgress> {
        // One transaction per batch; the writer goes back to the pool
        // (and to a waiting group commit) as soon as it commits.
        let mut tx = self.writer.begin().await?;
        let progress =
            super::sqlite_retention::prune_batch(&mut tx, table, cutoffs, from, limit).await?;
        tx.commit().await?;
        Ok(progress)
    }

    async fn disk_usage(&self) -> Result<Option<DiskUsage>> {
        let row = sqlx::query(
            "SELECT page_count * page_size, freelist_count * page_size
             FROM pragma_page_count(), pragma_page_size(), pragma_freelist_count()",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(Some(DiskUsage {
            bytes: row.get::<i64, _>(0) as u64,
            free_bytes: row.get::<i64, _>(1) as u64,
        }))
    }
}
