//! A fake BigQuery v2 REST API and Google OAuth token endpoint on
//! 127.0.0.1:0, strict where the documented contract is:
//! - `POST /token`: the JWT-bearer grant
//!   (<https://developers.google.com/identity/protocols/oauth2/service-account#httprest>):
//!   the assertion must verify with `tests/fixtures/test-rsa-public.pem`
//!   (RS256), name the service account as `iss`, this endpoint as `aud`,
//!   the BigQuery scope, and live at most an hour (`exp - iat ≤ 3600`, not
//!   expired); else `invalid_grant`. Tokens expire (`set_token_lifetime`)
//!   or can be revoked early (`expire_tokens`).
//! - `POST /bigquery/v2/projects/{p}/datasets/{d}/tables` (tables.insert):
//!   a table with a schema, or a view with a standard-SQL query; 409 when
//!   the name is taken.
//! - `GET …/tables/{t}` (tables.get): a valid bearer token (401
//!   otherwise), the table's resource with `schema.fields` (types in the
//!   legacy names `tables.get` is documented to answer too: FLOAT64 as
//!   FLOAT, BOOL as BOOLEAN, INT64 as INTEGER; UNCONFIRMED which of the
//!   two a live project answers) and `type` TABLE or VIEW; 404
//!   `notFound` "Not found: Table p:d.t", or "Not found: Dataset p:d"
//!   for another dataset.
//! - `POST …/tables/{t}/insertAll` (tabledata.insertAll): a valid bearer
//!   token (401 otherwise), an existing table (404 `notFound`), at most
//!   `max_rows` rows (400 `invalid`) and `max_bytes` bytes (413), each row
//!   `{"insertId"?, "json": {…}}` checked against the table's schema
//!   (unknown field: `invalid`, "no such field"; wrong type: `invalid`;
//!   a REQUIRED field missing: `invalid`, "Missing required field"). With
//!   `skipInvalidRows: false` one invalid row stores nothing and every
//!   other row is reported `stopped`; with true the valid rows are
//!   stored. Rows are deduped on `insertId` (counted, not stored).
//!
//! Error bodies are BigQuery's envelope `{"error": {"code", "message",
//! "errors": [{"message", "domain", "reason"}], "status"}}`. Faults can
//! be injected for the next requests (`fail_next`, `fail_next_with`,
//! `fail_next_after_storing`). Stored rows can be read back, and
//! `members` computes what koala's view gives: the latest change per
//! (audience, person) unless a remove.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Map, Value};

pub const PROJECT: &str = "fake-project";
pub const DATASET: &str = "koala";
pub const CLIENT_EMAIL: &str = "koala-test@fake-project.iam.gserviceaccount.com";
pub const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";
pub const MAX_ROWS: usize = 50_000;
pub const MAX_BYTES: usize = 10 * 1024 * 1024;
pub const PRIVATE_KEY: &str = include_str!("../../fixtures/test-rsa-private.pem");
pub const PUBLIC_KEY: &str = include_str!("../../fixtures/test-rsa-public.pem");

const TYPES: &[&str] = &[
    "STRING",
    "FLOAT64",
    "FLOAT",
    "NUMERIC",
    "INT64",
    "INTEGER",
    "BOOL",
    "BOOLEAN",
    "TIMESTAMP",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub kind: String,
    pub required: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Table {
    pub schema: Vec<Field>,
    pub rows: Vec<Map<String, Value>>,
    /// A view's query.
    pub view: Option<String>,
    pub body: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Token,
    TablesInsert,
    TablesGet,
    InsertAll,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub kind: Kind,
    pub status: u16,
    pub bytes: usize,
    /// insertIds of an insertAll that was read.
    pub insert_ids: Vec<String>,
}

#[derive(Debug, Clone)]
struct Scripted {
    status: u16,
    reason: String,
    retry_after: Option<u64>,
    store_first: bool,
}

struct FakeState {
    addr: SocketAddr,
    tables: BTreeMap<String, Table>,
    seen: HashSet<(String, String)>,
    duplicates: usize,
    tokens: HashMap<String, Instant>,
    token_lifetime: Duration,
    next_token: u64,
    refuse_assertions: bool,
    script: VecDeque<Scripted>,
    requests: Vec<Recorded>,
    rejected: Vec<(u16, String)>,
    max_rows: usize,
    max_bytes: usize,
}

type Shared = Arc<Mutex<FakeState>>;

pub struct FakeBigQuery {
    addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeBigQuery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeBigQuery {
    pub async fn start() -> FakeBigQuery {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Shared = Arc::new(Mutex::new(FakeState {
            addr,
            tables: BTreeMap::new(),
            seen: HashSet::new(),
            duplicates: 0,
            tokens: HashMap::new(),
            token_lifetime: Duration::from_secs(3600),
            next_token: 1,
            refuse_assertions: false,
            script: VecDeque::new(),
            requests: Vec::new(),
            rejected: Vec::new(),
            max_rows: MAX_ROWS,
            max_bytes: MAX_BYTES,
        }));
        let app = Router::new()
            .fallback(route)
            // Read bodies over the limit, to answer them 413 as BigQuery does.
            .layer(DefaultBodyLimit::max(32 * 1024 * 1024))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake bigquery");
        });
        FakeBigQuery { addr, state, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// A service account key file's JSON whose `token_uri` is this fake.
    pub fn key_json(&self) -> String {
        json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "0123456789abcdef",
            "private_key": PRIVATE_KEY,
            "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000001",
            "token_uri": self.token_url(),
        })
        .to_string()
    }

    /// A `[[destinations]]` table for this fake's dataset (inline key,
    /// short backoffs).
    pub fn destination_toml(&self, name: &str, table: &str, extra: &str) -> String {
        format!(
            r#"
[[destinations]]
name = "{name}"
type = "bigquery"
base_url = "{}"
project = "{PROJECT}"
dataset = "{DATASET}"
table = "{table}"
key_json = '{}'
request_timeout = "2s"
base_backoff = "20ms"
max_backoff = "200ms"
{extra}
"#,
            self.base_url(),
            self.key_json()
        )
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// Creates a table as someone would by hand: `(name, type, required)`.
    pub fn create_table(&self, name: &str, fields: &[(&str, &str, bool)]) {
        let schema = fields
            .iter()
            .map(|(n, k, r)| Field {
                name: (*n).into(),
                kind: (*k).into(),
                required: *r,
            })
            .collect();
        self.state().tables.insert(
            name.into(),
            Table {
                schema,
                ..Default::default()
            },
        );
    }

    pub fn table(&self, name: &str) -> Option<Table> {
        self.state().tables.get(name).cloned()
    }

    pub fn rows(&self, table: &str) -> Vec<Map<String, Value>> {
        self.table(table).map(|t| t.rows).unwrap_or_default()
    }

    /// What koala's view answers: per (audience, person_id) the row with
    /// the latest `occurred_at`, then `synced_at`, unless its change is a
    /// remove.
    pub fn members(&self, table: &str) -> BTreeMap<(String, String), Map<String, Value>> {
        let ms = |r: &Map<String, Value>, k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_millis())
        };
        let mut latest: BTreeMap<(String, String), Map<String, Value>> = BTreeMap::new();
        for r in self.rows(table) {
            let key = (
                r["audience"].as_str().unwrap().to_owned(),
                r["person_id"].as_str().unwrap().to_owned(),
            );
            let rank = |r: &Map<String, Value>| (ms(r, "occurred_at"), ms(r, "synced_at"));
            if latest.get(&key).is_none_or(|old| rank(&r) >= rank(old)) {
                latest.insert(key, r);
            }
        }
        latest.retain(|_, r| r["change"] != "remove");
        latest
    }

    /// The person ids `members` holds for one audience.
    pub fn member_ids(&self, table: &str, audience: &str) -> Vec<String> {
        self.members(table)
            .into_keys()
            .filter(|(a, _)| a == audience)
            .map(|(_, p)| p)
            .collect()
    }

    pub fn set_limits(&self, max_rows: usize, max_bytes: usize) {
        let mut s = self.state();
        s.max_rows = max_rows;
        s.max_bytes = max_bytes;
    }

    /// The next `n` BigQuery calls (not `/token`) are answered `status`
    /// with a reason fitting it (503 backendError, 500 internalError, 429
    /// and 403 rateLimitExceeded, 401 unauthorized, 404 notFound).
    pub fn fail_next(&self, n: usize, status: u16) {
        let reason = match status {
            500 => "internalError",
            503 => "backendError",
            429 | 403 => "rateLimitExceeded",
            401 => "unauthorized",
            404 => "notFound",
            _ => "invalid",
        };
        self.fail_next_with(n, status, reason, None);
    }

    /// The next `n` calls answer `status` with `reason` in the envelope.
    pub fn fail_next_with(&self, n: usize, status: u16, reason: &str, retry_after: Option<u64>) {
        for _ in 0..n {
            self.state().script.push_back(Scripted {
                status,
                reason: reason.into(),
                retry_after,
                store_first: false,
            });
        }
    }

    /// The next `n` insertAll calls are stored, then answered `status` (a
    /// lost answer).
    pub fn fail_next_after_storing(&self, n: usize, status: u16) {
        for _ in 0..n {
            self.state().script.push_back(Scripted {
                status,
                reason: "backendError".into(),
                retry_after: None,
                store_first: true,
            });
        }
    }

    /// Every access token issued so far stops working (the next call gets
    /// 401), as after a revocation or an early expiry.
    pub fn expire_tokens(&self) {
        self.state().tokens.clear();
    }

    /// `expires_in` of tokens issued from now on.
    pub fn set_token_lifetime(&self, d: Duration) {
        self.state().token_lifetime = d;
    }

    /// `/token` answers `invalid_grant` (a deleted service account key).
    pub fn refuse_assertions(&self, refuse: bool) {
        self.state().refuse_assertions = refuse;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    pub fn requests_of(&self, kind: Kind) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.kind == kind)
            .collect()
    }

    pub fn token_requests(&self) -> usize {
        self.requests_of(Kind::Token).len()
    }

    pub fn duplicates(&self) -> usize {
        self.state().duplicates
    }

    /// Requests refused by the contract (status, why).
    pub fn rejected(&self) -> Vec<(u16, String)> {
        self.state().rejected.clone()
    }
}

fn reply(status: u16, body: Value, retry_after: Option<u64>) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response();
    if let Some(after) = retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, after.to_string().parse().unwrap());
    }
    r
}

/// BigQuery's error envelope.
fn envelope(code: u16, reason: &str, message: &str) -> Value {
    let status = match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    json!({"error": {"code": code, "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}],
        "status": status}})
}

fn refuse(
    s: &mut FakeState,
    kind: Kind,
    bytes: usize,
    status: u16,
    reason: &str,
    message: &str,
) -> Response {
    s.rejected.push((status, format!("{reason}: {message}")));
    s.requests.push(Recorded {
        kind,
        status,
        bytes,
        insert_ids: Vec::new(),
    });
    reply(status, envelope(status, reason, message), None)
}

async fn route(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = state.lock().unwrap();
    let path = uri.path().to_owned();
    if method == Method::POST && path == "/token" {
        return token(&mut s, &headers, &body);
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (project, dataset, rest) = match parts.as_slice() {
        ["bigquery", "v2", "projects", p, "datasets", d, "tables", rest @ ..] => (*p, *d, rest),
        _ => {
            return refuse(
                &mut s,
                Kind::InsertAll,
                body.len(),
                404,
                "notFound",
                &format!("no route {method} {path}"),
            )
        }
    };
    let kind = match (&method, rest.len()) {
        (&Method::GET, _) => Kind::TablesGet,
        (_, 0) => Kind::TablesInsert,
        _ => Kind::InsertAll,
    };
    let known = match kind {
        Kind::TablesGet => rest.len() == 1,
        _ => {
            method == Method::POST
                && (rest.is_empty() || (rest.len() == 2 && rest[1] == "insertAll"))
        }
    };
    if !known {
        return refuse(
            &mut s,
            kind,
            body.len(),
            404,
            "notFound",
            &format!("no route {method} {path}"),
        );
    }
    if !authorized(&s, &headers) {
        return refuse(
            &mut s,
            kind,
            body.len(),
            401,
            "unauthorized",
            "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        );
    }
    if project != PROJECT || dataset != DATASET {
        return refuse(
            &mut s,
            kind,
            body.len(),
            404,
            "notFound",
            &format!("Not found: Dataset {project}:{dataset}"),
        );
    }
    if let Some(sc) = s.script.front().cloned() {
        if !sc.store_first || kind == Kind::InsertAll {
            s.script.pop_front();
            if sc.store_first {
                // Applied as usual, then the answer is lost.
                let table = rest[0].to_owned();
                let _ = insert_all(&mut s, &table, &body);
                s.requests.last_mut().unwrap().status = sc.status;
            } else {
                s.requests.push(Recorded {
                    kind,
                    status: sc.status,
                    bytes: body.len(),
                    insert_ids: Vec::new(),
                });
            }
            return reply(
                sc.status,
                envelope(sc.status, &sc.reason, "scripted failure"),
                sc.retry_after,
            );
        }
    }
    if kind == Kind::TablesGet {
        let table = rest[0].to_owned();
        tables_get(&mut s, &table)
    } else if rest.is_empty() {
        tables_insert(&mut s, &body)
    } else {
        let table = rest[0].to_owned();
        insert_all(&mut s, &table, &body)
    }
}

/// The JWT-bearer grant: a form with `grant_type` and `assertion`.
fn token(s: &mut FakeState, headers: &HeaderMap, body: &[u8]) -> Response {
    s.requests.push(Recorded {
        kind: Kind::Token,
        status: 0,
        bytes: body.len(),
        insert_ids: Vec::new(),
    });
    let at = s.requests.len() - 1;
    let oauth_error = |s: &mut FakeState, status: u16, error: &str, description: &str| {
        s.requests[at].status = status;
        s.rejected
            .push((status, format!("token: {error}: {description}")));
        reply(
            status,
            json!({"error": error, "error_description": description}),
            None,
        )
    };
    let form_ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.starts_with("application/x-www-form-urlencoded"));
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    if !form_ok
        || form.get("grant_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return oauth_error(s, 400, "unsupported_grant_type", "Invalid grant_type");
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error(
            s,
            400,
            "invalid_request",
            "Missing required parameter: assertion",
        );
    };
    if let Err(why) = check_assertion(assertion, &format!("http://{}/token", s.addr)) {
        return oauth_error(s, 400, "invalid_grant", &why);
    }
    if s.refuse_assertions {
        return oauth_error(s, 400, "invalid_grant", "Invalid JWT Signature.");
    }
    let tok = format!("ya29.c.fake-bq-{}", s.next_token);
    s.next_token += 1;
    let lifetime = s.token_lifetime;
    s.tokens.insert(tok.clone(), Instant::now() + lifetime);
    s.requests[at].status = 200;
    reply(
        200,
        json!({"access_token": tok, "expires_in": lifetime.as_secs(), "token_type": "Bearer"}),
        None,
    )
}

#[derive(serde::Deserialize)]
struct Claims {
    iss: String,
    scope: String,
    aud: String,
    iat: i64,
    exp: i64,
}

/// Google's checks of a service account assertion.
pub fn check_assertion(jwt: &str, token_url: &str) -> Result<(), String> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let header =
        jsonwebtoken::decode_header(jwt).map_err(|_| "Invalid JWT: not a JWT.".to_owned())?;
    if header.alg != Algorithm::RS256 {
        return Err("Invalid JWT: alg must be RS256.".into());
    }
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[token_url]);
    v.set_required_spec_claims(&["exp", "aud", "iss"]);
    v.leeway = 0;
    let key = DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).unwrap();
    let c = jsonwebtoken::decode::<Claims>(jwt, &key, &v)
        .map_err(|e| format!("Invalid JWT: {e}"))?
        .claims;
    if c.iss != CLIENT_EMAIL {
        return Err("Invalid JWT: iss is not a known service account.".into());
    }
    if c.aud != token_url {
        return Err("Invalid JWT: aud is not the token endpoint.".into());
    }
    if !c.scope.split(' ').any(|sc| sc == SCOPE) {
        return Err("Invalid JWT: the scope does not include BigQuery.".into());
    }
    let now = chrono::Utc::now().timestamp();
    if c.exp - c.iat > 3600 || c.iat > now + 60 {
        return Err("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.".into());
    }
    Ok(())
}

fn authorized(s: &FakeState, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .and_then(|t| s.tokens.get(t))
        .is_some_and(|exp| *exp > Instant::now())
}

/// `tables.get`: the resource as BigQuery describes a table or a view.
fn tables_get(s: &mut FakeState, id: &str) -> Response {
    let Some(t) = s.tables.get(id).cloned() else {
        let m = format!("Not found: Table {PROJECT}:{DATASET}.{id}");
        return refuse(s, Kind::TablesGet, 0, 404, "notFound", &m);
    };
    let legacy = |k: &str| match k {
        "FLOAT64" => "FLOAT".to_owned(),
        "BOOL" => "BOOLEAN".to_owned(),
        "INT64" => "INTEGER".to_owned(),
        k => k.to_owned(),
    };
    let mut resource = json!({
        "kind": "bigquery#table",
        "id": format!("{PROJECT}:{DATASET}.{id}"),
        "tableReference": {"projectId": PROJECT, "datasetId": DATASET, "tableId": id},
        "type": if t.view.is_some() { "VIEW" } else { "TABLE" },
    });
    if let Some(query) = &t.view {
        resource["view"] = json!({"query": query, "useLegacySql": false});
    } else {
        let fields: Vec<Value> = t
            .schema
            .iter()
            .map(|f| {
                json!({"name": f.name, "type": legacy(&f.kind),
                            "mode": if f.required { "REQUIRED" } else { "NULLABLE" }})
            })
            .collect();
        resource["schema"] = json!({ "fields": fields });
        resource["numRows"] = json!(t.rows.len().to_string());
    }
    s.requests.push(Recorded {
        kind: Kind::TablesGet,
        status: 200,
        bytes: 0,
        insert_ids: Vec::new(),
    });
    reply(200, resource, None)
}

fn tables_insert(s: &mut FakeState, body: &[u8]) -> Response {
    let refuse_400 =
        |s: &mut FakeState, m: &str| refuse(s, Kind::TablesInsert, body.len(), 400, "invalid", m);
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return refuse_400(s, "Invalid JSON payload received."),
    };
    let r = &v["tableReference"];
    if r["projectId"] != PROJECT || r["datasetId"] != DATASET {
        return refuse_400(
            s,
            "tableReference must name the project and dataset of the URL",
        );
    }
    let Some(id) = r["tableId"].as_str().filter(|t| !t.is_empty()) else {
        return refuse_400(s, "Missing required field: tableReference.tableId");
    };
    let mut table = Table {
        body: v.clone(),
        ..Default::default()
    };
    if let Some(view) = v.get("view") {
        if view["useLegacySql"] != false || view["query"].as_str().is_none_or(str::is_empty) {
            return refuse_400(s, "a view needs a standard SQL query (useLegacySql: false)");
        }
        table.view = view["query"].as_str().map(str::to_owned);
    } else {
        let mut names = HashSet::new();
        for f in v["schema"]["fields"].as_array().into_iter().flatten() {
            let name = f["name"].as_str().unwrap_or_default();
            let kind = f["type"].as_str().unwrap_or_default();
            let mode = f["mode"].as_str().unwrap_or("NULLABLE");
            let name_ok = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !name_ok || !names.insert(name.to_ascii_lowercase()) {
                return refuse_400(s, &format!("Invalid field name \"{name}\"."));
            }
            if !TYPES.contains(&kind) || !matches!(mode, "NULLABLE" | "REQUIRED") {
                return refuse_400(s, &format!("Invalid type or mode for field {name}"));
            }
            table.schema.push(Field {
                name: name.into(),
                kind: kind.into(),
                required: mode == "REQUIRED",
            });
        }
        if table.schema.is_empty() {
            return refuse_400(s, "Schema has no fields");
        }
        for key in [
            &v["timePartitioning"]["field"],
            &v["clustering"]["fields"][0],
        ] {
            if let Some(f) = key.as_str() {
                if !names.contains(&f.to_ascii_lowercase()) {
                    return refuse_400(s, &format!("The field specified for partitioning or clustering cannot be found in the schema: {f}"));
                }
            }
        }
    }
    if s.tables.contains_key(id) {
        return refuse(
            s,
            Kind::TablesInsert,
            body.len(),
            409,
            "duplicate",
            &format!("Already Exists: Table {PROJECT}:{DATASET}.{id}"),
        );
    }
    s.tables.insert(id.into(), table);
    s.requests.push(Recorded {
        kind: Kind::TablesInsert,
        status: 200,
        bytes: body.len(),
        insert_ids: Vec::new(),
    });
    reply(200, v, None)
}

/// Why a value cannot go in a column of `kind`, if it cannot.
fn type_problem(kind: &str, v: &Value) -> Option<String> {
    let ok = match kind {
        "STRING" => v.is_string(),
        "FLOAT64" | "FLOAT" | "NUMERIC" => v.is_number(),
        "INT64" | "INTEGER" => v.is_i64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "BOOL" | "BOOLEAN" => v.is_boolean(),
        "TIMESTAMP" => {
            v.is_number()
                || v.as_str()
                    .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
        }
        _ => false,
    };
    (!ok).then(|| match kind {
        "STRING" => "This field is not a string.".to_owned(),
        "FLOAT64" | "FLOAT" | "NUMERIC" => {
            format!("Cannot convert value to floating point (bad value): {v}")
        }
        "INT64" | "INTEGER" => format!("Cannot convert value to integer (bad value): {v}"),
        "BOOL" | "BOOLEAN" => format!("Cannot convert value to boolean (bad value): {v}"),
        _ => format!("Cannot convert value to timestamp (bad value): {v}"),
    })
}

/// The first problem of one row against the schema: (location, message).
fn row_problem(
    schema: &[Field],
    row: &Map<String, Value>,
    ignore_unknown: bool,
) -> Option<(String, String)> {
    for (k, v) in row {
        match schema.iter().find(|f| f.name.eq_ignore_ascii_case(k)) {
            None if ignore_unknown => {}
            None => return Some((k.clone(), format!("no such field: {k}."))),
            Some(_) if v.is_null() => {}
            Some(f) => {
                if let Some(m) = type_problem(&f.kind, v) {
                    return Some((k.clone(), m));
                }
            }
        }
    }
    for f in schema.iter().filter(|f| f.required) {
        let present = row
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case(&f.name) && !v.is_null());
        if !present {
            return Some((
                f.name.clone(),
                format!("Missing required field: {}.", f.name),
            ));
        }
    }
    None
}

fn insert_all(s: &mut FakeState, table: &str, body: &[u8]) -> Response {
    let bytes = body.len();
    if bytes > s.max_bytes {
        s.rejected.push((
            413,
            format!("request of {bytes} bytes over {}", s.max_bytes),
        ));
        s.requests.push(Recorded {
            kind: Kind::InsertAll,
            status: 413,
            bytes,
            insert_ids: Vec::new(),
        });
        return (StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large").into_response();
    }
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            return refuse(
                s,
                Kind::InsertAll,
                bytes,
                400,
                "invalid",
                "Invalid JSON payload received.",
            )
        }
    };
    let Some(rows) = v["rows"].as_array().cloned() else {
        return refuse(
            s,
            Kind::InsertAll,
            bytes,
            400,
            "invalid",
            "No rows present in the request.",
        );
    };
    if rows.is_empty() {
        return refuse(
            s,
            Kind::InsertAll,
            bytes,
            400,
            "invalid",
            "No rows present in the request.",
        );
    }
    if rows.len() > s.max_rows {
        let m = format!(
            "too many rows present in the request, limit: {} row count: {}.",
            s.max_rows,
            rows.len()
        );
        return refuse(s, Kind::InsertAll, bytes, 400, "invalid", &m);
    }
    let Some(schema) = s
        .tables
        .get(table)
        .filter(|t| t.view.is_none())
        .map(|t| t.schema.clone())
    else {
        let m = format!("Not found: Table {PROJECT}:{DATASET}.{table}");
        return refuse(s, Kind::InsertAll, bytes, 404, "notFound", &m);
    };
    let skip_invalid = v["skipInvalidRows"] == true;
    let ignore_unknown = v["ignoreUnknownValues"] == true;
    let mut ids = Vec::with_capacity(rows.len());
    let mut parsed = Vec::with_capacity(rows.len());
    for r in &rows {
        let Some(json) = r["json"].as_object() else {
            return refuse(
                s,
                Kind::InsertAll,
                bytes,
                400,
                "invalid",
                "Each row needs a json object.",
            );
        };
        let id = match r.get("insertId") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if id.len() <= 128 => Some(id.clone()),
            Some(_) => {
                return refuse(
                    s,
                    Kind::InsertAll,
                    bytes,
                    400,
                    "invalid",
                    "insertId must be a string of at most 128 characters.",
                )
            }
        };
        ids.push(id.clone().unwrap_or_default());
        parsed.push((id, json.clone()));
    }
    let problems: Vec<Option<(String, String)>> = parsed
        .iter()
        .map(|(_, row)| row_problem(&schema, row, ignore_unknown))
        .collect();
    let any_invalid = problems.iter().any(Option::is_some);
    let mut errors = Vec::new();
    for (index, (p, (id, row))) in problems.iter().zip(&parsed).enumerate() {
        match p {
            Some((location, message)) => {
                errors.push(json!({"index": index, "errors": [
                {"reason": "invalid", "location": location, "debugInfo": "", "message": message}]}))
            }
            None if any_invalid && !skip_invalid => errors.push(json!({"index": index, "errors": [
                {"reason": "stopped", "location": "", "debugInfo": "", "message": ""}]})),
            None => {
                if let Some(id) = id {
                    if !s.seen.insert((table.to_owned(), id.clone())) {
                        s.duplicates += 1;
                        continue;
                    }
                }
                s.tables.get_mut(table).unwrap().rows.push(row.clone());
            }
        }
    }
    s.requests.push(Recorded {
        kind: Kind::InsertAll,
        status: 200,
        bytes,
        insert_ids: ids,
    });
    let mut answer = json!({"kind": "bigquery#tableDataInsertAllResponse"});
    if !errors.is_empty() {
        answer["insertErrors"] = Value::Array(errors);
    }
    reply(200, answer, None)
}
