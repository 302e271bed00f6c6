//! A fake TikTok API for Business (audience segment API, v1.3) on
//! 127.0.0.1:0, strict where koala's reading of the contract is:
//! `Access-Token: <token>` (a `Bearer ` prefix is refused), every answer
//! HTTP 200 with `code` (0 = OK) and `message`, `POST
//! /open_api/v1.3/segment/audience/` (create) and `/segment/mapping/`
//! (positional `batch_data` against `id_schema`, `{}` for a missing id,
//! hashes 64 lowercase hex, ≤ 1,000 rows — koala's assumed limit, TikTok's
//! is UNCONFIRMED). Members are held per audience; throttles, auth
//! failures and a poisoned id (code 40002 for the whole request) can be
//! scripted. The remove action is koala's assumption, `delete`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

pub const TOKEN: &str = "fake-tiktok-access-token-0123";
pub const ADVERTISER: &str = "7001234567890";
pub const MAX_ROWS: usize = 1000;
const ID_TYPES: &[&str] = &[
    "EMAIL_SHA256",
    "PHONE_SHA256",
    "IDFA_SHA256",
    "GAID_SHA256",
    "AAID_SHA256",
];

#[derive(Debug, Clone)]
pub struct RecordedMapping {
    pub action: String,
    pub id_schema: Vec<String>,
    pub rows: usize,
    /// The code answered.
    pub code: i64,
    /// Member keys (each row's first id) of an accepted request.
    pub members: Vec<String>,
    pub at: std::time::Instant,
}

#[derive(Debug, Clone)]
pub struct CreatedAudience {
    pub id: String,
    pub name: String,
    pub id_type: String,
}

struct FakeState {
    /// While true, member requests wait (a busy platform).
    held: tokio::sync::watch::Sender<bool>,
    script: VecDeque<(u16, Value)>,
    poisoned: BTreeSet<String>,
    members: BTreeMap<String, BTreeSet<String>>,
    mappings: Vec<RecordedMapping>,
    created: Vec<CreatedAudience>,
    next_id: u64,
}

type Shared = Arc<Mutex<FakeState>>;

pub struct FakeTiktok {
    addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeTiktok {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeTiktok {
    pub async fn start() -> FakeTiktok {
        let state: Shared = Arc::new(Mutex::new(FakeState {
            held: tokio::sync::watch::channel(false).0,
            script: VecDeque::new(),
            poisoned: BTreeSet::new(),
            members: BTreeMap::new(),
            mappings: Vec::new(),
            created: Vec::new(),
            next_id: 1_780_000_001,
        }));
        let app = Router::new().fallback(route).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake TikTok API");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake TikTok API");
        });
        FakeTiktok { addr, state, task }
    }

    /// `http://127.0.0.1:PORT/open_api/v1.3`, like TikTok's base.
    pub fn base_url(&self) -> String {
        format!("http://{}/open_api/v1.3", self.addr)
    }

    pub fn destination_toml(&self, name: &str, extra: &str) -> String {
        // A short timeout unless the test sets its own.
        let timeout = if extra.contains("request_timeout") {
            ""
        } else {
            "request_timeout = \"2s\"\n"
        };
        format!(
            r#"
[[destinations]]
name = "{name}"
type = "tiktok_audiences"
base_url = "{}"
access_token = "{TOKEN}"
advertiser_id = "{ADVERTISER}"
{timeout}base_backoff = "20ms"
max_backoff = "200ms"
{extra}
"#,
            self.base_url()
        )
    }

    /// Member requests wait until [`Self::release`].
    pub fn hold(&self) {
        self.state().held.send_replace(true);
    }

    pub fn release(&self) {
        self.state().held.send_replace(false);
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// Member keys (first id's hash) in the audience.
    pub fn members(&self, audience: &str) -> BTreeSet<String> {
        self.state()
            .members
            .get(audience)
            .cloned()
            .unwrap_or_default()
    }

    pub fn mappings(&self) -> Vec<RecordedMapping> {
        self.state().mappings.clone()
    }

    pub fn created(&self) -> Vec<CreatedAudience> {
        self.state().created.clone()
    }

    /// The next mapping request is answered HTTP 200 with this code.
    pub fn push_code(&self, code: i64, message: &str) {
        self.state().script.push_back((
            200,
            json!({"code": code, "message": message, "request_id": "fake", "data": {}}),
        ));
    }

    /// The next mapping request gets this HTTP status and body.
    pub fn push_reply(&self, status: u16, body: Value) {
        self.state().script.push_back((status, body));
    }

    pub fn poison(&self, hash: &str) {
        self.state().poisoned.insert(hash.to_owned());
    }
}

async fn route(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if uri.path().contains("audienceMembers:") || uri.path().ends_with("/segment/mapping/") {
        let mut gate = state.lock().unwrap().held.subscribe();
        while *gate.borrow_and_update() {
            if gate.changed().await.is_err() {
                break;
            }
        }
    }
    let authorized = headers
        .get("Access-Token")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|t| t == TOKEN);
    if !authorized {
        return ok(
            40105,
            "Access token is incorrect or has been revoked.",
            json!({}),
        );
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match (method.as_str(), uri.path()) {
        ("POST", "/open_api/v1.3/segment/mapping/") => mapping(&state, &v),
        ("POST", "/open_api/v1.3/segment/audience/") => create(&state, &v),
        _ => (StatusCode::NOT_FOUND, "404 page not found").into_response(),
    }
}

fn mapping(state: &Shared, v: &Value) -> Response {
    let mut s = state.lock().unwrap();
    let action = v["action"].as_str().unwrap_or_default().to_owned();
    let schema: Vec<String> = v["id_schema"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let rows = v["batch_data"].as_array().cloned().unwrap_or_default();
    let record = |s: &mut FakeState, code: i64, members: Vec<String>| {
        s.mappings.push(RecordedMapping {
            action: action.clone(),
            id_schema: schema.clone(),
            rows: rows.len(),
            code,
            members,
            at: std::time::Instant::now(),
        })
    };
    if let Some((status, body)) = s.script.pop_front() {
        record(&mut s, body["code"].as_i64().unwrap_or(-1), Vec::new());
        return reply(status, body);
    }
    let checked = check_mapping(v, &action, &schema, &rows);
    let keys = match checked {
        Ok(keys) => keys,
        Err(message) => {
            record(&mut s, 40002, Vec::new());
            return ok(40002, &message, json!({}));
        }
    };
    if keys.iter().any(|(k, _)| s.poisoned.contains(k)) {
        record(&mut s, 40002, Vec::new());
        return ok(40002, "Invalid parameters: batch_data", json!({}));
    }
    let accepted: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
    for (k, audiences) in keys {
        for a in audiences {
            let members = s.members.entry(a).or_default();
            if action == "add" {
                members.insert(k.clone());
            } else {
                members.remove(&k);
            }
        }
    }
    record(&mut s, 0, accepted);
    ok(0, "OK", json!({}))
}

/// (member key, audience ids) per row, or a message naming the field.
fn check_mapping(
    v: &Value,
    action: &str,
    schema: &[String],
    rows: &[Value],
) -> Result<Vec<(String, Vec<String>)>, String> {
    if v["advertiser_ids"] != json!([ADVERTISER]) {
        return Err("advertiser_ids: no permission for these advertisers".into());
    }
    if !matches!(action, "add" | "delete") {
        return Err(format!("action: unsupported action {action:?}"));
    }
    if schema.is_empty()
        || schema.iter().any(|t| !ID_TYPES.contains(&t.as_str()))
        || schema.iter().collect::<BTreeSet<_>>().len() != schema.len()
    {
        return Err("id_schema: invalid".into());
    }
    if rows.is_empty() || rows.len() > MAX_ROWS {
        return Err(format!("batch_data: between 1 and {MAX_ROWS} rows"));
    }
    let mut out = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let cells = row
            .as_array()
            .filter(|c| c.len() == schema.len())
            .ok_or(format!("batch_data[{i}]: one cell per id_schema entry"))?;
        let mut key = None;
        let mut audiences = Vec::new();
        for (j, cell) in cells.iter().enumerate() {
            let o = cell
                .as_object()
                .ok_or(format!("batch_data[{i}][{j}]: an object"))?;
            if o.is_empty() {
                continue;
            }
            let id = o["id"]
                .as_str()
                .filter(|h| is_sha256_hex(h))
                .ok_or(format!("batch_data[{i}][{j}].id: not a hex SHA-256"))?;
            let auds: Vec<String> = o
                .get("audience_ids")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if auds.is_empty() {
                return Err(format!("batch_data[{i}][{j}].audience_ids: required"));
            }
            key.get_or_insert(id.to_owned());
            audiences = auds;
        }
        let key = key.ok_or(format!("batch_data[{i}]: no id"))?;
        out.push((key, audiences));
    }
    Ok(out)
}

fn create(state: &Shared, v: &Value) -> Response {
    let mut s = state.lock().unwrap();
    let name = v["custom_audience_name"].as_str().unwrap_or_default();
    if name.is_empty() || v["action"] != "create" || v["advertiser_id"] != ADVERTISER {
        return ok(40002, "Invalid parameters", json!({}));
    }
    let id_type = v["id_type"].as_str().unwrap_or_default();
    if !ID_TYPES.contains(&id_type) {
        return ok(40002, "id_type: invalid", json!({}));
    }
    let id = s.next_id.to_string();
    s.next_id += 1;
    s.created.push(CreatedAudience {
        id: id.clone(),
        name: name.into(),
        id_type: id_type.into(),
    });
    s.members.insert(id.clone(), BTreeSet::new());
    ok(0, "OK", json!({ "audience_id": id }))
}

fn is_sha256_hex(v: &str) -> bool {
    v.len() == 64 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// TikTok's answer shape: HTTP 200 whatever the code.
fn ok(code: i64, message: &str, data: Value) -> Response {
    reply(
        200,
        json!({"code": code, "message": message, "request_id": "fake-req", "data": data}),
    )
}

fn reply(status: u16, body: Value) -> Response {
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body.to_string(),
    )
        .into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
