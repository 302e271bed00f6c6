//! Customer.io webhooks in: verified, validated, deduplicated, ordered by
//! Customer.io's time, committed before the answer.

use serde_json::json;

use crate::support::app::*;

const T0: i64 = 1_750_000_000;

#[tokio::test]
async fn a_signed_entry_makes_a_member_and_an_exit_removes_them() {
    let app = TestApp::start().await;
    let (status, body) = app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "accepted");
    assert_eq!(body["audiences"][0]["outcome"], "applied");
    assert_eq!(app.members(CART).await, 1);

    let (status, body) = app
        .segment_event(CART_SEGMENT, "u1", "exited", T0 + 60)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.members(CART).await, 0);

    let (_, person) = app.admin_get("/v1/people/u1").await;
    let m = &person["memberships"][0];
    assert_eq!(m["audience"], CART);
    assert_eq!(m["is_member"], false);
    assert_eq!(m["since"], (T0 + 60) * 1000);
    assert_eq!(person["history"].as_array().unwrap().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn the_reference_signature_vector_is_accepted_end_to_end() {
    // The body and signature from shared/reference/customerio-api.md §2.
    let cfg =
        base_config("timestamp_tolerance = \"100000d\"").replace(REPORTING_KEY, "test_signing_key");
    let app = TestApp::start_with(&(cfg + &cart_audience("", "mirror"))).await;
    let body = r#"{"event_id":"01E4C4CT6YDC7Y5M7FE1GWWPQJ","object_type":"customer","metric":"subscribed","timestamp":1613063089,"data":{"customer_id":"42","email_address":"test@example.com","identifiers":{"id":"42","email":"test@example.com","cio_id":"d9c106000001"}}}"#;
    let r = app
        .http
        .post(app.url("/webhooks/customerio/reporting"))
        .header("x-cio-timestamp", "1613063089")
        .header(
            "x-cio-signature",
            "7b8c08093bc63041768ab4369f18e169638118cfbd417fa95c2ec461453c4a98",
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, person) = app.admin_get("/v1/people/42").await;
    assert_eq!(person["subscription"]["subscribed"], true);
    assert_eq!(person["identifiers"]["email"], "t***@example.com");
    app.stop().await;
}

#[tokio::test]
async fn bad_signatures_are_refused_with_401_and_store_nothing() {
    let app = TestApp::start().await;
    let body = serde_json::to_vec(&segment_body(CART_SEGMENT, "u1", "entered", T0)).unwrap();
    let path = "/webhooks/customerio/segments";

    let wrong_key = app.post_signed(path, "not-the-key", &body).await;
    assert_eq!(wrong_key.status(), 401);
    let err: serde_json::Value = wrong_key.json().await.unwrap();
    assert_eq!(err["error"]["code"], "unauthorized");

    let unsigned = app
        .http
        .post(app.url(path))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    let err: serde_json::Value = unsigned.json().await.unwrap();
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("X-CIO-Signature"));

    // The reporting key does not sign segment webhooks.
    assert_eq!(
        app.post_signed(path, REPORTING_KEY, &body).await.status(),
        401
    );

    // A stale timestamp beyond the tolerance.
    let old = (chrono::Utc::now().timestamp() - 9 * 86400).to_string();
    let r = app
        .http
        .post(app.url(path))
        .header("x-cio-timestamp", &old)
        .header(
            "x-cio-signature",
            koala::customerio::signature::sign(WEBHOOK_KEY, &old, &body),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    assert_eq!(app.admin_get("/v1/people/u1").await.0, 404);
    assert_eq!(app.members(CART).await, 0);
    let m = app.metrics().await;
    assert!(
        metric_value(
            &m,
            "koala_webhook_signature_failures_total",
            &[("endpoint", "segments")]
        ) >= 4.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_rotated_key_still_verifies() {
    let app = TestApp::start().await;
    let body = serde_json::to_vec(&segment_body(CART_SEGMENT, "u1", "entered", T0)).unwrap();
    let r = app
        .post_signed("/webhooks/customerio/segments", "old_rotated_key", &body)
        .await;
    assert_eq!(r.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn malformed_json_is_400_naming_the_problem() {
    let app = TestApp::start().await;
    let r = app
        .post_signed(
            "/webhooks/customerio/segments",
            WEBHOOK_KEY,
            b"{\"segment_id\": 42,",
        )
        .await;
    assert_eq!(r.status(), 400);
    let err: serde_json::Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "bad_request");

    let mut body = segment_body(CART_SEGMENT, "u1", "entered", T0);
    body["action"] = json!("joined");
    let (status, err) = app.segment_webhook(&body).await;
    assert_eq!(status, 400);
    // The field is named and what it expects is listed; the value sent is
    // not repeated (a template mistake can put personal data there).
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("action"), "{err}");
    assert!(message.contains("entered"), "{err}");
    assert!(!message.contains("joined"), "{err}");

    let mut body = segment_body(CART_SEGMENT, "u1", "entered", T0);
    body.as_object_mut().unwrap().remove("occurred_at");
    let (status, err) = app.segment_webhook(&body).await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("occurred_at"),
        "{err}"
    );

    assert_eq!(app.admin_get("/v1/people/u1").await.0, 404);
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let app = TestApp::start().await;
    let mut body = segment_body(CART_SEGMENT, "u1", "entered", T0);
    body["attributes"]["blob"] = json!("x".repeat(1024 * 1024 + 10));
    let (status, err) = app.segment_webhook(&body).await;
    assert_eq!(status, 413);
    assert_eq!(err["error"]["code"], "payload_too_large");
    assert_eq!(app.admin_get("/v1/people/u1").await.0, 404);
    app.stop().await;
}

#[tokio::test]
async fn unrendered_liquid_and_missing_identifiers_are_422() {
    let app = TestApp::start().await;
    let liquid = br#"{"segment_id":42,"action":"entered","occurred_at":{{ "now" | date: "%s" }},"identifiers":{"id":"{{customer.id}}"}}"#;
    let r = app
        .post_signed("/webhooks/customerio/segments", WEBHOOK_KEY, liquid)
        .await;
    assert_eq!(r.status(), 422);
    let err: serde_json::Value = r.json().await.unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("Liquid"));

    let (status, err) = app
        .segment_webhook(
            &json!({"segment_id": 42, "action": "entered", "occurred_at": T0,
            "identifiers": {"id": "", "cio_id": null, "email": "", "phone": ""}}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("identifier"),
        "{err}"
    );

    let (status, _) = app
        .reporting_webhook(
            &json!({"event_id": "e1", "object_type": "email", "metric": "sent",
            "timestamp": T0, "data": {"identifiers": {"id": null}}}),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(app.members(CART).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_repeated_delivery_is_2xx_and_changes_nothing() {
    let app = TestApp::start().await;
    let (_, first) = app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    assert_eq!(first["status"], "accepted");
    let (status, again) = app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    assert_eq!(status, 200);
    assert_eq!(again["status"], "duplicate");

    let rep = json!({"event_id": "01E4C4CT6YDC7Y5M7FE1GWWPQJ", "object_type": "email", "metric": "opened",
        "timestamp": T0, "data": {"identifiers": {"id": "u1"}, "delivery_id": "d1"}});
    assert_eq!(app.reporting_webhook(&rep).await.1["status"], "accepted");
    assert_eq!(app.reporting_webhook(&rep).await.1["status"], "duplicate");

    let (_, person) = app.admin_get("/v1/people/u1").await;
    assert_eq!(person["history"].as_array().unwrap().len(), 2, "{person}");
    assert_eq!(app.members(CART).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn an_older_event_arriving_late_is_history_but_does_not_change_membership() {
    let app = TestApp::start().await;
    // The exit (newer) arrives first, the entry (older) after it.
    app.segment_event(CART_SEGMENT, "u1", "exited", T0 + 100)
        .await;
    let (_, late) = app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    assert_eq!(late["audiences"][0]["outcome"], "stale");
    assert_eq!(app.members(CART).await, 0);

    let (_, person) = app.admin_get("/v1/people/u1").await;
    let outcomes: Vec<_> = person["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert!(outcomes.contains(&"stale".to_owned()), "{outcomes:?}");
    let m = app.metrics().await;
    assert!(metric_value(&m, "koala_membership_stale_total", &[("audience", CART)]) >= 1.0);
    app.stop().await;
}

#[tokio::test]
async fn an_entry_and_exit_at_the_same_second_resolve_to_out_in_either_order() {
    for order in [["entered", "exited"], ["exited", "entered"]] {
        let app = TestApp::start().await;
        for action in order {
            app.segment_event(CART_SEGMENT, "u1", action, T0).await;
        }
        assert_eq!(app.members(CART).await, 0, "order {order:?}");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_segment_no_audience_uses_is_200_ignored_and_counted() {
    let app = TestApp::start().await;
    let (status, body) = app.segment_event(999, "u1", "entered", T0).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ignored");
    assert!(body["reason"].as_str().unwrap().contains("999"));
    assert_eq!(app.admin_get("/v1/people/u1").await.0, 404);
    let m = app.metrics().await;
    assert!(metric_value(&m, "koala_segment_ignored_total", &[("segment", "999")]) >= 1.0);
    app.stop().await;
}

#[tokio::test]
async fn identifier_coverage_counts_email_phone_and_neither() {
    let app = TestApp::start().await;
    let people = [
        json!({"id": "a", "email": "a@example.com", "phone": "+14155550100"}),
        json!({"id": "b", "email": "b@example.com"}),
        json!({"id": "c", "phone": "+447700900123"}),
        json!({"id": "d"}),
    ];
    for (i, ids) in people.iter().enumerate() {
        let (status, body) = app
            .segment_webhook(&json!({"segment_id": CART_SEGMENT, "action": "entered", "occurred_at": T0 + i as i64, "identifiers": ids}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let a = app.audience(CART).await;
    assert_eq!(a["members"], 4);
    assert_eq!(a["identifier_coverage"]["with_email"], 2);
    assert_eq!(a["identifier_coverage"]["with_phone"], 2);
    assert_eq!(a["identifier_coverage"]["with_neither"], 1);
    assert_eq!(a["segment_id"], CART_SEGMENT);
    assert!(a["last_change_at"].as_i64().is_some());
    app.stop().await;
}

#[tokio::test]
async fn people_merge_by_id_then_cio_id() {
    let app = TestApp::start().await;
    app.segment_webhook(
        &json!({"segment_id": CART_SEGMENT, "action": "entered", "occurred_at": T0,
        "identifiers": {"cio_id": "c-1", "email": "x@example.com"}}),
    )
    .await;
    // Same person, now also with an id: merged by cio_id, not duplicated.
    app.segment_webhook(
        &json!({"segment_id": VIP_SEGMENT, "action": "entered", "occurred_at": T0 + 1,
        "identifiers": {"id": "u9", "cio_id": "c-1"}}),
    )
    .await;
    let (_, person) = app.admin_get("/v1/people/u9").await;
    assert_eq!(person["identifiers"]["cio_id"], "c-1");
    assert_eq!(
        person["memberships"].as_array().unwrap().len(),
        2,
        "{person}"
    );
    // Lookup by cio_id with Customer.io's prefix finds the same person.
    assert_eq!(
        app.admin_get("/v1/people/cio_c-1").await.1["person_id"],
        person["person_id"]
    );
    app.stop().await;
}

#[tokio::test]
async fn reporting_unsubscribe_updates_subscription_latest_wins_and_unknown_metrics_are_signals() {
    let app = TestApp::start().await;
    let ev = |id: &str, metric: &str, at: i64| {
        json!({"event_id": id, "object_type": "customer", "metric": metric, "timestamp": at,
               "data": {"identifiers": {"id": "u1", "email": "u1@example.com", "cio_id": "c1"}}})
    };
    assert_eq!(
        app.reporting_webhook(&ev("e1", "unsubscribed", T0 + 10))
            .await
            .0,
        200
    );
    // An older "subscribed" arriving late does not undo the unsubscribe.
    assert_eq!(
        app.reporting_webhook(&ev("e2", "subscribed", T0)).await.0,
        200
    );
    let (_, person) = app.admin_get("/v1/people/u1").await;
    assert_eq!(person["subscription"]["subscribed"], false);

    let unknown = json!({"event_id": "e3", "object_type": "hologram", "metric": "teleported", "timestamp": T0,
        "data": {"identifiers": {"id": "u1"}}});
    let (status, body) = app.reporting_webhook(&unknown).await;
    assert_eq!(status, 200, "{body}");
    let m = app.metrics().await;
    assert!(
        metric_value(
            &m,
            "koala_reporting_events_total",
            &[("object_type", "hologram"), ("metric", "teleported")]
        ) >= 1.0
    );
    let (_, person) = app.admin_get("/v1/people/u1").await;
    assert!(person["history"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["kind"] == "hologram.teleported"));
    app.stop().await;
}

#[tokio::test]
async fn state_survives_a_restart() {
    let app = TestApp::start().await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    app.segment_event(CART_SEGMENT, "u2", "entered", T0).await;
    let app = app.restart().await;
    assert_eq!(app.members(CART).await, 2);
    // And dedupe state too: the same delivery after a restart is a duplicate.
    assert_eq!(
        app.segment_event(CART_SEGMENT, "u1", "entered", T0).await.1["status"],
        "duplicate"
    );
    app.stop().await;
}

#[tokio::test]
async fn concurrent_webhooks_are_all_committed() {
    let app = TestApp::start().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let http = app.http.clone();
        let url = app.url("/webhooks/customerio/segments");
        tasks.push(tokio::spawn(async move {
            let body =
                serde_json::to_vec(&segment_body(CART_SEGMENT, &format!("p{i}"), "entered", T0))
                    .unwrap();
            let ts = chrono::Utc::now().timestamp().to_string();
            http.post(url)
                .header("x-cio-timestamp", &ts)
                .header(
                    "x-cio-signature",
                    koala::customerio::signature::sign(WEBHOOK_KEY, &ts, &body),
                )
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(app.members(CART).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_deliveries_of_one_person_commit_as_if_one_by_one() {
    let app = TestApp::start().await;
    // The same delivery ten times, and a person's whole history at once, in
    // whatever order the group commit receives them.
    let mut bodies = vec![segment_body(CART_SEGMENT, "dup", "entered", T0); 10];
    for (i, action) in ["entered", "exited", "entered", "exited", "entered"]
        .iter()
        .enumerate()
    {
        bodies.push(segment_body(
            CART_SEGMENT,
            "hist",
            action,
            T0 + i as i64 * 10,
        ));
    }
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let http = app.http.clone();
            let url = app.url("/webhooks/customerio/segments");
            tokio::spawn(async move {
                let bytes = serde_json::to_vec(&body).unwrap();
                let ts = chrono::Utc::now().timestamp().to_string();
                let r = http
                    .post(url)
                    .header("x-cio-timestamp", &ts)
                    .header(
                        "x-cio-signature",
                        koala::customerio::signature::sign(WEBHOOK_KEY, &ts, &bytes),
                    )
                    .body(bytes)
                    .send()
                    .await
                    .unwrap();
                r.json::<serde_json::Value>().await.unwrap()["status"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| *s == "duplicate").count(),
        9,
        "{statuses:?}"
    );
    let (_, hist) = app.admin_get("/v1/people/hist").await;
    assert_eq!(
        hist["memberships"][0]["is_member"], true,
        "the latest event (an entry) wins"
    );
    assert_eq!(hist["memberships"][0]["last_event_at"], (T0 + 40) * 1000);
    assert_eq!(hist["history"].as_array().unwrap().len(), 5);
    assert_eq!(app.members(CART).await, 2);
    app.stop().await;
}

/// The Liquid body in the README, rendered the way Customer.io would (each
/// `{{ … }}` replaced by the person's value, filters applied), is accepted.
#[tokio::test]
async fn the_readme_liquid_template_renders_to_an_accepted_body() {
    let now = chrono::Utc::now().timestamp().to_string();
    let body = render_readme_template(|expr| match expr {
        "\"now\"" => now.clone(),
        "campaign.id" => "7".into(),
        "customer.id" => "u-readme".into(),
        "customer.cio_id" => String::new(),
        "customer.email" => "Ann.Reader@Example.com".into(),
        "customer.phone" => "+14155550123".into(),
        "customer.first_name" => r#"Ann "The Reader""#.into(),
        "customer.last_name" => String::new(),
        other => panic!("the test does not know {other}"),
    });
    let body = body.replace(
        "\"segment_id\": 42",
        &format!("\"segment_id\": {CART_SEGMENT}"),
    );
    let app = TestApp::start().await;
    let r = app
        .post_signed(
            "/webhooks/customerio/segments",
            WEBHOOK_KEY,
            body.as_bytes(),
        )
        .await;
    let status = r.status();
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{answer}\n{body}");
    assert_eq!(answer["status"], "accepted");
    let (_, person) = app.admin_get("/v1/people/u-readme").await;
    assert_eq!(person["identifiers"]["email"], "a***@example.com");
    assert_eq!(person["identifiers"]["phone"], "+*******0123");
    app.stop().await;
}

/// A phone without its country code (as many workspaces store them) must
/// not refuse the person: Customer.io would hold back every later webhook.
#[tokio::test]
async fn a_phone_without_country_code_is_accepted_and_shown_unusable() {
    let app = TestApp::start().await;
    let mut body = segment_body(CART_SEGMENT, "u-nat", "entered", T0);
    body["identifiers"]["phone"] = json!("5551234567");
    let (status, answer) = app.segment_webhook(&body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["audiences"][0]["outcome"], "applied");
    assert_eq!(app.members(CART).await, 1);

    let (_, person) = app.admin_get("/v1/people/u-nat").await;
    assert_eq!(person["identifiers"]["phone"], serde_json::Value::Null);
    assert_eq!(person["identifiers"]["email"], "u***@example.com");
    let unusable = &person["identifiers"]["unusable"][0];
    assert_eq!(unusable["identifier"], "phone");
    assert_eq!(unusable["reason"], "no_country_code");
    assert!(!person.to_string().contains("5551234567"), "{person}");

    let coverage = &app.audience(CART).await["identifier_coverage"];
    assert_eq!(coverage["with_email"], 1, "{coverage}");
    assert_eq!(coverage["with_phone"], 0, "{coverage}");
    assert_eq!(coverage["with_unusable_phone"], 1, "{coverage}");
    let metrics = app.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "koala_identifier_unusable_total",
            &[("identifier", "phone"), ("reason", "no_country_code")]
        ) >= 1.0
    );

    // Nothing at all usable: that alone is refused.
    let (status, err) = app
        .segment_webhook(
            &json!({"segment_id": CART_SEGMENT, "action": "entered", "occurred_at": T0,
            "identifiers": {"phone": "5551234567", "email": "not-an-email"}}),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("no usable identifier"), "{err}");
    assert!(!message.contains("5551234567"), "{err}");
    app.stop().await;
}

#[tokio::test]
async fn a_default_phone_country_makes_national_numbers_usable() {
    let config = base_config("")
        + "\n[identity]\ndefault_phone_country = \"US\"\n"
        + &cart_audience("", "mirror");
    let app = TestApp::start_with(&config).await;
    let mut body = segment_body(CART_SEGMENT, "u-us", "entered", T0);
    body["identifiers"]["phone"] = json!("(555) 123-4567");
    assert_eq!(app.segment_webhook(&body).await.0, 200);
    let (_, person) = app.admin_get("/v1/people/u-us").await;
    assert_eq!(person["identifiers"]["phone"], "+*******4567");
    assert_eq!(person["identifiers"]["unusable"], json!([]));
    let coverage = &app.audience(CART).await["identifier_coverage"];
    assert_eq!(coverage["with_phone"], 1, "{coverage}");
    assert_eq!(coverage["with_unusable_phone"], 0, "{coverage}");
    app.stop().await;
}

/// Coverage is kept with every change (not recomputed by a scan), so it
/// must follow entries, exits and identifiers that appear later.
#[tokio::test]
async fn identifier_coverage_follows_entries_exits_and_new_identifiers() {
    let app = TestApp::start().await;
    let coverage = |v: serde_json::Value| {
        let c = &v["identifier_coverage"];
        (
            v["members"].as_i64().unwrap(),
            c["with_email"].as_i64().unwrap(),
            c["with_phone"].as_i64().unwrap(),
            c["with_neither"].as_i64().unwrap(),
            c["with_unusable_phone"].as_i64().unwrap(),
        )
    };
    let enter = |id: &str, email: &str, phone: &str, at: i64| {
        json!({"segment_id": CART_SEGMENT, "action": "entered", "occurred_at": at,
               "identifiers": {"id": id, "email": email, "phone": phone}})
    };
    app.segment_webhook(&enter("c1", "c1@example.com", "", T0))
        .await;
    app.segment_webhook(&enter("c2", "", "5551234567", T0))
        .await;
    app.segment_webhook(&enter("c3", "", "+14155550100", T0))
        .await;
    assert_eq!(coverage(app.audience(CART).await), (3, 1, 1, 1, 1));
    // c2's phone arrives with its country code on a later event.
    let mut later = enter("c2", "", "+14155550101", T0 + 10);
    later["action"] = json!("entered");
    app.segment_webhook(&later).await;
    assert_eq!(coverage(app.audience(CART).await), (3, 1, 2, 0, 0));
    // c3 leaves; the VIP audience never saw anyone.
    app.segment_event(CART_SEGMENT, "c3", "exited", T0 + 20)
        .await;
    assert_eq!(coverage(app.audience(CART).await), (2, 1, 1, 0, 0));
    assert_eq!(coverage(app.audience(VIP).await), (0, 0, 0, 0, 0));
    app.stop().await;
}

/// Every string the README's template renders goes through filters that
/// Customer.io documents, so no value can break the JSON.
#[tokio::test]
async fn the_readme_template_survives_quotes_backslashes_and_control_characters() {
    let nasty = "a\"b\\c\nd\te\r";
    let body = render_readme_template(|expr| match expr {
        "\"now\"" => chrono::Utc::now().timestamp().to_string(),
        "campaign.id" => "7".into(),
        "customer.id" => format!("u-{nasty}"),
        "customer.cio_id" => nasty.into(),
        "customer.email" => format!("x{nasty}@example.com"),
        "customer.phone" => format!("+1415555{nasty}0123"),
        "customer.first_name" | "customer.last_name" => nasty.into(),
        other => panic!("the test does not know {other}"),
    });
    let body = body.replace(
        "\"segment_id\": 42",
        &format!("\"segment_id\": {CART_SEGMENT}"),
    );
    let app = TestApp::start().await;
    let r = app
        .post_signed(
            "/webhooks/customerio/segments",
            WEBHOOK_KEY,
            body.as_bytes(),
        )
        .await;
    let status = r.status();
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{answer}\n{body}");
    assert_eq!(answer["status"], "accepted", "{answer}");
    app.stop().await;
}
