//! deploy/: the Grafana dashboard and the Prometheus alert rules only
//! reference metrics koala exports. Every koala_* series named in their
//! PromQL is made to appear by real traffic (webhooks of every outcome, a
//! Meta destination against the fake, a paused one, a scheduled
//! reconciliation against the fake App API) and then looked up in /metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::app::*;
use crate::support::fake_app_api::*;
use crate::support::fake_meta::*;
use crate::support::wait::until;

const AUD: &str = "23850000000000";
const AUD_DOWN: &str = "23850000000099";
const LONG: Duration = Duration::from_secs(8);
const DASHBOARD: &str = "deploy/grafana/koala.json";
const ALERTS: &str = "deploy/prometheus/alerts.yaml";

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every PromQL expression of the dashboard: panel targets (rows included)
/// and the variables' queries (`label_values(SELECTOR, label)`).
fn dashboard_expressions() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard is JSON");
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((format!("dashboard panel {:?}", p["title"]), expr.to_owned()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" {
            continue;
        }
        let query = v["query"]["query"].as_str().or(v["query"].as_str());
        if let Some(query) = query {
            out.push((
                format!("dashboard variable {}", v["name"]),
                query.to_owned(),
            ));
        }
    }
    out
}

/// Every rule's expression in the alert rules file.
fn alert_expressions() -> Vec<(String, String)> {
    let rules: serde_yaml::Value = serde_yaml::from_str(&read(ALERTS)).expect("alerts are YAML");
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .expect("a rule has alert or record");
            let expr = rule["expr"].as_str().expect("a rule has an expr");
            out.push((format!("alert rule {name}"), expr.to_owned()));
        }
    }
    out
}

/// The koala_* names in a PromQL expression (recording rules such as
/// `koala:…` are not koala's metrics and are not matched).
fn koala_names(expr: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("koala_") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let end = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
        if !before.is_some_and(is_name) {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// Referenced series name → where it is used.
fn referenced() -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (place, expr) in dashboard_expressions()
        .into_iter()
        .chain(alert_expressions())
    {
        for name in koala_names(&expr) {
            out.entry(name).or_default().push(place.clone());
        }
    }
    out
}

/// The series names with at least one sample in a scrape, and the metric
/// families' types from `# TYPE` lines.
fn scraped(text: &str) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let mut series = BTreeSet::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut parts = t.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                types.insert(name.to_owned(), kind.to_owned());
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            series.insert(name.to_owned());
        }
    }
    (series, types)
}

/// The family a series belongs to: `x_bucket`/`x_sum`/`x_count` belong to
/// the histogram `x` when the scrape declares one, else the name is its own.
fn family(name: &str, types: &BTreeMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types
                .get(base)
                .is_some_and(|t| t == "histogram" || t == "summary")
            {
                return base.to_owned();
            }
        }
    }
    name.to_owned()
}

#[test]
fn the_dashboard_and_the_rules_name_koala_metrics() {
    let refs = referenced();
    // The extraction works: the metrics the issue asks for are there.
    for name in [
        "koala_webhooks_total",
        "koala_webhook_signature_failures_total",
        "koala_ingest_seconds_bucket",
        "koala_delivery_receipt_to_ack_seconds_bucket",
        "koala_destination_pending",
        "koala_destination_oldest_pending_seconds",
        "koala_destination_batch_size_bucket",
        "koala_destination_retries_total",
        "koala_dead_letters_total",
        "koala_destination_paused",
        "koala_audience_members",
        "koala_destination_unmatched_total",
        "koala_reconcile_last_drift",
    ] {
        assert!(
            refs.contains_key(name),
            "{name} is not referenced: {refs:?}"
        );
    }
    let alerts: Vec<_> = alert_expressions();
    assert!(alerts.len() >= 8, "{alerts:?}");
    assert_eq!(
        koala_names("rate(koala_a_total[5m]) > koala:threshold + xkoala_b"),
        BTreeSet::from(["koala_a_total".to_owned()])
    );
}

#[test]
fn every_alert_has_a_severity_and_a_summary() {
    let rules: serde_yaml::Value = serde_yaml::from_str(&read(ALERTS)).unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            let severity = rule["labels"]["severity"].as_str();
            assert!(
                matches!(severity, Some("critical" | "warning")),
                "{name}: severity {severity:?}"
            );
            assert!(
                rule["annotations"]["summary"].as_str().is_some()
                    && rule["annotations"]["description"].as_str().is_some(),
                "{name}: summary and description"
            );
        }
    }
}

/// A series (by name and labels) and the least value it must reach.
type Wanted = (&'static str, &'static [(&'static str, &'static str)], f64);

fn config(meta: &FakeMeta, down: &FakeMeta, api: &FakeAppApi) -> String {
    let cio = format!(
        "app_api_key = \"{FAKE_APP_API_KEY}\"\napp_api_base_url = \"{}\"\napp_api_max_attempts = 1\n",
        api.base_url()
    );
    base_config(&cio).replace(
        &format!("segment_id = {VIP_SEGMENT}\n"),
        &format!("segment_id = {VIP_SEGMENT}\nreconcile_every = \"1s\"\n"),
    )
        // No phone: a person known only by phone is unmatched here.
        + &meta.destination_toml("meta", "identifiers = [\"extern_id\", \"email\"]\nrequest_timeout = \"2s\"")
        + &down.destination_toml("meta_down", "request_timeout = \"2s\"")
        + &format!(
            r#"
[[audiences]]
name = "{CART}"
segment_id = {CART_SEGMENT}
sync = [{{ destination = "meta", audience_id = "{AUD}" }}, {{ destination = "meta_down", audience_id = "{AUD_DOWN}" }}]
"#
        )
        // Pruning every second, so its gauges are there to scrape.
        + "\n[retention]\ninterval = \"1s\"\n"
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_rules_reference_is_exported() {
    let meta = FakeMeta::start().await;
    let down = FakeMeta::start().await;
    // Every call to this one says the token expired: it pauses.
    down.reject_all(190);
    let api = FakeAppApi::start().await;
    let member = |i: &str| {
        FakeMember::id(i)
            .with_email(&format!("{i}@example.com"))
            .with_cio_id(&format!("cio{i}"))
    };
    // The VIP segment as Customer.io holds it: someone koala never heard
    // of, so its scheduled reconciliation (every second) finds drift. The
    // cart audience, which the webhooks below drive, is not reconciled, so
    // nothing races with them.
    api.set_segment(VIP_SEGMENT as u64, "vip", vec![member("missed")]);
    // Meta's first answers: a throttle (retry), a refusal (dead letter), a
    // success that reports an invalid row.
    meta.push_response(ScriptedResponse::throttle());
    meta.push_response(ScriptedResponse::invalid_parameter());
    meta.push_response(ScriptedResponse::Reply {
        status: 200,
        body: json!({"audience_id": AUD, "session_id": "1", "num_received": 1,
            "num_invalid_entries": 1, "invalid_entry_samples": {}})
        .to_string(),
        retry_after: None,
    });
    let app = TestApp::start_with(&config(&meta, &down, &api)).await;
    let now = chrono::Utc::now().timestamp();

    // Webhooks: accepted, duplicate, stale, ignored, bad signature, reporting.
    let (status, _) = app.segment_event(CART_SEGMENT, "u1", "entered", now).await;
    assert_eq!(status, 200);
    until("u1's add was retried and dead-lettered", LONG, || async {
        let m = app.metrics().await;
        metric_value(&m, "koala_destination_retries_total", &[]) >= 1.0
            && metric_value(&m, "koala_dead_letters_total", &[]) >= 1.0
    })
    .await;
    let body = segment_body(CART_SEGMENT, "u2", "entered", now);
    assert_eq!(app.segment_webhook(&body).await.1["status"], "accepted");
    until("u2's add was acknowledged", LONG, || async {
        let m = app.metrics().await;
        metric_value(
            &m,
            "koala_destination_requests_total",
            &[
                ("destination", "meta"),
                ("op", "add"),
                ("outcome", "success"),
            ],
        ) >= 1.0
    })
    .await;
    assert_eq!(app.segment_webhook(&body).await.1["status"], "duplicate");
    let (_, stale) = app
        .segment_event(CART_SEGMENT, "u2", "exited", now - 60)
        .await;
    assert_eq!(stale["audiences"][0]["outcome"], "stale", "{stale}");
    let (_, ignored) = app.segment_event(999, "u3", "entered", now).await;
    assert_eq!(ignored["status"], "ignored");
    let bytes = serde_json::to_vec(&segment_body(CART_SEGMENT, "u4", "entered", now)).unwrap();
    let refused = app
        .post_signed("/webhooks/customerio/segments", "not-the-key", &bytes)
        .await;
    assert_eq!(refused.status().as_u16(), 401);
    let (status, _) = app
        .reporting_webhook(
            &json!({"event_id": "e1", "object_type": "email", "metric": "opened",
            "timestamp": now, "data": {"identifiers": {"id": "u1"}, "delivery_id": "d1"}}),
        )
        .await;
    assert_eq!(status, 200);
    // Known only by phone: Meta here is configured without phone.
    let (status, _) = app
        .segment_webhook(&json!({"segment_id": CART_SEGMENT, "action": "entered",
            "occurred_at": now, "identifiers": {"phone": "+15551234567"}}))
        .await;
    assert_eq!(status, 200);
    // A phone without its country code: accepted, noted as unusable.
    let (status, _) = app
        .segment_webhook(&json!({"segment_id": CART_SEGMENT, "action": "entered",
            "occurred_at": now, "identifiers": {"id": "u-national", "phone": "5551234567"}}))
        .await;
    assert_eq!(status, 200);
    // An exit after the add, so a remove is sent too.
    let (status, _) = app
        .segment_event(CART_SEGMENT, "u2", "exited", now + 1)
        .await;
    assert_eq!(status, 200);

    // What the rest of the traffic must have caused before the scrape.
    let wanted: &[Wanted] = &[
        ("koala_destination_invalid_entries_total", &[], 1.0),
        ("koala_destination_unmatched_total", &[], 1.0),
        (
            "koala_destination_paused",
            &[("destination", "meta_down")],
            1.0,
        ),
        ("koala_reconcile_drift_total", &[], 1.0),
        ("koala_destination_requests_total", &[("op", "remove")], 1.0),
        ("koala_audience_members", &[], 1.0),
        ("koala_store_prune_last_pass_timestamp_seconds", &[], 1.0),
    ];
    let started = std::time::Instant::now();
    loop {
        let m = app.metrics().await;
        let unmet: Vec<_> = wanted
            .iter()
            .filter(|(name, labels, min)| metric_value(&m, name, labels) < *min)
            .collect();
        if unmet.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < LONG,
            "traffic did not produce {unmet:?}; scrape:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let text = app.metrics().await;
    let (series, types) = scraped(&text);
    let mut missing = Vec::new();
    let mut report = Vec::new();
    for (name, places) in referenced() {
        let fam = family(&name, &types);
        if series.contains(&name) {
            report.push(format!("{name:<50} present after traffic (family {fam})"));
        } else {
            missing.push(format!("{name} (family {fam}), used by {places:?}"));
        }
    }
    println!(
        "checked by scraping /metrics after real traffic:\n{}",
        report.join("\n")
    );
    assert!(
        missing.is_empty(),
        "referenced by deploy/ but not exported by koala:\n{}\n\nscrape:\n{text}",
        missing.join("\n")
    );
    app.stop().await;
}
