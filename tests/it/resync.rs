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
    // Coverage is kept with every change, the lookup's included.
    let coverage = &app.audience(CART).await["identifier_coverage"];
    assert_eq!(coverage["with_phone"], 1, "{coverage}");
    assert_eq!(coverage["with_email"], 1, "{coverage}");
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

// ---- full replace (`?replace=meta`: Meta's usersreplace with a session) ----

/// Like `config`, with more keys for the Meta destination.
fn replace_config(api: &FakeAppApi, meta: &FakeMeta, meta_extra: &str) -> String {
    base_config(&cio(api, 1000))
        + &meta.destination_toml(
            "meta",
            &format!("identifiers = [\"extern_id\", \"email\"]\n{meta_extra}"),
        )
        + &cart_audience(
            &format!(r#"{{ destination = "meta", audience_id = "{AUD}" }}"#),
            "mirror",
        )
}

/// koala has `people` (by webhook) and Meta has them beside `stale`.
async fn connected(app: &TestApp, meta: &FakeMeta, stale: &[&str], people: &[&str]) {
    for p in people {
        app.segment_event(CART_SEGMENT, p, "entered", T0).await;
    }
    let want: BTreeSet<String> = stale.iter().chain(people).map(|s| s.to_string()).collect();
    until(
        "koala's members at Meta beside the stale ones",
        LONG,
        || async { meta.members(AUD) == want },
    )
    .await;
}

fn acknowledged(audience: &Value) -> Value {
    audience["destinations"][0]["acknowledged_members"].clone()
}

#[tokio::test]
async fn a_replace_makes_an_existing_meta_audience_hold_exactly_koalas_members() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    // The Meta audience existed before koala: it holds people koala never had.
    meta.set_members(AUD, &["x1", "x2"]);
    let app = TestApp::start_with(&replace_config(&api, &meta, "")).await;
    connected(&app, &meta, &["x1", "x2"], &["u1", "u2"]).await;
    api.set_segment(
        CART_SEGMENT as u64,
        "cart",
        vec![member("u1"), member("u2")],
    );

    let job = resync(&app, "?replace=meta").await;
    assert_eq!(job["replace"], json!(["meta"]), "{job}");
    let done = finished(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(done["phase"], "done", "{done}");
    let r = &done["replaced"][0];
    assert_eq!(r["destination"], "meta", "{done}");
    assert_eq!(r["platform_audience_id"], AUD);
    assert_eq!(r["done"], true);
    assert_eq!(r["batches"], 1);
    assert_eq!(r["rows"], 2);

    assert_eq!(meta.members(AUD), set(&["u1", "u2"]));
    let replaces = meta.replace_requests();
    assert_eq!(replaces.len(), 1);
    assert_eq!(replaces[0].method, "POST");
    assert_eq!(replaces[0].rows.len(), 2);
    let session = replaces[0].session.clone().unwrap();
    assert_eq!(session["batch_seq"], 1);
    assert_eq!(session["last_batch_flag"], true);
    assert_eq!(session["estimated_num_total"], 2);
    assert!(session["session_id"].as_u64().unwrap() < 1 << 53);
    assert_eq!(session["session_id"], r["session_id"]);
    assert_eq!(acknowledged(&app.audience(CART).await), 2);

    // The normal path goes on afterwards: an exit is a DELETE.
    let later = chrono::Utc::now().timestamp() + 2;
    app.segment_event(CART_SEGMENT, "u1", "exited", later).await;
    until("u1 removed from Meta", LONG, || async {
        meta.members(AUD) == set(&["u2"])
    })
    .await;
    assert!(meta
        .successful_requests()
        .iter()
        .any(|r| r.method == "DELETE" && !r.replace && r.rows.iter().any(|row| row[0] == "u1")));
    until("acknowledged members 1", LONG, || async {
        acknowledged(&app.audience(CART).await) == 1
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_replace_must_name_a_destination_of_the_audience_and_is_no_dry_run() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    let app = TestApp::start_with(&replace_config(&api, &meta, "")).await;
    let path = format!("/v1/audiences/{CART}/resync");
    let (status, body) = app
        .admin_post(&format!("{path}?replace=meta&dry_run=true"), &json!({}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dry_run"),
        "{body}"
    );
    let (status, body) = app
        .admin_post(&format!("{path}?replace=meta,nope"), &json!({}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"nope\""),
        "{body}"
    );
    // No job was started by either.
    assert!(app.audience(CART).await["last_resync"].is_null());

    // An empty audience: nothing to send, Meta is left as it is.
    meta.set_members(AUD, &["x1"]);
    api.set_segment(CART_SEGMENT as u64, "cart", vec![]);
    let job = resync(&app, "?replace=meta").await;
    let done = finished(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(done["phase"], "done", "{done}");
    assert!(
        done["replaced"][0]["note"]
            .as_str()
            .unwrap()
            .contains("nothing to replace"),
        "{done}"
    );
    assert_eq!(meta.replace_requests().len(), 0);
    assert_eq!(meta.members(AUD), set(&["x1"]));
    app.stop().await;
}

#[tokio::test]
async fn a_replace_needs_an_existing_platform_audience() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    let cfg = base_config(&cio(&api, 1000))
        + &meta.destination_toml("meta", "identifiers = [\"extern_id\", \"email\"]")
        + &cart_audience(r#"{ destination = "meta" }"#, "mirror");
    let app = TestApp::start_with(&cfg).await;
    // Nobody ever entered: koala has not created a Meta audience either.
    api.set_segment(CART_SEGMENT as u64, "cart", vec![]);
    let job = resync(&app, "?replace=meta").await;
    let failed = finished(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(failed["phase"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("no platform audience id"),
        "{failed}"
    );
    assert!(meta.created_audiences().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn the_cli_replaces_with_replace_and_refuses_it_with_dry_run() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    meta.set_members(AUD, &["x1"]);
    let cfg = replace_config(&api, &meta, "");
    let app = TestApp::start_with(&cfg).await;
    api.set_segment(CART_SEGMENT as u64, "cart", vec![member("u1")]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("koala.toml");
    std::fs::write(&path, &cfg).unwrap();
    let run = |extra: &'static [&'static str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_koala"))
            .args(["resync", CART, "--config"])
            .arg(&path)
            .args(["--url", &app.base])
            .args(extra)
            .output()
    };
    let out = run(&["--replace", "meta", "--dry-run"]).await.unwrap();
    assert!(!out.status.success());
    let out = run(&["--replace", "meta"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("replace meta: replaced: 1 people"), "{text}");
    assert_eq!(meta.members(AUD), set(&["u1"]));
    app.stop().await;
}

#[tokio::test]
async fn a_throttled_replace_batch_is_retried_and_the_replace_completes() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    meta.set_members(AUD, &["x1"]);
    let app = TestApp::start_with(&replace_config(&api, &meta, "")).await;
    connected(&app, &meta, &["x1"], &["u1", "u2"]).await;
    api.set_segment(
        CART_SEGMENT as u64,
        "cart",
        vec![member("u1"), member("u2")],
    );
    meta.push_response(ScriptedResponse::throttle());
    let job = resync(&app, "?replace=meta").await;
    let done = finished(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(done["phase"], "done", "{done}");
    assert_eq!(done["replaced"][0]["retries"], 1, "{done}");
    assert_eq!(done["replaced"][0]["batches"], 1, "{done}");
    let replaces = meta.replace_requests();
    assert_eq!(replaces.len(), 2);
    assert_eq!(replaces[0].status, 400);
    assert_eq!(replaces[1].status, 200);
    // The retry is the same batch of the same session.
    assert_eq!(replaces[0].session, replaces[1].session);
    assert_eq!(meta.members(AUD), set(&["u1", "u2"]));
    app.stop().await;
}

#[tokio::test]
async fn a_replace_refused_part_way_fails_the_job_and_every_member_is_added_again() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    meta.set_members(AUD, &["x1"]);
    // One person per request: three batches in the session.
    let app = TestApp::start_with(&replace_config(&api, &meta, "max_batch = 1")).await;
    connected(&app, &meta, &["x1"], &["u1", "u2", "u3"]).await;
    api.set_segment(
        CART_SEGMENT as u64,
        "cart",
        vec![member("u1"), member("u2"), member("u3")],
    );
    let before = meta.request_count();
    // Batch 1 goes through, batch 2 is refused.
    meta.push_response(ScriptedResponse::delay(Duration::ZERO));
    meta.push_response(ScriptedResponse::invalid_parameter());
    let job = resync(&app, "?replace=meta").await;
    let failed = finished(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(failed["phase"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("meta error 100"), "{error}");
    assert_eq!(failed["replaced"][0]["done"], false);
    assert_eq!(failed["replaced"][0]["batches"], 1);
    // The session never had its last batch: Meta kept what it had.
    assert_eq!(meta.open_sessions(), 1);

    // What Meta holds is unknown to koala now: every member goes again
    // through the normal /users path.
    until("every member added again", LONG, || async {
        let again: BTreeSet<String> = meta.requests()[before..]
            .iter()
            .filter(|r| !r.replace && r.method == "POST" && r.status == 200)
            .flat_map(|r| r.rows.iter().map(|row| row[0].clone()))
            .collect();
        again == set(&["u1", "u2", "u3"])
    })
    .await;
    let members = meta.members(AUD);
    assert!(set(&["u1", "u2", "u3"]).is_subset(&members), "{members:?}");
    until("acknowledged members 3", LONG, || async {
        acknowledged(&app.audience(CART).await) == 3
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn the_fake_meta_holds_replace_sessions_to_their_contract() {
    let meta = FakeMeta::start().await;
    meta.set_members(AUD, &["x1"]);
    let http = reqwest::Client::new();
    let url = format!("{}/v25.0/{AUD}/usersreplace", meta.base_url());
    let send = |session: Value, id: &str| {
        let body = json!({
            "session": session,
            "payload": {"schema": ["EXTERN_ID"], "is_raw": true, "data": [[id]]},
        });
        http.post(&url)
            .bearer_auth(FAKE_META_TOKEN)
            .json(&body)
            .send()
    };
    let session = |seq: u64, last: bool| json!({"session_id": 77, "batch_seq": seq, "last_batch_flag": last, "estimated_num_total": 2});
    // No session, a session starting past 1, a field missing: refused.
    assert_eq!(send(Value::Null, "a").await.unwrap().status(), 400);
    assert_eq!(send(session(2, false), "a").await.unwrap().status(), 400);
    let mut partial = session(1, false);
    partial
        .as_object_mut()
        .unwrap()
        .remove("estimated_num_total");
    assert_eq!(send(partial, "a").await.unwrap().status(), 400);
    // In order: nothing changes until the last batch, then it all does.
    let first = send(session(1, false), "a").await.unwrap();
    assert_eq!(first.status(), 200);
    let answer: Value = first.json().await.unwrap();
    assert_eq!(answer["session_id"], "77");
    assert_eq!(answer["num_received"], 1);
    assert_eq!(meta.members(AUD), set(&["x1"]));
    assert_eq!(send(session(3, true), "b").await.unwrap().status(), 400);
    assert_eq!(send(session(2, true), "b").await.unwrap().status(), 200);
    assert_eq!(meta.members(AUD), set(&["a", "b"]));
    assert_eq!(meta.open_sessions(), 0);
}

// ---- profile lookups in bulk (Meta's default identifiers need the phone) ----

/// For each time Meta was sent `extern_id` through `/users` (not a
/// replace): whether that row carried a phone.
fn users_sends(meta: &FakeMeta, extern_id: &str) -> Vec<bool> {
    let mut sends = Vec::new();
    for r in meta.successful_requests() {
        if r.replace || r.method != "POST" {
            continue;
        }
        let id = r.schema.iter().position(|c| c == "EXTERN_ID");
        let phone = r.schema.iter().position(|c| c == "PHONE");
        for row in &r.rows {
            if id.is_some_and(|c| row[c] == extern_id) {
                sends.push(phone.is_some_and(|c| !row[c].is_empty()));
            }
        }
    }
    sends
}

/// People with a phone in Meta's `/users` rows so far.
fn with_phone_at_meta(meta: &FakeMeta) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for r in meta.successful_requests() {
        let (Some(id), Some(phone)) = (
            r.schema.iter().position(|c| c == "EXTERN_ID"),
            r.schema.iter().position(|c| c == "PHONE"),
        ) else {
            continue;
        };
        for row in r.rows.iter().filter(|row| !row[phone].is_empty()) {
            out.insert(row[id].clone());
        }
    }
    out
}

#[tokio::test]
async fn a_first_resync_looks_new_people_up_a_hundred_per_bulk_request() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&api, &meta, 1000, "phone")).await;
    api.set_generated_segment_with_phones(CART_SEGMENT as u64, 250, "g");
    let job = resync(&app, "").await;
    let done = finished(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(done["phase"], "done", "{done}");
    assert_eq!(done["new_people"], 250);
    let lookups = &done["lookups"];
    assert_eq!(lookups["queued"], 250, "{done}");
    assert_eq!(lookups["found"], 250, "{done}");
    assert_eq!(lookups["requests"], 3, "{done}");
    assert_eq!(lookups["waiting"], 0, "{done}");
    assert_eq!(done["profiles_fetched"], 250);
    assert_eq!(done["profiles_failed"], 0);
    assert!(done.get("profiles_skipped").is_none(), "{done}");
    // ceil(250 / 100) bulk requests, and not one single lookup.
    let bulk = api.bulk_lookups();
    assert_eq!(bulk.len(), 3, "{bulk:?}");
    assert!(bulk.iter().all(|(t, n)| t == "id" && *n <= 100), "{bulk:?}");
    assert_eq!(bulk.iter().map(|(_, n)| n).sum::<usize>(), 250);
    assert_eq!(api.single_lookups(), 0);
    assert!(api.max_rate_observed() <= FAKE_RATE_LIMIT);
    let (_, p) = app.admin_get("/v1/people/g249").await;
    assert_eq!(p["identifiers"]["phone"], "+*******0249", "{p}");
    until("every phone at Meta", LONG, || async {
        with_phone_at_meta(&meta).len() == 250
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_looked_up_person_is_sent_again_only_when_the_lookup_changed_them() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&api, &meta, 1000, "phone")).await;
    // The lookups answer after Meta was sent the listing's identifiers.
    api.set_bulk_delay(Duration::from_millis(700));
    api.set_segment(
        CART_SEGMENT as u64,
        "cart",
        vec![member("same"), member("more").with_phone("+14155550100")],
    );
    let job = resync(&app, "").await;
    until("both sent to Meta once", LONG, || async {
        users_sends(&meta, "same").len() == 1 && !users_sends(&meta, "more").is_empty()
    })
    .await;
    let done = finished(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(done["phase"], "done", "{done}");
    assert_eq!(done["lookups"]["found"], 2, "{done}");
    assert_eq!(done["lookups"]["changed"], 1, "{done}");
    until("more sent again with the phone", LONG, || async {
        users_sends(&meta, "more") == [false, true]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Nothing changed for "same": no second call. "more": exactly once more.
    assert_eq!(users_sends(&meta, "same"), [false]);
    assert_eq!(users_sends(&meta, "more"), [false, true]);
    app.stop().await;
}

#[tokio::test]
async fn people_known_by_cio_id_only_go_in_their_own_batch_and_the_unknown_are_reported() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&api, &meta, 1000, "phone")).await;
    api.set_segment(
        CART_SEGMENT as u64,
        "cart",
        vec![
            member("u1").with_phone("+14155550101"),
            member("ghost"),
            FakeMember::email("c@example.com")
                .with_cio_id("c9")
                .with_phone("+14155550109"),
        ],
    );
    // Listed in the segment, unknown to the lookup (deleted meanwhile).
    api.hide_from_lookups("ghost");
    let job = resync(&app, "").await;
    let done = finished(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(done["phase"], "done", "{done}");
    let mut bulk = api.bulk_lookups();
    bulk.sort();
    assert_eq!(bulk, [("cio_id".to_owned(), 1), ("id".to_owned(), 2)]);
    let l = &done["lookups"];
    assert_eq!(l["found"], 2, "{done}");
    assert_eq!(l["not_looked_up"]["not_found"], 1, "{done}");
    assert_eq!(
        l["not_looked_up_ids"],
        json!([{"id": "ghost", "reason": "not_found"}])
    );
    assert_eq!(done["profiles_failed"], 1);
    let (_, c) = app.admin_get("/v1/people/c@example.com").await;
    assert_eq!(c["identifiers"]["phone"], "+*******0109", "{c}");
    app.stop().await;
}

#[tokio::test]
async fn failed_lookups_are_reported_by_reason_and_nobody_is_skipped_silently() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&api, &meta, 1000, "phone")).await;
    api.set_generated_segment_with_phones(CART_SEGMENT as u64, 650, "g");
    // Five bulk requests refused in a row: the worker stops asking.
    api.fail_bulk_next(5, 400);
    let job = resync(&app, "").await;
    let done = finished(&app, job["id"].as_str().unwrap()).await;
    // Membership is applied whatever the lookups did.
    assert_eq!(done["phase"], "done", "{done}");
    assert_eq!(app.members(CART).await, 650);
    let l = &done["lookups"];
    assert_eq!(l["requests"], 5, "{done}");
    assert_eq!(l["found"], 0);
    assert_eq!(l["not_looked_up"]["lookup_failed"], 500, "{done}");
    assert_eq!(l["not_looked_up"]["gave_up"], 150, "{done}");
    assert_eq!(done["profiles_failed"], 650);
    let ids = l["not_looked_up_ids"].as_array().unwrap();
    assert_eq!(ids.len(), 100);
    assert_eq!(ids[0], json!({"id": "g0", "reason": "lookup_failed"}));
    assert_eq!(l["not_looked_up_ids_left_off"], 550);
    // Ids only: no email or phone in clear in the report.
    let text = done.to_string();
    assert!(
        !text.contains("g0@example.com") && !text.contains("+1415"),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_replace_does_not_wait_for_pending_lookups_and_phones_follow_once() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    meta.set_members(AUD, &["x1"]);
    // Meta's default identifiers (with the phone), and lookups slower
    // than the whole replace.
    let cfg = base_config(&cio(&api, 1000))
        + &meta.destination_toml("meta", "")
        + &cart_audience(
            &format!(r#"{{ destination = "meta", audience_id = "{AUD}" }}"#),
            "mirror",
        );
    let app = TestApp::start_with(&cfg).await;
    api.set_bulk_delay(Duration::from_millis(1500));
    api.set_generated_segment_with_phones(CART_SEGMENT as u64, 150, "g");
    let job = resync(&app, "?replace=meta").await;
    let path = format!("/v1/resyncs/{}", job["id"].as_str().unwrap());
    let replaced = {
        let started = std::time::Instant::now();
        loop {
            let (_, j) = app.admin_get(&path).await;
            if j["replaced"][0]["done"] == true {
                break j;
            }
            assert!(started.elapsed() < LONG, "replace did not finish: {j}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // The replace went through while lookups were still outstanding.
    assert!(
        replaced["lookups"]["found"].as_u64().unwrap() < 150,
        "{replaced}"
    );
    assert_eq!(replaced["replaced"][0]["rows"], 150, "{replaced}");
    let done = finished(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(done["phase"], "done", "{done}");
    assert_eq!(done["lookups"]["found"], 150, "{done}");
    let all: BTreeSet<String> = (0..150).map(|i| format!("g{i}")).collect();
    assert_eq!(meta.members(AUD), all);
    // Phones looked up after their replace batch was read reach Meta
    // through the normal path, once each.
    until("every phone at Meta", LONG, || async {
        with_phone_at_meta(&meta) == all
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in [0, 77, 149] {
        let id = format!("g{i}");
        let with_phone = users_sends(&meta, &id).iter().filter(|p| **p).count();
        assert_eq!(with_phone, 1, "{id}: {:?}", users_sends(&meta, &id));
    }
    app.stop().await;
}

/// A token rotated by a config reload (SIGHUP) is what a full replace
/// uses: the replace goes through the engine's running destination, not a
/// copy built from the startup config.
#[tokio::test]
async fn a_replace_uses_the_destination_as_last_reloaded() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    let app = TestApp::start_with(&replace_config(&api, &meta, "")).await;
    connected(&app, &meta, &[], &["u1"]).await;
    api.set_segment(CART_SEGMENT as u64, "cart", vec![member("u1")]);
    // Meta now wants a new token, and the reloaded config carries it.
    meta.set_token("a-rotated-token");
    let rotated = replace_config(&api, &meta, "").replace(
        crate::support::fake_meta::FAKE_META_TOKEN,
        "a-rotated-token",
    );
    let config = koala::config::Config::from_toml(&rotated).unwrap();
    let taken = app
        .app
        .as_ref()
        .unwrap()
        .reloader()
        .reload(&config)
        .unwrap();
    assert_eq!(taken, ["meta"]);
    let job = resync(&app, "?replace=meta").await;
    let done = finished(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(done["phase"], "done", "{done}");
    assert_eq!(done["replaced"][0]["done"], true, "{done}");
    assert_eq!(meta.replace_requests().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_finished_resync_is_still_reported_after_a_restart() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&api, &meta, 1000, "")).await;
    api.set_segment(
        CART_SEGMENT as u64,
        "cart",
        vec![member("u1"), member("u2")],
    );
    let job = resync(&app, "").await;
    let id = job["id"].as_str().unwrap().to_owned();
    let done = finished(&app, &id).await;
    assert_eq!(done["phase"], "done", "{done}");
    let app = app.restart().await;
    let (status, after) = app.admin_get(&format!("/v1/resyncs/{id}")).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["phase"], "done");
    assert_eq!(after["entered"], 2);
    assert_eq!(after["audience"], CART);
    assert!(
        after["destinations"].is_array(),
        "progress is today's: {after}"
    );
    let a = app.audience(CART).await;
    assert_eq!(a["last_resync"]["id"], id.as_str(), "{a}");
    assert_eq!(a["last_resync"]["phase"], "done");
    let (status, _) = app.admin_get("/v1/resyncs/no-such-job").await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn the_last_reconciliation_is_still_reported_after_a_restart() {
    let api = FakeAppApi::start().await;
    let meta = FakeMeta::start().await;
    let every = |d: &str| {
        config(&api, &meta, 100, "").replace(
            &format!("segment_id = {CART_SEGMENT}\n"),
            &format!("segment_id = {CART_SEGMENT}\nreconcile_every = \"{d}\"\n"),
        )
    };
    let app = TestApp::start_with(&every("1s")).await;
    api.set_segment(CART_SEGMENT as u64, "cart", vec![member("missed")]);
    until("drift reported", LONG, || async {
        app.audience(CART).await["reconcile"]["drift_entered"] == 1
    })
    .await;
    let dir = app.dir.clone();
    let before = app.audience(CART).await["reconcile"].clone();
    app.stop().await;
    // Started again with a long interval: no new run yet, so the last one
    // reported is the store's (the one seen before the stop, or a later
    // one that finished in between).
    let app = TestApp::start_in(dir, &every("1h")).await;
    let after = app.audience(CART).await["reconcile"].clone();
    assert_eq!(after["every_seconds"], 3600, "{after}");
    assert_eq!(after["last_outcome"], "done");
    assert!(
        after["last_job"].is_string() && after["last_run_at"].is_i64(),
        "{after}"
    );
    if after["last_job"] == before["last_job"] {
        assert_eq!(after["drift_entered"], 1, "{after}");
    }
    app.stop().await;
}
