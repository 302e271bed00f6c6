//! TikTok audiences through the real app against the fake API: the
//! audience is created and members converge, batches fill to max_batch,
//! HTTP-200 throttle codes retry, an auth code pauses, one bad row is
//! dead-lettered alone.

use std::time::Duration;

use koala::customerio::segment::SegmentAction;
use koala::normalization::sha256_hex;

use crate::support::app::*;
use crate::support::fake_tiktok::*;
use crate::support::wait::until;

const T0: i64 = 1_750_000_000;
const AUD: &str = "1780000555";
const LONG: Duration = Duration::from_secs(30);

fn config(fake: &FakeTiktok, extra: &str) -> String {
    base_config("")
        + &fake.destination_toml("tiktok", extra)
        + &cart_audience(
            &format!(r#"{{ destination = "tiktok", audience_id = "{AUD}" }}"#),
            "mirror",
        )
}

#[tokio::test]
async fn tiktok_the_audience_is_created_then_entries_added_and_exits_deleted() {
    let fake = FakeTiktok::start().await;
    let cfg = base_config("")
        + &fake.destination_toml("tiktok", "")
        + &cart_audience(r#"{ destination = "tiktok" }"#, "mirror");
    let app = TestApp::start_with(&cfg).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    let key = sha256_hex("u1@example.com");
    until("created and added", LONG, || async {
        fake.created().len() == 1 && fake.members(&fake.created()[0].id).contains(&key)
    })
    .await;
    let id = fake.created()[0].id.clone();
    assert_eq!(
        app.audience(CART).await["destinations"][0]["platform_audience_id"],
        id
    );
    app.segment_event(CART_SEGMENT, "u1", "exited", T0 + 60)
        .await;
    until("u1 deleted", LONG, || async {
        !fake.members(&id).contains(&key)
    })
    .await;
    assert_eq!(fake.mappings().last().unwrap().action, "delete");
    app.stop().await;
}

#[tokio::test]
async fn tiktok_changes_behind_a_busy_destination_leave_in_full_batches() {
    let fake = FakeTiktok::start().await;
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
    bulk_changes(&app, 0..2_500, SegmentAction::Entered, T0).await;
    fake.release();
    until("all 2,501 added", Duration::from_secs(60), || async {
        fake.members(AUD).len() == 2_501
    })
    .await;
    let sizes: Vec<usize> = fake.mappings().iter().map(|m| m.rows).collect();
    assert_eq!(sizes, [1, 1000, 1000, 500]);
    app.stop().await;
}

#[tokio::test]
async fn tiktok_a_throttle_code_is_retried_and_converges() {
    let fake = FakeTiktok::start().await;
    let app = TestApp::start_with(&config(&fake, "")).await;
    fake.push_code(40100, "Too many requests");
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 added", LONG, || async { fake.members(AUD).len() == 1 }).await;
    let codes: Vec<i64> = fake.mappings().iter().map(|m| m.code).collect();
    assert_eq!(codes, [40100, 0]);
    app.stop().await;
}

#[tokio::test]
async fn tiktok_an_auth_code_pauses_the_destination() {
    let fake = FakeTiktok::start().await;
    let app = TestApp::start_with(&config(&fake, "")).await;
    fake.push_code(40105, "Access token is incorrect or has been revoked.");
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("paused", LONG, || async {
        let (_, d) = app.admin_get("/v1/destinations").await;
        d["destinations"][0]["status"]["paused"] == true
    })
    .await;
    let (_, d) = app.admin_get("/v1/destinations").await;
    assert!(d["destinations"][0]["status"]["paused_reason"]
        .as_str()
        .unwrap()
        .contains("40105"));
    assert!(fake.members(AUD).is_empty());
    app.stop().await;
}

#[tokio::test]
async fn tiktok_one_bad_row_is_dead_lettered_alone() {
    let fake = FakeTiktok::start().await;
    fake.poison(&sha256_hex("p5@example.com"));
    let app = TestApp::start_with(&config(&fake, "")).await;
    bulk_changes(&app, 0..12, SegmentAction::Entered, T0).await;
    until("eleven added", LONG, || async {
        fake.members(AUD).len() == 11
    })
    .await;
    until("p5 dead-lettered", LONG, || async {
        app.audience(CART).await["destinations"][0]["dead_letters"] == 1
    })
    .await;
    let (_, dead) = app.admin_get("/v1/dead-letters?destination=tiktok").await;
    assert_eq!(dead["dead_letters"][0]["customer_id"], "p5");
    assert!(dead["dead_letters"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("40002"));
    app.stop().await;
}
