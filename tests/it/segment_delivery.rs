//! The Segment destination through the real app against a fake of the
//! HTTP Tracking API's `/v1/batch`: entries and exits arrive as Engage
//! `Audience Entered`/`Audience Exited` tracks with identifies setting the
//! audience key trait, mapped fields keep their types, a retried batch
//! repeats its messageIds, big batches are split to fit, an oversize person
//! or one without a userId is refused alone, 429 retries, 401 pauses, and
//! Jitsu's X-Write-Key works. First, the fake itself.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::support::app::*;
use crate::support::fake_segment::*;
use crate::support::wait::until;

const T0: i64 = 1_750_000_000;
const LONG: Duration = Duration::from_secs(30);
/// `CIO__CartAbandon__0-4h__NoPurchase` in snake_case.
const KEY: &str = "cio_cart_abandon_0_4h_no_purchase";

fn config(fake: &FakeSegment, extra: &str) -> String {
    base_config("")
        + &fake.destination_toml("seg", extra)
        + &cart_audience(r#"{ destination = "seg" }"#, "mirror")
}

fn person_body(person: &str, action: &str, at: i64, attributes: Value) -> Value {
    let mut b = segment_body(CART_SEGMENT, person, action, at);
    b["attributes"] = attributes;
    b
}

async fn post(fake: &FakeSegment, path: &str, auth: (&str, String), body: &Value) -> u16 {
    reqwest::Client::new()
        .post(format!("{}{path}", fake.base_url()))
        .header(auth.0, auth.1)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn basic(key: &str) -> (&'static str, String) {
    (
        "authorization",
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(key)
        ),
    )
}

fn track(user: &str, id: &str) -> Value {
    json!({"type": "track", "event": "Audience Entered", "userId": user, "messageId": id,
           "properties": {"audience_key": "a", "a": true}})
}

#[tokio::test]
async fn segment_the_fake_enforces_the_documented_contract() {
    let fake = FakeSegment::start(Mode::Basic).await;
    let ok = json!({"batch": [track("u1", "m1")]});
    let good = basic(&format!("{WRITE_KEY}:"));
    assert_eq!(
        post(&fake, "/v1/batch", basic(WRITE_KEY), &ok).await,
        401,
        "no colon"
    );
    assert_eq!(post(&fake, "/v1/track", good.clone(), &ok).await, 404);
    let no_user = json!({"batch": [{"type": "track", "messageId": "m2", "event": "x"}]});
    assert_eq!(post(&fake, "/v1/batch", good.clone(), &no_user).await, 400);
    let long_id = json!({"batch": [track("u1", &"m".repeat(100))]});
    assert_eq!(post(&fake, "/v1/batch", good.clone(), &long_id).await, 400);
    let page = json!({"batch": [{"type": "page", "userId": "u", "messageId": "m3"}]});
    assert_eq!(post(&fake, "/v1/batch", good.clone(), &page).await, 400);
    let mut big = track("u1", "m4");
    big["properties"]["bio"] = json!("x".repeat(MAX_EVENT_BYTES));
    let big = json!({"batch": [track("u2", "m5"), big]});
    assert_eq!(post(&fake, "/v1/batch", good.clone(), &big).await, 400);
    let many: Vec<Value> = (0..2501).map(|i| track("u", &format!("n{i}"))).collect();
    assert_eq!(
        post(&fake, "/v1/batch", good.clone(), &json!({ "batch": many })).await,
        400
    );
    assert_eq!(post(&fake, "/v1/batch", good.clone(), &ok).await, 200);
    assert_eq!(post(&fake, "/v1/batch", good, &ok).await, 200);
    assert_eq!(fake.duplicates(), 1);
    assert_eq!(fake.members("a").iter().collect::<Vec<_>>(), ["u1"]);
    assert_eq!(fake.rejected().len(), 7);

    let jitsu = FakeSegment::start(Mode::XWriteKey).await;
    let ok = json!({"batch": [track("u1", "m1")]});
    assert_eq!(
        post(&jitsu, "/v1/batch", basic(&format!("{WRITE_KEY}:")), &ok).await,
        401
    );
    assert_eq!(
        post(&jitsu, "/v1/batch", ("x-write-key", WRITE_KEY.into()), &ok).await,
        200
    );
}

#[tokio::test]
async fn segment_entries_and_exits_arrive_as_engage_events_with_mapped_traits() {
    let fake = FakeSegment::start(Mode::Basic).await;
    let map = r#"map = { plan = "plan", lifetime_value = { from = "ltv", type = "number" }, last_order_at = { from = "last_order", type = "timestamp" } }"#;
    let app = TestApp::start_with(&config(&fake, map)).await;
    let attrs = json!({"plan": "gold", "ltv": "120.5", "last_order": 1_764_579_600});
    app.segment_webhook(&person_body("u1", "entered", T0, attrs.clone()))
        .await;
    app.segment_webhook(&person_body("u2", "entered", T0, attrs))
        .await;
    until("u1 and u2 entered", LONG, || async {
        fake.members(KEY).len() == 2
    })
    .await;
    let t = fake.traits("u1").unwrap();
    assert_eq!(t[KEY], true);
    assert_eq!(t["plan"], "gold");
    assert_eq!(t["lifetime_value"], 120.5);
    assert_eq!(t["last_order_at"], "2025-12-01T09:00:00.000Z");
    let entered = &fake.tracks()[0];
    assert_eq!(entered["event"], "Audience Entered");
    assert_eq!(entered["properties"]["audience_key"], KEY);
    assert_eq!(entered["properties"][KEY], true);
    assert_eq!(entered["properties"]["lifetime_value"], 120.5);
    assert_eq!(entered["timestamp"], "2025-06-15T15:06:40.000Z");

    app.segment_event(CART_SEGMENT, "u1", "exited", T0 + 60)
        .await;
    until("u1 exited", LONG, || async {
        fake.members(KEY).iter().eq(["u2"].iter())
    })
    .await;
    assert_eq!(fake.traits("u1").unwrap()[KEY], false);
    let exited = fake.tracks().last().unwrap().clone();
    assert_eq!(exited["event"], "Audience Exited");
    assert_eq!(exited["properties"][KEY], false);
    assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());
    assert_eq!(fake.duplicates(), 0);
    // Every request carried both events of each person; no email sent.
    for r in fake.requests() {
        let types: Vec<&str> = r
            .events
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(types.len() % 2, 0);
        assert!(!Value::Array(r.events.clone())
            .to_string()
            .contains("@example.com"));
    }
    app.stop().await;
}

#[tokio::test]
async fn segment_an_audience_id_in_the_sync_entry_is_the_audience_key() {
    let fake = FakeSegment::start(Mode::Basic).await;
    let text = base_config("")
        + &fake.destination_toml("seg", "")
        + &cart_audience(
            r#"{ destination = "seg", audience_id = "cart_abandoners" }"#,
            "mirror",
        );
    let app = TestApp::start_with(&text).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 entered", LONG, || async {
        fake.members("cart_abandoners").len() == 1
    })
    .await;
    assert_eq!(fake.traits("u1").unwrap()["cart_abandoners"], true);
    app.stop().await;
}

#[tokio::test]
async fn segment_a_retried_batch_repeats_its_message_ids() {
    let fake = FakeSegment::start(Mode::Basic).await;
    let app = TestApp::start_with(&config(&fake, "")).await;
    // Applied, but answered 503: koala sends the same events again, which
    // the platform recognises by messageId.
    fake.push_after_applying(503);
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("the retry arrived", LONG, || async {
        fake.duplicates() == 2
    })
    .await;
    let r = fake.requests();
    assert_eq!(r.len(), 2);
    assert_eq!((r[0].status, r[1].status), (503, 200));
    let ids =
        |i: usize| -> Vec<Value> { r[i].events.iter().map(|e| e["messageId"].clone()).collect() };
    assert_eq!(ids(0), ids(1));
    assert_eq!(fake.members(KEY).len(), 1);
    until("acknowledged", LONG, || async {
        app.audience(CART).await["destinations"][0]["acknowledged_members"] == 1
    })
    .await;
    app.stop().await;
}

/// Entries of people `p{i}` with `attributes`, committed straight through
/// the store in one go (as `bulk_changes`, which carries no attributes),
/// so the engine claims them as one batch.
async fn entries_with(app: &TestApp, range: std::ops::Range<usize>, attributes: Value) {
    let state = app.app.as_ref().unwrap().state();
    let audiences = state.catalog.for_segment(CART_SEGMENT).to_vec();
    let commands: Vec<_> = range
        .map(|i| koala::store::IngestCommand::Segment {
            event: koala::customerio::segment::SegmentEvent {
                segment_id: CART_SEGMENT,
                action: koala::customerio::segment::SegmentAction::Entered,
                occurred_at_ms: T0 * 1000,
                identifiers: koala::identity::Identifiers::new(
                    Some(&format!("p{i}")),
                    None,
                    None,
                    None,
                )
                .unwrap(),
                attributes: attributes.as_object().unwrap().clone(),
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
    state.engine.wake_all();
}

#[tokio::test]
async fn segment_a_big_batch_is_split_to_fit_2500_events_and_500_kb() {
    let fake = FakeSegment::start(Mode::Basic).await;
    let text = config(&fake, "max_batch = 3000\nmap = { bio = \"bio\" }");
    let app = TestApp::start_with(&text).await;
    // 3,000 people = 6,000 events (~1.5 MB): at least three requests.
    entries_with(&app, 0..3000, json!({})).await;
    until("3,000 entered", LONG, || async {
        fake.members(KEY).len() == 3000
    })
    .await;
    let r = fake.requests();
    assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());
    assert!(r
        .iter()
        .all(|r| r.status == 200 && r.events.len() <= MAX_EVENTS));
    // Events of ~250 bytes: 500 KB binds before 2,500 events (the count
    // limit is the packer's unit test).
    assert!(r.len() >= 3, "{} requests", r.len());
    assert!(r.iter().all(|r| r.bytes <= MAX_REQUEST_BYTES));
    assert_eq!(r.iter().map(|r| r.events.len()).sum::<usize>(), 6000);

    // 200 people with a 5 KB trait each (two events: ~10 KB a person,
    // ~2 MB in all): requests under 500 KB, each person's pair together.
    entries_with(&app, 3000..3200, json!({"bio": "b".repeat(5000)})).await;
    until("3,200 entered", LONG, || async {
        fake.members(KEY).len() == 3200
    })
    .await;
    let big: Vec<_> = fake.requests().into_iter().skip(r.len()).collect();
    assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());
    assert!(big.len() >= 4, "{} requests", big.len());
    assert!(big
        .iter()
        .all(|r| r.bytes <= MAX_REQUEST_BYTES && r.events.len() % 2 == 0));
    for r in &big {
        for pair in r.events.chunks(2) {
            assert_eq!(pair[0]["userId"], pair[1]["userId"]);
        }
    }
    assert_eq!(
        fake.traits("p3100").unwrap()["bio"].as_str().unwrap().len(),
        5000
    );
    app.stop().await;
}

#[tokio::test]
async fn segment_an_oversize_person_and_one_without_user_id_are_refused_alone() {
    let fake = FakeSegment::start(Mode::Basic).await;
    let app = TestApp::start_with(&config(&fake, r#"map = { bio = "bio" }"#)).await;
    app.segment_webhook(&person_body(
        "big",
        "entered",
        T0,
        json!({"bio": "x".repeat(40_000)}),
    ))
    .await;
    let mut anonymous = person_body("anon", "entered", T0, json!({"bio": "short"}));
    anonymous["identifiers"]["id"] = json!("");
    let (status, _) = app.segment_webhook(&anonymous).await;
    assert_eq!(status, 200);
    app.segment_webhook(&person_body("u1", "entered", T0, json!({"bio": "short"})))
        .await;
    until("two dead letters", LONG, || async {
        app.audience(CART).await["destinations"][0]["dead_letters"] == 2
    })
    .await;
    until("u1 entered", LONG, || async {
        fake.members(KEY).len() == 1
    })
    .await;
    assert!(fake.members(KEY).contains("u1"));
    assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());
    let (_, dead) = app.admin_get("/v1/dead-letters?destination=seg").await;
    let reasons: Vec<String> = dead["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("too large for Segment")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("no userId")),
        "{reasons:?}"
    );
    assert!(reasons
        .iter()
        .all(|r| !r.contains("xxxx") && !r.contains("@example.com")));
    app.stop().await;
}

#[tokio::test]
async fn segment_a_throttle_is_retried_and_a_refused_key_pauses() {
    let fake = FakeSegment::start(Mode::Basic).await;
    let app = TestApp::start_with(&config(&fake, "")).await;
    fake.push(429, Some(0));
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 entered", LONG, || async {
        fake.members(KEY).len() == 1
    })
    .await;
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 200]);
    app.stop().await;

    let fake = FakeSegment::start(Mode::Basic).await;
    let app = TestApp::start_with(&config(&fake, "")).await;
    fake.push(401, None);
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    let reason = app.paused_reason().await;
    assert!(
        reason.contains("HTTP 401") && reason.contains("write key"),
        "{reason}"
    );
    assert!(
        !reason.contains(WRITE_KEY) && !reason.contains("u1"),
        "{reason}"
    );
    assert!(fake.members(KEY).is_empty());
    app.stop().await;
}

#[tokio::test]
async fn segment_jitsu_takes_the_write_key_as_x_write_key() {
    let fake = FakeSegment::start(Mode::XWriteKey).await;
    let app = TestApp::start_with(&config(&fake, "")).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 entered", LONG, || async {
        fake.members(KEY).len() == 1
    })
    .await;
    assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());
    app.stop().await;
}
