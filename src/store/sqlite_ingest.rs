//! Group commit, set-based: a whole group of webhooks is applied with a
//! fixed handful of statements. People are loaded once, every command is
//! decided in order in memory by the pure steps of `ingest_plan` (identity
//! merge, then membership, desired sync state and attribute updates), and
//! what they decided is written back in bulk through `json_each`.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Value};
use sqlx::{Row, SqliteConnection};

use super::ingest_plan::{self, MembershipKey, StoredMembership};
use super::people::{People, PersonRow};
use super::sqlite::set_desired;
use super::{IngestCommand, IngestOutcome, Result};
use crate::audiences::membership::Stamp;
use crate::audiences::AttributeReaders;
use crate::identity::{Identifiers, UnusableReason};

fn dedupe_key(command: &IngestCommand) -> String {
    match command {
        IngestCommand::Segment { event, .. } => event.dedupe_key(),
        IngestCommand::Reporting(event) => event.dedupe_key(),
    }
}

fn identifiers(command: &IngestCommand) -> &Identifiers {
    match command {
        IngestCommand::Segment { event, .. } => &event.identifiers,
        IngestCommand::Reporting(event) => &event.identifiers,
    }
}

/// Loads every stored person any of these identifiers could name.
pub(super) async fn load_people(tx: &mut SqliteConnection, ids: &[&Identifiers]) -> Result<People> {
    let mut values: [Vec<String>; 4] = Default::default();
    for i in ids {
        values[0].extend(i.id.clone());
        values[1].extend(i.cio_id.clone());
        values[2].extend(i.email.as_ref().map(|e| e.as_str().to_owned()));
        values[3].extend(i.phone.as_ref().map(|p| p.e164().to_owned()));
    }
    // One statement; SQLite answers an OR of indexed IN-lists by probing
    // each index.
    let json = |v: &Vec<String>| serde_json::to_string(v).expect("strings serialize");
    let rows: Vec<PersonRow> = sqlx::query(
        "SELECT person_id, customer_id, cio_id, email, phone, attributes, profile_at, subscribed, subscription_at,
                email_unusable, phone_unusable
         FROM people
         WHERE customer_id IN (SELECT value FROM json_each($1)) OR cio_id IN (SELECT value FROM json_each($2))
            OR email IN (SELECT value FROM json_each($3)) OR phone IN (SELECT value FROM json_each($4))",
    )
    .bind(json(&values[0]))
    .bind(json(&values[1]))
    .bind(json(&values[2]))
    .bind(json(&values[3]))
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| {
        let attrs: String = r.get(5);
        PersonRow {
            person_id: r.get(0),
            customer_id: r.get(1),
            cio_id: r.get(2),
            email: r.get(3),
            phone: r.get(4),
            attributes: serde_json::from_str(&attrs).unwrap_or_default(),
            profile_at: r.get(6),
            subscribed: r.get(7),
            subscription_at: r.get(8),
            email_unusable: unusable_reason(r.get(9)),
            phone_unusable: unusable_reason(r.get(10)),
            ..Default::default()
        }
    })
    .collect();
    let next: i64 = sqlx::query("SELECT COALESCE(MAX(person_id), 0) + 1 FROM people")
        .fetch_one(&mut *tx)
        .await?
        .get(0);
    Ok(People::new(rows, next))
}

fn unusable_reason(code: Option<String>) -> Option<UnusableReason> {
    code.as_deref().and_then(UnusableReason::from_code)
}

/// Writes new and changed people.
pub(super) async fn flush_people(
    tx: &mut SqliteConnection,
    people: &People,
    now: i64,
) -> Result<()> {
    let row_json = |r: &PersonRow| {
        json!([
            r.person_id,
            r.customer_id,
            r.cio_id,
            r.email,
            r.phone,
            Value::Object(r.attributes.clone()).to_string(),
            r.profile_at,
            r.subscribed,
            r.subscription_at,
            r.email_unusable.map(UnusableReason::as_str),
            r.phone_unusable.map(UnusableReason::as_str)
        ])
    };
    let new: Vec<Value> = people
        .rows
        .iter()
        .filter(|r| r.is_new)
        .map(row_json)
        .collect();
    let changed: Vec<Value> = people
        .rows
        .iter()
        .filter(|r| r.dirty && !r.is_new)
        .map(row_json)
        .collect();
    if !new.is_empty() {
        sqlx::query(
            "INSERT INTO people (person_id, customer_id, cio_id, email, phone, attributes, profile_at,
                                 subscribed, subscription_at, email_unusable, phone_unusable, created_at, updated_at)
             SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
                    json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'),
                    json_extract(value, '$[6]'), json_extract(value, '$[7]'), json_extract(value, '$[8]'),
                    json_extract(value, '$[9]'), json_extract(value, '$[10]'), $1, $1
             FROM json_each($2)",
        )
        .bind(now)
        .bind(Value::Array(new).to_string())
        .execute(&mut *tx)
        .await?;
    }
    if !changed.is_empty() {
        sqlx::query(
            "UPDATE people SET customer_id = json_extract(j.value, '$[1]'), cio_id = json_extract(j.value, '$[2]'),
                    email = json_extract(j.value, '$[3]'), phone = json_extract(j.value, '$[4]'),
                    attributes = json_extract(j.value, '$[5]'), profile_at = json_extract(j.value, '$[6]'),
                    subscribed = json_extract(j.value, '$[7]'), subscription_at = json_extract(j.value, '$[8]'),
                    email_unusable = json_extract(j.value, '$[9]'), phone_unusable = json_extract(j.value, '$[10]'),
                    updated_at = $1
             FROM json_each($2) AS j WHERE people.person_id = json_extract(j.value, '$[0]')",
        )
        .bind(now)
        .bind(Value::Array(changed).to_string())
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Applies a group of commands in the caller's transaction. Either all of
/// them are applied or an error leaves the transaction to be rolled back.
/// The rules are `ingest_plan`'s; this only loads what they read and
/// writes what they decide.
pub(super) async fn apply_group(
    tx: &mut SqliteConnection,
    commands: &[IngestCommand],
    now: i64,
    attribute_holders: &AttributeReaders,
) -> Result<Vec<IngestOutcome>> {
    // Deliveries seen before, in the store or earlier in this group.
    let keys: Vec<String> = commands.iter().map(dedupe_key).collect();
    let stored_fresh: HashSet<String> = sqlx::query(
        "INSERT INTO received (dedupe_key, received_at) SELECT value, $1 FROM json_each($2) WHERE TRUE
         ON CONFLICT (dedupe_key) DO NOTHING RETURNING dedupe_key",
    )
    .bind(now)
    .bind(serde_json::to_string(&keys).expect("keys serialize"))
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    let mut first = HashSet::new();
    let fresh: Vec<bool> = keys
        .iter()
        .map(|k| stored_fresh.contains(k) && first.insert(k.as_str()))
        .collect();

    // Identity first: every command's person, in order.
    let live: Vec<&Identifiers> = commands
        .iter()
        .zip(&fresh)
        .filter(|(_, n)| **n)
        .map(|(c, _)| identifiers(c))
        .collect();
    let mut people = load_people(tx, &live).await?;
    let person_of = ingest_plan::identify(commands, &fresh, &mut people);

    // Stored memberships and snapshot floors of what the group touches.
    let mut pids_by_audience: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (command, p) in commands.iter().zip(&person_of) {
        if let (IngestCommand::Segment { audiences, .. }, Some(p)) = (command, p) {
            for a in audiences {
                pids_by_audience
                    .entry(a.id)
                    .or_default()
                    .push(people.rows[*p].person_id);
            }
        }
    }
    let mut memberships: HashMap<MembershipKey, StoredMembership> = HashMap::new();
    let mut floors: HashMap<i64, Option<i64>> = HashMap::new();
    for (audience_id, pids) in &pids_by_audience {
        let rows = sqlx::query(
            "SELECT person_id, is_member, since, stamp_at, stamp_rank, stamp_key, event_id FROM memberships
             WHERE audience_id = $1 AND person_id IN (SELECT value FROM json_each($2))",
        )
        .bind(audience_id)
        .bind(serde_json::to_string(pids).expect("ids serialize"))
        .fetch_all(&mut *tx)
        .await?;
        for r in rows {
            memberships.insert(
                (*audience_id, r.get(0)),
                StoredMembership {
                    is_member: r.get(1),
                    since: r.get(2),
                    stamp: Stamp {
                        at_ms: r.get(3),
                        rank: r.get(4),
                        key: r.get(5),
                    },
                    event_id: r.get(6),
                },
            );
        }
    }
    if !pids_by_audience.is_empty() {
        for r in sqlx::query("SELECT audience_id, snapshot_at FROM audiences")
            .fetch_all(&mut *tx)
            .await?
        {
            floors.insert(r.get(0), r.get(1));
        }
    }

    // Event ids: the one writer takes the next ones.
    let first_event: i64 = sqlx::query("SELECT COALESCE(MAX(event_id), 0) + 1 FROM events")
        .fetch_one(&mut *tx)
        .await?
        .get(0);
    let needed = ingest_plan::events_needed(commands, &person_of) as i64;
    let mut event_ids = first_event..first_event + needed;
    let plan = ingest_plan::plan(
        commands,
        &mut people,
        ingest_plan::Loaded {
            keys: &keys,
            person_of: &person_of,
            memberships,
            floors: &floors,
            readers: attribute_holders,
        },
        &mut event_ids,
    );

    // Write back.
    flush_people(tx, &people, now).await?;
    if !plan.events.is_empty() {
        let rows: Vec<Value> = plan
            .events
            .iter()
            .map(|e| {
                json!([
                    e.event_id,
                    e.person_id,
                    e.audience_id,
                    e.source,
                    e.kind,
                    e.occurred_at,
                    e.outcome,
                    e.detail
                ])
            })
            .collect();
        sqlx::query(
            "INSERT INTO events (event_id, person_id, audience_id, source, kind, occurred_at, received_at, outcome, detail)
             SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
                    json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'), $1,
                    json_extract(value, '$[6]'), json_extract(value, '$[7]')
             FROM json_each($2)",
        )
        .bind(now)
        .bind(Value::Array(rows).to_string())
        .execute(&mut *tx)
        .await?;
    }
    if !plan.memberships.is_empty() {
        let rows: Vec<Value> = plan
            .memberships
            .iter()
            .map(|(k, m)| {
                json!([
                    k.0,
                    k.1,
                    m.is_member,
                    m.since,
                    m.stamp.at_ms,
                    m.stamp.rank,
                    m.stamp.key,
                    m.event_id
                ])
            })
            .collect();
        sqlx::query(
            "INSERT INTO memberships (audience_id, person_id, is_member, since, stamp_at, stamp_rank, stamp_key, event_id, updated_at)
             SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
                    json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'),
                    json_extract(value, '$[6]'), json_extract(value, '$[7]'), $1
             FROM json_each($2) WHERE TRUE
             ON CONFLICT (audience_id, person_id) DO UPDATE SET
               is_member = excluded.is_member, since = excluded.since, stamp_at = excluded.stamp_at,
               stamp_rank = excluded.stamp_rank, stamp_key = excluded.stamp_key,
               event_id = excluded.event_id, updated_at = excluded.updated_at",
        )
        .bind(now)
        .bind(Value::Array(rows).to_string())
        .execute(&mut *tx)
        .await?;
    }
    // Member counts and coverage follow the memberships written above
    // (triggers in migration 0005).
    for ((destination, audience_id), by_person) in &plan.desired {
        for want in [true, false] {
            let rows: Vec<(i64, i64)> = by_person
                .iter()
                .filter(|(_, (d, _))| *d == want)
                .map(|(pid, (_, at))| (*pid, *at))
                .collect();
            if !rows.is_empty() {
                set_desired(tx, destination, *audience_id, &rows, want, now).await?;
            }
        }
    }
    for (destination, person_ids) in &plan.updates {
        sqlx::query(
            "UPDATE sync_state SET pending = TRUE, version = version + 1, next_attempt_at = 0, attempts = 0
             WHERE destination = $1 AND person_id IN (SELECT value FROM json_each($2))
               AND desired AND dead_reason IS NULL",
        )
        .bind(destination)
        .bind(serde_json::to_string(person_ids).expect("ids serialize"))
        .execute(&mut *tx)
        .await?;
    }
    Ok(plan.outcomes)
}
