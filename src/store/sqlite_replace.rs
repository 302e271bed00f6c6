//! Full replace of a destination audience, in bulk: the members to send
//! are read in person_id pages, and what the destination acknowledged is
//! rewritten with set-based statements per batch and once at the end.
//!
//! The people sent in a replace are remembered in the `resync_seen`
//! scratch table under `replace:{destination}:{audience_id}` (one replace
//! per audience runs at a time: it is part of that audience's resync), so
//! the end can tell them from rows the normal path acknowledged meanwhile.

use sqlx::SqlitePool;

use super::sqlite::{ids_json, person_record, PERSON_COLUMNS};
use super::{PersonRecord, Result};

fn scratch_key(destination: &str, audience_id: i64) -> String {
    format!("replace:{destination}:{audience_id}")
}

pub(super) async fn members_page(
    reader: &SqlitePool,
    audience_id: i64,
    after_person_id: i64,
    limit: usize,
) -> Result<Vec<PersonRecord>> {
    let rows = sqlx::query(&format!(
        "SELECT {PERSON_COLUMNS} FROM memberships m JOIN people p ON p.person_id = m.person_id
         WHERE m.audience_id = $1 AND m.is_member AND m.person_id > $2
         ORDER BY m.person_id LIMIT $3"
    ))
    .bind(audience_id)
    .bind(after_person_id)
    .bind(limit as i64)
    .fetch_all(reader)
    .await?;
    Ok(rows.iter().map(|r| person_record(r, 0)).collect())
}

/// A replace batch was accepted: its people are acknowledged in. A row
/// whose desired state is out (the person left after being read) stays
/// pending, so the normal path removes them again; so does the row of a
/// person whose record changed since the batch was read at `read_at_ms`
/// (a profile lookup that landed meanwhile): the destination holds them,
/// without the change, which the normal path then sends once.
pub(super) async fn mark(
    writer: &SqlitePool,
    destination: &str,
    audience_id: i64,
    person_ids: &[i64],
    read_at_ms: i64,
    now_ms: i64,
) -> Result<()> {
    if person_ids.is_empty() {
        return Ok(());
    }
    let ids = ids_json(person_ids);
    let mut tx = writer.begin().await?;
    // A person without a row gets one, acknowledged in, wanted as they are
    // now: a member (or anyone, in an additive audience) is settled; one
    // who left after the batch was read, and whose row retention then
    // compacted (a missing row is "never sent, not a member"), owes a
    // remove.
    sqlx::query(
        "INSERT INTO sync_state (destination, audience_id, person_id, desired, desired_at, desired_received_at,
                                 acked, acked_at, pending)
         SELECT $1, $2, w.person_id, w.wanted, $3, $3, TRUE, $3, NOT w.wanted OR w.changed
         FROM (SELECT j.value AS person_id,
                      (SELECT mode FROM audiences WHERE audience_id = $2) = 'additive'
                        OR EXISTS (SELECT 1 FROM memberships m
                                   WHERE m.audience_id = $2 AND m.person_id = j.value AND m.is_member) AS wanted,
                      EXISTS (SELECT 1 FROM people p WHERE p.person_id = j.value AND p.updated_at >= $5) AS changed
               FROM json_each($4) AS j) AS w WHERE TRUE
         ON CONFLICT (destination, audience_id, person_id) DO UPDATE SET
           acked = TRUE, acked_at = excluded.acked_at,
           pending = (sync_state.desired <> TRUE)
                     OR EXISTS (SELECT 1 FROM people p WHERE p.person_id = excluded.person_id AND p.updated_at >= $5),
           next_attempt_at = 0, attempts = 0, last_error = NULL,
           dead_reason = NULL, dead_at = NULL",
    )
    .bind(destination)
    .bind(audience_id)
    .bind(now_ms)
    .bind(&ids)
    .bind(read_at_ms)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO resync_seen (job_id, person_id) SELECT $1, value FROM json_each($2) WHERE TRUE
         ON CONFLICT DO NOTHING",
    )
    .bind(scratch_key(destination, audience_id))
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn finish(
    writer: &SqlitePool,
    destination: &str,
    audience_id: i64,
    started_at_ms: i64,
    succeeded: bool,
) -> Result<()> {
    let key = scratch_key(destination, audience_id);
    let mut tx = writer.begin().await?;
    // A marked row: sent in this replace (a mark left by an earlier replace
    // that never finished is older than this one's start).
    let marked =
        "acked_at >= $3 AND person_id IN (SELECT person_id FROM resync_seen WHERE job_id = $4)";
    if succeeded {
        let now = crate::store::now_ms();
        // The destination now holds exactly the people sent: a change the
        // normal path made to one of them during the session may have been
        // swapped away, so they are in again (a removal is re-sent) …
        sqlx::query(&format!(
            "UPDATE sync_state SET acked = TRUE, pending = (desired <> TRUE),
                    next_attempt_at = CASE WHEN pending THEN next_attempt_at ELSE 0 END
             WHERE destination = $1 AND audience_id = $2 AND acked IS NOT TRUE AND {marked}"
        ))
        .bind(destination)
        .bind(audience_id)
        .bind(started_at_ms)
        .bind(&key)
        .execute(&mut *tx)
        .await?;
        // … and everyone else is out: dropped by the replace, including
        // people the normal path added while it ran (they go again).
        sqlx::query(&format!(
            "UPDATE sync_state SET acked = FALSE, acked_at = $5, pending = (desired <> FALSE),
                    next_attempt_at = CASE WHEN pending THEN next_attempt_at ELSE 0 END
             WHERE destination = $1 AND audience_id = $2 AND acked IS NOT FALSE AND NOT ({marked})"
        ))
        .bind(destination)
        .bind(audience_id)
        .bind(started_at_ms)
        .bind(&key)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    } else {
        // Part of a session went through: the destination may hold the old
        // members, the new ones, or a mix. Forget every acknowledgement so
        // each current member is added again (adds are idempotent).
        sqlx::query(
            "UPDATE sync_state SET acked = NULL, pending = desired,
                    next_attempt_at = CASE WHEN pending THEN next_attempt_at ELSE 0 END
             WHERE destination = $1 AND audience_id = $2",
        )
        .bind(destination)
        .bind(audience_id)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("DELETE FROM resync_seen WHERE job_id = $1")
        .bind(&key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, Store};
    use sqlx::Row;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: SqliteStore,
        /// A second connection to the same file, for set-up and checks.
        db: SqlitePool,
    }

    /// A store with one audience (id 1), people 1..=9 (`u1`…), `members` in.
    async fn store(members: &[i64]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("k.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let db = SqlitePool::connect(&url).await.unwrap();
        let w = &db;
        sqlx::query("INSERT INTO audiences (audience_id, name, segment_id, mode, created_at) VALUES (1, 'a', 42, 'mirror', 0)")
            .execute(w)
            .await
            .unwrap();
        for pid in 1..=9 {
            sqlx::query("INSERT INTO people (person_id, customer_id, created_at, updated_at) VALUES ($1, $2, 0, 0)")
                .bind(pid)
                .bind(format!("u{pid}"))
                .execute(w)
                .await
                .unwrap();
        }
        for &pid in members {
            sqlx::query("INSERT INTO memberships (audience_id, person_id, is_member, since, stamp_at, stamp_rank, stamp_key, event_id, updated_at)
                         VALUES (1, $1, TRUE, 0, 0, 0, '', 0, 0)")
                .bind(pid)
                .execute(w)
                .await
                .unwrap();
        }
        Fixture {
            _dir: dir,
            store,
            db,
        }
    }

    async fn sync_row(
        w: &SqlitePool,
        pid: i64,
        desired: bool,
        acked: Option<bool>,
        acked_at: Option<i64>,
    ) {
        sqlx::query("INSERT INTO sync_state (destination, audience_id, person_id, desired, desired_at, desired_received_at, acked, acked_at, pending)
                     VALUES ('meta', 1, $1, $2, 0, 0, $3, $4, $5)")
            .bind(pid)
            .bind(desired)
            .bind(acked)
            .bind(acked_at)
            .bind(acked.unwrap_or(false) != desired)
            .execute(w)
            .await
            .unwrap();
    }

    /// person → (acked, pending)
    async fn states(w: &SqlitePool) -> Vec<(i64, Option<bool>, bool)> {
        sqlx::query("SELECT person_id, acked, pending FROM sync_state ORDER BY person_id")
            .fetch_all(w)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    #[tokio::test]
    async fn members_are_paged_in_person_order() {
        let f = store(&[2, 3, 5, 8]).await;
        let s = &f.store;
        let page = s.members_page(1, 0, 3).await.unwrap();
        let ids: Vec<i64> = page.iter().map(|p| p.person_id).collect();
        assert_eq!(ids, [2, 3, 5]);
        assert_eq!(page[0].customer_id.as_deref(), Some("u2"));
        let rest = s.members_page(1, 5, 3).await.unwrap();
        assert_eq!(rest.iter().map(|p| p.person_id).collect::<Vec<_>>(), [8]);
        assert!(s.members_page(1, 8, 3).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_successful_replace_leaves_exactly_the_people_sent_acknowledged() {
        let f = store(&[1, 2, 4]).await;
        let (s, w) = (&f.store, &f.db);
        sync_row(w, 1, true, None, None).await; // never sent
        sync_row(w, 2, true, Some(true), Some(10)).await;
        sync_row(w, 3, false, Some(true), Some(10)).await; // remove pending
        sync_row(w, 5, false, Some(false), Some(10)).await;
        // 4 has no row yet. 6 is added by the normal path during the replace.
        s.mark_replaced("meta", 1, &[1, 2], 200, 200).await.unwrap();
        s.mark_replaced("meta", 1, &[4], 210, 210).await.unwrap();
        sync_row(w, 6, true, Some(true), Some(220)).await;
        s.finish_replace("meta", 1, 100, true).await.unwrap();
        assert_eq!(
            states(w).await,
            [
                (1, Some(true), false),
                (2, Some(true), false),
                (3, Some(false), false),
                (4, Some(true), false),
                (5, Some(false), false),
                (6, Some(false), true),
            ]
        );
        let left: i64 = sqlx::query("SELECT COUNT(*) FROM resync_seen")
            .fetch_one(w)
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0);
    }

    #[tokio::test]
    async fn a_person_changed_after_their_batch_was_read_stays_pending() {
        let f = store(&[1, 2, 3]).await;
        let (s, w) = (&f.store, &f.db);
        sync_row(w, 1, true, None, None).await;
        sync_row(w, 2, true, None, None).await;
        // 3 has no row yet. The batch is read at 150; a lookup then
        // changes 2 and 3 (updated_at 160) before the batch is accepted.
        sqlx::query("UPDATE people SET updated_at = 160 WHERE person_id IN (2, 3)")
            .execute(w)
            .await
            .unwrap();
        s.mark_replaced("meta", 1, &[1, 2, 3], 150, 200)
            .await
            .unwrap();
        s.finish_replace("meta", 1, 100, true).await.unwrap();
        assert_eq!(
            states(w).await,
            [
                (1, Some(true), false),
                (2, Some(true), true),
                (3, Some(true), true)
            ]
        );
    }

    #[tokio::test]
    async fn a_person_who_left_and_lost_their_row_is_removed_again() {
        // 1 and 2 were read as members; 2 then left, the remove was
        // acknowledged and retention compacted the row before the batch
        // was accepted: no row and no membership means "not a member",
        // and the destination was just sent them.
        let f = store(&[1]).await;
        let (s, w) = (&f.store, &f.db);
        s.mark_replaced("meta", 1, &[1, 2], 150, 200).await.unwrap();
        let rows: Vec<(i64, bool, Option<bool>, bool)> = sqlx::query(
            "SELECT person_id, desired, acked, pending FROM sync_state ORDER BY person_id",
        )
        .fetch_all(w)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
        assert_eq!(
            rows,
            [(1, true, Some(true), false), (2, false, Some(true), true)]
        );
        // In an additive audience nobody is removed: both are wanted.
        sqlx::query("UPDATE audiences SET mode = 'additive'")
            .execute(w)
            .await
            .unwrap();
        sqlx::query("DELETE FROM sync_state")
            .execute(w)
            .await
            .unwrap();
        s.mark_replaced("meta", 1, &[1, 2], 150, 200).await.unwrap();
        assert_eq!(
            states(w).await,
            [(1, Some(true), false), (2, Some(true), false)]
        );
    }

    #[tokio::test]
    async fn a_failed_replace_forgets_every_acknowledgement() {
        let f = store(&[1, 2]).await;
        let (s, w) = (&f.store, &f.db);
        sync_row(w, 1, true, Some(true), Some(10)).await;
        sync_row(w, 2, true, None, None).await;
        sync_row(w, 3, false, Some(false), Some(10)).await;
        s.mark_replaced("meta", 1, &[1], 200, 200).await.unwrap();
        s.finish_replace("meta", 1, 100, false).await.unwrap();
        assert_eq!(
            states(w).await,
            [(1, None, true), (2, None, true), (3, None, false)]
        );
    }

    #[tokio::test]
    async fn a_mark_left_by_an_unfinished_replace_does_not_count() {
        let f = store(&[1, 2]).await;
        let (s, w) = (&f.store, &f.db);
        s.mark_replaced("meta", 1, &[1, 2], 50, 50).await.unwrap();
        // A new replace starting at 100 sends only person 2.
        s.mark_replaced("meta", 1, &[2], 200, 200).await.unwrap();
        s.finish_replace("meta", 1, 100, true).await.unwrap();
        assert_eq!(
            states(w).await,
            [(1, Some(false), true), (2, Some(true), false)]
        );
    }
}
