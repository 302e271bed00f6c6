//! Resync snapshots in bulk: a page of members is resolved to people,
//! decided and applied with a handful of set-based statements per chunk,
//! so a million members cost seconds, not a million round trips. The
//! decision itself is still `audiences::membership::decide`, per person.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};
use sqlx::{Connection, Row, SqliteConnection, SqlitePool};

use super::sqlite::{ids_json, set_desired};
use super::{Result, SnapshotDiff, SnapshotJob};
use crate::audiences::membership::{decide, effective_current, Decision, Source, Stamp};
use crate::identity::Identifiers;

/// Rows per transaction: short enough that webhooks never wait long.
pub(super) const CHUNK: usize = 5_000;

fn stamp(job: &SnapshotJob, is_member: bool) -> Stamp {
    Stamp::new(
        job.stamp_at,
        is_member,
        Source::Resync,
        format!("resync:{}", job.id),
    )
}

/// Finds the person each member names (by id, then cio_id, then email, as
/// webhooks do); `None` for people koala has never seen.
async fn resolve(tx: &mut SqliteConnection, members: &[Identifiers]) -> Result<Vec<Option<i64>>> {
    let rows: Vec<Value> = members
        .iter()
        .map(|m| json!([m.id, m.cio_id, m.email.as_ref().map(|e| e.as_str())]))
        .collect();
    let arr = Value::Array(rows).to_string();
    // `IN (SELECT … FROM json_each)` makes SQLite probe the people indexes
    // once per member; a join may scan people once per member instead.
    let mut found: Vec<Option<i64>> = vec![None; members.len()];
    let mut index: HashMap<(usize, String), Vec<usize>> = HashMap::new();
    for (i, m) in members.iter().enumerate() {
        for (col, v) in [(0, &m.id), (1, &m.cio_id)] {
            if let Some(v) = v {
                index.entry((col, v.clone())).or_default().push(i);
            }
        }
        if let Some(e) = &m.email {
            index.entry((2, e.as_str().to_owned())).or_default().push(i);
        }
    }
    for (col, column) in [(0, "customer_id"), (1, "cio_id")] {
        let sql = format!(
            "SELECT {column}, person_id FROM people
             WHERE {column} IN (SELECT json_extract(value, '$[{col}]') FROM json_each($1))"
        );
        for r in sqlx::query(&sql).bind(&arr).fetch_all(&mut *tx).await? {
            let key: String = r.get(0);
            for &i in index.get(&(col, key)).into_iter().flatten() {
                found[i].get_or_insert(r.get(1));
            }
        }
    }
    if found.iter().any(Option::is_none) {
        // Email is weaker: never merge into a person with another id.
        let rows = sqlx::query(
            "SELECT email, person_id, customer_id, cio_id FROM people
             WHERE email IN (SELECT json_extract(value, '$[2]') FROM json_each($1))
             ORDER BY person_id",
        )
        .bind(&arr)
        .fetch_all(&mut *tx)
        .await?;
        for r in rows {
            let email: String = r.get(0);
            let (cid, cio): (Option<String>, Option<String>) = (r.get(2), r.get(3));
            for &i in index.get(&(2, email)).into_iter().flatten() {
                let m = &members[i];
                let conflict = matches!((&m.id, &cid), (Some(a), Some(b)) if a != b)
                    || matches!((&m.cio_id, &cio), (Some(a), Some(b)) if a != b);
                if found[i].is_none() && !conflict {
                    found[i] = Some(r.get(1));
                }
            }
        }
    }
    Ok(found)
}

/// Creates the people koala has never seen, identifiers only.
async fn create_people(
    tx: &mut SqliteConnection,
    members: &[Identifiers],
    found: &mut [Option<i64>],
    at: i64,
) -> Result<u64> {
    let next: i64 = sqlx::query("SELECT COALESCE(MAX(person_id), 0) + 1 FROM people")
        .fetch_one(&mut *tx)
        .await?
        .get(0);
    let mut by_key: HashMap<String, i64> = HashMap::new();
    let mut rows = Vec::new();
    for (i, m) in members.iter().enumerate() {
        if found[i].is_some() {
            continue;
        }
        // The same person twice in one chunk is created once.
        let key = m.dedupe_key();
        let pid = *by_key.entry(key).or_insert_with(|| {
            let pid = next + rows.len() as i64;
            rows.push(json!([
                pid,
                m.id,
                m.cio_id,
                m.email.as_ref().map(|e| e.as_str())
            ]));
            pid
        });
        found[i] = Some(pid);
    }
    if rows.is_empty() {
        return Ok(0);
    }
    let created = rows.len() as u64;
    sqlx::query(
        "INSERT INTO people (person_id, customer_id, cio_id, email, attributes, profile_at, created_at, updated_at)
         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
                json_extract(value, '$[3]'), '{}', $1, $2, $2
         FROM json_each($3)",
    )
    .bind(at)
    .bind(crate::store::now_ms())
    .bind(Value::Array(rows).to_string())
    .execute(&mut *tx)
    .await?;
    Ok(created)
}

async fn snapshot_floor(tx: &mut SqliteConnection, audience_id: i64) -> Result<Option<i64>> {
    Ok(
        sqlx::query("SELECT snapshot_at FROM audiences WHERE audience_id = $1")
            .bind(audience_id)
            .fetch_one(&mut *tx)
            .await?
            .get(0),
    )
}

/// Records membership changes for `person_ids`, all to the same state.
async fn apply_changes(
    tx: &mut SqliteConnection,
    job: &SnapshotJob,
    person_ids: &[i64],
    is_member: bool,
) -> Result<()> {
    if person_ids.is_empty() {
        return Ok(());
    }
    let now = crate::store::now_ms();
    let audience = &job.audience;
    let st = stamp(job, is_member);
    let first_event: i64 = sqlx::query("SELECT COALESCE(MAX(event_id), 0) + 1 FROM events")
        .fetch_one(&mut *tx)
        .await?
        .get(0);
    let pairs: Vec<Value> = person_ids
        .iter()
        .enumerate()
        .map(|(i, pid)| json!([first_event + i as i64, pid]))
        .collect();
    let pairs = Value::Array(pairs).to_string();
    let kind = if is_member { "entered" } else { "exited" };
    sqlx::query(
        "INSERT INTO events (event_id, person_id, audience_id, source, kind, occurred_at, received_at, outcome, detail)
         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), $1, 'resync', $2, $3, $4, 'applied', $5
         FROM json_each($6)",
    )
    .bind(audience.id)
    .bind(kind)
    .bind(job.stamp_at)
    .bind(now)
    .bind(json!({ "resync": job.id }).to_string())
    .bind(&pairs)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO memberships (audience_id, person_id, is_member, since, stamp_at, stamp_rank, stamp_key, event_id, updated_at)
         SELECT $1, json_extract(value, '$[1]'), $2, $3, $3, $4, $5, json_extract(value, '$[0]'), $6
         FROM json_each($7) WHERE TRUE
         ON CONFLICT (audience_id, person_id) DO UPDATE SET
           is_member = excluded.is_member, since = excluded.since,
           stamp_at = excluded.stamp_at, stamp_rank = excluded.stamp_rank,
           stamp_key = excluded.stamp_key, event_id = excluded.event_id,
           updated_at = excluded.updated_at",
    )
    .bind(audience.id)
    .bind(is_member)
    .bind(st.at_ms)
    .bind(st.rank)
    .bind(&st.key)
    .bind(now)
    .bind(&pairs)
    .execute(&mut *tx)
    .await?;
    if audience.mode.sends(is_member) {
        let rows: Vec<(i64, i64)> = person_ids.iter().map(|p| (*p, job.stamp_at)).collect();
        for d in &audience.destinations {
            set_desired(tx, d, audience.id, &rows, is_member, now).await?;
        }
    }
    Ok(())
}

async fn masked_people(tx: &mut SqliteConnection, person_ids: &[i64]) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT customer_id, cio_id, email, phone FROM people WHERE person_id IN (SELECT value FROM json_each($1))",
    )
    .bind(ids_json(person_ids))
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let (id, cio, email, phone): (
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
            ) = (r.get(0), r.get(1), r.get(2), r.get(3));
            Identifiers::new(
                id.as_deref(),
                cio.as_deref(),
                email.as_deref(),
                phone.as_deref(),
            )
            .ok()
            .map(|ids| ids.masked())
        })
        .collect())
}

/// Members found by id who are already in the audience with a stamp older
/// than the snapshot: `decide` can only say Confirm for them (an older
/// stamp loses to the snapshot whatever the tie-break ranks), so SQL picks
/// them out and only their person ids come back. Returns those ids and the
/// members still to be decided one by one.
async fn already_members(
    tx: &mut SqliteConnection,
    job: &SnapshotJob,
    members: &[Identifiers],
) -> Result<(Vec<i64>, Vec<Identifiers>)> {
    if snapshot_floor(tx, job.audience.id)
        .await?
        .is_some_and(|f| f >= job.stamp_at)
    {
        return Ok((Vec::new(), members.to_vec()));
    }
    let ids: Vec<Option<&str>> = members.iter().map(|m| m.id.as_deref()).collect();
    // CROSS JOIN keeps this loop order: each member probes the indexes.
    let rows = sqlx::query(
        "SELECT j.key, p.person_id FROM json_each($1) AS j
         CROSS JOIN people AS p CROSS JOIN memberships AS m
         WHERE p.customer_id = j.value AND m.audience_id = $2 AND m.person_id = p.person_id
           AND m.is_member AND m.stamp_at < $3",
    )
    .bind(serde_json::to_string(&ids).expect("ids serialize"))
    .bind(job.audience.id)
    .bind(job.stamp_at)
    .fetch_all(&mut *tx)
    .await?;
    let mut settled = vec![false; members.len()];
    let mut already = Vec::with_capacity(rows.len());
    for r in rows {
        settled[r.get::<i64, _>(0) as usize] = true;
        already.push(r.get(1));
    }
    let rest = members
        .iter()
        .zip(&settled)
        .filter(|(_, s)| !**s)
        .map(|(m, _)| m.clone())
        .collect();
    Ok((already, rest))
}

/// One chunk of snapshot members.
pub(super) async fn members_chunk(
    conn: &mut SqliteConnection,
    job: &SnapshotJob,
    members: &[Identifiers],
) -> Result<SnapshotDiff> {
    let mut tx = conn.begin().await?;
    let mut diff = SnapshotDiff::default();
    // Most members of a segment are usually already members: settle those
    // in SQL without bringing their rows into Rust.
    let (already, members) = already_members(&mut tx, job, members).await?;
    diff.unchanged += already.len() as u64;
    let members = &members[..];
    let mut found = resolve(&mut tx, members).await?;
    if !job.dry_run {
        let before: HashSet<i64> = found.iter().flatten().copied().collect();
        diff.new_people = create_people(&mut tx, members, &mut found, job.stamp_at).await?;
        let mut fresh: Vec<i64> = found
            .iter()
            .flatten()
            .filter(|p| !before.contains(p))
            .copied()
            .collect();
        fresh.dedup();
        diff.new_person_ids = fresh;
    } else {
        diff.new_people = found.iter().filter(|f| f.is_none()).count() as u64;
    }
    let mut known: Vec<i64> = found.iter().flatten().copied().collect();
    let current: HashMap<i64, (bool, Stamp)> = sqlx::query(
        "SELECT m.person_id, m.is_member, m.stamp_at, m.stamp_rank, m.stamp_key FROM memberships m
         WHERE m.audience_id = $1 AND m.person_id IN (SELECT value FROM json_each($2))",
    )
    .bind(job.audience.id)
    .bind(ids_json(&known))
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| {
        let stamp = Stamp {
            at_ms: r.get(2),
            rank: r.get(3),
            key: r.get(4),
        };
        (r.get(0), (r.get(1), stamp))
    })
    .collect();
    let floor = snapshot_floor(&mut tx, job.audience.id).await?;
    let incoming = stamp(job, true);

    let mut seen = HashSet::new();
    let mut entered = Vec::new();
    let mut confirmed: Vec<i64> = Vec::new();
    for (i, pid) in found.iter().enumerate() {
        let key = pid
            .map(|p| p.to_string())
            .unwrap_or_else(|| members[i].dedupe_key());
        if !seen.insert(key) {
            continue;
        }
        let eff = effective_current(pid.and_then(|p| current.get(&p).cloned()), floor);
        match decide(eff.as_ref().map(|(m, s)| (*m, s)), true, &incoming) {
            Decision::Change => {
                diff.entered += 1;
                if diff.sample_entered.len() < job.sample_limit {
                    diff.sample_entered.push(members[i].masked());
                }
                entered.extend(pid);
            }
            Decision::Confirm => {
                diff.unchanged += 1;
                confirmed.extend(pid);
            }
            Decision::Stale => diff.stale += 1,
        }
    }
    known.extend(&already);
    confirmed.extend(&already);
    sqlx::query(
        "INSERT INTO resync_seen (job_id, person_id) SELECT $1, value FROM json_each($2) WHERE TRUE
         ON CONFLICT DO NOTHING",
    )
    .bind(&job.id)
    .bind(ids_json(&known))
    .execute(&mut *tx)
    .await?;
    if !job.dry_run {
        apply_changes(&mut tx, job, &entered, true).await?;
        // Members already in: make sure every destination wants them (a
        // destination added to the audience later has no rows yet).
        let now = crate::store::now_ms();
        let rows: Vec<(i64, i64)> = confirmed.iter().map(|p| (*p, job.stamp_at)).collect();
        for d in &job.audience.destinations {
            set_desired(&mut tx, d, job.audience.id, &rows, true, now).await?;
        }
    }
    tx.commit().await?;
    Ok(diff)
}

/// Members koala holds that the snapshot did not contain: exits.
pub(super) async fn exits(writer: &SqlitePool, job: &SnapshotJob) -> Result<SnapshotDiff> {
    let mut diff = SnapshotDiff::default();
    let incoming = stamp(job, false);
    let mut cursor = 0i64;
    loop {
        // One short transaction per chunk; the writer is free in between.
        let mut tx = writer.begin().await?;
        let rows = sqlx::query(
            "SELECT m.person_id, m.stamp_at, m.stamp_rank, m.stamp_key FROM memberships m
             WHERE m.audience_id = $1 AND m.is_member AND m.person_id > $3
               AND NOT EXISTS (SELECT 1 FROM resync_seen s WHERE s.job_id = $2 AND s.person_id = m.person_id)
             ORDER BY m.person_id LIMIT $4",
        )
        .bind(job.audience.id)
        .bind(&job.id)
        .bind(cursor)
        .bind(CHUNK as i64)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            break;
        }
        let floor = snapshot_floor(&mut tx, job.audience.id).await?;
        let mut exited = Vec::new();
        for r in &rows {
            let pid: i64 = r.get(0);
            cursor = pid;
            let stored = Stamp {
                at_ms: r.get(1),
                rank: r.get(2),
                key: r.get(3),
            };
            let eff = effective_current(Some((true, stored)), floor);
            match decide(eff.as_ref().map(|(m, s)| (*m, s)), false, &incoming) {
                Decision::Change => exited.push(pid),
                Decision::Confirm => diff.unchanged += 1,
                Decision::Stale => diff.stale += 1,
            }
        }
        diff.exited += exited.len() as u64;
        let room = job.sample_limit.saturating_sub(diff.sample_exited.len());
        if room > 0 {
            let sample: Vec<i64> = exited.iter().take(room).copied().collect();
            diff.sample_exited
                .extend(masked_people(&mut tx, &sample).await?);
        }
        if !job.dry_run {
            apply_changes(&mut tx, job, &exited, false).await?;
        }
        tx.commit().await?;
    }
    Ok(diff)
}

pub(super) async fn finish(
    conn: &mut SqliteConnection,
    job: &SnapshotJob,
    completed: bool,
) -> Result<()> {
    sqlx::query("DELETE FROM resync_seen WHERE job_id = $1")
        .bind(&job.id)
        .execute(&mut *conn)
        .await?;
    if completed && !job.dry_run {
        sqlx::query(
            "UPDATE audiences SET snapshot_at = MAX(COALESCE(snapshot_at, 0), $2) WHERE audience_id = $1",
        )
        .bind(job.audience.id)
        .bind(job.stamp_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
