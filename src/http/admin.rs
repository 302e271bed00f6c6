//! The admin API (`/v1/*`, bearer `admin_token`). Emails, phones and
//! name-like attributes are masked in every answer.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{ApiError, AppState};
use crate::audiences::AudienceDef;
use crate::identity::{mask_text, Email, Phone};
use crate::resync::{JobState, ReplaceTarget, ResyncError, Trigger};
use crate::store::{DeadLetterFilter, PersonView};

const HISTORY_LIMIT: i64 = 200;

pub async fn list_audiences(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for a in state.catalog.all() {
        out.push(audience_json(&state, a).await?);
    }
    Ok(Json(json!({ "audiences": out })))
}

pub async fn get_audience(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let audience = state
        .catalog
        .by_name(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no audience named {name:?}")))?
        .clone();
    Ok(Json(audience_json(&state, &audience).await?))
}

async fn audience_json(state: &AppState, a: &AudienceDef) -> Result<Value, ApiError> {
    let stats =
        state.store.audience_stats(a.id).await?.ok_or_else(|| {
            ApiError::Internal(format!("audience {} missing from the store", a.name))
        })?;
    let mut destinations = Vec::new();
    let mut by_destination = Vec::new();
    for d in &a.destinations {
        let s = state.store.destination_audience_stats(d, a.id).await?;
        let status = state.engine.status(d).unwrap_or_default();
        let platform_id = state
            .store
            .destination_audience(d, a.id)
            .await?
            .or_else(|| {
                state
                    .config
                    .audience(&a.name)
                    .and_then(|c| c.sync.iter().find(|t| &t.destination == d))
                    .and_then(|t| t.audience_id.clone())
            });
        destinations.push(json!({
            "destination": d,
            "platform_audience_id": platform_id,
            "pending_adds": s.pending_adds,
            "pending_removes": s.pending_removes,
            "pending_updates": s.pending_updates,
            "in_flight": state.engine.in_flight(d, a.id),
            "acknowledged_members": s.acknowledged_members,
            "unmatched_members": s.unmatched_members,
            "dead_letters": s.dead_letters,
            "paused": status.paused,
            "paused_reason": status.paused_reason,
            "last_success_at": s.last_success_at.or(status.last_success_at),
            "last_error": status.last_error,
            "last_error_at": status.last_error_at,
        }));
        by_destination.push(json!({
            "destination": d,
            "addressable": s.acknowledged_members - s.unmatched_members,
            "unaddressable": s.unmatched_members,
        }));
    }
    let resync = state.resyncs.latest_summary(&a.name).await?;
    let reconcile = state.resyncs.reconcile_status(&a.name).await?;
    Ok(json!({
        "name": a.name,
        "segment_id": a.segment_id,
        "mode": a.mode.as_str(),
        "members": stats.members,
        "identifier_coverage": {
            "with_email": stats.with_email,
            "with_phone": stats.with_phone,
            "with_neither": stats.with_neither,
            "with_unusable_email": stats.email_unusable,
            "with_unusable_phone": stats.phone_unusable,
            "by_destination": by_destination,
        },
        "last_change_at": stats.last_change_at,
        "destinations": destinations,
        "last_resync": resync,
        "reconcile": reconcile,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    /// How far back, e.g. "24h", "7d" (default 24h).
    since: Option<String>,
    /// Bucket width, e.g. "1h", "15m" (default 1h).
    bucket: Option<String>,
}

/// Entries and exits per time bucket and source: the answer to "why did
/// this audience drop 40%?" (an exit campaign misfiring shows as a spike of
/// webhook exits; drift repaired by a reconciliation as resync changes).
pub async fn audience_changes(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<ChangesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let audience = state
        .catalog
        .by_name(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no audience named {name:?}")))?
        .clone();
    let duration = |key: &str, raw: Option<&str>, default: &str| {
        humantime::parse_duration(raw.unwrap_or(default)).map_err(|e| {
            ApiError::BadRequest(format!("{key}: {e} (expected e.g. \"24h\", \"15m\")"))
        })
    };
    let since = duration("since", q.since.as_deref(), "24h")?;
    let bucket = duration("bucket", q.bucket.as_deref(), "1h")?;
    if bucket.as_secs() < 60 {
        return Err(ApiError::BadRequest("bucket: at least 1m".into()));
    }
    if since.as_secs() / bucket.as_secs() > 10_000 {
        return Err(ApiError::BadRequest(
            "since/bucket: at most 10000 buckets".into(),
        ));
    }
    let now = crate::store::now_ms();
    let since_ms = now - since.as_millis() as i64;
    // Events are pruned `retention.events` after arrival: buckets before
    // this hold only the events that still set a membership.
    let kept_since = now - state.config.retention.events.as_millis() as i64;
    let buckets = state
        .store
        .audience_changes(audience.id, since_ms, bucket.as_millis() as i64)
        .await?;
    let entered: i64 = buckets.iter().map(|b| b.entered).sum();
    let exited: i64 = buckets.iter().map(|b| b.exited).sum();
    Ok(Json(json!({
        "audience": audience.name,
        "since": since_ms,
        "bucket_seconds": bucket.as_secs(),
        "history_kept_since": kept_since,
        "totals": { "entered": entered, "exited": exited, "net": entered - exited,
                    "stale": buckets.iter().map(|b| b.stale).sum::<i64>() },
        "buckets": buckets,
    })))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ResyncQuery {
    #[serde(default)]
    dry_run: bool,
    /// Destinations (comma-separated) whose platform audience is replaced
    /// in full after the resync.
    replace: Option<String>,
}

/// 202 with a new job, or 200 with the job already running.
pub async fn start_resync(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<ResyncQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let replace = replace_targets(&state, &name, q.replace.as_deref())?;
    let (job, created) = state
        .resyncs
        .start(&name, q.dry_run, Trigger::Api, replace)
        .map_err(|e| match e {
            ResyncError::UnknownAudience(_) => ApiError::NotFound(e.to_string()),
            ResyncError::NotConfigured => ApiError::Conflict(e.to_string()),
            ResyncError::BadReplace(_) => ApiError::BadRequest(e.to_string()),
        })?;
    let status = if created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let mut body = resync_json(&state, &job).await?;
    body["already_running"] = json!(!created);
    Ok((status, Json(body)))
}

/// The destinations `?replace=a,b` names, each with its own client and the
/// platform audience id its sync entry configures. Whether each may be
/// replaced is checked when the job starts.
fn replace_targets(
    state: &AppState,
    audience: &str,
    replace: Option<&str>,
) -> Result<Vec<ReplaceTarget>, ApiError> {
    let names: Vec<&str> = replace
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    if state.catalog.by_name(audience).is_none() {
        return Err(ApiError::NotFound(format!(
            "no audience named {audience:?}"
        )));
    }
    let sync = state.config.audience(audience).map(|a| a.sync.as_slice());
    let mut targets = Vec::with_capacity(names.len());
    for name in names {
        let entry = sync
            .unwrap_or_default()
            .iter()
            .find(|t| t.destination == name);
        let config = state.config.destination(name);
        let (Some(entry), Some(config)) = (entry, config) else {
            return Err(ApiError::BadRequest(format!(
                "replace: {name:?} is not a destination of audience {audience:?}"
            )));
        };
        let destination = state
            .engine
            .handle(name)
            .ok_or_else(|| ApiError::Internal(format!("destination {name:?} is not running")))?;
        let mapping = config
            .mapping(&entry.map)
            .map_err(|e| ApiError::Internal(format!("destination {name:?}: {}", e.join("; "))))?;
        targets.push(ReplaceTarget {
            destination,
            configured_id: entry.audience_id.clone(),
            mapping,
        });
    }
    Ok(targets)
}

pub async fn get_resync(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let report = state
        .resyncs
        .report(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no resync {id:?}")))?;
    Ok(Json(with_progress(&state, report).await?))
}

/// The job plus each destination's progress towards the new membership.
async fn resync_json(state: &AppState, job: &JobState) -> Result<Value, ApiError> {
    let body = serde_json::to_value(job).map_err(|e| ApiError::Internal(e.to_string()))?;
    with_progress(state, body).await
}

/// A job's report plus each destination's progress (now) towards the
/// audience's membership.
async fn with_progress(state: &AppState, mut body: Value) -> Result<Value, ApiError> {
    let mut progress = Vec::new();
    let audience = body["audience"].as_str().unwrap_or_default().to_owned();
    if let Some(a) = state.catalog.by_name(&audience) {
        for d in &a.destinations {
            let s = state.store.destination_audience_stats(d, a.id).await?;
            progress.push(json!({
                "destination": d,
                "pending_adds": s.pending_adds,
                "pending_removes": s.pending_removes,
                "acknowledged_members": s.acknowledged_members,
                "dead_letters": s.dead_letters,
                "in_sync": s.pending_adds + s.pending_removes == 0,
            }));
        }
    }
    body["destinations"] = json!(progress);
    Ok(body)
}

pub async fn get_person(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let person = state
        .store
        .find_person(&id, HISTORY_LIMIT)
        .await?
        .ok_or_else(|| ApiError::NotFound("no person with that id, cio_id or email".into()))?;
    Ok(Json(person_json(person)))
}

/// Attribute names whose values are personal data.
fn is_personal(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "name", "email", "phone", "address", "street", "birth", "dob", "zip", "postal",
    ]
    .iter()
    .any(|p| k.contains(p))
}

fn mask_attributes(attrs: Map<String, Value>) -> Map<String, Value> {
    attrs
        .into_iter()
        .map(|(k, v)| {
            let masked = match (&v, is_personal(&k)) {
                (Value::String(s), true) => Value::String(mask_text(s)),
                (Value::Null, _) | (_, false) => v,
                (_, true) => Value::String("***".into()),
            };
            (k, masked)
        })
        .collect()
}

fn person_json(p: PersonView) -> Value {
    let r = p.record;
    let email = r.email.as_deref().map(|e| {
        Email::parse(e)
            .map(|e| e.masked())
            .unwrap_or_else(|_| "***".into())
    });
    let phone = r.phone.as_deref().map(|e| {
        Phone::parse(e)
            .map(|p| p.masked())
            .unwrap_or_else(|_| "***".into())
    });
    json!({
        "person_id": r.person_id,
        "identifiers": { "id": r.customer_id, "cio_id": r.cio_id, "email": email, "phone": phone,
                         "unusable": p.unusable.iter().map(|u| json!({
                             "identifier": u.identifier.as_str(),
                             "reason": u.reason.as_str(),
                             "detail": u.reason.describe(),
                         })).collect::<Vec<_>>() },
        "attributes": mask_attributes(r.attributes),
        "subscription": { "subscribed": p.subscribed, "changed_at": p.subscription_at },
        "created_at": p.created_at,
        "updated_at": p.updated_at,
        "memberships": p.memberships,
        "destinations": p.sync,
        "history": p.history,
    })
}

pub async fn list_destinations(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for d in &state.config.destinations {
        let name = d.name();
        let pending = state.store.pending_summary(name).await?;
        let notes = state
            .engine
            .handle(name)
            .map(|h| h.current().platform_notes())
            .unwrap_or_default();
        out.push(json!({
            "name": name,
            "type": d.type_name(),
            "status": state.engine.status(name).unwrap_or_default(),
            "platform_notes": notes,
            "pending": pending.pending,
            "oldest_pending_received_at": pending.oldest_received_at,
        }));
    }
    Ok(Json(json!({ "destinations": out })))
}

pub async fn resume_destination(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !state.engine.resume(&name) {
        return Err(ApiError::NotFound(format!("no destination named {name:?}")));
    }
    tracing::info!(destination = %name, "destination resumed by admin");
    Ok(Json(json!({ "status": "resumed", "destination": name })))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    destination: Option<String>,
    audience: Option<String>,
    limit: Option<i64>,
}

fn dead_letter_filter(
    state: &AppState,
    destination: Option<String>,
    audience: Option<String>,
) -> Result<DeadLetterFilter, ApiError> {
    if let Some(d) = &destination {
        if !state.config.destinations.iter().any(|c| c.name() == d) {
            return Err(ApiError::NotFound(format!("no destination named {d:?}")));
        }
    }
    let audience_id = match &audience {
        Some(name) => Some(
            state
                .catalog
                .by_name(name)
                .ok_or_else(|| ApiError::NotFound(format!("no audience named {name:?}")))?
                .id,
        ),
        None => None,
    };
    Ok(DeadLetterFilter {
        destination,
        audience_id,
    })
}

pub async fn list_dead_letters(
    State(state): State<AppState>,
    query: Result<Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit: must be between 1 and 10000".into(),
        ));
    }
    let filter = dead_letter_filter(&state, q.destination, q.audience)?;
    let rows = state.store.dead_letters(&filter, limit).await?;
    Ok(Json(json!({ "dead_letters": rows })))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    destination: Option<String>,
    audience: Option<String>,
}

pub async fn redrive_dead_letters(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: RedriveRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RedriveRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid redrive body: {e}")))?
    };
    let filter = dead_letter_filter(&state, req.destination, req.audience)?;
    let n = state.store.redrive(&filter).await?;
    state.engine.wake_all();
    Ok(Json(json!({ "status": "redriven", "rows": n })))
}
