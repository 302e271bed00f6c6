//! Google Customer Match through the real app against the fake Data
//! Manager API: entries and exits converge, batches fill to 10,000,
//! throttles retry, a spent daily quota pauses until its reset, one bad
//! row is dead-lettered alone, tokens refresh, request statuses are read.

use std::collections::BTreeSet;
use std::time::Duration;

use koala::customerio::segment::SegmentAction;
use koala::normalization::sha256_hex;
use serde_json::json;

use crate::support::app::*;
use crate::support::fake_google::*;
use crate::support::wait::until;

const T0: i64 = 1_750_000_000;
const AUD: &str = "5550001";
const LONG: Duration = Duration::from_secs(30);

fn config(fake: &FakeGoogle, extra: &str) -> String {
    base_config("")
        + &fake.destination_toml("google", extra)
        + &cart_audience(
            &format!(r#"{{ destination = "google", audience_id = "{AUD}" }}"#),
            "mirror",
        )
}

/// The email hashes of people `p{i}` (Google's key in the fake).
fn hashes(range: std::ops::Range<usize>) -> BTreeSet<String> {
    range
        .map(|i| sha256_hex(&format!("p{i}@example.com")))
        .collect()
}

async fn destination_status(app: &TestApp) -> serde_json::Value {
    let (_, dests) = app.admin_get("/v1/destinations").await;
    dests["destinations"][0]["status"].clone()
}

#[tokio::test]
async fn google_an_entry_is_ingested_and_an_exit_removed() {
    let fake = FakeGoogle::start().await;
    let app = TestApp::start_with(&config(&fake, "")).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    let key = sha256_hex("u1@example.com");
    until("u1 ingested", LONG, || async {
        fake.members(AUD).contains(&key)
    })
    .await;
    assert_eq!(fake.successful_requests()[0].kind, Kind::Ingest);
    app.segment_event(CART_SEGMENT, "u1", "exited", T0 + 60)
        .await;
    until("u1 removed", LONG, || async {
        !fake.members(AUD).contains(&key)
    })
    .await;
    assert_eq!(
        fake.successful_requests().last().unwrap().kind,
        Kind::Remove
    );
    until("acknowledged", LONG, || async {
        let d = &app.audience(CART).await["destinations"][0];
        d["pending_removes"] == 0 && d["acknowledged_members"] == 0
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn google_changes_behind_a_busy_destination_leave_in_batches_of_ten_thousand() {
    let fake = FakeGoogle::start().await;
    let app = TestApp::start_with(&config(
        &fake,
        "concurrency = 1\nrequest_timeout = \"120s\"",
    ))
    .await;
    fake.hold();
    app.segment_event(CART_SEGMENT, "first", "entered", T0)
        .await;
    until("the first request is in flight", LONG, || async {
        app.audience(CART).await["destinations"][0]["in_flight"] == 1
    })
    .await;
    bulk_changes(&app, 0..20_000, SegmentAction::Entered, T0).await;
    fake.release();
    until("all 20,001 ingested", Duration::from_secs(120), || async {
        fake.members(AUD).len() == 20_001
    })
    .await;
    let sizes: Vec<usize> = fake
        .successful_requests()
        .iter()
        .map(|r| r.members.len())
        .collect();
    assert_eq!(sizes, [1, 10_000, 10_000]);
    app.stop().await;
}

#[tokio::test]
async fn google_a_throttle_is_retried_and_converges() {
    let fake = FakeGoogle::start().await;
    let app = TestApp::start_with(&config(&fake, "")).await;
    fake.push(Scripted::throttle());
    fake.push(Scripted::unavailable());
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    let key = sha256_hex("u1@example.com");
    until("u1 ingested", LONG, || async {
        fake.members(AUD).contains(&key)
    })
    .await;
    assert_eq!(fake.requests().len(), 3);
    let m = app.metrics().await;
    assert!(
        metric_value(
            &m,
            "koala_destination_retries_total",
            &[("destination", "google")]
        ) >= 2.0
    );
    app.stop().await;
}

#[tokio::test]
async fn google_a_spent_daily_quota_pauses_until_the_reset_then_resumes_by_itself() {
    let fake = FakeGoogle::start().await;
    // The reset comes 1 s after the refusal instead of at Pacific midnight.
    let app = TestApp::start_with(&config(&fake, "daily_quota_pause = \"1s\"")).await;
    fake.push(Scripted::daily_quota());
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("paused until the reset", LONG, || async {
        let s = destination_status(&app).await;
        s["paused"] == true && s["resume_at"].is_i64()
    })
    .await;
    let s = destination_status(&app).await;
    assert!(
        s["paused_reason"].as_str().unwrap().contains("daily quota"),
        "{s}"
    );
    let key = sha256_hex("u1@example.com");
    until("u1 ingested after the reset", LONG, || async {
        fake.members(AUD).contains(&key)
    })
    .await;
    assert_eq!(destination_status(&app).await["paused"], false);
    // Refused once, sent once: no retrying every few seconds meanwhile.
    assert_eq!(fake.requests().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn google_one_bad_row_is_dead_lettered_alone() {
    let fake = FakeGoogle::start().await;
    fake.poison(&sha256_hex("p5@example.com"));
    let app = TestApp::start_with(&config(&fake, "")).await;
    bulk_changes(&app, 0..12, SegmentAction::Entered, T0).await;
    let mut want = hashes(0..12);
    want.remove(&sha256_hex("p5@example.com"));
    until("everyone but p5 ingested", LONG, || async {
        fake.members(AUD) == want
    })
    .await;
    until("p5 dead-lettered", LONG, || async {
        app.audience(CART).await["destinations"][0]["dead_letters"] == 1
    })
    .await;
    let (_, dead) = app.admin_get("/v1/dead-letters?destination=google").await;
    assert_eq!(dead["dead_letters"][0]["customer_id"], "p5");
    assert!(dead["dead_letters"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("INVALID_ARGUMENT"));
    app.stop().await;
}

#[tokio::test]
async fn google_an_expired_token_is_refreshed_and_a_revoked_one_pauses() {
    let fake = FakeGoogle::start().await;
    let app = TestApp::start_with(&config(&fake, "")).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 ingested", LONG, || async {
        fake.members(AUD).len() == 1
    })
    .await;
    fake.expire_tokens();
    app.segment_event(CART_SEGMENT, "u2", "entered", T0).await;
    until("u2 ingested", LONG, || async {
        fake.members(AUD).len() == 2
    })
    .await;
    assert_eq!(fake.token_requests(), 2);

    fake.expire_tokens();
    fake.refuse_refresh(true);
    app.segment_event(CART_SEGMENT, "u3", "entered", T0).await;
    until("paused", LONG, || async {
        destination_status(&app).await["paused"] == true
    })
    .await;
    let reason = destination_status(&app).await["paused_reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("invalid_grant"), "{reason}");
    assert!(!reason.contains(REFRESH_TOKEN));

    fake.refuse_refresh(false);
    let (status, _) = app
        .admin_post("/v1/destinations/google/resume", &json!({}))
        .await;
    assert_eq!(status, 200);
    until("u3 ingested after resume", LONG, || async {
        fake.members(AUD).len() == 3
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn google_request_status_errors_are_counted() {
    let fake = FakeGoogle::start().await;
    let app = TestApp::start_with(&config(&fake, "")).await;
    fake.next_request_status(
        "FAILED",
        json!([{"recordCount": "1", "reason": "PROCESSING_ERROR_REASON_INVALID_HASH"}]),
    );
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("the failed status is counted", LONG, || async {
        metric_value(
            &app.metrics().await,
            "koala_google_request_status_total",
            &[("destination", "google"), ("status", "failed")],
        ) >= 1.0
    })
    .await;
    assert!(fake.status_checks() >= 1);
    // The operator sees it in the admin API.
    let (_, body) = app.admin_get("/v1/destinations").await;
    let notes = body["destinations"][0]["platform_notes"].to_string();
    assert!(notes.contains("INVALID_HASH"), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn google_the_address_comes_through_the_sync_targets_mapping() {
    let fake = FakeGoogle::start().await;
    let cfg = base_config("")
        + &fake.destination_toml(
            "google",
            r#"identifiers = ["email", "address"]
map = { ad_personalization = "ads_ok" }"#,
        )
        + &cart_audience(
            &format!(
                r#"{{ destination = "google", audience_id = "{AUD}", map = {{ family_name = "surname" }} }}"#
            ),
            "mirror",
        );
    let app = TestApp::start_with(&cfg).await;
    let (status, body) = app
        .segment_webhook(&json!({
            "segment_id": CART_SEGMENT, "action": "entered", "occurred_at": T0,
            "identifiers": {"id": "u1", "email": "U1@Example.com"},
            "attributes": {"first_name": "Mrs. Ann", "surname": "Lee Jr.", "country": "us",
                           "zip": "94045", "ads_ok": "denied"}
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    until("u1 ingested", LONG, || async {
        fake.members(AUD).len() == 1
    })
    .await;
    let r = &fake.successful_requests()[0];
    let member = &r.body["audienceMembers"][0];
    assert_eq!(
        member["userData"]["userIdentifiers"],
        json!([
            {"emailAddress": sha256_hex("u1@example.com")},
            {"address": {"givenName": sha256_hex("ann"), "familyName": sha256_hex("lee"),
                         "regionCode": "US", "postalCode": "94045"}}
        ])
    );
    assert_eq!(
        member["consent"],
        json!({"adPersonalization": "CONSENT_DENIED"})
    );
    app.stop().await;
}
