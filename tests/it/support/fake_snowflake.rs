//! Snowflake's SQL API v2 on 127.0.0.1:0
//! (<https://docs.snowflake.com/en/developer-guide/sql-api/reference>),
//! strict where the documented contract is:
//!
//! - Every request carries `Authorization: Bearer <jwt>` with
//!   `X-Snowflake-Authorization-Token-Type: KEYPAIR_JWT`, a `User-Agent` and
//!   `Accept: application/json`. The JWT is verified as Snowflake does
//!   (<https://docs.snowflake.com/en/developer-guide/sql-api/authenticating>):
//!   RS256 by the test public key, `iss` = `ACCOUNT.USER.SHA256:<fingerprint
//!   of that key>` (the fingerprint computed here, from the public key's
//!   DER), `sub` = `ACCOUNT.USER`, not expired, `exp - iat` ≤ 3600. Else 401.
//! - `POST /api/v2/statements?requestId=<uuid>[&retry=true]`: a JSON body
//!   with `statement`, an integer `timeout`, and the expected `database`,
//!   `schema`, `warehouse`; `bindings` numbered "1".."n" with a known type
//!   (TEXT, FIXED, REAL, BOOLEAN) and a string value, exactly as many as
//!   the statement has `?`. A statement holding any string literal (`'`),
//!   an `@`, or the text of a bound value is refused 400: values travel as
//!   bindings only. A requestId seen before with `retry=true` answers the
//!   first outcome without executing again; without `retry=true` it is
//!   executed anew (and counted).
//! - `GET /api/v2/statements/{handle}` for a statement answered 202.
//!
//! It executes a tiny subset of SQL itself — exactly the shapes koala
//! writes, not SQL in general: `CREATE TABLE IF NOT EXISTS "DB"."S"."T"
//! (…)`; `koala check --online`'s `SELECT COLUMN_NAME, DATA_TYPE,
//! IS_NULLABLE, COLUMN_DEFAULT FROM "DB".INFORMATION_SCHEMA.COLUMNS WHERE
//! TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION`, answered
//! as a `ResultSet` (`resultSetMetaData` with `rowType`, `data` as arrays
//! of strings or null; `DATA_TYPE` the standard name, `TEXT` for a
//! VARCHAR; no row for a table that does not exist; 422 002003 for
//! another database); and `MERGE INTO … USING (SELECT columnN::TYPE AS "C", … FROM VALUES
//! (?, NULL, …), …) AS s ON … WHEN MATCHED AND s."CHANGED_AT" >=
//! t."UPDATED_AT" THEN …` in its three forms (upsert with the entry time
//! in `ENTERED_AT`, mark as exited with the exit time in `EXITED_AT`,
//! delete), the guard compared on `CHANGED_AT`. It reads the source rows from the bindings and keeps an
//! in-memory membership table; a missing table or column is answered 422
//! as Snowflake words it (002003, 000904), a duplicate source row 422
//! (100090). Faults can be scripted: statuses before executing (a 408 is
//! kept as the requestId's outcome, as a cancelled statement's would be),
//! a status after executing (a lost answer), 202 for a number of polls.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

pub const ACCOUNT: &str = "xy12345.us-east-1";
/// The account as the JWT names it.
pub const JWT_ACCOUNT: &str = "XY12345";
pub const USER: &str = "koala_svc";
pub const DATABASE: &str = "ANALYTICS";
pub const SCHEMA: &str = "CRM";
pub const WAREHOUSE: &str = "KOALA_WH";
pub const TABLE: &str = "AUDIENCE_MEMBERS";
/// `DB.SCHEMA.TABLE` as the fake keys tables.
pub const QUALIFIED: &str = "ANALYTICS.CRM.AUDIENCE_MEMBERS";

pub const PUBLIC_KEY: &str = include_str!("../../fixtures/test-rsa-public.pem");

pub fn private_key_path() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/test-rsa-private.pem"
    )
    .to_owned()
}

/// `SHA256:` + base64 of the SHA-256 of the public key's DER, computed
/// from the PEM (whose body is that DER).
pub fn fingerprint() -> String {
    let b64: String = PUBLIC_KEY
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(der))
    )
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub request_id: Option<String>,
    pub retry: bool,
    pub status: u16,
    pub statement: Option<String>,
    pub bindings: usize,
    /// Source rows of a MERGE.
    pub rows: usize,
}

/// A JWT the fake accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub raw: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Fail {
        status: u16,
        retry_after: Option<u64>,
    },
    AfterExecuting {
        status: u16,
    },
    Async {
        polls: usize,
    },
}

#[derive(Debug, Clone)]
struct Outcome {
    status: u16,
    body: Value,
}

#[derive(Debug, Clone)]
struct Running {
    request_id: String,
    statement: String,
    bindings: Map<String, Value>,
    polls_left: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Column → type, in creation order.
    pub columns: Vec<(String, String)>,
    /// Columns created NOT NULL.
    pub not_null: Vec<String>,
    /// (audience, person_id) → column → value (timestamps as ms).
    pub rows: BTreeMap<(String, String), BTreeMap<String, Value>>,
}

struct State_ {
    script: VecDeque<Fault>,
    tables: BTreeMap<String, Table>,
    /// requestId → the outcome Snowflake would answer a retry with.
    outcomes: HashMap<String, Outcome>,
    running: HashMap<String, Running>,
    finished: HashMap<String, Outcome>,
    requests: Vec<Request>,
    /// requestId → times executed.
    executions: HashMap<String, usize>,
    dml: usize,
    ddl: usize,
    dedup_hits: usize,
    reexecuted_without_retry: usize,
    tokens: Vec<Token>,
    rejected: Vec<(u16, String)>,
}

type Shared = Arc<Mutex<State_>>;

pub struct FakeSnowflake {
    addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSnowflake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The columns koala writes besides identifiers and attributes.
pub const BASE_COLUMNS: &[(&str, &str)] = &[
    ("AUDIENCE", "VARCHAR"),
    ("PERSON_ID", "VARCHAR"),
    ("CIO_ID", "VARCHAR"),
    ("EMAIL", "VARCHAR"),
    ("ENTERED_AT", "TIMESTAMP_LTZ"),
    ("UPDATED_AT", "TIMESTAMP_LTZ"),
    ("EXITED_AT", "TIMESTAMP_LTZ"),
];

impl FakeSnowflake {
    pub async fn start() -> FakeSnowflake {
        let state: Shared = Arc::new(Mutex::new(State_ {
            script: VecDeque::new(),
            tables: BTreeMap::new(),
            outcomes: HashMap::new(),
            running: HashMap::new(),
            finished: HashMap::new(),
            requests: Vec::new(),
            executions: HashMap::new(),
            dml: 0,
            ddl: 0,
            dedup_hits: 0,
            reexecuted_without_retry: 0,
            tokens: Vec::new(),
            rejected: Vec::new(),
        }));
        let app = Router::new().fallback(route).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake snowflake");
        });
        FakeSnowflake { addr, state, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `[[destinations]]` table for this fake: the test key by path,
    /// short timeouts and backoffs. `extra` adds keys (`create_table`,
    /// `map`, `on_exit`, …).
    pub fn destination_toml(&self, name: &str, extra: &str) -> String {
        format!(
            r#"
[[destinations]]
name = "{name}"
type = "snowflake"
account = "{ACCOUNT}"
base_url = "{}"
allow_http = true
user = "{USER}"
private_key_path = "{}"
database = "analytics"
schema = "crm"
warehouse = "koala_wh"
table = "audience_members"
poll_interval = "20ms"
request_timeout = "2s"
base_backoff = "20ms"
max_backoff = "200ms"
{extra}
"#,
            self.base_url(),
            private_key_path()
        )
    }

    fn state(&self) -> MutexGuard<'_, State_> {
        self.state.lock().unwrap()
    }

    /// Creates `DB.S.T` with koala's base columns and `extra`.
    pub fn create_table(&self, qualified: &str, extra: &[(&str, &str)]) {
        let columns = BASE_COLUMNS
            .iter()
            .chain(extra)
            .map(|(c, t)| ((*c).to_owned(), (*t).to_owned()))
            .collect();
        self.state().tables.insert(
            qualified.to_owned(),
            Table {
                columns,
                ..Default::default()
            },
        );
    }

    /// The next `n` statements are answered `status` without executing.
    pub fn fail_next(&self, n: usize, status: u16) {
        for _ in 0..n {
            self.state().script.push_back(Fault::Fail {
                status,
                retry_after: None,
            });
        }
    }

    /// The next statement is answered `status` with `Retry-After`.
    pub fn throttle_next(&self, status: u16, retry_after: u64) {
        self.state().script.push_back(Fault::Fail {
            status,
            retry_after: Some(retry_after),
        });
    }

    /// The next statement is executed, then answered `status`: the answer
    /// was lost on the way.
    pub fn fail_next_after_executing(&self, status: u16) {
        self.state()
            .script
            .push_back(Fault::AfterExecuting { status });
    }

    /// The next statement is answered 202, then `polls` status requests
    /// are answered 202 before it executes.
    pub fn async_next(&self, polls: usize) {
        self.state().script.push_back(Fault::Async { polls });
    }

    pub fn table(&self, qualified: &str) -> Option<Table> {
        self.state().tables.get(qualified).cloned()
    }

    /// The row of (audience, person_id) in the default table.
    pub fn row(&self, audience: &str, person_id: &str) -> Option<BTreeMap<String, Value>> {
        self.state()
            .tables
            .get(QUALIFIED)?
            .rows
            .get(&(audience.to_owned(), person_id.to_owned()))
            .cloned()
    }

    /// person_ids of the audience's rows that have not exited.
    pub fn members(&self, audience: &str) -> BTreeSet<String> {
        let s = self.state();
        let Some(t) = s.tables.get(QUALIFIED) else {
            return BTreeSet::new();
        };
        t.rows
            .iter()
            .filter(|((a, _), r)| a == audience && r.get("EXITED_AT").is_none_or(Value::is_null))
            .map(|((_, p), _)| p.clone())
            .collect()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state().requests.clone()
    }

    /// MERGE statements executed (re-executions included).
    pub fn dml_executions(&self) -> usize {
        self.state().dml
    }

    pub fn ddl_executions(&self) -> usize {
        self.state().ddl
    }

    /// Times the statement of `request_id` was executed.
    pub fn executions_of(&self, request_id: &str) -> usize {
        self.state()
            .executions
            .get(request_id)
            .copied()
            .unwrap_or(0)
    }

    /// Resubmissions answered with a stored outcome.
    pub fn dedup_hits(&self) -> usize {
        self.state().dedup_hits
    }

    pub fn reexecuted_without_retry(&self) -> usize {
        self.state().reexecuted_without_retry
    }

    /// Distinct JWTs accepted, in order of first use.
    pub fn tokens(&self) -> Vec<Token> {
        let mut out: Vec<Token> = Vec::new();
        for t in &self.state().tokens {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }

    /// Requests refused by the contract (status, why).
    pub fn rejected(&self) -> Vec<(u16, String)> {
        self.state().rejected.clone()
    }
}

fn error_body(code: &str, sql_state: &str, message: &str) -> Value {
    json!({
        "code": code,
        "sqlState": sql_state,
        "message": message,
        "statementHandle": uuid::Uuid::new_v4().to_string(),
        "createdOn": chrono::Utc::now().timestamp_millis(),
    })
}

fn respond(o: &Outcome, retry_after: Option<u64>) -> Response {
    let mut r = (
        StatusCode::from_u16(o.status).unwrap(),
        [("content-type", "application/json")],
        o.body.to_string(),
    )
        .into_response();
    if let Some(after) = retry_after {
        r.headers_mut()
            .insert("retry-after", after.to_string().parse().unwrap());
    }
    r
}

#[derive(serde::Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    iat: u64,
    exp: u64,
}

/// The JWT's checks; the token, or why not.
fn verify(headers: &HeaderMap) -> Result<Token, String> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if h("x-snowflake-authorization-token-type") != Some("KEYPAIR_JWT") {
        return Err("X-Snowflake-Authorization-Token-Type is not KEYPAIR_JWT".into());
    }
    let raw = h("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or("no Bearer token")?;
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.required_spec_claims = ["exp", "iss", "sub"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.leeway = 0;
    let c = jsonwebtoken::decode::<Claims>(raw, &key, &v)
        .map_err(|e| format!("JWT refused: {e}"))?
        .claims;
    let qualified = format!("{JWT_ACCOUNT}.{}", USER.to_ascii_uppercase());
    if c.sub != qualified {
        return Err(format!("sub {:?} is not {qualified:?}", c.sub));
    }
    if c.iss != format!("{qualified}.{}", fingerprint()) {
        return Err(format!("iss {:?} is not ACCOUNT.USER.fingerprint", c.iss));
    }
    let now = chrono::Utc::now().timestamp() as u64;
    if c.exp < c.iat || c.exp - c.iat > 3600 {
        return Err("exp - iat over one hour".into());
    }
    if c.iat > now + 60 {
        return Err("iat in the future".into());
    }
    Ok(Token {
        raw: raw.to_owned(),
        iat: c.iat,
        exp: c.exp,
    })
}

fn common_headers(headers: &HeaderMap) -> Result<(), String> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if h("user-agent").is_none_or(str::is_empty) {
        return Err("no User-Agent".into());
    }
    if h("accept") != Some("application/json") {
        return Err("Accept is not application/json".into());
    }
    Ok(())
}

async fn route(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = state.lock().unwrap();
    let path = uri.path().to_owned();
    let params: HashMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let request_id = params.get("requestId").cloned();
    let retry = params.get("retry").map(String::as_str) == Some("true");
    let mut log = Request {
        method: method.to_string(),
        path: path.clone(),
        request_id: request_id.clone(),
        retry,
        status: 0,
        statement: None,
        bindings: 0,
        rows: 0,
    };
    let refuse = |s: &mut State_, mut log: Request, status: u16, code: &str, why: String| {
        s.rejected.push((status, why.clone()));
        log.status = status;
        s.requests.push(log);
        respond(
            &Outcome {
                status,
                body: error_body(code, "", &why),
            },
            None,
        )
    };
    match verify(&headers) {
        Ok(t) => s.tokens.push(t),
        Err(why) => return refuse(&mut s, log, 401, "390144", why),
    }
    if let Err(why) = common_headers(&headers) {
        return refuse(&mut s, log, 400, "391903", why);
    }
    if method == Method::GET {
        let Some(handle) = path.strip_prefix("/api/v2/statements/") else {
            return refuse(&mut s, log, 404, "", format!("no route GET {path}"));
        };
        return poll(&mut s, log, handle);
    }
    if method != Method::POST || path != "/api/v2/statements" {
        return refuse(&mut s, log, 404, "", format!("no route {method} {path}"));
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return refuse(
            &mut s,
            log,
            415,
            "",
            "Content-Type is not application/json".into(),
        );
    }
    let Some(id) = request_id.filter(|id| uuid::Uuid::parse_str(id).is_ok()) else {
        return refuse(
            &mut s,
            log,
            400,
            "",
            "requestId missing or not a UUID (koala always sends one)".into(),
        );
    };
    let (statement, bindings) = match validate(&body) {
        Ok(v) => v,
        Err(why) => return refuse(&mut s, log, 400, "", why),
    };
    log.statement = Some(statement.clone());
    log.bindings = bindings.len();
    if retry {
        if let Some(o) = s.outcomes.get(&id).cloned() {
            s.dedup_hits += 1;
            log.status = o.status;
            s.requests.push(log);
            return respond(&o, None);
        }
        if let Some((handle, _)) = s.running.iter().find(|(_, r)| r.request_id == id) {
            let handle = handle.clone();
            s.dedup_hits += 1;
            log.status = 202;
            s.requests.push(log);
            return respond(&still_running(&handle), None);
        }
    } else if s.executions.contains_key(&id) {
        s.reexecuted_without_retry += 1;
    }
    let fault = s.script.pop_front();
    let (outcome, retry_after) = match fault {
        Some(Fault::Fail {
            status,
            retry_after,
        }) => {
            let o = Outcome {
                status,
                body: error_body("000000", "", "scripted"),
            };
            if status == 408 {
                // Cancelled after running past its timeout: what a retry
                // of this requestId would be answered (UNCONFIRMED: the
                // strict reading).
                s.outcomes.insert(id.clone(), o.clone());
            }
            (o, retry_after)
        }
        Some(Fault::AfterExecuting { status }) => {
            let o = execute(&mut s, &id, &statement, &bindings, &mut log);
            s.outcomes.insert(id.clone(), o);
            (
                Outcome {
                    status,
                    body: error_body("000000", "", "scripted after executing"),
                },
                None,
            )
        }
        Some(Fault::Async { polls }) => {
            let handle = uuid::Uuid::new_v4().to_string();
            s.running.insert(
                handle.clone(),
                Running {
                    request_id: id.clone(),
                    statement: statement.clone(),
                    bindings: bindings.clone(),
                    polls_left: polls,
                },
            );
            (still_running(&handle), None)
        }
        None => {
            let o = execute(&mut s, &id, &statement, &bindings, &mut log);
            s.outcomes.insert(id.clone(), o.clone());
            (o, None)
        }
    };
    log.status = outcome.status;
    s.requests.push(log);
    respond(&outcome, retry_after)
}

fn still_running(handle: &str) -> Outcome {
    Outcome {
        status: 202,
        body: json!({
            "code": "333334",
            "message": "Asynchronous execution in progress. Use provided query id to perform query monitoring and management.",
            "statementHandle": handle,
            "statementStatusUrl": format!("/api/v2/statements/{handle}"),
        }),
    }
}

fn poll(s: &mut State_, mut log: Request, handle: &str) -> Response {
    if let Some(o) = s.finished.get(handle).cloned() {
        log.status = o.status;
        s.requests.push(log);
        return respond(&o, None);
    }
    let Some(mut r) = s.running.remove(handle) else {
        log.status = 404;
        s.requests.push(log);
        return respond(
            &Outcome {
                status: 404,
                body: error_body("", "", "unknown statement handle"),
            },
            None,
        );
    };
    let o = if r.polls_left > 0 {
        r.polls_left -= 1;
        s.running.insert(handle.to_owned(), r);
        still_running(handle)
    } else {
        log.statement = Some(r.statement.clone());
        let o = execute(s, &r.request_id, &r.statement, &r.bindings, &mut log);
        s.outcomes.insert(r.request_id.clone(), o.clone());
        s.finished.insert(handle.to_owned(), o.clone());
        o
    };
    log.status = o.status;
    s.requests.push(log);
    respond(&o, None)
}

/// The body's checks: the statement and its bindings, or why not.
fn validate(body: &[u8]) -> Result<(String, Map<String, Value>), String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "body is not JSON".to_owned())?;
    let statement = v["statement"].as_str().ok_or("no statement")?.to_owned();
    if !v["timeout"].is_u64() {
        return Err("timeout is not an integer".into());
    }
    for (key, expected) in [
        ("database", DATABASE),
        ("schema", SCHEMA),
        ("warehouse", WAREHOUSE),
    ] {
        if v[key].as_str() != Some(expected) {
            return Err(format!("{key} is {:?}, not {expected:?}", v[key]));
        }
    }
    let bindings = match v.get("bindings") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err("bindings is not an object".into()),
    };
    for i in 1..=bindings.len() {
        let b = bindings
            .get(&i.to_string())
            .ok_or_else(|| format!("bindings are not numbered 1..{}", bindings.len()))?;
        if !matches!(
            b["type"].as_str(),
            Some("TEXT" | "FIXED" | "REAL" | "BOOLEAN")
        ) || !b["value"].is_string()
        {
            return Err(format!("binding {i} is not {{type, value: string}}"));
        }
    }
    let marks = statement.matches('?').count();
    if marks != bindings.len() {
        return Err(format!(
            "{marks} placeholders but {} bindings",
            bindings.len()
        ));
    }
    if statement.contains('\'') || statement.contains('@') {
        return Err("the statement holds a literal: values must be bound".into());
    }
    for b in bindings.values() {
        let value = b["value"].as_str().unwrap();
        if matches!(b["type"].as_str(), Some("TEXT" | "REAL"))
            && value.len() >= 4
            && statement.contains(value)
        {
            return Err("the statement holds a bound value's text".into());
        }
    }
    Ok((statement, bindings))
}

fn unquote_name(q: &str) -> Option<String> {
    let parts: Vec<&str> = q.split('.').collect();
    let mut out = Vec::new();
    for p in parts {
        let inner = p.strip_prefix('"')?.strip_suffix('"')?;
        if inner.is_empty() || inner.contains('"') {
            return None;
        }
        out.push(inner.to_owned());
    }
    Some(out.join("."))
}

/// Splits at `", "` outside parentheses.
fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(cur.trim().to_owned());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

fn sql_error(code: &str, state: &str, message: String) -> Outcome {
    Outcome {
        status: 422,
        body: error_body(code, state, &message),
    }
}

fn execute(
    s: &mut State_,
    request_id: &str,
    statement: &str,
    bindings: &Map<String, Value>,
    log: &mut Request,
) -> Outcome {
    *s.executions.entry(request_id.to_owned()).or_default() += 1;
    if let Some(rest) = statement.strip_prefix("SELECT ") {
        return select_columns(s, rest, bindings);
    }
    let result = if let Some(rest) = statement.strip_prefix("CREATE TABLE IF NOT EXISTS ") {
        s.ddl += 1;
        create(s, rest)
    } else if let Some(rest) = statement.strip_prefix("MERGE INTO ") {
        s.dml += 1;
        merge(s, rest, bindings, log)
    } else {
        Err(sql_error(
            "001003",
            "42000",
            "SQL compilation error: the fake understands only koala's CREATE TABLE and MERGE"
                .into(),
        ))
    };
    match result {
        Ok(stats) => Outcome {
            status: 200,
            body: json!({
                "code": "090001",
                "sqlState": "00000",
                "message": "Statement executed successfully.",
                "statementHandle": uuid::Uuid::new_v4().to_string(),
                "data": [[stats.0.to_string(), stats.1.to_string(), stats.2.to_string()]],
                "stats": {"numRowsInserted": stats.0, "numRowsUpdated": stats.1, "numRowsDeleted": stats.2},
            }),
        },
        Err(o) => o,
    }
}

const COLUMNS_QUERY: &str = "COLUMN_NAME, DATA_TYPE, IS_NULLABLE, COLUMN_DEFAULT FROM ";
const COLUMNS_WHERE: &str =
    ".INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION";

/// koala's read of a table's columns from the information schema, as a
/// `ResultSet`.
fn select_columns(s: &mut State_, rest: &str, bindings: &Map<String, Value>) -> Outcome {
    let syntax = || {
        sql_error(
            "001003",
            "42000",
            "SQL compilation error: syntax error (the fake knows koala's information schema query only)"
                .into(),
        )
    };
    let Some(database) = rest
        .strip_prefix(COLUMNS_QUERY)
        .and_then(|r| r.strip_suffix(COLUMNS_WHERE))
        .and_then(unquote_name)
    else {
        return syntax();
    };
    let text = |n: &str| {
        let b = &bindings[n];
        (b["type"] == "TEXT").then(|| b["value"].as_str().unwrap_or_default().to_owned())
    };
    let (Some(schema), Some(table)) = (text("1"), text("2")) else {
        return syntax();
    };
    if database != DATABASE {
        return sql_error(
            "002003",
            "02000",
            format!("SQL compilation error:\nDatabase '\"{database}\"' does not exist or not authorized."),
        );
    }
    let rows: Vec<Value> = s
        .tables
        .get(&format!("{database}.{schema}.{table}"))
        .map(|t| {
            t.columns
                .iter()
                .map(|(c, ty)| {
                    let standard = if ty == "VARCHAR" { "TEXT" } else { ty.as_str() };
                    let nullable = if t.not_null.contains(c) { "NO" } else { "YES" };
                    json!([c, standard, nullable, null])
                })
                .collect()
        })
        .unwrap_or_default();
    let handle = uuid::Uuid::new_v4().to_string();
    let text_column = |name: &str, nullable: bool| {
        json!({"name": name, "database": "", "schema": "", "table": "", "type": "text",
               "nullable": nullable, "length": 16777216, "byteLength": 16777216,
               "scale": null, "precision": null, "collation": null})
    };
    let size = Value::Array(rows.clone()).to_string().len();
    Outcome {
        status: 200,
        body: json!({
            "resultSetMetaData": {
                "numRows": rows.len(),
                "format": "jsonv2",
                "partitionInfo": [{"rowCount": rows.len(), "uncompressedSize": size}],
                "rowType": [
                    text_column("COLUMN_NAME", false),
                    text_column("DATA_TYPE", false),
                    text_column("IS_NULLABLE", false),
                    text_column("COLUMN_DEFAULT", true),
                ],
            },
            "data": rows,
            "code": "090001",
            "statementStatusUrl": format!("/api/v2/statements/{handle}"),
            "sqlState": "00000",
            "statementHandle": handle,
            "message": "Statement executed successfully.",
            "createdOn": chrono::Utc::now().timestamp_millis(),
        }),
    }
}

fn create(s: &mut State_, rest: &str) -> Result<(usize, usize, usize), Outcome> {
    let syntax = || {
        sql_error(
            "001003",
            "42000",
            "SQL compilation error: syntax error".into(),
        )
    };
    let open = rest.find(" (").ok_or_else(syntax)?;
    let name = unquote_name(&rest[..open]).ok_or_else(syntax)?;
    let defs = rest[open + 2..].strip_suffix(')').ok_or_else(syntax)?;
    let mut columns = Vec::new();
    let mut not_null = Vec::new();
    for d in split_top(defs) {
        if d.starts_with("PRIMARY KEY") {
            continue;
        }
        let (col, ty) = d.split_once(' ').ok_or_else(syntax)?;
        let col = unquote_name(col).ok_or_else(syntax)?;
        if ty.ends_with(" NOT NULL") {
            not_null.push(col.clone());
        }
        let ty = ty.trim_end_matches(" NOT NULL").to_owned();
        if !matches!(
            ty.as_str(),
            "VARCHAR" | "FLOAT" | "BOOLEAN" | "TIMESTAMP_LTZ"
        ) {
            return Err(syntax());
        }
        columns.push((col, ty));
    }
    s.tables.entry(name).or_insert(Table {
        columns,
        not_null,
        rows: BTreeMap::new(),
    });
    Ok((0, 0, 0))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Form {
    Upsert,
    Mark,
    Delete,
}

const ON: &str = "t.\"AUDIENCE\" = s.\"AUDIENCE\" AND t.\"PERSON_ID\" = s.\"PERSON_ID\" WHEN MATCHED AND s.\"CHANGED_AT\" >= t.\"UPDATED_AT\" THEN ";

fn merge(
    s: &mut State_,
    rest: &str,
    bindings: &Map<String, Value>,
    log: &mut Request,
) -> Result<(usize, usize, usize), Outcome> {
    let syntax = |what: &str| {
        sql_error(
            "001003",
            "42000",
            format!(
                "SQL compilation error: syntax error ({what}; the fake knows koala's MERGE only)"
            ),
        )
    };
    let (name, rest) = rest
        .split_once(" AS t USING (SELECT ")
        .ok_or_else(|| syntax("USING"))?;
    let name = unquote_name(name).ok_or_else(|| syntax("table name"))?;
    let (select, rest) = rest
        .split_once(" FROM VALUES ")
        .ok_or_else(|| syntax("VALUES"))?;
    let (values, rest) = rest.split_once(") AS s ON ").ok_or_else(|| syntax("ON"))?;
    let tail = rest.strip_prefix(ON).ok_or_else(|| syntax("ON/guard"))?;
    let form = if tail == "DELETE" {
        Form::Delete
    } else if tail.starts_with("UPDATE SET \"EXITED_AT\" = s.\"EXITED_AT\", \"UPDATED_AT\" = s.\"CHANGED_AT\" WHEN NOT MATCHED THEN INSERT (") {
        Form::Mark
    } else if tail.starts_with("UPDATE SET ")
        && tail.contains("\"EXITED_AT\" = NULL")
        && tail.contains(" WHEN NOT MATCHED THEN INSERT (")
    {
        Form::Upsert
    } else {
        return Err(syntax("WHEN clauses"));
    };
    // Source columns: `columnN::TYPE AS "NAME"` or `TO_TIMESTAMP_LTZ(columnN, 3) AS "NAME"`.
    let mut cols: Vec<(String, &'static str)> = Vec::new();
    for (i, item) in split_top(select).iter().enumerate() {
        let n = i + 1;
        let (expr, alias) = item
            .rsplit_once(" AS ")
            .ok_or_else(|| syntax("select item"))?;
        let alias = unquote_name(alias).ok_or_else(|| syntax("alias"))?;
        let ty = if expr == format!("TO_TIMESTAMP_LTZ(column{n}, 3)") {
            "TIMESTAMP_LTZ"
        } else {
            match expr.strip_prefix(&format!("column{n}::")) {
                Some("VARCHAR") => "VARCHAR",
                Some("FLOAT") => "FLOAT",
                Some("BOOLEAN") => "BOOLEAN",
                _ => return Err(syntax("select expression")),
            }
        };
        cols.push((alias, ty));
    }
    if cols.len() < 3
        || cols[0].0 != "AUDIENCE"
        || cols[1].0 != "PERSON_ID"
        || cols.last().unwrap().0 != "CHANGED_AT"
    {
        return Err(syntax("source columns"));
    }
    if form != Form::Delete {
        let insert = tail
            .split_once(" WHEN NOT MATCHED THEN INSERT (")
            .map(|(_, r)| r)
            .unwrap_or_default();
        for (c, _) in &cols[..cols.len() - 1] {
            if !insert.contains(&format!("\"{c}\"")) {
                return Err(syntax("INSERT leaves out a source column"));
            }
        }
    }
    // Rows from the bindings.
    let values = values
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(|| syntax("row"))?;
    let mut next = 1usize;
    let mut rows: Vec<Vec<Value>> = Vec::new();
    for tuple in values.split("), (") {
        let cells: Vec<&str> = tuple.split(", ").collect();
        if cells.len() != cols.len() {
            return Err(syntax("row width"));
        }
        let mut row = Vec::new();
        for (cell, (_, ty)) in cells.iter().zip(&cols) {
            match *cell {
                "NULL" => row.push(Value::Null),
                "?" => {
                    let b = &bindings[&next.to_string()];
                    next += 1;
                    let value = b["value"].as_str().unwrap();
                    let v = match (b["type"].as_str().unwrap(), *ty) {
                        ("TEXT", "VARCHAR") => json!(value),
                        ("REAL", "FLOAT") => json!(value.parse::<f64>().map_err(|_| syntax("REAL value"))?),
                        ("BOOLEAN", "BOOLEAN") => json!(match value {
                            "true" => true,
                            "false" => false,
                            _ => return Err(syntax("BOOLEAN value")),
                        }),
                        ("FIXED", "TIMESTAMP_LTZ") => json!(value.parse::<i64>().map_err(|_| syntax("FIXED value"))?),
                        (bt, ct) => {
                            return Err(sql_error(
                                "100038",
                                "22018",
                                format!("a {bt} binding cast to {ct}: the fake requires koala's binding types"),
                            ))
                        }
                    };
                    row.push(v);
                }
                _ => return Err(syntax("cell")),
            }
        }
        rows.push(row);
    }
    log.rows = rows.len();
    let Some(table) = s.tables.get_mut(&name) else {
        return Err(sql_error(
            "002003",
            "42S02",
            format!("SQL compilation error:\nObject '{name}' does not exist or not authorized."),
        ));
    };
    let has = |c: &str| table.columns.iter().any(|(n, _)| n == c);
    for c in cols[..cols.len() - 1]
        .iter()
        .map(|(c, _)| c.as_str())
        .chain(["ENTERED_AT", "UPDATED_AT", "EXITED_AT"])
    {
        if !has(c) {
            return Err(sql_error(
                "000904",
                "42000",
                format!("SQL compilation error: error line 1 at position 0\ninvalid identifier '\"{c}\"'"),
            ));
        }
    }
    let position = |name: &str| cols.iter().position(|(c, _)| c == name);
    let (entered_col, exited_col) = (position("ENTERED_AT"), position("EXITED_AT"));
    match form {
        Form::Upsert if entered_col.is_none() => {
            return Err(syntax("an upsert without ENTERED_AT"))
        }
        Form::Mark if exited_col.is_none() => return Err(syntax("an exit without EXITED_AT")),
        _ => {}
    }
    let times = ["ENTERED_AT", "EXITED_AT", "CHANGED_AT"];
    let mut keys = BTreeSet::new();
    for r in &rows {
        if !keys.insert((r[0].clone().to_string(), r[1].clone().to_string())) {
            return Err(sql_error(
                "100090",
                "42P18",
                "Duplicate row detected during DML action".into(),
            ));
        }
    }
    let (mut inserted, mut updated, mut deleted) = (0, 0, 0);
    for r in rows {
        let key = (
            r[0].as_str().unwrap_or_default().to_owned(),
            r[1].as_str().unwrap_or_default().to_owned(),
        );
        let at = r[r.len() - 1].clone();
        let at_ms = at.as_i64().unwrap_or(0);
        let data: Vec<(String, Value)> = cols
            .iter()
            .map(|(c, _)| c.clone())
            .zip(r.iter().cloned())
            .filter(|(c, _)| !times.contains(&c.as_str()))
            .collect();
        let entered = entered_col.map(|i| r[i].clone()).unwrap_or(Value::Null);
        let exited = exited_col.map(|i| r[i].clone()).unwrap_or(Value::Null);
        let existing = table.rows.get(&key).cloned();
        let matched_and_newer = existing
            .as_ref()
            .is_some_and(|e| at_ms >= e.get("UPDATED_AT").and_then(Value::as_i64).unwrap_or(0));
        match (form, existing) {
            (Form::Upsert, Some(mut e)) => {
                if !matched_and_newer {
                    continue;
                }
                let current_in = e.get("EXITED_AT").is_none_or(Value::is_null)
                    && !e.get("ENTERED_AT").is_none_or(Value::is_null);
                for (c, v) in data.into_iter().skip(2) {
                    e.insert(c, v);
                }
                if !current_in {
                    e.insert("ENTERED_AT".into(), entered);
                }
                e.insert("EXITED_AT".into(), Value::Null);
                e.insert("UPDATED_AT".into(), at);
                table.rows.insert(key, e);
                updated += 1;
            }
            (Form::Upsert, None) => {
                let mut e: BTreeMap<String, Value> = table
                    .columns
                    .iter()
                    .map(|(c, _)| (c.clone(), Value::Null))
                    .collect();
                e.extend(data);
                e.insert("ENTERED_AT".into(), entered);
                e.insert("UPDATED_AT".into(), at);
                table.rows.insert(key, e);
                inserted += 1;
            }
            (Form::Mark, Some(mut e)) => {
                if !matched_and_newer {
                    continue;
                }
                e.insert("EXITED_AT".into(), exited);
                e.insert("UPDATED_AT".into(), at);
                table.rows.insert(key, e);
                updated += 1;
            }
            (Form::Mark, None) => {
                let mut e: BTreeMap<String, Value> = table
                    .columns
                    .iter()
                    .map(|(c, _)| (c.clone(), Value::Null))
                    .collect();
                e.extend(data);
                e.insert("UPDATED_AT".into(), at);
                e.insert("EXITED_AT".into(), exited);
                table.rows.insert(key, e);
                inserted += 1;
            }
            (Form::Delete, Some(_)) => {
                if matched_and_newer {
                    table.rows.remove(&key);
                    deleted += 1;
                }
            }
            (Form::Delete, None) => {}
        }
    }
    Ok((inserted, updated, deleted))
}
