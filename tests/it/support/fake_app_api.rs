//! A fake Customer.io App API (segments, membership, customer attributes,
//! one at a time and in bulk) on 127.0.0.1:0, strict where the real one
//! is: Bearer key, 10 requests per second shared by every endpoint,
//! `limit` ≤ 30000, 1–100 ids per bulk lookup. Failures can be scripted,
//! and generated segments serve a million members without storing them.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Map, Value};

pub const FAKE_APP_API_KEY: &str = "fake-app-api-key-0123";
/// Requests allowed in any one-second window, as Customer.io documents.
pub const FAKE_RATE_LIMIT: usize = 10;
pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 30_000;

/// A person in a fake segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeMember {
    pub id: Option<String>,
    pub cio_id: Option<String>,
    pub email: Option<String>,
    /// Only for attribute lookups: membership answers carry no phone.
    pub phone: Option<String>,
    /// More attributes for lookups (name, value as text).
    pub attributes: Vec<(String, String)>,
}

impl FakeMember {
    pub fn id(id: &str) -> Self {
        FakeMember {
            id: Some(id.into()),
            ..Default::default()
        }
    }
    pub fn email(email: &str) -> Self {
        FakeMember {
            email: Some(email.into()),
            ..Default::default()
        }
    }
    pub fn with_id(mut self, id: &str) -> Self {
        self.id = Some(id.into());
        self
    }
    pub fn with_email(mut self, email: &str) -> Self {
        self.email = Some(email.into());
        self
    }
    pub fn with_cio_id(mut self, cio_id: &str) -> Self {
        self.cio_id = Some(cio_id.into());
        self
    }
    pub fn with_phone(mut self, phone: &str) -> Self {
        self.phone = Some(phone.into());
        self
    }
    pub fn with_attribute(mut self, name: &str, value: &str) -> Self {
        self.attributes.push((name.into(), value.into()));
        self
    }

    /// True if any identifier equals `key`.
    fn is(&self, key: &str) -> bool {
        [&self.id, &self.cio_id, &self.email, &self.phone]
            .iter()
            .any(|f| f.as_deref() == Some(key))
    }

    fn found_by(&self, id_type: IdType, value: &str) -> bool {
        match id_type {
            IdType::Id => self.id.as_deref() == Some(value),
            IdType::Email => self
                .email
                .as_deref()
                .is_some_and(|e| e.eq_ignore_ascii_case(value)),
            // Whether the real API wants the `cio_` prefix is unconfirmed: take both.
            IdType::CioId => {
                self.cio_id.as_deref() == Some(value.strip_prefix("cio_").unwrap_or(value))
            }
            IdType::Phone => self.phone.as_deref() == Some(value),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum IdType {
    Id,
    Email,
    CioId,
    Phone,
}

/// Members `{prefix}{i}` for i in 0..count, made on demand.
struct Generated {
    count: u64,
    prefix: String,
    removed: HashSet<u64>,
    /// Lookups answer a phone, `+1415{i:07}`.
    phones: bool,
}

impl Generated {
    fn member(&self, i: u64) -> FakeMember {
        let p = &self.prefix;
        FakeMember {
            id: Some(format!("{p}{i}")),
            cio_id: Some(format!("{p}c{i}")),
            email: Some(format!("{p}{i}@example.com")),
            phone: self.phones.then(|| format!("+1415{:07}", i % 10_000_000)),
            attributes: Vec::new(),
        }
    }

    /// The index of the generated member known by `value`, if any.
    fn index_of(&self, id_type: IdType, value: &str) -> Option<u64> {
        let p = self.prefix.as_str();
        let digits = match id_type {
            IdType::Id => value.strip_prefix(p),
            IdType::Email => value
                .strip_prefix(p)
                .and_then(|v| v.strip_suffix("@example.com")),
            IdType::CioId => value
                .strip_prefix("cio_")
                .unwrap_or(value)
                .strip_prefix(p)
                .and_then(|v| v.strip_prefix('c')),
            IdType::Phone => None,
        }?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let i: u64 = digits.parse().ok()?;
        (i < self.count && !self.removed.contains(&i) && self.member(i).found_by(id_type, value))
            .then_some(i)
    }
}

/// Members sit at positions: generated ones at 0..count, explicit ones
/// after, in insertion order. A cursor is the position to resume from, so
/// changes during a scan neither repeat nor skip untouched members.
struct FakeSegment {
    name: String,
    generated: Option<Generated>,
    explicit: BTreeMap<u64, FakeMember>,
    next_position: u64,
}

impl FakeSegment {
    fn new(name: &str, generated: Option<Generated>) -> Self {
        let next_position = generated.as_ref().map_or(0, |g| g.count);
        FakeSegment {
            name: name.into(),
            generated,
            explicit: BTreeMap::new(),
            next_position,
        }
    }

    fn count(&self) -> u64 {
        let generated = self
            .generated
            .as_ref()
            .map_or(0, |g| g.count - g.removed.len() as u64);
        generated + self.explicit.len() as u64
    }

    /// Up to `limit` members from `start`, and the position after them if more remain.
    fn page(&self, start: u64, limit: usize) -> (Vec<FakeMember>, Option<u64>) {
        let mut out = Vec::with_capacity(limit.min(4096));
        if let Some(g) = &self.generated {
            for i in start..g.count {
                if g.removed.contains(&i) {
                    continue;
                }
                if out.len() == limit {
                    return (out, Some(i));
                }
                out.push(g.member(i));
            }
        }
        for (&pos, m) in self.explicit.range(start..) {
            if out.len() == limit {
                return (out, Some(pos));
            }
            out.push(m.clone());
        }
        (out, None)
    }

    fn find(&self, id_type: IdType, value: &str) -> Option<FakeMember> {
        if let Some(g) = &self.generated {
            if let Some(i) = g.index_of(id_type, value) {
                return Some(g.member(i));
            }
        }
        self.explicit
            .values()
            .find(|m| m.found_by(id_type, value))
            .cloned()
    }
}

struct Failure {
    status: StatusCode,
    retry_after: Option<u64>,
}

struct FakeState {
    api_key: String,
    segments: BTreeMap<u64, FakeSegment>,
    /// People outside every segment, for attribute lookups.
    people: Vec<FakeMember>,
    identifiers_enabled: bool,
    rate_limit: Option<usize>,
    window: VecDeque<Instant>,
    max_rate: usize,
    request_count: usize,
    rate_limited: usize,
    log: Vec<String>,
    /// Answered bulk lookups: (id_type, ids asked).
    bulk: Vec<(String, usize)>,
    single_lookups: usize,
    /// Ids lookups do not find (membership still lists them).
    unfindable: HashSet<String>,
    bulk_failures: VecDeque<StatusCode>,
    bulk_delay: Duration,
    /// Keep every request's path in `log` (off for million-member runs).
    keep_log: bool,
    failures: VecDeque<Failure>,
    pages_until_outage: Option<usize>,
    outage: bool,
    pages_served: usize,
}

type Shared = Arc<Mutex<FakeState>>;

/// The running fake. Dropping it stops the server.
pub struct FakeAppApi {
    addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAppApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeAppApi {
    pub async fn start() -> FakeAppApi {
        let state: Shared = Arc::new(Mutex::new(FakeState {
            api_key: FAKE_APP_API_KEY.into(),
            segments: BTreeMap::new(),
            people: Vec::new(),
            identifiers_enabled: true,
            rate_limit: Some(FAKE_RATE_LIMIT),
            window: VecDeque::new(),
            max_rate: 0,
            request_count: 0,
            rate_limited: 0,
            log: Vec::new(),
            bulk: Vec::new(),
            single_lookups: 0,
            unfindable: HashSet::new(),
            bulk_failures: VecDeque::new(),
            bulk_delay: Duration::ZERO,
            keep_log: true,
            failures: VecDeque::new(),
            pages_until_outage: None,
            outage: false,
            pages_served: 0,
        }));
        let app = Router::new()
            .route("/v1/segments", get(list_segments))
            .route("/v1/segments/{id}", get(segment))
            .route("/v1/segments/{id}/customer_count", get(customer_count))
            .route("/v1/segments/{id}/membership", get(membership))
            .route("/v1/customers/{id}/attributes", get(attributes))
            .route("/v1/customers/attributes", post(bulk_attributes))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
            .layer(middleware::from_fn_with_state(state.clone(), gate))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake App API");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake App API");
        });
        FakeAppApi { addr, state, task }
    }

    /// `http://127.0.0.1:PORT` (no `/v1`, like the real base URLs).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// Creates or replaces a segment holding exactly `members`.
    pub fn set_segment(&self, id: u64, name: &str, members: Vec<FakeMember>) {
        let mut seg = FakeSegment::new(name, None);
        for m in members {
            seg.explicit.insert(seg.next_position, m);
            seg.next_position += 1;
        }
        self.state().segments.insert(id, seg);
    }

    /// Creates or replaces a segment of `count` members generated on demand:
    /// id `{prefix}{i}`, cio_id `{prefix}c{i}`, email `{prefix}{i}@example.com`.
    pub fn set_generated_segment(&self, id: u64, count: u64, prefix: &str) {
        self.generated(id, count, prefix, false);
    }

    /// As [`set_generated_segment`](Self::set_generated_segment), and
    /// lookups answer each member a phone, `+1415{i:07}`.
    pub fn set_generated_segment_with_phones(&self, id: u64, count: u64, prefix: &str) {
        self.generated(id, count, prefix, true);
    }

    fn generated(&self, id: u64, count: u64, prefix: &str, phones: bool) {
        let generated = Generated {
            count,
            prefix: prefix.into(),
            removed: HashSet::new(),
            phones,
        };
        self.state().segments.insert(
            id,
            FakeSegment::new(&format!("generated {id}"), Some(generated)),
        );
    }

    pub fn remove_segment(&self, id: u64) {
        self.state().segments.remove(&id);
    }

    /// Appends a member (after every existing one, so a running scan sees it).
    pub fn add_member(&self, segment_id: u64, member: FakeMember) {
        let mut st = self.state();
        let seg = st
            .segments
            .get_mut(&segment_id)
            .expect("no such fake segment");
        seg.explicit.insert(seg.next_position, member);
        seg.next_position += 1;
    }

    /// Removes the member whose id, cio_id, email or phone is `key`; true if one was.
    pub fn remove_member(&self, segment_id: u64, key: &str) -> bool {
        let mut st = self.state();
        let seg = st
            .segments
            .get_mut(&segment_id)
            .expect("no such fake segment");
        if let Some(g) = &mut seg.generated {
            for id_type in [IdType::Id, IdType::Email, IdType::CioId] {
                if let Some(i) = g.index_of(id_type, key) {
                    g.removed.insert(i);
                    return true;
                }
            }
        }
        let before = seg.explicit.len();
        seg.explicit.retain(|_, m| !m.is(key));
        seg.explicit.len() != before
    }

    /// A person outside every segment, found by attribute lookups.
    pub fn add_person(&self, member: FakeMember) {
        self.state().people.push(member);
    }

    /// `false` answers membership with `ids` only, like a workspace without
    /// the identifiers feature.
    pub fn set_identifiers_enabled(&self, enabled: bool) {
        self.state().identifiers_enabled = enabled;
    }

    pub fn set_api_key(&self, key: &str) {
        self.state().api_key = key.into();
    }

    /// `None` turns the fake's own 429s off.
    pub fn set_rate_limit(&self, per_second: Option<usize>) {
        self.state().rate_limit = per_second;
    }

    /// The next `n` requests answer `status` (whatever they ask).
    pub fn fail_next(&self, n: usize, status: u16) {
        self.push_failures(n, status, None);
    }

    /// As [`fail_next`](Self::fail_next), with `Retry-After: secs`.
    pub fn fail_next_with_retry_after(&self, n: usize, status: u16, secs: u64) {
        self.push_failures(n, status, Some(secs));
    }

    fn push_failures(&self, n: usize, status: u16, retry_after: Option<u64>) {
        let status = StatusCode::from_u16(status).expect("an HTTP status");
        let mut st = self.state();
        st.failures.extend((0..n).map(|_| Failure {
            status,
            retry_after,
        }));
    }

    /// Serve `n` more membership pages, then answer 503 to everything until
    /// [`end_outage`](Self::end_outage).
    pub fn fail_after_pages(&self, n: usize) {
        let mut st = self.state();
        st.pages_until_outage = Some(n);
        st.outage = n == 0;
    }

    pub fn end_outage(&self) {
        let mut st = self.state();
        st.outage = false;
        st.pages_until_outage = None;
    }

    /// Lookups (single and bulk) do not find the person known by `key`
    /// (id, cio_id, email or phone), though segments still list them.
    pub fn hide_from_lookups(&self, key: &str) {
        self.state().unfindable.insert(key.into());
    }

    /// The next `n` bulk lookups that pass the gate answer `status`.
    pub fn fail_bulk_next(&self, n: usize, status: u16) {
        let status = StatusCode::from_u16(status).expect("an HTTP status");
        self.state().bulk_failures.extend((0..n).map(|_| status));
    }

    /// Bulk lookups take this long to answer (the rate window is not held).
    pub fn set_bulk_delay(&self, d: Duration) {
        self.state().bulk_delay = d;
    }

    /// `false` stops recording request paths (memory for huge runs).
    pub fn set_keep_log(&self, keep: bool) {
        self.state().keep_log = keep;
    }

    /// Bulk lookups answered 200: (id_type, number of ids asked).
    pub fn bulk_lookups(&self) -> Vec<(String, usize)> {
        self.state().bulk.clone()
    }

    /// Single lookups (`GET /v1/customers/{id}/attributes`) that reached the handler.
    pub fn single_lookups(&self) -> usize {
        self.state().single_lookups
    }

    /// Every request received, the rejected included.
    pub fn request_count(&self) -> usize {
        self.state().request_count
    }

    /// The most requests that arrived within any one second.
    pub fn max_rate_observed(&self) -> usize {
        self.state().max_rate
    }

    /// How many requests the fake's rate limit answered 429.
    pub fn rate_limited_count(&self) -> usize {
        self.state().rate_limited
    }

    /// Membership pages answered 200.
    pub fn pages_served(&self) -> usize {
        self.state().pages_served
    }

    /// Path and query of every request, as sent (still percent-encoded).
    pub fn requests(&self) -> Vec<String> {
        self.state().log.clone()
    }
}

/// Counts every request, then applies outage, scripted failures, the rate
/// limit and the key check, in that order.
async fn gate(State(state): State<Shared>, req: Request, next: Next) -> Response {
    {
        let mut st = state.lock().unwrap();
        let now = Instant::now();
        st.request_count += 1;
        if st.keep_log {
            let uri = req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
            st.log.push(uri);
        }
        while st
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            st.window.pop_front();
        }
        st.window.push_back(now);
        st.max_rate = st.max_rate.max(st.window.len());

        if st.outage {
            return error(StatusCode::SERVICE_UNAVAILABLE, "outage");
        }
        if let Some(f) = st.failures.pop_front() {
            let mut resp = error(f.status, "scripted failure");
            if let Some(secs) = f.retry_after {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            return resp;
        }
        if st.rate_limit.is_some_and(|limit| st.window.len() > limit) {
            st.rate_limited += 1;
            let mut resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                "over the 10-per-second limit",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return resp;
        }
        let expected = format!("Bearer {}", st.api_key);
        let auth = req.headers().get(header::AUTHORIZATION);
        if auth.and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
            return error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
    next.run(req).await
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"meta": {"error": message}}))).into_response()
}

fn segment_json(id: u64, seg: &FakeSegment) -> Value {
    json!({
        "id": id,
        "deduplicate_id": format!("{id}:1552341937"),
        "name": seg.name,
        "description": "",
        "state": "finished",
        "progress": null,
        "type": "manual",
        "tags": null,
        "created_at": 1552341937,
        "updated_at": 1552341937,
    })
}

async fn list_segments(State(state): State<Shared>) -> Response {
    let st = state.lock().unwrap();
    let segments: Vec<Value> = st
        .segments
        .iter()
        .map(|(id, s)| segment_json(*id, s))
        .collect();
    Json(json!({ "segments": segments })).into_response()
}

async fn segment(State(state): State<Shared>, Path(id): Path<u64>) -> Response {
    let st = state.lock().unwrap();
    match st.segments.get(&id) {
        Some(s) => Json(json!({ "segment": segment_json(id, s) })).into_response(),
        None => error(StatusCode::NOT_FOUND, "segment not found"),
    }
}

async fn customer_count(State(state): State<Shared>, Path(id): Path<u64>) -> Response {
    let st = state.lock().unwrap();
    match st.segments.get(&id) {
        Some(s) => Json(json!({ "segment_id": id, "count": s.count() })).into_response(),
        None => error(StatusCode::NOT_FOUND, "segment not found"),
    }
}

/// Opaque-looking cursors with characters a client must encode.
fn cursor(position: u64) -> String {
    format!("{position:x}+/=")
}

fn parse_cursor(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_suffix("+/=")?, 16).ok()
}

#[derive(Serialize)]
struct IdentifierRow<'a> {
    email: Option<&'a str>,
    id: Option<&'a str>,
    cio_id: Option<&'a str>,
}

async fn membership(
    State(state): State<Shared>,
    Path(id): Path<u64>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(l)) if (1..=MAX_LIMIT).contains(&l) => l,
        Some(_) => return error(StatusCode::BAD_REQUEST, "limit must be 1..=30000"),
    };
    let start = match q.get("start").filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => match parse_cursor(s) {
            Some(p) => p,
            None => return error(StatusCode::BAD_REQUEST, "invalid start"),
        },
    };
    let mut st = state.lock().unwrap();
    let Some(seg) = st.segments.get(&id) else {
        return error(StatusCode::NOT_FOUND, "segment not found");
    };
    let (members, next) = seg.page(start, limit);
    let ids: Vec<&str> = members
        .iter()
        .map(|m| m.id.as_deref().unwrap_or(""))
        .collect();
    let mut body = json!({ "ids": ids, "next": next.map(cursor).unwrap_or_default() });
    if st.identifiers_enabled {
        let rows: Vec<IdentifierRow> = members
            .iter()
            .map(|m| IdentifierRow {
                email: m.email.as_deref(),
                id: m.id.as_deref(),
                cio_id: m.cio_id.as_deref(),
            })
            .collect();
        body["identifiers"] = serde_json::to_value(rows).expect("rows serialize");
    }
    st.pages_served += 1;
    if let Some(n) = st.pages_until_outage.as_mut() {
        *n = n.saturating_sub(1);
        if *n == 0 {
            st.outage = true;
        }
    }
    Json(body).into_response()
}

/// The `id_type` asked for, or the 400 message.
fn parse_id_type(
    q: &HashMap<String, String>,
    default: Option<IdType>,
) -> Result<IdType, &'static str> {
    match (q.get("id_type").map(String::as_str), default) {
        (None, Some(d)) => Ok(d),
        (None, None) => Err("id_type is required"),
        (Some("id"), _) => Ok(IdType::Id),
        (Some("email"), _) => Ok(IdType::Email),
        (Some("cio_id"), _) => Ok(IdType::CioId),
        (Some("phone"), _) => Ok(IdType::Phone),
        (Some(_), _) => Err("invalid id_type"),
    }
}

impl FakeState {
    fn lookup(&self, id_type: IdType, id: &str) -> Option<FakeMember> {
        let found = self
            .segments
            .values()
            .find_map(|s| s.find(id_type, id))
            .or_else(|| {
                self.people
                    .iter()
                    .find(|m| m.found_by(id_type, id))
                    .cloned()
            })?;
        let hidden = [&found.id, &found.cio_id, &found.email, &found.phone]
            .iter()
            .any(|k| k.as_ref().is_some_and(|k| self.unfindable.contains(k)));
        (!hidden).then_some(found)
    }
}

/// A customer as the attribute lookups describe them.
fn customer_json(m: &FakeMember) -> Value {
    let mut attrs = Map::new();
    for (k, v) in [
        ("id", &m.id),
        ("cio_id", &m.cio_id),
        ("email", &m.email),
        ("phone", &m.phone),
    ] {
        if let Some(v) = v {
            attrs.insert(k.into(), Value::String(v.clone()));
        }
    }
    for (k, v) in &m.attributes {
        attrs.insert(k.clone(), Value::String(v.clone()));
    }
    json!({
        "id": m.id.clone().unwrap_or_default(),
        "identifiers": { "id": m.id, "email": m.email, "cio_id": m.cio_id },
        "attributes": attrs,
        "timestamps": { "created_at": 1552341937 },
        "unsubscribed": false,
        "devices": [],
    })
}

async fn attributes(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let id_type = match parse_id_type(&q, Some(IdType::Id)) {
        Ok(t) => t,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let mut st = state.lock().unwrap();
    st.single_lookups += 1;
    let Some(m) = st.lookup(id_type, &id) else {
        return error(StatusCode::NOT_FOUND, "customer not found");
    };
    Json(json!({ "customer": customer_json(&m) })).into_response()
}

/// `POST /v1/customers/attributes?id_type=…` with `{"ids": [...]}` (1–100
/// strings of that type): the customers found, each `{"customer": …}` as
/// the single lookup answers; unknown ids are left out. The real endpoint
/// takes a missing id_type as `id`; koala always sends it, so the fake
/// insists on it.
async fn bulk_attributes(
    State(state): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    let id_type = match parse_id_type(&q, None) {
        Ok(t) => t,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let ids: Vec<String> = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match v.get("ids").and_then(Value::as_array) {
            Some(list) if (1..=100).contains(&list.len()) => {
                match list.iter().map(|i| i.as_str().map(str::to_owned)).collect() {
                    Some(ids) => ids,
                    None => return error(StatusCode::BAD_REQUEST, "ids must be strings"),
                }
            }
            _ => return error(StatusCode::BAD_REQUEST, "ids must hold 1 to 100 ids"),
        },
        Err(_) => return error(StatusCode::BAD_REQUEST, "the body is not JSON"),
    };
    let delay = {
        let mut st = state.lock().unwrap();
        if let Some(status) = st.bulk_failures.pop_front() {
            return error(status, "scripted bulk failure");
        }
        st.bulk_delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut st = state.lock().unwrap();
    let customers: Vec<Value> = ids
        .iter()
        .filter_map(|id| st.lookup(id_type, id))
        .map(|m| json!({ "customer": customer_json(&m) }))
        .collect();
    let name = q.get("id_type").cloned().unwrap_or_default();
    st.bulk.push((name, ids.len()));
    Json(json!({ "customers": customers })).into_response()
}
