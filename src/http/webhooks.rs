//! Customer.io webhook endpoints: read the raw body within the limit,
//! verify the signature over those exact bytes, validate, commit, answer.
//! Nothing slow happens here: destinations are called by the engine.

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::customerio::refusal::{PayloadError, RefusalReason};
use crate::customerio::{contains_unrendered_liquid, reporting, segment, signature};
use crate::identity::Identifiers;
use crate::secret::Secret;
use crate::store::{IngestCommand, IngestOutcome};

const SEGMENTS: &str = "segments";
const REPORTING: &str = "reporting";

pub async fn segments(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let result = handle_segments(&state, &headers, body).await;
    finish(SEGMENTS, started, result)
}

pub async fn reporting(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let result = handle_reporting(&state, &headers, body).await;
    finish(REPORTING, started, result)
}

/// A webhook koala did not accept: the answer, and for a refusal of the
/// request itself (not a store failure) why, for the log and the count.
struct Refused {
    error: ApiError,
    why: Option<(RefusalReason, Option<String>)>,
}

impl From<ApiError> for Refused {
    fn from(error: ApiError) -> Self {
        Refused { error, why: None }
    }
}

impl From<crate::store::StoreError> for Refused {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl Refused {
    fn new(reason: RefusalReason, field: Option<String>, error: ApiError) -> Self {
        Refused {
            error,
            why: Some((reason, field)),
        }
    }
}

impl From<PayloadError> for Refused {
    fn from(e: PayloadError) -> Self {
        let error = if e.reason.is_malformed() {
            ApiError::BadRequest(e.message)
        } else {
            ApiError::Unprocessable(e.message)
        };
        Refused::new(e.reason, e.field, error)
    }
}

/// Counts every answer by endpoint and outcome; logs and counts every
/// refusal once, by reason and field name (never a value: no PII).
fn finish(
    endpoint: &'static str,
    started: Instant,
    result: Result<Value, Refused>,
) -> Result<Json<Value>, ApiError> {
    let outcome = match &result {
        Ok(v) => v["status"].as_str().unwrap_or("accepted").to_owned(),
        Err(r) => r.error.code().to_owned(),
    };
    metrics::counter!("koala_webhooks_total", "endpoint" => endpoint, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("koala_ingest_seconds", "endpoint" => endpoint)
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(v) => Ok(Json(v)),
        Err(Refused { error, why }) => {
            if let Some((reason, field)) = why {
                metrics::counter!("koala_webhook_refusals_total", "endpoint" => endpoint, "reason" => reason.as_str())
                    .increment(1);
                tracing::warn!(
                    endpoint,
                    status = error.status().as_u16(),
                    reason = reason.as_str(),
                    field = field.as_deref().unwrap_or("-"),
                    "webhook refused"
                );
            }
            Err(error)
        }
    }
}

/// Counts the identifiers a person gave that cannot be used.
fn count_unusable(ids: &Identifiers) {
    for u in &ids.unusable {
        metrics::counter!("koala_identifier_unusable_total", "identifier" => u.identifier.as_str(), "reason" => u.reason.as_str())
            .increment(1);
    }
}

async fn handle_segments(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, Refused> {
    let raw = verified_body(
        state,
        headers,
        body,
        &state.config.customerio.webhook_signing_keys,
        SEGMENTS,
    )
    .await?;
    let event = segment::parse(&raw, &state.phone_rules)?;
    count_unusable(&event.identifiers);
    let audiences = state.catalog.for_segment(event.segment_id).to_vec();
    if audiences.is_empty() {
        metrics::counter!("koala_segment_ignored_total", "segment" => event.segment_id.to_string())
            .increment(1);
        return Ok(json!({
            "status": "ignored",
            "reason": format!("no audience uses segment {}", event.segment_id),
        }));
    }
    let occurred_at = event.occurred_at_ms;
    let outcome = state
        .ingestor
        .submit(IngestCommand::Segment { event, audiences })
        .await?;
    Ok(match outcome {
        IngestOutcome::Duplicate => duplicate(SEGMENTS),
        IngestOutcome::Accepted { audiences, .. } => {
            for a in &audiences {
                match a.outcome {
                    "stale" => metrics::counter!("koala_membership_stale_total", "audience" => a.audience.clone()).increment(1),
                    "applied" => metrics::counter!("koala_membership_changes_total", "audience" => a.audience.clone()).increment(1),
                    _ => {}
                }
            }
            json!({ "status": "accepted", "occurred_at": occurred_at, "audiences": audiences })
        }
    })
}

async fn handle_reporting(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, Refused> {
    let raw = verified_body(
        state,
        headers,
        body,
        &state.config.customerio.reporting_signing_keys,
        REPORTING,
    )
    .await?;
    let event = reporting::parse(&raw, &state.phone_rules)?;
    count_unusable(&event.identifiers);
    let (object_type, metric) = (event.object_type.clone(), event.metric.clone());
    let storage = state.config.retention.store_reporting_events;
    if !crate::store::retention::stores_reporting_event(storage, &event) {
        // No rule uses it (an open, a click): counted, nothing stored, so
        // nothing to deduplicate either (a retry is counted again).
        metrics::counter!("koala_reporting_events_not_stored_total", "object_type" => object_type, "metric" => metric)
            .increment(1);
        return Ok(json!({
            "status": "ignored",
            "reason": format!(
                "{} events are counted, not stored (retention.store_reporting_events = \"{}\")",
                event.kind(),
                storage.as_str()
            ),
        }));
    }
    let outcome = state
        .ingestor
        .submit(IngestCommand::Reporting(event))
        .await?;
    Ok(match outcome {
        IngestOutcome::Duplicate => duplicate(REPORTING),
        IngestOutcome::Accepted { .. } => {
            metrics::counter!("koala_reporting_events_total", "object_type" => object_type, "metric" => metric).increment(1);
            json!({ "status": "accepted" })
        }
    })
}

/// Reads the body (413 past the limit), checks the signature over the raw
/// bytes (401), and refuses unrendered Liquid (422).
async fn verified_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    keys: &[Secret],
    endpoint: &'static str,
) -> Result<Bytes, Refused> {
    let limit = state.config.server.body_limit_bytes;
    let too_large = || {
        Refused::new(
            RefusalReason::TooLarge,
            None,
            ApiError::PayloadTooLarge(limit),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let raw = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(e) = signature::verify(
        keys,
        header("x-cio-timestamp"),
        header("x-cio-signature"),
        &raw,
        chrono::Utc::now().timestamp(),
        state.config.customerio.timestamp_tolerance,
    ) {
        let (reason, refusal) = match e {
            signature::SignatureError::MissingSignature
            | signature::SignatureError::MissingTimestamp => {
                ("missing", RefusalReason::SignatureMissing)
            }
            signature::SignatureError::BadTimestamp | signature::SignatureError::Expired => {
                ("timestamp", RefusalReason::SignatureTimestamp)
            }
            signature::SignatureError::Mismatch => ("mismatch", RefusalReason::SignatureMismatch),
        };
        metrics::counter!("koala_webhook_signature_failures_total", "endpoint" => endpoint, "reason" => reason).increment(1);
        return Err(Refused::new(
            refusal,
            None,
            ApiError::Unauthorized(e.to_string()),
        ));
    }
    if contains_unrendered_liquid(&raw) {
        return Err(Refused::new(
            RefusalReason::UnrenderedLiquid,
            None,
            ApiError::Unprocessable(
                "body contains unrendered Liquid ({{ or {%): Customer.io's test send does not render templates; send to a real person".into(),
            ),
        ));
    }
    Ok(raw)
}

/// A delivery seen before: 2xx, counted, nothing changed.
fn duplicate(endpoint: &'static str) -> Value {
    metrics::counter!("koala_webhook_duplicates_total", "endpoint" => endpoint).increment(1);
    json!({ "status": "duplicate" })
}
