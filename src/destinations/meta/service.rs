//! Sends requests and turns every answer into a [`SendOutcome`]
//! (reference §1.5). Reasons carry Meta's code and message, never row data.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::Value;

use super::request::MetaRequest;
use crate::destinations::SendOutcome;
use crate::outbound::{self, Answer, StatusClass};
use crate::secret::Secret;

/// Throttles: retry after a pause.
const THROTTLE_CODES: &[i64] = &[4, 17, 32, 341, 368, 613, 80003, 80004];
/// "API Unknown" / "API Service": possibly temporary.
const TRANSIENT_CODES: &[i64] = &[1, 2];
/// Invalid or unusable requests Meta documents; dead-letter the rows.
const PERMANENT_CODES: &[i64] = &[3, 100, 105, 2650, 1487301, 1487366];

/// One HTTP client per destination, holding its timeout and token.
pub struct Service {
    client: reqwest::Client,
    token: Secret,
}

impl Service {
    pub fn new(timeout: Duration, token: Secret) -> anyhow::Result<Self> {
        Ok(Service {
            client: outbound::client(timeout)?,
            token,
        })
    }

    /// Sends a `/users` request carrying `rows` rows.
    pub async fn users(&self, req: MetaRequest, rows: usize) -> SendOutcome {
        match self.call(req).await {
            Ok(a) => classify_users(a.status, a.retry_after, &a.body, rows),
            Err(outcome) => outcome,
        }
    }

    /// Sends a create request; the new audience's id on success.
    pub async fn create(&self, req: MetaRequest) -> Result<String, SendOutcome> {
        let a = self.call(req).await?;
        classify_create(a.status, a.retry_after, &a.body)
    }

    async fn call(&self, req: MetaRequest) -> Result<Answer, SendOutcome> {
        let request = self
            .client
            .request(req.method, req.url)
            .bearer_auth(self.token.expose())
            .header(CONTENT_TYPE, "application/json")
            .body(req.body);
        outbound::send(request)
            .await
            .map_err(|e| SendOutcome::transport("meta", &e))
    }
}

/// Graph's `{"error":{…}}` envelope.
#[derive(Debug, Deserialize)]
struct Envelope {
    error: GraphError,
}

#[derive(Debug, Deserialize)]
struct GraphError {
    message: Option<String>,
    code: Option<i64>,
    error_subcode: Option<i64>,
    error_user_title: Option<String>,
    is_transient: Option<bool>,
}

/// The answer to `/users`: counts on success (missing ones tolerated).
fn classify_users(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    rows: usize,
) -> SendOutcome {
    if !is_success(status) || graph_error(body).is_some() {
        return classify_failure(status, retry_after, body);
    }
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    SendOutcome::Success {
        received: count(&v, "num_received").unwrap_or(rows),
        invalid: count(&v, "num_invalid_entries").unwrap_or(0),
    }
}

/// The answer to a create: `{"id": "…"}`.
fn classify_create(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<String, SendOutcome> {
    if !is_success(status) || graph_error(body).is_some() {
        return Err(classify_failure(status, retry_after, body));
    }
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match &v["id"] {
        Value::String(id) if !id.is_empty() => Ok(id.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(SendOutcome::Permanent {
            reason: "meta answered the create without an audience id".into(),
        }),
    }
}

/// Any answer that is not a success: by Graph error code when there is a
/// recognised one, else by HTTP status.
fn classify_failure(status: u16, retry_after: Option<Duration>, body: &[u8]) -> SendOutcome {
    if status == 429 {
        let reason = match graph_error(body) {
            Some(e) => describe(&e),
            None => "meta answered HTTP 429".into(),
        };
        return SendOutcome::RetryLater {
            after: retry_after,
            reason,
        };
    }
    let Some(err) = graph_error(body) else {
        return by_status(status, retry_after, format!("meta answered HTTP {status}"));
    };
    let reason = describe(&err);
    let code = err.code.unwrap_or(0);
    if THROTTLE_CODES.contains(&code) || TRANSIENT_CODES.contains(&code) {
        SendOutcome::RetryLater {
            after: retry_after,
            reason,
        }
    } else if matches!(code, 10 | 190 | 200..=299) {
        SendOutcome::DestinationDown { reason }
    } else if PERMANENT_CODES.contains(&code) {
        SendOutcome::Permanent { reason }
    } else if err.is_transient == Some(true) {
        SendOutcome::RetryLater {
            after: retry_after,
            reason,
        }
    } else {
        by_status(status, retry_after, reason)
    }
}

/// Classification when the body does not say more than the status: the
/// shared reading, except that a 404/405 without a Graph error is not
/// Graph's answer at all — base_url or api_version is wrong, and every
/// row would die the same way — so the destination pauses instead.
fn by_status(status: u16, retry_after: Option<Duration>, reason: String) -> SendOutcome {
    match status {
        404 | 405 => SendOutcome::DestinationDown {
            reason: format!("{reason} without a Graph error: check base_url and api_version"),
        },
        // A 2xx carrying an error: nothing will go better until someone
        // looks at base_url.
        200..=299 => SendOutcome::DestinationDown { reason },
        _ => SendOutcome::from_status(StatusClass::of(status), retry_after, reason),
    }
}

fn is_success(status: u16) -> bool {
    StatusClass::of(status) == StatusClass::Success
}

fn graph_error(body: &[u8]) -> Option<GraphError> {
    serde_json::from_slice::<Envelope>(body)
        .ok()
        .map(|e| e.error)
}

/// `meta error 100/1713230: Invalid parameter (Audience Upload Blocked)`.
fn describe(e: &GraphError) -> String {
    let mut s = match (e.code, e.error_subcode) {
        (Some(c), Some(sc)) => format!("meta error {c}/{sc}"),
        (Some(c), None) => format!("meta error {c}"),
        _ => "meta error".to_owned(),
    };
    if let Some(m) = e.message.as_deref().filter(|m| !m.is_empty()) {
        s.push_str(": ");
        s.extend(m.chars().take(300));
    }
    if let Some(t) = e.error_user_title.as_deref().filter(|t| !t.is_empty()) {
        s.push_str(&format!(" ({})", t.chars().take(100).collect::<String>()));
    }
    s
}

/// A count as a number or a numeric string.
fn count(v: &Value, key: &str) -> Option<usize> {
    match &v[key] {
        Value::Number(n) => n.as_u64().map(|n| n as usize),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(code: i64, subcode: Option<i64>) -> Vec<u8> {
        let mut e =
            json!({"message": "m", "type": "OAuthException", "code": code, "fbtrace_id": "x"});
        if let Some(sc) = subcode {
            e["error_subcode"] = json!(sc);
        }
        serde_json::to_vec(&json!({ "error": e })).unwrap()
    }

    fn class(status: u16, body: &[u8]) -> &'static str {
        classify_users(status, None, body, 3).class()
    }

    #[test]
    fn a_success_reports_meta_counts() {
        let body = br#"{"audience_id":"1","session_id":"2","num_received":3,"num_invalid_entries":1,"invalid_entry_samples":{"x":"y"}}"#;
        assert_eq!(
            classify_users(200, None, body, 3),
            SendOutcome::Success {
                received: 3,
                invalid: 1
            }
        );
        assert_eq!(
            classify_users(200, None, b"{}", 3),
            SendOutcome::Success {
                received: 3,
                invalid: 0
            }
        );
        assert_eq!(
            classify_users(200, None, br#"{"num_received":"2"}"#, 3),
            SendOutcome::Success {
                received: 2,
                invalid: 0
            }
        );
    }

    #[test]
    fn throttles_retry_and_keep_retry_after() {
        for code in [4, 17, 32, 613, 80003, 80004, 341, 368] {
            let out = classify_users(400, Some(Duration::from_secs(7)), &err(code, None), 1);
            assert_eq!(
                out,
                SendOutcome::RetryLater {
                    after: Some(Duration::from_secs(7)),
                    reason: format!("meta error {code}: m")
                }
            );
        }
        assert_eq!(class(400, &err(17, Some(2446079))), "retry");
        assert_eq!(class(500, &err(1, None)), "retry");
        assert_eq!(class(500, &err(2, None)), "retry");
    }

    #[test]
    fn token_and_permission_errors_take_the_destination_down() {
        for code in [190, 10, 200, 250, 299, 294] {
            assert_eq!(class(400, &err(code, None)), "destination_down", "{code}");
        }
        assert_eq!(class(401, &err(190, Some(463))), "destination_down");
    }

    #[test]
    fn invalid_requests_are_permanent_and_say_why() {
        let body = serde_json::to_vec(&json!({"error": {
            "message": "Invalid parameter", "code": 100, "error_subcode": 1713230,
            "error_user_title": "Audience Upload Blocked", "fbtrace_id": "x"}}))
        .unwrap();
        assert_eq!(
            classify_users(400, None, &body, 1),
            SendOutcome::Permanent {
                reason: "meta error 100/1713230: Invalid parameter (Audience Upload Blocked)"
                    .into()
            }
        );
        for code in [2650, 1487301, 1487366, 105, 12345] {
            assert_eq!(class(400, &err(code, None)), "permanent", "{code}");
        }
        // A recognised permanent code stays permanent even on a 5xx.
        assert_eq!(class(500, &err(100, None)), "permanent");
    }

    #[test]
    fn unknown_codes_fall_back_to_the_status_or_is_transient() {
        assert_eq!(class(500, &err(12345, None)), "retry");
        assert_eq!(class(503, b"<html>busy</html>"), "retry");
        let transient = br#"{"error":{"code":12345,"is_transient":true}}"#;
        assert_eq!(class(400, transient), "retry");
    }

    #[test]
    fn http_status_decides_when_the_body_is_not_graph_json() {
        assert_eq!(
            classify_users(429, Some(Duration::from_secs(3)), b"slow down", 1),
            SendOutcome::RetryLater {
                after: Some(Duration::from_secs(3)),
                reason: "meta answered HTTP 429".into()
            }
        );
        assert_eq!(class(408, b""), "retry");
        assert_eq!(class(401, b"nope"), "destination_down");
        assert_eq!(class(403, b"nope"), "destination_down");
        // A 404 that is not Graph JSON means a wrong base_url: pause, do not
        // dead-letter every row.
        assert_eq!(class(404, b"not found"), "destination_down");
        assert_eq!(class(400, b"bad"), "permanent");
        assert_eq!(class(400, b"garbage"), "permanent");
    }

    #[test]
    fn an_error_inside_a_2xx_is_still_an_error() {
        assert_eq!(class(200, &err(190, None)), "destination_down");
    }

    #[test]
    fn reasons_never_carry_invalid_entry_samples() {
        let body = serde_json::to_vec(&json!({"error": {"message": "Invalid parameter", "code": 100,
            "invalid_entry_samples": {"973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b": "bad"}}}))
        .unwrap();
        let SendOutcome::Permanent { reason } = classify_users(400, None, &body, 1) else {
            panic!("not permanent");
        };
        assert!(!reason.contains("973dfe"), "{reason}");
    }

    #[test]
    fn create_answers_the_new_id() {
        assert_eq!(
            classify_create(200, None, br#"{"id":"2385"}"#),
            Ok("2385".into())
        );
        assert_eq!(
            classify_create(200, None, br#"{"id":2385}"#),
            Ok("2385".into())
        );
        assert_eq!(
            classify_create(200, None, b"{}").unwrap_err().class(),
            "permanent"
        );
        assert_eq!(
            classify_create(400, None, &err(17, None))
                .unwrap_err()
                .class(),
            "retry"
        );
    }
}
