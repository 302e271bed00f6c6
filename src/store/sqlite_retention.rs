//! Retention on SQLite: each call deletes one bounded batch in one short
//! transaction on the writer, so a webhook's group commit waits at most
//! one batch. The rules are `store::retention`'s; these statements select
//! exactly the rows those functions accept (checked by the tests below).
//!
//! No index is added for any of it: every index is written by every
//! webhook, and ingest is bound by the pages it writes (README,
//! "Performance"). Instead each table is walked in the order of the
//! b-tree it already has, a window of `limit` rows per batch:
//! - dedupe keys in key order, the whole table each pass. The old keys are
//!   spread over the key space, so a pass reads every key, but it deletes
//!   them leaf page by leaf page in order (an index by age would find only
//!   the old ones, but cost every webhook a write and delete them in
//!   random order). A key lives at most one `retention.interval` past its
//!   retention;
//! - events by rowid: `event_id` grows with arrival, so the events older
//!   than the cutoff are the start of the table, and the pass ends at the
//!   first window reaching past the cutoff. Kept events (a membership's
//!   own) are read again by every pass: at most one per membership;
//! - sync rows by rowid, the whole table each pass.

use sqlx::{Row, SqliteConnection};

use super::retention::{Cutoffs, PruneCursor, PruneTable, SYNC_ROW_COMPACTABLE_SQL};
use super::{PruneProgress, Result};

pub(super) async fn prune_batch(
    tx: &mut SqliteConnection,
    table: PruneTable,
    cutoffs: &Cutoffs,
    from: &PruneCursor,
    limit: usize,
) -> Result<PruneProgress> {
    let offset = limit.max(1) as i64 - 1;
    match table {
        PruneTable::DedupeKeys => {
            // Keys are never empty: "" is before the first.
            let after = from.key();
            let last: Option<String> = sqlx::query(
                "SELECT dedupe_key FROM received WHERE dedupe_key > $1
                 ORDER BY dedupe_key LIMIT 1 OFFSET $2",
            )
            .bind(after)
            .bind(offset)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get(0));
            // Two statements, so each window is a bounded range scan.
            let deleted = match &last {
                Some(last) => sqlx::query(
                    "DELETE FROM received WHERE dedupe_key > $1 AND dedupe_key <= $2 AND received_at < $3",
                )
                .bind(after)
                .bind(last),
                None => sqlx::query(
                    "DELETE FROM received WHERE dedupe_key > $1 AND received_at < $2",
                )
                .bind(after),
            }
            .bind(cutoffs.dedupe_keys_before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            Ok(PruneProgress {
                deleted,
                next: last.map(PruneCursor::Key),
            })
        }
        PruneTable::Events => {
            let from = from.id();
            // The window: the next `limit` events. Its last row says
            // whether anything after it can still be old.
            let last = sqlx::query(
                "SELECT event_id, received_at FROM events WHERE event_id > $1
                 ORDER BY event_id LIMIT 1 OFFSET $2",
            )
            .bind(from)
            .bind(offset)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1)));
            let (to, more) = match last {
                Some((id, received_at)) => (id, received_at < cutoffs.events_received_before),
                None => (i64::MAX, false),
            };
            let deleted = sqlx::query(
                "DELETE FROM events WHERE event_id > $1 AND event_id <= $2 AND received_at < $3
                   AND event_id < (SELECT MAX(event_id) FROM events)
                   AND NOT EXISTS (SELECT 1 FROM memberships m
                                   WHERE m.audience_id = events.audience_id
                                     AND m.person_id = events.person_id
                                     AND m.event_id = events.event_id)",
            )
            .bind(from)
            .bind(to)
            .bind(cutoffs.events_received_before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            Ok(PruneProgress {
                deleted,
                next: more.then_some(PruneCursor::Id(to)),
            })
        }
        PruneTable::SyncRows => {
            let from = from.id();
            let last: Option<i64> = sqlx::query(
                "SELECT sync_id FROM sync_state WHERE sync_id > $1 ORDER BY sync_id LIMIT 1 OFFSET $2",
            )
            .bind(from)
            .bind(offset)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get(0));
            // The delete trigger (migration 0005) takes each row out of
            // `sync_counts`; a compactable row counts nowhere (not pending,
            // not acknowledged in, not dead), so every count stays as it is.
            let deleted = sqlx::query(&format!(
                "DELETE FROM sync_state WHERE sync_id > $1 AND sync_id <= $2
                   AND sync_id < (SELECT MAX(sync_id) FROM sync_state)
                   AND {SYNC_ROW_COMPACTABLE_SQL}"
            ))
            .bind(from)
            .bind(last.unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            Ok(PruneProgress {
                deleted,
                next: last.map(PruneCursor::Id),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::retention::{
        dedupe_key_expired, event_expired, sync_row_compactable, EventFacts, SyncRowFacts,
    };
    use super::*;
    use crate::store::{SqliteStore, Store};
    use sqlx::SqlitePool;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: SqliteStore,
        db: SqlitePool,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("k.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let db = SqlitePool::connect(&url).await.unwrap();
        sqlx::query("INSERT INTO audiences (audience_id, name, segment_id, mode, created_at) VALUES (1, 'a', 42, 'mirror', 0)")
            .execute(&db)
            .await
            .unwrap();
        Fixture {
            _dir: dir,
            store,
            db,
        }
    }

    /// Runs whole passes over `table` in batches of `limit`.
    async fn pass(f: &Fixture, table: PruneTable, cutoffs: &Cutoffs, limit: usize) -> u64 {
        let mut from = PruneCursor::Start;
        let mut total = 0;
        loop {
            let p = f
                .store
                .prune_batch(table, cutoffs, &from, limit)
                .await
                .unwrap();
            total += p.deleted;
            match p.next {
                Some(next) => from = next,
                None => return total,
            }
        }
    }

    async fn ids(db: &SqlitePool, sql: &str) -> Vec<i64> {
        sqlx::query(sql)
            .fetch_all(db)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    const CUT: Cutoffs = Cutoffs {
        dedupe_keys_before: 1_000,
        events_received_before: 1_000,
    };

    #[tokio::test]
    async fn dedupe_keys_older_than_the_cutoff_go_in_batches() {
        // Keys are walked in key order (k0, k1, k10, …), not by age.
        let f = fixture().await;
        for i in 0..25 {
            sqlx::query("INSERT INTO received (dedupe_key, received_at) VALUES ($1, $2)")
                .bind(format!("k{i}"))
                .bind(i * 80)
                .execute(&f.db)
                .await
                .unwrap();
        }
        assert_eq!(pass(&f, PruneTable::DedupeKeys, &CUT, 4).await, 13);
        let left = ids(
            &f.db,
            "SELECT received_at FROM received ORDER BY received_at",
        )
        .await;
        let expected: Vec<i64> = (0..25)
            .map(|i| i * 80)
            .filter(|t| !dedupe_key_expired(*t, &CUT))
            .collect();
        assert_eq!(left, expected);
        assert_eq!(pass(&f, PruneTable::DedupeKeys, &CUT, 4).await, 0);
    }

    #[tokio::test]
    async fn old_events_go_except_a_memberships_own_and_the_newest() {
        let f = fixture().await;
        // 40 events of people 1..=4, arriving every 40 ms; the memberships
        // point at events 5 (old) and 39 (recent); event 40 is the newest,
        // and old too when the cutoff is moved past everything.
        for id in 1..=40i64 {
            sqlx::query("INSERT INTO events (event_id, person_id, audience_id, source, kind, occurred_at, received_at, outcome)
                         VALUES ($1, $2, CASE WHEN $1 % 2 = 0 THEN NULL ELSE 1 END, 'segment_webhook', 'entered', 0, $3, 'applied')")
                .bind(id)
                .bind(id % 4 + 1)
                .bind(id * 40)
                .execute(&f.db)
                .await
                .unwrap();
        }
        for (pid, event) in [(2i64, 5i64), (4, 39)] {
            sqlx::query("INSERT INTO memberships (audience_id, person_id, is_member, since, stamp_at, stamp_rank, stamp_key, event_id, updated_at)
                         VALUES (1, $1, TRUE, 0, 0, 0, '', $2, 0)")
                .bind(pid)
                .bind(event)
                .execute(&f.db)
                .await
                .unwrap();
        }
        for cutoffs in [
            CUT,
            Cutoffs {
                events_received_before: 10_000,
                ..CUT
            },
        ] {
            let before = ids(&f.db, "SELECT event_id FROM events ORDER BY event_id").await;
            pass(&f, PruneTable::Events, &cutoffs, 3).await;
            let left = ids(&f.db, "SELECT event_id FROM events ORDER BY event_id").await;
            let newest = *before.last().unwrap();
            let expected: Vec<i64> = before
                .iter()
                .copied()
                .filter(|id| {
                    !event_expired(
                        &EventFacts {
                            received_at: id * 40,
                            sets_a_membership: [5, 39].contains(id),
                            is_newest: *id == newest,
                        },
                        &cutoffs,
                    )
                })
                .collect();
            assert_eq!(left, expected, "cutoff {cutoffs:?}");
        }
        assert_eq!(
            ids(&f.db, "SELECT event_id FROM events ORDER BY event_id").await,
            vec![5, 39, 40]
        );
    }

    #[tokio::test]
    async fn a_pass_over_events_stops_at_the_first_window_past_the_cutoff() {
        let f = fixture().await;
        for id in 1..=100i64 {
            sqlx::query("INSERT INTO events (event_id, person_id, source, kind, occurred_at, received_at, outcome)
                         VALUES ($1, 1, 'reporting_webhook', 'email.opened', 0, $1 * 100, 'recorded')")
                .bind(id)
                .execute(&f.db)
                .await
                .unwrap();
        }
        // Events 1..=9 are older than 1,000 ms; windows of 4 rows: the
        // third window (9..=12) reaches past the cutoff and is the last.
        let mut from = PruneCursor::Start;
        let mut batches = 0;
        loop {
            let p = f
                .store
                .prune_batch(PruneTable::Events, &CUT, &from, 4)
                .await
                .unwrap();
            batches += 1;
            match p.next {
                Some(n) => from = n,
                None => break,
            }
        }
        assert_eq!(batches, 3);
        assert_eq!(
            ids(&f.db, "SELECT MIN(event_id) FROM events").await,
            vec![10]
        );
    }

    #[tokio::test]
    async fn sync_rows_are_compacted_exactly_as_the_rule_says_and_counts_stay() {
        let f = fixture().await;
        // Every shape of row: desired, acked (NULL / false / true),
        // pending, uncertain, dead, leased.
        let mut facts = Vec::new();
        let mut pid = 0i64;
        for bits in 0..32u32 {
            for acked in [None, Some(false), Some(true)] {
                let b = |i: u32| bits & (1 << i) != 0;
                pid += 1;
                let row = SyncRowFacts {
                    desired: b(0),
                    acked,
                    pending: b(1),
                    uncertain: b(2),
                    dead: b(3),
                    leased: b(4),
                    is_newest: false,
                };
                sqlx::query(
                    "INSERT INTO sync_state (destination, audience_id, person_id, desired, desired_at, desired_received_at,
                                             acked, acked_at, pending, uncertain, dead_reason, lease_until)
                     VALUES ('meta', 1, $1, $2, 0, 0, $3, 0, $4, $5, $6, $7)",
                )
                .bind(pid)
                .bind(row.desired)
                .bind(row.acked)
                .bind(row.pending)
                .bind(row.uncertain)
                .bind(row.dead.then_some("refused"))
                .bind(if row.leased { 99_000 } else { 0 })
                .execute(&f.db)
                .await
                .unwrap();
                facts.push((pid, row));
            }
        }
        // The newest row is settled and out, so only its id keeps it.
        pid += 1;
        sqlx::query("INSERT INTO sync_state (destination, audience_id, person_id, desired, desired_at, desired_received_at, acked, pending)
                     VALUES ('meta', 1, $1, FALSE, 0, 0, FALSE, FALSE)")
            .bind(pid)
            .execute(&f.db)
            .await
            .unwrap();
        let counts = |db: SqlitePool| async move {
            let r = sqlx::query("SELECT pending_adds, pending_removes, acked_members, unmatched_members, dead_letters FROM sync_counts")
                .fetch_one(&db)
                .await
                .unwrap();
            (0..5).map(|i| r.get::<i64, _>(i)).collect::<Vec<_>>()
        };
        let before = counts(f.db.clone()).await;
        let deleted = pass(&f, PruneTable::SyncRows, &CUT, 7).await;
        let left = ids(&f.db, "SELECT person_id FROM sync_state ORDER BY person_id").await;
        let mut expected: Vec<i64> = facts
            .iter()
            .filter(|(_, r)| !sync_row_compactable(r))
            .map(|(p, _)| *p)
            .collect();
        expected.push(pid);
        assert_eq!(left, expected);
        assert_eq!(deleted, 2);
        assert_eq!(
            counts(f.db.clone()).await,
            before,
            "maintained counts unchanged"
        );
        // And they still equal a recount.
        let recount = sqlx::query(
            "SELECT SUM(pending AND dead_reason IS NULL AND desired), SUM(pending AND dead_reason IS NULL AND NOT desired),
                    SUM(COALESCE(acked, 0)), SUM(COALESCE(acked, 0) AND unmatched), SUM(dead_reason IS NOT NULL)
             FROM sync_state",
        )
        .fetch_one(&f.db)
        .await
        .unwrap();
        assert_eq!(
            (0..5).map(|i| recount.get::<i64, _>(i)).collect::<Vec<_>>(),
            before
        );
    }
}
