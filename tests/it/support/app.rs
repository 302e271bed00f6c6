//! A koala started on port 0 with its own SQLite file, and a client that
//! signs webhooks the way Customer.io does.

use std::path::PathBuf;
use std::sync::Arc;

use koala::app::RunningApp;
use koala::config::Config;
use koala::customerio::signature::sign;
use serde_json::{json, Value};

pub const WEBHOOK_KEY: &str = "whk_test_key_1";
pub const REPORTING_KEY: &str = "rep_test_key_1";
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123";

/// The audiences every test config starts with.
pub const CART: &str = "CIO__CartAbandon__0-4h__NoPurchase";
pub const CART_SEGMENT: i64 = 42;
pub const VIP: &str = "CIO__VIP__3plus";
pub const VIP_SEGMENT: i64 = 7;

pub struct TestApp {
    pub app: Option<RunningApp>,
    pub dir: Arc<tempfile::TempDir>,
    pub config_text: String,
    pub http: reqwest::Client,
    pub base: String,
}

/// The base config: two audiences, no destinations. `extra` is appended.
pub fn base_config(extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
[customerio]
webhook_signing_keys = ["old_rotated_key", "{WEBHOOK_KEY}"]
reporting_signing_keys = ["{REPORTING_KEY}"]
{extra}
[[audiences]]
name = "{VIP}"
segment_id = {VIP_SEGMENT}
"#
    )
}

/// The cart audience, syncing to the given destinations (TOML sync list).
pub fn cart_audience(sync: &str, mode: &str) -> String {
    format!(
        r#"
[[audiences]]
name = "{CART}"
segment_id = {CART_SEGMENT}
mode = "{mode}"
sync = [{sync}]
"#
    )
}

impl TestApp {
    pub async fn start() -> TestApp {
        Self::start_with(&base_config(&cart_audience("", "mirror"))).await
    }

    pub async fn start_with(config_text: &str) -> TestApp {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        Self::start_in(dir, config_text).await
    }

    /// Starts on an existing data directory (a restart).
    pub async fn start_in(dir: Arc<tempfile::TempDir>, config_text: &str) -> TestApp {
        let db: PathBuf = dir.path().join("koala.db");
        let mut config = Config::from_toml(config_text).expect("test config is valid");
        config.store.url = format!("sqlite://{}", db.display());
        let store = koala::store::open(&config.store.url)
            .await
            .expect("store opens");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = koala::app::start(config, listener, store)
            .await
            .expect("app starts");
        let base = app.base_url();
        TestApp {
            app: Some(app),
            dir,
            config_text: config_text.to_owned(),
            http: reqwest::Client::new(),
            base,
        }
    }

    /// Graceful stop, then a new app on the same data.
    pub async fn restart(mut self) -> TestApp {
        self.app.take().unwrap().shutdown().await.unwrap();
        Self::start_in(self.dir.clone(), &self.config_text).await
    }

    pub async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await.unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Posts a body signed with `key` at the current time.
    pub async fn post_signed(&self, path: &str, key: &str, body: &[u8]) -> reqwest::Response {
        signed_post(&self.http, &self.url(path), key, body)
            .send()
            .await
            .unwrap()
    }

    pub async fn segment_webhook(&self, body: &Value) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let r = self
            .post_signed("/webhooks/customerio/segments", WEBHOOK_KEY, &bytes)
            .await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn reporting_webhook(&self, body: &Value) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let r = self
            .post_signed("/webhooks/customerio/reporting", REPORTING_KEY, &bytes)
            .await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `person` enters or exits `segment` at `at` (unix seconds).
    pub async fn segment_event(
        &self,
        segment: i64,
        person: &str,
        action: &str,
        at: i64,
    ) -> (u16, Value) {
        self.segment_webhook(&segment_body(segment, person, action, at))
            .await
    }

    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn admin_post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the first destination is paused; returns why.
    pub async fn paused_reason(&self) -> String {
        crate::support::wait::until(
            "the destination paused",
            std::time::Duration::from_secs(30),
            || async {
                let (_, d) = self.admin_get("/v1/destinations").await;
                d["destinations"][0]["status"]["paused"] == true
            },
        )
        .await;
        let (_, d) = self.admin_get("/v1/destinations").await;
        d["destinations"][0]["status"]["paused_reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn audience(&self, name: &str) -> Value {
        let (status, body) = self.admin_get(&format!("/v1/audiences/{name}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn members(&self, name: &str) -> i64 {
        self.audience(name).await["members"].as_i64().unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// A POST of `body` to `url` signed with `key` at the current time, the way
/// Customer.io signs its webhooks.
pub fn signed_post(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: &[u8],
) -> reqwest::RequestBuilder {
    let ts = chrono::Utc::now().timestamp().to_string();
    http.post(url)
        .header("content-type", "application/json")
        .header("x-cio-timestamp", &ts)
        .header("x-cio-signature", sign(key, &ts, body))
        .body(body.to_vec())
}

/// The README's Liquid body rendered the way Customer.io would: each
/// `{{ … }}` replaced by `value(expression)`, then its filters applied
/// (`replace`, `strip_newlines`; `date` is the value's own business).
pub fn render_readme_template(value: impl Fn(&str) -> String) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("```liquid")
        .expect("README has the Liquid body")
        + "```liquid".len();
    let end = start + readme[start..].find("```").unwrap();
    let mut rest = &readme[start..end];
    let mut body = String::new();
    while let Some(open) = rest.find("{{") {
        body.push_str(&rest[..open]);
        let close = open + rest[open..].find("}}").unwrap();
        let mut parts = rest[open + 2..close].split('|').map(str::trim);
        let mut v = value(parts.next().unwrap());
        for filter in parts {
            if filter == "strip_newlines" {
                v = v.replace(['\n', '\r'], "");
            } else if let Some(args) = filter.strip_prefix("replace:") {
                let args: Vec<&str> = args
                    .split(',')
                    .map(|a| a.trim().trim_matches('\''))
                    .collect();
                v = v.replace(args[0], args[1]);
            } else if !filter.starts_with("date:") {
                panic!("the test does not know the filter {filter}");
            }
        }
        body.push_str(&v);
        rest = &rest[close + 2..];
    }
    body.push_str(rest);
    body
}

/// The body the README's Liquid template renders, for person `u-{person}`.
pub fn segment_body(segment: i64, person: &str, action: &str, at: i64) -> Value {
    json!({
        "segment_id": segment,
        "action": action,
        "occurred_at": at,
        "identifiers": {
            "id": person,
            "cio_id": format!("cio{person}"),
            "email": format!("{person}@example.com"),
            "phone": ""
        },
        "attributes": { "first_name": "Ann", "plan": "gold" },
        "campaign_id": 11
    })
}

/// A metric's value summed over the label sets that contain `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let metric = l.split(['{', ' ']).next().unwrap_or("");
            metric == name
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Commits changes of people `p{i}` (id `p{i}`, email `p{i}@example.com`)
/// straight through the store — the same transaction code the webhook path
/// uses — then wakes the engine.
pub async fn bulk_changes(
    app: &TestApp,
    range: std::ops::Range<usize>,
    action: koala::customerio::segment::SegmentAction,
    at: i64,
) {
    let state = app.app.as_ref().unwrap().state();
    let audiences = state.catalog.for_segment(CART_SEGMENT).to_vec();
    let people: Vec<usize> = range.collect();
    for chunk in people.chunks(1000) {
        let commands: Vec<_> = chunk
            .iter()
            .map(|i| koala::store::IngestCommand::Segment {
                event: koala::customerio::segment::SegmentEvent {
                    segment_id: CART_SEGMENT,
                    action,
                    occurred_at_ms: at * 1000,
                    identifiers: koala::identity::Identifiers::new(
                        Some(&format!("p{i}")),
                        None,
                        Some(&format!("p{i}@example.com")),
                        None,
                    )
                    .unwrap(),
                    attributes: Default::default(),
                    campaign_id: None,
                },
                audiences: audiences.clone(),
            })
            .collect();
        for r in state
            .store
            .apply_batch(&commands, koala::store::now_ms())
            .await
            .unwrap()
        {
            r.unwrap();
        }
    }
    state.engine.wake_all();
}
