//! Attribute mapping per audience × destination: which attribute feeds
//! which platform field, validated before anything is sent, and a changed
//! mapping re-sends the members once.

use std::time::Duration;

use koala::normalization::sha256_hex;
use serde_json::json;

use crate::support::app::*;
use crate::support::fake_meta::*;
use crate::support::wait::until;

const AUD: &str = "23850000000000777";
const T0: i64 = 1_750_000_000;
const LONG: Duration = Duration::from_secs(30);

fn config(fake: &FakeMeta, destination_map: &str, target_map: &str) -> String {
    base_config("")
        + &fake.destination_toml(
            "meta",
            &format!("identifiers = [\"extern_id\", \"email\", \"fn\"]\nmap = {destination_map}"),
        )
        + &cart_audience(
            &format!(r#"{{ destination = "meta", audience_id = "{AUD}", map = {target_map} }}"#),
            "mirror",
        )
}

async fn enter(app: &TestApp, id: &str, attributes: serde_json::Value) {
    let (status, body) = app
        .segment_webhook(&json!({"segment_id": CART_SEGMENT, "action": "entered", "occurred_at": T0,
            "identifiers": {"id": id, "email": format!("{id}@example.com")}, "attributes": attributes}))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The FN column of the rows the fake received for `extern_id`, in order.
fn fn_hashes(fake: &FakeMeta, extern_id: &str) -> Vec<String> {
    fake.requests()
        .iter()
        .filter(|r| r.status == 200)
        .flat_map(|r| {
            let fn_col = r.schema.iter().position(|c| c == "FN");
            let id_col = r.schema.iter().position(|c| c == "EXTERN_ID");
            r.rows
                .iter()
                .filter(|row| id_col.map(|i| row[i].as_str()) == Some(extern_id))
                .filter_map(|row| fn_col.map(|i| row[i].clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn a_sync_target_map_overrides_the_destination_map_and_feeds_the_platform_field() {
    let fake = FakeMeta::start().await;
    let app = TestApp::start_with(&config(
        &fake,
        r#"{ fn = "first_name" }"#,
        r#"{ fn = "nickname" }"#,
    ))
    .await;
    enter(
        &app,
        "m1",
        json!({"first_name": "Ann", "nickname": "Annie"}),
    )
    .await;
    until("m1 sent", LONG, || async {
        !fn_hashes(&fake, "m1").is_empty()
    })
    .await;
    assert_eq!(fn_hashes(&fake, "m1"), [sha256_hex("annie")]);
    app.stop().await;
}

#[tokio::test]
async fn a_value_that_cannot_be_coerced_is_counted_and_the_person_still_sent() {
    let fake = FakeMeta::start().await;
    let app = TestApp::start_with(&config(&fake, "{}", r#"{ fn = "nickname" }"#)).await;
    enter(&app, "m2", json!({"nickname": {"not": "a name"}})).await;
    until("m2 sent", LONG, || async {
        fake.members(AUD).contains("m2")
    })
    .await;
    assert_eq!(fn_hashes(&fake, "m2"), [""]);
    let m = app.metrics().await;
    assert!(
        metric_value(
            &m,
            "koala_mapping_coercion_failures_total",
            &[("destination", "meta"), ("field", "fn")]
        ) >= 1.0,
        "{m}"
    );
    app.stop().await;
}

#[tokio::test]
async fn changing_a_mapping_resends_the_members_once() {
    let fake = FakeMeta::start().await;
    let first = config(&fake, r#"{ fn = "first_name" }"#, "{}");
    let app = TestApp::start_with(&first).await;
    enter(
        &app,
        "m3",
        json!({"first_name": "Ann", "nickname": "Annie"}),
    )
    .await;
    until("m3 sent", LONG, || async {
        fn_hashes(&fake, "m3").len() == 1
    })
    .await;
    until("m3 acknowledged", LONG, || async {
        app.audience(CART).await["destinations"][0]["acknowledged_members"] == 1
    })
    .await;

    // Restart with the same mapping: nothing is sent again.
    let dir = app.dir.clone();
    app.stop().await;
    let app = TestApp::start_in(dir.clone(), &first).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fn_hashes(&fake, "m3").len(), 1);
    app.stop().await;

    // A new mapping: the member goes once more, with the new field.
    let second = config(&fake, r#"{ fn = "nickname" }"#, "{}");
    let app = TestApp::start_in(dir, &second).await;
    until("m3 re-sent", LONG, || async {
        fn_hashes(&fake, "m3").len() == 2
    })
    .await;
    assert_eq!(
        fn_hashes(&fake, "m3"),
        [sha256_hex("ann"), sha256_hex("annie")]
    );
    until("nothing pending", LONG, || async {
        app.audience(CART).await["destinations"][0]["pending_adds"] == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fn_hashes(&fake, "m3").len(), 2);
    app.stop().await;
}

#[test]
fn a_mapping_that_cannot_work_is_a_config_error_naming_the_key() {
    let text = base_config("")
        + "[[destinations]]\nname = \"meta\"\ntype = \"meta_custom_audiences\"\naccess_token = \"t\"\nmap = { fn = \"identifiers.zip\" }\n"
        + &cart_audience(
            r#"{ destination = "meta", audience_id = "1", map = { shoe_size = "shoe" } }"#,
            "mirror",
        );
    let e = koala::config::Config::from_toml(&text).unwrap_err().0;
    assert!(
        e.iter()
            .any(|p| p.starts_with("audiences[1].sync[0].map.shoe_size: the platform has no field")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|p| p.starts_with("destinations[0].map.fn: identifiers.zip is not an identifier")),
        "{e:?}"
    );
}
