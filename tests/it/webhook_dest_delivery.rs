//! The signed webhook destination through the real app against a Standard
//! Webhooks receiver that verifies signatures: entries and exits arrive,
//! a retried batch carries the same webhook-id, throttles retry, 410
//! pauses, 400 dead-letters, two secrets verify during rotation, email
//! and phone travel only with include_pii. First, the receiver itself.

use std::time::Duration;

use serde_json::json;

use crate::support::app::*;
use crate::support::fake_webhook_receiver::*;
use crate::support::wait::until;

const T0: i64 = 1_750_000_000;
const LONG: Duration = Duration::from_secs(30);

fn config(rx: &FakeWebhookReceiver, secrets: &[&str], extra: &str) -> String {
    base_config("")
        + &rx.destination_toml("hook", secrets, extra)
        + &cart_audience(r#"{ destination = "hook" }"#, "mirror")
}

async fn post(rx: &FakeWebhookReceiver, id: &str, ts: i64, sig: &str, body: &str) -> u16 {
    reqwest::Client::new()
        .post(rx.url())
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn webhook_dest_the_fake_receiver_verifies_rejects_stale_and_dedupes() {
    let rx = FakeWebhookReceiver::start(&[SECRET]).await;
    let body = json!({"type": "audience.members_added", "audience": {"name": "A"},
                      "members": [{"id": "u1", "cio_id": null, "attributes": {}}]})
    .to_string();
    let now = chrono::Utc::now().timestamp();
    let good = sign(SECRET, "msg_1", now, body.as_bytes());
    assert_eq!(post(&rx, "msg_1", now, "v1,AAAA", &body).await, 401);
    assert_eq!(
        post(
            &rx,
            "msg_1",
            now,
            &sign(NEW_SECRET, "msg_1", now, body.as_bytes()),
            &body
        )
        .await,
        401
    );
    assert_eq!(
        post(&rx, "msg_1", now, &good, &format!("{body} ")).await,
        401,
        "a changed body"
    );
    let stale = now - 301;
    assert_eq!(
        post(
            &rx,
            "msg_1",
            stale,
            &sign(SECRET, "msg_1", stale, body.as_bytes()),
            &body
        )
        .await,
        400
    );
    assert_eq!(
        post(&rx, "msg_1", now, &format!("v1,other {good}"), &body).await,
        204
    );
    assert_eq!(post(&rx, "msg_1", now, &good, &body).await, 200);
    assert_eq!(rx.duplicates(), 1);
    assert_eq!(rx.members("A").len(), 1);
    assert_eq!(rx.rejected().len(), 4);
}

#[tokio::test]
async fn webhook_dest_entries_and_exits_reach_the_receiver_signed() {
    let rx = FakeWebhookReceiver::start(&[SECRET]).await;
    let app = TestApp::start_with(&config(&rx, &[SECRET], "map = { plan = \"plan\" }")).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    app.segment_event(CART_SEGMENT, "u2", "entered", T0).await;
    until("u1 and u2 added", LONG, || async {
        rx.members(CART).len() == 2
    })
    .await;
    app.segment_event(CART_SEGMENT, "u1", "exited", T0 + 60)
        .await;
    until("u1 removed", LONG, || async {
        rx.members(CART).iter().eq(["u2"].iter())
    })
    .await;
    let d = rx.deliveries();
    assert!(rx.rejected().is_empty(), "{:?}", rx.rejected());
    assert!(d
        .iter()
        .all(|d| d.id.starts_with("msg_") && d.verified_by == [0]));
    let last = &d.last().unwrap().body;
    assert_eq!(last["type"], "audience.members_removed");
    assert_eq!(last["audience"]["name"], CART);
    assert_eq!(last["audience"]["segment_id"], CART_SEGMENT);
    assert_eq!(last["audience"]["platform_audience_id"], CART);
    assert!(last["sent_at"].as_str().unwrap().ends_with('Z'));
    let u2 = rx.member(CART, "u2").unwrap();
    assert_eq!(u2["cio_id"], "ciou2");
    assert_eq!(u2["attributes"], json!({"plan": "gold"}));
    app.stop().await;
}

#[tokio::test]
async fn webhook_dest_a_retried_batch_carries_the_same_webhook_id() {
    let rx = FakeWebhookReceiver::start(&[SECRET]).await;
    let app = TestApp::start_with(&config(&rx, &[SECRET], "")).await;
    // Applied, but the answer is a 503: koala must send the same rows again
    // under the same id, which the receiver recognises and ignores.
    rx.push_after_applying(503);
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("the retry arrived", LONG, || async { rx.duplicates() == 1 }).await;
    let d = rx.deliveries();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].id, d[1].id);
    assert_eq!((d[0].status, d[1].status), (503, 200));
    assert!(d[1].duplicate);
    assert_eq!(rx.members(CART).len(), 1);
    until("acknowledged", LONG, || async {
        app.audience(CART).await["destinations"][0]["acknowledged_members"] == 1
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn webhook_dest_a_throttle_is_retried_after_retry_after() {
    let rx = FakeWebhookReceiver::start(&[SECRET]).await;
    let app = TestApp::start_with(&config(&rx, &[SECRET], "")).await;
    rx.push(429, Some(0));
    rx.push(503, None);
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 added", LONG, || async { rx.members(CART).len() == 1 }).await;
    let statuses: Vec<u16> = rx.deliveries().iter().map(|d| d.status).collect();
    assert_eq!(statuses, [429, 503, 204]);
    assert_eq!(rx.duplicates(), 0);
    app.stop().await;
}

#[tokio::test]
async fn webhook_dest_410_gone_pauses_the_destination() {
    let rx = FakeWebhookReceiver::start(&[SECRET]).await;
    let app = TestApp::start_with(&config(&rx, &[SECRET], "")).await;
    rx.push(410, None);
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    let reason = app.paused_reason().await;
    assert!(reason.contains("410 Gone"), "{reason}");
    assert!(!reason.contains("u1"), "{reason}");
    assert!(rx.members(CART).is_empty());
    app.stop().await;
}

#[tokio::test]
async fn webhook_dest_a_400_dead_letters_the_row() {
    let rx = FakeWebhookReceiver::start(&[SECRET]).await;
    let app = TestApp::start_with(&config(&rx, &[SECRET], "")).await;
    rx.push(400, None);
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 dead-lettered", LONG, || async {
        app.audience(CART).await["destinations"][0]["dead_letters"] == 1
    })
    .await;
    let (_, dead) = app.admin_get("/v1/dead-letters?destination=hook").await;
    assert!(dead["dead_letters"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("HTTP 400"));
    app.stop().await;
}

#[tokio::test]
async fn webhook_dest_both_secrets_verify_during_rotation() {
    // The receiver already knows both; koala signs with both.
    let rx = FakeWebhookReceiver::start(&[SECRET, NEW_SECRET]).await;
    let app = TestApp::start_with(&config(&rx, &[SECRET, NEW_SECRET], "")).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 added", LONG, || async { rx.members(CART).len() == 1 }).await;
    assert_eq!(rx.deliveries()[0].verified_by, [0, 1]);
    app.stop().await;
    // A receiver that has moved on to the new secret alone still verifies.
    let rx = FakeWebhookReceiver::start(&[NEW_SECRET]).await;
    let app = TestApp::start_with(&config(&rx, &[SECRET, NEW_SECRET], "")).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 added", LONG, || async { rx.members(CART).len() == 1 }).await;
    assert!(rx.rejected().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn webhook_dest_email_and_phone_only_with_include_pii() {
    let rx = FakeWebhookReceiver::start(&[SECRET]).await;
    let app = TestApp::start_with(&config(&rx, &[SECRET], "")).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 added", LONG, || async { rx.members(CART).len() == 1 }).await;
    let m = rx.member(CART, "u1").unwrap();
    assert!(m.get("email").is_none() && m.get("phone").is_none(), "{m}");
    assert!(!rx.deliveries()[0].body.to_string().contains("@example.com"));
    app.stop().await;

    let rx = FakeWebhookReceiver::start(&[SECRET]).await;
    let app = TestApp::start_with(&config(&rx, &[SECRET], "include_pii = true")).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 added", LONG, || async { rx.members(CART).len() == 1 }).await;
    let m = rx.member(CART, "u1").unwrap();
    assert_eq!(m["email"], "u1@example.com");
    assert!(m.get("phone").is_some());
    app.stop().await;
}

/// `koala check` validates both new types without sending anything: a
/// plain-http url, undecodable secrets (never printed), an empty directory.
#[tokio::test]
async fn webhook_dest_check_names_the_problems_of_webhook_and_file_tables() {
    let rx = FakeWebhookReceiver::start(&[SECRET]).await;
    let text = base_config(&format!(
        r#"
[[destinations]]
name = "hook"
type = "webhook"
url = "{}"
secrets = ["whsec_not*base64", "plain-secret-value"]

[[destinations]]
name = "files"
type = "file"
directory = ""
"#,
        rx.url()
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("koala.toml");
    std::fs::write(&path, text).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_koala"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    for p in [
        "url: must be https",
        "secrets[0]: the part after",
        "secrets[1]: must start with",
        "directory: must not be empty",
    ] {
        assert!(all.contains(p), "{p} missing:\n{all}");
    }
    assert!(
        !all.contains("plain-secret-value") && !all.contains("not*base64"),
        "{all}"
    );
    assert!(rx.deliveries().is_empty() && rx.rejected().is_empty());
}

/// Attribute updates, the third kind of work: a current member whose
/// mapped attributes change is sent them as an update — once for a
/// flurry of changes — while a destination that keeps only membership
/// (Meta) is not sent anything more.
#[tokio::test]
async fn webhook_dest_a_members_changed_attributes_are_sent_as_one_update() {
    let rx = FakeWebhookReceiver::start(&[SECRET]).await;
    let meta = crate::support::fake_meta::FakeMeta::start().await;
    let cfg = base_config("")
        + &rx.destination_toml(
            "hook",
            &[SECRET],
            "map = { lifetime_value = { from = \"ltv\", type = \"number\" } }",
        )
        + &meta.destination_toml("meta", "")
        + &cart_audience(
            r#"{ destination = "hook" }, { destination = "meta", audience_id = "23850000000000999" }"#,
            "mirror",
        );
    let app = TestApp::start_with(&cfg).await;
    let enter = |ltv: f64, at: i64| {
        json!({"segment_id": CART_SEGMENT, "action": "entered", "occurred_at": at,
               "identifiers": {"id": "u-ltv", "email": "u-ltv@example.com"},
               "attributes": {"ltv": ltv}})
    };
    app.segment_webhook(&enter(10.0, T0)).await;
    until("added at the receiver", LONG, || async {
        rx.member(CART, "u-ltv").is_some()
    })
    .await;
    until("meta holds the member", LONG, || async {
        meta.members("23850000000000999").contains("u-ltv")
    })
    .await;
    let meta_requests = meta.request_count();
    // A flurry of changes while the receiver is slow to be asked again.
    rx.push(503, Some(1));
    for (i, ltv) in [20.0, 30.0, 42.5].iter().enumerate() {
        app.segment_webhook(&enter(*ltv, T0 + 1 + i as i64)).await;
    }
    // While the receiver is asked to wait, the update is counted as one:
    // a pending add, and of those an update (the member is there).
    until("the update counted", LONG, || async {
        let d = app.audience(CART).await;
        let hook = &d["destinations"][0];
        hook["pending_updates"] == 1 && hook["pending_adds"] == 1
    })
    .await;
    until("the receiver holds the newest value", LONG, || async {
        rx.member(CART, "u-ltv")
            .is_some_and(|m| m["attributes"]["lifetime_value"] == 42.5)
    })
    .await;
    let updates: Vec<_> = rx
        .deliveries()
        .into_iter()
        .filter(|d| d.status < 300 && d.body["type"] == "audience.members_updated")
        .collect();
    assert!(
        (1..=3).contains(&updates.len()),
        "a flurry coalesces into few updates: {}",
        updates.len()
    );
    assert_eq!(
        updates.last().unwrap().body["members"][0]["attributes"]["lifetime_value"],
        42.5
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        meta.request_count(),
        meta_requests,
        "meta keeps no attributes"
    );
    let d = app.audience(CART).await;
    for dest in d["destinations"].as_array().unwrap() {
        assert_eq!(dest["pending_adds"], 0, "{dest}");
    }
    app.stop().await;
}

#[tokio::test]
async fn webhook_dest_an_unmapped_attribute_change_sends_nothing() {
    let rx = FakeWebhookReceiver::start(&[SECRET]).await;
    let cfg = base_config("")
        + &rx.destination_toml(
            "hook",
            &[SECRET],
            "map = { lifetime_value = { from = \"ltv\", type = \"number\" } }",
        )
        + &cart_audience(r#"{ destination = "hook" }"#, "mirror");
    let app = TestApp::start_with(&cfg).await;
    let enter = |ltv: f64, page: &str, at: i64| {
        json!({"segment_id": CART_SEGMENT, "action": "entered", "occurred_at": at,
               "identifiers": {"id": "u-page", "email": "u-page@example.com"},
               "attributes": {"ltv": ltv, "last_page": page}})
    };
    app.segment_webhook(&enter(10.0, "/home", T0)).await;
    until("added at the receiver", LONG, || async {
        rx.member(CART, "u-page").is_some()
    })
    .await;
    // Customer.io sends the whole profile with every webhook: a change
    // to an attribute no mapping reads is no work for the destination.
    app.segment_webhook(&enter(10.0, "/cart", T0 + 1)).await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let successes = |rx: &FakeWebhookReceiver| {
        rx.deliveries()
            .into_iter()
            .filter(|d| d.status < 300)
            .count()
    };
    assert_eq!(successes(&rx), 1, "only the entry was sent");
    // A mapped one is.
    app.segment_webhook(&enter(55.0, "/cart", T0 + 2)).await;
    until("the update arrives", LONG, || async {
        rx.member(CART, "u-page")
            .is_some_and(|m| m["attributes"]["lifetime_value"] == 55.0)
    })
    .await;
    assert_eq!(successes(&rx), 2);
    app.stop().await;
}

#[tokio::test]
async fn webhook_dest_an_exit_after_an_unacknowledged_add_is_still_sent() {
    // The add lands but its answer is lost (503 after applying, retry in
    // 2 s); the person exits before the retry. koala cannot know whether
    // the receiver holds them, so it sends the remove rather than treat
    // "never acknowledged" as "not there".
    let rx = FakeWebhookReceiver::start(&[SECRET]).await;
    let app = TestApp::start_with(&config(&rx, &[SECRET], "")).await;
    rx.push_after_applying_retry_after(503, Some(2));
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("the add applied at the receiver", LONG, || async {
        rx.members(CART).contains("u1")
    })
    .await;
    app.segment_event(CART_SEGMENT, "u1", "exited", T0 + 1)
        .await;
    until("the remove reaches the receiver", LONG, || async {
        rx.members(CART).is_empty()
    })
    .await;
    let d = app.audience(CART).await;
    assert_eq!(d["destinations"][0]["pending_removes"], 0, "{d}");
    app.stop().await;
}

#[tokio::test]
async fn webhook_dest_an_exit_during_an_unanswered_add_is_still_sent() {
    // The add lands at once but its answer (503) comes only after the
    // person has already left again: koala saw the exit while the add was
    // in flight ("never acknowledged, not wanted": nothing to send), then
    // learned the add's outcome is unknown. The remove must still go.
    let rx = FakeWebhookReceiver::start(&[SECRET]).await;
    let app = TestApp::start_with(&config(&rx, &[SECRET], "")).await;
    rx.push_after_applying_slowly(503, Some(1), Duration::from_millis(600));
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("the add applied at the receiver", LONG, || async {
        rx.members(CART).contains("u1")
    })
    .await;
    app.segment_event(CART_SEGMENT, "u1", "exited", T0 + 1)
        .await;
    until("the remove reaches the receiver", LONG, || async {
        rx.members(CART).is_empty()
    })
    .await;
    app.stop().await;
}
