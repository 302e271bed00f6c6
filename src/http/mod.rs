//! The HTTP surface: Customer.io webhooks, the admin API, health and
//! metrics. Every route is listed in `openapi.yaml`; a test keeps the two
//! in agreement.

mod admin;
mod connection;
mod error;
mod webhooks;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use subtle::ConstantTimeEq;

pub use error::ApiError;

use crate::audiences::Catalog;
use crate::config::Config;
use crate::delivery::Engine;
use crate::ingest::Ingestor;
use crate::resync::Resyncs;
use crate::store::Store;

/// Everything a request handler may need.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub catalog: Catalog,
    pub store: Arc<dyn Store>,
    pub ingestor: Ingestor,
    pub engine: Arc<Engine>,
    pub resyncs: Arc<Resyncs>,
    pub metrics: PrometheusHandle,
    /// How phone numbers in webhooks are read (`identity.*`).
    pub phone_rules: crate::identity::PhoneRules,
}

/// Every (method, path) the router serves, as written in openapi.yaml.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/webhooks/customerio/segments"),
    ("POST", "/webhooks/customerio/reporting"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/audiences"),
    ("GET", "/v1/audiences/{name}"),
    ("GET", "/v1/audiences/{name}/changes"),
    ("POST", "/v1/audiences/{name}/resync"),
    ("GET", "/v1/resyncs/{id}"),
    ("GET", "/v1/people/{id}"),
    ("GET", "/v1/destinations"),
    ("POST", "/v1/destinations/{name}/resume"),
    ("GET", "/v1/dead-letters"),
    ("POST", "/v1/dead-letters/redrive"),
];

pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/v1/audiences", get(admin::list_audiences))
        .route("/v1/audiences/{name}", get(admin::get_audience))
        .route("/v1/audiences/{name}/changes", get(admin::audience_changes))
        .route("/v1/audiences/{name}/resync", post(admin::start_resync))
        .route("/v1/resyncs/{id}", get(admin::get_resync))
        .route("/v1/people/{id}", get(admin::get_person))
        .route("/v1/destinations", get(admin::list_destinations))
        .route(
            "/v1/destinations/{name}/resume",
            post(admin::resume_destination),
        )
        .route("/v1/dead-letters", get(admin::list_dead_letters))
        .route(
            "/v1/dead-letters/redrive",
            post(admin::redrive_dead_letters),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/webhooks/customerio/segments", post(webhooks::segments))
        .route("/webhooks/customerio/reporting", post(webhooks::reporting))
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .merge(admin)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(state)
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(|request: &Request| {
                // The route template, never the concrete path: a person's
                // email can be part of `/v1/people/{id}`.
                let route = request
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "unmatched".into());
                tracing::debug_span!("request", method = %request.method(), route)
            }),
        )
        .layer(middleware::from_fn(
            connection::announce_close_when_body_unread,
        ))
}

async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let expected = state.config.server.admin_token.expose().as_bytes();
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::as_bytes);
    match given {
        Some(token) if bool::from(token.ct_eq(expected)) => next.run(request).await,
        Some(_) => ApiError::Unauthorized("invalid admin token".into()).into_response(),
        None => ApiError::Unauthorized(
            "missing bearer token (Authorization: Bearer <admin_token>)".into(),
        )
        .into_response(),
    }
}

/// Sets the gauges that describe state (pending work, audience sizes and
/// coverage, running resyncs) from the store's maintained counts, so every
/// scrape sees the state as of that moment. Each read is one row or one
/// index probe, whatever the audience size.
async fn refresh_gauges(state: &AppState) {
    let now = crate::store::now_ms();
    for d in &state.config.destinations {
        let name = d.name().to_owned();
        if let Ok(s) = state.store.pending_summary(&name).await {
            metrics::gauge!("koala_destination_pending", "destination" => name.clone())
                .set(s.pending as f64);
            let age = s
                .oldest_received_at
                .map(|t| (now - t).max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            metrics::gauge!("koala_destination_oldest_pending_seconds", "destination" => name)
                .set(age);
        }
    }
    for a in state.catalog.all() {
        if let Ok(Some(s)) = state.store.audience_stats(a.id).await {
            metrics::gauge!("koala_audience_members", "audience" => a.name.clone())
                .set(s.members as f64);
            for (identifier, n) in [
                ("email", s.with_email),
                ("phone", s.with_phone),
                ("neither", s.with_neither),
                ("email_unusable", s.email_unusable),
                ("phone_unusable", s.phone_unusable),
            ] {
                metrics::gauge!("koala_audience_identifier_coverage", "audience" => a.name.clone(), "identifier" => identifier)
                    .set(n as f64);
            }
        }
        for d in &a.destinations {
            if let Ok(s) = state.store.destination_audience_stats(d, a.id).await {
                metrics::gauge!("koala_audience_addressable_members", "audience" => a.name.clone(), "destination" => d.clone())
                    .set((s.acknowledged_members - s.unmatched_members) as f64);
            }
        }
    }
    let running = state.resyncs.running();
    for a in state.catalog.all() {
        let job = running.iter().find(|j| j.audience == a.name);
        metrics::gauge!("koala_resync_running", "audience" => a.name.clone())
            .set(if job.is_some() { 1.0 } else { 0.0 });
        metrics::gauge!("koala_resync_members_seen", "audience" => a.name.clone())
            .set(job.map_or(0.0, |j| j.members_seen as f64));
        metrics::gauge!("koala_resync_pages_fetched", "audience" => a.name.clone())
            .set(job.map_or(0.0, |j| j.pages_fetched as f64));
        for phase in crate::resync::Phase::RUNNING {
            let current = job.is_some_and(|j| j.phase == phase);
            metrics::gauge!("koala_resync_phase", "audience" => a.name.clone(), "phase" => phase.as_str())
                .set(if current { 1.0 } else { 0.0 });
        }
    }
}

async fn ready(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(e) => ApiError::Unavailable(e.to_string()).into_response(),
    }
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    // A slow store must not make the scrape time out: the gauges then keep
    // their previous values and everything else renders.
    if tokio::time::timeout(std::time::Duration::from_secs(2), refresh_gauges(&state))
        .await
        .is_err()
    {
        tracing::warn!("refreshing gauges for /metrics timed out");
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}
