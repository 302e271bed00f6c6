//! The delivery engine against the fake Graph API: batching, ordering,
//! retries, dead letters, pausing, crashes, isolation.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use koala::customerio::segment::SegmentAction;
use serde_json::json;

use crate::support::app::*;
use crate::support::fake_meta::*;
use crate::support::wait::until;

const T0: i64 = 1_750_000_000;
const AUD: &str = "23850000000000";
const LONG: Duration = Duration::from_secs(30);

fn config(fake: &FakeMeta, dest_extra: &str, mode: &str) -> String {
    let dest_extra = if dest_extra.contains("request_timeout") {
        dest_extra.to_owned()
    } else {
        format!("request_timeout = \"2s\"\n{dest_extra}")
    };
    base_config("")
        + &fake.destination_toml("meta", &dest_extra)
        + &cart_audience(
            &format!(r#"{{ destination = "meta", audience_id = "{AUD}" }}"#),
            mode,
        )
}

fn ids(range: std::ops::Range<usize>) -> BTreeSet<String> {
    range.map(|i| format!("p{i}")).collect()
}

#[tokio::test]
async fn an_entry_is_added_and_an_exit_removed() {
    let fake = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&fake, "", "mirror")).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 added", LONG, || async {
        fake.members(AUD).contains("u1")
    })
    .await;
    let add = &fake.successful_requests()[0];
    assert_eq!(add.method, "POST");
    // EXTERN_ID in clear, email hashed per Meta's rules.
    assert!(
        add.schema.contains(&"EXTERN_ID".to_owned()) && add.schema.contains(&"EMAIL".to_owned())
    );
    let email_col = add.schema.iter().position(|c| c == "EMAIL").unwrap();
    assert_eq!(
        add.rows[0][email_col],
        koala::normalization::sha256_hex("u1@example.com")
    );

    app.segment_event(CART_SEGMENT, "u1", "exited", T0 + 60)
        .await;
    until("u1 removed", LONG, || async {
        !fake.members(AUD).contains("u1")
    })
    .await;
    assert_eq!(fake.successful_requests().last().unwrap().method, "DELETE");

    let a = app.audience(CART).await;
    let d = &a["destinations"][0];
    assert_eq!(d["pending_adds"], 0);
    assert_eq!(d["pending_removes"], 0);
    assert_eq!(d["acknowledged_members"], 0);
    let (_, person) = app.admin_get("/v1/people/u1").await;
    assert_eq!(person["destinations"][0]["acknowledged"], false);
    let m = app.metrics().await;
    assert!(
        metric_value(
            &m,
            "koala_delivery_event_to_ack_seconds_count",
            &[("destination", "meta")]
        ) >= 2.0
    );
    app.stop().await;
}

#[tokio::test]
async fn additive_audiences_never_remove() {
    let fake = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&fake, "", "additive")).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 added", LONG, || async {
        fake.members(AUD).contains("u1")
    })
    .await;
    app.segment_event(CART_SEGMENT, "u1", "exited", T0 + 60)
        .await;
    // Give the engine every chance to (wrongly) send a remove.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(fake.members(AUD).contains("u1"));
    assert!(fake.requests().iter().all(|r| r.method == "POST"));
    assert_eq!(app.members(CART).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn changes_queued_behind_a_busy_destination_leave_in_full_batches() {
    let fake = FakeMeta::start().await;
    let app = TestApp::start_with(&config(
        &fake,
        "concurrency = 1\nrequest_timeout = \"120s\"",
        "mirror",
    ))
    .await;
    fake.hold();
    app.segment_event(CART_SEGMENT, "first", "entered", T0)
        .await;
    until("the first request is in flight", LONG, || async {
        app.audience(CART).await["destinations"][0]["in_flight"] == 1
    })
    .await;
    bulk_changes(&app, 0..25_000, SegmentAction::Entered, T0).await;
    fake.release();
    until("all 25,001 added", Duration::from_secs(120), || async {
        fake.members(AUD).len() == 25_001
    })
    .await;
    let sizes: Vec<usize> = fake
        .successful_requests()
        .iter()
        .map(|r| r.rows.len())
        .collect();
    assert_eq!(sizes, vec![1, 10_000, 10_000, 5_000]);
    app.stop().await;
}

#[tokio::test]
async fn a_single_change_on_an_idle_destination_leaves_at_once() {
    let fake = FakeMeta::start().await;
    // One request per 10 s: a change that waited for a poll or a token would
    // take seconds; one that leaves on the wake-up takes milliseconds.
    let app = TestApp::start_with(&config(&fake, "requests_per_second = 0.1", "mirror")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 added", LONG, || async {
        fake.members(AUD).contains("u1")
    })
    .await;
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "took {:?}",
        sent.elapsed()
    );
    app.stop().await;
}

#[tokio::test]
async fn an_entry_and_exit_before_anything_was_sent_costs_no_call() {
    let fake = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&fake, "concurrency = 1", "mirror")).await;
    fake.hold();
    app.segment_event(CART_SEGMENT, "busy", "entered", T0).await;
    until("busy in flight", LONG, || async {
        app.audience(CART).await["destinations"][0]["in_flight"] == 1
    })
    .await;
    app.segment_event(CART_SEGMENT, "flip", "entered", T0).await;
    app.segment_event(CART_SEGMENT, "flip", "exited", T0 + 1)
        .await;
    fake.release();
    until("busy added", LONG, || async {
        fake.members(AUD).contains("busy")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.request_count(), 1, "{:?}", fake.requests());
    app.stop().await;
}

#[tokio::test]
async fn a_person_re_entering_while_their_remove_is_in_flight_ends_up_added() {
    let fake = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&fake, "concurrency = 1", "mirror")).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 added", LONG, || async {
        fake.members(AUD).contains("u1")
    })
    .await;
    fake.hold();
    app.segment_event(CART_SEGMENT, "u1", "exited", T0 + 10)
        .await;
    until("remove in flight", LONG, || async {
        app.audience(CART).await["destinations"][0]["in_flight"] == 1
    })
    .await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0 + 20)
        .await;
    fake.release();
    until("u1 back in", LONG, || async {
        let methods: Vec<_> = fake
            .successful_requests()
            .iter()
            .map(|r| r.method.to_string())
            .collect();
        methods == ["POST", "DELETE", "POST"]
    })
    .await;
    assert!(fake.members(AUD).contains("u1"));
    app.stop().await;
}

#[tokio::test]
async fn a_throttle_in_the_body_is_retried_and_converges() {
    let fake = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&fake, "", "mirror")).await;
    fake.push_response(ScriptedResponse::throttle());
    fake.push_response(ScriptedResponse::ad_account_throttle());
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 added", LONG, || async {
        fake.members(AUD).contains("u1")
    })
    .await;
    assert_eq!(fake.request_count(), 3);
    let m = app.metrics().await;
    assert!(
        metric_value(
            &m,
            "koala_destination_retries_total",
            &[("destination", "meta")]
        ) >= 2.0
    );
    app.stop().await;
}

#[tokio::test]
async fn server_errors_and_timeouts_are_retried() {
    let fake = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&fake, "", "mirror")).await;
    fake.push_response(ScriptedResponse::server_error());
    fake.push_response(ScriptedResponse::delay(Duration::from_secs(3))); // > request_timeout
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 added", LONG, || async {
        fake.members(AUD).contains("u1")
    })
    .await;
    // The fake records the person before koala reads its answer.
    until("u1 acknowledged", LONG, || async {
        let (_, person) = app.admin_get("/v1/people/u1").await;
        person["destinations"][0]["acknowledged"] == true
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn an_invalid_parameter_error_dead_letters_and_redrive_delivers() {
    let fake = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&fake, "", "mirror")).await;
    fake.push_response(ScriptedResponse::invalid_parameter());
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("dead letter", LONG, || async {
        app.audience(CART).await["destinations"][0]["dead_letters"] == 1
    })
    .await;
    let (_, dl) = app.admin_get("/v1/dead-letters?destination=meta").await;
    assert_eq!(dl["dead_letters"][0]["customer_id"], "u1");
    assert_eq!(dl["dead_letters"][0]["op"], "add");
    assert!(dl["dead_letters"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("100"));
    assert!(!fake.members(AUD).contains("u1"));

    let (status, r) = app
        .admin_post(
            "/v1/dead-letters/redrive",
            &json!({"destination": "meta", "audience": CART}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["rows"], 1);
    until("u1 added after redrive", LONG, || async {
        fake.members(AUD).contains("u1")
    })
    .await;
    assert_eq!(
        app.audience(CART).await["destinations"][0]["dead_letters"],
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn an_expired_token_pauses_the_destination_keeps_the_work_and_resume_delivers() {
    let fake = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&fake, "", "mirror")).await;
    fake.reject_all(190);
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("paused", LONG, || async {
        app.audience(CART).await["destinations"][0]["paused"] == true
    })
    .await;
    for i in 2..=5 {
        app.segment_event(CART_SEGMENT, &format!("u{i}"), "entered", T0)
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests_while_paused = fake.request_count();
    assert_eq!(
        requests_while_paused, 1,
        "a paused destination is not called"
    );
    let (_, dests) = app.admin_get("/v1/destinations").await;
    assert_eq!(dests["destinations"][0]["status"]["paused"], true);
    assert!(dests["destinations"][0]["status"]["paused_reason"]
        .as_str()
        .unwrap()
        .contains("190"));
    assert!(
        metric_value(
            &app.metrics().await,
            "koala_destination_paused",
            &[("destination", "meta")]
        ) == 1.0
    );

    fake.clear_rejections();
    let (status, _) = app
        .admin_post("/v1/destinations/meta/resume", &json!({}))
        .await;
    assert_eq!(status, 200);
    until("all five added", LONG, || async {
        fake.members(AUD).len() == 5
    })
    .await;
    assert_eq!(app.audience(CART).await["destinations"][0]["paused"], false);
    app.stop().await;
}

#[tokio::test]
async fn the_platform_audience_is_created_once_and_reused_after_a_restart() {
    let fake = FakeMeta::start().await;
    let cfg = base_config("")
        + &fake.destination_toml("meta", "")
        + &cart_audience(r#"{ destination = "meta" }"#, "mirror");
    let app = TestApp::start_with(&cfg).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("created and added", LONG, || async {
        fake.created_audiences().len() == 1 && fake.request_count() == 1
    })
    .await;
    let created = fake.created_audiences()[0].clone();
    assert_eq!(created.ad_account_id, "1234");
    assert!(fake.members(&created.id).contains("u1"));
    let app = app.restart().await;
    app.segment_event(CART_SEGMENT, "u2", "entered", T0).await;
    until("u2 added", LONG, || async {
        fake.members(&created.id).contains("u2")
    })
    .await;
    assert_eq!(fake.created_audiences().len(), 1);
    assert_eq!(
        app.audience(CART).await["destinations"][0]["platform_audience_id"],
        created.id
    );
    app.stop().await;
}

#[tokio::test]
async fn one_throttled_destination_does_not_slow_another() {
    let slow = FakeMeta::start().await;
    let fast = FakeMeta::start().await;
    let cfg = base_config("")
        + &slow.destination_toml("slow", "")
        + &fast.destination_toml("fast", "")
        + &cart_audience(
            &format!(
                r#"{{ destination = "slow", audience_id = "{AUD}" }}, {{ destination = "fast", audience_id = "{AUD}" }}"#
            ),
            "mirror",
        );
    let app = TestApp::start_with(&cfg).await;
    slow.reject_all(17);
    for i in 0..20 {
        app.segment_event(CART_SEGMENT, &format!("p{i}"), "entered", T0)
            .await;
    }
    until("fast has everyone", LONG, || async {
        fast.members(AUD) == ids(0..20)
    })
    .await;
    assert!(slow.members(AUD).is_empty());
    let a = app.audience(CART).await;
    let slow_state = a["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination"] == "slow")
        .unwrap()
        .clone();
    assert!(
        slow_state["pending_adds"].as_i64().unwrap() > 0,
        "{slow_state}"
    );
    slow.clear_rejections();
    until("slow catches up", LONG, || async {
        slow.members(AUD) == ids(0..20)
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn people_without_a_usable_identifier_are_counted_not_sent() {
    let fake = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&fake, r#"identifiers = ["email"]"#, "mirror")).await;
    app.segment_webhook(
        &json!({"segment_id": CART_SEGMENT, "action": "entered", "occurred_at": T0,
        "identifiers": {"id": "no-email"}}),
    )
    .await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 added", LONG, || async { fake.members(AUD).len() == 1 }).await;
    until("unmatched counted", LONG, || async {
        metric_value(
            &app.metrics().await,
            "koala_destination_unmatched_total",
            &[("destination", "meta")],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        fake.requests().iter().map(|r| r.rows.len()).sum::<usize>(),
        1
    );
    // Per-destination coverage: the audience has 2 members, Meta holds 1.
    let a = app.audience(CART).await;
    assert_eq!(a["members"], 2);
    let meta = &a["identifier_coverage"]["by_destination"][0];
    assert_eq!(meta["destination"], "meta");
    assert_eq!(meta["addressable"], 1, "{a}");
    assert_eq!(meta["unaddressable"], 1, "{a}");
    assert_eq!(a["destinations"][0]["unmatched_members"], 1);
    let m = app.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "koala_audience_addressable_members",
            &[("audience", CART), ("destination", "meta")]
        ),
        1.0
    );
    app.stop().await;
}

/// The pending gauges are read from maintained counts when /metrics is
/// scraped, so they are current at that moment (they used to lag up to
/// 2 s behind a background loop).
#[tokio::test]
async fn pending_gauges_are_current_at_scrape_time() {
    let fake = FakeMeta::start().await;
    // Every request is refused as throttled: rows stay pending.
    for _ in 0..500 {
        fake.push_response(ScriptedResponse::throttle());
    }
    let app = TestApp::start_with(&config(&fake, "", "mirror")).await;
    for i in 0..3 {
        let (status, _) = app
            .segment_event(CART_SEGMENT, &format!("g{i}"), "entered", T0)
            .await;
        assert_eq!(status, 200);
    }
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "koala_destination_pending",
            &[("destination", "meta")]
        ),
        3.0,
        "{metrics}"
    );
    assert!(metrics.contains("koala_destination_oldest_pending_seconds{destination=\"meta\"}"));
    assert_eq!(
        metric_value(&metrics, "koala_audience_members", &[("audience", CART)]),
        3.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "koala_audience_identifier_coverage",
            &[("audience", CART), ("identifier", "email")]
        ),
        3.0
    );
    let d = &app.audience(CART).await["destinations"][0];
    assert_eq!(d["pending_adds"], 3, "{d}");
    app.stop().await;
}

/// Meta refuses a whole batch (code 100) for one malformed row; the engine
/// sends the halves until the row is found alone, so only it is
/// dead-lettered and everyone else reaches the audience.
#[tokio::test]
async fn a_batch_refused_as_a_whole_is_split_until_only_the_bad_row_is_dead_lettered() {
    let fake = FakeMeta::start().await;
    fake.poison_row("p5");
    let app = TestApp::start_with(&config(&fake, "", "mirror")).await;
    bulk_changes(&app, 0..12, SegmentAction::Entered, T0).await;
    let mut want = ids(0..12);
    want.remove("p5");
    until("everyone but p5 added", LONG, || async {
        fake.members(AUD) == want
    })
    .await;
    until("p5 dead-lettered", LONG, || async {
        app.audience(CART).await["destinations"][0]["dead_letters"] == 1
    })
    .await;
    let (_, dead) = app.admin_get("/v1/dead-letters").await;
    let dead = dead["dead_letters"].as_array().unwrap().clone();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["customer_id"], "p5");
    let d = &app.audience(CART).await["destinations"][0];
    assert_eq!(d["acknowledged_members"], 11, "{d}");
    assert_eq!(d["pending_adds"], 0, "{d}");
    let m = app.metrics().await;
    assert!(
        metric_value(
            &m,
            "koala_destination_batch_splits_total",
            &[("destination", "meta")]
        ) >= 1.0
    );
    app.stop().await;
}
