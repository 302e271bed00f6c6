//! Resync and reconciliation against the fake App API: koala (and every
//! destination) driven to the segment's exact membership.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::app::*;
use crate::support::fake_app_api::*;
use crate::support::fake_meta::*;
use crate::support::wait::until;

const T0: i64 = 1_750_000_000;
const AUD: &str = "23850000000000";
const LONG: Duration = Duration::from_secs(60);

fn cio(api: &FakeAppApi, page_size: u32) -> String {
    format!(
        "app_api_key = \"{FAKE_APP_API_KEY}\"\napp_api_base_url = \"{}\"\napp_api_page_size = {page_size}\napp_api_max_attempts = 2\n",
        api.base_url()
    )
}

/// `meta_keys`: "phone" keeps Meta's default identifiers (with the phone).
fn config(api: &FakeAppApi, meta: &FakeMeta, page_size: u32, meta_keys: &str) -> String {
    let keys = if meta_keys == "phone" {
        ""
    } else {
        "identifiers = [\"extern_id\", \"email\"]"
    };
    base_config(&cio(api, page_size))
        + &meta.destination_toml("meta", keys)
        + &cart_audience(
            &format!(r#"{{ destination = "meta", audience_id = "{AUD}" }}"#),
            "mirror",
        )
}

fn member(i: &str) -> FakeMember {
    FakeMember::id(i)
        .with_email(&format!("{i}@example.com"))
        .with_cio_id(&format!("cio{i}"))
}

async fn resync(app: &TestApp, query: &str) -> Value {
    let (status, job) = app
        .admin_post(&format!("/v1/audiences/{CART}/resync{query}"), &json!({}))
        .await;
    assert_eq!(status, 202, "{job}");
    job
}

async fn finished(app: &TestApp, id: &str) -> Value {
    let path = format!("/v1/resyncs/{id}");
    let started = std::time::Instant::now();
    loop {
        let (_, job) = app.admin_get(&path).await;
        if job["phase"] == "done" || job["phase"] == "failed" {
            return job;
        }
        assert!(started.elapsed() < LONG, "resync did not finish: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_resync_adds_missing_members_and_removes_extra_ones_everywhere() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&api, &meta, 1000, "")).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    app.segment_event(CART_SEGMENT, "u2", "entered", T0).await;
    until("u1, u2 at Meta", LONG, || async {
        meta.members(AUD) == set(&["u1", "u2"])
    })
    .await;

    api.set_segment(
        CART_SEGMENT as u64,
        "cart",
        vec![member("u2"), member("u3")],
    );
    let job = resync(&app, "").await;
    let done = finished(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(done["phase"], "done", "{done}");
    assert_eq!(done["entered"], 1);
    assert_eq!(done["exited"], 1);
    assert_eq!(done["unchanged"], 1);
    assert_eq!(done["new_people"], 1);
    assert_eq!(done["members_seen"], 2);

    assert_eq!(app.members(CART).await, 2);
    until("Meta equals the segment", LONG, || async {
        meta.members(AUD) == set(&["u2", "u3"])
    })
    .await;
    let (_, u3) = app.admin_get("/v1/people/u3").await;
    assert_eq!(u3["history"][0]["source"], "resync");
    assert_eq!(u3["identifiers"]["email"], "u***@example.com");
    let (_, u1) = app.admin_get("/v1/people/u1").await;
    assert_eq!(u1["memberships"][0]["is_member"], false);
    assert_eq!(u1["history"][0]["source"], "resync");
    let (_, job) = app
        .admin_get(&format!("/v1/resyncs/{}", job["id"].as_str().unwrap()))
        .await;
    assert_eq!(job["destinations"][0]["in_sync"], true);
    app.stop().await;
}

#[tokio::test]
async fn a_dry_run_reports_what_would_change_and_changes_nothing() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&api, &meta, 1000, "")).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 at Meta", LONG, || async {
        meta.members(AUD) == set(&["u1"])
    })
    .await;
    let requests_before = meta.request_count();

    api.set_segment(
        CART_SEGMENT as u64,
        "cart",
        vec![member("u2"), member("u3")],
    );
    let job = resync(&app, "?dry_run=true").await;
    let done = finished(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(done["dry_run"], true);
    assert_eq!(done["entered"], 2);
    assert_eq!(done["exited"], 1);
    let sample = done["sample_entered"].to_string() + &done["sample_exited"].to_string();
    assert!(
        sample.contains("id=u2") && sample.contains("id=u1"),
        "{sample}"
    );
    assert!(
        !sample.contains("u2@example.com"),
        "samples are masked: {sample}"
    );

    assert_eq!(app.members(CART).await, 1);
    assert_eq!(app.admin_get("/v1/people/u2").await.0, 404);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(meta.request_count(), requests_before);
    app.stop().await;
}

#[tokio::test]
async fn a_second_request_returns_the_running_job() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&api, &meta, 10, "")).await;
    // 50 pages at 10 requests/second keep the first job running for seconds.
    api.set_generated_segment(CART_SEGMENT as u64, 500, "g");
    let first = resync(&app, "").await;
    let (status, second) = app
        .admin_post(&format!("/v1/audiences/{CART}/resync"), &json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["already_running"], true);
    let done = finished(&app, first["id"].as_str().unwrap()).await;
    assert_eq!(done["phase"], "done");
    assert_eq!(done["pages_fetched"], 50);
    assert_eq!(done["members_seen"], 500);
    assert_eq!(app.members(CART).await, 500);
    assert!(api.max_rate_observed() <= FAKE_RATE_LIMIT);
    app.stop().await;
}

#[tokio::test]
async fn newer_webhooks_racing_a_resync_win_and_older_ones_after_it_are_stale() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&api, &meta, 5, "")).await;
    // u9 is in the segment snapshot, u8 is not.
    let mut members: Vec<_> = (0..40).map(|i| member(&format!("m{i}"))).collect();
    members.push(member("u9"));
    api.set_segment(CART_SEGMENT as u64, "cart", members);
    let job = resync(&app, "").await;
    // While pages are being fetched, newer truth arrives by webhook.
    let later = chrono::Utc::now().timestamp() + 2;
    assert_eq!(
        app.segment_event(CART_SEGMENT, "u9", "exited", later)
            .await
            .0,
        200
    );
    assert_eq!(
        app.segment_event(CART_SEGMENT, "u8", "entered", later)
            .await
            .0,
        200
    );
    let done = finished(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(done["phase"], "done");

    let member_of = |p: Value| p["memberships"][0]["is_member"].as_bool();
    assert_eq!(
        member_of(app.admin_get("/v1/people/u9").await.1),
        Some(false)
    );
    assert_eq!(
        member_of(app.admin_get("/v1/people/u8").await.1),
        Some(true)
    );
    assert_eq!(
        member_of(app.admin_get("/v1/people/m3").await.1),
        Some(true)
    );

    // A webhook from before the snapshot, delivered late, changes nothing.
    let (_, late) = app.segment_event(CART_SEGMENT, "u7", "entered", T0).await;
    assert_eq!(late["audiences"][0]["outcome"], "stale", "{late}");
    let (_, late) = app.segment_event(CART_SEGMENT, "m3", "exited", T0).await;
    assert_eq!(late["audiences"][0]["outcome"], "stale", "{late}");
    assert_eq!(app.members(CART).await, 41); // 40 m's + u8
    app.stop().await;
}

#[tokio::test]
async fn an_app_api_outage_mid_resync_fails_the_job_and_leaves_state_consistent() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&api, &meta, 10, "")).await;
    app.segment_event(CART_SEGMENT, "old", "entered", T0).await;
    api.set_generated_segment(CART_SEGMENT as u64, 100, "g");
    api.fail_after_pages(3);
    let job = resync(&app, "").await;
    let failed = finished(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(failed["phase"], "failed", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("App API"),
        "{failed}"
    );
    assert_eq!(failed["pages_fetched"], 3);
    // Entries seen so far are true facts; no exit was applied from a
    // partial snapshot.
    let (_, old) = app.admin_get("/v1/people/old").await;
    assert_eq!(old["memberships"][0]["is_member"], true);
    assert_eq!(app.members(CART).await, 31);

    api.end_outage();
    let job = resync(&app, "").await;
    let done = finished(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(done["phase"], "done", "{done}");
    assert_eq!(app.members(CART).await, 100);
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_segment_fails_the_job_and_without_a_key_resync_is_refused() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&api, &meta, 10, "")).await;
    let job = resync(&app, "").await;
    let failed = finished(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(failed["phase"], "failed");
    app.stop().await;

    let app = TestApp::start().await;
    let (status, body) = app
        .admin_post(&format!("/v1/audiences/{CART}/resync"), &json!({}))
        .await;
    assert_eq!(status, 409);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("app_api_key"));
    assert_eq!(
        app.admin_post("/v1/audiences/nope/resync", &json!({}))
            .await
            .0,
        404
    );
    app.stop().await;
}

#[tokio::test]
async fn scheduled_reconciliation_applies_drift_and_reports_it() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    let cfg = config(&api, &meta, 100, "").replace(
        &format!("segment_id = {CART_SEGMENT}\n"),
        &format!("segment_id = {CART_SEGMENT}\nreconcile_every = \"1s\"\n"),
    );
    let app = TestApp::start_with(&cfg).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    api.set_segment(
        CART_SEGMENT as u64,
        "cart",
        vec![member("u1"), member("missed")],
    );
    until("drift reported", LONG, || async {
        app.audience(CART).await["reconcile"]["drift_entered"] == 1
    })
    .await;
    let a = app.audience(CART).await;
    assert_eq!(a["reconcile"]["drift_exited"], 0);
    assert_eq!(a["reconcile"]["every_seconds"], 1);
    assert_eq!(a["members"], 2);
    let m = app.metrics().await;
    assert!(
        metric_value(
            &m,
            "koala_reconcile_drift_total",
            &[("audience", CART), ("direction", "entered")]
        ) >= 1.0
    );
    until("missed reaches Meta", LONG, || async {
        meta.members(AUD).contains("missed")
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn the_cli_runs_a_resync_and_prints_a_summary() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    let cfg = config(&api, &meta, 1000, "");
    let app = TestApp::start_with(&cfg).await;
    api.set_segment(
        CART_SEGMENT as u64,
        "cart",
        vec![member("u1"), member("u2")],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("koala.toml");
    std::fs::write(&path, &cfg).unwrap();
    let run = |dry: bool| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_koala"));
        cmd.args(["resync", CART, "--config"])
            .arg(&path)
            .args(["--url", &app.base]);
        if dry {
            cmd.arg("--dry-run");
        }
        cmd.output()
    };
    let out = run(true).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("dry run") && text.contains("entered         2"),
        "{text}"
    );
    assert_eq!(app.members(CART).await, 0);

    let out = run(false).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(": done") && text.contains("entered         2"),
        "{text}"
    );
    assert_eq!(app.members(CART).await, 2);
    app.stop().await;
}

#[tokio::test]
async fn people_first_seen_in_a_resync_get_their_phone_from_the_app_api() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    // Meta's default identifiers include the phone, which the membership
    // listing does not carry.
    let app = TestApp::start_with(&config(&api, &meta, 1000, "phone")).await;
    api.set_segment(
        CART_SEGMENT as u64,
        "cart",
        vec![member("u5").with_phone("+14155550100")],
    );
    let job = resync(&app, "").await;
    let done = finished(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(done["phase"], "done", "{done}");
    assert_eq!(done["profiles_fetched"], 1);
    let (_, person) = app.admin_get("/v1/people/u5").await;
    assert_eq!(person["identifiers"]["phone"], "+*******0100");
    let phone_hash = koala::normalization::sha256_hex("14155550100");
    until("Meta has the phone", LONG, || async {
        meta.successful_requests().iter().any(|r| {
            let col = r.schema.iter().position(|c| c == "PHONE");
            col.is_some_and(|c| r.rows.iter().any(|row| row[c] == phone_hash))
        })
    })
    .await;
    app.stop().await;
}
