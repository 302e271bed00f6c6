//! Sends BigQuery requests with a service account's access token and
//! classifies the answers. Errors are BigQuery's envelope
//! `{"error": {"code", "message", "errors": [{"reason", "message",
//! "location"}], "status"}}` (<https://cloud.google.com/bigquery/docs/error-messages>),
//! read tolerantly; the reasons koala acts on are `rateLimitExceeded`
//! and `quotaExceeded` (retry), `backendError`/`internalError` (retry),
//! and everything else by status. Reasons carry BigQuery's status,
//! reason and message, never row data or the token.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use crate::destinations::google_oauth::TokenSource;
use crate::destinations::SendOutcome;
use crate::outbound::{self, Answer, StatusClass};
use crate::secret::Secret;

/// How long a `quotaExceeded` waits when BigQuery says nothing: its quotas
/// are "typically made available within minutes".
pub const QUOTA_WAIT: Duration = Duration::from_secs(60);

pub struct Service {
    client: reqwest::Client,
    tokens: TokenSource,
}

/// A request that stored nothing.
#[derive(Debug)]
pub enum Failure {
    /// 404: the table (or its dataset) does not exist.
    NotFound(SendOutcome),
    Other(SendOutcome),
}

/// What `tables.get` found.
#[derive(Debug)]
pub enum Lookup {
    /// The table resource (`schema.fields`, `type`, …).
    Found(Value),
    /// 404: the table is missing, or its whole dataset (`dataset`).
    Missing { dataset: bool },
}

/// One entry of `insertErrors`: the row's index in the request and why.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct InsertError {
    pub index: usize,
    #[serde(default)]
    pub errors: Vec<ErrorProto>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ErrorProto {
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
}

impl ErrorProto {
    fn reason(&self) -> &str {
        self.reason.as_deref().unwrap_or("")
    }
    fn message(&self) -> &str {
        self.message.as_deref().unwrap_or("")
    }
}

impl Service {
    pub fn new(client: reqwest::Client, tokens: TokenSource) -> Self {
        Service { client, tokens }
    }

    /// `tabledata.insertAll`: the per-row errors of a 2xx (empty when
    /// every row was stored), else the failure (a 404 told apart: the
    /// destination decides whether a missing table is worth waiting for).
    pub async fn insert_all(
        &self,
        url: &Url,
        body: Vec<u8>,
        table: &str,
    ) -> Result<Vec<InsertError>, Failure> {
        let a = self.post(url, body).await.map_err(Failure::Other)?;
        if a.class() != StatusClass::Success {
            let outcome = classify_failure(&a, table);
            return Err(match a.status {
                404 => Failure::NotFound(outcome),
                _ => Failure::Other(outcome),
            });
        }
        insert_errors(&a.body).map_err(|why| {
            Failure::Other(SendOutcome::RetryLater {
                after: None,
                reason: format!("bigquery answered HTTP {} but {why}", a.status),
            })
        })
    }

    /// `tables.insert` of `what` (a table or view) in `dataset`: true
    /// when created, false when it already existed (409), else the
    /// outcome of the failure. A refusal is never the rows' fault: what
    /// would refuse a batch (a 400) pauses instead.
    pub async fn create(
        &self,
        url: &Url,
        body: &Value,
        what: &str,
        dataset: &str,
    ) -> Result<bool, SendOutcome> {
        let a = self
            .post(url, serde_json::to_vec(body).expect("serializable"))
            .await?;
        let e = api_error(&a.body);
        let reason = describe(a.status, &e);
        match (a.status, e.reason.as_deref().unwrap_or("")) {
            (200..=299, _) => Ok(true),
            (409, _) => Ok(false),
            (404, _) => Err(SendOutcome::DestinationDown {
                reason: format!(
                    "{reason}; creating {what}: dataset {dataset} was not found (koala creates the table and the view, not the dataset)"
                ),
            }),
            (403, r) if !matches!(r, "rateLimitExceeded" | "quotaExceeded") => {
                Err(SendOutcome::DestinationDown {
                    reason: format!(
                        "{reason}; creating {what}: the service account needs bigquery.tables.create on dataset {dataset} (roles/bigquery.dataEditor)"
                    ),
                })
            }
            _ => Err(match classify_failure(&a, what) {
                SendOutcome::Permanent { reason } => SendOutcome::DestinationDown {
                    reason: format!("{reason}; BigQuery refused to create {what}"),
                },
                other => other,
            }),
        }
    }

    /// `tables.get`, read-only (`koala check --online`): the table's
    /// resource, or what a 404 says is missing. A 403 names the
    /// permission a read needs; every other failure is classified as a
    /// send's would be.
    pub async fn get_table(
        &self,
        url: &Url,
        what: &str,
        dataset: &str,
    ) -> Result<Lookup, SendOutcome> {
        let a = self.call(Method::GET, url, None).await?;
        let e = api_error(&a.body);
        match (a.status, e.reason.as_deref().unwrap_or("")) {
            (200..=299, _) => serde_json::from_slice(&a.body)
                .map(Lookup::Found)
                .map_err(|_| SendOutcome::RetryLater {
                    after: None,
                    reason: format!(
                        "bigquery answered HTTP {} but its body is not a table resource",
                        a.status
                    ),
                }),
            // UNCONFIRMED: BigQuery's message names what is missing
            // ("Not found: Dataset p:d" or "Not found: Table p:d.t").
            (404, _) => Ok(Lookup::Missing {
                dataset: e
                    .message
                    .as_deref()
                    .is_some_and(|m| m.trim_start().starts_with("Not found: Dataset")),
            }),
            (403, r) if !matches!(r, "rateLimitExceeded" | "quotaExceeded") => {
                Err(SendOutcome::DestinationDown {
                    reason: format!(
                        "{}; reading {what} needs bigquery.tables.get on dataset {dataset} (roles/bigquery.dataViewer, or roles/bigquery.dataEditor which sending needs anyway)",
                        describe(a.status, &e)
                    ),
                })
            }
            _ => Err(classify_failure(&a, what)),
        }
    }

    async fn post(&self, url: &Url, body: Vec<u8>) -> Result<Answer, SendOutcome> {
        self.call(Method::POST, url, Some(body)).await
    }

    /// One authorized request (a JSON body when given), through the token
    /// cache: a 401 refreshes the token once and sends again.
    async fn call(
        &self,
        method: Method,
        url: &Url,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, SendOutcome> {
        let call = |tok: Secret| {
            let mut request = self
                .client
                .request(method.clone(), url.clone())
                .bearer_auth(tok.expose());
            if let Some(body) = &body {
                request = request
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            async move {
                outbound::send(request)
                    .await
                    .map_err(|e| SendOutcome::transport("bigquery", &e))
            }
        };
        self.tokens.authorized("bigquery", call).await
    }
}

/// `insertErrors` of a 2xx answer (absent: none).
pub fn insert_errors(body: &[u8]) -> Result<Vec<InsertError>, String> {
    #[derive(Deserialize)]
    struct InsertAllResponse {
        #[serde(default, rename = "insertErrors")]
        insert_errors: Vec<InsertError>,
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    serde_json::from_slice::<InsertAllResponse>(body)
        .map(|r| r.insert_errors)
        .map_err(|_| "its body is not an insertAll response".to_owned())
}

/// The parts of BigQuery's error envelope koala reads.
#[derive(Debug, Default, PartialEq)]
pub struct ApiError {
    pub reason: Option<String>,
    pub message: Option<String>,
}

pub fn api_error(body: &[u8]) -> ApiError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = &v["error"];
    let first = &e["errors"][0];
    ApiError {
        reason: first["reason"]
            .as_str()
            .or(e["status"].as_str())
            .map(str::to_owned),
        message: e["message"]
            .as_str()
            .or(first["message"].as_str())
            .map(str::to_owned),
    }
}

/// `bigquery answered HTTP 403 accessDenied: message`.
fn describe(status: u16, e: &ApiError) -> String {
    let mut s = format!("bigquery answered HTTP {status}");
    if let Some(r) = &e.reason {
        s.push(' ');
        s.push_str(r);
    }
    if let Some(m) = e.message.as_deref().filter(|m| !m.trim().is_empty()) {
        s.push_str(": ");
        s.extend(m.chars().filter(|c| !c.is_control()).take(200));
    }
    s
}

/// A non-2xx answer about `what` (the table, or the view being created).
pub fn classify_failure(a: &Answer, what: &str) -> SendOutcome {
    let e = api_error(&a.body);
    let reason = describe(a.status, &e);
    match (a.status, e.reason.as_deref().unwrap_or("")) {
        (401, _) => SendOutcome::DestinationDown {
            reason: format!(
                "{reason}; a freshly issued access token was refused too: check that the service account still exists and may use the scope {}",
                super::config::SCOPE
            ),
        },
        (_, "rateLimitExceeded") => SendOutcome::RetryLater {
            after: a.retry_after,
            reason,
        },
        (_, "quotaExceeded") => SendOutcome::RetryLater {
            after: Some(a.retry_after.unwrap_or(QUOTA_WAIT)),
            reason,
        },
        (_, "backendError" | "internalError") => SendOutcome::RetryLater {
            after: a.retry_after,
            reason,
        },
        (403, _) => SendOutcome::DestinationDown {
            reason: format!(
                "{reason}; the service account needs bigquery.tables.updateData on {what} (roles/bigquery.dataEditor), and table creation bigquery.tables.create"
            ),
        },
        (404, _) => SendOutcome::DestinationDown {
            reason: format!(
                "{reason}; {what} was not found: create it (see the README's schema) or set create_table = true, then resume"
            ),
        },
        _ => SendOutcome::from_status(a.class(), a.retry_after, reason),
    }
}

/// What the insert errors of one all-or-nothing request say.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// The table lacks a column koala writes (`no such field`) or wants
    /// one koala never writes (`missing required field`): every row is
    /// affected, so the destination pauses.
    SchemaDrift {
        field: Option<String>,
        message: String,
    },
    /// Rows refused for themselves (request index, reason); every other
    /// row was `stopped` (not stored, not at fault) and is sent again.
    Refused(Vec<(usize, String)>),
}

/// Reads insertErrors. A row is at fault when one of its errors has a
/// reason other than `stopped`; the reason names BigQuery's reason and
/// column and the message up to its first `:` (where BigQuery quotes the
/// value, which is never repeated).
pub fn verdict(errors: &[InsertError]) -> Verdict {
    let mut refused = Vec::new();
    for e in errors {
        for p in &e.errors {
            let m = p.message().to_ascii_lowercase();
            if m.contains("no such field") || m.contains("missing required field") {
                let field = p.location.clone().filter(|l| !l.is_empty()).or_else(|| {
                    let rest = p.message().split_once(':')?.1;
                    Some(rest.trim().trim_end_matches('.').to_owned()).filter(|f| !f.is_empty())
                });
                return Verdict::SchemaDrift {
                    field,
                    message: p.message().chars().take(200).collect(),
                };
            }
        }
        let faults: Vec<String> = e
            .errors
            .iter()
            .filter(|p| p.reason() != "stopped")
            .map(|p| {
                let mut s = if p.reason().is_empty() {
                    "error".to_owned()
                } else {
                    p.reason().to_owned()
                };
                if let Some(l) = p.location.as_deref().filter(|l| !l.is_empty()) {
                    s.push_str(&format!(" at {l}"));
                }
                let m = p.message().split(':').next().unwrap_or_default().trim();
                if !m.is_empty() {
                    s.push_str(": ");
                    s.extend(m.chars().take(150));
                }
                s
            })
            .collect();
        if !faults.is_empty() {
            refused.push((
                e.index,
                format!("bigquery refused the row: {}", faults.join("; ")),
            ));
        }
    }
    Verdict::Refused(refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(status: u16, after: Option<u64>, body: Value) -> Answer {
        Answer {
            status,
            retry_after: after.map(Duration::from_secs),
            body: bytes::Bytes::from(body.to_string()),
        }
    }

    fn envelope(code: u16, reason: &str, message: &str) -> Value {
        json!({"error": {"code": code, "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}]}})
    }

    const T: &str = "table p.d.t";

    #[test]
    fn failures_are_classified_by_reason_then_status() {
        let c = |s, after, reason: &str| {
            classify_failure(&answer(s, after, envelope(s, reason, "m")), T)
        };
        assert_eq!(
            c(403, Some(2), "rateLimitExceeded"),
            SendOutcome::RetryLater {
                after: Some(Duration::from_secs(2)),
                reason: "bigquery answered HTTP 403 rateLimitExceeded: m".into()
            }
        );
        let SendOutcome::RetryLater { after, .. } = c(403, None, "quotaExceeded") else {
            panic!()
        };
        assert_eq!(after, Some(QUOTA_WAIT));
        let SendOutcome::DestinationDown { reason } = c(403, None, "accessDenied") else {
            panic!()
        };
        assert!(
            reason.contains("accessDenied")
                && reason.contains("bigquery.tables.updateData on table p.d.t"),
            "{reason}"
        );
        let SendOutcome::DestinationDown { reason } = c(404, None, "notFound") else {
            panic!()
        };
        assert!(
            reason.contains("table p.d.t was not found") && reason.contains("create_table"),
            "{reason}"
        );
        let SendOutcome::DestinationDown { reason } = c(401, None, "authError") else {
            panic!()
        };
        assert!(reason.contains("freshly issued"), "{reason}");
        assert_eq!(c(429, Some(1), "x").class(), "retry");
        assert_eq!(c(503, None, "backendError").class(), "retry");
        assert_eq!(c(500, None, "internalError").class(), "retry");
        assert_eq!(c(502, None, "").class(), "retry");
        assert_eq!(c(400, None, "invalid").class(), "permanent");
        assert_eq!(
            classify_failure(&answer(413, None, json!("Request Entity Too Large")), T).class(),
            "permanent"
        );
        // Not JSON: the status alone.
        let html = Answer {
            status: 502,
            retry_after: None,
            body: bytes::Bytes::from_static(b"<html>"),
        };
        assert_eq!(
            classify_failure(&html, T),
            SendOutcome::RetryLater {
                after: None,
                reason: "bigquery answered HTTP 502".into()
            }
        );
    }

    fn errors(v: Value) -> Vec<InsertError> {
        insert_errors(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn insert_errors_refuse_the_bad_rows_and_resend_the_stopped() {
        assert!(
            insert_errors(b"{\"kind\":\"bigquery#tableDataInsertAllResponse\"}")
                .unwrap()
                .is_empty()
        );
        assert!(insert_errors(b"").unwrap().is_empty());
        assert!(insert_errors(b"<html>").is_err());
        let e = errors(json!({"insertErrors": [
            {"index": 0, "errors": [{"reason": "stopped", "location": "", "message": ""}]},
            {"index": 1, "errors": [{"reason": "invalid", "location": "ltv", "message": "Cannot convert value to floating point (bad value): abc"}]},
            {"index": 2, "errors": [{"reason": "stopped"}]},
        ]}));
        assert_eq!(
            verdict(&e),
            Verdict::Refused(vec![(1, "bigquery refused the row: invalid at ltv: Cannot convert value to floating point (bad value)".into())])
        );
        let only_stopped =
            errors(json!({"insertErrors": [{"index": 0, "errors": [{"reason": "stopped"}]}]}));
        assert_eq!(verdict(&only_stopped), Verdict::Refused(vec![]));
    }

    #[test]
    fn an_unknown_column_is_schema_drift() {
        let e = errors(json!({"insertErrors": [
            {"index": 0, "errors": [{"reason": "invalid", "location": "ltv", "message": "no such field: ltv."}]},
            {"index": 1, "errors": [{"reason": "stopped"}]},
        ]}));
        assert_eq!(
            verdict(&e),
            Verdict::SchemaDrift {
                field: Some("ltv".into()),
                message: "no such field: ltv.".into()
            }
        );
        let e = errors(json!({"insertErrors": [
            {"index": 0, "errors": [{"reason": "invalid", "message": "Missing required field: region."}]},
        ]}));
        let Verdict::SchemaDrift { field, .. } = verdict(&e) else {
            panic!()
        };
        assert_eq!(field.as_deref(), Some("region"));
    }
}
