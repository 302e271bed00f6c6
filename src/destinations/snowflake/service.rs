//! Submits statements, follows the ones still running, and classifies the
//! answers (<https://docs.snowflake.com/en/developer-guide/sql-api/handling-responses>,
//! <https://docs.snowflake.com/en/developer-guide/sql-api/handling-errors>):
//!
//! - 200: executed.
//! - 202: still running: `GET /api/v2/statements/{statementHandle}` every
//!   `poll_interval` until it answers otherwise or `request_timeout` has
//!   passed since the submission; then retry later — resubmitted with the
//!   same `requestId` and `retry=true`, Snowflake answers the original
//!   statement's outcome rather than executing it again.
//! - 408 (the statement ran past `statement_timeout` and was cancelled),
//!   429, 5xx, transport failures: retry later, after `Retry-After` when
//!   given. A cancelled statement is sent again under a new request id
//!   (derived from its content and the number of cancellations), in case
//!   Snowflake would answer the old one with the cancellation.
//! - 422 (the statement failed): a missing object, an invalid identifier,
//!   no usable warehouse or a missing privilege pauses the destination
//!   with Snowflake's words (they name the object, never a value); any
//!   other SQL error refuses the batch, which the engine splits until the
//!   bad rows are alone. Such messages may quote a value, so quoted text
//!   is left out of the reason.
//! - 401: the JWT is signed anew once and the request sent again; a second
//!   401 pauses. 403 pauses. 404 pauses (a wrong account or `base_url`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::auth::KeyPairAuth;
use super::request::{self, Context};
use crate::destinations::SendOutcome;
use crate::outbound::{Answer, StatusClass};
use crate::secret::Secret;

/// Request ids remembered as submitted (for `retry=true`); older ones are
/// forgotten first. A restart forgets them all: a statement sent again
/// then goes without `retry=true`, and executing it twice is harmless
/// (see the encoder's guard).
const REMEMBERED_REQUEST_IDS: usize = 10_000;

pub struct Service {
    client: reqwest::Client,
    base: String,
    auth: KeyPairAuth,
    user: String,
    ctx: Context,
    poll_interval: Duration,
    patience: Duration,
    submitted: Mutex<(HashSet<uuid::Uuid>, VecDeque<uuid::Uuid>)>,
    /// Statements Snowflake cancelled (408), by their content's request
    /// id: how many times. Such a statement is sent again under a request
    /// id derived from both, so a resubmission is not answered with the
    /// cancellation. Forgotten on restart (the next 408 counts anew).
    cancelled: Mutex<HashMap<uuid::Uuid, u32>>,
}

/// What the SQL API says in a `QueryStatus` or `QueryFailureStatus`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    sql_state: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    statement_handle: Option<String>,
}

impl Status {
    fn of(a: &Answer) -> Status {
        serde_json::from_slice(&a.body).unwrap_or_default()
    }
}

impl Service {
    pub fn new(
        base: String,
        auth: KeyPairAuth,
        user: &str,
        ctx: Context,
        poll_interval: Duration,
        request_timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Service {
            client: crate::outbound::client(request_timeout)?,
            base,
            auth,
            user: user.to_ascii_uppercase(),
            ctx,
            poll_interval,
            patience: request_timeout,
            submitted: Mutex::new((HashSet::new(), VecDeque::new())),
            cancelled: Mutex::new(HashMap::new()),
        })
    }

    /// True when `id` was submitted before (and remembers it now).
    fn seen(&self, id: uuid::Uuid) -> bool {
        let mut s = self.submitted.lock().expect("request ids");
        if s.0.contains(&id) {
            return true;
        }
        s.0.insert(id);
        s.1.push_back(id);
        if s.1.len() > REMEMBERED_REQUEST_IDS {
            if let Some(old) = s.1.pop_front() {
                s.0.remove(&old);
            }
        }
        false
    }

    /// The request id to submit the statement of `content_id` under.
    fn request_id(&self, content_id: uuid::Uuid) -> uuid::Uuid {
        let times = self
            .cancelled
            .lock()
            .expect("cancelled")
            .get(&content_id)
            .copied()
            .unwrap_or(0);
        if times == 0 {
            return content_id;
        }
        let mut h = Sha256::new();
        h.update(content_id.as_bytes());
        h.update(times.to_be_bytes());
        let digest = h.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }

    fn note_cancelled(&self, content_id: uuid::Uuid) {
        let mut c = self.cancelled.lock().expect("cancelled");
        if c.len() > REMEMBERED_REQUEST_IDS {
            c.clear();
        }
        *c.entry(content_id).or_default() += 1;
    }

    fn token(&self, refused: Option<&Secret>) -> Result<Secret, SendOutcome> {
        self.auth
            .token(refused)
            .map_err(|reason| SendOutcome::DestinationDown {
                reason: format!("snowflake: {reason}"),
            })
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: url::Url,
        token: &Secret,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, url)
            .header(AUTHORIZATION, format!("Bearer {}", token.expose()))
            .header("X-Snowflake-Authorization-Token-Type", "KEYPAIR_JWT")
            .header(ACCEPT, "application/json")
    }

    /// Sends a request built by `build` with a token; on 401 signs a new
    /// token once and sends it again.
    async fn send_authorized(
        &self,
        build: impl Fn(&Secret) -> reqwest::RequestBuilder,
    ) -> Result<Answer, SendOutcome> {
        let mut token = self.token(None)?;
        let mut resigned = false;
        loop {
            let answer = crate::outbound::send(build(&token))
                .await
                .map_err(|e| SendOutcome::transport("snowflake", &e))?;
            if answer.status == 401 && !resigned {
                token = self.token(Some(&token))?;
                resigned = true;
                continue;
            }
            return Ok(answer);
        }
    }

    /// Executes one statement whose content makes `content_id` (its
    /// request id unless Snowflake cancelled it before): `Ok` once
    /// Snowflake says it executed.
    pub async fn execute(
        &self,
        sql: &str,
        bindings: Option<serde_json::Value>,
        content_id: uuid::Uuid,
    ) -> Result<(), SendOutcome> {
        self.run(sql, bindings, content_id).await.map(|_| ())
    }

    /// Runs a read-only statement under a fresh request id and reads its
    /// result set: the rows of the first partition, each cell by column
    /// name (SQL NULL as `None`). Submitted, followed and classified as
    /// every statement is.
    pub async fn query(
        &self,
        sql: &str,
        bindings: serde_json::Value,
    ) -> Result<Vec<HashMap<String, Option<String>>>, SendOutcome> {
        let a = self.run(sql, Some(bindings), uuid::Uuid::new_v4()).await?;
        result_rows(&a.body).map_err(|why| SendOutcome::RetryLater {
            after: None,
            reason: format!("snowflake answered HTTP {} but {why}", a.status),
        })
    }

    /// Submits, polls while 202, classifies; the answer that said it ran.
    async fn run(
        &self,
        sql: &str,
        bindings: Option<serde_json::Value>,
        content_id: uuid::Uuid,
    ) -> Result<Answer, SendOutcome> {
        let started = Instant::now();
        let request_id = self.request_id(content_id);
        let body =
            serde_json::to_vec(&request::body(sql, bindings, &self.ctx)).expect("serializable");
        let retry = self.seen(request_id);
        let url = request::submit_url(&self.base, &request_id, retry).map_err(|e| {
            SendOutcome::DestinationDown {
                reason: format!("snowflake: {e}"),
            }
        })?;
        let answer = self
            .send_authorized(|token| {
                self.request(reqwest::Method::POST, url.clone(), token)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await?;
        let mut answer = answer;
        loop {
            if answer.status == 408 {
                self.note_cancelled(content_id);
            }
            if answer.status != 202 {
                self.classify(&answer)?;
                return Ok(answer);
            }
            let handle = Status::of(&answer).statement_handle.unwrap_or_default();
            let Some(status_url) = request::status_url(&self.base, &handle) else {
                return Err(SendOutcome::RetryLater {
                    after: None,
                    reason: "snowflake answered 202 without a usable statementHandle".into(),
                });
            };
            if started.elapsed() + self.poll_interval > self.patience {
                return Err(SendOutcome::RetryLater {
                    after: None,
                    reason: format!(
                        "snowflake statement {handle} still running after {:?}; it is resubmitted with the same requestId, which Snowflake answers with its outcome instead of running it again",
                        self.patience
                    ),
                });
            }
            tokio::time::sleep(self.poll_interval).await;
            answer = self
                .send_authorized(|token| {
                    self.request(reqwest::Method::GET, status_url.clone(), token)
                })
                .await?;
        }
    }

    fn classify(&self, a: &Answer) -> Result<(), SendOutcome> {
        classify(a, &self.user, self.auth.fingerprint(), self.patience)
    }
}

/// The rows of a `ResultSet` (<https://docs.snowflake.com/en/developer-guide/sql-api/handling-responses>):
/// `data` holds the first partition's rows as arrays of strings (or
/// null), in the order of `resultSetMetaData.rowType`'s names. A result
/// in more than one partition is refused: koala's queries read a table's
/// columns, far fewer rows than a partition holds.
pub fn result_rows(body: &[u8]) -> Result<Vec<HashMap<String, Option<String>>>, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ResultSet {
        result_set_meta_data: Meta,
        #[serde(default)]
        data: Vec<Vec<Option<String>>>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        row_type: Vec<RowType>,
        #[serde(default)]
        partition_info: Vec<serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct RowType {
        name: String,
    }
    let r: ResultSet =
        serde_json::from_slice(body).map_err(|_| "its body is not a result set".to_owned())?;
    if r.result_set_meta_data.partition_info.len() > 1 {
        return Err("the result came in more than one partition, which koala does not read".into());
    }
    let names: Vec<String> = r
        .result_set_meta_data
        .row_type
        .into_iter()
        .map(|t| t.name.to_ascii_uppercase())
        .collect();
    Ok(r.data
        .into_iter()
        .map(|row| names.iter().cloned().zip(row).collect())
        .collect())
}

/// Snowflake's error codes (and words) for a statement that no row can
/// fix: a missing database, schema, table or column, no warehouse, a
/// missing privilege. UNCONFIRMED beyond 002003 and 000904: the list is
/// read from Snowflake's messages, not from a documented table.
fn schema_problem(s: &Status) -> bool {
    let code = s.code.as_deref().unwrap_or_default();
    let message = s
        .message
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    matches!(
        code,
        "002003" | "000904" | "002043" | "000606" | "090105" | "090106" | "003001"
    ) || [
        "does not exist",
        "invalid identifier",
        "not authorized",
        "no active warehouse",
        "insufficient privileges",
    ]
    .iter()
    .any(|w| message.contains(w))
}

/// Text with every `'…'` quotation replaced by `'…'`: Snowflake's
/// messages quote values (`String '…' is too long`), which must not reach
/// a dead letter.
fn without_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for c in text.chars() {
        if c == '\'' {
            if !inside {
                out.push_str("'…'");
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

fn describe(s: &Status, keep_quotes: bool) -> String {
    let message: String = s
        .message
        .as_deref()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    let message = if keep_quotes {
        message
    } else {
        without_quoted(&message)
    };
    match (s.code.as_deref(), s.sql_state.as_deref()) {
        (Some(code), Some(state)) => format!("{code} ({state}): {message}"),
        (Some(code), None) => format!("{code}: {message}"),
        _ => message,
    }
}

pub fn classify(
    a: &Answer,
    user: &str,
    fingerprint: &str,
    patience: Duration,
) -> Result<(), SendOutcome> {
    match a.status {
        200 => Ok(()),
        422 => {
            let s = Status::of(a);
            if schema_problem(&s) {
                Err(SendOutcome::DestinationDown {
                    reason: format!(
                        "snowflake cannot run koala's statement: {} (check that database, schema, warehouse and table exist and the role may use them, and that the table has a column for every mapped field; see the README's Snowflake section), then resume",
                        describe(&s, true)
                    ),
                })
            } else {
                Err(SendOutcome::Permanent {
                    reason: format!("snowflake refused the statement: {}", describe(&s, false)),
                })
            }
        }
        408 => Err(SendOutcome::RetryLater {
            after: a.retry_after,
            reason: format!(
                "snowflake cancelled the statement: it ran longer than statement_timeout ({})",
                describe(&Status::of(a), false)
            ),
        }),
        401 => Err(SendOutcome::DestinationDown {
            reason: format!(
                "{} (the key-pair JWT was refused twice: check that user {user} has RSA_PUBLIC_KEY set to the key with fingerprint {fingerprint}, and account; then resume)",
                a.describe("snowflake")
            ),
        }),
        403 => Err(SendOutcome::DestinationDown {
            reason: format!(
                "{} (user {user} may not use the SQL API here: check network policies and the role)",
                a.describe("snowflake")
            ),
        }),
        404 => Err(SendOutcome::DestinationDown {
            reason: format!("{} (check account and base_url)", a.describe("snowflake")),
        }),
        202 => Err(SendOutcome::RetryLater {
            after: None,
            reason: format!("snowflake statement still running after {patience:?}"),
        }),
        _ => {
            let class = a.class();
            let reason = a.describe("snowflake");
            Err(match class {
                StatusClass::Success => SendOutcome::RetryLater {
                    after: None,
                    reason: format!("{reason} (an answer the SQL API does not document)"),
                },
                _ => SendOutcome::from_status(class, a.retry_after, reason),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, after: Option<u64>, body: &str) -> Answer {
        Answer {
            status,
            retry_after: after.map(Duration::from_secs),
            body: bytes::Bytes::from(body.to_owned()),
        }
    }

    fn outcome(a: Answer) -> SendOutcome {
        classify(&a, "KOALA", "SHA256:abc=", Duration::from_secs(60)).unwrap_err()
    }

    #[test]
    fn a_result_set_is_read_by_column_name() {
        let body = r#"{"resultSetMetaData": {"numRows": 2, "format": "jsonv2",
            "rowType": [{"name": "COLUMN_NAME", "type": "text"}, {"name": "DATA_TYPE", "type": "text"}],
            "partitionInfo": [{"rowCount": 2, "uncompressedSize": 40}]},
            "data": [["AUDIENCE", "TEXT"], ["LTV", null]], "code": "090001"}"#;
        let rows = result_rows(body.as_bytes()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["COLUMN_NAME"].as_deref(), Some("AUDIENCE"));
        assert_eq!(rows[1]["DATA_TYPE"], None);
        assert!(result_rows(b"{}").is_err());
        let split = body.replace(
            r#"[{"rowCount": 2, "uncompressedSize": 40}]"#,
            r#"[{"rowCount": 1}, {"rowCount": 1}]"#,
        );
        assert!(result_rows(split.as_bytes())
            .unwrap_err()
            .contains("partition"));
    }

    #[test]
    fn answers_fall_into_outcomes() {
        assert!(classify(&answer(200, None, "{}"), "K", "f", Duration::ZERO).is_ok());
        assert_eq!(
            outcome(answer(429, Some(3), "")),
            SendOutcome::RetryLater {
                after: Some(Duration::from_secs(3)),
                reason: "snowflake answered HTTP 429".into()
            }
        );
        for s in [500, 503, 504] {
            assert_eq!(outcome(answer(s, None, "")).class(), "retry");
        }
        assert_eq!(outcome(answer(408, None, r#"{"code":"000630","message":"Statement reached its statement or warehouse timeout"}"#)).class(), "retry");
        let SendOutcome::DestinationDown { reason } = outcome(answer(
            422,
            None,
            r#"{"code":"000904","sqlState":"42000","message":"SQL compilation error: error line 1 at position 7\ninvalid identifier 'S.LTV'","statementHandle":"01"}"#,
        )) else {
            panic!()
        };
        assert!(
            reason.contains("000904 (42000)") && reason.contains("'S.LTV'"),
            "{reason}"
        );
        let SendOutcome::DestinationDown { reason } = outcome(answer(
            422,
            None,
            r#"{"code":"002003","sqlState":"42S02","message":"SQL compilation error:\nObject 'KOALA.PUBLIC.T' does not exist or not authorized."}"#,
        )) else {
            panic!()
        };
        assert!(reason.contains("KOALA.PUBLIC.T"), "{reason}");
        let SendOutcome::Permanent { reason } = outcome(answer(
            422,
            None,
            r#"{"code":"100078","sqlState":"22000","message":"String 'ann@example.com' is too long and would be truncated"}"#,
        )) else {
            panic!()
        };
        assert!(!reason.contains("ann@"), "{reason}");
        assert!(reason.contains("String '…' is too long"), "{reason}");
        for (s, word) in [
            (401, "RSA_PUBLIC_KEY"),
            (403, "network policies"),
            (404, "base_url"),
        ] {
            let SendOutcome::DestinationDown { reason } = outcome(answer(s, None, "")) else {
                panic!("{s}")
            };
            assert!(reason.contains(word), "{reason}");
        }
        assert_eq!(outcome(answer(400, None, "bad")).class(), "permanent");
    }
}
