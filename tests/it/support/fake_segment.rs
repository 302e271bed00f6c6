//! Segment's HTTP Tracking API `/v1/batch` on 127.0.0.1:0
//! (<https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/>),
//! strict the way the documentation reads: the write key as HTTP Basic
//! user with the colon (`base64("{key}:")`) or, in Jitsu mode, as
//! `X-Write-Key` (else 401); only `POST /v1/batch` (else 404); a JSON body
//! `{"batch": […]}` (else 400); at most 500 KB and 2,500 events a request,
//! each event at most 32 KB (else 400 for the whole request — stricter than
//! Segment on the count, which it documents may be answered 200 and
//! dropped: a violation must fail loudly here); each event a
//! `track` or `identify` with a `userId` and a `messageId` under 100
//! characters (else 400). Events are deduped on `messageId` (duplicates
//! counted, not applied). Per audience key it holds the userIds whose
//! latest `Audience Entered`/`Audience Exited` track was an entry, and per
//! userId the traits identifies set. Answers can be scripted (429 with
//! Retry-After, 503, 401), optionally after applying (a lost answer).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use serde_json::{Map, Value};

pub const WRITE_KEY: &str = "seg_write_key_test_1";
pub const MAX_REQUEST_BYTES: usize = 500 * 1024;
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
pub const MAX_EVENTS: usize = 2500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Basic,
    XWriteKey,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub status: u16,
    pub bytes: usize,
    pub events: Vec<Value>,
}

#[derive(Debug, Clone, Copy)]
struct Scripted {
    status: u16,
    retry_after: Option<u64>,
    apply: bool,
}

struct State_ {
    mode: Mode,
    key: String,
    script: VecDeque<Scripted>,
    seen: HashSet<String>,
    duplicates: usize,
    rejected: Vec<(u16, String)>,
    requests: Vec<Request>,
    /// audience key → userIds whose latest audience event is Entered.
    audiences: BTreeMap<String, BTreeSet<String>>,
    /// userId → traits as identifies left them.
    traits: BTreeMap<String, Map<String, Value>>,
    /// Every applied track, in order.
    tracks: Vec<Value>,
}

type Shared = Arc<Mutex<State_>>;

pub struct FakeSegment {
    addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSegment {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeSegment {
    pub async fn start(mode: Mode) -> FakeSegment {
        let state: Shared = Arc::new(Mutex::new(State_ {
            mode,
            key: WRITE_KEY.into(),
            script: VecDeque::new(),
            seen: HashSet::new(),
            duplicates: 0,
            rejected: Vec::new(),
            requests: Vec::new(),
            audiences: BTreeMap::new(),
            traits: BTreeMap::new(),
            tracks: Vec::new(),
        }));
        let app = Router::new()
            .fallback(route)
            // Read bigger bodies than allowed, to answer them 400 as Segment does.
            .layer(DefaultBodyLimit::max(8 * 1024 * 1024))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake segment");
        });
        FakeSegment { addr, state, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `[[destinations]]` table for this fake, short backoffs.
    pub fn destination_toml(&self, name: &str, extra: &str) -> String {
        let auth = match self.state().mode {
            Mode::Basic => "basic",
            Mode::XWriteKey => "x_write_key",
        };
        format!(
            r#"
[[destinations]]
name = "{name}"
type = "segment"
base_url = "{}"
allow_http = true
write_key = "{WRITE_KEY}"
auth = "{auth}"
request_timeout = "2s"
base_backoff = "20ms"
max_backoff = "200ms"
{extra}
"#,
            self.base_url()
        )
    }

    fn state(&self) -> MutexGuard<'_, State_> {
        self.state.lock().unwrap()
    }

    pub fn push(&self, status: u16, retry_after: Option<u64>) {
        self.state().script.push_back(Scripted {
            status,
            retry_after,
            apply: false,
        });
    }

    /// The next request is applied, then answered `status`.
    pub fn push_after_applying(&self, status: u16) {
        self.state().script.push_back(Scripted {
            status,
            retry_after: None,
            apply: true,
        });
    }

    pub fn members(&self, audience_key: &str) -> BTreeSet<String> {
        self.state()
            .audiences
            .get(audience_key)
            .cloned()
            .unwrap_or_default()
    }

    pub fn traits(&self, user_id: &str) -> Option<Map<String, Value>> {
        self.state().traits.get(user_id).cloned()
    }

    pub fn tracks(&self) -> Vec<Value> {
        self.state().tracks.clone()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state().requests.clone()
    }

    pub fn duplicates(&self) -> usize {
        self.state().duplicates
    }

    /// Requests refused by the contract (status, why).
    pub fn rejected(&self) -> Vec<(u16, String)> {
        self.state().rejected.clone()
    }
}

fn authorized(s: &State_, headers: &HeaderMap) -> bool {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match s.mode {
        Mode::Basic => {
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{}:", s.key))
            );
            h("authorization") == Some(expected.as_str())
        }
        Mode::XWriteKey => h("x-write-key") == Some(s.key.as_str()),
    }
}

/// The contract's checks of a readable request: the events, or why not.
fn validate(body: &[u8]) -> Result<Vec<Value>, String> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(format!("request of {} bytes over 500 KB", body.len()));
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| "invalid JSON".to_owned())?;
    let events = v["batch"]
        .as_array()
        .ok_or_else(|| "no batch array".to_owned())?
        .clone();
    if events.len() > MAX_EVENTS {
        return Err(format!("{} events over 2,500", events.len()));
    }
    for e in &events {
        let size = serde_json::to_vec(e).unwrap().len();
        if size > MAX_EVENT_BYTES {
            return Err(format!("an event of {size} bytes over 32 KB"));
        }
        if !matches!(e["type"].as_str(), Some("track" | "identify")) {
            return Err("event type not track/identify".into());
        }
        if e["userId"].as_str().is_none_or(str::is_empty) {
            return Err("an event without userId".into());
        }
        match e["messageId"].as_str() {
            Some(m) if !m.is_empty() && m.len() < 100 => {}
            _ => return Err("messageId missing or 100+ characters".into()),
        }
        if let Some(t) = e.get("timestamp") {
            let ok = t
                .as_str()
                .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok());
            if !ok {
                return Err("timestamp not RFC 3339".into());
            }
        }
    }
    Ok(events)
}

fn apply(s: &mut State_, events: &[Value]) {
    for e in events {
        let id = e["messageId"].as_str().unwrap().to_owned();
        if !s.seen.insert(id) {
            s.duplicates += 1;
            continue;
        }
        let user = e["userId"].as_str().unwrap().to_owned();
        match e["type"].as_str() {
            Some("track") => {
                let key = e["properties"]["audience_key"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let members = s.audiences.entry(key).or_default();
                match e["event"].as_str() {
                    Some("Audience Entered") => {
                        members.insert(user);
                    }
                    Some("Audience Exited") => {
                        members.remove(&user);
                    }
                    _ => {}
                }
                s.tracks.push(e.clone());
            }
            Some("identify") => {
                let traits = s.traits.entry(user).or_default();
                for (k, v) in e["traits"].as_object().into_iter().flatten() {
                    traits.insert(k.clone(), v.clone());
                }
            }
            _ => {}
        }
    }
}

async fn route(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = state.lock().unwrap();
    let refuse = |s: &mut State_, status: u16, why: String| {
        s.rejected.push((status, why.clone()));
        s.requests.push(Request {
            status,
            bytes: body.len(),
            events: vec![],
        });
        (StatusCode::from_u16(status).unwrap(), why).into_response()
    };
    if method != Method::POST || uri.path() != "/v1/batch" {
        return refuse(&mut s, 404, format!("no route {method} {}", uri.path()));
    }
    if !authorized(&s, &headers) {
        return refuse(&mut s, 401, "Invalid write key".into());
    }
    let events = match validate(&body) {
        Ok(e) => e,
        Err(why) => return refuse(&mut s, 400, why),
    };
    let record = |s: &mut State_, status: u16| {
        s.requests.push(Request {
            status,
            bytes: body.len(),
            events: events.clone(),
        })
    };
    if let Some(sc) = s.script.pop_front() {
        if sc.apply {
            apply(&mut s, &events);
        }
        record(&mut s, sc.status);
        let mut r = (StatusCode::from_u16(sc.status).unwrap(), "scripted").into_response();
        if let Some(after) = sc.retry_after {
            r.headers_mut()
                .insert("retry-after", after.to_string().parse().unwrap());
        }
        return r;
    }
    apply(&mut s, &events);
    record(&mut s, 200);
    (StatusCode::OK, r#"{"success":true}"#).into_response()
}
