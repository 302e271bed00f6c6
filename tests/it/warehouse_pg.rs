//! The PostgreSQL warehouse destination against a real PostgreSQL: typed
//! columns follow the mapping, entries, exits and attribute updates
//! converge in the members table with one history row per change, a
//! retried batch writes nothing twice, `on_exit = "mark"` keeps exited
//! rows, and a table that drifted pauses the destination with a reason
//! until it is fixed and resumed. Skipped with a notice where PostgreSQL
//! is unreachable, unless KOALA_REQUIRE_POSTGRES=1 (CI).

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::app::*;
use crate::support::postgres::{scratch, ScratchSchema};
use crate::support::wait::until;

const T0: i64 = 1_750_000_000;
const LONG: Duration = Duration::from_secs(30);
const MAP: &str = r#"map = { lifetime_value = { from = "ltv", type = "number" }, plan = "plan", vip = { from = "vip", type = "boolean" }, last_order_at = { from = "last_order", type = "timestamp" } }"#;

fn config(db: &ScratchSchema, extra: &str) -> String {
    base_config("")
        + &db.destination_toml("wh", &format!("{MAP}\n{extra}"))
        + &cart_audience(r#"{ destination = "wh" }"#, "mirror")
}

fn body(person: &str, action: &str, at: i64, ltv: f64) -> Value {
    json!({"segment_id": CART_SEGMENT, "action": action, "occurred_at": at,
           "identifiers": {"id": person, "cio_id": format!("cio-{person}"), "email": format!("{person}@example.com")},
           "attributes": {"ltv": ltv, "plan": "gold", "vip": "yes", "last_order": 1_764_579_600, "page": "/x"}})
}

async fn members(db: &ScratchSchema) -> Vec<Value> {
    db.rows("audience_members", "person_id").await
}

async fn history(db: &ScratchSchema) -> Vec<Value> {
    db.rows("audience_changes", "occurred_at, change").await
}

async fn paused_reason(app: &TestApp) -> Option<String> {
    let (_, d) = app.admin_get("/v1/destinations").await;
    let s = &d["destinations"][0]["status"];
    (s["paused"] == true).then(|| s["paused_reason"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn warehouse_pg_entries_exits_and_updates_converge_with_typed_columns() {
    let Some(db) = scratch("warehouse_pg_converge").await else {
        return;
    };
    let app = TestApp::start_with(&config(&db, "")).await;
    for (i, p) in ["u1", "u2", "u3"].iter().enumerate() {
        app.segment_webhook(&body(p, "entered", T0 + i as i64, 10.0))
            .await;
    }
    until("three members in the table", LONG, || async {
        members(&db).await.len() == 3
    })
    .await;
    let m = members(&db).await;
    assert_eq!(m[0]["audience"], CART);
    assert_eq!(m[0]["person_id"], "u1");
    assert_eq!(m[0]["cio_id"], "cio-u1");
    assert_eq!(m[0]["email"], "u1@example.com");
    assert_eq!(m[0]["lifetime_value"], 10.0, "a number column: {}", m[0]);
    assert_eq!(m[0]["vip"], true, "a boolean column");
    assert_eq!(m[0]["plan"], "gold");
    assert!(
        m[0]["last_order_at"]
            .as_str()
            .unwrap()
            .starts_with("2025-12-01T09:00:00"),
        "a timestamp column: {}",
        m[0]
    );
    assert!(
        m[0]["entered_at"]
            .as_str()
            .unwrap()
            .starts_with("2025-06-15"),
        "{}",
        m[0]
    );
    assert!(
        m[0].get("page").is_none(),
        "only mapped attributes become columns"
    );

    // An attribute update, an unmapped change (no work), an exit.
    app.segment_webhook(&body("u2", "entered", T0 + 10, 99.5))
        .await;
    app.segment_webhook(&body("u3", "exited", T0 + 11, 10.0))
        .await;
    until("u2 updated and u3 gone", LONG, || async {
        let m = members(&db).await;
        m.len() == 2 && m[1]["lifetime_value"] == 99.5
    })
    .await;
    let h = history(&db).await;
    let changes: Vec<(&str, &str)> = h
        .iter()
        .map(|r| {
            (
                r["person_id"].as_str().unwrap(),
                r["change"].as_str().unwrap(),
            )
        })
        .collect();
    // Ordered by Customer.io time: an update keeps its entry's time.
    assert_eq!(
        changes,
        [
            ("u1", "add"),
            ("u2", "add"),
            ("u2", "update"),
            ("u3", "add"),
            ("u3", "remove")
        ]
    );
    let d = app.audience(CART).await;
    assert_eq!(d["destinations"][0]["pending_adds"], 0, "{d}");
    assert_eq!(d["destinations"][0]["pending_removes"], 0, "{d}");
    app.stop().await;
    db.drop().await;
}

#[tokio::test]
async fn warehouse_pg_a_retried_batch_writes_nothing_twice() {
    use koala::audiences::{AudienceDef, AudienceMode, SyncOp};
    use koala::destinations::postgres_table::{PostgresConfig, PostgresDestination, DELIVERY};
    use koala::destinations::{Destination, Mapping, SendOutcome, SendTarget};
    let Some(db) = scratch("warehouse_pg_retry").await else {
        return;
    };
    let dest = PostgresDestination::new(
        "wh",
        PostgresConfig::new(db.url.clone(), db.schema.clone()),
        DELIVERY,
    )
    .unwrap();
    let audience = AudienceDef {
        id: 1,
        name: "cart".into(),
        segment_id: 1,
        mode: AudienceMode::Mirror,
        destinations: vec![],
    };
    let mapping = Mapping::default();
    let people: Vec<koala::person::PersonRecord> = (0..500)
        .map(|i| koala::person::PersonRecord {
            person_id: i,
            customer_id: Some(format!("p{i:04}")),
            ..Default::default()
        })
        .collect();
    let changed_at: Vec<i64> = (0..500).map(|i| 1_750_000_000_000 + i).collect();
    let target = SendTarget {
        audience: &audience,
        platform_audience_id: "cart",
        mapping: &mapping,
        changed_at: &changed_at,
    };
    for _ in 0..2 {
        let outcome = dest.send(&target, SyncOp::Add, &people).await;
        assert!(
            matches!(
                outcome,
                SendOutcome::Success {
                    received: 500,
                    invalid: 0
                }
            ),
            "{outcome:?}"
        );
    }
    assert_eq!(db.rows("audience_members", "person_id").await.len(), 500);
    assert_eq!(
        db.rows("audience_changes", "change_key").await.len(),
        500,
        "history deduped"
    );
    let outcome = dest.send(&target, SyncOp::Remove, &people[..100]).await;
    assert!(
        matches!(outcome, SendOutcome::Success { .. }),
        "{outcome:?}"
    );
    let again = dest.send(&target, SyncOp::Remove, &people[..100]).await;
    assert!(matches!(again, SendOutcome::Success { .. }), "{again:?}");
    assert_eq!(db.rows("audience_members", "person_id").await.len(), 400);
    assert_eq!(db.rows("audience_changes", "change_key").await.len(), 600);
    db.drop().await;
}

#[tokio::test]
async fn warehouse_pg_on_exit_mark_keeps_the_row_and_a_reentry_starts_a_new_stay() {
    let Some(db) = scratch("warehouse_pg_mark").await else {
        return;
    };
    let app = TestApp::start_with(&config(&db, "on_exit = \"mark\"")).await;
    app.segment_webhook(&body("u1", "entered", T0, 1.0)).await;
    until("u1 in", LONG, || async { members(&db).await.len() == 1 }).await;
    app.segment_webhook(&body("u1", "exited", T0 + 100, 1.0))
        .await;
    until("u1 marked exited", LONG, || async {
        members(&db).await[0]["exited_at"].is_string()
    })
    .await;
    let exited = members(&db).await[0].clone();
    assert!(
        exited["exited_at"]
            .as_str()
            .unwrap()
            .starts_with("2025-06-15"),
        "{exited}"
    );
    app.segment_webhook(&body("u1", "entered", T0 + 86_400, 1.0))
        .await;
    until("u1 back", LONG, || async {
        members(&db).await[0]["exited_at"].is_null()
    })
    .await;
    let back = members(&db).await[0].clone();
    assert_ne!(
        back["entered_at"], exited["entered_at"],
        "a new stay: {back}"
    );
    assert!(
        back["entered_at"]
            .as_str()
            .unwrap()
            .starts_with("2025-06-16"),
        "{back}"
    );
    app.stop().await;
    db.drop().await;
}

#[tokio::test]
async fn warehouse_pg_a_drifted_column_pauses_until_fixed_and_resumed() {
    let Some(db) = scratch("warehouse_pg_drift").await else {
        return;
    };
    let app = TestApp::start_with(&config(&db, "")).await;
    app.segment_webhook(&body("u1", "entered", T0, 1.0)).await;
    until("u1 in", LONG, || async { members(&db).await.len() == 1 }).await;
    // Someone retypes a column while koala runs.
    db.execute(&format!(
        "ALTER TABLE \"{}\".audience_members DROP COLUMN lifetime_value",
        db.schema
    ))
    .await;
    db.execute(&format!(
        "ALTER TABLE \"{}\".audience_members ADD COLUMN lifetime_value boolean",
        db.schema
    ))
    .await;
    app.segment_webhook(&body("u2", "entered", T0 + 1, 2.0))
        .await;
    until("paused", LONG, || async {
        paused_reason(&app).await.is_some()
    })
    .await;
    let reason = paused_reason(&app).await.unwrap();
    assert!(reason.contains("lifetime_value"), "{reason}");
    assert!(!reason.contains("u2"), "{reason}");
    // The fix, then resume: the table is checked again and u2 arrives.
    db.execute(&format!(
        "ALTER TABLE \"{}\".audience_members ALTER COLUMN lifetime_value TYPE double precision USING NULL",
        db.schema
    ))
    .await;
    let (status, _) = app
        .admin_post("/v1/destinations/wh/resume", &json!({}))
        .await;
    assert_eq!(status, 200);
    until("u2 in after the fix", LONG, || async {
        members(&db).await.len() == 2
    })
    .await;
    assert_eq!(members(&db).await[1]["lifetime_value"], 2.0);
    app.stop().await;
    db.drop().await;
}

#[tokio::test]
async fn warehouse_pg_without_create_tables_a_missing_table_pauses_with_its_name() {
    let Some(db) = scratch("warehouse_pg_no_create").await else {
        return;
    };
    let app = TestApp::start_with(&config(&db, "create_tables = false")).await;
    app.segment_webhook(&body("u1", "entered", T0, 1.0)).await;
    until("paused", LONG, || async {
        paused_reason(&app).await.is_some()
    })
    .await;
    let reason = paused_reason(&app).await.unwrap();
    assert!(
        reason.contains(&format!("{}.audience_changes does not exist", db.schema)),
        "{reason}"
    );
    assert!(members(&db).await.is_empty());
    app.stop().await;
    db.drop().await;
}

#[tokio::test]
async fn warehouse_pg_an_unreachable_warehouse_is_retried_and_webhooks_still_commit() {
    // A port nothing listens on: every send fails to connect.
    let cfg = base_config("")
        + "\n[[destinations]]\nname = \"wh\"\ntype = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:1/test\"\nrequest_timeout = \"2s\"\n"
        + &cart_audience(r#"{ destination = "wh" }"#, "mirror");
    let app = TestApp::start_with(&cfg).await;
    let (status, _) = app.segment_webhook(&body("u1", "entered", T0, 1.0)).await;
    assert_eq!(status, 200, "intake never waits on a destination");
    until("a failed attempt recorded", LONG, || async {
        let d = app.audience(CART).await;
        d["destinations"][0]["last_error"].is_string()
    })
    .await;
    let d = app.audience(CART).await;
    let dest = &d["destinations"][0];
    assert_eq!(dest["pending_adds"], 1, "the work is kept: {dest}");
    assert!(
        paused_reason(&app).await.is_none(),
        "an outage is retried, not paused"
    );
    assert!(
        dest["last_error"].as_str().unwrap().contains("connection"),
        "{dest}"
    );
    app.stop().await;
}

#[tokio::test]
async fn warehouse_pg_check_online_reads_the_table_and_names_drift_without_writing() {
    let Some(db) = scratch("warehouse_pg_check").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("koala.toml");
    std::fs::write(&path, config(&db, "create_tables = false")).unwrap();
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_koala"))
            .args(["check", "--online", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = check();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("destinations.wh: table"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(members(&db).await.is_empty(), "check creates nothing");
    // The tables as koala would create them, but one column retyped.
    db.execute(&format!("CREATE SCHEMA \"{}\"", db.schema))
        .await;
    db.execute(&format!(
        "CREATE TABLE \"{0}\".audience_changes (change_key text PRIMARY KEY, audience text NOT NULL, person_id text NOT NULL, change text NOT NULL, occurred_at timestamptz NOT NULL, synced_at timestamptz NOT NULL)",
        db.schema
    ))
    .await;
    db.execute(&format!(
        "CREATE TABLE \"{0}\".audience_members (audience text NOT NULL, person_id text NOT NULL, cio_id text, email text, phone text, lifetime_value text, plan text, vip boolean, last_order_at timestamptz, entered_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, PRIMARY KEY (audience, person_id))",
        db.schema
    ))
    .await;
    let err = String::from_utf8_lossy(&check().stderr).to_string();
    assert!(
        err.contains("column lifetime_value is text, but koala writes double precision"),
        "{err}"
    );
    db.execute(&format!(
        "ALTER TABLE \"{}\".audience_members ALTER COLUMN lifetime_value TYPE double precision USING NULL",
        db.schema
    ))
    .await;
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("destinations: ok"));
    db.drop().await;
}
