//! The BigQuery destination through the real app against a fake of the
//! BigQuery v2 REST API and Google's token endpoint: changes arrive as
//! append-only rows with typed columns, a retried batch does not
//! duplicate (insertId), rows BigQuery refuses are dead-lettered alone,
//! the access token is refreshed after expiry and after a 401, big
//! batches are split and a row too big alone is dead-lettered,
//! `create_table` creates the table and the view, schema drift pauses
//! naming the field, failures retry or pause, `koala check` names the
//! keys and `koala check --online` reads the table's schema without
//! writing. First, the fake itself.

use std::time::Duration;

use koala::destinations::signed_jwt::RsaSigningKey;
use serde_json::{json, Value};

use crate::support::app::*;
use crate::support::fake_bigquery::*;
use crate::support::wait::until;

const T0: i64 = 1_750_000_000;
const LONG: Duration = Duration::from_secs(30);
const TABLE: &str = "audience_changes";

fn config(fake: &FakeBigQuery, extra: &str) -> String {
    base_config("")
        + &fake.destination_toml("bq", TABLE, extra)
        + &cart_audience(r#"{ destination = "bq" }"#, "mirror")
}

fn person_body(person: &str, action: &str, at: i64, attributes: Value) -> Value {
    let mut b = segment_body(CART_SEGMENT, person, action, at);
    b["attributes"] = attributes;
    b
}

fn assertion(aud: &str, iss: &str, scope: &str, lifetime: i64) -> String {
    let iat = chrono::Utc::now().timestamp();
    RsaSigningKey::from_pem(PRIVATE_KEY)
        .unwrap()
        .sign(&json!({"iss": iss, "scope": scope, "aud": aud, "iat": iat, "exp": iat + lifetime}))
        .unwrap()
}

async fn token_call(fake: &FakeBigQuery, assertion: &str) -> (u16, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
        .append_pair("assertion", assertion)
        .finish();
    let r = reqwest::Client::new()
        .post(fake.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn bq_post(fake: &FakeBigQuery, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!(
            "{}/bigquery/v2/projects/{PROJECT}/datasets/{DATASET}/tables{path}",
            fake.base_url()
        ))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn bq_get(fake: &FakeBigQuery, path: &str, token: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!(
            "{}/bigquery/v2/projects/{PROJECT}/datasets/{DATASET}/tables{path}",
            fake.base_url()
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bigquery_the_fake_enforces_the_documented_contract() {
    let fake = FakeBigQuery::start().await;
    let aud = fake.token_url();
    // The assertion: signature, audience, issuer, scope and lifetime.
    let mut forged = assertion(&aud, CLIENT_EMAIL, SCOPE, 3600);
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    for bad in [
        forged,
        assertion(
            "https://oauth2.googleapis.com/token",
            CLIENT_EMAIL,
            SCOPE,
            3600,
        ),
        assertion(&aud, "someone@else.iam.gserviceaccount.com", SCOPE, 3600),
        assertion(
            &aud,
            CLIENT_EMAIL,
            "https://www.googleapis.com/auth/datamanager",
            3600,
        ),
        assertion(&aud, CLIENT_EMAIL, SCOPE, 3601),
        assertion(&aud, CLIENT_EMAIL, SCOPE, -10),
    ] {
        let (status, body) = token_call(&fake, &bad).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "{body}"
        );
    }
    let (status, body) = token_call(&fake, &assertion(&aud, CLIENT_EMAIL, SCOPE, 3600)).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();

    // tables.insert: a token, a schema; a second time 409.
    let table = json!({"tableReference": {"projectId": PROJECT, "datasetId": DATASET, "tableId": "t"},
        "schema": {"fields": [{"name": "id", "type": "STRING", "mode": "REQUIRED"},
                              {"name": "n", "type": "INT64", "mode": "NULLABLE"}]}});
    assert_eq!(bq_post(&fake, "", "ya29.not-issued", &table).await.0, 401);
    assert_eq!(bq_post(&fake, "", &token, &table).await.0, 200);
    let (status, body) = bq_post(&fake, "", &token, &table).await;
    assert_eq!(
        (status, body["error"]["errors"][0]["reason"].as_str()),
        (409, Some("duplicate"))
    );

    // tables.get: a token; the schema in tables.get's own type names.
    assert_eq!(bq_get(&fake, "/t", "ya29.not-issued").await.0, 401);
    let (status, body) = bq_get(&fake, "/t", &token).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (200, Some("TABLE")),
        "{body}"
    );
    assert_eq!(
        body["schema"]["fields"],
        json!([{"name": "id", "type": "STRING", "mode": "REQUIRED"},
               {"name": "n", "type": "INTEGER", "mode": "NULLABLE"}])
    );
    let (status, body) = bq_get(&fake, "/nope", &token).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (404, Some("Not found: Table fake-project:koala.nope"))
    );

    // insertAll: unknown table, unknown field, wrong type, missing required.
    let rows = |rows: Value| json!({"skipInvalidRows": false, "rows": rows});
    let (status, body) = bq_post(
        &fake,
        "/nope/insertAll",
        &token,
        &rows(json!([{"json": {"id": "a"}}])),
    )
    .await;
    assert_eq!(
        (status, body["error"]["errors"][0]["reason"].as_str()),
        (404, Some("notFound"))
    );
    let (status, body) = bq_post(
        &fake,
        "/t/insertAll",
        &token,
        &rows(json!([{"insertId": "1", "json": {"id": "a"}},
                     {"insertId": "2", "json": {"id": "b", "extra": 1}},
                     {"insertId": "3", "json": {"id": "c", "n": 1.5}},
                     {"insertId": "4", "json": {"n": 2}}])),
    )
    .await;
    assert_eq!(status, 200);
    let errors = body["insertErrors"].as_array().unwrap();
    let reasons: Vec<(&str, &str)> = errors
        .iter()
        .map(|e| {
            (
                e["errors"][0]["reason"].as_str().unwrap(),
                e["errors"][0]["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(reasons[0], ("stopped", ""));
    assert_eq!(reasons[1], ("invalid", "no such field: extra."));
    assert!(
        reasons[2].1.starts_with("Cannot convert value to integer"),
        "{reasons:?}"
    );
    assert_eq!(reasons[3], ("invalid", "Missing required field: id."));
    assert!(
        fake.rows("t").is_empty(),
        "skipInvalidRows=false stores nothing"
    );
    // With skipInvalidRows the valid rows are stored; insertIds dedupe.
    let mixed = json!({"skipInvalidRows": true, "rows": [{"insertId": "1", "json": {"id": "a"}},
                                                         {"insertId": "2", "json": {"id": "b", "extra": 1}}]});
    let (_, body) = bq_post(&fake, "/t/insertAll", &token, &mixed).await;
    assert_eq!(body["insertErrors"].as_array().unwrap().len(), 1);
    let (_, body) = bq_post(
        &fake,
        "/t/insertAll",
        &token,
        &rows(json!([{"insertId": "1", "json": {"id": "a"}}])),
    )
    .await;
    assert!(body.get("insertErrors").is_none(), "{body}");
    assert_eq!((fake.rows("t").len(), fake.duplicates()), (1, 1));
    // Limits: rows (400) and bytes (413).
    fake.set_limits(2, 1000);
    let three = rows(json!([{"json": {"id": "a"}}, {"json": {"id": "b"}}, {"json": {"id": "c"}}]));
    assert_eq!(bq_post(&fake, "/t/insertAll", &token, &three).await.0, 400);
    let big = rows(json!([{"json": {"id": "x".repeat(2000)}}]));
    let r = reqwest::Client::new()
        .post(format!(
            "{}/bigquery/v2/projects/{PROJECT}/datasets/{DATASET}/tables/t/insertAll",
            fake.base_url()
        ))
        .bearer_auth(&token)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // Injected faults, then an expired token.
    fake.set_limits(MAX_ROWS, MAX_BYTES);
    fake.fail_next_with(1, 403, "rateLimitExceeded", Some(2));
    let one = rows(json!([{"json": {"id": "z"}}]));
    let (status, body) = bq_post(&fake, "/t/insertAll", &token, &one).await;
    assert_eq!(
        (status, body["error"]["errors"][0]["reason"].as_str()),
        (403, Some("rateLimitExceeded"))
    );
    fake.expire_tokens();
    assert_eq!(bq_post(&fake, "/t/insertAll", &token, &one).await.0, 401);
}

#[tokio::test]
async fn bigquery_adds_removes_and_updates_arrive_as_rows_with_typed_columns() {
    let fake = FakeBigQuery::start().await;
    let map = r#"create_table = true
map = { plan = "plan", lifetime_value = { from = "ltv", type = "number" }, vip = { from = "vip", type = "boolean" }, last_order_at = { from = "last_order", type = "timestamp" } }"#;
    let app = TestApp::start_with(&config(&fake, map)).await;
    let attrs = json!({"plan": "gold", "ltv": "120.5", "vip": "yes", "last_order": 1_764_579_600});
    app.segment_webhook(&person_body("u1", "entered", T0, attrs.clone()))
        .await;
    app.segment_webhook(&person_body("u2", "entered", T0, attrs))
        .await;
    until("u1 and u2 stored", LONG, || async {
        fake.member_ids(TABLE, CART).len() == 2
    })
    .await;
    let first = fake.rows(TABLE);
    let u1 = first.iter().find(|r| r["person_id"] == "u1").unwrap();
    assert_eq!(u1["audience"], CART);
    assert_eq!(u1["cio_id"], "ciou1");
    assert_eq!(u1["change"], "add");
    assert_eq!(u1["occurred_at"], "2025-06-15T15:06:40.000Z");
    assert!(u1["synced_at"].as_str().is_some());
    assert_eq!(u1["email"], "u1@example.com");
    assert!(u1.get("phone").is_none());
    assert_eq!(u1["plan"], "gold");
    assert_eq!(u1["lifetime_value"], 120.5);
    assert_eq!(u1["vip"], true);
    assert_eq!(u1["last_order_at"], "2025-12-01T09:00:00.000Z");
    assert_eq!(u1["change_id"].as_str().unwrap().len(), 64);

    app.segment_event(CART_SEGMENT, "u1", "exited", T0 + 60)
        .await;
    app.segment_webhook(&person_body(
        "u2",
        "entered",
        T0 + 61,
        json!({"plan": "platinum", "ltv": 300, "vip": false, "last_order": 1_764_579_700}),
    ))
    .await;
    until("u1 removed and u2 updated", LONG, || async {
        let m = fake.members(TABLE);
        m.len() == 1 && m.values().next().unwrap()["plan"] == "platinum"
    })
    .await;
    let rows = fake.rows(TABLE);
    let changes: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["person_id"].as_str().unwrap(),
                r["change"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(changes.len(), 4, "{changes:?}");
    assert!(
        changes.contains(&("u1", "remove")) && changes.contains(&("u2", "update")),
        "{changes:?}"
    );
    let u2 = &fake.members(TABLE)[&(CART.to_owned(), "u2".to_owned())];
    assert_eq!(
        (
            u2["change"].clone(),
            u2["lifetime_value"].clone(),
            u2["vip"].clone()
        ),
        (json!("update"), json!(300.0), json!(false))
    );
    // The update keeps the membership change's time; synced_at orders it.
    assert_eq!(u2["occurred_at"], "2025-06-15T15:06:40.000Z");
    assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());
    assert_eq!(fake.duplicates(), 0);
    app.stop().await;
}

#[tokio::test]
async fn bigquery_a_retried_batch_does_not_duplicate() {
    let fake = FakeBigQuery::start().await;
    let app = TestApp::start_with(&config(&fake, "create_table = true")).await;
    // Stored, but answered 503: koala sends the same rows again, which
    // BigQuery recognises by insertId.
    fake.fail_next_after_storing(1, 503);
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("the retry arrived", LONG, || async {
        fake.duplicates() == 1
    })
    .await;
    until("acknowledged", LONG, || async {
        app.audience(CART).await["destinations"][0]["acknowledged_members"] == 1
    })
    .await;
    let inserts = fake.requests_of(Kind::InsertAll);
    let statuses: Vec<u16> = inserts.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 200]);
    assert_eq!(inserts[0].insert_ids.len(), 1);
    assert_eq!(inserts[0].insert_ids, inserts[1].insert_ids);
    let rows = fake.rows(TABLE);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["change_id"], inserts[0].insert_ids[0].as_str());
    app.stop().await;
}

/// Entries of people `p{i}` with `attributes`, committed straight through
/// the store in one go, so the engine claims them as one batch.
async fn entries_with(app: &TestApp, people: &[(String, Value)]) {
    let state = app.app.as_ref().unwrap().state();
    let audiences = state.catalog.for_segment(CART_SEGMENT).to_vec();
    let commands: Vec<_> = people
        .iter()
        .map(|(id, attributes)| koala::store::IngestCommand::Segment {
            event: koala::customerio::segment::SegmentEvent {
                segment_id: CART_SEGMENT,
                action: koala::customerio::segment::SegmentAction::Entered,
                occurred_at_ms: T0 * 1000,
                identifiers: koala::identity::Identifiers::new(Some(id), None, None, None).unwrap(),
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

async fn dead_letter_reasons(app: &TestApp) -> Vec<String> {
    let (_, dead) = app.admin_get("/v1/dead-letters?destination=bq").await;
    dead["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn bigquery_rows_bigquery_refuses_are_dead_lettered_alone() {
    let fake = FakeBigQuery::start().await;
    // A table made by hand whose `orders` is INT64: 2.5 cannot go in.
    let mut fields: Vec<(&str, &str, bool)> = KOALA_COLUMNS.to_vec();
    fields.push(("orders", "INT64", false));
    fake.create_table(TABLE, &fields);
    let text = config(
        &fake,
        r#"map = { orders = { from = "orders", type = "number" } }"#,
    );
    let app = TestApp::start_with(&text).await;
    let people: Vec<(String, Value)> = (0..6)
        .map(|i| {
            (
                format!("p{i}"),
                json!({"orders": if i == 2 || i == 4 { json!(2.5) } else { json!(i) }}),
            )
        })
        .collect();
    entries_with(&app, &people).await;
    until("two dead letters", LONG, || async {
        app.audience(CART).await["destinations"][0]["dead_letters"] == 2
    })
    .await;
    until("the four others stored", LONG, || async {
        fake.rows(TABLE).len() == 4
    })
    .await;
    let mut stored: Vec<String> = fake
        .rows(TABLE)
        .iter()
        .map(|r| r["person_id"].as_str().unwrap().to_owned())
        .collect();
    stored.sort();
    assert_eq!(stored, ["p0", "p1", "p3", "p5"]);
    let reasons = dead_letter_reasons(&app).await;
    assert_eq!(reasons.len(), 2);
    for r in &reasons {
        assert!(
            r.starts_with(
                "bigquery refused the row: invalid at orders: Cannot convert value to integer"
            ),
            "{r}"
        );
        assert!(!r.contains("2.5"), "the value is never repeated: {r}");
    }
    // One request with the bad rows, one without them: the `stopped` rows
    // were sent again at once, not dead-lettered.
    let inserts = fake.requests_of(Kind::InsertAll);
    let sizes: Vec<usize> = inserts.iter().map(|r| r.insert_ids.len()).collect();
    assert_eq!(sizes, [6, 4], "{sizes:?}");
    assert!(fake.members(TABLE).len() == 4);
    app.stop().await;
}

#[tokio::test]
async fn bigquery_the_token_is_refreshed_after_expiry_and_after_a_401() {
    let fake = FakeBigQuery::start().await;
    fake.set_token_lifetime(Duration::from_secs(1));
    let app = TestApp::start_with(&config(
        &fake,
        "create_table = true\ntoken_refresh_margin = \"0s\"",
    ))
    .await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 stored", LONG, || async { fake.rows(TABLE).len() == 1 }).await;
    assert_eq!(fake.token_requests(), 1);
    // Past the token's lifetime koala asks for a new one before calling.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    app.segment_event(CART_SEGMENT, "u2", "entered", T0).await;
    until("u2 stored", LONG, || async { fake.rows(TABLE).len() == 2 }).await;
    assert_eq!(fake.token_requests(), 2);
    assert!(
        fake.requests().iter().all(|r| r.status != 401),
        "no expired token was used"
    );

    // A token revoked early: 401, a fresh token, the same rows again.
    fake.set_token_lifetime(Duration::from_secs(3600));
    app.segment_event(CART_SEGMENT, "u3", "entered", T0).await;
    until("u3 stored", LONG, || async { fake.rows(TABLE).len() == 3 }).await;
    let before = fake.token_requests();
    fake.expire_tokens();
    app.segment_event(CART_SEGMENT, "u4", "entered", T0).await;
    until("u4 stored", LONG, || async { fake.rows(TABLE).len() == 4 }).await;
    assert_eq!(fake.token_requests(), before + 1);
    assert_eq!(
        fake.requests().iter().filter(|r| r.status == 401).count(),
        1
    );

    // A key Google no longer accepts: paused, saying so.
    fake.refuse_assertions(true);
    fake.expire_tokens();
    app.segment_event(CART_SEGMENT, "u5", "entered", T0).await;
    let reason = app.paused_reason().await;
    assert!(
        reason.contains("service account") && reason.contains("invalid_grant"),
        "{reason}"
    );
    assert!(
        !reason.contains("PRIVATE KEY") && !reason.contains("ya29"),
        "{reason}"
    );
    assert_eq!(fake.rows(TABLE).len(), 4);
    app.stop().await;
}

#[tokio::test]
async fn bigquery_a_big_batch_is_split_and_a_row_too_big_alone_is_dead_lettered() {
    let fake = FakeBigQuery::start().await;
    fake.set_limits(100, 20_000);
    let text = config(
        &fake,
        "create_table = true\nmax_batch = 2000\nmax_rows_per_request = 100\nmax_request_bytes = 20000\nmap = { bio = \"bio\" }",
    );
    let app = TestApp::start_with(&text).await;
    let people: Vec<(String, Value)> = (0..450).map(|i| (format!("p{i}"), json!({}))).collect();
    entries_with(&app, &people).await;
    until("450 stored", LONG, || async {
        fake.rows(TABLE).len() == 450
    })
    .await;
    let inserts = fake.requests_of(Kind::InsertAll);
    assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());
    assert!(inserts
        .iter()
        .all(|r| r.status == 200 && r.insert_ids.len() <= 100 && r.bytes <= 20_000));
    // Rows of ~330 bytes: 20,000 bytes bind (at about 60 rows) before
    // 100 rows do, so more than five requests.
    assert!(inserts.len() >= 6, "{} requests", inserts.len());
    assert_eq!(
        inserts.iter().map(|r| r.insert_ids.len()).sum::<usize>(),
        450
    );

    // A person whose row alone exceeds 20,000 bytes, between two others.
    let people = vec![
        ("small1".to_owned(), json!({"bio": "short"})),
        ("huge".to_owned(), json!({"bio": "x".repeat(25_000)})),
        ("small2".to_owned(), json!({"bio": "short"})),
    ];
    entries_with(&app, &people).await;
    until("one dead letter", LONG, || async {
        app.audience(CART).await["destinations"][0]["dead_letters"] == 1
    })
    .await;
    until("the two small ones stored", LONG, || async {
        fake.rows(TABLE).len() == 452
    })
    .await;
    let reasons = dead_letter_reasons(&app).await;
    assert!(
        reasons[0].starts_with("too large for BigQuery: a row of"),
        "{reasons:?}"
    );
    assert!(reasons[0].contains("max_request_bytes (20000)") && !reasons[0].contains("xxx"));
    assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());
    app.stop().await;
}

/// The view's SQL as the README shows it, for `project.dataset.table`.
fn readme_view_sql(project: &str, dataset: &str, table: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme
        .find("### BigQuery")
        .expect("README has a BigQuery section")..];
    let start = section.find("```sql").expect("the view's SQL") + "```sql".len();
    let end = start + section[start..].find("```").unwrap();
    section[start..end].trim().replace(
        "PROJECT.DATASET.TABLE",
        &format!("{project}.{dataset}.{table}"),
    )
}

#[tokio::test]
async fn bigquery_create_table_creates_the_table_and_the_view() {
    let fake = FakeBigQuery::start().await;
    let map = "create_table = true\nidentifiers = [\"email\"]\nhash_identifiers = true\nmap = { ltv = { from = \"ltv\", type = \"number\" }, signed_up_at = { from = \"signup\", type = \"timestamp\" } }";
    let app = TestApp::start_with(&config(&fake, map)).await;
    app.segment_webhook(&person_body(
        "u1",
        "entered",
        T0,
        json!({"ltv": 5, "signup": "2025-01-02T03:04:05Z"}),
    ))
    .await;
    until("u1 stored", LONG, || async { fake.rows(TABLE).len() == 1 }).await;
    let table = fake.table(TABLE).unwrap();
    let schema: Vec<(String, String, bool)> = table
        .schema
        .iter()
        .map(|f| (f.name.clone(), f.kind.clone(), f.required))
        .collect();
    let want = [
        ("change_id", "STRING", true),
        ("audience", "STRING", true),
        ("person_id", "STRING", true),
        ("cio_id", "STRING", false),
        ("change", "STRING", true),
        ("occurred_at", "TIMESTAMP", false),
        ("synced_at", "TIMESTAMP", true),
        ("email_sha256", "STRING", false),
        ("ltv", "FLOAT64", false),
        ("signed_up_at", "TIMESTAMP", false),
    ]
    .map(|(n, k, r)| (n.to_owned(), k.to_owned(), r));
    assert_eq!(schema, want);
    assert_eq!(table.body["timePartitioning"]["field"], "synced_at");
    let row = &fake.rows(TABLE)[0];
    assert_eq!(
        row["email_sha256"],
        koala::normalization::sha256_hex("u1@example.com")
    );
    assert!(row.get("email").is_none());
    assert_eq!(row["signed_up_at"], "2025-01-02T03:04:05.000Z");
    let view = fake.table(&format!("{TABLE}_members")).unwrap();
    assert_eq!(view.view.unwrap(), readme_view_sql(PROJECT, DATASET, TABLE));

    // After a restart the table and the view exist: 409, and on it goes.
    let app = app.restart().await;
    app.segment_event(CART_SEGMENT, "u2", "entered", T0).await;
    until("u2 stored", LONG, || async { fake.rows(TABLE).len() == 2 }).await;
    let creates: Vec<u16> = fake
        .requests_of(Kind::TablesInsert)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(creates, [200, 200, 409, 409]);
    assert_eq!(fake.member_ids(TABLE, CART), ["u1", "u2"]);
    app.stop().await;
}

#[tokio::test]
async fn bigquery_schema_drift_pauses_naming_the_field() {
    let fake = FakeBigQuery::start().await;
    // Made with an earlier mapping: no `plan` column.
    fake.create_table(TABLE, KOALA_COLUMNS);
    let app = TestApp::start_with(&config(
        &fake,
        "create_table = true\nmap = { plan = \"plan\" }",
    ))
    .await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    let reason = app.paused_reason().await;
    assert!(
        reason.contains(&format!(
            "table {PROJECT}.{DATASET}.{TABLE} has no column plan"
        )) && reason.contains(&format!(
            "ALTER TABLE `{PROJECT}.{DATASET}.{TABLE}` ADD COLUMN plan STRING"
        )),
        "{reason}"
    );
    assert!(fake.rows(TABLE).is_empty());
    let a = app.audience(CART).await;
    assert_eq!(
        a["destinations"][0]["dead_letters"], 0,
        "nothing dead-lettered: {a}"
    );
    app.stop().await;
}

#[tokio::test]
async fn bigquery_failures_retry_or_pause_as_bigquery_means_them() {
    let fake = FakeBigQuery::start().await;
    fake.create_table(TABLE, KOALA_COLUMNS);
    let app = TestApp::start_with(&config(&fake, "")).await;
    fake.fail_next(1, 503);
    fake.fail_next_with(1, 429, "rateLimitExceeded", Some(0));
    fake.fail_next_with(1, 403, "rateLimitExceeded", Some(0));
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    until("u1 stored", LONG, || async { fake.rows(TABLE).len() == 1 }).await;
    let statuses: Vec<u16> = fake
        .requests_of(Kind::InsertAll)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [503, 429, 403, 200]);

    fake.fail_next_with(1, 403, "accessDenied", None);
    app.segment_event(CART_SEGMENT, "u2", "entered", T0).await;
    let reason = app.paused_reason().await;
    assert!(
        reason.contains("HTTP 403 accessDenied") && reason.contains("bigquery.tables.updateData"),
        "{reason}"
    );
    app.stop().await;

    // No table and no create_table: paused naming the table.
    let fake = FakeBigQuery::start().await;
    let app = TestApp::start_with(&config(&fake, "")).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    let reason = app.paused_reason().await;
    assert!(
        reason.contains("HTTP 404 notFound")
            && reason.contains(&format!("table {PROJECT}.{DATASET}.{TABLE} was not found"))
            && reason.contains("create_table"),
        "{reason}"
    );
    app.stop().await;

    // create_table in a dataset that does not exist: paused, naming it.
    let fake = FakeBigQuery::start().await;
    let text = config(&fake, "create_table = true")
        .replace(&format!("dataset = \"{DATASET}\""), "dataset = \"missing\"");
    let app = TestApp::start_with(&text).await;
    app.segment_event(CART_SEGMENT, "u1", "entered", T0).await;
    let reason = app.paused_reason().await;
    assert!(
        reason.contains(&format!(
            "creating table {PROJECT}.missing.{TABLE}: dataset {PROJECT}.missing was not found"
        )),
        "{reason}"
    );
    assert_eq!(
        app.audience(CART).await["destinations"][0]["dead_letters"],
        0
    );
    app.stop().await;
}

fn check(path: &std::path::Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_koala"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn bigquery_config_check_names_the_keys_and_sends_nothing() {
    let fake = FakeBigQuery::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = base_config("")
        + r#"
[[destinations]]
name = "bq"
type = "bigquery"
base_url = "http://127.0.0.1:9"
dataset = "has-hyphen"
key_file = "/nonexistent/sa.json"
max_rows_per_request = 0
max_request_bytes = 999999999
map = { "9lives" = "cats", change = "x" }
"# + &cart_audience(
        r#"{ destination = "bq", map = { "bad-name" = "y" } }"#,
        "mirror",
    );
    let path = dir.path().join("koala.toml");
    std::fs::write(&path, text).unwrap();
    let (code, err) = check(&path);
    assert_eq!(code, Some(1));
    for key in [
        "destinations[0].project: missing",
        "destinations[0].dataset: not a dataset id",
        "destinations[0].table: missing",
        "destinations[0].key_file: cannot read \"/nonexistent/sa.json\"",
        "destinations[0].max_rows_per_request",
        "destinations[0].max_request_bytes",
        "destinations[0].map.9lives: not a BigQuery column name",
        "destinations[0].map.change: koala writes a column of that name itself",
        "audiences[1].sync[0].map.bad-name: not a BigQuery column name",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }

    // A key that is not RSA.
    let key = dir.path().join("sa.json");
    std::fs::write(
        &key,
        json!({"type": "service_account", "client_email": CLIENT_EMAIL,
               "private_key": "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n"})
        .to_string(),
    )
    .unwrap();
    let text = base_config("")
        + &format!(
            "[[destinations]]\nname = \"bq\"\ntype = \"bigquery\"\nproject = \"p\"\ndataset = \"d\"\ntable = \"t\"\nkey_file = {:?}\n",
            key.display().to_string()
        );
    std::fs::write(&path, text).unwrap();
    let (code, err) = check(&path);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("destinations[0].key_file: private_key: the private key is not an RSA key"),
        "{err}"
    );
    assert!(!err.contains("MHcCAQEE"), "{err}");

    // A valid one passes without a token request or a call to BigQuery.
    std::fs::write(&key, fake.key_json()).unwrap();
    let text = base_config("")
        + &format!(
            "[[destinations]]\nname = \"bq\"\ntype = \"bigquery\"\nbase_url = \"{}\"\nproject = \"{PROJECT}\"\ndataset = \"{DATASET}\"\ntable = \"t\"\nkey_file = {:?}\ncreate_table = true\n",
            fake.base_url(),
            key.display().to_string()
        );
    std::fs::write(&path, text).unwrap();
    let (code, err) = check(&path);
    assert_eq!(code, Some(0), "{err}");
    assert!(fake.requests().is_empty());
}

/// The columns koala writes with the default identifiers and no mapping,
/// as `create_table` makes them.
const KOALA_COLUMNS: &[(&str, &str, bool)] = &[
    ("change_id", "STRING", true),
    ("audience", "STRING", true),
    ("person_id", "STRING", true),
    ("cio_id", "STRING", false),
    ("change", "STRING", true),
    ("occurred_at", "TIMESTAMP", false),
    ("synced_at", "TIMESTAMP", true),
    ("email", "STRING", false),
    ("phone", "STRING", false),
];

fn check_online(path: &std::path::Path) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_koala"))
        .args(["check", "--online", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// Multi-threaded: the fake answers while the test waits for the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bigquery_check_online_reads_the_table_and_names_drift_without_writing() {
    let fake = FakeBigQuery::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("koala.toml");
    let map = r#"map = { plan = "plan", lifetime_value = { from = "ltv", type = "number" } }"#;
    let table_path = format!("{PROJECT}.{DATASET}.{TABLE}");

    // No table and no create_table: named.
    std::fs::write(&path, config(&fake, map)).unwrap();
    let (code, _, err) = check_online(&path);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "destinations.bq: bigquery table {table_path} does not exist"
        )) && err.contains("create_table = true"),
        "{err}"
    );
    // With create_table a missing table is fine (the first send creates
    // it), and the check creates nothing.
    std::fs::write(&path, config(&fake, &format!("create_table = true\n{map}"))).unwrap();
    let (code, out, err) = check_online(&path);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("destinations: ok"), "{out}");
    assert!(fake.table(TABLE).is_none());

    // A table made for an earlier mapping: lifetime_value a STRING, no plan.
    let mut columns = KOALA_COLUMNS.to_vec();
    columns.push(("lifetime_value", "STRING", false));
    fake.create_table(TABLE, &columns);
    let (code, _, err) = check_online(&path);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "bigquery table {table_path} column lifetime_value is STRING, but koala writes FLOAT64"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "has no column plan, which koala writes: add it (ALTER TABLE `{table_path}` ADD COLUMN plan STRING)"
        )),
        "{err}"
    );
    assert!(err.contains("destinations: 2 problem(s)"), "{err}");
    // Fixed: the table fits (FLOAT64 is answered as FLOAT).
    columns.pop();
    columns.extend([
        ("lifetime_value", "FLOAT64", false),
        ("plan", "STRING", false),
    ]);
    fake.create_table(TABLE, &columns);
    let (code, out, err) = check_online(&path);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("destinations: ok (read, nothing sent)"),
        "{out}"
    );

    // Only tokens and tables.get: nothing streamed, nothing created, and
    // every tables.get carried a token the fake issued.
    let kinds: Vec<Kind> = fake.requests().iter().map(|r| r.kind).collect();
    assert!(
        kinds
            .iter()
            .all(|k| matches!(k, Kind::Token | Kind::TablesGet)),
        "{kinds:?}"
    );
    assert_eq!(fake.requests_of(Kind::TablesGet).len(), 4);
    assert!(fake.rows(TABLE).is_empty());
    assert!(fake.table(&format!("{TABLE}_members")).is_none(), "no view");
    assert!(
        fake.rejected().iter().all(|(s, _)| *s == 404),
        "{:?}",
        fake.rejected()
    );

    // A refused assertion: the service account is named, never the key.
    fake.refuse_assertions(true);
    let (code, _, err) = check_online(&path);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "service account {CLIENT_EMAIL} could not read table {table_path}"
        )) && err.contains("invalid_grant"),
        "{err}"
    );
    let key_line = PRIVATE_KEY.lines().nth(1).unwrap();
    assert!(
        !err.contains(key_line) && !err.contains("PRIVATE KEY"),
        "{err}"
    );
    fake.refuse_assertions(false);
    // Permission refused (403): the permission a read needs is named.
    fake.fail_next_with(1, 403, "accessDenied", None);
    let (_, _, err) = check_online(&path);
    assert!(
        err.contains(CLIENT_EMAIL)
            && err.contains("HTTP 403 accessDenied")
            && err.contains("bigquery.tables.get"),
        "{err}"
    );
    // A dataset that does not exist, even with create_table.
    let text = config(&fake, &format!("create_table = true\n{map}"))
        .replace(&format!("dataset = \"{DATASET}\""), "dataset = \"missing\"");
    std::fs::write(&path, text).unwrap();
    let (_, _, err) = check_online(&path);
    assert!(
        err.contains(&format!(
            "bigquery dataset {PROJECT}.missing does not exist"
        )),
        "{err}"
    );
    // BigQuery unreachable.
    let text = config(&fake, map).replace(
        &format!("base_url = \"{}\"", fake.base_url()),
        "base_url = \"http://127.0.0.1:9\"",
    );
    std::fs::write(&path, text).unwrap();
    let (code, _, err) = check_online(&path);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "could not reach BigQuery to read table {table_path}"
        )),
        "{err}"
    );
    assert!(fake.requests_of(Kind::InsertAll).is_empty());
    assert!(fake.requests_of(Kind::TablesInsert).is_empty());
}
