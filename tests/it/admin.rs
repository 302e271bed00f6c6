//! The admin API: bearer auth, audiences, people (masked).

use serde_json::json;

use crate::support::app::*;

#[tokio::test]
async fn the_admin_api_needs_the_bearer_token() {
    let app = TestApp::start().await;
    for path in [
        "/v1/audiences",
        &format!("/v1/audiences/{CART}"),
        "/v1/people/u1",
        "/v1/dead-letters",
    ] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
        let r = app
            .http
            .get(app.url(path))
            .bearer_auth("wrong-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    // Health and metrics are open.
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.http
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.http
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn audiences_are_listed_and_unknown_ones_are_404() {
    let app = TestApp::start().await;
    let (status, body) = app.admin_get("/v1/audiences").await;
    assert_eq!(status, 200);
    let names: Vec<_> = body["audiences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&CART.to_owned()) && names.contains(&VIP.to_owned()));
    let (status, body) = app.admin_get("/v1/audiences/nope").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    app.stop().await;
}

#[tokio::test]
async fn a_person_shows_masked_identifiers_memberships_and_history() {
    let app = TestApp::start().await;
    app.segment_webhook(
        &json!({"segment_id": CART_SEGMENT, "action": "entered", "occurred_at": 1_750_000_000,
        "identifiers": {"id": "u1", "email": "Jane.Doe@Example.com", "phone": "+1 415 555 0100"},
        "attributes": {"first_name": "Jane", "plan": "gold"}}),
    )
    .await;
    let (status, p) = app.admin_get("/v1/people/u1").await;
    assert_eq!(status, 200);
    let text = p.to_string();
    assert!(!text.contains("jane.doe"), "{text}");
    assert!(!text.contains("4155550100"), "{text}");
    assert!(!text.contains("Jane"), "{text}");
    assert_eq!(p["identifiers"]["email"], "j***@example.com");
    assert_eq!(p["identifiers"]["phone"], "+*******0100");
    assert_eq!(p["attributes"]["plan"], "gold");
    assert_eq!(p["memberships"][0]["is_member"], true);
    assert_eq!(p["history"][0]["kind"], "entered");
    assert_eq!(p["history"][0]["outcome"], "applied");
    // Lookup by email works too.
    assert_eq!(
        app.admin_get("/v1/people/jane.doe@example.com").await.0,
        200
    );
    assert_eq!(app.admin_get("/v1/people/nobody").await.0, 404);
    app.stop().await;
}

#[tokio::test]
async fn audience_changes_explain_a_drop_by_time_and_source() {
    let app = TestApp::start().await;
    let now = chrono::Utc::now().timestamp();
    let hour_ago = now - 3600;
    for i in 0..10 {
        app.segment_event(CART_SEGMENT, &format!("p{i}"), "entered", hour_ago)
            .await;
    }
    for i in 0..4 {
        app.segment_event(CART_SEGMENT, &format!("p{i}"), "exited", now)
            .await;
    }
    // A late, older exit is history only.
    app.segment_event(CART_SEGMENT, "p9", "exited", hour_ago - 10)
        .await;
    let (status, c) = app
        .admin_get(&format!("/v1/audiences/{CART}/changes?since=3h&bucket=1h"))
        .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["totals"]["entered"], 10);
    assert_eq!(c["totals"]["exited"], 4);
    assert_eq!(c["totals"]["net"], 6);
    assert_eq!(c["totals"]["stale"], 1);
    assert_eq!(c["bucket_seconds"], 3600);
    let buckets = c["buckets"].as_array().unwrap();
    assert!(buckets.iter().all(|b| b["source"] == "segment_webhook"));
    assert!(
        buckets.len() >= 2,
        "entries and exits fall in different hours: {c}"
    );

    let (status, e) = app
        .admin_get(&format!("/v1/audiences/{CART}/changes?bucket=soon"))
        .await;
    assert_eq!(status, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("bucket:"),
        "{e}"
    );
    assert_eq!(app.admin_get("/v1/audiences/nope/changes").await.0, 404);
    app.stop().await;
}
