//! Profile lookups merged in bulk: a resync looks new people up in
//! Customer.io a hundred at a time, and each answer is merged here in one
//! transaction, through the same identity-merge rule as webhooks.

use sqlx::{Connection, Row, SqliteConnection, SqlitePool};

use super::people::{lookup_changed_record, PersonRow};
use super::sqlite::ids_json;
use super::sqlite_ingest::{flush_people, load_people};
use super::{Enriched, PersonKey, ProfileLookup, Result};
use crate::identity::Identifiers;

pub(super) async fn person_keys(reader: &SqlitePool, person_ids: &[i64]) -> Result<Vec<PersonKey>> {
    if person_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT person_id, customer_id, cio_id, email IS NOT NULL FROM people
         WHERE person_id IN (SELECT value FROM json_each($1)) ORDER BY person_id",
    )
    .bind(ids_json(person_ids))
    .fetch_all(reader)
    .await?;
    Ok(rows
        .iter()
        .map(|r| PersonKey {
            person_id: r.get(0),
            customer_id: r.get(1),
            cio_id: r.get(2),
            has_email: r.get(3),
        })
        .collect())
}

pub(super) async fn enrich(
    conn: &mut SqliteConnection,
    lookups: &[ProfileLookup],
    at_ms: i64,
) -> Result<Vec<Enriched>> {
    if lookups.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = conn.begin().await?;
    let pids: Vec<i64> = lookups.iter().map(|l| l.person_id).collect();
    let keys: std::collections::HashMap<i64, (Option<String>, Option<String>)> = sqlx::query(
        "SELECT person_id, customer_id, cio_id FROM people WHERE person_id IN (SELECT value FROM json_each($1))",
    )
    .bind(ids_json(&pids))
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2))))
    .collect();
    // Each lookup names its person by the ids koala holds, so the merge
    // finds that very person (email and phone never pick another one).
    let ids: Vec<Option<Identifiers>> = lookups
        .iter()
        .map(|l| {
            let (id, cio_id) = keys.get(&l.person_id)?.clone();
            (id.is_some() || cio_id.is_some()).then(|| Identifiers {
                id,
                cio_id,
                email: l.email.clone(),
                phone: l.phone.clone(),
                unusable: Vec::new(),
            })
        })
        .collect();
    let refs: Vec<&Identifiers> = ids.iter().flatten().collect();
    let mut people = load_people(&mut tx, &refs).await?;
    let mut outcomes = Vec::with_capacity(lookups.len());
    let mut changed = Vec::new();
    for (lookup, ids) in lookups.iter().zip(&ids) {
        let Some(ids) = ids else {
            outcomes.push(Enriched::Gone);
            continue;
        };
        let before: Option<PersonRow> = people
            .rows
            .iter()
            .find(|r| r.person_id == lookup.person_id)
            .cloned();
        let i = people.merge(ids, Some(&lookup.attributes), at_ms);
        let after = &people.rows[i];
        let outcome = match &before {
            Some(b) if after.person_id == b.person_id && !lookup_changed_record(b, after) => {
                Enriched::Unchanged
            }
            _ => Enriched::Changed,
        };
        if outcome == Enriched::Changed {
            changed.push(after.person_id);
        }
        outcomes.push(outcome);
    }
    flush_people(&mut tx, &people, crate::store::now_ms()).await?;
    if !changed.is_empty() {
        // Already delivered with less: deliver again. A row never sent
        // (acked NULL) or still pending goes out with the fuller record
        // anyway, so it is left as it is.
        sqlx::query(
            "UPDATE sync_state SET acked = NULL, pending = TRUE, next_attempt_at = 0
             WHERE person_id IN (SELECT value FROM json_each($1))
               AND desired AND acked AND NOT pending AND dead_reason IS NULL",
        )
        .bind(ids_json(&changed))
        .execute(&mut *tx)
        .await?;
        // A pending row may be in flight with the old record: a new
        // version keeps it pending when that send is acknowledged.
        sqlx::query(
            "UPDATE sync_state SET version = version + 1
             WHERE person_id IN (SELECT value FROM json_each($1)) AND pending AND dead_reason IS NULL",
        )
        .bind(ids_json(&changed))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Phone;
    use crate::store::{SqliteStore, Store};
    use serde_json::Map;

    /// A store with people u1..u3 and one Meta row each:
    /// u1 acknowledged, u2 never sent, u3 acknowledged.
    async fn fixture() -> (tempfile::TempDir, SqliteStore, SqlitePool) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("k.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let db = SqlitePool::connect(&url).await.unwrap();
        for pid in 1..=3i64 {
            sqlx::query("INSERT INTO people (person_id, customer_id, email, phone, attributes, created_at, updated_at) VALUES ($1, $2, $3, $4, '{}', 0, 0)")
                .bind(pid)
                .bind(format!("u{pid}"))
                .bind(format!("u{pid}@example.com"))
                .bind((pid == 3).then_some("+14155550103"))
                .execute(&db)
                .await
                .unwrap();
            let acked = (pid != 2).then_some(true);
            sqlx::query("INSERT INTO sync_state (destination, audience_id, person_id, desired, desired_at, desired_received_at, acked, acked_at, pending)
                         VALUES ('meta', 1, $1, TRUE, 0, 0, $2, 0, $3)")
                .bind(pid)
                .bind(acked)
                .bind(acked.is_none())
                .execute(&db)
                .await
                .unwrap();
        }
        (dir, store, db)
    }

    fn lookup(pid: i64, phone: Option<&str>) -> ProfileLookup {
        ProfileLookup {
            person_id: pid,
            email: crate::identity::Email::parse(&format!("u{pid}@example.com")).ok(),
            phone: phone.map(|p| Phone::parse(p).unwrap()),
            attributes: Map::new(),
        }
    }

    #[tokio::test]
    async fn only_people_the_lookup_changed_are_sent_again() {
        let (_dir, store, db) = fixture().await;
        let outcomes = store
            .enrich_people(
                &[
                    lookup(1, Some("+14155550101")), // acked, gains a phone
                    lookup(2, Some("+14155550102")), // never sent
                    lookup(3, Some("+14155550103")), // acked, nothing new
                    lookup(9, None),                 // no such person
                ],
                10,
            )
            .await
            .unwrap();
        assert_eq!(
            outcomes,
            [
                Enriched::Changed,
                Enriched::Changed,
                Enriched::Unchanged,
                Enriched::Gone
            ]
        );
        let rows: Vec<(i64, Option<bool>, bool)> =
            sqlx::query("SELECT person_id, acked, pending FROM sync_state ORDER BY person_id")
                .fetch_all(&db)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
        // 1 goes again; 2 goes once (as it would have); 3 is left alone.
        assert_eq!(
            rows,
            [(1, None, true), (2, None, true), (3, Some(true), false)]
        );
        let phone: Option<String> = sqlx::query("SELECT phone FROM people WHERE person_id = 2")
            .fetch_one(&db)
            .await
            .unwrap()
            .get(0);
        assert_eq!(phone.as_deref(), Some("+14155550102"));
        let keys = store.person_keys(&[3, 1, 9]).await.unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].customer_id.as_deref(), Some("u1"));
    }

    #[tokio::test]
    async fn a_change_landing_while_the_old_record_is_in_flight_is_sent_after_it() {
        let (_dir, store, db) = fixture().await;
        // Person 2's add is claimed (in flight with no phone) …
        let batch = store
            .claim_work("meta", 1_000, 60_000, 10)
            .await
            .unwrap()
            .expect("person 2 is due");
        assert_eq!(batch.items.len(), 1);
        assert_eq!(batch.items[0].person.phone, None);
        // … the lookup lands, then the old send is acknowledged.
        store
            .enrich_people(&[lookup(2, Some("+14155550102"))], 10)
            .await
            .unwrap();
        let ids: Vec<i64> = batch.items.iter().map(|i| i.sync_id).collect();
        store.ack_work(&batch, &ids, true, 2_000).await.unwrap();
        let (acked, pending): (Option<bool>, bool) =
            sqlx::query("SELECT acked, pending FROM sync_state WHERE person_id = 2")
                .fetch_one(&db)
                .await
                .map(|r| (r.get(0), r.get(1)))
                .unwrap();
        assert_eq!((acked, pending), (Some(true), true));
        let again = store
            .claim_work("meta", 70_000, 60_000, 10)
            .await
            .unwrap()
            .expect("person 2 goes again");
        assert_eq!(again.items[0].person.phone.as_deref(), Some("+14155550102"));
        // An acknowledgement with nothing new in between settles the row.
        let ids: Vec<i64> = again.items.iter().map(|i| i.sync_id).collect();
        store.ack_work(&again, &ids, true, 71_000).await.unwrap();
        let pending: bool = sqlx::query("SELECT pending FROM sync_state WHERE person_id = 2")
            .fetch_one(&db)
            .await
            .unwrap()
            .get(0);
        assert!(!pending);
    }
}
