//! Sends Data Manager requests and turns every answer into a
//! [`SendOutcome`]. Errors are `google.rpc.Status` envelopes
//! (<https://cloud.google.com/apis/design/errors>), read tolerantly.
//! Reasons carry Google's status, reason and message, never row data.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use governor::DefaultDirectRateLimiter;
use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::quota::{next_pacific_midnight, quota_window, QuotaWindow};
use super::request::GoogleRequest;
use crate::destinations::google_oauth::TokenSource;
use crate::destinations::SendOutcome;
use crate::outbound::{self, Answer};
use crate::secret::Secret;

pub struct Service {
    client: reqwest::Client,
    tokens: TokenSource,
    /// The Cloud project's mutate quota, shared with other destinations.
    project: Arc<DefaultDirectRateLimiter>,
    daily_quota_pause: Option<Duration>,
}

impl Service {
    pub fn new(
        client: reqwest::Client,
        tokens: TokenSource,
        project: Arc<DefaultDirectRateLimiter>,
        daily_quota_pause: Option<Duration>,
    ) -> Self {
        Service {
            client,
            tokens,
            project,
            daily_quota_pause,
        }
    }

    /// Sends an ingest or remove; the requestId on success. Takes a token
    /// of the project's quota first; a 401 refreshes the access token once
    /// and tries again.
    pub async fn mutate(&self, req: GoogleRequest) -> Result<Option<String>, SendOutcome> {
        self.project.until_ready().await;
        let a = self
            .tokens
            .authorized("google", |tok| self.post(&req, tok))
            .await?;
        classify_mutate(a.status, a.retry_after, &a.body, self.daily_quota_pause)
    }

    /// `GET requestStatus:retrieve` (IngestionService's read quota, not
    /// the mutate one): the body on a 2xx.
    pub async fn get(&self, url: Url) -> Result<Value, String> {
        let a = self
            .tokens
            .authorized("google", |tok| self.fetch(&url, tok))
            .await
            .map_err(|o| describe_outcome(&o))?;
        if !(200..300).contains(&a.status) {
            return Err(describe_outcome(&classify_failure(
                a.status,
                a.retry_after,
                &a.body,
                self.daily_quota_pause,
            )));
        }
        serde_json::from_slice(&a.body).map_err(|_| "google answered non-JSON".to_owned())
    }

    async fn post(&self, req: &GoogleRequest, tok: Secret) -> Result<Answer, SendOutcome> {
        let request = self
            .client
            .post(req.url.clone())
            .bearer_auth(tok.expose())
            .header(CONTENT_TYPE, "application/json")
            .body(req.body.clone());
        outbound::send(request)
            .await
            .map_err(|e| SendOutcome::transport("google", &e))
    }

    async fn fetch(&self, url: &Url, tok: Secret) -> Result<Answer, SendOutcome> {
        let request = self.client.get(url.clone()).bearer_auth(tok.expose());
        outbound::send(request)
            .await
            .map_err(|e| SendOutcome::transport("google", &e))
    }
}

/// The parts of a `google.rpc.Status` koala reads.
#[derive(Debug, Default, PartialEq)]
pub struct RpcError {
    pub code: Option<i64>,
    pub status: Option<String>,
    pub message: Option<String>,
    /// `ErrorInfo.reason`.
    pub reason: Option<String>,
    /// `ErrorInfo.metadata.quota_limit`.
    pub quota_limit: Option<String>,
    /// `RetryInfo.retryDelay`.
    pub retry_delay: Option<Duration>,
}

/// `{"error": {code, message, status, details: [...]}}`; None when the
/// body is not that (an HTML error page, say).
pub fn rpc_error(body: &[u8]) -> Option<RpcError> {
    #[derive(Deserialize)]
    struct Envelope {
        error: Value,
    }
    let e = serde_json::from_slice::<Envelope>(body).ok()?.error;
    if !e.is_object() {
        return None;
    }
    let mut out = RpcError {
        code: e["code"].as_i64(),
        status: e["status"].as_str().map(str::to_owned),
        message: e["message"].as_str().map(str::to_owned),
        ..Default::default()
    };
    for d in e["details"].as_array().into_iter().flatten() {
        let kind = d["@type"].as_str().unwrap_or_default();
        if kind.ends_with("google.rpc.ErrorInfo") {
            out.reason = out.reason.or(d["reason"].as_str().map(str::to_owned));
            out.quota_limit = out
                .quota_limit
                .or(d["metadata"]["quota_limit"].as_str().map(str::to_owned));
        } else if kind.ends_with("google.rpc.RetryInfo") {
            out.retry_delay = out
                .retry_delay
                .or(d["retryDelay"].as_str().and_then(proto_duration));
        }
    }
    Some(out)
}

/// A protobuf JSON Duration: `"30s"`, `"1.5s"`.
fn proto_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// The answer to an ingest or remove: `{"requestId": "…"}` on success.
pub fn classify_mutate(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    daily_quota_pause: Option<Duration>,
) -> Result<Option<String>, SendOutcome> {
    if (200..300).contains(&status) {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        return Ok(v["requestId"].as_str().map(str::to_owned));
    }
    Err(classify_failure(
        status,
        retry_after,
        body,
        daily_quota_pause,
    ))
}

/// Any non-2xx answer, by its canonical status when the body says one,
/// else by HTTP status.
pub fn classify_failure(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    daily_quota_pause: Option<Duration>,
) -> SendOutcome {
    let err = rpc_error(body).unwrap_or_default();
    let reason = describe(status, &err);
    let canonical = err.status.as_deref().unwrap_or(match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "",
    });
    let after = err.retry_delay.or(retry_after);
    match canonical {
        "RESOURCE_EXHAUSTED" => match quota_window(err.quota_limit.as_deref()) {
            QuotaWindow::Day => {
                let now = Utc::now();
                let until = match daily_quota_pause {
                    Some(d) => now + chrono::Duration::from_std(d).unwrap_or_default(),
                    None => next_pacific_midnight(now),
                };
                SendOutcome::PausedUntil {
                    until_ms: until.timestamp_millis(),
                    reason: format!("{reason}; the daily quota is spent, paused until it resets"),
                }
            }
            QuotaWindow::Short => SendOutcome::RetryLater { after, reason },
        },
        "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED" | "ABORTED" | "UNKNOWN" => {
            SendOutcome::RetryLater { after, reason }
        }
        // Rows the platform refuses as they are; the engine splits the
        // batch to find them.
        "INVALID_ARGUMENT" | "OUT_OF_RANGE" => SendOutcome::Permanent { reason },
        "UNAUTHENTICATED" => SendOutcome::DestinationDown {
            reason: format!(
                "{reason}; a freshly refreshed token was refused too: check the OAuth client and its scope https://www.googleapis.com/auth/datamanager"
            ),
        },
        // Missing access, terms not accepted, an audience that does not
        // exist: nothing improves until someone acts, and dead-lettering
        // every row would lose them.
        "PERMISSION_DENIED" | "FAILED_PRECONDITION" | "NOT_FOUND" => {
            SendOutcome::DestinationDown { reason }
        }
        _ => match status {
            408 | 429 | 500..=599 => SendOutcome::RetryLater { after, reason },
            400..=499 => SendOutcome::Permanent { reason },
            _ => SendOutcome::DestinationDown {
                reason: format!("{reason}: not a Data Manager answer, check base_url"),
            },
        },
    }
}

/// `google INVALID_ARGUMENT (HTTP 400, INVALID_HASH): message`.
fn describe(status: u16, e: &RpcError) -> String {
    let mut s = format!(
        "google {} (HTTP {status}",
        e.status.as_deref().unwrap_or("error")
    );
    if let Some(r) = e.reason.as_deref().or(e.quota_limit.as_deref()) {
        s.push_str(", ");
        s.push_str(r);
    }
    s.push(')');
    if let Some(q) = e
        .quota_limit
        .as_deref()
        .filter(|q| Some(*q) != e.reason.as_deref())
    {
        if e.reason.is_some() {
            s.push_str(&format!(" [{q}]"));
        }
    }
    if let Some(m) = e.message.as_deref().filter(|m| !m.is_empty()) {
        s.push_str(": ");
        s.extend(m.chars().take(300));
    }
    s
}

fn describe_outcome(o: &SendOutcome) -> String {
    match o {
        SendOutcome::RetryLater { reason, .. }
        | SendOutcome::Permanent { reason }
        | SendOutcome::DestinationDown { reason }
        | SendOutcome::PausedUntil { reason, .. } => reason.clone(),
        other => other.class().to_owned(),
    }
}

/// Timeouts, refused connections, broken bodies: worth another try.
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status_body(code: u16, status: &str, details: Value) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"error": {"code": code, "message": "m", "status": status, "details": details}}),
        )
        .unwrap()
    }

    fn class(status: u16, body: &[u8]) -> &'static str {
        classify_failure(status, None, body, None).class()
    }

    #[test]
    fn success_answers_the_request_id() {
        assert_eq!(
            classify_mutate(200, None, br#"{"requestId":"r-1"}"#, None),
            Ok(Some("r-1".into()))
        );
        assert_eq!(classify_mutate(200, None, b"{}", None), Ok(None));
    }

    #[test]
    fn a_per_minute_quota_retries_after_retry_info() {
        let body = status_body(
            429,
            "RESOURCE_EXHAUSTED",
            json!([
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED",
                 "domain": "googleapis.com", "metadata": {"quota_limit": "IngestionMutateRequestsPerMinutePerProject"}},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}
            ]),
        );
        let out = classify_failure(429, Some(Duration::from_secs(3)), &body, None);
        let SendOutcome::RetryLater { after, reason } = out else {
            panic!("{out:?}")
        };
        assert_eq!(after, Some(Duration::from_secs(12)));
        assert!(reason.contains("RATE_LIMIT_EXCEEDED"), "{reason}");
        // Retry-After when the body says nothing.
        assert_eq!(
            classify_failure(429, Some(Duration::from_secs(3)), b"slow down", None),
            SendOutcome::RetryLater {
                after: Some(Duration::from_secs(3)),
                reason: "google error (HTTP 429)".into()
            }
        );
    }

    #[test]
    fn a_daily_quota_pauses_until_the_reset() {
        let body = status_body(
            429,
            "RESOURCE_EXHAUSTED",
            json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED",
                    "metadata": {"quota_limit": "IngestionMutateRequestsPerDayPerProject"}}]),
        );
        let before = Utc::now().timestamp_millis();
        let SendOutcome::PausedUntil { until_ms, reason } =
            classify_failure(429, None, &body, None)
        else {
            panic!()
        };
        assert!(until_ms > before && until_ms <= before + 25 * 3600 * 1000);
        assert!(reason.contains("PerDay"), "{reason}");
        let SendOutcome::PausedUntil { until_ms, .. } =
            classify_failure(429, None, &body, Some(Duration::from_secs(60)))
        else {
            panic!()
        };
        assert!((until_ms - before - 60_000).abs() < 5_000);
    }

    #[test]
    fn statuses_classify_as_documented() {
        assert_eq!(
            class(400, &status_body(400, "INVALID_ARGUMENT", json!([]))),
            "permanent"
        );
        assert_eq!(
            class(403, &status_body(403, "PERMISSION_DENIED", json!([]))),
            "destination_down"
        );
        assert_eq!(
            class(401, &status_body(401, "UNAUTHENTICATED", json!([]))),
            "destination_down"
        );
        assert_eq!(
            class(400, &status_body(400, "FAILED_PRECONDITION", json!([]))),
            "destination_down"
        );
        assert_eq!(
            class(503, &status_body(503, "UNAVAILABLE", json!([]))),
            "retry"
        );
        assert_eq!(class(500, b"<html>oops</html>"), "retry");
        assert_eq!(class(502, b""), "retry");
        assert_eq!(class(400, b"bad"), "permanent");
        assert_eq!(class(404, b"nope"), "destination_down");
    }

    #[test]
    fn the_envelope_is_read_tolerantly() {
        assert_eq!(rpc_error(b"not json"), None);
        assert_eq!(rpc_error(br#"{"error":"x"}"#), None);
        let e = rpc_error(br#"{"error":{"code":400,"details":[{"@type":"x"},7,{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1.5s"}]}}"#).unwrap();
        assert_eq!(e.code, Some(400));
        assert_eq!(e.retry_delay, Some(Duration::from_millis(1500)));
        assert_eq!(e.status, None);
    }

    #[test]
    fn reasons_name_status_reason_and_message() {
        let body = status_body(
            400,
            "INVALID_ARGUMENT",
            json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "INVALID_HASH"}]),
        );
        assert_eq!(
            classify_failure(400, None, &body, None),
            SendOutcome::Permanent {
                reason: "google INVALID_ARGUMENT (HTTP 400, INVALID_HASH): m".into()
            }
        );
    }
}
