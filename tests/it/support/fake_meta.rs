//! A fake Meta Graph API (customer-list Custom Audiences) on 127.0.0.1:0,
//! strict where the contract is (destination-apis §1): version in the
//! path, Bearer token, multi-key JSON payload, ≤ 10,000 rows, hashes as
//! 64 lowercase hex. It records members per audience and every `/users`
//! and `/usersreplace` request; failures and delays can be scripted.
//!
//! `usersreplace` (full replace) follows the session contract koala
//! assumes (reference §1.3, UNCONFIRMED by Meta's docs): every request
//! carries `session{session_id, batch_seq, last_batch_flag,
//! estimated_num_total}`; `batch_seq` starts at 1 and grows by 1 within a
//! session; the session's rows become the audience's whole membership when
//! the batch with `last_batch_flag: true` arrives, never before.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

pub const FAKE_META_TOKEN: &str = "fake-meta-token-0123";
pub const MAX_ROWS: usize = 10_000;
/// Multi-key schema columns Meta documents.
const KNOWN_KEYS: &[&str] = &[
    "EXTERN_ID",
    "EMAIL",
    "PHONE",
    "GEN",
    "DOBY",
    "DOBM",
    "DOBD",
    "LN",
    "FN",
    "FI",
    "CT",
    "ST",
    "ZIP",
    "MADID",
    "COUNTRY",
];
/// Columns sent in clear; every other one must be a SHA-256.
const UNHASHED_KEYS: &[&str] = &["EXTERN_ID", "MADID"];
const FILE_SOURCES: &[&str] = &[
    "USER_PROVIDED_ONLY",
    "PARTNER_PROVIDED_ONLY",
    "BOTH_USER_AND_PARTNER_PROVIDED",
];

/// One `/users` or `/usersreplace` call as the fake saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// POST (add, or replace) or DELETE (remove).
    pub method: Method,
    /// True for `/usersreplace`.
    pub replace: bool,
    /// The `session` object a replace sent (None for `/users`).
    pub session: Option<Value>,
    pub audience_id: String,
    pub schema: Vec<String>,
    /// Empty when the body was refused before its rows were read.
    pub rows: Vec<Vec<String>>,
    pub status: u16,
    pub at: Instant,
}

/// An audience made through `act_{id}/customaudiences`.
#[derive(Debug, Clone)]
pub struct CreatedAudience {
    pub id: String,
    pub ad_account_id: String,
    pub name: String,
    pub description: Option<String>,
    pub customer_file_source: Option<String>,
}

/// What the next `/users` request meets instead of normal handling.
#[derive(Debug, Clone)]
pub enum ScriptedResponse {
    /// Answer this; nothing is applied.
    Reply {
        status: u16,
        body: String,
        retry_after: Option<u64>,
    },
    /// Wait, then handle the request normally (a slow or busy Meta; past
    /// the client's timeout the request may still land, as with Meta).
    Delay(Duration),
}

impl ScriptedResponse {
    /// A Graph error envelope.
    pub fn graph_error(status: u16, code: i64, subcode: Option<i64>, message: &str) -> Self {
        ScriptedResponse::Reply {
            status,
            body: error_body(code, subcode, message, None).to_string(),
            retry_after: None,
        }
    }
    /// Code 17 / 2446079, as Meta throttles (HTTP 400, not 429).
    pub fn throttle() -> Self {
        Self::graph_error(400, 17, Some(2446079), "User request limit reached")
    }
    /// Code 613 / 1487742, the ad-account throttle.
    pub fn ad_account_throttle() -> Self {
        Self::graph_error(
            400,
            613,
            Some(1487742),
            "There have been too many calls from this ad-account. Please wait a bit and try again.",
        )
    }
    /// HTTP 500 with a body that is not Graph JSON.
    pub fn server_error() -> Self {
        ScriptedResponse::Reply {
            status: 500,
            body: "Internal Server Error".into(),
            retry_after: None,
        }
    }
    /// HTTP 429 with a plain body.
    pub fn too_many_requests() -> Self {
        ScriptedResponse::Reply {
            status: 429,
            body: "Too Many Requests".into(),
            retry_after: None,
        }
    }
    /// Code 100: invalid parameter.
    pub fn invalid_parameter() -> Self {
        Self::graph_error(400, 100, None, "Invalid parameter")
    }
    /// Code 100 / 1713230: the audience is flagged and blocks uploads.
    pub fn flagged_audience() -> Self {
        ScriptedResponse::Reply {
            status: 400,
            body: error_body(
                100,
                Some(1713230),
                "Invalid parameter",
                Some("Audience Upload Blocked"),
            )
            .to_string(),
            retry_after: None,
        }
    }
    /// Code 190 / 463: the token expired.
    pub fn expired_token() -> Self {
        Self::graph_error(
            400,
            190,
            Some(463),
            "Error validating access token: Session has expired.",
        )
    }
    pub fn delay(d: Duration) -> Self {
        ScriptedResponse::Delay(d)
    }
    /// Adds a `Retry-After: secs` header to a reply.
    pub fn with_retry_after(self, secs: u64) -> Self {
        match self {
            ScriptedResponse::Reply { status, body, .. } => ScriptedResponse::Reply {
                status,
                body,
                retry_after: Some(secs),
            },
            delay => delay,
        }
    }
}

#[derive(Default)]
struct FakeState {
    token: String,
    latency: Duration,
    script: VecDeque<ScriptedResponse>,
    /// Every request gets this Graph error code while set.
    reject_all: Option<i64>,
    /// `/users` on these audiences gets this error code while set.
    reject_audience: HashMap<String, i64>,
    /// A `/users` request holding a row with one of these keys is refused
    /// whole with code 100, as Meta refuses a batch with a malformed row.
    poisoned_rows: BTreeSet<String>,
    members: BTreeMap<String, BTreeSet<String>>,
    requests: Vec<RecordedRequest>,
    created: Vec<CreatedAudience>,
    next_id: u64,
    /// While true, `/users` requests wait (a busy destination).
    held: Option<tokio::sync::watch::Sender<bool>>,
    /// Replace sessions under way, by (audience, session_id).
    sessions: HashMap<(String, u64), ReplaceSession>,
}

/// A `usersreplace` session that has not seen its last batch yet.
#[derive(Debug, Default)]
struct ReplaceSession {
    next_seq: u64,
    rows: BTreeSet<String>,
}

type Shared = Arc<Mutex<FakeState>>;

pub struct FakeMeta {
    addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeMeta {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeMeta {
    pub async fn start() -> FakeMeta {
        let state: Shared = Arc::new(Mutex::new(FakeState {
            token: FAKE_META_TOKEN.into(),
            next_id: 23_850_000_000_000_001,
            held: Some(tokio::sync::watch::channel(false).0),
            ..Default::default()
        }));
        let app = Router::new()
            .route("/{version}/{node}/users", post(users).delete(users))
            .route("/{version}/{node}/usersreplace", post(users_replace))
            .route("/{version}/{node}/customaudiences", post(create))
            .fallback(|| async { graph_error(400, 2500, None, "Unknown path components") })
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Meta API");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake Meta API");
        });
        FakeMeta { addr, state, task }
    }

    /// A `[[destinations]]` entry for koala pointing at this fake, with
    /// fast retries; `extra` adds or overrides keys.
    pub fn destination_toml(&self, name: &str, extra: &str) -> String {
        format!(
            r#"
[[destinations]]
name = "{name}"
type = "meta_custom_audiences"
base_url = "{}"
access_token = "{FAKE_META_TOKEN}"
ad_account_id = "act_1234"
base_backoff = "20ms"
max_backoff = "200ms"
{extra}
"#,
            self.base_url()
        )
    }

    /// `http://127.0.0.1:PORT` (no version, like `https://graph.facebook.com`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// Row keys in the audience: EXTERN_ID, else EMAIL hash, else PHONE hash.
    pub fn members(&self, audience_id: &str) -> BTreeSet<String> {
        self.state()
            .members
            .get(audience_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Every `/users` and `/usersreplace` request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    /// The `/usersreplace` requests so far.
    pub fn replace_requests(&self) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|r| r.replace).collect()
    }

    /// Sets an audience's members (row keys, see [`FakeMeta::members`]):
    /// what Meta held before koala was connected.
    pub fn set_members(&self, audience_id: &str, keys: &[&str]) {
        self.state().members.insert(
            audience_id.into(),
            keys.iter().map(|k| k.to_string()).collect(),
        );
    }

    /// Replace sessions that have not had their last batch.
    pub fn open_sessions(&self) -> usize {
        self.state().sessions.len()
    }

    pub fn request_count(&self) -> usize {
        self.state().requests.len()
    }

    pub fn created_audiences(&self) -> Vec<CreatedAudience> {
        self.state().created.clone()
    }

    /// Queued: each `/users` or `/usersreplace` request takes the next one.
    /// Refuses, whole, every `/users` request carrying the row `key`.
    pub fn poison_row(&self, key: &str) {
        self.state
            .lock()
            .unwrap()
            .poisoned_rows
            .insert(key.to_owned());
    }

    pub fn push_response(&self, r: ScriptedResponse) {
        self.state().script.push_back(r);
    }

    /// The token accepted from now on.
    pub fn set_token(&self, token: &str) {
        self.state().token = token.into();
    }

    /// Added to every request before it is handled.
    pub fn set_latency(&self, d: Duration) {
        self.state().latency = d;
    }

    /// Every request (create too) fails with Graph error `code` until cleared.
    pub fn reject_all(&self, code: i64) {
        self.state().reject_all = Some(code);
    }

    /// `/users` on this audience fails with Graph error `code` until cleared.
    pub fn reject_audience(&self, audience_id: &str, code: i64) {
        self.state()
            .reject_audience
            .insert(audience_id.into(), code);
    }

    /// Makes `/users` requests wait until [`FakeMeta::release`]: the
    /// destination looks busy while work queues up behind it.
    pub fn hold(&self) {
        self.state().held.as_ref().unwrap().send_replace(true);
    }

    pub fn release(&self) {
        self.state().held.as_ref().unwrap().send_replace(false);
    }

    /// Requests that got past the gate and were answered 2xx.
    pub fn successful_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.status < 300)
            .collect()
    }

    pub fn clear_rejections(&self) {
        let mut s = self.state();
        s.reject_all = None;
        s.reject_audience.clear();
    }
}

async fn users(
    State(state): State<Shared>,
    method: Method,
    Path((version, audience_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle_users(state, method, version, audience_id, headers, body, false).await
}

async fn users_replace(
    State(state): State<Shared>,
    Path((version, audience_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle_users(
        state,
        Method::POST,
        version,
        audience_id,
        headers,
        body,
        true,
    )
    .await
}

/// `/users` (add, remove) and `/usersreplace`: same gate, script, checks
/// and payload; a replace also carries a session.
async fn handle_users(
    state: Shared,
    method: Method,
    version: String,
    audience_id: String,
    headers: HeaderMap,
    body: Bytes,
    replace: bool,
) -> Response {
    let mut gate = state.lock().unwrap().held.as_ref().unwrap().subscribe();
    while *gate.borrow_and_update() {
        if gate.changed().await.is_err() {
            break;
        }
    }
    let latency = state.lock().unwrap().latency;
    tokio::time::sleep(latency).await;
    let scripted = state.lock().unwrap().script.pop_front();
    let session_sent = if replace {
        serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("session").cloned())
    } else {
        None
    };
    let record = |schema: Vec<String>, rows: Vec<Vec<String>>, status: u16| {
        state.lock().unwrap().requests.push(RecordedRequest {
            method: method.clone(),
            replace,
            session: session_sent.clone(),
            audience_id: audience_id.clone(),
            schema,
            rows,
            status,
            at: Instant::now(),
        });
    };
    match scripted {
        Some(ScriptedResponse::Delay(d)) => tokio::time::sleep(d).await,
        Some(ScriptedResponse::Reply {
            status,
            body,
            retry_after,
        }) => {
            record(Vec::new(), Vec::new(), status);
            return reply(status, body, retry_after);
        }
        None => {}
    }
    let refused = |status: u16, code: i64, subcode: Option<i64>, message: &str| {
        record(Vec::new(), Vec::new(), status);
        graph_error(status, code, subcode, message)
    };
    if let Err((status, code, message)) = check_common(&state, &version, &headers) {
        return refused(status, code, None, message);
    }
    let rejected = state
        .lock()
        .unwrap()
        .reject_audience
        .get(&audience_id)
        .copied();
    if let Some(code) = rejected {
        return refused(400, code, None, "Rejected by the fake");
    }
    if !is_digits(&audience_id) {
        return refused(
            400,
            100,
            Some(33),
            "Unsupported request. Object does not exist or does not support this operation",
        );
    }
    let (schema, rows) = match parse_users_body(&body) {
        Ok(parsed) => parsed,
        Err(message) => return refused(400, 100, None, message),
    };
    let poisoned = {
        let s = state.lock().unwrap();
        rows.iter()
            .filter_map(|row| row_key(&schema, row))
            .any(|key| s.poisoned_rows.contains(&key))
    };
    if poisoned {
        return refused(400, 100, None, "(#100) Invalid parameter");
    }
    if replace {
        let session = match parse_session(session_sent.as_ref()) {
            Ok(session) => session,
            Err(message) => return refused(400, 100, None, message),
        };
        let outcome = apply_replace(&state, &audience_id, session, &schema, &rows);
        return match outcome {
            Ok(invalid) => {
                let received = rows.len();
                record(schema, rows, 200);
                (
                    StatusCode::OK,
                    axum::Json(json!({
                        "audience_id": audience_id,
                        "session_id": session.session_id.to_string(),
                        "num_received": received,
                        "num_invalid_entries": invalid,
                        "invalid_entry_samples": {},
                    })),
                )
                    .into_response()
            }
            Err(message) => refused(400, 100, None, message),
        };
    }
    let mut invalid = 0;
    {
        let mut s = state.lock().unwrap();
        let members = s.members.entry(audience_id.clone()).or_default();
        for row in &rows {
            match row_key(&schema, row) {
                Some(key) if method == Method::DELETE => {
                    members.remove(&key);
                }
                Some(key) => {
                    members.insert(key);
                }
                None => invalid += 1,
            }
        }
    }
    let received = rows.len();
    record(schema, rows, 200);
    let session_id = state.lock().unwrap().requests.len();
    (
        StatusCode::OK,
        axum::Json(json!({
            "audience_id": audience_id,
            "session_id": session_id.to_string(),
            "num_received": received,
            "num_invalid_entries": invalid,
            "invalid_entry_samples": {},
        })),
    )
        .into_response()
}

/// The `session` of a replace request.
#[derive(Debug, Clone, Copy)]
struct SessionSent {
    session_id: u64,
    batch_seq: u64,
    last_batch: bool,
}

fn parse_session(session: Option<&Value>) -> Result<SessionSent, &'static str> {
    let s = session
        .filter(|s| s.is_object())
        .ok_or("(#100) The parameter session is required")?;
    let session_id = s["session_id"]
        .as_u64()
        .ok_or("(#100) session.session_id must be a number")?;
    let batch_seq = s["batch_seq"]
        .as_u64()
        .filter(|n| *n >= 1)
        .ok_or("(#100) session.batch_seq must be a number from 1")?;
    let last_batch = s["last_batch_flag"]
        .as_bool()
        .ok_or("(#100) session.last_batch_flag must be a boolean")?;
    s["estimated_num_total"]
        .as_u64()
        .ok_or("(#100) session.estimated_num_total must be a number")?;
    Ok(SessionSent {
        session_id,
        batch_seq,
        last_batch,
    })
}

/// Adds the rows to the session; its last batch makes them the audience's
/// members. Returns how many rows were invalid.
fn apply_replace(
    state: &Shared,
    audience_id: &str,
    session: SessionSent,
    schema: &[String],
    rows: &[Vec<String>],
) -> Result<usize, &'static str> {
    let mut s = state.lock().unwrap();
    let key = (audience_id.to_owned(), session.session_id);
    let expected = s.sessions.get(&key).map_or(1, |open| open.next_seq);
    if session.batch_seq != expected {
        return Err(if expected == 1 {
            "(#100) A new session must start at batch_seq 1"
        } else {
            "(#100) batch_seq must follow the previous batch of the session"
        });
    }
    let open = s.sessions.entry(key.clone()).or_default();
    open.next_seq = session.batch_seq + 1;
    let mut invalid = 0;
    for row in rows {
        match row_key(schema, row) {
            Some(k) => {
                open.rows.insert(k);
            }
            None => invalid += 1,
        }
    }
    if session.last_batch {
        let done = s.sessions.remove(&key).expect("just inserted");
        s.members.insert(audience_id.to_owned(), done.rows);
    }
    Ok(invalid)
}

async fn create(
    State(state): State<Shared>,
    Path((version, account)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let latency = state.lock().unwrap().latency;
    tokio::time::sleep(latency).await;
    if let Err((status, code, message)) = check_common(&state, &version, &headers) {
        return graph_error(status, code, None, message);
    }
    let Some(ad_account_id) = account.strip_prefix("act_").filter(|a| is_digits(a)) else {
        return graph_error(
            400,
            100,
            None,
            "Invalid ad account id: expected act_<digits>",
        );
    };
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return graph_error(400, 100, None, "(#100) The parameter name is required");
    };
    let name = v["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        return graph_error(400, 100, None, "(#100) The parameter name is required");
    }
    if v["subtype"] != "CUSTOM" {
        return graph_error(400, 100, None, "(#100) subtype must be CUSTOM");
    }
    let source = v["customer_file_source"].as_str().map(str::to_owned);
    if source
        .as_deref()
        .is_some_and(|s| !FILE_SOURCES.contains(&s))
    {
        return graph_error(400, 100, None, "(#100) Invalid customer_file_source");
    }
    let mut s = state.lock().unwrap();
    let id = s.next_id.to_string();
    s.next_id += 1;
    s.members.insert(id.clone(), BTreeSet::new());
    s.created.push(CreatedAudience {
        id: id.clone(),
        ad_account_id: ad_account_id.into(),
        name: name.into(),
        description: v["description"].as_str().map(str::to_owned),
        customer_file_source: source,
    });
    (StatusCode::OK, axum::Json(json!({ "id": id }))).into_response()
}

/// Version, token and the global rejection switch: (status, code, message).
fn check_common(
    state: &Shared,
    version: &str,
    headers: &HeaderMap,
) -> Result<(), (u16, i64, &'static str)> {
    let s = state.lock().unwrap();
    if !is_version(version) {
        return Err((400, 2500, "Unknown path components"));
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    if bearer != Some(s.token.as_str()) {
        return Err((
            400,
            190,
            "Invalid OAuth access token - Cannot parse access token",
        ));
    }
    if let Some(code) = s.reject_all {
        return Err((400, code, "Rejected by the fake"));
    }
    Ok(())
}

/// `{"payload":{"schema":[…],"is_raw":true,"data":[[…],…]}}` → schema and
/// rows. A non-string cell is kept as its JSON text, which no hash
/// column accepts.
fn parse_users_body(body: &[u8]) -> Result<(Vec<String>, Vec<Vec<String>>), &'static str> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "(#100) Invalid JSON body")?;
    let payload = v
        .get("payload")
        .ok_or("(#100) The parameter payload is required")?;
    let schema: Vec<String> = payload["schema"]
        .as_array()
        .ok_or("(#100) payload.schema must be an array of keys")?
        .iter()
        .map(|k| k.as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or("(#100) payload.schema must be an array of keys")?;
    if schema.is_empty() || schema.iter().any(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        return Err("(#100) Invalid schema key");
    }
    let distinct: BTreeSet<_> = schema.iter().collect();
    if distinct.len() != schema.len() {
        return Err("(#100) Duplicate schema key");
    }
    if payload["is_raw"] != true {
        return Err("(#100) is_raw must be true for a multi-key schema");
    }
    let data = payload["data"]
        .as_array()
        .ok_or("(#100) payload.data must be an array")?;
    if data.is_empty() {
        return Err("(#100) payload.data is empty");
    }
    if data.len() > MAX_ROWS {
        return Err("(#100) Too many users: at most 10000 per request");
    }
    let mut rows = Vec::with_capacity(data.len());
    for row in data {
        let cells = row
            .as_array()
            .filter(|r| r.len() == schema.len())
            .ok_or("(#100) Each row must have one value per schema key")?;
        rows.push(
            cells
                .iter()
                .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_owned))
                .collect(),
        );
    }
    Ok((schema, rows))
}

/// The member a valid row names; None for an invalid row (a bad hash or
/// nothing at all).
fn row_key(schema: &[String], row: &[String]) -> Option<String> {
    let valid = schema
        .iter()
        .zip(row)
        .all(|(k, v)| v.is_empty() || UNHASHED_KEYS.contains(&k.as_str()) || is_sha256_hex(v));
    if !valid {
        return None;
    }
    let get = |key: &str| {
        schema
            .iter()
            .position(|k| k == key)
            .map(|i| row[i].as_str())
            .filter(|v| !v.is_empty())
    };
    get("EXTERN_ID")
        .or_else(|| get("EMAIL"))
        .or_else(|| get("PHONE"))
        .or_else(|| row.iter().map(String::as_str).find(|v| !v.is_empty()))
        .map(str::to_owned)
}

fn is_sha256_hex(v: &str) -> bool {
    v.len() == 64 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_version(v: &str) -> bool {
    v.strip_prefix('v')
        .and_then(|r| r.split_once('.'))
        .is_some_and(|(a, b)| is_digits(a) && is_digits(b))
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn error_body(code: i64, subcode: Option<i64>, message: &str, title: Option<&str>) -> Value {
    let mut e = json!({
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "AFakeTraceId",
    });
    if let Some(sc) = subcode {
        e["error_subcode"] = json!(sc);
    }
    if let Some(t) = title {
        e["error_user_title"] = json!(t);
    }
    json!({ "error": e })
}

fn graph_error(status: u16, code: i64, subcode: Option<i64>, message: &str) -> Response {
    reply(
        status,
        error_body(code, subcode, message, None).to_string(),
        None,
    )
}

fn reply(status: u16, body: String, retry_after: Option<u64>) -> Response {
    let content_type = if serde_json::from_str::<Value>(&body).is_ok() {
        "application/json"
    } else {
        "text/plain"
    };
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
        .into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(secs) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}
