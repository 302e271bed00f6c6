//! A fake Google Data Manager API and OAuth token endpoint on
//! 127.0.0.1:0, strict where the documented contract is
//! (https://developers.google.com/data-manager/api/reference/rest/v1):
//! Bearer access tokens it issued itself (`/token`, refresh-token grant,
//! tokens that expire or can be forced to), `POST /v1/audienceMembers:ingest`
//! and `:remove` bodies (destinations, ≤ 10,000 members, ≤ 10 identifiers
//! each, one field per identifier, SHA-256 as 64 lowercase hex,
//! `encoding: "HEX"`, consent and terms only on ingest), google.rpc.Status
//! error envelopes with details, requestIds and
//! `GET /v1/requestStatus:retrieve`. Members are held per audience;
//! throttles, daily quota, 5xx and a poisoned row can be scripted.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

pub const CLIENT_ID: &str = "fake-client-id.apps.googleusercontent.com";
pub const CLIENT_SECRET: &str = "fake-client-secret-0123";
pub const REFRESH_TOKEN: &str = "1//fake-refresh-token";
pub const OPERATING_ACCOUNT: &str = "1234567890";
pub const MAX_MEMBERS: usize = 10_000;
pub const MAX_IDENTIFIERS: usize = 10;
const ACCOUNT_TYPES: &[&str] = &[
    "GOOGLE_ADS",
    "DISPLAY_VIDEO_PARTNER",
    "DISPLAY_VIDEO_ADVERTISER",
    "DATA_PARTNER",
];
const CONSENT: &[&str] = &["CONSENT_GRANTED", "CONSENT_DENIED"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ingest,
    Remove,
}

/// One ingest or remove as the fake saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub kind: Kind,
    pub status: u16,
    /// The body, when it was JSON.
    pub body: Value,
    /// Member keys (first identifier's hash) when the body was read.
    pub members: Vec<String>,
    pub request_id: Option<String>,
    pub at: Instant,
}

/// What the next ingest/remove meets instead of normal handling.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub body: String,
    pub retry_after: Option<u64>,
}

impl Scripted {
    /// A google.rpc.Status envelope.
    pub fn status(code: u16, status: &str, message: &str, details: Value) -> Self {
        Scripted {
            status: code,
            body: rpc_error(code, status, message, details).to_string(),
            retry_after: None,
        }
    }
    /// The per-minute project quota, as Google documents it.
    pub fn throttle() -> Self {
        Self::status(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Ingestion mutate requests' and limit 'Ingestion mutate requests per minute per project'.",
            json!([
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED",
                 "domain": "googleapis.com",
                 "metadata": {"quota_limit": "IngestionMutateRequestsPerMinutePerProject", "service": "datamanager.googleapis.com"}},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.05s"}
            ]),
        )
    }
    /// The per-day project quota.
    pub fn daily_quota() -> Self {
        Self::status(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Ingestion mutate requests' and limit 'Ingestion mutate requests per day per project'.",
            json!([
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED",
                 "domain": "googleapis.com",
                 "metadata": {"quota_limit": "IngestionMutateRequestsPerDayPerProject", "service": "datamanager.googleapis.com"}}
            ]),
        )
    }
    pub fn unavailable() -> Self {
        Self::status(
            503,
            "UNAVAILABLE",
            "The service is currently unavailable.",
            json!([]),
        )
    }
    pub fn permission_denied() -> Self {
        Self::status(
            403,
            "PERMISSION_DENIED",
            "The caller does not have permission",
            json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "PERMISSION_DENIED"}]),
        )
    }
}

struct FakeState {
    /// While true, member requests wait (a busy platform).
    held: tokio::sync::watch::Sender<bool>,
    /// Access tokens issued and still valid, with their expiry.
    tokens: HashMap<String, Instant>,
    token_lifetime: Duration,
    token_requests: usize,
    next_token: u64,
    /// `/token` answers invalid_grant while true.
    refuse_refresh: bool,
    script: VecDeque<Scripted>,
    /// A request holding a member with one of these keys is refused
    /// whole, INVALID_ARGUMENT, as Google refuses a malformed member.
    poisoned: BTreeSet<String>,
    members: BTreeMap<String, BTreeSet<String>>,
    requests: Vec<RecordedRequest>,
    next_request: u64,
    /// requestStatus answers for the next accepted requests (else SUCCESS).
    next_statuses: VecDeque<Value>,
    statuses: HashMap<String, Value>,
    status_checks: usize,
}

type Shared = Arc<Mutex<FakeState>>;

pub struct FakeGoogle {
    addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGoogle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeGoogle {
    pub async fn start() -> FakeGoogle {
        let state: Shared = Arc::new(Mutex::new(FakeState {
            held: tokio::sync::watch::channel(false).0,
            tokens: HashMap::new(),
            token_lifetime: Duration::from_secs(3600),
            token_requests: 0,
            next_token: 1,
            refuse_refresh: false,
            script: VecDeque::new(),
            poisoned: BTreeSet::new(),
            members: BTreeMap::new(),
            requests: Vec::new(),
            next_request: 1,
            next_statuses: VecDeque::new(),
            statuses: HashMap::new(),
            status_checks: 0,
        }));
        let app = Router::new().fallback(route).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Google API");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake Google API");
        });
        FakeGoogle { addr, state, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// A `[[destinations]]` entry pointing here, with fast retries, a
    /// project of its own and a quick requestStatus check.
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
type = "google_customer_match"
base_url = "{}"
token_url = "{}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
refresh_token = "{REFRESH_TOKEN}"
operating_account = {{ account_id = "{OPERATING_ACCOUNT}" }}
customer_match_terms_of_service = "ACCEPTED"
project = "fake-project-{}"
request_status_interval = "100ms"
{timeout}base_backoff = "20ms"
max_backoff = "200ms"
{extra}
"#,
            self.base_url(),
            self.token_url(),
            self.addr.port()
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

    /// Member keys (the first identifier's hash) in the audience.
    pub fn members(&self, audience: &str) -> BTreeSet<String> {
        self.state()
            .members
            .get(audience)
            .cloned()
            .unwrap_or_default()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    pub fn successful_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.status < 300)
            .collect()
    }

    pub fn push(&self, s: Scripted) {
        self.state().script.push_back(s);
    }

    pub fn poison(&self, member_key: &str) {
        self.state().poisoned.insert(member_key.to_owned());
    }

    /// Every access token issued so far stops working (as if expired
    /// early); the next call gets 401 UNAUTHENTICATED.
    pub fn expire_tokens(&self) {
        self.state().tokens.clear();
    }

    /// `expires_in` of tokens issued from now on.
    pub fn set_token_lifetime(&self, d: Duration) {
        self.state().token_lifetime = d;
    }

    /// `/token` answers `invalid_grant` (a revoked refresh token).
    pub fn refuse_refresh(&self, refuse: bool) {
        self.state().refuse_refresh = refuse;
    }

    pub fn token_requests(&self) -> usize {
        self.state().token_requests
    }

    /// The requestStatus answer for the next accepted request.
    pub fn next_request_status(&self, status: &str, error_counts: Value) {
        let mut per = json!({"requestStatus": status});
        if !error_counts.is_null() {
            per["errorInfo"] = json!({ "errorCounts": error_counts });
        }
        self.state().next_statuses.push_back(per);
    }

    pub fn status_checks(&self) -> usize {
        self.state().status_checks
    }
}

async fn route(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
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
    match (method.as_str(), uri.path()) {
        ("POST", "/token") => token(&state, &headers, &body),
        ("POST", "/v1/audienceMembers:ingest") => mutate(&state, Kind::Ingest, &headers, &body),
        ("POST", "/v1/audienceMembers:remove") => mutate(&state, Kind::Remove, &headers, &body),
        ("GET", "/v1/requestStatus:retrieve") => request_status(&state, &headers, query),
        _ => error(
            404,
            "NOT_FOUND",
            "The requested URL was not found on this server.",
            json!([]),
        ),
    }
}

/// OAuth 2.0 refresh-token grant: a form body.
fn token(state: &Shared, headers: &HeaderMap, body: &[u8]) -> Response {
    let mut s = state.lock().unwrap();
    s.token_requests += 1;
    let form_ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.starts_with("application/x-www-form-urlencoded"));
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let oauth_error = |status: u16, error: &str, description: &str| {
        reply(
            status,
            json!({"error": error, "error_description": description}).to_string(),
            None,
        )
    };
    if !form_ok || form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return oauth_error(400, "unsupported_grant_type", "Invalid grant_type");
    }
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
    {
        return oauth_error(401, "invalid_client", "The OAuth client was not found.");
    }
    if s.refuse_refresh || form.get("refresh_token").map(String::as_str) != Some(REFRESH_TOKEN) {
        return oauth_error(400, "invalid_grant", "Token has been expired or revoked.");
    }
    let tok = format!("ya29.fake-{}", s.next_token);
    s.next_token += 1;
    let lifetime = s.token_lifetime;
    s.tokens.insert(tok.clone(), Instant::now() + lifetime);
    reply(
        200,
        json!({"access_token": tok, "expires_in": lifetime.as_secs(), "scope": "https://www.googleapis.com/auth/datamanager", "token_type": "Bearer"})
            .to_string(),
        None,
    )
}

fn authorized(s: &FakeState, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .and_then(|t| s.tokens.get(t))
        .is_some_and(|exp| *exp > Instant::now())
}

fn unauthenticated() -> Response {
    error(
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token.",
        json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "ACCESS_TOKEN_EXPIRED", "domain": "googleapis.com"}]),
    )
}

fn mutate(state: &Shared, kind: Kind, headers: &HeaderMap, body: &[u8]) -> Response {
    let mut s = state.lock().unwrap();
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let record = |s: &mut FakeState, status: u16, members: Vec<String>, id: Option<String>| {
        s.requests.push(RecordedRequest {
            kind,
            status,
            body: parsed.clone(),
            members,
            request_id: id,
            at: Instant::now(),
        });
    };
    if !authorized(&s, headers) {
        record(&mut s, 401, Vec::new(), None);
        return unauthenticated();
    }
    if let Some(r) = s.script.pop_front() {
        record(&mut s, r.status, Vec::new(), None);
        return reply(r.status, r.body, r.retry_after);
    }
    let keys = match check_body(kind, &parsed) {
        Ok(keys) => keys,
        Err(message) => {
            record(&mut s, 400, Vec::new(), None);
            return invalid_argument(&message);
        }
    };
    if keys.iter().any(|k| s.poisoned.contains(k)) {
        record(&mut s, 400, keys, None);
        return invalid_argument("audience_members: a member's user data is invalid");
    }
    let audience = parsed["destinations"][0]["productDestinationId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let members = s.members.entry(audience).or_default();
    for k in &keys {
        match kind {
            Kind::Ingest => {
                members.insert(k.clone());
            }
            Kind::Remove => {
                members.remove(k);
            }
        }
    }
    let id = format!("fake-request-{}", s.next_request);
    s.next_request += 1;
    let status = s
        .next_statuses
        .pop_front()
        .unwrap_or_else(|| json!({"requestStatus": "SUCCESS"}));
    let mut per = status;
    per["destination"] = parsed["destinations"][0].clone();
    s.statuses.insert(id.clone(), per);
    record(&mut s, 200, keys, Some(id.clone()));
    reply(200, json!({ "requestId": id }).to_string(), None)
}

/// The documented body; the member keys on success, else the message of
/// the first violation (field path, never the value).
fn check_body(kind: Kind, v: &Value) -> Result<Vec<String>, String> {
    let obj = v.as_object().ok_or("Invalid JSON payload received.")?;
    let allowed: &[&str] = match kind {
        Kind::Ingest => &[
            "destinations",
            "audienceMembers",
            "consent",
            "validateOnly",
            "encoding",
            "encryptionInfo",
            "termsOfService",
        ],
        Kind::Remove => &[
            "destinations",
            "audienceMembers",
            "validateOnly",
            "encoding",
            "encryptionInfo",
        ],
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "Invalid JSON payload received. Unknown name \"{k}\": Cannot find field."
        ));
    }
    let dests = v["destinations"]
        .as_array()
        .ok_or("destinations: required")?;
    if dests.is_empty() || dests.len() > 10 {
        return Err("destinations: between 1 and 10 destinations".into());
    }
    for (i, d) in dests.iter().enumerate() {
        check_account(&d["operatingAccount"])
            .map_err(|e| format!("destinations[{i}].operating_account: {e}"))?;
        if !d["loginAccount"].is_null() {
            check_account(&d["loginAccount"])
                .map_err(|e| format!("destinations[{i}].login_account: {e}"))?;
        }
        if d["productDestinationId"].as_str().is_none_or(str::is_empty) {
            return Err(format!(
                "destinations[{i}].product_destination_id: required"
            ));
        }
    }
    if v["encoding"] != "HEX" {
        return Err(
            "encoding: required for UserData uploads (HEX or BASE64; the fake expects HEX)".into(),
        );
    }
    if kind == Kind::Ingest {
        if v["termsOfService"]["customerMatchTermsOfServiceStatus"] != "ACCEPTED" {
            return Err("terms_of_service.customer_match_terms_of_service_status: must be ACCEPTED for Customer Match".into());
        }
        if !v["consent"].is_null() {
            check_consent(&v["consent"]).map_err(|e| format!("consent.{e}"))?;
        }
    }
    let members = v["audienceMembers"]
        .as_array()
        .ok_or("audience_members: required")?;
    if members.is_empty() || members.len() > MAX_MEMBERS {
        return Err(format!(
            "audience_members: between 1 and {MAX_MEMBERS} members"
        ));
    }
    let mut keys = Vec::with_capacity(members.len());
    for (i, m) in members.iter().enumerate() {
        let ids = m["userData"]["userIdentifiers"].as_array().ok_or(format!(
            "audience_members[{i}].user_data.user_identifiers: required"
        ))?;
        if ids.is_empty() || ids.len() > MAX_IDENTIFIERS {
            return Err(format!(
                "audience_members[{i}].user_data.user_identifiers: between 1 and {MAX_IDENTIFIERS}"
            ));
        }
        if !m["consent"].is_null() {
            check_consent(&m["consent"])
                .map_err(|e| format!("audience_members[{i}].consent.{e}"))?;
        }
        let mut key = None;
        for (j, id) in ids.iter().enumerate() {
            let at = format!("audience_members[{i}].user_data.user_identifiers[{j}]");
            let o = id
                .as_object()
                .filter(|o| o.len() == 1)
                .ok_or(format!("{at}: exactly one identifier"))?;
            let (name, value) = o.iter().next().expect("one");
            let k = match name.as_str() {
                "emailAddress" | "phoneNumber" => {
                    let h = value
                        .as_str()
                        .filter(|h| is_sha256_hex(h))
                        .ok_or(format!("{at}.{name}: not a hex SHA-256"))?;
                    h.to_owned()
                }
                "address" => {
                    for f in ["givenName", "familyName"] {
                        value[f]
                            .as_str()
                            .filter(|h| is_sha256_hex(h))
                            .ok_or(format!("{at}.address.{f}: not a hex SHA-256"))?;
                    }
                    value["regionCode"]
                        .as_str()
                        .filter(|r| r.len() == 2 && r.bytes().all(|b| b.is_ascii_uppercase()))
                        .ok_or(format!("{at}.address.region_code: ISO 3166-1 alpha-2"))?;
                    value["postalCode"]
                        .as_str()
                        .filter(|p| !p.is_empty())
                        .ok_or(format!("{at}.address.postal_code: required"))?;
                    value["givenName"].as_str().expect("checked").to_owned()
                }
                other => return Err(format!("{at}: unknown identifier {other}")),
            };
            key.get_or_insert(k);
        }
        keys.push(key.expect("at least one identifier"));
    }
    Ok(keys)
}

fn check_account(a: &Value) -> Result<(), &'static str> {
    if !a["accountType"]
        .as_str()
        .is_some_and(|t| ACCOUNT_TYPES.contains(&t))
    {
        return Err("account_type: unknown");
    }
    let id = a["accountId"].as_str().unwrap_or_default();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err("account_id: digits without dashes");
    }
    Ok(())
}

fn check_consent(c: &Value) -> Result<(), &'static str> {
    for f in ["adUserData", "adPersonalization"] {
        if !c[f].is_null() && !c[f].as_str().is_some_and(|v| CONSENT.contains(&v)) {
            return Err("CONSENT_GRANTED or CONSENT_DENIED");
        }
    }
    Ok(())
}

fn request_status(state: &Shared, headers: &HeaderMap, query: Option<String>) -> Response {
    let mut s = state.lock().unwrap();
    if !authorized(&s, headers) {
        return unauthenticated();
    }
    s.status_checks += 1;
    let id = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "requestId")
        .map(|(_, v)| v.into_owned());
    match id.and_then(|id| s.statuses.get(&id).cloned()) {
        Some(per) => reply(
            200,
            json!({"requestStatusPerDestination": [per]}).to_string(),
            None,
        ),
        None => error(404, "NOT_FOUND", "Request not found.", json!([])),
    }
}

fn is_sha256_hex(v: &str) -> bool {
    v.len() == 64 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub fn rpc_error(code: u16, status: &str, message: &str, details: Value) -> Value {
    json!({"error": {"code": code, "message": message, "status": status, "details": details}})
}

fn invalid_argument(message: &str) -> Response {
    error(
        400,
        "INVALID_ARGUMENT",
        message,
        json!([{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"description": message}]}]),
    )
}

fn error(code: u16, status: &str, message: &str, details: Value) -> Response {
    reply(
        code,
        rpc_error(code, status, message, details).to_string(),
        None,
    )
}

fn reply(status: u16, body: String, retry_after: Option<u64>) -> Response {
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
        .into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(secs) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}
