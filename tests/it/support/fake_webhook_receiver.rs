//! A Standard Webhooks receiver (<https://www.standardwebhooks.com/>) on
//! 127.0.0.1:0, strict the way a careful receiver is: it VERIFIES
//! `webhook-signature` (any space-separated `v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">` entry matching one of its `whsec_` secrets;
//! otherwise 401), refuses a `webhook-timestamp` more than 5 minutes off
//! (400), dedupes on `webhook-id` (a duplicate is answered 200, counted,
//! not applied), and holds members per audience from koala's payload.
//! Answers can be scripted (429 with Retry-After, 503, 410, 400), and a
//! scripted answer can be given after applying (a lost acknowledgement).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// Two secrets in `whsec_` form (24 random-looking bytes each).
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const NEW_SECRET: &str = "whsec_bmV3LXNlY3JldC1mb3Itcm90YXRpb24tMDE=";
pub const TOLERANCE_SECS: i64 = 5 * 60;

#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub status: u16,
    /// Which of the receiver's secrets verified the request (indexes).
    pub verified_by: Vec<usize>,
    pub duplicate: bool,
    pub body: Value,
}

#[derive(Debug, Clone, Copy)]
pub struct Scripted {
    pub status: u16,
    pub retry_after: Option<u64>,
    /// Apply the batch, then answer `status` anyway (the answer is lost).
    pub apply: bool,
    /// Wait this long before answering (after applying, when `apply`).
    pub delay: std::time::Duration,
}

struct State_ {
    keys: Vec<Vec<u8>>,
    script: VecDeque<Scripted>,
    seen: HashSet<String>,
    duplicates: usize,
    rejected: Vec<(u16, String)>,
    deliveries: Vec<Delivery>,
    /// audience name → member id (or cio_id) → the member as last sent.
    members: BTreeMap<String, BTreeMap<String, Value>>,
}

type Shared = Arc<Mutex<State_>>;

pub struct FakeWebhookReceiver {
    addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeWebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn decode(secret: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ form"))
        .expect("base64")
}

/// The documented signature of one request with one secret.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&decode(secret)).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

impl FakeWebhookReceiver {
    /// Verifies with each of `secrets` (`whsec_…`).
    pub async fn start(secrets: &[&str]) -> FakeWebhookReceiver {
        let state: Shared = Arc::new(Mutex::new(State_ {
            keys: secrets.iter().map(|s| decode(s)).collect(),
            script: VecDeque::new(),
            seen: HashSet::new(),
            duplicates: 0,
            rejected: Vec::new(),
            deliveries: Vec::new(),
            members: BTreeMap::new(),
        }));
        let app = Router::new().fallback(route).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("fake webhook receiver");
        });
        FakeWebhookReceiver { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/koala", self.addr)
    }

    /// A `[[destinations]]` table for this receiver, signing with
    /// `secrets`, short backoffs.
    pub fn destination_toml(&self, name: &str, secrets: &[&str], extra: &str) -> String {
        let secrets: Vec<String> = secrets.iter().map(|s| format!("{s:?}")).collect();
        format!(
            r#"
[[destinations]]
name = "{name}"
type = "webhook"
url = "{}"
allow_http = true
secrets = [{}]
request_timeout = "2s"
base_backoff = "20ms"
max_backoff = "200ms"
{extra}
"#,
            self.url(),
            secrets.join(", ")
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
            delay: std::time::Duration::ZERO,
        });
    }

    /// The next request is applied, then answered `status`.
    pub fn push_after_applying(&self, status: u16) {
        self.push_after_applying_retry_after(status, None);
    }

    /// The next request is applied, then answered `status` with a
    /// `Retry-After` of `secs` (a lost acknowledgement and a wait).
    pub fn push_after_applying_retry_after(&self, status: u16, secs: Option<u64>) {
        self.push_after_applying_slowly(status, secs, std::time::Duration::ZERO);
    }

    /// The next request is applied at once, answered `status` (with a
    /// `Retry-After` of `secs`) only after `delay`: the change has landed
    /// while the sender still waits, and then its answer is lost.
    pub fn push_after_applying_slowly(
        &self,
        status: u16,
        secs: Option<u64>,
        delay: std::time::Duration,
    ) {
        self.state().script.push_back(Scripted {
            status,
            retry_after: secs,
            apply: true,
            delay,
        });
    }

    /// Member ids (or `cio:` + cio_id) in `audience`.
    pub fn members(&self, audience: &str) -> BTreeSet<String> {
        self.state()
            .members
            .get(audience)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn member(&self, audience: &str, id: &str) -> Option<Value> {
        self.state().members.get(audience)?.get(id).cloned()
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state().deliveries.clone()
    }

    pub fn duplicates(&self) -> usize {
        self.state().duplicates
    }

    /// Requests refused before reading them (status, why).
    pub fn rejected(&self) -> Vec<(u16, String)> {
        self.state().rejected.clone()
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Standard Webhooks verification; the indexes of the keys that matched.
fn verify(
    keys: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, Vec<usize>), (u16, String)> {
    let id = header(headers, "webhook-id").ok_or((400, "no webhook-id".to_owned()))?;
    let ts: i64 = header(headers, "webhook-timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or((400, "no webhook-timestamp".to_owned()))?;
    if (chrono::Utc::now().timestamp() - ts).abs() > TOLERANCE_SECS {
        return Err((400, "timestamp outside the tolerance".into()));
    }
    let sig = header(headers, "webhook-signature").ok_or((401, "no signature".to_owned()))?;
    let offered: Vec<&str> = sig.split(' ').collect();
    let mut matched = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let mut mac = Hmac::<Sha256>::new_from_slice(k).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        let expected = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        if offered.contains(&expected.as_str()) {
            matched.push(i);
        }
    }
    if matched.is_empty() {
        return Err((401, "no signature verifies".into()));
    }
    Ok((id.to_owned(), matched))
}

fn apply(s: &mut State_, body: &Value) {
    let audience = body["audience"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let members = s.members.entry(audience).or_default();
    for m in body["members"].as_array().into_iter().flatten() {
        let key = match (m["id"].as_str(), m["cio_id"].as_str()) {
            (Some(id), _) => id.to_owned(),
            (None, Some(cio)) => format!("cio:{cio}"),
            _ => continue,
        };
        match body["type"].as_str() {
            Some("audience.members_added") => {
                members.insert(key, m.clone());
            }
            // An update is of a member the receiver holds: its attributes.
            Some("audience.members_updated") => {
                if let Some(held) = members.get_mut(&key) {
                    *held = m.clone();
                }
            }
            Some("audience.members_removed") => {
                members.remove(&key);
            }
            _ => {}
        }
    }
}

async fn route(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    // The lock is never held across the wait.
    let (response, delay) = answer(&state, &headers, &body);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    response
}

fn answer(state: &Shared, headers: &HeaderMap, body: &Bytes) -> (Response, std::time::Duration) {
    let none = std::time::Duration::ZERO;
    let mut s = state.lock().unwrap();
    let (id, verified_by) = match verify(&s.keys, headers, body) {
        Ok(v) => v,
        Err((status, why)) => {
            s.rejected.push((status, why.clone()));
            return (
                (StatusCode::from_u16(status).unwrap(), why).into_response(),
                none,
            );
        }
    };
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return ((StatusCode::BAD_REQUEST, "not JSON").into_response(), none),
    };
    let record = |s: &mut State_, status: u16, duplicate: bool| {
        s.deliveries.push(Delivery {
            id: id.clone(),
            status,
            verified_by: verified_by.clone(),
            duplicate,
            body: v.clone(),
        })
    };
    if let Some(sc) = s.script.pop_front() {
        if sc.apply {
            apply(&mut s, &v);
            s.seen.insert(id.clone());
        }
        record(&mut s, sc.status, false);
        let mut r = (StatusCode::from_u16(sc.status).unwrap(), "scripted").into_response();
        if let Some(after) = sc.retry_after {
            r.headers_mut()
                .insert("retry-after", after.to_string().parse().unwrap());
        }
        return (r, sc.delay);
    }
    if s.seen.contains(&id) {
        s.duplicates += 1;
        record(&mut s, 200, true);
        return (StatusCode::OK.into_response(), none);
    }
    apply(&mut s, &v);
    s.seen.insert(id.clone());
    record(&mut s, 204, false);
    (StatusCode::NO_CONTENT.into_response(), none)
}
